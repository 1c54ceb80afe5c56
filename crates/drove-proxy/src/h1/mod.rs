//! HTTP/1.1 on raw bytes: heads parsed with httparse and validated ([`request`],
//! [`response`]), rewritten for the next hop by copying header lines — no header map, no
//! per-header allocation — and chunked bodies decoded and re-framed ([`chunked`]).
//! Shared here: framing, methods, and small inline byte buffers.

mod chunked;
mod request;
mod response;

pub(crate) use chunked::{write_chunk, write_last_chunk, Chunked, LAST_CHUNK};
pub(crate) use request::{
    parse_request, write_request, write_upstream_head, RequestHead, RequestLimits, RequestRewrite,
    UpstreamHead,
};
pub(crate) use response::{
    check_upgrade, parse_response, write_response, ResponseHead, ResponseRewrite,
};

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

pub(crate) fn eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.eq_ignore_ascii_case(b)
}

/// Whether a comma-separated header value has `token` (case-insensitive).
pub(crate) fn has_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| eq(t.trim_ascii(), token))
}

pub(crate) fn parse_length(v: &[u8]) -> Option<u64> {
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
    pub(crate) fn parse(m: &[u8]) -> Method {
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

/// (name, value) byte ranges of a head's header lines.
pub(crate) type HeaderOffsets = Vec<((usize, usize), (usize, usize))>;

thread_local! {
    /// Offset vectors of dropped heads, reused by the next parse on this worker thread:
    /// parsing a head allocates nothing in steady state.
    static FREE_OFFSETS: RefCell<Vec<HeaderOffsets>> = const { RefCell::new(Vec::new()) };
}

pub(crate) fn take_offsets() -> HeaderOffsets {
    FREE_OFFSETS
        .with(|f| f.borrow_mut().pop())
        .unwrap_or_else(|| Vec::with_capacity(32))
}

pub(crate) fn give_back_offsets(mut v: HeaderOffsets) {
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

pub(crate) fn offset(buf: &[u8], s: &[u8]) -> (usize, usize) {
    let start = s.as_ptr() as usize - buf.as_ptr() as usize;
    (start, start + s.len())
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
