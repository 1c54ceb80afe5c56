//! Failover under steady load with real signals: SIGKILL (a dead backend) and SIGSTOP
//! (a frozen one), active and passive health transitions, and POST never replayed.

use std::time::{Duration, Instant};

use drove_test_support::load::{Load, LoadSpec};
use drove_test_support::{demo, http, signal, wait_until, Demo, Drove};
use nix::sys::signal::Signal;

use crate::{drove, static_config};

/// Demo-style health: active HTTP probes every 250 ms, down after 2 failures, plus
/// passive ejection and a per-try timeout that bounds a frozen backend's cost.
const HEALTH: &str =
    "health = { http = \"/health\", interval = \"250ms\", timeout = \"200ms\", rise = 2, fall = 2 }
passive = { max_fails = 2, fail_timeout = \"5s\" }
retries = { attempts = 2, per_try_timeout = \"500ms\" }";

fn three() -> Vec<Demo> {
    (1..=3).map(|i| demo(drove(), &format!("b{i}"))).collect()
}

/// Three demo backends behind drove with no active health and passive ejection out of
/// reach (the first stays in rotation), a 300 ms per-try timeout, and the first backend
/// frozen (SIGSTOP).
fn three_with_the_first_frozen() -> (Vec<Demo>, Drove) {
    let b = three();
    let addrs: Vec<_> = b.iter().map(|d| d.addr).collect();
    let cfg = static_config(
        &addrs,
        "passive = { max_fails = 100, fail_timeout = \"30s\" }\nretries = { attempts = 2, per_try_timeout = \"300ms\" }",
    );
    let d = Drove::up(drove(), &cfg);
    assert!(signal(b[0].proc.pid(), Signal::SIGSTOP));
    (b, d)
}

/// Requests with a body (`/count`) the given demo backends have seen.
fn body_requests_seen(backends: &[Demo]) -> u64 {
    backends
        .iter()
        .map(|x| {
            http::get(x.addr, "/stats").unwrap().json()["post_count"]
                .as_u64()
                .unwrap()
        })
        .sum()
}

fn backend_state(d: &Drove, id: &str) -> (bool, bool) {
    let s = d.status();
    let b = s.backend(id).expect("the backend");
    (b.healthy, b.enabled)
}

#[test]
fn sigkill_of_a_backend_under_load_fails_no_request() {
    let mut b = three();
    let addrs: Vec<_> = b.iter().map(|d| d.addr).collect();
    let d = Drove::up(drove(), &static_config(&addrs, HEALTH));
    let load = Load::start(LoadSpec::get(d.addr(), "/whoami", 8));
    std::thread::sleep(Duration::from_millis(700));
    let victim = b.remove(1);
    let victim_id = victim.addr.to_string();
    assert!(signal(victim.proc.pid(), Signal::SIGKILL));
    std::thread::sleep(Duration::from_millis(1500));
    let (healthy, enabled) = backend_state(&d, &victim_id);
    assert!(
        !healthy && enabled,
        "the dead backend is unhealthy, still enabled (health != enabled)"
    );
    let s = load.stop();
    assert_eq!(s.failed, 0, "failed requests: {:?}", s.failures);
    assert!(s.ok > 200, "steady load: {s:?}");
    drop(victim);
    let st = d.balancer_status();
    assert!(st.retries >= 1 || st.connect_errors == 0, "{st:?}");
}

#[test]
fn sigstop_of_a_backend_fails_no_get_and_ejects_it_within_a_second() {
    let b = three();
    let addrs: Vec<_> = b.iter().map(|d| d.addr).collect();
    let d = Drove::up(drove(), &static_config(&addrs, HEALTH));
    let load = Load::start(LoadSpec::get(d.addr(), "/whoami", 8));
    std::thread::sleep(Duration::from_millis(700));
    let victim = &b[0];
    let victim_id = victim.addr.to_string();
    assert!(signal(victim.proc.pid(), Signal::SIGSTOP));
    let frozen_at = Instant::now();
    let ejected = wait_until(Duration::from_secs(3), || !backend_state(&d, &victim_id).0);
    let eject_time = frozen_at.elapsed();
    std::thread::sleep(Duration::from_millis(1500));
    let s = load.stop();
    assert!(signal(victim.proc.pid(), Signal::SIGCONT));
    assert!(ejected, "frozen backend never ejected");
    assert!(
        eject_time < Duration::from_secs(1),
        "ejected after {eject_time:?}"
    );
    assert_eq!(s.failed, 0, "failed requests: {:?}", s.failures);
    // None slower than the per-try timeout plus one retry (plus scheduling slack).
    assert!(
        s.max_latency < Duration::from_millis(500 + 400),
        "slowest {:?}",
        s.max_latency
    );
    // After SIGCONT, it comes back (rise = 2 probes).
    assert!(
        wait_until(Duration::from_secs(5), || backend_state(&d, &victim_id).0),
        "never healthy again"
    );
}

/// The demo's health settings, and no per-try timeout: a frozen instance's requests
/// would otherwise wait for the 60 s response timeout.
const DEMO_HEALTH: &str =
    "health = { http = \"/health\", interval = \"250ms\", timeout = \"200ms\", rise = 2, fall = 2 }";

/// Issue: "a frozen instance costs no timeout". 32 keep-alive connections; one of three
/// instances SIGSTOPped: the GETs stuck on it move the moment the active check marks it
/// down, so none fails, the slowest waits about the ejection time, and throughput holds.
#[test]
fn a_frozen_instance_costs_no_timeout() {
    let b = three();
    let addrs: Vec<_> = b.iter().map(|d| d.addr).collect();
    let d = Drove::up(drove(), &static_config(&addrs, DEMO_HEALTH));
    let mut spec = LoadSpec::get(d.addr(), "/whoami", 32);
    spec.pause = Duration::from_millis(1);
    let load = Load::start(spec);
    std::thread::sleep(Duration::from_millis(1000));
    let before_start = load.answered();
    std::thread::sleep(Duration::from_secs(2));
    let rate_before = (load.answered() - before_start) as f64 / 2.0;
    let victim = &b[0];
    let victim_id = victim.addr.to_string();
    assert!(signal(victim.proc.pid(), Signal::SIGSTOP));
    let frozen_at = Instant::now();
    let at_freeze = load.answered();
    let ejected = wait_until(Duration::from_secs(3), || !backend_state(&d, &victim_id).0);
    let eject_time = frozen_at.elapsed();
    std::thread::sleep(Duration::from_secs(8).saturating_sub(frozen_at.elapsed()));
    let rate_after = (load.answered() - at_freeze) as f64 / frozen_at.elapsed().as_secs_f64();
    let s = load.stop();
    assert!(signal(victim.proc.pid(), Signal::SIGCONT));
    eprintln!(
        "frozen instance: ejected after {eject_time:?}, slowest request {:?}, {rate_before:.0} req/s before, {rate_after:.0} req/s in the 8 s after, {} requests, {} failed",
        s.max_latency, s.total(), s.failed
    );
    assert!(ejected, "frozen backend never marked down");
    assert_eq!(s.failed, 0, "failed requests: {:?}", s.failures);
    assert!(
        s.max_latency <= eject_time + Duration::from_millis(100),
        "slowest {:?}, ejection after {eject_time:?}",
        s.max_latency
    );
    assert!(
        rate_after >= 0.5 * rate_before,
        "{rate_after:.0} req/s after the freeze vs {rate_before:.0} before"
    );
}

#[test]
fn a_post_that_reached_a_frozen_backend_is_not_replayed() {
    let (b, d) = three_with_the_first_frozen();
    let mut sent = 0u64;
    let mut timeouts = 0u64;
    for _ in 0..30 {
        let r = http::request(d.addr(), "POST", "/count", &[], b"x").unwrap();
        sent += 1;
        match r.status {
            200 => {}
            504 => timeouts += 1,
            s => panic!("unexpected status {s}"),
        }
    }
    // Round robin over 3 sends exactly every third POST to the frozen backend; each of
    // those times out (504) and is NOT sent again elsewhere.
    assert_eq!(
        timeouts,
        sent / 3,
        "POSTs to the frozen backend must fail, not be replayed"
    );
    let others = body_requests_seen(&b[1..]);
    assert_eq!(
        others,
        sent - timeouts,
        "the other backends saw only their own POSTs"
    );
    assert_eq!(
        d.balancer_status().retries,
        0,
        "no retry of a POST that was sent"
    );
    // GETs to the same frozen backend are retried instead: none fails.
    assert!(signal(b[0].proc.pid(), Signal::SIGSTOP));
    for _ in 0..12 {
        assert_eq!(http::get(d.addr(), "/whoami").unwrap().status, 200);
    }
    assert!(signal(b[0].proc.pid(), Signal::SIGCONT));
    assert!(d.balancer_status().retries >= 4);
}

#[test]
fn passive_ejection_and_recovery() {
    let mut b = three();
    let addrs: Vec<_> = b.iter().map(|d| d.addr).collect();
    let d = Drove::up(
        drove(),
        &static_config(&addrs, "passive = { max_fails = 1, fail_timeout = \"1s\" }"),
    );
    let victim = b.remove(2);
    let id = victim.addr.to_string();
    let port = victim.addr.port();
    drop(victim);
    // A connect failure ejects it (and the request is retried elsewhere).
    for _ in 0..6 {
        assert_eq!(http::get(d.addr(), "/health").unwrap().status, 200);
    }
    assert!(!backend_state(&d, &id).0, "ejected after a connect failure");
    // Bring a backend back on the same port: after fail_timeout it serves again.
    let mut cmd = std::process::Command::new(drove());
    cmd.arg("demo")
        .env("PORT", port.to_string())
        .env("DROVE_INSTANCE", "b3-again");
    let _again = drove_test_support::Proc::spawn(cmd);
    assert!(wait_until(Duration::from_secs(5), || backend_state(
        &d, &id
    )
    .0));
    let mut seen = false;
    for _ in 0..30 {
        let r = http::get(d.addr(), "/whoami").unwrap();
        seen |= r.json()["instance"] == "b3-again";
    }
    assert!(seen, "the recovered backend gets traffic again");
}

#[test]
fn the_retry_budget_stops_hammering_a_sick_fleet() {
    let b = three();
    let addrs: Vec<_> = b.iter().map(|d| d.addr).collect();
    // Every backend answers 503: with on_5xx retries, each request could be tried 3
    // times; the 20% budget (plus its small initial credit) holds retries far below.
    let d = Drove::up(
        drove(),
        &static_config(&addrs, "retries = { attempts = 2, budget = \"20%\", on_5xx = true }\npassive = { max_fails = 0 }"),
    );
    let n = 300u64;
    let mut c = drove_test_support::http::Conn::open(d.addr(), Duration::from_secs(5)).unwrap();
    for _ in 0..n {
        assert_eq!(
            c.request("GET", "/status/503", &[], b"").unwrap().status,
            503
        );
    }
    let st = d.balancer_status();
    let (retries, exhausted) = (st.retries, st.retry_budget_exhausted);
    assert!(
        retries <= n / 5 + 10 + 2,
        "retries {retries} exceed the budget"
    );
    assert!(retries >= n / 5 - 10, "the budget is used: {retries}");
    assert!(exhausted > 0, "{st:?}");
}

#[test]
fn a_put_with_a_small_body_is_replayed_on_another_backend() {
    let (b, d) = three_with_the_first_frozen();
    // PUT is idempotent and its small body is read whole before it is sent: a PUT that
    // reached the frozen backend is sent again to another, and every one succeeds.
    let body = vec![b'p'; 3000];
    for _ in 0..12 {
        let r = http::request(d.addr(), "PUT", "/count", &[], &body).unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["bytes"], 3000, "the replayed body arrived whole");
    }
    let others = body_requests_seen(&b[1..]);
    assert_eq!(others, 12, "the other backends answered every PUT");
    // Round robin sends at least every third PUT to the frozen backend (retries move
    // the rotation on, so it can be more); each was retried once.
    let retries = d.balancer_status().retries;
    assert!(
        (4..=12).contains(&retries),
        "{retries} retries for 12 PUTs with one of 3 backends frozen"
    );
    assert!(signal(b[0].proc.pid(), Signal::SIGCONT));
}
