#!/usr/bin/env bash
# Run the dst selftests inside the test VM (see selftests/check.sh).
#
# usage: run.sh [--force] [TEST...]
#        run.sh [--force] --queue
#   TEST: a file in selftests/tests/, with or without ".sh" (default: all)
#   --queue: run the tests listed in DIR/list (one path per line), DIR being
#   $DST_QUEUE (an environment variable, not an argument: vm-run would show
#   an argument's directory read-only in the guest), that
#   no other runner has taken yet, in that order.  A runner takes a test by
#   creating the directory DIR/taken/NAME, which succeeds for one runner
#   only, so several VMs sharing DIR (check.sh's) split the list between
#   them as each becomes free.  The plan line then comes last.
#
# Each test file runs in its own bash process, under timeout(1) (300 s, or
# the value of a "# timeout: N" line in the file; 4 times that on a kernel
# with kmemleak, which is slower; scaled by DST_TIMEOUT_PCT percent, which
# check.sh sets when VMs share the host), after `dmesg -C`; a kernel
# splat in dmesg afterwards fails it, and so does, on a kernel with kmemleak
# (make check-kasan), an object leaked meanwhile.  Output is one TAP stream: each file is
# one top-level test point, its own TAP lines indented by 4 spaces.  The
# last line is "N passed, N failed, N skipped" (test files); the exit status
# is 1 if any failed.  After a test that failed, what it may have left
# behind (a test killed on timeout may not finish its cleanup) is undone,
# so that the tests after it start from a clean guest.
#
# Refuses to run outside the VM (it loads modules and writes to block
# devices) unless --force is given.
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
repo=$(dirname "$here")
DEFAULT_TIMEOUT=300
passed=0 failed=0 skipped=0

# shellcheck source-path=SCRIPTDIR source=testfiles.sh
. "$here/testfiles.sh"
# For reset_guest: dst_unload.
DST_REPO=$repo
# shellcheck source=dst.sh
. "$here/dst.sh"

# Print the splats in dmesg as diagnostics; return 1 if there are any.
check_dmesg() {
	local out
	out=$(dmesg | "$repo/scripts/vm-scan-log" -) && return 0
	printf '%s\n' "$out" | sed 's/^/# /'
	return 1
}

# On a kernel with kmemleak (make check-kasan): print the objects that
# kmemleak finds unreferenced since the last call as diagnostics, and
# return 1 if there are any.  A scan skips objects younger than 5 s, and
# an object counts only if two scans in a row find it unreferenced.
check_leaks() {
	local f=/sys/kernel/debug/kmemleak out
	[ -w "$f" ] || return 0
	sleep 5
	echo scan >"$f" && echo scan >"$f" || return 0
	out=$(cat "$f")
	echo clear >"$f"
	[ -n "$out" ] || return 0
	printf '%s\n' "$out" | head -n 80 | sed 's/^/# kmemleak: /'
	return 1
}

# After a failed test: stop what it may have left running or set up
# (servers, udevd, mounts, dst, nbd, md, dm and loop devices, RAM disks,
# firewall and netem rules, scratch files), and say what there was.  Best
# effort, each step but dst_unload (the tests' own) bounded: what cannot
# be undone shows as the next tests' failures.
reset_guest() {
	local left=() d
	local T='timeout -k 5 30'
	pkill -KILL -x 'nbdkit|qemu-nbd|nbd-server|nbd-hostile|fio|dd|nbdcopy|dstctl|systemd-udevd' 2>/dev/null &&
		left+=(processes) && sleep 1
	for d in $(awk '$1 ~ "^/dev/(dst|nbd|md|mapper|ram|loop)" { print $2 }' /proc/mounts); do
		$T umount -l "$d" && left+=("mount $d")
	done
	d=$($T "$DSTCTL" --json list 2>/dev/null | jq -r 'map(.name) | join(",")' 2>/dev/null)
	[ -z "$d" ] || left+=("devices $d")
	[ ! -d /sys/module/dst ] || { dst_unload >/dev/null 2>&1; left+=("module dst"); }
	for d in /sys/block/nbd*; do
		[ -e "$d/pid" ] && $T nbd-client -d "/dev/${d##*/}" >/dev/null 2>&1 && left+=("${d##*/}")
	done
	for d in /sys/block/md*; do
		[ -e "$d/md" ] && $T mdadm --stop "/dev/${d##*/}" >/dev/null 2>&1 && left+=("${d##*/}")
	done
	[ -z "$($T dmsetup ls 2>/dev/null | grep -v '^No devices')" ] ||
		{ $T dmsetup --noudevsync remove_all --force >/dev/null 2>&1; left+=("dm devices"); }
	[ -z "$(losetup -a 2>/dev/null)" ] || { $T losetup -D; left+=("loop devices"); }
	for d in brd nbd; do
		[ ! -d "/sys/module/$d" ] || { $T rmmod "$d" 2>/dev/null; left+=("module $d"); }
	done
	[ -z "$(nft list ruleset 2>/dev/null)" ] || { nft flush ruleset; left+=("nft rules"); }
	tc qdisc del dev lo root 2>/dev/null && left+=("netem on lo")
	rm -rf /run/udev /tmp/dst-test.*
	[ ${#left[@]} -eq 0 ] || echo "# reset after the failure: ${left[*]}"
	[ ! -d /sys/module/dst ] || echo "# reset: dst is still loaded"
	[ ! -d /sys/module/brd ] || echo "# reset: brd is still loaded"
}

# The guest's busy and total CPU time so far, in ticks: "BUSY TOTAL".
cpu_ticks() {
	awk '$1 == "cpu" { t = 0; for (i = 2; i <= NF; i++) t += $i; print t - $5 - $6, t; exit }' /proc/stat
}

# run_one N FILE: run one test file as top-level test point N.
run_one() {
	local n=$1 file=$2 name t rc start splat=0 leak=0 c0 c1
	name=$(test_name "$file")
	if [ ! -f "$file" ]; then
		echo "not ok $n $name # no such test"
		failed=$((failed + 1))
		return
	fi
	t=$(file_timeout "$file" "$DEFAULT_TIMEOUT")
	# A KASAN and kmemleak kernel (make check-kasan) runs 2-5 times slower.
	[ ! -w /sys/kernel/debug/kmemleak ] || t=$((t * 4))
	[[ ${DST_TIMEOUT_PCT:-100} =~ ^[1-9][0-9]*$ ]] && t=$((t * ${DST_TIMEOUT_PCT:-100} / 100))
	echo "# $name (timeout ${t}s)"
	dmesg -C
	start=$SECONDS
	c0=$(cpu_ticks)
	DST_TAP_NESTED=1 timeout -k 10 "$t" bash "$file" 2>&1 </dev/null | sed -u 's/^/    /'
	rc=${PIPESTATUS[0]}
	check_dmesg || splat=1
	check_leaks || leak=1
	c1=$(cpu_ticks)
	# How busy the guest's CPUs were, all together: a test near 100% is
	# bound by the (emulated) CPU, one far under it by its waits.
	echo "# $name: exit status $rc after $((SECONDS - start))s, CPUs $(awk -v a="$c0" -v b="$c1" 'BEGIN {
		split(a, x, " "); split(b, y, " "); d = y[2] - x[2]; printf "%d%% busy", (d > 0 ? 100 * (y[1] - x[1]) / d : 0) }')"
	if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
		echo "not ok $n $name # TIMEOUT after ${t}s"
	elif [ "$splat" -eq 1 ]; then
		echo "not ok $n $name # kernel splat in dmesg"
	elif [ "$leak" -eq 1 ]; then
		echo "not ok $n $name # kmemleak: unreferenced objects"
	elif [ "$rc" -eq 0 ]; then
		echo "ok $n $name"
		passed=$((passed + 1))
		return
	elif [ "$rc" -eq 4 ]; then
		echo "ok $n $name # SKIP"
		skipped=$((skipped + 1))
		return
	else
		echo "not ok $n $name"
	fi
	failed=$((failed + 1))
	reset_guest
}

# run_queue DIR: take and run tests from DIR/list until none is left.
run_queue() {
	local dir=$1 file n=0
	mkdir -p "$dir/taken" || exit 2
	echo "TAP version 13"
	while IFS= read -r -u 3 file; do
		mkdir "$dir/taken/$(test_name "$file")" 2>/dev/null || continue
		n=$((n + 1))
		run_one "$n" "$file"
	done 3<"$dir/list"
	echo "1..$n"
}

main() {
	local tests i queue=''
	if [ "${1:-}" = --force ]; then
		shift
	elif [ "${DST_VM:-}" != 1 ]; then
		echo "run.sh: not in the dst test VM; use selftests/check.sh (or --force)" >&2
		exit 2
	fi
	if [ "${1:-}" = --queue ]; then
		queue=${DST_QUEUE:?run.sh: --queue needs DST_QUEUE}
		[ $# -eq 1 ] || { echo "run.sh: --queue takes no TEST" >&2; exit 2; }
	fi
	# The guest has no network but loopback: name lookups must fail at
	# once instead of waiting for the host's resolvers (nbd-server looks
	# up every client's name).
	if [ "${DST_VM:-}" = 1 ] && [ -e /etc/resolv.conf ] &&
		printf 'nameserver 127.0.0.1\noptions timeout:1 attempts:1\n' >/tmp/.dst-resolv.conf; then
		mount --bind /tmp/.dst-resolv.conf /etc/resolv.conf 2>/dev/null || true
	fi
	if [ -n "$queue" ]; then
		run_queue "$queue"
	else
		mapfile -t tests < <(select_tests "$here/tests" "$@")
		echo "TAP version 13"
		echo "1..${#tests[@]}"
		for i in "${!tests[@]}"; do
			run_one $((i + 1)) "${tests[i]}"
		done
	fi
	echo "$passed passed, $failed failed, $skipped skipped"
	[ "$failed" -eq 0 ]
}

main "$@"
