//! One worker: a thread with a single-threaded runtime, its own listening socket and its
//! own upstream pool. Connections never migrate between workers, so per-worker state
//! (pool, request-id generator) needs no lock.

use tokio::sync::watch;

use crate::conn::{self, Worker};
use crate::sock::Listener;
use crate::tls::TlsSock;
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
