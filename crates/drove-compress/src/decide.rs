//! Whether a response is compressed, and how its head changes: a pure function of the
//! request method, the negotiated encoding, the response status and its header fields.
//!
//! A response is **eligible** when all of these hold (the first that fails is the
//! [`Skip`] reason):
//! - the request is not `HEAD` (its answer has no body to compress; nginx skips it too);
//! - the status has a body that is the whole representation: not 1xx (101 included), 204,
//!   205, 206 or 304, and there is no `Content-Range` (a 416 carries one);
//! - no `Content-Encoding` (never re-encode: the backend compressed it, or chose not to
//!   with an explicit coding) and no transfer coding other than `chunked`;
//! - no `no-transform` directive in `Cache-Control` (RFC 9111 §5.2.2.6);
//! - a `Content-Type` that one of the settings' `types` matches (no type: not compressed,
//!   it could be anything);
//! - a `Content-Length`, when there is one, of at least `min_size` (and not 0); a body
//!   of unknown length (chunked, or ended by close) is compressed whatever its size.
//!
//! An eligible response gets `Vary: Accept-Encoding` (merged into an existing `Vary`)
//! even when this client accepted no encoding, so that a shared cache never serves the
//! plain body to a client that would get the compressed one or the reverse. It is
//! compressed when the client accepted an encoding: `Content-Encoding` is set,
//! `Content-Length` dropped (the proxy frames the body with chunked encoding on
//! HTTP/1.1, DATA frames on HTTP/2), a strong `ETag` `"x"` becomes weak `W/"x"` (the
//! bytes differ from the backend's, RFC 9110 §8.8.3; nginx does the same), and
//! `Accept-Ranges` is dropped (byte ranges of a compressed stream cannot be served).
//!
//! A `304 Not Modified` must carry the `Vary` and `ETag` a 200 would have had (RFC 9110
//! §15.4.5): unless its own fields say it would not have been compressed (a listed
//! `Content-Type` missing from `types`, `Content-Encoding`, `no-transform`), it gets
//! `Vary: Accept-Encoding` and, if the client accepted an encoding, the weakened ETag.

use std::borrow::Cow;

use crate::encoding::Encoding;
use crate::settings::Settings;

/// What to do with one response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Compress the body with this encoding, or why not.
    pub verdict: Verdict,
    /// The header changes to make, whatever the verdict (a response that is not
    /// compressed may still get `Vary`).
    pub edits: HeadEdits,
}

/// Compress or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Compress the body with this encoding.
    Compress(Encoding),
    /// Leave the body as it is.
    Skip(Skip),
}

/// Why a response is not compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// The request is `HEAD`.
    Head,
    /// A status without a body (1xx, 204, 205, 304) or with a partial one (206).
    Status(u16),
    /// A `Content-Range` field: the body is a part of the representation.
    ContentRange,
    /// The response has a `Content-Encoding` already.
    AlreadyEncoded,
    /// A transfer coding other than `chunked`.
    TransferCoded,
    /// `Cache-Control: no-transform`.
    NoTransform,
    /// No `Content-Type`.
    NoContentType,
    /// A `Content-Type` that no pattern of `types` matches.
    Type,
    /// A `Content-Length` below `min_size`, or 0.
    TooSmall,
    /// A `Content-Length` that is not a number.
    BadLength,
    /// Eligible, but the client accepted no encoding (the response still gets `Vary`).
    NotAccepted,
}

/// Header changes to make to a response head. Apply them by dropping every field for
/// which [`HeadEdits::removes`] is true, then appending [`HeadEdits::additions`];
/// [`HeadEdits::apply_to_map`] and [`HeadEdits::rewrite_http1_fields`] do exactly that
/// for an `http::HeaderMap` and for raw HTTP/1.1 field lines. Framing is the caller's:
/// with `Content-Length` gone, an HTTP/1.1 response needs `Transfer-Encoding: chunked`
/// (or a close-delimited body for an HTTP/1.0 client).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HeadEdits {
    /// Replace every `Vary` field by one with this value.
    vary: Option<Cow<'static, [u8]>>,
    /// Replace the `ETag` field by this value (its weak form), or drop it if empty
    /// (it was malformed).
    etag: Option<Vec<u8>>,
    /// Set `Content-Encoding`, drop `Content-Length` and `Accept-Ranges`.
    content_encoding: Option<Encoding>,
}

const VARY: &str = "vary";
const ETAG: &str = "etag";
const CONTENT_ENCODING: &str = "content-encoding";
const CONTENT_LENGTH: &str = "content-length";
const ACCEPT_RANGES: &str = "accept-ranges";
const ACCEPT_ENCODING: &[u8] = b"Accept-Encoding";

impl HeadEdits {
    /// No change.
    pub fn is_empty(&self) -> bool {
        self.vary.is_none() && self.etag.is_none() && self.content_encoding.is_none()
    }

    /// Whether a field called `name` (any case) is to be dropped from the head.
    pub fn removes(&self, name: &[u8]) -> bool {
        let is = |n: &str| name.eq_ignore_ascii_case(n.as_bytes());
        (self.vary.is_some() && is(VARY))
            || (self.etag.is_some() && is(ETAG))
            || (self.content_encoding.is_some()
                && (is(CONTENT_LENGTH) || is(ACCEPT_RANGES) || is(CONTENT_ENCODING)))
    }

    /// The fields to append, as (lowercase name, value).
    pub fn additions(&self) -> impl Iterator<Item = (&'static str, &[u8])> {
        let vary = self.vary.as_deref().map(|v| (VARY, v));
        let etag = self
            .etag
            .as_deref()
            .filter(|v| !v.is_empty())
            .map(|v| (ETAG, v));
        let ce = self
            .content_encoding
            .map(|e| (CONTENT_ENCODING, e.name().as_bytes()));
        vary.into_iter().chain(etag).chain(ce)
    }

    /// The encoding announced in `Content-Encoding`, if the body is compressed.
    pub fn content_encoding(&self) -> Option<Encoding> {
        self.content_encoding
    }

    /// Applies the edits to an HTTP/2 (or any `http`) header map.
    pub fn apply_to_map(&self, map: &mut http::HeaderMap) {
        let names: Vec<http::HeaderName> = map
            .keys()
            .filter(|n| self.removes(n.as_str().as_bytes()))
            .cloned()
            .collect();
        for n in names {
            map.remove(n);
        }
        for (name, value) in self.additions() {
            // Values come from the response's own valid fields or from constants, so
            // they are valid field values.
            if let Ok(v) = http::HeaderValue::from_bytes(value) {
                map.append(http::HeaderName::from_static(name), v);
            }
        }
    }

    /// Copies HTTP/1.1 field lines (`Name: value\r\n`..., without the start line and
    /// without the blank line that ends the head) from `fields` to `out`, dropping the
    /// removed ones and appending the additions. Names keep their spelling; added
    /// fields are written in their usual capitalisation.
    pub fn rewrite_http1_fields(&self, fields: &[u8], out: &mut Vec<u8>) {
        for line in fields.split_inclusive(|&b| b == b'\n') {
            let name = line
                .iter()
                .position(|&b| b == b':')
                .map_or(&line[..0], |i| &line[..i]);
            if !self.removes(name.trim_ascii()) {
                out.extend_from_slice(line);
            }
        }
        self.write_http1_additions(out);
    }

    /// Appends the added fields as HTTP/1.1 lines (`Vary: ...\r\n`).
    pub fn write_http1_additions(&self, out: &mut Vec<u8>) {
        for (name, value) in self.additions() {
            out.extend_from_slice(match name {
                VARY => b"Vary: ".as_slice(),
                ETAG => b"ETag: ",
                _ => b"Content-Encoding: ",
            });
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        }
    }
}

/// The response fields the decision reads, gathered in one pass.
#[derive(Default)]
struct Fields<'h> {
    content_type: Option<&'h [u8]>,
    content_length: Option<&'h [u8]>,
    content_range: bool,
    content_encoding: bool,
    transfer_coded: bool,
    no_transform: bool,
    vary: Vec<&'h [u8]>,
    etag: Option<&'h [u8]>,
}

impl<'h> Fields<'h> {
    fn read(headers: impl IntoIterator<Item = (&'h [u8], &'h [u8])>) -> Fields<'h> {
        let mut f = Fields::default();
        for (name, value) in headers {
            let is = |n: &str| name.eq_ignore_ascii_case(n.as_bytes());
            if is("content-type") {
                f.content_type = Some(value);
            } else if is(CONTENT_LENGTH) {
                f.content_length = Some(value);
            } else if is("content-range") {
                f.content_range = true;
            } else if is(CONTENT_ENCODING) {
                f.content_encoding = true;
            } else if is("transfer-encoding") {
                f.transfer_coded |= list(value).any(|c| !c.eq_ignore_ascii_case(b"chunked"));
            } else if is("cache-control") {
                f.no_transform |= list(value).any(|d| {
                    let directive = d.split(|&b| b == b'=').next().unwrap_or(d);
                    directive.trim_ascii().eq_ignore_ascii_case(b"no-transform")
                });
            } else if is(VARY) {
                f.vary.push(value);
            } else if is(ETAG) {
                f.etag = Some(value);
            }
        }
        f
    }
}

/// The non-empty elements of a comma-separated field value, trimmed.
fn list(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|e| !e.is_empty())
}

impl Settings {
    /// Decides for one response; see the module doc of `decide` for the rules.
    /// `method` is the request's, `encoding` what [`Settings::negotiate`] chose for its
    /// `Accept-Encoding`, `headers` the response's fields as (name, value).
    pub fn decide<'h>(
        &self,
        method: &[u8],
        encoding: Option<Encoding>,
        status: u16,
        headers: impl IntoIterator<Item = (&'h [u8], &'h [u8])>,
    ) -> Decision {
        let skip = |why| Decision {
            verdict: Verdict::Skip(why),
            edits: HeadEdits::default(),
        };
        if method == b"HEAD" {
            return skip(Skip::Head);
        }
        let f = Fields::read(headers);
        if status == 304 {
            let would_compress = !f.content_encoding
                && !f.no_transform
                && f.content_type.is_none_or(|t| self.compresses_type(t));
            let edits = if would_compress {
                HeadEdits {
                    vary: merged_vary(&f.vary),
                    etag: encoding.and_then(|_| weak_etag(f.etag)),
                    content_encoding: None,
                }
            } else {
                HeadEdits::default()
            };
            return Decision {
                verdict: Verdict::Skip(Skip::Status(status)),
                edits,
            };
        }
        if status < 200 || (204..=206).contains(&status) {
            return skip(Skip::Status(status));
        }
        if f.content_range {
            return skip(Skip::ContentRange);
        }
        if f.content_encoding {
            return skip(Skip::AlreadyEncoded);
        }
        if f.transfer_coded {
            return skip(Skip::TransferCoded);
        }
        if f.no_transform {
            return skip(Skip::NoTransform);
        }
        match f.content_type {
            None => return skip(Skip::NoContentType),
            Some(t) if !self.compresses_type(t) => return skip(Skip::Type),
            Some(_) => {}
        }
        if let Some(len) = f.content_length {
            match std::str::from_utf8(len.trim_ascii())
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
            {
                None => return skip(Skip::BadLength),
                Some(n) if n == 0 || n < self.min_size() => return skip(Skip::TooSmall),
                Some(_) => {}
            }
        }
        let vary = merged_vary(&f.vary);
        match encoding {
            None => Decision {
                verdict: Verdict::Skip(Skip::NotAccepted),
                edits: HeadEdits {
                    vary,
                    etag: None,
                    content_encoding: None,
                },
            },
            Some(e) => Decision {
                verdict: Verdict::Compress(e),
                edits: HeadEdits {
                    vary,
                    etag: weak_etag(f.etag),
                    content_encoding: Some(e),
                },
            },
        }
    }

    /// [`Settings::decide`] for an `http` response head (HTTP/2).
    pub fn decide_map(
        &self,
        method: &http::Method,
        encoding: Option<Encoding>,
        status: http::StatusCode,
        headers: &http::HeaderMap,
    ) -> Decision {
        self.decide(
            method.as_str().as_bytes(),
            encoding,
            status.as_u16(),
            headers
                .iter()
                .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes())),
        )
    }

    /// The encoding this client gets (see the `negotiate` module): `values` are the
    /// request's `Accept-Encoding` field values, none if it has no such field.
    pub fn negotiate<'a>(&self, values: impl IntoIterator<Item = &'a [u8]>) -> Option<Encoding> {
        crate::negotiate::negotiate(self.algorithms(), values)
    }
}

/// The one `Vary` value replacing the existing ones, or `None` if they already cover
/// Accept-Encoding (or `*`, which covers everything).
fn merged_vary(existing: &[&[u8]]) -> Option<Cow<'static, [u8]>> {
    let mut any = false;
    for v in existing {
        for e in list(v) {
            any = true;
            if e == b"*" || e.eq_ignore_ascii_case(ACCEPT_ENCODING) {
                return None;
            }
        }
    }
    if !any {
        return Some(Cow::Borrowed(ACCEPT_ENCODING));
    }
    let mut merged = Vec::new();
    for e in existing.iter().flat_map(|v| list(v)) {
        merged.extend_from_slice(e);
        merged.extend_from_slice(b", ");
    }
    merged.extend_from_slice(ACCEPT_ENCODING);
    Some(Cow::Owned(merged))
}

/// The ETag edit for a compressed body: `"x"` → `W/"x"`; a weak one stays (`None`); a
/// malformed one (no quotes) is dropped (`Some(empty)`), as nginx's
/// `ngx_http_weak_etag` does, since no validator beats a wrong one.
fn weak_etag(etag: Option<&[u8]>) -> Option<Vec<u8>> {
    let v = etag?.trim_ascii();
    if v.starts_with(b"W/") {
        return None;
    }
    if v.len() >= 2 && v.starts_with(b"\"") && v.ends_with(b"\"") {
        let mut w = b"W/".to_vec();
        w.extend_from_slice(v);
        Some(w)
    } else {
        Some(Vec::new())
    }
}
