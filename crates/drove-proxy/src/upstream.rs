//! The per-worker upstream keep-alive pool: idle TCP connections per backend, owned
//! directly by the request that uses one (no driver task, no channel), and the connect
//! that makes new ones.

use rustc_hash::FxHashMap;
use std::cell::RefCell;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::Instant;

use crate::sock::Sock;

/// Idle connections kept per backend and worker; beyond this, returned ones are closed.
/// Sized for 256 concurrent client connections on one worker.
const MAX_IDLE_PER_BACKEND: usize = 512;

/// An upstream connection idle longer than this is not reused: common app servers close
/// idle keep-alive connections after 5 s (Node.js's default), and reusing one they are
/// closing races into an error that a POST cannot be retried after.
pub(crate) const UPSTREAM_MAX_IDLE: Duration = Duration::from_secs(4);

pub(crate) struct Idle {
    sock: Sock,
    since: Instant,
}

#[derive(Default)]
pub(crate) struct Pool {
    idle: RefCell<FxHashMap<u64, Vec<Idle>>>,
}

/// Why a new connection could not be made.
#[derive(Debug)]
pub(crate) enum ConnectError {
    Io(std::io::Error),
    Timeout,
}

impl ConnectError {
    /// As an I/O error (a timeout is `TimedOut`), for the error a client's 503 records.
    pub(crate) fn into_io(self) -> std::io::Error {
        match self {
            ConnectError::Io(e) => e,
            ConnectError::Timeout => std::io::ErrorKind::TimedOut.into(),
        }
    }
}

impl Pool {
    /// A usable idle connection to backend `key`, newest first (the warmest), at `now`.
    pub(crate) fn take(&self, key: u64, now: Instant) -> Option<Sock> {
        let mut idle = self.idle.borrow_mut();
        let list = idle.get_mut(&key)?;
        while let Some(c) = list.pop() {
            if now.saturating_duration_since(c.since) < UPSTREAM_MAX_IDLE && c.sock.idle_usable() {
                return Some(c.sock);
            }
        }
        None
    }

    /// Returns a connection that finished an exchange cleanly.
    pub(crate) fn put(&self, key: u64, sock: Sock) {
        let mut idle = self.idle.borrow_mut();
        let list = idle.entry(key).or_default();
        if list.len() < MAX_IDLE_PER_BACKEND {
            list.push(Idle {
                sock,
                since: Instant::now(),
            });
        }
    }

    /// Closes idle connections that are too old or whose backend `keep` rejects (removed
    /// or drained backends: "close idle upstream connections to it").
    pub(crate) fn sweep(&self, keep: impl Fn(u64) -> bool) {
        let mut idle = self.idle.borrow_mut();
        idle.retain(|key, list| {
            if !keep(*key) {
                return false;
            }
            list.retain(|c| c.since.elapsed() < UPSTREAM_MAX_IDLE && c.sock.idle_usable());
            !list.is_empty()
        });
    }

    /// A new connection to `addr`.
    pub(crate) async fn connect(addr: SocketAddr, timeout: Duration) -> Result<Sock, ConnectError> {
        match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                Sock::new(s).map_err(ConnectError::Io)
            }
            Ok(Err(e)) => Err(ConnectError::Io(e)),
            Err(_) => Err(ConnectError::Timeout),
        }
    }
}
