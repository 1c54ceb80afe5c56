//! A bug costs one request, not the app: panics injected into the real drove binary
//! (`DROVE_TEST_PANIC`, compiled in only for test builds through the `test-hooks`
//! feature) are contained where they happen; drove and every instance keep running.

use std::time::Duration;

use drove_test_support::http::{self, Conn};
use drove_test_support::load::{Load, LoadSpec};
use drove_test_support::{alive, wait_until, Drove};

use crate::drove;

/// Three demo instances behind the balancer (`workers` proxy workers).
fn demo_config(workers: u32) -> String {
    format!(
        r#"[services.web]
command = ["{drove}", "demo"]
instances = 3
port = "auto"
ready = {{ http = "/ready", interval = "50ms" }}
logs = {{ dir = "logs" }}

[balancer]
service = "web"
workers = {workers}
instance_header = "X-Drove-Instance"
"#,
        drove = drove().display()
    )
}

fn panics(d: &Drove, at: &str) -> f64 {
    let series = format!("drove_panics_total{{where=\"{at}\"}}");
    d.metric(&series)
        .unwrap_or_else(|| panic!("no {series} on /metrics"))
}

fn instance_pids(d: &Drove) -> Vec<u32> {
    let mut p = d.instance_pids();
    p.sort_unstable();
    p
}

#[test]
fn one_injected_panic_under_load_costs_that_request_only() {
    let d = Drove::up_env(
        drove(),
        &demo_config(2),
        &[(
            "DROVE_TEST_PANIC",
            "request=/boom,relay=/whoami?late,connection=/conn-boom",
        )],
    );
    assert!(
        d.wait_in_rotation(3, Duration::from_secs(20)),
        "{:?}",
        d.status()
    );
    let pids = instance_pids(&d);
    assert_eq!(pids.len(), 3);
    for site in ["request", "connection", "worker", "supervisor", "runtime"] {
        assert_eq!(panics(&d, site), 0.0, "{site}");
    }
    let load = Load::start(LoadSpec::get(d.addr(), "/whoami", 6));
    std::thread::sleep(Duration::from_millis(400));

    // The request that hits the bug: a 500 (no byte of a response had gone out), then
    // the connection is closed.
    let mut c = Conn::open(d.addr(), Duration::from_secs(5)).unwrap();
    let r = c.request("GET", "/boom", &[], b"").unwrap();
    assert_eq!(r.status, 500, "{}", r.text());
    assert!(r.header("x-request-id").is_some(), "{:?}", r.headers);
    assert_eq!(r.header("connection"), Some("close"));
    assert!(
        c.request("GET", "/whoami", &[], b"").is_err(),
        "the connection of a panicked request is closed"
    );

    std::thread::sleep(Duration::from_millis(400));
    let s = load.stop();
    assert_eq!(s.failed, 0, "failed: {:?}", s.failures);
    assert!(s.ok > 100, "{s:?}");
    assert_eq!(panics(&d, "request"), 1.0);
    for site in ["connection", "worker", "supervisor", "runtime"] {
        assert_eq!(panics(&d, site), 0.0, "{site}");
    }
    assert!(alive(d.proc.pid() as u32), "drove is running");
    assert_eq!(instance_pids(&d), pids, "no instance was touched");
    assert!(pids.iter().all(|p| alive(*p)));
    // Logged as a bug, with the request id the client got and the panic's message.
    let rid = r.header("x-request-id").unwrap().to_string();
    let logged = d.proc.stderr.lock().unwrap().iter().any(|l| {
        l.contains("a request panicked")
            && l.contains("request_id")
            && l.contains(&rid)
            && l.contains("injected panic at Request for /boom")
    });
    assert!(logged, "{rid}: {:?}", d.proc.stderr.lock().unwrap());

    // A panic after the response went out: the response is complete and nothing (no
    // 500) follows it; the connection is closed.
    let mut c = Conn::open(d.addr(), Duration::from_secs(5)).unwrap();
    let r = c.request("GET", "/whoami?late", &[], b"").unwrap();
    assert_eq!(r.status, 200);
    assert!(c.request("GET", "/whoami", &[], b"").is_err());
    assert_eq!(panics(&d, "request"), 2.0);

    // A panic in the connection task outside a request: that connection closes.
    let mut c = Conn::open(d.addr(), Duration::from_secs(5)).unwrap();
    assert!(c.request("GET", "/conn-boom", &[], b"").is_err());
    assert!(wait_until(Duration::from_secs(5), || panics(
        &d,
        "connection"
    ) == 1.0));
    assert_eq!(http::get(d.addr(), "/whoami").unwrap().status, 200);
    assert_eq!(instance_pids(&d), pids);
}

/// Threads of `pid` named `drove-worker-N`.
fn worker_threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|c| c.starts_with("drove-worker-"))
        .count()
}

#[test]
fn a_panicking_worker_starts_again_on_its_socket() {
    let d = Drove::up_env(
        drove(),
        &demo_config(2),
        &[("DROVE_TEST_PANIC", "worker=/crash-worker")],
    );
    assert!(
        d.wait_in_rotation(3, Duration::from_secs(20)),
        "{:?}",
        d.status()
    );
    let pids = instance_pids(&d);
    assert_eq!(worker_threads(d.proc.pid() as u32), 2);
    // The request that crashes its worker loses its connection (with every other
    // connection of that worker).
    let _ = http::get(d.addr(), "/crash-worker");
    assert!(
        wait_until(Duration::from_secs(5), || panics(&d, "worker") == 1.0),
        "{}",
        panics(&d, "worker")
    );
    // Both workers accept again: the kernel spreads new connections over both sockets,
    // so with one worker gone for good about half of these would hang.
    for i in 0..40 {
        let r = http::get(d.addr(), "/whoami")
            .unwrap_or_else(|e| panic!("request {i} after the worker panic: {e}"));
        assert_eq!(r.status, 200);
    }
    assert_eq!(panics(&d, "worker"), 1.0);
    assert_eq!(worker_threads(d.proc.pid() as u32), 2, "both workers run");
    assert_eq!(instance_pids(&d), pids, "no instance was touched");
    assert!(alive(d.proc.pid() as u32));
}

#[test]
fn panics_in_supervisor_tasks_leave_the_instances_alone() {
    // The memory monitor and the watch over one instance each panic once.
    let d = Drove::up_env(
        drove(),
        &demo_config(1),
        &[("DROVE_TEST_PANIC", "supervisor=monitor,supervisor=slot")],
    );
    assert!(
        d.wait_in_rotation(3, Duration::from_secs(20)),
        "{:?}",
        d.status()
    );
    assert!(
        wait_until(Duration::from_secs(10), || panics(&d, "supervisor") == 2.0),
        "{}",
        panics(&d, "supervisor")
    );
    let pids = instance_pids(&d);
    let load = Load::start(LoadSpec::get(d.addr(), "/whoami", 4));
    // Two monitor periods: the restarted monitor samples again.
    std::thread::sleep(Duration::from_millis(2500));
    let s = load.stop();
    assert_eq!(s.failed, 0, "failed: {:?}", s.failures);
    assert_eq!(s.per_instance.len(), 3, "{:?}", s.per_instance);
    assert_eq!(instance_pids(&d), pids);
    let st = d.status();
    for i in &st.instances {
        assert_eq!(i.restarts, Some(0), "{i:?}");
        assert_eq!(i.state, drove_api::InstanceState::Ready, "{i:?}");
        assert!(i.rss_bytes.unwrap_or(0) > 0, "{i:?}");
    }
    assert_eq!(panics(&d, "supervisor"), 2.0);
}
