# shellcheck shell=bash
# Small kselftest-style TAP library for the dst selftests (runs in the VM).
#
# A test file sources it, declares a plan (or not), and makes assertions;
# each assertion prints one TAP line ("ok N - ..." / "not ok N - ...") and
# returns 0/1.  The library turns on `set -eEuo pipefail`, so a failed
# assertion (or any failing command) ends the file; a test that wants to go
# on after a failure writes `assert_... || true`.  At exit the library runs
# the cleanup stack, prints the plan if none was declared, and exits 0 (all
# ok), 4 (skipped, kselftest's KSFT_SKIP) or 1.
#
#   . "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
#   plan 3
#   brd_setup 1 16
#   assert_cmd mkfs.ext4 -q /dev/ram0
#   assert_eq "$(blockdev --getsize64 /dev/ram0)" $((16 << 20)) "ram0 size"
#   dmesg_check
#
# Scratch files go in $TEST_TMP (a fresh directory, removed at exit).
#
# TAP:        plan N, ok DESC, not_ok DESC, skip DESC [REASON],
#             skip_all REASON (exit 4), diag MSG | diag <FILE, die MSG
# Assertions: assert_eq ACTUAL EXPECTED [DESC], assert_cmd [-m DESC] CMD...,
#             assert_fail [-m DESC] CMD..., expect_err_contains [-m DESC] TEXT CMD...,
#             dmesg_check
# Helpers:    require_cmd CMD..., sum_dev DEV [BYTES], brd_setup N SIZE_MB,
#             brd_teardown, dmesg_scan, cleanup_push CMD [ARGS...], cleanup_run

set -eEuo pipefail

SELFTESTS_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
DST_REPO=$(cd "$SELFTESTS_DIR/.." && pwd -P)
TEST_NAME=$(basename "${BASH_SOURCE[-1]}" .sh)
TEST_TMP=$(mktemp -d "${TMPDIR:-/tmp}/dst-test.XXXXXX")
export SELFTESTS_DIR DST_REPO TEST_TMP

_tap_count=0    # test points so far
_tap_failed=0   # of which failed
_tap_plan=''    # declared plan, if any
_tap_done=''    # set by skip_all/die: no trailing plan
_tap_err=''     # the command that made the script fail, for the diagnostics
_cleanup=()     # cleanup stack (strings for eval)

# ---- TAP output -----------------------------------------------------------

# plan N: declare the number of test points.
plan() {
	_tap_plan=$1
	echo "1..$1"
}

# diag [MSG...]: print "# " diagnostic lines (from the arguments, or stdin).
diag() {
	if [ $# -gt 0 ]; then
		printf '%s\n' "$*" | sed 's/^/# /'
	else
		sed 's/^/# /'
	fi
}

# ok DESC / not_ok DESC: one passing / failing test point.
ok() {
	_tap_count=$((_tap_count + 1))
	echo "ok $_tap_count - $*"
}
not_ok() {
	_tap_count=$((_tap_count + 1))
	_tap_failed=$((_tap_failed + 1))
	echo "not ok $_tap_count - $*"
}

# skip DESC [REASON]: a skipped test point.
skip() {
	_tap_count=$((_tap_count + 1))
	echo "ok $_tap_count - $1 # SKIP ${2:-}"
}

# skip_all REASON: skip the whole file (before any test point).
skip_all() {
	echo "1..0 # SKIP $*"
	_tap_done=skip
	exit 4
}

# die MSG: abort the file ("Bail out!").
die() {
	echo "Bail out! $*"
	_tap_done=bail
	exit 1
}

# ---- assertions -----------------------------------------------------------

# Print the end of a captured output file as diagnostics.
_show_output() {
	[ -s "$1" ] || return 0
	diag "output (last 40 lines):"
	tail -n 40 "$1" | diag
}

# _cmd_desc CMD...: a command line as an assertion's default description.
_cmd_desc() {
	local s="$*"
	[ ${#s} -le 100 ] || s="${s:0:97}..."
	printf '%s' "$s"
}

# assert_eq ACTUAL EXPECTED [MSG]: string equality.
assert_eq() {
	local desc=${3:-"'$1' = '$2'"}
	if [ "$1" = "$2" ]; then
		ok "$desc"
	else
		not_ok "$desc"
		diag "expected: '$2'"
		diag "     got: '$1'"
		return 1
	fi
}

# assert_cmd [-m DESC] CMD...: CMD must succeed.  Its output is captured and
# shown only on failure.  Runs in the current shell (functions work, and
# their side effects stay), but note that bash ignores `set -e` inside a
# command whose status is tested: a function given to assert_cmd must check
# its own steps (`a && b`, `|| return 1`).  Do not nest assertions.
assert_cmd() {
	local _a_desc='' _a_rc=0 _a_out=$TEST_TMP/.out
	[ "$1" != -m ] || { _a_desc=$2; shift 2; }
	_a_desc=${_a_desc:-$(_cmd_desc "$@")}
	"$@" >"$_a_out" 2>&1 || _a_rc=$?
	if [ "$_a_rc" -eq 0 ]; then
		ok "$_a_desc"
	else
		not_ok "$_a_desc"
		diag "command failed with status $_a_rc: $*"
		_show_output "$_a_out"
		return 1
	fi
}

# assert_fail [-m DESC] CMD...: CMD must fail (non-zero status).
assert_fail() {
	local _a_desc='' _a_rc=0 _a_out=$TEST_TMP/.out
	[ "$1" != -m ] || { _a_desc=$2; shift 2; }
	_a_desc=${_a_desc:-"fails: $(_cmd_desc "$@")"}
	"$@" >"$_a_out" 2>&1 || _a_rc=$?
	if [ "$_a_rc" -ne 0 ]; then
		ok "$_a_desc"
	else
		not_ok "$_a_desc"
		diag "command succeeded but should have failed: $*"
		_show_output "$_a_out"
		return 1
	fi
}

# expect_err_contains [-m DESC] TEXT CMD...: CMD must fail and its stderr
# contain TEXT (a fixed string).
expect_err_contains() {
	local _a_desc='' _a_rc=0 _a_text _a_out=$TEST_TMP/.out _a_err=$TEST_TMP/.err
	[ "$1" != -m ] || { _a_desc=$2; shift 2; }
	_a_text=$1
	shift
	_a_desc=${_a_desc:-"fails with '$_a_text': $(_cmd_desc "$@")"}
	"$@" >"$_a_out" 2>"$_a_err" || _a_rc=$?
	if [ "$_a_rc" -ne 0 ] && grep -qF -- "$_a_text" "$_a_err"; then
		ok "$_a_desc"
		return 0
	fi
	not_ok "$_a_desc"
	if [ "$_a_rc" -eq 0 ]; then
		diag "command succeeded but should have failed: $*"
	else
		diag "status $_a_rc, but stderr lacks '$_a_text': $*"
	fi
	_show_output "$_a_err"
	return 1
}

# ---- helpers --------------------------------------------------------------

# require_cmd CMD...: skip the whole file unless all commands exist.
require_cmd() {
	local c
	for c in "$@"; do
		command -v "$c" >/dev/null || skip_all "$c not available"
	done
}

# sum_dev DEV [BYTES]: print the sha256 of a block device (or file), or of
# its first BYTES bytes.  Block devices are read with O_DIRECT (whole
# sectors), so the sum is of what the device holds, not of the page cache.
sum_dev() {
	local dev=$1 bytes=${2:-} flags=()
	if [ -b "$dev" ] && [ $((${bytes:-0} % 512)) -eq 0 ]; then
		flags+=(iflag=direct)
	fi
	[ -z "$bytes" ] || flags+=(iflag=count_bytes "count=$bytes")
	dd if="$dev" bs=1M "${flags[@]}" status=none | sha256sum | cut -d' ' -f1
}

# brd_setup N SIZE_MB: (re)load brd with N RAM disks of SIZE_MB MiB each,
# /dev/ram0 .. /dev/ram(N-1).  Unloaded again at exit.
brd_setup() {
	local n=$1 mb=$2 i
	brd_teardown || return 1
	modprobe brd rd_nr="$n" rd_size=$((mb * 1024)) max_part=0 || return 1
	cleanup_push brd_teardown
	for ((i = 0; i < n; i++)); do
		[ -b "/dev/ram$i" ] || { echo "brd_setup: /dev/ram$i missing" >&2; return 1; }
	done
}

# brd_teardown: unload brd if it is loaded.
brd_teardown() {
	[ ! -d /sys/module/brd ] || rmmod brd
}

# dmesg_scan: print the kernel splats in dmesg (since the last dmesg -C) and
# return 1 if there are any.
dmesg_scan() {
	dmesg >"$TEST_TMP/.dmesg"
	"$DST_REPO/scripts/vm-scan-log" "$TEST_TMP/.dmesg"
}

# dmesg_check: test point "no kernel splat in dmesg".
dmesg_check() {
	if dmesg_scan >"$TEST_TMP/.splat"; then
		ok "no kernel splat in dmesg"
	else
		not_ok "no kernel splat in dmesg"
		diag <"$TEST_TMP/.splat"
		return 1
	fi
}

# ---- cleanup and exit -----------------------------------------------------

# cleanup_push CMD [ARGS...]: run CMD at exit (last pushed, first run).
cleanup_push() {
	_cleanup+=("$(printf '%q ' "$@")")
}

# cleanup_run: run and empty the cleanup stack; failures become diagnostics.
cleanup_run() {
	local i
	for ((i = ${#_cleanup[@]} - 1; i >= 0; i--)); do
		eval "${_cleanup[i]}" >"$TEST_TMP/.cleanup" 2>&1 ||
			{ diag "cleanup failed: ${_cleanup[i]}"; diag <"$TEST_TMP/.cleanup"; }
	done
	_cleanup=()
}

_tap_on_err() {
	_tap_err="status $1 at ${BASH_SOURCE[1]##*/}:${BASH_LINENO[0]}"
	[[ $BASH_COMMAND == return* ]] || _tap_err+=": $BASH_COMMAND"
}

_tap_on_exit() {
	local rc=$?
	set +eE
	trap - ERR
	cleanup_run
	rm -rf "$TEST_TMP"
	case $_tap_done in
	skip) exit 4 ;;
	bail) exit 1 ;;
	esac
	if [ "$rc" -ne 0 ] && [ "$_tap_failed" -eq 0 ]; then
		# Died outside an assertion: make that a visible failure.
		not_ok "$TEST_NAME: unexpected exit (${_tap_err:-status $rc})"
	elif [ "$rc" -ne 0 ] && [ -n "$_tap_err" ]; then
		diag "stopped after a failure (${_tap_err})"
	fi
	if [ -z "$_tap_plan" ]; then
		echo "1..$_tap_count"
	elif [ "$_tap_plan" -ne "$_tap_count" ]; then
		diag "planned $_tap_plan tests but ran $_tap_count"
		rc=1
	fi
	[ "$_tap_failed" -eq 0 ] || { diag "failed $_tap_failed of $_tap_count"; rc=1; }
	exit "$rc"
}

_tap_on_signal() {
	diag "killed by SIG$1 (timeout?)"
	exit 1
}

trap '_tap_on_err $?' ERR
trap _tap_on_exit EXIT
trap '_tap_on_signal TERM' TERM
trap '_tap_on_signal INT' INT
[ -n "${DST_TAP_NESTED:-}" ] || echo "TAP version 13"
