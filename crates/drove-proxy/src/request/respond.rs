//! Phase 6: the response head the client gets — the backend's, rewritten (hop-by-hop
//! headers out; the instance, the request id and a sticky `Set-Cookie` in; keep-alive
//! decided), or drove's own answer. A `101 Switching Protocols` passes only when it
//! answers the upgrade the request asked for.

use drove_balancer::Backend;

use super::compress::{self, Compressing};
use super::forward::Answer;
use super::Ctx;
use crate::h1::{self, Framing};
use crate::worker::Worker;
use crate::ProxyError;

/// How the response continues after its head.
pub(crate) struct Plan {
    /// The client connection carries another request afterwards.
    pub(crate) keep: bool,
    /// The body is chunked but the client speaks HTTP/1.0: send it de-chunked.
    pub(crate) dechunk: bool,
    /// A checked `101`: both connections become one tunnel.
    pub(crate) tunnel: bool,
    /// The body is compressed on its way (then sent chunked to an HTTP/1.1 client, until
    /// close to an HTTP/1.0 one).
    pub(crate) compress: Option<Compressing>,
}

/// Writes the client's response head for `answer` into `out`.
pub(crate) fn head(
    w: &Worker,
    ctx: &Ctx,
    answer: &Answer,
    client_keep: bool,
    out: &mut Vec<u8>,
) -> Result<Plan, ProxyError> {
    let rhead = &answer.head;
    let buf = answer.buf.filled();
    let tunnel = rhead.status == 101;
    if tunnel {
        let asked = ctx
            .info
            .upgrade
            .as_ref()
            .map(|(p, k)| (p.as_bytes(), k.as_ref().map(|k| k.as_bytes())));
        h1::check_upgrade(buf, rhead, asked).map_err(|reason| ProxyError::BadUpgrade {
            backend: answer.in_flight.backend().addr(),
            reason,
        })?;
    }
    let mut extra = w.buffers.output();
    extra_headers(w, ctx, answer.in_flight.backend(), &mut extra);
    let settings = &ctx.live.settings;
    let http10 = ctx.info.http10;
    let decision = match ctx.info.compress {
        Some(chosen) if !tunnel => Some(compress::decide(
            settings,
            chosen,
            if ctx.info.head_method {
                b"HEAD"
            } else {
                b"GET"
            },
            rhead.status,
            rhead
                .headers
                .iter()
                .map(|((ns, ne), (vs, ve))| (&buf[*ns..*ne], &buf[*vs..*ve])),
        )),
        _ => None,
    };
    let compressing = match (&decision, ctx.info.compress) {
        (Some(d), Some(chosen)) if rhead.framing != Framing::None => {
            Compressing::start(settings, chosen, d)
        }
        _ => None,
    };
    let compressed = compressing.is_some();
    let dechunk = (http10 && rhead.framing == Framing::Chunked) || compressed;
    // A compressed body to an HTTP/1.0 client can only end with the connection.
    let keep = client_keep && !tunnel && !(http10 && dechunk) && rhead.framing != Framing::Close;
    let rewrite = h1::ResponseRewrite {
        extra: &extra,
        close: !keep && !tunnel,
        http10,
        dechunk,
        edits: decision
            .as_ref()
            .map(|d| &d.edits)
            .filter(|e| !e.is_empty()),
        chunked: compressed && !http10,
    };
    h1::write_response(buf, rhead, &rewrite, out);
    w.buffers.recycle(extra);
    Ok(Plan {
        keep,
        dechunk,
        tunnel,
        compress: compressing,
    })
}

/// The header lines drove adds to a backend's response: the instance, the request id,
/// and a sticky `Set-Cookie` when the client is not (yet) pinned to this backend.
pub(crate) fn extra_headers(w: &Worker, ctx: &Ctx, backend: &Backend, extra: &mut Vec<u8>) {
    let settings = &ctx.live.settings;
    if let Some(line) = w.instance_line(settings, backend) {
        extra.extend_from_slice(&line);
    }
    if let (Some(name), Some(value)) = (&settings.request_id_header, &ctx.info.request_id) {
        header_line(extra, name.as_str().as_bytes(), value.as_bytes());
    }
    if let Some(s) = &settings.sticky {
        if ctx.info.sticky_str() != Some(backend.sticky_token()) {
            extra.extend_from_slice(b"Set-Cookie: ");
            extra.extend_from_slice(s.name.as_bytes());
            extra.push(b'=');
            extra.extend_from_slice(backend.sticky_token().as_bytes());
            extra.extend_from_slice(b"; Path=/; HttpOnly; SameSite=Lax");
            if let Some(age) = s.max_age {
                extra.extend_from_slice(b"; Max-Age=");
                extra.extend_from_slice(h1::itoa_buf(age.as_secs()).as_bytes_mut());
            }
            extra.extend_from_slice(b"\r\n");
        }
    }
}

fn header_line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Writes drove's own complete response for `e` into `out`: status, a short text body,
/// `Retry-After` when the client should come back, the request id, `Connection: close`
/// when the connection ends after it. Returns the body's length.
pub(crate) fn own_response(
    e: &ProxyError,
    request_id: Option<(&[u8], &[u8])>,
    close: bool,
    out: &mut Vec<u8>,
) -> usize {
    let status = e.status();
    let body = e.body().as_bytes();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: ");
    out.extend_from_slice(h1::itoa_buf(body.len() as u64).as_bytes_mut());
    out.extend_from_slice(b"\r\n");
    if let Some(secs) = e.retry_after() {
        out.extend_from_slice(b"Retry-After: ");
        out.extend_from_slice(h1::itoa_buf(secs).as_bytes_mut());
        out.extend_from_slice(b"\r\n");
    }
    if let Some((name, value)) = request_id {
        header_line(out, name, value);
    }
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    body.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_responses_are_complete_messages() {
        let mut out = Vec::new();
        let n = own_response(
            &ProxyError::NoBackend,
            Some((b"X-Request-Id", b"abc")),
            true,
            &mut out,
        );
        let s = String::from_utf8(out).unwrap();
        assert!(s.starts_with("HTTP/1.1 503 Service Unavailable\r\n"), "{s}");
        assert!(s.contains("\r\nRetry-After: 1\r\n"), "{s}");
        assert!(s.contains("\r\nX-Request-Id: abc\r\n"), "{s}");
        assert!(s.contains("\r\nConnection: close\r\n\r\n"), "{s}");
        assert!(s.ends_with(ProxyError::NoBackend.body()));
        assert_eq!(n, ProxyError::NoBackend.body().len());
        assert!(s.contains(&format!("Content-Length: {n}\r\n")));
    }
}
