// SPDX-License-Identifier: GPL-2.0

//! `dstctl monitor`: the module's change notifications, as lines.
//!
//! The module sends a complete device message on its `events` multicast
//! group whenever a device is created or removed or its state or a leg's
//! changes.  The monitor joins the group, then takes a snapshot (a dump),
//! and from then on compares each device message with what it last knew of
//! the device: one line per difference that matters.  Events queued before
//! the snapshot therefore print nothing, and when the kernel had to drop
//! notifications (`ENOBUFS`) a new snapshot is compared the same way.
//! While a resync runs, a snapshot is also taken every few seconds, so its
//! progress shows even if the kernel reports only its start and end.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dst_proto::genl::{cmd, dev, DevState, Event, LegState, FAMILY_NAME};
use dst_proto::nlattr::Attrs;
use serde::Serialize;

use crate::cli::one_line;
use crate::client::Dst;
use crate::model::{Device, Leg, Wire};
use crate::netlink::{
    self, GenlSocket, Notification, CTRL_ATTR_FAMILY_NAME, CTRL_CMD_DELFAMILY, CTRL_MCGRP_NOTIFY,
    GENL_ID_CTRL,
};
use crate::output::{human_size, leg_state, write_mostly_suffix};
use crate::resync::progress;

/// Least time between two progress lines of one resync, and between two
/// snapshots while a resync runs.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// Receive buffer asked for the events socket.
const EVENTS_BUFFER: usize = 4 << 20;

/// What a line reports.  Serialized flat, after `time` and `device`, with
/// the variant's name (kebab-case) as `"event"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum What {
    /// The device existed when the monitor started.
    Exists {
        /// The device, as `status --json` shows it.
        status: Device,
    },
    /// The device was created.
    Created {
        /// The device, as `status --json` shows it.
        status: Device,
    },
    /// The device was removed.
    Removed {
        /// Its node, `/dev/dstN`.
        path: String,
    },
    /// The device's state changed.
    State {
        /// Previous state.
        from: Wire<DevState>,
        /// New state.
        to: Wire<DevState>,
    },
    /// A leg was added to the device (`dstctl add`).
    LegAdded {
        /// Leg index.
        leg: u32,
        /// The leg as given.
        spec: String,
        /// Its state.
        state: Wire<LegState>,
        /// What went wrong, when the state is not a healthy one.
        problem: Option<String>,
        /// Whether it is write-mostly.
        write_mostly: bool,
    },
    /// A leg was removed from the device (`dstctl remove-leg`); the
    /// others keep their indexes.
    LegRemoved {
        /// Leg index.
        leg: u32,
        /// The leg as given.
        spec: String,
    },
    /// A leg's state changed.
    LegState {
        /// Leg index.
        leg: u32,
        /// The leg as given at creation.
        spec: String,
        /// Previous state.
        from: Wire<LegState>,
        /// New state.
        to: Wire<LegState>,
        /// What went wrong, when the new state is not a healthy one.
        problem: Option<String>,
    },
    /// A leg reports a new problem, its state unchanged.
    LegProblem {
        /// Leg index.
        leg: u32,
        /// The leg as given at creation.
        spec: String,
        /// The problem.
        problem: String,
    },
    /// A leg became write-mostly, or stopped being so (`dstctl set`).
    LegWriteMostly {
        /// Leg index.
        leg: u32,
        /// The leg as given at creation.
        spec: String,
        /// Whether it is write-mostly now.
        write_mostly: bool,
    },
    /// A remote leg connected again (its state unchanged in between).
    Reconnected {
        /// Leg index.
        leg: u32,
        /// The leg as given at creation.
        spec: String,
        /// Successful connections so far.
        connects: u32,
    },
    /// A resync of a leg started.
    ResyncStarted {
        /// Leg index.
        leg: u32,
        /// The leg as given at creation.
        spec: String,
        /// Bytes to bring in sync (0 if not known yet).
        total: u64,
    },
    /// A resync progressed.
    ResyncProgress {
        /// Leg index.
        leg: u32,
        /// The leg as given at creation.
        spec: String,
        /// Bytes in sync so far.
        done: u64,
        /// Bytes to bring in sync.
        total: u64,
        /// `done` in percent of `total`, rounded down.
        percent: u8,
        /// Speed over the last seconds, in bytes per second; 0 if not
        /// known.
        speed: u64,
        /// Seconds left at that speed; `None` if not known.
        eta_s: Option<u64>,
    },
    /// A resync finished: the leg is in sync.
    ResyncFinished {
        /// Leg index.
        leg: u32,
        /// The leg as given at creation.
        spec: String,
        /// Bytes brought in sync.
        total: u64,
    },
    /// A resync ended without the leg getting in sync (it went down).
    ResyncStopped {
        /// Leg index.
        leg: u32,
        /// The leg as given at creation.
        spec: String,
        /// Bytes in sync when last seen.
        done: u64,
        /// Bytes to bring in sync.
        total: u64,
        /// `done` in percent of `total`.
        percent: u8,
    },
    /// The snapshot is taken and the monitor is listening.
    Ready {
        /// Devices watched.
        devices: usize,
    },
}

/// One change, without its time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    /// The device's name (absent from `ready`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// What happened.
    #[serde(flatten)]
    pub what: What,
}

impl Change {
    fn of(d: &Device, what: What) -> Change {
        Change {
            device: Some(d.name.clone()),
            what,
        }
    }
}

/// One output line: a change and when it was seen.
#[derive(Debug, Serialize)]
pub struct Line<'a> {
    /// RFC 3339, UTC, milliseconds.
    pub time: String,
    /// The change.
    #[serde(flatten)]
    pub change: &'a Change,
}

impl fmt::Display for Line<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ", self.time)?;
        if let Some(d) = &self.change.device {
            write!(f, "{d}: ")?;
        }
        let leg = |f: &mut fmt::Formatter<'_>, leg: &u32, spec: &str| {
            write!(f, "leg {leg} {}: ", one_line(spec))
        };
        match &self.change.what {
            What::Exists { status } => write!(f, "exists: {}", summary(status)),
            What::Created { status } => write!(f, "created: {}", summary(status)),
            What::Removed { path } => write!(f, "removed ({path})"),
            What::State { from, to } => write!(f, "{from} -> {to}"),
            What::LegAdded {
                leg: i,
                spec,
                state,
                problem,
                write_mostly,
            } => {
                leg(f, i, spec)?;
                write!(
                    f,
                    "added, {state}{}{}",
                    problem_suffix(problem.as_deref()),
                    write_mostly_suffix(*write_mostly)
                )
            }
            What::LegRemoved { leg: i, spec } => {
                leg(f, i, spec)?;
                f.write_str("removed")
            }
            What::LegState {
                leg: i,
                spec,
                from,
                to,
                problem,
            } => {
                leg(f, i, spec)?;
                write!(f, "{from} -> {to}{}", problem_suffix(problem.as_deref()))
            }
            What::LegProblem {
                leg: i,
                spec,
                problem,
            } => {
                leg(f, i, spec)?;
                write!(f, "problem: {}", one_line(problem))
            }
            What::LegWriteMostly {
                leg: i,
                spec,
                write_mostly,
            } => {
                leg(f, i, spec)?;
                f.write_str(if *write_mostly {
                    "write-mostly"
                } else {
                    "no longer write-mostly"
                })
            }
            What::Reconnected {
                leg: i,
                spec,
                connects,
            } => {
                leg(f, i, spec)?;
                write!(f, "reconnected (connection {connects})")
            }
            What::ResyncStarted {
                leg: i,
                spec,
                total,
            } => {
                leg(f, i, spec)?;
                match total {
                    0 => f.write_str("resync started"),
                    t => write!(f, "resync started, {} to copy", human_size(*t)),
                }
            }
            What::ResyncProgress {
                leg: i,
                spec,
                done,
                total,
                percent,
                speed,
                eta_s,
            } => {
                leg(f, i, spec)?;
                f.write_str(&progress(*percent, *done, *total, *speed, *eta_s))
            }
            What::ResyncFinished {
                leg: i,
                spec,
                total,
            } => {
                leg(f, i, spec)?;
                write!(f, "resync finished ({})", human_size(*total))
            }
            What::ResyncStopped {
                leg: i,
                spec,
                percent,
                ..
            } => {
                leg(f, i, spec)?;
                write!(f, "resync stopped at {percent}%")
            }
            What::Ready { devices: 1 } => f.write_str("ready, watching 1 device"),
            What::Ready { devices } => write!(f, "ready, watching {devices} devices"),
        }
    }
}

/// A device on one line: `/dev/dst0 mirror 64.0M ok; leg 0 /dev/sdb
/// in-sync; leg 1 nbd://h/x down (connection refused), write-mostly`.
fn summary(d: &Device) -> String {
    let mut s = format!("{} {} {} {}", d.path, d.target, human_size(d.size), d.state);
    for l in &d.legs {
        s.push_str(&format!(
            "; leg {} {} {}{}{}",
            l.index,
            one_line(&l.spec),
            leg_state(l),
            problem_suffix(shown_problem(l)),
            write_mostly_suffix(l.write_mostly)
        ));
    }
    s
}

/// What follows a leg's state when it has a problem: ` (connection
/// refused)`; empty without one.
fn problem_suffix(problem: Option<&str>) -> String {
    problem
        .map(|p| format!(" ({})", one_line(p)))
        .unwrap_or_default()
}

/// A leg's problem, unless the leg is healthy (the kernel keeps the last
/// problem after the leg recovers).
fn shown_problem(l: &Leg) -> Option<&str> {
    match l.state.get() {
        Some(LegState::InSync | LegState::Resyncing) => None,
        _ => l.problem.as_deref(),
    }
}

/// What the monitor knows of the devices, and when it last reported each
/// resync's progress.
#[derive(Debug, Default)]
pub struct Tracker {
    filter: Option<String>,
    devices: BTreeMap<String, Device>,
    progress: HashMap<(String, u32), Instant>,
}

impl Tracker {
    /// Watches every device, or only the one named `filter`.
    pub fn new(filter: Option<String>) -> Tracker {
        Tracker {
            filter,
            ..Tracker::default()
        }
    }

    fn wanted(&self, name: &str) -> bool {
        self.filter.as_deref().is_none_or(|f| f == name)
    }

    /// Takes the first snapshot: an `exists` line per device, then `ready`.
    pub fn start(&mut self, devices: Vec<Device>, now: Instant) -> Vec<Change> {
        let mut out = Vec::new();
        for d in devices {
            if !self.wanted(&d.name) {
                continue;
            }
            self.note_resyncs(&d, now);
            out.push(Change::of(&d, What::Exists { status: d.clone() }));
            self.devices.insert(d.name.clone(), d);
        }
        out.push(Change {
            device: None,
            what: What::Ready {
                devices: self.devices.len(),
            },
        });
        out
    }

    /// Compares a later snapshot (every device) with what is known.
    pub fn snapshot(&mut self, devices: Vec<Device>, now: Instant) -> Vec<Change> {
        let fresh: BTreeMap<String, Device> = devices
            .into_iter()
            .filter(|d| self.wanted(&d.name))
            .map(|d| (d.name.clone(), d))
            .collect();
        let mut out = Vec::new();
        let gone: Vec<String> = self
            .devices
            .keys()
            .filter(|n| !fresh.contains_key(*n))
            .cloned()
            .collect();
        for name in gone {
            if let Some(old) = self.devices.remove(&name) {
                out.push(self.removed(old));
            }
        }
        for d in fresh.into_values() {
            out.extend(self.update(d, now));
        }
        out
    }

    /// Takes in one event: a device message with what happened.
    pub fn event(&mut self, event: Option<Event>, d: Device, now: Instant) -> Vec<Change> {
        if !self.wanted(&d.name) {
            return Vec::new();
        }
        match event {
            Some(Event::Removed) => match self.devices.get(&d.name) {
                // A stale event about an earlier device of that name.
                Some(known) if !d.disk.is_empty() && known.disk != d.disk => Vec::new(),
                Some(_) => {
                    let old = self.devices.remove(&d.name).expect("known device");
                    vec![self.removed(old)]
                }
                None => Vec::new(),
            },
            Some(Event::Created) => self.update(d, now),
            // A change to a device not known: it was removed before the
            // snapshot, and its removal is queued.
            _ if !self.devices.contains_key(&d.name) => Vec::new(),
            _ => self.update(d, now),
        }
    }

    /// Whether a resync runs on a watched device.
    pub fn resyncing(&self) -> bool {
        self.devices
            .values()
            .any(|d| d.legs.iter().any(Leg::resyncing))
    }

    fn removed(&mut self, old: Device) -> Change {
        self.progress.retain(|(name, _), _| *name != old.name);
        Change::of(
            &old,
            What::Removed {
                path: old.path.clone(),
            },
        )
    }

    /// Records the new description of a device; returns what changed.
    fn update(&mut self, d: Device, now: Instant) -> Vec<Change> {
        let mut out = Vec::new();
        match self.devices.remove(&d.name) {
            Some(old) if old.index == d.index => out = self.diff(&old, &d, now),
            old => {
                if let Some(old) = old {
                    out.push(self.removed(old));
                }
                self.note_resyncs(&d, now);
                out.push(Change::of(&d, What::Created { status: d.clone() }));
            }
        }
        self.devices.insert(d.name.clone(), d);
        out
    }

    /// Resyncs already running count as reported now.
    fn note_resyncs(&mut self, d: &Device, now: Instant) {
        for l in d.legs.iter().filter(|l| l.resyncing()) {
            self.progress.insert((d.name.clone(), l.index), now);
        }
    }

    /// Legs are matched by their index, not their position: a leg removed
    /// leaves a gap, a leg added takes a new index.
    fn diff(&mut self, old: &Device, new: &Device, now: Instant) -> Vec<Change> {
        let mut out = Vec::new();
        for o in &old.legs {
            if !new.legs.iter().any(|n| n.index == o.index) {
                self.progress.remove(&(new.name.clone(), o.index));
                out.push(Change::of(
                    new,
                    What::LegRemoved {
                        leg: o.index,
                        spec: o.spec.clone(),
                    },
                ));
            }
        }
        for n in &new.legs {
            match old.legs.iter().find(|o| o.index == n.index) {
                Some(o) => self.leg_diff(new, o, n, now, &mut out),
                None => self.leg_added(new, n, now, &mut out),
            }
        }
        if old.state != new.state {
            out.push(Change::of(
                new,
                What::State {
                    from: old.state,
                    to: new.state,
                },
            ));
        }
        out
    }

    /// A leg new to the device: its line, and its resync's start.
    fn leg_added(&mut self, d: &Device, n: &Leg, now: Instant, out: &mut Vec<Change>) {
        out.push(Change::of(
            d,
            What::LegAdded {
                leg: n.index,
                spec: n.spec.clone(),
                state: n.state,
                problem: shown_problem(n).map(str::to_owned),
                write_mostly: n.write_mostly,
            },
        ));
        if n.resyncing() {
            self.resync_started(d, n, now, out);
        }
    }

    fn resync_started(&mut self, d: &Device, n: &Leg, now: Instant, out: &mut Vec<Change>) {
        self.progress.insert((d.name.clone(), n.index), now);
        out.push(Change::of(
            d,
            What::ResyncStarted {
                leg: n.index,
                spec: n.spec.clone(),
                total: n.resync_total,
            },
        ));
    }

    fn leg_diff(&mut self, d: &Device, o: &Leg, n: &Leg, now: Instant, out: &mut Vec<Change>) {
        let (leg, spec) = (n.index, n.spec.clone());
        let state_changed = o.state != n.state;
        if state_changed {
            out.push(Change::of(
                d,
                What::LegState {
                    leg,
                    spec: spec.clone(),
                    from: o.state,
                    to: n.state,
                    problem: shown_problem(n).map(str::to_owned),
                },
            ));
        } else if n.problem != o.problem {
            if let Some(problem) = shown_problem(n) {
                out.push(Change::of(
                    d,
                    What::LegProblem {
                        leg,
                        spec: spec.clone(),
                        problem: problem.to_owned(),
                    },
                ));
            }
        }
        if let (Some(before), Some(connects)) = (o.connects, n.connects) {
            // The first connection shows as the state change it causes.
            if !state_changed && before > 0 && connects > before {
                out.push(Change::of(
                    d,
                    What::Reconnected {
                        leg,
                        spec: spec.clone(),
                        connects,
                    },
                ));
            }
        }
        if o.write_mostly != n.write_mostly {
            out.push(Change::of(
                d,
                What::LegWriteMostly {
                    leg,
                    spec: spec.clone(),
                    write_mostly: n.write_mostly,
                },
            ));
        }
        let key = (d.name.clone(), leg);
        match (o.resyncing(), n.resyncing()) {
            (false, true) => self.resync_started(d, n, now, out),
            (true, false) => {
                self.progress.remove(&key);
                let what = if n.state.get() == Some(LegState::InSync) {
                    What::ResyncFinished {
                        leg,
                        spec,
                        total: o.resync_total,
                    }
                } else {
                    What::ResyncStopped {
                        leg,
                        spec,
                        done: o.resync_done,
                        total: o.resync_total,
                        percent: o.resync_percent(),
                    }
                };
                out.push(Change::of(d, what));
            }
            (true, true) if n.resync_total > 0 && n.resync_done != o.resync_done => {
                let due = self
                    .progress
                    .get(&key)
                    .is_none_or(|last| now.saturating_duration_since(*last) >= PROGRESS_EVERY);
                if due {
                    self.progress.insert(key, now);
                    out.push(Change::of(
                        d,
                        What::ResyncProgress {
                            leg,
                            spec,
                            done: n.resync_done.min(n.resync_total),
                            total: n.resync_total,
                            percent: n.resync_percent(),
                            speed: n.resync_speed,
                            eta_s: n.resync_eta(),
                        },
                    ));
                }
            }
            _ => {}
        }
    }
}

/// Why the monitor stopped.
#[derive(Debug)]
pub enum Stop {
    /// Talking to the kernel failed.
    Netlink(netlink::Error),
    /// The module was unloaded.
    Unloaded,
    /// Writing the output failed.
    Output(io::Error),
}

impl From<netlink::Error> for Stop {
    fn from(e: netlink::Error) -> Self {
        Stop::Netlink(e)
    }
}

/// Runs `dstctl monitor` until a signal ends the process; returns early
/// only on failure, or once nobody reads the output.
pub fn run(dst: &mut Dst, name: Option<String>, json: bool) -> Result<(), Stop> {
    exit_on_signals();
    let mut events = GenlSocket::open().map_err(netlink::Error::Io)?;
    events.set_recv_buffer(EVENTS_BUFFER);
    let family = dst.family();
    // Look everything up before joining: afterwards notifications could
    // come between a request and its answer.
    let group = dst.events_group()?;
    let ctrl_notify = events
        .lookup("nlctrl", 1)
        .ok()
        .and_then(|(_, groups)| groups.into_iter().find(|g| g.name == CTRL_MCGRP_NOTIFY));
    events.join(group)?;
    if let Some(g) = ctrl_notify {
        // Best effort: only to notice the module being unloaded.
        let _ = events.join(g.id);
    }

    let mut out = Output {
        out: io::stdout().lock(),
        json,
    };
    let mut tracker = Tracker::new(name);
    let mut last_snapshot = Instant::now();
    let devices = dst.list()?;
    if !out.emit(&tracker.start(devices, Instant::now()))? {
        return Ok(());
    }
    loop {
        let timeout = tracker
            .resyncing()
            .then(|| PROGRESS_EVERY.saturating_sub(last_snapshot.elapsed()));
        let changes = if timeout == Some(Duration::ZERO) || !readable(events.as_fd(), timeout)? {
            if timeout.is_none() {
                continue; // interrupted
            }
            last_snapshot = Instant::now();
            tracker.snapshot(dst.list()?, Instant::now())
        } else {
            match events.notifications() {
                Ok(batch) => {
                    let mut changes = Vec::new();
                    for n in batch {
                        if n.family == family.id && n.cmd == cmd::EVENT {
                            match decode_event(&n) {
                                Ok((event, d)) => {
                                    changes.extend(tracker.event(event, d, Instant::now()))
                                }
                                // Not understood: as good as lost.
                                Err(_) => {
                                    last_snapshot = Instant::now();
                                    changes.extend(tracker.snapshot(dst.list()?, Instant::now()));
                                }
                            }
                        } else if unloaded(&n) {
                            return Err(Stop::Unloaded);
                        }
                    }
                    changes
                }
                // Notifications were lost: compare a new snapshot.
                Err(netlink::Error::Io(e)) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    last_snapshot = Instant::now();
                    tracker.snapshot(dst.list()?, Instant::now())
                }
                Err(e) => return Err(e.into()),
            }
        };
        if !out.emit(&changes)? {
            return Ok(());
        }
    }
}

/// The device and the event of a `cmd::EVENT` message.
fn decode_event(n: &Notification) -> Result<(Option<Event>, Device), netlink::Error> {
    let event = match Attrs::new(&n.attrs).find(dev::EVENT)? {
        Some(a) => Event::from_u8(a.u8()?),
        None => None,
    };
    Ok((event, Device::decode(&n.attrs)?))
}

/// Whether a notification says that the dst family was unregistered.
fn unloaded(n: &Notification) -> bool {
    n.family == GENL_ID_CTRL
        && n.cmd == CTRL_CMD_DELFAMILY
        && matches!(
            Attrs::new(&n.attrs).find(CTRL_ATTR_FAMILY_NAME),
            Ok(Some(a)) if a.str() == Ok(FAMILY_NAME)
        )
}

/// Where the lines go.
struct Output<W: Write> {
    out: W,
    json: bool,
}

impl<W: Write> Output<W> {
    /// Writes and flushes one line per change; `false` once nobody reads.
    fn emit(&mut self, changes: &[Change]) -> Result<bool, Stop> {
        for change in changes {
            let line = Line {
                time: rfc3339(SystemTime::now()),
                change,
            };
            let mut text = if self.json {
                serde_json::to_string(&line).expect("JSON serialization")
            } else {
                line.to_string()
            };
            text.push('\n');
            match self
                .out
                .write_all(text.as_bytes())
                .and_then(|()| self.out.flush())
            {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(false),
                Err(e) => return Err(Stop::Output(e)),
            }
        }
        Ok(true)
    }
}

/// Waits until `fd` is readable or `timeout` passes (`None`: no limit).
/// `false` on timeout or interruption.
fn readable(fd: BorrowedFd<'_>, timeout: Option<Duration>) -> Result<bool, Stop> {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = timeout.map_or(-1, |t| {
        i32::try_from(t.as_millis().max(1)).unwrap_or(i32::MAX)
    });
    // SAFETY: `p` is one valid pollfd, borrowed for the call only; `fd` is
    // open for the lifetime of the borrow.
    let n = unsafe { libc::poll(&mut p, 1, ms) };
    if n < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(false);
        }
        return Err(Stop::Netlink(netlink::Error::Io(e)));
    }
    Ok(n > 0)
}

/// SIGINT and SIGTERM end the process with exit code 0.  Every line is
/// flushed when written, so nothing is lost.
fn exit_on_signals() {
    extern "C" fn exit_now(_: libc::c_int) {
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(0) }
    }
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: installs a handler that only calls an
        // async-signal-safe function.
        unsafe {
            libc::signal(
                sig,
                exit_now as extern "C" fn(libc::c_int) as libc::sighandler_t,
            );
        }
    }
}

/// `2024-05-01T12:34:56.789Z`
pub fn rfc3339(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3_600,
        rem / 60 % 60,
        rem % 60,
        since.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn leg(index: u32, spec: &str, state: LegState) -> Leg {
        let remote = spec.starts_with("nbd://");
        Leg {
            index,
            spec: spec.into(),
            size: 64 << 20,
            state: Wire::new(state as u8),
            kind: Wire::new(if remote { 2 } else { 1 }),
            addr: remote.then(|| "10.0.0.2:10809".into()),
            export: remote.then(|| "disk".into()),
            connects: remote.then_some(1),
            ..Leg::default()
        }
    }

    fn device(name: &str, index: u32, state: DevState) -> Device {
        Device {
            name: name.into(),
            disk: format!("dst{index}"),
            path: format!("/dev/dst{index}"),
            index,
            target: Wire::new(2),
            size: 64 << 20,
            state: Wire::new(state as u8),
            legs: vec![
                leg(0, "/dev/sdb", LegState::InSync),
                leg(1, "nbd://10.0.0.2/disk", LegState::InSync),
            ],
            ..Device::default()
        }
    }

    /// The text lines of some changes, without their time.
    fn text(changes: &[Change]) -> Vec<String> {
        changes
            .iter()
            .map(|change| {
                let line = Line {
                    time: "T".into(),
                    change,
                }
                .to_string();
                line.strip_prefix("T ").unwrap().to_owned()
            })
            .collect()
    }

    fn started(t: &mut Tracker, devices: Vec<Device>, now: Instant) -> Vec<String> {
        text(&t.start(devices, now))
    }

    #[test]
    fn snapshot_lines() {
        let now = Instant::now();
        let mut t = Tracker::new(None);
        let mut r2 = device("r2", 1, DevState::Degraded);
        r2.legs[1].state = Wire::new(LegState::Down as u8);
        r2.legs[1].problem = Some("connection refused".into());
        assert_eq!(
            started(&mut t, vec![device("r1", 0, DevState::Ok), r2.clone()], now),
            [
                "r1: exists: /dev/dst0 mirror 64.0M ok; leg 0 /dev/sdb in-sync; \
                 leg 1 nbd://10.0.0.2/disk in-sync",
                "r2: exists: /dev/dst1 mirror 64.0M degraded; leg 0 /dev/sdb in-sync; \
                 leg 1 nbd://10.0.0.2/disk down (connection refused)",
                "ready, watching 2 devices",
            ]
        );
        let mut t = Tracker::new(Some("r2".into()));
        let lines = started(&mut t, vec![device("r1", 0, DevState::Ok), r2], now);
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1], "ready, watching 1 device");
        // Changes to other devices are not shown.
        let mut r1 = device("r1", 0, DevState::Failed);
        r1.legs[0].state = Wire::new(LegState::Faulty as u8);
        assert_eq!(t.event(Some(Event::Changed), r1, now), []);
        assert_eq!(
            t.event(Some(Event::Created), device("r3", 2, DevState::Ok), now),
            []
        );
    }

    #[test]
    fn leg_down_and_back() {
        let now = Instant::now();
        let mut t = Tracker::new(None);
        t.start(vec![device("r1", 0, DevState::Ok)], now);

        let mut down = device("r1", 0, DevState::Degraded);
        down.legs[1].state = Wire::new(LegState::Down as u8);
        down.legs[1].problem = Some("connection refused".into());
        assert_eq!(
            text(&t.event(Some(Event::Changed), down.clone(), now)),
            [
                "r1: leg 1 nbd://10.0.0.2/disk: in-sync -> down (connection refused)",
                "r1: ok -> degraded",
            ]
        );
        // The same message again: nothing changed.
        assert_eq!(t.event(Some(Event::Changed), down.clone(), now), []);

        // A new problem while down.
        let mut still = down.clone();
        still.legs[1].problem = Some("connection timed out".into());
        assert_eq!(
            text(&t.event(Some(Event::Changed), still.clone(), now)),
            ["r1: leg 1 nbd://10.0.0.2/disk: problem: connection timed out"]
        );

        // Back, and a resync starts; the old problem is not repeated.
        let mut back = still.clone();
        back.legs[1].state = Wire::new(LegState::Resyncing as u8);
        back.legs[1].connects = Some(2);
        back.legs[1].resync_total = 64 << 20;
        assert_eq!(
            text(&t.event(Some(Event::Changed), back.clone(), now)),
            [
                "r1: leg 1 nbd://10.0.0.2/disk: down -> resyncing",
                "r1: leg 1 nbd://10.0.0.2/disk: resync started, 64.0M to copy",
            ]
        );
        assert!(t.resyncing());

        // Progress: at most every PROGRESS_EVERY.
        let mut p = back.clone();
        p.legs[1].resync_done = 10 << 20;
        assert_eq!(t.event(None, p.clone(), now + Duration::from_secs(1)), []);
        p.legs[1].resync_done = 32 << 20;
        assert_eq!(
            text(&t.snapshot(vec![p.clone()], now + PROGRESS_EVERY)),
            ["r1: leg 1 nbd://10.0.0.2/disk: resync 50% (32.0M of 64.0M)"]
        );
        p.legs[1].resync_done = 48 << 20;
        let soon = now + PROGRESS_EVERY + Duration::from_secs(4);
        assert_eq!(t.event(Some(Event::Changed), p.clone(), soon), []);
        // With the speed, once the kernel measured it: and the ETA.
        p.legs[1].resync_done = 56 << 20;
        p.legs[1].resync_speed = 2 << 20;
        let changes = t.event(Some(Event::Changed), p.clone(), now + 2 * PROGRESS_EVERY);
        assert_eq!(
            text(&changes),
            ["r1: leg 1 nbd://10.0.0.2/disk: resync 87% (56.0M of 64.0M), 2.0M/s, ETA 0:04"]
        );
        assert!(matches!(
            changes[0].what,
            What::ResyncProgress { speed, eta_s: Some(4), .. } if speed == 2 << 20
        ));

        // Finished: every line, whatever the time.
        let mut done = p.clone();
        done.state = Wire::new(DevState::Ok as u8);
        done.legs[1].state = Wire::new(LegState::InSync as u8);
        done.legs[1].resync_done = 0;
        done.legs[1].resync_total = 0;
        assert_eq!(
            text(&t.event(Some(Event::Changed), done.clone(), soon)),
            [
                "r1: leg 1 nbd://10.0.0.2/disk: resyncing -> in-sync",
                "r1: leg 1 nbd://10.0.0.2/disk: resync finished (64.0M)",
                "r1: degraded -> ok",
            ]
        );
        assert!(!t.resyncing());

        // A reconnection seen without a state change (a quick flap).
        let mut flap = done.clone();
        flap.legs[1].connects = Some(3);
        assert_eq!(
            text(&t.event(Some(Event::Changed), flap, soon)),
            ["r1: leg 1 nbd://10.0.0.2/disk: reconnected (connection 3)"]
        );
    }

    #[test]
    fn detached_and_attached() {
        let now = Instant::now();
        let mut t = Tracker::new(None);
        t.start(vec![device("r1", 0, DevState::Ok)], now);
        let mut detached = device("r1", 0, DevState::Degraded);
        detached.legs[1].state = Wire::new(LegState::Detached as u8);
        assert_eq!(
            text(&t.event(Some(Event::Changed), detached.clone(), now)),
            [
                "r1: leg 1 nbd://10.0.0.2/disk: in-sync -> detached",
                "r1: ok -> degraded",
            ]
        );
        let mut attached = detached.clone();
        attached.legs[1].state = Wire::new(LegState::Resyncing as u8);
        attached.legs[1].resync_total = 1 << 20;
        assert_eq!(
            text(&t.event(Some(Event::Changed), attached, now)),
            [
                "r1: leg 1 nbd://10.0.0.2/disk: detached -> resyncing",
                "r1: leg 1 nbd://10.0.0.2/disk: resync started, 1.0M to copy",
            ]
        );
    }

    #[test]
    fn legs_added_and_removed() {
        let now = Instant::now();
        let mut t = Tracker::new(None);
        t.start(vec![device("r1", 0, DevState::Ok)], now);

        // Added: copied in full, so resyncing at once.
        let mut added = device("r1", 0, DevState::Degraded);
        let mut l = leg(2, "/dev/sdd", LegState::Resyncing);
        l.resync_total = 64 << 20;
        added.legs.push(l);
        assert_eq!(
            text(&t.event(Some(Event::Changed), added.clone(), now)),
            [
                "r1: leg 2 /dev/sdd: added, resyncing",
                "r1: leg 2 /dev/sdd: resync started, 64.0M to copy",
                "r1: ok -> degraded",
            ]
        );
        assert!(t.resyncing());
        // Its progress waits its turn like any other.
        added.legs[2].resync_done = 8 << 20;
        assert_eq!(t.event(None, added.clone(), now), []);

        // Leg 0 removed: the others keep their indexes, and are not
        // mistaken for one another.
        let mut removed = added.clone();
        removed.legs.remove(0);
        assert_eq!(
            text(&t.event(Some(Event::Changed), removed.clone(), now)),
            ["r1: leg 0 /dev/sdb: removed"]
        );
        let mut done = removed.clone();
        done.state = Wire::new(DevState::Ok as u8);
        done.legs[1].state = Wire::new(LegState::InSync as u8);
        (done.legs[1].resync_done, done.legs[1].resync_total) = (0, 0);
        assert_eq!(
            text(&t.event(Some(Event::Changed), done.clone(), now)),
            [
                "r1: leg 2 /dev/sdd: resyncing -> in-sync",
                "r1: leg 2 /dev/sdd: resync finished (64.0M)",
                "r1: degraded -> ok",
            ]
        );
        assert!(!t.resyncing());

        // A remote leg added while its server is away; seen in a snapshot
        // together with a removal.
        let mut next = done.clone();
        next.legs.remove(1);
        let mut l = leg(3, "nbd://10.0.0.3/disk", LegState::Connecting);
        l.problem = Some("connection refused".into());
        next.legs.push(l);
        let changes = t.snapshot(vec![next], now);
        assert_eq!(
            text(&changes),
            [
                "r1: leg 2 /dev/sdd: removed",
                "r1: leg 3 nbd://10.0.0.3/disk: added, connecting (connection refused)",
            ]
        );
        assert_eq!(
            serde_json::to_value(&changes[1]).unwrap(),
            json!({"device": "r1", "event": "leg-added", "leg": 3,
                   "spec": "nbd://10.0.0.3/disk", "state": "connecting",
                   "problem": "connection refused", "write_mostly": false})
        );
        assert_eq!(
            serde_json::to_value(&changes[0]).unwrap(),
            json!({"device": "r1", "event": "leg-removed", "leg": 2, "spec": "/dev/sdd"})
        );
    }

    #[test]
    fn write_mostly_toggled() {
        let now = Instant::now();
        let mut t = Tracker::new(None);
        t.start(vec![device("r1", 0, DevState::Ok)], now);

        // dstctl set r1 --write-mostly 1
        let mut wm = device("r1", 0, DevState::Ok);
        wm.legs[1].write_mostly = true;
        let changes = t.event(Some(Event::Changed), wm.clone(), now);
        assert_eq!(
            text(&changes),
            ["r1: leg 1 nbd://10.0.0.2/disk: write-mostly"]
        );
        assert_eq!(
            serde_json::to_value(&changes[0]).unwrap(),
            json!({"device": "r1", "event": "leg-write-mostly", "leg": 1,
                   "spec": "nbd://10.0.0.2/disk", "write_mostly": true})
        );
        // The same message again: nothing changed.
        assert_eq!(t.event(Some(Event::Changed), wm.clone(), now), []);

        // Together with a state change, in a snapshot: one line each.
        let mut down = wm.clone();
        down.state = Wire::new(DevState::Degraded as u8);
        down.legs[1].state = Wire::new(LegState::Down as u8);
        down.legs[1].problem = Some("connection refused".into());
        down.legs[1].write_mostly = false;
        let changes = t.snapshot(vec![down.clone()], now);
        assert_eq!(
            text(&changes),
            [
                "r1: leg 1 nbd://10.0.0.2/disk: in-sync -> down (connection refused)",
                "r1: leg 1 nbd://10.0.0.2/disk: no longer write-mostly",
                "r1: ok -> degraded",
            ]
        );
        let line = Line {
            time: "2026-01-02T03:04:05.006Z".into(),
            change: &changes[1],
        };
        assert_eq!(
            serde_json::to_string(&line).unwrap(),
            r#"{"time":"2026-01-02T03:04:05.006Z","device":"r1","event":"leg-write-mostly","leg":1,"spec":"nbd://10.0.0.2/disk","write_mostly":false}"#
        );

        // A leg added write-mostly: said on its line, not as a change.
        let mut added = down.clone();
        let mut l = leg(2, "/dev/sdd", LegState::InSync);
        l.write_mostly = true;
        added.legs.push(l);
        let changes = t.event(Some(Event::Changed), added, now);
        assert_eq!(
            text(&changes),
            ["r1: leg 2 /dev/sdd: added, in-sync, write-mostly"]
        );
        assert_eq!(
            serde_json::to_value(&changes[0]).unwrap(),
            json!({"device": "r1", "event": "leg-added", "leg": 2, "spec": "/dev/sdd",
                   "state": "in-sync", "problem": null, "write_mostly": true})
        );

        // A device created with a write-mostly leg: on its summary, after
        // the state and any problem, as in status.
        let mut r2 = device("r2", 1, DevState::Degraded);
        r2.legs[1].state = Wire::new(LegState::Connecting as u8);
        r2.legs[1].problem = Some("connection refused".into());
        r2.legs[1].write_mostly = true;
        assert_eq!(
            text(&t.event(Some(Event::Created), r2, now)),
            [
                "r2: created: /dev/dst1 mirror 64.0M degraded; leg 0 /dev/sdb in-sync; \
                 leg 1 nbd://10.0.0.2/disk connecting (connection refused), write-mostly"
            ]
        );
    }

    #[test]
    fn resync_interrupted() {
        let now = Instant::now();
        let mut t = Tracker::new(None);
        let mut r = device("r1", 0, DevState::Degraded);
        r.legs[1].state = Wire::new(LegState::Resyncing as u8);
        r.legs[1].resync_done = 16 << 20;
        r.legs[1].resync_total = 64 << 20;
        t.start(vec![r.clone()], now);
        assert!(t.resyncing());
        // Progress of a resync running at the start waits its turn too.
        r.legs[1].resync_done = 20 << 20;
        assert_eq!(t.event(None, r.clone(), now + Duration::from_secs(1)), []);
        let mut down = r.clone();
        down.legs[1].state = Wire::new(LegState::Down as u8);
        down.legs[1].resync_total = 0;
        down.legs[1].resync_done = 0;
        down.legs[1].problem = Some("connection reset by peer".into());
        assert_eq!(
            text(&t.event(Some(Event::Changed), down, now)),
            [
                "r1: leg 1 nbd://10.0.0.2/disk: resyncing -> down (connection reset by peer)",
                "r1: leg 1 nbd://10.0.0.2/disk: resync stopped at 31%",
            ]
        );
    }

    #[test]
    fn created_and_removed() {
        let now = Instant::now();
        let mut t = Tracker::new(None);
        t.start(vec![device("r1", 0, DevState::Ok)], now);

        // Queued before the snapshot: already known.
        assert_eq!(
            t.event(Some(Event::Created), device("r1", 0, DevState::Ok), now),
            []
        );
        // About a device gone before the snapshot.
        assert_eq!(
            t.event(Some(Event::Changed), device("gone", 5, DevState::Ok), now),
            []
        );
        let removed = |name: &str, index: u32| Device {
            name: name.into(),
            index,
            disk: format!("dst{index}"),
            path: format!("/dev/dst{index}"),
            ..Device::default()
        };
        assert_eq!(t.event(Some(Event::Removed), removed("gone", 5), now), []);
        // About an earlier r1.
        assert_eq!(t.event(Some(Event::Removed), removed("r1", 7), now), []);

        assert_eq!(
            text(&t.event(Some(Event::Created), device("r2", 1, DevState::Ok), now)),
            [
                "r2: created: /dev/dst1 mirror 64.0M ok; leg 0 /dev/sdb in-sync; \
              leg 1 nbd://10.0.0.2/disk in-sync"
            ]
        );
        assert_eq!(
            text(&t.event(Some(Event::Removed), removed("r1", 0), now)),
            ["r1: removed (/dev/dst0)"]
        );
        assert_eq!(t.event(Some(Event::Removed), removed("r1", 0), now), []);

        // A snapshot after lost events: r2 replaced, r3 new.
        let lines = text(&t.snapshot(
            vec![device("r2", 4, DevState::Ok), device("r3", 2, DevState::Ok)],
            now,
        ));
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0], "r2: removed (/dev/dst1)");
        assert!(lines[1].starts_with("r2: created: /dev/dst4 "));
        assert!(lines[2].starts_with("r3: created: /dev/dst2 "));
        assert_eq!(
            text(&t.snapshot(Vec::new(), now)),
            ["r2: removed (/dev/dst4)", "r3: removed (/dev/dst2)"]
        );
    }

    #[test]
    fn json_lines() {
        let now = Instant::now();
        let mut t = Tracker::new(None);
        let changes = t.start(vec![device("r1", 0, DevState::Ok)], now);
        let mut down = device("r1", 0, DevState::Degraded);
        down.legs[1].state = Wire::new(LegState::Down as u8);
        down.legs[1].problem = Some("connection refused".into());
        let changes: Vec<Change> = changes
            .into_iter()
            .chain(t.event(Some(Event::Changed), down, now))
            .collect();
        let lines: Vec<serde_json::Value> = changes
            .iter()
            .map(|change| {
                let line = Line {
                    time: "2026-01-02T03:04:05.006Z".into(),
                    change,
                };
                let text = serde_json::to_string(&line).unwrap();
                assert!(
                    text.starts_with(r#"{"time":"2026-01-02T03:04:05.006Z","#),
                    "{text}"
                );
                serde_json::from_str(&text).unwrap()
            })
            .collect();
        assert_eq!(lines[0]["device"], "r1");
        assert_eq!(lines[0]["event"], "exists");
        assert_eq!(lines[0]["status"]["legs"][1]["kind"], "remote");
        assert_eq!(
            lines[1],
            json!({"time": "2026-01-02T03:04:05.006Z", "event": "ready", "devices": 1})
        );
        assert_eq!(
            lines[2],
            json!({
                "time": "2026-01-02T03:04:05.006Z", "device": "r1", "event": "leg-state",
                "leg": 1, "spec": "nbd://10.0.0.2/disk", "from": "in-sync", "to": "down",
                "problem": "connection refused"
            })
        );
        assert_eq!(
            lines[3],
            json!({
                "time": "2026-01-02T03:04:05.006Z", "device": "r1", "event": "state",
                "from": "ok", "to": "degraded"
            })
        );
        let progress = Change {
            device: Some("r1".into()),
            what: What::ResyncProgress {
                leg: 1,
                spec: "s".into(),
                done: 5,
                total: 10,
                percent: 50,
                speed: 2,
                eta_s: Some(3),
            },
        };
        assert_eq!(
            serde_json::to_value(&progress).unwrap(),
            json!({"device": "r1", "event": "resync-progress", "leg": 1, "spec": "s",
                   "done": 5, "total": 10, "percent": 50, "speed": 2, "eta_s": 3})
        );
        // The text shows the ETA the line carries.
        assert_eq!(
            text(&[progress]),
            ["r1: leg 1 s: resync 50% (5B of 10B), 2B/s, ETA 0:03"]
        );
    }

    #[test]
    fn event_decoding() {
        use crate::netlink::Buf;
        use dst_proto::nlattr::Writer;

        let mut b = Buf::default();
        let mut w = Writer::new(&mut b);
        w.put_str(dev::NAME, "r1").unwrap();
        w.put_u32(dev::INDEX, 0).unwrap();
        w.put_str(dev::DISK, "dst0").unwrap();
        w.put_u8(dev::EVENT, Event::Removed as u8).unwrap();
        let n = Notification {
            family: 0x20,
            cmd: cmd::EVENT,
            attrs: b.0,
        };
        let (event, d) = decode_event(&n).unwrap();
        assert_eq!(event, Some(Event::Removed));
        assert_eq!((d.name.as_str(), d.path.as_str()), ("r1", "/dev/dst0"));

        let mut b = Buf::default();
        Writer::new(&mut b)
            .put_str(CTRL_ATTR_FAMILY_NAME, "dst")
            .unwrap();
        let mut n = Notification {
            family: GENL_ID_CTRL,
            cmd: CTRL_CMD_DELFAMILY,
            attrs: b.0,
        };
        assert!(unloaded(&n));
        n.cmd = 1; // CTRL_CMD_NEWFAMILY
        assert!(!unloaded(&n));
    }

    #[test]
    fn timestamps() {
        let at = |secs: u64, ms: u64| {
            rfc3339(UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(ms))
        };
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(at(951_782_400, 5), "2000-02-29T00:00:00.005Z");
        assert_eq!(at(1_709_251_199, 999), "2024-02-29T23:59:59.999Z");
        assert_eq!(at(4_102_444_800, 0), "2100-01-01T00:00:00.000Z");
    }
}
