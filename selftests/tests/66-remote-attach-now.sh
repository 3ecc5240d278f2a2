#!/usr/bin/env bash
# A remote leg detached while its server is away, then attached once the
# server is back, connects at once, not at the retry its backoff had
# planned.  A mirror of ram0 and a remote leg (nbdkit serving a file,
# backoff-max 60 s); the server is killed and stays away for 27 s, so that
# the leg's next retry is some 50 s off; the leg is detached, 1 MiB is
# written, the server restarted and the leg attached: it is in sync within
# 10 s, and holds the device's data.
# timeout: 180
# shellcheck source-path=SCRIPTDIR source=../lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
# shellcheck source=../dst.sh
. "$SELFTESTS_DIR/dst.sh"

require_cmd nbdkit nbdcopy jq
MiB=$((1 << 20))
SIZE=$((64 * MiB))

plan 7
brd_setup 1 64
dst_load
port=$(free_port)
assert_cmd -m "nbdkit serving a 64 MiB file" nbdkit_file_start "$port" "$SIZE"
assert_cmd -m "mirror m of ram0 and the remote leg (backoff-max 60 s), in sync" \
	eval 'dstctl create m --mirror /dev/ram0 "nbd://127.0.0.1:$port/?timeout=2&backoff-max=60" >/dev/null &&
		wait_leg m 1 in-sync 60'
dev=$(dst_dev m)
assert_cmd -m "kill the server: the leg is down" eval 'srv_kill "$port" && wait_leg m 1 down 30'
# Retries after 0.1, 0.3, 0.7 ... 12.7, 25.5 s: the next is at about 77 s.
sleep 27
assert_cmd -m "detach it, write 1 MiB, restart the server" \
	eval 'dstctl detach m 1 >/dev/null &&
		dd if=/dev/urandom of="$dev" bs=1M count=1 seek=8 oflag=direct status=none &&
		srv_restart "$port"'
t0=${EPOCHREALTIME/./}
rc=0
out=$(dstctl attach m 1 2>&1 && wait_leg m 1 in-sync 10 2>&1) || rc=$?
[ -z "$out" ] || diag "$out"
diag "in sync $(((${EPOCHREALTIME/./} - t0) / 1000)) ms after the attach"
assert_eq "$rc" 0 "attached: it connects at once and is in sync within 10 s"
assert_cmd -m "  ... the device, ram0 and the export hold the same data" \
	same_data "$dev" /dev/ram0 "nbd://127.0.0.1:$port/" "$SIZE"
dstctl remove m
dmesg_check
