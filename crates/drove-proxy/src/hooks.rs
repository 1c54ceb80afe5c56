//! Test-only fault injection: panics at chosen points of the data path, so the tests can
//! show that a bug costs one request (or one connection, or one worker's connections)
//! and never drove or its instances.
//!
//! Compiled only with the `test-hooks` feature, which normal and release builds never
//! enable (the root package's e2e tests turn it on through a dev-dependency). Without
//! it every hook is an empty inline function. With it, `DROVE_TEST_PANIC` (read once)
//! lists `POINT=PATH` pairs separated by commas; a request whose target is exactly
//! `PATH` panics at `POINT`:
//!
//! - `request` — in the request's walk, before any byte of a response was sent
//!   (answered 500, connection closed);
//! - `relay` — after the response was relayed (no 500 may follow a response that
//!   started: the connection is closed);
//! - `connection` — in the connection task, outside any request's walk (closed);
//! - `worker` — the worker thread's accept loop panics (every connection of that
//!   worker is lost; the worker starts again on the same listening socket).

/// Where a hook may fire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Point {
    Request,
    Relay,
    Connection,
    Worker,
}

#[cfg(feature = "test-hooks")]
mod imp {
    use super::Point;
    use std::sync::OnceLock;

    fn spec() -> &'static [(String, Vec<u8>)] {
        static SPEC: OnceLock<Vec<(String, Vec<u8>)>> = OnceLock::new();
        SPEC.get_or_init(|| {
            std::env::var("DROVE_TEST_PANIC")
                .unwrap_or_default()
                .split(',')
                .filter_map(|e| e.split_once('='))
                .map(|(p, v)| (p.trim().to_string(), v.trim().as_bytes().to_vec()))
                .collect()
        })
    }

    fn name(p: Point) -> &'static str {
        match p {
            Point::Request => "request",
            Point::Relay => "relay",
            Point::Connection => "connection",
            Point::Worker => "worker",
        }
    }

    pub(crate) fn armed(point: Point, target: &[u8]) -> bool {
        spec()
            .iter()
            .any(|(p, v)| p == name(point) && v.as_slice() == target)
    }
}

/// Whether the hook at `point` fires for a request to `target` (always false without the
/// `test-hooks` feature).
#[inline(always)]
pub(crate) fn armed(point: Point, target: &[u8]) -> bool {
    #[cfg(feature = "test-hooks")]
    {
        imp::armed(point, target)
    }
    #[cfg(not(feature = "test-hooks"))]
    {
        let _ = (point, target);
        false
    }
}

/// Panics if the hook at `point` is armed for `target`.
#[inline(always)]
pub(crate) fn panic_at(point: Point, target: &[u8]) {
    if armed(point, target) {
        panic!(
            "injected panic at {point:?} for {}",
            String::from_utf8_lossy(target)
        );
    }
}
