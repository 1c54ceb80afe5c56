//! Phase 1: what the other phases need from a request head, taken before the head's
//! bytes are consumed. Pure (the request-id generator is passed in); no allocation:
//! values live inline.

use std::net::IpAddr;

use crate::conn::Client;
use crate::h1::{InlineBytes, IpText, RequestHead};
use crate::headers;
use crate::sock::ClientIo;
use crate::{HashKey, LimitKey, ProxySettings};

/// Longest request id taken from a client; a longer one is replaced by drove's own.
/// (UUIDs are 36 bytes, nginx's `$request_id` 32; the value lives inline in every
/// request's context, so its size is paid on every request.)
const MAX_REQUEST_ID: usize = 64;

/// Longest sticky cookie value looked at (drove's own tokens are 16 hex digits).
const MAX_STICKY: usize = 32;

/// What was learnt from a request head.
pub(crate) struct RequestInfo {
    pub(crate) http10: bool,
    /// The client's IP (the peer, or from trusted X-Forwarded-For) and as text.
    pub(crate) client_ip: IpAddr,
    pub(crate) client_ip_text: IpText,
    /// The request id (propagated or generated), when the header is configured.
    pub(crate) request_id: Option<InlineBytes<MAX_REQUEST_ID>>,
    /// The sticky cookie's value.
    pub(crate) sticky: Option<InlineBytes<MAX_STICKY>>,
    /// The `hash` algorithm's key.
    pub(crate) hash: Option<u64>,
    /// Index of the rate-limited route that matches, and the key it counts by.
    pub(crate) route: Option<(usize, u64)>,
    /// The allowed protocol the request asks to switch to, and its WebSocket key.
    pub(crate) upgrade: Option<(InlineBytes<32>, Option<InlineBytes<32>>)>,
    /// A HEAD request (its response has no body to compress).
    pub(crate) head_method: bool,
    /// Response compression for this path and `Accept-Encoding`, when on.
    pub(crate) compress: Option<super::compress::Chosen>,
}

impl RequestInfo {
    /// The sticky cookie as text.
    pub(crate) fn sticky_str(&self) -> Option<&str> {
        self.sticky
            .as_ref()
            .and_then(|v| std::str::from_utf8(v.as_bytes()).ok())
    }

    /// For an answer to a head that could not be parsed: only the peer is known.
    pub(crate) fn unparsed<S: ClientIo>(client: &Client<S>) -> RequestInfo {
        RequestInfo {
            http10: false,
            client_ip: client.peer,
            client_ip_text: client.peer_ip,
            request_id: None,
            sticky: None,
            hash: None,
            route: None,
            upgrade: None,
            head_method: false,
            compress: None,
        }
    }
}

/// A request head as the extraction reads it: HTTP/1.1 bytes with offsets, or an HTTP/2
/// header map.
trait HeadView {
    /// The first value of header `name` (lowercase).
    fn header(&self, name: &[u8]) -> Option<&[u8]>;
    /// The cookie `name`'s value.
    fn cookie(&self, name: &[u8]) -> Option<&[u8]>;
    /// The `Accept-Encoding` values.
    fn accept_encoding(&self) -> impl Iterator<Item = &[u8]>;
}

impl HeadView for (&[u8], &RequestHead) {
    fn header(&self, name: &[u8]) -> Option<&[u8]> {
        self.1.header(self.0, name)
    }
    fn cookie(&self, name: &[u8]) -> Option<&[u8]> {
        headers::cookie(self.0, self.1, name)
    }
    fn accept_encoding(&self) -> impl Iterator<Item = &[u8]> {
        self.1.headers_named(self.0, b"accept-encoding")
    }
}

impl HeadView for http::HeaderMap {
    fn header(&self, name: &[u8]) -> Option<&[u8]> {
        self.get(http::HeaderName::from_bytes(name).ok()?)
            .map(|v| v.as_bytes())
    }
    fn cookie(&self, name: &[u8]) -> Option<&[u8]> {
        headers::cookie_in(
            self.get_all(http::header::COOKIE)
                .iter()
                .map(|v| v.as_bytes()),
            name,
        )
    }
    fn accept_encoding(&self) -> impl Iterator<Item = &[u8]> {
        self.get_all(http::header::ACCEPT_ENCODING)
            .iter()
            .map(|v| v.as_bytes())
    }
}

/// What every protocol's request contributes the same way — the request id, the sticky
/// cookie, the hash key, the route and its limit key, compression — built in place
/// (the info is moved as little as possible: it is read on every request).
fn common(
    settings: &ProxySettings,
    head: &impl HeadView,
    path: &[u8],
    client_ip: IpAddr,
    client_ip_text: IpText,
    new_request_id: impl FnOnce() -> [u8; 16],
) -> RequestInfo {
    let request_id = settings.request_id_header.as_ref().map(|name| {
        match head.header(name.as_str().as_bytes()) {
            Some(v) if !v.is_empty() && v.len() <= MAX_REQUEST_ID => InlineBytes::new(v),
            _ => InlineBytes::new(&new_request_id()),
        }
    });
    let sticky = settings
        .sticky
        .as_ref()
        .and_then(|s| head.cookie(s.name.as_bytes()))
        .filter(|v| v.len() <= MAX_STICKY)
        .map(InlineBytes::new);
    let hash = match &settings.hash_key {
        None => None,
        Some(HashKey::Header(name)) => head
            .header(name.as_str().as_bytes())
            .map(drove_balancer::hash_bytes),
        Some(HashKey::Cookie(name)) => head.cookie(name.as_bytes()).map(drove_balancer::hash_bytes),
        Some(HashKey::Path) => Some(drove_balancer::hash_bytes(path)),
        Some(HashKey::ClientIp) => Some(drove_balancer::hash_ip(client_ip)),
    };
    // Routes are sorted longest prefix first: the first match is the most specific.
    let route = settings
        .routes
        .iter()
        .position(|r| path.starts_with(r.prefix.as_bytes()))
        .map(|i| {
            let key = match &settings.routes[i].key {
                LimitKey::ClientIp => drove_balancer::hash_ip(client_ip),
                LimitKey::Header(name) => head
                    .header(name.as_str().as_bytes())
                    .map_or(0, drove_balancer::hash_bytes),
                LimitKey::Cookie(name) => head
                    .cookie(name.as_bytes())
                    .map_or(0, drove_balancer::hash_bytes),
            };
            (i, key)
        });
    let compress = super::compress::choose(settings, path, head.accept_encoding());
    RequestInfo {
        http10: false,
        client_ip,
        client_ip_text,
        request_id,
        sticky,
        hash,
        route,
        upgrade: None,
        head_method: false,
        compress,
    }
}

/// Reads everything the phases need from `head` (its bytes are at the start of the
/// client's buffer).
pub(crate) fn extract<S: ClientIo>(
    settings: &ProxySettings,
    client: &Client<S>,
    head: &RequestHead,
    new_request_id: impl FnOnce() -> [u8; 16],
) -> RequestInfo {
    let buf = client.pending();
    let client_ip = if client.trusted {
        headers::client_ip(buf, head, client.peer, &settings.trusted_proxies)
    } else {
        client.peer
    };
    let client_ip_text = if client_ip == client.peer {
        client.peer_ip
    } else {
        IpText::of(client_ip)
    };
    let mut info = common(
        settings,
        &(buf, head),
        head.path(buf),
        client_ip,
        client_ip_text,
        new_request_id,
    );
    info.http10 = head.http10;
    info.head_method = head.method == crate::h1::Method::Head;
    info.upgrade = head.upgrade.map(|(s, e)| {
        (
            InlineBytes::new(&buf[s..e]),
            head.websocket_key
                .map(|(s, e)| InlineBytes::new(&buf[s..e])),
        )
    });
    info
}

/// What the phases need from an HTTP/2 request (`peer`: the connection's client side).
pub(crate) fn extract_h2(
    settings: &ProxySettings,
    peer: &crate::http2::Peer,
    parts: &http::request::Parts,
    new_request_id: impl FnOnce() -> [u8; 16],
) -> RequestInfo {
    let client_ip = if peer.trusted {
        let values: Vec<&[u8]> = parts
            .headers
            .get_all("x-forwarded-for")
            .iter()
            .map(|v| v.as_bytes())
            .collect();
        headers::client_ip_in(values.into_iter().rev(), peer.ip, &settings.trusted_proxies)
    } else {
        peer.ip
    };
    let client_ip_text = if client_ip == peer.ip {
        peer.ip_text
    } else {
        IpText::of(client_ip)
    };
    let path = parts.uri.path().as_bytes();
    let mut info = common(
        settings,
        &parts.headers,
        path,
        client_ip,
        client_ip_text,
        new_request_id,
    );
    info.head_method = parts.method == http::Method::HEAD;
    info
}

impl<const N: usize> std::fmt::Debug for InlineBytes<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(self.as_bytes()))
    }
}
