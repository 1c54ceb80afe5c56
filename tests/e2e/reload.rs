//! `drove reload` applies every key live: under mixed load through the demo (keep-alive
//! GETs, POSTs, 20 open WebSockets sending messages), each group of keys changed one at
//! a time fails no request, closes no WebSocket, touches no instance, and shows its
//! effect; the listeners move without a refused connection; a change that could not be
//! applied is reported again by the next reload until it is.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use drove_test_support::http::{self, Conn};
use drove_test_support::load::{Load, LoadSpec, Stats};
use drove_test_support::{alive, tempdir, wait_until, Drove};

use crate::drove;

/// A WebSocket through drove to the demo's `/ws` echo.
pub(crate) struct Ws(TcpStream);

impl Ws {
    fn open(addr: SocketAddr) -> std::io::Result<Ws> {
        let mut s = TcpStream::connect(addr)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(
            b"GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )?;
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            s.read_exact(&mut byte)?;
            head.push(byte[0]);
        }
        if !head.starts_with(b"HTTP/1.1 101") {
            return Err(std::io::Error::other(
                String::from_utf8_lossy(&head).into_owned(),
            ));
        }
        Ok(Ws(s))
    }

    /// Sends a masked text frame and reads its echo.
    fn echo(&mut self, msg: &[u8]) -> std::io::Result<()> {
        let mask = [7u8, 1, 9, 3];
        let mut frame = vec![0x81, 0x80 | msg.len() as u8];
        frame.extend_from_slice(&mask);
        frame.extend(msg.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.0.write_all(&frame)?;
        let mut got = vec![0u8; 2 + msg.len()];
        self.0.read_exact(&mut got)?;
        if got[0] != 0x81 || got[1] as usize != msg.len() || got[2..] != *msg {
            return Err(std::io::Error::other(format!("bad echo {got:?}")));
        }
        Ok(())
    }
}

/// `n` WebSockets exchanging a message each, round after round, until stopped.
pub(crate) struct Sockets {
    stop: Arc<AtomicBool>,
    rounds: Arc<AtomicU64>,
    handle: JoinHandle<Vec<String>>,
}

impl Sockets {
    pub(crate) fn open(addr: SocketAddr, n: usize) -> Sockets {
        let mut ws: Vec<Ws> = (0..n)
            .map(|i| Ws::open(addr).unwrap_or_else(|e| panic!("websocket {i}: {e}")))
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let rounds = Arc::new(AtomicU64::new(0));
        let (s, r) = (stop.clone(), rounds.clone());
        let handle = std::thread::spawn(move || {
            let mut errors = Vec::new();
            let mut dead = vec![false; ws.len()];
            let end = Instant::now() + Duration::from_secs(300);
            while !s.load(Ordering::Relaxed) && Instant::now() < end {
                for (i, w) in ws.iter_mut().enumerate() {
                    if dead[i] {
                        continue;
                    }
                    if let Err(e) = w.echo(format!("m{i}").as_bytes()) {
                        dead[i] = true;
                        errors.push(format!("websocket {i}: {e}"));
                    }
                }
                r.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
            errors
        });
        Sockets {
            stop,
            rounds,
            handle,
        }
    }

    /// Waits for two more complete rounds (every socket answered twice since now).
    pub(crate) fn check(&self) {
        let r = self.rounds.load(Ordering::Relaxed);
        assert!(
            wait_until(Duration::from_secs(10), || self
                .rounds
                .load(Ordering::Relaxed)
                >= r + 2),
            "the websockets stopped exchanging messages"
        );
    }

    pub(crate) fn stop(self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap()
    }
}

/// Keep-alive GETs and POSTs through drove while `f` runs; asserts none failed.
pub(crate) fn under_load<T>(addr: SocketAddr, f: impl FnOnce() -> T) -> T {
    let gets = Load::start(LoadSpec::get(addr, "/whoami", 3));
    let mut post = LoadSpec::get(addr, "/echo", 2);
    post.method = "POST".into();
    let posts = Load::start(post);
    std::thread::sleep(Duration::from_millis(200));
    let out = f();
    std::thread::sleep(Duration::from_millis(300));
    let check = |what: &str, s: Stats| {
        assert_eq!(s.failed, 0, "{what} failed: {:?}", s.failures);
        assert!(s.ok > 10, "{what}: {s:?}");
    };
    check("GET", gets.stop());
    check("POST", posts.stop());
    out
}

/// `drove reload` must succeed with everything applied; returns its output.
fn reload_ok(d: &Drove, extra: &[&str], expect: &str) -> String {
    let mut args = vec!["reload"];
    args.extend_from_slice(extra);
    let out = d.cli_ok(&args);
    assert!(out.contains(&format!("applied {expect}")), "{out}");
    assert!(!out.contains("NOT applied"), "{out}");
    out
}

struct Cfg {
    services: String,
    balancer: Vec<String>,
    tail: String,
}

impl Cfg {
    fn text(&self) -> String {
        format!(
            r#"[services.web]
command = ["{drove}", "demo"]
instances = 3
port = "auto"
ready = {{ http = "/ready", interval = "50ms" }}
logs = {{ dir = "logs" }}
{services}

[balancer]
service = "web"
workers = 2
instance_header = "X-Drove-Instance"
{balancer}
{tail}
"#,
            drove = drove().display(),
            services = self.services,
            balancer = self.balancer.join("\n"),
            tail = self.tail,
        )
    }
}

/// Distinct instances that answered `n` GETs of `path` with `headers`.
fn instances_seen(addr: SocketAddr, n: usize, headers: &[(&str, &str)]) -> usize {
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..n {
        let r = http::request(addr, "GET", "/whoami", headers, b"").unwrap();
        assert_eq!(r.status, 200);
        seen.insert(r.header("x-drove-instance").unwrap().to_string());
    }
    seen.len()
}

/// Requests web.1 received over one second, asking it directly.
fn probes_per_second(d: &Drove) -> u64 {
    let st = d.status();
    let port = st
        .instances
        .iter()
        .find(|i| i.id == "web.1")
        .and_then(|i| i.port)
        .unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let count = || {
        http::get(addr, "/metrics")
            .unwrap()
            .text()
            .lines()
            .find_map(|l| l.strip_prefix("demo_requests_total "))
            .unwrap()
            .trim()
            .parse::<u64>()
            .unwrap()
    };
    let a = count();
    std::thread::sleep(Duration::from_secs(1));
    count() - a - 1
}

fn metric(d: &Drove, series: &str) -> f64 {
    d.metric(series).unwrap_or_else(|| panic!("no {series}"))
}

fn statuses(addr: SocketAddr, path: &str, n: usize) -> Vec<u16> {
    (0..n)
        .map(|_| http::get(addr, path).unwrap().status)
        .collect()
}

/// (id, pid, requests) of the web instances.
fn web_rows(d: &Drove) -> Vec<(String, u64, u64)> {
    d.status()
        .instances
        .into_iter()
        .filter(|i| i.service.as_deref() == Some("web"))
        .map(|i| (i.id, u64::from(i.pid.unwrap()), i.requests.unwrap_or(0)))
        .collect()
}

#[test]
fn every_group_of_keys_reloads_live_under_mixed_load() {
    let mut cfg = Cfg {
        services: String::new(),
        balancer: vec!["health = { http = \"/health\", interval = \"1s\" }".into()],
        tail: String::new(),
    };
    let d = Drove::up(drove(), &cfg.text());
    assert!(
        d.wait_in_rotation(3, Duration::from_secs(20)),
        "{:?}",
        d.status()
    );
    let addr = d.addr();
    let before = web_rows(&d);
    let ws = Sockets::open(addr, 20);
    ws.check();

    // Nothing changed: a plan with nothing in it.
    std::fs::write(&d.config, cfg.text()).unwrap();
    assert!(d.cli_ok(&["reload"]).contains("nothing changed"));

    // 1. The algorithm: round robin spreads one user, `hash` on a header pins it.
    let alice = [("X-User", "alice")];
    assert!(instances_seen(addr, 12, &alice) >= 2);
    cfg.balancer
        .push("algorithm = \"hash\"\nhash_key = \"header:X-User\"".into());
    std::fs::write(&d.config, cfg.text()).unwrap();
    let plan = d.cli_ok(&["reload", "--dry-run"]);
    assert!(plan.contains("would apply balancer.algorithm"), "{plan}");
    assert!(
        instances_seen(addr, 12, &alice) >= 2,
        "a dry run applies nothing"
    );
    under_load(addr, || reload_ok(&d, &[], "balancer.algorithm"));
    assert_eq!(instances_seen(addr, 12, &alice), 1);
    assert_eq!(d.status().balancer.unwrap().algorithm, "hash");
    ws.check();

    // 2. Timeouts: a slow answer within the old response timeout, a 504 after.
    assert_eq!(http::get(addr, "/slow?ms=800").unwrap().status, 200);
    cfg.balancer
        .push("timeouts = { response = \"400ms\" }".into());
    std::fs::write(&d.config, cfg.text()).unwrap();
    under_load(addr, || reload_ok(&d, &[], "balancer.timeouts"));
    assert_eq!(http::get(addr, "/slow?ms=800").unwrap().status, 504);
    ws.check();

    // 3. Health: the probes start again with the new interval.
    let slow_probes = probes_per_second(&d);
    assert!(slow_probes <= 3, "{slow_probes} probes/s at 1s");
    cfg.balancer[0] = "health = { http = \"/health\", interval = \"50ms\" }".into();
    std::fs::write(&d.config, cfg.text()).unwrap();
    under_load(addr, || reload_ok(&d, &[], "balancer.health"));
    let fast_probes = probes_per_second(&d);
    assert!(fast_probes >= 8, "{fast_probes} probes/s at 50ms");
    ws.check();

    // 4. Retries: a 502 is retried on the other instances once `on_5xx` is on.
    let retries = || metric(&d, "drove_balancer_retries_total");
    let r0 = retries();
    assert_eq!(http::get(addr, "/status/502").unwrap().status, 502);
    assert_eq!(retries(), r0);
    cfg.balancer
        .push("retries = { attempts = 2, on_5xx = true }".into());
    std::fs::write(&d.config, cfg.text()).unwrap();
    under_load(addr, || reload_ok(&d, &[], "balancer.retries"));
    assert_eq!(http::get(addr, "/status/502").unwrap().status, 502);
    assert_eq!(retries(), r0 + 2.0);
    ws.check();

    // 5. Routes and limits: enforced from the reload on; a later reload that changes
    // another limit keeps this one's state (the client stays held back).
    assert!(!statuses(addr, "/limited", 4).contains(&429));
    cfg.tail = "[[balancer.routes]]\npath = \"/limited\"\nlimit = \"l\"\n\n[limits.l]\nrate = \"1/m\"\nburst = 1\n".into();
    std::fs::write(&d.config, cfg.text()).unwrap();
    under_load(addr, || reload_ok(&d, &[], "balancer.routes, limits"));
    let limited = statuses(addr, "/limited", 4);
    assert_eq!(
        limited.iter().filter(|s| **s == 429).count(),
        3,
        "{limited:?}"
    );
    cfg.tail.push_str(
        "\n[[balancer.routes]]\npath = \"/other\"\nlimit = \"o\"\n\n[limits.o]\nrate = \"100/s\"\n",
    );
    std::fs::write(&d.config, cfg.text()).unwrap();
    under_load(addr, || reload_ok(&d, &[], "balancer.routes, limits"));
    assert_eq!(
        statuses(addr, "/limited", 1),
        [429],
        "the limit kept its state"
    );
    ws.check();

    // 6. The access log: on, into a file.
    let log = tempdir("reload-log").join("access.log");
    cfg.balancer.push(format!(
        "access_log = \"json\"\naccess_log_path = \"{}\"",
        log.display()
    ));
    std::fs::write(&d.config, cfg.text()).unwrap();
    under_load(addr, || reload_ok(&d, &[], "balancer.access_log"));
    assert_eq!(http::get(addr, "/whoami?logged").unwrap().status, 200);
    assert!(wait_until(Duration::from_secs(5), || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("/whoami?logged")
    }));
    ws.check();

    // 7. A service added: started, in the status; the others untouched.
    let extra = format!(
        "[services.extra]\ncommand = [\"{}\", \"demo\"]\ninstances = 2\nport = \"auto\"\nready = {{ http = \"/ready\", interval = \"50ms\" }}\nlogs = {{ dir = \"logs\" }}\n",
        drove().display()
    );
    cfg.services = extra;
    std::fs::write(&d.config, cfg.text()).unwrap();
    under_load(addr, || reload_ok(&d, &[], "services.extra added"));
    let extra_pids = || -> Vec<u64> {
        d.status()
            .instances
            .into_iter()
            .filter(|i| {
                i.service.as_deref() == Some("extra") && i.state == drove_api::InstanceState::Ready
            })
            .filter_map(|i| i.pid.map(u64::from))
            .collect()
    };
    assert!(wait_until(Duration::from_secs(20), || extra_pids().len() == 2));
    let pids = extra_pids();
    ws.check();

    // 8. The service removed: drained and stopped.
    cfg.services.clear();
    std::fs::write(&d.config, cfg.text()).unwrap();
    under_load(addr, || reload_ok(&d, &[], "services.extra removed"));
    assert!(extra_pids().is_empty(), "{:?}", d.status());
    assert!(
        wait_until(Duration::from_secs(10), || pids
            .iter()
            .all(|p| !alive(*p as u32))),
        "{pids:?}"
    );
    ws.check();

    // Through all of it: the same instances (no restart), their counters continuing,
    // all healthy and in rotation.
    let after = web_rows(&d);
    assert_eq!(after.len(), 3);
    for ((id, pid, n0), (id1, pid1, n1)) in before.iter().zip(&after) {
        assert_eq!((id, pid), (id1, pid1), "{id} was touched");
        assert!(n1 > n0, "{id}: counters went from {n0} to {n1}");
    }
    assert!(d.wait_in_rotation(3, Duration::from_secs(5)));

    // 9. The admin token: required from the reload on.
    cfg.tail.push_str("\n[admin]\ntoken = \"s3cret\"\n");
    std::fs::write(&d.config, cfg.text()).unwrap();
    under_load(addr, || reload_ok(&d, &[], "admin.token"));
    assert_eq!(http::get(d.admin, "/api/status").unwrap().status, 401);
    let authed = http::request(
        d.admin,
        "GET",
        "/api/status",
        &[("Authorization", "Bearer s3cret")],
        b"",
    )
    .unwrap();
    assert_eq!(authed.status, 200);
    assert!(d
        .cli_ok(&["reload", "--token", "s3cret"])
        .contains("nothing changed"));

    ws.check();
    let errors = ws.stop();
    assert!(errors.is_empty(), "websockets: {errors:?}");
}

#[test]
fn listeners_change_without_a_refused_connection_and_a_failed_change_is_reported_until_applied() {
    let mut cfg = Cfg {
        services: String::new(),
        balancer: vec!["listen = \"127.0.0.1:0\"".into(), "workers = 1".into()],
        tail: String::new(),
    };
    // This test sets `workers` itself (TOML refuses a repeated key).
    let text = |c: &Cfg| c.text().replace("workers = 2\n", "");
    let d = Drove::up(drove(), &text(&cfg));
    assert!(d.wait_in_rotation(3, Duration::from_secs(20)));
    let old = d.addr();
    let ws = Sockets::open(old, 5);

    // More workers and no TCP_DEFER_ACCEPT on the same address: the sockets are taken
    // over, keep-alive load sees nothing.
    cfg.balancer[1] = "workers = 3\ndefer_accept = false".into();
    std::fs::write(&d.config, text(&cfg)).unwrap();
    under_load(old, || {
        reload_ok(&d, &[], "balancer.workers, balancer.defer_accept")
    });
    ws.check();

    // A move to a port that is taken: not applied, said so (exit 1) — and said again
    // by the next reload, since the config in force still has the old address.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    cfg.balancer[0] = format!("listen = \"127.0.0.1:{port}\"");
    std::fs::write(&d.config, text(&cfg)).unwrap();
    for _ in 0..2 {
        let out = d.cli(&["reload"]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(!out.status.success(), "{text}");
        assert!(
            text.contains("NOT applied balancer.listen: cannot listen on"),
            "{text}"
        );
    }
    assert!(d
        .cli_ok(&["reload", "--dry-run"])
        .contains("would apply balancer.listen"));
    assert_eq!(http::get(old, "/whoami").unwrap().status, 200);

    // Requests in flight on the old address when it moves.
    let slow: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(move || {
                let mut c = Conn::open(old, Duration::from_secs(10)).unwrap();
                c.request("GET", "/slow?ms=1500", &[], b"")
                    .map(|r| r.status)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    drop(taken);
    reload_ok(&d, &[], "balancer.listen");
    let new = SocketAddr::from(([127, 0, 0, 1], port));
    assert_eq!(d.status().balancer.unwrap().listen, Some(new));
    assert_eq!(http::get(new, "/whoami").unwrap().status, 200);
    for s in slow {
        assert_eq!(
            s.join().unwrap().unwrap(),
            200,
            "a request in flight at the move"
        );
    }
    // The old address takes no new connection; its WebSockets go on.
    assert!(
        wait_until(Duration::from_secs(5), || TcpStream::connect(old).is_err()),
        "{old} still accepts"
    );
    ws.check();
    assert!(d.cli_ok(&["reload"]).contains("nothing changed"));
    let errors = ws.stop();
    assert!(errors.is_empty(), "websockets: {errors:?}");

    // The admin listener moves the same way.
    let admin_port = drove_test_support::free_port();
    cfg.tail = format!("[admin]\nlisten = \"127.0.0.1:{admin_port}\"\n");
    std::fs::write(&d.config, text(&cfg)).unwrap();
    reload_ok(&d, &[], "admin.listen");
    let admin = SocketAddr::from(([127, 0, 0, 1], admin_port));
    let st = http::get(admin, "/api/status").unwrap();
    assert_eq!(st.status, 200);
    assert_eq!(st.json()["admin"], admin.to_string());
    assert!(wait_until(Duration::from_secs(5), || TcpStream::connect(
        d.admin
    )
    .is_err()));
}

#[test]
fn the_balancer_switches_between_a_service_and_backends_live() {
    let outside = drove_test_support::demo(drove(), "outside");
    let web = |n: u32| {
        format!(
            "[services.web]\ncommand = [\"{}\", \"demo\"]\ninstances = {n}\nport = \"auto\"\nready = {{ http = \"/ready\", interval = \"50ms\" }}\nlogs = {{ dir = \"logs\" }}\n",
            drove().display()
        )
    };
    let balancer = |target: &str| {
        format!("\n[balancer]\n{target}\nworkers = 1\ninstance_header = \"X-Drove-Instance\"\n")
    };
    let d = Drove::up(
        drove(),
        &format!("{}{}", web(2), balancer("service = \"web\"")),
    );
    assert!(d.wait_in_rotation(2, Duration::from_secs(20)));
    let addr = d.addr();
    let web_pids = d.instance_pids();
    let served_by = || {
        (0..6)
            .map(|_| {
                http::get(addr, "/whoami")
                    .unwrap()
                    .header("x-drove-instance")
                    .unwrap()
                    .to_string()
            })
            .collect::<std::collections::BTreeSet<_>>()
    };
    assert_eq!(
        served_by().into_iter().collect::<Vec<_>>(),
        ["web.1", "web.2"]
    );

    // To a fixed backend, and the service goes away (after the switch: no request
    // is sent to an instance that is stopping).
    let to_backends = balancer(&format!("backends = [\"{}\"]", outside.addr));
    std::fs::write(&d.config, &to_backends).unwrap();
    let out = under_load(addr, || d.cli_ok(&["reload"]));
    assert!(
        out.contains("applied balancer target (service web -> backends)"),
        "{out}"
    );
    assert!(out.contains("applied services.web removed"), "{out}");
    assert!(!out.contains("NOT applied"), "{out}");
    assert_eq!(
        served_by().into_iter().collect::<Vec<_>>(),
        [outside.addr.to_string()]
    );
    assert!(wait_until(Duration::from_secs(10), || web_pids
        .iter()
        .all(|p| !alive(*p))));

    // And back to a service, added in the same reload: it takes traffic once ready.
    std::fs::write(
        &d.config,
        format!("{}{}", web(2), balancer("service = \"web\"")),
    )
    .unwrap();
    let out = under_load(addr, || d.cli_ok(&["reload"]));
    assert!(out.contains("applied services.web added"), "{out}");
    assert!(
        out.contains("applied balancer target (backends -> service web)"),
        "{out}"
    );
    assert!(
        d.wait_in_rotation(2, Duration::from_secs(20)),
        "{:?}",
        d.status()
    );
    assert_eq!(
        served_by().into_iter().collect::<Vec<_>>(),
        ["web.1", "web.2"]
    );
}
