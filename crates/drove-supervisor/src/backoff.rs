//! Restart backoff: exponential with jitter, crash-loop detection.

use std::time::Duration;

use rand::Rng;

use crate::spec::RestartPolicy;

/// Jitter takes up to this fraction *off* a delay. Below 0.5 the jittered delays still
/// grow strictly from one attempt to the next (2·d·(1-j) > d), so a crash loop visibly
/// slows down while instances restarted together still spread out.
const JITTER: f64 = 0.25;

/// Backoff state of one instance slot.
#[derive(Debug)]
pub(crate) struct Backoff {
    initial: Duration,
    max: Duration,
    reset_after: Duration,
    crashloop_after: u32,
    /// Un-jittered delay of the next restart.
    next: Duration,
    /// Consecutive exits that happened within `reset_after` of their start.
    quick_exits: u32,
}

/// What to do after an exit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Delay {
    pub delay: Duration,
    pub crashloop: bool,
    /// Consecutive quick exits so far, this one included.
    pub quick_exits: u32,
}

impl Backoff {
    /// `reset_after` and `max_delay` of the policy, for explaining a crash loop.
    pub fn limits(&self) -> (Duration, Duration) {
        (self.reset_after, self.max)
    }

    pub fn new(p: &RestartPolicy) -> Backoff {
        Backoff {
            initial: p.initial_delay,
            max: p.max_delay,
            reset_after: p.reset_after,
            crashloop_after: p.crashloop_after,
            next: p.initial_delay,
            quick_exits: 0,
        }
    }

    /// Records an exit after `uptime` and returns the delay before the next start.
    pub fn on_exit(&mut self, uptime: Duration) -> Delay {
        if uptime >= self.reset_after {
            self.next = self.initial;
            self.quick_exits = 0;
        }
        self.quick_exits = self.quick_exits.saturating_add(1);
        let crashloop = self.quick_exits >= self.crashloop_after && uptime < self.reset_after;
        let base = if crashloop { self.max } else { self.next };
        self.next = (self.next * 2).min(self.max);
        let cut = rand::thread_rng().gen_range(0.0..JITTER);
        Delay {
            delay: base.mul_f64(1.0 - cut),
            crashloop,
            quick_exits: if uptime < self.reset_after {
                self.quick_exits
            } else {
                0
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RestartPolicy {
        RestartPolicy {
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(800),
            reset_after: Duration::from_secs(10),
            crashloop_after: 4,
            ..RestartPolicy::default()
        }
    }

    #[test]
    fn grows_caps_and_flags_crashloop() {
        let mut b = Backoff::new(&policy());
        let quick = Duration::from_millis(10);
        let d: Vec<Delay> = (0..6).map(|_| b.on_exit(quick)).collect();
        for w in d.windows(2).take(3) {
            assert!(w[1].delay > w[0].delay, "{d:?}");
        }
        assert!(d.iter().all(|x| x.delay <= Duration::from_millis(800)));
        assert!(d[0].delay >= Duration::from_millis(75));
        assert_eq!(
            d.iter().map(|x| x.crashloop).collect::<Vec<_>>(),
            [false, false, false, true, true, true]
        );
        assert!(d[5].delay >= Duration::from_millis(600));
    }

    #[test]
    fn resets_after_stable_uptime() {
        let mut b = Backoff::new(&policy());
        for _ in 0..5 {
            b.on_exit(Duration::ZERO);
        }
        let d = b.on_exit(Duration::from_secs(11));
        assert!(!d.crashloop);
        assert!(d.delay <= Duration::from_millis(100));
    }
}
