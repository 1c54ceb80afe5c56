//! What the supervisor tells the runtime, and what `status` returns.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::sync::oneshot;

/// One instance slot of a service: `web.2`. The index is 1-based and stable: crash
/// restarts, rolling restarts and replacements keep it (only the one surge instance of a
/// rollout takes a new, temporary index).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InstanceId {
    /// Service name.
    pub service: String,
    /// 1-based slot index.
    pub index: u32,
}

impl InstanceId {
    /// `InstanceId { service, index }`.
    pub fn new(service: impl Into<String>, index: u32) -> InstanceId {
        InstanceId {
            service: service.into(),
            index,
        }
    }
}

impl fmt::Display for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.service, self.index)
    }
}

impl FromStr for InstanceId {
    type Err = String;
    /// Parses `web.2`.
    fn from_str(s: &str) -> Result<Self, String> {
        let (service, index) = s
            .rsplit_once('.')
            .ok_or_else(|| format!("{s:?} is not <service>.<index>"))?;
        let index: u32 = index
            .parse()
            .ok()
            .filter(|i| *i > 0)
            .ok_or_else(|| format!("{s:?}: index must be a number >= 1"))?;
        if service.is_empty() {
            return Err(format!("{s:?}: empty service name"));
        }
        Ok(InstanceId::new(service, index))
    }
}

impl Serialize for InstanceId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Lifecycle state of an instance slot (see LIFECYCLE.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum InstanceState {
    /// Process spawned, ready probe not passed yet.
    Starting,
    /// In rotation.
    Ready,
    /// Being taken out of rotation (waiting for the runtime's `done`).
    Draining,
    /// Out of rotation by request, process still running.
    Drained,
    /// Stop signal sent, waiting for the process group to end.
    Stopping,
    /// Stopped by the supervisor; the slot is gone.
    Stopped,
    /// Exited, waiting to be restarted.
    Backoff,
    /// Exited quickly too many times in a row; still retried every `max_delay`.
    Crashloop,
    /// Exited and not restarted (restart policy).
    Exited,
}

impl fmt::Display for InstanceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            InstanceState::Starting => "starting",
            InstanceState::Ready => "ready",
            InstanceState::Draining => "draining",
            InstanceState::Drained => "drained",
            InstanceState::Stopping => "stopping",
            InstanceState::Stopped => "stopped",
            InstanceState::Backoff => "backoff",
            InstanceState::Crashloop => "crashloop",
            InstanceState::Exited => "exited",
        })
    }
}

/// Instance lifecycle events for the runtime (which maps them onto the balancer).
#[derive(Debug)]
pub enum InstanceEvent {
    /// Passed its ready probe: put it in rotation now.
    Ready {
        /// The instance.
        id: InstanceId,
        /// Where it listens (`127.0.0.1:port`; port 0 for services without port).
        addr: SocketAddr,
    },
    /// Take it out of rotation, wait until its in-flight requests are 0 (or `grace`),
    /// close idle upstream connections, then send `done`. The supervisor signals the
    /// process only after `done` (a dropped sender counts as done).
    Draining {
        /// The instance.
        id: InstanceId,
        /// Longest the runtime should wait for in-flight requests.
        grace: Duration,
        /// Acknowledgement.
        done: oneshot::Sender<()>,
    },
    /// Back into rotation after a drain.
    Undrained {
        /// The instance.
        id: InstanceId,
        /// Where it listens.
        addr: SocketAddr,
    },
    /// Its process exited or was stopped: remove it from rotation.
    Gone {
        /// The instance.
        id: InstanceId,
    },
    /// State change, for logs and status displays.
    StateChanged {
        /// The instance.
        id: InstanceId,
        /// New state.
        state: InstanceState,
    },
}

impl InstanceEvent {
    /// The instance the event is about.
    pub fn id(&self) -> &InstanceId {
        match self {
            InstanceEvent::Ready { id, .. }
            | InstanceEvent::Draining { id, .. }
            | InstanceEvent::Undrained { id, .. }
            | InstanceEvent::Gone { id }
            | InstanceEvent::StateChanged { id, .. } => id,
        }
    }
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ExitInfo {
    /// Exit code, when it exited.
    pub code: Option<i32>,
    /// Signal number, when killed by a signal.
    pub signal: Option<i32>,
}

impl ExitInfo {
    /// Exited with code 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

impl fmt::Display for ExitInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.code, self.signal) {
            (Some(c), _) => write!(f, "exit code {c}"),
            (None, Some(s)) => match nix::sys::signal::Signal::try_from(s) {
                Ok(sig) => write!(f, "signal {}", sig.as_str()),
                Err(_) => write!(f, "signal {s}"),
            },
            (None, None) => f.write_str("unknown exit"),
        }
    }
}

/// A snapshot of one instance.
#[derive(Debug, Clone)]
pub struct InstanceStatus {
    /// The instance.
    pub id: InstanceId,
    /// Pid (= process group id) of the current process.
    pub pid: Option<u32>,
    /// Port of the current (or last) process.
    pub port: Option<u16>,
    /// Lifecycle state.
    pub state: InstanceState,
    /// Processes started in this slot after the first one.
    pub restarts: u32,
    /// RSS summed over the process group (bytes).
    pub rss_bytes: Option<u64>,
    /// User + system CPU time summed over the live processes of the group.
    pub cpu_seconds: Option<f64>,
    /// Time since the current process was spawned.
    pub uptime: Option<Duration>,
    /// How the previous process ended.
    pub last_exit: Option<ExitInfo>,
    /// When the previous process ended.
    pub last_exit_at: Option<SystemTime>,
    /// Current backoff delay while in `Backoff`/`Crashloop`.
    pub backoff: Option<Duration>,
    /// When the next start is due while in `Backoff`/`Crashloop`.
    pub retry_at: Option<SystemTime>,
    /// Why the instance is not ready, in words: the exit or refused start and the
    /// crash-loop rule (`Backoff`, `Crashloop`, `Exited`), or the failing ready probe
    /// (`Starting`). `None` when there is nothing to explain.
    pub why: Option<String>,
    /// The last failed ready probe of the current process (`None` once one passed).
    pub last_probe_error: Option<String>,
}

/// Result of a completed rolling restart.
#[derive(Debug, Clone, Serialize)]
pub struct RollingReport {
    /// The service.
    pub service: String,
    /// The extra instance that held capacity during the rollout (stopped at the end);
    /// `None` when there was nothing to restart.
    pub surge: Option<InstanceId>,
    /// The instances restarted, in order; each kept its id and port.
    pub replaced: Vec<Replacement>,
    /// Total time taken.
    #[serde(serialize_with = "ser_secs")]
    pub elapsed: Duration,
}

/// One instance restarted in place by a rolling restart: same id, same port, a new
/// process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Replacement {
    /// The instance.
    pub instance: InstanceId,
    /// Pid of the process it had before.
    pub old_pid: Option<u32>,
    /// Pid of the process it runs now (ready).
    pub new_pid: Option<u32>,
}

fn ser_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_id_roundtrip() {
        let id: InstanceId = "web-api.12".parse().unwrap();
        assert_eq!(id, InstanceId::new("web-api", 12));
        assert_eq!(id.to_string(), "web-api.12");
        assert!("web".parse::<InstanceId>().is_err());
        assert!("web.0".parse::<InstanceId>().is_err());
    }
}
