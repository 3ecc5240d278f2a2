#!/usr/bin/env bash
# ext4 on a mirror of a RAM disk and a remote leg; the server is killed
# during a file copy (each file synced as it is written) and restarted a
# few seconds later: the copy finishes without an error, the files'
# checksums match before and after a remount, e2fsck is clean, and once
# the leg is back in sync the RAM disk, the export and the device hold the
# same bytes.
# timeout: 300
# SC2016: the bodies of eval '...' expand when evaluated, as intended.
# shellcheck disable=SC2016
# shellcheck source-path=SCRIPTDIR source=../lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
# shellcheck source=../dst.sh
. "$SELFTESTS_DIR/dst.sh"

require_cmd nbdkit nbdcopy mkfs.ext4 e2fsck ss jq
MiB=$((1 << 20))
SIZE=$((64 * MiB))
NFILES=48
MNT=$TEST_TMP/mnt
mkdir -p "$MNT" "$TEST_TMP/src"

umount_mnt() {
	! mountpoint -q "$MNT" || umount "$MNT"
}

# Copies the source files one by one, each synced once written; prints a
# line per file.
copy_files() {
	local f
	for f in "$TEST_TMP"/src/*; do
		cp "$f" "$MNT/" || return 1
		sync "$MNT/${f##*/}" || return 1
		echo "copied ${f##*/}"
	done
}

copied() {
	grep -c copied "$TEST_TMP/copy.log" 2>/dev/null || echo 0
}

check_files() {
	(cd "$MNT" && sha256sum -c --quiet "$TEST_TMP/sums")
}

plan 17
brd_setup 1 64
dst_load
cleanup_push umount_mnt
for ((i = 0; i < NFILES; i++)); do
	head -c $((MiB / 2 + i * 4099)) /dev/urandom >"$TEST_TMP/src/f$i"
done
(cd "$TEST_TMP/src" && sha256sum -- *) >"$TEST_TMP/sums"

port=$(free_port)
assert_cmd -m "nbdkit memory 64M on port $port" nbdkit_start "$port" memory 64M
assert_cmd -m "create a mirror of ram0 and the export (timeout 3s, backoff-max 1s)" \
	dstctl create fe --mirror /dev/ram0 "nbd://127.0.0.1:$port/?timeout=3&backoff-max=1&resync=full"
dev=$(dst_dev fe)
assert_cmd -m "mkfs.ext4 and mount" eval 'mkfs.ext4 -q -F "$dev" && mount "$dev" "$MNT"'

copy_files >"$TEST_TMP/copy.log" 2>&1 &
copy_pid=$!
wait_until 60 eval '[ "$(copied)" -ge $((NFILES / 4)) ]'
killed_at=$(copied)
assert_cmd -m "kill the server during the copy (after $killed_at of $NFILES files)" srv_kill "$port" KILL
assert_cmd -m "the leg goes down" wait_leg fe 1 down 20
sleep 2
assert_cmd -m "restart the server" srv_restart "$port"
rc=0
wait "$copy_pid" || rc=$?
diag "copy: status $rc, $(copied) files; the kill came after $killed_at"
assert_cmd -m "the copy finished without an error, the kill came before its end" \
	eval '[ "$rc" = 0 ] && [ "$(copied)" = "$NFILES" ] && [ "$killed_at" -lt "$NFILES" ]'
assert_cmd -m "the files' checksums match" check_files
assert_cmd -m "the leg comes back and is in sync (bounded wait)" wait_leg fe 1 in-sync 60
assert_cmd -m "remount; the checksums still match" eval 'umount "$MNT" && mount "$dev" "$MNT" && check_files'
assert_cmd -m "unmount; e2fsck -fn is clean" eval 'umount "$MNT" && e2fsck -fn "$dev" >"$TEST_TMP/fsck.log" 2>&1'
assert_cmd -m "ram0, the export and the device hold the same data" same_data "$dev" /dev/ram0 "nbd://127.0.0.1:$port/" "$SIZE"
assert_eq "$(dst_jq fe '[.state, .legs[1].connects, .legs[0].write_errors] | map(tostring) | join(" ")')" \
	"ok 2 0" "device ok, the leg reconnected once, no error on ram0"
# The journal's commits are flushes with data (REQ_PREFLUSH): a remote leg
# gets them as a flush, then the data, which must count as one request.
assert_cmd -m "idle: no request counted in flight on either leg" \
	eval '[ "$(dst_jq fe "[.legs[].inflight] | map(tostring) | join(\" \")")" = "0 0" ]'
assert_cmd -m "the remote leg detaches at once (nothing in flight), and attaches back in sync" \
	eval 'timeout 20 "$DSTCTL" detach fe 1 >/dev/null && dstctl attach fe 1 && wait_leg fe 1 in-sync 30'
assert_cmd -m "remove the mirror" dstctl remove fe
dmesg_check
