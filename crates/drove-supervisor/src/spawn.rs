//! Building and spawning instance processes.
//!
//! Every process is spawned from one dedicated, long-lived thread. This is what makes
//! `PR_SET_PDEATHSIG` safe to use: Linux delivers the death signal when the *thread* that
//! forked the child exits, not the process, and Tokio may retire the worker or blocking
//! thread a spawn happened to run on. The spawner thread lives exactly as long as the
//! supervisor, so if drove itself dies (even by SIGKILL) the direct children get SIGKILL.
//! Grandchildren are covered by the process-group kill in the normal paths.

use std::io;
use std::process::Stdio;
use std::sync::mpsc;

use tokio::process::{Child, Command};
use tokio::runtime::Handle;
use tokio::sync::oneshot;

use crate::procfs::signal_group;
use crate::spec::{substitute, CommandSpec, ServiceSpec, Signal};

type Job = (Command, oneshot::Sender<io::Result<Child>>);

/// Handle to the spawner thread (cheap to clone).
#[derive(Clone)]
pub(crate) struct Spawner {
    tx: mpsc::Sender<Job>,
}

impl Spawner {
    /// Starts the thread; it registers children with `rt` (for `Child::wait`) and ends
    /// when the last `Spawner` is dropped.
    pub fn start(rt: Handle) -> io::Result<Spawner> {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("drove-spawner".into())
            .spawn(move || {
                let _rt = rt.enter();
                while let Ok((mut cmd, reply)) = rx.recv() {
                    if let Err(Ok(orphan)) = reply.send(cmd.spawn()) {
                        // The caller went away meanwhile: do not leave the process behind.
                        if let Some(pid) = orphan.id() {
                            signal_group(pid as i32, Signal::SIGKILL);
                        }
                    }
                }
            })?;
        Ok(Spawner { tx })
    }

    pub async fn spawn(&self, cmd: Command) -> io::Result<Child> {
        let (tx, rx) = oneshot::channel();
        let gone = || io::Error::other("spawner thread is gone");
        self.tx.send((cmd, tx)).map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }
}

/// The environment the supervisor adds for instance `index` (1-based).
pub(crate) fn instance_env(
    spec: &ServiceSpec,
    index: u32,
    port: Option<u16>,
) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = spec
        .env
        .iter()
        .map(|(k, v)| (k.clone(), substitute(v, port, index)))
        .collect();
    if let Some(p) = port {
        env.push(("PORT".into(), p.to_string()));
    }
    env.push(("INSTANCE_ID".into(), index.to_string()));
    env.push(("DROVE_SERVICE".into(), spec.name.clone()));
    env.push(("DROVE_INSTANCE".into(), format!("{}.{index}", spec.name)));
    env
}

/// The command of one instance: own process group, piped output, death signal.
pub(crate) fn build(
    spec: &ServiceSpec,
    index: u32,
    port: Option<u16>,
    env: &[(String, String)],
    guarded: bool,
) -> Command {
    let mut cmd = match &spec.command {
        CommandSpec::Shell(s) => {
            let mut c = Command::new("sh");
            c.arg("-c").arg(substitute(s, port, index));
            c
        }
        CommandSpec::Argv(v) => {
            let mut c = Command::new(substitute(&v[0], port, index));
            c.args(v[1..].iter().map(|a| substitute(a, port, index)));
            c
        }
    };
    cmd.current_dir(&spec.cwd)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Own group (pgid = pid): the stop signal and SIGKILL reach grandchildren too.
        .process_group(0);
    if !guarded {
        set_parent_death_signal(&mut cmd);
    }
    cmd
}

/// Asks the kernel to SIGKILL the child when the spawner thread dies.
#[allow(unsafe_code)]
fn set_parent_death_signal(cmd: &mut Command) {
    let parent = std::process::id();
    // SAFETY: `pre_exec` runs between fork and exec in the child, where only
    // async-signal-safe functions may be called. The closure calls only `prctl` and
    // `getppid` (both async-signal-safe syscalls), allocates nothing and takes no locks.
    // There is no safe API in std, tokio or nix 0.29 for setting PR_SET_PDEATHSIG on a
    // child; it is the only way to make the child die with drove when drove is killed.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died before prctl took effect: then never exec.
            if libc::getppid() as u32 != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

/// Asks the OS for a free port on 127.0.0.1 (bind port 0, read it, close).
pub(crate) fn free_port() -> io::Result<u16> {
    let l = std::net::TcpListener::bind(("127.0.0.1", 0))?;
    Ok(l.local_addr()?.port())
}

/// Whether `port` can be bound right now (on all interfaces, like most servers do).
pub(crate) fn port_bindable(port: u16) -> bool {
    std::net::TcpListener::bind(("0.0.0.0", port)).is_ok()
}
