//! What to run: the supervisor's own description of a service.
//!
//! The runtime maps the user's configuration into these types; the supervisor never sees
//! TOML. [`ServiceSpec::validate`] checks what a spec must satisfy on its own;
//! [`crate::Supervisor::start`] additionally checks names and dependencies across specs.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use nix::sys::signal::Signal;

use crate::error::SupervisorError;

/// One service: a command run as `instances` identical processes.
#[derive(Debug, Clone)]
pub struct ServiceSpec {
    /// Unique service name; instance ids are `<name>.<index>`, so it may not contain `.`.
    pub name: String,
    /// What to run; `{port}` and `{instance}` are substituted per instance.
    pub command: CommandSpec,
    /// Number of instances started initially (changed at runtime by `scale`).
    pub instances: u32,
    /// How each instance gets its port.
    pub port: PortSpec,
    /// Extra environment; the supervisor adds `PORT`, `INSTANCE_ID`, `DROVE_SERVICE`
    /// and `DROVE_INSTANCE`. The supervisor's own environment is inherited.
    pub env: Vec<(String, String)>,
    /// Working directory of the processes (and of command probes).
    pub cwd: PathBuf,
    /// Readiness probe gating `Ready`; `None` = ready as soon as spawned.
    pub ready: Option<Probe>,
    /// Liveness probe while ready: `fall` consecutive failures restart the instance (drained).
    pub health: Option<Probe>,
    /// Signal sent to the instance's process group to stop it.
    pub stop_signal: Signal,
    /// Time between the stop signal and SIGKILL to the group.
    pub stop_grace: Duration,
    /// What to do when a process exits on its own.
    pub restart: RestartPolicy,
    /// RSS limit in bytes over the instance's process group; above it: drained restart.
    pub max_memory: Option<u64>,
    /// Services whose instances must all be ready before this one starts.
    pub depends_on: Vec<String>,
    /// Where and how much of the instances' output is kept.
    pub logs: LogSpec,
    /// Whether a balancer routes to this service (informational for the runtime).
    pub balanced: bool,
}

/// How a process is started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandSpec {
    /// Run through `sh -c`.
    Shell(String),
    /// Executed directly; the first element is the program.
    Argv(Vec<String>),
}

/// Where instance ports come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortSpec {
    /// Instance `k` gets `base + k - 1`; new slots (surge, scale-up) take the lowest free
    /// index whose port is bindable.
    Base(u16),
    /// A free port chosen by the OS at every spawn (so a restarted instance may listen
    /// on another port: `Ready` carries the current address).
    Auto,
    /// The instance has no port (a worker); `Ready` then carries `127.0.0.1:0`.
    None,
}

/// A readiness or liveness probe.
#[derive(Debug, Clone)]
pub struct Probe {
    /// What is checked.
    pub kind: ProbeKind,
    /// Time between two probes.
    pub interval: Duration,
    /// Time one probe may take before it counts as failed.
    pub timeout: Duration,
    /// Consecutive successes that make a starting instance ready.
    pub rise: u32,
    /// Consecutive failures that make a ready instance unhealthy.
    pub fall: u32,
    /// Time a new process has to become ready (readiness probes only).
    pub start_timeout: Duration,
}

/// What a probe checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeKind {
    /// `GET path` on `127.0.0.1:{port}`; ok = `expect_status`, or any 2xx/3xx when `None`.
    Http {
        /// Request path, starting with `/`.
        path: String,
        /// Exact status expected.
        expect_status: Option<u16>,
    },
    /// A TCP connect succeeds; `None` = the instance's port on 127.0.0.1.
    Tcp {
        /// Address to connect to.
        addr: Option<SocketAddr>,
    },
    /// `sh -c` command (instance env and cwd); exit status 0 = ok.
    Command(String),
}

/// Restart behaviour after a process exits on its own.
#[derive(Debug, Clone)]
pub struct RestartPolicy {
    /// When to restart.
    pub policy: Policy,
    /// First backoff delay; doubles after each quick exit.
    pub initial_delay: Duration,
    /// Backoff ceiling (also the retry period in `Crashloop`).
    pub max_delay: Duration,
    /// Uptime after which a process counts as stable: backoff and crash count reset.
    pub reset_after: Duration,
    /// Consecutive quick exits (each within `reset_after` of start) that mean `Crashloop`.
    pub crashloop_after: u32,
}

/// When a process that exited on its own is restarted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Always.
    Always,
    /// Only after a non-zero exit code or a signal.
    OnFailure,
    /// Never: the instance stays `Exited`.
    Never,
}

/// Per-instance log files: `<dir>/<service>.<index>.log`, rotated by size.
#[derive(Debug, Clone)]
pub struct LogSpec {
    /// Directory of the log files (created if missing).
    pub dir: PathBuf,
    /// Size in bytes at which a file is rotated; 0 = never rotate.
    pub max_size: u64,
    /// Rotated files kept (`.1` newest … `.keep` oldest).
    pub keep: u32,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            policy: Policy::Always,
            initial_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
            reset_after: Duration::from_secs(30),
            crashloop_after: 5,
        }
    }
}

impl Probe {
    /// A probe with common defaults (1 s interval and timeout, rise 1, fall 3, 60 s to start).
    pub fn new(kind: ProbeKind) -> Probe {
        Probe {
            kind,
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            rise: 1,
            fall: 3,
            start_timeout: Duration::from_secs(60),
        }
    }
}

impl ServiceSpec {
    /// A spec with defaults for everything but the name and command: one instance, an
    /// auto port, no probes, SIGTERM with 10 s grace, restart always, logs in `./logs`.
    pub fn new(name: impl Into<String>, command: CommandSpec) -> ServiceSpec {
        ServiceSpec {
            name: name.into(),
            command,
            instances: 1,
            port: PortSpec::Auto,
            env: Vec::new(),
            cwd: PathBuf::from("."),
            ready: None,
            health: None,
            stop_signal: Signal::SIGTERM,
            stop_grace: Duration::from_secs(10),
            restart: RestartPolicy::default(),
            max_memory: None,
            depends_on: Vec::new(),
            logs: LogSpec {
                dir: PathBuf::from("logs"),
                max_size: 10 * 1024 * 1024,
                keep: 3,
            },
            balanced: true,
        }
    }

    /// Checks what the spec must satisfy on its own (not names of other services).
    pub fn validate(&self) -> Result<(), SupervisorError> {
        let bad = |reason: String| {
            Err(SupervisorError::InvalidSpec {
                service: self.name.clone(),
                reason,
            })
        };
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return bad("name must be non-empty and use only [A-Za-z0-9_-]".into());
        }
        let words: Vec<&str> = match &self.command {
            CommandSpec::Shell(s) if s.trim().is_empty() => return bad("command is empty".into()),
            CommandSpec::Argv(v) if v.is_empty() || v[0].is_empty() => {
                return bad("command is empty".into())
            }
            CommandSpec::Shell(s) => vec![s.as_str()],
            CommandSpec::Argv(v) => v.iter().map(String::as_str).collect(),
        };
        if self.port == PortSpec::None {
            if words
                .iter()
                .any(|w| drove_template::placeholders(w).contains(&"port"))
            {
                return bad("command uses {port} but the service has no port".into());
            }
            for (what, p) in [("ready", &self.ready), ("health", &self.health)] {
                if let Some(p) = p {
                    if matches!(
                        p.kind,
                        ProbeKind::Http { .. } | ProbeKind::Tcp { addr: None }
                    ) {
                        return bad(format!(
                            "{what} probe targets the instance port but the service has no port"
                        ));
                    }
                }
            }
        }
        if let PortSpec::Base(base) = self.port {
            if base == 0 {
                return bad("base port must not be 0 (use auto)".into());
            }
            if u32::from(base) + self.instances.saturating_sub(1) > u32::from(u16::MAX) {
                return bad(format!(
                    "base port {base} + {} instances exceeds 65535",
                    self.instances
                ));
            }
        }
        for (what, p) in [("ready", &self.ready), ("health", &self.health)] {
            let Some(p) = p else { continue };
            if p.interval.is_zero() || p.timeout.is_zero() {
                return bad(format!("{what} probe interval and timeout must be > 0"));
            }
            if p.rise == 0 || p.fall == 0 {
                return bad(format!("{what} probe rise and fall must be >= 1"));
            }
            if what == "ready" && p.start_timeout.is_zero() {
                return bad("ready probe start_timeout must be > 0".into());
            }
            if let ProbeKind::Http { path, .. } = &p.kind {
                if !path.starts_with('/') || path.contains(['\r', '\n', ' ']) {
                    return bad(format!("{what} probe path {path:?} must start with / and contain no spaces or line breaks"));
                }
            }
        }
        let r = &self.restart;
        if r.initial_delay.is_zero() || r.initial_delay > r.max_delay {
            return bad("restart delays need 0 < initial_delay <= max_delay".into());
        }
        if r.crashloop_after == 0 {
            return bad("restart crashloop_after must be >= 1".into());
        }
        if self.max_memory == Some(0) {
            return bad("max_memory must be > 0".into());
        }
        if self.depends_on.iter().any(|d| d == &self.name) {
            return bad("a service cannot depend on itself".into());
        }
        for (k, _) in &self.env {
            if k.is_empty() || k.contains(['=', '\0']) {
                return bad(format!("invalid environment variable name {k:?}"));
            }
        }
        Ok(())
    }

    /// Start timeout of a new process: the ready probe's, or none needed without probe.
    pub(crate) fn start_timeout(&self) -> Duration {
        self.ready
            .as_ref()
            .map_or(Duration::from_secs(60), |p| p.start_timeout)
    }
}

/// `{port}` and `{instance}` substituted (drove-template syntax: `{{`/`}}` are literal
/// braces, shell `${...}` and `{a,b}` are left alone).
pub(crate) fn substitute(s: &str, port: Option<u16>, instance: u32) -> String {
    let port = port.map(|p| p.to_string()).unwrap_or_default();
    let instance = instance.to_string();
    drove_template::render(s, &[("port", &port), ("instance", &instance)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn substitution() {
        assert_eq!(
            substitute("x --port {port} -i {instance}", Some(5001), 2),
            "x --port 5001 -i 2"
        );
        // Escapes and shell braces are not placeholders.
        assert_eq!(
            substitute("echo '{{port}}' ${port} {a,b}", Some(5001), 2),
            "echo '{port}' ${port} {a,b}"
        );
    }

    #[test]
    fn validation() {
        let ok = ServiceSpec::new("web", CommandSpec::Shell("true".into()));
        ok.validate().unwrap();
        let mut s = ok.clone();
        s.name = "web.1".into();
        assert!(s.validate().is_err());
        let mut s = ok.clone();
        s.port = PortSpec::None;
        s.command = CommandSpec::Shell("serve {port}".into());
        assert!(s.validate().is_err());
        let mut s = ok.clone();
        s.restart.initial_delay = Duration::from_secs(60);
        assert!(s.validate().is_err());
        let mut s = ok.clone();
        s.port = PortSpec::Base(65535);
        s.instances = 2;
        assert!(s.validate().is_err());
        let mut s = ok;
        s.depends_on = vec!["web".into()];
        assert!(s.validate().is_err());
    }
}
