//! The byte stream under the HTTP/2 engine: a [`Sock`], plain (h2c) or with the TLS
//! session its handshake negotiated `h2` on, as tokio's `AsyncRead`/`AsyncWrite` (what
//! the `h2` crate drives). rustls is driven by hand here too, poll-based: ciphertext in
//! from the socket, plaintext out of the session; plaintext into the session, records out
//! to the socket. Bytes read before the switch (the client preface) are served first.

use std::io::{self, Read, Write};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use rustls::ServerConnection;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::sock::{Buf, Sock};

/// Ciphertext read at once: one TLS record at most.
const RAW_READ: usize = 16 * 1024 + 512;

/// A client connection handed to the HTTP/2 engine.
pub(crate) struct H2Io {
    sock: Sock,
    tls: Option<Box<ServerConnection>>,
    /// Plaintext received before the switch, served first.
    read: Buf,
}

impl H2Io {
    pub(crate) fn new(sock: Sock, tls: Option<ServerConnection>, read: Buf) -> H2Io {
        H2Io {
            sock,
            tls: tls.map(Box::new),
            read,
        }
    }

    /// Writes the session's pending records; `Pending` while the socket is full.
    fn poll_flush_tls(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some(tls) = &mut self.tls else {
            return Poll::Ready(Ok(()));
        };
        while tls.wants_write() {
            let mut w = SockWriter {
                sock: &self.sock,
                cx,
            };
            match tls.write_tls(&mut w) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Poll::Pending,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// A `Write` over a socket for rustls: `WouldBlock` when the socket is full (the waker
/// is registered).
struct SockWriter<'a, 'b> {
    sock: &'a Sock,
    cx: &'a mut Context<'b>,
}

impl Write for SockWriter<'_, '_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        match self.sock.poll_send(self.cx, data) {
            Poll::Ready(r) => r,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl AsyncRead for H2Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.read.is_empty() {
            let n = this.read.len().min(out.remaining());
            out.put_slice(&this.read.filled()[..n]);
            this.read.consume(n);
            return Poll::Ready(Ok(()));
        }
        if this.tls.is_none() {
            let n = ready!(this.sock.poll_recv(cx, out.initialize_unfilled()))?;
            out.advance(n);
            return Poll::Ready(Ok(()));
        }
        loop {
            let tls = this.tls.as_mut().expect("tls");
            match tls.reader().read(out.initialize_unfilled()) {
                Ok(n) => {
                    out.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // The peer closed without close_notify: EOF all the same.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Poll::Ready(Ok(())),
                Err(e) => return Poll::Ready(Err(e)),
            }
            // Replies the session owes (key updates, alerts) go out first, best effort.
            let _ = this.poll_flush_tls(cx)?;
            let mut raw = [0u8; RAW_READ];
            let n = ready!(this.sock.poll_recv(cx, &mut raw))?;
            let tls = this.tls.as_mut().expect("tls");
            if n == 0 {
                let _ = tls.read_tls(&mut io::empty());
                let _ = tls.process_new_packets();
                continue;
            }
            let mut data = &raw[..n];
            while !data.is_empty() {
                tls.read_tls(&mut data)?;
                if let Err(e) = tls.process_new_packets() {
                    let _ = this.poll_flush_tls(cx);
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
                }
            }
        }
    }
}

impl AsyncWrite for H2Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.tls.is_none() {
            return this.sock.poll_send(cx, data);
        }
        // Earlier records out first, so the session's buffer stays small.
        ready!(this.poll_flush_tls(cx))?;
        let n = this.tls.as_mut().expect("tls").writer().write(data)?;
        // Start sending now; what the socket cannot take waits for poll_flush.
        let _ = this.poll_flush_tls(cx)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_flush_tls(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(tls) = &mut this.tls {
            tls.send_close_notify();
        }
        ready!(this.poll_flush_tls(cx))?;
        this.sock.shutdown_write();
        Poll::Ready(Ok(()))
    }
}
