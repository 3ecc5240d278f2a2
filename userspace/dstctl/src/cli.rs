// SPDX-License-Identifier: GPL-2.0

//! Command line: syntax (clap) and the checks made before asking the kernel.

use clap::{ArgGroup, Args, Parser, Subcommand};
use dst_proto::genl::{check_name, Target, LEG_SPEC_MAX, MAX_LEGS};

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

A LEG is the path of a block device, such as /dev/sdb or /dev/ram0.  Writes
to the dst device go to its legs: use block devices that nothing else uses
and whose contents you do not need.

Every command needs root (CAP_SYS_ADMIN) and the dst kernel module
(modprobe dst, or insmod dst.ko).";

const EXAMPLES: &str = "\
Examples:
  dstctl create r1 --mirror /dev/sdb /dev/sdc   two-way mirror, prints /dev/dst0
  dstctl create big --linear /dev/sdb /dev/sdc  one device spanning both disks
  dstctl list                                   one line per device
  dstctl status r1                              r1 and its legs in detail
  dstctl --json status                          every device, as JSON
  dstctl remove r1                              remove r1 (its legs are kept)";

const CREATE_LONG_ABOUT: &str = "\
Create a device from one or more legs and print its node (/dev/dstN).

Give exactly one of --mirror and --linear, then the legs in order.  A LEG is
the path of a block device (e.g. /dev/sdb); the kernel checks that it exists
and is not already in use.  At most 16 legs.";

const CREATE_EXAMPLES: &str = "\
Examples:
  dstctl create r1 --mirror /dev/sdb /dev/sdc
  dstctl create big --linear /dev/sdb /dev/sdc /dev/sdd
  dstctl --json create r1 --mirror /dev/ram0 /dev/ram1";

const STATUS_LONG_ABOUT: &str = "\
Show devices in detail: per device its node, target, size, state and
openers, then a table of its legs with their I/O counters.

Device states: ok (every leg in sync), degraded (working, but some leg is
not), failed (no I/O possible).  Leg states: in-sync (up to date, receives
every write), faulty (failed an I/O, no longer used).";

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
    #[command(long_about = CREATE_LONG_ABOUT, after_help = CREATE_EXAMPLES)]
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
}

/// Arguments of `dstctl create`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("target").required(true).args(["mirror", "linear"])))]
pub struct CreateArgs {
    /// Name of the new device: up to 31 letters, digits, '_', '-' or '.'
    pub name: String,

    /// Every leg holds a full copy of the data (RAID1)
    #[arg(long)]
    pub mirror: bool,

    /// The legs are concatenated in order
    #[arg(long)]
    pub linear: bool,

    /// Block devices to use, in order (e.g. /dev/sdb)
    #[arg(value_name = "LEG", required = true)]
    pub legs: Vec<String>,
}

impl CreateArgs {
    /// The target chosen by the flags.
    pub fn target(&self) -> Target {
        if self.mirror {
            Target::Mirror
        } else {
            Target::Linear
        }
    }
}

impl Command {
    /// Names the command for error messages: `create r1`, `list`.
    pub fn context(&self) -> String {
        let (verb, name) = match self {
            Command::Create(a) => ("create", Some(&a.name)),
            Command::Remove { name } => ("remove", Some(name)),
            Command::List => ("list", None),
            Command::Status { name } => ("status", name.as_ref()),
        };
        match name {
            Some(n) => format!("{verb} {}", one_line(n)),
            None => verb.to_owned(),
        }
    }

    /// Checks what the kernel would refuse anyway, to answer with a usage
    /// error.  Leg paths are not checked here: whether they exist, or are
    /// given twice, is for the kernel to say.
    pub fn validate(&self) -> Result<(), String> {
        let name = match self {
            Command::Create(a) => Some(&a.name),
            Command::Remove { name } => Some(name),
            Command::List => None,
            Command::Status { name } => name.as_ref(),
        };
        if let Some(name) = name {
            check_name(name)?;
        }
        if let Command::Create(a) = self {
            if a.legs.is_empty() {
                return Err("no legs given".into());
            }
            if a.legs.len() > MAX_LEGS {
                return Err(format!(
                    "{} legs given, a device has at most {MAX_LEGS}",
                    a.legs.len()
                ));
            }
            for spec in &a.legs {
                if spec.is_empty() {
                    return Err("empty leg".into());
                }
                if spec.len() > LEG_SPEC_MAX {
                    return Err(format!("leg longer than {LEG_SPEC_MAX} bytes"));
                }
            }
        }
        Ok(())
    }
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
        assert_eq!(cli.command.validate(), Ok(()));
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
        let check = |args: &[&str]| parse(args).unwrap().command.validate();
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
        let help = Cli::command().render_long_help().to_string();
        for word in ["mirror", "linear", "LEG", "Examples:", "--json"] {
            assert!(help.contains(word), "help lacks {word}");
        }
        let mut cmd = Cli::command();
        let create = cmd.find_subcommand_mut("create").unwrap();
        let help = create.render_long_help().to_string();
        for word in ["--mirror", "--linear", "<LEG>", "Examples:"] {
            assert!(help.contains(word), "create help lacks {word}");
        }
    }
}
