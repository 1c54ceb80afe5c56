//! drove's HTTP/1.1 data path: accepts client connections and forwards each request to a
//! backend picked by a [`drove_balancer::Balancer`].
//!
//! `drove-proxy` owns the listener workers (one OS thread and one single-threaded tokio
//! runtime per worker, each with its own `SO_REUSEPORT` socket, so nothing on the hot path
//! is shared but the lock-free backend set and a few atomic counters), and in each worker
//! one task per client connection that reads a request head (httparse), rewrites it on raw
//! bytes (hop-by-hop headers out; X-Forwarded-*, X-Request-Id in), takes an idle
//! connection to the picked backend from the worker's keep-alive pool, and moves the body
//! and the response through itself in their own framing (Content-Length, chunked, until
//! close) — no header map, no channel, no second task per request. It also owns retries
//! with a budget, timeouts (connect, header read, per try, response, idle), cookie
//! stickiness and hash keys, `Upgrade` tunnels (WebSocket), rejection of malformed and
//! smuggling-shaped requests, the access log, and graceful shutdown. It does not know
//! where backends come from (static list or supervisor) nor any configuration file: the
//! runtime builds a [`ProxySettings`].
//! Main entry points: [`bind`] and [`serve`]; errors map to statuses in one place
//! ([`error::ProxyError::status`]).

mod conn;
pub mod error;
mod h1;
mod headers;
mod log;
mod sock;
mod stats;
pub mod tls;
mod upstream;
mod worker;

pub use error::ProxyError;
pub use headers::Cidr;
pub use stats::ProxyStats;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use drove_balancer::Balancer;
use http::HeaderName;

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
    /// Retries after the first try (0: none).
    pub retries: u32,
    /// Retries allowed as a share of requests, in percent (connect failures are exempt:
    /// they never reached a backend, so they cost the fleet nothing).
    pub retry_budget_percent: u32,
    /// Retry idempotent requests on 502/503/504 from the backend.
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
    /// Largest request body accepted when it announces its length (bigger: 413); 0 = no limit.
    pub max_body_size: u64,
    /// Cookie stickiness.
    pub sticky: Option<StickyCookie>,
    /// Key for the `hash` algorithm.
    pub hash_key: Option<HashKey>,
    /// Rate-limited routes; the longest matching prefix applies.
    pub routes: Vec<RouteLimit>,
    /// TLS for client connections (see [`tls::server_config`]); `None` = plain HTTP.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

impl Default for ProxySettings {
    fn default() -> Self {
        ProxySettings {
            connect_timeout: Duration::from_secs(1),
            header_timeout: Duration::from_secs(10),
            response_timeout: Duration::from_secs(60),
            per_try_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(30),
            retries: 2,
            retry_budget_percent: 20,
            retry_on_5xx: false,
            instance_header: None,
            request_id_header: Some(HeaderName::from_static("x-request-id")),
            trusted_proxies: Vec::new(),
            access_log: AccessLogFormat::Off,
            access_log_path: None,
            max_header_size: 16 * 1024,
            max_body_size: 0,
            sticky: None,
            hash_key: None,
            routes: Vec::new(),
            tls: None,
        }
    }
}

/// A proxy: settings, the balancer it picks from, and its counters.
#[derive(Debug, Clone)]
pub struct Proxy {
    pub(crate) balancer: Arc<Balancer>,
    pub(crate) settings: Arc<ProxySettings>,
    pub(crate) stats: Arc<ProxyStats>,
    pub(crate) log: Arc<log::AccessLog>,
}

impl Proxy {
    /// Builds a proxy; opens the access log file if one is configured.
    pub fn new(balancer: Arc<Balancer>, settings: ProxySettings) -> std::io::Result<Proxy> {
        let log = log::AccessLog::open(settings.access_log, settings.access_log_path.as_deref())?;
        Ok(Proxy {
            balancer,
            stats: Arc::new(ProxyStats::new(settings.retry_budget_percent)),
            settings: Arc::new(settings),
            log: Arc::new(log),
        })
    }

    /// The counters, shared with every worker.
    pub fn stats(&self) -> &Arc<ProxyStats> {
        &self.stats
    }

    /// The rate-limited routes it enforces.
    pub fn routes(&self) -> &[RouteLimit] {
        &self.settings.routes
    }

    /// The balancer it picks from.
    pub fn balancer(&self) -> &Arc<Balancer> {
        &self.balancer
    }
}

/// Binds `workers` listening sockets on `addr` with `SO_REUSEPORT`, so each worker
/// accepts on its own socket and the kernel spreads connections. Port 0 picks one free
/// port for all of them. `defer_accept`: see [`set_defer_accept`].
pub fn bind(
    addr: SocketAddr,
    workers: usize,
    defer_accept: bool,
) -> std::io::Result<Vec<std::net::TcpListener>> {
    use socket2::{Domain, Socket, Type};
    let mut out = Vec::with_capacity(workers.max(1));
    let mut addr = addr;
    for _ in 0..workers.max(1) {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.set_nodelay(true)?;
        socket.bind(&addr.into())?;
        // Like nginx's default on Linux: large enough for connection bursts.
        socket.listen(4096)?;
        if defer_accept {
            set_defer_accept(&socket)?;
        }
        socket.set_nonblocking(true)?;
        let l: std::net::TcpListener = socket.into();
        addr = l.local_addr()?;
        out.push(l);
    }
    Ok(out)
}

/// Linux `TCP_DEFER_ACCEPT`: the listener reports a connection only once its first
/// bytes have arrived (or after about `SECS`, when the kernel gives up waiting), so the
/// worker reads the request right after `accept` and a `Connection: close` request
/// never needs an epoll registration (see `sock.rs`). Neither socket2 nor nix exposes
/// this option and std's is unstable, hence this crate's only `unsafe` block.
#[allow(unsafe_code)]
fn set_defer_accept(s: &socket2::Socket) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    const SECS: libc::c_int = 1;
    let secs: libc::c_int = SECS;
    // SAFETY: a plain setsockopt on an fd `s` owns, with a pointer to a live c_int and
    // that int's size; the kernel only reads from it during the call.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            &secs as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Serves on `listeners` (one worker thread each) until `shutdown` turns true; then stops
/// accepting, lets in-flight requests finish within the grace period, and returns.
pub async fn serve(
    listeners: Vec<std::net::TcpListener>,
    proxy: Proxy,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<()> {
    let mut done = Vec::new();
    for (i, l) in listeners.into_iter().enumerate() {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let proxy = proxy.clone();
        let shutdown = shutdown.clone();
        std::thread::Builder::new()
            .name(format!("drove-worker-{i}"))
            .spawn(move || {
                let r = worker::run(l, proxy, shutdown);
                let _ = tx.send(r);
            })?;
        done.push(rx);
    }
    let mut result = Ok(());
    for rx in done {
        match rx.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => result = Err(e),
            Err(_) => result = Err(std::io::Error::other("proxy worker panicked")),
        }
    }
    result
}
