#!/usr/bin/env bash
# Growing and shrinking a mirror online (dstctl add, dstctl remove-leg),
# under fio with verification.
# (a) A 2-leg mirror gets a third local leg: it is resynced in full, then
#     leg 0 is removed: the others keep their numbers, the device stays ok,
#     ram0 is released (it opens exclusively), fio verifies, the remaining
#     legs hold the device's data.
# (b) A remote leg is added (nbdkit): resynced in full, identical; removed:
#     its connection is closed.
# (c) Bad input: a leg smaller than the device, one that belongs to another
#     device, one already in the mirror, a linear device, the last in-sync
#     leg, a removed leg: clear errors, nothing changed.
# (d) create --sync over legs that differ: the first is copied to the
#     others (a local and a remote leg) while the device is written, and
#     reads as the first meanwhile; at the end all hold the same data.
# timeout: 300
# SC2016: the bodies of eval '...' expand when evaluated, as intended.
# shellcheck disable=SC2016
# shellcheck source-path=SCRIPTDIR source=../lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
# shellcheck source=../dst.sh
. "$SELFTESTS_DIR/dst.sh"

require_cmd fio nbdkit nbdcopy ss jq dmsetup python3
MiB=$((1 << 20))
SIZE=$((64 * MiB))

# The device can be opened exclusively (nobody claims it).
unclaimed() {
	python3 -c 'import os, sys; os.close(os.open(sys.argv[1], os.O_RDONLY | os.O_EXCL))' "$1"
}

# Nothing is connected to port $1.
no_conn() {
	[ -z "$(ss -Htn state established "( dport = :$1 )")" ]
}

legs_of() {
	dst_jq "$1" '[.legs[].index] | map(tostring) | join(" ")'
}

plan 29
brd_setup 6 64
dst_load
cleanup_push sh -c 'dmsetup remove --retry small 2>/dev/null || true'

# ---- (a) local legs -------------------------------------------------------
assert_cmd -m "(a) mirror r (ram0, ram1), 64 MiB written" \
	eval 'dstctl create r --mirror /dev/ram0 /dev/ram1 >/dev/null &&
		dd if=/dev/urandom of="$(dst_dev r)" bs=1M count=64 oflag=direct status=none'
dev=$(dst_dev r)
fio_loop_start "$dev" --rw=randwrite --bs=4k --iodepth=8 --offset=8M --size=16M --verify_backlog=128
assert_cmd -m "add ram2 under fio: leg 2, resynced in full" \
	eval 'dstctl add r /dev/ram2 && wait_leg r 2 in-sync 60'
assert_eq "$(dst_jq r '.legs[2].resynced')" "$SIZE" "  ... it copied the whole device"
assert_cmd -m "remove leg 0 under fio" dstctl remove-leg r 0
assert_eq "$(legs_of r)" "1 2" "  ... legs 1 and 2 remain, with their numbers"
assert_eq "$(dst_jq r .state)" ok "  ... the device is ok"
assert_cmd -m "  ... ram0 is released" unclaimed /dev/ram0
assert_cmd -m "  ... fio verified throughout" fio_loop_stop
assert_cmd -m "  ... legs 1 and 2 hold the device's data" legs_match_dev "$dev" "$SIZE" /dev/ram1 /dev/ram2

# ---- (b) a remote leg -----------------------------------------------------
port=$(free_port)
assert_cmd -m "(b) nbdkit (memory 64M)" nbdkit_start "$port" memory 64M
assert_cmd -m "add it as a leg: leg 3, resynced in full" \
	eval 'dstctl add r "nbd://127.0.0.1:$port/" && wait_leg r 3 in-sync 60'
assert_cmd -m "  ... the device, ram1 and the export are identical" \
	same_data "$dev" /dev/ram1 "nbd://127.0.0.1:$port/" "$SIZE"
assert_cmd -m "remove it: its connection is closed" \
	eval 'dstctl remove-leg r 3 && wait_until 10 no_conn "$port"'

# ---- (c) bad input --------------------------------------------------------
dmsetup create small --table "0 65536 linear /dev/ram4 0" && dmsetup mknodes small
dstctl create other --mirror /dev/ram3 >/dev/null
dstctl create lin --linear /dev/ram5 >/dev/null
before=$(dstctl --json list | jq -S 'map(del(.legs[].reads, .legs[].writes))')
expect_err_contains -m "(c) a leg smaller than the device" "is smaller than r" \
	dstctl add r /dev/mapper/small
expect_err_contains -m "a leg of another device" "busy" dstctl add r /dev/ram3
expect_err_contains -m "a leg already in the mirror" "is already leg 1 of r" dstctl add r /dev/ram1
expect_err_contains -m "the device itself" "cannot be a leg of r" dstctl add r "$dev"
expect_err_contains -m "a linear device" "linear" dstctl add lin /dev/ram0
expect_err_contains -m "the last in-sync leg" "last in-sync leg" dstctl remove-leg other 0
expect_err_contains -m "a removed leg" "not a leg of r" dstctl remove-leg r 0
assert_eq "$(dstctl --json list | jq -S 'map(del(.legs[].reads, .legs[].writes))')" "$before" "  ... nothing changed"
dstctl remove lin && dstctl remove other && dstctl remove r

# ---- (d) an initial sync --------------------------------------------------
# ram0 and ram1 hold different data, the export zeroes: --sync copies ram0
# to the others, while the device is in use and reads as ram0.
dd if=/dev/urandom of=/dev/ram0 bs=1M count=64 oflag=direct status=none
dd if=/dev/urandom of=/dev/ram1 bs=1M count=64 oflag=direct status=none
port=$(free_port)
nbdkit_start "$port" memory 64M
assert_cmd -m "(d) create --sync (ram0, ram1, an nbdkit export; 2 MiB/s): legs 1 and 2 resyncing" \
	eval 'dstctl create s --mirror --sync --resync-max 2M /dev/ram0 /dev/ram1 "nbd://127.0.0.1:$port/" >/dev/null &&
		[ "$(dst_jq s "[.legs[].state] | join(\" \")")" = "in-sync resyncing resyncing" ] &&
		dmesg | grep -q "s: initial sync: copying leg 0 to the other legs (65536 KiB each)"'
dev=$(dst_dev s)
assert_eq "$(sum_dev "$dev" "$SIZE")" "$(sum_dev /dev/ram0 "$SIZE")" "  ... during the sync, the device reads as ram0"
assert_cmd -m "  ... 4 MiB written during the sync" \
	eval 'dd if=/dev/urandom of="$dev" bs=1M count=4 seek=20 oflag=direct status=none &&
		[ "$(leg_state s 2)" = resyncing ]'
# Held to 2 MiB/s until here, so that the sync outlasts the reads and the
# write above on a slow or busy host (at 8 MiB/s, leg 2 was once in sync
# before the write ended); now let it finish.
assert_cmd -m "  ... then the limit lifted" dstctl set s --resync-max none
assert_cmd -m "  ... both legs in sync, each copied in full" \
	eval 'wait_leg s 1 in-sync 60 && wait_leg s 2 in-sync 60 &&
		[ "$(dst_jq s "[.state, .legs[1].resynced, .legs[2].resynced] | map(tostring) | join(\" \")")" = "ok $SIZE $SIZE" ]'
assert_cmd -m "  ... ram0, ram1 and the export hold the device's data" \
	eval 'legs_match_dev "$dev" "$SIZE" /dev/ram0 && same_data "$dev" /dev/ram1 "nbd://127.0.0.1:$port/" "$SIZE"'
dstctl remove s
expect_err_contains -m "--sync on a linear device is refused" "--sync applies to mirrors" \
	dstctl create l --linear --sync /dev/ram0
dmesg_check
