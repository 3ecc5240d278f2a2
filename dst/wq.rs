// SPDX-License-Identifier: GPL-2.0

//! The module's workqueue.
//!
//! Deferred I/O runs here: a read retried on another leg, and the clones of
//! a large mirror write that go to the other legs in parallel.  The queue is
//! unbound and high-priority, so that work starts at once on another CPU,
//! and has `WQ_MEM_RECLAIM`, so it makes progress under memory pressure,
//! when writeback through dst is what frees memory; the system workqueues
//! do not promise that.

use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicPtr, Ordering};

use kernel::bindings;
use kernel::prelude::*;
use kernel::workqueue::Queue;

use crate::glue;

static QUEUE: AtomicPtr<bindings::workqueue_struct> = AtomicPtr::new(ptr::null_mut());

/// Owns the module's workqueue; dropping it drains and destroys the queue.
pub(crate) struct WorkQueue(NonNull<bindings::workqueue_struct>);

// SAFETY: a workqueue may be used and destroyed from any thread.
unsafe impl Send for WorkQueue {}
// SAFETY: as above.
unsafe impl Sync for WorkQueue {}

impl WorkQueue {
    /// Creates the module's workqueue.  Call once, at module init.
    pub(crate) fn new() -> Result<Self> {
        // SAFETY: the name is a NUL-terminated static string.
        let raw = unsafe { glue::dst_alloc_workqueue(kernel::c_str!("dst").as_char_ptr()) };
        let raw = NonNull::new(raw).ok_or(ENOMEM)?;
        QUEUE.store(raw.as_ptr(), Ordering::Release);
        Ok(WorkQueue(raw))
    }
}

impl Drop for WorkQueue {
    fn drop(&mut self) {
        QUEUE.store(ptr::null_mut(), Ordering::Release);
        // SAFETY: created in `new`; destroying drains pending work first.
        unsafe { bindings::destroy_workqueue(self.0.as_ptr()) };
    }
}

/// The module's workqueue.
pub(crate) fn queue() -> &'static Queue {
    let raw = QUEUE.load(Ordering::Acquire);
    // SAFETY: per the above, `raw` is a live workqueue whenever a device
    // exists to call this, and it outlives every such call.
    unsafe { Queue::from_raw(raw) }
}

/// The module's workqueue, as a C pointer (for delayed jobs, see `job`).
pub(crate) fn raw() -> *mut bindings::workqueue_struct {
    QUEUE.load(Ordering::Acquire)
}
