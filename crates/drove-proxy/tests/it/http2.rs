//! HTTP/2 from clients, with the `h2` crate as the client over h2c (prior knowledge on
//! a plain listener): each stream walks the same phases as an HTTP/1.1 request to the
//! HTTP/1.1 backends. Bodies streamed both ways, concurrent streams, the announced and
//! enforced stream limit, RST_STREAM cancelling the upstream exchange, the rapid-reset
//! guard, GOAWAY on shutdown and on idle, the header list limit, retries/limits/
//! headers/access log per stream, and what becomes of trailers.

use std::future::Future;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::client::SendRequest;
use h2::RecvStream;

use crate::support::{self, hold, response, ProxyUnderTest, Script, Scripted};

/// Runs an async test body on a client runtime of its own, bounded in time. (The proxy
/// under test has its own runtime, which must be dropped outside any async context.)
pub(crate) fn client<F: Future>(limit: Duration, f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async move {
            tokio::time::timeout(limit, f)
                .await
                .expect("the test finished in time")
        })
}

/// An h2c connection (prior knowledge) to `addr`: the request handle and the task that
/// drives the connection (its result is how the connection ended).
pub(crate) async fn connect(
    addr: SocketAddr,
) -> (
    SendRequest<Bytes>,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (send, conn) = h2::client::handshake(tcp).await.unwrap();
    (send, tokio::spawn(conn))
}

/// A request without a body for `path` on authority `t`.
pub(crate) fn req(method: &str, path: &str) -> http::Request<()> {
    http::Request::builder()
        .method(method)
        .uri(format!("http://t{path}"))
        .body(())
        .unwrap()
}

/// Sends a body-less request and reads the whole response.
pub(crate) async fn fetch(
    send: &mut SendRequest<Bytes>,
    r: http::Request<()>,
) -> (http::response::Parts, Vec<u8>) {
    let mut send = send.clone().ready().await.unwrap();
    let (resp, _) = send.send_request(r, true).unwrap();
    let resp = resp.await.unwrap();
    let (parts, body) = resp.into_parts();
    (parts, read_body(body).await)
}

/// Reads a response body to its end, giving the flow-control window back.
pub(crate) async fn read_body(mut body: RecvStream) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        out.extend_from_slice(&chunk);
    }
    out
}

/// Polls `f` every 5 ms until it holds or `limit` passes.
pub(crate) async fn until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while !f() {
        if Instant::now() >= end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    true
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn header<'a>(parts: &'a http::response::Parts, name: &str) -> Option<&'a str> {
    parts.headers.get(name).map(|v| v.to_str().unwrap())
}

/// The JSON lines of an access log file, waiting (bounded) until there are `n`.
fn log_lines(path: &std::path::Path, n: usize) -> Vec<serde_json::Value> {
    let read = || -> Vec<serde_json::Value> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let t = Instant::now();
    while read().len() < n && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    read()
}

#[test]
fn an_h2c_get_reaches_the_http11_backend_with_forwarded_headers_and_is_logged_as_http2() {
    let dir = support_dir("h2-log");
    let log = dir.join("access.log");
    let b = Scripted::ok("hello over h2");
    let mut s = support::settings();
    s.request_id_header = Some(http::HeaderName::from_static("x-request-id"));
    s.access_log = drove_proxy::AccessLogFormat::Json;
    s.access_log_path = Some(log.clone());
    let p = ProxyUnderTest::start(&[&b], s);
    let (parts, body) = client(Duration::from_secs(10), async {
        let (mut send, _conn) = connect(p.addr).await;
        let mut r = req("GET", "/path?q=1");
        // Not from a trusted proxy: replaced, never passed on.
        r.headers_mut()
            .insert("x-forwarded-for", "10.9.8.7".parse().unwrap());
        r.headers_mut()
            .insert("user-agent", "h2-test".parse().unwrap());
        fetch(&mut send, r).await
    });
    assert_eq!(parts.status, 200);
    assert_eq!(parts.version, http::Version::HTTP_2);
    assert_eq!(text(&body), "hello over h2");
    assert_eq!(header(&parts, "x-drove-instance"), Some("b1"));
    let rid = header(&parts, "x-request-id")
        .expect("a request id")
        .to_string();
    assert!(!rid.is_empty());
    let seen = text(&b.requests()[0]);
    assert!(seen.starts_with("GET /path?q=1 HTTP/1.1\r\n"), "{seen}");
    assert!(seen.contains("\r\nHost: t\r\n"), "{seen}");
    assert!(
        seen.contains("\r\nX-Forwarded-For: 127.0.0.1\r\n"),
        "{seen}"
    );
    assert!(seen.contains("\r\nX-Forwarded-Proto: http\r\n"), "{seen}");
    assert!(
        seen.contains(&format!("\r\nx-request-id: {rid}\r\n")),
        "{seen}"
    );
    assert!(seen.contains("\r\nX-Forwarded-Host: t\r\n"), "{seen}");
    assert!(!seen.contains("10.9.8.7"), "{seen}");
    assert!(seen.contains("user-agent: h2-test\r\n"), "{seen}");
    let lines = log_lines(&log, 1);
    assert_eq!(lines.len(), 1, "{lines:?}");
    let l = &lines[0];
    assert_eq!(l["version"], "HTTP/2.0", "{l}");
    assert_eq!(l["method"], "GET", "{l}");
    assert_eq!(l["target"], "/path?q=1", "{l}");
    assert_eq!(l["status"], 200, "{l}");
    assert_eq!(l["bytes"], 13, "{l}");
    assert_eq!(l["request_id"], rid.as_str(), "{l}");
    assert_eq!(l["user_agent"], "h2-test", "{l}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A fresh temporary directory for one test.
fn support_dir(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("drove-it-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Decodes a chunked body strictly in the canonical form drove sends upstream:
/// lowercase hex sizes without leading zeros or extensions, no trailers. Returns the
/// data and the chunk sizes.
fn canonical_chunks(b: &[u8]) -> (Vec<u8>, Vec<usize>) {
    let (data, sizes, trailers) = canonical_chunks_and_trailers(b);
    assert_eq!(trailers, "", "no trailers after the last chunk");
    (data, sizes)
}

/// [`canonical_chunks`], and the trailer section's lines.
fn canonical_chunks_and_trailers(mut b: &[u8]) -> (Vec<u8>, Vec<usize>, String) {
    let mut data = Vec::new();
    let mut sizes = Vec::new();
    loop {
        let eol = b
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("a size line");
        let line = std::str::from_utf8(&b[..eol]).unwrap();
        assert!(
            !line.is_empty()
                && line
                    .bytes()
                    .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
                && (line == "0" || !line.starts_with('0')),
            "canonical size line: {line:?}"
        );
        let n = usize::from_str_radix(line, 16).unwrap();
        b = &b[eol + 2..];
        if n == 0 {
            let trailers = b
                .strip_suffix(b"\r\n")
                .expect("the blank line ends the body");
            return (data, sizes, text(trailers));
        }
        data.extend_from_slice(&b[..n]);
        sizes.push(n);
        assert_eq!(&b[n..n + 2], b"\r\n");
        b = &b[n + 2..];
    }
}

/// A request body of unknown length (no content-length) is streamed upstream as it
/// arrives, re-framed as canonical chunks; one with a length goes with that length.
#[test]
fn request_bodies_stream_upstream_chunked_when_their_length_is_unknown() {
    // A backend of its own: it reports the first chunk as soon as it arrives, before the
    // client has sent the rest (the body is streamed, not collected first).
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let raw = Scripted {
        addr: l.local_addr().unwrap(),
        seen: Default::default(),
        partial: Default::default(),
    };
    let (first_tx, first_rx) = std::sync::mpsc::channel::<()>();
    let got = Arc::new(Mutex::new(Vec::new()));
    let got2 = got.clone();
    std::thread::spawn(move || {
        let (mut c, _) = l.accept().unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let mut told = false;
        loop {
            if !told && buf.windows(10).any(|w| w == b"5\r\nhello\r\n") {
                told = true;
                let _ = first_tx.send(());
            }
            if buf.ends_with(b"0\r\n\r\n") {
                break;
            }
            match c.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        *got2.lock().unwrap() = buf;
        let _ = c.write_all(&response(200, "thanks"));
    });
    let p = ProxyUnderTest::start(&[&raw], support::settings());
    let (status, body) = client(Duration::from_secs(15), async {
        let (send, _conn) = connect(p.addr).await;
        let mut send = send.ready().await.unwrap();
        let (resp, mut stream) = send.send_request(req("POST", "/upload"), false).unwrap();
        stream
            .send_data(Bytes::from_static(b"hello"), false)
            .unwrap();
        // The backend has the first chunk while the client still holds the rest.
        tokio::task::spawn_blocking(move || first_rx.recv_timeout(Duration::from_secs(5)))
            .await
            .unwrap()
            .expect("the first chunk reached the backend before the body ended");
        stream.send_data(Bytes::from_static(b" "), false).unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        stream
            .send_data(Bytes::from_static(b"world"), true)
            .unwrap();
        let resp = resp.await.unwrap();
        let (parts, body) = resp.into_parts();
        (parts.status, read_body(body).await)
    });
    assert_eq!(status, 200);
    assert_eq!(text(&body), "thanks");
    let seen = got.lock().unwrap().clone();
    let head_end = seen.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let head = text(&seen[..head_end]);
    assert!(head.starts_with("POST /upload HTTP/1.1\r\n"), "{head}");
    assert!(
        head.contains("\r\nTransfer-Encoding: chunked\r\n"),
        "{head}"
    );
    assert!(
        !head.to_ascii_lowercase().contains("content-length"),
        "{head}"
    );
    let (data, sizes) = canonical_chunks(&seen[head_end..]);
    assert_eq!(text(&data), "hello world");
    assert_eq!(sizes.len(), 3, "one chunk per DATA frame: {sizes:?}");

    // With a content-length: sent with it, the body byte for byte (20 KB: above the
    // replay buffer, so streamed too).
    let b = Scripted::ok("ok");
    let p = ProxyUnderTest::start(&[&b], support::settings());
    let payload: Vec<u8> = (0..20_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let sent = payload.clone();
    let status = client(Duration::from_secs(15), async {
        let (send, _conn) = connect(p.addr).await;
        let mut send = send.ready().await.unwrap();
        let mut r = req("PUT", "/len");
        r.headers_mut()
            .insert("content-length", sent.len().to_string().parse().unwrap());
        let (resp, mut stream) = send.send_request(r, false).unwrap();
        for piece in sent.chunks(7000) {
            stream.reserve_capacity(piece.len());
            stream
                .send_data(Bytes::copy_from_slice(piece), false)
                .unwrap();
        }
        stream.send_data(Bytes::new(), true).unwrap();
        resp.await.unwrap().status()
    });
    assert_eq!(status, 200);
    let seen = b.requests()[0].clone();
    let head_end = seen.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let head = text(&seen[..head_end]);
    assert!(head.contains("\r\ncontent-length: 20000\r\n"), "{head}");
    assert!(
        !head.to_ascii_lowercase().contains("transfer-encoding"),
        "{head}"
    );
    assert_eq!(&seen[head_end..], &payload[..]);
}

/// Streams of one connection are served concurrently: eight requests that each take
/// 400 ms at the backend finish in far less than eight times that.
#[test]
fn concurrent_streams_on_one_connection_are_served_in_parallel() {
    let b = Scripted::start(|req| {
        let path = text(req).split(' ').nth(1).unwrap_or("").to_string();
        Script::Slowly(
            format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
                path.len() + 5
            )
            .into_bytes(),
            Duration::from_millis(400),
            format!("done {path}").into_bytes(),
        )
    });
    let p = ProxyUnderTest::start(&[&b], support::settings());
    let (took, bodies) = client(Duration::from_secs(15), async {
        let (send, _conn) = connect(p.addr).await;
        let t = Instant::now();
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                let mut send = send.clone();
                tokio::spawn(async move { fetch(&mut send, req("GET", &format!("/s{i}"))).await })
            })
            .collect();
        let mut bodies = Vec::new();
        for t in tasks {
            let (parts, body) = t.await.unwrap();
            assert_eq!(parts.status, 200);
            bodies.push(text(&body));
        }
        (t.elapsed(), bodies)
    });
    for (i, body) in bodies.iter().enumerate() {
        assert_eq!(body, &format!("done /s{i}"));
    }
    assert_eq!(b.count(), 8);
    assert!(
        took < Duration::from_millis(1600),
        "8 × 400 ms in parallel, not one after the other: {took:?}"
    );
}

/// An HTTP/2 frame as bytes.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(9 + payload.len());
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    f.push(kind);
    f.push(flags);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// Reads one frame: (type, flags, stream, payload).
fn read_frame(c: &mut TcpStream) -> std::io::Result<(u8, u8, u32, Vec<u8>)> {
    let mut h = [0u8; 9];
    c.read_exact(&mut h)?;
    let len = u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize;
    let mut payload = vec![0u8; len];
    c.read_exact(&mut payload)?;
    let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
    Ok((h[3], h[4], stream, payload))
}

const SETTINGS: u8 = 0x4;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const GOAWAY: u8 = 0x7;
const REFUSED_STREAM: u32 = 0x7;

/// `http2_max_streams` is announced in SETTINGS (an `h2` client reads it) and enforced:
/// a raw client that opens more streams than that gets the extra ones refused, and the
/// backend never sees them.
#[test]
fn max_concurrent_streams_is_announced_and_enforced() {
    let closed = Arc::new(AtomicUsize::new(0));
    let c2 = closed.clone();
    let b = Scripted::start(move |_| hold(c2.clone()));
    let mut s = support::settings();
    s.http2_max_streams = 3;
    let p = ProxyUnderTest::start(&[&b], s);
    let announced = client(Duration::from_secs(10), async {
        let (send, _conn) = connect(p.addr).await;
        // Once the client is ready to send, the server's SETTINGS have been read.
        let send = send.ready().await.unwrap();
        until(Duration::from_secs(2), || {
            send.current_max_send_streams() == 3
        })
        .await;
        send.current_max_send_streams()
    });
    assert_eq!(announced, 3);

    // A client that does not honour it: five streams at once.
    let mut c = TcpStream::connect(p.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").unwrap();
    c.write_all(&frame(SETTINGS, 0, 0, &[])).unwrap();
    // The server's SETTINGS: acknowledge them, so its limit is in force for sure.
    loop {
        let (kind, flags, _, _) = read_frame(&mut c).unwrap();
        if kind == SETTINGS && flags & 0x1 == 0 {
            c.write_all(&frame(SETTINGS, 0x1, 0, &[])).unwrap();
            break;
        }
    }
    // GET / on authority t (HPACK: indexed :method GET, :scheme http, :path /; :authority
    // as a literal without indexing), END_STREAM | END_HEADERS.
    let block = [0x82, 0x86, 0x84, 0x01, 0x01, b't'];
    for id in [1u32, 3, 5, 7, 9] {
        c.write_all(&frame(HEADERS, 0x5, id, &block)).unwrap();
    }
    let mut refused = Vec::new();
    let t = Instant::now();
    while refused.len() < 2 && t.elapsed() < Duration::from_secs(5) {
        let Ok((kind, _, stream, payload)) = read_frame(&mut c) else {
            break;
        };
        if kind == RST_STREAM {
            let code = u32::from_be_bytes(payload[..4].try_into().unwrap());
            assert_eq!(code, REFUSED_STREAM, "stream {stream}");
            refused.push(stream);
        }
        assert_ne!(kind, GOAWAY, "the connection stays up");
    }
    refused.sort();
    assert_eq!(
        refused,
        vec![7, 9],
        "the streams over the limit are refused"
    );
    assert!(
        support_wait(Duration::from_secs(2), || b.count() == 3),
        "three streams reached the backend"
    );
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(b.count(), 3, "the refused ones never did");
    drop(c);
    // Closing the client connection cancels the three held exchanges.
    assert!(support_wait(Duration::from_secs(5), || closed.load(SeqCst) == 3));
}

fn support_wait(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while !f() {
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

/// A client's RST_STREAM cancels the upstream exchange: while drove waits for the
/// response head, and while it relays the body. The backend's connection is closed and
/// its in-flight count returns to 0; the client's connection serves on.
#[test]
fn a_client_reset_cancels_the_upstream_exchange() {
    let closed = Arc::new(AtomicUsize::new(0));
    let c2 = closed.clone();
    let b = Scripted::start(move |req| {
        if req.starts_with(b"GET /ok") {
            Script::Reply(response(200, "still here"))
        } else if req.starts_with(b"GET /body") {
            // The head and part of the body, then nothing until drove closes.
            let hold = hold(c2.clone());
            let Script::With(f) = hold else {
                unreachable!()
            };
            Script::With(Arc::new(move |c| {
                let _ = c.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nfirst");
                f(c)
            }))
        } else {
            hold(c2.clone())
        }
    });
    let p = ProxyUnderTest::start(&[&b], support::settings());
    let backend = p.balancer.find("b1").unwrap();
    client(Duration::from_secs(20), async {
        let (send, conn) = connect(p.addr).await;
        let mut send = send.ready().await.unwrap();
        // Waiting for the response head.
        let (_resp, mut stream) = send.send_request(req("GET", "/wait"), true).unwrap();
        assert!(until(Duration::from_secs(5), || b.count() == 1).await);
        assert_eq!(backend.in_flight(), 1);
        stream.send_reset(h2::Reason::CANCEL);
        assert!(
            until(Duration::from_secs(3), || closed.load(SeqCst) == 1).await,
            "the backend's connection was closed"
        );
        assert!(until(Duration::from_secs(2), || backend.in_flight() == 0).await);

        // Relaying the body: the head has arrived, the rest has not.
        let mut send = send.ready().await.unwrap();
        let (resp, mut stream) = send.send_request(req("GET", "/body"), true).unwrap();
        let resp = resp.await.unwrap();
        assert_eq!(resp.status(), 200);
        let mut body = resp.into_body();
        let first = body.data().await.unwrap().unwrap();
        assert_eq!(&first[..], b"first");
        let t = Instant::now();
        stream.send_reset(h2::Reason::CANCEL);
        assert!(
            until(Duration::from_secs(3), || closed.load(SeqCst) == 2).await,
            "the backend's connection was closed mid-body (after {:?})",
            t.elapsed()
        );
        assert!(until(Duration::from_secs(2), || backend.in_flight() == 0).await);

        // The connection carries on.
        let (parts, body) = fetch(&mut send, req("GET", "/ok")).await;
        assert_eq!(parts.status, 200);
        assert_eq!(text(&body), "still here");
        assert!(!conn.is_finished());
    });
}

/// The rapid-reset guard: a client that opens streams and cancels them, stream after
/// stream, is sent GOAWAY with ENHANCE_YOUR_CALM once it has opened 100 and reset most;
/// a client that cancels some of its streams keeps its connection.
#[test]
fn a_client_that_resets_most_of_its_streams_gets_goaway_enhance_your_calm() {
    let closed = Arc::new(AtomicUsize::new(0));
    let c2 = closed.clone();
    let b = Scripted::start(move |req| {
        if req.starts_with(b"GET /ok") {
            Script::Reply(response(200, "ok"))
        } else {
            hold(c2.clone())
        }
    });
    let p = ProxyUnderTest::start(&[&b], support::settings());
    client(Duration::from_secs(60), async {
        // A browser-like client: 120 streams, one in four cancelled.
        let (send, conn) = connect(p.addr).await;
        for i in 0..120 {
            let mut send = send.clone().ready().await.unwrap();
            if i % 4 == 0 {
                let before = b.count();
                let (_resp, mut stream) = send.send_request(req("GET", "/held"), true).unwrap();
                assert!(until(Duration::from_secs(5), || b.count() > before).await);
                stream.send_reset(h2::Reason::CANCEL);
            } else {
                let (parts, _) = fetch(&mut send, req("GET", "/ok")).await;
                assert_eq!(parts.status, 200);
            }
        }
        let mut send2 = send.clone();
        let (parts, _) = fetch(&mut send2, req("GET", "/ok")).await;
        assert_eq!(
            parts.status, 200,
            "a client that cancels some streams is served"
        );
        assert!(!conn.is_finished());

        // An attacker: every stream reset once drove has started on it.
        let (send, conn) = connect(p.addr).await;
        let mut opened = 0;
        while opened < 150 && !conn.is_finished() {
            let Ok(mut send) = send.clone().ready().await else {
                break;
            };
            let before = b.count();
            let Ok((_resp, mut stream)) = send.send_request(req("GET", "/held"), true) else {
                break;
            };
            opened += 1;
            // Reset once the stream is being served (not merely queued for accept,
            // which the h2 crate bounds by itself).
            until(Duration::from_secs(2), || {
                b.count() > before || conn.is_finished()
            })
            .await;
            stream.send_reset(h2::Reason::CANCEL);
        }
        let ended = tokio::time::timeout(Duration::from_secs(5), conn)
            .await
            .expect("the connection was closed")
            .unwrap();
        let e = ended.expect_err("closed with an error");
        assert!(e.is_go_away() && e.is_remote(), "{e:?}");
        assert_eq!(e.reason(), Some(h2::Reason::ENHANCE_YOUR_CALM), "{e:?}");
        assert!(
            (100..=102).contains(&opened),
            "closed at the check after 100 streams: {opened}"
        );
    });
}

/// Shutdown sends GOAWAY: the client opens no new stream on the connection, the stream
/// in progress finishes with its whole body, then the connection closes.
#[test]
fn shutdown_sends_goaway_and_lets_the_open_stream_finish() {
    let b = Scripted::start(|_| {
        Script::Slowly(
            b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nhello".to_vec(),
            Duration::from_millis(1000),
            b" world".to_vec(),
        )
    });
    let mut s = support::settings();
    s.shutdown_grace = Duration::from_secs(5);
    let p = ProxyUnderTest::start(&[&b], s);
    client(Duration::from_secs(15), async {
        let (send, conn) = connect(p.addr).await;
        let mut first = send.clone().ready().await.unwrap();
        let (resp, _) = first.send_request(req("GET", "/long"), true).unwrap();
        assert!(until(Duration::from_secs(5), || b.count() == 1).await);
        let t = Instant::now();
        p.shutdown();
        // The GOAWAY arrives while the stream is still open (its body is 1 s away).
        tokio::time::sleep(Duration::from_millis(300)).await;
        let refused = match send.clone().ready().await {
            Err(e) => e,
            Ok(mut s) => s
                .send_request(req("GET", "/new"), true)
                .expect_err("no new stream after GOAWAY"),
        };
        assert!(refused.is_go_away() && refused.is_remote(), "{refused:?}");
        assert_eq!(refused.reason(), Some(h2::Reason::NO_ERROR), "{refused:?}");
        let resp = resp.await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(text(&read_body(resp.into_body()).await), "hello world");
        assert!(
            t.elapsed() >= Duration::from_millis(600),
            "{:?}",
            t.elapsed()
        );
        tokio::time::timeout(Duration::from_secs(3), conn)
            .await
            .expect("the connection closes once its streams are done")
            .unwrap()
            .ok();
    });
    assert_eq!(b.count(), 1, "the refused stream never reached the backend");
}

/// Retries, the retry rule for bodies, rate limits and body limits hold per stream as
/// they do per HTTP/1.1 request.
#[test]
fn retries_and_limits_apply_to_streams() {
    let broken = Scripted::start(|_| Script::Close);
    let good = Scripted::ok("fine");
    let mut s = support::settings();
    s.max_body_size = 1024;
    s.routes = vec![drove_proxy::RouteLimit {
        prefix: "/limited".into(),
        name: "strict".into(),
        key: drove_proxy::LimitKey::ClientIp,
        limiter: Arc::new(drove_limits::Limit::Local(
            drove_limits::Limiter::try_new(1, Duration::from_secs(60), 1).unwrap(),
        )),
    }];
    let p = ProxyUnderTest::with_balancer(
        &[&broken, &good],
        s,
        drove_balancer::BalancerSettings {
            passive: drove_balancer::PassiveHealth {
                max_fails: 0,
                ..Default::default()
            },
            ..Default::default()
        },
    );
    client(Duration::from_secs(30), async {
        let (mut send, _conn) = connect(p.addr).await;
        // GETs that meet the broken backend are retried on the good one.
        for _ in 0..4 {
            let (parts, body) = fetch(&mut send, req("GET", "/")).await;
            assert_eq!(parts.status, 200);
            assert_eq!(text(&body), "fine");
            assert_eq!(header(&parts, "x-drove-instance"), Some("b2"));
        }
        // A POST whose bytes reached the broken backend is not replayed: 502.
        let mut statuses = Vec::new();
        for _ in 0..4 {
            let mut s = send.clone().ready().await.unwrap();
            let mut r = req("POST", "/p");
            r.headers_mut()
                .insert("content-length", "2".parse().unwrap());
            let (resp, mut body) = s.send_request(r, false).unwrap();
            body.send_data(Bytes::from_static(b"hi"), true).unwrap();
            let resp = resp.await.unwrap();
            statuses.push(resp.status().as_u16());
            read_body(resp.into_body()).await;
        }
        assert!(statuses.contains(&502), "{statuses:?}");
        assert!(
            statuses.iter().all(|s| [200, 502].contains(s)),
            "{statuses:?}"
        );
        // A rate-limited route: the second request gets 429 with Retry-After.
        let (parts, _) = fetch(&mut send, req("GET", "/limited")).await;
        assert_eq!(parts.status, 200);
        let (parts, _) = fetch(&mut send, req("GET", "/limited")).await;
        assert_eq!(parts.status, 429);
        assert!(header(&parts, "retry-after").is_some());
        // Bodies over max_body_size: 413, announced or streamed.
        let mut r = req("POST", "/big");
        r.headers_mut()
            .insert("content-length", "5000".parse().unwrap());
        let mut s = send.clone().ready().await.unwrap();
        let (resp, _body) = s.send_request(r, false).unwrap();
        assert_eq!(resp.await.unwrap().status(), 413);
        let mut s = send.clone().ready().await.unwrap();
        let (resp, mut body) = s.send_request(req("POST", "/big"), false).unwrap();
        for _ in 0..3 {
            body.reserve_capacity(1000);
            if body
                .send_data(Bytes::from(vec![b'x'; 1000]), false)
                .is_err()
            {
                break;
            }
        }
        let _ = body.send_data(Bytes::new(), true);
        assert_eq!(resp.await.unwrap().status(), 413);
    });
    let posts = |b: &Scripted| {
        b.requests()
            .iter()
            .filter(|r| r.starts_with(b"POST /p"))
            .count()
    };
    assert_eq!(posts(&broken) + posts(&good), 4, "each POST sent once");
    assert!(
        !good.requests().iter().any(|r| r.starts_with(b"POST /big")),
        "no complete oversized body reached a backend"
    );
}

/// Trailers cross drove both ways for HTTP/2 clients: a stream's request trailers become
/// the re-framed body's trailer section, and a backend's chunked trailer section becomes
/// the stream's trailing HEADERS frame — without the fields that must not be trailers
/// (RFC 9110 §6.5.1: `content-length`, `set-cookie`, `authorization`...). A trailer
/// section that does not parse is dropped whole; the data passes in every case.
#[test]
fn trailers_pass_both_ways_without_the_fields_that_must_not_be_trailers() {
    let b = Scripted::start(|req| {
        if req.starts_with(b"GET /bad") {
            Script::Reply(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nno colon here\r\n\r\n"
                    .to_vec(),
            )
        } else if req.starts_with(b"GET") {
            Script::Reply(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-checksum, grpc-status\r\n\r\n5\r\nhello\r\n0\r\nx-checksum: abc\r\nContent-Length: 5\r\nset-cookie: s=1\r\ngrpc-status: 0\r\n\r\n"
                    .to_vec(),
            )
        } else {
            Script::Reply(response(200, "got it"))
        }
    });
    let p = ProxyUnderTest::start(&[&b], support::settings());
    client(Duration::from_secs(10), async {
        let (send, _conn) = connect(p.addr).await;
        let mut s = send.clone().ready().await.unwrap();
        let (resp, mut body) = s.send_request(req("POST", "/t"), false).unwrap();
        body.send_data(Bytes::from_static(b"data"), false).unwrap();
        let mut trailers = http::HeaderMap::new();
        trailers.insert("x-request-checksum", "123".parse().unwrap());
        trailers.insert("authorization", "Bearer sneaky".parse().unwrap());
        body.send_trailers(trailers).unwrap();
        let resp = resp.await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(text(&read_body(resp.into_body()).await), "got it");

        for (path, want) in [
            ("/t", vec![("x-checksum", "abc"), ("grpc-status", "0")]),
            ("/bad", vec![]),
        ] {
            let mut s = send.clone().ready().await.unwrap();
            let (resp, _) = s.send_request(req("GET", path), true).unwrap();
            let resp = resp.await.unwrap();
            let mut body = resp.into_body();
            let mut data = Vec::new();
            while let Some(c) = body.data().await {
                data.extend_from_slice(&c.unwrap());
            }
            assert_eq!(text(&data), "hello", "{path}");
            let got = body.trailers().await.unwrap().unwrap_or_default();
            let mut got: Vec<(String, String)> = got
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_string()))
                .collect();
            got.sort();
            let mut want: Vec<(String, String)> = want
                .into_iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect();
            want.sort();
            assert_eq!(got, want, "{path}");
        }
    });
    let post = b.requests()[0].clone();
    let head_end = post.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let (data, _, trailers) = canonical_chunks_and_trailers(&post[head_end..]);
    assert_eq!(text(&data), "data");
    assert_eq!(trailers, "x-request-checksum: 123\r\n", "{}", text(&post));
}

/// An idle connection (no stream open for `idle_timeout`) gets GOAWAY and is closed; one
/// with a stream in progress is not.
#[test]
fn an_idle_connection_gets_goaway_and_closes() {
    let b = Scripted::start(|req| {
        if req.starts_with(b"GET /slow") {
            Script::Slowly(
                b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nsl".to_vec(),
                Duration::from_millis(900),
                b"ow".to_vec(),
            )
        } else {
            Script::Reply(response(200, "ok"))
        }
    });
    let mut s = support::settings();
    s.idle_timeout = Duration::from_millis(300);
    let p = ProxyUnderTest::start(&[&b], s);
    client(Duration::from_secs(10), async {
        let (mut send, conn) = connect(p.addr).await;
        // A stream that outlasts the idle timeout keeps the connection.
        let (parts, body) = fetch(&mut send, req("GET", "/slow")).await;
        assert_eq!(parts.status, 200);
        assert_eq!(text(&body), "slow");
        let (parts, _) = fetch(&mut send, req("GET", "/ok")).await;
        assert_eq!(parts.status, 200);
        // Then nothing: closed after about the idle timeout.
        let t = Instant::now();
        let ended = tokio::time::timeout(Duration::from_secs(3), conn)
            .await
            .expect("the idle connection was closed")
            .unwrap();
        assert!(
            t.elapsed() >= Duration::from_millis(200),
            "{:?}",
            t.elapsed()
        );
        // A graceful close (GOAWAY NO_ERROR): the client's connection ends cleanly.
        ended.expect("a clean close");
    });
}

/// A header list over `max_header_size` never reaches the backend; the connection
/// serves on.
#[test]
fn an_oversized_header_list_is_refused() {
    let b = Scripted::ok("ok");
    let mut s = support::settings();
    s.max_header_size = 4096;
    let p = ProxyUnderTest::start(&[&b], s);
    client(Duration::from_secs(10), async {
        let (send, _conn) = connect(p.addr).await;
        let mut r = req("GET", "/big");
        r.headers_mut()
            .insert("x-big", "a".repeat(8000).parse().unwrap());
        let mut s = send.clone().ready().await.unwrap();
        let (resp, _) = s.send_request(r, true).unwrap();
        // The h2 crate answers it itself, before drove sees the stream.
        assert_eq!(resp.await.unwrap().status(), 431);
        let mut s = send.clone();
        let (parts, body) = fetch(&mut s, req("GET", "/small")).await;
        assert_eq!(parts.status, 200);
        assert_eq!(text(&body), "ok");
    });
    let seen: Vec<String> = b.requests().iter().map(|r| text(r)).collect();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(seen[0].starts_with("GET /small "), "{seen:?}");
}
