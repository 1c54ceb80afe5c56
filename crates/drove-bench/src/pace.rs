//! Precise waits for the open model's schedule.
//!
//! tokio's timer wheel ticks in milliseconds: at a few thousand requests per second every
//! request would go out up to 1 ms late and in bursts, which distorts both the load and
//! the measurement. On Linux each connection gets a timerfd instead (hrtimer precision,
//! tens of microseconds), driven by the same epoll loop; elsewhere, or if the timerfd
//! cannot be created, the tokio timer is the fallback.

use tokio::time::Instant;

/// Waits shorter than this are not worth a syscall and a wake-up: send right away.
const MIN_WAIT: std::time::Duration = std::time::Duration::from_micros(5);

pub(crate) struct Pacer {
    #[cfg(target_os = "linux")]
    fd: Option<tokio::io::unix::AsyncFd<linux::Tfd>>,
}

impl Pacer {
    pub fn new() -> Pacer {
        Pacer {
            #[cfg(target_os = "linux")]
            fd: linux::Tfd::new().and_then(|t| tokio::io::unix::AsyncFd::new(t).ok()),
        }
    }

    /// Sleeps until `t` (returns at once if it has passed).
    pub async fn sleep_until(&mut self, t: Instant) {
        let now = Instant::now();
        if t <= now + MIN_WAIT {
            return;
        }
        #[cfg(target_os = "linux")]
        if let Some(fd) = &self.fd {
            if linux::wait(fd, t - now).await.is_ok() {
                return;
            }
            // A failing timerfd should not stop the run: fall back for the rest.
            self.fd = None;
        }
        tokio::time::sleep_until(t).await;
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
            // Reading the expiration count re-arms readiness; WouldBlock means a stale
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
