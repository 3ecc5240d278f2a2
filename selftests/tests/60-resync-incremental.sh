#!/usr/bin/env bash
# A remote mirror leg cut off (nft drop) while 1 MiB is written comes back
# with a resync of what it missed, not of the whole 64 MiB device: the
# kernel reports the amount, within 2x of the regions written (plus what
# was in flight), and afterwards the local leg, the export and the device
# are identical.  With resync=full the same cut copies everything.  A cut
# of 30 s under fio (random writes with verification over 8 MiB of the
# device) resyncs at most those 8 MiB; fio verifies throughout.  A server
# that fails requests over 64 KiB gets none: the device's largest request is
# 64 KiB, and a full resync copies its 1 MiB chunks in pieces.
# timeout: 400
# SC2016: the bodies of eval '...' expand when evaluated, as intended.
# shellcheck disable=SC2016
# shellcheck source-path=SCRIPTDIR source=../lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
# shellcheck source=../dst.sh
. "$SELFTESTS_DIR/dst.sh"

require_cmd nbdkit nbdcopy nft ss jq
MiB=$((1 << 20))
SIZE=$((64 * MiB))

# The KiB the kernel said it would resync for device $1 (last message).
resync_kib() {
	dmesg | sed -n "s/.*dst: $1: leg 1 is back; resyncing .* (\([0-9]*\) KiB)/\1/p" | tail -n 1
}

# cut_round NAME MODE: cut, write 1 MiB at 40 MiB, heal, wait in sync.
cut_round() {
	local name=$1 mode=$2 port dev
	port=$(free_port)
	nbdkit_start "$port" memory 64M || return 1
	dd if=/dev/zero of=/dev/ram0 bs=1M count=64 oflag=direct status=none
	dstctl create "$name" --mirror /dev/ram0 "nbd://127.0.0.1:$port/?timeout=2&backoff-max=1&resync=$mode" ||
		return 1
	dev=$(dst_dev "$name")
	dd if=/dev/urandom of="$dev" bs=1M count=8 oflag=direct status=none || return 1
	nft_cut "$port" || return 1
	dd if=/dev/urandom of="$dev" bs=64k count=16 seek=640 oflag=direct status=none || return 1
	wait_leg "$name" 1 down 20 || return 1
	nft_heal
	wait_leg "$name" 1 in-sync 60 || return 1
	echo "resynced $(resync_kib "$name") KiB"
	same_data "$dev" /dev/ram0 "nbd://127.0.0.1:$port/" "$SIZE" || return 1
	dstctl remove "$name" && srv_stop "$port"
}

# cut_load_round NAME: a 30 s cut while fio writes [16 MiB, 24 MiB).
cut_load_round() {
	local name=$1 port dev
	port=$(free_port)
	nbdkit_start "$port" memory 64M || return 1
	dstctl create "$name" --mirror /dev/ram0 "nbd://127.0.0.1:$port/?timeout=2&backoff-max=1" || return 1
	dev=$(dst_dev "$name")
	dd if=/dev/urandom of="$dev" bs=1M count=64 oflag=direct status=none || return 1
	fio_loop_start "$dev" --rw=randwrite --bs=4k --iodepth=8 --offset=16M --size=8M --verify_backlog=128
	sleep 2
	nft_cut "$port" || return 1
	wait_leg "$name" 1 down 20 || return 1
	sleep 28
	nft_heal
	wait_leg "$name" 1 in-sync 90 || return 1
	fio_loop_stop || return 1
	same_data "$dev" /dev/ram0 "nbd://127.0.0.1:$port/" "$SIZE" || return 1
	dstctl remove "$name" && srv_stop "$port"
}

# small_max_round NAME: as cut_round with resync=full, to a server that
# takes at most 64 KiB per request and fails larger ones (EINVAL).
small_max_round() {
	local name=$1 port dev kb before after
	port=$(free_port)
	nbdkit_start "$port" --filter=blocksize-policy memory 64M blocksize-minimum=512 \
		blocksize-preferred=4096 blocksize-maximum=65536 blocksize-error-policy=error || return 1
	dd if=/dev/zero of=/dev/ram0 bs=1M count=64 oflag=direct status=none
	dstctl create "$name" --mirror /dev/ram0 "nbd://127.0.0.1:$port/?timeout=2&backoff-max=1&resync=full" ||
		return 1
	dev=$(dst_dev "$name")
	kb=$(cat "/sys/block/${dev#/dev/}/queue/max_sectors_kb")
	[ "$kb" -le 64 ] || { echo "max_sectors_kb is $kb, over the server's 64"; return 1; }
	dd if=/dev/urandom of="$dev" bs=1M count=8 oflag=direct status=none || return 1
	nft_cut "$port" || return 1
	dd if=/dev/urandom of="$dev" bs=1M count=1 seek=40 oflag=direct status=none || return 1
	wait_leg "$name" 1 down 20 || return 1
	# The writes the cut failed on the leg are counted; none may follow.
	before=$(dst_jq "$name" '.legs[1].write_errors + .legs[1].read_errors')
	nft_heal
	wait_leg "$name" 1 in-sync 90 || return 1
	after=$(dst_jq "$name" '.legs[1].write_errors + .legs[1].read_errors')
	[ "$after" = "$before" ] || { echo "the remote leg's errors went from $before to $after"; return 1; }
	NBDCOPY_ARGS=--request-size=65536 same_data "$dev" /dev/ram0 "nbd://127.0.0.1:$port/" "$SIZE" || return 1
	dstctl remove "$name" && srv_stop "$port"
}

plan 9
brd_setup 1 64
dst_load
assert_cmd -m "resync=dirty (default): cut, write 1 MiB, heal: back in sync, legs identical" cut_round rd dirty
kib=$(resync_kib rd)
diag "resync=dirty copied ${kib:-?} KiB after 1 MiB was written"
assert_cmd -m "  ... it copied 1 MiB to 2 MiB, not the device" eval '[ -n "$kib" ] && [ "$kib" -ge 1024 ] && [ "$kib" -le 2048 ]'
assert_cmd -m "resync=full: the same cut: back in sync, legs identical" cut_round rf full
kib=$(resync_kib rf)
diag "resync=full copied ${kib:-?} KiB"
assert_eq "$kib" $((SIZE / 1024)) "  ... it copied the whole device"
assert_cmd -m "a 30 s cut under fio: back in sync, fio verified, legs identical" cut_load_round rl
kib=$(resync_kib rl)
diag "the 30 s cut under fio: resync copied ${kib:-?} KiB"
assert_cmd -m "  ... it copied at most the 8 MiB fio wrote to" eval '[ -n "$kib" ] && [ "$kib" -gt 0 ] && [ "$kib" -le 8192 ]'
assert_cmd -m "a server taking at most 64 KiB: requests no larger, full resync after a cut without errors, legs identical" \
	small_max_round rs
assert_eq "$(resync_kib rs)" $((SIZE / 1024)) "  ... the resync copied the whole device"
dmesg_check
