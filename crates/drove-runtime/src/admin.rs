//! The admin listener: a JSON API over the running parts (the `drove status|scale|
//! restart|drain|undrain|down` commands are thin clients of it), Prometheus metrics at
//! `/metrics` ([`metrics`]), Prometheus service discovery at `/api/sd` ([`sd`]) and the
//! live dashboard at `/` (one HTML page compiled into the binary, polling
//! `/api/dashboard`, which the [`history`] sampler feeds).
//! Loopback by default; when `admin.token` is set, every `/api/` request and `/metrics`
//! need `Authorization: Bearer TOKEN` (the page itself holds no data and is open).
//! Errors are JSON: `{"error": "..."}` with a 4xx/5xx status.

pub mod history;
pub mod metrics;
pub mod sd;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use drove_api as api;
use drove_supervisor::{InstanceId, InstanceState, InstanceStatus};
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::sync::watch;

use crate::Running;

use self::history::History;
use self::metrics::Metrics;

/// What the admin handlers share: the running parts, the traffic history, the metrics.
#[derive(Clone)]
pub struct AdminState {
    running: Arc<Running>,
    history: Arc<History>,
    metrics: Arc<Metrics>,
}

impl AdminState {
    /// Builds the metrics registry over `running`, with an empty history.
    pub fn new(running: Arc<Running>) -> AdminState {
        AdminState {
            metrics: Arc::new(Metrics::new(&running)),
            history: History::new(),
            running,
        }
    }

    /// The traffic history (the dashboard's charts), carried across `drove upgrade`.
    pub fn history(&self) -> &Arc<History> {
        &self.history
    }
}

type Shared = AdminState;

/// The dashboard page: plain HTML, CSS and JavaScript, no build step, nothing fetched
/// from elsewhere.
const DASHBOARD_HTML: &str = include_str!("admin/dashboard.html");

/// A JSON error response.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(api::ApiError { error: self.1 })).into_response()
    }
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, msg.into())
}

/// Starts the history sampler (once per drove: it outlives an admin listener moved by a
/// reload).
pub fn start_sampler(
    state: &AdminState,
    shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let r = &state.running;
    tokio::spawn(history::run(
        state.history.clone(),
        r.balancer.clone(),
        r.proxy.as_ref().map(|p| p.stats().clone()),
        shutdown,
    ))
}

/// The admin API served on one listener, until drove shuts down or a reload moves it.
pub struct AdminServer {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    /// The listening socket's descriptor (valid while the server runs; an upgrade keeps
    /// it open across `execve`).
    fd: i32,
}

impl AdminServer {
    /// Serves `state` on `listener` until `shutdown` (drove's) or [`AdminServer::retire`].
    pub fn start(
        listener: tokio::net::TcpListener,
        state: AdminState,
        mut shutdown: watch::Receiver<bool>,
    ) -> AdminServer {
        let fd = std::os::fd::AsRawFd::as_raw_fd(&listener);
        let (stop, mut stopped) = watch::channel(false);
        let app = router(state);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    tokio::select! {
                        _ = shutdown.wait_for(|v| *v) => {}
                        _ = stopped.wait_for(|v| *v) => {}
                    }
                })
                .await;
        });
        AdminServer { stop, task, fd }
    }

    /// The listening socket's descriptor.
    pub fn raw_fd(&self) -> i32 {
        self.fd
    }

    /// Stops accepting, finishes the requests in progress (the one that asked for the
    /// move included), and resolves when the listener is closed.
    pub async fn retire(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// The admin routes.
pub fn router(state: AdminState) -> Router {
    let api = Router::new()
        .route("/api/status", get(status))
        .route("/api/dashboard", get(dashboard_json))
        .route("/metrics", get(metrics_text))
        .route("/api/sd", get(sd::targets))
        .route("/api/scale", post(scale))
        .route("/api/restart", post(restart))
        .route("/api/drain", post(drain))
        .route("/api/undrain", post(undrain))
        .route("/api/down", post(down))
        .route("/api/reload", post(reload))
        .route("/api/upgrade", post(upgrade))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), auth));
    Router::new()
        .route(
            "/health",
            get(|| async {
                Json(api::Health {
                    status: "ok".into(),
                })
            }),
        )
        .route("/", get(dashboard_page))
        .merge(api)
        .fallback(|| async {
            ApiError(
                StatusCode::NOT_FOUND,
                "no such endpoint; see docs/admin-api.md".into(),
            )
        })
        .with_state(state)
}

async fn auth(State(s): State<Shared>, req: Request, next: Next) -> Response {
    if let Some(token) = &s.running.config.load().admin.token {
        let ok = req
            .headers()
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|t| constant_time_eq(t.as_bytes(), token.as_bytes()));
        if !ok {
            return ApiError(
                StatusCode::UNAUTHORIZED,
                "missing or wrong bearer token".into(),
            )
            .into_response();
        }
    }
    next.run(req).await
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Unix milliseconds of a wall-clock time.
fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn api_state(s: InstanceState) -> api::InstanceState {
    match s {
        InstanceState::Starting => api::InstanceState::Starting,
        InstanceState::Ready => api::InstanceState::Ready,
        InstanceState::Draining => api::InstanceState::Draining,
        InstanceState::Drained => api::InstanceState::Drained,
        InstanceState::Stopping => api::InstanceState::Stopping,
        InstanceState::Stopped => api::InstanceState::Stopped,
        InstanceState::Backoff => api::InstanceState::Backoff,
        InstanceState::Crashloop => api::InstanceState::Crashloop,
        InstanceState::Exited => api::InstanceState::Exited,
    }
}

/// A supervised instance as a status row (balancer and traffic columns filled later).
fn instance_row(s: &InstanceStatus) -> api::InstanceRow {
    let mut row = api::InstanceRow::new(
        s.id.to_string(),
        Some(s.id.service.clone()),
        api_state(s.state),
    );
    row.pid = s.pid;
    row.port = s.port;
    row.restarts = Some(s.restarts);
    row.rss_bytes = s.rss_bytes;
    row.cpu_seconds = s.cpu_seconds;
    row.uptime = s.uptime.map(|d| d.as_secs_f64());
    row.last_exit = s.last_exit.map(|e| api::LastExit {
        code: e.code,
        signal: e.signal,
        text: e.to_string(),
        at_ms: s.last_exit_at.map(unix_ms).unwrap_or(0),
    });
    row.backoff = s.backoff.map(|d| d.as_secs_f64());
    row.retry_at_ms = s.retry_at.map(unix_ms);
    row.why = s.why.clone().map(|why| match s.retry_at {
        Some(at) => {
            let left = at
                .duration_since(SystemTime::now())
                .unwrap_or_default()
                .as_secs_f64();
            format!("{why}; next try in {left:.1}s")
        }
        None => why,
    });
    row.last_probe_error = s.last_probe_error.clone();
    row
}

fn backend_row(b: &drove_balancer::Backend) -> api::BackendRow {
    api::BackendRow {
        id: b.id().to_string(),
        addr: b.addr(),
        enabled: b.is_enabled(),
        healthy: b.is_healthy_now(),
        probe_up: b.probe_up(),
        in_flight: b.in_flight(),
        requests: b.requests(),
        failures: b.failures(),
        ejections: b.ejections(),
        weight: b.weight(),
        backup: b.is_backup(),
    }
}

/// The settings of `[balancer]` that decide how fast a failing backend leaves rotation.
fn balancer_settings(b: &drove_config::BalancerConfig) -> api::BalancerSettings {
    api::BalancerSettings {
        health: b.health.as_ref().map(|p| api::ProbeSettings {
            check: match &p.kind {
                drove_config::ProbeKind::Http { path } => format!("http {path}"),
                drove_config::ProbeKind::Tcp { .. } => "tcp".into(),
                drove_config::ProbeKind::Command { cmd } => format!("command {cmd}"),
            },
            interval_s: p.interval.as_secs_f64(),
            timeout_s: p.timeout.as_secs_f64(),
            rise: p.rise,
            fall: p.fall,
        }),
        retry_attempts: b.retries.attempts,
        per_try_timeout_s: b.retries.per_try_timeout.map(|d| d.as_secs_f64()),
        response_timeout_s: b.timeouts.response.as_secs_f64(),
        connect_timeout_s: b.timeouts.connect.as_secs_f64(),
        passive_max_fails: b.passive.max_fails,
        passive_fail_timeout_s: b.passive.fail_timeout.as_secs_f64(),
        max_ejected: b.max_ejected,
    }
}

/// The full status document (also used by `drove status`): instances also get `rps`,
/// `p50_ms`, `p99_ms` (over the history's last window) and `share` (of the last minute).
pub async fn status_doc(state: &AdminState) -> api::Status {
    let r = &*state.running;
    let rates = state.history.current();
    let share = state.history.share();
    let instances = r.supervisor.status().await;
    let backends = r
        .balancer
        .as_ref()
        .map(|b| b.snapshot())
        .unwrap_or_default();
    let traffic = |row: &mut api::InstanceRow| {
        let rate = rates.get(&row.id);
        row.rps = rate.map(|r| round2(r.rps));
        row.p50_ms = rate.and_then(|r| r.p50_ms).map(round2);
        row.p99_ms = rate.and_then(|r| r.p99_ms).map(round2);
        row.share = share.get(&row.id).map(|s| round2(*s * 100.0) / 100.0);
    };
    let mut rows: Vec<api::InstanceRow> = instances
        .iter()
        .map(|s| {
            let mut row = instance_row(s);
            if let Some(b) = backends.iter().find(|b| b.id() == row.id) {
                row.in_rotation = Some(b.is_enabled());
                row.healthy = Some(b.probe_up() && b.is_healthy_now());
                row.in_flight = Some(b.in_flight());
                row.requests = Some(b.requests());
                row.failures = Some(b.failures());
            }
            traffic(&mut row);
            row
        })
        .collect();
    // Static backends are not supervised: list them too.
    if r.balanced_service().is_none() {
        for b in &backends {
            let mut row = api::InstanceRow::new(b.id(), None, api::InstanceState::Remote);
            row.addr = Some(b.addr());
            row.in_rotation = Some(b.is_enabled());
            row.healthy = Some(b.is_healthy_now());
            row.in_flight = Some(b.in_flight());
            row.requests = Some(b.requests());
            row.failures = Some(b.failures());
            row.weight = Some(b.weight());
            row.backup = Some(b.is_backup());
            traffic(&mut row);
            rows.push(row);
        }
    }
    let config = r.config.load();
    let conf = config.balancer.as_ref();
    let balancer = r.proxy.as_ref().zip(conf).map(|(p, conf)| {
        let s = p.stats();
        let l = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        let totals = state.history.current_totals();
        api::BalancerStatus {
            listen: r.listen(),
            tls: conf.tls.is_some(),
            rps: totals.map(|t| round2(t.0)),
            errors_per_s: totals.map(|t| round2(t.1)),
            algorithm: p.balancer().settings().algorithm.as_str().to_string(),
            service: r.balanced_service(),
            requests: l(&s.requests),
            responses: api::Responses {
                c1xx: l(&s.responses[0]),
                c2xx: l(&s.responses[1]),
                c3xx: l(&s.responses[2]),
                c4xx: l(&s.responses[3]),
                c5xx: l(&s.responses[4]),
            },
            retries: l(&s.retries),
            retry_budget_exhausted: l(&s.retry_budget_exhausted),
            connect_errors: l(&s.connect_errors),
            timeouts: l(&s.timeouts),
            no_backend: l(&s.no_backend),
            rejected: l(&s.rejected),
            rate_limited: l(&s.rate_limited),
            active_connections: s
                .active_connections
                .load(std::sync::atomic::Ordering::Relaxed),
            active_tunnels: s.active_tunnels.load(std::sync::atomic::Ordering::Relaxed),
            settings: balancer_settings(conf),
            backends: backends.iter().map(|b| backend_row(b)).collect(),
        }
    });
    api::Status {
        version: env!("CARGO_PKG_VERSION").to_string(),
        pid: std::process::id(),
        uptime_s: r.started.elapsed().as_secs_f64(),
        admin: r.admin(),
        balancer,
        services: r.supervisor.services(),
        instances: rows,
        upgrades: r.upgrades.lock().map(|u| u.clone()).unwrap_or_default(),
    }
}

async fn status(State(s): State<Shared>) -> Json<api::Status> {
    Json(status_doc(&s).await)
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

async fn dashboard_page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        DASHBOARD_HTML,
    )
        .into_response()
}

#[derive(serde::Deserialize)]
struct DashboardQuery {
    /// Chart points wanted (seconds of history), at most the history's length.
    points: Option<usize>,
}

/// The dashboard's one poll: the status document plus `max_memory` per service and the
/// chart series of the last `points` seconds.
async fn dashboard_json(
    State(s): State<Shared>,
    Query(q): Query<DashboardQuery>,
) -> Json<api::Dashboard> {
    let status = status_doc(&s).await;
    // The config in force (what a reload applied), with the instance count the
    // supervisor holds now (a `drove scale` changes it without a config edit).
    let config = s.running.config.load();
    let service_config = config
        .services
        .iter()
        .map(|c| {
            let instances = s
                .running
                .supervisor
                .desired_instances(&c.name)
                .unwrap_or(c.instances);
            (
                c.name.clone(),
                api::ServiceConfigRow {
                    instances,
                    max_memory: c.max_memory,
                },
            )
        })
        .collect();
    Json(api::Dashboard {
        status,
        service_config,
        token_required: config.admin.token.is_some(),
        history: s
            .history
            .series(q.points.unwrap_or(history::KEEP).min(history::KEEP)),
    })
}

async fn metrics_text(State(s): State<Shared>, headers: HeaderMap) -> Response {
    let open =
        metrics::wants_openmetrics(headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()));
    let body = s.metrics.render(open).await;
    let ct = if open {
        metrics::OPENMETRICS_CONTENT_TYPE
    } else {
        metrics::CLASSIC_CONTENT_TYPE
    };
    ([(header::CONTENT_TYPE, ct)], body).into_response()
}

/// A JSON body as the request type; a missing or mistyped field is a 400 naming it.
fn body<T: DeserializeOwned>(v: Value) -> Result<T, ApiError> {
    serde_json::from_value(v).map_err(|e| bad(e.to_string()))
}

fn refused(e: impl ToString) -> ApiError {
    ApiError(StatusCode::UNPROCESSABLE_ENTITY, e.to_string())
}

async fn scale(
    State(s): State<Shared>,
    Json(v): Json<Value>,
) -> Result<Json<api::ScaleAnswer>, ApiError> {
    let req: api::ScaleRequest = body(v)?;
    if req.instances > 1000 {
        return Err(bad("`instances` must be a number 0..=1000"));
    }
    s.running
        .supervisor
        .scale(&req.service, req.instances)
        .await
        .map_err(refused)?;
    Ok(Json(req))
}

async fn restart(
    State(s): State<Shared>,
    Json(v): Json<Value>,
) -> Result<Json<api::RestartAnswer>, ApiError> {
    let r = &s.running;
    // `{"service": "web"}` restarts every instance; `{"instance": "web.2"}` one.
    let report = match body::<api::RestartRequest>(v)? {
        api::RestartRequest {
            instance: Some(instance),
            ..
        } => {
            let id: InstanceId = instance.parse().map_err(bad)?;
            r.supervisor.restart_instance(&id).await
        }
        api::RestartRequest {
            service: Some(service),
            ..
        } => r.supervisor.restart(&service).await,
        _ => return Err(bad("missing field `service` (or `instance`)")),
    }
    .map_err(refused)?;
    Ok(Json(api::RestartAnswer {
        service: report.service,
        surge: report.surge.map(|id| id.to_string()),
        replaced: report
            .replaced
            .into_iter()
            .map(|r| api::Replaced {
                instance: r.instance.to_string(),
                old_pid: r.old_pid,
                new_pid: r.new_pid,
            })
            .collect(),
        elapsed: report.elapsed.as_secs_f64(),
    }))
}

async fn drain_or_undrain(
    r: &Running,
    req: api::DrainRequest,
    drain: bool,
) -> Result<Json<api::DrainAnswer>, ApiError> {
    let name = req.instance;
    let answer = |instance: String| {
        Json(api::DrainAnswer {
            instance,
            in_rotation: !drain,
        })
    };
    // A static backend (not supervised) is taken out of rotation directly.
    if r.balanced_service().is_none() {
        if let Some(b) = &r.balancer {
            if b.set_enabled(&name, !drain) {
                if drain {
                    b.wait_idle(&name, std::time::Duration::from_secs(30)).await;
                }
                return Ok(answer(name));
            }
        }
    }
    let id: InstanceId = name.parse().map_err(bad)?;
    let res = if drain {
        r.supervisor.drain(&id).await
    } else {
        r.supervisor.undrain(&id).await
    };
    res.map_err(refused)?;
    if !drain {
        // The Undrained event does the same, asynchronously; doing it here too means the
        // instance is back in rotation when the call returns.
        if let (Some(b), Some(svc)) = (&r.balancer, &r.balanced_service()) {
            if *svc == id.service {
                b.set_enabled(&name, true);
            }
        }
    }
    Ok(answer(name))
}

async fn drain(
    State(s): State<Shared>,
    Json(v): Json<Value>,
) -> Result<Json<api::DrainAnswer>, ApiError> {
    drain_or_undrain(&s.running, body(v)?, true).await
}

async fn undrain(
    State(s): State<Shared>,
    Json(v): Json<Value>,
) -> Result<Json<api::DrainAnswer>, ApiError> {
    drain_or_undrain(&s.running, body(v)?, false).await
}

/// Re-reads the config file and applies it (`crate::reload`): 200 with what was and was
/// not applied, 422 with the errors (nothing changed) when the file is invalid.
async fn reload(State(s): State<Shared>, Query(q): Query<ReloadQuery>) -> Response {
    let dry_run = q.dry_run.unwrap_or(false);
    let Some(report) =
        crate::contain::caught("reload", crate::reload::reload(&s.running, dry_run)).await
    else {
        return ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the reload hit a bug in drove (see its log); what it applied before is in force"
                .into(),
        )
        .into_response();
    };
    let status = if report.ok {
        StatusCode::OK
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    };
    (status, Json(report)).into_response()
}

/// `drove upgrade`: checks the new binary (its refusal is a 422 with the reason), then
/// answers and replaces this drove (see `upgrade.rs`).
async fn upgrade(State(s): State<Shared>, body: Option<Json<api::UpgradeRequest>>) -> Response {
    let binary = body.and_then(|b| b.0.binary).map(std::path::PathBuf::from);
    match crate::upgrade::start(&s.running, binary).await {
        Ok(a) => (StatusCode::ACCEPTED, Json(a)).into_response(),
        Err(why) => ApiError(StatusCode::UNPROCESSABLE_ENTITY, why).into_response(),
    }
}

#[derive(serde::Deserialize)]
struct ReloadQuery {
    /// Only compute and return the plan.
    dry_run: Option<bool>,
}

/// Starts the shutdown and answers at once with what `drove down` waits for: drove's
/// pid and the process groups of the instances running now.
async fn down(State(s): State<Shared>) -> Json<api::DownAnswer> {
    let instance_pids = s
        .running
        .supervisor
        .status()
        .await
        .iter()
        .filter_map(|i| i.pid)
        .collect();
    let _ = s.running.shutdown.send(true);
    Json(api::DownAnswer {
        status: "shutting down".into(),
        pid: std::process::id(),
        instance_pids,
    })
}
