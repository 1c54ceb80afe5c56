//! The per-worker upstream keep-alive pool: idle TCP connections per backend, owned
//! directly by the request that uses one (no driver task, no channel), and a free list
//! of I/O buffers so neither idle client nor idle upstream connections hold memory.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;

/// Idle connections kept per backend and worker; beyond this, returned ones are closed.
/// Sized for 256 concurrent client connections on one worker.
const MAX_IDLE_PER_BACKEND: usize = 512;

/// An upstream connection idle longer than this is not reused: common app servers close
/// idle keep-alive connections after 5 s (Node.js's default), and reusing one they are
/// closing races into an error that a POST cannot be retried after.
pub(crate) const UPSTREAM_MAX_IDLE: Duration = Duration::from_secs(4);

/// I/O buffer size: a typical head fits many times over; bodies stream through it.
pub(crate) const BUF_SIZE: usize = 16 * 1024;

/// Buffers kept for reuse per worker (beyond: freed).
const MAX_FREE_BUFFERS: usize = 1024;

pub(crate) struct Idle {
    stream: TcpStream,
    since: Instant,
}

#[derive(Default)]
pub(crate) struct Pool {
    idle: RefCell<HashMap<u64, Vec<Idle>>>,
    buffers: RefCell<Vec<Vec<u8>>>,
}

/// Why a new connection could not be made.
#[derive(Debug)]
pub(crate) enum ConnectError {
    Io(#[allow(dead_code)] std::io::Error),
    Timeout,
}

/// Whether an idle connection is still usable: nothing to read (no EOF, no stray bytes).
/// Uses the readiness tokio already has from epoll, so a quiet connection costs no syscall.
fn usable(stream: &TcpStream) -> bool {
    let mut cx = Context::from_waker(std::task::Waker::noop());
    match stream.poll_read_ready(&mut cx) {
        Poll::Pending => true,
        Poll::Ready(Err(_)) => false,
        Poll::Ready(Ok(())) => {
            let mut probe = [0u8; 1];
            matches!(stream.try_read(&mut probe), Err(ref e) if e.kind() == std::io::ErrorKind::WouldBlock)
        }
    }
}

impl Pool {
    /// A usable idle connection to backend `key`, newest first (the warmest).
    pub(crate) fn take(&self, key: u64) -> Option<TcpStream> {
        let mut idle = self.idle.borrow_mut();
        let list = idle.get_mut(&key)?;
        while let Some(c) = list.pop() {
            if c.since.elapsed() < UPSTREAM_MAX_IDLE && usable(&c.stream) {
                return Some(c.stream);
            }
        }
        None
    }

    /// Returns a connection that finished an exchange cleanly.
    pub(crate) fn put(&self, key: u64, stream: TcpStream) {
        let mut idle = self.idle.borrow_mut();
        let list = idle.entry(key).or_default();
        if list.len() < MAX_IDLE_PER_BACKEND {
            list.push(Idle {
                stream,
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
            list.retain(|c| c.since.elapsed() < UPSTREAM_MAX_IDLE && usable(&c.stream));
            !list.is_empty()
        });
    }

    /// A new connection to `addr`.
    pub(crate) async fn connect(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, ConnectError> {
        match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                Ok(s)
            }
            Ok(Err(e)) => Err(ConnectError::Io(e)),
            Err(_) => Err(ConnectError::Timeout),
        }
    }

    /// An empty buffer with room for [`BUF_SIZE`] bytes.
    pub(crate) fn buffer(&self) -> Vec<u8> {
        self.buffers.borrow_mut().pop().unwrap_or_else(|| Vec::with_capacity(BUF_SIZE))
    }

    /// Gives a buffer back for reuse.
    pub(crate) fn recycle(&self, mut buf: Vec<u8>) {
        if buf.capacity() == 0 {
            return;
        }
        buf.clear();
        // Buffers grown for a large head are not kept: memory stays bounded.
        if buf.capacity() <= 4 * BUF_SIZE {
            let mut free = self.buffers.borrow_mut();
            if free.len() < MAX_FREE_BUFFERS {
                free.push(buf);
            }
        }
    }
}
