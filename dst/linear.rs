// SPDX-License-Identifier: GPL-2.0

//! Linear: the legs concatenated, in order.
//!
//! A bio that crosses from one leg to the next is split at the boundary
//! (the rest comes back through `submit_bio`).  A flush goes to every leg;
//! a write that asks for a flush first (`REQ_PREFLUSH`) flushes every leg,
//! and its data goes out once all of those flushes have succeeded, as md
//! and dm do.  An error on any part fails the bio: there is no redundancy.

use core::num::NonZeroU64;

use kernel::prelude::*;
use kernel::sync::ArcBorrow;

use crate::bio::{Bio, Op};
use crate::device::Device;
use crate::errno;
use crate::io::{Decision, Io, Outcome};
use crate::leg::Leg;

/// Places the legs one after the other, each cut to whole blocks of `unit`
/// sectors.  Returns the device's capacity in sectors.
pub(crate) fn layout(legs: &mut [Leg], unit: NonZeroU64) -> u64 {
    let mut offset = 0;
    for leg in legs.iter_mut() {
        let size = leg.sectors() - leg.sectors() % unit;
        leg.place(size, offset);
        offset += size;
    }
    offset
}

/// Sends an empty flush to every leg.
fn flush_all(io: &mut Io<'_, Device>, dev: &Device) {
    for (i, leg) in dev.legs().iter().enumerate() {
        leg.start();
        if let Err(e) = io.flush_to(i as u32, leg.dev()) {
            leg.done(Op::Write, Err(e));
            io.fail(e);
        }
    }
}

/// Maps a bio.
pub(crate) fn submit(dev: ArcBorrow<'_, Device>, bio: Bio) {
    if bio.op() == Op::Other {
        bio.end(Err(errno::eopnotsupp()));
        return;
    }
    if bio.is_flush_only() {
        let mut io = Io::new(dev, bio);
        flush_all(&mut io, &dev);
        io.finish();
        return;
    }
    let sector = bio.sector();
    let Some(i) = dev
        .legs()
        .iter()
        .position(|l| sector >= l.offset() && sector - l.offset() < l.sectors())
    else {
        bio.end(Err(EIO));
        return;
    };
    let leg = &dev.legs()[i];
    let room = leg.offset() + leg.sectors() - sector;
    let bio = if u64::from(bio.sectors()) > room {
        // `room` < the bio's length, which fits in u32.
        match bio.split_front(room as u32, dev.splitset()) {
            Some(front) => front,
            None => return,
        }
    } else {
        bio
    };
    let preflush = bio.is_preflush() && dev.legs().len() > 1;
    let op = bio.op();
    let mut io = Io::new(dev, bio);
    leg.start();
    let sent = if preflush {
        // Writes completed before this one may be on any leg: every leg's
        // cache is flushed before the data goes out (a local leg flushes
        // its own, the clone keeps the flag), and a failed flush fails it
        // unsent.
        io.hold_clone(i as u32, leg.dev(), sector - leg.offset(), true)
    } else {
        io.clone_to(i as u32, leg.dev(), sector - leg.offset())
    };
    match sent {
        Err(e) => {
            leg.done(op, Err(e));
            io.fail(e);
        }
        Ok(()) if preflush => {
            for (j, other) in dev.legs().iter().enumerate() {
                if j != i || other.dev().local().is_none() {
                    io.preflush_to(j as u32, other.dev());
                }
            }
        }
        Ok(()) => {}
    }
    io.finish();
}

/// All clones of an I/O ended: any failure fails it.
pub(crate) fn io_done(o: &Outcome) -> Decision {
    match o.error {
        Some(e) => Decision::Complete(Err(e)),
        None => Decision::Complete(Ok(())),
    }
}
