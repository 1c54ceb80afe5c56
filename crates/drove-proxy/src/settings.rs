//! What the data path is told: [`ProxySettings`] and its parts, already validated.
//!
//! The defaults a user sees live in one place, drove-config (and its reference,
//! docs/configuration.md); the runtime converts a validated config into these types.
//! There is deliberately no `Default` here: a second copy of the defaults would drift.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;

use crate::Cidr;

/// Access log format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessLogFormat {
    /// No access log.
    Off,
    /// NCSA combined, plus upstream fields (nginx-style).
    Combined,
    /// One JSON object per line.
    Json,
}

/// What the `hash` algorithm hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    /// A request header's value.
    Header(HeaderName),
    /// A cookie's value.
    Cookie(String),
    /// The request path (without the query).
    Path,
    /// The client IP (like `ip_hash`).
    ClientIp,
}

/// Cookie stickiness.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StickyCookie {
    /// Cookie name.
    pub name: String,
    /// `Max-Age`; None for a session cookie.
    pub max_age: Option<Duration>,
}

/// What a rate limit counts by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitKey {
    /// The client IP (after trusted X-Forwarded-For).
    ClientIp,
    /// A request header's value (requests without it share one bucket).
    Header(HeaderName),
    /// A cookie's value (requests without it share one bucket).
    Cookie(String),
}

/// Compression of responses to requests whose path starts with `prefix`.
#[derive(Debug, Clone)]
pub struct CompressRoute {
    /// Path prefix.
    pub prefix: String,
    /// The settings there; `None`: not compressed.
    pub settings: Option<Arc<drove_compress::Settings>>,
}

/// A rate limit applied to requests whose path starts with `prefix`.
#[derive(Debug, Clone)]
pub struct RouteLimit {
    /// Path prefix.
    pub prefix: String,
    /// The limit's name (for logs).
    pub name: String,
    /// What requests are counted by.
    pub key: LimitKey,
    /// The shared limiter (one per `[limits.NAME]`, whatever the number of routes).
    pub limiter: Arc<drove_limits::Limit>,
}

/// Everything the data path needs to know, already validated.
#[derive(Debug, Clone)]
pub struct ProxySettings {
    /// TCP connect timeout to a backend.
    pub connect_timeout: Duration,
    /// A client must send a complete request head within this time.
    pub header_timeout: Duration,
    /// Time to the response head, across all tries.
    pub response_timeout: Duration,
    /// Time to the response head of one try (connect included).
    pub per_try_timeout: Duration,
    /// An idle keep-alive client connection is closed after this.
    pub idle_timeout: Duration,
    /// On shutdown, in-flight requests get this long to finish.
    pub shutdown_grace: Duration,
    /// Retries after the first try of a request that reached a backend (0: none). A
    /// request that never reached one (connect error, a pooled connection found closed)
    /// is always tried on another backend, whatever this says.
    pub retries: u32,
    /// Retries allowed as a share of requests, in percent (connect failures are exempt:
    /// they never reached a backend, so they cost the fleet nothing).
    pub retry_budget_percent: u32,
    /// Retry idempotent, replayable requests answered with 502, 503 or 504.
    pub retry_on_5xx: bool,
    /// Response header naming the instance that served (None: off).
    pub instance_header: Option<HeaderName>,
    /// Request id header, propagated or generated (None: off).
    pub request_id_header: Option<HeaderName>,
    /// Peers whose X-Forwarded-For / -Proto / X-Real-IP are believed.
    pub trusted_proxies: Vec<Cidr>,
    /// Access log format.
    pub access_log: AccessLogFormat,
    /// Access log destination (None: stdout).
    pub access_log_path: Option<PathBuf>,
    /// Largest request head accepted (bigger: 431).
    pub max_header_size: usize,
    /// Largest request body accepted (bigger: 413), announced (`Content-Length`) or
    /// counted (the decoded chunks of a chunked body); 0 = no limit.
    pub max_body_size: u64,
    /// Protocols a client may switch to with `Upgrade` (lowercase, e.g. `websocket`);
    /// any other upgrade (`h2c` above all) is stripped and the request forwarded as a
    /// plain one.
    pub upgrades: Vec<String>,
    /// Speak HTTP/2 with clients: ALPN `h2` on a TLS listener, prior knowledge (h2c) on
    /// a plain one.
    pub http2: bool,
    /// Streams one HTTP/2 connection may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS).
    pub http2_max_streams: u32,
    /// Response compression where no route says otherwise (`None`: off).
    pub compress: Option<Arc<drove_compress::Settings>>,
    /// Response compression per route prefix, longest prefix first (the first match
    /// applies; `None`: off on that route).
    pub compress_routes: Vec<CompressRoute>,
    /// Cookie stickiness.
    pub sticky: Option<StickyCookie>,
    /// Key for the `hash` algorithm.
    pub hash_key: Option<HashKey>,
    /// Rate-limited routes; the longest matching prefix applies.
    pub routes: Vec<RouteLimit>,
    /// TLS for client connections (see [`crate::tls::server_config`]); `None` = plain HTTP.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}
