//! The balancer's `listen` address belongs to one drove.
//!
//! drove binds one `SO_REUSEPORT` socket per worker. The kernel lets any process of the
//! same user bind the same address that way, and then splits new connections between
//! all of them: a second drove started with the same `listen` (another deployment, a
//! forgotten one) would silently take a share of the first one's traffic. Plain bind
//! errors cannot catch it, so drove looks before it binds: `/proc/net/tcp{,6}` lists
//! every listening socket, and one that overlaps the address (same port; same address,
//! or either one a wildcard) means the address is taken — reported with the holder's
//! pid and command, and drove exits non-zero.
//!
//! Two droves starting at the same moment could both look before either binds. A lock
//! closes that window: look-and-bind runs while holding an exclusive `flock` on
//! `$XDG_RUNTIME_DIR/drove/listen-PORT.lock` (else `/tmp/drove-UID/`), keyed by port
//! so that overlapping addresses (`0.0.0.0:8080`, `127.0.0.1:8080`) share it. The lock
//! is held only for the look and the bind (milliseconds); after that the bound sockets
//! themselves are what the next drove sees. Why not keep SO_REUSEPORT only between
//! drove's own workers: the kernel groups reuseport sockets by user, not by process,
//! and the workers' sockets are the data path's (drove-proxy), which this check leaves
//! untouched. Droves of different users cannot share a port at all (the kernel
//! refuses), so a per-user lock directory is enough.

use std::fs::OpenOptions;
use std::net::SocketAddr;
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::fcntl::{Flock, FlockArg};

/// How long a drove waits for another one's look-and-bind (which takes milliseconds).
const LOCK_WAIT: Duration = Duration::from_secs(5);

fn lock_dir() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        Some(d) => PathBuf::from(d).join("drove"),
        None => {
            // The owner of /proc/self is this process's uid (no `user` feature of nix needed).
            use std::os::unix::fs::MetadataExt;
            let uid = std::fs::metadata("/proc/self").map_or(0, |m| m.uid());
            std::env::temp_dir().join(format!("drove-{uid}"))
        }
    }
}

/// Takes the per-port lock (waiting at most [`LOCK_WAIT`]); `None` if the lock file
/// cannot be created (then only the /proc check protects the address).
fn lock(port: u16) -> Option<Flock<std::fs::File>> {
    let dir = lock_dir();
    // Private to this user: only lock files go there, but nobody else should hold them.
    let made = std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir);
    if made.is_err() {
        return None;
    }
    let path = dir.join(format!("listen-{port}.lock"));
    let end = Instant::now() + LOCK_WAIT;
    loop {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .ok()?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(l) => return Some(l),
            Err(_) if Instant::now() < end => std::thread::sleep(Duration::from_millis(20)),
            Err(_) => {
                tracing::warn!(path = %path.display(), "another drove holds the listen lock; checking without it");
                return None;
            }
        }
    }
}

/// Runs `bind` for `addr` unless something already listens there (checked under the
/// per-port lock). Port 0 (a free port chosen by the kernel) cannot be taken: no check.
pub(crate) fn exclusive<T>(
    addr: SocketAddr,
    bind: impl FnOnce() -> std::io::Result<T>,
) -> anyhow::Result<T> {
    if addr.port() == 0 {
        return Ok(bind()?);
    }
    let _lock = lock(addr.port());
    if let Some(used) = drove_supervisor::listening_on(addr) {
        let another = used.holders.iter().find(|h| {
            h.command
                .split_whitespace()
                .next()
                .is_some_and(|c| c.ends_with("drove"))
        });
        match another {
            Some(h) => anyhow::bail!(
                "{used}: another drove (pid {}) serves this address; stop it (`drove down`) or choose another `listen`",
                h.pid
            ),
            None => anyhow::bail!("{used}"),
        }
    }
    bind().context("bind")
}

/// A bind error, with who holds the address when /proc tells.
pub(crate) fn explain(addr: SocketAddr, e: std::io::Error) -> anyhow::Error {
    match drove_supervisor::listening_on(addr) {
        Some(used) if e.kind() == std::io::ErrorKind::AddrInUse => anyhow::anyhow!("{e}: {used}"),
        _ => e.into(),
    }
}
