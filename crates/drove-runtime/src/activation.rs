//! systemd socket activation: listening sockets passed by systemd (`LISTEN_FDS`), so the
//! balancer's socket outlives a restart of drove itself — connections queue in the
//! kernel meanwhile instead of being refused.
//!
//! The protocol (sd_listen_fds(3)): `LISTEN_PID` is this process, `LISTEN_FDS` the
//! number of descriptors starting at 3, `LISTEN_FDNAMES` their names separated by `:`
//! (`FileDescriptorName=` in the .socket unit). A socket named `admin` becomes the admin
//! API's listener; every other one the balancer's (with several workers, each gets a
//! duplicate of the same socket). The variables are removed so that the instances do
//! not see them, and the descriptors become close-on-exec.

use std::net::TcpListener;

use anyhow::Context;

/// The first descriptor passed (SD_LISTEN_FDS_START).
const FIRST_FD: i32 = 3;

/// The sockets systemd passed.
#[derive(Debug, Default)]
pub(crate) struct Activated {
    pub(crate) balancer: Vec<TcpListener>,
    pub(crate) admin: Option<TcpListener>,
}

/// Takes the sockets passed to this process, if any.
pub(crate) fn take() -> anyhow::Result<Option<Activated>> {
    let var = |k: &str| std::env::var(k).ok();
    let (pid, fds, names) = (var("LISTEN_PID"), var("LISTEN_FDS"), var("LISTEN_FDNAMES"));
    for k in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        std::env::remove_var(k);
    }
    let (Some(pid), Some(fds)) = (pid, fds) else {
        return Ok(None);
    };
    // Meant for another process (a parent that did not clean its environment).
    if pid.trim().parse::<u32>().ok() != Some(std::process::id()) {
        return Ok(None);
    }
    let n: i32 = fds
        .trim()
        .parse()
        .with_context(|| format!("LISTEN_FDS={fds:?} is not a number"))?;
    let names: Vec<&str> = names.as_deref().unwrap_or("").split(':').collect();
    let mut out = Activated::default();
    for i in 0..n {
        let fd = FIRST_FD + i;
        let l = drove_proxy::handoff::listener_from_fd(fd)
            .with_context(|| format!("socket activation: descriptor {fd}"))?;
        match names.get(i as usize).copied() {
            Some("admin") => out.admin = Some(l),
            _ => out.balancer.push(l),
        }
    }
    println!(
        "drove: socket activation: {} balancer socket(s){} from systemd (LISTEN_FDS)",
        out.balancer.len(),
        if out.admin.is_some() {
            " and the admin socket"
        } else {
            ""
        }
    );
    Ok(Some(out))
}

/// `workers` listeners over the activated balancer sockets (duplicates of the first
/// when there are fewer sockets than workers).
pub(crate) fn for_workers(
    mut sockets: Vec<TcpListener>,
    workers: usize,
) -> std::io::Result<Vec<TcpListener>> {
    while sockets.len() < workers.max(1) {
        let dup = sockets[0].try_clone()?;
        sockets.push(dup);
    }
    Ok(sockets)
}
