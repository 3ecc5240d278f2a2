// SPDX-License-Identifier: GPL-2.0

//! Jobs: delayed work items embedded in an `Arc`-owned object.
//!
//! Modelled on `kernel::workqueue::Work`, which 6.12 has only without a
//! delay and without cancellation.  A [`Job`] is a field of its owner `T`;
//! queueing it hands an `Arc<T>` to the pending job, so the owner lives as
//! long as the job may run, and [`Job::disable`] cancels a pending run
//! (giving its `Arc` back) and prevents every later one.  An owner that
//! disables its jobs when it stops cannot leak through them.

use core::marker::PhantomData;

use kernel::bindings;
use kernel::prelude::*;
use kernel::sync::Arc;
use kernel::types::Opaque;

use crate::{glue, wq};

/// What a job of id `ID` does when it runs.
pub(crate) trait JobRun<const ID: u64>: Send + Sync + Sized {
    /// The queue the job runs on: [`wq::Kind::Wait`] for a job that may
    /// sleep on the network, a lock or I/O (see [`crate::wq`]).
    const QUEUE: wq::Kind = wq::Kind::Io;
    /// Runs the job, in process context, on its workqueue.
    fn run(this: Arc<Self>);
}

/// Where a type keeps its job of id `ID`.
///
/// # Safety
///
/// `OFFSET` must be the offset of a field of type `Job<Self, ID>` in
/// `Self`.  Use [`impl_has_job!`].
pub(crate) unsafe trait HasJob<const ID: u64> {
    /// Byte offset of the job in `Self`.
    const OFFSET: usize;
}

/// Implements [`HasJob`] for a field.
macro_rules! impl_has_job {
    ($t:ty, $id:expr, $field:ident) => {
        // SAFETY: the offset is that of the named field, whose type the
        // assertion below checks.
        unsafe impl $crate::job::HasJob<{ $id }> for $t {
            const OFFSET: usize = {
                fn _check(t: &$t) -> &$crate::job::Job<$t, { $id }> {
                    &t.$field
                }
                ::core::mem::offset_of!($t, $field)
            };
        }
    };
}
pub(crate) use impl_has_job;

/// A delayed work item of an `Arc<T>`.
#[pin_data]
pub(crate) struct Job<T, const ID: u64> {
    #[pin]
    dw: Opaque<bindings::delayed_work>,
    _t: PhantomData<fn(T)>,
}

// SAFETY: the delayed work is used through the workqueue API, which
// synchronises; the job itself holds no `T`.
unsafe impl<T, const ID: u64> Send for Job<T, ID> {}
// SAFETY: as above.
unsafe impl<T, const ID: u64> Sync for Job<T, ID> {}

impl<T: JobRun<ID> + HasJob<ID>, const ID: u64> Job<T, ID> {
    /// A job, idle.
    pub(crate) fn new() -> impl PinInit<Self> {
        pin_init!(Self {
            // SAFETY: `dst_dwork_init` initialises the delayed work in place.
            dw <- Opaque::ffi_init(|slot: *mut bindings::delayed_work| unsafe {
                glue::dst_dwork_init(slot, run_job::<T, ID>)
            }),
            _t: PhantomData,
        })
    }

    fn raw(this: &T) -> *mut bindings::delayed_work {
        let job = core::ptr::from_ref(this)
            .cast::<u8>()
            .wrapping_add(T::OFFSET)
            .cast::<Job<T, ID>>();
        // SAFETY: `HasJob` guarantees a `Job<T, ID>` at `OFFSET` in `T`.
        unsafe { (*job).dw.get() }
    }

    /// Runs the job after `delay_ms`, unless it is already pending.
    pub(crate) fn queue(this: Arc<T>, delay_ms: u32) {
        let dw = Self::raw(&this);
        let ptr = Arc::into_raw(this);
        // SAFETY: `dw` is the job's initialised delayed work; the queue
        // lives while any object with jobs exists.
        if !unsafe { glue::dst_dwork_queue(dw, wq::raw(T::QUEUE), delay_ms) } {
            // Already pending (it holds its own reference) or disabled.
            // SAFETY: `ptr` came from `Arc::into_raw` just above.
            drop(unsafe { Arc::from_raw(ptr) });
        }
    }

    /// Runs the job as soon as possible: a run pending after a delay is
    /// brought forward.  (If another `queue` with a delay slips in between,
    /// its delay stands.)
    pub(crate) fn queue_now(this: Arc<T>) {
        let dw = Self::raw(&this);
        // SAFETY: `dw` is initialised.  `cancel_delayed_work` is true only
        // if it took a pending run off the queue (a disabled job has none),
        // whose reference is then ours to drop.
        if unsafe { glue::dst_dwork_cancel(dw) } {
            // SAFETY: a pending job holds exactly one reference, from
            // `Arc::into_raw` in `queue`.
            drop(unsafe { Arc::from_raw(core::ptr::from_ref(&*this)) });
        }
        Self::queue(this, 0);
    }

    /// Cancels a pending run, waits for a running one, and prevents every
    /// later one.
    pub(crate) fn disable(this: &T) {
        let dw = Self::raw(this);
        // SAFETY: `dw` is initialised.  If a run was pending, its reference
        // was not consumed and is ours to drop.
        if unsafe { glue::dst_dwork_disable_sync(dw) } {
            // SAFETY: a pending job holds exactly one reference, from
            // `Arc::into_raw` in `queue`.
            drop(unsafe { Arc::from_raw(core::ptr::from_ref(this)) });
        }
    }
}

/// # Safety
///
/// Called by the workqueue only, for a job queued by [`Job::queue`],
/// which left an `Arc<T>` reference for it.
unsafe extern "C" fn run_job<T: JobRun<ID> + HasJob<ID>, const ID: u64>(
    work: *mut bindings::work_struct,
) {
    // `work` is the first field of the `delayed_work`, itself the first
    // field of the `Job`.
    let owner = work.cast::<u8>().wrapping_sub(T::OFFSET).cast::<T>();
    // SAFETY: the pending job held one reference to its owner, made with
    // `Arc::into_raw`; it is now ours.
    let this = unsafe { Arc::from_raw(owner) };
    T::run(this);
}
