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

use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use drove_supervisor::InstanceId;
use serde_json::{json, Value};
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
}

type Shared = AdminState;

/// The dashboard page: plain HTML, CSS and JavaScript, no build step, nothing fetched
/// from elsewhere.
const DASHBOARD_HTML: &str = include_str!("admin/dashboard.html");

/// A JSON error response.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
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
}

impl AdminServer {
    /// Serves `state` on `listener` until `shutdown` (drove's) or [`AdminServer::retire`].
    pub fn start(
        listener: tokio::net::TcpListener,
        state: AdminState,
        mut shutdown: watch::Receiver<bool>,
    ) -> AdminServer {
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
        AdminServer { stop, task }
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
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), auth));
    Router::new()
        .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
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

/// The full status document (also used by `drove status`): instances also get `rps`,
/// `p50_ms`, `p99_ms` (over the history's last window) and `share` (of the last minute).
pub async fn status_json(state: &AdminState) -> Value {
    let r = &*state.running;
    let rates = state.history.current();
    let share = state.history.share();
    let instances = r.supervisor.status().await;
    let backends = r
        .balancer
        .as_ref()
        .map(|b| b.snapshot())
        .unwrap_or_default();
    let now_backend = |id: &str| backends.iter().find(|b| b.id() == id).cloned();
    let mut rows: Vec<Value> = instances
        .iter()
        .map(|s| {
            let id = s.id.to_string();
            let b = now_backend(&id);
            let mut v = serde_json::to_value(s).unwrap_or(Value::Null);
            if let Value::Object(m) = &mut v {
                m.insert("service".into(), json!(s.id.service));
                m.insert(
                    "in_rotation".into(),
                    json!(b.as_ref().map(|b| b.is_enabled())),
                );
                m.insert(
                    "healthy".into(),
                    json!(b.as_ref().map(|b| b.probe_up() && b.is_healthy_now())),
                );
                m.insert("in_flight".into(), json!(b.as_ref().map(|b| b.in_flight())));
                m.insert("requests".into(), json!(b.as_ref().map(|b| b.requests())));
                m.insert("failures".into(), json!(b.as_ref().map(|b| b.failures())));
            }
            v
        })
        .collect();
    for row in &mut rows {
        let Value::Object(m) = row else { continue };
        let id = m
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let rate = rates.get(&id);
        m.insert("rps".into(), json!(rate.map(|r| round2(r.rps))));
        m.insert(
            "p50_ms".into(),
            json!(rate.and_then(|r| r.p50_ms).map(round2)),
        );
        m.insert(
            "p99_ms".into(),
            json!(rate.and_then(|r| r.p99_ms).map(round2)),
        );
        m.insert(
            "share".into(),
            json!(share.get(&id).map(|s| round2(*s * 100.0) / 100.0)),
        );
    }
    // Static backends are not supervised: list them too.
    if r.balanced_service().is_none() {
        for b in &backends {
            let rate = rates.get(b.id());
            rows.push(json!({
                "id": b.id(), "service": null, "addr": b.addr().to_string(), "state": "remote",
                "in_rotation": b.is_enabled(), "healthy": b.is_healthy_now(),
                "in_flight": b.in_flight(), "requests": b.requests(), "failures": b.failures(),
                "weight": b.weight(), "backup": b.is_backup(),
                "rps": rate.map(|r| round2(r.rps)),
                "p50_ms": rate.and_then(|r| r.p50_ms).map(round2),
                "p99_ms": rate.and_then(|r| r.p99_ms).map(round2),
                "share": share.get(b.id()).map(|s| round2(*s * 100.0) / 100.0),
            }));
        }
    }
    let balancer = r.proxy.as_ref().map(|p| {
        let s = p.stats();
        let l = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        let totals = state.history.current_totals();
        json!({
            "listen": r.listen().map(|a| a.to_string()),
            "tls": r.config.load().balancer.as_ref().is_some_and(|b| b.tls.is_some()),
            "rps": totals.map(|t| round2(t.0)),
            "errors_per_s": totals.map(|t| round2(t.1)),
            "algorithm": p.balancer().settings().algorithm.as_str(),
            "service": r.balanced_service(),
            "requests": l(&s.requests),
            "responses": {
                "1xx": l(&s.responses[0]), "2xx": l(&s.responses[1]), "3xx": l(&s.responses[2]),
                "4xx": l(&s.responses[3]), "5xx": l(&s.responses[4]),
            },
            "retries": l(&s.retries),
            "retry_budget_exhausted": l(&s.retry_budget_exhausted),
            "connect_errors": l(&s.connect_errors),
            "timeouts": l(&s.timeouts),
            "no_backend": l(&s.no_backend),
            "rejected": l(&s.rejected),
            "rate_limited": l(&s.rate_limited),
            "active_connections": s.active_connections.load(std::sync::atomic::Ordering::Relaxed),
            "active_tunnels": s.active_tunnels.load(std::sync::atomic::Ordering::Relaxed),
            "backends": backends.iter().map(|b| json!({
                "id": b.id(), "addr": b.addr().to_string(), "enabled": b.is_enabled(),
                "healthy": b.is_healthy_now(), "probe_up": b.probe_up(), "in_flight": b.in_flight(),
                "requests": b.requests(), "failures": b.failures(), "ejections": b.ejections(),
                "weight": b.weight(), "backup": b.is_backup(),
            })).collect::<Vec<_>>(),
        })
    });
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "pid": std::process::id(),
        "uptime_s": r.started.elapsed().as_secs_f64(),
        "admin": r.admin().to_string(),
        "balancer": balancer,
        "services": r.supervisor.services(),
        "instances": rows,
    })
}

async fn status(State(s): State<Shared>) -> Json<Value> {
    Json(status_json(&s).await)
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
async fn dashboard_json(State(s): State<Shared>, Query(q): Query<DashboardQuery>) -> Json<Value> {
    let mut v = status_json(&s).await;
    // The config in force, with the instance count the supervisor holds now (a
    // `drove scale` changes it without a config edit).
    let config = s.running.config.load();
    let limits: serde_json::Map<String, Value> = config
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
                json!({"instances": instances, "max_memory": c.max_memory}),
            )
        })
        .collect();
    v["service_config"] = Value::Object(limits);
    v["token_required"] = json!(s.running.config.load().admin.token.is_some());
    v["history"] = s
        .history
        .series(q.points.unwrap_or(history::KEEP).min(history::KEEP));
    Json(v)
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

fn field<'a>(body: &'a Value, name: &str) -> Result<&'a Value, ApiError> {
    body.get(name)
        .ok_or_else(|| bad(format!("missing field `{name}`")))
}

async fn scale(State(s): State<Shared>, Json(body): Json<Value>) -> Result<Json<Value>, ApiError> {
    let r = &s.running;
    let service = field(&body, "service")?
        .as_str()
        .ok_or_else(|| bad("`service` must be a string"))?;
    let n = field(&body, "instances")?
        .as_u64()
        .filter(|&n| n <= 1000)
        .ok_or_else(|| bad("`instances` must be a number 0..=1000"))?;
    r.supervisor
        .scale(service, n as u32)
        .await
        .map_err(|e| ApiError(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))?;
    Ok(Json(json!({ "service": service, "instances": n })))
}

async fn restart(
    State(s): State<Shared>,
    Json(body): Json<Value>,
) -> Result<Json<Value>, ApiError> {
    let r = &s.running;
    // `{"service": "web"}` restarts every instance; `{"instance": "web.2"}` one.
    let report = if let Some(instance) = body.get("instance") {
        let id: InstanceId = instance
            .as_str()
            .ok_or_else(|| bad("`instance` must be a string"))?
            .parse()
            .map_err(bad)?;
        r.supervisor.restart_instance(&id).await
    } else {
        let service = field(&body, "service")?
            .as_str()
            .ok_or_else(|| bad("`service` must be a string"))?;
        r.supervisor.restart(service).await
    }
    .map_err(|e| ApiError(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))?;
    Ok(Json(serde_json::to_value(report).unwrap_or(Value::Null)))
}

async fn drain_or_undrain(r: &Running, body: &Value, drain: bool) -> Result<Json<Value>, ApiError> {
    let name = field(body, "instance")?
        .as_str()
        .ok_or_else(|| bad("`instance` must be a string"))?;
    // A static backend (not supervised) is taken out of rotation directly.
    if r.balanced_service().is_none() {
        if let Some(b) = &r.balancer {
            if b.set_enabled(name, !drain) {
                if drain {
                    b.wait_idle(name, std::time::Duration::from_secs(30)).await;
                }
                return Ok(Json(json!({ "instance": name, "in_rotation": !drain })));
            }
        }
    }
    let id: InstanceId = name.parse().map_err(bad)?;
    let res = if drain {
        r.supervisor.drain(&id).await
    } else {
        r.supervisor.undrain(&id).await
    };
    res.map_err(|e| ApiError(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))?;
    if !drain {
        // The Undrained event does the same, asynchronously; doing it here too means the
        // instance is back in rotation when the call returns.
        if let (Some(b), Some(svc)) = (&r.balancer, &r.balanced_service()) {
            if *svc == id.service {
                b.set_enabled(name, true);
            }
        }
    }
    Ok(Json(json!({ "instance": name, "in_rotation": !drain })))
}

async fn drain(State(s): State<Shared>, Json(body): Json<Value>) -> Result<Json<Value>, ApiError> {
    drain_or_undrain(&s.running, &body, true).await
}

async fn undrain(
    State(s): State<Shared>,
    Json(body): Json<Value>,
) -> Result<Json<Value>, ApiError> {
    drain_or_undrain(&s.running, &body, false).await
}

/// Re-reads the config file and applies it (`crate::reload`): 200 with what was and was
/// not applied, 422 with the errors (nothing changed) when the file is invalid.
async fn reload(State(s): State<Shared>, Query(q): Query<ReloadQuery>) -> Response {
    let dry_run = q.dry_run.unwrap_or(false);
    let Some(v) =
        crate::contain::caught("reload", crate::reload::reload(&s.running, dry_run)).await
    else {
        return ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the reload hit a bug in drove (see its log); what it applied before is in force"
                .into(),
        )
        .into_response();
    };
    let status = if v.ok {
        StatusCode::OK
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    };
    (status, Json(v)).into_response()
}

#[derive(serde::Deserialize)]
struct ReloadQuery {
    /// Only compute and return the plan.
    dry_run: Option<bool>,
}

async fn down(State(s): State<Shared>) -> Json<Value> {
    let _ = s.running.shutdown.send(true);
    Json(json!({ "status": "shutting down" }))
}
