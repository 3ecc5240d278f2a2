// SPDX-License-Identifier: GPL-2.0

//! Legs: the devices a dst device is made of.

use core::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};

use kernel::prelude::*;
use kernel::str::{CStr, CString};

use kernel::sync::Arc;

use crate::bdev::{BlockDev, Holder};
use crate::bio::{LegBio, Op};
use crate::io::{BioSink, Gate};
use crate::msg::{refuse, Refusal};
use crate::proto::genl::LegState;
use crate::remote::{Remote, RemoteConfig};

/// A set of legs of a device (those with reads that failed, to repair):
/// one atomic bitmask, bit `i` for leg `i`.
pub(crate) struct LegSet(AtomicU32);

/// What [`SetView::remove_unless_last`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Removal {
    /// The leg left the set.
    Removed,
    /// The leg was not in the set.
    NotMember,
    /// The leg is the last one in the set and stays.
    Last,
}

impl LegSet {
    /// No leg.
    pub(crate) fn none() -> Self {
        LegSet(AtomicU32::new(0))
    }

    /// Adds leg `i`; returns whether it was absent.
    pub(crate) fn insert(&self, i: usize) -> bool {
        self.0.fetch_or(1 << i, Ordering::AcqRel) & (1 << i) == 0
    }

    /// Adds leg `i` if `on`, removes it if not; returns whether that
    /// changed the set.
    pub(crate) fn set(&self, i: usize, on: bool) -> bool {
        let bit = 1 << i;
        let before = if on {
            self.0.fetch_or(bit, Ordering::AcqRel)
        } else {
            self.0.fetch_and(!bit, Ordering::AcqRel)
        };
        (before & bit != 0) != on
    }

    /// Whether leg `i` is in the set.
    pub(crate) fn contains(&self, i: usize) -> bool {
        self.mask() & (1 << i) != 0
    }

    /// The bitmask (bit `i` for leg `i`).
    pub(crate) fn mask(&self) -> u32 {
        self.0.load(Ordering::Acquire)
    }

    /// Empties the set; returns the legs it held, lowest first.
    pub(crate) fn take(&self) -> impl Iterator<Item = usize> {
        let mut rest = self.0.swap(0, Ordering::AcqRel);
        core::iter::from_fn(move || {
            let i = (rest != 0).then(|| rest.trailing_zeros() as usize)?;
            rest &= rest - 1;
            Some(i)
        })
    }
}

/// The two sets a mirror's legs are in: in sync (they get writes and
/// serve reads) and resyncing (they get writes only).  One atomic word,
/// bit `i` for leg `i` in sync and bit `16 + i` for it resyncing, so that
/// a leg moves from one set to the other, or leaves both, in one step
/// nobody can see half done, and "take leg `i` out unless it is the last
/// in sync" is one race-free decision.
pub(crate) struct LegSets(AtomicU32);

const RESYNCING: u32 = 16;
const _: () = assert!(crate::proto::genl::MAX_LEGS <= RESYNCING as usize);

/// One of the [`LegSets`], with the operations of a set of legs.
#[derive(Clone, Copy)]
pub(crate) struct SetView<'a> {
    word: &'a AtomicU32,
    shift: u32,
}

impl LegSets {
    /// Legs `0..n` in sync, none resyncing.
    pub(crate) fn new(n: usize) -> Self {
        LegSets(AtomicU32::new(((1u32 << n) - 1) & 0xffff))
    }

    /// The in-sync set.
    pub(crate) fn in_sync(&self) -> SetView<'_> {
        SetView {
            word: &self.0,
            shift: 0,
        }
    }

    /// The resyncing set.
    pub(crate) fn resyncing(&self) -> SetView<'_> {
        SetView {
            word: &self.0,
            shift: RESYNCING,
        }
    }

    /// The legs that get writes (in sync or resyncing), as a bit mask.
    pub(crate) fn writable(&self) -> u32 {
        let w = self.0.load(Ordering::Acquire);
        (w | w >> RESYNCING) & 0xffff
    }

    /// Moves leg `i` from the resyncing set to the in-sync one, if it is
    /// still resyncing; returns whether it was.
    pub(crate) fn promote(&self, i: usize) -> bool {
        let (ins, res) = (1u32 << i, 1u32 << (i as u32 + RESYNCING));
        self.0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
                (w & res != 0).then_some((w & !res) | ins)
            })
            .is_ok()
    }

    /// Takes leg `i` out of both sets, unless it is the last in sync (then
    /// nothing changes, and `Err` says so).  Returns whether it was in
    /// sync and whether it was resyncing.
    pub(crate) fn leave(&self, i: usize) -> Result<(bool, bool), ()> {
        let (ins, res) = (1u32 << i, 1u32 << (i as u32 + RESYNCING));
        let before = self
            .0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
                (w & 0xffff != ins).then_some(w & !(ins | res))
            });
        // Only the last in-sync leg is refused.
        let w = before.map_err(|_| ())?;
        Ok((w & ins != 0, w & res != 0))
    }
}

impl SetView<'_> {
    fn bit(&self, i: usize) -> u32 {
        1 << (i as u32 + self.shift)
    }

    /// The bitmask (bit `i` for leg `i`).
    pub(crate) fn mask(&self) -> u32 {
        (self.word.load(Ordering::Acquire) >> self.shift) & 0xffff
    }

    /// Adds leg `i`; returns whether it was absent.
    pub(crate) fn insert(&self, i: usize) -> bool {
        let bit = self.bit(i);
        self.word.fetch_or(bit, Ordering::AcqRel) & bit == 0
    }

    /// Removes leg `i`; returns whether it was present.
    pub(crate) fn remove(&self, i: usize) -> bool {
        let bit = self.bit(i);
        self.word.fetch_and(!bit, Ordering::AcqRel) & bit != 0
    }

    /// Whether leg `i` is in the set.
    pub(crate) fn contains(&self, i: usize) -> bool {
        self.word.load(Ordering::Acquire) & self.bit(i) != 0
    }

    /// Number of legs in the set.
    pub(crate) fn count(&self) -> u32 {
        self.mask().count_ones()
    }

    /// Takes leg `i` out of the set, unless it is the only one left.
    pub(crate) fn remove_unless_last(&self, i: usize) -> Removal {
        let bit = self.bit(i);
        let mut cur = self.word.load(Ordering::Acquire);
        loop {
            if cur & bit == 0 {
                return Removal::NotMember;
            }
            if (cur >> self.shift) & 0xffff == bit >> self.shift {
                return Removal::Last;
            }
            match self.word.compare_exchange_weak(
                cur,
                cur & !bit,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Removal::Removed,
                Err(now) => cur = now,
            }
        }
    }
}

/// Request counters of a leg.
#[derive(Default)]
pub(crate) struct Stats {
    reads: AtomicU64,
    writes: AtomicU64,
    read_errors: AtomicU64,
    write_errors: AtomicU64,
    /// Requests and resync I/Os in flight; detach waits on it.
    inflight: Gate,
    resynced: AtomicU64,
}

/// A snapshot of [`Stats`].
pub(crate) struct StatsSnapshot {
    pub(crate) reads: u64,
    pub(crate) writes: u64,
    pub(crate) read_errors: u64,
    pub(crate) write_errors: u64,
    pub(crate) inflight: u32,
    pub(crate) resynced: u64,
}

/// Where a leg's data lives.
pub(crate) enum LegDev {
    /// A local block device.
    Local(BlockDev),
    /// An NBD export.
    Remote(Arc<Remote>),
}

impl BioSink for LegDev {
    fn bdev(&self) -> Option<&BlockDev> {
        match self {
            LegDev::Local(b) => Some(b),
            LegDev::Remote(_) => None,
        }
    }

    fn submit(&self, bio: LegBio) {
        match self {
            LegDev::Local(_) => bio.submit_local(),
            LegDev::Remote(r) => r.submit(bio),
        }
    }
}

impl LegDev {
    /// The kernel's name of a local leg; empty for a remote one.
    pub(crate) fn name(&self) -> &str {
        match self {
            LegDev::Local(b) => b.name(),
            LegDev::Remote(_) => "",
        }
    }

    /// Whether the leg does its I/O in the submitter's context.
    pub(crate) fn is_synchronous(&self) -> bool {
        match self {
            LegDev::Local(b) => b.is_synchronous(),
            LegDev::Remote(_) => false,
        }
    }

    /// Whether `other` is the same device or export.
    pub(crate) fn same_as(&self, other: &LegDev) -> bool {
        match (self, other) {
            (LegDev::Local(a), LegDev::Local(b)) => a.devt() == b.devt(),
            (LegDev::Remote(a), LegDev::Remote(b)) => {
                a.config().addr == b.config().addr && a.config().export == b.config().export
            }
            _ => false,
        }
    }

    /// The remote, for a remote leg.
    pub(crate) fn remote(&self) -> Option<&Arc<Remote>> {
        match self {
            LegDev::Local(_) => None,
            LegDev::Remote(r) => Some(r),
        }
    }

    /// The local block device, for a local leg.
    pub(crate) fn local(&self) -> Option<&BlockDev> {
        self.bdev()
    }
}

impl Drop for LegDev {
    fn drop(&mut self) {
        // A remote leg's connection and jobs hold references to it: stop
        // it (a no-op if the device already did).
        if let LegDev::Remote(r) = self {
            r.stop();
        }
    }
}

/// One leg of a device.
pub(crate) struct Leg {
    spec: CString,
    dev: LegDev,
    /// Sectors of the leg that the device uses.
    sectors: u64,
    /// First device sector stored on this leg (linear; 0 for a mirror).
    offset: u64,
    state: AtomicU8,
    stats: Stats,
}

impl Leg {
    /// Opens the block device named by `spec` for `holder`.
    pub(crate) fn open(spec: &CStr, holder: &Holder) -> Result<Self, Refusal> {
        let shown = spec.to_str().unwrap_or("?");
        let dev = match BlockDev::open(spec, holder) {
            Ok(d) => d,
            Err(e) if e == ENOENT => refuse!(e, "leg {}: no such block device", shown),
            Err(e) if e == ENOTBLK => refuse!(e, "leg {}: not a block device", shown),
            Err(e) if e == EBUSY => refuse!(
                e,
                "leg {}: busy (mounted, or held by md, dm, dst...)",
                shown
            ),
            Err(e) if e == EROFS || e == EACCES => refuse!(e, "leg {}: read-only", shown),
            Err(e) if e == ENXIO || e == ENODEV => {
                refuse!(e, "leg {}: no medium or device gone", shown)
            }
            Err(e) => refuse!(e, "leg {}: cannot open (errno {})", shown, e.to_errno()),
        };
        if dev.sectors() == 0 {
            refuse!(EINVAL, "leg {}: device is empty", shown);
        }
        let spec = spec.to_cstring()?;
        let sectors = dev.sectors();
        Ok(Leg {
            spec,
            dev: LegDev::Local(dev),
            sectors,
            offset: 0,
            state: AtomicU8::new(LegState::InSync as u8),
            stats: Stats::default(),
        })
    }

    /// Connects to the NBD export `cfg` describes.  Refusals name the
    /// leg by its position `n` (from 1) as `leg #n`, which dstctl replaces
    /// with the leg as typed: the reason gets the whole 80 bytes netlink
    /// keeps of a message.
    pub(crate) fn remote(spec: &CStr, n: usize, cfg: RemoteConfig) -> Result<Self, Refusal> {
        let remote = Remote::connect(n, cfg)?;
        let sectors = remote.info().size >> 9;
        if sectors == 0 {
            refuse!(EINVAL, "leg #{}: export smaller than a sector", n);
        }
        Ok(Leg {
            spec: spec.to_cstring()?,
            dev: LegDev::Remote(remote),
            sectors,
            offset: 0,
            state: AtomicU8::new(LegState::InSync as u8),
            stats: Stats::default(),
        })
    }

    /// Sets how much of the leg is used and where it sits in the device.
    pub(crate) fn place(&mut self, sectors: u64, offset: u64) {
        self.sectors = sectors;
        self.offset = offset;
    }

    /// The leg as the administrator gave it.
    pub(crate) fn spec(&self) -> &CStr {
        &self.spec
    }

    /// Where the leg's data lives.
    pub(crate) fn dev(&self) -> &LegDev {
        &self.dev
    }

    /// Sectors used by the device.
    pub(crate) fn sectors(&self) -> u64 {
        self.sectors
    }

    /// First device sector on this leg.
    pub(crate) fn offset(&self) -> u64 {
        self.offset
    }

    /// Why the leg is out of sync, when it is (see [`InSync`]).
    pub(crate) fn state(&self) -> LegState {
        LegState::from_u8(self.state.load(Ordering::Acquire)).unwrap_or(LegState::Faulty)
    }

    /// Records why the leg left the in-sync set.
    pub(crate) fn set_state(&self, state: LegState) {
        self.state.store(state as u8, Ordering::Release);
    }

    /// Changes the state from `from` to `to`, unless someone changed it
    /// meanwhile (their change stands).
    pub(crate) fn change_state(&self, from: LegState, to: LegState) {
        let _ =
            self.state
                .compare_exchange(from as u8, to as u8, Ordering::AcqRel, Ordering::Acquire);
    }

    /// Counts a request sent to the leg.
    pub(crate) fn start(&self) {
        self.stats.inflight.enter();
    }

    /// Counts a request the leg ended.
    pub(crate) fn done(&self, op: Op, res: Result) {
        let s = &self.stats;
        s.inflight.leave();
        let (ok, err) = match op {
            Op::Read => (&s.reads, &s.read_errors),
            _ => (&s.writes, &s.write_errors),
        };
        if res.is_ok() { ok } else { err }.fetch_add(1, Ordering::Relaxed);
    }

    /// Ends a request counted by [`Leg::start`] without counting it: one
    /// that was not sent after all, or a resync I/O.
    pub(crate) fn end(&self) {
        self.stats.inflight.leave();
    }

    /// Ends a resync I/O counted by [`Leg::start`]: a failure counts as an
    /// error, a success is not counted (the request counters are those of
    /// the device's users; a resync tells from them whether it is in use).
    pub(crate) fn end_resync(&self, op: Op, res: Result) {
        self.stats.inflight.leave();
        if res.is_err() {
            let err = match op {
                Op::Read => &self.stats.read_errors,
                _ => &self.stats.write_errors,
            };
            err.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Whether the leg was removed from its device (it keeps its slot).
    pub(crate) fn is_removed(&self) -> bool {
        self.state() == LegState::Removed
    }

    /// Counts `bytes` copied to the leg by a resync.
    pub(crate) fn count_resynced(&self, bytes: u32) {
        self.stats
            .resynced
            .fetch_add(bytes.into(), Ordering::Relaxed);
    }

    /// Requests in flight.
    pub(crate) fn inflight(&self) -> u32 {
        self.stats.inflight.count() as u32
    }

    /// Waits, at most `ms` milliseconds and until a fatal signal, for
    /// nothing counted by [`Leg::start`] to be in flight.  I/O that starts
    /// meanwhile must see the leg gone and end at once (see
    /// [`crate::device::Device::enter_leg`]).
    pub(crate) fn wait_idle_for(&self, ms: u32) -> Result {
        self.stats.inflight.wait_idle_for(ms)
    }

    /// The counters.
    pub(crate) fn stats(&self) -> StatsSnapshot {
        let s = &self.stats;
        StatsSnapshot {
            reads: s.reads.load(Ordering::Relaxed),
            writes: s.writes.load(Ordering::Relaxed),
            read_errors: s.read_errors.load(Ordering::Relaxed),
            write_errors: s.write_errors.load(Ordering::Relaxed),
            inflight: s.inflight.count() as u32,
            resynced: s.resynced.load(Ordering::Relaxed),
        }
    }
}
