//! The drove.toml of drove itself as the balancer in front of an orchestrator's replicas
//! (`drove export k8s|compose`): the `[balancer]`, `[[balancer.routes]]`, `[limits]` and
//! `[admin]` of the source config with the same algorithm, stickiness, retries, passive
//! and active health, timeouts, headers, limits and admin token — and, instead of
//! `service = "web"`, `backends = [{ dns = "NAME:PORT" }]`: the name under which the
//! orchestrator publishes every ready replica (Compose: the service name; Kubernetes: a
//! headless Service). No `[services]`: the orchestrator runs the replicas.
//!
//! Written from the validated [`Config`] (so the built-in demo exports too), every key
//! explicitly; `tests::round_trip_keeps_every_balancer_setting` parses the output back and
//! compares it with the source, so a balancer setting added later and not written here
//! fails that test.

use std::fmt::Write as _;
use std::time::Duration;

use drove_config::{
    AccessLogFormat, Algorithm, Config, HashKey, LimitKey, LogTarget, PortSpec, ProbeConfig,
    ProbeKind, Rate,
};

/// Where the replicas are and where drove listens, in the orchestrator.
pub struct Front<'a> {
    /// DNS name that lists every ready replica (`web`, `web-headless.NS.svc.cluster.local`).
    pub dns_name: &'a str,
    /// The replicas' port.
    pub port: u16,
    /// Directory holding the TLS files in the container (`tls.crt`, `tls.key`).
    pub tls_dir: &'a str,
}

/// The balancer's listen port and the admin port, as the exported drove uses them.
pub fn ports(c: &Config) -> (u16, u16) {
    let listen = c.balancer.as_ref().map_or(8080, |b| b.listen.port());
    (listen, c.admin.listen.port())
}

/// drove.toml for drove in front of `front`'s replicas of the balanced service; `None`
/// when the config balances no service.
pub fn drove_toml(c: &Config, front: &Front<'_>) -> Option<String> {
    let b = c.balancer.as_ref()?;
    let service = match &b.backends {
        drove_config::Backends::Service(name) => c.service(name)?,
        drove_config::Backends::Static(_) => return None,
    };
    let (listen_port, admin_port) = ports(c);
    let mut t = String::new();
    let _ = writeln!(
        t,
        "# drove in front of the replicas of `{}` (`drove export`): same balancing, stickiness,\n\
         # retries, health, limits and admin settings as the source drove.toml; the replicas are\n\
         # found through DNS ({}) and re-resolved every resolver.interval.",
        service.name, front.dns_name
    );
    t.push_str("\n[balancer]\n");
    kv(&mut t, "listen", &q(&format!("0.0.0.0:{listen_port}")));
    kv(&mut t, "workers", &b.workers.to_string());
    kv(&mut t, "defer_accept", &b.defer_accept.to_string());
    kv(
        &mut t,
        "backends",
        &format!(
            "[{{ dns = {}, name = {} }}]",
            q(&format!("{}:{}", front.dns_name, front.port)),
            q(&service.name)
        ),
    );
    kv(&mut t, "algorithm", &q(b.algorithm.name()));
    if let Algorithm::Hash(key) = &b.algorithm {
        let k = match key {
            HashKey::Header(h) => format!("header:{h}"),
            HashKey::Cookie(c) => format!("cookie:{c}"),
            HashKey::Path => "path".into(),
            HashKey::ClientIp => "client_ip".into(),
        };
        kv(&mut t, "hash_key", &q(&k));
    }
    if let Some(s) = &b.sticky {
        kv(
            &mut t,
            "sticky",
            &format!(
                "{{ cookie = {}, max_age = {} }}",
                q(&s.cookie),
                dur(s.max_age)
            ),
        );
    }
    let r = &b.retries;
    let per_try = r
        .per_try_timeout
        .map(|d| format!(", per_try_timeout = {}", dur(d)))
        .unwrap_or_default();
    kv(
        &mut t,
        "retries",
        &format!(
            "{{ attempts = {}, budget = {}{per_try}, on_5xx = {} }}",
            r.attempts,
            pct(r.budget),
            r.on_5xx
        ),
    );
    let p = &b.passive;
    kv(
        &mut t,
        "passive",
        &format!(
            "{{ max_fails = {}, fail_timeout = {}, on_5xx = {} }}",
            p.max_fails,
            dur(p.fail_timeout),
            p.on_5xx
        ),
    );
    // The balancer's own active checks; without them, the service's health probe (which
    // the source drove's supervisor ran) checks each replica from drove.
    match b.health.as_ref().or(service
        .health
        .as_ref()
        .filter(|h| matches!(h.kind, ProbeKind::Http { .. }))
        .filter(|_| service.port != PortSpec::None))
    {
        Some(h) => kv(&mut t, "health", &probe(h)),
        None => kv(&mut t, "health", "false"),
    }
    kv(&mut t, "max_ejected", &pct(b.max_ejected));
    let to = &b.timeouts;
    kv(
        &mut t,
        "timeouts",
        &format!(
            "{{ connect = {}, header = {}, response = {}, idle = {}, shutdown_grace = {} }}",
            dur(to.connect),
            dur(to.header),
            dur(to.response),
            dur(to.idle),
            dur(to.shutdown_grace)
        ),
    );
    kv(&mut t, "instance_header", &opt_header(&b.instance_header));
    kv(&mut t, "request_id", &opt_header(&b.request_id));
    let proxies: Vec<String> = b
        .trusted_proxies
        .iter()
        .map(|c| q(&c.to_string()))
        .collect();
    kv(
        &mut t,
        "trusted_proxies",
        &format!("[{}]", proxies.join(", ")),
    );
    let upgrades: Vec<String> = b.upgrades.iter().map(|u| q(u)).collect();
    kv(&mut t, "upgrades", &format!("[{}]", upgrades.join(", ")));
    kv(&mut t, "http2", &b.http2.to_string());
    kv(
        &mut t,
        "http2_max_streams",
        &b.http2_max_streams.to_string(),
    );
    kv(
        &mut t,
        "access_log",
        &q(match b.access_log {
            AccessLogFormat::Off => "off",
            AccessLogFormat::Combined => "combined",
            AccessLogFormat::Json => "json",
        }),
    );
    if let LogTarget::File(f) = &b.access_log_path {
        let _ = writeln!(
            t,
            "# access_log_path was {}: a container logs to stdout",
            f.display()
        );
    }
    kv(&mut t, "access_log_path", &q("-"));
    kv(&mut t, "max_header_size", &b.max_header_size.to_string());
    kv(&mut t, "max_body_size", &b.max_body_size.to_string());
    let ns: Vec<String> = b
        .resolver
        .nameservers
        .iter()
        .map(|a| q(&a.to_string()))
        .collect();
    kv(
        &mut t,
        "resolver",
        &format!(
            "{{ nameservers = [{}], interval = {} }}",
            ns.join(", "),
            dur(b.resolver.interval)
        ),
    );
    if b.tls.is_some() {
        let _ = writeln!(
            t,
            "# TLS files are mounted from the orchestrator's secret (see the manifest)."
        );
        kv(
            &mut t,
            "tls",
            &format!(
                "{{ cert = {}, key = {} }}",
                q(&format!("{}/tls.crt", front.tls_dir)),
                q(&format!("{}/tls.key", front.tls_dir))
            ),
        );
    }
    for route in &b.routes {
        t.push_str("\n[[balancer.routes]]\n");
        kv(&mut t, "path", &q(&route.path));
        kv(&mut t, "limit", &q(&route.limit));
    }
    for (name, l) in &c.limits {
        let _ = write!(t, "\n[limits.{}]\n", key_name(name));
        let key = match &l.key {
            LimitKey::ClientIp => "client_ip".to_string(),
            LimitKey::Header(h) => format!("header:{h}"),
            LimitKey::Cookie(c) => format!("cookie:{c}"),
        };
        kv(&mut t, "key", &q(&key));
        kv(&mut t, "rate", &q(&rate(l.rate)));
        kv(&mut t, "burst", &l.burst.to_string());
        if let Some(url) = &l.redis {
            kv(&mut t, "redis", &q(&loopback_to_service(c, url)));
        }
    }
    t.push_str("\n[admin]\n");
    kv(&mut t, "listen", &q(&format!("0.0.0.0:{admin_port}")));
    if let Some(token) = &c.admin.token {
        kv(&mut t, "token", &q(token));
    }
    Some(t)
}

fn kv(t: &mut String, k: &str, v: &str) {
    let _ = writeln!(t, "{k} = {v}");
}

/// A TOML basic string (JSON's escapes are valid TOML escapes).
fn q(s: &str) -> String {
    serde_json::to_string(s).expect("a string serialises")
}

/// A table key: bare when TOML allows it, else quoted.
fn key_name(k: &str) -> String {
    if !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        k.to_string()
    } else {
        q(k)
    }
}

/// A duration in drove's syntax, exact to the microsecond.
fn dur(d: Duration) -> String {
    let us = d.as_micros();
    let s = if us.is_multiple_of(1_000_000) {
        format!("{}s", us / 1_000_000)
    } else if us.is_multiple_of(1_000) {
        format!("{}ms", us / 1_000)
    } else {
        format!("{us}us")
    };
    q(&s)
}

fn pct(f: f64) -> String {
    // Rounded so that 0.07 is "7%", not "7.000000000000001%".
    let v = (f * 100.0 * 1e9).round() / 1e9;
    q(&format!("{v}%"))
}

fn rate(r: Rate) -> String {
    let per = match r.per.as_secs() {
        1 if r.per.subsec_nanos() == 0 => "s".to_string(),
        60 if r.per.subsec_nanos() == 0 => "m".to_string(),
        3_600 if r.per.subsec_nanos() == 0 => "h".to_string(),
        86_400 if r.per.subsec_nanos() == 0 => "d".to_string(),
        _ => dur(r.per).trim_matches('"').to_string(),
    };
    format!("{}/{per}", r.count)
}

fn opt_header(h: &Option<String>) -> String {
    match h {
        Some(name) => q(name),
        None => "false".into(),
    }
}

fn probe(p: &ProbeConfig) -> String {
    let kind = match &p.kind {
        ProbeKind::Http { path } => format!("http = {}", q(path)),
        // A balancer probe of TCP kind connects to each backend's own address.
        ProbeKind::Tcp { .. } | ProbeKind::Command { .. } => "tcp = true".to_string(),
    };
    let expect = p
        .expect_status
        .map(|s| format!(", expect_status = {s}"))
        .unwrap_or_default();
    format!(
        "{{ {kind}, interval = {}, timeout = {}, rise = {}, fall = {}{expect} }}",
        dur(p.interval),
        dur(p.timeout),
        p.rise,
        p.fall
    )
}

/// `redis://127.0.0.1:6379/` → `redis://redis:6379/` when a service of the config has
/// that base port: in an orchestrator, 127.0.0.1 is drove's own container and services
/// reach each other by name.
pub fn loopback_to_service(c: &Config, url: &str) -> String {
    for host in ["127.0.0.1", "localhost"] {
        let Some((scheme, rest)) = url.split_once("://") else {
            return url.to_string();
        };
        let Some(after) = rest.strip_prefix(host).and_then(|r| r.strip_prefix(':')) else {
            continue;
        };
        let port_len = after
            .find(|ch: char| !ch.is_ascii_digit())
            .unwrap_or(after.len());
        let Ok(port) = after[..port_len].parse::<u16>() else {
            continue;
        };
        if let Some(s) = c.services.iter().find(|s| s.port == PortSpec::Base(port)) {
            return format!("{scheme}://{}:{}", s.name, &after);
        }
    }
    url.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use drove_config::BalancerConfig;

    const SOURCE: &str = r#"
[services.web]
command = "node server.js"
instances = 3
port = 5001
health = { http = "/health", interval = "3s" }

[services.redis]
command = "redis-server --port 6379"
port = 6379

[balancer]
listen = "127.0.0.1:8088"
workers = 2
defer_accept = false
service = "web"
algorithm = "hash"
hash_key = "cookie:uid"
sticky = { cookie = "srv", max_age = "1h30m" }
retries = { attempts = 3, budget = "7%", per_try_timeout = "1500ms", on_5xx = true }
passive = { max_fails = 5, fail_timeout = "45s", on_5xx = true }
health = { http = "/health/ready", interval = "750ms", timeout = "250ms", rise = 3, fall = 4, expect_status = 204 }
max_ejected = "35%"
timeouts = { connect = "2s", header = "5s", response = "90s", idle = "120s", shutdown_grace = "15s" }
instance_header = "X-Served-By"
request_id = false
trusted_proxies = ["10.0.0.0/8", "192.168.1.0/24"]
upgrades = ["websocket", "my-proto"]
http2 = false
http2_max_streams = 64
access_log = "json"
max_header_size = "32KiB"
max_body_size = "10MiB"
resolver = { interval = "2s" }

[[balancer.routes]]
path = "/auth/"
limit = "strict"

[[balancer.routes]]
path = "/api/"
limit = "per-key"

[limits.strict]
rate = "10/s"
burst = 20

[limits.per-key]
key = "header:X-API-Key"
rate = "600/m"
redis = "redis://127.0.0.1:6379/0"

[admin]
listen = "127.0.0.1:9911"
token = "s3cret"
"#;

    fn front() -> Front<'static> {
        Front {
            dns_name: "web-headless.prod.svc.cluster.local",
            port: 5001,
            tls_dir: "/etc/drove/tls",
        }
    }

    #[test]
    fn round_trip_keeps_every_balancer_setting() {
        let src = drove_config::parse(SOURCE, "drove.toml").unwrap();
        let text = drove_toml(&src, &front()).unwrap();
        let out =
            drove_config::parse(&text, "exported.toml").unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert!(out.services.is_empty());
        let (a, b) = (src.balancer.clone().unwrap(), out.balancer.clone().unwrap());
        // What changes on purpose: where it listens and where the replicas are.
        assert_eq!(b.listen, "0.0.0.0:8088".parse().unwrap());
        assert_eq!(b.dns_backends.len(), 1, "{text}");
        let d = &b.dns_backends[0];
        assert_eq!(
            d.query,
            drove_config::DnsQuery::Host {
                host: "web-headless.prod.svc.cluster.local".into(),
                port: 5001
            }
        );
        assert_eq!(d.name, "web");
        // Everything else is the same value.
        let same = BalancerConfig {
            listen: b.listen,
            backends: b.backends.clone(),
            dns_backends: b.dns_backends.clone(),
            ..a
        };
        assert_eq!(b, same, "{text}");
        let mut limits = src.limits.clone();
        limits.get_mut("per-key").unwrap().redis = Some("redis://redis:6379/0".into());
        assert_eq!(out.limits, limits);
        assert_eq!(out.admin.listen, "0.0.0.0:9911".parse().unwrap());
        assert_eq!(out.admin.token.as_deref(), Some("s3cret"));
    }

    #[test]
    fn without_balancer_health_the_service_health_checks_each_replica() {
        let src = SOURCE.replace(
            "health = { http = \"/health/ready\", interval = \"750ms\", timeout = \"250ms\", rise = 3, fall = 4, expect_status = 204 }\n",
            "",
        );
        let src = drove_config::parse(&src, "drove.toml").unwrap();
        let out = drove_config::parse(&drove_toml(&src, &front()).unwrap(), "x.toml").unwrap();
        let h = out.balancer.unwrap().health.unwrap();
        assert_eq!(
            h.kind,
            ProbeKind::Http {
                path: "/health".into()
            }
        );
        assert_eq!(h.interval, Duration::from_secs(3));
    }

    #[test]
    fn the_builtin_demo_exports() {
        let demo = drove_config::builtin_demo("drove");
        let text = drove_toml(&demo, &front()).unwrap();
        let out = drove_config::parse(&text, "x.toml").unwrap();
        assert_eq!(
            out.balancer.unwrap().algorithm,
            demo.balancer.unwrap().algorithm
        );
    }

    #[test]
    fn durations_rates_and_percentages() {
        assert_eq!(dur(Duration::from_millis(1500)), "\"1500ms\"");
        assert_eq!(dur(Duration::from_secs(90)), "\"90s\"");
        assert_eq!(dur(Duration::ZERO), "\"0s\"");
        assert_eq!(dur(Duration::from_micros(2500)), "\"2500us\"");
        assert_eq!(pct(0.07), "\"7%\"");
        assert_eq!(
            rate(Rate {
                count: 5,
                per: Duration::from_secs(10)
            }),
            "5/10s"
        );
    }
}
