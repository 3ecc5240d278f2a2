// SPDX-License-Identifier: GPL-2.0

//! `nbd-hostile-client`: an NBD client that misbehaves on purpose, to test
//! NBD servers (dst's in-kernel server).  See `--help`.

use dst_proto::nbd::{
    self, cflag, client_handshake, cmd, cmdflag, err, hflag, info, opt, rep, tflag, ExportInfo,
    OptionHeader, OptionReplyHeader, Request, SimpleReply, IHAVEOPT, NBDMAGIC,
};
use nbd_hostile::IoTransport;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const USAGE: &str = "\
usage: nbd-hostile-client --connect HOST:PORT --mode MODE [options]

An NBD client that breaks one rule of the protocol per mode, to test how a
server copes.  Prints one line saying what the server did, and exits 0 if
that is what the mode expects of a server that follows the spec (an error
reply or closing the connection, never hanging), 1 if not, 2 on bad usage.

options:
  --connect HOST:PORT  the server
  --mode MODE          what to do, see below
  --export NAME        export name (default: empty, the default export)
  --timeout SECS       longest wait for the server to react (default 10)
  --hold SECS          no-read, conn-flood: how long to hold (default 5)
  --count N            conn-flood: connections to open (default 100)
  --help               this text

modes:
";

const MODES: &[(&str, &str)] = &[
    ("good", "GO, write/read/verify a pattern at a few offsets, FLUSH, DISC"),
    ("bad-magic", "an option whose magic is not IHAVEOPT: expects a close"),
    ("bad-flags", "unknown client flag bits, then GO: expects a close"),
    ("no-fixed", "client flags 0, then GO: expects a close (or a GO reply: the spec allows honouring fixed newstyle)"),
    ("huge-option", "option length 0xffffffff, then 64 KiB of garbage: expects a close or NBD_REP_ERR_TOO_BIG"),
    ("slow-handshake", "GO with 2000 bytes of data, sent one byte a second: expects a close within --timeout"),
    ("info-then-slow", "NBD_OPT_INFO for --export (expects its reply), then slow-handshake: expects a close within --timeout"),
    ("many-options", "10000 unknown options without waiting for replies: expects ERR_UNSUP replies and a close (or all answered)"),
    ("abort", "NBD_OPT_ABORT: expects NBD_REP_ACK or a close"),
    ("list", "NBD_OPT_LIST (expects SERVER replies and ACK), then LIST with data (expects an error)"),
    ("truncated", "half an option, then shut down writing: expects a close without a reply"),
    ("go-unknown-export", "GO for an export that does not exist (--export or a made-up name): expects an error reply"),
    ("oob-read", "after GO, READ past the end: expects an error reply (EINVAL) or a close"),
    ("oob-write", "after GO, WRITE past the end: expects an error reply (ENOSPC) or a close"),
    ("huge-read", "after GO, READ of 1 GiB: expects an error reply or a close"),
    ("unknown-cmd", "after GO, command type 0x55: expects EINVAL or a close"),
    ("bad-flags-cmd", "after GO, READ with unknown command flags: expects EINVAL or a close"),
    ("ro-write", "after GO, WRITE to a read-only export: expects EPERM"),
    ("disc-pending", "after GO, 16 WRITEs of 64 KiB (the last MiB), a FLUSH and DISC at once: expects every reply, then a close; a new client reads the data back"),
    ("no-read", "after GO, 10000 READs of 64 KiB without reading replies, hold --hold seconds, close; then a new client must work"),
    ("garbage", "after GO, 64 KiB of random bytes: expects a close"),
    ("conn-flood", "open --count connections, hold them --hold seconds, then check a new client still works"),
];

struct Opts {
    connect: String,
    mode: String,
    export: String,
    timeout: Duration,
    hold: Duration,
    count: usize,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Option<Opts>, String> {
    let mut connect = None;
    let mut mode = None;
    let mut o = Opts {
        connect: String::new(),
        mode: String::new(),
        export: String::new(),
        timeout: Duration::from_secs(10),
        hold: Duration::from_secs(5),
        count: 100,
    };
    let secs = |k: &str, v: String| -> Result<Duration, String> {
        v.parse::<f64>()
            .ok()
            .filter(|s| s.is_finite() && *s > 0.0 && *s < 1e6)
            .map(Duration::from_secs_f64)
            .ok_or_else(|| format!("bad {k} '{v}'"))
    };
    while let Some(arg) = args.next() {
        let (key, inline) = match arg.split_once('=') {
            Some((k, v)) if k.starts_with("--") => (k.to_string(), Some(v.to_string())),
            _ => (arg, None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{key} needs a value"))
        };
        match key.as_str() {
            "--help" | "-h" => return Ok(None),
            "--connect" => connect = Some(value()?),
            "--mode" => mode = Some(value()?),
            "--export" => o.export = value()?,
            "--timeout" => o.timeout = secs(&key, value()?)?,
            "--hold" => o.hold = secs(&key, value()?)?,
            "--count" => {
                let v = value()?;
                o.count = v
                    .parse()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or_else(|| format!("bad --count '{v}'"))?;
            }
            _ => return Err(format!("unknown argument '{key}' (see --help)")),
        }
    }
    o.connect = connect.ok_or("--connect HOST:PORT is required (see --help)")?;
    o.mode = mode.ok_or("--mode MODE is required (see --help)")?;
    if !MODES.iter().any(|(m, _)| *m == o.mode) {
        return Err(format!("unknown mode '{}' (see --help)", o.mode));
    }
    Ok(Some(o))
}

/// What a mode found: `Ok` if the server behaved as expected.
type Verdict = Result<String, String>;

fn main() -> ExitCode {
    let o = match parse_args(std::env::args().skip(1)) {
        Ok(Some(o)) => o,
        Ok(None) => {
            print!("{USAGE}");
            for (m, help) in MODES {
                println!("  {m:<18} {help}");
            }
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("nbd-hostile-client: {e}");
            return ExitCode::from(2);
        }
    };
    let mut c = Client::new(&o);
    let v = c.run();
    let (line, code) = match v {
        Ok(what) => (what, ExitCode::SUCCESS),
        Err(what) => (what, ExitCode::FAILURE),
    };
    println!(
        "nbd-hostile-client: {}: {}: {line}",
        o.mode,
        if code == ExitCode::SUCCESS {
            "ok"
        } else {
            "FAIL"
        }
    );
    code
}

/// How a read ended, when it did not get its bytes.
enum Gone {
    Closed(String),
    Timeout,
    Error(io::Error),
}

fn gone(e: io::Error) -> Gone {
    match e.kind() {
        ErrorKind::UnexpectedEof => Gone::Closed("closed the connection".into()),
        ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe => {
            Gone::Closed(format!("closed the connection ({})", e.kind()))
        }
        ErrorKind::WouldBlock | ErrorKind::TimedOut => Gone::Timeout,
        _ => Gone::Error(e),
    }
}

fn err_name(e: u32) -> String {
    match e {
        0 => "success".into(),
        err::EPERM => "EPERM".into(),
        err::EIO => "EIO".into(),
        err::ENOMEM => "ENOMEM".into(),
        err::EINVAL => "EINVAL".into(),
        err::ENOSPC => "ENOSPC".into(),
        err::EOVERFLOW => "EOVERFLOW".into(),
        err::ENOTSUP => "ENOTSUP".into(),
        err::ESHUTDOWN => "ESHUTDOWN".into(),
        e => format!("error {e}"),
    }
}

/// How the server answered a request.
enum Answer {
    /// A simple reply with this error value (0: success; for a READ its
    /// data has not been read).
    Reply(u32),
    /// The server closed the connection.
    Closed(String),
}

struct Client<'a> {
    o: &'a Opts,
    addr: SocketAddr,
    rng: u64,
    cookie: u64,
}

impl<'a> Client<'a> {
    fn new(o: &'a Opts) -> Self {
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            ^ u64::from(std::process::id()).rotate_left(32);
        Client {
            o,
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            rng: seed | 1,
            cookie: 0x4e42_4400_0000_0000,
        }
    }

    fn random(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    fn secs(&self) -> String {
        format!("{:?}", self.o.timeout)
    }

    fn connect(&self) -> io::Result<TcpStream> {
        let s = TcpStream::connect_timeout(&self.addr, self.o.timeout)?;
        s.set_read_timeout(Some(self.o.timeout))?;
        s.set_write_timeout(Some(self.o.timeout))?;
        s.set_nodelay(true)?;
        Ok(s)
    }

    fn run(&mut self) -> Verdict {
        self.addr = self
            .o
            .connect
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve {}: {e}", self.o.connect))?
            .next()
            .ok_or_else(|| format!("cannot resolve {}", self.o.connect))?;
        match self.o.mode.as_str() {
            "good" => self.good(),
            "bad-magic" => self.bad_magic(),
            "bad-flags" => self.bad_flags(),
            "no-fixed" => self.no_fixed(),
            "huge-option" => self.huge_option(),
            "slow-handshake" => self.slow_handshake(false),
            "info-then-slow" => self.slow_handshake(true),
            "many-options" => self.many_options(),
            "abort" => self.abort(),
            "list" => self.list(),
            "truncated" => self.truncated(),
            "go-unknown-export" => self.go_unknown_export(),
            "oob-read" => self.oob(false),
            "oob-write" => self.oob(true),
            "huge-read" => self.huge_read(),
            "unknown-cmd" => self.bad_request(0x55, 0, "command type 0x55"),
            "bad-flags-cmd" => self.bad_request(cmd::READ, 0xc000, "READ with flags 0xc000"),
            "ro-write" => self.ro_write(),
            "disc-pending" => self.disc_pending(),
            "no-read" => self.no_read(),
            "garbage" => self.garbage(),
            "conn-flood" => self.conn_flood(),
            m => Err(format!("mode {m} is not implemented")),
        }
    }

    // ---- Handshake helpers. ----

    /// Connects and reads the greeting; returns the stream and the
    /// handshake flags.
    fn greeted(&self) -> Result<(TcpStream, u16), String> {
        let mut s = self
            .connect()
            .map_err(|e| format!("cannot connect to {}: {e}", self.addr))?;
        let mut g = [0u8; nbd::GREETING_SIZE];
        s.read_exact(&mut g)
            .map_err(|e| format!("no greeting from the server: {e}"))?;
        if g[..8] != NBDMAGIC.to_be_bytes() || g[8..16] != IHAVEOPT.to_be_bytes() {
            return Err("not a newstyle NBD server (bad greeting)".into());
        }
        let hflags = u16::from_be_bytes([g[16], g[17]]);
        if hflags & hflag::FIXED_NEWSTYLE == 0 {
            return Err("the server does not speak fixed newstyle".into());
        }
        Ok((s, hflags))
    }

    fn option(o: u32, data: &[u8]) -> Vec<u8> {
        let mut v = OptionHeader {
            option: o,
            length: data.len() as u32,
        }
        .encode()
        .to_vec();
        v.extend_from_slice(data);
        v
    }

    fn go_data(name: &[u8]) -> Vec<u8> {
        let mut d = (name.len() as u32).to_be_bytes().to_vec();
        d.extend_from_slice(name);
        d.extend(1u16.to_be_bytes());
        d.extend(info::BLOCK_SIZE.to_be_bytes());
        d
    }

    /// Reads one option reply (its data up to 1 MiB).
    fn opt_reply(&self, s: &mut TcpStream) -> Result<(OptionReplyHeader, Vec<u8>), Gone> {
        let mut h = [0u8; OptionReplyHeader::SIZE];
        s.read_exact(&mut h).map_err(gone)?;
        let hdr = OptionReplyHeader::decode(&h).map_err(|_| {
            Gone::Error(io::Error::new(
                ErrorKind::InvalidData,
                "option reply with a bad magic",
            ))
        })?;
        if hdr.length > 1 << 20 {
            return Err(Gone::Error(io::Error::new(
                ErrorKind::InvalidData,
                format!("option reply of {} bytes", hdr.length),
            )));
        }
        let mut data = vec![0; hdr.length as usize];
        s.read_exact(&mut data).map_err(gone)?;
        Ok((hdr, data))
    }

    fn describe(&self, g: Gone) -> Verdict {
        match g {
            Gone::Closed(how) => Ok(format!("server {how}")),
            Gone::Timeout => Err(format!(
                "server neither answered nor closed the connection within {}",
                self.secs()
            )),
            Gone::Error(e) => Err(format!("I/O or protocol error: {e}")),
        }
    }

    /// Expects the server to close the connection without sending anything.
    fn expect_close(&self, s: &mut TcpStream) -> Verdict {
        let mut b = [0u8; 256];
        match s.read(&mut b) {
            Ok(0) => Ok("server closed the connection".into()),
            Ok(n) => Err(format!(
                "server sent {n} bytes instead of closing the connection ({})",
                describe_bytes(&b[..n])
            )),
            Err(e) => self.describe(gone(e)),
        }
    }

    /// Connects and completes a GO handshake for `--export`.
    fn open(&self) -> Result<(TcpStream, ExportInfo), String> {
        let mut s = self
            .connect()
            .map_err(|e| format!("cannot connect to {}: {e}", self.addr))?;
        let info = client_handshake(&mut IoTransport(&mut s), self.o.export.as_bytes())
            .map_err(|e| format!("handshake failed: {e}"))?;
        Ok((s, info))
    }

    // ---- Transmission helpers. ----

    fn send_request(
        &mut self,
        s: &mut TcpStream,
        kind: u16,
        flags: u16,
        offset: u64,
        length: u32,
        payload: &[u8],
    ) -> io::Result<u64> {
        self.cookie += 1;
        let mut buf = Request {
            flags,
            kind,
            cookie: self.cookie,
            offset,
            length,
        }
        .encode()
        .to_vec();
        buf.extend_from_slice(payload);
        s.write_all(&buf)?;
        Ok(self.cookie)
    }

    /// READs `want.len()` bytes at `off` and checks they are `want`.
    fn read_back(&mut self, s: &mut TcpStream, off: u64, want: &[u8]) -> Result<(), String> {
        let c = self
            .send_request(s, cmd::READ, 0, off, want.len() as u32, &[])
            .map_err(|e| format!("READ at {off}: {e}"))?;
        match self.answer(s, c)? {
            Answer::Reply(0) => {}
            Answer::Reply(e) => return Err(format!("READ at {off} failed: {}", err_name(e))),
            Answer::Closed(how) => return Err(format!("READ at {off}: server {how}")),
        }
        let mut back = vec![0; want.len()];
        s.read_exact(&mut back)
            .map_err(|e| format!("READ at {off}: data: {e}"))?;
        if back != want {
            return Err(format!("READ at {off} returned other data than written"));
        }
        Ok(())
    }

    /// Reads the reply to `cookie` (not its data).
    fn answer(&self, s: &mut TcpStream, cookie: u64) -> Result<Answer, String> {
        let mut b = [0u8; SimpleReply::SIZE];
        if let Err(e) = s.read_exact(&mut b) {
            return match gone(e) {
                Gone::Closed(how) => Ok(Answer::Closed(how)),
                Gone::Timeout => Err(format!("server did not answer within {}", self.secs())),
                Gone::Error(e) => Err(format!("I/O error: {e}")),
            };
        }
        let r = SimpleReply::decode(&b)
            .map_err(|e| format!("server sent a bad reply ({e}): {}", describe_bytes(&b)))?;
        if r.cookie != cookie {
            return Err(format!(
                "server replied to cookie {:#x}, not {cookie:#x}",
                r.cookie
            ));
        }
        Ok(Answer::Reply(r.error))
    }

    /// Sends a request that a server must refuse and judges the answer:
    /// an error (`want`, if given, is the one the spec recommends) or a
    /// close.  After an error reply, checks that the connection still
    /// works with a good READ.
    fn refused(
        &mut self,
        s: &mut TcpStream,
        info: &ExportInfo,
        req: (u16, u16, u64, u32),
        payload: &[u8],
        want: Option<u32>,
    ) -> Verdict {
        let (kind, flags, offset, length) = req;
        let cookie = match self.send_request(s, kind, flags, offset, length, payload) {
            Ok(c) => c,
            Err(e) => {
                return match gone(e) {
                    Gone::Closed(how) => Ok(format!("server {how} while the request was sent")),
                    g => self.describe(g),
                }
            }
        };
        match self.answer(s, cookie)? {
            Answer::Closed(how) => Ok(format!("server {how}")),
            Answer::Reply(0) => Err("server replied success".into()),
            Answer::Reply(e) => {
                let mut line = format!("server replied {}", err_name(e));
                if let Some(w) = want.filter(|&w| w != e) {
                    line += &format!(" (the spec recommends {})", err_name(w));
                }
                line += &self.still_works(s, info)?;
                Ok(line)
            }
        }
    }

    /// A good READ after an error reply: the connection must still work
    /// (or be closed, which the spec allows after a client's violation).
    fn still_works(&mut self, s: &mut TcpStream, info: &ExportInfo) -> Result<String, String> {
        let len = info.min_block.max(512);
        let Ok(cookie) = self.send_request(s, cmd::READ, 0, 0, len, &[]) else {
            return Ok(", then closed the connection".into());
        };
        match self.answer(s, cookie)? {
            Answer::Closed(_) => Ok(", then closed the connection".into()),
            Answer::Reply(0) => {
                let mut data = vec![0; len as usize];
                s.read_exact(&mut data)
                    .map_err(|e| format!("a good READ got no data: {e}"))?;
                Ok("; the connection still works".into())
            }
            Answer::Reply(e) => Err(format!(
                "after that, a good READ of {len} bytes at 0 failed with {}",
                err_name(e)
            )),
        }
    }

    fn disconnect(&mut self, s: &mut TcpStream) {
        let _ = self.send_request(s, cmd::DISC, 0, 0, 0, &[]);
        let _ = s.shutdown(Shutdown::Write);
    }

    // ---- Modes. ----

    fn good(&mut self) -> Verdict {
        let (mut s, info) = self.open()?;
        if info.flags & tflag::READ_ONLY != 0 {
            return Err("the export is read-only: cannot verify writes".into());
        }
        let block = u64::from(info.min_block.max(4096));
        let len = (2 * block).min(info.size / block * block);
        if len == 0 {
            return Err(format!("the export is too small ({} bytes)", info.size));
        }
        let last = (info.size / block * block).saturating_sub(len);
        let mut offsets = vec![0, (info.size / 2) / block * block, last];
        offsets.dedup();
        let fua = if info.flags & tflag::SEND_FUA != 0 {
            cmdflag::FUA
        } else {
            0
        };
        for (i, &off) in offsets.iter().enumerate() {
            let pattern: Vec<u8> = (0..len)
                .map(|j| (j as u8).wrapping_mul(31) ^ (i as u8 + 1) ^ (self.rng as u8))
                .collect();
            let c = self
                .send_request(&mut s, cmd::WRITE, fua, off, len as u32, &pattern)
                .map_err(|e| format!("WRITE at {off}: {e}"))?;
            match self.answer(&mut s, c)? {
                Answer::Reply(0) => {}
                Answer::Reply(e) => return Err(format!("WRITE at {off} failed: {}", err_name(e))),
                Answer::Closed(how) => return Err(format!("WRITE at {off}: server {how}")),
            }
            self.read_back(&mut s, off, &pattern)?;
        }
        let mut line = format!(
            "wrote and verified {len} bytes at offsets {offsets:?} (export {} bytes, flags {:#x}, blocks {}/{}/{})",
            info.size, info.flags, info.min_block, info.pref_block, info.max_block
        );
        if info.flags & tflag::SEND_FLUSH != 0 {
            let c = self
                .send_request(&mut s, cmd::FLUSH, 0, 0, 0, &[])
                .map_err(|e| format!("FLUSH: {e}"))?;
            match self.answer(&mut s, c)? {
                Answer::Reply(0) => line += ", flushed",
                Answer::Reply(e) => return Err(format!("FLUSH failed: {}", err_name(e))),
                Answer::Closed(how) => return Err(format!("FLUSH: server {how}")),
            }
        }
        self.disconnect(&mut s);
        match self.expect_close(&mut s) {
            Ok(_) => line += ", disconnected",
            Err(e) => return Err(format!("{line}; after NBD_CMD_DISC: {e}")),
        }
        Ok(line)
    }

    fn bad_magic(&mut self) -> Verdict {
        let (mut s, _) = self.greeted()?;
        let mut m = cflag::FIXED_NEWSTYLE.to_be_bytes().to_vec();
        let mut o = Self::option(opt::GO, &Self::go_data(self.o.export.as_bytes()));
        o[7] = b'X'; // IHAVEOPX
        m.extend(o);
        s.write_all(&m).map_err(|e| format!("send: {e}"))?;
        self.expect_close(&mut s)
    }

    fn bad_flags(&mut self) -> Verdict {
        let (mut s, _) = self.greeted()?;
        let mut m = (cflag::FIXED_NEWSTYLE | 0x8000_0004).to_be_bytes().to_vec();
        m.extend(Self::option(
            opt::GO,
            &Self::go_data(self.o.export.as_bytes()),
        ));
        if let Err(e) = s.write_all(&m) {
            return self.describe(gone(e));
        }
        match self.opt_reply(&mut s) {
            Ok((h, _)) => Err(format!(
                "server accepted unknown client flags 0x80000004 and answered GO with {}",
                rep::name(h.reply)
            )),
            Err(g) => self.describe(g),
        }
    }

    fn no_fixed(&mut self) -> Verdict {
        let (mut s, _) = self.greeted()?;
        let mut m = 0u32.to_be_bytes().to_vec();
        m.extend(Self::option(
            opt::GO,
            &Self::go_data(self.o.export.as_bytes()),
        ));
        if let Err(e) = s.write_all(&m) {
            return self.describe(gone(e));
        }
        match self.opt_reply(&mut s) {
            Ok((h, _)) => Ok(format!(
                "server answered GO from a client without fixed newstyle with {} \
                 (the spec allows honouring fixed newstyle anyway)",
                rep::name(h.reply)
            )),
            Err(g) => self.describe(g),
        }
    }

    fn huge_option(&mut self) -> Verdict {
        let (mut s, _) = self.greeted()?;
        let mut m = cflag::FIXED_NEWSTYLE.to_be_bytes().to_vec();
        m.extend(
            OptionHeader {
                option: opt::GO,
                length: u32::MAX,
            }
            .encode(),
        );
        m.extend((0..64 << 10).map(|_| self.random() as u8));
        // The server may close while this is being sent.
        let sent = s.write_all(&m);
        let mut line = match self.opt_reply(&mut s) {
            Ok((h, _)) if rep::is_error(h.reply) => {
                format!("server replied {}", rep::name(h.reply))
            }
            Ok((h, _)) => {
                return Err(format!(
                    "server answered a 4 GiB option with {}",
                    rep::name(h.reply)
                ))
            }
            Err(Gone::Timeout) => {
                return Err(format!(
                    "server neither refused the 0xffffffff-byte option nor closed within {} \
                     (is it reading 4 GiB?)",
                    self.secs()
                ))
            }
            Err(g) => self.describe(g)?,
        };
        if sent.is_err() {
            line += " (before all the garbage was sent)";
        }
        Ok(line)
    }

    /// GO with its data trickled, after an INFO for `--export` if `info`
    /// (a server then knows which export the client is after).
    fn slow_handshake(&mut self, info: bool) -> Verdict {
        const LEN: u32 = 2000;
        let (mut s, _) = self.greeted()?;
        let mut m = cflag::FIXED_NEWSTYLE.to_be_bytes().to_vec();
        if info {
            m.extend(Self::option(
                opt::INFO,
                &Self::go_data(self.o.export.as_bytes()),
            ));
            s.write_all(&m).map_err(|e| format!("send: {e}"))?;
            m.clear();
            loop {
                match self.opt_reply(&mut s) {
                    Ok((h, _)) if h.reply == rep::ACK => break,
                    Ok((h, _)) if h.reply == rep::INFO => {}
                    Ok((h, _)) => return Err(format!("INFO answered with {}", rep::name(h.reply))),
                    Err(g) => {
                        return Err(match self.describe(g) {
                            Ok(l) | Err(l) => format!("INFO not answered: {l}"),
                        })
                    }
                }
            }
        }
        m.extend(
            OptionHeader {
                option: opt::GO,
                length: LEN,
            }
            .encode(),
        );
        s.write_all(&m).map_err(|e| format!("send: {e}"))?;
        let mut w = s.try_clone().map_err(|e| format!("clone: {e}"))?;
        let start = Instant::now();
        let writer = thread::spawn(move || {
            let mut sent = 0;
            while sent < LEN {
                thread::sleep(Duration::from_secs(1));
                if w.write_all(&[0]).is_err() {
                    break;
                }
                sent += 1;
            }
            sent
        });
        let res = self.opt_reply(&mut s);
        let _ = s.shutdown(Shutdown::Both);
        let sent = writer.join().unwrap_or(0);
        let took = start.elapsed().as_secs();
        match res {
            Ok((h, _)) => Err(format!(
                "server answered a trickled option with {} after {took} s",
                rep::name(h.reply)
            )),
            Err(Gone::Timeout) => Err(format!(
                "server still read the trickled handshake after {} ({sent} bytes)",
                self.secs()
            )),
            Err(g) => self
                .describe(g)
                .map(|l| format!("{l} after {took} s ({sent} of {LEN} bytes sent)")),
        }
    }

    fn many_options(&mut self) -> Verdict {
        const N: usize = 10_000;
        let (mut s, _) = self.greeted()?;
        let mut w = s.try_clone().map_err(|e| format!("clone: {e}"))?;
        let writer = thread::spawn(move || {
            let mut m = cflag::FIXED_NEWSTYLE.to_be_bytes().to_vec();
            for i in 0..N {
                m.extend(Self::option(0x4000_0000 | i as u32, &[]));
            }
            // Fails if the server closes early.
            w.write_all(&m).is_ok()
        });
        let mut answered = 0usize;
        let end = loop {
            match self.opt_reply(&mut s) {
                Ok((h, _)) if rep::is_error(h.reply) => {
                    answered += 1;
                    if answered == N {
                        break Ok(
                            "server answered all 10000 options with an error, without a limit"
                                .into(),
                        );
                    }
                }
                Ok((h, _)) => {
                    break Err(format!(
                        "server answered unknown option {:#x} with {}",
                        h.option,
                        rep::name(h.reply)
                    ))
                }
                Err(Gone::Closed(how)) => {
                    break Ok(format!(
                        "server {how}; {answered} answers to the {N} options were read before"
                    ))
                }
                Err(g) => {
                    break self
                        .describe(g)
                        .map_err(|e| format!("{e} (after {answered} answers)"))
                }
            }
        };
        let _ = s.shutdown(Shutdown::Both);
        let _ = writer.join();
        end
    }

    fn abort(&mut self) -> Verdict {
        let (mut s, _) = self.greeted()?;
        let mut m = cflag::FIXED_NEWSTYLE.to_be_bytes().to_vec();
        m.extend(Self::option(opt::ABORT, &[]));
        s.write_all(&m).map_err(|e| format!("send: {e}"))?;
        match self.opt_reply(&mut s) {
            Ok((h, _)) if h.option == opt::ABORT && h.reply == rep::ACK => {
                let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
                let closed = matches!(s.read(&mut [0u8; 1]), Ok(0) | Err(_));
                Ok(format!(
                    "server replied NBD_REP_ACK{}",
                    if closed {
                        " and closed the connection"
                    } else {
                        ""
                    }
                ))
            }
            Ok((h, _)) => Err(format!(
                "server answered NBD_OPT_ABORT with {}",
                rep::name(h.reply)
            )),
            Err(g) => self.describe(g),
        }
    }

    fn list(&mut self) -> Verdict {
        let (mut s, _) = self.greeted()?;
        let mut m = cflag::FIXED_NEWSTYLE.to_be_bytes().to_vec();
        m.extend(Self::option(opt::LIST, &[]));
        s.write_all(&m).map_err(|e| format!("send: {e}"))?;
        let mut names = Vec::new();
        let first = loop {
            let (h, data) = match self.opt_reply(&mut s) {
                Ok(r) => r,
                Err(g) => {
                    return Err(match self.describe(g) {
                        Ok(l) | Err(l) => format!("LIST not answered: {l}"),
                    })
                }
            };
            if h.option != opt::LIST {
                return Err(format!("reply to option {} instead of LIST", h.option));
            }
            match h.reply {
                rep::SERVER => {
                    let n = data
                        .get(..4)
                        .map(|b| u32::from_be_bytes(b.try_into().unwrap_or([0; 4])) as usize)
                        .filter(|&n| n <= data.len() - 4)
                        .ok_or("malformed NBD_REP_SERVER")?;
                    names.push(format!("{:?}", String::from_utf8_lossy(&data[4..4 + n])));
                }
                rep::ACK => {
                    break format!(
                        "server listed {} exports [{}]",
                        names.len(),
                        names.join(", ")
                    )
                }
                e if rep::is_error(e) => {
                    break format!("server refused LIST with {}", rep::name(e))
                }
                other => return Err(format!("unexpected reply {} to LIST", rep::name(other))),
            }
        };
        s.write_all(&Self::option(opt::LIST, b"junk"))
            .map_err(|e| format!("send: {e}"))?;
        let second = match self.opt_reply(&mut s) {
            Ok((h, _)) if rep::is_error(h.reply) => {
                format!("LIST with data: {}", rep::name(h.reply))
            }
            Ok((h, _)) => {
                return Err(format!(
                    "{first}; LIST with data answered with {}",
                    rep::name(h.reply)
                ))
            }
            Err(g) => format!("LIST with data: {}", self.describe(g)?),
        };
        let _ = s.write_all(&Self::option(opt::ABORT, &[]));
        Ok(format!("{first}; {second}"))
    }

    fn truncated(&mut self) -> Verdict {
        let (mut s, _) = self.greeted()?;
        let mut m = cflag::FIXED_NEWSTYLE.to_be_bytes().to_vec();
        m.extend(
            OptionHeader {
                option: opt::GO,
                length: 100,
            }
            .encode(),
        );
        m.extend([0u8; 10]);
        s.write_all(&m).map_err(|e| format!("send: {e}"))?;
        let _ = s.shutdown(Shutdown::Write);
        self.expect_close(&mut s)
    }

    fn go_unknown_export(&mut self) -> Verdict {
        let name = if self.o.export.is_empty() {
            format!("no-such-export-{:x}", self.random())
        } else {
            self.o.export.clone()
        };
        let (mut s, _) = self.greeted()?;
        let mut m = cflag::FIXED_NEWSTYLE.to_be_bytes().to_vec();
        m.extend(Self::option(opt::GO, &Self::go_data(name.as_bytes())));
        s.write_all(&m).map_err(|e| format!("send: {e}"))?;
        // Skip NBD_REP_INFO replies: a server serving any name sends them.
        for _ in 0..64 {
            match self.opt_reply(&mut s) {
                Ok((h, _)) if h.reply == rep::INFO => continue,
                Ok((h, _)) if h.reply == rep::ACK => {
                    return Err(format!(
                        "server accepted export {name:?} (it serves any name?)"
                    ))
                }
                Ok((h, _)) if rep::is_error(h.reply) => {
                    let _ = s.write_all(&Self::option(opt::ABORT, &[]));
                    return Ok(format!(
                        "server replied {} for export {name:?}",
                        rep::name(h.reply)
                    ));
                }
                Ok((h, _)) => return Err(format!("unexpected reply {}", rep::name(h.reply))),
                Err(g) => return self.describe(g),
            }
        }
        Err("too many replies to GO".into())
    }

    fn oob(&mut self, write: bool) -> Verdict {
        let (mut s, info) = self.open()?;
        let len = info.min_block.max(4096);
        let off = info.size.div_ceil(u64::from(info.min_block)) * u64::from(info.min_block);
        let r = if write {
            let payload = vec![0xa5; len as usize];
            self.refused(
                &mut s,
                &info,
                (cmd::WRITE, 0, off, len),
                &payload,
                Some(err::ENOSPC),
            )
        } else {
            self.refused(
                &mut s,
                &info,
                (cmd::READ, 0, off, len),
                &[],
                Some(err::EINVAL),
            )
        };
        self.disconnect(&mut s);
        r
    }

    fn huge_read(&mut self) -> Verdict {
        let (mut s, info) = self.open()?;
        let r = self.refused(&mut s, &info, (cmd::READ, 0, 0, 1 << 30), &[], None);
        self.disconnect(&mut s);
        r
    }

    fn bad_request(&mut self, kind: u16, flags: u16, what: &str) -> Verdict {
        let (mut s, info) = self.open()?;
        let len = info.min_block.max(512);
        let r = self
            .refused(&mut s, &info, (kind, flags, 0, len), &[], Some(err::EINVAL))
            .map(|l| format!("{what}: {l}"))
            .map_err(|l| format!("{what}: {l}"));
        self.disconnect(&mut s);
        r
    }

    fn ro_write(&mut self) -> Verdict {
        let (mut s, info) = self.open()?;
        let ro = info.flags & tflag::READ_ONLY != 0;
        let len = info.min_block.max(4096);
        let payload = vec![0x5a; len as usize];
        let r = self.refused(
            &mut s,
            &info,
            (cmd::WRITE, 0, 0, len),
            &payload,
            Some(err::EPERM),
        );
        self.disconnect(&mut s);
        let note = if ro {
            ""
        } else {
            " (the export is not advertised read-only)"
        };
        match r {
            Ok(l) if l.starts_with("server replied EPERM") => Ok(format!("{l}{note}")),
            Ok(l) => Err(format!("{l}{note}")),
            Err(l) => Err(format!("{l}{note}")),
        }
    }

    fn disc_pending(&mut self) -> Verdict {
        const N: usize = 16;
        let (mut s, info) = self.open()?;
        if info.flags & tflag::READ_ONLY != 0 {
            return Err("the export is read-only: cannot verify writes".into());
        }
        let len: u32 = 64 << 10;
        if info.size < N as u64 * u64::from(len) {
            return Err(format!("the export is too small ({} bytes)", info.size));
        }
        // The export's last MiB (others may be using the start).
        let base = (info.size - N as u64 * u64::from(len)) / 4096 * 4096;
        let seed = self.random() as u8;
        let pattern = |i: usize| -> Vec<u8> {
            (0..len as usize)
                .map(|j| (j as u8).wrapping_mul(13) ^ (i as u8) ^ seed)
                .collect()
        };
        // Everything in one go, without reading a reply in between.
        let mut cookies = Vec::with_capacity(N + 1);
        for i in 0..N {
            let c = self
                .send_request(
                    &mut s,
                    cmd::WRITE,
                    0,
                    base + i as u64 * u64::from(len),
                    len,
                    &pattern(i),
                )
                .map_err(|e| format!("WRITE {i}: {e}"))?;
            cookies.push(c);
        }
        if info.flags & tflag::SEND_FLUSH != 0 {
            let c = self
                .send_request(&mut s, cmd::FLUSH, 0, 0, 0, &[])
                .map_err(|e| format!("FLUSH: {e}"))?;
            cookies.push(c);
        }
        self.disconnect(&mut s);
        // Replies may come in any order.
        let want = cookies.len();
        for got in 0..want {
            let mut b = [0u8; SimpleReply::SIZE];
            if let Err(e) = s.read_exact(&mut b) {
                let how = match gone(e) {
                    Gone::Closed(how) => how,
                    Gone::Timeout => format!("sent nothing within {}", self.secs()),
                    Gone::Error(e) => format!("I/O error: {e}"),
                };
                return Err(format!(
                    "after NBD_CMD_DISC the server {how}, with {got} of {want} replies read"
                ));
            }
            let r = SimpleReply::decode(&b)
                .map_err(|e| format!("server sent a bad reply ({e}): {}", describe_bytes(&b)))?;
            let Some(at) = cookies.iter().position(|&c| c == r.cookie) else {
                return Err(format!("server replied to unknown cookie {:#x}", r.cookie));
            };
            cookies.swap_remove(at);
            if r.error != 0 {
                return Err(format!("a request failed: {}", err_name(r.error)));
            }
        }
        let mut line = format!("{want} replies after NBD_CMD_DISC");
        match self.expect_close(&mut s) {
            Ok(_) => line += ", then a close",
            Err(e) => return Err(format!("{line}; then: {e}")),
        }
        // The writes are there.
        let (mut s, _) = self.open()?;
        for i in 0..N {
            self.read_back(&mut s, base + i as u64 * u64::from(len), &pattern(i))?;
        }
        self.disconnect(&mut s);
        Ok(format!("{line}; a new client read the {N} writes back"))
    }

    fn no_read(&mut self) -> Verdict {
        const N: usize = 10_000;
        let (mut s, info) = self.open()?;
        let len: u32 = 64 << 10;
        let span = info.size / u64::from(len);
        if span == 0 {
            return Err(format!("the export is too small ({} bytes)", info.size));
        }
        let start = Instant::now();
        let mut sent = 0;
        let mut how = String::new();
        for i in 0..N {
            let off = (i as u64 % span) * u64::from(len);
            match self.send_request(&mut s, cmd::READ, 0, off, len, &[]) {
                Ok(_) => sent += 1,
                Err(e) => {
                    how = match gone(e) {
                        Gone::Timeout => format!(
                            "; the server stopped reading after {sent} requests (backpressure)"
                        ),
                        Gone::Closed(h) => format!("; the server {h} after {sent} requests"),
                        Gone::Error(e) => format!("; send failed after {sent} requests: {e}"),
                    };
                    break;
                }
            }
        }
        thread::sleep(self.o.hold);
        // Still connected?  Peek without blocking for long.
        let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
        let state = match s.peek(&mut [0u8; 1]) {
            Ok(0) => "the server has closed the connection",
            Ok(_) => "replies are waiting unread",
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                "the connection is idle"
            }
            Err(_) => "the connection is broken",
        };
        // Closing with replies unread resets the connection.
        let _ = s.shutdown(Shutdown::Both);
        drop(s);
        let line = format!(
            "sent {sent} of {N} READs of 64 KiB without reading replies{how}; held {:?} (total {:.1?}); {state}",
            self.o.hold,
            start.elapsed()
        );
        self.new_client_works(line)
    }

    /// Checks that the server still serves a new client, after a pause.
    fn new_client_works(&mut self, line: String) -> Verdict {
        thread::sleep(Duration::from_millis(500));
        match self.open() {
            Ok((mut s, _)) => {
                self.disconnect(&mut s);
                Ok(format!("{line}; a new client then completed GO"))
            }
            Err(e) => Err(format!("{line}; a new client then failed: {e}")),
        }
    }

    fn garbage(&mut self) -> Verdict {
        let (mut s, _) = self.open()?;
        let mut junk: Vec<u8> = (0..64 << 10).map(|_| self.random() as u8).collect();
        junk[..4].copy_from_slice(b"JUNK");
        // The server may close while this is being sent.
        let _ = s.write_all(&junk);
        self.expect_close(&mut s)
    }

    fn conn_flood(&mut self) -> Verdict {
        let n = self.o.count;
        let mut conns = Vec::with_capacity(n);
        let mut refused = 0;
        let mut greeted = 0;
        for _ in 0..n {
            match self.connect() {
                Ok(mut s) => {
                    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
                    let mut g = [0u8; nbd::GREETING_SIZE];
                    if s.read_exact(&mut g).is_ok() && g[..8] == NBDMAGIC.to_be_bytes() {
                        greeted += 1;
                    }
                    conns.push(s);
                }
                Err(_) => refused += 1,
            }
        }
        if conns.is_empty() {
            return Err(format!("no connection to {} succeeded", self.addr));
        }
        thread::sleep(self.o.hold);
        let mut closed = 0;
        for s in &conns {
            let _ = s.set_read_timeout(Some(Duration::from_millis(10)));
            if matches!(s.peek(&mut [0u8; 1]), Ok(0))
                || matches!(s.peek(&mut [0u8; 1]), Err(e) if !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut))
            {
                closed += 1;
            }
        }
        drop(conns);
        let line = format!(
            "opened {} of {n} connections ({refused} failed, {greeted} greeted), held {:?}: {closed} closed by the server",
            n - refused,
            self.o.hold
        );
        self.new_client_works(line)
    }
}

/// A short description of bytes received, for messages.
fn describe_bytes(b: &[u8]) -> String {
    let head: Vec<String> = b.iter().take(16).map(|x| format!("{x:02x}")).collect();
    format!(
        "{}{}",
        head.join(" "),
        if b.len() > 16 { " ..." } else { "" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args() {
        let a = |v: &[&str]| parse_args(v.iter().map(|s| s.to_string()));
        let o = a(&[
            "--connect=127.0.0.1:1",
            "--mode",
            "conn-flood",
            "--count",
            "7",
            "--hold",
            "0.5",
        ])
        .unwrap()
        .unwrap();
        assert_eq!(o.count, 7);
        assert_eq!(o.hold, Duration::from_millis(500));
        assert_eq!(o.timeout, Duration::from_secs(10));
        assert!(a(&["--connect", "x:1"]).is_err());
        assert!(a(&["--connect", "x:1", "--mode", "nope"]).is_err());
        assert!(a(&["--connect", "x:1", "--mode", "good", "--timeout", "0"]).is_err());
        assert!(a(&["--help"]).unwrap().is_none());
    }
}
