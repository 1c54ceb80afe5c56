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
    fn thaw(&mut self) -> Result<(), String> {
        match self.0.take() {
            Some(pid) => signal_instance(pid, Signal::SIGCONT),
            None => Ok(()),
        }
    }
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
        .filter(|i| i.state == "ready" && st.backend(&i.id).is_some_and(|b| b.enabled && b.healthy))
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
        let instance_ready = st.instance(id).is_none_or(|i| i.state == "ready");
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
    let retries_before = ctx.admin.status_json().await?["balancer"]["retries"]
        .as_u64()
        .unwrap_or(0);
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
    let retries = ctx.admin.status_json().await?["balancer"]["retries"]
        .as_u64()
        .unwrap_or(0)
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
        let back = wait_serving(c, &id, t1, false).await?;
        Ok::<_, String>((ejected, held, back))
    })
    .await?;
    let (ejected, held, back) = res?;
    let failed = report.errors.total();
    let ok = failed == 0 && ejected.is_some();
    let summary = format!(
        "SIGSTOP {id} under {}: {}; worst latency {} (p99 {}); {}; SIGCONT after {}, healthy again after {}",
        ctx.rate_text(),
        failed_of(&report),
        latency(report.latency.max),
        latency(report.latency.p99),
        ejected.map_or(format!("not ejected within {}", secs(eject_timeout)), |d| format!("ejected in {}", secs(d))),
        secs(held),
        back.map_or("never".to_string(), secs),
    );
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
            "healthy_again_s": back.map(|d| d.as_secs_f64()),
        }),
    ))
}
