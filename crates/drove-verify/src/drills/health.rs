//! health: every instance is ready, every backend enabled and healthy (drove's own
//! probes), and a GET through the balancer is answered.

use serde_json::json;
use tokio::time::Instant;

use super::{Ctx, Outcome};
use crate::{latency, secs};

pub(crate) async fn run(ctx: &mut Ctx<'_>) -> Result<Outcome, String> {
    let start = Instant::now();
    let (st, settled) = ctx.wait_settled().await?;
    let waited = start.elapsed();
    if !st.has_balancer {
        return Ok(Outcome::verdict(
            false,
            "this drove has no [balancer]: nothing to verify through it".into(),
            json!({ "balancer": false }),
        ));
    }
    let total = st.backends.len();
    let serving = st.serving().len();
    let not_ready: Vec<String> = st
        .service_instances()
        .iter()
        .filter(|i| i.state != drove_api::InstanceState::Ready)
        // drove's own explanation (a failing probe, a port held by another program, a
        // crash loop) says more than the state alone.
        .map(|i| match &i.why {
            Some(why) => format!("{}: {} ({why})", i.id, i.state),
            None => format!("{}: {}", i.id, i.state),
        })
        .chain(
            st.backends
                .iter()
                .filter(|b| !(b.enabled && b.healthy))
                .map(|b| {
                    format!(
                        "{}: {}",
                        b.id,
                        if b.enabled { "unhealthy" } else { "drained" }
                    )
                }),
        )
        .collect();
    let path = ctx.opts.path.clone();
    let t = Instant::now();
    let got = ctx.get(&path, &[]).await;
    let took = t.elapsed();
    let (get_ok, get_text, code) = match &got {
        Ok(r) => (
            r.status < 400,
            format!("{} in {}", r.status, latency(took)),
            Some(r.status),
        ),
        Err(e) => (false, format!("failed: {e}"), None),
    };
    let served_by = got.as_ref().ok().and_then(|r| ctx.instance_of(r));
    let kind = if st.supervised() {
        "instances"
    } else {
        "backends"
    };
    let mut summary = format!("{serving}/{total} {kind} ready and healthy");
    if !settled {
        summary.push_str(&format!(
            " after {} ({})",
            secs(waited),
            not_ready.join(", ")
        ));
    }
    summary.push_str(&format!("; GET {path} through the balancer: {get_text}"));
    if let Some(i) = &served_by {
        summary.push_str(&format!(" from {i}"));
    }
    Ok(Outcome::verdict(
        settled && total > 0 && get_ok,
        summary,
        json!({
            "backends": total, "serving": serving, "settled": settled,
            "waited_s": crate::round3(waited.as_secs_f64()),
            "not_ready": not_ready,
            "get_status": code, "get_ms": crate::round3(took.as_secs_f64() * 1000.0),
            "served_by": served_by, "instance_header": ctx.instance_header,
        }),
    ))
}
