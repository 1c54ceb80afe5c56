//! HTTP/1.1 message heads on raw bytes: parsing (httparse), validation, and rewriting
//! a request or response head for the next hop by copying header lines — no header map,
//! no per-header allocation. Bodies are passed through in their own framing
//! (Content-Length, chunked — see [`Chunked`] — or until close).

use std::cell::RefCell;
use std::net::IpAddr;

/// Most header lines accepted in one head.
pub(crate) const MAX_HEADERS: usize = 100;

/// How a message body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// No body.
    None,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding, passed through.
    Chunked,
    /// Until the connection closes (responses only).
    Close,
}

/// Why a request head is refused before any backend sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reject {
    /// Malformed or ambiguous (smuggling-shaped): 400.
    BadRequest,
    /// Head larger than the limit: 431.
    TooLarge,
    /// Announced body larger than the limit: 413.
    BodyTooLarge,
}

pub(crate) fn eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.eq_ignore_ascii_case(b)
}

/// Whether a comma-separated header value has `token` (case-insensitive).
pub(crate) fn has_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| eq(t.trim_ascii(), token))
}

fn parse_length(v: &[u8]) -> Option<u64> {
    let v = v.trim_ascii();
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// Request methods drove treats specially.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Method {
    Get,
    Head,
    Options,
    Trace,
    Put,
    Delete,
    Post,
    Connect,
    Other,
}

impl Method {
    fn parse(m: &[u8]) -> Method {
        match m {
            b"GET" => Method::Get,
            b"HEAD" => Method::Head,
            b"POST" => Method::Post,
            b"PUT" => Method::Put,
            b"DELETE" => Method::Delete,
            b"OPTIONS" => Method::Options,
            b"TRACE" => Method::Trace,
            b"CONNECT" => Method::Connect,
            _ => Method::Other,
        }
    }
    /// RFC 9110 9.2.2: may be repeated without changing the outcome.
    pub(crate) fn idempotent(self) -> bool {
        matches!(
            self,
            Method::Get
                | Method::Head
                | Method::Options
                | Method::Trace
                | Method::Put
                | Method::Delete
        )
    }
}

/// What the forwarder needs to know about a request head, all offsets into the
/// connection's buffer (valid until the head is consumed).
#[derive(Debug)]
pub(crate) struct RequestHead {
    /// Bytes of the head, blank line included.
    pub(crate) len: usize,
    pub(crate) method: Method,
    pub(crate) method_range: (usize, usize),
    pub(crate) target_range: (usize, usize),
    pub(crate) http10: bool,
    pub(crate) framing: Framing,
    /// The client wants the connection kept open after this exchange.
    pub(crate) keep_alive: bool,
    /// `Connection: upgrade` with an `Upgrade` header.
    pub(crate) upgrade: bool,
    pub(crate) expect_continue: bool,
    /// (name, value) offsets of every header line.
    pub(crate) headers: HeaderOffsets,
}

impl Drop for RequestHead {
    fn drop(&mut self) {
        give_back_offsets(std::mem::take(&mut self.headers));
    }
}

impl RequestHead {
    pub(crate) fn header<'b>(&self, buf: &'b [u8], name: &[u8]) -> Option<&'b [u8]> {
        self.headers
            .iter()
            .find(|((s, e), _)| eq(&buf[*s..*e], name))
            .map(|(_, (s, e))| &buf[*s..*e])
    }
    pub(crate) fn target<'b>(&self, buf: &'b [u8]) -> &'b [u8] {
        &buf[self.target_range.0..self.target_range.1]
    }
    pub(crate) fn method_bytes<'b>(&self, buf: &'b [u8]) -> &'b [u8] {
        &buf[self.method_range.0..self.method_range.1]
    }
    /// The request path without the query (for hashing).
    pub(crate) fn path<'b>(&self, buf: &'b [u8]) -> &'b [u8] {
        let t = origin_form(self.target(buf));
        let end = t.iter().position(|&b| b == b'?').unwrap_or(t.len());
        &t[..end]
    }
}

/// The origin-form of a request target: absolute-form (`http://host/path`) loses its
/// scheme and authority, as backends expect.
pub(crate) fn origin_form(target: &[u8]) -> &[u8] {
    if target.first() == Some(&b'/') || target == b"*" {
        return target;
    }
    if let Some(rest) = target
        .strip_prefix(b"http://")
        .or_else(|| target.strip_prefix(b"https://"))
        .or_else(|| target.strip_prefix(b"HTTP://"))
    {
        return match rest.iter().position(|&b| b == b'/' || b == b'?') {
            Some(i) if rest[i] == b'/' => &rest[i..],
            _ => b"/",
        };
    }
    target
}

/// (name, value) byte ranges of a head's header lines.
pub(crate) type HeaderOffsets = Vec<((usize, usize), (usize, usize))>;

thread_local! {
    /// Offset vectors of dropped heads, reused by the next parse on this worker thread:
    /// parsing a head allocates nothing in steady state.
    static FREE_OFFSETS: RefCell<Vec<HeaderOffsets>> = const { RefCell::new(Vec::new()) };
}

fn take_offsets() -> HeaderOffsets {
    FREE_OFFSETS
        .with(|f| f.borrow_mut().pop())
        .unwrap_or_else(|| Vec::with_capacity(32))
}

fn give_back_offsets(mut v: HeaderOffsets) {
    // Grown ones (a head with very many headers) are not kept: memory stays bounded.
    if v.capacity() == 0 || v.capacity() > 128 {
        return;
    }
    v.clear();
    FREE_OFFSETS.with(|f| {
        let mut f = f.borrow_mut();
        if f.len() < 1024 {
            f.push(v);
        }
    });
}

fn offset(buf: &[u8], s: &[u8]) -> (usize, usize) {
    let start = s.as_ptr() as usize - buf.as_ptr() as usize;
    (start, start + s.len())
}

/// Parses a request head from the start of `buf`. `Ok(None)`: incomplete.
pub(crate) fn parse_request(buf: &[u8], max_body: u64) -> Result<Option<RequestHead>, Reject> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(Reject::TooLarge),
        Err(_) => return Err(Reject::BadRequest),
    };
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return Err(Reject::BadRequest);
    };
    let http10 = version == 0;
    let mut hosts = 0;
    let mut content_length: Option<u64> = None;
    let mut te: Option<&[u8]> = None;
    let mut te_count = 0;
    let mut cl_count = 0;
    let mut conn_close = false;
    let mut conn_keep_alive = false;
    let mut conn_upgrade = false;
    let mut has_upgrade = false;
    let mut expect_continue = false;
    let mut offsets = take_offsets();
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        let value = h.value;
        offsets.push((offset(buf, name), offset(buf, value)));
        match name.len() {
            4 if eq(name, b"host") => hosts += 1,
            14 if eq(name, b"content-length") => {
                cl_count += 1;
                let n = parse_length(value).ok_or(Reject::BadRequest)?;
                // Several Content-Length lines, even equal, are refused: a backend might
                // read them differently.
                content_length = Some(n);
            }
            17 if eq(name, b"transfer-encoding") => {
                te_count += 1;
                te = Some(value);
            }
            10 if eq(name, b"connection") => {
                conn_close |= has_token(value, b"close");
                conn_keep_alive |= has_token(value, b"keep-alive");
                conn_upgrade |= has_token(value, b"upgrade");
            }
            7 if eq(name, b"upgrade") => has_upgrade = true,
            6 if eq(name, b"expect") => {
                if eq(value.trim_ascii(), b"100-continue") {
                    expect_continue = true;
                } else {
                    return Err(Reject::BadRequest);
                }
            }
            _ => {}
        }
    }
    // Smuggling shapes (RFC 9112 6.3): both framings, several of either, a
    // Transfer-Encoding that is not exactly `chunked`, or one in HTTP/1.0.
    if cl_count > 1 || te_count > 1 || (cl_count > 0 && te_count > 0) {
        return Err(Reject::BadRequest);
    }
    let framing = match (te, content_length) {
        (Some(v), _) => {
            if http10 || !eq(v.trim_ascii(), b"chunked") {
                return Err(Reject::BadRequest);
            }
            Framing::Chunked
        }
        (None, Some(0)) | (None, None) => Framing::None,
        (None, Some(n)) => {
            if max_body > 0 && n > max_body {
                return Err(Reject::BodyTooLarge);
            }
            Framing::Length(n)
        }
    };
    // HTTP/1.1 requires exactly one Host; two are a smuggling shape.
    let absolute = !target.starts_with('/') && target != "*";
    if hosts > 1 || (!http10 && hosts == 0 && !absolute) {
        return Err(Reject::BadRequest);
    }
    if target.is_empty() {
        return Err(Reject::BadRequest);
    }
    Ok(Some(RequestHead {
        len,
        method: Method::parse(method.as_bytes()),
        method_range: offset(buf, method.as_bytes()),
        target_range: offset(buf, target.as_bytes()),
        http10,
        framing,
        keep_alive: if http10 {
            conn_keep_alive && !conn_close
        } else {
            !conn_close
        },
        upgrade: conn_upgrade && has_upgrade && !http10,
        expect_continue,
        headers: offsets,
    }))
}

/// A response head from a backend.
#[derive(Debug)]
pub(crate) struct ResponseHead {
    pub(crate) len: usize,
    pub(crate) status: u16,
    pub(crate) framing: Framing,
    /// The backend will keep the connection open after this response.
    pub(crate) keep_alive: bool,
    pub(crate) headers: HeaderOffsets,
    pub(crate) reason: (usize, usize),
}

impl Drop for ResponseHead {
    fn drop(&mut self) {
        give_back_offsets(std::mem::take(&mut self.headers));
    }
}

/// Why a backend's response could not be used.
#[derive(Debug)]
pub(crate) struct BadResponse;

/// Parses a response head to a request with `method`. `Ok(None)`: incomplete.
pub(crate) fn parse_response(
    buf: &[u8],
    method: Method,
) -> Result<Option<ResponseHead>, BadResponse> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(BadResponse),
    };
    let status = resp.code.ok_or(BadResponse)?;
    let http10 = resp.version == Some(0);
    let reason = resp
        .reason
        .map(|r| offset(buf, r.as_bytes()))
        .unwrap_or((len, len));
    let mut cl: Option<u64> = None;
    let mut chunked = false;
    let mut close = http10;
    let mut offsets = take_offsets();
    for h in resp.headers.iter() {
        let name = h.name.as_bytes();
        offsets.push((offset(buf, name), offset(buf, h.value)));
        if eq(name, b"content-length") {
            let n = parse_length(h.value).ok_or(BadResponse)?;
            if cl.is_some_and(|c| c != n) {
                return Err(BadResponse);
            }
            cl = Some(n);
        } else if eq(name, b"transfer-encoding") {
            chunked = h
                .value
                .split(|&b| b == b',')
                .next_back()
                .is_some_and(|t| eq(t.trim_ascii(), b"chunked"));
            if !chunked {
                // Another coding last: the body ends at close.
                close = true;
            }
        } else if eq(name, b"connection") {
            if has_token(h.value, b"close") {
                close = true;
            } else if http10 && has_token(h.value, b"keep-alive") {
                close = false;
            }
        }
    }
    let framing =
        if method == Method::Head || status == 204 || status == 304 || (100..200).contains(&status)
        {
            Framing::None
        } else if chunked {
            Framing::Chunked
        } else if let Some(n) = cl {
            if n == 0 {
                Framing::None
            } else {
                Framing::Length(n)
            }
        } else if close || http10 {
            Framing::Close
        } else {
            // No length and no chunking on a keep-alive HTTP/1.1 response: the body runs to
            // close, so the connection cannot be reused.
            Framing::Close
        };
    let keep_alive = !close && framing != Framing::Close;
    Ok(Some(ResponseHead {
        len,
        status,
        framing,
        keep_alive,
        headers: offsets,
        reason,
    }))
}

/// Request headers drove never forwards as received: hop-by-hop ones (RFC 9110 7.6.1)
/// and those it rewrites itself.
fn drop_request_header(name: &[u8], trusted: bool) -> bool {
    match name.len() {
        2 => eq(name, b"te"),
        6 => eq(name, b"expect"),
        7 => eq(name, b"upgrade") || eq(name, b"trailer"),
        9 => eq(name, b"x-real-ip"),
        10 => eq(name, b"connection") || eq(name, b"keep-alive"),
        15 => eq(name, b"x-forwarded-for"),
        16 => eq(name, b"proxy-connection") || (!trusted && eq(name, b"x-forwarded-host")),
        17 => !trusted && eq(name, b"x-forwarded-proto"),
        19 => eq(name, b"proxy-authorization"),
        _ => false,
    }
}

/// The headers named by the request's `Connection` header (they are hop-by-hop too).
fn connection_named<'b>(buf: &'b [u8], head: &RequestHead) -> Vec<&'b [u8]> {
    let mut out = Vec::new();
    for ((ns, ne), (vs, ve)) in &head.headers {
        if eq(&buf[*ns..*ne], b"connection") {
            for t in buf[*vs..*ve].split(|&b| b == b',') {
                let t = t.trim_ascii();
                if !t.is_empty() && !eq(t, b"close") && !eq(t, b"keep-alive") && !eq(t, b"upgrade")
                {
                    out.push(t);
                }
            }
        }
    }
    out
}

/// What the forwarder adds to a request on its way to a backend.
pub(crate) struct RequestRewrite<'a> {
    /// The peer's IP, formatted.
    pub(crate) peer_ip: &'a [u8],
    /// The client IP (after trusted X-Forwarded-For), formatted.
    pub(crate) client_ip: &'a [u8],
    /// The peer is a trusted proxy: its forwarded headers are extended, not replaced.
    pub(crate) trusted: bool,
    /// (header name, value) of the request id to set, if not already present.
    pub(crate) request_id: Option<(&'a [u8], &'a [u8])>,
    /// The client connection is TLS: `X-Forwarded-Proto: https`.
    pub(crate) https: bool,
}

/// Writes the request head for a backend into `out`: origin-form target, HTTP/1.1,
/// hop-by-hop headers dropped, forwarded headers set.
pub(crate) fn write_request(
    buf: &[u8],
    head: &RequestHead,
    rw: &RequestRewrite<'_>,
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(head.method_bytes(buf));
    out.push(b' ');
    out.extend_from_slice(origin_form(head.target(buf)));
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let named = connection_named(buf, head);
    let mut xff_prev: Option<&[u8]> = None;
    let mut have_proto = false;
    let mut have_fhost = false;
    let mut host: Option<&[u8]> = None;
    let mut have_rid = false;
    for ((ns, ne), (vs, ve)) in &head.headers {
        let name = &buf[*ns..*ne];
        let value = &buf[*vs..*ve];
        if eq(name, b"x-forwarded-for") && rw.trusted {
            xff_prev = Some(value);
        }
        if drop_request_header(name, rw.trusted) || named.iter().any(|n| eq(n, name)) {
            continue;
        }
        if eq(name, b"host") {
            host = Some(value);
        } else if rw.trusted && eq(name, b"x-forwarded-proto") {
            have_proto = true;
        } else if rw.trusted && eq(name, b"x-forwarded-host") {
            have_fhost = true;
        } else if let Some((rid, _)) = rw.request_id {
            if eq(name, rid) {
                have_rid = true;
            }
        }
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"X-Forwarded-For: ");
    if let Some(prev) = xff_prev {
        out.extend_from_slice(prev);
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(rw.peer_ip);
    out.extend_from_slice(b"\r\nX-Real-IP: ");
    out.extend_from_slice(rw.client_ip);
    out.extend_from_slice(b"\r\n");
    if !have_proto {
        out.extend_from_slice(if rw.https {
            b"X-Forwarded-Proto: https\r\n"
        } else {
            b"X-Forwarded-Proto: http\r\n"
        });
    }
    if let (false, Some(h)) = (have_fhost, host) {
        out.extend_from_slice(b"X-Forwarded-Host: ");
        out.extend_from_slice(h);
        out.extend_from_slice(b"\r\n");
    }
    if let (false, Some((name, value))) = (have_rid, rw.request_id) {
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    if head.upgrade {
        if let Some(u) = head.header(buf, b"upgrade") {
            out.extend_from_slice(b"Connection: upgrade\r\nUpgrade: ");
            out.extend_from_slice(u);
            out.extend_from_slice(b"\r\n");
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// Response headers not relayed to the client as received.
fn drop_response_header(name: &[u8], upgrade: bool) -> bool {
    match name.len() {
        7 => !upgrade && eq(name, b"upgrade"),
        10 => eq(name, b"connection") || eq(name, b"keep-alive"),
        16 => eq(name, b"proxy-connection"),
        18 => eq(name, b"proxy-authenticate"),
        _ => false,
    }
}

/// Writes the response head for the client into `out`. `extra` holds complete header
/// lines drove adds (instance, request id, Set-Cookie). `close` adds
/// `Connection: close`; an HTTP/1.0 client that asked for keep-alive gets
/// `Connection: keep-alive`. `dechunk`: the body will be sent de-chunked (to an HTTP/1.0
/// client), so Transfer-Encoding is dropped.
#[allow(clippy::too_many_arguments)]
pub(crate) fn write_response(
    buf: &[u8],
    head: &ResponseHead,
    extra: &[u8],
    close: bool,
    client_http10: bool,
    dechunk: bool,
    out: &mut Vec<u8>,
) {
    let upgrade = head.status == 101;
    out.extend_from_slice(if client_http10 {
        b"HTTP/1.0 "
    } else {
        b"HTTP/1.1 "
    });
    let mut code = itoa_buf(head.status as u64);
    out.extend_from_slice(code.as_bytes_mut());
    out.push(b' ');
    out.extend_from_slice(&buf[head.reason.0..head.reason.1]);
    out.extend_from_slice(b"\r\n");
    for ((ns, ne), (vs, ve)) in &head.headers {
        let name = &buf[*ns..*ne];
        if drop_response_header(name, upgrade) || (dechunk && eq(name, b"transfer-encoding")) {
            continue;
        }
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(&buf[*vs..*ve]);
        out.extend_from_slice(b"\r\n");
    }
    if upgrade {
        out.extend_from_slice(b"Connection: upgrade\r\n");
    } else if close {
        out.extend_from_slice(b"Connection: close\r\n");
    } else if client_http10 {
        out.extend_from_slice(b"Connection: keep-alive\r\n");
    }
    out.extend_from_slice(extra);
    out.extend_from_slice(b"\r\n");
}

/// A small stack buffer holding a decimal number.
pub(crate) struct ItoaBuf {
    bytes: [u8; 20],
    start: usize,
}

impl ItoaBuf {
    pub(crate) fn as_bytes_mut(&mut self) -> &[u8] {
        &self.bytes[self.start..]
    }
}

pub(crate) fn itoa_buf(mut n: u64) -> ItoaBuf {
    let mut bytes = [0u8; 20];
    let mut i = 20;
    loop {
        i -= 1;
        bytes[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    ItoaBuf { bytes, start: i }
}

/// Formats an IP address as header bytes.
/// Up to `N` (≤ 255) bytes held inline: short per-connection and per-request values
/// (the peer's IP as text, the request id) without a heap allocation.
#[derive(Clone, Copy)]
pub(crate) struct InlineBytes<const N: usize> {
    len: u8,
    bytes: [u8; N],
}

impl<const N: usize> InlineBytes<N> {
    /// `b` truncated to `N` bytes.
    pub(crate) fn new(b: &[u8]) -> Self {
        let mut t = InlineBytes {
            len: 0,
            bytes: [0; N],
        };
        let n = b.len().min(N).min(255);
        t.bytes[..n].copy_from_slice(&b[..n]);
        t.len = n as u8;
        t
    }
    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }
}

/// An IP address as text (45 bytes fit any IPv6 text form, IPv4-mapped included).
pub(crate) type IpText = InlineBytes<45>;

impl IpText {
    pub(crate) fn of(ip: IpAddr) -> IpText {
        use std::io::Write;
        let mut buf = [0u8; 45];
        let mut w = &mut buf[..];
        let _ = write!(w, "{ip}");
        let n = 45 - w.len();
        InlineBytes::new(&buf[..n])
    }
}

/// Where a chunked body stands: fed bytes, it says how many of them belong to the body
/// and whether the body ended. It validates sizes so a malformed body cannot make drove
/// pass bytes of the next message along as if they were this one's.
#[derive(Debug, Default, Clone)]
pub(crate) struct Chunked {
    state: ChunkState,
    /// Data bytes left in the current chunk.
    remaining: u64,
    size_digits: u8,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    #[default]
    Size,
    /// After the size: extensions up to the line end.
    Ext,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    /// Trailer section: at the start of a line.
    TrailerStart,
    /// Inside a trailer line.
    Trailer,
    TrailerLf,
    EndLf,
    Done,
}

/// A chunked body that cannot be parsed.
#[derive(Debug)]
pub(crate) struct BadChunk;

/// One piece of fed input: `len` bytes that are chunk data (`data`) or framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Piece {
    pub(crate) len: usize,
    pub(crate) data: bool,
}

impl Chunked {
    pub(crate) fn done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Consumes bytes of `input` up to the end of the body; calls `piece` for each run of
    /// data or framing bytes, in order. Returns how many bytes belong to the body.
    pub(crate) fn feed(
        &mut self,
        input: &[u8],
        mut piece: impl FnMut(Piece),
    ) -> Result<usize, BadChunk> {
        let mut i = 0;
        let mut run_start = 0;
        let mut run_data = false;
        macro_rules! switch {
            ($data:expr) => {
                if run_data != $data {
                    if i > run_start {
                        piece(Piece {
                            len: i - run_start,
                            data: run_data,
                        });
                    }
                    run_start = i;
                    run_data = $data;
                }
            };
        }
        while i < input.len() && self.state != ChunkState::Done {
            let b = input[i];
            match self.state {
                ChunkState::Data => {
                    switch!(true);
                    let n = (self.remaining.min((input.len() - i) as u64)) as usize;
                    i += n;
                    self.remaining -= n as u64;
                    if self.remaining == 0 {
                        self.state = ChunkState::DataCr;
                    }
                    continue;
                }
                _ => switch!(false),
            }
            match self.state {
                ChunkState::Size => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        let d = (b as char).to_digit(16).expect("hex") as u64;
                        self.size_digits += 1;
                        // 15 hex digits is 2^60: far beyond any body.
                        if self.size_digits > 15 {
                            return Err(BadChunk);
                        }
                        self.remaining = self.remaining * 16 + d;
                    }
                    b';' | b' ' | b'\t' if self.size_digits > 0 => self.state = ChunkState::Ext,
                    b'\r' if self.size_digits > 0 => self.state = ChunkState::SizeLf,
                    _ => return Err(BadChunk),
                },
                ChunkState::Ext => match b {
                    b'\r' => self.state = ChunkState::SizeLf,
                    b'\n' => return Err(BadChunk),
                    _ => {}
                },
                ChunkState::SizeLf => {
                    if b != b'\n' {
                        return Err(BadChunk);
                    }
                    self.size_digits = 0;
                    self.state = if self.remaining == 0 {
                        ChunkState::TrailerStart
                    } else {
                        ChunkState::Data
                    };
                }
                ChunkState::DataCr => {
                    if b != b'\r' {
                        return Err(BadChunk);
                    }
                    self.state = ChunkState::DataLf;
                }
                ChunkState::DataLf => {
                    if b != b'\n' {
                        return Err(BadChunk);
                    }
                    self.state = ChunkState::Size;
                }
                ChunkState::TrailerStart => match b {
                    b'\r' => self.state = ChunkState::EndLf,
                    b'\n' => return Err(BadChunk),
                    _ => self.state = ChunkState::Trailer,
                },
                ChunkState::Trailer => {
                    if b == b'\r' {
                        self.state = ChunkState::TrailerLf;
                    }
                }
                ChunkState::TrailerLf => {
                    if b != b'\n' {
                        return Err(BadChunk);
                    }
                    self.state = ChunkState::TrailerStart;
                }
                ChunkState::EndLf => {
                    if b != b'\n' {
                        return Err(BadChunk);
                    }
                    self.state = ChunkState::Done;
                }
                ChunkState::Data | ChunkState::Done => unreachable!(),
            }
            i += 1;
        }
        if i > run_start {
            piece(Piece {
                len: i - run_start,
                data: run_data,
            });
        }
        Ok(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(s: &str) -> Result<Option<RequestHead>, Reject> {
        parse_request(s.as_bytes(), 0)
    }

    #[test]
    fn request_framing_and_smuggling() {
        let h = req("GET /a?b HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.framing, Framing::None);
        assert!(h.keep_alive);
        assert_eq!(h.path(b"GET /a?b HTTP/1.1\r\nHost: x\r\n\r\n"), b"/a");
        assert!(
            req("GET / HTTP/1.1\r\nHost: x\r\n").unwrap().is_none(),
            "partial"
        );
        let r = |s| req(s).unwrap_err();
        assert_eq!(r("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"), Reject::BadRequest);
        assert_eq!(r("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n"), Reject::BadRequest);
        assert_eq!(
            r("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 4\r\n\r\n"),
            Reject::BadRequest
        );
        assert_eq!(
            r("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
            Reject::BadRequest
        );
        assert_eq!(
            r("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n"),
            Reject::BadRequest
        );
        assert_eq!(r("GET / HTTP/1.1\r\n\r\n"), Reject::BadRequest);
        assert_eq!(
            r("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
            Reject::BadRequest
        );
        assert_eq!(r("HELLO\r\n\r\n"), Reject::BadRequest);
        assert_eq!(
            parse_request(
                b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n",
                1024
            )
            .unwrap_err(),
            Reject::BodyTooLarge
        );
        let h = req("GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert!(!h.keep_alive);
        let h = req("GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(!h.keep_alive);
    }

    #[test]
    fn request_rewrite() {
        let raw = b"GET http://x/p HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\nX-Forwarded-For: 6.6.6.6\r\nKeep-Alive: 5\r\nAccept: */*\r\n\r\n";
        let h = parse_request(raw, 0).unwrap().unwrap();
        let mut out = Vec::new();
        let rw = RequestRewrite {
            peer_ip: b"127.0.0.1",
            client_ip: b"127.0.0.1",
            trusted: false,
            request_id: Some((b"X-Request-Id", b"abc")),
            https: false,
        };
        write_request(raw, &h, &rw, &mut out);
        let s = String::from_utf8(out).unwrap();
        assert_eq!(
            s,
            "GET /p HTTP/1.1\r\nHost: x\r\nAccept: */*\r\nX-Forwarded-For: 127.0.0.1\r\nX-Real-IP: 127.0.0.1\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: x\r\nX-Request-Id: abc\r\n\r\n"
        );
    }

    #[test]
    fn chunked_passes_through_and_stops_at_the_end() {
        let body = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-T: 1\r\n\r\nGET /next";
        let mut c = Chunked::default();
        let mut data = 0;
        let n = c
            .feed(body, |p| {
                if p.data {
                    data += p.len
                }
            })
            .unwrap();
        assert!(c.done());
        assert_eq!(&body[n..], b"GET /next");
        assert_eq!(data, 11);
        // Byte by byte gives the same.
        let mut c = Chunked::default();
        let mut total = 0;
        for b in body.iter().take(n) {
            total += c.feed(std::slice::from_ref(b), |_| {}).unwrap();
        }
        assert!(c.done());
        assert_eq!(total, n);
        assert!(Chunked::default().feed(b"zz\r\n", |_| {}).is_err());
        assert!(Chunked::default().feed(b"5\r\nhelloXX", |_| {}).is_err());
    }

    #[test]
    fn response_framing() {
        let r = parse_response(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc",
            Method::Get,
        )
        .unwrap()
        .unwrap();
        assert_eq!(r.framing, Framing::Length(3));
        assert!(r.keep_alive);
        let r = parse_response(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n",
            Method::Head,
        )
        .unwrap()
        .unwrap();
        assert_eq!(r.framing, Framing::None);
        let r = parse_response(b"HTTP/1.0 200 OK\r\n\r\n", Method::Get)
            .unwrap()
            .unwrap();
        assert_eq!(r.framing, Framing::Close);
        assert!(!r.keep_alive);
        let r = parse_response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            Method::Get,
        )
        .unwrap()
        .unwrap();
        assert_eq!(r.framing, Framing::Chunked);
    }
}
