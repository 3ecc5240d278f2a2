// SPDX-License-Identifier: GPL-2.0

//! The `dst` generic netlink family: commands, attributes, policies.
//!
//! This file is the single definition of the configuration interface.  The
//! kernel module builds its netlink policies from [`COMMANDS`] at load time,
//! and `dstctl` encodes requests and decodes replies with the same ids.
//!
//! Conventions: strings are NUL-terminated, integers host-endian, sizes in
//! bytes.  Repeated attributes (a device's legs) appear in order, each as a
//! nested attribute of the same type.

/// Family name, as registered with the generic netlink controller.
pub const FAMILY_NAME: &str = "dst";
/// Family version.
pub const FAMILY_VERSION: u8 = 1;
/// Multicast group on which the module reports state changes.
pub const MCGRP_EVENTS: &str = "events";

/// Longest device name, in bytes.
pub const NAME_MAX: usize = 31;
/// Longest leg specification (a path), in bytes.
pub const LEG_SPEC_MAX: usize = 4095;
/// Most legs a device may have, counting those removed since it was
/// created (their indexes are not reused).
pub const MAX_LEGS: usize = 16;

/// Command ids.
pub mod cmd {
    /// Get one device (`DEV_NAME` given) or dump all.
    pub const GET: u8 = 1;
    /// Create a device.
    pub const CREATE: u8 = 2;
    /// Remove a device.
    pub const REMOVE: u8 = 3;
    /// Sent by the module on the events group (never a request): a device
    /// message, as GET's reply, with `dev::EVENT` saying what happened.
    pub const EVENT: u8 = 4;
    /// Export a device over NBD (`DEV_NAME` and one `dev::EXPORT` nest).
    pub const EXPORT: u8 = 5;
    /// Stop exporting a device: every export of it, or only the one whose
    /// `exp::NAME` is given in a `dev::EXPORT` nest.
    pub const UNEXPORT: u8 = 6;
    /// Detach a mirror leg (`DEV_NAME`, `dev::LEG_INDEX`): it stops getting
    /// I/O and keeps the device's contents as of the detach.
    pub const DETACH: u8 = 7;
    /// Attach a detached leg again (`DEV_NAME`, `dev::LEG_INDEX`,
    /// `dev::FULL`): it is resynced, only the regions written meanwhile
    /// unless `dev::FULL` is 1.
    pub const ATTACH: u8 = 8;
    /// Change a device's settings (`DEV_NAME`, and any of
    /// `dev::RESYNC_RATE`, `dev::RESYNC_MAX`, and `dev::WRITE_MOSTLY` with
    /// the `dev::LEG_INDEX` it applies to); the others stay.
    pub const SET: u8 = 9;
    /// Grow a mirror by one leg (`DEV_NAME`, one `dev::LEG` nest as in
    /// CREATE): it takes the next leg index and is resynced in full.
    pub const ADD_LEG: u8 = 10;
    /// Shrink a mirror by one leg (`DEV_NAME`, `dev::LEG_INDEX`): it stops
    /// getting I/O (as for DETACH), is released and leaves the device; its
    /// index is not reused.
    pub const REMOVE_LEG: u8 = 11;
}

/// Device attributes (top level of every message).
pub mod dev {
    /// Device name chosen by the administrator (string).
    pub const NAME: u16 = 1;
    /// Target type, a [`super::Target`] (u8).
    pub const TARGET: u16 = 2;
    /// One leg (nested [`super::leg`] attributes); repeated, in order.
    pub const LEG: u16 = 3;
    /// N of `/dev/dstN` (u32).
    pub const INDEX: u16 = 4;
    /// Kernel disk name, `dstN` (string).
    pub const DISK: u16 = 5;
    /// Capacity in bytes (u64).
    pub const SIZE: u16 = 6;
    /// Device state, a [`super::DevState`] (u8).
    pub const STATE: u16 = 7;
    /// Number of openers of the block device (u32).
    pub const OPENERS: u16 = 8;
    /// Logical block size in bytes (u32).
    pub const BLOCK_SIZE: u16 = 9;
    /// In an event: what happened, an [`super::Event`] (u8).
    pub const EVENT: u16 = 10;
    /// One NBD export of the device (nested [`super::exp`] attributes);
    /// repeated.
    pub const EXPORT: u16 = 11;
    /// DETACH and ATTACH: the leg, by its index from 0 (u32).
    pub const LEG_INDEX: u16 = 12;
    /// ATTACH: copy the whole leg (1) rather than only the regions written
    /// while it was detached (0, the default) (u8).  CREATE, mirror: copy
    /// the first leg to the others in the background (1) rather than
    /// assume the legs identical (0, the default).
    pub const FULL: u16 = 13;
    /// Mirror: bytes of device one dirty-map bit stands for (u32; CREATE,
    /// a power of two in [`super::resync::REGION_MIN`]..=
    /// [`super::resync::REGION_MAX`], default
    /// [`super::resync::REGION_DEFAULT`]).
    pub const REGION_SIZE: u16 = 14;
    /// Mirror: resync speed limit while the device has other I/O, in KiB/s
    /// (u32; CREATE, SET; 0: none; default
    /// [`super::resync::RATE_DEFAULT_KIB`]).
    pub const RESYNC_RATE: u16 = 15;
    /// Mirror: resync speed limit at all times, in KiB/s (u32; CREATE, SET;
    /// 0, the default: none).
    pub const RESYNC_MAX: u16 = 16;
    /// SET, mirror: make leg `LEG_INDEX` write-mostly (1) or a normal
    /// leg again (0) (u8; see [`super::leg::WRITE_MOSTLY`]).
    pub const WRITE_MOSTLY: u16 = 17;
    /// Highest device attribute id.
    pub const MAX: u16 = 17;
}

/// Export attributes (inside a [`dev::EXPORT`] nest).
pub mod exp {
    /// Where the export listens: `IP:PORT` or `[IPv6]:PORT` (string).
    pub const LISTEN: u16 = 1;
    /// The export name clients ask for (string; default: the device name).
    pub const NAME: u16 = 2;
    /// Read-only export (u8, 0 or 1).
    pub const READ_ONLY: u16 = 3;
    /// A network allowed to connect, `IP/PREFIX` (string); repeated.
    /// Without any, only loopback clients may connect.
    pub const ALLOW: u16 = 4;
    /// Clients connected now (u32).
    pub const CLIENTS: u16 = 5;
    /// One connected client's address, `IP:PORT` (string); repeated.
    pub const CLIENT: u16 = 6;
    /// Connections refused so far (not allowed, or over the limit) (u64).
    pub const REFUSED: u16 = 7;
    /// Requests served so far (u64).
    pub const REQUESTS: u16 = 8;
    /// Highest export attribute id.
    pub const MAX: u16 = 8;
}

/// Most exports in all, and most clients connected to one export.
pub const MAX_EXPORTS: usize = 64;
/// Most clients connected to one listening address at once.
pub const MAX_CLIENTS: usize = 64;
/// Most `exp::ALLOW` networks per export.
pub const MAX_ALLOW: usize = 32;
/// Longest `exp::ALLOW` string (`IPv6/128`).
pub const ALLOW_MAX: usize = 64;

/// Leg attributes (inside a [`dev::LEG`] nest).
pub mod leg {
    /// The leg as given at creation: a block device path (string).
    pub const SPEC: u16 = 1;
    /// Position of the leg in the device, from 0 (u32).
    pub const INDEX: u16 = 2;
    /// Kernel name of the leg's block device, e.g. `ram0` (string).
    pub const DISK: u16 = 3;
    /// Size of the leg in bytes (u64).
    pub const SIZE: u16 = 4;
    /// Offset of the leg's first byte in the device, for linear (u64).
    pub const OFFSET: u16 = 5;
    /// Leg state, a [`super::LegState`] (u8).
    pub const STATE: u16 = 6;
    /// Completed read requests (u64).
    pub const READS: u16 = 7;
    /// Completed write requests (u64).
    pub const WRITES: u16 = 8;
    /// Failed read requests (u64).
    pub const READ_ERRORS: u16 = 9;
    /// Failed write requests (u64).
    pub const WRITE_ERRORS: u16 = 10;
    /// Requests in flight (u32).
    pub const INFLIGHT: u16 = 11;
    /// Kind of leg, a [`super::LegKind`] (u8).
    pub const KIND: u16 = 12;
    /// Remote legs: the server's address, `IP:PORT` or `[IPv6]:PORT`
    /// (string).  In a request it is the resolved address to connect to.
    pub const ADDR: u16 = 13;
    /// Remote legs: the export name (string, may be empty).
    pub const EXPORT: u16 = 14;
    /// Remote legs: a request older than this fails the connection (u32, ms).
    pub const TIMEOUT_MS: u16 = 15;
    /// Remote legs: how long I/O that cannot go elsewhere waits for a down
    /// leg before failing (u32, ms).
    pub const DEAD_TIME_MS: u16 = 16;
    /// Remote legs: longest wait between reconnection attempts (u32, ms).
    pub const BACKOFF_MAX_MS: u16 = 17;
    /// Bytes of the leg brought in sync so far by the running resync (u64).
    pub const RESYNC_DONE: u16 = 18;
    /// Bytes the running resync has to bring in sync (u64).
    pub const RESYNC_TOTAL: u16 = 19;
    /// Remote legs: the server's NBD transmission flags (u32).
    pub const NBD_FLAGS: u16 = 20;
    /// Remote legs: successful connections so far (u32).
    pub const CONNECTS: u16 = 21;
    /// The last problem seen on the leg, for the administrator (string).
    pub const PROBLEM: u16 = 22;
    /// Remote legs: after a reconnect, copy the whole leg (1) rather than
    /// only the regions written while it was away (0, the default), for
    /// servers that do not keep their data across a restart (u8).
    pub const FULL_RESYNC: u16 = 23;
    /// Bytes copied to the leg by resyncs since the device was created
    /// (u64).
    pub const RESYNCED: u16 = 24;
    /// Speed of the running resync over the last seconds, in bytes per
    /// second (u64; with `RESYNC_DONE`).
    pub const RESYNC_SPEED: u16 = 25;
    /// Remote legs: TCP connections to the server (u8).  In a request, how
    /// many to open when the server allows several (`CAN_MULTI_CONN`),
    /// from 1 to [`super::conns::MAX`]; in a status, how many are in use.
    pub const CONNS: u16 = 26;
    /// Mirror legs: write-mostly (1), as md's: the leg gets every write
    /// but serves reads only when no other in-sync leg can (u8; CREATE
    /// and ADD_LEG, default 0; in replies, a mirror's legs).
    pub const WRITE_MOSTLY: u16 = 27;
    /// Highest leg attribute id.
    pub const MAX: u16 = 27;
}

macro_rules! wire_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $v:ident = $n:literal => $s:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        #[repr(u8)]
        pub enum $name {
            $($(#[$vm])* $v = $n),+
        }

        impl $name {
            /// Decodes the wire value.
            pub fn from_u8(v: u8) -> Option<Self> {
                match v {
                    $($n => Some(Self::$v),)+
                    _ => None,
                }
            }

            /// The lower-case name shown to users.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$v => $s),+
                }
            }

            /// Parses the lower-case name.
            pub fn from_name(s: &str) -> Option<Self> {
                match s {
                    $($s => Some(Self::$v),)+
                    _ => None,
                }
            }
        }
    };
}

wire_enum! {
    /// How a device maps its legs.
    Target {
        /// Legs concatenated in order.
        Linear = 1 => "linear",
        /// Every leg holds the whole device (RAID1).
        Mirror = 2 => "mirror",
    }
}

wire_enum! {
    /// State of a device as a whole.
    DevState {
        /// Every leg in sync.
        Ok = 1 => "ok",
        /// Working, but some leg is not in sync.
        Degraded = 2 => "degraded",
        /// No I/O possible: a linear leg or every mirror leg failed.
        Failed = 3 => "failed",
    }
}

wire_enum! {
    /// State of one leg.
    LegState {
        /// Receives every write; may serve reads.
        InSync = 1 => "in-sync",
        /// Failed a write; no longer used until replaced.
        Faulty = 2 => "faulty",
        /// A remote leg whose connection is lost; reconnecting.
        Down = 3 => "down",
        /// A remote leg not connected yet.
        Connecting = 4 => "connecting",
        /// Being brought back in sync: gets writes, serves no reads.
        Resyncing = 5 => "resyncing",
        /// Detached by the administrator (a backup): gets no I/O; the
        /// regions written meanwhile are remembered.
        Detached = 6 => "detached",
        /// Removed from the device (REMOVE_LEG); never reported: a removed
        /// leg is left out of replies.
        Removed = 7 => "removed",
    }
}

wire_enum! {
    /// Where a leg's data lives.
    LegKind {
        /// A local block device.
        Local = 1 => "local",
        /// A remote NBD export.
        Remote = 2 => "remote",
    }
}

wire_enum! {
    /// What an event reports.
    Event {
        /// A device was created.
        Created = 1 => "created",
        /// A device was removed.
        Removed = 2 => "removed",
        /// The state of a device or of one of its legs changed.
        Changed = 3 => "changed",
    }
}

/// The value type of an attribute, as policies see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A `u8` in `min..=max`.
    U8 {
        /// Smallest valid value.
        min: u8,
        /// Largest valid value.
        max: u8,
    },
    /// A `u32`.
    U32,
    /// A `u64`.
    U64,
    /// A NUL-terminated string of at most `max_len` bytes before the NUL.
    Str {
        /// Longest valid length.
        max_len: u16,
    },
    /// Nested attributes following [`LEG_REQUEST`].
    NestedLeg,
    /// Nested attributes following [`EXPORT_REQUEST`].
    NestedExport,
}

/// One attribute a command accepts.
#[derive(Debug, Clone, Copy)]
pub struct AttrSpec {
    /// Attribute id.
    pub id: u16,
    /// Its type.
    pub kind: Kind,
}

/// One command and the attributes it accepts; anything else is refused.
#[derive(Debug, Clone, Copy)]
pub struct CmdSpec {
    /// Command id.
    pub cmd: u8,
    /// Answers a single request.
    pub doit: bool,
    /// Answers a dump request.
    pub dumpit: bool,
    /// Accepted attributes.
    pub policy: &'static [AttrSpec],
}

const NAME_SPEC: AttrSpec = AttrSpec {
    id: dev::NAME,
    kind: Kind::Str {
        max_len: NAME_MAX as u16,
    },
};

const LEG_INDEX_SPEC: AttrSpec = AttrSpec {
    id: dev::LEG_INDEX,
    kind: Kind::U32,
};

/// Longest NBD export name (the NBD protocol's limit).
pub const EXPORT_NAME_MAX: usize = 4096;
/// Longest remote address string (`[IPv6%scope]:port`).
pub const ADDR_MAX: usize = 64;

/// Attributes accepted inside a [`dev::LEG`] nest of a request.
pub const LEG_REQUEST: &[AttrSpec] = &[
    AttrSpec {
        id: leg::SPEC,
        kind: Kind::Str {
            max_len: LEG_SPEC_MAX as u16,
        },
    },
    AttrSpec {
        id: leg::ADDR,
        kind: Kind::Str {
            max_len: ADDR_MAX as u16,
        },
    },
    AttrSpec {
        id: leg::EXPORT,
        kind: Kind::Str {
            max_len: EXPORT_NAME_MAX as u16,
        },
    },
    AttrSpec {
        id: leg::TIMEOUT_MS,
        kind: Kind::U32,
    },
    AttrSpec {
        id: leg::DEAD_TIME_MS,
        kind: Kind::U32,
    },
    AttrSpec {
        id: leg::BACKOFF_MAX_MS,
        kind: Kind::U32,
    },
    AttrSpec {
        id: leg::FULL_RESYNC,
        kind: Kind::U8 { min: 0, max: 1 },
    },
    AttrSpec {
        id: leg::CONNS,
        kind: Kind::U8 {
            min: 1,
            max: conns::MAX,
        },
    },
    AttrSpec {
        id: leg::WRITE_MOSTLY,
        kind: Kind::U8 { min: 0, max: 1 },
    },
];

/// Attributes accepted inside a [`dev::EXPORT`] nest of a request.
pub const EXPORT_REQUEST: &[AttrSpec] = &[
    AttrSpec {
        id: exp::LISTEN,
        kind: Kind::Str {
            max_len: ADDR_MAX as u16,
        },
    },
    AttrSpec {
        id: exp::NAME,
        kind: Kind::Str {
            max_len: EXPORT_NAME_MAX as u16,
        },
    },
    AttrSpec {
        id: exp::READ_ONLY,
        kind: Kind::U8 { min: 0, max: 1 },
    },
    AttrSpec {
        id: exp::ALLOW,
        kind: Kind::Str {
            max_len: ALLOW_MAX as u16,
        },
    },
];

/// Remote leg timing defaults and bounds, in milliseconds.
pub mod timing {
    /// Default request timeout.
    pub const TIMEOUT_MS: u32 = 30_000;
    /// Default dead time.
    pub const DEAD_TIME_MS: u32 = 60_000;
    /// Default longest wait between reconnection attempts.
    pub const BACKOFF_MAX_MS: u32 = 10_000;
    /// Smallest accepted value of any of them.
    pub const MIN_MS: u32 = 100;
    /// Largest accepted value of any of them (one day).
    pub const MAX_MS: u32 = 86_400_000;
}

/// Connections of a remote leg.
pub mod conns {
    /// Default: two, when the server allows several.
    pub const DEFAULT: u8 = 2;
    /// Most connections of one leg.
    pub const MAX: u8 = 4;
}

/// Resync settings: defaults and bounds.
pub mod resync {
    /// Smallest dirty region, in bytes.
    pub const REGION_MIN: u32 = 4096;
    /// Largest dirty region, in bytes.
    pub const REGION_MAX: u32 = 4 << 20;
    /// Default dirty region, in bytes.
    pub const REGION_DEFAULT: u32 = 64 << 10;
    /// Default resync speed limit while the device is in use, in KiB/s.
    pub const RATE_DEFAULT_KIB: u32 = 16 << 10;

    /// Checks a region size: a power of two within the bounds.
    pub fn check_region(bytes: u32) -> Result<(), &'static str> {
        if !bytes.is_power_of_two() || !(REGION_MIN..=REGION_MAX).contains(&bytes) {
            return Err("region size must be a power of two from 4 KiB to 4 MiB");
        }
        Ok(())
    }
}

const RESYNC_RATE_SPEC: AttrSpec = AttrSpec {
    id: dev::RESYNC_RATE,
    kind: Kind::U32,
};

const RESYNC_MAX_SPEC: AttrSpec = AttrSpec {
    id: dev::RESYNC_MAX,
    kind: Kind::U32,
};

const FULL_SPEC: AttrSpec = AttrSpec {
    id: dev::FULL,
    kind: Kind::U8 { min: 0, max: 1 },
};

/// Every command of the family.
pub const COMMANDS: &[CmdSpec] = &[
    CmdSpec {
        cmd: cmd::GET,
        doit: true,
        dumpit: true,
        policy: &[NAME_SPEC],
    },
    CmdSpec {
        cmd: cmd::CREATE,
        doit: true,
        dumpit: false,
        policy: &[
            NAME_SPEC,
            AttrSpec {
                id: dev::TARGET,
                kind: Kind::U8 { min: 1, max: 2 },
            },
            AttrSpec {
                id: dev::LEG,
                kind: Kind::NestedLeg,
            },
            AttrSpec {
                id: dev::REGION_SIZE,
                kind: Kind::U32,
            },
            RESYNC_RATE_SPEC,
            RESYNC_MAX_SPEC,
            FULL_SPEC,
        ],
    },
    CmdSpec {
        cmd: cmd::ADD_LEG,
        doit: true,
        dumpit: false,
        policy: &[
            NAME_SPEC,
            AttrSpec {
                id: dev::LEG,
                kind: Kind::NestedLeg,
            },
        ],
    },
    CmdSpec {
        cmd: cmd::REMOVE_LEG,
        doit: true,
        dumpit: false,
        policy: &[NAME_SPEC, LEG_INDEX_SPEC],
    },
    CmdSpec {
        cmd: cmd::SET,
        doit: true,
        dumpit: false,
        policy: &[
            NAME_SPEC,
            RESYNC_RATE_SPEC,
            RESYNC_MAX_SPEC,
            LEG_INDEX_SPEC,
            AttrSpec {
                id: dev::WRITE_MOSTLY,
                kind: Kind::U8 { min: 0, max: 1 },
            },
        ],
    },
    CmdSpec {
        cmd: cmd::REMOVE,
        doit: true,
        dumpit: false,
        policy: &[NAME_SPEC],
    },
    CmdSpec {
        cmd: cmd::EXPORT,
        doit: true,
        dumpit: false,
        policy: &[
            NAME_SPEC,
            AttrSpec {
                id: dev::EXPORT,
                kind: Kind::NestedExport,
            },
        ],
    },
    CmdSpec {
        cmd: cmd::DETACH,
        doit: true,
        dumpit: false,
        policy: &[NAME_SPEC, LEG_INDEX_SPEC],
    },
    CmdSpec {
        cmd: cmd::ATTACH,
        doit: true,
        dumpit: false,
        policy: &[NAME_SPEC, LEG_INDEX_SPEC, FULL_SPEC],
    },
    CmdSpec {
        cmd: cmd::UNEXPORT,
        doit: true,
        dumpit: false,
        policy: &[
            NAME_SPEC,
            AttrSpec {
                id: dev::EXPORT,
                kind: Kind::NestedExport,
            },
        ],
    },
];

/// Checks a device name: 1 to [`NAME_MAX`] bytes of `[A-Za-z0-9_.-]`, not
/// starting with `-` or `.`.
pub fn check_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("device name is empty");
    }
    if name.len() > NAME_MAX {
        return Err("device name is longer than 31 bytes");
    }
    if name.starts_with('-') || name.starts_with('.') {
        return Err("device name must not start with '-' or '.'");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
    {
        return Err("device name may only hold letters, digits, '_', '-' and '.'");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(check_name("r1").is_ok());
        assert!(check_name("backup-2024_01.a").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name(&"x".repeat(32)).is_err());
        assert!(check_name(&"x".repeat(31)).is_ok());
        assert!(check_name("-x").is_err());
        assert!(check_name("a/b").is_err());
        assert!(check_name("a b").is_err());
        assert!(check_name("é").is_err());
    }

    #[test]
    fn enums_round_trip() {
        for t in [Target::Linear, Target::Mirror] {
            assert_eq!(Target::from_u8(t as u8), Some(t));
            assert_eq!(Target::from_name(t.as_str()), Some(t));
        }
        assert_eq!(Target::from_u8(0), None);
        assert_eq!(Target::from_u8(3), None);
        for s in [
            LegState::InSync,
            LegState::Faulty,
            LegState::Down,
            LegState::Connecting,
            LegState::Resyncing,
            LegState::Detached,
        ] {
            assert_eq!(LegState::from_u8(s as u8), Some(s));
        }
    }

    #[test]
    fn policies_are_consistent() {
        let mut seen = [false; 256];
        for c in COMMANDS {
            assert!(!seen[c.cmd as usize], "duplicate command {}", c.cmd);
            seen[c.cmd as usize] = true;
            assert!(c.doit || c.dumpit);
            for a in c.policy {
                assert!(a.id >= 1 && a.id <= dev::MAX);
            }
        }
        for a in LEG_REQUEST {
            assert!(a.id >= 1 && a.id <= leg::MAX);
        }
    }
}
