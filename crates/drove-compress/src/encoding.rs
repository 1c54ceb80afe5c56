//! The content codings drove produces, with their names and level ranges.

use std::fmt;

/// A content coding drove can produce (RFC 9110 §8.4.1 names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Encoding {
    /// Zstandard (RFC 8878), `zstd`.
    Zstd,
    /// Brotli (RFC 7932), `br`.
    Br,
    /// gzip (RFC 1952), `gzip`.
    Gzip,
}

impl Encoding {
    /// Every encoding, in drove's default order of preference.
    pub const ALL: [Encoding; 3] = [Encoding::Zstd, Encoding::Br, Encoding::Gzip];

    /// The token used in `Accept-Encoding`, `Content-Encoding` and drove.toml.
    pub fn name(self) -> &'static str {
        match self {
            Encoding::Zstd => "zstd",
            Encoding::Br => "br",
            Encoding::Gzip => "gzip",
        }
    }

    /// The encoding named `token` (ASCII case-insensitive, as content codings are).
    /// `x-gzip` is gzip (RFC 9110 §8.4.1.3 asks recipients to treat them alike).
    pub fn from_token(token: &[u8]) -> Option<Encoding> {
        if token.eq_ignore_ascii_case(b"gzip") || token.eq_ignore_ascii_case(b"x-gzip") {
            Some(Encoding::Gzip)
        } else if token.eq_ignore_ascii_case(b"br") {
            Some(Encoding::Br)
        } else if token.eq_ignore_ascii_case(b"zstd") {
            Some(Encoding::Zstd)
        } else {
            None
        }
    }

    /// The levels this encoding accepts, lowest (fastest) to highest.
    ///
    /// gzip 1–9 as zlib and nginx's `gzip_comp_level` (0 would store without
    /// compressing; see [`DEFAULT_GZIP_LEVEL`] for how zlib-rs levels compare to zlib's); brotli qualities 0–11; zstd 1–19: the levels 20–22 ("ultra") need
    /// windows beyond the 8 MB that RFC 9659 lets an HTTP `zstd` encoder use, and the
    /// negative "fast" levels compress too little to be worth a proxy's CPU.
    pub fn levels(self) -> std::ops::RangeInclusive<u32> {
        match self {
            Encoding::Gzip => 1..=9,
            Encoding::Br => 0..=11,
            Encoding::Zstd => 1..=19,
        }
    }

    /// The level used when none is configured; see [`Levels::default`].
    pub fn default_level(self) -> u32 {
        match self {
            Encoding::Gzip => DEFAULT_GZIP_LEVEL,
            Encoding::Br => DEFAULT_BR_LEVEL,
            Encoding::Zstd => DEFAULT_ZSTD_LEVEL,
        }
    }
}

impl fmt::Display for Encoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// gzip level 2, because drove's gzip is zlib-rs, whose levels are zlib-ng's, not
/// zlib's: its level 1 is the "quick" strategy (static Huffman codes only), 20–26 %
/// larger than zlib's level 1 on JSON and HTML; its level 2 produces what zlib's level 1
/// (nginx's default `gzip_comp_level`) does, 2–6 % smaller, at the CPU cost of its level
/// 1 on a 20 KB response (numbers in `examples/levels.rs` and the crate's README). So
/// level 2 here is nginx's default, byte for byte within a few percent.
pub const DEFAULT_GZIP_LEVEL: u32 = 2;
/// Brotli quality 3: output like gzip 6–9 (8–12 % below gzip 2) for 1.5–2× gzip 2's CPU.
/// Quality 4, Caddy's brotli default, costs a fixed 0.6–0.8 ms more per response in the
/// brotli crate (measured on 16 KB to 170 KB bodies: a 16 KB JSON takes 0.9 ms at 4,
/// 0.1 ms at 3, 0.2 ms at 5), and qualities 5–6 take 2–4× quality 3's CPU for 5–12 %
/// less output: worth it for static files (ngx_brotli's default is 6), not by default
/// for every proxied response. Set `level.br` higher when CPU is cheaper than bytes.
pub const DEFAULT_BR_LEVEL: u32 = 3;
/// zstd's own default level (`ZSTD_CLEVEL_DEFAULT`), also Caddy's: output like gzip 6
/// at about the CPU of gzip 2.
pub const DEFAULT_ZSTD_LEVEL: u32 = 3;

/// The compression level of each encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Levels {
    gzip: u32,
    br: u32,
    zstd: u32,
}

impl Default for Levels {
    /// gzip 2, br 3, zstd 3 (see [`DEFAULT_GZIP_LEVEL`], [`DEFAULT_BR_LEVEL`],
    /// [`DEFAULT_ZSTD_LEVEL`] for why).
    fn default() -> Self {
        Levels {
            gzip: DEFAULT_GZIP_LEVEL,
            br: DEFAULT_BR_LEVEL,
            zstd: DEFAULT_ZSTD_LEVEL,
        }
    }
}

impl Levels {
    /// The level of `encoding`.
    pub fn get(&self, encoding: Encoding) -> u32 {
        match encoding {
            Encoding::Gzip => self.gzip,
            Encoding::Br => self.br,
            Encoding::Zstd => self.zstd,
        }
    }

    /// Sets the level of `encoding`, if it is in [`Encoding::levels`].
    pub fn set(&mut self, encoding: Encoding, level: u32) -> Result<(), LevelError> {
        check_level(encoding, level)?;
        match encoding {
            Encoding::Gzip => self.gzip = level,
            Encoding::Br => self.br = level,
            Encoding::Zstd => self.zstd = level,
        }
        Ok(())
    }
}

/// A level outside [`Encoding::levels`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{encoding} level must be between {min} and {max}, found {level}", min = .encoding.levels().start(), max = .encoding.levels().end())]
pub struct LevelError {
    /// The encoding.
    pub encoding: Encoding,
    /// The level asked for.
    pub level: u32,
}

pub(crate) fn check_level(encoding: Encoding, level: u32) -> Result<(), LevelError> {
    if encoding.levels().contains(&level) {
        Ok(())
    } else {
        Err(LevelError { encoding, level })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_case_insensitive_and_x_gzip_is_gzip() {
        assert_eq!(Encoding::from_token(b"GZip"), Some(Encoding::Gzip));
        assert_eq!(Encoding::from_token(b"x-gzip"), Some(Encoding::Gzip));
        assert_eq!(Encoding::from_token(b"BR"), Some(Encoding::Br));
        assert_eq!(Encoding::from_token(b"zstd"), Some(Encoding::Zstd));
        assert_eq!(Encoding::from_token(b"deflate"), None);
        assert_eq!(Encoding::from_token(b"brotli"), None);
        for e in Encoding::ALL {
            assert_eq!(Encoding::from_token(e.name().as_bytes()), Some(e));
            assert!(e.levels().contains(&e.default_level()));
        }
    }

    #[test]
    fn levels_are_checked() {
        let mut l = Levels::default();
        assert_eq!(
            (
                l.get(Encoding::Gzip),
                l.get(Encoding::Br),
                l.get(Encoding::Zstd)
            ),
            (2, 3, 3)
        );
        l.set(Encoding::Gzip, 9).unwrap();
        assert_eq!(l.get(Encoding::Gzip), 9);
        let e = l.set(Encoding::Gzip, 10).unwrap_err();
        assert_eq!(
            e.to_string(),
            "gzip level must be between 1 and 9, found 10"
        );
        assert!(l.set(Encoding::Br, 0).is_ok());
        assert!(l.set(Encoding::Zstd, 20).is_err());
        assert_eq!(l.get(Encoding::Gzip), 9, "a refused level changes nothing");
    }
}
