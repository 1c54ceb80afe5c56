//! One client connection, start to end, in one task: read a request head, rewrite it,
//! pick a backend, send, relay the response, and again (keep-alive, pipelining).
//!
//! The task owns the client socket and, during an exchange, the upstream socket: bytes
//! move between them with no channel and no other task involved, which is what makes
//! the data path cheap. Bodies keep their framing (Content-Length, chunked, until close)
//! and are copied through one pooled buffer. An idle connection holds no buffer at all.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use drove_balancer::{Backend, InFlight, Outcome, PickContext};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::error::ProxyError;
use crate::h1::{self, Chunked, Framing, Method, Reject, RequestHead};
use crate::log::Entry;
use crate::sock::{Buf, ClientIo, Sock};
use crate::upstream::{ConnectError, Pool};
use crate::{HashKey, Proxy};

/// Tries that found a pooled connection already closed are retried for free, up to this.
const MAX_STALE_RETRIES: u32 = 4;

/// An idempotent request with a Content-Length body up to this size is read whole before
/// it is sent, so it can be replayed on another backend (like nginx's request
/// buffering and HAProxy's `http-buffer-request`, for small bodies only: larger ones
/// stream, and are not retried once sent).
const MAX_REPLAY_BODY: u64 = 16 * 1024;

/// Per-worker state shared by its connections.
pub(crate) struct Worker {
    pub(crate) proxy: Proxy,
    pub(crate) pool: Pool,
    /// `X-Drove-Instance: web.2\r\n` lines per backend key: no formatting per response.
    instance_lines: RefCell<HashMap<u64, Rc<[u8]>>>,
    /// Request-id generator state (xorshift; per worker, so no lock).
    rid: Cell<u64>,
    /// Client connections open on this worker, and a wake-up when that reaches 0
    /// (graceful shutdown waits for it).
    pub(crate) open: Cell<usize>,
    pub(crate) all_closed: tokio::sync::Notify,
}

/// A client connection counted as open (worker and metrics) for as long as it lives.
pub(crate) struct OpenConnection(Rc<Worker>);

impl OpenConnection {
    pub(crate) fn new(w: &Rc<Worker>) -> OpenConnection {
        w.proxy.stats.connection_opened();
        w.open.set(w.open.get() + 1);
        OpenConnection(w.clone())
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        let w = &self.0;
        w.proxy.stats.connection_closed();
        w.open.set(w.open.get() - 1);
        if w.open.get() == 0 {
            w.all_closed.notify_waiters();
        }
    }
}

impl Worker {
    pub(crate) fn new(proxy: Proxy) -> Rc<Worker> {
        let seed = (std::process::id() as u64) << 32
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1);
        let w = Rc::new(Worker {
            proxy,
            pool: Pool::default(),
            instance_lines: RefCell::new(HashMap::new()),
            rid: Cell::new(seed | 1),
            open: Cell::new(0),
            all_closed: tokio::sync::Notify::new(),
        });
        // Sweeper: closes idle upstream connections that are too old or whose backend
        // left rotation (removed or drained).
        let weak = Rc::downgrade(&w);
        tokio::task::spawn_local(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                tick.tick().await;
                let Some(w) = weak.upgrade() else { return };
                let live: Vec<(u64, bool)> = w
                    .proxy
                    .balancer
                    .snapshot()
                    .iter()
                    .map(|b| (b.key(), b.is_enabled()))
                    .collect();
                w.pool
                    .sweep(|k| live.iter().any(|&(key, en)| key == k && en));
            }
        });
        w
    }

    fn new_request_id(&self) -> [u8; 16] {
        let mut x = self.rid.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rid.set(x);
        const HEX: &[u8; 16] = b"0123456789abcdef";
        std::array::from_fn(|i| HEX[((x >> (60 - 4 * i)) & 0xf) as usize])
    }

    fn instance_line(&self, b: &Backend) -> Option<Rc<[u8]>> {
        let name = self.proxy.settings.instance_header.as_ref()?;
        let mut m = self.instance_lines.borrow_mut();
        Some(
            m.entry(b.key())
                .or_insert_with(|| {
                    let mut v = Vec::with_capacity(name.as_str().len() + b.id().len() + 4);
                    v.extend_from_slice(name.as_str().as_bytes());
                    v.extend_from_slice(b": ");
                    v.extend(
                        b.id()
                            .bytes()
                            .filter(|c| c.is_ascii_graphic() || *c == b' '),
                    );
                    v.extend_from_slice(b"\r\n");
                    v.into()
                })
                .clone(),
        )
    }
}

/// The client side of a connection.
pub(crate) struct Client<S = Sock> {
    sock: S,
    /// Received, not yet consumed bytes; an empty, unallocated buffer while idle.
    buf: Buf,
    /// The peer's address (IPv4-mapped IPv6 as IPv4), and as text.
    peer: IpAddr,
    peer_ip: h1::IpText,
    trusted: bool,
    /// TCP_NODELAY was set (on the first reuse of the connection).
    nodelay: bool,
}

impl<S: ClientIo> Client<S> {
    /// A just-accepted connection from `peer`.
    pub(crate) fn new(w: &Worker, sock: S, peer: SocketAddr) -> Client<S> {
        let ip = canonical(peer.ip());
        Client {
            sock,
            buf: Buf::with_capacity(0),
            peer: ip,
            peer_ip: h1::IpText::of(ip),
            trusted: w
                .proxy
                .settings
                .trusted_proxies
                .iter()
                .any(|c| c.contains(ip)),
            nodelay: false,
        }
    }

    /// TCP_NODELAY once it matters: before a second write of one response, or when the
    /// connection is reused (a single-write response on a new connection never waits for
    /// Nagle, so `Connection: close` traffic saves the syscall, as with nginx).
    fn nodelay(&mut self) {
        if !self.nodelay {
            self.sock.set_nodelay();
            self.nodelay = true;
        }
    }
    fn pending(&self) -> &[u8] {
        self.buf.filled()
    }
    fn consume(&mut self, n: usize) {
        self.buf.consume(n);
    }
    /// Reads more bytes; 0 = EOF.
    async fn fill(&mut self) -> io::Result<usize> {
        self.sock.read(&mut self.buf).await
    }
}

/// Serves one client connection until it closes, times out, or drove shuts down.
///
/// Not an `async fn`, for memory: an async fn stores its arguments and then moves them
/// into locals, so a client passed to one is stored twice in every idle connection's
/// task; an `async move` block uses what it captured in place. The client is built by
/// the caller for the same reason.
pub(crate) fn serve<S: ClientIo + 'static>(
    w: Rc<Worker>,
    client: Client<S>,
    shutdown: watch::Receiver<bool>,
) -> impl std::future::Future<Output = ()> {
    let (mut client, mut shutdown) = (client, shutdown);
    let open = OpenConnection::new(&w);
    async move {
        let _open = open;
        let settings = &*w.proxy.settings;
        // A new connection's first request has usually arrived with it (clients write right
        // after connecting): read it now, before any timer, shutdown watch or epoll
        // registration is set up for waiting.
        // (In a block: a local alive across the awaits below would enlarge every idle
        // connection's task.)
        {
            let mut first = w.pool.input();
            match client.sock.try_read(&mut first) {
                Ok(Some(n)) if n > 0 => client.buf = first,
                Ok(None) => w.pool.recycle_input(first),
                // EOF or an error before the first byte: nothing to answer.
                Ok(Some(_)) | Err(_) => {
                    w.pool.recycle_input(first);
                    return;
                }
            }
        }
        loop {
            if client.pending().is_empty() {
                // Idle between requests: give the buffer back, wait for bytes (idle timeout)
                // or for shutdown. Only then take a buffer: an idle connection holds none.
                w.pool
                    .recycle_input(std::mem::replace(&mut client.buf, Buf::with_capacity(0)));
                if *shutdown.borrow() {
                    return;
                }
                let idle_until = Instant::now() + settings.idle_timeout;
                loop {
                    let read = tokio::select! {
                        r = tokio::time::timeout_at(idle_until, client.sock.read_fresh(|| w.pool.input())) => r,
                        _ = shutdown.changed() => return,
                    };
                    match read {
                        Ok(Ok((buf, Some(n)))) if n > 0 => {
                            client.buf = buf;
                            break;
                        }
                        // Spurious readiness: wait again.
                        Ok(Ok((buf, None))) => w.pool.recycle_input(buf),
                        _ => return,
                    }
                }
            }
            // The head must be complete within the header timeout (slowloris).
            let deadline = Instant::now() + settings.header_timeout;
            let head = loop {
                match h1::parse_request(client.pending(), settings.max_body_size) {
                    Ok(Some(h)) => break h,
                    Ok(None) if client.pending().len() >= settings.max_header_size => {
                        Box::pin(reject(&w, &mut client, Reject::TooLarge)).await;
                        return;
                    }
                    Ok(None) => match tokio::time::timeout_at(deadline, client.fill()).await {
                        Ok(Ok(n)) if n > 0 => {}
                        _ => return,
                    },
                    Err(r) => {
                        Box::pin(reject(&w, &mut client, r)).await;
                        return;
                    }
                }
            };
            if head.len > settings.max_header_size {
                Box::pin(reject(&w, &mut client, Reject::TooLarge)).await;
                return;
            }
            // Boxed: the exchange's state is large (timers, buffers, nested futures) and
            // would otherwise sit in every idle connection's task; boxing per request costs
            // one allocation and keeps an idle connection to a few hundred bytes.
            let shutting_down = *shutdown.borrow();
            let keep = Box::pin(exchange(&w, &mut client, head, shutting_down)).await;
            if keep {
                client.nodelay();
            }
            if !keep {
                // With unread input, close would answer it with a reset that can destroy the
                // response still in flight: half-close first. Without, a plain close suffices.
                if !client.pending().is_empty() {
                    client.sock.shutdown_write();
                }
                w.pool
                    .recycle_input(std::mem::replace(&mut client.buf, Buf::with_capacity(0)));
                return;
            }
        }
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

async fn reject<S: ClientIo>(w: &Worker, client: &mut Client<S>, r: Reject) {
    let e = match r {
        Reject::BadRequest => ProxyError::BadRequest,
        Reject::TooLarge => ProxyError::HeaderTooLarge,
        Reject::BodyTooLarge => ProxyError::BodyTooLarge,
    };
    w.proxy.stats.request();
    w.proxy.stats.rejected.fetch_add(1, Relaxed);
    w.proxy.stats.response(e.status().as_u16());
    let bytes = error_bytes(e, None, true);
    let _ = client.sock.write_all(&bytes).await;
    client.sock.shutdown_write();
}

/// A complete error response of drove's own.
fn error_bytes(e: ProxyError, request_id: Option<(&[u8], &[u8])>, close: bool) -> Vec<u8> {
    let status = e.status();
    // Tell clients (and retrying load generators) when to come back, at once.
    let retry = (status == http::StatusCode::SERVICE_UNAVAILABLE).then_some(1);
    own_response(status, e.body().as_bytes(), retry, request_id, close)
}

/// drove's 429 for a request over a rate limit, with `Retry-After` in whole seconds.
fn too_many_requests(
    retry_after: Duration,
    request_id: Option<(&[u8], &[u8])>,
    close: bool,
) -> Vec<u8> {
    let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
    own_response(
        http::StatusCode::TOO_MANY_REQUESTS,
        b"429 Too Many Requests: rate limit exceeded\n",
        Some(secs.max(1)),
        request_id,
        close,
    )
}

/// A response drove writes itself: status, a short text body, optional `Retry-After`,
/// the request id, `Connection: close` when the connection ends after it.
fn own_response(
    status: http::StatusCode,
    body: &[u8],
    retry_after: Option<u64>,
    request_id: Option<(&[u8], &[u8])>,
    close: bool,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: ");
    out.extend_from_slice(h1::itoa_buf(body.len() as u64).as_bytes_mut());
    out.extend_from_slice(b"\r\n");
    if let Some(secs) = retry_after {
        out.extend_from_slice(b"Retry-After: ");
        out.extend_from_slice(h1::itoa_buf(secs).as_bytes_mut());
        out.extend_from_slice(b"\r\n");
    }
    if let Some((name, value)) = request_id {
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

/// Logged fields, captured only when the access log is on.
struct LogHead {
    method: String,
    target: String,
    version: &'static str,
    referer: String,
    user_agent: String,
}

/// The cookie `name`'s value in the request's Cookie headers.
fn cookie<'b>(buf: &'b [u8], head: &RequestHead, name: &[u8]) -> Option<&'b [u8]> {
    for ((ns, ne), (vs, ve)) in &head.headers {
        if !h1::eq(&buf[*ns..*ne], b"cookie") {
            continue;
        }
        for pair in buf[*vs..*ve].split(|&b| b == b';') {
            let pair = pair.trim_ascii_start();
            if let Some(rest) = pair.strip_prefix(name) {
                if let Some(v) = rest.strip_prefix(b"=") {
                    let v = v.trim_ascii_end();
                    return Some(
                        v.strip_prefix(b"\"")
                            .and_then(|v| v.strip_suffix(b"\""))
                            .unwrap_or(v),
                    );
                }
            }
        }
    }
    None
}

/// The client's IP: the peer, or — from a trusted proxy — the right-most address of
/// X-Forwarded-For that is not itself trusted.
fn client_ip(buf: &[u8], head: &RequestHead, peer: IpAddr, trusted: &[crate::Cidr]) -> IpAddr {
    let mut hops: Vec<&[u8]> = Vec::new();
    for ((ns, ne), (vs, ve)) in &head.headers {
        if h1::eq(&buf[*ns..*ne], b"x-forwarded-for") {
            hops.extend(buf[*vs..*ve].split(|&b| b == b','));
        }
    }
    let mut ip = peer;
    for hop in hops.iter().rev() {
        match std::str::from_utf8(hop.trim_ascii())
            .ok()
            .and_then(|s| s.parse::<IpAddr>().ok())
        {
            Some(addr) => {
                ip = canonical(addr);
                if !trusted.iter().any(|c| c.contains(ip)) {
                    break;
                }
            }
            None => break,
        }
    }
    ip
}

/// How an attempt to get a response head ended badly.
enum TryError {
    /// Nothing was sent, or a pooled connection was found closed before any response
    /// byte: the request can go elsewhere whatever its method.
    Stale,
    /// The backend did not answer in time.
    Timeout,
    /// The connection broke or the response was malformed after the request was sent.
    Broken,
    /// The client went away while its body was being sent.
    ClientGone,
}

/// One request/response exchange. Returns whether the client connection stays open.
async fn exchange<S: ClientIo>(
    w: &Worker,
    client: &mut Client<S>,
    head: RequestHead,
    shutting_down: bool,
) -> bool {
    let start = Instant::now();
    let proxy = &w.proxy;
    let settings = &*proxy.settings;
    let stats = &proxy.stats;
    stats.request();

    // Everything needed from the head is taken now; then its bytes are consumed.
    let buf = client.pending();
    let peer_ip = client.peer;
    let cip = if client.trusted {
        client_ip(buf, &head, peer_ip, &settings.trusted_proxies)
    } else {
        peer_ip
    };
    let cip_bytes;
    let cip_ref: &[u8] = if cip == peer_ip {
        client.peer_ip.as_bytes()
    } else {
        cip_bytes = h1::IpText::of(cip);
        cip_bytes.as_bytes()
    };
    let rid_name = settings
        .request_id_header
        .as_ref()
        .map(|n| n.as_str().as_bytes());
    let rid_value: Option<h1::InlineBytes<200>> =
        rid_name.map(|name| match head.header(buf, name) {
            Some(v) if !v.is_empty() && v.len() <= 200 => h1::InlineBytes::new(v),
            _ => h1::InlineBytes::new(&w.new_request_id()),
        });
    let sticky: Option<String> = settings
        .sticky
        .as_ref()
        .and_then(|s| cookie(buf, &head, s.name.as_bytes()))
        .and_then(|v| std::str::from_utf8(v).ok())
        .map(str::to_owned);
    let hash = match &settings.hash_key {
        None => None,
        Some(HashKey::Header(name)) => head
            .header(buf, name.as_str().as_bytes())
            .map(drove_balancer::hash_bytes),
        Some(HashKey::Cookie(name)) => {
            cookie(buf, &head, name.as_bytes()).map(drove_balancer::hash_bytes)
        }
        Some(HashKey::Path) => Some(drove_balancer::hash_bytes(head.path(buf))),
        Some(HashKey::ClientIp) => Some(drove_balancer::hash_ip(cip)),
    };
    // Rate limits: the longest matching route prefix (routes are sorted longest first).
    let path = head.path(buf);
    if let Some(route) = settings
        .routes
        .iter()
        .find(|r| path.starts_with(r.prefix.as_bytes()))
    {
        let key = match &route.key {
            crate::LimitKey::ClientIp => drove_balancer::hash_ip(cip),
            crate::LimitKey::Header(name) => head
                .header(buf, name.as_str().as_bytes())
                .map_or(0, drove_balancer::hash_bytes),
            crate::LimitKey::Cookie(name) => {
                cookie(buf, &head, name.as_bytes()).map_or(0, drove_balancer::hash_bytes)
            }
        };
        if let Err(refused) = route.limiter.check(key).await {
            stats.rate_limited.fetch_add(1, Relaxed);
            stats.response(429);
            // The body (if any) is not read: the connection cannot be reused after it.
            let close = !head.keep_alive || head.framing != Framing::None;
            let bytes = too_many_requests(
                refused.retry_after,
                rid_name.zip(rid_value.as_ref().map(|v| v.as_bytes())),
                close,
            );
            client.consume(head.len);
            let _ = client.sock.write_all(&bytes).await;
            return !close;
        }
    }
    let log_head = proxy.log.enabled().then(|| LogHead {
        method: String::from_utf8_lossy(head.method_bytes(buf)).into_owned(),
        target: String::from_utf8_lossy(head.target(buf)).into_owned(),
        version: if head.http10 { "HTTP/1.0" } else { "HTTP/1.1" },
        referer: head
            .header(buf, b"referer")
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default(),
        user_agent: head
            .header(buf, b"user-agent")
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default(),
    });
    let mut up_head = w.pool.buffer();
    h1::write_request(
        buf,
        &head,
        &h1::RequestRewrite {
            peer_ip: client.peer_ip.as_bytes(),
            client_ip: cip_ref,
            trusted: client.trusted,
            request_id: rid_name.zip(rid_value.as_ref().map(|v| v.as_bytes())),
            https: client.sock.is_tls(),
        },
        &mut up_head,
    );
    let method = head.method;
    let mut framing = head.framing;
    let client_http10 = head.http10;
    let mut client_keep = head.keep_alive && !shutting_down;
    let upgrade = head.upgrade;
    let expect_continue = head.expect_continue;
    let head_len = head.len;
    drop(head);
    let mut consumed = head_len;
    if let Framing::Length(n) = framing {
        if n <= MAX_REPLAY_BODY
            && method.idempotent()
            && settings.retries > 0
            && !upgrade
            && !expect_continue
        {
            // Read the whole (small) body now and send it in the same write as the head:
            // the request becomes replayable like a body-less one.
            let need = head_len + n as usize;
            while client.pending().len() < need {
                match tokio::time::timeout(settings.idle_timeout, client.fill()).await {
                    Ok(Ok(k)) if k > 0 => {}
                    _ => {
                        w.pool.recycle(up_head);
                        return false;
                    }
                }
            }
            up_head.extend_from_slice(&client.pending()[head_len..need]);
            consumed = need;
            framing = Framing::None;
        }
    }
    client.consume(consumed);

    let replayable = framing == Framing::None && !upgrade;
    let retry_sent = replayable && method.idempotent() && settings.retries > 0;
    let ctx = PickContext {
        client_ip: cip,
        hash,
        sticky: sticky.as_deref(),
    };
    let deadline = start + settings.response_timeout;
    let mut tried: Vec<u64> = Vec::new();
    let mut retries = 0u32;
    let mut stale = 0u32;
    let mut last_err = ProxyError::NoBackend;
    let mut sent_continue = false;
    let balancer = &proxy.balancer;
    let rid = rid_name.zip(rid_value.as_ref().map(|v| v.as_bytes()));

    let outcome = loop {
        let Some(backend) = balancer.pick(&ctx, &tried) else {
            if last_err == ProxyError::NoBackend {
                stats.no_backend.fetch_add(1, Relaxed);
            }
            break Err(last_err);
        };
        let mut in_flight = balancer.start(&backend);
        let try_start = Instant::now();
        let try_deadline = (try_start + settings.per_try_timeout).min(deadline);

        let pooled = w.pool.take(backend.key());
        let warm = pooled.is_some();
        let up = match pooled {
            Some(s) => s,
            None => {
                let budget = settings
                    .connect_timeout
                    .min(try_deadline.saturating_duration_since(try_start));
                match Pool::connect(backend.addr(), budget).await {
                    Ok(s) => s,
                    Err(e) => {
                        stats.connect_errors.fetch_add(1, Relaxed);
                        tracing::debug!(backend = %backend.id(), error = ?e, "connect failed");
                        let outcome = match e {
                            ConnectError::Timeout => Outcome::TimedOut,
                            ConnectError::Io(_) => Outcome::ConnectFailed,
                        };
                        in_flight.finish(outcome, try_start.elapsed());
                        tried.push(backend.key());
                        last_err = ProxyError::ConnectFailed;
                        // Never reached a backend: safe to retry whatever the method, and
                        // exempt from the budget (it costs the fleet nothing).
                        if retries < settings.retries && Instant::now() < deadline {
                            retries += 1;
                            stats.retries.fetch_add(1, Relaxed);
                            continue;
                        }
                        break Err(last_err);
                    }
                }
            }
        };

        // Send the request (and its body) and read the response head.
        if expect_continue
            && framing != Framing::None
            && client.pending().is_empty()
            && !sent_continue
        {
            // Like nginx, drove answers `Expect: 100-continue` itself before reading the body.
            sent_continue = true;
            let _ = client
                .sock
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .await;
        }
        let send_start = Instant::now();
        let mut ubuf = w.pool.input();
        let result = tokio::time::timeout_at(
            try_deadline,
            send_and_read_head(
                client,
                &up,
                &up_head,
                framing,
                method,
                &mut ubuf,
                warm && method.idempotent(),
                settings.idle_timeout,
            ),
        )
        .await
        .unwrap_or(Err(TryError::Timeout));
        let rhead = match result {
            Ok(h) => h,
            Err(e) => {
                w.pool.recycle_input(ubuf);
                match e {
                    TryError::Stale => {
                        in_flight.finish(Outcome::Cancelled, try_start.elapsed());
                        stale += 1;
                        if stale <= MAX_STALE_RETRIES {
                            continue;
                        }
                        last_err = ProxyError::Broken;
                        break Err(last_err);
                    }
                    TryError::ClientGone => {
                        in_flight.finish(Outcome::Cancelled, try_start.elapsed());
                        w.pool.recycle(up_head);
                        return false;
                    }
                    TryError::Timeout => {
                        stats.timeouts.fetch_add(1, Relaxed);
                        in_flight.finish(Outcome::TimedOut, try_start.elapsed());
                        last_err = ProxyError::Timeout;
                    }
                    TryError::Broken => {
                        in_flight.finish(Outcome::Broken, try_start.elapsed());
                        last_err = ProxyError::Broken;
                    }
                }
                tried.push(backend.key());
                // Sent: retry only if it can be replayed, within the budget.
                if retry_sent
                    && retries < settings.retries
                    && Instant::now() < deadline
                    && stats.withdraw_retry()
                {
                    retries += 1;
                    stats.retries.fetch_add(1, Relaxed);
                    continue;
                }
                break Err(last_err);
            }
        };
        let status = rhead.status;
        let elapsed = send_start.elapsed();
        if settings.retry_on_5xx
            && matches!(status, 502..=504)
            && retry_sent
            && retries < settings.retries
            && Instant::now() < deadline
            && stats.withdraw_retry()
        {
            in_flight.finish(Outcome::Http5xx, elapsed);
            w.pool.recycle_input(ubuf);
            tried.push(backend.key());
            retries += 1;
            stats.retries.fetch_add(1, Relaxed);
            continue;
        }
        // Latency for the EWMA excludes connection setup: a fresh connection's first
        // exchange says little about how fast the backend answers (zero = no sample).
        in_flight.record(
            if status >= 500 {
                Outcome::Http5xx
            } else {
                Outcome::Ok
            },
            if warm { elapsed } else { Duration::ZERO },
        );
        backend.responses().record(status, start.elapsed());
        break Ok((backend, in_flight, up, ubuf, rhead, elapsed));
    };
    w.pool.recycle(up_head);

    let (backend, in_flight, up, ubuf, rhead, upstream_time) = match outcome {
        Ok(x) => x,
        Err(e) => {
            let close = !client_keep || framing != Framing::None;
            let bytes = error_bytes(e, rid, close);
            stats.response(e.status().as_u16());
            let _ = client.sock.write_all(&bytes).await;
            log(
                w,
                &log_head,
                cip,
                e.status().as_u16(),
                None,
                None,
                start,
                retries,
                rid,
            );
            // A request whose body was not read cannot be followed by another.
            return !close;
        }
    };
    let status = rhead.status;
    stats.response(status);
    log(
        w,
        &log_head,
        cip,
        status,
        Some(&backend),
        Some((status, upstream_time)),
        start,
        retries,
        rid,
    );
    relay(
        w,
        client,
        &backend,
        in_flight,
        up,
        ubuf,
        rhead,
        &mut client_keep,
        client_http10,
        upgrade,
        sticky.as_deref(),
        rid,
    )
    .await;
    client_keep
}

/// Writes the request head and body to `up` and reads the response head into `ubuf`
/// (1xx other than 101 are skipped). `stale_ok`: the connection came from the pool and the
/// request is idempotent, so a write error or a close before any response byte means
/// "the pooled connection was already dead" and the request may go elsewhere.
#[allow(clippy::too_many_arguments)]
async fn send_and_read_head<S: ClientIo>(
    client: &mut Client<S>,
    up: &Sock,
    head: &[u8],
    framing: Framing,
    method: Method,
    ubuf: &mut Buf,
    stale_ok: bool,
    body_timeout: Duration,
) -> Result<h1::ResponseHead, TryError> {
    let warm = stale_ok;
    match framing {
        Framing::None => {
            if up.write_all(head).await.is_err() {
                return Err(if warm {
                    TryError::Stale
                } else {
                    TryError::Broken
                });
            }
        }
        _ => {
            send_body(client, up, head, framing, body_timeout).await?;
        }
    }
    loop {
        match h1::parse_response(ubuf.filled(), method) {
            Ok(Some(h)) if (100..200).contains(&h.status) && h.status != 101 => {
                ubuf.consume(h.len);
                continue;
            }
            Ok(Some(h)) => return Ok(h),
            Ok(None) => {}
            Err(_) => return Err(TryError::Broken),
        }
        if ubuf.len() >= 64 * 1024 {
            return Err(TryError::Broken);
        }
        match up.read(ubuf).await {
            Ok(0) | Err(_) if ubuf.is_empty() && warm && framing == Framing::None => {
                return Err(TryError::Stale)
            }
            Ok(0) | Err(_) => return Err(TryError::Broken),
            Ok(_) => {}
        }
    }
}

/// Sends the head and the client's body (Content-Length or chunked, passed through).
async fn send_body<S: ClientIo>(
    client: &mut Client<S>,
    up: &Sock,
    head: &[u8],
    framing: Framing,
    body_timeout: Duration,
) -> Result<(), TryError> {
    let mut first = true;
    let mut left = match framing {
        Framing::Length(n) => n,
        _ => u64::MAX,
    };
    let mut chunked = Chunked::default();
    loop {
        // Bytes of the body already received.
        let pending = client.pending();
        let take = match framing {
            Framing::Length(_) => (left.min(pending.len() as u64)) as usize,
            Framing::Chunked => chunked
                .feed(pending, |_| {})
                .map_err(|_| TryError::ClientGone)?,
            _ => 0,
        };
        if first {
            // The head and the first body bytes in one write.
            let mut v = Vec::with_capacity(head.len() + take);
            v.extend_from_slice(head);
            v.extend_from_slice(&pending[..take]);
            up.write_all(&v).await.map_err(|_| TryError::Broken)?;
            first = false;
        } else if take > 0 {
            up.write_all(&pending[..take])
                .await
                .map_err(|_| TryError::Broken)?;
        }
        client.consume(take);
        if framing == Framing::Length(0) {
            return Ok(());
        }
        if let Framing::Length(_) = framing {
            left -= take as u64;
            if left == 0 {
                return Ok(());
            }
        } else if chunked.done() {
            return Ok(());
        }
        match tokio::time::timeout(body_timeout, client.fill()).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return Err(TryError::ClientGone),
        }
    }
}

/// Relays the response: head (rewritten) and body in its framing; returns the upstream
/// connection to the pool when the exchange ended cleanly. Sets `client_keep` false when
/// the client connection cannot continue.
#[allow(clippy::too_many_arguments)]
async fn relay<S: ClientIo>(
    w: &Worker,
    client: &mut Client<S>,
    backend: &Backend,
    in_flight: InFlight,
    up: Sock,
    mut ubuf: Buf,
    rhead: h1::ResponseHead,
    client_keep: &mut bool,
    client_http10: bool,
    upgrade: bool,
    sticky_seen: Option<&str>,
    rid: Option<(&[u8], &[u8])>,
) {
    let settings = &*w.proxy.settings;
    // Headers drove adds.
    let mut extra = w.pool.buffer();
    if let Some(line) = w.instance_line(backend) {
        extra.extend_from_slice(&line);
    }
    if let Some((name, value)) = rid {
        extra.extend_from_slice(name);
        extra.extend_from_slice(b": ");
        extra.extend_from_slice(value);
        extra.extend_from_slice(b"\r\n");
    }
    if let Some(s) = &settings.sticky {
        if sticky_seen != Some(backend.sticky_token()) {
            extra.extend_from_slice(b"Set-Cookie: ");
            extra.extend_from_slice(s.name.as_bytes());
            extra.push(b'=');
            extra.extend_from_slice(backend.sticky_token().as_bytes());
            extra.extend_from_slice(b"; Path=/; HttpOnly; SameSite=Lax");
            if let Some(age) = s.max_age {
                extra.extend_from_slice(format!("; Max-Age={}", age.as_secs()).as_bytes());
            }
            extra.extend_from_slice(b"\r\n");
        }
    }
    let tunnel = rhead.status == 101 && upgrade;
    if rhead.status == 101 && !upgrade {
        // A 101 nobody asked for cannot be relayed.
        *client_keep = false;
        let _ = client
            .sock
            .write_all(&error_bytes(ProxyError::Broken, rid, true))
            .await;
        w.pool.recycle_input(ubuf);
        return;
    }
    let dechunk = client_http10 && rhead.framing == Framing::Chunked;
    if rhead.framing == Framing::Close || dechunk {
        *client_keep = false;
    }
    let mut out = w.pool.buffer();
    h1::write_response(
        ubuf.filled(),
        &rhead,
        &extra,
        !*client_keep && !tunnel,
        client_http10,
        dechunk,
        &mut out,
    );
    w.pool.recycle(extra);
    ubuf.consume(rhead.len);

    if tunnel {
        // Both sides become one byte stream; the attempt stays in flight (least_conn
        // counts the tunnel) until either side closes.
        *client_keep = false;
        out.extend_from_slice(ubuf.filled());
        ubuf.clear();
        let ok = client.sock.write_all(&out).await.is_ok();
        w.pool.recycle(out);
        if !ok {
            w.pool.recycle_input(ubuf);
            return;
        }
        let leftover = client.pending().to_vec();
        client.consume(leftover.len());
        if !leftover.is_empty() && up.write_all(&leftover).await.is_err() {
            w.pool.recycle_input(ubuf);
            return;
        }
        client.nodelay();
        let stats = w.proxy.stats.clone();
        stats.active_tunnels.fetch_add(1, Relaxed);
        let mut other = w.pool.input();
        crate::sock::tunnel(&client.sock, &up, (&mut ubuf, &mut other)).await;
        stats.active_tunnels.fetch_sub(1, Relaxed);
        w.pool.recycle_input(other);
        w.pool.recycle_input(ubuf);
        drop(in_flight);
        return;
    }

    let mut reusable = rhead.keep_alive;
    match rhead.framing {
        Framing::None => {
            if !ubuf.is_empty() {
                reusable = false; // bytes after a body-less response: not trustworthy
            }
            if client.sock.write_all(&out).await.is_err() {
                *client_keep = false;
            }
        }
        Framing::Length(n) => {
            let mut left = n;
            let take = left.min(ubuf.len() as u64) as usize;
            out.extend_from_slice(&ubuf.filled()[..take]);
            left -= take as u64;
            if take < ubuf.len() {
                reusable = false;
            }
            ubuf.clear();
            if client.sock.write_all(&out).await.is_err() {
                *client_keep = false;
                reusable = false;
                left = 0;
            }
            if left > 0 {
                client.nodelay();
            }
            while left > 0 {
                match up.read(&mut ubuf).await {
                    Ok(0) | Err(_) => {
                        // The backend broke mid-body: the client cannot be told with a
                        // status any more; closing is the only honest signal.
                        *client_keep = false;
                        reusable = false;
                        break;
                    }
                    Ok(_) => {
                        let take = left.min(ubuf.len() as u64) as usize;
                        left -= take as u64;
                        if take < ubuf.len() {
                            reusable = false;
                        }
                        if client.sock.write_all(&ubuf.filled()[..take]).await.is_err() {
                            *client_keep = false;
                            reusable = false;
                            break;
                        }
                        ubuf.clear();
                    }
                }
            }
        }
        Framing::Chunked => {
            let mut chunked = Chunked::default();
            let mut first = true;
            let mut pieces = Vec::new();
            loop {
                pieces.clear();
                let Ok(n) = chunked.feed(ubuf.filled(), |p| pieces.push(p)) else {
                    *client_keep = false;
                    reusable = false;
                    break;
                };
                if dechunk {
                    let mut at = 0;
                    for p in &pieces {
                        if p.data {
                            out.extend_from_slice(&ubuf.filled()[at..at + p.len]);
                        }
                        at += p.len;
                    }
                } else {
                    out.extend_from_slice(&ubuf.filled()[..n]);
                }
                if n < ubuf.len() {
                    reusable = false;
                }
                ubuf.clear();
                if (first || !out.is_empty()) && client.sock.write_all(&out).await.is_err() {
                    *client_keep = false;
                    reusable = false;
                    break;
                }
                first = false;
                out.clear();
                if chunked.done() {
                    break;
                }
                client.nodelay();
                match up.read(&mut ubuf).await {
                    Ok(0) | Err(_) => {
                        *client_keep = false;
                        reusable = false;
                        break;
                    }
                    Ok(_) => {}
                }
            }
        }
        Framing::Close => {
            reusable = false;
            out.extend_from_slice(ubuf.filled());
            ubuf.clear();
            if client.sock.write_all(&out).await.is_ok() {
                client.nodelay();
                loop {
                    match up.read(&mut ubuf).await {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {
                            if client.sock.write_all(ubuf.filled()).await.is_err() {
                                break;
                            }
                            ubuf.clear();
                        }
                    }
                }
            }
        }
    }
    w.pool.recycle(out);
    w.pool.recycle_input(ubuf);
    if reusable {
        w.pool.put(backend.key(), up);
    }
    drop(in_flight);
}

#[allow(clippy::too_many_arguments)]
fn log(
    w: &Worker,
    head: &Option<LogHead>,
    client: IpAddr,
    status: u16,
    backend: Option<&Backend>,
    upstream: Option<(u16, Duration)>,
    start: Instant,
    retries: u32,
    rid: Option<(&[u8], &[u8])>,
) {
    let Some(h) = head else { return };
    w.proxy.log.write(&Entry {
        client,
        method: &h.method,
        target: &h.target,
        version: h.version,
        status,
        bytes: None,
        referer: &h.referer,
        user_agent: &h.user_agent,
        upstream: backend.map(|b| b.addr()),
        upstream_id: backend.map(|b| b.id()),
        upstream_status: upstream.map(|u| u.0),
        upstream_time: upstream.map(|u| u.1),
        total_time: start.elapsed(),
        retries,
        request_id: rid
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
            .unwrap_or(""),
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An idle connection's memory is mostly its task's future: keep it small.
    #[tokio::test]
    async fn idle_connection_future_is_small() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let s = tokio::net::TcpStream::connect(l.local_addr().unwrap())
            .await
            .unwrap();
        let b = drove_balancer::Balancer::new(Default::default());
        let proxy = Proxy::new(b, Default::default()).unwrap();
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async move {
                let w = Worker::new(proxy);
                let (_tx, rx) = watch::channel(false);
                let sock = Sock::new(s).unwrap();
                let client = Client::new(&w, sock, "127.0.0.1:1".parse().unwrap());
                let fut = serve(w, client, rx);
                let size = std::mem::size_of_val(&fut);
                assert!(size < 1024, "serve future is {size} bytes");
                eprintln!("serve future: {size} bytes");
            })
            .await;
    }
}
