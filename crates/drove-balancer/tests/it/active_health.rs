//! Active probes against real sockets (port 0 everywhere, real time, bounded waits).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use drove_balancer::{ActiveHealth, Algorithm, BackendSpec, Balancer, ProbeKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::support::*;

/// An HTTP/1.1 responder whose status is switched at runtime; logs every status served.
struct Responder {
    addr: SocketAddr,
    status: Arc<AtomicU16>,
    log: Arc<Mutex<Vec<u16>>>,
}

impl Responder {
    async fn start(status: u16, extra_headers: usize) -> Responder {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let status = Arc::new(AtomicU16::new(status));
        let log = Arc::new(Mutex::new(Vec::new()));
        let (st, lg) = (status.clone(), log.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                let (st, lg) = (st.clone(), lg.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 512];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let code = st.load(Ordering::SeqCst);
                    lg.lock().unwrap().push(code);
                    let mut resp =
                        format!("HTTP/1.1 {code} X\r\nContent-Length: 0\r\nConnection: close\r\n");
                    for i in 0..extra_headers {
                        resp.push_str(&format!("X-{i}: y\r\n"));
                    }
                    resp.push_str("\r\n");
                    let _ = sock.write_all(resp.as_bytes()).await;
                    let _ = sock.shutdown().await;
                });
            }
        });
        Responder { addr, status, log }
    }

    fn served(&self, code: u16) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|&&c| c == code)
            .count()
    }
}

/// A port nothing listens on.
async fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

/// A listener that accepts and never answers.
async fn silent() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    addr
}

fn at(id: &str, addr: SocketAddr) -> BackendSpec {
    BackendSpec {
        id: id.to_string(),
        addr,
        weight: 1,
        backup: false,
    }
}

fn http(expect_status: Option<u16>) -> ActiveHealth {
    ActiveHealth {
        kind: ProbeKind::Http {
            path: "/health".into(),
            expect_status,
        },
        interval: Duration::from_millis(50),
        timeout: Duration::from_millis(200),
        rise: 2,
        fall: 2,
    }
}

/// Polls `f` every 2 ms for up to 5 s.
async fn eventually(f: impl Fn() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while tokio::time::Instant::now() < deadline {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    false
}

fn up(b: &Balancer, id: &str) -> bool {
    b.find(id).unwrap().probe_up()
}

#[tokio::test]
async fn http_rise_and_fall() {
    let r = Responder::start(200, 0).await;
    let dead = closed_port().await;
    let b = balancer(
        Algorithm::RoundRobin,
        vec![at("app", r.addr), at("dead", dead)],
    );
    let task = b.spawn_health_checks(http(None));

    assert!(
        eventually(|| !up(&b, "dead")).await,
        "closed port goes down"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(up(&b, "app"));
    for _ in 0..10 {
        assert_eq!(pick_id(&b), "app");
    }

    r.status.store(503, Ordering::SeqCst);
    assert!(eventually(|| !up(&b, "app")).await, "503 takes it down");
    let fails = r.served(503);
    assert!(
        (2..=3).contains(&fails),
        "down after fall=2 failures, saw {fails}"
    );
    assert!(b.pick(&ctx(), &[]).is_none(), "everything down: None");

    r.status.store(200, Ordering::SeqCst);
    let ok_before = r.served(200);
    assert!(eventually(|| up(&b, "app")).await, "200 brings it back");
    let oks = r.served(200) - ok_before;
    assert!(
        (2..=3).contains(&oks),
        "up after rise=2 successes, saw {oks}"
    );
    assert_eq!(pick_id(&b), "app");
    task.abort();
}

#[tokio::test]
async fn tcp_probe() {
    let listening = silent().await;
    let dead = closed_port().await;
    let b = balancer(
        Algorithm::RoundRobin,
        vec![at("open", listening), at("dead", dead)],
    );
    let task = b.spawn_health_checks(ActiveHealth {
        kind: ProbeKind::Tcp,
        ..http(None)
    });
    assert!(eventually(|| !up(&b, "dead")).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(up(&b, "open"), "a TCP probe needs only the connect");
    task.abort();
}

#[tokio::test]
async fn http_probe_that_never_answers_times_out() {
    let hang = silent().await;
    let b = balancer(Algorithm::RoundRobin, vec![at("hang", hang)]);
    let started = tokio::time::Instant::now();
    let task = b.spawn_health_checks(http(None));
    assert!(eventually(|| !up(&b, "hang")).await);
    // Two timeouts of 200 ms, not a hang.
    assert!(started.elapsed() >= Duration::from_millis(400));
    task.abort();
}

#[tokio::test]
async fn expect_status() {
    let no_content = Responder::start(204, 0).await;
    let ok = Responder::start(200, 0).await;
    let b = balancer(
        Algorithm::RoundRobin,
        vec![at("204", no_content.addr), at("200", ok.addr)],
    );
    let task = b.spawn_health_checks(http(Some(204)));
    assert!(
        eventually(|| !up(&b, "200")).await,
        "200 is not the expected 204"
    );
    assert!(up(&b, "204"));
    task.abort();
}

#[tokio::test]
async fn default_accepts_2xx_3xx_only() {
    let redirect = Responder::start(302, 0).await;
    let missing = Responder::start(404, 0).await;
    let b = balancer(
        Algorithm::RoundRobin,
        vec![at("302", redirect.addr), at("404", missing.addr)],
    );
    let task = b.spawn_health_checks(http(None));
    assert!(eventually(|| !up(&b, "404")).await);
    assert!(up(&b, "302"));
    assert!(redirect.served(302) >= 2);
    task.abort();
}

#[tokio::test]
async fn many_response_headers_do_not_fail_the_probe() {
    // More headers than the probe's parser has slots: the status line decides.
    let chatty = Responder::start(200, 40).await;
    let chatty_down = Responder::start(503, 40).await;
    let b = balancer(
        Algorithm::RoundRobin,
        vec![at("chatty", chatty.addr), at("down", chatty_down.addr)],
    );
    let task = b.spawn_health_checks(http(None));
    assert!(eventually(|| !up(&b, "down")).await);
    assert!(eventually(|| chatty.served(200) >= 4).await);
    assert!(
        up(&b, "chatty"),
        "a healthy answer with many headers is healthy"
    );
    task.abort();
}

#[tokio::test]
async fn probes_follow_set_changes() {
    let r = Responder::start(200, 0).await;
    let b = balancer(Algorithm::RoundRobin, vec![at("app", r.addr)]);
    let task = b.spawn_health_checks(http(None));
    b.upsert(at("late", closed_port().await));
    assert!(
        eventually(|| !up(&b, "late")).await,
        "a backend added later is probed"
    );
    assert!(up(&b, "app"));
    task.abort();
}

#[tokio::test]
async fn task_ends_when_the_balancer_is_dropped() {
    let r = Responder::start(200, 0).await;
    let b = balancer(Algorithm::RoundRobin, vec![at("app", r.addr)]);
    let task = b.spawn_health_checks(http(None));
    tokio::time::sleep(Duration::from_millis(120)).await;
    drop(b);
    tokio::time::timeout(Duration::from_secs(2), task)
        .await
        .expect("the probe task stops by itself")
        .unwrap();
}

#[tokio::test]
async fn probe_recovery_forgives_passive_ejection() {
    use drove_balancer::Outcome;
    let r = Responder::start(503, 0).await;
    let other = Responder::start(200, 0).await;
    let b = balancer(
        Algorithm::RoundRobin,
        vec![at("app", r.addr), at("other", other.addr)],
    );
    let task = b.spawn_health_checks(http(None));
    assert!(eventually(|| !up(&b, "app")).await);
    let t = b.find("app").unwrap();
    for _ in 0..3 {
        b.start(&t).finish(Outcome::ConnectFailed, Duration::ZERO);
    }
    assert_eq!(t.ejections(), 1);
    r.status.store(200, Ordering::SeqCst);
    assert!(eventually(|| up(&b, "app")).await);
    // Ejected for 10 s by default, but probes say it is back: it serves at once.
    let ids: std::collections::HashSet<_> = (0..10).map(|_| pick_id(&b)).collect();
    assert!(ids.contains("app"), "{ids:?}");
    task.abort();
}
