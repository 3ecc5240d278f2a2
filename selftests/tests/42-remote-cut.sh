#!/usr/bin/env bash
# A silent network cut (nft drops every TCP packet to and from the server's
# port; nothing is reset, the server stays up).
# (a) Mirror of a RAM disk and a remote leg (timeout 3s): under fio with
#     verification and a probe writing and timing 64k writes, the leg goes
#     down once its requests time out, writes never stall much longer than
#     the timeout and keep completing during the cut; once healed the leg
#     reconnects, resyncs, is in sync again and the legs are identical.
# (b) Linear over one remote leg (timeout 2s, dead time 8s): a write
#     started after the cut fails with EIO, not before the dead time, then
#     new I/O fails at once; once healed the leg reconnects and I/O works.
# (c) A mirror whose leg keeps trying to reconnect to a server behind a cut
#     (each attempt may wait up to the leg's timeout, 20 s here) is removed
#     at once: the attempt under way is cut short.
# timeout: 300
# SC2016: the bodies of eval '...' expand when evaluated, as intended.
# shellcheck disable=SC2016
# shellcheck source-path=SCRIPTDIR source=../lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
# shellcheck source=../dst.sh
. "$SELFTESTS_DIR/dst.sh"

require_cmd fio nbdkit nbdcopy nbdinfo nft ss jq
MiB=$((1 << 20))
SIZE=$((32 * MiB))
TIMEOUT=3

now_us() {
	echo "${EPOCHREALTIME/./}"
}

# Probe: 64k O_DIRECT writes to [24 MiB, 30 MiB) of $1 (fio keeps to the
# first 24 MiB, a check of its own uses the last 2), back to back until
# $TEST_TMP/probe.stop exists; one line per write: start end status (times
# in microseconds).
probe() {
	local dev=$1 t0 rc
	while [ ! -e "$TEST_TMP/probe.stop" ]; do
		t0=$(now_us)
		rc=0
		dd if=/dev/urandom of="$dev" bs=64k count=1 seek=$((384 + RANDOM % 96)) \
			oflag=direct conv=notrunc status=none 2>/dev/null || rc=$?
		echo "$t0 $(now_us) $rc"
	done
}

probe_stop() {
	touch "$TEST_TMP/probe.stop"
	[ -z "${probe_pid:-}" ] || wait "$probe_pid" || true
	probe_pid=''
}

# The probe's writes: all succeeded, none took longer than $TIMEOUT + 6 s,
# and at least 3 completed between $1 and $2 (microseconds).
probe_ok() {
	awk -v from="$1" -v to="$2" -v max=$(((TIMEOUT + 6) * 1000000)) '
		{ n++; lat = $2 - $1; if (lat > worst) worst = lat; if ($3 != 0) bad++
		  if ($2 >= from && $2 <= to) during++ }
		END { printf "%d writes, %d failed, slowest %.1f s, %d completed during the cut\n",
			n, bad, worst / 1e6, during
			exit !(n > 0 && bad == 0 && worst <= max && during >= 3) }' "$TEST_TMP/probe.log"
}

# How long (s, one decimal) `$@` took, in $elapsed; its status in $status
# and its stderr in $TEST_TMP/timed.err.
timed() {
	local t0
	t0=$(now_us)
	status=0
	"$@" 2>"$TEST_TMP/timed.err" || status=$?
	elapsed=$((($(now_us) - t0) / 100000))
	elapsed=$((elapsed / 10)).$((elapsed % 10))
}

# $1 <= $2 <= $3 (decimals)
between() {
	awk -v a="$1" -v x="$2" -v b="$3" 'BEGIN { exit !(a <= x && x <= b) }'
}

plan 38
brd_setup 1 32
dst_load

# (a) Mirror.
port=$(free_port)
assert_cmd -m "nbdkit memory 32M on port $port" nbdkit_start "$port" memory 32M
assert_cmd -m "the cut works: nbdinfo times out while it lasts" \
	eval 'nft_cut "$port" && ! timeout 5 nbdinfo --size "nbd://127.0.0.1:$port/" && nft_heal &&
		timeout 10 nbdinfo --size "nbd://127.0.0.1:$port/"'
assert_cmd -m "create a mirror of ram0 and the export (timeout ${TIMEOUT}s, backoff-max 1s)" \
	dstctl create mc --mirror /dev/ram0 "nbd://127.0.0.1:$port/?timeout=$TIMEOUT&backoff-max=1"
dev=$(dst_dev mc)
monitor_start "$TEST_TMP/events"
fio_loop_start "$dev" --rw=randwrite --bs=4k --iodepth=16 --size=24M --verify_backlog=1024
rm -f "$TEST_TMP/probe.stop"
probe "$dev" >"$TEST_TMP/probe.log" &
probe_pid=$!
cleanup_push probe_stop
sleep 3
cut_start=$(now_us)
assert_cmd -m "cut the network to the server (under fio and the probe)" nft_cut "$port"
assert_cmd -m "the leg goes down within the timeout (+ slack)" wait_leg mc 1 down $((TIMEOUT + 15))
problem=$(dst_jq mc ".legs[1].problem")
diag "problem: $problem"
assert_cmd -m "its problem says the connection timed out" \
	eval '[[ "$problem" =~ "timed out"|"errno -110" ]]'
assert_eq "$(dst_jq mc '.state')" degraded "the mirror is degraded"
head -c "$MiB" /dev/urandom >"$TEST_TMP/mib"
timed dd if="$TEST_TMP/mib" of="$dev" bs=1M seek=31 oflag=direct status=none
assert_cmd -m "during the cut, a 1 MiB O_DIRECT write completes at once (${elapsed}s)" \
	eval '[ "$status" = 0 ] && between 0 "$elapsed" 3'
assert_eq "$(dd if="$dev" bs=1M skip=31 count=1 iflag=direct status=none | sha256sum | cut -d' ' -f1)" \
	"$(sha256sum <"$TEST_TMP/mib" | cut -d' ' -f1)" "and reads back"
# Keep the cut for 10 s in all, well past the timeout.
while [ $(($(now_us) - cut_start)) -lt 10000000 ]; do sleep 0.5; done
assert_eq "$(leg_state mc 1)" down "the leg is still down 10 s into the cut"
cut_end=$(now_us)
assert_cmd -m "heal the network" nft_heal
assert_cmd -m "the leg comes back (resyncing or in sync) within backoff + timeout (+ slack)" \
	wait_leg mc 1 "resyncing|in-sync" $((1 + TIMEOUT + 20))
assert_cmd -m "and is in sync again (bounded wait)" wait_leg mc 1 in-sync 60
probe_stop
assert_cmd -m "fio (randwrite 4k QD16 + crc32c verify), back to back across the cut: no error" fio_loop_stop
assert_cmd -m "probe: every write succeeded, none stalled past timeout + 6 s, writes completed during the cut" \
	probe_ok "$cut_start" "$cut_end"
diag "probe: $(probe_ok "$cut_start" "$cut_end")"
monitor_stop
assert_cmd -m "the monitor saw in-sync -> down -> resyncing -> in-sync" eval '
	[ "$(monitor_count "$TEST_TMP/events" leg-state leg=1 from=in-sync to=down)" -ge 1 ] &&
	[ "$(monitor_count "$TEST_TMP/events" leg-state leg=1 from=down to=resyncing)" -ge 1 ] &&
	[ "$(monitor_count "$TEST_TMP/events" leg-state leg=1 from=resyncing to=in-sync)" -ge 1 ]'
assert_eq "$(dst_jq mc '[.state, .legs[1].connects] | map(tostring) | join(" ")')" "ok 2" "device ok, leg reconnected once"
assert_cmd -m "ram0, the export and the device hold the same data" same_data "$dev" /dev/ram0 "nbd://127.0.0.1:$port/" "$SIZE"
assert_cmd -m "remove the mirror" dstctl remove mc
srv_stop "$port"

# (b) Linear over one remote leg.
port=$(free_port)
assert_cmd -m "nbdkit memory 32M on port $port" nbdkit_start "$port" memory 32M
assert_cmd -m "create a linear device over it (timeout 2s, dead time 8s, backoff-max 1s)" \
	dstctl create lc --linear "nbd://127.0.0.1:$port/?timeout=2&dead-time=8&backoff-max=1"
dev=$(dst_dev lc)
head -c $((4 * MiB)) /dev/urandom >"$TEST_TMP/p1"
assert_cmd -m "write 4 MiB" dd if="$TEST_TMP/p1" of="$dev" bs=64k oflag=direct status=none
assert_cmd -m "cut the network" nft_cut "$port"
timed dd if="$TEST_TMP/p1" of="$dev" bs=64k oflag=direct status=none
diag "dd: status $status after ${elapsed}s: $(cat "$TEST_TMP/timed.err")"
assert_cmd -m "a write started after the cut fails with EIO" \
	eval '[ "$status" != 0 ] && grep -q "Input/output error" "$TEST_TMP/timed.err"'
assert_cmd -m "not before the dead time (8 s - 1), within dead time + timeout + 15 s (${elapsed}s)" \
	between 7 "$elapsed" 25
assert_eq "$(dst_jq lc '[.state, .legs[0].state] | map(tostring) | join(" ")')" "failed down" "device failed, leg down"
timed dd if="$TEST_TMP/p1" of="$dev" bs=4k count=1 oflag=direct status=none
assert_cmd -m "past the dead time, new I/O fails at once (${elapsed}s)" \
	eval '[ "$status" != 0 ] && between 0 "$elapsed" 3'
assert_cmd -m "heal the network" nft_heal
assert_cmd -m "the leg reconnects (bounded wait)" \
	wait_until 30 eval '[ "$(dst_jq lc "[.state, .legs[0].state, .legs[0].connects] | map(tostring) | join(\" \")")" = "ok in-sync 2" ]'
head -c $((4 * MiB)) /dev/urandom >"$TEST_TMP/p2"
assert_cmd -m "I/O works again: write 4 MiB, read it back" eval '
	dd if="$TEST_TMP/p2" of="$dev" bs=64k oflag=direct status=none &&
	[ "$(sum_dev "$dev" $((4 * MiB)))" = "$(sha256sum <"$TEST_TMP/p2" | cut -d" " -f1)" ] &&
	[ "$(export_sum "nbd://127.0.0.1:$port/")" = "$(sum_dev "$dev")" ]'
assert_cmd -m "remove the linear device" dstctl remove lc
srv_stop "$port"

# (c) Removing a device while its leg reconnects to a cut server.
port=$(free_port)
assert_cmd -m "nbdkit memory 32M on port $port" nbdkit_start "$port" memory 32M
assert_cmd -m "create a mirror of ram0 and the export (timeout 20s, backoff-max 1s)" \
	dstctl create rc --mirror /dev/ram0 "nbd://127.0.0.1:$port/?timeout=20&backoff-max=1"
assert_cmd -m "kill the server: its connection closes" srv_kill "$port"
assert_cmd -m "the leg goes down (and keeps trying, refused at once)" wait_leg rc 1 down 15
assert_cmd -m "cut the network: an attempt now waits for an answer to its SYN" nft_cut "$port"
# Attempts come at most 1 s apart (backoff-max): one is under way.
sleep 3
timed "$DSTCTL" remove rc
diag "remove: status $status after ${elapsed}s: $(cat "$TEST_TMP/timed.err")"
assert_cmd -m "remove succeeds within 3 s, not after the 20 s timeout (${elapsed}s)" \
	eval '[ "$status" = 0 ] && between 0 "$elapsed" 3'
nft_heal
dmesg_check
