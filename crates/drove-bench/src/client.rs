//! A lean HTTP/1.1 client connection: writes a pre-built request, parses the response
//! head with `httparse` from a reused buffer and skips the body (content-length, chunked,
//! or until close). No pipelining, no allocation per request once the buffers are warm.

use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::BenchOptions;

/// Initial read buffer; grows (up to [`MAX_HEAD`]) only for unusually large heads.
const BUF_SIZE: usize = 16 * 1024;
/// A response head larger than this is treated as an error rather than buffered forever.
const MAX_HEAD: usize = 1024 * 1024;
/// httparse needs a fixed header array; 64 covers any sane response.
const MAX_HEADERS: usize = 64;

/// How one request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fail {
    Connect,
    Timeout,
    Reset,
    Other,
}

impl Fail {
    fn from_io(e: &io::Error) -> Fail {
        use io::ErrorKind::*;
        match e.kind() {
            ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof => Fail::Reset,
            TimedOut => Fail::Timeout,
            _ => Fail::Other,
        }
    }
}

/// Builds the request bytes once per run.
pub(crate) fn build_request(opts: &BenchOptions) -> Vec<u8> {
    let path = opts
        .url
        .path_and_query()
        .map(|p| p.as_str())
        .filter(|p| !p.is_empty())
        .unwrap_or("/");
    let mut r = Vec::with_capacity(256 + opts.body.len());
    r.extend_from_slice(opts.method.as_str().as_bytes());
    r.push(b' ');
    r.extend_from_slice(path.as_bytes());
    r.extend_from_slice(b" HTTP/1.1\r\n");
    let has = |name: &str| {
        opts.headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case(name))
    };
    if !has("host") {
        let authority = opts.url.authority().map(|a| a.as_str()).unwrap_or("");
        r.extend_from_slice(format!("Host: {authority}\r\n").as_bytes());
    }
    if !has("user-agent") {
        r.extend_from_slice(b"User-Agent: drove-bench\r\n");
    }
    for (k, v) in &opts.headers {
        r.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
    }
    let body_method = matches!(opts.method.as_str(), "POST" | "PUT" | "PATCH");
    if !has("content-length") && (!opts.body.is_empty() || body_method) {
        r.extend_from_slice(format!("Content-Length: {}\r\n", opts.body.len()).as_bytes());
    }
    if !opts.keep_alive && !has("connection") {
        r.extend_from_slice(b"Connection: close\r\n");
    }
    r.extend_from_slice(b"\r\n");
    r.extend_from_slice(&opts.body);
    r
}

pub(crate) async fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// What the engine needs to know about a response.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Response {
    pub status: u16,
    /// The connection may carry another request.
    pub reusable: bool,
    /// The instance header was present (its value is in [`Conn::instance`]).
    pub has_instance: bool,
}

/// One client connection slot: the socket (when open) and its buffers.
pub(crate) struct Conn {
    stream: Option<TcpStream>,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Value of the instance header of the last response.
    pub instance: Vec<u8>,
    instance_header: Box<[u8]>,
    head_request: bool,
    /// Responses read on the current connection.
    served: u64,
    /// Some response byte arrived during the current exchange.
    got_bytes: bool,
    /// Requests resent on a new connection (see [`Conn::exchange`]).
    pub retried: u64,
}

impl Conn {
    pub fn new(instance_header: &str, head_request: bool) -> Conn {
        Conn {
            stream: None,
            buf: vec![0; BUF_SIZE],
            start: 0,
            end: 0,
            instance: Vec::with_capacity(64),
            instance_header: instance_header.as_bytes().into(),
            head_request,
            served: 0,
            got_bytes: false,
            retried: 0,
        }
    }

    pub fn set_stream(&mut self, s: TcpStream) {
        self.stream = Some(s);
        self.served = 0;
        self.start = 0;
        self.end = 0;
    }

    pub fn close(&mut self) {
        self.stream = None;
        self.start = 0;
        self.end = 0;
    }

    /// Sends `req` (connecting first if needed) and reads the whole response.
    pub async fn exchange(&mut self, addr: SocketAddr, req: &[u8]) -> Result<Response, Fail> {
        let reused = self.stream.is_some() && self.served > 0;
        let mut r = self.exchange_fresh_or_open(addr, req).await;
        if reused && matches!(r, Err(Fail::Reset)) && !self.got_bytes {
            // The server closed this idle connection before our request reached it (its
            // keep-alive timeout racing our send). Browsers and client pools resend such
            // a request once on a new connection; so do we, and count it.
            self.close();
            self.retried += 1;
            r = self.exchange_fresh_or_open(addr, req).await;
        }
        match r {
            Ok(resp) if resp.reusable => self.served += 1,
            _ => self.close(),
        }
        r
    }

    async fn exchange_fresh_or_open(
        &mut self,
        addr: SocketAddr,
        req: &[u8],
    ) -> Result<Response, Fail> {
        if self.stream.is_none() {
            let s = connect(addr).await.map_err(|e| match e.kind() {
                io::ErrorKind::TimedOut => Fail::Timeout,
                _ => Fail::Connect,
            })?;
            self.set_stream(s);
        }
        self.exchange_open(req).await
    }

    async fn exchange_open(&mut self, req: &[u8]) -> Result<Response, Fail> {
        // Leftover bytes from the previous exchange mean the server sent more than one
        // response; they cannot belong to this request.
        self.start = 0;
        self.end = 0;
        self.got_bytes = false;
        let stream = self.stream.as_mut().expect("connected");
        stream.write_all(req).await.map_err(|e| Fail::from_io(&e))?;
        let head = self.read_head().await?;
        match head.body {
            Body::None => {}
            Body::Length(n) => self.skip(n).await?,
            Body::Chunked => self.skip_chunked().await?,
            Body::UntilClose => {
                self.drain_to_eof().await?;
            }
        }
        Ok(Response {
            status: head.status,
            reusable: head.keep_alive && !matches!(head.body, Body::UntilClose),
            has_instance: head.has_instance,
        })
    }

    /// Reads more bytes after `end`, compacting or growing the buffer as needed.
    async fn fill(&mut self) -> Result<usize, Fail> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.end == self.buf.len() {
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            } else if self.buf.len() < MAX_HEAD {
                self.buf.resize(self.buf.len() * 2, 0);
            } else {
                return Err(Fail::Other);
            }
        }
        let stream = self.stream.as_mut().expect("connected");
        let n = stream
            .read(&mut self.buf[self.end..])
            .await
            .map_err(|e| Fail::from_io(&e))?;
        self.end += n;
        self.got_bytes |= n > 0;
        Ok(n)
    }

    async fn fill_or_eof(&mut self) -> Result<(), Fail> {
        if self.fill().await? == 0 {
            return Err(Fail::Reset);
        }
        Ok(())
    }

    async fn read_head(&mut self) -> Result<Head, Fail> {
        loop {
            if self.end > self.start {
                let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
                let mut resp = httparse::Response::new(&mut headers);
                match resp.parse(&self.buf[self.start..self.end]) {
                    Ok(httparse::Status::Complete(n)) => {
                        let head = interpret(
                            &resp,
                            &self.instance_header,
                            self.head_request,
                            &mut self.instance,
                        )?;
                        self.start += n;
                        match head {
                            Some(h) => return Ok(h),
                            None => continue, // 1xx interim response
                        }
                    }
                    Ok(httparse::Status::Partial) => {}
                    Err(_) => return Err(Fail::Other),
                }
            }
            self.fill_or_eof().await?;
        }
    }
}

fn interpret(
    resp: &httparse::Response<'_, '_>,
    instance_header: &[u8],
    head_request: bool,
    instance: &mut Vec<u8>,
) -> Result<Option<Head>, Fail> {
    let status = resp.code.ok_or(Fail::Other)?;
    if (100..200).contains(&status) && status != 101 {
        return Ok(None);
    }
    let version = resp.version.unwrap_or(1);
    let mut keep_alive = version == 1;
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut has_instance = false;
    for h in resp.headers.iter() {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            let v = std::str::from_utf8(h.value).map_err(|_| Fail::Other)?;
            length = Some(v.trim().parse().map_err(|_| Fail::Other)?);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            chunked = ends_with_token(h.value, b"chunked");
        } else if name.eq_ignore_ascii_case(b"connection") {
            if has_token(h.value, b"close") {
                keep_alive = false;
            } else if has_token(h.value, b"keep-alive") {
                keep_alive = true;
            }
        } else if name.eq_ignore_ascii_case(instance_header) {
            has_instance = true;
            instance.clear();
            instance.extend_from_slice(trim(h.value));
        }
    }
    let body = if head_request || status == 204 || status == 304 {
        Body::None
    } else if chunked {
        Body::Chunked
    } else if let Some(n) = length {
        if n == 0 {
            Body::None
        } else {
            Body::Length(n)
        }
    } else {
        Body::UntilClose
    };
    Ok(Some(Head {
        status,
        keep_alive,
        body,
        has_instance,
    }))
}

impl Conn {
    /// Consumes `n` body bytes without keeping them.
    async fn skip(&mut self, mut n: u64) -> Result<(), Fail> {
        loop {
            let avail = (self.end - self.start) as u64;
            if avail >= n {
                self.start += n as usize;
                return Ok(());
            }
            n -= avail;
            self.start = 0;
            self.end = 0;
            self.fill_or_eof().await?;
        }
    }

    async fn skip_chunked(&mut self) -> Result<(), Fail> {
        loop {
            match httparse::parse_chunk_size(&self.buf[self.start..self.end]) {
                Ok(httparse::Status::Complete((used, 0))) => {
                    self.start += used;
                    return self.skip_trailers().await;
                }
                Ok(httparse::Status::Complete((used, size))) => {
                    self.start += used;
                    self.skip(size + 2).await?;
                }
                Ok(httparse::Status::Partial) => self.fill_or_eof().await?,
                Err(_) => return Err(Fail::Other),
            }
        }
    }

    /// After the last chunk: optional trailer lines, then an empty line.
    async fn skip_trailers(&mut self) -> Result<(), Fail> {
        loop {
            let window = &self.buf[self.start..self.end];
            match window.windows(2).position(|w| w == b"\r\n") {
                Some(0) => {
                    self.start += 2;
                    return Ok(());
                }
                Some(pos) => self.start += pos + 2,
                None => self.fill_or_eof().await?,
            }
        }
    }

    async fn drain_to_eof(&mut self) -> Result<(), Fail> {
        loop {
            self.start = 0;
            self.end = 0;
            if self.fill().await? == 0 {
                return Ok(());
            }
        }
    }
}

enum Body {
    None,
    Length(u64),
    Chunked,
    UntilClose,
}

struct Head {
    status: u16,
    keep_alive: bool,
    body: Body,
    has_instance: bool,
}

fn trim(v: &[u8]) -> &[u8] {
    let s = v
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(v.len());
    let e = v
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(s, |e| e + 1);
    &v[s..e]
}

fn has_token(v: &[u8], token: &[u8]) -> bool {
    v.split(|&b| b == b',')
        .any(|t| trim(t).eq_ignore_ascii_case(token))
}

fn ends_with_token(v: &[u8], token: &[u8]) -> bool {
    v.split(|&b| b == b',')
        .next_back()
        .is_some_and(|t| trim(t).eq_ignore_ascii_case(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_bytes() {
        let mut o = BenchOptions::new("http://127.0.0.1:8080/a?b=1").unwrap();
        o.headers.push(("X-Test".into(), "yes".into()));
        o.method = http::Method::POST;
        o.body = bytes::Bytes::from_static(b"hi");
        o.keep_alive = false;
        let r = String::from_utf8(build_request(&o)).unwrap();
        assert_eq!(
            r,
            "POST /a?b=1 HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: drove-bench\r\n\
             X-Test: yes\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi"
        );
        let o = BenchOptions::new("http://example.com").unwrap();
        let r = String::from_utf8(build_request(&o)).unwrap();
        assert!(
            r.starts_with("GET / HTTP/1.1\r\nHost: example.com\r\n"),
            "{r}"
        );
    }

    #[test]
    fn tokens() {
        assert!(has_token(b"keep-alive, Close", b"close"));
        assert!(!has_token(b"closed", b"close"));
        assert!(ends_with_token(b"gzip, chunked", b"chunked"));
        assert_eq!(trim(b"  web.1 \t"), b"web.1");
    }
}
