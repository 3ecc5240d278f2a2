#!/usr/bin/env bash
# The resync under faults, and its speed limit.
# (a) Source failing mid-resync: a 3-leg mirror whose leg 0 is a dm device;
#     leg 2 is detached while 40 MiB are written, then attached with the
#     resync held to 4 MiB/s.  Once it has copied some, leg 0 starts failing
#     every I/O.  The resync goes on from leg 1: leg 2 is in sync again
#     without copying more than it missed (plus one chunk), and legs 1, 2
#     and the device are identical.  Leg 0's failed reads are repaired
#     from leg 1; that write fails too, so leg 0 ends faulty.
# (b) Target dropping mid-resync: a mirror of a RAM disk and a remote leg,
#     under fio with verification.  The remote leg is detached while 32 MiB
#     are written, attached again, and its connection is cut part way
#     through the resync.  It goes down, comes back, and resumes: the second
#     resync copies what was left (fio writes there too), not what was
#     copied before the cut; fio verifies, the legs are identical.
# (c) Speed limit and region size: with --resync-max 4M the copy keeps to
#     it, status shows the speed and an ETA, `dstctl set` lifts the limit
#     and it finishes.  A 4 KiB write copies one region on attach: 64 KiB
#     by default, 1 MiB with --region-size 1M.  Settings on a linear
#     device, a bad region size: refused, nothing changed.
# (d) A detach whose leg has I/O stuck (a suspended dm device), and whose
#     dstctl is killed: abandoned, the leg stays and is resynced; once the
#     dm device resumes, the stuck write completes and the legs match.
# timeout: 400
# SC2016: the bodies of eval '...' expand when evaluated, as intended.
# shellcheck disable=SC2016
# shellcheck source-path=SCRIPTDIR source=../lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
# shellcheck source=../dst.sh
. "$SELFTESTS_DIR/dst.sh"

require_cmd fio nbdkit nbdcopy nft ss jq dmsetup
MiB=$((1 << 20))
SIZE=$((64 * MiB))
SECTORS=$((SIZE / 512))

dm_create() {
	dmsetup create "$1" --table "$2" && dmsetup mknodes "$1"
}

resynced_of() {
	dst_jq "$1" ".legs[$2].resynced"
}

# The KiB the kernel said it would resync for leg 1 of $1, the Nth time.
back_kib() {
	dmesg | sed -n "s/.*dst: $1: leg 1 is back; resyncing .* (\([0-9]*\) KiB)/\1/p" | sed -n "${2}p"
}

plan 40
brd_setup 4 64
dst_load
cleanup_push sh -c 'dmsetup remove --retry srcleg 2>/dev/null || true'

# ---- (a) the source fails mid-resync ----------------------------------------
assert_cmd -m "(a) dm leg over ram0" dm_create srcleg "0 $SECTORS linear /dev/ram0 0"
assert_cmd -m "3-leg mirror ra (dm leg, ram1, ram2), resync held to 4 MiB/s" \
	dstctl create ra --mirror /dev/mapper/srcleg /dev/ram1 /dev/ram2 --resync-max 4M
dev=$(dst_dev ra)
dd if=/dev/urandom of="$dev" bs=1M count=64 oflag=direct status=none
assert_cmd -m "detach leg 2, write 40 MiB" \
	eval 'dstctl detach ra 2 >/dev/null && dd if=/dev/urandom of="$dev" bs=1M count=40 seek=8 oflag=direct status=none'
resynced0=$(resynced_of ra 2)
assert_cmd -m "attach leg 2: the resync copies some" \
	eval 'dstctl attach ra 2 >/dev/null && wait_until 30 resync_past ra 2 $((4 * MiB))'
total=$(dst_jq ra '.legs[2].resync_total')
done_at_fail=$(done_of ra 2)
diag "leg 2: $done_at_fail of $total bytes copied when leg 0 fails"
assert_cmd -m "leg 0 starts failing every I/O, mid-resync" \
	sh -c "dmsetup load srcleg --table '0 $SECTORS error' && dmsetup resume srcleg"
assert_cmd -m "  ... the resync goes on from leg 1: leg 2 in sync" wait_leg ra 2 in-sync 60
# No read through the device yet: the repair comes from the resync's reads.
assert_cmd -m "  ... leg 0's failed resync reads are to be rewritten from leg 1" \
	eval 'dmesg | grep -q "ra: leg 0 (.*) failed reads; rewriting them from the other legs"'
copied=$(($(resynced_of ra 2) - resynced0))
diag "leg 2: $copied bytes copied in all, $total missed; leg 0: $(dst_jq ra '.legs[0].read_errors') read errors"
assert_cmd -m "  ... leg 0 really failed resync reads" eval '[ "$(dst_jq ra ".legs[0].read_errors")" -gt 0 ]'
assert_cmd -m "  ... it copied what leg 2 missed, at most one chunk again" \
	eval '[ "$copied" -ge "$total" ] && [ "$copied" -le $((total + MiB)) ]'
assert_cmd -m "  ... legs 1 and 2 hold the device's data" legs_match_dev "$dev" "$SIZE" /dev/ram1 /dev/ram2
assert_cmd -m "  ... the rewrite fails too: leg 0 faulty, legs 1 and 2 in sync" \
	eval 'wait_leg ra 0 faulty 30 &&
		[ "$(dst_jq ra "[.state, .legs[1].state, .legs[2].state] | join(\" \")")" = "degraded in-sync in-sync" ]'
assert_cmd -m "  ... remove ra" dstctl remove ra
dmsetup remove --retry srcleg

# ---- (b) the target drops mid-resync ----------------------------------------
port=$(free_port)
assert_cmd -m "(b) nbdkit (memory 64M) for the remote leg" nbdkit_start "$port" memory 64M
assert_cmd -m "mirror rb: ram3 + remote leg (timeout 2 s), resync held to 4 MiB/s" \
	dstctl create rb --mirror /dev/ram3 "nbd://127.0.0.1:$port/?timeout=2&backoff-max=1" --resync-max 4M
dev=$(dst_dev rb)
dd if=/dev/urandom of="$dev" bs=1M count=64 oflag=direct status=none
wait_leg rb 1 in-sync 20
assert_cmd -m "detach the remote leg, write 32 MiB" \
	eval 'dstctl detach rb 1 >/dev/null && dd if=/dev/urandom of="$dev" bs=1M count=32 oflag=direct status=none'
# fio writes where the resync has yet to copy when the cut comes.
fio_loop_start "$dev" --rw=randwrite --bs=4k --iodepth=8 --offset=24M --size=8M --verify_backlog=128
assert_cmd -m "attach it under fio: it reconnects and copies some" \
	eval 'dstctl attach rb 1 >/dev/null && wait_until 60 resync_past rb 1 $((4 * MiB))'
done_at_cut=$(done_of rb 1)
diag "remote leg: $done_at_cut of $(dst_jq rb '.legs[1].resync_total') bytes copied at the cut"
nft_cut "$port"
assert_cmd -m "  ... cut mid-resync: the leg goes down" wait_leg rb 1 down 30
sleep 2
nft_heal
# (A failure says whether the server was still there, and what it said:
# in 2026-12 nbdkit, logging to syslog, was sometimes gone after the heal.)
assert_cmd -m "  ... healed: it resumes and is in sync" \
	eval 'wait_leg rb 1 in-sync 90 || { srv_report "$port"; false; }'
assert_cmd -m "  ... fio verified all along" fio_loop_stop
first=$(back_kib rb 1) second=$(back_kib rb 2)
diag "first resync: ${first:-?} KiB, after the cut: ${second:-?} KiB"
assert_cmd -m "  ... the second resync copied what was left (within a chunk), not the 32 MiB again" \
	eval '[ -n "$second" ] && [ "$second" -gt 0 ] && [ "$second" -le $((first - done_at_cut / 1024 + 1024)) ]'
assert_cmd -m "  ... the device, ram3 and the export are identical" \
	same_data "$dev" /dev/ram3 "nbd://127.0.0.1:$port/" "$SIZE"
dstctl remove rb

# ---- (c) speed limit, dstctl set, region size --------------------------------
assert_cmd -m "(c) mirror rc (ram0, ram1), --resync-max 4M" \
	dstctl create rc --mirror /dev/ram0 /dev/ram1 --resync-max 4M
dev=$(dst_dev rc)
dd if=/dev/urandom of="$dev" bs=1M count=64 oflag=direct status=none
dstctl detach rc 1 >/dev/null
dd if=/dev/urandom of="$dev" bs=1M count=32 oflag=direct status=none
t0=${EPOCHREALTIME/./}
dstctl attach rc 1 >/dev/null
sleep 3
done3=$(done_of rc 1)
t1=${EPOCHREALTIME/./}
# 4 MiB/s over the time elapsed, plus a chunk and the burst allowance.
bound=$(((t1 - t0) * 4 * MiB / 1000000 + 2 * MiB))
diag "copied $done3 bytes in $(((t1 - t0) / 1000)) ms at 4 MiB/s (bound $bound)"
assert_cmd -m "  ... the resync keeps to the limit, and progresses" \
	eval '[ "$done3" -gt 0 ] && [ "$done3" -le "$bound" ]'
speed=$(dst_jq rc '.legs[1].resync_speed')
eta=$(dst_jq rc '.legs[1].resync_eta_s')
diag "status: speed $speed B/s, ETA $eta s"
assert_cmd -m "  ... status shows its speed (near 4 MiB/s) and an ETA" \
	eval '[ "$speed" -gt 0 ] && [ "$speed" -le $((6 * MiB)) ] && [ "$eta" -gt 0 ]'
assert_cmd -m "  ... dstctl set lifts the limit: it finishes" \
	eval 'dstctl set rc --resync-max 0 >/dev/null && wait_leg rc 1 in-sync 60'
assert_eq "$(dst_jq rc .resync_max_kib)" 0 "  ... the new limit shows"
r0=$(resynced_of rc 1)
dstctl detach rc 1 >/dev/null
dd if=/dev/urandom of="$dev" bs=4k count=1 seek=1300 oflag=direct status=none
dstctl attach rc 1 >/dev/null
wait_leg rc 1 in-sync 30
assert_eq "$(($(resynced_of rc 1) - r0))" 65536 "a 4 KiB write copies one 64 KiB region"
assert_cmd -m "  ... legs identical; remove rc" \
	eval 'legs_match_dev "$dev" "$SIZE" /dev/ram1 && dstctl remove rc'

dstctl create rr --mirror /dev/ram2 /dev/ram3 --region-size 1M >/dev/null
dev=$(dst_dev rr)
dstctl detach rr 1 >/dev/null
dd if=/dev/urandom of="$dev" bs=4k count=1 seek=1300 oflag=direct status=none
dstctl attach rr 1 >/dev/null
wait_leg rr 1 in-sync 30
assert_eq "$(dst_jq rr '.legs[1].resynced')/$(dst_jq rr .region_size)" "$MiB/$MiB" \
	"--region-size 1M: the same write copies one 1 MiB region"
dstctl create rl --linear /dev/ram0 >/dev/null
before=$(dstctl --json list | jq -S 'map(del(.legs[].reads, .legs[].writes))')
expect_err_contains -m "resync settings on a linear device: refused" "apply to mirrors" \
	dstctl set rl --resync-rate 8M
expect_err_contains -m "a region size that is no power of two: refused" "power of two" \
	dstctl create rx --mirror /dev/ram1 --region-size 3000
assert_eq "$(dstctl --json list | jq -S 'map(del(.legs[].reads, .legs[].writes))')" "$before" "  ... nothing changed"
dstctl remove rl && dstctl remove rr

# ---- (d) a detach that cannot complete --------------------------------------
cleanup_push sh -c 'dmsetup resume hang 2>/dev/null; dmsetup remove --retry hang 2>/dev/null || true'
assert_cmd -m "(d) mirror rd: ram0 + a dm leg over ram1" \
	eval 'dm_create hang "0 $SECTORS linear /dev/ram1 0" && dstctl create rd --mirror /dev/ram0 /dev/mapper/hang >/dev/null'
dev=$(dst_dev rd)
dd if=/dev/urandom of="$dev" bs=1M count=8 oflag=direct status=none
dmsetup suspend --noflush hang
dd if=/dev/urandom of="$dev" bs=4k count=1 seek=10 oflag=direct status=none &
ddpid=$!
sleep 1
assert_fail -m "the dm leg holds a write: dstctl detach waits, and is killed" \
	timeout -s KILL 3 "$DSTCTL" detach rd 1
assert_cmd -m "  ... the detach is abandoned: the leg stays (resyncing or in sync)" \
	eval 'wait_leg rd 1 "resyncing|in-sync" 20 && dmesg | grep -q "rd: leg 1: detach abandoned"'
dmsetup resume hang
assert_cmd -m "  ... the dm device resumes: the stuck write completes" wait "$ddpid"
assert_cmd -m "  ... leg 1 in sync, the legs match the device" \
	eval 'wait_leg rd 1 in-sync 30 && legs_match_dev "$dev" "$SIZE" /dev/ram0 /dev/ram1'
assert_cmd -m "  ... and a detach now works" eval 'dstctl detach rd 1 >/dev/null && [ "$(leg_state rd 1)" = detached ]'
assert_cmd -m "  ... remove rd" eval 'dstctl remove rd && dmsetup remove --retry hang'
dmesg_check
