#!/usr/bin/env bash
# Random generic netlink requests (selftests/dst_nl_fuzz.py: mutated
# requests of every command, random bytes, unknown commands) while a
# mirror "keep" is under fio verify: every request is answered, the mirror
# is untouched and its data verifies, no kernel warning; then the devices
# the fuzzer made are removed and the module unloads.
# timeout: 600
# SC2016: the bodies of eval '...' expand when evaluated, as intended.
# shellcheck disable=SC2016
# shellcheck source-path=SCRIPTDIR source=../lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
# shellcheck source=../dst.sh
. "$SELFTESTS_DIR/dst.sh"

require_cmd python3 fio jq
SEEDS="1 2 3"
COUNT=1000

# keep's configuration and leg states, without counters.
keep_shape() {
	dstctl --json status keep | jq -cS '{name, path, target, size, state,
		legs: [.legs[] | {index, spec, state}]}'
}

plan 8
brd_setup 6 64
dst_load
assert_cmd -m "mirror keep (ram0, ram1) under fio verify" \
	eval 'dstctl create keep --mirror /dev/ram0 /dev/ram1 >/dev/null'
fio_loop_start "$(dst_dev keep)" --rw=randwrite --bs=4k --iodepth=8 --size=32M --verify_backlog=128
shape=$(keep_shape)
for seed in $SEEDS; do
	assert_cmd -m "seed $seed: $COUNT random requests, each answered" \
		eval 'python3 "$SELFTESTS_DIR/dst_nl_fuzz.py" "$seed" "$COUNT" >"$TEST_TMP/fuzz.$seed" 2>&1'
	diag <"$TEST_TMP/fuzz.$seed"
done
assert_eq "$(keep_shape)" "$shape" "keep is untouched"
assert_cmd -m "  ... and fio verified throughout" fio_loop_stop
# What the fuzzer made (fz*): removed; then the module unloads.
remove_fuzzed() {
	local name
	for name in $(dstctl --json list | jq -r '.[].name'); do
		[ "$name" = keep ] && continue
		dstctl unexport "$name" 2>/dev/null || true
		dstctl remove "$name" || return 1
	done
	dstctl remove keep && rmmod dst
}
assert_cmd -m "the fuzzer's devices and keep removed, the module unloads" remove_fuzzed
dmesg_check
