//! `drove export prometheus`: the `scrape_configs` that make Prometheus read drove's own
//! `/metrics` and every service's instances without listing them: one job per service
//! with a port, fed by drove's HTTP service discovery (`GET /api/sd?service=NAME` on the
//! admin listener, `http_sd_configs`), which follows scale, restarts and replacements.
//!
//! The admin address is `--admin` if given, else `[admin] listen` (an unspecified
//! address such as 0.0.0.0 becomes loopback: Prometheus needs one it can connect to).
//! With `[admin] token`, both the SD requests and drove's scrape send it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use drove_config::{Config, PortSpec};
use serde_json::{json, Map, Value};

/// The address Prometheus uses to reach drove's admin listener.
fn admin_addr(c: &Config, admin: Option<SocketAddr>) -> SocketAddr {
    let mut a = admin.unwrap_or(c.admin.listen);
    if a.ip().is_unspecified() {
        a.set_ip(match a.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        });
    }
    a
}

/// Prometheus's duration syntax (`15s`, `500ms`).
fn prom_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// The scrape config (YAML) for `c`'s drove and its services' instances.
pub fn scrape_config(c: &Config, admin: Option<SocketAddr>, interval: Duration) -> String {
    let addr = admin_addr(c, admin);
    let every = prom_duration(interval);
    let auth = c
        .admin
        .token
        .as_ref()
        .map(|t| json!({"type": "Bearer", "credentials": t}));
    let own_job = if c.service("drove").is_some() {
        "drove-admin"
    } else {
        "drove"
    };
    let mut jobs = Vec::new();
    let mut job = Map::new();
    job.insert("job_name".into(), json!(own_job));
    job.insert("scrape_interval".into(), json!(every));
    // drove's series carry their own `instance` label (web.2): keep it.
    job.insert("honor_labels".into(), json!(true));
    job.insert(
        "static_configs".into(),
        json!([{"targets": [addr.to_string()]}]),
    );
    if let Some(a) = &auth {
        job.insert("authorization".into(), a.clone());
    }
    jobs.push(Value::Object(job));
    for s in c.services.iter().filter(|s| s.port != PortSpec::None) {
        let mut sd = Map::new();
        sd.insert(
            "url".into(),
            json!(format!("http://{addr}/api/sd?service={}", s.name)),
        );
        sd.insert("refresh_interval".into(), json!(every));
        if let Some(a) = &auth {
            sd.insert("authorization".into(), a.clone());
        }
        jobs.push(json!({
            "job_name": s.name,
            "scrape_interval": every,
            "metrics_path": "/metrics",
            "http_sd_configs": [Value::Object(sd)],
        }));
    }
    let mut out = format!(
        "# Prometheus scrape config for drove (`drove export prometheus`): drove's own metrics\n\
         # (job {own_job}), and each service's instances (one job per service) found through\n\
         # drove's HTTP service discovery at http://{addr}/api/sd: instances added, removed or\n\
         # restarted need no edit here. Labels: service, instance (web.2: stable across\n\
         # restarts), drove. Merge these jobs into prometheus.yml; drop the jobs of services\n\
         # that serve no /metrics (set metrics_path if yours is elsewhere).\n"
    );
    if auth.is_some() {
        out.push_str(
            "# [admin] token is set: the jobs send it (or point credentials_file at a file with it).\n",
        );
    }
    crate::export_manifests::yaml(&mut out, &json!({ "scrape_configs": jobs }), 0);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_job_for_drove_and_one_per_service_with_a_port() {
        let c = drove_config::parse(
            r#"
[services.web]
command = "x"
port = 5001
[services.worker]
command = "y"
port = "none"
[admin]
listen = "0.0.0.0:9911"
token = "t0k"
"#,
            "drove.toml",
        )
        .unwrap();
        let y = scrape_config(&c, None, Duration::from_millis(1500));
        assert!(y.contains("- \"127.0.0.1:9911\""), "{y}");
        assert!(
            y.contains("url: \"http://127.0.0.1:9911/api/sd?service=web\""),
            "{y}"
        );
        assert!(!y.contains("worker"), "{y}");
        assert!(y.contains("refresh_interval: \"1500ms\""), "{y}");
        assert_eq!(y.matches("credentials: \"t0k\"").count(), 2, "{y}");
        let other = scrape_config(
            &c,
            Some("10.1.2.3:9000".parse().unwrap()),
            Duration::from_secs(15),
        );
        assert!(
            other.contains("http://10.1.2.3:9000/api/sd?service=web"),
            "{other}"
        );
        assert!(other.contains("scrape_interval: \"15s\""), "{other}");
    }
}
