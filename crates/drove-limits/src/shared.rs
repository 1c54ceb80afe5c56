//! A limit shared by several drove processes through Redis: the same GCRA, its state per
//! key (the theoretical arrival time) kept in Redis and updated by one Lua script, so a
//! check is one atomic round trip and the clock is Redis's own (`TIME`), the same for
//! every drove whatever their clocks say.
//!
//! Redis is on the request path, so it is bounded: a check that gets no answer within
//! [`REDIS_TIMEOUT`], or any Redis error, falls back to this process's local limiter
//! (each drove then enforces the limit on its own: fail open to per-node limits, not to
//! no limit, and not to refusing everything). The fallback is counted.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use redis::aio::ConnectionManager;

use crate::{Limiter, Refused};

/// Longest a request waits for Redis before the local limiter decides.
pub const REDIS_TIMEOUT: Duration = Duration::from_millis(50);

/// GCRA on Redis time. KEYS[1]: the key's state; ARGV: interval and tolerance in µs.
/// Returns 0 when allowed (and counted), else the µs until a request would be allowed.
const SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
if tat - tolerance > now then
  return tat - tolerance - now
end
local new_tat = tat + interval
redis.call('SET', KEYS[1], new_tat, 'PX', math.floor((new_tat - now) / 1000) + 1)
return 0
"#;

/// A limit whose state lives in Redis, with a local fallback.
pub struct SharedLimiter {
    name: String,
    /// Set once Redis has answered a connection (possibly after startup, by a task that
    /// keeps trying); until then every check is local.
    conn: Arc<OnceLock<ConnectionManager>>,
    script: redis::Script,
    interval_us: u64,
    tolerance_us: u64,
    local: Limiter,
    /// Checks decided locally because Redis did not answer in time or failed.
    pub fallbacks: AtomicU64,
    /// When a fallback was last logged (seconds since `started`): at most one warning
    /// per [`WARN_EVERY`], not one per request.
    warned_at: AtomicU64,
    started: tokio::time::Instant,
}

/// Minimum time between two "Redis failed, deciding locally" warnings.
const WARN_EVERY: Duration = Duration::from_secs(10);

impl std::fmt::Debug for SharedLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedLimiter")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl SharedLimiter {
    /// Connects to Redis at `url`. When it cannot be reached now, a task keeps trying
    /// every second and checks are local until it answers. `name` keeps the keys of
    /// different limits apart. Errors only for an invalid URL or limit.
    pub async fn connect(
        url: &str,
        name: &str,
        count: u32,
        period: Duration,
        burst: u32,
    ) -> Result<SharedLimiter, Box<dyn std::error::Error + Send + Sync>> {
        let local = Limiter::try_new(count, period, burst)?;
        let client = redis::Client::open(url)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Duration::from_millis(500))
            .set_response_timeout(REDIS_TIMEOUT)
            .set_number_of_retries(1);
        let conn = Arc::new(OnceLock::new());
        match ConnectionManager::new_with_config(client.clone(), config.clone()).await {
            Ok(c) => {
                let _ = conn.set(c);
            }
            Err(e) => {
                tracing::warn!(limit = name, url, error = %e, "Redis unreachable: limit enforced per process until it answers");
                let (slot, name) = (conn.clone(), name.to_string());
                tokio::spawn(async move {
                    loop {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        if let Ok(c) =
                            ConnectionManager::new_with_config(client.clone(), config.clone()).await
                        {
                            tracing::info!(limit = name, "Redis reachable: limit shared again");
                            let _ = slot.set(c);
                            return;
                        }
                    }
                });
            }
        }
        Ok(SharedLimiter {
            name: name.to_string(),
            conn,
            script: redis::Script::new(SCRIPT),
            interval_us: local.interval.as_micros() as u64,
            tolerance_us: local.tolerance.as_micros() as u64,
            local,
            fallbacks: AtomicU64::new(0),
            warned_at: AtomicU64::new(0),
            started: tokio::time::Instant::now(),
        })
    }

    /// Counts one request with `key` across every drove sharing this Redis.
    pub async fn check(&self, key: u64) -> Result<(), Refused> {
        let Some(conn) = self.conn.get() else {
            self.fallbacks.fetch_add(1, Relaxed);
            return self.local.check(key);
        };
        let mut conn = conn.clone();
        let mut call = self
            .script
            .key(format!("drove:limit:{}:{key:x}", self.name));
        call.arg(self.interval_us).arg(self.tolerance_us);
        let answer: Result<Result<u64, redis::RedisError>, _> =
            tokio::time::timeout(REDIS_TIMEOUT, call.invoke_async(&mut conn)).await;
        match answer {
            Ok(Ok(0)) => Ok(()),
            Ok(Ok(us)) => Err(Refused {
                retry_after: Duration::from_micros(us),
            }),
            Ok(Err(e)) => self.fall_back(key, &e.to_string()),
            Err(_) => self.fall_back(key, "no answer within 50 ms"),
        }
    }

    fn fall_back(&self, key: u64, why: &str) -> Result<(), Refused> {
        self.fallbacks.fetch_add(1, Relaxed);
        let now = self.started.elapsed().as_secs() + WARN_EVERY.as_secs();
        let last = self.warned_at.load(Relaxed);
        if now >= last + WARN_EVERY.as_secs()
            && self
                .warned_at
                .compare_exchange(last, now, Relaxed, Relaxed)
                .is_ok()
        {
            tracing::warn!(
                limit = %self.name,
                error = why,
                fallbacks = self.fallbacks.load(Relaxed),
                "Redis failed: limit enforced per process"
            );
        }
        self.local.check(key)
    }
}
