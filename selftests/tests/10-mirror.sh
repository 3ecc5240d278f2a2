#!/usr/bin/env bash
# Mirror over local legs: capacity, data on every leg, read balancing,
# discard, I/O statistics and their switch, sysfs holders, removal.
# timeout: 300
# shellcheck source-path=SCRIPTDIR source=../lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
# shellcheck source=../dst.sh
. "$SELFTESTS_DIR/dst.sh"

require_cmd losetup blkdiscard python3
MiB=$((1 << 20))

plan 29
brd_setup 2 64
cleanup_push losetup -D
dst_load

assert_eq "$(dstctl create m1 --mirror /dev/ram0 /dev/ram1)" /dev/dst0 "create prints the device node"
assert_cmd -m "/dev/dst0 is a block device" test -b /dev/dst0
assert_eq "$(blockdev --getsize64 /dev/dst0)" $((64 * MiB)) "mirror capacity is a leg's size"
assert_eq "$(dst_json m1 'd["state"], d["target"], len(d["legs"])')" "ok mirror 2" "status: ok, mirror, 2 legs"
assert_cmd -m "ram0 and ram1 list dst0 as holder" test -e /sys/block/ram0/holders/dst0 -a -e /sys/block/ram1/holders/dst0

head -c $((16 * MiB)) /dev/urandom >"$TEST_TMP/blob"
assert_cmd -m "16 MiB O_DIRECT write at 1 MiB" \
	dd if="$TEST_TMP/blob" of=/dev/dst0 bs=1M seek=1 oflag=direct status=none
assert_cmd -m "every leg equals the device (O_DIRECT)" legs_match_dev /dev/dst0 $((64 * MiB)) /dev/ram0 /dev/ram1
assert_eq "$(dd if=/dev/dst0 bs=1M skip=1 count=16 iflag=direct status=none | sha256sum)" \
	"$(sha256sum <"$TEST_TMP/blob")" "the data reads back through the device"

assert_cmd -m "buffered write + fsync" dd if=/dev/urandom of=/dev/dst0 bs=1M seek=20 count=8 conv=fsync status=none
assert_cmd -m "every leg equals the device after buffered I/O" legs_match_dev /dev/dst0 $((64 * MiB)) /dev/ram0 /dev/ram1

# Reads are spread over both legs.
r0=$(dst_json m1 'd["legs"][0]["reads"]')
r1=$(dst_json m1 'd["legs"][1]["reads"]')
dd if=/dev/dst0 of=/dev/null bs=64k count=256 iflag=direct status=none
n0=$(($(dst_json m1 'd["legs"][0]["reads"]') - r0))
n1=$(($(dst_json m1 'd["legs"][1]["reads"]') - r1))
diag "reads of 256 x 64k: leg0 $n0, leg1 $n1"
assert_cmd -m "both legs serve reads" test "$n0" -gt 0 -a "$n1" -gt 0
assert_eq "$((n0 + n1))" 256 "each read went to exactly one leg"

# Statistics: reads completed (the first field of /sys/block/dst0/stat)
# count, unless queue/iostats is 0.
reads_done() { awk '{print $1}' /sys/block/dst0/stat; }
s0=$(reads_done)
dd if=/dev/dst0 of=/dev/null bs=4k count=100 iflag=direct status=none
assert_eq "$(($(reads_done) - s0))" 100 "iostats on: 100 reads counted in /sys/block/dst0/stat"
echo 0 >/sys/block/dst0/queue/iostats
s0=$(reads_done)
dd if=/dev/dst0 of=/dev/null bs=4k count=100 iflag=direct status=none
echo 1 >/sys/block/dst0/queue/iostats
assert_eq "$(($(reads_done) - s0))" 0 "iostats off: reads are not counted"

# Discard reaches both legs (brd frees the pages: they read back as zeroes).
if [ "$(cat /sys/block/dst0/queue/discard_max_bytes)" -gt 0 ]; then
	assert_cmd -m "blkdiscard 8 MiB at 1 MiB" blkdiscard -o $((1 * MiB)) -l $((8 * MiB)) /dev/dst0
	assert_eq "$(dd if=/dev/ram0 bs=1M skip=1 count=8 iflag=direct status=none | tr -d '\0' | wc -c)" 0 "leg0 discarded"
	assert_eq "$(dd if=/dev/ram1 bs=1M skip=1 count=8 iflag=direct status=none | tr -d '\0' | wc -c)" 0 "leg1 discarded"
else
	not_ok "discard is advertised by a mirror of brd legs"
	skip "leg0 discarded" "no discard"
	skip "leg1 discarded" "no discard"
fi

# Write-zeroes (or its emulation with zero writes) reaches both legs.
dd if=/dev/urandom of=/dev/dst0 bs=1M seek=40 count=4 oflag=direct status=none
assert_cmd -m "blkdiscard --zeroout 4 MiB at 40 MiB" blkdiscard -z -o $((40 * MiB)) -l $((4 * MiB)) /dev/dst0
assert_eq "$(dd if=/dev/ram0 bs=1M skip=40 count=4 iflag=direct status=none | tr -d '\0' | wc -c)$(dd if=/dev/ram1 bs=1M skip=40 count=4 iflag=direct status=none | tr -d '\0' | wc -c)" \
	00 "both legs read zeroes there"

assert_cmd -m "remove m1" dstctl remove m1
assert_cmd -m "/dev/dst0 is gone" test ! -e /dev/dst0
assert_cmd -m "holder links are gone" test ! -e /sys/block/ram0/holders/dst0
assert_cmd -m "legs are free again (exclusive open)" mkfs.ext4 -q -F /dev/ram0

# Three legs of different sizes: the smallest sets the capacity.
l1=$(loop_dev 40)
l2=$(loop_dev 48)
l3=$(loop_dev 64)
assert_cmd -m "3-leg mirror over loop devices of 40, 48, 64 MiB" dstctl create m3 --mirror "$l1" "$l2" "$l3"
dev=$(dst_dev m3)
assert_eq "$(blockdev --getsize64 "$dev")" $((40 * MiB)) "capacity is the smallest leg"
assert_cmd -m "fill the 3-leg mirror" dd if=/dev/urandom of="$dev" bs=1M count=40 oflag=direct status=none
assert_cmd -m "all three legs equal the device" legs_match_dev "$dev" $((40 * MiB)) "$l1" "$l2" "$l3"
assert_cmd -m "remove m3" dstctl remove m3
dmesg_check
