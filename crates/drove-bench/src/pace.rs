//! Precise, shared waits for the open model's schedule.
//!
//! tokio's timer wheel ticks in milliseconds: at a few thousand requests per second the
//! requests would leave in 1 ms bursts, which distorts the load. One timer per connection
//! is precise but costly (a timer interrupt per request; in a VM each one is an exit).
//! So each worker thread has one [`Pacer`]: connections queue their slot (slots are taken
//! in schedule order, so the queue is sorted), and one task sleeps until the earliest
//! slot and releases every slot due within [`EARLY`]. On Linux it sleeps on a timerfd
//! (hrtimer precision, driven by the same epoll loop); elsewhere, or if the timerfd cannot
//! be created, on the tokio timer.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// Slots due this soon are released in the same wake-up: caps timer wake-ups at
/// ~20 000/s, while keeping sends within a few tens of microseconds of their schedule.
pub(crate) const EARLY: Duration = Duration::from_micros(50);

#[derive(Default)]
pub(crate) struct Pacer {
    queue: RefCell<VecDeque<(Instant, Rc<Notify>)>>,
    kick: Notify,
}

impl Pacer {
    /// Waits until `t`; `me` is the caller's own notifier. Callers on one thread must
    /// call in non-decreasing `t` order (the schedule's order).
    pub async fn wait(&self, t: Instant, me: &Rc<Notify>) {
        if t <= Instant::now() + EARLY {
            return;
        }
        let was_empty = {
            let mut q = self.queue.borrow_mut();
            q.push_back((t, me.clone()));
            q.len() == 1
        };
        if was_empty {
            self.kick.notify_one();
        }
        me.notified().await;
    }

    /// Releases every waiter now (the run is stopping).
    pub fn release_all(&self) {
        for (_, n) in self.queue.borrow_mut().drain(..) {
            n.notify_one();
        }
    }

    /// The releasing task; runs until aborted.
    pub async fn run(self: Rc<Self>) {
        let mut sleeper = Sleeper::new();
        loop {
            let front = self.queue.borrow().front().map(|(t, _)| *t);
            match front {
                None => self.kick.notified().await,
                Some(t) => {
                    let now = Instant::now();
                    if t > now + EARLY {
                        sleeper.sleep(t - now).await;
                    }
                    let horizon = Instant::now() + EARLY;
                    let mut q = self.queue.borrow_mut();
                    while let Some((t, n)) = q.front() {
                        if *t > horizon {
                            break;
                        }
                        n.notify_one();
                        q.pop_front();
                    }
                }
            }
        }
    }
}

struct Sleeper {
    #[cfg(target_os = "linux")]
    fd: Option<tokio::io::unix::AsyncFd<linux::Tfd>>,
}

impl Sleeper {
    fn new() -> Sleeper {
        Sleeper {
            #[cfg(target_os = "linux")]
            fd: linux::Tfd::new().and_then(linux::register),
        }
    }

    async fn sleep(&mut self, d: Duration) {
        #[cfg(target_os = "linux")]
        if let Some(fd) = &self.fd {
            if linux::wait(fd, d).await.is_ok() {
                return;
            }
            // A failing timerfd should not stop the run: fall back for the rest.
            self.fd = None;
        }
        tokio::time::sleep(d).await;
    }
}

#[cfg(target_os = "linux")]
mod linux {
    use std::io;
    use std::os::fd::{AsFd, AsRawFd, RawFd};
    use std::time::Duration;

    use nix::sys::time::TimeSpec;
    use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
    use tokio::io::unix::AsyncFd;

    /// `TimerFd` implements `AsFd` only; `AsyncFd` wants `AsRawFd`.
    pub(super) struct Tfd(TimerFd);

    impl AsRawFd for Tfd {
        fn as_raw_fd(&self) -> RawFd {
            self.0.as_fd().as_raw_fd()
        }
    }

    impl Tfd {
        pub(super) fn new() -> Option<Tfd> {
            TimerFd::new(
                ClockId::CLOCK_MONOTONIC,
                TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
            )
            .ok()
            .map(Tfd)
        }
    }

    /// `AsyncFd::new` is deprecated because a `T` that does not own its fd could let the
    /// fd be closed while registered. `Tfd` owns it (an `OwnedFd` inside `TimerFd`) and
    /// the `AsyncFd` owns the `Tfd`, so that cannot happen; the replacement,
    /// `AsyncFd::register`, is `unsafe`, which this workspace forbids.
    #[allow(deprecated)]
    pub(super) fn register(t: Tfd) -> Option<AsyncFd<Tfd>> {
        AsyncFd::new(t).ok()
    }

    pub(super) async fn wait(fd: &AsyncFd<Tfd>, d: Duration) -> io::Result<()> {
        fd.get_ref()
            .0
            .set(
                Expiration::OneShot(TimeSpec::from(d)),
                TimerSetTimeFlags::empty(),
            )
            .map_err(io::Error::from)?;
        loop {
            let mut guard = fd.readable().await?;
            // Reading the expiration count consumes the wake-up; WouldBlock means a stale
            // readiness from the previous wait, so wait again.
            match guard.try_io(|fd| {
                let mut buf = [0u8; 8];
                nix::unistd::read(fd.get_ref().as_raw_fd(), &mut buf).map_err(io::Error::from)
            }) {
                Ok(r) => return r.map(drop),
                Err(_would_block) => continue,
            }
        }
    }
}
