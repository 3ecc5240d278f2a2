#!/usr/bin/env python3
"""Render the dst benchmark's results file as a table.

usage: bench-report.py RESULTS [--ratio A/B]...

RESULTS has one measurement per line, "CONFIG SHAPE ROUND VALUE UNIT"
(written by scripts/bench-guest.sh); lines starting with "#" are metadata
and printed as the header.  The table shows the median per (config, shape),
configurations in the order they first appear, ratio columns of medians
(default: dst/md, dst/raw, dstnbd/nbd, dstnbd/nbd2, mixwm/mix, exp/qnbd,
exp/kitfile, resync/dd, dstresync/dstidle and netresync/nbdcopy, those whose
configurations are present),
the per-round values with their spread, and the verdict on the targets.
It is a
report: missed targets do not change the exit status (1 only for a
malformed file).
"""

import argparse
import statistics
import sys


def export_shape(s, clients):
    """Whether s is a 4k QD32 or 1M shape run by that many fio clients
    (two: the -2j shapes)."""
    base = s[:-len("-2j")] if s.endswith("-2j") else s
    return ("qd32" in base or "-1m-" in base) and (s != base) == (clients == 2)


# (label, numerator, denominator, threshold, shape filter)
TARGETS = [
    ("dst/md >= 1.00 on every shape", "dst", "md", 1.00, lambda s: True),
    ("mirror randread >= 0.90 x raw", "dst", "raw", 0.90,
     lambda s: s.startswith("randread")),
    ("remote leg >= 1.00 x kernel nbd on every shape", "dstnbd", "nbd", 1.00,
     lambda s: True),
    ("remote leg >= 1.20 x kernel nbd on 1M sequential", "dstnbd", "nbd", 1.20,
     lambda s: "-1m-" in s),
    # The export's target, with one fio nbd client (the target's shapes) and
    # with two (-2j): one client uses a whole vCPU, so in wall-clock time
    # the one-client rows measure the client more than the server.
    ("export >= 1.30 x qemu-nbd, 1 client (4k QD32, 1M)", "exp", "qnbd",
     1.30, lambda s: export_shape(s, 1)),
    ("export >= 1.30 x nbdkit file, 1 client (4k QD32, 1M)", "exp",
     "kitfile", 1.30, lambda s: export_shape(s, 1)),
    ("export >= 1.30 x qemu-nbd, 2 clients (4k QD32, 1M)", "exp", "qnbd",
     1.30, lambda s: export_shape(s, 2)),
    ("export >= 1.30 x nbdkit file, 2 clients (4k QD32, 1M)", "exp",
     "kitfile", 1.30, lambda s: export_shape(s, 2)),
    ("idle resync >= 0.80 x dd copy", "resync", "dd", 0.80,
     lambda s: s == "copy-1g"),
    ("foreground during resync >= 0.70 x without", "dstresync", "dstidle", 0.70,
     lambda s: True),
]


def parse(path):
    meta, rows = [], []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            if line.startswith("#"):
                meta.append(line.lstrip("#").strip())
                continue
            fields = line.split()
            if len(fields) != 5:
                sys.exit(f"{path}:{n}: expected CONFIG SHAPE ROUND VALUE UNIT")
            config, shape, rnd, value, unit = fields
            try:
                rows.append((config, shape, int(rnd), float(value), unit))
            except ValueError:
                sys.exit(f"{path}:{n}: bad round or value")
    return meta, rows


def fmt_value(v, unit):
    if unit == "MiB/s" and v < 100:
        return f"{v:.1f}"
    return f"{v:.0f}"


def fmt_short(v):
    """Compact number for the per-round lines: 12345 -> 12.3k."""
    if v >= 100000:
        return f"{v / 1000:.0f}k"
    if v >= 10000:
        return f"{v / 1000:.1f}k"
    if v >= 100:
        return f"{v:.0f}"
    return f"{v:.1f}"


def ordered_unique(items):
    return list(dict.fromkeys(items))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results")
    ap.add_argument("--ratio", action="append", metavar="A/B",
                    help="ratio column of medians (repeatable)")
    args = ap.parse_args()

    meta, rows = parse(args.results)
    if not rows:
        sys.exit(f"{args.results}: no measurements")
    configs = ordered_unique(r[0] for r in rows)
    shapes = ordered_unique(r[1] for r in rows)

    values = {}   # (config, shape) -> [(round, value)]
    units = {}    # shape -> unit
    for config, shape, rnd, value, unit in rows:
        values.setdefault((config, shape), []).append((rnd, value))
        if units.setdefault(shape, unit) != unit:
            sys.exit(f"{args.results}: shape {shape} has units "
                     f"{units[shape]} and {unit}")
    median = {k: statistics.median(v for _, v in vs) for k, vs in values.items()}

    ratios = []
    for r in args.ratio or ["dst/md", "dst/raw", "dstnbd/nbd", "dstnbd/nbd2", "mixwm/mix", "exp/qnbd",
                            "exp/kitfile", "resync/dd", "dstresync/dstidle",
                            "netresync/nbdcopy"]:
        a, _, b = r.partition("/")
        if not a or not b:
            sys.exit(f"bad --ratio {r!r}: want A/B")
        if a in configs and b in configs:
            ratios.append((a, b))

    def ratio(a, b, shape):
        x, y = median.get((a, shape)), median.get((b, shape))
        if x is None or y is None or y <= 0:
            return None
        return x / y

    for m in meta:
        print(m)
    if meta:
        print()

    sw = max(len("shape"), *(len(s) for s in shapes))
    cells = {k: f"{fmt_value(m, units[k[1]])} {units[k[1]]}"
             for k, m in median.items()}
    cw = max(12, *(len(c) for c in cells.values()), *(len(c) for c in configs))
    head = f"{'shape':<{sw}}  " + "  ".join(f"{c:<{cw}}" for c in configs)
    rw = [max(7, len(a) + 1 + len(b)) for a, b in ratios]
    head += "".join(f"  {a + '/' + b:>{w}}" for (a, b), w in zip(ratios, rw))
    print(head)
    for s in shapes:
        line = f"{s:<{sw}}  " + "  ".join(
            f"{cells.get((c, s), '-'):<{cw}}" for c in configs)
        for (a, b), w in zip(ratios, rw):
            q = ratio(a, b, s)
            line += f"  {'-' if q is None else f'{q:.2f}':>{w}}"
        print(line)

    print()
    print("per round (in round order), spread = (max - min) / median:")
    for s in shapes:
        parts = []
        for c in configs:
            vs = values.get((c, s))
            if not vs:
                continue
            nums = [v for _, v in sorted(vs)]
            m = median[(c, s)]
            spread = (max(nums) - min(nums)) / m * 100 if m > 0 else 0.0
            parts.append(f"{c} {'/'.join(fmt_short(v) for v in nums)}"
                         f" ({spread:.0f}%)")
        print(f"{s:<{sw}}  " + "   ".join(parts))

    print()
    verdicts = []
    for label, a, b, threshold, wanted in TARGETS:
        checked = [(s, ratio(a, b, s)) for s in shapes if wanted(s)]
        checked = [(s, q) for s, q in checked if q is not None]
        if not checked:
            verdicts.append(f"{label}: n/a")
            continue
        misses = [(s, q) for s, q in checked if q < threshold]
        if misses:
            print(f"miss {a}/{b} < {threshold:.2f}: " + ", ".join(
                f"{s} {q:.3f}" for s, q in misses))
            verdicts.append(f"{label}: MISS ({len(misses)} of {len(checked)})")
        else:
            verdicts.append(f"{label}: PASS")
    print("target: " + "; ".join(verdicts))


if __name__ == "__main__":
    main()
