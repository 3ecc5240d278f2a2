// SPDX-License-Identifier: GPL-2.0

//! Mirror (RAID1): every leg holds the whole device.
//!
//! Writes, discards and write-zeroes go to every in-sync leg and complete
//! when all have; they succeed if at least one leg succeeded, and a leg
//! that fails a write is marked faulty (the device goes on, degraded).
//! Reads go to one in-sync leg, chosen by load, and are retried on the
//! other legs if it fails.  Flushes reach every in-sync leg.  Large writes
//! to legs that work in the submitter's context (RAM disks) are sent from
//! more than one CPU, in parallel.

use core::num::NonZeroU64;

use kernel::prelude::*;
use kernel::sync::ArcBorrow;

use crate::errno;
use crate::bio::{Bio, Op};
use crate::device::Device;
use crate::io::{Decision, Io, Outcome, Route};
use crate::leg::Leg;

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

/// Writes at least this large go to synchronous legs in parallel.
const PARALLEL_BYTES: u32 = 64 * 1024;

/// Sends `io` to leg `i`, from here or (`later`) from the workqueue; a leg
/// that cannot get it is failed.
fn send(io: &mut Io<'_, Device>, dev: &Device, i: usize, sector: u64, later: bool) -> bool {
    let leg = &dev.legs()[i];
    leg.start();
    let sent = if later {
        io.clone_to_later(i as u32, leg.dev(), sector)
    } else {
        io.clone_to(i as u32, leg.dev(), sector)
    };
    match sent {
        Ok(()) => true,
        Err(e) => {
            leg.done(io.parent().op(), Err(e));
            dev.fail_leg(i, e);
            false
        }
    }
}

/// Maps a bio.
pub(crate) fn submit(dev: ArcBorrow<'_, Device>, bio: Bio) {
    let op = bio.op();
    let sector = bio.sector();
    let mut io = Io::new(dev, bio);
    match op {
        Op::Other => io.fail(errno::eopnotsupp()),
        Op::Read => match dev.pick_read_leg(0) {
            Some(i) => {
                if !send(&mut io, &dev, i, sector, false) {
                    io.fail(EIO);
                }
            }
            None => io.fail(EIO),
        },
        Op::Write | Op::Discard | Op::WriteZeroes => {
            // A leg that does its I/O in the submitter's context (a RAM
            // disk, zram, pmem) costs that context the whole copy.  So a
            // large write to such legs is handed to the workqueue's lanes,
            // which copy to the legs in parallel on other CPUs while the
            // submitter goes on.  Everything else is sent from here: it
            // costs little, and a context switch would only add latency.
            let large = op == Op::Write && io.parent().bytes() >= PARALLEL_BYTES;
            let mut sent = 0;
            for i in 0..dev.legs().len() {
                let later = large && dev.legs()[i].dev().is_synchronous();
                if dev.leg_in_sync(i) && send(&mut io, &dev, i, sector, later) {
                    sent += 1;
                }
            }
            if sent == 0 {
                io.fail(EIO);
            }
        }
    }
    io.finish();
}

/// A clone to leg `i` failed.
pub(crate) fn clone_failed(dev: &Device, i: usize, op: Op, e: Error) {
    match op {
        // The leg may now differ from the others.  A discard is advisory
        // (the data it covers is undefined anyway), so it does not count.
        Op::Write | Op::WriteZeroes => dev.fail_leg(i, e),
        // A read error is retried elsewhere and leaves the leg in use.
        Op::Read | Op::Discard | Op::Other => {}
    }
}

/// All clones of an I/O ended.
pub(crate) fn io_done(dev: &Device, o: &Outcome) -> Decision {
    if o.ok != 0 {
        return Decision::Complete(Ok(()));
    }
    if o.op == Op::Read && dev.pick_read_leg(o.tried).is_some() {
        return Decision::Retry;
    }
    Decision::Complete(Err(o.error.unwrap_or(EIO)))
}

/// Picks another leg for a failed read.
pub(crate) fn retry<'a>(dev: &'a Device, o: &Outcome) -> Option<Route<'a>> {
    let i = dev.pick_read_leg(o.tried)?;
    let leg = &dev.legs()[i];
    leg.start();
    Some(Route {
        leg: i as u32,
        dev: leg.dev(),
        sector: o.sector,
    })
}
