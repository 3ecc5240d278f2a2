// SPDX-License-Identifier: GPL-2.0

//! Generic netlink transport: the socket, family lookup, one request and its
//! replies, the kernel's (extended) acknowledgements, and multicast
//! notifications.
//!
//! Messages are framed by hand: a 16-byte `nlmsghdr`, a 4-byte `genlmsghdr`,
//! then attributes encoded with [`dst_proto::nlattr`].  The socket itself
//! comes from `netlink-sys`, so this file needs no `unsafe`.

use std::fmt;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};

use dst_proto::nlattr::{self, nla_align, Attrs, Sink, Writer};
use netlink_sys::{protocols::NETLINK_GENERIC, Socket, SocketAddr};

/// Size of `struct nlmsghdr`.
const NLMSG_HDRLEN: usize = 16;
/// Size of `struct genlmsghdr`.
const GENL_HDRLEN: usize = 4;

// Message types (linux/netlink.h).
const NLMSG_NOOP: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLMSG_OVERRUN: u16 = 4;

// Message flags.
const NLM_F_REQUEST: u16 = 0x01;
const NLM_F_ACK: u16 = 0x04;
const NLM_F_DUMP: u16 = 0x300;
/// On `NLMSG_ERROR`: the echoed request was cut to its header.
const NLM_F_CAPPED: u16 = 0x100;
/// On `NLMSG_ERROR` and `NLMSG_DONE`: extended ack attributes follow.
const NLM_F_ACK_TLVS: u16 = 0x200;

// Extended ack attributes (enum nlmsgerr_attrs).
const NLMSGERR_ATTR_MSG: u16 = 1;
const NLMSGERR_ATTR_MISS_TYPE: u16 = 5;

// The generic netlink controller (linux/genetlink.h).
/// The controller's family id, fixed.
pub const GENL_ID_CTRL: u16 = 0x10;
const CTRL_VERSION: u8 = 1;
/// Controller notification: a family was unregistered.
pub const CTRL_CMD_DELFAMILY: u8 = 2;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
/// Controller attribute: a family's name (string).
pub const CTRL_ATTR_FAMILY_NAME: u16 = 2;
const CTRL_ATTR_MCAST_GROUPS: u16 = 7;
const CTRL_ATTR_MCAST_GRP_NAME: u16 = 1;
const CTRL_ATTR_MCAST_GRP_ID: u16 = 2;
/// The controller's multicast group, on which it announces families.
pub const CTRL_MCGRP_NOTIFY: &str = "notify";

/// Initial receive buffer; grown when a datagram is larger.
const RECV_BUF: usize = 64 * 1024;

/// A growable [`Sink`] for the shared attribute encoder.
#[derive(Debug, Default)]
pub struct Buf(pub Vec<u8>);

impl Sink for Buf {
    fn put(&mut self, bytes: &[u8]) -> Result<(), nlattr::Error> {
        self.0.extend_from_slice(bytes);
        Ok(())
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn patch_u16(&mut self, at: usize, v: u16) {
        if let Some(dst) = self.0.get_mut(at..at + 2) {
            dst.copy_from_slice(&v.to_ne_bytes());
        }
    }
}

/// A negative acknowledgement from the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The error number (positive).
    pub errno: i32,
    /// The extended ack message, if the kernel gave one.
    pub message: Option<String>,
    /// The extended ack "missing attribute" type, if the kernel gave one.
    pub missing_attr: Option<u32>,
}

/// Why a request failed.
#[derive(Debug)]
pub enum Error {
    /// The kernel refused the request.
    Refused(Refusal),
    /// The socket failed.
    Io(io::Error),
    /// The kernel's answer (or our request) could not be encoded or decoded.
    Malformed(String),
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Error::Io(e)
    }
}

impl From<nlattr::Error> for Error {
    fn from(e: nlattr::Error) -> Self {
        Error::Malformed(match e {
            nlattr::Error::Truncated => "truncated attribute".into(),
            nlattr::Error::BadValue(id) => format!("attribute {id} has a bad value"),
            nlattr::Error::NoSpace => "attribute too large".into(),
        })
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Refused(r) => {
                match &r.message {
                    Some(m) => f.write_str(m)?,
                    None => f.write_str(&strerror(r.errno))?,
                }
                f.write_str(&errno_suffix(r.errno))?;
                if let (None, Some(a)) = (&r.message, r.missing_attr) {
                    write!(f, ", missing attribute {a}")?;
                }
                Ok(())
            }
            Error::Io(e) => write!(f, "netlink: {}", strip_os_error(&e.to_string())),
            Error::Malformed(m) => write!(f, "unexpected answer from the kernel: {m}"),
        }
    }
}

/// A resolved generic netlink family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Family {
    /// The message type the kernel assigned to the family.
    pub id: u16,
    /// The version to put in our requests.
    pub version: u8,
}

/// A multicast group of a family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct McastGroup {
    /// The name the family gave it.
    pub name: String,
    /// The id to join (`NETLINK_ADD_MEMBERSHIP`).
    pub id: u32,
}

/// The multicast groups listed in the controller's description of a
/// family (`CTRL_ATTR_MCAST_GROUPS`: a nest of nests, each with a name and
/// an id).  A group without both is skipped.
pub fn mcast_groups(attrs: &[u8]) -> Result<Vec<McastGroup>, Error> {
    let mut groups = Vec::new();
    let Some(list) = Attrs::new(attrs).find(CTRL_ATTR_MCAST_GROUPS)? else {
        return Ok(groups);
    };
    for entry in list.nested() {
        let (mut name, mut id) = (None, None);
        for a in entry?.nested() {
            let a = a?;
            match a.kind {
                CTRL_ATTR_MCAST_GRP_NAME => name = Some(a.str()?.to_owned()),
                CTRL_ATTR_MCAST_GRP_ID => id = Some(a.u32()?),
                _ => {}
            }
        }
        if let (Some(name), Some(id)) = (name, id) {
            groups.push(McastGroup { name, id });
        }
    }
    Ok(groups)
}

/// A message the kernel sent on its own: a multicast notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    /// The family (message type).
    pub family: u16,
    /// The generic netlink command.
    pub cmd: u8,
    /// The attributes.
    pub attrs: Vec<u8>,
}

/// The generic netlink messages of a datagram received on a socket that
/// joined multicast groups.  Netlink control messages are skipped.
pub fn notifications(mut datagram: &[u8]) -> Result<Vec<Notification>, Error> {
    let mut out = Vec::new();
    while !datagram.is_empty() {
        let len = ne_u32(datagram, 0)? as usize;
        if len < NLMSG_HDRLEN || len > datagram.len() {
            return Err(Error::Malformed("truncated message".into()));
        }
        let kind = ne_u16(datagram, 4)?;
        let payload = &datagram[NLMSG_HDRLEN..len];
        datagram = datagram.get(nla_align(len)..).unwrap_or(&[]);
        if kind < 0x10 {
            continue; // NLMSG_NOOP, NLMSG_DONE and the like
        }
        let cmd = *payload
            .first()
            .ok_or_else(|| Error::Malformed("message without genl header".into()))?;
        let attrs = payload
            .get(GENL_HDRLEN..)
            .ok_or_else(|| Error::Malformed("message without genl header".into()))?;
        out.push(Notification {
            family: kind,
            cmd,
            attrs: attrs.to_vec(),
        });
    }
    Ok(out)
}

/// A generic netlink socket talking to the kernel.
#[derive(Debug)]
pub struct GenlSocket {
    sock: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl GenlSocket {
    /// Opens a socket and asks for extended, capped acknowledgements.
    pub fn open() -> io::Result<Self> {
        let mut sock = Socket::new(NETLINK_GENERIC)?;
        sock.bind_auto()?;
        sock.connect(&SocketAddr::new(0, 0))?;
        // Best effort: without these, errors are still reported, only with
        // less detail (no message) or a longer echo of our request.
        let _ = sock.set_ext_ack(true);
        let _ = sock.set_cap_ack(true);
        Ok(GenlSocket {
            sock,
            seq: 0,
            buf: vec![0; RECV_BUF],
        })
    }

    /// Looks up a family by name, with its multicast groups.  A family
    /// that is not registered is reported as a refusal with `ENOENT`.
    pub fn lookup(&mut self, name: &str, version: u8) -> Result<(Family, Vec<McastGroup>), Error> {
        let mut attrs = Buf::default();
        Writer::new(&mut attrs).put_str(CTRL_ATTR_FAMILY_NAME, name)?;
        let ctrl = Family {
            id: GENL_ID_CTRL,
            version: CTRL_VERSION,
        };
        for reply in self.request(ctrl, CTRL_CMD_GETFAMILY, &attrs.0)? {
            if let Some(a) = Attrs::new(&reply).find(CTRL_ATTR_FAMILY_ID)? {
                let family = Family {
                    id: a.u16()?,
                    version,
                };
                return Ok((family, mcast_groups(&reply)?));
            }
        }
        Err(Error::Malformed(
            "no family id in the controller's reply".into(),
        ))
    }

    /// Joins a multicast group: its notifications are then received with
    /// [`GenlSocket::notifications`].
    pub fn join(&mut self, group: u32) -> Result<(), Error> {
        self.sock.add_membership(group)?;
        Ok(())
    }

    /// Sets the size of the receive buffer, for bursts of notifications
    /// (best effort: the kernel caps it).
    pub fn set_recv_buffer(&mut self, bytes: usize) {
        let _ = self.sock.set_rx_buf_sz(bytes);
    }

    /// Receives one datagram (blocking) and returns the notifications it
    /// holds.  Fails with `ENOBUFS` if the kernel had to drop some because
    /// the socket's buffer was full.
    pub fn notifications(&mut self) -> Result<Vec<Notification>, Error> {
        let n = self.recv()?;
        notifications(&self.buf[..n])
    }

    /// Sends one request and returns the attributes of each reply message,
    /// once the kernel has acknowledged it.
    pub fn request(
        &mut self,
        family: Family,
        cmd: u8,
        attrs: &[u8],
    ) -> Result<Vec<Vec<u8>>, Error> {
        self.exchange(family, NLM_F_REQUEST | NLM_F_ACK, cmd, attrs)
    }

    /// Sends a dump request and returns the attributes of each reply message.
    pub fn dump(&mut self, family: Family, cmd: u8) -> Result<Vec<Vec<u8>>, Error> {
        self.exchange(family, NLM_F_REQUEST | NLM_F_DUMP, cmd, &[])
    }

    fn exchange(
        &mut self,
        family: Family,
        flags: u16,
        cmd: u8,
        attrs: &[u8],
    ) -> Result<Vec<Vec<u8>>, Error> {
        self.seq = self.seq.wrapping_add(1);
        let msg = encode(family, flags, self.seq, cmd, attrs)?;
        let sent = retry(|| self.sock.send(&msg, 0))?;
        if sent != msg.len() {
            return Err(Error::Malformed("request was cut short".into()));
        }
        let mut collector = Collector::new(family.id, self.seq);
        loop {
            let n = self.recv()?;
            if collector.feed(&self.buf[..n])? {
                return Ok(collector.replies);
            }
        }
    }

    /// Receives one datagram into `self.buf`, growing it so that nothing is
    /// ever truncated, and returns its length.
    fn recv(&mut self) -> Result<usize, Error> {
        let len = retry(|| {
            self.sock
                .recv(&mut &mut self.buf[..], libc::MSG_PEEK | libc::MSG_TRUNC)
        })?;
        if len > self.buf.len() {
            self.buf.resize(len, 0);
        }
        Ok(retry(|| self.sock.recv(&mut &mut self.buf[..], 0))?)
    }
}

impl AsFd for GenlSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}

/// Repeats a system call interrupted by a signal.
fn retry<T>(mut f: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    loop {
        match f() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

/// Builds one generic netlink request message.
pub fn encode(
    family: Family,
    flags: u16,
    seq: u32,
    cmd: u8,
    attrs: &[u8],
) -> Result<Vec<u8>, Error> {
    let len = NLMSG_HDRLEN + GENL_HDRLEN + attrs.len();
    let len32 = u32::try_from(len).map_err(|_| Error::Malformed("request too large".into()))?;
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&len32.to_ne_bytes());
    m.extend_from_slice(&family.id.to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes()); // port id: let the kernel fill it
    m.extend_from_slice(&[cmd, family.version, 0, 0]);
    m.extend_from_slice(attrs);
    Ok(m)
}

/// Gathers the answers to one request from the datagrams received.
#[derive(Debug)]
struct Collector {
    family: u16,
    seq: u32,
    replies: Vec<Vec<u8>>,
}

impl Collector {
    fn new(family: u16, seq: u32) -> Self {
        Collector {
            family,
            seq,
            replies: Vec::new(),
        }
    }

    /// Takes in one datagram; returns whether the exchange is over.
    fn feed(&mut self, mut datagram: &[u8]) -> Result<bool, Error> {
        while !datagram.is_empty() {
            let len = ne_u32(datagram, 0)? as usize;
            if len < NLMSG_HDRLEN || len > datagram.len() {
                return Err(Error::Malformed("truncated message".into()));
            }
            let kind = ne_u16(datagram, 4)?;
            let flags = ne_u16(datagram, 6)?;
            let seq = ne_u32(datagram, 8)?;
            let payload = &datagram[NLMSG_HDRLEN..len];
            datagram = datagram.get(nla_align(len)..).unwrap_or(&[]);
            if seq != self.seq {
                continue; // a late answer to something else
            }
            match kind {
                NLMSG_NOOP => {}
                NLMSG_ERROR => {
                    return match parse_error(payload, flags)? {
                        None => Ok(true),
                        Some(r) => Err(Error::Refused(r)),
                    }
                }
                NLMSG_DONE => return parse_done(payload, flags).map(|()| true),
                NLMSG_OVERRUN => return Err(Error::Malformed("overrun".into())),
                k if k == self.family => {
                    let attrs = payload
                        .get(GENL_HDRLEN..)
                        .ok_or_else(|| Error::Malformed("message without genl header".into()))?;
                    self.replies.push(attrs.to_vec());
                }
                _ => {} // not ours to interpret
            }
        }
        Ok(false)
    }
}

/// Parses the payload of an `NLMSG_ERROR` message whose header carried
/// `flags`: `None` for a positive acknowledgement.
///
/// Layout: the error (a negative errno, or 0), the header of our request,
/// our request's payload unless `NLM_F_CAPPED`, then extended ack
/// attributes if `NLM_F_ACK_TLVS`.
fn parse_error(payload: &[u8], flags: u16) -> Result<Option<Refusal>, Error> {
    let code = ne_i32(payload, 0)?;
    if code == 0 {
        return Ok(None);
    }
    let mut tlvs_at = 4 + NLMSG_HDRLEN;
    if flags & NLM_F_CAPPED == 0 {
        let echoed = ne_u32(payload, 4)? as usize;
        tlvs_at += nla_align(echoed.saturating_sub(NLMSG_HDRLEN));
    }
    Ok(Some(refusal(code, payload, tlvs_at, flags)))
}

/// Parses the payload of `NLMSG_DONE`: the status of the dump, then
/// extended ack attributes if `NLM_F_ACK_TLVS`.
fn parse_done(payload: &[u8], flags: u16) -> Result<(), Error> {
    match payload.get(..4) {
        // Very old kernels send an empty NLMSG_DONE.
        None => Ok(()),
        Some(_) => match ne_i32(payload, 0)? {
            code if code < 0 => Err(Error::Refused(refusal(code, payload, 4, flags))),
            _ => Ok(()),
        },
    }
}

fn refusal(code: i32, payload: &[u8], tlvs_at: usize, flags: u16) -> Refusal {
    let mut r = Refusal {
        errno: code.saturating_neg(),
        message: None,
        missing_attr: None,
    };
    if flags & NLM_F_ACK_TLVS == 0 {
        return r;
    }
    let tlvs = payload.get(tlvs_at..).unwrap_or(&[]);
    // The errno is what matters: use what parses of the extended ack.
    for a in Attrs::new(tlvs).map_while(Result::ok) {
        match a.kind {
            NLMSGERR_ATTR_MSG => {
                let text = String::from_utf8_lossy(a.payload);
                let text = text.trim_end_matches('\0').trim();
                if !text.is_empty() {
                    r.message = Some(text.to_owned());
                }
            }
            NLMSGERR_ATTR_MISS_TYPE => r.missing_attr = a.u32().ok(),
            _ => {}
        }
    }
    r
}

fn field<const N: usize>(buf: &[u8], at: usize) -> Result<[u8; N], Error> {
    buf.get(at..at + N)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| Error::Malformed("short message".into()))
}

fn ne_u16(buf: &[u8], at: usize) -> Result<u16, Error> {
    field(buf, at).map(u16::from_ne_bytes)
}

fn ne_u32(buf: &[u8], at: usize) -> Result<u32, Error> {
    field(buf, at).map(u32::from_ne_bytes)
}

fn ne_i32(buf: &[u8], at: usize) -> Result<i32, Error> {
    field(buf, at).map(i32::from_ne_bytes)
}

/// The C library's description of `errno`, lower-cased, e.g. "device or
/// resource busy".
pub fn strerror(errno: i32) -> String {
    let text = io::Error::from_raw_os_error(errno).to_string();
    let text = strip_os_error(&text);
    let mut chars = text.chars();
    match chars.next() {
        Some(c) => c.to_lowercase().chain(chars).collect(),
        None => format!("error {errno}"),
    }
}

/// Removes the " (os error N)" that `io::Error` appends.
fn strip_os_error(text: &str) -> &str {
    match text.rfind(" (os error ") {
        Some(at) if text.ends_with(')') => &text[..at],
        _ => text,
    }
}

/// What dstctl shows after an error's text: ` (EBUSY)`, or ` (errno N)`
/// for a number it has no name for.
pub fn errno_suffix(errno: i32) -> String {
    match errno_name(errno) {
        Some(name) => format!(" ({name})"),
        None => format!(" (errno {errno})"),
    }
}

/// The symbolic name of an error number, for the errors dst can return.
fn errno_name(errno: i32) -> Option<&'static str> {
    use libc::*;
    Some(match errno {
        EPERM => "EPERM",
        ENOENT => "ENOENT",
        ESRCH => "ESRCH",
        EINTR => "EINTR",
        EIO => "EIO",
        ENXIO => "ENXIO",
        E2BIG => "E2BIG",
        EBADF => "EBADF",
        EAGAIN => "EAGAIN",
        ENOMEM => "ENOMEM",
        EACCES => "EACCES",
        EFAULT => "EFAULT",
        ENOTBLK => "ENOTBLK",
        EBUSY => "EBUSY",
        EEXIST => "EEXIST",
        EXDEV => "EXDEV",
        ENODEV => "ENODEV",
        ENOTDIR => "ENOTDIR",
        EISDIR => "EISDIR",
        EINVAL => "EINVAL",
        ENFILE => "ENFILE",
        EMFILE => "EMFILE",
        ENOTTY => "ENOTTY",
        EFBIG => "EFBIG",
        ENOSPC => "ENOSPC",
        EROFS => "EROFS",
        ERANGE => "ERANGE",
        ENAMETOOLONG => "ENAMETOOLONG",
        ENOSYS => "ENOSYS",
        ENOTEMPTY => "ENOTEMPTY",
        ELOOP => "ELOOP",
        ENODATA => "ENODATA",
        ENOLINK => "ENOLINK",
        EPROTO => "EPROTO",
        EBADMSG => "EBADMSG",
        EOVERFLOW => "EOVERFLOW",
        EMSGSIZE => "EMSGSIZE",
        EPROTONOSUPPORT => "EPROTONOSUPPORT",
        EOPNOTSUPP => "EOPNOTSUPP",
        EADDRINUSE => "EADDRINUSE",
        ENETUNREACH => "ENETUNREACH",
        ECONNRESET => "ECONNRESET",
        ENOBUFS => "ENOBUFS",
        ENOTCONN => "ENOTCONN",
        ETIMEDOUT => "ETIMEDOUT",
        ECONNREFUSED => "ECONNREFUSED",
        EHOSTUNREACH => "EHOSTUNREACH",
        EALREADY => "EALREADY",
        EINPROGRESS => "EINPROGRESS",
        ECANCELED => "ECANCELED",
        ENOMEDIUM => "ENOMEDIUM",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NLM_F_MULTI: u16 = 0x02;
    const FAMILY: u16 = 0x1a;

    /// Appends a netlink message to `out`.
    fn push_msg(out: &mut Vec<u8>, kind: u16, flags: u16, seq: u32, payload: &[u8]) {
        let len = (NLMSG_HDRLEN + payload.len()) as u32;
        out.extend_from_slice(&len.to_ne_bytes());
        out.extend_from_slice(&kind.to_ne_bytes());
        out.extend_from_slice(&flags.to_ne_bytes());
        out.extend_from_slice(&seq.to_ne_bytes());
        out.extend_from_slice(&4242u32.to_ne_bytes());
        out.extend_from_slice(payload);
        out.resize(nla_align(out.len()), 0);
    }

    /// A genl reply payload: header then one u32 attribute.
    fn genl_payload(v: u32) -> Vec<u8> {
        let mut b = Buf(vec![1, 1, 0, 0]);
        Writer::new(&mut b).put_u32(4, v).unwrap();
        b.0
    }

    /// The request header the kernel echoes in an error.
    fn echoed_header(payload_len: usize) -> Vec<u8> {
        let fam = Family {
            id: FAMILY,
            version: 1,
        };
        let attrs = vec![0u8; payload_len - GENL_HDRLEN];
        encode(fam, NLM_F_REQUEST | NLM_F_ACK, 7, 2, &attrs).unwrap()
    }

    fn extack_tlvs(msg: &str) -> Vec<u8> {
        let mut b = Buf::default();
        let mut w = Writer::new(&mut b);
        w.put_str(NLMSGERR_ATTR_MSG, msg).unwrap();
        w.put_u32(2, 24).unwrap(); // NLMSGERR_ATTR_OFFS: ignored
        b.0
    }

    #[test]
    fn request_encoding() {
        let fam = Family {
            id: 0x1234,
            version: 1,
        };
        let mut attrs = Buf::default();
        Writer::new(&mut attrs).put_str(1, "r1").unwrap();
        let m = encode(fam, NLM_F_REQUEST | NLM_F_ACK, 9, 3, &attrs.0).unwrap();
        assert_eq!(m.len(), 16 + 4 + 8);
        assert_eq!(ne_u32(&m, 0).unwrap(), 28);
        assert_eq!(ne_u16(&m, 4).unwrap(), 0x1234);
        assert_eq!(ne_u16(&m, 6).unwrap(), 0x05);
        assert_eq!(ne_u32(&m, 8).unwrap(), 9);
        assert_eq!(&m[16..20], &[3, 1, 0, 0]);
        let a = Attrs::new(&m[20..]).find(1).unwrap().unwrap();
        assert_eq!(a.str().unwrap(), "r1");
    }

    #[test]
    fn extack_capped() {
        let mut payload = (-libc::ENOENT).to_ne_bytes().to_vec();
        payload.extend_from_slice(&echoed_header(40)[..NLMSG_HDRLEN]);
        payload.extend_from_slice(&extack_tlvs("leg /dev/ram9: no such block device"));
        let mut dgram = Vec::new();
        push_msg(
            &mut dgram,
            NLMSG_ERROR,
            NLM_F_CAPPED | NLM_F_ACK_TLVS,
            7,
            &payload,
        );

        let mut c = Collector::new(FAMILY, 7);
        let Err(Error::Refused(r)) = c.feed(&dgram) else {
            panic!("expected a refusal");
        };
        assert_eq!(r.errno, libc::ENOENT);
        assert_eq!(
            r.message.as_deref(),
            Some("leg /dev/ram9: no such block device")
        );
        assert_eq!(
            Error::Refused(r).to_string(),
            "leg /dev/ram9: no such block device (ENOENT)"
        );
    }

    #[test]
    fn extack_after_echoed_request() {
        // Without NETLINK_CAP_ACK the whole request (here 4 + 9 bytes of
        // payload, padded to 16) precedes the attributes.
        let mut echoed = echoed_header(16);
        echoed.truncate(NLMSG_HDRLEN);
        echoed[..4].copy_from_slice(&(NLMSG_HDRLEN as u32 + 13).to_ne_bytes());
        let mut payload = (-libc::EINVAL).to_ne_bytes().to_vec();
        payload.extend_from_slice(&echoed);
        payload.extend_from_slice(&[0xee; 13]);
        payload.extend_from_slice(&[0; 3]);
        payload.extend_from_slice(&extack_tlvs("Attribute failed policy validation"));
        let r = parse_error(&payload, NLM_F_ACK_TLVS).unwrap().unwrap();
        assert_eq!(r.errno, libc::EINVAL);
        assert_eq!(
            r.message.as_deref(),
            Some("Attribute failed policy validation")
        );
    }

    #[test]
    fn plain_errors_and_acks() {
        let mut payload = (-libc::EBUSY).to_ne_bytes().to_vec();
        payload.extend_from_slice(&echoed_header(8)[..NLMSG_HDRLEN]);
        let r = parse_error(&payload, NLM_F_CAPPED).unwrap().unwrap();
        assert_eq!(
            Error::Refused(r).to_string(),
            "device or resource busy (EBUSY)"
        );

        let mut ack = 0i32.to_ne_bytes().to_vec();
        ack.extend_from_slice(&echoed_header(8)[..NLMSG_HDRLEN]);
        assert_eq!(parse_error(&ack, NLM_F_CAPPED).unwrap(), None);

        // Missing attribute reported without a message.
        let mut payload = (-libc::EINVAL).to_ne_bytes().to_vec();
        payload.extend_from_slice(&echoed_header(8)[..NLMSG_HDRLEN]);
        let mut b = Buf(payload);
        Writer::new(&mut b)
            .put_u32(NLMSGERR_ATTR_MISS_TYPE, 2)
            .unwrap();
        let r = parse_error(&b.0, NLM_F_CAPPED | NLM_F_ACK_TLVS)
            .unwrap()
            .unwrap();
        assert_eq!(
            Error::Refused(r).to_string(),
            "invalid argument (EINVAL), missing attribute 2"
        );
    }

    #[test]
    fn doit_reply_then_ack() {
        let mut dgram = Vec::new();
        push_msg(&mut dgram, FAMILY, 0, 3, &genl_payload(10));
        let mut c = Collector::new(FAMILY, 3);
        assert!(!c.feed(&dgram).unwrap());

        let mut ack = 0i32.to_ne_bytes().to_vec();
        ack.extend_from_slice(&echoed_header(8)[..NLMSG_HDRLEN]);
        let mut dgram = Vec::new();
        push_msg(&mut dgram, NLMSG_ERROR, NLM_F_CAPPED, 3, &ack);
        assert!(c.feed(&dgram).unwrap());
        assert_eq!(c.replies.len(), 1);
        let a = Attrs::new(&c.replies[0]).find(4).unwrap().unwrap();
        assert_eq!(a.u32().unwrap(), 10);
    }

    #[test]
    fn multipart_dump() {
        let mut c = Collector::new(FAMILY, 5);
        // Two devices in one datagram, plus a stale message to skip.
        let mut dgram = Vec::new();
        push_msg(&mut dgram, FAMILY, NLM_F_MULTI, 5, &genl_payload(0));
        push_msg(&mut dgram, FAMILY, NLM_F_MULTI, 4, &genl_payload(99));
        push_msg(&mut dgram, FAMILY, NLM_F_MULTI, 5, &genl_payload(1));
        assert!(!c.feed(&dgram).unwrap());
        // A third in the next one, then the end.
        let mut dgram = Vec::new();
        push_msg(&mut dgram, FAMILY, NLM_F_MULTI, 5, &genl_payload(2));
        push_msg(&mut dgram, NLMSG_DONE, NLM_F_MULTI, 5, &0i32.to_ne_bytes());
        assert!(c.feed(&dgram).unwrap());
        let values: Vec<u32> = c
            .replies
            .iter()
            .map(|r| Attrs::new(r).find(4).unwrap().unwrap().u32().unwrap())
            .collect();
        assert_eq!(values, [0, 1, 2]);
    }

    #[test]
    fn failed_dump() {
        let mut payload = (-libc::EMSGSIZE).to_ne_bytes().to_vec();
        payload.extend_from_slice(&extack_tlvs("too big"));
        let mut dgram = Vec::new();
        push_msg(
            &mut dgram,
            NLMSG_DONE,
            NLM_F_MULTI | NLM_F_ACK_TLVS,
            5,
            &payload,
        );
        let mut c = Collector::new(FAMILY, 5);
        let Err(Error::Refused(r)) = c.feed(&dgram) else {
            panic!("expected a refusal");
        };
        assert_eq!(r.errno, libc::EMSGSIZE);
        assert_eq!(r.message.as_deref(), Some("too big"));
    }

    #[test]
    fn truncated_datagram() {
        let mut dgram = Vec::new();
        push_msg(&mut dgram, FAMILY, 0, 1, &genl_payload(0));
        dgram.truncate(dgram.len() - 4);
        let mut c = Collector::new(FAMILY, 1);
        assert!(matches!(c.feed(&dgram), Err(Error::Malformed(_))));
    }

    /// Talks to the real generic netlink controller, which every Linux
    /// kernel has: lookup, unknown family, dump, and an extended ack.
    #[test]
    fn live_controller() {
        let Ok(mut s) = GenlSocket::open() else {
            eprintln!("no generic netlink socket here; skipped");
            return;
        };
        let (ctrl, groups) = s.lookup("nlctrl", CTRL_VERSION).unwrap();
        assert_eq!(ctrl.id, GENL_ID_CTRL);
        // The controller's own group, which every kernel has.
        let notify = groups.iter().find(|g| g.name == CTRL_MCGRP_NOTIFY);
        assert_eq!(notify.map(|g| g.id), Some(u32::from(GENL_ID_CTRL)));

        match s.lookup("dst-no-such", 1) {
            Err(Error::Refused(r)) => assert_eq!(r.errno, libc::ENOENT),
            other => panic!("unexpected {other:?}"),
        }

        let families = s.dump(ctrl, CTRL_CMD_GETFAMILY).unwrap();
        let names: Vec<&str> = families
            .iter()
            .filter_map(|f| Attrs::new(f).find(CTRL_ATTR_FAMILY_NAME).ok()??.str().ok())
            .collect();
        assert!(names.contains(&"nlctrl"), "{names:?}");

        // Longer than GENL_NAMSIZ: refused by the policy, with a message on
        // kernels that have extended acks.
        match s.lookup(&"x".repeat(40), 1) {
            Err(Error::Refused(r)) => {
                assert_eq!(r.errno, libc::EINVAL);
                eprintln!("extack: {:?}", r.message);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    /// A controller reply for a family, as the kernel builds it: id, name,
    /// version and the like, then the groups (nests numbered from 1).
    fn ctrl_reply(groups: &[(&str, u32)]) -> Vec<u8> {
        let mut b = Buf::default();
        let mut w = Writer::new(&mut b);
        w.put_str(CTRL_ATTR_FAMILY_NAME, "dst").unwrap();
        w.put_bytes(CTRL_ATTR_FAMILY_ID, &0x1du16.to_ne_bytes())
            .unwrap();
        w.put_u32(3, 1).unwrap(); // CTRL_ATTR_VERSION
        let ops = w.begin_nest(6).unwrap(); // CTRL_ATTR_OPS: skipped
        let op = w.begin_nest(1).unwrap();
        w.put_u32(1, 1).unwrap();
        w.end_nest(op).unwrap();
        w.end_nest(ops).unwrap();
        let list = w.begin_nest(CTRL_ATTR_MCAST_GROUPS).unwrap();
        for (i, (name, id)) in groups.iter().enumerate() {
            let g = w.begin_nest(i as u16 + 1).unwrap();
            w.put_u32(CTRL_ATTR_MCAST_GRP_ID, *id).unwrap();
            w.put_str(CTRL_ATTR_MCAST_GRP_NAME, name).unwrap();
            w.put_u32(99, 0).unwrap(); // unknown: skipped
            w.end_nest(g).unwrap();
        }
        w.end_nest(list).unwrap();
        b.0
    }

    #[test]
    fn mcast_group_extraction() {
        let reply = ctrl_reply(&[("config", 7), ("events", 0x2c)]);
        let groups = mcast_groups(&reply).unwrap();
        assert_eq!(
            groups,
            [
                McastGroup {
                    name: "config".into(),
                    id: 7
                },
                McastGroup {
                    name: "events".into(),
                    id: 0x2c
                }
            ]
        );
        let id = Attrs::new(&reply)
            .find(CTRL_ATTR_FAMILY_ID)
            .unwrap()
            .unwrap();
        assert_eq!(id.u16().unwrap(), 0x1d);

        // No groups at all, or a group missing its id.
        assert_eq!(mcast_groups(&ctrl_reply(&[])).unwrap(), []);
        let mut b = Buf::default();
        let mut w = Writer::new(&mut b);
        let list = w.begin_nest(CTRL_ATTR_MCAST_GROUPS).unwrap();
        let g = w.begin_nest(1).unwrap();
        w.put_str(CTRL_ATTR_MCAST_GRP_NAME, "events").unwrap();
        w.end_nest(g).unwrap();
        w.end_nest(list).unwrap();
        assert_eq!(mcast_groups(&b.0).unwrap(), []);

        // A reply cut short is an error, not an empty list.
        let reply = ctrl_reply(&[("events", 3)]);
        assert!(mcast_groups(&reply[..reply.len() - 4]).is_err());
    }

    #[test]
    fn notification_datagrams() {
        let mut dgram = Vec::new();
        let mut payload = vec![4, 1, 0, 0];
        let mut b = Buf::default();
        Writer::new(&mut b).put_str(1, "r1").unwrap();
        payload.extend_from_slice(&b.0);
        push_msg(&mut dgram, FAMILY, 0, 0, &payload);
        push_msg(&mut dgram, NLMSG_NOOP, 0, 0, &[]);
        push_msg(
            &mut dgram,
            GENL_ID_CTRL,
            0,
            0,
            &[CTRL_CMD_DELFAMILY, 2, 0, 0],
        );
        let n = notifications(&dgram).unwrap();
        assert_eq!(n.len(), 2);
        assert_eq!((n[0].family, n[0].cmd), (FAMILY, 4));
        assert_eq!(
            Attrs::new(&n[0].attrs).find(1).unwrap().unwrap().str(),
            Ok("r1")
        );
        assert_eq!((n[1].family, n[1].cmd), (GENL_ID_CTRL, CTRL_CMD_DELFAMILY));
        assert!(n[1].attrs.is_empty());

        let mut short = Vec::new();
        push_msg(&mut short, FAMILY, 0, 0, &[4, 1]);
        assert!(notifications(&short).is_err());
        dgram.truncate(dgram.len() - 1);
        assert!(notifications(&dgram).is_err());
    }

    #[test]
    fn error_names() {
        assert_eq!(strerror(libc::ENOENT), "no such file or directory");
        assert_eq!(errno_name(libc::EBUSY), Some("EBUSY"));
        assert_eq!(errno_name(100_000), None);
        assert_eq!(strip_os_error("Boom (os error 5)"), "Boom");
    }
}
