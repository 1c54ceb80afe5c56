//! Instances keep their identity: after rolling restarts, a reload and a memory
//! replacement, `web.1..N` are `INSTANCE_ID` 1..N on base port + k − 1 again (new
//! processes), no request fails, and at no moment are fewer than N instances ready.

use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use drove_test_support::load::{Load, LoadSpec};
use drove_test_support::{alive, http, wait_until, Drove};
use serde_json::{json, Value};

use crate::drove;

/// A base port with `n` consecutive ports free now (the instances and the surge slot).
fn free_port_block(n: u16) -> u16 {
    for _ in 0..200 {
        let base = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        if base < 60000 && (0..n).all(|i| TcpListener::bind(("127.0.0.1", base + i)).is_ok()) {
            return base;
        }
    }
    panic!("no block of {n} free ports");
}

/// `n` demo instances on `base`, ready through the users' `/health/ready`.
fn config(n: u32, base: u16, extra_service: &str) -> String {
    format!(
        r#"[services.web]
command = ["{drove}", "demo"]
instances = {n}
port = {base}
ready = {{ http = "/health/ready", interval = "50ms" }}
stop = {{ signal = "TERM", grace = "5s" }}
restart = {{ initial_delay = "100ms", max_delay = "2s" }}
logs = {{ dir = "logs" }}
{extra_service}

[balancer]
service = "web"
workers = 1
instance_header = "X-Drove-Instance"
# Probe timeouts long enough for a loaded CI machine: the test is about capacity
# during a rolling restart, not about how fast a probe gives up.
health = {{ http = "/health", interval = "250ms", timeout = "1s", rise = 1, fall = 2 }}
retries = {{ attempts = 2, per_try_timeout = "2s" }}
"#,
        drove = drove().display()
    )
}

/// One instance as `/api/status` shows it.
#[derive(Debug, Clone, PartialEq)]
struct Inst {
    id: String,
    port: u64,
    pid: u64,
    state: String,
    restarts: u64,
}

fn instances(d: &Drove) -> Vec<Inst> {
    d.status()
        .instances_of("web")
        .map(|i| Inst {
            id: i.id.clone(),
            port: i.port.map_or(0, u64::from),
            pid: i.pid.map_or(0, u64::from),
            state: i.state.to_string(),
            restarts: i.restarts.map_or(0, u64::from),
        })
        .collect()
}

/// `web.1..n`, ready, on `base..`, each with its INSTANCE_ID (asked through the instance's
/// own port: the demo's /health reports what the supervisor gave it).
fn assert_identity(d: &Drove, n: u16, base: u16) -> Vec<Inst> {
    let now = instances(d);
    let want: Vec<(String, u64)> = (1..=n)
        .map(|k| (format!("web.{k}"), u64::from(base + k - 1)))
        .collect();
    let got: Vec<(String, u64)> = now.iter().map(|i| (i.id.clone(), i.port)).collect();
    assert_eq!(got, want, "{now:?}");
    assert!(now.iter().all(|i| i.state == "ready"), "{now:?}");
    for (k, i) in now.iter().enumerate() {
        let addr = format!("127.0.0.1:{}", i.port).parse().unwrap();
        let h = http::get(addr, "/health").expect("instance /health");
        let v: Value = serde_json::from_slice(&h.body).unwrap();
        assert_eq!(v["instance_id"], (k + 1).to_string(), "{v}");
        assert_eq!(v["instance"], i.id, "{v}");
        assert_eq!(v["pid"], i.pid, "{v}");
    }
    now
}

/// Polls `/api/status` until stopped: the fewest instances seen ready (supervisor state)
/// and in rotation (balancer: enabled and healthy), and how many polls that took.
struct Watch {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<(usize, usize, usize, Vec<String>, String)>,
}

impl Watch {
    fn start(d: &Drove) -> Watch {
        let admin = d.admin;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let (mut min_ready, mut min_rotation, mut polls) = (usize::MAX, usize::MAX, 0);
            let mut seen_ids = Vec::new();
            let mut lowest = String::new();
            let end = Instant::now() + Duration::from_secs(120);
            while !flag.load(Ordering::Relaxed) && Instant::now() < end {
                let Ok(r) = http::get(admin, "/api/status") else {
                    continue;
                };
                let s: drove_api::Status = r.doc();
                let ready: Vec<String> = s
                    .instances_of("web")
                    .filter(|i| i.state == drove_api::InstanceState::Ready)
                    .map(|i| i.id.clone())
                    .collect();
                let rotation = s
                    .backends()
                    .iter()
                    .filter(|b| b.enabled && b.healthy)
                    .count();
                if rotation < min_rotation {
                    // What the balancer had at its lowest, for the failure message.
                    lowest = format!(
                        "ready {ready:?}, backends (id, enabled, healthy) {:?}",
                        s.backends()
                            .iter()
                            .map(|b| (b.id.clone(), b.enabled, b.healthy))
                            .collect::<Vec<_>>()
                    );
                }
                min_ready = min_ready.min(ready.len());
                min_rotation = min_rotation.min(rotation);
                for id in ready {
                    if !seen_ids.contains(&id) {
                        seen_ids.push(id);
                    }
                }
                polls += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
            (min_ready, min_rotation, polls, seen_ids, lowest)
        });
        Watch { stop, handle }
    }

    fn stop(self) -> (usize, usize, usize, Vec<String>, String) {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap()
    }
}

#[test]
fn two_rolling_restarts_under_load_keep_ids_and_base_ports_and_capacity() {
    const N: u16 = 3;
    let base = free_port_block(N + 1);
    let d = Drove::up(drove(), &config(N.into(), base, ""));
    assert!(
        d.wait_in_rotation(N.into(), Duration::from_secs(20)),
        "{:?}",
        d.status()
    );
    let mut before = assert_identity(&d, N, base);
    let load = Load::start(LoadSpec::get(d.addr(), "/whoami", 6));
    std::thread::sleep(Duration::from_millis(300));
    for round in 1..=2 {
        let watch = Watch::start(&d);
        let r = d.post("/api/restart", &json!({"service": "web"}));
        let (min_ready, min_rotation, polls, seen, lowest) = watch.stop();
        assert_eq!(r.status, 200, "round {round}: {}", r.text());
        let report: drove_api::RestartAnswer = r.doc();
        assert_eq!(report.surge, Some(format!("web.{}", N + 1)), "{report:?}");
        let replaced: Vec<&str> = report
            .replaced
            .iter()
            .map(|x| x.instance.as_str())
            .collect();
        assert_eq!(replaced, ["web.1", "web.2", "web.3"], "{report:?}");
        // Enough polls to see a dip of one readiness period (50 ms).
        assert!(polls >= 20, "round {round}: only {polls} status polls");
        assert!(
            min_ready >= N as usize && min_rotation >= N as usize,
            "round {round}: fewer than {N} ready ({min_ready}) or in rotation ({min_rotation}): {lowest}"
        );
        assert!(
            seen.contains(&format!("web.{}", N + 1)),
            "the surge instance was seen ready: {seen:?}"
        );
        let after = assert_identity(&d, N, base);
        for (b, a) in before.iter().zip(&after) {
            assert_ne!(a.pid, b.pid, "round {round}: {} kept its process", a.id);
            assert!(!alive(b.pid as u32), "old process of {} still alive", b.id);
            assert_eq!(a.restarts, b.restarts + 1, "{a:?}");
        }
        before = after;
    }
    std::thread::sleep(Duration::from_millis(300));
    let s = load.stop();
    assert_eq!(s.failed, 0, "failed: {:?}", s.failures);
    assert!(s.ok > 100, "{s:?}");
    let served: Vec<&String> = s.per_instance.keys().collect();
    assert_eq!(served, ["web.1", "web.2", "web.3", "web.4"], "{s:?}");
}

#[test]
fn a_memory_replacement_and_a_reload_keep_ids_and_base_ports() {
    const N: u16 = 2;
    let base = free_port_block(N + 1);
    let d = Drove::up(drove(), &config(N.into(), base, "max_memory = \"60MiB\""));
    assert!(d.wait_in_rotation(N.into(), Duration::from_secs(20)));
    let before = assert_identity(&d, N, base);
    let load = Load::start(LoadSpec::get(d.addr(), "/whoami", 4));
    std::thread::sleep(Duration::from_millis(300));

    // One instance grows past max_memory: it is replaced in its own slot.
    let r = http::get(d.addr(), "/leak?mb=80").unwrap();
    assert_eq!(r.status, 200);
    let leaker = r.header("x-drove-instance").unwrap().to_string();
    let old = before.iter().find(|i| i.id == leaker).unwrap().clone();
    let min_ready = Arc::new(Mutex::new(usize::MAX));
    assert!(
        wait_until(Duration::from_secs(20), || {
            let now = instances(&d);
            let ready = now.iter().filter(|i| i.state == "ready").count();
            let mut m = min_ready.lock().unwrap();
            *m = (*m).min(ready);
            !alive(old.pid as u32)
                && now.len() == N as usize
                && now.iter().all(|i| i.state == "ready")
        }),
        "{:?}",
        d.status()
    );
    assert!(*min_ready.lock().unwrap() >= N as usize);
    let after = assert_identity(&d, N, base);
    let again = after.iter().find(|i| i.id == leaker).unwrap();
    assert_ne!(again.pid, old.pid);

    // A reload with a changed service: a rolling restart, same ids and ports.
    std::fs::write(
        &d.config,
        config(
            N.into(),
            base,
            "max_memory = \"60MiB\"\nenv = { GREETING = \"v2\" }",
        ),
    )
    .unwrap();
    let out = d.cli_ok(&["reload"]);
    assert!(out.contains("rolling restart of 2 instance(s)"), "{out}");
    let reloaded = assert_identity(&d, N, base);
    for (a, b) in after.iter().zip(&reloaded) {
        assert_ne!(a.pid, b.pid, "{} was not restarted by the reload", a.id);
    }
    std::thread::sleep(Duration::from_millis(300));
    let s = load.stop();
    assert_eq!(s.failed, 0, "failed: {:?}", s.failures);
}
