#!/usr/bin/env bash
# Module load/unload: 50 times bare, 50 times with devices (unloading tears
# them down: documented behaviour), and unloading refused while a device is
# open or used as a leg by another dst device.
# timeout: 600
# shellcheck source-path=SCRIPTDIR source=../lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
# shellcheck source=../dst.sh
. "$SELFTESTS_DIR/dst.sh"

ROUNDS=50

bare_cycles() {
	local i
	for ((i = 1; i <= ROUNDS; i++)); do
		insmod "$DST_KO" || { echo "insmod failed in round $i"; return 1; }
		rmmod dst || { echo "rmmod failed in round $i"; return 1; }
	done
}

device_cycles() {
	local i
	for ((i = 1; i <= ROUNDS; i++)); do
		insmod "$DST_KO" &&
			"$DSTCTL" create m --mirror /dev/ram0 /dev/ram1 >/dev/null &&
			"$DSTCTL" create l --linear /dev/ram2 /dev/ram3 >/dev/null &&
			dd if=/dev/urandom of=/dev/dst0 bs=64k count=4 oflag=direct status=none &&
			dd if=/dev/urandom of=/dev/dst1 bs=64k count=4 oflag=direct status=none &&
			rmmod dst || { echo "round $i failed"; return 1; }
		if [ -e /dev/dst0 ] || [ -e /dev/dst1 ]; then
			echo "round $i: a device node outlived the module"
			return 1
		fi
	done
}

plan 12
brd_setup 4 16
assert_cmd -m "$ROUNDS x insmod + rmmod" bare_cycles
assert_cmd -m "$ROUNDS x insmod + create mirror and linear + I/O + rmmod" device_cycles
assert_cmd -m "the legs are free after unload (exclusive open)" mkfs.ext4 -q -F /dev/ram0
assert_cmd -m "dmesg: no warnings after the cycles" dmesg_scan

dst_load
dstctl create m --mirror /dev/ram0 /dev/ram1 >/dev/null
exec {fd}</dev/dst0
assert_fail -m "rmmod refused while a device is open" rmmod dst
exec {fd}<&-
assert_cmd -m "the device survived the refused unload" test "$(dst_json m 'd["state"]')" = ok
dstctl create top --linear /dev/dst0 /dev/ram2 >/dev/null
assert_cmd -m "a dst device can be a leg of another" test -b "$(dst_dev top)"
assert_fail -m "rmmod refused while a device is a leg of another" rmmod dst
assert_fail -m "removing the lower device is refused while it is a leg" dstctl remove m
assert_cmd -m "remove the upper device" dstctl remove top
assert_cmd -m "rmmod with one idle device tears it down" rmmod dst
assert_cmd -m "no dst devices are left" test ! -e /dev/dst0
