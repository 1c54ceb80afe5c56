//! Data path errors and their one mapping to HTTP statuses.

use http::StatusCode;

/// Why drove answered a request itself instead of relaying a backend's response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    /// No backend is enabled and healthy (or every one was tried).
    #[error("no backend available")]
    NoBackend,
    /// Every try failed to connect (upstream).
    #[error("could not connect to a backend")]
    ConnectFailed,
    /// The backend did not send a response head in time (upstream).
    #[error("backend timed out")]
    Timeout,
    /// The backend closed or reset the connection, or sent a malformed response (upstream).
    #[error("backend connection broke")]
    Broken,
    /// The request is malformed or ambiguous, e.g. conflicting framing (downstream).
    #[error("bad request")]
    BadRequest,
    /// The request head exceeds the limit (downstream).
    #[error("request head too large")]
    HeaderTooLarge,
    /// The announced body exceeds the limit (downstream).
    #[error("request body too large")]
    BodyTooLarge,
}

impl ProxyError {
    /// The status drove answers with: the single place where errors become statuses.
    pub fn status(self) -> StatusCode {
        match self {
            // Nothing could be reached: the service is unavailable (HAProxy's answer),
            // and the client is told when to come back.
            ProxyError::NoBackend | ProxyError::ConnectFailed => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Broken => StatusCode::BAD_GATEWAY,
            ProxyError::Timeout => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::BadRequest => StatusCode::BAD_REQUEST,
            ProxyError::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::HeaderTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        }
    }

    /// Whether the fault lies with the backend side (counted against it).
    pub fn is_upstream(self) -> bool {
        matches!(
            self,
            ProxyError::ConnectFailed | ProxyError::Timeout | ProxyError::Broken
        )
    }

    /// The short body drove sends.
    pub(crate) fn body(self) -> &'static str {
        match self {
            ProxyError::NoBackend => "503 Service Unavailable: no backend available\n",
            ProxyError::ConnectFailed => {
                "503 Service Unavailable: could not connect to any backend\n"
            }
            ProxyError::Broken => "502 Bad Gateway: the backend connection broke\n",
            ProxyError::Timeout => "504 Gateway Timeout: the backend did not answer in time\n",
            ProxyError::BadRequest => "400 Bad Request\n",
            ProxyError::BodyTooLarge => "413 Payload Too Large\n",
            ProxyError::HeaderTooLarge => "431 Request Header Fields Too Large\n",
        }
    }
}
