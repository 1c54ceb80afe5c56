//! Integration tests of the demo app: real sockets, a real `redis-server` when available.

use std::io;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use drove_demo::DemoOptions;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::{timeout, Instant};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

// ---------------------------------------------------------------------------------------
// Harness

struct TestServer {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<io::Result<()>>,
}

async fn start(opts: DemoOptions) -> TestServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(drove_demo::run(listener, opts, async {
        let _ = stopped.await;
    }));
    TestServer {
        addr,
        stop: Some(stop),
        task,
    }
}

fn named(instance: &str) -> DemoOptions {
    DemoOptions {
        instance: instance.to_owned(),
        instance_id: instance.rsplit_once('.').map(|(_, k)| k.to_owned()),
        ..DemoOptions::default()
    }
}

impl TestServer {
    fn begin_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Signals shutdown and waits for `run` to return; returns how long that took.
    async fn shutdown(mut self) -> Duration {
        let started = Instant::now();
        self.begin_shutdown();
        timeout(Duration::from_secs(20), self.task)
            .await
            .expect("run did not return after shutdown")
            .unwrap()
            .unwrap();
        started.elapsed()
    }
}

struct Resp {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }
}

/// One request on a fresh connection.
async fn send(addr: SocketAddr, req: Request<Full<Bytes>>) -> Resp {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let resp = timeout(Duration::from_secs(30), sender.send_request(req))
        .await
        .expect("request timed out")
        .unwrap();
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Resp {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

fn request(method: Method, path: &str) -> http::request::Builder {
    Request::builder()
        .method(method)
        .uri(path)
        .header("host", "demo.test")
}

async fn get(addr: SocketAddr, path: &str) -> Resp {
    send(
        addr,
        request(Method::GET, path).body(Full::default()).unwrap(),
    )
    .await
}

async fn get_with_cookie(addr: SocketAddr, path: &str, cookie: &str) -> Resp {
    let req = request(Method::GET, path)
        .header("cookie", cookie)
        .body(Full::default())
        .unwrap();
    send(addr, req).await
}

fn session_cookie(resp: &Resp) -> String {
    let set = resp
        .header("set-cookie")
        .expect("set-cookie on a new session");
    set.split(';').next().unwrap().to_owned()
}

/// Reads one HTTP/1.1 response with a content-length from a raw stream.
async fn read_raw_response(stream: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&buf).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().unwrap())
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + length {
                return text;
            }
        }
        let n = timeout(Duration::from_secs(5), stream.read(&mut chunk))
            .await
            .expect("response timed out")
            .unwrap();
        assert!(n > 0, "connection closed mid-response: {text:?}");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A `redis-server` on a free port, killed (by PID) when dropped, panics included.
struct RedisServer {
    child: Child,
    port: u16,
}

impl RedisServer {
    /// `None` (with a note) when `redis-server` is not installed.
    async fn start(port: Option<u16>) -> Option<Self> {
        let port = match port {
            Some(port) => port,
            None => free_port().await,
        };
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let child = match child {
            Ok(child) => child,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                eprintln!("NOTE: redis-server not on PATH; skipping the Redis part of this test");
                return None;
            }
            Err(e) => panic!("cannot start redis-server: {e}"),
        };
        let server = Self { child, port };
        server.wait_ready().await;
        Some(server)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)).await {
                let mut reply = [0u8; 7];
                if s.write_all(b"PING\r\n").await.is_ok()
                    && s.read_exact(&mut reply).await.is_ok()
                    && &reply == b"+PONG\r\n"
                {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "redis-server did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn stop(mut self) {
        self.kill();
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap().port()
}

// ---------------------------------------------------------------------------------------
// Endpoints

#[tokio::test]
async fn identity_health_and_not_found() {
    let server = start(named("web.2")).await;
    let addr = server.addr;

    let index = get(addr, "/").await;
    assert_eq!(index.status, StatusCode::OK);
    assert!(index
        .header("content-type")
        .unwrap()
        .starts_with("text/html"));
    let page = String::from_utf8(index.body.to_vec()).unwrap();
    let expected = format!(
        "drove demo \u{2014} instance web.2 (pid {}, port {})",
        std::process::id(),
        addr.port()
    );
    assert!(page.contains(&expected), "{page}");

    let health = get(addr, "/health").await;
    assert_eq!(health.status, StatusCode::OK);
    assert_eq!(health.header("content-type"), Some("application/json"));
    let h = health.json();
    assert_eq!(h["status"], "ok");
    assert_eq!(h["instance"], "web.2");
    assert_eq!(h["instance_id"], "2");
    assert_eq!(h["pid"], std::process::id());
    assert_eq!(h["port"], addr.port());
    assert_eq!(h["sessions"], "memory");
    // This very request is in flight, on a connection that is open.
    assert_eq!(h["in_flight"], 1, "{h}");
    assert!(h["connections"].as_u64().unwrap() >= 1, "{h}");
    assert!(h["requests"].as_u64().unwrap() >= 2);

    let who = get(addr, "/whoami").await.json();
    assert_eq!(who["instance"], "web.2");
    assert_eq!(who["pid"], std::process::id());
    assert_eq!(who["port"], addr.port());
    assert!(who["uptime_ms"].is_u64());

    let missing = get(addr, "/nope").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert!(missing.json()["error"].is_string());

    for resp in [&index, &health, &missing] {
        assert_eq!(resp.header("x-demo-instance"), Some("web.2"));
    }
    server.shutdown().await;
}

#[tokio::test]
async fn ready_flips_after_delay() {
    let server = start(DemoOptions {
        ready_delay: Duration::from_millis(400),
        ..named("web.1")
    })
    .await;
    for path in ["/ready", "/health/ready", "/health"] {
        let not_yet = get(server.addr, path).await;
        assert_eq!(not_yet.status, StatusCode::SERVICE_UNAVAILABLE, "{path}");
        assert_eq!(not_yet.json()["status"], "starting", "{path}");
        assert_eq!(not_yet.header("x-demo-instance"), Some("web.1"));
    }
    // Liveness does not wait for readiness.
    let live = get(server.addr, "/health/live").await;
    assert_eq!(live.status, StatusCode::OK);
    assert_eq!(live.json()["status"], "alive");
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (path, status) in [
        ("/ready", "ready"),
        ("/health/ready", "ready"),
        ("/health", "ok"),
    ] {
        let ready = get(server.addr, path).await;
        assert_eq!(ready.status, StatusCode::OK, "{path}");
        assert_eq!(ready.json()["status"], status, "{path}");
    }
    server.shutdown().await;
}

#[tokio::test]
async fn status_codes() {
    let server = start(named("s")).await;
    let teapot = get(server.addr, "/status/418").await;
    assert_eq!(teapot.status, StatusCode::IM_A_TEAPOT);
    assert_eq!(teapot.json()["status"], 418);
    assert_eq!(teapot.header("x-demo-instance"), Some("s"));
    assert_eq!(get(server.addr, "/status/503").await.status, 503);
    let no_content = get(server.addr, "/status/204").await;
    assert_eq!(no_content.status, StatusCode::NO_CONTENT);
    assert!(no_content.body.is_empty());
    for bad in [
        "/status/99",
        "/status/100",
        "/status/600",
        "/status/abc",
        "/status/",
    ] {
        let resp = get(server.addr, bad).await;
        assert_eq!(resp.status, StatusCode::BAD_REQUEST, "{bad}");
        assert!(resp.json()["error"].is_string());
    }
    server.shutdown().await;
}

#[tokio::test]
async fn slow_sleeps_and_validates() {
    let server = start(named("s")).await;
    let started = Instant::now();
    let resp = get(server.addr, "/slow?ms=200").await;
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(resp.json(), serde_json::json!({"slept_ms": 200}));
    assert_eq!(get(server.addr, "/slow?ms=soon").await.status, 400);
    assert_eq!(get(server.addr, "/slow?ms=-5").await.status, 400);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_burns_cpu_without_blocking_other_requests() {
    let server = start(named("s")).await;
    let addr = server.addr;
    let busy = tokio::spawn(async move {
        let started = Instant::now();
        let resp = get(addr, "/work?cpu_ms=300").await;
        (resp.status, resp.json(), started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = Instant::now();
    assert_eq!(get(addr, "/health").await.status, StatusCode::OK);
    assert!(
        started.elapsed() < Duration::from_millis(200),
        "health waited for /work"
    );
    let (status, body, took) = busy.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["cpu_ms"], 300);
    assert!(took >= Duration::from_millis(300));
    assert_eq!(get(addr, "/work?cpu_ms=x").await.status, 400);
    server.shutdown().await;
}

fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[tokio::test]
async fn leak_keeps_memory() {
    let server = start(named("s")).await;
    let before = rss_kib();
    let first = get(server.addr, "/leak?mb=8").await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.json()["leaked_mb"], 8);
    let second = get(server.addr, "/leak?mb=4").await.json();
    assert_eq!(second["leaked_mb"], 12);
    if let (Some(before), Some(after)) = (before, rss_kib()) {
        assert!(
            after >= before + 10 * 1024,
            "RSS {before} KiB -> {after} KiB"
        );
    }
    assert_eq!(get(server.addr, "/leak?mb=big").await.status, 400);
    assert_eq!(get(server.addr, "/leak?mb=100000").await.status, 400);
    server.shutdown().await;
}

#[tokio::test]
async fn echo_streams_body_and_headers() {
    let server = start(named("e")).await;
    // Larger than any socket buffer, so the echo must stream while reading.
    let body: Vec<u8> = (0..8 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let req = request(Method::POST, "/echo")
        .header("content-type", "application/x-test")
        .body(Full::new(Bytes::from(body.clone())))
        .unwrap();
    let resp = send(server.addr, req).await;
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(resp.header("content-type"), Some("application/x-test"));
    assert_eq!(resp.header("x-demo-instance"), Some("e"));
    assert!(resp.body == body, "echoed body differs");

    let get_echo = get(server.addr, "/echo").await;
    assert_eq!(get_echo.status, StatusCode::METHOD_NOT_ALLOWED);

    let req = request(Method::GET, "/echo/headers")
        .header("x-forwarded-for", "203.0.113.7")
        .header("x-request-id", "abc-123")
        .header("x-multi", "1")
        .header("x-multi", "2")
        .body(Full::default())
        .unwrap();
    let headers = send(server.addr, req).await.json();
    assert_eq!(headers["x-forwarded-for"], "203.0.113.7");
    assert_eq!(headers["x-request-id"], "abc-123");
    assert_eq!(headers["host"], "demo.test");
    assert_eq!(headers["x-multi"], serde_json::json!(["1", "2"]));
    server.shutdown().await;
}

#[tokio::test]
async fn count_and_stats() {
    let server = start(named("c")).await;
    for size in [0usize, 10, 100_000] {
        let req = request(Method::POST, "/count")
            .body(Full::new(Bytes::from(vec![b'x'; size])))
            .unwrap();
        let resp = send(server.addr, req).await;
        assert_eq!(resp.status, StatusCode::OK);
        assert_eq!(
            resp.json(),
            serde_json::json!({"bytes": size, "instance": "c"})
        );
    }
    assert_eq!(get(server.addr, "/count").await.status, 405);
    let stats = get(server.addr, "/stats").await.json();
    assert_eq!(stats["post_count"], 3);
    // 3 POST + 1 GET /count + this /stats.
    assert_eq!(stats["requests"], 5);
    server.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// Sessions

#[tokio::test]
async fn session_counts_in_memory() {
    let server = start(named("m")).await;
    let first = get(server.addr, "/session").await;
    assert_eq!(first.status, StatusCode::OK);
    let cookie = session_cookie(&first);
    assert!(cookie.starts_with("demo_session="));
    let body = first.json();
    assert_eq!(body["count"], 1);
    assert_eq!(body["store"], "memory");
    assert_eq!(body["instance"], "m");
    assert_eq!(
        format!("demo_session={}", body["session"].as_str().unwrap()),
        cookie
    );

    for expected in 2..=4 {
        let resp = get_with_cookie(server.addr, "/session", &cookie).await;
        assert!(resp.header("set-cookie").is_none());
        assert_eq!(resp.json()["count"], expected);
    }
    // Another client, another counter.
    assert_eq!(get(server.addr, "/session").await.json()["count"], 1);
    // Memory sessions are per instance.
    let other = start(named("m2")).await;
    assert_eq!(
        get_with_cookie(other.addr, "/session", &cookie)
            .await
            .json()["count"],
        1
    );
    other.shutdown().await;
    server.shutdown().await;
}

fn with_redis(instance: &str, url: &str) -> DemoOptions {
    DemoOptions {
        redis_url: Some(url.to_owned()),
        ..named(instance)
    }
}

#[tokio::test]
async fn session_shared_through_redis_and_reconnects() {
    let Some(redis) = RedisServer::start(None).await else {
        return;
    };
    let url = redis.url();
    let a = start(with_redis("web.1", &url)).await;
    let b = start(with_redis("web.2", &url)).await;

    let first = get(a.addr, "/session").await;
    assert_eq!(first.status, StatusCode::OK, "{:?}", first.body);
    let cookie = session_cookie(&first);
    let id = first.json()["session"].as_str().unwrap().to_owned();
    assert_eq!(first.json()["store"], "redis");
    for n in 2..=6 {
        let target = if n % 2 == 0 { b.addr } else { a.addr };
        let resp = get_with_cookie(target, "/session", &cookie).await.json();
        assert_eq!(resp["count"], n);
        assert_eq!(resp["instance"], if n % 2 == 0 { "web.2" } else { "web.1" });
    }

    // The key is the documented one, with a TTL of at most an hour.
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let key = format!("drove:demo:session:{id}");
    let (count, ttl): (u64, i64) = redis::pipe()
        .get(&key)
        .ttl(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(count, 6);
    assert!(ttl > 0 && ttl <= 3600, "ttl {ttl}");
    drop(conn);

    // Redis goes away: a quick 503, on both the established connection and new ones.
    let port = redis.port;
    redis.stop();
    for _ in 0..2 {
        let started = Instant::now();
        let resp = get_with_cookie(a.addr, "/session", &cookie).await;
        assert_eq!(resp.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(resp.json()["error"].is_string());
        assert!(started.elapsed() < Duration::from_millis(1500));
    }

    // Redis is back (empty): the demo reconnects by itself.
    let _redis = RedisServer::start(Some(port)).await.unwrap();
    let resp = get_with_cookie(a.addr, "/session", &cookie).await;
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(resp.json()["count"], 1);
    assert_eq!(
        get_with_cookie(b.addr, "/session", &cookie).await.json()["count"],
        2
    );

    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn session_redis_refused_gives_quick_503() {
    // A port nobody listens on.
    let port = free_port().await;
    let server = start(with_redis("r", &format!("redis://127.0.0.1:{port}/"))).await;
    let started = Instant::now();
    let resp = get(server.addr, "/session").await;
    assert_eq!(resp.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(resp.json()["store"], "redis");
    assert_eq!(resp.header("x-demo-instance"), Some("r"));
    assert!(started.elapsed() < Duration::from_millis(1500));
    server.shutdown().await;
}

#[tokio::test]
async fn session_redis_black_hole_times_out() {
    // Accepts TCP connections (kernel backlog) but never answers.
    let hole = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("redis://{}/", hole.local_addr().unwrap());
    let server = start(with_redis("r", &url)).await;
    for _ in 0..2 {
        let started = Instant::now();
        let resp = get(server.addr, "/session").await;
        let took = started.elapsed();
        assert_eq!(resp.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(took >= Duration::from_millis(900), "{took:?}");
        assert!(took < Duration::from_millis(2000), "{took:?}");
    }
    server.shutdown().await;
    drop(hole);
}

// ---------------------------------------------------------------------------------------
// WebSocket

async fn ws_connect(addr: SocketAddr) -> tokio_tungstenite::WebSocketStream<TcpStream> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (ws, resp) = tokio_tungstenite::client_async(format!("ws://{addr}/ws"), stream)
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(resp.headers()["x-demo-instance"], "w");
    ws
}

#[tokio::test]
async fn websocket_echo() {
    let server = start(named("w")).await;
    let mut ws = ws_connect(server.addr).await;

    ws.send(Message::Text("hello".into())).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::Text("hello".into())
    );
    let blob: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
    ws.send(Message::Binary(blob.clone())).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::Binary(blob));
    ws.send(Message::Ping(b"p".to_vec())).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::Pong(b"p".to_vec())
    );

    ws.close(None).await.unwrap();
    let reply = timeout(Duration::from_secs(2), ws.next()).await.unwrap();
    assert!(
        matches!(reply, Some(Ok(Message::Close(_))) | None),
        "{reply:?}"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn websocket_rejects_malformed_handshakes() {
    let server = start(named("w")).await;
    // A plain GET.
    let plain = get(server.addr, "/ws").await;
    assert_eq!(plain.status, StatusCode::BAD_REQUEST);
    assert_eq!(plain.header("x-demo-instance"), Some("w"));

    let upgrade = |key: &str, version: &str| {
        request(Method::GET, "/ws")
            .header("connection", "Upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-key", key)
            .header("sec-websocket-version", version)
            .body(Full::default())
            .unwrap()
    };
    let bad_key = send(server.addr, upgrade("not-a-key", "13")).await;
    assert_eq!(bad_key.status, StatusCode::BAD_REQUEST);
    let old = send(server.addr, upgrade("dGhlIHNhbXBsZSBub25jZQ==", "8")).await;
    assert_eq!(old.status, StatusCode::UPGRADE_REQUIRED);
    assert_eq!(old.header("sec-websocket-version"), Some("13"));
    server.shutdown().await;
}

#[tokio::test]
async fn websocket_closed_with_going_away_on_shutdown() {
    let mut server = start(named("w")).await;
    let mut ws = ws_connect(server.addr).await;
    ws.send(Message::Text("x".into())).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::Text("x".into()));
    server.begin_shutdown();
    let msg = timeout(Duration::from_secs(2), ws.next()).await.unwrap();
    match msg {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(frame.code, CloseCode::Away),
        other => panic!("expected close 1001, got {other:?}"),
    }
    // Our close reply lets the server finish at once rather than after the grace.
    let _ = timeout(Duration::from_secs(2), ws.next()).await;
    assert!(server.shutdown().await < Duration::from_secs(2));
}

// ---------------------------------------------------------------------------------------
// Robustness and shutdown

#[tokio::test]
async fn malformed_request_gets_400_and_server_keeps_serving() {
    let server = start(named("x")).await;
    for garbage in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        b"GET /\x01 HTTP/1.1\r\nHost: x\r\n\r\n",
    ] {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        stream.write_all(garbage).await.unwrap();
        let mut reply = Vec::new();
        timeout(Duration::from_secs(5), stream.read_to_end(&mut reply))
            .await
            .expect("server did not close a malformed connection")
            .unwrap();
        let reply = String::from_utf8_lossy(&reply);
        assert!(
            reply.starts_with("HTTP/1.1 400"),
            "{garbage:?} -> {reply:?}"
        );
    }
    assert_eq!(get(server.addr, "/health").await.status, StatusCode::OK);
    server.shutdown().await;
}

#[tokio::test]
async fn keep_alive_serves_several_requests() {
    let server = start(named("k")).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    for _ in 0..3 {
        stream
            .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let resp = read_raw_response(&mut stream).await;
        assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    }
    server.shutdown().await;
}

#[tokio::test]
async fn graceful_shutdown_finishes_in_flight_and_closes_idle() {
    let mut server = start(named("g")).await;
    let addr = server.addr;

    // An idle keep-alive connection.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(read_raw_response(&mut idle)
        .await
        .starts_with("HTTP/1.1 200"));
    // A connection accepted but that never sent anything.
    let mut silent = TcpStream::connect(addr).await.unwrap();

    // A request in flight.
    let slow = tokio::spawn(async move { get(addr, "/slow?ms=700").await });
    tokio::time::sleep(Duration::from_millis(150)).await;

    let stopping = Instant::now();
    server.begin_shutdown();

    // Idle connections are closed promptly, well before the slow request ends.
    for stream in [&mut idle, &mut silent] {
        let mut buf = [0u8; 64];
        let n = timeout(Duration::from_millis(400), stream.read(&mut buf))
            .await
            .expect("idle connection not closed on shutdown")
            .unwrap_or(0);
        assert_eq!(n, 0);
    }
    assert!(stopping.elapsed() < Duration::from_millis(400));

    // New connections are refused once the listener is gone.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(TcpStream::connect(addr).await.is_err());

    let resp = slow.await.unwrap();
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(resp.json()["slept_ms"], 700);
    let took = server.shutdown().await + stopping.elapsed();
    assert!(took < Duration::from_secs(3), "{took:?}");
}

#[tokio::test]
async fn request_arriving_during_shutdown_sees_not_ready() {
    let mut server = start(named("g")).await;
    let mut conn = TcpStream::connect(server.addr).await.unwrap();
    // Half a request head is in flight when shutdown starts; the request is still served
    // (with `Connection: close`), and readiness already reports stopping.
    conn.write_all(b"GET /ready HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    server.begin_shutdown();
    tokio::time::sleep(Duration::from_millis(100)).await;
    conn.write_all(b"\r\n").await.unwrap();
    let resp = read_raw_response(&mut conn).await;
    assert!(resp.starts_with("HTTP/1.1 503"), "{resp}");
    assert!(resp.contains("\"stopping\""), "{resp}");
    assert!(
        resp.to_ascii_lowercase().contains("connection: close"),
        "{resp}"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn while_stopping_only_liveness_says_yes() {
    let mut server = start(named("web.3")).await;
    let addr = server.addr;
    // A request in flight keeps the server in its graceful phase; three more connections
    // have sent half a request head each when shutdown starts.
    let slow = tokio::spawn(async move { get(addr, "/slow?ms=600").await });
    let mut conns = Vec::new();
    for path in ["/health/live", "/health/ready", "/health"] {
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n").as_bytes())
            .await
            .unwrap();
        conns.push((path, c));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    server.begin_shutdown();
    tokio::time::sleep(Duration::from_millis(100)).await;
    for (path, c) in &mut conns {
        c.write_all(b"\r\n").await.unwrap();
        let resp = read_raw_response(c).await;
        let (want_code, want_status) = match *path {
            "/health/live" => ("HTTP/1.1 200", "\"alive\""),
            _ => ("HTTP/1.1 503", "\"stopping\""),
        };
        assert!(resp.starts_with(want_code), "{path}: {resp}");
        assert!(resp.contains(want_status), "{path}: {resp}");
    }
    assert_eq!(slow.await.unwrap().status, StatusCode::OK);
    server.shutdown().await;
}

#[tokio::test]
async fn health_counts_requests_in_flight_and_connections() {
    let server = start(named("web.1")).await;
    let addr = server.addr;
    let slow: Vec<_> = (0..2)
        .map(|_| tokio::spawn(async move { get(addr, "/slow?ms=500").await }))
        .collect();
    tokio::time::sleep(Duration::from_millis(150)).await;
    let h = get(addr, "/health").await.json();
    assert_eq!(h["in_flight"], 3, "{h}");
    assert_eq!(h["connections"], 3, "{h}");
    for s in slow {
        assert_eq!(s.await.unwrap().status, StatusCode::OK);
    }
    let h = get(addr, "/health").await.json();
    assert_eq!(h["in_flight"], 1, "{h}");
    server.shutdown().await;
}

#[tokio::test]
async fn metrics_in_prometheus_text_format() {
    let server = start(named("web.1")).await;
    let value = |text: &str, name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {text}"))
    };
    let first = get(server.addr, "/metrics").await;
    assert_eq!(first.status, StatusCode::OK);
    assert!(first
        .header("content-type")
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let text = String::from_utf8(first.body.to_vec()).unwrap();
    for family in [
        "demo_requests_total counter",
        "demo_requests_in_flight gauge",
        "demo_connections gauge",
        "demo_uptime_seconds gauge",
    ] {
        assert!(text.contains(&format!("# TYPE {family}\n")), "{text}");
    }
    let n = value(&text, "demo_requests_total");
    assert_eq!(value(&text, "demo_requests_in_flight"), 1.0);
    get(server.addr, "/whoami").await;
    let again = get(server.addr, "/metrics").await;
    let text = String::from_utf8(again.body.to_vec()).unwrap();
    assert_eq!(value(&text, "demo_requests_total"), n + 2.0);
    server.shutdown().await;
}

#[tokio::test]
async fn shutdown_grace_bounds_the_wait() {
    let mut server = start(DemoOptions {
        shutdown_grace: Duration::from_millis(300),
        ..named("g")
    })
    .await;
    let addr = server.addr;
    let slow = tokio::spawn(async move {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = request(Method::GET, "/slow?ms=10000")
            .body(Full::<Bytes>::default())
            .unwrap();
        sender.send_request(req).await
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    server.begin_shutdown();
    let took = server.shutdown().await;
    assert!(took < Duration::from_millis(1500), "{took:?}");
    // The cut request fails rather than hanging.
    let outcome = timeout(Duration::from_secs(2), slow)
        .await
        .unwrap()
        .unwrap();
    assert!(outcome.is_err());
}

// ---------------------------------------------------------------------------------------
// `main_from_env`, in a child process (this test binary re-run with a marker variable),
// so the environment and signals are real and this process's stay untouched.

const CHILD_MARKER: &str = "DROVE_DEMO_TEST_CHILD";

#[test]
fn main_from_env_child() {
    if std::env::var_os(CHILD_MARKER).is_none() {
        return; // Only meaningful when re-run by the tests below.
    }
    let runtime = tokio::runtime::Runtime::new().unwrap();
    match runtime.block_on(drove_demo::main_from_env()) {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(3)
        }
    }
}

fn child(envs: &[(&str, &str)]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "main_from_env_child",
        "--exact",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(CHILD_MARKER, "1")
    .env_remove("PORT")
    .env_remove("HOST")
    .env_remove("DROVE_INSTANCE")
    .env_remove("INSTANCE_ID")
    .env_remove("REDIS_URL")
    .env_remove("DEMO_READY_DELAY")
    .envs(envs.iter().copied())
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    // SIGKILL by PID if the test fails before the child exits.
    .kill_on_drop(true);
    cmd
}

#[tokio::test]
async fn main_from_env_rejects_missing_or_bad_port() {
    for (envs, expected) in [
        (&[][..], "PORT is not set"),
        (&[("PORT", "eighty")][..], "not a port number"),
        (&[("PORT", "70000")][..], "not a port number"),
    ] {
        let out = timeout(Duration::from_secs(20), child(envs).output())
            .await
            .expect("child hung")
            .unwrap();
        assert_eq!(out.status.code(), Some(3), "{envs:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expected), "{envs:?}: {stderr}");
    }
}

#[tokio::test]
async fn main_from_env_serves_and_drains_on_sigterm() {
    use tokio::io::AsyncBufReadExt;

    let port = free_port().await;
    let port_text = port.to_string();
    let mut proc = child(&[
        ("PORT", &port_text),
        ("DROVE_INSTANCE", "web.7"),
        ("DEMO_READY_DELAY", "0"),
    ])
    .spawn()
    .unwrap();
    let pid = proc.id().unwrap();

    let mut lines = tokio::io::BufReader::new(proc.stdout.take().unwrap()).lines();
    let expected = format!("demo web.7 listening on 127.0.0.1:{port} (pid {pid})");
    timeout(Duration::from_secs(20), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            // libtest prints `test main_from_env_child ... ` without a newline first.
            if line.ends_with(&expected) {
                return;
            }
        }
        panic!("child exited without printing {expected:?}");
    })
    .await
    .expect("no startup line");

    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let who = get(addr, "/whoami").await.json();
    assert_eq!(who["instance"], "web.7");
    assert_eq!(who["pid"], pid);

    let slow = tokio::spawn(async move { get(addr, "/slow?ms=500").await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());

    assert_eq!(slow.await.unwrap().status, StatusCode::OK);
    let status = timeout(Duration::from_secs(5), proc.wait())
        .await
        .expect("child did not exit after SIGTERM")
        .unwrap();
    assert_eq!(status.code(), Some(0));
}
