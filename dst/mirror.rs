// SPDX-License-Identifier: GPL-2.0

//! Mirror (RAID1): every leg holds the whole device.
//!
//! Writes, discards and write-zeroes go to every leg that is in sync or
//! being resynced, and complete when all have; they succeed if at least one
//! in-sync leg succeeded.  A leg that fails a write is marked faulty (the
//! device goes on, degraded), except the last in-sync one; a remote leg
//! whose connection drops is `down` and comes back through a resync.  Legs
//! that miss a write have its regions marked dirty.  Reads go to one
//! in-sync leg, chosen by load, and are retried on the other legs if it
//! fails.  Flushes reach every leg that gets writes.  Large writes to legs
//! that work in the submitter's context (RAM disks) are sent from more than
//! one CPU, in parallel.
//!
//! Every write registers in the resync barrier while in flight, so that
//! the resync never copies a region under a write (see [`crate::resync`]).

use core::num::NonZeroU64;

use kernel::prelude::*;
use kernel::sync::{Arc, ArcBorrow};

use crate::bio::{Bio, Op};
use crate::device::{Device, LegUse};
use crate::errno;
use crate::io::{Decision, Io, Outcome, Route};
use crate::leg::Leg;
use crate::resync::{Barrier, Entry};

/// Writes at least this large go to synchronous legs in parallel.
const PARALLEL_BYTES: u32 = 64 * 1024;

/// Sizes the legs: each uses as much as the smallest, in whole blocks of
/// `unit` sectors.  Returns the device's capacity in sectors.
pub(crate) fn layout(legs: &mut [Leg], unit: NonZeroU64) -> u64 {
    let smallest = legs.iter().map(Leg::sectors).min().unwrap_or(0);
    let size = smallest - smallest % unit;
    for leg in legs.iter_mut() {
        leg.place(size, 0);
    }
    size
}

/// The barrier buckets a write covers (none for an empty flush).
fn buckets(dev: &Device, sector: u64, bytes: u32) -> u64 {
    if bytes == 0 || dev.dirty_map(0).is_none() {
        return 0;
    }
    Barrier::buckets(sector, u64::from(bytes))
}

/// What [`send`] did.
enum Sent {
    /// The clone is on its way.
    Yes,
    /// The leg left the set the I/O was meant for (it was detached, or
    /// went down) before the clone went: nothing was sent.
    Skipped,
    /// The clone could not be made; the leg was failed.
    Failed,
}

/// Sends `io` to leg `i`, from here or (`later`) from the workqueue; a leg
/// that cannot get it is failed.
fn send(
    io: &mut Io<'_, Device>,
    dev: ArcBorrow<'_, Device>,
    i: usize,
    sector: u64,
    later: bool,
) -> Sent {
    let op = io.parent().op();
    let what = if op == Op::Read {
        LegUse::Read
    } else {
        LegUse::Write
    };
    if !dev.enter_leg(i, what) {
        return Sent::Skipped;
    }
    let leg = &dev.legs()[i];
    let sent = if later {
        io.clone_to_later(i as u32, leg.dev(), sector)
    } else {
        io.clone_to(i as u32, leg.dev(), sector)
    };
    match sent {
        Ok(()) => Sent::Yes,
        Err(e) => {
            leg.done(op, Err(e));
            Device::fail_leg(dev, i, e);
            Sent::Failed
        }
    }
}

/// Maps a bio.
pub(crate) fn submit(dev: ArcBorrow<'_, Device>, bio: Bio) {
    let op = bio.op();
    let sector = bio.sector();
    let bytes = bio.bytes();
    let write = matches!(op, Op::Write | Op::Discard | Op::WriteZeroes);
    let mask = if write {
        buckets(&dev, sector, bytes)
    } else {
        0
    };
    if mask != 0 {
        if let Entry::Closed { wake } = dev.barrier().enter(mask) {
            Device::park(dev, bio, mask, wake);
            return;
        }
    }
    let mut io = Io::new(dev, bio);
    match op {
        Op::Other => io.fail(errno::eopnotsupp()),
        Op::Read => {
            let mut tried = 0;
            loop {
                let Some(i) = dev.pick_read_leg(tried) else {
                    io.fail(EIO);
                    break;
                };
                match send(&mut io, dev, i, sector, false) {
                    Sent::Yes => break,
                    Sent::Skipped => tried |= 1 << i,
                    Sent::Failed => {
                        io.fail(EIO);
                        break;
                    }
                }
            }
        }
        Op::Write | Op::Discard | Op::WriteZeroes => {
            // Only a leg in sync before the write went out can make it
            // good: a resyncing leg that takes it and then ends its resync
            // does not make up for the last in-sync leg failing it.
            io.set_voters(dev.in_sync_mask());
            // A leg that does its I/O in the submitter's context (a RAM
            // disk, zram, pmem) costs that context the whole copy.  So a
            // large write to such legs is handed to the workqueue's lanes,
            // which copy to the legs in parallel on other CPUs while the
            // submitter goes on.  Everything else is sent from here: it
            // costs little, and a context switch would only add latency.
            let large = op == Op::Write && bytes >= PARALLEL_BYTES;
            let mut sent = 0;
            for i in 0..dev.legs().len() {
                let later = large && dev.legs()[i].dev().is_synchronous();
                match send(&mut io, dev, i, sector, later) {
                    Sent::Yes => sent += 1,
                    // The leg misses this write: it may be attached again
                    // and resynced from its map.
                    Sent::Skipped => {
                        dev.mark_dirty(i, sector, bytes);
                        // It may have joined since `send` looked, and its
                        // resync may have found its map clean: look again,
                        // after the mark.  The fence in `enter_leg` pairs
                        // with the one in `Device::resync_leg`: either this
                        // sees the leg writable and sends it the write, or
                        // its resync sees the mark.
                        if let Sent::Yes = send(&mut io, dev, i, sector, false) {
                            sent += 1;
                        }
                    }
                    // A failed leg, likewise.
                    Sent::Failed => dev.mark_dirty(i, sector, bytes),
                }
            }
            if sent == 0 {
                // Nothing in flight will leave the barrier for us.
                if mask != 0 && !io.started() && dev.barrier().exit(mask) {
                    Arc::from(dev).kick_resync();
                }
                io.fail(EIO);
            }
        }
    }
    io.finish();
}

/// A clone to leg `i` failed.
pub(crate) fn clone_failed(
    dev: ArcBorrow<'_, Device>,
    i: usize,
    op: Op,
    sector: u64,
    bytes: u32,
    e: Error,
) {
    match op {
        Op::Write | Op::WriteZeroes | Op::Discard => {
            // The leg may now differ from the others there.
            dev.mark_dirty(i, sector, bytes);
            // A remote leg whose connection is down fails its I/O with
            // `leg_away`: the remote reports the outage itself (perhaps a
            // moment after this), and the leg comes back through a resync.
            // A discard is advisory (the data it covers is undefined
            // anyway): it does not count.
            if e != errno::leg_away() && op != Op::Discard {
                Device::fail_leg(dev, i, e);
            }
        }
        // A read error is retried elsewhere, and the leg's copy rewritten
        // from the others.
        Op::Read => Device::repair(dev, i, sector, bytes, e),
        Op::Other => {}
    }
}

/// All clones of an I/O ended.
pub(crate) fn io_done(dev: ArcBorrow<'_, Device>, o: &Outcome) -> Decision {
    if matches!(o.op, Op::Write | Op::Discard | Op::WriteZeroes) {
        let mask = buckets(&dev, o.sector, o.bytes);
        if mask != 0 && dev.barrier().exit(mask) {
            Arc::from(dev).kick_resync();
        }
        // Only a copy on a leg in sync from before the write went out
        // until now makes it good (`o.ok` holds only the former).
        if o.ok & dev.in_sync_mask() != 0 {
            return Decision::Complete(Ok(()));
        }
        return Decision::Complete(Err(user_error(o.error)));
    }
    if o.ok != 0 {
        return Decision::Complete(Ok(()));
    }
    if o.op == Op::Read && dev.pick_read_leg(o.tried).is_some() {
        return Decision::Retry;
    }
    Decision::Complete(Err(user_error(o.error)))
}

/// The error an I/O that no leg served ends with: a leg that was away
/// counts as an I/O error.
fn user_error(e: Option<Error>) -> Error {
    match e {
        Some(e) if e != errno::leg_away() => e,
        _ => EIO,
    }
}

/// Picks another leg for a failed read.
pub(crate) fn retry<'a>(dev: &'a Device, o: &Outcome) -> Option<Route<'a>> {
    let mut tried = o.tried;
    loop {
        let i = dev.pick_read_leg(tried)?;
        if dev.enter_leg(i, LegUse::Read) {
            return Some(Route {
                leg: i as u32,
                sink: dev.legs()[i].dev(),
                sector: o.sector,
            });
        }
        tried |= 1 << i;
    }
}
