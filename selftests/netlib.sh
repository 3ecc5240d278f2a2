# shellcheck shell=bash
# Guest side of the multi-guest tests (selftests/net/, run by net.sh);
# source after lib.sh.  net.sh boots one guest per role, all on the test
# kernel, linked by QEMU's UDP netdevs on the host's 127.0.0.1, and sharing
# one host directory, $DST_NET_SYNC, where the guests meet.
#
#   $DST_NET_ROLE           this guest's role (also its hostname)
#   net_setup               bring up this guest's addresses (from net.sh)
#   net_signal NAME         tell the other guests NAME has happened
#   net_wait NAME [SECS]    until another guest signals NAME (default 300 s);
#                           fails at once if net.sh gave up on the run
#   net_put NAME VALUE / net_get NAME
#                           a value for the other guests / another's value

: "${DST_NET_SYNC:?not started by selftests/net.sh}" "${DST_NET_ROLE:?}"

# DST_NET_ADDRS is "MAC=ADDR/PREFIX ...": give each NIC its address.
net_setup() {
	local a mac addr ifc
	for a in ${DST_NET_ADDRS:-}; do
		mac=${a%%=*} addr=${a#*=}
		ifc=$(ip -o link | awk -v m="link/ether $mac " 'index($0, m) { sub(":$", "", $2); print $2 }')
		[ -n "$ifc" ] || { echo "net_setup: no NIC with MAC $mac" >&2; return 1; }
		ip addr add "$addr" dev "$ifc" && ip link set "$ifc" up || return 1
	done
}

# net_if ADDR: the interface that has address ADDR (no prefix).
net_if() {
	ip -o -4 addr show | awk -v a="$1" 'index($4, a "/") == 1 { print $2 }'
}

net_signal() {
	: >"$DST_NET_SYNC/$1.tmp" && mv -f "$DST_NET_SYNC/$1.tmp" "$DST_NET_SYNC/$1"
}

_net_there() {
	[ ! -e "$DST_NET_SYNC/abort" ] || { echo "net_wait: the run was aborted" >&2; return 2; }
	[ -e "$DST_NET_SYNC/$1" ]
}

net_wait() {
	local name=$1 secs=${2:-300} end rc
	end=$((SECONDS + secs))
	while [ "$SECONDS" -lt "$end" ]; do
		rc=0
		_net_there "$name" || rc=$?
		case $rc in 0) return 0 ;; 2) return 1 ;; esac
		sleep 0.5
	done
	echo "net_wait: no '$name' after ${secs}s" >&2
	return 1
}

net_put() {
	printf '%s\n' "$2" >"$DST_NET_SYNC/$1.tmp" && mv -f "$DST_NET_SYNC/$1.tmp" "$DST_NET_SYNC/$1"
}

net_get() {
	cat "$DST_NET_SYNC/$1"
}

# A guest that fails tells the others, so they stop waiting for it.
# shellcheck disable=SC2154 # _tap_failed is lib.sh's
_net_on_exit() {
	[ "$_tap_failed" -eq 0 ] || net_signal abort
}
cleanup_push _net_on_exit
