//! drove-compress owns response compression, apart from any I/O: `Accept-Encoding`
//! negotiation with q-values ([`Settings::negotiate`], rules in [`negotiate`]), the
//! decision whether a response is compressed and how its head changes, as a pure
//! function of the request method, the response status and its fields
//! ([`Settings::decide`] → [`Decision`] with [`HeadEdits`] that apply alike to raw
//! HTTP/1.1 field lines and to an `http::HeaderMap`; rules in [`decide`]), and a
//! streaming [`Encoder`] (gzip through flate2 on zlib-rs, brotli, zstd) with sync
//! flushes for event streams and flat memory for any body size. It owns the built
//! compression [`Settings`] and their defaults, which drove-config fills from
//! drove.toml. It knows nothing of sockets, tokio, TOML or the proxy: the proxy reads
//! the request and response heads, asks this crate, and frames what the encoder emits.
#![warn(missing_docs)]

pub mod decide;
mod encoder;
mod encoding;
pub mod negotiate;
mod settings;

pub use decide::{Decision, HeadEdits, Skip, Verdict};
pub use encoder::{EncodeError, Encoder};
pub use encoding::{
    Encoding, LevelError, Levels, DEFAULT_BR_LEVEL, DEFAULT_GZIP_LEVEL, DEFAULT_ZSTD_LEVEL,
};
pub use settings::{
    MediaRange, MediaRangeError, Settings, SettingsError, DEFAULT_MIN_SIZE, DEFAULT_TYPES,
};
