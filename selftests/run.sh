#!/usr/bin/env bash
# Run the dst selftests inside the test VM (see selftests/check.sh).
#
# usage: run.sh [--force] [TEST...]
#   TEST: a file in selftests/tests/, with or without ".sh" (default: all)
#
# Each test file runs in its own bash process, under timeout(1) (300 s, or
# the value of a "# timeout: N" line in the file; 4 times that on a kernel
# with kmemleak, which is slower), after `dmesg -C`; a kernel
# splat in dmesg afterwards fails it, and so does, on a kernel with kmemleak
# (make check-kasan), an object leaked meanwhile.  Output is one TAP stream: each file is
# one top-level test point, its own TAP lines indented by 4 spaces.  The
# last line is "N passed, N failed, N skipped" (test files); the exit status
# is 1 if any failed.
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

# run_one N FILE: run one test file as top-level test point N.
run_one() {
	local n=$1 file=$2 name t rc start splat=0 leak=0
	name=$(basename "$file" .sh)
	if [ ! -f "$file" ]; then
		echo "not ok $n $name # no such test"
		failed=$((failed + 1))
		return
	fi
	t=$(file_timeout "$file" "$DEFAULT_TIMEOUT")
	# A KASAN and kmemleak kernel (make check-kasan) runs 2-5 times slower.
	[ ! -w /sys/kernel/debug/kmemleak ] || t=$((t * 4))
	echo "# $name (timeout ${t}s)"
	dmesg -C
	start=$SECONDS
	DST_TAP_NESTED=1 timeout -k 10 "$t" bash "$file" 2>&1 </dev/null | sed -u 's/^/    /'
	rc=${PIPESTATUS[0]}
	check_dmesg || splat=1
	check_leaks || leak=1
	echo "# $name: exit status $rc after $((SECONDS - start))s"
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
}

main() {
	local tests i
	if [ "${1:-}" = --force ]; then
		shift
	elif [ "${DST_VM:-}" != 1 ]; then
		echo "run.sh: not in the dst test VM; use selftests/check.sh (or --force)" >&2
		exit 2
	fi
	# The guest has no network but loopback: name lookups must fail at
	# once instead of waiting for the host's resolvers (nbd-server looks
	# up every client's name).
	if [ "${DST_VM:-}" = 1 ] && [ -e /etc/resolv.conf ] &&
		printf 'nameserver 127.0.0.1\noptions timeout:1 attempts:1\n' >/tmp/.dst-resolv.conf; then
		mount --bind /tmp/.dst-resolv.conf /etc/resolv.conf 2>/dev/null || true
	fi
	mapfile -t tests < <(select_tests "$here/tests" "$@")
	echo "TAP version 13"
	echo "1..${#tests[@]}"
	for i in "${!tests[@]}"; do
		run_one $((i + 1)) "${tests[i]}"
	done
	echo "$passed passed, $failed failed, $skipped skipped"
	[ "$failed" -eq 0 ]
}

main "$@"
