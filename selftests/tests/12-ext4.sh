#!/usr/bin/env bash
# ext4 on a mirror and on a linear device: mkfs, mount, write files,
# remount, check their sums; every mirror leg equals the device after.
# Then on a linear device of a RAM disk and a remote leg (nbdkit): its
# journal commits flush both legs before their data goes out.
# timeout: 300
# shellcheck source-path=SCRIPTDIR source=../lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
# shellcheck source=../dst.sh
. "$SELFTESTS_DIR/dst.sh"

require_cmd mkfs.ext4 e2fsck losetup nbdkit
MNT=$TEST_TMP/mnt
mkdir -p "$MNT"

umount_mnt() {
	! mountpoint -q "$MNT" || umount "$MNT"
}

# Files of assorted sizes in a small tree; their sums go to $TEST_TMP/$1.
write_files() {
	local i
	mkdir -p "$MNT/a/b" || return 1
	dd if=/dev/urandom of="$MNT/big" bs=1M count=12 status=none || return 1
	for i in 1 2 3 4 5 6 7; do
		head -c $((i * 4099 + 13)) /dev/urandom >"$MNT/a/small$i" || return 1
		head -c $((i * 65536)) /dev/urandom >"$MNT/a/b/mid$i" || return 1
	done
	(cd "$MNT" && find . -type f -print0 | sort -z | xargs -0 sha256sum) >"$TEST_TMP/$1"
}

check_files() {
	(cd "$MNT" && sha256sum -c --quiet "$TEST_TMP/$1")
}

# mkfs, mount, write, unmount, mount read-only, check, unmount, fsck.
fs_round_trip() {
	local dev=$1 tag=$2
	assert_cmd -m "$tag: mkfs.ext4" mkfs.ext4 -q -F "$dev"
	assert_cmd -m "$tag: mount" mount "$dev" "$MNT"
	assert_cmd -m "$tag: write files" write_files "$tag.sums"
	assert_cmd -m "$tag: unmount" umount "$MNT"
	assert_cmd -m "$tag: mount read-only" mount -o ro "$dev" "$MNT"
	assert_cmd -m "$tag: file sums after remount" check_files "$tag.sums"
	assert_cmd -m "$tag: unmount" umount "$MNT"
	assert_cmd -m "$tag: e2fsck -fn is clean" e2fsck -fn "$dev"
}

plan 33
brd_setup 2 64
cleanup_push losetup -D
dst_load
cleanup_push umount_mnt

assert_cmd -m "create mirror over ram0, ram1" dstctl create fsm --mirror /dev/ram0 /dev/ram1
fs_round_trip "$(dst_dev fsm)" mirror
assert_cmd -m "mirror: each leg equals the device" legs_match_dev "$(dst_dev fsm)" $((64 << 20)) /dev/ram0 /dev/ram1
assert_cmd -m "remove the mirror" dstctl remove fsm

l0=$(loop_dev 20)
l1=$(loop_dev 28)
assert_cmd -m "create linear over 20 + 28 MiB" dstctl create fsl --linear "$l0" "$l1"
fs_round_trip "$(dst_dev fsl)" linear
assert_cmd -m "remove the linear device" dstctl remove fsl

port=$(free_port)
assert_cmd -m "nbdkit memory 32M on port $port" nbdkit_start "$port" memory 32M
assert_cmd -m "create linear over ram1 and the export" \
	dstctl create fsr --linear /dev/ram1 "nbd://127.0.0.1:$port/"
fs_round_trip "$(dst_dev fsr)" "linear, remote"
assert_cmd -m "remove it" dstctl remove fsr
dmesg_check
