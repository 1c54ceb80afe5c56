//! The run: worker threads (each a current-thread runtime with its share of the
//! connections and its own statistics), and a coordinator on the caller's runtime that
//! starts the clock, merges per-second buckets into the timeline and live progress, and
//! builds the report.
//!
//! Nothing on the request path is shared between threads except one atomic ticket
//! counter (request budget in the closed model, schedule index in the open model) and a
//! stop flag.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::sync::{mpsc, watch, Notify};
use tokio::time::{sleep_until, Instant};

use crate::client::{self, Conn, Fail, Response};
use crate::pace::{Pacer, EARLY};
use crate::report::{self, ErrorCounts, Second};
use crate::{BenchError, BenchOptions, Model, Progress, Stop};

/// Latency histograms cover 1 µs .. 60 s; slower responses saturate at 60 s.
pub(crate) const HIST_MAX_US: u64 = 60_000_000;
/// 3 significant digits: 0.1% precision, ~140 KB per histogram.
const HIST_SIGFIG: u8 = 3;
/// Distinct instance-header values tracked per thread. A fleet is far smaller; a header
/// that is unique per response (a request id) must not grow memory or the scan.
pub(crate) const MAX_INSTANCES: usize = 1024;
/// Per-second histograms only feed the timeline's p99: 1% precision keeps them ~20 KB.
const SECOND_SIGFIG: u8 = 2;

pub(crate) fn new_hist(sigfig: u8) -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIST_MAX_US, sigfig).expect("static histogram bounds")
}

/// One second of one thread.
pub(crate) struct Bucket {
    pub requests: u64,
    pub errors: u64,
    pub hist: Histogram<u64>,
}

impl Bucket {
    fn new() -> Bucket {
        Bucket {
            requests: 0,
            errors: 0,
            hist: new_hist(SECOND_SIGFIG),
        }
    }

    fn merge(&mut self, o: &Bucket) {
        self.requests += o.requests;
        self.errors += o.errors;
        self.hist.add(&o.hist).expect("same bounds");
    }
}

/// Everything one thread counts; merged into the report at the end.
pub(crate) struct ThreadStats {
    pub lat: Histogram<u64>,
    pub lat_unc: Histogram<u64>,
    /// Indexed by status code (httparse guarantees three digits).
    pub status: Vec<u64>,
    pub errors: ErrorCounts,
    pub responses: u64,
    pub ok: u64,
    pub sent: u64,
    pub queued: u64,
    pub retried: u64,
    /// (instance header value, count); linear scan: a handful of instances.
    pub instances: Vec<(Vec<u8>, u64)>,
    pub without_instance: u64,
    /// Responses whose instance value came after [`MAX_INSTANCES`] others.
    pub instances_overflow: u64,
    cur: Bucket,
    cur_idx: u64,
}

impl ThreadStats {
    pub fn new() -> ThreadStats {
        ThreadStats {
            lat: new_hist(HIST_SIGFIG),
            lat_unc: new_hist(HIST_SIGFIG),
            status: vec![0; 1000],
            errors: ErrorCounts::default(),
            responses: 0,
            ok: 0,
            sent: 0,
            queued: 0,
            retried: 0,
            instances: Vec::new(),
            without_instance: 0,
            instances_overflow: 0,
            cur: Bucket::new(),
            cur_idx: 0,
        }
    }

    fn record(
        &mut self,
        r: Result<Response, Fail>,
        sched: Instant,
        start: Instant,
        done: Instant,
        instance: &[u8],
    ) {
        self.cur.requests += 1;
        match r {
            Ok(resp) => {
                let corrected = micros(done - sched);
                self.lat.saturating_record(corrected);
                self.lat_unc.saturating_record(micros(done - start));
                self.cur.hist.saturating_record(corrected);
                self.responses += 1;
                self.status[usize::from(resp.status).min(999)] += 1;
                if resp.status < 400 {
                    self.ok += 1;
                } else {
                    self.errors.status += 1;
                    self.cur.errors += 1;
                }
                if resp.has_instance {
                    let full = self.instances.len() >= MAX_INSTANCES;
                    match self.instances.iter_mut().find(|(k, _)| k == instance) {
                        Some((_, n)) => *n += 1,
                        None if full => self.instances_overflow += 1,
                        None => self.instances.push((instance.to_vec(), 1)),
                    }
                } else {
                    self.without_instance += 1;
                }
            }
            Err(f) => {
                self.cur.errors += 1;
                match f {
                    Fail::Connect => self.errors.connect += 1,
                    Fail::Timeout => self.errors.timeout += 1,
                    Fail::Reset => self.errors.reset += 1,
                    Fail::Other => self.errors.other += 1,
                }
            }
        }
    }
}

fn micros(d: Duration) -> u64 {
    (d.as_micros() as u64).clamp(1, HIST_MAX_US)
}

enum Msg {
    Connected,
    Second(usize, u64, Bucket),
    Done(usize, Box<ThreadStats>),
}

/// What every worker of a run shares (read-only, except the atomics).
struct Ctx {
    addr: SocketAddr,
    req: Box<[u8]>,
    model: Model,
    limit: Option<u64>,
    duration: Option<Duration>,
    timeout: Duration,
    keep_alive: bool,
    instance_header: String,
    head: bool,
    stop: AtomicBool,
    /// Closed model: requests handed out (budget). Open model: next schedule index.
    tickets: AtomicU64,
}

/// Runs a benchmark to its end, or until `cancel` resolves: then requests in flight are
/// abandoned and not counted, or, with [`BenchOptions::drain_on_cancel`], finished and
/// counted. Dropping the returned future stops the worker threads as well. `progress`, if given, receives a [`Progress`] after each
/// complete second.
///
/// Fails only if the options are invalid or the host does not resolve; an unreachable
/// target shows up as connect errors in the report.
pub async fn run(
    opts: BenchOptions,
    progress: Option<watch::Sender<Progress>>,
    cancel: impl Future<Output = ()>,
) -> Result<report::Report, BenchError> {
    opts.validate()?;
    let (host, port) = opts.target()?;
    let addr = tokio::net::lookup_host((host.as_str(), port))
        .await
        .map_err(|e| BenchError::Resolve(format!("{host}:{port}"), e))?
        .next()
        .ok_or_else(|| {
            BenchError::Resolve(
                format!("{host}:{port}"),
                std::io::ErrorKind::NotFound.into(),
            )
        })?;
    let threads = opts.threads.min(opts.connections);
    let (limit, duration) = match opts.stop {
        Stop::Requests(n) => (Some(n), None),
        Stop::Duration(d) => (None, Some(d)),
    };
    let ctx = Arc::new(Ctx {
        addr,
        req: client::build_request(&opts).into_boxed_slice(),
        model: opts.model,
        limit,
        duration,
        timeout: opts.timeout,
        keep_alive: opts.keep_alive,
        instance_header: opts.instance_header.clone(),
        head: opts.method == http::Method::HEAD,
        stop: AtomicBool::new(false),
        tickets: AtomicU64::new(0),
    });

    let (msg_tx, mut msg_rx) = mpsc::unbounded_channel();
    let (t0_tx, t0_rx) = watch::channel(None::<Instant>);
    let (ctrl_tx, ctrl_rx) = watch::channel(Control::Run);
    // If this future is dropped mid-run (a caller's timeout), the threads stop too.
    let abort = AbortOnDrop(ctx.clone(), ctrl_tx);
    let mut handles = Vec::with_capacity(threads);
    for t in 0..threads {
        let conns = (t..opts.connections).step_by(threads).count();
        let (ctx2, msg_tx, t0_rx, ctrl_rx) =
            (ctx.clone(), msg_tx.clone(), t0_rx.clone(), ctrl_rx.clone());
        let h = std::thread::Builder::new()
            .name(format!("drove-bench-{t}"))
            .spawn(move || thread_main(t, conns, ctx2, msg_tx, t0_rx, ctrl_rx));
        match h {
            Ok(h) => handles.push(h),
            Err(e) => {
                abort.abort();
                let _ = t0_tx.send(Some(Instant::now()));
                return Err(BenchError::Thread(e));
            }
        }
    }
    drop(msg_tx);

    let mut cancel = std::pin::pin!(cancel);
    let mut cancelled_at: Option<Instant> = None;
    let mut connected = 0usize;
    let mut t0: Option<Instant> = None;
    let mut timeline = Timeline::new(threads);
    let mut totals: Vec<Option<Box<ThreadStats>>> = (0..threads).map(|_| None).collect();
    let mut done = 0usize;
    let mut finished_at = None;
    while done < threads {
        tokio::select! {
            m = msg_rx.recv() => match m {
                Some(Msg::Connected) => {
                    connected += 1;
                    if connected == opts.connections {
                        let now = Instant::now();
                        t0 = Some(now);
                        let _ = t0_tx.send(Some(now));
                    }
                }
                Some(Msg::Second(t, k, b)) => {
                    timeline.add(t, k, b);
                    timeline.emit(progress.as_ref());
                }
                Some(Msg::Done(t, s)) => {
                    timeline.finish(t);
                    timeline.emit(progress.as_ref());
                    totals[t] = Some(s);
                    done += 1;
                    if done == threads {
                        finished_at = Some(Instant::now());
                    }
                }
                None => break, // a worker thread died; report what we have
            },
            _ = &mut cancel, if cancelled_at.is_none() => {
                cancelled_at = Some(Instant::now());
                if opts.drain_on_cancel {
                    abort.drain();
                } else {
                    abort.abort();
                }
                if t0.is_none() {
                    // Nobody has started; release the workers waiting for the clock.
                    let _ = t0_tx.send(Some(Instant::now()));
                }
            }
        }
    }
    timeline.finish_all();
    timeline.emit(progress.as_ref());
    let joined = tokio::task::spawn_blocking(move || {
        for h in handles {
            let _ = h.join();
        }
    });
    let _ = joined.await;

    let end = finished_at.unwrap_or_else(Instant::now);
    let t0 = t0.unwrap_or(end);
    let stats: Vec<ThreadStats> = totals.into_iter().flatten().map(|b| *b).collect();
    let sent: u64 = stats.iter().map(|s| s.sent).sum();
    let unsent = match opts.model {
        Model::Closed => 0,
        Model::Open { rate } => {
            let window = match (duration, cancelled_at) {
                (Some(d), Some(c)) => Some(d.min(c.saturating_duration_since(t0))),
                (Some(d), None) => Some(d),
                (None, Some(c)) => Some(c.saturating_duration_since(t0)),
                (None, None) => None,
            };
            let due = window.map(|w| (w.as_secs_f64() * rate).ceil() as u64);
            let due = match (due, limit) {
                (Some(a), Some(b)) => a.min(b),
                (Some(a), None) => a,
                (None, Some(b)) => b,
                (None, None) => 0,
            };
            due.saturating_sub(sent)
        }
    };
    Ok(report::Report::build(
        &opts,
        end.saturating_duration_since(t0),
        stats,
        timeline.into_seconds(),
        unsent,
        cancelled_at.is_some(),
    ))
}

/// What the coordinator tells the worker threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Control {
    Run,
    /// No new requests; those in flight finish (each within the timeout).
    Drain,
    /// Stop now; requests in flight are abandoned.
    Abort,
}

struct AbortOnDrop(Arc<Ctx>, watch::Sender<Control>);

impl AbortOnDrop {
    fn abort(&self) {
        self.0.stop.store(true, Relaxed);
        self.1.send_replace(Control::Abort);
    }

    fn drain(&self) {
        self.0.stop.store(true, Relaxed);
        self.1.send_if_modified(|c| {
            let run = *c == Control::Run;
            if run {
                *c = Control::Drain;
            }
            run
        });
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.abort();
    }
}

fn thread_main(
    t: usize,
    conns: usize,
    ctx: Arc<Ctx>,
    msg_tx: mpsc::UnboundedSender<Msg>,
    t0_rx: watch::Receiver<Option<Instant>>,
    mut ctrl_rx: watch::Receiver<Control>,
) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("worker runtime");
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let stats = Rc::new(RefCell::new(ThreadStats::new()));
        let pacer = Rc::new(Pacer::default());
        let pacer_task = tokio::task::spawn_local(pacer.clone().run());
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..conns {
            set.spawn_local(worker(
                ctx.clone(),
                stats.clone(),
                pacer.clone(),
                msg_tx.clone(),
                t0_rx.clone(),
            ));
        }
        let ticker = tokio::task::spawn_local(ticker(t, stats.clone(), msg_tx.clone(), t0_rx));
        let mut abort = false;
        loop {
            tokio::select! {
                r = set.join_next() => if r.is_none() { break },
                c = ctrl_rx.changed() => match c.map(|_| *ctrl_rx.borrow_and_update()) {
                    Ok(Control::Run) => {}
                    // Connections waiting for a future slot must not wait it out.
                    Ok(Control::Drain) => pacer.release_all(),
                    Ok(Control::Abort) | Err(_) => {
                        abort = true;
                        break;
                    }
                },
            }
        }
        if abort {
            set.abort_all();
            while set.join_next().await.is_some() {}
        }
        ticker.abort();
        let _ = ticker.await;
        pacer_task.abort();
        let _ = pacer_task.await;
        let mut s = stats.borrow_mut();
        let last = std::mem::replace(&mut s.cur, Bucket::new());
        if last.requests > 0 {
            let _ = msg_tx.send(Msg::Second(t, s.cur_idx, last));
        }
        let s = std::mem::replace(&mut *s, ThreadStats::new());
        let _ = msg_tx.send(Msg::Done(t, Box::new(s)));
    });
}

async fn wait_t0(mut rx: watch::Receiver<Option<Instant>>) -> Option<Instant> {
    let r = rx.wait_for(|t| t.is_some()).await.ok()?;
    *r
}

/// Hands the current second's bucket to the coordinator at each second boundary.
async fn ticker(
    t: usize,
    stats: Rc<RefCell<ThreadStats>>,
    tx: mpsc::UnboundedSender<Msg>,
    t0_rx: watch::Receiver<Option<Instant>>,
) {
    let Some(t0) = wait_t0(t0_rx).await else {
        return;
    };
    let mut k = 0u64;
    loop {
        sleep_until(t0 + Duration::from_secs(k + 1)).await;
        let b = {
            let mut s = stats.borrow_mut();
            s.cur_idx = k + 1;
            std::mem::replace(&mut s.cur, Bucket::new())
        };
        if tx.send(Msg::Second(t, k, b)).is_err() {
            return;
        }
        k += 1;
    }
}

async fn worker(
    ctx: Arc<Ctx>,
    stats: Rc<RefCell<ThreadStats>>,
    pacer: Rc<Pacer>,
    msg_tx: mpsc::UnboundedSender<Msg>,
    t0_rx: watch::Receiver<Option<Instant>>,
) {
    let mut conn = Conn::new(&ctx.instance_header, ctx.head);
    if ctx.keep_alive {
        // Connect before the clock starts so the first second measures requests, not
        // handshakes. A failure here is not counted: the first request retries and counts.
        if let Ok(Ok(s)) = tokio::time::timeout(ctx.timeout, client::connect(ctx.addr)).await {
            conn.set_stream(s);
        }
    }
    let _ = msg_tx.send(Msg::Connected);
    drop(msg_tx);
    let Some(t0) = wait_t0(t0_rx).await else {
        return;
    };
    let end = ctx.duration.map(|d| t0 + d);
    // One timer per connection, re-armed lazily: it may fire early (then it is pushed to
    // the real deadline), never late. Deadlines only move forward, so most requests do
    // not touch the timer wheel at all.
    let mut watchdog = Box::pin(sleep_until(t0 + ctx.timeout));
    let me = Rc::new(Notify::new());
    loop {
        if ctx.stop.load(Relaxed) {
            break;
        }
        // Intended send time when it differs from the actual one (open model, overdue).
        let sched = match ctx.model {
            Model::Closed => {
                if let Some(n) = ctx.limit {
                    if ctx.tickets.fetch_add(1, Relaxed) >= n {
                        break;
                    }
                }
                if end.is_some_and(|e| Instant::now() >= e) {
                    break;
                }
                None
            }
            Model::Open { rate } => {
                let i = ctx.tickets.fetch_add(1, Relaxed);
                if ctx.limit.is_some_and(|n| i >= n) {
                    break;
                }
                let sched = t0 + Duration::from_secs_f64(i as f64 / rate);
                let now = Instant::now();
                // Past the end, overdue requests are not sent late either: they are
                // reported as unsent (due minus sent).
                if end.is_some_and(|e| sched >= e || now >= e) {
                    break;
                }
                if sched + EARLY > now {
                    // An idle connection waits for the slot. The wake-up's lateness is
                    // the generator's, not the server's, so latency counts from the
                    // actual send, below.
                    pacer.wait(sched, &me).await;
                    if ctx.stop.load(Relaxed) {
                        break;
                    }
                    None
                } else {
                    // Overdue: it waited for a free connection, and that wait is what
                    // coordinated omission would hide. Count from the schedule. (Within
                    // EARLY it is just the wake-up of a free connection, as at t0.)
                    stats.borrow_mut().queued += 1;
                    Some(sched)
                }
            }
        };
        stats.borrow_mut().sent += 1;
        let start = Instant::now();
        let deadline = start + ctx.timeout;
        if watchdog.is_elapsed() {
            watchdog.as_mut().reset(deadline);
        }
        let result = {
            let fut = conn.exchange(ctx.addr, &ctx.req);
            tokio::pin!(fut);
            loop {
                tokio::select! {
                    biased;
                    r = &mut fut => break r,
                    _ = &mut watchdog => {
                        if Instant::now() >= deadline {
                            break Err(Fail::Timeout);
                        }
                        watchdog.as_mut().reset(deadline);
                    }
                }
            }
        };
        if result.is_err() {
            conn.close();
        }
        let done = Instant::now();
        if conn.retried > 0 {
            stats.borrow_mut().retried += std::mem::take(&mut conn.retried);
        }
        stats
            .borrow_mut()
            .record(result, sched.unwrap_or(start), start, done, &conn.instance);
    }
}

/// Per-second buckets from all threads, reduced to [`Second`]s in order as soon as every
/// thread has reported (or finished).
struct Timeline {
    pending: BTreeMap<u64, Bucket>,
    reported: Vec<Option<u64>>,
    finished: Vec<bool>,
    seconds: Vec<Second>,
    requests: u64,
    errors: u64,
    emitted: usize,
}

impl Timeline {
    fn new(threads: usize) -> Timeline {
        Timeline {
            pending: BTreeMap::new(),
            reported: vec![None; threads],
            finished: vec![false; threads],
            seconds: Vec::new(),
            requests: 0,
            errors: 0,
            emitted: 0,
        }
    }

    fn add(&mut self, t: usize, k: u64, b: Bucket) {
        self.reported[t] = Some(self.reported[t].map_or(k, |r| r.max(k)));
        match self.pending.get_mut(&k) {
            Some(p) => p.merge(&b),
            None => {
                self.pending.insert(k, b);
            }
        }
        self.advance();
    }

    fn finish(&mut self, t: usize) {
        self.finished[t] = true;
        self.advance();
    }

    fn finish_all(&mut self) {
        self.finished.iter_mut().for_each(|f| *f = true);
        self.advance();
    }

    fn complete(&self, k: u64) -> bool {
        (0..self.finished.len())
            .all(|t| self.finished[t] || self.reported[t].is_some_and(|r| r >= k))
    }

    fn advance(&mut self) {
        while let Some((&k, _)) = self.pending.first_key_value() {
            if !self.complete(k) {
                break;
            }
            let b = self.pending.remove(&k).expect("present");
            // Seconds nobody reported (no thread alive) are not invented.
            self.requests += b.requests;
            self.errors += b.errors;
            self.seconds.push(Second {
                t: k,
                requests: b.requests,
                errors: b.errors,
                p50: Duration::from_micros(b.hist.value_at_quantile(0.5)),
                p99: Duration::from_micros(b.hist.value_at_quantile(0.99)),
                max: Duration::from_micros(b.hist.max()),
            });
        }
    }

    fn emit(&mut self, tx: Option<&watch::Sender<Progress>>) {
        if self.emitted == self.seconds.len() {
            return;
        }
        self.emitted = self.seconds.len();
        if let (Some(tx), Some(s)) = (tx, self.seconds.last()) {
            tx.send_replace(Progress {
                elapsed: Duration::from_secs(s.t + 1),
                requests: self.requests,
                errors: self.errors,
                rps: s.requests as f64,
                p99: s.p99,
            });
        }
    }

    fn into_seconds(self) -> Vec<Second> {
        self.seconds
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket(requests: u64, latency_us: u64) -> Bucket {
        let mut b = Bucket::new();
        b.requests = requests;
        for _ in 0..requests {
            b.hist.record(latency_us).unwrap();
        }
        b
    }

    #[test]
    fn timeline_waits_for_every_thread_then_publishes_in_order() {
        let (tx, rx) = watch::channel(Progress::default());
        let mut t = Timeline::new(2);
        t.add(0, 0, bucket(10, 100));
        t.add(0, 1, bucket(20, 100));
        t.emit(Some(&tx));
        assert!(t.seconds.is_empty(), "thread 1 has not reported second 0");
        t.add(1, 0, bucket(5, 1000));
        t.emit(Some(&tx));
        assert_eq!(t.seconds.len(), 1);
        assert_eq!(t.seconds[0].requests, 15);
        assert!(t.seconds[0].p99 >= Duration::from_micros(990));
        let p = rx.borrow().clone();
        assert_eq!(
            (p.elapsed, p.requests, p.rps),
            (Duration::from_secs(1), 15, 15.0)
        );
        // Thread 1 ends: it no longer holds back later seconds.
        t.finish(1);
        t.emit(Some(&tx));
        assert_eq!(
            t.seconds.iter().map(|s| s.t).collect::<Vec<_>>(),
            vec![0, 1]
        );
        assert_eq!(rx.borrow().requests, 35);
    }
}
