#!/usr/bin/env bash
# The only source of a resync goes away and comes back.  A mirror of a
# remote leg (nbdkit serving a file, so its data outlives a restart) and a
# RAM disk.  The RAM disk, leg 1, is detached while 16 MiB are written,
# then attached with the resync held to 2 MiB/s, so that the copy mostly
# waits between chunks with none in flight.  Part way through, the server
# is killed: leg 0 is the last in-sync leg, so it is held rather than
# failed, and the resync has no source to copy from.  The server comes
# back: the resync goes on by itself and ends, and the legs and the
# device hold the same data.
# timeout: 240
# shellcheck source-path=SCRIPTDIR source=../lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
# shellcheck source=../dst.sh
. "$SELFTESTS_DIR/dst.sh"

require_cmd nbdkit nbdcopy jq
MiB=$((1 << 20))
SIZE=$((64 * MiB))

plan 9
brd_setup 1 64
dst_load
port=$(free_port)
assert_cmd -m "nbdkit serving a 64 MiB file" nbdkit_file_start "$port" "$SIZE"
url="nbd://127.0.0.1:$port/?timeout=5&backoff-max=1"
assert_cmd -m "mirror m of the remote leg and ram0; ram0 in sync" \
	eval 'dstctl create m --mirror "$url" /dev/ram0 >/dev/null && wait_leg m 1 in-sync 60'
dev=$(dst_dev m)
assert_cmd -m "detach ram0, write 16 MiB, hold the resync to 2 MiB/s, attach" \
	eval 'dstctl detach m 1 >/dev/null &&
		dd if=/dev/urandom of="$dev" bs=1M count=16 oflag=direct status=none &&
		dstctl set m --resync-max 2M >/dev/null && dstctl attach m 1 >/dev/null'
assert_cmd -m "  ... the resync copies some" wait_until 60 resync_past m 1 $((2 * MiB))
assert_cmd -m "kill the server: leg 0 is held (down, still the data's only copy)" \
	eval 'srv_kill "$port" && wait_leg m 0 down 30'
at_kill=$(done_of m 1)
# Long enough for the paced copy to look for a source and find none.
sleep 3
assert_cmd -m "restart the server: leg 0 is back" \
	eval 'srv_restart "$port" && wait_leg m 0 in-sync 30'
diag "ram0: $at_kill of $(dst_jq m '.legs[1].resync_total') bytes copied when the server went"
assert_cmd -m "  ... the resync goes on by itself, and ram0 is in sync" wait_leg m 1 in-sync 60
assert_cmd -m "  ... the device, ram0 and the export hold the same data" \
	same_data "$dev" /dev/ram0 "nbd://127.0.0.1:$port/" "$SIZE"
dstctl remove m
dmesg_check
