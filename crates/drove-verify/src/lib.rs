//! drove-verify: the drills behind `drove verify`. Each drill drives a running drove
//! through its balancer (load from the `drove-bench` engine, plus a few cookie-jar
//! clients) and its admin API (status, drain, restart, scale), does something to it
//! (SIGKILL or SIGSTOP an instance, a rolling restart, a scale up and down, a drain), and
//! counts what clients saw: failed requests, shares per instance, time to eject, time to
//! serve again. Each ends in one [`DrillResult`]: passed, failed or skipped with a reason,
//! a one-line summary and its numbers as JSON.
//!
//! It owns the drills, their pass criteria, the JUnit/JSON renderings and starting a
//! drove to verify ([`Launched`]); it does not know clap or TOML (the CLI reads the config
//! file and passes what matters in [`VerifyOptions`]), and it talks to drove only over
//! HTTP and signals, as a user would.
//!
//! Main items: [`Target`] + [`VerifyOptions`] → [`run_all`] (or [`run_all_with`], which
//! reports each result as it comes) → `Vec<`[`DrillResult`]`>` → [`junit_xml`],
//! [`results_json`]. [`Drill`] lists the drills in the order they run.
#![warn(missing_docs)]

mod admin;
mod client;
mod drills;
mod junit;
mod launch;
mod load;

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::time::Instant;

pub use junit::junit_xml;
pub use launch::{LaunchError, Launched};

/// The drove to verify.
#[derive(Debug, Clone)]
pub struct Target {
    /// Its admin API.
    pub admin: SocketAddr,
    /// Its balancer; `None` = the `listen` address its status reports.
    pub listen: Option<SocketAddr>,
    /// Bearer token of the admin API.
    pub token: Option<String>,
}

/// One `[limits.NAME]` applied to a route, as the limits drill needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct LimitRule {
    /// The limit's name.
    pub name: String,
    /// The route's path prefix (requests go to exactly this path).
    pub path: String,
    /// Sustained rate, requests per second.
    pub rate_per_sec: f64,
    /// Requests allowed at once above the rate.
    pub burst: u32,
    /// What requests are counted by.
    pub key: LimitKey,
}

/// What a rate limit counts requests by (the drill sends one key throughout).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitKey {
    /// The client IP.
    ClientIp,
    /// A request header.
    Header(String),
    /// A request cookie.
    Cookie(String),
}

/// How the drills run. [`VerifyOptions::default`] has the defaults of `drove verify`.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// Load duration of each drill (a drill whose action takes longer keeps its load on
    /// until the action is over).
    pub duration: Duration,
    /// Open-model rate of the load under failover, freeze, restart, scale, stickiness and
    /// sessions, requests per second.
    pub rate: f64,
    /// Connections of the load (closed model: distribution; cap in the open model).
    pub connections: usize,
    /// Path requested through the balancer.
    pub path: String,
    /// Drills to run (empty = all).
    pub only: Vec<Drill>,
    /// Drills not to run.
    pub skip: Vec<Drill>,
    /// Fail the stickiness drill (instead of skipping it) when no sticky cookie shows up.
    pub expect_sticky: bool,
    /// The sticky cookie's name (from the config file); `None` = detect it from the
    /// `Set-Cookie` of a first response.
    pub sticky_cookie: Option<String>,
    /// The response header naming the instance; `None` = detect (`X-Drove-Instance`,
    /// else the demo's `X-Demo-Instance`), else fall back on drove's own counters.
    pub instance_header: Option<String>,
    /// Rate limits configured on routes (from the config file); empty = the limits drill
    /// is skipped.
    pub limits: Vec<LimitRule>,
    /// Whether `limits` was read from a config file (only changes the skip message).
    pub config_read: bool,
    /// Distribution: the smallest chi-square p-value that passes (round robin/weights).
    pub p_min: f64,
    /// Requests of the metrics drill (a closed run of exactly this many).
    pub metrics_requests: u64,
    /// How long to wait for every instance to be ready and healthy before a drill, and
    /// for an instance to come back after one.
    pub settle_timeout: Duration,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        VerifyOptions {
            duration: Duration::from_secs(3),
            rate: 300.0,
            connections: 32,
            path: "/".into(),
            only: Vec::new(),
            skip: Vec::new(),
            expect_sticky: false,
            sticky_cookie: None,
            instance_header: None,
            limits: Vec::new(),
            config_read: false,
            p_min: 0.001,
            metrics_requests: 2000,
            settle_timeout: Duration::from_secs(30),
        }
    }
}

/// The drills, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Drill {
    /// Balancer and every instance answer their probes.
    Health,
    /// Every ready instance gets the share the algorithm promises.
    Distribution,
    /// drove's counters agree with the client's.
    Metrics,
    /// Cookie clients stay on one instance, and move only when it is drained.
    Stickiness,
    /// A shared session keeps counting across instances.
    Sessions,
    /// 429s match the configured rate and burst.
    Limits,
    /// SIGKILL of an instance under load.
    Failover,
    /// SIGSTOP of an instance under load.
    Freeze,
    /// Rolling restart under load.
    Restart,
    /// Scale up by one and back under load.
    Scale,
}

impl Drill {
    /// Every drill, in run order.
    pub const ALL: [Drill; 10] = [
        Drill::Health,
        Drill::Distribution,
        Drill::Metrics,
        Drill::Stickiness,
        Drill::Sessions,
        Drill::Limits,
        Drill::Failover,
        Drill::Freeze,
        Drill::Restart,
        Drill::Scale,
    ];

    /// Its name on the command line and in outputs.
    pub fn name(self) -> &'static str {
        match self {
            Drill::Health => "health",
            Drill::Distribution => "distribution",
            Drill::Metrics => "metrics",
            Drill::Stickiness => "stickiness",
            Drill::Sessions => "sessions",
            Drill::Limits => "limits",
            Drill::Failover => "failover",
            Drill::Freeze => "freeze",
            Drill::Restart => "restart",
            Drill::Scale => "scale",
        }
    }
}

impl fmt::Display for Drill {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Drill {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim().to_ascii_lowercase();
        let alias = match s.as_str() {
            "sticky" => "stickiness",
            "session" => "sessions",
            "rolling" | "rolling-restart" => "restart",
            "kill" => "failover",
            "limit" | "ratelimit" => "limits",
            other => other,
        };
        Drill::ALL
            .into_iter()
            .find(|d| d.name() == alias)
            .ok_or_else(|| {
                let names: Vec<&str> = Drill::ALL.iter().map(|d| d.name()).collect();
                format!("unknown drill {s:?}; drills: {}", names.join(", "))
            })
    }
}

/// What one drill found.
#[derive(Debug, Clone)]
pub struct DrillResult {
    /// The drill.
    pub drill: Drill,
    /// `Some(true)` passed, `Some(false)` failed, `None` skipped.
    pub passed: Option<bool>,
    /// One line: its numbers (or why it was skipped).
    pub summary: String,
    /// Its numbers, for machines.
    pub numbers: Value,
    /// How long it ran.
    pub elapsed: Duration,
}

/// Width of the name column of the text output.
const NAME_WIDTH: usize = 12;

impl DrillResult {
    /// The drill's name.
    pub fn name(&self) -> &'static str {
        self.drill.name()
    }

    /// `✓`, `✗` or `-` (skipped).
    pub fn mark(&self) -> &'static str {
        match self.passed {
            Some(true) => "✓",
            Some(false) => "✗",
            None => "-",
        }
    }

    /// `"passed"`, `"failed"` or `"skipped"`.
    pub fn status(&self) -> &'static str {
        match self.passed {
            Some(true) => "passed",
            Some(false) => "failed",
            None => "skipped",
        }
    }

    /// The text line: `✓ failover     SIGKILL web.2 under 300 req/s: 0 failed of 2,412; ...`.
    pub fn line(&self) -> String {
        format!(
            "{} {:<NAME_WIDTH$} {}",
            self.mark(),
            self.name(),
            self.summary
        )
    }

    /// Machine-readable form.
    pub fn to_json(&self) -> Value {
        json!({
            "name": self.name(),
            "status": self.status(),
            "passed": self.passed,
            "summary": self.summary,
            "elapsed_s": round3(self.elapsed.as_secs_f64()),
            "numbers": self.numbers,
        })
    }
}

/// The whole run as JSON: `{"passed": bool, "drills": [...], "counts": {...}}`.
pub fn results_json(results: &[DrillResult], target: &Target, elapsed: Duration) -> Value {
    let count = |s: Option<bool>| results.iter().filter(|r| r.passed == s).count();
    json!({
        "passed": count(Some(false)) == 0,
        "admin": target.admin.to_string(),
        "balancer": target.listen.map(|a| a.to_string()),
        "elapsed_s": round3(elapsed.as_secs_f64()),
        "counts": { "passed": count(Some(true)), "failed": count(Some(false)), "skipped": count(None) },
        "drills": results.iter().map(DrillResult::to_json).collect::<Vec<_>>(),
    })
}

/// Why the drills could not run at all.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The admin API did not answer.
    #[error("{0} (is drove running? `drove verify --start -c drove.toml` starts one)")]
    Admin(String),
    /// The drills send plain HTTP; this balancer speaks only TLS.
    #[error("the balancer at {0} terminates TLS (`[balancer] tls`); the drills speak plain HTTP: verify a copy of the config without `tls`")]
    Tls(String),
}

/// Why [`probe`] found no drove.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// Nothing accepts connections there: no drove is running at that address.
    #[error("nothing listens at {0}: {1}")]
    NothingThere(SocketAddr, std::io::Error),
    /// Something answered, but not as a drove admin API that lets us in (wrong token,
    /// another program, ...).
    #[error("{0}")]
    Refused(String),
}

/// Whether a drove's admin API answers `GET /api/status` at `admin`.
pub async fn probe(admin: SocketAddr, token: Option<&str>) -> Result<(), ProbeError> {
    let connect = tokio::net::TcpStream::connect(admin);
    match tokio::time::timeout(Duration::from_secs(2), connect).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return Err(ProbeError::NothingThere(admin, e)),
        Err(_) => {
            let e = std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out");
            return Err(ProbeError::NothingThere(admin, e));
        }
    }
    admin::Admin {
        addr: admin,
        token: token.map(str::to_string),
    }
    .status()
    .await
    .map(|_| ())
    .map_err(ProbeError::Refused)
}

/// Runs the chosen drills in order; see [`run_all_with`].
pub async fn run_all(
    target: &Target,
    opts: &VerifyOptions,
) -> Result<Vec<DrillResult>, VerifyError> {
    run_all_with(target, opts, |_| {}).await
}

/// Runs the chosen drills in order, calling `on_result` as each ends. Fails only when
/// the admin API cannot be reached at the start; everything after that is a drill's
/// result.
pub async fn run_all_with(
    target: &Target,
    opts: &VerifyOptions,
    mut on_result: impl FnMut(&DrillResult),
) -> Result<Vec<DrillResult>, VerifyError> {
    let admin = admin::Admin {
        addr: target.admin,
        token: target.token.clone(),
    };
    let status = admin.status().await.map_err(VerifyError::Admin)?;
    let balancer = target.listen.or(status.listen);
    if status.tls {
        return Err(VerifyError::Tls(
            balancer.map_or_else(|| "?".into(), |a| a.to_string()),
        ));
    }
    let mut ctx = drills::Ctx::new(admin, balancer, opts);
    if status.has_balancer {
        // Let a just-started drove finish starting before the first look.
        ctx.wait_settled().await.map_err(VerifyError::Admin)?;
        ctx.detect().await;
    }
    let mut results = Vec::new();
    for drill in Drill::ALL {
        let chosen =
            (opts.only.is_empty() || opts.only.contains(&drill)) && !opts.skip.contains(&drill);
        if !chosen {
            continue;
        }
        let start = Instant::now();
        let out = drills::run(drill, &mut ctx).await;
        let r = DrillResult {
            drill,
            passed: out.passed,
            summary: out.summary,
            numbers: out.numbers,
            elapsed: start.elapsed(),
        };
        on_result(&r);
        results.push(r);
    }
    Ok(results)
}

pub(crate) fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// `2412` → `"2,412"`.
pub(crate) fn count(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A duration in seconds, two decimals below 10 s, one above: `0.31s`, `12.4s`.
pub(crate) fn secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 10.0 {
        format!("{s:.2}s")
    } else {
        format!("{s:.1}s")
    }
}

/// A latency: `850µs`, `12.3ms`, `1.20s`.
pub(crate) fn latency(d: Duration) -> String {
    let us = d.as_micros();
    if us < 1000 {
        format!("{us}µs")
    } else if us < 1_000_000 {
        format!("{:.1}ms", us as f64 / 1000.0)
    } else {
        secs(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(count(0), "0");
        assert_eq!(count(999), "999");
        assert_eq!(count(2412), "2,412");
        assert_eq!(count(1_234_567), "1,234,567");
        assert_eq!(secs(Duration::from_millis(310)), "0.31s");
        assert_eq!(secs(Duration::from_millis(12_400)), "12.4s");
        assert_eq!(latency(Duration::from_micros(850)), "850µs");
        assert_eq!(latency(Duration::from_micros(12_345)), "12.3ms");
    }

    #[test]
    fn drill_names_round_trip() {
        for d in Drill::ALL {
            assert_eq!(d.name().parse::<Drill>().unwrap(), d);
        }
        assert_eq!("sticky".parse::<Drill>().unwrap(), Drill::Stickiness);
        assert!("nope".parse::<Drill>().unwrap_err().contains("failover"));
    }

    #[test]
    fn line_shape() {
        let r = DrillResult {
            drill: Drill::Failover,
            passed: Some(true),
            summary: "SIGKILL web.2: 0 failed".into(),
            numbers: json!({}),
            elapsed: Duration::ZERO,
        };
        assert_eq!(r.line(), "✓ failover     SIGKILL web.2: 0 failed");
    }
}
