//! drove-supervisor runs the processes of drove services: it spawns each instance in its
//! own process group, gates it on a readiness probe, watches it (liveness probe, RSS
//! limit), restarts it with exponential backoff (and a visible crash-loop state), scales
//! the number of instances, restarts and replaces instances in place (same id, same port)
//! behind one surge instance so capacity never drops, drains them
//! before signalling them, and stops everything — grandchildren included — on shutdown.
//! Instance output goes to rotated per-instance log files and, optionally, to stdout.
//!
//! It does not know TOML, the CLI or the load balancer. The runtime maps the
//! configuration into [`ServiceSpec`]s and turns the [`InstanceEvent`]s published on an
//! unbounded channel into backend-set changes: `Ready` (add), `Draining` (remove, wait
//! for in-flight requests, then acknowledge through `done` — the process is signalled
//! only after that), `Undrained` (add back), `Gone` (remove).
//!
//! Main types: [`Supervisor`] (the cheap-to-clone handle: `start`, `status`, `scale`,
//! `restart`, `update`, `drain`, `undrain`, `shutdown`), [`ServiceSpec`], [`InstanceEvent`],
//! [`InstanceStatus`]. The state machine of an instance, backoff and crash-loop rules are
//! described in `LIFECYCLE.md` next to this file; the log file layout in [`log_path`]; [`tail`]
//! prints and follows a log file.
//!
//! ```no_run
//! use drove_supervisor::*;
//! # async fn run() -> Result<(), SupervisorError> {
//! let mut web = ServiceSpec::new("web", CommandSpec::Shell("python3 -m http.server {port}".into()));
//! web.instances = 3;
//! web.ready = Some(Probe::new(ProbeKind::Http { path: "/".into(), expect_status: None }));
//! let (tx, mut events) = tokio::sync::mpsc::unbounded_channel();
//! let sup = Supervisor::start(vec![web], tx, SupervisorOptions::default())?;
//! while let Some(event) = events.recv().await {
//!     match event {
//!         InstanceEvent::Ready { id, addr } => { /* add `addr` to the backend set */ }
//!         InstanceEvent::Draining { id, grace, done } => {
//!             // disable it, wait for in-flight requests (at most `grace`), then:
//!             let _ = done.send(());
//!         }
//!         InstanceEvent::Undrained { id, addr } => { /* enable it again */ }
//!         InstanceEvent::Gone { id } => { /* remove it */ }
//!         InstanceEvent::StateChanged { .. } => {}
//!     }
//! }
//! sup.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! Linux only: process-group accounting reads `/proc`, and children are spawned with
//! `PR_SET_PDEATHSIG` so they die with drove even if drove is SIGKILLed.

mod backoff;
mod contain;
mod error;
mod event;
mod guardian;
mod handoff;
mod logs;
mod ports;
mod probe;
mod procfs;
mod slot;
mod spawn;
mod spec;
mod supervisor;

pub use contain::panics_contained;
pub use error::SupervisorError;
pub use event::{
    ExitInfo, InstanceEvent, InstanceId, InstanceState, InstanceStatus, Replacement, RollingReport,
};
pub use guardian::{guardian_main, Guardian};
pub use handoff::InstanceHandoff;
pub use logs::{log_path, tail};
pub use ports::{listening_on, port_in_use, PortHolder, PortInUse};
pub use procfs::group_alive;
pub use spec::{
    CommandSpec, LogSpec, Policy, PortSpec, Probe, ProbeKind, RestartPolicy, ServiceSpec, Signal,
};
pub use supervisor::{Supervisor, SupervisorOptions};
