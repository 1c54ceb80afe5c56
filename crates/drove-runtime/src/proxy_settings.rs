//! Config → data path settings: the one place that knows both vocabularies.

use std::time::Duration;

use drove_balancer::{ActiveHealth, Algorithm, BalancerSettings, PassiveHealth, ProbeKind};
use drove_config::{self as config, BalancerConfig};
use drove_proxy::{AccessLogFormat, HashKey, LimitKey, ProxySettings, RouteLimit, StickyCookie};
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

fn header_name(s: &str) -> Option<HeaderName> {
    HeaderName::from_bytes(s.to_ascii_lowercase().as_bytes()).ok()
}

/// The rate-limited routes of a config: one limiter per `[limits.NAME]`, shared by every
/// route naming it; longest prefixes first (the first match applies).
pub async fn route_limits(config: &config::Config) -> Vec<RouteLimit> {
    let Some(b) = &config.balancer else {
        return Vec::new();
    };
    let mut limiters: std::collections::HashMap<&str, std::sync::Arc<drove_limits::Limit>> =
        Default::default();
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
            config::LimitKey::Header(h) => match header_name(h) {
                Some(h) => LimitKey::Header(h),
                None => LimitKey::ClientIp,
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

/// Data path settings for a `[balancer]` section.
pub fn proxy_settings(b: &BalancerConfig) -> ProxySettings {
    ProxySettings {
        connect_timeout: b.timeouts.connect,
        header_timeout: b.timeouts.header,
        response_timeout: b.timeouts.response,
        per_try_timeout: b.retries.per_try_timeout.unwrap_or(b.timeouts.response),
        idle_timeout: b.timeouts.idle,
        shutdown_grace: b.timeouts.shutdown_grace,
        retries: b.retries.attempts,
        retry_budget_percent: (b.retries.budget * 100.0).round().clamp(0.0, 100.0) as u32,
        retry_on_5xx: b.retries.on_5xx,
        instance_header: b.instance_header.as_deref().and_then(header_name),
        request_id_header: b.request_id.as_deref().and_then(header_name),
        trusted_proxies: b
            .trusted_proxies
            .iter()
            .filter_map(|c| c.to_string().parse().ok())
            .collect(),
        access_log: match b.access_log {
            config::AccessLogFormat::Off => AccessLogFormat::Off,
            config::AccessLogFormat::Combined => AccessLogFormat::Combined,
            config::AccessLogFormat::Json => AccessLogFormat::Json,
        },
        access_log_path: match &b.access_log_path {
            config::LogTarget::Stdout => None,
            config::LogTarget::File(p) => Some(p.clone()),
        },
        max_header_size: b.max_header_size as usize,
        max_body_size: b.max_body_size,
        sticky: b.sticky.as_ref().map(|s| StickyCookie {
            name: s.cookie.clone(),
            max_age: (s.max_age > Duration::ZERO).then_some(s.max_age),
        }),
        hash_key: match &b.algorithm {
            config::Algorithm::Hash(k) => Some(match k {
                config::HashKey::Header(h) => match header_name(h) {
                    Some(h) => HashKey::Header(h),
                    None => HashKey::Path,
                },
                config::HashKey::Cookie(c) => HashKey::Cookie(c.clone()),
                config::HashKey::Path => HashKey::Path,
                config::HashKey::ClientIp => HashKey::ClientIp,
            }),
            _ => None,
        },
        routes: Vec::new(),
        tls: None,
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
