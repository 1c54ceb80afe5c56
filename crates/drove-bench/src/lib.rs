//! drove-bench: the HTTP/1.1 load generator behind `drove bench`, usable as a library
//! (the `drove verify` drills drive it).
//!
//! It owns the request engine, the latency statistics and the report; it does not know
//! clap, TOML or the balancer. Two load models:
//!
//! - [`Model::Closed`]: each of `connections` workers sends its next request when the
//!   previous response has been read in full (wrk, ab).
//! - [`Model::Open`]: constant arrival rate (wrk2). Request *i* is scheduled at
//!   `t0 + i / rate`; whichever connection is free takes the next request and waits for
//!   its time (a per-thread timerfd pacer, see `pace.rs`). A request that is overdue by
//!   more than 50 µs when a connection frees up (every connection was busy) is counted
//!   in [`Report::queued`] and its latency runs from its scheduled time
//!   ([`Report::latency`], corrected for coordinated omission); one that was due before
//!   the end but never sent is counted in [`Report::unsent`].
//!   [`Report::latency_uncorrected`] always runs from the actual send. A request whose
//!   connection was idle and waiting for it is measured from its send: the lateness of
//!   the wake-up is the generator's, not the server's.
//!
//! The client is hand-written for speed: one pre-built request per run, `httparse` for
//! responses, one reused buffer per connection, no allocation per request. Each of
//! `threads` OS threads runs a current-thread tokio runtime with its share of the
//! connections and its own HdrHistograms (1 µs .. 60 s, 3 significant digits), merged at
//! the end.
//!
//! Main types: [`BenchOptions`] → [`run`] → [`Report`] (text, JSON, HTML; [`Report::check`]
//! against [`parse_fail_if`] conditions).

#![deny(missing_docs)]

mod client;
mod engine;
mod fail_if;
mod html;
mod pace;
mod report;
mod stats;

use std::time::Duration;

/// Re-exported so callers can build [`BenchOptions`] without depending on them.
pub use {bytes, http};

pub use engine::run;
pub use fail_if::{parse_duration, parse_fail_if, Condition, FailIfError, Metric, Op};
pub use report::{
    ChiSquare, CurvePoint, ErrorCounts, Percentiles, Report, Second, OTHER_INSTANCES,
};
pub use stats::{chi_square_sf, chi_square_uniform};

/// Default name of the response header that says which instance served a request.
pub const DEFAULT_INSTANCE_HEADER: &str = "X-Drove-Instance";

/// How requests are paced.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Model {
    /// Every connection sends its next request as soon as the previous response is read.
    Closed,
    /// Constant arrival rate, in requests per second over all connections.
    Open {
        /// Requests per second, total.
        rate: f64,
    },
}

/// When a run ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Stop sending after this long; requests in flight finish (bounded by the timeout).
    Duration(Duration),
    /// Send exactly this many requests.
    Requests(u64),
}

/// Everything a run needs. Build with [`BenchOptions::new`] and adjust the public fields.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Target; `http://host[:port]/path?query` only.
    pub url: http::Uri,
    /// Request method.
    pub method: http::Method,
    /// Extra request headers, sent as given (a `Host` here replaces the default one).
    pub headers: Vec<(String, String)>,
    /// Request body, sent with every request.
    pub body: bytes::Bytes,
    /// Number of concurrent connections.
    pub connections: usize,
    /// Load model.
    pub model: Model,
    /// End condition.
    pub stop: Stop,
    /// `false`: a new connection per request, sent with `Connection: close`.
    pub keep_alive: bool,
    /// Per-request timeout, from the moment the request is sent (connect included).
    pub timeout: Duration,
    /// Response header naming the instance that served the request.
    pub instance_header: String,
    /// OS threads, each with a current-thread runtime and its share of the connections.
    pub threads: usize,
    /// What the `cancel` future of [`run`] does: `false` (default, Ctrl-C) abandons the
    /// requests in flight; `true` sends no new request but lets those in flight finish
    /// (each within `timeout`) and counts them — for drills that stop the load on cue.
    pub drain_on_cancel: bool,
}

impl BenchOptions {
    /// Options with the defaults of `drove bench`: GET, 64 connections, closed model,
    /// 10 s, keep-alive, 5 s timeout, one thread.
    pub fn new(url: &str) -> Result<Self, BenchError> {
        let url: http::Uri = url.parse().map_err(|e: http::uri::InvalidUri| {
            BenchError::BadUrl(url.to_string(), e.to_string())
        })?;
        let opts = BenchOptions {
            url,
            method: http::Method::GET,
            headers: Vec::new(),
            body: bytes::Bytes::new(),
            connections: 64,
            model: Model::Closed,
            stop: Stop::Duration(Duration::from_secs(10)),
            keep_alive: true,
            timeout: Duration::from_secs(5),
            instance_header: DEFAULT_INSTANCE_HEADER.to_string(),
            threads: 1,
            drain_on_cancel: false,
        };
        opts.target()?;
        Ok(opts)
    }

    /// `(host, port)` of the URL, checked to be plain `http`.
    pub(crate) fn target(&self) -> Result<(String, u16), BenchError> {
        let bad = |why: &str| BenchError::BadUrl(self.url.to_string(), why.to_string());
        match self.url.scheme_str() {
            Some("http") => {}
            Some(other) => {
                return Err(bad(&format!(
                    "scheme {other:?} is not supported; use http://"
                )))
            }
            None => return Err(bad("missing scheme; use http://host:port/path")),
        }
        let host = self.url.host().ok_or_else(|| bad("missing host"))?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        Ok((host, self.url.port_u16().unwrap_or(80)))
    }

    /// Checks the values that have no sensible meaning (zero connections, a rate ≤ 0…).
    pub fn validate(&self) -> Result<(), BenchError> {
        self.target()?;
        let bad = |s: &str| Err(BenchError::BadOption(s.to_string()));
        if self.connections == 0 {
            return bad("connections must be at least 1");
        }
        if self.threads == 0 {
            return bad("threads must be at least 1");
        }
        if let Model::Open { rate } = self.model {
            if !(rate.is_finite() && rate > 0.0) {
                return bad("rate must be a positive number of requests per second");
            }
        }
        match self.stop {
            Stop::Duration(d) if d.is_zero() => return bad("duration must be positive"),
            Stop::Requests(0) => return bad("requests must be at least 1"),
            _ => {}
        }
        if self.timeout.is_zero() {
            return bad("timeout must be positive");
        }
        if self.instance_header.is_empty() || !self.instance_header.bytes().all(is_token_byte) {
            return bad("instance header must be a valid header name");
        }
        for (k, v) in &self.headers {
            if k.is_empty() || !k.bytes().all(is_token_byte) {
                return bad(&format!("invalid header name {k:?}"));
            }
            if v.bytes().any(|b| b == b'\r' || b == b'\n') {
                return bad(&format!("header {k:?} has a line break in its value"));
            }
        }
        Ok(())
    }
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Live numbers, published about once per second during a run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Progress {
    /// Time since the first request was due.
    pub elapsed: Duration,
    /// Requests finished so far (responses and errors).
    pub requests: u64,
    /// Errors so far (transport errors and status ≥ 400).
    pub errors: u64,
    /// Requests finished in the last complete second.
    pub rps: f64,
    /// Corrected p99 latency of the last complete second.
    pub p99: Duration,
}

/// Why a run could not start.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The URL is not a plain `http://host[:port]/…` URL.
    #[error("bad URL {0:?}: {1}")]
    BadUrl(String, String),
    /// An option has a value with no meaning.
    #[error("bad option: {0}")]
    BadOption(String),
    /// The host name did not resolve.
    #[error("cannot resolve {0}: {1}")]
    Resolve(String, std::io::Error),
    /// A worker thread could not be started.
    #[error("cannot start worker thread: {0}")]
    Thread(std::io::Error),
}
