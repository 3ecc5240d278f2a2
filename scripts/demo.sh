#!/usr/bin/env bash
# The dst demo, run inside the test VM by `make demo`: a mirror over two RAM
# disks carries an ext4 filesystem; one leg fails while files are being
# written; the filesystem keeps working and every file reads back intact.
# Then the failed leg is replaced online by a third RAM disk, which is
# resynced while the filesystem is mounted again.  Exits non-zero if any
# check fails.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
repo=$(dirname "$here")
DST_KO=${DST_KO:-$repo/dst/dst.ko}
PATH=$repo/userspace/target/release:$PATH
MNT=/mnt/data
FI=/sys/kernel/debug/fail_make_request

step() { printf '\n=== %s\n' "$*"; }
run() {
	printf '$ %s\n' "$*"
	"$@"
}
fail() {
	echo "demo: FAILED: $*" >&2
	exit 1
}

step "Load dst and make three 128 MiB RAM disks: two legs and a spare"
run insmod "$DST_KO"
run modprobe brd rd_nr=3 rd_size=131072
run lsblk -o NAME,SIZE /dev/ram0 /dev/ram1

step "Create a mirror over both and put ext4 on it"
run dstctl create data --mirror /dev/ram0 /dev/ram1
run mkfs.ext4 -q -L data /dev/dst0
mkdir -p "$MNT"
run mount /dev/dst0 "$MNT"
run dstctl status data
run lsblk -o NAME,SIZE,TYPE /dev/ram0 /dev/ram1

step "Write some files"
run cp -r /usr/share/common-licenses "$MNT/licenses"
run dd if=/dev/urandom of="$MNT/blob1" bs=1M count=24 status=none
run sync
(cd "$MNT" && find . -type f -print0 | sort -z | xargs -0 sha256sum) >/tmp/sums
echo "$(wc -l </tmp/sums) files written; their sha256 sums are kept in /tmp/sums"

step "Fail leg ram1: from now on every I/O to it returns an error"
echo 100 >"$FI/probability"
echo -1 >"$FI/times"
echo 0 >"$FI/verbose"
run sh -c 'echo 1 > /sys/block/ram1/make-it-fail'

step "Keep writing: the mirror notices, marks ram1 faulty, and goes on"
run dd if=/dev/urandom of="$MNT/blob2" bs=1M count=24 conv=fsync status=none
(cd "$MNT" && sha256sum blob2) >>/tmp/sums
run sync
run dstctl status data
dmesg | grep -E 'dst: ' | tail -n 3
[ "$(dstctl --json status data | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["state"], d["legs"][1]["state"])')" = "degraded faulty" ] ||
	fail "ram1 should be faulty and the mirror degraded"

step "Read every file back, from a fresh mount (no page cache)"
run umount "$MNT"
run mount -o ro /dev/dst0 "$MNT"
(cd "$MNT" && run sha256sum -c --quiet /tmp/sums) || fail "a file does not match"
echo "all $(wc -l </tmp/sums) files match"
run umount "$MNT"

step "The surviving leg holds exactly the device's bytes"
run cmp /dev/dst0 /dev/ram0 || fail "ram0 differs from the device"
echo "ram0 == dst0"

step "Replace the failed leg online: add the spare, then remove ram1"
run mount /dev/dst0 "$MNT"
run dstctl add data /dev/ram2
for _ in $(seq 300); do
	[ "$(dstctl --json status data | jq -r '.legs[] | select(.index == 2) | .state')" = in-sync ] && break
	sleep 0.2
done
run dstctl remove-leg data 1
run dstctl status data
run dmesg --notime | grep 'dst: data: leg' | tail -n 3
run umount "$MNT"
run cmp /dev/dst0 /dev/ram2 || fail "ram2 differs from the device"
echo "ram2 == dst0: the mirror has two good legs again"

step "Clean up"
echo 0 >/sys/block/ram1/make-it-fail
run dstctl remove data
run rmmod dst
run rmmod brd
printf '\ndemo: OK\n'
