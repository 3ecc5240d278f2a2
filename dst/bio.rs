// SPDX-License-Identifier: GPL-2.0

//! Bios submitted to dst devices, and bio sets.

use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicPtr, Ordering};

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

/// The operation of a raw bio.
fn op_of(opf: u32) -> Op {
    match opf & REQ_OP_MASK {
        bindings::req_op_REQ_OP_READ => Op::Read,
        bindings::req_op_REQ_OP_WRITE => Op::Write,
        bindings::req_op_REQ_OP_DISCARD => Op::Discard,
        bindings::req_op_REQ_OP_WRITE_ZEROES => Op::WriteZeroes,
        _ => Op::Other,
    }
}

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
    Err(Error::from_errno(unsafe {
        bindings::blk_status_to_errno(status)
    }))
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
        op_of(self.opf())
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

/// A bio handed to a leg that is not a local block device (a remote leg):
/// the leg owns it until it ends it, exactly once.
pub(crate) struct LegBio(NonNull<bindings::bio>);

// SAFETY: a bio may be handed over and ended from any thread.
unsafe impl Send for LegBio {}

impl LegBio {
    /// Takes ownership of `raw`.
    ///
    /// # Safety
    ///
    /// `raw` must be a live bio with an end_io, not owned by anyone else
    /// from now on.
    pub(crate) unsafe fn from_raw(raw: *mut bindings::bio) -> Option<Self> {
        NonNull::new(raw).map(LegBio)
    }

    fn opf(&self) -> u32 {
        // SAFETY: the bio is live while we own it.
        unsafe { (*self.0.as_ptr()).bi_opf }
    }

    /// The operation.
    pub(crate) fn op(&self) -> Op {
        op_of(self.opf())
    }

    /// Whether the data must be durable when the bio completes.
    pub(crate) fn is_fua(&self) -> bool {
        self.opf() & REQ_FUA != 0
    }

    /// Whether the volatile cache must be flushed first.
    pub(crate) fn is_preflush(&self) -> bool {
        self.opf() & REQ_PREFLUSH != 0
    }

    /// First sector addressed.
    pub(crate) fn sector(&self) -> u64 {
        // SAFETY: the bio is live while we own it.
        unsafe { (*self.0.as_ptr()).bi_iter.bi_sector }
    }

    /// Length in bytes.
    pub(crate) fn bytes(&self) -> u32 {
        // SAFETY: the bio is live while we own it.
        unsafe { (*self.0.as_ptr()).bi_iter.bi_size }
    }

    /// The raw bio, for the socket layer.
    pub(crate) fn as_raw(&self) -> *mut bindings::bio {
        self.0.as_ptr()
    }

    /// Gives up ownership of the bio (see [`LegBio::from_raw`]).
    pub(crate) fn into_raw(self) -> *mut bindings::bio {
        let raw = self.0.as_ptr();
        core::mem::forget(self);
        raw
    }

    /// Ends the bio with `res` (an error a split-off part recorded stays,
    /// see [`LegBio::record`]).
    pub(crate) fn end(mut self, res: Result) {
        self.record(res);
        self.end_recorded();
    }

    /// Records the result to end the bio with later ([`LegBio::end_recorded`]).
    /// A success does not replace an error already there: one that a part
    /// split off by [`LegBio::split_front`] ended with.
    pub(crate) fn record(&mut self, res: Result) {
        let raw = self.0.as_ptr();
        // SAFETY: the bio is live while we own it.
        unsafe {
            if res.is_err() || (*raw).bi_status == 0 {
                (*raw).bi_status = to_status(res);
            }
        }
    }

    /// Splits off the first `sectors` sectors (`0 < sectors <` the bio's
    /// length) as a bio of their own; `self` keeps the rest and ends only
    /// after the part split off has, with its error if it failed.  `None`
    /// (and nothing changed) if the lengths are wrong or no bio can be had.
    pub(crate) fn split_front(&mut self, sectors: u32, bs: &BioSet) -> Option<LegBio> {
        let raw = self.0.as_ptr();
        if sectors == 0 || sectors >= self.bytes() >> bindings::SECTOR_SHIFT {
            return None;
        }
        // SAFETY: `0 < sectors < bio_sectors(raw)` as `bio_split` requires,
        // and `bs` is an initialised bio set.
        let front = NonNull::new(unsafe { glue::dst_bio_split(raw, sectors, bs.as_raw()) })?;
        // SAFETY: `front` was split from `raw`, which we own; chained, it
        // ends `raw`'s remaining count (and passes on its error) when it
        // ends, and has an end_io of its own.
        unsafe { bindings::bio_chain(front.as_ptr(), raw) };
        Some(LegBio(front))
    }

    /// Ends the bio with the result recorded by [`LegBio::record`].
    pub(crate) fn end_recorded(self) {
        let raw = self.into_raw();
        // SAFETY: we own the bio; ending it gives it back to its maker.
        unsafe { bindings::bio_endio(raw) };
    }

    /// Submits the bio to the block device it names (a local leg).
    pub(crate) fn submit_local(self) {
        let raw = self.into_raw();
        // SAFETY: we own the bio, which names a block device; the device
        // ends it.
        unsafe { bindings::submit_bio_noacct(raw) };
    }
}

impl Drop for LegBio {
    fn drop(&mut self) {
        // Never leak a bio: fail it.
        // SAFETY: we own the bio.
        unsafe {
            (*self.0.as_ptr()).bi_status = to_status(Err(EIO));
            bindings::bio_endio(self.0.as_ptr());
        }
    }
}

/// A FIFO of leg bios, linked through `bi_next` (unused while a bio is
/// owned by a leg).
pub(crate) struct LegBioQueue {
    head: *mut bindings::bio,
    tail: *mut bindings::bio,
}

// SAFETY: the queue owns its bios, which may move between threads.
unsafe impl Send for LegBioQueue {}

impl LegBioQueue {
    /// An empty queue.
    pub(crate) const fn new() -> Self {
        LegBioQueue {
            head: ptr::null_mut(),
            tail: ptr::null_mut(),
        }
    }

    /// Whether the queue is empty.
    pub(crate) fn is_empty(&self) -> bool {
        self.head.is_null()
    }

    /// Adds `bio` at the end.
    pub(crate) fn push_back(&mut self, bio: LegBio) {
        let raw = bio.into_raw();
        // SAFETY: we own `raw` and the queued bios.
        unsafe {
            (*raw).bi_next = ptr::null_mut();
            if self.tail.is_null() {
                self.head = raw;
            } else {
                (*self.tail).bi_next = raw;
            }
        }
        self.tail = raw;
    }

    /// Takes the first bio.
    pub(crate) fn pop_front(&mut self) -> Option<LegBio> {
        let raw = self.head;
        if raw.is_null() {
            return None;
        }
        // SAFETY: `raw` is queued, hence owned by us.
        unsafe {
            self.head = (*raw).bi_next;
            (*raw).bi_next = ptr::null_mut();
        }
        if self.head.is_null() {
            self.tail = ptr::null_mut();
        }
        // SAFETY: queued bios are live leg bios.
        unsafe { LegBio::from_raw(raw) }
    }

    /// Moves every bio of `other` to the end of this queue.
    pub(crate) fn append(&mut self, mut other: LegBioQueue) {
        while let Some(bio) = other.pop_front() {
            self.push_back(bio);
        }
    }

    /// Moves every bio of `front` before the bios of this queue.
    pub(crate) fn prepend(&mut self, mut front: LegBioQueue) {
        core::mem::swap(self, &mut front);
        self.append(front);
    }
}

impl Drop for LegBioQueue {
    fn drop(&mut self) {
        while let Some(bio) = self.pop_front() {
            bio.end(Err(EIO));
        }
    }
}

/// A lock-free stack of bios linked through `bi_next`: the shared core of
/// [`LegBioStack`] and [`BioStack`].
struct RawBioStack {
    head: AtomicPtr<bindings::bio>,
}

// SAFETY: only raw pointers handed over atomically.
unsafe impl Send for RawBioStack {}
// SAFETY: as above.
unsafe impl Sync for RawBioStack {}

impl RawBioStack {
    const fn new() -> Self {
        RawBioStack {
            head: AtomicPtr::new(ptr::null_mut()),
        }
    }

    /// Pushes `raw`.
    ///
    /// # Safety
    ///
    /// The caller owns `raw` and hands it over; `bi_next` is the stack's.
    unsafe fn push(&self, raw: *mut bindings::bio) {
        let mut head = self.head.load(Ordering::Relaxed);
        loop {
            // SAFETY: we own `raw` until the exchange publishes it.
            unsafe { (*raw).bi_next = head };
            match self
                .head
                .compare_exchange_weak(head, raw, Ordering::Release, Ordering::Relaxed)
            {
                Ok(_) => return,
                Err(h) => head = h,
            }
        }
    }

    /// Takes every bio pushed so far, as a chain linked through `bi_next`,
    /// oldest first (null if none).  The caller owns the chain.
    fn take(&self) -> *mut bindings::bio {
        let mut raw = self.head.swap(ptr::null_mut(), Ordering::Acquire);
        // The stack is newest first: reverse it.
        let mut rev: *mut bindings::bio = ptr::null_mut();
        while !raw.is_null() {
            // SAFETY: the stack owned `raw`; now we do.
            unsafe {
                let next = (*raw).bi_next;
                (*raw).bi_next = rev;
                rev = raw;
                raw = next;
            }
        }
        rev
    }
}

/// Bios handed over from any context, taken in batches.
pub(crate) struct LegBioStack(RawBioStack);

impl LegBioStack {
    /// An empty stack.
    pub(crate) const fn new() -> Self {
        LegBioStack(RawBioStack::new())
    }

    /// Hands `bio` over.
    pub(crate) fn push(&self, bio: LegBio) {
        // SAFETY: `into_raw` gives up our ownership to the stack.
        unsafe { self.0.push(bio.into_raw()) };
    }

    /// Takes every bio handed over so far, oldest first.
    pub(crate) fn take(&self) -> LegBioQueue {
        let mut q = LegBioQueue::new();
        let mut raw = self.0.take();
        while !raw.is_null() {
            // SAFETY: we own the chain.
            let next = unsafe { (*raw).bi_next };
            // SAFETY: every pushed bio is a live leg bio.
            if let Some(bio) = unsafe { LegBio::from_raw(raw) } {
                q.push_back(bio);
            }
            raw = next;
        }
        q
    }
}

/// A `struct bio_set`: a mempool of bios, each preceded by `front_pad`
/// bytes of caller data.  Allocations from it do not fail.  A set whose
/// bios are resubmitted from `submit_bio` (and so wait on the submitter's
/// bio list) needs a rescuer, which keeps them from deadlocking.
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
    /// A bio set whose bios carry `front_pad` bytes in front, with a
    /// rescuer if `rescuer`.
    pub(crate) fn new(front_pad: u32, rescuer: bool) -> impl PinInit<Self, Error> {
        // SAFETY: `bioset_init` initialises the whole `bio_set` in place, and
        // on failure leaves nothing to clean up; the slot is pinned.
        let inner = unsafe {
            init::pin_init_from_closure(move |slot: *mut Opaque<bindings::bio_set>| {
                kernel::error::to_result(glue::dst_bioset_init(
                    Opaque::raw_get(slot),
                    front_pad,
                    rescuer,
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

/// Pages of memory for I/O of our own (resync).
pub(crate) struct PageBuf {
    pages: NonNull<*mut bindings::page>,
    n: u32,
}

// SAFETY: the pages are plain memory, used by one I/O at a time.
unsafe impl Send for PageBuf {}
// SAFETY: `&PageBuf` gives no access to the memory itself.
unsafe impl Sync for PageBuf {}

impl PageBuf {
    /// A buffer of at least `bytes` bytes, in whole pages.
    pub(crate) fn new(bytes: u32) -> Result<Self> {
        let n = bytes.div_ceil(bindings::PAGE_SIZE as u32).max(1);
        // SAFETY: allocates `n` pages and an array of their pointers.
        let pages = unsafe { glue::dst_pages_alloc(n) };
        Ok(PageBuf {
            pages: NonNull::new(pages).ok_or(ENOMEM)?,
            n,
        })
    }

    /// Size in bytes.
    pub(crate) fn len(&self) -> u32 {
        self.n * bindings::PAGE_SIZE as u32
    }

    /// The page array, for the I/O engine.
    pub(crate) fn as_raw(&self) -> *mut *mut bindings::page {
        self.pages.as_ptr()
    }
}

impl Drop for PageBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `new`; no I/O uses the pages any more (each
        // I/O holds a reference to its buffer).
        unsafe { glue::dst_pages_free(self.pages.as_ptr(), self.n) };
    }
}

/// Bios from above set aside for later (writes waiting for the resync
/// barrier).
pub(crate) struct BioStack(RawBioStack);

impl BioStack {
    /// An empty stack.
    pub(crate) const fn new() -> Self {
        BioStack(RawBioStack::new())
    }

    /// Sets `bio` aside.
    pub(crate) fn push(&self, bio: Bio) {
        // SAFETY: `into_raw` gives up our ownership to the stack.
        unsafe { self.0.push(bio.into_raw()) };
    }

    /// Whether nothing is set aside (a hint: a push may come at once).
    pub(crate) fn is_empty(&self) -> bool {
        self.0.head.load(Ordering::Relaxed).is_null()
    }

    /// Takes every bio set aside so far, oldest first.
    pub(crate) fn take(&self) -> BioStackDrain {
        BioStackDrain {
            next: self.0.take(),
        }
    }
}

impl Drop for BioStack {
    fn drop(&mut self) {
        // Bios still set aside fail rather than never end.
        drop(self.take());
    }
}

/// The bios taken from a [`BioStack`]; any not consumed are failed.
pub(crate) struct BioStackDrain {
    next: *mut bindings::bio,
}

impl Iterator for BioStackDrain {
    type Item = Bio;

    fn next(&mut self) -> Option<Bio> {
        let raw = NonNull::new(self.next)?;
        // SAFETY: the drain owns the list.
        unsafe {
            self.next = (*raw.as_ptr()).bi_next;
            (*raw.as_ptr()).bi_next = ptr::null_mut();
        }
        Some(Bio(raw))
    }
}

impl Drop for BioStackDrain {
    fn drop(&mut self) {
        for bio in self.by_ref() {
            bio.end(Err(EIO));
        }
    }
}
