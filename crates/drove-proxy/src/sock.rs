//! Sockets and input buffers of the data path, tuned for syscalls per request.
//!
//! A [`Sock`] is a non-blocking TCP socket registered with tokio's reactor through
//! `AsyncFd`, which (unlike `tokio::net::TcpStream`) lets drove clear a socket's
//! readiness itself. After a read that did not fill the buffer the socket is known to be
//! drained, so its readiness is cleared and the next read waits for epoll instead of
//! trying a `recv` that can only return EAGAIN — nginx's `rev->ready = 0` rule. That
//! saves one syscall per direction per request. Writes are attempted directly (a socket
//! is nearly always writable) and wait for writability only on EAGAIN.
//!
//! A [`Buf`] is a fixed, zero-initialised byte buffer with a filled window, so reads go
//! straight into it without `unsafe` and without re-zeroing: buffers come from and go
//! back to the worker's free list.

use std::io::{self, Read, Write};
use std::net::Shutdown;

use tokio::io::unix::AsyncFd;

/// A registered non-blocking TCP socket.
pub(crate) struct Sock {
    fd: AsyncFd<std::net::TcpStream>,
}

impl Sock {
    /// Takes over a tokio stream (it is deregistered from tokio's own registration and
    /// registered here; used for upstream connections, which are made once and pooled).
    pub(crate) fn new(s: tokio::net::TcpStream) -> io::Result<Sock> {
        Sock::from_std(s.into_std()?)
    }

    /// Registers a non-blocking std stream.
    pub(crate) fn from_std(s: std::net::TcpStream) -> io::Result<Sock> {
        Ok(Sock { fd: register(s)? })
    }

    /// Reads into the spare room of `buf`; 0 = EOF.
    pub(crate) async fn read(&self, buf: &mut Buf) -> io::Result<usize> {
        buf.make_room();
        loop {
            let mut guard = self.fd.readable().await?;
            let room = buf.spare().len();
            match guard.try_io(|s| (&mut s.get_ref()).read(buf.spare())) {
                Ok(Ok(n)) => {
                    if n < room {
                        // Short read: the socket is drained; wait for the next epoll edge.
                        guard.clear_ready();
                    }
                    buf.end += n;
                    return Ok(n);
                }
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }

    /// Waits until the socket is readable, then takes a buffer from `make` and reads into
    /// it: an idle connection holds no buffer while it waits. `None` when the readiness
    /// was stale (nothing to read; the buffer is handed back unused).
    pub(crate) async fn read_fresh(
        &self,
        make: impl FnOnce() -> Buf,
    ) -> io::Result<(Buf, Option<usize>)> {
        let mut guard = self.fd.readable().await?;
        let mut buf = make();
        buf.make_room();
        let room = buf.spare().len();
        match guard.try_io(|s| (&mut s.get_ref()).read(buf.spare())) {
            Ok(Ok(n)) => {
                if n < room {
                    guard.clear_ready();
                }
                buf.end += n;
                Ok((buf, Some(n)))
            }
            Ok(Err(e)) => Err(e),
            Err(_would_block) => Ok((buf, None)),
        }
    }

    /// Writes all of `data`.
    pub(crate) async fn write_all(&self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            match (&mut self.fd.get_ref()).write(data) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => data = &data[n..],
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let mut guard = self.fd.writable().await?;
                    match guard.try_io(|s| (&mut s.get_ref()).write(data)) {
                        Ok(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                        Ok(Ok(n)) => data = &data[n..],
                        Ok(Err(e)) => return Err(e),
                        Err(_would_block) => continue,
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Whether an idle connection is still usable: no EOF and no stray bytes. Uses the
    /// readiness tokio already has, so a quiet connection costs no syscall.
    pub(crate) fn idle_usable(&self) -> bool {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match self.fd.poll_read_ready(&mut cx) {
            std::task::Poll::Pending => true,
            std::task::Poll::Ready(Err(_)) => false,
            std::task::Poll::Ready(Ok(mut guard)) => {
                let mut probe = [0u8; 1];
                match guard.try_io(|s| s.get_ref().peek(&mut probe)) {
                    Err(_would_block) => true,
                    Ok(_) => false,
                }
            }
        }
    }

    /// Sets TCP_NODELAY: a keep-alive connection's next response must not wait for the
    /// acknowledgement of the previous one (Nagle).
    pub(crate) fn set_nodelay(&self) {
        let _ = self.fd.get_ref().set_nodelay(true);
    }

    /// Half-closes the write side (the peer sees EOF after what was sent).
    pub(crate) fn shutdown_write(&self) {
        let _ = self.fd.get_ref().shutdown(Shutdown::Write);
    }
}

/// Registers `t` with tokio's reactor. AsyncFd::new is deprecated because a `T: AsRawFd`
/// that does not own its fd could close it while registered; the std socket types own
/// their fd, and the AsyncFd owns the socket, so that cannot happen here.
fn register<T: std::os::fd::AsRawFd>(t: T) -> io::Result<AsyncFd<T>> {
    #[allow(deprecated)]
    AsyncFd::new(t)
}

/// A listening socket accepting straight into [`Sock`]s: one epoll registration per
/// connection (accepting through tokio's listener and converting would register,
/// deregister and register again).
pub(crate) struct Listener {
    fd: AsyncFd<socket2::Socket>,
}

impl Listener {
    /// Wraps a bound, listening, non-blocking socket.
    pub(crate) fn new(l: std::net::TcpListener) -> io::Result<Listener> {
        l.set_nonblocking(true)?;
        Ok(Listener {
            fd: register(socket2::Socket::from(l))?,
        })
    }

    /// The next connection, already non-blocking (`accept4` with `SOCK_NONBLOCK`: no
    /// extra syscall). TCP_NODELAY is left to the connection: it matters only once the
    /// connection is reused (see [`Sock::set_nodelay`]), as nginx does it.
    pub(crate) async fn accept(&self) -> io::Result<(Sock, std::net::SocketAddr)> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|l| {
                l.get_ref()
                    .accept4(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC)
            }) {
                Ok(Ok((s, peer))) => {
                    let peer = peer
                        .as_socket()
                        .unwrap_or_else(|| std::net::SocketAddr::from(([0, 0, 0, 0], 0)));
                    return Ok((Sock::from_std(s.into())?, peer));
                }
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }
}

/// Copies bytes both ways until both directions reach EOF or either fails: an upgraded
/// connection (WebSocket) between a client and a backend.
pub(crate) async fn tunnel(a: &Sock, b: &Sock, scratch: (&mut Buf, &mut Buf)) {
    async fn one_way(from: &Sock, to: &Sock, buf: &mut Buf) -> io::Result<()> {
        loop {
            buf.clear();
            let n = from.read(buf).await?;
            if n == 0 {
                to.shutdown_write();
                return Ok(());
            }
            to.write_all(buf.filled()).await?;
        }
    }
    let (ab, ba) = scratch;
    let _ = tokio::try_join!(one_way(a, b, ab), one_way(b, a, ba));
}

/// A byte buffer with a filled window `data[start..end]`.
pub(crate) struct Buf {
    data: Box<[u8]>,
    start: usize,
    end: usize,
}

/// Reads ask for at least this much room (a small head still fits in one read).
const MIN_ROOM: usize = 2048;

impl Buf {
    pub(crate) fn with_capacity(n: usize) -> Buf {
        Buf {
            data: vec![0u8; n].into_boxed_slice(),
            start: 0,
            end: 0,
        }
    }
    pub(crate) fn capacity(&self) -> usize {
        self.data.len()
    }
    pub(crate) fn filled(&self) -> &[u8] {
        &self.data[self.start..self.end]
    }
    pub(crate) fn len(&self) -> usize {
        self.end - self.start
    }
    pub(crate) fn is_empty(&self) -> bool {
        self.start == self.end
    }
    pub(crate) fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.end);
        if self.start == self.end {
            self.clear();
        }
    }
    pub(crate) fn clear(&mut self) {
        self.start = 0;
        self.end = 0;
    }
    fn spare(&mut self) -> &mut [u8] {
        &mut self.data[self.end..]
    }
    /// Ensures room to read into: moves the window to the front, or grows (doubling) when
    /// the window itself fills the buffer (a large head).
    pub(crate) fn make_room(&mut self) {
        if self.data.len() - self.end >= MIN_ROOM {
            return;
        }
        if self.start > 0 {
            self.data.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.data.len() - self.end < MIN_ROOM {
            let mut bigger = vec![0u8; (self.data.len() * 2).max(MIN_ROOM * 2)].into_boxed_slice();
            bigger[..self.end].copy_from_slice(&self.data[..self.end]);
            self.data = bigger;
        }
    }
}
