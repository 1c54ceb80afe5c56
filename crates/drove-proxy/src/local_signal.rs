//! Signals within one worker thread: a count of events and the wakers of the tasks
//! waiting for the next one, with no lock or atomic per wait. A worker has two:
//! - `idle_end`: drove shuts down or hands its connections over (fires once); idle
//!   connections wait on it between requests.
//! - `left_rotation`: a backend left rotation for its health; attempts waiting for a
//!   response head wait on it (`request::forward`), to give a frozen backend's
//!   requests to another at once.
//!
//! Why not the watches these come from: every wait on a watch made a `changed()`
//! future that took the watch's mutex to register a waiter and again to remove it, once
//! per keep-alive request (callgrind: ~750 instructions per request). A worker's tasks
//! never leave its thread, so one task per worker waits on each watch (see
//! `worker::accept_loop`) and fires the signal here.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

/// A count of events; tasks wait for it to pass a value they saw.
#[derive(Default)]
pub(crate) struct LocalSignal {
    fired: Cell<u64>,
    /// Waiters' wakers by slot; `free` lists the empty slots (no allocation per wait
    /// once the vectors reached the number of waiting tasks).
    waiters: RefCell<Vec<Option<Waker>>>,
    free: RefCell<Vec<usize>>,
}

impl LocalSignal {
    /// How many times it fired.
    pub(crate) fn fired(&self) -> u64 {
        self.fired.get()
    }

    /// One more event: every wait resolves.
    pub(crate) fn fire(&self) {
        self.fired.set(self.fired.get() + 1);
        let wakers: Vec<Waker> = self
            .waiters
            .borrow_mut()
            .iter_mut()
            .filter_map(Option::take)
            .collect();
        for w in wakers {
            w.wake();
        }
    }

    /// Resolves once it fired more than `seen` times (at once if it already has).
    pub(crate) fn wait_past(&self, seen: u64) -> Wait<'_> {
        Wait {
            signal: self,
            seen,
            slot: None,
        }
    }
}

/// See [`LocalSignal::wait_past`].
pub(crate) struct Wait<'a> {
    signal: &'a LocalSignal,
    seen: u64,
    slot: Option<usize>,
}

impl Future for Wait<'_> {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let signal = self.signal;
        if signal.fired.get() > self.seen {
            return Poll::Ready(());
        }
        let mut waiters = signal.waiters.borrow_mut();
        match self.slot {
            Some(i) => match &mut waiters[i] {
                Some(w) if w.will_wake(cx.waker()) => {}
                w => *w = Some(cx.waker().clone()),
            },
            None => {
                let i = match signal.free.borrow_mut().pop() {
                    Some(i) => {
                        waiters[i] = Some(cx.waker().clone());
                        i
                    }
                    None => {
                        waiters.push(Some(cx.waker().clone()));
                        waiters.len() - 1
                    }
                };
                drop(waiters);
                self.slot = Some(i);
            }
        }
        Poll::Pending
    }
}

impl Drop for Wait<'_> {
    fn drop(&mut self) {
        if let Some(i) = self.slot {
            self.signal.waiters.borrow_mut()[i] = None;
            self.signal.free.borrow_mut().push(i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waits_resolve_together_and_slots_are_reused() {
        let signal = std::rc::Rc::new(LocalSignal::default());
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                // A wait dropped before the event gives its slot back.
                {
                    let w = signal.wait_past(0);
                    tokio::pin!(w);
                    assert!(futures_util::poll!(w.as_mut()).is_pending());
                }
                assert_eq!(signal.free.borrow().len(), 1);
                let tasks: Vec<_> = (0..3)
                    .map(|_| {
                        let signal = signal.clone();
                        tokio::task::spawn_local(async move { signal.wait_past(0).await })
                    })
                    .collect();
                tokio::task::yield_now().await;
                assert_eq!(signal.waiters.borrow().len(), 3);
                signal.fire();
                for t in tasks {
                    t.await.unwrap();
                }
                // A wait past a count already passed resolves at once; past the
                // current one, it waits for the next event.
                signal.wait_past(0).await;
                assert_eq!(signal.fired(), 1);
                let next = signal.wait_past(1);
                tokio::pin!(next);
                assert!(futures_util::poll!(next.as_mut()).is_pending());
                signal.fire();
                assert!(futures_util::poll!(next.as_mut()).is_ready());
            })
            .await;
    }
}
