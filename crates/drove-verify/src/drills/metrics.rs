//! metrics: drove's counters agree with what the client counted. A closed run of
//! exactly N requests; the balancer's `requests` and `responses` and each backend's
//! `requests` must grow by exactly what the client saw (no other traffic assumed).

use std::time::Duration;

use drove_bench::Stop;
use serde_json::json;
use tokio::time::{sleep, Instant};

use super::{Ctx, Outcome};
use crate::{count, load};

/// Counters are bumped as responses go out; give the last ones this long to land.
const SETTLE: Duration = Duration::from_secs(2);
/// Connections of the counted run: enough to exercise every worker.
const CONNECTIONS: usize = 16;

pub(crate) async fn run(ctx: &mut Ctx<'_>) -> Result<Outcome, String> {
    let n = ctx.opts.metrics_requests.max(1);
    let before = ctx.admin.status().await?;
    let spec = ctx.closed_load(CONNECTIONS)?;
    let report = load::plain(&spec, Stop::Requests(n)).await?;
    // Poll until drove's totals match the client's (or stop moving).
    let end = Instant::now() + SETTLE;
    let after = loop {
        let st = ctx.admin.status().await?;
        let done = st.requests.saturating_sub(before.requests) >= report.requests
            && st.responses.saturating_sub(before.responses) >= report.responses;
        if done || Instant::now() >= end {
            break st;
        }
        sleep(Duration::from_millis(50)).await;
    };
    let d_requests = after.requests.saturating_sub(before.requests);
    let d_responses = after.responses.saturating_sub(before.responses);
    let per_ok;
    let mut per = serde_json::Map::new();
    let mut per_text = Vec::new();
    let ids: Vec<String> = before.backends.iter().map(|b| b.id.clone()).collect();
    let comparable =
        !report.per_instance.is_empty() && report.per_instance.keys().all(|k| ids.contains(k));
    if comparable {
        let mut all = true;
        let mut backends = after.backends.clone();
        backends.sort_by_key(|a| super::distribution::natural(&a.id));
        for b in &backends {
            let was = before.backend(&b.id).map_or(0, |x| x.requests);
            let drove_n = b.requests.saturating_sub(was);
            let client_n = report.per_instance.get(&b.id).copied().unwrap_or(0);
            all &= drove_n == client_n;
            per.insert(
                b.id.clone(),
                json!({ "drove": drove_n, "client": client_n }),
            );
            let sign = if drove_n == client_n { "=" } else { "≠" };
            per_text.push(format!(
                "{} {}{sign}{}",
                b.id,
                count(drove_n),
                count(client_n)
            ));
        }
        per_ok = all;
    } else {
        per_ok = true;
        per_text.push("per backend not compared: responses do not name backends by id".into());
    }
    let ok = report.requests == n
        && report.errors.transport() == 0
        && d_requests == report.requests
        && d_responses == report.responses
        && per_ok;
    let summary = format!(
        "drove counted {} requests and {} responses, the client {} and {}; per backend (drove=client): {}",
        count(d_requests),
        count(d_responses),
        count(report.requests),
        count(report.responses),
        per_text.join(", ")
    );
    Ok(Outcome::verdict(
        ok,
        summary,
        json!({
            "sent": n, "client_requests": report.requests, "client_responses": report.responses,
            "drove_requests": d_requests, "drove_responses": d_responses,
            "transport_errors": report.errors.transport(),
            "per_backend": per, "per_backend_compared": comparable,
        }),
    ))
}
