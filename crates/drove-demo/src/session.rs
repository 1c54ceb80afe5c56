//! Session counters behind `/session`: in this process, or in Redis when shared.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use redis::aio::MultiplexedConnection;

/// Name of the cookie carrying the session id.
pub(crate) const COOKIE: &str = "demo_session";

/// Prefix of the Redis key of a session counter.
const REDIS_KEY_PREFIX: &str = "drove:demo:session:";

/// Counters expire an hour after their last increment, so a long demo does not fill Redis.
const REDIS_TTL_SECS: i64 = 3600;

/// Whole budget of one `/session` call against Redis, connecting included: an unreachable
/// or frozen Redis must give a quick 503, never a hung request.
const REDIS_TIMEOUT: Duration = Duration::from_secs(1);

/// The in-memory store forgets everything past this many sessions: a load test without
/// cookies creates one session per request and must not grow the demo without bound.
const MEMORY_MAX_SESSIONS: usize = 100_000;

/// Why a counter could not be incremented.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SessionError {
    /// `REDIS_URL` does not parse.
    #[error("invalid REDIS_URL: {0}")]
    BadUrl(String),
    /// Redis answered with an error or the connection failed.
    #[error("redis error: {0}")]
    Redis(#[from] redis::RedisError),
    /// Redis did not answer within the budget.
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
}

/// Where session counters live.
pub(crate) enum SessionStore {
    Memory(Mutex<HashMap<String, u64>>),
    Redis(RedisStore),
}

pub(crate) struct RedisStore {
    client: Result<redis::Client, String>,
    /// The shared connection; `None` until first use and after a failure, so the next call
    /// reconnects. The lock is held only while (re)connecting, never during a command.
    conn: tokio::sync::Mutex<Option<MultiplexedConnection>>,
}

impl SessionStore {
    pub(crate) fn new(redis_url: Option<&str>) -> Self {
        match redis_url {
            None => Self::Memory(Mutex::new(HashMap::new())),
            Some(url) => Self::Redis(RedisStore {
                client: redis::Client::open(url).map_err(|e| e.to_string()),
                conn: tokio::sync::Mutex::new(None),
            }),
        }
    }

    /// `"memory"` or `"redis"`, as reported by `/session`.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Self::Memory(_) => "memory",
            Self::Redis(_) => "redis",
        }
    }

    /// Increments the counter of session `id` and returns its new value.
    pub(crate) async fn incr(&self, id: &str) -> Result<u64, SessionError> {
        match self {
            Self::Memory(map) => {
                let mut map = map.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                if map.len() >= MEMORY_MAX_SESSIONS && !map.contains_key(id) {
                    map.clear();
                }
                let count = map.entry(id.to_owned()).or_insert(0);
                *count += 1;
                Ok(*count)
            }
            Self::Redis(store) => {
                match tokio::time::timeout(REDIS_TIMEOUT, store.incr(id)).await {
                    Ok(result) => result,
                    Err(_) => {
                        // A command that hangs means the connection is not usable (frozen
                        // server, black-holed network): start over on the next call.
                        if let Ok(mut conn) = store.conn.try_lock() {
                            *conn = None;
                        }
                        Err(SessionError::Timeout(REDIS_TIMEOUT))
                    }
                }
            }
        }
    }
}

impl RedisStore {
    async fn incr(&self, id: &str) -> Result<u64, SessionError> {
        let key = format!("{REDIS_KEY_PREFIX}{id}");
        let (mut conn, reused) = self.connection().await?;
        match Self::incr_on(&mut conn, &key).await {
            Ok(count) => Ok(count),
            Err(e) if is_connection_error(&e) => {
                *self.conn.lock().await = None;
                if !reused {
                    return Err(e.into());
                }
                // A kept connection can be stale (Redis restarted since the last call, which
                // this instance had no reason to notice): try once on a fresh one.
                let (mut conn, _) = self.connection().await?;
                Self::incr_on(&mut conn, &key).await.map_err(|e| {
                    if is_connection_error(&e) {
                        if let Ok(mut slot) = self.conn.try_lock() {
                            *slot = None;
                        }
                    }
                    e.into()
                })
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn incr_on(conn: &mut MultiplexedConnection, key: &str) -> redis::RedisResult<u64> {
        let (count,): (u64,) = redis::pipe()
            .atomic()
            .incr(key, 1u64)
            .expire(key, REDIS_TTL_SECS)
            .ignore()
            .query_async(conn)
            .await?;
        Ok(count)
    }

    /// The shared connection, and whether it was already open (as opposed to just made).
    async fn connection(&self) -> Result<(MultiplexedConnection, bool), SessionError> {
        let client = self
            .client
            .as_ref()
            .map_err(|e| SessionError::BadUrl(e.clone()))?;
        let mut slot = self.conn.lock().await;
        if let Some(conn) = slot.as_ref() {
            return Ok((conn.clone(), true));
        }
        let conn = client.get_multiplexed_async_connection().await?;
        *slot = Some(conn.clone());
        Ok((conn, false))
    }
}

fn is_connection_error(e: &redis::RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_unrecoverable_error()
}

/// Returns the session id carried by the request's cookies, if it is one we could have
/// issued (anything else is replaced by a fresh id rather than used as a Redis key).
pub(crate) fn session_from_cookies<'a>(
    cookie_headers: impl Iterator<Item = &'a http::HeaderValue>,
) -> Option<String> {
    cookie_headers
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim_matches('"'))
        .filter(|id| valid_id(id))
        .map(str::to_owned)
}

fn valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// 128 random bits, hex.
pub(crate) fn new_session_id() -> String {
    let bytes: [u8; 16] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn cookie_parsing() {
        let headers = [
            HeaderValue::from_static("a=1; other=2"),
            HeaderValue::from_static("x=y; demo_session=abc-123_X; z=w"),
        ];
        assert_eq!(
            session_from_cookies(headers.iter()).as_deref(),
            Some("abc-123_X")
        );
        let bad = [HeaderValue::from_static("demo_session=a b; c=d")];
        assert_eq!(session_from_cookies(bad.iter()), None);
        let empty = [HeaderValue::from_static("demo_session=")];
        assert_eq!(session_from_cookies(empty.iter()), None);
        let id = new_session_id();
        assert_eq!(id.len(), 32);
        assert!(valid_id(&id));
        assert_ne!(id, new_session_id());
    }

    #[tokio::test]
    async fn memory_counts_per_session() {
        let store = SessionStore::new(None);
        assert_eq!(store.kind(), "memory");
        assert_eq!(store.incr("a").await.unwrap(), 1);
        assert_eq!(store.incr("a").await.unwrap(), 2);
        assert_eq!(store.incr("b").await.unwrap(), 1);
    }

    #[tokio::test]
    async fn bad_redis_url_is_an_error_not_a_panic() {
        let store = SessionStore::new(Some("not a url"));
        assert_eq!(store.kind(), "redis");
        assert!(matches!(
            store.incr("a").await,
            Err(SessionError::BadUrl(_))
        ));
    }
}
