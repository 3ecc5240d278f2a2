// SPDX-License-Identifier: GPL-2.0

//! `dstctl`: create, remove, list and inspect dst block devices.
//!
//! Talks to the `dst` kernel module over generic netlink; the family, its
//! attributes and their encoding come from the shared `dst-proto` crate.

mod cli;
mod client;
mod detach;
mod export;
mod model;
mod monitor;
mod netlink;
mod output;
mod remote;
mod resync;
mod units;

use std::fmt;
use std::io::{self, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;

use crate::cli::{one_line, Cli, Command};
use crate::client::Dst;
use crate::model::{LegRequest, WriteMostly};

/// Why `dstctl` failed; shown as one line on stderr.
#[derive(Debug)]
enum Failure {
    /// The command line asks for something impossible (exit code 2).
    Usage(String),
    /// The `dst` generic netlink family is not registered.
    NotLoaded,
    /// The kernel refused or the transport failed, while doing `.0`.
    Op(String, netlink::Error),
    /// Something else failed (a host name did not resolve, the module
    /// went away); the whole line.
    Failed(String),
}

impl Failure {
    fn exit_code(&self) -> u8 {
        match self {
            Failure::Usage(_) => 2,
            Failure::NotLoaded | Failure::Op(..) | Failure::Failed(_) => 1,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Usage(m) | Failure::Failed(m) => f.write_str(m),
            Failure::NotLoaded => f.write_str(
                "the dst kernel module is not loaded (try: modprobe dst / insmod dst.ko)",
            ),
            Failure::Op(context, e) => {
                write!(f, "{context}: {}", one_line(&e.to_string()))?;
                if let netlink::Error::Refused(r) = e {
                    if r.errno == libc::EPERM {
                        f.write_str("; dstctl must run as root (it needs CAP_SYS_ADMIN)")?;
                    }
                }
                Ok(())
            }
        }
    }
}

/// Runs the command and returns what to print on stdout.
fn run(cli: &Cli) -> Result<String, Failure> {
    let context = cli.command.context();
    let usage = |m: String| Failure::Usage(format!("{context}: {}", one_line(&m)));
    let checked = cli.command.validate().map_err(usage)?;
    let op = |e| Failure::Op(context.clone(), e);
    let failed = |m: String| Failure::Failed(format!("{context}: {}", one_line(&m)));
    // Host names are resolved before the kernel is asked anything; a
    // name that does not resolve is an operation failure (exit code 1).
    let legs = checked
        .legs
        .into_iter()
        .map(|l| l.resolve(remote::resolve))
        .collect::<Result<Vec<_>, _>>()
        .map_err(failed)?;
    let export = checked
        .export
        .map(|e| e.resolve(remote::resolve))
        .transpose()
        .map_err(failed)?;
    let settings = checked.settings;

    let mut dst = Dst::connect().map_err(|e| match e {
        netlink::Error::Refused(r) if r.errno == libc::ENOENT => Failure::NotLoaded,
        e => op(e),
    })?;
    // A device and the index of its leg `leg`, as typed.
    let device_leg = |dst: &mut Dst, device: &str, leg: &str| {
        let d = dst.get(device).map_err(op)?;
        let index = detach::resolve_leg(&d, leg, canonical).map_err(failed)?;
        Ok::<_, Failure>((d, index))
    };
    let json = cli.json;
    Ok(match &cli.command {
        Command::Create(a) => {
            let d = dst
                .create(&a.name, a.target(), &settings, &legs)
                .map_err(|e| op(name_legs(e, &legs)))?;
            if json {
                output::json(&d)
            } else {
                format!("{}\n", d.path)
            }
        }
        Command::Remove { name } => {
            dst.remove(name).map_err(op)?;
            String::new()
        }
        Command::Export(a) => {
            let request = export.as_ref().expect("resolved above");
            let d = dst.export(&a.device, request).map_err(op)?;
            reply_json(&mut dst, &a.device, d, json).map_err(op)?
        }
        Command::Unexport(a) => {
            dst.unexport(&a.device, a.name.as_deref()).map_err(op)?;
            String::new()
        }
        Command::Detach(a) => {
            let (d, index) = device_leg(&mut dst, &a.device, &a.leg)?;
            // Frozen before the detach, thawed after it whatever happened.
            let frozen = if a.freeze {
                let point = detach::mount_point(&d.path).map_err(failed)?;
                Some(detach::Frozen::freeze(&point).map_err(failed)?)
            } else {
                None
            };
            let detached = dst.detach(&a.device, index);
            let thawed = frozen.map_or(Ok(()), detach::Frozen::thaw);
            let d = match (detached, thawed) {
                (Ok(d), Ok(())) => d,
                (Ok(_), Err(t)) => return Err(failed(format!("leg {index} is detached, but {t}"))),
                (Err(e), Ok(())) => return Err(op(e)),
                (Err(e), Err(t)) => return Err(Failure::Failed(format!("{}; and {t}", op(e)))),
            };
            reply_json(&mut dst, &a.device, d, json).map_err(op)?
        }
        Command::Attach(a) => {
            let (_, index) = device_leg(&mut dst, &a.device, &a.leg)?;
            let d = dst.attach(&a.device, index, a.full).map_err(op)?;
            reply_json(&mut dst, &a.device, d, json).map_err(op)?
        }
        Command::Add(a) => {
            let [leg] = legs.as_slice() else {
                unreachable!("dstctl add plans one leg");
            };
            let d = dst
                .add_leg(&a.device, leg)
                .map_err(|e| op(name_legs(e, &legs)))?;
            reply_json(&mut dst, &a.device, d, json).map_err(op)?
        }
        Command::RemoveLeg(a) => {
            let (_, index) = device_leg(&mut dst, &a.device, &a.leg)?;
            let d = dst.remove_leg(&a.device, index).map_err(op)?;
            reply_json(&mut dst, &a.device, d, json).map_err(op)?
        }
        Command::Set(a) => {
            let write_mostly = match a.write_mostly_change() {
                Some((leg, on)) => {
                    let (_, leg) = device_leg(&mut dst, &a.device, leg)?;
                    Some(WriteMostly { leg, on })
                }
                None => None,
            };
            let d = dst
                .set(&a.device, &settings.limits, write_mostly)
                .map_err(op)?;
            reply_json(&mut dst, &a.device, d, json).map_err(op)?
        }
        Command::List => {
            let devices = dst.list().map_err(op)?;
            if json {
                output::json(&devices)
            } else {
                output::list(&devices)
            }
        }
        Command::Status { name: Some(name) } => {
            let d = dst.get(name).map_err(op)?;
            if json {
                output::json(&d)
            } else {
                output::status(std::slice::from_ref(&d), tty())
            }
        }
        Command::Status { name: None } => {
            let devices = dst.list().map_err(op)?;
            if json {
                output::json(&devices)
            } else {
                output::status(&devices, tty())
            }
        }
        Command::Monitor { name } => match monitor::run(&mut dst, name.clone(), json) {
            Ok(()) => String::new(),
            Err(monitor::Stop::Netlink(e)) => return Err(op(e)),
            Err(monitor::Stop::Unloaded) => {
                return Err(Failure::Failed(format!(
                    "{context}: the dst kernel module was unloaded"
                )))
            }
            Err(monitor::Stop::Output(e)) => {
                return Err(Failure::Failed(format!("{context}: {e}")))
            }
        },
    })
}

/// What to print after a command that changed device `name`: nothing, or
/// with `json` the device, from the kernel's `reply` or asked for if it
/// has none.
fn reply_json(
    dst: &mut Dst,
    name: &str,
    reply: Option<model::Device>,
    json: bool,
) -> Result<String, netlink::Error> {
    if !json {
        return Ok(String::new());
    }
    let d = match reply {
        Some(d) => d,
        None => dst.get(name)?,
    };
    Ok(output::json(&d))
}

/// The canonical form of a path that exists (links resolved).
fn canonical(p: &Path) -> Option<PathBuf> {
    std::fs::canonicalize(p).ok()
}

/// Whether stdout is a terminal (which gets progress bars).
fn tty() -> bool {
    io::stdout().is_terminal()
}

/// The kernel names a leg by position (`leg #2`) where the leg as typed
/// would not leave room for the reason in the 80 bytes of an extended ack;
/// put the leg as typed back.
fn name_legs(e: netlink::Error, legs: &[LegRequest]) -> netlink::Error {
    let netlink::Error::Refused(mut r) = e else {
        return e;
    };
    if let Some(m) = &r.message {
        r.message = Some(expand_leg_numbers(m, |n| {
            legs.get(n.checked_sub(1)?).map(|l| l.spec.as_str())
        }));
    }
    netlink::Error::Refused(r)
}

/// Replaces each `leg #N` in `msg` by `leg SPEC` where `spec(N)` knows it.
fn expand_leg_numbers<'a>(msg: &str, spec: impl Fn(usize) -> Option<&'a str>) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut rest = msg;
    while let Some(i) = rest.find("leg #") {
        let (head, tail) = rest.split_at(i + "leg ".len());
        out.push_str(head);
        let digits = tail[1..].bytes().take_while(u8::is_ascii_digit).count();
        match tail[1..1 + digits].parse().ok().and_then(&spec) {
            Some(s) => {
                out.push_str(&one_line(s));
                rest = &tail[1 + digits..];
            }
            None => {
                out.push('#');
                rest = &tail[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

fn main() -> ExitCode {
    // Usage errors exit with code 2, --help and --version with 0.
    let cli = Cli::parse();
    match run(&cli) {
        Ok(out) => match io::stdout().lock().write_all(out.as_bytes()) {
            Ok(()) => ExitCode::SUCCESS,
            // `dstctl list | head -1`: nobody is reading any more.
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("dstctl: {}: {e}", cli.command.context());
                ExitCode::FAILURE
            }
        },
        Err(f) => {
            eprintln!("dstctl: {f}");
            ExitCode::from(f.exit_code())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::Refusal;

    fn run_args(args: &[&str]) -> Result<String, Failure> {
        let cli = Cli::try_parse_from(std::iter::once("dstctl").chain(args.iter().copied()))
            .expect("valid syntax");
        run(&cli)
    }

    #[test]
    fn leg_numbers_expanded() {
        let spec = |n: usize| ["nbd://a/x", "/dev/ram0"].get(n.wrapping_sub(1)).copied();
        assert_eq!(
            expand_leg_numbers("leg #1: connection refused", spec),
            "leg nbd://a/x: connection refused"
        );
        assert_eq!(
            expand_leg_numbers("leg #2: busy", spec),
            "leg /dev/ram0: busy"
        );
        assert_eq!(expand_leg_numbers("leg #9: what", spec), "leg #9: what");
        assert_eq!(expand_leg_numbers("leg #: x leg #", spec), "leg #: x leg #");
        assert_eq!(expand_leg_numbers("no legs", spec), "no legs");
    }

    #[test]
    fn bad_names_are_usage_errors() {
        for args in [
            &["create", "a/b", "--mirror", "/dev/ram0"][..],
            &["create", "--linear", "--", "-x", "/dev/ram0"],
            &["remove", ".hidden"],
            &["status", "a b"],
        ] {
            // Refused before any socket is opened.
            let f = run_args(args).unwrap_err();
            assert_eq!(f.exit_code(), 2, "{args:?}");
            assert!(matches!(f, Failure::Usage(_)));
        }
        // Remote legs are checked before anything is resolved or sent.
        for args in [
            &["create", "r1", "--mirror", "nbd://h/x?retries=1"][..],
            &["create", "r1", "--mirror", "nbds://h/x"],
            &["create", "r1", "--mirror", "/dev/sdb", "--timeout", "5"],
            &["create", "r1", "--mirror", "nbd://h/x", "--dead-time", "1y"],
            &["monitor", "a/b"],
        ] {
            let f = run_args(args).unwrap_err();
            assert_eq!(f.exit_code(), 2, "{args:?}");
            assert!(!f.to_string().contains('\n'));
        }
        // Whole lines.  Exports' options, before any name is resolved.
        for (args, want) in [
            (
                &["export", "r1", "--listen", "nowhere.invalid", "--allow", "10.0.0.0/33"][..],
                "export r1: --allow 10.0.0.0/33: prefix length 33 is out of range for IPv4 (0 to 32)",
            ),
            (
                &["export", "r1", "--listen", "nowhere.invalid:0"],
                "export r1: --listen nowhere.invalid:0: the port must be a number from 1 to 65535",
            ),
            (
                &["export", "a/b", "--listen", "127.0.0.1"],
                "export a/b: device name may only hold letters, digits, '_', '-' and '.'",
            ),
            (
                &["unexport", ".r1"],
                "unexport .r1: device name must not start with '-' or '.'",
            ),
            // detach and attach: the names and LEG, before any socket.
            (
                &["detach", "a/b", "0"],
                "detach a/b: device name may only hold letters, digits, '_', '-' and '.'",
            ),
            (
                &["attach", ".r1", "/dev/ram1", "--full"],
                "attach .r1: device name must not start with '-' or '.'",
            ),
            (&["detach", "r1", "", "--freeze"], "detach r1: LEG is empty"),
            (&["attach", "r1", ""], "attach r1: LEG is empty"),
            (&["remove-leg", "r1", ""], "remove-leg r1: LEG is empty"),
            (
                &["remove-leg", "a b", "0"],
                "remove-leg a b: device name may only hold letters, digits, '_', '-' and '.'",
            ),
            // add: the leg as for create, before anything is resolved or sent.
            (
                &["add", "-", "/dev/ram1"],
                "add -: device name must not start with '-' or '.'",
            ),
            (&["add", "r1", ""], "add r1: empty leg"),
            (
                &["add", "r1", "/dev/ram1", "--timeout", "5"],
                "add r1: --timeout applies to remote legs (nbd://...), and none is given",
            ),
            (
                &["add", "r1", "nbd://nowhere.invalid/x", "--dead-time", "1y"],
                "add r1: --dead-time: invalid duration \"1y\" (e.g. 30, 30s, 500ms, 2m)",
            ),
            (
                &["add", "r1", "nbd://nowhere.invalid/x?retries=1"],
                "add r1: leg nbd://nowhere.invalid/x?retries=1: unknown parameter retries \
                 (known: timeout, dead-time, backoff-max, resync, conns)",
            ),
            // Resync settings: checked, and mirrors only, before any socket.
            (
                &[
                    "create",
                    "l",
                    "--linear",
                    "/dev/ram0",
                    "--region-size",
                    "64K",
                ],
                "create l: --region-size applies to mirrors (--mirror), not to --linear",
            ),
            (
                &[
                    "create",
                    "r1",
                    "--mirror",
                    "/dev/ram0",
                    "--region-size",
                    "3K",
                ],
                "create r1: --region-size 3K: region size must be a power of two \
                 from 4 KiB to 4 MiB",
            ),
            (
                &[
                    "create",
                    "r1",
                    "--mirror",
                    "nbd://h/x",
                    "--resync-rate",
                    "1.5G",
                ],
                "create r1: --resync-rate: invalid rate \"1.5G\" \
                 (e.g. 50M, 500K/s, 1G; 0 for no limit)",
            ),
            (
                &["set", "r1", "--resync-max", "1"],
                "set r1: --resync-max: 1 is out of range (1K/s to 4294967295K/s, or 0 for no limit)",
            ),
            (
                &["set", "a/b", "--resync-rate", "1M"],
                "set a/b: device name may only hold letters, digits, '_', '-' and '.'",
            ),
            // Write-mostly legs: mirrors only, one of the legs given, a
            // LEG for set; before any socket.
            (
                &[
                    "create",
                    "l",
                    "--linear",
                    "/dev/ram0",
                    "--write-mostly",
                    "0",
                ],
                "create l: --write-mostly applies to mirrors (--mirror), not to --linear",
            ),
            (
                &[
                    "create",
                    "r1",
                    "--mirror",
                    "/dev/ram0",
                    "/dev/ram1",
                    "--write-mostly",
                    "2",
                ],
                "create r1: --write-mostly 2: not one of the legs given",
            ),
            (
                &["set", "r1", "--no-write-mostly", "", "--resync-rate", "1M"],
                "set r1: --no-write-mostly: LEG is empty",
            ),
            // Two of the first checks, in full.
            (
                &["create", "r1", "--mirror", "nbds://h/x"],
                "create r1: leg nbds://h/x: nbds:// (NBD over TLS) is not supported",
            ),
            (
                &["create", "a/b", "--mirror", "/dev/ram0"],
                "create a/b: device name may only hold letters, digits, '_', '-' and '.'",
            ),
        ] {
            let f = run_args(args).unwrap_err();
            assert!(matches!(f, Failure::Usage(_)), "{args:?}");
            assert_eq!(f.exit_code(), 2, "{args:?}");
            assert_eq!(f.to_string(), want);
        }
    }

    #[test]
    fn error_lines() {
        let refused = |errno, message: Option<&str>| {
            netlink::Error::Refused(Refusal {
                errno,
                message: message.map(String::from),
                missing_attr: None,
            })
        };
        let f = Failure::Op(
            "create r1".into(),
            refused(libc::ENOENT, Some("leg /dev/ram9: no such block device")),
        );
        assert_eq!(
            f.to_string(),
            "create r1: leg /dev/ram9: no such block device (ENOENT)"
        );
        assert_eq!(f.exit_code(), 1);

        let f = Failure::Op("remove r1".into(), refused(libc::EBUSY, None));
        assert_eq!(f.to_string(), "remove r1: device or resource busy (EBUSY)");

        let f = Failure::Op("list".into(), refused(libc::EPERM, None));
        assert_eq!(
            f.to_string(),
            "list: operation not permitted (EPERM); dstctl must run as root (it needs CAP_SYS_ADMIN)"
        );

        let f = Failure::Op("list".into(), refused(libc::EINVAL, Some("two\nlines")));
        assert!(!f.to_string().contains('\n'));

        // What detach and attach add: an unknown leg, a detach with the
        // filesystem left thawed or not.
        let f = Failure::Failed("attach r1: /dev/ram5 is not a leg of r1".into());
        assert_eq!(f.exit_code(), 1);
        let f = Failure::Failed(format!(
            "{}; and thawing the filesystem on /mnt failed: x",
            Failure::Op(
                "detach r1".into(),
                refused(libc::EBUSY, Some("leg 0 is the last in-sync leg of r1"))
            )
        ));
        assert_eq!(
            f.to_string(),
            "detach r1: leg 0 is the last in-sync leg of r1 (EBUSY); \
             and thawing the filesystem on /mnt failed: x"
        );

        assert_eq!(Failure::NotLoaded.exit_code(), 1);
        let f = Failure::Failed("create r1: leg nbd://x/y: cannot resolve x: no address".into());
        assert_eq!(f.exit_code(), 1);
        assert_eq!(
            f.to_string(),
            "create r1: leg nbd://x/y: cannot resolve x: no address"
        );
    }
}
