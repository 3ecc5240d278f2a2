// SPDX-License-Identifier: GPL-2.0

//! The server: fixed newstyle handshake, transmission with simple replies,
//! a memory-backed export shared by all connections, and the misbehaviours
//! of [`Mode`].

use crate::modes::Mode;
use dst_proto::nbd::{
    self, cflag, cmd, err, hflag, info, opt, rep, tflag, GoRequest, OptionHeader,
    OptionReplyHeader, Request, SimpleReply, StructuredReply,
};
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Transmission flags advertised by default.
pub const DEFAULT_TFLAGS: u16 = tflag::HAS_FLAGS
    | tflag::SEND_FLUSH
    | tflag::SEND_FUA
    | tflag::SEND_TRIM
    | tflag::SEND_WRITE_ZEROES
    | tflag::CAN_MULTI_CONN;

/// Block sizes advertised by default: minimum, preferred, maximum.
pub const DEFAULT_BLOCK: [u32; 3] = [512, 4096, 32 << 20];

/// Most options accepted on one connection.
const MAX_OPTIONS: usize = 64;
/// Longest option data accepted.
const MAX_OPTION_DATA: u32 = 64 << 10;
/// Longest write payload accepted before hanging up.
const MAX_PAYLOAD: u32 = 64 << 20;
const MIB: u64 = 1 << 20;

/// What to serve, and how to behave.
#[derive(Debug, Clone)]
pub struct Config {
    /// Export size in bytes (the base size in [`Mode::SizeChange`]).
    pub size: u64,
    /// The only export name served; any name is accepted if `None`.
    pub export: Option<String>,
    /// Behaviour.
    pub mode: Mode,
    /// Transmission misbehaviours start after this many good requests.
    pub after: u64,
    /// Delay between bytes when trickling.
    pub delay: Duration,
    /// Transmission flags advertised (sent as given).
    pub tflags: u16,
    /// Block sizes advertised (sent as given): minimum, preferred, maximum.
    pub block: [u32; 3],
}

impl Default for Config {
    fn default() -> Self {
        Config {
            size: 64 * MIB,
            export: None,
            mode: Mode::Good,
            after: 0,
            delay: Duration::from_millis(200),
            tflags: DEFAULT_TFLAGS,
            block: DEFAULT_BLOCK,
        }
    }
}

struct Shared {
    config: Config,
    store: Mutex<Vec<u8>>,
    next_conn: AtomicU64,
    /// Connections in the transmission phase, by index, for
    /// [`Mode::ReplyCross`].
    open: Mutex<Vec<(u64, TcpStream)>>,
}

impl Shared {
    fn store(&self) -> MutexGuard<'_, Vec<u8>> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn open(&self) -> MutexGuard<'_, Vec<(u64, TcpStream)>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Another open connection than `index`: its index and a handle to
    /// write to it.
    fn other_than(&self, index: u64) -> Option<(u64, TcpStream)> {
        let open = self.open();
        let (i, s) = open.iter().find(|(i, _)| *i != index)?;
        Some((*i, s.try_clone().ok()?))
    }
}

/// Keeps a connection in [`Shared::open`] while it lives.
struct Listed<'a> {
    shared: &'a Shared,
    index: u64,
}

impl<'a> Listed<'a> {
    fn new(shared: &'a Shared, index: u64, s: &TcpStream) -> Self {
        if let Ok(s) = s.try_clone() {
            shared.open().push((index, s));
        }
        Listed { shared, index }
    }
}

impl Drop for Listed<'_> {
    fn drop(&mut self) {
        self.shared.open().retain(|(i, _)| *i != self.index);
    }
}

/// A listening server.
pub struct Server {
    listener: TcpListener,
    shared: Arc<Shared>,
}

impl Server {
    /// Listens on `addr` (port 0 picks a free port).
    pub fn bind(addr: impl ToSocketAddrs, config: Config) -> io::Result<Self> {
        let len = usize::try_from(config.size)
            .map_err(|_| io::Error::new(ErrorKind::InvalidInput, "export size too large"))?;
        let listener = TcpListener::bind(addr)?;
        Ok(Server {
            listener,
            shared: Arc::new(Shared {
                store: Mutex::new(vec![0; len]),
                config,
                next_conn: AtomicU64::new(0),
                open: Mutex::new(Vec::new()),
            }),
        })
    }

    /// The address listened on.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves one connection in this thread and returns its summary line.
    pub fn serve_one(&self) -> io::Result<String> {
        let (stream, peer) = self.listener.accept()?;
        Ok(handle(&self.shared, stream, peer))
    }

    /// Serves connections forever, each in its own thread, printing one
    /// summary line per connection to stderr.
    pub fn run(&self) -> io::Result<()> {
        loop {
            let (stream, peer) = self.listener.accept()?;
            let shared = Arc::clone(&self.shared);
            thread::spawn(move || eprintln!("{}", handle(&shared, stream, peer)));
        }
    }

    /// Runs [`Server::run`] in a background thread; returns the address.
    pub fn spawn(self) -> io::Result<SocketAddr> {
        let addr = self.local_addr()?;
        thread::spawn(move || self.run());
        Ok(addr)
    }
}

/// How the handshake ended.
enum Next {
    Transmit,
    /// Misbehaved: keep the connection open until the peer closes it.
    Drain,
    Close,
}

/// One connection.
struct Conn<'a> {
    shared: &'a Shared,
    cfg: &'a Config,
    s: TcpStream,
    index: u64,
    /// This connection's export size.
    size: u64,
    no_zeroes: bool,
    /// An option reply with a bad magic went out.
    misbehaved: bool,
    notes: Vec<String>,
    rng: u64,
}

fn handle(shared: &Shared, s: TcpStream, peer: SocketAddr) -> String {
    let index = shared.next_conn.fetch_add(1, Ordering::Relaxed);
    let cfg = &shared.config;
    let size = match cfg.mode {
        Mode::ZeroSize => 0,
        Mode::SizeChange => cfg.size.saturating_add(index.saturating_mul(MIB)),
        _ => cfg.size,
    };
    if let Ok(len) = usize::try_from(size) {
        let mut store = shared.store();
        if store.len() < len {
            store.resize(len, 0);
        }
    }
    let _ = s.set_nodelay(true);
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut c = Conn {
        shared,
        cfg,
        s,
        index,
        size,
        no_zeroes: false,
        misbehaved: false,
        notes: Vec::new(),
        rng: (seed ^ index.wrapping_mul(0x9e37_79b9_7f4a_7c15)) | 1,
    };
    let result = c.handshake().and_then(|next| match next {
        Next::Transmit => c.transmit(),
        Next::Drain => c.drain(),
        Next::Close => Ok(()),
    });
    match result {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::UnexpectedEof => c.note("peer closed"),
        Err(e) => c.note(format!("I/O error: {e}")),
    }
    let _ = c.s.shutdown(Shutdown::Both);
    format!(
        "nbd-hostile: conn {} from {} mode {}: {}",
        index,
        peer,
        cfg.mode,
        c.notes.join("; ")
    )
}

impl Conn<'_> {
    fn note(&mut self, what: impl Into<String>) {
        self.notes.push(what.into());
    }

    fn read_array<const N: usize>(&mut self) -> io::Result<[u8; N]> {
        let mut buf = [0; N];
        self.s.read_exact(&mut buf)?;
        Ok(buf)
    }

    fn random(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    /// Reads and discards until the peer closes.
    fn drain(&mut self) -> io::Result<()> {
        let mut buf = [0; 4096];
        let mut total = 0u64;
        loop {
            match self.s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n as u64,
            }
        }
        self.note(format!("drained {total} bytes until the peer closed"));
        Ok(())
    }

    fn export_ok(&self, name: &[u8]) -> bool {
        self.cfg
            .export
            .as_ref()
            .is_none_or(|e| e.as_bytes() == name)
    }

    /// Sends an option reply (with a bad magic once, in that mode).
    fn opt_reply(&mut self, option: u32, reply: u32, data: &[u8]) -> io::Result<()> {
        let mut hdr = OptionReplyHeader {
            option,
            reply,
            length: data.len() as u32,
        }
        .encode();
        if self.cfg.mode == Mode::OptReplyBadMagic && !self.misbehaved {
            hdr[7] ^= 0xff;
            self.misbehaved = true;
            self.note(format!(
                "sent {} to {} with a bad magic",
                rep::name(reply),
                opt::name(option)
            ));
        }
        let mut buf = hdr.to_vec();
        buf.extend_from_slice(data);
        self.hs_write(&buf)
    }

    /// Sends handshake bytes: at once, or one per `--delay-ms` in mode
    /// slow-handshake.
    fn hs_write(&mut self, buf: &[u8]) -> io::Result<()> {
        if self.cfg.mode != Mode::SlowHandshake {
            return self.s.write_all(buf);
        }
        for b in buf {
            thread::sleep(self.cfg.delay);
            self.s.write_all(&[*b])?;
        }
        Ok(())
    }

    fn handshake(&mut self) -> io::Result<Next> {
        match self.cfg.mode {
            Mode::BadGreetingMagic => {
                let mut g = nbd::encode_greeting(hflag::FIXED_NEWSTYLE | hflag::NO_ZEROES);
                g[7] = b'X';
                self.s.write_all(&g)?;
                self.note("sent a greeting with a bad magic (NBDMAGIX)");
                return Ok(Next::Drain);
            }
            Mode::Oldstyle => {
                let mut g = nbd::NBDMAGIC.to_be_bytes().to_vec();
                g.extend(nbd::OLDSTYLE_MAGIC.to_be_bytes());
                g.extend(self.size.to_be_bytes());
                g.extend(u32::from(self.cfg.tflags).to_be_bytes());
                g.extend([0; 124]);
                self.s.write_all(&g)?;
                self.note(format!("sent an oldstyle greeting, size {}", self.size));
                return Ok(Next::Drain);
            }
            _ => {}
        }
        let fixed = self.cfg.mode != Mode::NoFixedNewstyle;
        let hflags = if fixed {
            hflag::FIXED_NEWSTYLE | hflag::NO_ZEROES
        } else {
            0
        };
        self.hs_write(&nbd::encode_greeting(hflags))?;
        let cflags = u32::from_be_bytes(self.read_array()?);
        if cflags & !(cflag::FIXED_NEWSTYLE | cflag::NO_ZEROES) != 0
            || (cflags & cflag::NO_ZEROES != 0 && hflags & hflag::NO_ZEROES == 0)
        {
            self.note(format!("bad client flags {cflags:#x}, closing"));
            return Ok(Next::Close);
        }
        self.no_zeroes = cflags & cflag::NO_ZEROES != 0;
        if !fixed {
            self.note("sent a plain newstyle greeting");
        }

        for _ in 0..MAX_OPTIONS {
            let Ok(hdr) = OptionHeader::decode(&self.read_array()?) else {
                self.note("option with a bad magic, closing");
                return Ok(Next::Close);
            };
            if hdr.length > MAX_OPTION_DATA {
                self.note(format!("option data of {} bytes, closing", hdr.length));
                return Ok(Next::Close);
            }
            let mut data = vec![0; hdr.length as usize];
            self.s.read_exact(&mut data)?;
            if !fixed && hdr.option != opt::EXPORT_NAME {
                self.note(format!(
                    "{} in plain newstyle, closing",
                    opt::name(hdr.option)
                ));
                return Ok(Next::Close);
            }
            let next = match hdr.option {
                opt::EXPORT_NAME => Some(self.export_name(&data)?),
                opt::ABORT => {
                    self.opt_reply(opt::ABORT, rep::ACK, &[])?;
                    self.note("NBD_OPT_ABORT");
                    Some(Next::Close)
                }
                opt::LIST => {
                    if data.is_empty() {
                        let name = self.cfg.export.clone().unwrap_or_default();
                        let mut d = (name.len() as u32).to_be_bytes().to_vec();
                        d.extend_from_slice(name.as_bytes());
                        self.opt_reply(opt::LIST, rep::SERVER, &d)?;
                        self.opt_reply(opt::LIST, rep::ACK, &[])?;
                    } else {
                        self.opt_reply(opt::LIST, rep::ERR_INVALID, b"LIST takes no data")?;
                    }
                    None
                }
                opt::INFO | opt::GO => self.go(hdr.option, &data)?,
                opt::STARTTLS => {
                    self.opt_reply(opt::STARTTLS, rep::ERR_POLICY, b"no TLS here")?;
                    None
                }
                o => {
                    self.opt_reply(o, rep::ERR_UNSUP, b"")?;
                    None
                }
            };
            if self.misbehaved {
                return Ok(Next::Drain);
            }
            if let Some(next) = next {
                return Ok(next);
            }
        }
        self.note("too many options, closing");
        Ok(Next::Close)
    }

    fn export_name(&mut self, name: &[u8]) -> io::Result<Next> {
        let shown = String::from_utf8_lossy(name).into_owned();
        if !self.export_ok(name) {
            self.note(format!(
                "NBD_OPT_EXPORT_NAME {shown:?}: no such export, closing"
            ));
            return Ok(Next::Close);
        }
        let mut r = nbd::encode_export_name_reply(self.size, self.cfg.tflags).to_vec();
        if !self.no_zeroes {
            r.extend([0; nbd::EXPORT_NAME_ZEROES]);
        }
        self.s.write_all(&r)?;
        self.note(format!("NBD_OPT_EXPORT_NAME {shown:?}: size {}", self.size));
        Ok(Next::Transmit)
    }

    /// Answers `NBD_OPT_INFO` or `NBD_OPT_GO`.
    fn go(&mut self, o: u32, data: &[u8]) -> io::Result<Option<Next>> {
        let what = opt::name(o);
        match self.cfg.mode {
            Mode::GoUnsup => {
                self.opt_reply(o, rep::ERR_UNSUP, b"this server predates NBD_OPT_GO")?;
                self.note(format!("{what}: answered NBD_REP_ERR_UNSUP"));
                return Ok(None);
            }
            Mode::OptReplyHugeLen => {
                let hdr = OptionReplyHeader {
                    option: o,
                    reply: rep::INFO,
                    length: u32::MAX,
                };
                self.s.write_all(&hdr.encode())?;
                let mut sent = 0u64;
                loop {
                    thread::sleep(self.cfg.delay);
                    if self.s.write_all(&[0]).is_err() {
                        break;
                    }
                    sent += 1;
                }
                self.note(format!(
                    "{what}: claimed a 0xffffffff-byte reply, trickled {sent} bytes"
                ));
                return Ok(Some(Next::Close));
            }
            _ => {}
        }
        let req = match GoRequest::parse(data) {
            Ok(r) => r,
            Err(m) => {
                self.opt_reply(o, rep::ERR_INVALID, m.as_bytes())?;
                self.note(format!("{what}: invalid ({m})"));
                return Ok(None);
            }
        };
        let name = String::from_utf8_lossy(req.name).into_owned();
        if !self.export_ok(req.name) {
            self.opt_reply(o, rep::ERR_UNKNOWN, b"no such export")?;
            self.note(format!("{what} {name:?}: NBD_REP_ERR_UNKNOWN"));
            return Ok(None);
        }
        let [min, pref, max] = self.cfg.block;
        let export = nbd::encode_info_export(self.size, self.cfg.tflags);
        match self.cfg.mode {
            Mode::InfoGarbage => {
                const SETS: [([u32; 3], &str); 7] = [
                    ([3, 4096, 1 << 20], "minimum not a power of two"),
                    ([1 << 17, 1 << 17, u32::MAX], "minimum above 64 KiB"),
                    ([512, 256, 1 << 20], "preferred below 512"),
                    ([4096, 1024, 1 << 20], "preferred below minimum"),
                    ([4096, 4096, 6000], "maximum not a multiple of minimum"),
                    ([512, 4096, 0], "maximum zero"),
                    ([512, 4096, 1024], "maximum below preferred"),
                ];
                let (b, why) = SETS[(self.index % SETS.len() as u64) as usize];
                self.opt_reply(o, rep::INFO, &nbd::encode_info_block_size(b[0], b[1], b[2]))?;
                self.opt_reply(o, rep::INFO, &export)?;
                self.opt_reply(o, rep::ACK, &[])?;
                self.note(format!("{what} {name:?}: sent block sizes {b:?} ({why})"));
            }
            Mode::NoInfoExport => {
                if req.wants(info::BLOCK_SIZE) {
                    self.opt_reply(o, rep::INFO, &nbd::encode_info_block_size(min, pref, max))?;
                }
                self.opt_reply(o, rep::ACK, &[])?;
                self.note(format!("{what} {name:?}: ACK without NBD_INFO_EXPORT"));
            }
            _ => {
                self.opt_reply(o, rep::INFO, &export)?;
                if req.wants(info::BLOCK_SIZE) {
                    self.opt_reply(o, rep::INFO, &nbd::encode_info_block_size(min, pref, max))?;
                }
                if req.wants(info::NAME) {
                    let mut d = info::NAME.to_be_bytes().to_vec();
                    d.extend_from_slice(req.name);
                    self.opt_reply(o, rep::INFO, &d)?;
                }
                if req.wants(info::DESCRIPTION) {
                    let mut d = info::DESCRIPTION.to_be_bytes().to_vec();
                    d.extend_from_slice(b"nbd-hostile in-memory export");
                    self.opt_reply(o, rep::INFO, &d)?;
                }
                self.opt_reply(o, rep::ACK, &[])?;
                self.note(format!("{what} {name:?}: size {}", self.size));
            }
        }
        Ok((o == opt::GO).then_some(Next::Transmit))
    }

    /// Reads the next request and its payload; `None` at end of stream.
    fn read_request(&mut self) -> io::Result<Option<(Request, Vec<u8>)>> {
        let mut hdr = [0; Request::SIZE];
        match self.s.read_exact(&mut hdr) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        }
        let Ok(req) = Request::decode(&hdr) else {
            return Err(io::Error::new(
                ErrorKind::InvalidData,
                "request with a bad magic",
            ));
        };
        let mut payload = Vec::new();
        if req.has_payload() {
            if req.length > MAX_PAYLOAD {
                return Err(io::Error::new(
                    ErrorKind::InvalidData,
                    format!("write of {} bytes", req.length),
                ));
            }
            payload.resize(req.length as usize, 0);
            self.s.read_exact(&mut payload)?;
        }
        Ok(Some((req, payload)))
    }

    fn transmit(&mut self) -> io::Result<()> {
        let shared = self.shared;
        let _listed = Listed::new(shared, self.index, &self.s);
        let mode = self.cfg.mode;
        let mut n = 0u64;
        let mut first = true;
        loop {
            let hostile = mode.is_transmission() && n >= self.cfg.after;
            if hostile && mode == Mode::CloseAfterHandshake {
                self.note(format!("closed after {n} requests"));
                return Ok(());
            }
            if hostile && mode == Mode::Garbage {
                let junk: Vec<u8> = (0..64 << 10).map(|_| self.random() as u8).collect();
                let sent = self.s.write_all(&junk).is_ok();
                self.note(format!(
                    "after {n} requests sent 64 KiB of garbage{}",
                    if sent { "" } else { " (partly)" }
                ));
                return self.drain();
            }
            let Some((req, payload)) = self.read_request()? else {
                self.note(format!("peer closed after {n} requests"));
                return Ok(());
            };
            if req.kind == cmd::DISC {
                self.note(format!("NBD_CMD_DISC after {n} requests"));
                return Ok(());
            }
            n += 1;
            if !hostile {
                let r = self.reply_bytes(&req, &payload);
                self.s.write_all(&r)?;
                continue;
            }
            let what = format!("{} cookie {:#x}", cmd::name(req.kind), req.cookie);
            let fail = matches!(
                (mode, req.kind),
                (Mode::ErrorWrites, cmd::WRITE) | (Mode::ErrorReads, cmd::READ)
            );
            match mode {
                Mode::ReplyBadMagic => {
                    let mut r = self.reply_bytes(&req, &payload);
                    r[0] ^= 0xff;
                    self.s.write_all(&r)?;
                    self.note(format!("replied to {what} with a bad magic"));
                    return self.drain();
                }
                Mode::ReplyStructured => {
                    // Unrequested: NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_NONE,
                    // no payload.
                    let mut r = [0; StructuredReply::MAX_SIZE];
                    let len = StructuredReply {
                        error: 0,
                        cookie: req.cookie,
                        read: None,
                    }
                    .encode(&mut r);
                    self.s.write_all(&r[..len])?;
                    self.note(format!("replied to {what} with a structured reply"));
                    return self.drain();
                }
                Mode::ReplyUnknownCookie => {
                    let bogus = !req.cookie ^ 0x5a5a_0000_0000_5a5a;
                    let (error, data) = self.execute(&req, &payload);
                    let mut r = SimpleReply {
                        error,
                        cookie: bogus,
                    }
                    .encode()
                    .to_vec();
                    r.extend(data);
                    self.s.write_all(&r)?;
                    self.note(format!("answered {what} with cookie {bogus:#x}"));
                    return self.drain();
                }
                Mode::ReplyCross => {
                    let r = self.reply_bytes(&req, &payload);
                    let Some((other, mut s)) = shared.other_than(self.index) else {
                        self.s.write_all(&r)?;
                        continue;
                    };
                    s.write_all(&r)?;
                    self.note(format!("answered {what} on conn {other}"));
                    return self.drain();
                }
                Mode::ReplyTwice => {
                    let r = self.reply_bytes(&req, &payload);
                    self.s.write_all(&r)?;
                    self.s.write_all(&r)?;
                    if first {
                        self.note(format!("replied twice to {what} (and every later request)"));
                    }
                }
                Mode::ReplyTruncated => {
                    let r = self.reply_bytes(&req, &payload);
                    let cut = if r.len() > SimpleReply::SIZE {
                        SimpleReply::SIZE + (r.len() - SimpleReply::SIZE) / 2
                    } else {
                        SimpleReply::SIZE / 2
                    };
                    self.s.write_all(&r[..cut])?;
                    self.note(format!(
                        "sent {cut} of {} reply bytes to {what}, closed",
                        r.len()
                    ));
                    return Ok(());
                }
                Mode::ReplyStall if req.kind == cmd::READ => {
                    let r = self.reply_bytes(&req, &payload);
                    let cut = SimpleReply::SIZE + (r.len() - SimpleReply::SIZE) / 2;
                    self.s.write_all(&r[..cut])?;
                    self.note(format!(
                        "sent {cut} of {} reply bytes to {what}, then nothing",
                        r.len()
                    ));
                    return self.drain();
                }
                Mode::CloseMidRequest => {
                    // Let more requests arrive, then hang up on all of them.
                    thread::sleep(Duration::from_millis(50));
                    self.note(format!("closed with {what} in flight"));
                    return Ok(());
                }
                Mode::NeverReply => {
                    let mut ignored = 1u64;
                    while self.read_request()?.is_some() {
                        ignored += 1;
                    }
                    self.note(format!(
                        "stopped replying at {what}; ignored {ignored} requests until the peer closed"
                    ));
                    return Ok(());
                }
                Mode::SlowTrickle => {
                    if first {
                        self.note(format!(
                            "trickling replies from {what} on, one byte per {:?}",
                            self.cfg.delay
                        ));
                    }
                    let r = self.reply_bytes(&req, &payload);
                    for b in r {
                        self.s.write_all(&[b])?;
                        thread::sleep(self.cfg.delay);
                    }
                }
                Mode::ErrorWrites | Mode::ErrorReads if fail => {
                    if first {
                        self.note(format!("failing {what} (and every later one) with EIO"));
                    }
                    let r = SimpleReply {
                        error: err::EIO,
                        cookie: req.cookie,
                    };
                    self.s.write_all(&r.encode())?;
                }
                _ => {
                    let r = self.reply_bytes(&req, &payload);
                    self.s.write_all(&r)?;
                    continue;
                }
            }
            first = false;
        }
    }

    /// Executes `req` and returns the whole reply (header and data).
    fn reply_bytes(&self, req: &Request, payload: &[u8]) -> Vec<u8> {
        let (error, data) = self.execute(req, payload);
        let mut r = SimpleReply {
            error,
            cookie: req.cookie,
        }
        .encode()
        .to_vec();
        r.extend(data);
        r
    }

    /// Executes `req` on the store: the error value and the read data.
    fn execute(&self, req: &Request, payload: &[u8]) -> (u32, Vec<u8>) {
        let [min, _, max] = self.cfg.block;
        let min = min.max(1);
        let read_only = self.cfg.tflags & tflag::READ_ONLY != 0;
        let aligned = req.offset.is_multiple_of(u64::from(min)) && req.length.is_multiple_of(min);
        let range = req
            .end()
            .filter(|&e| e <= self.size)
            .and_then(|e| Some(usize::try_from(req.offset).ok()?..usize::try_from(e).ok()?));
        let mut store = self.shared.store();
        let target = range.and_then(|r| store.get_mut(r));
        match (req.kind, target) {
            (cmd::READ, Some(t)) if aligned && req.length <= max => (0, t.to_vec()),
            (cmd::WRITE | cmd::TRIM | cmd::WRITE_ZEROES, _) if read_only => (err::EPERM, vec![]),
            (cmd::WRITE, None) | (cmd::WRITE_ZEROES, None) => (err::ENOSPC, vec![]),
            (cmd::WRITE, Some(t)) if aligned && req.length <= max => {
                t.copy_from_slice(payload);
                (0, vec![])
            }
            (cmd::TRIM | cmd::WRITE_ZEROES, Some(t)) if aligned => {
                t.fill(0);
                (0, vec![])
            }
            (cmd::FLUSH, _) => (0, vec![]),
            (cmd::CACHE, Some(_)) => (0, vec![]),
            _ => (err::EINVAL, vec![]),
        }
    }
}
