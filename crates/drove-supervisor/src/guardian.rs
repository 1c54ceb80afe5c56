//! The guardian: one small helper process per drove that stops what drove started when
//! drove itself dies without doing it (`kill -9`, an OOM kill, a crash).
//!
//! Why it exists: `PR_SET_PDEATHSIG = SIGKILL` (what instances get when no guardian
//! runs) reaches the *direct* child only, and it cannot be used with `drove upgrade`
//! (it fires when `execve` ends the spawning thread), so with a guardian instances are
//! spawned without it and the guardian alone stops them when drove dies. Even the
//! signal would not be enough: an app run through `sh -c 'cd app && node server.js'`,
//! or one that forks workers (gunicorn, node cluster), leaves processes that outlive a
//! killed drove, keep their ports and answer the next drove's probes. Process groups do not help by themselves: nobody is left to signal them.
//!
//! How: drove starts `drove __guardian` (any program that calls [`guardian_main`]) in its
//! own process group, with a pipe as its stdin. For every instance process group drove
//! spawns it writes `+PGID SIGNAL GRACE_MS INSTANCE`, and `-PGID` once the group is gone;
//! `bye` when drove stopped everything itself. The kernel closes the pipe when drove dies,
//! however it dies: on end of file without `bye`, the guardian stops each group it still
//! watches the way drove would (the stop signal, the grace, SIGKILL), prints what it did,
//! and exits. One guardian per drove rather than one shim per instance: a fleet of 100
//! instances costs one extra process, and the guardian never stands between drove and
//! an app (pids, signals and exit codes stay direct).
//!
//! A group is signalled only if one of its processes still carries
//! `DROVE_INSTANCE=<instance>` in its environment, so a process group id reused by an
//! unrelated program after the instance ended is never touched.
//!
//! What escapes it: the guardian itself being killed together with drove (`kill -9` of
//! both), and processes that left their group (see LIFECYCLE.md). The next `drove up`
//! then finds their ports held and names the holder (`port 8101 is in use by pid N`).

use std::collections::BTreeMap;
use std::io::{self, BufRead, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::procfs::{group_members, signal_group};
use crate::slot::lock;

/// The guardian polls the groups it stops this often.
const POLL: Duration = Duration::from_millis(50);
/// Longest grace the guardian gives a group before SIGKILL, whatever the config says:
/// drove is gone, nothing drains, and a user waits for the ports.
const MAX_GRACE: Duration = Duration::from_secs(30);
/// After SIGKILL, how long to wait for a group to vanish.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// drove's end of the guardian: tells it which process groups to watch.
#[derive(Debug)]
pub struct Guardian {
    pipe: Mutex<Option<std::fs::File>>,
    /// The guardian process: our child, spawned here or by the drove this one replaced
    /// (`drove upgrade` keeps the PID, so it stays our child).
    child: Mutex<Option<Child>>,
    pid: u32,
}

impl Guardian {
    /// Starts `program args...` as the guardian (stdin a pipe from drove, stdout and
    /// stderr inherited, its own process group so a Ctrl-C or `kill -- -PGID` aimed at
    /// drove's group does not reach it).
    pub fn start(program: &Path, args: &[&str]) -> io::Result<Guardian> {
        use std::os::unix::process::CommandExt;
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .process_group(0)
            .spawn()?;
        let pipe = child
            .stdin
            .take()
            .map(|p| std::fs::File::from(std::os::fd::OwnedFd::from(p)));
        Ok(Guardian {
            pipe: Mutex::new(pipe),
            pid: child.id(),
            child: Mutex::new(Some(child)),
        })
    }

    /// The guardian's pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// For an upgrade: the guardian's pid and the descriptor of the pipe to it (kept
    /// open across `execve`, so the guardian never sees end of file).
    pub fn hand_off(&self) -> Option<(u32, i32)> {
        use std::os::fd::AsRawFd;
        lock(&self.pipe).as_ref().map(|p| (self.pid, p.as_raw_fd()))
    }

    /// The guardian the drove before this one started (`drove upgrade`), with its pipe.
    #[allow(unsafe_code)]
    pub fn adopt(pid: u32, pipe_fd: i32) -> Guardian {
        use std::os::fd::FromRawFd;
        // SAFETY: the descriptor was listed in the hand-over by the drove before this
        // one, which kept it open across `execve` for this; nothing else owns it.
        let inherited = unsafe { std::fs::File::from_raw_fd(pipe_fd) };
        // With close-on-exec again: an instance that inherited the pipe would keep it
        // open after drove died, and the guardian would never see end of file.
        let pipe = inherited.try_clone().ok();
        drop(inherited);
        Guardian {
            pipe: Mutex::new(pipe),
            child: Mutex::new(None),
            pid,
        }
    }

    fn send(&self, line: &str) {
        let mut pipe = lock(&self.pipe);
        if let Some(p) = pipe.as_mut() {
            if let Err(e) = p.write_all(line.as_bytes()).and_then(|_| p.flush()) {
                tracing::warn!(error = %e, "the guardian process is gone: instances may outlive a killed drove");
                *pipe = None;
            }
        }
    }

    /// Watch a new instance group: stop it with `signal`, then SIGKILL after `grace`.
    pub(crate) fn watch(&self, pgid: i32, signal: Signal, grace: Duration, instance: &str) {
        self.send(&format!(
            "+{pgid} {} {} {instance}\n",
            signal as i32,
            grace.as_millis()
        ));
    }

    /// The group is gone (drove stopped it, or it ended by itself).
    pub(crate) fn forget(&self, pgid: i32) {
        self.send(&format!("-{pgid}\n"));
    }

    /// drove stopped everything itself: the guardian exits without touching anything.
    /// Waits (briefly) for it to exit.
    pub fn release(&self) {
        self.send("bye\n");
        *lock(&self.pipe) = None;
        let mut child = lock(&self.child);
        let end = Instant::now() + Duration::from_secs(2);
        while Instant::now() < end {
            let exited = match child.as_mut() {
                Some(c) => matches!(c.try_wait(), Ok(Some(_))),
                None => !matches!(
                    nix::sys::wait::waitpid(
                        nix::unistd::Pid::from_raw(self.pid as i32),
                        Some(nix::sys::wait::WaitPidFlag::WNOHANG)
                    ),
                    Ok(nix::sys::wait::WaitStatus::StillAlive)
                ),
            };
            if exited {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// A group the guardian watches.
#[derive(Debug, Clone, PartialEq)]
struct Watched {
    signal: Signal,
    grace: Duration,
    instance: String,
}

/// What the guardian read before its input ended.
#[derive(Debug, Default, PartialEq)]
struct Watching {
    groups: BTreeMap<i32, Watched>,
    released: bool,
}

fn read_commands(input: impl BufRead) -> Watching {
    let mut w = Watching::default();
    for line in input.lines() {
        let Ok(line) = line else { break };
        let line = line.trim();
        if line == "bye" {
            w.released = true;
            break;
        }
        if let Some(rest) = line.strip_prefix('+') {
            let f: Vec<&str> = rest.splitn(4, ' ').collect();
            let parsed = (|| {
                let pgid: i32 = f.first()?.parse().ok()?;
                let signal = Signal::try_from(f.get(1)?.parse::<i32>().ok()?).ok()?;
                let grace = Duration::from_millis(f.get(2)?.parse().ok()?);
                let instance = f.get(3)?.to_string();
                Some((
                    pgid,
                    Watched {
                        signal,
                        grace,
                        instance,
                    },
                ))
            })();
            if let Some((pgid, w2)) = parsed.filter(|(pgid, _)| *pgid > 1) {
                w.groups.insert(pgid, w2);
            }
        } else if let Some(pgid) = line.strip_prefix('-').and_then(|p| p.parse().ok()) {
            w.groups.remove(&pgid);
        }
    }
    w
}

/// Whether a process of the group still is that instance (its environment says so).
fn still_the_instance(pgid: i32, instance: &str) -> Vec<i32> {
    let want = format!("DROVE_INSTANCE={instance}");
    let members = group_members(pgid);
    let ours = members.iter().any(|pid| {
        std::fs::read(format!("/proc/{pid}/environ"))
            .map(|env| env.split(|b| *b == 0).any(|kv| kv == want.as_bytes()))
            .unwrap_or(false)
    });
    if ours {
        members
    } else {
        Vec::new()
    }
}

/// The guardian's main loop (`drove __guardian`): reads drove's messages from `input`
/// until it ends; then, unless drove said `bye`, stops every group still watched.
/// Returns the process exit code (0).
pub fn guardian_main(input: impl BufRead, drove_pid: Option<u32>) -> i32 {
    let w = read_commands(input);
    if w.released {
        return 0;
    }
    let mut err = io::stderr();
    let left: Vec<(i32, Watched, Vec<i32>)> = w
        .groups
        .into_iter()
        .filter_map(|(pgid, g)| {
            let members = still_the_instance(pgid, &g.instance);
            (!members.is_empty()).then_some((pgid, g, members))
        })
        .collect();
    if left.is_empty() {
        return 0;
    }
    let who = drove_pid.map_or("drove".to_string(), |p| format!("drove (pid {p})"));
    let list: Vec<String> = left
        .iter()
        .map(|(pgid, g, m)| format!("{} (pgid {pgid}, {} process(es))", g.instance, m.len()))
        .collect();
    // drove's stderr may be a closed pipe by now: a failed write changes nothing.
    let _ = writeln!(
        err,
        "drove guardian: {who} ended without stopping its instances; stopping {}",
        list.join(", ")
    );
    let start = Instant::now();
    let mut pending: Vec<(i32, Watched, bool)> = Vec::new();
    for (pgid, g, _) in left {
        signal_group(pgid, g.signal);
        pending.push((pgid, g, false));
    }
    let mut killed = 0;
    loop {
        pending.retain(|(pgid, _, _)| !group_members(*pgid).is_empty());
        if pending.is_empty() {
            break;
        }
        let now = start.elapsed();
        for (pgid, g, sent_kill) in pending.iter_mut() {
            if !*sent_kill && now >= g.grace.min(MAX_GRACE) {
                signal_group(*pgid, Signal::SIGKILL);
                *sent_kill = true;
                killed += 1;
            }
        }
        if pending.iter().all(|p| p.2) && now >= MAX_GRACE + KILL_WAIT {
            break;
        }
        std::thread::sleep(POLL);
    }
    let _ = writeln!(
        err,
        "drove guardian: done in {:.1}s ({killed} group(s) needed SIGKILL{})",
        start.elapsed().as_secs_f64(),
        if pending.is_empty() {
            String::new()
        } else {
            format!("; {} survived it", pending.len())
        }
    );
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_protocol() {
        let input = "+100 15 30000 web.1\n+200 2 500 web.2\n-100\n+1 9 0 init\n";
        let w = read_commands(input.as_bytes());
        assert!(!w.released);
        assert_eq!(w.groups.len(), 1, "{w:?}");
        let g = &w.groups[&200];
        assert_eq!(
            (g.signal, g.grace, g.instance.as_str()),
            (Signal::SIGINT, Duration::from_millis(500), "web.2")
        );
        assert!(read_commands("+100 15 0 web.1\nbye\n".as_bytes()).released);
    }

    #[test]
    fn a_group_without_the_instance_marker_is_left_alone() {
        // This test process's own group: it has no DROVE_INSTANCE=nope.9.
        let me = nix::unistd::getpgrp().as_raw();
        assert!(still_the_instance(me, "nope.9").is_empty());
    }
}
