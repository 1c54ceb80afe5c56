//! One worker: a thread with a single-threaded runtime, its own listening socket and its
//! own upstream pool. Connections never migrate between workers, so per-worker state
//! (pool, request-id generator) needs no lock.

use std::cell::Cell;
use std::rc::Rc;

use tokio::sync::watch;

use crate::conn::{self, Worker};
use crate::sock::Listener;
use crate::Proxy;

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
    let open = Rc::new(Cell::new(0usize));
    let all_closed = Rc::new(tokio::sync::Notify::new());

    // The shutdown watch is awaited once around the whole accept loop, not per accept
    // (a fresh `changed()` per connection costs a waiter registration and removal).
    let accept_all = async {
        loop {
            let (sock, peer) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                }
            };
            proxy.stats.connection_opened();
            open.set(open.get() + 1);
            let (worker, open, all_closed, shutdown) = (
                worker.clone(),
                open.clone(),
                all_closed.clone(),
                shutdown.clone(),
            );
            tokio::task::spawn_local(async move {
                conn::serve(worker.clone(), sock, peer, shutdown).await;
                worker.proxy.stats.connection_closed();
                open.set(open.get() - 1);
                if open.get() == 0 {
                    all_closed.notify_waiters();
                }
            });
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
        while open.get() > 0 {
            all_closed.notified().await;
        }
    };
    let _ = tokio::time::timeout(grace, wait).await;
    Ok(())
}
