//! Metrics, dashboard, status and exports end to end: what `/metrics` counts equals what
//! clients observed; the output passes `promtool check metrics`; the alert rules pass
//! `promtool check rules` and fire on the series they are meant for; the Grafana
//! dashboard names only series `/metrics` really has; `--log-format json` logs JSON.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use drove_test_support::load::{Load, LoadSpec};
use drove_test_support::{http, tempdir, wait_until, Drove};

use crate::drove;

/// Three demo instances behind the balancer, with `max_memory` so that every metric
/// family has series.
fn config(extra_admin: &str) -> String {
    format!(
        r#"[services.web]
command = ["{drove}", "demo"]
instances = 3
port = "auto"
ready = {{ http = "/ready", interval = "50ms" }}
stop = {{ signal = "TERM", grace = "5s" }}
max_memory = "1GiB"
logs = {{ dir = "logs" }}

[balancer]
service = "web"
workers = 1
instance_header = "X-Drove-Instance"
health = {{ http = "/health", interval = "250ms", timeout = "200ms", rise = 1, fall = 2 }}

[admin]
{extra_admin}
"#,
        drove = drove().display()
    )
}

/// One sample line of the text format: name, labels, value.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

fn parse_metrics(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').expect("name value");
            let (name, labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let labels = labels
                .split(',')
                .filter(|kv| !kv.is_empty())
                .map(|kv| {
                    let (k, v) = kv.split_once('=').expect("k=v");
                    (k.to_string(), v.trim_matches('"').to_string())
                })
                .collect();
            Sample {
                name: name.to_string(),
                labels,
                value: value.parse().expect("a number"),
            }
        })
        .collect()
}

fn scrape(d: &Drove, headers: &[(&str, &str)]) -> http::Response {
    http::request(d.admin, "GET", "/metrics", headers, b"").expect("scrape")
}

fn sum(samples: &[Sample], name: &str, filter: impl Fn(&Sample) -> bool) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name && filter(s))
        .map(|s| s.value)
        .sum()
}

fn promtool(args: &[&str], stdin: Option<&str>) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package `prometheus`; scripts/test installs it)");
    let mut input = child.stdin.take().unwrap();
    if let Some(s) = stdin {
        input.write_all(s.as_bytes()).unwrap();
    }
    drop(input);
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn drove_output(args: &[&str]) -> String {
    let out = Command::new(drove())
        .args(args)
        .output()
        .expect("run drove");
    assert!(
        out.status.success(),
        "drove {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn metrics_count_exactly_what_clients_saw() {
    let d = Drove::up(drove(), &config(""));
    assert!(
        d.wait_in_rotation(3, Duration::from_secs(20)),
        "{:?}",
        d.status()
    );

    let load = Load::start(LoadSpec::get(d.addr(), "/whoami", 4));
    std::thread::sleep(Duration::from_millis(1200));
    let seen = load.stop();
    assert_eq!(seen.failed, 0, "{:?}", seen.failures);
    // Plus a few answers of each kind, seen one by one.
    let mut statuses: BTreeMap<String, BTreeMap<u16, u64>> = BTreeMap::new();
    for (path, status) in [
        ("/status/404", 404),
        ("/status/503", 503),
        ("/status/201", 201),
    ] {
        for _ in 0..5 {
            let r = http::get(d.addr(), path).unwrap();
            assert_eq!(r.status, status);
            let who = r.header("x-drove-instance").unwrap().to_string();
            *statuses.entry(who).or_default().entry(status).or_default() += 1;
        }
    }
    // `drove status` shows the sampler's req/s and p99 (the load ended just now; the
    // window is 5s), and so does /api/status.
    let s = d.status();
    let web1 = s.instance("web.1").unwrap();
    assert!(web1.rps.unwrap() > 0.0, "{web1:?}");
    assert!(web1.p99_ms.unwrap() > 0.0, "{web1:?}");
    assert!(s.balancer.as_ref().unwrap().rps.unwrap() > 0.0);
    let table = drove_output(&["--admin", &d.admin.to_string(), "status"]);
    let header = table.lines().find(|l| l.starts_with("INSTANCE")).unwrap();
    assert!(
        header.contains("REQ/S") && header.contains("P99"),
        "{table}"
    );

    let mut per_instance = seen.per_instance.clone();
    for (who, by_status) in &statuses {
        *per_instance.entry(who.clone()).or_default() += by_status.values().sum::<u64>();
    }
    let n = seen.total() + 15;
    assert_eq!(per_instance.values().sum::<u64>(), n);
    assert_eq!(per_instance.len(), 3, "{per_instance:?}");

    let r = scrape(&d, &[]);
    assert_eq!(r.status, 200);
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let text = r.text();
    let m = parse_metrics(&text);

    // Sum over instances and classes = every request; per instance = what the headers said.
    assert_eq!(sum(&m, "drove_requests_total", |_| true), n as f64);
    for (id, count) in &per_instance {
        let mine =
            |s: &Sample| s.labels.get("instance") == Some(id) && s.labels["service"] == "web";
        assert_eq!(sum(&m, "drove_requests_total", mine), *count as f64, "{id}");
        assert_eq!(
            sum(&m, "drove_request_duration_seconds_count", mine),
            *count as f64,
            "{id}"
        );
        let inf = |s: &Sample| mine(s) && s.labels.get("le").map(String::as_str) == Some("+Inf");
        assert_eq!(
            sum(&m, "drove_request_duration_seconds_bucket", inf),
            *count as f64,
            "{id}"
        );
        let by_class =
            |class: &'static str| move |s: &Sample| mine(s) && s.labels["class"] == class;
        let got = statuses.get(id).cloned().unwrap_or_default();
        let want_5xx = got.get(&503).copied().unwrap_or(0);
        let want_4xx = got.get(&404).copied().unwrap_or(0);
        assert_eq!(
            sum(&m, "drove_requests_total", by_class("5xx")),
            want_5xx as f64,
            "{id}"
        );
        assert_eq!(
            sum(&m, "drove_requests_total", by_class("4xx")),
            want_4xx as f64,
            "{id}"
        );
    }
    // The balancer's own totals agree (no other traffic went through it).
    assert_eq!(sum(&m, "drove_balancer_requests_total", |_| true), n as f64);
    assert_eq!(
        sum(&m, "drove_balancer_responses_total", |_| true),
        n as f64
    );
    assert_eq!(
        sum(&m, "drove_balancer_responses_total", |s| s.labels["class"]
            == "5xx"),
        5.0
    );
    assert_eq!(sum(&m, "drove_balancer_backends_available", |_| true), 3.0);
    assert_eq!(sum(&m, "drove_backend_healthy", |_| true), 3.0);
    // Processes: one `ready` state per instance, RSS and the max_memory it is held to.
    assert_eq!(
        sum(&m, "drove_instance_state", |s| s.labels["state"] == "ready"),
        3.0
    );
    assert_eq!(sum(&m, "drove_instance_state", |_| true), 3.0);
    assert_eq!(
        m.iter()
            .filter(|s| s.name == "drove_instance_rss_bytes" && s.value > 0.0)
            .count(),
        3
    );
    assert_eq!(
        sum(&m, "drove_instance_max_memory_bytes", |_| true),
        3.0 * 1024.0 * 1024.0 * 1024.0
    );

    // The format is valid Prometheus text.
    let (ok, out) = promtool(&["check", "metrics"], Some(&text));
    assert!(ok, "promtool check metrics:\n{out}\n{text}");

    // Prometheus asks for OpenMetrics and gets it.
    let r = scrape(
        &d,
        &[(
            "Accept",
            "application/openmetrics-text;version=1.0.0,text/plain;q=0.5",
        )],
    );
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("application/openmetrics-text"));
    assert!(r.text().trim_end().ends_with("# EOF"));

    // The Grafana dashboard uses only series this drove exposes.
    let names: BTreeSet<&str> = m.iter().map(|s| s.name.as_str()).collect();
    let dashboard: serde_json::Value =
        serde_json::from_str(&drove_output(&["export", "grafana"])).expect("Grafana JSON");
    let mut exprs = Vec::new();
    for p in dashboard["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            exprs.push(t["expr"].as_str().unwrap().to_string());
        }
    }
    for v in dashboard["templating"]["list"].as_array().unwrap() {
        if let Some(q) = v["query"]["query"].as_str() {
            exprs.push(q.to_string());
        }
    }
    assert!(exprs.len() > 15);
    let mut used = BTreeSet::new();
    for e in &exprs {
        for tok in e.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if tok.starts_with("drove_") {
                assert!(
                    names.contains(tok),
                    "Grafana expression uses `{tok}`, which /metrics does not have: {e}"
                );
                used.insert(tok.to_string());
            }
        }
    }
    // So do the alert rules.
    for tok in crate_alert_metric_names() {
        assert!(
            names.contains(tok.as_str()),
            "alert rules use `{tok}`, which /metrics does not have"
        );
    }
    assert!(
        used.contains("drove_request_duration_seconds_bucket")
            && used.contains("drove_requests_total")
    );
}

fn crate_alert_metric_names() -> BTreeSet<String> {
    let rules = drove_output(&["export", "alerts"]);
    rules
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .flat_map(|l| {
            l.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .filter(|t| t.starts_with("drove_") && t.len() > "drove_".len())
        .collect()
}

/// Series in promtool's unit-test notation, and the alerts they must (and must not) fire.
const RULE_TESTS: &str = r#"rule_files: [alerts.yml]
evaluation_interval: 15s
tests:
  - interval: 15s
    input_series:
      - series: 'drove_balancer_backends_available{job="drove",service="web"}'
        values: '3 3 0 0 0 0 0'
      - series: 'drove_instance_state{job="drove",service="web",instance="web.2",state="crashloop"}'
        values: '0 1 1 1 1 1 1 1'
      - series: 'drove_instance_state{job="drove",service="web",instance="web.1",state="crashloop"}'
        values: '0 0 0 0 0 0 0 0'
      - series: 'drove_instance_rss_bytes{job="drove",service="web",instance="web.1"}'
        values: '100+0x40'
      - series: 'drove_instance_max_memory_bytes{job="drove",service="web",instance="web.1"}'
        values: '105+0x40'
      - series: 'drove_balancer_responses_total{job="drove",class="2xx"}'
        values: '0+80x40'
      - series: 'drove_balancer_responses_total{job="drove",class="5xx"}'
        values: '0+20x40'
      - series: 'drove_balancer_retry_budget_exhausted_total{job="drove"}'
        values: '0 0 0 5 5 5 5'
    alert_rule_test:
      - eval_time: 15s
        alertname: DroveAllInstancesDown
        exp_alerts: []
      - eval_time: 90s
        alertname: DroveAllInstancesDown
        exp_alerts:
          - exp_labels: {severity: critical, job: drove, service: web}
            exp_annotations:
              summary: "drove: no instance of web can take traffic"
              description: "Every instance of web is out of rotation or unhealthy: clients get 503."
      - eval_time: 2m
        alertname: DroveInstanceCrashloop
        exp_alerts:
          - exp_labels: {severity: critical, job: drove, service: web, instance: web.2, state: crashloop}
            exp_annotations:
              summary: "drove: instance web.2 is crash-looping"
              description: "web.2 exits soon after every start; drove retries it with backoff. See `drove logs web.2`."
      - eval_time: 8m
        alertname: DroveInstanceMemoryNearLimit
        exp_alerts:
          - exp_labels: {severity: warning, job: drove, service: web, instance: web.1}
            exp_annotations:
              summary: "drove: web.1 uses 95.24% of max_memory"
              description: "Above max_memory drove restarts the instance (drained first). A steady climb is a leak."
      - eval_time: 8m
        alertname: DroveHighErrorRatio
        exp_alerts:
          - exp_labels: {severity: warning, job: drove}
            exp_annotations:
              summary: "drove: 20% of responses are 5xx"
              description: "More than 5% of the responses to clients were 5xx over 5 minutes (drove's own 502/503/504 included)."
      - eval_time: 1m
        alertname: DroveRetryBudgetExhausted
        exp_alerts:
          - exp_labels: {severity: warning, job: drove}
            exp_annotations:
              summary: "drove: the retry budget ran out"
              description: "5 retries were not made in 5 minutes because retries already took their share of traffic: instances are failing faster than retries can hide."
"#;

#[test]
fn alert_rules_pass_promtool_and_fire_when_they_should() {
    let dir = tempdir("alerts");
    let rules = drove_output(&["export", "alerts"]);
    std::fs::write(dir.join("alerts.yml"), &rules).unwrap();
    std::fs::write(dir.join("tests.yml"), RULE_TESTS).unwrap();
    let (ok, out) = promtool(
        &["check", "rules", dir.join("alerts.yml").to_str().unwrap()],
        None,
    );
    assert!(ok, "promtool check rules:\n{out}");
    assert!(out.contains("SUCCESS: 8 rules found"), "{out}");
    let (ok, out) = promtool(
        &["test", "rules", dir.join("tests.yml").to_str().unwrap()],
        None,
    );
    assert!(ok, "promtool test rules:\n{out}");
}

#[test]
fn dashboard_page_history_and_token() {
    let d = Drove::up(drove(), &config("token = \"s3cret\""));
    // The page holds no data: open. Data and metrics need the token.
    let page = http::get(d.admin, "/").unwrap();
    assert_eq!(page.status, 200);
    assert!(page
        .header("content-type")
        .unwrap()
        .starts_with("text/html"));
    assert!(page.text().contains("/api/dashboard"));
    assert_eq!(http::get(d.admin, "/api/dashboard").unwrap().status, 401);
    assert_eq!(http::get(d.admin, "/metrics").unwrap().status, 401);
    let auth = [("Authorization", "Bearer s3cret")];
    assert_eq!(
        http::request(d.admin, "GET", "/metrics", &auth, b"")
            .unwrap()
            .status,
        200
    );

    let dash = || -> serde_json::Value {
        let r = http::request(d.admin, "GET", "/api/dashboard", &auth, b"").unwrap();
        assert_eq!(r.status, 200);
        r.json()
    };
    assert!(
        wait_until(Duration::from_secs(20), || {
            let v = dash();
            v["balancer"]["backends"].as_array().is_some_and(|a| {
                a.iter()
                    .filter(|b| b["enabled"] == true && b["healthy"] == true)
                    .count()
                    == 3
            })
        }),
        "{}",
        dash()
    );
    for _ in 0..30 {
        let r = http::get(d.addr(), "/").unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
    }
    // Within a few samples the series show the traffic, one point a second.
    assert!(
        wait_until(Duration::from_secs(5), || {
            let v = dash();
            let h = &v["history"];
            let total: f64 = h["instances"]
                .as_object()
                .unwrap()
                .values()
                .flat_map(|s| {
                    s["rps"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .filter_map(|x| x.as_f64())
                })
                .sum();
            // Rates are per second over the measured interval (1 s give or take a ms).
            h["t"].as_array().unwrap().len() >= 2 && (total - 30.0).abs() < 1.0
        }),
        "{}",
        dash()["history"]
    );
    let v = dash();
    assert_eq!(v["token_required"], true);
    assert_eq!(
        v["service_config"]["web"]["max_memory"],
        1024u64 * 1024 * 1024
    );
    let shares: f64 = v["instances"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["share"].as_f64())
        .sum();
    assert!((shares - 1.0).abs() < 0.02, "{v}");
}

#[test]
fn log_format_json_writes_json_lines_to_stderr() {
    let dir = tempdir("jsonlog");
    let path = dir.join("drove.toml");
    std::fs::write(&path, config("")).unwrap();
    let err_path = dir.join("stderr.log");
    let mut cmd = Command::new(drove());
    cmd.args(["--log-format", "json", "up", "-c"])
        .arg(&path)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--quiet",
        ])
        .current_dir(&dir)
        .stderr(std::fs::File::create(&err_path).unwrap());
    let p = drove_test_support::Proc::spawn(cmd);
    let found = wait_until(Duration::from_secs(20), || {
        std::fs::read_to_string(&err_path)
            .unwrap_or_default()
            .matches("ready after")
            .count()
            >= 3
    });
    drop(p);
    let log = std::fs::read_to_string(&err_path).unwrap();
    assert!(found, "{log}");
    let mut in_rotation = 0;
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            v["timestamp"].is_string() && v["level"].is_string(),
            "{line}"
        );
        // With --quiet, each instance event is one log line (not also a `web.N |` line).
        if v["fields"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("ready after"))
        {
            assert!(
                v["fields"]["instance"]
                    .as_str()
                    .unwrap()
                    .starts_with("web."),
                "{line}"
            );
            in_rotation += 1;
        }
    }
    assert!(in_rotation >= 3, "{log}");
}

#[test]
fn static_backends_are_counted_under_service_static() {
    let backends: Vec<drove_test_support::Demo> = (1..=2)
        .map(|i| drove_test_support::demo(drove(), &format!("b{i}")))
        .collect();
    let addrs: Vec<_> = backends.iter().map(|b| b.addr).collect();
    let d = Drove::up(drove(), &crate::static_config(&addrs, ""));
    assert!(
        d.wait_in_rotation(2, Duration::from_secs(20)),
        "{:?}",
        d.status()
    );
    let mut seen: BTreeMap<String, u64> = BTreeMap::new();
    for _ in 0..40 {
        let r = http::get(d.addr(), "/whoami").unwrap();
        assert_eq!(r.status, 200);
        *seen
            .entry(r.header("x-drove-instance").unwrap().to_string())
            .or_default() += 1;
    }
    let text = scrape(&d, &[]).text();
    let m = parse_metrics(&text);
    for (id, n) in &seen {
        let mine = |s: &Sample| {
            s.labels.get("instance") == Some(id)
                && s.labels.get("service").map(String::as_str) == Some("static")
        };
        assert_eq!(
            sum(&m, "drove_requests_total", mine),
            *n as f64,
            "{id}\n{text}"
        );
    }
    assert_eq!(sum(&m, "drove_requests_total", |_| true), 40.0);
    // No supervised instance: those families are empty, and the text still valid.
    assert_eq!(sum(&m, "drove_instance_state", |_| true), 0.0);
    let (ok, out) = promtool(&["check", "metrics"], Some(&text));
    assert!(ok, "promtool check metrics:\n{out}\n{text}");
}
