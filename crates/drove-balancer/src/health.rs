//! Active health probes: HTTP (path, expected status) or TCP connect, with rise/fall.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::Balancer;

/// What an active probe does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeKind {
    /// `GET path` over HTTP/1.1; healthy when the status is `expect_status`, or any
    /// 2xx/3xx when None.
    Http {
        /// Request path, e.g. `/health`.
        path: String,
        /// Exact status expected.
        expect_status: Option<u16>,
    },
    /// A TCP connect that succeeds within the timeout.
    Tcp,
}

/// Active health check settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveHealth {
    /// The probe.
    pub kind: ProbeKind,
    /// Time between probes of one backend.
    pub interval: Duration,
    /// A probe slower than this fails.
    pub timeout: Duration,
    /// Consecutive successes that bring a down backend up.
    pub rise: u32,
    /// Consecutive failures that take an up backend down.
    pub fall: u32,
}

impl Balancer {
    /// Runs active probes against every backend of the (changing) set until the returned
    /// handle is aborted or the balancer is dropped.
    pub fn spawn_health_checks(self: &Arc<Self>, cfg: ActiveHealth) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            // `interval` panics on a zero period; a config that slipped through
            // validation must not take the balancer's probe task down with it.
            let mut tick = tokio::time::interval(cfg.interval.max(Duration::from_millis(1)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(balancer) = weak.upgrade() else {
                    return;
                };
                let backends = balancer.snapshot();
                drop(balancer);
                let probes = backends.into_iter().map(|b| {
                    let cfg = &cfg;
                    let weak = &weak;
                    async move {
                        let ok = probe(&cfg.kind, b.addr(), cfg.timeout).await;
                        if let Some(up) = b.record_probe(ok, cfg.rise, cfg.fall) {
                            if up {
                                tracing::info!(backend = %b.id(), "backend healthy (active probe)");
                            } else {
                                tracing::warn!(backend = %b.id(), "backend unhealthy (active probe)");
                                if let Some(balancer) = weak.upgrade() {
                                    balancer.note_left_rotation();
                                }
                            }
                        }
                    }
                });
                futures_join_all(probes).await;
            }
        })
    }
}

/// Runs the futures concurrently on this task (no extra dependency for a join_all).
async fn futures_join_all<F: std::future::Future<Output = ()>>(futs: impl Iterator<Item = F>) {
    let mut set = Vec::new();
    for f in futs {
        set.push(Box::pin(f));
    }
    std::future::poll_fn(|cx| {
        set.retain_mut(|f| f.as_mut().poll(cx).is_pending());
        if set.is_empty() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await
}

/// One probe; true when healthy.
pub async fn probe(kind: &ProbeKind, addr: SocketAddr, timeout: Duration) -> bool {
    tokio::time::timeout(timeout, probe_inner(kind, addr))
        .await
        .unwrap_or(false)
}

async fn probe_inner(kind: &ProbeKind, addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect(addr).await else {
        return false;
    };
    let (path, expect) = match kind {
        ProbeKind::Tcp => return true,
        ProbeKind::Http {
            path,
            expect_status,
        } => (path, *expect_status),
    };
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: drove-health\r\nConnection: close\r\n\r\n"
    );
    if stream.write_all(req.as_bytes()).await.is_err() {
        return false;
    }
    let mut buf = [0u8; 1024];
    let mut len = 0;
    loop {
        match stream.read(&mut buf[len..]).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => len += n,
        }
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        let parsed = resp.parse(&buf[..len]);
        match (parsed, resp.code) {
            // The status line is all a probe needs: httparse sets `code` before it
            // parses headers, so a partial head or more headers than our slots (an app
            // behind a chatty framework) still decides here instead of failing the probe.
            (Ok(_) | Err(httparse::Error::TooManyHeaders), Some(code)) => {
                return match expect {
                    Some(e) => code == e,
                    None => (200..400).contains(&code),
                };
            }
            (Err(_), _) => return false,
            (Ok(_), None) if len == buf.len() => return false,
            (Ok(_), None) => continue,
        }
    }
}
