//! Body types of the data path: no boxing, no per-request allocation.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use drove_balancer::InFlight;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::pool::PooledConn;

/// A request body on its way to a backend.
pub(crate) enum UpBody {
    /// The client's body, streamed.
    Stream(Incoming),
    /// No body (replayable: what makes a retry after sending safe).
    Empty,
}

impl Body for UpBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            UpBody::Stream(b) => Pin::new(b).poll_frame(cx),
            UpBody::Empty => Poll::Ready(None),
        }
    }
    fn is_end_stream(&self) -> bool {
        match self {
            UpBody::Stream(b) => b.is_end_stream(),
            UpBody::Empty => true,
        }
    }
    fn size_hint(&self) -> SizeHint {
        match self {
            UpBody::Stream(b) => b.size_hint(),
            UpBody::Empty => SizeHint::with_exact(0),
        }
    }
}

/// A response body on its way to the client.
pub enum ProxyBody {
    /// A backend's body, streamed; when it ends, the upstream connection goes back to the
    /// pool and the in-flight count drops.
    Upstream(UpstreamBody),
    /// A body drove wrote itself (errors).
    Full(Option<Bytes>),
}

/// A backend response body plus what must happen when it ends.
pub struct UpstreamBody {
    pub(crate) inner: Incoming,
    pub(crate) in_flight: Option<InFlight>,
    pub(crate) conn: Option<(std::rc::Weak<crate::pool::Pool>, PooledConn)>,
}

// The worker runs on one thread; hyper needs `Send` only for multi-threaded executors,
// which this body never meets. Rc/Weak keep it !Send, which is correct and cheap.

impl UpstreamBody {
    fn finish(&mut self) {
        if let Some((pool, conn)) = self.conn.take() {
            if let Some(pool) = pool.upgrade() {
                pool.put(conn);
            }
        }
        self.in_flight.take();
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // Not read to the end (client went away): the connection is mid-message, so it
        // cannot be reused; aborting its task closes it.
        if let Some((_, conn)) = self.conn.take() {
            conn.abort();
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ProxyBody::Upstream(u) => {
                let r = Pin::new(&mut u.inner).poll_frame(cx);
                match &r {
                    Poll::Ready(None) => u.finish(),
                    Poll::Ready(Some(Ok(_))) if u.inner.is_end_stream() => u.finish(),
                    Poll::Ready(Some(Err(_))) => {
                        if let Some((_, c)) = u.conn.take() {
                            c.abort();
                        }
                        u.in_flight.take();
                    }
                    _ => {}
                }
                r
            }
            ProxyBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
        }
    }
    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Upstream(u) => u.inner.is_end_stream(),
            ProxyBody::Full(b) => b.is_none(),
        }
    }
    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Upstream(u) => u.inner.size_hint(),
            ProxyBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            ProxyBody::Full(None) => SizeHint::with_exact(0),
        }
    }
}
