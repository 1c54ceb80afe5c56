//! Response compression through the proxy, rule by rule (the rules are drove-compress's
//! `negotiate` and `decide` module docs; here they are checked on the wire): the
//! encoding negotiated from Accept-Encoding, what is never compressed, the head's edits,
//! the framing for HTTP/1.1, HTTP/1.0 and HTTP/2 clients, server-sent events arriving
//! event by event through the encoder, and compression per route. Bodies are decoded
//! with flate2, brotli and zstd, the reference decoders.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use drove_compress::{Encoding, Levels, MediaRange, Settings, DEFAULT_TYPES};
use drove_proxy::{CompressRoute, ProxySettings};

use crate::http2::{client, connect, fetch as h2_fetch, read_body, req};
use crate::support::{self, ProxyUnderTest, Script, Scripted};

/// A text body of 6.6 KB that compresses well (above the default `min_size`).
fn text_body() -> Vec<u8> {
    (0..150)
        .map(|i| format!("line {i:03}: the quick brown fox jumps over the lazy dog\n"))
        .collect::<String>()
        .into_bytes()
}

/// Proxy settings with compression on (every default) for the whole balancer.
fn compressing() -> ProxySettings {
    let mut s = support::settings();
    s.compress = Some(Arc::new(Settings::default()));
    s
}

/// Settings offering only `algorithms`, in that order, with the default types.
fn only(algorithms: &[Encoding]) -> Arc<Settings> {
    Arc::new(
        Settings::new(
            algorithms.to_vec(),
            DEFAULT_TYPES
                .iter()
                .map(|t| MediaRange::parse(t).unwrap())
                .collect(),
            1024,
            Levels::default(),
        )
        .unwrap(),
    )
}

/// A response with these header lines and a Content-Length body.
fn with_length(status: &str, headers: &[&str], body: &[u8]) -> Vec<u8> {
    let mut r = format!("HTTP/1.1 {status}\r\n");
    for h in headers {
        r.push_str(h);
        r.push_str("\r\n");
    }
    r.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut r = r.into_bytes();
    r.extend_from_slice(body);
    r
}

/// A chunked response with these header lines, one chunk per part.
fn chunked(headers: &[&str], parts: &[&[u8]]) -> Vec<u8> {
    let mut r = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n".to_string();
    for h in headers {
        r.push_str(h);
        r.push_str("\r\n");
    }
    r.push_str("\r\n");
    let mut r = r.into_bytes();
    for p in parts {
        r.extend_from_slice(format!("{:x}\r\n", p.len()).as_bytes());
        r.extend_from_slice(p);
        r.extend_from_slice(b"\r\n");
    }
    r.extend_from_slice(b"0\r\n\r\n");
    r
}

/// The path of a raw request.
fn path_of(req: &[u8]) -> String {
    String::from_utf8_lossy(req)
        .split(' ')
        .nth(1)
        .unwrap_or("")
        .to_string()
}

/// One response as the client received it.
#[derive(Debug)]
struct Resp {
    version: u8,
    status: u16,
    headers: Vec<(String, String)>,
    /// The body with its HTTP/1.1 framing removed (still encoded).
    body: Vec<u8>,
    /// How the body was framed: "length", "chunked", "close" or "none".
    framing: &'static str,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        let mut all = self.all(name);
        let first = all.next();
        assert!(all.next().is_none(), "one {name} field: {:?}", self.headers);
        first
    }

    fn all<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a str> + 'a {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(&name))
            .map(|(_, v)| v.as_str())
    }

    /// The body decoded as its Content-Encoding says.
    fn decoded(&self) -> Vec<u8> {
        decode(self.header("content-encoding"), &self.body)
    }
}

/// Decodes `body` from `encoding` (none: as it is).
fn decode(encoding: Option<&str>, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match encoding {
        None => out.extend_from_slice(body),
        Some("gzip") => {
            flate2::read::GzDecoder::new(body)
                .read_to_end(&mut out)
                .expect("a valid gzip stream");
        }
        Some("br") => {
            brotli::Decompressor::new(body, 4096)
                .read_to_end(&mut out)
                .expect("a valid brotli stream");
        }
        Some("zstd") => out = zstd::stream::decode_all(body).expect("a valid zstd stream"),
        Some(other) => panic!("unexpected encoding {other}"),
    }
    out
}

/// A connection to the proxy, reading responses one at a time.
struct Conn {
    c: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    fn open(addr: SocketAddr) -> Conn {
        let c = TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Conn { c, buf: Vec::new() }
    }

    /// Sends `method path` with these extra header lines (HTTP/1.1 unless `http10`).
    fn send(&mut self, method: &str, path: &str, headers: &[&str], http10: bool) {
        let mut r = format!(
            "{method} {path} HTTP/1.{}\r\nHost: t\r\n",
            if http10 { 0 } else { 1 }
        );
        for h in headers {
            r.push_str(h);
            r.push_str("\r\n");
        }
        r.push_str("\r\n");
        self.c.write_all(r.as_bytes()).unwrap();
    }

    /// Reads more bytes; false at the end of the connection.
    fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16384];
        match self.c.read(&mut chunk) {
            Ok(0) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            Err(e) => panic!("read from the proxy: {e}"),
        }
    }

    /// Reads one response (`head`: the request was HEAD, its response has no body).
    fn read(&mut self, head: bool) -> Resp {
        let (version, status, headers, len) = loop {
            let mut hs = [httparse::EMPTY_HEADER; 64];
            let mut r = httparse::Response::new(&mut hs);
            if let httparse::Status::Complete(n) = r.parse(&self.buf).unwrap() {
                let headers: Vec<(String, String)> = r
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_string(),
                            String::from_utf8_lossy(h.value).into_owned(),
                        )
                    })
                    .collect();
                break (r.version.unwrap(), r.code.unwrap(), headers, n);
            }
            assert!(self.fill(), "the connection ended inside a head");
        };
        self.buf.drain(..len);
        let find = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
        };
        let mut resp = Resp {
            version,
            status,
            headers: headers.clone(),
            body: Vec::new(),
            framing: "none",
        };
        if head || status == 204 || status == 304 {
            return resp;
        }
        if find("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
            resp.framing = "chunked";
            loop {
                let Some(eol) = self.buf.windows(2).position(|w| w == b"\r\n") else {
                    assert!(self.fill(), "the connection ended inside a chunked body");
                    continue;
                };
                let size = usize::from_str_radix(
                    std::str::from_utf8(&self.buf[..eol]).unwrap().trim(),
                    16,
                )
                .unwrap();
                while self.buf.len() < eol + 2 + size + 2 {
                    assert!(self.fill(), "the connection ended inside a chunk");
                }
                if size == 0 {
                    assert_eq!(&self.buf[eol + 2..eol + 4], b"\r\n", "no trailers");
                    self.buf.drain(..eol + 4);
                    return resp;
                }
                resp.body
                    .extend_from_slice(&self.buf[eol + 2..eol + 2 + size]);
                assert_eq!(&self.buf[eol + 2 + size..eol + 4 + size], b"\r\n");
                self.buf.drain(..eol + 4 + size);
            }
        }
        if let Some(n) = find("content-length") {
            let n: usize = n.trim().parse().unwrap();
            resp.framing = "length";
            while self.buf.len() < n {
                assert!(self.fill(), "the connection ended inside the body");
            }
            resp.body = self.buf.drain(..n).collect();
            return resp;
        }
        resp.framing = "close";
        while self.fill() {}
        resp.body = std::mem::take(&mut self.buf);
        resp
    }
}

/// One GET on a new connection with these header lines.
fn get(addr: SocketAddr, path: &str, headers: &[&str]) -> Resp {
    let mut c = Conn::open(addr);
    c.send("GET", path, headers, false);
    c.read(false)
}

/// `GET path` with this Accept-Encoding (none: no such field).
fn get_ae(addr: SocketAddr, path: &str, ae: Option<&str>) -> Resp {
    let line = ae.map(|v| format!("Accept-Encoding: {v}"));
    get(
        addr,
        path,
        line.as_slice()
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .as_slice(),
    )
}

/// A backend answering every request with the text body, `text/html`, a length.
fn text_backend() -> Scripted {
    Scripted::start(|_| {
        Script::Reply(with_length(
            "200 OK",
            &["Content-Type: text/html; charset=utf-8"],
            &text_body(),
        ))
    })
}

#[test]
fn accept_encoding_is_negotiated_with_q_values_and_the_configured_order() {
    let b = text_backend();
    let p = ProxyUnderTest::start(&[&b], compressing());
    let body = text_body();
    for (ae, want) in [
        (None, None),
        (Some(""), None),
        (Some("gzip"), Some("gzip")),
        (Some("GZIP"), Some("gzip")),
        (Some("x-gzip"), Some("gzip")),
        (Some("br"), Some("br")),
        (Some("zstd"), Some("zstd")),
        // Equal weights: the configured order (zstd, br, gzip) decides.
        (Some("gzip, deflate, br, zstd"), Some("zstd")),
        (Some("gzip, br"), Some("br")),
        (Some("gzip;q=0.5, br;q=0.8"), Some("br")),
        (Some("br;q=0.5, gzip;q=0.9, zstd;q=0.1"), Some("gzip")),
        (Some("*"), Some("zstd")),
        (Some("*;q=0.5, gzip"), Some("gzip")),
        (Some("zstd;q=0, *"), Some("br")),
        (Some("zstd;q=0, br;q=0, *"), Some("gzip")),
        (Some("*;q=0"), None),
        (Some("gzip;q=0"), None),
        (Some("deflate"), None),
        // identity;q=0 forbids the body as it is, but cannot force an encoding the
        // client does not accept; with one it accepts, that one.
        (Some("identity;q=0"), None),
        (Some("identity;q=0, gzip"), Some("gzip")),
        // identity preferred over the only acceptable coding: as it is.
        (Some("gzip;q=0.5, identity"), None),
        // A malformed weight refuses that coding.
        (Some("gzip;q=abc"), None),
        (Some("gzip;q=2, br"), Some("br")),
    ] {
        let r = get_ae(p.addr, "/", ae);
        assert_eq!(r.status, 200, "{ae:?}");
        assert_eq!(r.header("content-encoding"), want, "{ae:?}: {r:?}");
        assert_eq!(r.decoded(), body, "{ae:?}");
        if want.is_some() {
            assert!(
                r.body.len() < body.len() / 3,
                "{ae:?}: {} bytes",
                r.body.len()
            );
        } else {
            assert_eq!(r.body, body, "{ae:?}");
        }
        assert_eq!(r.header("vary"), Some("Accept-Encoding"), "{ae:?}");
    }
    // Another configured order breaks ties the other way.
    let mut s = support::settings();
    s.compress = Some(only(&[Encoding::Gzip, Encoding::Br]));
    let p = ProxyUnderTest::start(&[&b], s);
    for (ae, want) in [
        ("zstd, br, gzip", Some("gzip")),
        ("br, gzip", Some("gzip")),
        ("*", Some("gzip")),
        ("zstd", None),
        ("br;q=1, gzip;q=0.9", Some("br")),
    ] {
        let r = get_ae(p.addr, "/", Some(ae));
        assert_eq!(r.header("content-encoding"), want, "{ae}");
        assert_eq!(r.decoded(), body, "{ae}");
    }
}

#[test]
fn encoded_and_no_transform_responses_pass_untouched() {
    let body = text_body();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&body).unwrap();
    let gzipped = gz.finish().unwrap();
    let g2 = gzipped.clone();
    let b = Scripted::start(move |req| {
        let body = text_body();
        Script::Reply(match path_of(req).as_str() {
            "/encoded" => with_length(
                "200 OK",
                &["Content-Type: text/html", "Content-Encoding: gzip"],
                &g2,
            ),
            "/no-transform" => with_length(
                "200 OK",
                &[
                    "Content-Type: text/html",
                    "Cache-Control: public, max-age=60, No-Transform",
                ],
                &body,
            ),
            "/no-transform-chunked" => chunked(
                &["Content-Type: text/html", "Cache-Control: no-transform"],
                &[&body[..3000], &body[3000..]],
            ),
            "/image" => with_length("200 OK", &["Content-Type: image/png"], &body),
            "/untyped" => with_length("200 OK", &[], &body),
            _ => with_length("404 Not Found", &["Content-Type: text/plain"], b"no"),
        })
    });
    let p = ProxyUnderTest::start(&[&b], compressing());
    let ae = Some("zstd, br, gzip");
    // Already encoded: never re-encoded, not even with a preferred coding.
    let r = get_ae(p.addr, "/encoded", ae);
    assert_eq!(r.all("content-encoding").collect::<Vec<_>>(), ["gzip"]);
    assert_eq!(r.body, gzipped, "the backend's bytes, as they were");
    assert_eq!(
        r.header("content-length"),
        Some(&*gzipped.len().to_string())
    );
    assert_eq!(r.decoded(), body);
    for path in ["/no-transform", "/image", "/untyped"] {
        let r = get_ae(p.addr, path, ae);
        assert_eq!(r.header("content-encoding"), None, "{path}");
        assert_eq!(r.framing, "length", "{path}");
        assert_eq!(r.body, body, "{path}");
        assert_eq!(r.header("vary"), None, "{path}: not eligible, no Vary");
    }
    let r = get_ae(p.addr, "/no-transform-chunked", ae);
    assert_eq!(r.header("content-encoding"), None);
    assert_eq!(r.body, body);
}

#[test]
fn head_204_304_and_206_answers_are_not_compressed() {
    let b = Scripted::start(|req| {
        let body = text_body();
        Script::Reply(match (req.starts_with(b"HEAD"), path_of(req).as_str()) {
            (true, _) => {
                // A HEAD answer: the length of the GET body, no body.
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nETag: \"v1\"\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                )
                .into_bytes()
            }
            (_, "/204") => b"HTTP/1.1 204 No Content\r\nContent-Type: text/html\r\n\r\n".to_vec(),
            (_, "/304") => {
                b"HTTP/1.1 304 Not Modified\r\nContent-Type: text/html\r\nETag: \"v1\"\r\n\r\n"
                    .to_vec()
            }
            (_, "/206") => with_length(
                "206 Partial Content",
                &[
                    "Content-Type: text/html",
                    &format!("Content-Range: bytes 0-1999/{}", body.len()),
                ],
                &body[..2000],
            ),
            _ => with_length("200 OK", &["Content-Type: text/html"], &body),
        })
    });
    let p = ProxyUnderTest::start(&[&b], compressing());
    let body = text_body();
    let ae = "Accept-Encoding: gzip";
    let mut c = Conn::open(p.addr);
    c.send("HEAD", "/", &[ae], false);
    let r = c.read(true);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-encoding"), None);
    assert_eq!(
        r.header("content-length"),
        Some(&*body.len().to_string()),
        "a HEAD answer keeps the length"
    );
    assert_eq!(r.header("etag"), Some("\"v1\""));
    // The same connection carries on: nothing was sent after the HEAD answer's head.
    c.send("GET", "/", &[ae], false);
    let r = c.read(false);
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    assert_eq!(r.decoded(), body);

    let r = get(p.addr, "/204", &[ae]);
    assert_eq!(r.status, 204);
    assert_eq!(r.header("content-encoding"), None);
    assert_eq!(r.header("transfer-encoding"), None);
    // A 304 is not compressed, but carries the Vary and the validator a compressed 200
    // would have had (RFC 9110 §15.4.5).
    let r = get(p.addr, "/304", &[ae]);
    assert_eq!(r.status, 304);
    assert_eq!(r.header("content-encoding"), None);
    assert_eq!(r.header("transfer-encoding"), None);
    assert_eq!(r.header("vary"), Some("Accept-Encoding"));
    assert_eq!(r.header("etag"), Some("W/\"v1\""));
    let r = get(p.addr, "/206", &[ae]);
    assert_eq!(r.status, 206);
    assert_eq!(r.header("content-encoding"), None);
    assert_eq!(r.header("content-length"), Some("2000"));
    assert_eq!(r.body, &body[..2000]);
}

#[test]
fn min_size_skips_small_bodies_of_known_length_only() {
    let b = Scripted::start(|req| {
        let body = text_body();
        if path_of(req) == "/close" {
            return Script::ReplyThenClose(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n\r\nuntil close".to_vec(),
            );
        }
        Script::Reply(match path_of(req).as_str() {
            "/small" => with_length("200 OK", &["Content-Type: text/html"], &body[..1023]),
            "/at-min" => with_length("200 OK", &["Content-Type: text/html"], &body[..1024]),
            "/empty" => with_length("200 OK", &["Content-Type: text/html"], b""),
            _ => chunked(&["Content-Type: text/html"], &[b"tiny"]),
        })
    });
    let p = ProxyUnderTest::start(&[&b], compressing());
    let ae = Some("gzip");
    let body = text_body();
    let r = get_ae(p.addr, "/small", ae);
    assert_eq!(r.header("content-encoding"), None);
    assert_eq!(r.header("content-length"), Some("1023"));
    assert_eq!(r.body, &body[..1023]);
    let r = get_ae(p.addr, "/empty", ae);
    assert_eq!(r.header("content-encoding"), None);
    assert_eq!(r.header("content-length"), Some("0"));
    let r = get_ae(p.addr, "/at-min", ae);
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    assert_eq!(r.decoded(), &body[..1024]);
    // Of unknown length: compressed whatever the size.
    let r = get_ae(p.addr, "/small-chunked", ae);
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    assert_eq!(r.decoded(), b"tiny");
    let mut c = Conn::open(p.addr);
    c.c.write_all(b"GET /close HTTP/1.1\r\nHost: t\r\nAccept-Encoding: gzip\r\n\r\n")
        .unwrap();
    let r = c.read(false);
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    assert_eq!(r.framing, "chunked", "an HTTP/1.1 client gets chunks");
    assert_eq!(r.decoded(), b"until close");
}

#[test]
fn compressed_heads_get_vary_a_weak_etag_and_chunked_framing() {
    let b = Scripted::start(|req| {
        let body = text_body();
        Script::Reply(match path_of(req).as_str() {
            "/weak" => with_length(
                "200 OK",
                &["Content-Type: text/html", "ETag: W/\"w1\"", "Vary: *"],
                &body,
            ),
            "/chunked" => chunked(
                &["Content-Type: application/json", "ETag: \"c1\""],
                &[&body[..100], &body[100..]],
            ),
            _ => with_length(
                "200 OK",
                &[
                    "Content-Type: text/html",
                    "ETag: \"abc\"",
                    "Vary: Cookie",
                    "Accept-Ranges: bytes",
                ],
                &body,
            ),
        })
    });
    let p = ProxyUnderTest::start(&[&b], compressing());
    let body = text_body();
    // Two responses on one keep-alive connection: the chunked framing ends exactly.
    let mut c = Conn::open(p.addr);
    for enc in ["gzip", "br"] {
        c.send("GET", "/", &[&format!("Accept-Encoding: {enc}")], false);
        let r = c.read(false);
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-encoding"), Some(enc));
        assert_eq!(r.header("content-length"), None, "{r:?}");
        assert_eq!(r.framing, "chunked");
        assert_eq!(
            r.header("accept-ranges"),
            None,
            "ranges of the encoded body"
        );
        assert_eq!(r.header("etag"), Some("W/\"abc\""));
        assert_eq!(r.header("vary"), Some("Cookie, Accept-Encoding"));
        assert_eq!(r.decoded(), body);
    }
    // A client that accepts no encoding: the body and validator as they are, but the
    // Vary that tells caches the body depends on Accept-Encoding.
    c.send("GET", "/", &[], false);
    let r = c.read(false);
    assert_eq!(r.header("content-encoding"), None);
    assert_eq!(r.header("content-length"), Some(&*body.len().to_string()));
    assert_eq!(r.header("etag"), Some("\"abc\""));
    assert_eq!(r.header("accept-ranges"), Some("bytes"));
    assert_eq!(r.header("vary"), Some("Cookie, Accept-Encoding"));
    assert_eq!(r.body, body);
    // A weak ETag stays as it is; `Vary: *` covers Accept-Encoding already.
    c.send("GET", "/weak", &["Accept-Encoding: zstd"], false);
    let r = c.read(false);
    assert_eq!(r.header("content-encoding"), Some("zstd"));
    assert_eq!(r.header("etag"), Some("W/\"w1\""));
    assert_eq!(r.header("vary"), Some("*"));
    assert_eq!(r.decoded(), body);
    // A chunked backend body: decoded from its chunks, encoded, chunked again.
    c.send("GET", "/chunked", &["Accept-Encoding: gzip"], false);
    let r = c.read(false);
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    assert_eq!(r.header("etag"), Some("W/\"c1\""));
    assert_eq!(r.framing, "chunked");
    assert_eq!(r.decoded(), body);
}

#[test]
fn an_http10_client_gets_the_compressed_body_until_close() {
    let b = Scripted::start(|req| {
        let body = text_body();
        Script::Reply(match path_of(req).as_str() {
            "/chunked" => chunked(&["Content-Type: text/plain"], &[&body[..10], &body[10..]]),
            _ => with_length("200 OK", &["Content-Type: text/plain"], &body),
        })
    });
    let p = ProxyUnderTest::start(&[&b], compressing());
    for path in ["/", "/chunked"] {
        let mut c = Conn::open(p.addr);
        c.send("GET", path, &["Accept-Encoding: gzip"], true);
        let r = c.read(false);
        assert_eq!(r.version, 0, "{path}");
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.header("content-encoding"), Some("gzip"), "{path}");
        assert_eq!(r.header("content-length"), None, "{path}");
        assert_eq!(r.header("transfer-encoding"), None, "{path}");
        assert_eq!(r.framing, "close", "{path}");
        assert_eq!(r.decoded(), text_body(), "{path}");
    }
}

#[test]
fn http2_streams_get_compressed_data_frames_without_content_length() {
    let b = text_backend();
    let p = ProxyUnderTest::start(&[&b], compressing());
    let body = text_body();
    client(Duration::from_secs(10), async {
        let (mut send, _conn) = connect(p.addr).await;
        for (ae, want) in [
            (Some("gzip"), Some("gzip")),
            (Some("br;q=0.9, gzip;q=0.8"), Some("br")),
            (Some("zstd"), Some("zstd")),
            (None, None),
        ] {
            let mut r = req("GET", "/");
            if let Some(ae) = ae {
                r.headers_mut()
                    .insert("accept-encoding", ae.parse().unwrap());
            }
            let (parts, data) = h2_fetch(&mut send, r).await;
            assert_eq!(parts.status, 200);
            let ce = parts
                .headers
                .get("content-encoding")
                .map(|v| v.to_str().unwrap());
            assert_eq!(ce, want, "{ae:?}");
            assert_eq!(
                parts.headers.get("vary").unwrap(),
                "Accept-Encoding",
                "{ae:?}"
            );
            if want.is_some() {
                assert!(parts.headers.get("content-length").is_none(), "{parts:?}");
                assert!(data.len() < body.len() / 3);
            } else {
                assert_eq!(
                    parts.headers.get("content-length").unwrap(),
                    &body.len().to_string()
                );
            }
            assert_eq!(decode(ce, &data), body, "{ae:?}");
        }
    });
}

/// A streaming decoder: compressed bytes in, everything decoded so far out.
enum Decoder {
    Gzip(Box<flate2::write::GzDecoder<Vec<u8>>>),
    Br(Box<brotli::DecompressorWriter<Vec<u8>>>),
    Zstd(zstd::stream::write::Decoder<'static, Vec<u8>>),
}

impl Decoder {
    fn new(encoding: &str) -> Decoder {
        match encoding {
            "gzip" => Decoder::Gzip(Box::new(flate2::write::GzDecoder::new(Vec::new()))),
            "br" => Decoder::Br(Box::new(brotli::DecompressorWriter::new(Vec::new(), 4096))),
            "zstd" => Decoder::Zstd(zstd::stream::write::Decoder::new(Vec::new()).unwrap()),
            other => panic!("{other}"),
        }
    }

    fn feed(&mut self, data: &[u8]) -> &[u8] {
        match self {
            Decoder::Gzip(d) => {
                d.write_all(data).unwrap();
                d.flush().unwrap();
                d.get_ref()
            }
            Decoder::Br(d) => {
                d.write_all(data).unwrap();
                d.flush().unwrap();
                d.get_ref()
            }
            Decoder::Zstd(d) => {
                d.write_all(data).unwrap();
                d.flush().unwrap();
                d.get_ref()
            }
        }
    }
}

const EVENTS: usize = 4;

fn event(k: usize) -> String {
    format!(
        "id: {k}\nevent: tick\ndata: {{\"tick\":{k},\"pad\":\"{}\"}}\n\n",
        "x".repeat(40)
    )
}

/// A backend of server-sent events that sends event k+1 only once the test says the
/// client has decoded event k (waiting at most 5 s, then it stops: a proxy that holds
/// compressed bytes back makes the client miss the event and the test fail).
fn sse_backend() -> (Scripted, mpsc::Sender<usize>) {
    let (tx, rx) = mpsc::channel::<usize>();
    let rx = Arc::new(Mutex::new(rx));
    let b = Scripted::start(move |_| {
        let rx = rx.clone();
        Script::With(Arc::new(move |c| {
            let rx = rx.lock().unwrap();
            let _ = c.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n",
            );
            for k in 0..EVENTS {
                let e = event(k);
                let _ = c.write_all(format!("{:x}\r\n{e}\r\n", e.len()).as_bytes());
                match rx.recv_timeout(Duration::from_secs(5)) {
                    Ok(seen) if seen == k => {}
                    _ => return,
                }
            }
            let _ = c.write_all(b"0\r\n\r\n");
        }))
    });
    (b, tx)
}

#[test]
fn server_sent_events_arrive_event_by_event_through_compression() {
    for encoding in ["gzip", "br", "zstd"] {
        let (b, seen) = sse_backend();
        let p = ProxyUnderTest::start(&[&b], compressing());
        let mut c = Conn::open(p.addr);
        c.send(
            "GET",
            "/events",
            &[
                &format!("Accept-Encoding: {encoding}"),
                "Accept: text/event-stream",
            ],
            false,
        );
        // The head, then chunk by chunk, decoding as the bytes come.
        let head_end = loop {
            if let Some(i) = c.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            assert!(c.fill());
        };
        let head = String::from_utf8_lossy(&c.buf[..head_end]).to_ascii_lowercase();
        assert!(
            head.contains(&format!("content-encoding: {encoding}\r\n")),
            "{head}"
        );
        assert!(head.contains("transfer-encoding: chunked\r\n"), "{head}");
        c.buf.drain(..head_end);
        let mut decoder = Decoder::new(encoding);
        let mut expected = String::new();
        let mut ended = false;
        for k in 0..EVENTS {
            expected.push_str(&event(k));
            let t = Instant::now();
            loop {
                // Feed every complete chunk received so far.
                while let Some(eol) = c.buf.windows(2).position(|w| w == b"\r\n") {
                    let size =
                        usize::from_str_radix(std::str::from_utf8(&c.buf[..eol]).unwrap(), 16)
                            .unwrap();
                    if c.buf.len() < eol + 4 + size {
                        break;
                    }
                    if size == 0 {
                        ended = true;
                    }
                    let data: Vec<u8> = c.buf[eol + 2..eol + 2 + size].to_vec();
                    c.buf.drain(..eol + 4 + size);
                    decoder.feed(&data);
                }
                let decoded = String::from_utf8_lossy(decoder.feed(&[])).into_owned();
                if decoded == expected {
                    break;
                }
                assert!(
                    expected.starts_with(&decoded),
                    "{encoding}: decoded {decoded:?}"
                );
                assert!(
                    !ended && t.elapsed() < Duration::from_secs(4),
                    "{encoding}: event {k} did not arrive before the next was sent; decoded so far {decoded:?}"
                );
                assert!(c.fill(), "{encoding}: the stream ended before event {k}");
            }
            seen.send(k).unwrap();
        }
        // The end: the last chunk.
        let t = Instant::now();
        while !c.buf.ends_with(b"0\r\n\r\n") && t.elapsed() < Duration::from_secs(5) {
            assert!(c.fill());
        }
        assert!(c.buf.ends_with(b"0\r\n\r\n"));
    }
}

#[test]
fn server_sent_events_arrive_event_by_event_over_http2() {
    let (b, seen) = sse_backend();
    let p = ProxyUnderTest::start(&[&b], compressing());
    client(Duration::from_secs(30), async {
        let (send, _conn) = connect(p.addr).await;
        let mut send = send.ready().await.unwrap();
        let mut r = req("GET", "/events");
        r.headers_mut()
            .insert("accept-encoding", "gzip".parse().unwrap());
        let (resp, _) = send.send_request(r, true).unwrap();
        let resp = resp.await.unwrap();
        assert_eq!(resp.headers().get("content-encoding").unwrap(), "gzip");
        let mut body = resp.into_body();
        let mut decoder = Decoder::new("gzip");
        let mut expected = String::new();
        for k in 0..EVENTS {
            expected.push_str(&event(k));
            loop {
                let decoded = String::from_utf8_lossy(decoder.feed(&[])).into_owned();
                if decoded == expected {
                    break;
                }
                let data = tokio::time::timeout(Duration::from_secs(4), body.data())
                    .await
                    .unwrap_or_else(|_| panic!("event {k} did not arrive; decoded {decoded:?}"))
                    .expect("more data")
                    .unwrap();
                let _ = body.flow_control().release_capacity(data.len());
                decoder.feed(&data);
            }
            seen.send(k).unwrap();
        }
        let rest = read_body(body).await;
        decoder.feed(&rest);
        assert_eq!(String::from_utf8_lossy(decoder.feed(&[])), expected);
    });
}

#[test]
fn compression_is_set_per_route() {
    let b = text_backend();
    let body = text_body();
    let mut s = compressing();
    s.compress_routes = vec![
        CompressRoute {
            prefix: "/raw/".into(),
            settings: None,
        },
        CompressRoute {
            prefix: "/gz/".into(),
            settings: Some(only(&[Encoding::Gzip])),
        },
    ];
    let p = ProxyUnderTest::start(&[&b], s);
    let ae = Some("zstd, br, gzip");
    let r = get_ae(p.addr, "/page", ae);
    assert_eq!(r.header("content-encoding"), Some("zstd"));
    assert_eq!(r.decoded(), body);
    let r = get_ae(p.addr, "/raw/file", ae);
    assert_eq!(r.header("content-encoding"), None);
    assert_eq!(r.header("vary"), None, "compression is off there");
    assert_eq!(r.body, body);
    let r = get_ae(p.addr, "/gz/page", ae);
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    assert_eq!(r.decoded(), body);
    let r = get_ae(p.addr, "/gz/page", Some("br"));
    assert_eq!(
        r.header("content-encoding"),
        None,
        "the route offers gzip only"
    );

    // Off for the balancer, on for one route.
    let mut s = support::settings();
    s.compress_routes = vec![CompressRoute {
        prefix: "/on/".into(),
        settings: Some(Arc::new(Settings::default())),
    }];
    let p = ProxyUnderTest::start(&[&b], s);
    let r = get_ae(p.addr, "/on/x", Some("gzip"));
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    assert_eq!(r.decoded(), body);
    let r = get_ae(p.addr, "/x", Some("gzip"));
    assert_eq!(r.header("content-encoding"), None);
    assert_eq!(r.header("vary"), None);
    assert_eq!(r.body, body);
}

/// A body that arrives in one go (47 KB, more than two of drove's 16 KiB reads) becomes
/// one deflate stream with no flush in it — byte for byte what a one-shot encoder at the
/// same level makes. The encoder is flushed when the backend's body pauses, not after
/// every read: each flush ends a deflate block, and each block's Huffman tables cost CPU
/// (here a flush per read made 4,797 bytes: different, so the test tells).
#[test]
fn a_body_that_arrives_at_once_is_compressed_without_a_flush_per_read() {
    let body: Vec<u8> = (0..1000)
        .map(|i| format!("{{\"id\":{i},\"name\":\"item {i}\",\"tags\":[\"a\",\"b\"]}}\n"))
        .collect::<String>()
        .into_bytes();
    assert!(body.len() > 32 * 1024);
    let b = {
        let body = body.clone();
        Scripted::start(move |_| {
            Script::Reply(with_length(
                "200 OK",
                &["Content-Type: application/json"],
                &body,
            ))
        })
    };
    let mut s = support::settings();
    s.compress = Some(only(&[Encoding::Gzip]));
    let p = ProxyUnderTest::start(&[&b], s);
    let r = get_ae(p.addr, "/", Some("gzip"));
    assert_eq!(r.decoded(), body);
    let mut one_shot = flate2::Compress::new(
        flate2::Compression::new(drove_compress::DEFAULT_GZIP_LEVEL),
        false,
    );
    let mut deflate = Vec::with_capacity(body.len());
    one_shot
        .compress_vec(&body, &mut deflate, flate2::FlushCompress::Finish)
        .unwrap();
    // gzip = a 10-byte header, the deflate stream, CRC-32 and length (8 bytes).
    assert_eq!(
        r.body.len(),
        10 + deflate.len() + 8,
        "drove's gzip body against a one-shot encoding of the same bytes"
    );
}
