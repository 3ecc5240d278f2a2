// SPDX-License-Identifier: GPL-2.0

//! Exports: dst devices served over NBD from the kernel.
//!
//! A [`Listener`] owns a listening TCP socket and the exports reachable
//! through it (selected by export name).  Its accept job takes each new
//! connection, refuses it at once unless its source address is allowed by
//! some export of the listener, and starts a [`Conn`].
//!
//! A connection first runs the NBD handshake (fixed newstyle, the server
//! side in `proto::nbd_server`) with blocking socket calls bounded by the
//! socket timeouts and an overall deadline, in its own job.  Then the
//! transmission phase is non-blocking: the receive job reads requests,
//! checks each one, and submits reads and writes to the device as page
//! I/O that completes asynchronously and possibly out of order; the send
//! job writes the replies, except those that are ready when the receive
//! job finishes: it sends those itself, which spares a wake-up of the send
//! job when the device completes I/O in the submitter's context.  Each
//! side holds a reference to the socket of its own, so a busy receive side
//! never holds up replies.  A client may have at most [`MAX_INFLIGHT`]
//! requests or [`MAX_INFLIGHT_BYTES`] in flight: past that the receive
//! job stops reading, so a client that sends without reading its replies
//! only stalls itself.  FLUSH, TRIM and WRITE_ZEROES are rare and run
//! synchronously in the receive job; a FLUSH covers every write completed
//! before it, on every leg, as the block layer's flush does.
//!
//! The device is opened exclusively for the export's lifetime: it cannot
//! be mounted meanwhile nor removed before being unexported.

use core::net::SocketAddr;
use core::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU64, Ordering};

use kernel::prelude::*;
use kernel::sync::{Arc, ArcBorrow, Mutex};
use kernel::{new_mutex, str::CString};

use crate::bdev::{BlockDev, Holder};
use crate::bio::{LegBio, PageBuf};
use crate::device::Device;
use crate::errno;
use crate::glue::now_ms;
use crate::io::{page_io, BioSink, Gate, PageIoOwner, PageOp};
use crate::job::{impl_has_job, Job, JobRun};
use crate::msg::{refuse, Msg, Refusal};
use crate::proto::genl::{MAX_ALLOW, MAX_CLIENTS, MAX_EXPORTS};
use crate::proto::nbd::{cmd, cmdflag, tflag, Request, SimpleReply, StructuredReply};
use crate::proto::nbd_server::{self, ExportLookup, RequestVerdict, ServedExport};
use crate::socket::{RecvKick, RecvNext, SockEvent, SockEvents, Socket};
use crate::wq;

/// Most requests in flight per client.
pub(crate) const MAX_INFLIGHT: usize = 64;
/// Most bytes of request data held per client.
pub(crate) const MAX_INFLIGHT_BYTES: u32 = 16 << 20;
/// Longest read or write advertised.
const MAX_BLOCK: u32 = 4 << 20;
/// Timeout of each blocking step of the handshake, and of unacknowledged
/// sends afterwards.
const SOCK_TIMEOUT_MS: u32 = 10_000;
/// The whole handshake must be over by then.
const HANDSHAKE_MS: u64 = 30_000;

/// A network allowed to connect: an address and a prefix length.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cidr {
    addr: [u8; 16],
    v6: bool,
    prefix: u8,
}

impl Cidr {
    /// Parses `IP/PREFIX` (or a bare IP, a single host).
    pub(crate) fn parse(s: &str) -> Option<Cidr> {
        let (ip, prefix) = match s.split_once('/') {
            Some((ip, p)) => (ip, Some(p.parse::<u8>().ok()?)),
            None => (s, None),
        };
        if let Ok(a) = ip.parse::<core::net::Ipv4Addr>() {
            let prefix = prefix.unwrap_or(32);
            if prefix > 32 {
                return None;
            }
            let mut addr = [0u8; 16];
            addr[..4].copy_from_slice(&a.octets());
            return Some(Cidr {
                addr,
                v6: false,
                prefix,
            });
        }
        let a = ip.parse::<core::net::Ipv6Addr>().ok()?;
        let prefix = prefix.unwrap_or(128);
        if prefix > 128 {
            return None;
        }
        Some(Cidr {
            addr: a.octets(),
            v6: true,
            prefix,
        })
    }

    /// Whether `peer` lies in the network.  An IPv4-mapped IPv6 peer
    /// counts as IPv4.
    fn contains(&self, peer: &SocketAddr) -> bool {
        let (bytes, v6) = match peer {
            SocketAddr::V4(a) => {
                let mut b = [0u8; 16];
                b[..4].copy_from_slice(&a.ip().octets());
                (b, false)
            }
            SocketAddr::V6(a) => match a.ip().to_ipv4_mapped() {
                Some(v4) => {
                    let mut b = [0u8; 16];
                    b[..4].copy_from_slice(&v4.octets());
                    (b, false)
                }
                None => (a.ip().octets(), true),
            },
        };
        if v6 != self.v6 {
            return false;
        }
        let full = usize::from(self.prefix / 8);
        let rest = self.prefix % 8;
        if bytes[..full] != self.addr[..full] {
            return false;
        }
        if rest == 0 {
            return true;
        }
        let mask = 0xffu8 << (8 - rest);
        bytes[full] & mask == self.addr[full] & mask
    }
}

impl core::fmt::Display for Cidr {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        if self.v6 {
            write!(
                f,
                "{}/{}",
                core::net::Ipv6Addr::from(self.addr),
                self.prefix
            )
        } else {
            let a =
                core::net::Ipv4Addr::new(self.addr[0], self.addr[1], self.addr[2], self.addr[3]);
            write!(f, "{}/{}", a, self.prefix)
        }
    }
}

/// Whether `peer` is a loopback address (the default allowance).
fn is_loopback(peer: &SocketAddr) -> bool {
    match peer {
        SocketAddr::V4(a) => a.ip().is_loopback(),
        SocketAddr::V6(a) => {
            a.ip().is_loopback() || a.ip().to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// What `dstctl export` asks for.
pub(crate) struct ExportRequest {
    /// Where to listen.
    pub(crate) listen: SocketAddr,
    /// The export name.
    pub(crate) name: KVec<u8>,
    /// Refuse writes.
    pub(crate) read_only: bool,
    /// Networks allowed to connect (none: loopback only).
    pub(crate) allow: KVec<Cidr>,
}

/// The id of the next export.
static NEXT_EXPORT_ID: AtomicU64 = AtomicU64::new(1);

/// One device served under a name.
pub(crate) struct Export {
    /// Tells exports apart for the whole life of the module (a handshake
    /// names the export it chose by it, see [`Lookup`]).
    id: u64,
    dev: Arc<Device>,
    bdev: BlockDev,
    _holder: Holder,
    name: KVec<u8>,
    read_only: bool,
    allow: KVec<Cidr>,
    served: ServedExport,
    requests: AtomicU64,
}

impl BioSink for Export {
    fn bdev(&self) -> Option<&BlockDev> {
        Some(&self.bdev)
    }

    fn submit(&self, bio: LegBio) {
        bio.submit_local();
    }
}

impl Export {
    fn allows(&self, peer: &SocketAddr) -> bool {
        if self.allow.is_empty() {
            return is_loopback(peer);
        }
        self.allow.iter().any(|c| c.contains(peer))
    }

    /// The export name.
    pub(crate) fn name(&self) -> &[u8] {
        &self.name
    }

    /// Whether the export refuses writes.
    pub(crate) fn read_only(&self) -> bool {
        self.read_only
    }

    /// The networks allowed (empty: loopback only).
    pub(crate) fn allow(&self) -> &[Cidr] {
        &self.allow
    }

    /// Requests served so far.
    pub(crate) fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }
}

const ACCEPT: u64 = 0;

/// A listening socket and the exports reachable through it.
#[pin_data]
pub(crate) struct Listener {
    addr: SocketAddr,
    #[pin]
    sock: Mutex<Option<Socket>>,
    #[pin]
    exports: Mutex<KVec<Arc<Export>>>,
    #[pin]
    conns: Mutex<KVec<Arc<Conn>>>,
    refused: AtomicU64,
    closed: AtomicBool,
    #[pin]
    accept_job: Job<Listener, ACCEPT>,
}

impl_has_job!(Listener, ACCEPT, accept_job);

impl Listener {
    fn new(addr: SocketAddr) -> Result<Arc<Listener>, Refusal> {
        let sock = match Socket::listen(&addr) {
            Ok(s) => s,
            Err(e) if e.to_errno() == -98 => refuse!(e, "{} is in use", addr),
            Err(e) if e.to_errno() == -99 => {
                refuse!(e, "{} is not an address of this machine", addr)
            }
            Err(e) => refuse!(e, "cannot listen on {} (errno {})", addr, e.to_errno()),
        };
        let l = Arc::pin_init(
            pin_init!(Listener {
                addr,
                sock <- new_mutex!(None, "Listener::sock"),
                exports <- new_mutex!(KVec::new(), "Listener::exports"),
                conns <- new_mutex!(KVec::new(), "Listener::conns"),
                refused: AtomicU64::new(0),
                closed: AtomicBool::new(false),
                accept_job <- Job::new(),
            }),
            GFP_KERNEL,
        )?;
        let mut sock = sock;
        sock.watch::<_, 0>(l.clone())?;
        *l.sock.lock() = Some(sock);
        Ok(l)
    }

    /// The address listened on.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections refused so far.
    pub(crate) fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// The addresses of the clients of `export`.
    pub(crate) fn clients_of(&self, export: &Arc<Export>) -> KVec<SocketAddr> {
        let mut v = KVec::new();
        for c in self.conns.lock().iter() {
            let same = c
                .export
                .lock()
                .as_ref()
                .is_some_and(|e| Arc::ptr_eq(e, export));
            if same {
                let _ = v.push(c.peer, GFP_KERNEL);
            }
        }
        v
    }

    /// Stops listening, and closes every connection.  Waits (bounded) for
    /// their I/O to end.
    fn shut(self: &Arc<Self>) {
        self.closed.store(true, Ordering::Release);
        drop(self.sock.lock().take());
        Job::<Listener, ACCEPT>::disable(self);
        let conns = core::mem::take(&mut *self.conns.lock());
        for c in conns.iter() {
            c.close();
        }
        for c in conns.iter() {
            c.wait_idle();
        }
    }

    /// Closes the connections using `export`, and waits for their I/O.
    fn close_clients_of(&self, export: &Arc<Export>) {
        let mut gone = KVec::new();
        {
            let mut conns = self.conns.lock();
            let mut i = 0;
            while i < conns.len() {
                let same = conns[i]
                    .export
                    .lock()
                    .as_ref()
                    .is_some_and(|e| Arc::ptr_eq(e, export));
                if same {
                    if let Some(c) = take_at(&mut conns, i) {
                        let _ = gone.push(c, GFP_KERNEL);
                    }
                } else {
                    i += 1;
                }
            }
        }
        for c in gone.iter() {
            c.close();
        }
        for c in gone.iter() {
            c.wait_idle();
        }
    }

    fn forget(&self, conn: &Conn) {
        let mut conns = self.conns.lock();
        if let Some(i) = conns.iter().position(|c| core::ptr::eq(&**c, conn)) {
            take_at(&mut conns, i);
        }
    }
}

impl SockEvents for Listener {
    fn sock_event(this: ArcBorrow<'_, Self>, _tag: usize, event: SockEvent) {
        if event == SockEvent::Readable {
            Job::<Listener, ACCEPT>::queue(this.into(), 0);
        }
    }
}

impl JobRun<ACCEPT> for Listener {
    // Takes locks, and starts connections (allocations).
    const QUEUE: wq::Kind = wq::Kind::Wait;
    fn run(this: Arc<Self>) {
        loop {
            if this.closed.load(Ordering::Acquire) {
                return;
            }
            let accepted = match this.sock.lock().as_ref() {
                Some(s) => s.accept(SOCK_TIMEOUT_MS),
                None => return,
            };
            let sock = match accepted {
                Ok(Some(s)) => s,
                Ok(None) => return,
                // A connection aborted before we took it, or no memory:
                // try again shortly rather than spin here.
                Err(_) => {
                    Job::<Listener, ACCEPT>::queue(this, 100);
                    return;
                }
            };
            let Ok(peer) = sock.peer() else {
                continue;
            };
            let allowed = this.exports.lock().iter().any(|e| e.allows(&peer));
            if !allowed || this.conns.lock().len() >= MAX_CLIENTS {
                this.refused.fetch_add(1, Ordering::Relaxed);
                drop(sock);
                continue;
            }
            let Ok(conn) = Conn::new(this.clone(), peer) else {
                this.refused.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            if this.conns.lock().push(conn.clone(), GFP_KERNEL).is_err() {
                continue;
            }
            let Ok(sock) = Arc::new(sock, GFP_KERNEL) else {
                conn.close();
                continue;
            };
            *conn.hs_sock.lock() = Some(sock);
            Job::<Conn, HANDSHAKE>::queue(conn, 0);
        }
    }
}

/// One request being served.
struct Req {
    conn: Arc<Conn>,
    cookie: u64,
    /// Where a read reads from (its structured reply names it).
    offset: u64,
    /// Data to send back (a read), or the written data.
    buf: Option<Arc<PageBuf>>,
    len: u32,
    read: bool,
    /// NBD error code of the reply, once done.
    error: AtomicU32,
    done: AtomicBool,
}

impl PageIoOwner for Req {
    fn page_io_done(this: Arc<Self>, res: Result) {
        let code = match res {
            Ok(()) => 0,
            Err(e) => errno::to_nbd(e),
        };
        this.error.store(code, Ordering::Relaxed);
        // Counted before it can be taken (the send side subtracts).
        // SeqCst: see `Conn::kick_send`.
        this.conn.ready.fetch_add(1, Ordering::SeqCst);
        // SeqCst, like the load in `take_done`: the receive job, if
        // `kick_send` leaves the reply to it, must find it done.  (A
        // release store could still sit in this CPU's store buffer when
        // `kick_send` reads `receiving`.)
        this.done.store(true, Ordering::SeqCst);
        this.conn.kick_send();
    }
}

/// The requests of a connection not answered yet, in fixed slots (no
/// allocation per request).
struct Pending {
    slots: KVec<Option<Arc<Req>>>,
    /// Where the search for a finished request starts (round robin, so
    /// that no finished request waits behind others for long).
    next: usize,
}

impl Pending {
    fn new() -> Result<Self> {
        let mut slots = KVec::with_capacity(MAX_INFLIGHT + 1, GFP_KERNEL)?;
        for _ in 0..=MAX_INFLIGHT {
            slots.push(None, GFP_KERNEL)?;
        }
        Ok(Pending { slots, next: 0 })
    }

    fn insert(&mut self, req: Arc<Req>) -> Result {
        let slot = self.slots.iter_mut().find(|s| s.is_none()).ok_or(ENOMEM)?;
        *slot = Some(req);
        Ok(())
    }

    /// Takes a finished request, if any.
    fn take_done(&mut self) -> Option<Arc<Req>> {
        let n = self.slots.len();
        for k in 0..n {
            let i = (self.next + k) % n;
            let done = self.slots[i]
                .as_ref()
                .is_some_and(|r| r.done.load(Ordering::SeqCst));
            if done {
                self.next = (i + 1) % n;
                return self.slots[i].take();
            }
        }
        None
    }
}

/// Where reading requests stands.
enum Rx {
    Header {
        buf: [u8; Request::SIZE],
        got: usize,
    },
    Payload {
        req: Request,
        buf: Arc<PageBuf>,
        got: u32,
    },
    Discard {
        left: u32,
        error: u32,
        cookie: u64,
    },
    /// The client sent `NBD_CMD_DISC`: nothing more is read, and the
    /// connection closes once every earlier request is answered.
    Leaving,
}

const RX_START: Rx = Rx::Header {
    buf: [0; Request::SIZE],
    got: 0,
};

/// The reply being sent.
struct TxCur {
    req: Arc<Req>,
    /// The reply's header: simple, or a structured chunk's.
    hdr: [u8; StructuredReply::MAX_SIZE],
    hdr_len: usize,
    hdr_done: usize,
    data_done: u32,
}

/// The receiving side.
struct ConnState {
    sock: Option<Arc<Socket>>,
    rx: Rx,
}

/// The sending side: a socket reference of its own, so that replies go
/// out while the receiving side is busy.
struct TxState {
    sock: Option<Arc<Socket>>,
    cur: Option<TxCur>,
}

const HANDSHAKE: u64 = 0;
const RECV: u64 = 1;
const SEND: u64 = 2;

/// One client connection.
#[pin_data]
pub(crate) struct Conn {
    listener: Arc<Listener>,
    peer: SocketAddr,
    #[pin]
    hs_sock: Mutex<Option<Arc<Socket>>>,
    #[pin]
    export: Mutex<Option<Arc<Export>>>,
    #[pin]
    rx: Mutex<ConnState>,
    #[pin]
    tx: Mutex<TxState>,
    /// Requests submitted and not yet answered.
    #[pin]
    pending: Mutex<Pending>,
    /// Counts the requests not answered (nor dropped) yet.
    inflight: Gate,
    inflight_bytes: AtomicU32,
    /// The receive side stopped at the in-flight limit; the send side
    /// restarts it once replies went out.
    throttled: AtomicBool,
    /// About how many finished requests wait for their reply to be sent
    /// (a hint: while there are, replies go out corked, together).
    ready: AtomicU32,
    /// The receive job is at work: it sends the replies that become
    /// ready meanwhile itself when it is done (a device that completes
    /// I/O in the submitter's context, such as a RAM disk, then needs no
    /// wake-up of the send job at all).
    receiving: AtomicBool,
    /// The send job is at work (a hint: the receive job then leaves the
    /// replies to it rather than wait for it).
    sending: AtomicBool,
    /// The receive job's wakeups (see [`Conn::kick_recv`]).
    rx_kick: RecvKick,
    /// The client asked for structured replies.
    structured: AtomicBool,
    /// The client sent `NBD_CMD_DISC` (see [`Rx::Leaving`]).
    leaving: AtomicBool,
    closed: AtomicBool,
    #[pin]
    hs_job: Job<Conn, HANDSHAKE>,
    #[pin]
    recv_job: Job<Conn, RECV>,
    #[pin]
    send_job: Job<Conn, SEND>,
}

impl_has_job!(Conn, HANDSHAKE, hs_job);
impl_has_job!(Conn, RECV, recv_job);
impl_has_job!(Conn, SEND, send_job);

/// The exports of a listener, as the handshake sees them for one peer.
/// It looks them up each time (an unexport meanwhile takes effect), and
/// holds none: it keeps the id of the one chosen last, so that a client
/// dawdling in its handshake keeps no device open (an unexported device
/// can be removed at once).
struct Lookup<'a> {
    listener: &'a Listener,
    peer: SocketAddr,
    chosen: Option<u64>,
}

impl Lookup<'_> {
    fn find(&self, name: &[u8]) -> Option<Arc<Export>> {
        let exports = self.listener.exports.lock();
        let mut allowed = exports.iter().filter(|e| e.allows(&self.peer));
        if name.is_empty() {
            // The default export: the only one this peer may use.
            let first = allowed.next();
            return if allowed.next().is_none() {
                first.cloned()
            } else {
                None
            };
        }
        allowed.find(|e| &e.name[..] == name).cloned()
    }
}

impl ExportLookup for Lookup<'_> {
    fn lookup(&mut self, name: &[u8]) -> Option<ServedExport> {
        let e = self.find(name)?;
        self.chosen = Some(e.id);
        Some(e.served)
    }

    fn for_each_export(&mut self, f: &mut dyn FnMut(&[u8], &[u8])) {
        // `f` sends, and may wait on a client that does not read: not
        // under the lock, which accepts and admin commands take too.
        // Copies, so that no export (nor its device) is held meanwhile.
        let mut shown: KVec<(KVec<u8>, KVec<u8>)> = KVec::new();
        {
            let exports = self.listener.exports.lock();
            for e in exports.iter().filter(|e| e.allows(&self.peer)) {
                let entry = (bytes_of(&e.name), bytes_of(e.dev.name().as_bytes()));
                let pushed = match entry {
                    (Ok(name), Ok(dev)) => shown.push((name, dev), GFP_KERNEL).is_ok(),
                    _ => false,
                };
                if !pushed {
                    // Out of memory: a shorter list (the client may ask
                    // for a name it knows).
                    break;
                }
            }
        }
        for (name, dev) in shown.iter() {
            f(name, dev);
        }
    }
}

impl Conn {
    fn new(listener: Arc<Listener>, peer: SocketAddr) -> Result<Arc<Conn>> {
        let pending = Pending::new()?;
        Arc::pin_init(
            pin_init!(Conn {
                listener,
                peer,
                hs_sock <- new_mutex!(None, "Conn::hs_sock"),
                export <- new_mutex!(None, "Conn::export"),
                rx <- new_mutex!(ConnState { sock: None, rx: RX_START }, "Conn::rx"),
                tx <- new_mutex!(TxState { sock: None, cur: None }, "Conn::tx"),
                pending <- new_mutex!(pending, "Conn::pending"),
                inflight: Gate::new(),
                inflight_bytes: AtomicU32::new(0),
                throttled: AtomicBool::new(false),
                ready: AtomicU32::new(0),
                receiving: AtomicBool::new(false),
                rx_kick: RecvKick::new(),
                sending: AtomicBool::new(false),
                structured: AtomicBool::new(false),
                leaving: AtomicBool::new(false),
                closed: AtomicBool::new(false),
                hs_job <- Job::new(),
                recv_job <- Job::new(),
                send_job <- Job::new(),
            }),
            GFP_KERNEL,
        )
    }

    /// Closes the connection: no more requests are read nor replies sent.
    /// Requests in flight end on their own.
    fn close(&self) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        if let Some(sock) = self.hs_sock.lock().take() {
            // A handshake in progress on it fails at once.
            sock.shutdown();
        }
        drop(self.rx.lock().sock.take());
        let cur = {
            let mut tx = self.tx.lock();
            tx.sock = None;
            tx.cur.take()
        };
        if let Some(cur) = cur {
            // Its request left `pending` but still counts.
            self.retire(&cur.req);
        }
        self.listener.forget(self);
        self.release_if_idle();
    }

    /// Once closed and idle, lets go of the export (and so of the
    /// device, once no connection holds it).
    fn release_if_idle(&self) {
        if !self.closed.load(Ordering::Acquire) {
            return;
        }
        // Drop what finished: nobody will get it.
        {
            let mut p = self.pending.lock();
            while let Some(r) = p.take_done() {
                self.ready.fetch_sub(1, Ordering::Relaxed);
                self.retire(&r);
            }
        }
        if self.inflight.count() == 0 {
            drop(self.export.lock().take());
        }
    }

    /// Whether the client has as much in flight as it may.
    fn over_budget(&self) -> bool {
        self.inflight.count() >= MAX_INFLIGHT
            || self.inflight_bytes.load(Ordering::SeqCst) >= MAX_INFLIGHT_BYTES
    }

    /// A request is answered, or dropped: it no longer counts.
    fn retire(&self, req: &Req) {
        self.inflight_bytes.fetch_sub(req.len, Ordering::SeqCst);
        self.inflight.leave();
    }

    /// Waits until no request of this connection is in flight (device
    /// I/O ends within its dead time).  The connection must be closed.
    fn wait_idle(&self) {
        self.inflight.wait_idle();
        drop(self.export.lock().take());
    }

    fn export(&self) -> Option<Arc<Export>> {
        self.export.lock().clone()
    }

    /// Queues an immediate reply.
    fn reply_now(self: &Arc<Self>, cookie: u64, error: u32) -> Result {
        let req = Arc::new(
            Req {
                conn: self.clone(),
                cookie,
                offset: 0,
                buf: None,
                len: 0,
                read: false,
                error: AtomicU32::new(error),
                done: AtomicBool::new(true),
            },
            GFP_KERNEL,
        )?;
        // Counted before it can be taken: it is done already, and whoever
        // takes it (a send pass, a close) retires it at once.
        self.inflight.enter();
        self.ready.fetch_add(1, Ordering::SeqCst);
        if let Err(e) = self.pending.lock().insert(req) {
            self.ready.fetch_sub(1, Ordering::Relaxed);
            self.inflight.leave();
            return Err(e);
        }
        self.kick_send();
        Ok(())
    }

    /// A reply was made ready (and counted in `ready`, with SeqCst).
    /// Unless the receive job will send it, the send job does.
    fn kick_send(self: &Arc<Self>) {
        // SeqCst: the increment of `ready` and this load pair with the
        // receive job's store of `receiving` and load of `ready`: one of
        // the two sides sees the other's store.
        if !self.receiving.load(Ordering::SeqCst) {
            Job::<Conn, SEND>::queue(self.clone(), 0);
        }
    }

    /// Makes sure the receive job looks at the socket soon: queues it,
    /// unless it is queued already or at work (it then looks again before
    /// it stops).  Called for every arrival of data, from the socket
    /// callback.
    fn kick_recv(this: ArcBorrow<'_, Self>) {
        if this.rx_kick.kick() {
            Job::<Conn, RECV>::queue(this.into(), 0);
        }
    }

    /// The receive job stops (or pauses) taking over the replies made
    /// ready meanwhile; returns whether some are ready, which it must then
    /// see sent.
    fn stop_receiving(&self) -> bool {
        // SeqCst: pairs with `kick_send` (the increment of `ready`, then
        // the load of `receiving`).
        self.receiving.store(false, Ordering::SeqCst);
        self.ready.load(Ordering::SeqCst) != 0
    }

    /// Starts a read or a write of `buf` for `r`.
    fn submit(self: &Arc<Self>, e: &Arc<Export>, r: &Request, buf: Arc<PageBuf>) -> Result {
        let read = r.kind == cmd::READ;
        let req = Arc::new(
            Req {
                conn: self.clone(),
                cookie: r.cookie,
                offset: r.offset,
                buf: Some(buf.clone()),
                len: r.length,
                read,
                error: AtomicU32::new(0),
                done: AtomicBool::new(false),
            },
            GFP_KERNEL,
        )?;
        self.pending.lock().insert(req.clone())?;
        self.inflight.enter();
        self.inflight_bytes.fetch_add(r.length, Ordering::SeqCst);
        let op = if read {
            PageOp::Read
        } else if r.flags & cmdflag::FUA != 0 {
            PageOp::WriteFua
        } else {
            PageOp::Write
        };
        e.requests.fetch_add(1, Ordering::Relaxed);
        if let Err(err) = page_io(req.clone(), buf, &**e, op, r.offset >> 9, r.length) {
            Req::page_io_done(req, Err(err));
        }
        Ok(())
    }

    /// Runs a request that needs no data transfer, synchronously.
    fn run_sync(self: &Arc<Self>, e: &Arc<Export>, r: &Request) -> Result {
        e.requests.fetch_add(1, Ordering::Relaxed);
        let (sector, nr) = (r.offset >> 9, u64::from(r.length) >> 9);
        let mut res = match r.kind {
            cmd::FLUSH => e.bdev.flush(),
            cmd::TRIM => e.bdev.trim(sector, nr),
            cmd::WRITE_ZEROES => e.bdev.zeroout(sector, nr, r.flags & cmdflag::NO_HOLE != 0),
            // CACHE is not advertised; check_request refuses it.
            _ => Err(EINVAL),
        };
        if res.is_ok() && r.kind != cmd::FLUSH && r.flags & cmdflag::FUA != 0 {
            res = e.bdev.flush();
        }
        self.reply_now(r.cookie, res.map_or_else(errno::to_nbd, |()| 0))
    }

    /// Reads and starts requests until the socket is empty or the client
    /// has too much in flight.  Fails with why the connection must close.
    fn pump_recv(self: &Arc<Self>, e: &Arc<Export>) -> Result<(), Msg> {
        let mut st = self.rx.lock();
        let Some(sock) = st.sock.clone() else {
            return Ok(());
        };
        let mut taken = 0;
        loop {
            match &mut st.rx {
                Rx::Header { buf, got } => {
                    if *got == 0 && taken == MAX_INFLIGHT {
                        // Enough for one pass: the caller looks again
                        // (flushes free the budget as they go, so it alone
                        // would not end a pass).
                        return Ok(());
                    }
                    if self.over_budget() {
                        // Resumed when replies go out (the send side may
                        // have made room meanwhile: look again).
                        // SeqCst: this store and the loads below pair with
                        // the send side's fence and swap.
                        self.throttled.store(true, Ordering::SeqCst);
                        if self.over_budget() {
                            return Ok(());
                        }
                        self.throttled.store(false, Ordering::Release);
                    }
                    match sock.recv(&mut buf[*got..]) {
                        Ok(0) => return Err(Msg::new(format_args!("closed by the client"))),
                        Ok(n) => *got += n,
                        Err(err) if err == EAGAIN => return Ok(()),
                        Err(err) => {
                            return Err(Msg::new(format_args!(
                                "receive failed (errno {})",
                                err.to_errno()
                            )))
                        }
                    }
                    if *got < Request::SIZE {
                        continue;
                    }
                    let Ok(r) = Request::decode(buf) else {
                        return Err(Msg::new(format_args!("bad request magic")));
                    };
                    st.rx = RX_START;
                    taken += 1;
                    match nbd_server::check_request(&r, &e.served) {
                        Ok(()) => {}
                        Err(RequestVerdict::Fatal(why)) => {
                            return Err(Msg::new(format_args!("{}", why)))
                        }
                        Err(RequestVerdict::Error(code)) => {
                            if r.has_payload() && r.length > 0 {
                                st.rx = Rx::Discard {
                                    left: r.length,
                                    error: code,
                                    cookie: r.cookie,
                                };
                            } else {
                                self.reply_now(r.cookie, code).map_err(|_| oom())?;
                            }
                            continue;
                        }
                    }
                    match r.kind {
                        cmd::DISC => {
                            // The requests before it are still answered
                            // (the NBD spec asks a server to); the send
                            // side closes once they are.
                            st.rx = Rx::Leaving;
                            self.leaving.store(true, Ordering::SeqCst);
                            return Ok(());
                        }
                        cmd::READ => {
                            let buf = alloc_buf(r.length)?;
                            self.submit(e, &r, buf).map_err(|_| oom())?;
                        }
                        cmd::WRITE => {
                            let buf = alloc_buf(r.length)?;
                            st.rx = Rx::Payload {
                                req: r,
                                buf,
                                got: 0,
                            };
                        }
                        _ => {
                            drop(st);
                            // The request may take long (a flush): the
                            // send job answers what is ready meanwhile.
                            if self.stop_receiving() {
                                Job::<Conn, SEND>::queue(self.clone(), 0);
                            }
                            let res = self.run_sync(e, &r);
                            self.receiving.store(true, Ordering::SeqCst);
                            res.map_err(|_| oom())?;
                            st = self.rx.lock();
                            if st.sock.is_none() {
                                // Closed meanwhile: no more requests.
                                return Ok(());
                            }
                        }
                    }
                }
                Rx::Payload { req, buf, got } => {
                    match sock.recv_pages(buf, *got, req.length) {
                        Ok(0) => return Err(Msg::new(format_args!("closed by the client"))),
                        Ok(n) => *got += n as u32,
                        Err(err) if err == EAGAIN => return Ok(()),
                        Err(err) => {
                            return Err(Msg::new(format_args!(
                                "receive failed (errno {})",
                                err.to_errno()
                            )))
                        }
                    }
                    if *got < req.length {
                        continue;
                    }
                    if let Rx::Payload { req, buf, .. } = core::mem::replace(&mut st.rx, RX_START) {
                        self.submit(e, &req, buf).map_err(|_| oom())?;
                    }
                }
                Rx::Leaving => return Ok(()),
                Rx::Discard {
                    left,
                    error,
                    cookie,
                } => {
                    let mut junk = [0u8; 512];
                    let n = (*left as usize).min(junk.len());
                    match sock.recv(&mut junk[..n]) {
                        Ok(0) => return Err(Msg::new(format_args!("closed by the client"))),
                        Ok(got) => *left -= got as u32,
                        Err(err) if err == EAGAIN => return Ok(()),
                        Err(err) => {
                            return Err(Msg::new(format_args!(
                                "receive failed (errno {})",
                                err.to_errno()
                            )))
                        }
                    }
                    if *left == 0 {
                        let (code, cookie) = (*error, *cookie);
                        st.rx = RX_START;
                        self.reply_now(cookie, code).map_err(|_| oom())?;
                    }
                }
            }
        }
    }

    /// Sends the replies of finished requests.  Fails with why the
    /// connection must close.
    fn pump_send(self: &Arc<Self>) -> Result<(), Msg> {
        let mut tx = self.tx.lock();
        let TxState { sock, cur } = &mut *tx;
        let Some(sock) = sock.as_ref() else {
            return Ok(());
        };
        let res = self.send_replies(sock, cur);
        sock.push_held();
        res
    }

    /// Sends replies until none is left or the socket is full.  While more
    /// replies are ready, each goes out with "more", so that they leave
    /// together: fewer segments, fewer wake-ups of the client.
    fn send_replies(self: &Arc<Self>, sock: &Socket, tx: &mut Option<TxCur>) -> Result<(), Msg> {
        loop {
            if tx.is_none() {
                let next = self.pending.lock().take_done();
                let Some(req) = next else {
                    return Ok(());
                };
                self.ready.fetch_sub(1, Ordering::Relaxed);
                let error = req.error.load(Ordering::Relaxed);
                let mut hdr = [0; StructuredReply::MAX_SIZE];
                let hdr_len = if self.structured.load(Ordering::Relaxed) {
                    StructuredReply {
                        error,
                        cookie: req.cookie,
                        read: req.read.then_some((req.offset, req.len)),
                    }
                    .encode(&mut hdr)
                } else {
                    let simple = SimpleReply {
                        error,
                        cookie: req.cookie,
                    }
                    .encode();
                    hdr[..SimpleReply::SIZE].copy_from_slice(&simple);
                    SimpleReply::SIZE
                };
                *tx = Some(TxCur {
                    req,
                    hdr,
                    hdr_len,
                    hdr_done: 0,
                    data_done: 0,
                });
            }
            let Some(cur) = tx.as_mut() else {
                return Ok(());
            };
            let with_data = cur.req.read && cur.req.error.load(Ordering::Relaxed) == 0;
            let more_replies = self.ready.load(Ordering::Relaxed) != 0;
            if cur.hdr_done < cur.hdr_len {
                let more = with_data || more_replies;
                match sock.send(&cur.hdr[cur.hdr_done..cur.hdr_len], more) {
                    Ok(n) => cur.hdr_done += n,
                    Err(err) if err == EAGAIN => return Ok(()),
                    Err(err) => {
                        return Err(Msg::new(format_args!(
                            "send failed (errno {})",
                            err.to_errno()
                        )))
                    }
                }
                continue;
            }
            if with_data && cur.data_done < cur.req.len {
                let Some(buf) = cur.req.buf.as_ref() else {
                    return Err(Msg::new(format_args!("internal: read without a buffer")));
                };
                match sock.send_pages(buf, cur.data_done, cur.req.len, more_replies) {
                    Ok(n) => cur.data_done += n as u32,
                    Err(err) if err == EAGAIN => return Ok(()),
                    Err(err) => {
                        return Err(Msg::new(format_args!(
                            "send failed (errno {})",
                            err.to_errno()
                        )))
                    }
                }
                continue;
            }
            // Sent in full.
            if let Some(cur) = tx.take() {
                self.retire(&cur.req);
                // Pairs with the receive side's store and loads (SeqCst).
                fence(Ordering::SeqCst);
                if self.throttled.swap(false, Ordering::SeqCst) {
                    Self::kick_recv(self.as_arc_borrow());
                }
            }
        }
    }

    fn drop_with(&self, why: &Msg) {
        if !why.as_str().is_empty() {
            if let Some(e) = self.export() {
                pr_info!(
                    "{}: export client {}: {}\n",
                    e.dev.name(),
                    self.peer,
                    why.as_str()
                );
            }
        }
        self.close();
    }
}

/// A copy of `b`.
fn bytes_of(b: &[u8]) -> Result<KVec<u8>> {
    let mut v = KVec::new();
    v.extend_from_slice(b, GFP_KERNEL)?;
    Ok(v)
}

fn oom() -> Msg {
    Msg::new(format_args!("out of memory"))
}

fn alloc_buf(len: u32) -> Result<Arc<PageBuf>, Msg> {
    let buf = PageBuf::new(len).map_err(|_| oom())?;
    Arc::new(buf, GFP_KERNEL).map_err(|_| oom())
}

impl JobRun<HANDSHAKE> for Conn {
    // Blocking socket calls, bounded by timeouts.
    const QUEUE: wq::Kind = wq::Kind::Wait;
    fn run(this: Arc<Self>) {
        // The connection keeps its reference meanwhile, so that a close
        // (an unexport) can shut the socket down under the handshake.
        let Some(sock) = this.hs_sock.lock().clone() else {
            return;
        };
        let mut lookup = Lookup {
            listener: &this.listener,
            peer: this.peer,
            chosen: None,
        };
        let mut scratch = match KVec::from_elem(0u8, nbd_server::SERVER_SCRATCH_LEN, GFP_KERNEL) {
            Ok(s) => s,
            Err(_) => {
                this.close();
                return;
            }
        };
        let res = {
            let mut t = sock.blocking_until(now_ms() + HANDSHAKE_MS);
            nbd_server::server_handshake(&mut t, &mut lookup, &mut scratch)
        };
        let chosen = match (res, lookup.chosen.take()) {
            (Ok(n), Some(e)) => {
                this.structured.store(n.structured, Ordering::Relaxed);
                e
            }
            (Ok(_), None) => {
                this.close();
                return;
            }
            (Err(e), _) => {
                if !matches!(e, nbd_server::ServerHandshakeError::Aborted) {
                    pr_info!(
                        "export client {}: handshake failed: {}\n",
                        this.peer,
                        e.what()
                    );
                }
                this.close();
                return;
            }
        };
        // Still exported?  (An unexport closes the clients it knows of,
        // and this one may have chosen its export just before.)  Under the
        // exports' lock, which an unexport takes to remove the export
        // before it closes the clients of it: either that finds this one
        // serving the export, or this finds the export gone.
        let live = {
            let exports = this.listener.exports.lock();
            let found = exports.iter().find(|e| e.id == chosen).cloned();
            let live = found.is_some();
            *this.export.lock() = found;
            live
        };
        // Taken back from the connection: a close from here on finds the
        // socket below instead.  Then ours is the only reference.
        let ours = this.hs_sock.lock().take().is_some();
        let unique = if ours {
            sock.into_unique_or_drop()
        } else {
            drop(sock);
            None
        };
        let Some(mut unique) = unique.filter(|_| live) else {
            this.close();
            return;
        };
        if this.closed.load(Ordering::Acquire) || unique.watch::<_, 0>(this.clone()).is_err() {
            this.close();
            return;
        }
        let sock = Arc::from(unique);
        this.tx.lock().sock = Some(sock.clone());
        this.rx.lock().sock = Some(sock);
        if this.closed.load(Ordering::Acquire) {
            drop(this.rx.lock().sock.take());
            drop(this.tx.lock().sock.take());
            return;
        }
        Self::kick_recv(this.as_arc_borrow());
    }
}

impl JobRun<RECV> for Conn {
    // Runs flushes, trims and zeroing synchronously (`run_sync`).
    const QUEUE: wq::Kind = wq::Kind::Wait;
    fn run(this: Arc<Self>) {
        for pass in 1.. {
            if this.closed.load(Ordering::Acquire) {
                return;
            }
            let Some(e) = this.export() else {
                return;
            };
            this.receiving.store(true, Ordering::SeqCst);
            let res = this.pump_recv(&e);
            let ready = this.stop_receiving();
            if let Err(why) = res {
                this.drop_with(&why);
                return;
            }
            if ready {
                if this.sending.load(Ordering::Relaxed) {
                    Job::<Conn, SEND>::queue(this.clone(), 0);
                } else {
                    Self::send_pass(&this);
                }
            }
            // `leaving` is only ever set by this job.
            if this.leaving.load(Ordering::Relaxed) && this.close_if_left() {
                return;
            }
            // Data that came meanwhile queued nothing: look again.  A
            // throttled receiver is restarted by the send side instead.
            let next = this.rx_kick.after_pass(pass, || {
                !this.throttled.load(Ordering::SeqCst)
                    && !this.leaving.load(Ordering::Relaxed)
                    && this.rx.lock().sock.as_ref().is_some_and(|s| s.readable())
            });
            match next {
                RecvNext::Stop => return,
                RecvNext::Again => {}
                RecvNext::Requeue => {
                    Job::<Conn, RECV>::queue(this, 0);
                    return;
                }
            }
        }
    }
}

impl JobRun<SEND> for Conn {
    fn run(this: Arc<Self>) {
        Self::send_pass(&this);
    }
}

impl Conn {
    /// Sends the replies that are ready, in the send job or at the end of
    /// the receive job.
    fn send_pass(this: &Arc<Self>) {
        if this.closed.load(Ordering::Acquire) {
            this.release_if_idle();
            return;
        }
        this.sending.store(true, Ordering::Relaxed);
        let res = this.pump_send();
        this.sending.store(false, Ordering::Relaxed);
        if let Err(why) = res {
            this.drop_with(&why);
        } else {
            this.close_if_left();
        }
    }

    /// Closes the connection if the client sent `NBD_CMD_DISC` and every
    /// request it sent before is answered (a reply is retired once sent
    /// in full).  Called by both sides after their pass: the last reply's
    /// send pass, or the receive pass that read the `DISC` if nothing was
    /// in flight.  Returns whether the connection is closed.
    fn close_if_left(&self) -> bool {
        // Pairs with itself: the receive job stores `leaving`, the send
        // pass retires the last reply, then each comes here.  Either sees
        // the other's change.
        fence(Ordering::SeqCst);
        if self.leaving.load(Ordering::Relaxed) && self.inflight.count() == 0 {
            self.close();
        }
        self.closed.load(Ordering::Acquire)
    }
}

impl SockEvents for Conn {
    fn sock_event(this: ArcBorrow<'_, Self>, _tag: usize, event: SockEvent) {
        match event {
            SockEvent::Writable => Job::<Conn, SEND>::queue(this.into(), 0),
            SockEvent::Readable => Self::kick_recv(this),
            SockEvent::Closed => {
                // The receive side may be throttled: let the send side
                // find out too.
                Self::kick_recv(this);
                Job::<Conn, SEND>::queue(this.into(), 0);
            }
        }
    }
}

/// Every export of the module.
#[pin_data]
pub(crate) struct Exports {
    #[pin]
    listeners: Mutex<KVec<Arc<Listener>>>,
}

impl Exports {
    /// No exports.
    pub(crate) fn new() -> impl PinInit<Self> {
        pin_init!(Exports {
            listeners <- new_mutex!(KVec::new(), "Exports::listeners"),
        })
    }

    /// Exports `dev` as `req` asks.
    pub(crate) fn add(&self, dev: &Arc<Device>, req: ExportRequest) -> Result<(), Refusal> {
        if req.allow.len() > MAX_ALLOW {
            refuse!(EINVAL, "too many allowed networks (at most {})", MAX_ALLOW);
        }
        let mut listeners = self.listeners.lock();
        let total: usize = listeners.iter().map(|l| l.exports.lock().len()).sum();
        if total >= MAX_EXPORTS {
            refuse!(ENOSPC, "too many exports (at most {})", MAX_EXPORTS);
        }
        for l in listeners.iter() {
            for e in l.exports.lock().iter() {
                if Arc::ptr_eq(&e.dev, dev) {
                    refuse!(
                        EBUSY,
                        "{} is already exported (as {} on {})",
                        dev.name(),
                        shown(&e.name),
                        l.addr
                    );
                }
            }
        }
        let existing = listeners.iter().find(|l| l.addr == req.listen).cloned();
        if let Some(l) = &existing {
            if l.exports.lock().iter().any(|e| e.name[..] == req.name[..]) {
                refuse!(
                    EEXIST,
                    "{} already serves an export named {}",
                    l.addr,
                    shown(&req.name)
                );
            }
        }
        // Open the device itself, exclusively.
        let holder = Holder::new()?;
        let path = CString::try_from_fmt(kernel::fmt!("/dev/dst{}", dev.index()))?;
        let bdev = match BlockDev::open(&path, &holder) {
            Ok(b) => b,
            Err(e) if e == EBUSY => refuse!(e, "{} is in use (mounted?)", dev.name()),
            Err(e) => refuse!(
                e,
                "cannot open {} (errno {})",
                path.to_str().unwrap_or("?"),
                e.to_errno()
            ),
        };
        // FLUSH is advertised even without a volatile cache: harmless, and
        // clients like to send it.
        let mut tflags = tflag::HAS_FLAGS
            | tflag::SEND_FLUSH
            | tflag::SEND_FUA
            | tflag::SEND_WRITE_ZEROES
            | tflag::CAN_MULTI_CONN;
        if bdev.supports_discard() {
            tflags |= tflag::SEND_TRIM;
        }
        if req.read_only {
            tflags |= tflag::READ_ONLY;
        }
        let bs = dev.block_size();
        let served = ServedExport {
            size: dev.sectors() << 9,
            tflags,
            min_block: bs,
            pref_block: bs.max(4096),
            max_block: MAX_BLOCK,
        };
        let export = Arc::new(
            Export {
                id: NEXT_EXPORT_ID.fetch_add(1, Ordering::Relaxed),
                dev: dev.clone(),
                bdev,
                _holder: holder,
                name: req.name,
                read_only: req.read_only,
                allow: req.allow,
                served,
                requests: AtomicU64::new(0),
            },
            GFP_KERNEL,
        )?;
        let l = match existing {
            Some(l) => l,
            None => {
                let l = Listener::new(req.listen)?;
                listeners.push(l.clone(), GFP_KERNEL)?;
                l
            }
        };
        l.exports.lock().push(export, GFP_KERNEL)?;
        Ok(())
    }

    /// Stops exporting `dev` (only as `name`, if given).  Connected
    /// clients are disconnected.
    pub(crate) fn remove(&self, dev: &Arc<Device>, name: Option<&[u8]>) -> Result<(), Refusal> {
        let mut found = false;
        let mut listeners = self.listeners.lock();
        let mut i = 0;
        while i < listeners.len() {
            let l = listeners[i].clone();
            loop {
                let gone = {
                    let mut ex = l.exports.lock();
                    let pos = ex.iter().position(|e| {
                        Arc::ptr_eq(&e.dev, dev) && name.map_or(true, |n| e.name[..] == *n)
                    });
                    pos.and_then(|p| take_at(&mut ex, p))
                };
                let Some(e) = gone else { break };
                found = true;
                l.close_clients_of(&e);
            }
            if l.exports.lock().is_empty() {
                l.shut();
                take_at(&mut listeners, i);
            } else {
                i += 1;
            }
        }
        if !found {
            match name {
                Some(n) => refuse!(ENOENT, "{} has no export named {}", dev.name(), shown(n)),
                None => refuse!(ENOENT, "{} is not exported", dev.name()),
            }
        }
        Ok(())
    }

    /// Stops every export (module unload).
    pub(crate) fn remove_all(&self) {
        let listeners = core::mem::take(&mut *self.listeners.lock());
        for l in listeners.iter() {
            l.shut();
            drop(core::mem::take(&mut *l.exports.lock()));
        }
    }

    /// Whether `dev` is exported.
    pub(crate) fn exports_device(&self, dev: &Device) -> bool {
        self.listeners
            .lock()
            .iter()
            .any(|l| l.exports.lock().iter().any(|e| core::ptr::eq(&*e.dev, dev)))
    }

    /// Calls `f` with each export of `dev` and its listener.
    pub(crate) fn for_each_of(
        &self,
        dev: &Device,
        mut f: impl FnMut(&Arc<Listener>, &Arc<Export>),
    ) {
        for l in self.listeners.lock().iter() {
            for e in l.exports.lock().iter() {
                if core::ptr::eq(&*e.dev, dev) {
                    f(l, e);
                }
            }
        }
    }
}

/// Takes element `i` out of `v` (the last one takes its place).
fn take_at<T>(v: &mut KVec<T>, i: usize) -> Option<T> {
    let old = core::mem::take(v);
    let mut out = None;
    let mut rest = KVec::with_capacity(old.len(), GFP_KERNEL).unwrap_or_default();
    for (j, x) in old.into_iter().enumerate() {
        if j == i {
            out = Some(x);
        } else {
            // Cannot fail: the capacity is there.
            let _ = rest.push(x, GFP_KERNEL);
        }
    }
    *v = rest;
    out
}

/// An export name for messages (cut, and lossy for non-UTF-8).
fn shown(name: &[u8]) -> &str {
    let n = name.len().min(40);
    core::str::from_utf8(&name[..n]).unwrap_or("(not UTF-8)")
}

/// Parses `IP:PORT` or `[IPv6]:PORT`.
pub(crate) fn parse_listen(s: &str) -> Option<SocketAddr> {
    let a = s.parse::<SocketAddr>().ok()?;
    if a.port() == 0 {
        return None;
    }
    Some(a)
}
