//! distribution: a closed run from many connections; every backend in rotation must get
//! the share the algorithm promises. Round robin (weights honoured): a chi-square test
//! of the counts against the weighted shares, and no backend under half its share.
//! least_conn, random_two, p2c_ewma: every backend used, max/min bounded. ip_hash and
//! hash: one client key maps to one backend, so exactly one gets everything.

use std::collections::BTreeMap;

use drove_bench::Stop;
use serde_json::json;

use super::{Ctx, Outcome};
use crate::admin::Status;
use crate::{count, load};

/// A backend under half its promised share fails round robin whatever the p-value.
const MIN_SHARE_OF_EXPECTED: f64 = 0.5;
/// Load-aware algorithms only promise a spread: the busiest backend may get at most this
/// many times the least busy one's requests.
const MAX_SPREAD: f64 = 4.0;

/// Per-backend counts of a run: from the instance header when its values are backend
/// ids, else from drove's per-backend counters (deltas).
pub(crate) fn counts(
    before: &Status,
    after: &Status,
    per_instance: &BTreeMap<String, u64>,
) -> (BTreeMap<String, u64>, &'static str) {
    let ids: Vec<&str> = before.backends.iter().map(|b| b.id.as_str()).collect();
    if !per_instance.is_empty() && per_instance.keys().all(|k| ids.contains(&k.as_str())) {
        let mut m: BTreeMap<String, u64> = ids.iter().map(|i| (i.to_string(), 0)).collect();
        m.extend(per_instance.iter().map(|(k, v)| (k.clone(), *v)));
        (m, "responses")
    } else {
        let m = before
            .backends
            .iter()
            .map(|b| {
                let now = after.backend(&b.id).map_or(b.requests, |a| a.requests);
                (b.id.clone(), now.saturating_sub(b.requests))
            })
            .collect();
        (m, "drove's counters")
    }
}

/// What went wrong between two looks at status: failed connects, timeouts and retries
/// (balancer-wide), failed tries and ejections per backend, backends that left rotation.
/// A distribution that fails *because* of these is not the algorithm's fault.
#[derive(Debug, Default)]
pub(crate) struct Trouble {
    connect_errors: u64,
    timeouts: u64,
    retries: u64,
    /// (backend, failed tries, ejections), only backends with some.
    per_backend: Vec<(String, u64, u64)>,
    /// Backends serving before and not after (ejected, unhealthy, drained or gone).
    left: Vec<String>,
}

impl Trouble {
    pub(crate) fn between(before: &Status, after: &Status) -> Trouble {
        let mut per_backend: Vec<(String, u64, u64)> = after
            .backends
            .iter()
            .map(|a| {
                let b = before.backend(&a.id);
                (
                    a.id.clone(),
                    a.failures.saturating_sub(b.map_or(0, |b| b.failures)),
                    a.ejections.saturating_sub(b.map_or(0, |b| b.ejections)),
                )
            })
            .filter(|(_, f, e)| *f > 0 || *e > 0)
            .collect();
        per_backend.sort_by_key(|p| natural(&p.0));
        let left = before
            .serving()
            .iter()
            .filter(|b| {
                after
                    .backend(&b.id)
                    .is_none_or(|a| !(a.enabled && a.healthy))
            })
            .map(|b| b.id.clone())
            .collect();
        Trouble {
            connect_errors: after.connect_errors.saturating_sub(before.connect_errors),
            timeouts: after.timeouts.saturating_sub(before.timeouts),
            retries: after.retries.saturating_sub(before.retries),
            per_backend,
            left,
        }
    }

    fn any(&self) -> bool {
        self.connect_errors > 0
            || self.timeouts > 0
            || !self.per_backend.is_empty()
            || !self.left.is_empty()
    }

    /// The cause in one clause, or `None` when nothing went wrong.
    pub(crate) fn explain(&self) -> Option<String> {
        if !self.any() {
            return None;
        }
        let mut seen = Vec::new();
        if self.connect_errors > 0 {
            seen.push(format!("{} failed connects", count(self.connect_errors)));
        }
        if self.timeouts > 0 {
            seen.push(format!("{} timeouts", count(self.timeouts)));
        }
        if self.retries > 0 {
            seen.push(format!("{} retried elsewhere", count(self.retries)));
        }
        let tries: Vec<String> = self
            .per_backend
            .iter()
            .map(|(id, f, e)| match e {
                0 => format!("{id} {f} failed"),
                e => format!("{id} {f} failed, ejected {e}×"),
            })
            .collect();
        if !tries.is_empty() {
            seen.push(format!("tries: {}", tries.join(", ")));
        }
        if !self.left.is_empty() {
            seen.push(format!(
                "out of rotation by the end: {}",
                self.left.join(", ")
            ));
        }
        Some(format!(
            "not the algorithm: during the run drove saw {}. A backend that refuses connections (a small listen backlog, a crash) or is ejected gets less than its share: see its log and `drove status`",
            seen.join("; ")
        ))
    }

    fn to_json(&self) -> serde_json::Value {
        json!({
            "connect_errors": self.connect_errors, "timeouts": self.timeouts, "retries": self.retries,
            "backends": self.per_backend.iter().map(|(id, f, e)| json!({"id": id, "failures": f, "ejections": e})).collect::<Vec<_>>(),
            "left_rotation": self.left,
        })
    }
}

/// Sort key that puts web.2 before web.10.
pub(crate) fn natural(id: &str) -> (String, u64, String) {
    let digits = id.len() - id.trim_end_matches(|c: char| c.is_ascii_digit()).len();
    let (head, num) = id.split_at(id.len() - digits);
    (head.to_string(), num.parse().unwrap_or(0), id.to_string())
}

pub(crate) async fn run(ctx: &mut Ctx<'_>) -> Result<Outcome, String> {
    let before = ctx.admin.status().await?;
    let mut expected: Vec<(String, u64, bool)> = before
        .serving()
        .iter()
        .map(|b| (b.id.clone(), b.weight, b.backup))
        .collect();
    expected.sort_by_key(|a| natural(&a.0));
    if expected.len() < 2 {
        return Ok(Outcome::skip(format!(
            "{} backend(s) in rotation: nothing to distribute",
            expected.len()
        )));
    }
    let conns = ctx.opts.connections;
    let spec = ctx.closed_load(conns)?;
    let report = load::plain(&spec, Stop::Duration(ctx.opts.duration)).await?;
    let after = ctx.admin.status().await?;
    let (all, source) = counts(&before, &after, &report.per_instance);
    let got: Vec<(String, u64, u64, bool)> = expected
        .iter()
        .map(|(id, w, backup)| (id.clone(), all.get(id).copied().unwrap_or(0), *w, *backup))
        .collect();
    let total: u64 = got.iter().map(|g| g.1).sum();
    let weight_sum: u64 = got.iter().map(|g| g.2).sum();
    let errors = report.errors.total();
    let used = got.iter().filter(|g| g.1 > 0).count();
    let algo = before.algorithm.clone();
    let shares = got
        .iter()
        .map(|(id, n, _, _)| {
            let pct = if total > 0 {
                *n as f64 * 100.0 / total as f64
            } else {
                0.0
            };
            format!("{id} {pct:.1}%")
        })
        .collect::<Vec<_>>()
        .join(", ");
    let starved: Vec<String> = got
        .iter()
        .filter(|g| g.1 == 0)
        .map(|(id, _, _, backup)| {
            if *backup {
                format!("{id} (backup)")
            } else {
                id.clone()
            }
        })
        .collect();

    let (ok, verdict, extra) = match algo.as_str() {
        "ip_hash" | "hash" => {
            let ok = used == 1;
            let v = format!("{algo} promises one backend per key, got {used}");
            (ok, v, json!({ "backends_used": used }))
        }
        "least_conn" | "random_two" | "p2c_ewma" => {
            let max = got.iter().map(|g| g.1).max().unwrap_or(0) as f64;
            let min = got.iter().map(|g| g.1).min().unwrap_or(0) as f64;
            let ratio = if min > 0.0 { max / min } else { f64::INFINITY };
            let ok = used == got.len() && ratio <= MAX_SPREAD;
            let ratio_text = if ratio.is_finite() {
                format!("{ratio:.2}")
            } else {
                "∞".into()
            };
            (
                ok,
                format!("{algo}: max/min {ratio_text} (≤ {MAX_SPREAD})"),
                json!({ "max_min_ratio": if ratio.is_finite() { json!(ratio) } else { json!(null) }, "max_spread": MAX_SPREAD }),
            )
        }
        _ => {
            // round_robin (and anything unknown): weighted shares.
            let mut stat = 0.0;
            let mut worst = f64::INFINITY;
            for (_, n, w, _) in &got {
                let e = total as f64 * *w as f64 / weight_sum as f64;
                if e > 0.0 {
                    stat += (*n as f64 - e).powi(2) / e;
                    worst = worst.min(*n as f64 / e);
                }
            }
            let dof = (got.len() - 1) as u32;
            let p = if total > 0 {
                drove_bench::chi_square_sf(stat, dof)
            } else {
                0.0
            };
            let ok = total > 0 && p >= ctx.opts.p_min && worst >= MIN_SHARE_OF_EXPECTED;
            (
                ok,
                format!("{algo}: χ² p={p:.3} (≥ {})", ctx.opts.p_min),
                json!({ "chi_square": stat, "dof": dof, "p_value": p, "p_min": ctx.opts.p_min,
                        "min_share_of_expected": if worst.is_finite() { json!(worst) } else { json!(null) } }),
            )
        }
    };
    let ok = ok && errors == 0 && total > 0;
    let trouble = Trouble::between(&before, &after);
    let hashing = matches!(algo.as_str(), "ip_hash" | "hash");
    let mut summary = if hashing {
        let to: Vec<&str> = got
            .iter()
            .filter(|g| g.1 > 0)
            .map(|g| g.0.as_str())
            .collect();
        format!(
            "all {} requests of one client (key) over {conns} connections went to {}; {verdict}",
            count(total),
            to.join(", ")
        )
    } else if starved.is_empty() {
        format!(
            "{}/{} backends served {} requests over {conns} connections: {shares}; {verdict}",
            used,
            got.len(),
            count(total)
        )
    } else {
        format!(
            "{}/{} backends got traffic ({} requests over {conns} connections): {} got none; {shares}; {verdict}",
            used,
            got.len(),
            count(total),
            starved.join(", ")
        )
    };
    if errors > 0 {
        summary.push_str(&format!("; {} failed", count(errors)));
    }
    if !ok {
        if let Some(cause) = trouble.explain() {
            summary.push_str(&format!("; {cause}"));
        }
    }
    Ok(Outcome::verdict(
        ok,
        summary,
        json!({
            "algorithm": algo, "source": source, "connections": conns,
            "requests": report.requests, "failed": errors, "total_counted": total,
            "per_backend": got.iter().map(|(id, n, w, b)| (id.clone(), json!({"requests": n, "weight": w, "backup": b}))).collect::<serde_json::Map<_, _>>(),
            "starved": starved, "test": extra, "during_run": trouble.to_json(),
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::{natural, Trouble};
    use crate::admin::{Backend, Status};

    fn st(connect_errors: u64, web2: (u64, u64, bool)) -> Status {
        let b = |id: &str, failures, ejections, healthy| Backend {
            id: id.into(),
            enabled: true,
            healthy,
            requests: 0,
            failures,
            ejections,
            weight: 1,
            backup: false,
        };
        Status {
            has_balancer: true,
            tls: false,
            listen: None,
            algorithm: "round_robin".into(),
            service: None,
            requests: 0,
            responses: 0,
            retries: connect_errors,
            connect_errors,
            timeouts: 0,
            settings: None,
            backends: vec![b("web.1", 0, 0, true), b("web.2", web2.0, web2.1, web2.2)],
            instances: Vec::new(),
        }
    }

    #[test]
    fn trouble_names_connects_tries_and_ejections() {
        let quiet = Trouble::between(&st(0, (0, 0, true)), &st(0, (0, 0, true)));
        assert_eq!(quiet.explain(), None);
        let t = Trouble::between(&st(1, (1, 0, true)), &st(38, (38, 1, false)));
        let why = t.explain().unwrap();
        assert!(
            why.starts_with("not the algorithm: during the run drove saw 37 failed connects; 37 retried elsewhere; tries: web.2 37 failed, ejected 1×; out of rotation by the end: web.2."),
            "{why}"
        );
    }

    #[test]
    fn natural_order() {
        let mut ids = vec!["web.10", "web.2", "web.1", "api.3"];
        ids.sort_by_key(|i| natural(i));
        assert_eq!(ids, ["api.3", "web.1", "web.2", "web.10"]);
    }
}
