#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""Send raw generic netlink messages, for negative tests (stdlib only).

Builds requests from arbitrary attribute bytes -- including malformed ones:
truncated headers, lengths past the end, wrong sizes, unknown ids, nested
garbage -- sends them to a generic netlink family found by name, and prints
the kernel's answer: the errno and the extended ACK (message, offset,
missing attribute).

CLI:
  nl_raw.py --family NAME --cmd N [--attr-hex HEX | --attr ID:TYPE[:VALUE]]...
            [--raw-hex HEX] [--version N] [--dump] [--expect-errno N]
  nl_raw.py --family NAME --resolve

  --attr-hex HEX        append raw bytes (attribute headers included) as is
  --attr ID:TYPE:VALUE  append a well-formed attribute; TYPE is one of
                        u8 u16 u32 u64 s32 s64 str (NUL-terminated)
                        strn (not NUL-terminated) hex flag (no value)
                        nest (VALUE = hex of the nested attributes)
  --raw-hex HEX         the whole payload after the netlink header,
                        generic netlink header included (replaces --cmd...)

Output: one line per data reply ("reply cmd=... attrs=..."), then
  errno=-22 msg='...' [offset=N] [miss_type=N] [miss_nest=N]
where offset counts from the start of the netlink message (the attributes
start at 20: nlmsghdr 16 + genlmsghdr 4).

Exit status: with --expect-errno N, 0 if the errno is -N (0: success);
otherwise 0 if an error came back, 1 if the request succeeded; 2 on usage
errors, no reply, or an unknown family.

Library use (the module is importable from selftests/):
  from nl_raw import GenlSocket, nla, nla_u32, nla_str
  with GenlSocket() as s:
      fam = s.family("dst")
      r = s.request(fam.id, 2, nla_str(1, "r1") + nla(3, b"\\xff" * 3))
      print(r.errno, r.msg)
"""

import argparse
import errno as errno_mod
import os
import socket
import struct
import sys
from dataclasses import dataclass, field

NETLINK_GENERIC = 16
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10
NETLINK_EXT_ACK = 11

NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_MULTI = 0x2
NLM_F_ACK = 0x4
NLM_F_DUMP = 0x300
NLM_F_CAPPED = 0x100    # in an ACK: the request is not echoed back
NLM_F_ACK_TLVS = 0x200  # in an ACK: extended ACK attributes follow

NLMSGERR_ATTR_MSG = 1
NLMSGERR_ATTR_OFFS = 2
NLMSGERR_ATTR_MISS_TYPE = 5
NLMSGERR_ATTR_MISS_NEST = 6

NLA_F_NESTED = 0x8000
NLA_TYPE_MASK = 0x3FFF

GENL_ID_CTRL = 16
CTRL_CMD_GETFAMILY = 3
CTRL_ATTR_FAMILY_ID = 1
CTRL_ATTR_FAMILY_NAME = 2
CTRL_ATTR_VERSION = 3
CTRL_ATTR_HDRSIZE = 4
CTRL_ATTR_MAXATTR = 5
CTRL_ATTR_OPS = 6
CTRL_ATTR_OP_ID = 1

NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
GENLMSGHDR = struct.Struct("=BBH")  # cmd, version, reserved
NLAHDR = struct.Struct("=HH")       # len, type


def align4(n):
    return (n + 3) & ~3


# ---- attribute builders ------------------------------------------------------

def nla(atype, payload=b"", *, length=None, pad=True, nested=False):
    """One attribute.  length overrides the header's nla_len (to lie about
    it); pad=False leaves out the alignment padding."""
    if nested:
        atype |= NLA_F_NESTED
    if length is None:
        length = NLAHDR.size + len(payload)
    out = NLAHDR.pack(length & 0xFFFF, atype & 0xFFFF) + payload
    if pad:
        out += b"\0" * (align4(len(out)) - len(out))
    return out


def nla_u8(t, v):
    return nla(t, struct.pack("=B", v))


def nla_u16(t, v):
    return nla(t, struct.pack("=H", v))


def nla_u32(t, v):
    return nla(t, struct.pack("=I", v))


def nla_u64(t, v):
    return nla(t, struct.pack("=Q", v))


def nla_s32(t, v):
    return nla(t, struct.pack("=i", v))


def nla_s64(t, v):
    return nla(t, struct.pack("=q", v))


def nla_str(t, s):
    """NUL-terminated string, as the kernel's NLA_NUL_STRING wants."""
    return nla(t, s.encode() + b"\0")


def nla_strn(t, s):
    """String without the terminating NUL."""
    return nla(t, s.encode())


def nla_flag(t):
    return nla(t)


def nla_nest(t, *attrs):
    return nla(t, b"".join(attrs), nested=True)


def parse_attrs(data):
    """[(type, payload)] of a well-formed attribute stream; stops at junk."""
    out, off = [], 0
    while off + NLAHDR.size <= len(data):
        length, atype = NLAHDR.unpack_from(data, off)
        if length < NLAHDR.size or off + length > len(data):
            break
        out.append((atype & NLA_TYPE_MASK, data[off + NLAHDR.size:off + length]))
        off += align4(length)
    return out


# ---- the socket --------------------------------------------------------------

@dataclass
class Reply:
    """The kernel's answer to one request."""
    errno: int = 0                  # 0 or a negative errno
    msg: str = None                 # extack message
    offset: int = None              # extack: offending byte in the request
    miss_type: int = None           # extack: missing attribute
    miss_nest: int = None           # extack: ... inside this nest (offset)
    acked: bool = False             # an NLMSG_ERROR/NLMSG_DONE was received
    messages: list = field(default_factory=list)  # data replies (raw payloads)

    def line(self):
        s = f"errno={self.errno} msg={self.msg or ''!r}"
        for k in ("offset", "miss_type", "miss_nest"):
            if getattr(self, k) is not None:
                s += f" {k}={getattr(self, k)}"
        return s


@dataclass
class Family:
    id: int
    name: str
    version: int
    hdrsize: int
    maxattr: int
    ops: list


class GenlSocket:
    """A NETLINK_GENERIC socket with extended ACKs turned on."""

    def __init__(self, timeout=5.0):
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_GENERIC)
        self.sock.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)
        self.sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
        self.sock.settimeout(timeout)
        self.sock.bind((0, 0))
        self.seq = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        self.sock.close()

    def send(self, msg_type, flags, payload):
        """Send one netlink message; return its sequence number."""
        self.seq += 1
        hdr = NLMSGHDR.pack(NLMSGHDR.size + len(payload), msg_type, flags, self.seq, 0)
        self.sock.send(hdr + payload)
        return self.seq

    def request(self, family_id, cmd, attrs=b"", *, version=1, dump=False, ack=True):
        """Send a generic netlink request and collect the answer."""
        flags = NLM_F_REQUEST | (NLM_F_ACK if ack else 0) | (NLM_F_DUMP if dump else 0)
        payload = GENLMSGHDR.pack(cmd, version, 0) + attrs
        return self.receive(self.send(family_id, flags, payload))

    def request_raw(self, family_id, payload, *, dump=False, ack=True):
        """Send payload (generic netlink header included) as is."""
        flags = NLM_F_REQUEST | (NLM_F_ACK if ack else 0) | (NLM_F_DUMP if dump else 0)
        return self.receive(self.send(family_id, flags, payload))

    def receive(self, seq):
        """Read messages for seq until an ACK/error or the end of a dump.
        Raises TimeoutError if the kernel does not answer."""
        reply = Reply()
        while not reply.acked:
            data = self.sock.recv(1 << 20)
            off = 0
            while off + NLMSGHDR.size <= len(data):
                length, mtype, mflags, mseq, _ = NLMSGHDR.unpack_from(data, off)
                if length < NLMSGHDR.size:
                    break
                body = data[off + NLMSGHDR.size:off + length]
                off += align4(length)
                if mseq != seq:
                    continue
                if mtype == NLMSG_ERROR:
                    self._parse_error(reply, mflags, body)
                elif mtype == NLMSG_DONE:
                    self._parse_done(reply, mflags, body)
                else:
                    reply.messages.append(body)
        return reply

    @staticmethod
    def _parse_error(reply, flags, body):
        reply.acked = True
        (reply.errno,) = struct.unpack_from("=i", body, 0)
        # struct nlmsgerr: the error, then the request's header, or the whole
        # request unless NLM_F_CAPPED; then the extack attributes.
        if flags & NLM_F_CAPPED:
            tlv_off = 4 + NLMSGHDR.size
        else:
            (req_len,) = struct.unpack_from("=I", body, 4)
            tlv_off = 4 + align4(req_len)
        if flags & NLM_F_ACK_TLVS:
            GenlSocket._parse_extack(reply, body[tlv_off:])

    @staticmethod
    def _parse_done(reply, flags, body):
        reply.acked = True
        if len(body) >= 4:
            (reply.errno,) = struct.unpack_from("=i", body, 0)
        if flags & NLM_F_ACK_TLVS:
            GenlSocket._parse_extack(reply, body[4:])

    @staticmethod
    def _parse_extack(reply, tlvs):
        for atype, val in parse_attrs(tlvs):
            if atype == NLMSGERR_ATTR_MSG:
                reply.msg = val.split(b"\0", 1)[0].decode(errors="replace")
            elif atype == NLMSGERR_ATTR_OFFS and len(val) >= 4:
                reply.offset = struct.unpack_from("=I", val)[0]
            elif atype == NLMSGERR_ATTR_MISS_TYPE and len(val) >= 4:
                reply.miss_type = struct.unpack_from("=I", val)[0]
            elif atype == NLMSGERR_ATTR_MISS_NEST and len(val) >= 4:
                reply.miss_nest = struct.unpack_from("=I", val)[0]

    def family(self, name):
        """Resolve a family by name (CTRL_CMD_GETFAMILY).  Raises
        LookupError(errno) if the kernel does not know it."""
        r = self.request(GENL_ID_CTRL, CTRL_CMD_GETFAMILY,
                         nla_str(CTRL_ATTR_FAMILY_NAME, name), version=1)
        if r.errno or not r.messages:
            raise LookupError(f"family {name!r}: {r.line()}")
        attrs = dict(parse_attrs(r.messages[0][GENLMSGHDR.size:]))
        u16 = lambda k: struct.unpack("=H", attrs[k][:2])[0] if k in attrs else 0
        u32 = lambda k: struct.unpack("=I", attrs[k][:4])[0] if k in attrs else 0
        ops = []
        for _, op in parse_attrs(attrs.get(CTRL_ATTR_OPS, b"")):
            op_attrs = dict(parse_attrs(op))
            if CTRL_ATTR_OP_ID in op_attrs:
                ops.append(struct.unpack("=I", op_attrs[CTRL_ATTR_OP_ID][:4])[0])
        return Family(id=u16(CTRL_ATTR_FAMILY_ID), name=name,
                      version=u32(CTRL_ATTR_VERSION), hdrsize=u32(CTRL_ATTR_HDRSIZE),
                      maxattr=u32(CTRL_ATTR_MAXATTR), ops=ops)


# ---- command line ------------------------------------------------------------

_TYPED = {
    "u8": lambda t, v: nla_u8(t, int(v, 0)),
    "u16": lambda t, v: nla_u16(t, int(v, 0)),
    "u32": lambda t, v: nla_u32(t, int(v, 0)),
    "u64": lambda t, v: nla_u64(t, int(v, 0)),
    "s32": lambda t, v: nla_s32(t, int(v, 0)),
    "s64": lambda t, v: nla_s64(t, int(v, 0)),
    "str": nla_str,
    "strn": nla_strn,
    "hex": lambda t, v: nla(t, bytes.fromhex(v)),
    "flag": lambda t, v: nla_flag(t),
    "nest": lambda t, v: nla(t, bytes.fromhex(v), nested=True),
}


def typed_attr(spec):
    """ID:TYPE[:VALUE] -> attribute bytes."""
    parts = spec.split(":", 2)
    if len(parts) < 2 or parts[1] not in _TYPED:
        raise argparse.ArgumentTypeError(
            f"bad --attr {spec!r}: want ID:TYPE[:VALUE], TYPE in {' '.join(_TYPED)}")
    try:
        return _TYPED[parts[1]](int(parts[0], 0), parts[2] if len(parts) > 2 else "")
    except (ValueError, struct.error) as e:
        raise argparse.ArgumentTypeError(f"bad --attr {spec!r}: {e}")


def hex_bytes(s):
    try:
        return bytes.fromhex(s)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"bad hex {s!r}: {e}")


class _AppendPart(argparse.Action):
    """Keep --attr and --attr-hex in command line order."""

    def __call__(self, parser, ns, value, option_string=None):
        ns.parts = (ns.parts or []) + [value]


def parse_errno(s):
    s = s.strip().lstrip("-")
    if s.isdigit():
        return int(s)
    if hasattr(errno_mod, s.upper()):
        return getattr(errno_mod, s.upper())
    raise argparse.ArgumentTypeError(f"bad errno {s!r}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    fam = p.add_mutually_exclusive_group(required=True)
    fam.add_argument("--family", help="family name (resolved through nlctrl)")
    fam.add_argument("--family-id", type=lambda s: int(s, 0), help="numeric family id")
    p.add_argument("--resolve", action="store_true", help="print the family's id, version, ops")
    p.add_argument("--cmd", type=lambda s: int(s, 0), help="generic netlink command")
    p.add_argument("--version", type=lambda s: int(s, 0),
                   help="genl header version (default: the family's)")
    p.add_argument("--attr-hex", type=hex_bytes, action=_AppendPart, dest="parts",
                   metavar="HEX", help="raw attribute bytes")
    p.add_argument("--attr", type=typed_attr, action=_AppendPart, dest="parts",
                   metavar="ID:TYPE[:VALUE]", help="a well-formed attribute")
    p.add_argument("--raw-hex", type=hex_bytes, metavar="HEX",
                   help="payload after the nlmsghdr, genl header included")
    p.add_argument("--dump", action="store_true", help="set NLM_F_DUMP")
    p.add_argument("--expect-errno", type=parse_errno, metavar="N",
                   help="exit 0 iff the errno is -N (0 = success); N may be a name (EINVAL)")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the kernel")
    args = p.parse_args(argv)
    if not args.resolve and args.cmd is None and args.raw_hex is None:
        p.error("one of --cmd, --raw-hex, --resolve is required")

    with GenlSocket(timeout=args.timeout) as s:
        version = args.version
        if args.family is not None:
            try:
                f = s.family(args.family)
            except LookupError as e:
                print(f"nl_raw: {e}", file=sys.stderr)
                return 2
            family_id = f.id
            if args.resolve:
                print(f"family={f.name} id={f.id} version={f.version} hdrsize={f.hdrsize} "
                      f"maxattr={f.maxattr} ops={','.join(map(str, f.ops))}")
                return 0
            if version is None:
                version = f.version
        else:
            family_id = args.family_id
            if args.resolve:
                p.error("--resolve needs --family")
        try:
            if args.raw_hex is not None:
                r = s.request_raw(family_id, args.raw_hex, dump=args.dump)
            else:
                attrs = b"".join(args.parts or [])
                r = s.request(family_id, args.cmd, attrs, version=version or 1, dump=args.dump)
        except (TimeoutError, socket.timeout):
            print("nl_raw: no reply from the kernel (timeout)", file=sys.stderr)
            return 2
        except OSError as e:
            print(f"nl_raw: send failed: {e}", file=sys.stderr)
            return 2

    for m in r.messages:
        cmd = m[0] if m else -1
        attrs = " ".join(f"{t}:{v.hex()[:64]}" for t, v in parse_attrs(m[GENLMSGHDR.size:]))
        print(f"reply cmd={cmd} attrs=[{attrs}]")
    print(r.line())
    if args.expect_errno is not None:
        if r.errno == -args.expect_errno:
            return 0
        want = -args.expect_errno
        print(f"nl_raw: expected errno={want} ({os.strerror(abs(want)) if want else 'success'}), "
              f"got errno={r.errno}", file=sys.stderr)
        return 1
    return 0 if r.errno else 1


if __name__ == "__main__":
    sys.exit(main())
