//! Request heads: parsed and validated before any backend sees them, and rewritten for
//! the backend.
//!
//! Validation refuses what parsers behind drove could read differently (RFC 9112):
//! both framings or several of either, a `Transfer-Encoding` other than `chunked`, a
//! request-target that is none of the four forms of §3.2, a missing or repeated `Host`.
//! An `Upgrade` is honoured only for a GET asking for a protocol on the configured list
//! (`websocket` by default); any other (`h2c` above all: HTTP/2 straight to an instance,
//! past drove's routes and limits) is stripped and the request goes on as a plain one.

use super::{eq, has_token, offset, parse_length, take_offsets, Framing, HeaderOffsets, Method};
use crate::error::ProxyError;

/// What parsing a request needs to know besides the bytes.
pub(crate) struct RequestLimits<'a> {
    /// Larger announced bodies are refused (413); 0 = no limit.
    pub(crate) max_body: u64,
    /// Protocols a client may upgrade to (lowercase).
    pub(crate) upgrades: &'a [String],
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
    /// The authority of an absolute-form target (`http://AUTHORITY/path`): it replaces
    /// `Host` on the way to the backend (RFC 9112 §3.2.2).
    pub(crate) authority: Option<(usize, usize)>,
    pub(crate) http10: bool,
    pub(crate) framing: Framing,
    /// The client wants the connection kept open after this exchange.
    pub(crate) keep_alive: bool,
    /// The protocol this request may switch to: a GET with `Connection: upgrade` and an
    /// `Upgrade` that lists an allowed protocol (this token's range).
    pub(crate) upgrade: Option<(usize, usize)>,
    /// `Sec-WebSocket-Key`, to check the backend's `Sec-WebSocket-Accept`.
    pub(crate) websocket_key: Option<(usize, usize)>,
    pub(crate) expect_continue: bool,
    /// (name, value) offsets of every header line.
    pub(crate) headers: HeaderOffsets,
}

impl Drop for RequestHead {
    fn drop(&mut self) {
        super::give_back_offsets(std::mem::take(&mut self.headers));
    }
}

impl RequestHead {
    pub(crate) fn header<'b>(&self, buf: &'b [u8], name: &[u8]) -> Option<&'b [u8]> {
        self.headers
            .iter()
            .find(|((s, e), _)| eq(&buf[*s..*e], name))
            .map(|(_, (s, e))| &buf[*s..*e])
    }
    /// Every value of header `name`, in order.
    pub(crate) fn headers_named<'b, 'n>(
        &'b self,
        buf: &'b [u8],
        name: &'n [u8],
    ) -> impl Iterator<Item = &'b [u8]> + use<'b, 'n> {
        self.headers
            .iter()
            .filter(move |((s, e), _)| eq(&buf[*s..*e], name))
            .map(move |(_, (s, e))| &buf[*s..*e])
    }
    pub(crate) fn target<'b>(&self, buf: &'b [u8]) -> &'b [u8] {
        &buf[self.target_range.0..self.target_range.1]
    }
    pub(crate) fn method_bytes<'b>(&self, buf: &'b [u8]) -> &'b [u8] {
        &buf[self.method_range.0..self.method_range.1]
    }
    /// The request path without the query (for hashing and routes).
    pub(crate) fn path<'b>(&self, buf: &'b [u8]) -> &'b [u8] {
        let t = origin_form(self.target(buf));
        let end = t.iter().position(|&b| b == b'?').unwrap_or(t.len());
        &t[..end]
    }
}

/// The origin-form of a request target: absolute-form (`http://host/path`) loses its
/// scheme and authority, as backends expect.
pub(crate) fn origin_form(target: &[u8]) -> &[u8] {
    match absolute_form(target) {
        Some((_, rest)) => match rest.first() {
            Some(b'/') => rest,
            // `http://host?q` and `http://host` mean the root.
            _ => b"/",
        },
        None => target,
    }
}

/// `(authority, rest)` of an absolute-form target with an `http`/`https` scheme.
fn absolute_form(target: &[u8]) -> Option<(&[u8], &[u8])> {
    let colon = target.iter().position(|&b| b == b':')?;
    let scheme = &target[..colon];
    if !(eq(scheme, b"http") || eq(scheme, b"https")) {
        return None;
    }
    let rest = target[colon + 1..].strip_prefix(b"//")?;
    let end = rest
        .iter()
        .position(|&b| b == b'/' || b == b'?')
        .unwrap_or(rest.len());
    Some((&rest[..end], &rest[end..]))
}

/// The request-target forms of RFC 9112 §3.2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TargetForm {
    Origin,
    Absolute,
    Authority,
    Asterisk,
}

/// Which form `target` has for `method`; anything else is refused.
fn target_form(method: Method, target: &[u8]) -> Result<TargetForm, &'static str> {
    if method == Method::Connect {
        // host:port, nothing else (RFC 9112 §3.2.3).
        return match target.iter().rposition(|&b| b == b':') {
            Some(i) if i > 0 && valid_authority(target) && is_port(&target[i + 1..]) => {
                Ok(TargetForm::Authority)
            }
            _ => Err("CONNECT needs an authority-form target (host:port)"),
        };
    }
    match target.first() {
        Some(b'/') => Ok(TargetForm::Origin),
        Some(b'*') if target.len() == 1 => {
            if method == Method::Options {
                Ok(TargetForm::Asterisk)
            } else {
                Err("the asterisk-form target is for OPTIONS only")
            }
        }
        _ => match absolute_form(target) {
            Some((authority, _)) if valid_authority(authority) => Ok(TargetForm::Absolute),
            Some(_) => Err("absolute-form target without a valid authority"),
            None => {
                Err("request-target is none of origin-, absolute-, authority- or asterisk-form")
            }
        },
    }
}

/// A non-empty `host[:port]` without userinfo (deprecated, and a way to make two
/// parsers disagree on the host) and with host characters only.
fn valid_authority(a: &[u8]) -> bool {
    !a.is_empty()
        && a.iter().all(|&b| {
            b.is_ascii_alphanumeric()
                || matches!(b, b'.' | b'-' | b'_' | b'~' | b':' | b'[' | b']' | b'%')
        })
}

fn is_port(p: &[u8]) -> bool {
    !p.is_empty() && p.len() <= 5 && p.iter().all(u8::is_ascii_digit)
}

/// Parses a request head from the start of `buf`. `Ok(None)`: incomplete.
pub(crate) fn parse_request(
    buf: &[u8],
    limits: &RequestLimits<'_>,
) -> Result<Option<RequestHead>, ProxyError> {
    // Uninitialised: httparse writes the ones it fills (100 empty headers would be
    // 3.2 KB written for nothing on every request).
    let mut headers = [const { std::mem::MaybeUninit::uninit() }; super::MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, &mut headers) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(ProxyError::HeaderTooLarge),
        Err(_) => return Err(ProxyError::BadRequest("malformed request head")),
    };
    let (Some(method_text), Some(target), Some(version)) = (req.method, req.path, req.version)
    else {
        return Err(ProxyError::BadRequest("malformed request line"));
    };
    let method = Method::parse(method_text.as_bytes());
    let http10 = version == 0;
    let form = target_form(method, target.as_bytes()).map_err(ProxyError::BadRequest)?;
    let mut hosts = 0;
    let mut content_length: Option<u64> = None;
    let mut te: Option<&[u8]> = None;
    let mut te_count = 0;
    let mut cl_count = 0;
    let mut conn_close = false;
    let mut conn_keep_alive = false;
    let mut conn_upgrade = false;
    let mut upgrade_value: Option<&[u8]> = None;
    let mut websocket_key = None;
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
                let n = parse_length(value)
                    .ok_or(ProxyError::BadRequest("Content-Length is not a number"))?;
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
            7 if eq(name, b"upgrade") => upgrade_value = Some(value),
            17 if eq(name, b"sec-websocket-key") => websocket_key = Some(offset(buf, value)),
            6 if eq(name, b"expect") => {
                if eq(value.trim_ascii(), b"100-continue") {
                    expect_continue = true;
                } else {
                    return Err(ProxyError::BadRequest("unsupported Expect"));
                }
            }
            _ => {}
        }
    }
    // Smuggling shapes (RFC 9112 6.3): both framings, several of either (even equal
    // Content-Length lines: a backend might read them differently), a
    // Transfer-Encoding that is not exactly `chunked`, or one in HTTP/1.0.
    if cl_count > 1 || te_count > 1 || (cl_count > 0 && te_count > 0) {
        return Err(ProxyError::BadRequest("ambiguous body framing"));
    }
    let framing = match (te, content_length) {
        (Some(v), _) => {
            if http10 || !eq(v.trim_ascii(), b"chunked") {
                return Err(ProxyError::BadRequest(
                    "Transfer-Encoding other than chunked",
                ));
            }
            Framing::Chunked
        }
        (None, Some(0)) | (None, None) => Framing::None,
        (None, Some(n)) => {
            if limits.max_body > 0 && n > limits.max_body {
                return Err(ProxyError::BodyTooLarge);
            }
            Framing::Length(n)
        }
    };
    // HTTP/1.1 requires exactly one Host (absolute-form carries its own authority);
    // two are a smuggling shape.
    if hosts > 1 || (!http10 && hosts == 0 && form != TargetForm::Absolute) {
        return Err(ProxyError::BadRequest("missing or repeated Host"));
    }
    if method == Method::Connect {
        // drove is a reverse proxy: it opens no tunnels to arbitrary hosts.
        return Err(ProxyError::MethodNotAllowed);
    }
    let upgrade = match upgrade_value {
        Some(v) if conn_upgrade && !http10 && method == Method::Get => v
            .split(|&b| b == b',')
            .map(<[u8]>::trim_ascii)
            .find(|t| limits.upgrades.iter().any(|u| eq(t, u.as_bytes())))
            .map(|t| offset(buf, t)),
        _ => None,
    };
    let authority = match form {
        TargetForm::Absolute => absolute_form(target.as_bytes()).map(|(a, _)| offset(buf, a)),
        _ => None,
    };
    Ok(Some(RequestHead {
        len,
        method,
        method_range: offset(buf, method_text.as_bytes()),
        target_range: offset(buf, target.as_bytes()),
        authority,
        http10,
        framing,
        keep_alive: if http10 {
            conn_keep_alive && !conn_close
        } else {
            !conn_close
        },
        upgrade,
        websocket_key,
        expect_continue,
        headers: offsets,
    }))
}

/// Request headers drove never forwards as received: hop-by-hop ones (RFC 9110 7.6.1;
/// `HTTP2-Settings` belongs to an `h2c` upgrade, RFC 7540 3.2.1) and those it rewrites
/// itself.
fn drop_request_header(name: &[u8], trusted: bool) -> bool {
    match name.len() {
        2 => eq(name, b"te"),
        6 => eq(name, b"expect"),
        7 => eq(name, b"upgrade") || eq(name, b"trailer"),
        9 => eq(name, b"x-real-ip"),
        10 => eq(name, b"connection") || eq(name, b"keep-alive"),
        14 => eq(name, b"http2-settings"),
        15 => eq(name, b"x-forwarded-for"),
        16 => eq(name, b"proxy-connection") || (!trusted && eq(name, b"x-forwarded-host")),
        17 => !trusted && eq(name, b"x-forwarded-proto"),
        19 => eq(name, b"proxy-authorization"),
        _ => false,
    }
}

/// Whether `name` is listed in one of the request's `Connection` headers (such headers
/// are hop-by-hop too). No allocation: heads are short and this runs per header line.
fn connection_named(buf: &[u8], head: &RequestHead, name: &[u8]) -> bool {
    head.headers_named(buf, b"connection").any(|v| {
        v.split(|&b| b == b',')
            .map(<[u8]>::trim_ascii)
            .any(|t| eq(t, name))
    })
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
/// hop-by-hop headers dropped, `Host` from an absolute-form target, forwarded headers
/// set, and the upgrade (if any) re-stated with the one allowed protocol.
pub(crate) fn write_request(
    buf: &[u8],
    head: &RequestHead,
    rw: &RequestRewrite<'_>,
    out: &mut Vec<u8>,
) {
    let has_connection_header = head.header(buf, b"connection").is_some();
    let lines = head
        .headers
        .iter()
        .map(|((ns, ne), (vs, ve))| (&buf[*ns..*ne], &buf[*vs..*ve]))
        .filter(|(name, _)| !(has_connection_header && connection_named(buf, head, name)));
    let upstream = UpstreamHead {
        method: head.method_bytes(buf),
        target: origin_form(head.target(buf)),
        authority: head.authority.map(|(s, e)| &buf[s..e]),
        upgrade: head.upgrade.map(|(s, e)| &buf[s..e]),
        framing: None,
    };
    write_upstream_head(&upstream, lines, rw, out);
}

/// The parts of a request head for a backend that do not come from header lines.
pub(crate) struct UpstreamHead<'a> {
    pub(crate) method: &'a [u8],
    /// Origin-form (or `*`).
    pub(crate) target: &'a [u8],
    /// Written as `Host`, replacing any `Host` line (absolute-form targets, HTTP/2's
    /// `:authority`).
    pub(crate) authority: Option<&'a [u8]>,
    /// The allowed protocol the request switches to.
    pub(crate) upgrade: Option<&'a [u8]>,
    /// A framing line drove adds (`Transfer-Encoding: chunked` for an HTTP/2 body of
    /// unknown length).
    pub(crate) framing: Option<&'a [u8]>,
}

/// Writes a backend's request head from `head` and the client's header `lines`
/// (hop-by-hop ones are dropped here; those named by `Connection` by the caller).
pub(crate) fn write_upstream_head<'b>(
    head: &UpstreamHead<'_>,
    lines: impl Iterator<Item = (&'b [u8], &'b [u8])>,
    rw: &RequestRewrite<'_>,
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(head.method);
    out.push(b' ');
    out.extend_from_slice(head.target);
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut xff_prev: Option<&[u8]> = None;
    let mut have_proto = false;
    let mut have_fhost = false;
    let mut host: Option<&[u8]> = head.authority;
    let mut have_rid = false;
    if let Some(a) = head.authority {
        out.extend_from_slice(b"Host: ");
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    for (name, value) in lines {
        if eq(name, b"x-forwarded-for") && rw.trusted {
            xff_prev = Some(value);
        }
        if drop_request_header(name, rw.trusted) {
            continue;
        }
        if eq(name, b"host") {
            if head.authority.is_some() {
                continue;
            }
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
    if let Some(framing) = head.framing {
        out.extend_from_slice(framing);
    }
    if let Some(p) = head.upgrade {
        out.extend_from_slice(b"Connection: upgrade\r\nUpgrade: ");
        out.extend_from_slice(p);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    const WS: &[String] = &[];

    fn parse_with(
        s: &str,
        max_body: u64,
        upgrades: &[String],
    ) -> Result<Option<RequestHead>, ProxyError> {
        parse_request(s.as_bytes(), &RequestLimits { max_body, upgrades })
    }

    fn req(s: &str) -> Result<Option<RequestHead>, ProxyError> {
        parse_with(s, 0, WS)
    }

    fn status(s: &str) -> u16 {
        req(s).unwrap_err().status().as_u16()
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
        assert_eq!(status("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"), 400);
        assert_eq!(status("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n"), 400);
        assert_eq!(
            status("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 4\r\n\r\n"),
            400
        );
        assert_eq!(
            status("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
            400
        );
        assert_eq!(
            status("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n"),
            400
        );
        assert_eq!(status("GET / HTTP/1.1\r\n\r\n"), 400);
        assert_eq!(status("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"), 400);
        assert_eq!(status("HELLO\r\n\r\n"), 400);
        assert_eq!(
            parse_with(
                "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n",
                1024,
                WS
            )
            .unwrap_err()
            .status(),
            413
        );
        let h = req("GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert!(!h.keep_alive);
        let h = req("GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(!h.keep_alive);
    }

    /// RFC 9112 §3.2: origin-, absolute-, authority- (CONNECT) and asterisk- (OPTIONS)
    /// form only; anything else never reaches a backend.
    #[test]
    fn request_target_forms() {
        assert_eq!(
            status("GET ! HTTP/1.1\r\n\r\n"),
            400,
            "no form at all, no Host"
        );
        assert_eq!(status("GET ! HTTP/1.1\r\nHost: x\r\n\r\n"), 400);
        assert_eq!(status("GET foo HTTP/1.1\r\nHost: x\r\n\r\n"), 400);
        assert_eq!(
            status("GET * HTTP/1.1\r\nHost: x\r\n\r\n"),
            400,
            "asterisk is for OPTIONS"
        );
        assert!(req("OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap()
            .is_some());
        assert_eq!(status("GET ftp://x/ HTTP/1.1\r\nHost: x\r\n\r\n"), 400);
        assert_eq!(
            status("GET http:///p HTTP/1.1\r\n\r\n"),
            400,
            "no authority"
        );
        assert_eq!(
            status("GET http://u@evil/p HTTP/1.1\r\n\r\n"),
            400,
            "userinfo"
        );
        assert_eq!(
            status("GET x:80 HTTP/1.1\r\nHost: x\r\n\r\n"),
            400,
            "authority-form is for CONNECT"
        );
        assert_eq!(status("CONNECT x:80 HTTP/1.1\r\nHost: x:80\r\n\r\n"), 405);
        assert_eq!(status("CONNECT /x HTTP/1.1\r\nHost: x\r\n\r\n"), 400);
        // Absolute-form needs no Host, and its authority wins over one.
        let raw = b"GET HTTP://a.example:8080/p?q HTTP/1.1\r\nHost: b.example\r\n\r\n";
        let h = parse_request(
            raw,
            &RequestLimits {
                max_body: 0,
                upgrades: WS,
            },
        )
        .unwrap()
        .unwrap();
        let mut out = Vec::new();
        write_request(raw, &h, &rewrite(), &mut out);
        let s = String::from_utf8(out).unwrap();
        assert!(
            s.starts_with("GET /p?q HTTP/1.1\r\nHost: a.example:8080\r\n"),
            "{s}"
        );
        assert!(!s.contains("b.example"), "{s}");
        assert!(req("GET http://a.example HTTP/1.1\r\n\r\n")
            .unwrap()
            .is_some());
    }

    fn rewrite() -> RequestRewrite<'static> {
        RequestRewrite {
            peer_ip: b"127.0.0.1",
            client_ip: b"127.0.0.1",
            trusted: false,
            request_id: Some((b"X-Request-Id", b"abc")),
            https: false,
        }
    }

    #[test]
    fn request_rewrite() {
        let raw = b"GET http://x/p HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\nX-Forwarded-For: 6.6.6.6\r\nKeep-Alive: 5\r\nAccept: */*\r\n\r\n";
        let h = parse_request(
            raw,
            &RequestLimits {
                max_body: 0,
                upgrades: WS,
            },
        )
        .unwrap()
        .unwrap();
        let mut out = Vec::new();
        write_request(raw, &h, &rewrite(), &mut out);
        let s = String::from_utf8(out).unwrap();
        assert_eq!(
            s,
            "GET /p HTTP/1.1\r\nHost: x\r\nAccept: */*\r\nX-Forwarded-For: 127.0.0.1\r\nX-Real-IP: 127.0.0.1\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: x\r\nX-Request-Id: abc\r\n\r\n"
        );
    }

    /// Only a GET asking for an allowed protocol keeps its upgrade; `h2c` (with its
    /// `HTTP2-Settings`) is stripped so HTTP/2 cannot reach an instance past drove.
    #[test]
    fn upgrades_are_filtered() {
        let ws = ["websocket".to_string()];
        let rewritten = |s: &str| {
            let h = parse_with(s, 0, &ws).unwrap().unwrap();
            let mut out = Vec::new();
            write_request(s.as_bytes(), &h, &rewrite(), &mut out);
            (h.upgrade.is_some(), String::from_utf8(out).unwrap())
        };
        let (up, s) = rewritten("GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n");
        assert!(!up);
        assert!(!s.to_ascii_lowercase().contains("upgrade"), "{s}");
        assert!(!s.to_ascii_lowercase().contains("http2-settings"), "{s}");
        let (up, s) = rewritten("GET /ws HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: h2c, WebSocket\r\nSec-WebSocket-Key: k\r\n\r\n");
        assert!(up);
        assert!(
            s.contains("Connection: upgrade\r\nUpgrade: WebSocket\r\n"),
            "{s}"
        );
        assert!(!s.contains("h2c"), "{s}");
        let (up, s) = rewritten(
            "POST /ws HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
        );
        assert!(!up, "only GET upgrades");
        assert!(!s.to_ascii_lowercase().contains("upgrade"), "{s}");
        let (up, _) = rewritten("GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n");
        assert!(!up, "Connection: upgrade is required");
    }
}
