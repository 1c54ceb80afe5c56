//! How to pick one backend of the set.

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::{Backend, BackendSet, Balancer};

/// The selection algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// Smooth weighted round robin (nginx's): weights honoured without bursts.
    RoundRobin,
    /// Fewest requests in flight relative to weight; ties rotate.
    LeastConn,
    /// Consistent hash (Maglev) of the client IP.
    IpHash,
    /// Consistent hash (Maglev) of a key the proxy extracts (header, cookie, path).
    Hash,
    /// Power of two random choices on in-flight requests.
    RandomTwo,
    /// Power of two random choices on peak-EWMA latency × (in-flight + 1).
    P2cEwma,
}

impl Algorithm {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::RoundRobin => "round_robin",
            Algorithm::LeastConn => "least_conn",
            Algorithm::IpHash => "ip_hash",
            Algorithm::Hash => "hash",
            Algorithm::RandomTwo => "random_two",
            Algorithm::P2cEwma => "p2c_ewma",
        }
    }
}

/// What the proxy knows of a request that selection may use.
#[derive(Debug, Clone, Copy)]
pub struct PickContext<'a> {
    /// The client's address (after trusted X-Forwarded-For).
    pub client_ip: IpAddr,
    /// The hashed key for [`Algorithm::Hash`] (None: the key was absent; falls back to
    /// round robin).
    pub hash: Option<u64>,
    /// The sticky cookie's value, if the request carried one.
    pub sticky: Option<&'a str>,
}

impl<'a> PickContext<'a> {
    /// A context with only the client IP.
    pub fn new(client_ip: IpAddr) -> PickContext<'a> {
        PickContext {
            client_ip,
            hash: None,
            sticky: None,
        }
    }
}

/// Max table length of the precomputed smooth round-robin order; weights are scaled
/// down past it (keeps memory bounded with 100+ backends of large weights).
const MAX_RR_ORDER: u64 = 1 << 16;

/// nginx's smooth weighted round robin, unrolled once: the sequence of indexes that the
/// stateful algorithm would produce over one full period.
pub(crate) fn smooth_wrr_order(weights: &[u32]) -> Vec<u32> {
    if weights.is_empty() {
        return Vec::new();
    }
    let g = weights.iter().fold(0u32, |g, &w| gcd(g, w.max(1)));
    let mut w: Vec<i64> = weights.iter().map(|&x| (x.max(1) / g) as i64).collect();
    let total: u64 = w.iter().map(|&x| x as u64).sum();
    if total > MAX_RR_ORDER {
        let scale = total as f64 / MAX_RR_ORDER as f64;
        for x in &mut w {
            *x = ((*x as f64 / scale).round() as i64).max(1);
        }
    }
    let total: i64 = w.iter().sum();
    let mut current = vec![0i64; w.len()];
    let mut order = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for i in 0..w.len() {
            current[i] += w[i];
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        order.push(best as u32);
    }
    order
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Mixes a 64-bit value (splitmix64 finaliser): used to derive alternative hash probes.
pub(crate) fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

impl Balancer {
    /// Picks a backend for a new attempt, skipping those whose key is in `exclude`
    /// (already tried by this request). Sticky first, then the algorithm over the
    /// available primaries, then the backups. `None`: nothing is available.
    pub fn pick(&self, ctx: &PickContext<'_>, exclude: &[u64]) -> Option<Arc<Backend>> {
        self.pick_at(ctx, exclude, tokio::time::Instant::now())
    }

    /// [`Balancer::pick`] at `at`, a clock reading the caller took (health and latency
    /// are judged as of then).
    pub fn pick_at(
        &self,
        ctx: &PickContext<'_>,
        exclude: &[u64],
        at: tokio::time::Instant,
    ) -> Option<Arc<Backend>> {
        let set = self.set.load();
        let now = self.clock.at(at);
        let ok = |b: &Backend| b.is_available_at(now) && !exclude.contains(&b.key());
        // A token naming a backup is honoured only when no primary can serve: a client
        // pinned during an outage must go back to the primaries once they return.
        let mut sticky_backup = None;
        if let Some(b) = ctx.sticky.and_then(|token| set.by_sticky_token(token)) {
            if ok(b) {
                if !b.is_backup() {
                    return Some(b.clone());
                }
                sticky_backup = Some(b);
            }
        }
        if let Some(b) = self.pick_primary(&set, ctx, now, &ok) {
            return Some(b);
        }
        if let Some(b) = sticky_backup {
            return Some(b.clone());
        }
        // Backups: least in flight, ties to the first listed (like nginx's `backup`).
        set.backups
            .iter()
            .filter(|b| ok(b))
            .min_by_key(|b| b.in_flight())
            .cloned()
    }

    fn pick_primary(
        &self,
        set: &BackendSet,
        ctx: &PickContext<'_>,
        now: u64,
        ok: &dyn Fn(&Backend) -> bool,
    ) -> Option<Arc<Backend>> {
        let p = &set.primaries;
        if p.is_empty() {
            return None;
        }
        match self.settings().algorithm {
            Algorithm::RoundRobin => self.round_robin(set, ok),
            Algorithm::LeastConn => self.least_conn(p, ok),
            Algorithm::IpHash => {
                let h = crate::hash_ip(ctx.client_ip);
                self.consistent(set, h, ok)
            }
            Algorithm::Hash => match ctx.hash {
                Some(h) => self.consistent(set, h, ok),
                None => self.round_robin(set, ok),
            },
            Algorithm::RandomTwo => {
                self.two_choices(p, ok, |b| b.in_flight() as f64 / b.weight() as f64)
            }
            Algorithm::P2cEwma => self.two_choices(p, ok, |b| {
                // Latency counts in whole milliseconds, at least one: sub-millisecond
                // differences between local backends are noise, and a strict order on
                // noise would starve a backend after one unlucky sample (a peak-EWMA
                // only decays, it is never re-sampled while avoided). Ties fall to the
                // in-flight term, then to the random pair order.
                let latency_ms = (b.ewma_ns(now) / 1e6).ceil().max(1.0);
                latency_ms * (b.in_flight() as f64 + 1.0) / b.weight() as f64
            }),
        }
    }

    fn round_robin(&self, set: &BackendSet, ok: &dyn Fn(&Backend) -> bool) -> Option<Arc<Backend>> {
        let order = &set.rr_order;
        let n = order.len();
        let start = self.cursor.fetch_add(1, Ordering::Relaxed);
        for i in 0..n {
            let b = &set.primaries[order[start.wrapping_add(i) % n] as usize];
            if ok(b) {
                // The skipped slots are consumed too, so the next pick resumes after this
                // one: an unavailable backend's slots drop out of the order instead of
                // all going to whoever follows it (which would get twice its share).
                if i > 0 {
                    self.cursor.fetch_add(i, Ordering::Relaxed);
                }
                return Some(b.clone());
            }
        }
        None
    }

    fn least_conn(
        &self,
        p: &[Arc<Backend>],
        ok: &dyn Fn(&Backend) -> bool,
    ) -> Option<Arc<Backend>> {
        // Pass 1: the least in_flight/weight (compared without division) and the total
        // weight of the backends tied at it.
        let mut best: Option<(&Arc<Backend>, u64, u64)> = None;
        let mut tied_weight = 0u64;
        let mut tied = 0usize;
        for b in p {
            if !ok(b) {
                continue;
            }
            let (load, w) = (b.in_flight(), b.weight() as u64);
            match best {
                Some((_, bl, bw)) if load * bw > bl * w => {}
                Some((_, bl, bw)) if load * bw == bl * w => {
                    tied_weight += w;
                    tied += 1;
                }
                _ => {
                    best = Some((b, load, w));
                    tied_weight = w;
                    tied = 1;
                }
            }
        }
        let (first, bl, bw) = best?;
        if tied == 1 {
            return Some(first.clone());
        }
        // Pass 2: ties share by weight, in turn (nginx breaks least_conn ties with
        // weighted round robin). A rotating scan start alone is unfair: the backend right
        // after a busy one wins the ties the busy one would have had. Sequential traffic
        // (always 0 in flight) thus still follows the weights.
        let mut k = self.cursor.fetch_add(1, Ordering::Relaxed) as u64 % tied_weight;
        for b in p {
            if !ok(b) {
                continue;
            }
            let w = b.weight() as u64;
            if b.in_flight() * bw == bl * w {
                if k < w {
                    return Some(b.clone());
                }
                k -= w;
            }
        }
        // Loads moved between the passes (other workers): the first minimum will do.
        Some(first.clone())
    }

    /// Maglev lookup; when the owner is unavailable, deterministic re-probes spread its
    /// keys over the others (and send them back when it returns).
    fn consistent(
        &self,
        set: &BackendSet,
        h: u64,
        ok: &dyn Fn(&Backend) -> bool,
    ) -> Option<Arc<Backend>> {
        let mut key = h;
        // 2n probes find an available backend with high probability; then round robin.
        for _ in 0..(2 * set.primaries.len()).max(4) {
            let b = &set.primaries[set.maglev.lookup(key)?];
            if ok(b) {
                return Some(b.clone());
            }
            key = mix(key);
        }
        self.round_robin(set, ok)
    }

    fn two_choices(
        &self,
        p: &[Arc<Backend>],
        ok: &dyn Fn(&Backend) -> bool,
        cost: impl Fn(&Backend) -> f64,
    ) -> Option<Arc<Backend>> {
        let n = p.len();
        if n == 1 {
            return ok(&p[0]).then(|| p[0].clone());
        }
        let r = self.next_random();
        let i = (r % n as u64) as usize;
        // A distinct second index: offset in 1..n.
        let j = (i + 1 + ((r >> 32) % (n as u64 - 1)) as usize) % n;
        let (a, b) = (&p[i], &p[j]);
        match (ok(a), ok(b)) {
            (true, true) => Some(if cost(b) < cost(a) {
                b.clone()
            } else {
                a.clone()
            }),
            (true, false) => Some(a.clone()),
            (false, true) => Some(b.clone()),
            // Both out: fall back to the best of the rest.
            (false, false) => p
                .iter()
                .filter(|b| ok(b))
                .min_by(|x, y| cost(x).total_cmp(&cost(y)))
                .cloned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smooth_order_is_nginx_sequence() {
        // nginx: {a=5, b=1, c=1} gives a a b a c a a.
        assert_eq!(smooth_wrr_order(&[5, 1, 1]), [0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(smooth_wrr_order(&[1, 1, 1]), [0, 1, 2]);
        assert!(smooth_wrr_order(&[]).is_empty());
    }

    #[test]
    fn smooth_order_reduces_by_gcd_and_treats_zero_as_one() {
        assert_eq!(
            smooth_wrr_order(&[10, 20, 30]),
            smooth_wrr_order(&[1, 2, 3])
        );
        assert_eq!(smooth_wrr_order(&[0, 1]), [0, 1]);
    }

    #[test]
    fn huge_weights_are_scaled_into_a_bounded_order() {
        let order = smooth_wrr_order(&[1_000_000, 999_999, 1]);
        assert!(order.len() as u64 <= MAX_RR_ORDER + 3, "{}", order.len());
        // Every backend keeps at least one slot.
        for i in 0..3 {
            assert!(order.contains(&i));
        }
    }
}
