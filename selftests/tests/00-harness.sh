#!/usr/bin/env bash
# Harness self-test: the VM, the host tools and the test kernel's modules
# work (brd, md raid1, ext4, fio with verification).  Tests nothing of dst.
# timeout: 300
# shellcheck source-path=SCRIPTDIR source=../lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

require_cmd mdadm mkfs.ext4 fio sha256sum
MD=/dev/md0
MNT=$TEST_TMP/mnt

umount_mnt() {
	! mountpoint -q "$MNT" || umount "$MNT"
}

md_stop() {
	[ ! -e /sys/block/md0/md ] || mdadm --stop "$MD"
}

# Run an md "check" pass; print the last sync action and the mismatch count.
md_check() {
	local md=/sys/block/md0/md
	echo check >$md/sync_action
	while [ "$(cat $md/sync_action)" != idle ]; do
		sleep 0.2
	done
	echo "$(cat $md/last_sync_action) $(cat $md/mismatch_cnt)"
}

# Write a few files of random data and record their sums.
write_files() {
	local i
	dd if=/dev/urandom of="$MNT/big" bs=1M count=8 status=none || return 1
	for i in 1 2 3 4 5; do
		head -c $((i * 1000 + 7)) /dev/urandom >"$MNT/small$i" || return 1
	done
	(cd "$MNT" && sha256sum big small*) >"$TEST_TMP/sums"
}

# fio must pass and report no errors for any job.
fio_verify() {
	fio --name=v --filename="$MD" --rw=randwrite --bs=4k --iodepth=16 \
		--ioengine=libaio --direct=1 --size=32M --verify=crc32c \
		--do_verify=1 >"$TEST_TMP/fio.out" 2>&1 || { cat "$TEST_TMP/fio.out"; return 1; }
	grep -q 'err= 0' "$TEST_TMP/fio.out" &&
		! grep -E 'err= *[1-9]|verify: bad' "$TEST_TMP/fio.out"
}

plan 18
assert_cmd -m "brd: 2 x 64 MiB RAM disks" brd_setup 2 64
assert_eq "$(blockdev --getsize64 /dev/ram1)" $((64 << 20)) "ram1 is 64 MiB"
assert_cmd modprobe raid1
cleanup_push md_stop
assert_cmd -m "mdadm --create raid1 over ram0, ram1" \
	mdadm --create "$MD" --run --level=1 --raid-devices=2 --metadata=1.2 \
	--assume-clean --bitmap=none /dev/ram0 /dev/ram1
assert_cmd -m "md0 is an active raid1" grep -q 'md0 : active raid1 ram1\[1\] ram0\[0\]' /proc/mdstat
assert_cmd mkfs.ext4 -q -F "$MD"
mkdir -p "$MNT"
assert_cmd mount "$MD" "$MNT"
cleanup_push umount_mnt
assert_cmd -m "write files" write_files
assert_cmd umount "$MNT"
assert_cmd mount -o ro "$MD" "$MNT"
assert_cmd -m "file checksums after remount" sh -c "cd '$MNT' && sha256sum -c --quiet '$TEST_TMP/sums'"
assert_cmd umount "$MNT"
assert_cmd -m "fio randwrite + crc32c verify on md0, no errors" fio_verify

# sum_dev: a known pattern written with O_DIRECT reads back with that sum.
head -c $((4 << 20)) /dev/urandom >"$TEST_TMP/blob"
dd if="$TEST_TMP/blob" of="$MD" bs=1M oflag=direct status=none
assert_eq "$(sum_dev "$MD" $((4 << 20)))" "$(sha256sum <"$TEST_TMP/blob" | cut -d' ' -f1)" \
	"sum_dev of md0's first 4 MiB matches what was written"
assert_eq "$(md_check)" "check 0" "md check pass: no mismatches between the legs"
assert_cmd -m "mdadm --stop" md_stop
assert_cmd -m "rmmod brd" brd_teardown
dmesg_check
