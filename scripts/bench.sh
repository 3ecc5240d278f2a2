#!/usr/bin/env bash
# The dst benchmark (make bench): dst against a raw brd RAM disk and md
# raid1, in one VM run on the bench kernel (no lock debugging).
#
# usage: scripts/bench.sh
#
# Builds (or reuses) the bench kernel and a dst.ko built for it, then boots
# one guest that runs scripts/bench-guest.sh, which measures and prints the
# table (medians over rounds, ratios, per-round values, targets).  The
# guest's output, its raw results and the kernel console log are kept in a
# new /tmp/dst-bench.* directory; re-render a table with
#     scripts/bench-report.py /tmp/dst-bench.*/results
# Knobs (passed into the guest, see bench-guest.sh): DST_BENCH_ROUNDS (3),
# DST_BENCH_RUNTIME (5 s), DST_BENCH_SIZE_MB (256), DST_BENCH_ENGINE (auto),
# DST_BENCH_CONFIGS, DST_BENCH_SHAPES, DST_BENCH_EXPORT_SHAPES;
# DST_BENCH_TIMEOUT (3600 s) limits the VM; DST_BENCH_APPEND adds to the
# guest kernel's command line; DST_BENCH_ICOUNT=1 runs the guest with
# instruction-counted time (vm-run --icount): slower, but the same build
# gives the same numbers within a percent or two (a few percent over the
# network), whatever else the host is doing; the resync rows are skipped.
#
# Exit status: 0 if everything ran (missed targets are reported, not
# failed), otherwise non-zero (vm-run's: 124 timeout, 125 kernel splat).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
repo=$(dirname "$here")
start=$SECONDS

msg() { echo "bench: $*" >&2; }

dstctl=$repo/userspace/target/release/dstctl
[ -x "$dstctl" ] || { msg "no $dstctl: run make dstctl (or make bench)"; exit 1; }

msg "bench kernel (the first build takes several minutes)"
kdir=$("$here/build-kernel.sh" bench | tail -n 1)
msg "bench kernel: $kdir"
ko=$("$here/build-module.sh" bench | tail -n 1)
[ -f "$ko" ] || { msg "build-module.sh printed no module path"; exit 1; }
msg "bench module: $ko"

# What the module was built from, for the report (read-only git commands).
rev=$(git -C "$repo" --no-optional-locks rev-parse --short HEAD 2>/dev/null || echo unknown)
if ! git -C "$repo" --no-optional-locks diff --quiet HEAD -- dst userspace/dst-proto Kbuild 2>/dev/null; then
	rev+=" + uncommitted changes"
fi

out=$(mktemp -d /tmp/dst-bench.XXXXXX)
export DST_KO=$ko DST_DSTCTL=$dstctl DST_BENCH_REV="built from $rev"
rc=0
# The module path is an argument (not only DST_KO) so that vm-run makes its
# directory visible in the guest.
"$here/vm-run" --kdir "$kdir" --mem 4096 --cpus 2 --timeout "${DST_BENCH_TIMEOUT:-3600}" \
	${DST_BENCH_ICOUNT:+--icount} \
	--log "$out/console.log" ${DST_BENCH_APPEND:+--append "$DST_BENCH_APPEND"} \
	-- "$here/bench-guest.sh" --ko "$ko" 2>&1 | tee "$out/output" ||
	rc=$?

sed -n '/^==== raw results/,/^==== end of raw results/{/^====/d;p}' "$out/output" >"$out/results"
elapsed=$((SECONDS - start))
echo
if [ "$rc" -ne 0 ]; then
	msg "FAILED (status $rc) after $((elapsed / 60))m$((elapsed % 60))s; output and console log in $out/"
	exit "$rc"
fi
msg "done in $((elapsed / 60))m$((elapsed % 60))s; raw results: $out/results" \
	"(scripts/bench-report.py $out/results), output: $out/output, console: $out/console.log"
