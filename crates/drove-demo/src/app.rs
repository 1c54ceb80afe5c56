//! The endpoints: routing and handlers.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::server::Shutdown;
use crate::session::{self, SessionStore};
use crate::{ws, DemoOptions};

/// Response body: a fixed buffer, or the request body streamed back by `/echo`.
pub(crate) type Body = BoxBody<Bytes, hyper::Error>;

/// Name of the header naming the instance on every response.
const INSTANCE_HEADER: &str = "x-demo-instance";

/// `/slow` never sleeps longer than this: long enough for any drain or timeout test,
/// short enough that a typo does not pin a connection for hours.
const MAX_SLOW_MS: u64 = 60_000;

/// `/work` burns at most this much CPU per request.
const MAX_CPU_MS: u64 = 10_000;

/// `/leak` grows by at most this much per request; grow further with more requests.
const MAX_LEAK_MB_PER_CALL: u64 = 1024;

const MIB: usize = 1024 * 1024;

/// Everything the handlers share within one process.
pub(crate) struct State {
    pub(crate) instance: String,
    instance_id: Option<String>,
    instance_header: HeaderValue,
    pid: u32,
    port: u16,
    started: Instant,
    ready_delay: Duration,
    sessions: SessionStore,
    requests: AtomicU64,
    /// Requests being answered now (this one included, for `/health`).
    in_flight: AtomicU64,
    /// Open client connections (kept by the server's accept loop).
    pub(crate) connections: AtomicU64,
    post_count: AtomicU64,
    /// Memory kept on purpose by `/leak`, never freed.
    leaked: Mutex<Vec<Vec<u8>>>,
    leaked_mb: AtomicU64,
    /// Set when shutdown starts: `/ready` then answers 503.
    pub(crate) stopping: AtomicBool,
}

impl State {
    pub(crate) fn new(opts: DemoOptions, port: u16) -> Self {
        let instance_header = HeaderValue::from_str(&opts.instance)
            .unwrap_or_else(|_| HeaderValue::from_static("demo"));
        Self {
            sessions: SessionStore::new(opts.redis_url.as_deref()),
            instance: opts.instance,
            instance_id: opts.instance_id,
            instance_header,
            pid: std::process::id(),
            port,
            started: Instant::now(),
            ready_delay: opts.ready_delay,
            requests: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            post_count: AtomicU64::new(0),
            leaked: Mutex::new(Vec::new()),
            leaked_mb: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
        }
    }
}

/// Counts a request in `State::in_flight` until it is answered or dropped (the client
/// went away).
struct InFlight<'a>(&'a State);

impl<'a> InFlight<'a> {
    fn new(state: &'a State) -> Self {
        state.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(state)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Routes one request; every response carries `X-Demo-Instance`.
pub(crate) async fn handle(
    state: Arc<State>,
    shutdown: Shutdown,
    req: Request<Incoming>,
) -> Response<Body> {
    state.requests.fetch_add(1, Ordering::Relaxed);
    let in_flight = InFlight::new(&state);
    let mut response = route(&state, shutdown, req).await;
    drop(in_flight);
    response
        .headers_mut()
        .insert(INSTANCE_HEADER, state.instance_header.clone());
    response
}

async fn route(state: &State, shutdown: Shutdown, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    match path.as_str() {
        "/" => index(state),
        "/health" => health(state),
        "/health/ready" | "/ready" => ready(state),
        "/health/live" => live(state),
        "/metrics" => metrics(state),
        "/whoami" => whoami(state),
        "/session" => session(state, &req).await,
        "/slow" => slow(&req).await,
        "/work" => work(&req).await,
        "/leak" => leak(state, &req).await,
        "/ws" => websocket(req, shutdown),
        "/echo" if has_body_method(&method) => echo(req),
        "/echo" => method_not_allowed("POST, PUT, PATCH"),
        "/echo/headers" => echo_headers(&req),
        "/count" if has_body_method(&method) => count(state, req).await,
        "/count" => method_not_allowed("POST, PUT, PATCH"),
        "/stats" => json_response(
            StatusCode::OK,
            &json!({
                "requests": state.requests.load(Ordering::Relaxed),
                "post_count": state.post_count.load(Ordering::Relaxed),
            }),
        ),
        _ => match path.strip_prefix("/status/") {
            Some(code) => status(code),
            None => error(
                StatusCode::NOT_FOUND,
                &format!("no route for {method} {path}"),
            ),
        },
    }
}

fn has_body_method(method: &Method) -> bool {
    matches!(*method, Method::POST | Method::PUT | Method::PATCH)
}

fn index(state: &State) -> Response<Body> {
    let page = format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>drove demo</title></head>\n\
         <body><h1>drove demo \u{2014} instance {instance} (pid {pid}, port {port})</h1>\n\
         <p>Try <a href=\"/whoami\">/whoami</a>, <a href=\"/session\">/session</a>, \
         <a href=\"/health\">/health</a>, <a href=\"/health/ready\">/health/ready</a>, \
         <a href=\"/health/live\">/health/live</a>, \
         <a href=\"/stats\">/stats</a>.</p></body></html>\n",
        instance = html_escape(&state.instance),
        pid = state.pid,
        port = state.port,
    );
    Response::builder()
        .header(header::CONTENT_TYPE, "text/html; charset=utf-8")
        .body(full(page))
        .expect("static response parts are valid")
}

/// Where the instance is in its life, as the health endpoints report it.
enum Phase {
    /// `ready_delay` has not passed yet (the time left).
    Starting(Duration),
    Ready,
    /// Shutdown has started: finishing what is in flight.
    Stopping,
}

fn phase(state: &State) -> Phase {
    if state.stopping.load(Ordering::Relaxed) {
        return Phase::Stopping;
    }
    let ready_at = state.started + state.ready_delay;
    let now = Instant::now();
    if now >= ready_at {
        Phase::Ready
    } else {
        Phase::Starting(ready_at - now)
    }
}

/// Readiness (`/health/ready`, `/ready`): may a load balancer send requests here? 503
/// while starting (`DEMO_READY_DELAY`) and from the moment shutdown starts.
fn ready(state: &State) -> Response<Body> {
    match phase(state) {
        Phase::Ready => json_response(StatusCode::OK, &json!({"status": "ready"})),
        Phase::Starting(left) => json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"status": "starting", "ready_in_ms": millis(left)}),
        ),
        Phase::Stopping => json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"status": "stopping"}),
        ),
    }
}

/// Liveness (`/health/live`): the process answers. 200 while starting and while shutting
/// down too: restarting an instance that is merely starting or finishing its requests
/// would only make things worse.
fn live(state: &State) -> Response<Body> {
    json_response(
        StatusCode::OK,
        &json!({"status": "alive", "uptime_ms": millis(state.started.elapsed())}),
    )
}

/// The detailed health a load balancer's check or a person reads (`/health`): the
/// readiness verdict as status code and `status` (200 `ok`, 503 `starting`/`stopping`),
/// plus who this is and how busy it is.
fn health(state: &State) -> Response<Body> {
    let (code, status) = match phase(state) {
        Phase::Ready => (StatusCode::OK, "ok"),
        Phase::Starting(_) => (StatusCode::SERVICE_UNAVAILABLE, "starting"),
        Phase::Stopping => (StatusCode::SERVICE_UNAVAILABLE, "stopping"),
    };
    json_response(
        code,
        &json!({
            "status": status,
            "instance": state.instance,
            "instance_id": state.instance_id,
            "pid": state.pid,
            "port": state.port,
            "uptime_ms": millis(state.started.elapsed()),
            "requests": state.requests.load(Ordering::Relaxed),
            "in_flight": state.in_flight.load(Ordering::Relaxed),
            "connections": state.connections.load(Ordering::Relaxed),
            "sessions": state.sessions.kind(),
        }),
    )
}

/// The app's own metrics in Prometheus's text format, as a user's app exposes them (drove
/// lists the instances for Prometheus: `GET /api/sd` on the admin listener). No instance
/// label: Prometheus adds its target's labels.
fn metrics(state: &State) -> Response<Body> {
    let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let body = format!(
        "# HELP demo_requests_total Requests received by this instance.\n\
         # TYPE demo_requests_total counter\n\
         demo_requests_total {}\n\
         # HELP demo_post_requests_total POST /count requests received.\n\
         # TYPE demo_post_requests_total counter\n\
         demo_post_requests_total {}\n\
         # HELP demo_requests_in_flight Requests being answered now.\n\
         # TYPE demo_requests_in_flight gauge\n\
         demo_requests_in_flight {}\n\
         # HELP demo_connections Open client connections.\n\
         # TYPE demo_connections gauge\n\
         demo_connections {}\n\
         # HELP demo_leaked_bytes Memory kept on purpose by /leak.\n\
         # TYPE demo_leaked_bytes gauge\n\
         demo_leaked_bytes {}\n\
         # HELP demo_uptime_seconds Time since the instance started.\n\
         # TYPE demo_uptime_seconds gauge\n\
         demo_uptime_seconds {:.3}\n",
        l(&state.requests),
        l(&state.post_count),
        l(&state.in_flight),
        l(&state.connections),
        l(&state.leaked_mb) * MIB as u64,
        state.started.elapsed().as_secs_f64(),
    );
    Response::builder()
        .header(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )
        .body(full(body))
        .expect("static response parts are valid")
}

fn whoami(state: &State) -> Response<Body> {
    json_response(
        StatusCode::OK,
        &json!({
            "instance": state.instance,
            "pid": state.pid,
            "port": state.port,
            "uptime_ms": millis(state.started.elapsed()),
        }),
    )
}

async fn session(state: &State, req: &Request<Incoming>) -> Response<Body> {
    let existing = session::session_from_cookies(req.headers().get_all(header::COOKIE).iter());
    let is_new = existing.is_none();
    let id = existing.unwrap_or_else(session::new_session_id);
    match state.sessions.incr(&id).await {
        Ok(count) => {
            let mut response = json_response(
                StatusCode::OK,
                &json!({
                    "session": id,
                    "count": count,
                    "instance": state.instance,
                    "store": state.sessions.kind(),
                }),
            );
            if is_new {
                let cookie = format!("{}={id}; Path=/; HttpOnly; SameSite=Lax", session::COOKIE);
                let value = HeaderValue::from_str(&cookie).expect("session ids are header-safe");
                response.headers_mut().insert(header::SET_COOKIE, value);
            }
            response
        }
        Err(e) => {
            tracing::warn!(error = %e, "demo: session store unavailable");
            json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({
                    "error": format!("session store unavailable: {e}"),
                    "store": state.sessions.kind(),
                    "instance": state.instance,
                }),
            )
        }
    }
}

async fn slow(req: &Request<Incoming>) -> Response<Body> {
    let ms = match query_u64(req, "ms", 0) {
        Ok(ms) => ms.min(MAX_SLOW_MS),
        Err(message) => return error(StatusCode::BAD_REQUEST, &message),
    };
    tokio::time::sleep(Duration::from_millis(ms)).await;
    json_response(StatusCode::OK, &json!({"slept_ms": ms}))
}

async fn work(req: &Request<Incoming>) -> Response<Body> {
    let cpu_ms = match query_u64(req, "cpu_ms", 0) {
        Ok(ms) => ms.min(MAX_CPU_MS),
        Err(message) => return error(StatusCode::BAD_REQUEST, &message),
    };
    let burned = tokio::task::spawn_blocking(move || burn_cpu(Duration::from_millis(cpu_ms))).await;
    match burned {
        Ok(iterations) => json_response(
            StatusCode::OK,
            &json!({"cpu_ms": cpu_ms, "iterations": iterations}),
        ),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("worker failed: {e}"),
        ),
    }
}

/// Spins for `duration` of wall-clock time on the current (blocking) thread.
fn burn_cpu(duration: Duration) -> u64 {
    // Real time on purpose: this measures work actually done by a thread, which a paused
    // tokio test clock would never see pass.
    let start = std::time::Instant::now();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut iterations = 0u64;
    while start.elapsed() < duration {
        for _ in 0..10_000 {
            // xorshift: cheap, and black_box keeps the optimizer from removing it.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
        }
        std::hint::black_box(x);
        iterations += 1;
    }
    iterations
}

async fn leak(state: &State, req: &Request<Incoming>) -> Response<Body> {
    let mb = match query_u64(req, "mb", 1) {
        Ok(mb) if mb <= MAX_LEAK_MB_PER_CALL => mb,
        Ok(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("mb must be at most {MAX_LEAK_MB_PER_CALL} per call"),
            )
        }
        Err(message) => return error(StatusCode::BAD_REQUEST, &message),
    };
    // Filling with a non-zero byte writes every page, so the memory is resident (a zeroed
    // allocation could stay virtual and never show in RSS).
    let chunk = tokio::task::spawn_blocking(move || vec![0xA5u8; mb as usize * MIB]).await;
    let chunk = match chunk {
        Ok(chunk) => chunk,
        Err(e) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("allocation failed: {e}"),
            )
        }
    };
    state
        .leaked
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .push(chunk);
    let total = state.leaked_mb.fetch_add(mb, Ordering::Relaxed) + mb;
    json_response(StatusCode::OK, &json!({"leaked_mb": total, "added_mb": mb}))
}

fn status(code: &str) -> Response<Body> {
    let code = code
        .parse::<u16>()
        .ok()
        .filter(|c| (200..=599).contains(c))
        .and_then(|c| StatusCode::from_u16(c).ok());
    let Some(code) = code else {
        return error(
            StatusCode::BAD_REQUEST,
            "status must be an integer in 200..=599",
        );
    };
    // These statuses must not carry a body.
    if matches!(code.as_u16(), 204 | 205 | 304) {
        return Response::builder()
            .status(code)
            .body(empty())
            .expect("static response parts are valid");
    }
    json_response(code, &json!({"status": code.as_u16()}))
}

fn websocket(mut req: Request<Incoming>, shutdown: Shutdown) -> Response<Body> {
    let accept = match ws::accept_key(req.method(), req.headers()) {
        Ok(accept) => accept,
        Err(e @ ws::HandshakeError::Version) => {
            let mut resp = error(StatusCode::UPGRADE_REQUIRED, &e.to_string());
            resp.headers_mut().insert(
                header::SEC_WEBSOCKET_VERSION,
                HeaderValue::from_static("13"),
            );
            return resp;
        }
        Err(e) => return error(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        // Fails if the client went away before the 101 was sent: nothing to echo then.
        if let Ok(upgraded) = on_upgrade.await {
            ws::echo(upgraded, shutdown).await;
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "websocket")
        .header(header::SEC_WEBSOCKET_ACCEPT, accept)
        .body(empty())
        .expect("accept key is header-safe")
}

fn echo(req: Request<Incoming>) -> Response<Body> {
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .cloned()
        .unwrap_or_else(|| HeaderValue::from_static("application/octet-stream"));
    // Streamed back frame by frame; hyper copies the request's length (exact size hint)
    // or uses chunked encoding.
    let mut response = Response::new(req.into_body().boxed());
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, content_type);
    response
}

fn echo_headers(req: &Request<Incoming>) -> Response<Body> {
    let mut headers = serde_json::Map::new();
    for name in req.headers().keys() {
        let values: Vec<Value> = req
            .headers()
            .get_all(name)
            .iter()
            .map(|v| Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect();
        let value = match <[Value; 1]>::try_from(values) {
            Ok([single]) => single,
            Err(many) => Value::Array(many),
        };
        headers.insert(name.as_str().to_owned(), value);
    }
    json_response(StatusCode::OK, &Value::Object(headers))
}

async fn count(state: &State, req: Request<Incoming>) -> Response<Body> {
    // Counted on arrival, before the body: a replayed POST shows up even if it fails.
    state.post_count.fetch_add(1, Ordering::Relaxed);
    let mut body = req.into_body();
    let mut bytes = 0u64;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    bytes += data.len() as u64;
                }
            }
            Err(e) => return error(StatusCode::BAD_REQUEST, &format!("reading body: {e}")),
        }
    }
    json_response(
        StatusCode::OK,
        &json!({"bytes": bytes, "instance": state.instance}),
    )
}

fn method_not_allowed(allow: &'static str) -> Response<Body> {
    let mut resp = error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
    resp.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    resp
}

/// Reads an integer query parameter; a missing one gets `default`; the error is for a 400.
fn query_u64(req: &Request<Incoming>, name: &str, default: u64) -> Result<u64, String> {
    let value = req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value);
    match value {
        None => Ok(default),
        Some(text) => text.parse().map_err(|_| {
            format!("query parameter {name} must be a non-negative integer, got {text:?}")
        }),
    }
}

fn json_response(status: StatusCode, value: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(full(value.to_string()))
        .expect("static response parts are valid")
}

fn error(status: StatusCode, message: &str) -> Response<Body> {
    json_response(status, &json!({"error": message}))
}

fn full(body: impl Into<Bytes>) -> Body {
    Full::new(body.into())
        .map_err(|never: Infallible| match never {})
        .boxed()
}

fn empty() -> Body {
    Empty::new()
        .map_err(|never: Infallible| match never {})
        .boxed()
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn html_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
