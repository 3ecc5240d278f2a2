#!/usr/bin/env bash
# Linear over local legs: layout (each region on its leg at the right
# offset), I/O across leg boundaries, mixed logical block sizes.
# timeout: 300
# shellcheck source-path=SCRIPTDIR source=../lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
# shellcheck source=../dst.sh
. "$SELFTESTS_DIR/dst.sh"

require_cmd losetup python3
MiB=$((1 << 20))

# Bytes [$2, $2+$3) of device $1, as a sha256.
sum_range() {
	dd if="$1" bs=64k iflag=direct,skip_bytes,count_bytes skip="$2" count="$3" status=none |
		sha256sum | cut -d' ' -f1
}

plan 19
cleanup_push losetup -D
dst_load
# Legs of 8, 12 and 4 MiB: boundaries at 8 and 20 MiB, 24 MiB in all.
l0=$(loop_dev 8)
l1=$(loop_dev 12)
l2=$(loop_dev 4)
assert_cmd -m "create linear over 8, 12, 4 MiB legs" dstctl create lin --linear "$l0" "$l1" "$l2"
dev=$(dst_dev lin)
assert_eq "$(blockdev --getsize64 "$dev")" $((24 * MiB)) "capacity is the sum of the legs"
assert_eq "$(dst_json lin '[l["offset"] for l in d["legs"]]')" "[0, $((8 * MiB)), $((20 * MiB))]" \
	"leg offsets 0, 8 MiB, 20 MiB"

# A distinct pattern per region, written through the device in one go.
sizes=(8 12 4)
for i in 0 1 2; do
	head -c $((sizes[i] * MiB)) /dev/urandom >"$TEST_TMP/p$i"
done
cat "$TEST_TMP/p0" "$TEST_TMP/p1" "$TEST_TMP/p2" >"$TEST_TMP/all"
assert_cmd -m "write 24 MiB across all legs (1 MiB O_DIRECT writes)" \
	dd if="$TEST_TMP/all" of="$dev" bs=1M oflag=direct status=none
assert_eq "$(sum_dev "$l0" $((8 * MiB)))" "$(sha256sum <"$TEST_TMP/p0" | cut -d' ' -f1)" "leg 0 holds region 0"
assert_eq "$(sum_dev "$l1" $((12 * MiB)))" "$(sha256sum <"$TEST_TMP/p1" | cut -d' ' -f1)" "leg 1 holds region 1"
assert_eq "$(sum_dev "$l2" $((4 * MiB)))" "$(sha256sum <"$TEST_TMP/p2" | cut -d' ' -f1)" "leg 2 holds region 2"
assert_eq "$(sum_dev "$dev")" "$(sha256sum <"$TEST_TMP/all" | cut -d' ' -f1)" "the device reads back the whole"

# One 3 MiB write straddling the first boundary (8 MiB - 1 MiB .. 8 MiB + 2 MiB).
head -c $((3 * MiB)) /dev/urandom >"$TEST_TMP/x"
assert_cmd -m "one 3 MiB O_DIRECT write across the leg 0/1 boundary" \
	dd if="$TEST_TMP/x" of="$dev" bs=3M seek=$((7 * MiB)) oflag=direct,seek_bytes status=none
xs=$(sha256sum <"$TEST_TMP/x" | cut -d' ' -f1)
assert_eq "$(sum_range "$l0" $((7 * MiB)) $((1 * MiB)))" "$(head -c $((1 * MiB)) "$TEST_TMP/x" | sha256sum | cut -d' ' -f1)" \
	"its first MiB is at the end of leg 0"
assert_eq "$(sum_range "$l1" 0 $((2 * MiB)))" "$(tail -c $((2 * MiB)) "$TEST_TMP/x" | sha256sum | cut -d' ' -f1)" \
	"its last 2 MiB are at the start of leg 1"
assert_eq "$(sum_range "$dev" $((7 * MiB)) $((3 * MiB)))" "$xs" "it reads back across the boundary in one read"
assert_cmd -m "reading past the end returns nothing" test -z "$(dd if="$dev" bs=512 skip=$((48 * 1024)) count=1 status=none)"
assert_cmd -m "remove lin" dstctl remove lin

# Mixed logical block sizes: the device takes the largest (4096), and a
# 512-byte-sector leg is used in whole 4 KiB blocks only.
m0=$(loop_dev 6 512)
m1=$(loop_dev 5 4096)
truncate -s $((6 * MiB - 512)) "$(losetup -nO BACK-FILE "$m0")"
losetup -c "$m0"
assert_cmd -m "create linear over a 512 B and a 4 KiB sector leg" dstctl create mix --linear "$m0" "$m1"
dev=$(dst_dev mix)
assert_eq "$(blockdev --getss "$dev")" 4096 "logical block size is 4096"
assert_eq "$(blockdev --getsize64 "$dev")" $((11 * MiB - 4096)) "the odd-sized leg is cut to whole 4 KiB blocks"
assert_cmd -m "remove mix" dstctl remove mix
dmesg_check
