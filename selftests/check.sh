#!/usr/bin/env bash
# Run the dst selftests in a VM, from the host.
#
# usage: check.sh [VM-RUN-OPTION... --] [TEST...]
#   e.g. selftests/check.sh 00-harness
#        selftests/check.sh --timeout 1200 --log /tmp/console.log -- 00-harness
#
# Runs `scripts/vm-run -- selftests/run.sh TEST...` and exits with its status.
# The VM gets 2700 s unless a --timeout is given (each test file also has
# its own timeout, enforced in the guest).
# The last line of output is always a "N passed, N failed, N skipped"
# summary: if the VM run failed on its own (timeout, kernel splat, no
# summary from the guest), one more failure is added to the guest's counts.
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
repo=$(dirname "$here")
SUMMARY_RE='^([0-9]+) passed, ([0-9]+) failed, ([0-9]+) skipped'

main() {
	local vmopts=(--timeout 2700) out rc summary p=0 f=0 s=0
	local a has_sep=
	for a in "$@"; do [ "$a" != -- ] || has_sep=1; done
	if [ -n "$has_sep" ]; then
		while [ "$1" != -- ]; do
			vmopts+=("$1")
			shift
		done
		shift
	fi
	out=$(mktemp /tmp/dst-check.XXXXXX)
	# shellcheck disable=SC2064 # expand now
	trap "rm -f '$out'" EXIT

	"$repo/scripts/vm-run" "${vmopts[@]}" -- "$here/run.sh" "$@" | tee "$out"
	rc=${PIPESTATUS[0]}

	summary=$(tr -d '\r' <"$out" | grep -E "$SUMMARY_RE" | tail -n 1)
	if [[ $summary =~ $SUMMARY_RE ]]; then
		p=${BASH_REMATCH[1]} f=${BASH_REMATCH[2]} s=${BASH_REMATCH[3]}
	fi
	# The normal outcomes: the guest's summary line is already the last line.
	if [ -n "$summary" ] && { [ "$rc" -eq 0 ] || { [ "$rc" -eq 1 ] && [ "$f" -gt 0 ]; }; }; then
		exit "$rc"
	fi
	case $rc in
	124) echo "# vm-run: the VM timed out" ;;
	125) echo "# vm-run: kernel splat or VM failure (see above)" ;;
	*) echo "# vm-run: exit status $rc${summary:+, guest summary: $summary}" ;;
	esac
	echo "$p passed, $((f + 1)) failed, $s skipped"
	[ "$rc" -ne 0 ] || rc=1
	exit "$rc"
}

main "$@"
