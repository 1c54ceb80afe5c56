//! Rate limits for drove's data path: the generic cell rate algorithm (GCRA, as in
//! ATM networks, `redis-cell` and Envoy's local limiter), one [`Limiter`] per
//! `[limits.NAME]`, keyed by whatever the proxy extracts (client IP, a header, a cookie).
//!
//! A limit of `count` per `period` with `burst` means: requests are spaced at least
//! `period / count` apart on average, and up to `burst` may arrive at once. The state per
//! key is one number, the theoretical arrival time (TAT). Keys are hashed into shards,
//! each behind its own mutex: limits are shared by every worker (a per-worker limit would
//! multiply the rate by the worker count), and a shard lock is held for a few
//! nanoseconds. Expired keys are dropped as shards grow, so memory follows the number of
//! recently active keys. Time comes from tokio's clock so tests can pause it.
//! A [`SharedLimiter`] keeps the same state in Redis so that several drove processes
//! enforce one limit together; [`Limit`] is either. It knows nothing of HTTP or TOML.

mod shared;

pub use shared::{SharedLimiter, REDIS_TIMEOUT};

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Shards of the key table: enough that workers rarely meet on one lock.
const SHARDS: usize = 16;

/// A shard is swept of expired keys when it grows past this many entries.
const SWEEP_AT: usize = 4096;

/// A rate limit.
#[derive(Debug)]
pub struct Limiter {
    /// Time between two requests at the sustained rate.
    interval: Duration,
    /// How far ahead of now the TAT may run: (burst - 1) intervals.
    tolerance: Duration,
    epoch: Instant,
    shards: Vec<Mutex<HashMap<u64, Duration>>>,
}

/// One `[limits.NAME]`: kept in this process, or shared through Redis.
#[derive(Debug)]
pub enum Limit {
    /// Shared by this process's workers.
    Local(Limiter),
    /// Shared by every drove using the same Redis.
    Shared(SharedLimiter),
}

impl Limit {
    /// Counts one request with `key`; `Err` when it is over the limit.
    pub async fn check(&self, key: u64) -> Result<(), Refused> {
        match self {
            Limit::Local(l) => l.check(key),
            Limit::Shared(s) => s.check(key).await,
        }
    }
}

/// A refused request: when to retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    /// Time until a request with this key would be allowed.
    pub retry_after: Duration,
}

/// Invalid limit settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidLimit(pub &'static str);

impl std::fmt::Display for InvalidLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for InvalidLimit {}

impl Limiter {
    /// `count` requests per `period`, with bursts of up to `burst` (at least 1).
    pub fn try_new(count: u32, period: Duration, burst: u32) -> Result<Limiter, InvalidLimit> {
        if count == 0 {
            return Err(InvalidLimit("rate count must be at least 1"));
        }
        if period.is_zero() {
            return Err(InvalidLimit("rate period must be positive"));
        }
        let interval = period / count;
        let burst = burst.max(1);
        Ok(Limiter {
            interval,
            tolerance: interval * (burst - 1),
            epoch: Instant::now(),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        })
    }

    /// Counts one request with `key` (a hash of the client IP, header or cookie);
    /// `Err` when it is over the limit (then nothing is counted).
    pub fn check(&self, key: u64) -> Result<(), Refused> {
        let now = self.epoch.elapsed();
        let shard = &self.shards[(key as usize) % SHARDS];
        let mut map = shard.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= SWEEP_AT {
            // A key whose TAT is in the past holds no state worth keeping.
            map.retain(|_, tat| *tat > now);
        }
        let tat = map.get(&key).copied().unwrap_or(now).max(now);
        if tat > now + self.tolerance {
            return Err(Refused {
                retry_after: tat - self.tolerance - now,
            });
        }
        map.insert(key, tat + self.interval);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn burst_then_sustained_rate() {
        // 10/s, burst 5: five at once, then one every 100 ms.
        let l = Limiter::try_new(10, Duration::from_secs(1), 5).unwrap();
        for _ in 0..5 {
            assert!(l.check(1).is_ok());
        }
        let r = l.check(1).unwrap_err();
        assert_eq!(r.retry_after, Duration::from_millis(100));
        // Another key has its own budget.
        assert!(l.check(2).is_ok());
        tokio::time::advance(Duration::from_millis(100)).await;
        assert!(l.check(1).is_ok());
        assert!(l.check(1).is_err());
        // Over one second at a steady 20/s: the rate plus what the burst tolerates.
        tokio::time::advance(Duration::from_secs(5)).await;
        let mut ok = 0;
        for _ in 0..20 {
            if l.check(3).is_ok() {
                ok += 1;
            }
            tokio::time::advance(Duration::from_millis(50)).await;
        }
        // The burst allowance (4 intervals ahead) plus 10 at the sustained rate.
        assert!((13..=15).contains(&ok), "{ok}");
    }

    #[tokio::test(start_paused = true)]
    async fn expired_keys_are_swept() {
        let l = Limiter::try_new(1000, Duration::from_secs(1), 1).unwrap();
        for k in 0..(SHARDS * SWEEP_AT) as u64 {
            let _ = l.check(k);
        }
        tokio::time::advance(Duration::from_secs(1)).await;
        for k in 0..SHARDS as u64 {
            let _ = l.check(k + 1_000_000);
        }
        let total: usize = l.shards.iter().map(|s| s.lock().unwrap().len()).sum();
        assert!(total < SHARDS * 2 + SHARDS, "{total}");
    }

    #[test]
    fn invalid() {
        assert!(Limiter::try_new(0, Duration::from_secs(1), 1).is_err());
        assert!(Limiter::try_new(1, Duration::ZERO, 1).is_err());
    }
}
