//! Why drove answered a request itself, with the cause kept for logs, and the one
//! mapping of those reasons to HTTP statuses.

use std::net::SocketAddr;
use std::time::Duration;

use http::StatusCode;

/// Which side of the proxy a failure came from (pingora's `ErrorSource`): it decides
/// what is counted against a backend and what is the client's doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The backend (or the way to it).
    Upstream,
    /// The client and what it sent.
    Downstream,
    /// drove itself (its own limits).
    Internal,
}

impl Side {
    /// Lowercase name for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Upstream => "upstream",
            Side::Downstream => "downstream",
            Side::Internal => "internal",
        }
    }
}

/// Why drove answered a request itself instead of relaying a backend's response.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// No backend is enabled and healthy (or every one was tried).
    #[error("no backend available")]
    NoBackend,
    /// The last try could not connect.
    #[error("could not connect to {backend}: {source}")]
    ConnectFailed {
        /// The backend's address.
        backend: SocketAddr,
        /// What the connect returned (a timeout is `TimedOut`).
        source: std::io::Error,
    },
    /// The backend did not send a response head in time.
    #[error("{backend} sent no response head within {after:?}")]
    Timeout {
        /// The backend's address.
        backend: SocketAddr,
        /// How long the try waited.
        after: Duration,
    },
    /// The connection broke before a complete response head, or the head was malformed.
    #[error("connection to {backend} broke: {source}")]
    Broken {
        /// The backend's address.
        backend: SocketAddr,
        /// The I/O error, or `InvalidData` for a malformed head.
        source: std::io::Error,
    },
    /// The backend switched protocols in a way the request did not ask for (a `101`
    /// without a matching `Upgrade`, a WebSocket accept key that does not match): the
    /// connection is not turned into a tunnel.
    #[error("{backend} sent a 101 that does not answer the request: {reason}")]
    BadUpgrade {
        /// The backend's address.
        backend: SocketAddr,
        /// What was wrong.
        reason: &'static str,
    },
    /// The request is malformed or ambiguous, e.g. conflicting framing.
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// A method drove does not proxy (`CONNECT`).
    #[error("method not allowed")]
    MethodNotAllowed,
    /// The request head exceeds the limit.
    #[error("request head too large")]
    HeaderTooLarge,
    /// The body exceeds the limit (announced or counted).
    #[error("request body too large")]
    BodyTooLarge,
    /// drove hit a bug (a panic, contained) before any byte of a response was sent.
    #[error("internal error: {0}")]
    Internal(String),
    /// A rate limit refused the request.
    #[error("rate limit `{limit}` exceeded")]
    RateLimited {
        /// The limit's name.
        limit: String,
        /// When the client may come back.
        retry_after: Duration,
    },
}

impl ProxyError {
    /// The status drove answers with: the single place where errors become statuses.
    pub fn status(&self) -> StatusCode {
        match self {
            // Nothing could be reached: the service is unavailable (HAProxy's answer),
            // and the client is told when to come back.
            ProxyError::NoBackend | ProxyError::ConnectFailed { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ProxyError::Broken { .. } | ProxyError::BadUpgrade { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::HeaderTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ProxyError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Which side failed.
    pub fn side(&self) -> Side {
        match self {
            ProxyError::ConnectFailed { .. }
            | ProxyError::Timeout { .. }
            | ProxyError::Broken { .. }
            | ProxyError::BadUpgrade { .. } => Side::Upstream,
            ProxyError::BadRequest(_)
            | ProxyError::MethodNotAllowed
            | ProxyError::HeaderTooLarge
            | ProxyError::BodyTooLarge => Side::Downstream,
            ProxyError::NoBackend | ProxyError::RateLimited { .. } | ProxyError::Internal(_) => {
                Side::Internal
            }
        }
    }

    /// `Retry-After` seconds drove sends with the answer, if any.
    pub(crate) fn retry_after(&self) -> Option<u64> {
        match self {
            ProxyError::RateLimited { retry_after, .. } => {
                let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
                Some(secs.max(1))
            }
            // Tell clients (and retrying load generators) when to come back, at once.
            e if e.status() == StatusCode::SERVICE_UNAVAILABLE => Some(1),
            _ => None,
        }
    }

    /// The short body drove sends.
    pub(crate) fn body(&self) -> &'static str {
        match self {
            ProxyError::NoBackend => "503 Service Unavailable: no backend available\n",
            ProxyError::ConnectFailed { .. } => {
                "503 Service Unavailable: could not connect to any backend\n"
            }
            ProxyError::Broken { .. } => "502 Bad Gateway: the backend connection broke\n",
            ProxyError::BadUpgrade { .. } => {
                "502 Bad Gateway: the backend's protocol switch does not answer the request\n"
            }
            ProxyError::Timeout { .. } => {
                "504 Gateway Timeout: the backend did not answer in time\n"
            }
            ProxyError::BadRequest(_) => "400 Bad Request\n",
            ProxyError::MethodNotAllowed => "405 Method Not Allowed\n",
            ProxyError::BodyTooLarge => "413 Payload Too Large\n",
            ProxyError::HeaderTooLarge => "431 Request Header Fields Too Large\n",
            ProxyError::RateLimited { .. } => "429 Too Many Requests: rate limit exceeded\n",
            ProxyError::Internal(_) => {
                "500 Internal Server Error: drove hit a bug; its log has the details\n"
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_sides_and_retry_after() {
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let refused = ProxyError::ConnectFailed {
            backend: addr,
            source: std::io::ErrorKind::ConnectionRefused.into(),
        };
        assert_eq!(refused.status(), 503);
        assert_eq!(refused.side(), Side::Upstream);
        assert_eq!(refused.retry_after(), Some(1));
        assert!(refused.to_string().contains("127.0.0.1:1"), "{refused}");
        let limited = ProxyError::RateLimited {
            limit: "strict".into(),
            retry_after: Duration::from_millis(1500),
        };
        assert_eq!(limited.status(), 429);
        assert_eq!(limited.retry_after(), Some(2), "rounded up");
        assert_eq!(ProxyError::BodyTooLarge.side(), Side::Downstream);
        assert_eq!(ProxyError::BodyTooLarge.retry_after(), None);
        assert_eq!(ProxyError::MethodNotAllowed.status(), 405);
        let timeout = ProxyError::Timeout {
            backend: addr,
            after: Duration::from_secs(1),
        };
        assert_eq!(timeout.status(), 504);
    }
}
