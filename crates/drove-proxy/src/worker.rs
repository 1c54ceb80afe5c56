//! One worker: a thread with a single-threaded runtime, its own listening socket and its
//! own upstream pool and buffers. Connections never migrate between workers, so
//! per-worker state ([`Worker`]: pool, buffers, request-id generator) needs no lock.

use rustc_hash::FxHashMap;
use std::cell::{Cell, RefCell};
use std::panic::AssertUnwindSafe;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::Duration;

use drove_balancer::Backend;
use futures_util::FutureExt;
use tokio::sync::watch;

use crate::buffers::Buffers;
use crate::conn;
use crate::handoff::HandedConnection;
use crate::local_signal::LocalSignal;
use crate::sock::Listener;
use crate::tls::TlsSock;
use crate::upstream::Pool;
use crate::{Live, PanicSite, Proxy};

/// How often idle upstream connections are checked: closed when too old, or when their
/// backend left rotation (removed, drained, unhealthy).
const SWEEP_INTERVAL: Duration = Duration::from_millis(500);

/// When a worker stops: `retire` (a reload replaced its listeners: stop accepting, let
/// every connection end by itself) or `shutdown` (drove stops: idle connections close
/// at once, the rest get the shutdown grace). Both turn true at a plain shutdown.
#[derive(Clone)]
pub(crate) struct Stop {
    pub(crate) retire: watch::Receiver<bool>,
    pub(crate) shutdown: watch::Receiver<bool>,
    /// An upgrade: stop accepting, hand connections over (see `handoff.rs`).
    pub(crate) handoff: watch::Receiver<bool>,
    /// True once `shutdown` or `handoff` is: what ends an idle connection's wait. One
    /// watch instead of two because every idle connection's task holds the wait
    /// (each `changed()` future is ~100 bytes).
    pub(crate) idle_end: watch::Receiver<bool>,
}

impl Stop {
    /// Whether a request that starts now should be the connection's last.
    pub(crate) fn stopping(&self) -> bool {
        *self.retire.borrow() || *self.shutdown.borrow()
    }
    /// Whether connections are being handed over to the next drove.
    pub(crate) fn handing_off(&self) -> bool {
        *self.handoff.borrow()
    }
}

/// The settings a request (or a connection's wait between requests) runs with: this
/// worker's copy of one generation, cloned without an atomic operation.
pub(crate) type Snapshot = Rc<Arc<Live>>;

/// Per-worker state shared by its connections.
pub(crate) struct Worker {
    pub(crate) proxy: Proxy,
    /// The generation of settings this worker last saw, and its copy of them.
    live: RefCell<(u64, Snapshot)>,
    /// Idle keep-alive connections to backends.
    pub(crate) pool: Pool,
    /// Free I/O buffers.
    pub(crate) buffers: Buffers,
    /// Ends idle connections' waits (fired from `Stop::idle_end` in `accept_loop`).
    pub(crate) idle_end: LocalSignal,
    /// A backend left rotation for its health (fired from the balancer's
    /// `left_rotation` watch): attempts waiting on it look again (`request::forward`).
    pub(crate) left_rotation: LocalSignal,
    /// `X-Drove-Instance: web.2\r\n` lines per backend key: no formatting per response.
    instance_lines: RefCell<FxHashMap<u64, Rc<[u8]>>>,
    /// Request-id generator state (xorshift; per worker, so no lock).
    rid: Cell<u64>,
    /// Client connections open on this worker, and a wake-up when that reaches 0
    /// (graceful shutdown waits for it).
    open: Cell<usize>,
    all_closed: tokio::sync::Notify,
    /// Test hook (`worker`): wakes the accept loop to panic.
    #[cfg(feature = "test-hooks")]
    crash: tokio::sync::Notify,
}

/// A client connection counted as open (worker and metrics) for as long as it lives.
pub(crate) struct OpenConnection(Rc<Worker>);

impl OpenConnection {
    pub(crate) fn new(w: &Rc<Worker>) -> OpenConnection {
        w.proxy.stats.connection_opened();
        w.open.set(w.open.get() + 1);
        OpenConnection(w.clone())
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        let w = &self.0;
        w.proxy.stats.connection_closed();
        w.open.set(w.open.get() - 1);
        if w.open.get() == 0 {
            w.all_closed.notify_waiters();
        }
    }
}

impl Worker {
    /// A worker's state, and its pool sweeper (a task on the current `LocalSet`).
    pub(crate) fn new(proxy: Proxy) -> Rc<Worker> {
        let seed = (std::process::id() as u64) << 32
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1);
        let (generation, live) = proxy.shared.load();
        let w = Rc::new(Worker {
            proxy,
            live: RefCell::new((generation, Rc::new(live))),
            pool: Pool::default(),
            buffers: Buffers::default(),
            idle_end: LocalSignal::default(),
            left_rotation: LocalSignal::default(),
            instance_lines: RefCell::new(FxHashMap::default()),
            rid: Cell::new(seed | 1),
            open: Cell::new(0),
            all_closed: tokio::sync::Notify::new(),
            #[cfg(feature = "test-hooks")]
            crash: tokio::sync::Notify::new(),
        });
        let weak = Rc::downgrade(&w);
        let mut left = w.proxy.balancer.left_rotation();
        tokio::task::spawn_local(async move {
            while left.changed().await.is_ok() {
                match weak.upgrade() {
                    Some(w) => w.left_rotation.fire(),
                    None => return,
                }
            }
        });
        let weak = Rc::downgrade(&w);
        let stats = w.proxy.stats.clone();
        tokio::task::spawn_local(async move {
            // A panic in a sweep is contained and the sweeper goes on: without it, idle
            // connections to removed backends would never be closed.
            while let Err(panic) = AssertUnwindSafe(sweep(&weak)).catch_unwind().await {
                stats.panicked(PanicSite::Worker);
                tracing::error!(
                    panic = crate::panic_message(&*panic),
                    "bug: the upstream pool sweeper panicked; it starts again"
                );
            }
        });
        w
    }

    /// The settings in force, for a request that starts now: one atomic load when
    /// nothing changed; after a reload, this worker's copy is refreshed first.
    pub(crate) fn snapshot(&self) -> Snapshot {
        let g = self.proxy.shared.generation();
        let mut live = self.live.borrow_mut();
        if live.0 != g {
            let (g, new) = self.proxy.shared.load();
            *live = (g, Rc::new(new));
        }
        live.1.clone()
    }

    /// Test hook (`worker`): makes this worker's accept loop panic.
    pub(crate) fn crash_worker(&self) {
        #[cfg(feature = "test-hooks")]
        self.crash.notify_one();
    }

    /// A new request id: 16 hex digits.
    pub(crate) fn new_request_id(&self) -> [u8; 16] {
        let mut x = self.rid.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rid.set(x);
        const HEX: &[u8; 16] = b"0123456789abcdef";
        std::array::from_fn(|i| HEX[((x >> (60 - 4 * i)) & 0xf) as usize])
    }

    /// The complete `instance_header` line for responses from `b`, if configured.
    pub(crate) fn instance_line(
        &self,
        settings: &crate::ProxySettings,
        b: &Backend,
    ) -> Option<Rc<[u8]>> {
        let name = settings.instance_header.as_ref()?;
        let mut m = self.instance_lines.borrow_mut();
        // A line cached under another header name (a reload renamed it while a request
        // that started before is still running) is rebuilt: each request writes the
        // name of its own settings.
        let named = |l: &[u8]| {
            l.strip_prefix(name.as_str().as_bytes())
                .is_some_and(|rest| rest.starts_with(b":"))
        };
        if m.get(&b.key()).is_some_and(|l| !named(l)) {
            m.remove(&b.key());
        }
        Some(
            m.entry(b.key())
                .or_insert_with(|| {
                    let mut v = Vec::with_capacity(name.as_str().len() + b.id().len() + 4);
                    v.extend_from_slice(name.as_str().as_bytes());
                    v.extend_from_slice(b": ");
                    v.extend(
                        b.id()
                            .bytes()
                            .filter(|c| c.is_ascii_graphic() || *c == b' '),
                    );
                    v.extend_from_slice(b"\r\n");
                    v.into()
                })
                .clone(),
        )
    }
}

/// Closes idle upstream connections that are too old or whose backend left rotation,
/// every [`SWEEP_INTERVAL`], until the worker is gone.
async fn sweep(weak: &Weak<Worker>) {
    let mut tick = tokio::time::interval(SWEEP_INTERVAL);
    loop {
        tick.tick().await;
        let Some(w) = weak.upgrade() else { return };
        let live: Vec<(u64, bool)> = w
            .proxy
            .balancer
            .snapshot()
            .iter()
            .map(|b| (b.key(), b.is_enabled() && b.is_healthy_now()))
            .collect();
        w.pool
            .sweep(|k| live.iter().any(|&(key, usable)| key == k && usable));
    }
}

/// At most this many queued connections are taken when a worker stops accepting.
const DRAIN_ON_CLOSE: usize = 1024;

/// After this long without a panic a worker's restart delay starts again from the
/// shortest: a bug hit once a day must not make the next restart slow.
const CALM: Duration = Duration::from_secs(10);
/// Restart delays after a worker panicked: short enough that queued connections wait
/// little, growing so a worker that panics at once on every start does not spin.
const RESTART_FIRST: Duration = Duration::from_millis(10);
const RESTART_MAX: Duration = Duration::from_secs(1);

/// Runs a worker (see [`run`]) and starts it again whenever it panics, on the same
/// listening socket: the socket is never closed meanwhile, so connections the kernel
/// queues on it wait for the new worker instead of being refused or reset. Only that
/// worker's open connections are lost.
pub(crate) fn run_contained(
    listener: std::net::TcpListener,
    proxy: Proxy,
    stop: Stop,
    adopted: Vec<HandedConnection>,
) -> std::io::Result<()> {
    let mut delay = RESTART_FIRST;
    let adopted = RefCell::new(adopted);
    // Kept open across a panic; closed by the accept loop as soon as it stops accepting
    // (see `accept_loop`), not when the grace for requests in flight ends.
    let original = RefCell::new(Some(listener));
    loop {
        // A duplicate of the descriptor for this run.
        let Some(l) = original
            .borrow()
            .as_ref()
            .map(|l| l.try_clone())
            .transpose()?
        else {
            return Ok(());
        };
        let started = std::time::Instant::now();
        let (p, s) = (proxy.clone(), stop.clone());
        let a = std::mem::take(&mut *adopted.borrow_mut());
        let run = AssertUnwindSafe(|| run(l, p, s, &original, a));
        match std::panic::catch_unwind(run) {
            Ok(r) => return r,
            Err(panic) => {
                proxy.stats.panicked(PanicSite::Worker);
                tracing::error!(
                    panic = crate::panic_message(&*panic),
                    thread = std::thread::current().name().unwrap_or("?"),
                    "bug: a proxy worker panicked; its open connections are lost, it starts again on the same socket"
                );
                if stop.stopping() {
                    return Ok(());
                }
                if started.elapsed() > CALM {
                    delay = RESTART_FIRST;
                }
                std::thread::sleep(delay);
                delay = (delay * 2).min(RESTART_MAX);
            }
        }
    }
}

/// A connection's task: a panic outside a request's walk (which contains its own) ends
/// that connection only, counted and logged.
///
/// `serve` comes boxed (`box_in_place`): tokio moves a task's future into its cell at
/// spawn and writes the cell's stage when the task ends, each a copy of the whole
/// future (~1 KiB for a connection; callgrind: about 7 such copies, ~950 instructions,
/// per connection with unwinding on). A box is one allocation and makes those copies
/// a pointer's.
fn contained<F: std::future::Future<Output = ()> + ?Sized>(
    serve: std::pin::Pin<Box<F>>,
    proxy: &Proxy,
    peer: std::net::SocketAddr,
) -> impl std::future::Future<Output = ()> {
    let stats = proxy.stats.clone();
    AssertUnwindSafe(serve).catch_unwind().map(move |r| {
        if let Err(panic) = r {
            stats.panicked(PanicSite::Connection);
            tracing::error!(
                %peer,
                panic = crate::panic_message(&*panic),
                "bug: a client connection panicked; it is closed, drove goes on"
            );
        }
    })
}

/// Test hook (`worker`): resolves when a request asked this worker to panic; never
/// without the `test-hooks` feature.
async fn crash_requested(w: &Worker) {
    #[cfg(feature = "test-hooks")]
    w.crash.notified().await;
    #[cfg(not(feature = "test-hooks"))]
    {
        let _ = w;
        std::future::pending::<()>().await;
    }
}

/// Runs a worker on the calling thread until `stop`, then drains its connections.
pub(crate) fn run(
    listener: std::net::TcpListener,
    proxy: Proxy,
    stop: Stop,
    original: &RefCell<Option<std::net::TcpListener>>,
    adopted: Vec<HandedConnection>,
) -> std::io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, accept_loop(listener, proxy, stop, original, adopted))
}

async fn accept_loop(
    listener: std::net::TcpListener,
    proxy: Proxy,
    stop: Stop,
    original: &RefCell<Option<std::net::TcpListener>>,
    adopted: Vec<HandedConnection>,
) -> std::io::Result<()> {
    let listener = Listener::new(listener)?;
    let worker = Worker::new(proxy.clone());
    // One wait on the `idle_end` watch per worker, passed on to its idle connections
    // (`local_signal.rs`: a watch wait per idle connection cost two lock round trips per
    // keep-alive request). A closed watch ends idle waits too, as it did.
    {
        let weak = Rc::downgrade(&worker);
        let mut idle_end = stop.idle_end.clone();
        tokio::task::spawn_local(async move {
            let _ = idle_end.wait_for(|v| *v).await;
            if let Some(w) = weak.upgrade() {
                w.idle_end.fire();
            }
        });
    }
    // Connections the drove before this one handed over (`drove upgrade`).
    for c in adopted {
        let peer = match &c {
            HandedConnection::Http1(s) | HandedConnection::Tunnel { client: s, .. } => s
                .peer_addr()
                .unwrap_or_else(|_| std::net::SocketAddr::from(([0, 0, 0, 0], 0))),
        };
        let serve = conn::serve_adopted(worker.clone(), c, stop.clone());
        tokio::task::spawn_local(contained(serve, &proxy, peer));
    }

    // The shutdown watch is awaited once around the whole accept loop, not per accept
    // (a fresh `changed()` per connection costs a waiter registration and removal).
    let start = |sock, peer| {
        // New connections get the settings in force now: a reloaded certificate
        // serves the next handshake; a connection keeps its session.
        let live = worker.snapshot();
        match &live.settings.tls {
            None => {
                let client = conn::Client::new(&worker, sock, peer);
                let serve =
                    crate::box_in_place(|| conn::serve(worker.clone(), client, stop.clone()));
                tokio::task::spawn_local(contained(serve, &proxy, peer));
            }
            Some(config) => match TlsSock::new(sock, config.clone()) {
                Ok(tls) => {
                    let client = conn::Client::new(&worker, tls, peer);
                    let serve =
                        crate::box_in_place(|| conn::serve(worker.clone(), client, stop.clone()));
                    tokio::task::spawn_local(contained(serve, &proxy, peer));
                }
                Err(e) => tracing::warn!(error = %e, "TLS session setup failed"),
            },
        }
    };
    let accept_all = async {
        loop {
            match listener.accept().await {
                Ok((sock, peer)) => start(sock, peer),
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    };
    if !stop.stopping() && !stop.handing_off() {
        let (mut retire, mut shutdown) = (stop.retire.clone(), stop.shutdown.clone());
        let mut handoff = stop.handoff.clone();
        tokio::select! {
            biased;
            _ = retire.wait_for(|v| *v) => {}
            _ = shutdown.wait_for(|v| *v) => {}
            _ = handoff.wait_for(|v| *v) => {}
            _ = accept_all => {}
            _ = crash_requested(&worker) => panic!("injected panic at Worker"),
        }
    } else {
        drop(accept_all);
    }
    // Connections the kernel already queued on this socket would be reset when it
    // closes (a reload that moves or shrinks the listeners): take them and answer their
    // request (with `Connection: close`). Bounded: a socket shared with the workers
    // that replace these (same address) keeps receiving, and they take the rest.
    // Not at an upgrade: the socket stays open and the next drove takes them.
    for _ in 0..DRAIN_ON_CLOSE {
        if stop.handing_off() {
            break;
        }
        match listener.try_accept() {
            Ok(Some((sock, peer))) => start(sock, peer),
            _ => break,
        }
    }
    drop(listener);
    original.borrow_mut().take();
    // Graceful: each connection finishes its in-flight request, then closes; once drove
    // shuts down, within the grace.
    let wait = async {
        while worker.open.get() > 0 {
            worker.all_closed.notified().await;
        }
    };
    let mut shutdown = stop.shutdown.clone();
    let deadline = async {
        let _ = shutdown.wait_for(|v| *v).await;
        tokio::time::sleep(worker.snapshot().settings.shutdown_grace).await;
    };
    tokio::select! {
        _ = wait => {}
        _ = deadline => {}
    }
    Ok(())
}
