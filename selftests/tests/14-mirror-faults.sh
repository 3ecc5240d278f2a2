#!/usr/bin/env bash
# Mirror legs failing: a leg failed mid-write (fail_make_request, then a dm
# "error" table) leaves the mirror writable, with no error reaching fio,
# the leg faulty and its errors counted; reads failing on a leg are retried
# on another, and the leg's copy rewritten from it (read repair); the last
# in-sync leg is never taken out.
# timeout: 600
# shellcheck source-path=SCRIPTDIR source=../lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
# shellcheck source=../dst.sh
. "$SELFTESTS_DIR/dst.sh"

require_cmd fio dmsetup
FI=/sys/kernel/debug/fail_make_request
MiB=$((1 << 20))

# Make every bio to block device $1 fail (0 to stop).
make_it_fail() {
	echo "$2" >"/sys/block/$1/make-it-fail"
}

fi_setup() {
	[ -d "$FI" ] || return 1
	echo 100 >"$FI/probability"
	echo -1 >"$FI/times"
	echo 0 >"$FI/verbose"
	echo 0 >"$FI/interval"
}

fi_off() {
	local d
	for d in /sys/block/*/make-it-fail; do echo 0 >"$d"; done
	echo 0 >"$FI/probability"
}

# dmsetup create, plus the /dev/mapper node (the guest runs no udev).
dm_create() {
	dmsetup create "$1" --table "$2" && dmsetup mknodes "$1"
}

dm_remove() {
	dmsetup remove --retry dleg 2>/dev/null || true
	dmsetup remove --retry fleg 2>/dev/null || true
}

# Start fio (randwrite + verify) on $1 in the background; its pid in $fio_pid.
fio_bg() {
	fio_verify "$1" --rw=randwrite --bs=4k --iodepth=16 --size=40M --verify_backlog=256 \
		>"$TEST_TMP/fio.bg" 2>&1 &
	fio_pid=$!
}

fio_wait() {
	wait "$fio_pid" || { cat "$TEST_TMP/fio.bg"; return 1; }
}

plan 34
brd_setup 4 48
modprobe dm-mod
modprobe dm-flakey
cleanup_push dm_remove
dst_load
assert_cmd -m "fail_make_request is available" fi_setup
cleanup_push fi_off

# 1. fail_make_request on leg 1 while fio writes and verifies.
assert_cmd -m "create mirror over ram0, ram1" dstctl create ff --mirror /dev/ram0 /dev/ram1
dev=$(dst_dev ff)
fio_bg "$dev"
sleep 2
make_it_fail ram1 1
assert_cmd -m "fio randwrite + verify completes with no error while ram1 fails" fio_wait
make_it_fail ram1 0
assert_eq "$(dst_json ff 'd["state"], d["legs"][0]["state"], d["legs"][1]["state"]')" \
	"degraded in-sync faulty" "status: degraded, ram1 faulty"
assert_cmd -m "ram1's write errors are counted" test "$(dst_json ff 'd["legs"][1]["write_errors"]')" -gt 0
assert_cmd -m "the kernel log names the faulty leg" sh -c "dmesg | grep -q 'ff: leg /dev/ram1 (ram1) failed a write'"
head -c $((8 * MiB)) /dev/urandom >"$TEST_TMP/blob"
assert_cmd -m "the degraded mirror is writable" dd if="$TEST_TMP/blob" of="$dev" bs=1M oflag=direct status=none
assert_eq "$(sum_dev "$dev" $((8 * MiB)))" "$(sha256sum <"$TEST_TMP/blob" | cut -d' ' -f1)" "and reads back"
assert_eq "$(sum_dev /dev/ram0 $((8 * MiB)))" "$(sha256sum <"$TEST_TMP/blob" | cut -d' ' -f1)" "the in-sync leg has the data"
w1=$(dst_json ff 'd["legs"][1]["writes"] + d["legs"][1]["write_errors"]')
dd if=/dev/zero of="$dev" bs=1M count=1 oflag=direct status=none
assert_eq "$(dst_json ff 'd["legs"][1]["writes"] + d["legs"][1]["write_errors"]')" "$w1" "a faulty leg gets no more writes"

# 2. The last in-sync leg failing: the write fails, the leg stays in sync.
before=$(sum_dev "$dev" $((4 * MiB)))
make_it_fail ram0 1
assert_fail -m "a write fails when the last in-sync leg fails it" \
	dd if=/dev/zero of="$dev" bs=4k count=1 oflag=direct status=none
make_it_fail ram0 0
assert_eq "$(dst_json ff 'd["state"], d["legs"][0]["state"]')" "degraded in-sync" "the last leg stays in sync"
assert_eq "$(sum_dev "$dev" $((4 * MiB)))" "$before" "the data is still readable"
assert_cmd -m "and writable once the leg recovers" dd if="$TEST_TMP/blob" of="$dev" bs=1M oflag=direct status=none
assert_cmd -m "remove ff" dstctl remove ff

# 3. A dm leg switched to the "error" target mid-write.
sectors=$((48 * 2048))
assert_cmd -m "dm-linear leg over ram3" dm_create dleg "0 $sectors linear /dev/ram3 0"
assert_cmd -m "create mirror over ram2 and the dm leg" dstctl create fd --mirror /dev/ram2 /dev/mapper/dleg
dev=$(dst_dev fd)
fio_bg "$dev"
sleep 2
assert_cmd -m "switch the dm leg to the error target" \
	sh -c "dmsetup load dleg --table '0 $sectors error' && dmsetup resume dleg"
assert_cmd -m "fio completes with no error" fio_wait
assert_eq "$(dst_json fd 'd["legs"][1]["state"]')" faulty "the dm leg is faulty"
# Repaired, the faulty leg comes back online: detached and attached, it is
# resynced from its dirty map alone (what it failed or missed), and ends
# identical to the good leg.
assert_cmd -m "repair the dm leg (linear again) and write on" \
	sh -c "dmsetup load dleg --table '0 $sectors linear /dev/ram3 0' && dmsetup resume dleg &&
		dd if=/dev/urandom of=$dev bs=64k count=32 seek=100 oflag=direct status=none"
assert_cmd dstctl detach fd 1
assert_cmd dstctl attach fd 1
assert_cmd wait_leg fd 1 in-sync 60
assert_cmd legs_match_dev "$dev" "$(dst_json fd 'd["size"]')" /dev/ram2 /dev/mapper/dleg
assert_cmd -m "remove fd" dstctl remove fd

# 4. Reads failing on one leg are retried on the other, and the failing
#    leg's copy is rewritten from it (read repair): 64 KiB of ram3 are
#    corrupted behind the mirror's back and made to fail reads.
assert_cmd -m "dm-flakey leg over ram3 (healthy)" \
	sh -c "dmsetup remove dleg && dmsetup create fleg --table '0 $sectors linear /dev/ram3 0' && dmsetup mknodes fleg"
assert_cmd -m "create mirror over ram2 and the flakey leg" dstctl create fr --mirror /dev/ram2 /dev/mapper/fleg
dev=$(dst_dev fr)
dd if="$TEST_TMP/blob" of="$dev" bs=1M oflag=direct status=none
dd if=/dev/urandom of=/dev/ram3 bs=64k count=1 seek=16 oflag=direct status=none
assert_cmd -m "ram3's copy of 64 KiB at 1 MiB is bad and fails reads" \
	sh -c "dmsetup load fleg --table '0 2048 linear /dev/ram3 0
2048 128 flakey /dev/ram3 2048 0 3600 1 error_reads
2176 $((sectors - 2176)) linear /dev/ram3 2176' && dmsetup resume fleg"
good=$(dd if="$TEST_TMP/blob" bs=64k count=1 skip=16 status=none | sha256sum | cut -d' ' -f1)
# Reads alternate between the legs; stop once the bad copy has been hit.
reads_ok() {
	local i
	for i in 1 2 3 4 5 6 7 8; do
		[ "$(dd if="$dev" bs=64k count=1 skip=16 iflag=direct status=none | sha256sum | cut -d' ' -f1)" = "$good" ] ||
			return 1
		[ "$(dst_json fr 'd["legs"][1]["read_errors"]')" -eq 0 ] || return 0
	done
	echo "no read reached leg 1"
	return 1
}
assert_cmd -m "reads of the range succeed, with the right data, until one fails on leg 1" reads_ok
# The repair logged (after leg 1 left the in-sync set), and leg 1 back.
repaired() {
	dmesg | grep -q "fr: leg 1 (.*) failed reads; rewriting them from the other legs (64 KiB)" &&
		[ "$(dst_json fr 'd["state"], d["legs"][1]["state"]')" = "ok in-sync" ]
}
assert_cmd -m "  ... leg 1 is repaired: its 64 KiB rewritten from ram2, then in sync again" \
	wait_until 30 repaired
assert_eq "$(sum_dev /dev/ram3 $((8 * MiB)))" "$(sha256sum <"$TEST_TMP/blob" | cut -d' ' -f1)" \
	"  ... ram3 holds the data again"
assert_cmd -m "remove fr" dstctl remove fr
dmesg_check
