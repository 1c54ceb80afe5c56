//! restart and scale under open-model load: `POST /api/restart` (a rolling restart,
//! answered when done) and `POST /api/scale` to N+1 then back to N. Failed requests
//! counted; expect 0.

use drove_api as api;
use serde_json::json;
use tokio::time::{sleep, Instant};

use super::{failed_of, needs_supervisor, Ctx, Outcome, POLL};
use crate::{count, load, secs};

pub(crate) async fn restart(ctx: &mut Ctx<'_>) -> Result<Outcome, String> {
    let st = ctx.admin.status().await?;
    if let Some(skip) = needs_supervisor(&st) {
        return Ok(skip);
    }
    let service = st.service.clone().unwrap_or_default();
    let before: Vec<String> = st
        .service_instances()
        .iter()
        .map(|i| i.id.clone())
        .collect();
    let spec = ctx.open_load()?;
    let c = &*ctx;
    let (report, res) = load::under_load(&spec, async {
        let t0 = Instant::now();
        let req = api::RestartRequest {
            service: Some(service.clone()),
            ..Default::default()
        };
        let r = c
            .admin
            .post::<_, api::RestartAnswer>("/api/restart", &req)
            .await;
        (r, t0.elapsed())
    })
    .await?;
    let (answer, took) = res;
    let failed = report.errors.total();
    let (replaced, why) = match &answer {
        Ok(v) => (v.replaced.len(), None),
        Err(e) => (0, Some(e.clone())),
    };
    let after: Vec<String> = ctx
        .admin
        .status()
        .await?
        .service_instances()
        .iter()
        .map(|i| i.id.clone())
        .collect();
    // Restarts keep every instance's id (web.k stays web.k on its port).
    let ids_kept = after == before;
    let ok = why.is_none() && failed == 0 && replaced == before.len();
    let mut summary = format!(
        "rolling restart of {service} under {}: {}; {replaced}/{} instances replaced in {}",
        ctx.rate_text(),
        failed_of(&report),
        before.len(),
        secs(took)
    );
    if let Some(w) = &why {
        summary.push_str(&format!("; {w}"));
    }
    Ok(Outcome::verdict(
        ok,
        summary,
        json!({
            "service": service, "requests": report.requests, "failed": failed,
            "unsent": report.unsent, "replaced": replaced, "elapsed_s": took.as_secs_f64(),
            "before": before, "after": after, "ids_kept": ids_kept, "error": why, "answer": answer.ok().and_then(|a| serde_json::to_value(a).ok()),
            "p99_ms": report.latency.p99.as_secs_f64() * 1000.0, "max_ms": report.latency.max.as_secs_f64() * 1000.0,
        }),
    ))
}

/// Waits until exactly `n` backends serve; time taken, or None after the settle timeout.
async fn wait_serving_count(
    ctx: &Ctx<'_>,
    n: usize,
    t0: Instant,
) -> Result<(Option<std::time::Duration>, Vec<String>), String> {
    let end = t0 + ctx.opts.settle_timeout;
    loop {
        let st = ctx.admin.status().await?;
        let serving: Vec<String> = st.serving().iter().map(|b| b.id.clone()).collect();
        if serving.len() == n && st.backends.len() == n {
            return Ok((Some(t0.elapsed()), serving));
        }
        if Instant::now() >= end {
            return Ok((None, serving));
        }
        sleep(POLL).await;
    }
}

pub(crate) async fn scale(ctx: &mut Ctx<'_>) -> Result<Outcome, String> {
    let st = ctx.admin.status().await?;
    if let Some(skip) = needs_supervisor(&st) {
        return Ok(skip);
    }
    let service = st.service.clone().unwrap_or_default();
    let n = st.service_instances().len();
    let old: Vec<String> = st.backends.iter().map(|b| b.id.clone()).collect();
    let scale_to = |n: usize| api::ScaleRequest {
        service: service.clone(),
        instances: n as u32,
    };
    let spec = ctx.open_load()?;
    let c = &*ctx;
    let (report, res) = load::under_load(&spec, async {
        let t0 = Instant::now();
        c.admin
            .post::<_, api::ScaleAnswer>("/api/scale", &scale_to(n + 1))
            .await?;
        let (up, serving_up) = wait_serving_count(c, n + 1, t0).await?;
        // Let the newcomer take some of the load before it goes again.
        if up.is_some() {
            sleep(c.opts.duration / 3).await;
        }
        let t1 = Instant::now();
        let back = c
            .admin
            .post::<_, api::ScaleAnswer>("/api/scale", &scale_to(n))
            .await;
        let (down, _) = wait_serving_count(c, n, t1).await?;
        back?;
        Ok::<_, String>((up, down, serving_up))
    })
    .await?;
    let (up, down, serving_up) = match res {
        Ok(x) => x,
        Err(e) => {
            // Put the service back to N whatever happened.
            let _ = ctx
                .admin
                .post::<_, api::ScaleAnswer>("/api/scale", &scale_to(n))
                .await;
            return Ok(Outcome::verdict(
                false,
                format!("{service} {n}→{}→{n}: {e}", n + 1),
                json!({ "error": e }),
            ));
        }
    };
    let failed = report.errors.total();
    let new: Vec<String> = serving_up
        .iter()
        .filter(|id| !old.contains(id))
        .cloned()
        .collect();
    // The newcomer must have served: a response named it (when responses name instances).
    let new_served: u64 = new
        .iter()
        .map(|id| report.per_instance.get(id).copied().unwrap_or(0))
        .sum();
    let named = ctx.instance_header.is_some() && !report.per_instance.is_empty();
    let served_ok = !named || new_served > 0;
    let ok = failed == 0 && up.is_some() && down.is_some() && served_ok;
    let summary = format!(
        "{service} {n}→{}→{n} under {}: {}; {} serving after {}{}, back to {n} after {}",
        n + 1,
        ctx.rate_text(),
        failed_of(&report),
        n + 1,
        up.map_or("never".into(), secs),
        if named {
            format!(" (new {} served {})", new.join(","), count(new_served))
        } else {
            String::new()
        },
        down.map_or("never".into(), secs),
    );
    Ok(Outcome::verdict(
        ok,
        summary,
        json!({
            "service": service, "from": n, "to": n + 1, "requests": report.requests, "failed": failed,
            "unsent": report.unsent, "up_s": up.map(|d| d.as_secs_f64()), "down_s": down.map(|d| d.as_secs_f64()),
            "new_instances": new, "new_served": new_served,
        }),
    ))
}
