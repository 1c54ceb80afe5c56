//! The admin listener: a JSON API over the running parts (the `drove status|scale|
//! restart|drain|undrain|down` commands are thin clients of it). Loopback by default;
//! when `admin.token` is set, every `/api/` request needs `Authorization: Bearer TOKEN`.
//! Errors are JSON: `{"error": "..."}` with a 4xx/5xx status.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use drove_supervisor::InstanceId;
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::Running;

type Shared = Arc<Running>;

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

/// Serves the admin API until shutdown.
pub async fn serve(listener: tokio::net::TcpListener, running: Shared, mut shutdown: watch::Receiver<bool>) {
    let app = router(running);
    let _ = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = shutdown.wait_for(|v| *v).await;
        })
        .await;
}

/// The admin routes.
pub fn router(running: Shared) -> Router {
    let api = Router::new()
        .route("/api/status", get(status))
        .route("/api/scale", post(scale))
        .route("/api/restart", post(restart))
        .route("/api/drain", post(drain))
        .route("/api/undrain", post(undrain))
        .route("/api/down", post(down))
        .route_layer(axum::middleware::from_fn_with_state(running.clone(), auth));
    Router::new()
        .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
        .merge(api)
        .fallback(|| async { ApiError(StatusCode::NOT_FOUND, "no such endpoint; see docs/admin-api.md".into()) })
        .with_state(running)
}

async fn auth(State(r): State<Shared>, req: Request, next: Next) -> Response {
    if let Some(token) = &r.config.admin.token {
        let ok = req
            .headers()
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|t| constant_time_eq(t.as_bytes(), token.as_bytes()));
        if !ok {
            return ApiError(StatusCode::UNAUTHORIZED, "missing or wrong bearer token".into()).into_response();
        }
    }
    next.run(req).await
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The full status document (also used by `drove status`).
pub async fn status_json(r: &Running) -> Value {
    let instances = r.supervisor.status().await;
    let backends = r.balancer.as_ref().map(|b| b.snapshot()).unwrap_or_default();
    let now_backend = |id: &str| backends.iter().find(|b| b.id() == id).cloned();
    let mut rows: Vec<Value> = instances
        .iter()
        .map(|s| {
            let id = s.id.to_string();
            let b = now_backend(&id);
            let mut v = serde_json::to_value(s).unwrap_or(Value::Null);
            if let Value::Object(m) = &mut v {
                m.insert("service".into(), json!(s.id.service));
                m.insert("in_rotation".into(), json!(b.as_ref().map(|b| b.is_enabled())));
                m.insert("healthy".into(), json!(b.as_ref().map(|b| b.probe_up() && b.is_healthy_now())));
                m.insert("in_flight".into(), json!(b.as_ref().map(|b| b.in_flight())));
                m.insert("requests".into(), json!(b.as_ref().map(|b| b.requests())));
                m.insert("failures".into(), json!(b.as_ref().map(|b| b.failures())));
            }
            v
        })
        .collect();
    // Static backends are not supervised: list them too.
    if r.balanced_service.is_none() {
        for b in &backends {
            rows.push(json!({
                "id": b.id(), "service": null, "addr": b.addr().to_string(), "state": "remote",
                "in_rotation": b.is_enabled(), "healthy": b.is_healthy_now(),
                "in_flight": b.in_flight(), "requests": b.requests(), "failures": b.failures(),
                "weight": b.weight(), "backup": b.is_backup(),
            }));
        }
    }
    let balancer = r.proxy.as_ref().map(|p| {
        let s = p.stats();
        let l = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        json!({
            "listen": r.listen.map(|a| a.to_string()),
            "algorithm": p.balancer().settings().algorithm.as_str(),
            "service": r.balanced_service,
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
        "admin": r.admin.to_string(),
        "balancer": balancer,
        "services": r.supervisor.services(),
        "instances": rows,
    })
}

async fn status(State(r): State<Shared>) -> Json<Value> {
    Json(status_json(&r).await)
}

fn field<'a>(body: &'a Value, name: &str) -> Result<&'a Value, ApiError> {
    body.get(name).ok_or_else(|| bad(format!("missing field `{name}`")))
}

async fn scale(State(r): State<Shared>, Json(body): Json<Value>) -> Result<Json<Value>, ApiError> {
    let service = field(&body, "service")?.as_str().ok_or_else(|| bad("`service` must be a string"))?;
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

async fn restart(State(r): State<Shared>, Json(body): Json<Value>) -> Result<Json<Value>, ApiError> {
    let service = field(&body, "service")?.as_str().ok_or_else(|| bad("`service` must be a string"))?;
    let report = r
        .supervisor
        .restart(service)
        .await
        .map_err(|e| ApiError(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))?;
    Ok(Json(serde_json::to_value(report).unwrap_or(Value::Null)))
}

async fn drain_or_undrain(r: &Running, body: &Value, drain: bool) -> Result<Json<Value>, ApiError> {
    let name = field(body, "instance")?.as_str().ok_or_else(|| bad("`instance` must be a string"))?;
    // A static backend (not supervised) is taken out of rotation directly.
    if r.balanced_service.is_none() {
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
    Ok(Json(json!({ "instance": name, "in_rotation": !drain })))
}

async fn drain(State(r): State<Shared>, Json(body): Json<Value>) -> Result<Json<Value>, ApiError> {
    drain_or_undrain(&r, &body, true).await
}

async fn undrain(State(r): State<Shared>, Json(body): Json<Value>) -> Result<Json<Value>, ApiError> {
    drain_or_undrain(&r, &body, false).await
}

async fn down(State(r): State<Shared>) -> Json<Value> {
    let _ = r.shutdown.send(true);
    Json(json!({ "status": "shutting down" }))
}
