//! systemd's notify protocol (`sd_notify(3)`), for `Type=notify` units (`drove export
//! systemd`): one datagram per state change to the Unix socket named by
//! `NOTIFY_SOCKET` (a path, or an abstract name starting with `@`).
//!
//! drove sends `READY=1` once its listeners are bound and every service has all its
//! instances ready; `RELOADING=1` (with `MONOTONIC_USEC`) and `READY=1` around each
//! reload; `STOPPING=1` when it shuts down; and, when systemd asks for a watchdog
//! (`WATCHDOG_USEC`), `WATCHDOG=1` at half that period from a task on the runtime that
//! does the work — a stuck runtime stops pinging and systemd restarts drove. Without
//! `NOTIFY_SOCKET` every call does nothing.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// Where notifications go (nowhere when drove does not run under systemd).
#[derive(Debug)]
pub struct Notifier {
    target: Option<(UnixDatagram, std::os::unix::net::SocketAddr)>,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// From the environment systemd gives a service: `NOTIFY_SOCKET`, `WATCHDOG_USEC`
    /// (with `WATCHDOG_PID`, when set, naming this process).
    pub fn from_env() -> Notifier {
        let target = std::env::var_os("NOTIFY_SOCKET").and_then(|p| {
            let p = p.to_string_lossy().into_owned();
            let addr = match p.strip_prefix('@') {
                Some(name) => {
                    use std::os::linux::net::SocketAddrExt;
                    std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
                }
                None => std::os::unix::net::SocketAddr::from_pathname(&p),
            };
            // Non-blocking: a notify socket that is not read (its queue full) must cost
            // a lost message, never a stuck runtime thread.
            let sock = UnixDatagram::unbound().and_then(|s| s.set_nonblocking(true).map(|()| s));
            match (sock, addr) {
                (Ok(s), Ok(a)) => Some((s, a)),
                (Err(e), _) | (_, Err(e)) => {
                    tracing::warn!(socket = %p, error = %e, "NOTIFY_SOCKET unusable; not notifying systemd");
                    None
                }
            }
        });
        let ours = std::env::var("WATCHDOG_PID")
            .ok()
            .and_then(|p| p.parse::<u32>().ok())
            .is_none_or(|p| p == std::process::id());
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|u| u.parse::<u64>().ok())
            .filter(|u| *u > 0 && ours)
            .map(Duration::from_micros);
        Notifier { target, watchdog }
    }

    /// Sends one message (`KEY=VALUE` lines); errors are logged, never fatal.
    pub fn send(&self, msg: &str) {
        let Some((s, addr)) = &self.target else {
            return;
        };
        if let Err(e) = s.send_to_addr(msg.as_bytes(), addr) {
            tracing::warn!(error = %e, "cannot notify systemd");
        }
    }

    /// `READY=1` with a status line.
    pub fn ready(&self, status: &str) {
        self.send(&format!(
            "READY=1\nSTATUS={status}\nMAINPID={}",
            std::process::id()
        ));
    }

    /// `RELOADING=1`: a reload starts (systemd wants the monotonic time with it).
    pub fn reloading(&self) {
        self.send(&format!(
            "RELOADING=1\nMONOTONIC_USEC={}\nSTATUS=reloading the config",
            monotonic_usec()
        ));
    }

    /// `STOPPING=1`.
    pub fn stopping(&self) {
        self.send("STOPPING=1\nSTATUS=shutting down");
    }

    /// Pings the watchdog every half period until the runtime stops running this task;
    /// None when systemd asked for no watchdog.
    pub fn spawn_watchdog(self: &std::sync::Arc<Self>) -> Option<tokio::task::JoinHandle<()>> {
        let period = self.watchdog? / 2;
        let me = self.clone();
        Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            loop {
                tick.tick().await;
                me.send("WATCHDOG=1");
            }
        }))
    }
}

/// CLOCK_MONOTONIC in microseconds (what systemd compares `MONOTONIC_USEC` with).
fn monotonic_usec() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000 + t.tv_nsec() as u64 / 1_000)
        .unwrap_or(0)
}
