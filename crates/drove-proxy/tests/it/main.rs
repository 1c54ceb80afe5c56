//! In-process tests of the data path: `drove_proxy::serve` on a loopback port in front of
//! scripted backends (retries, timeouts, the budget, stale pooled connections,
//! 100-continue, each framing, limits, smuggling shapes). What needs real processes and
//! signals (a SIGSTOPped instance, SIGKILL) is in the end-to-end tests. HTTP/2 from
//! clients is in `http2.rs`, response compression in `compress.rs`.

mod compress;
mod http2;
mod support;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use support::{response, status, ProxyUnderTest, Script, Scripted};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn a_broken_backend_costs_a_get_nothing_but_a_post_gets_502() {
    let broken = Scripted::start(|_| Script::Close);
    let good = Scripted::ok("fine");
    // Passive ejection off: the broken backend stays in rotation for the POSTs.
    let p = ProxyUnderTest::with_balancer(
        &[&broken, &good],
        support::settings(),
        drove_balancer::BalancerSettings {
            passive: drove_balancer::PassiveHealth {
                max_fails: 0,
                ..Default::default()
            },
            ..Default::default()
        },
    );
    for _ in 0..4 {
        let (s, r) = p.get("/");
        assert_eq!(s, 200, "{r}");
        assert!(
            r.to_ascii_lowercase().contains("x-drove-instance: b2"),
            "{r}"
        );
    }
    // A POST that reached the broken backend is not replayed.
    let mut got502 = false;
    for _ in 0..4 {
        let r = p.raw(
            b"POST /p HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi",
            Duration::from_secs(5),
        );
        match status(&r) {
            200 => {}
            502 => got502 = true,
            s => panic!("unexpected {s}: {r}"),
        }
    }
    assert!(
        got502,
        "round robin sent a POST to the broken backend at least once"
    );
    let posts_on_good = good
        .requests()
        .iter()
        .filter(|r| r.starts_with(b"POST"))
        .count();
    let posts_on_broken = broken
        .requests()
        .iter()
        .filter(|r| r.starts_with(b"POST"))
        .count();
    assert_eq!(posts_on_good + posts_on_broken, 4, "each POST sent once");
}

#[test]
fn per_try_timeout_moves_a_get_and_answers_504_when_nothing_answers() {
    let hang = Scripted::start(|_| Script::Hang);
    let good = Scripted::ok("fine");
    let mut s = support::settings();
    s.per_try_timeout = Duration::from_millis(300);
    let p = ProxyUnderTest::start(&[&hang, &good], s.clone());
    for _ in 0..2 {
        let t = Instant::now();
        let (st, r) = p.get("/");
        assert_eq!(st, 200, "{r}");
        assert!(t.elapsed() < Duration::from_secs(3));
    }
    // Only hanging backends: 504 after the tries.
    let hang2 = Scripted::start(|_| Script::Hang);
    s.retries = 1;
    let p = ProxyUnderTest::start(&[&hang, &hang2], s);
    let t = Instant::now();
    let (st, r) = p.get("/");
    assert_eq!(st, 504, "{r}");
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(550) && took < Duration::from_secs(3),
        "two tries of 300 ms: {took:?}"
    );
}

#[test]
fn attempts_zero_turns_retries_off() {
    let broken = Scripted::start(|_| Script::Close);
    let good = Scripted::ok("fine");
    let mut s = support::settings();
    s.retries = 0;
    let p = ProxyUnderTest::start(&[&broken, &good], s);
    let statuses: Vec<u16> = (0..4).map(|_| p.get("/").0).collect();
    assert!(statuses.contains(&502), "{statuses:?}");
    assert_eq!(
        p.proxy
            .stats()
            .retries
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}

#[test]
fn a_refused_connect_is_retried_beyond_attempts_without_budget() {
    // Two closed ports and one live backend: with attempts = 1 the request still
    // reaches the live one (never-sent requests do not count).
    let closed1 = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed2 = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead1 = Scripted {
        addr: closed1.local_addr().unwrap(),
        seen: Default::default(),
        partial: Default::default(),
    };
    let dead2 = Scripted {
        addr: closed2.local_addr().unwrap(),
        seen: Default::default(),
        partial: Default::default(),
    };
    drop((closed1, closed2));
    let good = Scripted::ok("fine");
    let mut s = support::settings();
    s.retries = 1;
    s.retry_budget_percent = 0;
    let p = ProxyUnderTest::start(&[&dead1, &dead2, &good], s);
    for _ in 0..6 {
        assert_eq!(p.get("/").0, 200);
    }
}

#[test]
fn on_5xx_retries_502_to_504_only_and_relays_the_last_answer() {
    let mut s = support::settings();
    s.retry_on_5xx = true;
    let bad = Scripted::start(|_| Script::Reply(response(503, "busy")));
    let good = Scripted::ok("fine");
    let p = ProxyUnderTest::start(&[&bad, &good], s.clone());
    for _ in 0..4 {
        assert_eq!(p.get("/").0, 200);
    }
    // 500 is the app's own answer: relayed, not retried.
    let err500 = Scripted::start(|_| Script::Reply(response(500, "oops")));
    let good2 = Scripted::ok("fine");
    let p = ProxyUnderTest::start(&[&err500, &good2], s.clone());
    let statuses: Vec<u16> = (0..4).map(|_| p.get("/").0).collect();
    assert!(statuses.contains(&500), "{statuses:?}");
    // Every backend 503: the backend's 503 is relayed (not drove's own).
    let b1 = Scripted::start(|_| Script::Reply(response(503, "busy")));
    let b2 = Scripted::start(|_| Script::Reply(response(503, "busy")));
    let p = ProxyUnderTest::start(&[&b1, &b2], s);
    let (st, r) = p.get("/");
    assert_eq!(st, 503);
    assert!(r.ends_with("busy"), "the backend's answer: {r}");
}

#[test]
fn the_retry_budget_holds_retries_to_its_share() {
    let mut s = support::settings();
    s.retry_on_5xx = true;
    s.retry_budget_percent = 10;
    let b1 = Scripted::start(|_| Script::Reply(response(503, "busy")));
    let b2 = Scripted::start(|_| Script::Reply(response(503, "busy")));
    let p = ProxyUnderTest::start(&[&b1, &b2], s);
    let n = 200;
    for _ in 0..n {
        assert_eq!(p.get("/").0, 503);
    }
    let stats = p.proxy.stats();
    let retries = stats.retries.load(std::sync::atomic::Ordering::Relaxed);
    // 10 % of 200 plus the initial credit of 10.
    assert!(retries <= 20 + 10 + 1, "{retries}");
    assert!(retries >= 20, "{retries}");
    assert!(
        stats
            .retry_budget_exhausted
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
    );
}

#[test]
fn a_stale_pooled_connection_is_replaced_even_with_retries_off() {
    // The backend closes every connection after answering, without saying so: the
    // pooled connection is dead when the next request takes it.
    let b = Scripted::start(|_| Script::ReplyThenClose(response(200, "once")));
    let mut s = support::settings();
    s.retries = 0;
    let p = ProxyUnderTest::start(&[&b], s);
    let mut c = std::net::TcpStream::connect(p.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    for i in 0..5 {
        c.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !text(&got).ends_with("once") {
            let n = c.read(&mut buf).unwrap();
            assert!(n > 0, "request {i}: closed");
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(status(&text(&got)), 200, "request {i}");
        // Let the backend's close arrive before the next request takes the connection.
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn expect_100_continue_is_answered_before_the_body() {
    let b = Scripted::ok("got it");
    let p = ProxyUnderTest::start(&[&b], support::settings());
    let mut c = std::net::TcpStream::connect(p.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(b"POST /u HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 256];
    let n = c.read(&mut buf).unwrap();
    assert!(
        text(&buf[..n]).starts_with("HTTP/1.1 100 Continue"),
        "{}",
        text(&buf[..n])
    );
    c.write_all(b"hello").unwrap();
    let mut rest = Vec::new();
    let _ = c.read_to_end(&mut rest);
    assert_eq!(status(&text(&rest)), 200, "{}", text(&rest));
    let seen = b.requests();
    assert!(seen[0].ends_with(b"\r\n\r\nhello"), "{}", text(&seen[0]));
    assert!(!text(&seen[0]).to_ascii_lowercase().contains("expect:"));
}

#[test]
fn each_framing_is_relayed() {
    let b = Scripted::start(|req| {
        let path = text(req).split(' ').nth(1).unwrap_or("").to_string();
        match path.as_str() {
            "/chunked" => Script::Reply(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n".to_vec(),
            ),
            "/close" => Script::ReplyThenClose(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil close".to_vec()),
            "/empty" => Script::Reply(b"HTTP/1.1 204 No Content\r\n\r\n".to_vec()),
            _ => Script::Reply(response(200, "length")),
        }
    });
    let p = ProxyUnderTest::start(&[&b], support::settings());
    let (s, r) = p.get("/length");
    assert_eq!(s, 200);
    assert!(r.ends_with("\r\n\r\nlength"), "{r}");
    let (s, r) = p.get("/chunked");
    assert_eq!(s, 200);
    assert!(r.ends_with("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"), "{r}");
    let (s, r) = p.get("/close");
    assert_eq!(s, 200);
    assert!(r.ends_with("until close"), "{r}");
    let (s, _) = p.get("/empty");
    assert_eq!(s, 204);
    // HTTP/1.0 client: a chunked body arrives de-chunked.
    let r = p.raw(b"GET /chunked HTTP/1.0\r\n\r\n", Duration::from_secs(5));
    assert!(r.starts_with("HTTP/1.0 200"), "{r}");
    assert!(r.ends_with("\r\n\r\nhello world"), "{r}");
    assert!(!r.to_ascii_lowercase().contains("transfer-encoding"), "{r}");
}

/// A backend's trailer section reaches an HTTP/1.1 client filtered (forbidden fields
/// out); a malformed one is dropped and the body still ends cleanly, on a connection
/// that serves on. An HTTP/1.0 client gets the body de-chunked, without trailers.
#[test]
fn response_trailers_reach_http11_clients_filtered() {
    let b = Scripted::start(|req| {
        let path = text(req).split(' ').nth(1).unwrap_or("").to_string();
        let trailer: &[u8] = match path.as_str() {
            "/ok" => b"grpc-status: 0\r\nContent-Length: 5\r\nx-sum: a b\r\nhost: evil\r\n",
            "/bad" => b"grpc-status: 0\r\n folded\r\n",
            _ => b"",
        };
        let mut r =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n".to_vec();
        r.extend_from_slice(trailer);
        r.extend_from_slice(b"\r\n");
        Script::Reply(r)
    });
    let p = ProxyUnderTest::start(&[&b], support::settings());
    let r = p.raw(
        b"GET /ok HTTP/1.1\r\nHost: t\r\n\r\nGET /bad HTTP/1.1\r\nHost: t\r\n\r\nGET /none HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    );
    let bodies: Vec<&str> = r.split("HTTP/1.1 200 OK\r\n").skip(1).collect();
    assert_eq!(bodies.len(), 3, "{r}");
    assert!(
        bodies[0].ends_with("\r\n\r\n5\r\nhello\r\n0\r\ngrpc-status: 0\r\nx-sum: a b\r\n\r\n"),
        "{r}"
    );
    assert!(
        bodies[1].ends_with("\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
        "{r}"
    );
    assert!(
        bodies[2].ends_with("\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
        "{r}"
    );
    let r = p.raw(b"GET /ok HTTP/1.0\r\n\r\n", Duration::from_secs(5));
    assert!(r.ends_with("\r\n\r\nhello"), "{r}");
}

/// Chunked request bodies reach the backend re-framed: canonical sizes, no extensions,
/// no trailers.
#[test]
fn chunked_request_bodies_are_reframed() {
    let b = Scripted::ok("ok");
    let p = ProxyUnderTest::start(&[&b], support::settings());
    let r = p.raw(
        b"POST /c HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n005;name=\"x\"\r\nhello\r\n0000a\r\n0123456789\r\n0;last\r\nX-Smuggled: 1\r\n\r\n",
        Duration::from_secs(5),
    );
    assert_eq!(status(&r), 200, "{r}");
    let seen = text(&b.requests()[0]);
    assert!(
        seen.ends_with("\r\n\r\n5\r\nhello\r\na\r\n0123456789\r\n0\r\n\r\n"),
        "{seen:?}"
    );
    assert!(
        !seen.contains("X-Smuggled") && !seen.contains("name="),
        "{seen:?}"
    );
}

/// `max_body_size` holds for chunked bodies too: 413, and the backend never sees the
/// body's end.
#[test]
fn max_body_size_counts_chunked_bodies() {
    let b = Scripted::ok("ok");
    let mut s = support::settings();
    s.max_body_size = 1024;
    let p = ProxyUnderTest::start(&[&b], s);
    let mut req = b"POST /c HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..5 {
        req.extend_from_slice(b"3e8\r\n");
        req.extend_from_slice(&[b'x'; 1000]);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    let r = p.raw(&req, Duration::from_secs(5));
    assert_eq!(status(&r), 413, "{r}");
    // Content-Length over the limit: 413 as before.
    let r = p.raw(
        b"POST /c HTTP/1.1\r\nHost: t\r\nContent-Length: 5000\r\n\r\n",
        Duration::from_secs(5),
    );
    assert_eq!(status(&r), 413, "{r}");
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        b.requests().is_empty(),
        "no complete request reached the backend"
    );
    let partial = b.partial.lock().unwrap().clone();
    assert!(
        partial.iter().all(|p| !p.ends_with(b"0\r\n\r\n")),
        "the body's end never reached the backend"
    );
    // Within the limit: through.
    let r = p.raw(
        b"POST /c HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nsmall\r\n0\r\n\r\n",
        Duration::from_secs(5),
    );
    assert_eq!(status(&r), 200, "{r}");
}

/// Request-targets outside RFC 9112's four forms never reach a backend.
#[test]
fn odd_request_targets_are_refused() {
    let b = Scripted::ok("ok");
    let p = ProxyUnderTest::start(&[&b], support::settings());
    for (req, want) in [
        ("GET ! HTTP/1.1\r\n\r\n", 400),
        ("GET ! HTTP/1.1\r\nHost: t\r\n\r\n", 400),
        ("GET x HTTP/1.1\r\nHost: t\r\n\r\n", 400),
        ("GET * HTTP/1.1\r\nHost: t\r\n\r\n", 400),
        ("GET http://u@t/ HTTP/1.1\r\nHost: t\r\n\r\n", 400),
        ("CONNECT t:443 HTTP/1.1\r\nHost: t:443\r\n\r\n", 405),
    ] {
        let r = p.raw(req.as_bytes(), Duration::from_secs(5));
        assert_eq!(status(&r), want, "{req:?}: {r}");
    }
    assert!(
        b.requests().is_empty(),
        "{:?}",
        b.requests().iter().map(|r| text(r)).collect::<Vec<_>>()
    );
    // The forms that are valid pass, absolute-form with its authority as Host.
    let r = p.raw(
        b"GET http://example.test/abs HTTP/1.1\r\nHost: other.test\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    );
    assert_eq!(status(&r), 200, "{r}");
    let r = p.raw(
        b"OPTIONS * HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    );
    assert_eq!(status(&r), 200, "{r}");
    let seen: Vec<String> = b.requests().iter().map(|r| text(r)).collect();
    assert!(
        seen[0].starts_with("GET /abs HTTP/1.1\r\nHost: example.test\r\n"),
        "{}",
        seen[0]
    );
    assert!(!seen[0].contains("other.test"), "{}", seen[0]);
    assert!(seen[1].starts_with("OPTIONS * HTTP/1.1\r\n"), "{}", seen[1]);
}

/// h2c smuggling: an `Upgrade: h2c` never reaches the backend; the request goes on as
/// plain HTTP/1.1.
#[test]
fn h2c_upgrades_are_stripped() {
    let b = Scripted::ok("plain");
    let p = ProxyUnderTest::start(&[&b], support::settings());
    let r = p.raw(
        b"GET / HTTP/1.1\r\nHost: t\r\nConnection: Upgrade, HTTP2-Settings, close\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n",
        Duration::from_secs(5),
    );
    assert_eq!(status(&r), 200, "{r}");
    let seen = text(&b.requests()[0]).to_ascii_lowercase();
    assert!(
        !seen.contains("upgrade") && !seen.contains("http2-settings"),
        "{seen}"
    );
}

/// A 101 is tunnelled only when it answers the upgrade the request asked for.
#[test]
fn only_a_matching_101_becomes_a_tunnel() {
    // A backend that switches protocols whatever it was asked, then echoes raw bytes.
    let rogue = Scripted::start(|_| {
        Script::ReplyThenClose(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: raw\r\nConnection: upgrade\r\n\r\nRAW-BACKEND".to_vec())
    });
    let p = ProxyUnderTest::start(&[&rogue], support::settings());
    // A POST without Upgrade gets a 101: 502, and the backend's raw bytes never arrive.
    let r = p.raw(
        b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n",
        Duration::from_secs(5),
    );
    assert_eq!(status(&r), 502, "{r}");
    assert!(!r.contains("RAW-BACKEND"), "{r}");
    // A WebSocket request whose 101 names another protocol: 502.
    let r = p.raw(
        b"GET /ws HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        Duration::from_secs(5),
    );
    assert_eq!(status(&r), 502, "{r}");
    // The right protocol but a wrong accept key: 502.
    let bad_key = Scripted::start(|_| {
        Script::ReplyThenClose(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\nSec-WebSocket-Accept: d3Jvbmc=\r\n\r\nRAW".to_vec())
    });
    let p = ProxyUnderTest::start(&[&bad_key], support::settings());
    let r = p.raw(
        b"GET /ws HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        Duration::from_secs(5),
    );
    assert_eq!(status(&r), 502, "{r}");
    assert!(!r.contains("RAW"), "{r}");
    // The matching accept key: a tunnel.
    let good = Scripted::start(|_| {
        Script::ReplyThenClose(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\nFRAMES".to_vec())
    });
    let p = ProxyUnderTest::start(&[&good], support::settings());
    let r = p.raw(
        b"GET /ws HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        Duration::from_secs(5),
    );
    assert_eq!(status(&r), 101, "{r}");
    assert!(r.ends_with("FRAMES"), "{r}");
}

/// A backend marked unhealthy while requests wait on it gives the replayable ones back
/// at once (no per-try timeout is set: they would wait for the response timeout).
#[test]
fn requests_waiting_on_a_backend_that_leaves_rotation_move_at_once() {
    let hang = Scripted::start(|_| Script::Hang);
    let good = Scripted::ok("fine");
    let mut s = support::settings();
    s.response_timeout = Duration::from_secs(20);
    s.per_try_timeout = Duration::from_secs(20);
    let p = ProxyUnderTest::start(&[&hang, &good], s);
    // Round robin: of 4 concurrent GETs, 2 wait on the hanging backend.
    let addr = p.addr;
    let handles = concurrent_gets(addr, 4);
    // Active HTTP probes: the hanging backend fails two 150 ms probes and leaves
    // rotation after about half a second.
    std::thread::sleep(Duration::from_millis(200));
    let _checks = p.health_checks(drove_balancer::ActiveHealth {
        kind: drove_balancer::ProbeKind::Http {
            path: "/health".into(),
            expect_status: None,
        },
        interval: Duration::from_millis(150),
        timeout: Duration::from_millis(150),
        rise: 1,
        fall: 2,
    });
    for h in handles {
        let (st, took) = h.join().unwrap();
        assert_eq!(st, 200);
        assert!(took < Duration::from_secs(2), "{took:?}");
    }
    assert!(!p.balancer.find("b1").unwrap().probe_up());
}

/// `n` GETs on their own connections at once, each answering its status and how long
/// it took (read timeout 15 s).
fn concurrent_gets(
    addr: std::net::SocketAddr,
    n: usize,
) -> Vec<std::thread::JoinHandle<(u16, Duration)>> {
    (0..n)
        .map(|_| {
            std::thread::spawn(move || {
                let t = Instant::now();
                let mut c = std::net::TcpStream::connect(addr).unwrap();
                c.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
                c.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
                    .unwrap();
                let mut out = Vec::new();
                let _ = c.read_to_end(&mut out);
                (status(&text(&out)), t.elapsed())
            })
        })
        .collect()
}

/// A backend passively ejected while requests wait on it (failures reported by other
/// requests) gives the replayable ones back at once, as a failed probe does: the
/// ejection wakes them, nothing polls.
#[test]
fn requests_waiting_on_a_backend_that_is_ejected_move_at_once() {
    let hang = Scripted::start(|_| Script::Hang);
    let good = Scripted::ok("fine");
    let mut s = support::settings();
    s.response_timeout = Duration::from_secs(20);
    s.per_try_timeout = Duration::from_secs(20);
    let p = ProxyUnderTest::with_balancer(
        &[&hang, &good],
        s,
        drove_balancer::BalancerSettings {
            max_ejected_percent: 100,
            ..Default::default()
        },
    );
    let addr = p.addr;
    let handles = concurrent_gets(addr, 4);
    // Round robin: two of the four wait on the hanging backend. Then three failures
    // (max_fails) on it from elsewhere eject it.
    std::thread::sleep(Duration::from_millis(500));
    let b1 = p.balancer.find("b1").unwrap();
    let waited = Instant::now();
    for _ in 0..3 {
        p.balancer
            .start(&b1)
            .finish(drove_balancer::Outcome::Broken, Duration::ZERO);
    }
    assert!(!b1.is_healthy_now(), "three failures eject it");
    for h in handles {
        let (st, took) = h.join().unwrap();
        assert_eq!(st, 200);
        assert!(took < Duration::from_secs(3), "{took:?}");
    }
    assert!(
        waited.elapsed() < Duration::from_secs(2),
        "{:?}",
        waited.elapsed()
    );
}

/// A backend that refuses a large upload before reading it (an early 413) gets its
/// answer to the client at once: drove reads the response head while it sends the
/// body, stops sending, and closes the client's connection after the answer. Before,
/// drove kept writing into full buffers until the backend closed, then answered 502.
#[test]
fn an_early_error_answer_to_a_large_upload_is_relayed_at_once() {
    let (status, body, took) = upload_to_a_backend_that_reads_only_the_head(
        b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 8\r\nConnection: close\r\n\r\ntoo big\n",
        Duration::from_secs(4),
    );
    assert_eq!(status, 413);
    assert_eq!(body, "too big\n");
    assert!(took < Duration::from_secs(3), "{took:?}");
}

/// A backend that answers 200 without reading the upload and closes (the demo app does
/// that with a POST) fails drove's writes: its answer is relayed, not drove's 502.
#[test]
fn a_success_answer_from_a_backend_that_stops_taking_the_upload_is_relayed() {
    let (status, body, took) = upload_to_a_backend_that_reads_only_the_head(
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n",
        Duration::ZERO,
    );
    assert_eq!(status, 200);
    assert_eq!(body, "ok\n");
    assert!(took < Duration::from_secs(3), "{took:?}");
}

/// POSTs 64 MB through drove to a backend that reads only the request head, writes
/// `answer`, holds the connection for `hold` without reading, and closes it. Returns
/// the status and body the client got and how long it took; checks that the client's
/// connection ends after the answer (the rest of the body was never read).
fn upload_to_a_backend_that_reads_only_the_head(
    answer: &'static [u8],
    hold: Duration,
) -> (u16, String, Duration) {
    // A raw backend: Scripted would read the whole body first.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let b = Scripted {
        addr: l.local_addr().unwrap(),
        seen: Default::default(),
        partial: Default::default(),
    };
    std::thread::spawn(move || {
        let Ok((mut c, _)) = l.accept() else { return };
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && c.read(&mut byte).unwrap_or(0) == 1 {
            head.push(byte[0]);
        }
        let _ = c.write_all(answer);
        std::thread::sleep(hold);
    });
    let p = ProxyUnderTest::start(&[&b], support::settings());
    let mut c = std::net::TcpStream::connect(p.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    const BODY: usize = 64 << 20;
    c.write_all(
        format!("POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: {BODY}\r\n\r\n").as_bytes(),
    )
    .unwrap();
    let mut w = c.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let chunk = vec![b'x'; 64 << 10];
        for _ in 0..BODY / chunk.len() {
            if w.write_all(&chunk).is_err() {
                return;
            }
        }
    });
    let t = Instant::now();
    let mut out = Vec::new();
    let mut piece = [0u8; 4096];
    let complete = |out: &[u8]| {
        let r = text(out);
        r.split_once("\r\n\r\n").is_some_and(|(h, body)| {
            h.lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .and_then(|n| n.trim().parse::<usize>().ok())
                .is_some_and(|n| body.len() >= n)
        })
    };
    while !complete(&out) {
        match c.read(&mut piece) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&piece[..n]),
        }
    }
    let took = t.elapsed();
    let r = text(&out);
    let body = r
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    // The rest of the body was never read: the connection ends after the answer.
    let end = c.read(&mut piece);
    assert!(matches!(end, Ok(0) | Err(_)), "{end:?}");
    drop(c);
    writer.join().unwrap();
    (status(&r), body, took)
}

/// The access log has one line per answer, drove's own included (400, 413, 431, 429),
/// with the body bytes sent and the time to the end of the body.
#[test]
fn the_access_log_records_every_answer_with_bytes_and_full_time() {
    let dir = std::env::temp_dir().join(format!("drove-alog-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("access.log");
    let _ = std::fs::remove_file(&log);
    let b = Scripted::start(|req| {
        if req.starts_with(b"GET /slow") {
            Script::Slowly(
                b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nhello".to_vec(),
                Duration::from_millis(400),
                b" world".to_vec(),
            )
        } else {
            Script::Reply(response(200, "twelve bytes"))
        }
    });
    let mut s = support::settings();
    s.access_log = drove_proxy::AccessLogFormat::Json;
    s.access_log_path = Some(log.clone());
    s.max_body_size = 10;
    s.max_header_size = 1024;
    s.request_id_header = Some(http::HeaderName::from_static("x-request-id"));
    s.routes = vec![drove_proxy::RouteLimit {
        prefix: "/limited".into(),
        name: "strict".into(),
        key: drove_proxy::LimitKey::ClientIp,
        limiter: std::sync::Arc::new(drove_limits::Limit::Local(
            drove_limits::Limiter::try_new(1, Duration::from_secs(60), 1).unwrap(),
        )),
    }];
    let p = ProxyUnderTest::start(&[&b], s);
    let send = |raw: &[u8]| status(&p.raw(raw, Duration::from_secs(5)));
    assert_eq!(
        send(b"GET /slow HTTP/1.1\r\nHost: t\r\nX-Request-Id: r-slow\r\nConnection: close\r\n\r\n"),
        200
    );
    assert_eq!(
        send(b"GET /fast HTTP/1.1\r\nHost: t\r\nX-Request-Id: r-fast\r\nConnection: close\r\n\r\n"),
        200
    );
    assert_eq!(send(b"GET ! HTTP/1.1\r\n\r\n"), 400);
    assert_eq!(
        send(b"POST /big HTTP/1.1\r\nHost: t\r\nX-Request-Id: r-413\r\nContent-Length: 99\r\n\r\n"),
        413
    );
    let huge = format!(
        "GET / HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n",
        "a".repeat(2000)
    );
    assert_eq!(send(huge.as_bytes()), 431);
    assert_eq!(
        send(b"GET /limited HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"),
        200
    );
    assert_eq!(
        send(
            b"GET /limited HTTP/1.1\r\nHost: t\r\nX-Request-Id: r-429\r\nConnection: close\r\n\r\n"
        ),
        429
    );
    let lines = || -> Vec<serde_json::Value> {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let t = Instant::now();
    while lines().len() < 7 && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let lines = lines();
    assert_eq!(lines.len(), 7, "{lines:#?}");
    let by_rid = |rid: &str| {
        lines
            .iter()
            .find(|l| l["request_id"] == rid)
            .unwrap()
            .clone()
    };
    let slow = by_rid("r-slow");
    assert_eq!(slow["bytes"], 11);
    assert!(
        slow["request_time"].as_f64().unwrap() >= 0.4,
        "request_time covers the body: {slow}"
    );
    assert!(
        slow["upstream_time"].as_f64().unwrap() < 0.4,
        "head time: {slow}"
    );
    assert_eq!(by_rid("r-fast")["bytes"], 12);
    let statuses: Vec<u64> = lines
        .iter()
        .map(|l| l["status"].as_u64().unwrap())
        .collect();
    for want in [400, 413, 431, 429] {
        assert!(statuses.contains(&want), "{want} logged: {statuses:?}");
    }
    let limited = by_rid("r-429");
    assert!(
        limited["error"].as_str().unwrap().contains("strict"),
        "{limited}"
    );
    assert!(limited["bytes"].as_u64().unwrap() > 0);
    let bad = lines.iter().find(|l| l["status"] == 400).unwrap();
    assert_eq!(bad["method"], "-");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn new_settings_apply_to_requests_that_start_after_the_swap_only() {
    // `/slow` is answered after 600 ms: it is in flight while the settings change.
    let b = Scripted::start(|req| {
        if req.starts_with(b"GET /slow") {
            Script::Slowly(
                Vec::new(),
                Duration::from_millis(600),
                response(200, "slow"),
            )
        } else {
            Script::Reply(response(200, "fast"))
        }
    });
    let p = ProxyUnderTest::start(&[&b], support::settings());
    let (s, r) = p.get("/");
    assert_eq!(s, 200);
    assert!(
        r.to_ascii_lowercase().contains("x-drove-instance: b1"),
        "{r}"
    );

    let addr = p.addr;
    let in_flight = std::thread::spawn(move || {
        let mut c = std::net::TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c.write_all(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !text(&got).ends_with("slow") {
            let n = c.read(&mut buf).unwrap();
            assert!(n > 0, "closed early: {}", text(&got));
            got.extend_from_slice(&buf[..n]);
        }
        // The next request on the same keep-alive connection starts after the swap.
        c.write_all(b"GET /next HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut next = Vec::new();
        let _ = c.read_to_end(&mut next);
        (text(&got), text(&next))
    });
    std::thread::sleep(Duration::from_millis(200));
    let mut s = support::settings();
    s.instance_header = Some(http::HeaderName::from_static("x-served-by"));
    p.proxy.update(s).unwrap();

    let (_, r) = p.get("/");
    let lower = r.to_ascii_lowercase();
    assert!(lower.contains("x-served-by: b1"), "{r}");
    assert!(!lower.contains("x-drove-instance"), "{r}");
    let (slow, next) = in_flight.join().unwrap();
    let (slow, next) = (slow.to_ascii_lowercase(), next.to_ascii_lowercase());
    assert!(
        slow.contains("x-drove-instance: b1") && !slow.contains("x-served-by"),
        "the request in flight keeps the settings it started with: {slow}"
    );
    assert!(next.contains("x-served-by: b1"), "{next}");
}

/// An HTTP/1.1 client that closes its connection while drove relays a body whose next
/// bytes are slow to come (an event stream, a long poll): drove closes the backend's
/// connection at once and its in-flight count returns to 0 (nginx does the same, its
/// 499), instead of holding both until the backend writes again.
#[test]
fn a_client_that_goes_away_mid_body_ends_the_upstream_exchange() {
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    use std::sync::Arc;
    let closed = Arc::new(AtomicUsize::new(0));
    let c2 = closed.clone();
    let b = Scripted::start(move |_| {
        let Script::With(hold) = support::hold(c2.clone()) else {
            unreachable!()
        };
        Script::With(Arc::new(move |c| {
            let _ =
                c.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n");
            hold(c)
        }))
    });
    let p = ProxyUnderTest::start(&[&b], support::settings());
    let backend = p.balancer.find("b1").unwrap();
    let mut c = std::net::TcpStream::connect(p.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(b"GET /events HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.windows(5).any(|w| w == b"first") {
        let n = c.read(&mut buf).unwrap();
        assert!(n > 0, "{}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(backend.in_flight(), 1);
    drop(c);
    let t = Instant::now();
    let until = |f: &dyn Fn() -> bool| {
        while !f() && t.elapsed() < Duration::from_secs(3) {
            std::thread::sleep(Duration::from_millis(5));
        }
        f()
    };
    assert!(
        until(&|| closed.load(SeqCst) == 1),
        "the backend's connection was closed"
    );
    assert!(until(&|| backend.in_flight() == 0));
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
}
