//! sessions: with shared sessions (the demo's `/session` reporting `"store":"redis"`), a
//! client that keeps only its session cookie (not the sticky one, so the balancer
//! spreads it) sees its counter go up by exactly one per request across instances.
//! Skipped when the app has no `/session`, or its sessions are in memory.

use std::collections::BTreeSet;

use serde_json::{json, Value};

use super::sticky::Jar;
use super::{failed_of, Ctx, Outcome};
use crate::load;

/// The demo app's session endpoint.
const PATH: &str = "/session";
/// Requests of the session client.
const REQUESTS: u64 = 30;

pub(crate) async fn run(ctx: &mut Ctx<'_>) -> Result<Outcome, String> {
    let first = ctx.get(PATH, &[]).await?;
    if first.status == 404 {
        return Ok(Outcome::skip(format!("the app has no {PATH} (404)")));
    }
    if first.status != 200 {
        return Ok(Outcome::verdict(
            false,
            format!(
                "GET {PATH} answered {}: {}",
                first.status,
                String::from_utf8_lossy(&first.body).trim()
            ),
            json!({ "status": first.status }),
        ));
    }
    let v = first.json();
    let store = v["store"].as_str().unwrap_or("");
    match store {
        "" => return Ok(Outcome::skip(format!("{PATH} does not say where sessions live (no \"store\")"))),
        "memory" => {
            return Ok(Outcome::skip(format!(
                "sessions are in memory, per instance ({PATH} reports \"store\":\"memory\"; the demo shares them with REDIS_URL)"
            )))
        }
        _ => {}
    }
    let mut jar = Jar::default();
    for (k, val) in first.set_cookies() {
        if Some(&k) != ctx.sticky_cookie.as_ref() {
            jar.cookies.insert(k, val);
        }
    }
    if jar.cookies.is_empty() {
        return Ok(Outcome::verdict(
            false,
            format!("GET {PATH} set no session cookie"),
            json!({ "store": store }),
        ));
    }
    let start_count = v["count"].as_u64().unwrap_or(0);
    let st = ctx.admin.status().await?;
    let (algo, serving) = (st.algorithm.clone(), st.serving().len());
    let spec = ctx.open_load()?;
    let ctx_ref = &*ctx;
    let jar_ref = &jar;
    let (report, (counts, instances, failed)) = load::under_load(&spec, async move {
        let mut counts: Vec<u64> = Vec::new();
        let mut instances = BTreeSet::new();
        let mut failed = 0u64;
        let cookie = jar_ref.header().unwrap_or_default();
        for _ in 0..REQUESTS {
            match ctx_ref.get(PATH, &[("Cookie", &cookie)]).await {
                Ok(r) if r.status == 200 => {
                    let v: Value = r.json();
                    counts.push(v["count"].as_u64().unwrap_or(0));
                    if let Some(i) = ctx_ref
                        .instance_of(&r)
                        .or_else(|| v["instance"].as_str().map(str::to_string))
                    {
                        instances.insert(i);
                    }
                }
                _ => failed += 1,
            }
        }
        (counts, instances, failed)
    })
    .await?;
    let expected: Vec<u64> = (start_count + 1..=start_count + REQUESTS).collect();
    let consecutive = counts == expected;
    let hashing = matches!(algo.as_str(), "ip_hash" | "hash");
    let spread = instances.len() >= 2 || serving < 2 || hashing;
    let load_failed = report.errors.total();
    let ok = consecutive && failed == 0 && spread && load_failed == 0;
    let last = counts.last().copied().unwrap_or(start_count);
    let lost = expected.iter().filter(|e| !counts.contains(e)).count();
    let summary = format!(
        "a session counted {start_count}→{last} over {REQUESTS} requests across {} instances with store={store}: {} lost or out of order{}; background load {}: {}",
        instances.len(),
        if consecutive { 0 } else { lost.max(1) },
        if failed > 0 { format!(", {failed} requests failed") } else { String::new() },
        ctx.rate_text(),
        failed_of(&report),
    );
    Ok(Outcome::verdict(
        ok,
        summary,
        json!({
            "store": store, "requests": REQUESTS, "start": start_count, "counts": counts,
            "consecutive": consecutive, "failed": failed, "instances": instances,
            "load": { "requests": report.requests, "failed": load_failed },
        }),
    ))
}
