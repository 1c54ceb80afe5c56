//! `drove export grafana|alerts|prometheus|k8s|compose|dockerfile`: a Grafana dashboard
//! and Prometheus alert rules for drove's metrics (docs/metrics.md), the Prometheus scrape
//! config for drove and its instances (`export_prometheus.rs`), drove.toml as Kubernetes
//! manifests or a Compose file with drove in front (`export_manifests.rs`), or the
//! Dockerfile of drove's image, printed to stdout.
//!
//! The dashboard and the alerts use only series that `/metrics` exposes; the e2e tests
//! check that against a running drove and run `promtool check rules` on the alerts.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{json, Value};

/// What to export.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ExportKind {
    /// A Grafana dashboard (JSON) for drove's Prometheus metrics.
    Grafana,
    /// Prometheus alerting rules (YAML).
    Alerts,
    /// Kubernetes manifests (YAML) from drove.toml: a Deployment per service (replicas,
    /// command, env, startup/readiness probes, stop grace, memory limit) and a Service
    /// for the balanced one.
    K8s,
    /// A Docker Compose file (YAML) from drove.toml: replicas, command, env, health
    /// check, stop signal and grace, restart policy, depends_on with conditions; and a
    /// `drove` service balancing the balanced service's replicas.
    Compose,
    /// Prometheus scrape config (YAML): drove's /metrics, and every service's instances
    /// through drove's HTTP service discovery (GET /api/sd).
    Prometheus,
    /// The Dockerfile of drove's image (build it in a checkout of drove's source).
    Dockerfile,
    /// A systemd unit running this drove (Type=notify, watchdog, ExecReload = drove
    /// reload, stop timeout covering the graces).
    Systemd,
}

impl ExportKind {
    /// Whether this export is made from drove.toml.
    pub fn reads_config(self) -> bool {
        matches!(
            self,
            ExportKind::K8s | ExportKind::Compose | ExportKind::Prometheus | ExportKind::Systemd
        )
    }
}

/// `drove export KIND`.
#[derive(Debug, Clone, clap::Args)]
pub struct ExportArgs {
    /// What to print.
    #[arg(value_enum)]
    pub kind: ExportKind,
    /// k8s/compose: the container image of a service, as SERVICE=IMAGE (repeatable);
    /// default SERVICE:latest. `drove=IMAGE` names drove's own image (default
    /// drove:latest, also used by services that run `{drove}`).
    #[arg(long = "image", value_name = "SERVICE=IMAGE", value_parser = parse_image)]
    pub images: Vec<(String, String)>,
    /// k8s: the namespace of every object, and of the DNS name drove finds the replicas by.
    #[arg(long, default_value = "default", value_name = "NAMESPACE", value_parser = parse_namespace)]
    pub namespace: String,
    /// prometheus: scrape interval of every job and refresh interval of the service
    /// discovery (e.g. 15s, 1m, 500ms).
    #[arg(long, default_value = "15s", value_name = "DURATION", value_parser = parse_interval)]
    pub interval: Duration,
}

/// A Kubernetes namespace name (an RFC 1123 label).
fn parse_namespace(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!(
            "`{s}` is not a namespace name (lower-case letters, digits and `-`, at most 63)"
        ))
    }
}

/// `500ms`, `15s`, `1m`, `2h`.
fn parse_interval(s: &str) -> Result<Duration, String> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("expected a duration like 15s or 500ms, got `{s}`"))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => return Err(format!("expected a duration like 15s or 500ms, got `{s}`")),
    };
    if d.is_zero() {
        return Err("the interval must be more than 0".into());
    }
    Ok(d)
}

fn parse_image(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((svc, img)) if !svc.is_empty() && !img.is_empty() => Ok((svc.into(), img.into())),
        _ => Err(format!(
            "expected SERVICE=IMAGE, e.g. web=registry.example/web:1.2, got `{s}`"
        )),
    }
}

/// The repository's Dockerfile: the image the exported manifests run as `drove:latest`.
pub const DOCKERFILE: &str = include_str!("../Dockerfile");

/// Prints the export; returns the exit code. `config` is loaded when the kind
/// [reads it](ExportKind::reads_config); `admin` is `--admin` (the admin address
/// Prometheus should use).
pub fn run(
    args: ExportArgs,
    config: Option<&drove_config::Config>,
    admin: Option<SocketAddr>,
) -> anyhow::Result<u8> {
    let images: BTreeMap<String, String> = args.images.into_iter().collect();
    if let Some(c) = config {
        if let Some(unknown) = images
            .keys()
            .find(|s| *s != "drove" && c.service(s).is_none())
        {
            anyhow::bail!("--image {unknown}=...: there is no service `{unknown}` in the config");
        }
    }
    match (args.kind, config) {
        (ExportKind::Grafana, _) => {
            println!("{}", serde_json::to_string_pretty(&grafana_dashboard())?)
        }
        (ExportKind::Alerts, _) => print!("{ALERT_RULES}"),
        (ExportKind::K8s, Some(c)) => print!(
            "{}",
            crate::export_manifests::k8s(c, &images, &args.namespace)
        ),
        (ExportKind::Compose, Some(c)) => {
            print!("{}", crate::export_manifests::compose(c, &images))
        }
        (ExportKind::Prometheus, Some(c)) => print!(
            "{}",
            crate::export_prometheus::scrape_config(c, admin, args.interval)
        ),
        (ExportKind::Dockerfile, _) => print!("{DOCKERFILE}"),
        (ExportKind::Systemd, Some(c)) => {
            let path = c
                .path
                .as_deref()
                .ok_or_else(|| anyhow::anyhow!("drove export systemd needs a config file (-c)"))?;
            let exe = std::env::current_exe()?;
            print!("{}", crate::export_systemd::unit(c, path, &exe))
        }
        (
            ExportKind::K8s | ExportKind::Compose | ExportKind::Prometheus | ExportKind::Systemd,
            None,
        ) => {
            anyhow::bail!("no config loaded")
        }
    }
    Ok(0)
}

/// Prometheus alerting rules. Thresholds are starting points: edit them to your service.
/// Series of one drove carry the same `job` (and, with `honor_labels`, drove's own
/// `instance`), so the ratios below match series one to one.
pub const ALERT_RULES: &str = r#"# Prometheus alerting rules for drove (`drove export alerts`).
# Load with `rule_files: [drove-alerts.yml]`. Scrape drove with `honor_labels: true` so
# that its per-instance label `instance` (web.2) is kept (see docs/metrics.md).
# Thresholds are starting points: adjust them to your service.
groups:
  - name: drove
    rules:
      - alert: DroveAllInstancesDown
        expr: drove_balancer_backends_available == 0
        for: 30s
        labels:
          severity: critical
        annotations:
          summary: "drove: no instance of {{ $labels.service }} can take traffic"
          description: "Every instance of {{ $labels.service }} is out of rotation or unhealthy: clients get 503."

      - alert: DroveInstanceDown
        expr: drove_backend_healthy == 0 and drove_backend_enabled == 1
        for: 1m
        labels:
          severity: warning
        annotations:
          summary: "drove: instance {{ $labels.instance }} is unhealthy"
          description: "{{ $labels.instance }} is in rotation but fails its health probes or was ejected after failures; the balancer routes around it."

      - alert: DroveInstanceNotRunning
        expr: drove_instance_state{state=~"backoff|exited"} == 1
        for: 2m
        labels:
          severity: warning
        annotations:
          summary: "drove: instance {{ $labels.instance }} is not running ({{ $labels.state }})"
          description: "{{ $labels.instance }} exited and has not been running for 2 minutes."

      - alert: DroveInstanceCrashloop
        expr: drove_instance_state{state="crashloop"} == 1
        for: 1m
        labels:
          severity: critical
        annotations:
          summary: "drove: instance {{ $labels.instance }} is crash-looping"
          description: "{{ $labels.instance }} exits soon after every start; drove retries it with backoff. See `drove logs {{ $labels.instance }}`."

      - alert: DroveHighErrorRatio
        expr: |
          sum by (job) (rate(drove_balancer_responses_total{class="5xx"}[5m]))
            / sum by (job) (rate(drove_balancer_responses_total[5m]))
            > 0.05
        for: 5m
        labels:
          severity: warning
        annotations:
          summary: "drove: {{ $value | humanizePercentage }} of responses are 5xx"
          description: "More than 5% of the responses to clients were 5xx over 5 minutes (drove's own 502/503/504 included)."

      - alert: DroveHighLatencyP99
        expr: |
          histogram_quantile(0.99,
            sum by (job, service, le) (rate(drove_request_duration_seconds_bucket[5m]))
          ) > 1
        for: 10m
        labels:
          severity: warning
        annotations:
          summary: "drove: p99 latency of {{ $labels.service }} is {{ $value | humanizeDuration }}"
          description: "The 99th percentile of the time to the response head has been above 1s for 10 minutes."

      - alert: DroveInstanceMemoryNearLimit
        expr: drove_instance_rss_bytes / drove_instance_max_memory_bytes > 0.9
        for: 5m
        labels:
          severity: warning
        annotations:
          summary: "drove: {{ $labels.instance }} uses {{ $value | humanizePercentage }} of max_memory"
          description: "Above max_memory drove restarts the instance (drained first). A steady climb is a leak."

      - alert: DroveRetryBudgetExhausted
        expr: increase(drove_balancer_retry_budget_exhausted_total[5m]) > 0
        labels:
          severity: warning
        annotations:
          summary: "drove: the retry budget ran out"
          description: "{{ $value | humanize }} retries were not made in 5 minutes because retries already took their share of traffic: instances are failing faster than retries can hide."
"#;

fn target(expr: &str, legend: &str) -> Value {
    json!({"datasource": {"type": "prometheus", "uid": "${datasource}"}, "expr": expr, "legendFormat": legend, "refId": "A"})
}

fn with_ref(mut t: Vec<Value>) -> Vec<Value> {
    for (i, x) in t.iter_mut().enumerate() {
        x["refId"] = json!(((b'A' + i as u8) as char).to_string());
    }
    t
}

fn stat(id: u32, title: &str, x: u32, expr: &str, unit: &str, thresholds: Value) -> Value {
    json!({
        "id": id, "type": "stat", "title": title,
        "gridPos": {"h": 4, "w": 4, "x": x, "y": 0},
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "targets": [target(expr, "")],
        "fieldConfig": {"defaults": {"unit": unit, "thresholds": {"mode": "absolute", "steps": thresholds}}, "overrides": []},
        "options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": false}, "colorMode": "value", "graphMode": "area"},
    })
}

fn series(id: u32, title: &str, pos: (u32, u32, u32), unit: &str, targets: Vec<Value>) -> Value {
    let (x, y, w) = pos;
    json!({
        "id": id, "type": "timeseries", "title": title,
        "gridPos": {"h": 8, "w": w, "x": x, "y": y},
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "targets": with_ref(targets),
        "fieldConfig": {"defaults": {"unit": unit, "custom": {"lineWidth": 2, "fillOpacity": 8, "showPoints": "never"}}, "overrides": []},
        "options": {"legend": {"displayMode": "table", "placement": "right", "calcs": ["lastNotNull", "max"]}, "tooltip": {"mode": "multi", "sort": "desc"}},
    })
}

/// The Grafana dashboard (schema 39; import it, pick the Prometheus data source).
pub fn grafana_dashboard() -> Value {
    let g = r#"job=~"$job""#;
    let gs = r#"job=~"$job", service=~"$service""#;
    let green_red =
        |red: f64| json!([{"color": "green", "value": null}, {"color": "red", "value": red}]);
    let red_green = json!([{"color": "red", "value": null}, {"color": "green", "value": 1}]);
    let panels = vec![
        stat(1, "Requests/s", 0, &format!("sum(rate(drove_balancer_requests_total{{{g}}}[$__rate_interval]))"), "reqps", json!([{"color": "blue", "value": null}])),
        stat(
            2,
            "5xx ratio",
            4,
            &format!("sum(rate(drove_balancer_responses_total{{{g}, class=\"5xx\"}}[$__rate_interval])) / sum(rate(drove_balancer_responses_total{{{g}}}[$__rate_interval]))"),
            "percentunit",
            green_red(0.05),
        ),
        stat(
            3,
            "p99 latency",
            8,
            &format!("histogram_quantile(0.99, sum by (le) (rate(drove_request_duration_seconds_bucket{{{gs}}}[$__rate_interval])))"),
            "s",
            green_red(1.0),
        ),
        stat(4, "Instances available", 12, &format!("sum(drove_balancer_backends_available{{{gs}}})"), "short", red_green),
        stat(5, "Client connections", 16, &format!("sum(drove_balancer_connections_active{{{g}}})"), "short", json!([{"color": "blue", "value": null}])),
        stat(6, "Restarts (1h)", 20, &format!("sum(increase(drove_instance_restarts_total{{{gs}}}[1h]))"), "short", green_red(1.0)),
        series(
            7,
            "Requests/s per instance",
            (0, 4, 12),
            "reqps",
            vec![target(&format!("sum by (instance) (rate(drove_requests_total{{{gs}}}[$__rate_interval]))"), "{{instance}}")],
        ),
        series(
            8,
            "Responses to clients by class",
            (12, 4, 12),
            "reqps",
            vec![target(&format!("sum by (class) (rate(drove_balancer_responses_total{{{g}}}[$__rate_interval]))"), "{{class}}")],
        ),
        series(
            9,
            "Latency per instance (p50, p99)",
            (0, 12, 12),
            "s",
            vec![
                target(&format!("histogram_quantile(0.99, sum by (instance, le) (rate(drove_request_duration_seconds_bucket{{{gs}}}[$__rate_interval])))"), "p99 {{instance}}"),
                target(&format!("histogram_quantile(0.5, sum by (instance, le) (rate(drove_request_duration_seconds_bucket{{{gs}}}[$__rate_interval])))"), "p50 {{instance}}"),
            ],
        ),
        series(
            10,
            "In flight per instance",
            (12, 12, 12),
            "short",
            vec![target(&format!("sum by (instance) (drove_backend_in_flight{{{gs}}})"), "{{instance}}")],
        ),
        series(
            11,
            "Memory (RSS) per instance",
            (0, 20, 12),
            "bytes",
            vec![
                target(&format!("sum by (instance) (drove_instance_rss_bytes{{{gs}}})"), "{{instance}}"),
                target(&format!("max by (service) (drove_instance_max_memory_bytes{{{gs}}})"), "max_memory {{service}}"),
            ],
        ),
        series(
            12,
            "CPU per instance",
            (12, 20, 12),
            "percentunit",
            vec![target(&format!("sum by (instance) (rate(drove_instance_cpu_seconds_total{{{gs}}}[$__rate_interval]))"), "{{instance}}")],
        ),
        series(
            13,
            "Health: healthy and in rotation",
            (0, 28, 12),
            "short",
            vec![
                target(&format!("sum by (instance) (drove_backend_healthy{{{gs}}})"), "healthy {{instance}}"),
                target(&format!("sum by (instance) (drove_backend_enabled{{{gs}}})"), "in rotation {{instance}}"),
            ],
        ),
        series(
            14,
            "Instances by state",
            (12, 28, 12),
            "short",
            vec![target(&format!("sum by (state) (drove_instance_state{{{gs}}})"), "{{state}}")],
        ),
        series(
            15,
            "Retries, upstream errors, ejections",
            (0, 36, 12),
            "short",
            vec![
                target(&format!("sum(rate(drove_balancer_retries_total{{{g}}}[$__rate_interval]))"), "retries/s"),
                target(&format!("sum(rate(drove_balancer_retry_budget_exhausted_total{{{g}}}[$__rate_interval]))"), "retry budget exhausted/s"),
                target(&format!("sum(rate(drove_balancer_upstream_connect_errors_total{{{g}}}[$__rate_interval]))"), "connect errors/s"),
                target(&format!("sum(rate(drove_balancer_upstream_timeouts_total{{{g}}}[$__rate_interval]))"), "timeouts/s"),
                target(&format!("sum(rate(drove_backend_ejections_total{{{gs}}}[$__rate_interval]))"), "ejections/s"),
            ],
        ),
        series(
            16,
            "Refused by drove",
            (12, 36, 12),
            "reqps",
            vec![
                target(&format!("sum(rate(drove_balancer_no_backend_total{{{g}}}[$__rate_interval]))"), "503 no instance available"),
                target(&format!("sum(rate(drove_balancer_rejected_total{{{g}}}[$__rate_interval]))"), "400/413 rejected"),
                target(&format!("sum(rate(drove_balancer_rate_limited_total{{{g}}}[$__rate_interval]))"), "429 rate limited"),
            ],
        ),
        series(
            17,
            "Restarts per instance",
            (0, 44, 24),
            "short",
            vec![target(&format!("sum by (instance) (increase(drove_instance_restarts_total{{{gs}}}[$__rate_interval]))"), "{{instance}}")],
        ),
    ];
    let var = |name: &str, query: &str| {
        json!({
            "name": name, "label": name, "type": "query",
            "datasource": {"type": "prometheus", "uid": "${datasource}"},
            "query": {"query": query, "refId": name},
            "definition": query, "refresh": 2, "includeAll": true, "multi": true,
            "current": {"selected": true, "text": ["All"], "value": ["$__all"]}, "sort": 1,
        })
    };
    json!({
        "title": "drove",
        "uid": "drove",
        "description": "drove: instances, traffic, latency, health and processes (drove export grafana).",
        "tags": ["drove"],
        "schemaVersion": 39,
        "version": 1,
        "editable": true,
        "timezone": "browser",
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {"list": [
            {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus", "current": {}, "hide": 0},
            var("job", "label_values(drove_build_info, job)"),
            var("service", "label_values(drove_requests_total, service)"),
        ]},
        "annotations": {"list": []},
        "panels": panels,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grafana_panels_have_unique_ids_and_targets() {
        let d = grafana_dashboard();
        let panels = d["panels"].as_array().unwrap();
        let mut ids: Vec<u64> = panels.iter().map(|p| p["id"].as_u64().unwrap()).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), panels.len());
        for p in panels {
            assert!(
                !p["targets"].as_array().unwrap().is_empty(),
                "{}",
                p["title"]
            );
            for t in p["targets"].as_array().unwrap() {
                assert!(t["expr"].as_str().unwrap().contains("drove_"));
            }
        }
    }
}
