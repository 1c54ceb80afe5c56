//! Running one probe: HTTP GET, TCP connect or a shell command.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::procfs::signal_group;
use crate::spec::ProbeKind;

/// A status line longer than this is not HTTP we want to understand.
const MAX_STATUS_LINE: usize = 1024;

/// Runs the probe once, bounded by `timeout`. `Err` says why it failed (for logs).
pub(crate) async fn run(
    kind: &ProbeKind,
    port: Option<u16>,
    env: &[(String, String)],
    cwd: &Path,
    timeout: Duration,
) -> Result<(), String> {
    match tokio::time::timeout(timeout, run_inner(kind, port, env, cwd)).await {
        Ok(r) => r,
        Err(_) => Err(format!("timed out after {timeout:?}")),
    }
}

async fn run_inner(
    kind: &ProbeKind,
    port: Option<u16>,
    env: &[(String, String)],
    cwd: &Path,
) -> Result<(), String> {
    let local = |port: Option<u16>| {
        port.map(|p| SocketAddr::from((Ipv4Addr::LOCALHOST, p)))
            .ok_or_else(|| "the instance has no port".to_string())
    };
    match kind {
        ProbeKind::Tcp { addr } => {
            let addr = match addr {
                Some(a) => *a,
                None => local(port)?,
            };
            TcpStream::connect(addr)
                .await
                .map(drop)
                .map_err(|e| format!("connect {addr}: {e}"))
        }
        ProbeKind::Http {
            path,
            expect_status,
        } => {
            let addr = local(port)?;
            let status = http_get_status(addr, path).await?;
            let ok = match expect_status {
                Some(want) => status == *want,
                None => (200..400).contains(&status),
            };
            if ok {
                Ok(())
            } else {
                Err(format!("GET {path} answered {status}"))
            }
        }
        ProbeKind::Command(cmd) => {
            let mut c = tokio::process::Command::new("sh");
            c.arg("-c")
                .arg(cmd)
                .current_dir(cwd)
                .envs(env.iter().map(|(k, v)| (k, v)))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0)
                .kill_on_drop(true);
            let mut child = c.spawn().map_err(|e| format!("spawn sh: {e}"))?;
            // If the timeout drops this future, the guard kills the whole probe group.
            let guard = ProbeGroup(child.id().map(|p| p as i32));
            let st = child.wait().await.map_err(|e| e.to_string())?;
            drop(guard);
            if st.success() {
                Ok(())
            } else {
                Err(format!("probe command failed: {st}"))
            }
        }
    }
}

struct ProbeGroup(Option<i32>);

impl Drop for ProbeGroup {
    fn drop(&mut self) {
        if let Some(pgid) = self.0 {
            signal_group(pgid, nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// Sends a minimal HTTP/1.1 GET and returns the status code of the response.
pub(crate) async fn http_get_status(addr: SocketAddr, path: &str) -> Result<u16, String> {
    let mut s = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: drove-probe\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 256];
    loop {
        if let Some(end) = buf.windows(2).position(|w| w == b"\r\n") {
            return parse_status_line(&buf[..end]);
        }
        if buf.len() > MAX_STATUS_LINE {
            return Err("status line too long".into());
        }
        let n = s.read(&mut chunk).await.map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("connection closed before a status line".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn parse_status_line(line: &[u8]) -> Result<u16, String> {
    let line = std::str::from_utf8(line).map_err(|_| "status line is not UTF-8".to_string())?;
    let mut parts = line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    let code = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") || code.len() != 3 {
        return Err(format!("bad status line {line:?}"));
    }
    code.parse()
        .map_err(|_| format!("bad status line {line:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines() {
        assert_eq!(parse_status_line(b"HTTP/1.1 200 OK"), Ok(200));
        assert_eq!(parse_status_line(b"HTTP/1.0 404"), Ok(404));
        assert!(parse_status_line(b"SSH-2.0-OpenSSH").is_err());
        assert!(parse_status_line(b"HTTP/1.1 2000 OK").is_err());
    }

    #[tokio::test]
    async fn http_probe_against_a_tiny_server() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                let mut b = [0u8; 1024];
                let n = s.read(&mut b).await.unwrap();
                let req = String::from_utf8_lossy(&b[..n]).to_string();
                let code = if req.starts_with("GET /ok ") {
                    204
                } else {
                    503
                };
                let _ = s
                    .write_all(format!("HTTP/1.1 {code} X\r\ncontent-length: 0\r\n\r\n").as_bytes())
                    .await;
            }
        });
        let http = |p: &str, e| ProbeKind::Http {
            path: p.into(),
            expect_status: e,
        };
        let t = Duration::from_secs(2);
        let cwd = Path::new(".");
        assert!(run(&http("/ok", None), Some(port), &[], cwd, t)
            .await
            .is_ok());
        assert!(run(&http("/no", None), Some(port), &[], cwd, t)
            .await
            .is_err());
        assert!(run(&http("/no", Some(503)), Some(port), &[], cwd, t)
            .await
            .is_ok());
        assert!(run(&ProbeKind::Tcp { addr: None }, Some(port), &[], cwd, t)
            .await
            .is_ok());
        let cmd = |c: &str| ProbeKind::Command(c.into());
        assert!(run(&cmd("exit 0"), None, &[], cwd, t).await.is_ok());
        assert!(run(&cmd("exit 1"), None, &[], cwd, t).await.is_err());
        let slow = run(&cmd("sleep 5"), None, &[], cwd, Duration::from_millis(100)).await;
        assert!(slow.unwrap_err().contains("timed out"));
    }
}
