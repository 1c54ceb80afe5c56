//! Phase 7: the response, head then body, from the backend's connection to the client's
//! in the body's own framing (Content-Length, chunked — de-chunked for an HTTP/1.0
//! client — or until close), through one pooled buffer; or, after a checked `101`, the
//! tunnel. The upstream connection goes back to the pool when the exchange ended cleanly.
//!
//! A chunked body's trailer section reaches an HTTP/1.1 client filtered
//! (`headers::Trailers`: forbidden fields out, a malformed or oversized section dropped
//! whole, the body still ends cleanly), after a compressed body too; an HTTP/1.0 client
//! gets none (its de-chunked body has nowhere to put them). A body without trailers
//! passes byte for byte as before, with nothing allocated for them.

use std::sync::atomic::Ordering::Relaxed;

use futures_util::FutureExt;

use super::compress::{self, Compressing};
use super::forward::Answer;
use super::{answer, respond, Ctx};
use crate::conn::Client;
use crate::h1::{Chunked, Framing, Part};
use crate::handoff::HandedConnection;
use crate::headers::Trailers;
use crate::sock::{Buf, ClientIo, Sock};
use crate::worker::Worker;
use std::rc::Rc;

/// Relays `answer` to the client. Returns whether the client connection stays open.
pub(crate) async fn response<S: ClientIo>(
    w: &Worker,
    client: &mut Client<S>,
    ctx: &mut Ctx,
    reply: Answer,
    client_keep: bool,
) -> bool {
    let status = reply.head.status;
    ctx.upstream_status = Some(status);
    ctx.upstream_time = Some(reply.latency);
    let mut out = w.buffers.output();
    let plan = match respond::head(w, ctx, &reply, client_keep, &mut out) {
        Ok(plan) => plan,
        Err(e) => {
            // Not turned into a tunnel: the backend's connection is closed with the answer.
            w.buffers.recycle(out);
            w.buffers.recycle_input(reply.buf);
            answer(w, client, ctx, e, true).await;
            return false;
        }
    };
    ctx.status = status;
    let Answer {
        in_flight,
        up,
        mut buf,
        head,
        ..
    } = reply;
    buf.consume(head.len);
    if plan.tunnel {
        tunnel(w, client, ctx, &up, buf, out).await;
        drop(in_flight); // a tunnel counts in flight until it closes (least_conn)
        return false;
    }
    let mut body = Body {
        client,
        up: &up,
        buf,
        out,
        bytes: 0,
        client_ok: true,
        reusable: head.keep_alive,
        trailer_limit: ctx.live.settings.max_header_size,
    };
    match (plan.compress, head.framing) {
        (_, Framing::None) => body.none().await,
        (Some(c), framing) => body.compressed(framing, c, !ctx.info.http10).await,
        (None, Framing::Length(n)) => body.length(n).await,
        (None, Framing::Chunked) => body.chunked(plan.dechunk).await,
        (None, Framing::Close) => body.until_close().await,
    }
    let Body {
        buf,
        out,
        bytes,
        client_ok,
        reusable,
        ..
    } = body;
    ctx.body_bytes = bytes;
    w.buffers.recycle(out);
    w.buffers.recycle_input(buf);
    if reusable && client_ok {
        w.pool.put(in_flight.backend().key(), up);
    }
    drop(in_flight);
    plan.keep && client_ok
}

/// A body on its way: the client, the backend's connection, the buffers, and how it
/// went.
struct Body<'a, S> {
    client: &'a mut Client<S>,
    up: &'a Sock,
    /// Bytes read from the backend, not yet relayed.
    buf: Buf,
    /// Bytes for the client (starts with the response head).
    out: Vec<u8>,
    /// Body bytes sent to the client.
    bytes: u64,
    /// Every write to the client succeeded and the body is complete.
    client_ok: bool,
    /// The backend's connection can carry another request.
    reusable: bool,
    /// The largest trailer section passed on (`max_header_size`, as for a head).
    trailer_limit: usize,
}

impl<S: ClientIo> Body<'_, S> {
    /// Writes `out` (head and/or body bytes; `head_len` of them are not body).
    async fn flush(&mut self, head_len: usize) -> bool {
        if self.client.sock.write_all(&self.out).await.is_err() {
            self.client_ok = false;
            self.reusable = false;
            return false;
        }
        self.bytes += (self.out.len() - head_len) as u64;
        self.out.clear();
        true
    }

    /// The backend broke mid-body: the client cannot be told with a status any more;
    /// closing is the only honest signal.
    /// Reads more of the response from the backend, unless the client closes its
    /// connection first: an event stream or a long poll may send nothing for minutes,
    /// and waiting for its next bytes to find the client gone would hold the backend's
    /// connection and its in-flight count that long (HTTP/2 has RST_STREAM for this).
    async fn read_up(&mut self) -> std::io::Result<usize> {
        tokio::select! {
            biased;
            r = self.up.read(&mut self.buf) => r,
            () = self.client.sock.peer_gone() => Err(std::io::ErrorKind::ConnectionAborted.into()),
        }
    }

    fn broke(&mut self) {
        self.client_ok = false;
        self.reusable = false;
    }

    async fn none(&mut self) {
        if !self.buf.is_empty() {
            self.reusable = false; // bytes after a body-less response: not trustworthy
        }
        let head = self.out.len();
        self.flush(head).await;
    }

    async fn length(&mut self, n: u64) {
        let head = self.out.len();
        let mut left = n;
        let take = left.min(self.buf.len() as u64) as usize;
        self.out.extend_from_slice(&self.buf.filled()[..take]);
        left -= take as u64;
        if take < self.buf.len() {
            self.reusable = false;
        }
        self.buf.clear();
        if !self.flush(head).await {
            return;
        }
        if left > 0 {
            self.client.nodelay();
        }
        while left > 0 {
            match self.read_up().await {
                Ok(0) | Err(_) => return self.broke(),
                Ok(_) => {
                    let take = left.min(self.buf.len() as u64) as usize;
                    left -= take as u64;
                    if take < self.buf.len() {
                        self.reusable = false;
                    }
                    if self
                        .client
                        .sock
                        .write_all(&self.buf.filled()[..take])
                        .await
                        .is_err()
                    {
                        self.client_ok = false;
                        self.reusable = false;
                        return;
                    }
                    self.bytes += take as u64;
                    self.buf.clear();
                }
            }
        }
    }

    async fn chunked(&mut self, dechunk: bool) {
        let mut head = self.out.len();
        let mut chunked = Chunked::default();
        // The backend's trailer lines, held until the body ends, then written filtered in
        // place of the section it sent.
        let mut trailers: Option<Trailers> = None;
        let limit = self.trailer_limit;
        let mut first = true;
        loop {
            let input = self.buf.filled();
            let out = &mut self.out;
            let mut at = 0;
            let fed = chunked.feed(input, |p| {
                let bytes = &input[at..at + p.len];
                at += p.len;
                match p.part {
                    Part::Data => out.extend_from_slice(bytes),
                    _ if dechunk => {}
                    // After trailer lines only the section's empty line can come: it is
                    // written with the filtered section below.
                    Part::Framing if trailers.is_some() => {}
                    Part::Framing => out.extend_from_slice(bytes),
                    Part::Trailer => trailers
                        .get_or_insert_with(|| Trailers::new(limit))
                        .push(bytes),
                }
            });
            let Ok(n) = fed else {
                return self.broke();
            };
            if n < self.buf.len() {
                self.reusable = false;
            }
            self.buf.clear();
            if chunked.done() {
                if let Some(t) = &trailers {
                    crate::h1::write_trailer_section(t.passed().into_iter().flatten(), out);
                }
            }
            if (first || !self.out.is_empty()) && !self.flush(head).await {
                return;
            }
            first = false;
            head = 0;
            if chunked.done() {
                return;
            }
            self.client.nodelay();
            match self.read_up().await {
                Ok(0) | Err(_) => return self.broke(),
                Ok(_) => {}
            }
        }
    }

    /// The body compressed on its way: decoded from its framing, encoded, flushed after
    /// each read from the backend (its pauses), sent chunked (HTTP/1.1) or until close.
    async fn compressed(&mut self, framing: Framing, mut c: Compressing, chunked_out: bool) {
        let mut head = self.out.len();
        let mut left = match framing {
            Framing::Length(n) => n,
            _ => u64::MAX,
        };
        let mut decoder = Chunked::default();
        let mut trailers: Option<Trailers> = None;
        let limit = self.trailer_limit;
        let mut data = Vec::new();
        loop {
            // The data bytes of what was read.
            let input = self.buf.filled();
            let (used, done) = match framing {
                Framing::Length(_) => {
                    let take = left.min(input.len() as u64) as usize;
                    data.extend_from_slice(&input[..take]);
                    left -= take as u64;
                    (take, left == 0)
                }
                Framing::Chunked => {
                    let mut at = 0;
                    let Ok(n) = decoder.feed(input, |p| {
                        let bytes = &input[at..at + p.len];
                        at += p.len;
                        match p.part {
                            Part::Data => data.extend_from_slice(bytes),
                            // Kept for the end of the compressed body (chunked out).
                            Part::Trailer if chunked_out => trailers
                                .get_or_insert_with(|| Trailers::new(limit))
                                .push(bytes),
                            _ => {}
                        }
                    }) else {
                        return self.broke();
                    };
                    (n, decoder.done())
                }
                _ => {
                    data.extend_from_slice(input);
                    (input.len(), false)
                }
            };
            if used < self.buf.len() {
                self.reusable = false;
            }
            self.buf.clear();
            // More of the body here already? Then it goes into the same deflate block,
            // and the encoder is flushed (and the client written to) only when the
            // backend's body pauses, ends, or a good amount of output piled up.
            let more = if done {
                None
            } else {
                self.read_up().now_or_never()
            };
            let paused = !done && more.is_none();
            if c.chunk(&data, paused).is_err() || (done && c.finish().is_err()) {
                return self.broke();
            }
            data.clear();
            if done || paused || c.out.len() >= compress::WRITE_AT {
                self.emit(&mut c, chunked_out, done, trailers.as_ref());
                if !self.flush(head).await {
                    return;
                }
                head = 0;
                if done {
                    return;
                }
                self.client.nodelay();
            }
            let read = match more {
                Some(r) => r,
                None => self.read_up().await,
            };
            match read {
                Ok(0) if framing == Framing::Close => {
                    if c.finish().is_err() {
                        return self.broke();
                    }
                    self.emit(&mut c, chunked_out, true, None);
                    self.flush(head).await;
                    return;
                }
                Ok(0) | Err(_) => return self.broke(),
                Ok(_) => {}
            }
        }
    }

    /// Moves the encoder's output to `out`, framed; with `end`, the last chunk and the
    /// backend's trailers (if it sent any) after it.
    fn emit(
        &mut self,
        c: &mut Compressing,
        chunked_out: bool,
        end: bool,
        trailers: Option<&Trailers>,
    ) {
        if chunked_out {
            crate::h1::write_chunk(&c.out, &mut self.out);
            if end {
                let fields = trailers.and_then(Trailers::passed).into_iter().flatten();
                crate::h1::write_last_chunk(fields, &mut self.out);
            }
        } else {
            self.out.extend_from_slice(&c.out);
        }
        c.out.clear();
    }

    async fn until_close(&mut self) {
        self.reusable = false;
        let head = self.out.len();
        self.out.extend_from_slice(self.buf.filled());
        self.buf.clear();
        if !self.flush(head).await {
            return;
        }
        self.client.nodelay();
        loop {
            match self.read_up().await {
                Ok(0) => return,
                Err(_) => return self.broke(),
                Ok(_) => {
                    if self.client.sock.write_all(self.buf.filled()).await.is_err() {
                        self.client_ok = false;
                        return;
                    }
                    self.bytes += self.buf.len() as u64;
                    self.buf.clear();
                }
            }
        }
    }
}

/// After a checked `101`: the head (and anything the backend sent after it), then both
/// sockets as one byte stream until either side closes.
async fn tunnel<S: ClientIo>(
    w: &Worker,
    client: &mut Client<S>,
    ctx: &mut Ctx,
    up: &Sock,
    mut ubuf: Buf,
    mut out: Vec<u8>,
) {
    out.extend_from_slice(ubuf.filled());
    ubuf.clear();
    let ok = client.sock.write_all(&out).await.is_ok();
    w.buffers.recycle(out);
    if !ok {
        w.buffers.recycle_input(ubuf);
        return;
    }
    // Bytes the client sent after its upgrade request belong to the new protocol.
    if !client.pending().is_empty() {
        let ok = up.write_all(client.pending()).await.is_ok();
        let n = client.pending().len();
        client.consume(n);
        if !ok {
            w.buffers.recycle_input(ubuf);
            return;
        }
    }
    client.nodelay();
    let stats = &w.proxy.stats;
    stats.active_tunnels.fetch_add(1, Relaxed);
    let mut other = w.buffers.input();
    // A plain tunnel can move to the next drove at an upgrade; a TLS one cannot.
    let handoff = client
        .sock
        .handoff_stream()
        .map(|_| w.proxy.handoff.requested.subscribe());
    let (to_client, _, handed) =
        crate::sock::tunnel(&client.sock, up, (&mut ubuf, &mut other), handoff).await;
    stats.active_tunnels.fetch_sub(1, Relaxed);
    if handed {
        if let (Some(c), Ok(u), Some(b)) = (client.sock.handoff_stream(), up.dup(), &ctx.backend) {
            w.proxy.handoff.give(HandedConnection::Tunnel {
                client: c,
                upstream: u,
                backend: b.id().to_string(),
            });
        }
    }
    ctx.body_bytes = to_client;
    w.buffers.recycle_input(other);
    w.buffers.recycle_input(ubuf);
}

/// A tunnel handed over by the drove this one replaced (`drove upgrade`): it counts in
/// flight on its backend again, and can be handed over again.
pub(crate) async fn adopted_tunnel(
    w: Rc<Worker>,
    client: std::net::TcpStream,
    upstream: std::net::TcpStream,
    backend: String,
    _stop: crate::worker::Stop,
) {
    let _open = crate::worker::OpenConnection::new(&w);
    let _ = (client.set_nonblocking(true), upstream.set_nonblocking(true));
    let (c, u) = (Sock::unregistered(client), Sock::unregistered(upstream));
    let bal = &w.proxy.balancer;
    let in_flight = bal.find(&backend).map(|b| bal.start(&b));
    let stats = &w.proxy.stats;
    stats.active_tunnels.fetch_add(1, Relaxed);
    let (mut a, mut b) = (w.buffers.input(), w.buffers.input());
    let handoff = Some(w.proxy.handoff.requested.subscribe());
    let (_, _, handed) = crate::sock::tunnel(&c, &u, (&mut a, &mut b), handoff).await;
    stats.active_tunnels.fetch_sub(1, Relaxed);
    if handed {
        if let (Ok(c), Ok(u)) = (c.dup(), u.dup()) {
            w.proxy.handoff.give(HandedConnection::Tunnel {
                client: c,
                upstream: u,
                backend,
            });
        }
    }
    drop(in_flight);
    w.buffers.recycle_input(a);
    w.buffers.recycle_input(b);
}
