//! Test helpers: specs, an event recorder, temp dirs and /proc checks.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use drove_supervisor::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::Instant;

/// Runs a test body with a hard time limit.
pub async fn bounded<F: Future<Output = ()>>(secs: u64, f: F) {
    if tokio::time::timeout(Duration::from_secs(secs), f)
        .await
        .is_err()
    {
        panic!("test did not finish within {secs}s");
    }
}

pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "drove-sup-it-{}-{name}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A `sh -c` service without ready probe, fast backoff, short grace.
pub fn service(name: &str, dir: &TempDir, cmd: &str) -> ServiceSpec {
    let mut s = ServiceSpec::new(name, CommandSpec::Shell(cmd.into()));
    s.cwd = dir.path().to_path_buf();
    s.stop_grace = Duration::from_secs(3);
    s.restart.initial_delay = Duration::from_millis(100);
    s.restart.max_delay = Duration::from_secs(1);
    s.logs = LogSpec {
        dir: dir.path().join("logs"),
        max_size: 1 << 20,
        keep: 2,
    };
    s
}

/// A python3 http.server instance, ready when `GET /` answers.
pub fn http_service(name: &str, dir: &TempDir) -> ServiceSpec {
    let mut s = service(
        name,
        dir,
        "exec python3 -m http.server {port} --bind 127.0.0.1",
    );
    let mut p = Probe::new(ProbeKind::Http {
        path: "/".into(),
        expect_status: None,
    });
    p.interval = Duration::from_millis(100);
    p.start_timeout = Duration::from_secs(10);
    s.ready = Some(p);
    s
}

pub fn start(specs: Vec<ServiceSpec>) -> (Supervisor, Events) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let sup = Supervisor::start(specs, tx, SupervisorOptions::default()).unwrap();
    (
        sup,
        Events {
            rx,
            history: Vec::new(),
        },
    )
}

/// Shuts down and checks that none of the given instances' groups survived.
pub async fn finish(sup: &Supervisor, ev: &mut Events, seen: Vec<InstanceStatus>) {
    ev.pump_while(sup.shutdown()).await;
    assert!(sup.status().await.is_empty());
    for s in seen {
        if let Some(pid) = s.pid {
            assert_eq!(
                group_members(pid as i32),
                Vec::<i32>::new(),
                "{} left processes",
                s.id
            );
        }
    }
}

/// An event without its payload channels, comparable.
#[derive(Debug, Clone, PartialEq)]
pub enum Seen {
    Ready(InstanceId, SocketAddr),
    Draining(InstanceId),
    Undrained(InstanceId, SocketAddr),
    Gone(InstanceId),
    State(InstanceId, InstanceState),
}

impl From<&InstanceEvent> for Seen {
    fn from(e: &InstanceEvent) -> Seen {
        match e {
            InstanceEvent::Ready { id, addr } => Seen::Ready(id.clone(), *addr),
            InstanceEvent::Draining { id, .. } => Seen::Draining(id.clone()),
            InstanceEvent::Undrained { id, addr } => Seen::Undrained(id.clone(), *addr),
            InstanceEvent::Gone { id } => Seen::Gone(id.clone()),
            InstanceEvent::StateChanged { id, state } => Seen::State(id.clone(), *state),
        }
    }
}

/// Records every event; `Draining` is acknowledged by dropping `done` unless a test
/// reads `rx` itself.
pub struct Events {
    pub rx: UnboundedReceiver<InstanceEvent>,
    pub history: Vec<(Instant, Seen)>,
}

impl Events {
    pub fn push(&mut self, e: Seen) {
        self.history.push((Instant::now(), e));
    }

    /// Waits for the next event matching `pred` (earlier history is not searched).
    pub async fn wait(&mut self, secs: u64, pred: impl Fn(&Seen) -> bool) -> Seen {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let e = tokio::time::timeout_at(deadline, self.rx.recv())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "no matching event within {secs}s; seen: {:#?}",
                        self.history
                    )
                })
                .expect("event channel closed");
            let s = Seen::from(&e);
            self.push(s.clone());
            if pred(&s) {
                return s;
            }
        }
    }

    /// Waits until every event in `want` has been seen (at any time, in any order).
    pub async fn seen_all(&mut self, secs: u64, want: &[Seen]) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while !want.iter().all(|w| self.position(w).is_some()) {
            let e = tokio::time::timeout_at(deadline, self.rx.recv())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "not all of {want:?} within {secs}s; seen: {:#?}",
                        self.history
                    )
                })
                .expect("event channel closed");
            self.push(Seen::from(&e));
        }
    }

    /// Waits for `n` more `Ready` events (any instances, any order).
    pub async fn ready_all(&mut self, secs: u64, n: usize) -> Vec<(InstanceId, SocketAddr)> {
        let mut v = Vec::new();
        for _ in 0..n {
            if let Seen::Ready(id, addr) = self.wait(secs, |e| matches!(e, Seen::Ready(..))).await {
                v.push((id, addr));
            }
        }
        v.sort();
        v
    }

    /// Runs `f` while recording (and so acknowledging) events; returns its output.
    pub async fn pump_while<T>(&mut self, f: impl Future<Output = T>) -> T {
        let mut f = std::pin::pin!(f);
        loop {
            tokio::select! {
                out = &mut f => {
                    self.drain_pending();
                    return out;
                }
                Some(e) = self.rx.recv() => self.push(Seen::from(&e)),
            }
        }
    }

    /// Records what is already queued.
    pub fn drain_pending(&mut self) {
        while let Ok(e) = self.rx.try_recv() {
            self.push(Seen::from(&e));
        }
    }

    pub fn position(&self, want: &Seen) -> Option<usize> {
        self.position_where(|e| e == want)
    }

    pub fn position_where(&self, f: impl Fn(&Seen) -> bool) -> Option<usize> {
        self.history.iter().position(|(_, e)| f(e))
    }
}

fn stat_fields(pid: &str) -> Option<(String, i32)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some((f[0].to_string(), f[2].parse().ok()?))
}

/// The pid exists and is not a zombie.
pub fn process_alive(pid: u32) -> bool {
    stat_fields(&pid.to_string()).is_some_and(|(state, _)| state != "Z" && state != "X")
}

/// Live members of a process group, from /proc.
pub fn group_members(pgid: i32) -> Vec<i32> {
    let mut v: Vec<i32> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            stat_fields(&pid.to_string())
                .is_some_and(|(state, pgrp)| pgrp == pgid && state != "Z" && state != "X")
        })
        .collect();
    v.sort();
    v
}

/// Status code of `GET path`, if any.
pub async fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.ok()?;
    std::str::from_utf8(&buf).ok()?.get(9..12)?.parse().ok()
}

/// A base port with `n` consecutive bindable ports, taken *below* the kernel's ephemeral
/// range (`net.ipv4.ip_local_port_range`). A block found with `bind(0)` lies inside that
/// range, where every `bind(0)` (auto ports) and every client connection's source port
/// (probes, requests) of the tests running beside this one is drawn from: between this
/// check and the instance's own bind, a base port was taken that way and the instance
/// crash-looped on it. Below the range only an explicit bind can take a port; blocks
/// handed out by this process never overlap, and the search starts at a per-process
/// offset so that test binaries running at the same time do not all try the same block.
pub fn free_port_block(n: u16) -> u16 {
    use std::sync::Mutex;
    const LOWEST: u16 = 10_000;
    static NEXT: Mutex<Option<u16>> = Mutex::new(None);
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    let end = ephemeral_low.saturating_sub(n);
    assert!(
        end > LOWEST,
        "no room for a port block below the ephemeral range ({ephemeral_low})"
    );
    let span = u64::from(end - LOWEST);
    let mut next = NEXT.lock().unwrap_or_else(|p| p.into_inner());
    let offset = u64::from(std::process::id()) * 7919 % span;
    let mut base = next.unwrap_or(LOWEST + offset as u16);
    let bindable = |p: u16| {
        std::net::TcpListener::bind(("0.0.0.0", p)).is_ok()
            && std::net::TcpListener::bind(("127.0.0.1", p)).is_ok()
    };
    for _ in 0..1000 {
        if base >= end {
            base = LOWEST;
        }
        if (0..n).all(|i| bindable(base + i)) {
            *next = Some(base + n);
            return base;
        }
        base += n;
    }
    panic!("no block of {n} free ports below {ephemeral_low}");
}
