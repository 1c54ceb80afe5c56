//! Chunked bodies (RFC 9112 §7.1): a decoder that finds where a body ends and which bytes
//! are data, framing or trailer field lines, and the re-framing of a request body for the
//! backend — canonical chunk sizes, no extensions — so that what a backend parses is what
//! drove parsed, whatever odd (but valid) shape the client sent.
//!
//! Trailers: the decoder only delimits the trailer section (lines ending in CRLF, up to
//! the empty line); what its fields say, and which may pass, is `headers::Trailers`'
//! business. An HTTP/1.1 client's request trailers are dropped (see [`LAST_CHUNK`]); a
//! backend's response trailers and an HTTP/2 client's request trailers pass, filtered.

/// Where a chunked body stands: fed bytes, it says how many of them belong to the body
/// and whether the body ended. It validates sizes so a malformed body cannot make drove
/// pass bytes of the next message along as if they were this one's.
#[derive(Debug, Default, Clone)]
pub(crate) struct Chunked {
    state: ChunkState,
    /// Data bytes left in the current chunk.
    remaining: u64,
    size_digits: u8,
    /// Data bytes seen so far (the decoded body's length, for `max_body_size`).
    data: u64,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    #[default]
    Size,
    /// After the size: extensions up to the line end.
    Ext,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    /// Trailer section: at the start of a line.
    TrailerStart,
    /// Inside a trailer line.
    Trailer,
    TrailerLf,
    EndLf,
    Done,
}

/// A chunked body that cannot be parsed.
#[derive(Debug)]
pub(crate) struct BadChunk;

/// What a run of fed bytes is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Part {
    /// Chunk sizes, extensions, line ends, the last chunk and the empty line that ends
    /// the body.
    Framing,
    /// Chunk data.
    Data,
    /// Trailer field lines, each with its CRLF (not the empty line that ends them).
    Trailer,
}

/// One piece of fed input: `len` bytes of one [`Part`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Piece {
    pub(crate) len: usize,
    pub(crate) part: Part,
}

impl Piece {
    pub(crate) fn data(&self) -> bool {
        self.part == Part::Data
    }
}

impl Chunked {
    pub(crate) fn done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Data bytes decoded so far.
    pub(crate) fn data_len(&self) -> u64 {
        self.data
    }

    /// Consumes bytes of `input` up to the end of the body; calls `piece` for each run of
    /// data, framing or trailer bytes, in order. Returns how many bytes belong to the
    /// body.
    pub(crate) fn feed(
        &mut self,
        input: &[u8],
        mut piece: impl FnMut(Piece),
    ) -> Result<usize, BadChunk> {
        let mut i = 0;
        let mut run_start = 0;
        let mut run = Part::Framing;
        macro_rules! switch {
            ($part:expr) => {
                if run != $part {
                    if i > run_start {
                        piece(Piece {
                            len: i - run_start,
                            part: run,
                        });
                    }
                    run_start = i;
                    run = $part;
                }
            };
        }
        while i < input.len() && self.state != ChunkState::Done {
            let b = input[i];
            match self.state {
                ChunkState::Data => {
                    switch!(Part::Data);
                    let n = (self.remaining.min((input.len() - i) as u64)) as usize;
                    i += n;
                    self.remaining -= n as u64;
                    self.data += n as u64;
                    if self.remaining == 0 {
                        self.state = ChunkState::DataCr;
                    }
                    continue;
                }
                // A trailer line is trailer from its first byte to its LF.
                ChunkState::TrailerStart if b != b'\r' => switch!(Part::Trailer),
                ChunkState::Trailer | ChunkState::TrailerLf => switch!(Part::Trailer),
                _ => switch!(Part::Framing),
            }
            match self.state {
                ChunkState::Size => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        let d = (b as char).to_digit(16).expect("hex") as u64;
                        self.size_digits += 1;
                        // 15 hex digits is 2^60: far beyond any body.
                        if self.size_digits > 15 {
                            return Err(BadChunk);
                        }
                        self.remaining = self.remaining * 16 + d;
                    }
                    b';' | b' ' | b'\t' if self.size_digits > 0 => self.state = ChunkState::Ext,
                    b'\r' if self.size_digits > 0 => self.state = ChunkState::SizeLf,
                    _ => return Err(BadChunk),
                },
                ChunkState::Ext => match b {
                    b'\r' => self.state = ChunkState::SizeLf,
                    b'\n' => return Err(BadChunk),
                    _ => {}
                },
                ChunkState::SizeLf => {
                    if b != b'\n' {
                        return Err(BadChunk);
                    }
                    self.size_digits = 0;
                    self.state = if self.remaining == 0 {
                        ChunkState::TrailerStart
                    } else {
                        ChunkState::Data
                    };
                }
                ChunkState::DataCr => {
                    if b != b'\r' {
                        return Err(BadChunk);
                    }
                    self.state = ChunkState::DataLf;
                }
                ChunkState::DataLf => {
                    if b != b'\n' {
                        return Err(BadChunk);
                    }
                    self.state = ChunkState::Size;
                }
                ChunkState::TrailerStart => match b {
                    b'\r' => self.state = ChunkState::EndLf,
                    b'\n' => return Err(BadChunk),
                    _ => self.state = ChunkState::Trailer,
                },
                // What a line holds (a bare LF, a line without a colon) is for the
                // field parser to judge (`headers::Trailers`): a bad field drops the
                // section, it does not break the body's framing.
                ChunkState::Trailer => {
                    if b == b'\r' {
                        self.state = ChunkState::TrailerLf;
                    }
                }
                ChunkState::TrailerLf => {
                    if b != b'\n' {
                        return Err(BadChunk);
                    }
                    self.state = ChunkState::TrailerStart;
                }
                ChunkState::EndLf => {
                    if b != b'\n' {
                        return Err(BadChunk);
                    }
                    self.state = ChunkState::Done;
                }
                ChunkState::Data | ChunkState::Done => unreachable!(),
            }
            i += 1;
        }
        if i > run_start {
            piece(Piece {
                len: i - run_start,
                part: run,
            });
        }
        Ok(i)
    }
}

/// Appends `data` as one canonical chunk (`SIZE-IN-HEX CRLF data CRLF`) to `out`.
pub(crate) fn write_chunk(data: &[u8], out: &mut Vec<u8>) {
    if data.is_empty() {
        return; // an empty chunk would end the body
    }
    let mut hex = [0u8; 16];
    let mut i = hex.len();
    let mut n = data.len();
    loop {
        i -= 1;
        hex[i] = b"0123456789abcdef"[n & 0xf];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&hex[i..]);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// The end of a re-framed body: the last chunk and an empty trailer section.
///
/// An HTTP/1.1 client's request trailers are dropped, on purpose: the trailer section is
/// where HTTP/1.1 parsers disagree most (bare LF, obs-fold, fields a backend merges into
/// its headers after drove routed on them), few backends read request trailers at all,
/// and a body re-framed without them is exactly the body drove checked. An HTTP/2
/// client's trailers come as a HEADERS frame the `h2` crate already parsed, so they are
/// passed, filtered ([`write_last_chunk`]).
pub(crate) const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// The last chunk and a trailer section of `fields` (the caller filtered them): with no
/// field, [`LAST_CHUNK`].
pub(crate) fn write_last_chunk<'f>(
    fields: impl IntoIterator<Item = (&'f [u8], &'f [u8])>,
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(b"0\r\n");
    write_trailer_section(fields, out);
}

/// A trailer section of `fields`, as `name: value` lines, and the empty line that ends
/// the body.
pub(crate) fn write_trailer_section<'f>(
    fields: impl IntoIterator<Item = (&'f [u8], &'f [u8])>,
    out: &mut Vec<u8>,
) {
    for (name, value) in fields {
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_passes_through_and_stops_at_the_end() {
        let body = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-T: 1\r\n\r\nGET /next";
        let mut c = Chunked::default();
        let mut data = 0;
        let n = c
            .feed(body, |p| {
                if p.data() {
                    data += p.len
                }
            })
            .unwrap();
        assert!(c.done());
        assert_eq!(&body[n..], b"GET /next");
        assert_eq!(data, 11);
        // Byte by byte gives the same.
        let mut c = Chunked::default();
        let mut total = 0;
        for b in body.iter().take(n) {
            total += c.feed(std::slice::from_ref(b), |_| {}).unwrap();
        }
        assert!(c.done());
        assert_eq!(total, n);
        assert!(Chunked::default().feed(b"zz\r\n", |_| {}).is_err());
        assert!(Chunked::default().feed(b"5\r\nhelloXX", |_| {}).is_err());
    }

    /// Extensions, odd sizes and trailers come out canonical.
    #[test]
    fn reframing_is_canonical() {
        let body =
            b"005;ext=\"x\"\r\nhello\r\n0000A\r\n0123456789\r\n0;end\r\nX-Trailer: evil\r\n\r\n";
        let mut c = Chunked::default();
        let mut out = Vec::new();
        let mut at = 0;
        let mut pieces = Vec::new();
        let n = c.feed(body, |p| pieces.push(p)).unwrap();
        assert_eq!(n, body.len());
        for p in pieces {
            if p.data() {
                write_chunk(&body[at..at + p.len], &mut out);
            }
            at += p.len;
        }
        assert!(c.done());
        out.extend_from_slice(LAST_CHUNK);
        assert_eq!(out, b"5\r\nhello\r\na\r\n0123456789\r\n0\r\n\r\n");
        assert_eq!(c.data_len(), 15);
    }

    /// Each byte of `body` fed in `step`-byte reads, sorted by part.
    fn parts(body: &[u8], step: usize) -> (Vec<u8>, Vec<u8>, Vec<u8>, bool) {
        let (mut framing, mut data, mut trailer) = (Vec::new(), Vec::new(), Vec::new());
        let mut c = Chunked::default();
        for input in body.chunks(step) {
            let mut at = 0;
            let n = c
                .feed(input, |p| {
                    let bytes = &input[at..at + p.len];
                    at += p.len;
                    match p.part {
                        Part::Framing => framing.extend_from_slice(bytes),
                        Part::Data => data.extend_from_slice(bytes),
                        Part::Trailer => trailer.extend_from_slice(bytes),
                    }
                })
                .unwrap();
            assert_eq!(n, at);
        }
        (framing, data, trailer, c.done())
    }

    /// The trailer section's field lines are told apart from the framing around them
    /// (the last chunk before, the empty line after), however the bytes are split.
    #[test]
    fn trailer_lines_are_their_own_part() {
        let body = b"5\r\nhello\r\n0;x\r\ngrpc-status: 0\r\nx-sum:  ab \r\n\r\n";
        for step in [1, 2, 3, 7, body.len()] {
            let (framing, data, trailer, done) = parts(body, step);
            assert!(done);
            assert_eq!(data, b"hello");
            assert_eq!(trailer, b"grpc-status: 0\r\nx-sum:  ab \r\n", "step {step}");
            assert_eq!(framing, b"5\r\n\r\n0;x\r\n\r\n", "step {step}");
        }
        // Without trailers: no trailer part at all (the relay's common case).
        let (framing, _, trailer, done) = parts(b"3\r\nabc\r\n0\r\n\r\n", 1);
        assert!(done && trailer.is_empty());
        assert_eq!(framing, b"3\r\n\r\n0\r\n\r\n");
        // A trailer line's CR must be followed by LF: that is framing.
        assert!(Chunked::default()
            .feed(b"0\r\na: 1\rX\n\r\n", |_| {})
            .is_err());
        assert!(Chunked::default().feed(b"0\r\n\n", |_| {}).is_err());
    }

    #[test]
    fn last_chunk_with_fields() {
        let mut out = Vec::new();
        write_last_chunk([(&b"grpc-status"[..], &b"0"[..])], &mut out);
        assert_eq!(out, b"0\r\ngrpc-status: 0\r\n\r\n");
        out.clear();
        write_last_chunk([], &mut out);
        assert_eq!(out, LAST_CHUNK);
    }
}
