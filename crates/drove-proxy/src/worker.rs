//! One worker: a thread with a single-threaded runtime, its own listening socket and its
//! own upstream pool. Connections never migrate between workers, so per-worker state
//! (pool, request-id generator) needs no lock.

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::forward::Forwarder;
use crate::Proxy;

pub(crate) fn run(
    listener: std::net::TcpListener,
    proxy: Proxy,
    shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, accept_loop(listener, proxy, shutdown))
}

async fn accept_loop(
    listener: std::net::TcpListener,
    proxy: Proxy,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let listener = TcpListener::from_std(listener)?;
    let local_addr = listener.local_addr()?;
    let forwarder = Rc::new(Forwarder::new(proxy.clone(), local_addr));
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        // A backstop only: ScanStream enforces the header and idle timeouts precisely.
        .header_read_timeout(Some(proxy.settings.header_timeout.max(proxy.settings.idle_timeout) * 2))
        .max_buf_size(proxy.settings.max_header_size.max(8192))
        .keep_alive(true);
    let builder = Rc::new(builder);
    let open = Rc::new(Cell::new(0usize));
    let all_closed = Rc::new(tokio::sync::Notify::new());

    loop {
        if *shutdown.borrow() {
            break;
        }
        let (stream, peer) = tokio::select! {
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
        let _ = stream.set_nodelay(true);
        proxy.stats.connection_opened();
        open.set(open.get() + 1);
        let conn = Connection {
            forwarder: forwarder.clone(),
            builder: builder.clone(),
            shutdown: shutdown.clone(),
            open: open.clone(),
            all_closed: all_closed.clone(),
            proxy: proxy.clone(),
        };
        tokio::task::spawn_local(conn.serve(stream, peer));
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

struct Connection {
    forwarder: Rc<Forwarder>,
    builder: Rc<http1::Builder>,
    shutdown: watch::Receiver<bool>,
    open: Rc<Cell<usize>>,
    all_closed: Rc<tokio::sync::Notify>,
    proxy: Proxy,
}

impl Connection {
    async fn serve(mut self, stream: tokio::net::TcpStream, peer: SocketAddr) {
        let settings = &self.proxy.settings;
        let stream = crate::framing::ScanStream::new(stream, settings.header_timeout, settings.idle_timeout);
        let peer_info = Rc::new(crate::forward::Peer::new(peer, settings, stream.state.clone()));
        let fwd = self.forwarder.clone();
        let service = hyper::service::service_fn(move |req| {
            let fwd = fwd.clone();
            let peer = peer_info.clone();
            async move {
                peer.conn.request_started();
                let resp = fwd.handle(req, &peer).await;
                let conn = peer.conn.clone();
                Ok::<_, std::convert::Infallible>(resp.map(|body| ClientBody { body, conn }))
            }
        });
        let conn = self
            .builder
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        tokio::pin!(conn);
        let shutting_down = *self.shutdown.borrow();
        if shutting_down {
            conn.as_mut().graceful_shutdown();
        }
        tokio::select! {
            r = conn.as_mut() => { log_conn_error(r); }
            _ = self.shutdown.changed() => {
                conn.as_mut().graceful_shutdown();
                log_conn_error(conn.await);
            }
        }
        self.proxy.stats.connection_closed();
        self.open.set(self.open.get() - 1);
        if self.open.get() == 0 {
            self.all_closed.notify_waiters();
        }
    }
}

/// The response body as hyper sees it: when it is dropped (written, or abandoned), the
/// connection goes back to waiting for the next request, and its idle timeout runs.
struct ClientBody {
    body: crate::body::ProxyBody,
    conn: std::sync::Arc<crate::framing::ConnState>,
}

impl Drop for ClientBody {
    fn drop(&mut self) {
        self.conn.response_finished();
    }
}

impl http_body::Body for ClientBody {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, hyper::Error>>> {
        std::pin::Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }
    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }
    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

fn log_conn_error(r: Result<(), hyper::Error>) {
    if let Err(e) = r {
        // Parse errors were already answered with 400/431 by hyper; these are client-side
        // resets and timeouts: not the proxy's problem, only worth a debug line.
        tracing::debug!(error = %e, "client connection ended with an error");
    }
}
