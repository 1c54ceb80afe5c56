//! One instance slot: a task that owns the slot's current process and drives the state
//! machine of LIFECYCLE.md (spawn → probe → ready → health/drain → stop or exit →
//! backoff → spawn …). Everything else talks to it through [`SlotCmd`]s.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitStatus;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use crate::handoff::{adopt_pipe, Adopted, InstanceHandoff, Proc, StartGate};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::{sleep, sleep_until, Instant};

use crate::backoff::Backoff;
use crate::error::SupervisorError;
use crate::event::{ExitInfo, InstanceEvent, InstanceId, InstanceState};
use crate::guardian::Guardian;
use crate::logs::{pump, InstanceLog};
use crate::procfs::{group_members, signal_group};
use crate::spawn::{self, Spawner};
use crate::spec::{Policy, PortSpec, Probe, ProbeKind, ServiceSpec, Signal};

/// How long past the drain grace the supervisor waits for the runtime's `done` before it
/// stops the process anyway: the runtime is expected to answer by `grace`; this only
/// keeps a lost acknowledgement from blocking a stop forever.
const DRAIN_ACK_SLACK: Duration = Duration::from_secs(5);

/// After SIGKILL, how long to wait for the group to vanish (it takes milliseconds unless
/// a process is stuck in uninterruptible sleep, which no signal can end).
const KILL_WAIT: Duration = Duration::from_secs(5);

/// Poll period while waiting for a process group to empty.
const GROUP_POLL: Duration = Duration::from_millis(25);

/// Requests to a slot task.
pub(crate) enum SlotCmd {
    /// Take out of rotation, keep running.
    Drain(oneshot::Sender<Result<(), SupervisorError>>),
    /// Back into rotation.
    Undrain(oneshot::Sender<Result<(), SupervisorError>>),
    /// Stop the process (draining first when `drain` and in rotation). With `restart`,
    /// a new process is started in the same slot at once; otherwise the slot ends.
    Stop {
        drain: bool,
        restart: bool,
        reply: oneshot::Sender<()>,
    },
}

/// A replacement request from a slot (failed liveness) or the memory monitor.
pub(crate) struct ReplaceRequest {
    pub index: u32,
    pub pid: u32,
    pub reason: String,
}

/// Slot data readable by `status` and the resource monitor.
#[derive(Debug, Default)]
pub(crate) struct SlotShared {
    pub pid: Option<u32>,
    pub port: Option<u16>,
    pub restarts: u32,
    pub started_at: Option<Instant>,
    pub last_exit: Option<ExitInfo>,
    /// When the previous process ended (wall clock, for status).
    pub last_exit_at: Option<SystemTime>,
    pub backoff: Option<Duration>,
    /// When the next start is due while in Backoff/Crashloop (wall clock, for status).
    pub retry_at: Option<SystemTime>,
    /// Why the slot is not running a process (Backoff, Crashloop, Exited): the exit, the
    /// refused start, the crash-loop rule. `None` while a process runs.
    pub why: Option<String>,
    /// The last failed ready probe of the current process, and since when it fails
    /// (cleared when one passes and on every spawn).
    pub last_probe_error: Option<(String, Instant)>,
    pub rss_bytes: Option<u64>,
    pub cpu_seconds: Option<f64>,
    /// A replacement was asked for the current process (reset on every spawn).
    pub replace_requested: bool,
    /// The read ends of the current process's stdout and stderr pipes (listed in an
    /// upgrade's hand-over).
    pub out_fds: (Option<i32>, Option<i32>),
}

/// What the rest of the supervisor holds of a slot.
#[derive(Clone)]
pub(crate) struct SlotHandle {
    pub id: InstanceId,
    pub cmd: mpsc::UnboundedSender<SlotCmd>,
    pub state: watch::Receiver<InstanceState>,
    pub shared: Arc<Mutex<SlotShared>>,
}

impl SlotHandle {
    pub fn shared(&self) -> MutexGuard<'_, SlotShared> {
        lock(&self.shared)
    }

    pub fn state(&self) -> InstanceState {
        *self.state.borrow()
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The current spec of a service, shared by its slots; replaced by `update`.
pub(crate) type SpecCell = Arc<Mutex<Arc<ServiceSpec>>>;

/// Everything a slot task needs.
pub(crate) struct SlotCtx {
    pub id: InstanceId,
    /// The spec the current process was started with.
    pub spec: Arc<ServiceSpec>,
    /// Where the next process's spec comes from.
    pub spec_src: SpecCell,
    pub events: mpsc::UnboundedSender<InstanceEvent>,
    pub spawner: Spawner,
    pub log: InstanceLog,
    pub replace: mpsc::UnboundedSender<ReplaceRequest>,
    pub state: watch::Sender<InstanceState>,
    pub shared: Arc<Mutex<SlotShared>>,
    pub cmds: mpsc::UnboundedReceiver<SlotCmd>,
    /// Told about every process group, so that none outlives a killed drove.
    pub guardian: Option<Arc<Guardian>>,
    /// The process to take over instead of spawning the first one (an upgrade).
    pub adopt: Option<InstanceHandoff>,
    /// Closed while an upgrade hands the instances over: no process is started.
    pub gate: StartGate,
}

/// What every slot of a supervisor shares (cloned into each new slot).
pub(crate) struct SlotEnv {
    pub events: mpsc::UnboundedSender<InstanceEvent>,
    pub spawner: Spawner,
    pub guardian: Option<Arc<Guardian>>,
    pub gate: StartGate,
}

/// Creates the channels of a new slot; the caller spawns `run(ctx)`.
pub(crate) fn new_slot(
    id: InstanceId,
    spec_src: SpecCell,
    log: InstanceLog,
    replace: mpsc::UnboundedSender<ReplaceRequest>,
    adopt: Option<InstanceHandoff>,
    env: SlotEnv,
) -> (SlotHandle, SlotCtx) {
    let (cmd_tx, cmds) = mpsc::unbounded_channel();
    let (state, state_rx) = watch::channel(InstanceState::Starting);
    let shared = Arc::new(Mutex::new(SlotShared::default()));
    let handle = SlotHandle {
        id: id.clone(),
        cmd: cmd_tx,
        state: state_rx,
        shared: shared.clone(),
    };
    let spec = lock(&spec_src).clone();
    let ctx = SlotCtx {
        id,
        spec,
        spec_src,
        events: env.events,
        spawner: env.spawner,
        log,
        replace,
        state,
        shared,
        cmds,
        guardian: env.guardian,
        adopt,
        gate: env.gate,
    };
    (handle, ctx)
}

/// How one process's life ended.
enum Ended {
    /// Exited on its own after `uptime`, was stopped because it never got ready, or
    /// never ran; `reason` says why in the last two cases (a port held by another
    /// process, a failed spawn, the start timeout).
    Exited {
        exit: Option<ExitInfo>,
        uptime: Duration,
        reason: Option<String>,
    },
    /// Stopped on request.
    Stopped {
        restart: bool,
        reply: Option<oneshot::Sender<()>>,
    },
}

/// Kills the process group if the slot task is dropped while it runs (runtime shutdown,
/// panic): no process may outlive its supervisor.
struct GroupGuard(Option<i32>);

impl GroupGuard {
    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pgid) = self.0 {
            signal_group(pgid, Signal::SIGKILL);
        }
    }
}

/// Aborts a helper task (prober, pump) when dropped.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Converts an exit status.
fn exit_info(st: std::io::Result<ExitStatus>) -> Option<ExitInfo> {
    use std::os::unix::process::ExitStatusExt;
    st.ok().map(|s| ExitInfo {
        code: s.code(),
        signal: s.signal(),
    })
}

/// Whether no live process is left in the group (orphaned zombies waiting for an init
/// that may never reap them, in a container, do not count).
fn group_empty(pgid: i32) -> bool {
    !crate::procfs::group_alive(pgid)
}

async fn wait_group_empty(pgid: i32, until: Instant) -> bool {
    loop {
        if group_empty(pgid) {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        sleep(GROUP_POLL).await;
    }
}

impl SlotCtx {
    fn emit(&self, e: InstanceEvent) {
        // A runtime that stopped listening does not stop the supervisor.
        let _ = self.events.send(e);
    }

    fn set_state(&self, s: InstanceState) {
        // `Starting` is announced on every spawn, including the first (the initial
        // value of the watch is already `Starting`).
        if *self.state.borrow() == s && s != InstanceState::Starting {
            return;
        }
        tracing::debug!(instance = %self.id, state = %s, "state");
        self.emit(InstanceEvent::StateChanged {
            id: self.id.clone(),
            state: s,
        });
        self.state.send_replace(s);
    }

    fn current(&self) -> InstanceState {
        *self.state.borrow()
    }

    fn addr(&self, port: Option<u16>) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, port.unwrap_or(0)))
    }

    fn invalid(&self, op: &'static str) -> SupervisorError {
        SupervisorError::InvalidState {
            id: self.id.clone(),
            state: self.current(),
            op,
        }
    }

    fn shared(&self) -> MutexGuard<'_, SlotShared> {
        lock(&self.shared)
    }

    /// An event of this instance: into its log file, and printed once — as the
    /// `web.2 | [drove] ...` line when instance output goes to stdout, else as a log line.
    fn note(&self, msg: &str) {
        if self.log.to_stdout() {
            tracing::debug!(instance = %self.id, "{msg}");
        } else {
            tracing::info!(instance = %self.id, "{msg}");
        }
        self.log.system(msg);
    }

    fn port(&self) -> Option<u16> {
        match self.spec.port {
            PortSpec::Base(b) => b.checked_add((self.id.index - 1) as u16),
            PortSpec::Auto => match spawn::free_port() {
                Ok(p) => Some(p),
                Err(e) => {
                    tracing::warn!(instance = %self.id, error = %e, "no free port");
                    None
                }
            },
            PortSpec::None => None,
        }
    }
}

/// The slot task: runs processes until stopped.
pub(crate) async fn run(mut ctx: SlotCtx) {
    let mut backoff = Backoff::new(&ctx.spec.restart);
    let mut first = true;
    // The reply to an in-place restart (`Stop { restart: true }`): sent once the next
    // process is `Starting`, so that whoever waits for it to become ready next never
    // mistakes the old process's `Stopping` or `Backoff` for the new one's.
    let mut restarted: Option<oneshot::Sender<()>> = None;
    if let Some(a) = &ctx.adopt {
        ctx.shared().restarts = a.restarts;
    }
    loop {
        if !first {
            ctx.shared().restarts += 1;
        }
        first = false;
        let (exit, uptime, reason) = match run_process(&mut ctx, restarted.take()).await {
            Ended::Stopped {
                restart: true,
                reply,
            } => {
                restarted = reply;
                continue;
            }
            Ended::Stopped {
                restart: false,
                reply,
            } => {
                ctx.set_state(InstanceState::Stopped);
                if let Some(r) = reply {
                    let _ = r.send(());
                }
                return;
            }
            Ended::Exited {
                exit,
                uptime,
                reason,
            } => (exit, uptime, reason),
        };
        let policy = ctx.spec.restart.policy;
        let restart = match policy {
            Policy::Always => true,
            Policy::OnFailure => !exit.is_some_and(|e| e.success()),
            Policy::Never => false,
        };
        let what = match (reason, exit) {
            (Some(why), _) => why,
            (None, Some(e)) => format!("exited ({e}) after {}", secs1(uptime)),
            (None, None) => format!("ended (exit status unknown) after {}", secs1(uptime)),
        };
        if !restart {
            let why = format!(
                "{what}; restart policy {}: not restarted",
                policy_name(policy)
            );
            ctx.note(&why);
            ctx.shared().why = Some(why);
            ctx.set_state(InstanceState::Exited);
            match wait_while_down(&mut ctx, None).await {
                Down::Stopped => return,
                Down::Start(reply) => restarted = reply,
            }
            ctx.shared().why = None;
            continue;
        }
        let d = backoff.on_exit(uptime);
        let why = if d.crashloop {
            let (reset_after, max) = backoff.limits();
            format!(
                "{what}; crashloop: {} failed runs in a row, each within reset_after ({}) of its start, so it is retried every max_delay ({})",
                d.quick_exits,
                secs1(reset_after),
                secs1(max)
            )
        } else {
            what.clone()
        };
        {
            let mut s = ctx.shared();
            s.backoff = Some(d.delay);
            s.retry_at = Some(SystemTime::now() + d.delay);
            s.why = Some(why);
        }
        let state = if d.crashloop {
            InstanceState::Crashloop
        } else {
            InstanceState::Backoff
        };
        ctx.note(&format!(
            "{what}; restarting in {}{}",
            secs1(d.delay),
            if d.crashloop { " (crashloop)" } else { "" }
        ));
        ctx.set_state(state);
        let down = wait_while_down(&mut ctx, Some(d.delay)).await;
        {
            let mut s = ctx.shared();
            s.backoff = None;
            s.retry_at = None;
            s.why = None;
        }
        match down {
            Down::Stopped => return,
            Down::Start(reply) => restarted = reply,
        }
    }
}

/// `0.3s`, `12.0s`.
fn secs1(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

fn policy_name(p: Policy) -> &'static str {
    match p {
        Policy::Always => "always",
        Policy::OnFailure => "on-failure",
        Policy::Never => "never",
    }
}

/// How a wait between two processes ended.
enum Down {
    /// The slot was stopped: it ends.
    Stopped,
    /// Start the next process: the delay is over, or an in-place restart asked for it now
    /// (its reply goes out once the process is `Starting`).
    Start(Option<oneshot::Sender<()>>),
}

/// Waits out a backoff delay (or forever when `None`) while answering commands.
async fn wait_while_down(ctx: &mut SlotCtx, delay: Option<Duration>) -> Down {
    let until = delay.map(|d| Instant::now() + d);
    loop {
        let cmd = tokio::select! {
            _ = async { sleep_until(until.unwrap_or_else(Instant::now)).await }, if until.is_some() => return Down::Start(None),
            c = ctx.cmds.recv() => c,
        };
        match cmd {
            None => {
                ctx.set_state(InstanceState::Stopped);
                return Down::Stopped;
            }
            Some(SlotCmd::Stop {
                restart: true,
                reply,
                ..
            }) => {
                return Down::Start(Some(reply)); // start again now
            }
            Some(SlotCmd::Stop { reply, .. }) => {
                ctx.set_state(InstanceState::Stopped);
                let _ = reply.send(());
                return Down::Stopped;
            }
            Some(SlotCmd::Drain(r)) => {
                let _ = r.send(Err(ctx.invalid("drain")));
            }
            Some(SlotCmd::Undrain(r)) => {
                let _ = r.send(Err(ctx.invalid("undrain")));
            }
        }
    }
}

/// A probe loop running beside the process; results arrive on a channel. With `owner`
/// (port, pid of the group leader), a passed probe also needs the listener on that port
/// to belong to the instance's process group: a probe answered by another program does
/// not make this instance ready (see `ports.rs`).
fn spawn_prober(
    probe: Probe,
    port: Option<u16>,
    env: Vec<(String, String)>,
    cwd: std::path::PathBuf,
    owner: Option<(u16, u32)>,
) -> (AbortOnDrop, mpsc::Receiver<Result<(), String>>) {
    let (tx, rx) = mpsc::channel(1);
    let task = tokio::spawn(async move {
        // The last "who holds it instead" message, by the foreign sockets it is about:
        // naming the holder scans every process's fds, not something to repeat at every
        // probe of a fast ready interval.
        let mut named: Option<(crate::ports::NotOwned, String)> = None;
        loop {
            let mut r = crate::probe::run(&probe.kind, port, &env, &cwd, probe.timeout).await;
            if let (Ok(()), Some((port, pid))) = (&r, owner) {
                let cached = named.clone();
                let (res, msg) =
                    tokio::task::spawn_blocking(move || {
                        match crate::ports::check_owned(port, &group_members(pid as i32)) {
                            Ok(()) => (Ok(()), None),
                            Err(e) => match cached {
                                Some((k, m)) if k == e => (Err(m.clone()), Some((k, m))),
                                _ => {
                                    let m = e.describe(pid);
                                    (Err(m.clone()), Some((e, m)))
                                }
                            },
                        }
                    })
                    .await
                    .unwrap_or_else(|e| (Err(format!("ownership check failed: {e}")), None));
                r = res;
                named = msg;
            }
            if tx.send(r).await.is_err() {
                return;
            }
            sleep(probe.interval).await;
        }
    });
    (AbortOnDrop(task), rx)
}

/// Whether a probe reaches the instance's own port (and can thus be answered by
/// whoever holds that port).
fn targets_own_port(p: &Probe) -> bool {
    matches!(
        p.kind,
        ProbeKind::Http { .. } | ProbeKind::Tcp { addr: None }
    )
}

async fn recv_opt<T>(rx: &mut Option<(AbortOnDrop, mpsc::Receiver<T>)>) -> Option<T> {
    match rx {
        Some((_, rx)) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Spawns one process and supervises it until it exits or is stopped. `restarted` is
/// answered as soon as the state is `Starting` (see `run`).
async fn run_process(ctx: &mut SlotCtx, restarted: Option<oneshot::Sender<()>>) -> Ended {
    // An upgrade in progress: the process list is written down, nothing may start.
    let pass = ctx.gate.enter().await;
    ctx.spec = lock(&ctx.spec_src).clone();
    let adopt = ctx.adopt.take();
    let port = match &adopt {
        Some(a) => a.port,
        None => ctx.port(),
    };
    {
        let mut s = ctx.shared();
        s.port = port;
        s.pid = None;
        s.started_at = None;
        s.rss_bytes = None;
        s.cpu_seconds = None;
        s.replace_requested = false;
    }
    ctx.set_state(InstanceState::Starting);
    if let Some(r) = restarted {
        let _ = r.send(());
    }
    let refused = |reason: String| Ended::Exited {
        exit: None,
        uptime: Duration::ZERO,
        reason: Some(reason),
    };
    // A fixed port someone else holds: the app would die with EADDRINUSE while the other
    // program answers its probes and gets its traffic. Refuse before spawning, saying who.
    if let (PortSpec::Base(_), Some(p), None) = (ctx.spec.port, port, &adopt) {
        if let Ok(Some(used)) =
            tokio::task::spawn_blocking(move || crate::ports::port_in_use(p)).await
        {
            // Said once, by the restart loop, with the delay.
            return refused(format!("not started: {used}"));
        }
    }
    let env = spawn::instance_env(&ctx.spec, ctx.id.index, port);
    let (mut child, pid, was_ready) = match &adopt {
        Some(a) => (Proc::Adopted(Adopted::new(a.pid)), a.pid, a.ready),
        None => {
            // With a guardian, no parent-death signal: it would fire when an upgrade's
            // `execve` ends the spawner thread (the guardian covers a killed drove).
            let guarded = ctx.guardian.is_some();
            let cmd = spawn::build(&ctx.spec, ctx.id.index, port, &env, guarded);
            let child = match ctx.spawner.spawn(cmd).await {
                Ok(c) => c,
                Err(e) => return refused(format!("cannot start: {e}")),
            };
            let Some(pid) = child.id() else {
                return refused("cannot start: the process ended at once".into());
            };
            (Proc::Spawned(child), pid, false)
        }
    };
    let pgid = pid as i32;
    let mut guard = GroupGuard(Some(pgid));
    if let Some(g) = &ctx.guardian {
        g.watch(
            pgid,
            ctx.spec.stop_signal,
            ctx.spec.stop_grace,
            &ctx.id.to_string(),
        );
    }
    let uptime_before = adopt
        .as_ref()
        .map_or(Duration::ZERO, |a| Duration::from_millis(a.uptime_ms));
    let started = Instant::now()
        .checked_sub(uptime_before)
        .unwrap_or_else(Instant::now);
    // Output pumps end by themselves at EOF (when every holder of the pipes is gone).
    let mut fds = (None, None);
    match (&mut child, &adopt) {
        (Proc::Spawned(c), _) => {
            use std::os::fd::AsRawFd;
            if let Some(out) = c.stdout.take() {
                fds.0 = Some(out.as_raw_fd());
                tokio::spawn(pump(out, ctx.log.clone()));
            }
            if let Some(err) = c.stderr.take() {
                fds.1 = Some(err.as_raw_fd());
                tokio::spawn(pump(err, ctx.log.clone()));
            }
        }
        (Proc::Adopted(_), Some(a)) => {
            for (fd, slot) in [(a.stdout_fd, &mut fds.0), (a.stderr_fd, &mut fds.1)] {
                let Some(fd) = fd else { continue };
                match adopt_pipe(fd) {
                    Ok(p) => {
                        // The duplicate's number: the inherited one is closed now, and
                        // the next upgrade must name the descriptor that is open.
                        use std::os::fd::AsRawFd;
                        *slot = Some(p.as_raw_fd());
                        tokio::spawn(pump(p, ctx.log.clone()));
                    }
                    Err(e) => {
                        tracing::warn!(instance = %ctx.id, error = %e, "cannot read the adopted instance's output")
                    }
                }
            }
        }
        (Proc::Adopted(_), None) => {}
    }
    {
        let mut s = ctx.shared();
        s.pid = Some(pid);
        s.started_at = Some(started);
        s.last_probe_error = None;
        s.out_fds = fds;
    }
    // Recorded: an upgrade's freeze lists this process from now on.
    drop(pass);
    if adopt.is_some() {
        ctx.note(&format!(
            "pid {pid} taken over after an upgrade of drove{}",
            port.map(|p| format!(" (port {p})")).unwrap_or_default()
        ));
    } else {
        ctx.note(&format!(
            "started pid {pid}{}",
            port.map(|p| format!(" on port {p}")).unwrap_or_default()
        ));
    }

    // A panic while watching the process is contained and the watch starts again over
    // the same process (probes from the start); the process itself is not touched.
    let ended = loop {
        let watch = supervise(ctx, &mut child, pid, port, &env, started, was_ready);
        if let Some(ended) = crate::contain::caught("instance watch", watch).await {
            break ended;
        }
    };
    let uptime = started.elapsed();
    let mut reason = None;
    let (exit, stop) = match ended {
        Supervised::Exited(st) => {
            let exit = exit_info(st);
            if !group_empty(pgid) {
                ctx.note("the process left children in its group; stopping them");
                terminate(ctx, &mut child, pgid, true).await;
            }
            (exit, None)
        }
        Supervised::Stop {
            restart,
            reply,
            exited,
        } => {
            ctx.set_state(InstanceState::Stopping);
            let exit = match exited {
                Some(st) => {
                    terminate(ctx, &mut child, pgid, true).await;
                    exit_info(st)
                }
                None => terminate(ctx, &mut child, pgid, false).await,
            };
            (exit, Some((restart, reply)))
        }
        Supervised::StartTimeout(why) => {
            ctx.set_state(InstanceState::Stopping);
            let exit = terminate(ctx, &mut child, pgid, false).await;
            reason = Some(why);
            (exit, None)
        }
    };
    guard.disarm();
    if let Some(g) = &ctx.guardian {
        g.forget(pgid);
    }
    {
        let mut s = ctx.shared();
        s.pid = None;
        s.out_fds = (None, None);
        s.last_exit = exit;
        s.last_exit_at = Some(SystemTime::now());
        s.rss_bytes = None;
        s.cpu_seconds = None;
    }
    ctx.emit(InstanceEvent::Gone { id: ctx.id.clone() });
    match stop {
        Some((restart, reply)) => {
            ctx.note(&format!(
                "stopped ({})",
                exit.map_or("unknown exit".into(), |e| e.to_string())
            ));
            Ended::Stopped { restart, reply }
        }
        None => Ended::Exited {
            exit,
            uptime,
            reason,
        },
    }
}

enum Supervised {
    Exited(std::io::Result<ExitStatus>),
    Stop {
        restart: bool,
        reply: Option<oneshot::Sender<()>>,
        /// The process exited by itself while being drained.
        exited: Option<std::io::Result<ExitStatus>>,
    },
    /// Not ready within the start timeout: stopped, and why (with the last probe error).
    StartTimeout(String),
}

/// The life of a running process: readiness, liveness, drain/undrain, stop requests.
async fn supervise(
    ctx: &mut SlotCtx,
    child: &mut Proc,
    pid: u32,
    port: Option<u16>,
    env: &[(String, String)],
    started: Instant,
    was_ready: bool,
) -> Supervised {
    let spec = ctx.spec.clone();
    let owner = port.map(|p| (p, pid));
    // Adopted after an upgrade while ready: in rotation at once (it never left).
    let mut ready_probe = spec.ready.clone().filter(|_| !was_ready).map(|p| {
        let owner = owner.filter(|_| targets_own_port(&p));
        spawn_prober(p, port, env.to_vec(), spec.cwd.clone(), owner)
    });
    let start_deadline = started + spec.start_timeout();
    let mut rise = 0u32;
    let mut last_error = String::new();
    let mut health_probe = None;
    let mut fails = 0u32;
    let addr = ctx.addr(port);

    let become_ready = |ctx: &SlotCtx| {
        ctx.emit(InstanceEvent::Ready {
            id: ctx.id.clone(),
            addr,
        });
        ctx.set_state(InstanceState::Ready);
        ctx.note(&format!(
            "ready after {:.2}s",
            started.elapsed().as_secs_f64()
        ));
    };
    if ready_probe.is_none() {
        become_ready(ctx);
        health_probe = spec
            .health
            .clone()
            .map(|p| spawn_prober(p, port, env.to_vec(), spec.cwd.clone(), None));
    }

    crate::contain::test_panic("slot");
    loop {
        let starting = ctx.current() == InstanceState::Starting;
        tokio::select! {
            st = child.wait() => return Supervised::Exited(st),
            _ = sleep_until(start_deadline), if starting => {
                let last = if last_error.is_empty() { "no probe result".to_string() } else { last_error.clone() };
                let why = format!(
                    "not ready within start_timeout ({:.1}s; last probe: {last}); stopped",
                    spec.start_timeout().as_secs_f64()
                );
                ctx.note(&why);
                return Supervised::StartTimeout(why);
            }
            r = recv_opt(&mut ready_probe) => {
                let Some(r) = r else { continue };
                match r {
                    Ok(()) => {
                        rise += 1;
                        ctx.shared().last_probe_error = None;
                        let need = spec.ready.as_ref().map_or(1, |p| p.rise);
                        if rise >= need {
                            ready_probe = None;
                            become_ready(ctx);
                            health_probe = spec
                                .health
                                .clone()
                                .map(|p| spawn_prober(p, port, env.to_vec(), spec.cwd.clone(), None));
                        }
                    }
                    Err(e) => {
                        rise = 0;
                        // Someone else's program answering this instance's port is
                        // worth a line; an app still booting is not.
                        if e.contains("its probe was answered by another program") && e != last_error {
                            ctx.note(&format!("not ready: {e}"));
                        }
                        let mut s = ctx.shared();
                        let since = s.last_probe_error.as_ref().map_or_else(Instant::now, |p| p.1);
                        s.last_probe_error = Some((e.clone(), since));
                        drop(s);
                        last_error = e;
                    }
                }
            }
            r = recv_opt(&mut health_probe) => {
                let Some(r) = r else { continue };
                if ctx.current() != InstanceState::Ready {
                    fails = 0;
                    continue;
                }
                match r {
                    Ok(()) => fails = 0,
                    Err(e) => {
                        fails += 1;
                        let fall = spec.health.as_ref().map_or(1, |p| p.fall);
                        tracing::debug!(instance = %ctx.id, fails, "health probe failed: {e}");
                        if fails >= fall {
                            let first = !std::mem::replace(&mut ctx.shared().replace_requested, true);
                            if first {
                                ctx.note(&format!("unhealthy ({fails} failed probes, last: {e}); replacing it"));
                                let _ = ctx.replace.send(ReplaceRequest {
                                    index: ctx.id.index,
                                    pid,
                                    reason: format!("unhealthy: {e}"),
                                });
                            }
                        }
                    }
                }
            }
            cmd = ctx.cmds.recv() => {
                let state = ctx.current();
                match cmd {
                    None => {
                        return Supervised::Stop { restart: false, reply: None, exited: None };
                    }
                    Some(SlotCmd::Drain(r)) => {
                        if state != InstanceState::Ready {
                            let _ = r.send(Err(ctx.invalid("drain")));
                            continue;
                        }
                        let exited = drain(ctx, child).await;
                        ctx.set_state(InstanceState::Drained);
                        let _ = r.send(Ok(()));
                        if let Some(st) = exited {
                            return Supervised::Exited(st);
                        }
                    }
                    Some(SlotCmd::Undrain(r)) => {
                        if state != InstanceState::Drained {
                            let _ = r.send(Err(ctx.invalid("undrain")));
                            continue;
                        }
                        ctx.emit(InstanceEvent::Undrained { id: ctx.id.clone(), addr });
                        ctx.set_state(InstanceState::Ready);
                        fails = 0;
                        let _ = r.send(Ok(()));
                    }
                    Some(SlotCmd::Stop { drain: want_drain, restart, reply }) => {
                        let exited = if want_drain && state == InstanceState::Ready {
                            drain(ctx, child).await
                        } else {
                            None
                        };
                        return Supervised::Stop { restart, reply: Some(reply), exited };
                    }
                }
            }
        }
    }
}

/// Takes the instance out of rotation: `Draining` event, then waits for the runtime's
/// acknowledgement. Returns the exit status if the process exited meanwhile.
async fn drain(ctx: &SlotCtx, child: &mut Proc) -> Option<std::io::Result<ExitStatus>> {
    ctx.set_state(InstanceState::Draining);
    let (done, ack) = oneshot::channel();
    let grace = ctx.spec.stop_grace;
    ctx.emit(InstanceEvent::Draining {
        id: ctx.id.clone(),
        grace,
        done,
    });
    tokio::select! {
        st = child.wait() => Some(st),
        r = tokio::time::timeout(grace + DRAIN_ACK_SLACK, ack) => {
            if r.is_err() {
                tracing::warn!(instance = %ctx.id, "no drain acknowledgement after {:?}; stopping anyway", grace + DRAIN_ACK_SLACK);
            }
            None
        }
    }
}

/// Stops the process group: stop signal, grace, SIGKILL; returns when the process is
/// reaped and no live process of the group is left (or `KILL_WAIT` after SIGKILL).
/// With `exited`, the leader has already been reaped and only the rest of the group is
/// stopped.
async fn terminate(ctx: &SlotCtx, child: &mut Proc, pgid: i32, exited: bool) -> Option<ExitInfo> {
    let spec = &ctx.spec;
    if exited && group_empty(pgid) {
        return None;
    }
    signal_group(pgid, spec.stop_signal);
    let deadline = Instant::now() + spec.stop_grace;
    let mut status = None;
    if !exited {
        tokio::select! {
            st = child.wait() => status = Some(exit_info(st)),
            _ = sleep_until(deadline) => {}
        }
    }
    let leader_gone = exited || status.is_some();
    if !leader_gone || !wait_group_empty(pgid, deadline).await {
        ctx.note(&format!(
            "still running {:?} after {}; sending SIGKILL to the group",
            spec.stop_grace,
            spec.stop_signal.as_str()
        ));
        signal_group(pgid, Signal::SIGKILL);
        if !leader_gone {
            status = Some(exit_info(child.wait().await));
        }
        if !wait_group_empty(pgid, Instant::now() + KILL_WAIT).await {
            tracing::error!(instance = %ctx.id, pgid, "processes of the group survived SIGKILL (uninterruptible sleep?)");
        }
    }
    status.flatten()
}
