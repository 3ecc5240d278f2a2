// SPDX-License-Identifier: GPL-2.0

//! The NBD (Network Block Device) protocol, as described by the
//! NetworkBlockDevice project's `doc/proto.md`.
//!
//! This file holds the protocol constants, the transmission-phase messages
//! ([`Request`], [`SimpleReply`]), the option-haggling messages, and the
//! client side of the fixed newstyle handshake ([`client_handshake`]).  The
//! kernel module compiles it from source for its NBD legs; the userspace
//! tools (`nbd-hostile`, `dstctl`) use it as part of `dst-proto`.
//!
//! Everything arriving from a peer is untrusted: every length is checked
//! against a fixed bound before anything is read, the number of messages
//! and the total bytes read during the handshake are bounded, and no input
//! can make this code panic or allocate.  All integers on the wire are
//! big-endian.
//!
//! dst never negotiates structured replies or extended headers, so in the
//! transmission phase every reply is a [`SimpleReply`]; a structured reply
//! from the server is a protocol violation ([`WireError::Structured`]).

use core::fmt;

/// The IANA-assigned NBD TCP port.
pub const DEFAULT_PORT: u16 = 10809;

/// First 8 bytes of every greeting (`"NBDMAGIC"`).
pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
/// Second magic of a newstyle greeting, and the magic of every option
/// request (`"IHAVEOPT"`).
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// Second magic of an oldstyle greeting (dst refuses oldstyle servers).
pub const OLDSTYLE_MAGIC: u64 = 0x0000_4202_8186_1253;
/// Magic of every option reply.
pub const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// Magic of a transmission-phase request.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// Magic of a simple reply.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// Magic of a structured reply chunk (dst's export sends them when the
/// client asks; its client never does).
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;
/// Magic of an extended-header request (never negotiated by dst).
pub const EXTENDED_REQUEST_MAGIC: u32 = 0x21e4_1c71;
/// Magic of an extended-header reply (never negotiated by dst).
pub const EXTENDED_REPLY_MAGIC: u32 = 0x6e8a_278c;

/// Longest string the protocol allows (export names, messages), in bytes.
pub const MAX_NAME_LEN: usize = 4096;
/// Size of the newstyle greeting: `NBDMAGIC`, `IHAVEOPT`, handshake flags.
pub const GREETING_SIZE: usize = 18;
/// Zero bytes ending a successful `NBD_OPT_EXPORT_NAME`, unless both sides
/// agreed on [`hflag::NO_ZEROES`].
pub const EXPORT_NAME_ZEROES: usize = 124;

/// Minimum block size assumed when the server advertises none.
pub const DEFAULT_MIN_BLOCK: u32 = 1;
/// Preferred block size assumed when the server advertises none.
pub const DEFAULT_PREF_BLOCK: u32 = 4096;
/// Maximum block size assumed when the server advertises none, and the cap
/// applied to what it advertises (the spec's portable limit, 32 MiB).
pub const DEFAULT_MAX_BLOCK: u32 = 32 << 20;
/// Largest minimum block size the protocol allows.
pub const MAX_MIN_BLOCK: u32 = 1 << 16;
/// Smallest preferred block size the protocol allows (if advertised).
pub const MIN_PREF_BLOCK: u32 = 512;
/// Advertised maximum block size meaning "no inherent limit".
pub const NO_MAX_BLOCK: u32 = u32::MAX;

/// Largest export size accepted: sizes must fit a signed 64-bit offset.
pub const MAX_EXPORT_SIZE: u64 = u64::MAX >> 1;

/// Longest option reply payload [`client_handshake`] accepts; longer replies
/// are refused unread.  Every reply the spec defines is far smaller (strings
/// are at most [`MAX_NAME_LEN`] bytes).
pub const MAX_OPT_REPLY_LEN: u32 = 64 << 10;
/// Most option replies [`client_handshake`] reads for one option.
pub const MAX_OPT_REPLIES: usize = 128;
/// Most bytes [`client_handshake`] reads from the server in total.
pub const MAX_HANDSHAKE_READ: usize = 1 << 20;

/// Handshake flags (16 bits, sent by the server in its greeting).
pub mod hflag {
    /// The server speaks fixed newstyle.
    pub const FIXED_NEWSTYLE: u16 = 1 << 0;
    /// The server can omit the zeroes after `NBD_OPT_EXPORT_NAME`.
    pub const NO_ZEROES: u16 = 1 << 1;
}

/// Client flags (32 bits, sent by the client after the greeting).
pub mod cflag {
    /// The client speaks fixed newstyle.
    pub const FIXED_NEWSTYLE: u32 = 1 << 0;
    /// The server must omit the zeroes after `NBD_OPT_EXPORT_NAME`.
    pub const NO_ZEROES: u32 = 1 << 1;
}

/// Option types (handshake requests).
pub mod opt {
    /// Select an export and enter transmission (cannot report errors).
    pub const EXPORT_NAME: u32 = 1;
    /// End the handshake without transmission.
    pub const ABORT: u32 = 2;
    /// List the exports.
    pub const LIST: u32 = 3;
    /// Upgrade to TLS.
    pub const STARTTLS: u32 = 5;
    /// Ask about an export without entering transmission.
    pub const INFO: u32 = 6;
    /// Select an export and enter transmission, with error replies.
    pub const GO: u32 = 7;
    /// Ask for structured replies.
    pub const STRUCTURED_REPLY: u32 = 8;
    /// List metadata contexts.
    pub const LIST_META_CONTEXT: u32 = 9;
    /// Select metadata contexts.
    pub const SET_META_CONTEXT: u32 = 10;
    /// Ask for extended headers.
    pub const EXTENDED_HEADERS: u32 = 11;

    /// The protocol name of option `o`, for messages.
    pub fn name(o: u32) -> &'static str {
        match o {
            EXPORT_NAME => "NBD_OPT_EXPORT_NAME",
            ABORT => "NBD_OPT_ABORT",
            LIST => "NBD_OPT_LIST",
            STARTTLS => "NBD_OPT_STARTTLS",
            INFO => "NBD_OPT_INFO",
            GO => "NBD_OPT_GO",
            STRUCTURED_REPLY => "NBD_OPT_STRUCTURED_REPLY",
            LIST_META_CONTEXT => "NBD_OPT_LIST_META_CONTEXT",
            SET_META_CONTEXT => "NBD_OPT_SET_META_CONTEXT",
            EXTENDED_HEADERS => "NBD_OPT_EXTENDED_HEADERS",
            _ => "unknown option",
        }
    }
}

/// Option reply types.  Error replies have bit 31 set.
pub mod rep {
    /// The option succeeded (or a list ended).
    pub const ACK: u32 = 1;
    /// One export, in reply to `NBD_OPT_LIST`.
    pub const SERVER: u32 = 2;
    /// One piece of information (an `info` type and its data).
    pub const INFO: u32 = 3;
    /// One metadata context.
    pub const META_CONTEXT: u32 = 4;
    /// The bit marking an error reply.
    pub const ERR_BIT: u32 = 1 << 31;
    /// The option is not supported by the server.
    pub const ERR_UNSUP: u32 = ERR_BIT | 1;
    /// The server's policy forbids the option.
    pub const ERR_POLICY: u32 = ERR_BIT | 2;
    /// The option was malformed.
    pub const ERR_INVALID: u32 = ERR_BIT | 3;
    /// The option is not supported on the server's platform.
    pub const ERR_PLATFORM: u32 = ERR_BIT | 4;
    /// The server requires TLS first.
    pub const ERR_TLS_REQD: u32 = ERR_BIT | 5;
    /// The export does not exist.
    pub const ERR_UNKNOWN: u32 = ERR_BIT | 6;
    /// The server is shutting down.
    pub const ERR_SHUTDOWN: u32 = ERR_BIT | 7;
    /// The server requires the client to ask for block size constraints.
    pub const ERR_BLOCK_SIZE_REQD: u32 = ERR_BIT | 8;
    /// The request or the reply is too large.
    pub const ERR_TOO_BIG: u32 = ERR_BIT | 9;
    /// The server requires extended headers.
    pub const ERR_EXT_HEADER_REQD: u32 = ERR_BIT | 10;

    /// Whether reply type `t` is an error.
    pub fn is_error(t: u32) -> bool {
        t & ERR_BIT != 0
    }

    /// The protocol name of reply type `t`, for messages.
    pub fn name(t: u32) -> &'static str {
        match t {
            ACK => "NBD_REP_ACK",
            SERVER => "NBD_REP_SERVER",
            INFO => "NBD_REP_INFO",
            META_CONTEXT => "NBD_REP_META_CONTEXT",
            ERR_UNSUP => "NBD_REP_ERR_UNSUP",
            ERR_POLICY => "NBD_REP_ERR_POLICY",
            ERR_INVALID => "NBD_REP_ERR_INVALID",
            ERR_PLATFORM => "NBD_REP_ERR_PLATFORM",
            ERR_TLS_REQD => "NBD_REP_ERR_TLS_REQD",
            ERR_UNKNOWN => "NBD_REP_ERR_UNKNOWN",
            ERR_SHUTDOWN => "NBD_REP_ERR_SHUTDOWN",
            ERR_BLOCK_SIZE_REQD => "NBD_REP_ERR_BLOCK_SIZE_REQD",
            ERR_TOO_BIG => "NBD_REP_ERR_TOO_BIG",
            ERR_EXT_HEADER_REQD => "NBD_REP_ERR_EXT_HEADER_REQD",
            t if is_error(t) => "unknown error reply",
            _ => "unknown reply",
        }
    }

    /// What error reply `t` means, in words for users.
    pub fn describe(t: u32) -> &'static str {
        match t {
            ERR_UNSUP => "the server does not support the option",
            ERR_POLICY => "the server's policy forbids it",
            ERR_INVALID => "the server found the request invalid",
            ERR_PLATFORM => "the server's platform does not support it",
            ERR_TLS_REQD => "the server requires TLS",
            ERR_UNKNOWN => "no such export on the server",
            ERR_SHUTDOWN => "the server is shutting down",
            ERR_BLOCK_SIZE_REQD => "the server requires block size negotiation",
            ERR_TOO_BIG => "the request or reply is too big for the server",
            ERR_EXT_HEADER_REQD => "the server requires extended headers",
            t if is_error(t) => "the server refused (unknown error)",
            _ => "not an error",
        }
    }
}

/// Information types, in `NBD_REP_INFO` replies and `NBD_OPT_GO` requests.
pub mod info {
    /// Export size (u64) and transmission flags (u16).
    pub const EXPORT: u16 = 0;
    /// Canonical export name (string).
    pub const NAME: u16 = 1;
    /// Export description (string).
    pub const DESCRIPTION: u16 = 2;
    /// Block size constraints: minimum, preferred, maximum (3 × u32).
    pub const BLOCK_SIZE: u16 = 3;
}

/// Transmission flags (16 bits, describing an export).
pub mod tflag {
    /// Always set.
    pub const HAS_FLAGS: u16 = 1 << 0;
    /// The export is read-only.
    pub const READ_ONLY: u16 = 1 << 1;
    /// `NBD_CMD_FLUSH` is supported.
    pub const SEND_FLUSH: u16 = 1 << 2;
    /// `NBD_CMD_FLAG_FUA` is supported.
    pub const SEND_FUA: u16 = 1 << 3;
    /// The export behaves like a rotational medium.
    pub const ROTATIONAL: u16 = 1 << 4;
    /// `NBD_CMD_TRIM` is supported.
    pub const SEND_TRIM: u16 = 1 << 5;
    /// `NBD_CMD_WRITE_ZEROES` (and `NBD_CMD_FLAG_NO_HOLE`) is supported.
    pub const SEND_WRITE_ZEROES: u16 = 1 << 6;
    /// `NBD_CMD_FLAG_DF` is supported (structured replies only).
    pub const SEND_DF: u16 = 1 << 7;
    /// Several connections to the export share one consistent cache.
    pub const CAN_MULTI_CONN: u16 = 1 << 8;
    /// `NBD_CMD_RESIZE` is supported.
    pub const SEND_RESIZE: u16 = 1 << 9;
    /// `NBD_CMD_CACHE` is supported.
    pub const SEND_CACHE: u16 = 1 << 10;
    /// `NBD_CMD_FLAG_FAST_ZERO` is supported.
    pub const SEND_FAST_ZERO: u16 = 1 << 11;
    /// Block status requests may carry a payload (extended headers only).
    pub const BLOCK_STAT_PAYLOAD: u16 = 1 << 12;
}

/// Request types (the `kind` of a [`Request`]).
pub mod cmd {
    /// Read `length` bytes; the reply carries them.
    pub const READ: u16 = 0;
    /// Write the `length` bytes following the request.
    pub const WRITE: u16 = 1;
    /// Disconnect (no reply).
    pub const DISC: u16 = 2;
    /// Make completed writes durable.
    pub const FLUSH: u16 = 3;
    /// Discard a range.
    pub const TRIM: u16 = 4;
    /// Prefetch a range.
    pub const CACHE: u16 = 5;
    /// Write zeroes to a range.
    pub const WRITE_ZEROES: u16 = 6;
    /// Query block status (structured replies only).
    pub const BLOCK_STATUS: u16 = 7;
    /// Resize the export.
    pub const RESIZE: u16 = 8;

    /// The protocol name of request type `k`, for messages.
    pub fn name(k: u16) -> &'static str {
        match k {
            READ => "NBD_CMD_READ",
            WRITE => "NBD_CMD_WRITE",
            DISC => "NBD_CMD_DISC",
            FLUSH => "NBD_CMD_FLUSH",
            TRIM => "NBD_CMD_TRIM",
            CACHE => "NBD_CMD_CACHE",
            WRITE_ZEROES => "NBD_CMD_WRITE_ZEROES",
            BLOCK_STATUS => "NBD_CMD_BLOCK_STATUS",
            RESIZE => "NBD_CMD_RESIZE",
            _ => "unknown command",
        }
    }
}

/// Request flags (the `flags` of a [`Request`]).
pub mod cmdflag {
    /// Force unit access: the write is durable when acknowledged.
    pub const FUA: u16 = 1 << 0;
    /// `NBD_CMD_WRITE_ZEROES` must allocate, not punch a hole.
    pub const NO_HOLE: u16 = 1 << 1;
    /// Do not fragment a structured read reply.
    pub const DF: u16 = 1 << 2;
    /// Block status: one extent only.
    pub const REQ_ONE: u16 = 1 << 3;
    /// `NBD_CMD_WRITE_ZEROES`: fail unless it is fast.
    pub const FAST_ZERO: u16 = 1 << 4;
    /// The request carries a payload length (extended headers only).
    pub const PAYLOAD_LEN: u16 = 1 << 5;
}

/// Error values in replies.  They are Linux errno numbers, so the kernel can
/// use them directly once [normalized](err::normalize).
pub mod err {
    /// Operation not permitted (e.g. a write to a read-only export).
    pub const EPERM: u32 = 1;
    /// Input/output error.
    pub const EIO: u32 = 5;
    /// Out of memory.
    pub const ENOMEM: u32 = 12;
    /// Invalid request (bad alignment, out of range, unknown command).
    pub const EINVAL: u32 = 22;
    /// No space left (a write past the end of the export).
    pub const ENOSPC: u32 = 28;
    /// Value too large.
    pub const EOVERFLOW: u32 = 75;
    /// Not supported (a fast zero that would be slow).
    pub const ENOTSUP: u32 = 95;
    /// The server is shutting down; the client must disconnect.
    pub const ESHUTDOWN: u32 = 108;

    /// Maps an error value from the wire to one the protocol defines: the
    /// spec says to treat unknown values as `EINVAL`.  `0` stays `0`.
    pub fn normalize(e: u32) -> u32 {
        match e {
            0 | EPERM | EIO | ENOMEM | EINVAL | ENOSPC | EOVERFLOW | ENOTSUP | ESHUTDOWN => e,
            _ => EINVAL,
        }
    }
}

/// Why a fixed-size message could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireError {
    /// The magic number is not the one expected.
    BadMagic,
    /// A structured reply, which dst never negotiates.
    Structured,
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WireError::BadMagic => "bad magic number",
            WireError::Structured => "unexpected structured reply",
        })
    }
}

/// Sequential big-endian reads from a buffer.  Reading past the end yields
/// zeroes; callers only read buffers whose size they have fixed.
struct Rd<'a>(&'a [u8]);

impl Rd<'_> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        match self.0.split_first_chunk::<N>() {
            Some((head, rest)) => {
                self.0 = rest;
                *head
            }
            None => {
                self.0 = &[];
                [0; N]
            }
        }
    }

    fn u16(&mut self) -> u16 {
        u16::from_be_bytes(self.take())
    }

    fn u32(&mut self) -> u32 {
        u32::from_be_bytes(self.take())
    }

    fn u64(&mut self) -> u64 {
        u64::from_be_bytes(self.take())
    }
}

/// Sequential big-endian writes into a buffer.  Writing past the end drops
/// the bytes; callers only write buffers whose size they have fixed.
struct Wr<'a> {
    buf: &'a mut [u8],
    at: usize,
}

impl<'a> Wr<'a> {
    fn new(buf: &'a mut [u8]) -> Self {
        Wr { buf, at: 0 }
    }

    fn bytes(&mut self, b: &[u8]) {
        let end = self.at.saturating_add(b.len());
        if let Some(dst) = self.buf.get_mut(self.at..end) {
            dst.copy_from_slice(b);
        }
        self.at = end;
    }

    fn u16(&mut self, v: u16) {
        self.bytes(&v.to_be_bytes());
    }

    fn u32(&mut self, v: u32) {
        self.bytes(&v.to_be_bytes());
    }

    fn u64(&mut self, v: u64) {
        self.bytes(&v.to_be_bytes());
    }
}

/// A transmission-phase request (client → server), 28 bytes on the wire.
///
/// A [`cmd::WRITE`] request is followed by `length` bytes of data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// Request flags ([`cmdflag`]).
    pub flags: u16,
    /// Request type ([`cmd`]).
    pub kind: u16,
    /// Opaque value echoed in the reply (the spec's "handle").
    pub cookie: u64,
    /// Byte offset in the export.
    pub offset: u64,
    /// Length in bytes.
    pub length: u32,
}

impl Request {
    /// Size of a request on the wire.
    pub const SIZE: usize = 28;

    /// The request's wire form.
    pub fn encode(&self) -> [u8; Self::SIZE] {
        let mut buf = [0; Self::SIZE];
        let mut w = Wr::new(&mut buf);
        w.u32(REQUEST_MAGIC);
        w.u16(self.flags);
        w.u16(self.kind);
        w.u64(self.cookie);
        w.u64(self.offset);
        w.u32(self.length);
        buf
    }

    /// Parses a request, checking its magic.
    pub fn decode(buf: &[u8; Self::SIZE]) -> Result<Self, WireError> {
        let mut r = Rd(buf);
        if r.u32() != REQUEST_MAGIC {
            return Err(WireError::BadMagic);
        }
        Ok(Request {
            flags: r.u16(),
            kind: r.u16(),
            cookie: r.u64(),
            offset: r.u64(),
            length: r.u32(),
        })
    }

    /// One past the last byte addressed, or `None` if that overflows.
    pub fn end(&self) -> Option<u64> {
        self.offset.checked_add(u64::from(self.length))
    }

    /// Whether `length` bytes of data follow the request ([`cmd::WRITE`]).
    pub fn has_payload(&self) -> bool {
        self.kind == cmd::WRITE
    }
}

/// A simple reply (server → client), 16 bytes on the wire.
///
/// The reply to a successful [`cmd::READ`] is followed by the request's
/// `length` bytes of data; an error reply never carries data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimpleReply {
    /// `0` or an error value ([`err`]).
    pub error: u32,
    /// The cookie of the request answered.
    pub cookie: u64,
}

impl SimpleReply {
    /// Size of a simple reply on the wire.
    pub const SIZE: usize = 16;

    /// The reply's wire form.
    pub fn encode(&self) -> [u8; Self::SIZE] {
        let mut buf = [0; Self::SIZE];
        let mut w = Wr::new(&mut buf);
        w.u32(SIMPLE_REPLY_MAGIC);
        w.u32(self.error);
        w.u64(self.cookie);
        buf
    }

    /// Parses a simple reply.  A structured reply's magic gives
    /// [`WireError::Structured`], any other magic [`WireError::BadMagic`].
    pub fn decode(buf: &[u8; Self::SIZE]) -> Result<Self, WireError> {
        let mut r = Rd(buf);
        match r.u32() {
            SIMPLE_REPLY_MAGIC => Ok(SimpleReply {
                error: r.u32(),
                cookie: r.u64(),
            }),
            STRUCTURED_REPLY_MAGIC => Err(WireError::Structured),
            _ => Err(WireError::BadMagic),
        }
    }
}

/// Structured reply chunk types.
pub mod chunk {
    /// No data: the request succeeded.
    pub const NONE: u16 = 0;
    /// Data at an offset: `offset` (u64), then the data.
    pub const OFFSET_DATA: u16 = 1;
    /// An error: `error` (u32), message length (u16), message.
    pub const ERROR: u16 = (1 << 15) | 1;
    /// Flag of the last chunk of a reply.
    pub const FLAG_DONE: u16 = 1;
}

/// The start of a one-chunk structured reply (server → client): the
/// chunk header and the fixed part of its payload.  A successful read's
/// chunk (`OFFSET_DATA`) is followed by the request's `length` bytes of
/// data; the other chunks are complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StructuredReply {
    /// `0` or an error value ([`err`]).
    pub error: u32,
    /// The cookie of the request answered.
    pub cookie: u64,
    /// For a successful read: its offset and length.
    pub read: Option<(u64, u32)>,
}

impl StructuredReply {
    /// Size of a chunk header on the wire.
    pub const HEADER_SIZE: usize = 20;
    /// Most bytes [`StructuredReply::encode`] writes.
    pub const MAX_SIZE: usize = Self::HEADER_SIZE + 8;

    /// The reply's wire form, in `buf`; returns its length.  An error is
    /// an `ERROR` chunk without a message, a read an `OFFSET_DATA` chunk
    /// (whose data follows), anything else a `NONE` chunk; each the last.
    pub fn encode(&self, buf: &mut [u8; Self::MAX_SIZE]) -> usize {
        let (header, payload) = buf.split_at_mut(Self::HEADER_SIZE);
        // The chunk: its type, the fixed part of its payload, and the
        // length of the data that follows.
        let mut p = Wr::new(payload);
        let (kind, data) = match (self.error, self.read) {
            (0, Some((offset, len))) => {
                p.u64(offset);
                (chunk::OFFSET_DATA, len)
            }
            (0, None) => (chunk::NONE, 0),
            (e, _) => {
                p.u32(e);
                p.u16(0); // no message
                (chunk::ERROR, 0)
            }
        };
        let fixed = p.at;
        let mut w = Wr::new(header);
        w.u32(STRUCTURED_REPLY_MAGIC);
        w.u16(chunk::FLAG_DONE);
        w.u16(kind);
        w.u64(self.cookie);
        w.u32(u32::try_from(fixed).map_or(u32::MAX, |f| f.saturating_add(data)));
        w.at.saturating_add(fixed)
    }
}

/// The header of an option request (client → server), 16 bytes on the
/// wire, followed by `length` bytes of option data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionHeader {
    /// Option type ([`opt`]).
    pub option: u32,
    /// Length of the option data.
    pub length: u32,
}

impl OptionHeader {
    /// Size of an option request header on the wire.
    pub const SIZE: usize = 16;

    /// The header's wire form.
    pub fn encode(&self) -> [u8; Self::SIZE] {
        let mut buf = [0; Self::SIZE];
        let mut w = Wr::new(&mut buf);
        w.u64(IHAVEOPT);
        w.u32(self.option);
        w.u32(self.length);
        buf
    }

    /// Parses a header, checking its magic.
    pub fn decode(buf: &[u8; Self::SIZE]) -> Result<Self, WireError> {
        let mut r = Rd(buf);
        if r.u64() != IHAVEOPT {
            return Err(WireError::BadMagic);
        }
        Ok(OptionHeader {
            option: r.u32(),
            length: r.u32(),
        })
    }
}

/// The header of an option reply (server → client), 20 bytes on the wire,
/// followed by `length` bytes of reply data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionReplyHeader {
    /// The option answered ([`opt`]).
    pub option: u32,
    /// Reply type ([`rep`]).
    pub reply: u32,
    /// Length of the reply data.
    pub length: u32,
}

impl OptionReplyHeader {
    /// Size of an option reply header on the wire.
    pub const SIZE: usize = 20;

    /// The header's wire form.
    pub fn encode(&self) -> [u8; Self::SIZE] {
        let mut buf = [0; Self::SIZE];
        let mut w = Wr::new(&mut buf);
        w.u64(OPT_REPLY_MAGIC);
        w.u32(self.option);
        w.u32(self.reply);
        w.u32(self.length);
        buf
    }

    /// Parses a header, checking its magic.
    pub fn decode(buf: &[u8; Self::SIZE]) -> Result<Self, WireError> {
        let mut r = Rd(buf);
        if r.u64() != OPT_REPLY_MAGIC {
            return Err(WireError::BadMagic);
        }
        Ok(OptionReplyHeader {
            option: r.u32(),
            reply: r.u32(),
            length: r.u32(),
        })
    }
}

/// The server's newstyle greeting with handshake flags `hflags` ([`hflag`]).
pub fn encode_greeting(hflags: u16) -> [u8; GREETING_SIZE] {
    let mut buf = [0; GREETING_SIZE];
    let mut w = Wr::new(&mut buf);
    w.u64(NBDMAGIC);
    w.u64(IHAVEOPT);
    w.u16(hflags);
    buf
}

/// Size of the data of an `NBD_REP_INFO` reply carrying [`info::EXPORT`].
pub const INFO_EXPORT_LEN: usize = 12;
/// Size of the data of an `NBD_REP_INFO` reply carrying [`info::BLOCK_SIZE`].
pub const INFO_BLOCK_SIZE_LEN: usize = 14;
/// Size of the server's answer to `NBD_OPT_EXPORT_NAME`, before the zeroes.
pub const EXPORT_NAME_REPLY_LEN: usize = 10;

/// The data of an `NBD_REP_INFO` reply carrying [`info::EXPORT`]: the export
/// size in bytes and its transmission flags ([`tflag`]).
pub fn encode_info_export(size: u64, tflags: u16) -> [u8; INFO_EXPORT_LEN] {
    let mut buf = [0; INFO_EXPORT_LEN];
    let mut w = Wr::new(&mut buf);
    w.u16(info::EXPORT);
    w.u64(size);
    w.u16(tflags);
    buf
}

/// The data of an `NBD_REP_INFO` reply carrying [`info::BLOCK_SIZE`].
pub fn encode_info_block_size(min: u32, pref: u32, max: u32) -> [u8; INFO_BLOCK_SIZE_LEN] {
    let mut buf = [0; INFO_BLOCK_SIZE_LEN];
    let mut w = Wr::new(&mut buf);
    w.u16(info::BLOCK_SIZE);
    w.u32(min);
    w.u32(pref);
    w.u32(max);
    buf
}

/// The server's answer to `NBD_OPT_EXPORT_NAME`; unless both sides agreed
/// on [`hflag::NO_ZEROES`], [`EXPORT_NAME_ZEROES`] zero bytes follow it.
pub fn encode_export_name_reply(size: u64, tflags: u16) -> [u8; EXPORT_NAME_REPLY_LEN] {
    let mut buf = [0; EXPORT_NAME_REPLY_LEN];
    let mut w = Wr::new(&mut buf);
    w.u64(size);
    w.u16(tflags);
    buf
}

/// The data of an `NBD_OPT_INFO` or `NBD_OPT_GO` request, parsed (server
/// side).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GoRequest<'a> {
    /// The export name (not checked for UTF-8 or NULs).
    pub name: &'a [u8],
    /// The information requests, two bytes each.
    requests: &'a [u8],
}

impl<'a> GoRequest<'a> {
    /// Parses option data: name length (u32), name, request count (u16),
    /// requests (u16 each), and nothing else.
    pub fn parse(data: &'a [u8]) -> Result<Self, &'static str> {
        const SHORT: &str = "NBD_OPT_GO data is truncated";
        let (len, rest) = data.split_first_chunk::<4>().ok_or(SHORT)?;
        let len = usize::try_from(u32::from_be_bytes(*len)).map_err(|_| SHORT)?;
        if len > MAX_NAME_LEN {
            return Err("export name is longer than 4096 bytes");
        }
        let name = rest.get(..len).ok_or(SHORT)?;
        let rest = rest.get(len..).ok_or(SHORT)?;
        let (count, requests) = rest.split_first_chunk::<2>().ok_or(SHORT)?;
        let count = usize::from(u16::from_be_bytes(*count));
        if requests.len() != count.saturating_mul(2) {
            return Err("NBD_OPT_GO request count does not match its length");
        }
        Ok(GoRequest { name, requests })
    }

    /// The information types requested ([`info`]).
    pub fn info_requests(&self) -> impl Iterator<Item = u16> + 'a {
        self.requests.chunks_exact(2).map(|c| {
            u16::from_be_bytes([
                c.first().copied().unwrap_or(0),
                c.last().copied().unwrap_or(0),
            ])
        })
    }

    /// Whether information type `kind` was requested.
    pub fn wants(&self, kind: u16) -> bool {
        self.info_requests().any(|k| k == kind)
    }
}

/// What the server told us about the export, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportInfo {
    /// Export size in bytes: nonzero, at most [`MAX_EXPORT_SIZE`]
    /// (`i64::MAX`).  The spec says it SHOULD be a multiple of `min_block`,
    /// but does not require it; a client that uses whole blocks ignores a
    /// partial last block.
    pub size: u64,
    /// Transmission flags ([`tflag`]); [`tflag::HAS_FLAGS`] is set.
    pub flags: u16,
    /// Minimum block size: a power of two from 1 to 64 KiB.  Every request's
    /// offset and length must be a multiple of it.  [`DEFAULT_MIN_BLOCK`]
    /// if the server advertised no constraints.
    pub min_block: u32,
    /// Preferred block size: a power of two, at least `min_block` (and at
    /// least 512 if advertised).  [`DEFAULT_PREF_BLOCK`] if not advertised.
    /// It may exceed `max_block` (the spec lets it exceed the export size).
    pub pref_block: u32,
    /// Maximum length of a read or write: a multiple of `min_block`, at
    /// most [`DEFAULT_MAX_BLOCK`] (32 MiB), which is also the value when the
    /// server advertised none or "no limit".  It may exceed `size`; requests
    /// must still stay inside the export.
    pub max_block: u32,
}

impl ExportInfo {
    /// Validates what a server sent: the size and transmission flags, and
    /// the `[minimum, preferred, maximum]` block sizes of an
    /// `NBD_INFO_BLOCK_SIZE` reply if there was one.
    ///
    /// Enforced: `HAS_FLAGS` set; size nonzero and at most [`MAX_EXPORT_SIZE`];
    /// minimum a power of two ≤ 64 KiB; preferred a power of two ≥
    /// max(minimum, 512); maximum either `0xffffffff` (no limit) or a
    /// nonzero multiple of the minimum that is at least min(preferred,
    /// size).  The maximum is then capped at [`DEFAULT_MAX_BLOCK`].
    pub fn new(size: u64, flags: u16, block: Option<[u32; 3]>) -> Result<Self, &'static str> {
        if flags & tflag::HAS_FLAGS == 0 {
            return Err("transmission flags lack NBD_FLAG_HAS_FLAGS");
        }
        if size == 0 {
            return Err("the export is empty");
        }
        if size > MAX_EXPORT_SIZE {
            return Err("the export size is too large");
        }
        let (min_block, pref_block, max_block) = match block {
            None => (DEFAULT_MIN_BLOCK, DEFAULT_PREF_BLOCK, DEFAULT_MAX_BLOCK),
            Some([min, pref, max]) => {
                if !min.is_power_of_two() || min > MAX_MIN_BLOCK {
                    return Err("minimum block size is not a power of two up to 64 KiB");
                }
                if !pref.is_power_of_two() || pref < min.max(MIN_PREF_BLOCK) {
                    return Err(
                        "preferred block size is not a power of two >= 512 and >= the minimum",
                    );
                }
                let max = if max == NO_MAX_BLOCK {
                    DEFAULT_MAX_BLOCK
                } else {
                    if max == 0 || max.checked_rem(min) != Some(0) {
                        return Err("maximum block size is not a multiple of the minimum");
                    }
                    if u64::from(max) < u64::from(pref).min(size) {
                        return Err("maximum block size is below the preferred block size");
                    }
                    max.min(DEFAULT_MAX_BLOCK)
                };
                (min, pref, max)
            }
        };
        Ok(ExportInfo {
            size,
            flags,
            min_block,
            pref_block,
            max_block,
        })
    }
}

/// Blocking byte transport for the handshake (the kernel implements it over
/// a socket with timeouts).
pub trait Transport {
    /// What a failed transfer reports.
    type Error;
    /// Sends all of `buf`.
    fn send_all(&mut self, buf: &[u8]) -> Result<(), Self::Error>;
    /// Fills all of `buf`, or fails (end of stream is an error).
    fn recv_exact(&mut self, buf: &mut [u8]) -> Result<(), Self::Error>;
}

/// Why [`client_handshake`] failed.  In every case the connection is
/// unusable and should be closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeError<E> {
    /// The transport failed (including the server closing the connection,
    /// which is how a server rejects `NBD_OPT_EXPORT_NAME`).
    Io(E),
    /// The greeting or an option reply has the wrong magic: not an NBD
    /// server, or a broken one.
    BadMagic,
    /// The server lacks fixed newstyle (oldstyle or plain newstyle).
    NotFixedNewstyle,
    /// The server answered an option with an error reply ([`rep`]`::ERR_*`).
    Refused {
        /// The reply type.
        reply: u32,
    },
    /// The server broke the protocol, or sent something dst cannot use.
    Protocol(&'static str),
    /// The export name is longer than [`MAX_NAME_LEN`] bytes.
    NameTooLong,
}

impl<E> HandshakeError<E> {
    /// What went wrong, in words for users (without the transport's error).
    pub fn what(&self) -> &'static str {
        match self {
            HandshakeError::Io(_) => "connection failed during the NBD handshake",
            HandshakeError::BadMagic => "not an NBD server (bad magic number)",
            HandshakeError::NotFixedNewstyle => {
                "the NBD server does not support the fixed newstyle handshake"
            }
            HandshakeError::Refused { reply } => rep::describe(*reply),
            HandshakeError::Protocol(what) => what,
            HandshakeError::NameTooLong => "the export name is longer than 4096 bytes",
        }
    }
}

impl<E: fmt::Display> fmt::Display for HandshakeError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandshakeError::Io(e) => write!(f, "{}: {}", self.what(), e),
            HandshakeError::Refused { reply } => {
                write!(f, "{} ({})", rep::describe(*reply), rep::name(*reply))
            }
            HandshakeError::Protocol(what) => write!(f, "NBD protocol error: {}", what),
            _ => f.write_str(self.what()),
        }
    }
}

type HResult<T, E> = Result<T, HandshakeError<E>>;

/// The client's end of a handshake in progress: counts what it reads and
/// coalesces small sends.
struct Client<'t, T: Transport> {
    t: &'t mut T,
    read: usize,
    out: [u8; 256],
    out_len: usize,
}

impl<T: Transport> Client<'_, T> {
    /// Reads exactly `buf.len()` bytes, within the handshake's read budget.
    fn recv(&mut self, buf: &mut [u8]) -> HResult<(), T::Error> {
        self.flush()?;
        let total = self
            .read
            .checked_add(buf.len())
            .filter(|&n| n <= MAX_HANDSHAKE_READ)
            .ok_or(HandshakeError::Protocol("the handshake is too long"))?;
        self.t.recv_exact(buf).map_err(HandshakeError::Io)?;
        self.read = total;
        Ok(())
    }

    fn recv_array<const N: usize>(&mut self) -> HResult<[u8; N], T::Error> {
        let mut buf = [0; N];
        self.recv(&mut buf)?;
        Ok(buf)
    }

    /// Reads and discards `n` bytes (bounded by the read budget).
    fn skip(&mut self, mut n: usize) -> HResult<(), T::Error> {
        let mut scratch = [0u8; 256];
        while n > 0 {
            let k = n.min(scratch.len());
            let chunk = scratch
                .get_mut(..k)
                .ok_or(HandshakeError::Protocol("internal error"))?;
            self.recv(chunk)?;
            n = n.saturating_sub(k);
        }
        Ok(())
    }

    /// Queues `bytes` for sending; they go out before the next read.
    fn send(&mut self, bytes: &[u8]) -> HResult<(), T::Error> {
        // Copies by zipping: `copy_from_slice` keeps a length check that
        // panics, which the kernel build would have to carry.
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
        self.t.send_all(bytes).map_err(HandshakeError::Io)
    }

    fn flush(&mut self) -> HResult<(), T::Error> {
        if self.out_len > 0 {
            let pending = self.out.get(..self.out_len).unwrap_or(&[]);
            self.t.send_all(pending).map_err(HandshakeError::Io)?;
            self.out_len = 0;
        }
        Ok(())
    }
}

/// How the server answered `NBD_OPT_GO`.
enum GoOutcome {
    Ready(ExportInfo),
    Unsupported,
}

/// Runs the client side of the fixed newstyle handshake for `export`
/// (bytes, no NUL), and returns what the server said about the export.  On
/// success the transmission phase has started, with simple replies.
///
/// The client sends `NBD_OPT_GO` asking for `NBD_INFO_BLOCK_SIZE`; if the
/// server does not know `NBD_OPT_GO` (`NBD_REP_ERR_UNSUP`), it falls back to
/// `NBD_OPT_EXPORT_NAME` on the same connection (and default block sizes).
/// What the server says is checked by [`ExportInfo::new`].
///
/// Bounds: an option reply longer than [`MAX_OPT_REPLY_LEN`] is refused
/// unread, info replies whose type dst knows must have exactly their
/// defined length, at most [`MAX_OPT_REPLIES`] replies are read, and at most
/// [`MAX_HANDSHAKE_READ`] bytes in total.  The transport's timeouts bound
/// the time.
///
/// Sends are coalesced: the client flags and the whole `NBD_OPT_GO` go out
/// in one `send_all` for names up to 228 bytes.  A kernel transport
/// should still set `TCP_NODELAY`.
pub fn client_handshake<T: Transport>(
    t: &mut T,
    export: &[u8],
) -> Result<ExportInfo, HandshakeError<T::Error>> {
    if export.len() > MAX_NAME_LEN {
        return Err(HandshakeError::NameTooLong);
    }
    let name_len = u32::try_from(export.len()).map_err(|_| HandshakeError::NameTooLong)?;
    if export.contains(&0) {
        return Err(HandshakeError::Protocol(
            "the export name contains a NUL byte",
        ));
    }
    let mut c = Client {
        t,
        read: 0,
        out: [0; 256],
        out_len: 0,
    };

    // Greeting: the magics first, so a non-NBD peer is recognised early.
    let magics: [u8; 16] = c.recv_array()?;
    let mut r = Rd(&magics);
    if r.u64() != NBDMAGIC {
        return Err(HandshakeError::BadMagic);
    }
    match r.u64() {
        IHAVEOPT => {}
        OLDSTYLE_MAGIC => return Err(HandshakeError::NotFixedNewstyle),
        _ => return Err(HandshakeError::BadMagic),
    }
    let hflags = u16::from_be_bytes(c.recv_array()?);
    if hflags & hflag::FIXED_NEWSTYLE == 0 {
        return Err(HandshakeError::NotFixedNewstyle);
    }
    let no_zeroes = hflags & hflag::NO_ZEROES != 0;
    let mut cflags = cflag::FIXED_NEWSTYLE;
    if no_zeroes {
        cflags |= cflag::NO_ZEROES;
    }
    c.send(&cflags.to_be_bytes())?;

    // NBD_OPT_GO: name length, name, one information request.
    let go = OptionHeader {
        option: opt::GO,
        length: name_len.saturating_add(8),
    };
    c.send(&go.encode())?;
    c.send(&name_len.to_be_bytes())?;
    c.send(export)?;
    c.send(&1u16.to_be_bytes())?;
    c.send(&info::BLOCK_SIZE.to_be_bytes())?;

    match go_replies(&mut c)? {
        GoOutcome::Ready(info) => Ok(info),
        GoOutcome::Unsupported => {
            // An old server: NBD_OPT_EXPORT_NAME cannot fail politely; the
            // server closes the connection if it does not like the name.
            let hdr = OptionHeader {
                option: opt::EXPORT_NAME,
                length: name_len,
            };
            c.send(&hdr.encode())?;
            c.send(export)?;
            let reply: [u8; EXPORT_NAME_REPLY_LEN] = c.recv_array()?;
            let mut r = Rd(&reply);
            let (size, flags) = (r.u64(), r.u16());
            if !no_zeroes {
                c.skip(EXPORT_NAME_ZEROES)?;
            }
            ExportInfo::new(size, flags, None).map_err(HandshakeError::Protocol)
        }
    }
}

/// Reads the replies to `NBD_OPT_GO`, up to the final one.
fn go_replies<T: Transport>(c: &mut Client<'_, T>) -> HResult<GoOutcome, T::Error> {
    let mut export: Option<(u64, u16)> = None;
    let mut block: Option<[u32; 3]> = None;
    for _ in 0..MAX_OPT_REPLIES {
        let hdr =
            OptionReplyHeader::decode(&c.recv_array()?).map_err(|_| HandshakeError::BadMagic)?;
        if hdr.option != opt::GO {
            return Err(HandshakeError::Protocol(
                "the server answered an option that was not sent",
            ));
        }
        let len = usize::try_from(hdr.length)
            .ok()
            .filter(|_| hdr.length <= MAX_OPT_REPLY_LEN)
            .ok_or(HandshakeError::Protocol("option reply is too long"))?;
        match hdr.reply {
            rep::ACK => {
                if len != 0 {
                    return Err(HandshakeError::Protocol("NBD_REP_ACK carries data"));
                }
                let (size, flags) = export.ok_or(HandshakeError::Protocol(
                    "the server accepted NBD_OPT_GO without sending NBD_INFO_EXPORT",
                ))?;
                return ExportInfo::new(size, flags, block)
                    .map(GoOutcome::Ready)
                    .map_err(HandshakeError::Protocol);
            }
            rep::INFO => {
                let rest = len.checked_sub(2).ok_or(HandshakeError::Protocol(
                    "NBD_REP_INFO is too short for its type",
                ))?;
                let kind = u16::from_be_bytes(c.recv_array()?);
                match kind {
                    info::EXPORT => {
                        if len != INFO_EXPORT_LEN {
                            return Err(HandshakeError::Protocol(
                                "NBD_INFO_EXPORT has the wrong length",
                            ));
                        }
                        let data: [u8; INFO_EXPORT_LEN - 2] = c.recv_array()?;
                        let mut r = Rd(&data);
                        export = Some((r.u64(), r.u16()));
                    }
                    info::BLOCK_SIZE => {
                        if len != INFO_BLOCK_SIZE_LEN {
                            return Err(HandshakeError::Protocol(
                                "NBD_INFO_BLOCK_SIZE has the wrong length",
                            ));
                        }
                        let data: [u8; INFO_BLOCK_SIZE_LEN - 2] = c.recv_array()?;
                        let mut r = Rd(&data);
                        block = Some([r.u32(), r.u32(), r.u32()]);
                    }
                    // Names, descriptions and unknown types: not needed.
                    _ => c.skip(rest)?,
                }
            }
            t if rep::is_error(t) => {
                // The data is a message for humans; dst does not show it.
                c.skip(len)?;
                if t == rep::ERR_UNSUP {
                    return Ok(GoOutcome::Unsupported);
                }
                return Err(HandshakeError::Refused { reply: t });
            }
            _ => {
                return Err(HandshakeError::Protocol(
                    "unexpected option reply type to NBD_OPT_GO",
                ))
            }
        }
    }
    Err(HandshakeError::Protocol(
        "too many option replies to NBD_OPT_GO",
    ))
}

/// An `nbd://HOST[:PORT][/EXPORT][?QUERY]` URI split into parts (no DNS:
/// the host is returned as text).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NbdUri<'a> {
    /// Host name, IPv4 address, or IPv6 address (without its brackets).
    pub host: &'a str,
    /// TCP port; [`DEFAULT_PORT`] if the URI gives none.
    pub port: u16,
    /// Export name, taken literally (no percent-decoding); may be empty.
    pub export: &'a str,
    /// The text after `?`, for dstctl's options; empty if none.
    pub query: &'a str,
}

/// Splits an `nbd://` URI.  IPv6 addresses go in brackets
/// (`nbd://[::1]:10809/name`).  The export is everything after the first
/// `/` up to `?`, may be empty, and may not contain `%` (percent-escapes
/// are not supported).  The scheme is matched without regard to case.
/// Errors are sentences for users.
pub fn parse_uri(s: &str) -> Result<NbdUri<'_>, &'static str> {
    const SCHEME: &str = "nbd://";
    let has_prefix = |p: &str| s.get(..p.len()).is_some_and(|h| h.eq_ignore_ascii_case(p));
    if !has_prefix(SCHEME) {
        return Err(if has_prefix("nbds") {
            "nbds:// (NBD over TLS) is not supported"
        } else if has_prefix("nbd+") {
            "only nbd:// URIs over TCP are supported"
        } else {
            "not an NBD URI: expected nbd://HOST[:PORT][/EXPORT]"
        });
    }
    let rest = s.get(SCHEME.len()..).unwrap_or("");
    if rest.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return Err("the URI contains spaces or control characters");
    }
    if rest.contains('#') {
        return Err("'#' is not allowed in an NBD URI");
    }
    let (main, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (authority, export) = main.split_once('/').unwrap_or((main, ""));
    if export.contains('%') {
        return Err("percent-escapes ('%') in the export name are not supported");
    }
    if export.len() > MAX_NAME_LEN {
        return Err("the export name is longer than 4096 bytes");
    }
    if authority.contains('@') {
        return Err("user names (user@host) are not supported in NBD URIs");
    }

    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let (host, tail) = bracketed
            .split_once(']')
            .ok_or("missing ']' after the IPv6 address")?;
        if host.parse::<core::net::Ipv6Addr>().is_err() {
            return Err("bad IPv6 address between '[' and ']'");
        }
        let port = if tail.is_empty() {
            None
        } else {
            Some(
                tail.strip_prefix(':')
                    .ok_or("unexpected text after ']': expected ':PORT' or '/EXPORT'")?,
            )
        };
        (host, port)
    } else {
        let (host, port) = match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        };
        if port.is_some_and(|p| p.contains(':')) {
            return Err("IPv6 addresses must be in brackets, e.g. nbd://[::1]:10809/export");
        }
        if host.is_empty() {
            return Err("missing host: expected nbd://HOST[:PORT][/EXPORT]");
        }
        if host.len() > 253 {
            return Err("the host name is too long");
        }
        if !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
        {
            return Err("the host name may only hold letters, digits, '-', '.' and '_'");
        }
        (host, port)
    };

    let port = match port {
        None => DEFAULT_PORT,
        Some("") => return Err("missing port number after ':'"),
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n != 0 && p.bytes().all(|b| b.is_ascii_digit()) => n,
            _ => return Err("the port must be a number from 1 to 65535"),
        },
    };
    Ok(NbdUri {
        host,
        port,
        export,
        query,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn structured_reply_chunks() {
        // The error, the read, and the bytes on the wire.
        type Case<'a> = (u32, Option<(u64, u32)>, &'a [u8]);
        let cases: [Case<'_>; 3] = [
            // A read: OFFSET_DATA, 8 + 4096 bytes of payload, the offset.
            (
                0,
                Some((0x1000, 4096)),
                &[
                    0x66, 0x8e, 0x33, 0xef, // magic
                    0x00, 0x01, // flags: DONE
                    0x00, 0x01, // type: OFFSET_DATA
                    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x09, // cookie
                    0x00, 0x00, 0x10, 0x08, // length
                    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x10, 0x00, // offset
                ],
            ),
            // Anything else: NONE.
            (
                0,
                None,
                &[
                    0x66, 0x8e, 0x33, 0xef, // magic
                    0x00, 0x01, // flags: DONE
                    0x00, 0x00, // type: NONE
                    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x09, // cookie
                    0x00, 0x00, 0x00, 0x00, // length
                ],
            ),
            // An error replaces the data, read or not: ERROR, EIO, no message.
            (
                err::EIO,
                Some((0, 512)),
                &[
                    0x66, 0x8e, 0x33, 0xef, // magic
                    0x00, 0x01, // flags: DONE
                    0x80, 0x01, // type: ERROR
                    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x09, // cookie
                    0x00, 0x00, 0x00, 0x06, // length
                    0x00, 0x00, 0x00, 0x05, // error: EIO
                    0x00, 0x00, // message length
                ],
            ),
        ];
        for (error, read, want) in cases {
            let mut buf = [0; StructuredReply::MAX_SIZE];
            let n = StructuredReply {
                error,
                cookie: 9,
                read,
            }
            .encode(&mut buf);
            assert_eq!(buf[..n], want[..], "error {error} read {read:?}");
        }
    }

    // ---- A scripted server, from the client's point of view. ----

    /// A transport reading from a fixed byte stream and recording what is
    /// sent.  Running out of input is an error, like a closed socket.
    struct Script {
        input: Vec<u8>,
        pos: usize,
        sent: Vec<u8>,
    }

    impl Script {
        fn new(input: Vec<u8>) -> Self {
            Script {
                input,
                pos: 0,
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

    fn opt_reply(option: u32, reply: u32, data: &[u8]) -> Vec<u8> {
        let mut v = OptionReplyHeader {
            option,
            reply,
            length: data.len() as u32,
        }
        .encode()
        .to_vec();
        v.extend_from_slice(data);
        v
    }

    const SIZE: u64 = 64 << 20;
    const FLAGS: u16 = tflag::HAS_FLAGS | tflag::SEND_FLUSH | tflag::SEND_FUA;

    /// A good server answering GO with block sizes, a name, an unknown info
    /// type and the export info.
    fn good_go_server(hflags: u16, block: [u32; 3]) -> Vec<u8> {
        let mut s = encode_greeting(hflags).to_vec();
        let [min, pref, max] = block;
        s.extend(opt_reply(
            opt::GO,
            rep::INFO,
            &encode_info_block_size(min, pref, max),
        ));
        let mut name = info::NAME.to_be_bytes().to_vec();
        name.extend_from_slice(b"disk");
        s.extend(opt_reply(opt::GO, rep::INFO, &name));
        s.extend(opt_reply(opt::GO, rep::INFO, &[0x12, 0x34, 1, 2, 3]));
        s.extend(opt_reply(
            opt::GO,
            rep::INFO,
            &encode_info_export(SIZE, FLAGS),
        ));
        s.extend(opt_reply(opt::GO, rep::ACK, &[]));
        s
    }

    /// An old server: GO unsupported, then EXPORT_NAME.
    fn unsup_server(hflags: u16) -> Vec<u8> {
        let mut s = encode_greeting(hflags).to_vec();
        s.extend(opt_reply(opt::GO, rep::ERR_UNSUP, b"what is GO?"));
        s.extend_from_slice(&encode_export_name_reply(SIZE, FLAGS));
        if hflags & hflag::NO_ZEROES == 0 {
            s.extend_from_slice(&[0; EXPORT_NAME_ZEROES]);
        }
        s
    }

    fn handshake(
        input: Vec<u8>,
        export: &[u8],
    ) -> (Result<ExportInfo, HandshakeError<&'static str>>, Script) {
        let mut t = Script::new(input);
        let r = client_handshake(&mut t, export);
        (r, t)
    }

    fn expected_go(cflags: u32, export: &[u8]) -> Vec<u8> {
        let mut v = cflags.to_be_bytes().to_vec();
        v.extend(
            OptionHeader {
                option: opt::GO,
                length: export.len() as u32 + 8,
            }
            .encode(),
        );
        v.extend((export.len() as u32).to_be_bytes());
        v.extend_from_slice(export);
        v.extend([0, 1, 0, 3]);
        v
    }

    #[test]
    fn request_round_trip() {
        let r = Request {
            flags: cmdflag::FUA,
            kind: cmd::WRITE,
            cookie: 0x0102_0304_0506_0708,
            offset: 0x1122_3344_5566_7788,
            length: 0x99aa_bbcc,
        };
        let b = r.encode();
        assert_eq!(
            b,
            [
                0x25, 0x60, 0x95, 0x13, 0, 1, 0, 1, 1, 2, 3, 4, 5, 6, 7, 8, 0x11, 0x22, 0x33, 0x44,
                0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc
            ]
        );
        assert_eq!(Request::decode(&b), Ok(r));
        assert!(r.has_payload());
        assert_eq!(r.end(), Some(0x1122_3344_5566_7788 + 0x99aa_bbcc));
        let mut bad = b;
        bad[3] ^= 1;
        assert_eq!(Request::decode(&bad), Err(WireError::BadMagic));
        let far = Request {
            offset: u64::MAX,
            length: 1,
            ..r
        };
        assert_eq!(far.end(), None);
    }

    #[test]
    fn simple_reply_round_trip() {
        let r = SimpleReply {
            error: err::EIO,
            cookie: 0xdead_beef_0bad_f00d,
        };
        let b = r.encode();
        assert_eq!(&b[..8], &[0x67, 0x44, 0x66, 0x98, 0, 0, 0, 5]);
        assert_eq!(SimpleReply::decode(&b), Ok(r));
        let mut s = b;
        s[..4].copy_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
        assert_eq!(SimpleReply::decode(&s), Err(WireError::Structured));
        s[..4].copy_from_slice(&EXTENDED_REPLY_MAGIC.to_be_bytes());
        assert_eq!(SimpleReply::decode(&s), Err(WireError::BadMagic));
        s[..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        assert_eq!(SimpleReply::decode(&s), Err(WireError::BadMagic));
    }

    #[test]
    fn option_headers_round_trip() {
        let h = OptionHeader {
            option: opt::GO,
            length: 12,
        };
        assert_eq!(&h.encode()[..8], b"IHAVEOPT");
        assert_eq!(OptionHeader::decode(&h.encode()), Ok(h));
        let r = OptionReplyHeader {
            option: opt::GO,
            reply: rep::ERR_UNKNOWN,
            length: 3,
        };
        assert_eq!(OptionReplyHeader::decode(&r.encode()), Ok(r));
        let mut bad = r.encode();
        bad[7] ^= 1;
        assert_eq!(OptionReplyHeader::decode(&bad), Err(WireError::BadMagic));
        assert_eq!(&encode_greeting(3)[..], b"NBDMAGICIHAVEOPT\0\x03");
    }

    #[test]
    fn constants_match_the_spec() {
        assert_eq!(NBDMAGIC.to_be_bytes(), *b"NBDMAGIC");
        assert_eq!(IHAVEOPT.to_be_bytes(), *b"IHAVEOPT");
        assert_eq!(OPT_REPLY_MAGIC, 0x3e889045565a9);
        assert_eq!(OLDSTYLE_MAGIC, 0x00420281861253);
        assert_eq!(rep::ERR_TOO_BIG, (1 << 31) + 9);
        assert!(rep::is_error(rep::ERR_UNSUP) && !rep::is_error(rep::INFO));
        assert_eq!(err::normalize(0), 0);
        assert_eq!(err::normalize(err::ENOSPC), err::ENOSPC);
        assert_eq!(err::normalize(1234), err::EINVAL);
    }

    #[test]
    fn go_request_parse() {
        let mut d = 4u32.to_be_bytes().to_vec();
        d.extend_from_slice(b"disk");
        d.extend([0, 2, 0, 3, 0, 1]);
        let g = GoRequest::parse(&d).unwrap();
        assert_eq!(g.name, b"disk");
        assert_eq!(g.info_requests().collect::<Vec<_>>(), [3, 1]);
        assert!(g.wants(info::BLOCK_SIZE) && !g.wants(info::DESCRIPTION));
        assert!(GoRequest::parse(&d[..d.len() - 1]).is_err());
        d.push(0);
        assert!(GoRequest::parse(&d).is_err());
        assert!(GoRequest::parse(&[0xff, 0xff, 0xff, 0xff, 0, 0]).is_err());
        assert!(GoRequest::parse(&[0, 0, 0, 0, 0, 0])
            .unwrap()
            .name
            .is_empty());
    }

    #[test]
    fn go_with_block_sizes() {
        let (r, t) = handshake(
            good_go_server(
                hflag::FIXED_NEWSTYLE | hflag::NO_ZEROES,
                [512, 4096, 1 << 20],
            ),
            b"disk",
        );
        assert_eq!(
            r,
            Ok(ExportInfo {
                size: SIZE,
                flags: FLAGS,
                min_block: 512,
                pref_block: 4096,
                max_block: 1 << 20,
            })
        );
        assert_eq!(
            t.sent,
            expected_go(cflag::FIXED_NEWSTYLE | cflag::NO_ZEROES, b"disk")
        );
        assert_eq!(t.pos, t.input.len());
    }

    #[test]
    fn go_without_no_zeroes_and_unlimited_max() {
        let (r, t) = handshake(
            good_go_server(hflag::FIXED_NEWSTYLE, [1, 4096, u32::MAX]),
            b"",
        );
        let info = r.unwrap();
        assert_eq!(
            (info.min_block, info.pref_block, info.max_block),
            (1, 4096, DEFAULT_MAX_BLOCK)
        );
        assert_eq!(t.sent, expected_go(cflag::FIXED_NEWSTYLE, b""));
    }

    #[test]
    fn go_without_block_size_info_uses_defaults() {
        let mut s = encode_greeting(hflag::FIXED_NEWSTYLE).to_vec();
        s.extend(opt_reply(
            opt::GO,
            rep::INFO,
            &encode_info_export(SIZE, FLAGS),
        ));
        s.extend(opt_reply(opt::GO, rep::ACK, &[]));
        let info = handshake(s, b"x").0.unwrap();
        assert_eq!(
            (info.min_block, info.pref_block, info.max_block),
            (DEFAULT_MIN_BLOCK, DEFAULT_PREF_BLOCK, DEFAULT_MAX_BLOCK)
        );
    }

    #[test]
    fn go_unsupported_falls_back_to_export_name() {
        for hflags in [
            hflag::FIXED_NEWSTYLE,
            hflag::FIXED_NEWSTYLE | hflag::NO_ZEROES,
        ] {
            let (r, t) = handshake(unsup_server(hflags), b"disk");
            let info = r.unwrap();
            assert_eq!((info.size, info.flags, info.min_block), (SIZE, FLAGS, 1));
            let cflags = cflag::FIXED_NEWSTYLE | u32::from(hflags & hflag::NO_ZEROES);
            let mut want = expected_go(cflags, b"disk");
            want.extend(
                OptionHeader {
                    option: opt::EXPORT_NAME,
                    length: 4,
                }
                .encode(),
            );
            want.extend_from_slice(b"disk");
            assert_eq!(t.sent, want);
            assert_eq!(t.pos, t.input.len(), "the zeroes were read");
        }
        // Without the zeroes the server has not finished: a closed
        // connection is an I/O error.
        let mut s = unsup_server(hflag::FIXED_NEWSTYLE);
        s.truncate(s.len() - 1);
        assert_eq!(handshake(s, b"disk").0, Err(HandshakeError::Io("eof")));
    }

    #[test]
    fn refusals() {
        for e in [
            rep::ERR_UNKNOWN,
            rep::ERR_POLICY,
            rep::ERR_TLS_REQD,
            rep::ERR_BIT | 77,
        ] {
            let mut s = encode_greeting(hflag::FIXED_NEWSTYLE).to_vec();
            s.extend(opt_reply(opt::GO, e, b"no such export"));
            assert_eq!(
                handshake(s, b"x").0,
                Err(HandshakeError::Refused { reply: e })
            );
        }
    }

    #[test]
    fn greeting_errors() {
        let mut s = encode_greeting(hflag::FIXED_NEWSTYLE).to_vec();
        s[0] = b'X';
        assert_eq!(handshake(s, b"").0, Err(HandshakeError::BadMagic));
        let mut s = encode_greeting(hflag::FIXED_NEWSTYLE).to_vec();
        s[15] = b'X';
        assert_eq!(handshake(s, b"").0, Err(HandshakeError::BadMagic));
        let (r, t) = handshake(encode_greeting(0).to_vec(), b"");
        assert_eq!(r, Err(HandshakeError::NotFixedNewstyle));
        assert!(
            t.sent.is_empty(),
            "nothing is sent to a plain newstyle server"
        );
        let mut old = NBDMAGIC.to_be_bytes().to_vec();
        old.extend(OLDSTYLE_MAGIC.to_be_bytes());
        old.extend(SIZE.to_be_bytes());
        old.extend([0, 0, 0, 1]);
        old.extend([0; 124]);
        assert_eq!(handshake(old, b"").0, Err(HandshakeError::NotFixedNewstyle));
        assert_eq!(handshake(vec![], b"").0, Err(HandshakeError::Io("eof")));
    }

    #[test]
    fn name_checks() {
        let long = vec![b'a'; MAX_NAME_LEN + 1];
        let (r, t) = handshake(good_go_server(1, [1, 4096, u32::MAX]), &long);
        assert_eq!(r, Err(HandshakeError::NameTooLong));
        assert!(t.sent.is_empty() && t.pos == 0);
        let max = vec![b'a'; MAX_NAME_LEN];
        let (r, t) = handshake(good_go_server(1, [1, 4096, u32::MAX]), &max);
        assert!(r.is_ok());
        assert_eq!(t.sent, expected_go(cflag::FIXED_NEWSTYLE, &max));
        assert!(matches!(
            handshake(vec![], b"a\0b").0,
            Err(HandshakeError::Protocol(_))
        ));
    }

    fn protocol_error(s: Vec<u8>) -> &'static str {
        match handshake(s, b"").0 {
            Err(HandshakeError::Protocol(m)) => m,
            other => panic!("expected a protocol error, got {other:?}"),
        }
    }

    fn go_server(replies: &[Vec<u8>]) -> Vec<u8> {
        let mut s = encode_greeting(hflag::FIXED_NEWSTYLE).to_vec();
        for r in replies {
            s.extend_from_slice(r);
        }
        s
    }

    #[test]
    fn malformed_go_replies() {
        let export = opt_reply(opt::GO, rep::INFO, &encode_info_export(SIZE, FLAGS));
        let ack = opt_reply(opt::GO, rep::ACK, &[]);
        // No NBD_INFO_EXPORT before the ACK.
        protocol_error(go_server(std::slice::from_ref(&ack)));
        // ACK with data.
        protocol_error(go_server(&[
            export.clone(),
            opt_reply(opt::GO, rep::ACK, &[0]),
        ]));
        // Reply to another option.
        protocol_error(go_server(&[opt_reply(opt::INFO, rep::ACK, &[])]));
        // Reply types that GO does not have.
        protocol_error(go_server(&[opt_reply(opt::GO, rep::SERVER, &[0, 0, 0, 0])]));
        // Info shorter than its type.
        protocol_error(go_server(&[opt_reply(opt::GO, rep::INFO, &[0])]));
        // Wrong lengths for known info types.
        let mut long_export = encode_info_export(SIZE, FLAGS).to_vec();
        long_export.push(0);
        protocol_error(go_server(&[opt_reply(opt::GO, rep::INFO, &long_export)]));
        protocol_error(go_server(&[opt_reply(
            opt::GO,
            rep::INFO,
            &encode_info_export(SIZE, FLAGS)[..11],
        )]));
        protocol_error(go_server(&[opt_reply(
            opt::GO,
            rep::INFO,
            &encode_info_block_size(1, 4096, 1 << 20)[..13],
        )]));
        // Huge lengths are refused without reading.
        let mut huge = OptionReplyHeader {
            option: opt::GO,
            reply: rep::INFO,
            length: u32::MAX,
        }
        .encode()
        .to_vec();
        huge.extend([0; 100]);
        let s = go_server(&[huge]);
        let (r, t) = handshake(s, b"");
        assert_eq!(r, Err(HandshakeError::Protocol("option reply is too long")));
        assert_eq!(t.pos, GREETING_SIZE + OptionReplyHeader::SIZE);
        // Bad magic in an option reply.
        let mut bad = export.clone();
        bad[1] ^= 0x40;
        assert_eq!(
            handshake(go_server(&[bad]), b"").0,
            Err(HandshakeError::BadMagic)
        );
        // Empty export, missing HAS_FLAGS.
        protocol_error(go_server(&[
            opt_reply(opt::GO, rep::INFO, &encode_info_export(0, FLAGS)),
            ack.clone(),
        ]));
        protocol_error(go_server(&[
            opt_reply(opt::GO, rep::INFO, &encode_info_export(SIZE, 0)),
            ack.clone(),
        ]));
        protocol_error(go_server(&[
            opt_reply(opt::GO, rep::INFO, &encode_info_export(u64::MAX, FLAGS)),
            ack.clone(),
        ]));
        // The fallback checks the same things.
        let mut s = encode_greeting(hflag::FIXED_NEWSTYLE | hflag::NO_ZEROES).to_vec();
        s.extend(opt_reply(opt::GO, rep::ERR_UNSUP, &[]));
        s.extend_from_slice(&encode_export_name_reply(0, FLAGS));
        protocol_error(s);
    }

    #[test]
    fn block_size_constraints() {
        let ok = |b: [u32; 3]| ExportInfo::new(SIZE, FLAGS, Some(b));
        assert!(ok([1, 512, 1]).is_err());
        assert_eq!(ok([1, 512, 512]).unwrap().max_block, 512);
        assert_eq!(ok([65536, 65536, 65536 * 3]).unwrap().max_block, 65536 * 3);
        assert_eq!(ok([4096, 1 << 30, u32::MAX]).unwrap().pref_block, 1 << 30);
        assert_eq!(
            ok([512, 4096, 64 << 20]).unwrap().max_block,
            DEFAULT_MAX_BLOCK
        );
        // Minimum: a power of two up to 64 KiB.
        assert!(ok([0, 4096, u32::MAX]).is_err());
        assert!(ok([3, 4096, u32::MAX]).is_err());
        assert!(ok([1 << 17, 1 << 17, u32::MAX]).is_err());
        // Preferred: a power of two, at least max(min, 512).
        assert!(ok([1, 256, u32::MAX]).is_err());
        assert!(ok([4096, 2048, u32::MAX]).is_err());
        assert!(ok([1, 3000, u32::MAX]).is_err());
        assert!(ok([1, 0, u32::MAX]).is_err());
        // Maximum: a nonzero multiple of min, at least min(pref, size).
        assert!(ok([512, 4096, 0]).is_err());
        assert!(ok([512, 4096, 4096 + 1]).is_err());
        assert!(ok([512, 4096, 1024]).is_err());
        assert!(ExportInfo::new(1024, FLAGS, Some([512, 4096, 1024])).is_ok());
        assert!(ok([512, 4096, u32::MAX - 1]).is_err());
    }

    #[test]
    fn endless_info_replies_are_bounded() {
        // A server sending unknown info replies forever: the client stops
        // after MAX_OPT_REPLIES.
        let mut s = encode_greeting(hflag::FIXED_NEWSTYLE).to_vec();
        for _ in 0..MAX_OPT_REPLIES + 10 {
            s.extend(opt_reply(opt::GO, rep::INFO, &[0x77, 0x77]));
        }
        assert_eq!(protocol_error(s), "too many option replies to NBD_OPT_GO");
        // Large unknown info replies: the read budget stops it first.
        let mut s = encode_greeting(hflag::FIXED_NEWSTYLE).to_vec();
        let mut big = vec![0u8; MAX_OPT_REPLY_LEN as usize];
        big[0] = 0x77;
        for _ in 0..20 {
            s.extend(opt_reply(opt::GO, rep::INFO, &big));
        }
        let (r, t) = handshake(s, b"");
        assert_eq!(
            r,
            Err(HandshakeError::Protocol("the handshake is too long"))
        );
        assert!(t.pos <= MAX_HANDSHAKE_READ);
    }

    #[test]
    fn error_messages() {
        let e: HandshakeError<&str> = HandshakeError::Refused {
            reply: rep::ERR_UNKNOWN,
        };
        assert_eq!(
            e.to_string(),
            "no such export on the server (NBD_REP_ERR_UNKNOWN)"
        );
        let e: HandshakeError<&str> = HandshakeError::Io("reset");
        assert_eq!(
            e.to_string(),
            "connection failed during the NBD handshake: reset"
        );
        assert_eq!(
            WireError::Structured.to_string(),
            "unexpected structured reply"
        );
        assert_eq!(opt::name(opt::GO), "NBD_OPT_GO");
        assert_eq!(cmd::name(cmd::WRITE_ZEROES), "NBD_CMD_WRITE_ZEROES");
    }

    #[test]
    fn uris() {
        let u = |s| parse_uri(s).unwrap();
        assert_eq!(
            u("nbd://example.com"),
            NbdUri {
                host: "example.com",
                port: DEFAULT_PORT,
                export: "",
                query: ""
            }
        );
        assert_eq!(
            u("nbd://10.0.0.1:1234/disk?timeout=5"),
            NbdUri {
                host: "10.0.0.1",
                port: 1234,
                export: "disk",
                query: "timeout=5"
            }
        );
        assert_eq!(
            u("NBD://[::1]:10809/a/b"),
            NbdUri {
                host: "::1",
                port: 10809,
                export: "a/b",
                query: ""
            }
        );
        assert_eq!(u("nbd://[fe80::1]").host, "fe80::1");
        assert_eq!(u("nbd://h/").export, "");
        assert_eq!(u("nbd://h//x").export, "/x");
        assert_eq!(u("nbd://h?x=1/2").query, "x=1/2");
        assert_eq!(u("nbd://h/?").query, "");
        assert_eq!(u("nbd://h:65535").port, 65535);
        assert_eq!(u("nbd://h/dísk").export, "dísk");
        for bad in [
            "",
            "nbd:/",
            "nbd://",
            "nbd:///disk",
            "nbd://:10809/disk",
            "nbds://h/disk",
            "nbd+unix:///disk?socket=/s",
            "http://h/disk",
            "nbd://h:/disk",
            "nbd://h:0/disk",
            "nbd://h:65536/disk",
            "nbd://h:+80/disk",
            "nbd://h:8x/disk",
            "nbd://::1/disk",
            "nbd://[::1/disk",
            "nbd://[::1]x/disk",
            "nbd://[nope]/disk",
            "nbd://[::1%eth0]/disk",
            "nbd://u@h/disk",
            "nbd://h/d%20isk",
            "nbd://h/disk#frag",
            "nbd://h/d isk",
            "nbd://h/d\0isk",
            "nbd://h\u{e9}/disk",
            "nbd://h!/disk",
        ] {
            assert!(parse_uri(bad).is_err(), "{bad:?} should be refused");
        }
        let long = format!("nbd://h/{}", "x".repeat(MAX_NAME_LEN + 1));
        assert!(parse_uri(&long).is_err());
        let long = format!("nbd://{}/x", "h".repeat(254));
        assert!(parse_uri(&long).is_err());
    }

    // ---- Fuzzing. ----
    //
    // A deterministic PRNG drives random and mutated server streams through
    // `client_handshake`, and random buffers through the decoders and the
    // URI parser.  Nothing may panic, and the handshake may read at most
    // MAX_HANDSHAKE_READ bytes.  To run longer or with another seed (keep
    // overflow checks on, as in the kernel):
    //
    //   NBD_FUZZ_ITERS=10000000 NBD_FUZZ_SEED=7 \
    //   CARGO_PROFILE_RELEASE_OVERFLOW_CHECKS=true \
    //     cargo test --release -p dst-proto nbd::tests::fuzz -- --nocapture

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

        /// Up to `max` random bytes.
        fn bytes(&mut self, max: usize) -> Vec<u8> {
            let n = self.below(max + 1);
            (0..n).map(|_| self.next() as u8).collect()
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

    const INTERESTING: [u32; 14] = [
        0,
        1,
        2,
        3,
        10,
        12,
        14,
        512,
        4096,
        65536,
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
                    let v = INTERESTING[rng.below(INTERESTING.len())];
                    s[at..at + 4].copy_from_slice(&v.to_be_bytes());
                }
                5 => {
                    // Repeat a chunk (e.g. an option reply).
                    let len = rng.below(64).min(s.len() - at);
                    let chunk = s[at..at + len].to_vec();
                    s.splice(
                        at..at,
                        chunk.iter().cycle().take(len * (1 + rng.below(8))).copied(),
                    );
                }
                6 => s.extend(rng.bytes(64)),
                _ => {}
            }
        }
        s
    }

    fn seeds(rng: &mut Rng) -> Vec<Vec<u8>> {
        let block = [1 << rng.below(17), 4096, u32::MAX];
        vec![
            good_go_server(hflag::FIXED_NEWSTYLE | hflag::NO_ZEROES, block),
            good_go_server(hflag::FIXED_NEWSTYLE, [512, 4096, 1 << 20]),
            unsup_server(hflag::FIXED_NEWSTYLE),
            unsup_server(hflag::FIXED_NEWSTYLE | hflag::NO_ZEROES),
            go_server(&[opt_reply(opt::GO, rep::ERR_UNKNOWN, b"nope")]),
        ]
    }

    #[test]
    fn fuzz_handshake() {
        let (mut rng, iters) = fuzz_rng(1);
        let seeds = seeds(&mut rng);
        let mut outcomes = [0usize; 6];
        for i in 0..iters {
            let input = match i % 4 {
                // Pure noise, sometimes behind a valid greeting.
                0 => {
                    let mut s = if rng.below(2) == 0 {
                        encode_greeting(rng.next() as u16 | 1).to_vec()
                    } else {
                        Vec::new()
                    };
                    s.extend(rng.bytes(300));
                    s
                }
                _ => {
                    let s = seeds[rng.below(seeds.len())].clone();
                    mutate(&mut rng, s)
                }
            };
            let mut t = Script::new(input);
            let name_len = rng.below(8);
            let name = vec![b'n'; name_len];
            let r = client_handshake(&mut t, &name);
            assert!(t.pos <= MAX_HANDSHAKE_READ);
            let k = match r {
                Ok(info) => {
                    // Whatever got through satisfies the documented rules.
                    assert!(info.size > 0 && info.size <= i64::MAX as u64);
                    assert!(info.flags & tflag::HAS_FLAGS != 0);
                    assert!(info.min_block.is_power_of_two() && info.min_block <= MAX_MIN_BLOCK);
                    assert!(info.pref_block.is_power_of_two() && info.pref_block >= info.min_block);
                    assert!(
                        info.max_block % info.min_block == 0 && info.max_block <= DEFAULT_MAX_BLOCK
                    );
                    0
                }
                Err(HandshakeError::Io(_)) => 1,
                Err(HandshakeError::BadMagic) => 2,
                Err(HandshakeError::NotFixedNewstyle) => 3,
                Err(HandshakeError::Refused { .. }) => 4,
                Err(HandshakeError::Protocol(_)) | Err(HandshakeError::NameTooLong) => 5,
            };
            outcomes[k] += 1;
        }
        println!("fuzz_handshake: {iters} runs, outcomes (ok, io, magic, newstyle, refused, protocol) = {outcomes:?}");
        if iters >= 10_000 {
            // The mutations must reach every outcome, or the fuzzer is blind.
            assert!(outcomes.iter().all(|&n| n > 0), "{outcomes:?}");
        }
    }

    #[test]
    fn fuzz_decoders() {
        let (mut rng, iters) = fuzz_rng(2);
        for _ in 0..iters {
            let mut req = [0u8; Request::SIZE];
            req.iter_mut().for_each(|b| *b = rng.next() as u8);
            if rng.below(2) == 0 {
                req[..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
            }
            if let Ok(r) = Request::decode(&req) {
                assert_eq!(r.encode(), req);
                let _ = r.end();
            }
            let mut rep = [0u8; SimpleReply::SIZE];
            rep.iter_mut().for_each(|b| *b = rng.next() as u8);
            match rng.below(3) {
                0 => rep[..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes()),
                1 => rep[..4].copy_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes()),
                _ => {}
            }
            if let Ok(r) = SimpleReply::decode(&rep) {
                assert_eq!(r.encode(), rep);
            }
            let mut orh = [0u8; OptionReplyHeader::SIZE];
            orh.iter_mut().for_each(|b| *b = rng.next() as u8);
            let _ = OptionReplyHeader::decode(&orh);
            let mut oh = [0u8; OptionHeader::SIZE];
            oh.iter_mut().for_each(|b| *b = rng.next() as u8);
            let _ = OptionHeader::decode(&oh);
            let mut data = rng.bytes(40);
            let n = data.len();
            if n >= 4 && rng.below(2) == 0 {
                let len = rng.below(n - 3) as u32;
                data[..4].copy_from_slice(&len.to_be_bytes());
            }
            if let Ok(g) = GoRequest::parse(&data) {
                let _ = g.info_requests().count();
            }
            let b = [rng.next() as u32, rng.next() as u32, rng.next() as u32];
            let _ = ExportInfo::new(rng.next(), rng.next() as u16, Some(b));
        }
    }

    #[test]
    fn fuzz_uri() {
        let (mut rng, iters) = fuzz_rng(3);
        const PIECES: [&str; 20] = [
            "nbd://", "NBD://", "nbds://", "[", "]", "::1", ":", "10809", "65536", "/", "?", "%",
            "#", "@", "host", "é", " ", "\0", "0", "x",
        ];
        for _ in 0..iters {
            let mut s = String::new();
            if rng.below(4) != 0 {
                s.push_str("nbd://");
            }
            for _ in 0..rng.below(10) {
                s.push_str(PIECES[rng.below(PIECES.len())]);
            }
            if let Ok(u) = parse_uri(&s) {
                assert!(!u.host.is_empty() && u.port != 0);
                assert!(!u.export.contains('?') && !u.export.contains('%'));
            }
            // Arbitrary (valid UTF-8) bytes too.
            let raw = rng.bytes(24);
            let _ = parse_uri(&String::from_utf8_lossy(&raw));
        }
    }
}
