//! What to compress and how: the built settings the proxy takes, their defaults and the
//! media-type patterns of `types`.

use std::fmt;

use crate::encoding::{Encoding, Levels};

/// Responses whose length is known and below this are sent as they are: a response that
/// fits in one TCP segment (about 1.4 KB) gains no round trip from being smaller, and
/// small bodies compress poorly. Caddy's default is 512 B, nginx's 20 B.
pub const DEFAULT_MIN_SIZE: u64 = 1024;

/// The default `types`: text and the text-like formats (JSON, JavaScript, XML and their
/// `+json`/`+xml` dialects, SVG, WebAssembly, uncompressed fonts and icons). Images,
/// video, audio, archives and WOFF fonts are compressed already and are left out.
/// Modelled on Caddy's default list (itself from Cloudflare's); `text/*` includes
/// `text/event-stream`, which works because the proxy flushes the encoder whenever the
/// backend pauses.
pub const DEFAULT_TYPES: &[&str] = &[
    "text/*",
    "application/json",
    "application/*+json",
    "application/x-ndjson",
    "application/javascript",
    "application/x-javascript",
    "application/ecmascript",
    "application/xml",
    "application/*+xml",
    "application/wasm",
    "application/vnd.ms-fontobject",
    "application/x-font-ttf",
    "font/ttf",
    "font/otf",
    "image/svg+xml",
    "image/x-icon",
    "image/vnd.microsoft.icon",
    "image/bmp",
];

/// A pattern of `types`: `type/subtype`, `type/*`, `type/*+suffix` (a structured syntax
/// suffix, RFC 6838 §4.2.8: `application/*+json` matches `application/ld+json`) or `*/*`.
/// Matching ignores case and the response's parameters (`; charset=utf-8`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MediaRange {
    /// Lowercase top-level type, or `*` (only with subtype `*`).
    top: String,
    sub: Sub,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Sub {
    Any,
    /// `*+json`: the suffix with its `+`.
    Suffix(String),
    Exact(String),
}

/// Why a `types` pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid media type pattern \"{pattern}\": {reason}")]
pub struct MediaRangeError {
    /// The pattern as written.
    pub pattern: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// An RFC 9110 token (the characters of a media type's type and subtype).
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

impl MediaRange {
    /// Parses a pattern; see [`MediaRange`] for the forms.
    pub fn parse(pattern: &str) -> Result<MediaRange, MediaRangeError> {
        let err = |reason| MediaRangeError {
            pattern: pattern.to_string(),
            reason,
        };
        let p = pattern.trim().to_ascii_lowercase();
        if p.contains(';') {
            return Err(err(
                "parameters are not allowed: a pattern matches a type whatever its parameters",
            ));
        }
        let Some((top, sub)) = p.split_once('/') else {
            return Err(err(
                "expected type/subtype, like \"text/html\" or \"text/*\"",
            ));
        };
        let top_ok = top == "*" || (is_token(top) && !top.contains('*'));
        if !top_ok {
            return Err(err(
                "the type must be a name like \"text\" or \"application\"",
            ));
        }
        let sub = if sub == "*" {
            Sub::Any
        } else if let Some(suffix) = sub.strip_prefix("*+") {
            if !is_token(suffix) || suffix.contains(['*', '+']) {
                return Err(err("a suffix pattern looks like \"application/*+json\""));
            }
            Sub::Suffix(format!("+{suffix}"))
        } else if is_token(sub) && !sub.contains('*') {
            Sub::Exact(sub.to_string())
        } else {
            return Err(err(
                "the subtype must be a name, `*` or `*+suffix` (like \"application/*+json\")",
            ));
        };
        if top == "*" && sub != Sub::Any {
            return Err(err("`*` as the type needs `*` as the subtype: \"*/*\""));
        }
        Ok(MediaRange {
            top: top.to_string(),
            sub,
        })
    }

    /// Whether a response's `Content-Type` value matches.
    pub fn matches(&self, content_type: &[u8]) -> bool {
        let Some((top, sub)) = essence(content_type) else {
            return false;
        };
        if self.top != "*" && !top.eq_ignore_ascii_case(self.top.as_bytes()) {
            return false;
        }
        match &self.sub {
            Sub::Any => true,
            Sub::Exact(s) => sub.eq_ignore_ascii_case(s.as_bytes()),
            Sub::Suffix(suffix) => {
                sub.len() > suffix.len()
                    && sub[sub.len() - suffix.len()..].eq_ignore_ascii_case(suffix.as_bytes())
            }
        }
    }
}

impl fmt::Display for MediaRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.sub {
            Sub::Any => write!(f, "{}/*", self.top),
            Sub::Suffix(s) => write!(f, "{}/*{s}", self.top),
            Sub::Exact(s) => write!(f, "{}/{s}", self.top),
        }
    }
}

/// `type` and `subtype` of a Content-Type value, parameters and whitespace dropped;
/// `None` if it has no `/` or an empty part.
fn essence(value: &[u8]) -> Option<(&[u8], &[u8])> {
    let end = value.iter().position(|&b| b == b';').unwrap_or(value.len());
    let v = value[..end].trim_ascii();
    let slash = v.iter().position(|&b| b == b'/')?;
    let (top, sub) = (v[..slash].trim_ascii(), v[slash + 1..].trim_ascii());
    (!top.is_empty() && !sub.is_empty()).then_some((top, sub))
}

/// Compression settings of a balancer or route: which encodings in which order of
/// preference, which media types, from which size, at which levels. Built and checked
/// once (by drove-config), then shared by every request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    algorithms: Vec<Encoding>,
    types: Vec<MediaRange>,
    min_size: u64,
    levels: Levels,
}

/// Why [`Settings::new`] refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    /// No encoding to choose from.
    #[error("no compression algorithm: list at least one of \"zstd\", \"br\", \"gzip\"")]
    NoAlgorithm,
    /// An encoding listed twice.
    #[error("\"{0}\" is listed twice in the compression algorithms")]
    DuplicateAlgorithm(Encoding),
    /// No media type to compress.
    #[error("no media type to compress: list at least one, like \"text/*\"")]
    NoType,
}

impl Default for Settings {
    /// zstd, br, gzip in that order; [`DEFAULT_TYPES`]; [`DEFAULT_MIN_SIZE`];
    /// [`Levels::default`].
    fn default() -> Self {
        Settings {
            algorithms: Encoding::ALL.to_vec(),
            types: DEFAULT_TYPES
                .iter()
                .map(|t| MediaRange::parse(t).expect("the default types are valid"))
                .collect(),
            min_size: DEFAULT_MIN_SIZE,
            levels: Levels::default(),
        }
    }
}

impl Settings {
    /// Checked settings: at least one algorithm, none twice, at least one type.
    pub fn new(
        algorithms: Vec<Encoding>,
        types: Vec<MediaRange>,
        min_size: u64,
        levels: Levels,
    ) -> Result<Settings, SettingsError> {
        if algorithms.is_empty() {
            return Err(SettingsError::NoAlgorithm);
        }
        for (i, a) in algorithms.iter().enumerate() {
            if algorithms[..i].contains(a) {
                return Err(SettingsError::DuplicateAlgorithm(*a));
            }
        }
        if types.is_empty() {
            return Err(SettingsError::NoType);
        }
        Ok(Settings {
            algorithms,
            types,
            min_size,
            levels,
        })
    }

    /// The encodings offered, the server's preference first (it breaks ties between
    /// equal q-values).
    pub fn algorithms(&self) -> &[Encoding] {
        &self.algorithms
    }

    /// The media types compressed.
    pub fn types(&self) -> &[MediaRange] {
        &self.types
    }

    /// Bodies of a known length below this are not compressed.
    pub fn min_size(&self) -> u64 {
        self.min_size
    }

    /// The level of each encoding.
    pub fn levels(&self) -> &Levels {
        &self.levels
    }

    /// Whether a `Content-Type` value is one of [`Settings::types`].
    pub fn compresses_type(&self, content_type: &[u8]) -> bool {
        self.types.iter().any(|t| t.matches(content_type))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str) -> MediaRange {
        MediaRange::parse(p).unwrap()
    }

    #[test]
    fn exact_types_ignore_case_and_parameters() {
        let json = m("application/json");
        assert!(json.matches(b"application/json"));
        assert!(json.matches(b"Application/JSON; charset=utf-8"));
        assert!(json.matches(b"  application/json ;charset=utf-8"));
        assert!(!json.matches(b"application/jsonx"));
        assert!(!json.matches(b"application/ld+json"));
        assert!(!json.matches(b"text/json"));
        assert!(!json.matches(b""));
        assert!(!json.matches(b"application"));
        assert!(!json.matches(b"application/"));
    }

    #[test]
    fn wildcards_and_suffixes() {
        let text = m("text/*");
        assert!(text.matches(b"text/html; charset=utf-8"));
        assert!(text.matches(b"text/event-stream"));
        assert!(!text.matches(b"texts/html"));
        assert!(!text.matches(b"image/png"));
        let pj = m("application/*+json");
        assert!(pj.matches(b"application/ld+json"));
        assert!(pj.matches(b"application/problem+JSON"));
        assert!(
            !pj.matches(b"application/json"),
            "no subtype before the suffix"
        );
        assert!(!pj.matches(b"application/+json"), "an empty subtype name");
        assert!(!pj.matches(b"text/ld+json"));
        let any = m("*/*");
        assert!(any.matches(b"image/png"));
        assert!(!any.matches(b"nonsense"));
        for p in ["text/*", "application/*+json", "*/*", "image/svg+xml"] {
            assert_eq!(m(p).to_string(), p);
        }
        assert_eq!(m(" TEXT/HTML ").to_string(), "text/html");
    }

    #[test]
    fn bad_patterns_are_refused_with_a_reason() {
        for (p, reason) in [
            ("text", "expected type/subtype"),
            ("text/html; charset=utf-8", "parameters are not allowed"),
            ("*/html", "needs `*` as the subtype"),
            ("te xt/html", "the type must be a name"),
            ("text/ht*ml", "the subtype must be"),
            ("application/*+", "a suffix pattern"),
            ("application/*+j*", "a suffix pattern"),
            ("text/", "the subtype must be"),
        ] {
            let e = MediaRange::parse(p).unwrap_err();
            assert!(e.reason.contains(reason), "{p}: {e}");
            assert_eq!(e.pattern, p);
        }
    }

    #[test]
    fn settings_are_checked() {
        let t = vec![m("text/*")];
        assert_eq!(
            Settings::new(vec![], t.clone(), 0, Levels::default()),
            Err(SettingsError::NoAlgorithm)
        );
        assert_eq!(
            Settings::new(
                vec![Encoding::Gzip, Encoding::Br, Encoding::Gzip],
                t.clone(),
                0,
                Levels::default()
            ),
            Err(SettingsError::DuplicateAlgorithm(Encoding::Gzip))
        );
        assert_eq!(
            Settings::new(vec![Encoding::Gzip], vec![], 0, Levels::default()),
            Err(SettingsError::NoType)
        );
        let s = Settings::new(vec![Encoding::Br], t, 7, Levels::default()).unwrap();
        assert_eq!((s.algorithms(), s.min_size()), (&[Encoding::Br][..], 7));
    }

    #[test]
    fn defaults() {
        let s = Settings::default();
        assert_eq!(s.algorithms(), Encoding::ALL);
        assert_eq!(s.min_size(), 1024);
        assert_eq!(s.types().len(), DEFAULT_TYPES.len());
        for yes in [
            "text/html",
            "text/css",
            "text/event-stream",
            "application/json",
            "application/problem+json",
            "application/javascript",
            "application/rss+xml",
            "image/svg+xml",
            "application/wasm",
        ] {
            assert!(s.compresses_type(yes.as_bytes()), "{yes}");
        }
        for no in [
            "image/png",
            "image/jpeg",
            "video/mp4",
            "application/zip",
            "application/octet-stream",
            "font/woff2",
            "application/gzip",
        ] {
            assert!(!s.compresses_type(no.as_bytes()), "{no}");
        }
    }
}
