#!/usr/bin/env bash
# Run the multi-guest dst tests (selftests/net/*.sh), from the host.
#
# usage: net.sh [TEST...]   TEST: a file in selftests/net/, with or without
#                           ".sh", or "net/NAME" (default: all)
#
# A test file names its guests and their links in header lines:
#   # guest: NAME ADDR/PREFIX@LINK...
#   # timeout: SECS            (per guest; default 600)
# e.g. "# guest: middle 10.0.1.1/24@low 10.0.2.1/24@high".  Each guest runs
# `bash FILE` in its own QEMU (scripts/vm-run, 1 CPU), all at once.  A link
# is a pair of QEMU UDP netdevs on the host's 127.0.0.1, one per guest, so
# nothing leaves the host's loopback.  The guests share a fresh host
# directory ($DST_NET_SYNC) to meet in (selftests/netlib.sh).  If a guest
# fails, the others are told to stop waiting ("abort").
#
# Output is TAP: each file is one test point, each guest's TAP indented
# below it.  The last line is "N passed, N failed, N skipped" (files); the
# exit status is 1 if any failed.
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
repo=$(dirname "$here")
DEFAULT_TIMEOUT=600
GUEST_MEM=768
passed=0 failed=0 skipped=0

# shellcheck source-path=SCRIPTDIR source=testfiles.sh
. "$here/testfiles.sh"

# A UDP port on 127.0.0.1 that nothing uses (30000-39999), not in $used.
used=" "
udp_port() {
	local p i
	for ((i = 0; i < 200; i++)); do
		p=$((30000 + RANDOM % 10000))
		[[ $used != *" $p "* ]] || continue
		ss -Hlun "( sport = :$p )" 2>/dev/null | grep -q . && continue
		used+="$p "
		echo "$p"
		return 0
	done
	return 1
}

# run_file N FILE: boot the file's guests, wait for them, report.
run_file() {
	local n=$1 file=$2 name t work line g a addr link port
	local -a guests=() pids=() rcs=()
	local -A gaddrs=() gnics=() ends=()
	name=net/$(basename "$file" .sh)
	if [ ! -f "$file" ]; then
		echo "not ok $n $name # no such test"
		failed=$((failed + 1))
		return
	fi
	t=$(file_timeout "$file" "$DEFAULT_TIMEOUT")
	work=$(mktemp -d /tmp/dst-net.XXXXXX)
	mkdir "$work/sync"
	# Each end of a link is a NIC with a port (and a MAC) of its own; it
	# sends to the other end's port.
	local k=0 mac lp rp e
	while read -r line; do
		read -r -a a <<<"$line"
		g=${a[0]}
		guests+=("$g")
		for addr in "${a[@]:1}"; do
			link=${addr#*@}
			port=$(udp_port) || { echo "net.sh: no free UDP port" >&2; return 1; }
			k=$((k + 1))
			mac=$(printf '52:54:00:dd:00:%02x' "$k")
			ends[$link]+="$port "
			gaddrs[$g]+="$mac=${addr%@*} "
			gnics[$g]+="$link:$port@$mac "
		done
	done < <(sed -n 's/^# guest: *//p' "$file")
	for link in "${!ends[@]}"; do
		read -r -a e <<<"${ends[$link]}"
		[ ${#e[@]} -eq 2 ] || { echo "net.sh: link $link needs two ends" >&2; return 1; }
	done
	echo "# $name: guests ${guests[*]} (timeout ${t}s each)"
	for g in "${guests[@]}"; do
		local nics=()
		for a in ${gnics[$g]}; do
			link=${a%%:*} lp=${a#*:} mac=${a#*@}
			lp=${lp%@*}
			read -r -a e <<<"${ends[$link]}"
			if [ "${e[0]}" = "$lp" ]; then rp=${e[1]}; else rp=${e[0]}; fi
			nics+=(--nic "$lp:$rp@$mac")
		done
		DST_NET_SYNC=$work/sync DST_NET_ROLE=$g DST_NET_ADDRS=${gaddrs[$g]} \
			"$repo/scripts/vm-run" --timeout "$((t + 60))" --mem "$GUEST_MEM" --cpus 1 \
			--hostname "$g" --share "$work/sync" --log "$work/$g.console" "${nics[@]}" \
			-- timeout -k 10 "$t" bash "$file" >"$work/$g.out" 2>&1 &
		pids+=($!)
	done
	# The first guest to fail stops the others from waiting for it.
	local -A running=()
	local pid rc i
	for i in "${!pids[@]}"; do running[${pids[i]}]=$i; done
	while [ ${#running[@]} -gt 0 ]; do
		rc=0 pid=''
		wait -n -p pid "${!running[@]}" || rc=$?
		[ -n "$pid" ] || { echo "net.sh: lost track of the guests" >&2; break; }
		rcs[${running[$pid]}]=$rc
		unset "running[$pid]"
		[ "$rc" -eq 0 ] || : >"$work/sync/abort"
	done
	local bad=0
	for i in "${!guests[@]}"; do
		g=${guests[i]}
		echo "    # guest $g: exit status ${rcs[i]:-unknown}"
		sed 's/^/    /' "$work/$g.out"
		if [ "${rcs[i]:-1}" -ne 0 ]; then
			bad=1
			echo "    # guest $g: last lines of its kernel console:"
			tail -n 30 "$work/$g.console" | sed 's/^/    #   /'
		fi
	done
	if [ "$bad" -eq 0 ]; then
		echo "ok $n $name"
		passed=$((passed + 1))
		rm -rf "$work"
	else
		echo "not ok $n $name # (files kept in $work)"
		failed=$((failed + 1))
	fi
}

main() {
	local tests i
	mapfile -t tests < <(select_tests "$here/net" "$@")
	echo "TAP version 13"
	echo "1..${#tests[@]}"
	for i in "${!tests[@]}"; do
		run_file $((i + 1)) "${tests[i]}" || {
			echo "not ok $((i + 1)) net/$(basename "${tests[i]}" .sh) # could not start its guests"
			failed=$((failed + 1))
		}
	done
	echo "$passed passed, $failed failed, $skipped skipped"
	[ "$failed" -eq 0 ]
}

main "$@"
