//! failover and freeze: a real signal to a random ready instance (its process group, as
//! drove runs each instance in its own) under open-model load.
//!
//! - failover: SIGKILL. Failed requests counted exactly (expect 0 for GET: a request that
//!   never reached the dead instance is retried, one that did is retried if idempotent);
//!   time until status shows it out of rotation (unhealthy or removed); time until it is
//!   ready again and a response through the balancer names it.
//! - freeze: SIGSTOP, held until the instance is ejected and a moment more, then SIGCONT
//!   (always, by a guard, even if the drill fails half-way). Failed requests, worst
//!   latency (requests held by the frozen instance until the balancer's per-try timeout
//!   show here), time to eject, time until healthy again.

use std::time::Duration;

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use rand::seq::SliceRandom;
use serde_json::json;
use tokio::time::{sleep, Instant};

use super::{failed_of, needs_supervisor, Ctx, Outcome, POLL};
use drove_api::InstanceState;

use crate::admin::Status;
use crate::{count, latency, load, secs};

/// A frozen instance stays frozen this long after it is ejected, so the load runs on the
/// rest of the fleet for a while.
const HOLD_FROZEN: Duration = Duration::from_secs(1);
/// Ejection must happen within this (or the drill's duration, if longer).
const EJECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Signals the instance's process group (drove starts each instance as a group leader),
/// or the process alone if it leads none.
fn signal_instance(pid: i32, sig: Signal) -> Result<(), String> {
    let p = Pid::from_raw(pid);
    killpg(p, sig).or_else(|_| kill(p, sig)).map_err(|e| {
        format!("cannot send {sig} to pid {pid}: {e} (is drove on this host, run by this user?)")
    })
}

/// SIGCONT on drop: a frozen instance is never left behind.
struct Frozen(Option<i32>);

impl Frozen {
    /// SIGCONT; a process that is gone meanwhile (the supervisor replaced and killed
    /// it) is not an error: there is nothing left to thaw.
    fn thaw(&mut self) -> Result<(), String> {
        match self.0.take() {
            Some(pid) => match killpg(Pid::from_raw(pid), Signal::SIGCONT) {
                Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
                Err(_) => signal_instance(pid, Signal::SIGCONT),
            },
            None => Ok(()),
        }
    }
}

/// How a frozen instance came back.
enum Back {
    /// The same process is ready, enabled and healthy again, after this long.
    Healthy(Duration),
    /// The supervisor replaced it (its health probe failed): another process serves
    /// now, as `by` (an instance id, maybe the same one with a new pid).
    Replaced { by: String, after: Duration },
    /// Neither within the settle timeout.
    Never,
}

/// After SIGCONT: waits until the frozen process (`id`, `pid`) serves again, or notices
/// that the supervisor replaced it.
async fn wait_back(
    ctx: &Ctx<'_>,
    id: &str,
    pid: i32,
    before: &[String],
    t0: Instant,
) -> Result<Back, String> {
    let end = Instant::now() + ctx.opts.settle_timeout;
    loop {
        let st = ctx.admin.status().await?;
        let same = st.instance(id).filter(|i| i.pid == Some(pid));
        match same {
            Some(i) => {
                let backend_ok = st.backend(id).is_some_and(|b| b.enabled && b.healthy);
                if i.state == InstanceState::Ready && backend_ok {
                    return Ok(Back::Healthy(t0.elapsed()));
                }
            }
            None => {
                // Gone, or the slot runs another process: replaced. Name the newcomer
                // once it serves (a new id, or the same id with a new pid).
                let newcomer = st
                    .service_instances()
                    .into_iter()
                    .find(|i| {
                        (i.id == id || !before.contains(&i.id))
                            && i.state == InstanceState::Ready
                            && st.backend(&i.id).is_some_and(|b| b.enabled && b.healthy)
                    })
                    .map(|i| i.id.clone());
                if let Some(by) = newcomer {
                    return Ok(Back::Replaced {
                        by,
                        after: t0.elapsed(),
                    });
                }
            }
        }
        if Instant::now() >= end {
            return Ok(Back::Never);
        }
        sleep(POLL).await;
    }
}

/// What decides the freeze drill, with this drove's values: how fast a frozen instance
/// leaves rotation, and how long a request stuck on it waits before another try.
fn freeze_settings(st: &Status) -> String {
    let Some(s) = &st.settings else {
        return String::new();
    };
    let mut parts = Vec::new();
    match &s.health {
        Some(h) => parts.push(format!(
            "ejection by [balancer] health ({}): interval × fall = {}s × {} = {:.2}s, each probe timing out after {}s",
            h.check,
            h.interval_s,
            h.fall,
            h.interval_s * f64::from(h.fall),
            h.timeout_s
        )),
        None => parts.push(
            "no [balancer] health: only passive ejection takes a frozen instance out, once requests to it fail".into(),
        ),
    }
    if s.passive_max_fails > 0 {
        parts.push(format!(
            "passive: max_fails {} within fail_timeout {}s",
            s.passive_max_fails, s.passive_fail_timeout_s
        ));
    } else {
        parts.push("passive ejection off (max_fails = 0)".into());
    }
    match (s.retry_attempts, s.per_try_timeout_s) {
        (0, _) => parts.push(
            "retries.attempts = 0: a request stuck on it fails instead of moving".into(),
        ),
        (_, Some(t)) => parts.push(format!(
            "retries.per_try_timeout = {t}s: a request stuck on it is retried elsewhere after that"
        )),
        (_, None) => parts.push(format!(
            "retries.per_try_timeout unset: a request stuck on it waits timeouts.response ({}s) before a retry",
            s.response_timeout_s
        )),
    }
    parts.join("; ")
}

impl Drop for Frozen {
    fn drop(&mut self) {
        let _ = self.thaw();
    }
}

/// A random ready instance of the balanced service that is serving: (id, pid).
fn pick(st: &Status) -> Option<(String, i32)> {
    let candidates: Vec<(String, i32)> = st
        .service_instances()
        .iter()
        .filter(|i| {
            i.state == InstanceState::Ready
                && st.backend(&i.id).is_some_and(|b| b.enabled && b.healthy)
        })
        .filter_map(|i| i.pid.map(|p| (i.id.clone(), p)))
        .collect();
    candidates.choose(&mut rand::thread_rng()).cloned()
}

/// Time from `t0` until status shows `id` out of rotation (unhealthy, disabled or gone).
async fn wait_ejected(
    ctx: &Ctx<'_>,
    id: &str,
    t0: Instant,
    timeout: Duration,
) -> Result<Option<Duration>, String> {
    loop {
        let st = ctx.admin.status().await?;
        let out = st.backend(id).is_none_or(|b| !b.healthy || !b.enabled);
        if out {
            return Ok(Some(t0.elapsed()));
        }
        if t0.elapsed() >= timeout {
            return Ok(None);
        }
        sleep(POLL).await;
    }
}

/// Time from `t0` until `id` is ready, enabled and healthy again and (when responses name
/// their instance) a response through the balancer comes from it.
async fn wait_serving(
    ctx: &Ctx<'_>,
    id: &str,
    t0: Instant,
    need_response: bool,
) -> Result<Option<Duration>, String> {
    let end = Instant::now() + ctx.opts.settle_timeout;
    loop {
        let st = ctx.admin.status().await?;
        let instance_ready = st
            .instance(id)
            .is_none_or(|i| i.state == InstanceState::Ready);
        let backend_ok = st.backend(id).is_some_and(|b| b.enabled && b.healthy);
        if instance_ready && backend_ok {
            if !need_response || ctx.instance_header.is_none() {
                return Ok(Some(t0.elapsed()));
            }
            for _ in 0..(2 * st.backends.len()).max(4) {
                if let Ok(r) = ctx.get(&ctx.opts.path, &[]).await {
                    if ctx.instance_of(&r).as_deref() == Some(id) {
                        return Ok(Some(t0.elapsed()));
                    }
                }
            }
        }
        if Instant::now() >= end {
            return Ok(None);
        }
        sleep(POLL).await;
    }
}

fn errors_json(r: &drove_bench::Report) -> serde_json::Value {
    json!({
        "connect": r.errors.connect, "timeout": r.errors.timeout, "reset": r.errors.reset,
        "other": r.errors.other, "status": r.errors.status,
        "status_counts": r.status_counts.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
    })
}

pub(crate) async fn failover(ctx: &mut Ctx<'_>) -> Result<Outcome, String> {
    let st = ctx.admin.status().await?;
    if let Some(skip) = needs_supervisor(&st) {
        return Ok(skip);
    }
    let Some((id, pid)) = pick(&st) else {
        return Ok(Outcome::verdict(
            false,
            "no ready instance to kill".into(),
            json!({}),
        ));
    };
    let retries_before = st.retries;
    let spec = ctx.open_load()?;
    let c = &*ctx;
    let eject_timeout = EJECT_TIMEOUT.max(c.opts.duration);
    let (report, res) = load::under_load(&spec, async {
        signal_instance(pid, Signal::SIGKILL)?;
        let t0 = Instant::now();
        let ejected = wait_ejected(c, &id, t0, eject_timeout).await?;
        let back = wait_serving(c, &id, t0, true).await?;
        Ok::<_, String>((ejected, back))
    })
    .await?;
    let (ejected, back) = res?;
    let retries = ctx
        .admin
        .status()
        .await?
        .retries
        .saturating_sub(retries_before);
    let failed = report.errors.total();
    let ok = failed == 0 && ejected.is_some() && back.is_some();
    let summary = format!(
        "SIGKILL {id} under {}: {}; {}; {}; {} retried",
        ctx.rate_text(),
        failed_of(&report),
        ejected.map_or(
            format!("not ejected within {}", secs(eject_timeout)),
            |d| format!("ejected in {}", secs(d))
        ),
        back.map_or(
            format!("not serving again within {}", secs(ctx.opts.settle_timeout)),
            |d| format!("serving again after {}", secs(d))
        ),
        count(retries),
    );
    Ok(Outcome::verdict(
        ok,
        summary,
        json!({
            "instance": id, "pid": pid, "rate": ctx.opts.rate,
            "requests": report.requests, "failed": failed, "errors": errors_json(&report),
            "unsent": report.unsent, "retries": retries,
            "eject_s": ejected.map(|d| d.as_secs_f64()), "serving_again_s": back.map(|d| d.as_secs_f64()),
            "p99_ms": report.latency.p99.as_secs_f64() * 1000.0, "max_ms": report.latency.max.as_secs_f64() * 1000.0,
        }),
    ))
}

pub(crate) async fn freeze(ctx: &mut Ctx<'_>) -> Result<Outcome, String> {
    let st = ctx.admin.status().await?;
    if let Some(skip) = needs_supervisor(&st) {
        return Ok(skip);
    }
    let Some((id, pid)) = pick(&st) else {
        return Ok(Outcome::verdict(
            false,
            "no ready instance to freeze".into(),
            json!({}),
        ));
    };
    let before: Vec<String> = st.instances.iter().map(|i| i.id.clone()).collect();
    let spec = ctx.open_load()?;
    let c = &*ctx;
    let eject_timeout = EJECT_TIMEOUT.max(c.opts.duration);
    let (report, res) = load::under_load(&spec, async {
        signal_instance(pid, Signal::SIGSTOP)?;
        let mut frozen = Frozen(Some(pid));
        let t0 = Instant::now();
        let ejected = wait_ejected(c, &id, t0, eject_timeout).await?;
        sleep(HOLD_FROZEN).await;
        let held = t0.elapsed();
        frozen.thaw()?;
        let t1 = Instant::now();
        let back = wait_back(c, &id, pid, &before, t1).await?;
        Ok::<_, String>((ejected, held, back))
    })
    .await?;
    let (ejected, held, back) = res?;
    let failed = report.errors.total();
    let ok = failed == 0 && ejected.is_some();
    let back_text = match &back {
        Back::Healthy(d) => format!("healthy again after {}", secs(*d)),
        Back::Replaced { by, after } if by == &id => format!(
            "replaced by the supervisor (its health probe failed while frozen): a new {by} process serving after {}",
            secs(*after)
        ),
        Back::Replaced { by, after } => format!(
            "replaced by the supervisor (its health probe failed while frozen): {by} serving after {}",
            secs(*after)
        ),
        Back::Never => format!(
            "not serving again within {} (neither the same process nor a replacement)",
            secs(ctx.opts.settle_timeout)
        ),
    };
    let mut summary = format!(
        "SIGSTOP {id} under {}: {}; worst latency {} (p99 {}); {}; SIGCONT after {}, {back_text}",
        ctx.rate_text(),
        failed_of(&report),
        latency(report.latency.max),
        latency(report.latency.p99),
        ejected.map_or(
            format!("not ejected within {}", secs(eject_timeout)),
            |d| format!("ejected in {}", secs(d))
        ),
        secs(held),
    );
    if !ok {
        // What decides this drill, with this drove's values: the line to change.
        let why = freeze_settings(&st);
        if !why.is_empty() {
            summary.push_str(&format!(" — decided by: {why}"));
        }
    }
    let (healthy_again, replaced_by) = match &back {
        Back::Healthy(d) => (Some(d.as_secs_f64()), None),
        Back::Replaced { by, .. } => (None, Some(by.clone())),
        Back::Never => (None, None),
    };
    Ok(Outcome::verdict(
        ok,
        summary,
        json!({
            "instance": id, "pid": pid, "rate": ctx.opts.rate,
            "requests": report.requests, "failed": failed, "errors": errors_json(&report),
            "unsent": report.unsent,
            "worst_latency_ms": report.latency.max.as_secs_f64() * 1000.0,
            "p99_ms": report.latency.p99.as_secs_f64() * 1000.0,
            "eject_s": ejected.map(|d| d.as_secs_f64()), "frozen_s": held.as_secs_f64(),
            "healthy_again_s": healthy_again, "replaced_by": replaced_by,
            "settings": st.settings,
        }),
    ))
}
