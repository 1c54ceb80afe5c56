//! Panics in the supervisor's own tasks are contained: the task's part (the memory
//! monitor, a service's replacement worker, the watch over one instance) starts again,
//! and no instance is signalled because of it. Without this, a panic in the task that
//! watches an instance would drop its process-group guard and SIGKILL the instance.
//!
//! The count is process-wide ([`panics_contained`]); drove exports it as
//! `drove_panics_total{where="supervisor"}`.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use futures_util::FutureExt;

static PANICS: AtomicU64 = AtomicU64::new(0);

/// Pause before a part starts again after a panic: a part that panics at once on every
/// start must not spin a core.
const RESTART_DELAY: Duration = Duration::from_millis(100);

/// Panics contained in supervisor tasks since the process started.
pub fn panics_contained() -> u64 {
    PANICS.load(Relaxed)
}

/// Runs `fut`; `Some(output)` if it finished, `None` if it panicked (counted, logged as a
/// bug in `what`, and after a short pause so the caller can start it again).
pub(crate) async fn caught<T>(what: &str, fut: impl Future<Output = T>) -> Option<T> {
    match AssertUnwindSafe(fut).catch_unwind().await {
        Ok(v) => Some(v),
        Err(panic) => {
            PANICS.fetch_add(1, Relaxed);
            let msg = panic
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
                .unwrap_or("(a panic without a message)");
            tracing::error!(
                part = what,
                panic = msg,
                "bug: a supervisor task panicked; it starts again, the instances are not touched"
            );
            tokio::time::sleep(RESTART_DELAY).await;
            None
        }
    }
}

/// Test-only fault injection (`test-hooks` feature): `DROVE_TEST_PANIC` containing
/// `supervisor=PART` makes `PART` (`monitor` or `slot`) panic once per process.
#[inline(always)]
pub(crate) fn test_panic(part: &str) {
    #[cfg(feature = "test-hooks")]
    {
        static FIRED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
        let armed = std::env::var("DROVE_TEST_PANIC").is_ok_and(|v| {
            v.split(',')
                .any(|e| e.trim() == format!("supervisor={part}"))
        });
        let first = armed && {
            let mut fired = FIRED.lock().unwrap_or_else(|e| e.into_inner());
            let first = !fired.iter().any(|p| p == part);
            fired.push(part.to_string());
            first
        };
        if first {
            panic!("injected panic in the supervisor's {part}");
        }
    }
    #[cfg(not(feature = "test-hooks"))]
    let _ = part;
}
