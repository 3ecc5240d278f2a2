#!/usr/bin/env bash
# Remote legs against a misbehaving NBD server (nbd-hostile):
# - handshake misbehaviours: `create` fails at once with the reason, in
#   full, and no device is left; a server without NBD_OPT_GO is used
#   through NBD_OPT_EXPORT_NAME;
# - transmission misbehaviours on a mirror of a RAM disk and the hostile
#   leg: data written and read back is right (the RAM disk carries it),
#   the leg is dropped for the right reason (down; faulty when the server
#   fails writes; read errors retried on the RAM disk), no kernel warning;
# - a linear device whose server turns hostile: I/O fails with EIO in
#   bounded time, it never hangs;
# - a server whose export grows between connections: the reconnect is
#   refused, the leg stays down, its problem names the size.
# timeout: 900
# SC2016: the bodies of eval '...' expand when evaluated, as intended.
# shellcheck disable=SC2016
# shellcheck source-path=SCRIPTDIR source=../lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
# shellcheck source=../dst.sh
. "$SELFTESTS_DIR/dst.sh"

require_cmd nft ss jq
[ -x "$NBD_HOSTILE" ] || skip_all "no nbd-hostile at $NBD_HOSTILE (cargo build --release in userspace/)"
MiB=$((1 << 20))
TIMEOUT=2

now_us() {
	echo "${EPOCHREALTIME/./}"
}

# $1 <= $2 <= $3 (decimals)
between() {
	awk -v a="$1" -v x="$2" -v b="$3" 'BEGIN { exit !(a <= x && x <= b) }'
}

no_devices() {
	[ "$("$DSTCTL" --json list)" = "[]" ] || { "$DSTCTL" list; return 1; }
}

# The first thing the kernel logged about leg 1 of device $1 going away.
first_problem() {
	dmesg | sed -n "s/.*dst: $1: leg 1: //p" | head -n 1
}

head -c $((4 * MiB)) /dev/urandom >"$TEST_TMP/pat"
PAT=$(sha256sum <"$TEST_TMP/pat" | cut -d' ' -f1)

# Write the pattern to $1 and read it back from $1 and from ram0; bounded.
write_read() {
	timeout 60 dd if="$TEST_TMP/pat" of="$1" bs=64k oflag=direct status=none || return 1
	[ "$(timeout 60 dd if="$1" bs=64k count=64 iflag=direct status=none | sha256sum | cut -d' ' -f1)" = "$PAT" ] ||
		{ echo "the device reads back wrong data"; return 1; }
	[ "$(sum_dev /dev/ram0 $((4 * MiB)))" = "$PAT" ] || { echo "ram0 holds wrong data"; return 1; }
}

# ---- handshake -------------------------------------------------------------

# hs_case MODE REASON: create fails within TIMEOUT + 10 s, no device is
# left, and the error names REASON in full.
hs_case() {
	local mode=$1 reason=$2 port t0 rc=0 secs
	port=$(free_port)
	hostile_start "$port" --mode "$mode" --size 32M
	t0=$(now_us)
	"$DSTCTL" create hs --mirror /dev/ram0 "nbd://127.0.0.1:$port/?timeout=$TIMEOUT" \
		>/dev/null 2>"$TEST_TMP/err" || rc=$?
	secs=$((($(now_us) - t0) / 1000000))
	assert_cmd -m "$mode: create fails (status 1) within $((TIMEOUT + 10))s (${secs}s), no device left" \
		eval '[ "$rc" = 1 ] && [ "$secs" -le $((TIMEOUT + 10)) ] && no_devices' || true
	diag "$mode: $(cat "$TEST_TMP/err")"
	assert_cmd -m "$mode: one line naming the leg and the reason in full: '$reason'" \
		eval '[ "$(wc -l <"$TEST_TMP/err")" = 1 ] && grep -qF "leg nbd://127.0.0.1:$port/" "$TEST_TMP/err" &&
			grep -qF -- "$reason" "$TEST_TMP/err"' || true
	"$DSTCTL" remove hs >/dev/null 2>&1 || true
	srv_stop "$port"
}

# ---- transmission ----------------------------------------------------------

# Leg 1 of device $1 was repaired after read errors (logged once it left
# the in-sync set), and is in sync again, the device ok.
repaired() {
	dmesg | grep -q "$1: leg 1 (.*) failed reads; rewriting them" &&
		[ "$(dst_jq "$1" '[.state, .legs[1].state, .legs[1].read_errors > 0] | map(tostring) | join(" ")')" = "ok in-sync true" ]
}

# tx_case MODE END PROBLEM: a mirror of ram0 and a leg (two connections,
# whatever the default) whose server turns MODE after 20 good requests.
# The pattern is written and read back right; then the leg is END (down:
# dropped, PROBLEM (an ERE) in the kernel log, and down for good once the
# server is gone; faulty; or in-sync, with read errors, rewritten from the
# RAM disk); no kernel warning.
tx_case() {
	local mode=$1 end=$2 problem=$3 port name=h-$1 dev first
	port=$(free_port)
	hostile_start "$port" --mode "$mode" --size 32M --after 20
	dd if=/dev/zero of=/dev/ram0 bs=1M count=32 oflag=direct status=none
	assert_cmd -m "$mode: create a mirror of ram0 and the leg" \
		dstctl create "$name" --mirror /dev/ram0 "nbd://127.0.0.1:$port/?timeout=$TIMEOUT&backoff-max=1&conns=2" ||
		return 1
	dev=$(dst_dev "$name")
	assert_cmd -m "$mode: 4 MiB written and read back right (bounded)" write_read "$dev" || true
	case $end in
	down)
		wait_leg "$name" 1 "down|resyncing" 20 >/dev/null 2>&1 || true
		first=$(first_problem "$name")
		diag "$mode: first problem: $first"
		srv_stop "$port"
		assert_cmd -m "$mode: the leg was dropped ($problem); with the server gone it is down" \
			eval '[[ $first =~ $problem ]] && wait_leg "$name" 1 down 20 &&
				[ "$(dst_jq "$name" .state)" = degraded ]' || true
		;;
	faulty)
		assert_cmd -m "$mode: the leg is faulty, never reconnected" \
			eval 'wait_leg "$name" 1 faulty 20 && dmesg | grep -q "$name: leg .* failed a write (errno -5), now faulty" &&
				[ "$(dst_jq "$name" "[.state, .legs[1].connects] | map(tostring) | join(\" \")")" = "degraded 1" ]' || true
		srv_stop "$port"
		;;
	in-sync)
		assert_cmd -m "$mode: read errors retried on ram0, counted, and rewritten from it: the leg is in sync" \
			wait_until 30 repaired "$name" || true
		srv_stop "$port"
		;;
	esac
	assert_cmd -m "$mode: remove, no kernel warning" eval 'dstctl remove "$name" >/dev/null && dmesg_scan' || true
}

plan 93
brd_setup 1 32
dst_load

hs_case bad-greeting-magic "not an NBD server (bad magic"
hs_case oldstyle "lacks the fixed newstyle handshake"
hs_case no-fixed-newstyle "lacks the fixed newstyle handshake"
hs_case opt-reply-bad-magic "bad magic"
hs_case opt-reply-huge-len "option reply is too long"
hs_case no-info-export "accepted NBD_OPT_GO without sending NBD_INFO_EXPORT"
hs_case zero-size "the export is empty"
# A correct handshake, a byte every 200 ms: each byte comes within the
# timeout, the whole handshake does not.
hs_case slow-handshake "timed out"

# info-garbage: a different impossible NBD_INFO_BLOCK_SIZE per connection.
port=$(free_port)
hostile_start "$port" --mode info-garbage --size 32M
: >"$TEST_TMP/errs"
rc=ok
for reason in "minimum block size is not a power of two up to 64 KiB" \
	"minimum block size is not a power of two up to 64 KiB" \
	"preferred block size is not a power of two >= 512 and >= the minimum" \
	"preferred block size is not a power of two >= 512 and >= the minimum" \
	"maximum block size is not a multiple of the minimum" \
	"maximum block size is not a multiple of the minimum" \
	"maximum block size is below the preferred block size"; do
	if timeout 30 "$DSTCTL" create hs --mirror /dev/ram0 "nbd://127.0.0.1:$port/?timeout=$TIMEOUT" \
		>/dev/null 2>"$TEST_TMP/err"; then
		rc=created
		"$DSTCTL" remove hs
	fi
	cat "$TEST_TMP/err" >>"$TEST_TMP/errs"
	grep -qF -- "$reason" "$TEST_TMP/err" || echo "missing: $reason" >>"$TEST_TMP/errs"
done
diag <"$TEST_TMP/errs"
assert_cmd -m "info-garbage: 7 impossible block size sets, each refused, no device left" \
	eval '[ "$rc" = ok ] && no_devices' || true
assert_cmd -m "info-garbage: each error names the bad block size in full" \
	eval '! grep -q "^missing" "$TEST_TMP/errs"' || true
srv_stop "$port"

# A server that takes no request over 2 KiB: the block layer takes no
# limit under a page, so the leg is refused (it used to warn in the kernel).
port=$(free_port)
hostile_start "$port" --size 32M --block-size 512,512,2048
rc=0
"$DSTCTL" create hs --mirror /dev/ram0 "nbd://127.0.0.1:$port/?timeout=$TIMEOUT" >/dev/null 2>"$TEST_TMP/err" || rc=$?
diag "max-block: $(cat "$TEST_TMP/err")"
assert_cmd -m "max-block 2048: create fails, naming the size; no device left, no kernel warning" \
	eval '[ "$rc" = 1 ] && grep -qF "maximum block size (2048) is under 4096" "$TEST_TMP/err" &&
		no_devices && dmesg_scan' || true
srv_stop "$port"

# go-unsup: an old server, used through NBD_OPT_EXPORT_NAME.
port=$(free_port)
hostile_start "$port" --mode go-unsup --size 32M
assert_cmd -m "go-unsup: create succeeds (NBD_OPT_EXPORT_NAME fallback)" \
	dstctl create hs --mirror /dev/ram0 "nbd://127.0.0.1:$port/?timeout=$TIMEOUT"
assert_cmd -m "go-unsup: 4 MiB written and read back, leg in sync, remove" eval '
	write_read "$(dst_dev hs)" && [ "$(leg_state hs 1)" = in-sync ] && dstctl remove hs >/dev/null'
srv_stop "$port"

# Transmission: every misbehaviour after 20 good requests.
tx_case reply-bad-magic down "bad reply magic"
tx_case reply-structured down "unrequested structured reply"
tx_case reply-unknown-cookie down "reply to an unknown request"
tx_case reply-twice down "reply to an unknown request"
# The leg's two connections (conns=2; the server allows multi-conn): a
# reply on the connection that did not carry the request is as unknown.
tx_case reply-cross down "reply to an unknown request"
tx_case reply-truncated down "server closed the connection|connection reset|connection broken"
tx_case close-after-handshake down "server closed the connection|connection reset|connection broken"
tx_case close-mid-request down "server closed the connection|connection reset|connection broken"
tx_case never-reply down "request timed out"
tx_case slow-trickle down "request timed out"
# A read's reply header, then half its data and silence: the read is timed
# out like one with no reply at all.
tx_case reply-stall down "request timed out"
tx_case garbage down "bad reply magic|unrequested structured reply"
tx_case error-writes faulty ""
tx_case error-reads in-sync ""

# A linear device whose server turns hostile: every request now gets a
# reply with a bad magic (reconnecting works, the requests never do).
port=$(free_port)
hostile_start "$port" --size 32M
assert_cmd -m "linear: create over one leg (timeout ${TIMEOUT}s, dead time 5s)" \
	dstctl create hl --linear "nbd://127.0.0.1:$port/?timeout=$TIMEOUT&dead-time=5&backoff-max=1"
dev=$(dst_dev hl)
assert_cmd -m "linear: 1 MiB written" dd if="$TEST_TMP/pat" of="$dev" bs=64k count=16 oflag=direct status=none
assert_cmd -m "linear: the server restarts as reply-bad-magic (after 0 requests)" \
	eval 'srv_kill "$port" && hostile_start "$port" --mode reply-bad-magic --size 32M'
t0=$(now_us)
dd if="$TEST_TMP/pat" of="$dev" bs=64k count=1 oflag=direct status=none 2>"$TEST_TMP/dd.err" &
dd_pid=$!
wait_until 40 eval '! kill -0 "$dd_pid" 2>/dev/null' || true
secs=$((($(now_us) - t0) / 1000000))
if kill -0 "$dd_pid" 2>/dev/null; then
	not_ok "linear: a write fails with EIO within dead time + timeout + 15 s (still blocked after ${secs}s)" || true
	diag "connections so far: $(dst_jq hl '.legs[0].connects'); the server's log:"
	tail -n 3 "$TEST_TMP/srv.$port.log" | diag
	diag "stopping the server so that the write can end"
	srv_stop "$port"
	rc=0
	wait "$dd_pid" || rc=$?
else
	rc=0
	wait "$dd_pid" || rc=$?
	diag "dd: status $rc after ${secs}s: $(cat "$TEST_TMP/dd.err")"
	assert_cmd -m "linear: a write fails with EIO within dead time + timeout + 15 s (${secs}s)" \
		eval '[ "$rc" != 0 ] && grep -q "Input/output error" "$TEST_TMP/dd.err" && [ "$secs" -le 22 ]' || true
fi
srv_stop "$port"
assert_cmd -m "linear: with the server gone, a write fails with EIO within dead time + timeout + 15 s" \
	eval '! timeout 60 dd if="$TEST_TMP/pat" of="$dev" bs=64k count=1 oflag=direct status=none 2>"$TEST_TMP/dd.err" &&
		grep -q "Input/output error" "$TEST_TMP/dd.err"'
assert_cmd -m "linear: remove, no kernel warning" eval 'dstctl remove hl >/dev/null && dmesg_scan'

# size-change: the export is 1 MiB larger at every connection.  The server
# allows several connections (multi-conn): a leg that opens two at once sees
# the size change on the second and is refused; one with a single connection
# sees it on the reconnect.
port=$(free_port)
hostile_start "$port" --mode size-change --size 32M
expect_err_contains -m "size-change: two connections at once: the second is refused, nothing made" \
	"connection 2: size changed from 33554432 to 34603008" \
	dstctl create hz --mirror /dev/ram0 "nbd://127.0.0.1:$port/?timeout=$TIMEOUT&conns=2"
assert_cmd -m "size-change: after the refusal ram0 is free and no device is left" \
	eval '! dstctl status hz >/dev/null 2>&1 && dstctl create hz0 --linear /dev/ram0 >/dev/null && dstctl remove hz0'
srv_stop "$port"
port=$(free_port)
hostile_start "$port" --mode size-change --size 32M
assert_cmd -m "size-change: create a mirror of ram0 and the leg (one connection)" \
	dstctl create hz --mirror /dev/ram0 "nbd://127.0.0.1:$port/?timeout=$TIMEOUT&backoff-max=1&conns=1"
dev=$(dst_dev hz)
assert_cmd -m "size-change: cut the network; a write still completes (on ram0)" \
	eval 'nft_cut "$port" && timeout 30 dd if="$TEST_TMP/pat" of="$dev" bs=64k count=16 oflag=direct status=none'
assert_cmd -m "size-change: the leg goes down" wait_leg hz 1 down $((TIMEOUT + 15))
nft_heal
assert_cmd -m "size-change: once healed, the reconnect is refused: the problem names the size" \
	wait_until 30 eval '[[ "$(dst_jq hz .legs[1].problem)" == *"size changed from 33554432 to "* ]]'
diag "problem: $(dst_jq hz .legs[1].problem)"
sleep 3
assert_eq "$(dst_jq hz '[.state, .legs[1].state, .legs[1].connects] | map(tostring) | join(" ")')" \
	"degraded down 1" "size-change: the leg stays down, never reconnected"
assert_cmd -m "size-change: the device works on ram0" write_read "$dev"
assert_cmd -m "size-change: remove" dstctl remove hz
srv_stop "$port"
dmesg_check
