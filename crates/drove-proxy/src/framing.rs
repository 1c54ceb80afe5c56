//! Detects the one smuggling shape that hyper normalises silently: a request head with
//! both `Content-Length` and `Transfer-Encoding`. hyper (per RFC 9112 §6.3) drops the
//! Content-Length, treats the body as chunked and closes the connection after; drove
//! instead rejects such a request with 400 before any backend sees it, as nginx and
//! HAProxy do in their strict modes.
//!
//! [`ScanStream`] wraps a client socket and watches the lines it reads: when a header
//! block (lines up to a blank line) had both a `content-length:` and a
//! `transfer-encoding:` line, it sets the connection's `conflicting_framing` flag. The
//! forwarder rejects a Transfer-Encoding request on a flagged connection. The flag is
//! sticky (an `Arc<AtomicBool>` only because hyper's upgrade path wants `Send` I/O), which is exact because hyper closes such a connection after that request; a
//! body that itself contains both lines could only flag later chunked requests on the
//! same connection, a false positive accepted for a scan that costs one `memchr` per line.

use std::io;
use std::pin::Pin;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::Duration;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// The longest line prefix kept to recognise a header name.
const PREFIX: usize = 20;

/// The line watcher, kept apart from the socket so it can be tested alone.
#[derive(Default)]
pub(crate) struct LineScanner {
    prefix: [u8; PREFIX],
    len: usize,
    saw_cl: bool,
    saw_te: bool,
    conflicting: bool,
}

impl LineScanner {
    pub(crate) fn scan(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            match bytes.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    self.take(&bytes[..i]);
                    self.end_line();
                    bytes = &bytes[i + 1..];
                }
                None => {
                    self.take(bytes);
                    return;
                }
            }
        }
    }

    fn take(&mut self, part: &[u8]) {
        let n = (PREFIX - self.len).min(part.len());
        self.prefix[self.len..self.len + n].copy_from_slice(&part[..n]);
        self.len += n;
    }

    fn end_line(&mut self) {
        let line = &self.prefix[..self.len];
        if line.is_empty() || line == b"\r" {
            self.conflicting |= self.saw_cl && self.saw_te;
            self.saw_cl = false;
            self.saw_te = false;
        } else if starts_with_ignore_case(line, b"content-length:") {
            self.saw_cl = true;
        } else if starts_with_ignore_case(line, b"transfer-encoding:") {
            self.saw_te = true;
        }
        self.len = 0;
    }
}

fn starts_with_ignore_case(s: &[u8], p: &[u8]) -> bool {
    s.len() >= p.len() && s[..p.len()].eq_ignore_ascii_case(p)
}

/// What a client connection is doing, shared by its socket wrapper (which enforces the
/// header and idle timeouts) and the forwarder (which knows when a request starts and
/// its response ends).
#[derive(Debug, Default)]
pub(crate) struct ConnState {
    /// A head with conflicting framing was read on this connection.
    pub(crate) conflicting: AtomicBool,
    phase: AtomicU8,
}

/// Waiting for the first byte of the next request head: the idle timeout runs.
const IDLE: u8 = 0;
/// Part of a head has arrived: the header timeout (slowloris) runs.
const HEAD: u8 = 1;
/// A request is being served: only the upstream timeouts apply.
const BUSY: u8 = 2;
/// The connection was upgraded to a tunnel: no timeout (the peers keep it alive).
const TUNNEL: u8 = 3;

impl ConnState {
    /// The forwarder got a request head.
    pub(crate) fn request_started(&self) {
        self.phase.store(BUSY, Ordering::Relaxed);
    }
    /// The response was written (its body ended or was dropped).
    pub(crate) fn response_finished(&self) {
        let _ = self.phase.compare_exchange(BUSY, IDLE, Ordering::Relaxed, Ordering::Relaxed);
    }
    /// The connection became a tunnel.
    pub(crate) fn tunnelled(&self) {
        self.phase.store(TUNNEL, Ordering::Relaxed);
    }
}

/// A client socket whose reads pass through a [`LineScanner`] and that enforces the
/// header-read and idle timeouts: a read that waits past the deadline of the current
/// phase fails with `TimedOut`, and hyper closes the connection. (hyper's own
/// `header_read_timeout` also starts while a keep-alive connection is idle, so it cannot
/// tell a slow head from an idle client; this can.)
pub(crate) struct ScanStream {
    inner: TcpStream,
    scanner: LineScanner,
    pub(crate) state: Arc<ConnState>,
    timer: Pin<Box<tokio::time::Sleep>>,
    /// The phase the timer is armed for (u8::MAX: none yet).
    armed: u8,
    header_timeout: Duration,
    idle_timeout: Duration,
}

impl ScanStream {
    pub(crate) fn new(inner: TcpStream, header_timeout: Duration, idle_timeout: Duration) -> ScanStream {
        ScanStream {
            inner,
            scanner: LineScanner::default(),
            state: Arc::new(ConnState::default()),
            timer: Box::pin(tokio::time::sleep(idle_timeout)),
            armed: IDLE,
            header_timeout,
            idle_timeout,
        }
    }

    fn arm(&mut self, phase: u8) {
        let after = if phase == HEAD { self.header_timeout } else { self.idle_timeout };
        self.timer.as_mut().reset(tokio::time::Instant::now() + after);
        self.armed = phase;
    }
}

impl AsyncRead for ScanStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let new = &buf.filled()[before..];
                if !new.is_empty() {
                    if this.state.phase.load(Ordering::Relaxed) == IDLE {
                        this.state.phase.store(HEAD, Ordering::Relaxed);
                        this.arm(HEAD);
                    }
                    this.scanner.scan(new);
                    if this.scanner.conflicting {
                        this.state.conflicting.store(true, Ordering::Relaxed);
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                let phase = this.state.phase.load(Ordering::Relaxed);
                if phase == BUSY || phase == TUNNEL {
                    return Poll::Pending;
                }
                if this.armed != phase {
                    this.arm(phase);
                }
                match this.timer.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        let what = if phase == HEAD { "request head not received in time" } else { "idle keep-alive connection" };
                        Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, what)))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
            other => other,
        }
    }
}

impl AsyncWrite for ScanStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_all(chunks: &[&[u8]]) -> bool {
        let mut s = LineScanner::default();
        for c in chunks {
            s.scan(c);
        }
        s.conflicting
    }

    #[test]
    fn flags_both_headers_in_one_head_across_reads() {
        assert!(scan_all(&[b"POST / HTTP/1.1\r\nContent-Le", b"ngth: 4\r\nTransfer-Encoding: chunked\r\n\r\n"]));
        assert!(scan_all(&[b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\ncontent-length: 4\r\n\r\n"]));
        assert!(!scan_all(&[b"POST / HTTP/1.1\r\nContent-Length: 4\r\n\r\nabcd"]));
        assert!(!scan_all(&[
            b"POST / HTTP/1.1\r\nContent-Length: 4\r\n\r\nPOST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        ]));
    }
}
