# shellcheck shell=bash
# dst helpers for the selftests; source after lib.sh.
#
#   dst_load                load dst.ko (unloaded again at exit)
#   dstctl ARGS...          the dstctl under test
#   dst_dev NAME            /dev/dstN of device NAME
#   dst_json NAME EXPR      a field of `dstctl status NAME --json`, by a
#                           python expression on `d` (e.g. 'd["legs"][1]["state"]')

DST_KO=${DST_KO:-$DST_REPO/dst/dst.ko}
DSTCTL=${DSTCTL:-$DST_REPO/userspace/target/release/dstctl}
export DST_KO DSTCTL

dstctl() {
	"$DSTCTL" "$@"
}

dst_unload() {
	local d
	for d in $("$DSTCTL" --json list 2>/dev/null |
		python3 -c 'import json,sys; [print(x["name"]) for x in json.load(sys.stdin)]' 2>/dev/null); do
		"$DSTCTL" remove "$d" || true
	done
	rmmod dst 2>/dev/null || true
}

dst_load() {
	[ -f "$DST_KO" ] || die "no module at $DST_KO (make module)"
	[ -x "$DSTCTL" ] || die "no dstctl at $DSTCTL (make dstctl)"
	if ! grep -q '^dst ' /proc/modules; then
		insmod "$DST_KO" || die "insmod $DST_KO failed"
	fi
	cleanup_push dst_unload
}

dst_json() {
	"$DSTCTL" --json status "$1" | python3 -c "import json,sys; d=json.load(sys.stdin); print($2)"
}

dst_dev() {
	dst_json "$1" 'd["path"]'
}

# A loop device over a new tmpfs file of $1 MiB (sector size $2, default
# 512); prints its path.  Runs in a subshell ($(...)), so the caller
# arranges the detaching: `cleanup_push losetup -D` before dst_load.
loop_dev() {
	local f
	f=$(mktemp "$TEST_TMP/loop.XXXXXX")
	truncate -s "$(($1 << 20))" "$f"
	losetup --find --show --sector-size "${2:-512}" "$f"
}

# sha256 of DEV's first SIZE bytes must be the same on every LEG.
legs_match_dev() {
	local dev=$1 size=$2 want leg
	shift 2
	want=$(sum_dev "$dev" "$size")
	for leg in "$@"; do
		if [ "$(sum_dev "$leg" "$size")" != "$want" ]; then
			echo "leg $leg differs from $dev"
			return 1
		fi
	done
}

# fio with crc32c verification on DEV; extra fio options follow.  Fails on
# a non-zero exit, an error count or a verify failure.
fio_verify() {
	local dev=$1 out
	shift
	out=$(mktemp "$TEST_TMP/fio.XXXXXX")
	if ! fio --name=verify --filename="$dev" --ioengine=libaio --direct=1 \
		--verify=crc32c --do_verify=1 --verify_fatal=1 "$@" >"$out" 2>&1; then
		cat "$out"
		return 1
	fi
	if grep -qE 'err= *[1-9]|verify: bad|io_u error' "$out"; then
		cat "$out"
		return 1
	fi
}
