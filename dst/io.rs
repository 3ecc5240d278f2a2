// SPDX-License-Identifier: GPL-2.0

//! The I/O engine: fanning a bio out to legs and completing it.
//!
//! An incoming bio (the *parent*) is sent to one or more legs as *clones*
//! that share its data pages.  Clones come from bio sets whose front pad
//! holds a [`Pad`]; the first clone's pad also holds the I/O's state
//! ([`IoState`]), so an I/O costs no allocation besides its clones, and
//! those come from mempools (see [`Io`] for why two).  The parent
//! completes when every clone has, with a result the owner decides
//! ([`IoOwner::io_done`]).  Completion may run in interrupt context, so
//! anything that needs a thread (resubmitting a read to another leg,
//! releasing held clones) is deferred to a workqueue ([`DeferList`]).
//!
//! Nothing here sleeps on the submission path except a mempool allocation
//! (`GFP_NOIO`), and no thread is dedicated to a request.

use core::ffi::c_void;
use core::mem::size_of;
use core::ptr::{self, NonNull};
use core::sync::atomic::{fence, AtomicI32, AtomicPtr, AtomicU32, AtomicUsize, Ordering};

use kernel::bindings;
use kernel::prelude::*;
use kernel::sync::{Arc, ArcBorrow};

use crate::bdev::BlockDev;
use crate::bio::{from_status, to_status, Bio, BioSet, LegBio, LegBioStack, Op, PageBuf};
use crate::glue;

/// Counts I/Os in flight so a device can wait for them before it goes.
///
/// The top bit of the counter says someone waits: the I/O that brings the
/// count to zero then wakes them, and learns it from its own decrement, so
/// the common case costs one atomic each way and no barrier.
pub(crate) struct Gate {
    count: AtomicUsize,
}

const WAITING: usize = 1 << (usize::BITS - 1);

impl Gate {
    /// A gate with nothing in flight.
    pub(crate) const fn new() -> Self {
        Gate {
            count: AtomicUsize::new(0),
        }
    }

    /// Enters the gate: one more I/O in flight.
    pub(crate) fn enter(&self) {
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Leaves the gate, for an owner the caller keeps alive otherwise (an
    /// `Arc` it holds), so that `self` outlives the call.
    pub(crate) fn leave(&self) {
        // SAFETY: the caller entered the gate, and `self` stays alive.
        unsafe { Self::exit(self) };
    }

    /// I/Os in flight now.
    pub(crate) fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst) & !WAITING
    }

    /// Leaves the gate.
    ///
    /// # Safety
    ///
    /// `this` must be a gate entered by the caller.  The gate's owner may be
    /// freed as soon as the count drops, so `this` is a raw pointer and is
    /// not dereferenced after the decrement.
    unsafe fn exit(this: *const Gate) {
        // SAFETY: the caller's entry keeps the gate alive until here.
        let count = unsafe { ptr::addr_of!((*this).count) };
        // SAFETY: as above.
        if unsafe { (*count).fetch_sub(1, Ordering::AcqRel) } == WAITING | 1 {
            // `wake_up_var` needs a full barrier after the store; it only
            // hashes the address, so a freed gate is not read.
            fence(Ordering::SeqCst);
            // SAFETY: plain wake-up keyed by address.
            unsafe { bindings::wake_up_var(count.cast_mut().cast()) };
        }
    }

    /// Waits until no I/O is in flight.  The caller must make sure that
    /// no new I/O starts, or that any that does ends on its own.  Later
    /// exits no longer wake anyone.
    pub(crate) fn wait_idle(&self) {
        self.count.fetch_or(WAITING, Ordering::SeqCst);
        // SAFETY: the counter stays valid during the wait, which ends when
        // the count is zero; `Gate::exit` wakes this address.
        unsafe { glue::dst_wait_var(self.var(), gate_idle) };
        self.count.fetch_and(!WAITING, Ordering::SeqCst);
    }

    /// As [`Gate::wait_idle`], for at most `ms` milliseconds; a fatal
    /// signal ends the wait too.  `ETIMEDOUT` or `EINTR` then: I/O is
    /// still in flight.
    pub(crate) fn wait_idle_for(&self, ms: u32) -> Result {
        self.count.fetch_or(WAITING, Ordering::SeqCst);
        // SAFETY: as in `wait_idle`; the wait may also end early.
        let r = unsafe { glue::dst_wait_var_timeout(self.var(), gate_idle, ms) };
        self.count.fetch_and(!WAITING, Ordering::SeqCst);
        match r {
            1.. => Ok(()),
            0 => Err(crate::errno::etimedout()),
            _ => Err(EINTR),
        }
    }

    fn var(&self) -> *mut c_void {
        ptr::addr_of!(self.count).cast_mut().cast()
    }
}

/// Whether the gate whose counter is at `var` is idle.
///
/// # Safety
///
/// `var` must point to a live gate counter.
unsafe extern "C" fn gate_idle(var: *mut c_void) -> bool {
    // SAFETY: `var` is the gate's counter, alive while its owner waits.
    unsafe { (*var.cast::<AtomicUsize>()).load(Ordering::Acquire) & !WAITING == 0 }
}

impl Default for Gate {
    fn default() -> Self {
        Gate::new()
    }
}

/// How the I/O's clones ended, for [`IoOwner::io_done`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Outcome {
    /// The parent's operation.
    pub(crate) op: Op,
    /// Legs whose clones all succeeded (bit per leg index), among those
    /// allowed to count ([`Io::set_voters`]).
    pub(crate) ok: u32,
    /// Every leg tried so far for this I/O (reads may retry).
    pub(crate) tried: u32,
    /// The first error seen.
    pub(crate) error: Option<Error>,
    /// The parent's first sector.
    pub(crate) sector: u64,
    /// The parent's length in bytes.
    pub(crate) bytes: u32,
}

/// What to do with an I/O whose clones have all ended.
pub(crate) enum Decision {
    /// End the parent with this result.
    Complete(Result),
    /// Try again from process context ([`IoOwner::retry`]).
    Retry,
}

/// Where a retried I/O goes.
pub(crate) struct Route<'a> {
    /// Leg index.
    pub(crate) leg: u32,
    /// Where the leg's clones go.
    pub(crate) sink: &'a dyn BioSink,
    /// First sector on the leg.
    pub(crate) sector: u64,
}

/// Where a leg's clones go.
pub(crate) trait BioSink: Sync {
    /// The block device, for a local leg: its clones name it.
    fn bdev(&self) -> Option<&BlockDev>;
    /// Takes a bio for the leg: a local leg submits it to its block
    /// device.  For a leg that is not a block device the bio names the dst
    /// device itself, and a `REQ_PREFLUSH` never comes with data (the
    /// engine sends the flush as a bio of its own).
    fn submit(&self, bio: LegBio);
}

/// The block device a bio for `sink` names: the leg's own, or, for a leg
/// that is not a block device, the dst device of `parent`.
///
/// # Safety
///
/// `parent` must be a live bio.
unsafe fn target_bdev(
    sink: &dyn BioSink,
    parent: *mut bindings::bio,
) -> *mut bindings::block_device {
    match sink.bdev() {
        Some(dev) => dev.as_raw(),
        // SAFETY: per the function's contract.
        None => unsafe { (*parent).bi_bdev },
    }
}

/// The device side of the engine.
pub(crate) trait IoOwner: Send + Sync + Sized {
    /// The gate counting this owner's I/Os.
    fn gate(&self) -> &Gate;
    /// The bio set the first bio of each I/O comes from, which holds the
    /// I/O's state until the I/O ends (front pad: [`IoSet::FRONT_PAD`]).
    fn ioset(&self) -> &BioSet;
    /// The bio set every other bio of an I/O comes from; each is freed as
    /// soon as its leg ends it.  Its front pad must be
    /// [`IoSet::FRONT_PAD`] too, as the engine finds every bio's [`Pad`]
    /// the same way.
    fn moreset(&self) -> &BioSet;
    /// Where deferred I/Os wait.
    fn defer_list(&self) -> &DeferList;
    /// Called for every clone as it ends, in any context, with the
    /// parent's range (`sector`, `bytes`).  `preflush` marks a flush sent
    /// ahead of held data clones ([`Io::preflush_to`]): not a request of
    /// its own (a held clone it fails ends with its error).
    fn clone_done(
        this: ArcBorrow<'_, Self>,
        leg: u32,
        op: Op,
        sector: u64,
        bytes: u32,
        res: Result,
        preflush: bool,
    );
    /// Called once all clones of an I/O have ended, in any context.
    fn io_done(this: ArcBorrow<'_, Self>, outcome: &Outcome) -> Decision;
    /// Picks where to send an I/O again, in process context; `None` ends it
    /// with its error.
    fn retry(&self, outcome: &Outcome) -> Option<Route<'_>>;
    /// Arranges for [`DeferList::run`] to be called soon from a workqueue.
    fn kick_deferred(this: ArcBorrow<'_, Self>);
    /// Where clones for `leg` sent with [`Io::clone_to_later`] wait; the
    /// owner submits them (`LegBio::submit_local`) when it is kicked.
    fn later_list(&self, leg: u32) -> &LegBioStack;
    /// Arranges for `later_list(leg)` to be submitted soon, from a
    /// workqueue, on another CPU.
    fn kick_later(this: ArcBorrow<'_, Self>, leg: u32);
    /// Where leg `leg`'s clones go (held clones are sent there once their
    /// flushes have ended, see [`Io::hold_clone`]).
    fn sink(&self, leg: u32) -> Option<&dyn BioSink>;
}

/// Per-I/O state, in the front pad of the I/O's first clone.
#[repr(C)]
struct IoState {
    parent: *mut bindings::bio,
    first: *mut bindings::bio,
    /// The owner, as stored by the disk (`Arc::into_raw`).
    owner: *const c_void,
    next: *mut IoState,
    /// When accounting began, if the disk keeps statistics (`acct`).
    start: kernel::ffi::c_ulong,
    acct: bool,
    pending: AtomicU32,
    ok: AtomicU32,
    /// Legs whose flush ahead of the data failed (see [`Io::preflush_to`]).
    bad: AtomicU32,
    /// Among those, the legs whose flush failed because the leg was away
    /// (`errno::leg_away`): their held clones end with that error too.
    away: AtomicU32,
    /// Clones held back until the flushes sent ahead of them have ended,
    /// linked through `bi_next` ([`Io::hold_clone`]): at most the first
    /// bio.  The submitter's until `flushes` drops to zero, then the
    /// releaser's, as are `held_legs` and `held_sector`.
    held: *mut bindings::bio,
    /// Legs whose held clone is made only when released, each counted in
    /// `pending` meanwhile, all at `held_sector`.
    held_legs: u32,
    held_sector: u64,
    /// Flushes the held clones wait for, plus the submitter's bias.
    flushes: AtomicU32,
    /// A failed flush fails every held clone, not only its own leg's.
    strict: bool,
    /// Legs whose success can make the I/O good ([`Io::set_voters`]).
    voters: u32,
    tried: AtomicU32,
    error: AtomicU32,
    op: Op,
}

/// Front pad of every clone.
#[repr(C)]
struct Pad {
    io: *mut IoState,
    leg: u32,
    /// A flush sent ahead of held data clones ([`Io::preflush_to`]): not a
    /// request of its own.
    preflush: bool,
    state: IoState,
}

/// The front pad size for the bio sets of [`IoOwner::ioset`] and
/// [`IoOwner::moreset`].
pub(crate) struct IoSet;

impl IoSet {
    /// Bytes in front of each clone.
    pub(crate) const FRONT_PAD: u32 = size_of::<Pad>() as u32;
}

const _: () = assert!(size_of::<Pad>() % 8 == 0);

/// # Safety
///
/// `bio` must come from an [`IoOwner::ioset`] or [`IoOwner::moreset`] bio
/// set (both with [`IoSet::FRONT_PAD`]).
unsafe fn pad_of(bio: *mut bindings::bio) -> *mut Pad {
    // SAFETY: the bio set puts `FRONT_PAD` bytes, holding a `Pad`, right
    // before each bio.
    unsafe { bio.cast::<u8>().sub(size_of::<Pad>()).cast::<Pad>() }
}

/// Makes `clone` a clone of the I/O `io` for leg `leg`: fills its whole
/// pad (but the state, which only the first clone holds) and its end_io.
///
/// # Safety
///
/// `clone` must be ours, from the [`IoOwner::ioset`] or
/// [`IoOwner::moreset`] bio set of a `T`, and
/// `io` a live I/O state.
unsafe fn bind<T: IoOwner>(clone: *mut bindings::bio, io: *mut IoState, leg: u32, preflush: bool) {
    // SAFETY: per the function's contract, the pad is ours to fill.
    unsafe {
        let pad = pad_of(clone);
        (*pad).io = io;
        (*pad).leg = leg;
        (*pad).preflush = preflush;
        (*clone).bi_end_io = Some(clone_endio::<T>);
    }
}

/// Whether the disk `bio` was submitted to keeps I/O statistics: its
/// `iostats` setting, which md asks too before accounting.
///
/// # Safety
///
/// `bio` must be a live bio submitted to a disk.
unsafe fn io_stat(bio: *mut bindings::bio) -> bool {
    // SAFETY: per the function's contract, the bio names its block device,
    // whose disk and queue live at least as long as the bio; the constant
    // is immutable.
    unsafe {
        (*(*(*(*bio).bi_bdev).bd_disk).queue).limits.features & glue::dst_blk_feat_io_stat != 0
    }
}

fn err_code(e: Error) -> u32 {
    e.to_errno().unsigned_abs()
}

/// Builds and submits one I/O.
///
/// A bias of one on the pending count keeps the I/O from completing
/// before [`Io::finish`].
///
/// Under memory pressure the clones come from the bio sets' reserves, and
/// no I/O may then wait for a reserve that only its own progress, or that
/// of another waiter, refills.  The first bio of an I/O comes from
/// [`IoOwner::ioset`] and stays allocated until the I/O ends (it holds the
/// state); every other bio comes from [`IoOwner::moreset`], is submitted
/// as soon as it is made and is freed when its leg ends it.  A clone held
/// until flushes end ([`Io::hold_clone`]) is made only when released,
/// unless it is the first bio.  So a submitter waiting for a `moreset` bio
/// holds none that is not on its way (those still on its own `bio_list`
/// are submitted by the set's rescuer), and one waiting for an `ioset` bio
/// holds no bio of its own I/O: I/O in flight refills both reserves.  (dm
/// keeps its first clone apart from the others for the same reason.)
pub(crate) struct Io<'a, T: IoOwner> {
    owner: ArcBorrow<'a, T>,
    parent: Option<Bio>,
    state: Option<NonNull<IoState>>,
    op: Op,
    error: Option<Error>,
    voters: u32,
    /// Clones are held ([`Io::hold_clone`]): the state's `flushes` has our
    /// bias.
    holding: bool,
}

impl<'a, T: IoOwner> Io<'a, T> {
    /// Starts an I/O for `parent` on `owner`.
    pub(crate) fn new(owner: ArcBorrow<'a, T>, parent: Bio) -> Self {
        let op = parent.op();
        owner.gate().enter();
        Io {
            owner,
            parent: Some(parent),
            state: None,
            op,
            error: None,
            voters: u32::MAX,
            holding: false,
        }
    }

    /// Lets only the legs in `mask` make the I/O good: a clone on another
    /// leg is sent and counted, but does not show in [`Outcome::ok`].  To
    /// be called before the first clone is sent.
    pub(crate) fn set_voters(&mut self, mask: u32) {
        self.voters = mask;
    }

    /// The parent bio.
    pub(crate) fn parent(&self) -> &Bio {
        // `parent` is only taken by `finish`, which consumes `self`.
        self.parent.as_ref().unwrap_or_else(|| unreachable!())
    }

    /// Whether a clone went, or is held ([`Io::hold_clone`]): the owner's
    /// `io_done` then runs when it ends.
    pub(crate) fn started(&self) -> bool {
        self.state.is_some()
    }

    fn attach(&mut self, clone: *mut bindings::bio, leg: u32, preflush: bool) {
        // SAFETY: `clone` was just allocated from one of the owner's two
        // bio sets.
        let pad = unsafe { pad_of(clone) };
        let io = match self.state.map(NonNull::as_ptr) {
            Some(io) => {
                // SAFETY: the I/O is live (the bias holds it).
                unsafe {
                    (*io).pending.fetch_add(1, Ordering::Relaxed);
                    (*io).tried.fetch_or(1 << leg, Ordering::Relaxed);
                }
                io
            }
            None => {
                let parent = self.parent().as_raw();
                // SAFETY: `pad` is this clone's front pad, ours to fill; the
                // state lives there until the I/O completes, because the
                // first clone is freed last.
                let io = unsafe { ptr::addr_of_mut!((*pad).state) };
                // SAFETY: `parent` is live, owned by the I/O.
                let acct = unsafe { io_stat(parent) };
                // SAFETY: as above.
                unsafe {
                    io.write(IoState {
                        parent,
                        first: clone,
                        owner: ptr::from_ref::<T>(&self.owner).cast(),
                        next: ptr::null_mut(),
                        start: if acct {
                            bindings::bio_start_io_acct(parent)
                        } else {
                            0
                        },
                        acct,
                        // The bias, and this clone.
                        pending: AtomicU32::new(2),
                        ok: AtomicU32::new(0),
                        bad: AtomicU32::new(0),
                        away: AtomicU32::new(0),
                        held: ptr::null_mut(),
                        held_legs: 0,
                        held_sector: 0,
                        flushes: AtomicU32::new(0),
                        strict: false,
                        voters: self.voters,
                        tried: AtomicU32::new(1 << leg),
                        error: AtomicU32::new(0),
                        op: self.op,
                    })
                };
                self.state = NonNull::new(io);
                io
            }
        };
        // SAFETY: `clone` is ours, from the owner's bio sets; `io` the live
        // I/O state.
        unsafe { bind::<T>(clone, io, leg, preflush) };
    }

    /// Makes a clone of the parent for leg `leg` of `sink` at `sector`,
    /// counted in the I/O.  Clones for a leg that is not a block device
    /// name the parent's device, and those with data lose `REQ_PREFLUSH`
    /// (their flush is sent ahead, see `clone_to`); an empty flush keeps
    /// it, or the leg would take it for an empty write and skip it.
    fn make_clone(&mut self, leg: u32, sink: &dyn BioSink, sector: u64) -> Result<LegBio> {
        let strip = sink.bdev().is_none() && !self.parent().is_flush_only();
        let parent = self.parent().as_raw();
        // SAFETY: `parent` is live; the bio sets are initialised.
        let clone = unsafe {
            glue::dst_bio_clone(target_bdev(sink, parent), parent, self.next_set(), strip)
        };
        if clone.is_null() {
            return Err(ENOMEM);
        }
        self.attach(clone, leg, false);
        // SAFETY: the clone is ours until submitted; it has its end_io.
        unsafe {
            (*clone).bi_iter.bi_sector = sector;
            LegBio::from_raw(clone).ok_or(ENOMEM)
        }
    }

    /// The bio set the I/O's next bio comes from (see [`Io`]).
    fn next_set(&self) -> *mut bindings::bio_set {
        if self.state.is_none() {
            self.owner.ioset().as_raw()
        } else {
            self.owner.moreset().as_raw()
        }
    }

    /// Sends a clone of the parent to leg `leg` of `sink` at `sector`.  A
    /// leg that is not a block device gets a `REQ_PREFLUSH` with data as an
    /// empty flush, and the data without the flag once the flush has
    /// succeeded (held, see [`Io::hold_clone`]), as the block layer's flush
    /// sequence does: an NBD server may run the two in any order.  The two
    /// are one request of the leg.
    ///
    /// Fails only if no clone can be made (a bio set with `GFP_NOIO` waits
    /// for memory rather than fail, so in practice never); the leg then did
    /// not get the I/O and the caller decides what that means.
    pub(crate) fn clone_to(&mut self, leg: u32, sink: &dyn BioSink, sector: u64) -> Result {
        if sink.bdev().is_none() && self.parent().is_preflush() && !self.parent().is_flush_only() {
            self.hold_clone(leg, sink, sector, false)?;
            self.preflush_to(leg, sink);
            return Ok(());
        }
        sink.submit(self.make_clone(leg, sink, sector)?);
        Ok(())
    }

    /// Makes the clone for leg `leg` of `sink` at `sector`, but holds it
    /// back until every flush sent with [`Io::preflush_to`] has ended, so
    /// that writes completed before the parent was issued are stable
    /// before its data is written (`REQ_PREFLUSH` across legs, or on a leg
    /// that runs requests in any order).  Then it is sent, from the
    /// submitter's context or the owner's workqueue; or, if a flush to its
    /// leg failed (any flush, with `strict`), it ends with that error
    /// unsent.  Fails as [`Io::clone_to`] does, nothing held.
    ///
    /// Only the I/O's first bio is made here; another held clone is made
    /// when it is released (see [`Io`]), and all those of one I/O must be
    /// at the same `sector` (`EINVAL` otherwise).
    pub(crate) fn hold_clone(
        &mut self,
        leg: u32,
        sink: &dyn BioSink,
        sector: u64,
        strict: bool,
    ) -> Result {
        if let Some(io) = self.state.map(NonNull::as_ptr) {
            // SAFETY: the I/O is live (our bias holds it); the held fields
            // are ours until our bias on `flushes` is dropped (in `drop`),
            // which the pending reference taken here outlives.
            unsafe {
                if (*io).held_legs != 0 && (*io).held_sector != sector {
                    return Err(EINVAL);
                }
                self.start_holding(io, strict);
                (*io).held_legs |= 1 << leg;
                (*io).held_sector = sector;
                (*io).pending.fetch_add(1, Ordering::Relaxed);
                (*io).tried.fetch_or(1 << leg, Ordering::Relaxed);
            }
            return Ok(());
        }
        let clone = self.make_clone(leg, sink, sector)?;
        let Some(io) = self.state.map(NonNull::as_ptr) else {
            // Cannot be: `make_clone` made the state.
            clone.end(Err(EINVAL));
            return Ok(());
        };
        let clone = clone.into_raw();
        // SAFETY: as above; the clone is ours, its `bi_next` unused.
        unsafe {
            self.start_holding(io, strict);
            (*clone).bi_next = (*io).held;
            (*io).held = clone;
        }
        Ok(())
    }

    /// Takes our bias on the held clones' wait, once.
    ///
    /// # Safety
    ///
    /// `io` must be this I/O's live state.
    unsafe fn start_holding(&mut self, io: *mut IoState, strict: bool) {
        // SAFETY: per the function's contract; `flushes` and `strict` are
        // ours until our bias on `flushes` is dropped.
        unsafe {
            if !self.holding {
                (*io).flushes.store(1, Ordering::Relaxed);
                self.holding = true;
            }
            (*io).strict |= strict;
        }
    }

    /// Sends an empty flush to leg `leg` of `sink` that the clones held by
    /// [`Io::hold_clone`] (called first) wait for.  A flush that cannot be
    /// made counts as failed.
    pub(crate) fn preflush_to(&mut self, leg: u32, sink: &dyn BioSink) {
        let (Some(io), true) = (self.state.map(NonNull::as_ptr), self.holding) else {
            return;
        };
        if let Err(e) = self.send_flush(leg, sink, true) {
            // SAFETY: the I/O is live (our bias holds it).
            unsafe {
                (*io).bad.fetch_or(1 << leg, Ordering::Relaxed);
                record(io, None, Err(e));
            }
        }
    }

    /// Like [`Io::clone_to`], for a local leg, but the clone is submitted
    /// from the workqueue, so that another CPU does the leg's share of the
    /// work in parallel.
    pub(crate) fn clone_to_later(&mut self, leg: u32, sink: &dyn BioSink, sector: u64) -> Result {
        if sink.bdev().is_none() {
            return self.clone_to(leg, sink, sector);
        }
        let clone = self.make_clone(leg, sink, sector)?;
        self.owner.later_list(leg).push(clone);
        T::kick_later(self.owner, leg);
        Ok(())
    }

    /// Sends an empty cache flush to leg `leg` of `sink`.  Fails as
    /// [`Io::clone_to`] does.
    pub(crate) fn flush_to(&mut self, leg: u32, sink: &dyn BioSink) -> Result {
        self.send_flush(leg, sink, false)
    }

    /// Sends an empty cache flush: a request of its own, or (`preflush`)
    /// one that held clones wait for, counted in `flushes` before it can
    /// end (the submitter's bias keeps the count above zero meanwhile).
    fn send_flush(&mut self, leg: u32, sink: &dyn BioSink, preflush: bool) -> Result {
        // SAFETY: the parent is live; the bio sets are initialised.
        let bio = unsafe {
            glue::dst_bio_alloc_flush(target_bdev(sink, self.parent().as_raw()), self.next_set())
        };
        if bio.is_null() {
            return Err(ENOMEM);
        }
        self.attach(bio, leg, preflush);
        if let (true, Some(io)) = (preflush, self.state) {
            // SAFETY: the I/O is live (our bias holds it).
            unsafe { (*io.as_ptr()).flushes.fetch_add(1, Ordering::Relaxed) };
        }
        // SAFETY: the bio is ours until submitted; it has its end_io.
        if let Some(bio) = unsafe { LegBio::from_raw(bio) } {
            sink.submit(bio);
        }
        Ok(())
    }

    /// Records an error for the I/O as a whole; [`IoOwner::io_done`] sees
    /// it in [`Outcome::error`], and an I/O without clones ends with it.
    pub(crate) fn fail(&mut self, e: Error) {
        self.error.get_or_insert(e);
    }

    /// Done sending: the parent completes when every clone has (or now,
    /// with the recorded error, if none was sent).  Dropping an `Io` does
    /// the same.
    pub(crate) fn finish(self) {}
}

impl<T: IoOwner> Drop for Io<'_, T> {
    fn drop(&mut self) {
        let parent = self.parent.take();
        match self.state {
            None => {
                let gate: *const Gate = self.owner.gate();
                if let Some(p) = parent {
                    p.end(Err(self.error.unwrap_or(EIO)));
                }
                // SAFETY: entered in `new`; `self.owner` is not used again.
                unsafe { Gate::exit(gate) };
            }
            Some(io) => {
                // The parent is now owned by the I/O state.
                if let Some(p) = parent {
                    let _ = p.into_raw();
                }
                if let Some(e) = self.error {
                    // SAFETY: the I/O is live (our bias holds it).
                    unsafe { record(io.as_ptr(), None, Err(e)) };
                }
                if self.holding {
                    // SAFETY: the I/O is live; this is our bias on the
                    // held clones' wait, and we may send them.
                    unsafe { flush_put::<T>(self.owner, io.as_ptr(), true) };
                }
                // SAFETY: drops the bias taken when the state was made.
                unsafe { io_put::<T>(io.as_ptr()) };
            }
        }
    }
}

/// Records a clone's result in the I/O state.
///
/// # Safety
///
/// `io` must be a live I/O state.
unsafe fn record(io: *mut IoState, leg: Option<u32>, res: Result) {
    // SAFETY: per the function's contract.
    let io = unsafe { &*io };
    match (res, leg) {
        (Ok(()), Some(leg)) => {
            io.ok.fetch_or(1 << leg, Ordering::Relaxed);
        }
        (Ok(()), None) => {}
        (Err(e), _) => {
            let _ = io
                .error
                .compare_exchange(0, err_code(e), Ordering::Relaxed, Ordering::Relaxed);
        }
    }
}

/// Ends a clone of an I/O of a `T`.
///
/// # Safety
///
/// Called by the block layer only, for a clone made by [`Io`].
unsafe extern "C" fn clone_endio<T: IoOwner>(clone: *mut bindings::bio) {
    // SAFETY: bios get this end_io only from `bind`, whose bios come from
    // the owner's two bio sets.
    let pad = unsafe { pad_of(clone) };
    // SAFETY: `bind` filled the pad; the I/O is live until its last
    // clone ends, which is at the earliest this one.
    let (io, leg, preflush) = unsafe { ((*pad).io, (*pad).leg, (*pad).preflush) };
    // SAFETY: the clone is live until we put it.
    let res = from_status(unsafe { (*clone).bi_status });
    match (preflush, res) {
        // The data clone tells whether the leg took the write.
        (true, Ok(())) => {}
        (true, Err(e)) => {
            // SAFETY: the I/O is live.
            unsafe {
                if e == crate::errno::leg_away() {
                    (*io).away.fetch_or(1 << leg, Ordering::Relaxed);
                }
                (*io).bad.fetch_or(1 << leg, Ordering::Relaxed);
                record(io, None, Err(e));
            }
        }
        // SAFETY: the I/O is live.
        (false, _) => unsafe { record(io, Some(leg), res) },
    }
    {
        // SAFETY: the I/O is live (this clone's pending reference).
        let owner = unsafe { tell_owner::<T>(io, leg, res, preflush) };
        if preflush {
            // SAFETY: the I/O is live; this flush was counted in
            // `flushes`.  Any context: the release is deferred.
            unsafe { flush_put::<T>(owner, io, false) };
        }
    }
    // SAFETY: the first clone holds the state and is put when the I/O ends.
    if clone != unsafe { (*io).first } {
        // SAFETY: we own this clone and are done with it.
        unsafe { bindings::bio_put(clone) };
    }
    // SAFETY: this clone's share of the pending count.
    unsafe { io_put::<T>(io) };
}

/// Drops one reference on the wait of the held clones of `io`; the last
/// releases them: at once if `inline` (the caller is in process context),
/// else from the owner's workqueue (through the defer list).
///
/// # Safety
///
/// `io` must be live and the caller must hold one reference on `flushes`.
unsafe fn flush_put<T: IoOwner>(owner: ArcBorrow<'_, T>, io: *mut IoState, inline: bool) {
    // SAFETY: per the function's contract.
    if unsafe { (*io).flushes.fetch_sub(1, Ordering::AcqRel) } != 1 {
        return;
    }
    if inline {
        // SAFETY: the wait is over; the held clones keep the I/O live.
        unsafe { release_held::<T>(&owner, io) };
    } else {
        owner.defer_list().push(io);
        T::kick_deferred(owner);
    }
}

/// Sends the clones held for `io` to their legs (making those not made
/// yet), or ends those whose flush failed (every one, if the I/O is
/// strict) with the flush's error.
///
/// # Safety
///
/// `io` must be live, its flushes all ended, and the caller the only one
/// to release it.  Process context.
unsafe fn release_held<T: IoOwner>(owner: &T, io: *mut IoState) {
    // SAFETY: per the function's contract, the held fields are ours; the
    // flushes' results were published before `flushes` dropped to zero.
    // The parent is live while a held clone is.
    let (mut bio, legs, sector, parent, bad, away, strict, err) = unsafe {
        let held = core::mem::replace(&mut (*io).held, ptr::null_mut());
        let legs = core::mem::replace(&mut (*io).held_legs, 0);
        let s = &*io;
        (
            held,
            legs,
            s.held_sector,
            s.parent,
            s.bad.load(Ordering::Acquire),
            s.away.load(Ordering::Acquire),
            s.strict,
            outcome(s).error,
        )
    };
    // Why leg `leg`'s held clone must not be sent, if it must not.
    let verdict = |leg: u32| -> Option<Error> {
        if bad & (1 << leg) != 0 {
            // Its own leg's flush failed: the leg was away, or not.
            Some(if away & (1 << leg) != 0 {
                crate::errno::leg_away()
            } else {
                EIO
            })
        } else if strict && bad != 0 {
            // Another leg's.
            Some(err.unwrap_or(EIO))
        } else {
            None
        }
    };
    while !bio.is_null() {
        // SAFETY: a held clone is ours, linked through `bi_next`, its pad
        // filled by `attach`.
        let (next, leg, clone) = unsafe {
            let next = (*bio).bi_next;
            (*bio).bi_next = ptr::null_mut();
            (next, (*pad_of(bio)).leg, LegBio::from_raw(bio))
        };
        bio = next;
        let Some(clone) = clone else { continue };
        match (verdict(leg), owner.sink(leg)) {
            (None, Some(sink)) => sink.submit(clone),
            (None, None) => clone.end(Err(EIO)),
            (Some(e), _) => clone.end(Err(e)),
        }
    }
    let mut rest = legs;
    while rest != 0 {
        let leg = rest.trailing_zeros();
        rest &= rest - 1;
        let e = match (verdict(leg), owner.sink(leg)) {
            (None, Some(sink)) => {
                // SAFETY: the parent is live (this leg's pending reference
                // holds the I/O); the bio set is initialised.  A held clone
                // has data, so a leg that is not a block device gets it
                // without `REQ_PREFLUSH`, as in `Io::make_clone`.
                let clone = unsafe {
                    glue::dst_bio_clone(
                        target_bdev(sink, parent),
                        parent,
                        owner.moreset().as_raw(),
                        sink.bdev().is_none(),
                    )
                };
                // SAFETY: the clone is ours, from the owner's more set; the
                // I/O is live, and the pending reference `hold_clone` took
                // for this leg becomes the clone's.
                let clone = unsafe {
                    if !clone.is_null() {
                        bind::<T>(clone, io, leg, false);
                        (*clone).bi_iter.bi_sector = sector;
                    }
                    LegBio::from_raw(clone)
                };
                match clone {
                    Some(clone) => {
                        sink.submit(clone);
                        continue;
                    }
                    None => ENOMEM,
                }
            }
            (None, None) => EIO,
            (Some(e), _) => e,
        };
        // SAFETY: the I/O is live; this leg's pending reference is ours.
        unsafe { end_unsent::<T>(io, leg, e) };
    }
}

/// Ends leg `leg`'s share of `io` with `e`, for a held clone that was
/// never made, as [`clone_endio`] ends a clone that failed.
///
/// # Safety
///
/// `io` must be live, and the caller must hold the leg's pending
/// reference, which this drops.
unsafe fn end_unsent<T: IoOwner>(io: *mut IoState, leg: u32, e: Error) {
    // SAFETY: per the function's contract.
    unsafe {
        record(io, Some(leg), Err(e));
        tell_owner::<T>(io, leg, Err(e), false);
        io_put::<T>(io);
    }
}

/// Tells the owner of `io` that leg `leg`'s clone ended with `res`
/// ([`IoOwner::clone_done`]), and returns the owner.
///
/// # Safety
///
/// `io` must be live, and stay so while the returned owner is used.
unsafe fn tell_owner<'a, T: IoOwner>(
    io: *mut IoState,
    leg: u32,
    res: Result,
    preflush: bool,
) -> ArcBorrow<'a, T> {
    // SAFETY: `owner` is the pointer the disk stores with `Arc::into_raw`,
    // and the disk's reference lasts while the I/O holds the gate; the
    // parent is live while its I/O is.
    let (owner, op, sector, bytes) = unsafe {
        let p = (*io).parent;
        (
            ArcBorrow::<T>::from_raw((*io).owner.cast()),
            (*io).op,
            (*p).bi_iter.bi_sector,
            (*p).bi_iter.bi_size,
        )
    };
    T::clone_done(owner, leg, op, sector, bytes, res, preflush);
    owner
}

/// Drops one pending reference; the last one ends or defers the I/O.
///
/// # Safety
///
/// `io` must be live and the caller must hold one pending reference.
unsafe fn io_put<T: IoOwner>(io: *mut IoState) {
    // SAFETY: per the function's contract.
    if unsafe { (*io).pending.fetch_sub(1, Ordering::AcqRel) } != 1 {
        return;
    }
    // SAFETY: we were the last; the state is ours now.
    let s = unsafe { &*io };
    let outcome = outcome(s);
    // SAFETY: `owner` is the pointer the disk stores with `Arc::into_raw`,
    // and the disk's reference lasts while the I/O holds the gate.
    let this = unsafe { ArcBorrow::<T>::from_raw(s.owner.cast()) };
    let owner: &T = &this;
    match T::io_done(this, &outcome) {
        // SAFETY: the I/O is ours and complete.
        Decision::Complete(res) => unsafe { complete::<T>(io, res) },
        Decision::Retry => {
            owner.defer_list().push(io);
            T::kick_deferred(this);
        }
    }
}

fn outcome(s: &IoState) -> Outcome {
    let code = s.error.load(Ordering::Relaxed);
    Outcome {
        op: s.op,
        ok: s.ok.load(Ordering::Relaxed) & !s.bad.load(Ordering::Relaxed) & s.voters,
        tried: s.tried.load(Ordering::Relaxed),
        error: (code != 0).then(|| Error::from_errno(-(code as i32))),
        // SAFETY: the parent is live while its I/O is.
        sector: unsafe { (*s.parent).bi_iter.bi_sector },
        // SAFETY: as above.
        bytes: unsafe { (*s.parent).bi_iter.bi_size },
    }
}

/// Ends the parent and frees the I/O.
///
/// # Safety
///
/// `io` must be live, with no pending reference left.
unsafe fn complete<T: IoOwner>(io: *mut IoState, res: Result) {
    // SAFETY: per the function's contract; copy out before freeing.
    let (parent, first, start, acct, owner) = unsafe {
        (
            (*io).parent,
            (*io).first,
            (*io).start,
            (*io).acct,
            (*io).owner.cast::<T>(),
        )
    };
    // SAFETY: the owner outlives its I/Os; take the gate address now.
    let gate: *const Gate = unsafe { (*owner).gate() };
    // SAFETY: `parent` is live and ours to end; `first` holds the state
    // (not used after this) and is ours to put.
    unsafe {
        if acct {
            bindings::bio_end_io_acct_remapped(parent, start, (*parent).bi_bdev);
        }
        (*parent).bi_status = to_status(res);
        bindings::bio_put(first);
        bindings::bio_endio(parent);
        Gate::exit(gate);
    }
}

/// I/Os waiting for process context.  A lock-free stack: completions push
/// from any context, the owner's work item takes them all.
pub(crate) struct DeferList {
    head: AtomicPtr<IoState>,
}

// SAFETY: only raw pointers handed over atomically.
unsafe impl Send for DeferList {}
// SAFETY: as above.
unsafe impl Sync for DeferList {}

impl DeferList {
    /// An empty list.
    pub(crate) const fn new() -> Self {
        DeferList {
            head: AtomicPtr::new(ptr::null_mut()),
        }
    }

    fn push(&self, io: *mut IoState) {
        let mut head = self.head.load(Ordering::Relaxed);
        loop {
            // SAFETY: `io` is a live I/O owned by the caller, not yet shared.
            unsafe { (*io).next = head };
            match self
                .head
                .compare_exchange_weak(head, io, Ordering::Release, Ordering::Relaxed)
            {
                Ok(_) => return,
                Err(h) => head = h,
            }
        }
    }

    /// Retries every deferred I/O of `owner`; call from process context.
    pub(crate) fn run<T: IoOwner>(&self, owner: &T) {
        let mut io = self.head.swap(ptr::null_mut(), Ordering::Acquire);
        while !io.is_null() {
            // SAFETY: pushed by `io_put` (the I/O is ours until resubmitted)
            // or by `flush_put` (its held clones are ours to release; they
            // keep it live, so it is not pushed again meanwhile).
            let (next, held) =
                unsafe { ((*io).next, !(*io).held.is_null() || (*io).held_legs != 0) };
            if held {
                // SAFETY: as above.
                unsafe { release_held(owner, io) };
            } else {
                // SAFETY: as above.
                unsafe { retry(owner, io) };
            }
            io = next;
        }
    }
}

/// Sends a deferred I/O to the leg its owner picks, or ends it.
///
/// # Safety
///
/// `io` must be a live I/O with no pending reference, owned by the caller.
unsafe fn retry<T: IoOwner>(owner: &T, io: *mut IoState) {
    // SAFETY: per the function's contract.
    let s = unsafe { &*io };
    let outcome = outcome(s);
    let Some(route) = owner.retry(&outcome) else {
        let err = outcome.error.unwrap_or(EIO);
        // SAFETY: the I/O is ours and has nothing pending.
        unsafe { complete::<T>(io, Err(err)) };
        return;
    };
    // SAFETY: the parent is live (owned by the I/O), the bio set
    // initialised.  Not the first bio of the I/O: see `Io`.
    let clone = unsafe {
        glue::dst_bio_clone(
            target_bdev(route.sink, s.parent),
            s.parent,
            owner.moreset().as_raw(),
            false,
        )
    };
    if clone.is_null() {
        // SAFETY: as above.
        unsafe { complete::<T>(io, Err(ENOMEM)) };
        return;
    }
    // SAFETY: the clone is ours; its pad points at the I/O, which gets one
    // pending reference for it.  Only reads are retried, so there is no
    // flush to split.
    let clone = unsafe {
        bind::<T>(clone, io, route.leg, false);
        s.pending.store(1, Ordering::Relaxed);
        s.tried.fetch_or(1 << route.leg, Ordering::Relaxed);
        (*clone).bi_iter.bi_sector = route.sector;
        LegBio::from_raw(clone)
    };
    if let Some(bio) = clone {
        route.sink.submit(bio);
    }
}

/// The owner of page I/O (see [`page_io`]).
pub(crate) trait PageIoOwner: Send + Sync + Sized {
    /// A page I/O ended, in any context.
    fn page_io_done(this: Arc<Self>, res: Result);
}

/// What a page I/O holds while it runs.
struct PageIoCtx<T> {
    owner: Arc<T>,
    _buf: Arc<PageBuf>,
}

/// What a page I/O does.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum PageOp {
    /// Read into the buffer.
    Read,
    /// Write the buffer.
    Write,
    /// Write the buffer, durably (FUA) before completing.
    WriteFua,
}

/// Does `op` on the first `bytes` of `buf` at `sector` of `sink`, then
/// calls `T::page_io_done`.  The I/O holds references to `owner` and `buf`
/// until then.  Process context only: the bio is allocated with
/// `GFP_NOIO`, which may wait for memory.  Fails with `ENOMEM` when the
/// small context (`GFP_NOWAIT`) cannot be had: try again later.
pub(crate) fn page_io<T: PageIoOwner>(
    owner: Arc<T>,
    buf: Arc<PageBuf>,
    sink: &dyn BioSink,
    op: PageOp,
    sector: u64,
    bytes: u32,
) -> Result {
    if bytes == 0 || bytes > buf.len() {
        return Err(EINVAL);
    }
    let pages = buf.as_raw();
    let ctx = KBox::new(PageIoCtx { owner, _buf: buf }, GFP_NOWAIT)?;
    let bdev = sink.bdev().map_or(ptr::null_mut(), BlockDev::as_raw);
    let private = KBox::into_raw(ctx).cast::<c_void>();
    let (write, fua) = (op != PageOp::Read, op == PageOp::WriteFua);
    // SAFETY: `pages` has at least `bytes` bytes of pages, kept alive by
    // the context's buffer reference; `private` is the context, given back
    // in `page_io_endio`.
    let bio = unsafe {
        glue::dst_bio_pages(
            bdev,
            pages,
            bytes,
            write,
            fua,
            sector,
            page_io_endio::<T>,
            private,
        )
    };
    if bio.is_null() {
        // SAFETY: `private` came from `KBox::into_raw` and was not used.
        drop(unsafe { KBox::from_raw(private.cast::<PageIoCtx<T>>()) });
        return Err(ENOMEM);
    }
    // SAFETY: the bio is ours, with its end_io.
    if let Some(b) = unsafe { LegBio::from_raw(bio) } {
        sink.submit(b);
    }
    Ok(())
}

/// # Safety
///
/// Called by the block layer (or a remote leg) only, for a bio made by
/// [`page_io`].
unsafe extern "C" fn page_io_endio<T: PageIoOwner>(bio: *mut bindings::bio) {
    // SAFETY: the bio is live until we free it below.
    let (res, private) = unsafe { (from_status((*bio).bi_status), glue::dst_bio_private(bio)) };
    // SAFETY: `private` is the context made in `page_io`.
    let ctx = unsafe { KBox::from_raw(private.cast::<PageIoCtx<T>>()) };
    // SAFETY: the bio came from `dst_bio_pages` and has ended.
    unsafe { glue::dst_bio_kfree(bio) };
    let PageIoCtx { owner, _buf } = KBox::into_inner(ctx);
    T::page_io_done(owner, res);
}

/// Where an I/O done from process context leaves its result: 0 pending,
/// 1 success, a negative errno on failure.  Its owner polls it
/// ([`IoResult::take`]) or sleeps until it is set ([`IoResult::wait`]).
pub(crate) struct IoResult(AtomicI32);

impl IoResult {
    /// No result.
    pub(crate) const fn new() -> Self {
        IoResult(AtomicI32::new(0))
    }

    /// Records `res`, and wakes a waiter.  Any context.
    pub(crate) fn set(&self, res: Result) {
        self.0.store(
            match res {
                Ok(()) => 1,
                Err(e) => e.to_errno(),
            },
            Ordering::Release,
        );
        // `wake_up_var` needs a full barrier after the store.
        fence(Ordering::SeqCst);
        // SAFETY: plain wake-up keyed by address; the caller keeps `self`
        // alive for the call.
        unsafe { bindings::wake_up_var(self.var()) };
    }

    /// Takes the result, if there is one.
    pub(crate) fn take(&self) -> Option<Result> {
        match self.0.swap(0, Ordering::AcqRel) {
            0 => None,
            1 => Some(Ok(())),
            e => Some(Err(Error::from_errno(e))),
        }
    }

    /// Sleeps until there is a result, and takes it (process context).
    pub(crate) fn wait(&self) -> Result {
        /// # Safety
        ///
        /// `var` must point to a live [`IoResult`].
        unsafe extern "C" fn set(var: *mut c_void) -> bool {
            // SAFETY: `var` is the result we wait on, alive meanwhile.
            unsafe { (*var.cast::<AtomicI32>()).load(Ordering::Acquire) != 0 }
        }
        // SAFETY: `self` stays valid during the wait; `set` wakes this
        // address once the result is there.
        unsafe { glue::dst_wait_var(self.var(), set) };
        self.take().unwrap_or(Err(EIO))
    }

    fn var(&self) -> *mut c_void {
        ptr::addr_of!(self.0).cast_mut().cast()
    }
}

/// Sends a cache flush to `sink` and waits for it to end (process context
/// only).  A remote leg ends it within its request timeout.
pub(crate) fn flush_sync(sink: &dyn BioSink) -> Result {
    let res = Arc::new(IoResult::new(), GFP_KERNEL)?;
    let bdev = sink.bdev().map_or(ptr::null_mut(), BlockDev::as_raw);
    let private = res.clone().into_raw().cast_mut().cast::<c_void>();
    // SAFETY: no pages for a flush; `private` is a reference to `res`,
    // given back in `flush_endio`.
    let bio = unsafe {
        glue::dst_bio_pages(
            bdev,
            ptr::null_mut(),
            0,
            true,
            false,
            0,
            flush_endio,
            private,
        )
    };
    if bio.is_null() {
        // SAFETY: `private` came from `Arc::into_raw` and was not used.
        drop(unsafe { Arc::from_raw(private.cast::<IoResult>()) });
        return Err(ENOMEM);
    }
    // SAFETY: the bio is ours, with its end_io.
    if let Some(b) = unsafe { LegBio::from_raw(bio) } {
        sink.submit(b);
    }
    res.wait()
}

/// # Safety
///
/// Called by the block layer (or a remote leg) only, for a bio made by
/// [`flush_sync`].
unsafe extern "C" fn flush_endio(bio: *mut bindings::bio) {
    // SAFETY: the bio is live until we free it below.
    let (res, private) = unsafe { (from_status((*bio).bi_status), glue::dst_bio_private(bio)) };
    // SAFETY: the bio came from `dst_bio_pages` and has ended.
    unsafe { glue::dst_bio_kfree(bio) };
    // SAFETY: `private` is the reference made in `flush_sync`, which keeps
    // the result alive for `set`.
    unsafe { Arc::from_raw(private.cast::<IoResult>()) }.set(res);
}
