#!/usr/bin/env python3
"""Malformed and invalid requests sent straight to the dst netlink family.

usage: dst_nl_cases.py --list | --all | CASE

Each case sends one request built by hand (ids from
userspace/dst-proto/src/genl.rs) and checks that the kernel refuses it
with the expected errno (any errno where policy validation decides, since
the netlink core picks EINVAL or ERANGE) and, where dst itself answers,
the expected extended-ack text.  Prints the kernel's answer; exits 0 if
the expectation holds.  --all runs every case in one process and prints a
TAP-style "ok"/"not ok" line for each, checking after each case that the
set of devices (a GET dump) has not changed.
"""

import errno
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from nl_raw import GenlSocket, nla, nla_nest, nla_str, nla_strn, nla_u8, nla_u32, nla_u64  # noqa: E402

# Commands and attributes (dst-proto genl.rs).
GET, CREATE, REMOVE, EXPORT, UNEXPORT, DETACH, ATTACH, SET, ADD_LEG, REMOVE_LEG = 1, 2, 3, 5, 6, 7, 8, 9, 10, 11
LEG_INDEX, FULL, REGION_SIZE, RESYNC_RATE, RESYNC_MAX, WRITE_MOSTLY = 12, 13, 14, 15, 16, 17
EXP = 11
LISTEN, EXP_NAME, READ_ONLY, ALLOW = 1, 2, 3, 4
NAME, TARGET, LEG, SIZE = 1, 2, 3, 6
SPEC, ADDR, LEG_EXPORT, TIMEOUT_MS, DEAD_TIME_MS = 1, 13, 14, 15, 16
LEG_WRITE_MOSTLY = 27
LINEAR, MIRROR = 1, 2
ANY = None  # any negative errno


def leg(path):
    return nla_nest(LEG, nla_str(SPEC, path))


def remote(*inner):
    """A CREATE with one remote leg made of the attributes `inner`."""
    return create(legs=()) + nla_nest(LEG, nla_str(SPEC, "nbd://127.0.0.1:1/") + b"".join(inner))


def create(name="bad", target=MIRROR, legs=("/dev/ram2",)):
    out = b""
    if name is not None:
        out += nla_str(NAME, name)
    if target is not None:
        out += nla_u8(TARGET, target)
    return out + b"".join(leg(p) for p in legs)


# name: (command, attribute bytes, expected errno or ANY, expected text or None)
CASES = {
    "create-no-name": (CREATE, create(name=None), errno.EINVAL, "missing device name"),
    "create-no-target": (CREATE, create(target=None), errno.EINVAL, "missing target"),
    "create-no-legs": (CREATE, create(legs=()), errno.EINVAL, "at least one leg"),
    "create-target-out-of-range": (CREATE, create(target=7), ANY, None),
    "create-target-wrong-size": (CREATE, nla_str(NAME, "bad") + nla_u32(TARGET, MIRROR) + leg("/dev/ram2"),
                                 ANY, None),
    "create-name-too-long": (CREATE, create(name="n" * 40), ANY, None),
    "create-name-bad-chars": (CREATE, create(name="a/b"), errno.EINVAL, "may only hold"),
    "create-name-unterminated": (CREATE, nla_strn(NAME, "bad") + nla_u8(TARGET, MIRROR) + leg("/dev/ram2"),
                                 ANY, None),
    "create-leg-path-too-long": (CREATE, create(legs=("/" + "x" * 5000,)), ANY, None),
    "create-leg-path-empty": (CREATE, create(legs=("",)), errno.EINVAL, "empty device path"),
    "create-leg-without-path": (CREATE, create(legs=()) + nla_nest(LEG), errno.EINVAL, "no device path"),
    "create-leg-not-nested": (CREATE, create(legs=()) + nla_str(LEG, "/dev/ram2"), ANY, None),
    "create-leg-garbage-inside": (CREATE, create(legs=()) + nla_nest(LEG, b"\x40\x00\x01\x00abc\x00"), ANY, None),
    "create-leg-unknown-inner-attr": (CREATE, create(legs=()) + nla_nest(LEG, nla_str(9, "/dev/ram2")), ANY, None),
    "create-unknown-attribute": (CREATE, create() + nla_u32(99, 1), ANY, None),
    "create-reply-only-attribute": (CREATE, create() + nla_u64(SIZE, 1 << 30), ANY, None),
    "create-truncated-header": (CREATE, create() + b"\x08\x00", ANY, None),
    "create-length-past-end": (CREATE, create() + nla(NAME, b"x\0", length=200), ANY, None),
    "create-length-below-header": (CREATE, create() + b"\x02\x00\x01\x00", ANY, None),
    "create-too-many-legs": (CREATE, create(legs=["/dev/ram2"] * 17), errno.EINVAL, "too many legs"),
    "remote-addr-garbage": (CREATE, remote(nla_str(ADDR, "not-an-address")), errno.EINVAL, "bad address"),
    "remote-addr-no-port": (CREATE, remote(nla_str(ADDR, "127.0.0.1")), errno.EINVAL, "bad address"),
    "remote-addr-port-0": (CREATE, remote(nla_str(ADDR, "127.0.0.1:0")), errno.EINVAL, "port 0"),
    "remote-addr-unterminated": (CREATE, remote(nla_strn(ADDR, "127.0.0.1:1")), ANY, None),
    "remote-nothing-listens": (CREATE, remote(nla_str(ADDR, "127.0.0.1:1")), errno.ENOTCONN, "connection refused"),
    "remote-timeout-too-small": (CREATE, remote(nla_str(ADDR, "127.0.0.1:1"), nla_u32(TIMEOUT_MS, 10)),
                                 errno.ERANGE, "timeout must be 100 ms to 24 h"),
    "remote-dead-time-too-large": (CREATE, remote(nla_str(ADDR, "127.0.0.1:1"), nla_u32(DEAD_TIME_MS, 1 << 31)),
                                   errno.ERANGE, "dead time must be"),
    "remote-timeout-wrong-size": (CREATE, remote(nla_str(ADDR, "127.0.0.1:1"), nla_u8(TIMEOUT_MS, 5)), ANY, None),
    "remote-export-too-long": (CREATE, remote(nla_str(ADDR, "127.0.0.1:1"), nla_str(LEG_EXPORT, "e" * 5000)),
                               ANY, None),
    "remote-settings-on-local-leg": (CREATE, create(legs=()) + nla_nest(LEG, nla_str(SPEC, "/dev/ram2")
                                                                        + nla_u32(TIMEOUT_MS, 1000)),
                                     errno.EINVAL, "remote settings for a local leg"),
    "export-unknown-device": (EXPORT, nla_str(NAME, "nope") + nla_nest(EXP, nla_str(LISTEN, "127.0.0.1:10809")),
                              errno.ENODEV, "no device named nope"),
    "export-no-settings": (EXPORT, nla_str(NAME, "r1"), errno.EINVAL, "missing export settings"),
    "export-no-listen": (EXPORT, nla_str(NAME, "r1") + nla_nest(EXP, nla_str(EXP_NAME, "x")),
                         errno.EINVAL, "missing listen address"),
    "export-bad-listen": (EXPORT, nla_str(NAME, "r1") + nla_nest(EXP, nla_str(LISTEN, "localhost:10809")),
                          errno.EINVAL, "bad listen address"),
    "export-listen-port-0": (EXPORT, nla_str(NAME, "r1") + nla_nest(EXP, nla_str(LISTEN, "127.0.0.1:0")),
                             errno.EINVAL, "bad listen address"),
    "export-bad-network": (EXPORT, nla_str(NAME, "r1") + nla_nest(EXP, nla_str(LISTEN, "127.0.0.1:10809")
                                                                   + nla_str(ALLOW, "10.0.0.0/33")),
                           errno.EINVAL, "bad network"),
    "export-read-only-out-of-range": (EXPORT, nla_str(NAME, "r1") + nla_nest(EXP, nla_str(LISTEN, "127.0.0.1:10809")
                                                                              + nla_u8(READ_ONLY, 7)), ANY, None),
    "export-not-an-address-here": (EXPORT, nla_str(NAME, "r1") + nla_nest(EXP, nla_str(LISTEN, "192.0.2.1:10809")),
                                   ANY, "not an address of this machine"),
    "unexport-not-exported": (UNEXPORT, nla_str(NAME, "r1"), errno.ENOENT, "is not exported"),
    "detach-no-leg-index": (DETACH, nla_str(NAME, "r1"), errno.EINVAL, "missing leg index"),
    "detach-leg-out-of-range": (DETACH, nla_str(NAME, "r1") + nla_u32(LEG_INDEX, 99), errno.ENOENT, "has no leg 99"),
    "detach-leg-index-wrong-size": (DETACH, nla_str(NAME, "r1") + nla_u8(LEG_INDEX, 1), ANY, None),
    "detach-unknown-device": (DETACH, nla_str(NAME, "nope") + nla_u32(LEG_INDEX, 0), errno.ENODEV, "no device named"),
    "attach-in-sync-leg": (ATTACH, nla_str(NAME, "r1") + nla_u32(LEG_INDEX, 0), errno.EINVAL, "is not detached"),
    "attach-full-out-of-range": (ATTACH, nla_str(NAME, "r1") + nla_u32(LEG_INDEX, 1) + nla_u8(FULL, 2), ANY, None),
    "create-region-not-power-of-two": (CREATE, create() + nla_u32(REGION_SIZE, 3000), errno.EINVAL, "power of two"),
    "create-region-too-small": (CREATE, create() + nla_u32(REGION_SIZE, 512), errno.EINVAL, "power of two"),
    "create-region-too-big": (CREATE, create() + nla_u32(REGION_SIZE, 8 << 20), errno.EINVAL, "power of two"),
    "create-region-on-linear": (CREATE, create(target=LINEAR) + nla_u32(REGION_SIZE, 65536),
                                errno.EINVAL, "apply to mirrors"),
    "create-rate-on-linear": (CREATE, create(target=LINEAR) + nla_u32(RESYNC_RATE, 1024),
                              errno.EINVAL, "apply to mirrors"),
    "create-sync-on-linear": (CREATE, create(target=LINEAR) + nla_u8(FULL, 1),
                              errno.EINVAL, "initial sync applies to mirrors"),
    "create-sync-out-of-range": (CREATE, create() + nla_u8(FULL, 2), ANY, None),
    "create-sync-wrong-size": (CREATE, create() + nla_u32(FULL, 1), ANY, None),
    "create-rate-wrong-size": (CREATE, create() + nla_u8(RESYNC_RATE, 1), ANY, None),
    "set-nothing": (SET, nla_str(NAME, "r1"), errno.EINVAL, "nothing to set"),
    "set-unknown-device": (SET, nla_str(NAME, "nope") + nla_u32(RESYNC_MAX, 1024), errno.ENODEV, "no device named"),
    "set-max-wrong-size": (SET, nla_str(NAME, "r1") + nla_u64(RESYNC_MAX, 1024), ANY, None),
    "set-region-not-settable": (SET, nla_str(NAME, "r1") + nla_u32(REGION_SIZE, 65536), ANY, None),
    "set-write-mostly-no-leg": (SET, nla_str(NAME, "r1") + nla_u8(WRITE_MOSTLY, 1),
                                errno.EINVAL, "write-mostly needs a leg index"),
    "set-leg-index-alone": (SET, nla_str(NAME, "r1") + nla_u32(LEG_INDEX, 1),
                            errno.EINVAL, "nothing to set for it"),
    "set-write-mostly-out-of-range": (SET, nla_str(NAME, "r1") + nla_u32(LEG_INDEX, 1) + nla_u8(WRITE_MOSTLY, 2),
                                      ANY, None),
    "set-write-mostly-wrong-size": (SET, nla_str(NAME, "r1") + nla_u32(LEG_INDEX, 1) + nla_u32(WRITE_MOSTLY, 1),
                                    ANY, None),
    # The limits must stay as they were when the leg is refused.
    "set-write-mostly-no-such-leg": (SET, nla_str(NAME, "r1") + nla_u32(RESYNC_MAX, 5) + nla_u32(LEG_INDEX, 99)
                                     + nla_u8(WRITE_MOSTLY, 1), errno.ENOENT, "has no leg 99"),
    "create-write-mostly-on-linear": (CREATE, create(target=LINEAR, legs=())
                                      + nla_nest(LEG, nla_str(SPEC, "/dev/ram2") + nla_u8(LEG_WRITE_MOSTLY, 1)),
                                      errno.EINVAL, "write-mostly applies to mirror legs"),
    "create-write-mostly-out-of-range": (CREATE, create(legs=())
                                         + nla_nest(LEG, nla_str(SPEC, "/dev/ram2") + nla_u8(LEG_WRITE_MOSTLY, 2)),
                                         ANY, None),
    "add-leg-no-leg": (ADD_LEG, nla_str(NAME, "r1"), errno.EINVAL, "missing leg"),
    "add-leg-two-legs": (ADD_LEG, nla_str(NAME, "r1") + leg("/dev/ram2") + leg("/dev/ram3"),
                         errno.EINVAL, "one leg at a time"),
    "add-leg-unknown-device": (ADD_LEG, nla_str(NAME, "nope") + leg("/dev/ram2"), errno.ENODEV, "no device named"),
    "add-leg-no-path": (ADD_LEG, nla_str(NAME, "r1") + nla_nest(LEG, nla_u32(TIMEOUT_MS, 1000)),
                        errno.EINVAL, "has no device path"),
    "add-leg-in-use": (ADD_LEG, nla_str(NAME, "r1") + leg("/dev/ram1"), errno.EINVAL, "is already leg 1"),
    "remove-leg-out-of-range": (REMOVE_LEG, nla_str(NAME, "r1") + nla_u32(LEG_INDEX, 99), errno.ENOENT,
                                "has no leg 99"),
    "remove-leg-no-index": (REMOVE_LEG, nla_str(NAME, "r1"), errno.EINVAL, "missing leg index"),
    "get-no-name": (GET, b"", errno.EINVAL, "missing device name"),
    "get-unknown-device": (GET, nla_str(NAME, "nope"), errno.ENODEV, "no device named nope"),
    "remove-no-name": (REMOVE, b"", errno.EINVAL, "missing device name"),
    "remove-unknown-device": (REMOVE, nla_str(NAME, "nope"), errno.ENODEV, "no device named nope"),
    "unknown-command": (42, nla_str(NAME, "nope"), errno.EOPNOTSUPP, None),
}


def check(s, fam, name):
    """Sends case `name`; returns None if refused as expected, else why not."""
    cmd, attrs, want_errno, want_text = CASES[name]
    reply = s.request(fam.id, cmd, attrs, version=fam.version)
    print(f"# {name}: {reply.line()}")
    if reply.errno >= 0:
        return "accepted, expected an error"
    if want_errno is not None and reply.errno != -want_errno:
        return f"expected errno -{want_errno}"
    if want_text is not None and want_text not in (reply.msg or ""):
        return f"expected a message containing {want_text!r}"
    return None


def devices(s, fam):
    """The devices, as the raw dump messages (stats stripped would be nicer,
    but nothing does I/O meanwhile)."""
    reply = s.request(fam.id, GET, b"", version=fam.version, dump=True)
    return sorted(reply.messages)


def run_all():
    failed = 0
    with GenlSocket() as s:
        fam = s.family("dst")
        before = devices(s, fam)
        for n, name in enumerate(CASES, 1):
            why = check(s, fam, name)
            if why is None and devices(s, fam) != before:
                why = "the set of devices changed"
            if why is None:
                print(f"ok {n} - netlink: {name}, refused, nothing changed")
            else:
                failed += 1
                print(f"not ok {n} - netlink: {name}: {why}")
    return 1 if failed else 0


def main():
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    if sys.argv[1] == "--list":
        print("\n".join(CASES))
        return 0
    if sys.argv[1] == "--all":
        return run_all()
    with GenlSocket() as s:
        why = check(s, s.family("dst"), sys.argv[1])
    if why:
        print(f"{sys.argv[1]}: {why}")
    return 1 if why else 0


if __name__ == "__main__":
    sys.exit(main())
