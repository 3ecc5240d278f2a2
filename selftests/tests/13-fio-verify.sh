#!/usr/bin/env bash
# fio with crc32c verification: random 4k writes at QD16 on a mirror and
# on a linear device (whose I/O crosses leg boundaries), then mixed sizes.
# timeout: 600
# shellcheck source-path=SCRIPTDIR source=../lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
# shellcheck source=../dst.sh
. "$SELFTESTS_DIR/dst.sh"

require_cmd fio losetup

plan 12
brd_setup 2 64
cleanup_push losetup -D
dst_load

assert_cmd -m "create mirror over ram0, ram1" dstctl create fm --mirror /dev/ram0 /dev/ram1
m=$(dst_dev fm)
assert_cmd -m "mirror: fio randwrite 4k QD16 + crc32c verify, no errors" \
	fio_verify "$m" --rw=randwrite --bs=4k --iodepth=16 --size=48M
assert_cmd -m "mirror: fio randwrite 4k-256k QD16 + verify, no errors" \
	fio_verify "$m" --rw=randwrite --bsrange=4k-256k --iodepth=16 --size=48M
assert_cmd -m "mirror: fio io_uring randwrite 4k QD32 + verify (REQ_NOWAIT path), no errors" \
	fio_verify "$m" --ioengine=io_uring --rw=randwrite --bs=4k --iodepth=32 --size=32M
assert_cmd -m "mirror: legs identical to the device" legs_match_dev "$m" $((64 << 20)) /dev/ram0 /dev/ram1
assert_eq "$(dst_json fm 'd["legs"][0]["write_errors"] + d["legs"][1]["write_errors"]')" 0 "mirror: no leg errors"
assert_cmd -m "remove the mirror" dstctl remove fm

l0=$(loop_dev 9)
l1=$(loop_dev 7)
l2=$(loop_dev 16)
assert_cmd -m "create linear over 9 + 7 + 16 MiB" dstctl create fl --linear "$l0" "$l1" "$l2"
l=$(dst_dev fl)
assert_cmd -m "linear: fio randwrite 4k QD16 + crc32c verify, no errors" \
	fio_verify "$l" --rw=randwrite --bs=4k --iodepth=16 --size=32M
assert_cmd -m "linear: fio randwrite 4k-512k QD16 (boundary-crossing) + verify" \
	fio_verify "$l" --rw=randwrite --bsrange=4k-512k --iodepth=16 --size=32M
assert_cmd -m "remove the linear device" dstctl remove fl
dmesg_check
