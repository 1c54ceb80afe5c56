//! Steady, bounded load from threads with keep-alive connections; every outcome counted.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::http::Conn;

/// What load to send.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// Target.
    pub addr: SocketAddr,
    /// Method.
    pub method: String,
    /// Path.
    pub path: String,
    /// Threads, each with one keep-alive connection (re-opened after errors).
    pub threads: usize,
    /// Pause between two requests of one thread.
    pub pause: Duration,
    /// Response header naming the instance.
    pub instance_header: String,
    /// A request slower than this fails (client-side timeout).
    pub timeout: Duration,
    /// Hard cap on how long the load may run, whatever the test does.
    pub max_duration: Duration,
}

impl LoadSpec {
    /// GET `path` from `threads` threads, 5 ms apart, 10 s timeout, at most 120 s.
    pub fn get(addr: SocketAddr, path: &str, threads: usize) -> LoadSpec {
        LoadSpec {
            addr,
            method: "GET".into(),
            path: path.into(),
            threads,
            pause: Duration::from_millis(5),
            instance_header: "x-drove-instance".into(),
            timeout: Duration::from_secs(10),
            max_duration: Duration::from_secs(120),
        }
    }
}

/// What the load saw.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    /// Responses below 500.
    pub ok: u64,
    /// 5xx responses and transport errors.
    pub failed: u64,
    /// The first failures, described.
    pub failures: Vec<String>,
    /// Responses per instance header value.
    pub per_instance: BTreeMap<String, u64>,
    /// Slowest request.
    pub max_latency: Duration,
    /// Status counts.
    pub statuses: BTreeMap<u16, u64>,
}

impl Stats {
    fn merge(&mut self, o: Stats) {
        self.ok += o.ok;
        self.failed += o.failed;
        for f in o.failures {
            if self.failures.len() < 20 {
                self.failures.push(f);
            }
        }
        for (k, v) in o.per_instance {
            *self.per_instance.entry(k).or_default() += v;
        }
        for (k, v) in o.statuses {
            *self.statuses.entry(k).or_default() += v;
        }
        self.max_latency = self.max_latency.max(o.max_latency);
    }
    /// Total requests.
    pub fn total(&self) -> u64 {
        self.ok + self.failed
    }
}

/// Running load.
pub struct Load {
    stop: Arc<AtomicBool>,
    /// Requests answered so far (any status), across threads: read while it runs.
    done: Arc<AtomicU64>,
    handles: Vec<JoinHandle<Stats>>,
}

impl Load {
    /// Starts the threads.
    pub fn start(spec: LoadSpec) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let handles = (0..spec.threads)
            .map(|_| {
                let spec = spec.clone();
                let stop = stop.clone();
                let done = done.clone();
                std::thread::spawn(move || run(spec, stop, done))
            })
            .collect();
        Load {
            stop,
            done,
            handles,
        }
    }

    /// Requests answered so far (any status), while the load runs: rates over windows.
    pub fn answered(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    /// Stops and returns the totals.
    pub fn stop(self) -> Stats {
        self.stop.store(true, Ordering::Relaxed);
        let mut s = Stats::default();
        for h in self.handles {
            if let Ok(x) = h.join() {
                s.merge(x);
            }
        }
        s
    }
}

fn run(spec: LoadSpec, stop: Arc<AtomicBool>, done: Arc<AtomicU64>) -> Stats {
    let mut s = Stats::default();
    let started = Instant::now();
    let mut conn: Option<Conn> = None;
    while !stop.load(Ordering::Relaxed) && started.elapsed() < spec.max_duration {
        let t0 = Instant::now();
        if conn.is_none() {
            match Conn::open(spec.addr, spec.timeout) {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    s.failed += 1;
                    if s.failures.len() < 20 {
                        s.failures.push(format!("connect: {e}"));
                    }
                    std::thread::sleep(spec.pause.max(Duration::from_millis(10)));
                    continue;
                }
            }
        }
        let c = conn.as_mut().expect("connected");
        let body: &[u8] = if spec.method == "POST" { b"x" } else { b"" };
        match c.request(&spec.method, &spec.path, &[], body) {
            Ok(r) => {
                done.fetch_add(1, Ordering::Relaxed);
                let lat = t0.elapsed();
                s.max_latency = s.max_latency.max(lat);
                *s.statuses.entry(r.status).or_default() += 1;
                if r.status >= 500 {
                    s.failed += 1;
                    if s.failures.len() < 20 {
                        s.failures.push(format!(
                            "status {} after {:?}: {}",
                            r.status,
                            lat,
                            r.text().trim()
                        ));
                    }
                } else {
                    s.ok += 1;
                    if let Some(i) = r.header(&spec.instance_header) {
                        *s.per_instance.entry(i.to_string()).or_default() += 1;
                    }
                }
                if r.header("connection")
                    .is_some_and(|v| v.eq_ignore_ascii_case("close"))
                {
                    conn = None;
                }
            }
            Err(e) => {
                s.failed += 1;
                if s.failures.len() < 20 {
                    s.failures
                        .push(format!("transport after {:?}: {e}", t0.elapsed()));
                }
                conn = None;
            }
        }
        if !spec.pause.is_zero() {
            std::thread::sleep(spec.pause);
        }
    }
    s
}
