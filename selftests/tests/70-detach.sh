#!/usr/bin/env bash
# Live backups: a mirror leg detached while the device is in use holds the
# device's contents as of the detach and gets nothing afterwards; attached
# again, it is resynced with only the regions written meanwhile (counted:
# within 2x of what was written), after which every leg equals the device.
# Under fio verify load; with ext4 mounted and --freeze (the detached copy
# passes e2fsck -fn and mounts with the files of the moment); with a remote
# leg (disconnected while detached, its server readable on its own); and
# bad input (last in-sync leg, unknown leg, a leg of another device, a leg
# that is mounted or has shrunk, a linear device): clear errors, nothing
# changed.
# timeout: 600
# SC2016: the bodies of eval '...' expand when evaluated, as intended.
# shellcheck disable=SC2016
# shellcheck source-path=SCRIPTDIR source=../lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
# shellcheck source=../dst.sh
. "$SELFTESTS_DIR/dst.sh"

require_cmd fio mkfs.ext4 e2fsck nbdkit nbdcopy jq ss losetup
MiB=$((1 << 20))
SIZE=$((64 * MiB))
REGION=$((64 << 10))

# sha256 of LEN_MiB MiB of DEV from OFF_MiB MiB.
sum_range() {
	dd if="$1" bs=1M skip="$2" count="$3" iflag=direct status=none | sha256sum | cut -d' ' -f1
}

# Bytes resyncs copied to leg LEG of NAME.
resynced() {
	dst_jq "$1" ".legs[$2].resynced"
}

# The states of NAME's legs, joined by spaces.
leg_states() {
	dst_jq "$1" '[.legs[].state] | join(" ")'
}

# The established TCP connections to local port PORT.
connected() {
	ss -Htn state established "( dport = :$1 )"
}

# Unmounts DIR if something is mounted there.
unmount_if() {
	! mountpoint -q "$1" || umount -l "$1"
}

# write_regions DEV N: N 64 KiB writes, each in a region of its own, spread
# over the first 40 MiB of the device (region k*37).
write_regions() {
	local k
	for ((k = 1; k <= $2; k++)); do
		dd if=/dev/urandom of="$1" bs=64k count=1 seek=$((k * 37)) oflag=direct status=none || return 1
	done
}

# Detach and attach with no other load: the exact point in time, and an
# incremental resync of 1% of the device.
quiet_round() {
	local dev=$1 at_detach before after moved
	dd if=/dev/urandom of="$dev" bs=1M count=64 oflag=direct status=none || return 1
	at_detach=$(sum_dev "$dev" "$SIZE")
	dstctl detach m3 2 || return 1
	[ "$(leg_state m3 2)" = detached ] || { echo "leg 2 is $(leg_state m3 2)"; return 1; }
	[ "$(sum_dev /dev/ram2 "$SIZE")" = "$at_detach" ] || { echo "detached leg != device at detach"; return 1; }
	# 1% of the device: 10 regions of 64 KiB.
	write_regions "$dev" 10 || return 1
	[ "$(sum_dev /dev/ram2 "$SIZE")" = "$at_detach" ] || { echo "the detached leg changed"; return 1; }
	before=$(resynced m3 2)
	dstctl attach m3 2 || return 1
	wait_leg m3 2 in-sync 60 || return 1
	after=$(resynced m3 2)
	moved=$((after - before))
	echo "resync moved $moved bytes for $((10 * REGION)) written"
	[ "$moved" -ge $((10 * REGION)) ] && [ "$moved" -le $((20 * REGION)) ] || return 1
	legs_match_dev "$dev" "$SIZE" /dev/ram0 /dev/ram1 /dev/ram2
}

# Detach leg 1 while fio verify writes the first half; a known pattern in
# the second half is on the detached leg; the leg does not change after
# the detach; attached again under load, it ends identical.
load_round() {
	local dev=$1 pattern s1 s2
	fio_loop_start "$dev" --rw=randwrite --bs=4k --iodepth=16 --size=32M --io_size=16M || return 1
	dd if=/dev/urandom of="$dev" bs=1M count=32 seek=32 oflag=direct status=none || return 1
	pattern=$(sum_range "$dev" 32 32)
	sleep 1
	fio_loop_running || { echo "fio stopped early"; fio_loop_stop; return 1; }
	dstctl detach m3 1 || return 1
	s1=$(sum_dev /dev/ram1 "$SIZE")
	sleep 2
	s2=$(sum_dev /dev/ram1 "$SIZE")
	[ "$s1" = "$s2" ] || { echo "the detached leg changed under load"; return 1; }
	[ "$(sum_range /dev/ram1 32 32)" = "$pattern" ] || { echo "pattern missing on the detached leg"; return 1; }
	dstctl attach m3 1 || return 1
	wait_leg m3 1 in-sync 120 || return 1
	fio_loop_stop || return 1
	legs_match_dev "$dev" "$SIZE" /dev/ram0 /dev/ram1 /dev/ram2
}

# ext4 mounted on the device; detach --freeze; the detached leg is clean
# and holds the files of the moment; files written afterwards are resynced.
ext4_round() {
	local dev=$1 mnt=$TEST_TMP/mnt bak=$TEST_TMP/bak before after
	mkdir -p "$mnt" "$bak"
	mkfs.ext4 -q -F "$dev" || return 1
	mount "$dev" "$mnt" || return 1
	cleanup_push unmount_if "$mnt"
	cp -a /usr/lib/os-release "$mnt/" &&
		dd if=/dev/urandom of="$mnt/data" bs=1M count=8 status=none || return 1
	before=$(cd "$mnt" && sha256sum os-release data)
	# A writer keeps the filesystem busy across the detach.
	(for i in $(seq 1 200); do echo "$i" >>"$mnt/log"; sleep 0.01; done) &
	local writer=$!
	sleep 0.3
	dstctl detach m3 2 --freeze || { wait "$writer"; return 1; }
	wait "$writer"
	dd if=/dev/urandom of="$mnt/later" bs=1M count=2 status=none && sync || return 1
	e2fsck -fn /dev/ram2 || { echo "the detached copy is not clean"; return 1; }
	mount -o ro /dev/ram2 "$bak" || return 1
	after=$(cd "$bak" && sha256sum os-release data)
	[ ! -e "$bak/later" ] || { umount "$bak"; echo "a file written after the detach is on the copy"; return 1; }
	# Mounted elsewhere: attach must refuse and change nothing.
	if dstctl attach m3 2 2>"$TEST_TMP/att.err"; then
		umount "$bak"
		echo "attach of a mounted leg succeeded"
		return 1
	fi
	grep -q "in use" "$TEST_TMP/att.err" || { cat "$TEST_TMP/att.err"; umount "$bak"; return 1; }
	[ "$(leg_state m3 2)" = detached ] || { umount "$bak"; return 1; }
	umount "$bak" || return 1
	[ "$before" = "$after" ] || { echo "files differ on the copy"; return 1; }
	dstctl attach m3 2 || return 1
	wait_leg m3 2 in-sync 60 || return 1
	umount "$mnt" || return 1
	legs_match_dev "$dev" "$SIZE" /dev/ram0 /dev/ram1 /dev/ram2
}

# nbdkit -v's log ($1) holds $2 NBD_CMD_DISC.
discs() {
	[ "$(grep -c "client sent NBD_CMD_DISC, closing connection" "$1")" = "$2" ]
}

# A remote leg: disconnected while detached (its server then serves the
# copy on its own; both connections were told NBD_CMD_DISC), resynced with
# what changed when attached again.
remote_round() {
	local port dev at_detach before moved log
	port=$(free_port)
	log=$TEST_TMP/srv.$port.log
	nbdkit_start "$port" -v memory 64M || return 1
	dd if=/dev/zero of=/dev/ram3 bs=1M count=64 oflag=direct status=none
	dstctl create rm --mirror /dev/ram3 "nbd://127.0.0.1:$port/?timeout=2&backoff-max=1" || return 1
	dev=$(dst_dev rm)
	dd if=/dev/urandom of="$dev" bs=1M count=64 oflag=direct status=none || return 1
	at_detach=$(sum_dev "$dev" "$SIZE")
	[ -n "$(connected "$port")" ] || { echo "no connection to the server before the detach"; return 1; }
	dstctl detach rm 1 || return 1
	[ -z "$(connected "$port")" ] || { echo "still connected"; return 1; }
	wait_until 10 discs "$log" 2 || { echo "not 2 NBD_CMD_DISC: $(grep -c NBD_CMD_DISC "$log")"; return 1; }
	[ "$(export_sum "nbd://127.0.0.1:$port/")" = "$at_detach" ] || { echo "export != device at detach"; return 1; }
	write_regions "$dev" 16 || return 1
	before=$(resynced rm 1)
	dstctl attach rm 1 || return 1
	wait_leg rm 1 in-sync 60 || return 1
	moved=$(($(resynced rm 1) - before))
	echo "resync moved $moved bytes for $((16 * REGION)) written"
	[ "$moved" -ge $((16 * REGION)) ] && [ "$moved" -le $((32 * REGION)) ] || return 1
	same_data "$dev" /dev/ram3 "nbd://127.0.0.1:$port/" "$SIZE" || return 1
	dstctl remove rm && srv_stop "$port"
}

# Bad input: a clear error, and the legs' states are as before.
refused() {
	local name=$1 text=$2 states
	shift 2
	states=$(leg_states "$name")
	expect_err_contains -m "refused ($text): dstctl $*" "$text" dstctl "$@" || return 1
	assert_eq "$(leg_states "$name")" "$states" "  ... $name's legs unchanged ($states)"
}

plan 34
brd_setup 4 64
cleanup_push losetup -D
dst_load
assert_cmd dstctl create m3 --mirror /dev/ram0 /dev/ram1 /dev/ram2
DEV=$(dst_dev m3)
assert_cmd -m "detach at rest: the leg is the device at the detach; 1% written; attach moves 1-2x that; legs identical" \
	quiet_round "$DEV"
assert_cmd -m "detach under fio verify: the leg keeps the pattern and does not change; attach under load; legs identical" \
	load_round "$DEV"
assert_cmd -m "ext4 + detach --freeze: the copy passes e2fsck -fn, has the files of the moment; attach refused while it is mounted" \
	ext4_round "$DEV"
assert_cmd -m "remote leg: disconnected while detached (NBD_CMD_DISC on both connections), server serves the copy; attach resyncs what changed" \
	remote_round

# Bad input.
assert_cmd dstctl detach m3 1
assert_cmd dstctl detach m3 2
refused m3 "last in-sync" detach m3 0
refused m3 "already detached" detach m3 2
refused m3 "not a leg of m3" detach m3 /dev/ram3
refused m3 "not a leg of m3" detach m3 9
refused m3 "is not detached" attach m3 0
assert_cmd dstctl create other --mirror /dev/ram3
refused m3 "not a leg of m3" attach m3 /dev/ram3
assert_cmd dstctl attach m3 1 --full
assert_cmd dstctl attach m3 2
assert_cmd wait_leg m3 1 in-sync 60
assert_cmd wait_leg m3 2 in-sync 60
assert_cmd legs_match_dev "$DEV" "$SIZE" /dev/ram0 /dev/ram1 /dev/ram2
A=$(loop_dev 16)
B=$(loop_dev 16)
assert_cmd dstctl create sh --mirror "$A" "$B"
assert_cmd dstctl detach sh 1
assert_cmd -m "the detached loop leg shrinks to 8 MiB" eval 'truncate -s 8M "$(losetup -nO BACK-FILE "$B")" && losetup -c "$B"'
refused sh "smaller than the device" attach sh 1
assert_cmd dstctl create lin --linear "$(loop_dev 8)" "$(loop_dev 8)"
refused lin "only mirror legs" detach lin 1
dmesg_check
