//! Forwarding one request: validate, rewrite headers, pick, try, retry, relay.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use drove_balancer::{Backend, Outcome, PickContext};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use tokio::time::Instant;

use crate::body::{ProxyBody, UpBody, UpstreamBody};
use crate::error::ProxyError;
use crate::headers;
use crate::log::Entry;
use crate::pool::{ConnectError, Pool, PooledConn};
use crate::{HashKey, Proxy};

/// An upstream connection idle longer than this is not reused: common app servers close
/// idle keep-alive connections after 5 s (Node.js's default), and reusing one they are
/// closing races into an error that a POST cannot be retried after.
const UPSTREAM_MAX_IDLE: Duration = Duration::from_secs(4);

/// Tries that found a pooled connection already closed are retried for free, up to this.
const MAX_STALE_RETRIES: u32 = 4;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// The client side of a connection, computed once per connection.
pub(crate) struct Peer {
    addr: SocketAddr,
    ip_value: HeaderValue,
    trusted: bool,
    /// The connection's state (conflicting framing seen, phase for the timeouts).
    pub(crate) conn: Arc<crate::framing::ConnState>,
}

impl Peer {
    pub(crate) fn new(addr: SocketAddr, settings: &crate::ProxySettings, conn: Arc<crate::framing::ConnState>) -> Peer {
        let ip = canonical(addr.ip());
        Peer {
            addr,
            ip_value: HeaderValue::from_str(&ip.to_string()).unwrap_or(HeaderValue::from_static("unknown")),
            trusted: settings.trusted_proxies.iter().any(|c| c.contains(ip)),
            conn,
        }
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// Per-worker forwarding state.
pub(crate) struct Forwarder {
    proxy: Proxy,
    pool: Rc<Pool>,
    /// `X-Drove-Instance` values per backend key, so a response costs no allocation.
    instance_values: RefCell<HashMap<u64, HeaderValue>>,
    /// Request-id generator state (xorshift; per worker, so ids need no lock).
    rid: Cell<u64>,
}

fn is_idempotent(m: &Method) -> bool {
    matches!(*m, Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE)
}

/// The parts of a request kept to rebuild it for a retry after it was sent.
struct Replay {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
}

impl Replay {
    fn build(&self) -> Request<UpBody> {
        let mut r = Request::new(UpBody::Empty);
        *r.method_mut() = self.method.clone();
        *r.uri_mut() = self.uri.clone();
        *r.headers_mut() = self.headers.clone();
        r
    }
}

impl Forwarder {
    pub(crate) fn new(proxy: Proxy, _local: SocketAddr) -> Forwarder {
        let pool = Rc::new(Pool::default());
        // Sweeper: closes idle upstream connections that are too old or whose backend
        // left rotation (removed or drained).
        let weak = Rc::downgrade(&pool);
        let balancer = proxy.balancer.clone();
        tokio::task::spawn_local(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                tick.tick().await;
                let Some(pool) = weak.upgrade() else { return };
                let live: Vec<(u64, bool)> = balancer
                    .snapshot()
                    .iter()
                    .map(|b| (b.key(), b.is_enabled()))
                    .collect();
                pool.sweep(UPSTREAM_MAX_IDLE, |k| live.iter().any(|&(key, en)| key == k && en));
            }
        });
        let seed = (std::process::id() as u64) << 32
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1);
        Forwarder {
            proxy,
            pool,
            instance_values: RefCell::new(HashMap::new()),
            rid: Cell::new(seed | 1),
        }
    }

    fn new_request_id(&self) -> HeaderValue {
        let mut x = self.rid.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rid.set(x);
        let mut buf = [0u8; 16];
        const HEX: &[u8; 16] = b"0123456789abcdef";
        for (i, b) in buf.iter_mut().enumerate() {
            *b = HEX[((x >> (60 - 4 * i)) & 0xf) as usize];
        }
        HeaderValue::from_bytes(&buf).expect("hex is a valid header value")
    }

    fn instance_value(&self, b: &Backend) -> HeaderValue {
        let mut m = self.instance_values.borrow_mut();
        m.entry(b.key())
            .or_insert_with(|| HeaderValue::from_str(b.id()).unwrap_or(HeaderValue::from_static("invalid")))
            .clone()
    }

    pub(crate) async fn handle(&self, req: Request<Incoming>, peer: &Peer) -> Response<ProxyBody> {
        let start = Instant::now();
        let stats = &self.proxy.stats;
        stats.request();
        let settings = &*self.proxy.settings;

        // Logged fields are captured before the request moves on.
        let log_enabled = self.proxy.log.enabled();
        let log_head = log_enabled.then(|| {
            (
                req.method().to_string(),
                req.uri().to_string(),
                format!("{:?}", req.version()),
                str_header(req.headers(), &header::REFERER),
                str_header(req.headers(), &header::USER_AGENT),
            )
        });

        let conflicting = peer.conn.conflicting.load(std::sync::atomic::Ordering::Relaxed) && req.headers().contains_key(header::TRANSFER_ENCODING);
        if let Err(e) = validate(&req, settings.max_body_size, conflicting) {
            stats.rejected.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let resp = error_response(e, None);
            self.log(&log_head, peer.addr.ip(), &resp, None, start, 0, "");
            return resp;
        }

        let (mut parts, body) = req.into_parts();
        let mut body = Some(body);
        let upgrade = headers::is_upgrade(&parts.headers);
        let on_upgrade = if upgrade {
            let mut tmp = Request::new(());
            *tmp.extensions_mut() = std::mem::take(&mut parts.extensions);
            Some(hyper::upgrade::on(&mut tmp))
        } else {
            None
        };
        headers::strip_hop_by_hop(&mut parts.headers, upgrade);
        if parts.uri.authority().is_some() {
            // Absolute-form target (RFC 9112 3.2.2): backends get origin-form.
            let pq = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
            parts.uri = Uri::try_from(pq).unwrap_or_else(|_| Uri::from_static("/"));
        }
        parts.version = Version::HTTP_11;

        // Forwarded headers.
        let client_ip = if peer.trusted {
            headers::client_ip(&parts.headers, canonical(peer.addr.ip()), &settings.trusted_proxies)
        } else {
            canonical(peer.addr.ip())
        };
        let h = &mut parts.headers;
        if peer.trusted {
            if let Some(prev) = h.get(&X_FORWARDED_FOR) {
                let mut v = prev.as_bytes().to_vec();
                v.extend_from_slice(b", ");
                v.extend_from_slice(peer.ip_value.as_bytes());
                if let Ok(v) = HeaderValue::from_bytes(&v) {
                    h.insert(X_FORWARDED_FOR.clone(), v);
                }
            } else {
                h.insert(X_FORWARDED_FOR.clone(), peer.ip_value.clone());
            }
            if !h.contains_key(&X_FORWARDED_PROTO) {
                h.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
            }
            if client_ip == canonical(peer.addr.ip()) {
                h.insert(X_REAL_IP.clone(), peer.ip_value.clone());
            } else if let Ok(v) = HeaderValue::from_str(&client_ip.to_string()) {
                h.insert(X_REAL_IP.clone(), v);
            }
        } else {
            // Untrusted peer: whatever it claims is replaced.
            h.insert(X_FORWARDED_FOR.clone(), peer.ip_value.clone());
            h.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
            h.insert(X_REAL_IP.clone(), peer.ip_value.clone());
        }
        if !(peer.trusted && h.contains_key(&X_FORWARDED_HOST)) {
            match h.get(header::HOST).cloned() {
                Some(host) => {
                    h.insert(X_FORWARDED_HOST.clone(), host);
                }
                None => {
                    h.remove(&X_FORWARDED_HOST);
                }
            }
        }
        let request_id = match &settings.request_id_header {
            Some(name) => {
                let v = match h.get(name) {
                    Some(v) if !v.is_empty() && v.len() <= 200 => v.clone(),
                    _ => self.new_request_id(),
                };
                h.insert(name.clone(), v.clone());
                Some(v)
            }
            None => None,
        };

        // Selection context.
        let sticky_name = settings.sticky.as_ref().map(|s| s.name.as_str());
        let sticky_value = sticky_name.and_then(|n| headers::cookie(&parts.headers, n));
        let hash = match &settings.hash_key {
            None => None,
            Some(HashKey::Header(name)) => parts.headers.get(name).map(|v| drove_balancer::hash_bytes(v.as_bytes())),
            Some(HashKey::Cookie(name)) => {
                headers::cookie(&parts.headers, name).map(|v| drove_balancer::hash_bytes(v.as_bytes()))
            }
            Some(HashKey::Path) => Some(drove_balancer::hash_bytes(parts.uri.path().as_bytes())),
            Some(HashKey::ClientIp) => Some(drove_balancer::hash_ip(client_ip)),
        };
        // The sticky value borrows the headers, which move into the request: own it.
        let sticky_owned: Option<String> = sticky_value.map(str::to_owned);
        let ctx = PickContext {
            client_ip,
            hash,
            sticky: sticky_owned.as_deref(),
        };

        let replayable = body.as_ref().is_none_or(http_body::Body::is_end_stream);
        let replay = (settings.retries > 0 && replayable && is_idempotent(&parts.method) && !upgrade).then(|| Replay {
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            headers: parts.headers.clone(),
        });
        let up_body = if replayable {
            drop(body.take());
            UpBody::Empty
        } else {
            UpBody::Stream(body.take().expect("body present"))
        };
        let mut req = Some(Request::from_parts(parts, up_body));

        let deadline = start + settings.response_timeout;
        let mut tried: Vec<u64> = Vec::new();
        let mut retries = 0u32;
        let mut stale = 0u32;
        let mut last_err = ProxyError::NoBackend;
        let balancer = &self.proxy.balancer;

        loop {
            let Some(backend) = balancer.pick(&ctx, &tried) else {
                if last_err == ProxyError::NoBackend {
                    stats.no_backend.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                break;
            };
            let mut in_flight = balancer.start(&backend);
            let try_start = Instant::now();
            let try_deadline = (try_start + settings.per_try_timeout).min(deadline);

            // A connection: pooled, or new.
            let pooled = self.take_pooled(&backend);
            let warm = pooled.is_some();
            let mut conn = match pooled {
                Some(c) => c,
                None => match Pool::connect(
                    backend.key(),
                    backend.addr(),
                    settings.connect_timeout.min(try_deadline.saturating_duration_since(try_start)),
                )
                .await
                {
                    Ok(c) => c,
                    Err(e) => {
                        stats.connect_errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        tracing::debug!(backend = %backend.id(), error = ?e, "connect failed");
                        let outcome = match e {
                            ConnectError::Timeout => Outcome::TimedOut,
                            _ => Outcome::ConnectFailed,
                        };
                        in_flight.finish(outcome, try_start.elapsed());
                        tried.push(backend.key());
                        last_err = ProxyError::ConnectFailed;
                        // Never reached a backend: safe to retry whatever the method, and
                        // exempt from the budget (it costs the fleet nothing).
                        if retries < settings.retries && Instant::now() < deadline {
                            retries += 1;
                            stats.retries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            continue;
                        }
                        break;
                    }
                },
            };

            // Latency for the EWMA excludes the connect: a new connection's handshake says
            // nothing about how fast the backend answers.
            let send_start = Instant::now();
            let send = conn.sender.try_send_request(req.take().expect("request present"));
            match tokio::time::timeout_at(try_deadline, send).await {
                Ok(Ok(resp)) => {
                    let status = resp.status();
                    let elapsed = send_start.elapsed();
                    if settings.retry_on_5xx
                        && matches!(status.as_u16(), 502..=504)
                        && replay.is_some()
                        && retries < settings.retries
                        && Instant::now() < deadline
                        && stats.withdraw_retry()
                    {
                        in_flight.finish(Outcome::Http5xx, elapsed);
                        conn.abort();
                        tried.push(backend.key());
                        retries += 1;
                        stats.retries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        req = replay.as_ref().map(Replay::build);
                        continue;
                    }
                    in_flight.record(
                        if status.is_server_error() { Outcome::Http5xx } else { Outcome::Ok },
                        if warm { elapsed } else { Duration::ZERO },
                    );
                    // What the client experiences: the whole time to the head, retries included.
                    backend.responses().record(status.as_u16(), start.elapsed());
                    let resp = self.relay(
                        resp,
                        conn,
                        in_flight,
                        &backend,
                        on_upgrade,
                        sticky_owned.as_deref(),
                        request_id.as_ref(),
                    );
                    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                        peer.conn.tunnelled();
                    }
                    self.log_upstream(&log_head, client_ip, &resp, &backend, status, elapsed, start, retries, &request_id);
                    return resp;
                }
                Ok(Err(mut e)) => {
                    conn.abort();
                    if let Some(back) = e.take_message() {
                        // Never written: the pooled connection was closed under us.
                        // Retry on a fresh connection, whatever the method.
                        in_flight.finish(Outcome::Cancelled, try_start.elapsed());
                        req = Some(back);
                        stale += 1;
                        if stale <= MAX_STALE_RETRIES {
                            continue;
                        }
                        last_err = ProxyError::Broken;
                        break;
                    }
                    tracing::debug!(backend = %backend.id(), error = %e.error(), "upstream exchange failed");
                    in_flight.finish(Outcome::Broken, try_start.elapsed());
                    tried.push(backend.key());
                    last_err = ProxyError::Broken;
                }
                Err(_elapsed) => {
                    conn.abort();
                    stats.timeouts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    in_flight.finish(Outcome::TimedOut, try_start.elapsed());
                    tried.push(backend.key());
                    last_err = ProxyError::Timeout;
                }
            }
            // The request was sent: retry only if it can be replayed, within the budget.
            match &replay {
                Some(r) if retries < settings.retries && Instant::now() < deadline && stats.withdraw_retry() => {
                    retries += 1;
                    stats.retries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    req = Some(r.build());
                }
                _ => break,
            }
        }
        let resp = error_response(last_err, request_id.as_ref().map(|v| (settings.request_id_header.as_ref(), v)));
        stats.response(resp.status().as_u16());
        self.log_failure(&log_head, client_ip, &resp, start, retries, &request_id);
        resp
    }

    fn take_pooled(&self, backend: &Backend) -> Option<PooledConn> {
        loop {
            let c = self.pool.take(backend.key())?;
            if c.idle_for() < UPSTREAM_MAX_IDLE {
                return Some(c);
            }
            c.abort();
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn relay(
        &self,
        resp: Response<Incoming>,
        conn: PooledConn,
        in_flight: drove_balancer::InFlight,
        backend: &std::sync::Arc<Backend>,
        on_upgrade: Option<hyper::upgrade::OnUpgrade>,
        sticky_seen: Option<&str>,
        request_id: Option<&HeaderValue>,
    ) -> Response<ProxyBody> {
        let mut resp = resp;
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            if let Some(client) = on_upgrade {
                // Tunnel: both sides are upgraded, bytes are copied until either closes.
                // The attempt stays in flight (least_conn counts the tunnel) until then.
                let upstream = hyper::upgrade::on(&mut resp);
                let stats = self.proxy.stats.clone();
                drop(conn); // its driver task hands the socket to `upstream`: do not abort
                tokio::task::spawn_local(async move {
                    stats.active_tunnels.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if let (Ok(up), Ok(down)) = (upstream.await, client.await) {
                        let mut up = hyper_util::rt::TokioIo::new(up);
                        let mut down = hyper_util::rt::TokioIo::new(down);
                        let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                    }
                    stats.active_tunnels.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                    drop(in_flight);
                });
                let (mut parts, _body) = resp.into_parts();
                self.decorate(&mut parts.headers, backend, sticky_seen, request_id);
                self.proxy.stats.response(101);
                return Response::from_parts(parts, ProxyBody::Full(None));
            }
        }
        let (mut parts, body) = resp.into_parts();
        headers::strip_hop_by_hop(&mut parts.headers, false);
        self.decorate(&mut parts.headers, backend, sticky_seen, request_id);
        self.proxy.stats.response(parts.status.as_u16());
        let body = if http_body::Body::is_end_stream(&body) {
            self.pool.put(conn);
            drop(in_flight);
            ProxyBody::Full(None)
        } else {
            ProxyBody::Upstream(UpstreamBody {
                inner: body,
                in_flight: Some(in_flight),
                conn: Some((Rc::downgrade(&self.pool), conn)),
            })
        };
        Response::from_parts(parts, body)
    }

    fn decorate(&self, h: &mut HeaderMap, backend: &Backend, sticky_seen: Option<&str>, request_id: Option<&HeaderValue>) {
        let settings = &*self.proxy.settings;
        if let Some(name) = &settings.instance_header {
            h.insert(name.clone(), self.instance_value(backend));
        }
        if let (Some(name), Some(v)) = (&settings.request_id_header, request_id) {
            h.insert(name.clone(), v.clone());
        }
        if let Some(s) = &settings.sticky {
            if sticky_seen != Some(backend.sticky_token()) {
                let mut c = format!("{}={}; Path=/; HttpOnly; SameSite=Lax", s.name, backend.sticky_token());
                if let Some(age) = s.max_age {
                    c.push_str(&format!("; Max-Age={}", age.as_secs()));
                }
                if let Ok(v) = HeaderValue::from_str(&c) {
                    h.append(header::SET_COOKIE, v);
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn log_upstream(
        &self,
        head: &Option<LogHead>,
        client: IpAddr,
        resp: &Response<ProxyBody>,
        backend: &Backend,
        upstream_status: StatusCode,
        upstream_time: Duration,
        start: Instant,
        retries: u32,
        request_id: &Option<HeaderValue>,
    ) {
        let Some((method, target, version, referer, ua)) = head else { return };
        self.proxy.log.write(&Entry {
            client,
            method,
            target,
            version,
            status: resp.status().as_u16(),
            bytes: content_length(resp.headers()),
            referer,
            user_agent: ua,
            upstream: Some(backend.addr()),
            upstream_id: Some(backend.id()),
            upstream_status: Some(upstream_status.as_u16()),
            upstream_time: Some(upstream_time),
            total_time: start.elapsed(),
            retries,
            request_id: request_id.as_ref().and_then(|v| v.to_str().ok()).unwrap_or(""),
        });
    }

    fn log_failure(
        &self,
        head: &Option<LogHead>,
        client: IpAddr,
        resp: &Response<ProxyBody>,
        start: Instant,
        retries: u32,
        request_id: &Option<HeaderValue>,
    ) {
        self.log(head, client, resp, None, start, retries, request_id.as_ref().and_then(|v| v.to_str().ok()).unwrap_or(""));
    }

    #[allow(clippy::too_many_arguments)]
    fn log(
        &self,
        head: &Option<LogHead>,
        client: IpAddr,
        resp: &Response<ProxyBody>,
        _backend: Option<&Backend>,
        start: Instant,
        retries: u32,
        request_id: &str,
    ) {
        let Some((method, target, version, referer, ua)) = head else { return };
        self.proxy.log.write(&Entry {
            client,
            method,
            target,
            version,
            status: resp.status().as_u16(),
            bytes: content_length(resp.headers()),
            referer,
            user_agent: ua,
            upstream: None,
            upstream_id: None,
            upstream_status: None,
            upstream_time: None,
            total_time: start.elapsed(),
            retries,
            request_id,
        });
    }
}

type LogHead = (String, String, String, String, String);

fn str_header(h: &HeaderMap, name: &HeaderName) -> String {
    h.get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned()
}

fn content_length(h: &HeaderMap) -> Option<u64> {
    h.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// Rejects what must never reach a backend.
fn validate(req: &Request<Incoming>, max_body: u64, conflicting_framing: bool) -> Result<(), ProxyError> {
    let h = req.headers();
    if conflicting_framing {
        return Err(ProxyError::BadRequest);
    }
    // HTTP/1.1 requires exactly one Host (RFC 9112 3.2); two are a smuggling shape.
    let hosts = h.get_all(header::HOST).iter().count();
    if hosts > 1 || (req.version() == Version::HTTP_11 && hosts == 0 && req.uri().authority().is_none()) {
        return Err(ProxyError::BadRequest);
    }
    // Several Content-Length values, even equal ones, are refused (hyper accepts equal
    // duplicates; a backend might not).
    let cls = h.get_all(header::CONTENT_LENGTH).iter().count();
    if cls > 1 {
        return Err(ProxyError::BadRequest);
    }
    if h.contains_key(header::TRANSFER_ENCODING) && cls > 0 {
        return Err(ProxyError::BadRequest);
    }
    if max_body > 0 {
        if let Some(len) = content_length(h) {
            if len > max_body {
                return Err(ProxyError::BodyTooLarge);
            }
        }
    }
    Ok(())
}

fn error_response(e: ProxyError, request_id: Option<(Option<&HeaderName>, &HeaderValue)>) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::Full(Some(Bytes::from_static(e.body().as_bytes()))));
    *resp.status_mut() = e.status();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    if e.status() == StatusCode::SERVICE_UNAVAILABLE {
        // Tell clients (and retrying load generators) when to come back, at once.
        h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    if matches!(e, ProxyError::BadRequest | ProxyError::BodyTooLarge) {
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    if let Some((Some(name), v)) = request_id {
        h.insert(name.clone(), v.clone());
    }
    resp
}
