//! The result of a run and its renderings (text, JSON; HTML in `html.rs`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::json;

use crate::engine::{new_hist, ThreadStats};
use crate::{BenchOptions, Model, Stop};

/// Errors by kind. Transport errors (`connect`, `timeout`, `reset`, `other`) have no
/// response; `status` counts responses with a status ≥ 400.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ErrorCounts {
    /// Connection refused or unreachable.
    pub connect: u64,
    /// No complete response within the timeout.
    pub timeout: u64,
    /// Connection reset or closed before the response was complete.
    pub reset: u64,
    /// Anything else (unparsable response, local resource errors).
    pub other: u64,
    /// Responses with status ≥ 400.
    pub status: u64,
}

impl ErrorCounts {
    /// All errors, transport and status.
    pub fn total(&self) -> u64 {
        self.transport() + self.status
    }

    /// Errors without a response.
    pub fn transport(&self) -> u64 {
        self.connect + self.timeout + self.reset + self.other
    }

    fn add(&mut self, o: &ErrorCounts) {
        self.connect += o.connect;
        self.timeout += o.timeout;
        self.reset += o.reset;
        self.other += o.other;
        self.status += o.status;
    }
}

/// Summary of a latency distribution (responses only; transport errors have no latency).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Percentiles {
    /// Median.
    pub p50: Duration,
    /// 90th percentile.
    pub p90: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// 99.9th percentile.
    pub p999: Duration,
    /// Largest value (histogram precision: 0.1%).
    pub max: Duration,
    /// Arithmetic mean.
    pub mean: Duration,
}

impl Percentiles {
    fn from_hist(h: &Histogram<u64>) -> Percentiles {
        if h.is_empty() {
            return Percentiles::default();
        }
        let q = |q: f64| Duration::from_micros(h.value_at_quantile(q));
        Percentiles {
            p50: q(0.5),
            p90: q(0.9),
            p99: q(0.99),
            p999: q(0.999),
            max: Duration::from_micros(h.max()),
            mean: Duration::from_secs_f64(h.mean() / 1e6),
        }
    }

    fn to_json(self) -> serde_json::Value {
        json!({
            "p50_ms": ms(self.p50), "p90_ms": ms(self.p90), "p99_ms": ms(self.p99),
            "p999_ms": ms(self.p999), "max_ms": ms(self.max), "mean_ms": ms(self.mean),
        })
    }
}

/// One second of the run (seconds since the first request was due).
#[derive(Debug, Clone, PartialEq)]
pub struct Second {
    /// Second index, from 0.
    pub t: u64,
    /// Requests finished in this second (responses and errors).
    pub requests: u64,
    /// Errors in this second.
    pub errors: u64,
    /// Corrected median latency of the responses finished in this second.
    pub p50: Duration,
    /// Corrected p99 latency of the responses finished in this second.
    pub p99: Duration,
    /// Largest corrected latency in this second.
    pub max: Duration,
}

/// Pearson chi-square test of the per-instance counts against equal shares.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChiSquare {
    /// Σ (observed − expected)² / expected.
    pub statistic: f64,
    /// Degrees of freedom: instances − 1.
    pub dof: u32,
    /// Probability of a statistic at least this large if the shares were equal; a small
    /// value (say < 0.01) means the balancer is not spreading requests evenly.
    pub p_value: f64,
}

/// One point of the latency-by-percentile curve.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CurvePoint {
    /// Percentile, 0..100.
    pub percentile: f64,
    /// Corrected latency at that percentile.
    pub latency: Duration,
    /// Uncorrected latency at that percentile.
    pub uncorrected: Duration,
}

/// Everything a run measured.
#[derive(Debug, Clone)]
pub struct Report {
    /// Target URL.
    pub url: String,
    /// Method used.
    pub method: String,
    /// Load model used.
    pub model: Model,
    /// End condition used.
    pub stop: Stop,
    /// Connections used.
    pub connections: usize,
    /// Worker threads used.
    pub threads: usize,
    /// Whether connections were reused.
    pub keep_alive: bool,
    /// The run was stopped early (Ctrl-C / cancel future).
    pub cancelled: bool,
    /// From the first due request until the last response.
    pub duration: Duration,
    /// Finished requests: responses plus transport errors.
    pub requests: u64,
    /// Complete responses (any status).
    pub responses: u64,
    /// Responses with status 1xx–3xx.
    pub ok: u64,
    /// Responses by status code.
    pub status_counts: BTreeMap<u16, u64>,
    /// Errors by kind.
    pub errors: ErrorCounts,
    /// Latency corrected for coordinated omission: open model, a request that had to
    /// wait for a free connection counts from its scheduled time, so server stalls are
    /// not hidden. Closed model: same as uncorrected.
    pub latency: Percentiles,
    /// Latency from the actual send time.
    pub latency_uncorrected: Percentiles,
    /// Latency by percentile, for plots.
    pub latency_curve: Vec<CurvePoint>,
    /// One entry per second.
    pub timeline: Vec<Second>,
    /// Responses per value of the instance header.
    pub per_instance: BTreeMap<String, u64>,
    /// Responses without the instance header.
    pub without_instance: u64,
    /// Uniform-share test over `per_instance` (two or more instances seen).
    pub chi_square: Option<ChiSquare>,
    /// Responses per second over `duration`.
    pub rps: f64,
    /// Open model: requests that were overdue (by more than 50 µs) when a connection
    /// became free, because every connection was busy; their corrected latency includes
    /// the wait.
    pub queued: u64,
    /// Open model: requests due before the end that were never sent (all connections
    /// stayed busy). Not hidden: raise `connections` or lower the rate.
    pub unsent: u64,
    /// Requests resent once on a new connection because the server had closed the
    /// reused idle connection before any response byte (keep-alive timeout racing the
    /// send), as browsers and client pools do. Not errors, but counted.
    pub retried: u64,
}

/// Key in [`Report::per_instance`] for responses whose instance value came after
/// 1024 distinct others (a header unique per response is not an instance name).
pub const OTHER_INSTANCES: &str = "(other)";

/// Percentiles shown on the curve: 0, 50, 75, 87.5, … (halving the remainder), up to
/// 99.9999 — the classic HdrHistogram plot, evenly spaced on a log(1/(1-p)) axis.
fn curve_quantiles() -> Vec<f64> {
    let mut v = vec![0.0];
    let mut rest = 1.0f64;
    while rest > 1e-6 {
        for _ in 0..4 {
            // four points per halving
            rest *= 0.5f64.powf(0.25);
            v.push(1.0 - rest);
        }
    }
    v.push(1.0);
    v
}

impl Report {
    pub(crate) fn build(
        opts: &BenchOptions,
        duration: Duration,
        stats: Vec<ThreadStats>,
        timeline: Vec<Second>,
        unsent: u64,
        cancelled: bool,
    ) -> Report {
        let mut lat = new_hist(3);
        let mut lat_unc = new_hist(3);
        let mut status = vec![0u64; 1000];
        let mut errors = ErrorCounts::default();
        let (mut responses, mut ok, mut queued, mut without_instance) = (0, 0, 0, 0);
        let mut overflow = 0;
        let mut retried = 0;
        let mut per_instance: BTreeMap<String, u64> = BTreeMap::new();
        for s in &stats {
            lat.add(&s.lat).expect("same bounds");
            lat_unc.add(&s.lat_unc).expect("same bounds");
            for (a, b) in status.iter_mut().zip(&s.status) {
                *a += b;
            }
            errors.add(&s.errors);
            responses += s.responses;
            ok += s.ok;
            queued += s.queued;
            without_instance += s.without_instance;
            overflow += s.instances_overflow;
            retried += s.retried;
            for (k, n) in &s.instances {
                *per_instance
                    .entry(String::from_utf8_lossy(k).into_owned())
                    .or_default() += n;
            }
        }
        let status_counts = status
            .iter()
            .enumerate()
            .filter(|(_, &n)| n > 0)
            .map(|(c, &n)| (c as u16, n))
            .collect();
        // Not in the chi-square: "other" is not one instance.
        let counts: Vec<u64> = per_instance.values().copied().collect();
        if overflow > 0 {
            per_instance.insert(OTHER_INSTANCES.to_string(), overflow);
        }
        let latency_curve = if lat.is_empty() {
            Vec::new()
        } else {
            curve_quantiles()
                .into_iter()
                .map(|q| CurvePoint {
                    percentile: q * 100.0,
                    latency: Duration::from_micros(lat.value_at_quantile(q)),
                    uncorrected: Duration::from_micros(lat_unc.value_at_quantile(q)),
                })
                .collect()
        };
        let secs = duration.as_secs_f64();
        Report {
            url: opts.url.to_string(),
            method: opts.method.to_string(),
            model: opts.model,
            stop: opts.stop,
            connections: opts.connections,
            threads: opts.threads.min(opts.connections),
            keep_alive: opts.keep_alive,
            cancelled,
            duration,
            requests: responses + errors.transport(),
            responses,
            ok,
            status_counts,
            errors,
            latency: Percentiles::from_hist(&lat),
            latency_uncorrected: Percentiles::from_hist(&lat_unc),
            latency_curve,
            timeline,
            per_instance,
            without_instance,
            chi_square: crate::stats::chi_square_uniform(&counts),
            rps: if secs > 0.0 {
                responses as f64 / secs
            } else {
                0.0
            },
            queued,
            unsent,
            retried,
        }
    }

    /// Errors (transport and status ≥ 400) as a percentage of finished requests.
    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors.total() as f64 * 100.0 / self.requests as f64
        }
    }

    /// Machine-readable report (durations in milliseconds, as floats).
    pub fn to_json(&self) -> serde_json::Value {
        let (model, rate) = match self.model {
            Model::Closed => ("closed", None),
            Model::Open { rate } => ("open", Some(rate)),
        };
        json!({
            "url": self.url,
            "method": self.method,
            "model": model,
            "rate": rate,
            "connections": self.connections,
            "threads": self.threads,
            "keep_alive": self.keep_alive,
            "cancelled": self.cancelled,
            "duration_s": self.duration.as_secs_f64(),
            "requests": self.requests,
            "responses": self.responses,
            "ok": self.ok,
            "rps": self.rps,
            "error_rate_pct": self.error_rate(),
            "status_counts": self.status_counts.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
            "errors": {
                "connect": self.errors.connect, "timeout": self.errors.timeout,
                "reset": self.errors.reset, "other": self.errors.other,
                "status": self.errors.status, "total": self.errors.total(),
            },
            "latency": self.latency.to_json(),
            "latency_uncorrected": self.latency_uncorrected.to_json(),
            "queued": self.queued,
            "unsent": self.unsent,
            "retried": self.retried,
            "per_instance": self.per_instance,
            "without_instance": self.without_instance,
            "chi_square": self.chi_square.map(|c| json!({
                "statistic": c.statistic, "dof": c.dof, "p_value": c.p_value,
            })),
            "timeline": self.timeline.iter().map(|s| json!({
                "t": s.t, "requests": s.requests, "errors": s.errors,
                "p50_ms": ms(s.p50), "p99_ms": ms(s.p99), "max_ms": ms(s.max),
            })).collect::<Vec<_>>(),
        })
    }

    /// Human-readable summary, as printed by `drove bench`.
    pub fn to_text(&self) -> String {
        let mut o = String::new();
        let model = match self.model {
            Model::Closed => "closed model".to_string(),
            Model::Open { rate } => format!("open model, {rate} req/s"),
        };
        let _ = writeln!(
            o,
            "{} {} — {}, {} connections{}, {} thread{}{}",
            self.method,
            self.url,
            model,
            self.connections,
            if self.keep_alive {
                ""
            } else {
                " (no keep-alive)"
            },
            self.threads,
            if self.threads == 1 { "" } else { "s" },
            if self.cancelled {
                " — stopped early"
            } else {
                ""
            },
        );
        let _ = writeln!(
            o,
            "  requests   {} in {:.2}s, {:.1} req/s; {} ok, {} errors ({:.2}%)",
            self.requests,
            self.duration.as_secs_f64(),
            self.rps,
            self.ok,
            self.errors.total(),
            self.error_rate()
        );
        let l = &self.latency;
        let u = &self.latency_uncorrected;
        let _ = writeln!(
            o,
            "  latency           p50       p90       p99     p99.9       max      mean"
        );
        for (name, p) in [("corrected", l), ("uncorrected", u)] {
            let _ = writeln!(
                o,
                "    {:<11} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
                name,
                fmt_dur(p.p50),
                fmt_dur(p.p90),
                fmt_dur(p.p99),
                fmt_dur(p.p999),
                fmt_dur(p.max),
                fmt_dur(p.mean)
            );
        }
        if matches!(self.model, Model::Closed) {
            let _ = writeln!(o, "    (closed model: both measured from the actual send)");
        }
        if !self.status_counts.is_empty() {
            let codes: Vec<String> = self
                .status_counts
                .iter()
                .map(|(c, n)| format!("{c}: {n}"))
                .collect();
            let _ = writeln!(o, "  status     {}", codes.join(", "));
        }
        let e = &self.errors;
        if e.total() > 0 {
            let _ = writeln!(
                o,
                "  errors     connect {}, timeout {}, reset {}, other {}, status≥400 {}",
                e.connect, e.timeout, e.reset, e.other, e.status
            );
        }
        if self.queued > 0 || self.unsent > 0 {
            let _ = writeln!(
                o,
                "  schedule   waited for a free connection: {}; due but never sent: {}{}",
                self.queued,
                self.unsent,
                if self.unsent > 0 {
                    " (raise -c or lower --rate)"
                } else {
                    ""
                }
            );
        }
        if self.retried > 0 {
            let _ = writeln!(
                o,
                "  retried    {} requests resent on a new connection (server closed an idle one)",
                self.retried
            );
        }
        if !self.per_instance.is_empty() {
            let total: u64 = self.per_instance.values().sum();
            let _ = writeln!(o, "  instances  ({} responses with the header)", total);
            for (k, n) in &self.per_instance {
                let _ = writeln!(
                    o,
                    "    {:<20} {:>10} {:>6.2}%",
                    k,
                    n,
                    *n as f64 * 100.0 / total as f64
                );
            }
            if self.without_instance > 0 {
                let _ = writeln!(o, "    {:<20} {:>10}", "(no header)", self.without_instance);
            }
            if let Some(c) = self.chi_square {
                let _ = writeln!(
                    o,
                    "    chi-square {:.2}, dof {}, p = {:.4} ({})",
                    c.statistic,
                    c.dof,
                    c.p_value,
                    if c.p_value < 0.01 {
                        "uneven shares"
                    } else {
                        "consistent with equal shares"
                    }
                );
            }
        }
        o
    }

    /// Self-contained HTML page: summary, inline SVG plots of p50/p99 per second and of
    /// latency by percentile. No scripts, no external resources.
    pub fn to_html(&self) -> String {
        crate::html::render(self)
    }
}

pub(crate) fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// `812µs`, `12.3ms`, `1.52s`.
pub(crate) fn fmt_dur(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us < 1000.0 {
        format!("{us:.0}µs")
    } else if us < 10_000.0 {
        format!("{:.2}ms", us / 1e3)
    } else if us < 1_000_000.0 {
        format!("{:.1}ms", us / 1e3)
    } else {
        format!("{:.2}s", us / 1e6)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn curve_is_monotonic_and_ends_at_100() {
        let q = curve_quantiles();
        assert_eq!(q[0], 0.0);
        assert_eq!(*q.last().unwrap(), 1.0);
        assert!(q.windows(2).all(|w| w[0] < w[1]));
        assert!(q.len() < 100);
    }

    #[test]
    fn durations_format() {
        assert_eq!(fmt_dur(Duration::from_micros(812)), "812µs");
        assert_eq!(fmt_dur(Duration::from_micros(1234)), "1.23ms");
        assert_eq!(fmt_dur(Duration::from_micros(12_345)), "12.3ms");
        assert_eq!(fmt_dur(Duration::from_millis(1520)), "1.52s");
        assert_eq!(ms(Duration::from_micros(1500)), 1.5);
    }
}
