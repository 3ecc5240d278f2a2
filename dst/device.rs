// SPDX-License-Identifier: GPL-2.0

//! A dst device: `/dev/dstN`, its legs, and the glue between the disk, the
//! I/O engine and the target (mirror or linear) that maps its I/O.

use core::num::NonZeroU64;
use core::sync::atomic::{AtomicU32, Ordering};

use kernel::prelude::*;
use kernel::str::CStr;
use kernel::sync::{Arc, ArcBorrow, Mutex};
use kernel::workqueue::{impl_has_work, new_work, Work, WorkItem};
use kernel::{new_mutex, pr_err, pr_info};

use crate::errno;
use crate::bdev::Holder;
use crate::bio::{Bio, BioSet, Op};
use crate::disk::{Disk, DiskOps, Limits};
use crate::io::{BioList, Decision, DeferList, Gate, IoOwner, IoSet, Outcome, Route};
use crate::leg::{InSync, Leg, Removal};
use crate::msg::{refuse, Refusal};
use crate::proto::genl::{DevState, LegState, Target, MAX_LEGS};
use crate::{linear, mirror, wq};

/// Who has the device open, and whether it is going away.
#[derive(Default)]
struct Openers {
    count: u32,
    removing: bool,
}

/// A device name (at most [`crate::proto::genl::NAME_MAX`] bytes).
pub(crate) struct Name {
    buf: [u8; 32],
    len: usize,
}

impl Name {
    fn new(s: &str) -> Result<Self> {
        let mut buf = [0u8; 32];
        buf.get_mut(..s.len()).ok_or(EINVAL)?.copy_from_slice(s.as_bytes());
        Ok(Name { buf, len: s.len() })
    }

    /// The name.
    pub(crate) fn as_str(&self) -> &str {
        core::str::from_utf8(&self.buf[..self.len]).unwrap_or("?")
    }
}

/// A dst device.
#[pin_data]
pub(crate) struct Device {
    name: Name,
    index: u32,
    target: Target,
    sectors: u64,
    block_size: u32,
    /// The legs, in the order given.  Dropped before `holder`.
    legs: KVec<Leg>,
    /// Which legs are in sync.
    in_sync: InSync,
    holder: Holder,
    disk: Disk,
    gate: Gate,
    defer: DeferList,
    /// Clones waiting for a lane (leg `i` uses lane `i % 2`).
    lanes: [BioList; 2],
    /// Where read balancing starts looking.
    rotor: AtomicU32,
    #[pin]
    ioset: BioSet,
    #[pin]
    splitset: BioSet,
    #[pin]
    openers: Mutex<Openers>,
    /// Retries deferred I/O.
    #[pin]
    work: Work<Device>,
    /// Submit the clones in `lanes`, two workers at once.
    #[pin]
    lane0_work: Work<Device, LANE0_WORK>,
    #[pin]
    lane1_work: Work<Device, LANE1_WORK>,
}

/// Work item id of [`Device::work`].
const RETRY_WORK: u64 = 0;
/// Work item ids of [`Device::lane0_work`] and [`Device::lane1_work`].
const LANE0_WORK: u64 = 1;
const LANE1_WORK: u64 = 2;

impl_has_work! {
    impl HasWork<Self, RETRY_WORK> for Device { self.work }
    impl HasWork<Self, LANE0_WORK> for Device { self.lane0_work }
    impl HasWork<Self, LANE1_WORK> for Device { self.lane1_work }
}

impl WorkItem<RETRY_WORK> for Device {
    type Pointer = Arc<Device>;

    fn run(this: Arc<Device>) {
        this.defer.run(&*this);
    }
}

impl WorkItem<LANE0_WORK> for Device {
    type Pointer = Arc<Device>;

    fn run(this: Arc<Device>) {
        this.lanes[0].submit_all();
    }
}

impl WorkItem<LANE1_WORK> for Device {
    type Pointer = Arc<Device>;

    fn run(this: Arc<Device>) {
        this.lanes[1].submit_all();
    }
}

impl Device {
    /// Builds device `dstN` (N = `index`) named `name` from the legs in
    /// `specs`, and makes it visible.
    pub(crate) fn create(
        name: &str,
        index: u32,
        target: Target,
        specs: &[&CStr],
    ) -> Result<Arc<Device>, Refusal> {
        if specs.is_empty() {
            refuse!(EINVAL, "a device needs at least one leg");
        }
        if specs.len() > MAX_LEGS {
            refuse!(EINVAL, "too many legs (at most {})", MAX_LEGS);
        }
        let holder = Holder::new()?;
        let mut legs = KVec::with_capacity(specs.len(), GFP_KERNEL)?;
        for spec in specs {
            let leg = Leg::open(spec, &holder)?;
            if let Some(other) = legs.iter().find(|l: &&Leg| l.dev().devt() == leg.dev().devt()) {
                refuse!(
                    EINVAL,
                    "leg {} given twice (same device as {})",
                    leg.spec().to_str().unwrap_or("?"),
                    other.spec().to_str().unwrap_or("?")
                );
            }
            legs.push(leg, GFP_KERNEL)?;
        }

        // The largest logical block size among the legs rules the layout.
        let mut probe = Limits::stacking();
        for leg in legs.iter() {
            probe.stack(leg.dev(), 0);
        }
        let block_size = probe.logical_block_size();
        let unit = NonZeroU64::new(u64::from(block_size >> 9)).unwrap_or(NonZeroU64::MIN);
        let sectors = match target {
            Target::Mirror => mirror::layout(&mut legs, unit),
            Target::Linear => linear::layout(&mut legs, unit),
        };
        if sectors == 0 {
            refuse!(EINVAL, "legs too small for one {}-byte block", block_size);
        }
        let mut lim = Limits::stacking();
        for leg in legs.iter() {
            lim.stack(leg.dev(), leg.offset());
        }

        let disk = match Disk::new(&mut lim, format_args!("dst{}", index), sectors) {
            Ok(d) => d,
            Err(e) if e == errno::eopnotsupp() => refuse!(e, "zoned legs are not supported"),
            Err(e) => return Err(e.into()),
        };
        let dev = Arc::pin_init(
            try_pin_init!(Device {
                name: Name::new(name)?,
                index,
                target,
                sectors,
                block_size,
                in_sync: InSync::all(specs.len()),
                legs,
                holder,
                disk,
                gate: Gate::new(),
                defer: DeferList::new(),
                lanes: [BioList::new(), BioList::new()],
                rotor: AtomicU32::new(0),
                ioset <- BioSet::new(IoSet::FRONT_PAD),
                splitset <- BioSet::new(0),
                openers <- new_mutex!(Openers::default(), "Device::openers"),
                work <- new_work!("Device::work"),
                lane0_work <- new_work!("Device::lane0_work"),
                lane1_work <- new_work!("Device::lane1_work"),
            }? Error),
            GFP_KERNEL,
        )?;
        dev.disk.add(dev.clone())?;
        for leg in dev.legs.iter() {
            if let Err(e) = dev.disk.link_holder(leg.dev()) {
                pr_err!(
                    "{}: cannot link holder for {}: {:?}\n",
                    dev.name.as_str(),
                    leg.dev().name(),
                    e
                );
            }
        }
        pr_info!(
            "{}: created dst{} ({}, {} legs, {} sectors)\n",
            dev.name.as_str(),
            index,
            target.as_str(),
            dev.legs.len(),
            sectors
        );
        Ok(dev)
    }

    /// Refuses removal while the device is open; otherwise refuses every
    /// later open.
    pub(crate) fn begin_remove(&self) -> Result<(), Refusal> {
        let mut o = self.openers.lock();
        if o.count > 0 {
            refuse!(
                EBUSY,
                "device {} is open ({} openers: mounted or in use)",
                self.name.as_str(),
                o.count
            );
        }
        o.removing = true;
        Ok(())
    }

    /// Removes the disk, waits for the I/O in flight, and drops the disk's
    /// reference.  The legs are closed when the last reference goes.
    pub(crate) fn teardown(&self) {
        for leg in self.legs.iter() {
            self.disk.unlink_holder(leg.dev());
        }
        let disk_ref = self.disk.del();
        self.gate.wait_idle();
        drop(disk_ref);
        pr_info!("{}: removed dst{}\n", self.name.as_str(), self.index);
    }

    /// The name.
    pub(crate) fn name(&self) -> &str {
        self.name.as_str()
    }

    /// N of `/dev/dstN`.
    pub(crate) fn index(&self) -> u32 {
        self.index
    }

    /// The target type.
    pub(crate) fn target(&self) -> Target {
        self.target
    }

    /// Capacity in sectors.
    pub(crate) fn sectors(&self) -> u64 {
        self.sectors
    }

    /// Logical block size in bytes.
    pub(crate) fn block_size(&self) -> u32 {
        self.block_size
    }

    /// The legs.
    pub(crate) fn legs(&self) -> &[Leg] {
        &self.legs
    }

    /// Number of openers.
    pub(crate) fn openers(&self) -> u32 {
        self.openers.lock().count
    }

    /// I/Os in flight.
    #[allow(dead_code)]
    pub(crate) fn in_flight(&self) -> usize {
        self.gate.in_flight()
    }

    /// The state of the device as a whole.
    pub(crate) fn state(&self) -> DevState {
        match self.in_sync.count() {
            0 => DevState::Failed,
            n if n as usize == self.legs.len() => DevState::Ok,
            _ => DevState::Degraded,
        }
    }

    /// Whether leg `i` is in sync.
    pub(crate) fn leg_in_sync(&self, i: usize) -> bool {
        self.in_sync.contains(i)
    }

    /// The state of leg `i`.
    pub(crate) fn leg_state(&self, i: usize) -> LegState {
        if self.in_sync.contains(i) {
            LegState::InSync
        } else {
            self.legs.get(i).map_or(LegState::Faulty, Leg::state)
        }
    }

    /// The bio set used to split bios.
    pub(crate) fn splitset(&self) -> &BioSet {
        &self.splitset
    }

    /// Takes leg `i` out of service after a failed write, unless it is the
    /// last in-sync leg: then the leg stays (as md does), the write fails,
    /// and the data remains readable.
    pub(crate) fn fail_leg(&self, i: usize, e: Error) {
        let Some(leg) = self.legs.get(i) else { return };
        let spec = leg.spec().to_str().unwrap_or("?");
        match self.in_sync.remove_unless_last(i) {
            Removal::Removed => {
                leg.set_state(LegState::Faulty);
                pr_err!(
                    "{}: leg {} ({}) failed a write (errno {}), now faulty; {} of {} legs in sync\n",
                    self.name.as_str(),
                    spec,
                    leg.dev().name(),
                    e.to_errno(),
                    self.in_sync.count(),
                    self.legs.len()
                );
            }
            Removal::Last => pr_err!(
                "{}: leg {} ({}), the last in sync, failed a write (errno {})\n",
                self.name.as_str(),
                spec,
                leg.dev().name(),
                e.to_errno()
            ),
            Removal::NotMember => {}
        }
    }

    /// Picks an in-sync leg to read from, not in the `tried` mask: the one
    /// with the fewest requests in flight, starting the scan at a rotating
    /// position so equal legs share the load.
    pub(crate) fn pick_read_leg(&self, tried: u32) -> Option<usize> {
        let n = self.legs.len();
        // Only a hint: a lost update between CPUs costs nothing.
        let start = self.rotor.load(Ordering::Relaxed) as usize;
        self.rotor.store(start.wrapping_add(1) as u32, Ordering::Relaxed);
        let mut best: Option<(usize, u32)> = None;
        for k in 0..n {
            let i = (start + k) % n;
            let leg = &self.legs[i];
            if tried & (1 << i) != 0 || !self.in_sync.contains(i) {
                continue;
            }
            let load = leg.inflight();
            if best.map_or(true, |(_, b)| load < b) {
                best = Some((i, load));
            }
        }
        best.map(|(i, _)| i)
    }
}

impl DiskOps for Device {
    fn submit_bio(this: ArcBorrow<'_, Self>, bio: Bio) {
        match this.target {
            Target::Mirror => mirror::submit(this, bio),
            Target::Linear => linear::submit(this, bio),
        }
    }

    fn open(&self) -> Result {
        let mut o = self.openers.lock();
        if o.removing {
            return Err(ENXIO);
        }
        o.count += 1;
        Ok(())
    }

    fn release(&self) {
        let mut o = self.openers.lock();
        o.count = o.count.saturating_sub(1);
    }
}

impl IoOwner for Device {
    fn gate(&self) -> &Gate {
        &self.gate
    }

    fn ioset(&self) -> &BioSet {
        &self.ioset
    }

    fn defer_list(&self) -> &DeferList {
        &self.defer
    }

    fn clone_done(&self, leg: u32, op: Op, res: Result) {
        let i = leg as usize;
        if let Some(l) = self.legs.get(i) {
            l.done(op, res);
        }
        if let (Err(e), Target::Mirror) = (res, self.target) {
            mirror::clone_failed(self, i, op, e);
        }
    }

    fn io_done(&self, outcome: &Outcome) -> Decision {
        match self.target {
            Target::Mirror => mirror::io_done(self, outcome),
            Target::Linear => linear::io_done(outcome),
        }
    }

    fn retry(&self, outcome: &Outcome) -> Option<Route<'_>> {
        match self.target {
            Target::Mirror => mirror::retry(self, outcome),
            Target::Linear => None,
        }
    }

    fn kick_deferred(this: ArcBorrow<'_, Self>) {
        // Already queued: the queued run takes this I/O too.
        let _ = wq::queue().enqueue::<Arc<Device>, RETRY_WORK>(Arc::from(this));
    }

    fn later_list(&self, leg: u32) -> &BioList {
        &self.lanes[leg as usize % 2]
    }

    fn kick_later(this: ArcBorrow<'_, Self>, leg: u32) {
        // Already queued: the queued run takes this clone too.
        let _ = if leg % 2 == 0 {
            wq::queue().enqueue::<Arc<Device>, LANE0_WORK>(Arc::from(this))
        } else {
            wq::queue().enqueue::<Arc<Device>, LANE1_WORK>(Arc::from(this))
        };
    }
}
