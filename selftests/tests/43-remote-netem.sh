#!/usr/bin/env bash
# A remote mirror leg over a slow, lossy loopback (netem: 5 ms delay and 1%
# loss on every packet): fio with crc32c verification sees no error, the
# leg never drops (TCP recovers the losses well within the default 30 s
# timeout), and the legs end up identical.
# timeout: 300
# SC2016: the bodies of eval '...' expand when evaluated, as intended.
# shellcheck disable=SC2016
# shellcheck source-path=SCRIPTDIR source=../lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
# shellcheck source=../dst.sh
. "$SELFTESTS_DIR/dst.sh"

require_cmd fio nbdkit nbdcopy tc ss jq
MiB=$((1 << 20))
SIZE=$((32 * MiB))

plan 9
brd_setup 1 32
dst_load
port=$(free_port)
assert_cmd -m "nbdkit memory 32M on port $port" nbdkit_start "$port" memory 32M
assert_cmd -m "netem on lo: delay 5ms, loss 1%" \
	eval 'netem_lo delay 5ms loss 1% && tc qdisc show dev lo | grep -q "netem.*delay 5ms loss 1%"'
assert_cmd -m "create a mirror of ram0 and the export (default timing)" \
	dstctl create mn --mirror /dev/ram0 "nbd://127.0.0.1:$port/"
dev=$(dst_dev mn)
cd "$TEST_TMP" || exit 1
assert_cmd -m "fio randwrite 4k QD16 32M + crc32c verify, no errors" \
	fio_verify "$dev" --rw=randwrite --bs=4k --iodepth=16 --size=32M --verify_backlog=1024
assert_cmd -m "fio randrw 4k-128k QD8 16M + crc32c verify, no errors" \
	fio_verify "$dev" --rw=randrw --bsrange=4k-128k --iodepth=8 --size=16M
assert_eq "$(dst_jq mn '[.state, .legs[1].state, .legs[1].connects, .legs[1].write_errors, .legs[1].read_errors] | map(tostring) | join(" ")')" \
	"ok in-sync 1 0 0" "the leg never dropped: in sync, 1 connection, no errors"
assert_cmd -m "ram0, the export and the device hold the same data (read through netem)" same_data "$dev" /dev/ram0 "nbd://127.0.0.1:$port/" "$SIZE"
assert_cmd -m "remove the mirror" dstctl remove mn
dmesg_check
