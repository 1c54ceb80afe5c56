//! The per-worker upstream keep-alive pool: idle HTTP/1.1 connections per backend.
//!
//! One pool per worker thread, so `RefCell` and no lock. A connection is put back only
//! after its response body was read to the end; one that was abandoned mid-message is
//! closed (its driver task aborted).

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::task::AbortHandle;
use tokio::time::Instant;

use crate::body::UpBody;

/// Idle connections kept per backend and worker; beyond this, returned ones are closed.
/// Sized for 256 concurrent client connections on one worker.
const MAX_IDLE_PER_BACKEND: usize = 512;

/// A live upstream connection: the request sender and its driver task.
pub(crate) struct PooledConn {
    pub(crate) key: u64,
    pub(crate) sender: http1::SendRequest<UpBody>,
    task: AbortHandle,
    idle_since: Instant,
}

impl PooledConn {
    /// Closes the connection now.
    pub(crate) fn abort(self) {
        self.task.abort();
    }
}

/// Why a new connection could not be made.
#[derive(Debug)]
#[allow(dead_code)] // the payloads are read through Debug in logs
pub(crate) enum ConnectError {
    Io(std::io::Error),
    Timeout,
    Handshake(hyper::Error),
}

#[derive(Default)]
pub(crate) struct Pool {
    idle: RefCell<HashMap<u64, Vec<PooledConn>>>,
}

impl Pool {
    /// An idle connection to the backend `key`, if one is still usable.
    pub(crate) fn take(&self, key: u64) -> Option<PooledConn> {
        let mut idle = self.idle.borrow_mut();
        let list = idle.get_mut(&key)?;
        // Newest first (LIFO): the warmest connection, least likely closed by the peer.
        while let Some(c) = list.pop() {
            if c.sender.is_ready() {
                return Some(c);
            }
            c.abort();
        }
        None
    }

    pub(crate) fn put(&self, mut conn: PooledConn) {
        if conn.sender.is_closed() {
            conn.abort();
            return;
        }
        conn.idle_since = Instant::now();
        let mut idle = self.idle.borrow_mut();
        let list = idle.entry(conn.key).or_default();
        if list.len() >= MAX_IDLE_PER_BACKEND {
            conn.abort();
            return;
        }
        list.push(conn);
    }

    /// Closes idle connections older than `max_idle` or to backends `keep` rejects
    /// (removed or drained backends: "close idle upstream connections to it").
    pub(crate) fn sweep(&self, max_idle: Duration, keep: impl Fn(u64) -> bool) {
        let now = Instant::now();
        let mut idle = self.idle.borrow_mut();
        idle.retain(|key, list| {
            if !keep(*key) {
                for c in list.drain(..) {
                    c.abort();
                }
                return false;
            }
            list.retain(|c| {
                let fresh = now.duration_since(c.idle_since) < max_idle && !c.sender.is_closed();
                if !fresh {
                    c.task.abort();
                }
                fresh
            });
            !list.is_empty()
        });
    }

    /// Opens a new connection (TCP + HTTP/1.1 handshake) and spawns its driver task on
    /// this worker.
    pub(crate) async fn connect(
        key: u64,
        addr: SocketAddr,
        timeout: Duration,
    ) -> Result<PooledConn, ConnectError> {
        let stream = match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(ConnectError::Io(e)),
            Err(_) => return Err(ConnectError::Timeout),
        };
        let _ = stream.set_nodelay(true);
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(ConnectError::Handshake)?;
        let task = tokio::task::spawn_local(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        })
        .abort_handle();
        Ok(PooledConn {
            key,
            sender,
            task,
            idle_since: Instant::now(),
        })
    }
}

impl PooledConn {
    /// How long it has been idle in the pool.
    pub(crate) fn idle_for(&self) -> Duration {
        self.idle_since.elapsed()
    }
}
