//! Per-backend response statistics the proxy records and the admin API, `/metrics` and
//! the dashboard read: responses by status class and a fixed-bucket latency histogram.
//! Lock-free (relaxed atomics): one increment per bucket, no allocation.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Upper bounds of the latency buckets, in seconds (Prometheus-style, a last +Inf bucket
/// is implied). Spaced 1-2.5-5 from 0.1 ms (a local app behind drove answers in well under
/// a millisecond) to 30 s: fine enough for a p99 on a dashboard, coarse enough to stay 18
/// counters.
pub const LATENCY_BUCKETS: [f64; 17] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

/// Responses relayed from one backend.
#[derive(Debug, Default)]
pub struct ResponseStats {
    /// By status class: index 0 = 1xx … 4 = 5xx.
    classes: [AtomicU64; 5],
    /// Non-cumulative bucket counts; the last one is +Inf.
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    /// Sum of latencies in microseconds.
    sum_us: AtomicU64,
}

/// A consistent-enough copy of [`ResponseStats`].
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ResponseSnapshot {
    /// By status class: index 0 = 1xx … 4 = 5xx.
    pub classes: [u64; 5],
    /// Cumulative counts per bucket of [`LATENCY_BUCKETS`], then +Inf (= count).
    pub cumulative: Vec<u64>,
    /// Sum of latencies in seconds.
    pub sum_seconds: f64,
}

impl ResponseStats {
    /// Records one response (latency = until the response head).
    pub fn record(&self, status: u16, latency: Duration) {
        let class = (status / 100).clamp(1, 5) as usize - 1;
        self.classes[class].fetch_add(1, Relaxed);
        let secs = latency.as_secs_f64();
        let i = LATENCY_BUCKETS
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum_us.fetch_add(latency.as_micros() as u64, Relaxed);
    }

    pub(crate) fn classes(&self) -> [u64; 5] {
        std::array::from_fn(|i| self.classes[i].load(Relaxed))
    }
    pub(crate) fn buckets(&self) -> Vec<u64> {
        self.buckets.iter().map(|b| b.load(Relaxed)).collect()
    }
    pub(crate) fn sum_us(&self) -> u64 {
        self.sum_us.load(Relaxed)
    }
    /// Counters carried over by an upgrade (a histogram of another shape is skipped).
    pub(crate) fn restore(&self, classes: &[u64; 5], buckets: &[u64], sum_us: u64) {
        for (c, v) in self.classes.iter().zip(classes) {
            c.store(*v, Relaxed);
        }
        if buckets.len() == self.buckets.len() {
            for (b, v) in self.buckets.iter().zip(buckets) {
                b.store(*v, Relaxed);
            }
            self.sum_us.store(sum_us, Relaxed);
        }
    }

    /// A copy of the counters.
    pub fn snapshot(&self) -> ResponseSnapshot {
        let mut acc = 0;
        let cumulative = self
            .buckets
            .iter()
            .map(|b| {
                acc += b.load(Relaxed);
                acc
            })
            .collect();
        ResponseSnapshot {
            classes: std::array::from_fn(|i| self.classes[i].load(Relaxed)),
            cumulative,
            sum_seconds: self.sum_us.load(Relaxed) as f64 / 1e6,
        }
    }
}

impl ResponseSnapshot {
    /// Responses counted.
    pub fn count(&self) -> u64 {
        self.cumulative.last().copied().unwrap_or(0)
    }

    /// The `q` quantile (0..=1) of the latency in seconds, interpolated linearly inside
    /// its bucket (as Prometheus' `histogram_quantile`); None without data. `since`
    /// restricts it to the responses after an earlier snapshot (a sliding window).
    pub fn quantile(&self, q: f64, since: Option<&ResponseSnapshot>) -> Option<f64> {
        let cum: Vec<u64> = match since {
            Some(old) => self
                .cumulative
                .iter()
                .zip(&old.cumulative)
                .map(|(a, b)| a.saturating_sub(*b))
                .collect(),
            None => self.cumulative.clone(),
        };
        let total = *cum.last()?;
        if total == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * total as f64;
        let i = cum.iter().position(|&c| c as f64 >= rank)?;
        let lower = if i == 0 { 0.0 } else { LATENCY_BUCKETS[i - 1] };
        let Some(&upper) = LATENCY_BUCKETS.get(i) else {
            return Some(LATENCY_BUCKETS[LATENCY_BUCKETS.len() - 1]);
        };
        let below = if i == 0 { 0 } else { cum[i - 1] };
        let in_bucket = (cum[i] - below).max(1) as f64;
        Some(lower + (upper - lower) * ((rank - below as f64) / in_bucket))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_classes_and_quantiles() {
        let s = ResponseStats::default();
        for _ in 0..99 {
            s.record(200, Duration::from_micros(800));
        }
        s.record(503, Duration::from_millis(400));
        let snap = s.snapshot();
        assert_eq!(snap.count(), 100);
        assert_eq!(snap.classes, [0, 99, 0, 0, 1]);
        let p50 = snap.quantile(0.5, None).unwrap();
        assert!(p50 > 0.0005 && p50 <= 0.001, "{p50}");
        let p100 = snap.quantile(1.0, None).unwrap();
        assert!(p100 > 0.25 && p100 <= 0.5, "{p100}");
        // A window after the first 99 sees only the slow one.
        let s2 = ResponseStats::default();
        for _ in 0..99 {
            s2.record(200, Duration::from_micros(800));
        }
        let old = s2.snapshot();
        s2.record(200, Duration::from_millis(400));
        let w = s2.snapshot().quantile(0.5, Some(&old)).unwrap();
        assert!(w > 0.25, "{w}");
        assert!(ResponseStats::default()
            .snapshot()
            .quantile(0.99, None)
            .is_none());
    }
}
