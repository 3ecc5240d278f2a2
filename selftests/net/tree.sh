#!/usr/bin/env bash
# A storage tree across three machines (run by selftests/net.sh).
#
#   top:    mirror of its ram0 and nbd://10.0.2.1/middle    <- fio verify
#   middle: mirror of its ram0 and nbd://10.0.1.2/bottom, exported to top
#   bottom: mirror of its ram0 and ram1, exported to middle
#
# While fio writes through the top, the middle loses its link to the bottom
# for longer than the leg's timeout: the middle goes on degraded, then
# reconnects and resyncs the bottom.  In the end every leg of every level
# holds what the top device holds.
#
# guest: bottom 10.0.1.2/24@low
# guest: middle 10.0.1.1/24@low 10.0.2.1/24@high
# guest: top 10.0.2.2/24@high
# timeout: 600
# SC2016: the bodies of eval '...' expand when evaluated, as intended.
# shellcheck disable=SC2016
# shellcheck source-path=SCRIPTDIR source=../lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
# shellcheck source=../dst.sh
. "$SELFTESTS_DIR/dst.sh"
# shellcheck source=../netlib.sh
. "$SELFTESTS_DIR/netlib.sh"

require_cmd fio nbdinfo jq
MiB=$((1 << 20))
SIZE=$((64 * MiB))
PORT=10809

# Each level starts from zeros on every leg, so that its legs agree.
zero() {
	dd if=/dev/zero of="$1" bs=1M count=$((SIZE / MiB)) oflag=direct status=none
}

bottom() {

	brd_setup 2 64
	dst_load
	assert_cmd -m "mirror of ram0 and ram1, exported on 10.0.1.2:$PORT to 10.0.1.0/24" eval '
		zero /dev/ram0 && zero /dev/ram1 && dstctl create bottom --mirror /dev/ram0 /dev/ram1 &&
		dstctl export bottom --listen 10.0.1.2:$PORT --allow 10.0.1.0/24'
	net_signal bottom-ready
	assert_cmd -m "the middle machine is a client of the export" eval '
		net_wait middle-ready && [ "$(dst_jq bottom ".exports[0].clients")" -ge 1 ]'
	assert_cmd -m "the middle is done (its leg here back in sync)" net_wait middle-done 500
	dev=$(dst_dev bottom)
	assert_cmd -m "ram0 and ram1 hold the same bytes as the device" legs_match_dev "$dev" "$SIZE" /dev/ram0 /dev/ram1
	assert_eq "$(sum_dev "$dev" "$SIZE")" "$(net_get top-sum)" "the bottom holds what the top device holds"
	dmesg_check
}

middle() {

	brd_setup 1 64
	dst_load
	assert_cmd -m "the bottom's export is up" net_wait bottom-ready
	assert_eq "$(nbdinfo --size "nbd://10.0.1.2:$PORT/bottom")" "$SIZE" "nbdinfo over the network: its size"
	assert_cmd -m "mirror of ram0 and nbd://10.0.1.2/bottom, exported on 10.0.2.1:$PORT" eval '
		zero /dev/ram0 && dstctl create middle --mirror /dev/ram0 "nbd://10.0.1.2:$PORT/bottom?timeout=5" &&
		dstctl export middle --listen 10.0.2.1:$PORT --allow 10.0.2.0/24'
	net_signal middle-ready
	low=$(net_if 10.0.1.1)
	assert_cmd -m "the top writes; the link to the bottom ($low) goes down" eval '
		net_wait top-writing && ip link set "$low" down'
	assert_cmd -m "the bottom's leg is declared down (the top's fio goes on)" wait_leg middle 1 "down|connecting" 60
	sleep 5
	assert_cmd -m "the link comes back; the leg is resynced and in sync" eval '
		ip link set "$low" up && net_signal middle-healed && wait_leg middle 1 in-sync 180'
	assert_cmd -m "the top is done" net_wait top-done 400
	dev=$(dst_dev middle)
	assert_cmd -m "the leg in sync, ram0 holds what the device holds" eval '
		wait_leg middle 1 in-sync 120 && legs_match_dev "$dev" "$SIZE" /dev/ram0'
	assert_eq "$(sum_dev "$dev" "$SIZE")" "$(net_get top-sum)" "the middle holds what the top device holds"
	net_signal middle-done
	dmesg_check
}

top() {

	brd_setup 1 64
	dst_load
	assert_cmd -m "the middle's export is up" net_wait middle-ready
	assert_cmd -m "mirror of ram0 and nbd://10.0.2.1/middle" eval '
		zero /dev/ram0 && dstctl create top --mirror /dev/ram0 "nbd://10.0.2.1:$PORT/middle?timeout=10"'
	dev=$(dst_dev top)
	cd "$TEST_TMP" || exit 1
	assert_cmd -m "fio randwrite 4k-64k QD16 + verify through the top" \
		fio_verify "$dev" --rw=randwrite --bsrange=4k-64k --iodepth=16 --size=32M
	net_signal top-writing
	fio_loop_start "$dev" --rw=randwrite --bs=4k --iodepth=8 --size=16M --offset=32M
	assert_cmd -m "the middle loses the bottom and gets it back" net_wait middle-healed 300
	sleep 2
	assert_cmd -m "fio verify ran without an error meanwhile" fio_loop_stop
	assert_cmd -m "fio randrw 64k + verify over the whole device" \
		fio_verify "$dev" --rw=randrw --bs=64k --iodepth=8 --size=64M
	assert_cmd -m "ram0 holds what the device holds" legs_match_dev "$dev" "$SIZE" /dev/ram0
	net_put top-sum "$(sum_dev "$dev" "$SIZE")"
	net_signal top-done
	# The middle and the bottom compare their copies with top-sum.
	assert_cmd -m "the middle is done" net_wait middle-done 400
	dmesg_check
}

assert_cmd -m "$DST_NET_ROLE: the network is up" net_setup
"$DST_NET_ROLE"
