// SPDX-License-Identifier: GPL-2.0

//! Resync: bringing a mirror leg back in sync while the device is in use.
//!
//! A leg being resynced gets every write (so regions already copied stay
//! in sync) but serves no reads.  The resync copies its dirty regions
//! (see [`crate::bitmap`]) from an in-sync leg in *chunks*: runs of
//! consecutive dirty regions within one [`CHUNK_BYTES`]-aligned stretch of
//! the device (or a single region, when regions are larger).  Up to
//! [`DEPTH`] chunks are copied at once, each in its own slot:
//!
//! 1. raise the [`Barrier`] over the chunk's buckets: new writes there are
//!    parked, and the copy waits for the writes in flight to end;
//! 2. read the chunk from the source leg, write it to the target leg;
//! 3. clear the regions' dirty bits, lower the chunk's buckets, resubmit
//!    the parked writes.
//!
//! A region is marked clean only after both copies match, and a write can
//! never slip between the read and the write of its region: it either ended
//! before the copy read the source, or waits until the copy is written.
//! Chunks in flight never share a bucket, so they never overlap.  If the
//! target or the source fails, the chunk stays dirty and the resync
//! resumes when a source and the target are available again.  It runs as a
//! job on the module's workqueue, driven by I/O completions; nothing waits.
//! Several chunks in flight keep a remote leg's link busy: one at a time,
//! the copy would stop for a round trip per chunk.
//!
//! Speed: while the device has other I/O (its legs served requests in the
//! last half second), the copy is held to the device's `resync_rate`;
//! at all times to its `resync_max` (KiB/s, 0: no limit).  Like md's
//! `speed_limit_min` and `speed_limit_max`: an idle device resyncs as fast
//! as the legs allow, a busy one keeps most of their bandwidth.  The limit
//! is kept by starting each chunk no earlier than the cost of those before
//! it at that rate allows.

use core::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};

use kernel::prelude::*;
use kernel::sync::Arc;

use crate::bio::{Op, PageBuf};
use crate::device::{Device, LegUse};
use crate::glue::now_ms;
use crate::io::{page_io, IoResult, PageIoOwner, PageOp};

/// Most bytes copied in one chunk (unless one region is larger); also the
/// span of device each barrier bucket stands for.
const CHUNK_BYTES: u64 = 1 << 20;
/// Chunks copied at once.
pub(crate) const DEPTH: usize = 4;
/// Longest the job sleeps to keep a rate (it then checks again, so a
/// changed limit applies soon).
const MAX_SLEEP_MS: u64 = 1000;
/// How long the copy pauses after a leg refused a chunk (a failed source
/// with no other to use, no memory for the I/O).
const BACKOFF_MS: u64 = 500;
/// The device counts as busy (held to `resync_rate`) for this long after
/// its legs last served a request.
const BUSY_WINDOW_MS: u64 = 500;
/// How far behind its schedule the copy may fall and catch up at once.
const BURST_US: u64 = 100_000;
/// The speed shown is measured over about this long.
const SPEED_WINDOW_MS: u64 = 2000;
/// Barrier buckets: the bucket of a sector is its [`CHUNK_BYTES`] stretch
/// of the device, modulo this.
const BUCKETS: u64 = 64;
/// `log2` of the sectors in a bucket's stretch.
const BUCKET_SHIFT: u32 = (CHUNK_BYTES >> 9).trailing_zeros();

/// Keeps writes and the resync copy of the same regions apart.
///
/// Every mirror write registers in the buckets of the sectors it touches
/// for as long as it is in flight.  The resync raises the barrier on the
/// buckets of each chunk it copies, then waits for them to drain; a write
/// that finds one of its buckets raised is parked until it is lowered.
/// Writes elsewhere go on.
///
/// The write that leaves a draining bucket last must run the job, or the
/// chunk waits forever.  That includes a write that registered, found the
/// bucket raised and unregistered again before it was parked: its count
/// may have been the last one the chunk waited for.
pub(crate) struct Barrier {
    raised: AtomicU64,
    /// The raised buckets whose chunk still waits for them to drain: only
    /// a write leaving one of those wakes the job (a write leaving a
    /// bucket whose chunk is being copied would only run it for nothing).
    draining: AtomicU64,
    pending: [AtomicU32; BUCKETS as usize],
}

/// What a write found at the [`Barrier`].
pub(crate) enum Entry {
    /// No bucket of its raised: it is registered, and goes on.
    Open,
    /// A bucket of its is raised: it is not registered, and is parked.
    /// `wake`: leaving, it drained a bucket, so the job must run.
    Closed { wake: bool },
}

impl Barrier {
    /// No barrier, no writes.
    pub(crate) fn new() -> Self {
        Barrier {
            raised: AtomicU64::new(0),
            draining: AtomicU64::new(0),
            pending: [const { AtomicU32::new(0) }; BUCKETS as usize],
        }
    }

    /// The buckets of `bytes` (not 0) at `sector`.
    pub(crate) fn buckets(sector: u64, bytes: u64) -> u64 {
        let first = sector >> BUCKET_SHIFT;
        let last = (sector + (bytes - 1) / 512) >> BUCKET_SHIFT;
        if last - first >= BUCKETS - 1 {
            return u64::MAX;
        }
        let mut mask = 0;
        for b in first..=last {
            mask |= 1 << (b % BUCKETS);
        }
        mask
    }

    /// Registers a write in `mask`, unless it must be parked.
    pub(crate) fn enter(&self, mask: u64) -> Entry {
        for b in bits(mask) {
            self.pending[b].fetch_add(1, Ordering::SeqCst);
        }
        crate::glue::race_delay();
        if self.raised.load(Ordering::SeqCst) & mask == 0 {
            return Entry::Open;
        }
        // A write in flight there may have ended since we registered,
        // leaving our count as the last one.
        Entry::Closed {
            wake: self.exit(mask),
        }
    }

    /// Unregisters a write; `true` if the resync may be waiting for it.
    pub(crate) fn exit(&self, mask: u64) -> bool {
        let mut wake = false;
        for b in bits(mask) {
            if self.pending[b].fetch_sub(1, Ordering::SeqCst) == 1 {
                wake |= self.draining.load(Ordering::SeqCst) & (1 << b) != 0;
            }
        }
        wake
    }

    /// Raises `mask`, which no chunk in flight holds; it drains from now.
    fn raise(&self, mask: u64) {
        self.draining.fetch_or(mask, Ordering::SeqCst);
        self.raised.fetch_or(mask, Ordering::SeqCst);
    }

    /// `mask` has drained: its chunk is being copied.
    fn drain_done(&self, mask: u64) {
        self.draining.fetch_and(!mask, Ordering::SeqCst);
    }

    /// Whether any of `mask` is raised.
    pub(crate) fn is_raised(&self, mask: u64) -> bool {
        self.raised.load(Ordering::SeqCst) & mask != 0
    }

    fn drained(&self, mask: u64) -> bool {
        bits(mask).all(|b| self.pending[b].load(Ordering::SeqCst) == 0)
    }

    /// Lowers `mask` (the buckets of one chunk).
    fn lower(&self, mask: u64) {
        self.raised.fetch_and(!mask, Ordering::SeqCst);
        self.drain_done(mask);
    }

    /// Lowers every bucket (the device is going away).
    pub(crate) fn lower_all(&self) {
        self.raised.store(0, Ordering::SeqCst);
        self.draining.store(0, Ordering::SeqCst);
    }
}

fn bits(mask: u64) -> impl Iterator<Item = usize> {
    (0..BUCKETS as usize).filter(move |&b| mask & (1 << b) != 0)
}

/// Where the copy of a chunk stands.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for the writes in flight in the chunk's buckets.
    Draining,
    /// Reading from the source.
    Reading,
    /// Writing to the target.
    Writing,
}

/// A chunk being copied: regions `first..first + count` of leg `target`'s
/// dirty map, from leg `source`.
#[derive(Clone, Copy)]
struct Chunk {
    target: usize,
    first: u64,
    count: u64,
    source: usize,
    mask: u64,
    phase: Phase,
}

/// One chunk's worth of copying: the chunk, if any, and its buffer (kept
/// while the same target is resynced).
struct Slot {
    chunk: Option<Chunk>,
    buf: Option<Arc<PageBuf>>,
}

/// The resync state of a device; only its job touches it.
pub(crate) struct ResyncState {
    target: Option<usize>,
    /// Where the search for the next dirty region starts.
    cursor: u64,
    slots: [Slot; DEPTH],
    /// Bytes to copy and copied, for the target being resynced.
    pub(crate) total: u64,
    pub(crate) done: u64,
    /// Chunks whose source failed since the last one copied.
    failures: u32,
    /// Legs whose resync reads failed, for the current target: others are
    /// preferred as sources.
    bad_sources: u32,
    /// When the next chunk may start, in microseconds of the monotonic
    /// clock (rate limit, backoff).
    next_us: u64,
    /// The legs' request count when a chunk last started, and when it
    /// was last seen to change (milliseconds of the monotonic clock).
    last_requests: u64,
    busy_ms: Option<u64>,
    /// Speed measurement: `done` at `mark_ms`, and the speed found over
    /// the window before it (bytes per second).
    mark_ms: u64,
    mark_done: u64,
    speed: u64,
    /// When the resync of the current target started.
    started_ms: u64,
}

impl ResyncState {
    /// Nothing to do yet.
    pub(crate) fn new() -> Self {
        ResyncState {
            target: None,
            cursor: 0,
            slots: [const {
                Slot {
                    chunk: None,
                    buf: None,
                }
            }; DEPTH],
            total: 0,
            done: 0,
            failures: 0,
            bad_sources: 0,
            next_us: 0,
            last_requests: 0,
            busy_ms: None,
            mark_ms: 0,
            mark_done: 0,
            speed: 0,
            started_ms: 0,
        }
    }

    /// The leg being resynced.
    pub(crate) fn target(&self) -> Option<usize> {
        self.target
    }

    /// Forgets the schedule (the limits changed).
    pub(crate) fn reset_schedule(&mut self) {
        self.next_us = 0;
    }

    /// Bytes per second copied lately.
    pub(crate) fn speed(&self) -> u64 {
        let since = now_ms().saturating_sub(self.mark_ms);
        if since > SPEED_WINDOW_MS {
            // Stalled or slowed down since the last measure.
            return self.speed_since(since);
        }
        self.speed
    }

    /// Bytes per second since the mark, `since` milliseconds ago.
    fn speed_since(&self, since: u64) -> u64 {
        self.done.saturating_sub(self.mark_done) * 1000 / since.max(1)
    }

    /// Whether a chunk is being copied.
    fn in_flight(&self) -> bool {
        self.slots.iter().any(|s| s.chunk.is_some())
    }

    /// Starts on leg `target`, with `total` bytes to copy; `requests` is
    /// the device's foreground count now (what "busy" compares with).
    fn start_target(&mut self, target: usize, total: u64, requests: u64) {
        self.target = Some(target);
        self.last_requests = requests;
        self.busy_ms = None;
        self.cursor = 0;
        self.failures = 0;
        self.bad_sources = 0;
        self.done = 0;
        self.total = total;
        self.mark_ms = now_ms();
        self.started_ms = self.mark_ms;
        self.mark_done = 0;
        self.speed = 0;
    }

    /// Accounts for a chunk of `bytes` copied: progress and speed.
    fn copied(&mut self, bytes: u64) {
        self.done += bytes;
        let now = now_ms();
        let since = now.saturating_sub(self.mark_ms);
        if since >= SPEED_WINDOW_MS {
            self.speed = self.speed_since(since);
            self.mark_ms = now;
            self.mark_done = self.done;
        }
    }

    /// Books a chunk of `bytes` that starts now: the next one may start
    /// once this one's cost at the rate that applies now has passed.
    fn schedule(&mut self, dev: &Device, bytes: u64) {
        let now = now_ms();
        let requests = dev.foreground_requests();
        if requests != self.last_requests {
            self.last_requests = requests;
            self.busy_ms = Some(now);
        }
        // Chunks start in bursts, so "busy" looks back a while rather
        // than only at the chunk before.
        let busy = self
            .busy_ms
            .is_some_and(|t| now.saturating_sub(t) < BUSY_WINDOW_MS);
        let (rate, max) = dev.resync_limits();
        // The lowest limit that applies (0: none).
        let busy_rate = if busy { rate } else { 0 };
        let kib = [busy_rate, max]
            .into_iter()
            .filter(|&k| k != 0)
            .min()
            .unwrap_or(0);
        if kib == 0 {
            return;
        }
        let now_us = now * 1000;
        let cost_us = bytes * 1_000_000 / (u64::from(kib) * 1024);
        self.next_us = self.next_us.max(now_us.saturating_sub(BURST_US)) + cost_us;
    }

    /// Starts no chunk for a while (a leg refused one).
    fn back_off(&mut self) {
        self.next_us = self.next_us.max((now_ms() + BACKOFF_MS) * 1000);
    }

    /// Milliseconds until the next chunk may start (0: now).
    fn wait_ms(&self) -> u64 {
        let now_us = now_ms() * 1000;
        self.next_us
            .saturating_sub(now_us)
            .div_ceil(1000)
            .min(MAX_SLEEP_MS)
    }
}

/// The owner of one resync I/O: its result goes to the device's slot.
struct SlotIo {
    dev: Arc<Device>,
    slot: usize,
}

impl PageIoOwner for SlotIo {
    fn page_io_done(this: Arc<Self>, res: Result) {
        if let Some(r) = this.dev.resync_result(this.slot) {
            r.set(res);
        }
        this.dev.kick_resync();
    }
}

/// Sends `op` for chunk slot `slot` of `dev`, on leg `leg`.
fn slot_io(
    dev: &Arc<Device>,
    st: &ResyncState,
    slot: usize,
    leg: usize,
    op: PageOp,
    sector: u64,
    bytes: u32,
) -> Result {
    let buf = st.slots[slot].buf.clone().ok_or(ENOMEM)?;
    let sink = dev.legs().get(leg).ok_or(ENOENT)?.dev();
    let owner = Arc::new(
        SlotIo {
            dev: dev.clone(),
            slot,
        },
        GFP_KERNEL,
    )?;
    page_io(owner, buf, sink, op, sector, bytes)
}

/// Runs the resync as far as it can go without waiting.
pub(crate) fn run(dev: &Arc<Device>) {
    let mut st = dev.resync_state();
    while step(dev, &mut st) {}
    drop(st);
    // Pairs with the fence in `Device::park`: a write parked after this
    // saw its buckets lowered and runs the job again.
    fence(Ordering::SeqCst);
    dev.kick_parked();
}

/// Ends the chunk in `slot`: lowers its buckets (parked writes are
/// resubmitted when the job returns).
fn end_chunk(dev: &Device, st: &mut ResyncState, slot: usize) {
    if let Some(c) = st.slots[slot].chunk.take() {
        dev.barrier().lower(c.mask);
    }
}

/// Advances every chunk, then starts new ones; `true` if anything moved
/// (the caller steps again).
fn step(dev: &Arc<Device>, st: &mut ResyncState) -> bool {
    if dev.is_stopping() {
        // Chunks with I/O in flight end when it completes (the remote
        // legs fail what they hold); the others end now.
        for slot in 0..DEPTH {
            if st.slots[slot]
                .chunk
                .is_some_and(|c| c.phase == Phase::Draining)
            {
                end_chunk(dev, st, slot);
            }
        }
    }
    let mut moved = false;
    for slot in 0..DEPTH {
        moved |= advance(dev, st, slot);
    }
    if !dev.is_stopping() {
        moved |= fill(dev, st);
    }
    moved
}

/// The sectors and bytes of `c` on the device (the last region may be
/// short).
fn extent(dev: &Device, c: &Chunk) -> (u64, u32) {
    let region_sectors = dev.dirty_map(c.target).map_or(0, |m| m.region_sectors());
    let sector = c.first * region_sectors;
    let sectors = (c.count * region_sectors).min(dev.sectors().saturating_sub(sector));
    (sector, u32::try_from(sectors << 9).unwrap_or(0))
}

/// Moves the chunk in `slot` on, if it can; `true` if it did.
fn advance(dev: &Arc<Device>, st: &mut ResyncState, slot: usize) -> bool {
    let Some(chunk) = st.slots[slot].chunk else {
        return false;
    };
    let (sector, bytes) = extent(dev, &chunk);
    let target = chunk.target;
    match chunk.phase {
        Phase::Draining => {
            if !dev.barrier().drained(chunk.mask) {
                // The last write to leave kicks the job.
                return false;
            }
            if !dev.enter_leg(chunk.source, LegUse::ResyncSource) {
                // The source was detached or went down.
                switch_source(dev, st, slot, chunk.source);
                return true;
            }
            dev.barrier().drain_done(chunk.mask);
            st.slots[slot].chunk = Some(Chunk {
                phase: Phase::Reading,
                ..chunk
            });
            if slot_io(dev, st, slot, chunk.source, PageOp::Read, sector, bytes).is_err() {
                if let Some(src) = dev.legs().get(chunk.source) {
                    src.end();
                }
                end_chunk(dev, st, slot);
                st.back_off();
            }
            true
        }
        Phase::Reading | Phase::Writing => {
            let Some(res) = dev.resync_result(slot).and_then(IoResult::take) else {
                // Its completion kicks the job.
                return false;
            };
            let (ended, op) = if chunk.phase == Phase::Reading {
                (chunk.source, Op::Read)
            } else {
                (target, Op::Write)
            };
            if let Some(leg) = dev.legs().get(ended) {
                leg.end_resync(op, res);
            }
            match (chunk.phase, res) {
                (Phase::Reading, Err(e)) => {
                    // The source's copy is bad there: it is rewritten from
                    // another in-sync leg, if there is one (read repair).
                    Device::repair(dev.as_arc_borrow(), chunk.source, sector, bytes, e);
                    // Copy from another leg if there is one, else try
                    // again later; give up on this target after a few
                    // failures in a row.
                    st.failures += 1;
                    if st.failures > 8 {
                        end_chunk(dev, st, slot);
                        dev.resync_failed(target, "the source legs keep failing");
                    } else {
                        switch_source(dev, st, slot, chunk.source);
                    }
                }
                (Phase::Reading, Ok(())) => {
                    if dev.is_stopping() || !dev.enter_leg(target, LegUse::ResyncTarget) {
                        // The target was detached or went down.
                        end_chunk(dev, st, slot);
                        return true;
                    }
                    st.slots[slot].chunk = Some(Chunk {
                        phase: Phase::Writing,
                        ..chunk
                    });
                    if slot_io(dev, st, slot, target, PageOp::Write, sector, bytes).is_err() {
                        if let Some(dst) = dev.legs().get(target) {
                            dst.end();
                        }
                        end_chunk(dev, st, slot);
                        st.back_off();
                    }
                }
                (_, Ok(())) => {
                    if let Some(m) = dev.dirty_map(target) {
                        for r in chunk.first..chunk.first + chunk.count {
                            m.clear(r);
                        }
                    }
                    if st.target == Some(target) {
                        st.copied(u64::from(bytes));
                        st.failures = 0;
                    }
                    if let Some(leg) = dev.legs().get(target) {
                        leg.count_resynced(bytes);
                    }
                    end_chunk(dev, st, slot);
                    dev.resync_progress();
                }
                (_, Err(e)) => {
                    // The target failed the write: its state changes (the
                    // remote reports the connection, a local leg is taken
                    // out); the chunk stays dirty.
                    end_chunk(dev, st, slot);
                    dev.resync_target_failed(target, e);
                }
            }
            true
        }
    }
}

/// The source of the chunk in `slot` failed or left: ends the chunk (it
/// is copied again, from another leg if there is one, else, from any leg,
/// `source` too, a little later).
fn switch_source(dev: &Arc<Device>, st: &mut ResyncState, slot: usize, source: usize) {
    st.bad_sources |= 1 << source;
    end_chunk(dev, st, slot);
    let target = st.target.unwrap_or(usize::MAX);
    if dev.resync_source(target, st.bad_sources).is_none() {
        st.back_off();
    }
}

/// Starts chunks in the free slots, as far as the rate, the barrier and
/// the dirty map allow, or finishes the target; `true` if it did either.
fn fill(dev: &Arc<Device>, st: &mut ResyncState) -> bool {
    let Some(target) = dev.next_resync_target() else {
        if !st.in_flight() {
            st.target = None;
            st.slots.iter_mut().for_each(|s| s.buf = None);
        }
        return false;
    };
    if st.target != Some(target) {
        if st.in_flight() {
            // The previous target's chunks end first.
            return false;
        }
        st.slots.iter_mut().for_each(|s| s.buf = None);
        let total = dev.dirty_map(target).map_or(0, |m| m.dirty_bytes());
        st.start_target(target, total, dev.foreground_requests());
        dev.resync_progress();
    }
    let Some(map) = dev.dirty_map(target) else {
        return false;
    };
    let region_bytes = map.region_sectors() << 9;
    // Regions per chunk, and so per bucket stretch when regions are
    // smaller than it (both are powers of two).
    let chunk_regions = (CHUNK_BYTES / region_bytes).max(1);
    let mut moved = false;
    while let Some(slot) = st.slots.iter().position(|s| s.chunk.is_none()) {
        let wait = st.wait_ms();
        if wait > 0 {
            // Chunks in flight run the job when they end; only a copy
            // with none needs a timer.  (A pending timer would hold back
            // their completions, and so the writes parked behind them:
            // the job's work item runs once, at the later time.)
            if !st.in_flight() {
                dev.kick_resync_in(wait);
            }
            break;
        }
        let Some(source) = dev
            .resync_source(target, st.bad_sources)
            .or_else(|| dev.resync_source(target, 0))
        else {
            // No leg to copy from: a leg coming back kicks the job.
            break;
        };
        let first = match map.next_dirty(st.cursor) {
            Some(r) => r,
            // Regions dirtied behind the cursor meanwhile, or not copied.
            None => match map.next_dirty(0) {
                Some(r) => r,
                None if st.in_flight() => break,
                None => {
                    dev.resync_done(target, st.done, now_ms().saturating_sub(st.started_ms));
                    st.target = None;
                    st.slots.iter_mut().for_each(|s| s.buf = None);
                    return true;
                }
            },
        };
        // Up to the end of the stretch `first` is in.
        let end = (first / chunk_regions + 1) * chunk_regions;
        let mut count = 1;
        while first + count < end.min(map.regions()) && map.is_dirty(first + count) {
            count += 1;
        }
        let mut chunk = Chunk {
            target,
            first,
            count,
            source,
            mask: 0,
            phase: Phase::Draining,
        };
        let (sector, bytes) = extent(dev, &chunk);
        if bytes == 0 {
            break;
        }
        chunk.mask = Barrier::buckets(sector, u64::from(bytes));
        if dev.barrier().is_raised(chunk.mask) {
            // A chunk in flight has it (or shares a bucket): it goes
            // first.
            break;
        }
        if st.slots[slot].buf.is_none() {
            let size = u32::try_from(chunk_regions * region_bytes).unwrap_or(1 << 20);
            match PageBuf::new(size).and_then(|b| Ok(Arc::new(b, GFP_KERNEL)?)) {
                Ok(b) => st.slots[slot].buf = Some(b),
                Err(_) => {
                    // The wait above sets the timer.
                    st.back_off();
                    continue;
                }
            }
        }
        st.schedule(dev, u64::from(bytes));
        dev.barrier().raise(chunk.mask);
        st.slots[slot].chunk = Some(chunk);
        st.cursor = first + count;
        moved = true;
    }
    moved
}
