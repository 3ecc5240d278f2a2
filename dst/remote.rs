// SPDX-License-Identifier: GPL-2.0

//! Remote legs: an NBD client in the kernel.
//!
//! A remote leg holds one TCP connection to an NBD server, or up to
//! [`MAX_CONNS`] when the server allows it (`CAN_MULTI_CONN`): each is a
//! *lane* with its own sending and receiving side, and the leg spreads its
//! requests over them.  Requests are tagged with a cookie and pipelined (up
//! to [`MAX_INFLIGHT`] at a time, over all lanes); nothing waits on a
//! socket: jobs on the module's I/O workqueue do all the work (the connect
//! job, which blocks, runs on the wait queue: see [`crate::wq`]), woken by
//! socket callbacks and by each other:
//!
//! - *send* (one per lane): moves submitted bios to the lane's queue and
//!   sends what fits (a submitter does this itself, unless it has a large
//!   write or someone else is sending: see [`Remote::hand_over`]);
//! - *recv* (one per lane): reads replies (and read data, straight into
//!   the bios' pages) and ends their bios;
//! - *tick*: fails the connection when a request is older than the
//!   timeout, and fails held I/O once the dead time has passed;
//! - *connect*: connects and runs the handshake, with exponential backoff.
//!
//! The lanes fail together: a fault on one drops them all, and the leg
//! reconnects them all.  The requests in flight then go back to the front
//! of the first lane's queue, in the order they were sent.  What happens to them then is
//! the device's choice ([`Policy`]): a mirror with other legs in sync takes
//! the leg out and has its I/O failed at once (it will resync the leg); a
//! linear device, or a mirror whose last in-sync leg this is, holds the I/O
//! and re-sends it after the reconnect, or fails it when the dead time is
//! over.  Every byte from the server is checked: a reply that does not
//! match a request in flight, or is malformed, drops the connection.

use core::net::SocketAddr;
use core::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};

use kernel::bindings;
use kernel::new_mutex;
use kernel::prelude::*;
use kernel::sync::{Arc, ArcBorrow, Mutex, UniqueArc};

use crate::bio::{BioSet, LegBio, LegBioQueue, LegBioStack, Op};
use crate::device::Device;
use crate::errno;
use crate::glue::now_ms;
use crate::job::{impl_has_job, Job, JobRun};
use crate::msg::{refuse, Msg, Refusal};
use crate::proto::nbd::{
    self, cmd, cmdflag, tflag, ExportInfo, HandshakeError, Request, SimpleReply,
};
use crate::socket::{RecvKick, RecvNext, SockEvent, SockEvents, Socket};
use crate::wq;

/// Most requests in flight on one leg.
pub(crate) const MAX_INFLIGHT: usize = 64;

/// Most connections of one leg.
pub(crate) const MAX_CONNS: usize = crate::proto::genl::conns::MAX as usize;

/// The largest write a submitter sends itself (see [`Remote::hand_over`]).
const INLINE_MAX_BYTES: u32 = 64 << 10;

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
    /// Copy the whole leg after a reconnect, not only what it missed.
    pub(crate) full_resync: bool,
    /// Connections to open when the server allows several (1 to
    /// [`MAX_CONNS`]).
    pub(crate) conns: u8,
}

/// What becomes of I/O for a leg whose connection is down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Policy {
    /// Keep it, re-send it after the reconnect, fail it after the dead
    /// time.
    Hold,
    /// Fail it at once with [`errno::leg_away`]: the device does without the leg.
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
    /// Connections in use.
    pub(crate) conns: u8,
    /// The last problem, if any.
    pub(crate) problem: Msg,
}

/// A connection attempt of the connect job, which [`Remote::stop`] cuts
/// short.
struct Dialing {
    /// The socket while it connects and runs the handshake.
    sock: Option<Arc<Socket>>,
    /// The leg stopped: no more attempts.
    stopped: bool,
}

/// Connects to the server and runs the handshake, within the leg's
/// timeout.  With `dialing`, the socket is published there meanwhile, so
/// that a stop can shut it down, which ends the attempt at once; and after
/// a stop no attempt begins.
fn dial(
    cfg: &RemoteConfig,
    dialing: Option<&Mutex<Dialing>>,
) -> Result<(Pin<UniqueArc<Socket>>, ExportInfo), Msg> {
    let sock = Socket::client(&cfg.addr, cfg.timeout_ms).map_err(connect_msg)?;
    let sock = Arc::new(sock, GFP_KERNEL).map_err(|_| oom_msg())?;
    if let Some(d) = dialing {
        let mut d = d.lock();
        if d.stopped {
            return Err(Msg::new(format_args!("the leg is going away")));
        }
        d.sock = Some(sock.clone());
    }
    let res = handshake(&sock, cfg);
    if let Some(d) = dialing {
        d.lock().sock = None;
    }
    let info = res?;
    // Taken back: ours is the only reference.
    match sock.into_unique_or_drop() {
        Some(sock) => Ok((sock, info)),
        None => Err(Msg::new(format_args!("the socket is still in use"))),
    }
}

/// Connects `sock` and runs the handshake on it.
fn handshake(sock: &Socket, cfg: &RemoteConfig) -> Result<ExportInfo, Msg> {
    sock.connect(&cfg.addr).map_err(connect_msg)?;
    // The whole handshake within the leg's timeout (and the last blocking
    // call's own timeout).
    let until = now_ms() + u64::from(cfg.timeout_ms);
    match nbd::client_handshake(&mut sock.blocking_until(until), &cfg.export) {
        Ok(info) => Ok(info),
        Err(HandshakeError::Io(e)) => Err(connect_msg(e)),
        Err(HandshakeError::BadMagic) => {
            Err(Msg::new(format_args!("not an NBD server (bad magic)")))
        }
        Err(HandshakeError::NotFixedNewstyle) => Err(Msg::new(format_args!(
            "server lacks the fixed newstyle handshake"
        ))),
        Err(HandshakeError::Refused { reply }) => Err(Msg::new(format_args!(
            "server refused the export: {}",
            nbd::rep::describe(reply)
        ))),
        Err(HandshakeError::Protocol(why)) => Err(Msg::new(format_args!("{}", why))),
        Err(HandshakeError::NameTooLong) => Err(Msg::new(format_args!("export name too long"))),
    }
}

/// What differs in a new connection's export from the leg's.
enum Changed {
    /// The size, from and to.
    Size(u64, u64),
    Caps,
    BlockSizes,
}

impl Changed {
    /// Says it briefly (for the extack of a `create`, whose 80 bytes also
    /// name the leg and the connection).
    fn brief(&self) -> Msg {
        match self {
            Changed::Size(from, to) => {
                Msg::new(format_args!("size changed from {} to {}", from, to))
            }
            Changed::Caps => Msg::new(format_args!("capabilities changed")),
            Changed::BlockSizes => Msg::new(format_args!("block sizes changed")),
        }
    }

    /// Says it as a reconnect's refusal.
    fn refusal(&self) -> Msg {
        match self {
            Changed::Size(from, to) => Msg::new(format_args!(
                "refused: the export's size changed from {} to {} bytes",
                from, to
            )),
            Changed::Caps => Msg::new(format_args!("refused: the server's capabilities changed")),
            Changed::BlockSizes => {
                Msg::new(format_args!("refused: the server's block sizes changed"))
            }
        }
    }
}

/// Checks that a new connection serves the export a leg of `nlanes`
/// connections had at first (`old`).
fn same_export(old: &ExportInfo, info: &ExportInfo, nlanes: usize) -> Result<(), Changed> {
    if info.size != old.size {
        return Err(Changed::Size(old.size, info.size));
    }
    let caps = if nlanes > 1 {
        CAPS | tflag::CAN_MULTI_CONN
    } else {
        CAPS
    };
    if info.flags & caps & old.flags != old.flags & caps || info.flags & tflag::READ_ONLY != 0 {
        return Err(Changed::Caps);
    }
    if info.min_block > old.min_block || info.max_block < old.max_block {
        return Err(Changed::BlockSizes);
    }
    Ok(())
}

/// Connects until `socks` holds `n` connections, each to the export
/// `info` describes (a change is told with `changed`).  Fails with the
/// number of the connection that failed, from 1, and why.
fn dial_rest(
    cfg: &RemoteConfig,
    info: &ExportInfo,
    n: usize,
    socks: &mut KVec<Pin<UniqueArc<Socket>>>,
    changed: fn(&Changed) -> Msg,
    dialing: Option<&Mutex<Dialing>>,
) -> Result<(), (usize, Msg)> {
    while socks.len() < n {
        let k = socks.len() + 1;
        let (sock, more) = dial(cfg, dialing).map_err(|m| (k, m))?;
        same_export(info, &more, n).map_err(|c| (k, changed(&c)))?;
        socks.push(sock, GFP_KERNEL).map_err(|_| (k, oom_msg()))?;
    }
    Ok(())
}

fn oom_msg() -> Msg {
    Msg::new(format_args!("out of memory"))
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

/// A request slot: reserved when its request starts going out, given its
/// bio once the request is fully sent, emptied by the reply.
#[derive(Default)]
struct Slot {
    /// The bio, once the request is fully sent.
    bio: Option<LegBio>,
    /// The request's cookie; 0 when the slot is free.
    cookie: u64,
    seq: u64,
    sent_ms: u64,
    reads: bool,
    /// The lane the request went out on: its reply must come back there.
    lane: u8,
}

/// The request table.
struct Slots {
    slots: KVec<Slot>,
    free: u64,
}

/// The request being sent: its bio stays here until it is fully sent, so
/// a reply to it before then is a protocol error.
struct TxCur {
    slot: usize,
    cookie: u64,
    seq: u64,
    bio: LegBio,
    hdr: [u8; Request::SIZE],
    hdr_done: usize,
    data: u32,
    data_done: u32,
}

/// The sending side.
struct TxState {
    sock: Option<Arc<Socket>>,
    /// The connection generation `sock` belongs to.
    gen: u64,
    queue: LegBioQueue,
    cur: Option<TxCur>,
}

/// Where reading replies stands.
enum Rx {
    Header {
        buf: [u8; SimpleReply::SIZE],
        got: usize,
    },
    Data {
        bio: LegBio,
        seq: u64,
        got: u32,
        len: u32,
    },
}

const RX_START: Rx = Rx::Header {
    buf: [0; SimpleReply::SIZE],
    got: 0,
};

/// The receiving side.
struct RxState {
    sock: Option<Arc<Socket>>,
    /// The connection generation `sock` belongs to: a failure seen on it
    /// is reported for that connection, not for whichever is current.
    gen: u64,
    rx: Rx,
}

/// One connection of a leg: its sending and receiving side.
///
/// The lanes' locks share their lock classes: nothing holds the locks of
/// two lanes at once.
#[pin_data]
struct Lane {
    /// Someone is sending (a hint: submitters then leave their bios to
    /// the send job rather than wait for the lock).
    sending: AtomicBool,
    /// The receive job's wakeups (see [`Remote::kick_recv`]).
    rx_kick: RecvKick,
    /// When the read whose data is being received was sent (ms; 0 when
    /// none is): its slot is free once the reply's header is in, but the
    /// tick still times the read out.
    data_since: AtomicU64,
    submitted: LegBioStack,
    #[pin]
    tx: Mutex<TxState>,
    #[pin]
    rx: Mutex<RxState>,
}

impl Lane {
    fn new() -> impl PinInit<Self> {
        pin_init!(Lane {
            sending: AtomicBool::new(false),
            rx_kick: RecvKick::new(),
            data_since: AtomicU64::new(0),
            submitted: LegBioStack::new(),
            tx <- new_mutex!(
                TxState {
                    sock: None,
                    gen: 0,
                    queue: LegBioQueue::new(),
                    cur: None,
                },
                "Lane::tx"
            ),
            rx <- new_mutex!(
                RxState {
                    sock: None,
                    gen: 0,
                    rx: RX_START,
                },
                "Lane::rx"
            ),
        })
    }
}

/// Job ids: lane `i` sends in job `SEND + i` and receives in `RECV + i`.
const SEND: u64 = 0;
const RECV: u64 = SEND + MAX_CONNS as u64;
const TICK: u64 = RECV + MAX_CONNS as u64;
const CONNECT: u64 = TICK + 1;

/// A remote leg.
///
/// Each lane's sending and receiving side have locks of their own, so
/// that all run at once; the request table, shared by the lanes, has
/// another, held only briefly.  Lock order: `conn`, a lane's `tx`, the
/// same lane's `rx`, `slots`; `problem`, `owner` and `dialing` alone.
#[pin_data]
pub(crate) struct Remote {
    cfg: RemoteConfig,
    /// The export as first negotiated; reconnects must match it.
    info: ExportInfo,
    /// The connections (as many on every reconnect).
    lanes: KVec<Pin<KBox<Lane>>>,
    /// Where the next submitter starts looking for an idle lane.
    next_lane: AtomicU32,
    /// Order of the requests sent, over all lanes.
    seq: AtomicU64,
    link: AtomicU8,
    hold: AtomicBool,
    /// Detached by the administrator: disconnected, and not reconnecting
    /// until attached again.
    parked: AtomicBool,
    dead: AtomicBool,
    /// Connection generation: a failure seen on an older one is stale.
    gen: AtomicU64,
    /// When the current outage began: held I/O fails once it is older
    /// than the dead time.
    down_since_ms: AtomicU64,
    /// The connection answered a request, or had none to answer when it
    /// came up.  A connection that fails without doing either does not end
    /// the outage: a server that accepts connections but never serves
    /// them must not hold I/O forever.
    answered: AtomicBool,
    backoff_ms: AtomicU32,
    /// Lanes whose sender waits for a free slot (a bit per lane).
    tx_stalled: AtomicU32,
    inflight: AtomicU32,
    connects: AtomicU32,
    /// Where bios longer than the server takes are split from.
    #[pin]
    splits: BioSet,
    /// Taken to drop the connections (serialises the lanes' failure).
    #[pin]
    conn: Mutex<()>,
    #[pin]
    slots: Mutex<Slots>,
    #[pin]
    problem: Mutex<Msg>,
    #[pin]
    owner: Mutex<Option<(Arc<Device>, usize)>>,
    /// The connect job's attempt in progress.
    #[pin]
    dialing: Mutex<Dialing>,
    #[pin]
    send0: Job<Remote, { SEND }>,
    #[pin]
    send1: Job<Remote, { SEND + 1 }>,
    #[pin]
    send2: Job<Remote, { SEND + 2 }>,
    #[pin]
    send3: Job<Remote, { SEND + 3 }>,
    #[pin]
    recv0: Job<Remote, { RECV }>,
    #[pin]
    recv1: Job<Remote, { RECV + 1 }>,
    #[pin]
    recv2: Job<Remote, { RECV + 2 }>,
    #[pin]
    recv3: Job<Remote, { RECV + 3 }>,
    #[pin]
    tick_job: Job<Remote, TICK>,
    #[pin]
    connect_job: Job<Remote, CONNECT>,
}

/// The lanes' jobs (`MAX_CONNS` of each kind), and the functions that
/// pick one by lane number.
macro_rules! lane_jobs {
    ($($i:literal => $send:ident, $recv:ident;)*) => {
        $(
            impl_has_job!(Remote, SEND + $i, $send);
            impl_has_job!(Remote, RECV + $i, $recv);

            impl JobRun<{ SEND + $i }> for Remote {
                fn run(this: Arc<Self>) {
                    Self::send_pass(&this, $i);
                }
            }

            impl JobRun<{ RECV + $i }> for Remote {
                fn run(this: Arc<Self>) {
                    Self::recv_pass(&this, $i);
                }
            }
        )*

        impl Remote {
            /// Runs lane `lane`'s send job.
            fn queue_send(this: Arc<Self>, lane: usize) {
                match lane {
                    $($i => Job::<Remote, { SEND + $i }>::queue(this, 0),)*
                    _ => {}
                }
            }

            /// Runs lane `lane`'s receive job.
            fn queue_recv(this: Arc<Self>, lane: usize) {
                match lane {
                    $($i => Job::<Remote, { RECV + $i }>::queue(this, 0),)*
                    _ => {}
                }
            }

            /// Disables every lane's jobs.
            fn disable_lane_jobs(&self) {
                $(
                    Job::<Remote, { SEND + $i }>::disable(self);
                    Job::<Remote, { RECV + $i }>::disable(self);
                )*
            }

            /// Watches `sock` as lane `lane`'s.
            fn watch(self: &Arc<Self>, lane: usize, sock: &mut Socket) -> Result {
                match lane {
                    $($i => sock.watch::<Remote, $i>(self.clone()),)*
                    _ => Err(EINVAL),
                }
            }
        }
    };
}

lane_jobs! {
    0 => send0, recv0;
    1 => send1, recv1;
    2 => send2, recv2;
    3 => send3, recv3;
}

const _: () = assert!(MAX_CONNS == 4, "lane_jobs! makes MAX_CONNS lanes");

impl_has_job!(Remote, TICK, tick_job);
impl_has_job!(Remote, CONNECT, connect_job);

/// Ends every bio of `q` with `res`, into `done`.
fn fail_all(q: &mut LegBioQueue, res: Result, done: &mut LegBioQueue) {
    while let Some(mut bio) = q.pop_front() {
        bio.record(res);
        done.push_back(bio);
    }
}

/// Tells the server that we leave (`NBD_CMD_DISC`), as the protocol asks
/// of a client that closes a connection on purpose.  Best effort and
/// without waiting; not when a request is half sent (the server would
/// take the command for part of it).
fn say_goodbye(tx: &TxState) {
    let Some(sock) = tx.sock.as_ref() else {
        return;
    };
    if tx.cur.is_some() {
        return;
    }
    let req = Request {
        flags: 0,
        kind: cmd::DISC,
        cookie: 0,
        offset: 0,
        length: 0,
    };
    let _ = sock.send(&req.encode(), false);
}

/// Ends the bios in `done` (outside any lock: their completion may call
/// back into dst).
fn finish(mut done: LegBioQueue) {
    while let Some(bio) = done.pop_front() {
        bio.end_recorded();
    }
}

fn io_msg(what: &str, e: Error) -> Msg {
    match e.to_errno() {
        -104 => Msg::new(format_args!("connection reset by the server")),
        -32 => Msg::new(format_args!("connection broken")),
        -110 => Msg::new(format_args!("connection timed out")),
        n => Msg::new(format_args!("{} failed (errno {})", what, n)),
    }
}

impl Remote {
    /// Connects to the server described by `cfg` (blocking, bounded by
    /// the timeout), as many times as the leg has lanes.  The leg does
    /// nothing until [`Remote::start`].
    pub(crate) fn connect(n: usize, cfg: RemoteConfig) -> Result<Arc<Remote>, Refusal> {
        let (sock, info) = match dial(&cfg, None) {
            Ok(v) => v,
            Err(m) => refuse!(errno::enotconn(), "leg #{}: {}", n, m.as_str()),
        };
        if info.flags & tflag::READ_ONLY != 0 {
            refuse!(EROFS, "leg #{}: the export is read-only", n);
        }
        if info.min_block > 4096 {
            refuse!(
                EINVAL,
                "leg #{}: the server's minimum block size is over 4096",
                n
            );
        }
        // The block layer takes no request size limit under a page.
        if info.max_block < 4096 {
            refuse!(
                EINVAL,
                "leg #{}: the server's maximum block size ({}) is under 4096",
                n,
                info.max_block
            );
        }
        let nlanes = if info.flags & tflag::CAN_MULTI_CONN != 0 {
            usize::from(cfg.conns).clamp(1, MAX_CONNS)
        } else {
            1
        };
        let mut socks = KVec::with_capacity(nlanes, GFP_KERNEL)?;
        socks.push(sock, GFP_KERNEL)?;
        if let Err((k, m)) = dial_rest(&cfg, &info, nlanes, &mut socks, Changed::brief, None) {
            refuse!(
                errno::enotconn(),
                "leg #{}: connection {}: {}",
                n,
                k,
                m.as_str()
            );
        }
        let mut slots = KVec::with_capacity(MAX_INFLIGHT, GFP_KERNEL)?;
        for _ in 0..MAX_INFLIGHT {
            slots.push(Slot::default(), GFP_KERNEL)?;
        }
        let mut lanes = KVec::with_capacity(nlanes, GFP_KERNEL)?;
        for _ in 0..nlanes {
            lanes.push(KBox::pin_init(Lane::new(), GFP_KERNEL)?, GFP_KERNEL)?;
        }
        let remote = Arc::pin_init(
            try_pin_init!(Remote {
                cfg,
                info,
                lanes,
                next_lane: AtomicU32::new(0),
                seq: AtomicU64::new(0),
                link: AtomicU8::new(Link::Up as u8),
                hold: AtomicBool::new(true),
                parked: AtomicBool::new(false),
                dead: AtomicBool::new(false),
                gen: AtomicU64::new(1),
                down_since_ms: AtomicU64::new(0),
                answered: AtomicBool::new(true),
                backoff_ms: AtomicU32::new(BACKOFF_MIN_MS),
                tx_stalled: AtomicU32::new(0),
                inflight: AtomicU32::new(0),
                connects: AtomicU32::new(1),
                // Parts never wait on the submitter's bio list: no rescuer.
                splits <- BioSet::new(0, false),
                conn <- new_mutex!((), "Remote::conn"),
                slots <- new_mutex!(Slots { slots, free: u64::MAX }, "Remote::slots"),
                problem <- new_mutex!(Msg::new(format_args!("")), "Remote::problem"),
                owner <- new_mutex!(None, "Remote::owner"),
                dialing <- new_mutex!(
                    Dialing {
                        sock: None,
                        stopped: false
                    },
                    "Remote::dialing"
                ),
                send0 <- Job::new(),
                send1 <- Job::new(),
                send2 <- Job::new(),
                send3 <- Job::new(),
                recv0 <- Job::new(),
                recv1 <- Job::new(),
                recv2 <- Job::new(),
                recv3 <- Job::new(),
                tick_job <- Job::new(),
                connect_job <- Job::new(),
            }? Error),
            GFP_KERNEL,
        )?;
        remote.install(socks)?;
        Ok(remote)
    }

    /// Makes `socks` the connections, one per lane (watched: their events
    /// wake the lanes' jobs).
    fn install(self: &Arc<Self>, socks: KVec<Pin<UniqueArc<Socket>>>) -> Result {
        if socks.len() != self.lanes.len() {
            return Err(EINVAL);
        }
        // Watch them all before installing any: a socket dropped on the
        // way gives its reference back, an installed one would keep it.
        let mut watched = KVec::with_capacity(socks.len(), GFP_KERNEL)?;
        for (i, mut sock) in socks.into_iter().enumerate() {
            self.watch(i, &mut sock)?;
            watched.push(Arc::from(sock), GFP_KERNEL)?;
        }
        // The link is down: `gen` moves only when an up link fails.
        let gen = self.gen.load(Ordering::Acquire);
        for (sock, lane) in watched.into_iter().zip(self.lanes.iter()) {
            let mut tx = lane.tx.lock();
            let mut rx = lane.rx.lock();
            tx.sock = Some(sock.clone());
            tx.gen = gen;
            rx.sock = Some(sock);
            rx.gen = gen;
            rx.rx = RX_START;
        }
        Ok(())
    }

    /// The export as negotiated.
    pub(crate) fn info(&self) -> ExportInfo {
        self.info
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
    pub(crate) fn start(self: &Arc<Self>, owner: Arc<Device>, leg: usize) {
        *self.owner.lock() = Some((owner, leg));
        for lane in 0..self.lanes.len() {
            Self::queue_recv(self.clone(), lane);
        }
    }

    /// Stops for good: fails everything pending with `EIO`, closes the
    /// connections, and lets go of the device.  Waits for running jobs; a
    /// connection attempt is cut short.
    pub(crate) fn stop(self: &Arc<Self>) {
        self.link.store(Link::Stopped as u8, Ordering::Release);
        {
            let mut d = self.dialing.lock();
            d.stopped = true;
            if let Some(sock) = d.sock.as_ref() {
                sock.shutdown();
            }
        }
        self.disable_lane_jobs();
        Job::<Remote, TICK>::disable(self);
        Job::<Remote, CONNECT>::disable(self);
        let mut done = LegBioQueue::new();
        {
            let _conn = self.conn.lock();
            let mut back = self.reap(true);
            fail_all(&mut back, Err(EIO), &mut done);
        }
        finish(done);
        *self.owner.lock() = None;
    }

    /// Disconnects and stays disconnected until [`Remote::unpark`] (the
    /// leg is detached: its server may be used on its own).  The caller
    /// has made sure no I/O is in flight.
    pub(crate) fn park(self: &Arc<Self>) {
        self.parked.store(true, Ordering::Relaxed);
        self.disconnect_if_parked();
    }

    /// Connects again after [`Remote::park`].
    pub(crate) fn unpark(self: &Arc<Self>) {
        self.parked.store(false, Ordering::SeqCst);
        // What went wrong before the detach is history.
        *self.problem.lock() = Msg::new(format_args!(""));
        self.backoff_ms.store(BACKOFF_MIN_MS, Ordering::Relaxed);
        // A run may be pending from before the detach, after a long
        // backoff: the admin asked for the leg now.
        Job::<Remote, CONNECT>::queue_now(self.clone());
    }

    /// Takes a bio for the server.  A read or write longer than the server
    /// takes is sent as several requests: the device's own requests never
    /// are (its queue is limited to the server's maximum), but a resync
    /// copies larger chunks, and writes held back by a resync keep the
    /// size they had before the leg joined.
    pub(crate) fn submit(self: &Arc<Self>, mut bio: LegBio) {
        if self.link() == Link::Stopped {
            bio.end(Err(EIO));
            return;
        }
        if matches!(bio.op(), Op::Read | Op::Write) {
            // A multiple of the server's minimum, as the maximum is.
            let max = self.info.max_block >> bindings::SECTOR_SHIFT;
            while bio.bytes() >> bindings::SECTOR_SHIFT > max {
                match bio.split_front(max, &self.splits) {
                    // Each part goes at once: the next split may wait for
                    // the bio set's reserve, which the parts sent refill.
                    Some(front) => self.hand_over(front),
                    None => break,
                }
            }
        }
        self.hand_over(bio);
    }

    /// Queues `bio` for the sender and gets it going.
    ///
    /// While the connection is up and nobody else is sending, the caller
    /// sends at once, in its own context (submitters run in process
    /// context and may sleep): the sockets are non-blocking, so this costs
    /// the caller what the send costs and saves waking the send job, which
    /// matters most at low queue depths.  A large write, or a sender
    /// already at work, is left to the send job: the copy then runs on
    /// another CPU while the submitter goes on.
    ///
    /// With several lanes, the bio goes to the first idle one from a
    /// rotating start, or to the start if none is idle.
    fn hand_over(self: &Arc<Self>, bio: LegBio) {
        // Only a write's data is copied while it is sent.
        let inline = bio.op() != Op::Write || bio.bytes() <= INLINE_MAX_BYTES;
        let n = self.lanes.len();
        let mut lane = 0;
        if n > 1 {
            let start = self.next_lane.fetch_add(1, Ordering::Relaxed) as usize % n;
            lane = (0..n)
                .map(|k| (start + k) % n)
                .find(|&i| {
                    self.lanes
                        .get(i)
                        .is_some_and(|l| !l.sending.load(Ordering::Relaxed))
                })
                .unwrap_or(start);
        }
        let Some(l) = self.lanes.get(lane) else {
            bio.end(Err(EIO));
            return;
        };
        l.submitted.push(bio);
        match self.link() {
            Link::Stopped => {
                // `stop` may have drained the stack before our push.
                let mut done = LegBioQueue::new();
                fail_all(&mut l.submitted.take(), Err(EIO), &mut done);
                finish(done);
            }
            Link::Up if inline && !l.sending.load(Ordering::Relaxed) => Self::send_pass(self, lane),
            _ => Self::queue_send(self.clone(), lane),
        }
    }

    /// Runs every lane's send job.
    fn kick_senders(self: &Arc<Self>) {
        for lane in 0..self.lanes.len() {
            Self::queue_send(self.clone(), lane);
        }
    }

    /// Sets what happens to I/O while the connection is down.
    pub(crate) fn set_policy(self: &Arc<Self>, policy: Policy) {
        self.hold.store(policy == Policy::Hold, Ordering::Release);
        if policy == Policy::FailFast {
            self.kick_senders();
        }
    }

    /// A snapshot for status reports.
    pub(crate) fn status(&self) -> RemoteStatus {
        RemoteStatus {
            connects: self.connects.load(Ordering::Relaxed),
            flags: self.info.flags,
            conns: self.lanes.len() as u8,
            // A detached leg is disconnected on purpose: no problem.
            problem: if self.parked.load(Ordering::Acquire) {
                Msg::new(format_args!(""))
            } else {
                self.problem.lock().clone()
            },
        }
    }

    fn tick_ms(&self) -> u32 {
        (self.cfg.timeout_ms / 4).clamp(100, 1000)
    }

    /// Closes every lane's connection (telling the server first with
    /// `goodbye`) and takes back every request: those in flight, oldest
    /// first, then those queued, lane by lane.  The caller holds `conn`.
    fn reap(&self, goodbye: bool) -> LegBioQueue {
        // Per lane, the request being sent and the one being received.
        let mut partial: [Option<(u64, LegBio)>; 2 * MAX_CONNS] = core::array::from_fn(|_| None);
        let mut queued = LegBioQueue::new();
        for (lane, pair) in self.lanes.iter().zip(partial.chunks_mut(2)) {
            let mut tx = lane.tx.lock();
            let mut rx = lane.rx.lock();
            if goodbye {
                say_goodbye(&tx);
            }
            tx.sock = None;
            rx.sock = None;
            if let [sending, receiving] = pair {
                *sending = tx.cur.take().map(|c| (c.seq, c.bio));
                lane.data_since.store(0, Ordering::Relaxed);
                *receiving = match core::mem::replace(&mut rx.rx, RX_START) {
                    Rx::Data { bio, seq, .. } => Some((seq, bio)),
                    Rx::Header { .. } => None,
                };
            }
            queued.append(core::mem::replace(&mut tx.queue, LegBioQueue::new()));
            queued.append(lane.submitted.take());
        }
        let mut s = self.slots.lock();
        let mut back = LegBioQueue::new();
        loop {
            // The oldest of the slots' bios and the partial ones.
            let slot = s
                .slots
                .iter()
                .enumerate()
                .filter(|(_, sl)| sl.bio.is_some())
                .min_by_key(|(_, sl)| sl.seq)
                .map(|(i, sl)| (i, sl.seq));
            let part = partial
                .iter()
                .enumerate()
                .filter_map(|(i, p)| p.as_ref().map(|(q, _)| (i, *q)))
                .min_by_key(|&(_, q)| q);
            let bio = match (slot, part) {
                (None, None) => break,
                (Some((i, q)), Some((_, pq))) if q < pq => {
                    s.slots.get_mut(i).and_then(|sl| sl.bio.take())
                }
                (Some((i, _)), None) => s.slots.get_mut(i).and_then(|sl| sl.bio.take()),
                (_, Some((j, _))) => partial
                    .get_mut(j)
                    .and_then(Option::take)
                    .map(|(_, bio)| bio),
            };
            if let Some(bio) = bio {
                back.push_back(bio);
            }
        }
        for sl in s.slots.iter_mut() {
            sl.cookie = 0;
        }
        s.free = u64::MAX;
        self.inflight.store(0, Ordering::Relaxed);
        back.append(queued);
        back
    }

    /// Drops connection `gen` for `why`, if it is still the current one:
    /// the requests of every lane go back to the front of the first
    /// lane's queue, the device is told, and reconnecting starts (unless
    /// parked).  With `goodbye` (we leave on purpose) the server is told
    /// first.
    fn fail_connection(self: &Arc<Self>, gen: u64, why: Msg, goodbye: bool) {
        {
            let _conn = self.conn.lock();
            if self.gen.load(Ordering::Acquire) != gen || self.link() != Link::Up {
                return;
            }
            self.gen.fetch_add(1, Ordering::AcqRel);
            if self.answered.swap(false, Ordering::AcqRel) {
                self.down_since_ms.store(now_ms(), Ordering::Release);
            }
            // I/O is held until the device says otherwise (`went_down`):
            // the last outage's policy must not fail it meanwhile, before
            // the device has chosen (a write failed on its last in-sync
            // leg would be lost).
            self.hold.store(true, Ordering::Release);
            // No lane starts sending from here on; a lane at work finishes
            // before `reap` takes its lock.
            self.link.store(Link::Down as u8, Ordering::Release);
            let back = self.reap(goodbye);
            if let Some(lane) = self.lanes.first() {
                lane.tx.lock().queue.prepend(back);
            }
        }
        self.log(&why);
        *self.problem.lock() = why;
        self.went_down();
    }

    /// Drops the connection if the leg is parked.  `park` stores `parked`
    /// and the connect job stores `link` before calling this: the fence
    /// makes sure at least one of them sees the other's store.
    fn disconnect_if_parked(self: &Arc<Self>) -> bool {
        fence(Ordering::SeqCst);
        if !self.parked.load(Ordering::Relaxed) {
            return false;
        }
        let gen = self.gen.load(Ordering::Acquire);
        self.fail_connection(gen, Msg::new(format_args!("detached")), true);
        true
    }

    /// The connection broke: tell the device, and reconnect.
    fn went_down(self: &Arc<Self>) {
        let owner = self.owner.lock().clone();
        let policy = match owner {
            Some((dev, leg)) => dev.remote_down(leg),
            None => Policy::Hold,
        };
        self.set_policy(policy);
        self.check_dead(now_ms());
        let backoff = self.backoff_ms.load(Ordering::Relaxed);
        Job::<Remote, CONNECT>::queue(self.clone(), backoff);
        Job::<Remote, TICK>::queue(self.clone(), self.tick_ms());
    }

    /// Once the outage is older than the dead time, held I/O fails (the
    /// send job does it) and new I/O fails at once until a reconnect.
    /// Returns whether I/O is still held.
    fn check_dead(self: &Arc<Self>, now: u64) -> bool {
        if !self.hold.load(Ordering::Acquire) || self.dead.load(Ordering::Acquire) {
            return false;
        }
        let since = self.down_since_ms.load(Ordering::Acquire);
        if now.saturating_sub(since) < u64::from(self.cfg.dead_ms) {
            return true;
        }
        self.dead.store(true, Ordering::Release);
        self.kick_senders();
        false
    }

    fn log(&self, why: &Msg) {
        if let Some((dev, leg)) = self.owner.lock().as_ref() {
            pr_warn!("{}: leg {}: {}\n", dev.name(), leg, why.as_str());
        }
    }

    /// Sends what can be sent.  Fails with why the connection broke, if it
    /// did.
    fn pump_send(&self, lane: usize, tx: &mut TxState, done: &mut LegBioQueue) -> Result<(), Msg> {
        let res = self.send_requests(lane, tx, done);
        if let Some(sock) = tx.sock.as_ref() {
            sock.push_held();
        }
        res
    }

    /// Sends requests until the queue is empty, every slot is taken or
    /// the socket is full.  While more requests are queued, each goes out
    /// with "more", so that they leave together.
    fn send_requests(
        &self,
        lane: usize,
        tx: &mut TxState,
        done: &mut LegBioQueue,
    ) -> Result<(), Msg> {
        loop {
            if tx.cur.is_none() {
                let Some(mut bio) = tx.queue.pop_front() else {
                    return Ok(());
                };
                let (kind, flags) = match command(&bio, &self.info) {
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
                if offset
                    .checked_add(len.into())
                    .map_or(true, |end| end > self.info.size)
                {
                    bio.record(Err(EIO));
                    done.push_back(bio);
                    continue;
                }
                let gen = tx.gen;
                let reserved = {
                    let mut s = self.slots.lock();
                    if s.free == 0 {
                        // Set under the table's lock: a slot freed from
                        // now on sees it and kicks us.
                        self.tx_stalled.fetch_or(1 << lane, Ordering::AcqRel);
                        None
                    } else {
                        let seq = self.seq.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
                        let slot = s.free.trailing_zeros() as usize;
                        let cookie = (gen << 40) | ((seq & 0xffff_ffff) << 8) | slot as u64;
                        s.free &= !(1 << slot);
                        if let Some(sl) = s.slots.get_mut(slot) {
                            sl.cookie = cookie;
                            sl.seq = seq;
                            sl.sent_ms = now_ms();
                            sl.reads = kind == cmd::READ;
                            sl.lane = lane as u8;
                        }
                        Some((slot, cookie, seq))
                    }
                };
                let Some((slot, cookie, seq)) = reserved else {
                    // Every slot is busy: a reply will kick us.
                    let mut front = LegBioQueue::new();
                    front.push_back(bio);
                    tx.queue.prepend(front);
                    return Ok(());
                };
                let req = Request {
                    flags,
                    kind,
                    cookie,
                    offset,
                    length: if kind == cmd::FLUSH { 0 } else { len },
                };
                tx.cur = Some(TxCur {
                    slot,
                    cookie,
                    seq,
                    bio,
                    hdr: req.encode(),
                    hdr_done: 0,
                    data: if kind == cmd::WRITE { len } else { 0 },
                    data_done: 0,
                });
                self.inflight.fetch_add(1, Ordering::Relaxed);
            }
            // Send under the table's lock, and publish the bio under the
            // same hold: a reply that finds its slot without a bio then
            // really came before the request was fully sent.
            let mut s = self.slots.lock();
            let TxState {
                sock, cur, queue, ..
            } = &mut *tx;
            let (Some(c), Some(sock)) = (cur.as_mut(), sock.as_ref()) else {
                return Ok(());
            };
            let more_requests = !queue.is_empty();
            while c.hdr_done < c.hdr.len() {
                let rest = c.hdr.get(c.hdr_done..).unwrap_or(&[]);
                let more = c.data > 0 || more_requests;
                match sock.send(rest, more) {
                    Ok(n) => c.hdr_done += n,
                    Err(e) if e == EAGAIN => return Ok(()),
                    Err(e) => return Err(io_msg("send", e)),
                }
            }
            while c.data_done < c.data {
                match sock.send_bio(&c.bio, c.data_done, more_requests) {
                    Ok(n) => c.data_done += n as u32,
                    Err(e) if e == EAGAIN => return Ok(()),
                    Err(e) => return Err(io_msg("send", e)),
                }
            }
            if let Some(c) = cur.take() {
                match s.slots.get_mut(c.slot) {
                    Some(sl) if sl.cookie == c.cookie => sl.bio = Some(c.bio),
                    _ => {
                        let mut bio = c.bio;
                        bio.record(Err(EIO));
                        done.push_back(bio);
                    }
                }
            }
        }
    }

    /// Notes when the read whose data lane `lane` now receives was sent
    /// (`sent_ms`), or (0) that it receives none.
    fn watch_data(&self, lane: usize, sent_ms: u64) {
        if let Some(l) = self.lanes.get(lane) {
            l.data_since.store(sent_ms, Ordering::Release);
        }
    }

    /// Reads what has arrived.  Fails with why the connection broke, if it
    /// did.  Sets `freed` when a slot became free.
    fn pump_recv(
        &self,
        lane: usize,
        rs: &mut RxState,
        done: &mut LegBioQueue,
        freed: &mut bool,
    ) -> Result<(), Msg> {
        loop {
            let RxState { sock, rx, .. } = &mut *rs;
            let Some(sock) = sock.as_ref() else {
                return Ok(());
            };
            match rx {
                Rx::Header { buf, got } => {
                    let rest = buf.get_mut(*got..).unwrap_or(&mut []);
                    match sock.recv(rest) {
                        Ok(0) => {
                            return Err(Msg::new(format_args!("the server closed the connection")))
                        }
                        Ok(n) => *got += n,
                        Err(e) if e == EAGAIN => return Ok(()),
                        Err(e) => return Err(io_msg("receive", e)),
                    }
                    if *got < SimpleReply::SIZE {
                        continue;
                    }
                    let reply = match SimpleReply::decode(buf) {
                        Ok(r) => r,
                        Err(nbd::WireError::Structured) => {
                            return Err(Msg::new(format_args!(
                                "protocol error: unrequested structured reply"
                            )))
                        }
                        Err(_) => {
                            return Err(Msg::new(format_args!("protocol error: bad reply magic")))
                        }
                    };
                    let slot = (reply.cookie & 0xff) as usize;
                    let taken = {
                        let mut s = self.slots.lock();
                        let found = match s.slots.get_mut(slot) {
                            Some(sl)
                                if reply.cookie != 0
                                    && sl.cookie == reply.cookie
                                    && usize::from(sl.lane) == lane =>
                            {
                                Some(sl.bio.take().map(|b| (b, sl.seq, sl.reads)))
                            }
                            _ => None,
                        };
                        if let Some(Some(_)) = found {
                            if let Some(sl) = s.slots.get_mut(slot) {
                                if sl.reads && reply.error == 0 {
                                    // Before the slot is free: the tick
                                    // then sees one or the other.
                                    self.watch_data(lane, sl.sent_ms.max(1));
                                }
                                sl.cookie = 0;
                            }
                            s.free |= 1 << slot;
                        }
                        found
                    };
                    let (mut bio, seq, reads) = match taken {
                        None => {
                            return Err(Msg::new(format_args!(
                                "protocol error: reply to an unknown request"
                            )))
                        }
                        // Not even sent in full: the server cannot know it.
                        Some(None) => {
                            return Err(Msg::new(format_args!(
                                "protocol error: reply to a request not sent yet"
                            )))
                        }
                        Some(Some(t)) => t,
                    };
                    self.inflight.fetch_sub(1, Ordering::Relaxed);
                    self.answered.store(true, Ordering::Relaxed);
                    *freed = true;
                    let len = bio.bytes();
                    if reply.error == 0 && reads && len > 0 {
                        *rx = Rx::Data {
                            bio,
                            seq,
                            got: 0,
                            len,
                        };
                        continue;
                    }
                    self.watch_data(lane, 0);
                    *rx = RX_START;
                    bio.record(if reply.error == 0 {
                        Ok(())
                    } else {
                        Err(errno::from_nbd(reply.error))
                    });
                    done.push_back(bio);
                }
                Rx::Data { bio, got, len, .. } => {
                    match sock.recv_bio(bio, *got) {
                        Ok(0) => {
                            return Err(Msg::new(format_args!("the server closed the connection")))
                        }
                        Ok(n) => *got += n as u32,
                        Err(e) if e == EAGAIN => return Ok(()),
                        Err(e) => return Err(io_msg("receive", e)),
                    }
                    if *got < *len {
                        continue;
                    }
                    self.watch_data(lane, 0);
                    if let Rx::Data { mut bio, .. } = core::mem::replace(rx, RX_START) {
                        bio.record(Ok(()));
                        done.push_back(bio);
                    }
                }
            }
        }
    }
}

impl Remote {
    /// Sends what was submitted to lane `lane`, or fails it if the
    /// connection is down and the policy says so.  Runs in the lane's send
    /// job, or in a submitter's context ([`Remote::hand_over`]).
    fn send_pass(this: &Arc<Self>, lane: usize) {
        let Some(l) = this.lanes.get(lane) else {
            return;
        };
        let mut done = LegBioQueue::new();
        let mut broke = None;
        {
            let mut tx = l.tx.lock();
            l.sending.store(true, Ordering::Relaxed);
            let queued = l.submitted.take();
            tx.queue.append(queued);
            match this.link() {
                Link::Up => {
                    let gen = tx.gen;
                    if let Err(why) = this.pump_send(lane, &mut tx, &mut done) {
                        broke = Some((gen, why));
                    }
                }
                Link::Down => {
                    if this.dead.load(Ordering::Acquire) {
                        fail_all(&mut tx.queue, Err(EIO), &mut done);
                    } else if !this.hold.load(Ordering::Acquire) {
                        fail_all(&mut tx.queue, Err(errno::leg_away()), &mut done);
                    }
                }
                Link::Stopped => fail_all(&mut tx.queue, Err(EIO), &mut done),
            }
            l.sending.store(false, Ordering::Relaxed);
        }
        finish(done);
        if let Some((gen, why)) = broke {
            this.fail_connection(gen, why, false);
        } else if this.inflight.load(Ordering::Relaxed) > 0 {
            Job::<Remote, TICK>::queue(this.clone(), this.tick_ms());
        }
    }

    /// Makes sure lane `lane`'s receive job looks at its socket soon:
    /// queues it, unless it is queued already or at work (it then looks
    /// again before it stops).  Called for every arrival of data, from
    /// the socket callback, so the common case is one atomic operation.
    fn kick_recv(this: ArcBorrow<'_, Self>, lane: usize) {
        let Some(l) = this.lanes.get(lane) else {
            return;
        };
        if l.rx_kick.kick() {
            Self::queue_recv(this.into(), lane);
        }
    }

    /// Reads lane `lane`'s replies.  Runs in the lane's receive job.
    fn recv_pass(this: &Arc<Self>, lane: usize) {
        let Some(l) = this.lanes.get(lane) else {
            return;
        };
        for pass in 1.. {
            if this.link() != Link::Up {
                // A new connection's jobs are queued when it is up.
                l.rx_kick.release();
                return;
            }
            let mut done = LegBioQueue::new();
            let mut broke = None;
            let mut freed = false;
            let mut next = RecvNext::Stop;
            {
                let mut rx = l.rx.lock();
                let gen = rx.gen;
                match this.pump_recv(lane, &mut rx, &mut done, &mut freed) {
                    Err(why) => broke = Some((gen, why)),
                    // Data that came meanwhile queued nothing: look again.
                    Ok(()) => {
                        next = l
                            .rx_kick
                            .after_pass(pass, || rx.sock.as_ref().is_some_and(|s| s.readable()))
                    }
                }
            }
            finish(done);
            if let Some((gen, why)) = broke {
                l.rx_kick.release();
                this.fail_connection(gen, why, false);
                return;
            }
            if freed {
                // Slots are free again: the stalled lanes' queues may move.
                let stalled = this.tx_stalled.swap(0, Ordering::AcqRel);
                for i in 0..this.lanes.len() {
                    if stalled & (1 << i) != 0 {
                        Self::queue_send(this.clone(), i);
                    }
                }
            }
            match next {
                RecvNext::Stop => return,
                RecvNext::Again => {}
                RecvNext::Requeue => {
                    // Shares the worker with others.
                    Self::queue_recv(this.clone(), lane);
                    return;
                }
            }
        }
    }
}

impl JobRun<TICK> for Remote {
    fn run(this: Arc<Self>) {
        let now = now_ms();
        let mut again = false;
        match this.link() {
            Link::Up => {
                let gen = this.gen.load(Ordering::Acquire);
                // The requests in flight, and the reads whose data is
                // still coming (their slots are free already).
                let oldest = {
                    let s = this.slots.lock();
                    s.slots
                        .iter()
                        .filter(|sl| sl.cookie != 0)
                        .map(|sl| sl.sent_ms)
                        .min()
                };
                let reading = this
                    .lanes
                    .iter()
                    .map(|l| l.data_since.load(Ordering::Acquire))
                    .filter(|&t| t != 0)
                    .min();
                let oldest = match (oldest, reading) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                if let Some(t) = oldest {
                    if now.saturating_sub(t) > u64::from(this.cfg.timeout_ms) {
                        let why = Msg::new(format_args!(
                            "a request timed out after {} ms",
                            this.cfg.timeout_ms
                        ));
                        this.fail_connection(gen, why, false);
                        return;
                    }
                    again = true;
                }
            }
            Link::Down => {
                again = this.check_dead(now);
            }
            Link::Stopped => {}
        }
        if again {
            Job::<Remote, TICK>::queue(this.clone(), this.tick_ms());
        }
    }
}

impl JobRun<CONNECT> for Remote {
    // Dials and runs the handshake with blocking socket calls.
    const QUEUE: wq::Kind = wq::Kind::Wait;
    fn run(this: Arc<Self>) {
        if this.link() != Link::Down || this.parked.load(Ordering::SeqCst) {
            return;
        }
        let res = this.dial_lanes();
        let socks = match res {
            Ok(s) => s,
            // Cut short by `stop`.
            Err(_) if this.link() == Link::Stopped => return,
            Err(why) => {
                let changed = this.problem.lock().as_str() != why.as_str();
                if changed {
                    this.log(&why);
                }
                *this.problem.lock() = why;
                let backoff = this
                    .backoff_ms
                    .load(Ordering::Relaxed)
                    .saturating_mul(2)
                    .min(this.cfg.backoff_max_ms);
                this.backoff_ms.store(backoff, Ordering::Relaxed);
                Job::<Remote, CONNECT>::queue(this.clone(), backoff);
                return;
            }
        };
        if this.link() != Link::Down || this.install(socks).is_err() {
            Job::<Remote, CONNECT>::queue(this.clone(), this.cfg.backoff_max_ms);
            return;
        }
        {
            // Nothing held: whatever happens to this connection starts a
            // new outage.
            if this.lanes.iter().all(|l| l.tx.lock().queue.is_empty()) {
                this.answered.store(true, Ordering::Release);
            }
            this.backoff_ms.store(BACKOFF_MIN_MS, Ordering::Relaxed);
            this.dead.store(false, Ordering::Release);
            // Up, unless `stop` came meanwhile: then it reaps the sockets
            // once this job has ended, and the leg stays stopped.
            if this
                .link
                .compare_exchange(
                    Link::Down as u8,
                    Link::Up as u8,
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                )
                .is_err()
            {
                return;
            }
            this.connects.fetch_add(1, Ordering::Relaxed);
        }
        if this.disconnect_if_parked() {
            // Parked while connecting.
            return;
        }
        *this.problem.lock() = Msg::new(format_args!(""));
        let owner = this.owner.lock().clone();
        if let Some((dev, leg)) = owner {
            pr_info!("{}: leg {}: connected again\n", dev.name(), leg);
            dev.remote_up(leg);
        }
        for lane in 0..this.lanes.len() {
            Self::queue_send(this.clone(), lane);
            Self::queue_recv(this.clone(), lane);
        }
    }
}

impl Remote {
    /// Connects every lane again, to the export the leg had.
    fn dial_lanes(&self) -> Result<KVec<Pin<UniqueArc<Socket>>>, Msg> {
        let n = self.lanes.len();
        let mut socks = KVec::with_capacity(n, GFP_KERNEL).map_err(|_| oom_msg())?;
        dial_rest(
            &self.cfg,
            &self.info,
            n,
            &mut socks,
            Changed::refusal,
            Some(&self.dialing),
        )
        .map_err(|(_, m)| m)?;
        Ok(socks)
    }
}

impl SockEvents for Remote {
    fn sock_event(this: ArcBorrow<'_, Self>, lane: usize, event: SockEvent) {
        match event {
            SockEvent::Writable => Self::queue_send(this.into(), lane),
            SockEvent::Readable | SockEvent::Closed => Self::kick_recv(this, lane),
        }
    }
}
