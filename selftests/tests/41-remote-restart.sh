#!/usr/bin/env bash
# A remote mirror leg whose server is killed (SIGKILL) and restarted ten
# times, a second or two apart, under fio random writes with crc32c
# verification (run back to back): fio sees no error; each time the leg
# goes down, comes back and is resynced in full (nbdkit memory loses
# everything when killed); `dstctl monitor --json` reports every
# transition, every resync started either finishes or is reported stopped
# (a kill may cut one short), and at the end the leg is in sync and the
# legs are identical.
# timeout: 420
# shellcheck source-path=SCRIPTDIR source=../lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
# shellcheck source=../dst.sh
. "$SELFTESTS_DIR/dst.sh"

require_cmd fio nbdkit nbdcopy ss jq
MiB=$((1 << 20))
SIZE=$((32 * MiB))
RESTARTS=10

# Kill the server, restart it a second later, wait until the leg is back
# (resyncing, or already in sync), $RESTARTS times.
restarts() {
	local i
	for ((i = 1; i <= RESTARTS; i++)); do
		sleep 1.5
		echo "restart $i at ${SECONDS}s: leg $(leg_state rr 1), fio $(fio_loop_running && echo running || echo "done")"
		srv_kill "$port" KILL || return 1
		sleep 1
		srv_restart "$port" || return 1
		echo "  restarted at ${SECONDS}s: leg $(leg_state rr 1)"
		wait_leg rr 1 "resyncing|in-sync" 30 || return 1
	done
}

plan 13
brd_setup 1 32
dst_load
port=$(free_port)
assert_cmd -m "nbdkit memory 32M on port $port" nbdkit_start "$port" memory 32M
assert_cmd -m "create a mirror of ram0 and the export (timeout 3s, backoff-max 1s)" \
	dstctl create rr --mirror /dev/ram0 "nbd://127.0.0.1:$port/?timeout=3&backoff-max=1&resync=full"
dev=$(dst_dev rr)
assert_cmd -m "dstctl monitor --json runs" monitor_start "$TEST_TMP/events"

fio_loop_start "$dev" --rw=randwrite --bs=4k --iodepth=16 --size=32M --verify_backlog=1024
sleep 2
rc=0
restarts >"$TEST_TMP/restarts.log" 2>&1 || rc=$?
diag <"$TEST_TMP/restarts.log"
assert_eq "$rc" 0 "the server was killed and restarted $RESTARTS times, the leg back after each"
rc=0
fio_loop_stop >"$TEST_TMP/fio.log" 2>&1 || rc=$?
diag <"$TEST_TMP/fio.log"
assert_eq "$rc" 0 "fio (randwrite 4k QD16 + crc32c verify), run back to back meanwhile: no error"
assert_cmd -m "fio was still running at the last restart" \
	grep -q "restart $RESTARTS at .*fio running" "$TEST_TMP/restarts.log"

assert_cmd -m "the leg is in sync (bounded wait)" wait_leg rr 1 in-sync 60
monitor_stop
downs=$(monitor_count "$TEST_TMP/events" leg-state leg=1 to=down)
started=$(monitor_count "$TEST_TMP/events" resync-started leg=1)
finished=$(monitor_count "$TEST_TMP/events" resync-finished leg=1)
stopped=$(monitor_count "$TEST_TMP/events" resync-stopped leg=1)
diag "monitor: $downs transitions to down; resyncs: $started started, $finished finished, $stopped stopped"
assert_cmd -m "the monitor saw >= $RESTARTS transitions to down and >= $RESTARTS resyncs started" \
	test "$downs" -ge "$RESTARTS" -a "$started" -ge "$RESTARTS"
assert_cmd -m "every resync started finished or was reported stopped; the last one finished" \
	test "$started" -eq $((finished + stopped)) -a "$finished" -ge 1
assert_eq "$(dst_json rr 'd["state"], d["legs"][1]["connects"], d["legs"][0]["write_errors"]')" \
	"ok $((RESTARTS + 1)) 0" "device ok; $((RESTARTS + 1)) connections; no error on ram0"
assert_cmd -m "ram0, the export and the device hold the same data" same_data "$dev" /dev/ram0 "nbd://127.0.0.1:$port/" "$SIZE" || {
	dmesg | grep -E '(^|\] )rr: ' | tail -n 40 | diag
	false
}
assert_cmd -m "remove the mirror" dstctl remove rr
dmesg_check
