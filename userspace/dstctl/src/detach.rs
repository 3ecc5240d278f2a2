// SPDX-License-Identifier: GPL-2.0

//! `dstctl detach` and `attach`: which leg the user means, and freezing
//! the filesystem mounted on a device around a detach.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use dst_proto::genl::LegKind;

use crate::cli::one_line;
use crate::model::Device;
use crate::netlink::{errno_suffix, strerror};

/// The index of the leg of `d` that `leg` names: its index (a plain
/// number), the leg as given at creation, its kernel disk (`sdb`) or
/// `/dev/` and its disk.  A path naming the same file as a local leg's
/// spec or disk node, as `canonical` resolves them (symbolic links, `..`),
/// names that leg too.  Indexes are the kernel's, which may have gaps
/// (legs removed).  Errors are one line, for the user.
pub fn resolve_leg(
    d: &Device,
    leg: &str,
    canonical: impl Fn(&Path) -> Option<PathBuf>,
) -> Result<u32, String> {
    if !leg.is_empty() && leg.bytes().all(|b| b.is_ascii_digit()) {
        let found = leg
            .parse::<u32>()
            .ok()
            .and_then(|i| d.legs.iter().find(|l| l.index == i));
        if let Some(l) = found {
            return Ok(l.index);
        }
        let mut indexes: Vec<u32> = d.legs.iter().map(|l| l.index).collect();
        indexes.sort_unstable();
        let name = one_line(&d.name);
        return Err(match indexes.as_slice() {
            [] => format!("{leg} is not a leg of {name}"),
            [only] => format!("{leg} is not a leg of {name} (its only leg is {only})"),
            all => {
                let all: Vec<String> = all.iter().map(u32::to_string).collect();
                format!(
                    "{leg} is not a leg of {name} (its legs are {})",
                    all.join(", ")
                )
            }
        });
    }
    let dev_node = |disk: &str| format!("/dev/{disk}");
    let tiers: [&dyn Fn(&crate::model::Leg) -> bool; 3] = [
        &|l| l.spec == leg,
        &|l| !l.disk.is_empty() && l.disk == leg,
        &|l| !l.disk.is_empty() && dev_node(&l.disk) == leg,
    ];
    for matches in tiers {
        if let Some(l) = d.legs.iter().find(|l| matches(l)) {
            return Ok(l.index);
        }
    }
    if leg.starts_with('/') || leg.starts_with('.') {
        if let Some(want) = canonical(Path::new(leg)) {
            let local = d
                .legs
                .iter()
                .filter(|l| l.kind.get() != Some(LegKind::Remote));
            for l in local {
                let mut paths = vec![l.spec.clone()];
                if !l.disk.is_empty() {
                    paths.push(dev_node(&l.disk));
                }
                if paths
                    .iter()
                    .any(|p| canonical(Path::new(p)).as_ref() == Some(&want))
                {
                    return Ok(l.index);
                }
            }
        }
    }
    Err(format!(
        "{} is not a leg of {}",
        one_line(leg),
        one_line(&d.name)
    ))
}

/// One line of `/proc/self/mountinfo`, what matters of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// `major:minor` of the mounted filesystem's device.
    pub dev: (u32, u32),
    /// Where it is mounted.
    pub point: PathBuf,
    /// The mount source, e.g. `/dev/dst0`.
    pub source: PathBuf,
}

/// Undoes the octal escapes (`\040` for a space) of mountinfo fields.
fn unescape(field: &[u8]) -> PathBuf {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        let octal = field.get(i + 1..i + 4).filter(|d| {
            field[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)) && d[0] <= b'3'
        });
        match octal {
            Some(d) => {
                out.push((d[0] - b'0') << 6 | (d[1] - b'0') << 3 | (d[2] - b'0'));
                i += 4;
            }
            None => {
                out.push(field[i]);
                i += 1;
            }
        }
    }
    PathBuf::from(OsStr::from_bytes(&out))
}

/// The mounts listed in the text of `/proc/self/mountinfo`; lines that do
/// not parse are skipped.
pub fn parse_mountinfo(text: &[u8]) -> Vec<Mount> {
    let mut mounts = Vec::new();
    for line in text.split(|&b| b == b'\n') {
        let fields: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
        // ID PARENT MAJOR:MINOR ROOT POINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE ...
        let Some(sep) = fields.iter().skip(6).position(|f| *f == b"-") else {
            continue;
        };
        let Some(source) = fields.get(6 + sep + 2) else {
            continue;
        };
        let dev = std::str::from_utf8(fields[2]).ok().and_then(|d| {
            let (major, minor) = d.split_once(':')?;
            Some((major.parse().ok()?, minor.parse().ok()?))
        });
        if let Some(dev) = dev {
            mounts.push(Mount {
                dev,
                point: unescape(fields[4]),
                source: unescape(source),
            });
        }
    }
    mounts
}

/// Where the block device `node` (`/dev/dst0`), whose number is `rdev` if
/// known, is mounted: the first mount of its device number, or else of
/// that source.
pub fn find_mount(mounts: &[Mount], node: &Path, rdev: Option<(u32, u32)>) -> Option<PathBuf> {
    rdev.and_then(|r| mounts.iter().find(|m| m.dev == r))
        .or_else(|| mounts.iter().find(|m| m.source == node))
        .map(|m| m.point.clone())
}

/// An OS error as dstctl shows errors: `device or resource busy (EBUSY)`.
pub fn os_error(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(errno) => strerror(errno) + &errno_suffix(errno),
        None => e.to_string(),
    }
}

/// Where the device node `node` is mounted, from `/proc/self/mountinfo`.
pub fn mount_point(node: &str) -> Result<PathBuf, String> {
    let rdev = fs::metadata(node)
        .ok()
        .filter(|m| m.file_type().is_block_device())
        .map(|m| (libc::major(m.rdev()), libc::minor(m.rdev())));
    let text = fs::read("/proc/self/mountinfo")
        .map_err(|e| format!("cannot read /proc/self/mountinfo: {}", os_error(&e)))?;
    find_mount(&parse_mountinfo(&text), Path::new(node), rdev).ok_or_else(|| {
        format!(
            "{} is not mounted; --freeze needs a mounted filesystem",
            one_line(node)
        )
    })
}

/// `_IOWR('X', 119, int)`: freeze the filesystem of an open file.
const FIFREEZE: u32 = 0xC004_5877;
/// `_IOWR('X', 120, int)`: thaw it.
const FITHAW: u32 = 0xC004_5878;

/// Signals that would end or stop dstctl while a filesystem is frozen,
/// leaving every writer to it blocked: held until it is thawed.
const HELD_SIGNALS: [libc::c_int; 5] = [
    libc::SIGINT,
    libc::SIGTERM,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGTSTP,
];

/// A frozen filesystem; thawed by [`Frozen::thaw`], or when dropped.
/// Signals that would end dstctl are held meanwhile, and delivered once
/// it is thawed.
#[derive(Debug)]
pub struct Frozen {
    dir: File,
    point: PathBuf,
    old_mask: libc::sigset_t,
    thawed: bool,
}

fn ioctl(f: &File, request: u32) -> io::Result<()> {
    let mut arg: libc::c_int = 0;
    // SAFETY: FIFREEZE and FITHAW take an int argument, which they ignore.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), request as libc::Ioctl, &mut arg) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn set_mask(how: libc::c_int, set: &libc::sigset_t) -> libc::sigset_t {
    // SAFETY: both sets are valid; a zeroed sigset_t is a valid output.
    unsafe {
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::pthread_sigmask(how, set, &mut old);
        old
    }
}

impl Frozen {
    /// Freezes the filesystem mounted on `point`.
    pub fn freeze(point: &Path) -> Result<Frozen, String> {
        let shown = one_line(&point.to_string_lossy());
        let dir =
            File::open(point).map_err(|e| format!("cannot open {shown}: {}", os_error(&e)))?;
        // SAFETY: a zeroed sigset_t is valid input to sigemptyset.
        let held = unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            for s in HELD_SIGNALS {
                libc::sigaddset(&mut set, s);
            }
            set
        };
        let old_mask = set_mask(libc::SIG_BLOCK, &held);
        if let Err(e) = ioctl(&dir, FIFREEZE) {
            set_mask(libc::SIG_SETMASK, &old_mask);
            return Err(format!(
                "cannot freeze the filesystem on {shown}: {}",
                os_error(&e)
            ));
        }
        Ok(Frozen {
            dir,
            point: point.to_owned(),
            old_mask,
            thawed: false,
        })
    }

    fn thaw_once(&mut self) -> io::Result<()> {
        if self.thawed {
            return Ok(());
        }
        self.thawed = true;
        let r = ioctl(&self.dir, FITHAW);
        set_mask(libc::SIG_SETMASK, &self.old_mask);
        r
    }

    /// Thaws the filesystem.
    pub fn thaw(mut self) -> Result<(), String> {
        self.thaw_once().map_err(|e| {
            let point = one_line(&self.point.to_string_lossy());
            format!(
                "thawing the filesystem on {point} failed: {}; \
                 thaw it with: fsfreeze -u {point}",
                os_error(&e)
            )
        })
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        let _ = self.thaw_once();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Leg, Wire};

    fn device() -> Device {
        let local = |index: u32, spec: &str, disk: &str| Leg {
            index,
            spec: spec.into(),
            disk: disk.into(),
            kind: Wire::new(LegKind::Local as u8),
            ..Leg::default()
        };
        let mut legs = vec![
            local(0, "/dev/ram0", "ram0"),
            local(1, "/dev/disk/by-id/ata-X", "sdb"),
        ];
        legs.push(Leg {
            index: 2,
            spec: "nbd://127.0.0.1:10809/x".into(),
            kind: Wire::new(LegKind::Remote as u8),
            ..Leg::default()
        });
        Device {
            name: "r1".into(),
            legs,
            ..Device::default()
        }
    }

    /// Resolves paths as if `/dev/disk/by-id/ata-X` and `/dev/mapper/b`
    /// were links to `/dev/sdb`, `/dev/./ram0` is `/dev/ram0`, and only
    /// those and the `/dev/` nodes of the legs existed.
    fn canonical(p: &Path) -> Option<PathBuf> {
        let p = p.to_str()?;
        let c = match p {
            "/dev/disk/by-id/ata-X" | "/dev/mapper/b" | "/dev/sdb" => "/dev/sdb",
            "/dev/./ram0" | "/dev/ram0" => "/dev/ram0",
            _ => return None,
        };
        Some(c.into())
    }

    #[test]
    fn legs_by_index_spec_and_disk() {
        let d = device();
        let find = |leg: &str| resolve_leg(&d, leg, canonical);
        assert_eq!(find("0"), Ok(0));
        assert_eq!(find("2"), Ok(2));
        assert_eq!(find("/dev/ram0"), Ok(0));
        assert_eq!(find("ram0"), Ok(0));
        assert_eq!(find("/dev/disk/by-id/ata-X"), Ok(1));
        assert_eq!(find("sdb"), Ok(1));
        assert_eq!(find("/dev/sdb"), Ok(1));
        assert_eq!(find("nbd://127.0.0.1:10809/x"), Ok(2));
        // The same file under another path.
        assert_eq!(find("/dev/mapper/b"), Ok(1));
        assert_eq!(find("/dev/./ram0"), Ok(0));
    }

    #[test]
    fn not_a_leg() {
        let d = device();
        let find = |leg: &str| resolve_leg(&d, leg, canonical);
        assert_eq!(
            find("/dev/ram5"),
            Err("/dev/ram5 is not a leg of r1".into())
        );
        assert_eq!(
            find("3"),
            Err("3 is not a leg of r1 (its legs are 0, 1, 2)".into())
        );
        assert_eq!(
            find("99999999999999999999"),
            Err("99999999999999999999 is not a leg of r1 (its legs are 0, 1, 2)".into())
        );
        assert_eq!(
            find("nbd://127.0.0.1/x"),
            Err("nbd://127.0.0.1/x is not a leg of r1".into())
        );
        assert_eq!(find("ram"), Err("ram is not a leg of r1".into()));
        assert_eq!(find("a\nb"), Err("a\\nb is not a leg of r1".into()));
        // Paths that do not resolve match nothing.
        assert_eq!(find("/nowhere"), Err("/nowhere is not a leg of r1".into()));
        let empty = Device {
            name: "e".into(),
            ..Device::default()
        };
        assert_eq!(
            resolve_leg(&empty, "0", canonical),
            Err("0 is not a leg of e".into())
        );
    }

    #[test]
    fn kernel_indices_win_over_positions() {
        // Leg 0 removed (dstctl remove-leg): the others keep their indexes.
        let mut d = device();
        d.legs.remove(0);
        let find = |leg: &str| resolve_leg(&d, leg, canonical);
        assert_eq!(find("1"), Ok(1));
        assert_eq!(find("2"), Ok(2));
        assert_eq!(find("sdb"), Ok(1));
        assert_eq!(find("nbd://127.0.0.1:10809/x"), Ok(2));
        assert_eq!(
            find("0"),
            Err("0 is not a leg of r1 (its legs are 1, 2)".into())
        );
        assert_eq!(
            find("/dev/ram0"),
            Err("/dev/ram0 is not a leg of r1".into())
        );

        // Holes in the middle, a leg added after them, any order.
        let mut d = device();
        d.legs.remove(1);
        d.legs[1].index = 5;
        d.legs.swap(0, 1);
        let find = |leg: &str| resolve_leg(&d, leg, canonical);
        assert_eq!(find("5"), Ok(5));
        assert_eq!(find("nbd://127.0.0.1:10809/x"), Ok(5));
        assert_eq!(
            find("1"),
            Err("1 is not a leg of r1 (its legs are 0, 5)".into())
        );
        d.legs.truncate(1);
        assert_eq!(
            resolve_leg(&d, "0", canonical),
            Err("0 is not a leg of r1 (its only leg is 5)".into())
        );
    }

    const MOUNTINFO: &[u8] = b"\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
23 22 0:21 / /proc rw,nosuid shared:12 - proc proc rw
40 22 252:0 / /srv/my\\040data rw,relatime shared:20 - ext4 /dev/dst0 rw
41 22 252:0 /sub /bind rw,relatime shared:20 - ext4 /dev/dst0 rw
42 22 0:45 / /btr rw - btrfs /dev/dst1 rw
garbage
43 22 x:y / /bad rw - ext4 /dev/dst2 rw
";

    #[test]
    fn mountinfo() {
        let m = parse_mountinfo(MOUNTINFO);
        assert_eq!(m.len(), 5);
        assert_eq!(
            m[2],
            Mount {
                dev: (252, 0),
                point: "/srv/my data".into(),
                source: "/dev/dst0".into(),
            }
        );
        assert_eq!(m[1].source, Path::new("proc"));
        let find = |node: &str, rdev| find_mount(&m, Path::new(node), rdev);
        // By device number first, the first mount of it.
        assert_eq!(
            find("/dev/dst0", Some((252, 0))),
            Some("/srv/my data".into())
        );
        assert_eq!(find("/x/dst0", Some((252, 0))), Some("/srv/my data".into()));
        // By source when the number is unknown or not listed (btrfs).
        assert_eq!(find("/dev/dst1", Some((252, 1))), Some("/btr".into()));
        assert_eq!(find("/dev/dst0", None), Some("/srv/my data".into()));
        assert_eq!(find("/dev/dst3", Some((252, 3))), None);
        assert_eq!(find("/dev/dst2", Some((252, 2))), None);
    }

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape(b"/a\\040b\\011c\\134d"), Path::new("/a b\tc\\d"));
        assert_eq!(unescape(b"/a\\04"), Path::new("/a\\04"));
        assert_eq!(unescape(b"/a\\9999"), Path::new("/a\\9999"));
        assert_eq!(unescape(b"\\"), Path::new("\\"));
    }

    #[test]
    fn os_errors() {
        assert_eq!(
            os_error(&io::Error::from_raw_os_error(libc::EBUSY)),
            "device or resource busy (EBUSY)"
        );
        assert_eq!(os_error(&io::Error::other("x")), "x");
    }

    #[test]
    fn unmounted_device() {
        assert_eq!(
            mount_point("/dev/dst-none-such"),
            Err("/dev/dst-none-such is not mounted; --freeze needs a mounted filesystem".into())
        );
    }
}
