//! HTTP/2 from clients (the `h2` crate): ALPN `h2` on a TLS listener, prior knowledge
//! (h2c) on a plain one. The connection task drives the `h2` connection; each stream is
//! a task of its own that walks the same phases as an HTTP/1.1 request (info → admit →
//! pick → forward once → retry → respond → relay → finish) to the HTTP/1.1 backends, so
//! the pool, retries, stickiness, limits, forwarded headers, request id and access log
//! are the same. What differs is at the edges: the request comes as a header map and a
//! body stream (sent upstream as `Content-Length` or re-framed chunked), and the
//! response goes out as HEADERS and DATA frames within the stream's flow-control window.
//!
//! Trailers cross in both directions, filtered by `headers::allowed_trailer`: a
//! backend's chunked trailer section becomes a trailing HEADERS frame (after a
//! compressed body too; a malformed section, or one over `max_header_size`, is dropped
//! and the stream ends with an empty DATA frame as usual), and a client's trailing HEADERS become the
//! trailer section of the chunked body the backend gets. A request body with a
//! `content-length` goes with that length, where trailers have no place, unless the
//! request announces them with a `trailer` field: then it goes chunked.
//!
//! Limits: `http2_max_streams` concurrent streams, `max_header_size` for the header
//! list, and resets: a client that cancels most of its streams (the 2023 "rapid reset"
//! attack) is sent GOAWAY and closed (the `h2` crate also bounds resets of streams not
//! yet accepted). A client's RST_STREAM cancels the upstream exchange. Shutdown sends
//! GOAWAY and lets open streams finish. WebSocket over HTTP/2 (RFC 8441) is not offered:
//! browsers fall back to HTTP/1.1 for WebSockets, which drove tunnels.

mod io;

pub(crate) use io::H2Io;

use std::cell::Cell;
use std::net::IpAddr;
use std::rc::Rc;

use bytes::Bytes;
use futures_util::FutureExt;
use h2::server::SendResponse;
use h2::{RecvStream, SendStream};
use tokio::time::Instant;

use crate::conn::Client;
use crate::h1::{self, Chunked, Framing, IpText, Method, Part};
use crate::headers::{allowed_trailer, Trailers};
use crate::request::compress::{self, Compressing};
use crate::request::forward::{Answer, Downstream, SendError, UpstreamRequest};
use crate::request::retry::Failure;
use crate::request::{self, finish, info, respond, Attempted, Ctx};
use crate::sock::{ClientIo, Sock};
use crate::worker::Stop;
use crate::worker::Worker;
use crate::ProxyError;
use crate::ProxySettings;

/// The client connection preface of HTTP/2 with prior knowledge (RFC 9113 §3.4).
pub(crate) const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// After this many streams, a connection whose client reset more than half of them is
/// closed: rapid reset. Browsers cancel some streams (navigation, aborted fetches),
/// never most of hundreds.
const RESETS_BEFORE_CHECK: u32 = 100;

/// An idempotent request with a body up to this size is read whole before it is sent
/// (as for HTTP/1.1), so it can be replayed.
const MAX_REPLAY_BODY: u64 = 16 * 1024;

/// What a stream needs to know of its connection's client.
pub(crate) struct Peer {
    pub(crate) ip: IpAddr,
    pub(crate) ip_text: IpText,
    pub(crate) trusted: bool,
    pub(crate) https: bool,
}

/// Whether the bytes a connection started with are (so far) the HTTP/2 preface.
pub(crate) fn starts_like_preface(buf: &[u8]) -> bool {
    let n = buf.len().min(PREFACE.len());
    n > 0 && buf[..n] == PREFACE[..n]
}

/// Serves a client connection as HTTP/2 until it closes, or drove shuts down or a reload
/// retires its listener (GOAWAY, then the open streams finish).
pub(crate) async fn serve<S: ClientIo>(w: Rc<Worker>, client: Client<S>, mut stop: Stop) {
    // The connection's own parameters (streams, header list size, idle timeout) come
    // from the settings in force when it opened; each stream takes its own snapshot.
    let live = w.snapshot();
    let settings = &live.settings;
    let peer = Rc::new(Peer {
        ip: client.peer,
        ip_text: client.peer_ip,
        trusted: client.trusted,
        https: client.sock.is_tls(),
    });
    let io = client.sock.into_h2_io(client.buf);
    let mut builder = h2::server::Builder::new();
    builder
        .max_concurrent_streams(settings.http2_max_streams)
        .max_header_list_size(settings.max_header_size.min(u32::MAX as usize) as u32)
        // A connection-level window of 1 MiB: one slow stream cannot stall the others.
        .initial_connection_window_size(1 << 20)
        .initial_window_size(256 << 10);
    let mut conn = match tokio::time::timeout(settings.header_timeout, builder.handshake(io)).await
    {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "HTTP/2 handshake failed");
            return;
        }
        Err(_) => return,
    };
    let streams = Rc::new(Cell::new(0u32));
    let resets = Rc::new(Cell::new(0u32));
    let open = Rc::new(Cell::new(0u32));
    let mut accepted = 0u32;
    // An upgrade cannot move an HTTP/2 connection (its state is in this process): it
    // is asked to go away like at a reload.
    let mut closing = stop.stopping() || stop.handing_off();
    if closing {
        conn.graceful_shutdown();
    }
    let idle = tokio::time::sleep(settings.idle_timeout);
    tokio::pin!(idle);
    loop {
        tokio::select! {
            next = conn.accept() => match next {
                Some(Ok((req, respond))) => {
                    accepted += 1;
                    streams.set(accepted);
                    open.set(open.get() + 1);
                    let task = (w.clone(), peer.clone(), resets.clone(), open.clone());
                    tokio::task::spawn_local(async move {
                        let (w, peer, resets, open) = task;
                        stream(&w, &peer, req, respond, &resets).await;
                        open.set(open.get() - 1);
                    });
                    if accepted >= RESETS_BEFORE_CHECK && resets.get() * 2 > accepted {
                        tracing::warn!(client = %peer.ip, resets = resets.get(), streams = accepted,
                            "HTTP/2 client resets most of its streams (rapid reset): closing");
                        conn.abrupt_shutdown(h2::Reason::ENHANCE_YOUR_CALM);
                    }
                    idle.as_mut().reset(Instant::now() + settings.idle_timeout);
                }
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "HTTP/2 connection error");
                    break;
                }
                None => break,
            },
            // drove's shutdown, or a reload retiring the listener this connection came
            // from: GOAWAY, the open streams finish, the client opens a new connection
            // (on the listeners in force) for its next request.
            _ = stop.shutdown.changed(), if !closing => {
                closing = true;
                conn.graceful_shutdown();
            }
            _ = stop.retire.changed(), if !closing => {
                closing = true;
                conn.graceful_shutdown();
            }
            _ = stop.handoff.changed(), if !closing => {
                closing = true;
                conn.graceful_shutdown();
            }
            () = &mut idle, if !closing => {
                if open.get() == 0 {
                    closing = true;
                    conn.graceful_shutdown();
                } else {
                    idle.as_mut().reset(Instant::now() + settings.idle_timeout);
                }
            }
        }
        // A reset counted after the last accept still closes an abusive connection.
        if !closing && accepted >= RESETS_BEFORE_CHECK && resets.get() * 2 > accepted {
            closing = true;
            conn.abrupt_shutdown(h2::Reason::ENHANCE_YOUR_CALM);
        }
    }
}

/// One stream: one request through the phases.
async fn stream(
    w: &Worker,
    peer: &Peer,
    req: http::Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    resets: &Cell<u32>,
) {
    let start = Instant::now();
    let (parts, body) = req.into_parts();
    // The stream runs with the settings in force when its head arrived, whatever a
    // reload does meanwhile.
    let live = w.snapshot();
    let settings = &live.settings;
    let info = info::extract_h2(settings, peer, &parts, || w.new_request_id());
    let mut ctx = Ctx::new(w, live, start, info, || finish::LogHead::of_h2(&parts));
    // The walk up to a response head races the client's RST_STREAM: a cancelled stream
    // cancels its upstream exchange (dropping it closes the backend connection).
    let walked = {
        let walk = walk(w, peer, &parts, body, &mut ctx);
        tokio::pin!(walk);
        tokio::select! {
            r = &mut walk => Some(r),
            _ = std::future::poll_fn(|cx| respond.poll_reset(cx)) => None,
        }
    };
    match walked {
        None => resets.set(resets.get() + 1),
        Some(Err(e)) => answer(&mut respond, &mut ctx, e),
        Some(Ok(answer)) => {
            if !relay(w, &mut respond, &mut ctx, answer).await {
                resets.set(resets.get() + 1);
            }
        }
    }
    finish::request(w, &ctx);
}

/// Phases 2 to 5 for a stream: admit, the upstream request, pick → forward → retry.
async fn walk(
    w: &Worker,
    peer: &Peer,
    parts: &http::request::Parts,
    body: RecvStream,
    ctx: &mut Ctx,
) -> Result<Answer, ProxyError> {
    let live = ctx.live.clone();
    let settings = &live.settings;
    request::admit::check(settings, &ctx.info).await?;
    if parts.method == http::Method::CONNECT {
        return Err(ProxyError::MethodNotAllowed);
    }
    let mut down = H2Body {
        body,
        received: 0,
        max: settings.max_body_size,
    };
    let req = upstream_request(w, peer, parts, &mut down, ctx).await?;
    let out = request::pick_and_forward(w, &mut down, &req, ctx).await;
    w.buffers.recycle(req.into_head());
    match out {
        Attempted::Answer(a) => Ok(a),
        Attempted::Failed(e) => Err(e),
        Attempted::ClientGone => Err(ProxyError::BadRequest("the client's body ended early")),
    }
}

/// The HTTP/1.1 request a backend gets for this stream: the head (and the whole body
/// when it is small and the request idempotent: replayable).
async fn upstream_request(
    w: &Worker,
    peer: &Peer,
    parts: &http::request::Parts,
    down: &mut H2Body,
    ctx: &Ctx,
) -> Result<UpstreamRequest, ProxyError> {
    let settings = &ctx.live.settings;
    let method = Method::parse(parts.method.as_str().as_bytes());
    let length = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .map(|v| {
            h1::parse_length(v.as_bytes())
                .ok_or(ProxyError::BadRequest("Content-Length is not a number"))
        })
        .transpose()?;
    if let (Some(n), max) = (length, settings.max_body_size) {
        if max > 0 && n > max {
            return Err(ProxyError::BodyTooLarge);
        }
    }
    // Announced trailers can only reach the backend in a chunked body (a Content-Length
    // body has no trailer section); the length was checked against the limit above and
    // the `h2` crate holds the stream to it.
    let announced = parts.headers.contains_key(http::header::TRAILER);
    let mut framing = match length {
        Some(0) => Framing::None,
        Some(_) if announced && !down.body.is_end_stream() => Framing::Chunked,
        Some(n) => Framing::Length(n),
        None if down.body.is_end_stream() => Framing::None,
        None => Framing::Chunked,
    };
    let authority = parts
        .uri
        .authority()
        .map(|a| a.as_str().as_bytes())
        .or_else(|| parts.headers.get(http::header::HOST).map(|v| v.as_bytes()));
    let target = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().as_bytes())
        .unwrap_or(b"/");
    let mut head = w.buffers.output();
    let lines = parts
        .headers
        .iter()
        .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes()))
        // Connection-specific fields have no place in HTTP/2 (RFC 9113 §8.2.2); `te`
        // and `host` are dropped or replaced on the way anyway. A chunked body goes
        // without its `content-length` (both framings at once is a smuggling shape).
        .filter(|(n, _)| !matches!(*n, b"connection" | b"transfer-encoding" | b"host"))
        .filter(|(n, _)| !(framing == Framing::Chunked && *n == b"content-length"));
    h1::write_upstream_head(
        &h1::UpstreamHead {
            method: parts.method.as_str().as_bytes(),
            target,
            authority,
            upgrade: None,
            framing: (framing == Framing::Chunked)
                .then_some(&b"Transfer-Encoding: chunked\r\n"[..]),
        },
        lines,
        &h1::RequestRewrite {
            peer_ip: peer.ip_text.as_bytes(),
            client_ip: ctx.info.client_ip_text.as_bytes(),
            trusted: peer.trusted,
            request_id: settings
                .request_id_header
                .as_ref()
                .zip(ctx.info.request_id.as_ref())
                .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes())),
            https: peer.https,
        },
        &mut head,
    );
    if let Framing::Length(n) = framing {
        if n <= MAX_REPLAY_BODY && method.idempotent() && settings.retries > 0 {
            // Read the (small) body whole: the request becomes replayable.
            let before = head.len();
            while let Some(chunk) = down
                .next()
                .await
                .map_err(|_| ProxyError::BadRequest("the client's body ended early"))?
            {
                head.extend_from_slice(&chunk);
                if (head.len() - before) as u64 > n {
                    return Err(ProxyError::BadRequest(
                        "body longer than its Content-Length",
                    ));
                }
            }
            if ((head.len() - before) as u64) < n {
                return Err(ProxyError::BadRequest(
                    "body shorter than its Content-Length",
                ));
            }
            framing = Framing::None;
        }
    }
    Ok(UpstreamRequest::new(head, framing, method))
}

/// A stream's request body, as the source of an upstream request's body.
struct H2Body {
    body: RecvStream,
    /// Data bytes received so far.
    received: u64,
    /// `max_body_size` (0: none).
    max: u64,
}

impl H2Body {
    /// The next DATA chunk (its flow-control capacity given back at once: the chunk is
    /// forwarded before the next one is read). `None` at the end of the body.
    async fn next(&mut self) -> Result<Option<Bytes>, h2::Error> {
        match self.body.data().await {
            None => Ok(None),
            Some(Err(e)) => Err(e),
            Some(Ok(chunk)) => {
                let _ = self.body.flow_control().release_capacity(chunk.len());
                self.received += chunk.len() as u64;
                Ok(Some(chunk))
            }
        }
    }
}

impl Downstream for H2Body {
    async fn send(
        &mut self,
        w: &Worker,
        _settings: &ProxySettings,
        up: &Sock,
        req: &UpstreamRequest,
    ) -> Result<(), SendError> {
        let broken = |e| (Failure::Broken, Some(e));
        up.write_all(req.head()).await.map_err(broken)?;
        let chunked = match req.framing() {
            Framing::None => return Ok(()),
            Framing::Chunked => true,
            _ => false,
        };
        let mut out = w.buffers.output();
        let result = async {
            loop {
                let chunk = match self.next().await {
                    Ok(Some(c)) => c,
                    Ok(None) => break,
                    Err(_) => return Err((Failure::ClientGone, None)),
                };
                if self.max > 0 && self.received > self.max {
                    return Err((Failure::BodyTooLarge, None));
                }
                if chunked {
                    h1::write_chunk(&chunk, &mut out);
                    up.write_all(&out).await.map_err(broken)?;
                    out.clear();
                } else {
                    up.write_all(&chunk).await.map_err(broken)?;
                }
            }
            if chunked {
                // The client's trailers (a stream's last HEADERS frame), the fields that
                // may be trailers, as the re-framed body's trailer section.
                let trailers = match self.body.trailers().await {
                    Ok(Some(t)) => t,
                    Ok(None) => http::HeaderMap::new(),
                    Err(_) => return Err((Failure::ClientGone, None)),
                };
                h1::write_last_chunk(
                    trailers
                        .iter()
                        .filter(|(n, _)| allowed_trailer(n.as_str().as_bytes()))
                        .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes())),
                    &mut out,
                );
                up.write_all(&out).await.map_err(broken)?;
            } else if let Framing::Length(n) = req.framing() {
                if self.received != n {
                    return Err((Failure::BadBody, None));
                }
            }
            Ok(())
        }
        .await;
        w.buffers.recycle(out);
        result
    }
}

/// drove's own answer on a stream.
fn answer(respond: &mut SendResponse<Bytes>, ctx: &mut Ctx, e: ProxyError) {
    let live = ctx.live.clone();
    let settings = &live.settings;
    let mut resp = http::Response::builder()
        .status(e.status())
        .header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8");
    if let Some(secs) = e.retry_after() {
        resp = resp.header(http::header::RETRY_AFTER, secs);
    }
    if let (Some(name), Some(v)) = (&settings.request_id_header, &ctx.info.request_id) {
        resp = resp.header(name, v.as_bytes());
    }
    let body = Bytes::from_static(e.body().as_bytes());
    ctx.status = e.status().as_u16();
    ctx.body_bytes = body.len() as u64;
    ctx.error = Some(e);
    if let Ok(resp) = resp.body(()) {
        if let Ok(mut s) = respond.send_response(resp, false) {
            let _ = s.send_data(body, true);
        }
    }
}

/// Phases 6 and 7 for a stream: the backend's response head as HEADERS, its body as
/// DATA frames within the flow-control window. Returns false when the client reset
/// the stream meanwhile.
async fn relay(
    w: &Worker,
    respond: &mut SendResponse<Bytes>,
    ctx: &mut Ctx,
    answer: Answer,
) -> bool {
    ctx.upstream_status = Some(answer.head.status);
    ctx.upstream_time = Some(answer.latency);
    if answer.head.status == 101 || (100..200).contains(&answer.head.status) {
        // No upgrade was asked for over HTTP/2.
        let e = ProxyError::BadUpgrade {
            backend: answer.in_flight.backend().addr(),
            reason: "HTTP/2 streams carry no protocol switch",
        };
        answer.discard(w);
        self::answer(respond, ctx, e);
        return true;
    }
    let Answer {
        in_flight,
        up,
        mut buf,
        head,
        ..
    } = answer;
    let raw = buf.filled();
    let live = ctx.live.clone();
    let settings = &live.settings;
    let decision = ctx.info.compress.map(|chosen| {
        compress::decide(
            settings,
            chosen,
            if ctx.info.head_method {
                b"HEAD"
            } else {
                b"GET"
            },
            head.status,
            head.headers
                .iter()
                .map(|((ns, ne), (vs, ve))| (&raw[*ns..*ne], &raw[*vs..*ve])),
        )
    });
    let compressing = match (&decision, ctx.info.compress) {
        (Some(d), Some(chosen)) if head.framing != Framing::None => {
            Compressing::start(settings, chosen, d)
        }
        _ => None,
    };
    let edits = decision.as_ref().map(|d| &d.edits);
    let mut resp = http::Response::builder().status(head.status);
    for ((ns, ne), (vs, ve)) in &head.headers {
        let name = &raw[*ns..*ne];
        if edits.is_some_and(|e| e.removes(name)) {
            continue;
        }
        if h1::eq(name, b"connection")
            || h1::eq(name, b"keep-alive")
            || h1::eq(name, b"transfer-encoding")
            || h1::eq(name, b"upgrade")
            || h1::eq(name, b"proxy-connection")
        {
            continue;
        }
        resp = resp.header(name, &raw[*vs..*ve]);
    }
    for (name, value) in edits.into_iter().flat_map(|e| e.additions()) {
        resp = resp.header(name, value);
    }
    let mut extra = w.buffers.output();
    respond::extra_headers(w, ctx, in_flight.backend(), &mut extra);
    for line in extra.split(|&b| b == b'\n').filter(|l| l.len() > 1) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if let Some(i) = line.iter().position(|&b| b == b':') {
            resp = resp.header(&line[..i], line[i + 1..].trim_ascii());
        }
    }
    w.buffers.recycle(extra);
    let Ok(resp) = resp.body(()) else {
        w.buffers.recycle_input(buf);
        let e = ProxyError::Broken {
            backend: in_flight.backend().addr(),
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "response head not valid in HTTP/2",
            ),
        };
        self::answer(respond, ctx, e);
        return true;
    };
    let empty = head.framing == Framing::None;
    let Ok(mut send) = respond.send_response(resp, empty) else {
        w.buffers.recycle_input(buf);
        return false;
    };
    ctx.status = head.status;
    buf.consume(head.len);
    let mut body = StreamBody {
        send: &mut send,
        bytes: 0,
        compress: compressing,
    };
    let clean = match head.framing {
        Framing::None => Ok(buf.is_empty()),
        Framing::Length(n) => body.length(&up, &mut buf, n).await,
        Framing::Chunked => body.chunked(&up, &mut buf, settings.max_header_size).await,
        Framing::Close => body.until_close(&up, &mut buf).await.map(|()| false),
    };
    ctx.body_bytes = body.bytes;
    w.buffers.recycle_input(buf);
    match clean {
        Ok(reusable) => {
            if reusable && head.keep_alive {
                w.pool.put(in_flight.backend().key(), up);
            }
            true
        }
        // The backend broke mid-body: reset the stream (the client sees it failed).
        Err(Relay::Backend) => {
            send.send_reset(h2::Reason::INTERNAL_ERROR);
            true
        }
        Err(Relay::Client) => false,
    }
}

/// Why relaying a body stopped early.
enum Relay {
    Backend,
    Client,
}

/// A response body on its way out as DATA frames.
struct StreamBody<'a> {
    send: &'a mut SendStream<Bytes>,
    bytes: u64,
    /// The body is compressed on its way (flushed when the backend's body pauses).
    compress: Option<Compressing>,
}

impl StreamBody<'_> {
    /// Sends `data` as DATA frames, or, compressed, encodes it: the encoded bytes go out
    /// in [`StreamBody::next_read`] when the backend pauses, or at the end.
    async fn data(&mut self, data: &[u8]) -> Result<(), Relay> {
        match &mut self.compress {
            None => self.frames(data).await,
            Some(c) => c.chunk(data, false).map_err(|_| Relay::Backend),
        }
    }

    /// Reads more of the body from the backend. Compressing, whatever is there already
    /// is read first: the encoder is flushed and its output sent only when the backend's
    /// body pauses (or once `compress::WRITE_AT` bytes piled up) — a flush per read
    /// ended a deflate block per read.
    async fn next_read(&mut self, up: &Sock, buf: &mut crate::sock::Buf) -> Result<usize, Relay> {
        if self.compress.is_some() {
            if let Some(r) = self.read(up, buf).now_or_never() {
                self.send_encoded(false).await?;
                return r;
            }
            self.send_encoded(true).await?;
        }
        self.read(up, buf).await
    }

    /// Sends the encoder's output: with `flush`, after flushing it (all of it becomes
    /// decodable); without, only once enough piled up.
    async fn send_encoded(&mut self, flush: bool) -> Result<(), Relay> {
        let Some(c) = &mut self.compress else {
            return Ok(());
        };
        if flush {
            c.chunk(&[], true).map_err(|_| Relay::Backend)?;
        } else if c.out.len() < compress::WRITE_AT {
            return Ok(());
        }
        if c.out.is_empty() {
            return Ok(());
        }
        let out = std::mem::take(&mut c.out);
        let r = self.frames(&out).await;
        if let Some(c) = &mut self.compress {
            c.out = out;
            c.out.clear();
        }
        r
    }

    /// Sends `data` as DATA frames as the window allows (memory stays flat: nothing is
    /// queued beyond the window).
    async fn frames(&mut self, data: &[u8]) -> Result<(), Relay> {
        let mut data = Bytes::copy_from_slice(data);
        self.bytes += data.len() as u64;
        while !data.is_empty() {
            self.send.reserve_capacity(data.len());
            let cap = match std::future::poll_fn(|cx| self.send.poll_capacity(cx)).await {
                Some(Ok(n)) if n > 0 => n,
                Some(Ok(_)) => continue,
                _ => return Err(Relay::Client),
            };
            let piece = data.split_to(cap.min(data.len()));
            self.send
                .send_data(piece, false)
                .map_err(|_| Relay::Client)?;
        }
        Ok(())
    }

    /// Reads more of the body from the backend, unless the client resets the stream
    /// first: a cancelled stream cancels its upstream exchange mid-body too (an event
    /// stream or a long poll may send nothing for minutes; waiting for its next bytes to
    /// notice would hold the backend's connection and its in-flight count that long).
    async fn read(&mut self, up: &Sock, buf: &mut crate::sock::Buf) -> Result<usize, Relay> {
        let send = &mut *self.send;
        tokio::select! {
            r = up.read(buf) => r.map_err(|_| Relay::Backend),
            _ = std::future::poll_fn(|cx| send.poll_reset(cx)) => Err(Relay::Client),
        }
    }

    async fn end(&mut self) -> Result<(), Relay> {
        self.end_with(http::HeaderMap::new()).await
    }

    /// Ends the stream: the rest of the compressed body, then `trailers` as a trailing
    /// HEADERS frame (or an empty DATA frame ending the stream, without any).
    async fn end_with(&mut self, trailers: http::HeaderMap) -> Result<(), Relay> {
        if let Some(c) = &mut self.compress {
            c.finish().map_err(|_| Relay::Backend)?;
            let out = std::mem::take(&mut c.out);
            self.frames(&out).await?;
        }
        if trailers.is_empty() {
            self.send.send_data(Bytes::new(), true)
        } else {
            self.send.send_trailers(trailers)
        }
        .map_err(|_| Relay::Client)
    }

    async fn length(
        &mut self,
        up: &Sock,
        buf: &mut crate::sock::Buf,
        n: u64,
    ) -> Result<bool, Relay> {
        let mut left = n;
        let mut reusable = true;
        loop {
            let take = left.min(buf.len() as u64) as usize;
            if take < buf.len() {
                reusable = false;
            }
            left -= take as u64;
            if take > 0 {
                self.data(&buf.filled()[..take]).await?;
            }
            buf.clear();
            if left == 0 {
                self.end().await?;
                return Ok(reusable);
            }
            if self.next_read(up, buf).await? == 0 {
                return Err(Relay::Backend);
            }
        }
    }

    /// A chunked body as DATA frames, and its trailer section (the fields that may be
    /// trailers, at most `trailer_limit` bytes) as the stream's trailers.
    async fn chunked(
        &mut self,
        up: &Sock,
        buf: &mut crate::sock::Buf,
        trailer_limit: usize,
    ) -> Result<bool, Relay> {
        let mut chunked = Chunked::default();
        let mut data = Vec::new();
        // Created by the first trailer byte: a body without trailers allocates nothing.
        let mut trailers: Option<Trailers> = None;
        loop {
            let input = buf.filled();
            let mut at = 0;
            let n = chunked
                .feed(input, |p| {
                    let bytes = &input[at..at + p.len];
                    at += p.len;
                    match p.part {
                        Part::Data => data.extend_from_slice(bytes),
                        Part::Trailer => trailers
                            .get_or_insert_with(|| Trailers::new(trailer_limit))
                            .push(bytes),
                        Part::Framing => {}
                    }
                })
                .map_err(|_| Relay::Backend)?;
            let reusable = n == buf.len();
            buf.clear();
            if !data.is_empty() {
                self.data(&data).await?;
                data.clear();
            }
            if chunked.done() {
                let trailers = trailers.map(|t| t.header_map()).unwrap_or_default();
                self.end_with(trailers).await?;
                return Ok(reusable);
            }
            if self.next_read(up, buf).await? == 0 {
                return Err(Relay::Backend);
            }
        }
    }

    async fn until_close(&mut self, up: &Sock, buf: &mut crate::sock::Buf) -> Result<(), Relay> {
        loop {
            if !buf.is_empty() {
                self.data(buf.filled()).await?;
                buf.clear();
            }
            if self.next_read(up, buf).await? == 0 {
                return self.end().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_preface_is_recognised_from_its_first_bytes() {
        assert!(starts_like_preface(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0"));
        assert!(starts_like_preface(b"PRI * HT"));
        assert!(!starts_like_preface(b"GET / HTTP/1.1\r\n"));
        assert!(!starts_like_preface(b"PRIX"));
        assert!(!starts_like_preface(b""));
    }
}
