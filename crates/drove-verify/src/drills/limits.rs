//! limits: for the first rate-limited route, an open-model run at three times the limit's
//! rate with one key throughout. A GCRA limit with rate r and burst b lets
//! `b + r × elapsed` requests through and answers 429 to the rest; the count that got
//! through must match that within [`TOLERANCE`] (or [`SLACK`] requests, whichever is
//! larger), and no 5xx or transport error may come back (any other status was let
//! through by the limit: the app's answer to the path is its own business).

use std::time::Duration;

use drove_bench::{Model, Stop};
use serde_json::json;

use super::{Ctx, Outcome};
use crate::{count, load, LimitKey};

/// Relative tolerance on the number of requests let through.
const TOLERANCE: f64 = 0.10;
/// Absolute slack: timer granularity at both ends and the request in flight at the end.
const SLACK: f64 = 3.0;
/// The drill sends this many times the limit's rate.
const OVERLOAD: f64 = 3.0;
/// The key value the drill sends (header or cookie keys).
const KEY_VALUE: &str = "drove-verify";

pub(crate) async fn run(ctx: &mut Ctx<'_>) -> Result<Outcome, String> {
    let Some(rule) = ctx.opts.limits.first().cloned() else {
        let why = if ctx.opts.config_read {
            "no [limits] configured"
        } else {
            "no [limits] configured (none known: no config file was read; -c FILE)"
        };
        return Ok(Outcome::skip(why));
    };
    let rate = rule.rate_per_sec * OVERLOAD;
    let mut spec = ctx.open_load()?;
    spec.path = rule.path.clone();
    spec.model = Model::Open { rate };
    spec.connections = ((rate * 0.1).ceil() as usize).clamp(8, 256);
    spec.headers = match &rule.key {
        LimitKey::ClientIp => Vec::new(),
        LimitKey::Header(h) => vec![(h.clone(), KEY_VALUE.into())],
        LimitKey::Cookie(c) => vec![("Cookie".into(), format!("{c}={KEY_VALUE}"))],
    };
    let report = load::plain(
        &spec,
        Stop::Duration(ctx.opts.duration.max(Duration::from_secs(2))),
    )
    .await?;
    let elapsed = report.duration.as_secs_f64();
    let limited = report.status_counts.get(&429).copied().unwrap_or(0);
    // Let through = whatever the app answered (a route prefix may well answer 404 to the
    // drill's path); errors = transport failures and 5xx.
    let passed_through: u64 = report
        .status_counts
        .iter()
        .filter(|(code, _)| **code != 429 && **code < 500)
        .map(|(_, n)| *n)
        .sum();
    let server_errors: u64 = report
        .status_counts
        .iter()
        .filter(|(code, _)| **code >= 500)
        .map(|(_, n)| *n)
        .sum();
    let other_errors = report.errors.total() - report.errors.status + server_errors;
    let expected = (rule.burst as f64 + rule.rate_per_sec * elapsed).min(report.requests as f64);
    let allowed_diff = (expected * TOLERANCE).max(SLACK);
    let diff = passed_through as f64 - expected;
    let ok = diff.abs() <= allowed_diff && other_errors == 0 && report.requests > 0;
    let summary = format!(
        "route {} (limit {}: {}/s, burst {}) at {:.0} req/s for {:.1}s: {} let through, {} got 429; expected {:.0} ± {:.0} through{}",
        rule.path,
        rule.name,
        rule.rate_per_sec,
        rule.burst,
        rate,
        elapsed,
        count(passed_through),
        count(limited),
        expected,
        allowed_diff,
        if other_errors > 0 { format!("; {} other errors", count(other_errors)) } else { String::new() }
    );
    Ok(Outcome::verdict(
        ok,
        summary,
        json!({
            "route": rule.path, "limit": rule.name, "rate_per_s": rule.rate_per_sec, "burst": rule.burst,
            "sent_rate": rate, "elapsed_s": elapsed, "requests": report.requests,
            "through": passed_through, "limited_429": limited, "other_errors": other_errors,
            "expected_through": expected, "tolerance": allowed_diff,
        }),
    ))
}
