//! A streaming encoder over flate2 (gzip, zlib-rs backend), brotli and zstd, writing
//! into the caller's buffer.
//!
//! Memory is flat whatever the body's size: each call compresses what it is given and
//! appends the output produced so far to `out`; the codec keeps only its window and
//! tables (sized once, at the first byte), never the body. Measured in
//! `tests/flat_memory.rs`.
//!
//! `flush` is a sync flush (zlib `Z_SYNC_FLUSH`, brotli `BROTLI_OPERATION_FLUSH`, zstd
//! `ZSTD_e_flush`): afterwards every byte written so far can be decoded from the output
//! so far, so a proxy that flushes whenever the backend pauses keeps server-sent events
//! and long polls live. A flush with nothing written since the previous one emits
//! nothing (a gzip sync flush would otherwise cost 5 bytes each time).

use brotli::enc::encode::{
    BrotliEncoderOperation, BrotliEncoderParameter, BrotliEncoderStateStruct,
};
use brotli::enc::StandardAlloc;
use brotli::interface::{PredictionModeContextMap, StaticCommand};
use brotli::{InputPair, InputReferenceMut};
use flate2::{Compress, Compression, Crc, FlushCompress};

use crate::encoding::{check_level, Encoding, LevelError};

/// Brotli window: 2^18 = 256 KiB. The library default 2^22 would make each response
/// in flight hold 4 MiB; with 2^18 a brotli stream peaks at about 1.2 MiB of heap at
/// quality 3 (2.3 MiB at quality 4, 2.8 with 2^19, `tests/flat_memory.rs`), and
/// few proxied responses repeat themselves over more than 256 KiB.
const BROTLI_LGWIN: u32 = 18;

/// zstd window: 2^17 = 128 KiB, as Caddy sets it "to lighten [clients'] load". zstd
/// would otherwise pick 2 MiB at level 3 for a body of unknown length, and 8 MiB at
/// higher levels (RFC 9659's cap for HTTP); with 128 KiB a stream peaks at about
/// 1.6 MiB of heap (2 MiB: 3.5 MiB; `tests/flat_memory.rs`).
const ZSTD_WINDOW_LOG: u32 = 17;

/// Output room reserved per codec call before it writes; the loops reserve more when a
/// call fills it, so this only trades a few reallocations for slack.
const OUT_STEP: usize = 16 * 1024;

/// A streaming compressor for one response body.
pub struct Encoder {
    codec: Codec,
    /// Input since the last flush (a flush with none emits nothing).
    dirty: bool,
    finished: bool,
}

enum Codec {
    Gzip(Box<Gzip>),
    Br(Box<BrotliEncoderStateStruct<StandardAlloc>>),
    Zstd(zstd::stream::raw::Encoder<'static>),
}

/// gzip = the RFC 1952 header, a raw deflate stream, CRC-32 and length. flate2's own
/// gzip writer would put its output in an internal buffer first; framing it here lets
/// the deflate output go straight into the caller's buffer, and keeps the same code for
/// every flate2 backend (the gzip mode of `Compress` exists only on the zlib ones).
struct Gzip {
    deflate: Compress,
    crc: Crc,
    header_written: bool,
}

/// The gzip member header: magic, CM = deflate, no flags, no mtime, XFL 0, OS 255
/// (unknown), as nginx and flate2 write it when no name or time is given.
const GZIP_HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255];

/// A codec call failed. With valid parameters this does not happen short of running
/// out of memory; the proxy should end the response (it cannot be completed).
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// The level is out of range for the encoding.
    #[error(transparent)]
    Level(#[from] LevelError),
    /// `write` or `flush` after `finish`.
    #[error("the {0} stream is finished")]
    Finished(Encoding),
    /// The codec reported an error.
    #[error("{encoding} encoder failed: {message}")]
    Codec {
        /// Which codec.
        encoding: Encoding,
        /// What it said.
        message: String,
    },
}

impl Encoder {
    /// An encoder for `encoding` at `level` (checked against [`Encoding::levels`]).
    pub fn new(encoding: Encoding, level: u32) -> Result<Encoder, EncodeError> {
        check_level(encoding, level)?;
        let codec = match encoding {
            Encoding::Gzip => Codec::Gzip(Box::new(Gzip {
                deflate: Compress::new(Compression::new(level), false),
                crc: Crc::new(),
                header_written: false,
            })),
            Encoding::Br => {
                let mut s = BrotliEncoderStateStruct::new(StandardAlloc::default());
                s.set_parameter(BrotliEncoderParameter::BROTLI_PARAM_QUALITY, level);
                s.set_parameter(BrotliEncoderParameter::BROTLI_PARAM_LGWIN, BROTLI_LGWIN);
                Codec::Br(Box::new(s))
            }
            Encoding::Zstd => {
                let err = |e: std::io::Error| EncodeError::Codec {
                    encoding,
                    message: e.to_string(),
                };
                // Level 1..=19 fits an i32.
                let mut z = zstd::stream::raw::Encoder::new(level as i32).map_err(err)?;
                z.set_parameter(zstd::stream::raw::CParameter::WindowLog(ZSTD_WINDOW_LOG))
                    .map_err(err)?;
                Codec::Zstd(z)
            }
        };
        Ok(Encoder {
            codec,
            dirty: false,
            finished: false,
        })
    }

    /// The encoding this encoder produces.
    pub fn encoding(&self) -> Encoding {
        match self.codec {
            Codec::Gzip(_) => Encoding::Gzip,
            Codec::Br(_) => Encoding::Br,
            Codec::Zstd(_) => Encoding::Zstd,
        }
    }

    /// Compresses `input`, appending whatever output is ready to `out`. The codec may
    /// hold back up to a window of input until more arrives or [`Encoder::flush`].
    pub fn write(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), EncodeError> {
        self.check_open()?;
        if input.is_empty() {
            return Ok(());
        }
        self.dirty = true;
        self.run(Op::Write, input, out)
    }

    /// Sync flush: appends to `out` everything needed to decode all the input so far.
    pub fn flush(&mut self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        self.check_open()?;
        if !self.dirty {
            return Ok(());
        }
        self.dirty = false;
        self.run(Op::Flush, &[], out)
    }

    /// Ends the stream: appends the rest of the output and the trailer. Later calls of
    /// any method but `finish` (which does nothing again) are errors.
    pub fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        if self.finished {
            return Ok(());
        }
        self.finished = true;
        self.run(Op::Finish, &[], out)
    }

    fn check_open(&self) -> Result<(), EncodeError> {
        if self.finished {
            Err(EncodeError::Finished(self.encoding()))
        } else {
            Ok(())
        }
    }

    fn run(&mut self, op: Op, input: &[u8], out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let encoding = self.encoding();
        let fail = |message: String| EncodeError::Codec { encoding, message };
        match &mut self.codec {
            Codec::Gzip(g) => g.run(op, input, out).map_err(fail),
            Codec::Br(s) => brotli_run(s, op, input, out).map_err(fail),
            Codec::Zstd(z) => zstd_run(z, op, input, out).map_err(|e| fail(e.to_string())),
        }
    }
}

impl Drop for Encoder {
    fn drop(&mut self) {
        if let Codec::Br(s) = &mut self.codec {
            // Hands the state's buffers back to its allocator (brotli's C-style API).
            brotli::enc::encode::BrotliEncoderDestroyInstance(s);
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    Write,
    Flush,
    Finish,
}

impl Gzip {
    fn run(&mut self, op: Op, input: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
        if !self.header_written {
            out.extend_from_slice(&GZIP_HEADER);
            self.header_written = true;
        }
        self.crc.update(input);
        let flush = match op {
            Op::Write => FlushCompress::None,
            Op::Flush => FlushCompress::Sync,
            Op::Finish => FlushCompress::Finish,
        };
        let mut rest = input;
        loop {
            out.reserve(OUT_STEP.max(rest.len() / 2));
            let before_in = self.deflate.total_in();
            let status = self
                .deflate
                .compress_vec(rest, out, flush)
                .map_err(|e| e.to_string())?;
            rest = &rest[(self.deflate.total_in() - before_in) as usize..];
            let room_left = out.capacity() > out.len();
            let done = match op {
                Op::Write => rest.is_empty(),
                // zlib is done flushing when it stops short of filling the room.
                Op::Flush => rest.is_empty() && room_left,
                Op::Finish => status == flate2::Status::StreamEnd,
            };
            if done {
                break;
            }
        }
        if op == Op::Finish {
            out.extend_from_slice(&self.crc.sum().to_le_bytes());
            // ISIZE: the input length modulo 2^32, as RFC 1952 says.
            out.extend_from_slice(&self.crc.amount().to_le_bytes());
        }
        Ok(())
    }
}

fn brotli_run(
    s: &mut BrotliEncoderStateStruct<StandardAlloc>,
    op: Op,
    input: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), String> {
    let operation = match op {
        Op::Write => BrotliEncoderOperation::BROTLI_OPERATION_PROCESS,
        Op::Flush => BrotliEncoderOperation::BROTLI_OPERATION_FLUSH,
        Op::Finish => BrotliEncoderOperation::BROTLI_OPERATION_FINISH,
    };
    let mut nop = |_: &mut PredictionModeContextMap<InputReferenceMut>,
                   _: &mut [StaticCommand],
                   _: InputPair,
                   _: &mut StandardAlloc| ();
    let mut avail_in = input.len();
    let mut in_offset = 0;
    loop {
        // brotli writes into an initialised slice: lend it zeroed room at the end of
        // `out` and cut back to what it wrote.
        let start = out.len();
        out.resize(start + OUT_STEP, 0);
        let mut avail_out = OUT_STEP;
        let mut out_offset = start;
        let ok = s.compress_stream(
            operation,
            &mut avail_in,
            input,
            &mut in_offset,
            &mut avail_out,
            out,
            &mut out_offset,
            &mut None,
            &mut nop,
        );
        out.truncate(out_offset);
        if !ok {
            return Err("brotli refused the operation".into());
        }
        let done = match op {
            Op::Write => avail_in == 0,
            Op::Flush => avail_in == 0 && !s.has_more_output(),
            Op::Finish => s.is_finished(),
        };
        if done {
            return Ok(());
        }
    }
}

fn zstd_run(
    z: &mut zstd::stream::raw::Encoder<'static>,
    op: Op,
    input: &[u8],
    out: &mut Vec<u8>,
) -> std::io::Result<()> {
    use zstd::stream::raw::{InBuffer, Operation, OutBuffer};
    let mut inb = InBuffer::around(input);
    loop {
        out.reserve(OUT_STEP);
        let pos = out.len();
        let mut outb = OutBuffer::around_pos(out, pos);
        // For flush and finish, the number of bytes still to write (0 = done).
        let pending = match op {
            Op::Write => {
                z.run(&mut inb, &mut outb)?;
                0
            }
            Op::Flush => z.flush(&mut outb)?,
            Op::Finish => z.finish(&mut outb, true)?,
        };
        let done = match op {
            Op::Write => inb.pos() == input.len(),
            Op::Flush | Op::Finish => pending == 0,
        };
        if done {
            return Ok(());
        }
    }
}
