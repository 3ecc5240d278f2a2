// SPDX-License-Identifier: GPL-2.0

//! Resync: bringing a mirror leg back in sync while the device is in use.
//!
//! A leg being resynced gets every write (so regions already copied stay
//! in sync) but serves no reads.  The resync copies its dirty regions
//! (see [`crate::bitmap`]) from an in-sync leg, a chunk of up to
//! [`CHUNK_BYTES`] of consecutive dirty regions at a time (at least one
//! region):
//!
//! 1. raise the [`Barrier`] over the chunk's buckets: new writes there are
//!    parked, and the copy waits for the writes in flight to end;
//! 2. read the chunk from the source leg, write it to the target leg;
//! 3. clear the regions' dirty bits, lower the barrier, resubmit the parked
//!    writes.
//!
//! A region is marked clean only after both copies match, and a write can
//! never slip between the read and the write of its region: it either ended
//! before the copy read the source, or waits until the copy is written.  If
//! the target or the source fails, the chunk stays dirty and the resync
//! resumes when a source and the target are available again.  It runs as a
//! job on the module's workqueue, driven by I/O completions; nothing waits.
//!
//! Speed: while the device has other I/O (its legs served requests since
//! the last chunk), the copy is held to the device's `resync_rate`; at all
//! times to its `resync_max` (KiB/s, 0: no limit).  Like md's
//! `speed_limit_min` and `speed_limit_max`: an idle device resyncs as fast
//! as the legs allow, a busy one keeps most of their bandwidth.  The limit
//! is kept by starting the next chunk no earlier than its cost at that
//! rate allows.

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use kernel::prelude::*;
use kernel::sync::Arc;

use crate::bio::{Op, PageBuf};
use crate::device::{Device, LegUse};
use crate::glue::now_ms;
use crate::io::{page_io, PageOp};

/// Most bytes copied in one go (unless one region is larger).
const CHUNK_BYTES: u64 = 1 << 20;
/// Longest the job sleeps to keep a rate (it then checks again, so a
/// changed limit applies soon).
const MAX_SLEEP_MS: u64 = 1000;
/// How far behind its schedule the copy may fall and catch up at once.
const BURST_US: u64 = 100_000;
/// The speed shown is measured over about this long.
const SPEED_WINDOW_MS: u64 = 2000;
/// Barrier buckets (a region's bucket is its number modulo this).
const BUCKETS: u64 = 64;

/// Keeps writes and the resync copy of the same regions apart.
///
/// Every mirror write registers in the buckets of the regions it touches
/// for as long as it is in flight.  The resync raises the barrier on the
/// buckets of the chunk it copies, then waits for them to drain; a write
/// that finds its buckets raised is parked until the barrier is lowered.
pub(crate) struct Barrier {
    raised: AtomicU64,
    pending: [AtomicU32; BUCKETS as usize],
}

impl Barrier {
    /// No barrier, no writes.
    pub(crate) fn new() -> Self {
        Barrier {
            raised: AtomicU64::new(0),
            pending: [const { AtomicU32::new(0) }; BUCKETS as usize],
        }
    }

    /// The buckets of regions `first..=last`.
    pub(crate) fn buckets(first: u64, last: u64) -> u64 {
        if last.saturating_sub(first) >= BUCKETS - 1 {
            return u64::MAX;
        }
        let mut mask = 0;
        for r in first..=last {
            mask |= 1 << (r % BUCKETS);
        }
        mask
    }

    /// Registers a write in `mask`; `false` if it must be parked.
    pub(crate) fn enter(&self, mask: u64) -> bool {
        for b in bits(mask) {
            self.pending[b].fetch_add(1, Ordering::SeqCst);
        }
        if self.raised.load(Ordering::SeqCst) & mask == 0 {
            return true;
        }
        self.exit(mask);
        false
    }

    /// Unregisters a write; `true` if the resync may be waiting for it.
    pub(crate) fn exit(&self, mask: u64) -> bool {
        let mut wake = false;
        for b in bits(mask) {
            if self.pending[b].fetch_sub(1, Ordering::SeqCst) == 1 {
                wake |= self.raised.load(Ordering::SeqCst) & (1 << b) != 0;
            }
        }
        wake
    }

    fn raise(&self, mask: u64) {
        self.raised.store(mask, Ordering::SeqCst);
    }

    fn drained(&self, mask: u64) -> bool {
        bits(mask).all(|b| self.pending[b].load(Ordering::SeqCst) == 0)
    }

    pub(crate) fn lower(&self) {
        self.raised.store(0, Ordering::SeqCst);
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

#[derive(Clone, Copy)]
struct Chunk {
    first: u64,
    count: u64,
    source: usize,
    mask: u64,
    phase: Phase,
}

/// The resync state of a device; only its job touches it.
pub(crate) struct ResyncState {
    target: Option<usize>,
    cursor: u64,
    chunk: Option<Chunk>,
    buf: Option<Arc<PageBuf>>,
    /// Bytes to copy and copied, for the target being resynced.
    pub(crate) total: u64,
    pub(crate) done: u64,
    failures: u32,
    /// Legs whose resync reads failed, for the current target: others are
    /// preferred as sources.
    bad_sources: u32,
    /// When the next chunk may start, in microseconds of the monotonic
    /// clock (rate limit).
    next_us: u64,
    /// The legs' request count when the last chunk ended.
    last_requests: u64,
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
            chunk: None,
            buf: None,
            total: 0,
            done: 0,
            failures: 0,
            bad_sources: 0,
            next_us: 0,
            last_requests: 0,
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

    /// Starts on leg `target`, with `total` bytes to copy; `requests` is
    /// the device's foreground count now (what "busy" compares with).
    fn start_target(&mut self, target: usize, total: u64, requests: u64) {
        self.target = Some(target);
        self.last_requests = requests;
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

    /// Accounts for a chunk of `bytes` copied: progress, speed, and when
    /// the next chunk may start at the rate that applies now.
    fn copied(&mut self, dev: &Device, bytes: u64) {
        self.done += bytes;
        let now = now_ms();
        let since = now.saturating_sub(self.mark_ms);
        if since >= SPEED_WINDOW_MS {
            self.speed = self.speed_since(since);
            self.mark_ms = now;
            self.mark_done = self.done;
        }
        let requests = dev.foreground_requests();
        let busy = requests != self.last_requests;
        self.last_requests = requests;
        let (rate, max) = dev.resync_limits();
        // The lowest limit that applies (0: none).
        let busy_rate = if busy { rate } else { 0 };
        let kib = [busy_rate, max]
            .into_iter()
            .filter(|&k| k != 0)
            .min()
            .unwrap_or(0);
        if kib == 0 {
            self.next_us = 0;
            return;
        }
        let now_us = now * 1000;
        let cost_us = bytes * 1_000_000 / (u64::from(kib) * 1024);
        self.next_us = self.next_us.max(now_us.saturating_sub(BURST_US)) + cost_us;
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

/// What the job should do after a step.
enum Next {
    /// Call again at once.
    Continue,
    /// Wait for an I/O completion or a write to drain (they kick the job).
    Wait,
    /// Nothing to do.
    Idle,
}

/// Runs the resync as far as it can go without waiting.
pub(crate) fn run(dev: &Arc<Device>) {
    let mut st = dev.resync_state();
    loop {
        let next = step(dev, &mut st);
        match next {
            Next::Continue => continue,
            Next::Wait | Next::Idle => break,
        }
    }
    drop(st);
    dev.resubmit_parked();
}

/// Ends the current chunk: lowers the barrier (parked writes are
/// resubmitted when the job returns).
fn end_chunk(dev: &Device, st: &mut ResyncState) {
    st.chunk = None;
    dev.barrier().lower();
}

fn step(dev: &Arc<Device>, st: &mut ResyncState) -> Next {
    if dev.is_stopping() {
        if st.chunk.is_some_and(|c| c.phase != Phase::Draining) {
            // An I/O is in flight; its completion comes back here.
            return Next::Wait;
        }
        end_chunk(dev, st);
        return Next::Idle;
    }
    let Some(chunk) = st.chunk else {
        return start_chunk(dev, st);
    };
    let Some(target) = st.target else {
        end_chunk(dev, st);
        return Next::Continue;
    };
    let map = dev.dirty_map(target);
    let region_sectors = map.map_or(0, |m| m.region_sectors());
    let sector = chunk.first * region_sectors;
    let bytes = u32::try_from((chunk.count * region_sectors) << 9).unwrap_or(0);
    // The last region may be short.
    let bytes =
        bytes.min(u32::try_from((dev.sectors().saturating_sub(sector)) << 9).unwrap_or(u32::MAX));
    match chunk.phase {
        Phase::Draining => {
            if !dev.barrier().drained(chunk.mask) {
                return Next::Wait;
            }
            let Some(buf) = st.buf.clone() else {
                end_chunk(dev, st);
                return Next::Idle;
            };
            let Some(src) = dev.legs().get(chunk.source) else {
                end_chunk(dev, st);
                return Next::Continue;
            };
            if !dev.enter_leg(chunk.source, LegUse::ResyncSource) {
                // The source was detached or went down.
                return switch_source(dev, st, chunk.source);
            }
            st.chunk = Some(Chunk {
                phase: Phase::Reading,
                ..chunk
            });
            if page_io(dev.clone(), buf, src.dev(), PageOp::Read, sector, bytes).is_err() {
                src.end();
                st.chunk = Some(chunk);
                dev.kick_resync_later();
                return Next::Wait;
            }
            Next::Wait
        }
        Phase::Reading | Phase::Writing => {
            let Some(res) = dev.resync_result().take() else {
                return Next::Wait;
            };
            let (ended, op) = if chunk.phase == Phase::Reading {
                (chunk.source, Op::Read)
            } else {
                (target, Op::Write)
            };
            if let Some(leg) = dev.legs().get(ended) {
                leg.end_resync(op, res);
            }
            if chunk.phase == Phase::Reading {
                if let Err(e) = res {
                    // The source's copy is bad there: it is rewritten
                    // from another in-sync leg, if there is one (read
                    // repair).
                    Device::repair(dev.as_arc_borrow(), chunk.source, sector, bytes, e);
                    // The source failed: copy from another leg if there
                    // is one, else try again later; give up on this target
                    // after a few failures in a row.
                    st.failures += 1;
                    if st.failures > 8 {
                        end_chunk(dev, st);
                        dev.resync_failed(target, "the source legs keep failing");
                        return Next::Continue;
                    }
                    return switch_source(dev, st, chunk.source);
                }
                let (Some(buf), Some(dst)) = (st.buf.clone(), dev.legs().get(target)) else {
                    end_chunk(dev, st);
                    return Next::Continue;
                };
                if !dev.enter_leg(target, LegUse::ResyncTarget) {
                    // The target was detached or went down.
                    end_chunk(dev, st);
                    return Next::Continue;
                }
                st.chunk = Some(Chunk {
                    phase: Phase::Writing,
                    ..chunk
                });
                if page_io(dev.clone(), buf, dst.dev(), PageOp::Write, sector, bytes).is_err() {
                    dst.end();
                    end_chunk(dev, st);
                    dev.kick_resync_later();
                    return Next::Wait;
                }
                return Next::Wait;
            }
            match res {
                Ok(()) => {
                    if let Some(m) = map {
                        for r in chunk.first..chunk.first + chunk.count {
                            m.clear(r);
                        }
                    }
                    st.copied(dev, u64::from(bytes));
                    if let Some(leg) = dev.legs().get(target) {
                        leg.count_resynced(bytes);
                    }
                    st.cursor = chunk.first + chunk.count;
                    st.failures = 0;
                    end_chunk(dev, st);
                    dev.resync_progress(st);
                    // Give other work a turn between chunks.
                    dev.kick_resync();
                    Next::Wait
                }
                Err(e) => {
                    // The target failed the write: its state changes (the
                    // remote reports the connection, a local leg is taken
                    // out); the chunk stays dirty.
                    end_chunk(dev, st);
                    dev.resync_target_failed(target, e);
                    Next::Continue
                }
            }
        }
    }
}

/// The chunk's `source` failed or left: ends the chunk, and copies it
/// again from another leg if there is one, else (from any leg, `source`
/// too) a little later.
fn switch_source(dev: &Arc<Device>, st: &mut ResyncState, source: usize) -> Next {
    st.bad_sources |= 1 << source;
    end_chunk(dev, st);
    let target = st.target.unwrap_or(usize::MAX);
    if dev.resync_source(target, st.bad_sources).is_some() {
        return Next::Continue;
    }
    dev.kick_resync_later();
    Next::Wait
}

/// Picks the next chunk to copy, or finishes the target.
fn start_chunk(dev: &Arc<Device>, st: &mut ResyncState) -> Next {
    let Some(target) = dev.next_resync_target() else {
        st.target = None;
        st.buf = None;
        return Next::Idle;
    };
    if st.target != Some(target) {
        let total = dev.dirty_map(target).map_or(0, |m| m.dirty_bytes());
        st.start_target(target, total, dev.foreground_requests());
        dev.resync_progress(st);
    }
    let Some(map) = dev.dirty_map(target) else {
        return Next::Idle;
    };
    let wait = st.wait_ms();
    if wait > 0 {
        dev.kick_resync_in(wait);
        return Next::Wait;
    }
    let Some(source) = dev
        .resync_source(target, st.bad_sources)
        .or_else(|| dev.resync_source(target, 0))
    else {
        // No leg to copy from: wait until one comes back.
        return Next::Idle;
    };
    let region_bytes = map.region_sectors() << 9;
    let chunk_regions = (CHUNK_BYTES / region_bytes).max(1);
    if st.buf.is_none() {
        let bytes = u32::try_from(chunk_regions * region_bytes).unwrap_or(1 << 20);
        match PageBuf::new(bytes).and_then(|b| Ok(Arc::new(b, GFP_KERNEL)?)) {
            Ok(b) => st.buf = Some(b),
            Err(_) => {
                dev.kick_resync_later();
                return Next::Wait;
            }
        }
    }
    let first = match map.next_dirty(st.cursor) {
        Some(r) => r,
        None => match map.next_dirty(0) {
            // Regions dirtied behind the cursor meanwhile.
            Some(r) => r,
            None => {
                dev.resync_done(target, st.done, now_ms().saturating_sub(st.started_ms));
                st.target = None;
                return Next::Continue;
            }
        },
    };
    let mut count = 1;
    while count < chunk_regions && first + count < map.regions() && map.is_dirty(first + count) {
        count += 1;
    }
    let mask = Barrier::buckets(first, first + count - 1);
    dev.barrier().raise(mask);
    st.chunk = Some(Chunk {
        first,
        count,
        source,
        mask,
        phase: Phase::Draining,
    });
    Next::Continue
}
