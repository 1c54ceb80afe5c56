//! Handing client connections over to the next drove during `drove upgrade`.
//!
//! An upgrade replaces drove's program in place (`execve`, same PID); whatever lives only
//! in this process's memory is lost with it. So before the exchange, every worker stops
//! accepting (the listening sockets stay open in the kernel: connections queue there for
//! the next drove, none is refused) and each connection gives its socket up at a point
//! where no byte of it is held in drove's buffers:
//! - a plain HTTP/1.1 connection between two requests (a request in flight finishes
//!   first, keeping its keep-alive: the client never sees the change);
//! - a WebSocket (or other upgraded) tunnel when both directions wait for input;
//! - TLS and HTTP/2 connections cannot be resumed elsewhere (their session state is in
//!   memory): HTTP/2 gets GOAWAY and its streams finish, an idle TLS connection closes.
//!
//! The sockets handed over are duplicates of the connections' descriptors; the runtime
//! keeps them open across `execve` and the next drove serves them with [`crate::Proxy::adopt`].

use std::net::TcpStream;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::watch;

/// A connection given up by a worker, to be served by the next drove.
#[derive(Debug)]
pub enum HandedConnection {
    /// A plain HTTP/1.x client connection, between requests.
    Http1(TcpStream),
    /// An upgraded connection (WebSocket): the client's socket, the backend's, and the
    /// backend's id (it keeps counting as in flight there).
    Tunnel {
        client: TcpStream,
        upstream: TcpStream,
        backend: String,
    },
}

/// The proxy-wide state of a hand-over.
#[derive(Debug)]
pub(crate) struct HandoffState {
    /// True while workers give their connections up.
    pub(crate) requested: watch::Sender<bool>,
    /// What they gave up.
    pub(crate) handed: Mutex<Vec<HandedConnection>>,
    /// Connections handed over by the previous drove, waiting for a worker to serve them.
    pub(crate) adopted: Mutex<Vec<HandedConnection>>,
}

impl Default for HandoffState {
    fn default() -> Self {
        HandoffState {
            requested: watch::channel(false).0,
            handed: Mutex::new(Vec::new()),
            adopted: Mutex::new(Vec::new()),
        }
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl HandoffState {
    pub(crate) fn give(&self, c: HandedConnection) {
        lock(&self.handed).push(c);
    }
}

/// What [`crate::Proxy::hand_off`] collected.
#[derive(Debug, Default)]
pub struct HandedOff {
    /// The connections to serve in the next drove.
    pub connections: Vec<HandedConnection>,
    /// Connections still busy when the wait ended (closed by the upgrade).
    pub still_open: i64,
    /// How long the hand-over took.
    pub took: Duration,
}

/// A listening socket kept open across `execve` by the drove before this one (or
/// passed by systemd's socket activation).
#[allow(unsafe_code)]
pub fn listener_from_fd(fd: i32) -> std::io::Result<std::net::TcpListener> {
    use std::os::fd::FromRawFd;
    check_socket(fd)?;
    // SAFETY: `fd` was listed in the hand-over by the drove before this one, which kept
    // it open across `execve` for exactly this purpose; it is checked to be an open
    // socket above, and nothing else in this process knows the number: this is its only
    // owner.
    let inherited = unsafe { std::net::TcpListener::from_raw_fd(fd) };
    // Inherited without close-on-exec: a duplicate that has it (and the inherited
    // number closed), so that no instance started later inherits the socket.
    let l = inherited.try_clone()?;
    drop(inherited);
    l.set_nonblocking(true)?;
    Ok(l)
}

/// A connected socket kept open across `execve` by the drove before this one.
#[allow(unsafe_code)]
pub fn stream_from_fd(fd: i32) -> std::io::Result<TcpStream> {
    use std::os::fd::FromRawFd;
    check_socket(fd)?;
    // SAFETY: as in `listener_from_fd`.
    let inherited = unsafe { TcpStream::from_raw_fd(fd) };
    // With close-on-exec again (see `listener_from_fd`).
    inherited.try_clone()
}

/// Refuses a number that is not an open socket (a corrupt hand-over must not make
/// drove own, and later close, some other descriptor by mistake).
fn check_socket(fd: i32) -> std::io::Result<()> {
    let kind = std::fs::read_link(format!("/proc/self/fd/{fd}"))?;
    if kind.to_string_lossy().starts_with("socket:") {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "descriptor {fd} is not a socket ({})",
            kind.display()
        )))
    }
}
