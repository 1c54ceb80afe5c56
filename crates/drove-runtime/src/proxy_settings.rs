//! Config → data path settings: the one place that knows both vocabularies.
//!
//! The conversion is fallible and never falls back silently: a value the data path
//! cannot use is a [`SettingsError`] naming the key. `drove check` validates the same
//! values, so after it passes the conversion cannot fail; the error is there so that a
//! gap between the two is loud instead of a quietly different setting.

use std::time::Duration;

use drove_balancer::{ActiveHealth, Algorithm, BalancerSettings, PassiveHealth, ProbeKind};
use drove_config::{self as config, BalancerConfig};
use drove_proxy::{
    AccessLogFormat, CompressRoute, HashKey, LimitKey, ProxySettings, RouteLimit, StickyCookie,
};
use http::HeaderName;

/// Balancer settings for a `[balancer]` section.
pub fn balancer_settings(b: &BalancerConfig) -> BalancerSettings {
    BalancerSettings {
        algorithm: match &b.algorithm {
            config::Algorithm::RoundRobin => Algorithm::RoundRobin,
            config::Algorithm::LeastConn => Algorithm::LeastConn,
            config::Algorithm::IpHash => Algorithm::IpHash,
            config::Algorithm::Hash(_) => Algorithm::Hash,
            config::Algorithm::RandomTwo => Algorithm::RandomTwo,
            config::Algorithm::P2cEwma => Algorithm::P2cEwma,
        },
        passive: PassiveHealth {
            max_fails: b.passive.max_fails,
            fail_timeout: b.passive.fail_timeout,
            on_5xx: b.passive.on_5xx,
        },
        max_ejected_percent: (b.max_ejected * 100.0).round().clamp(0.0, 100.0) as u8,
    }
}

/// Active health checks of the balancer's backends, if configured.
pub fn active_health(p: &config::ProbeConfig) -> Option<ActiveHealth> {
    let kind = match &p.kind {
        config::ProbeKind::Http { path } => ProbeKind::Http {
            path: path.clone(),
            expect_status: p.expect_status,
        },
        config::ProbeKind::Tcp { .. } => ProbeKind::Tcp,
        // A command probe has no backend to aim at; the supervisor runs those.
        config::ProbeKind::Command { .. } => return None,
    };
    Some(ActiveHealth {
        kind,
        interval: p.interval,
        timeout: p.timeout,
        rise: p.rise,
        fall: p.fall,
    })
}

/// A config value the data path cannot use (unreachable after `drove check`).
#[derive(Debug, thiserror::Error)]
#[error("[balancer] {key}: {problem}")]
pub struct SettingsError {
    /// The key, e.g. `request_id`.
    pub key: &'static str,
    /// What is wrong with its value.
    pub problem: String,
}

fn header_name(key: &'static str, s: &str) -> Result<HeaderName, SettingsError> {
    HeaderName::from_bytes(s.to_ascii_lowercase().as_bytes()).map_err(|_| SettingsError {
        key,
        problem: format!("`{s}` is not a valid header name"),
    })
}

/// The rate-limited routes of a config: one limiter per `[limits.NAME]`, shared by every
/// route naming it; longest prefixes first (the first match applies).
///
/// On a reload, `current` are the routes in force and `in_force` the `[limits]` they
/// were built from: a limit whose settings did not change keeps its limiter, so the
/// clients it is holding back stay held back (its GCRA state is kept).
pub async fn route_limits(
    config: &config::Config,
    current: &[RouteLimit],
    in_force: Option<&std::collections::BTreeMap<String, config::LimitConfig>>,
) -> Vec<RouteLimit> {
    let Some(b) = &config.balancer else {
        return Vec::new();
    };
    let mut limiters: std::collections::HashMap<&str, std::sync::Arc<drove_limits::Limit>> =
        Default::default();
    for (name, l) in &config.limits {
        let unchanged = in_force.and_then(|f| f.get(name)) == Some(l);
        if let Some(r) = current
            .iter()
            .find(|r| r.name == *name)
            .filter(|_| unchanged)
        {
            limiters.insert(name, r.limiter.clone());
        }
    }
    let mut routes: Vec<RouteLimit> = Vec::new();
    for r in &b.routes {
        let Some(l) = config.limits.get(&r.limit) else {
            continue;
        };
        let limiter = match limiters.get(r.limit.as_str()) {
            Some(x) => x.clone(),
            None => {
                let made = match &l.redis {
                    None => drove_limits::Limiter::try_new(l.rate.count, l.rate.per, l.burst)
                        .map(drove_limits::Limit::Local)
                        .map_err(|e| e.to_string()),
                    Some(url) => drove_limits::SharedLimiter::connect(
                        url,
                        &r.limit,
                        l.rate.count,
                        l.rate.per,
                        l.burst,
                    )
                    .await
                    .map(drove_limits::Limit::Shared)
                    .map_err(|e| e.to_string()),
                };
                match made {
                    Ok(x) => {
                        let x = std::sync::Arc::new(x);
                        limiters.insert(&r.limit, x.clone());
                        x
                    }
                    Err(e) => {
                        tracing::warn!(limit = %r.limit, error = %e, "rate limit ignored");
                        continue;
                    }
                }
            }
        };
        let key = match &l.key {
            config::LimitKey::ClientIp => LimitKey::ClientIp,
            config::LimitKey::Header(h) => match header_name("limits.key", h) {
                Ok(h) => LimitKey::Header(h),
                Err(e) => {
                    tracing::warn!(limit = %r.limit, error = %e, "rate limit ignored");
                    continue;
                }
            },
            config::LimitKey::Cookie(c) => LimitKey::Cookie(c.clone()),
        };
        routes.push(RouteLimit {
            prefix: r.path.clone(),
            name: r.limit.clone(),
            key,
            limiter,
        });
    }
    routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
    routes
}

/// Data path settings for a `[balancer]` section (routes and TLS are filled in by the
/// caller: they need I/O).
pub fn proxy_settings(b: &BalancerConfig) -> Result<ProxySettings, SettingsError> {
    let optional_header =
        |key, h: &Option<String>| h.as_deref().map(|h| header_name(key, h)).transpose();
    Ok(ProxySettings {
        connect_timeout: b.timeouts.connect,
        header_timeout: b.timeouts.header,
        response_timeout: b.timeouts.response,
        per_try_timeout: b.retries.per_try_timeout.unwrap_or(b.timeouts.response),
        idle_timeout: b.timeouts.idle,
        shutdown_grace: b.timeouts.shutdown_grace,
        retries: b.retries.attempts,
        retry_budget_percent: percent("retries.budget", b.retries.budget)?,
        retry_on_5xx: b.retries.on_5xx,
        instance_header: optional_header("instance_header", &b.instance_header)?,
        request_id_header: optional_header("request_id", &b.request_id)?,
        trusted_proxies: b.trusted_proxies.clone(),
        access_log: match b.access_log {
            config::AccessLogFormat::Off => AccessLogFormat::Off,
            config::AccessLogFormat::Combined => AccessLogFormat::Combined,
            config::AccessLogFormat::Json => AccessLogFormat::Json,
        },
        access_log_path: match &b.access_log_path {
            config::LogTarget::Stdout => None,
            config::LogTarget::File(p) => Some(p.clone()),
        },
        max_header_size: usize::try_from(b.max_header_size).map_err(|_| SettingsError {
            key: "max_header_size",
            problem: format!(
                "{} bytes is more than this machine can address",
                b.max_header_size
            ),
        })?,
        max_body_size: b.max_body_size,
        upgrades: b.upgrades.clone(),
        http2: b.http2,
        http2_max_streams: b.http2_max_streams,
        compress: b.compress.clone().map(std::sync::Arc::new),
        compress_routes: {
            let mut r: Vec<CompressRoute> = b
                .routes
                .iter()
                .map(|r| CompressRoute {
                    prefix: r.path.clone(),
                    settings: r.compress.clone().map(std::sync::Arc::new),
                })
                .collect();
            r.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
            r
        },
        sticky: b.sticky.as_ref().map(|s| StickyCookie {
            name: s.cookie.clone(),
            max_age: (s.max_age > Duration::ZERO).then_some(s.max_age),
        }),
        hash_key: match &b.algorithm {
            config::Algorithm::Hash(k) => Some(match k {
                config::HashKey::Header(h) => HashKey::Header(header_name("hash_key", h)?),
                config::HashKey::Cookie(c) => HashKey::Cookie(c.clone()),
                config::HashKey::Path => HashKey::Path,
                config::HashKey::ClientIp => HashKey::ClientIp,
            }),
            _ => None,
        },
        routes: Vec::new(),
        tls: None,
    })
}

/// A fraction 0.0..=1.0 as whole percent.
fn percent(key: &'static str, f: f64) -> Result<u32, SettingsError> {
    if (0.0..=1.0).contains(&f) {
        Ok((f * 100.0).round() as u32)
    } else {
        Err(SettingsError {
            key,
            problem: format!("{f} is not a fraction between 0 and 1"),
        })
    }
}

/// Worker count: 0 means one per core.
pub fn workers(b: &BalancerConfig) -> usize {
    if b.workers > 0 {
        b.workers
    } else {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    }
}
