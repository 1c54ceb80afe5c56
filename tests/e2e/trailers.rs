//! Trailers through the real drove binary (issue 11), as gRPC-ish backends and clients use
//! them: a backend's chunked response with `grpc-status: 0` in its trailer section
//! reaches an HTTP/2 client (the `h2` crate) as a trailing HEADERS frame and an HTTP/1.1
//! client as the chunked trailer section — after a compressed body too — while fields
//! that must never be trailers (`content-length: 5`) are dropped and a malformed section
//! is dropped without breaking the response; an HTTP/2 client's request trailers reach
//! the backend as the trailer section of a chunked body.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use drove_test_support::Drove;

use crate::{drove, static_config};

/// A response body that compresses well, sent in two chunks.
const TEXT: &str = "trailers pass through drove; ";

/// What the test backend answers `path` with: a chunked body and, after it, the trailer
/// section `trailer` (raw bytes: each line with its CRLF).
fn response(path: &str) -> Vec<u8> {
    let (ctype, trailer): (&str, &[u8]) = match path {
        "/grpc" => (
            "application/grpc",
            b"grpc-status: 0\r\ngrpc-message: ok\r\ncontent-length: 5\r\nSet-Cookie: a=1\r\n",
        ),
        "/text" => (
            "text/plain",
            b"grpc-status: 0\r\ncontent-length: 5\r\ncontent-encoding: identity\r\n",
        ),
        // A line without a colon: the section is dropped, the response ends cleanly.
        "/malformed" => (
            "application/grpc",
            b"grpc-status: 0\r\nthis is no field\r\n",
        ),
        // A CR without its LF inside the section: the framing itself is broken.
        "/broken" => ("application/grpc", b"grpc-status: 0\rX\n"),
        _ => {
            return b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok".to_vec()
        }
    };
    let body = TEXT.repeat(40);
    let (a, b) = body.split_at(body.len() / 2);
    let mut out = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\nTransfer-Encoding: chunked\r\nTrailer: grpc-status\r\nConnection: close\r\n\r\n{:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n",
        a.len(),
        b.len()
    )
    .into_bytes();
    out.extend_from_slice(trailer);
    out.extend_from_slice(b"\r\n");
    out
}

/// A small HTTP/1.1 backend: one request per connection (it answers `Connection:
/// close`), a chunked request body read to the end of its trailer section. Every
/// request it read, raw, goes to `seen`.
fn backend() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(c) = c else { return };
            let log = log.clone();
            std::thread::spawn(move || {
                let _ = serve(c, &log);
            });
        }
    });
    (addr, seen)
}

fn serve(mut c: TcpStream, seen: &Mutex<Vec<String>>) -> std::io::Result<()> {
    c.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut r = BufReader::new(c.try_clone()?);
    let mut raw = String::new();
    let mut line = String::new();
    r.read_line(&mut line)?;
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    raw.push_str(&line);
    let mut chunked = false;
    let mut length = 0usize;
    loop {
        let mut h = String::new();
        if r.read_line(&mut h)? == 0 {
            return Ok(());
        }
        raw.push_str(&h);
        let lower = h.to_ascii_lowercase();
        chunked |= lower.starts_with("transfer-encoding:") && lower.contains("chunked");
        if let Some(v) = lower.strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
        if h == "\r\n" {
            break;
        }
    }
    if chunked {
        loop {
            let mut size = String::new();
            r.read_line(&mut size)?;
            raw.push_str(&size);
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 {
                // The trailer section, up to its empty line.
                loop {
                    let mut t = String::new();
                    if r.read_line(&mut t)? == 0 {
                        break;
                    }
                    raw.push_str(&t);
                    if t == "\r\n" {
                        break;
                    }
                }
                break;
            }
            let mut data = vec![0u8; n + 2];
            r.read_exact(&mut data)?;
            raw.push_str(&String::from_utf8_lossy(&data));
        }
    } else if length > 0 {
        let mut data = vec![0u8; length];
        r.read_exact(&mut data)?;
        raw.push_str(&String::from_utf8_lossy(&data));
    }
    seen.lock().unwrap().push(raw);
    c.write_all(&response(&path))?;
    Ok(())
}

/// Sends `request` on a new connection and reads until drove closes it.
fn raw_http1(addr: SocketAddr, request: &str) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

/// A chunked body split into its data and its trailer section (the lines between the
/// last chunk and the empty line). Panics when the body does not end properly.
fn dechunk(mut b: &[u8]) -> (Vec<u8>, String) {
    let mut data = Vec::new();
    loop {
        let eol = b
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("a chunk size line");
        let size_field = std::str::from_utf8(&b[..eol]).unwrap();
        let size = size_field.split(';').next().unwrap().trim();
        let n = usize::from_str_radix(size, 16).unwrap();
        b = &b[eol + 2..];
        if n == 0 {
            let end = b
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .map(|i| i + 2)
                .unwrap_or(0);
            assert!(
                b[end..] == *b"\r\n",
                "the body ends with an empty line: {:?}",
                String::from_utf8_lossy(b)
            );
            return (data, String::from_utf8_lossy(&b[..end]).into_owned());
        }
        data.extend_from_slice(&b[..n]);
        assert_eq!(&b[n..n + 2], b"\r\n");
        b = &b[n + 2..];
    }
}

/// An HTTP/1.1 response split into its head (lowercase) and body.
fn split(resp: &[u8]) -> (String, &[u8]) {
    let end = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete head")
        + 4;
    (
        String::from_utf8_lossy(&resp[..end]).to_ascii_lowercase(),
        &resp[end..],
    )
}

fn gunzip(data: &[u8]) -> Vec<u8> {
    let mut p = Command::new("gzip")
        .arg("-dc")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("gzip");
    p.stdin.take().unwrap().write_all(data).unwrap();
    let out = p.wait_with_output().unwrap();
    assert!(out.status.success());
    out.stdout
}

/// Runs `f` on a runtime of its own, bounded in time: a hang is a failure.
fn h2_client<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async move {
            tokio::time::timeout(Duration::from_secs(30), f)
                .await
                .expect("the HTTP/2 exchange finished in time")
        })
}

/// An h2c (prior knowledge) connection to drove.
async fn h2_connect(addr: SocketAddr) -> h2::client::SendRequest<Bytes> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (send, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send
}

/// A GET over HTTP/2: the response head, the body and the trailers, or the error that
/// ended the stream (a reset may come before the head is read).
async fn h2_get(
    send: &h2::client::SendRequest<Bytes>,
    path: &str,
    accept_encoding: Option<&str>,
) -> Result<(http::response::Parts, Vec<u8>, Option<http::HeaderMap>), h2::Error> {
    let mut req = http::Request::get(format!("http://t{path}"));
    if let Some(e) = accept_encoding {
        req = req.header("accept-encoding", e);
    }
    let mut send = send.clone().ready().await.unwrap();
    let (resp, _) = send.send_request(req.body(()).unwrap(), true).unwrap();
    let (parts, mut body) = resp.await?.into_parts();
    let mut data = Vec::new();
    while let Some(chunk) = body.data().await {
        let c = chunk?;
        let _ = body.flow_control().release_capacity(c.len());
        data.extend_from_slice(&c);
    }
    let trailers = body.trailers().await?;
    Ok((parts, data, trailers))
}

fn value<'a>(map: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    map.get(name).map(|v| v.to_str().unwrap())
}

#[test]
fn response_trailers_reach_http2_and_http11_clients_filtered() {
    let (b, _) = backend();
    let d = Drove::up(drove(), &static_config(&[b], "compress = true"));
    let body = TEXT.repeat(40);

    // HTTP/2: a trailing HEADERS frame with grpc-status, without the forbidden fields.
    h2_client(async {
        let send = h2_connect(d.addr()).await;
        let (parts, data, trailers) = h2_get(&send, "/grpc", None).await.unwrap();
        assert_eq!(parts.status, 200);
        assert_eq!(String::from_utf8_lossy(&data), body);
        let t = trailers.expect("trailers");
        assert_eq!(value(&t, "grpc-status"), Some("0"), "{t:?}");
        assert_eq!(value(&t, "grpc-message"), Some("ok"), "{t:?}");
        assert!(t.get("content-length").is_none(), "{t:?}");
        assert!(t.get("set-cookie").is_none(), "{t:?}");
        assert_eq!(t.len(), 2, "{t:?}");

        // Compressed: the trailers come after the compressed body.
        let (parts, data, trailers) = h2_get(&send, "/text", Some("gzip")).await.unwrap();
        assert_eq!(
            parts.headers.get("content-encoding").unwrap(),
            "gzip",
            "{parts:?}"
        );
        assert_eq!(String::from_utf8_lossy(&gunzip(&data)), body);
        let t = trailers.expect("trailers");
        assert_eq!(value(&t, "grpc-status"), Some("0"), "{t:?}");
        assert!(t.get("content-length").is_none(), "{t:?}");
        assert!(t.get("content-encoding").is_none(), "{t:?}");

        // A malformed section is dropped; the stream still ends cleanly with its data.
        let (parts, data, trailers) = h2_get(&send, "/malformed", None)
            .await
            .expect("a clean end, no reset");
        assert_eq!(parts.status, 200);
        assert_eq!(String::from_utf8_lossy(&data), body);
        assert_eq!(trailers, None);

        // A section whose framing is broken resets the stream (the body cannot be
        // trusted to have ended); the connection serves on.
        let broken = h2_get(&send, "/broken", None).await;
        assert!(broken.is_err(), "{broken:?}");
        let (parts, _, trailers) = h2_get(&send, "/grpc", None).await.unwrap();
        assert_eq!(parts.status, 200);
        assert!(trailers.is_some());
    });

    // HTTP/1.1: the chunked trailer section, filtered.
    let resp = raw_http1(
        d.addr(),
        "GET /grpc HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    let (head, rest) = split(&resp);
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("transfer-encoding: chunked\r\n"), "{head}");
    let (data, trailer) = dechunk(rest);
    assert_eq!(String::from_utf8_lossy(&data), body);
    assert_eq!(trailer, "grpc-status: 0\r\ngrpc-message: ok\r\n");

    // Compressed for an HTTP/1.1 client: the trailers after the last chunk.
    let resp = raw_http1(
        d.addr(),
        "GET /text HTTP/1.1\r\nHost: t\r\nAccept-Encoding: gzip\r\nConnection: close\r\n\r\n",
    );
    let (head, rest) = split(&resp);
    assert!(head.contains("content-encoding: gzip\r\n"), "{head}");
    let (data, trailer) = dechunk(rest);
    assert_eq!(String::from_utf8_lossy(&gunzip(&data)), body);
    assert_eq!(trailer, "grpc-status: 0\r\n");

    // Malformed: no trailer section, the body still ends properly.
    let resp = raw_http1(
        d.addr(),
        "GET /malformed HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    let (data, trailer) = dechunk(split(&resp).1);
    assert_eq!(String::from_utf8_lossy(&data), body);
    assert_eq!(trailer, "");

    // HTTP/1.0 gets the body de-chunked: nowhere to put trailers.
    let resp = raw_http1(d.addr(), "GET /grpc HTTP/1.0\r\n\r\n");
    let (head, rest) = split(&resp);
    assert!(!head.contains("transfer-encoding"), "{head}");
    assert_eq!(String::from_utf8_lossy(rest), body);
}

#[test]
fn http2_request_trailers_reach_the_backend() {
    let (b, seen) = backend();
    let d = Drove::up(drove(), &static_config(&[b], ""));
    h2_client(async {
        let send = h2_connect(d.addr()).await;
        // No content-length: a chunked body, the trailers as its trailer section.
        for (path, length) in [("/echo", None), ("/announced", Some(5))] {
            let mut req = http::Request::post(format!("http://t{path}"));
            if let Some(n) = length {
                req = req
                    .header("content-length", n)
                    .header("trailer", "x-checksum");
            }
            let mut s = send.clone().ready().await.unwrap();
            let (resp, mut body) = s.send_request(req.body(()).unwrap(), false).unwrap();
            body.send_data(Bytes::from_static(b"hello"), false).unwrap();
            let mut t = http::HeaderMap::new();
            t.insert("x-checksum", "5d41402a".parse().unwrap());
            t.insert("grpc-timeout", "1S".parse().unwrap());
            t.insert("authorization", "Bearer sneaky".parse().unwrap());
            t.insert("content-length", "5".parse().unwrap());
            t.insert("host", "evil.example".parse().unwrap());
            body.send_trailers(t).unwrap();
            let resp = resp.await.unwrap();
            assert_eq!(resp.status(), 200, "{path}");
        }
    });
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "{seen:?}");
    for raw in &seen {
        let (head, body) = raw.split_at(raw.find("\r\n\r\n").unwrap() + 4);
        let lower = head.to_ascii_lowercase();
        assert!(lower.contains("transfer-encoding: chunked\r\n"), "{raw}");
        assert!(
            !lower.contains("content-length"),
            "never both framings: {raw}"
        );
        let (data, trailer) = dechunk(body.as_bytes());
        assert_eq!(data, b"hello", "{raw}");
        let mut lines: Vec<&str> = trailer.lines().collect();
        lines.sort();
        assert_eq!(lines, ["grpc-timeout: 1S", "x-checksum: 5d41402a"], "{raw}");
        assert!(
            !raw.contains("sneaky") && !raw.contains("evil.example"),
            "{raw}"
        );
    }
}

/// An HTTP/1.1 client's request trailers are dropped (smuggling safety): the backend
/// gets the body re-framed with an empty trailer section.
#[test]
fn http11_request_trailers_are_dropped() {
    let (b, seen) = backend();
    let d = Drove::up(drove(), &static_config(&[b], ""));
    let resp = raw_http1(
        d.addr(),
        "POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\nx-checksum: 1\r\n\r\n",
    );
    assert!(resp.starts_with(b"HTTP/1.1 200"), "{resp:?}");
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert!(
        seen[0].ends_with("\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
        "{seen:?}"
    );
}
