#!/usr/bin/env bash
# The dst benchmark, inside the VM (started by scripts/bench.sh; not by hand).
#
# usage: bench-guest.sh [--ko PATH] [--force]
#   --ko PATH   dst.ko to insmod (default: $DST_KO); give it as an argument so
#               that vm-run makes its directory visible in the guest
#   --force     run outside the VM (it loads modules and overwrites RAM disks)
#
# Environment (DST_* variables pass from the host through vm-run):
#   DST_BENCH_ROUNDS   rounds (default 3); the report shows the median
#   DST_BENCH_RUNTIME  seconds per fio run after a 1 s ramp (default 5)
#   DST_BENCH_SIZE_MB  test region per device (default 256, at least 256)
#   DST_BENCH_ENGINE   io_uring, libaio or auto (default: io_uring if it works)
#   DST_BENCH_CONFIGS  configurations to run (default: all below, and
#                      "resync" and "netresync": the resync measurements,
#                      run last)
#   DST_BENCH_SHAPES   shapes to run (default: all of SHAPES below)
#   DST_BENCH_EXPORT_SHAPES  shapes run on the NBD servers (exp, qnbd,
#                      kitfile) only, after SHAPES (default: the four -2j
#                      shapes; "" for none)
#   DST_DSTCTL         dstctl binary (default: the repo's release build)
#   DST_BENCH_REV      what dst.ko was built from, for the report header
#
# Structure: a configuration NAME is a pair of functions, setup_NAME (make
# the device, fill the test region, set TARGET) and teardown_NAME (idempotent,
# also called from the exit trap).  Each round runs every shape on every
# configuration, rotating the configuration order by one per round, with
# run_shape TARGET SHAPE; every measurement is one line of $RESULTS:
#     CONFIG SHAPE ROUND VALUE UNIT
# (lines starting with "#" are metadata, "# key: value"), rendered at the end
# by bench-report.py.  A new configuration adds setup_/teardown_ functions and
# its name to CONFIGS (and to cleanup); a measurement that is not a fio shape
# (e.g. resync throughput) appends its own lines with record.
#
# Exit status: 0 when every measurement ran (missed targets are reported,
# not failed), 1 if anything failed to run.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
repo=$(dirname "$here")

ROUNDS=${DST_BENCH_ROUNDS:-3}
RUNTIME=${DST_BENCH_RUNTIME:-5}
SIZE_MB=${DST_BENCH_SIZE_MB:-256}
ENGINE=${DST_BENCH_ENGINE:-auto}
CONFIGS=${DST_BENCH_CONFIGS:-raw md dst nbd nbd2 dstnbd mix mixwm exp qnbd kitfile resync netresync}
SHAPES=${DST_BENCH_SHAPES:-randread-4k-qd1 randread-4k-qd32 randwrite-4k-qd1 randwrite-4k-qd32 read-1m-qd8 write-1m-qd8}
EXPORT_SHAPES=${DST_BENCH_EXPORT_SHAPES-randread-4k-qd32-2j randwrite-4k-qd32-2j read-1m-qd8-2j write-1m-qd8-2j}
DSTCTL=${DST_DSTCTL:-$repo/userspace/target/release/dstctl}
KO=${DST_KO:-}

# brd: three 512 MiB RAM disks; raw uses ram0, md and dst the other two.
BRD_NR=3
BRD_MB=512
RAW_DEV=/dev/ram0
MIRROR_LEGS=(/dev/ram1 /dev/ram2)
MD_DEV=/dev/md0
DST_NAME=bench
# The NBD peers: one nbdkit memory server, used by the kernel's nbd client
# with its default of one connection (nbd) and with two (nbd2, for
# reference), and by a dst device over one remote leg (dstnbd), which opens
# two connections (its default, as nbdkit allows several).
# A mirror of a RAM disk (ram1) and that server (mix), and the same with
# the remote leg write-mostly (mixwm): what keeping reads local is worth.
NBD_PORT=10810
NBD_DEV=/dev/nbd0
NBDKIT_PID=''
UNLOAD_NBD=0
# The export peers: the same RAM disk (ram0) served by dst's export (exp,
# over a linear dst device), qemu-nbd (qnbd) and nbdkit's file plugin
# (kitfile), each read and written by fio's nbd engine.
EXP_PORT=10811
EXP_URI=nbd://127.0.0.1:$EXP_PORT/
EXP_PID=

# The resync measurements, after the rounds above: brd is reloaded with two
# 1 GiB RAM disks, a mirror of both is made, and each round measures
#   dd/copy-1g         dd copying the source leg to the other (1 MiB, direct)
#   resync/copy-1g     a full resync of the same (detach, attach --full),
#                      idle, at the speed the kernel logs when it ends
#   dstidle/SHAPE      the mirror's IOPS, no resync
#   dstresync/SHAPE    the same during a full resync at the default limits
#   resyncload/copy-1g-SHAPE  the resync's speed meanwhile
RESYNC_MB=1024
RESYNC_LEGS=(/dev/ram0 /dev/ram1)
RESYNC_NAME=benchrs
RESYNC_SHAPES="randwrite-4k-qd32 randread-4k-qd32"
# The resync over a network, last: brd is reloaded with one RAM disk of
# NETRESYNC_MB, served too by an nbdkit memory server of the same size on
# loopback, where netem delays every packet by NETRESYNC_DELAY (a round trip
# of twice that); each round measures
#   nbdcopy/copy-net    nbdcopy copying the RAM disk to the server, with its
#                       defaults (4 connections, 64 requests in flight each;
#                       -S 0: zeroes are written too)
#   netresync/copy-net  the full resync of a new mirror of the RAM disk and
#                       the server (create --sync), at the speed the kernel
#                       logs when it ends
NETRESYNC_MB=256
NETRESYNC_DELAY=1ms
NETRESYNC_PORT=10812
NETRESYNC_NAME=benchnr
NETRESYNC_PID=

WORK='' RESULTS='' TARGET='' UNLOAD_RAID1=0 T0=$SECONDS

msg() { printf '[%4ds] %s\n' $((SECONDS - T0)) "$*"; }
die() {
	echo "bench-guest: ERROR: $*" >&2
	exit 1
}

# shape_spec SHAPE: print "RW BS IODEPTH JOBS UNIT" for fio (IODEPTH per
# job).  SHAPE-2j is SHAPE with its queue depth split over two fio jobs,
# each with its own connection to an NBD server: one fio nbd client uses a
# whole vCPU, so with one job the export rows measure the client more than
# the server; with two, both vCPUs are busy and what a server costs per
# request shows.
shape_spec() {
	local rw bs qd unit
	case $1 in
	*-2j)
		read -r rw bs qd _ unit < <(shape_spec "${1%-2j}") || return 1
		echo "$rw $bs $((qd / 2)) 2 $unit"
		return
		;;
	randread-4k-qd1) echo "randread 4k 1 1 IOPS" ;;
	randread-4k-qd32) echo "randread 4k 32 1 IOPS" ;;
	randwrite-4k-qd1) echo "randwrite 4k 1 1 IOPS" ;;
	randwrite-4k-qd32) echo "randwrite 4k 32 1 IOPS" ;;
	read-1m-qd8) echo "read 1m 8 1 MiB/s" ;;
	write-1m-qd8) echo "write 1m 8 1 MiB/s" ;;
	*) return 1 ;;
	esac
}

# ---- fio ------------------------------------------------------------------

# fio_value JSON UNIT: print the result of one fio job (group-reported) in
# UNIT (IOPS, or MiB/s from fio's KiB/s "bw"); fail on an fio error or if
# no I/O was done.
fio_value() {
	python3 - "$1" "$2" <<-'EOF'
		import json, sys
		path, unit = sys.argv[1:]
		with open(path) as f:
		    text = f.read()
		# fio may print notes before the JSON object.
		d = json.loads(text[text.index("{"):])
		job = d["jobs"][0]
		if job.get("error", 0):
		    sys.exit(f"fio job error {job['error']}")
		rw = job["job options"].get("rw", "")
		side = job["read" if "read" in rw else "write"]
		if side["io_bytes"] <= 0:
		    sys.exit("fio did no I/O")
		if unit == "IOPS":
		    print(f"{side['iops']:.0f}")
		elif unit == "MiB/s":
		    print(f"{side['bw'] / 1024:.1f}")
		else:
		    sys.exit(f"unknown unit {unit}")
	EOF
}

# fio_run NAME ARGS...: run fio with the common options, output in
# $WORK/NAME.json; print the log and fail if fio fails.
fio_run() {
	local name=$1
	shift
	if ! fio --name="$name" --ioengine="$ENGINE" --direct=1 --numjobs=1 \
		--group_reporting --output-format=json --output="$WORK/$name.json" \
		"$@" >"$WORK/$name.log" 2>&1; then
		cat "$WORK/$name.log" "$WORK/$name.json" >&2 2>/dev/null || true
		die "fio $name failed: fio $*"
	fi
}

# target_args TARGET: fio options for a block device or an nbd:// URI
# (fio's nbd engine; a later --ioengine wins over fio_run's).
target_args() {
	case $1 in
	nbd://*) echo "--ioengine=nbd --uri=$1" ;;
	*) echo "--filename=$1" ;;
	esac
}

# run_shape TARGET SHAPE: measure SHAPE on TARGET (a block device or an
# NBD URI); print "VALUE UNIT".
run_shape() {
	local target=$1 shape=$2 spec rw bs qd jobs unit name value
	spec=$(shape_spec "$shape") || die "unknown shape '$shape'"
	read -r rw bs qd jobs unit <<<"$spec"
	name=$shape.$RANDOM
	# shellcheck disable=SC2046 # word splitting wanted
	fio_run "$name" $(target_args "$target") --rw="$rw" --bs="$bs" --iodepth="$qd" --numjobs="$jobs" \
		--size="${SIZE_MB}M" --time_based --runtime="$RUNTIME" --ramp_time=1 \
		--randrepeat=0 --norandommap
	value=$(fio_value "$WORK/$name.json" "$unit") || die "cannot read fio's result for $shape on $target"
	rm -f "$WORK/$name.json" "$WORK/$name.log"
	echo "$value $unit"
}

# shapes_of CONFIG: the shapes CONFIG runs.
shapes_of() {
	case $1 in
	exp | qnbd | kitfile) echo "$SHAPES $EXPORT_SHAPES" ;;
	*) echo "$SHAPES" ;;
	esac
}

# prefill DEV: write the test region once, so that reads hit allocated brd
# pages (brd answers reads of never-written pages with zeroes, cheaply).
prefill() {
	# shellcheck disable=SC2046 # word splitting wanted
	fio_run "fill" $(target_args "$1") --rw=write --bs=1M --iodepth=8 --size="${SIZE_MB}M"
}

# record CONFIG SHAPE ROUND VALUE UNIT
record() {
	echo "$*" >>"$RESULTS"
}

# ---- configurations -------------------------------------------------------

setup_raw() {
	prefill "$RAW_DEV"
	TARGET=$RAW_DEV
}
teardown_raw() { :; }

setup_md() {
	mdadm --zero-superblock "${MIRROR_LEGS[@]}" >/dev/null 2>&1 || true
	mdadm --create "$MD_DEV" --level=1 --raid-devices=2 --metadata=1.2 \
		--assume-clean --bitmap=none --run --quiet "${MIRROR_LEGS[@]}" ||
		die "mdadm --create failed"
	wait_bdev "$MD_DEV"
	prefill "$MD_DEV"
	TARGET=$MD_DEV
}
teardown_md() {
	[ -e /sys/block/md0 ] || return 0
	mdadm --stop "$MD_DEV" >/dev/null 2>&1 || { echo "bench-guest: mdadm --stop failed" >&2; return 1; }
	mdadm --zero-superblock "${MIRROR_LEGS[@]}" >/dev/null 2>&1 || true
}

# dst_make NAME CREATE-ARGS...: a dst device made by `dstctl create`
# (which prints its node), filled, as the target.
dst_make() {
	local name=$1 dev
	shift
	dev=$("$DSTCTL" create "$name" "$@") || die "dstctl create $name $* failed"
	wait_bdev "$dev"
	prefill "$dev"
	TARGET=$dev
}
# dst_remove NAME: removes dst device NAME, if the module and it are there.
dst_remove() {
	grep -q '^dst ' /proc/modules || return 0
	"$DSTCTL" status "$1" >/dev/null 2>&1 || return 0
	"$DSTCTL" remove "$1" >/dev/null || { echo "bench-guest: dstctl remove $1 failed" >&2; return 1; }
}

setup_dst() { dst_make "$DST_NAME" --mirror "${MIRROR_LEGS[@]}"; }
teardown_dst() { dst_remove "$DST_NAME"; }

# attach_nbd N: the kernel's nbd client with N connections.
attach_nbd() {
	nbd-client -b 512 -C "$1" -N '' 127.0.0.1 "$NBD_PORT" "$NBD_DEV" >/dev/null 2>&1 ||
		die "nbd-client -C $1 failed to attach $NBD_DEV"
	wait_bdev "$NBD_DEV"
	prefill "$NBD_DEV"
	TARGET=$NBD_DEV
}
setup_nbd() { attach_nbd 1; }
teardown_nbd() {
	[ -e /sys/block/nbd0/pid ] || return 0
	nbd-client -d "$NBD_DEV" >/dev/null 2>&1 || { echo "bench-guest: nbd-client -d failed" >&2; return 1; }
}

setup_nbd2() { attach_nbd 2; }
teardown_nbd2() { teardown_nbd; }

setup_dstnbd() { dst_make "${DST_NAME}nbd" --linear "nbd://127.0.0.1:$NBD_PORT/"; }
teardown_dstnbd() { dst_remove "${DST_NAME}nbd"; }

setup_mix() { dst_make "${DST_NAME}mix" --mirror "${MIRROR_LEGS[0]}" "nbd://127.0.0.1:$NBD_PORT/"; }
teardown_mix() { dst_remove "${DST_NAME}mix"; }
setup_mixwm() {
	dst_make "${DST_NAME}mixwm" --mirror "${MIRROR_LEGS[0]}" "nbd://127.0.0.1:$NBD_PORT/" --write-mostly 1
}
teardown_mixwm() { dst_remove "${DST_NAME}mixwm"; }

wait_uri() {
	local i
	for ((i = 0; i < 50; i++)); do
		nbdinfo --size "$1" >/dev/null 2>&1 && return 0
		sleep 0.2
	done
	die "nothing serves $1"
}

setup_exp() {
	"$DSTCTL" create "${DST_NAME}exp" --linear "$RAW_DEV" >/dev/null || die "dstctl create (export) failed"
	"$DSTCTL" export "${DST_NAME}exp" --listen "127.0.0.1:$EXP_PORT" --name '' >/dev/null ||
		die "dstctl export failed"
	wait_uri "$EXP_URI"
	prefill "$EXP_URI"
	TARGET=$EXP_URI
}
teardown_exp() {
	grep -q '^dst ' /proc/modules || return 0
	"$DSTCTL" unexport "${DST_NAME}exp" >/dev/null 2>&1 || true
	dst_remove "${DST_NAME}exp"
}

setup_qnbd() {
	qemu-nbd -f raw -b 127.0.0.1 -p "$EXP_PORT" --persistent --shared=16 --cache=none --aio=native \
		"$RAW_DEV" >"$WORK/qemu-nbd.log" 2>&1 &
	EXP_PID=$!
	wait_uri "$EXP_URI"
	prefill "$EXP_URI"
	TARGET=$EXP_URI
}
teardown_qnbd() {
	[ -n "$EXP_PID" ] || return 0
	kill "$EXP_PID" 2>/dev/null
	wait "$EXP_PID" 2>/dev/null
	EXP_PID=''
}

setup_kitfile() {
	nbdkit -f -i 127.0.0.1 -p "$EXP_PORT" file "$RAW_DEV" cache=none >"$WORK/nbdkit-file.log" 2>&1 &
	EXP_PID=$!
	wait_uri "$EXP_URI"
	prefill "$EXP_URI"
	TARGET=$EXP_URI
}
teardown_kitfile() {
	teardown_qnbd
}

# ---- resync ----------------------------------------------------------------

teardown_resync() { dst_remove "$RESYNC_NAME"; }

# Reload brd with the two resync legs, fill them (brd reads pages never
# written as zeroes, cheaply), and make the mirror.
setup_resync_all() {
	[ ! -d /sys/module/brd ] || rmmod brd || die "brd is busy"
	modprobe brd rd_nr=2 rd_size=$((RESYNC_MB * 1024)) max_part=0 || die "modprobe brd (resync) failed"
	wait_bdev "${RESYNC_LEGS[1]}"
	# Both legs: the first dd would otherwise pay for the target's pages.
	fio_run "fill-resync0" --filename="${RESYNC_LEGS[0]}" --rw=write --bs=1M --iodepth=8 --size="${RESYNC_MB}M"
	fio_run "fill-resync1" --filename="${RESYNC_LEGS[1]}" --rw=write --bs=1M --iodepth=8 --size="${RESYNC_MB}M"
	TARGET=$("$DSTCTL" create "$RESYNC_NAME" --mirror "${RESYNC_LEGS[@]}") || die "dstctl create (resync) failed"
	wait_bdev "$TARGET"
}

# resync_leg1 FIELD [NAME]: a field of leg 1 of the resync mirror (or NAME).
resync_leg1() {
	"$DSTCTL" --json status "${2:-$RESYNC_NAME}" | python3 -c "import json, sys; print(json.load(sys.stdin)['legs'][1]['$1'])"
}

# Leg 1 is detached and attached again, to be copied whole.
resync_restart() {
	"$DSTCTL" detach "$RESYNC_NAME" 1 >/dev/null || die "dstctl detach failed"
	"$DSTCTL" attach "$RESYNC_NAME" 1 --full >/dev/null || die "dstctl attach failed"
}

# Waits (at most 600 s) until leg 1 of the resync mirror (or NAME) is in
# sync; prints the speed the kernel logged for the resync that ended (before
# the leg showed in sync), in MiB/s.
resync_wait() {
	local name=${1:-$RESYNC_NAME} i kibs
	for ((i = 0; i < 3000; i++)); do
		[ "$(resync_leg1 state "$name")" = in-sync ] && break
		sleep 0.2
	done
	[ "$(resync_leg1 state "$name")" = in-sync ] || die "the resync of $name did not end in 600 s"
	kibs=$(dmesg | sed -n "s/.*dst: $name: leg 1 is in sync again (.* KiB copied in .* ms, \([0-9]*\) KiB\/s)/\1/p" | tail -n 1)
	[ -n "$kibs" ] || die "no resync speed in dmesg"
	awk -v k="$kibs" 'BEGIN { printf "%.1f\n", k / 1024 }'
}

resync_round() {
	local round=$1 t0 t1 v s d0 d1 out value unit
	t0=${EPOCHREALTIME/./}
	dd if="${RESYNC_LEGS[0]}" of="${RESYNC_LEGS[1]}" bs=1M count="$RESYNC_MB" iflag=direct oflag=direct \
		status=none || die "dd failed"
	t1=${EPOCHREALTIME/./}
	v=$(awk -v mb="$RESYNC_MB" -v us=$((t1 - t0)) 'BEGIN { printf "%.1f\n", mb / (us / 1e6) }')
	record dd copy-1g "$round" "$v" MiB/s
	msg "round $round dd copy-1g: $v MiB/s"
	resync_restart
	v=$(resync_wait)
	record resync copy-1g "$round" "$v" MiB/s
	msg "round $round resync copy-1g (idle): $v MiB/s"
	for s in $RESYNC_SHAPES; do
		out=$(run_shape "$TARGET" "$s")
		read -r value unit <<<"$out"
		record dstidle "$s" "$round" "$value" "$unit"
		msg "round $round dstidle $s: $value $unit"
		# The load starts first: a resync that starts on an idle device
		# goes at full speed (a 1 GiB one may end before fio starts, or
		# once it has ended).  The resync starts within fio's 1 s ramp,
		# which is not measured, and its speed is sampled while fio runs.
		run_shape "$TARGET" "$s" >"$WORK/shape.out" &
		sleep 0.5
		resync_restart
		t0=${EPOCHREALTIME/./}
		d0=$(resync_leg1 resync_done)
		sleep $((RUNTIME - 1))
		d1=$(resync_leg1 resync_done)
		t1=${EPOCHREALTIME/./}
		[ "$(resync_leg1 state)" = resyncing ] || die "the resync under load ended before the load"
		wait $! || die "fio $s during the resync failed"
		read -r value unit <"$WORK/shape.out"
		record dstresync "$s" "$round" "$value" "$unit"
		msg "round $round dstresync $s: $value $unit"
		v=$(awk -v b=$((d1 - d0)) -v us=$((t1 - t0)) 'BEGIN { printf "%.1f\n", b / 1048576 / (us / 1e6) }')
		record resyncload "copy-1g-$s" "$round" "$v" MiB/s
		msg "round $round resync during $s: $v MiB/s"
		resync_finish
	done
}

# ---- netresync ---------------------------------------------------------------

teardown_netresync() {
	dst_remove "$NETRESYNC_NAME" || return 1
	! tc qdisc show dev lo 2>/dev/null | grep -q netem || tc qdisc del dev lo root || return 1
	if [ -n "$NETRESYNC_PID" ]; then
		kill "$NETRESYNC_PID" 2>/dev/null
		wait "$NETRESYNC_PID" 2>/dev/null
		NETRESYNC_PID=
	fi
	return 0
}

setup_netresync_all() {
	local uri=nbd://127.0.0.1:$NETRESYNC_PORT/ i
	[ ! -d /sys/module/brd ] || rmmod brd || die "brd is busy"
	modprobe brd rd_nr=1 rd_size=$((NETRESYNC_MB * 1024)) max_part=0 || die "modprobe brd (netresync) failed"
	wait_bdev "$RAW_DEV"
	fio_run "fill-netresync" --filename="$RAW_DEV" --rw=write --bs=1M --iodepth=8 --size="${NETRESYNC_MB}M"
	nbdkit -f -i 127.0.0.1 -p "$NETRESYNC_PORT" memory "${NETRESYNC_MB}M" >"$WORK/nbdkit-nr.log" 2>&1 &
	NETRESYNC_PID=$!
	for ((i = 0; i < 50; i++)); do
		nbdinfo --size "$uri" >/dev/null 2>&1 && break
		sleep 0.2
	done
	nbdinfo --size "$uri" >/dev/null 2>&1 || die "nbdkit (netresync) did not start"
	tc qdisc add dev lo root netem delay "$NETRESYNC_DELAY" || die "tc netem failed"
}

netresync_round() {
	local round=$1 uri=nbd://127.0.0.1:$NETRESYNC_PORT/ t0 t1 v
	t0=${EPOCHREALTIME/./}
	nbdcopy -S 0 "$RAW_DEV" "$uri" || die "nbdcopy failed"
	t1=${EPOCHREALTIME/./}
	v=$(awk -v mb="$NETRESYNC_MB" -v us=$((t1 - t0)) 'BEGIN { printf "%.1f\n", mb / (us / 1e6) }')
	record nbdcopy copy-net "$round" "$v" MiB/s
	msg "round $round nbdcopy copy-net: $v MiB/s"
	"$DSTCTL" create "$NETRESYNC_NAME" --mirror "$RAW_DEV" "$uri" --sync >/dev/null ||
		die "dstctl create (netresync) failed"
	v=$(resync_wait "$NETRESYNC_NAME")
	"$DSTCTL" remove "$NETRESYNC_NAME" >/dev/null || die "dstctl remove (netresync) failed"
	record netresync copy-net "$round" "$v" MiB/s
	msg "round $round netresync copy-net: $v MiB/s"
}

# Lets the resync finish at full speed, then restores the default limit.
resync_finish() {
	"$DSTCTL" set "$RESYNC_NAME" --resync-rate 0 >/dev/null || die "dstctl set failed"
	resync_wait >/dev/null
	"$DSTCTL" set "$RESYNC_NAME" --resync-rate "$RESYNC_DEFAULT_RATE" >/dev/null || die "dstctl set failed"
}

# The NBD server, when an NBD configuration is measured.
start_nbdkit() {
	case " $CONFIGS " in *" nbd "* | *" nbd2 "* | *" dstnbd "* | *" mix "* | *" mixwm "*) ;; *) return 0 ;; esac
	command -v nbdkit >/dev/null || die "nbdkit missing"
	nbdkit -f -i 127.0.0.1 -p "$NBD_PORT" memory $((SIZE_MB + 64))M >"$WORK/nbdkit.log" 2>&1 &
	NBDKIT_PID=$!
	local i
	for ((i = 0; i < 50; i++)); do
		nbdinfo --size "nbd://127.0.0.1:$NBD_PORT/" >/dev/null 2>&1 && break
		sleep 0.2
	done
	nbdinfo --size "nbd://127.0.0.1:$NBD_PORT/" >/dev/null 2>&1 || die "nbdkit did not start"
	[ -d /sys/module/nbd ] || UNLOAD_NBD=1
	modprobe nbd nbds_max=1 || die "modprobe nbd failed"
}

# wait_bdev DEV: the node appears asynchronously (devtmpfs).
wait_bdev() {
	local i
	for ((i = 0; i < 50; i++)); do
		[ -b "$1" ] && return 0
		sleep 0.1
	done
	die "$1 did not appear"
}

# ---- setup and teardown of the whole run ----------------------------------

setup_all() {
	[ -n "$KO" ] || die "no module: give --ko PATH or DST_KO"
	[ -f "$KO" ] || die "no module at $KO"
	[ -x "$DSTCTL" ] || die "no dstctl at $DSTCTL (make dstctl)"
	command -v fio >/dev/null || die "fio missing"
	command -v mdadm >/dev/null || die "mdadm missing"
	WORK=$(mktemp -d /tmp/dst-bench.XXXXXX)
	RESULTS=$WORK/results
	mkdir -p /run/mdadm
	[ ! -d /sys/module/brd ] || rmmod brd || die "brd is loaded and busy"
	modprobe brd rd_nr=$BRD_NR rd_size=$((BRD_MB * 1024)) max_part=0 || die "modprobe brd failed"
	wait_bdev "$RAW_DEV"
	[ -d /sys/module/raid1 ] || UNLOAD_RAID1=1
	modprobe raid1 || die "modprobe raid1 failed"
	insmod "$KO" || die "insmod $KO failed"
	start_nbdkit
}

# Undo everything (exit trap): devices first, then the modules.
cleanup() {
	local rc=$? c
	trap - EXIT
	set +e
	for c in $CONFIGS; do
		"teardown_$c" || rc=1
	done
	if grep -q '^dst ' /proc/modules; then rmmod dst || { echo "bench-guest: rmmod dst failed" >&2; rc=1; }; fi
	if [ -n "$NBDKIT_PID" ]; then kill "$NBDKIT_PID" 2>/dev/null; wait "$NBDKIT_PID" 2>/dev/null; fi
	if [ "$UNLOAD_NBD" = 1 ] && [ -d /sys/module/nbd ]; then rmmod nbd || rc=1; fi
	if [ "$UNLOAD_RAID1" = 1 ] && [ -d /sys/module/raid1 ]; then rmmod raid1 md_mod || rc=1; fi
	if [ -d /sys/module/brd ]; then rmmod brd || { echo "bench-guest: rmmod brd failed" >&2; rc=1; }; fi
	[ -z "$WORK" ] || rm -rf "$WORK"
	exit "$rc"
}

# Pick io_uring if it works on a RAM disk, else libaio.
choose_engine() {
	case $ENGINE in
	io_uring | libaio) return ;;
	auto) ;;
	*) die "DST_BENCH_ENGINE must be io_uring, libaio or auto" ;;
	esac
	if fio --name=probe --filename="$RAW_DEV" --ioengine=io_uring --direct=1 \
		--rw=randread --bs=4k --size=16M --io_size=4M --iodepth=4 \
		--output-format=json --output="$WORK/probe.json" >/dev/null 2>&1 &&
		fio_value "$WORK/probe.json" IOPS >/dev/null 2>&1; then
		ENGINE=io_uring
	else
		ENGINE=libaio
	fi
}

check_params() {
	local c s
	[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "DST_BENCH_ROUNDS must be a positive integer"
	[[ $RUNTIME =~ ^[1-9][0-9]*$ ]] || die "DST_BENCH_RUNTIME must be a positive integer"
	if ! [[ $SIZE_MB =~ ^[0-9]+$ ]] || [ "$SIZE_MB" -lt 256 ] || [ "$SIZE_MB" -gt 448 ]; then
		die "DST_BENCH_SIZE_MB must be 256..448 (RAM disks of $BRD_MB MiB, md metadata)"
	fi
	for c in $CONFIGS; do
		case $c in resync | netresync) continue ;; esac
		declare -F "setup_$c" >/dev/null || die "unknown configuration '$c'"
	done
	for s in $SHAPES $EXPORT_SHAPES; do
		shape_spec "$s" >/dev/null || die "unknown shape '$s'"
	done
}

main() {
	local force=0 round i n c s out value unit configs order
	while [ $# -gt 0 ]; do
		case $1 in
		--ko) KO=${2?}; shift 2 ;;
		--force) force=1; shift ;;
		*) die "usage: bench-guest.sh [--ko PATH] [--force]" ;;
		esac
	done
	[ "${DST_VM:-}" = 1 ] || [ "$force" = 1 ] ||
		die "refusing to run outside the VM (it loads modules and overwrites RAM disks); use scripts/bench.sh"
	check_params
	trap cleanup EXIT
	trap 'exit 130' INT TERM
	# The resync rows time a resync against fio and sleeps, which
	# instruction-counted time does not keep to: an idle guest's clock
	# jumps ahead, so a paced resync "ends before the load" starts.
	if [ "${DST_VM_CLOCK:-}" = icount ]; then
		for c in resync netresync; do
			[[ " $CONFIGS " == *" $c "* ]] || continue
			msg "icount: skipping $c (it times a resync against sleeps)"
			CONFIGS=" $CONFIGS "
			CONFIGS=${CONFIGS/ $c / }
		done
	fi
	setup_all
	choose_engine
	configs=()
	for c in $CONFIGS; do
		case $c in resync | netresync) ;; *) configs+=("$c") ;; esac
	done
	n=${#configs[@]}
	{
		echo "# kernel: $(uname -r), ${DST_VM_ACCEL:-?} accel$([ "${DST_VM_CLOCK:-}" = icount ] && echo ' (icount: instruction-counted time)'), $(nproc) CPUs, $(($(sed -n 's/^MemTotal: *\([0-9]*\).*/\1/p' /proc/meminfo) / 1024)) MiB"
		echo "# fio: $(fio --version), ioengine=$ENGINE, direct, ${SIZE_MB} MiB region, ${RUNTIME}s + 1s ramp per run, $ROUNDS rounds"
		[ -z "${DST_BENCH_REV:-}" ] || echo "# dst: $DST_BENCH_REV"
		echo "# devices: raw=$RAW_DEV md=raid1 ${MIRROR_LEGS[*]} dst=mirror ${MIRROR_LEGS[*]} (brd ${BRD_MB} MiB)"
		echo "# nbd peers: nbd=kernel nbd client (1 connection), nbd2=the same with 2, dstnbd=dst over one remote leg (2 connections, its default), all to nbdkit memory on 127.0.0.1:$NBD_PORT"
		echo "# mirrors of a local and a remote leg: mix=${MIRROR_LEGS[0]} and nbdkit memory (the same server), mixwm=the same with the remote leg write-mostly"
		echo "# export peers (fio --ioengine=nbd to $RAW_DEV): exp=dst export of a linear dst over it, qnbd=qemu-nbd (cache=none, aio=native), kitfile=nbdkit file; the -2j shapes split the queue depth over two fio jobs, one connection each"
	} >"$RESULTS"
	msg "$(sed -n 's/^# //p' "$RESULTS" | paste -sd ';' | sed 's/;/; /g')"
	for ((round = 1; round <= ROUNDS; round++)); do
		order=()
		for ((i = 0; i < n; i++)); do
			order+=("${configs[$(((i + round - 1) % n))]}")
		done
		msg "round $round/$ROUNDS: ${order[*]}"
		for c in "${order[@]}"; do
			"setup_$c"
			for s in $(shapes_of "$c"); do
				out=$(run_shape "$TARGET" "$s")
				read -r value unit <<<"$out"
				record "$c" "$s" "$round" "$value" "$unit"
				msg "round $round $c $s: $value $unit"
			done
			"teardown_$c" || die "teardown of $c failed"
		done
	done
	if [[ " $CONFIGS " == *" resync "* ]]; then
		msg "resync: two ${RESYNC_MB} MiB RAM disks"
		setup_resync_all
		RESYNC_DEFAULT_RATE=$(("$("$DSTCTL" --json status "$RESYNC_NAME" |
			python3 -c 'import json, sys; print(json.load(sys.stdin)["resync_rate_kib"])')" * 1024))
		echo "# resync: mirror of two ${RESYNC_MB} MiB brd, full resync; under load at the default limit ($((RESYNC_DEFAULT_RATE >> 20)) MiB/s)" >>"$RESULTS"
		for ((round = 1; round <= ROUNDS; round++)); do
			resync_round "$round"
		done
		teardown_resync || die "teardown of resync failed"
	fi
	if [[ " $CONFIGS " == *" netresync "* ]]; then
		msg "netresync: a ${NETRESYNC_MB} MiB RAM disk and nbdkit memory, ${NETRESYNC_DELAY} netem delay on lo"
		setup_netresync_all
		echo "# netresync: full resync of a mirror of a ${NETRESYNC_MB} MiB brd and nbdkit memory over loopback with netem delay ${NETRESYNC_DELAY}, vs nbdcopy of the same" >>"$RESULTS"
		for ((round = 1; round <= ROUNDS; round++)); do
			netresync_round "$round"
		done
		teardown_netresync || die "teardown of netresync failed"
	fi
	echo
	echo "==== raw results (config shape round value unit) ===="
	cat "$RESULTS"
	echo "==== end of raw results ===="
	echo
	python3 "$here/bench-report.py" "$RESULTS"
}

main "$@"
