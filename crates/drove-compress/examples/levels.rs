//! Measures each encoding and level on a body: output size, and CPU time per response
//! including the encoder's creation (what a proxy pays per compressed response). Used
//! to choose the default levels; see the crate's README for the numbers.
//!
//! ```text
//! cargo run --release -p drove-compress --example levels [FILE...]
//! ```
//! Without files it uses a generated 20 KB JSON API response and 200 KB of HTML-like
//! text. Runs single-threaded, best of five 150 ms rounds per line.

use std::time::{Duration, Instant};

use drove_compress::{Encoder, Encoding};

/// A JSON list like an API returns: 20 KB of objects with repeated keys.
fn api_json(len: usize) -> Vec<u8> {
    let mut out = b"[".to_vec();
    let mut i = 0u64;
    while out.len() < len {
        let x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 44;
        out.extend_from_slice(
            format!(
                "{{\"id\":{i},\"username\":\"user{x}\",\"email\":\"user{x}@example.com\",\"active\":{},\"created_at\":\"2024-0{}-1{}T12:{:02}:00Z\",\"roles\":[\"reader\"{}]}},",
                !x.is_multiple_of(3),
                1 + x % 9,
                x % 10,
                x % 60,
                if x.is_multiple_of(5) { ",\"admin\"" } else { "" }
            )
            .as_bytes(),
        );
        i += 1;
    }
    out.truncate(len - 1);
    out.push(b']');
    out
}

fn html_like(len: usize) -> Vec<u8> {
    let words = [
        "the",
        "balancer",
        "instance",
        "request",
        "drove",
        "health",
        "restart",
        "proxy",
        "compression",
        "stream",
        "backend",
        "header",
        "config",
        "latency",
        "retry",
    ];
    let mut out = b"<!doctype html><html><body>".to_vec();
    let mut i = 0usize;
    while out.len() < len {
        out.extend_from_slice(format!("<p class=\"c{}\">", i % 7).as_bytes());
        for k in 0..12 {
            out.extend_from_slice(words[(i * 7 + k * 3) % words.len()].as_bytes());
            out.push(b' ');
        }
        out.extend_from_slice(b"</p>\n");
        i += 1;
    }
    out.truncate(len);
    out
}

fn one(encoding: Encoding, level: u32, body: &[u8]) -> usize {
    let mut enc = Encoder::new(encoding, level).unwrap();
    let mut out = Vec::with_capacity(body.len() / 2);
    for c in body.chunks(16 * 1024) {
        enc.write(c, &mut out).unwrap();
    }
    enc.finish(&mut out).unwrap();
    out.len()
}

fn main() {
    let mut bodies: Vec<(String, Vec<u8>)> = std::env::args()
        .skip(1)
        .map(|p| (p.clone(), std::fs::read(&p).expect("readable file")))
        .collect();
    if bodies.is_empty() {
        bodies.push(("generated API JSON".into(), api_json(20_000)));
        bodies.push(("generated HTML".into(), html_like(200_000)));
    }
    let runs: &[(Encoding, &[u32])] = &[
        (Encoding::Gzip, &[1, 2, 4, 6, 9]),
        (Encoding::Br, &[0, 1, 2, 3, 4, 5, 6, 9]),
        (Encoding::Zstd, &[1, 2, 3, 6, 9]),
    ];
    for (name, body) in &bodies {
        println!("{name}: {} bytes", body.len());
        println!("  encoding level     bytes  ratio   us/response    MB/s");
        for (encoding, levels) in runs {
            for &level in *levels {
                let size = one(*encoding, level, body);
                // Best of five rounds: on a shared machine the minimum is the cost.
                let mut per = f64::MAX;
                for _ in 0..5 {
                    let start = Instant::now();
                    let mut n = 0u32;
                    while start.elapsed() < Duration::from_millis(150) || n < 3 {
                        std::hint::black_box(one(*encoding, level, body));
                        n += 1;
                    }
                    per = per.min(start.elapsed().as_secs_f64() / f64::from(n));
                }
                println!(
                    "  {:<8} {:>5} {:>9} {:>6.3} {:>13.1} {:>7.1}",
                    encoding.name(),
                    level,
                    size,
                    size as f64 / body.len() as f64,
                    per * 1e6,
                    body.len() as f64 / per / 1e6
                );
            }
        }
    }
}
