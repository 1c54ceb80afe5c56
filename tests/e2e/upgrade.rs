//! `drove upgrade` replaces the running drove in place: under mixed load (keep-alive
//! GETs and POSTs, 20 WebSockets exchanging messages) five upgrades in a row fail no
//! request and refuse no connection, keep every instance (same PIDs, never restarted)
//! and every WebSocket, and the counters go on; a binary that refuses to take over
//! (exits 1, or reads another hand-over format) leaves the running drove serving, with
//! the reason; SIGUSR2 upgrades too; an HTTP/2 stream in flight finishes and its client
//! moves to the new drove after GOAWAY.

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use drove_test_support::{alive, tempdir, wait_until, Drove};

use crate::drove;
use crate::reload::{under_load, Sockets};

fn config() -> String {
    format!(
        r#"[services.web]
command = ["{drove}", "demo"]
instances = 3
port = "auto"
ready = {{ http = "/ready", interval = "50ms" }}
logs = {{ dir = "logs" }}

[balancer]
service = "web"
workers = 2
instance_header = "X-Drove-Instance"
"#,
        drove = drove().display()
    )
}

/// GET /api/dashboard.
fn dashboard(d: &Drove) -> drove_api::Dashboard {
    let r = drove_test_support::http::get(d.admin, "/api/dashboard").unwrap();
    serde_json::from_slice(&r.body).expect("a dashboard document")
}

/// The pid of every instance, by id.
fn instance_pids(d: &Drove) -> Vec<(String, Option<u32>, Option<u32>)> {
    d.status()
        .instances
        .iter()
        .map(|i| (i.id.clone(), i.pid, i.restarts))
        .collect()
}

#[test]
fn five_upgrades_under_load_fail_nothing_and_keep_instances_and_websockets() {
    // A service that writes a line every 50 ms: its log file must keep growing after
    // every upgrade (each drove reads the output pipes the one before handed over).
    let ticker = r#"
[services.ticker]
command = ["sh", "-c", "while true; do echo tick; sleep 0.05; done"]
logs = { dir = "logs" }
"#;
    let d = Drove::up(drove(), &format!("{}{ticker}", config()));
    assert!(d.wait_in_rotation(3, Duration::from_secs(20)));
    let addr = d.addr();
    let before = instance_pids(&d);
    assert_eq!(before.len(), 4);
    let ticker_log = d.config.parent().unwrap().join("logs/ticker.1.log");
    let ticks = || {
        std::fs::read_to_string(&ticker_log)
            .map(|t| t.matches("tick").count())
            .unwrap_or(0)
    };
    let sockets = Sockets::open(addr, 20);
    sockets.check();
    // The dashboard's history before the first upgrade: its points must survive them.
    std::thread::sleep(Duration::from_millis(2200));
    let first_point = dashboard(&d)
        .history
        .t
        .first()
        .copied()
        .expect("history points");
    let mut took = Vec::new();
    let requests_before = d.metric("drove_balancer_requests_total").unwrap_or(0.0);
    let backend_requests = |d: &Drove| d.status().backend("web.1").map_or(0, |b| b.requests);
    let web1_before = backend_requests(&d);
    under_load(addr, || {
        for round in 1..=5 {
            let t = Instant::now();
            let out = d.cli_ok(&["upgrade", "--binary", drove().to_str().unwrap()]);
            took.push(t.elapsed());
            assert!(out.contains("upgraded"), "upgrade {round}: {out}");
            let st = d.status();
            assert_eq!(st.pid, d.proc.pid() as u32, "same drove process");
            assert_eq!(st.upgrades.count, round);
            let last = st.upgrades.last.expect("the upgrade's report");
            assert_eq!(last.instances_kept, 4, "{last:?}");
            assert!(
                last.connections_handed >= 20,
                "the WebSockets (and idle keep-alive connections) are handed over: {last:?}"
            );
            sockets.check();
            let seen = ticks();
            assert!(
                wait_until(Duration::from_secs(5), || ticks() > seen + 2),
                "upgrade {round}: the ticker's output is no longer read ({seen} lines)"
            );
            eprintln!("upgrade {round}: {:?} ({out:?})", t.elapsed());
        }
    });
    assert_eq!(instance_pids(&d), before, "same instance pids, no restart");
    for (_, pid, _) in &before {
        assert!(alive(pid.unwrap()));
    }
    let errors = sockets.stop();
    assert!(errors.is_empty(), "websockets: {errors:?}");
    // The counters went on from where they were (they are not reset by an upgrade).
    let requests_after = d.metric("drove_balancer_requests_total").unwrap();
    assert!(
        requests_after > requests_before + 100.0,
        "{requests_before} -> {requests_after}"
    );
    // The dashboard's history goes on: its oldest point is from before the upgrades.
    let h = dashboard(&d).history;
    assert_eq!(h.t.first().copied(), Some(first_point), "{:?}", h.t);
    // Per-instance counters too (they live in the balancer's backends).
    let web1_after = backend_requests(&d);
    assert!(
        web1_after > web1_before + 30,
        "web.1: {web1_before} -> {web1_after}"
    );
    eprintln!("upgrade durations (CLI, check to new drove answering): {took:?}");
    let log = d.proc.stdout.lock().unwrap().join("\n");
    assert_eq!(
        log.matches("[drove] started pid").count(),
        4,
        "only the first four instances were ever started:\n{log}"
    );
    d.stop();
}

#[test]
fn a_binary_that_refuses_leaves_drove_serving() {
    let d = Drove::up(drove(), &config());
    assert!(d.wait_in_rotation(3, Duration::from_secs(20)));
    let before = instance_pids(&d);
    let dir = tempdir("upgrade-refused");
    let script = |name: &str, body: &str| {
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    };
    let failing = script("fails", "echo 'not today' >&2; exit 1");
    let other_format = script(
        "other-format",
        r#"echo '{"version":"9.9.9","handoff_format":99}'"#,
    );
    for (bin, expect) in [
        (&failing, "not today"),
        (&other_format, "hand-over format 99"),
    ] {
        let out = d.cli(&["upgrade", "--binary", bin.to_str().unwrap()]);
        assert!(!out.status.success(), "{bin:?} must be refused");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expect), "{bin:?}: {err}");
        // Still serving, nothing touched.
        let r = drove_test_support::http::request(d.addr(), "GET", "/whoami", &[], b"").unwrap();
        assert_eq!(r.status, 200);
        let st = d.status();
        assert_eq!(st.upgrades.count, 0);
        assert!(st.upgrades.failed.as_deref().unwrap_or("").contains(expect));
    }
    assert_eq!(instance_pids(&d), before);
    d.stop();
}

#[test]
fn sigusr2_upgrades_in_place() {
    let d = Drove::up(drove(), &config());
    assert!(d.wait_in_rotation(3, Duration::from_secs(20)));
    let before = instance_pids(&d);
    drove_test_support::signal(d.proc.pid(), nix::sys::signal::Signal::SIGUSR2);
    assert!(
        wait_until(Duration::from_secs(30), || {
            d.try_status().is_some_and(|s| s.upgrades.count == 1)
        }),
        "SIGUSR2 did not upgrade drove"
    );
    assert!(d.wait_in_rotation(3, Duration::from_secs(10)));
    assert_eq!(instance_pids(&d), before);
    // Instances started after the upgrade inherit none of drove's descriptors (the
    // hand-over's sockets and pipes are close-on-exec again).
    d.cli_ok(&["restart", "web"]);
    let drove_sockets = sockets_of(d.proc.pid() as u32);
    assert!(!drove_sockets.is_empty());
    for (id, pid, _) in instance_pids(&d) {
        let pid = pid.expect("running");
        assert!(
            !before.iter().any(|b| b.1 == Some(pid)),
            "{id} was restarted"
        );
        let shared: Vec<_> = sockets_of(pid)
            .intersection(&drove_sockets)
            .cloned()
            .collect();
        assert!(
            shared.is_empty(),
            "{id} (pid {pid}) inherited drove's sockets {shared:?}"
        );
    }
    d.stop();
}

/// The socket inodes a process holds open.
pub(crate) fn sockets_of(pid: u32) -> std::collections::BTreeSet<String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .map(|l| l.to_string_lossy().into_owned())
                .filter(|l| l.starts_with("socket:"))
                .collect()
        })
        .unwrap_or_default()
}

/// An HTTP/2 connection during an upgrade: its open stream finishes (a response 1.5 s
/// long), GOAWAY tells the client to open no new stream on it, and its next request goes
/// over a new connection to the new drove (curl reuses an h2 connection unless told to
/// go away).
#[test]
fn an_http2_stream_in_flight_finishes_and_the_client_moves_to_the_new_drove() {
    let d = Drove::up(drove(), &config());
    assert!(d.wait_in_rotation(3, Duration::from_secs(20)));
    let base = format!("http://{}", d.addr());
    let curl = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "30", "--http2-prior-knowledge"])
        .args([
            "-w",
            "%{http_code} %{http_version} %{num_connects}\\n",
            "-o",
            "/dev/null",
        ])
        .arg(format!("{base}/slow?ms=1500"))
        .args([
            "-w",
            "%{http_code} %{http_version} %{num_connects}\\n",
            "-o",
            "/dev/null",
        ])
        .arg(format!("{base}/whoami"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("curl is installed (scripts/test installs it)");
    // The slow stream is open when the upgrade starts.
    std::thread::sleep(Duration::from_millis(400));
    let out = d.cli_ok(&["upgrade", "--binary", drove().to_str().unwrap()]);
    assert!(out.contains("upgraded"), "{out}");
    let curl = curl.wait_with_output().unwrap();
    let lines = String::from_utf8_lossy(&curl.stdout).into_owned();
    assert!(
        curl.status.success(),
        "curl: {lines} {}",
        String::from_utf8_lossy(&curl.stderr)
    );
    let lines: Vec<&str> = lines.lines().collect();
    assert_eq!(
        lines,
        ["200 2 1", "200 2 1"],
        "the slow stream finished over HTTP/2; the next request needed a new connection"
    );
    assert_eq!(d.status().upgrades.count, 1);
    d.stop();
}
