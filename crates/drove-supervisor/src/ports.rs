//! Who holds a TCP port: the listening sockets of `/proc/net/tcp` and `/proc/net/tcp6`
//! (local address, port, uid, socket inode) and the processes whose `/proc/PID/fd`
//! links point at those inodes.
//!
//! drove uses it three ways: before spawning an instance on a fixed port (a port held
//! by someone else is refused with `port 8101 is in use by pid N (cmd)` instead of
//! spawning an app that dies with EADDRINUSE while the other program answers its
//! probes), before counting an instance ready (the listener on its port must belong to
//! its own process group), and before binding the balancer's `listen` (SO_REUSEPORT
//! would otherwise let a second drove share it).
//!
//! Linux only. `/proc/net/*` shows the sockets of drove's network namespace, which is
//! the one its instances and its balancer use. Another user's processes may hide their
//! fds: then the holder is reported by uid.

use std::collections::HashSet;
use std::fmt;
use std::fs;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// TCP state number of LISTEN in `/proc/net/tcp` (include/net/tcp_states.h).
const TCP_LISTEN: &str = "0A";

/// Commands longer than this are cut in messages (a JVM's class path is not news).
const MAX_COMMAND: usize = 120;

/// A process holding a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortHolder {
    /// Its pid.
    pub pid: u32,
    /// Its command line, arguments joined by spaces (cut after 120 characters).
    pub command: String,
}

/// Why a port cannot be used, and by whom (as far as /proc tells).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortInUse {
    /// The port.
    pub port: u16,
    /// Processes holding a listening socket on it.
    pub holders: Vec<PortHolder>,
    /// Owner uids of listening sockets whose process could not be inspected.
    pub hidden_uids: Vec<u32>,
    /// The bind error, when no listener explains it.
    pub bind_error: Option<String>,
}

impl fmt::Display for PortInUse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let port = self.port;
        if !self.holders.is_empty() {
            let list: Vec<String> = self
                .holders
                .iter()
                .map(|h| format!("pid {} ({})", h.pid, h.command))
                .collect();
            return write!(f, "port {port} is in use by {}", list.join(", "));
        }
        if !self.hidden_uids.is_empty() {
            let uids: Vec<String> = self.hidden_uids.iter().map(|u| u.to_string()).collect();
            return write!(
                f,
                "port {port} is in use by a process of uid {} that drove cannot inspect",
                uids.join(", ")
            );
        }
        match &self.bind_error {
            Some(e) => write!(f, "port {port} cannot be bound: {e}"),
            None => write!(f, "port {port} is in use"),
        }
    }
}

/// One listening socket.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Listener {
    addr: SocketAddr,
    uid: u32,
    inode: u64,
}

/// Parses one `/proc/net/tcp{,6}` line; `None` for the header or a non-listening socket.
fn parse_line(line: &str) -> Option<Listener> {
    let f: Vec<&str> = line.split_ascii_whitespace().collect();
    if f.len() < 10 || f[3] != TCP_LISTEN {
        return None;
    }
    let (ip, port) = f[1].split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    // The kernel prints each 32-bit word of the address with %08X in host byte order.
    let word = |s: &str| u32::from_str_radix(s, 16).ok().map(u32::to_ne_bytes);
    let ip = match ip.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(ip)?)),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(&ip[i * 8..i * 8 + 8])?);
            }
            IpAddr::V6(Ipv6Addr::from(b))
        }
        _ => return None,
    };
    Some(Listener {
        addr: SocketAddr::new(ip, port),
        uid: f[7].parse().ok()?,
        inode: f[9].parse().ok()?,
    })
}

/// Every listening TCP socket on `port` (IPv4 and IPv6).
fn listeners(port: u16) -> Vec<Listener> {
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|p| fs::read_to_string(p).ok())
        .flat_map(|text| {
            text.lines()
                .filter_map(parse_line)
                .filter(|l| l.addr.port() == port && l.inode != 0)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Whether a socket bound to `bound` receives connections to `to` (same port assumed):
/// the wildcard addresses take every address of their family (`::` also IPv4, unless
/// the socket is IPv6-only, which /proc does not show: counted as taking it).
fn receives(bound: IpAddr, to: IpAddr) -> bool {
    if bound == to || bound.is_unspecified() && (bound.is_ipv6() || to.is_ipv4()) {
        return true;
    }
    match (bound, to) {
        (IpAddr::V6(b), IpAddr::V4(t)) => b.to_ipv4_mapped() == Some(t),
        (IpAddr::V4(b), IpAddr::V6(t)) => t.to_ipv4_mapped() == Some(b),
        _ => false,
    }
}

/// The pids among `/proc/*` holding one of `inodes`.
fn holders_of(inodes: &HashSet<u64>) -> Vec<u32> {
    let pids: Vec<i32> = fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    let mut out = Vec::new();
    for pid in &pids {
        // Another user's fds are unreadable: skipped (reported by uid instead).
        let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        let holds = fds.flatten().any(|fd| {
            fs::read_link(fd.path()).ok().is_some_and(|target| {
                target
                    .to_str()
                    .and_then(|t| t.strip_prefix("socket:["))
                    .and_then(|t| t.strip_suffix(']'))
                    .and_then(|n| n.parse::<u64>().ok())
                    .is_some_and(|n| inodes.contains(&n))
            })
        });
        if holds {
            out.push(*pid as u32);
        }
    }
    out
}

/// A process's command line, arguments joined by spaces.
pub(crate) fn command_of(pid: u32) -> String {
    let raw = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let mut s: String = raw
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect::<Vec<_>>()
        .join(" ");
    if s.is_empty() {
        // A kernel thread or a zombie: the short name at least.
        s = fs::read_to_string(format!("/proc/{pid}/comm"))
            .map(|c| format!("[{}]", c.trim()))
            .unwrap_or_else(|_| "?".into());
    }
    if s.chars().count() > MAX_COMMAND {
        s = s.chars().take(MAX_COMMAND).collect::<String>() + "…";
    }
    s
}

/// Who holds `listeners` (processes by pid, else uids).
fn describe(port: u16, listeners: &[Listener]) -> PortInUse {
    let inodes: HashSet<u64> = listeners.iter().map(|l| l.inode).collect();
    let mut pids = holders_of(&inodes);
    pids.sort_unstable();
    // A socket shared by a parent and its forked workers shows in each: name a few.
    pids.truncate(3);
    let holders: Vec<PortHolder> = pids
        .into_iter()
        .map(|pid| PortHolder {
            pid,
            command: command_of(pid),
        })
        .collect();
    let mut hidden_uids: Vec<u32> = if holders.is_empty() {
        listeners.iter().map(|l| l.uid).collect()
    } else {
        Vec::new()
    };
    hidden_uids.sort_unstable();
    hidden_uids.dedup();
    PortInUse {
        port,
        holders,
        hidden_uids,
        bind_error: None,
    }
}

/// Whether an instance could listen on `port` now: `None` when it is free, else who
/// holds it. Free means a socket can be bound to `0.0.0.0:port` (what most servers do;
/// with SO_REUSEADDR, as std sets it, so connections in TIME_WAIT do not count).
pub fn port_in_use(port: u16) -> Option<PortInUse> {
    let probe = std::net::TcpListener::bind((Ipv4Addr::UNSPECIFIED, port));
    let err = match probe {
        Ok(l) => {
            // Closed before looking: it would be found as a listener itself.
            drop(l);
            // 0.0.0.0 is free; an IPv6 listener on [::]:port may still take it when the
            // app binds IPv6 (or dual-stack) itself.
            let v6: Vec<Listener> = listeners(port)
                .into_iter()
                .filter(|l| receives(l.addr.ip(), Ipv4Addr::LOCALHOST.into()))
                .collect();
            if v6.is_empty() {
                return None;
            }
            return Some(describe(port, &v6));
        }
        Err(e) => e,
    };
    let found = listeners(port);
    if found.is_empty() {
        return Some(PortInUse {
            port,
            holders: Vec::new(),
            hidden_uids: Vec::new(),
            bind_error: Some(err.to_string()),
        });
    }
    Some(describe(port, &found))
}

/// Who listens where a connection to `addr` would arrive (for the balancer's `listen`,
/// which SO_REUSEPORT would otherwise share with them). `None`: nobody.
pub fn listening_on(addr: SocketAddr) -> Option<PortInUse> {
    let found: Vec<Listener> = listeners(addr.port())
        .into_iter()
        .filter(|l| receives(l.addr.ip(), addr.ip()) || receives(addr.ip(), l.addr.ip()))
        .collect();
    (!found.is_empty()).then(|| describe(addr.port(), &found))
}

/// Why a port's listener is not the instance's own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum NotOwned {
    /// Nothing listens where the balancer would connect.
    Nothing(u16),
    /// Another process's sockets (their inodes, sorted) listen there.
    Foreign(u16, Vec<u64>),
}

impl NotOwned {
    /// The message, naming the holder: scans every process's fds, so callers that ask
    /// again and again (a probe loop) keep the last message per inode set.
    pub(crate) fn describe(&self, pid: u32) -> String {
        match self {
            NotOwned::Nothing(port) => format!("nothing listens on 127.0.0.1:{port}"),
            NotOwned::Foreign(port, inodes) => {
                let theirs: Vec<Listener> = listeners(*port)
                    .into_iter()
                    .filter(|l| inodes.contains(&l.inode))
                    .collect();
                format!(
                    "{}, not by this instance (pid {pid}): its probe was answered by another program",
                    describe(*port, &theirs)
                )
            }
        }
    }
}

/// Checks that every socket listening where the balancer sends an instance's requests
/// (`127.0.0.1:port`) belongs to one of `members` (the instance's process group), and
/// that there is one.
pub(crate) fn check_owned(port: u16, members: &[i32]) -> Result<(), NotOwned> {
    let relevant: Vec<Listener> = listeners(port)
        .into_iter()
        .filter(|l| receives(l.addr.ip(), Ipv4Addr::LOCALHOST.into()))
        .collect();
    if relevant.is_empty() {
        return Err(NotOwned::Nothing(port));
    }
    let all: HashSet<u64> = relevant.iter().map(|l| l.inode).collect();
    // Which of those inodes the group's processes hold (one pass over their fds).
    let mut ours = HashSet::new();
    for pid in members {
        let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let inode = fs::read_link(fd.path()).ok().and_then(|t| {
                t.to_str()?
                    .strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .parse::<u64>()
                    .ok()
            });
            if let Some(n) = inode.filter(|n| all.contains(n)) {
                ours.insert(n);
            }
        }
    }
    let mut theirs: Vec<u64> = all.difference(&ours).copied().collect();
    if theirs.is_empty() {
        return Ok(());
    }
    theirs.sort_unstable();
    Err(NotOwned::Foreign(port, theirs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_net_lines() {
        let v4 = "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 12345 1 0000000000000000 100 0 0 10 0";
        let l = parse_line(v4).unwrap();
        if cfg!(target_endian = "little") {
            assert_eq!(l.addr, "127.0.0.1:8080".parse().unwrap());
        }
        assert_eq!((l.uid, l.inode), (1000, 12345));
        let v6 = "   1: 00000000000000000000000000000000:1F91 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 999 1 0000000000000000 100 0 0 10 0";
        let l = parse_line(v6).unwrap();
        assert_eq!(l.addr, "[::]:8081".parse().unwrap());
        let established = v4.replace(" 0A ", " 01 ");
        assert!(parse_line(&established).is_none());
        assert!(parse_line("  sl  local_address rem_address   st tx_queue").is_none());
    }

    #[test]
    fn who_receives_what() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(receives(ip("0.0.0.0"), ip("127.0.0.1")));
        assert!(receives(ip("::"), ip("127.0.0.1")));
        assert!(receives(ip("::ffff:127.0.0.1"), ip("127.0.0.1")));
        assert!(!receives(ip("::1"), ip("127.0.0.1")));
        assert!(!receives(ip("10.0.0.5"), ip("127.0.0.1")));
        assert!(!receives(ip("0.0.0.0"), ip("::1")));
    }

    #[test]
    fn a_listener_of_this_process_is_found_and_named() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let used = port_in_use(port).expect("in use");
        let me = std::process::id();
        assert_eq!(used.holders.first().map(|h| h.pid), Some(me), "{used}");
        assert!(used
            .to_string()
            .starts_with(&format!("port {port} is in use by pid {me} (")));
        assert!(listening_on(SocketAddr::from(([0, 0, 0, 0], port))).is_some());
        assert!(check_owned(port, &[me as i32]).is_ok());
        let err = check_owned(port, &[1]).unwrap_err().describe(1);
        assert!(err.contains(&format!("in use by pid {me} (")), "{err}");
        assert!(err.contains("not by this instance (pid 1)"), "{err}");
        drop(l);
        assert_eq!(port_in_use(port), None);
        assert_eq!(
            check_owned(port, &[me as i32]),
            Err(NotOwned::Nothing(port))
        );
    }
}
