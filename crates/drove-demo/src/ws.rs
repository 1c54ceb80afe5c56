//! `/ws`: handshake validation and the echo loop.

use futures_util::{SinkExt, StreamExt};
use http::{header, HeaderMap, Method};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::server::Shutdown;

/// Why a request to `/ws` is not a valid WebSocket handshake.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum HandshakeError {
    #[error("WebSocket handshake must use GET")]
    Method,
    #[error("missing `Connection: upgrade`")]
    Connection,
    #[error("missing `Upgrade: websocket`")]
    Upgrade,
    #[error("missing or malformed Sec-WebSocket-Key")]
    Key,
    #[error("missing Sec-WebSocket-Version")]
    NoVersion,
    /// Answered with 426 and `Sec-WebSocket-Version: 13` (RFC 6455 section 4.4).
    #[error("unsupported Sec-WebSocket-Version (only 13 is supported)")]
    Version,
}

/// Checks an RFC 6455 opening handshake and returns the `Sec-WebSocket-Accept` value.
pub(crate) fn accept_key(method: &Method, headers: &HeaderMap) -> Result<String, HandshakeError> {
    if method != Method::GET {
        return Err(HandshakeError::Method);
    }
    if !has_token(headers, header::CONNECTION, "upgrade") {
        return Err(HandshakeError::Connection);
    }
    if !has_token(headers, header::UPGRADE, "websocket") {
        return Err(HandshakeError::Upgrade);
    }
    let mut keys = headers.get_all(header::SEC_WEBSOCKET_KEY).iter();
    let key = match (keys.next(), keys.next()) {
        (Some(key), None) if is_valid_key(key.as_bytes()) => key,
        _ => return Err(HandshakeError::Key),
    };
    match headers.get(header::SEC_WEBSOCKET_VERSION) {
        Some(v) if v.as_bytes().trim_ascii() == b"13" => {}
        Some(_) => return Err(HandshakeError::Version),
        None => return Err(HandshakeError::NoVersion),
    }
    Ok(derive_accept_key(key.as_bytes()))
}

/// True if a comma-separated header lists `token` (case-insensitive).
fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// The key is the base64 encoding of 16 bytes: 22 symbols and `==`.
fn is_valid_key(key: &[u8]) -> bool {
    key.len() == 24
        && key.ends_with(b"==")
        && key[..22]
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/')
}

/// Echoes text and binary messages until the peer closes. On graceful shutdown the
/// server sends a close frame (1001 going away) and waits for the peer's reply; on the
/// hard stop it just drops the connection.
pub(crate) async fn echo(upgraded: Upgraded, shutdown: Shutdown) {
    let mut ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
    let mut closing = false;
    loop {
        tokio::select! {
            msg = ws.next() => match msg {
                Some(Ok(msg @ (Message::Text(_) | Message::Binary(_)))) => {
                    if closing {
                        continue;
                    }
                    if ws.send(msg).await.is_err() {
                        break;
                    }
                }
                // Pings are answered and close frames replied to by tungstenite itself
                // on the next poll; keep polling until the stream ends.
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break,
            },
            () = shutdown.graceful(), if !closing => {
                closing = true;
                let frame = CloseFrame { code: CloseCode::Away, reason: "server shutting down".into() };
                if ws.send(Message::Close(Some(frame))).await.is_err() {
                    break;
                }
            }
            () = shutdown.hard() => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(*k, HeaderValue::from_static(v));
        }
        map
    }

    const GOOD: &[(&str, &str)] = &[
        ("connection", "keep-alive, Upgrade"),
        ("upgrade", "WebSocket"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("sec-websocket-version", "13"),
    ];

    #[test]
    fn accepts_rfc_example() {
        assert_eq!(
            accept_key(&Method::GET, &headers(GOOD)).unwrap(),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn rejects_malformed() {
        let without = |name: &str| {
            let mut h = headers(GOOD);
            h.remove(name);
            h
        };
        assert_eq!(
            accept_key(&Method::POST, &headers(GOOD)),
            Err(HandshakeError::Method)
        );
        assert_eq!(
            accept_key(&Method::GET, &without("connection")),
            Err(HandshakeError::Connection)
        );
        assert_eq!(
            accept_key(&Method::GET, &without("upgrade")),
            Err(HandshakeError::Upgrade)
        );
        assert_eq!(
            accept_key(&Method::GET, &without("sec-websocket-key")),
            Err(HandshakeError::Key)
        );
        assert_eq!(
            accept_key(&Method::GET, &without("sec-websocket-version")),
            Err(HandshakeError::NoVersion)
        );
        let mut h = headers(GOOD);
        h.insert("sec-websocket-version", HeaderValue::from_static("8"));
        assert_eq!(accept_key(&Method::GET, &h), Err(HandshakeError::Version));
        let mut h = headers(GOOD);
        h.insert("sec-websocket-key", HeaderValue::from_static("short=="));
        assert_eq!(accept_key(&Method::GET, &h), Err(HandshakeError::Key));
        let mut h = headers(GOOD);
        h.append(
            "sec-websocket-key",
            HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ=="),
        );
        assert_eq!(accept_key(&Method::GET, &h), Err(HandshakeError::Key));
    }
}
