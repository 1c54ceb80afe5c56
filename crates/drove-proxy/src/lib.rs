//! drove's HTTP/1.1 data path: accepts client connections and forwards each request to a
//! backend picked by a [`drove_balancer::Balancer`].
//!
//! It owns the listener workers (`worker.rs`: one OS thread and one single-threaded
//! tokio runtime per worker, each with its own `SO_REUSEPORT` socket, its own upstream
//! keep-alive pool and buffers, so nothing on the hot path is shared but the lock-free
//! backend set and a few atomic counters); in each worker one task per client connection
//! (`conn.rs`, see `LIFECYCLE.md`); and each request's walk through named phases
//! (`request/`: info → admit → forward → retry → respond → relay → finish). HTTP/1.1 is
//! handled on raw bytes (`h1/`: httparse heads, validated and rewritten by copying header
//! lines; chunked bodies re-framed), sockets are tuned for syscalls per request
//! (`sock.rs`), TLS is rustls driven by hand (`tls.rs`). It does not know where backends
//! come from (static list or supervisor) nor any configuration file: the runtime builds
//! a [`ProxySettings`]. Main entry points: [`bind`] and [`serve`]; errors keep their
//! cause and map to statuses in one place ([`ProxyError::status`]).

mod buffers;
mod conn;
pub mod error;
mod h1;
pub mod handoff;
mod headers;
mod hooks;
mod http2;
mod local_signal;
mod log;
mod request;
mod settings;
mod sock;
mod stats;
mod timer;
pub mod tls;
mod upstream;
mod worker;

pub use error::{ProxyError, Side};
pub use headers::Cidr;
pub use settings::{
    AccessLogFormat, CompressRoute, HashKey, LimitKey, ProxySettings, RouteLimit, StickyCookie,
};
pub use stats::{PanicSite, ProxyStats};

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use drove_balancer::Balancer;

/// A proxy: the settings in force, the balancer it picks from, and its counters. Cheap
/// to clone; clones share everything, so [`Proxy::update`] on one reaches every worker.
#[derive(Debug, Clone)]
pub struct Proxy {
    pub(crate) balancer: Arc<Balancer>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) stats: Arc<ProxyStats>,
    /// Connections given up for, or taken over from, an upgrade (`drove upgrade`).
    pub(crate) handoff: Arc<handoff::HandoffState>,
}

/// The settings in force, swapped whole by [`Proxy::update`].
#[derive(Debug)]
pub(crate) struct Shared {
    live: ArcSwap<Live>,
    /// Bumped after every swap. Workers compare it with the generation they cached (one
    /// relaxed read of a line that is written only by a reload, so it stays in every
    /// core's cache) and reload their copy only when it moved: a request costs one
    /// atomic load, never a shared reference count.
    generation: AtomicU64,
}

/// One generation of settings, with what is built from them (the access log's writer).
/// A request holds the generation it started with until it ends.
#[derive(Debug)]
pub(crate) struct Live {
    pub(crate) settings: ProxySettings,
    pub(crate) log: Arc<log::AccessLog>,
}

impl Shared {
    /// The generation number and the settings of that generation (or a newer one).
    pub(crate) fn load(&self) -> (u64, Arc<Live>) {
        let g = self.generation.load(Ordering::Acquire);
        (g, self.live.load_full())
    }
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }
}

impl Proxy {
    /// Builds a proxy; opens the access log file if one is configured.
    pub fn new(balancer: Arc<Balancer>, settings: ProxySettings) -> std::io::Result<Proxy> {
        let log = log::AccessLog::open(settings.access_log, settings.access_log_path.as_deref())?;
        Ok(Proxy {
            balancer,
            stats: Arc::new(ProxyStats::new(settings.retry_budget_percent)),
            handoff: Arc::default(),
            shared: Arc::new(Shared {
                live: ArcSwap::from_pointee(Live {
                    settings,
                    log: Arc::new(log),
                }),
                generation: AtomicU64::new(0),
            }),
        })
    }

    /// Puts new settings in force (a reload): every request that starts from now on, on
    /// every worker, uses them; a request in flight finishes with the settings it started
    /// with, and a connection keeps the TLS session and trusted-proxy decision it was
    /// accepted with. The access log is reopened only when its format or file changed;
    /// that is the only step that can fail, and then nothing changes. Rate limiters are
    /// whatever `settings.routes` holds (the caller keeps the state of unchanged ones by
    /// passing the same `Arc`s).
    pub fn update(&self, settings: ProxySettings) -> std::io::Result<()> {
        let current = self.shared.live.load();
        let log = if current.settings.access_log == settings.access_log
            && current.settings.access_log_path == settings.access_log_path
        {
            current.log.clone()
        } else {
            Arc::new(log::AccessLog::open(
                settings.access_log,
                settings.access_log_path.as_deref(),
            )?)
        };
        self.stats.set_budget_percent(settings.retry_budget_percent);
        self.shared.live.store(Arc::new(Live { settings, log }));
        self.shared.generation.fetch_add(1, Ordering::Release);
        Ok(())
    }

    /// The settings in force (a copy: for the admin API and reloads, not the data path).
    pub fn settings(&self) -> ProxySettings {
        self.shared.live.load().settings.clone()
    }

    /// The counters, shared with every worker.
    pub fn stats(&self) -> &Arc<ProxyStats> {
        &self.stats
    }

    /// Before an upgrade: every worker stops accepting (the listening sockets stay open,
    /// connections queue on them) and every client connection gives up its socket at a
    /// point where drove holds none of its bytes (see [`handoff`]). Resolves once no
    /// connection is left or after `grace`; the workers are gone by then.
    pub async fn hand_off(&self, grace: std::time::Duration) -> handoff::HandedOff {
        let started = std::time::Instant::now();
        let _ = self.handoff.requested.send(true);
        let deadline = tokio::time::Instant::now() + grace;
        while self.stats.active_connections.load(Ordering::Relaxed) > 0
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        handoff::HandedOff {
            connections: std::mem::take(&mut *handoff::lock(&self.handoff.handed)),
            still_open: self.stats.active_connections.load(Ordering::Relaxed),
            took: started.elapsed(),
        }
    }

    /// Connections to serve (handed over by the drove this one replaced, or given back
    /// after a failed upgrade): the next workers started take them. Also ends a
    /// hand-over, so workers started from now on accept again.
    pub fn adopt(&self, connections: Vec<handoff::HandedConnection>) {
        let _ = self.handoff.requested.send(false);
        handoff::lock(&self.handoff.adopted).extend(connections);
    }

    /// The rate-limited routes in force.
    pub fn routes(&self) -> Vec<RouteLimit> {
        self.shared.live.load().settings.routes.clone()
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

/// [`bind`] for a reload that changes `workers` or `defer_accept` on the same address:
/// the first sockets are duplicates of `existing` (the same kernel sockets, so the
/// connections queued on them are served by the new workers instead of being reset when
/// the old ones close), the rest are bound anew; `defer_accept` is set on all of them.
pub fn bind_reusing(
    addr: SocketAddr,
    workers: usize,
    defer_accept: bool,
    existing: &[std::net::TcpListener],
) -> std::io::Result<Vec<std::net::TcpListener>> {
    let workers = workers.max(1);
    let mut out = Vec::with_capacity(workers);
    for l in existing.iter().take(workers) {
        let l = l.try_clone()?;
        set_defer_accept_secs(&socket2::SockRef::from(&l), u32::from(defer_accept))?;
        out.push(l);
    }
    let addr = out
        .first()
        .map(|l| l.local_addr())
        .transpose()?
        .unwrap_or(addr);
    if out.len() < workers {
        out.extend(bind(addr, workers - out.len(), defer_accept)?);
    }
    Ok(out)
}

/// Linux `TCP_DEFER_ACCEPT`: the listener reports a connection only once its first
/// bytes have arrived (or after about a second, when the kernel gives up waiting), so the
/// worker reads the request right after `accept` and a `Connection: close` request
/// never needs an epoll registration (see `sock.rs`). Neither socket2 nor nix exposes
/// this option and std's is unstable, hence this crate's only `unsafe` block.
fn set_defer_accept(s: &socket2::Socket) -> std::io::Result<()> {
    // One second: long enough for a client's first bytes, short enough that a client
    // which connects and waits (server-speaks-first probes) is not kept waiting long.
    set_defer_accept_secs(&socket2::SockRef::from(s), 1)
}

/// `TCP_DEFER_ACCEPT` of `secs` (0 turns it off).
#[allow(unsafe_code)]
fn set_defer_accept_secs(s: &socket2::SockRef<'_>, secs: u32) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let secs = libc::c_int::try_from(secs).unwrap_or(libc::c_int::MAX);
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
    serve_until(listeners, proxy, shutdown.clone(), shutdown).await
}

/// [`serve`] for listeners a reload replaces: when `retire` turns true the workers stop
/// accepting and each connection ends after its next response (`Connection: close`),
/// at its idle timeout, or when its tunnel closes — no grace cuts them short, so a
/// client on a keep-alive connection never races an idle close and a WebSocket stays
/// open. When `shutdown` turns true (drove stops), idle connections close at once and
/// the rest get the shutdown grace, as with [`serve`].
pub async fn serve_until(
    listeners: Vec<std::net::TcpListener>,
    proxy: Proxy,
    retire: tokio::sync::watch::Receiver<bool>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<()> {
    let (idle_end_tx, idle_end) = tokio::sync::watch::channel(false);
    let stop = worker::Stop {
        retire,
        shutdown,
        handoff: proxy.handoff.requested.subscribe(),
        idle_end,
    };
    // `idle_end` turns true with `shutdown` or `handoff` (it lives while the workers do).
    let idle_end = {
        let (mut shutdown, mut handoff) = (stop.shutdown.clone(), stop.handoff.clone());
        async move {
            tokio::select! {
                _ = shutdown.wait_for(|v| *v) => {}
                _ = handoff.wait_for(|v| *v) => {}
            }
            let _ = idle_end_tx.send(true);
            std::future::pending::<std::convert::Infallible>().await
        }
    };
    // Connections adopted from an upgrade, spread over the workers.
    let n = listeners.len().max(1);
    let mut shares: Vec<Vec<handoff::HandedConnection>> = (0..n).map(|_| Vec::new()).collect();
    for (i, c) in std::mem::take(&mut *handoff::lock(&proxy.handoff.adopted))
        .into_iter()
        .enumerate()
    {
        shares[i % n].push(c);
    }
    let mut done = Vec::new();
    for ((i, l), adopted) in listeners.into_iter().enumerate().zip(shares) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let proxy = proxy.clone();
        let stop = stop.clone();
        std::thread::Builder::new()
            .name(format!("drove-worker-{i}"))
            .spawn(move || {
                let r = worker::run_contained(l, proxy, stop, adopted);
                let _ = tx.send(r);
            })?;
        done.push(rx);
    }
    let workers = async {
        let mut result = Ok(());
        for rx in done {
            match rx.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => result = Err(e),
                Err(_) => result = Err(std::io::Error::other("proxy worker panicked")),
            }
        }
        result
    };
    tokio::select! {
        r = workers => r,
        never = idle_end => match never {},
    }
}

/// The text of a panic's payload (`panic!("...")` gives a `&str` or a `String`).
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(a panic without a message)")
}

/// A future built directly in its heap allocation. `Box::pin(f())` builds the future on
/// the stack and then copies all of it (its whole size, not the few captures it holds
/// before its first poll) into the box; with unwinding on, LLVM cannot move the
/// allocation before the construction (the future would need dropping if the allocation
/// unwound), so the copy stays. Allocating first lets the construction write into the
/// box. Used for each request's walk and each connection's task (callgrind: ~360
/// instructions per request for the walk's copy under `panic = "unwind"`).
#[inline(always)]
pub(crate) fn box_in_place<F: std::future::Future>(
    make: impl FnOnce() -> F,
) -> std::pin::Pin<Box<F>> {
    let slot = Box::new_uninit();
    Box::into_pin(Box::write(slot, make()))
}

/// Settings for the crate's unit tests (explicit values, not defaults: drove's defaults
/// live in drove-config).
#[cfg(test)]
pub(crate) fn test_settings() -> ProxySettings {
    use std::time::Duration;
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
        request_id_header: None,
        trusted_proxies: Vec::new(),
        access_log: AccessLogFormat::Off,
        access_log_path: None,
        max_header_size: 16 * 1024,
        max_body_size: 0,
        upgrades: vec!["websocket".into()],
        http2: true,
        http2_max_streams: 128,
        compress: None,
        compress_routes: Vec::new(),
        sticky: None,
        hash_key: None,
        routes: Vec::new(),
        tls: None,
    }
}
