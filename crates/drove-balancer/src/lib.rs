//! The backend set of one balancer and how to pick from it.
//!
//! `drove-balancer` owns *which backends exist* ([`Balancer::set_backends`],
//! [`Balancer::upsert`], [`Balancer::remove`]), their state — `healthy` (active probes and
//! passive ejection) kept apart from `enabled` (changed only by admin/drain), exact
//! in-flight counts, peak-EWMA latency — and *how to pick one* ([`Algorithm`]).
//! It knows nothing of HTTP parsing, TOML or the supervisor: the proxy hands it a
//! [`PickContext`] (client IP, an optional pre-hashed key, an optional sticky token) and
//! reports each attempt's [`Outcome`] back through the [`InFlight`] guard.
//! The set is swapped lock-free (`arc-swap`): readers on the hot path never block, and a
//! pick is O(1) for every algorithm but `least_conn` (a scan, like nginx).
//! Active health probes (HTTP or TCP) run as tokio tasks ([`Balancer::spawn_health_checks`]).

mod backend;
mod carry;
mod health;
mod maglev;
mod select;
mod stats;

pub use backend::{Backend, BackendSpec, InFlight, Outcome};
pub use carry::BackendCarry;
pub use health::{ActiveHealth, ProbeKind};
pub use select::{Algorithm, PickContext};
pub use stats::{ResponseSnapshot, ResponseStats, LATENCY_BUCKETS};

use arc_swap::ArcSwap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Passive health: eject a backend after `max_fails` failed attempts within
/// `fail_timeout`, for `fail_timeout` (nginx `max_fails`/`fail_timeout`).
#[derive(Debug, Clone, PartialEq)]
pub struct PassiveHealth {
    /// Failures within `fail_timeout` that eject; 0 turns passive ejection off.
    pub max_fails: u32,
    /// The window failures are counted in, and how long an ejection lasts.
    pub fail_timeout: Duration,
    /// Whether a 5xx response counts as a failure (connect errors and timeouts always do).
    pub on_5xx: bool,
}

impl Default for PassiveHealth {
    fn default() -> Self {
        PassiveHealth {
            max_fails: 3,
            fail_timeout: Duration::from_secs(10),
            on_5xx: false,
        }
    }
}

/// How a [`Balancer`] picks and ejects.
#[derive(Debug, Clone, PartialEq)]
pub struct BalancerSettings {
    /// The selection algorithm.
    pub algorithm: Algorithm,
    /// Passive ejection.
    pub passive: PassiveHealth,
    /// At most this share (0..=100) of the primary backends may be passively ejected at
    /// once; past it, failures are counted but nothing more is ejected (like Envoy's
    /// `max_ejection_percent`), so a fleet-wide blip does not empty the pool.
    pub max_ejected_percent: u8,
}

impl Default for BalancerSettings {
    fn default() -> Self {
        BalancerSettings {
            algorithm: Algorithm::RoundRobin,
            passive: PassiveHealth::default(),
            max_ejected_percent: 50,
        }
    }
}

/// One immutable generation of the backend set; replaced whole on every change.
pub(crate) struct BackendSet {
    pub(crate) all: Vec<Arc<Backend>>,
    pub(crate) primaries: Vec<Arc<Backend>>,
    pub(crate) backups: Vec<Arc<Backend>>,
    /// Smooth weighted round-robin order over `primaries` (indexes), precomputed so the
    /// pick is one atomic increment.
    pub(crate) rr_order: Vec<u32>,
    /// Consistent-hash lookup table over `primaries`.
    pub(crate) maglev: maglev::Table,
    /// (key, index in `all`) sorted by key: a sticky token is found in O(log n) instead
    /// of a scan of the whole set on every request that carries the cookie.
    pub(crate) by_key: Vec<(u64, u32)>,
}

/// A load balancer's backend set and selection state, shared by every worker.
pub struct Balancer {
    /// Swapped whole by a reload ([`Balancer::set_settings`]); a pick reads it once.
    settings: ArcSwap<BalancerSettings>,
    set: ArcSwap<BackendSet>,
    /// Monotonic counter feeding round robin and tie-breaks.
    cursor: AtomicUsize,
    /// Per-balancer random state for random_two / p2c (xorshift; races only perturb it).
    rng: AtomicU64,
    pub(crate) clock: backend::Clock,
    /// Counts the times a backend left rotation for its health (an active probe took it
    /// down, or a passive ejection): requests waiting on it subscribe (see
    /// [`Balancer::left_rotation`]) instead of polling its health.
    left_rotation: tokio::sync::watch::Sender<u64>,
}

impl std::fmt::Debug for Balancer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Balancer")
            .field("settings", &**self.settings.load())
            .field("backends", &self.snapshot().len())
            .finish()
    }
}

impl Balancer {
    /// An empty balancer.
    pub fn new(settings: BalancerSettings) -> Arc<Balancer> {
        let clock = backend::Clock::new();
        Arc::new(Balancer {
            set: ArcSwap::from_pointee(BackendSet::build(Vec::new())),
            settings: ArcSwap::from_pointee(settings),
            cursor: AtomicUsize::new(0),
            rng: AtomicU64::new(0x9E37_79B9_7F4A_7C15 ^ std::process::id() as u64),
            clock,
            left_rotation: tokio::sync::watch::Sender::new(0),
        })
    }

    /// Changes each time a backend leaves rotation for its health (an active probe took
    /// it down, or it was passively ejected): whoever waits on a backend can look at its
    /// health then, rather than every few milliseconds. Taken out of rotation by an
    /// operator (drain, disable) does not count: requests in flight finish there.
    pub fn left_rotation(&self) -> tokio::sync::watch::Receiver<u64> {
        self.left_rotation.subscribe()
    }

    /// A backend just left rotation for its health.
    pub(crate) fn note_left_rotation(&self) {
        self.left_rotation.send_modify(|n| *n += 1);
    }

    /// The settings in force.
    pub fn settings(&self) -> arc_swap::Guard<Arc<BalancerSettings>> {
        self.settings.load()
    }

    /// Replaces the settings (a reload): picks from now on use the new algorithm and
    /// attempts that end from now on are judged by the new passive-health rules. The
    /// backends, their health, ejections, in-flight counts and latency EWMA are kept.
    pub fn set_settings(&self, settings: BalancerSettings) {
        self.settings.store(Arc::new(settings));
    }

    /// Replaces the whole set. Backends whose id is kept keep their state (health,
    /// in-flight, EWMA) when their address is unchanged.
    pub fn set_backends(&self, specs: Vec<BackendSpec>) {
        // rcu, not load-then-store: a concurrent upsert/remove is retried against the
        // new set instead of being overwritten with state it never saw.
        self.set.rcu(|old| {
            let all = specs
                .iter()
                .map(|spec| match old.all.iter().find(|b| b.id() == spec.id) {
                    Some(b) if b.spec.addr == spec.addr => b.with_spec(spec.clone()),
                    _ => Arc::new(Backend::new(spec.clone(), &self.clock)),
                })
                .collect();
            BackendSet::build(all)
        });
    }

    /// Adds a backend, or updates the one with the same id (keeping its state when its
    /// address is unchanged).
    pub fn upsert(&self, spec: BackendSpec) {
        self.set.rcu(|old| {
            let mut all: Vec<Arc<Backend>> = old.all.clone();
            match all.iter().position(|b| b.id() == spec.id) {
                Some(i) if all[i].spec.addr == spec.addr => all[i] = all[i].with_spec(spec.clone()),
                Some(i) => all[i] = Arc::new(Backend::new(spec.clone(), &self.clock)),
                None => all.push(Arc::new(Backend::new(spec.clone(), &self.clock))),
            }
            BackendSet::build(all)
        });
    }

    /// Removes a backend by id; returns it if it was there (its in-flight requests go on).
    pub fn remove(&self, id: &str) -> Option<Arc<Backend>> {
        let found = self.find(id)?;
        self.set.rcu(|old| {
            let all = old.all.iter().filter(|b| b.id() != id).cloned().collect();
            BackendSet::build(all)
        });
        Some(found)
    }

    /// The backend with this id.
    pub fn find(&self, id: &str) -> Option<Arc<Backend>> {
        self.set.load().all.iter().find(|b| b.id() == id).cloned()
    }

    /// Takes a backend in or out of rotation (admin/drain); health is untouched.
    /// Returns whether the id was found.
    pub fn set_enabled(&self, id: &str, enabled: bool) -> bool {
        match self.find(id) {
            Some(b) => {
                b.set_enabled(enabled);
                true
            }
            None => false,
        }
    }

    /// A new process took over the backend `id` (an instance restarted in place and
    /// found ready by the supervisor): its health starts afresh, so it is in rotation
    /// at once rather than after the next probe (a rolling restart moves on to the next
    /// instance as soon as this one is ready). Returns whether the id was found.
    pub fn reset_health(&self, id: &str) -> bool {
        match self.find(id) {
            Some(b) => {
                b.reset_health();
                true
            }
            None => false,
        }
    }

    /// Active health checks were turned off (a reload): every backend counts as passing
    /// its probes again, as a new backend does; nothing would ever probe it back up.
    pub fn clear_probe_state(&self) {
        for b in self.set.load().all.iter() {
            b.record_probe(true, 1, 1);
        }
    }

    /// Waits until the backend has no request in flight, or `grace` has passed.
    /// Returns whether it became idle.
    pub async fn wait_idle(&self, id: &str, grace: Duration) -> bool {
        let Some(b) = self.find(id) else { return true };
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            if b.in_flight() == 0 {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            // Polling is fine here: drains are rare and 10 ms is far below any grace.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The current backends, in set order.
    pub fn snapshot(&self) -> Vec<Arc<Backend>> {
        self.set.load().all.clone()
    }

    /// Whether one more passive ejection stays within `max_ejected_percent`.
    ///
    /// The share is taken of the primaries that would serve but for passive ejection
    /// (enabled and probing up), not of all of them: counted over all, a 2-instance
    /// service with one instance drained for a rolling restart could have the other
    /// ejected at 50%, emptying the pool — what the cap exists to prevent. Ejecting a
    /// backend outside that base takes nothing from it, so is always allowed.
    pub(crate) fn may_eject(&self, candidate: &Backend) -> bool {
        if !(candidate.is_enabled() && candidate.probe_up()) {
            return true;
        }
        let set = self.set.load();
        let now = self.clock.now();
        let (mut base, mut ejected) = (0usize, 0usize);
        for b in set
            .primaries
            .iter()
            .filter(|b| b.is_enabled() && b.probe_up())
        {
            base += 1;
            if b.is_ejected_at(now) {
                ejected += 1;
            }
        }
        (ejected + 1) * 100 <= base * self.settings.load().max_ejected_percent as usize
    }

    fn next_random(&self) -> u64 {
        // xorshift64*; a lost update between threads only repeats a number.
        let mut x = self.rng.load(Ordering::Relaxed);
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng.store(x, Ordering::Relaxed);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

impl BackendSet {
    fn build(all: Vec<Arc<Backend>>) -> BackendSet {
        let primaries: Vec<_> = all.iter().filter(|b| !b.is_backup()).cloned().collect();
        let backups: Vec<_> = all.iter().filter(|b| b.is_backup()).cloned().collect();
        let weights: Vec<u32> = primaries.iter().map(|b| b.weight()).collect();
        let rr_order = select::smooth_wrr_order(&weights);
        let keys: Vec<(u64, u32)> = primaries.iter().map(|b| (b.key(), b.weight())).collect();
        let maglev = maglev::Table::build(&keys);
        let mut by_key: Vec<(u64, u32)> = all
            .iter()
            .enumerate()
            .map(|(i, b)| (b.key(), i as u32))
            .collect();
        by_key.sort_unstable();
        BackendSet {
            all,
            primaries,
            backups,
            rr_order,
            maglev,
            by_key,
        }
    }

    /// The backend a sticky token names (see [`Backend::sticky_token`]); None for an
    /// unknown or malformed token.
    pub(crate) fn by_sticky_token(&self, token: &str) -> Option<&Arc<Backend>> {
        // Tokens are exactly 16 hex digits; anything else (a stale format, a forged
        // cookie) is unknown, not an error.
        if token.len() != 16 {
            return None;
        }
        let key = u64::from_str_radix(token, 16).ok()?;
        let i = self.by_key.binary_search_by_key(&key, |&(k, _)| k).ok()?;
        self.all.get(self.by_key[i].1 as usize)
    }
}

/// Stable 64-bit hash of bytes (FNV-1a, then a splitmix64 finaliser for avalanche): the
/// same on every run and every host, so consistent hashing agrees across restarts and
/// across balancers. Not DoS-resistant, which is fine: keys only choose among backends.
pub fn hash_bytes(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    select::mix(h)
}

/// Stable hash of an IP address (v4-mapped v6 hashes as v4).
pub fn hash_ip(ip: std::net::IpAddr) -> u64 {
    match drove_net::canonical_ip(ip) {
        std::net::IpAddr::V4(v4) => hash_bytes(&v4.octets()),
        std::net::IpAddr::V6(v6) => hash_bytes(&v6.octets()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(i: u16) -> BackendSpec {
        BackendSpec {
            id: format!("web.{i}"),
            ..BackendSpec::new(std::net::SocketAddr::from(([127, 0, 0, 1], i)))
        }
    }

    #[test]
    fn sticky_token_lookup() {
        let b = Balancer::new(BalancerSettings::default());
        b.set_backends((1..=50).map(spec).collect());
        let set = b.set.load();
        for t in &set.all {
            let found = set.by_sticky_token(t.sticky_token()).unwrap();
            assert_eq!(found.id(), t.id());
            // Case does not matter to the parser, length does.
            assert!(set
                .by_sticky_token(&t.sticky_token().to_uppercase())
                .is_some());
            assert!(set.by_sticky_token(&t.sticky_token()[1..]).is_none());
        }
        for bad in [
            "",
            "0000000000000000",
            "+fffffffffffffff",
            "zzzzzzzzzzzzzzzz",
            "ééééééééé",
        ] {
            assert!(set.by_sticky_token(bad).is_none(), "{bad:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn ejection_cap_counts_only_backends_that_would_serve() {
        let b = Balancer::new(BalancerSettings::default());
        b.set_backends((1..=4).map(spec).collect());
        let fail = |id: &str| {
            let t = b.find(id).unwrap();
            for _ in 0..3 {
                b.start(&t).finish(Outcome::ConnectFailed, Duration::ZERO);
            }
            t.ejections()
        };
        // Two of four are down by probe: only one of the other two may be ejected.
        for id in ["web.1", "web.2"] {
            b.find(id).unwrap().record_probe(false, 1, 1);
        }
        assert_eq!(fail("web.3"), 1);
        assert_eq!(fail("web.4"), 0);
        let ctx = PickContext::new(std::net::Ipv4Addr::LOCALHOST.into());
        assert_eq!(b.pick(&ctx, &[]).unwrap().id(), "web.4");
    }

    #[test]
    fn ip_hash_treats_v4_mapped_v6_as_v4() {
        let v4: std::net::IpAddr = "192.0.2.7".parse().unwrap();
        let v6: std::net::IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(hash_ip(v4), hash_ip(v6));
        assert_ne!(hash_ip(v4), hash_ip("192.0.2.8".parse().unwrap()));
        // Stable across runs, hosts and drove versions (balancers of one fleet, and a
        // drove before and after an upgrade, must agree): pinned values.
        assert_eq!(hash_bytes(b"web.1"), 0xb70c_8034_5511_2702);
        assert_eq!(hash_bytes(b""), 0xc381_7c01_6ba4_ff30);
        assert_eq!(hash_ip(v4), 0x9355_7860_0dfa_27d9);
    }
}
