//! stickiness: N independent clients, each with its own cookie jar and a new connection
//! per request, under background load. Each must stay on one backend (% pinned, expect
//! 100%). Then the backend holding the most clients is drained through the admin API:
//! its clients must move (each to one other backend, with a new sticky cookie) and the
//! others must stay; the backend is undrained after, whatever happened.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::json;

use super::{failed_of, Ctx, Outcome};
use crate::admin::Admin;
use crate::{count, load};

/// Independent clients.
const CLIENTS: usize = 16;
/// Requests per client before the drain.
const ROUNDS: usize = 10;
/// Requests per client after the drain.
const ROUNDS_AFTER: usize = 6;

/// A cookie-jar client.
#[derive(Default)]
pub(crate) struct Jar {
    pub cookies: BTreeMap<String, String>,
}

impl Jar {
    pub fn header(&self) -> Option<String> {
        if self.cookies.is_empty() {
            return None;
        }
        Some(
            self.cookies
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("; "),
        )
    }
}

/// What one client saw in one phase.
#[derive(Default, Clone)]
struct Seen {
    instances: Vec<String>,
    failed: u64,
    cookie_values: BTreeSet<String>,
}

impl Seen {
    fn pinned_to(&self) -> Option<&str> {
        let first = self.instances.first()?;
        (self.failed == 0 && self.instances.iter().all(|i| i == first)).then_some(first.as_str())
    }
}

async fn phase(ctx: &Ctx<'_>, jars: &mut [Jar], rounds: usize) -> Vec<Seen> {
    let mut seen = vec![Seen::default(); jars.len()];
    // Clients take turns, one request each per round, so round robin without stickiness
    // would move every one of them.
    for _ in 0..rounds {
        let futs = jars.iter().map(|jar| {
            let cookie = jar.header();
            async move {
                let headers: Vec<(&str, &str)> =
                    cookie.iter().map(|c| ("Cookie", c.as_str())).collect();
                ctx.get(&ctx.opts.path, &headers).await
            }
        });
        let results = futures_util::future::join_all(futs).await;
        for ((jar, s), r) in jars.iter_mut().zip(seen.iter_mut()).zip(results) {
            match r {
                Ok(r) if r.status < 400 => {
                    for (k, v) in r.set_cookies() {
                        if Some(&k) == ctx.sticky_cookie.as_ref() {
                            s.cookie_values.insert(v.clone());
                        }
                        jar.cookies.insert(k, v);
                    }
                    match ctx.instance_of(&r) {
                        Some(i) => s.instances.push(i),
                        None => s.failed += 1,
                    }
                }
                _ => s.failed += 1,
            }
        }
    }
    seen
}

/// Undrains on drop, so a drill that fails half-way leaves the backend in rotation.
struct Undrain {
    admin: Admin,
    id: Option<String>,
}

impl Undrain {
    async fn release(mut self) -> Result<(), String> {
        match self.id.take() {
            Some(instance) => self
                .admin
                .post::<_, drove_api::DrainAnswer>(
                    "/api/undrain",
                    &drove_api::DrainRequest { instance },
                )
                .await
                .map(|_| ()),
            None => Ok(()),
        }
    }
}

impl Drop for Undrain {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            self.admin.undrain_blocking(&id);
        }
    }
}

pub(crate) async fn run(ctx: &mut Ctx<'_>) -> Result<Outcome, String> {
    if ctx.instance_header.is_none() {
        return Ok(Outcome::skip(
            "responses do not name their instance (set [balancer] instance_header)",
        ));
    }
    let sticky = ctx.sticky_cookie.clone();
    if sticky.is_none() && !ctx.opts.expect_sticky {
        return Ok(Outcome::skip(
            "no sticky cookie (no `sticky` in [balancer]; --expect-sticky to require one)",
        ));
    }
    let spec = ctx.open_load()?;
    let ctx_ref = &*ctx;
    let (report, out) = load::under_load(&spec, async move { drill(ctx_ref).await }).await?;
    let mut out = out?;
    let failed_load = report.errors.total();
    out.summary.push_str(&format!(
        "; background load {}: {}",
        ctx.rate_text(),
        failed_of(&report)
    ));
    out.numbers["load"] = json!({ "requests": report.requests, "failed": failed_load });
    if failed_load > 0 {
        out.passed = Some(false);
    }
    Ok(out)
}

async fn drill(ctx: &Ctx<'_>) -> Result<Outcome, String> {
    let cookie_name = ctx.sticky_cookie.clone();
    let mut jars: Vec<Jar> = (0..CLIENTS).map(|_| Jar::default()).collect();
    let first = phase(ctx, &mut jars, ROUNDS).await;
    let pinned: Vec<Option<String>> = first
        .iter()
        .map(|s| s.pinned_to().map(str::to_string))
        .collect();
    let n_pinned = pinned.iter().filter(|p| p.is_some()).count();
    let failed: u64 = first.iter().map(|s| s.failed).sum();
    let got_cookie = first.iter().filter(|s| !s.cookie_values.is_empty()).count();
    let mut per_instance: BTreeMap<String, usize> = BTreeMap::new();
    for p in pinned.iter().flatten() {
        *per_instance.entry(p.clone()).or_default() += 1;
    }
    let pct = n_pinned as f64 * 100.0 / CLIENTS as f64;
    let cookie_text = match &cookie_name {
        Some(c) => format!("cookie {c}"),
        None => "no sticky cookie set".into(),
    };
    let mut summary = format!(
        "{n_pinned}/{CLIENTS} clients ({pct:.0}%) pinned over {ROUNDS} requests each ({cookie_text})"
    );
    let mut numbers = json!({
        "clients": CLIENTS, "rounds": ROUNDS, "pinned": n_pinned, "pinned_pct": pct,
        "cookie": cookie_name, "clients_with_cookie": got_cookie, "failed": failed,
        "clients_per_instance": per_instance,
    });
    if failed > 0 {
        summary.push_str(&format!("; {} requests failed", count(failed)));
    }
    let mut ok = n_pinned == CLIENTS && failed == 0 && cookie_name.is_some();
    if !ok {
        return Ok(Outcome::verdict(false, summary, numbers));
    }

    // Drain the backend holding the most clients.
    let st = ctx.admin.status().await?;
    let Some((victim, n_victim)) = per_instance
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(k, n)| (k.clone(), *n))
    else {
        return Ok(Outcome::verdict(false, summary, numbers));
    };
    if st.serving().len() < 2 || st.backend(&victim).is_none() {
        summary.push_str(
            "; drain not tried (fewer than 2 backends, or responses do not name backends by id)",
        );
        return Ok(Outcome::verdict(ok, summary, numbers));
    }
    ctx.admin
        .post::<_, drove_api::DrainAnswer>(
            "/api/drain",
            &drove_api::DrainRequest {
                instance: victim.clone(),
            },
        )
        .await?;
    let guard = Undrain {
        admin: ctx.admin.clone(),
        id: Some(victim.clone()),
    };
    let second = phase(ctx, &mut jars, ROUNDS_AFTER).await;
    guard.release().await?;
    let (mut moved_ok, mut stayed_ok, mut wrong) = (0usize, 0usize, Vec::new());
    for (i, s) in second.iter().enumerate() {
        let before = pinned[i].as_deref();
        let now = s.pinned_to();
        if before == Some(victim.as_str()) {
            // Moved to one other backend, with a new cookie value.
            let new_cookie = !s.cookie_values.is_empty()
                && s.cookie_values
                    .iter()
                    .all(|v| !first[i].cookie_values.contains(v));
            if now.is_some_and(|n| n != victim) && new_cookie {
                moved_ok += 1;
            } else {
                wrong.push(format!(
                    "client {} (on {victim}) → {:?}",
                    i + 1,
                    s.instances
                ));
            }
        } else if now == before {
            stayed_ok += 1;
        } else {
            wrong.push(format!(
                "client {} (on {}) → {:?}",
                i + 1,
                before.unwrap_or("?"),
                s.instances
            ));
        }
    }
    ok = moved_ok == n_victim && stayed_ok == CLIENTS - n_victim;
    summary.push_str(&format!(
        "; drained {victim}: {moved_ok}/{n_victim} of its clients moved with a new cookie, {stayed_ok}/{} others stayed",
        CLIENTS - n_victim
    ));
    if !wrong.is_empty() {
        summary.push_str(&format!(" (wrong: {})", wrong.join("; ")));
    }
    numbers["drain"] = json!({
        "instance": victim, "clients_on_it": n_victim, "moved_with_new_cookie": moved_ok,
        "others_stayed": stayed_ok, "wrong": wrong,
    });
    Ok(Outcome::verdict(ok, summary, numbers))
}
