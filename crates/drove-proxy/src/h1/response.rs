//! Response heads from backends: parsed (framing, keep-alive), checked when they switch
//! protocols, and rewritten for the client.

use super::{
    eq, has_token, itoa_buf, offset, parse_length, take_offsets, Framing, HeaderOffsets, Method,
};

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
        super::give_back_offsets(std::mem::take(&mut self.headers));
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
    // Uninitialised, as in `parse_request`.
    let mut headers = [const { std::mem::MaybeUninit::uninit() }; super::MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut resp,
        buf,
        &mut headers,
    ) {
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

/// How the response head is rewritten for the client.
pub(crate) struct ResponseRewrite<'a> {
    /// Complete header lines drove adds (instance, request id, Set-Cookie).
    pub(crate) extra: &'a [u8],
    /// The connection closes after this response: `Connection: close`.
    pub(crate) close: bool,
    /// The client speaks HTTP/1.0 (one that asked for keep-alive gets
    /// `Connection: keep-alive`).
    pub(crate) http10: bool,
    /// The body will not go in the backend's framing (de-chunked for an HTTP/1.0 client,
    /// or compressed): its Transfer-Encoding is dropped.
    pub(crate) dechunk: bool,
    /// Compression's header edits (fields dropped, fields added).
    pub(crate) edits: Option<&'a drove_compress::HeadEdits>,
    /// The body goes chunked (a compressed body to an HTTP/1.1 client).
    pub(crate) chunked: bool,
}

/// Writes the response head for the client into `out`.
pub(crate) fn write_response(
    buf: &[u8],
    head: &ResponseHead,
    rw: &ResponseRewrite<'_>,
    out: &mut Vec<u8>,
) {
    let upgrade = head.status == 101;
    out.extend_from_slice(if rw.http10 {
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
        if drop_response_header(name, upgrade)
            || (rw.dechunk && eq(name, b"transfer-encoding"))
            // Compression replaces Vary, ETag and Content-Encoding and drops
            // Content-Length and Accept-Ranges: the backend's own go.
            || rw.edits.is_some_and(|e| e.removes(name))
        {
            continue;
        }
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(&buf[*vs..*ve]);
        out.extend_from_slice(b"\r\n");
    }
    if upgrade {
        out.extend_from_slice(b"Connection: upgrade\r\n");
    } else if rw.close {
        out.extend_from_slice(b"Connection: close\r\n");
    } else if rw.http10 {
        out.extend_from_slice(b"Connection: keep-alive\r\n");
    }
    if let Some(e) = rw.edits {
        e.write_http1_additions(out);
    }
    if rw.chunked {
        out.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
    }
    out.extend_from_slice(rw.extra);
    out.extend_from_slice(b"\r\n");
}

/// The GUID of RFC 6455 §1.3 that a WebSocket server appends to the client's key.
const WEBSOCKET_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Whether a backend's `101 Switching Protocols` answers the request: the request asked
/// for an (allowed) upgrade to `protocol`, the response's `Upgrade` names it, and for
/// WebSocket its `Sec-WebSocket-Accept` is the one derived from the request's key
/// (RFC 6455 §4.2.2). Anything else must not turn the connection into a raw tunnel to
/// the backend. `request`: (protocol, websocket key) from the request's buffer.
pub(crate) fn check_upgrade(
    buf: &[u8],
    head: &ResponseHead,
    request: Option<(&[u8], Option<&[u8]>)>,
) -> Result<(), &'static str> {
    let Some((protocol, key)) = request else {
        return Err("the request asked for no upgrade");
    };
    let header = |name: &[u8]| {
        head.headers
            .iter()
            .find(|((s, e), _)| eq(&buf[*s..*e], name))
            .map(|(_, (s, e))| &buf[*s..*e])
    };
    match header(b"upgrade") {
        Some(v) if eq(v.trim_ascii(), protocol) => {}
        _ => return Err("its Upgrade does not name the requested protocol"),
    }
    if eq(protocol, b"websocket") {
        let Some(key) = key else {
            return Err("the WebSocket request had no Sec-WebSocket-Key");
        };
        let expected = websocket_accept(key.trim_ascii());
        match header(b"sec-websocket-accept") {
            Some(v) if v.trim_ascii() == expected.as_bytes() => {}
            _ => return Err("Sec-WebSocket-Accept does not match the key"),
        }
    }
    Ok(())
}

/// `base64(sha1(key + GUID))`.
fn websocket_accept(key: &[u8]) -> String {
    use base64::Engine;
    use sha1::Digest;
    let mut h = sha1::Sha1::new();
    h.update(key);
    h.update(WEBSOCKET_GUID);
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

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

    fn head(raw: &[u8]) -> ResponseHead {
        parse_response(raw, Method::Get).unwrap().unwrap()
    }

    /// RFC 6455's own example: key `dGhlIHNhbXBsZSBub25jZQ==` → accept
    /// `s3pPLMBiTxaQ9kYGzzhZRbK+xOo=`.
    #[test]
    fn a_101_must_answer_the_upgrade_that_was_asked_for() {
        let key: &[u8] = b"dGhlIHNhbXBsZSBub25jZQ==";
        assert_eq!(websocket_accept(key), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        let good = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
        assert_eq!(
            check_upgrade(good, &head(good), Some((b"websocket", Some(key)))),
            Ok(())
        );
        assert!(
            check_upgrade(good, &head(good), None).is_err(),
            "nothing was asked"
        );
        assert!(check_upgrade(good, &head(good), Some((b"websocket", Some(b"other")))).is_err());
        assert!(check_upgrade(good, &head(good), Some((b"websocket", None))).is_err());
        let bare = b"HTTP/1.1 101 Switching Protocols\r\n\r\n";
        assert!(check_upgrade(bare, &head(bare), Some((b"websocket", Some(key)))).is_err());
        let other = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n";
        assert!(check_upgrade(other, &head(other), Some((b"websocket", Some(key)))).is_err());
        // A protocol without an accept handshake only needs the matching Upgrade.
        let custom = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: my-proto\r\n\r\n";
        assert_eq!(
            check_upgrade(custom, &head(custom), Some((b"My-Proto", None))),
            Ok(())
        );
    }
}
