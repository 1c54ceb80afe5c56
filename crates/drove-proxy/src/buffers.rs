//! The worker's free lists of I/O buffers, so that neither idle client connections nor
//! idle upstream connections hold memory: a connection takes a buffer when bytes arrive
//! and gives it back when it goes quiet. Kept apart from the upstream connection pool
//! ([`crate::upstream::Pool`]), which holds sockets, not memory.

use std::cell::RefCell;

use crate::sock::Buf;

/// I/O buffer size: a typical head fits many times over; bodies stream through it.
pub(crate) const BUF_SIZE: usize = 16 * 1024;

/// Buffers kept for reuse per worker and kind (beyond: freed).
const MAX_FREE_BUFFERS: usize = 1024;

#[derive(Default)]
pub(crate) struct Buffers {
    /// Output buffers (heads being written).
    outputs: RefCell<Vec<Vec<u8>>>,
    /// Input buffers (reads).
    inputs: RefCell<Vec<Buf>>,
}

impl Buffers {
    /// An empty input buffer of [`BUF_SIZE`] bytes.
    pub(crate) fn input(&self) -> Buf {
        self.inputs
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| Buf::with_capacity(BUF_SIZE))
    }

    /// Gives an input buffer back for reuse (grown ones are dropped: memory stays bounded).
    pub(crate) fn recycle_input(&self, mut buf: Buf) {
        if buf.capacity() == BUF_SIZE {
            buf.clear();
            let mut free = self.inputs.borrow_mut();
            if free.len() < MAX_FREE_BUFFERS {
                free.push(buf);
            }
        }
    }

    /// An empty output buffer with room for [`BUF_SIZE`] bytes.
    pub(crate) fn output(&self) -> Vec<u8> {
        self.outputs
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(BUF_SIZE))
    }

    /// Gives an output buffer back for reuse.
    pub(crate) fn recycle(&self, mut buf: Vec<u8>) {
        if buf.capacity() == 0 {
            return;
        }
        buf.clear();
        // Buffers grown for a large head are not kept: memory stays bounded.
        if buf.capacity() <= 4 * BUF_SIZE {
            let mut free = self.outputs.borrow_mut();
            if free.len() < MAX_FREE_BUFFERS {
                free.push(buf);
            }
        }
    }
}
