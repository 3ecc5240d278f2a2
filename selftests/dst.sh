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

# Stops every export (they keep their devices open).
dst_unexport_all() {
	local d
	for d in $("$DSTCTL" --json list 2>/dev/null |
		python3 -c 'import json,sys; [print(x["name"]) for x in json.load(sys.stdin)]' 2>/dev/null); do
		"$DSTCTL" unexport "$d" >/dev/null 2>&1 || true
	done
}

dst_unload() {
	local d
	dst_unexport_all
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
			diff_blocks "$dev" "$leg" "$size"
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

# ---- remote legs: NBD servers, waiting, network faults ----------------------
#
#   free_port                     a TCP port nothing listens on (20000-29999)
#   nbdkit_start [-6] PORT [PLUGIN ARGS...]
#                                 nbdkit (default: memory 32M) on 127.0.0.1
#                                 (-6: ::1); returns once it listens
#   qemu_nbd_start PORT EXPORT FILE   qemu-nbd (raw FILE, export EXPORT)
#   nbd_server_start PORT EXPORT FILE nbd-server (FILE, export EXPORT)
#   hostile_start PORT ARGS...    nbd-hostile on 127.0.0.1 (stderr in
#                                 $TEST_TMP/srv.PORT.log)
#   srv_kill PORT [SIGNAL]        kill the server on PORT (default KILL) and
#                                 wait until nothing listens there
#   srv_restart PORT              start it again, as it was started
#   srv_report PORT               print whether the server on PORT still
#                                 runs and listens, and the end of its log
#                                 (for a failure's diag)
#   (every server started is stopped at exit)
#   wait_listen PORT [SECS]       until something listens on PORT
#   wait_until SECS CMD...        run CMD every 0.2 s until it succeeds;
#                                 fails after SECS
#   dst_jq NAME FILTER            jq -r FILTER on `dstctl --json status NAME`
#                                 (cheaper than dst_json: for polling)
#   leg_state NAME LEG            state of leg LEG of device NAME
#   wait_leg NAME LEG STATES [SECS]   until the leg's state is one of STATES
#                                 ("down|faulty"); prints it on timeout
#   export_sum URI                sha256 of a whole NBD export (nbdcopy, with
#                                 $NBDCOPY_ARGS)
#   same_data DEV LEG URI SIZE    the first SIZE bytes of DEV and of the
#                                 local leg LEG, and the whole export URI
#                                 (SIZE bytes long), are the same
#   nft_cut PORT / nft_heal       drop / let through all TCP to and from PORT
#   netem_lo ARGS... / netem_del  put netem (ARGS: delay 5ms loss 1%...) on
#                                 lo / take it off (also at exit)
#   fio_loop_start DEV FIO-ARGS... / fio_loop_stop
#                                 fio_verify DEV FIO-ARGS... run back to back
#                                 in the background; fio_loop_stop waits for
#                                 the run under way and fails if any failed
#                                 (it prints the log: runs, failures)
#   monitor_start FILE / monitor_stop
#                                 `dstctl monitor --json` into FILE (returns
#                                 once it is ready)
#   monitor_count FILE EVENT [KEY=VALUE...]   lines of FILE with that event

NBD_HOSTILE=${NBD_HOSTILE:-$DST_REPO/userspace/target/release/nbd-hostile}
export NBD_HOSTILE

free_port() {
	local p i used=$TEST_TMP/.ports
	touch "$used"
	for ((i = 0; i < 200; i++)); do
		p=$((20000 + RANDOM % 10000))
		grep -qx "$p" "$used" && continue
		[ -z "$(ss -Hltn "( sport = :$p )")" ] || continue
		echo "$p" >>"$used"
		echo "$p"
		return 0
	done
	echo "free_port: no free port" >&2
	return 1
}

wait_until() {
	local secs=$1 end
	shift
	end=$((${EPOCHREALTIME/./} + secs * 1000000))
	until "$@"; do
		[ "${EPOCHREALTIME/./}" -lt "$end" ] || return 1
		sleep 0.2
	done
}

_listening() {
	[ -n "$(ss -Hltn "( sport = :$1 )")" ]
}

_not_listening() {
	! _listening "$1"
}

wait_listen() {
	wait_until "${2:-20}" _listening "$1" || { echo "nothing listens on port $1" >&2; return 1; }
}

# _srv_run PORT: (re)start the server on PORT from its saved command line.
_srv_run() {
	local port=$1 cmd
	cmd=$(cat "$TEST_TMP/srv.$port.cmd") || return 1
	rm -f "$TEST_TMP/srv.$port.pid"
	eval "$cmd" || return 1
	wait_listen "$port"
}

# _srv_start PORT CMD...: save CMD (which must write $TEST_TMP/srv.PORT.pid
# and listen on PORT), run it, arrange its stop at exit.
_srv_start() {
	local port=$1
	shift
	printf '%q ' "$@" >"$TEST_TMP/srv.$port.cmd"
	if [ ! -e "$TEST_TMP/srv.$port.stop" ]; then
		touch "$TEST_TMP/srv.$port.stop"
		cleanup_push srv_stop "$port"
	fi
	_srv_run "$port"
}

_srv_pid() {
	local pid
	pid=$(cat "$TEST_TMP/srv.$1.pid" 2>/dev/null) && [ -n "$pid" ] && echo "$pid"
}

srv_kill() {
	local port=$1 sig=${2:-KILL} pid
	pid=$(_srv_pid "$port") || { echo "srv_kill: no server on port $port" >&2; return 1; }
	kill -"$sig" "$pid" || return 1
	wait_until 20 _not_listening "$port" || { echo "port $port still listened on" >&2; return 1; }
	rm -f "$TEST_TMP/srv.$port.pid"
}

srv_restart() {
	_srv_run "$1"
}

srv_report() {
	local pid state=gone listen=no
	pid=$(_srv_pid "$1") || pid=?
	[ "$pid" = ? ] || ! kill -0 "$pid" 2>/dev/null || state=running
	! _listening "$1" || listen=yes
	echo "server on port $1: pid $pid $state, listening: $listen"
	[ ! -s "$TEST_TMP/srv.$1.log" ] || tail -n 20 "$TEST_TMP/srv.$1.log"
}

# srv_stop PORT: stop the server on PORT if it runs (TERM, then KILL).
srv_stop() {
	local pid
	pid=$(_srv_pid "$1") || return 0
	kill -TERM "$pid" 2>/dev/null || return 0
	wait_until 5 _not_listening "$1" || kill -KILL "$pid" 2>/dev/null || true
	rm -f "$TEST_TMP/srv.$1.pid"
}

# _logged_bg PORT CMD...: runs a server that forks into the background
# once it listens, with what it prints kept in $TEST_TMP/srv.PORT.log
# (srv_report shows it).  nbdkit is told to log to stderr: a daemon logs
# to syslog by default, which nobody reads in the VM (and with which
# nbdkit was seen to vanish when a cut connection healed).
_logged_bg() {
	local port=$1
	shift
	"$@" 2>>"$TEST_TMP/srv.$port.log"
}

nbdkit_start() {
	local addr=127.0.0.1 port
	[ "$1" != -6 ] || { addr=::1; shift; }
	port=$1
	shift
	[ $# -gt 0 ] || set -- memory 32M
	_srv_start "$port" _logged_bg "$port" nbdkit --log=stderr -P "$TEST_TMP/srv.$port.pid" \
		-i "$addr" -p "$port" "$@"
}

# nbdkit_file_start PORT SIZE: nbdkit serving a new file of SIZE bytes,
# whose data outlives a restart (unlike `memory`).
nbdkit_file_start() {
	truncate -s "$2" "$TEST_TMP/srv.$1.img" &&
		nbdkit_start "$1" file "$TEST_TMP/srv.$1.img"
}

qemu_nbd_start() {
	_srv_start "$1" _logged_bg "$1" qemu-nbd --fork --persistent --shared=8 -f raw \
		-b 127.0.0.1 -p "$1" -x "$2" --pid-file="$TEST_TMP/srv.$1.pid" "$3"
}

nbd_server_start() {
	local conf=$TEST_TMP/nbd-server.$1.conf
	printf '[generic]\nlistenaddr = 127.0.0.1\nport = %s\n[%s]\nexportname = %s\n' \
		"$1" "$2" "$3" >"$conf"
	_srv_start "$1" _logged_bg "$1" nbd-server -C "$conf" -p "$TEST_TMP/srv.$1.pid"
}

# nbd-hostile stays in the foreground: run it in the background.
_hostile_bg() {
	local port=$1
	shift
	"$NBD_HOSTILE" --listen "127.0.0.1:$port" "$@" 2>>"$TEST_TMP/srv.$port.log" &
	echo $! >"$TEST_TMP/srv.$port.pid"
}

hostile_start() {
	local port=$1
	shift
	_srv_start "$port" _hostile_bg "$port" "$@"
}

dst_jq() {
	"$DSTCTL" --json status "$1" | jq -r "$2"
}

# By leg index, which is the position in .legs until a leg is removed.
leg_state() {
	dst_jq "$1" ".legs[] | select(.index == $2) | .state"
}

_leg_state_in() {
	local s
	s=$(leg_state "$1" "$2") || return 1
	[[ "|$3|" == *"|$s|"* ]]
}

# Bytes leg $2 of $1 has been resynced so far, in the running resync.
done_of() {
	dst_jq "$1" ".legs[$2].resync_done"
}

# Leg $2 of $1 is resyncing and has copied at least $3 bytes.
resync_past() {
	[ "$(leg_state "$1" "$2")" = resyncing ] && [ "$(done_of "$1" "$2")" -ge "$3" ]
}

wait_leg() {
	local name=$1 leg=$2 states=$3 secs=${4:-30}
	wait_until "$secs" _leg_state_in "$name" "$leg" "$states" && return 0
	echo "$name leg $leg: state $(leg_state "$name" "$leg"), not $states after ${secs}s" \
		"(problem: $(dst_jq "$name" ".legs[] | select(.index == $leg) | .problem"))" >&2
	# Whether a resync is slow or stalled.
	dstctl status "$name" >&2 || true
	return 1
}

export_sum() {
	# shellcheck disable=SC2086 # word splitting wanted
	nbdcopy ${NBDCOPY_ARGS:-} "$1" - | sha256sum | cut -d' ' -f1
}

same_data() {
	local dev sum_loc sum_exp
	dev=$(sum_dev "$1" "$4")
	sum_loc=$(sum_dev "$2" "$4")
	sum_exp=$(export_sum "$3")
	echo "device $dev, $2 $sum_loc, export $sum_exp"
	if [ "$dev" = "$sum_loc" ] && [ "$dev" = "$sum_exp" ]; then
		return 0
	fi
	# Where they differ, to tell a lost region from a lost write.
	# shellcheck disable=SC2086 # word splitting wanted
	nbdcopy ${NBDCOPY_ARGS:-} "$3" "$TEST_TMP/export.img" &&
		diff_blocks "$2" "$TEST_TMP/export.img" "$4"
	[ "$dev" = "$sum_loc" ] || diff_blocks "$1" "$2" "$4"
	return 1
}

# Prints the 4 KiB blocks in which the first BYTES of files (or devices)
# A and B differ, as ranges (at most 20).  Block devices are read through
# their page cache, emptied first.
diff_blocks() {
	local f
	for f in "$1" "$2"; do
		[ ! -b "$f" ] || blockdev --flushbufs "$f"
	done
	python3 - "$1" "$2" "$3" <<-'EOT'
		import sys
		a, b, size = open(sys.argv[1], "rb"), open(sys.argv[2], "rb"), int(sys.argv[3])
		bs, runs, blk = 4096, [], 0
		while blk * bs < size:
		    if a.read(bs) != b.read(bs):
		        if runs and runs[-1][1] == blk:
		            runs[-1][1] = blk + 1
		        else:
		            runs.append([blk, blk + 1])
		    blk += 1
		n = sum(e - s for s, e in runs)
		print(f"{sys.argv[1]} and {sys.argv[2]} differ in {n} blocks of 4 KiB, {len(runs)} runs:")
		for s, e in runs[:20]:
		    print(f"  bytes {s * bs:#x}-{e * bs:#x} ({e - s} blocks)")
	EOT
}

nft_cut() {
	if [ -z "${_nft_cleanup:-}" ]; then
		_nft_cleanup=1
		cleanup_push nft_heal
	fi
	nft -f - <<-EOT
		table inet dstcut {
			chain out {
				type filter hook output priority 0; policy accept;
				tcp dport $1 drop
				tcp sport $1 drop
			}
		}
	EOT
}

netem_lo() {
	if [ -z "${_netem_cleanup:-}" ]; then
		_netem_cleanup=1
		cleanup_push netem_del
	fi
	tc qdisc add dev lo root netem "$@"
}

netem_del() {
	! tc qdisc show dev lo | grep -q netem || tc qdisc del dev lo root
}

nft_heal() {
	! nft list table inet dstcut >/dev/null 2>&1 || nft delete table inet dstcut
}

_monitor_ready() {
	grep -q '"event":"ready"' "$1"
}

monitor_start() {
	: >"$1"
	"$DSTCTL" monitor --json >"$1" 2>&1 &
	_monitor_pid=$!
	if [ -z "${_monitor_cleanup:-}" ]; then
		_monitor_cleanup=1
		cleanup_push monitor_stop
	fi
	wait_until 20 _monitor_ready "$1"
}

monitor_stop() {
	[ -n "${_monitor_pid:-}" ] || return 0
	kill -TERM "$_monitor_pid" 2>/dev/null || true
	wait "$_monitor_pid" 2>/dev/null || true
	_monitor_pid=''
}

monitor_count() {
	local file=$1 event=$2
	shift 2
	python3 - "$file" "$event" "$@" <<-'EOT'
		import json, sys
		file, event, conds = sys.argv[1], sys.argv[2], sys.argv[3:]
		n = 0
		for line in open(file):
		    try:
		        e = json.loads(line)
		    except ValueError:
		        continue
		    if e.get("event") == event and all(str(e.get(k)) == v for k, v in (c.split("=", 1) for c in conds)):
		        n += 1
		print(n)
	EOT
}

# The loop of fio_loop_start; each run is bounded (180 s).
_fio_loop() {
	local dev=$1 n=0 out=$TEST_TMP/.fio_loop.run
	shift
	cd "$TEST_TMP" || return 1
	while [ ! -e "$TEST_TMP/.fio_loop.stop" ]; do
		n=$((n + 1))
		if ! timeout -k 5 180 fio --name=verify --filename="$dev" --ioengine=libaio --direct=1 \
			--verify=crc32c --do_verify=1 --verify_fatal=1 "$@" >"$out" 2>&1 ||
			grep -qE 'err= *[1-9]|verify: bad|io_u error' "$out"; then
			echo "fio run $n failed:"
			cat "$out"
			return 1
		fi
		echo "fio run $n: ok"
	done
}

fio_loop_start() {
	rm -f "$TEST_TMP/.fio_loop.stop"
	_fio_loop "$@" >"$TEST_TMP/.fio_loop.log" 2>&1 &
	_fio_loop_pid=$!
	if [ -z "${_fio_loop_cleanup:-}" ]; then
		_fio_loop_cleanup=1
		cleanup_push fio_loop_stop
	fi
}

fio_loop_running() {
	[ -n "${_fio_loop_pid:-}" ] && kill -0 "$_fio_loop_pid" 2>/dev/null
}

fio_loop_stop() {
	local rc=0
	[ -n "${_fio_loop_pid:-}" ] || return 0
	touch "$TEST_TMP/.fio_loop.stop"
	wait "$_fio_loop_pid" || rc=$?
	_fio_loop_pid=''
	cat "$TEST_TMP/.fio_loop.log"
	return "$rc"
}
