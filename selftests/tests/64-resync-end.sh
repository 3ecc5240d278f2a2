#!/usr/bin/env bash
# A resync that ends while writes arrive loses none of them.  A mirror of
# two RAM disks gets four writers that each go through a quarter of the
# device block by block, never writing a block twice (so a write the leg
# missed stays missed until the next attach).  Meanwhile leg 1 is
# detached and attached again, 20 times: each attach is a short resync of
# what changed, which ends under the writers (in at least 10 of them).
# After each, the blocks written so far are the same on both legs; at the
# end, the whole legs and the device are.  Then the same cycles run while
# fio keeps many writes in flight in one barrier bucket.
#
# The barrier race is a few instructions wide: a write between
# registering at the resync barrier and looking at it.  The module's
# race_delay_us parameter (testing only) widens it to RACE_US, so that a
# module that loses the wake-up there hangs here (with the fix taken
# out it did in each of three runs: in the 3rd cycle twice, and in the
# 10th cycle of the hot spot), not once in a while.
# timeout: 480
# shellcheck source-path=SCRIPTDIR source=../lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
# shellcheck source=../dst.sh
. "$SELFTESTS_DIR/dst.sh"

require_cmd python3
MiB=$((1 << 20))
SIZE=$((256 * MiB))
BLOCKS=$((SIZE / 4096))
CYCLES=20
RACE_US=${DST_RACE_US:-1000}

# Four writers, one per quarter of the device, each going through its
# quarter in order: one 4 KiB direct write of random bytes per block, with
# a pause of 2 ms after each (so that they outlast most cycles).
# $TEST_TMP/written holds how many blocks of each quarter have been
# written (four 64-bit counts, updated after each write).  They stop at
# the end or when $TEST_TMP/stop exists.
writer() {
	python3 - "$1" "$BLOCKS" "$TEST_TMP" <<-'EOT'
		import mmap, os, struct, sys, threading, time
		dev, blocks, tmp = sys.argv[1], int(sys.argv[2]), sys.argv[3]
		quarter = blocks // 4
		with open(tmp + "/written", "r+b") as f:
		    counts = mmap.mmap(f.fileno(), 32)
		failed = []
		def write(k):
		    fd = os.open(dev, os.O_WRONLY | os.O_DIRECT)
		    buf = mmap.mmap(-1, 4096)
		    for i in range(quarter):
		        if os.path.exists(tmp + "/stop"):
		            break
		        buf[:] = os.urandom(4096)
		        b = k * quarter + i
		        if os.pwrite(fd, buf, b * 4096) != 4096:
		            failed.append(f"short write at block {b}")
		            break
		        struct.pack_into("<Q", counts, 8 * k, i + 1)
		        time.sleep(0.002)
		threads = [threading.Thread(target=write, args=(k,)) for k in range(4)]
		for t in threads:
		    t.start()
		for t in threads:
		    t.join()
		sys.exit("; ".join(failed) or None)
	EOT
}

# Compares, in each quarter, the blocks written since the last call on
# the two legs (those checked before are never written again); prints how
# many blocks have been written in all.
same_written() {
	python3 - "$BLOCKS" "$TEST_TMP/written" "$TEST_TMP/checked" <<-'EOT'
		import mmap, os, struct, sys
		blocks, written, checked = int(sys.argv[1]), sys.argv[2], sys.argv[3]
		quarter = blocks // 4
		with open(written, "rb") as f:
		    counts = struct.unpack("<4Q", f.read(32))
		with open(checked, "rb") as f:
		    done = struct.unpack("<4Q", f.read(32))
		fds = [os.open(d, os.O_RDONLY | os.O_DIRECT) for d in ("/dev/ram0", "/dev/ram1")]
		bufs = [mmap.mmap(-1, 1 << 20) for _ in fds]
		bad = []
		for k, (d, n) in enumerate(zip(done, counts)):
		    start, end = k * quarter + d, k * quarter + n
		    while start < end:
		        m = min(end - start, 256)
		        data = []
		        for fd, buf in zip(fds, bufs):
		            got = os.preadv(fd, [buf], start * 4096)
		            data.append(buf[:m * 4096] if got >= m * 4096 else None)
		        if data[0] is None or data[1] is None:
		            sys.exit(f"short read at block {start}")
		        for j in range(m):
		            if data[0][j * 4096:(j + 1) * 4096] != data[1][j * 4096:(j + 1) * 4096]:
		                bad.append(start + j)
		        start += m
		if bad:
		    sys.exit(f"the legs differ in {len(bad)} blocks written, first at {bad[0] * 4096:#x}")
		with open(checked, "wb") as f:
		    f.write(struct.pack("<4Q", *counts))
		print(sum(counts))
	EOT
}

# Whether the writers still run (bash reaps them when they end).
writers_running() {
	[ -n "$wpid" ] && [ -d "/proc/$wpid" ]
}

writers_gone() {
	! writers_running
}

# Stops the writers and returns their status; 124 if they do not stop
# within a minute (a write hangs: they can be neither waited for nor
# killed, so the test ends, leaving the device in use).
stop_writer() {
	local rc=0
	touch "$TEST_TMP/stop"
	[ -n "$wpid" ] || return 0
	if ! wait_until 60 writers_gone; then
		echo "the writers did not stop within 60 s: a write hangs"
		od -An -tu8 "$TEST_TMP/written"
		return 124
	fi
	wait "$wpid" || rc=$?
	wpid=
	return "$rc"
}

# Detaches leg 1, lets writes miss it a moment, attaches it again and
# waits for its resync to end.
reattach() {
	dstctl detach m 1 >/dev/null && sleep 0.2 && dstctl attach m 1 >/dev/null &&
		wait_leg m 1 in-sync 30
}

# Reattaches leg 1 $CYCLES times; after each resync, checks the blocks
# written before it ended.  Counts in `busy` the resyncs that ended while
# the writers ran.
cycles() {
	local i n
	for ((i = 1; i <= CYCLES; i++)); do
		reattach || { echo "cycle $i failed"; return 1; }
		! writers_running || busy=$((busy + 1))
		n=$(same_written) || { echo "cycle $i: the legs differ"; return 1; }
	done
	echo "$CYCLES cycles, $busy under the writers; $n of $BLOCKS blocks written by then"
}

# The same, while fio writes to one small stretch of the device.
hot_cycles() {
	local i
	for ((i = 1; i <= CYCLES; i++)); do
		fio_loop_running || { echo "cycle $i: fio stopped"; return 1; }
		reattach || { echo "cycle $i failed"; return 1; }
	done
	echo "$CYCLES cycles"
}

race_delay() {
	echo "$1" >/sys/module/dst/parameters/race_delay_us
}

plan 12
brd_setup 2 256
dst_load
assert_cmd -m "widen the barrier's race window to $RACE_US us (race_delay_us)" race_delay "$RACE_US"
cleanup_push race_delay 0
assert_cmd -m "create a mirror of two RAM disks" dstctl create m --mirror /dev/ram0 /dev/ram1
dev=$(dst_dev m)
head -c 32 /dev/zero >"$TEST_TMP/written"
head -c 32 /dev/zero >"$TEST_TMP/checked"
busy=0
writer "$dev" >"$TEST_TMP/writer.log" 2>&1 &
wpid=$!
cleanup_push stop_writer
sleep 1
rc=0
cycles >"$TEST_TMP/cycles.log" 2>&1 || rc=$?
diag <"$TEST_TMP/cycles.log"
assert_eq "$rc" 0 "leg 1 detached and attached $CYCLES times under the writers; after each resync, the legs agree on what was written"
assert_cmd -m "at least 10 of the resyncs ended under the writers" test "$busy" -ge 10
rc=0
stop_writer >>"$TEST_TMP/writer.log" 2>&1 || rc=$?
diag <"$TEST_TMP/writer.log"
assert_eq "$rc" 0 "every write succeeded"
assert_cmd -m "leg 1 is in sync" wait_leg m 1 in-sync 30
assert_cmd -m "the legs and the device hold the same data" legs_match_dev "$dev" "$SIZE" /dev/ram0 /dev/ram1

# A hot spot: four fio jobs keep 16 writes each in flight in one barrier
# bucket (1 MiB at 0, 64, 128 and 192 MiB: buckets are 1 MiB stretches
# modulo 64) while leg 1 is detached and attached again.  So each chunk
# of each resync drains under a stream of writes, many of which find the
# bucket raised on their way in and are parked.  None may wait forever.
fio_loop_start "$dev" --rw=randwrite --bs=4k --iodepth=16 --numjobs=4 \
	--size=1M --offset_increment=64M
rc=0
hot_cycles >"$TEST_TMP/hot.log" 2>&1 || rc=$?
diag <"$TEST_TMP/hot.log"
assert_eq "$rc" 0 "one bucket hot under fio: leg 1 detached and attached $CYCLES times, each resync ends"
assert_cmd -m "  ... fio verify ran without an error meanwhile" fio_loop_stop
assert_cmd -m "  ... the legs and the device hold the same data" legs_match_dev "$dev" "$SIZE" /dev/ram0 /dev/ram1
assert_cmd -m "remove the mirror" dstctl remove m
dmesg_check
