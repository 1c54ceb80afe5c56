//! One request through drove, as a straight walk of named phases (pingora's
//! `request_filter` → `upstream_peer` → `upstream_request_filter` → `response_filter` →
//! `logging`), each in its own module:
//!
//! 1. [`info`] — extract what the phases need from the head (client IP behind trusted
//!    proxies, request id, sticky cookie, hash key, route); pure.
//! 2. [`admit`] — the route's rate limit: pass, or a 429.
//! 3. [`forward::UpstreamRequest::prepare`] — the head rewritten for a backend, and a small
//!    idempotent body read whole so the request stays replayable.
//! 4. pick (the balancer) → [`forward::once`] — one attempt on one backend: connect or take
//!    a pooled connection, send, read the response head; a backend that leaves rotation
//!    meanwhile gives its replayable requests back at once.
//! 5. [`retry::decide`] — after a failed attempt: try another backend or stop; a pure
//!    function of the failure, the attempt count, the request and the budget.
//! 6. [`respond`] — the response head for the client (drove's headers, sticky cookie,
//!    keep-alive); a `101` only if it answers the upgrade the request asked for.
//! 7. [`relay`] — the body in its framing, or the tunnel after a `101`.
//! 8. [`finish`] — the one place that records: each attempt's outcome (passive health,
//!    latency EWMA) when it ends, and the request (counters, access log) exactly once.
//!
//! Every answer drove gives itself (400, 413, 429, 502, 503, 504 …) goes through
//! [`answer`], and is recorded by `finish` like a relayed one.

pub(crate) mod admit;
pub(crate) mod compress;
pub(crate) mod finish;
pub(crate) mod forward;
pub(crate) mod info;
pub(crate) mod relay;
pub(crate) mod respond;
pub(crate) mod retry;

use std::panic::AssertUnwindSafe;
use std::time::Duration;

use drove_balancer::{Backend, PickContext};
use futures_util::FutureExt;
use tokio::time::Instant;

use crate::conn::Client;
use crate::h1::{Framing, RequestHead};
use crate::hooks;
use crate::sock::ClientIo;
use crate::timer::Deadline;
use crate::worker::{Snapshot, Worker};
use crate::ProxyError;

pub(crate) use info::RequestInfo;

/// Tries that found a pooled connection already closed are retried for free, up to this.
const MAX_STALE_RETRIES: u32 = 4;

/// The per-request context: what the head said, and what happened — everything
/// [`finish`] records.
pub(crate) struct Ctx {
    /// The settings this request runs with, from start to end.
    pub(crate) live: Snapshot,
    /// When the head started to arrive.
    pub(crate) start: Instant,
    pub(crate) info: RequestInfo,
    /// Logged fields of the head (only when the access log is on).
    pub(crate) log: Option<finish::LogHead>,
    /// Status sent to the client (0: none was sent).
    pub(crate) status: u16,
    /// Response body bytes sent to the client.
    pub(crate) body_bytes: u64,
    /// The backend of the last attempt.
    pub(crate) backend: Option<std::sync::Arc<Backend>>,
    /// Status the backend answered with, and the time to its response head.
    pub(crate) upstream_status: Option<u16>,
    pub(crate) upstream_time: Option<Duration>,
    /// Attempts after the first.
    pub(crate) retries: u32,
    /// Why drove answered itself.
    pub(crate) error: Option<ProxyError>,
    /// `100 Continue` was sent (once per request, whatever the attempts).
    pub(crate) continue_sent: bool,
    /// The timer of the attempts' waits: the connection's, lent for the request (see
    /// `timer.rs`); an HTTP/2 stream's own.
    pub(crate) timer: Deadline,
}

/// Runs one request whose head is at the start of the client's buffer. Returns whether
/// the connection can carry another request.
pub(crate) async fn handle<S: ClientIo>(
    w: &Worker,
    client: &mut Client<S>,
    head: RequestHead,
    start: Instant,
    shutting_down: bool,
    live: Snapshot,
) -> bool {
    let info = info::extract(&live.settings, client, &head, || w.new_request_id());
    let mut ctx = Ctx::new(w, live, start, info, || {
        finish::LogHead::capture(client.pending(), Some(&head))
    });
    ctx.timer = std::mem::take(&mut client.timer);
    // A bug in a phase costs this request only: the panic is caught here, the client
    // gets a 500 if no byte of a response went out yet, and the connection closes (its
    // state after a panic cannot be trusted). `catch_unwind` costs nothing until a
    // panic happens.
    let walked = AssertUnwindSafe(walk(w, client, head, &mut ctx, shutting_down))
        .catch_unwind()
        .await;
    let keep = match walked {
        Ok(keep) => keep,
        Err(panic) => {
            contained(w, client, &mut ctx, &*panic).await;
            false
        }
    };
    finish::request(w, &ctx);
    client.timer = std::mem::take(&mut ctx.timer);
    keep
}

/// After a panic in a request's walk: count it, log it with the request id, and answer
/// 500 unless a response had started.
async fn contained<S: ClientIo>(
    w: &Worker,
    client: &mut Client<S>,
    ctx: &mut Ctx,
    panic: &(dyn std::any::Any + Send),
) {
    w.proxy.stats.panicked(crate::PanicSite::Request);
    let msg = crate::panic_message(panic);
    let request_id = ctx
        .info
        .request_id
        .as_ref()
        .and_then(|v| std::str::from_utf8(v.as_bytes()).ok())
        .unwrap_or("-");
    tracing::error!(
        request_id,
        panic = msg,
        responded = ctx.status != 0,
        "bug: a request panicked; it is answered 500 (if nothing was sent yet) and its connection closed, drove goes on"
    );
    if ctx.status == 0 {
        answer(w, client, ctx, ProxyError::Internal(msg.to_string()), true).await;
    }
}

/// Answers a head that could not be accepted (malformed, too large) and records it; the
/// connection closes after it.
pub(crate) async fn refuse<S: ClientIo>(
    w: &Worker,
    client: &mut Client<S>,
    start: Instant,
    e: ProxyError,
    live: Snapshot,
) {
    let info = RequestInfo::unparsed(client);
    let mut ctx = Ctx::new(w, live, start, info, || finish::LogHead::capture(&[], None));
    answer(w, client, &mut ctx, e, true).await;
    client.sock.shutdown_write();
    finish::request(w, &ctx);
}

impl Ctx {
    /// A request's context; `log` captures the head's logged fields (called only when
    /// the access log is on).
    pub(crate) fn new(
        w: &Worker,
        live: Snapshot,
        start: Instant,
        info: RequestInfo,
        log: impl FnOnce() -> finish::LogHead,
    ) -> Ctx {
        w.proxy.stats.request();
        Ctx {
            start,
            log: live.log.enabled().then(log),
            live,
            info,
            status: 0,
            body_bytes: 0,
            backend: None,
            upstream_status: None,
            upstream_time: None,
            retries: 0,
            error: None,
            continue_sent: false,
            timer: Deadline::default(),
        }
    }
}

impl Ctx {
    /// When the response head must have come, whatever the attempts.
    pub(crate) fn response_deadline(&self) -> Instant {
        self.start + self.live.settings.response_timeout
    }
}

/// The phases, in order. Returns whether the client connection stays open.
async fn walk<S: ClientIo>(
    w: &Worker,
    client: &mut Client<S>,
    head: RequestHead,
    ctx: &mut Ctx,
    shutting_down: bool,
) -> bool {
    let live = ctx.live.clone();
    let settings = &live.settings;
    // A body left unread makes the connection unusable after drove's own answer.
    let unread_body = head.framing != Framing::None;
    let client_keep = head.keep_alive && !shutting_down;
    let target = &client.pending()[head.target_range.0..head.target_range.1];
    hooks::panic_at(hooks::Point::Request, target);
    if hooks::armed(hooks::Point::Worker, target) {
        w.crash_worker();
    }
    let late_panic = hooks::armed(hooks::Point::Relay, target);

    if let Err(e) = admit::check(settings, &ctx.info).await {
        client.consume(head.len);
        let close = !client_keep || unread_body;
        answer(w, client, ctx, e, close).await;
        return !close;
    }

    let Some(req) = forward::UpstreamRequest::prepare(w, client, head, ctx).await else {
        return false; // the client went away while its small body was read
    };

    let answered = pick_and_forward(w, client, &req, ctx).await;
    w.buffers.recycle(req.into_head());

    match answered {
        Attempted::Answer(answer) if late_panic => {
            // Test hook: the response head goes out, then the walk panics mid-body.
            let _ = relay::response(w, client, ctx, answer, false).await;
            panic!("injected panic at Relay");
        }
        Attempted::Answer(answer) => {
            // A body cut short by an early error answer leaves the rest of it unread.
            let keep = client_keep && !answer.body_cut;
            relay::response(w, client, ctx, answer, keep).await
        }
        Attempted::ClientGone => false,
        Attempted::Failed(e) => {
            // A request whose body was not (all) read cannot be followed by another.
            let close = !client_keep || unread_body;
            answer(w, client, ctx, e, close).await;
            !close
        }
    }
}

/// How the tries of a request ended.
pub(crate) enum Attempted {
    /// A response head to relay.
    Answer(forward::Answer),
    /// No usable answer: drove answers with this.
    Failed(ProxyError),
    /// The client went away while its body was being sent.
    ClientGone,
}

/// Phases 4 and 5: pick → forward once → decide, until a response head or a final
/// failure.
pub(crate) async fn pick_and_forward<D: forward::Downstream>(
    w: &Worker,
    down: &mut D,
    req: &forward::UpstreamRequest,
    ctx: &mut Ctx,
) -> Attempted {
    let live = ctx.live.clone();
    let settings = &live.settings;
    let sticky = ctx.info.sticky;
    let pick = PickContext {
        client_ip: ctx.info.client_ip,
        hash: ctx.info.hash,
        sticky: sticky
            .as_ref()
            .and_then(|v| std::str::from_utf8(v.as_bytes()).ok()),
    };
    let deadline = ctx.response_deadline();
    let mut tried: Vec<u64> = Vec::new();
    let mut stale = 0u32;
    let mut last_error = ProxyError::NoBackend;
    // The last 502/503/504 while retrying (`on_5xx`): the answer if no other backend
    // gives a better one (like nginx, the backend's own answer rather than drove's).
    let mut gateway_error: Option<forward::Answer> = None;
    loop {
        // One clock reading for the pick and the start of the attempt.
        let now = Instant::now();
        let Some(backend) = w.proxy.balancer.pick_at(&pick, &tried, now) else {
            return gateway_error.map_or(Attempted::Failed(last_error), Attempted::Answer);
        };
        ctx.backend = Some(backend.clone());
        let attempts = retry::Attempts {
            retries: ctx.retries,
            max_retries: settings.retries,
            stale,
            max_stale: MAX_STALE_RETRIES,
        };
        let decide = |kind| {
            retry::decide(
                kind,
                attempts,
                req.class(),
                w.proxy.stats.retry_budget_available(),
                Instant::now() < deadline,
            )
        };
        let failure = match forward::once(w, down, &backend, req, ctx, now).await {
            Ok(answer) => {
                let decision = if answer.is_gateway_error() && settings.retry_on_5xx {
                    decide(retry::Failure::Http5xx)
                } else {
                    retry::Decision::Stop
                };
                if !settle(w, decision) {
                    if let Some(old) = gateway_error.take() {
                        old.discard(w);
                    }
                    return Attempted::Answer(answer);
                }
                // Its outcome (a 5xx) was recorded when its head arrived.
                if let Some(old) = gateway_error.replace(answer) {
                    old.discard(w);
                }
                tried.push(backend.key());
                ctx.retries += 1;
                w.proxy.stats.retry();
                continue;
            }
            Err(f) => f,
        };
        let kind = failure.kind;
        let retrying = settle(w, decide(kind));
        finish::attempt(w, failure.in_flight, kind, failure.elapsed);
        if kind == retry::Failure::ClientGone {
            return Attempted::ClientGone;
        }
        last_error = failure.error;
        if !retrying {
            return gateway_error.map_or(Attempted::Failed(last_error), Attempted::Answer);
        }
        if kind == retry::Failure::Stale {
            // The same backend again: its pooled connection was dead, not it.
            stale += 1;
        } else {
            tried.push(backend.key());
            ctx.retries += 1;
            w.proxy.stats.retry();
        }
    }
}

/// Whether a decision is to retry, taking the retry from the budget when it needs one.
fn settle(w: &Worker, d: retry::Decision) -> bool {
    match d {
        retry::Decision::Retry { uses_budget } => !uses_budget || w.proxy.stats.withdraw_retry(),
        retry::Decision::Stop => false,
        retry::Decision::BudgetSpent => {
            w.proxy.stats.budget_spent();
            false
        }
    }
}

/// Sends drove's own answer for `e` and notes it in the context.
pub(crate) async fn answer<S: ClientIo>(
    w: &Worker,
    client: &mut Client<S>,
    ctx: &mut Ctx,
    e: ProxyError,
    close: bool,
) {
    let live = ctx.live.clone();
    let settings = &live.settings;
    let rid = settings
        .request_id_header
        .as_ref()
        .zip(ctx.info.request_id.as_ref())
        .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes()));
    let mut out = w.buffers.output();
    let body = respond::own_response(&e, rid, close, &mut out);
    let _ = client.sock.write_all(&out).await;
    w.buffers.recycle(out);
    ctx.status = e.status().as_u16();
    ctx.body_bytes = body as u64;
    ctx.error = Some(e);
}
