// SPDX-License-Identifier: GPL-2.0

//! The server side of NBD: the fixed newstyle handshake
//! ([`server_handshake`]) and the checking of transmission-phase requests
//! against an export ([`check_request`]).
//!
//! Like `nbd.rs`, this file is `no_std`, allocation-free and panic-free on
//! any input, and is meant to be compiled into the kernel module from
//! source (it refers to its sibling only as `super::nbd`).  Everything the
//! client sends is untrusted: option data is only read into the caller's
//! scratch buffer and only up to its size, longer data is discarded in
//! small chunks or refused unread, and the number of options and the total
//! bytes read are bounded.  The transport's timeouts bound the time.
//!
//! The server speaks fixed newstyle only, without TLS, structured replies
//! or extended headers: in the transmission phase every reply is a
//! [`SimpleReply`](super::nbd::SimpleReply).

use super::nbd::{
    cflag, cmd, cmdflag, encode_export_name_reply, encode_greeting, encode_info_block_size,
    encode_info_export, err, hflag, opt, rep, tflag, GoRequest, OptionHeader, OptionReplyHeader,
    Request, Transport, DEFAULT_MAX_BLOCK, EXPORT_NAME_ZEROES, MAX_NAME_LEN,
};
use core::fmt;

/// Most options [`server_handshake`] accepts on one connection, counting
/// the final `NBD_OPT_GO` or `NBD_OPT_EXPORT_NAME`.
pub const MAX_SERVER_OPTIONS: usize = 64;
/// Longest option data [`server_handshake`] accepts.  Longer options end
/// the handshake unread ([`ServerHandshakeError::TooBig`]); shorter ones
/// that do not fit the scratch buffer are read, discarded and answered
/// with `NBD_REP_ERR_TOO_BIG`.
pub const MAX_OPTION_LEN: u32 = 64 << 10;
/// Most bytes [`server_handshake`] reads from the client in total.
pub const MAX_SERVER_HANDSHAKE_READ: usize = 1 << 20;
/// Most `NBD_REP_SERVER` replies sent for one `NBD_OPT_LIST`.
pub const MAX_LIST_REPLIES: usize = 1024;
/// Scratch size with which every well-formed `NBD_OPT_GO`/`NBD_OPT_INFO`
/// (any legal name, up to 128 information requests) and every legal
/// `NBD_OPT_EXPORT_NAME` fits.  Smaller buffers work, but more options are
/// answered with `NBD_REP_ERR_TOO_BIG`.
pub const SERVER_SCRATCH_LEN: usize = 4 + MAX_NAME_LEN + 2 + 2 * 128;

/// One export as the server describes it to clients.  The caller is
/// trusted to give values the spec allows (see
/// [`ExportInfo::new`](super::nbd::ExportInfo::new), which the client side
/// applies): `tflags` includes [`tflag::HAS_FLAGS`], the minimum block size
/// is a power of two up to 64 KiB, and so on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServedExport {
    /// Size in bytes.
    pub size: u64,
    /// Transmission flags ([`tflag`]): `HAS_FLAGS`, and `READ_ONLY`,
    /// `SEND_FLUSH`, `SEND_FUA`, `SEND_TRIM`, `SEND_WRITE_ZEROES`,
    /// `CAN_MULTI_CONN`... as the export supports.  [`check_request`]
    /// refuses commands and flags not advertised here.
    pub tflags: u16,
    /// Minimum block size: offsets and lengths must be multiples of it.
    pub min_block: u32,
    /// Preferred block size.
    pub pref_block: u32,
    /// Longest `NBD_CMD_READ` or `NBD_CMD_WRITE` accepted.
    pub max_block: u32,
}

/// The exports a server offers, as [`server_handshake`] asks about them.
pub trait ExportLookup {
    /// The export named `name` (bytes from the client, unchecked: maybe
    /// empty, meaning the default export, maybe not UTF-8, maybe holding
    /// NULs, at most [`MAX_NAME_LEN`] bytes), or `None` if there is none.
    fn lookup(&mut self, name: &[u8]) -> Option<ServedExport>;

    /// For `NBD_OPT_LIST`: calls `f` with each export's name and a
    /// description for humans (empty for none).  Names or descriptions
    /// longer than [`MAX_NAME_LEN`] are skipped, as are names after the
    /// first [`MAX_LIST_REPLIES`].  Calling `f` never is fine (an empty or
    /// hidden list).
    fn for_each_export(&mut self, f: &mut dyn FnMut(&[u8], &[u8]));
}

/// The outcome of a successful [`server_handshake`]: the transmission phase
/// has started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated {
    /// The export chosen, as [`ExportLookup::lookup`] returned it.
    pub export: ServedExport,
    /// The export name's length; the name is at `scratch[..name_len]`.
    pub name_len: usize,
    /// The client asked for no zeroes after `NBD_OPT_EXPORT_NAME`
    /// (informational: the handshake already acted on it).
    pub no_zeroes: bool,
    /// The client chose the export with `NBD_OPT_EXPORT_NAME`, so it was
    /// not told the block sizes; with `NBD_OPT_GO` it was (the server
    /// always sends `NBD_INFO_BLOCK_SIZE`).  The spec says a server
    /// SHOULD accept requests with a minimum block size of 1 from a
    /// client that was not told otherwise; [`check_request`] enforces the
    /// export's `min_block` regardless.
    pub via_export_name: bool,
    /// The client asked for structured replies (`NBD_OPT_STRUCTURED_REPLY`,
    /// acknowledged): every reply is then one structured chunk
    /// ([`crate::nbd::StructuredReply`]); otherwise simple replies.
    pub structured: bool,
}

/// Why [`server_handshake`] failed.  In every case the caller should close
/// the connection (the spec's "hard disconnect"): the client broke a rule,
/// asked to leave, or asked for an export the server could not refuse
/// politely.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerHandshakeError<E> {
    /// The transport failed, or the client closed the connection.
    Io(E),
    /// An option request did not start with `IHAVEOPT`.
    BadMagic,
    /// The client flags hold bits the server does not know (the spec says
    /// the server MUST then close the connection).
    BadClientFlags(u32),
    /// The client does not speak fixed newstyle (it did not set
    /// `NBD_FLAG_C_FIXED_NEWSTYLE`), which this server requires.
    NotFixedNewstyle,
    /// The client sent `NBD_OPT_ABORT` (answered with `NBD_REP_ACK`).
    Aborted,
    /// `NBD_OPT_EXPORT_NAME` named an export that does not exist; the
    /// option has no error reply, so the server must close.
    UnknownExport,
    /// The client sent more than [`MAX_SERVER_OPTIONS`] options.
    TooManyOptions,
    /// An option longer than [`MAX_OPTION_LEN`], or an
    /// `NBD_OPT_EXPORT_NAME` longer than the scratch buffer.
    TooBig,
    /// The client sent more than [`MAX_SERVER_HANDSHAKE_READ`] bytes.
    TooLong,
}

impl<E> ServerHandshakeError<E> {
    /// What went wrong, in words for logs (without the transport's error).
    pub fn what(&self) -> &'static str {
        match self {
            ServerHandshakeError::Io(_) => "connection failed during the NBD handshake",
            ServerHandshakeError::BadMagic => "the client sent an option with a bad magic number",
            ServerHandshakeError::BadClientFlags(_) => "the client sent unknown client flags",
            ServerHandshakeError::NotFixedNewstyle => {
                "the client does not support the fixed newstyle handshake"
            }
            ServerHandshakeError::Aborted => "the client aborted the handshake",
            ServerHandshakeError::UnknownExport => {
                "the client asked for an unknown export with NBD_OPT_EXPORT_NAME"
            }
            ServerHandshakeError::TooManyOptions => "the client sent too many options",
            ServerHandshakeError::TooBig => "the client sent an option that is too long",
            ServerHandshakeError::TooLong => "the client sent too much handshake data",
        }
    }
}

impl<E: fmt::Display> fmt::Display for ServerHandshakeError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerHandshakeError::Io(e) => write!(f, "{}: {}", self.what(), e),
            ServerHandshakeError::BadClientFlags(flags) => {
                write!(f, "{} ({:#x})", self.what(), flags)
            }
            _ => f.write_str(self.what()),
        }
    }
}

type SResult<T, E> = Result<T, ServerHandshakeError<E>>;

/// The server's end of a handshake in progress: counts what it reads and
/// coalesces small sends.
struct Srv<'t, T: Transport> {
    t: &'t mut T,
    read: usize,
    out: [u8; 256],
    out_len: usize,
}

impl<T: Transport> Srv<'_, T> {
    /// Reads exactly `buf.len()` bytes, within the handshake's read budget.
    fn recv(&mut self, buf: &mut [u8]) -> SResult<(), T::Error> {
        if buf.is_empty() {
            return Ok(());
        }
        self.flush()?;
        let total = self
            .read
            .checked_add(buf.len())
            .filter(|&n| n <= MAX_SERVER_HANDSHAKE_READ)
            .ok_or(ServerHandshakeError::TooLong)?;
        self.t.recv_exact(buf).map_err(ServerHandshakeError::Io)?;
        self.read = total;
        Ok(())
    }

    fn recv_array<const N: usize>(&mut self) -> SResult<[u8; N], T::Error> {
        let mut buf = [0; N];
        self.recv(&mut buf)?;
        Ok(buf)
    }

    /// Reads and discards `n` bytes (bounded by the read budget, which is
    /// checked before anything is read).
    fn skip(&mut self, mut n: usize) -> SResult<(), T::Error> {
        // (No `is_none_or`: the kernel's minimum Rust is 1.78.)
        if !matches!(self.read.checked_add(n), Some(total) if total <= MAX_SERVER_HANDSHAKE_READ) {
            return Err(ServerHandshakeError::TooLong);
        }
        let mut chunk = [0u8; 256];
        while n > 0 {
            let k = n.min(chunk.len());
            let buf = chunk.get_mut(..k).ok_or(ServerHandshakeError::TooLong)?;
            self.recv(buf)?;
            n = n.saturating_sub(k);
        }
        Ok(())
    }

    /// Queues `bytes` for sending; they go out before the next read, or at
    /// [`Srv::flush`].
    fn send(&mut self, bytes: &[u8]) -> SResult<(), T::Error> {
        let end = self.out_len.saturating_add(bytes.len());
        if let Some(dst) = self.out.get_mut(self.out_len..end) {
            dst.iter_mut().zip(bytes).for_each(|(d, s)| *d = *s);
            self.out_len = end;
            return Ok(());
        }
        self.flush()?;
        if let Some(dst) = self.out.get_mut(..bytes.len()) {
            dst.iter_mut().zip(bytes).for_each(|(d, s)| *d = *s);
            self.out_len = bytes.len();
            return Ok(());
        }
        self.t.send_all(bytes).map_err(ServerHandshakeError::Io)
    }

    fn flush(&mut self) -> SResult<(), T::Error> {
        if self.out_len > 0 {
            let pending = self.out.get(..self.out_len).unwrap_or(&[]);
            self.out_len = 0;
            self.t.send_all(pending).map_err(ServerHandshakeError::Io)?;
        }
        Ok(())
    }

    /// Queues an option reply made of `parts`, concatenated.
    fn reply(&mut self, option: u32, reply: u32, parts: &[&[u8]]) -> SResult<(), T::Error> {
        let len = parts
            .iter()
            .try_fold(0u32, |n, p| n.checked_add(u32::try_from(p.len()).ok()?))
            .ok_or(ServerHandshakeError::TooBig)?;
        let hdr = OptionReplyHeader {
            option,
            reply,
            length: len,
        };
        self.send(&hdr.encode())?;
        for p in parts {
            self.send(p)?;
        }
        Ok(())
    }
}

/// Runs the server side of the fixed newstyle handshake on `t`, offering
/// the exports of `exports`.  On success the transmission phase has
/// started (simple replies only) on the export returned, whose name is at
/// `scratch[..name_len]`.
///
/// The server sends a greeting with `NBD_FLAG_FIXED_NEWSTYLE` and
/// `NBD_FLAG_NO_ZEROES`, and requires `NBD_FLAG_C_FIXED_NEWSTYLE` back.
/// Then, for each option:
///
/// - `NBD_OPT_GO`, `NBD_OPT_INFO`: malformed data gets `NBD_REP_ERR_INVALID`,
///   an unknown export `NBD_REP_ERR_UNKNOWN`; otherwise `NBD_INFO_EXPORT`,
///   `NBD_INFO_BLOCK_SIZE` (whether requested or not) and `NBD_REP_ACK`.
///   `NBD_OPT_GO` then ends the handshake.
/// - `NBD_OPT_EXPORT_NAME`: the export's size and flags (and 124 zeroes
///   unless the client set `NBD_FLAG_C_NO_ZEROES`) end the handshake; an
///   unknown export ends it with [`ServerHandshakeError::UnknownExport`].
/// - `NBD_OPT_LIST`: one `NBD_REP_SERVER` per export, then `NBD_REP_ACK`
///   (`NBD_REP_ERR_INVALID` if the option carries data).
/// - `NBD_OPT_ABORT`: `NBD_REP_ACK` (best effort), then
///   [`ServerHandshakeError::Aborted`].
/// - `NBD_OPT_STRUCTURED_REPLY`: `NBD_REP_ACK`, and
///   [`Negotiated::structured`] (`NBD_REP_ERR_INVALID` if it carries data,
///   or if structured replies were already granted).
/// - Anything else (TLS, metadata contexts, extended headers, unknown
///   options): `NBD_REP_ERR_UNSUP`.
///
/// Bounds: option data longer than [`MAX_OPTION_LEN`] ends the handshake
/// unread; data of options the server uses (GO, INFO, EXPORT_NAME) is read
/// into `scratch`, and if it does not fit it is discarded and answered
/// with `NBD_REP_ERR_TOO_BIG` (or ends the handshake, for EXPORT_NAME);
/// other options' data is discarded in small chunks.  At most
/// [`MAX_SERVER_OPTIONS`] options and [`MAX_SERVER_HANDSHAKE_READ`] bytes
/// are read.  `scratch` should hold [`SERVER_SCRATCH_LEN`] bytes; any size
/// works.  The transport's timeouts bound the time.
///
/// Sends are coalesced (up to 256 bytes); every reply is sent before the
/// next read and before returning.
pub fn server_handshake<T: Transport, L: ExportLookup + ?Sized>(
    t: &mut T,
    exports: &mut L,
    scratch: &mut [u8],
) -> Result<Negotiated, ServerHandshakeError<T::Error>> {
    let mut s = Srv {
        t,
        read: 0,
        out: [0; 256],
        out_len: 0,
    };
    let r = haggle(&mut s, exports, scratch);
    if r.is_err() {
        // Replies still queued (e.g. to the option before the last one
        // allowed) go out before the caller closes; best effort.
        let _ = s.flush();
    }
    r
}

fn haggle<T: Transport, L: ExportLookup + ?Sized>(
    s: &mut Srv<'_, T>,
    exports: &mut L,
    scratch: &mut [u8],
) -> SResult<Negotiated, T::Error> {
    s.send(&encode_greeting(hflag::FIXED_NEWSTYLE | hflag::NO_ZEROES))?;
    let cflags = u32::from_be_bytes(s.recv_array()?);
    if cflags & !(cflag::FIXED_NEWSTYLE | cflag::NO_ZEROES) != 0 {
        return Err(ServerHandshakeError::BadClientFlags(cflags));
    }
    if cflags & cflag::FIXED_NEWSTYLE == 0 {
        return Err(ServerHandshakeError::NotFixedNewstyle);
    }
    let no_zeroes = cflags & cflag::NO_ZEROES != 0;
    let mut structured = false;

    for _ in 0..MAX_SERVER_OPTIONS {
        let hdr =
            OptionHeader::decode(&s.recv_array()?).map_err(|_| ServerHandshakeError::BadMagic)?;
        if hdr.length > MAX_OPTION_LEN {
            return Err(ServerHandshakeError::TooBig);
        }
        let len = usize::try_from(hdr.length).map_err(|_| ServerHandshakeError::TooBig)?;
        let o = hdr.option;
        match o {
            opt::EXPORT_NAME => {
                let name = scratch.get_mut(..len).ok_or(ServerHandshakeError::TooBig)?;
                s.recv(name)?;
                let export = exports
                    .lookup(name)
                    .ok_or(ServerHandshakeError::UnknownExport)?;
                s.send(&encode_export_name_reply(export.size, export.tflags))?;
                if !no_zeroes {
                    s.send(&[0; EXPORT_NAME_ZEROES])?;
                }
                s.flush()?;
                return Ok(Negotiated {
                    export,
                    name_len: len,
                    no_zeroes,
                    via_export_name: true,
                    structured,
                });
            }
            opt::GO | opt::INFO => {
                let Some(data) = scratch.get_mut(..len) else {
                    s.skip(len)?;
                    s.reply(o, rep::ERR_TOO_BIG, &[b"option data too long"])?;
                    continue;
                };
                s.recv(data)?;
                let Some((export, name_len)) = go(s, o, exports, data)? else {
                    continue;
                };
                s.flush()?;
                // Move the name (after its 4-byte length) to the front.
                for i in 0..name_len {
                    let b = scratch.get(i.saturating_add(4)).copied().unwrap_or(0);
                    if let Some(d) = scratch.get_mut(i) {
                        *d = b;
                    }
                }
                return Ok(Negotiated {
                    export,
                    name_len,
                    no_zeroes,
                    via_export_name: false,
                    structured,
                });
            }
            // Options that take no data, given some.
            opt::LIST | opt::STRUCTURED_REPLY if len != 0 => {
                s.skip(len)?;
                let name = opt::name(o).as_bytes();
                s.reply(o, rep::ERR_INVALID, &[name, b" takes no data"])?;
            }
            opt::LIST => list(s, exports)?,
            opt::STRUCTURED_REPLY => {
                if structured {
                    s.reply(
                        o,
                        rep::ERR_INVALID,
                        &[b"structured replies already negotiated"],
                    )?;
                    continue;
                }
                structured = true;
                s.reply(o, rep::ACK, &[])?;
            }
            opt::ABORT => {
                s.skip(len)?;
                // The client may already be gone: the ACK is best effort
                // (and flushed on the way out).
                let _ = s.reply(o, rep::ACK, &[]);
                return Err(ServerHandshakeError::Aborted);
            }
            _ => {
                s.skip(len)?;
                s.reply(o, rep::ERR_UNSUP, &[])?;
            }
        }
    }
    Err(ServerHandshakeError::TooManyOptions)
}

/// Answers `NBD_OPT_GO` or `NBD_OPT_INFO` (option `o`) with data `data`.
/// Returns the export and the name's length if the option was a GO that
/// succeeded (the handshake is then over).
fn go<T: Transport, L: ExportLookup + ?Sized>(
    s: &mut Srv<'_, T>,
    o: u32,
    exports: &mut L,
    data: &[u8],
) -> SResult<Option<(ServedExport, usize)>, T::Error> {
    let req = match GoRequest::parse(data) {
        Ok(r) => r,
        Err(m) => {
            s.reply(o, rep::ERR_INVALID, &[m.as_bytes()])?;
            return Ok(None);
        }
    };
    let Some(e) = exports.lookup(req.name) else {
        s.reply(o, rep::ERR_UNKNOWN, &[b"no such export"])?;
        return Ok(None);
    };
    s.reply(o, rep::INFO, &[&encode_info_export(e.size, e.tflags)])?;
    let block = encode_info_block_size(e.min_block, e.pref_block, e.max_block);
    s.reply(o, rep::INFO, &[&block])?;
    s.reply(o, rep::ACK, &[])?;
    Ok((o == opt::GO).then_some((e, req.name.len())))
}

/// Answers `NBD_OPT_LIST`.
fn list<T: Transport, L: ExportLookup + ?Sized>(
    s: &mut Srv<'_, T>,
    exports: &mut L,
) -> SResult<(), T::Error> {
    let mut result = Ok(());
    let mut sent = 0usize;
    exports.for_each_export(&mut |name, desc| {
        if result.is_err()
            || sent >= MAX_LIST_REPLIES
            || name.len() > MAX_NAME_LEN
            || desc.len() > MAX_NAME_LEN
        {
            return;
        }
        let Ok(name_len) = u32::try_from(name.len()) else {
            return;
        };
        sent = sent.saturating_add(1);
        result = s.reply(
            opt::LIST,
            rep::SERVER,
            &[&name_len.to_be_bytes(), name, desc],
        );
    });
    result?;
    s.reply(opt::LIST, rep::ACK, &[])
}

/// What to do with a request that [`check_request`] refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestVerdict {
    /// Answer with a simple reply carrying this error ([`err`]`::EINVAL`,
    /// `EPERM`, `ENOSPC`), and go on with the next request.  If the
    /// request carries a payload ([`Request::has_payload`], i.e. a
    /// `NBD_CMD_WRITE`), the caller must first read and discard its
    /// `length` bytes to stay in step with the client; the verdict is
    /// only given when that length is at most [`max_write_payload`] of the
    /// export.
    Error(u32),
    /// Close the connection without a reply: the request's payload is too
    /// large to read and discard (the spec lets a server treat it as a
    /// denial of service).  The message is for logs.
    Fatal(&'static str),
}

/// Longest `NBD_CMD_WRITE` payload [`check_request`] lets through, to be
/// written or discarded: the export's `max_block`, but at least 32 MiB
/// ([`DEFAULT_MAX_BLOCK`]), since the spec says lengths below that SHOULD
/// NOT be considered a denial of service even when the advertised maximum
/// is smaller.
pub fn max_write_payload(e: &ServedExport) -> u32 {
    e.max_block.max(DEFAULT_MAX_BLOCK)
}

/// Checks one transmission-phase request against export `e`, as the spec
/// asks of a server (the magic was checked by
/// [`Request::decode`](super::nbd::Request::decode)).
///
/// `Ok(())` means the request is valid and the caller should execute it:
///
/// - `NBD_CMD_DISC`: nothing is checked; the caller closes the connection
///   (there is no reply).
/// - `NBD_CMD_FLUSH`: offset and length are zero.
/// - `NBD_CMD_READ`, `WRITE`, `TRIM`, `WRITE_ZEROES`, `CACHE`: the length
///   is nonzero, offset and length are multiples of `min_block` (taken as
///   1 if 0), `offset + length` does not overflow and is at most `size`,
///   and for READ and WRITE the length is at most `max_block`.
/// - The command's transmission flag was advertised (`SEND_FLUSH`,
///   `SEND_TRIM`, `SEND_WRITE_ZEROES`, `SEND_CACHE`), writes (WRITE, TRIM,
///   WRITE_ZEROES) are not aimed at a `READ_ONLY` export, and the request
///   flags are among those the command allows: `FUA` on any command if
///   `SEND_FUA` was advertised (the spec says a server MUST accept it, even
///   by ignoring it), `NO_HOLE` and (with `SEND_FAST_ZERO`) `FAST_ZERO` on
///   WRITE_ZEROES, `DF` on READ with `SEND_DF`.
///
/// Otherwise the verdict says how to refuse it: `EINVAL` for unknown
/// commands (including `NBD_CMD_BLOCK_STATUS` and `NBD_CMD_RESIZE`, never
/// negotiated), commands or flags not advertised or not valid for the
/// command, a zero length, misalignment, lengths above `max_block`, and
/// reads, trims or caches beyond the end; `ENOSPC` for writes and
/// write-zeroes beyond the end; `EPERM` for writes to a read-only export.
/// A WRITE whose payload exceeds [`max_write_payload`] is
/// [`RequestVerdict::Fatal`].
pub fn check_request(req: &Request, e: &ServedExport) -> Result<(), RequestVerdict> {
    use RequestVerdict::Error;
    const EINVAL: RequestVerdict = Error(err::EINVAL);
    let has = |f: u16| e.tflags & f != 0;
    if req.kind == cmd::DISC {
        return Ok(());
    }
    if req.has_payload() && req.length > max_write_payload(e) {
        return Err(RequestVerdict::Fatal(
            "NBD_CMD_WRITE payload is too large to read",
        ));
    }
    let (advertised, writes) = match req.kind {
        cmd::READ => (true, false),
        cmd::WRITE => (true, true),
        cmd::FLUSH => (has(tflag::SEND_FLUSH), false),
        cmd::TRIM => (has(tflag::SEND_TRIM), true),
        cmd::WRITE_ZEROES => (has(tflag::SEND_WRITE_ZEROES), true),
        cmd::CACHE => (has(tflag::SEND_CACHE), false),
        _ => return Err(EINVAL),
    };
    if !advertised {
        return Err(EINVAL);
    }
    let mut allowed = 0;
    if has(tflag::SEND_FUA) {
        allowed |= cmdflag::FUA;
    }
    match req.kind {
        cmd::WRITE_ZEROES => {
            allowed |= cmdflag::NO_HOLE;
            if has(tflag::SEND_FAST_ZERO) {
                allowed |= cmdflag::FAST_ZERO;
            }
        }
        cmd::READ if has(tflag::SEND_DF) => allowed |= cmdflag::DF,
        _ => {}
    }
    if req.flags & !allowed != 0 {
        return Err(EINVAL);
    }
    if writes && has(tflag::READ_ONLY) {
        return Err(Error(err::EPERM));
    }
    if req.kind == cmd::FLUSH {
        return if req.offset == 0 && req.length == 0 {
            Ok(())
        } else {
            Err(EINVAL)
        };
    }
    if req.length == 0 {
        return Err(EINVAL);
    }
    let min = e.min_block.max(1);
    if req.offset.checked_rem(u64::from(min)) != Some(0) || req.length.checked_rem(min) != Some(0) {
        return Err(EINVAL);
    }
    if matches!(req.kind, cmd::READ | cmd::WRITE) && req.length > e.max_block {
        return Err(EINVAL);
    }
    if !matches!(req.end(), Some(end) if end <= e.size) {
        return Err(if matches!(req.kind, cmd::WRITE | cmd::WRITE_ZEROES) {
            Error(err::ENOSPC)
        } else {
            EINVAL
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nbd::{
        client_handshake, info, ExportInfo, HandshakeError, GREETING_SIZE, OPT_REPLY_MAGIC,
    };

    // ---- A scripted client, from the server's point of view. ----

    /// A transport reading from a fixed byte stream and recording what is
    /// sent.  Running out of input is an error, like a closed socket.
    struct Script {
        input: Vec<u8>,
        pos: usize,
        reads: usize,
        sent: Vec<u8>,
    }

    impl Script {
        fn new(input: Vec<u8>) -> Self {
            Script {
                input,
                pos: 0,
                reads: 0,
                sent: Vec::new(),
            }
        }
    }

    impl Transport for Script {
        type Error = &'static str;

        fn send_all(&mut self, buf: &[u8]) -> Result<(), &'static str> {
            self.sent.extend_from_slice(buf);
            Ok(())
        }

        fn recv_exact(&mut self, buf: &mut [u8]) -> Result<(), &'static str> {
            assert!(!buf.is_empty(), "empty reads are never asked for");
            self.reads += 1;
            let end = self.pos + buf.len();
            match self.input.get(self.pos..end) {
                Some(src) => {
                    buf.copy_from_slice(src);
                    self.pos = end;
                    Ok(())
                }
                None => {
                    self.pos = self.input.len();
                    Err("eof")
                }
            }
        }
    }

    const DISK: ServedExport = ServedExport {
        size: 64 << 20,
        tflags: tflag::HAS_FLAGS | tflag::SEND_FLUSH | tflag::SEND_FUA | tflag::SEND_TRIM,
        min_block: 512,
        pref_block: 4096,
        max_block: 1 << 20,
    };
    const RO: ServedExport = ServedExport {
        size: 1 << 20,
        tflags: tflag::HAS_FLAGS | tflag::READ_ONLY,
        min_block: 1,
        pref_block: 4096,
        max_block: u32::MAX,
    };

    /// Exports "disk" (described), "" (the default, read-only) and "ro".
    #[derive(Default)]
    struct Exports {
        lookups: usize,
    }

    impl ExportLookup for Exports {
        fn lookup(&mut self, name: &[u8]) -> Option<ServedExport> {
            self.lookups += 1;
            match name {
                b"disk" => Some(DISK),
                b"" | b"ro" => Some(RO),
                _ => None,
            }
        }

        fn for_each_export(&mut self, f: &mut dyn FnMut(&[u8], &[u8])) {
            f(b"disk", b"a disk");
            f(b"ro", b"");
            f(&[b'x'; MAX_NAME_LEN + 1], b"skipped: name too long");
        }
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

    fn go_data(name: &[u8], infos: &[u16]) -> Vec<u8> {
        let mut d = (name.len() as u32).to_be_bytes().to_vec();
        d.extend_from_slice(name);
        d.extend((infos.len() as u16).to_be_bytes());
        for i in infos {
            d.extend(i.to_be_bytes());
        }
        d
    }

    /// A client: its flags, then the options.
    fn client(cflags: u32, options: &[Vec<u8>]) -> Vec<u8> {
        let mut v = cflags.to_be_bytes().to_vec();
        for o in options {
            v.extend_from_slice(o);
        }
        v
    }

    const FIXED: u32 = cflag::FIXED_NEWSTYLE;
    const FIXED_NZ: u32 = cflag::FIXED_NEWSTYLE | cflag::NO_ZEROES;

    type Outcome = Result<Negotiated, ServerHandshakeError<&'static str>>;

    fn run_with(input: Vec<u8>, scratch_len: usize) -> (Outcome, Script, Vec<u8>) {
        let mut t = Script::new(input);
        let mut scratch = vec![0xa5; scratch_len];
        let r = server_handshake(&mut t, &mut Exports::default(), &mut scratch);
        (r, t, scratch)
    }

    fn run(input: Vec<u8>) -> (Outcome, Script, Vec<u8>) {
        run_with(input, SERVER_SCRATCH_LEN)
    }

    /// One option reply as sent: option, reply type, data.
    type Reply = (u32, u32, Vec<u8>);

    /// Splits what the server sent into the greeting's flags, its option
    /// replies, and what follows them.  Panics if it is malformed.
    fn parse_sent(sent: &[u8]) -> (u16, Vec<Reply>, Vec<u8>) {
        assert!(sent.len() >= GREETING_SIZE, "no greeting: {sent:?}");
        assert_eq!(&sent[..16], b"NBDMAGICIHAVEOPT");
        let hflags = u16::from_be_bytes([sent[16], sent[17]]);
        let mut rest = &sent[GREETING_SIZE..];
        let mut replies = Vec::new();
        while rest.len() >= OptionReplyHeader::SIZE && rest[..8] == OPT_REPLY_MAGIC.to_be_bytes() {
            let h = OptionReplyHeader::decode(rest[..20].try_into().unwrap()).unwrap();
            let end = 20 + h.length as usize;
            assert!(rest.len() >= end, "truncated option reply");
            replies.push((h.option, h.reply, rest[20..end].to_vec()));
            rest = &rest[end..];
        }
        (hflags, replies, rest.to_vec())
    }

    fn go_replies(o: u32, e: &ServedExport) -> Vec<Reply> {
        vec![
            (o, rep::INFO, encode_info_export(e.size, e.tflags).to_vec()),
            (
                o,
                rep::INFO,
                encode_info_block_size(e.min_block, e.pref_block, e.max_block).to_vec(),
            ),
            (o, rep::ACK, vec![]),
        ]
    }

    fn negotiated(export: ServedExport, name_len: usize, no_zeroes: bool) -> Negotiated {
        Negotiated {
            export,
            name_len,
            no_zeroes,
            via_export_name: false,
            structured: false,
        }
    }

    #[test]
    fn structured_replies() {
        // Asked for before GO, and before EXPORT_NAME: granted.
        let input = client(
            FIXED,
            &[
                option(opt::STRUCTURED_REPLY, b"x"),
                option(opt::STRUCTURED_REPLY, &[]),
                option(opt::STRUCTURED_REPLY, &[]),
                option(opt::GO, &go_data(b"disk", &[])),
            ],
        );
        let (r, t, _) = run(input);
        assert_eq!(
            r,
            Ok(Negotiated {
                structured: true,
                ..negotiated(DISK, 4, false)
            })
        );
        let replies = parse_sent(&t.sent).1;
        assert_eq!(
            replies[..3],
            [
                (
                    opt::STRUCTURED_REPLY,
                    rep::ERR_INVALID,
                    b"NBD_OPT_STRUCTURED_REPLY takes no data".to_vec()
                ),
                (opt::STRUCTURED_REPLY, rep::ACK, vec![]),
                (
                    opt::STRUCTURED_REPLY,
                    rep::ERR_INVALID,
                    b"structured replies already negotiated".to_vec()
                ),
            ]
        );
        assert_eq!(replies[3..], go_replies(opt::GO, &DISK));
        let input = client(
            FIXED_NZ,
            &[
                option(opt::STRUCTURED_REPLY, &[]),
                option(opt::EXPORT_NAME, b"disk"),
            ],
        );
        let (r, _, _) = run(input);
        assert_eq!(
            r,
            Ok(Negotiated {
                structured: true,
                via_export_name: true,
                ..negotiated(DISK, 4, true)
            })
        );
        // Data alone does not grant it.
        let input = client(
            FIXED,
            &[
                option(opt::STRUCTURED_REPLY, &[0; 4]),
                option(opt::GO, &go_data(b"disk", &[])),
            ],
        );
        assert_eq!(run(input).0, Ok(negotiated(DISK, 4, false)));
    }

    #[test]
    fn go() {
        for (cflags, name) in [(FIXED_NZ, &b"disk"[..]), (FIXED, b"")] {
            let input = client(
                cflags,
                &[option(opt::GO, &go_data(name, &[info::BLOCK_SIZE]))],
            );
            let (r, t, scratch) = run(input);
            let e = if name.is_empty() { RO } else { DISK };
            assert_eq!(
                r,
                Ok(negotiated(e, name.len(), cflags & cflag::NO_ZEROES != 0))
            );
            assert_eq!(&scratch[..name.len()], name);
            assert_eq!(t.pos, t.input.len());
            let (hflags, replies, rest) = parse_sent(&t.sent);
            assert_eq!(hflags, hflag::FIXED_NEWSTYLE | hflag::NO_ZEROES);
            assert_eq!(replies, go_replies(opt::GO, &e));
            assert!(rest.is_empty());
        }
        // Block sizes are sent even when not asked for; unknown info
        // requests are ignored.
        let input = client(FIXED, &[option(opt::GO, &go_data(b"disk", &[0x77, 1, 2]))]);
        let (r, t, _) = run(input);
        assert!(r.is_ok());
        assert_eq!(parse_sent(&t.sent).1, go_replies(opt::GO, &DISK));
    }

    #[test]
    fn go_with_the_longest_name() {
        let mut name = vec![b'n'; MAX_NAME_LEN];
        name[..4].copy_from_slice(b"disk");
        let data = go_data(&name, &[info::BLOCK_SIZE; 128]);
        assert_eq!(data.len(), SERVER_SCRATCH_LEN);
        let (r, t, _) = run(client(FIXED, &[option(opt::GO, &data)]));
        // Unknown: the export is "disk", not this name.
        assert_eq!(r, Err(ServerHandshakeError::Io("eof")));
        let replies = parse_sent(&t.sent).1;
        assert_eq!(replies.len(), 1);
        assert_eq!(replies[0].1, rep::ERR_UNKNOWN);
        // One more information request does not fit the scratch.
        let data = go_data(&name, &[info::BLOCK_SIZE; 129]);
        let (r, t, _) = run(client(FIXED, &[option(opt::GO, &data)]));
        assert_eq!(r, Err(ServerHandshakeError::Io("eof")));
        assert_eq!(parse_sent(&t.sent).1[0].1, rep::ERR_TOO_BIG);
        assert_eq!(t.pos, t.input.len(), "the option was consumed");
    }

    #[test]
    fn export_name() {
        for cflags in [FIXED, FIXED_NZ] {
            let input = client(cflags, &[option(opt::EXPORT_NAME, b"disk")]);
            let (r, t, scratch) = run(input);
            assert_eq!(
                r,
                Ok(Negotiated {
                    via_export_name: true,
                    ..negotiated(DISK, 4, cflags == FIXED_NZ)
                })
            );
            assert_eq!(&scratch[..4], b"disk");
            let (_, replies, rest) = parse_sent(&t.sent);
            assert!(replies.is_empty());
            let mut want = encode_export_name_reply(DISK.size, DISK.tflags).to_vec();
            if cflags == FIXED {
                want.extend([0; EXPORT_NAME_ZEROES]);
            }
            assert_eq!(rest, want);
        }
        // Unknown export: the server can only close.
        let (r, t, _) = run(client(FIXED, &[option(opt::EXPORT_NAME, b"nope")]));
        assert_eq!(r, Err(ServerHandshakeError::UnknownExport));
        assert_eq!(t.sent.len(), GREETING_SIZE);
        // A name longer than the scratch buffer.
        let (r, t, _) = run_with(client(FIXED, &[option(opt::EXPORT_NAME, b"disk")]), 3);
        assert_eq!(r, Err(ServerHandshakeError::TooBig));
        assert_eq!(t.pos, 4 + OptionHeader::SIZE, "the name was not read");
    }

    #[test]
    fn info_then_go() {
        let input = client(
            FIXED_NZ,
            &[
                option(opt::INFO, &go_data(b"ro", &[])),
                option(opt::INFO, &go_data(b"nope", &[])),
                option(opt::GO, &go_data(b"nope", &[])),
                option(opt::GO, &go_data(b"disk", &[info::BLOCK_SIZE])),
            ],
        );
        let (r, t, scratch) = run(input);
        assert_eq!(r, Ok(negotiated(DISK, 4, true)));
        assert_eq!(&scratch[..4], b"disk");
        let replies = parse_sent(&t.sent).1;
        let mut want = go_replies(opt::INFO, &RO);
        want.push((opt::INFO, rep::ERR_UNKNOWN, b"no such export".to_vec()));
        want.push((opt::GO, rep::ERR_UNKNOWN, b"no such export".to_vec()));
        want.extend(go_replies(opt::GO, &DISK));
        assert_eq!(replies, want);
    }

    #[test]
    fn list() {
        let input = client(
            FIXED,
            &[
                option(opt::LIST, &[]),
                option(opt::LIST, b"x"),
                option(opt::GO, &go_data(b"ro", &[])),
            ],
        );
        let (r, t, _) = run(input);
        assert_eq!(r, Ok(negotiated(RO, 2, false)));
        let replies = parse_sent(&t.sent).1;
        assert_eq!(
            replies[..4],
            [
                (opt::LIST, rep::SERVER, b"\0\0\0\x04diska disk".to_vec()),
                (opt::LIST, rep::SERVER, b"\0\0\0\x02ro".to_vec()),
                (opt::LIST, rep::ACK, vec![]),
                (
                    opt::LIST,
                    rep::ERR_INVALID,
                    b"NBD_OPT_LIST takes no data".to_vec()
                ),
            ]
        );
        assert_eq!(replies[4..], go_replies(opt::GO, &RO));
    }

    #[test]
    fn unsupported_options() {
        let input = client(
            FIXED,
            &[
                option(opt::STARTTLS, &[]),
                option(opt::SET_META_CONTEXT, &[0; 300]),
                option(opt::LIST_META_CONTEXT, &[1; 10]),
                option(opt::EXTENDED_HEADERS, &[]),
                option(0xdead_beef, &[7; 1000]),
                option(opt::GO, &go_data(b"disk", &[])),
            ],
        );
        let (r, t, _) = run(input);
        assert_eq!(r, Ok(negotiated(DISK, 4, false)));
        let replies = parse_sent(&t.sent).1;
        let unsup: Vec<_> = replies[..5].iter().map(|r| (r.0, r.1)).collect();
        assert_eq!(
            unsup,
            [
                opt::STARTTLS,
                opt::SET_META_CONTEXT,
                opt::LIST_META_CONTEXT,
                opt::EXTENDED_HEADERS,
                0xdead_beef
            ]
            .map(|o| (o, rep::ERR_UNSUP))
        );
        assert_eq!(replies[5..], go_replies(opt::GO, &DISK));
    }

    #[test]
    fn malformed_go() {
        let mut trailing = go_data(b"disk", &[]);
        trailing.push(0);
        for bad in [
            vec![],
            vec![0, 0, 0],
            vec![0, 0, 0, 4, b'd', b'i'],
            vec![0, 0, 0, 0, 0, 2, 0, 3],
            trailing,
            go_data(&[b'x'; MAX_NAME_LEN + 1], &[]),
        ] {
            let input = client(
                FIXED,
                &[option(opt::GO, &bad), option(opt::GO, &go_data(b"", &[]))],
            );
            let (r, t, _) = run(input);
            assert_eq!(r, Ok(negotiated(RO, 0, false)), "{bad:?}");
            let replies = parse_sent(&t.sent).1;
            assert_eq!((replies[0].0, replies[0].1), (opt::GO, rep::ERR_INVALID));
            assert_eq!(replies[1..], go_replies(opt::GO, &RO));
        }
    }

    #[test]
    fn abort() {
        let (r, t, _) = run(client(FIXED, &[option(opt::ABORT, &[])]));
        assert_eq!(r, Err(ServerHandshakeError::Aborted));
        assert_eq!(parse_sent(&t.sent).1, [(opt::ABORT, rep::ACK, vec![])]);
    }

    #[test]
    fn client_flag_errors() {
        for (flags, e) in [
            (0, ServerHandshakeError::NotFixedNewstyle),
            (cflag::NO_ZEROES, ServerHandshakeError::NotFixedNewstyle),
            (FIXED | 4, ServerHandshakeError::BadClientFlags(5)),
            (1 << 31, ServerHandshakeError::BadClientFlags(1 << 31)),
        ] {
            let input = client(flags, &[option(opt::GO, &go_data(b"", &[]))]);
            let (r, t, _) = run(input);
            assert_eq!(r, Err(e));
            assert_eq!(t.pos, 4, "no option was read");
            assert_eq!(t.sent.len(), GREETING_SIZE);
        }
        let (r, _, _) = run(vec![0, 0]);
        assert_eq!(r, Err(ServerHandshakeError::Io("eof")));
    }

    #[test]
    fn bad_magic() {
        let mut o = option(opt::GO, &go_data(b"", &[]));
        o[0] = b'X';
        let (r, t, _) = run(client(FIXED, &[option(opt::LIST, &[]), o]));
        assert_eq!(r, Err(ServerHandshakeError::BadMagic));
        assert_eq!(t.pos, 4 + 2 * OptionHeader::SIZE);
    }

    #[test]
    fn too_many_options() {
        let go = option(opt::GO, &go_data(b"disk", &[]));
        let mut opts = vec![option(99, &[]); MAX_SERVER_OPTIONS - 1];
        opts.push(go.clone());
        assert!(run(client(FIXED, &opts)).0.is_ok());
        let mut opts = vec![option(opt::INFO, &go_data(b"disk", &[])); MAX_SERVER_OPTIONS];
        opts.push(go);
        let (r, t, _) = run(client(FIXED, &opts));
        assert_eq!(r, Err(ServerHandshakeError::TooManyOptions));
        assert_eq!(parse_sent(&t.sent).1.len(), 3 * MAX_SERVER_OPTIONS);
    }

    #[test]
    fn oversized_options() {
        // Longer than MAX_OPTION_LEN: refused unread.
        let mut input = client(FIXED, &[]);
        input.extend(
            OptionHeader {
                option: opt::GO,
                length: MAX_OPTION_LEN + 1,
            }
            .encode(),
        );
        input.extend(vec![0; 100]);
        let (r, t, _) = run(input);
        assert_eq!(r, Err(ServerHandshakeError::TooBig));
        assert_eq!(t.pos, 4 + OptionHeader::SIZE);
        let mut input = client(FIXED, &[]);
        input.extend(
            OptionHeader {
                option: 1234,
                length: u32::MAX,
            }
            .encode(),
        );
        assert_eq!(run(input).0, Err(ServerHandshakeError::TooBig));
        // Up to MAX_OPTION_LEN: discarded and answered.
        let big = vec![0; MAX_OPTION_LEN as usize];
        let input = client(
            FIXED,
            &[
                option(opt::GO, &big),
                option(opt::LIST, &big),
                option(77, &big),
                option(opt::ABORT, &big),
            ],
        );
        let (r, t, _) = run(input);
        assert_eq!(r, Err(ServerHandshakeError::Aborted));
        assert_eq!(t.pos, t.input.len());
        let kinds: Vec<_> = parse_sent(&t.sent).1.iter().map(|r| r.1).collect();
        assert_eq!(
            kinds,
            [rep::ERR_TOO_BIG, rep::ERR_INVALID, rep::ERR_UNSUP, rep::ACK]
        );
        // With no scratch at all, GO and INFO are always too big, yet
        // EXPORT_NAME of the default export works.
        let input = client(
            FIXED,
            &[
                option(opt::INFO, &go_data(b"", &[])),
                option(opt::EXPORT_NAME, b""),
            ],
        );
        let (r, t, _) = run_with(input, 0);
        assert_eq!(
            r,
            Ok(Negotiated {
                via_export_name: true,
                ..negotiated(RO, 0, false)
            })
        );
        assert_eq!(parse_sent(&t.sent).1[0].1, rep::ERR_TOO_BIG);
    }

    #[test]
    fn read_budget() {
        let big = vec![0; MAX_OPTION_LEN as usize];
        let opts = vec![option(55, &big); 20];
        let (r, t, _) = run(client(FIXED, &opts));
        assert_eq!(r, Err(ServerHandshakeError::TooLong));
        assert!(t.pos <= MAX_SERVER_HANDSHAKE_READ);
        // The option that would cross the budget is not read at all.
        assert_eq!(parse_sent(&t.sent).1.len(), 15);
        assert_eq!(t.pos, 4 + 15 * big.len() + 16 * OptionHeader::SIZE);
    }

    #[test]
    fn error_messages() {
        let e: ServerHandshakeError<&str> = ServerHandshakeError::Io("reset");
        assert_eq!(
            e.to_string(),
            "connection failed during the NBD handshake: reset"
        );
        let e: ServerHandshakeError<&str> = ServerHandshakeError::BadClientFlags(6);
        assert_eq!(e.to_string(), "the client sent unknown client flags (0x6)");
        let e: ServerHandshakeError<&str> = ServerHandshakeError::Aborted;
        assert_eq!(e.to_string(), e.what());
    }

    // ---- The two sides of dst-proto against each other. ----

    mod interop {
        use super::*;
        use std::io::{self, Read, Write};
        use std::os::unix::net::UnixStream;
        use std::time::Duration;

        struct Sock(UnixStream);

        impl Transport for Sock {
            type Error = io::ErrorKind;

            fn send_all(&mut self, buf: &[u8]) -> Result<(), io::ErrorKind> {
                self.0.write_all(buf).map_err(|e| e.kind())
            }

            fn recv_exact(&mut self, buf: &mut [u8]) -> Result<(), io::ErrorKind> {
                self.0.read_exact(buf).map_err(|e| e.kind())
            }
        }

        fn pair() -> (Sock, Sock) {
            let (a, b) = UnixStream::pair().unwrap();
            for s in [&a, &b] {
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            }
            (Sock(a), Sock(b))
        }

        type Both = (
            Result<ExportInfo, HandshakeError<io::ErrorKind>>,
            Result<(Negotiated, Vec<u8>), ServerHandshakeError<io::ErrorKind>>,
        );

        fn both(name: &[u8]) -> Both {
            let (mut c, mut s) = pair();
            let server = std::thread::spawn(move || {
                let mut scratch = vec![0; SERVER_SCRATCH_LEN];
                let r = server_handshake(&mut s, &mut Exports::default(), &mut scratch);
                r.map(|n| (n, scratch[..n.name_len].to_vec()))
            });
            let r = client_handshake(&mut c, name);
            drop(c);
            (r, server.join().unwrap())
        }

        #[test]
        fn client_and_server_agree() {
            for (name, e) in [(&b"disk"[..], DISK), (b"", RO), (b"ro", RO)] {
                let (c, s) = both(name);
                let c = c.unwrap();
                let (n, got) = s.unwrap();
                assert_eq!(got, name);
                assert_eq!(n, negotiated(e, name.len(), true));
                let want = ExportInfo::new(
                    e.size,
                    e.tflags,
                    Some([e.min_block, e.pref_block, e.max_block]),
                )
                .unwrap();
                assert_eq!(c, want);
            }
        }

        #[test]
        fn unknown_export() {
            let (c, s) = both(b"nope");
            assert_eq!(
                c,
                Err(HandshakeError::Refused {
                    reply: rep::ERR_UNKNOWN
                })
            );
            // The client hangs up; the server sees the end of the stream.
            assert_eq!(
                s,
                Err(ServerHandshakeError::Io(io::ErrorKind::UnexpectedEof))
            );
            let long = vec![b'y'; MAX_NAME_LEN];
            assert!(both(&long).0.is_err());
        }
    }

    // ---- Fuzzing. ----
    //
    // As in nbd.rs: a deterministic PRNG drives random and mutated client
    // streams through `server_handshake`, and random requests through
    // `check_request`.  Nothing may panic, the handshake reads at most
    // MAX_SERVER_HANDSHAKE_READ bytes in a bounded number of reads, and
    // what it sends is well-formed.  NBD_FUZZ_ITERS and NBD_FUZZ_SEED work
    // as there:
    //
    //   NBD_FUZZ_ITERS=1000000 CARGO_PROFILE_RELEASE_OVERFLOW_CHECKS=true \
    //     cargo test --release -p dst-proto nbd_server::tests::fuzz -- --nocapture

    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            // xorshift64*
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }

        fn bytes(&mut self, max: usize) -> Vec<u8> {
            let n = self.below(max + 1);
            (0..n).map(|_| self.next() as u8).collect()
        }

        fn pick<T: Copy>(&mut self, from: &[T]) -> T {
            from[self.below(from.len())]
        }
    }

    fn env(name: &str, default: u64) -> u64 {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    }

    fn fuzz_rng(salt: u64) -> (Rng, u64) {
        let seed = env("NBD_FUZZ_SEED", 0x5eed_d57d_0000_0001) ^ salt;
        (Rng(seed | 1), env("NBD_FUZZ_ITERS", 20_000))
    }

    const INTERESTING: [u32; 16] = [
        0,
        1,
        2,
        3,
        4,
        7,
        8,
        512,
        4096,
        4097,
        65536,
        65537,
        0x7fff_ffff,
        0x8000_0001,
        0xffff_fffe,
        0xffff_ffff,
    ];

    fn mutate(rng: &mut Rng, mut s: Vec<u8>) -> Vec<u8> {
        for _ in 0..1 + rng.below(4) {
            let at = rng.below(s.len() + 1);
            match rng.below(7) {
                0 if at < s.len() => s[at] ^= 1 << rng.below(8),
                1 if at < s.len() => s[at] = rng.next() as u8,
                2 => s.truncate(at),
                3 => {
                    let junk = rng.bytes(40);
                    s.splice(at..at, junk);
                }
                4 if at + 4 <= s.len() => {
                    let v = rng.pick(&INTERESTING);
                    s[at..at + 4].copy_from_slice(&v.to_be_bytes());
                }
                5 => {
                    // Repeat a chunk (e.g. an option).
                    let len = rng.below(64).min(s.len() - at);
                    let chunk = s[at..at + len].to_vec();
                    s.splice(
                        at..at,
                        chunk
                            .iter()
                            .cycle()
                            .take(len * (1 + rng.below(80)))
                            .copied(),
                    );
                }
                6 => s.extend(rng.bytes(64)),
                _ => {}
            }
        }
        s
    }

    fn seeds() -> Vec<Vec<u8>> {
        let go = option(opt::GO, &go_data(b"disk", &[info::BLOCK_SIZE]));
        vec![
            client(FIXED_NZ, std::slice::from_ref(&go)),
            client(FIXED, &[option(opt::EXPORT_NAME, b"ro")]),
            client(
                FIXED,
                &[
                    option(opt::INFO, &go_data(b"", &[info::NAME])),
                    option(opt::LIST, &[]),
                    option(opt::STRUCTURED_REPLY, &[]),
                    go.clone(),
                ],
            ),
            client(FIXED, &[option(opt::ABORT, &[])]),
            client(FIXED, &[option(opt::GO, &go_data(b"nope", &[]))]),
            client(FIXED, &vec![option(5, &[1, 2, 3]); MAX_SERVER_OPTIONS + 1]),
            client(FIXED, &vec![option(9, &[0; 0x4000]); 4]),
        ]
    }

    #[test]
    fn fuzz_handshake() {
        let (mut rng, iters) = fuzz_rng(11);
        let seeds = seeds();
        let mut outcomes = [0usize; 10];
        for i in 0..iters {
            let input = match i % 5 {
                0 => {
                    let mut s = rng.pick(&[0u32, FIXED, FIXED_NZ, 4]).to_be_bytes().to_vec();
                    s.extend(rng.bytes(300));
                    s
                }
                1 => {
                    // Option headers with random fields and short data.
                    let mut s = FIXED.to_be_bytes().to_vec();
                    for _ in 0..rng.below(6) {
                        let o = rng.pick(&[1, 2, 3, 5, 6, 7, 8, 9, 10, 11, 12, 0x8000_0000]);
                        let len = rng.pick(&INTERESTING).min(5000);
                        s.extend(option(o, &rng.bytes(len as usize)));
                        s.truncate(
                            s.len()
                                .saturating_sub(rng.below(2) * rng.below(len as usize + 1)),
                        );
                    }
                    s
                }
                _ => {
                    let s = seeds[rng.below(seeds.len())].clone();
                    mutate(&mut rng, s)
                }
            };
            let scratch_len = rng.pick(&[0, 1, 7, 64, 4096, SERVER_SCRATCH_LEN, 70000]);
            let mut t = Script::new(input);
            let mut scratch = vec![0x5a; scratch_len];
            let mut exports = Exports::default();
            let r = server_handshake(&mut t, &mut exports, &mut scratch);
            assert!(t.pos <= MAX_SERVER_HANDSHAKE_READ);
            assert!(t.reads <= 1 + 3 * MAX_SERVER_OPTIONS + MAX_SERVER_HANDSHAKE_READ / 256);
            assert!(exports.lookups <= MAX_SERVER_OPTIONS);
            // What went out is a greeting, option replies, and maybe an
            // NBD_OPT_EXPORT_NAME answer.
            let (_, replies, rest) = parse_sent(&t.sent);
            assert!(replies.len() <= 3 * MAX_SERVER_OPTIONS);
            let k = match r {
                Ok(n) => {
                    let name = &scratch[..n.name_len];
                    assert_eq!(Exports::default().lookup(name), Some(n.export));
                    if n.via_export_name {
                        let zeroes = if n.no_zeroes { 0 } else { EXPORT_NAME_ZEROES };
                        assert_eq!(rest.len(), 10 + zeroes);
                    } else {
                        assert!(rest.is_empty());
                        assert_eq!(
                            replies.last().map(|r| (r.0, r.1)),
                            Some((opt::GO, rep::ACK))
                        );
                    }
                    0
                }
                Err(e) => {
                    assert!(rest.is_empty());
                    match e {
                        ServerHandshakeError::Io(_) => 1,
                        ServerHandshakeError::BadMagic => 2,
                        ServerHandshakeError::BadClientFlags(_) => 3,
                        ServerHandshakeError::NotFixedNewstyle => 4,
                        ServerHandshakeError::Aborted => 5,
                        ServerHandshakeError::UnknownExport => 6,
                        ServerHandshakeError::TooManyOptions => 7,
                        ServerHandshakeError::TooBig => 8,
                        ServerHandshakeError::TooLong => 9,
                    }
                }
            };
            outcomes[k] += 1;
        }
        println!(
            "fuzz_handshake: {iters} runs, outcomes (ok, io, magic, cflags, newstyle, \
             abort, unknown, options, big, long) = {outcomes:?}"
        );
        if iters >= 10_000 {
            // The mutations must reach every outcome but the read budget
            // (which needs a megabyte of options; see read_budget).
            assert!(outcomes[..9].iter().all(|&n| n > 0), "{outcomes:?}");
        }
    }

    #[test]
    fn fuzz_server_pairs_with_scripts_of_valid_options() {
        // Valid option sequences of random kinds always end in the right
        // outcome, whatever the order.
        let (mut rng, iters) = fuzz_rng(12);
        for _ in 0..iters / 10 {
            let mut opts = Vec::new();
            let mut want_replies = 0;
            for _ in 0..rng.below(MAX_SERVER_OPTIONS) {
                match rng.below(4) {
                    0 => {
                        opts.push(option(opt::INFO, &go_data(b"ro", &[])));
                        want_replies += 3;
                    }
                    1 => {
                        opts.push(option(opt::LIST, &[]));
                        want_replies += 3;
                    }
                    2 => {
                        opts.push(option(rng.next() as u32 | 0x100, &rng.bytes(20)));
                        want_replies += 1;
                    }
                    _ => {
                        opts.push(option(opt::GO, &go_data(b"nope", &[])));
                        want_replies += 1;
                    }
                }
            }
            if rng.below(2) == 0 {
                opts.push(option(opt::GO, &go_data(b"disk", &[])));
                want_replies += 3;
            } else {
                opts.push(option(opt::EXPORT_NAME, b"disk"));
            }
            let (r, t, _) = run(client(FIXED_NZ, &opts));
            assert_eq!(r.unwrap().export, DISK);
            assert_eq!(parse_sent(&t.sent).1.len(), want_replies);
            assert_eq!(t.pos, t.input.len());
        }
    }

    // ---- check_request. ----

    fn req(kind: u16, flags: u16, offset: u64, length: u32) -> Request {
        Request {
            flags,
            kind,
            cookie: 1,
            offset,
            length,
        }
    }

    #[test]
    fn requests() {
        let all = ServedExport {
            tflags: tflag::HAS_FLAGS
                | tflag::SEND_FLUSH
                | tflag::SEND_FUA
                | tflag::SEND_TRIM
                | tflag::SEND_WRITE_ZEROES
                | tflag::SEND_CACHE
                | tflag::SEND_FAST_ZERO,
            ..DISK
        };
        let bare = ServedExport {
            tflags: tflag::HAS_FLAGS,
            ..DISK
        };
        let ro = ServedExport {
            tflags: all.tflags | tflag::READ_ONLY,
            ..DISK
        };
        let ok = |r: Request, e: &ServedExport| check_request(&r, e);
        const EINVAL: Result<(), RequestVerdict> = Err(RequestVerdict::Error(err::EINVAL));
        const EPERM: Result<(), RequestVerdict> = Err(RequestVerdict::Error(err::EPERM));
        const ENOSPC: Result<(), RequestVerdict> = Err(RequestVerdict::Error(err::ENOSPC));
        let size = DISK.size;
        let max = DISK.max_block;

        // Good requests.
        for e in [&all, &ro] {
            assert_eq!(ok(req(cmd::READ, 0, 0, 512), e), Ok(()));
            assert_eq!(
                ok(req(cmd::READ, cmdflag::FUA, size - 4096, 4096), e),
                Ok(())
            );
            assert_eq!(ok(req(cmd::FLUSH, 0, 0, 0), e), Ok(()));
            assert_eq!(ok(req(cmd::FLUSH, cmdflag::FUA, 0, 0), e), Ok(()));
            assert_eq!(ok(req(cmd::CACHE, 0, 0, 1 << 30), e), EINVAL);
            assert_eq!(ok(req(cmd::CACHE, 0, 0, size as u32), e), Ok(()));
        }
        assert_eq!(ok(req(cmd::WRITE, cmdflag::FUA, 512, max), &all), Ok(()));
        assert_eq!(ok(req(cmd::TRIM, 0, 0, size as u32), &all), Ok(()));
        for f in [0, cmdflag::NO_HOLE, cmdflag::FAST_ZERO | cmdflag::FUA] {
            assert_eq!(ok(req(cmd::WRITE_ZEROES, f, 0, 1 << 24), &all), Ok(()));
        }
        assert_eq!(ok(req(cmd::DISC, 0xffff, 7, 7), &bare), Ok(()));

        // Unknown or unadvertised commands.
        for k in [cmd::BLOCK_STATUS, cmd::RESIZE, 9, 0xffff] {
            assert_eq!(ok(req(k, 0, 0, 512), &all), EINVAL);
        }
        for k in [cmd::FLUSH, cmd::TRIM, cmd::WRITE_ZEROES, cmd::CACHE] {
            let (o, l) = if k == cmd::FLUSH { (0, 0) } else { (0, 512) };
            assert_eq!(ok(req(k, 0, o, l), &bare), EINVAL, "{}", cmd::name(k));
        }
        // Flags.
        assert_eq!(ok(req(cmd::WRITE, cmdflag::FUA, 0, 512), &bare), EINVAL);
        assert_eq!(ok(req(cmd::WRITE, cmdflag::NO_HOLE, 0, 512), &all), EINVAL);
        assert_eq!(
            ok(req(cmd::WRITE_ZEROES, cmdflag::FAST_ZERO, 0, 512), &DISK),
            EINVAL
        );
        assert_eq!(ok(req(cmd::READ, cmdflag::DF, 0, 512), &all), EINVAL);
        let df = ServedExport {
            tflags: all.tflags | tflag::SEND_DF,
            ..all
        };
        assert_eq!(ok(req(cmd::READ, cmdflag::DF, 0, 512), &df), Ok(()));
        for f in [cmdflag::REQ_ONE, cmdflag::PAYLOAD_LEN, 1 << 6, 1 << 15] {
            assert_eq!(ok(req(cmd::READ, f, 0, 512), &all), EINVAL);
        }
        // Read-only.
        assert_eq!(ok(req(cmd::WRITE, 0, 0, 512), &ro), EPERM);
        assert_eq!(ok(req(cmd::TRIM, 0, 0, 512), &ro), EPERM);
        assert_eq!(ok(req(cmd::WRITE_ZEROES, 0, 0, 512), &ro), EPERM);
        // FLUSH with a range.
        assert_eq!(ok(req(cmd::FLUSH, 0, 512, 0), &all), EINVAL);
        assert_eq!(ok(req(cmd::FLUSH, 0, 0, 512), &all), EINVAL);
        // Zero lengths, alignment, maximum.
        for k in [
            cmd::READ,
            cmd::WRITE,
            cmd::TRIM,
            cmd::WRITE_ZEROES,
            cmd::CACHE,
        ] {
            assert_eq!(ok(req(k, 0, 0, 0), &all), EINVAL);
            assert_eq!(ok(req(k, 0, 1, 512), &all), EINVAL);
            assert_eq!(ok(req(k, 0, 0, 513), &all), EINVAL);
        }
        assert_eq!(ok(req(cmd::READ, 0, 0, max + 512), &all), EINVAL);
        assert_eq!(ok(req(cmd::WRITE, 0, 0, max + 512), &all), EINVAL);
        assert_eq!(ok(req(cmd::TRIM, 0, 0, max + 512), &all), Ok(()));
        // Past the end.
        assert_eq!(ok(req(cmd::READ, 0, size, 512), &all), EINVAL);
        assert_eq!(ok(req(cmd::READ, 0, size - 512, 1024), &all), EINVAL);
        assert_eq!(ok(req(cmd::TRIM, 0, size, 512), &all), EINVAL);
        assert_eq!(ok(req(cmd::CACHE, 0, size, 512), &all), EINVAL);
        assert_eq!(ok(req(cmd::WRITE, 0, size, 512), &all), ENOSPC);
        assert_eq!(ok(req(cmd::WRITE_ZEROES, 0, size, 512), &all), ENOSPC);
        let wrap = u64::MAX - 511;
        assert_eq!(ok(req(cmd::READ, 0, wrap, 1024), &all), EINVAL);
        assert_eq!(ok(req(cmd::WRITE, 0, wrap, 1024), &all), ENOSPC);
        // Writes too large to discard are fatal; up to 32 MiB they are
        // refused with EINVAL (the caller discards the payload).
        assert_eq!(max_write_payload(&all), DEFAULT_MAX_BLOCK);
        assert_eq!(ok(req(cmd::WRITE, 0, 0, DEFAULT_MAX_BLOCK), &all), EINVAL);
        assert!(matches!(
            ok(req(cmd::WRITE, 0, 0, DEFAULT_MAX_BLOCK + 512), &all),
            Err(RequestVerdict::Fatal(_))
        ));
        assert!(matches!(
            ok(req(cmd::WRITE, cmdflag::PAYLOAD_LEN, 0, u32::MAX), &ro),
            Err(RequestVerdict::Fatal(_))
        ));
        assert_eq!(ok(req(cmd::READ, 0, 0, u32::MAX), &all), EINVAL);
        // Degenerate exports do not panic.
        let zero = ServedExport {
            size: 0,
            min_block: 0,
            max_block: 0,
            ..all
        };
        assert_eq!(ok(req(cmd::READ, 0, 0, 1), &zero), EINVAL);
        assert_eq!(ok(req(cmd::TRIM, 0, 0, 1), &zero), EINVAL);
        assert_eq!(ok(req(cmd::FLUSH, 0, 0, 0), &zero), Ok(()));
    }

    #[test]
    fn fuzz_check_request() {
        let (mut rng, iters) = fuzz_rng(13);
        let mut oks = 0;
        for _ in 0..iters * 5 {
            let min = 1u32 << rng.below(17);
            let e = ServedExport {
                size: match rng.below(3) {
                    0 => rng.next(),
                    1 => u64::from(rng.pick(&INTERESTING)),
                    _ => (rng.next() % (1 << 40)) & !u64::from(min - 1),
                },
                tflags: rng.next() as u16,
                min_block: if rng.below(8) == 0 { 0 } else { min },
                pref_block: 4096,
                max_block: match rng.below(3) {
                    0 => rng.pick(&INTERESTING),
                    1 => u32::MAX,
                    _ => min.saturating_mul(1 << rng.below(12)),
                },
            };
            let r = Request {
                flags: if rng.below(2) == 0 {
                    rng.next() as u16
                } else {
                    1 << rng.below(16)
                },
                kind: rng.below(10) as u16,
                cookie: rng.next(),
                offset: match rng.below(4) {
                    0 => rng.next(),
                    1 => 0,
                    2 => u64::from(rng.pick(&INTERESTING)),
                    _ => e.size.wrapping_sub(u64::from(rng.pick(&INTERESTING))),
                },
                length: match rng.below(3) {
                    0 => rng.next() as u32,
                    1 => rng.pick(&INTERESTING),
                    _ => min.saturating_mul(rng.below(64) as u32),
                },
            };
            match check_request(&r, &e) {
                Ok(()) => {
                    oks += 1;
                    if r.kind == cmd::DISC {
                        continue;
                    }
                    assert!(matches!(
                        r.kind,
                        cmd::READ
                            | cmd::WRITE
                            | cmd::FLUSH
                            | cmd::TRIM
                            | cmd::WRITE_ZEROES
                            | cmd::CACHE
                    ));
                    if r.kind == cmd::FLUSH {
                        assert_eq!((r.offset, r.length), (0, 0));
                        assert!(e.tflags & tflag::SEND_FLUSH != 0);
                        continue;
                    }
                    let end = r.end().expect("no overflow");
                    assert!(r.length > 0 && end <= e.size);
                    let m = e.min_block.max(1);
                    assert!(r.offset.is_multiple_of(u64::from(m)) && r.length.is_multiple_of(m));
                    if matches!(r.kind, cmd::READ | cmd::WRITE) {
                        assert!(r.length <= e.max_block);
                    }
                    if matches!(r.kind, cmd::WRITE | cmd::TRIM | cmd::WRITE_ZEROES) {
                        assert!(e.tflags & tflag::READ_ONLY == 0);
                    }
                    if r.flags & cmdflag::FUA != 0 {
                        assert!(e.tflags & tflag::SEND_FUA != 0);
                    }
                    assert!(
                        r.flags
                            & !(cmdflag::FUA | cmdflag::NO_HOLE | cmdflag::FAST_ZERO | cmdflag::DF)
                            == 0
                    );
                }
                Err(RequestVerdict::Error(v)) => {
                    assert!([err::EINVAL, err::EPERM, err::ENOSPC].contains(&v));
                    if r.has_payload() {
                        assert!(r.length <= max_write_payload(&e));
                    }
                }
                Err(RequestVerdict::Fatal(_)) => {
                    assert!(r.kind == cmd::WRITE && r.length > max_write_payload(&e));
                }
            }
        }
        assert!(oks > 0);
    }
}
