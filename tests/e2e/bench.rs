//! `drove bench` as a user runs it: through drove, against the demo instances.

use drove_test_support::{demo, Demo, Drove};
use std::process::Command;

use crate::{drove, static_config};

#[test]
fn bench_counts_every_request_and_each_instance_share() {
    let b: Vec<Demo> = (1..=3).map(|i| demo(drove(), &format!("b{i}"))).collect();
    let addrs: Vec<_> = b.iter().map(|d| d.addr).collect();
    let d = Drove::up(drove(), &static_config(&addrs, ""));
    let dir = drove_test_support::tempdir("bench");
    let html = dir.join("report.html");
    let url = format!("http://{}/health", d.addr());
    let out = crate::output_ok(
        Command::new(drove())
            .args(["bench", &url, "-c", "8", "-n", "600", "--json", "--html"])
            .arg(&html),
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert_eq!(v["requests"], 600, "{v}");
    let shares = v["per_instance"].as_object().expect("per-instance counts");
    assert_eq!(shares.len(), 3, "{v}");
    for n in shares.values() {
        assert_eq!(n, 200, "round robin, counted by the client: {v}");
    }
    // What drove counted agrees with what the client counted.
    let st = d.status();
    let served: u64 = st.backends().iter().map(|b| b.requests).sum();
    assert_eq!(served, 600);
    assert!(std::fs::read_to_string(&html).unwrap().contains("<svg"));
}

#[test]
fn fail_if_sets_exit_code_3_and_open_model_keeps_its_rate() {
    let b = demo(drove(), "only");
    let d = Drove::up(drove(), &static_config(&[b.addr], ""));
    let url = format!("http://{}/slow?ms=20", d.addr());
    let out = Command::new(drove())
        .args([
            "bench",
            &url,
            "--rate",
            "100",
            "-d",
            "2s",
            "-c",
            "16",
            "--json",
            "--fail-if",
            "p50>5ms",
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "p50 is about 20ms, so `p50>5ms` holds: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let n = v["requests"].as_u64().unwrap();
    assert!((190..=210).contains(&n), "open model at 100/s for 2s: {n}");
    let p50 = v["latency"]["p50_ms"].as_f64().unwrap();
    assert!(
        (19.0..40.0).contains(&p50),
        "p50 {p50} ms for a 20 ms backend"
    );
}
