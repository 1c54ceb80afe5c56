//! Sockets and input buffers of the data path, tuned for syscalls per request.
//!
//! A [`Sock`] is a non-blocking TCP socket that registers with tokio's reactor (through
//! `AsyncFd`, which unlike `tokio::net::TcpStream` lets drove clear a socket's readiness
//! itself) only the first time it would block. A client connection whose request is
//! already there when it is accepted — every `Connection: close` request from a client
//! that writes right after connecting — is read, answered and closed without ever being
//! added to epoll: no `epoll_ctl` ADD and DEL, no wait for an event that is already
//! known. After a read that did not fill the buffer the socket is known to be drained, so
//! its readiness is cleared and the next read waits for epoll instead of trying a `recv`
//! that can only return EAGAIN — nginx's `rev->ready = 0` rule. That saves one syscall
//! per direction per request. Writes are attempted directly (a socket is nearly always
//! writable) and wait for writability only on EAGAIN.
//!
//! A [`Buf`] is a fixed, zero-initialised byte buffer with a filled window, so reads go
//! straight into it without `unsafe` and without re-zeroing: buffers come from and go
//! back to the worker's free list.

use std::cell::{Cell, OnceCell};
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsRawFd, RawFd};

use tokio::io::unix::AsyncFd;

/// A non-blocking TCP socket, registered with the reactor on first need.
pub(crate) struct Sock {
    /// The reactor registration; declared before `stream` so that it is dropped first
    /// (deregistered while the fd is still open).
    reg: OnceCell<AsyncFd<Fd>>,
    stream: std::net::TcpStream,
    /// Not registered yet, and a read found the socket drained: the next read must wait
    /// for epoll (registering) rather than try a `recv` that would return EAGAIN.
    drained: Cell<bool>,
}

/// The raw fd of a [`Sock`]'s stream, for its registration (the stream owns the fd).
struct Fd(RawFd);

impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

impl Sock {
    /// Takes over a tokio stream (it is deregistered from tokio's own registration and
    /// registered here; used for upstream connections, which are made once and pooled).
    pub(crate) fn new(s: tokio::net::TcpStream) -> io::Result<Sock> {
        let sock = Sock::unregistered(s.into_std()?);
        sock.registration()?;
        Ok(sock)
    }

    /// A duplicate of the socket (the same connection), to hand it over at an upgrade.
    pub(crate) fn dup(&self) -> io::Result<std::net::TcpStream> {
        self.stream.try_clone()
    }

    /// A non-blocking std stream, not registered until it would block.
    pub(crate) fn unregistered(stream: std::net::TcpStream) -> Sock {
        Sock {
            reg: OnceCell::new(),
            stream,
            drained: Cell::new(false),
        }
    }

    /// The reactor registration, made now if there is none yet.
    fn registration(&self) -> io::Result<&AsyncFd<Fd>> {
        if let Some(r) = self.reg.get() {
            return Ok(r);
        }
        let r = register(Fd(self.stream.as_raw_fd()))?;
        Ok(self.reg.get_or_init(|| r))
    }

    /// One `recv` into the spare room of `buf` (which has room); records whether it came
    /// up short, i.e. drained the socket.
    fn recv_into(&self, buf: &mut Buf) -> io::Result<usize> {
        let room = buf.spare().len();
        let n = (&self.stream).read(buf.spare())?;
        buf.end += n;
        self.drained.set(n < room);
        Ok(n)
    }

    /// Reads without waiting: `Ok(None)` when nothing is there (yet). Used right after
    /// accepting, when the request has usually arrived already.
    pub(crate) fn try_read(&self, buf: &mut Buf) -> io::Result<Option<usize>> {
        buf.make_room();
        if self.reg.get().is_some() || self.drained.get() {
            return Ok(None);
        }
        match self.recv_into(buf) {
            Ok(n) => Ok(Some(n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.drained.set(true);
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Reads into the spare room of `buf`; 0 = EOF.
    pub(crate) async fn read(&self, buf: &mut Buf) -> io::Result<usize> {
        if let Some(n) = self.try_read(buf)? {
            return Ok(n);
        }
        let reg = self.registration()?;
        loop {
            let mut guard = reg.readable().await?;
            match guard.try_io(|_| self.recv_into(buf)) {
                Ok(Ok(n)) => {
                    if self.drained.get() {
                        guard.clear_ready();
                    }
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
        let mut guard = self.registration()?.readable().await?;
        let mut buf = make();
        buf.make_room();
        match guard.try_io(|_| self.recv_into(&mut buf)) {
            Ok(Ok(n)) => {
                if self.drained.get() {
                    guard.clear_ready();
                }
                Ok((buf, Some(n)))
            }
            Ok(Err(e)) => Err(e),
            Err(_would_block) => Ok((buf, None)),
        }
    }

    /// Writes all of `data`.
    pub(crate) async fn write_all(&self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            match (&self.stream).write(data) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => data = &data[n..],
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let mut guard = self.registration()?.writable().await?;
                    match guard.try_io(|_| (&self.stream).write(data)) {
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
    /// readiness tokio already has, so a quiet registered connection costs no syscall.
    pub(crate) fn idle_usable(&self) -> bool {
        let mut probe = [0u8; 1];
        let Some(reg) = self.reg.get() else {
            return matches!(self.stream.peek(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock);
        };
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match reg.poll_read_ready(&mut cx) {
            std::task::Poll::Pending => true,
            std::task::Poll::Ready(Err(_)) => false,
            std::task::Poll::Ready(Ok(mut guard)) => {
                match guard.try_io(|_| self.stream.peek(&mut probe)) {
                    Err(_would_block) => true,
                    Ok(_) => false,
                }
            }
        }
    }

    /// Sets TCP_NODELAY: a keep-alive connection's next response must not wait for the
    /// acknowledgement of the previous one (Nagle).
    pub(crate) fn set_nodelay(&self) {
        let _ = self.stream.set_nodelay(true);
    }

    /// Half-closes the write side (the peer sees EOF after what was sent).
    pub(crate) fn shutdown_write(&self) {
        let _ = self.stream.shutdown(Shutdown::Write);
    }

    /// One non-blocking `send`, for best-effort final bytes (a TLS close_notify).
    pub(crate) fn try_write(&self, data: &[u8]) -> io::Result<usize> {
        (&self.stream).write(data)
    }

    /// Poll-based read for protocol engines that drive the socket themselves (HTTP/2):
    /// registers on first use; `Pending` registers the waker.
    pub(crate) fn poll_recv(
        &self,
        cx: &mut std::task::Context<'_>,
        out: &mut [u8],
    ) -> std::task::Poll<io::Result<usize>> {
        let reg = self.registration()?;
        loop {
            let mut guard = std::task::ready!(reg.poll_read_ready(cx))?;
            match guard.try_io(|_| (&self.stream).read(out)) {
                Ok(r) => return std::task::Poll::Ready(r),
                Err(_would_block) => continue,
            }
        }
    }

    /// Poll-based write, the counterpart of [`Sock::poll_recv`].
    pub(crate) fn poll_send(
        &self,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        match (&self.stream).write(data) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            r => return std::task::Poll::Ready(r),
        }
        let reg = self.registration()?;
        loop {
            let mut guard = std::task::ready!(reg.poll_write_ready(cx))?;
            match guard.try_io(|_| (&self.stream).write(data)) {
                Ok(r) => return std::task::Poll::Ready(r),
                Err(_would_block) => continue,
            }
        }
    }

    /// Resolves when the peer has closed the connection (EOF or reset); never while it
    /// stays open, nor once it has sent bytes (a pipelined request, read later: from
    /// then on its close can only be seen by reading). Nothing is consumed (`peek`).
    pub(crate) async fn peer_gone(&self) {
        let Ok(reg) = self.registration() else {
            return std::future::pending().await;
        };
        loop {
            let Ok(mut guard) = reg.readable().await else {
                return std::future::pending().await;
            };
            match self.stream.peek(&mut [0u8; 1]) {
                Ok(0) => return,
                Ok(_) => return std::future::pending().await,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => guard.clear_ready(),
                Err(_) => return,
            }
        }
    }

    /// Waits until the socket is readable (nothing is read).
    pub(crate) async fn wait_readable(&self) -> io::Result<()> {
        if self.reg.get().is_none() && !self.drained.get() {
            return Ok(());
        }
        let _ = self.registration()?.readable().await?;
        Ok(())
    }
}

/// A client connection's byte stream: plain TCP ([`Sock`]) or TLS over it
/// (`tls::TlsSock`). The data path is generic over it, so the plain path is compiled
/// exactly as if TLS did not exist.
pub(crate) trait ClientIo {
    /// Reads without waiting: `Ok(None)` when nothing is there (yet).
    fn try_read(&self, buf: &mut Buf) -> io::Result<Option<usize>>;
    // (The async methods are written as `fn -> impl Future` so that `Sock` can return its
    // own futures unwrapped: an `async fn` wrapper would store its arguments again in
    // every idle connection's task.)
    /// Reads into `buf`; 0 = EOF.
    fn read(&self, buf: &mut Buf) -> impl std::future::Future<Output = io::Result<usize>>;
    /// Waits for input, then takes a buffer from `make` and reads into it (`None`: the
    /// wake-up was spurious).
    fn read_fresh(
        &self,
        make: impl FnOnce() -> Buf,
    ) -> impl std::future::Future<Output = io::Result<(Buf, Option<usize>)>>;
    /// Writes all of `data`.
    fn write_all(&self, data: &[u8]) -> impl std::future::Future<Output = io::Result<()>>;
    /// TCP_NODELAY.
    fn set_nodelay(&self);
    /// Ends the output (EOF for the peer after what was sent).
    fn shutdown_write(&self);
    /// Resolves when the client has closed the connection while drove waits on the
    /// backend (see [`Sock::peer_gone`]).
    fn peer_gone(&self) -> impl std::future::Future<Output = ()>;
    /// Whether the client speaks TLS (`X-Forwarded-Proto: https`).
    fn is_tls(&self) -> bool;
    /// The client chose HTTP/2 during the TLS handshake (ALPN `h2`).
    fn alpn_h2(&self) -> bool;
    /// A duplicate of the plain TCP socket, to hand the connection over to the next drove
    /// (`drove upgrade`); `None` for TLS, whose session lives in this process.
    fn handoff_stream(&self) -> Option<std::net::TcpStream>;
    /// The connection as a byte stream for the HTTP/2 engine; `read` are plaintext bytes
    /// already received (they are served first).
    fn into_h2_io(self, read: Buf) -> crate::http2::H2Io;
}

impl ClientIo for Sock {
    fn handoff_stream(&self) -> Option<std::net::TcpStream> {
        self.stream.try_clone().ok()
    }
    fn try_read(&self, buf: &mut Buf) -> io::Result<Option<usize>> {
        Sock::try_read(self, buf)
    }
    fn read(&self, buf: &mut Buf) -> impl std::future::Future<Output = io::Result<usize>> {
        Sock::read(self, buf)
    }
    fn read_fresh(
        &self,
        make: impl FnOnce() -> Buf,
    ) -> impl std::future::Future<Output = io::Result<(Buf, Option<usize>)>> {
        Sock::read_fresh(self, make)
    }
    fn write_all(&self, data: &[u8]) -> impl std::future::Future<Output = io::Result<()>> {
        Sock::write_all(self, data)
    }
    fn set_nodelay(&self) {
        Sock::set_nodelay(self)
    }
    fn shutdown_write(&self) {
        Sock::shutdown_write(self)
    }
    fn peer_gone(&self) -> impl std::future::Future<Output = ()> {
        Sock::peer_gone(self)
    }
    fn is_tls(&self) -> bool {
        false
    }
    fn alpn_h2(&self) -> bool {
        false
    }
    fn into_h2_io(self, read: Buf) -> crate::http2::H2Io {
        crate::http2::H2Io::new(self, None, read)
    }
}

/// Registers `t` with tokio's reactor. AsyncFd::new is deprecated because a `T: AsRawFd`
/// that does not own its fd could close it while registered; here either the AsyncFd
/// owns the socket (the listener) or the registration is dropped before the socket that
/// owns the fd ([`Sock`]'s field order), so that cannot happen.
fn register<T: std::os::fd::AsRawFd>(t: T) -> io::Result<AsyncFd<T>> {
    #[allow(deprecated)]
    AsyncFd::new(t)
}

/// A listening socket accepting straight into [`Sock`]s: at most one epoll registration
/// per connection, made only if it has to wait (accepting through tokio's listener and converting would register,
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

    /// A connection already waiting in the accept queue, if any (never waits).
    pub(crate) fn try_accept(&self) -> io::Result<Option<(Sock, std::net::SocketAddr)>> {
        match self
            .fd
            .get_ref()
            .accept4(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC)
        {
            Ok((s, peer)) => {
                let peer = peer
                    .as_socket()
                    .unwrap_or_else(|| std::net::SocketAddr::from(([0, 0, 0, 0], 0)));
                Ok(Some((Sock::unregistered(s.into()), peer)))
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
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
                    return Ok((Sock::unregistered(s.into()), peer));
                }
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }
}

/// Copies bytes both ways until both directions reach EOF or either fails: an upgraded
/// connection (WebSocket) between a client and a backend. Returns the bytes copied (to
/// `a`, to `b`), and whether the copy stopped for an upgrade instead (`handoff` turned
/// true: each direction stops before its next read, so no byte is left in a buffer).
pub(crate) async fn tunnel<A: ClientIo>(
    a: &A,
    b: &Sock,
    scratch: (&mut Buf, &mut Buf),
    handoff: Option<tokio::sync::watch::Receiver<bool>>,
) -> (u64, u64, bool) {
    /// How one direction ended.
    #[derive(PartialEq)]
    enum End {
        Eof,
        HandOff,
    }
    async fn one_way(
        from: &impl ClientIo,
        to: &impl ClientIo,
        buf: &mut Buf,
        copied: &std::cell::Cell<u64>,
        mut handoff: Option<tokio::sync::watch::Receiver<bool>>,
    ) -> io::Result<End> {
        loop {
            buf.clear();
            let n = match handoff.as_mut() {
                None => from.read(buf).await?,
                Some(h) => tokio::select! {
                    biased;
                    _ = h.wait_for(|v| *v) => return Ok(End::HandOff),
                    r = from.read(buf) => r?,
                },
            };
            if n == 0 {
                to.shutdown_write();
                return Ok(End::Eof);
            }
            to.write_all(buf.filled()).await?;
            copied.set(copied.get() + n as u64);
        }
    }
    let (ab, ba) = scratch;
    let (to_b, to_a) = (std::cell::Cell::new(0), std::cell::Cell::new(0));
    let r = tokio::try_join!(
        one_way(a, b, ab, &to_b, handoff.clone()),
        one_way(b, a, ba, &to_a, handoff)
    );
    let handed = matches!(r, Ok((x, y)) if x == End::HandOff || y == End::HandOff);
    (to_a.get(), to_b.get(), handed)
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
    /// Makes room, lets `f` write into the spare room, and counts what it wrote.
    pub(crate) fn fill_with(
        &mut self,
        f: impl FnOnce(&mut [u8]) -> io::Result<usize>,
    ) -> io::Result<usize> {
        self.make_room();
        let n = f(self.spare())?;
        self.end += n;
        Ok(n)
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn pair() -> (Sock, std::net::TcpStream) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (server, _) = l.accept().unwrap();
        server.set_nonblocking(true).unwrap();
        (Sock::unregistered(server), client)
    }

    /// A socket is read without registering while bytes are there, and registers (and
    /// then waits for epoll) only once it would block.
    #[tokio::test]
    async fn registers_only_when_a_read_would_block() {
        let (sock, _client) = pair();
        let mut buf = Buf::with_capacity(4096);
        assert_eq!(sock.try_read(&mut buf).unwrap(), None, "nothing sent yet");
        assert!(sock.reg.get().is_none());

        let (sock, mut client2) = pair();
        client2.write_all(b"hello").unwrap();
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(sock.try_read(&mut buf).unwrap(), Some(5));
        assert_eq!(buf.filled(), b"hello");
        assert!(sock.reg.get().is_none(), "data was there: no registration");
        sock.write_all(b"answer").await.unwrap();
        assert!(
            sock.reg.get().is_none(),
            "a write that fits: no registration"
        );

        // Drained: the next read registers and waits for the bytes sent later.
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            client2.write_all(b" world").unwrap();
            client2
        });
        buf.clear();
        let n = tokio::time::timeout(Duration::from_secs(5), sock.read(&mut buf))
            .await
            .expect("the read was woken")
            .unwrap();
        assert_eq!(&buf.filled()[..n], b" world");
        assert!(sock.reg.get().is_some());
        drop(writer.join().unwrap());
    }
}
