//! The in-process test seam: a proxy served on a loopback port by `drove_proxy::serve`
//! (its real workers, threads and sockets), in front of scripted backends that record
//! every request they receive byte for byte.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use drove_balancer::{BackendSpec, Balancer, BalancerSettings};
use drove_proxy::{AccessLogFormat, Proxy, ProxySettings};

/// Settings for these tests: short timeouts so failures show quickly.
pub fn settings() -> ProxySettings {
    ProxySettings {
        connect_timeout: Duration::from_millis(500),
        header_timeout: Duration::from_secs(2),
        response_timeout: Duration::from_secs(5),
        per_try_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(5),
        shutdown_grace: Duration::from_secs(1),
        retries: 2,
        retry_budget_percent: 100,
        retry_on_5xx: false,
        instance_header: Some(http::HeaderName::from_static("x-drove-instance")),
        request_id_header: None,
        trusted_proxies: Vec::new(),
        access_log: AccessLogFormat::Off,
        access_log_path: None,
        max_header_size: 16 * 1024,
        max_body_size: 0,
        upgrades: vec!["websocket".into()],
        http2: true,
        http2_max_streams: 128,
        compress: None,
        compress_routes: Vec::new(),
        sticky: None,
        hash_key: None,
        routes: Vec::new(),
        tls: None,
    }
}

/// What a scripted backend does with a request (after reading it whole).
#[derive(Clone)]
pub enum Script {
    /// Answer with these bytes, keep the connection.
    Reply(Vec<u8>),
    /// Answer, then close the connection (without saying so).
    ReplyThenClose(Vec<u8>),
    /// Close without answering.
    Close,
    /// Never answer (keep the connection open).
    Hang,
    /// Send the head, wait, then the body (keep the connection).
    Slowly(Vec<u8>, Duration, Vec<u8>),
    /// Hand the connection to the test (paced streams, holding a connection until the
    /// proxy closes it); the connection ends when the closure returns.
    With(Arc<dyn Fn(&mut TcpStream) + Send + Sync>),
}

/// A backend on a loopback port, one thread per connection.
pub struct Scripted {
    pub addr: SocketAddr,
    /// Every complete request received, raw.
    pub seen: Arc<Mutex<Vec<Vec<u8>>>>,
    /// Bytes received on connections that ended without a complete request.
    pub partial: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Scripted {
    /// How many complete requests it has received.
    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// A backend answering each request with `script(request)`.
    pub fn start(script: impl Fn(&[u8]) -> Script + Send + Sync + 'static) -> Scripted {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let partial = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(script);
        let (s2, p2) = (seen.clone(), partial.clone());
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(conn) = conn else { return };
                let (seen, partial, script) = (s2.clone(), p2.clone(), script.clone());
                std::thread::spawn(move || serve_conn(conn, &*script, &seen, &partial));
            }
        });
        Scripted {
            addr,
            seen,
            partial,
        }
    }

    /// A backend answering every request `200 OK` with `body`, keep-alive.
    pub fn ok(body: &'static str) -> Scripted {
        Scripted::start(move |_| Script::Reply(response(200, body)))
    }

    pub fn requests(&self) -> Vec<Vec<u8>> {
        self.seen.lock().unwrap().clone()
    }
}

/// A script that holds each connection, never answering, until the proxy closes it;
/// each close seen counts in `closed`. Bounded: a connection still open after 20 s is
/// dropped without counting.
pub fn hold(closed: Arc<std::sync::atomic::AtomicUsize>) -> Script {
    Script::With(Arc::new(move |c| {
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut b = [0u8; 1024];
        loop {
            match c.read(&mut b) {
                Ok(0) => {
                    closed.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    return;
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    }))
}

/// `HTTP/1.1 {status}` with a Content-Length body.
pub fn response(status: u16, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status} X\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn serve_conn(
    mut c: TcpStream,
    script: &(dyn Fn(&[u8]) -> Script + Send + Sync),
    seen: &Mutex<Vec<Vec<u8>>>,
    partial: &Mutex<Vec<Vec<u8>>>,
) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    loop {
        // Read one complete request (head + Content-Length or chunked body).
        let n = loop {
            if let Some(n) = complete_request(&buf) {
                break n;
            }
            match c.read(&mut chunk) {
                Ok(0) | Err(_) => {
                    if !buf.is_empty() {
                        partial.lock().unwrap().push(buf);
                    }
                    return;
                }
                Ok(k) => buf.extend_from_slice(&chunk[..k]),
            }
        };
        let req: Vec<u8> = buf.drain(..n).collect();
        seen.lock().unwrap().push(req.clone());
        match script(&req) {
            Script::Reply(r) => {
                if c.write_all(&r).is_err() {
                    return;
                }
            }
            Script::ReplyThenClose(r) => {
                let _ = c.write_all(&r);
                return;
            }
            Script::Slowly(head, pause, body) => {
                if c.write_all(&head).is_err() {
                    return;
                }
                std::thread::sleep(pause);
                if c.write_all(&body).is_err() {
                    return;
                }
            }
            Script::With(f) => {
                f(&mut c);
                return;
            }
            Script::Close => return,
            Script::Hang => {
                std::thread::sleep(Duration::from_secs(30));
                return;
            }
        }
    }
}

/// The length of the complete request at the start of `buf`, if it is complete.
pub fn complete_request(buf: &[u8]) -> Option<usize> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    let head = match req.parse(buf).ok()? {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => return None,
    };
    let header = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).to_string())
    };
    if let Some(cl) = header("content-length") {
        let n = head + cl.trim().parse::<usize>().ok()?;
        return (buf.len() >= n).then_some(n);
    }
    if header("transfer-encoding").is_some() {
        // Find the end of a chunked body: the last chunk, any trailer lines, and the
        // empty line (test bodies hold no "\r\n0\r\n" of their own).
        let body = &buf[head..];
        let last = if body.starts_with(b"0\r\n") {
            0
        } else {
            body.windows(5).position(|w| w == b"\r\n0\r\n")? + 2
        };
        let end = body[last..].windows(4).position(|w| w == b"\r\n\r\n")?;
        return Some(head + last + end + 4);
    }
    Some(head)
}

/// A proxy in front of `backends` (round robin), served until the guard drops.
pub struct ProxyUnderTest {
    pub addr: SocketAddr,
    pub proxy: Proxy,
    pub balancer: Arc<Balancer>,
    stop: tokio::sync::watch::Sender<bool>,
    rt: tokio::runtime::Runtime,
}

impl ProxyUnderTest {
    pub fn start(backends: &[&Scripted], settings: ProxySettings) -> ProxyUnderTest {
        Self::with_balancer(backends, settings, BalancerSettings::default())
    }

    pub fn with_balancer(
        backends: &[&Scripted],
        settings: ProxySettings,
        bs: BalancerSettings,
    ) -> ProxyUnderTest {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let balancer = Balancer::new(bs);
        balancer.set_backends(
            backends
                .iter()
                .enumerate()
                .map(|(i, b)| BackendSpec {
                    id: format!("b{}", i + 1),
                    ..BackendSpec::new(b.addr)
                })
                .collect(),
        );
        let listeners = drove_proxy::bind("127.0.0.1:0".parse().unwrap(), 1, false).unwrap();
        let addr = listeners[0].local_addr().unwrap();
        let proxy = Proxy::new(balancer.clone(), settings).unwrap();
        let (stop, rx) = tokio::sync::watch::channel(false);
        rt.spawn(drove_proxy::serve(listeners, proxy.clone(), rx));
        ProxyUnderTest {
            addr,
            proxy,
            balancer,
            stop,
            rt,
        }
    }

    /// Starts the balancer's active health checks (stopped when the handle drops).
    pub fn health_checks(&self, cfg: drove_balancer::ActiveHealth) -> AbortOnDrop {
        let _g = self.rt.enter();
        AbortOnDrop(self.balancer.spawn_health_checks(cfg))
    }

    /// Tells the proxy to shut down (as the guard's drop does): listeners close,
    /// HTTP/2 connections get GOAWAY, open requests finish within the grace.
    pub fn shutdown(&self) {
        let _ = self.stop.send(true);
    }

    /// Sends raw bytes on a new connection; returns everything received until the
    /// proxy closes the connection or `wait` passes.
    pub fn raw(&self, bytes: &[u8], wait: Duration) -> String {
        let mut c = TcpStream::connect(self.addr).unwrap();
        c.set_read_timeout(Some(wait)).unwrap();
        c.write_all(bytes).unwrap();
        let mut out = Vec::new();
        let _ = c.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    }

    /// One request with `Connection: close`; the status and the whole response.
    pub fn get(&self, path: &str) -> (u16, String) {
        let r = self.raw(
            format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes(),
            Duration::from_secs(10),
        );
        (status(&r), r)
    }
}

impl Drop for ProxyUnderTest {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// The status code of a raw response (0 when there is none).
pub fn status(r: &str) -> u16 {
    r.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// A task aborted when dropped.
pub struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
