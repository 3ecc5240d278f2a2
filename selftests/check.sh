#!/usr/bin/env bash
# Run the dst selftests in a VM, from the host.
#
# usage: check.sh [VM-RUN-OPTION... --] [TEST...]
#   e.g. selftests/check.sh 00-harness net/tree
#        selftests/check.sh --timeout 1200 --log /tmp/console.log -- 00-harness
#
# Runs the one-machine tests in selftests/tests/ in DST_CHECK_VMS VMs at
# once (default 2, or 1 on a one-CPU host; each VM's two vCPUs then share
# one host thread, vm-run --one-thread, which on two host CPUs ran tests
# 1.6 times as fast as four vCPU threads), which take the tests one by one
# from a shared list (`selftests/run.sh --queue`), the longest first by their
# timeout lines; with one VM, `scripts/vm-run -- selftests/run.sh TEST...`.
# The first VM's output streams as it comes, the others' follow when they
# end.  Each VM gets 5400 s unless a --timeout is given (each test file
# also has its own timeout, enforced in the guest; with several VMs, which
# slow each other down by up to a half here, 1.75 times as long unless
# DST_TIMEOUT_PCT says).  A --log FILE becomes FILE.vmN for VM N.
# Then `selftests/net.sh TEST...`: the multi-machine tests in
# selftests/net/ (named net/NAME), each booting several guests at once.
# With no TEST, all of both.
# The last line of output is always a "N passed, N failed, N skipped"
# summary of both parts: each VM that failed on its own (timeout, kernel
# splat, no summary from the guest) adds one more failure to the guests'
# counts, and so does each test that no VM took.  The exit status is 0
# only if everything passed.
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
repo=$(dirname "$here")
SUMMARY_RE='^([0-9]+) passed, ([0-9]+) failed, ([0-9]+) skipped'
# Removed on exit; killed on exit (VMs in the background, which an
# interrupt does not reach).
tmp_files=() bg_pids=()

# shellcheck source-path=SCRIPTDIR source=testfiles.sh
. "$here/testfiles.sh"

# Add the counts of the summary line in file $1 to p, f and s; return 1 if
# there is none.
add_summary() {
	local summary
	summary=$(tr -d '\r' <"$1" | grep -E "$SUMMARY_RE" | tail -n 1)
	[[ $summary =~ $SUMMARY_RE ]] || return 1
	p=$((p + BASH_REMATCH[1])) f=$((f + BASH_REMATCH[2])) s=$((s + BASH_REMATCH[3]))
}

# vm_outcome FILE STATUS: count the summary in FILE, the output of a VM
# that exited with STATUS; a VM that failed on its own counts as one more
# failure, and sets rc.
vm_outcome() {
	local f0=$f
	# The normal outcomes: the guest's summary line is there, and the
	# status is 0, or 1 with failures counted.
	if add_summary "$1" && { [ "$2" -eq 0 ] || { [ "$2" -eq 1 ] && [ "$f" -gt "$f0" ]; }; }; then
		[ "$2" -eq 0 ] || rc=1
		return
	fi
	case $2 in
	124) echo "# vm-run: the VM timed out" ;;
	125) echo "# vm-run: kernel splat or VM failure (see above)" ;;
	*) echo "# vm-run: exit status $2" ;;
	esac
	f=$((f + 1))
	rc=1
}

# The one-machine tests, in one VM (its vCPUs in one host thread on a
# one-CPU host); sets rc.
run_vm_suite() {
	local one=()
	[ "$(nproc)" -ge 2 ] || one=(--one-thread)
	"$repo/scripts/vm-run" "${vmopts[@]}" "${one[@]}" -- "$here/run.sh" "$@" | tee "$out"
	vm_outcome "$out" "${PIPESTATUS[0]}"
}

# vm_opts N: vmopts for VM N, its --log (if any) made its own.
vm_opts() {
	local i
	vmN=("${vmopts[@]}")
	for ((i = 0; i + 1 < ${#vmN[@]}; i++)); do
		[ "${vmN[i]}" != --log ] || vmN[i + 1]=${vmN[i + 1]}.vm$1
	done
}

# The one-machine tests, in $1 VMs that share a queue of them; sets rc.
run_vm_suite_parallel() {
	local vms=$1 q i file status t vmN
	shift
	q=$(mktemp -d /tmp/dst-queue.XXXXXX)
	tmp_files+=("$q")
	# Two VMs on two CPUs take 1.2-1.5 times as long for each test (TCG).
	export DST_TIMEOUT_PCT=${DST_TIMEOUT_PCT:-175}
	# The longest first, so that the VMs end close together.
	while IFS= read -r file; do
		t=0
		[ ! -f "$file" ] || t=$(file_timeout "$file" 300)
		printf '%s\t%s\n' "$t" "$file"
	done < <(select_tests "$here/tests" "$@") | sort -s -t $'\t' -k1,1nr | cut -f2- >"$q/list"
	for ((i = 2; i <= vms; i++)); do
		vm_opts "$i"
		DST_QUEUE=$q "$repo/scripts/vm-run" "${vmN[@]}" --one-thread --share "$q" -- "$here/run.sh" --queue \
			>"$q/out$i" 2>&1 &
		bg_pids[i]=$!
	done
	echo "# VM 1 of $vms:"
	vm_opts 1
	DST_QUEUE=$q "$repo/scripts/vm-run" "${vmN[@]}" --one-thread --share "$q" -- "$here/run.sh" --queue | tee "$q/out1"
	vm_outcome "$q/out1" "${PIPESTATUS[0]}"
	for ((i = 2; i <= vms; i++)); do
		status=0
		wait "${bg_pids[i]}" || status=$?
		unset "bg_pids[i]"
		echo "# VM $i of $vms:"
		cat "$q/out$i"
		vm_outcome "$q/out$i" "$status"
	done
	# A test no VM took (they all died first) fails.
	while IFS= read -r file; do
		[ -d "$q/taken/$(test_name "$file")" ] && continue
		echo "not ok - $(test_name "$file") # not run: no VM took it"
		f=$((f + 1))
		rc=1
	done <"$q/list"
}

main() {
	local vmopts=(--timeout 5400) out rc=0 nrc=0 p=0 f=0 s=0
	local a has_sep='' vm_tests=() net_tests=() vms
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
	tmp_files+=("$out")
	trap 'kill "${bg_pids[@]}" 2>/dev/null; rm -rf "${tmp_files[@]}"' EXIT
	trap 'exit 130' INT TERM

	if [ $# -eq 0 ] || [ ${#vm_tests[@]} -gt 0 ]; then
		vms=${DST_CHECK_VMS:-$([ "$(nproc)" -ge 2 ] && echo 2 || echo 1)}
		[[ $vms =~ ^[1-9][0-9]*$ ]] || { echo "check.sh: DST_CHECK_VMS must be a positive integer" >&2; exit 2; }
		[[ ${DST_TIMEOUT_PCT:-100} =~ ^[1-9][0-9]*$ ]] ||
			{ echo "check.sh: DST_TIMEOUT_PCT must be a positive integer" >&2; exit 2; }
		[ ${#vm_tests[@]} -eq 0 ] || [ "$vms" -le ${#vm_tests[@]} ] || vms=${#vm_tests[@]}
		if [ "$vms" -gt 1 ]; then
			run_vm_suite_parallel "$vms" "${vm_tests[@]}"
		else
			run_vm_suite "${vm_tests[@]}"
		fi
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
