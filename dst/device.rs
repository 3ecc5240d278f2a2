// SPDX-License-Identifier: GPL-2.0

//! A dst device: `/dev/dstN`, its legs, and the glue between the disk, the
//! I/O engine, the target (mirror or linear) that maps its I/O, remote legs
//! coming and going, the resync, and state-change events.

use core::num::NonZeroU64;
use core::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU64, Ordering};

use kernel::prelude::*;
use kernel::str::CStr;
use kernel::sync::lock::{mutex::MutexBackend, Guard};
use kernel::sync::{Arc, ArcBorrow, Mutex};
use kernel::workqueue::{impl_has_work, new_work, Work, WorkItem};
use kernel::{new_mutex, pr_err, pr_info};

use crate::append::AppendVec;
use crate::bdev::Holder;
use crate::bio::{Bio, BioSet, BioStack, LegBioStack, Op};
use crate::bitmap::DirtyMap;
use crate::disk::{Disk, DiskOps, Limits, Offer};
use crate::errno;
use crate::glue::now_ms;
use crate::io::{BioSink, Decision, DeferList, Gate, IoOwner, IoResult, IoSet, Outcome, Route};
use crate::job::{impl_has_job, Job, JobRun};
use crate::leg::{Leg, LegDev, LegSet, LegSets, Removal};
use crate::msg::{refuse, Refusal};
use crate::proto::genl::{resync as limits, DevState, Event, LegState, Target, MAX_LEGS};
use crate::remote::{Link, Policy, RemoteConfig};
use crate::resync::{self, Barrier, ResyncState};
use crate::{io, linear, mirror, netlink, wq};

/// What an I/O wants of a leg (see [`Device::enter_leg`]).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum LegUse {
    /// A read: the leg is in sync.
    Read,
    /// A write: the leg is in sync or being resynced.
    Write,
    /// A resync read: the leg is in sync and reachable.
    ResyncSource,
    /// A resync write: the leg is being resynced.
    ResyncTarget,
}

/// Longest a detach waits for the I/O in flight to its leg.
const DETACH_WAIT_MS: u32 = 60_000;

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
        buf.get_mut(..s.len())
            .ok_or(EINVAL)?
            .copy_from_slice(s.as_bytes());
        Ok(Name { buf, len: s.len() })
    }

    /// The name.
    pub(crate) fn as_str(&self) -> &str {
        core::str::from_utf8(self.buf.get(..self.len).unwrap_or(&[])).unwrap_or("?")
    }
}

/// A leg as the administrator asked for it.
pub(crate) struct LegSpec<'a> {
    /// As given (a path, or an `nbd://` URI).
    pub(crate) spec: &'a CStr,
    /// For a remote leg: where, and its timing.
    pub(crate) remote: Option<RemoteConfig>,
    /// Mirror: the leg serves reads only when no other can (see
    /// [`Device::pick_read_leg`]).
    pub(crate) write_mostly: bool,
}

/// A mirror's resync settings (see [`crate::resync`]).
#[derive(Clone, Copy)]
pub(crate) struct Settings {
    /// Bytes per dirty-map bit: a power of two, checked by the caller.
    pub(crate) region_bytes: u32,
    /// Resync speed limits in KiB/s (0: none): while the device has other
    /// I/O, and always.
    pub(crate) resync_rate_kib: u32,
    pub(crate) resync_max_kib: u32,
    /// Mirror: the legs after the first are copied from it in the
    /// background (md's initial resync), not assumed identical.
    pub(crate) sync: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            region_bytes: limits::REGION_DEFAULT,
            resync_rate_kib: limits::RATE_DEFAULT_KIB,
            resync_max_kib: 0,
            sync: false,
        }
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
    /// The legs, in the order given, then those added; a removed leg
    /// stays (state `Removed`, its device released) so that indexes hold.
    /// Dropped before `holder`.
    legs: AppendVec<Leg, MAX_LEGS>,
    /// Legs in sync (they get every write and serve reads), and legs
    /// being resynced (they get every write, serve no reads).
    sets: LegSets,
    /// In-sync legs that failed a read: the regions are marked dirty, and
    /// the repair job resyncs them (see [`Device::repair`]).
    to_repair: LegSet,
    /// Remote legs that are connected again: the rejoin job resyncs them
    /// (see [`Device::rejoin_legs`]).
    to_rejoin: LegSet,
    /// Mirror: legs that get writes but serve reads only when no other
    /// in-sync leg can (md's write-mostly).
    write_mostly: LegSet,
    /// When each leg's last repair began.
    #[pin]
    repairs: Mutex<Repairs>,
    /// Mirror: per leg, the regions that may differ from the device.
    dirty: AppendVec<DirtyMap, MAX_LEGS>,
    /// What the device offers its users (a leg added must allow it).
    offer: Offer,
    holder: Holder,
    disk: Disk,
    gate: Gate,
    defer: DeferList,
    /// Clones waiting for a lane (leg `i` uses lane `i % 2`).
    lanes: [LegBioStack; 2],
    /// Where read balancing starts looking.
    rotor: AtomicU32,
    barrier: Barrier,
    /// Writes waiting for the resync barrier.
    parked: BioStack,
    /// Where the resync's I/O leaves its result, one per chunk slot.
    resync_results: [IoResult; resync::DEPTH],
    stopping: AtomicBool,
    last_progress_ms: AtomicU64,
    /// Mirror: resync speed limits, see [`Settings`].
    resync_rate_kib: AtomicU32,
    resync_max_kib: AtomicU32,
    #[pin]
    resync: Mutex<ResyncState>,
    /// The first bio of each I/O, which holds its state (see `io.rs`).
    #[pin]
    ioset: BioSet,
    /// Every other bio of an I/O: its further clones, flushes and retries.
    #[pin]
    moreset: BioSet,
    #[pin]
    splitset: BioSet,
    #[pin]
    openers: Mutex<Openers>,
    /// Serialises detach, attach and teardown.
    #[pin]
    admin: Mutex<()>,
    /// Sends deferred I/O (read retries, held clones) and resubmits parked
    /// writes, on the defer queue.
    #[pin]
    work: Work<Device, RETRY_WORK>,
    /// Submit the clones in `lanes`, two workers at once.
    #[pin]
    lane0_work: Work<Device, LANE0_WORK>,
    #[pin]
    lane1_work: Work<Device, LANE1_WORK>,
    #[pin]
    resync_job: Job<Device, RESYNC_JOB>,
    #[pin]
    event_job: Job<Device, EVENT_JOB>,
    #[pin]
    repair_job: Job<Device, REPAIR_JOB>,
    #[pin]
    rejoin_job: Job<Device, REJOIN_JOB>,
}

/// The repair job's memory.
struct Repairs {
    /// Per leg, when its last repair began (ms; 0: never).
    last_ms: [u64; MAX_LEGS],
}

/// A leg is repaired at most once in this many milliseconds: a leg that
/// fails every read but takes writes would otherwise go round and round.
const REPAIR_PAUSE_MS: u64 = 10_000;

/// Work item ids.
const RETRY_WORK: u64 = 0;
const LANE0_WORK: u64 = 1;
const LANE1_WORK: u64 = 2;
/// Job ids.
const RESYNC_JOB: u64 = 0;
const EVENT_JOB: u64 = 1;
const REPAIR_JOB: u64 = 2;
const REJOIN_JOB: u64 = 3;

impl_has_work! {
    impl HasWork<Self, RETRY_WORK> for Device { self.work }
    impl HasWork<Self, LANE0_WORK> for Device { self.lane0_work }
    impl HasWork<Self, LANE1_WORK> for Device { self.lane1_work }
}
impl_has_job!(Device, RESYNC_JOB, resync_job);
impl_has_job!(Device, EVENT_JOB, event_job);
impl_has_job!(Device, REPAIR_JOB, repair_job);
impl_has_job!(Device, REJOIN_JOB, rejoin_job);

impl WorkItem<RETRY_WORK> for Device {
    type Pointer = Arc<Device>;

    fn run(this: Arc<Device>) {
        this.resubmit_parked();
        this.defer.run(&*this);
    }
}

fn submit_lane(lane: &LegBioStack) {
    let mut q = lane.take();
    while let Some(bio) = q.pop_front() {
        bio.submit_local();
    }
}

impl WorkItem<LANE0_WORK> for Device {
    type Pointer = Arc<Device>;

    fn run(this: Arc<Device>) {
        submit_lane(&this.lanes[0]);
    }
}

impl WorkItem<LANE1_WORK> for Device {
    type Pointer = Arc<Device>;

    fn run(this: Arc<Device>) {
        submit_lane(&this.lanes[1]);
    }
}

impl JobRun<RESYNC_JOB> for Device {
    fn run(this: Arc<Self>) {
        resync::run(&this);
    }
}

impl JobRun<EVENT_JOB> for Device {
    // Allocates and sends a netlink message.
    const QUEUE: wq::Kind = wq::Kind::Wait;
    fn run(this: Arc<Self>) {
        netlink::send_event(&this, Event::Changed);
    }
}

impl JobRun<REPAIR_JOB> for Device {
    // Takes the admin lock, which commands hold while they wait for I/O.
    const QUEUE: wq::Kind = wq::Kind::Wait;
    fn run(this: Arc<Self>) {
        this.repair_legs();
    }
}

impl JobRun<REJOIN_JOB> for Device {
    // Takes the admin lock, which commands hold while they wait for I/O.
    const QUEUE: wq::Kind = wq::Kind::Wait;
    fn run(this: Arc<Self>) {
        this.rejoin_legs();
    }
}

impl Device {
    /// Builds device `dstN` (N = `index`) named `name` from the legs in
    /// `specs`, and makes it visible.
    pub(crate) fn create(
        name: &str,
        index: u32,
        target: Target,
        specs: KVec<LegSpec<'_>>,
        settings: Settings,
    ) -> Result<Arc<Device>, Refusal> {
        if specs.is_empty() {
            refuse!(EINVAL, "a device needs at least one leg");
        }
        if specs.len() > MAX_LEGS {
            refuse!(EINVAL, "too many legs (at most {})", MAX_LEGS);
        }
        let nlegs = specs.len();
        let write_mostly = LegSet::none();
        for (i, s) in specs.iter().enumerate() {
            if s.write_mostly {
                if target != Target::Mirror {
                    refuse!(EINVAL, "write-mostly applies to mirror legs, not linear");
                }
                write_mostly.insert(i);
            }
        }
        let holder = Holder::new()?;
        let mut legs: KVec<Leg> = KVec::with_capacity(nlegs, GFP_KERNEL)?;
        for (i, s) in specs.into_iter().enumerate() {
            let leg = match s.remote {
                None => Leg::open(s.spec, &holder)?,
                Some(cfg) => Leg::remote(s.spec, i + 1, cfg)?,
            };
            if let Some(other) = legs.iter().find(|l| l.dev().same_as(leg.dev())) {
                let shown = leg.spec().to_str().unwrap_or("?");
                let other = other.spec().to_str().unwrap_or("?");
                refuse!(
                    EINVAL,
                    "leg {} given twice (same device as {})",
                    shown,
                    other
                );
            }
            legs.push(leg, GFP_KERNEL)?;
        }
        // On any failure below, dropping the legs closes them (and stops
        // the remote ones).

        // The largest logical block size among the legs rules the layout.
        let mut probe = Limits::stacking();
        for leg in legs.iter() {
            stack(&mut probe, leg, 0);
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
            stack(&mut lim, leg, leg.offset());
        }
        let offer = lim.offer();
        // An initial sync: the legs after the first start out of sync, all
        // dirty, and are resynced from it once the device is up.
        let sync = settings.sync && target == Target::Mirror && nlegs > 1;
        let dirty = AppendVec::new()?;
        if target == Target::Mirror {
            for i in 0..nlegs {
                let map = DirtyMap::new(sectors, settings.region_bytes)?;
                if sync && i > 0 {
                    map.mark_all();
                }
                if dirty.push(map).is_err() {
                    return Err(ENOSPC.into());
                }
            }
        }
        if sync {
            // Writes skip them (their maps are all dirty anyway) until
            // they are resyncing.
            for leg in legs.iter().skip(1) {
                leg.set_state(LegState::Down);
            }
        }
        let table = AppendVec::new()?;
        for leg in legs {
            if table.push(leg).is_err() {
                return Err(ENOSPC.into());
            }
        }

        let disk = match Disk::new(&mut lim, format_args!("dst{}", index), sectors) {
            Ok(d) => d,
            Err(e) => {
                if e == errno::eopnotsupp() {
                    refuse!(e, "zoned legs are not supported");
                }
                return Err(e.into());
            }
        };
        let dev = Arc::pin_init(
            try_pin_init!(Device {
                name: Name::new(name)?,
                index,
                target,
                sectors,
                block_size,
                legs: table,
                sets: LegSets::new(if sync { 1 } else { nlegs }),
                to_repair: LegSet::none(),
                to_rejoin: LegSet::none(),
                write_mostly,
                repairs <- new_mutex!(Repairs { last_ms: [0; MAX_LEGS] }, "Device::repairs"),
                dirty,
                offer,
                holder,
                disk,
                gate: Gate::new(),
                defer: DeferList::new(),
                lanes: [LegBioStack::new(), LegBioStack::new()],
                rotor: AtomicU32::new(0),
                barrier: Barrier::new(),
                parked: BioStack::new(),
                resync_results: [const { IoResult::new() }; resync::DEPTH],
                stopping: AtomicBool::new(false),
                last_progress_ms: AtomicU64::new(0),
                resync_rate_kib: AtomicU32::new(settings.resync_rate_kib),
                resync_max_kib: AtomicU32::new(settings.resync_max_kib),
                resync <- new_mutex!(ResyncState::new(), "Device::resync"),
                ioset <- BioSet::new(IoSet::FRONT_PAD, true),
                moreset <- BioSet::new(IoSet::FRONT_PAD, true),
                splitset <- BioSet::new(0, true),
                openers <- new_mutex!(Openers::default(), "Device::openers"),
                admin <- new_mutex!((), "Device::admin"),
                work <- new_work!("Device::work"),
                lane0_work <- new_work!("Device::lane0_work"),
                lane1_work <- new_work!("Device::lane1_work"),
                resync_job <- Job::new(),
                event_job <- Job::new(),
                repair_job <- Job::new(),
                rejoin_job <- Job::new(),
            }? Error),
            GFP_KERNEL,
        )?;
        for (i, leg) in dev.legs.iter().enumerate() {
            if let Some(r) = leg.dev().remote() {
                r.start(dev.clone(), i);
            }
        }
        if let Err(e) = dev.disk.add(dev.clone()) {
            // The remotes hold the device: break the cycle.
            dev.stop_remotes();
            return Err(e.into());
        }
        for leg in dev.legs.iter() {
            if let Some(b) = leg.dev().local() {
                if let Err(e) = dev.disk.link_holder(b) {
                    pr_err!(
                        "{}: cannot link holder for {}: {:?}\n",
                        dev.name(),
                        b.name(),
                        e
                    );
                }
            }
        }
        pr_info!(
            "{}: created dst{} ({}, {} legs, {} sectors)\n",
            dev.name(),
            index,
            target.as_str(),
            dev.legs.len(),
            sectors
        );
        if sync {
            pr_info!(
                "{}: initial sync: copying leg 0 to the other legs ({} KiB each)\n",
                dev.name(),
                sectors >> 1
            );
            for i in 1..nlegs {
                dev.resync_leg(i);
            }
            Self::notify(dev.as_arc_borrow());
        }
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
                self.name(),
                o.count
            );
        }
        o.removing = true;
        Ok(())
    }

    fn stop_remotes(&self) {
        self.legs.iter().for_each(stop_remote);
    }

    /// Stops the resync and the remote legs, removes the disk, waits for
    /// the I/O in flight, and drops the disk's reference.  The legs are
    /// closed when the last reference goes.
    pub(crate) fn teardown(self: &Arc<Self>) {
        self.stopping.store(true, Ordering::Release);
        // Remote legs fail what they hold, so the resync's I/O ends.
        self.stop_remotes();
        Job::<Device, RESYNC_JOB>::disable(self);
        Job::<Device, EVENT_JOB>::disable(self);
        Job::<Device, REPAIR_JOB>::disable(self);
        Job::<Device, REJOIN_JOB>::disable(self);
        self.barrier.lower_all();
        // As in the resync job: pairs with the fence in `Device::park`.
        fence(Ordering::SeqCst);
        self.resubmit_parked();
        {
            // A detached or removed leg is not linked.
            let _admin = self.admin.lock();
            for (i, leg) in self.legs.iter().enumerate() {
                if let Some(b) = leg.dev().local() {
                    if !matches!(self.leg_state(i), LegState::Detached | LegState::Removed) {
                        self.disk.unlink_holder(b);
                    }
                }
            }
        }
        let disk_ref = self.disk.del();
        self.gate.wait_idle();
        drop(disk_ref);
        pr_info!("{}: removed dst{}\n", self.name(), self.index);
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

    /// The state of the device as a whole.
    pub(crate) fn state(&self) -> DevState {
        let usable = (0..self.legs.len())
            .filter(|&i| self.leg_in_sync(i) && self.leg_reachable(i))
            .count();
        let live = self.live_legs();
        match self.target {
            Target::Linear if usable == live => DevState::Ok,
            Target::Linear => DevState::Failed,
            Target::Mirror if usable == 0 => DevState::Failed,
            Target::Mirror if usable == live => DevState::Ok,
            Target::Mirror => DevState::Degraded,
        }
    }

    /// Whether leg `i` is in sync.
    pub(crate) fn leg_in_sync(&self, i: usize) -> bool {
        self.sets.in_sync().contains(i)
    }

    /// The legs in sync, as a bit mask.
    pub(crate) fn in_sync_mask(&self) -> u32 {
        self.sets.in_sync().mask()
    }

    /// Whether leg `i` can be reached now (a remote leg is connected).
    pub(crate) fn leg_reachable(&self, i: usize) -> bool {
        self.legs
            .get(i)
            .is_some_and(|l| l.dev().remote().map_or(true, |r| r.link() == Link::Up))
    }

    /// Counts an I/O on leg `i` ([`Leg::start`]) if the leg is still in
    /// the set `what` needs, and returns whether it did.  The full fence
    /// between counting and checking pairs with the one in
    /// [`Device::detach`]: an I/O either sees the leg gone, or is counted
    /// before detach waits for the leg's I/O to end.  A counted I/O ends
    /// with [`Leg::done`] or [`Leg::end`].
    pub(crate) fn enter_leg(&self, i: usize, what: LegUse) -> bool {
        let Some(leg) = self.legs.get(i) else {
            return false;
        };
        leg.start();
        fence(Ordering::SeqCst);
        let usable = match what {
            LegUse::Read => self.leg_in_sync(i),
            LegUse::Write => self.leg_writable(i),
            LegUse::ResyncSource => self.leg_in_sync(i) && self.leg_reachable(i),
            LegUse::ResyncTarget => self.sets.resyncing().contains(i),
        };
        if !usable {
            leg.end();
        }
        usable
    }

    /// Whether leg `i` gets writes (in sync, or being resynced).  Both
    /// sets are one word: a leg [`Device::resync_done`] moves is always
    /// in one of them.
    pub(crate) fn leg_writable(&self, i: usize) -> bool {
        self.sets.writable() & (1 << i) != 0
    }

    /// The state of leg `i`.
    pub(crate) fn leg_state(&self, i: usize) -> LegState {
        let Some(leg) = self.legs.get(i) else {
            return LegState::Faulty;
        };
        if self.leg_in_sync(i) {
            // A held remote leg is still in sync, but its connection is down.
            return match leg.dev().remote().map(|r| r.link()) {
                Some(Link::Down) => LegState::Down,
                _ => LegState::InSync,
            };
        }
        if self.sets.resyncing().contains(i) {
            return LegState::Resyncing;
        }
        leg.state()
    }

    /// Bytes resynced and to resync on leg `i`, and the speed in bytes per
    /// second (all 0 when it is not being resynced).
    pub(crate) fn resync_progress_of(&self, i: usize) -> (u64, u64, u64) {
        if !self.sets.resyncing().contains(i) {
            return (0, 0, 0);
        }
        {
            let st = self.resync.lock();
            if st.target() == Some(i) {
                return (st.done, st.total, st.speed());
            }
        }
        // Counted without the resync job's lock: a large map takes a while.
        (0, self.dirty.get(i).map_or(0, |m| m.dirty_bytes()), 0)
    }

    /// Mirror: bytes per dirty-map bit (0 for a linear device).
    pub(crate) fn region_bytes(&self) -> u32 {
        self.dirty.first().map_or(0, DirtyMap::region_bytes)
    }

    /// The resync speed limits in KiB/s: while busy, and always.
    pub(crate) fn resync_limits(&self) -> (u32, u32) {
        (
            self.resync_rate_kib.load(Ordering::Relaxed),
            self.resync_max_kib.load(Ordering::Relaxed),
        )
    }

    /// Changes the resync speed limits given; they apply from the next
    /// chunk.
    pub(crate) fn set_resync_limits(
        self: &Arc<Self>,
        rate: Option<u32>,
        max: Option<u32>,
    ) -> Result<(), Refusal> {
        if self.target != Target::Mirror {
            refuse!(
                EINVAL,
                "{} is linear: resync settings apply to mirrors",
                self.name()
            );
        }
        if let Some(r) = rate {
            self.resync_rate_kib.store(r, Ordering::Relaxed);
        }
        if let Some(m) = max {
            self.resync_max_kib.store(m, Ordering::Relaxed);
        }
        self.resync.lock().reset_schedule();
        self.kick_resync();
        Ok(())
    }

    /// Requests the legs have served (a resync tells from it whether the
    /// device is in use).
    pub(crate) fn foreground_requests(&self) -> u64 {
        self.legs
            .iter()
            .map(|l| {
                let s = l.stats();
                s.reads.wrapping_add(s.writes)
            })
            .fold(0, u64::wrapping_add)
    }

    /// The bio set used to split bios.
    pub(crate) fn splitset(&self) -> &BioSet {
        &self.splitset
    }

    /// Reports a change to the listeners of the events group.
    pub(crate) fn notify(this: ArcBorrow<'_, Self>) {
        Job::<Device, EVENT_JOB>::queue(this.into(), 0);
    }

    /// Takes leg `i` out of service after a failed write, unless it is the
    /// last in-sync leg: then the leg stays (as md does), the write fails,
    /// and the data remains readable.
    pub(crate) fn fail_leg(this: ArcBorrow<'_, Self>, i: usize, e: Error) {
        let Some(leg) = this.legs.get(i) else { return };
        let spec = leg.spec().to_str().unwrap_or("?");
        if this.sets.resyncing().remove(i) {
            leg.set_state(LegState::Faulty);
            pr_err!(
                "{}: leg {} ({}) failed a write while resyncing (errno {}), now faulty\n",
                this.name(),
                spec,
                leg.dev().name(),
                e.to_errno()
            );
            Self::notify(this);
            return;
        }
        match this.sets.in_sync().remove_unless_last(i) {
            Removal::Removed => {
                leg.set_state(LegState::Faulty);
                pr_err!(
                    "{}: leg {} ({}) failed a write (errno {}), now faulty; {} of {} legs in sync\n",
                    this.name(),
                    spec,
                    leg.dev().name(),
                    e.to_errno(),
                    this.sets.in_sync().count(),
                    this.live_legs()
                );
                Self::notify(this);
            }
            Removal::Last => pr_err!(
                "{}: leg {} ({}), the last in sync, failed a write (errno {})\n",
                this.name(),
                spec,
                leg.dev().name(),
                e.to_errno()
            ),
            Removal::NotMember => {}
        }
    }

    /// Leg `i` failed a read of the range with `e` (the read is retried
    /// on another leg): its copy is rewritten from the others, as md's
    /// read repair does, unless the error says the leg was away (a remote
    /// leg's lost connection: its data is not at fault, and the outage
    /// resyncs the leg anyway).  The range is marked dirty now, in any
    /// context.  An in-sync leg is then resynced by the repair job (see
    /// [`Device::repair_legs`]); a leg already resyncing (a read that was
    /// in flight when its repair began) has the range copied by the
    /// running resync, which looks for regions dirtied behind it.
    pub(crate) fn repair(this: ArcBorrow<'_, Self>, i: usize, sector: u64, bytes: u32, e: Error) {
        if e == errno::leg_away() || this.in_sync_mask() & !(1 << i) == 0 {
            // No other leg to copy from.
            return;
        }
        let in_sync = this.leg_in_sync(i);
        if !in_sync && !this.sets.resyncing().contains(i) {
            return;
        }
        this.mark_dirty(i, sector, bytes);
        if in_sync {
            this.to_repair.insert(i);
            Job::<Device, REPAIR_JOB>::queue(this.into(), 0);
        }
    }

    /// Repairs the legs [`Device::repair`] marked: each leaves the in-sync
    /// set (unless it is the last) and is resynced, which copies its dirty
    /// regions from an in-sync leg; if that fails too, the resync fails
    /// the leg.  Under `admin`, so that no detach or attach runs meanwhile
    /// (the job may wait there for a detach, which waits at most
    /// `DETACH_WAIT_MS` for the leg's I/O; that I/O does not need this
    /// job).  A leg repaired less than [`REPAIR_PAUSE_MS`] ago waits.
    fn repair_legs(self: &Arc<Self>) {
        let _admin = self.admin.lock();
        let mut r = self.repairs.lock();
        let now = now_ms();
        let mut wait = 0;
        for i in self.to_repair.take() {
            let Some(leg) = self.legs.get(i) else {
                continue;
            };
            if self.is_stopping() || leg.state() != LegState::InSync {
                continue;
            }
            let Some(last) = r.last_ms.get_mut(i) else {
                continue;
            };
            if *last != 0 && now < *last + REPAIR_PAUSE_MS {
                self.to_repair.insert(i);
                wait = wait.max(*last + REPAIR_PAUSE_MS - now);
                continue;
            }
            if self.sets.in_sync().remove_unless_last(i) != Removal::Removed {
                continue;
            }
            *last = now.max(1);
            let kib = self.dirty.get(i).map_or(0, |m| m.dirty_bytes() >> 10);
            self.resync_leg(i);
            // After the state changed, so that a reader who sees this line
            // and then `in-sync` knows the repair is done.
            pr_warn!(
                "{}: leg {} ({}) failed reads; rewriting them from the other legs ({} KiB)\n",
                self.name(),
                i,
                leg.dev().name(),
                kib
            );
            Self::notify(self.as_arc_borrow());
        }
        if wait > 0 {
            Job::<Device, REPAIR_JOB>::queue(self.clone(), u32::try_from(wait).unwrap_or(u32::MAX));
        }
    }

    /// Marks the range of a write that leg `i` may have missed (not for a
    /// removed leg: it is never resynced).
    pub(crate) fn mark_dirty(&self, i: usize, sector: u64, bytes: u32) {
        if self.legs.get(i).is_some_and(Leg::is_removed) {
            return;
        }
        if let Some(m) = self.dirty.get(i) {
            m.mark(sector, u64::from(bytes).div_ceil(512));
        }
    }

    /// Picks an in-sync leg to read from, not in the `tried` mask: the one
    /// with the fewest requests in flight, starting the scan after the leg
    /// chosen last so equal legs share the load.  Write-mostly legs are used
    /// only when no other leg is left, and held remote legs (in sync,
    /// connection down) only when nothing else is.
    pub(crate) fn pick_read_leg(&self, tried: u32) -> Option<usize> {
        let candidates = self.in_sync_mask() & !tried;
        if candidates & candidates.wrapping_sub(1) == 0 {
            // None, or only one: nothing to choose.
            return (candidates != 0).then(|| candidates.trailing_zeros() as usize);
        }
        let legs = &self.legs;
        // Only a hint: a lost update between CPUs costs nothing.  Kept
        // below the number of legs, so the scan needs no division.
        let start = self.rotor.load(Ordering::Relaxed);
        let below = (1u32 << start.min(31)) - 1;
        let write_mostly = self.write_mostly.mask();
        let mut best: Option<(usize, u64)> = None;
        // The candidates from `start` up, then those below it.
        for mut rest in [candidates & !below, candidates & below] {
            while rest != 0 {
                let i = rest.trailing_zeros() as usize;
                rest &= rest - 1;
                let Some(leg) = legs.get(i) else { continue };
                // The kind of leg first, then its load.
                let load = if !self.leg_reachable(i) {
                    u64::MAX
                } else if write_mostly & (1 << i) != 0 {
                    (1 << 32) | u64::from(leg.inflight())
                } else {
                    u64::from(leg.inflight())
                };
                if best.map_or(true, |(_, b)| load < b) {
                    best = Some((i, load));
                }
            }
        }
        let (i, _) = best?;
        // The next scan starts after the leg chosen, so that equal legs
        // take turns even when legs between them are not candidates.
        let next = i as u32 + 1;
        self.rotor.store(
            if next >= legs.len() as u32 { 0 } else { next },
            Ordering::Relaxed,
        );
        Some(i)
    }

    // ---- resync ----

    pub(crate) fn resync_state(&self) -> Guard<'_, ResyncState, MutexBackend> {
        self.resync.lock()
    }

    pub(crate) fn dirty_map(&self, i: usize) -> Option<&DirtyMap> {
        self.dirty.get(i)
    }

    pub(crate) fn barrier(&self) -> &Barrier {
        &self.barrier
    }

    /// Where the resync I/O of chunk slot `slot` leaves its result.
    pub(crate) fn resync_result(&self, slot: usize) -> Option<&IoResult> {
        self.resync_results.get(slot)
    }

    pub(crate) fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// Runs the resync job soon.
    pub(crate) fn kick_resync(self: &Arc<Self>) {
        Job::<Device, RESYNC_JOB>::queue(self.clone(), 0);
    }

    /// Runs the resync job in `ms` milliseconds (keeping a rate, backing
    /// off), unless it is queued already: a pending run is not brought
    /// forward by [`Device::kick_resync`].
    pub(crate) fn kick_resync_in(self: &Arc<Self>, ms: u64) {
        Job::<Device, RESYNC_JOB>::queue(self.clone(), u32::try_from(ms).unwrap_or(u32::MAX));
    }

    /// The next leg to resync.
    pub(crate) fn next_resync_target(&self) -> Option<usize> {
        let m = self.sets.resyncing().mask();
        (m != 0).then(|| m.trailing_zeros() as usize)
    }

    /// An in-sync leg to copy from, not in the `avoid` mask, preferring a
    /// local one, then one that is not write-mostly (as md's resync
    /// reads do), then the lowest index.
    pub(crate) fn resync_source(&self, target: usize, avoid: u32) -> Option<usize> {
        let ok = |i: &usize| {
            *i != target && avoid & (1 << *i) == 0 && self.leg_in_sync(*i) && self.leg_reachable(*i)
        };
        let write_mostly = self.write_mostly.mask();
        (0..self.legs.len()).filter(ok).min_by_key(|&i| {
            let remote = self.legs.get(i).is_some_and(|l| l.dev().local().is_none());
            (remote, write_mostly & (1 << i) != 0)
        })
    }

    /// Reports resync progress (at most every two seconds).
    pub(crate) fn resync_progress(self: &Arc<Self>) {
        let now = now_ms();
        if now.saturating_sub(self.last_progress_ms.load(Ordering::Relaxed)) >= 2000 {
            self.last_progress_ms.store(now, Ordering::Relaxed);
            Self::notify(self.as_arc_borrow());
        }
    }

    /// Leg `target` is in sync again, after a resync that copied `bytes`
    /// in `ms` milliseconds.
    ///
    /// The leg moves from the resyncing set to the in-sync one in one
    /// step: a write never finds it in neither (it would skip it, and mark
    /// a region no resync is left to copy), and a leg that left the
    /// resyncing set meanwhile (it went down, failed, or was detached)
    /// stays out, with the state whoever took it out gave it.  Its state
    /// becomes `in-sync` only if still `resyncing`, for the same reason.
    pub(crate) fn resync_done(self: &Arc<Self>, target: usize, bytes: u64, ms: u64) {
        let Some(leg) = self.legs.get(target) else {
            return;
        };
        if !self.sets.resyncing().contains(target) {
            return;
        }
        // Logged first: whoever sees the leg in sync finds the line.  (If
        // the leg leaves meanwhile, the reason it left is logged after.)
        pr_info!(
            "{}: leg {} is in sync again ({} KiB copied in {} ms, {} KiB/s)\n",
            self.name(),
            target,
            bytes >> 10,
            ms,
            (bytes >> 10) * 1000 / ms.max(1)
        );
        if !self.sets.promote(target) {
            // Whoever took it out reports the change.
            return;
        }
        leg.change_state(LegState::Resyncing, LegState::InSync);
        Self::notify(self.as_arc_borrow());
    }

    /// The resync of `target` cannot go on.
    pub(crate) fn resync_failed(self: &Arc<Self>, target: usize, why: &str) {
        if self.sets.resyncing().remove(target) {
            if let Some(leg) = self.legs.get(target) {
                leg.set_state(LegState::Faulty);
            }
            pr_err!(
                "{}: resync of leg {} stopped: {}\n",
                self.name(),
                target,
                why
            );
            Self::notify(self.as_arc_borrow());
        }
    }

    /// The resync's write to `target` failed.
    pub(crate) fn resync_target_failed(self: &Arc<Self>, target: usize, e: Error) {
        let remote = self
            .legs
            .get(target)
            .is_some_and(|l| l.dev().remote().is_some());
        if remote && e == errno::leg_away() {
            // The connection is down; the remote reported it, the leg is
            // `down` and will be resynced again when it is back.
            return;
        }
        Self::fail_leg(self.as_arc_borrow(), target, e);
    }

    /// Has the writes parked by the resync barrier resubmitted, from the
    /// defer queue: a resubmission may wait for a bio set's reserve, and
    /// the caller (the resync job) runs on the I/O queue, whose work may
    /// be what refills it.
    pub(crate) fn kick_parked(self: &Arc<Self>) {
        if !self.parked.is_empty() {
            <Self as IoOwner>::kick_deferred(self.as_arc_borrow());
        }
    }

    /// Resubmits the writes parked by the resync barrier.
    pub(crate) fn resubmit_parked(self: &Arc<Self>) {
        for bio in self.parked.take() {
            mirror::submit(self.as_arc_borrow(), bio);
        }
    }

    /// Parks a write, which found buckets of `mask` raised, until they
    /// are lowered: the resync job has the parked writes resubmitted
    /// after it lowers any.  `wake`: the write drained a bucket on its way
    /// here, so a chunk may be waiting for the job to run.
    pub(crate) fn park(this: ArcBorrow<'_, Self>, bio: Bio, mask: u64, wake: bool) {
        this.parked.push(bio);
        // The job may have lowered them and resubmitted before the push:
        // then it must run again.  (Not if they are still raised and
        // drained: the job resubmits writes that are parked again each
        // time it runs, and would only park them again, for as long as
        // the chunk lasts.)
        fence(Ordering::SeqCst);
        if wake || !this.barrier.is_raised(mask) {
            Job::<Device, RESYNC_JOB>::queue(this.into(), 0);
        }
    }

    // ---- detach and attach ----

    /// Leg `i` as named in messages: its position and the spec given.
    fn leg_or_refuse(&self, i: usize) -> Result<&Leg, Refusal> {
        self.mirror_or_refuse()?;
        match self.legs.get(i) {
            Some(l) if l.is_removed() => {
                refuse!(ENOENT, "leg {} of {} was removed", i, self.name())
            }
            Some(l) => Ok(l),
            None => refuse!(ENOENT, "{} has no leg {}", self.name(), i),
        }
    }

    /// Refuses leg changes but on a mirror that is not going away.
    fn mirror_or_refuse(&self) -> Result<(), Refusal> {
        if self.target != Target::Mirror {
            refuse!(
                EINVAL,
                "{} is linear: only mirror legs can change",
                self.name()
            );
        }
        if self.is_stopping() {
            refuse!(ENODEV, "{} is going away", self.name());
        }
        Ok(())
    }

    /// Detaches leg `i`: it stops getting I/O once the I/O in flight to it
    /// has ended and its cache is flushed, and from then on holds the
    /// device's contents as of the detach.  Writes meanwhile mark its dirty
    /// map.  A local leg is released (others may open or mount it), a
    /// remote leg disconnected.  Refused for the last in-sync leg.  If the
    /// I/O in flight does not end within [`DETACH_WAIT_MS`] (a hung disk),
    /// or the caller is killed meanwhile, the detach is abandoned: the leg
    /// stays, and is resynced (it missed the writes made meanwhile).
    pub(crate) fn detach(self: &Arc<Self>, i: usize) -> Result<(), Refusal> {
        let _admin = self.admin.lock();
        let leg = self.leg_or_refuse(i)?;
        if self.leg_state(i) == LegState::Detached {
            refuse!(
                errno::ealready(),
                "leg {} of {} is already detached",
                i,
                self.name()
            );
        }
        let was_in_sync = self.take_out(i, leg)?;
        pr_info!(
            "{}: leg {} ({}) detached{}\n",
            self.name(),
            i,
            leg.spec().to_str().unwrap_or("?"),
            if was_in_sync {
                ""
            } else {
                " (it was not in sync)"
            }
        );
        Self::notify(self.as_arc_borrow());
        Ok(())
    }

    /// Takes leg `i` out of service (the work of [`Device::detach`]);
    /// returns whether it was in sync.  The caller holds `admin`.
    fn take_out(self: &Arc<Self>, i: usize, leg: &Leg) -> Result<bool, Refusal> {
        let prior = leg.state();
        // Out of both sets in one step (a resync ending meanwhile cannot
        // put it back in sync).
        let Ok((was_in_sync, was_resyncing)) = self.sets.leave(i) else {
            refuse!(
                EBUSY,
                "leg {} is the last in-sync leg of {}",
                i,
                self.name()
            )
        };
        leg.set_state(LegState::Detached);
        // Pairs with the fence in `enter_leg`: an I/O that did not see the
        // leg leave is counted by now.
        fence(Ordering::SeqCst);
        if let Err(e) = leg.wait_idle_for(DETACH_WAIT_MS) {
            let resync = was_in_sync || was_resyncing;
            self.abandon_detach(i, prior, resync);
            refuse!(
                e,
                "leg {} still has I/O in flight ({} after {} s): not detached{}",
                i,
                if e == EINTR { "interrupted" } else { "gave up" },
                DETACH_WAIT_MS / 1000,
                if resync { "; it is resynced" } else { "" }
            );
        }
        if was_in_sync && self.leg_reachable(i) {
            if let Err(e) = io::flush_sync(leg.dev()) {
                pr_warn!(
                    "{}: leg {}: flush before detaching failed (errno {})\n",
                    self.name(),
                    i,
                    e.to_errno()
                );
            }
        }
        match leg.dev() {
            LegDev::Local(b) => {
                self.disk.unlink_holder(b);
                if let Err(e) = b.release_claim() {
                    pr_warn!(
                        "{}: leg {}: cannot release it (errno {})\n",
                        self.name(),
                        i,
                        e.to_errno()
                    );
                }
            }
            LegDev::Remote(r) => r.park(),
        }
        Ok(was_in_sync)
    }

    /// Grows the mirror by the leg `spec`: it takes the next index, and is
    /// resynced in full (a remote leg once connected).  Returns its index.
    pub(crate) fn add_leg(self: &Arc<Self>, spec: LegSpec<'_>) -> Result<usize, Refusal> {
        let _admin = self.admin.lock();
        self.mirror_or_refuse()?;
        let i = self.legs.len();
        if i >= MAX_LEGS {
            refuse!(
                ENOSPC,
                "{} has had {} legs, the most a device can",
                self.name(),
                MAX_LEGS
            );
        }
        let mut leg = match spec.remote {
            None => Leg::open(spec.spec, &self.holder)?,
            Some(cfg) => Leg::remote(spec.spec, 1, cfg)?,
        };
        // From here on, dropping `leg` closes it (and stops a remote).
        let shown = spec.spec.to_str().unwrap_or("?");
        let same = |l: &Leg| !l.is_removed() && l.dev().same_as(leg.dev());
        if let Some(j) = self.legs.iter().position(same) {
            refuse!(EINVAL, "{} is already leg {} of {}", shown, j, self.name());
        }
        if leg.sectors() < self.sectors {
            refuse!(
                ENOSPC,
                "{} is smaller than {} ({} < {} sectors)",
                shown,
                self.name(),
                leg.sectors(),
                self.sectors
            );
        }
        let mut probe = Limits::stacking();
        stack(&mut probe, &leg, 0);
        let offer = probe.offer();
        if let Some(what) = self.offer.lacking(&offer) {
            refuse!(
                EINVAL,
                "{} cannot serve {}: it has {}",
                shown,
                self.name(),
                what
            );
        }
        leg.place(self.sectors, 0);
        let map = DirtyMap::new(self.sectors, self.region_bytes())?;
        map.mark_all();
        // Writes skip it (and would mark its map) until it is resyncing.
        leg.set_state(LegState::Down);
        // The holder link also refuses the device itself as its own leg.
        if let LegDev::Local(b) = leg.dev() {
            if let Err(e) = self.disk.link_holder(b) {
                refuse!(e, "{} cannot be a leg of {}", shown, self.name());
            }
        }
        // Last, as it cannot be undone: lower the device's largest request.
        if offer.max_sectors != u32::MAX {
            if let Err(e) = self.disk.cap_sectors(offer.max_sectors) {
                if let LegDev::Local(b) = leg.dev() {
                    self.disk.unlink_holder(b);
                }
                refuse!(
                    e,
                    "{}: cannot lower the largest request to {} sectors",
                    self.name(),
                    offer.max_sectors
                );
            }
        }
        if self.dirty.len() != i || self.dirty.push(map).is_err() || self.legs.push(leg).is_err() {
            // Not reached: `admin` serialises appends, and both vectors
            // have the same room.
            refuse!(ENOSPC, "{}: no room for another leg", self.name());
        }
        let Some(leg) = self.legs.get(i) else {
            return Err(EINVAL.into());
        };
        self.write_mostly.set(i, spec.write_mostly);
        if let Some(r) = leg.dev().remote() {
            r.start(self.clone(), i);
        }
        self.resync_leg(i);
        pr_info!(
            "{}: leg {} ({}) added; resyncing all of it ({} KiB)\n",
            self.name(),
            i,
            shown,
            self.sectors >> 1
        );
        Self::notify(self.as_arc_borrow());
        Ok(i)
    }

    /// Makes mirror leg `i` write-mostly (`on`) or a normal leg again.
    pub(crate) fn set_write_mostly(self: &Arc<Self>, i: usize, on: bool) -> Result<(), Refusal> {
        let _admin = self.admin.lock();
        let leg = self.leg_or_refuse(i)?;
        if self.write_mostly.set(i, on) {
            pr_info!(
                "{}: leg {} ({}) is {}\n",
                self.name(),
                i,
                leg.spec().to_str().unwrap_or("?"),
                if on {
                    "write-mostly"
                } else {
                    "no longer write-mostly"
                }
            );
            Self::notify(self.as_arc_borrow());
        }
        Ok(())
    }

    /// Whether leg `i` is write-mostly.
    pub(crate) fn leg_write_mostly(&self, i: usize) -> bool {
        self.write_mostly.contains(i)
    }

    /// Shrinks the mirror by leg `i`: it is taken out as by a detach (if
    /// it is not detached already), its device released for good (a remote
    /// leg is stopped), and it is left out of status from then on.
    pub(crate) fn remove_leg(self: &Arc<Self>, i: usize) -> Result<(), Refusal> {
        let _admin = self.admin.lock();
        let leg = self.leg_or_refuse(i)?;
        if self.leg_state(i) != LegState::Detached {
            self.take_out(i, leg)?;
        }
        if let Some(r) = leg.dev().remote() {
            r.stop();
        }
        leg.set_state(LegState::Removed);
        pr_info!(
            "{}: leg {} ({}) removed; {} of {} legs in sync\n",
            self.name(),
            i,
            leg.spec().to_str().unwrap_or("?"),
            self.sets.in_sync().count(),
            self.live_legs()
        );
        Self::notify(self.as_arc_borrow());
        Ok(())
    }

    /// Legs not removed.
    pub(crate) fn live_legs(&self) -> usize {
        self.legs.iter().filter(|l| !l.is_removed()).count()
    }

    /// Marks all of leg `i`'s map dirty if `full`; returns the KiB its
    /// resync is to copy.
    fn to_resync_kib(&self, i: usize, full: bool) -> u64 {
        let Some(m) = self.dirty.get(i) else { return 0 };
        if full {
            m.mark_all();
        }
        m.dirty_bytes() >> 10
    }

    /// Puts leg `i` in the resyncing set, where it gets every write, and
    /// starts its resync.  A remote leg whose connection is down (or goes
    /// down meanwhile) is left `down` instead, and comes back here through
    /// `remote_up`: `remote_down` takes a leg out of the set after its link
    /// went down, and the fence makes sure one of the two sees the other.
    fn resync_leg(self: &Arc<Self>, i: usize) {
        let Some(leg) = self.legs.get(i) else { return };
        leg.set_state(LegState::Resyncing);
        self.sets.resyncing().insert(i);
        fence(Ordering::SeqCst);
        if !self.leg_reachable(i) && self.sets.resyncing().remove(i) {
            leg.set_state(LegState::Down);
            return;
        }
        self.kick_resync();
    }

    /// Puts back leg `i`, whose detach did not complete, in service: a leg
    /// that was in use (`in_use`) missed the writes made since the detach
    /// began, so it is resynced, and so is a leg that was down (it stays
    /// down if still unreachable); another gets its `prior` state back.
    fn abandon_detach(self: &Arc<Self>, i: usize, prior: LegState, in_use: bool) {
        let Some(leg) = self.legs.get(i) else { return };
        // A remote leg that was down may have reconnected meanwhile: the
        // rejoin job, waiting for `admin`, then finds it resyncing.
        if in_use || prior == LegState::Down {
            self.resync_leg(i);
        } else {
            leg.set_state(prior);
        }
        pr_warn!(
            "{}: leg {}: detach abandoned, its I/O in flight did not end\n",
            self.name(),
            i
        );
        Self::notify(self.as_arc_borrow());
    }

    /// Attaches detached leg `i` again and resyncs it: the regions written
    /// while it was detached, or everything (`full`).  A remote leg is
    /// resynced once it is connected again.
    pub(crate) fn attach(self: &Arc<Self>, i: usize, full: bool) -> Result<(), Refusal> {
        let _admin = self.admin.lock();
        let leg = self.leg_or_refuse(i)?;
        if self.leg_state(i) != LegState::Detached {
            refuse!(EINVAL, "leg {} of {} is not detached", i, self.name());
        }
        if let LegDev::Local(b) = leg.dev() {
            if let Err(e) = b.reclaim(&self.holder) {
                refuse!(
                    e,
                    "leg {}: cannot claim it again: in use (mounted, or another device)",
                    i
                );
            }
            if b.sectors() < leg.sectors() {
                let _ = b.release_claim();
                refuse!(
                    ENOSPC,
                    "leg {} is now smaller than the device ({} < {} sectors)",
                    i,
                    b.sectors(),
                    leg.sectors()
                );
            }
            if let Err(e) = self.disk.link_holder(b) {
                pr_err!(
                    "{}: cannot link holder for {}: {:?}\n",
                    self.name(),
                    b.name(),
                    e
                );
            }
        }
        let kib = self.to_resync_kib(i, full);
        match leg.dev() {
            LegDev::Local(_) => self.resync_leg(i),
            LegDev::Remote(r) => {
                // Resynced by `remote_up` once connected.
                leg.set_state(LegState::Down);
                r.unpark();
            }
        }
        pr_info!(
            "{}: leg {} attached; resyncing {} ({} KiB)\n",
            self.name(),
            i,
            if full { "all of it" } else { "what changed" },
            kib
        );
        Self::notify(self.as_arc_borrow());
        Ok(())
    }

    // ---- remote legs ----

    /// Remote leg `i` lost its connection.  Returns what it should do with
    /// its I/O meanwhile.
    pub(crate) fn remote_down(self: &Arc<Self>, i: usize) -> Policy {
        Self::notify(self.as_arc_borrow());
        if self.target == Target::Linear {
            return Policy::Hold;
        }
        // Pairs with the fence in `resync_leg`: the link is down by now
        // (stored by the remote before this call), and either that leg
        // sees it or the removal below sees the leg in the set.
        fence(Ordering::SeqCst);
        if self.sets.resyncing().remove(i) {
            if let Some(leg) = self.legs.get(i) {
                leg.set_state(LegState::Down);
            }
            return Policy::FailFast;
        }
        match self.sets.in_sync().remove_unless_last(i) {
            Removal::Removed => {
                if let Some(leg) = self.legs.get(i) {
                    leg.set_state(LegState::Down);
                }
                pr_warn!(
                    "{}: leg {} is down; the mirror goes on with {} of {} legs\n",
                    self.name(),
                    i,
                    self.sets.in_sync().count(),
                    self.live_legs()
                );
                Policy::FailFast
            }
            Removal::Last => Policy::Hold,
            Removal::NotMember => Policy::FailFast,
        }
    }

    /// Remote leg `i` is connected again.  Called from its connect job,
    /// which sends the leg's held I/O only after this returns.
    pub(crate) fn remote_up(self: &Arc<Self>, i: usize) {
        if self.target == Target::Mirror {
            if !self.leg_in_sync(i) {
                // Whether it is resynced is decided under `admin`, as a
                // detach or an attach may be under way.  Not here: a
                // detach waits for the leg's I/O, and that I/O waits for
                // this call to return.
                self.to_rejoin.insert(i);
                Job::<Device, REJOIN_JOB>::queue(self.clone(), 0);
            } else if self.next_resync_target().is_some() {
                // A held leg (the last in sync) is back: a resync that
                // found no leg to copy from waits for this.
                self.kick_resync();
            }
        }
        Self::notify(self.as_arc_borrow());
    }

    /// Resyncs the remote legs that [`Device::remote_up`] marked, if they
    /// are still down (not detached meanwhile) and connected.  Under
    /// `admin`, so that no detach or attach runs meanwhile.
    fn rejoin_legs(self: &Arc<Self>) {
        let _admin = self.admin.lock();
        for i in self.to_rejoin.take() {
            let Some(leg) = self.legs.get(i) else {
                continue;
            };
            if self.is_stopping() || leg.state() != LegState::Down || !self.leg_reachable(i) {
                // Detached, or resynced already (an abandoned detach), or
                // down again: its next connection marks it again.
                continue;
            }
            // The leg missed the writes its dirty map holds (those made
            // while it was down, and those that failed with the
            // connection).  A server that does not keep its data across a
            // restart needs everything (`resync=full`).
            let full = leg.dev().remote().is_some_and(|r| r.config().full_resync);
            let kib = self.to_resync_kib(i, full);
            pr_info!(
                "{}: leg {} is back; resyncing {} ({} KiB)\n",
                self.name(),
                i,
                if full { "all of it" } else { "what it missed" },
                kib
            );
            self.resync_leg(i);
            Self::notify(self.as_arc_borrow());
        }
    }
}

/// Stops a remote leg (for a device that never came to be, or goes away).
fn stop_remote(leg: &Leg) {
    if let Some(r) = leg.dev().remote() {
        r.stop();
    }
}

/// Stacks a leg's limits.
fn stack(lim: &mut Limits, leg: &Leg, offset: u64) {
    match leg.dev() {
        LegDev::Local(b) => lim.stack(b, offset),
        LegDev::Remote(r) => lim.stack_remote(&r.info()),
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

    fn name(&self) -> &str {
        Device::name(self)
    }
}

impl IoOwner for Device {
    fn gate(&self) -> &Gate {
        &self.gate
    }

    fn ioset(&self) -> &BioSet {
        &self.ioset
    }

    fn moreset(&self) -> &BioSet {
        &self.moreset
    }

    fn defer_list(&self) -> &DeferList {
        &self.defer
    }

    fn clone_done(
        this: ArcBorrow<'_, Self>,
        leg: u32,
        op: Op,
        sector: u64,
        bytes: u32,
        res: Result,
        preflush: bool,
    ) {
        let i = leg as usize;
        // A preflush is not a request of its own: its data clone, failed
        // with it if it failed, ends the leg's request.
        if let Some(l) = this.legs.get(i).filter(|_| !preflush) {
            l.done(op, res);
        }
        // Likewise for what a failure means for the leg.
        if let (Err(e), Target::Mirror, false) = (res, this.target, preflush) {
            mirror::clone_failed(this, i, op, sector, bytes, e);
        }
    }

    fn io_done(this: ArcBorrow<'_, Self>, outcome: &Outcome) -> Decision {
        match this.target {
            Target::Mirror => mirror::io_done(this, outcome),
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
        let _ = wq::queue_of(wq::Kind::Defer).enqueue::<Arc<Device>, RETRY_WORK>(Arc::from(this));
    }

    fn later_list(&self, leg: u32) -> &LegBioStack {
        &self.lanes[leg as usize % 2]
    }

    fn sink(&self, leg: u32) -> Option<&dyn BioSink> {
        self.legs.get(leg as usize).map(|l| l.dev() as &dyn BioSink)
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
