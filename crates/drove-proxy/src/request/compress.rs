//! Response compression, a step of the response path (drove-compress decides and
//! encodes; this module ties it to a request): which settings apply (the longest
//! matching route's, else the balancer's) and which encoding the client gets are chosen
//! with the request's info; whether this response is compressed and how its head
//! changes, when the response head arrives; and the body is re-encoded as it streams,
//! flushed whenever the backend's body pauses (each read from the backend), so that
//! event streams and long polls arrive event by event.

use drove_compress::{Decision, Encoder, Encoding, Settings, Verdict};

use crate::ProxySettings;

/// The compression a request may get: the settings in force for its path and the
/// encoding its `Accept-Encoding` chose (`None`: eligible responses only get `Vary`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Chosen {
    /// 0: the balancer's settings; k: `compress_routes[k - 1]`'s.
    rule: u16,
    pub(crate) encoding: Option<Encoding>,
}

/// The settings that apply to `path`, if compression is on there.
fn rule_for<'s>(settings: &'s ProxySettings, path: &[u8]) -> Option<(u16, &'s Settings)> {
    match settings
        .compress_routes
        .iter()
        .position(|r| path.starts_with(r.prefix.as_bytes()))
    {
        Some(i) => settings.compress_routes[i]
            .settings
            .as_deref()
            .map(|s| (i as u16 + 1, s)),
        None => settings.compress.as_deref().map(|s| (0, s)),
    }
}

/// With the request's info: the compression its path and `Accept-Encoding` values allow.
pub(crate) fn choose<'a>(
    settings: &ProxySettings,
    path: &[u8],
    accept_encoding: impl IntoIterator<Item = &'a [u8]>,
) -> Option<Chosen> {
    let (rule, s) = rule_for(settings, path)?;
    Some(Chosen {
        rule,
        encoding: s.negotiate(accept_encoding),
    })
}

/// The settings `chosen` refers to.
pub(crate) fn settings_of(settings: &ProxySettings, chosen: Chosen) -> &Settings {
    match chosen.rule {
        0 => settings.compress.as_deref(),
        k => settings.compress_routes[k as usize - 1].settings.as_deref(),
    }
    .expect("a chosen rule has settings")
}

/// With the response head: compress it or not, and the head's edits.
pub(crate) fn decide<'h>(
    settings: &ProxySettings,
    chosen: Chosen,
    method: &[u8],
    status: u16,
    headers: impl IntoIterator<Item = (&'h [u8], &'h [u8])>,
) -> Decision {
    settings_of(settings, chosen).decide(method, chosen.encoding, status, headers)
}

/// Compressed output is sent to the client once this much piled up, even while the
/// backend's body keeps coming without a pause (memory stays flat).
pub(crate) const WRITE_AT: usize = 16 * 1024;

/// A body being compressed: the encoder and its output buffer.
pub(crate) struct Compressing {
    encoder: Encoder,
    /// Encoded bytes not yet sent.
    pub(crate) out: Vec<u8>,
}

impl Compressing {
    /// For a response `decision` says to compress; `None` when it does not (or the
    /// encoder cannot be built: the body then goes as it is).
    pub(crate) fn start(
        settings: &ProxySettings,
        chosen: Chosen,
        decision: &Decision,
    ) -> Option<Compressing> {
        let Verdict::Compress(encoding) = decision.verdict else {
            return None;
        };
        let level = settings_of(settings, chosen).levels().get(encoding);
        match Encoder::new(encoding, level) {
            Ok(encoder) => Some(Compressing {
                encoder,
                out: Vec::with_capacity(16 * 1024),
            }),
            Err(e) => {
                tracing::warn!(error = %e, "compression encoder failed to start");
                None
            }
        }
    }

    /// Encodes `data`; with `sync`, flushes too: what was written so far becomes
    /// decodable (the backend's body paused). Without, the encoder may keep some of it
    /// for what follows: a flush ends a deflate block, and each block costs its own
    /// Huffman tables — one per read from the backend made gzip cost more than nginx's,
    /// which flushes at the end.
    pub(crate) fn chunk(&mut self, data: &[u8], sync: bool) -> std::io::Result<()> {
        self.encoder
            .write(data, &mut self.out)
            .map_err(std::io::Error::other)?;
        if sync {
            self.encoder
                .flush(&mut self.out)
                .map_err(std::io::Error::other)?;
        }
        Ok(())
    }

    /// Ends the encoded stream.
    pub(crate) fn finish(&mut self) -> std::io::Result<()> {
        self.encoder
            .finish(&mut self.out)
            .map_err(std::io::Error::other)
    }
}
