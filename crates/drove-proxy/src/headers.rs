//! Header helpers used by several phases: cookies, the client address behind trusted
//! proxies (X-Forwarded-For), the trusted networks themselves ([`Cidr`], from drove-net,
//! with [`drove_net::canonical_ip`]), and trailers: which fields may cross drove
//! ([`allowed_trailer`]) and a backend's trailer section held and parsed ([`Trailers`]).

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

/// Fields that must not be trailers (RFC 9110 §6.5.1): a recipient needs them before the
/// content, so a trailer holding one is at best ignored and at worst merged into the
/// header section by a backend or client after drove framed, routed and authorised on
/// the real one (a client acting on a trailing `content-length` or `set-cookie` would act
/// on what drove did not check). They are dropped from trailers whichever way they go.
/// Lowercase; compared ignoring case.
const NOT_TRAILERS: &[&[u8]] = &[
    // framing, connection
    b"connection",
    b"content-length",
    b"http2-settings",
    b"keep-alive",
    b"proxy-connection",
    b"te",
    b"trailer",
    b"transfer-encoding",
    b"upgrade",
    // routing, and who the client is (drove sets these itself)
    b"forwarded",
    b"host",
    b"max-forwards",
    b"x-forwarded-for",
    b"x-forwarded-host",
    b"x-forwarded-proto",
    b"x-real-ip",
    // authentication, cookies
    b"authorization",
    b"cookie",
    b"proxy-authenticate",
    b"proxy-authorization",
    b"set-cookie",
    b"www-authenticate",
    // request modifiers
    b"expect",
    b"if-match",
    b"if-modified-since",
    b"if-none-match",
    b"if-range",
    b"if-unmodified-since",
    b"range",
    // response control data
    b"age",
    b"cache-control",
    b"date",
    b"expires",
    b"location",
    b"pragma",
    b"retry-after",
    b"vary",
    b"warning",
    // how to process the content
    b"content-encoding",
    b"content-location",
    b"content-range",
    b"content-type",
];

/// Whether a field may travel as a trailer.
pub(crate) fn allowed_trailer(name: &[u8]) -> bool {
    !NOT_TRAILERS.iter().any(|n| crate::h1::eq(name, n))
}

/// Why a trailer section is not passed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BadTrailers {
    /// A line that is not `token ":" value` (no colon, an empty or invalid name, an
    /// obs-fold continuation, a control character or a bare CR or LF).
    Malformed,
    /// Over its limit (`max_header_size`, like a head).
    TooLarge,
}

/// A backend's trailer section as it arrives: the field lines the chunked decoder
/// delimited (`h1::Part::Trailer`, each ending in CRLF), held until the body ends. Only
/// a body with trailers creates one: a body without allocates nothing for them. A
/// section over `limit` bytes stops being held and is dropped whole, as a malformed one
/// is; the body itself still ends cleanly.
#[derive(Debug)]
pub(crate) struct Trailers {
    lines: Vec<u8>,
    limit: usize,
    too_large: bool,
}

impl Trailers {
    /// A section of at most `limit` bytes (`max_header_size`).
    pub(crate) fn new(limit: usize) -> Trailers {
        Trailers {
            lines: Vec::new(),
            limit,
            too_large: false,
        }
    }

    /// Appends trailer bytes as the decoder delimited them.
    pub(crate) fn push(&mut self, bytes: &[u8]) {
        if self.too_large {
            return;
        }
        if self.lines.len() + bytes.len() > self.limit {
            self.too_large = true;
            self.lines = Vec::new();
            return;
        }
        self.lines.extend_from_slice(bytes);
    }

    /// The fields that may pass, in order; an error when the section is dropped whole
    /// (one bad line makes the others' meaning doubtful).
    pub(crate) fn fields(&self) -> Result<impl Iterator<Item = (&[u8], &[u8])> + '_, BadTrailers> {
        if self.too_large {
            return Err(BadTrailers::TooLarge);
        }
        trailer_fields(&self.lines)
    }

    /// [`Trailers::fields`], logging (at debug: a backend's business, not drove's) why a
    /// section was dropped. `None`: nothing to pass.
    pub(crate) fn passed(&self) -> Option<impl Iterator<Item = (&[u8], &[u8])> + '_> {
        match self.fields() {
            Ok(f) => Some(f),
            Err(e) => {
                tracing::debug!(reason = ?e, "a backend's trailer section was dropped");
                None
            }
        }
    }

    /// The fields that may pass as HTTP/2 trailers (names lowercased): empty when the
    /// section is dropped.
    pub(crate) fn header_map(&self) -> http::HeaderMap {
        map_of(self.passed().into_iter().flatten())
    }
}

/// Parses a trailer section (`name: value` lines, each ending in CRLF, without the
/// empty line that ends it) and yields the fields that may pass ([`allowed_trailer`]),
/// values without surrounding whitespace. Every line is checked before any field is
/// yielded: a malformed one rejects the section.
pub(crate) fn trailer_fields(
    section: &[u8],
) -> Result<impl Iterator<Item = (&[u8], &[u8])> + '_, BadTrailers> {
    if !section.is_empty() && !section.ends_with(b"\r\n") {
        return Err(BadTrailers::Malformed);
    }
    // Lines end at LF; each must end in CRLF (a bare LF leaves one without its CR). A
    // bare CR stays inside a line, where `field` refuses it.
    let lines = || {
        section
            .strip_suffix(b"\n")
            .into_iter()
            .flat_map(|s| s.split(|&b| b == b'\n'))
    };
    for line in lines() {
        field(line.strip_suffix(b"\r").ok_or(BadTrailers::Malformed)?)?;
    }
    Ok(lines()
        .filter_map(|l| field(l.strip_suffix(b"\r")?).ok())
        .filter(|(name, _)| allowed_trailer(name)))
}

/// Fields as HTTP/2 trailers, names lowercased.
fn map_of<'a>(fields: impl Iterator<Item = (&'a [u8], &'a [u8])>) -> http::HeaderMap {
    let mut map = http::HeaderMap::new();
    for (name, value) in fields {
        // The parser already refused what HTTP/2 could not carry.
        if let (Ok(n), Ok(v)) = (
            http::HeaderName::from_bytes(name),
            http::HeaderValue::from_bytes(value),
        ) {
            map.append(n, v);
        }
    }
    map
}

/// One field line (without its CRLF): `(name, value)`.
fn field(line: &[u8]) -> Result<(&[u8], &[u8]), BadTrailers> {
    let colon = line
        .iter()
        .position(|&b| b == b':')
        .ok_or(BadTrailers::Malformed)?;
    let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
    // A name is a token (RFC 9110 §5.6.2); a line starting with SP or HT (obs-fold)
    // has none.
    let tchar = |b: &u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(b);
    if name.is_empty() || !name.iter().all(tchar) {
        return Err(BadTrailers::Malformed);
    }
    // field-value: VCHAR, obs-text, SP and HT (RFC 9110 §5.5): no CR, LF, NUL or other
    // control character.
    if value.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return Err(BadTrailers::Malformed);
    }
    Ok((name, value))
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

    fn passed(section: &[u8]) -> Result<Vec<(String, String)>, BadTrailers> {
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        trailer_fields(section).map(|f| f.map(|(n, v)| (text(n), text(v))).collect())
    }

    #[test]
    fn trailer_fields_pass_filtered_in_order() {
        let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
            v.iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(passed(b""), Ok(vec![]));
        assert_eq!(
            passed(b"grpc-status: 0\r\ngrpc-message:\tall good \r\nX-Sum:abc\r\n"),
            Ok(pairs(&[
                ("grpc-status", "0"),
                ("grpc-message", "all good"),
                ("X-Sum", "abc")
            ]))
        );
        // Forbidden ones go, whatever their case; the rest stays.
        assert_eq!(
            passed(
                b"Content-Length: 5\r\ngrpc-status: 0\r\nTRANSFER-ENCODING: chunked\r\nhost: evil\r\nAuthorization: x\r\nset-cookie: a=1\r\ncontent-type: text/html\r\ncontent-encoding: gzip\r\nconnection: close\r\nte: trailers\r\ntrailer: x\r\nx-forwarded-for: 1.2.3.4\r\n"
            ),
            Ok(pairs(&[("grpc-status", "0")]))
        );
        assert_eq!(passed(b"x-empty:\r\n"), Ok(pairs(&[("x-empty", "")])));
        // obs-text is a valid value byte.
        assert_eq!(passed(b"x: caf\xc3\xa9\r\n").unwrap().len(), 1);
    }

    #[test]
    fn a_malformed_trailer_line_rejects_the_section() {
        for bad in [
            &b"no colon here\r\n"[..],
            b": no name\r\n",
            b"bad name: 1\r\n",
            b"x-a: 1\r\n folded continuation\r\n",
            b"\tx: 1\r\n",
            b"x-a: 1\ny: 2\r\n",
            b"x-a: a\rb\r\n",
            b"x-a: a\x00b\r\n",
            b"x-a: a\x7fb\r\n",
            b"x-a: 1",
            b"x-a: 1\n",
            b"grpc-status: 0\r\n(x): 1\r\n",
            b":status: 200\r\n",
        ] {
            assert_eq!(
                passed(bad),
                Err(BadTrailers::Malformed),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn a_trailer_section_is_held_up_to_its_bound() {
        let mut t = Trailers::new(64);
        t.push(b"grpc-status: 0\r\n");
        t.push(b"x-sum: 1\r\n");
        assert_eq!(t.fields().unwrap().count(), 2);
        assert_eq!(t.header_map().len(), 2);
        let mut t = Trailers::new(64);
        t.push(b"grpc-status: 0\r\n");
        t.push(format!("x-big: {}\r\n", "a".repeat(50)).as_bytes());
        t.push(b"x-sum: 1\r\n");
        assert_eq!(t.fields().err(), Some(BadTrailers::TooLarge));
        assert!(t.lines.capacity() == 0, "no longer held");
        assert!(t.passed().is_none());
        assert!(t.header_map().is_empty());
    }

    fn trailer_map(section: &[u8]) -> http::HeaderMap {
        let mut t = Trailers::new(1024);
        t.push(section);
        t.header_map()
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
