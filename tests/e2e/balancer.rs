//! The balancer over static `drove demo` backends: algorithms, stickiness, headers,
//! WebSocket, access log, graceful shutdown.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use drove_test_support::http::{self, Conn};
use drove_test_support::{demo, Demo, Drove};

use crate::{drove, static_config};

fn three() -> Vec<Demo> {
    (1..=3).map(|i| demo(drove(), &format!("b{i}"))).collect()
}

fn count_instances(
    addr: std::net::SocketAddr,
    n: usize,
    path: &str,
    headers: &[(&str, &str)],
) -> BTreeMap<String, u64> {
    let mut c = Conn::open(addr, Duration::from_secs(5)).unwrap();
    let mut m = BTreeMap::new();
    for _ in 0..n {
        let r = c.request("GET", path, headers, b"").unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        *m.entry(r.header("x-drove-instance").unwrap().to_string())
            .or_insert(0) += 1;
    }
    m
}

#[test]
fn round_robin_spreads_exactly_and_names_the_instance() {
    let b = three();
    let addrs: Vec<_> = b.iter().map(|d| d.addr).collect();
    let d = Drove::up(drove(), &static_config(&addrs, ""));
    let m = count_instances(d.addr(), 300, "/whoami", &[]);
    assert_eq!(m.len(), 3, "{m:?}");
    for n in m.values() {
        assert_eq!(*n, 100, "round robin must be exact: {m:?}");
    }
    // The header names the backend that really served: /whoami says who it is.
    let r = http::get(d.addr(), "/whoami").unwrap();
    let who = r.json()["instance"].as_str().unwrap().to_string();
    let served = r.header("x-drove-instance").unwrap();
    let idx = addrs.iter().position(|a| a.to_string() == served).unwrap();
    assert_eq!(who, format!("b{}", idx + 1));
}

#[test]
fn weights_are_honoured() {
    let b = three();
    let cfg = format!(
        "[balancer]\nlisten = \"127.0.0.1:0\"\nworkers = 1\ninstance_header = \"X-Drove-Instance\"\nbackends = [{{ addr = \"{}\", weight = 1, name = \"w1\" }}, {{ addr = \"{}\", weight = 2, name = \"w2\" }}, {{ addr = \"{}\", weight = 3, name = \"w3\" }}]\n",
        b[0].addr, b[1].addr, b[2].addr
    );
    let d = Drove::up(drove(), &cfg);
    let m = count_instances(d.addr(), 600, "/health", &[]);
    assert_eq!(m.get("w1"), Some(&100), "{m:?}");
    assert_eq!(m.get("w2"), Some(&200), "{m:?}");
    assert_eq!(m.get("w3"), Some(&300), "{m:?}");
}

#[test]
fn backup_only_when_primaries_are_gone() {
    let mut b = three();
    let dead = drove_test_support::free_port();
    let cfg = format!(
        "[balancer]\nlisten = \"127.0.0.1:0\"\nworkers = 1\ninstance_header = \"X-Drove-Instance\"\nbackends = [{{ addr = \"{}\", name = \"p1\" }}, {{ addr = \"127.0.0.1:{dead}\", name = \"p2\" }}, {{ addr = \"{}\", name = \"bk\", backup = true }}]\n",
        b[0].addr, b[1].addr
    );
    let d = Drove::up(drove(), &cfg);
    let m = count_instances(d.addr(), 50, "/health", &[]);
    assert_eq!(
        m.get("bk"),
        None,
        "backup used while a primary is up: {m:?}"
    );
    drop(b.remove(0)); // kill p1's process
                       // Connect failures are retried, then p1 is ejected; the backup takes over.
    let m = count_instances(d.addr(), 30, "/health", &[]);
    assert_eq!(m.get("bk"), Some(&30), "{m:?}");
}

#[test]
fn least_conn_avoids_the_busy_backend() {
    let b: Vec<Demo> = (1..=2).map(|i| demo(drove(), &format!("b{i}"))).collect();
    let addrs: Vec<_> = b.iter().map(|d| d.addr).collect();
    let d = Drove::up(
        drove(),
        &static_config(&addrs, "algorithm = \"least_conn\""),
    );
    // Hold 3 slow requests: least_conn puts them 2/1; then every quick request goes to
    // the backend with fewer in flight.
    let addr = d.addr();
    let slow: Vec<_> = (0..3)
        .map(|_| std::thread::spawn(move || http::get(addr, "/slow?ms=1500").unwrap()))
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let status = d.status();
    let inflight: Vec<u64> = status.backends().iter().map(|b| b.in_flight).collect();
    assert_eq!(
        inflight.iter().sum::<u64>(),
        3,
        "exact in-flight counts: {inflight:?}"
    );
    let busy = if inflight[0] > inflight[1] { 0 } else { 1 };
    let m = count_instances(addr, 20, "/health", &[]);
    assert_eq!(
        m.get(&addrs[1 - busy].to_string()),
        Some(&20),
        "{m:?} in flight {inflight:?}"
    );
    for t in slow {
        assert_eq!(t.join().unwrap().status, 200);
    }
}

#[test]
fn hash_on_a_header_is_consistent_and_ip_hash_pins_a_client() {
    let b = three();
    let addrs: Vec<_> = b.iter().map(|d| d.addr).collect();
    let d = Drove::up(
        drove(),
        &static_config(&addrs, "algorithm = \"hash\"\nhash_key = \"header:X-User\""),
    );
    let mut owners = BTreeMap::new();
    for u in 0..60 {
        let user = format!("user-{u}");
        let m = count_instances(d.addr(), 5, "/health", &[("X-User", &user)]);
        assert_eq!(m.len(), 1, "one user, one backend: {m:?}");
        owners.insert(user, m.keys().next().unwrap().clone());
    }
    let spread: std::collections::BTreeSet<_> = owners.values().collect();
    assert_eq!(spread.len(), 3, "60 keys reach all 3 backends");
    drop(d);

    let d = Drove::up(drove(), &static_config(&addrs, "algorithm = \"ip_hash\""));
    let m = count_instances(d.addr(), 30, "/health", &[]);
    assert_eq!(m.len(), 1, "one client IP, one backend: {m:?}");
}

#[test]
fn p2c_and_random_two_use_every_backend() {
    let b = three();
    let addrs: Vec<_> = b.iter().map(|d| d.addr).collect();
    // random_two on idle equal backends is a coin toss between two: roughly even.
    let d = Drove::up(
        drove(),
        &static_config(&addrs, "algorithm = \"random_two\""),
    );
    let m = count_instances(d.addr(), 300, "/health", &[]);
    assert_eq!(m.len(), 3, "{m:?}");
    for n in m.values() {
        assert!(*n >= 60, "random_two: {m:?}");
    }
    drop(d);
    // p2c_ewma prefers the fastest; under concurrent load the in-flight term spreads
    // requests over every backend.
    let d = Drove::up(drove(), &static_config(&addrs, "algorithm = \"p2c_ewma\""));
    let mut spec = drove_test_support::load::LoadSpec::get(d.addr(), "/slow?ms=5", 12);
    spec.pause = Duration::ZERO;
    let load = drove_test_support::load::Load::start(spec);
    std::thread::sleep(Duration::from_millis(1500));
    let s = load.stop();
    assert_eq!(s.failed, 0);
    assert_eq!(s.per_instance.len(), 3, "{:?}", s.per_instance);
    for n in s.per_instance.values() {
        assert!(
            *n * 20 >= s.ok,
            "p2c_ewma starves a backend: {:?}",
            s.per_instance
        );
    }
}

#[test]
fn sticky_cookie_pins_and_falls_back_when_drained() {
    let b = three();
    let addrs: Vec<_> = b.iter().map(|d| d.addr).collect();
    let d = Drove::up(
        drove(),
        &static_config(&addrs, "sticky = { cookie = \"drove_sticky\" }"),
    );
    let first = http::get(d.addr(), "/health").unwrap();
    let set = first
        .header("set-cookie")
        .expect("a sticky cookie is set")
        .to_string();
    let cookie = set.split(';').next().unwrap().to_string();
    let pinned = first.header("x-drove-instance").unwrap().to_string();
    let m = count_instances(d.addr(), 50, "/health", &[("Cookie", &cookie)]);
    assert_eq!(m.get(&pinned), Some(&50), "{m:?}");
    // A pinned client does not get the cookie again.
    let again = http::request(d.addr(), "GET", "/health", &[("Cookie", &cookie)], b"").unwrap();
    assert!(again.header("set-cookie").is_none());
    // Drain the pinned backend: the client moves, and gets a new cookie.
    let r = d.post("/api/drain", &serde_json::json!({ "instance": pinned }));
    assert_eq!(r.status, 200, "{}", r.text());
    let moved = http::request(d.addr(), "GET", "/health", &[("Cookie", &cookie)], b"").unwrap();
    assert_eq!(moved.status, 200);
    assert_ne!(moved.header("x-drove-instance").unwrap(), pinned);
    assert!(moved.header("set-cookie").is_some());
    // Garbage cookies fall back cleanly.
    let g = http::request(
        d.addr(),
        "GET",
        "/health",
        &[("Cookie", "drove_sticky=zzz")],
        b"",
    )
    .unwrap();
    assert_eq!(g.status, 200);
}

#[test]
fn forwarded_headers_request_id_and_hop_by_hop() {
    let b = three();
    let addrs: Vec<_> = b.iter().map(|d| d.addr).collect();
    let d = Drove::up(drove(), &static_config(&addrs, ""));
    let r = http::request(
        d.addr(),
        "GET",
        "/echo/headers",
        &[
            ("X-Forwarded-For", "6.6.6.6"),
            ("X-Real-IP", "6.6.6.6"),
            ("Connection", "keep-alive, X-Secret"),
            ("X-Secret", "hop"),
            ("Keep-Alive", "timeout=5"),
            ("Proxy-Connection", "keep-alive"),
        ],
        b"",
    )
    .unwrap();
    let h = r.json();
    // An untrusted client cannot spoof its address.
    assert_eq!(h["x-forwarded-for"], "127.0.0.1", "{h}");
    assert_eq!(h["x-real-ip"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], "test");
    assert!(
        h.get("x-secret").is_none(),
        "headers named by Connection are stripped: {h}"
    );
    assert!(h.get("keep-alive").is_none());
    assert!(h.get("proxy-connection").is_none());
    let rid = h["x-request-id"]
        .as_str()
        .expect("a request id is generated");
    assert_eq!(rid.len(), 16);
    assert_eq!(
        r.header("x-request-id"),
        Some(rid),
        "the client sees the same id"
    );
    // A client's id is propagated.
    let r = http::request(
        d.addr(),
        "GET",
        "/echo/headers",
        &[("X-Request-Id", "abc-123")],
        b"",
    )
    .unwrap();
    assert_eq!(r.json()["x-request-id"], "abc-123");
    drop(d);

    // From a trusted proxy, X-Forwarded-For is kept and extended.
    let d = Drove::up(
        drove(),
        &static_config(&addrs, "trusted_proxies = [\"127.0.0.0/8\"]"),
    );
    let r = http::request(
        d.addr(),
        "GET",
        "/echo/headers",
        &[("X-Forwarded-For", "6.6.6.6")],
        b"",
    )
    .unwrap();
    let h = r.json();
    assert_eq!(h["x-forwarded-for"], "6.6.6.6, 127.0.0.1", "{h}");
    assert_eq!(h["x-real-ip"], "6.6.6.6");
}

#[test]
fn bodies_stream_both_ways() {
    let b = three();
    let addrs: Vec<_> = b.iter().map(|d| d.addr).collect();
    let d = Drove::up(drove(), &static_config(&addrs, ""));
    let body: Vec<u8> = (0..4 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    let mut c = Conn::open(d.addr(), Duration::from_secs(10)).unwrap();
    for _ in 0..3 {
        let r = c
            .request(
                "POST",
                "/echo",
                &[("Content-Type", "application/octet-stream")],
                &body,
            )
            .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.body.len(), body.len());
        assert!(r.body == body, "echoed body differs");
    }
    // Chunked request body.
    c.send_raw(b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
        .unwrap();
    let r = c.read_response(false).unwrap();
    assert_eq!(r.text(), "hello world");
}

#[test]
fn websocket_is_tunnelled_and_counted_in_flight() {
    use std::io::{Read, Write};
    let b: Vec<Demo> = (1..=2).map(|i| demo(drove(), &format!("b{i}"))).collect();
    let addrs: Vec<_> = b.iter().map(|d| d.addr).collect();
    let d = Drove::up(
        drove(),
        &static_config(&addrs, "algorithm = \"least_conn\""),
    );
    let mut s = std::net::TcpStream::connect(d.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(
        head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{head}"
    );
    // A masked text frame "hi".
    let mask = [1u8, 2, 3, 4];
    let payload = b"hi";
    let mut frame = vec![0x81, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    s.write_all(&frame).unwrap();
    let mut resp = [0u8; 4];
    s.read_exact(&mut resp).unwrap();
    assert_eq!(resp, [0x81, 2, b'h', b'i']);
    // The tunnel counts as in flight on its backend.
    let st = d.status();
    let inflight: u64 = st.backends().iter().map(|b| b.in_flight).sum();
    assert_eq!(inflight, 1, "{st:?}");
    assert_eq!(st.balancer.as_ref().unwrap().active_tunnels, 1);
    drop(s);
    assert!(drove_test_support::wait_until(
        Duration::from_secs(5),
        || { d.balancer_status().active_tunnels == 0 }
    ));
}

/// Runs drove with an access log in `format` over three backends, sends one request
/// carrying `X-Request-Id: rid`, and returns its status and the log line that names `rid`.
fn access_log_line(format: &str, path: &str, headers: &[(&str, &str)], rid: &str) -> (u16, String) {
    let b = three();
    let addrs: Vec<_> = b.iter().map(|d| d.addr).collect();
    let dir = drove_test_support::tempdir("alog");
    let log = dir.join("access.log");
    let d = Drove::up(
        drove(),
        &static_config(
            &addrs,
            &format!(
                "access_log = \"{format}\"\naccess_log_path = \"{}\"",
                log.display()
            ),
        ),
    );
    let mut all: Vec<(&str, &str)> = headers.to_vec();
    all.push(("X-Request-Id", rid));
    let r = http::request(d.addr(), "GET", path, &all, b"").unwrap();
    assert!(drove_test_support::wait_until(
        Duration::from_secs(5),
        || {
            std::fs::read_to_string(&log)
                .map(|s| s.contains(rid))
                .unwrap_or(false)
        }
    ));
    let text = std::fs::read_to_string(&log).unwrap();
    let line = text.lines().find(|l| l.contains(rid)).unwrap().to_string();
    (r.status, line)
}

#[test]
fn json_access_log_records_upstream_and_retries() {
    let (status, line) = access_log_line("json", "/status/201", &[], "rid-1");
    assert_eq!(status, 201);
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["status"], 201);
    assert_eq!(v["upstream_status"], 201);
    assert_eq!(v["method"], "GET");
    assert_eq!(v["target"], "/status/201");
    assert_eq!(v["retries"], 0);
    assert!(v["upstream"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(v["upstream_time"].as_f64().is_some());
}

#[test]
fn sigterm_finishes_in_flight_requests_then_exits_zero() {
    let b = three();
    let addrs: Vec<_> = b.iter().map(|d| d.addr).collect();
    let d = Drove::up(drove(), &static_config(&addrs, ""));
    let addr = d.addr();
    let slow = std::thread::spawn(move || http::get(addr, "/slow?ms=1000"));
    std::thread::sleep(Duration::from_millis(200));
    let t0 = Instant::now();
    let status = d.stop();
    assert!(status.success(), "exit status {status:?}");
    let r = slow
        .join()
        .unwrap()
        .expect("the in-flight request completes");
    assert_eq!(r.status, 200);
    assert!(
        t0.elapsed() >= Duration::from_millis(500),
        "waited for the in-flight request"
    );
    // And the listener is closed.
    assert!(std::net::TcpStream::connect(addr).is_err());
}

#[test]
fn combined_access_log_line() {
    let (_, line) = access_log_line(
        "combined",
        "/whoami?x=1",
        &[("User-Agent", "curl/8")],
        "rid-c",
    );
    assert!(line.starts_with("127.0.0.1 - - ["), "{line}");
    assert!(line.contains("\"GET /whoami?x=1 HTTP/1.1\" 200 "), "{line}");
    assert!(line.contains("\"curl/8\""), "{line}");
    assert!(
        line.contains("upstream=127.0.0.1:")
            && line.contains("upstream_status=200")
            && line.contains("retries=0"),
        "{line}"
    );
}

#[test]
fn http10_expect_continue_pipelining_and_absolute_form() {
    use std::io::{Read, Write};
    let b = demo(drove(), "only");
    let d = Drove::up(drove(), &static_config(&[b.addr], ""));
    // HTTP/1.0 without keep-alive: answered as 1.0, then closed.
    let mut s = std::net::TcpStream::connect(d.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /whoami HTTP/1.0\r\n\r\n").unwrap();
    let mut all = Vec::new();
    s.read_to_end(&mut all).unwrap();
    let text = String::from_utf8_lossy(&all);
    assert!(text.starts_with("HTTP/1.0 200"), "{text}");
    assert!(text.contains("\"instance\":\"only\""), "{text}");
    // A chunked response reaches an HTTP/1.0 client de-chunked.
    let mut s = std::net::TcpStream::connect(d.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"POST /echo HTTP/1.0\r\nContent-Length: 5\r\n\r\nhello")
        .unwrap();
    let mut all = Vec::new();
    s.read_to_end(&mut all).unwrap();
    let text = String::from_utf8_lossy(&all);
    assert!(text.ends_with("\r\n\r\nhello"), "{text}");

    // Expect: 100-continue: drove says 100 before the body is sent.
    let mut s = std::net::TcpStream::connect(d.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n",
    )
    .unwrap();
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"HTTP/1.1 100 Continue\r\n\r\n");
    s.write_all(b"abc").unwrap();
    let mut resp = Vec::new();
    while !String::from_utf8_lossy(&resp).ends_with("abc") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0);
        resp.extend_from_slice(&buf[..n]);
    }
    assert!(String::from_utf8_lossy(&resp).starts_with("HTTP/1.1 200"));

    // Pipelined requests are answered in order on one connection.
    let mut c = http::Conn::open(d.addr(), Duration::from_secs(5)).unwrap();
    c.send_raw(b"GET /status/201 HTTP/1.1\r\nHost: t\r\n\r\nGET /status/202 HTTP/1.1\r\nHost: t\r\n\r\nGET /status/203 HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    for want in [201, 202, 203] {
        assert_eq!(c.read_response(false).unwrap().status, want);
    }
    // Absolute-form targets reach the backend in origin-form.
    let r = http::raw(
        d.addr(),
        b"GET http://example.test/echo/headers HTTP/1.1\r\nHost: example.test\r\n\r\n",
    )
    .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["host"], "example.test");
    // HEAD gets the headers without a body, and the connection stays usable.
    let mut c = http::Conn::open(d.addr(), Duration::from_secs(5)).unwrap();
    let h = c.request("HEAD", "/whoami", &[], b"").unwrap();
    assert_eq!(h.status, 200);
    assert!(h.body.is_empty());
    assert_eq!(c.request("GET", "/health", &[], b"").unwrap().status, 200);
}

#[test]
fn rate_limits_answer_429_with_retry_after_on_their_routes_only() {
    let b = demo(drove(), "only");
    let cfg = format!(
        "{}\n[[balancer.routes]]\npath = \"/whoami\"\nlimit = \"strict\"\n\n[[balancer.routes]]\npath = \"/status/\"\nlimit = \"per_key\"\n\n[limits.strict]\nkey = \"client_ip\"\nrate = \"10/s\"\nburst = 5\n\n[limits.per_key]\nkey = \"header:X-API-Key\"\nrate = \"1/m\"\nburst = 2\n",
        static_config(&[b.addr], "")
    );
    let d = Drove::up(drove(), &cfg);
    let mut c = Conn::open(d.addr(), Duration::from_secs(5)).unwrap();
    let mut ok = 0;
    let mut limited = 0;
    for _ in 0..20 {
        let r = c.request("GET", "/whoami", &[], b"").unwrap();
        match r.status {
            200 => ok += 1,
            429 => {
                limited += 1;
                assert_eq!(r.header("retry-after"), Some("1"));
            }
            s => panic!("status {s}"),
        }
    }
    // A burst of 5 passes at once (plus at most one more interval while the loop runs).
    assert!((5..=7).contains(&ok), "{ok} passed, {limited} limited");
    // Other paths are not limited, on the same connection.
    for _ in 0..20 {
        assert_eq!(c.request("GET", "/health", &[], b"").unwrap().status, 200);
    }
    // Per-key limits: each API key has its own bucket.
    for key in ["a", "b"] {
        let codes: Vec<u16> = (0..3)
            .map(|_| {
                c.request("GET", "/status/204", &[("X-API-Key", key)], b"")
                    .unwrap()
                    .status
            })
            .collect();
        assert_eq!(codes, [204, 204, 429], "key {key}");
    }
    assert_eq!(d.balancer_status().rate_limited, limited + 2);
    // And the limit refills: after 100 ms one more passes.
    std::thread::sleep(Duration::from_millis(250));
    assert_eq!(c.request("GET", "/whoami", &[], b"").unwrap().status, 200);
}

/// `drove_balancer_connections` (client connections accepted) from `/metrics`.
fn accepted(d: &Drove) -> u64 {
    let m = http::get(d.admin, "/metrics").unwrap().text();
    m.lines()
        .find_map(|l| l.strip_prefix("drove_balancer_connections_total "))
        .unwrap_or_else(|| panic!("no drove_balancer_connections_total in\n{m}"))
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn deferred_accept_takes_a_connection_once_its_request_arrives() {
    use std::io::{Read, Write};
    let b = demo(drove(), "only");
    let extra = "timeouts = { header = \"1s\", idle = \"1s\" }";

    // Default (defer_accept = true): a silent connection is not handed to drove...
    let d = Drove::up(drove(), &crate::static_config(&[b.addr], extra));
    let before = accepted(&d);
    let mut s = std::net::TcpStream::connect(d.addr()).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        accepted(&d),
        before,
        "a silent connection was accepted at once"
    );
    // ...until its request arrives, which is then answered normally.
    s.write_all(b"GET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert_eq!(accepted(&d), before + 1);
    // A client that never speaks is still accepted after about a second (the kernel
    // stops deferring) and then closed by the header timeout: it is not held forever.
    let mut s = std::net::TcpStream::connect(d.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let t0 = Instant::now();
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).unwrap_or(0);
    let took = t0.elapsed();
    assert_eq!(n, 0, "a silent connection got bytes");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(6),
        "a silent connection was closed after {took:?}"
    );
    assert_eq!(accepted(&d), before + 2);
    d.stop();

    // defer_accept = false: accepted as soon as the handshake completes.
    let d = Drove::up(
        drove(),
        &crate::static_config(&[b.addr], &format!("{extra}\ndefer_accept = false")),
    );
    let before = accepted(&d);
    let _s = std::net::TcpStream::connect(d.addr()).unwrap();
    assert!(
        drove_test_support::wait_until(Duration::from_secs(1), || accepted(&d) == before + 1),
        "without defer_accept a connection is accepted at once"
    );
}

/// Requests through `d` to /whoami: (passed, refused with 429). Anything else fails.
fn limited_burst(d: &Drove, n: usize) -> (u32, u32) {
    let mut c = Conn::open(d.addr(), Duration::from_secs(5)).unwrap();
    let (mut ok, mut limited) = (0, 0);
    for _ in 0..n {
        match c.request("GET", "/whoami", &[], b"").unwrap().status {
            200 => ok += 1,
            429 => limited += 1,
            s => panic!("status {s}"),
        }
    }
    (ok, limited)
}

#[test]
fn a_limit_shared_through_redis_holds_across_two_droves_and_survives_redis_going_away() {
    let port = drove_test_support::free_port();
    let mut redis = std::process::Command::new("redis-server");
    redis.args([
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
    ]);
    let redis = drove_test_support::Proc::spawn(redis);
    assert!(drove_test_support::wait_until(
        Duration::from_secs(10),
        || { std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() }
    ));
    let b = demo(drove(), "only");
    let cfg = format!(
        "{}\n[[balancer.routes]]\npath = \"/whoami\"\nlimit = \"api\"\n\n[limits.api]\nrate = \"1/m\"\nburst = 4\nredis = \"redis://127.0.0.1:{port}/\"\n",
        static_config(&[b.addr], "")
    );
    let d1 = Drove::up(drove(), &cfg);
    let d2 = Drove::up(drove(), &cfg);
    // One budget of 4 for both: each alone would let 4 through.
    let (ok1, _) = limited_burst(&d1, 3);
    let (ok2, limited2) = limited_burst(&d2, 6);
    assert_eq!(ok1, 3);
    assert_eq!(
        (ok2, limited2),
        (1, 5),
        "d2 saw d1's requests in the shared state"
    );
    let (ok1, _) = limited_burst(&d1, 4);
    assert_eq!(ok1, 0, "the shared budget is spent for d1 too");

    // Redis goes away: each drove enforces the limit on its own (a fresh local budget of
    // 4), answering at once rather than hanging or refusing everything.
    drop(redis);
    let t0 = std::time::Instant::now();
    let (ok1, limited1) = limited_burst(&d1, 8);
    assert_eq!((ok1, limited1), (4, 4), "per-process fallback");
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    let metrics = http::get(d1.admin, "/metrics").unwrap().text();
    let fallbacks: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("drove_limit_redis_fallbacks_total{limit=\"api\"} "))
        .unwrap_or_else(|| panic!("no fallback counter in\n{metrics}"))
        .trim()
        .parse()
        .unwrap();
    assert_eq!(
        fallbacks, 8,
        "every check after Redis left was decided locally"
    );
}

#[test]
fn reload_replaces_fixed_backends_and_applies_the_algorithm() {
    let b = three();
    let d = Drove::up(drove(), &static_config(&[b[0].addr], ""));
    let seen = count_instances(d.addr(), 6, "/whoami", &[]);
    assert_eq!(
        seen.keys().collect::<Vec<_>>(),
        vec![&b[0].addr.to_string()]
    );

    std::fs::write(&d.config, static_config(&[b[1].addr, b[2].addr], "")).unwrap();
    let out = d.cli_ok(&["reload"]);
    assert!(
        out.contains("applied balancer.backends: 2 fixed, 0 DNS entries"),
        "{out}"
    );
    let seen = count_instances(d.addr(), 6, "/whoami", &[]);
    let want: std::collections::BTreeSet<String> =
        b[1..].iter().map(|x| x.addr.to_string()).collect();
    assert_eq!(
        seen.keys()
            .cloned()
            .collect::<std::collections::BTreeSet<_>>(),
        want
    );

    // Every other key applies live too (tests/e2e/reload.rs shows each one's effect).
    std::fs::write(
        &d.config,
        static_config(&[b[1].addr, b[2].addr], "algorithm = \"least_conn\""),
    )
    .unwrap();
    let out = d.cli_ok(&["reload"]);
    assert!(out.contains("applied balancer.algorithm"), "{out}");
    assert!(!out.contains("NOT applied"), "{out}");
    assert_eq!(d.status().balancer.unwrap().algorithm, "least_conn");
}
