#!/usr/bin/env bash
# Write-mostly mirror legs (md's --write-mostly): such a leg gets every
# write but serves reads only when no other in-sync leg can.  Set at
# create, at add and by `dstctl set`; the fallback when the other legs are
# gone; resync reads, which prefer a leg that is not write-mostly; a remote
# leg mirrored with a local one; bad input.
# timeout: 300
# shellcheck source-path=SCRIPTDIR source=../lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
# shellcheck source=../dst.sh
. "$SELFTESTS_DIR/dst.sh"

require_cmd fio nbdkit jq dmsetup
MiB=$((1 << 20))

plan 53
brd_setup 4 64
dst_load

# reads_of NAME: every leg's completed reads, "r0 r1 ...".
reads_of() {
	dst_jq "$1" '[.legs[].reads] | map(tostring) | join(" ")'
}

# read_deltas NAME CMD...: runs CMD, prints each leg's reads meanwhile.
read_deltas() {
	local name=$1 before after i out=()
	shift
	read -ra before <<<"$(reads_of "$name")"
	"$@" >/dev/null 2>&1 || echo "command failed: $*" >&2
	read -ra after <<<"$(reads_of "$name")"
	for i in "${!after[@]}"; do
		out+=("$((after[i] - ${before[i]:-0}))")
	done
	echo "${out[*]}"
}

# served_by DELTAS I MIN: leg I served at least MIN reads, every other
# leg none (a udev probe may add reads, never take them away).
served_by() {
	local d i=0 n
	read -ra d <<<"$1"
	for n in "${d[@]}"; do
		if [ "$i" = "$2" ]; then
			[ "$n" -ge "$3" ] || return 1
		else
			[ "$n" = 0 ] || return 1
		fi
		i=$((i + 1))
	done
}

dd_reads() {
	dd if="$1" of=/dev/null bs=64k count=256 iflag=direct status=none
}

fio_reads() {
	fio --name=r --filename="$1" --ioengine=libaio --direct=1 --rw=randread \
		--bs=4k --iodepth=16 --numjobs=2 --size=32M --runtime=2 --time_based \
		--group_reporting
}

wm_of() {
	dst_jq "$1" '[.legs[].write_mostly] | map(tostring) | join(" ")'
}

# --- set at create -----------------------------------------------------------
assert_cmd -m "create m with leg 1 write-mostly" \
	dstctl create m --mirror /dev/ram0 /dev/ram1 --write-mostly 1
dev=$(dst_dev m)
assert_eq "$(wm_of m)" "false true" "status: leg 1 is write-mostly, leg 0 is not"
head -c $((16 * MiB)) /dev/urandom >"$TEST_TMP/blob"
dd if="$TEST_TMP/blob" of="$dev" bs=1M oflag=direct status=none
assert_cmd -m "writes reach the write-mostly leg: every leg equals the device" \
	legs_match_dev "$dev" $((64 * MiB)) /dev/ram0 /dev/ram1

d=$(read_deltas m dd_reads "$dev")
diag "256 reads of 64k: $d"
assert_cmd -m "sequential reads all go to leg 0 ($d)" served_by "$d" 0 256
d=$(read_deltas m fio_reads "$dev")
diag "fio randread QD16 x2: $d"
assert_cmd -m "under load too, leg 1 serves no read ($d)" served_by "$d" 0 1

# --- dstctl set ---------------------------------------------------------------
assert_cmd -m "set --no-write-mostly 1" dstctl set m --no-write-mostly 1
assert_eq "$(wm_of m)" "false false" "no leg is write-mostly"
d=$(read_deltas m dd_reads "$dev")
diag "256 reads of 64k: $d"
assert_cmd -m "both legs serve reads again ($d)" test "${d#* }" -gt 0 -a "${d% *}" -gt 0

assert_cmd -m "set --write-mostly /dev/ram0 (the leg as given)" dstctl set m --write-mostly /dev/ram0
d=$(read_deltas m dd_reads "$dev")
assert_cmd -m "reads all go to leg 1 now ($d)" served_by "$d" 1 256

assert_cmd -m "set --write-mostly ram1 (by kernel disk), with a resync limit" \
	dstctl set m --write-mostly ram1 --resync-max 100M
assert_eq "$(wm_of m) $(dst_jq m .resync_max_kib)" "true true 102400" \
	"both legs write-mostly, and the limit set"
d=$(read_deltas m dd_reads "$dev")
assert_cmd -m "all legs write-mostly: both serve reads ($d)" test "${d#* }" -gt 0 -a "${d% *}" -gt 0

# --- the fallback: no other leg left ------------------------------------------
assert_cmd -m "set --no-write-mostly 1" dstctl set m --no-write-mostly 1
assert_cmd -m "detach leg 1" dstctl detach m 1
d=$(read_deltas m dd_reads "$dev")
assert_cmd -m "leg 1 detached: the write-mostly leg 0 serves every read ($d)" served_by "$d" 0 256
assert_eq "$(dd if="$dev" bs=1M count=16 iflag=direct status=none | sha256sum)" \
	"$(sha256sum <"$TEST_TMP/blob")" "and the data reads back right"
dd if=/dev/urandom of="$dev" bs=1M seek=20 count=4 oflag=direct status=none
assert_cmd -m "attach leg 1" dstctl attach m 1
assert_cmd -m "leg 1 in sync again" wait_leg m 1 in-sync 30
d=$(read_deltas m dd_reads "$dev")
assert_cmd -m "back in sync, leg 1 serves the reads again ($d)" served_by "$d" 1 256

# --- set at add ----------------------------------------------------------------
assert_cmd -m "add ram2 --write-mostly" dstctl add m /dev/ram2 --write-mostly
assert_cmd -m "leg 2 in sync" wait_leg m 2 in-sync 30
assert_eq "$(wm_of m)" "true false true" "legs 0 and 2 write-mostly"
d=$(read_deltas m fio_reads "$dev")
diag "fio randread QD16 x2: $d"
assert_cmd -m "only leg 1 serves reads ($d)" served_by "$d" 1 1
assert_cmd -m "every leg equals the device" legs_match_dev "$dev" $((64 * MiB)) /dev/ram0 /dev/ram1 /dev/ram2
# Legs 0 and 2 normal, leg 1 between them write-mostly: at QD1 the two
# take turns (the next scan starts after the leg chosen last).
assert_cmd -m "set --no-write-mostly 0" dstctl set m --no-write-mostly 0
assert_cmd -m "set --write-mostly 1" dstctl set m --write-mostly 1
assert_cmd -m "set --no-write-mostly 2" dstctl set m --no-write-mostly 2
d=$(read_deltas m dd_reads "$dev")
diag "256 reads of 64k: $d"
read -r a b c <<<"$d"
assert_cmd -m "legs 0 and 2 share the reads evenly, leg 1 serves none ($d)" \
	test "$b" = 0 -a "$a" -ge 120 -a "$c" -ge 120

# --- bad input changes nothing -----------------------------------------------------
# dstctl refuses a leg it cannot find before asking the kernel; the kernel's
# own refusal (limits untouched when the leg is refused) is a netlink case
# of 20-bad-input (set-write-mostly-no-such-leg).
expect_err_contains -m "set --write-mostly on a leg it lacks" "7 is not a leg of m" dstctl set m --write-mostly 7
expect_err_contains -m "set on a leg it lacks, with a limit: refused" "is not a leg of m" \
	dstctl set m --write-mostly /dev/ram3 --resync-max 5M
assert_eq "$(wm_of m) $(dst_jq m .resync_max_kib)" "false true false 102400" \
	"  ... and nothing changed"
assert_fail -m "--write-mostly and --no-write-mostly together" \
	dstctl set m --write-mostly 0 --no-write-mostly 2
expect_err_contains -m "create --linear --write-mostly: refused" "mirror" \
	dstctl create l --linear /dev/ram3 --write-mostly 0
expect_err_contains -m "create --write-mostly naming no leg given: refused" "/dev/ram2" \
	dstctl create x --mirror /dev/ram3 --write-mostly /dev/ram2
assert_cmd -m "remove m" dstctl remove m
assert_cmd -m "create l (linear)" dstctl create l --linear /dev/ram0
expect_err_contains -m "set --write-mostly on a linear device: refused" "linear" \
	dstctl set l --write-mostly 0
assert_cmd -m "remove l" dstctl remove l

# --- resync reads ----------------------------------------------------------------
# Legs 0 and 1 are dm-linear devices over ram0 and ram1, so that their reads
# can be counted (brd keeps no statistics).  A resync reads from the first
# fitting leg, so with leg 0 write-mostly only the preference keeps it from
# reading there.
SECTORS=$((64 * MiB / 512))

# dm_reads NAME: the reads dm device NAME completed.
dm_reads() {
	awk '{ print $1 }' "/sys/block/$(dmsetup info -c --noheadings -o blkdevname "$1")/stat"
}

# resync_reads: detach leg 2 of s, write 8 MiB, attach it, wait for it to be
# in sync; print the reads of wm0 and n1 meanwhile, "wm0 n1".
resync_reads() {
	local a0 a1
	dstctl detach s 2 >/dev/null &&
		dd if=/dev/urandom of="$sdev" bs=1M seek=8 count=8 oflag=direct status=none || return 1
	udevadm settle 2>/dev/null || true
	a0=$(dm_reads wm0) a1=$(dm_reads n1)
	dstctl attach s 2 >/dev/null && wait_leg s 2 in-sync 30 >/dev/null || return 1
	echo "$(($(dm_reads wm0) - a0)) $(($(dm_reads n1) - a1))"
}

cleanup_push sh -c '"$DSTCTL" remove s 2>/dev/null; dmsetup remove --retry wm0 n1 2>/dev/null || true'
assert_cmd -m "dm-linear wm0 over ram0 and n1 over ram1" \
	eval 'dmsetup create wm0 --table "0 $SECTORS linear /dev/ram0 0" &&
		dmsetup create n1 --table "0 $SECTORS linear /dev/ram1 0" && dmsetup mknodes wm0 n1'
assert_cmd -m "create s: wm0 (write-mostly), n1 and ram2, in sync" \
	eval 'dstctl create s --mirror /dev/mapper/wm0 /dev/mapper/n1 /dev/ram2 --write-mostly 0 >/dev/null &&
		wait_leg s 1 in-sync 30 && wait_leg s 2 in-sync 30'
sdev=$(dst_dev s)
d=$(resync_reads) || d="failed"
diag "resync of leg 2, reads of wm0 and n1: $d"
assert_cmd -m "leg 2's resync read from n1 only, not from the write-mostly wm0 ($d)" served_by "$d" 1 1
assert_cmd -m "set --no-write-mostly 0" dstctl set s --no-write-mostly 0
d=$(resync_reads) || d="failed"
diag "resync of leg 2, reads of wm0 and n1: $d"
assert_cmd -m "with no leg write-mostly, the resync reads from leg 0 ($d)" served_by "$d" 0 1
assert_cmd -m "every leg equals the device" \
	legs_match_dev "$sdev" $((64 * MiB)) /dev/mapper/wm0 /dev/mapper/n1 /dev/ram2
assert_cmd -m "remove s and the dm devices" eval 'dstctl remove s && dmsetup remove --retry wm0 n1'

# --- a remote leg mirrored with a local one ---------------------------------------
port=$(free_port)
assert_cmd -m "nbdkit memory on $port" nbdkit_start "$port" memory 64M
assert_cmd -m "create r: ram3 and a write-mostly remote leg" \
	dstctl create r --mirror /dev/ram3 "nbd://127.0.0.1:$port/" --write-mostly 1
assert_cmd -m "the remote leg is up" wait_leg r 1 in-sync 20
rdev=$(dst_dev r)
assert_cmd -m "fio randrw crc32c verify QD16" \
	fio_verify "$rdev" --rw=randrw --bs=4k --iodepth=16 --size=16M
d=$(read_deltas r fio_reads "$rdev")
diag "fio randread QD16 x2: $d"
assert_cmd -m "the remote leg serves no read ($d)" served_by "$d" 0 1
assert_cmd -m "the legs hold the same data" same_data "$rdev" /dev/ram3 "nbd://127.0.0.1:$port/" $((64 * MiB))

dmesg_check
