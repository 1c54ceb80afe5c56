//! Process-group accounting from /proc: which processes belong to an instance's group,
//! how much memory and CPU they use, and signalling the group.

use std::collections::HashMap;
use std::fs;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

/// Linux reports CPU times in /proc in USER_HZ, which is 100 on every architecture
/// (the kernel's real HZ is hidden from userspace for exactly this reason).
const USER_HZ: f64 = 100.0;

/// Usage summed over the live (non-zombie) processes of one group.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct GroupUsage {
    pub processes: u32,
    pub rss_bytes: u64,
    pub cpu_seconds: f64,
}

/// One process as read from /proc/<pid>/stat.
struct Stat {
    pgrp: i32,
    zombie: bool,
    cpu_ticks: u64,
}

fn read_stat(pid: &str) -> Option<Stat> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // comm (field 2) may contain spaces and parentheses: fields resume after the last ')'.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_ascii_whitespace().collect();
    // rest[0] is field 3 (state); field n is f[n - 3].
    Some(Stat {
        zombie: matches!(f.first()?, &"Z" | &"X"),
        pgrp: f.get(2)?.parse().ok()?,
        cpu_ticks: f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?,
    })
}

fn read_rss(pid: &str) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// Scans /proc once and sums usage per process group, for the groups asked for.
pub(crate) fn usage_by_group(groups: &[i32]) -> HashMap<i32, GroupUsage> {
    let mut out: HashMap<i32, GroupUsage> = HashMap::new();
    if groups.is_empty() {
        return out;
    }
    let Ok(dir) = fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let Some(st) = read_stat(pid) else { continue };
        if st.zombie || !groups.contains(&st.pgrp) {
            continue;
        }
        let u = out.entry(st.pgrp).or_default();
        u.processes += 1;
        u.rss_bytes += read_rss(pid);
        u.cpu_seconds += st.cpu_ticks as f64 / USER_HZ;
    }
    out
}

/// Live (non-zombie) processes in the group.
pub(crate) fn group_members(pgid: i32) -> Vec<i32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| read_stat(&pid.to_string()).is_some_and(|s| s.pgrp == pgid && !s.zombie))
        .collect()
}

/// Whether a live (non-zombie) process is left in the group: orphaned zombies waiting
/// for an init that is slow to reap them hold no port and run no code.
pub fn group_alive(pgid: i32) -> bool {
    !matches!(
        killpg(Pid::from_raw(pgid), None),
        Err(nix::errno::Errno::ESRCH)
    ) && !group_members(pgid).is_empty()
}

/// Sends `sig` to the whole group; a group that no longer exists is not an error.
pub(crate) fn signal_group(pgid: i32, sig: Signal) {
    if pgid <= 1 {
        return; // never signal "every process" or init's group by accident
    }
    match killpg(Pid::from_raw(pgid), sig) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
        Err(e) => tracing::warn!(pgid, signal = sig.as_str(), error = %e, "killpg failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_group_is_visible() {
        let me = nix::unistd::getpgrp().as_raw();
        let u = usage_by_group(&[me]);
        let g = u.get(&me).expect("own group");
        assert!(g.processes >= 1);
        assert!(g.rss_bytes > 0);
        assert!(group_members(me).contains(&(std::process::id() as i32)));
    }
}
