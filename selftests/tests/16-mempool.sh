#!/usr/bin/env bash
# Memory pressure on dst's own bio sets.  failslab makes every allocation
# from dst's bio slab fail, so that clones come only from the bio sets'
# small reserves, as they do when memory runs out during writeback.  No
# I/O may then wait for a reserve that only its own progress, or that of
# another waiter, refills: concurrent writers (fio, four jobs, crc32c
# verify) on mirrors of two and three RAM disks, flushes, reads, and ext4
# with fsync on a mirror with a remote leg (whose cache flushes hold its
# data clones back) and on a linear device must all finish, with no error
# and no leg failed.
# timeout: 540
# shellcheck source-path=SCRIPTDIR source=../lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
# shellcheck source=../dst.sh
. "$SELFTESTS_DIR/dst.sh"

require_cmd fio nbdkit mkfs.ext4 udevadm
FS=/sys/kernel/debug/failslab
[ -d "$FS" ] || skip_all "no $FS (CONFIG_FAILSLAB, debugfs)"
MiB=$((1 << 20))
# How long a fio run may take with the slab failing (tenths of a second).
STALL=900
TIMES=100000000

plan 35
brd_setup 3 64
dst_load

# Objects in use in each bio slab cache (name, count), smallest first.
bio_objects() {
	local c
	for c in /sys/kernel/slab/bio-*; do
		echo "${c##*/} $(cut -d' ' -f1 "$c/objects")"
	done | sort -t- -k2 -n
}

# dst's clones come from a slab cache of their size, which other bio sets
# of that size may share.  Creating a device fills the reserves of its
# clone bio sets (2 objects each) and of its two split sets (no front pad:
# the smallest cache, that of a bare bio).
udevadm settle
before=$(bio_objects)
assert_cmd -m "create mirror m2 over ram0, ram1" dstctl create m2 --mirror /dev/ram0 /dev/ram1
udevadm settle
after=$(bio_objects)
SLAB=$(awk 'NR == FNR { b[$1] = $2; next } FNR > 1 && $2 - b[$1] >= 2 { print $1 }' \
	<(echo "$before") <(echo "$after"))
diag "bio slabs before: $(echo "$before" | tr "\n" " "), after: $(echo "$after" | tr "\n" " ")"
assert_eq "$(echo "$SLAB" | grep -c .)" 1 "dst's clone slab found (${SLAB:-none})"
SLAB=$(echo "$SLAB" | head -n 1)

failslab_on() {
	echo 0 >"$FS/verbose"
	echo N >"$FS/ignore-gfp-wait"
	echo Y >"$FS/cache-filter"
	echo 1 >"$FS/interval"
	echo "$TIMES" >"$FS/times"
	echo 100 >"$FS/probability"
	echo 1 >"/sys/kernel/slab/$SLAB/failslab"
}

failslab_off() {
	echo 0 >"/sys/kernel/slab/$SLAB/failslab"
	echo 0 >"$FS/probability"
}
cleanup_push failslab_off

# Runs $1 (a command and its arguments) with the slab failing.  Fails if
# it has not ended after $STALL tenths of a second (then lets it end with
# the slab working again), if it fails, or if no allocation failed.
pressured() {
	local pid t=0 rc=0 stalled=0 left
	failslab_on
	"$@" &
	pid=$!
	while kill -0 "$pid" 2>/dev/null && [ "$t" -lt "$STALL" ]; do
		sleep 0.1
		t=$((t + 1))
	done
	kill -0 "$pid" 2>/dev/null && stalled=1
	left=$(cat "$FS/times")
	failslab_off
	wait "$pid" || rc=$?
	if [ "$stalled" = 1 ]; then
		diag "still running after $((STALL / 10)) s with the slab failing (it ended once it worked again)"
		return 1
	fi
	[ "$rc" = 0 ] || return "$rc"
	if [ "$left" -ge "$TIMES" ]; then
		diag "no allocation from $SLAB failed: the test tested nothing"
		return 1
	fi
	diag "$((TIMES - left)) allocations from $SLAB failed"
}

# fio, four writers (each on its own 12 MiB), verified.
writers() {
	fio_verify "$1" --numjobs=4 --offset_increment=12M --size=12M --group_reporting \
		--rw=randwrite --bs=4k --iodepth=8 "${@:2}"
}

no_leg_errors() {
	local name=$1 n
	n=$(dst_json "$name" 'sum(l["write_errors"] + l["read_errors"] for l in d["legs"])') || return 1
	[ "$n" = 0 ] || { diag "$name: $n leg errors"; return 1; }
	n=$(dst_json "$name" 'sum(1 for l in d["legs"] if l["state"] != "in-sync")') || return 1
	[ "$n" = 0 ] || { diag "$name: $n legs not in sync"; return 1; }
}

m=$(dst_dev m2)
assert_cmd -m "m2: four writers, 4k QD8, verified, slab failing" pressured writers "$m"
assert_cmd -m "m2: four writers with a flush every 8 writes, slab failing" \
	pressured writers "$m" --fsync=8 --bsrange=4k-128k
assert_cmd -m "m2: legs identical to the device" legs_match_dev "$m" $((48 * MiB)) /dev/ram0 /dev/ram1
assert_cmd -m "m2: no leg errors, legs in sync" no_leg_errors m2
assert_cmd -m "remove m2" dstctl remove m2

assert_cmd -m "create mirror m3 over ram0, ram1, ram2" dstctl create m3 --mirror /dev/ram0 /dev/ram1 /dev/ram2
m=$(dst_dev m3)
assert_cmd -m "m3: four writers, 4k-64k QD8, verified, slab failing" pressured writers "$m" --bsrange=4k-64k
# Each job on its own 12 MiB: two writes to one block in flight at once
# may reach the legs in either order (as on md raid1), and the legs would
# then differ there.
assert_cmd -m "m3: four readers and writers, slab failing" \
	pressured fio --name=rw --filename="$m" --ioengine=libaio --direct=1 --numjobs=4 \
	--offset_increment=12M --size=12M --rw=randrw --bs=4k --iodepth=8 --io_size=8M \
	--group_reporting
assert_cmd -m "m3: legs identical to the device" legs_match_dev "$m" $((48 * MiB)) /dev/ram0 /dev/ram1 /dev/ram2
assert_cmd -m "m3: no leg errors, legs in sync" no_leg_errors m3
assert_cmd -m "remove m3" dstctl remove m3

# ext4 with fsync: the journal's commits are REQ_PREFLUSH writes with data,
# whose clone to a remote leg waits for that leg's flush.
port=$(free_port)
assert_cmd -m "nbdkit memory 64M on port $port" nbdkit_start "$port" memory 64M
assert_cmd -m "create mirror mr over ram2 and nbdkit" \
	dstctl create mr --mirror /dev/ram2 "nbd://127.0.0.1:$port?timeout=20"
m=$(dst_dev mr)
mnt=$TEST_TMP/mnt
mkdir -p "$mnt"
assert_cmd -m "mr: mkfs.ext4" mkfs.ext4 -q -F "$m"
assert_cmd -m "mr: mount" mount "$m" "$mnt"
unmount() { ! mountpoint -q "$mnt" || umount -l "$mnt"; }
cleanup_push unmount

# fio on files of $mnt: four writers, fsync after each write, verified.
fs_writers() {
	fio --name=fs --directory="$mnt" --ioengine=psync --numjobs=4 --size=4M \
		--rw=randwrite --bs=4k --fsync=1 --verify=crc32c --do_verify=1 \
		--verify_fatal=1 --group_reporting >"$TEST_TMP/fs.out" 2>&1 ||
		{ cat "$TEST_TMP/fs.out"; return 1; }
	! grep -qE 'err= *[1-9]|verify: bad' "$TEST_TMP/fs.out" || { cat "$TEST_TMP/fs.out"; return 1; }
}
assert_cmd -m "mr: ext4, four writers with fsync, slab failing" pressured fs_writers
sum_before=$(find "$mnt" -type f -exec sha256sum {} + | sort)
assert_cmd -m "mr: unmount" umount "$mnt"
assert_cmd -m "mr: fsck clean" fsck.ext4 -n -f "$m"
assert_cmd -m "mr: device, ram2 and the export hold the same" \
	same_data "$m" /dev/ram2 "nbd://127.0.0.1:$port" "$(blockdev --getsize64 "$m")"
assert_cmd -m "mr: mount again" mount "$m" "$mnt"
assert_eq "$(find "$mnt" -type f -exec sha256sum {} + | sort)" "$sum_before" "mr: files unchanged after remount"
assert_cmd -m "mr: unmount again" umount "$mnt"
assert_cmd -m "mr: no leg errors, legs in sync" no_leg_errors mr
assert_cmd -m "remove mr" dstctl remove mr

# A linear device: a preflush with data is held on its leg until every
# leg has flushed.
assert_cmd -m "create linear ln over ram0, ram1" dstctl create ln --linear /dev/ram0 /dev/ram1
m=$(dst_dev ln)
assert_cmd -m "ln: mkfs.ext4" mkfs.ext4 -q -F "$m"
assert_cmd -m "ln: mount" mount "$m" "$mnt"
assert_cmd -m "ln: ext4, four writers with fsync, slab failing" pressured fs_writers
assert_cmd -m "ln: unmount" umount "$mnt"
assert_cmd -m "ln: fsck clean" fsck.ext4 -n -f "$m"
assert_cmd -m "ln: no leg errors" no_leg_errors ln
assert_cmd -m "remove ln" dstctl remove ln
dmesg_check
