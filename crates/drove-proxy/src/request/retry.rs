//! After a failed attempt: try another backend, or stop. A pure function of the failure,
//! the attempts made, the request and the budget, tested against a table.
//!
//! The rules (docs/configuration.md, `retries`):
//! - `attempts = 0` turns retries off entirely (nginx's `proxy_next_upstream off`).
//! - Otherwise a request that never reached a backend (the connect failed) is tried on
//!   another one whatever its method, without counting against `attempts` or the
//!   budget: it cost the fleet nothing. Each backend is tried at most once (the walk
//!   excludes tried ones) and the response deadline still holds.
//! - A pooled connection found closed before any response byte is replaced by a fresh
//!   try on the same backend, up to a few times, for free (the backend did nothing
//!   wrong); this is not a retry and happens even with retries off.
//! - A request that reached a backend (timeout, broken connection, a backend that left
//!   rotation while it waited, or a 502/503/504 with `on_5xx`) is retried only when its
//!   method is idempotent and its body replayable, within `attempts` and the budget.
//! - A client that went away, or a body over the limit or malformed, ends the request.

/// How an attempt failed, as far as retrying is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The connection to the backend could not be made: nothing was sent.
    NotSent,
    /// A pooled connection was found closed before any response byte.
    Stale,
    /// No response head within the per-try timeout.
    Timeout,
    /// The connection broke, or the response head was malformed, after sending.
    Broken,
    /// The backend was marked unhealthy or ejected while this request waited for it.
    BackendDown,
    /// The backend answered 502, 503 or 504.
    Http5xx,
    /// The client went away while its body was being sent.
    ClientGone,
    /// The request body grew past `max_body_size`.
    BodyTooLarge,
    /// The request's chunked body is malformed.
    BadBody,
}

/// What kind of request it is, for retrying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RequestClass {
    /// Its method may be repeated (RFC 9110 §9.2.2).
    pub(crate) idempotent: bool,
    /// Its whole request (head and body) is at hand to send again.
    pub(crate) replayable: bool,
}

impl RequestClass {
    /// May be sent again after a backend saw it.
    pub(crate) fn resendable(self) -> bool {
        self.idempotent && self.replayable
    }
}

/// Attempts made so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Attempts {
    /// Retries on another backend so far.
    pub(crate) retries: u32,
    /// `retries.attempts`.
    pub(crate) max_retries: u32,
    /// Stale pooled connections replaced so far.
    pub(crate) stale: u32,
    /// How many of those are free.
    pub(crate) max_stale: u32,
}

/// What to do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Try again (another backend, or the same one for a stale connection); the retry
    /// must first be taken from the budget when `uses_budget`.
    Retry { uses_budget: bool },
    /// Stop: answer with the last failure.
    Stop,
    /// A retry would be allowed but the budget is spent: stop (and count it).
    BudgetSpent,
}

/// The decision after `failure`. `budget_available`: the retry budget has a retry left;
/// `before_deadline`: the response timeout has not passed.
pub(crate) fn decide(
    failure: Failure,
    attempts: Attempts,
    request: RequestClass,
    budget_available: bool,
    before_deadline: bool,
) -> Decision {
    if !before_deadline {
        return Decision::Stop;
    }
    match failure {
        Failure::ClientGone | Failure::BodyTooLarge | Failure::BadBody => Decision::Stop,
        // drove's own pooled connection was dead: not a retry, even with retries off.
        Failure::Stale if attempts.stale < attempts.max_stale => {
            Decision::Retry { uses_budget: false }
        }
        Failure::Stale => Decision::Stop,
        _ if attempts.max_retries == 0 => Decision::Stop,
        Failure::NotSent => Decision::Retry { uses_budget: false },
        Failure::Timeout | Failure::Broken | Failure::BackendDown | Failure::Http5xx => {
            if !request.resendable() || attempts.retries >= attempts.max_retries {
                Decision::Stop
            } else if !budget_available {
                Decision::BudgetSpent
            } else {
                Decision::Retry { uses_budget: true }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Failure::*;

    const GET: RequestClass = RequestClass {
        idempotent: true,
        replayable: true,
    };
    const POST: RequestClass = RequestClass {
        idempotent: false,
        replayable: true,
    };
    const BIG_PUT: RequestClass = RequestClass {
        idempotent: true,
        replayable: false,
    };

    fn attempts(retries: u32, max_retries: u32, stale: u32) -> Attempts {
        Attempts {
            retries,
            max_retries,
            stale,
            max_stale: 4,
        }
    }

    const RETRY: Decision = Decision::Retry { uses_budget: true };
    const FREE: Decision = Decision::Retry { uses_budget: false };
    const STOP: Decision = Decision::Stop;
    const SPENT: Decision = Decision::BudgetSpent;

    #[test]
    fn the_table() {
        // (failure, retries so far, attempts, stale so far, request, budget, before deadline) → decision
        let table = [
            // Never sent: for any method, beyond `attempts`, without budget…
            (NotSent, 0, 1, 0, POST, false, true, FREE),
            (NotSent, 5, 2, 0, BIG_PUT, false, true, FREE),
            // …unless retries are off.
            (NotSent, 0, 0, 0, GET, true, true, STOP),
            (NotSent, 0, 2, 0, GET, true, false, STOP), // past the deadline
            // Stale pooled connection: free, a few times.
            (Stale, 0, 1, 0, POST, false, true, FREE),
            (Stale, 0, 0, 0, GET, true, true, FREE), // not a retry: allowed when off
            (Stale, 0, 2, 3, GET, true, true, FREE),
            (Stale, 0, 2, 4, GET, true, true, STOP),
            // Sent: idempotent and replayable only, within attempts and budget.
            (Timeout, 0, 2, 0, GET, true, true, RETRY),
            (Timeout, 1, 2, 0, GET, true, true, RETRY),
            (Timeout, 2, 2, 0, GET, true, true, STOP),
            (Timeout, 0, 0, 0, GET, true, true, STOP), // attempts = 0
            (Timeout, 0, 2, 0, POST, true, true, STOP),
            (Timeout, 0, 2, 0, BIG_PUT, true, true, STOP),
            (Timeout, 0, 2, 0, GET, false, true, SPENT),
            (Timeout, 2, 2, 0, GET, false, true, STOP), // attempts, not the budget
            (Broken, 0, 2, 0, GET, true, true, RETRY),
            (Broken, 0, 2, 0, POST, true, true, STOP),
            (BackendDown, 0, 2, 0, GET, true, true, RETRY),
            (BackendDown, 0, 2, 0, POST, true, true, STOP),
            (Http5xx, 0, 2, 0, GET, true, true, RETRY),
            (Http5xx, 0, 2, 0, GET, false, true, SPENT),
            (Http5xx, 0, 2, 0, POST, true, true, STOP),
            // Not the backend's doing: stop.
            (ClientGone, 0, 2, 0, GET, true, true, STOP),
            (BodyTooLarge, 0, 2, 0, GET, true, true, STOP),
            (BadBody, 0, 2, 0, GET, true, true, STOP),
        ];
        for (i, (f, retries, max, stale, req, budget, before, want)) in
            table.into_iter().enumerate()
        {
            assert_eq!(
                decide(f, attempts(retries, max, stale), req, budget, before),
                want,
                "row {i}: {f:?} retries={retries}/{max} stale={stale} {req:?} budget={budget}"
            );
        }
    }
}
