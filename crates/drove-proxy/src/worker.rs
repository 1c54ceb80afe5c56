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
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let listener = Listener::new(listener)?;
    let worker = Worker::new(proxy.clone());
    let open = Rc::new(Cell::new(0usize));
    let all_closed = Rc::new(tokio::sync::Notify::new());

    loop {
        if *shutdown.borrow() {
            break;
        }
        let (sock, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
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
