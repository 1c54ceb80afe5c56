//! One backend: its spec, its shared state, and the in-flight guard of an attempt.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::Balancer;

/// What the balancer needs to know of a backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendSpec {
    /// Stable name: `web.2` for a supervised instance, the address for a static backend.
    pub id: String,
    /// Where to connect.
    pub addr: SocketAddr,
    /// Relative share of traffic (>= 1).
    pub weight: u32,
    /// Only used when no primary backend is available.
    pub backup: bool,
}

impl BackendSpec {
    /// A primary backend of weight 1 named after its address.
    pub fn new(addr: SocketAddr) -> BackendSpec {
        BackendSpec {
            id: addr.to_string(),
            addr,
            weight: 1,
            backup: false,
        }
    }
}

/// How one attempt on a backend ended, as the proxy saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A response below 500 (or any response when 5xx do not count as failures).
    Ok,
    /// A 5xx response.
    Http5xx,
    /// The TCP connection could not be made (refused, unreachable, connect timeout).
    ConnectFailed,
    /// No response head within the per-try timeout.
    TimedOut,
    /// The connection broke mid-exchange (reset, closed early, bad response).
    Broken,
    /// The client went away; says nothing about the backend.
    Cancelled,
}

/// Monotonic nanoseconds since the balancer was built; from tokio's clock so tests can
/// pause time. 0 means "never".
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    epoch: tokio::time::Instant,
}

impl Clock {
    pub(crate) fn new() -> Clock {
        Clock {
            epoch: tokio::time::Instant::now(),
        }
    }
    pub(crate) fn now(&self) -> u64 {
        self.at(tokio::time::Instant::now())
    }
    /// `t` on this clock: a reading the caller already took (the proxy reads the clock
    /// once per step of a request, not once per use).
    pub(crate) fn at(&self, t: tokio::time::Instant) -> u64 {
        t.saturating_duration_since(self.epoch).as_nanos() as u64 + 1
    }
}

/// State that outlives a change of weight or backup flag (kept across set generations).
#[derive(Debug)]
pub(crate) struct State {
    in_flight: AtomicI64,
    enabled: AtomicBool,
    pub(crate) probe_up: AtomicBool,
    probe_streak: AtomicI64,
    ejected_until: AtomicU64,
    fails: AtomicU32,
    fail_window_start: AtomicU64,
    /// Peak-EWMA of response latency in ns, stored as f64 bits.
    pub(crate) ewma_bits: AtomicU64,
    ewma_stamp: AtomicU64,
    pub(crate) requests: AtomicU64,
    pub(crate) failures: AtomicU64,
    pub(crate) ejections: AtomicU64,
    pub(crate) responses: crate::stats::ResponseStats,
}

/// A backend of a [`Balancer`]: its spec and live state. Shared by every worker.
#[derive(Debug)]
pub struct Backend {
    pub(crate) spec: BackendSpec,
    key: u64,
    sticky_token: String,
    pub(crate) state: Arc<State>,
    clock: Clock,
}

/// Decay time constant of the peak-EWMA (Finagle and linkerd use 10 s): long enough to
/// smooth noise, short enough to forget a backend's bad minute.
const EWMA_DECAY_NS: f64 = 10e9;

impl Backend {
    pub(crate) fn new(spec: BackendSpec, clock: &crate::backend::Clock) -> Backend {
        let key = crate::hash_bytes(spec.id.as_bytes());
        Backend {
            sticky_token: format!("{key:016x}"),
            key,
            spec,
            clock: *clock,
            state: Arc::new(State {
                in_flight: AtomicI64::new(0),
                enabled: AtomicBool::new(true),
                probe_up: AtomicBool::new(true),
                probe_streak: AtomicI64::new(0),
                ejected_until: AtomicU64::new(0),
                fails: AtomicU32::new(0),
                fail_window_start: AtomicU64::new(0),
                ewma_bits: AtomicU64::new(0f64.to_bits()),
                ewma_stamp: AtomicU64::new(0),
                requests: AtomicU64::new(0),
                failures: AtomicU64::new(0),
                ejections: AtomicU64::new(0),
                responses: Default::default(),
            }),
        }
    }

    /// The same backend (same state) with a new spec (weight, backup).
    pub(crate) fn with_spec(&self, spec: BackendSpec) -> Arc<Backend> {
        Arc::new(Backend {
            spec,
            key: self.key,
            sticky_token: self.sticky_token.clone(),
            state: self.state.clone(),
            clock: self.clock,
        })
    }

    /// Stable id (`web.2`, or the address).
    pub fn id(&self) -> &str {
        &self.spec.id
    }
    /// Where to connect.
    pub fn addr(&self) -> SocketAddr {
        self.spec.addr
    }
    /// Stable 64-bit key derived from the id (used by exclusion lists and hashing).
    pub fn key(&self) -> u64 {
        self.key
    }
    /// The value a sticky cookie carries for this backend (hex of the key: it does not
    /// reveal the address).
    pub fn sticky_token(&self) -> &str {
        &self.sticky_token
    }
    /// Relative weight.
    pub fn weight(&self) -> u32 {
        self.spec.weight.max(1)
    }
    /// Whether it is a backup.
    pub fn is_backup(&self) -> bool {
        self.spec.backup
    }
    /// Requests (and tunnels) in flight on it right now.
    pub fn in_flight(&self) -> u64 {
        self.state.in_flight.load(Ordering::Relaxed).max(0) as u64
    }
    /// Responses relayed from it (status classes, latency histogram).
    pub fn responses(&self) -> &crate::stats::ResponseStats {
        &self.state.responses
    }
    /// Attempts started on it since it was added.
    pub fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::Relaxed)
    }
    /// Attempts that failed (connect, timeout, broken, and 5xx when they count).
    pub fn failures(&self) -> u64 {
        self.state.failures.load(Ordering::Relaxed)
    }
    /// Times it was passively ejected.
    pub fn ejections(&self) -> u64 {
        self.state.ejections.load(Ordering::Relaxed)
    }
    /// In rotation as far as admin/drain is concerned.
    pub fn is_enabled(&self) -> bool {
        self.state.enabled.load(Ordering::Relaxed)
    }
    pub(crate) fn set_enabled(&self, enabled: bool) {
        self.state.enabled.store(enabled, Ordering::Relaxed);
    }
    /// Up according to active probes (true when there are none).
    pub fn probe_up(&self) -> bool {
        self.state.probe_up.load(Ordering::Relaxed)
    }
    pub(crate) fn is_ejected_at(&self, now: u64) -> bool {
        self.state.ejected_until.load(Ordering::Relaxed) > now
    }
    /// Healthy: probes say up and it is not passively ejected.
    pub fn is_healthy_at(&self, now: u64) -> bool {
        self.probe_up() && !self.is_ejected_at(now)
    }
    /// Whether a new request may be sent to it: enabled and healthy.
    pub fn is_available_at(&self, now: u64) -> bool {
        self.is_enabled() && self.is_healthy_at(now)
    }

    /// Peak-EWMA latency in ns, decayed to `now`.
    pub(crate) fn ewma_ns(&self, now: u64) -> f64 {
        let v = f64::from_bits(self.state.ewma_bits.load(Ordering::Relaxed));
        let at = self.state.ewma_stamp.load(Ordering::Relaxed);
        let elapsed = now.saturating_sub(at) as f64;
        v * (-elapsed / EWMA_DECAY_NS).exp()
    }

    pub(crate) fn observe_latency(&self, now: u64, rtt: Duration) {
        // The same value as `as_nanos() as f64` (exact below 2^53 ns, 104 days) without
        // the u128-to-float conversion, a library call, on every response.
        let rtt = rtt.as_secs() as f64 * 1e9 + f64::from(rtt.subsec_nanos());
        let raw = f64::from_bits(self.state.ewma_bits.load(Ordering::Relaxed));
        let at = self.state.ewma_stamp.load(Ordering::Relaxed);
        let w = (-(now.saturating_sub(at) as f64) / EWMA_DECAY_NS).exp();
        // Blend the *stored* value with weight w. Blending the already-decayed value
        // (`ewma_ns`, i.e. raw * w) with w again counted the elapsed time twice: the old
        // estimate faded with half the 10 s time constant and the two weights no longer
        // summed to 1, biasing the estimate low when traffic is sparse.
        let next = if rtt > raw * w {
            rtt // peak: jump up at once, decay slowly
        } else {
            raw * w + rtt * (1.0 - w)
        };
        self.state
            .ewma_bits
            .store(next.to_bits(), Ordering::Relaxed);
        self.state.ewma_stamp.store(now, Ordering::Relaxed);
    }

    /// A new process answers at this address (the supervisor found it ready): what the
    /// probes and passive checks said of the process before it is void; it starts
    /// healthy, as a new backend does, until its own probes say otherwise.
    pub(crate) fn reset_health(&self) {
        self.state.probe_up.store(true, Ordering::Relaxed);
        self.state.probe_streak.store(0, Ordering::Relaxed);
        self.state.ejected_until.store(0, Ordering::Relaxed);
        self.state.fails.store(0, Ordering::Relaxed);
    }

    /// Records an active probe result; returns the new `probe_up` if it flipped.
    pub(crate) fn record_probe(&self, ok: bool, rise: u32, fall: u32) -> Option<bool> {
        let up = self.probe_up();
        // streak > 0: consecutive successes; < 0: consecutive failures.
        let streak = if ok {
            let s = self.state.probe_streak.load(Ordering::Relaxed);
            let s = if s > 0 { s + 1 } else { 1 };
            self.state.probe_streak.store(s, Ordering::Relaxed);
            s
        } else {
            let s = self.state.probe_streak.load(Ordering::Relaxed);
            let s = if s < 0 { s - 1 } else { -1 };
            self.state.probe_streak.store(s, Ordering::Relaxed);
            s
        };
        if !up && ok && streak >= rise.max(1) as i64 {
            self.state.probe_up.store(true, Ordering::Relaxed);
            // A backend that probes healthy again is forgiven its passive ejection.
            self.state.ejected_until.store(0, Ordering::Relaxed);
            self.state.fails.store(0, Ordering::Relaxed);
            return Some(true);
        }
        if up && !ok && -streak >= fall.max(1) as i64 {
            self.state.probe_up.store(false, Ordering::Relaxed);
            return Some(false);
        }
        None
    }
}

/// An attempt in flight on a backend: counted in `in_flight` until finished or dropped.
/// Dropping it without [`InFlight::finish`] counts as [`Outcome::Cancelled`].
#[derive(Debug)]
pub struct InFlight {
    backend: Arc<Backend>,
    balancer: Arc<Balancer>,
    finished: bool,
}

impl Balancer {
    /// Starts an attempt on `backend` (counts it in flight).
    pub fn start(self: &Arc<Self>, backend: &Arc<Backend>) -> InFlight {
        backend.state.in_flight.fetch_add(1, Ordering::Relaxed);
        backend.state.requests.fetch_add(1, Ordering::Relaxed);
        InFlight {
            backend: backend.clone(),
            balancer: self.clone(),
            finished: false,
        }
    }

    fn record(&self, b: &Backend, outcome: Outcome, latency: Duration, at: tokio::time::Instant) {
        let now = self.clock.at(at);
        let p = &self.settings().passive;
        let failed = match outcome {
            Outcome::Ok => false,
            Outcome::Http5xx => p.on_5xx,
            Outcome::ConnectFailed | Outcome::TimedOut | Outcome::Broken => true,
            Outcome::Cancelled => return,
        };
        if !failed {
            // A zero latency means "no sample" (the proxy passes it for a first request on
            // a fresh connection, whose setup says nothing about the backend's speed).
            if (outcome == Outcome::Ok || outcome == Outcome::Http5xx) && !latency.is_zero() {
                b.observe_latency(now, latency);
            }
            if b.state.fails.load(Ordering::Relaxed) != 0 {
                b.state.fails.store(0, Ordering::Relaxed);
            }
            return;
        }
        b.state.failures.fetch_add(1, Ordering::Relaxed);
        // A failure is as bad as the slowest answer: push the EWMA up so p2c avoids it.
        b.observe_latency(now, latency.max(Duration::from_secs(1)));
        if p.max_fails == 0 {
            return;
        }
        let window = p.fail_timeout.as_nanos() as u64;
        let start = b.state.fail_window_start.load(Ordering::Relaxed);
        let fails = if start == 0 || now.saturating_sub(start) > window {
            b.state.fail_window_start.store(now, Ordering::Relaxed);
            b.state.fails.store(1, Ordering::Relaxed);
            1
        } else {
            b.state.fails.fetch_add(1, Ordering::Relaxed) + 1
        };
        if fails >= p.max_fails && !b.is_ejected_at(now) && self.may_eject(b) {
            b.state
                .ejected_until
                .store(now + window.max(1), Ordering::Relaxed);
            b.state.fails.store(0, Ordering::Relaxed);
            b.state.fail_window_start.store(0, Ordering::Relaxed);
            b.state.ejections.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(backend = %b.id(), fails, "backend ejected (passive health)");
            self.note_left_rotation();
        }
    }
}

impl InFlight {
    /// The backend of this attempt.
    pub fn backend(&self) -> &Arc<Backend> {
        &self.backend
    }

    /// Ends the attempt, feeding passive health and the latency EWMA.
    /// An attempt has one outcome: after [`InFlight::record`] this only ends it (a
    /// second report would count one failure twice and eject early).
    pub fn finish(mut self, outcome: Outcome, latency: Duration) {
        self.record_at(outcome, latency, tokio::time::Instant::now());
    }

    /// Records the outcome now but keeps counting the attempt in flight until dropped
    /// (the response head arrived; its body is still streaming).
    pub fn record(&mut self, outcome: Outcome, latency: Duration) {
        self.record_at(outcome, latency, tokio::time::Instant::now());
    }

    /// [`InFlight::record`] with the time it ended (a clock reading the caller took).
    pub fn record_at(&mut self, outcome: Outcome, latency: Duration, at: tokio::time::Instant) {
        if !self.finished {
            self.finished = true;
            self.balancer.record(&self.backend, outcome, latency, at);
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.backend.state.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Backend {
    /// Healthy right now (for status pages; the hot path passes one clock reading).
    pub fn is_healthy_now(&self) -> bool {
        self.is_healthy_at(self.clock.now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend() -> Backend {
        Backend::new(
            BackendSpec::new(SocketAddr::from(([127, 0, 0, 1], 1))),
            &Clock::new(),
        )
    }

    #[test]
    fn a_new_process_starts_healthy_and_forgets_the_old_ones_failures() {
        let b = backend();
        for _ in 0..2 {
            b.record_probe(false, 2, 2);
        }
        b.state.ejected_until.store(u64::MAX, Ordering::Relaxed);
        assert!(!b.probe_up() && !b.is_healthy_at(1));
        b.reset_health();
        assert!(b.is_healthy_at(1), "healthy at once");
        assert_eq!(
            b.record_probe(false, 2, 2),
            None,
            "the old failure streak is gone: one failure is not two"
        );
    }

    #[test]
    fn rise_and_fall_count_consecutive_probes() {
        let b = backend();
        assert!(b.probe_up(), "up until probes say otherwise");
        assert_eq!(b.record_probe(false, 2, 3), None);
        assert_eq!(b.record_probe(false, 2, 3), None);
        assert_eq!(
            b.record_probe(true, 2, 3),
            None,
            "a success breaks the failure streak"
        );
        assert_eq!(b.record_probe(false, 2, 3), None);
        assert_eq!(b.record_probe(false, 2, 3), None);
        assert_eq!(
            b.record_probe(false, 2, 3),
            Some(false),
            "third consecutive failure"
        );
        assert_eq!(b.record_probe(false, 2, 3), None, "already down");
        assert_eq!(b.record_probe(true, 2, 3), None);
        assert_eq!(
            b.record_probe(false, 2, 3),
            None,
            "a failure breaks the success streak"
        );
        assert_eq!(b.record_probe(true, 2, 3), None);
        assert_eq!(
            b.record_probe(true, 2, 3),
            Some(true),
            "second consecutive success"
        );
        assert_eq!(b.record_probe(true, 2, 3), None);
        // rise/fall of 0 behave as 1.
        assert_eq!(b.record_probe(false, 0, 0), Some(false));
        assert_eq!(b.record_probe(true, 0, 0), Some(true));
    }

    #[test]
    fn probe_recovery_clears_passive_ejection() {
        let b = backend();
        b.state.ejected_until.store(u64::MAX, Ordering::Relaxed);
        b.record_probe(false, 1, 1);
        assert_eq!(b.record_probe(true, 1, 1), Some(true));
        assert!(b.is_healthy_at(1));
    }

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn ewma_peaks_at_once_and_blends_down_with_weights_summing_to_one() {
        let b = backend();
        b.observe_latency(SEC, Duration::from_millis(10));
        assert_eq!(b.ewma_ns(SEC), 10e6, "first sample is taken as is");
        b.observe_latency(2 * SEC, Duration::from_millis(8));
        let w = (-(SEC as f64) / EWMA_DECAY_NS).exp();
        let expected = 10e6 * w + 8e6 * (1.0 - w);
        assert!(
            (b.ewma_ns(2 * SEC) - expected).abs() < 1.0,
            "{} vs {expected}",
            b.ewma_ns(2 * SEC)
        );
        b.observe_latency(2 * SEC, Duration::from_millis(50));
        assert_eq!(b.ewma_ns(2 * SEC), 50e6, "a peak is taken at once");
        // Idle, it decays toward 0 with the 10 s time constant (so a once-slow backend
        // gets tried again).
        let later = b.ewma_ns(12 * SEC);
        assert!((later - 50e6 / std::f64::consts::E).abs() < 1.0, "{later}");
    }
}
