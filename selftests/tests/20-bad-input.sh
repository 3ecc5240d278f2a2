#!/usr/bin/env bash
# Bad input gets a clear error and changes nothing: through dstctl (unknown,
# busy, mounted and duplicate legs, names, privileges, removing a mounted
# device) and as raw netlink messages sent straight to the family.  After
# every case the existing device is untouched and no device was added.
# timeout: 600
# shellcheck source-path=SCRIPTDIR source=../lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
# shellcheck source=../dst.sh
. "$SELFTESTS_DIR/dst.sh"

require_cmd python3 setpriv mkfs.ext4
MNT=$TEST_TMP/mnt
mkdir -p "$MNT"

umount_mnt() {
	! mountpoint -q "$MNT" || umount "$MNT"
}

# What must not change: the device list, r1's layout and states, and the
# data on r1.
snapshot() {
	"$DSTCTL" list
	sum_dev /dev/dst0 $((8 << 20))
}

unchanged() {
	local now
	now=$(snapshot)
	if [ "$now" != "$baseline" ]; then
		printf 'before:\n%s\nafter:\n%s\n' "$baseline" "$now"
		return 1
	fi
	dmesg_scan
}

# bad DESC TEXT CMD...: CMD fails with TEXT on stderr, and nothing changed.
bad() {
	local desc=$1 text=$2
	shift 2
	expect_err_contains -m "$desc" "$text" "$@"
	assert_cmd -m "  ... nothing changed" unchanged
}

ncases=$(python3 "$SELFTESTS_DIR/dst_nl_cases.py" --list | wc -l)
plan $((2 + 2 * 15 + 3 + ncases + 2))

brd_setup 4 32
dst_load
cleanup_push umount_mnt
assert_cmd -m "create r1 (mirror over ram0, ram1)" dstctl create r1 --mirror /dev/ram0 /dev/ram1
assert_cmd -m "write a pattern to r1" dd if=/dev/urandom of=/dev/dst0 bs=1M count=8 oflag=direct status=none
baseline=$(snapshot)

# Legs.
bad "unknown leg path" "leg /dev/nonexistent: no such block device (ENOENT)" \
	dstctl create r2 --mirror /dev/ram2 /dev/nonexistent
bad "a character device as leg" "leg /dev/null: not a block device" dstctl create r2 --linear /dev/null
touch "$TEST_TMP/file"
bad "a regular file as leg" "not a block device" dstctl create r2 --linear "$TEST_TMP/file"
bad "a leg used by another device" "leg /dev/ram0: busy" dstctl create r2 --mirror /dev/ram2 /dev/ram0
mkfs.ext4 -q -F /dev/ram3
mount /dev/ram3 "$MNT"
bad "a mounted leg" "leg /dev/ram3: busy" dstctl create r2 --linear /dev/ram2 /dev/ram3
umount "$MNT"
bad "the same leg twice" "leg /dev/ram2 given twice" dstctl create r2 --mirror /dev/ram2 /dev/ram2
ln -s /dev/ram2 "$TEST_TMP/alias"
bad "the same leg twice, by two names" "given twice (same device as /dev/ram2)" \
	dstctl create r2 --mirror /dev/ram2 "$TEST_TMP/alias"
bad "zero legs" "error" dstctl create r2 --mirror
# Names.
bad "a duplicate device name" "a device named r1 exists (EEXIST)" dstctl create r1 --linear /dev/ram2
bad "an over-long name" "longer than 31" dstctl create "$(printf 'n%.0s' {1..32})" --linear /dev/ram2
bad "a name with a slash" "may only hold" dstctl create a/b --linear /dev/ram2
# Privileges.
bad "create as a non-root user" "CAP_SYS_ADMIN" \
	setpriv --reuid=65534 --regid=65534 --clear-groups "$DSTCTL" create r2 --linear /dev/ram2
bad "list as a non-root user" "CAP_SYS_ADMIN" \
	setpriv --reuid=65534 --regid=65534 --clear-groups "$DSTCTL" list
# Removal.
bad "removing an unknown device" "no device named nope (ENODEV)" dstctl remove nope
mkfs.ext4 -q -F /dev/dst0
mount -o ro /dev/dst0 "$MNT"
baseline=$(snapshot)
bad "removing a mounted device" "is open" dstctl remove r1
umount "$MNT"
exec {fd}</dev/dst0
expect_err_contains -m "removing a device held open by a process" "is open (1 openers" dstctl remove r1
exec {fd}<&-
assert_cmd -m "  ... and once closed it can be removed and recreated" \
	sh -c "'$DSTCTL' remove r1 && '$DSTCTL' create r1 --mirror /dev/ram0 /dev/ram1 >/dev/null"
baseline=$(snapshot)
assert_eq "$(dst_json r1 'd["state"]')" ok "r1 is back"

# Raw netlink: one test point per case (dst_nl_cases.py checks the device
# set after each), then the data and dmesg once.
python3 "$SELFTESTS_DIR/dst_nl_cases.py" --all >"$TEST_TMP/nl.out" || true
while read -r line; do
	case $line in
	"ok "*) ok "${line#ok * - }" ;;
	"not ok "*) not_ok "${line#not ok * - }" ;;
	*) diag "$line" ;;
	esac
done <"$TEST_TMP/nl.out"
assert_cmd -m "  ... r1's data unchanged, no kernel warning" unchanged
assert_cmd -m "remove r1" dstctl remove r1
