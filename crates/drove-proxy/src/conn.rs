//! One client connection, start to end, in one task: wait for a request head (idle and
//! header timeouts), hand it to [`crate::request::handle`], and again (keep-alive,
//! pipelining) — see LIFECYCLE.md next to this file.
//!
//! The task owns the client socket and, during an exchange, the upstream socket: bytes
//! move between them with no channel and no other task involved, which is what makes
//! the data path cheap. An idle connection holds no buffer at all.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;

use tokio::time::Instant;

use crate::h1::{self, RequestLimits};
use crate::handoff::HandedConnection;
use crate::request;
use crate::sock::{Buf, ClientIo, Sock};
use crate::timer::Deadline;
use crate::worker::{OpenConnection, Stop, Worker};
use crate::ProxyError;

/// The client side of a connection.
pub(crate) struct Client<S = Sock> {
    pub(crate) sock: S,
    /// Received, not yet consumed bytes; an empty, unallocated buffer while idle.
    pub(crate) buf: Buf,
    /// The peer's address (IPv4-mapped IPv6 as IPv4), and as text.
    pub(crate) peer: IpAddr,
    pub(crate) peer_ip: h1::IpText,
    /// The peer is a trusted proxy (its X-Forwarded-* are believed).
    pub(crate) trusted: bool,
    /// TCP_NODELAY was set (on the first reuse of the connection).
    nodelay: bool,
    /// The timer of its waits: idle between requests, and each attempt's response
    /// timeout (lent to the request's context while it runs).
    pub(crate) timer: Deadline,
}

impl<S: ClientIo> Client<S> {
    /// A just-accepted connection from `peer`.
    pub(crate) fn new(w: &Worker, sock: S, peer: SocketAddr) -> Client<S> {
        let ip = drove_net::canonical_ip(peer.ip());
        Client {
            sock,
            buf: Buf::with_capacity(0),
            peer: ip,
            peer_ip: h1::IpText::of(ip),
            trusted: w
                .snapshot()
                .settings
                .trusted_proxies
                .iter()
                .any(|c| c.contains(ip)),
            nodelay: false,
            timer: Deadline::default(),
        }
    }

    /// TCP_NODELAY once it matters: before a second write of one response, or when the
    /// connection is reused (a single-write response on a new connection never waits for
    /// Nagle, so `Connection: close` traffic saves the syscall, as with nginx).
    pub(crate) fn nodelay(&mut self) {
        if !self.nodelay {
            self.sock.set_nodelay();
            self.nodelay = true;
        }
    }
    pub(crate) fn pending(&self) -> &[u8] {
        self.buf.filled()
    }
    pub(crate) fn consume(&mut self, n: usize) {
        self.buf.consume(n);
    }
    /// Reads more bytes; 0 = EOF.
    pub(crate) async fn fill(&mut self) -> io::Result<usize> {
        self.sock.read(&mut self.buf).await
    }
}

/// Serves one client connection until it closes, times out, or drove shuts down.
///
/// Not an `async fn`, for memory: an async fn stores its arguments and then moves them
/// into locals, so a client passed to one is stored twice in every idle connection's
/// task; an `async move` block uses what it captured in place. The client is built by
/// the caller for the same reason.
pub(crate) fn serve<S: ClientIo + 'static>(
    w: Rc<Worker>,
    client: Client<S>,
    stop: Stop,
) -> impl std::future::Future<Output = ()> {
    let (mut client, stop) = (client, stop);
    let open = OpenConnection::new(&w);
    async move {
        let _open = open;
        let mut first = true;
        // A new connection's first request has usually arrived with it (clients write right
        // after connecting): read it now, before any timer, shutdown watch or epoll
        // registration is set up for waiting.
        // (In a block: a local alive across the awaits below would enlarge every idle
        // connection's task.)
        {
            let mut first = w.buffers.input();
            match client.sock.try_read(&mut first) {
                Ok(Some(n)) if n > 0 => client.buf = first,
                Ok(None) => w.buffers.recycle_input(first),
                // EOF or an error before the first byte: nothing to answer.
                Ok(Some(_)) | Err(_) => {
                    w.buffers.recycle_input(first);
                    return;
                }
            }
        }
        loop {
            if client.pending().is_empty() {
                // Idle between requests: give the buffer back, wait for bytes (idle timeout)
                // or for shutdown. Only then take a buffer: an idle connection holds none.
                w.buffers
                    .recycle_input(std::mem::replace(&mut client.buf, Buf::with_capacity(0)));
                // Only drove's shutdown closes an idle connection: listeners retired by
                // a reload let it carry one more request (answered with
                // `Connection: close`), so the client never races an idle close.
                // `idle_end` is set once shutdown or hand-over is (no lock to look).
                if w.idle_end.fired() > 0 {
                    if stop.handing_off() {
                        return hand_over(&w, &client);
                    }
                    return;
                }
                let idle_until = Instant::now() + w.snapshot().settings.idle_timeout;
                loop {
                    let read = tokio::select! {
                        biased;
                        r = client.sock.read_fresh(|| w.buffers.input()) => r,
                        () = client.timer.at(idle_until) => return,
                        () = w.idle_end.wait_past(0) => {
                            if stop.handing_off() {
                                return hand_over(&w, &client);
                            }
                            return;
                        }
                    };
                    match read {
                        Ok((buf, Some(n))) if n > 0 => {
                            client.buf = buf;
                            break;
                        }
                        // Spurious readiness: wait again.
                        Ok((buf, None)) => w.buffers.recycle_input(buf),
                        _ => return,
                    }
                }
            }
            // The request runs with the settings in force when its first bytes are here,
            // whatever a reload does meanwhile.
            let live = w.snapshot();
            let settings = &live.settings;
            // HTTP/2: chosen during the TLS handshake, or prior knowledge (the preface) on
            // a plain connection — only ever as a connection's first bytes.
            if settings.http2
                && first
                && (client.sock.alpn_h2() || starts_h2(&mut client, settings).await)
            {
                return Box::pin(crate::http2::serve(w.clone(), client, stop)).await;
            }
            first = false;
            // The head must be complete within the header timeout (slowloris).
            let started = Instant::now();
            let deadline = started + settings.header_timeout;
            let limits = RequestLimits {
                max_body: settings.max_body_size,
                upgrades: &settings.upgrades,
            };
            let head = loop {
                match h1::parse_request(client.pending(), &limits) {
                    Ok(Some(h)) if h.len > settings.max_header_size => {
                        break Err(ProxyError::HeaderTooLarge)
                    }
                    Ok(Some(h)) => break Ok(h),
                    Ok(None) if client.pending().len() >= settings.max_header_size => {
                        break Err(ProxyError::HeaderTooLarge)
                    }
                    Ok(None) => match tokio::time::timeout_at(deadline, client.fill()).await {
                        Ok(Ok(n)) if n > 0 => {}
                        _ => return,
                    },
                    Err(e) => break Err(e),
                }
            };
            let head = match head {
                Ok(h) => h,
                Err(e) => {
                    // The stream cannot be trusted past a bad head: answer and close.
                    crate::box_in_place(|| {
                        request::refuse(&w, &mut client, started, e, live.clone())
                    })
                    .await;
                    return;
                }
            };
            // Boxed: the exchange's state is large (timers, buffers, nested futures) and
            // would otherwise sit in every idle connection's task; boxing per request costs
            // one allocation and keeps an idle connection to a few hundred bytes.
            crate::hooks::panic_at(
                crate::hooks::Point::Connection,
                &client.pending()[head.target_range.0..head.target_range.1],
            );
            let shutting_down = stop.stopping();
            // In place (see `box_in_place`): `Box::pin` copied the whole walk future.
            let keep = crate::box_in_place(|| {
                request::handle(&w, &mut client, head, started, shutting_down, live.clone())
            })
            .await;
            if keep {
                client.nodelay();
            } else {
                // With unread input, close would answer it with a reset that can destroy the
                // response still in flight: half-close first. Without, a plain close suffices.
                if !client.pending().is_empty() {
                    client.sock.shutdown_write();
                }
                w.buffers
                    .recycle_input(std::mem::replace(&mut client.buf, Buf::with_capacity(0)));
                return;
            }
        }
    }
}

/// An upgrade: an idle plain connection goes to the next drove (a duplicate of its
/// socket; this one closes when the task ends). A TLS one cannot: it closes.
fn hand_over<S: ClientIo>(w: &Worker, client: &Client<S>) {
    if let Some(s) = client.sock.handoff_stream() {
        w.proxy.handoff.give(HandedConnection::Http1(s));
    }
}

/// Serves a connection handed over by the drove this one replaced: an HTTP/1.x client
/// between requests, or a tunnel.
pub(crate) fn serve_adopted(
    w: Rc<Worker>,
    conn: HandedConnection,
    stop: Stop,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()>>> {
    match conn {
        HandedConnection::Http1(s) => {
            let peer = s
                .peer_addr()
                .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
            let _ = s.set_nonblocking(true);
            let client = Client::new(&w, Sock::unregistered(s), peer);
            Box::pin(serve(w, client, stop))
        }
        HandedConnection::Tunnel {
            client,
            upstream,
            backend,
        } => Box::pin(request::relay::adopted_tunnel(
            w, client, upstream, backend, stop,
        )),
    }
}

/// Whether a connection starts with the HTTP/2 preface (reading until its first bytes
/// tell, within the header timeout).
async fn starts_h2<S: ClientIo>(client: &mut Client<S>, settings: &crate::ProxySettings) -> bool {
    let deadline = Instant::now() + settings.header_timeout;
    loop {
        let pending = client.pending();
        if !crate::http2::starts_like_preface(pending) {
            return false;
        }
        if pending.len() >= crate::http2::PREFACE.len() {
            return true;
        }
        match tokio::time::timeout_at(deadline, client.fill()).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::watch;

    /// An idle connection's memory is mostly its task's future: keep it small.
    #[tokio::test]
    async fn idle_connection_future_is_small() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let s = tokio::net::TcpStream::connect(l.local_addr().unwrap())
            .await
            .unwrap();
        let b = drove_balancer::Balancer::new(drove_balancer::BalancerSettings::default());
        let proxy = crate::Proxy::new(b, crate::test_settings()).unwrap();
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async move {
                let w = Worker::new(proxy);
                let (_tx, rx) = watch::channel(false);
                let sock = Sock::new(s).unwrap();
                let client = Client::new(&w, sock, "127.0.0.1:1".parse().unwrap());
                let stop = Stop {
                    retire: rx.clone(),
                    handoff: rx.clone(),
                    idle_end: rx.clone(),
                    shutdown: rx,
                };
                let fut = serve(w, client, stop);
                let size = std::mem::size_of_val(&fut);
                assert!(size < 1024, "serve future is {size} bytes");
                eprintln!("serve future: {size} bytes");
            })
            .await;
    }
}
