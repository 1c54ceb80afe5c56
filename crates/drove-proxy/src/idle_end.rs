//! The end of idle waits on one worker (drove shuts down or hands its connections over):
//! a flag and the wakers of the connections waiting between requests, all on the
//! worker's thread.
//!
//! Why not the `idle_end` watch itself: every idle wait made a `changed()` future that
//! took the watch's mutex to register a waiter and again to remove it, once per
//! keep-alive request (callgrind: ~750 instructions per request). The worker's
//! connections never leave its thread, so one task per worker waits on the watch (see
//! `worker::accept_loop`) and ends them here with no lock or atomic per wait.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

/// Set once; idle connections waiting in [`IdleEnd::wait`] wake up.
#[derive(Default)]
pub(crate) struct IdleEnd {
    ended: Cell<bool>,
    /// Waiters' wakers by slot; `free` lists the empty slots (no allocation per wait
    /// once the vectors reached the number of idle connections).
    waiters: RefCell<Vec<Option<Waker>>>,
    free: RefCell<Vec<usize>>,
}

impl IdleEnd {
    /// Whether idle connections should end.
    pub(crate) fn ended(&self) -> bool {
        self.ended.get()
    }

    /// Ends every idle wait, now and later.
    pub(crate) fn end(&self) {
        self.ended.set(true);
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

    /// Resolves once [`end`](Self::end) was called.
    pub(crate) fn wait(&self) -> Wait<'_> {
        Wait {
            end: self,
            slot: None,
        }
    }
}

/// See [`IdleEnd::wait`].
pub(crate) struct Wait<'a> {
    end: &'a IdleEnd,
    slot: Option<usize>,
}

impl Future for Wait<'_> {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let end = self.end;
        if end.ended.get() {
            return Poll::Ready(());
        }
        let mut waiters = end.waiters.borrow_mut();
        match self.slot {
            Some(i) => match &mut waiters[i] {
                Some(w) if w.will_wake(cx.waker()) => {}
                w => *w = Some(cx.waker().clone()),
            },
            None => {
                let i = match end.free.borrow_mut().pop() {
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
            self.end.waiters.borrow_mut()[i] = None;
            self.end.free.borrow_mut().push(i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waits_end_together_and_slots_are_reused() {
        let end = std::rc::Rc::new(IdleEnd::default());
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                // A wait dropped before the end gives its slot back.
                {
                    let w = end.wait();
                    tokio::pin!(w);
                    assert!(futures_util::poll!(w.as_mut()).is_pending());
                }
                assert_eq!(end.free.borrow().len(), 1);
                let tasks: Vec<_> = (0..3)
                    .map(|_| {
                        let end = end.clone();
                        tokio::task::spawn_local(async move { end.wait().await })
                    })
                    .collect();
                tokio::task::yield_now().await;
                assert_eq!(end.waiters.borrow().len(), 3);
                end.end();
                for t in tasks {
                    t.await.unwrap();
                }
                // After the end, a wait resolves at once.
                end.wait().await;
                assert!(end.ended());
            })
            .await;
    }
}
