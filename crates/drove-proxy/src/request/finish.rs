//! Phase 8: the one place that records what happened.
//!
//! - [`attempt`]: each attempt's outcome goes to the balancer (passive health, the
//!   latency EWMA) the moment the attempt ends — passive health must not wait for a
//!   retry elsewhere to finish — together with the per-attempt counters (connect errors,
//!   timeouts). The answered attempt is recorded when its response head arrives
//!   ([`answered`]) and stays counted in flight until its body is relayed.
//! - [`request`]: once per request, whatever path it took (relayed, answered by drove,
//!   refused, client gone): the response counters and the access log line, with the
//!   body bytes sent and the time to the end of the body.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use drove_balancer::{InFlight, Outcome};

use super::retry::Failure;
use super::Ctx;
use crate::h1::RequestHead;
use crate::log::Entry;
use crate::worker::Worker;
use crate::ProxyError;

/// The status logged for a request whose client went away before any answer (nginx's
/// 499, "client closed request").
const CLIENT_CLOSED: u16 = 499;

/// Fields of the head the access log shows, captured only when it is on.
pub(crate) struct LogHead {
    method: String,
    target: String,
    version: &'static str,
    referer: String,
    user_agent: String,
}

impl LogHead {
    /// From an HTTP/2 request.
    pub(crate) fn of_h2(parts: &http::request::Parts) -> LogHead {
        let header = |n: http::header::HeaderName| {
            parts
                .headers
                .get(n)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .unwrap_or_default()
        };
        LogHead {
            method: parts.method.as_str().to_owned(),
            target: parts
                .uri
                .path_and_query()
                .map(|p| p.as_str().to_owned())
                .unwrap_or_else(|| "/".into()),
            version: "HTTP/2.0",
            referer: header(http::header::REFERER),
            user_agent: header(http::header::USER_AGENT),
        }
    }

    /// From the head at the start of `buf`; `None` (an unparsable head) logs `-`.
    pub(crate) fn capture(buf: &[u8], head: Option<&RequestHead>) -> LogHead {
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        match head {
            Some(h) => LogHead {
                method: text(h.method_bytes(buf)),
                target: text(h.target(buf)),
                version: if h.http10 { "HTTP/1.0" } else { "HTTP/1.1" },
                referer: h.header(buf, b"referer").map(text).unwrap_or_default(),
                user_agent: h.header(buf, b"user-agent").map(text).unwrap_or_default(),
            },
            None => LogHead {
                method: "-".into(),
                target: "-".into(),
                version: "-",
                referer: String::new(),
                user_agent: String::new(),
            },
        }
    }
}

/// A failed attempt ended: its outcome for the balancer, and the per-attempt counters.
pub(crate) fn attempt(w: &Worker, in_flight: InFlight, failure: Failure, elapsed: Duration) {
    let stats = &w.proxy.stats;
    let outcome = match failure {
        Failure::NotSent => {
            stats.connect_errors.fetch_add(1, Relaxed);
            Outcome::ConnectFailed
        }
        Failure::Timeout => {
            stats.timeouts.fetch_add(1, Relaxed);
            Outcome::TimedOut
        }
        Failure::Broken => Outcome::Broken,
        Failure::Http5xx => Outcome::Http5xx,
        // Already out of rotation: counting it again would say nothing new.
        Failure::BackendDown => Outcome::Cancelled,
        // The backend's connection was stale, the client left, or sent too much: none
        // of it is the backend's doing.
        Failure::Stale | Failure::ClientGone | Failure::BodyTooLarge | Failure::BadBody => {
            Outcome::Cancelled
        }
    };
    in_flight.finish(outcome, elapsed);
}

/// The answered attempt's response head arrived: its outcome (the attempt stays in
/// flight until the body is relayed). `latency` is zero for a fresh connection's first
/// exchange, whose setup says nothing about how fast the backend answers.
pub(crate) fn answered(
    in_flight: &mut InFlight,
    status: u16,
    latency: Duration,
    since_start: Duration,
    at: tokio::time::Instant,
) {
    let outcome = if status >= 500 {
        Outcome::Http5xx
    } else {
        Outcome::Ok
    };
    in_flight.record_at(outcome, latency, at);
    in_flight.backend().responses().record(status, since_start);
}

/// The request is over: counters and the access log, exactly once.
pub(crate) fn request(w: &Worker, ctx: &Ctx) {
    let stats = &w.proxy.stats;
    match &ctx.error {
        Some(ProxyError::RateLimited { .. }) => {
            stats.rate_limited.fetch_add(1, Relaxed);
        }
        Some(ProxyError::NoBackend) => {
            stats.no_backend.fetch_add(1, Relaxed);
        }
        Some(e) if e.side() == crate::error::Side::Downstream => {
            stats.rejected.fetch_add(1, Relaxed);
        }
        Some(e) => tracing::debug!(error = %e, "request answered by drove"),
        None => {}
    }
    if ctx.status != 0 {
        stats.response(ctx.status);
    }
    let Some(h) = &ctx.log else { return };
    let request_id = ctx
        .info
        .request_id
        .as_ref()
        .and_then(|v| std::str::from_utf8(v.as_bytes()).ok())
        .unwrap_or("");
    let error = ctx.error.as_ref().map(|e| e.to_string());
    ctx.live.log.write(&Entry {
        client: ctx.info.client_ip,
        method: &h.method,
        target: &h.target,
        version: h.version,
        status: if ctx.status == 0 {
            CLIENT_CLOSED
        } else {
            ctx.status
        },
        bytes: ctx.body_bytes,
        referer: &h.referer,
        user_agent: &h.user_agent,
        upstream: ctx.backend.as_ref().map(|b| b.addr()),
        upstream_id: ctx.backend.as_ref().map(|b| b.id()),
        upstream_status: ctx.upstream_status,
        upstream_time: ctx.upstream_time,
        total_time: ctx.start.elapsed(),
        retries: ctx.retries,
        request_id,
        error: error.as_deref(),
    });
}
