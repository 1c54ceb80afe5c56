//! Pick micro-benchmark (no criterion): `cargo test -p drove-balancer --release --test it
//! -- --ignored --nocapture pick_bench`. Prints ns/pick per algorithm for 3 and 100 backends.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant as WallClock;

use drove_balancer::{Algorithm, PickContext};

use crate::support::*;

const PICKS: usize = 10_000_000;

#[test]
#[ignore = "benchmark; run in release with --ignored --nocapture"]
fn pick_bench() {
    let algs = [
        Algorithm::RoundRobin,
        Algorithm::LeastConn,
        Algorithm::IpHash,
        Algorithm::Hash,
        Algorithm::RandomTwo,
        Algorithm::P2cEwma,
    ];
    let mut r = Rng(3);
    // Varying keys so hashing does not hit one cache line; 4096 of them fit in L1/L2.
    let ips: Vec<IpAddr> = (0..4096)
        .map(|_| IpAddr::V4(Ipv4Addr::from(r.next() as u32)))
        .collect();
    let hashes: Vec<u64> = (0..4096).map(|_| r.next()).collect();
    // Baseline: the clock read every pick makes (tokio's Instant; with the test-util
    // feature that dev builds enable it first checks for a paused runtime clock).
    let start = WallClock::now();
    for _ in 0..PICKS {
        black_box(tokio::time::Instant::now());
    }
    println!(
        "clock read: {:.1} ns",
        start.elapsed().as_nanos() as f64 / PICKS as f64
    );
    println!("{:<12} {:>10} {:>10}", "algorithm", "3 (ns)", "100 (ns)");
    for alg in algs {
        let mut row = Vec::new();
        for n in [3usize, 100] {
            let b = balancer(alg, specs(n));
            let start = WallClock::now();
            for i in 0..PICKS {
                let mut c = PickContext::new(ips[i & 4095]);
                c.hash = Some(hashes[i & 4095]);
                black_box(b.pick(black_box(&c), &[]));
            }
            row.push(start.elapsed().as_nanos() as f64 / PICKS as f64);
        }
        println!("{:<12} {:>10.1} {:>10.1}", alg.as_str(), row[0], row[1]);
    }
    // Sticky hit: the token is looked up before the algorithm runs.
    for n in [3usize, 100] {
        let b = balancer(Algorithm::RoundRobin, specs(n));
        let token = b
            .find(&format!("web.{}", n - 1))
            .unwrap()
            .sticky_token()
            .to_string();
        let start = WallClock::now();
        for _ in 0..PICKS {
            let mut c = PickContext::new(ips[0]);
            c.sticky = Some(&token);
            black_box(b.pick(black_box(&c), &[]));
        }
        println!(
            "sticky (last of {n}): {:.1} ns/pick",
            start.elapsed().as_nanos() as f64 / PICKS as f64
        );
    }
}

#[test]
#[ignore = "benchmark; run in release with --ignored --nocapture"]
fn pick_bench_threads() {
    // Same picks from several threads at once: shows what the shared cursor, rng and
    // per-backend counters cost when workers contend for their cache lines.
    let threads = std::thread::available_parallelism().map_or(4, |n| n.get().min(8));
    let per_thread = PICKS / threads;
    println!("{threads} threads, ns per pick per thread (3 / 100 backends):");
    for alg in [
        Algorithm::RoundRobin,
        Algorithm::LeastConn,
        Algorithm::Hash,
        Algorithm::RandomTwo,
        Algorithm::P2cEwma,
    ] {
        let mut row = Vec::new();
        for n in [3usize, 100] {
            let b = balancer(alg, specs(n));
            let start = WallClock::now();
            std::thread::scope(|s| {
                for t in 0..threads {
                    let b = &b;
                    s.spawn(move || {
                        let mut r = Rng(t as u64);
                        for _ in 0..per_thread {
                            let mut c = ctx();
                            c.hash = Some(r.next());
                            let p = b.pick(black_box(&c), &[]).unwrap();
                            // A real request holds the guard: in-flight counters move too.
                            drop(black_box(b.start(&p)));
                        }
                    });
                }
            });
            row.push(start.elapsed().as_nanos() as f64 / per_thread as f64);
        }
        println!("{:<12} {:>10.1} {:>10.1}", alg.as_str(), row[0], row[1]);
    }
}
