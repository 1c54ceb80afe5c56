//! The streaming encoders: output decodes (with the same crates) to the input, for every
//! encoding and level, in any chunking; a flush makes everything so far decodable.

use std::io::{Read, Write};

use drove_compress::{EncodeError, Encoder, Encoding, Encoding::*};

/// Text that compresses like a JSON API response, deterministic.
fn json_like(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 100);
    let mut i = 0u64;
    while out.len() < len {
        let x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40;
        out.extend_from_slice(
            format!(
                "{{\"id\":{i},\"name\":\"user-{x}\",\"active\":{},\"score\":{}}},",
                x.is_multiple_of(2),
                x % 997
            )
            .as_bytes(),
        );
        i += 1;
    }
    out.truncate(len);
    out
}

/// Decodes a complete stream, checking its framing (gzip CRC and length, brotli and
/// zstd end marks).
fn decode(encoding: Encoding, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match encoding {
        Gzip => {
            flate2::read::GzDecoder::new(data)
                .read_to_end(&mut out)
                .unwrap();
        }
        Br => {
            brotli::Decompressor::new(data, 4096)
                .read_to_end(&mut out)
                .unwrap();
        }
        Zstd => out = zstd::stream::decode_all(data).unwrap(),
    }
    out
}

/// A decoder fed as bytes arrive, like a browser reading an event stream.
enum Streaming {
    Gzip(Box<flate2::write::GzDecoder<Vec<u8>>>),
    Br(Box<brotli::DecompressorWriter<Vec<u8>>>),
    Zstd(zstd::stream::write::Decoder<'static, Vec<u8>>),
}

impl Streaming {
    fn new(encoding: Encoding) -> Streaming {
        match encoding {
            Gzip => Streaming::Gzip(Box::new(flate2::write::GzDecoder::new(Vec::new()))),
            Br => Streaming::Br(Box::new(brotli::DecompressorWriter::new(Vec::new(), 4096))),
            Zstd => Streaming::Zstd(zstd::stream::write::Decoder::new(Vec::new()).unwrap()),
        }
    }

    /// Feeds `bytes`; returns everything decoded so far.
    fn feed(&mut self, bytes: &[u8]) -> &[u8] {
        match self {
            Streaming::Gzip(d) => {
                d.write_all(bytes).unwrap();
                d.flush().unwrap();
                d.get_ref()
            }
            Streaming::Br(d) => {
                d.write_all(bytes).unwrap();
                d.flush().unwrap();
                d.get_ref()
            }
            Streaming::Zstd(d) => {
                d.write_all(bytes).unwrap();
                d.flush().unwrap();
                d.get_ref()
            }
        }
    }
}

fn encode_in_chunks(encoding: Encoding, level: u32, body: &[u8], chunk: usize) -> Vec<u8> {
    let mut enc = Encoder::new(encoding, level).unwrap();
    assert_eq!(enc.encoding(), encoding);
    let mut out = Vec::new();
    for c in body.chunks(chunk) {
        enc.write(c, &mut out).unwrap();
    }
    enc.finish(&mut out).unwrap();
    out
}

#[test]
fn round_trip_every_encoding_in_any_chunking() {
    let body = json_like(300_000);
    for encoding in Encoding::ALL {
        for chunk in [1_000_000, 16 * 1024, 1000, 7] {
            let level = encoding.default_level();
            let out = encode_in_chunks(encoding, level, &body, chunk);
            assert_eq!(
                decode(encoding, &out),
                body,
                "{encoding} in chunks of {chunk}"
            );
            assert!(
                out.len() * 3 < body.len(),
                "{encoding}: {} -> {} bytes is not compressing text",
                body.len(),
                out.len()
            );
        }
    }
}

#[test]
fn round_trip_every_level() {
    let body = json_like(20_000);
    for encoding in Encoding::ALL {
        for level in encoding.levels() {
            let out = encode_in_chunks(encoding, level, &body, 4096);
            assert_eq!(decode(encoding, &out), body, "{encoding} level {level}");
        }
    }
}

#[test]
fn levels_change_the_output() {
    // The level reaches the codec: the highest level is smaller than the lowest.
    let body = json_like(200_000);
    for encoding in Encoding::ALL {
        let lo = encode_in_chunks(encoding, *encoding.levels().start(), &body, 16384);
        let hi = encode_in_chunks(encoding, 9, &body, 16384);
        assert!(
            hi.len() < lo.len(),
            "{encoding}: level 9 {} vs lowest {}",
            hi.len(),
            lo.len()
        );
    }
}

#[test]
fn incompressible_and_empty_bodies_round_trip() {
    // xorshift noise: the output may be a little larger than the input, never wrong.
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let noise: Vec<u8> = (0..200_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    for encoding in Encoding::ALL {
        let out = encode_in_chunks(encoding, encoding.default_level(), &noise, 10_000);
        assert_eq!(decode(encoding, &out), noise, "{encoding}");
        // Stored blocks when compressing does not pay: well under 1 % more.
        assert!(
            out.len() < noise.len() + noise.len() / 100,
            "{encoding}: {}",
            out.len()
        );
        let empty = encode_in_chunks(encoding, encoding.default_level(), b"", 1);
        assert!(
            !empty.is_empty(),
            "{encoding}: an empty body is still a valid stream"
        );
        assert_eq!(decode(encoding, &empty), b"", "{encoding}");
    }
}

#[test]
fn flush_makes_everything_so_far_decodable() {
    let events: Vec<String> = (1..=5)
        .map(|i| {
            format!("id: {i}\nevent: tick\ndata: {{\"n\":{i},\"text\":\"event number {i}\"}}\n\n")
        })
        .collect();
    for encoding in Encoding::ALL {
        let mut enc = Encoder::new(encoding, encoding.default_level()).unwrap();
        let mut dec = Streaming::new(encoding);
        let mut sent = String::new();
        for ev in &events {
            let mut out = Vec::new();
            enc.write(ev.as_bytes(), &mut out).unwrap();
            enc.flush(&mut out).unwrap();
            sent.push_str(ev);
            let decoded = dec.feed(&out);
            assert_eq!(
                String::from_utf8_lossy(decoded),
                sent,
                "{encoding}: after flushing event {ev:?} the client must see every event so far"
            );
        }
        let mut out = Vec::new();
        enc.finish(&mut out).unwrap();
        assert_eq!(dec.feed(&out), sent.as_bytes(), "{encoding}");
    }
}

#[test]
fn without_a_flush_small_writes_stay_in_the_encoder() {
    // What the flush is for: a small write alone yields nothing the client can decode.
    for encoding in Encoding::ALL {
        let mut enc = Encoder::new(encoding, encoding.default_level()).unwrap();
        let mut dec = Streaming::new(encoding);
        let mut out = Vec::new();
        enc.write(b"data: hello\n\n", &mut out).unwrap();
        assert!(dec.feed(&out).is_empty(), "{encoding}");
        out.clear();
        enc.flush(&mut out).unwrap();
        assert_eq!(dec.feed(&out), b"data: hello\n\n", "{encoding}");
    }
}

#[test]
fn a_flush_with_nothing_new_emits_nothing() {
    for encoding in Encoding::ALL {
        let mut enc = Encoder::new(encoding, encoding.default_level()).unwrap();
        let mut out = Vec::new();
        enc.write(b"some bytes", &mut out).unwrap();
        enc.flush(&mut out).unwrap();
        let after_first = out.len();
        enc.flush(&mut out).unwrap();
        enc.flush(&mut out).unwrap();
        assert_eq!(out.len(), after_first, "{encoding}");
        enc.write(b"", &mut out).unwrap();
        enc.flush(&mut out).unwrap();
        assert_eq!(
            out.len(),
            after_first,
            "{encoding}: an empty write is nothing new"
        );
        enc.finish(&mut out).unwrap();
        assert_eq!(decode(encoding, &out), b"some bytes");
    }
}

#[test]
fn bad_levels_and_use_after_finish_are_errors() {
    for (encoding, level) in [(Gzip, 0), (Gzip, 10), (Br, 12), (Zstd, 0), (Zstd, 20)] {
        let e = Encoder::new(encoding, level).err().expect("refused");
        assert!(
            matches!(e, EncodeError::Level(_)),
            "{encoding} {level}: {e}"
        );
    }
    let mut enc = Encoder::new(Gzip, 1).unwrap();
    let mut out = Vec::new();
    enc.finish(&mut out).unwrap();
    let len = out.len();
    enc.finish(&mut out).unwrap();
    assert_eq!(out.len(), len, "a second finish adds nothing");
    let e = enc.write(b"x", &mut out).unwrap_err();
    assert_eq!(e.to_string(), "the gzip stream is finished");
    assert!(enc.flush(&mut out).is_err());
}

#[test]
fn output_is_appended_after_what_out_holds() {
    // The proxy may put a chunk-size line first; the encoder must not overwrite it.
    for encoding in Encoding::ALL {
        let mut enc = Encoder::new(encoding, encoding.default_level()).unwrap();
        let mut out = b"PREFIX".to_vec();
        enc.write(&json_like(50_000), &mut out).unwrap();
        enc.finish(&mut out).unwrap();
        assert!(out.starts_with(b"PREFIX"));
        assert_eq!(decode(encoding, &out[6..]), json_like(50_000), "{encoding}");
    }
}
