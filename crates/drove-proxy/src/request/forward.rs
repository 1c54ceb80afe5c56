//! Phases 3 and 4: the request as a backend will see it, and one attempt to get a
//! response head for it from one backend.
//!
//! An attempt takes an idle keep-alive connection to the backend from the worker's pool
//! (or connects), writes the head (with the first body bytes in the same write), streams
//! the rest of the body — a chunked body re-framed, counted against `max_body_size` —
//! and reads the response head, within the per-try and response timeouts. While it
//! waits, a backend marked unhealthy or ejected meanwhile (a frozen process) wakes it:
//! a request that can be sent again is given back at once rather than held until its
//! timeout.

use std::sync::Arc;
use std::time::Duration;

use drove_balancer::{Backend, InFlight};
use tokio::time::Instant;

use super::retry::{Failure, RequestClass};
use super::{finish, Ctx};
use crate::conn::Client;
use crate::h1::{self, Chunked, Framing, Method, RequestHead, RequestRewrite, ResponseHead};
use crate::local_signal::LocalSignal;
use crate::sock::{Buf, ClientIo, Sock};
use crate::timer::Deadline;
use crate::upstream::Pool;
use crate::worker::Worker;
use crate::{ProxyError, ProxySettings};

/// An idempotent request with a Content-Length body up to this size is read whole before
/// it is sent, so it can be replayed on another backend (like nginx's request
/// buffering and HAProxy's `http-buffer-request`, for small bodies only: larger ones
/// stream, and are not retried once sent).
const MAX_REPLAY_BODY: u64 = 16 * 1024;

/// How often a waiting attempt looks again at its backend when it left rotation but no
/// retry could be paid for (the retry budget was spent). Otherwise attempts do not poll:
/// they wake when a backend leaves rotation (`Worker::left_rotation`).
pub(crate) const HEALTH_CHECK_EVERY: Duration = Duration::from_millis(50);

/// The largest response head accepted from a backend.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// The request as it goes to a backend.
pub(crate) struct UpstreamRequest {
    /// The rewritten head, followed by the whole body when it was read in advance.
    head: Vec<u8>,
    /// The body still to come from the client (None when it is in `head`).
    framing: Framing,
    method: Method,
    expect_continue: bool,
    upgrade: bool,
}

impl UpstreamRequest {
    /// Rewrites the head for a backend and consumes it from the client's buffer; reads a
    /// small body of an idempotent request whole (it becomes replayable). `None`: the
    /// client went away meanwhile.
    pub(crate) async fn prepare<S: ClientIo>(
        w: &Worker,
        client: &mut Client<S>,
        head: RequestHead,
        ctx: &Ctx,
    ) -> Option<UpstreamRequest> {
        let settings = &ctx.live.settings;
        let mut out = w.buffers.output();
        h1::write_request(
            client.pending(),
            &head,
            &RequestRewrite {
                peer_ip: client.peer_ip.as_bytes(),
                client_ip: ctx.info.client_ip_text.as_bytes(),
                trusted: client.trusted,
                request_id: settings
                    .request_id_header
                    .as_ref()
                    .zip(ctx.info.request_id.as_ref())
                    .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes())),
                https: client.sock.is_tls(),
            },
            &mut out,
        );
        let mut req = UpstreamRequest {
            head: out,
            framing: head.framing,
            method: head.method,
            expect_continue: head.expect_continue,
            upgrade: head.upgrade.is_some(),
        };
        let head_len = head.len;
        drop(head);
        let mut consumed = head_len;
        if let Framing::Length(n) = req.framing {
            if n <= MAX_REPLAY_BODY
                && req.method.idempotent()
                && settings.retries > 0
                && !req.upgrade
                && !req.expect_continue
            {
                // Read the whole (small) body now and send it in the same write as the
                // head: the request becomes replayable like a body-less one.
                let need = head_len + n as usize;
                while client.pending().len() < need {
                    match tokio::time::timeout(settings.idle_timeout, client.fill()).await {
                        Ok(Ok(k)) if k > 0 => {}
                        _ => {
                            w.buffers.recycle(req.head);
                            return None;
                        }
                    }
                }
                req.head
                    .extend_from_slice(&client.pending()[head_len..need]);
                consumed = need;
                req.framing = Framing::None;
            }
        }
        client.consume(consumed);
        Some(req)
    }

    /// A request whose head (and, with `Framing::None`, whole body) is `head`.
    pub(crate) fn new(head: Vec<u8>, framing: Framing, method: Method) -> UpstreamRequest {
        UpstreamRequest {
            head,
            framing,
            method,
            expect_continue: false,
            upgrade: false,
        }
    }

    /// The head (and body, when it was read in advance).
    pub(crate) fn head(&self) -> &[u8] {
        &self.head
    }

    /// How the rest of the body comes.
    pub(crate) fn framing(&self) -> Framing {
        self.framing
    }

    /// What kind of request it is, for retrying.
    pub(crate) fn class(&self) -> RequestClass {
        RequestClass {
            idempotent: self.method.idempotent(),
            replayable: self.framing == Framing::None && !self.upgrade,
        }
    }

    /// Gives the head's buffer back.
    pub(crate) fn into_head(self) -> Vec<u8> {
        self.head
    }

    pub(crate) fn method(&self) -> Method {
        self.method
    }
}

/// A response head from a backend, with the connection it came on.
pub(crate) struct Answer {
    pub(crate) in_flight: InFlight,
    pub(crate) up: Sock,
    /// The response head and whatever followed it.
    pub(crate) buf: Buf,
    pub(crate) head: ResponseHead,
    /// From sending the request to its response head.
    pub(crate) latency: Duration,
    /// The backend answered before it had the whole request body, and the rest was not
    /// sent (see `HeadIn`): the client's connection closes after this answer.
    pub(crate) body_cut: bool,
}

impl Answer {
    /// 502, 503 or 504: the gateway errors a retry elsewhere may cure.
    pub(crate) fn is_gateway_error(&self) -> bool {
        matches!(self.head.status, 502..=504)
    }

    /// Drops the answer: its connection is closed, not pooled.
    pub(crate) fn discard(self, w: &Worker) {
        w.buffers.recycle_input(self.buf);
    }
}

/// How an attempt failed.
pub(crate) struct AttemptFailure {
    pub(crate) kind: Failure,
    /// What the client is told if no retry follows.
    pub(crate) error: ProxyError,
    pub(crate) in_flight: InFlight,
    /// How long the attempt took.
    pub(crate) elapsed: Duration,
}

/// One attempt on `backend`, starting at `start` (the clock reading of its pick), within
/// the per-try timeout and the request's response timeout.
pub(crate) async fn once<D: Downstream>(
    w: &Worker,
    down: &mut D,
    backend: &Arc<Backend>,
    req: &UpstreamRequest,
    ctx: &mut Ctx,
    start: Instant,
) -> Result<Answer, AttemptFailure> {
    let live = ctx.live.clone();
    let settings = &live.settings;
    let in_flight = w.proxy.balancer.start(backend);
    let deadline = ctx.response_deadline();
    let try_deadline = (start + settings.per_try_timeout).min(deadline);
    let fail = |in_flight, kind, error| AttemptFailure {
        kind,
        error,
        in_flight,
        elapsed: start.elapsed(),
    };

    let (up, warm) =
        match connection(w, backend, start, try_deadline, settings.connect_timeout).await {
            Ok(x) => x,
            Err(error) => return Err(fail(in_flight, Failure::NotSent, error)),
        };

    if req.expect_continue
        && req.framing != Framing::None
        && !std::mem::replace(&mut ctx.continue_sent, true)
    {
        // Like nginx, drove answers `Expect: 100-continue` itself before reading the
        // body (once per request: the body is read by the first attempt).
        down.continue_100().await;
    }

    // A pooled connection found dead before any response byte: the request never
    // reached the backend, whatever its method, as long as it had no streamed body.
    let stale_ok = warm && req.framing == Framing::None;
    // May this attempt be abandoned when its backend leaves rotation? Only if a retry
    // can follow: otherwise waiting is the better chance.
    let movable = req.class().resendable() && ctx.retries < settings.retries;
    let mut buf = w.buffers.input();
    // A pooled connection is sent on at once; a new one after connecting.
    let sent = if warm { start } else { Instant::now() };
    let result = {
        // Pinned here and lent to the watcher: moving the exchange's state into another
        // future would copy it on every request.
        let exchange = send_and_read_head(w, settings, down, &up, req, &mut buf, stale_ok);
        tokio::pin!(exchange);
        let watch = movable.then(|| (&**backend, &*w.proxy.stats, &w.left_rotation));
        while_healthy(exchange.as_mut(), watch, try_deadline, &mut ctx.timer).await
    };
    match result {
        Ok(HeadIn { head, body_cut }) => {
            let now = Instant::now();
            let latency = now.saturating_duration_since(sent);
            let mut in_flight = in_flight;
            finish::answered(
                &mut in_flight,
                head.status,
                if warm { latency } else { Duration::ZERO },
                now.saturating_duration_since(start),
                now,
            );
            Ok(Answer {
                in_flight,
                up,
                buf,
                head,
                latency,
                body_cut,
            })
        }
        Err((kind, source)) => {
            w.buffers.recycle_input(buf);
            let error = match kind {
                Failure::Timeout => ProxyError::Timeout {
                    backend: backend.addr(),
                    after: start.elapsed(),
                },
                Failure::BodyTooLarge => ProxyError::BodyTooLarge,
                Failure::BadBody => ProxyError::BadRequest("malformed chunked body"),
                _ => ProxyError::Broken {
                    backend: backend.addr(),
                    source: source.unwrap_or_else(|| match kind {
                        Failure::BackendDown => std::io::Error::other("backend left rotation"),
                        _ => std::io::ErrorKind::UnexpectedEof.into(),
                    }),
                },
            };
            Err(fail(in_flight, kind, error))
        }
    }
}

/// An idle pooled connection to `backend` (`true`: it was pooled), or a new one; `now`
/// is the attempt's start.
async fn connection(
    w: &Worker,
    backend: &Backend,
    now: Instant,
    try_deadline: Instant,
    connect_timeout: Duration,
) -> Result<(Sock, bool), ProxyError> {
    if let Some(s) = w.pool.take(backend.key(), now) {
        return Ok((s, true));
    }
    let budget = connect_timeout.min(try_deadline.saturating_duration_since(now));
    match Pool::connect(backend.addr(), budget).await {
        Ok(s) => Ok((s, false)),
        Err(e) => {
            tracing::debug!(backend = %backend.id(), error = ?e, "connect failed");
            Err(ProxyError::ConnectFailed {
                backend: backend.addr(),
                source: e.into_io(),
            })
        }
    }
}

/// Runs `exchange` until it ends or `try_deadline` passes (a timeout); with `watch`,
/// also gives up when the backend leaves rotation (its worker's `left_rotation` signal
/// fired and the backend is no longer healthy) and a retry can still be paid for. No
/// polling: a fast request sets the connection's timer once and waits for one signal.
async fn while_healthy<F: std::future::Future<Output = Result<HeadIn, SendError>>>(
    mut exchange: std::pin::Pin<&mut F>,
    watch: Option<(&Backend, &crate::ProxyStats, &LocalSignal)>,
    try_deadline: Instant,
    timer: &mut Deadline,
) -> Result<HeadIn, SendError> {
    let mut timer = timer.at(try_deadline);
    let left = watch.map(|(_, _, left)| left);
    let mut seen = left.map_or(0, LocalSignal::fired);
    loop {
        tokio::select! {
            biased;
            r = &mut exchange => return r,
            () = &mut timer => {
                if Instant::now() >= try_deadline {
                    return Err((Failure::Timeout, None));
                }
                // A look again (below) at a backend out of rotation.
            }
            () = next_event(left, seen) => seen = left.map_or(0, LocalSignal::fired),
        }
        // A backend left rotation, or the look again came: is it this one?
        let Some((backend, stats, _)) = watch else {
            continue;
        };
        let next = if backend.is_healthy_now() {
            try_deadline
        } else if stats.retry_budget_available() {
            return Err((Failure::BackendDown, None));
        } else {
            // Out of rotation, but no retry can be paid for now: look again soon (the
            // budget refills as other requests succeed).
            (Instant::now() + HEALTH_CHECK_EVERY).min(try_deadline)
        };
        if timer.deadline() != next {
            timer.as_mut().reset(next);
        }
    }
}

/// The next event of `signal` after `seen`; never, without one.
async fn next_event(signal: Option<&LocalSignal>, seen: u64) {
    match signal {
        Some(s) => s.wait_past(seen).await,
        None => std::future::pending().await,
    }
}

/// Why sending or reading the head stopped, with the I/O error when there was one.
pub(crate) type SendError = (Failure, Option<std::io::Error>);

/// Where a request comes from: an HTTP/1.1 connection or an HTTP/2 stream. Attempts,
/// retries and the rest of the walk are the same; only the body's source (and
/// `100 Continue`, an HTTP/1.1 affair) differ.
pub(crate) trait Downstream {
    /// Writes `req`'s head, and the rest of its body as it arrives, to `up`.
    async fn send(
        &mut self,
        w: &Worker,
        settings: &ProxySettings,
        up: &Sock,
        req: &UpstreamRequest,
    ) -> Result<(), SendError>;
    /// Answers `Expect: 100-continue` before the body is read.
    async fn continue_100(&mut self) {}
}

impl<S: ClientIo> Downstream for Client<S> {
    async fn send(
        &mut self,
        w: &Worker,
        settings: &ProxySettings,
        up: &Sock,
        req: &UpstreamRequest,
    ) -> Result<(), SendError> {
        match req.framing {
            Framing::None => up
                .write_all(&req.head)
                .await
                .map_err(|e| (Failure::Broken, Some(e))),
            Framing::Length(n) => send_length_body(w, settings, self, up, &req.head, n).await,
            Framing::Chunked => send_chunked_body(w, settings, self, up, &req.head).await,
            Framing::Close => unreachable!("requests are never delimited by close"),
        }
    }

    async fn continue_100(&mut self) {
        if self.pending().is_empty() {
            let _ = self.sock.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await;
        }
    }
}

/// A response head, and whether it came before the whole request body was sent.
pub(crate) struct HeadIn {
    pub(crate) head: ResponseHead,
    /// The backend answered before it had all of the body — an error that came first,
    /// or any answer after which it stopped taking the body — and the rest was not
    /// sent: neither connection can carry another request.
    pub(crate) body_cut: bool,
}

/// Writes the request head and body to `up` and reads the response head into `buf`
/// (1xx other than 101 are skipped). `stale_ok`: a write error or a close before any
/// response byte means the pooled connection was already dead.
///
/// With a streamed body, the head is read while the body goes out: a backend that
/// refuses a large upload before reading it (an early 413 or 401) would otherwise leave
/// drove writing into full buffers until a timeout, then answering 502. Such an error
/// answer is relayed at once and the rest of the body is not sent (as nginx and HAProxy
/// do). A success head that comes early waits for the body to be sent, as before, unless
/// the backend then stops taking it (closes): its answer is relayed, not a 502.
async fn send_and_read_head<D: Downstream>(
    w: &Worker,
    settings: &ProxySettings,
    down: &mut D,
    up: &Sock,
    req: &UpstreamRequest,
    buf: &mut Buf,
    stale_ok: bool,
) -> Result<HeadIn, SendError> {
    if req.framing == Framing::None {
        match down.send(w, settings, up, req).await {
            Err((Failure::Broken, e)) if stale_ok => return Err((Failure::Stale, e)),
            Err(e) => return Err(e),
            Ok(()) => {}
        }
        let head = read_head(up, buf, req.method(), stale_ok).await?;
        return Ok(HeadIn {
            head,
            body_cut: false,
        });
    }
    let send = down.send(w, settings, up, req);
    let read = read_head(up, buf, req.method(), false);
    tokio::pin!(send, read);
    let early = tokio::select! {
        biased;
        sent = &mut send => match sent {
            Ok(()) => None,
            // A backend that answered and closed fails the write: its answer, if it
            // sent one, is what the client gets. (Read to the end, not just polled: the
            // runtime may not have seen the answer arrive yet. The connection is dead,
            // so the read ends at once; the try's deadline bounds it all the same.)
            Err((Failure::Broken, e)) => match read.await {
                Ok(head) => return Ok(cut(head)),
                Err(_) => return Err((Failure::Broken, e)),
            },
            Err(e) => return Err(e),
        },
        head = &mut read => Some(head?),
    };
    match early {
        Some(head) if head.status >= 400 => Ok(cut(head)),
        // A success answer waits for the body — unless the backend stops taking it (it
        // answered without reading it all, and closed): its answer stands.
        Some(head) => match send.await {
            Ok(()) => Ok(HeadIn {
                head,
                body_cut: false,
            }),
            Err((Failure::Broken, _)) => Ok(cut(head)),
            Err(e) => Err(e),
        },
        None => Ok(HeadIn {
            head: read.await?,
            body_cut: false,
        }),
    }
}

/// A head that answers a request whose body was not all sent: neither connection can
/// carry another request.
fn cut(mut head: ResponseHead) -> HeadIn {
    head.keep_alive = false;
    HeadIn {
        head,
        body_cut: true,
    }
}

/// Reads a response head into `buf`, skipping 1xx answers other than 101.
async fn read_head(
    up: &Sock,
    buf: &mut Buf,
    method: Method,
    stale_ok: bool,
) -> Result<ResponseHead, SendError> {
    loop {
        match h1::parse_response(buf.filled(), method) {
            Ok(Some(h)) if (100..200).contains(&h.status) && h.status != 101 => {
                buf.consume(h.len);
                continue;
            }
            Ok(Some(h)) => return Ok(h),
            Ok(None) => {}
            Err(_) => {
                let e =
                    std::io::Error::new(std::io::ErrorKind::InvalidData, "malformed response head");
                return Err((Failure::Broken, Some(e)));
            }
        }
        if buf.len() >= MAX_RESPONSE_HEAD {
            let e = std::io::Error::new(std::io::ErrorKind::InvalidData, "response head too large");
            return Err((Failure::Broken, Some(e)));
        }
        match up.read(buf).await {
            Ok(0) if buf.is_empty() && stale_ok => return Err((Failure::Stale, None)),
            Err(e) if buf.is_empty() && stale_ok => return Err((Failure::Stale, Some(e))),
            Ok(0) => return Err((Failure::Broken, None)),
            Err(e) => return Err((Failure::Broken, Some(e))),
            Ok(_) => {}
        }
    }
}

/// Reads more of the client's body, within the idle timeout.
async fn more_body<S: ClientIo>(
    settings: &ProxySettings,
    client: &mut Client<S>,
) -> Result<(), SendError> {
    match tokio::time::timeout(settings.idle_timeout, client.fill()).await {
        Ok(Ok(n)) if n > 0 => Ok(()),
        Ok(Err(e)) => Err((Failure::ClientGone, Some(e))),
        _ => Err((Failure::ClientGone, None)),
    }
}

/// Sends the head and a Content-Length body as it arrives (the head and the first body
/// bytes in one write).
async fn send_length_body<S: ClientIo>(
    w: &Worker,
    settings: &ProxySettings,
    client: &mut Client<S>,
    up: &Sock,
    head: &[u8],
    len: u64,
) -> Result<(), SendError> {
    let mut left = len;
    let mut out = w.buffers.output();
    out.extend_from_slice(head);
    let result = async {
        loop {
            let take = left.min(client.pending().len() as u64) as usize;
            out.extend_from_slice(&client.pending()[..take]);
            client.consume(take);
            left -= take as u64;
            if !out.is_empty() {
                up.write_all(&out)
                    .await
                    .map_err(|e| (Failure::Broken, Some(e)))?;
                out.clear();
            }
            if left == 0 {
                return Ok(());
            }
            more_body(settings, client).await?;
        }
    }
    .await;
    w.buffers.recycle(out);
    result
}

/// Sends the head and a chunked body re-framed (canonical sizes, no extensions, no
/// trailers), counting its decoded length against `max_body_size`: past it, the
/// attempt stops and the backend never sees the body's end.
///
/// The client's trailer section is read (the body ends after it) and dropped, on
/// purpose: see `h1::LAST_CHUNK` (smuggling safety; an HTTP/2 client's trailers do pass).
async fn send_chunked_body<S: ClientIo>(
    w: &Worker,
    settings: &ProxySettings,
    client: &mut Client<S>,
    up: &Sock,
    head: &[u8],
) -> Result<(), SendError> {
    let max = settings.max_body_size;
    let mut chunked = Chunked::default();
    let mut out = w.buffers.output();
    out.extend_from_slice(head);
    let result = async {
        loop {
            let input = client.pending();
            let mut at = 0;
            let n = chunked
                .feed(input, |p| {
                    if p.data() {
                        h1::write_chunk(&input[at..at + p.len], &mut out);
                    }
                    at += p.len;
                })
                .map_err(|_| (Failure::BadBody, None))?;
            client.consume(n);
            if max > 0 && chunked.data_len() > max {
                return Err((Failure::BodyTooLarge, None));
            }
            if chunked.done() {
                out.extend_from_slice(h1::LAST_CHUNK);
            }
            if !out.is_empty() {
                up.write_all(&out)
                    .await
                    .map_err(|e| (Failure::Broken, Some(e)))?;
                out.clear();
            }
            if chunked.done() {
                return Ok(());
            }
            more_body(settings, client).await?;
        }
    }
    .await;
    w.buffers.recycle(out);
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::task::Poll;

    /// A backend out of rotation while no retry can be paid for is looked at again every
    /// `HEALTH_CHECK_EVERY`; once it is back, its attempt waits for its deadline again —
    /// with no busy loop on the timer that fired for the look.
    #[tokio::test]
    async fn an_attempt_waits_quietly_when_its_backend_is_out_and_the_budget_spent() {
        let balancer = drove_balancer::Balancer::new(drove_balancer::BalancerSettings {
            max_ejected_percent: 100,
            ..Default::default()
        });
        balancer.set_backends(vec![drove_balancer::BackendSpec::new(
            "127.0.0.1:1".parse().unwrap(),
        )]);
        let backend = balancer.snapshot().remove(0);
        let stats = crate::ProxyStats::new(0);
        while stats.withdraw_retry() {}
        let left = LocalSignal::default();
        let polls = Cell::new(0u32);
        let start = Instant::now();
        // A backend that never answers; each poll of the attempt polls it once.
        let exchange = std::future::poll_fn(|_| -> Poll<Result<HeadIn, SendError>> {
            polls.set(polls.get() + 1);
            Poll::Pending
        });
        tokio::pin!(exchange);
        let mut timer = Deadline::default();
        let waiting = while_healthy(
            exchange.as_mut(),
            Some((&*backend, &stats, &left)),
            start + Duration::from_secs(1),
            &mut timer,
        );
        tokio::pin!(waiting);
        assert!(futures_util::poll!(waiting.as_mut()).is_pending());
        // Out of rotation (passively ejected) for 200 ms, then back.
        for _ in 0..3 {
            balancer
                .start(&backend)
                .finish(drove_balancer::Outcome::Broken, Duration::ZERO);
        }
        assert!(!backend.is_healthy_now());
        left.fire();
        let out = tokio::select! {
            r = &mut waiting => Some(r),
            () = tokio::time::sleep(Duration::from_millis(200)) => None,
        };
        assert!(
            out.is_none(),
            "no retry could be paid for: it keeps waiting"
        );
        // Each wake polls the exchange once or twice: a look every 50 ms is a handful,
        // a busy loop thousands.
        let looks = polls.get();
        assert!(
            (4..=20).contains(&looks),
            "looked again every 50 ms: {looks} polls"
        );
        balancer.reset_health(backend.id());
        let r = waiting.await;
        assert!(
            matches!(r, Err((Failure::Timeout, None))),
            "the try's deadline"
        );
        assert!(start.elapsed() >= Duration::from_secs(1));
        assert!(
            polls.get() < looks + 8,
            "no busy loop: {} polls",
            polls.get()
        );
    }
}
