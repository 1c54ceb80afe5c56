//! `drove export systemd`: a unit that runs drove as a system service (docs/operations.md).
//!
//! `Type=notify`: drove says `READY=1` once its listeners are bound and every instance is
//! ready, `RELOADING=1`/`READY=1` around reloads and `STOPPING=1` at shutdown
//! (drove-runtime `notify.rs`); `WatchdogSec` is pinged from drove's runtime.
//! `ExecReload` is `drove reload`. `KillMode=mixed`: systemd sends SIGTERM to drove
//! alone, which drains and stops the instances in reverse dependency order; only what
//! is left after `TimeoutStopSec` gets SIGKILL. That timeout covers the proxy's
//! shutdown grace plus the longest stop grace of a service, with a margin.

use std::time::Duration;

/// Slack on top of the graces, for the last steps of a shutdown (log flushes, exits).
const STOP_MARGIN: Duration = Duration::from_secs(15);
/// A watchdog period generous enough for a loaded machine, short enough to matter.
const WATCHDOG: Duration = Duration::from_secs(30);

/// The unit for `config` (loaded from `path`), running the drove at `exe`.
pub fn unit(
    config: &drove_config::Config,
    path: &std::path::Path,
    exe: &std::path::Path,
) -> String {
    let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let dir = path
        .parent()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "/".into());
    let shutdown_grace = config
        .balancer
        .as_ref()
        .map_or(Duration::ZERO, |b| b.timeouts.shutdown_grace);
    let stop_grace = config
        .services
        .iter()
        .map(|s| s.stop.grace)
        .max()
        .unwrap_or(Duration::ZERO);
    let stop = shutdown_grace + stop_grace + STOP_MARGIN;
    // Starting waits for every instance to be ready: the longest start timeout counts.
    let start = config
        .services
        .iter()
        .filter_map(|s| s.ready.as_ref().map(|r| r.start_timeout))
        .max()
        .unwrap_or(Duration::from_secs(60))
        + STOP_MARGIN;
    let services: Vec<&str> = config.services.iter().map(|s| s.name.as_str()).collect();
    let what = if services.is_empty() {
        "a load balancer".to_string()
    } else {
        format!("{} behind drove's load balancer", services.join(", "))
    };
    let exe = quoted(&exe.display().to_string());
    let file = quoted(&path.display().to_string());
    format!(
        "# drove as a system service: `drove export systemd -c {file} > /etc/systemd/system/drove.service`,\n\
         # then `systemctl daemon-reload && systemctl enable --now drove`. See docs/operations.md.\n\
         [Unit]\n\
         Description=drove: {what}\n\
         After=network-online.target\n\
         Wants=network-online.target\n\
         \n\
         [Service]\n\
         Type=notify\n\
         # Only drove itself may notify (the instances inherit NOTIFY_SOCKET).\n\
         NotifyAccess=main\n\
         ExecStart={exe} up -c {file}\n\
         ExecReload={exe} reload -c {file}\n\
         # A new drove binary without downtime: `systemctl kill -s USR2 drove` (= drove upgrade).\n\
         WorkingDirectory={dir}\n\
         # READY=1 comes once every instance is ready.\n\
         TimeoutStartSec={start}\n\
         # SIGTERM to drove only: it drains and stops the instances in order.\n\
         KillMode=mixed\n\
         # timeouts.shutdown_grace + the longest stop grace + {margin}.\n\
         TimeoutStopSec={stop}\n\
         WatchdogSec={watchdog}\n\
         Restart=on-failure\n\
         RestartSec=1s\n\
         LimitNOFILE=1048576\n\
         \n\
         [Install]\n\
         WantedBy=multi-user.target\n",
        start = secs(start),
        stop = secs(stop),
        margin = secs(STOP_MARGIN),
        watchdog = secs(WATCHDOG),
    )
}

/// A command-line word as systemd reads it: quoted when it has spaces or quotes.
fn quoted(s: &str) -> String {
    if s.chars()
        .any(|c| c.is_whitespace() || c == '"' || c == '\'' || c == '\\')
    {
        format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
    } else {
        s.to_string()
    }
}

/// Whole seconds, rounded up, as systemd reads them (`45s`).
fn secs(d: Duration) -> String {
    let s = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    format!("{s}s")
}
