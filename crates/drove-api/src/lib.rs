//! drove-api: the JSON documents of drove's admin API as serde types, shared by whoever
//! writes or reads them — the admin server (drove-runtime), the CLI (`drove status`,
//! `scale`, `restart`, `drain`, `down`, `reload`), `drove verify` and the end-to-end
//! tests — so that a renamed or retyped field is a compile error in every one of them,
//! not a silent `null` or zero in the one that was forgotten.
//!
//! It owns the shapes only: no HTTP, no tokio, no knowledge of the supervisor or the
//! balancer (the runtime maps their types onto these). Field names are the wire names
//! (the dashboard page reads them too); `docs/admin-api.md` shows every field.
//!
//! Main types: [`Status`] (`GET /api/status`) with its [`BalancerStatus`],
//! [`BackendRow`]s and [`InstanceRow`]s; [`Dashboard`] (`GET /api/dashboard`);
//! [`ReloadReport`] with its [`Change`]s and [`Outcome`]s; the requests and answers of
//! the operations ([`ScaleRequest`] / [`ScaleAnswer`], [`RestartRequest`] /
//! [`RestartAnswer`], [`DrainRequest`] / [`DrainAnswer`], [`DownAnswer`]); [`SdTargetGroup`] (`GET /api/sd`, Prometheus's
//! service-discovery format); [`ApiError`], the body of every error.
#![warn(missing_docs)]

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// `GET /api/status`: the running drove, its balancer and every instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// drove's version.
    pub version: String,
    /// drove's own pid.
    pub pid: u32,
    /// Seconds since drove started.
    pub uptime_s: f64,
    /// The admin API's bound address.
    pub admin: SocketAddr,
    /// The balancer; `null` without a `[balancer]`.
    pub balancer: Option<BalancerStatus>,
    /// Service names, in start order.
    pub services: Vec<String>,
    /// One row per supervised instance (every service), then, with static or DNS
    /// backends, one row per backend (`state` = `remote`).
    pub instances: Vec<InstanceRow>,
    /// `drove upgrade`s of this drove (the PID stays across them).
    #[serde(default)]
    pub upgrades: UpgradeStatus,
}

/// The upgrades of a running drove (`drove upgrade`, SIGUSR2).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UpgradeStatus {
    /// Upgrades done since `drove up` (carried from binary to binary).
    pub count: u32,
    /// The last one done.
    pub last: Option<UpgradeReport>,
    /// Why the last one attempted failed, if it did (drove kept serving); cleared by
    /// the next success.
    pub failed: Option<String>,
}

/// One upgrade, as the new drove reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpgradeReport {
    /// The version of the drove replaced.
    pub from_version: String,
    /// The version now running.
    pub to_version: String,
    /// The binary now running.
    pub binary: String,
    /// Instances taken over (same PIDs, never signalled).
    pub instances_kept: usize,
    /// Client connections handed over (idle keep-alive connections and tunnels).
    pub connections_handed: usize,
    /// Connections still busy when the hand-over's wait ended (closed by it).
    pub connections_closed: i64,
    /// From the request to the old drove's `execve`, in milliseconds.
    pub took_ms: u64,
}

/// `POST /api/upgrade`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UpgradeRequest {
    /// The binary to run; default: the path drove was started from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binary: Option<String>,
}

/// The answer to `POST /api/upgrade` once the new binary passed its check: the
/// replacement follows at once (poll `GET /api/status` for `upgrades.count`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpgradeAnswer {
    /// The binary that will run.
    pub binary: String,
    /// Its version, as it reported it.
    pub version: String,
    /// `upgrades.count` before this one.
    pub count_before: u32,
}

/// What `drove __upgrade-check` prints: a binary's answer to "can you take over?".
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpgradeCheck {
    /// Its version.
    pub version: String,
    /// The hand-over format it reads.
    pub handoff_format: u32,
}

impl Status {
    /// The balancer's backend `id`, if it has one by that name.
    pub fn backend(&self, id: &str) -> Option<&BackendRow> {
        self.balancer.as_ref()?.backends.iter().find(|b| b.id == id)
    }

    /// The instance row `id`.
    pub fn instance(&self, id: &str) -> Option<&InstanceRow> {
        self.instances.iter().find(|i| i.id == id)
    }

    /// The rows of one service's instances.
    pub fn instances_of<'a>(&'a self, service: &'a str) -> impl Iterator<Item = &'a InstanceRow> {
        self.instances
            .iter()
            .filter(move |i| i.service.as_deref() == Some(service))
    }

    /// The balancer's backends (empty without a balancer).
    pub fn backends(&self) -> &[BackendRow] {
        self.balancer.as_ref().map_or(&[], |b| &b.backends)
    }
}

/// The balancer part of [`Status`]: counters since start, current rates, settings the
/// drills explain their results with, and the backend set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BalancerStatus {
    /// Bound address of `listen`.
    pub listen: Option<SocketAddr>,
    /// Whether it terminates TLS.
    pub tls: bool,
    /// Responses per second over the last 5 s (`null` until the sampler has two samples).
    pub rps: Option<f64>,
    /// 5xx responses per second over the last 5 s.
    pub errors_per_s: Option<f64>,
    /// `round_robin`, `least_conn`, `ip_hash`, `hash`, `random_two` or `p2c_ewma`.
    pub algorithm: String,
    /// The balanced service; `null` with static or DNS backends.
    pub service: Option<String>,
    /// Requests received.
    pub requests: u64,
    /// Responses sent, by status class.
    pub responses: Responses,
    /// Retries made (another try after a failed one).
    pub retries: u64,
    /// Retries not made because the retry budget was used up.
    pub retry_budget_exhausted: u64,
    /// Failed connects to backends.
    pub connect_errors: u64,
    /// Backend tries that timed out.
    pub timeouts: u64,
    /// Requests answered 503 because no backend was available.
    pub no_backend: u64,
    /// Requests rejected before any backend saw them (400, 413, 431).
    pub rejected: u64,
    /// Requests answered 429 by a rate limit.
    pub rate_limited: u64,
    /// Client connections open now.
    pub active_connections: i64,
    /// WebSocket (upgraded) tunnels open now.
    pub active_tunnels: i64,
    /// The settings that decide how fast a failing backend leaves rotation and how
    /// long a request waits for one.
    pub settings: BalancerSettings,
    /// The backend set.
    pub backends: Vec<BackendRow>,
}

/// Responses by status class (`{"1xx": 0, "2xx": 1198, ...}`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Responses {
    /// 1xx.
    #[serde(rename = "1xx")]
    pub c1xx: u64,
    /// 2xx.
    #[serde(rename = "2xx")]
    pub c2xx: u64,
    /// 3xx.
    #[serde(rename = "3xx")]
    pub c3xx: u64,
    /// 4xx.
    #[serde(rename = "4xx")]
    pub c4xx: u64,
    /// 5xx.
    #[serde(rename = "5xx")]
    pub c5xx: u64,
}

impl Responses {
    /// Every class together.
    pub fn total(&self) -> u64 {
        self.c1xx + self.c2xx + self.c3xx + self.c4xx + self.c5xx
    }
}

/// The balancer settings in force that `drove verify` names when a drill fails
/// (seconds as numbers).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BalancerSettings {
    /// Active health checks of each backend (`[balancer] health`); `null` = none.
    pub health: Option<ProbeSettings>,
    /// Retries after the first try (`retries.attempts`).
    pub retry_attempts: u32,
    /// Timeout of each try (`retries.per_try_timeout`); `null` = `response_timeout_s`.
    pub per_try_timeout_s: Option<f64>,
    /// `timeouts.response`.
    pub response_timeout_s: f64,
    /// `timeouts.connect`.
    pub connect_timeout_s: f64,
    /// `passive.max_fails` (0 = passive ejection off).
    pub passive_max_fails: u32,
    /// `passive.fail_timeout`.
    pub passive_fail_timeout_s: f64,
    /// `max_ejected` (0..1).
    pub max_ejected: f64,
}

/// A probe's timing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeSettings {
    /// What it checks: `http /health`, `tcp`, ...
    pub check: String,
    /// Seconds between probes.
    pub interval_s: f64,
    /// Seconds a probe may take.
    pub timeout_s: f64,
    /// Successes in a row to become healthy.
    pub rise: u32,
    /// Failures in a row to become unhealthy.
    pub fall: u32,
}

/// One backend of the balancer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackendRow {
    /// Its name: the instance id (`web.2`), or the static/DNS backend's name.
    pub id: String,
    /// Where requests go.
    pub addr: SocketAddr,
    /// In rotation as far as admin and drain are concerned.
    pub enabled: bool,
    /// Active probes up and not passively ejected.
    pub healthy: bool,
    /// The active probe's view alone.
    pub probe_up: bool,
    /// Requests in flight on it now.
    pub in_flight: u64,
    /// Requests sent to it.
    pub requests: u64,
    /// Failed tries (connect errors, timeouts, resets).
    pub failures: u64,
    /// Times passive health ejected it.
    pub ejections: u64,
    /// Weight (≥ 1).
    pub weight: u32,
    /// Gets traffic only when no other backend is available.
    pub backup: bool,
}

/// Lifecycle state of an instance row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InstanceState {
    /// Process started, ready probe not passed yet (see `why`).
    Starting,
    /// In rotation.
    Ready,
    /// Being taken out of rotation.
    Draining,
    /// Out of rotation by request, still running.
    Drained,
    /// Stop signal sent, waiting for the process group to end.
    Stopping,
    /// Stopped.
    Stopped,
    /// Exited (or could not start), restarting after a delay (see `retry_at_ms`).
    Backoff,
    /// Exited quickly too many times in a row; retried every `restart.max_delay`.
    Crashloop,
    /// Exited and not restarted (restart policy).
    Exited,
    /// A static or DNS backend: not run by drove.
    Remote,
}

impl InstanceState {
    /// The wire name (`starting`, `ready`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceState::Starting => "starting",
            InstanceState::Ready => "ready",
            InstanceState::Draining => "draining",
            InstanceState::Drained => "drained",
            InstanceState::Stopping => "stopping",
            InstanceState::Stopped => "stopped",
            InstanceState::Backoff => "backoff",
            InstanceState::Crashloop => "crashloop",
            InstanceState::Exited => "exited",
            InstanceState::Remote => "remote",
        }
    }
}

impl fmt::Display for InstanceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One instance: a supervised process slot, or a remote backend. Fields that do not
/// apply are `null` (a remote backend has no pid; a supervised instance not in the
/// balancer has no `in_rotation`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceRow {
    /// `web.2`, or the backend's name.
    pub id: String,
    /// The service; `null` for a remote backend.
    pub service: Option<String>,
    /// A remote backend's address (`null` for supervised instances: see `port`).
    pub addr: Option<SocketAddr>,
    /// Pid (= process group id) of the current process.
    pub pid: Option<u32>,
    /// Port of the current (or last) process.
    pub port: Option<u16>,
    /// Lifecycle state.
    pub state: InstanceState,
    /// Why the instance is in this state when that is not `ready`: the last probe's
    /// error while `starting`, the exit and the next try in `backoff`/`crashloop`, a
    /// port held by another process, ... `null` when there is nothing to explain.
    pub why: Option<String>,
    /// Processes started in this slot after the first one.
    pub restarts: Option<u32>,
    /// RSS summed over the process group, bytes.
    pub rss_bytes: Option<u64>,
    /// CPU seconds (user + system) of the live processes of the group.
    pub cpu_seconds: Option<f64>,
    /// Seconds since the current process started.
    pub uptime: Option<f64>,
    /// How the previous process of this slot ended.
    pub last_exit: Option<LastExit>,
    /// The current restart delay in seconds, in `backoff`/`crashloop`.
    pub backoff: Option<f64>,
    /// When the next start is due (unix ms), in `backoff`/`crashloop`.
    pub retry_at_ms: Option<u64>,
    /// The error of the last failed ready probe of the current process (`null` once a
    /// probe passed).
    pub last_probe_error: Option<String>,
    /// In the balancer's rotation (`null` when not a backend).
    pub in_rotation: Option<bool>,
    /// Healthy as the balancer sees it.
    pub healthy: Option<bool>,
    /// Requests in flight on it.
    pub in_flight: Option<u64>,
    /// Requests sent to it.
    pub requests: Option<u64>,
    /// Failed tries on it.
    pub failures: Option<u64>,
    /// A remote backend's weight.
    pub weight: Option<u32>,
    /// A remote backend is a backup.
    pub backup: Option<bool>,
    /// Responses per second over the last 5 s.
    pub rps: Option<f64>,
    /// Median latency over the last 5 s, ms.
    pub p50_ms: Option<f64>,
    /// 99th percentile latency over the last 5 s, ms.
    pub p99_ms: Option<f64>,
    /// Its part (0..1) of the responses of the last minute.
    pub share: Option<f64>,
}

impl InstanceRow {
    /// A row with only an id, a service and a state; everything else `null`.
    pub fn new(id: impl Into<String>, service: Option<String>, state: InstanceState) -> Self {
        InstanceRow {
            id: id.into(),
            service,
            addr: None,
            pid: None,
            port: None,
            state,
            why: None,
            restarts: None,
            rss_bytes: None,
            cpu_seconds: None,
            uptime: None,
            last_exit: None,
            backoff: None,
            retry_at_ms: None,
            last_probe_error: None,
            in_rotation: None,
            healthy: None,
            in_flight: None,
            requests: None,
            failures: None,
            weight: None,
            backup: None,
            rps: None,
            p50_ms: None,
            p99_ms: None,
            share: None,
        }
    }
}

/// How a process ended, and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastExit {
    /// Exit code, when it exited.
    pub code: Option<i32>,
    /// Signal number, when a signal ended it.
    pub signal: Option<i32>,
    /// `exit code 1`, `signal SIGKILL`, or why it never ran (`failed to start: ...`).
    pub text: String,
    /// When (unix ms).
    pub at_ms: u64,
}

/// `GET /api/dashboard`: the status document plus what the page needs besides.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Dashboard {
    /// Everything `GET /api/status` has, at the top level.
    #[serde(flatten)]
    pub status: Status,
    /// Per service: the configured instance count and memory limit.
    pub service_config: BTreeMap<String, ServiceConfigRow>,
    /// Whether the admin API wants a bearer token.
    pub token_required: bool,
    /// The chart series.
    pub history: History,
}

/// A service's configured size, for the dashboard's gauges.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceConfigRow {
    /// `instances` of the config.
    pub instances: u32,
    /// `max_memory` in bytes.
    pub max_memory: Option<u64>,
}

/// One point per second, oldest first; `null` where an instance did not exist.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct History {
    /// Seconds between points.
    pub interval_s: f64,
    /// Window of each point's percentiles, seconds.
    pub window_s: f64,
    /// Wall-clock time of each point, unix ms.
    pub t: Vec<u64>,
    /// Per instance (backend id).
    pub instances: BTreeMap<String, InstanceSeries>,
    /// Balancer-wide.
    pub balancer: BalancerSeries,
}

/// An instance's series.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceSeries {
    /// Responses per second in the second before each point.
    pub rps: Vec<Option<f64>>,
    /// 5xx per second.
    pub errors: Vec<Option<f64>>,
    /// Median latency over `window_s`, ms.
    pub p50_ms: Vec<Option<f64>>,
    /// 99th percentile over `window_s`, ms.
    pub p99_ms: Vec<Option<f64>>,
}

/// The balancer's series.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BalancerSeries {
    /// Responses per second.
    pub rps: Vec<Option<f64>>,
    /// 5xx per second.
    pub errors: Vec<Option<f64>>,
}

/// One step of a reload (drove-runtime's `plan::diff` lists them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum Change {
    /// A new `[services.NAME]`: started once its dependencies are ready.
    ServiceAdded {
        /// The service.
        service: String,
    },
    /// Settings of a service changed (anything but `instances`): the new spec, then a
    /// rolling restart behind one surge instance.
    ServiceChanged {
        /// The service.
        service: String,
        /// The keys that changed.
        keys: Vec<String>,
    },
    /// `instances` changed: a scale.
    ServiceScaled {
        /// The service.
        service: String,
        /// Instances in force.
        from: u32,
        /// Instances in the file.
        to: u32,
    },
    /// A `[services.NAME]` is gone: its instances drained and stopped.
    ServiceRemoved {
        /// The service.
        service: String,
    },
    /// What the balancer routes to switched (`service = "a"` → `"b"`, or a service ↔
    /// `backends = [...]`).
    Target {
        /// `service web` or `backends`.
        from: String,
        /// Same form.
        to: String,
    },
    /// The list of backends (`backends`, DNS entries, `resolver`) changed.
    Backends {
        /// Fixed backends in the file.
        fixed: usize,
        /// DNS entries in the file.
        dns: usize,
    },
    /// How the balancer picks and ejects: `algorithm` (with `hash_key`), `passive`,
    /// `max_ejected`.
    Balancing {
        /// The keys that changed.
        keys: Vec<String>,
    },
    /// `balancer.health`: the active probes start again with the new settings.
    Health,
    /// Settings each request reads: timeouts, retries, headers, the access log, size
    /// limits, stickiness, upgrades, trusted proxies.
    DataPath {
        /// The keys that changed.
        keys: Vec<String>,
    },
    /// `[[balancer.routes]]` and `[limits.*]`.
    Limits {
        /// The keys that changed.
        keys: Vec<String>,
    },
    /// `balancer.tls`: the paths, or the certificate or key files' contents.
    Tls {
        /// Only the files' contents changed (a renewal), not the paths.
        files_only: bool,
    },
    /// `listen`, `workers`, `defer_accept`: new listening sockets first, then the old
    /// ones stop accepting and finish what they serve.
    Listeners {
        /// The keys that changed.
        keys: Vec<String>,
    },
    /// `admin.token`.
    AdminToken,
    /// `admin.listen`: the new listener first, then the old one finishes and closes.
    AdminListen {
        /// Address in force (as the file said).
        from: SocketAddr,
        /// Address in the file.
        to: SocketAddr,
    },
    /// `[balancer]` added to or removed from the file.
    BalancerPresence {
        /// Whether the file has a `[balancer]`.
        present: bool,
    },
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys = |f: &mut std::fmt::Formatter<'_>, keys: &[String]| {
            let list: Vec<String> = keys.iter().map(|k| format!("balancer.{k}")).collect();
            write!(f, "{}", list.join(", "))
        };
        match self {
            Change::ServiceAdded { service } => write!(f, "services.{service} added"),
            Change::ServiceChanged { service, .. } => write!(f, "services.{service}"),
            Change::ServiceScaled { service, .. } => write!(f, "services.{service}.instances"),
            Change::ServiceRemoved { service } => write!(f, "services.{service} removed"),
            Change::Target { from, to } => write!(f, "balancer target ({from} -> {to})"),
            Change::Backends { .. } => write!(f, "balancer.backends"),
            Change::Balancing { keys: k }
            | Change::DataPath { keys: k }
            | Change::Listeners { keys: k } => keys(f, k),
            Change::Health => write!(f, "balancer.health"),
            Change::Limits { keys: k } => {
                let list: Vec<&str> = k.iter().map(String::as_str).collect();
                write!(f, "{}", list.join(", "))
            }
            Change::Tls { files_only: true } => write!(f, "balancer.tls (certificate files)"),
            Change::Tls { files_only: false } => write!(f, "balancer.tls"),
            Change::AdminToken => write!(f, "admin.token"),
            Change::AdminListen { from, to } => write!(f, "admin.listen ({from} -> {to})"),
            Change::BalancerPresence { present: true } => write!(f, "[balancer] added"),
            Change::BalancerPresence { present: false } => write!(f, "[balancer] removed"),
        }
    }
}

/// One change of a reload and how it went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    /// The change.
    pub change: Change,
    /// What was done (applied) or why not (not applied).
    pub detail: String,
}

/// `POST /api/reload` (200 when applied, 422 when the file has errors) and
/// `drove reload [--dry-run]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadReport {
    /// False: the file had errors (or there is no file) and nothing changed.
    pub ok: bool,
    /// Only the plan was computed; nothing was applied.
    pub dry_run: bool,
    /// The changes found, in the order they are applied.
    pub plan: Vec<Change>,
    /// Changes applied, with what was done.
    pub applied: Vec<Outcome>,
    /// Changes that could not be applied, with the reason; their part of the config in
    /// force is unchanged, so the next reload tries them again.
    pub not_applied: Vec<Outcome>,
    /// Why nothing changed (`ok` false): the file's errors as `file:line:col`.
    pub error: Option<String>,
}

impl ReloadReport {
    /// A reload refused as a whole: nothing changed, for `error`.
    pub fn refused(error: String) -> ReloadReport {
        ReloadReport {
            ok: false,
            dry_run: false,
            plan: Vec::new(),
            applied: Vec::new(),
            not_applied: Vec::new(),
            error: Some(error),
        }
    }
}

/// `POST /api/scale` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScaleRequest {
    /// The service.
    pub service: String,
    /// The new instance count (0..=1000).
    pub instances: u32,
}

/// `POST /api/scale` answer.
pub type ScaleAnswer = ScaleRequest;

/// `POST /api/restart` body: exactly one of `service` (every instance) or `instance`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartRequest {
    /// Restart every instance of this service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Restart this instance only (`web.2`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
}

/// `POST /api/restart` answer, once the rollout is done: every instance restarted in
/// its own slot (same id, same port) behind one surge instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RestartAnswer {
    /// The service.
    pub service: String,
    /// The extra instance (`web.4` for three) that held capacity during the rollout and
    /// was stopped at its end; `null` when there was nothing to restart.
    pub surge: Option<String>,
    /// The instances restarted, in order.
    pub replaced: Vec<Replaced>,
    /// Seconds it took.
    pub elapsed: f64,
}

/// One instance restarted by a rolling restart: the same id and port, a new process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replaced {
    /// The instance (`web.2`).
    pub instance: String,
    /// Pid of the process it ran before.
    pub old_pid: Option<u32>,
    /// Pid of the process it runs now (ready).
    pub new_pid: Option<u32>,
}

/// `POST /api/drain` and `/api/undrain` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainRequest {
    /// Instance id (`web.2`) or static backend name.
    pub instance: String,
}

/// `POST /api/drain` and `/api/undrain` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainAnswer {
    /// The instance.
    pub instance: String,
    /// Whether it is in rotation now.
    pub in_rotation: bool,
}

/// `POST /api/down` answer: the shutdown has begun. `drove down` waits for `pid` and
/// every process group in `instance_pids` to be gone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DownAnswer {
    /// `shutting down`.
    pub status: String,
    /// drove's pid.
    pub pid: u32,
    /// Pids (= process group ids) of the instances running when the shutdown began.
    pub instance_pids: Vec<u32>,
}

/// `GET /api/sd`: one Prometheus `http_sd_configs` target group per instance (the
/// answer is a JSON list of them), in the format Prometheus documents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SdTargetGroup {
    /// `host:port` of each target (one: the instance's port on 127.0.0.1).
    pub targets: Vec<String>,
    /// Labels put on every series scraped from these targets: `service`, `instance`
    /// (drove's stable id, `web.2`), `drove` (the admin address).
    pub labels: BTreeMap<String, String>,
}

/// `GET /health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// `ok`.
    pub status: String,
}

/// The body of every error answer (4xx/5xx).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    /// What went wrong.
    pub error: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_names_on_the_wire() {
        let mut row = InstanceRow::new("web.1", Some("web".into()), InstanceState::Crashloop);
        row.last_exit = Some(LastExit {
            code: Some(1),
            signal: None,
            text: "exit code 1".into(),
            at_ms: 1,
        });
        let v = serde_json::to_value(&row).unwrap();
        assert_eq!(v["state"], "crashloop");
        assert_eq!(v["last_exit"]["code"], 1);
        // Every field is present, null when it does not apply.
        assert!(v.as_object().unwrap().contains_key("retry_at_ms"));
        assert!(v["pid"].is_null());
        let back: InstanceRow = serde_json::from_value(v).unwrap();
        assert_eq!(back, row);
        let r = serde_json::to_value(Responses {
            c2xx: 3,
            ..Responses::default()
        })
        .unwrap();
        assert_eq!(r["2xx"], 3);
        assert_eq!(
            serde_json::to_string(&RestartRequest {
                instance: Some("web.2".into()),
                ..Default::default()
            })
            .unwrap(),
            r#"{"instance":"web.2"}"#
        );
    }

    #[test]
    fn restart_answer_and_sd_groups_as_documented() {
        let a: RestartAnswer = serde_json::from_str(
            r#"{"service":"web","surge":"web.4","replaced":[{"instance":"web.1","old_pid":4242,"new_pid":4301}],"elapsed":2.1}"#,
        )
        .unwrap();
        assert_eq!(a.surge.as_deref(), Some("web.4"));
        assert_eq!(
            a.replaced,
            [Replaced {
                instance: "web.1".into(),
                old_pid: Some(4242),
                new_pid: Some(4301)
            }]
        );
        // Prometheus reads `targets` and `labels` and nothing else.
        let g: Vec<SdTargetGroup> = serde_json::from_str(
            r#"[{"targets":["127.0.0.1:5001"],"labels":{"service":"web","instance":"web.1","drove":"127.0.0.1:9900"}}]"#,
        )
        .unwrap();
        assert_eq!(g[0].labels["instance"], "web.1");
        let v = serde_json::to_value(&g[0]).unwrap();
        assert_eq!(v.as_object().unwrap().len(), 2);
    }
}
