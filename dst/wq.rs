// SPDX-License-Identifier: GPL-2.0

//! The module's workqueues.
//!
//! Three queues, all unbound and high-priority, so that work starts at
//! once on another CPU, and all with `WQ_MEM_RECLAIM`, so that each makes
//! progress under memory pressure, when writeback through dst is what
//! frees memory (the system workqueues do not promise that):
//!
//! - the I/O queue ([`Kind::Io`]) runs work that never sleeps for long:
//!   the clones of a large mirror write that go to the other legs in
//!   parallel, the remote legs' send and receive passes, the resync;
//! - the defer queue ([`Kind::Defer`]) sends I/O again from process
//!   context: a read retried on another leg, clones held back until their
//!   flushes ended, writes parked by the resync barrier.  It may wait for
//!   a bio from a device's bio sets, which I/O in flight refills, some of
//!   it ended by the I/O queue's work;
//! - the wait queue ([`Kind::Wait`]) runs jobs that may sleep on the
//!   network, a lock or I/O: a remote leg's connect and handshake, an
//!   export's accept, handshake and receive job (which runs flushes and
//!   zeroing synchronously), read repair (which takes the device's admin
//!   lock) and events.
//!
//! When no new worker can be made, a queue's work runs one item at a time
//! on its rescuer.  A job that sleeps waiting for I/O must then not sit on
//! the rescuer the I/O it waits for needs: hence the two queues.

use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicPtr, Ordering};

use kernel::bindings;
use kernel::prelude::*;
use kernel::workqueue::Queue;

use crate::glue;

/// Which of the module's queues.
#[derive(Clone, Copy)]
pub(crate) enum Kind {
    /// Work that does not sleep for long.
    Io,
    /// I/O sent again, which may wait for a bio set's reserve.
    Defer,
    /// Jobs that may sleep on the network, a lock or I/O.
    Wait,
}

static IO: AtomicPtr<bindings::workqueue_struct> = AtomicPtr::new(ptr::null_mut());
static WAIT: AtomicPtr<bindings::workqueue_struct> = AtomicPtr::new(ptr::null_mut());
static DEFER: AtomicPtr<bindings::workqueue_struct> = AtomicPtr::new(ptr::null_mut());

fn slot(kind: Kind) -> &'static AtomicPtr<bindings::workqueue_struct> {
    match kind {
        Kind::Io => &IO,
        Kind::Wait => &WAIT,
        Kind::Defer => &DEFER,
    }
}

/// Owns the module's workqueues; dropping it drains and destroys them.
pub(crate) struct WorkQueues {
    io: NonNull<bindings::workqueue_struct>,
    wait: NonNull<bindings::workqueue_struct>,
    defer: NonNull<bindings::workqueue_struct>,
}

// SAFETY: a workqueue may be used and destroyed from any thread.
unsafe impl Send for WorkQueues {}
// SAFETY: as above.
unsafe impl Sync for WorkQueues {}

/// Allocates a queue named `name`.
fn alloc(name: &'static CStr) -> Result<NonNull<bindings::workqueue_struct>> {
    // SAFETY: the name is a NUL-terminated static string.
    let raw = unsafe { glue::dst_alloc_workqueue(name.as_char_ptr()) };
    NonNull::new(raw).ok_or(ENOMEM)
}

/// Destroys a queue made by [`alloc`], after its pending work has run.
///
/// # Safety
///
/// `wq` must come from [`alloc`], be destroyed only once, and not be used
/// afterwards.
unsafe fn destroy(wq: NonNull<bindings::workqueue_struct>) {
    // SAFETY: per the function's contract; destroying drains it first.
    unsafe { bindings::destroy_workqueue(wq.as_ptr()) };
}

impl WorkQueues {
    /// Creates the module's workqueues.  Call once, at module init.
    pub(crate) fn new() -> Result<Self> {
        let io = alloc(kernel::c_str!("dst"))?;
        let wait = match alloc(kernel::c_str!("dst_wait")) {
            Ok(wait) => wait,
            Err(e) => {
                // SAFETY: just made, and not published.
                unsafe { destroy(io) };
                return Err(e);
            }
        };
        let defer = match alloc(kernel::c_str!("dst_defer")) {
            Ok(defer) => defer,
            Err(e) => {
                // SAFETY: just made, and not published.
                unsafe {
                    destroy(wait);
                    destroy(io);
                }
                return Err(e);
            }
        };
        IO.store(io.as_ptr(), Ordering::Release);
        WAIT.store(wait.as_ptr(), Ordering::Release);
        DEFER.store(defer.as_ptr(), Ordering::Release);
        Ok(WorkQueues { io, wait, defer })
    }
}

impl Drop for WorkQueues {
    fn drop(&mut self) {
        // Every device, remote leg and export is gone by now, and their
        // jobs with them: the queues are idle.
        DEFER.store(ptr::null_mut(), Ordering::Release);
        // SAFETY: made in `new`; only this drop destroys it.
        unsafe { destroy(self.defer) };
        WAIT.store(ptr::null_mut(), Ordering::Release);
        // SAFETY: made in `new`; only this drop destroys it.
        unsafe { destroy(self.wait) };
        IO.store(ptr::null_mut(), Ordering::Release);
        // SAFETY: as above.
        unsafe { destroy(self.io) };
    }
}

/// The I/O queue, for `kernel::workqueue` work items.
pub(crate) fn queue() -> &'static Queue {
    queue_of(Kind::Io)
}

/// The queue `kind`, for `kernel::workqueue` work items.
pub(crate) fn queue_of(kind: Kind) -> &'static Queue {
    let raw = slot(kind).load(Ordering::Acquire);
    // SAFETY: per the above, `raw` is a live workqueue whenever a device
    // exists to call this, and it outlives every such call.
    unsafe { Queue::from_raw(raw) }
}

/// The queue `kind`, as a C pointer (for delayed jobs, see `job`).
pub(crate) fn raw(kind: Kind) -> *mut bindings::workqueue_struct {
    slot(kind).load(Ordering::Acquire)
}
