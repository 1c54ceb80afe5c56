//! The [`Supervisor`] handle: services, their slots, and the operations over them
//! (start in dependency order, scale, rolling restart in place behind one surge instance,
//! replacements, drain, shutdown).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::contain;
use crate::error::SupervisorError;
use crate::event::{
    InstanceEvent, InstanceId, InstanceState, InstanceStatus, Replacement, RollingReport,
};
use crate::guardian::Guardian;
use crate::handoff::InstanceHandoff;
use crate::logs::{self, InstanceLog};
use crate::procfs;
use crate::slot::{self, lock, ReplaceRequest, SlotCmd, SlotHandle, SpecCell};
use crate::spawn::{port_bindable, Spawner};
use crate::spec::{PortSpec, ServiceSpec};

/// How often memory and CPU of every instance group are sampled.
const MONITOR_PERIOD: Duration = Duration::from_secs(1);

/// Poll period while a service waits for its dependencies to become ready.
const DEPS_POLL: Duration = Duration::from_millis(50);

/// A surge instance gets the start timeout plus this before a rollout gives up on it, so
/// the slot's own start timeout (which stops the process) fires first.
const READY_WAIT_SLACK: Duration = Duration::from_millis(250);

/// Output options, and the guardian.
#[derive(Debug, Clone, Default)]
pub struct SupervisorOptions {
    /// Also print every instance line to stdout as `web.2 | line`.
    pub log_to_stdout: bool,
    /// Colour the `web.2 |` prefixes (one stable colour per instance).
    pub color: bool,
    /// Told about every process group spawned, so that it can stop them if drove dies
    /// without doing so (see [`Guardian`]).
    pub guardian: Option<Arc<Guardian>>,
    /// Instances to take over instead of starting them (`drove upgrade`: the list the
    /// drove before this one wrote with [`Supervisor::freeze`]).
    pub adopt: Vec<InstanceHandoff>,
}

/// Handle to a running supervisor; cheap to clone. Dropping every handle does not stop
/// the processes: call [`Supervisor::shutdown`]. (When the Tokio runtime itself goes
/// away, every process group is killed.)
#[derive(Clone)]
pub struct Supervisor {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor")
            .field("services", &self.services())
            .field("shutting_down", &self.inner.is_shutting_down())
            .finish()
    }
}

struct Inner {
    /// The services and their dependency depths; changed by `add_service` and
    /// `remove_service` (a reload), read as a snapshot everywhere else.
    table: Mutex<Table>,
    events: mpsc::UnboundedSender<InstanceEvent>,
    opts: SupervisorOptions,
    spawner: Spawner,
    id_width: usize,
    shutting_down: watch::Sender<bool>,
    shutdown_done: tokio::sync::Mutex<bool>,
    /// True while an upgrade hands the instances over (see [`Supervisor::freeze`]).
    frozen: watch::Sender<bool>,
    /// Slots starting a process whose PID is not recorded yet (see `StartGate`).
    starting: Arc<std::sync::atomic::AtomicUsize>,
    /// Instances handed over by the drove before this one, by slot, until a slot takes
    /// its own.
    adopt: Mutex<HashMap<(String, u32), InstanceHandoff>>,
}

#[derive(Clone, Default)]
struct Table {
    services: Vec<Arc<Service>>,
    /// Dependency depth per service (0 = depends on nothing); shutdown goes deepest first.
    depth: Vec<usize>,
}

struct Service {
    name: String,
    /// Current spec: used for every process started from now on (see `update`).
    spec: SpecCell,
    slots: Mutex<BTreeMap<u32, SlotHandle>>,
    /// Serializes the operations that add or remove slots (start, scale, restart,
    /// replacements) and holds the desired instance count.
    ops: tokio::sync::Mutex<u32>,
    /// Initial instances were created (dependencies were ready).
    started: AtomicBool,
    /// Removed by `remove_service`: it starts nothing any more.
    removed: AtomicBool,
    /// The desired instance count (a copy of what `ops` holds, readable without
    /// waiting for an operation in progress).
    desired: AtomicU32,
    replace: mpsc::UnboundedSender<ReplaceRequest>,
}

impl Supervisor {
    /// Validates the specs and starts every service in `depends_on` order: a service
    /// starts once all instances of each of its dependencies are ready. Returns at once;
    /// follow progress through `events` or [`Supervisor::status`]. Must be called inside
    /// a Tokio runtime.
    pub fn start(
        specs: Vec<ServiceSpec>,
        events: mpsc::UnboundedSender<InstanceEvent>,
        opts: SupervisorOptions,
    ) -> Result<Supervisor, SupervisorError> {
        let rt = tokio::runtime::Handle::try_current().map_err(|_| SupervisorError::NoRuntime)?;
        let depth = validate(&specs)?;
        let spawner = Spawner::start(rt).map_err(SupervisorError::Spawner)?;
        let id_width = specs
            .iter()
            .map(|s| s.name.len() + 1 + digits(s.instances.max(1) + 1))
            .max()
            .unwrap_or(0);
        let adopt: HashMap<(String, u32), InstanceHandoff> = opts
            .adopt
            .iter()
            .map(|a| ((a.service.clone(), a.index), a.clone()))
            .collect();
        // Handed-over instances no slot of this config will take (a service removed, or
        // fewer instances, in the file since): stopped, as a reload would have.
        for a in adopt.values() {
            let kept = specs
                .iter()
                .any(|s| s.name == a.service && a.index <= s.instances.max(1));
            if !kept {
                tracing::warn!(service = %a.service, index = a.index, pid = a.pid,
                    "instance handed over by the previous drove is not in the config: stopping it");
                procfs::signal_group(a.pid as i32, nix::sys::signal::Signal::SIGTERM);
                let mut p = crate::handoff::Adopted::new(a.pid);
                tokio::spawn(async move {
                    let _ = p.wait().await;
                });
            }
        }
        let inner = Arc::new(Inner {
            table: Mutex::new(Table::default()),
            events,
            frozen: watch::channel(false).0,
            starting: Arc::default(),
            adopt: Mutex::new(adopt),
            opts,
            spawner,
            id_width,
            shutting_down: watch::channel(false).0,
            shutdown_done: tokio::sync::Mutex::new(false),
        });
        let services: Vec<Arc<Service>> =
            specs.into_iter().map(|spec| launch(&inner, spec)).collect();
        *lock(&inner.table) = Table { services, depth };
        let i = inner.clone();
        tokio::spawn(async move {
            while contain::caught("monitor", monitor(i.clone()))
                .await
                .is_none()
            {}
        });
        Ok(Supervisor { inner })
    }

    /// Adds a service (a reload) and starts it like at startup: once every instance of
    /// each of its dependencies is ready. The other services are untouched.
    pub async fn add_service(&self, spec: ServiceSpec) -> Result<(), SupervisorError> {
        let inner = &self.inner;
        inner.check_running()?;
        let mut table = lock(&inner.table);
        let mut specs: Vec<ServiceSpec> =
            table.services.iter().map(|s| (*s.spec()).clone()).collect();
        specs.push(spec.clone());
        let depth = validate(&specs)?;
        tracing::info!(service = %spec.name, "service added");
        let svc = launch(inner, spec);
        table.services.push(svc);
        table.depth = depth;
        Ok(())
    }

    /// Removes a service (a reload): its instances are drained and stopped like a scale
    /// to 0, then it is forgotten. Refused while another service depends on it.
    pub async fn remove_service(&self, name: &str) -> Result<(), SupervisorError> {
        let inner = &self.inner;
        let svc = inner.service(name)?;
        if let Some(dependent) = inner
            .services()
            .iter()
            .find(|s| s.name != name && s.spec().depends_on.iter().any(|d| d == name))
        {
            return Err(SupervisorError::InvalidSpec {
                service: name.to_string(),
                reason: format!("{} depends on it", dependent.name),
            });
        }
        {
            let mut desired = svc.ops.lock().await;
            inner.check_running()?;
            *desired = 0;
            svc.desired.store(0, Ordering::Relaxed);
            svc.removed.store(true, Ordering::SeqCst);
        }
        tracing::info!(service = %name, "removing service: stopping its instances");
        loop {
            let slots: Vec<SlotHandle> = lock(&svc.slots).values().cloned().collect();
            if slots.is_empty() {
                break;
            }
            stop_all(&svc, slots).await;
        }
        let mut table = lock(&inner.table);
        if let Some(i) = table.services.iter().position(|s| Arc::ptr_eq(s, &svc)) {
            table.services.remove(i);
            table.depth.remove(i);
        }
        let specs: Vec<ServiceSpec> = table.services.iter().map(|s| (*s.spec()).clone()).collect();
        if let Ok(depth) = validate(&specs) {
            table.depth = depth;
        }
        Ok(())
    }

    /// The instance count a service is meant to have (set by `start`, `scale`, a reload).
    pub fn desired_instances(&self, service: &str) -> Option<u32> {
        let svc = self.inner.service(service).ok()?;
        Some(svc.desired.load(Ordering::Relaxed))
    }

    /// Names of the services, in the order given to `start`.
    pub fn services(&self) -> Vec<String> {
        self.inner
            .services()
            .iter()
            .map(|s| s.name.clone())
            .collect()
    }

    /// Live log file of an instance (`<logs.dir>/<service>.<index>.log`; rotated files
    /// add `.1`, `.2`, …); `None` for an unknown service.
    pub fn log_path(&self, id: &InstanceId) -> Option<PathBuf> {
        let svc = self.inner.service(&id.service).ok()?;
        Some(logs::log_path(&svc.spec().logs.dir, id))
    }

    /// Before an upgrade: no slot starts a process from now on (stops and exits go on
    /// being watched), and the running ones are listed for the next drove to take over
    /// ([`SupervisorOptions::adopt`]). [`Supervisor::thaw`] undoes it if the upgrade fails.
    pub async fn freeze(&self) -> Vec<InstanceHandoff> {
        self.inner.frozen.send_replace(true);
        // A slot that passed the gate just before is starting a process now: let it
        // record the PID, so that its process is listed (bounded: a start is a fork and
        // an exec).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while self.inner.starting.load(Ordering::SeqCst) > 0
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let mut out = Vec::new();
        for svc in self.inner.services() {
            for h in lock(&svc.slots).values() {
                let s = h.shared();
                let Some(pid) = s.pid else { continue };
                out.push(InstanceHandoff {
                    service: svc.name.clone(),
                    index: h.id.index,
                    pid,
                    port: s.port,
                    ready: matches!(
                        h.state(),
                        crate::InstanceState::Ready | crate::InstanceState::Draining
                    ),
                    restarts: s.restarts,
                    uptime_ms: s.started_at.map_or(0, |t| t.elapsed().as_millis() as u64),
                    stdout_fd: s.out_fds.0,
                    stderr_fd: s.out_fds.1,
                });
            }
        }
        out
    }

    /// The upgrade did not happen: slots start processes again.
    pub fn thaw(&self) {
        self.inner.frozen.send_replace(false);
    }

    /// The desired instance count of every service.
    pub fn desired_counts(&self) -> Vec<(String, u32)> {
        self.inner
            .services()
            .iter()
            .map(|s| (s.name.clone(), s.desired.load(Ordering::Relaxed)))
            .collect()
    }

    /// One entry per existing slot, services in start order, slots by index.
    pub async fn status(&self) -> Vec<InstanceStatus> {
        let slots: Vec<SlotHandle> = self
            .inner
            .services()
            .iter()
            .flat_map(|s| lock(&s.slots).values().cloned().collect::<Vec<_>>())
            .collect();
        let pgids: Vec<i32> = slots
            .iter()
            .filter_map(|s| s.shared().pid.map(|p| p as i32))
            .collect();
        let usage = tokio::task::spawn_blocking(move || procfs::usage_by_group(&pgids))
            .await
            .unwrap_or_default();
        slots
            .iter()
            .map(|h| {
                let state = h.state();
                let s = h.shared();
                let u = s.pid.and_then(|p| usage.get(&(p as i32)));
                let probe = s.last_probe_error.clone();
                let why = match state {
                    InstanceState::Starting => probe.as_ref().map(|(e, since)| {
                        format!(
                            "ready probe failing for {:.1}s: {e}",
                            since.elapsed().as_secs_f64()
                        )
                    }),
                    InstanceState::Backoff | InstanceState::Crashloop | InstanceState::Exited => {
                        s.why.clone()
                    }
                    _ => None,
                };
                InstanceStatus {
                    id: h.id.clone(),
                    pid: s.pid,
                    port: s.port,
                    state,
                    restarts: s.restarts,
                    rss_bytes: u.map(|u| u.rss_bytes).or(s.rss_bytes),
                    cpu_seconds: u.map(|u| u.cpu_seconds).or(s.cpu_seconds),
                    uptime: s.pid.and(s.started_at).map(|t| t.elapsed()),
                    last_exit: s.last_exit,
                    last_exit_at: s.last_exit_at,
                    backoff: s.backoff,
                    retry_at: s.retry_at,
                    why,
                    last_probe_error: probe.map(|p| p.0),
                }
            })
            .collect()
    }

    /// Sets the number of instances. Up: new slots at the lowest free indexes (in
    /// rotation once ready; this call does not wait for that). Down: the highest indexes
    /// are drained and stopped; resolves when they are gone. Before the service has
    /// started (dependencies not ready), only the count to start with changes.
    pub async fn scale(&self, service: &str, n: u32) -> Result<(), SupervisorError> {
        let inner = &self.inner;
        let svc = inner.service(service)?;
        let mut desired = svc.ops.lock().await;
        inner.check_running()?;
        *desired = n;
        svc.desired.store(n, Ordering::Relaxed);
        if !svc.started.load(Ordering::SeqCst) {
            return Ok(());
        }
        let current: Vec<u32> = lock(&svc.slots).keys().copied().collect();
        let have = current.len() as u32;
        if n > have {
            tracing::info!(service, from = have, to = n, "scaling up");
            for _ in have..n {
                let index = svc.free_index()?;
                svc.explain_skipped(index);
                inner.create_slot(&svc, index)?;
            }
        } else if n < have {
            tracing::info!(service, from = have, to = n, "scaling down");
            let victims: Vec<SlotHandle> = {
                let slots = lock(&svc.slots);
                slots
                    .values()
                    .rev()
                    .take((have - n) as usize)
                    .cloned()
                    .collect()
            };
            stop_all(&svc, victims).await;
        }
        Ok(())
    }

    /// Rolling restart that keeps every instance's identity: one surge instance in a new
    /// slot (N+1) first, ready; then each instance, in index order, drained, stopped and
    /// started again in its own slot (same `INSTANCE_ID`, same port) and ready; then the
    /// surge instance drained and stopped. At least N instances are ready throughout.
    /// If the surge instance never gets ready, nothing else was touched; if a restarted
    /// instance does not get ready again, the rollout stops there (that instance keeps
    /// being retried by its restart policy). Both return `RolloutAborted`.
    pub async fn restart(&self, service: &str) -> Result<RollingReport, SupervisorError> {
        let svc = self.inner.service(service)?;
        let _ops = svc.ops.lock().await;
        self.inner.check_running()?;
        let old: Vec<u32> = lock(&svc.slots).keys().copied().collect();
        self.replace_slots(&svc, old).await
    }

    /// Restarts one instance the same way: a surge instance ready first, then this one
    /// drained, stopped and started again in its slot, ready, then the surge stopped.
    pub async fn restart_instance(
        &self,
        id: &InstanceId,
    ) -> Result<RollingReport, SupervisorError> {
        let svc = self.inner.service(&id.service)?;
        let _ops = svc.ops.lock().await;
        self.inner.check_running()?;
        if svc.slot(id.index).is_none() {
            return Err(SupervisorError::UnknownInstance(id.clone()));
        }
        self.replace_slots(&svc, vec![id.index]).await
    }

    /// Restarts the instances in `indexes` in place behind one surge instance (the
    /// service's op lock held); see [`Supervisor::restart`].
    async fn replace_slots(
        &self,
        svc: &Arc<Service>,
        indexes: Vec<u32>,
    ) -> Result<RollingReport, SupervisorError> {
        let inner = &self.inner;
        let service = svc.spec().name.clone();
        let t0 = Instant::now();
        let mut report = RollingReport {
            service: service.clone(),
            surge: None,
            replaced: Vec::new(),
            elapsed: Duration::ZERO,
        };
        if indexes.is_empty() {
            return Ok(report);
        }
        let aborted = |instance: InstanceId, replaced: usize, reason: String| {
            SupervisorError::RolloutAborted {
                service: service.clone(),
                instance,
                replaced: replaced as u32,
                reason,
                elapsed: t0.elapsed(),
            }
        };
        // The surge instance runs the new spec first: a broken spec is found before any
        // running instance is touched, and it holds capacity while each slot restarts.
        let surge = inner.create_slot(svc, svc.free_index()?)?;
        tracing::info!(service, surge = %surge.id, "rolling restart: surge instance");
        if let Err(reason) = wait_ready(&surge, svc.spec().start_timeout()).await {
            stop_all(svc, vec![surge.clone()]).await;
            inner.check_running()?;
            return Err(aborted(surge.id, 0, reason));
        }
        report.surge = Some(surge.id.clone());
        for index in indexes {
            let Some(slot) = svc.slot(index) else {
                continue;
            };
            let old_pid = slot.shared().pid;
            tracing::info!(instance = %slot.id, "rolling restart: restarting in place");
            restart_in_place(&slot).await;
            if let Err(reason) = wait_ready_again(&slot, svc.spec().start_timeout()).await {
                stop_all(svc, vec![surge]).await;
                inner.check_running()?;
                return Err(aborted(slot.id, report.replaced.len(), reason));
            }
            report.replaced.push(Replacement {
                instance: slot.id.clone(),
                old_pid,
                new_pid: slot.shared().pid,
            });
        }
        stop_all(svc, vec![surge]).await;
        report.elapsed = t0.elapsed();
        Ok(report)
    }

    /// Replaces the spec of a service (config reload). It applies to every process started
    /// from now on — crash restarts, new slots, rolling restarts — while running processes
    /// keep theirs: follow with [`Supervisor::restart`] to roll it out without downtime.
    /// `instances` is not applied (use [`Supervisor::scale`]); a new `depends_on` orders
    /// the shutdown (the start is over); a new `logs` applies to new slots; backoff
    /// timings to new slots.
    pub async fn update(&self, spec: ServiceSpec) -> Result<(), SupervisorError> {
        spec.validate()?;
        let svc = self.inner.service(&spec.name)?;
        let _ops = svc.ops.lock().await;
        self.inner.check_running()?;
        if spec.depends_on != svc.spec().depends_on {
            // Dependencies matter for the start (already done) and the shutdown order:
            // check the new graph and keep its depths.
            let mut table = lock(&self.inner.table);
            let specs: Vec<ServiceSpec> = table
                .services
                .iter()
                .map(|s| {
                    if Arc::ptr_eq(s, &svc) {
                        spec.clone()
                    } else {
                        (*s.spec()).clone()
                    }
                })
                .collect();
            table.depth = validate(&specs)?;
        }
        tracing::info!(service = %svc.name, "spec updated");
        *lock(&svc.spec) = Arc::new(spec);
        Ok(())
    }

    /// Takes a ready instance out of rotation (`Draining` event, waits for the runtime's
    /// `done`); the process keeps running in state `Drained`.
    pub async fn drain(&self, id: &InstanceId) -> Result<(), SupervisorError> {
        let h = self.inner.instance(id)?;
        let (tx, rx) = oneshot::channel();
        self.send(&h, SlotCmd::Drain(tx))?;
        rx.await
            .unwrap_or_else(|_| Err(SupervisorError::UnknownInstance(id.clone())))
    }

    /// Puts a drained instance back into rotation (`Undrained` event).
    pub async fn undrain(&self, id: &InstanceId) -> Result<(), SupervisorError> {
        let h = self.inner.instance(id)?;
        let (tx, rx) = oneshot::channel();
        self.send(&h, SlotCmd::Undrain(tx))?;
        rx.await
            .unwrap_or_else(|_| Err(SupervisorError::UnknownInstance(id.clone())))
    }

    fn send(&self, h: &SlotHandle, cmd: SlotCmd) -> Result<(), SupervisorError> {
        h.cmd
            .send(cmd)
            .map_err(|_| SupervisorError::UnknownInstance(h.id.clone()))
    }

    /// Stops everything, dependents before their dependencies: drain, stop signal, grace,
    /// SIGKILL. Resolves when every process and its group are gone. Idempotent.
    pub async fn shutdown(&self) {
        let inner = &self.inner;
        let mut done = inner.shutdown_done.lock().await;
        if *done {
            return;
        }
        inner.shutting_down.send_replace(true);
        tracing::info!("shutting down");
        let table = lock(&inner.table).clone();
        let max_depth = table.depth.iter().copied().max().unwrap_or(0);
        for d in (0..=max_depth).rev() {
            let mut set = tokio::task::JoinSet::new();
            for (i, svc) in table.services.iter().enumerate() {
                if table.depth[i] == d {
                    let svc = svc.clone();
                    set.spawn(async move {
                        // Loop: a slot created concurrently (before the flag was seen) is
                        // still stopped.
                        loop {
                            let slots: Vec<SlotHandle> =
                                lock(&svc.slots).values().cloned().collect();
                            if slots.is_empty() {
                                break;
                            }
                            stop_all(&svc, slots).await;
                        }
                    });
                }
            }
            while set.join_next().await.is_some() {}
        }
        *done = true;
    }
}

/// A service's state and its tasks: the start (once its dependencies are ready) and the
/// replacement worker (which ends with the service: when its last sender is gone).
fn launch(inner: &Arc<Inner>, spec: ServiceSpec) -> Arc<Service> {
    let (tx, rx) = mpsc::unbounded_channel();
    let instances = spec.instances;
    let svc = Arc::new(Service {
        ops: tokio::sync::Mutex::new(instances),
        name: spec.name.clone(),
        spec: Arc::new(Mutex::new(Arc::new(spec))),
        slots: Mutex::new(BTreeMap::new()),
        started: AtomicBool::new(false),
        removed: AtomicBool::new(false),
        desired: AtomicU32::new(instances),
        replace: tx,
    });
    tokio::spawn(start_service(inner.clone(), svc.clone()));
    let (inner, s) = (inner.clone(), svc.clone());
    tokio::spawn(async move {
        let mut rx = rx;
        while contain::caught("replacements", replace_worker(&inner, &s, &mut rx))
            .await
            .is_none()
        {}
    });
    svc
}

/// Digits of a number (for aligning `web.12 |` prefixes).
fn digits(n: u32) -> usize {
    n.to_string().len()
}

impl Inner {
    fn service(&self, name: &str) -> Result<Arc<Service>, SupervisorError> {
        lock(&self.table)
            .services
            .iter()
            .find(|s| s.name == name)
            .cloned()
            .ok_or_else(|| SupervisorError::UnknownService(name.to_string()))
    }

    /// The services now, in start order.
    fn services(&self) -> Vec<Arc<Service>> {
        lock(&self.table).services.clone()
    }

    fn instance(&self, id: &InstanceId) -> Result<SlotHandle, SupervisorError> {
        self.service(&id.service)?
            .slot(id.index)
            .ok_or_else(|| SupervisorError::UnknownInstance(id.clone()))
    }

    fn is_shutting_down(&self) -> bool {
        *self.shutting_down.borrow()
    }

    fn check_running(&self) -> Result<(), SupervisorError> {
        if self.is_shutting_down() {
            Err(SupervisorError::ShuttingDown)
        } else {
            Ok(())
        }
    }

    /// Creates slot `index` and starts its task.
    fn create_slot(&self, svc: &Arc<Service>, index: u32) -> Result<SlotHandle, SupervisorError> {
        let spec = svc.spec();
        let id = InstanceId::new(svc.name.clone(), index);
        let log = InstanceLog::new(
            &id,
            &spec.logs,
            self.opts.log_to_stdout,
            self.opts.color,
            self.id_width,
        );
        let adopt = lock(&self.adopt).remove(&(svc.name.clone(), index));
        let env = slot::SlotEnv {
            events: self.events.clone(),
            spawner: self.spawner.clone(),
            guardian: self.opts.guardian.clone(),
            gate: crate::handoff::StartGate::new(self.frozen.subscribe(), self.starting.clone()),
        };
        let (handle, ctx) =
            slot::new_slot(id, svc.spec.clone(), log, svc.replace.clone(), adopt, env);
        let mut slots = lock(&svc.slots);
        // Checked under the slots lock: shutdown sets the flag before it reads the slots,
        // so a slot is either refused here or seen (and stopped) by shutdown.
        self.check_running()?;
        slots.insert(index, handle.clone());
        drop(slots);
        tokio::spawn(slot::run(ctx));
        Ok(handle)
    }
}

impl Service {
    fn spec(&self) -> Arc<ServiceSpec> {
        lock(&self.spec).clone()
    }

    fn slot(&self, index: u32) -> Option<SlotHandle> {
        lock(&self.slots).get(&index).cloned()
    }

    /// Lowest free index; with a base port, one whose port is bindable now.
    fn free_index(&self) -> Result<u32, SupervisorError> {
        let spec = self.spec();
        let slots = lock(&self.slots);
        let mut i = 1u32;
        loop {
            if !slots.contains_key(&i) {
                match spec.port {
                    PortSpec::Base(b) => {
                        let Some(port) = u16::try_from(u32::from(b) + i - 1).ok() else {
                            return Err(SupervisorError::NoFreeSlot(self.name.clone()));
                        };
                        if port_bindable(port) {
                            return Ok(i);
                        }
                    }
                    PortSpec::Auto | PortSpec::None => return Ok(i),
                }
            }
            i += 1;
        }
    }

    /// Says why a new slot got `index` rather than a lower free one: their ports (with a
    /// base port) are held by other processes, which would otherwise get its traffic.
    fn explain_skipped(&self, index: u32) {
        let PortSpec::Base(base) = self.spec().port else {
            return;
        };
        let taken: Vec<u32> = {
            let slots = lock(&self.slots);
            (1..index).filter(|i| !slots.contains_key(i)).collect()
        };
        for i in taken {
            let Some(port) = u16::try_from(u32::from(base) + i - 1).ok() else {
                continue;
            };
            if let Some(used) = crate::ports::port_in_use(port) {
                tracing::warn!(
                    "{}.{i} not started: {used}; starting {}.{index} on port {} instead",
                    self.name,
                    self.name,
                    u32::from(base) + index - 1
                );
            }
        }
    }

    /// Every slot is ready (or drained: it was ready and runs).
    fn all_ready(&self) -> bool {
        self.started.load(Ordering::SeqCst)
            && lock(&self.slots)
                .values()
                .all(|s| matches!(s.state(), InstanceState::Ready | InstanceState::Drained))
    }
}

/// Stops the given slots concurrently (drained) and removes them from the service.
async fn stop_all(svc: &Service, slots: Vec<SlotHandle>) {
    let mut waits = Vec::new();
    for h in slots {
        let (tx, rx) = oneshot::channel();
        let sent = h
            .cmd
            .send(SlotCmd::Stop {
                drain: true,
                restart: false,
                reply: tx,
            })
            .is_ok();
        waits.push((h, sent.then_some(rx)));
    }
    for (h, rx) in waits {
        if let Some(rx) = rx {
            let _ = rx.await;
        }
        lock(&svc.slots).remove(&h.id.index);
    }
}

/// Waits until a new slot is ready; fails at once if its process exits.
async fn wait_ready(h: &SlotHandle, start_timeout: Duration) -> Result<(), String> {
    use InstanceState::*;
    let mut rx = h.state.clone();
    let t = start_timeout + READY_WAIT_SLACK;
    let r = tokio::time::timeout(
        t,
        rx.wait_for(|s| matches!(s, Ready | Backoff | Crashloop | Exited | Stopped | Stopping)),
    )
    .await;
    match r {
        Ok(Ok(s)) if *s == Ready => Ok(()),
        Ok(Ok(_)) => Err(match h.shared().last_exit {
            Some(e) => format!("exited before it was ready ({e})"),
            None => format!("was not ready after {start_timeout:?}"),
        }),
        Ok(Err(_)) => Err("was stopped before it was ready".into()),
        Err(_) => Err(format!("was not ready after {start_timeout:?}")),
    }
}

/// Waits until a slot restarted in place is ready again (call it once the restart was
/// acknowledged: the slot is then `Starting`). Unlike a new slot's first start, a failed
/// start here is retried by the slot itself (the surge instance already proved the spec;
/// the port may be held a moment longer by what the old process left): only a crash loop,
/// a process that is not restarted, or `start_timeout` end the wait.
async fn wait_ready_again(h: &SlotHandle, start_timeout: Duration) -> Result<(), String> {
    use InstanceState::*;
    let mut rx = h.state.clone();
    let r = tokio::time::timeout(
        start_timeout + READY_WAIT_SLACK,
        rx.wait_for(|s| matches!(s, Ready | Crashloop | Exited | Stopped)),
    )
    .await;
    match r.map(|s| s.map(|s| *s)) {
        Ok(Ok(Ready)) => Ok(()),
        Ok(Ok(s)) => Err(match h.shared().last_exit {
            Some(e) => format!("is {s} after its restart (last exit: {e})"),
            None => format!("is {s} after its restart"),
        }),
        Ok(Err(_)) => Err("was stopped before it was ready".into()),
        Err(_) => Err(format!("was not ready again after {start_timeout:?}")),
    }
}

/// Creates the initial slots once every dependency is ready.
async fn start_service(inner: Arc<Inner>, svc: Arc<Service>) {
    let spec = svc.spec();
    // Looked up on every round: the table may still be filling (startup) or change (a
    // reload adds the dependency together with this service).
    let deps_ready = || {
        spec.depends_on
            .iter()
            .all(|d| inner.service(d).map(|s| s.all_ready()).unwrap_or(false))
    };
    let mut shutdown = inner.shutting_down.subscribe();
    let mut logged = false;
    while !deps_ready() {
        if svc.removed.load(Ordering::SeqCst) {
            return;
        }
        if !logged {
            tracing::info!(service = %svc.name, deps = ?spec.depends_on, "waiting for dependencies to be ready");
            logged = true;
        }
        tokio::select! {
            _ = tokio::time::sleep(DEPS_POLL) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
    let desired = svc.ops.lock().await;
    if svc.removed.load(Ordering::SeqCst) {
        return;
    }
    for index in 1..=*desired {
        if let Err(e) = inner.create_slot(&svc, index) {
            tracing::debug!(service = %svc.name, error = %e, "not starting");
            return;
        }
    }
    svc.started.store(true, Ordering::SeqCst);
}

/// Replaces unhealthy or oversized instances one at a time, like a rolling restart of
/// one: a surge instance ready first, then the instance restarted in its own slot (same
/// id, same port), ready, then the surge stopped. Without a surge instance (no free slot,
/// or it never got ready) the instance is restarted in place all the same (drained
/// first): a sick instance must not stay because its stand-in failed.
async fn replace_worker(
    inner: &Arc<Inner>,
    svc: &Arc<Service>,
    rx: &mut mpsc::UnboundedReceiver<ReplaceRequest>,
) {
    while let Some(req) = rx.recv().await {
        let _ops = svc.ops.lock().await;
        if inner.is_shutting_down() {
            return;
        }
        let Some(old) = svc.slot(req.index) else {
            continue;
        };
        if old.state() != InstanceState::Ready {
            // Drained or restarting meanwhile: ask again if it is ready and over the
            // limit (or unhealthy) later.
            let mut s = old.shared();
            if s.pid == Some(req.pid) {
                s.replace_requested = false;
            }
            continue;
        }
        if old.shared().pid != Some(req.pid) {
            continue; // another process already
        }
        tracing::warn!(instance = %old.id, reason = %req.reason, "replacing instance");
        let surge = match svc.free_index().and_then(|i| inner.create_slot(svc, i)) {
            Ok(surge) => match wait_ready(&surge, svc.spec().start_timeout()).await {
                Ok(()) => Some(surge),
                Err(reason) => {
                    tracing::warn!(instance = %surge.id, %reason, "surge instance failed; restarting {} in place without it", old.id);
                    stop_all(svc, vec![surge]).await;
                    None
                }
            },
            Err(e) => {
                tracing::warn!(instance = %old.id, error = %e, "no surge slot; restarting in place without it");
                None
            }
        };
        restart_in_place(&old).await;
        if let Some(surge) = surge {
            if let Err(reason) = wait_ready_again(&old, svc.spec().start_timeout()).await {
                tracing::warn!(instance = %old.id, %reason, "not ready again after its replacement; its restart policy retries it");
            }
            stop_all(svc, vec![surge]).await;
        }
    }
}

async fn restart_in_place(h: &SlotHandle) {
    let (tx, rx) = oneshot::channel();
    if h.cmd
        .send(SlotCmd::Stop {
            drain: true,
            restart: true,
            reply: tx,
        })
        .is_ok()
    {
        let _ = rx.await;
    }
}

/// Samples RSS and CPU of every instance group; triggers drained restarts above
/// `max_memory`.
async fn monitor(inner: Arc<Inner>) {
    let mut tick = tokio::time::interval(MONITOR_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut shutdown = inner.shutting_down.subscribe();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        contain::test_panic("monitor");
        let slots: Vec<(Arc<Service>, SlotHandle)> = inner
            .services()
            .iter()
            .flat_map(|s| {
                lock(&s.slots)
                    .values()
                    .map(|h| (s.clone(), h.clone()))
                    .collect::<Vec<_>>()
            })
            .collect();
        let pgids: Vec<i32> = slots
            .iter()
            .filter_map(|(_, h)| h.shared().pid.map(|p| p as i32))
            .collect();
        let Ok(usage) = tokio::task::spawn_blocking(move || procfs::usage_by_group(&pgids)).await
        else {
            continue;
        };
        for (svc, h) in slots {
            let state = h.state();
            let mut s = h.shared();
            let Some(pid) = s.pid else { continue };
            let Some(u) = usage.get(&(pid as i32)) else {
                continue;
            };
            s.rss_bytes = Some(u.rss_bytes);
            s.cpu_seconds = Some(u.cpu_seconds);
            let Some(limit) = svc.spec().max_memory else {
                continue;
            };
            if u.rss_bytes > limit && state == InstanceState::Ready && !s.replace_requested {
                s.replace_requested = true;
                drop(s);
                let msg = format!("RSS {} bytes is over max_memory {limit}", u.rss_bytes);
                tracing::warn!(instance = %h.id, "{msg}; replacing it");
                let _ = svc.replace.send(ReplaceRequest {
                    index: h.id.index,
                    pid,
                    reason: msg,
                });
            }
        }
    }
}

/// Checks names and dependencies across specs; returns each service's dependency depth.
fn validate(specs: &[ServiceSpec]) -> Result<Vec<usize>, SupervisorError> {
    let mut index = HashMap::new();
    for (i, s) in specs.iter().enumerate() {
        s.validate()?;
        if index.insert(s.name.as_str(), i).is_some() {
            return Err(SupervisorError::DuplicateService(s.name.clone()));
        }
    }
    for s in specs {
        for d in &s.depends_on {
            if !index.contains_key(d.as_str()) {
                return Err(SupervisorError::UnknownDependency {
                    service: s.name.clone(),
                    dependency: d.clone(),
                });
            }
        }
    }
    // Depth-first search; `path` is the current chain, to report a cycle in order.
    fn visit(
        i: usize,
        specs: &[ServiceSpec],
        index: &HashMap<&str, usize>,
        depth: &mut [Option<usize>],
        path: &mut Vec<usize>,
    ) -> Result<usize, SupervisorError> {
        if let Some(d) = depth[i] {
            return Ok(d);
        }
        if let Some(pos) = path.iter().position(|p| *p == i) {
            let mut cycle: Vec<String> =
                path[pos..].iter().map(|p| specs[*p].name.clone()).collect();
            cycle.push(specs[i].name.clone());
            return Err(SupervisorError::DependencyCycle(cycle));
        }
        path.push(i);
        let mut d = 0;
        for dep in &specs[i].depends_on {
            d = d.max(1 + visit(index[dep.as_str()], specs, index, depth, path)?);
        }
        path.pop();
        depth[i] = Some(d);
        Ok(d)
    }
    let mut depth = vec![None; specs.len()];
    for i in 0..specs.len() {
        visit(i, specs, &index, &mut depth, &mut Vec::new())?;
    }
    Ok(depth.into_iter().map(|d| d.unwrap_or(0)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::CommandSpec;

    fn spec(name: &str, deps: &[&str]) -> ServiceSpec {
        let mut s = ServiceSpec::new(name, CommandSpec::Shell("true".into()));
        s.depends_on = deps.iter().map(|d| d.to_string()).collect();
        s
    }

    #[test]
    fn dependency_depths_and_errors() {
        let d = validate(&[
            spec("web", &["db", "cache"]),
            spec("db", &[]),
            spec("cache", &["db"]),
        ])
        .unwrap();
        assert_eq!(d, [2, 0, 1]);
        let e = validate(&[spec("a", &["b"]), spec("b", &["c"]), spec("c", &["a"])]).unwrap_err();
        assert_eq!(e.to_string(), "dependency cycle: a -> b -> c -> a");
        assert!(matches!(
            validate(&[spec("a", &["zz"])]),
            Err(SupervisorError::UnknownDependency { .. })
        ));
        assert!(matches!(
            validate(&[spec("a", &[]), spec("a", &[])]),
            Err(SupervisorError::DuplicateService(_))
        ));
    }
}
