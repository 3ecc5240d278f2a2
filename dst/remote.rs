// SPDX-License-Identifier: GPL-2.0

//! Remote legs: an NBD client in the kernel.
//!
//! A remote leg holds one TCP connection to an NBD server.  Requests are
//! tagged with a cookie and pipelined (up to [`MAX_INFLIGHT`] at a time);
//! nothing waits on the socket: four jobs on the module's workqueue do all
//! the work, woken by socket callbacks and by each other:
//!
//! - *send*: moves submitted bios to the queue and sends what fits;
//! - *recv*: reads replies (and read data, straight into the bios' pages)
//!   and ends their bios;
//! - *tick*: fails the connection when a request is older than the
//!   timeout, and fails held I/O once the dead time has passed;
//! - *connect*: connects and runs the handshake, with exponential backoff.
//!
//! When the connection fails, the requests in flight go back to the front
//! of the queue, in the order they were sent.  What happens to them then is
//! the device's choice ([`Policy`]): a mirror with other legs in sync takes
//! the leg out and has its I/O failed at once (it will resync the leg); a
//! linear device, or a mirror whose last in-sync leg this is, holds the I/O
//! and re-sends it after the reconnect, or fails it when the dead time is
//! over.  Every byte from the server is checked: a reply that does not
//! match a request in flight, or is malformed, drops the connection.

use core::net::SocketAddr;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU8, Ordering};

use kernel::new_mutex;
use kernel::prelude::*;
use kernel::str::CStr;
use kernel::sync::{Arc, ArcBorrow, Mutex};

use crate::bio::{LegBio, LegBioQueue, LegBioStack, Op};
use crate::device::Device;
use crate::errno;
use crate::glue;
use crate::job::{impl_has_job, Job, JobRun};
use crate::msg::{refuse, Msg, Refusal};
use crate::proto::nbd::{self, cmd, cmdflag, tflag, ExportInfo, HandshakeError, Request, SimpleReply};
use crate::socket::{SockEvent, SockEvents, Socket};

/// Most requests in flight on one connection.
pub(crate) const MAX_INFLIGHT: usize = 64;

/// First wait before reconnecting, in milliseconds.
const BACKOFF_MIN_MS: u32 = 100;

/// Transmission flags a reconnect must keep: the device relies on them.
const CAPS: u16 = tflag::SEND_FLUSH | tflag::SEND_FUA | tflag::SEND_TRIM | tflag::SEND_WRITE_ZEROES;

/// Settings of a remote leg.
pub(crate) struct RemoteConfig {
    /// Where the server is.
    pub(crate) addr: SocketAddr,
    /// The export's name.
    pub(crate) export: KVec<u8>,
    /// A request older than this fails the connection.
    pub(crate) timeout_ms: u32,
    /// How long held I/O waits for a down leg.
    pub(crate) dead_ms: u32,
    /// Longest wait between reconnection attempts.
    pub(crate) backoff_max_ms: u32,
}

/// What becomes of I/O for a leg whose connection is down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Policy {
    /// Keep it, re-send it after the reconnect, fail it after the dead
    /// time.
    Hold,
    /// Fail it at once with `ENOTCONN`: the device does without the leg.
    FailFast,
}

/// State of the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Link {
    /// Connected; requests flow.
    Up = 0,
    /// Lost; reconnecting.
    Down = 1,
    /// Stopped for good (the device is going away).
    Stopped = 2,
}

impl Link {
    fn from_u8(v: u8) -> Link {
        match v {
            0 => Link::Up,
            1 => Link::Down,
            _ => Link::Stopped,
        }
    }
}

/// A snapshot of a remote leg for `dstctl status`.
pub(crate) struct RemoteStatus {
    /// Successful connections so far.
    pub(crate) connects: u32,
    /// The server's transmission flags.
    pub(crate) flags: u16,
    /// The last problem, if any.
    pub(crate) problem: Msg,
}

/// A request in flight.
struct Slot {
    bio: Option<LegBio>,
    cookie: u64,
    seq: u64,
    sent_ms: u64,
    reads: bool,
}

/// A request being sent.
struct Tx {
    slot: usize,
    hdr: [u8; Request::SIZE],
    hdr_done: usize,
    data: u32,
    data_done: u32,
}

/// Where reading replies stands.
enum Rx {
    Header { buf: [u8; SimpleReply::SIZE], got: usize },
    Data { slot: usize, got: u32, len: u32 },
}

/// The connection and its requests; only jobs (process context) touch it.
struct Conn {
    sock: Option<Socket>,
    info: ExportInfo,
    queue: LegBioQueue,
    slots: KVec<Slot>,
    free: u64,
    tx: Option<Tx>,
    rx: Rx,
    seq: u64,
    gen: u64,
    down_since_ms: u64,
    backoff_ms: u32,
    problem: Msg,
}

/// Job ids.
const SEND: u64 = 0;
const RECV: u64 = 1;
const TICK: u64 = 2;
const CONNECT: u64 = 3;

/// A remote leg.
#[pin_data]
pub(crate) struct Remote {
    cfg: RemoteConfig,
    link: AtomicU8,
    hold: AtomicBool,
    dead: AtomicBool,
    inflight: AtomicU32,
    connects: AtomicU32,
    submitted: LegBioStack,
    #[pin]
    conn: Mutex<Conn>,
    #[pin]
    owner: Mutex<Option<(Arc<Device>, usize)>>,
    #[pin]
    send_job: Job<Remote, SEND>,
    #[pin]
    recv_job: Job<Remote, RECV>,
    #[pin]
    tick_job: Job<Remote, TICK>,
    #[pin]
    connect_job: Job<Remote, CONNECT>,
}

impl_has_job!(Remote, SEND, send_job);
impl_has_job!(Remote, RECV, recv_job);
impl_has_job!(Remote, TICK, tick_job);
impl_has_job!(Remote, CONNECT, connect_job);

fn now_ms() -> u64 {
    // SAFETY: reads the monotonic clock.
    unsafe { glue::dst_now_ms() }
}

/// Connects to the server and runs the handshake.
fn dial(cfg: &RemoteConfig) -> Result<(Socket, ExportInfo), Msg> {
    let sock = Socket::connect(&cfg.addr, cfg.timeout_ms).map_err(connect_msg)?;
    match nbd::client_handshake(&mut sock.blocking(), &cfg.export) {
        Ok(info) => Ok((sock, info)),
        Err(HandshakeError::Io(e)) => Err(connect_msg(e)),
        Err(HandshakeError::BadMagic) => Err(Msg::new(format_args!("not an NBD server (bad magic)"))),
        Err(HandshakeError::NotFixedNewstyle) => {
            Err(Msg::new(format_args!("server lacks the fixed newstyle handshake")))
        }
        Err(HandshakeError::Refused { reply }) => Err(Msg::new(format_args!(
            "server refused the export: {}",
            nbd::rep::describe(reply)
        ))),
        Err(HandshakeError::Protocol(why)) => Err(Msg::new(format_args!("handshake: {}", why))),
        Err(HandshakeError::NameTooLong) => Err(Msg::new(format_args!("export name too long"))),
    }
}

fn connect_msg(e: Error) -> Msg {
    let what = match e.to_errno() {
        -111 => "connection refused",
        -110 => "timed out",
        -113 | -101 => "no route to host",
        -104 => "connection reset",
        _ => "",
    };
    if what.is_empty() {
        Msg::new(format_args!("cannot connect (errno {})", e.to_errno()))
    } else {
        Msg::new(format_args!("{}", what))
    }
}

/// The NBD command for a bio, or `None` when the server is not asked
/// (a flush to a server without a cache).
fn command(bio: &LegBio, info: &ExportInfo) -> Result<Option<(u16, u16)>> {
    let fua = if bio.is_fua() && info.flags & tflag::SEND_FUA != 0 {
        cmdflag::FUA
    } else {
        0
    };
    Ok(Some(match bio.op() {
        Op::Read => (cmd::READ, 0),
        Op::Write if bio.bytes() == 0 => {
            if !bio.is_preflush() || info.flags & tflag::SEND_FLUSH == 0 {
                return Ok(None);
            }
            (cmd::FLUSH, 0)
        }
        Op::Write => (cmd::WRITE, fua),
        Op::Discard if info.flags & tflag::SEND_TRIM != 0 => (cmd::TRIM, fua),
        Op::WriteZeroes if info.flags & tflag::SEND_WRITE_ZEROES != 0 => (cmd::WRITE_ZEROES, fua),
        _ => return Err(errno::eopnotsupp()),
    }))
}

/// The errno a server's error code stands for.
fn server_error(code: u32) -> Error {
    match nbd::err::normalize(code) {
        nbd::err::EPERM => EPERM,
        nbd::err::ENOMEM => ENOMEM,
        nbd::err::EINVAL => EINVAL,
        nbd::err::ENOSPC => ENOSPC,
        nbd::err::ENOTSUP => errno::eopnotsupp(),
        _ => EIO,
    }
}

impl Conn {
    /// Ends every queued bio with `res`, into `done`.
    fn fail_queue(&mut self, res: Result, done: &mut LegBioQueue) {
        while let Some(mut bio) = self.queue.pop_front() {
            bio.record(res);
            done.push_back(bio);
        }
    }

    fn free_slot(&mut self, slot: usize) -> Option<LegBio> {
        self.free |= 1 << slot;
        self.slots.get_mut(slot).and_then(|s| s.bio.take())
    }

    /// Drops the connection: the requests in flight go back to the front
    /// of the queue, oldest first.
    fn break_conn(&mut self, why: Msg, inflight: &AtomicU32) {
        self.sock = None;
        self.tx = None;
        self.rx = Rx::Header {
            buf: [0; SimpleReply::SIZE],
            got: 0,
        };
        let mut back = LegBioQueue::new();
        loop {
            // The oldest request still in a slot.
            let oldest = self
                .slots
                .iter()
                .enumerate()
                .filter(|(_, s)| s.bio.is_some())
                .min_by_key(|(_, s)| s.seq)
                .map(|(i, _)| i);
            let Some(i) = oldest else { break };
            if let Some(bio) = self.free_slot(i) {
                back.push_back(bio);
            }
        }
        inflight.store(0, Ordering::Relaxed);
        self.queue.prepend(back);
        self.gen = self.gen.wrapping_add(1);
        self.down_since_ms = now_ms();
        self.problem = why;
    }
}

impl Remote {
    /// Connects to the server described by `cfg` (blocking, bounded by
    /// the timeout).  The leg does nothing until [`Remote::start`].
    pub(crate) fn connect(spec: &CStr, cfg: RemoteConfig) -> Result<Arc<Remote>, Refusal> {
        let shown = spec.to_str().unwrap_or("?");
        let (sock, info) = match dial(&cfg) {
            Ok(v) => v,
            Err(m) => refuse!(errno::enotconn(), "leg {}: {}", shown, m.as_str()),
        };
        if info.flags & tflag::READ_ONLY != 0 {
            refuse!(EROFS, "leg {}: the export is read-only", shown);
        }
        if info.min_block > 4096 {
            refuse!(EINVAL, "leg {}: the server's minimum block size is over 4096", shown);
        }
        let mut slots = KVec::with_capacity(MAX_INFLIGHT, GFP_KERNEL)?;
        for _ in 0..MAX_INFLIGHT {
            slots.push(
                Slot {
                    bio: None,
                    cookie: 0,
                    seq: 0,
                    sent_ms: 0,
                    reads: false,
                },
                GFP_KERNEL,
            )?;
        }
        let conn = Conn {
            sock: Some(sock),
            info,
            queue: LegBioQueue::new(),
            slots,
            free: u64::MAX,
            tx: None,
            rx: Rx::Header {
                buf: [0; SimpleReply::SIZE],
                got: 0,
            },
            seq: 0,
            gen: 1,
            down_since_ms: 0,
            backoff_ms: BACKOFF_MIN_MS,
            problem: Msg::new(format_args!("")),
        };
        Ok(Arc::pin_init(
            pin_init!(Remote {
                cfg,
                link: AtomicU8::new(Link::Up as u8),
                hold: AtomicBool::new(true),
                dead: AtomicBool::new(false),
                inflight: AtomicU32::new(0),
                connects: AtomicU32::new(1),
                submitted: LegBioStack::new(),
                conn <- new_mutex!(conn, "Remote::conn"),
                owner <- new_mutex!(None, "Remote::owner"),
                send_job <- Job::new(),
                recv_job <- Job::new(),
                tick_job <- Job::new(),
                connect_job <- Job::new(),
            }),
            GFP_KERNEL,
        )?)
    }

    /// The export as negotiated.
    pub(crate) fn info(&self) -> ExportInfo {
        self.conn.lock().info
    }

    /// The settings.
    pub(crate) fn config(&self) -> &RemoteConfig {
        &self.cfg
    }

    /// The connection state.
    pub(crate) fn link(&self) -> Link {
        Link::from_u8(self.link.load(Ordering::Acquire))
    }

    /// Starts serving leg `leg` of `owner`.
    pub(crate) fn start(self: &Arc<Self>, owner: Arc<Device>, leg: usize) -> Result {
        *self.owner.lock() = Some((owner, leg));
        if let Some(sock) = self.conn.lock().sock.as_mut() {
            sock.watch(self.clone())?;
        }
        Job::<Remote, RECV>::queue(self.clone(), 0);
        Ok(())
    }

    /// Stops for good: fails everything pending with `EIO`, closes the
    /// connection, and lets go of the device.  Waits for running jobs (a
    /// connection attempt: at most the timeout).
    pub(crate) fn stop(self: &Arc<Self>) {
        self.link.store(Link::Stopped as u8, Ordering::Release);
        Job::<Remote, SEND>::disable(self);
        Job::<Remote, RECV>::disable(self);
        Job::<Remote, TICK>::disable(self);
        Job::<Remote, CONNECT>::disable(self);
        let mut done = LegBioQueue::new();
        {
            let mut c = self.conn.lock();
            c.break_conn(Msg::new(format_args!("stopped")), &self.inflight);
            c.queue.append(self.submitted.take());
            c.fail_queue(Err(EIO), &mut done);
        }
        finish(done);
        *self.owner.lock() = None;
    }

    /// Takes a bio for the server.
    pub(crate) fn submit(self: &Arc<Self>, bio: LegBio) {
        if self.link() == Link::Stopped {
            bio.end(Err(EIO));
            return;
        }
        self.submitted.push(bio);
        if self.link() == Link::Stopped {
            // `stop` may have drained the stack before our push.
            let mut q = self.submitted.take();
            while let Some(bio) = q.pop_front() {
                bio.end(Err(EIO));
            }
            return;
        }
        Job::<Remote, SEND>::queue(self.clone(), 0);
    }

    /// Sets what happens to I/O while the connection is down.
    pub(crate) fn set_policy(self: &Arc<Self>, policy: Policy) {
        self.hold.store(policy == Policy::Hold, Ordering::Release);
        if policy == Policy::FailFast {
            Job::<Remote, SEND>::queue(self.clone(), 0);
        }
    }

    /// A snapshot for status reports.
    pub(crate) fn status(&self) -> RemoteStatus {
        let c = self.conn.lock();
        RemoteStatus {
            connects: self.connects.load(Ordering::Relaxed),
            flags: c.info.flags,
            problem: c.problem.clone(),
        }
    }

    fn tick_ms(&self) -> u32 {
        (self.cfg.timeout_ms / 4).clamp(100, 1000)
    }

    /// Sends what can be sent.  Fails with why the connection broke, if it
    /// did.
    fn pump_send(&self, c: &mut Conn, done: &mut LegBioQueue) -> Result<(), Msg> {
        loop {
            if c.tx.is_none() {
                if c.free == 0 {
                    return Ok(());
                }
                let Some(mut bio) = c.queue.pop_front() else {
                    return Ok(());
                };
                let (kind, flags) = match command(&bio, &c.info) {
                    Ok(Some(k)) => k,
                    Ok(None) => {
                        bio.record(Ok(()));
                        done.push_back(bio);
                        continue;
                    }
                    Err(e) => {
                        bio.record(Err(e));
                        done.push_back(bio);
                        continue;
                    }
                };
                let offset = bio.sector() << 9;
                let len = bio.bytes();
                if offset.checked_add(len.into()).map_or(true, |end| end > c.info.size) {
                    bio.record(Err(EIO));
                    done.push_back(bio);
                    continue;
                }
                let slot = c.free.trailing_zeros() as usize;
                c.free &= !(1 << slot);
                c.seq = c.seq.wrapping_add(1);
                let cookie = (c.gen << 40) | ((c.seq & 0xffff_ffff) << 8) | slot as u64;
                let req = Request {
                    flags,
                    kind,
                    cookie,
                    offset,
                    length: if kind == cmd::FLUSH { 0 } else { len },
                };
                let data = if kind == cmd::WRITE { len } else { 0 };
                let Some(s) = c.slots.get_mut(slot) else {
                    return Err(Msg::new(format_args!("internal error: no slot {}", slot)));
                };
                s.cookie = cookie;
                s.seq = c.seq;
                s.sent_ms = now_ms();
                s.reads = kind == cmd::READ;
                s.bio = Some(bio);
                c.tx = Some(Tx {
                    slot,
                    hdr: req.encode(),
                    hdr_done: 0,
                    data,
                    data_done: 0,
                });
                self.inflight.fetch_add(1, Ordering::Relaxed);
            }
            let (Some(tx), Some(sock)) = (c.tx.as_mut(), c.sock.as_ref()) else {
                return Ok(());
            };
            while tx.hdr_done < tx.hdr.len() {
                let rest = tx.hdr.get(tx.hdr_done..).unwrap_or(&[]);
                match sock.send(rest, tx.data > 0) {
                    Ok(n) => tx.hdr_done += n,
                    Err(e) if e == EAGAIN => return Ok(()),
                    Err(e) => return Err(Msg::new(format_args!("send failed (errno {})", e.to_errno()))),
                }
            }
            while tx.data_done < tx.data {
                let Some(bio) = c.slots.get(tx.slot).and_then(|s| s.bio.as_ref()) else {
                    return Err(Msg::new(format_args!("internal error: sending a free slot")));
                };
                match sock.send_bio(bio, tx.data_done, false) {
                    Ok(n) => tx.data_done += n as u32,
                    Err(e) if e == EAGAIN => return Ok(()),
                    Err(e) => return Err(Msg::new(format_args!("send failed (errno {})", e.to_errno()))),
                }
            }
            c.tx = None;
        }
    }

    /// Reads what has arrived.  Fails with why the connection broke, if it
    /// did.
    fn pump_recv(&self, c: &mut Conn, done: &mut LegBioQueue) -> Result<(), Msg> {
        loop {
            let Some(sock) = c.sock.as_ref() else {
                return Ok(());
            };
            match &mut c.rx {
                Rx::Header { buf, got } => {
                    let rest = buf.get_mut(*got..).unwrap_or(&mut []);
                    match sock.recv(rest) {
                        Ok(0) => return Err(Msg::new(format_args!("the server closed the connection"))),
                        Ok(n) => *got += n,
                        Err(e) if e == EAGAIN => return Ok(()),
                        Err(e) => return Err(Msg::new(format_args!("receive failed (errno {})", e.to_errno()))),
                    }
                    if *got < SimpleReply::SIZE {
                        continue;
                    }
                    let reply = match SimpleReply::decode(buf) {
                        Ok(r) => r,
                        Err(nbd::WireError::Structured) => {
                            return Err(Msg::new(format_args!("protocol error: unrequested structured reply")))
                        }
                        Err(_) => return Err(Msg::new(format_args!("protocol error: bad reply magic"))),
                    };
                    let slot = (reply.cookie & 0xff) as usize;
                    let known = c
                        .slots
                        .get(slot)
                        .is_some_and(|s| s.bio.is_some() && s.cookie == reply.cookie);
                    if !known {
                        return Err(Msg::new(format_args!("protocol error: reply to an unknown request")));
                    }
                    if c.tx.as_ref().is_some_and(|t| t.slot == slot) {
                        // Not even sent in full: the server cannot know it.
                        return Err(Msg::new(format_args!("protocol error: reply to a request not sent yet")));
                    }
                    let reads = c.slots.get(slot).is_some_and(|s| s.reads);
                    let len = c
                        .slots
                        .get(slot)
                        .and_then(|s| s.bio.as_ref())
                        .map_or(0, LegBio::bytes);
                    if reply.error == 0 && reads && len > 0 {
                        c.rx = Rx::Data { slot, got: 0, len };
                        continue;
                    }
                    c.rx = Rx::Header {
                        buf: [0; SimpleReply::SIZE],
                        got: 0,
                    };
                    if let Some(mut bio) = c.free_slot(slot) {
                        self.inflight.fetch_sub(1, Ordering::Relaxed);
                        bio.record(if reply.error == 0 { Ok(()) } else { Err(server_error(reply.error)) });
                        done.push_back(bio);
                    }
                }
                Rx::Data { slot, got, len } => {
                    let (slot, len) = (*slot, *len);
                    let Some(bio) = c.slots.get(slot).and_then(|s| s.bio.as_ref()) else {
                        return Err(Msg::new(format_args!("internal error: data for a free slot")));
                    };
                    match sock.recv_bio(bio, *got) {
                        Ok(0) => return Err(Msg::new(format_args!("the server closed the connection"))),
                        Ok(n) => *got += n as u32,
                        Err(e) if e == EAGAIN => return Ok(()),
                        Err(e) => return Err(Msg::new(format_args!("receive failed (errno {})", e.to_errno()))),
                    }
                    if *got < len {
                        continue;
                    }
                    c.rx = Rx::Header {
                        buf: [0; SimpleReply::SIZE],
                        got: 0,
                    };
                    if let Some(mut bio) = c.free_slot(slot) {
                        self.inflight.fetch_sub(1, Ordering::Relaxed);
                        bio.record(Ok(()));
                        done.push_back(bio);
                    }
                }
            }
        }
    }

    /// The connection broke: tell the device, and reconnect.
    fn went_down(self: &Arc<Self>) {
        self.link.store(Link::Down as u8, Ordering::Release);
        let owner = self.owner.lock().clone();
        let policy = match owner {
            Some((dev, leg)) => dev.remote_down(leg),
            None => Policy::Hold,
        };
        self.set_policy(policy);
        let backoff = self.conn.lock().backoff_ms;
        Job::<Remote, CONNECT>::queue(self.clone(), backoff);
        Job::<Remote, TICK>::queue(self.clone(), self.tick_ms());
    }

    fn log_problem(&self, c: &Conn) {
        let owner = self.owner.lock();
        if let Some((dev, leg)) = owner.as_ref() {
            pr_warn!("{}: leg {}: {}\n", dev.name(), leg, c.problem.as_str());
        }
    }
}

/// Ends the bios in `done` (outside any lock: their completion may call
/// back into dst).
fn finish(mut done: LegBioQueue) {
    while let Some(bio) = done.pop_front() {
        bio.end_recorded();
    }
}

impl JobRun<SEND> for Remote {
    fn run(this: Arc<Self>) {
        let mut done = LegBioQueue::new();
        let mut broke = false;
        {
            let mut c = this.conn.lock();
            c.queue.append(this.submitted.take());
            match this.link() {
                Link::Up => {
                    if let Err(why) = this.pump_send(&mut c, &mut done) {
                        c.break_conn(why, &this.inflight);
                        this.log_problem(&c);
                        broke = true;
                    }
                }
                Link::Down => {
                    if this.dead.load(Ordering::Acquire) {
                        c.fail_queue(Err(EIO), &mut done);
                    } else if !this.hold.load(Ordering::Acquire) {
                        c.fail_queue(Err(errno::enotconn()), &mut done);
                    }
                }
                Link::Stopped => c.fail_queue(Err(EIO), &mut done),
            }
        }
        finish(done);
        if broke {
            this.went_down();
        } else if this.inflight.load(Ordering::Relaxed) > 0 {
            Job::<Remote, TICK>::queue(this.clone(), this.tick_ms());
        }
    }
}

impl JobRun<RECV> for Remote {
    fn run(this: Arc<Self>) {
        if this.link() != Link::Up {
            return;
        }
        let mut done = LegBioQueue::new();
        let mut broke = false;
        {
            let mut c = this.conn.lock();
            if let Err(why) = this.pump_recv(&mut c, &mut done) {
                c.break_conn(why, &this.inflight);
                this.log_problem(&c);
                broke = true;
            }
        }
        let freed = !done.is_empty();
        finish(done);
        if broke {
            this.went_down();
        } else if freed {
            // Slots are free again: the queue may move.
            Job::<Remote, SEND>::queue(this.clone(), 0);
        }
    }
}

impl JobRun<TICK> for Remote {
    fn run(this: Arc<Self>) {
        let now = now_ms();
        let mut done = LegBioQueue::new();
        let mut broke = false;
        let mut again = false;
        {
            let mut c = this.conn.lock();
            match this.link() {
                Link::Up => {
                    let oldest = c.slots.iter().filter(|s| s.bio.is_some()).map(|s| s.sent_ms).min();
                    if let Some(t) = oldest {
                        if now.saturating_sub(t) > u64::from(this.cfg.timeout_ms) {
                            let why = Msg::new(format_args!(
                                "a request timed out after {} ms",
                                this.cfg.timeout_ms
                            ));
                            if let Some(sock) = c.sock.as_ref() {
                                sock.shutdown();
                            }
                            c.break_conn(why, &this.inflight);
                            this.log_problem(&c);
                            broke = true;
                        } else {
                            again = true;
                        }
                    }
                }
                Link::Down => {
                    if this.hold.load(Ordering::Acquire) && !this.dead.load(Ordering::Acquire) {
                        if now.saturating_sub(c.down_since_ms) >= u64::from(this.cfg.dead_ms) {
                            this.dead.store(true, Ordering::Release);
                            c.fail_queue(Err(EIO), &mut done);
                        } else {
                            again = true;
                        }
                    }
                }
                Link::Stopped => {}
            }
        }
        finish(done);
        if broke {
            this.went_down();
        } else if again {
            Job::<Remote, TICK>::queue(this.clone(), this.tick_ms());
        }
    }
}

impl JobRun<CONNECT> for Remote {
    fn run(this: Arc<Self>) {
        if this.link() != Link::Down {
            return;
        }
        let res = dial(&this.cfg).and_then(|(sock, info)| {
            let old = this.conn.lock().info;
            if info.size != old.size {
                return Err(Msg::new(format_args!(
                    "refused: the export's size changed from {} to {} bytes",
                    old.size, info.size
                )));
            }
            if info.flags & CAPS & old.flags != old.flags & CAPS || info.flags & tflag::READ_ONLY != 0 {
                return Err(Msg::new(format_args!("refused: the server's capabilities changed")));
            }
            if info.min_block > old.min_block || info.max_block < old.max_block {
                return Err(Msg::new(format_args!("refused: the server's block sizes changed")));
            }
            Ok(sock)
        });
        let mut sock = match res {
            Ok(s) => s,
            Err(why) => {
                let backoff = {
                    let mut c = this.conn.lock();
                    let changed = c.problem.as_str() != why.as_str();
                    c.problem = why;
                    if changed {
                        this.log_problem(&c);
                    }
                    c.backoff_ms = c.backoff_ms.saturating_mul(2).min(this.cfg.backoff_max_ms);
                    c.backoff_ms
                };
                Job::<Remote, CONNECT>::queue(this.clone(), backoff);
                return;
            }
        };
        if sock.watch(this.clone()).is_err() {
            Job::<Remote, CONNECT>::queue(this.clone(), this.cfg.backoff_max_ms);
            return;
        }
        {
            let mut c = this.conn.lock();
            c.sock = Some(sock);
            c.backoff_ms = BACKOFF_MIN_MS;
            c.problem = Msg::new(format_args!(""));
            this.dead.store(false, Ordering::Release);
            this.connects.fetch_add(1, Ordering::Relaxed);
            this.link.store(Link::Up as u8, Ordering::Release);
        }
        let owner = this.owner.lock().clone();
        if let Some((dev, leg)) = owner {
            pr_info!("{}: leg {}: connected again\n", dev.name(), leg);
            dev.remote_up(leg);
        }
        Job::<Remote, SEND>::queue(this.clone(), 0);
        Job::<Remote, RECV>::queue(this.clone(), 0);
    }
}

impl SockEvents for Remote {
    fn sock_event(this: ArcBorrow<'_, Self>, event: SockEvent) {
        match event {
            SockEvent::Writable => Job::<Remote, SEND>::queue(this.into(), 0),
            SockEvent::Readable | SockEvent::Closed => Job::<Remote, RECV>::queue(this.into(), 0),
        }
    }
}
