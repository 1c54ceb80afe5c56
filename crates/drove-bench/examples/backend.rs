//! A minimal fast HTTP/1.1 backend for comparing load generators on the same target:
//! `cargo run --release -p drove-bench --example backend -- 127.0.0.1:18080`.
//! hyper on a current-thread runtime, 13-byte body, an instance header that alternates
//! between two values.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;

fn main() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:18080".into());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&addr).await.unwrap();
        eprintln!("listening on {addr}");
        let n = Arc::new(AtomicU64::new(0));
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let _ = stream.set_nodelay(true);
            let n = n.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| {
                    let i = n.fetch_add(1, Relaxed);
                    async move {
                        let mut r =
                            hyper::Response::new(Full::new(Bytes::from_static(b"Hello, world!")));
                        let inst = if i.is_multiple_of(2) {
                            "web.1"
                        } else {
                            "web.2"
                        };
                        r.headers_mut().insert(
                            "x-drove-instance",
                            hyper::header::HeaderValue::from_static(inst),
                        );
                        Ok::<_, Infallible>(r)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
}
