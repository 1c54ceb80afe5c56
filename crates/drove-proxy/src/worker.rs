//! One worker: a thread with a single-threaded runtime, its own listening socket and its
//! own upstream pool and buffers. Connections never migrate between workers, so
//! per-worker state ([`Worker`]: pool, buffers, request-id generator) needs no lock.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use drove_balancer::Backend;
use tokio::sync::watch;

use crate::buffers::Buffers;
use crate::conn;
use crate::sock::Listener;
use crate::tls::TlsSock;
use crate::upstream::Pool;
use crate::Proxy;

/// How often idle upstream connections are checked: closed when too old, or when their
/// backend left rotation (removed, drained, unhealthy).
const SWEEP_INTERVAL: Duration = Duration::from_millis(500);

/// Per-worker state shared by its connections.
pub(crate) struct Worker {
    pub(crate) proxy: Proxy,
    /// Idle keep-alive connections to backends.
    pub(crate) pool: Pool,
    /// Free I/O buffers.
    pub(crate) buffers: Buffers,
    /// `X-Drove-Instance: web.2\r\n` lines per backend key: no formatting per response.
    instance_lines: RefCell<HashMap<u64, Rc<[u8]>>>,
    /// Request-id generator state (xorshift; per worker, so no lock).
    rid: Cell<u64>,
    /// Client connections open on this worker, and a wake-up when that reaches 0
    /// (graceful shutdown waits for it).
    open: Cell<usize>,
    all_closed: tokio::sync::Notify,
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
        let w = Rc::new(Worker {
            proxy,
            pool: Pool::default(),
            buffers: Buffers::default(),
            instance_lines: RefCell::new(HashMap::new()),
            rid: Cell::new(seed | 1),
            open: Cell::new(0),
            all_closed: tokio::sync::Notify::new(),
        });
        let weak = Rc::downgrade(&w);
        tokio::task::spawn_local(async move {
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
        });
        w
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
    pub(crate) fn instance_line(&self, b: &Backend) -> Option<Rc<[u8]>> {
        let name = self.proxy.settings.instance_header.as_ref()?;
        let mut m = self.instance_lines.borrow_mut();
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

/// Runs a worker on the calling thread until `shutdown`, then drains its connections.
pub(crate) fn run(
    listener: std::net::TcpListener,
    proxy: Proxy,
    shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, accept_loop(listener, proxy, shutdown))
}

async fn accept_loop(
    listener: std::net::TcpListener,
    proxy: Proxy,
    shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let listener = Listener::new(listener)?;
    let worker = Worker::new(proxy.clone());

    // The shutdown watch is awaited once around the whole accept loop, not per accept
    // (a fresh `changed()` per connection costs a waiter registration and removal).
    let accept_all = async {
        loop {
            let (sock, peer) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            // The task is the serve future itself (no wrapping block that would hold
            // a second copy of what it captured).
            match &proxy.settings.tls {
                None => {
                    let client = conn::Client::new(&worker, sock, peer);
                    tokio::task::spawn_local(conn::serve(worker.clone(), client, shutdown.clone()));
                }
                Some(config) => match TlsSock::new(sock, config.clone()) {
                    Ok(tls) => {
                        let client = conn::Client::new(&worker, tls, peer);
                        tokio::task::spawn_local(conn::serve(
                            worker.clone(),
                            client,
                            shutdown.clone(),
                        ));
                    }
                    Err(e) => tracing::warn!(error = %e, "TLS session setup failed"),
                },
            }
        }
    };
    if !*shutdown.borrow() {
        let mut stop = shutdown.clone();
        tokio::select! {
            biased;
            _ = stop.changed() => {}
            _ = accept_all => {}
        }
    } else {
        drop(accept_all);
    }
    drop(listener);
    // Graceful: each connection finishes its in-flight request, then closes.
    let grace = proxy.settings.shutdown_grace;
    let wait = async {
        while worker.open.get() > 0 {
            worker.all_closed.notified().await;
        }
    };
    let _ = tokio::time::timeout(grace, wait).await;
    Ok(())
}
