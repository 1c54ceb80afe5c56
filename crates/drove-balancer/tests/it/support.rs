//! Helpers shared by the integration tests.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use drove_balancer::{Algorithm, Backend, BackendSpec, Balancer, BalancerSettings, PickContext};

/// An address nothing listens on in the unit-style tests (they never connect).
pub fn addr(i: usize) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 20_000 + i as u16))
}

/// Primary `web.{i}` of weight 1.
pub fn spec(i: usize) -> BackendSpec {
    BackendSpec {
        id: format!("web.{i}"),
        addr: addr(i),
        weight: 1,
        backup: false,
    }
}

/// Primaries `web.0..web.{n-1}`.
pub fn specs(n: usize) -> Vec<BackendSpec> {
    (0..n).map(spec).collect()
}

/// Primaries with these weights.
pub fn weighted(weights: &[u32]) -> Vec<BackendSpec> {
    weights
        .iter()
        .enumerate()
        .map(|(i, &w)| BackendSpec {
            weight: w,
            ..spec(i)
        })
        .collect()
}

pub fn balancer(algorithm: Algorithm, specs: Vec<BackendSpec>) -> Arc<Balancer> {
    let b = Balancer::new(BalancerSettings {
        algorithm,
        ..BalancerSettings::default()
    });
    b.set_backends(specs);
    b
}

pub fn ctx() -> PickContext<'static> {
    PickContext::new(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

pub fn pick(b: &Balancer) -> Arc<Backend> {
    b.pick(&ctx(), &[]).expect("a backend")
}

pub fn pick_id(b: &Balancer) -> String {
    pick(b).id().to_string()
}

/// Picks `n` times (nothing held) and counts per id.
pub fn counts(b: &Balancer, n: usize) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for _ in 0..n {
        *m.entry(pick_id(b)).or_default() += 1;
    }
    m
}

pub fn count_of(m: &HashMap<String, usize>, id: &str) -> usize {
    m.get(id).copied().unwrap_or(0)
}

/// Deterministic pseudo-random u64s (splitmix64), so failures reproduce.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}
