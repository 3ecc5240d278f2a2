#!/usr/bin/env bash
# Self-test of selftests/nl_raw.py against the generic netlink controller
# (nlctrl): malformed requests come back with an errno and extack message.
# timeout: 120
# shellcheck source-path=SCRIPTDIR source=../lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

require_cmd python3
NL=("python3" "$SELFTESTS_DIR/nl_raw.py")
GETFAMILY=3 # CTRL_CMD_GETFAMILY
NAME=2      # CTRL_ATTR_FAMILY_NAME (NLA_NUL_STRING)

# nl EXPECTED-OUTPUT-REGEX ARGS...: run nl_raw.py, which must exit 0 and print
# a line matching the regex.
nl() {
	local re=$1 out
	shift
	out=$("${NL[@]}" "$@") || { echo "$out"; return 1; }
	echo "$out"
	grep -qE -- "$re" <<<"$out"
}

plan 7
assert_cmd -m "resolve nlctrl: id 16" nl '^family=nlctrl id=16 ' --family nlctrl --resolve
assert_cmd -m "GETFAMILY nlctrl succeeds with a reply" \
	nl '^reply cmd=1 ' --family nlctrl --cmd $GETFAMILY --attr $NAME:str:nlctrl --expect-errno 0
assert_cmd -m "unterminated name: EINVAL + extack at the attribute" \
	nl "^errno=-22 msg='Attribute failed policy validation' offset=20$" \
	--family nlctrl --cmd $GETFAMILY --attr-hex 0a0002006e6c6374726c0000 --expect-errno EINVAL
assert_cmd -m "unknown family name: ENOENT" \
	nl '^errno=-2 ' --family nlctrl --cmd $GETFAMILY --attr $NAME:str:no-such-family --expect-errno 2
assert_cmd -m "attribute length past the end: EINVAL" \
	nl '^errno=-22 ' --family nlctrl --cmd $GETFAMILY --attr-hex 4000020041424300 --expect-errno 22
assert_cmd -m "truncated genl header: an error, no hang" \
	nl '^errno=-[0-9]+ ' --family-id 16 --raw-hex 03
assert_fail -m "--expect-errno mismatch exits non-zero" \
	"${NL[@]}" --family nlctrl --cmd $GETFAMILY --attr $NAME:str:nlctrl --expect-errno EINVAL
