#!/usr/bin/env bash
# /dev/dst/NAME links: the kernel shows each device's name in
# /sys/block/dstN/dst/name, and udev with userspace/udev/60-dst.rules links
# /dev/dst/NAME (and NAME-partN) to the node.  udevd runs with that rule
# file alone (in a mount namespace of its own), so nothing else it would
# do (blkid probes holding devices open) gets in the way.
# timeout: 240
# shellcheck source-path=SCRIPTDIR source=../lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
# shellcheck source=../dst.sh
. "$SELFTESTS_DIR/dst.sh"

UDEVD=/lib/systemd/systemd-udevd
require_cmd udevadm sfdisk unshare
[ -x "$UDEVD" ] || skip_all "no $UDEVD"
RULES=$DST_REPO/userspace/udev/60-dst.rules

plan 20

udevd_stop() {
	udevadm control --exit 2>/dev/null || true
	rm -rf /run/udev
}

# The link /dev/dst/$1 resolves to $2 ("" = no such link).
link_is() {
	local got=""
	[ ! -L "/dev/dst/$1" ] || got=$(readlink -f "/dev/dst/$1")
	[ "$got" = "$2" ] || { echo "/dev/dst/$1 -> '${got}', want '$2'"; return 1; }
}

# links_are NAME TARGET...: each pair as link_is.
links_are() {
	while [ $# -ge 2 ]; do
		link_is "$1" "$2" || return 1
		shift 2
	done
}

brd_setup 4 16
dst_load

assert_cmd -m "create vol.a (mirror)" dstctl create vol.a --mirror /dev/ram0 /dev/ram1
a=$(dst_dev vol.a)
assert_eq "$(cat "/sys/block/${a#/dev/}/dst/name")" "vol.a" "sysfs dst/name shows the device's name"

# udevd sees only our rules: an empty rules dir with 60-dst.rules over the
# system's, in its own mount namespace (a private copy of the mounts).
[ ! -S /run/udev/control ] || die "a udevd runs already"
cleanup_push udevd_stop
mkdir -p "$TEST_TMP/rules"
cp "$RULES" "$TEST_TMP/rules/"
assert_cmd -m "udevd starts with 60-dst.rules alone" \
	unshare -m --propagation private sh -c '
		for d in /usr/lib/udev/rules.d /etc/udev/rules.d; do
			[ -d "$d" ] && mount --bind "$1" "$d"
		done
		exec "$2" --daemon --resolve-names=never' sh "$TEST_TMP/rules" "$UDEVD"
assert_cmd -m "udevd answers" udevadm control --ping -t 10

# Devices created while udevd runs get their links.
assert_cmd -m "create data (linear)" dstctl create data --linear /dev/ram2
d=$(dst_dev data)
assert_cmd -m "udev settles" udevadm settle -t 30
assert_cmd -m "/dev/dst/data links to $d" link_is data "$d"

# vol.a existed before udevd: a "change" event gives it its link too.
assert_cmd -m "trigger a change event for $a" udevadm trigger --action=change --settle "$a"
assert_cmd -m "/dev/dst/vol.a links to $a" link_is vol.a "$a"

# Partitions: NAME-partN.
assert_cmd -m "partition data (two partitions)" \
	sh -c "printf ',4M,L\n,,L\n' | sfdisk -q '$d'"
udevadm settle -t 30
assert_cmd -m "/dev/dst/data-part1 and -part2 link to ${d}p1 and ${d}p2" \
	links_are data-part1 "${d}p1" data-part2 "${d}p2"

# Removal takes the links away; a new device that gets the freed node
# number gets its own name.
assert_cmd -m "remove vol.a" dstctl remove vol.a
udevadm settle -t 30
assert_cmd -m "/dev/dst/vol.a is gone" link_is vol.a ""
assert_cmd -m "create other, on the freed node" dstctl create other --linear /dev/ram3
o=$(dst_dev other)
assert_eq "$o" "$a" "other takes vol.a's node number"
udevadm settle -t 30
assert_cmd -m "/dev/dst/other links to $o, /dev/dst/vol.a stays gone" \
	links_are other "$o" vol.a ""
assert_cmd -m "remove data" dstctl remove data
assert_cmd -m "remove other" dstctl remove other
udevadm settle -t 30
assert_cmd -m "no link is left" test -z "$(ls -A /dev/dst 2>/dev/null)"
dmesg_check
