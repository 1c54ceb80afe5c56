//! Header helpers used by several phases: cookies, the client address behind
//! trusted proxies (X-Forwarded-For), and the trusted networks themselves ([`Cidr`], from
//! drove-net, with [`drove_net::canonical_ip`]), and which response trailers may pass.

use std::net::IpAddr;

pub use drove_net::Cidr;

use crate::h1::RequestHead;

/// The cookie `name`'s value in the request's Cookie headers (quotes removed).
pub(crate) fn cookie<'b>(buf: &'b [u8], head: &'b RequestHead, name: &[u8]) -> Option<&'b [u8]> {
    cookie_in(head.headers_named(buf, b"cookie"), name)
}

/// The cookie `name`'s value in these Cookie header values (HTTP/2 may split them).
pub(crate) fn cookie_in<'b>(
    values: impl Iterator<Item = &'b [u8]>,
    name: &[u8],
) -> Option<&'b [u8]> {
    for value in values {
        for pair in value.split(|&b| b == b';') {
            let pair = pair.trim_ascii_start();
            if let Some(v) = pair.strip_prefix(name).and_then(|r| r.strip_prefix(b"=")) {
                let v = v.trim_ascii_end();
                return Some(
                    v.strip_prefix(b"\"")
                        .and_then(|v| v.strip_suffix(b"\""))
                        .unwrap_or(v),
                );
            }
        }
    }
    None
}

/// The client's IP: the peer, or — from a trusted proxy — the right-most address of
/// X-Forwarded-For that is not itself trusted (nginx's `real_ip_recursive on`).
pub(crate) fn client_ip(buf: &[u8], head: &RequestHead, peer: IpAddr, trusted: &[Cidr]) -> IpAddr {
    // Walk the hops right to left without collecting them: the last header's last hop
    // first (several X-Forwarded-For headers read as one comma-separated list).
    let values = head
        .headers
        .iter()
        .rev()
        .filter(|((s, e), _)| crate::h1::eq(&buf[*s..*e], b"x-forwarded-for"))
        .map(|(_, (s, e))| &buf[*s..*e]);
    client_ip_in(values, peer, trusted)
}

/// [`client_ip`] over X-Forwarded-For values, last header first.
pub(crate) fn client_ip_in<'b>(
    values_last_first: impl Iterator<Item = &'b [u8]>,
    peer: IpAddr,
    trusted: &[Cidr],
) -> IpAddr {
    let values = values_last_first;
    let mut ip = peer;
    for hop in values.flat_map(|v| v.rsplit(|&b| b == b',')) {
        match std::str::from_utf8(hop.trim_ascii())
            .ok()
            .and_then(|s| s.parse::<IpAddr>().ok())
        {
            Some(addr) => {
                ip = drove_net::canonical_ip(addr);
                if !trusted.iter().any(|c| c.contains(ip)) {
                    break;
                }
            }
            None => break,
        }
    }
    ip
}

/// Fields that must not be trailers (RFC 9110 §6.5.1): framing, routing, request
/// modifiers, authentication, response control data and what says how to process the
/// content. A backend's trailer section loses them on its way to an HTTP/2 client (a
/// client acting on a trailing `content-length` or `set-cookie` would act on what drove
/// did not check).
const NOT_TRAILERS: &[&[u8]] = &[
    b"age",
    b"authorization",
    b"cache-control",
    b"connection",
    b"content-encoding",
    b"content-length",
    b"content-range",
    b"content-type",
    b"cookie",
    b"date",
    b"expect",
    b"expires",
    b"host",
    b"keep-alive",
    b"location",
    b"max-forwards",
    b"pragma",
    b"proxy-authenticate",
    b"proxy-authorization",
    b"proxy-connection",
    b"range",
    b"retry-after",
    b"set-cookie",
    b"te",
    b"trailer",
    b"transfer-encoding",
    b"upgrade",
    b"vary",
    b"warning",
    b"www-authenticate",
];

/// Whether a field may travel as a trailer.
pub(crate) fn allowed_trailer(name: &[u8]) -> bool {
    !NOT_TRAILERS.iter().any(|n| n.eq_ignore_ascii_case(name))
}

/// A chunked body's trailer section (`name: value` CRLF lines, as
/// [`crate::h1::Chunked::trailers`] keeps it) as HTTP/2 trailers: the fields that may be
/// trailers, names lowercased. A section that does not parse as header lines yields no
/// trailers at all rather than a part of them.
pub(crate) fn trailer_map(section: &[u8]) -> http::HeaderMap {
    let mut map = http::HeaderMap::new();
    if section.is_empty() {
        return map;
    }
    // httparse wants the blank line that ends a header block.
    let mut block = Vec::with_capacity(section.len() + 2);
    block.extend_from_slice(section);
    block.extend_from_slice(b"\r\n");
    let mut fields = [httparse::EMPTY_HEADER; 32];
    let Ok(httparse::Status::Complete((_, fields))) = httparse::parse_headers(&block, &mut fields)
    else {
        return map;
    };
    for f in fields.iter() {
        if !allowed_trailer(f.name.as_bytes()) {
            continue;
        }
        let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(f.name.as_bytes()),
            http::HeaderValue::from_bytes(f.value),
        ) else {
            return http::HeaderMap::new();
        };
        map.append(name, value);
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::h1::{parse_request, RequestLimits};

    fn head(raw: &[u8]) -> RequestHead {
        parse_request(
            raw,
            &RequestLimits {
                max_body: 0,
                upgrades: &[],
            },
        )
        .unwrap()
        .unwrap()
    }

    #[test]
    fn cookies_are_found_in_any_cookie_header() {
        let raw = b"GET / HTTP/1.1\r\nHost: x\r\nCookie: a=1; drove_sticky=\"abc\"\r\nCookie: b=2\r\n\r\n";
        let h = head(raw);
        assert_eq!(cookie(raw, &h, b"drove_sticky"), Some(&b"abc"[..]));
        assert_eq!(cookie(raw, &h, b"b"), Some(&b"2"[..]));
        assert_eq!(cookie(raw, &h, b"drove"), None, "a prefix is not a name");
    }

    #[test]
    fn forwarded_for_is_believed_only_through_trusted_hops() {
        let raw = b"GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 6.6.6.6, 203.0.113.9\r\nX-Forwarded-For: 10.0.0.2\r\n\r\n";
        let h = head(raw);
        let trusted: Vec<Cidr> = vec!["10.0.0.0/8".parse().unwrap()];
        let peer: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(
            client_ip(raw, &h, peer, &trusted),
            "203.0.113.9".parse::<IpAddr>().unwrap(),
            "right-most untrusted hop; 6.6.6.6 was written by the client"
        );
        let garbage = b"GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: nope\r\n\r\n";
        assert_eq!(client_ip(garbage, &head(garbage), peer, &trusted), peer);
    }

    #[test]
    fn a_trailer_section_keeps_only_the_fields_that_may_be_trailers() {
        let m = trailer_map(
            b"grpc-status: 0\r\nContent-Length: 5\r\nX-Sum:  abc \r\nSet-Cookie: a=b\r\n",
        );
        let got: Vec<(&str, &str)> = m
            .iter()
            .map(|(n, v)| (n.as_str(), v.to_str().unwrap()))
            .collect();
        assert_eq!(got, [("grpc-status", "0"), ("x-sum", "abc")]);
        assert!(trailer_map(b"").is_empty());
        assert!(
            trailer_map(b"ok: 1\r\nno colon\r\n").is_empty(),
            "a section that does not parse passes nothing"
        );
        assert!(!allowed_trailer(b"TRANSFER-ENCODING"));
        assert!(allowed_trailer(b"server-timing"));
    }
}
