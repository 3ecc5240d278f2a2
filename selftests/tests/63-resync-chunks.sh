#!/usr/bin/env bash
# The resync copies several chunks at once, each behind the barrier over
# its stretch of the device, while writes elsewhere go on and writes into a
# chunk wait for it.  With no speed limit (so chunks are always in flight)
# and fio writing over the whole device with crc32c verification, a full
# resync of a leg ends with the legs identical and fio clean, for regions
# of 4 KiB (a chunk of 256 regions), 64 KiB and 4 MiB (a chunk of one
# region, four barrier buckets), and for a remote leg behind a 2 ms netem
# delay (chunks in flight on the link at once).  With a speed limit, the
# chunks in flight still keep to it, and a write that waits for a chunk
# over a remote leg waits for the chunk's I/O, not for the limit's timer
# (which ran up to 500 ms later at 2 MiB/s: 1 MiB per chunk).
# timeout: 400
# SC2016: the bodies of eval '...' expand when evaluated, as intended.
# shellcheck disable=SC2016
# shellcheck source-path=SCRIPTDIR source=../lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
# shellcheck source=../dst.sh
. "$SELFTESTS_DIR/dst.sh"

require_cmd fio nbdkit nbdcopy tc ss jq
MiB=$((1 << 20))
SIZE=$((64 * MiB))

# A full resync of leg 1 of NAME under fio, twice; the legs then match.
resync_under_fio() {
	local name=$1 dev i
	dev=$(dst_dev "$name")
	dd if=/dev/urandom of="$dev" bs=1M count=64 oflag=direct status=none || return 1
	fio_loop_start "$dev" --rw=randwrite --bsrange=4k-256k --iodepth=16 --size="$SIZE" \
		--verify_backlog=256
	for i in 1 2; do
		dstctl detach "$name" 1 >/dev/null && dstctl attach "$name" 1 --full >/dev/null &&
			wait_leg "$name" 1 in-sync 120 || { fio_loop_stop; return 1; }
		[ "$(dst_jq "$name" '.legs[1].resynced')" -ge $((i * SIZE)) ] ||
			{ echo "round $i: leg 1 resynced $(dst_jq "$name" '.legs[1].resynced') bytes"; fio_loop_stop; return 1; }
	done
	fio_loop_stop
}

plan 14
brd_setup 2 64
dst_load

for region in 4K 64K 4M; do
	name=r$region
	assert_cmd -m "mirror $name (ram0, ram1), --region-size $region, no resync limit" \
		dstctl create "$name" --mirror /dev/ram0 /dev/ram1 --region-size "$region" --resync-rate 0
	assert_cmd -m "  ... two full resyncs of leg 1 under fio verify; the legs hold the device's data" \
		eval 'resync_under_fio "$name" && legs_match_dev "$(dst_dev "$name")" "$SIZE" /dev/ram0 /dev/ram1'
	dstctl remove "$name"
done

# The kernel's speed for the last resync of leg 1 of $1, in KiB/s.
resync_speed() {
	dmesg | sed -n "s/.*dst: $1: leg 1 is in sync again (.* KiB copied in .* ms, \([0-9]*\) KiB\/s)/\1/p" | tail -n 1
}
assert_cmd -m "mirror rl (ram0, ram1), --resync-max 8M: a full resync of leg 1" \
	eval 'dstctl create rl --mirror /dev/ram0 /dev/ram1 --resync-max 8M >/dev/null &&
		dstctl detach rl 1 >/dev/null && dstctl attach rl 1 --full >/dev/null && wait_leg rl 1 in-sync 60'
# 8 MiB/s, and at most the first four chunks and 100 ms of catch-up early.
assert_cmd -m "  ... keeps to the limit: at most 9 MiB/s over the 64 MiB (kernel: $(resync_speed rl) KiB/s)" \
	eval '[ -n "$(resync_speed rl)" ] && [ "$(resync_speed rl)" -le 9216 ]'
dstctl remove rl

port=$(free_port)
assert_cmd -m "nbdkit memory 64M on port $port" nbdkit_start "$port" memory 64M
assert_cmd -m "netem on lo: delay 2ms; mirror rn of ram0 and the export, no resync limit" \
	eval 'netem_lo delay 2ms &&
		dstctl create rn --mirror /dev/ram0 "nbd://127.0.0.1:$port/" --resync-rate 0'
assert_cmd -m "  ... two full resyncs of the remote leg under fio verify; ram0, the export and the device are identical" \
	eval 'resync_under_fio rn && same_data "$(dst_dev rn)" /dev/ram0 "nbd://127.0.0.1:$port/" "$SIZE"'
dstctl remove rn
netem_del

# fio's 99.9th percentile completion latency of 4k writes at QD1, in ms.
write_p999_ms() {
	fio --name=lat --filename="$1" --ioengine=libaio --direct=1 --rw=randwrite --bs=4k \
		--iodepth=1 --time_based --runtime=8 --size="$SIZE" --output-format=json \
		--output="$TEST_TMP/lat.json" >/dev/null 2>&1 || return 1
	jq -r '.jobs[0].write.clat_ns.percentile."99.900000" / 1000000 | floor' "$TEST_TMP/lat.json"
}
assert_cmd -m "mirror rs of ram0 and the export, resync held to 2 MiB/s; a full resync of the remote leg" \
	eval 'dstctl create rs --mirror /dev/ram0 "nbd://127.0.0.1:$port/" --resync-rate 2M --resync-max 2M >/dev/null &&
		dstctl detach rs 1 >/dev/null && dstctl attach rs 1 --full >/dev/null && [ "$(leg_state rs 1)" = resyncing ]'
p999=$(write_p999_ms "$(dst_dev rs)")
assert_cmd -m "  ... 4k writes meanwhile: 99.9% within 250 ms (fio: ${p999:-?} ms)" \
	eval '[ -n "$p999" ] && [ "$p999" -lt 250 ] && [ "$(leg_state rs 1)" = resyncing ]'
dstctl remove rs
dmesg_check
