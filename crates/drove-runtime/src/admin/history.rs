//! The last few minutes of traffic, for the dashboard and `drove status`.
//!
//! A sampler task copies every backend's response counters and latency buckets once a
//! second ([`SAMPLE_INTERVAL`]) and keeps [`KEEP`] samples. Rates and percentiles are
//! differences between two samples: req/s = Δcount / Δt, p99 =
//! `quantile(0.99, since = the older sample)`. Nothing is added to the request path.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use drove_balancer::{Balancer, ResponseSnapshot};
use drove_proxy::ProxyStats;
use tokio::time::Instant;

/// How often the sampler copies the counters: one chart point per second.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);
/// Samples kept: five minutes at one a second (plus the baseline of the first point).
pub const KEEP: usize = 301;
/// The window of the "now" figures (table, `drove status`) and of each chart point's
/// percentiles: long enough that a p99 at a few hundred req/s rests on more than a
/// handful of responses, short enough to follow a change within seconds.
pub const WINDOW: Duration = Duration::from_secs(5);
/// The window of the traffic share: a minute evens out round-robin and hashing noise.
pub const SHARE_WINDOW: Duration = Duration::from_secs(60);

/// One copy of the counters.
#[derive(Debug)]
pub struct Sample {
    at: Instant,
    unix_ms: u64,
    backends: BTreeMap<String, ResponseSnapshot>,
    /// Balancer totals: requests received, responses by class.
    totals: Option<(u64, [u64; 5])>,
}

/// The figures of one instance over a window.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Rates {
    /// Responses per second.
    pub rps: f64,
    /// 5xx responses per second.
    pub errors_per_s: f64,
    /// Median latency (ms); None without responses in the window.
    pub p50_ms: Option<f64>,
    /// 99th percentile latency (ms).
    pub p99_ms: Option<f64>,
}

/// A sample as `drove upgrade` carries it to the next drove (its age instead of an
/// `Instant`, which means nothing in another process).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct CarriedSample {
    age_ms: u64,
    unix_ms: u64,
    backends: BTreeMap<String, ResponseSnapshot>,
    totals: Option<(u64, [u64; 5])>,
}

/// The samples, oldest first.
#[derive(Debug, Default)]
pub struct History {
    samples: Mutex<VecDeque<Arc<Sample>>>,
}

impl History {
    /// An empty history.
    pub fn new() -> Arc<History> {
        Arc::new(History::default())
    }

    /// Copies the counters now.
    pub fn sample(&self, balancer: Option<&Balancer>, proxy: Option<&ProxyStats>) {
        let backends = balancer
            .map(|b| {
                b.snapshot()
                    .iter()
                    .map(|b| (b.id().to_string(), b.responses().snapshot()))
                    .collect()
            })
            .unwrap_or_default();
        let totals = proxy.map(|p| {
            use std::sync::atomic::Ordering::Relaxed;
            (
                p.requests.load(Relaxed),
                std::array::from_fn(|i| p.responses[i].load(Relaxed)),
            )
        });
        self.push(Sample {
            at: Instant::now(),
            unix_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            backends,
            totals,
        });
    }

    /// Every sample, for the next drove (`drove upgrade`): the dashboard's charts and
    /// rates go on across the upgrade.
    pub fn carry(&self) -> Vec<CarriedSample> {
        self.all()
            .iter()
            .map(|s| CarriedSample {
                age_ms: s.at.elapsed().as_millis() as u64,
                unix_ms: s.unix_ms,
                backends: s.backends.clone(),
                totals: s.totals,
            })
            .collect()
    }

    /// Samples carried over by an upgrade, before any taken here.
    pub fn restore(&self, carried: Vec<CarriedSample>) {
        let now = Instant::now();
        let mut q = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        let mine = std::mem::take(&mut *q);
        for c in carried {
            let at = now
                .checked_sub(Duration::from_millis(c.age_ms))
                .unwrap_or(now);
            q.push_back(Arc::new(Sample {
                at,
                unix_ms: c.unix_ms,
                backends: c.backends,
                totals: c.totals,
            }));
        }
        q.extend(mine);
        while q.len() > KEEP {
            q.pop_front();
        }
    }

    fn push(&self, s: Sample) {
        let mut q = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        q.push_back(Arc::new(s));
        while q.len() > KEEP {
            q.pop_front();
        }
    }

    fn all(&self) -> Vec<Arc<Sample>> {
        self.samples
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    /// Per instance, over the last [`WINDOW`].
    pub fn current(&self) -> BTreeMap<String, Rates> {
        let all = self.all();
        let Some(last) = all.last() else {
            return BTreeMap::new();
        };
        last.backends
            .keys()
            .filter_map(|id| Some((id.clone(), window_rates(&all, all.len() - 1, id, WINDOW)?)))
            .collect()
    }

    /// Balancer-wide requests/s and 5xx/s over the last [`WINDOW`].
    pub fn current_totals(&self) -> Option<(f64, f64)> {
        let all = self.all();
        let last = all.len().checked_sub(1)?;
        totals_rates(&all, last, WINDOW)
    }

    /// Each instance's share of the responses over the last [`SHARE_WINDOW`] (0..=1).
    pub fn share(&self) -> BTreeMap<String, f64> {
        let all = self.all();
        let Some(last) = all.last() else {
            return BTreeMap::new();
        };
        let counts: BTreeMap<&String, u64> = last
            .backends
            .iter()
            .map(|(id, snap)| {
                // Absent from the baseline: it joined since, everything it counted is new.
                let base = baseline(&all, all.len() - 1, SHARE_WINDOW)
                    .and_then(|i| all[i].backends.get(id))
                    .map(ResponseSnapshot::count)
                    .unwrap_or(0);
                (id, snap.count().saturating_sub(base))
            })
            .collect();
        let total: u64 = counts.values().sum();
        counts
            .into_iter()
            .map(|(id, n)| {
                (
                    id.clone(),
                    if total == 0 {
                        0.0
                    } else {
                        n as f64 / total as f64
                    },
                )
            })
            .collect()
    }

    /// The chart series: one point per sample after the first; `None` where an
    /// instance did not exist. `last` limits it to the latest points.
    pub fn series(&self, last: usize) -> drove_api::History {
        let all = self.all();
        let start = all.len().saturating_sub(last + 1).max(1);
        let points = start..all.len();
        let t: Vec<u64> = points.clone().map(|i| all[i].unix_ms).collect();
        let ids: std::collections::BTreeSet<&String> = all[points.start.saturating_sub(1)..]
            .iter()
            .flat_map(|s| s.backends.keys())
            .collect();
        let mut instances = BTreeMap::new();
        for id in ids {
            let (mut rps, mut p50, mut p99, mut err) = (vec![], vec![], vec![], vec![]);
            for i in points.clone() {
                let step = point_rates(&all, i, id);
                let win = window_rates(&all, i, id, WINDOW);
                rps.push(step.map(|r| round(r.rps, 2)));
                err.push(step.map(|r| round(r.errors_per_s, 2)));
                p50.push(win.and_then(|r| r.p50_ms).map(|v| round(v, 3)));
                p99.push(win.and_then(|r| r.p99_ms).map(|v| round(v, 3)));
            }
            instances.insert(
                id.clone(),
                drove_api::InstanceSeries {
                    rps,
                    errors: err,
                    p50_ms: p50,
                    p99_ms: p99,
                },
            );
        }
        let (mut rps, mut err) = (vec![], vec![]);
        for i in points {
            let r = totals_rates(&all, i, SAMPLE_INTERVAL);
            rps.push(r.map(|r| round(r.0, 2)));
            err.push(r.map(|r| round(r.1, 2)));
        }
        drove_api::History {
            interval_s: SAMPLE_INTERVAL.as_secs_f64(),
            window_s: WINDOW.as_secs_f64(),
            t,
            instances,
            balancer: drove_api::BalancerSeries { rps, errors: err },
        }
    }
}

fn round(v: f64, digits: i32) -> f64 {
    let m = 10f64.powi(digits);
    (v * m).round() / m
}

/// The oldest sample before `i` that is at most `window` older.
fn baseline(all: &[Arc<Sample>], i: usize, window: Duration) -> Option<usize> {
    let at = all[i].at;
    // Samples are in time order: a binary search keeps a 300-point series O(n log n).
    let j = all[..i].partition_point(|s| at.duration_since(s.at) > window + SAMPLE_INTERVAL / 2);
    (j < i).then_some(j)
}

fn rates_between(old: &Sample, new: &Sample, id: &str) -> Option<Rates> {
    let b = new.backends.get(id)?;
    // An instance that joined after `old` counted everything it has since then.
    let zero;
    let a = match old.backends.get(id) {
        Some(a) => a,
        None => {
            zero = ResponseSnapshot {
                classes: [0; 5],
                cumulative: vec![0; b.cumulative.len()],
                sum_seconds: 0.0,
            };
            &zero
        }
    };
    // A backend removed and added again starts from zero: no rate across that.
    if b.count() < a.count() {
        return None;
    }
    let dt = new.at.duration_since(old.at).as_secs_f64();
    if dt <= 0.0 {
        return None;
    }
    Some(Rates {
        rps: (b.count() - a.count()) as f64 / dt,
        errors_per_s: b.classes[4].saturating_sub(a.classes[4]) as f64 / dt,
        p50_ms: b.quantile(0.5, Some(a)).map(|s| s * 1e3),
        p99_ms: b.quantile(0.99, Some(a)).map(|s| s * 1e3),
    })
}

/// Between sample `i` and the one before it.
fn point_rates(all: &[Arc<Sample>], i: usize, id: &str) -> Option<Rates> {
    rates_between(all.get(i.checked_sub(1)?)?, &all[i], id)
}

/// Between sample `i` and its baseline `window` earlier.
fn window_rates(all: &[Arc<Sample>], i: usize, id: &str, window: Duration) -> Option<Rates> {
    let j = baseline(all, i, window)?;
    rates_between(&all[j], &all[i], id)
}

/// Balancer requests/s and 5xx/s between sample `i` and the oldest one within `window`.
fn totals_rates(all: &[Arc<Sample>], i: usize, window: Duration) -> Option<(f64, f64)> {
    let at = all[i].at;
    let j = baseline(all, i, window)?;
    let ((r0, c0), (r1, c1)) = (all[j].totals?, all[i].totals?);
    let dt = at.duration_since(all[j].at).as_secs_f64();
    if dt <= 0.0 {
        return None;
    }
    Some((
        r1.saturating_sub(r0) as f64 / dt,
        c1[4].saturating_sub(c0[4]) as f64 / dt,
    ))
}

/// Samples every [`SAMPLE_INTERVAL`] until `shutdown`.
pub async fn run(
    history: Arc<History>,
    balancer: Option<Arc<Balancer>>,
    proxy: Option<Arc<ProxyStats>>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(SAMPLE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => history.sample(balancer.as_deref(), proxy.as_deref()),
            _ = shutdown.wait_for(|v| *v) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use drove_balancer::{BackendSpec, BalancerSettings};

    fn balancer(ids: &[&str]) -> Arc<Balancer> {
        let b = Balancer::new(BalancerSettings::default());
        b.set_backends(
            ids.iter()
                .enumerate()
                .map(|(i, id)| BackendSpec {
                    id: id.to_string(),
                    addr: std::net::SocketAddr::from(([127, 0, 0, 1], 1000 + i as u16)),
                    weight: 1,
                    backup: false,
                })
                .collect(),
        );
        b
    }

    fn record(b: &Balancer, id: &str, n: usize, ms: u64) {
        let be = b.find(id).unwrap();
        for _ in 0..n {
            be.responses().record(200, Duration::from_millis(ms));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn rates_percentiles_and_share_come_from_sample_differences() {
        let b = balancer(&["web.1", "web.2"]);
        let h = History::new();
        h.sample(Some(&b), None);
        for _ in 0..5 {
            tokio::time::advance(SAMPLE_INTERVAL).await;
            record(&b, "web.1", 100, 3);
            record(&b, "web.2", 300, 40);
            h.sample(Some(&b), None);
        }
        let now = h.current();
        let (w1, w2) = (now["web.1"], now["web.2"]);
        assert!((w1.rps - 100.0).abs() < 0.01, "{w1:?}");
        assert!((w2.rps - 300.0).abs() < 0.01, "{w2:?}");
        let p99 = w2.p99_ms.unwrap();
        assert!(p99 > 25.0 && p99 <= 50.0, "{p99}");
        assert!(w1.p50_ms.unwrap() <= 5.0);
        let share = h.share();
        assert!((share["web.1"] - 0.25).abs() < 1e-9, "{share:?}");
        let s = h.series(300);
        assert_eq!(s.t.len(), 5);
        assert_eq!(s.instances["web.2"].rps[4], Some(300.0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_instance_counts_from_zero_and_old_samples_age_out() {
        let b = balancer(&["web.1"]);
        let h = History::new();
        h.sample(Some(&b), None);
        b.upsert(BackendSpec {
            id: "web.2".into(),
            addr: std::net::SocketAddr::from(([127, 0, 0, 1], 2000)),
            weight: 1,
            backup: false,
        });
        record(&b, "web.2", 7, 1);
        tokio::time::advance(SAMPLE_INTERVAL).await;
        h.sample(Some(&b), None);
        assert_eq!(h.current()["web.1"].rps, 0.0);
        assert_eq!(h.current()["web.2"].rps, 7.0);
        assert_eq!(h.share()["web.2"], 1.0);
        let s = h.series(10);
        assert_eq!(s.instances["web.2"].rps, [Some(7.0)]);
        for _ in 0..KEEP + 5 {
            tokio::time::advance(SAMPLE_INTERVAL).await;
            h.sample(Some(&b), None);
        }
        assert_eq!(h.all().len(), KEEP);
    }
}
