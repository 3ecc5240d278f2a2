// SPDX-License-Identifier: GPL-2.0

//! Bios submitted to dst devices, and bio sets.

use core::ptr::NonNull;

use kernel::bindings;
use kernel::init::{self, PinInit};
use kernel::prelude::*;
use kernel::types::Opaque;

use crate::glue;

/// What a bio asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    /// Read data.
    Read,
    /// Write data (or, when empty, only flush: see [`Bio::is_flush_only`]).
    Write,
    /// Discard a range.
    Discard,
    /// Write zeroes to a range.
    WriteZeroes,
    /// Anything else (zone operations, secure erase...): refused.
    Other,
}

const REQ_OP_MASK: u32 = (1 << bindings::REQ_OP_BITS) - 1;
const REQ_PREFLUSH: u32 = 1 << bindings::req_flag_bits___REQ_PREFLUSH;
const REQ_FUA: u32 = 1 << bindings::req_flag_bits___REQ_FUA;

/// Converts a result to a block status.
pub(crate) fn to_status(res: Result) -> bindings::blk_status_t {
    match res {
        Ok(()) => bindings::BLK_STS_OK as bindings::blk_status_t,
        // SAFETY: plain conversion function, any errno is accepted.
        Err(e) => unsafe { bindings::errno_to_blk_status(e.to_errno()) },
    }
}

/// Converts a block status to a result.
pub(crate) fn from_status(status: bindings::blk_status_t) -> Result {
    if status == bindings::BLK_STS_OK as bindings::blk_status_t {
        return Ok(());
    }
    // SAFETY: plain conversion function, any status is accepted.
    Err(Error::from_errno(unsafe { bindings::blk_status_to_errno(status) }))
}

/// A bio submitted to a dst device.  dst owns it until it calls
/// [`Bio::end`] (or hands it to the I/O engine, which ends it), exactly once.
pub(crate) struct Bio(NonNull<bindings::bio>);

// SAFETY: a bio may be completed from any context and any thread.
unsafe impl Send for Bio {}

impl Bio {
    /// Takes ownership of a bio submitted to a dst disk, after splitting it
    /// to the queue limits.  `None` when the block layer already ended it.
    ///
    /// # Safety
    ///
    /// `raw` must be a live bio passed to `submit_bio` of a dst disk, not yet
    /// ended, and not used by the caller afterwards.
    pub(crate) unsafe fn from_submit(raw: *mut bindings::bio) -> Option<Self> {
        // SAFETY: per the function's contract; splitting may end the bio, in
        // which case it returns NULL.
        let raw = unsafe { bindings::bio_split_to_limits(raw) };
        NonNull::new(raw).map(Bio)
    }

    fn opf(&self) -> u32 {
        // SAFETY: the bio is live while we own it.
        unsafe { (*self.0.as_ptr()).bi_opf }
    }

    /// The operation.
    pub(crate) fn op(&self) -> Op {
        match self.opf() & REQ_OP_MASK {
            bindings::req_op_REQ_OP_READ => Op::Read,
            bindings::req_op_REQ_OP_WRITE => Op::Write,
            bindings::req_op_REQ_OP_DISCARD => Op::Discard,
            bindings::req_op_REQ_OP_WRITE_ZEROES => Op::WriteZeroes,
            _ => Op::Other,
        }
    }

    /// Whether the bio asks for the volatile caches to be flushed first.
    pub(crate) fn is_preflush(&self) -> bool {
        self.opf() & REQ_PREFLUSH != 0
    }

    /// Whether the bio asks for its data to be durable on completion.
    #[allow(dead_code)]
    pub(crate) fn is_fua(&self) -> bool {
        self.opf() & REQ_FUA != 0
    }

    /// Whether this is a flush without data.
    pub(crate) fn is_flush_only(&self) -> bool {
        self.is_preflush() && self.bytes() == 0
    }

    /// First sector (512 bytes) addressed.
    pub(crate) fn sector(&self) -> u64 {
        // SAFETY: the bio is live while we own it.
        unsafe { (*self.0.as_ptr()).bi_iter.bi_sector }
    }

    /// Length in bytes.
    pub(crate) fn bytes(&self) -> u32 {
        // SAFETY: the bio is live while we own it.
        unsafe { (*self.0.as_ptr()).bi_iter.bi_size }
    }

    /// Length in sectors.
    pub(crate) fn sectors(&self) -> u32 {
        self.bytes() >> bindings::SECTOR_SHIFT
    }

    /// Ends the bio with `res`.
    pub(crate) fn end(self, res: Result) {
        let raw = self.into_raw();
        // SAFETY: we own the bio; ending it gives it back to its submitter.
        unsafe {
            (*raw).bi_status = to_status(res);
            bindings::bio_endio(raw);
        }
    }

    /// Splits off the first `sectors` sectors and returns them as a bio of
    /// their own; the rest is resubmitted to the device, and the original
    /// completes only when both parts have.  Ends the bio with an error and
    /// returns `None` if the split cannot be made.
    pub(crate) fn split_front(self, sectors: u32, bs: &BioSet) -> Option<Bio> {
        if sectors == 0 || sectors >= self.sectors() {
            self.end(Err(EINVAL));
            return None;
        }
        let raw = self.0.as_ptr();
        // SAFETY: `0 < sectors < bio_sectors(raw)` as `bio_split` requires,
        // and `bs` is an initialised bio set.
        let front = unsafe { glue::dst_bio_split(raw, sectors, bs.as_raw()) };
        let Some(front) = NonNull::new(front) else {
            self.end(Err(ENOMEM));
            return None;
        };
        let rest = self.into_raw();
        // SAFETY: `front` was split from `rest`; chaining makes `rest`
        // complete after `front`, and resubmitting hands `rest` back to the
        // block layer, which calls our `submit_bio` for it again.
        unsafe {
            bindings::bio_chain(front.as_ptr(), rest);
            bindings::submit_bio_noacct(rest);
        }
        Some(Bio(front))
    }

    /// The raw bio.
    pub(crate) fn as_raw(&self) -> *mut bindings::bio {
        self.0.as_ptr()
    }

    /// Gives up ownership without ending the bio.
    pub(crate) fn into_raw(self) -> *mut bindings::bio {
        let raw = self.0.as_ptr();
        core::mem::forget(self);
        raw
    }
}

impl Drop for Bio {
    fn drop(&mut self) {
        // A bio must always be ended; fail it rather than leak it.
        // SAFETY: we own the bio.
        unsafe {
            (*self.0.as_ptr()).bi_status = to_status(Err(EIO));
            bindings::bio_endio(self.0.as_ptr());
        }
    }
}

/// A `struct bio_set`: a mempool of bios, each preceded by `front_pad`
/// bytes of caller data.  Allocations from it do not fail, and its rescuer
/// keeps them from deadlocking when called from `submit_bio`.
#[pin_data(PinnedDrop)]
pub(crate) struct BioSet {
    #[pin]
    inner: Opaque<bindings::bio_set>,
}

// SAFETY: a bio set is used concurrently by design (mempool, locks inside).
unsafe impl Send for BioSet {}
// SAFETY: as above.
unsafe impl Sync for BioSet {}

impl BioSet {
    /// A bio set whose bios carry `front_pad` bytes in front.
    pub(crate) fn new(front_pad: u32) -> impl PinInit<Self, Error> {
        // SAFETY: `bioset_init` initialises the whole `bio_set` in place, and
        // on failure leaves nothing to clean up; the slot is pinned.
        let inner = unsafe {
            init::pin_init_from_closure(move |slot: *mut Opaque<bindings::bio_set>| {
                kernel::error::to_result(glue::dst_bioset_init(
                    Opaque::raw_get(slot),
                    front_pad,
                    true,
                ))
            })
        };
        try_pin_init!(BioSet { inner <- inner }? Error)
    }

    /// The raw bio set.
    pub(crate) fn as_raw(&self) -> *mut bindings::bio_set {
        self.inner.get()
    }
}

#[pinned_drop]
impl PinnedDrop for BioSet {
    fn drop(self: Pin<&mut Self>) {
        // SAFETY: initialised in `new`; every bio from it has been freed,
        // since they all belong to I/Os of a device that is idle by now.
        unsafe { bindings::bioset_exit(self.inner.get()) };
    }
}
