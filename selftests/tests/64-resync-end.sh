#!/usr/bin/env bash
# A resync that ends while writes arrive loses none of them.  A mirror of
# two RAM disks gets one writer that goes through the device block by
# block, never writing a block twice (so a write the leg missed stays
# missed until the next attach).  Meanwhile leg 1 is detached and attached
# again, 20 times: each attach is a short resync of what changed, which
# ends under the writer (in at least 10 of them).  After each, the blocks
# written so far are the same on both legs; at the end, the whole legs
# and the device are.
# timeout: 240
# shellcheck source-path=SCRIPTDIR source=../lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
# shellcheck source=../dst.sh
. "$SELFTESTS_DIR/dst.sh"

require_cmd cmp python3
MiB=$((1 << 20))
SIZE=$((128 * MiB))
BLOCKS=$((SIZE / 4096))
CYCLES=20

# Writes the device's blocks in order, one 4 KiB direct write of random
# bytes each, about 500 a second, and keeps in $TEST_TMP/written how many
# have ended; stops at the end of the device or when $TEST_TMP/stop exists.
writer() {
	python3 - "$1" "$BLOCKS" "$TEST_TMP" <<-'EOT'
		import mmap, os, sys, time
		dev, blocks, tmp = sys.argv[1], int(sys.argv[2]), sys.argv[3]
		fd = os.open(dev, os.O_WRONLY | os.O_DIRECT)
		buf = mmap.mmap(-1, 4096)
		for b in range(blocks):
		    if os.path.exists(tmp + "/stop"):
		        break
		    buf[:] = os.urandom(4096)
		    if os.pwrite(fd, buf, b * 4096) != 4096:
		        sys.exit(f"short write at block {b}")
		    with open(tmp + "/written.new", "w") as f:
		        f.write(f"{b + 1}\n")
		    os.rename(tmp + "/written.new", tmp + "/written")
		    time.sleep(0.001)
	EOT
}

stop_writer() {
	touch "$TEST_TMP/stop"
	[ -z "$wpid" ] || wait "$wpid" 2>/dev/null || true
}

# Compares the first $1 blocks of the legs.
same_blocks() {
	cmp <(dd if=/dev/ram0 bs=4k count="$1" iflag=direct status=none) \
		<(dd if=/dev/ram1 bs=4k count="$1" iflag=direct status=none) && return 0
	diff_blocks /dev/ram0 /dev/ram1 "$(($1 * 4096))"
	return 1
}

# The device and both legs hold the same first $2 bytes.
same_legs() {
	local d r0 r1
	d=$(sum_dev "$1" "$2") r0=$(sum_dev /dev/ram0 "$2") r1=$(sum_dev /dev/ram1 "$2")
	echo "device $d, ram0 $r0, ram1 $r1"
	[ "$d" = "$r0" ] && [ "$d" = "$r1" ] && return 0
	[ "$r0" = "$r1" ] || diff_blocks /dev/ram0 /dev/ram1 "$2"
	return 1
}

# Detaches and attaches leg 1 $CYCLES times; after each resync, checks
# the blocks written before it ended.  Counts in $TEST_TMP/busy the
# resyncs that ended while the writer ran.
cycles() {
	local i n busy=0
	for ((i = 1; i <= CYCLES; i++)); do
		dstctl detach m 1 >/dev/null || return 1
		sleep 0.2
		dstctl attach m 1 >/dev/null || return 1
		wait_leg m 1 in-sync 30 || return 1
		n=$(cat "$TEST_TMP/written")
		[ "$n" -ge "$BLOCKS" ] || busy=$((busy + 1))
		echo "$busy" >"$TEST_TMP/busy"
		same_blocks "$n" || { echo "cycle $i: the legs differ in the first $n blocks"; return 1; }
	done
	echo "$CYCLES cycles, $busy under the writer; $(cat "$TEST_TMP/written") of $BLOCKS blocks written by then"
}

plan 8
brd_setup 2 128
dst_load
assert_cmd -m "create a mirror of two RAM disks" dstctl create m --mirror /dev/ram0 /dev/ram1
dev=$(dst_dev m)
echo 0 >"$TEST_TMP/written"
echo 0 >"$TEST_TMP/busy"
writer "$dev" >"$TEST_TMP/writer.log" 2>&1 &
wpid=$!
cleanup_push stop_writer
sleep 1
rc=0
cycles >"$TEST_TMP/cycles.log" 2>&1 || rc=$?
diag <"$TEST_TMP/cycles.log"
assert_eq "$rc" 0 "leg 1 detached and attached $CYCLES times under the writer; after each resync, the legs agree on what was written"
assert_cmd -m "at least 10 of the resyncs ended under the writer" test "$(cat "$TEST_TMP/busy")" -ge 10
touch "$TEST_TMP/stop"
rc=0
wait "$wpid" || rc=$?
wpid=
diag <"$TEST_TMP/writer.log"
assert_eq "$rc" 0 "every write succeeded"
assert_cmd -m "leg 1 is in sync" wait_leg m 1 in-sync 30
assert_cmd -m "the legs and the device hold the same data" same_legs "$dev" "$SIZE"
assert_cmd -m "remove the mirror" dstctl remove m
dmesg_check
