//! One timer per client connection (or HTTP/2 stream), moved to each deadline it waits
//! for: the idle timeout between requests, then the response timeout of each attempt.
//!
//! Why not a new `tokio::time::Sleep` per wait: a new one registers in the runtime's
//! timer wheel, under the driver's lock, when first polled, and takes the lock again to
//! leave it when dropped — for the two waits of every keep-alive request, about 850
//! instructions (callgrind). A registered `Sleep` reset to a *later* deadline only
//! stores the new deadline (tokio's `extend_expiration`, no lock: the wheel re-files the
//! entry when its old deadline comes). With the default timeouts (idle 60 s, response
//! 60 s from a later start) each deadline of a connection is later than the one before,
//! so a keep-alive connection registers its timer once. An earlier deadline (a shorter
//! `per_try_timeout`) re-registers, as a new timer would.

use std::pin::Pin;

use tokio::time::{Instant, Sleep};

/// A connection's timer: none until its first wait (one allocation, then reused).
#[derive(Default)]
pub(crate) struct Deadline(Option<Pin<Box<Sleep>>>);

impl Deadline {
    /// The timer, set to fire at `at`.
    pub(crate) fn at(&mut self, at: Instant) -> Pin<&mut Sleep> {
        let sleep = match &mut self.0 {
            Some(s) => {
                s.as_mut().reset(at);
                s
            }
            none => none.insert(Box::pin(tokio::time::sleep_until(at))),
        };
        sleep.as_mut()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// The same timer serves one deadline after another, later or earlier, fired or not,
    /// and never fires before its deadline.
    #[tokio::test]
    async fn one_timer_serves_deadlines_in_turn() {
        let ms = Duration::from_millis;
        let mut d = Deadline::default();
        let t0 = Instant::now();
        d.at(t0 + ms(30)).await;
        assert!(Instant::now() >= t0 + ms(30));
        // Later than a pending deadline (extended in place), then later again.
        let t1 = Instant::now();
        assert!(futures_util::poll!(d.at(t1 + ms(20))).is_pending());
        d.at(t1 + ms(60)).await;
        assert!(Instant::now() >= t1 + ms(60));
        // Earlier than a pending deadline (registered again).
        let t2 = Instant::now();
        assert!(futures_util::poll!(d.at(t2 + Duration::from_secs(60))).is_pending());
        d.at(t2 + ms(20)).await;
        let waited = t2.elapsed();
        assert!(
            waited >= ms(20) && waited < Duration::from_secs(5),
            "{waited:?}"
        );
    }
}
