#!/usr/bin/env bash
# Bad remote legs get a clear error and change nothing: malformed URIs and
# timing parameters (refused by dstctl), and servers the kernel cannot use
# (nothing listening, an unknown export, a read-only export, not an NBD
# server at all).  After every case the existing device (a mirror of a RAM
# disk and a remote leg) is untouched, no device was added, no connection
# was left behind, and the kernel logged no warning.  The raw netlink
# cases for remote legs are in dst_nl_cases.py (run by 20-bad-input).
# timeout: 300
# shellcheck source-path=SCRIPTDIR source=../lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
# shellcheck source=../dst.sh
. "$SELFTESTS_DIR/dst.sh"

require_cmd nbdkit qemu-nbd ss jq python3
MiB=$((1 << 20))

# What must not change: the device list, r1's legs, their states and
# connection counts, and the data on r1.
snapshot() {
	"$DSTCTL" list
	dst_jq r1 '[.legs[] | [.kind, .state, (.connects // 0)]] | tostring'
	sum_dev /dev/dst0 $((8 * MiB))
}

# Established TCP connections other than r1's own one.
stray_connections() {
	ss -Htn state established | grep -v ":$port0\b" | grep -c . || true
}

unchanged() {
	local now
	now=$(snapshot)
	if [ "$now" != "$baseline" ]; then
		printf 'before:\n%s\nafter:\n%s\n' "$baseline" "$now"
		return 1
	fi
	[ "$(stray_connections)" = 0 ] || { echo "connections left:"; ss -Htn state established; return 1; }
	dmesg_scan
}

# bad DESC TEXT CMD...: CMD fails with TEXT on stderr (one line), and
# nothing changed.
bad() {
	local desc=$1 text=$2
	shift 2
	expect_err_contains -m "$desc" "$text" "$@"
	assert_cmd -m "  ... nothing changed" unchanged
}

plan $((3 + 2 * 16 + 6))
brd_setup 2 32
dst_load
port0=$(free_port)
assert_cmd -m "nbdkit memory 32M on port $port0" nbdkit_start "$port0" memory 32M
assert_cmd -m "create r1 (mirror of ram0 and nbd://127.0.0.1:$port0/)" \
	dstctl create r1 --mirror /dev/ram0 "nbd://127.0.0.1:$port0/?timeout=5"
assert_cmd -m "write a pattern to r1" dd if=/dev/urandom of=/dev/dst0 bs=1M count=8 oflag=direct status=none
baseline=$(snapshot)

# Refused by dstctl before anything reaches the kernel.
bad "nbds:// (TLS)" "nbds:// (NBD over TLS) is not supported" \
	dstctl create r2 --mirror /dev/ram1 nbds://127.0.0.1/
bad "an unknown scheme" "http://" dstctl create r2 --mirror /dev/ram1 http://127.0.0.1/
bad "port out of range" "the port must be a number from 1 to 65535" \
	dstctl create r2 --mirror /dev/ram1 nbd://127.0.0.1:99999/
bad "no host" "missing host" dstctl create r2 --mirror /dev/ram1 nbd://:80/
bad "an IPv6 address without its ']'" "missing ']'" dstctl create r2 --mirror /dev/ram1 "nbd://[::1/"
bad "an unknown URI parameter" "unknown parameter foo" \
	dstctl create r2 --mirror /dev/ram1 "nbd://127.0.0.1:$port0/?foo=1"
bad "a parameter without a value" "parameter timeout has no value" \
	dstctl create r2 --mirror /dev/ram1 "nbd://127.0.0.1:$port0/?timeout"
bad "a duration that is no number" "timeout: invalid duration" \
	dstctl create r2 --mirror /dev/ram1 "nbd://127.0.0.1:$port0/?timeout=abc"
bad "a timeout under 100 ms" "out of range (100ms to 24h)" \
	dstctl create r2 --mirror /dev/ram1 "nbd://127.0.0.1:$port0/?timeout=50ms"
bad "a dead time over 24 h" "out of range" \
	dstctl create r2 --mirror /dev/ram1 "nbd://127.0.0.1:$port0/?dead-time=25h"
bad "an export name over 4096 bytes" "longer than" \
	dstctl create r2 --mirror /dev/ram1 "nbd://127.0.0.1:$port0/$(printf 'x%.0s' {1..4100})"

# Refused by the kernel, after trying the server.
p=$(free_port)
bad "nothing listens on the port" "leg nbd://127.0.0.1:$p/: connection refused" \
	dstctl create r2 --mirror /dev/ram1 "nbd://127.0.0.1:$p/"
p=$(free_port)
truncate -s 32M "$TEST_TMP/q.img"
qemu_nbd_start "$p" only "$TEST_TMP/q.img"
bad "an export the server does not have" "server refused the export" \
	dstctl create r2 --mirror /dev/ram1 "nbd://127.0.0.1:$p/other?timeout=5"
srv_stop "$p"
p=$(free_port)
nbdkit_start "$p" --readonly memory 32M
bad "a read-only export" "the export is read-only" \
	dstctl create r2 --mirror /dev/ram1 "nbd://127.0.0.1:$p/?timeout=5"
srv_stop "$p"
# Not an NBD server: something that greets with text (python, closed at
# exit with the test).
p=$(free_port)
python3 -c '
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(8)
while True:
    c, _ = s.accept(); c.sendall(b"220 smtp.example ESMTP ready\r\n" * 4); c.close()
' "$p" &
fake=$!
cleanup_push kill "$fake"
wait_listen "$p"
bad "not an NBD server" "not an NBD server (bad magic)" \
	dstctl create r2 --mirror /dev/ram1 "nbd://127.0.0.1:$p/?timeout=5"
# The same leg twice in one device.
bad "the same remote leg twice" "given twice" \
	dstctl create r2 --mirror "nbd://127.0.0.1:$port0/" "nbd://127.0.0.1:$port0/"

# A create waiting for a server that never answers (its SYNs dropped)
# does not hold up status requests: the family has parallel_ops.
p=$(free_port)
nft_cut "$p"
dstctl create r3 --linear "nbd://127.0.0.1:$p/?timeout=8" 2>"$TEST_TMP/r3.err" &
slow=$!
# Only once the kernel's connect is under way does the create hold the
# lock that changes serialise on.
assert_cmd -m "the create's connection attempt is under way (SYN-SENT)" \
	wait_until 5 eval 'ss -Htn state syn-sent "dport = :$p" | grep -q .'
assert_cmd -m "status answers while a create waits for a connection" \
	eval 'dstctl list >/dev/null && dstctl status r1 >/dev/null && kill -0 "$slow"'
assert_cmd -m "that create then fails: the connection timed out" \
	eval '! wait "$slow" && { grep -q "timed out" "$TEST_TMP/r3.err" || { cat "$TEST_TMP/r3.err"; false; }; }'
assert_cmd -m "  ... nothing changed" unchanged
nft_heal

assert_cmd -m "remove r1" dstctl remove r1
dmesg_check
