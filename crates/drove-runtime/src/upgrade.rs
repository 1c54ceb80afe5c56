//! `drove upgrade` (and SIGUSR2): the running drove replaced by a new binary with no
//! downtime and without touching the app.
//!
//! The mechanism is an in-place `execve`, chosen over an nginx-style overlap of two
//! processes because drove owns the app's processes: with `execve` the PID stays, so
//! every instance stays drove's child (exit statuses still come from `waitpid`, systemd
//! still tracks the same main PID, the guardian still watches the same parent), and no
//! second drove ever competes for a port or an instance. What lives only in memory is
//! written into a hand-over ([`Handoff`]), and the descriptors it names are kept open
//! across `execve`:
//!
//! 1. **Check** — `NEW __upgrade-check -c FILE` must answer with the hand-over format this
//!    drove writes and a config it accepts; otherwise nothing happens and the caller
//!    gets the reason.
//! 2. **Freeze** — the supervisor starts no process from now on and lists the running
//!    ones (PID, port, readiness, output pipes).
//! 3. **Hand over connections** — the proxy workers stop accepting (the listening
//!    sockets stay open: connections queue in the kernel, none is refused); each plain
//!    HTTP/1.x connection is handed over between two requests, each tunnel when both
//!    directions wait; HTTP/2 gets GOAWAY, TLS connections finish (see
//!    drove-proxy's `handoff.rs`). Bounded by `timeouts.shutdown_grace`.
//! 4. **Exec** — the descriptors lose `FD_CLOEXEC`, the hand-over goes to a file named
//!    by `DROVE_HANDOFF`, and the new binary replaces this one with the same arguments.
//!    The new drove reads it back in [`take_inherited`] and starts from it instead of
//!    binding and spawning.
//!
//! If `execve` itself fails, this drove thaws the supervisor and serves the very same
//! sockets and connections again. Instances are spawned without `PR_SET_PDEATHSIG` when
//! the guardian runs: that signal fires when the spawning *thread* ends, and `execve`
//! ends every thread but one.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use drove_api as api;
use drove_proxy::handoff::HandedConnection;
use drove_supervisor::InstanceHandoff;
use serde::{Deserialize, Serialize};

use crate::Running;

/// The version of the hand-over's shape; a binary that reads another refuses it at
/// the check, before anything is stopped.
pub const HANDOFF_FORMAT: u32 = 1;
/// The environment variable naming the hand-over file.
pub const HANDOFF_ENV: &str = "DROVE_HANDOFF";
/// How long the new binary's check may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(20);

/// Everything the next drove needs that lived in this one's memory.
#[derive(Debug, Serialize, Deserialize)]
pub struct Handoff {
    /// [`HANDOFF_FORMAT`].
    pub format: u32,
    /// The balancer's listening sockets (descriptors).
    pub listeners: Vec<i32>,
    /// The admin API's listening socket.
    pub admin: Option<i32>,
    /// The guardian's PID and the pipe to it.
    pub guardian: Option<(u32, i32)>,
    /// The running instances.
    pub instances: Vec<InstanceHandoff>,
    /// Each service's desired instance count (a `drove scale` since startup holds).
    pub desired: Vec<(String, u32)>,
    /// Client connections handed over.
    pub connections: Vec<HandedFd>,
    /// The proxy's counters, so that rates and totals go on.
    pub counters: Counters,
    /// Each backend's counters, latency EWMA and health verdict.
    pub backends: Vec<drove_balancer::BackendCarry>,
    /// The dashboard's recent samples.
    pub history: Vec<crate::admin::history::CarriedSample>,
    /// Upgrades before this one, and this one's report (completed by the new drove).
    pub upgrades: u32,
    /// This upgrade, as far as the old drove knows it.
    pub report: api::UpgradeReport,
}

/// A handed-over connection by descriptor.
#[derive(Debug, Serialize, Deserialize)]
pub enum HandedFd {
    /// An HTTP/1.x client between requests.
    Http1 {
        /// Its socket.
        fd: i32,
    },
    /// A tunnel (WebSocket).
    Tunnel {
        /// The client's socket.
        client: i32,
        /// The backend's socket.
        upstream: i32,
        /// The backend's id.
        backend: String,
    },
}

/// The proxy's monotonic counters.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Counters {
    /// `drove_requests_total` etc.: the `ProxyStats` fields by name.
    pub values: Vec<(String, u64)>,
}

/// The binary `drove upgrade` runs when none is given: the path drove was started
/// from (the file there may have been replaced since, which is the point).
pub fn default_binary(r: &Running) -> PathBuf {
    r.exe.clone()
}

/// Step 1: asks `binary` whether it can take over, with the config file in force.
pub async fn check(binary: &Path, config: Option<&Path>) -> Result<api::UpgradeCheck, String> {
    let mut cmd = tokio::process::Command::new(binary);
    cmd.arg("__upgrade-check");
    if let Some(c) = config {
        cmd.arg("-c").arg(c);
    }
    cmd.stdin(std::process::Stdio::null()).kill_on_drop(true);
    let out = tokio::time::timeout(CHECK_TIMEOUT, cmd.output())
        .await
        .map_err(|_| {
            format!(
                "{} did not answer its check within {}s",
                binary.display(),
                CHECK_TIMEOUT.as_secs()
            )
        })?
        .map_err(|e| format!("cannot run {}: {e}", binary.display()))?;
    let said = |b: &[u8]| String::from_utf8_lossy(b).trim().to_string();
    if !out.status.success() {
        return Err(format!(
            "{} refused to take over ({}): {}",
            binary.display(),
            out.status,
            [said(&out.stderr), said(&out.stdout)]
                .into_iter()
                .find(|s| !s.is_empty())
                .unwrap_or_else(|| "no output".into())
        ));
    }
    let answer: api::UpgradeCheck = serde_json::from_slice(&out.stdout).map_err(|e| {
        format!(
            "{} is not a drove that can take over (its check printed {:?}: {e})",
            binary.display(),
            said(&out.stdout)
        )
    })?;
    if answer.handoff_format != HANDOFF_FORMAT {
        return Err(format!(
            "{} (drove {}) reads hand-over format {}, this drove writes {}: upgrade in two steps or restart",
            binary.display(),
            answer.version,
            answer.handoff_format,
            HANDOFF_FORMAT
        ));
    }
    Ok(answer)
}

/// Steps 2–4. Returns only if `execve` failed, after serving again as before.
pub async fn replace(r: &Arc<Running>, binary: PathBuf, check: api::UpgradeCheck) -> String {
    let started = Instant::now();
    // No reload during the hand-over (and none can start: the lock is held until exec).
    let mut reloadable = r.reloadable.lock().await;
    let instances = r.supervisor.freeze().await;
    let grace = r
        .config
        .load()
        .balancer
        .as_ref()
        .map_or(Duration::from_secs(10), |b| b.timeouts.shutdown_grace);
    let handed = match &r.proxy {
        Some(p) => p.hand_off(grace).await,
        None => Default::default(),
    };
    let listeners: Vec<i32> = reloadable
        .listeners
        .as_ref()
        .map(|l| l.raw_fds())
        .unwrap_or_default();
    let admin = reloadable.admin.as_ref().map(|a| a.raw_fd());
    let guardian = r.guardian.as_ref().and_then(|g| g.hand_off());
    let connections: Vec<HandedFd> = handed
        .connections
        .iter()
        .map(|c| match c {
            HandedConnection::Http1(s) => HandedFd::Http1 { fd: s.as_raw_fd() },
            HandedConnection::Tunnel {
                client,
                upstream,
                backend,
            } => HandedFd::Tunnel {
                client: client.as_raw_fd(),
                upstream: upstream.as_raw_fd(),
                backend: backend.clone(),
            },
        })
        .collect();
    let mut keep: Vec<i32> = listeners.clone();
    keep.extend(admin);
    keep.extend(guardian.map(|g| g.1));
    for i in &instances {
        keep.extend(i.stdout_fd);
        keep.extend(i.stderr_fd);
    }
    for c in &connections {
        match c {
            HandedFd::Http1 { fd } => keep.push(*fd),
            HandedFd::Tunnel {
                client, upstream, ..
            } => keep.extend([*client, *upstream]),
        }
    }
    let upgrades = r.upgrades.lock().map(|u| u.count).unwrap_or(0);
    let handoff = Handoff {
        format: HANDOFF_FORMAT,
        listeners,
        admin,
        guardian,
        desired: r.supervisor.desired_counts(),
        counters: r.proxy.as_ref().map(counters).unwrap_or_default(),
        backends: r.balancer.as_ref().map(|b| b.carry()).unwrap_or_default(),
        history: reloadable
            .admin_state
            .as_ref()
            .map(|a| a.history().carry())
            .unwrap_or_default(),
        upgrades,
        report: api::UpgradeReport {
            from_version: env!("CARGO_PKG_VERSION").to_string(),
            to_version: check.version.clone(),
            binary: binary.display().to_string(),
            instances_kept: instances.len(),
            connections_handed: connections.len(),
            connections_closed: handed.still_open,
            took_ms: started.elapsed().as_millis() as u64,
        },
        instances,
        connections,
    };
    // systemd (Type=notify) waits for the new drove's READY=1, as around a reload.
    r.notify.reloading();
    let failed = match exec(&binary, &handoff, &keep) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    // Still here: nothing was replaced. Serve again exactly as before.
    tracing::error!(error = %failed, "upgrade failed; drove goes on serving");
    r.notify.ready("upgrade failed; serving as before");
    r.supervisor.thaw();
    if let Some(p) = &r.proxy {
        p.adopt(handed.connections);
        if let Some(l) = reloadable.listeners.take() {
            match l.restart(p.clone(), r.shutdown.subscribe()) {
                Ok(next) => reloadable.listeners = Some(next),
                Err(e) => tracing::error!(error = %e, "cannot serve the listeners again"),
            }
        }
    }
    failed
}

/// The proxy's counters by name.
fn counters(p: &drove_proxy::Proxy) -> Counters {
    Counters {
        values: p.stats().counters(),
    }
}

/// Writes the hand-over and replaces this program; returns only on failure.
fn exec(
    binary: &Path,
    handoff: &Handoff,
    keep: &[i32],
) -> Result<std::convert::Infallible, String> {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    use std::os::unix::process::CommandExt;
    let path = std::env::temp_dir().join(format!("drove-handoff-{}.json", std::process::id()));
    let text =
        serde_json::to_vec(handoff).map_err(|e| format!("cannot write the hand-over: {e}"))?;
    write_private(&path, &text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    for fd in keep {
        fcntl(*fd, FcntlArg::F_SETFD(FdFlag::empty()))
            .map_err(|e| format!("cannot keep descriptor {fd} open across exec: {e}"))?;
    }
    println!(
        "drove: upgrading to {} ({} instance(s) kept, {} connection(s) handed over)",
        binary.display(),
        handoff.instances.len(),
        handoff.connections.len()
    );
    let e = std::process::Command::new(binary)
        .args(std::env::args_os().skip(1))
        .env(HANDOFF_ENV, &path)
        .exec();
    // The descriptors go back to close-on-exec: the next spawned instance must not
    // inherit them.
    for fd in keep {
        let _ = fcntl(*fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC));
    }
    let _ = std::fs::remove_file(&path);
    Err(format!("cannot execute {}: {e}", binary.display()))
}

/// A file only drove's user can read (it names descriptors, not secrets, but still).
fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(data)
}

/// In the new drove: the hand-over named by `DROVE_HANDOFF`, if this process was started
/// by an upgrade. The variable is removed (instances must not inherit it) and the file
/// deleted.
pub fn take_inherited() -> anyhow::Result<Option<Handoff>> {
    let Some(path) = std::env::var_os(HANDOFF_ENV) else {
        return Ok(None);
    };
    std::env::remove_var(HANDOFF_ENV);
    let text = std::fs::read(&path);
    let _ = std::fs::remove_file(&path);
    let text = text.map_err(|e| {
        anyhow::anyhow!(
            "cannot read the upgrade's hand-over {}: {e}",
            path.to_string_lossy()
        )
    })?;
    let h: Handoff = serde_json::from_slice(&text)
        .map_err(|e| anyhow::anyhow!("the upgrade's hand-over is unreadable: {e}"))?;
    if h.format != HANDOFF_FORMAT {
        anyhow::bail!(
            "the upgrade's hand-over has format {}, this drove reads {HANDOFF_FORMAT}",
            h.format
        );
    }
    Ok(Some(h))
}

/// In the new drove: the connections of a hand-over, as sockets again.
pub fn connections(fds: &[HandedFd]) -> Vec<HandedConnection> {
    use drove_proxy::handoff::stream_from_fd;
    let mut out = Vec::new();
    for c in fds {
        let got = match c {
            HandedFd::Http1 { fd } => stream_from_fd(*fd).map(HandedConnection::Http1),
            HandedFd::Tunnel {
                client,
                upstream,
                backend,
            } => stream_from_fd(*client).and_then(|c| {
                Ok(HandedConnection::Tunnel {
                    client: c,
                    upstream: stream_from_fd(*upstream)?,
                    backend: backend.clone(),
                })
            }),
        };
        match got {
            Ok(c) => out.push(c),
            Err(e) => tracing::warn!(error = %e, "a handed-over connection is lost"),
        }
    }
    out
}

/// Runs a whole upgrade for the admin API and SIGUSR2: the check (its failure is the
/// answer), then the replacement in the background.
pub async fn start(
    r: &Arc<Running>,
    binary: Option<PathBuf>,
) -> Result<api::UpgradeAnswer, String> {
    let binary = binary.unwrap_or_else(|| default_binary(r));
    let config = r.config.load().path.clone();
    if r.guardian.is_none() && !r.supervisor.services().is_empty() {
        let why = "no guardian process runs, so the instances carry PR_SET_PDEATHSIG and would be killed by the upgrade's execve: restart drove instead".to_string();
        if let Ok(mut u) = r.upgrades.lock() {
            u.failed = Some(why.clone());
        }
        return Err(why);
    }
    let record_failure = |why: &str| {
        if let Ok(mut u) = r.upgrades.lock() {
            u.failed = Some(why.to_string());
        }
    };
    let checked = match check(&binary, config.as_deref()).await {
        Ok(c) => c,
        Err(why) => {
            record_failure(&why);
            return Err(why);
        }
    };
    if let Ok(mut u) = r.upgrades.lock() {
        u.failed = None;
    }
    let answer = api::UpgradeAnswer {
        binary: binary.display().to_string(),
        version: checked.version.clone(),
        count_before: r.upgrades.lock().map(|u| u.count).unwrap_or(0),
    };
    let r2 = r.clone();
    tokio::spawn(async move {
        // Let the answer reach the caller before the admin listener changes hands.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let why = replace(&r2, binary, checked).await;
        if let Ok(mut u) = r2.upgrades.lock() {
            u.failed = Some(why);
        }
    });
    Ok(answer)
}
