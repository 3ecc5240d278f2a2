#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""Random requests to the dst generic netlink family (stdlib only).

usage: dst_nl_fuzz.py SEED COUNT

First makes devices for the requests to act on (fz0, a mirror of
/dev/ram2 and /dev/ram3, exported on 127.0.0.1:20000; fz1, linear over
/dev/ram4), unless they exist.  Then sends COUNT requests made from SEED:
requests of every command (devices "fz0".."fz2", legs /dev/ram2 to
/dev/ram5, exports on 127.0.0.1), one in five as they are (with random
values: leg indexes, rates, flags), the others mutated at random -- bytes flipped, attributes dropped,
repeated or truncated, lengths past the end, unknown ids, garbage inside
nests, whole requests of random bytes, unknown commands.  It never names
any other device, so a device the caller made stays out of reach.

Every request must be answered (nl_raw's socket waits 5 s): a refusal
with an errno, or, now and then, success (a mutation may leave a request
valid).  Prints the seed, what came back, and one summary line; exits 1
if a request went unanswered, 2 on usage errors.
"""

import os
import random
import socket
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from nl_raw import GenlSocket, nla, nla_nest, nla_str, nla_u8, nla_u32  # noqa: E402
from dst_nl_cases import (  # noqa: E402
    ADD_LEG, ALLOW, ATTACH, CREATE, DETACH, EXP, EXP_NAME, EXPORT, FULL, GET, LEG, LEG_INDEX, LISTEN, NAME,
    READ_ONLY, REGION_SIZE, REMOVE, REMOVE_LEG, RESYNC_MAX, RESYNC_RATE, SET, TARGET, UNEXPORT,
)
from dst_nl_cases import leg as leg_of  # noqa: E402

NAMES = ("fz0", "fz1", "fz2")
LEGS = ("/dev/ram2", "/dev/ram3", "/dev/ram4", "/dev/ram5")


def leg(r):
    return leg_of(r.choice(LEGS))


def template(r):
    """A well-formed request: (command, attributes)."""
    name = nla_str(NAME, r.choice(NAMES))
    cmd = r.choice((GET, CREATE, REMOVE, EXPORT, UNEXPORT, DETACH, ATTACH, SET, ADD_LEG, REMOVE_LEG))
    if cmd == CREATE:
        attrs = name + nla_u8(TARGET, r.choice((1, 2)))
        attrs += b"".join(leg(r) for _ in range(r.randint(1, 3)))
        if r.random() < 0.3:
            attrs += nla_u32(REGION_SIZE, r.choice((4096, 65536, 3000, 0)))
        if r.random() < 0.3:
            attrs += nla_u32(RESYNC_RATE, r.randint(0, 1 << 20))
        if r.random() < 0.3:
            attrs += nla_u8(FULL, r.randint(0, 2))
        return cmd, attrs
    if cmd == EXPORT:
        inner = nla_str(LISTEN, f"127.0.0.1:{r.randint(20000, 20010)}")
        if r.random() < 0.5:
            inner += nla_str(EXP_NAME, r.choice(("", "a", "x" * 70)))
        if r.random() < 0.3:
            inner += nla_u8(READ_ONLY, r.randint(0, 2))
        if r.random() < 0.5:
            inner += nla_str(ALLOW, r.choice(("127.0.0.0/8", "::1/128", "10.0.0.0/33", "x")))
        return cmd, name + nla_nest(EXP, inner)
    if cmd == UNEXPORT:
        return cmd, name + (nla_nest(EXP, nla_str(EXP_NAME, "a")) if r.random() < 0.5 else b"")
    if cmd in (DETACH, ATTACH, REMOVE_LEG):
        attrs = name + nla_u32(LEG_INDEX, r.randint(0, 17))
        if cmd == ATTACH and r.random() < 0.5:
            attrs += nla_u8(FULL, r.randint(0, 1))
        return cmd, attrs
    if cmd == SET:
        return cmd, name + nla_u32(RESYNC_RATE, r.randint(0, 1 << 20)) + nla_u32(RESYNC_MAX, r.randint(0, 1 << 20))
    if cmd == ADD_LEG:
        return cmd, name + leg(r)
    return cmd, name


def garbage(r, n):
    return bytes(r.getrandbits(8) for _ in range(n))


def mutate(r, attrs):
    """One to three random changes to an attribute stream."""
    b = bytearray(attrs)
    for _ in range(r.randint(1, 3)):
        kind = r.randrange(8)
        if kind == 0 and b:
            for _ in range(r.randint(1, 4)):
                b[r.randrange(len(b))] ^= 1 << r.randrange(8)
        elif kind == 1:
            b = b[: r.randint(0, len(b))]
        elif kind == 2:
            b += nla(r.randint(0, 40), garbage(r, r.randint(0, 48)))
        elif kind == 3:
            b += b[: r.randint(0, len(b))]
        elif kind == 4 and len(b) >= 4:
            # A length field (of the first attribute, or one further on).
            at = r.choice((0, r.randrange(0, len(b) - 3) & ~3))
            b[at : at + 2] = r.randint(0, 0xFFFF).to_bytes(2, "little")
        elif kind == 5:
            b = bytearray(nla_nest(r.randint(0, 40), bytes(b)))
        elif kind == 6:
            b += nla_nest(r.choice((LEG, EXP)), garbage(r, r.randint(0, 64)))
        elif kind == 7:
            b += nla_u32(r.randint(0, 40), r.getrandbits(32))
    return bytes(b)


def main():
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    seed, count = int(sys.argv[1]), int(sys.argv[2])
    r = random.Random(seed)
    refused = done = lost = 0
    errnos = {}
    with GenlSocket() as s:
        fam = s.family("dst")
        for cmd, attrs in (
            (CREATE, nla_str(NAME, "fz0") + nla_u8(TARGET, 2) + leg_of(LEGS[0]) + leg_of(LEGS[1])),
            (CREATE, nla_str(NAME, "fz1") + nla_u8(TARGET, 1) + leg_of(LEGS[2])),
            (EXPORT, nla_str(NAME, "fz0") + nla_nest(EXP, nla_str(LISTEN, "127.0.0.1:20000")
                                                     + nla_str(ALLOW, "127.0.0.0/8"))),
        ):
            s.request(fam.id, cmd, attrs, version=fam.version)
        for i in range(count):
            roll = r.random()
            if roll < 0.05:
                cmd, attrs = r.randint(0, 255), garbage(r, r.randint(0, 96))
            else:
                cmd, attrs = template(r)
                if roll < 0.8:
                    attrs = mutate(r, attrs)
            try:
                reply = s.request(fam.id, cmd, attrs, version=fam.version, dump=(cmd == GET and r.random() < 0.2))
            except (socket.timeout, TimeoutError, OSError) as e:
                lost += 1
                print(f"request {i}: cmd {cmd} attrs {attrs.hex()}: no answer ({e})")
                continue
            if reply.errno < 0:
                refused += 1
                errnos[reply.errno] = errnos.get(reply.errno, 0) + 1
            else:
                done += 1
    print(f"seed {seed}: errnos {dict(sorted(errnos.items()))}")
    print(f"seed {seed}: {count} requests, {refused} refused, {done} done, {lost} unanswered")
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
