//! Baseline for the client choice: the same closed loop as `drove bench` but on hyper's
//! `client::conn::http1` (one connection per worker, TCP_NODELAY, body read to the end).
//! `hyper_closed URL_HOST:PORT CONNECTIONS SECONDS`; prints requests/s.

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};

fn main() {
    let mut a = std::env::args().skip(1);
    let addr = a.next().unwrap_or_else(|| "127.0.0.1:18080".into());
    let conns: usize = a.next().map_or(64, |s| s.parse().unwrap());
    let secs: u64 = a.next().map_or(5, |s| s.parse().unwrap());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let local = tokio::task::LocalSet::new();
    let count = Rc::new(Cell::new(0u64));
    let end = Instant::now() + Duration::from_secs(secs);
    local.block_on(&rt, async {
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..conns {
            let (addr, count) = (addr.clone(), count.clone());
            set.spawn_local(async move {
                let s = tokio::net::TcpStream::connect(&addr).await.unwrap();
                s.set_nodelay(true).unwrap();
                let (mut tx, conn) = hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(
                    hyper_util::rt::TokioIo::new(s),
                )
                .await
                .unwrap();
                tokio::task::spawn_local(conn);
                while Instant::now() < end {
                    let req = hyper::Request::get("/")
                        .header("host", addr.as_str())
                        .body(Empty::new())
                        .unwrap();
                    let resp = tx.send_request(req).await.unwrap();
                    let _ = resp.into_body().collect().await.unwrap();
                    count.set(count.get() + 1);
                }
            });
        }
        while set.join_next().await.is_some() {}
    });
    println!("{:.0} req/s", count.get() as f64 / secs as f64);
}
