//! The drills, one module per family, and what they share: the context (admin API,
//! balancer address, detected instance header and sticky cookie), waiting for the fleet
//! to settle, and building loads.

mod chaos;
mod distribution;
mod health;
mod limits;
mod metrics;
mod rollout;
mod sessions;
mod sticky;

use std::net::SocketAddr;
use std::time::Duration;

use drove_bench::Model;
use serde_json::{json, Value};
use tokio::time::{sleep, Instant};

use crate::admin::{Admin, Status};
use crate::client::{self, Response};
use crate::load::LoadSpec;
use crate::{Drill, VerifyOptions};

/// Timeout of a single request of a drill's own clients.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How often status is polled while timing an ejection or a recovery: the timings are
/// precise to about this much.
pub(crate) const POLL: Duration = Duration::from_millis(20);
/// Cookies the demo app sets for itself: never mistaken for the balancer's sticky cookie.
const APP_COOKIES: &[&str] = &["demo_session"];

/// What a drill found, before it is stamped with its name and time.
pub(crate) struct Outcome {
    pub passed: Option<bool>,
    pub summary: String,
    pub numbers: Value,
}

impl Outcome {
    pub fn verdict(passed: bool, summary: String, numbers: Value) -> Outcome {
        Outcome {
            passed: Some(passed),
            summary,
            numbers,
        }
    }

    pub fn skip(why: impl Into<String>) -> Outcome {
        let why = why.into();
        Outcome {
            passed: None,
            summary: format!("skipped: {why}"),
            numbers: json!({ "skipped": why }),
        }
    }

    fn error(why: String) -> Outcome {
        Outcome {
            passed: Some(false),
            summary: format!("error: {why}"),
            numbers: json!({ "error": why }),
        }
    }
}

/// Everything the drills share.
pub(crate) struct Ctx<'a> {
    pub admin: Admin,
    pub balancer: Option<SocketAddr>,
    pub opts: &'a VerifyOptions,
    /// The response header that names the instance, if responses carry one.
    pub instance_header: Option<String>,
    /// The balancer's sticky cookie, if configured or seen.
    pub sticky_cookie: Option<String>,
}

impl<'a> Ctx<'a> {
    pub fn new(admin: Admin, balancer: Option<SocketAddr>, opts: &'a VerifyOptions) -> Ctx<'a> {
        Ctx {
            admin,
            balancer,
            opts,
            instance_header: opts.instance_header.clone(),
            sticky_cookie: opts.sticky_cookie.clone(),
        }
    }

    /// Waits until every instance is ready and every backend enabled and healthy (or the
    /// settle timeout); returns the last status and whether it settled.
    pub async fn wait_settled(&self) -> Result<(Status, bool), String> {
        let end = Instant::now() + self.opts.settle_timeout;
        loop {
            let st = self.admin.status().await?;
            if st.settled() {
                return Ok((st, true));
            }
            if Instant::now() >= end {
                return Ok((st, false));
            }
            sleep(Duration::from_millis(50)).await;
        }
    }

    /// Looks at a first response through the balancer: which header names the instance,
    /// which cookie is the sticky one.
    pub async fn detect(&mut self) {
        let Ok(r) = self.get(&self.opts.path.clone(), &[]).await else {
            return;
        };
        if self.instance_header.is_none() {
            self.instance_header = ["X-Drove-Instance", "X-Demo-Instance"]
                .into_iter()
                .find(|h| r.header(h).is_some())
                .map(str::to_string);
        }
        if self.sticky_cookie.is_none() {
            // drove's sticky cookie carries a backend token of 16 hex digits; an app's own
            // cookies (session ids, CSRF tokens) are not taken for it.
            self.sticky_cookie = r
                .set_cookies()
                .into_iter()
                .find(|(k, v)| {
                    !APP_COOKIES.contains(&k.as_str())
                        && v.len() == 16
                        && v.bytes().all(|b| b.is_ascii_hexdigit())
                })
                .map(|(k, _)| k);
        }
    }

    pub fn balancer(&self) -> Result<SocketAddr, String> {
        self.balancer
            .ok_or_else(|| "the balancer's address is unknown (status has no `listen`)".to_string())
    }

    /// One GET through the balancer on a new connection.
    pub async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Result<Response, String> {
        client::request(self.balancer()?, "GET", path, headers, b"", REQUEST_TIMEOUT)
            .await
            .map_err(|e| e.to_string())
    }

    /// The instance a response names.
    pub fn instance_of(&self, r: &Response) -> Option<String> {
        self.instance_header
            .as_deref()
            .and_then(|h| r.header(h))
            .map(str::to_string)
    }

    /// The open-model load the disruptive drills run under.
    pub fn open_load(&self) -> Result<LoadSpec, String> {
        Ok(LoadSpec {
            balancer: self.balancer()?,
            path: self.opts.path.clone(),
            model: Model::Open {
                rate: self.opts.rate,
            },
            // The open model needs enough connections for rate × latency, with room for
            // requests held by a frozen instance.
            connections: self.opts.connections.max(64),
            min: self.opts.duration,
            instance_header: self.instance_header.clone(),
            timeout: Duration::from_secs(30),
            headers: Vec::new(),
        })
    }

    /// The closed-model load of the counting drills.
    pub fn closed_load(&self, connections: usize) -> Result<LoadSpec, String> {
        Ok(LoadSpec {
            balancer: self.balancer()?,
            path: self.opts.path.clone(),
            model: Model::Closed,
            connections,
            min: self.opts.duration,
            instance_header: self.instance_header.clone(),
            timeout: Duration::from_secs(10),
            headers: Vec::new(),
        })
    }

    /// "300 req/s" for summaries.
    pub fn rate_text(&self) -> String {
        let r = self.opts.rate;
        if r.fract() == 0.0 {
            format!("{r:.0} req/s")
        } else {
            format!("{r} req/s")
        }
    }
}

/// Runs one drill: first waits for the fleet to settle (a previous drill may have left an
/// instance restarting), then the drill.
pub(crate) async fn run(drill: Drill, ctx: &mut Ctx<'_>) -> Outcome {
    let result = async {
        if drill != Drill::Health {
            let st = ctx.admin.status().await?;
            if !st.has_balancer {
                return Ok(Outcome::skip("this drove has no [balancer]"));
            }
            ctx.wait_settled().await?;
        }
        match drill {
            Drill::Health => health::run(ctx).await,
            Drill::Distribution => distribution::run(ctx).await,
            Drill::Metrics => metrics::run(ctx).await,
            Drill::Stickiness => sticky::run(ctx).await,
            Drill::Sessions => sessions::run(ctx).await,
            Drill::Limits => limits::run(ctx).await,
            Drill::Failover => chaos::failover(ctx).await,
            Drill::Freeze => chaos::freeze(ctx).await,
            Drill::Restart => rollout::restart(ctx).await,
            Drill::Scale => rollout::scale(ctx).await,
        }
    }
    .await;
    result.unwrap_or_else(Outcome::error)
}

/// The skip reason of drills that need drove's own supervisor.
pub(crate) fn needs_supervisor(st: &Status) -> Option<Outcome> {
    if st.supervised() {
        None
    } else {
        Some(Outcome::skip(
            "instances are remote (static backends): nothing to kill, freeze, restart or scale",
        ))
    }
}

/// `0 failed of 2,412` plus, when some failed, what they were: ` (502 ×11, reset ×2)`.
pub(crate) fn failed_of(r: &drove_bench::Report) -> String {
    let failed = r.errors.total();
    let mut s = format!(
        "{} failed of {}",
        crate::count(failed),
        crate::count(r.requests)
    );
    if failed > 0 {
        let mut kinds: Vec<String> = r
            .status_counts
            .iter()
            .filter(|(code, _)| **code >= 400)
            .map(|(code, n)| format!("{code} ×{n}"))
            .collect();
        let e = &r.errors;
        for (name, n) in [
            ("connect", e.connect),
            ("timeout", e.timeout),
            ("reset", e.reset),
            ("other", e.other),
        ] {
            if n > 0 {
                kinds.push(format!("{name} ×{n}"));
            }
        }
        s.push_str(&format!(" ({})", kinds.join(", ")));
    }
    s
}
