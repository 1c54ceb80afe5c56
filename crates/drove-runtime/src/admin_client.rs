//! A minimal client of the admin API for the CLI (`drove status`, `scale`, ...): one
//! HTTP/1.1 request per connection, JSON in and out.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Why an admin call failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// Nothing listens there: drove is probably not running.
    #[error("cannot reach drove's admin API at {0}: {1} (is `drove up` running? see --admin)")]
    Unreachable(SocketAddr, std::io::Error),
    /// No answer in time.
    #[error("drove's admin API at {0} did not answer within {1:?}")]
    Timeout(SocketAddr, Duration),
    /// The answer was not HTTP.
    #[error("unexpected answer from {0}: {1}")]
    Protocol(SocketAddr, String),
}

/// Sends `method path` with an optional JSON body; returns (status, body).
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&serde_json::Value>,
    timeout: Duration,
) -> Result<(u16, serde_json::Value), AdminError> {
    tokio::time::timeout(timeout, request_inner(addr, method, path, token, body))
        .await
        .map_err(|_| AdminError::Timeout(addr, timeout))?
}

async fn request_inner(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&serde_json::Value>,
) -> Result<(u16, serde_json::Value), AdminError> {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| AdminError::Unreachable(addr, e))?;
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAccept: application/json\r\n");
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(&body);
    let io = |e: std::io::Error| AdminError::Protocol(addr, e.to_string());
    s.write_all(req.as_bytes()).await.map_err(io)?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.map_err(io)?;
    let text = String::from_utf8_lossy(&buf);
    let (head, rest) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| AdminError::Protocol(addr, "no HTTP header".into()))?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| AdminError::Protocol(addr, "no status".into()))?;
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let payload = if chunked {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    let json = serde_json::from_str(&payload).unwrap_or(serde_json::Value::String(payload));
    Ok((status, json))
}

fn dechunk(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || tail.len() < n {
            break;
        }
        out.push_str(&tail[..n]);
        rest = tail[n..].trim_start_matches("\r\n");
    }
    out
}
