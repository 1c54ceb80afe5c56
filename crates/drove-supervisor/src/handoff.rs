//! Instances handed from one drove to the next by `drove upgrade`.
//!
//! An upgrade replaces drove's program in place (`execve`): the PID stays, so every
//! instance stays drove's child and keeps running untouched; only what the supervisor
//! knew of it lives in memory and must be written down. [`crate::Supervisor::freeze`]
//! stops every slot from starting or stopping processes and lists them; the next drove
//! passes the list as [`crate::SupervisorOptions::adopt`], and each slot takes its
//! process back (waiting on its PID, reading its output pipes) instead of spawning one.

use std::io;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One running instance, as the next drove takes it over.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct InstanceHandoff {
    /// Its service.
    pub service: String,
    /// Its slot (1-based).
    pub index: u32,
    /// Its process (and process group) id.
    pub pid: u32,
    /// The port it was given.
    pub port: Option<u16>,
    /// It was ready (in rotation): the next drove puts it in rotation at once instead of
    /// waiting for its ready probe.
    pub ready: bool,
    /// Restarts of the slot so far.
    pub restarts: u32,
    /// How long it has been running.
    pub uptime_ms: u64,
    /// The read end of its stdout pipe (a descriptor kept across `execve`).
    pub stdout_fd: Option<i32>,
    /// The read end of its stderr pipe.
    pub stderr_fd: Option<i32>,
}

/// A process the slot did not spawn itself: drove's child from before an upgrade.
/// Its exit is found by polling `waitpid` (tokio's child reaper only knows the
/// processes this program spawned).
#[derive(Debug)]
pub(crate) struct Adopted {
    pid: nix::unistd::Pid,
    status: Option<ExitStatus>,
}

/// How often an adopted process is checked for having exited.
const ADOPTED_POLL: Duration = Duration::from_millis(50);

impl Adopted {
    pub(crate) fn new(pid: u32) -> Adopted {
        Adopted {
            pid: nix::unistd::Pid::from_raw(pid as i32),
            status: None,
        }
    }

    /// Waits for the process to exit and reaps it (cancel-safe: each check is whole).
    pub(crate) async fn wait(&mut self) -> io::Result<ExitStatus> {
        use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
        loop {
            if let Some(s) = self.status {
                return Ok(s);
            }
            match waitpid(self.pid, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(_, code)) => {
                    self.status = Some(ExitStatus::from_raw((code & 0xff) << 8))
                }
                Ok(WaitStatus::Signaled(_, sig, _)) => {
                    self.status = Some(ExitStatus::from_raw(sig as i32))
                }
                Ok(_) => tokio::time::sleep(ADOPTED_POLL).await,
                Err(e) => return Err(io::Error::from(e)),
            }
        }
    }
}

/// A supervised process: spawned by this drove, or adopted from the one before.
pub(crate) enum Proc {
    Spawned(tokio::process::Child),
    Adopted(Adopted),
}

impl Proc {
    /// Waits for the process to exit (cancel-safe).
    pub(crate) async fn wait(&mut self) -> io::Result<ExitStatus> {
        match self {
            Proc::Spawned(c) => c.wait().await,
            Proc::Adopted(a) => a.wait().await,
        }
    }
}

/// What `freeze` waits on: slots that found no upgrade under way and are starting a
/// process whose PID is not recorded yet. A slot counts itself in *before* it looks at
/// `frozen` and out again if it is set, so `freeze` (which sets `frozen`, then waits for
/// the count to reach 0) lists every process started before it and none starts after.
#[derive(Clone)]
pub(crate) struct StartGate {
    frozen: tokio::sync::watch::Receiver<bool>,
    starting: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

/// A slot's permission to start one process; dropped once its PID is recorded.
pub(crate) struct StartPass(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl Drop for StartPass {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl StartGate {
    pub(crate) fn new(
        frozen: tokio::sync::watch::Receiver<bool>,
        starting: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    ) -> StartGate {
        StartGate { frozen, starting }
    }

    /// Waits while an upgrade hands the instances over, then lets one process start.
    pub(crate) async fn enter(&mut self) -> StartPass {
        use std::sync::atomic::Ordering::SeqCst;
        loop {
            self.starting.fetch_add(1, SeqCst);
            if !*self.frozen.borrow() {
                return StartPass(self.starting.clone());
            }
            self.starting.fetch_sub(1, SeqCst);
            let _ = self.frozen.wait_for(|f| !*f).await;
        }
    }
}

/// The read end of an adopted instance's output pipe, for its log pump.
#[allow(unsafe_code)]
pub(crate) fn adopt_pipe(fd: i32) -> io::Result<tokio::net::unix::pipe::Receiver> {
    use std::os::fd::{FromRawFd, OwnedFd};
    // A number that is not a pipe is not ours to own: taking it would close whatever
    // this process opened under that number.
    let st = nix::sys::stat::fstat(fd).map_err(io::Error::from)?;
    let kind =
        nix::sys::stat::SFlag::from_bits_truncate(st.st_mode) & nix::sys::stat::SFlag::S_IFMT;
    if kind != nix::sys::stat::SFlag::S_IFIFO {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("descriptor {fd} is not a pipe; left alone"),
        ));
    }
    // SAFETY: `fd` was listed in the hand-over by the drove before this one, which kept
    // it open across `execve` for exactly this purpose; nothing else in this process
    // knows the number, so this is its only owner.
    let inherited = unsafe { OwnedFd::from_raw_fd(fd) };
    // Inherited without close-on-exec: a duplicate that has it, so that no instance
    // started later inherits another one's output pipe.
    let owned = inherited.try_clone()?;
    drop(inherited);
    tokio::net::unix::pipe::Receiver::from_owned_fd(owned)
}
