//! Panics in the runtime's own tasks (supervisor events → backend set, SIGHUP reloads)
//! are contained and the task started again; the count is exported as
//! `drove_panics_total{where="runtime"}`.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use futures_util::FutureExt;

static PANICS: AtomicU64 = AtomicU64::new(0);

/// Pause before a task starts again after a panic, so one that panics at once on every
/// start does not spin a core.
const RESTART_DELAY: Duration = Duration::from_millis(100);

/// Panics contained in runtime tasks since the process started.
pub fn panics_contained() -> u64 {
    PANICS.load(Relaxed)
}

/// Runs `fut`; `Some(output)` if it finished, `None` if it panicked (counted, logged as
/// a bug in `what`, after a short pause so the caller can start it again).
pub(crate) async fn caught<T>(what: &str, fut: impl Future<Output = T>) -> Option<T> {
    match AssertUnwindSafe(fut).catch_unwind().await {
        Ok(v) => Some(v),
        Err(panic) => {
            PANICS.fetch_add(1, Relaxed);
            tracing::error!(
                part = what,
                panic = drove_proxy::panic_message(&*panic),
                "bug: a drove task panicked; it starts again"
            );
            tokio::time::sleep(RESTART_DELAY).await;
            None
        }
    }
}
