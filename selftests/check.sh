#!/usr/bin/env bash
# Run the dst selftests in a VM, from the host.
#
# usage: check.sh [VM-RUN-OPTION... --] [TEST...]
#   e.g. selftests/check.sh 00-harness net/tree
#        selftests/check.sh --timeout 1200 --log /tmp/console.log -- 00-harness
#
# Runs `scripts/vm-run -- selftests/run.sh TEST...`: the one-machine tests
# in selftests/tests/, all in one VM.  The VM gets 3600 s unless a --timeout
# is given (each test file also has its own timeout, enforced in the guest).
# Then `selftests/net.sh TEST...`: the multi-machine tests in
# selftests/net/ (named net/NAME), each booting several guests at once.
# With no TEST, all of both.
# The last line of output is always a "N passed, N failed, N skipped"
# summary of both parts: if the VM run failed on its own (timeout, kernel
# splat, no summary from the guest), one more failure is added to the
# guest's counts.  The exit status is 0 only if everything passed.
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
repo=$(dirname "$here")
SUMMARY_RE='^([0-9]+) passed, ([0-9]+) failed, ([0-9]+) skipped'

# Add the counts of the summary line in file $1 to p, f and s; return 1 if
# there is none.
add_summary() {
	local summary
	summary=$(tr -d '\r' <"$1" | grep -E "$SUMMARY_RE" | tail -n 1)
	[[ $summary =~ $SUMMARY_RE ]] || return 1
	p=$((p + BASH_REMATCH[1])) f=$((f + BASH_REMATCH[2])) s=$((s + BASH_REMATCH[3]))
}

# The one-machine tests, in one VM; sets rc.
run_vm_suite() {
	local f0=$f
	"$repo/scripts/vm-run" "${vmopts[@]}" -- "$here/run.sh" "$@" | tee "$out"
	rc=${PIPESTATUS[0]}
	# The normal outcomes: the guest's summary line is there, and the
	# status is 0, or 1 with failures counted.
	if add_summary "$out" && { [ "$rc" -eq 0 ] || { [ "$rc" -eq 1 ] && [ "$f" -gt "$f0" ]; }; }; then
		return
	fi
	case $rc in
	124) echo "# vm-run: the VM timed out" ;;
	125) echo "# vm-run: kernel splat or VM failure (see above)" ;;
	*) echo "# vm-run: exit status $rc" ;;
	esac
	f=$((f + 1))
	[ "$rc" -ne 0 ] || rc=1
}

main() {
	local vmopts=(--timeout 3600) out rc=0 nrc=0 p=0 f=0 s=0
	local a has_sep='' vm_tests=() net_tests=()
	for a in "$@"; do [ "$a" != -- ] || has_sep=1; done
	if [ -n "$has_sep" ]; then
		while [ "$1" != -- ]; do
			vmopts+=("$1")
			shift
		done
		shift
	fi
	for a in "$@"; do
		case $a in net/*) net_tests+=("$a") ;; *) vm_tests+=("$a") ;; esac
	done
	out=$(mktemp /tmp/dst-check.XXXXXX)
	# shellcheck disable=SC2064 # expand now
	trap "rm -f '$out'" EXIT

	if [ $# -eq 0 ] || [ ${#vm_tests[@]} -gt 0 ]; then
		run_vm_suite "${vm_tests[@]}"
	fi
	if [ $# -eq 0 ] || [ ${#net_tests[@]} -gt 0 ]; then
		"$here/net.sh" "${net_tests[@]}" | tee "$out"
		nrc=${PIPESTATUS[0]}
		if ! add_summary "$out" || [ "$nrc" -gt 1 ]; then
			echo "# net.sh: exit status $nrc"
			f=$((f + 1))
		fi
	fi
	echo "$p passed, $f failed, $s skipped"
	[ "$rc" -eq 0 ] && [ "$nrc" -eq 0 ] && [ "$f" -eq 0 ]
}

main "$@"
