#!/usr/bin/env bash
# Remote legs against three independent NBD servers (nbdkit memory,
# qemu-nbd, nbd-server): a mirror of a RAM disk and the export survives fio
# with crc32c verification, the export ends up holding exactly what the
# local leg and the device hold, and the leg's status says what it is.
# Then a linear device over two nbdkit exports (each export holds its
# region of the device), and a remote leg over IPv6.  A leg opens two
# connections to a server that allows several (CAN_MULTI_CONN), one to
# others or with conns=1.  A leg that goes away says so with
# NBD_CMD_DISC; a mirror's cache flush reaches the remote leg as
# NBD_CMD_FLUSH.
# timeout: 540
# SC2016: the bodies of eval '...' expand when evaluated, as intended.
# shellcheck disable=SC2016
# shellcheck source-path=SCRIPTDIR source=../lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
# shellcheck source=../dst.sh
. "$SELFTESTS_DIR/dst.sh"

require_cmd fio nbdkit qemu-nbd nbd-server nbdcopy ss
MiB=$((1 << 20))
SIZE=$((32 * MiB))

# Bytes [$2, $2+$3) of device $1, as a sha256.
sum_range() {
	dd if="$1" bs=64k iflag=direct,skip_bytes,count_bytes skip="$2" count="$3" status=none |
		sha256sum | cut -d' ' -f1
}

# One server: $1 = what, $2 = port, $3 = export name, $4 = the leg's
# timeout in seconds (10); the server runs.  Checks that the leg uses two
# connections if the server allows several, else one.
mirror_round() {
	local what=$1 port=$2 export=$3 timeout=${4:-10} name=m$1 dev uri
	uri="nbd://127.0.0.1:$port/$export"
	# The legs of a new mirror are assumed identical: start from zeroes.
	dd if=/dev/zero of=/dev/ram0 bs=1M count=32 oflag=direct status=none
	assert_cmd -m "$what: create a mirror of ram0 and $uri" \
		dstctl create "$name" --mirror /dev/ram0 "$uri?timeout=$timeout&backoff-max=1"
	dev=$(dst_dev "$name")
	assert_eq "$(dst_json "$name" 'd["size"], *(d["legs"][1][k] for k in ("kind", "addr", "export", "connects", "state"))')" \
		"$SIZE remote 127.0.0.1:$port $export 1 in-sync" \
		"$what: size 32M; leg 1 is remote, at 127.0.0.1:$port, export $export, connected once, in sync"
	conns=$(dst_json "$name" '2 if d["legs"][1]["nbd_flags"] & 256 else 1')
	diag "$what: the server's flags say $conns connection(s)"
	assert_eq "$(dst_json "$name" 'd["legs"][1]["conns"]') $(established "$port")" "$conns $conns" \
		"$what: the leg has $conns connection(s) (2 with CAN_MULTI_CONN), and ss sees as many"
	cd "$TEST_TMP"
	assert_cmd -m "$what: fio randwrite 4k QD16 32M + crc32c verify, no errors" \
		fio_verify "$dev" --rw=randwrite --bs=4k --iodepth=16 --size=32M
	assert_cmd -m "$what: the export holds what ram0 and the device hold" same_data "$dev" /dev/ram0 "$uri" "$SIZE"
	assert_eq "$(dst_json "$name" 'd["legs"][1]["write_errors"], d["legs"][1]["read_errors"], d["legs"][1]["writes"] > 0, d["legs"][1]["connects"], d["state"]')" \
		"0 0 True 1 ok" "$what: the remote leg took writes, no errors, never reconnected"
	assert_cmd -m "$what: remove the mirror" dstctl remove "$name"
	srv_stop "$port"
}

# Established TCP connections to port $1 (the client side).
established() {
	ss -Htn state established "( dport = :$1 )" | wc -l
}

plan 50
brd_setup 1 32
dst_load

# 1. Three servers.
p=$(free_port)
assert_cmd -m "nbdkit memory 32M on port $p" nbdkit_start "$p" memory 32M
mirror_round nbdkit "$p" disk-a
assert_eq "$conns" 2 "nbdkit: CAN_MULTI_CONN, so two connections"

p=$(free_port)
truncate -s "$SIZE" "$TEST_TMP/qemu.img"
assert_cmd -m "qemu-nbd (raw file in tmpfs) on port $p" qemu_nbd_start "$p" qexp "$TEST_TMP/qemu.img"
mirror_round qemu-nbd "$p" qexp

p=$(free_port)
truncate -s "$SIZE" "$TEST_TMP/nbd-server.img"
assert_cmd -m "nbd-server (file export) on port $p" nbd_server_start "$p" nexp "$TEST_TMP/nbd-server.img"
# nbd-server spends from 0.5 s to over 10 s of CPU on a handshake in this
# emulated guest (nbdinfo sees the same; a dst leg's 10 s timeout then
# fails the create): its round allows 30 s.
mirror_round nbd-server "$p" nexp 30

# 2. Linear over two nbdkit exports of 16 and 24 MiB.
p0=$(free_port)
p1=$(free_port)
assert_cmd -m "two nbdkit servers, 16M and 24M" \
	eval 'nbdkit_start "$p0" memory 16M && nbdkit_start "$p1" memory 24M'
u0="nbd://127.0.0.1:$p0/lin0"
u1="nbd://127.0.0.1:$p1/lin1"
assert_cmd -m "create a linear device over both, the first with conns=1, the second with conns=4" \
	dstctl create lr --linear "$u0?conns=1" "$u1?conns=4" --timeout 10s
dev=$(dst_dev lr)
assert_eq "$(dst_json lr '[l["conns"] for l in d["legs"]]') $(established "$p0") $(established "$p1")" \
	"[1, 4] 1 4" "linear: one connection to the first server, four to the second (ss agrees)"
assert_cmd -m "linear: the status table says 4 connections under the second leg" \
	eval 'dstctl status lr | grep -q "4 connections"' 
assert_eq "$(blockdev --getsize64 "$dev")" $((40 * MiB)) "linear: capacity 40M"
assert_eq "$(dst_json lr '[(l["kind"], l["offset"], l["addr"], l["export"], l["state"]) for l in d["legs"]]')" \
	"[('remote', 0, '127.0.0.1:$p0', 'lin0', 'in-sync'), ('remote', $((16 * MiB)), '127.0.0.1:$p1', 'lin1', 'in-sync')]" \
	"linear: two remote legs at offsets 0 and 16M"
cd "$TEST_TMP" || exit 1
assert_cmd -m "linear: fio randwrite 4k-256k QD16 (across the boundary) + crc32c verify" \
	fio_verify "$dev" --rw=randwrite --bsrange=4k-256k --iodepth=16 --size=40M
assert_eq "$(export_sum "$u0")" "$(sum_range "$dev" 0 $((16 * MiB)))" "linear: export 0 holds the first 16M"
assert_eq "$(export_sum "$u1")" "$(sum_range "$dev" $((16 * MiB)) $((24 * MiB)))" "linear: export 1 holds the next 24M"
assert_cmd -m "linear: remove" dstctl remove lr
srv_stop "$p0"
srv_stop "$p1"

# 3. IPv6.
p=$(free_port)
assert_cmd -m "nbdkit memory 32M on [::1]:$p" nbdkit_start -6 "$p" memory 32M
dd if=/dev/zero of=/dev/ram0 bs=1M count=32 oflag=direct status=none
assert_cmd -m "IPv6: create a mirror of ram0 and nbd://[::1]:$p/" \
	dstctl create m6 --mirror /dev/ram0 "nbd://[::1]:$p/?timeout=10"
dev=$(dst_dev m6)
assert_eq "$(dst_json m6 'd["legs"][1]["kind"], d["legs"][1]["addr"], repr(d["legs"][1]["export"]), d["legs"][1]["state"]')" \
	"remote [::1]:$p '' in-sync" "IPv6: leg 1 at [::1]:$p, default export, in sync"
head -c $((8 * MiB)) /dev/urandom >"$TEST_TMP/blob"
want=$(sha256sum <"$TEST_TMP/blob" | cut -d' ' -f1)
assert_cmd -m "IPv6: write 8M and read it back" \
	eval 'dd if="$TEST_TMP/blob" of="$dev" bs=1M oflag=direct status=none && [ "$(sum_dev "$dev" $((8 * MiB)))" = "$want" ]'
assert_cmd -m "IPv6: the export holds what ram0 and the device hold" same_data "$dev" /dev/ram0 "nbd://[::1]:$p/" "$SIZE"
assert_cmd -m "IPv6: remove" dstctl remove m6
srv_stop "$p"

# 4. A leg that goes away on purpose says so (NBD_CMD_DISC): nbdkit -v
# logs the command it got last.
p=$(free_port)
assert_cmd -m "nbdkit -v memory 8M on port $p" \
	nbdkit_start "$p" -v memory 8M
assert_cmd -m "DISC: create a linear device over it, write 1M" \
	eval 'dstctl create dl --linear "nbd://127.0.0.1:$p/?conns=2" &&
		dd if=/dev/urandom of="$(dst_dev dl)" bs=1M count=1 oflag=direct status=none'
assert_cmd -m "DISC: remove the device" dstctl remove dl
assert_cmd -m "DISC: nbdkit saw NBD_CMD_DISC before the close, on both connections" \
	wait_until 10 eval '[ "$(grep -c "client sent NBD_CMD_DISC, closing connection" "$TEST_TMP/srv.$p.log")" = 2 ]' 
srv_stop "$p"

# 5. A mirror's cache flush (fsync of the device) reaches the remote leg
# as NBD_CMD_FLUSH: nbdkit's log filter writes every request it gets.
p=$(free_port)
flog=$TEST_TMP/flush.$p.log
flushes() {
	grep -c " Flush id=" "$flog" || true
}
assert_cmd -m "nbdkit memory 8M with the log filter on port $p" \
	nbdkit_start "$p" --filter=log memory 8M logfile="$flog"
assert_cmd -m "FLUSH: create a mirror of ram0 and it, write 1M" \
	eval 'dstctl create mf --mirror /dev/ram0 "nbd://127.0.0.1:$p/" &&
		dd if=/dev/urandom of="$(dst_dev mf)" bs=1M count=1 oflag=direct status=none'
before=$(flushes)
assert_cmd -m "FLUSH: fsync the device" sync "$(dst_dev mf)"
assert_cmd -m "FLUSH: the server got NBD_CMD_FLUSH (logged $before before the fsync)" \
	wait_until 5 eval '[ "$(flushes)" -gt "$before" ]'
diag "flushes logged after the fsync: $(flushes)"
dstctl remove mf
srv_stop "$p"
dmesg_check
