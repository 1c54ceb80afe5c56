//! Chunked bodies (RFC 9112 §7.1): a decoder that finds where a body ends and which bytes
//! are data, and the re-framing of a request body for the backend — canonical chunk
//! sizes, no extensions, no trailers — so that what a backend parses is what drove
//! parsed, whatever odd (but valid) shape the client sent.

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
    /// The trailer section's lines, kept only by a decoder made with
    /// [`Chunked::keeping_trailers`] (at most `trailer_limit` bytes: beyond, the body is
    /// refused, as a head over `max_header_size` is).
    trailers: Option<Vec<u8>>,
    trailer_limit: usize,
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

/// One piece of fed input: `len` bytes that are chunk data (`data`) or framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Piece {
    pub(crate) len: usize,
    pub(crate) data: bool,
}

impl Chunked {
    /// A decoder that also keeps the trailer section (HTTP/2 clients get it as a
    /// trailing HEADERS frame), up to `limit` bytes.
    pub(crate) fn keeping_trailers(limit: usize) -> Chunked {
        Chunked {
            trailers: Some(Vec::new()),
            trailer_limit: limit,
            ..Chunked::default()
        }
    }

    /// The trailer section's lines (`name: value` CRLF each), once the body is done;
    /// empty without trailers or for a decoder that does not keep them.
    pub(crate) fn trailers(&self) -> &[u8] {
        self.trailers.as_deref().unwrap_or_default()
    }

    pub(crate) fn done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Data bytes decoded so far.
    pub(crate) fn data_len(&self) -> u64 {
        self.data
    }

    /// Consumes bytes of `input` up to the end of the body; calls `piece` for each run of
    /// data or framing bytes, in order. Returns how many bytes belong to the body.
    pub(crate) fn feed(
        &mut self,
        input: &[u8],
        mut piece: impl FnMut(Piece),
    ) -> Result<usize, BadChunk> {
        let mut i = 0;
        let mut run_start = 0;
        let mut run_data = false;
        macro_rules! switch {
            ($data:expr) => {
                if run_data != $data {
                    if i > run_start {
                        piece(Piece {
                            len: i - run_start,
                            data: run_data,
                        });
                    }
                    run_start = i;
                    run_data = $data;
                }
            };
        }
        while i < input.len() && self.state != ChunkState::Done {
            let b = input[i];
            match self.state {
                ChunkState::Data => {
                    switch!(true);
                    let n = (self.remaining.min((input.len() - i) as u64)) as usize;
                    i += n;
                    self.remaining -= n as u64;
                    self.data += n as u64;
                    if self.remaining == 0 {
                        self.state = ChunkState::DataCr;
                    }
                    continue;
                }
                _ => switch!(false),
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
                    _ => {
                        self.keep_trailer(b)?;
                        self.state = ChunkState::Trailer;
                    }
                },
                ChunkState::Trailer => {
                    self.keep_trailer(b)?;
                    if b == b'\r' {
                        self.state = ChunkState::TrailerLf;
                    }
                }
                ChunkState::TrailerLf => {
                    if b != b'\n' {
                        return Err(BadChunk);
                    }
                    self.keep_trailer(b)?;
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
                data: run_data,
            });
        }
        Ok(i)
    }
}

impl Chunked {
    fn keep_trailer(&mut self, b: u8) -> Result<(), BadChunk> {
        if let Some(t) = &mut self.trailers {
            if t.len() >= self.trailer_limit {
                return Err(BadChunk);
            }
            t.push(b);
        }
        Ok(())
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

/// The end of a re-framed body: the last chunk and an empty trailer section. An
/// HTTP/1.1 client's request trailers are dropped (few backends read them, and they are
/// where parsers disagree); an HTTP/2 client's go through [`write_last_chunk`].
pub(crate) const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// Appends the last chunk with a trailer section of `fields` (already valid field names
/// and values: an HTTP/2 client's, which the h2 crate checked) to `out`.
pub(crate) fn write_last_chunk<'a>(
    fields: impl Iterator<Item = (&'a [u8], &'a [u8])>,
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(b"0\r\n");
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
                if p.data {
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
            if p.data {
                write_chunk(&body[at..at + p.len], &mut out);
            }
            at += p.len;
        }
        assert!(c.done());
        out.extend_from_slice(LAST_CHUNK);
        assert_eq!(out, b"5\r\nhello\r\na\r\n0123456789\r\n0\r\n\r\n");
        assert_eq!(c.data_len(), 15);
    }

    #[test]
    fn a_decoder_keeping_trailers_has_the_section_and_refuses_one_over_its_limit() {
        let body = b"5\r\nhello\r\n0\r\nx-a: 1\r\nx-b: 2\r\n\r\n";
        let mut c = Chunked::keeping_trailers(64);
        assert_eq!(c.feed(body, |_| {}).unwrap(), body.len());
        assert!(c.done());
        assert_eq!(c.trailers(), b"x-a: 1\r\nx-b: 2\r\n");
        // Fed a byte at a time, the same.
        let mut c = Chunked::keeping_trailers(64);
        for b in body.chunks(1) {
            c.feed(b, |_| {}).unwrap();
        }
        assert_eq!(c.trailers(), b"x-a: 1\r\nx-b: 2\r\n");
        assert!(Chunked::keeping_trailers(8).feed(body, |_| {}).is_err());
        let mut plain = Chunked::default();
        plain.feed(body, |_| {}).unwrap();
        assert_eq!(plain.trailers(), b"", "kept only when asked for");
    }
}
