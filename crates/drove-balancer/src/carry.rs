//! A backend's counters and learned state, carried from one drove to the next by
//! `drove upgrade`, so that metrics continue (no counter reset in Prometheus) and
//! least-latency picks keep what they learned. Ejection timers are not carried: they
//! are measured on the old process's clock, and a backend ejected a moment ago is
//! ejected again by its next failure.

use std::sync::atomic::Ordering::Relaxed;

use serde::{Deserialize, Serialize};

use crate::Balancer;

/// One backend's carried state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackendCarry {
    /// The backend's id.
    pub id: String,
    /// Attempts started on it.
    pub requests: u64,
    /// Attempts that failed.
    pub failures: u64,
    /// Passive ejections.
    pub ejections: u64,
    /// Responses by status class (1xx … 5xx).
    pub classes: [u64; 5],
    /// Latency histogram buckets (non-cumulative, +Inf last).
    pub buckets: Vec<u64>,
    /// Sum of latencies, microseconds.
    pub sum_us: u64,
    /// The latency EWMA, nanoseconds.
    pub ewma_ns: f64,
    /// The active health check's verdict.
    pub probe_up: bool,
}

impl Balancer {
    /// The state of every backend, for the next drove.
    pub fn carry(&self) -> Vec<BackendCarry> {
        self.snapshot()
            .iter()
            .map(|b| {
                let s = &b.state;
                BackendCarry {
                    id: b.id().to_string(),
                    requests: s.requests.load(Relaxed),
                    failures: s.failures.load(Relaxed),
                    ejections: s.ejections.load(Relaxed),
                    classes: s.responses.classes(),
                    buckets: s.responses.buckets(),
                    sum_us: s.responses.sum_us(),
                    ewma_ns: f64::from_bits(s.ewma_bits.load(Relaxed)),
                    probe_up: s.probe_up.load(Relaxed),
                }
            })
            .collect()
    }

    /// Puts carried state back on the backends that exist now (by id).
    pub fn restore(&self, carried: &[BackendCarry]) {
        for c in carried {
            let Some(b) = self.find(&c.id) else { continue };
            let s = &b.state;
            s.requests.store(c.requests, Relaxed);
            s.failures.store(c.failures, Relaxed);
            s.ejections.store(c.ejections, Relaxed);
            s.responses.restore(&c.classes, &c.buckets, c.sum_us);
            s.ewma_bits.store(c.ewma_ns.to_bits(), Relaxed);
            s.probe_up.store(c.probe_up, Relaxed);
        }
    }
}
