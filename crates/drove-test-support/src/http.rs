//! A small blocking HTTP/1.1 client for tests: raw requests in, exact responses out.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// A response as received.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Headers, in order (names lowercased).
    pub headers: Vec<(String, String)>,
    /// Body (de-chunked).
    pub body: Vec<u8>,
}

impl Response {
    /// First value of a header.
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
    /// All values of a header.
    pub fn headers_all(&self, name: &str) -> Vec<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .filter(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
    /// Body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    /// Body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
    /// Body as a typed document (a `drove_api` type); panics with the body when it is
    /// not one, so a renamed field fails the test that reads it.
    pub fn doc<T: serde::de::DeserializeOwned>(&self) -> T {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!("not a {}: {e}: {}", std::any::type_name::<T>(), self.text())
        })
    }
}

/// A keep-alive connection.
pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    /// Connects with a 2 s connect timeout and the given read timeout.
    pub fn open(addr: SocketAddr, read_timeout: Duration) -> std::io::Result<Conn> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        stream.set_read_timeout(Some(read_timeout))?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream,
            buf: Vec::new(),
        })
    }

    /// Writes raw bytes.
    pub fn send_raw(&mut self, raw: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(raw)
    }

    /// Sends a request (a `Host` header is added) and reads the response.
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<Response> {
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: test\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        if !body.is_empty() || method == "POST" || method == "PUT" {
            req.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        req.push_str("\r\n");
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(body);
        self.stream.write_all(&bytes)?;
        self.read_response(method == "HEAD")
    }

    fn fill(&mut self) -> std::io::Result<usize> {
        let mut tmp = [0u8; 16384];
        let n = self.stream.read(&mut tmp)?;
        self.buf.extend_from_slice(&tmp[..n]);
        Ok(n)
    }

    /// Reads one response.
    pub fn read_response(&mut self, head_only: bool) -> std::io::Result<Response> {
        let eof = || {
            std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed before a full response",
            )
        };
        let (status, headers, head_len) = loop {
            let mut hs = [httparse::EMPTY_HEADER; 64];
            let mut r = httparse::Response::new(&mut hs);
            match r.parse(&self.buf) {
                Ok(httparse::Status::Complete(n)) => {
                    let headers: Vec<(String, String)> = r
                        .headers
                        .iter()
                        .map(|h| {
                            (
                                h.name.to_ascii_lowercase(),
                                String::from_utf8_lossy(h.value).into_owned(),
                            )
                        })
                        .collect();
                    break (r.code.unwrap_or(0), headers, n);
                }
                Ok(httparse::Status::Partial) => {
                    if self.fill()? == 0 {
                        return Err(eof());
                    }
                }
                Err(e) => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        e.to_string(),
                    ))
                }
            }
        };
        self.buf.drain(..head_len);
        let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        let mut body = Vec::new();
        if head_only || status == 204 || status == 304 || (100..200).contains(&status) {
            // no body
        } else if get("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
        {
            loop {
                let line_end = loop {
                    if let Some(p) = self.buf.windows(2).position(|w| w == b"\r\n") {
                        break p;
                    }
                    if self.fill()? == 0 {
                        return Err(eof());
                    }
                };
                let size_str = String::from_utf8_lossy(&self.buf[..line_end]).to_string();
                let size =
                    usize::from_str_radix(size_str.split(';').next().unwrap_or("").trim(), 16)
                        .map_err(|_| {
                            std::io::Error::new(std::io::ErrorKind::InvalidData, "bad chunk size")
                        })?;
                self.buf.drain(..line_end + 2);
                while self.buf.len() < size + 2 {
                    if self.fill()? == 0 {
                        return Err(eof());
                    }
                }
                body.extend_from_slice(&self.buf[..size]);
                self.buf.drain(..size + 2);
                if size == 0 {
                    break;
                }
            }
        } else if let Some(len) = get("content-length").and_then(|v| v.trim().parse::<usize>().ok())
        {
            while self.buf.len() < len {
                if self.fill()? == 0 {
                    return Err(eof());
                }
            }
            body = self.buf.drain(..len).collect();
        } else {
            // Until close.
            while self.fill()? > 0 {}
            body = std::mem::take(&mut self.buf);
        }
        Ok(Response {
            status,
            headers,
            body,
        })
    }
}

/// One request on a new connection.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Response> {
    let mut c = Conn::open(addr, Duration::from_secs(10))?;
    c.request(method, path, headers, body)
}

/// GET on a new connection.
pub fn get(addr: SocketAddr, path: &str) -> std::io::Result<Response> {
    request(addr, "GET", path, &[], b"")
}

/// POST JSON on a new connection.
pub fn post_json(
    addr: SocketAddr,
    path: &str,
    body: &serde_json::Value,
) -> std::io::Result<Response> {
    let b = body.to_string();
    let mut c = Conn::open(addr, Duration::from_secs(120))?;
    c.request(
        "POST",
        path,
        &[("Content-Type", "application/json")],
        b.as_bytes(),
    )
}

/// Sends raw bytes on a new connection and reads one response (or the error).
pub fn raw(addr: SocketAddr, bytes: &[u8]) -> std::io::Result<Response> {
    let mut c = Conn::open(addr, Duration::from_secs(10))?;
    c.send_raw(bytes)?;
    c.read_response(false)
}
