//! `drove down` waits until drove and every instance it ran are gone, so that `drove down
//! && drove up` finds the ports free. The admin API stops answering as soon as the
//! shutdown begins, so the wait watches processes: drove's pid and the instances'
//! process groups (from the `POST /api/down` answer), through /proc and `kill(pid, 0)`.
//! That works where the processes are visible: drove on this host, in this pid
//! namespace, which `drove down` checks before it asks for the shutdown (its pid from
//! the status document must be a drove process here). Elsewhere (an admin API reached
//! over the network, drove in a container) it says it cannot watch and returns once the
//! shutdown has begun.

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use drove_api::DownAnswer;
use nix::errno::Errno;
use nix::sys::signal::kill;
use nix::unistd::Pid;

/// How often the processes are looked at.
const POLL: Duration = Duration::from_millis(100);

/// Whether `pid` is a live (non-zombie) process. A process of another user counts as
/// alive (EPERM).
fn alive(pid: u32) -> bool {
    match kill(Pid::from_raw(pid as i32), None) {
        Err(Errno::ESRCH) => false,
        _ => std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                let state = s.rsplit_once(')')?.1.split_whitespace().next()?.to_string();
                Some(!matches!(state.as_str(), "Z" | "X"))
            })
            .unwrap_or(true),
    }
}

/// Whether a live process of the group is left.
fn group_alive(pgid: u32) -> bool {
    drove_supervisor::group_alive(pgid as i32)
}

/// Whether `pid` is, as far as this host can tell, a drove process (its executable's
/// name is `drove`): then its shutdown can be watched from here.
pub(crate) fn is_drove_here(pid: u32) -> bool {
    alive(pid)
        && std::fs::read(format!("/proc/{pid}/cmdline"))
            .ok()
            .and_then(|c| {
                let first = c.split(|b| *b == 0).next()?.to_vec();
                Some(String::from_utf8_lossy(&first).ends_with("drove"))
            })
            .unwrap_or(false)
}

/// Waits (at most `timeout`) for drove and its instances to be gone. Call it only for
/// a drove seen on this host ([`is_drove_here`], checked before the shutdown began).
pub(crate) fn wait(
    addr: SocketAddr,
    a: &DownAnswer,
    timeout: Duration,
) -> anyhow::Result<ExitCode> {
    let t0 = Instant::now();
    let tty = std::io::stdout().is_terminal();
    let mut last_line = String::new();
    loop {
        let drove_up = alive(a.pid);
        let left: Vec<u32> = a
            .instance_pids
            .iter()
            .copied()
            .filter(|p| group_alive(*p))
            .collect();
        if !drove_up && left.is_empty() {
            if tty {
                print!("\r\x1b[K");
            }
            println!(
                "drove at {addr}: stopped (drove and {} instance(s) gone after {:.1}s)",
                a.instance_pids.len(),
                t0.elapsed().as_secs_f64()
            );
            return Ok(ExitCode::SUCCESS);
        }
        let what = match (drove_up, left.len()) {
            (true, 0) => format!("drove (pid {}) is finishing", a.pid),
            (true, n) => format!(
                "drove (pid {}) is stopping {n} of {} instance(s)",
                a.pid,
                a.instance_pids.len()
            ),
            (false, n) => format!("drove exited; {n} instance process group(s) still running"),
        };
        if t0.elapsed() >= timeout {
            if tty {
                println!();
            }
            anyhow::bail!(
                "still running after {:.0}s: {what} (pids {left:?}); see `drove status`, or stop them with `kill -- -PID`",
                timeout.as_secs_f64()
            );
        }
        if tty {
            print!(
                "\r\x1b[Kwaiting: {what} ({:.1}s)",
                t0.elapsed().as_secs_f64()
            );
            let _ = std::io::stdout().flush();
        } else if what != last_line {
            println!("waiting: {what}");
        }
        last_line = what;
        std::thread::sleep(POLL);
    }
}
