// SPDX-License-Identifier: GPL-2.0

//! Command line: syntax (clap) and the checks made before asking the kernel.

use clap::{ArgGroup, Args, Parser, Subcommand};
use dst_proto::genl::{
    check_name, conns, resync, timing, Target, EXPORT_NAME_MAX, LEG_SPEC_MAX, MAX_ALLOW, MAX_LEGS,
};
use dst_proto::nbd::DEFAULT_PORT;

use crate::export::{check_export_name, ExportPlan};
use crate::model::{ResyncLimits, ResyncSettings};
use crate::remote::{format_ms, parse_ms, LegPlan, Timing};
use crate::resync::{exact_size, format_rate_kib, parse_rate_kib, parse_region};

const ABOUT: &str = "Configure dst distributed block devices";

const LONG_ABOUT: &str = "\
Configure dst distributed block devices.

A dst device is a block device, /dev/dstN, that stores its data on one or
more other block devices, its legs.  How the legs are used is the device's
target:

  mirror   every leg holds a full copy of the data (RAID1).  The device is
           as large as its smallest leg, every write goes to all legs, and
           the device keeps working as long as one leg works.
  linear   the legs are concatenated in the order given.  The device is as
           large as all legs together; if a leg fails, the device fails.

A LEG is the path of a local block device, such as /dev/sdb or /dev/ram0,
or a remote NBD export, nbd://HOST[:PORT]/EXPORT (see dstctl create
--help).  The kernel keeps reconnecting a remote leg whose connection is
lost, and brings a mirror leg back in sync when it returns: a resync
copies what it missed, at a speed that dstctl set limits.  Writes to the
dst device go to its legs: use block devices and exports that nothing
else uses and whose contents you do not need.

The kernel can also serve a device over NBD itself (dstctl export), to
clients on other hosts: nbd-client, qemu, or another host's dst device
using it as a remote leg.

A mirror leg can be detached while the device is in use (dstctl detach),
as a live backup: it keeps the device's contents of that moment, to
mount, check or copy.  Attached again (dstctl attach), it is resynced
with only what was written meanwhile.

A mirror also grows and shrinks while in use: dstctl add gives it a new
leg, copied in full in the background, and dstctl remove-leg takes a leg
away for good.  Together they replace a failed disk.

A mirror leg can be write-mostly, as with md's --write-mostly: it gets
every write but serves reads only when no other in-sync leg can.  Mark a
remote leg over a slow link that way, mirrored with a local disk, and
reads stay local (dstctl create --write-mostly, dstctl add
--write-mostly, dstctl set).

Every command needs root (CAP_SYS_ADMIN) and the dst kernel module
(modprobe dst, or insmod dst.ko).";

const EXAMPLES: &str = "\
Examples:
  dstctl create r1 --mirror /dev/sdb /dev/sdc   two-way mirror, prints /dev/dst0
  dstctl create big --linear /dev/sdb /dev/sdc  one device spanning both disks
  dstctl create r2 --mirror /dev/sdb nbd://10.0.0.2/disk
                                                local disk mirrored to a server
  dstctl list                                   one line per device
  dstctl status r1                              r1 and its legs in detail
  dstctl --json status                          every device, as JSON
  dstctl monitor                                print changes as they happen
  dstctl export r1 --listen 0.0.0.0 --allow 10.0.0.0/8
                                                serve r1 over NBD to 10.0.0.0/8
  dstctl unexport r1                            stop serving r1
  dstctl detach r1 1 --freeze                   take leg 1 out as a clean backup
  dstctl attach r1 1                            put it back, copy what changed
  dstctl add r1 /dev/sdd                        a third leg, copied in full
  dstctl remove-leg r1 0                        remove leg 0 for good
  dstctl set r1 --resync-rate 50M               limit resyncs of r1 while in use
  dstctl set r2 --write-mostly 1                leg 1 of r2 serves reads last
  dstctl remove r1                              remove r1 (its legs are kept)";

/// The timing options in the long help of `dstctl create` and `dstctl
/// add`, with their defaults from the shared protocol definition.
fn timing_options_help() -> String {
    format!(
        "  --timeout T       a request unanswered for T fails the connection
                    (default {timeout})
  --dead-time T     how long I/O waits for a down leg (default {dead})
  --backoff-max T   longest wait between reconnection attempts
                    (default {backoff})",
        timeout = format_ms(timing::TIMEOUT_MS),
        dead = format_ms(timing::DEAD_TIME_MS),
        backoff = format_ms(timing::BACKOFF_MAX_MS),
    )
}

/// `dstctl create --help`; the timing defaults come from the shared
/// protocol definition.
fn create_long_about() -> String {
    format!(
        "\
Create a device from one or more legs and print its node (/dev/dstN).
With dst's udev rule (60-dst.rules) installed, /dev/dst/NAME links to it.

Give exactly one of --mirror and --linear, then the legs in order, at most
{MAX_LEGS}.  A LEG is either:

  a local block device, by path (e.g. /dev/sdb); the kernel checks that it
  exists and is not already in use;

  a remote NBD export: nbd://HOST[:PORT][/EXPORT][?PARAMETERS]
    HOST        a host name, an IPv4 address, or an IPv6 address in
                brackets ([fd00::2]).  dstctl resolves a name once, now;
                the kernel connects to its first address.
    PORT        default {port}
    EXPORT      the export name; none for the server's default export
    PARAMETERS  timeout=T, dead-time=T, backoff-max=T, resync=full|dirty,
                conns=N, joined by '&': settings for this leg only,
                overriding the options below (quote such a URI for the
                shell)

The kernel connects to remote legs itself and keeps reconnecting when a
connection is lost, waiting longer after each failure up to the backoff
maximum.  While a leg is down, a mirror keeps working on its other legs
and, when it is back, resyncs what it missed (resync=dirty, the default:
for servers that keep their data, e.g. a file or a disk) or all of it
(resync=full: for servers that lose their data when restarted, e.g.
nbdkit memory); I/O that can go nowhere else waits up to the dead time,
then fails.  When the server allows several connections to an export
(NBD's CAN_MULTI_CONN), the leg opens conns=N of them (1 to {conns_max},
default {conns_default}) and spreads its requests over them; they fail and
reconnect together.

Durations T are a number of seconds (30) or a number with a unit: 500ms,
30s, 2m, 1h; from {min} to {max}.  The timing options apply to every remote
leg (giving one without a remote leg is an error):

{timing_options}

A mirror keeps a dirty map per leg: one bit per region of the device, set
when a write to the region does not reach the leg (down, detached, or the
write failed), so that a resync copies only those regions back to it.
These options apply to mirrors only:

  --region-size SIZE  bytes of device per bit, a power of two from {region_min}
                      to {region_max} (default {region}).  The maps take one bit
                      per region per leg, allocated at creation: 64 KiB
                      regions cost 2 MiB of memory per TiB of device per
                      leg (4 KiB regions 32 MiB, 1 MiB regions 128 KiB).
                      Smaller regions copy less after an outage, bigger
                      ones cost less memory.
  --resync-rate RATE  the resync speed limit while the device has other
                      I/O (default {rate}).  When the device is idle, the
                      resync runs at full speed, up to --resync-max.  Like
                      md's speed_limit_min and speed_limit_max.
  --resync-max RATE   the resync speed limit at all times (default {rate_max})
  --sync              copy the first leg to the others, in the background
                      and under the limits above, as md does when it
                      creates an array.  Without it, dst writes nothing to
                      the legs and assumes them identical (md's
                      --assume-clean): right for blank legs, or when the
                      whole device is written first.  The device is usable
                      at once; reads come from the first leg until the
                      others are in sync.  dst keeps no metadata on the
                      legs, so after a crash, re-create a mirror with
                      --sync, first naming a leg that was in sync.
  --write-mostly LEG  the leg is write-mostly, as with md's
                      --write-mostly: it gets every write but serves reads
                      only when no other in-sync leg can.  For a remote leg
                      over a slow link mirrored with a local disk: reads
                      stay local.  LEG is one of the legs given: its index
                      from 0, or the leg as typed.  Repeat for more legs;
                      dstctl set changes it later.

SIZE is a number of bytes with an optional unit K, M or G (1024-based):
4096, 64K, 1M.  RATE is bytes per second, written the same way with an
optional /s (50M, 500K/s), rounded down to whole KiB/s; 0 or none means
no limit.  dstctl set changes the limits later.",
        port = DEFAULT_PORT,
        min = format_ms(timing::MIN_MS),
        max = format_ms(timing::MAX_MS),
        timing_options = timing_options_help(),
        region_min = exact_size(resync::REGION_MIN.into()),
        region_max = exact_size(resync::REGION_MAX.into()),
        region = exact_size(resync::REGION_DEFAULT.into()),
        rate = format_rate_kib(resync::RATE_DEFAULT_KIB),
        rate_max = format_rate_kib(0),
        conns_max = conns::MAX,
        conns_default = conns::DEFAULT,
    )
}

const CREATE_EXAMPLES: &str = "\
Examples:
  dstctl create r1 --mirror /dev/sdb /dev/sdc
  dstctl create big --linear /dev/sdb /dev/sdc /dev/sdd
  dstctl --json create r1 --mirror /dev/ram0 /dev/ram1
  dstctl create r2 --mirror /dev/sdb nbd://10.0.0.2/disk
  dstctl create r3 --mirror nbd://store1:10809/vol 'nbd://[fd00::2]/vol' --timeout 10s
  dstctl create r4 --mirror /dev/sdb 'nbd://store1/vol?timeout=5s&dead-time=2m'
  dstctl create r5 --mirror /dev/sdb /dev/sdc --region-size 256K --resync-rate 100M
  dstctl create r6 --mirror --sync /dev/sdb /dev/sdc
  dstctl create r7 --mirror /dev/sdb nbd://10.0.0.2/disk --write-mostly 1";

/// `dstctl set --help`; the default comes from the shared protocol
/// definition.
fn set_long_about() -> String {
    format!(
        "\
Change a mirror's resync speed limits, or whether one of its legs is
write-mostly, while it is in use; what is not given stays as it is.  The
new limits apply at once, to a running resync too.  Prints nothing; with
--json, the device as dstctl status --json shows it.

  --resync-rate RATE  the resync speed limit while the device has other
                      I/O ({rate} unless dstctl create said otherwise).
                      When the device is idle, the resync runs at full
                      speed, up to --resync-max.
  --resync-max RATE   the resync speed limit at all times (none unless
                      dstctl create said otherwise)
  --write-mostly LEG  make the leg write-mostly, as with md's
                      --write-mostly: it gets every write but serves reads
                      only when no other in-sync leg can.  For a remote leg
                      over a slow link mirrored with a local disk: reads
                      stay local.
  --no-write-mostly LEG
                      make the leg a normal one again, which serves its
                      share of the reads.

RATE is bytes per second: a number with an optional unit K, M or G
(1024-based) and an optional /s: 50M, 500K/s, 1G; rounded down to whole
KiB/s; 0 or none means no limit.  Lower the limits to leave more of the
legs' bandwidth to the device's users, raise them to have the mirror in
sync again sooner.  dstctl status shows the limits, and a running
resync's speed and time left.  The region size is set once, by dstctl
create --region-size.

One leg per command: give --write-mostly or --no-write-mostly, not both;
either may come with the limits.  LEG is as for dstctl detach: the leg's
index as dstctl status shows it, the leg as given to dstctl create or
add, or its kernel disk (sdb, /dev/sdb).  dstctl status shows which legs
are write-mostly.",
        rate = format_rate_kib(resync::RATE_DEFAULT_KIB),
    )
}

const SET_EXAMPLES: &str = "\
Examples:
  dstctl set r1 --resync-rate 50M     up to 50 MiB/s while r1 is in use
  dstctl set r1 --resync-max 200M/s   never faster than 200 MiB/s
  dstctl set r1 --resync-rate 0       as fast while r1 is in use as when idle
  dstctl set r1 --resync-max none     no limit when r1 is idle
  dstctl set r2 --write-mostly 1      leg 1 serves reads only if need be
  dstctl set r2 --no-write-mostly nbd://10.0.0.2/disk
                                      that leg serves reads again
  dstctl status r1                    the limits, a resync's speed and ETA";

/// `dstctl export --help`; limits and the port come from the shared
/// protocol definition.
fn export_long_about() -> String {
    format!(
        "\
Export a device over NBD (the network block device protocol): the kernel
listens on a TCP address and serves the device to the NBD clients that
connect, such as nbd-client, qemu, nbdcopy, or another host's dst device
using it as a remote leg (nbd://HOST[:PORT]/EXPORT), until dstctl
unexport.  Prints nothing; with --json, the device as dstctl status --json
shows it.

  --listen ADDR[:PORT]  where to listen (required):
                          an IPv4 address: 10.0.0.1, 0.0.0.0 for every one;
                          an IPv6 address in brackets: [fd00::1], [::] for
                          every one;
                          a host name, which dstctl resolves once, now (the
                          kernel listens on its first address).
                        PORT is {port} (the NBD port) when not given.
  --name EXPORT         the export name clients ask for, at most {name_max}
                        bytes (default: the device name; \"\" is the export
                        of clients that ask for none)
  --read-only           clients may read but not write
  --allow CIDR          a network whose clients may connect: IP/PREFIX
                        (10.0.0.0/8, fd00::/64) or a single IP address;
                        repeat for more, at most {max_allow}

Without --allow, only loopback clients (127.0.0.0/8, ::1), that is on this
host, may connect, whatever address the export listens on: give --allow for
every network that needs the export.  Clients from elsewhere are refused
and counted.  NBD has no encryption or authentication here: export only to
networks you trust.  Clients use the device itself: as with any shared
block device, do not mount it on this host while a client writes to it.

dstctl status shows a device's exports, their clients and counters.",
        port = DEFAULT_PORT,
        name_max = EXPORT_NAME_MAX,
        max_allow = MAX_ALLOW,
    )
}

const EXPORT_EXAMPLES: &str = "\
Examples:
  dstctl export r1 --listen 127.0.0.1
                    export r1 on 127.0.0.1:10809, for this host only
  dstctl export r1 --listen 10.0.0.1 --allow 10.0.0.0/8 --allow 192.168.1.20
                    for a network and one more host
  dstctl export r1 --listen '[::]:10900' --name backup --read-only
                    read-only, as export backup, on every address, port 10900
On a client (another host):
  dstctl create m1 --mirror /dev/sdb nbd://10.0.0.1/r1
  nbd-client -N r1 10.0.0.1 /dev/nbd0";

const UNEXPORT_LONG_ABOUT: &str = "\
Stop exporting a device over NBD: every export of it, or with --name only
that one.  Connected clients are disconnected; the device itself is not
changed.";

const STATUS_LONG_ABOUT: &str = "\
Show devices in detail: per device its node, target, size, state and
openers, then a table of its legs with their I/O counters.

Device states: ok (every leg in sync), degraded (working, but some leg is
not), failed (no I/O possible).  Leg states: in-sync (up to date, receives
every write), faulty (failed a write, or the rewrite of what it failed to
read; no longer used), connecting (a remote leg not connected yet), down
(a remote leg whose connection is lost; the kernel reconnects), resyncing
(being brought back in sync, or having what it failed to read rewritten;
shown with its progress), detached (taken out by dstctl detach; see dstctl
attach).  A write-mostly leg (see dstctl set) is marked so after its
state: in-sync, write-mostly.
A leg keeps its number (LEG) as long as it is part of the device: legs
removed by dstctl remove-leg leave gaps, and legs added by dstctl add
take the next number.
A leg that resyncs have copied data to shows how much, in all since the
device was created, on a line of its own.

A mirror shows its resync settings on a line under the device's: the
region size and the speed limits (see dstctl create --help and dstctl
set).  A running resync shows on a line under its leg how much it has
copied and, once measured, its speed over the last seconds and the time
it needs at that speed to finish (ETA); on a terminal, as a progress bar.

Remote legs add a CONN column (connections made so far) and a line with
the server's address, export and timing; a leg's last problem, if any, is
shown on a line of its own.

A device that is exported over NBD (dstctl export) then has a table of its
exports: name, listening address, mode (rw, or ro for read-only), clients
connected now, requests served, connections refused, and the networks
allowed to connect (loopback only, when none was given); each connected
client's address is shown below its export.";

const DETACH_LONG_ABOUT: &str = "\
Detach a leg from a mirror while the device stays in use, as a live
backup: the device goes on with its other legs, degraded, and the
detached leg keeps the device's contents as of the detach.  Prints
nothing; with --json, the device as dstctl status --json shows it.

dst waits for the writes in flight to the leg to complete, flushes the
leg's write cache, then stops sending it I/O.  The leg then holds the
device as it was at that moment: crash-consistent, as after a power cut,
which a journaling filesystem recovers from when mounted.  With --freeze,
the filesystem mounted on the device is frozen (FIFREEZE) just before the
detach and thawed (FITHAW) just after it, even if the detach failed: the
copy is then a clean filesystem.  Writers to it wait meanwhile, usually
for well under a second.  --freeze needs the device to be mounted.

A detached local leg is released, so that it can be mounted or copied
(dd, a backup tool); mount it read-only, and unmount it before attaching
it again.  Without --freeze, even a read-only mount may replay the
filesystem's journal onto the copy (use -o ro,noload for ext4, -o
ro,norecovery for xfs, or attach --full later).  A detached remote leg is
disconnected, so that its server may be used on its own.

Meanwhile the device remembers which regions are written (64 KiB regions
unless dstctl create --region-size said otherwise), so that dstctl attach
copies only those back.  The last in-sync leg of a mirror cannot be
detached, nor a leg of a linear device.

LEG is the leg's index as dstctl status shows it (0, 1, ...), the leg as
given to dstctl create (/dev/sdb, nbd://10.0.0.2/disk), or its kernel
disk (sdb, /dev/sdb).";

const DETACH_EXAMPLES: &str = "\
Examples:
  dstctl detach r1 2                  detach leg 2 of r1
  dstctl detach r1 /dev/sdc --freeze  freeze the filesystem on r1 around it
  dstctl detach r2 nbd://10.0.0.2/disk
After a detach with --freeze, for example:
  e2fsck -fn /dev/sdc                 check the copy without changing it
  mount -o ro /dev/sdc /mnt/backup    read it; umount before attaching";

const ATTACH_LONG_ABOUT: &str = "\
Attach a leg that dstctl detach took out: dst claims it again and resyncs
it from the other legs while the device stays in use; the leg serves
reads again once it is in sync.  Prints nothing; with --json, the device
as dstctl status --json shows it.

By default only the regions written to the device while the leg was
detached are copied.  That is only right if the detached copy itself
was NOT written meanwhile.  If it was (mounted read-write, fsck'd with
repairs, a journal replayed when mounting), give --full: the whole
device is copied.

A local leg must not be in use (mounted, or open exclusively) to be
attached: unmount it first.  A remote leg is reconnected, and resynced
once connected.  dstctl status and dstctl monitor show the progress;
dstctl set changes the resync's speed limits.

LEG is as for dstctl detach: the leg's index (0, 1, ...), the leg as
given to dstctl create, or its kernel disk.";

const ATTACH_EXAMPLES: &str = "\
Examples:
  dstctl attach r1 2                  resync what changed since the detach
  dstctl attach r1 /dev/sdc --full    the copy was written: resync all of it
  dstctl status r1                    the progress";

/// `dstctl add --help`; the limits and timing defaults come from the
/// shared protocol definition.
fn add_long_about() -> String {
    format!(
        "\
Add a leg to a mirror while the device stays in use.  Prints nothing;
with --json, the device as dstctl status --json shows it.

LEG is a local block device (/dev/sdd), which the kernel claims
exclusively, or a remote NBD export, to which it connects at once (the
server must be reachable, as for dstctl create):
nbd://HOST[:PORT][/EXPORT][?PARAMETERS], written as one leg of dstctl
create, with the same parameters (timeout=T, dead-time=T, backoff-max=T,
resync=full|dirty; see dstctl create --help).  dstctl resolves a host
name once, now.

Mirrors only: a linear device cannot grow.  The leg must be at least as
large as the device (the device keeps its size), with a logical block
size no larger than the device's.  It must not be a leg of the device
already, nor in use elsewhere.

The new leg takes the next leg number, as dstctl status shows it, and is
copied in full from the in-sync legs in the background: it is resyncing
(a remote leg down while its connection is lost), gets every write
meanwhile and serves reads once in sync.  dstctl status and dstctl
monitor show the progress; the copy is held to the mirror's resync
settings (see dstctl set).  A device can have had at most {MAX_LEGS} legs in
all: the numbers of removed legs are not reused.

With --write-mostly, the new leg is write-mostly, as with md's
--write-mostly: it gets every write but serves reads only when no other
in-sync leg can; for a remote leg over a slow link mirrored with a local
disk.  dstctl set changes it later.

The timing options apply to a remote leg, as for dstctl create (giving
one with a local leg is an error); the URI's parameters override them:

{timing_options}

To replace a failed leg: add the new one, wait until it is in-sync, then
dstctl remove-leg the failed one.",
        timing_options = timing_options_help(),
    )
}

const ADD_EXAMPLES: &str = "\
Examples:
  dstctl add r1 /dev/sdd              a local disk as a new leg of r1
  dstctl add r1 nbd://10.0.0.2/disk   a remote leg
  dstctl add r1 'nbd://store1/vol?timeout=10s' --dead-time 2m
  dstctl add r1 nbd://10.0.0.2/disk --write-mostly
  dstctl monitor r1                   the copy's progress, until in-sync
  dstctl remove-leg r1 0              then, to replace leg 0, remove it";

/// `dstctl remove-leg --help`; the leg limit comes from the shared
/// protocol definition.
fn remove_leg_long_about() -> String {
    format!(
        "\
Remove a leg from a mirror for good, while the device stays in use.
Prints nothing; with --json, the device as dstctl status --json shows it.

Mirrors only, and the last in-sync leg cannot be removed.  dst waits for
the I/O in flight to the leg to complete (at most 60 s, as for dstctl
detach), then sends it no more I/O: a local leg is released, a remote leg
disconnected.  The leg's contents are left as they are.

The other legs keep their numbers: after removing leg 0 of a three-way
mirror, its legs are 1 and 2.  Numbers are not reused: a device can have
had at most {MAX_LEGS} legs in all (create it again to start over).

Unlike dstctl detach, the leg is gone for good: it cannot be attached
again, and the device no longer remembers what the leg missed (dstctl
add would copy it in full).  To take a backup, use dstctl detach.

LEG is as for dstctl detach: the leg's index as dstctl status shows it,
the leg as given to dstctl create or add, or its kernel disk (sdb,
/dev/sdb)."
    )
}

const REMOVE_LEG_EXAMPLES: &str = "\
Examples:
  dstctl remove-leg r1 2              remove leg 2 of r1
  dstctl remove-leg r1 /dev/sdb       the same, by its device
  dstctl remove-leg r2 nbd://10.0.0.2/disk
Replacing a failed disk, leg 0:
  dstctl add r1 /dev/sdd              copied in full from the other legs
  dstctl status r1                    wait until it is in-sync
  dstctl remove-leg r1 0";

const MONITOR_LONG_ABOUT: &str = "\
Print changes to devices as they happen, one line each, until interrupted.

First a line per existing device (exists) and a line saying the monitor is
ready, then one line per change: devices created and removed, legs added
and removed, device and leg state changes (with the leg's problem, when
the kernel reports one), reconnections, legs made write-mostly or no
longer, and resyncs starting, progressing
(at most every 5 seconds, with the speed and the time left once known)
and finishing.  Every line starts with the time, in UTC, and is flushed
at once.  With --json, each line is one JSON object instead.  With NAME, only
that device is watched (it need not exist yet).  Stops, with exit code 0,
on SIGINT or SIGTERM.

For example:
  2026-05-04T10:00:00.000Z ready, watching 1 device
  2026-05-04T10:00:05.120Z r1: leg 1 nbd://10.0.0.2/disk: in-sync -> down (connection refused)
  2026-05-04T10:00:05.120Z r1: ok -> degraded
  2026-05-04T10:00:20.310Z r1: leg 1 nbd://10.0.0.2/disk: down -> resyncing
  2026-05-04T10:00:20.310Z r1: leg 1 nbd://10.0.0.2/disk: resync started, 64.0M to copy
  2026-05-04T10:00:25.400Z r1: leg 1 nbd://10.0.0.2/disk: resync 42% (27.0M of 64.0M), 5.4M/s, ETA 0:07";

/// Command line of `dstctl`.
#[derive(Debug, Parser)]
#[command(
    name = "dstctl",
    version,
    about = ABOUT,
    long_about = LONG_ABOUT,
    after_help = EXAMPLES
)]
pub struct Cli {
    /// Print JSON instead of tables (for scripts)
    #[arg(long, global = true)]
    pub json: bool,

    #[command(subcommand)]
    pub command: Command,
}

/// What to do.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a device and print its node, e.g. /dev/dst0
    #[command(long_about = create_long_about(), after_help = CREATE_EXAMPLES)]
    Create(CreateArgs),

    /// Remove a device (refused while it is open or mounted)
    #[command(
        long_about = "Remove a device.  Its legs are released and keep their \
                      data.  Refused (EBUSY) while the device is open or mounted.",
        after_help = "Example:\n  dstctl remove r1"
    )]
    Remove {
        /// Name of the device
        name: String,
    },

    /// List devices: NAME DISK TARGET SIZE STATE LEGS
    #[command(
        long_about = "List devices, one per line: name, kernel disk (/dev/<DISK>), \
                      target, size, state and legs (a leg that is not in sync is \
                      followed by its state).",
        after_help = "Examples:\n  dstctl list\n  dstctl list --json"
    )]
    List,

    /// Show devices and their legs in detail (all devices if no NAME)
    #[command(
        long_about = STATUS_LONG_ABOUT,
        after_help = "Examples:\n  dstctl status\n  dstctl status r1 --json"
    )]
    Status {
        /// Name of the device (default: every device)
        name: Option<String>,
    },

    /// Export a device over NBD, for clients on other hosts
    #[command(long_about = export_long_about(), after_help = EXPORT_EXAMPLES)]
    Export(ExportArgs),

    /// Stop exporting a device over NBD (every export, or one)
    #[command(
        long_about = UNEXPORT_LONG_ABOUT,
        after_help = "Examples:\n  dstctl unexport r1\n  dstctl unexport r1 --name backup"
    )]
    Unexport(UnexportArgs),

    /// Detach a mirror leg, as a live backup of the device
    #[command(long_about = DETACH_LONG_ABOUT, after_help = DETACH_EXAMPLES)]
    Detach(DetachArgs),

    /// Attach a detached leg again and resync what changed
    #[command(long_about = ATTACH_LONG_ABOUT, after_help = ATTACH_EXAMPLES)]
    Attach(AttachArgs),

    /// Add a leg to a mirror, copied in full in the background
    #[command(long_about = add_long_about(), after_help = ADD_EXAMPLES)]
    Add(AddArgs),

    /// Remove a leg from a mirror for good
    #[command(long_about = remove_leg_long_about(), after_help = REMOVE_LEG_EXAMPLES)]
    RemoveLeg(RemoveLegArgs),

    /// Change a mirror's resync speed limits or write-mostly legs
    #[command(long_about = set_long_about(), after_help = SET_EXAMPLES)]
    Set(SetArgs),

    /// Print changes to devices as they happen, until interrupted
    #[command(
        long_about = MONITOR_LONG_ABOUT,
        after_help = "Examples:\n  dstctl monitor\n  dstctl monitor r1 --json >> r1.events"
    )]
    Monitor {
        /// Name of the device (default: every device)
        name: Option<String>,
    },
}

/// Arguments of `dstctl create`.  The short help of the mirror options
/// gives their defaults from the shared protocol definition.
#[derive(Debug, Args)]
#[command(
    group(ArgGroup::new("target").required(true).args(["mirror", "linear"])),
    mut_arg("resync_rate", |a| a.help(format!(
        "Mirror: resync speed limit while the device has other I/O (default {}; 0: none)",
        format_rate_kib(resync::RATE_DEFAULT_KIB)
    ))),
    mut_arg("resync_max", |a| {
        a.help("Mirror: resync speed limit at all times (default: none)")
    }),
)]
pub struct CreateArgs {
    /// Name of the new device: up to 31 letters, digits, '_', '-' or '.'
    pub name: String,

    /// Every leg holds a full copy of the data (RAID1)
    #[arg(long)]
    pub mirror: bool,

    /// The legs are concatenated in order
    #[arg(long)]
    pub linear: bool,

    /// Legs, in order: block devices (/dev/sdb) or NBD exports
    /// (nbd://HOST[:PORT]/EXPORT)
    #[arg(value_name = "LEG", required = true)]
    pub legs: Vec<String>,

    #[command(flatten)]
    pub timing_args: TimingArgs,

    /// Mirror: bytes of device per dirty-map bit
    #[arg(long, value_name = "SIZE", help = region_size_help())]
    pub region_size: Option<String>,

    #[command(flatten)]
    pub limit_args: LimitArgs,

    /// Mirror: copy the first leg to the others in the background (an
    /// initial sync), rather than assume the legs identical
    #[arg(long)]
    pub sync: bool,

    /// Mirror: LEG (its index from 0, or the leg as typed) is
    /// write-mostly: it serves reads only when no other in-sync leg can;
    /// repeatable
    #[arg(long, value_name = "LEG")]
    pub write_mostly: Vec<String>,
}

/// The short help of `--region-size`, with the bounds and the default from
/// the shared protocol definition.
fn region_size_help() -> String {
    format!(
        "Mirror: bytes of device per dirty-map bit, a power of two from {} to {} (default {})",
        exact_size(resync::REGION_MIN.into()),
        exact_size(resync::REGION_MAX.into()),
        exact_size(resync::REGION_DEFAULT.into())
    )
}

/// An option's value, if given, checked by `parse` (which names the
/// option `name` in errors).
fn parse_opt<T>(
    (name, value): (&str, &Option<String>),
    parse: impl Fn(&str, &str) -> Result<T, String>,
) -> Result<Option<T>, String> {
    value.as_deref().map(|v| parse(name, v)).transpose()
}

/// The name of the first of `options` given.
fn first_given<'a>(
    options: impl IntoIterator<Item = (&'a str, &'a Option<String>)>,
) -> Option<&'a str> {
    options
        .into_iter()
        .find_map(|(name, value)| value.as_ref().map(|_| name))
}

/// The timing options of remote legs, shared by `dstctl create` and
/// `dstctl add`.
#[derive(Debug, Args)]
pub struct TimingArgs {
    /// Remote legs: fail a connection whose request is unanswered for T
    #[arg(long, value_name = "T")]
    pub timeout: Option<String>,

    /// Remote legs: how long I/O waits for a down leg before failing
    #[arg(long, value_name = "T")]
    pub dead_time: Option<String>,

    /// Remote legs: longest wait between reconnection attempts
    #[arg(long, value_name = "T")]
    pub backoff_max: Option<String>,
}

impl TimingArgs {
    /// The options, by name.
    fn options(&self) -> [(&'static str, &Option<String>); 3] {
        [
            ("--timeout", &self.timeout),
            ("--dead-time", &self.dead_time),
            ("--backoff-max", &self.backoff_max),
        ]
    }

    /// The options given, checked.
    pub fn timing(&self) -> Result<Timing, String> {
        let [timeout, dead_time, backoff_max] = self.options().map(|o| parse_opt(o, parse_ms));
        Ok(Timing {
            timeout_ms: timeout?,
            dead_time_ms: dead_time?,
            backoff_max_ms: backoff_max?,
        })
    }

    /// Checks legs as typed (no name resolution yet), with these options
    /// as the timing of the remote ones; refuses the options when no leg
    /// is remote.
    pub fn plan(&self, legs: &[String]) -> Result<Vec<LegPlan>, String> {
        let timing = self.timing()?;
        let mut plan = Vec::with_capacity(legs.len());
        for spec in legs {
            if spec.is_empty() {
                return Err("empty leg".into());
            }
            if spec.len() > LEG_SPEC_MAX {
                return Err(format!("leg longer than {LEG_SPEC_MAX} bytes"));
            }
            plan.push(LegPlan::parse(spec, timing)?);
        }
        if !timing.is_empty() && plan.iter().all(|l| l.remote.is_none()) {
            let given = first_given(self.options()).unwrap_or("timing options");
            return Err(format!(
                "{given} applies to remote legs (nbd://...), and none is given"
            ));
        }
        Ok(plan)
    }
}

/// Arguments of `dstctl add`.
#[derive(Debug, Args)]
pub struct AddArgs {
    /// Name of the mirror
    #[arg(value_name = "DEVICE")]
    pub device: String,

    /// The new leg: a block device (/dev/sdd) or an NBD export
    /// (nbd://HOST[:PORT]/EXPORT), as for dstctl create
    #[arg(value_name = "LEG")]
    pub leg: String,

    #[command(flatten)]
    pub timing_args: TimingArgs,

    /// The new leg is write-mostly: it serves reads only when no other
    /// in-sync leg can
    #[arg(long)]
    pub write_mostly: bool,
}

impl AddArgs {
    /// Checks the leg as typed (no name resolution yet), as the one leg of
    /// a `dstctl create`.
    pub fn plan(&self) -> Result<Vec<LegPlan>, String> {
        let mut plan = self.timing_args.plan(std::slice::from_ref(&self.leg))?;
        for l in &mut plan {
            l.write_mostly = self.write_mostly;
        }
        Ok(plan)
    }
}

/// Arguments of `dstctl export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Name of the device to export
    #[arg(value_name = "DEVICE")]
    pub device: String,

    /// Address to listen on: IP, [IPv6] or HOST, then :PORT if not 10809
    #[arg(long, value_name = "ADDR[:PORT]")]
    pub listen: String,

    /// Export name clients ask for (default: the device name)
    #[arg(long, value_name = "EXPORT")]
    pub name: Option<String>,

    /// Clients may read but not write
    #[arg(long)]
    pub read_only: bool,

    /// A network allowed to connect, IP/PREFIX or IP; repeatable
    /// (default: loopback only)
    #[arg(long, value_name = "CIDR")]
    pub allow: Vec<String>,
}

impl ExportArgs {
    /// Checks the options as typed (no name resolution yet).
    pub fn plan(&self) -> Result<ExportPlan, String> {
        ExportPlan::parse(
            &self.listen,
            self.name.as_deref(),
            self.read_only,
            &self.allow,
        )
    }
}

/// Arguments of `dstctl unexport`.
#[derive(Debug, Args)]
pub struct UnexportArgs {
    /// Name of the exported device
    #[arg(value_name = "DEVICE")]
    pub device: String,

    /// Stop only this export (default: every export of the device)
    #[arg(long, value_name = "EXPORT")]
    pub name: Option<String>,
}

/// Arguments of `dstctl detach`.
#[derive(Debug, Args)]
pub struct DetachArgs {
    /// Name of the mirror
    #[arg(value_name = "DEVICE")]
    pub device: String,

    /// The leg: its index (as dstctl status shows it), the leg as given
    /// to dstctl create, or its kernel disk (sdb, /dev/sdb)
    #[arg(value_name = "LEG")]
    pub leg: String,

    /// Freeze the filesystem mounted on the device around the detach, for
    /// a clean copy
    #[arg(long)]
    pub freeze: bool,
}

/// Arguments of `dstctl attach`.
#[derive(Debug, Args)]
pub struct AttachArgs {
    /// Name of the mirror
    #[arg(value_name = "DEVICE")]
    pub device: String,

    /// The detached leg: its index, the leg as given to dstctl create, or
    /// its kernel disk
    #[arg(value_name = "LEG")]
    pub leg: String,

    /// Copy the whole device to the leg, not only what was written while
    /// it was detached (needed if the detached copy was written)
    #[arg(long)]
    pub full: bool,
}

/// Arguments of `dstctl remove-leg`.
#[derive(Debug, Args)]
pub struct RemoveLegArgs {
    /// Name of the mirror
    #[arg(value_name = "DEVICE")]
    pub device: String,

    /// The leg: its index (as dstctl status shows it), the leg as given
    /// to dstctl create or add, or its kernel disk (sdb, /dev/sdb)
    #[arg(value_name = "LEG")]
    pub leg: String,
}

/// Arguments of `dstctl set`: at least one setting.
#[derive(Debug, Args)]
#[command(group(
    ArgGroup::new("settings")
        .required(true)
        .multiple(true)
        .args(["resync_rate", "resync_max", "write_mostly", "no_write_mostly"])
))]
pub struct SetArgs {
    /// Name of the mirror
    #[arg(value_name = "DEVICE")]
    pub device: String,

    #[command(flatten)]
    pub limit_args: LimitArgs,

    /// Make LEG write-mostly: it serves reads only when no other in-sync
    /// leg can
    #[arg(long, value_name = "LEG", conflicts_with = "no_write_mostly")]
    pub write_mostly: Option<String>,

    /// Make LEG a normal leg again, which serves reads
    #[arg(long, value_name = "LEG")]
    pub no_write_mostly: Option<String>,
}

impl SetArgs {
    /// The write-mostly options, by name, with what each makes the leg.
    fn write_mostly_options(&self) -> [(&'static str, &Option<String>, bool); 2] {
        [
            ("--write-mostly", &self.write_mostly, true),
            ("--no-write-mostly", &self.no_write_mostly, false),
        ]
    }

    /// The leg whose write-mostly setting changes, as typed, and whether
    /// it becomes write-mostly; `None` if neither option is given.
    pub fn write_mostly_change(&self) -> Option<(&str, bool)> {
        self.write_mostly_options()
            .into_iter()
            .find_map(|(_, leg, on)| leg.as_deref().map(|leg| (leg, on)))
    }

    /// Checks the write-mostly option given, if any: its LEG is resolved
    /// later, against the device.
    fn check_write_mostly(&self) -> Result<(), String> {
        for (name, leg, _) in self.write_mostly_options() {
            if leg.as_deref() == Some("") {
                return Err(format!("{name}: LEG is empty"));
            }
        }
        Ok(())
    }
}

/// The resync speed limits of a mirror, shared by `dstctl create` and
/// `dstctl set`.
#[derive(Debug, Args)]
pub struct LimitArgs {
    /// Resync speed limit while the device has other I/O (0: none)
    #[arg(long, value_name = "RATE")]
    pub resync_rate: Option<String>,

    /// Resync speed limit at all times (0: none)
    #[arg(long, value_name = "RATE")]
    pub resync_max: Option<String>,
}

impl LimitArgs {
    /// The options, by name.
    fn options(&self) -> [(&'static str, &Option<String>); 2] {
        [
            ("--resync-rate", &self.resync_rate),
            ("--resync-max", &self.resync_max),
        ]
    }

    /// The limits given, checked, in KiB/s.
    pub fn limits(&self) -> Result<ResyncLimits, String> {
        let [rate, max] = self.options().map(|o| parse_opt(o, parse_rate_kib));
        Ok(ResyncLimits {
            rate_kib: rate?,
            max_kib: max?,
        })
    }
}

impl CreateArgs {
    /// The resync settings given on the command line; mirrors only.
    pub fn settings(&self) -> Result<ResyncSettings, String> {
        let region = ("--region-size", &self.region_size);
        if !self.mirror {
            let options = [region].into_iter().chain(self.limit_args.options());
            if let Some(name) = first_given(options) {
                return Err(format!(
                    "{name} applies to mirrors (--mirror), not to --linear"
                ));
            }
            if self.sync {
                return Err("--sync applies to mirrors (--mirror), not to --linear".into());
            }
        }
        Ok(ResyncSettings {
            region_size: parse_opt(region, parse_region)?,
            limits: self.limit_args.limits()?,
            sync: self.sync,
        })
    }

    /// The target chosen by the flags.
    pub fn target(&self) -> Target {
        if self.mirror {
            Target::Mirror
        } else {
            Target::Linear
        }
    }

    /// Checks the legs as typed (no name resolution yet).
    pub fn plan(&self) -> Result<Vec<LegPlan>, String> {
        if self.legs.is_empty() {
            return Err("no legs given".into());
        }
        if self.legs.len() > MAX_LEGS {
            return Err(format!(
                "{} legs given, a device has at most {MAX_LEGS}",
                self.legs.len()
            ));
        }
        let mut plan = self.timing_args.plan(&self.legs)?;
        for i in self.write_mostly_legs()? {
            plan[i].write_mostly = true;
        }
        Ok(plan)
    }

    /// The positions among the legs of those `--write-mostly` names;
    /// mirrors only.
    fn write_mostly_legs(&self) -> Result<Vec<usize>, String> {
        if !self.mirror && !self.write_mostly.is_empty() {
            return Err("--write-mostly applies to mirrors (--mirror), not to --linear".into());
        }
        self.write_mostly
            .iter()
            .map(|wanted| {
                if wanted.is_empty() {
                    return Err("--write-mostly: LEG is empty".to_owned());
                }
                given_leg(&self.legs, wanted).ok_or_else(|| {
                    format!(
                        "--write-mostly {}: not one of the legs given",
                        one_line(wanted)
                    )
                })
            })
            .collect()
    }
}

/// The position of `wanted` among `legs`: an index from 0 (digits), or
/// else a leg exactly as typed.
fn given_leg(legs: &[String], wanted: &str) -> Option<usize> {
    if wanted.bytes().all(|b| b.is_ascii_digit()) {
        return wanted.parse().ok().filter(|&i| i < legs.len());
    }
    legs.iter().position(|l| l == wanted)
}

impl Command {
    /// Names the command for error messages: `create r1`, `list`.
    pub fn context(&self) -> String {
        let (verb, name) = match self {
            Command::Create(a) => ("create", Some(&a.name)),
            Command::Remove { name } => ("remove", Some(name)),
            Command::Export(a) => ("export", Some(&a.device)),
            Command::Unexport(a) => ("unexport", Some(&a.device)),
            Command::Detach(a) => ("detach", Some(&a.device)),
            Command::Attach(a) => ("attach", Some(&a.device)),
            Command::Add(a) => ("add", Some(&a.device)),
            Command::RemoveLeg(a) => ("remove-leg", Some(&a.device)),
            Command::Set(a) => ("set", Some(&a.device)),
            Command::List => ("list", None),
            Command::Status { name } => ("status", name.as_ref()),
            Command::Monitor { name } => ("monitor", name.as_ref()),
        };
        match name {
            Some(n) => format!("{verb} {}", one_line(n)),
            None => verb.to_owned(),
        }
    }

    /// Checks what the kernel would refuse anyway, to answer with a usage
    /// error.  Leg paths are not checked here: whether they exist, or are
    /// given twice (or are a leg of the device already), is for the kernel
    /// to say.  Remote legs' URIs, the
    /// timing and resync options are checked, as are an export's options,
    /// but no name is resolved.  Returns what the options ask for.
    pub fn validate(&self) -> Result<Checked, String> {
        let name = match self {
            Command::Create(a) => Some(&a.name),
            Command::Remove { name } => Some(name),
            Command::Export(a) => Some(&a.device),
            Command::Unexport(a) => Some(&a.device),
            Command::Detach(a) => Some(&a.device),
            Command::Attach(a) => Some(&a.device),
            Command::Add(a) => Some(&a.device),
            Command::RemoveLeg(a) => Some(&a.device),
            Command::Set(a) => Some(&a.device),
            Command::List => None,
            Command::Status { name } | Command::Monitor { name } => name.as_ref(),
        };
        if let Some(name) = name {
            check_name(name)?;
        }
        let mut checked = Checked::default();
        match self {
            Command::Create(a) => {
                checked.legs = a.plan()?;
                checked.settings = a.settings()?;
            }
            Command::Add(a) => {
                checked.legs = a.plan()?;
            }
            Command::Set(a) => {
                checked.settings.limits = a.limit_args.limits()?;
                a.check_write_mostly()?;
            }
            Command::Export(a) => {
                checked.export = Some(a.plan()?);
            }
            Command::Unexport(a) => {
                if let Some(name) = &a.name {
                    check_export_name(name)?;
                }
            }
            Command::Detach(DetachArgs { leg, .. })
            | Command::Attach(AttachArgs { leg, .. })
            | Command::RemoveLeg(RemoveLegArgs { leg, .. })
                if leg.is_empty() =>
            {
                return Err("LEG is empty".into());
            }
            _ => {}
        }
        Ok(checked)
    }
}

/// What a command's options ask for, checked by [`Command::validate`]
/// (no name resolved yet); empty for the commands without such options.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Checked {
    /// `create` and `add`: the legs, in order.
    pub legs: Vec<LegPlan>,
    /// `create`: the resync settings; `set`: the speed limits.
    pub settings: ResyncSettings,
    /// `export`: the export.
    pub export: Option<ExportPlan>,
}

/// Escapes control characters so that a message stays on one line.
pub fn one_line(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::error::ErrorKind;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("dstctl").chain(args.iter().copied()))
    }

    /// The usage error of a command line that parses, if any.
    fn check(args: &[&str]) -> Result<(), String> {
        parse(args).unwrap().command.validate().map(drop)
    }

    fn create(args: &[&str]) -> CreateArgs {
        match parse(args).unwrap().command {
            Command::Create(a) => a,
            c => panic!("parsed as {c:?}"),
        }
    }

    #[test]
    fn clap_definition_is_valid() {
        Cli::command().debug_assert();
    }

    #[test]
    fn create_mirror_and_linear() {
        let a = create(&["create", "r1", "--mirror", "/dev/ram0", "/dev/ram1"]);
        assert_eq!(a.name, "r1");
        assert_eq!(a.target(), Target::Mirror);
        assert_eq!(a.legs, ["/dev/ram0", "/dev/ram1"]);

        let a = create(&["create", "--linear", "big", "/dev/ram1", "/dev/ram0"]);
        assert_eq!(a.target(), Target::Linear);
        assert_eq!(a.legs, ["/dev/ram1", "/dev/ram0"]);

        // Duplicates are the kernel's to refuse.
        let cli = parse(&["create", "r1", "--mirror", "/dev/ram0", "/dev/ram0"]).unwrap();
        assert_eq!(cli.command.validate().map(drop), Ok(()));
    }

    #[test]
    fn target_flag_required_and_exclusive() {
        let e = parse(&["create", "r1", "/dev/ram0"]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::MissingRequiredArgument);
        assert_eq!(e.exit_code(), 2);

        let e = parse(&["create", "r1", "--mirror", "--linear", "/dev/ram0"]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ArgumentConflict);
        assert_eq!(e.exit_code(), 2);
    }

    #[test]
    fn legs_required() {
        let e = parse(&["create", "r1", "--mirror"]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::MissingRequiredArgument);
        assert_eq!(e.exit_code(), 2);
        assert!(parse(&["create"]).is_err());
        assert!(parse(&[]).is_err());
        assert!(parse(&["frobnicate"]).is_err());
    }

    #[test]
    fn json_anywhere() {
        for args in [
            &["--json", "list"][..],
            &["list", "--json"],
            &["--json", "status", "r1"],
            &["status", "r1", "--json"],
            &["create", "r1", "--json", "--mirror", "/dev/ram0"],
        ] {
            assert!(parse(args).unwrap().json, "{args:?}");
        }
        assert!(!parse(&["list"]).unwrap().json);
        let cli = parse(&["status", "--json"]).unwrap();
        assert!(matches!(cli.command, Command::Status { name: None }));
    }

    #[test]
    fn validation() {
        assert_eq!(check(&["list"]), Ok(()));
        assert_eq!(check(&["status"]), Ok(()));
        assert!(check(&["create", "a/b", "--mirror", "/dev/ram0"]).is_err());
        assert!(check(&["create", &"x".repeat(32), "--linear", "/dev/ram0"]).is_err());
        assert!(check(&["remove", "a b"]).is_err());
        assert!(check(&["status", "é"]).is_err());
        assert!(check(&["create", "r1", "--mirror", ""]).is_err());

        let long = format!("/dev/{}", "x".repeat(LEG_SPEC_MAX));
        assert!(check(&["create", "r1", "--mirror", &long]).is_err());
        let longest = "x".repeat(LEG_SPEC_MAX);
        assert_eq!(check(&["create", "r1", "--mirror", &longest]), Ok(()));

        let legs: Vec<String> = (0..=MAX_LEGS).map(|i| format!("/dev/ram{i}")).collect();
        let mut args = vec!["create", "r1", "--linear"];
        args.extend(legs.iter().map(String::as_str));
        assert_eq!(
            check(&args),
            Err("17 legs given, a device has at most 16".into())
        );
        args.pop();
        assert_eq!(check(&args), Ok(()));
    }

    #[test]
    fn contexts() {
        let ctx = |args: &[&str]| parse(args).unwrap().command.context();
        assert_eq!(ctx(&["create", "r1", "--mirror", "/dev/ram0"]), "create r1");
        assert_eq!(ctx(&["list"]), "list");
        assert_eq!(ctx(&["status"]), "status");
        assert_eq!(ctx(&["remove", "a\nb"]), "remove a\\nb");
    }

    #[test]
    fn help_explains_targets_and_legs() {
        assert_help(None, &["mirror", "linear", "LEG", "Examples:", "--json"]);
        assert_help(
            Some("create"),
            &["--mirror", "--linear", "<LEG>", "Examples:"],
        );
    }

    #[test]
    fn remote_legs_and_timing_options() {
        let a = create(&[
            "create",
            "r1",
            "--mirror",
            "/dev/sdb",
            "nbd://10.0.0.2/disk?timeout=5s",
            "--timeout",
            "20",
            "--dead-time=2m",
            "--backoff-max",
            "500ms",
        ]);
        assert_eq!(
            a.timing_args.timing(),
            Ok(Timing {
                timeout_ms: Some(20_000),
                dead_time_ms: Some(120_000),
                backoff_max_ms: Some(500),
            })
        );
        let plan = a.plan().unwrap();
        assert_eq!(plan[0].remote, None);
        let remote = plan[1].remote.as_ref().unwrap();
        // The URI's query wins over the options.
        assert_eq!(remote.timing.timeout_ms, Some(5_000));
        assert_eq!(remote.timing.dead_time_ms, Some(120_000));
        assert_eq!(remote.timing.backoff_max_ms, Some(500));
        assert_eq!((remote.host.as_str(), remote.port), ("10.0.0.2", 10809));

        let a = create(&["create", "r1", "--mirror", "nbd://h/x", "/dev/sdb"]);
        assert!(a.timing_args.timing().unwrap().is_empty());
    }

    #[test]
    fn remote_leg_usage_errors() {
        assert_eq!(
            check(&["create", "r1", "--mirror", "/dev/sdb", "--timeout", "5"]),
            Err("--timeout applies to remote legs (nbd://...), and none is given".into())
        );
        assert_eq!(
            check(&["create", "r1", "--mirror", "/dev/sdb", "--backoff-max", "5"]),
            Err("--backoff-max applies to remote legs (nbd://...), and none is given".into())
        );
        assert_eq!(
            check(&["create", "r1", "--mirror", "nbd://h/x", "--timeout", "5 s"]),
            Err("--timeout: invalid duration \"5 s\" (e.g. 30, 30s, 500ms, 2m)".into())
        );
        assert_eq!(
            check(&["create", "r1", "--mirror", "nbd://h/x", "--dead-time", "2d"]),
            Err("--dead-time: invalid duration \"2d\" (e.g. 30, 30s, 500ms, 2m)".into())
        );
        assert_eq!(
            check(&[
                "create",
                "r1",
                "--mirror",
                "nbd://h/x",
                "--dead-time",
                "50ms"
            ]),
            Err("--dead-time: 50ms is out of range (100ms to 24h)".into())
        );
        assert_eq!(
            check(&["create", "r1", "--mirror", "nbd://h/x?tmo=1"]),
            Err("leg nbd://h/x?tmo=1: unknown parameter tmo \
                 (known: timeout, dead-time, backoff-max, resync, conns)"
                .into())
        );
        assert_eq!(
            check(&["create", "r1", "--mirror", "nbd://h/x?timeout=0"]),
            Err("leg nbd://h/x?timeout=0: timeout: 0 is out of range (100ms to 24h)".into())
        );
        let e = check(&["create", "r1", "--mirror", "nbd://[::1/x"]).unwrap_err();
        assert!(e.starts_with("leg nbd://[::1/x: "), "{e}");
        assert!(!e.contains('\n'));
        // Options before the legs, or after: the same.
        assert_eq!(
            check(&["create", "r1", "--timeout", "1m", "--mirror", "nbd://h/x"]),
            Ok(())
        );
    }

    #[test]
    fn create_resync_options() {
        let a = create(&[
            "create",
            "r1",
            "--mirror",
            "/dev/sdb",
            "/dev/sdc",
            "--region-size",
            "256K",
            "--resync-rate=50M/s",
            "--resync-max",
            "1G",
        ]);
        assert_eq!(
            a.settings(),
            Ok(ResyncSettings {
                region_size: Some(256 << 10),
                limits: ResyncLimits {
                    rate_kib: Some(50 << 10),
                    max_kib: Some(1 << 20),
                },
                sync: false,
            })
        );
        assert_eq!(a.legs, ["/dev/sdb", "/dev/sdc"]);
        // An initial sync, the flag anywhere.
        let a = create(&["create", "r1", "--mirror", "/dev/sdb", "--sync", "/dev/sdc"]);
        assert_eq!(
            a.settings(),
            Ok(ResyncSettings {
                sync: true,
                ..ResyncSettings::default()
            })
        );
        assert_eq!(a.legs, ["/dev/sdb", "/dev/sdc"]);
        // Nothing given: nothing sent, the kernel's defaults apply.
        let a = create(&["create", "r1", "--mirror", "/dev/sdb"]);
        assert_eq!(a.settings(), Ok(ResyncSettings::default()));
        let a = create(&["create", "r1", "--linear", "/dev/sdb"]);
        assert_eq!(a.settings(), Ok(ResyncSettings::default()));
        // 0 and none: no limit.
        let a = create(&[
            "create",
            "r1",
            "--resync-rate",
            "0",
            "--resync-max",
            "none",
            "--mirror",
            "/dev/sdb",
        ]);
        let limits = a.settings().unwrap().limits;
        assert_eq!((limits.rate_kib, limits.max_kib), (Some(0), Some(0)));
    }

    #[test]
    fn create_resync_usage_errors() {
        let mirror = |extra: &[&str]| {
            let mut args = vec!["create", "r1", "--mirror", "/dev/sdb"];
            args.extend_from_slice(extra);
            check(&args)
        };
        assert_eq!(mirror(&["--region-size", "4K"]), Ok(()));
        assert_eq!(mirror(&["--region-size", "4MiB"]), Ok(()));
        assert_eq!(
            mirror(&["--region-size", "96K"]),
            Err("--region-size 96K: region size must be a power of two from 4 KiB to 4 MiB".into())
        );
        assert_eq!(
            mirror(&["--region-size", "2K"]),
            Err("--region-size 2K: region size must be a power of two from 4 KiB to 4 MiB".into())
        );
        assert_eq!(
            mirror(&["--region-size", "64 K"]),
            Err("--region-size: invalid size \"64 K\" (e.g. 64K, 1M, 4096)".into())
        );
        assert_eq!(
            mirror(&["--resync-rate", "100"]),
            Err(
                "--resync-rate: 100 is out of range (1K/s to 4294967295K/s, or 0 for no limit)"
                    .into()
            )
        );
        assert_eq!(
            mirror(&["--resync-max", "5000G/s"]),
            Err(
                "--resync-max: 5000G/s is out of range (1K/s to 4294967295K/s, or 0 for no limit)"
                    .into()
            )
        );
        assert_eq!(
            mirror(&["--resync-max", "fast"]),
            Err(
                "--resync-max: invalid rate \"fast\" (e.g. 50M, 500K/s, 1G; 0 for no limit)".into()
            )
        );
        // Mirrors only.
        for opt in ["--region-size", "--resync-rate", "--resync-max"] {
            assert_eq!(
                check(&["create", "l", "--linear", "/dev/sdb", opt, "64K"]),
                Err(format!(
                    "{opt} applies to mirrors (--mirror), not to --linear"
                )),
            );
        }
        assert_eq!(
            check(&["create", "l", "--linear", "--sync", "/dev/sdb"]),
            Err("--sync applies to mirrors (--mirror), not to --linear".into()),
        );
        // Each at most once, with a value.
        for args in [
            &["create", "r1", "--mirror", "/dev/sdb", "--region-size"][..],
            &[
                "create",
                "r1",
                "--mirror",
                "/dev/sdb",
                "--resync-rate",
                "1M",
                "--resync-rate",
                "2M",
            ],
        ] {
            assert_eq!(parse(args).unwrap_err().exit_code(), 2, "{args:?}");
        }
    }

    fn set_args(args: &[&str]) -> SetArgs {
        match parse(args).unwrap().command {
            Command::Set(a) => a,
            c => panic!("parsed as {c:?}"),
        }
    }

    #[test]
    fn set_command() {
        let a = set_args(&["set", "r1", "--resync-rate", "50M"]);
        assert_eq!(a.device, "r1");
        assert_eq!(
            a.limit_args.limits(),
            Ok(ResyncLimits {
                rate_kib: Some(50 << 10),
                max_kib: None,
            })
        );
        let a = set_args(&["set", "--resync-max=200M/s", "r1"]);
        assert_eq!(
            a.limit_args.limits(),
            Ok(ResyncLimits {
                rate_kib: None,
                max_kib: Some(200 << 10),
            })
        );
        let cli = parse(&[
            "set",
            "r1",
            "--resync-rate",
            "0",
            "--resync-max",
            "none",
            "--json",
        ])
        .unwrap();
        assert!(cli.json);
        assert_eq!(cli.command.context(), "set r1");
        // Checked once, for the request.
        assert_eq!(
            cli.command.validate(),
            Ok(Checked {
                settings: ResyncSettings {
                    region_size: None,
                    limits: ResyncLimits {
                        rate_kib: Some(0),
                        max_kib: Some(0),
                    },
                    sync: false,
                },
                ..Checked::default()
            })
        );
        let Command::Set(a) = cli.command else {
            panic!("not a set");
        };
        assert_eq!(
            a.limit_args.limits(),
            Ok(ResyncLimits {
                rate_kib: Some(0),
                max_kib: Some(0),
            })
        );
    }

    #[test]
    fn set_errors() {
        // A limit is required; DEVICE too; no region size.
        let e = parse(&["set", "r1"]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::MissingRequiredArgument);
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("--resync-rate"), "{e}");
        for args in [
            &["set"][..],
            &["set", "--resync-rate", "1M"],
            &["set", "r1", "--region-size", "64K"],
            &["set", "r1", "r2", "--resync-max", "1M"],
        ] {
            assert_eq!(parse(args).unwrap_err().exit_code(), 2, "{args:?}");
        }
        assert_eq!(
            check(&["set", "r1", "--resync-rate", "1"]),
            Err(
                "--resync-rate: 1 is out of range (1K/s to 4294967295K/s, or 0 for no limit)"
                    .into()
            )
        );
        assert_eq!(
            check(&["set", "r1", "--resync-max", "1M", "--resync-rate", "x"]),
            Err("--resync-rate: invalid rate \"x\" (e.g. 50M, 500K/s, 1G; 0 for no limit)".into())
        );
        assert_eq!(
            check(&["set", "a/b", "--resync-rate", "1M"]),
            Err("device name may only hold letters, digits, '_', '-' and '.'".into())
        );
    }

    #[test]
    fn help_explains_resync_settings() {
        assert_help(
            Some("create"),
            &[
                "--region-size <SIZE>",
                "--resync-rate <RATE>",
                "--resync-max <RATE>",
                "a power of two from 4K\n                      to 4M (default 64K)",
                "one bit\n                      per region per leg",
                "64 KiB",
                "2 MiB of memory per TiB of device per",
                "Smaller regions copy less",
                "bigger\n                      ones cost less memory",
                "while the device has other",
                "(default 16M/s)",
                "When the device is idle",
                "up to --resync-max",
                "speed_limit_min",
                "speed_limit_max",
                "at all times (default none)",
                "mirrors only",
                "50M, 500K/s",
                "0 or none means",
                "dstctl set",
                "--region-size 256K --resync-rate 100M",
                "--sync              copy the first leg to the others",
                "md's\n                      --assume-clean",
                "after a crash",
                "create r6 --mirror --sync",
            ],
        );
        assert_help(
            Some("set"),
            &[
                "<DEVICE>",
                "--resync-rate <RATE>",
                "--resync-max <RATE>",
                "16M/s unless dstctl create said otherwise",
                "When the device is idle",
                "0 or none means no limit",
                "apply at once, to a running resync",
                "--json",
                "Examples:",
                "dstctl set r1 --resync-rate 50M",
                "dstctl set r1 --resync-max none",
            ],
        );
        assert_help(None, &["dstctl set r1 --resync-rate 50M", "set "]);
        assert_help(Some("status"), &["speed", "ETA", "region size"]);
        assert_help(Some("monitor"), &["5.4M/s, ETA 0:07"]);
        assert_help(Some("detach"), &["--region-size"]);
        // The defaults shown, derived from the shared definition, in full
        // here: a change to a default or to a help text shows.
        assert_help(
            Some("create"),
            &[
                "\n  --region-size SIZE  bytes of device per bit, a power of two from 4K\n                      \
                 to 4M (default 64K).  The maps",
                "\n  --resync-rate RATE  the resync speed limit while the device has other\n                      \
                 I/O (default 16M/s).  When",
                "\n  --resync-max RATE   the resync speed limit at all times (default none)\n  --sync",
            ],
        );
        assert_help(
            Some("set"),
            &["\n  --resync-rate RATE  the resync speed limit while the device has other\n                      \
               I/O (16M/s unless dstctl create said otherwise).\n"],
        );
        assert_short_help(
            "create",
            &[
                "\n      --region-size <SIZE>  Mirror: bytes of device per dirty-map bit, \
                 a power of two from 4K to 4M (default 64K)\n",
                "\n      --resync-rate <RATE>  Mirror: resync speed limit while the device has \
                 other I/O (default 16M/s; 0: none)\n",
                "\n      --resync-max <RATE>   Mirror: resync speed limit at all times \
                 (default: none)\n",
            ],
        );
    }

    /// Which legs of a `create` are planned write-mostly.
    fn write_mostly_plan(args: &[&str]) -> Vec<bool> {
        let plan = create(args).plan().unwrap();
        plan.iter().map(|l| l.write_mostly).collect()
    }

    #[test]
    fn create_write_mostly() {
        // By index from 0.
        let a = create(&[
            "create",
            "r2",
            "--mirror",
            "/dev/sdb",
            "nbd://10.0.0.2/disk",
            "--write-mostly",
            "1",
        ]);
        assert_eq!(a.write_mostly, ["1"]);
        assert_eq!(a.legs, ["/dev/sdb", "nbd://10.0.0.2/disk"]);
        assert_eq!(
            write_mostly_plan(&[
                "create",
                "r2",
                "--mirror",
                "/dev/sdb",
                "nbd://10.0.0.2/disk",
                "--write-mostly",
                "1",
            ]),
            [false, true]
        );
        // By the leg as typed, repeated, anywhere; the same leg twice is
        // harmless.
        assert_eq!(
            write_mostly_plan(&[
                "create",
                "r3",
                "--write-mostly",
                "/dev/sdd",
                "--mirror",
                "/dev/sdb",
                "--write-mostly=0",
                "nbd://10.0.0.2/disk",
                "/dev/sdd",
                "--write-mostly",
                "/dev/sdd",
            ]),
            [true, false, true]
        );
        // Digits are an index, not a leg as typed.
        assert_eq!(
            write_mostly_plan(&[
                "create",
                "r4",
                "--mirror",
                "/dev/sdb",
                "/dev/sdc",
                "--write-mostly",
                "01",
            ]),
            [false, true]
        );
        // None given: no leg is.
        assert_eq!(
            write_mostly_plan(&["create", "r1", "--mirror", "/dev/sdb", "/dev/sdc"]),
            [false, false]
        );
        // Checked once, for the request; carried to it when resolved.
        let cli = parse(&[
            "create",
            "r2",
            "--mirror",
            "/dev/sdb",
            "nbd://192.0.2.7/disk",
            "--write-mostly",
            "nbd://192.0.2.7/disk",
        ])
        .unwrap();
        let mut legs = cli.command.validate().unwrap().legs;
        assert!(!legs[0].write_mostly);
        let request = legs.remove(1).resolve(crate::remote::resolve).unwrap();
        assert!(request.write_mostly);
        // The settings are not concerned.
        let a = create(&[
            "create",
            "r1",
            "--mirror",
            "/dev/sdb",
            "--write-mostly",
            "0",
        ]);
        assert_eq!(a.settings(), Ok(ResyncSettings::default()));
    }

    #[test]
    fn create_write_mostly_errors() {
        // Mirrors only, whatever the value.
        for leg in ["0", "/dev/sdb", "5"] {
            assert_eq!(
                check(&["create", "l", "--linear", "/dev/sdb", "--write-mostly", leg]),
                Err("--write-mostly applies to mirrors (--mirror), not to --linear".into()),
            );
        }
        // One of the legs given: an index in range, or a leg as typed
        // (create does not know kernel disks).
        let mirror = |leg: &str| {
            check(&[
                "create",
                "r1",
                "--mirror",
                "/dev/sdb",
                "/dev/sdc",
                "--write-mostly",
                "0",
                "--write-mostly",
                leg,
            ])
        };
        assert_eq!(mirror("1"), Ok(()));
        assert_eq!(mirror("/dev/sdc"), Ok(()));
        for leg in ["2", "/dev/sdd", "sdc", "/dev/sdc/", "99999999999999999999"] {
            assert_eq!(
                mirror(leg),
                Err(format!("--write-mostly {leg}: not one of the legs given")),
            );
        }
        assert_eq!(
            mirror("a\nb"),
            Err("--write-mostly a\\nb: not one of the legs given".into())
        );
        assert_eq!(mirror(""), Err("--write-mostly: LEG is empty".into()));
        assert_eq!(
            check(&["create", "r1", "--mirror", "/dev/sdb", "--write-mostly=-1"]),
            Err("--write-mostly -1: not one of the legs given".into())
        );
        // A value is required; it is not a leg.
        for args in [
            &["create", "r1", "--mirror", "/dev/sdb", "--write-mostly"][..],
            &["create", "r1", "--mirror", "--write-mostly", "/dev/sdb"],
        ] {
            assert_eq!(parse(args).unwrap_err().exit_code(), 2, "{args:?}");
        }
    }

    #[test]
    fn set_write_mostly() {
        let a = set_args(&["set", "r1", "--write-mostly", "1"]);
        assert_eq!(a.write_mostly_change(), Some(("1", true)));
        assert_eq!(a.limit_args.limits(), Ok(ResyncLimits::default()));
        let a = set_args(&["set", "--no-write-mostly", "nbd://10.0.0.2/disk", "r1"]);
        assert_eq!(
            a.write_mostly_change(),
            Some(("nbd://10.0.0.2/disk", false))
        );
        // With the limits, in the same command.
        let cli = parse(&[
            "set",
            "r1",
            "--resync-rate",
            "50M",
            "--write-mostly",
            "/dev/sdc",
            "--json",
        ])
        .unwrap();
        assert!(cli.json);
        assert_eq!(
            cli.command.validate(),
            Ok(Checked {
                settings: ResyncSettings {
                    limits: ResyncLimits {
                        rate_kib: Some(50 << 10),
                        max_kib: None,
                    },
                    ..ResyncSettings::default()
                },
                ..Checked::default()
            })
        );
        let Command::Set(a) = cli.command else {
            panic!("not a set");
        };
        assert_eq!(a.write_mostly_change(), Some(("/dev/sdc", true)));
        // Limits only: no change.
        let a = set_args(&["set", "r1", "--resync-max", "1M"]);
        assert_eq!(a.write_mostly_change(), None);
    }

    #[test]
    fn set_write_mostly_errors() {
        // One of the two, for one leg.
        let e = parse(&["set", "r1", "--write-mostly", "0", "--no-write-mostly", "1"]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ArgumentConflict);
        assert_eq!(e.exit_code(), 2);
        for args in [
            &["set", "r1", "--write-mostly", "0", "--write-mostly", "1"][..],
            &[
                "set",
                "r1",
                "--no-write-mostly",
                "0",
                "--no-write-mostly",
                "0",
            ],
            &["set", "r1", "--write-mostly"],
            &["set", "r1", "--no-write-mostly"],
            &["set", "r1", "0", "--write-mostly"],
            &["set", "--write-mostly", "0"],
        ] {
            assert_eq!(parse(args).unwrap_err().exit_code(), 2, "{args:?}");
        }
        // Nothing to set is still a usage error, naming them all.
        let e = parse(&["set", "r1"]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::MissingRequiredArgument);
        assert_eq!(e.exit_code(), 2);
        for opt in ["--resync-rate", "--write-mostly", "--no-write-mostly"] {
            assert!(e.to_string().contains(opt), "{e}");
        }
        assert_eq!(
            check(&["set", "r1", "--write-mostly", ""]),
            Err("--write-mostly: LEG is empty".into())
        );
        assert_eq!(
            check(&["set", "r1", "--no-write-mostly", ""]),
            Err("--no-write-mostly: LEG is empty".into())
        );
        // The limits are checked first, as before.
        assert_eq!(
            check(&["set", "r1", "--write-mostly", "", "--resync-rate", "x"]),
            Err("--resync-rate: invalid rate \"x\" (e.g. 50M, 500K/s, 1G; 0 for no limit)".into())
        );
        assert_eq!(
            check(&["set", "a/b", "--write-mostly", "0"]),
            Err("device name may only hold letters, digits, '_', '-' and '.'".into())
        );
    }

    #[test]
    fn help_explains_write_mostly() {
        let md = "md's\n                      --write-mostly: it gets every write but serves reads\n                      only when no other in-sync leg can.";
        assert_help(
            Some("create"),
            &[
                "--write-mostly <LEG>",
                "\n  --write-mostly LEG  the leg is write-mostly, as with ",
                md,
                "remote leg\n                      over a slow link mirrored with a local disk",
                "its index\n                      from 0, or the leg as typed",
                "Repeat for more legs",
                "dstctl create r7 --mirror /dev/sdb nbd://10.0.0.2/disk --write-mostly 1",
            ],
        );
        assert_help(
            Some("set"),
            &[
                "--write-mostly <LEG>",
                "--no-write-mostly <LEG>",
                "\n  --write-mostly LEG  make the leg write-mostly, as with ",
                md,
                "\n  --no-write-mostly LEG\n                      make the leg a normal one again",
                "not both",
                "either may come with the limits",
                "LEG is as for dstctl detach",
                "dstctl set r2 --write-mostly 1",
                "dstctl set r2 --no-write-mostly",
            ],
        );
        assert_help(
            Some("add"),
            &[
                "--write-mostly",
                "With --write-mostly, the new leg is write-mostly",
                "serves reads only when no other\nin-sync leg can",
                "dstctl add r1 nbd://10.0.0.2/disk --write-mostly",
            ],
        );
        assert_help(Some("status"), &["in-sync, write-mostly"]);
        assert_help(
            None,
            &[
                "write-mostly, as with md's --write-mostly",
                "reads stay local",
                "dstctl set r2 --write-mostly 1",
                "or write-mostly legs",
            ],
        );
        // The short help.
        assert_short_help(
            "create",
            &["\n      --write-mostly <LEG>  Mirror: LEG (its index from 0, or the leg as typed) \
               is write-mostly: it serves reads only when no other in-sync leg can; repeatable\n"],
        );
        assert_short_help(
            "set",
            &[
                "\n      --write-mostly <LEG>     Make LEG write-mostly: it serves reads only \
                 when no other in-sync leg can\n",
                "\n      --no-write-mostly <LEG>  Make LEG a normal leg again, which serves reads\n",
            ],
        );
        assert_short_help(
            "add",
            &[
                "\n      --write-mostly     The new leg is write-mostly: it serves reads only \
               when no other in-sync leg can\n",
            ],
        );
    }

    #[test]
    fn monitor_command() {
        let cli = parse(&["monitor"]).unwrap();
        assert!(matches!(cli.command, Command::Monitor { name: None }));
        assert!(!cli.json);
        let cli = parse(&["monitor", "r1", "--json"]).unwrap();
        assert!(cli.json);
        assert_eq!(cli.command.context(), "monitor r1");
        assert!(parse(&["monitor", "a b"])
            .unwrap()
            .command
            .validate()
            .is_err());
        assert!(parse(&["monitor", "r1", "r2"]).is_err());
    }

    fn export_args(args: &[&str]) -> ExportArgs {
        match parse(args).unwrap().command {
            Command::Export(a) => a,
            c => panic!("parsed as {c:?}"),
        }
    }

    #[test]
    fn export_command() {
        let a = export_args(&["export", "r1", "--listen", "127.0.0.1"]);
        assert_eq!((a.device.as_str(), a.listen.as_str()), ("r1", "127.0.0.1"));
        assert_eq!((a.name, a.read_only, a.allow.len()), (None, false, 0));
        let p = export_args(&["export", "r1", "--listen", "127.0.0.1"])
            .plan()
            .unwrap();
        assert_eq!(
            (p.listen.host.as_str(), p.listen.port),
            ("127.0.0.1", 10809)
        );
        assert!(p.allow.is_empty());

        let cli = parse(&[
            "export",
            "--read-only",
            "r1",
            "--listen=[fd00::1]:10900",
            "--name",
            "backup",
            "--allow",
            "10.0.0.0/8",
            "--json",
            "--allow=fd00::1",
        ])
        .unwrap();
        assert!(cli.json);
        assert_eq!(cli.command.context(), "export r1");
        assert_eq!(cli.command.validate().map(drop), Ok(()));
        let Command::Export(a) = cli.command else {
            panic!("not an export");
        };
        let p = a.plan().unwrap();
        assert_eq!((p.listen.host.as_str(), p.listen.port), ("fd00::1", 10900));
        assert_eq!(p.name.as_deref(), Some("backup"));
        assert!(p.read_only);
        assert_eq!(p.allow, ["10.0.0.0/8", "fd00::1/128"]);

        let a = export_args(&["export", "r1", "--listen", "store.example:2000"]);
        let p = a.plan().unwrap();
        assert_eq!(
            (p.listen.host.as_str(), p.listen.port),
            ("store.example", 2000)
        );
    }

    #[test]
    fn export_syntax_errors() {
        // --listen is required; DEVICE too.
        let e = parse(&["export", "r1"]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::MissingRequiredArgument);
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("--listen"), "{e}");
        let e = parse(&["export", "--listen", "127.0.0.1"]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::MissingRequiredArgument);
        let e = parse(&["export", "r1", "--listen"]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        let e = parse(&["export", "r1", "--listen", "h", "--read-only=yes"]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(parse(&["export", "r1", "r2", "--listen", "h"]).is_err());
        assert!(parse(&["unexport"]).is_err());
        assert!(parse(&["unexport", "r1", "--listen", "h"]).is_err());
    }

    #[test]
    fn export_usage_errors() {
        let export = |extra: &[&str]| {
            let mut args = vec!["export", "r1"];
            args.extend_from_slice(extra);
            check(&args)
        };
        assert_eq!(export(&["--listen", "127.0.0.1"]), Ok(()));
        assert_eq!(
            export(&["--listen", "127.0.0.1", "--allow", "10.0.0.0/33"]),
            Err("--allow 10.0.0.0/33: prefix length 33 is out of range for IPv4 (0 to 32)".into())
        );
        assert_eq!(
            export(&["--listen", "127.0.0.1", "--allow", "fd00::/129"]),
            Err("--allow fd00::/129: prefix length 129 is out of range for IPv6 (0 to 128)".into())
        );
        assert_eq!(export(&["--listen", "[::1]", "--allow", "::/128"]), Ok(()));
        assert_eq!(
            export(&[
                "--listen",
                "127.0.0.1",
                "--allow",
                "10.0.0.0/8",
                "--allow",
                "10.0.0"
            ]),
            Err("--allow 10.0.0: not a network: expected IP/PREFIX \
                 (10.0.0.0/8, fd00::/64) or an IP address"
                .into())
        );
        assert_eq!(
            export(&["--listen", "127.0.0.1", "--allow", "10.0.0.0/x"]),
            Err("--allow 10.0.0.0/x: the prefix length must be a number from 0 to 32".into())
        );
        assert_eq!(
            export(&["--listen", "127.0.0.1:99999"]),
            Err("--listen 127.0.0.1:99999: the port must be a number from 1 to 65535".into())
        );
        assert_eq!(
            export(&["--listen", "127.0.0.1:http"]),
            Err("--listen 127.0.0.1:http: the port must be a number from 1 to 65535".into())
        );
        assert_eq!(
            export(&["--listen", ":10809"]),
            Err("--listen :10809: give an address to listen on, \
                 e.g. 0.0.0.0:10809 or [::]:10809"
                .into())
        );
        assert_eq!(
            export(&["--listen", "fd00::1"]),
            Err("--listen fd00::1: write an IPv6 address in brackets, e.g. [::1]:10809".into())
        );

        let nets: Vec<String> = (0..=MAX_ALLOW).map(|i| format!("10.{i}.0.0/16")).collect();
        let mut args = vec!["--listen", "0.0.0.0"];
        for n in &nets {
            args.extend(["--allow", n.as_str()]);
        }
        assert_eq!(
            export(&args),
            Err("33 --allow networks given, an export has at most 32".into())
        );
        args.truncate(args.len() - 2);
        assert_eq!(export(&args), Ok(()));

        let long = "e".repeat(EXPORT_NAME_MAX + 1);
        let too_long = Err("--name: export name longer than 4096 bytes".into());
        assert_eq!(export(&["--listen", "h", "--name", &long]), too_long);
        assert_eq!(check(&["unexport", "r1", "--name", &long]), too_long);
        let longest = "e".repeat(EXPORT_NAME_MAX);
        assert_eq!(export(&["--listen", "h", "--name", &longest]), Ok(()));
        assert_eq!(check(&["unexport", "r1", "--name", &longest]), Ok(()));

        // The device name is checked like everywhere else.
        assert_eq!(
            check(&["export", "a/b", "--listen", "h"]),
            Err("device name may only hold letters, digits, '_', '-' and '.'".into())
        );
        assert!(check(&["unexport", &"x".repeat(32)]).is_err());
    }

    #[test]
    fn unexport_command() {
        let cli = parse(&["unexport", "r1"]).unwrap();
        assert_eq!(cli.command.context(), "unexport r1");
        assert_eq!(cli.command.validate().map(drop), Ok(()));
        assert!(matches!(
            &cli.command,
            Command::Unexport(UnexportArgs { device, name: None }) if device == "r1"
        ));
        let cli = parse(&["unexport", "--name", "backup", "r1", "--json"]).unwrap();
        assert!(cli.json);
        assert!(matches!(
            &cli.command,
            Command::Unexport(UnexportArgs { name: Some(n), .. }) if n == "backup"
        ));
    }

    #[test]
    fn help_explains_exports() {
        assert_help(
            Some("export"),
            &[
                "--listen <ADDR[:PORT]>",
                "--name <EXPORT>",
                "--read-only",
                "--allow <CIDR>",
                "<DEVICE>",
                "only loopback clients",
                "(default: loopback only)",
                "PORT is 10809",
                "at most 32",
                "at most 4096",
                "[::]",
                "Examples:",
                "dstctl export r1 --listen 127.0.0.1",
                "--allow 10.0.0.0/8",
            ],
        );
        assert_help(
            Some("unexport"),
            &[
                "--name <EXPORT>",
                "<DEVICE>",
                "every export",
                "dstctl unexport r1",
            ],
        );
        assert_help(None, &["dstctl export r1"]);
        assert_help(Some("status"), &["loopback only"]);
    }

    #[test]
    fn detach_and_attach_commands() {
        let cli = parse(&["detach", "r1", "1"]).unwrap();
        assert!(!cli.json);
        assert_eq!(cli.command.context(), "detach r1");
        assert_eq!(cli.command.validate().map(drop), Ok(()));
        assert!(matches!(
            &cli.command,
            Command::Detach(DetachArgs { device, leg, freeze: false }) if device == "r1" && leg == "1"
        ));
        let cli = parse(&["detach", "--freeze", "r1", "/dev/ram1", "--json"]).unwrap();
        assert!(cli.json);
        assert!(matches!(
            &cli.command,
            Command::Detach(DetachArgs { leg, freeze: true, .. }) if leg == "/dev/ram1"
        ));

        let cli = parse(&["attach", "r1", "nbd://127.0.0.1:10809/x"]).unwrap();
        assert_eq!(cli.command.context(), "attach r1");
        assert_eq!(cli.command.validate().map(drop), Ok(()));
        assert!(matches!(
            &cli.command,
            Command::Attach(AttachArgs { device, leg, full: false })
                if device == "r1" && leg == "nbd://127.0.0.1:10809/x"
        ));
        let cli = parse(&["attach", "r1", "ram1", "--full"]).unwrap();
        assert!(matches!(
            &cli.command,
            Command::Attach(AttachArgs { leg, full: true, .. }) if leg == "ram1"
        ));
        assert_eq!(
            parse(&["attach", "a\nb", "0"]).unwrap().command.context(),
            "attach a\\nb"
        );
    }

    #[test]
    fn detach_and_attach_errors() {
        // Both DEVICE and LEG are required; one LEG only; each its own flag.
        for args in [
            &["detach"][..],
            &["detach", "r1"],
            &["attach", "r1"],
            &["detach", "r1", "0", "1"],
            &["detach", "r1", "0", "--full"],
            &["attach", "r1", "0", "--freeze"],
            &["attach", "r1", "0", "--full=yes"],
        ] {
            let e = parse(args).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{args:?}");
        }
        assert_eq!(check(&["detach", "r1", ""]), Err("LEG is empty".into()));
        assert_eq!(check(&["attach", "r1", ""]), Err("LEG is empty".into()));
        assert_eq!(
            check(&["detach", "a/b", "0"]),
            Err("device name may only hold letters, digits, '_', '-' and '.'".into())
        );
        assert!(check(&["attach", &"x".repeat(32), "0"]).is_err());
    }

    #[test]
    fn help_explains_detach_and_attach() {
        assert_help(
            Some("detach"),
            &[
                "<DEVICE>",
                "<LEG>",
                "--freeze",
                "in flight",
                "flushes",
                "crash-consistent",
                "FIFREEZE",
                "64 KiB regions",
                "last in-sync leg",
                "read-only",
                "disconnected",
                "Examples:",
                "dstctl detach r1 2",
            ],
        );
        assert_help(
            Some("attach"),
            &[
                "<DEVICE>",
                "<LEG>",
                "--full",
                "NOT written",
                "reconnected",
                "dstctl monitor",
                "Examples:",
                "dstctl attach r1 2",
            ],
        );
        assert_help(
            None,
            &[
                "dstctl detach",
                "dstctl attach",
                "dstctl detach r1 1 --freeze",
            ],
        );
        assert_help(Some("status"), &["detached (taken out by dstctl detach"]);
    }

    fn add_args(args: &[&str]) -> AddArgs {
        match parse(args).unwrap().command {
            Command::Add(a) => a,
            c => panic!("parsed as {c:?}"),
        }
    }

    #[test]
    fn add_command() {
        let cli = parse(&["add", "r1", "/dev/sdd"]).unwrap();
        assert!(!cli.json);
        assert_eq!(cli.command.context(), "add r1");
        assert_eq!(cli.command.validate().map(drop), Ok(()));
        let Command::Add(a) = cli.command else {
            panic!("not an add");
        };
        assert_eq!((a.device.as_str(), a.leg.as_str()), ("r1", "/dev/sdd"));
        assert_eq!(
            a.plan(),
            Ok(vec![LegPlan {
                spec: "/dev/sdd".into(),
                remote: None,
                write_mostly: false,
            }])
        );

        // A remote leg: its URI and the timing options, as for create.
        let a = add_args(&[
            "add",
            "--timeout",
            "20",
            "r1",
            "nbd://10.0.0.2:10900/disk?dead-time=5s&resync=full",
            "--dead-time=2m",
            "--backoff-max",
            "500ms",
        ]);
        let remote = a.plan().unwrap().remove(0).remote.unwrap();
        assert_eq!((remote.host.as_str(), remote.port), ("10.0.0.2", 10900));
        assert_eq!(remote.export, "disk");
        assert_eq!(
            remote.timing,
            Timing {
                timeout_ms: Some(20_000),
                // The URI's query wins over the options.
                dead_time_ms: Some(5_000),
                backoff_max_ms: Some(500),
            }
        );
        assert_eq!(remote.full_resync, Some(true));
        // The same leg planned by create and by add.
        let c = create(&[
            "create",
            "x",
            "--mirror",
            "nbd://10.0.0.2:10900/disk?dead-time=5s&resync=full",
            "--timeout",
            "20",
            "--dead-time=2m",
            "--backoff-max",
            "500ms",
        ]);
        assert_eq!(c.plan(), a.plan());

        let cli = parse(&["add", "r1", "nbd://[fd00::2]/vol", "--json"]).unwrap();
        assert!(cli.json);
        assert_eq!(cli.command.validate().map(drop), Ok(()));
        // Write-mostly, the flag anywhere; not without it.
        assert!(!a.plan().unwrap()[0].write_mostly);
        for args in [
            &["add", "r1", "nbd://10.0.0.2/disk", "--write-mostly"][..],
            &["add", "--write-mostly", "r1", "/dev/sdd"],
        ] {
            let a = add_args(args);
            assert!(a.write_mostly, "{args:?}");
            let plan = a.plan().unwrap();
            assert!(plan[0].write_mostly, "{args:?}");
            let request = plan[0].clone().resolve(crate::remote::resolve).unwrap();
            assert!(request.write_mostly, "{args:?}");
        }
        assert_eq!(
            parse(&["add", "a\nb", "/dev/sdd"])
                .unwrap()
                .command
                .context(),
            "add a\\nb"
        );
    }

    #[test]
    fn add_errors() {
        // DEVICE and one LEG; no create-only option.
        for args in [
            &["add"][..],
            &["add", "r1"],
            &["add", "r1", "/dev/sdd", "/dev/sde"],
            &["add", "r1", "/dev/sdd", "--mirror"],
            &["add", "r1", "/dev/sdd", "--region-size", "64K"],
            &["add", "r1", "/dev/sdd", "--resync-rate", "1M"],
            &["add", "r1", "/dev/sdd", "--full"],
            &["add", "r1", "/dev/sdd", "--write-mostly=yes"],
            &["add", "r1", "/dev/sdd", "--write-mostly", "0"],
            &["add", "r1", "/dev/sdd", "--no-write-mostly"],
            &["add", "r1", "nbd://h/x", "--timeout"],
        ] {
            let e = parse(args).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{args:?}");
        }
        assert_eq!(check(&["add", "r1", ""]), Err("empty leg".into()));
        let long = format!("/dev/{}", "x".repeat(LEG_SPEC_MAX));
        assert_eq!(
            check(&["add", "r1", &long]),
            Err("leg longer than 4095 bytes".into())
        );
        assert_eq!(
            check(&["add", "a/b", "/dev/sdd"]),
            Err("device name may only hold letters, digits, '_', '-' and '.'".into())
        );
        // Timing options: remote legs only, checked as for create.
        assert_eq!(
            check(&["add", "r1", "/dev/sdd", "--timeout", "5"]),
            Err("--timeout applies to remote legs (nbd://...), and none is given".into())
        );
        assert_eq!(
            check(&["add", "r1", "/dev/sdd", "--dead-time", "1m"]),
            Err("--dead-time applies to remote legs (nbd://...), and none is given".into())
        );
        assert_eq!(
            check(&["add", "r1", "nbd://h/x", "--backoff-max", "50ms"]),
            Err("--backoff-max: 50ms is out of range (100ms to 24h)".into())
        );
        assert_eq!(
            check(&["add", "r1", "nbd://h/x?tmo=1"]),
            Err("leg nbd://h/x?tmo=1: unknown parameter tmo \
                 (known: timeout, dead-time, backoff-max, resync, conns)"
                .into())
        );
        assert_eq!(
            check(&["add", "r1", "nbd://h/x?resync=some"]),
            Err("leg nbd://h/x?resync=some: resync: some is neither full nor dirty".into())
        );
        assert_eq!(
            check(&["add", "r1", "nbds://h/x"]),
            Err("leg nbds://h/x: nbds:// (NBD over TLS) is not supported".into())
        );
    }

    #[test]
    fn remove_leg_command() {
        let cli = parse(&["remove-leg", "r1", "0"]).unwrap();
        assert!(!cli.json);
        assert_eq!(cli.command.context(), "remove-leg r1");
        assert_eq!(cli.command.validate().map(drop), Ok(()));
        assert!(matches!(
            &cli.command,
            Command::RemoveLeg(RemoveLegArgs { device, leg }) if device == "r1" && leg == "0"
        ));
        let cli = parse(&["remove-leg", "r1", "nbd://10.0.0.2/disk", "--json"]).unwrap();
        assert!(cli.json);
        assert!(matches!(
            &cli.command,
            Command::RemoveLeg(RemoveLegArgs { leg, .. }) if leg == "nbd://10.0.0.2/disk"
        ));
        // Both DEVICE and LEG are required; one LEG only; no options.
        for args in [
            &["remove-leg"][..],
            &["remove-leg", "r1"],
            &["remove-leg", "r1", "0", "1"],
            &["remove-leg", "r1", "0", "--freeze"],
            &["remove-leg", "r1", "0", "--full"],
        ] {
            let e = parse(args).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{args:?}");
        }
        assert_eq!(check(&["remove-leg", "r1", ""]), Err("LEG is empty".into()));
        assert_eq!(
            check(&["remove-leg", ".r1", "0"]),
            Err("device name must not start with '-' or '.'".into())
        );
        // `remove` is still the device's removal.
        assert!(matches!(
            parse(&["remove", "r1"]).unwrap().command,
            Command::Remove { .. }
        ));
    }

    #[test]
    fn help_explains_add_and_remove_leg() {
        assert_help(
            Some("add"),
            &[
                "<DEVICE>",
                "<LEG>",
                "--timeout <T>",
                "--dead-time <T>",
                "--backoff-max <T>",
                "(default 30s)",
                "(default 60s)",
                "(default 10s)",
                "nbd://HOST[:PORT][/EXPORT][?PARAMETERS]",
                "server must be reachable",
                "resync=full|dirty",
                "Mirrors only",
                "at least as\nlarge as the device",
                "logical block\nsize no larger than the device's",
                "next leg number",
                "copied in full from the in-sync legs in the background",
                "dstctl status and dstctl\nmonitor show the progress",
                "resync\nsettings (see dstctl set)",
                "at most 16 legs in\nall",
                "remove-leg",
                "Examples:",
                "dstctl add r1 /dev/sdd",
                "dstctl add r1 nbd://10.0.0.2/disk",
            ],
        );
        assert_help(
            Some("remove-leg"),
            &[
                "<DEVICE>",
                "<LEG>",
                "Mirrors only",
                "last in-sync leg cannot be removed",
                "in flight",
                "at most 60 s",
                "local leg is released",
                "remote leg\ndisconnected",
                "keep their numbers",
                "its legs are 1 and 2",
                "at most 16 legs in all",
                "gone for good",
                "To take a backup, use dstctl detach",
                "kernel disk",
                "Examples:",
                "dstctl remove-leg r1 2",
                "dstctl add r1 /dev/sdd",
            ],
        );
        assert_help(
            None,
            &[
                "dstctl add",
                "dstctl remove-leg",
                "dstctl add r1 /dev/sdd",
                "dstctl remove-leg r1 0",
                "add ",
                "remove-leg ",
            ],
        );
        assert_help(Some("status"), &["legs\nremoved by dstctl remove-leg"]);
        assert_help(Some("monitor"), &["legs added\nand removed"]);
    }

    #[test]
    fn help_explains_remote_legs() {
        assert_help(
            Some("create"),
            &[
                "nbd://HOST[:PORT][/EXPORT]",
                "--timeout <T>",
                "--dead-time <T>",
                "--backoff-max <T>",
                "(default 30s)",
                "(default 60s)",
                "(default 10s)",
                "from 100ms to 24h",
                "reconnecting",
                "timeout=T",
                "nbd://10.0.0.2/disk",
            ],
        );
        assert_help(None, &["nbd://", "monitor"]);
        assert_help(Some("monitor"), &["SIGINT", "--json", "ready", "[NAME]"]);
    }

    /// Fails unless the short help (`-h`) of subcommand `sub` holds every
    /// one of `lines`.
    fn assert_short_help(sub: &str, lines: &[&str]) {
        let mut top = Cli::command();
        let short = top
            .find_subcommand_mut(sub)
            .unwrap()
            .render_help()
            .to_string();
        for line in lines {
            assert!(short.contains(line), "{sub} -h lacks {line:?}:\n{short}");
        }
    }

    /// Fails unless the long help of subcommand `sub` (of dstctl itself
    /// when `None`) holds every one of `words`.
    fn assert_help(sub: Option<&str>, words: &[&str]) {
        let mut top = Cli::command();
        let cmd = match sub {
            Some(name) => top.find_subcommand_mut(name).unwrap(),
            None => &mut top,
        };
        let help = cmd.render_long_help().to_string();
        for word in words {
            let what = sub.unwrap_or("dstctl");
            assert!(help.contains(word), "{what} help lacks {word}:\n{help}");
        }
    }
}
