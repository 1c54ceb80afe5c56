//! Prometheus finds the instances by itself: drove's HTTP service discovery (`GET
//! /api/sd`) read by a real `prometheus` (Debian's package; scripts/test installs it)
//! started with the config `drove export prometheus` writes. Its `/api/v1/targets` lists
//! every instance as up, and after `drove scale web=5` all five.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use drove_runtime::admin::sd::TargetGroup;
use drove_test_support::{free_port, http, tempdir, wait_until, Drove, Proc};
use serde_json::Value;

use crate::{drove, output_ok};

fn config(n: u32) -> String {
    format!(
        r#"[services.web]
command = ["{drove}", "demo"]
instances = {n}
port = "auto"
ready = {{ http = "/health/ready", interval = "50ms" }}
logs = {{ dir = "logs" }}

[balancer]
service = "web"
workers = 1
"#,
        drove = drove().display()
    )
}

/// The SD document, as the serde type the admin route serves.
fn sd(d: &Drove, query: &str) -> Vec<TargetGroup> {
    let r = http::get(d.admin, &format!("/api/sd{query}")).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    serde_json::from_slice(&r.body).expect("http_sd JSON")
}

/// (job, instance label) → (health, scrape URL) of Prometheus's active targets.
fn targets(prom: std::net::SocketAddr) -> BTreeMap<(String, String), (String, String)> {
    let Ok(r) = http::get(prom, "/api/v1/targets?state=active") else {
        return BTreeMap::new();
    };
    let Ok(v) = serde_json::from_slice::<Value>(&r.body) else {
        return BTreeMap::new();
    };
    v["data"]["activeTargets"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| {
            let l = &t["labels"];
            (
                (
                    l["job"].as_str().unwrap_or("").to_string(),
                    l["instance"].as_str().unwrap_or("").to_string(),
                ),
                (
                    t["health"].as_str().unwrap_or("").to_string(),
                    t["scrapeUrl"].as_str().unwrap_or("").to_string(),
                ),
            )
        })
        .collect()
}

/// Waits until Prometheus shows exactly web.1..n up in job `web`.
fn wait_web_up(prom: std::net::SocketAddr, n: u32) -> bool {
    wait_until(Duration::from_secs(40), || {
        let t = targets(prom);
        let web: Vec<(&String, &String)> = t
            .iter()
            .filter(|((job, _), _)| job == "web")
            .map(|((_, inst), (health, _))| (inst, health))
            .collect();
        web.len() == n as usize
            && web.iter().all(|(_, h)| *h == "up")
            && (1..=n).all(|k| web.iter().any(|(i, _)| **i == format!("web.{k}")))
    })
}

#[test]
fn prometheus_scrapes_every_instance_found_through_drove_sd_and_follows_a_scale() {
    let Some(prometheus) = ["/usr/bin/prometheus", "/usr/local/bin/prometheus"]
        .iter()
        .find(|p| std::path::Path::new(p).is_file())
    else {
        panic!("prometheus is required (scripts/test installs Debian's `prometheus`)");
    };
    let d = Drove::up(drove(), &config(3));
    assert!(
        d.wait_in_rotation(3, Duration::from_secs(20)),
        "{}",
        d.status()
    );

    // The SD document itself: one group per instance, its address and labels.
    let groups = sd(&d, "?service=web");
    assert_eq!(groups.len(), 3, "{groups:?}");
    let status = d.status();
    for g in &groups {
        let inst = &g.labels["instance"];
        let row = status["instances"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["id"] == inst.as_str())
            .unwrap();
        assert_eq!(g.targets, [format!("127.0.0.1:{}", row["port"])]);
        assert_eq!(g.labels["service"], "web");
        assert_eq!(g.labels["drove"], d.admin.to_string());
    }
    assert_eq!(sd(&d, "").len(), 3);
    let r = http::get(d.admin, "/api/sd?service=nope").unwrap();
    assert_eq!(r.status, 404, "{}", r.text());

    // The scrape config drove writes, with short intervals for the test.
    let dir = tempdir("prometheus");
    let out = output_ok(
        Command::new(drove())
            .args(["export", "prometheus", "-c"])
            .arg(&d.config)
            .args(["--admin", &d.admin.to_string(), "--interval", "1s"]),
    );
    let cfg = dir.join("prometheus.yml");
    std::fs::write(&cfg, &out.stdout).unwrap();
    let check = Command::new("promtool")
        .args(["check", "config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(check.status.success(), "{check:?}");

    let port = free_port();
    let prom: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut cmd = Command::new(prometheus);
    cmd.arg(format!("--config.file={}", cfg.display()))
        .arg(format!("--web.listen-address={prom}"))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg("--log.level=warn")
        .stderr(std::process::Stdio::null());
    let _p = Proc::spawn(cmd);

    assert!(wait_web_up(prom, 3), "targets: {:#?}", targets(prom));
    // drove's own target is scraped on its own schedule (Prometheus spreads first
    // scrapes over the interval): it may still be `unknown` when the instances are up.
    let drove_target = ("drove".to_string(), d.admin.to_string());
    wait_until(Duration::from_secs(10), || {
        targets(prom).get(&drove_target).map(|x| x.0.as_str()) == Some("up")
    });
    let t = targets(prom);
    assert_eq!(
        t.get(&("drove".to_string(), d.admin.to_string()))
            .map(|x| x.0.as_str()),
        Some("up"),
        "drove's own /metrics: {t:#?}"
    );
    for k in 1..=3 {
        let (_, url) = &t[&("web".to_string(), format!("web.{k}"))];
        assert!(url.ends_with("/metrics"), "{url}");
    }

    // Two more instances: Prometheus finds them without a config edit.
    d.cli_ok(&["scale", "web=5"]);
    assert!(wait_web_up(prom, 5), "targets: {:#?}", targets(prom));
}
