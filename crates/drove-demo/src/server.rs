//! Accept loop, per-connection HTTP/1 serving and graceful shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

use crate::app::{self, State};
use crate::DemoOptions;

/// How long a connection may sit without sending a complete request head, idle
/// keep-alive included. Longer than the balancer's default upstream idle timeout (90 s)
/// so that the balancer, not the demo, closes idle pooled connections: the side that
/// closes first is the one that can race a request in flight.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(120);

/// After the grace period, connections still open are dropped; this bounds how long
/// `run` then waits for their tasks to notice.
const HARD_STOP_WAIT: Duration = Duration::from_secs(1);

/// Pause after an accept error that is not about one connection (e.g. out of file
/// descriptors), so the loop does not spin while the condition lasts.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// What every connection and WebSocket task holds: the two shutdown phases, and a guard
/// whose drop tells [`run`] the task has ended.
#[derive(Clone)]
pub(crate) struct Shutdown {
    graceful: watch::Receiver<bool>,
    hard: watch::Receiver<bool>,
    _alive: mpsc::Sender<()>,
}

impl Shutdown {
    /// Resolves once shutdown has started (stop taking new requests).
    pub(crate) async fn graceful(&self) {
        // An error means the sender is gone, which only happens once `run` has returned.
        let _ = self.graceful.clone().wait_for(|started| *started).await;
    }

    /// Resolves once the grace period is over (drop whatever is left).
    pub(crate) async fn hard(&self) {
        let _ = self.hard.clone().wait_for(|expired| *expired).await;
    }
}

/// Serves the demo app on `listener` until `shutdown` resolves.
///
/// Then it stops accepting, lets in-flight requests finish, closes idle keep-alive
/// connections at once and WebSockets with a 1001 close frame, and returns when every
/// connection is done or `opts.shutdown_grace` has passed (remaining ones are dropped).
/// Prints `demo <instance> listening on <addr> (pid <pid>)` on stdout first.
pub async fn run(
    listener: TcpListener,
    opts: DemoOptions,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let addr = listener.local_addr()?;
    let grace = opts.shutdown_grace;
    let state = Arc::new(State::new(opts, addr.port()));
    println!(
        "demo {} listening on {addr} (pid {})",
        state.instance,
        std::process::id()
    );

    let (graceful_tx, graceful_rx) = watch::channel(false);
    let (hard_tx, hard_rx) = watch::channel(false);
    let (alive_tx, mut alive_rx) = mpsc::channel::<()>(1);
    let guard = Shutdown {
        graceful: graceful_rx,
        hard: hard_rx,
        _alive: alive_tx,
    };

    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    tokio::spawn(serve_connection(stream, state.clone(), guard.clone()));
                }
                Err(e) if is_per_connection_error(&e) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "demo: accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                }
            },
        }
    }

    drop(listener);
    state.stopping.store(true, Ordering::Relaxed);
    let _ = graceful_tx.send(true);
    drop(guard);
    // `recv` yields `None` once every task has dropped its `Shutdown`.
    if tokio::time::timeout(grace, alive_rx.recv()).await.is_err() {
        let _ = hard_tx.send(true);
        let _ = tokio::time::timeout(HARD_STOP_WAIT, alive_rx.recv()).await;
    }
    Ok(())
}

/// Errors of `accept` that concern only the connection being accepted.
fn is_per_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// Counts a connection in `State::connections` while it lives.
struct Counted(Arc<State>);

impl Counted {
    fn new(state: Arc<State>) -> Counted {
        state.connections.fetch_add(1, Ordering::Relaxed);
        Counted(state)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn serve_connection(stream: TcpStream, state: Arc<State>, shutdown: Shutdown) {
    let _counted = Counted::new(state.clone());
    let _ = stream.set_nodelay(true);
    let service_shutdown = shutdown.clone();
    let service = service_fn(move |req| {
        let state = state.clone();
        let shutdown = service_shutdown.clone();
        async move { Ok::<_, Infallible>(app::handle(state, shutdown, req).await) }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .keep_alive(true);
    let conn = builder
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(conn);

    // Errors here are the client's (reset, malformed request already answered with 400,
    // header timeout): nothing to do but end the connection.
    tokio::select! {
        _ = conn.as_mut() => return,
        () = shutdown.graceful() => {}
    }
    // Finishes the response in flight, if any, then closes; closes at once if idle.
    conn.as_mut().graceful_shutdown();
    tokio::select! {
        _ = conn.as_mut() => {}
        () = shutdown.hard() => {}
    }
}

/// Entry point of `drove demo`: binds `$HOST:$PORT` (host defaults to 127.0.0.1), reads
/// [`DemoOptions::from_env`], and serves until SIGTERM or SIGINT.
pub async fn main_from_env() -> io::Result<()> {
    let port = match std::env::var("PORT") {
        Ok(text) => text.trim().parse::<u16>().map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("PORT={text:?} is not a port number (expected 0..=65535)"),
            )
        })?,
        Err(_) => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "PORT is not set: the demo app listens on $PORT (e.g. PORT=5001 drove demo)",
            ))
        }
    };
    let host = std::env::var("HOST")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "127.0.0.1".to_owned());
    let listener = TcpListener::bind((host.as_str(), port))
        .await
        .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {host}:{port}: {e}")))?;

    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let stop = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    };
    run(listener, DemoOptions::from_env(), stop).await
}
