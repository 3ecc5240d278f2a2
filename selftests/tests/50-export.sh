#!/usr/bin/env bash
# Export: a dst mirror served over NBD by the module, used by independent
# clients (nbdinfo, nbdcopy, qemu-img, qemu-io, fio's nbd engine, the
# kernel's nbd client with ext4), read-only and access-controlled exports,
# and a tree: a second dst device whose remote leg is the first one's
# export, and a third level over the second one's export.
# timeout: 400
# SC2016: the bodies of eval '...' expand when evaluated, as intended.
# shellcheck disable=SC2016
# shellcheck source-path=SCRIPTDIR source=../lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
# shellcheck source=../dst.sh
. "$SELFTESTS_DIR/dst.sh"

require_cmd nbdinfo nbdcopy qemu-img qemu-io fio nbd-client mkfs.ext4 jq ss
MiB=$((1 << 20))
SIZE=$((64 * MiB))
MNT=$TEST_TMP/mnt
HOSTILE_CLIENT=$DST_REPO/userspace/target/release/nbd-hostile-client
mkdir -p "$MNT"

umount_mnt() {
	! mountpoint -q "$MNT" || umount "$MNT"
}

nbd_detach() {
	nbd-client -d /dev/nbd0 >/dev/null 2>&1 || true
}

exp_jq() {
	dst_jq "$1" ".exports[0].$2"
}

plan 38
brd_setup 3 64
dst_load
cleanup_push dst_unexport_all
cleanup_push umount_mnt

assert_cmd -m "create a mirror of ram0 and ram1" dstctl create m --mirror /dev/ram0 /dev/ram1
dev=$(dst_dev m)
head -c "$SIZE" /dev/urandom >"$TEST_TMP/img"
dd if="$TEST_TMP/img" of="$dev" bs=1M oflag=direct status=none
p=$(free_port)
uri="nbd://127.0.0.1:$p/m"
assert_cmd -m "export it on 127.0.0.1:$p" dstctl export m --listen "127.0.0.1:$p"
assert_eq "$(dst_jq m '.exports | length'),$(exp_jq m listen),$(exp_jq m name),$(exp_jq m read_only)" \
	"1,127.0.0.1:$p,m,false" "status shows the export"

# Independent clients.
assert_eq "$(nbdinfo --size "$uri")" "$SIZE" "nbdinfo: the size"
info=$(nbdinfo --json "$uri")
assert_eq "$(jq -r '.exports[0] | [.is_read_only, .can_flush, .can_fua, .can_multi_conn, .can_zero] | map(tostring) | join(" ")' <<<"$info")" \
	"false true true true true" "nbdinfo: writable, flush, FUA, multi-conn, write zeroes"
assert_eq "$(jq -r .structured <<<"$info")" true "nbdinfo: structured replies negotiated"
assert_cmd -m "nbdinfo --list names the export" eval 'nbdinfo --list "nbd://127.0.0.1:$p/" | grep -q "export=\"m\""'
assert_eq "$(export_sum "$uri")" "$(sha256sum <"$TEST_TMP/img" | cut -d' ' -f1)" "nbdcopy out: the device's bytes"
head -c "$SIZE" /dev/urandom >"$TEST_TMP/img2"
assert_cmd -m "nbdcopy in: a new image" nbdcopy "$TEST_TMP/img2" "$uri"
assert_eq "$(sum_dev "$dev" "$SIZE")" "$(sha256sum <"$TEST_TMP/img2" | cut -d' ' -f1)" "the device holds the new image"
assert_cmd -m "both legs too" legs_match_dev "$dev" "$SIZE" /dev/ram0 /dev/ram1
assert_cmd -m "qemu-img compare: export and image are identical" \
	qemu-img compare -f raw -F raw "$TEST_TMP/img2" "$uri"
assert_cmd -m "qemu-io: write, read back and verify patterns" \
	qemu-io -f raw -c 'write -P 0xa5 1M 192k' -c 'read -P 0xa5 1M 192k' \
	-c 'write -z 4M 64k' -c 'read -P 0 4M 64k' -c 'flush' "$uri"
cd "$TEST_TMP" || exit 1
assert_cmd -m "fio --ioengine=nbd randwrite 4k-64k QD16 + crc32c verify" \
	fio --name=nbd --ioengine=nbd --uri="$uri" --rw=randwrite --bsrange=4k-64k --iodepth=16 \
	--size=32M --verify=crc32c --do_verify=1 --verify_fatal=1 --output="$TEST_TMP/fio.log"
assert_cmd -m "the legs are still identical" legs_match_dev "$dev" "$SIZE" /dev/ram0 /dev/ram1

# The kernel's nbd client, ext4 written locally.
dstctl unexport m
assert_cmd -m "mkfs.ext4 and files written locally" eval '
	mkfs.ext4 -q -F "$dev" && mount "$dev" "$MNT" && head -c $((16 * MiB)) "$TEST_TMP/img" >"$MNT/a" &&
	head -c 12345 /dev/urandom >"$MNT/b" && (cd "$MNT" && sha256sum a b) >"$TEST_TMP/sums" && umount "$MNT"'
assert_cmd -m "export again" dstctl export m --listen "127.0.0.1:$p"
cleanup_push nbd_detach
assert_cmd -m "nbd-client attaches the export as /dev/nbd0" eval '
	modprobe nbd nbds_max=1 && nbd-client -N m 127.0.0.1 "$p" /dev/nbd0 >/dev/null 2>&1'
assert_cmd -m "ext4 on /dev/nbd0 shows the files" eval '
	mount -o ro /dev/nbd0 "$MNT" && (cd "$MNT" && sha256sum -c --quiet "$TEST_TMP/sums") && umount "$MNT"'
assert_cmd -m "status lists the client" eval '[ "$(exp_jq m clients)" -ge 1 ]'
assert_cmd -m "nbd-client detaches" nbd-client -d /dev/nbd0
expect_err_contains -m "removing an exported device is refused" "is exported" dstctl remove m
assert_cmd -m "unexport" dstctl unexport m
assert_cmd -m "the port is closed" eval '! ss -Hltn "( sport = :$p )" | grep -q .'

# Read-only, and access control.
before=$(sum_dev "$dev" "$SIZE")
assert_cmd -m "export read-only" dstctl export m --listen "127.0.0.1:$p" --read-only
assert_cmd -m "nbdinfo: read-only" eval '[ "$(nbdinfo --json "$uri" | jq -r ".exports[0].is_read_only")" = true ]'
assert_cmd -m "a write is refused with EPERM (nbd-hostile-client ro-write)" \
	"$HOSTILE_CLIENT" --connect "127.0.0.1:$p" --export m --mode ro-write
assert_eq "$(sum_dev "$dev" "$SIZE")" "$before" "  ... and the device is unchanged"
dstctl unexport m
assert_cmd -m "export allowing 10.0.0.0/8 only" dstctl export m --listen "127.0.0.1:$p" --allow 10.0.0.0/8
assert_cmd -m "a loopback client is refused before the handshake" eval '
	! timeout 20 nbdinfo --size "$uri" >/dev/null 2>&1 && [ "$(exp_jq m refused)" -ge 1 ]'
dstctl unexport m

# A tree: top = mirror of ram2 and the export of m.
assert_cmd -m "export m again; create top over ram2 and nbd://127.0.0.1:$p/m" eval '
	dstctl export m --listen "127.0.0.1:$p" && dd if=/dev/zero of=/dev/ram2 bs=1M count=64 oflag=direct status=none &&
	dd if=/dev/zero of="$dev" bs=1M count=64 oflag=direct status=none &&
	dstctl create top --mirror /dev/ram2 "$uri?timeout=10"'
top=$(dst_dev top)
assert_cmd -m "fio randwrite 4k QD16 + verify through the top device" \
	fio_verify "$top" --rw=randwrite --bs=4k --iodepth=16 --size=64M
assert_cmd -m "ram2, m and both of m's legs hold what top holds" \
	legs_match_dev "$top" "$SIZE" /dev/ram2 "$dev" /dev/ram0 /dev/ram1

# A third level: top exported in turn, used by a linear device.
p2=$(free_port)
assert_cmd -m "export top on 127.0.0.1:$p2; create chain, linear over nbd://127.0.0.1:$p2/top" eval '
	dstctl export top --listen "127.0.0.1:$p2" && dstctl create chain --linear "nbd://127.0.0.1:$p2/top?timeout=10"'
chain=$(dst_dev chain)
assert_cmd -m "fio randwrite 4k-64k QD16 + verify through the third level" \
	fio_verify "$chain" --rw=randwrite --bsrange=4k-64k --iodepth=16 --size=64M
assert_cmd -m "every level and every leg below holds what chain holds" \
	legs_match_dev "$chain" "$SIZE" "$top" /dev/ram2 "$dev" /dev/ram0 /dev/ram1
assert_cmd -m "take the chain apart, top first" eval '
	dstctl remove chain && dstctl unexport top && dstctl remove top && dstctl unexport m && dstctl remove m'
dmesg_check
