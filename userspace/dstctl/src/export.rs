// SPDX-License-Identifier: GPL-2.0

//! Exports: the `--listen` address and `--allow` networks of `dstctl
//! export`, checked as typed, then resolved into what the kernel is sent.
//!
//! The kernel does no name resolution: it reads `IP:PORT` or
//! `[IPv6]:PORT` for the listening address and `IP/PREFIX` for a network.
//! `dstctl` resolves a host name once, at export time, and always sends a
//! network with its prefix.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use dst_proto::genl::{ALLOW_MAX, EXPORT_NAME_MAX, MAX_ALLOW};
use dst_proto::nbd::DEFAULT_PORT;

use crate::cli::one_line;
use crate::model::ExportRequest;
use crate::remote::format_addr;

/// Where to listen, as typed: the host not resolved yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listen {
    /// `--listen` exactly as typed, for messages.
    pub typed: String,
    /// Host name or address literal (without brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
}

/// The port of `--listen`: a number from 1 to 65535.
fn parse_port(p: &str) -> Option<u16> {
    if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    p.parse().ok().filter(|&p| p != 0)
}

/// Whether `host` may be a host name (or an IPv4 address): letters,
/// digits, `-`, `_` and `.`, not starting with `-` or `.`.
fn host_name_like(host: &str) -> bool {
    !host.starts_with(['-', '.'])
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Parses `--listen`: `IP[:PORT]`, `[IPv6][:PORT]` or `HOST[:PORT]`, the
/// port defaulting to [`DEFAULT_PORT`].  An address is required: a port
/// alone is refused rather than taken to mean every address.
pub fn parse_listen(s: &str) -> Result<Listen, String> {
    let err = |m: &str| format!("--listen {}: {m}", one_line(s));
    let port_of = |p: Option<&str>| match p {
        None => Ok(DEFAULT_PORT),
        Some(p) => parse_port(p).ok_or_else(|| err("the port must be a number from 1 to 65535")),
    };
    let no_host = || {
        err(&format!(
            "give an address to listen on, e.g. 0.0.0.0:{DEFAULT_PORT} or [::]:{DEFAULT_PORT}"
        ))
    };
    if s.is_empty() {
        return Err(err("empty address"));
    }
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (inner, after) = rest
            .split_once(']')
            .ok_or_else(|| err("missing ']' after the IPv6 address"))?;
        if inner.contains('%') {
            return Err(err("scoped IPv6 addresses (with %) are not supported"));
        }
        if inner.parse::<Ipv6Addr>().is_err() {
            return Err(err(&format!("{} is not an IPv6 address", one_line(inner))));
        }
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or_else(|| err("expected :PORT after the bracketed address"))?,
            ),
        };
        (inner, port_of(port)?)
    } else if s.matches(':').count() > 1 {
        return Err(err(&format!(
            "write an IPv6 address in brackets, e.g. [::1]:{DEFAULT_PORT}"
        )));
    } else {
        let (host, port) = match s.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        };
        // `:10809`, or `10809` (which getaddrinfo would read as 0.0.42.57).
        if host.is_empty() || host.bytes().all(|b| b.is_ascii_digit()) {
            return Err(no_host());
        }
        if !host_name_like(host) {
            return Err(err(&format!(
                "{} is neither an IP address nor a host name",
                one_line(host)
            )));
        }
        (host, port_of(port)?)
    };
    Ok(Listen {
        typed: s.to_owned(),
        host: host.to_owned(),
        port,
    })
}

/// Parses one `--allow`: `IP/PREFIX`, or `IP` for that address alone; the
/// result is `IP/PREFIX` with the bits past the prefix cleared
/// (`10.1.2.3/8` gives `10.0.0.0/8`).
pub fn parse_allow(s: &str) -> Result<String, String> {
    let err = |m: &str| format!("--allow {}: {m}", one_line(s));
    let (addr, prefix) = match s.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (s, None),
    };
    let ip: IpAddr = addr.parse().map_err(|_| {
        err("not a network: expected IP/PREFIX (10.0.0.0/8, fd00::/64) or an IP address")
    })?;
    let (family, max) = match ip {
        IpAddr::V4(_) => ("IPv4", 32),
        IpAddr::V6(_) => ("IPv6", 128),
    };
    let prefix = match prefix {
        None => max,
        Some(p) => {
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(err(&format!(
                    "the prefix length must be a number from 0 to {max}"
                )));
            }
            match p.parse::<u32>() {
                Ok(n) if n <= max => n,
                _ => {
                    return Err(err(&format!(
                        "prefix length {} is out of range for {family} (0 to {max})",
                        one_line(p)
                    )))
                }
            }
        }
    };
    let net: IpAddr = match ip {
        IpAddr::V4(a) => {
            let mask = u32::MAX.checked_shl(32 - prefix).unwrap_or(0);
            Ipv4Addr::from(u32::from(a) & mask).into()
        }
        IpAddr::V6(a) => {
            let mask = u128::MAX.checked_shl(128 - prefix).unwrap_or(0);
            Ipv6Addr::from(u128::from(a) & mask).into()
        }
    };
    let out = format!("{net}/{prefix}");
    if out.len() > ALLOW_MAX {
        return Err(err(&format!("longer than {ALLOW_MAX} bytes")));
    }
    Ok(out)
}

/// Checks an export name given with `--name`.
pub fn check_export_name(name: &str) -> Result<(), String> {
    if name.len() > EXPORT_NAME_MAX {
        return Err(format!(
            "--name: export name longer than {EXPORT_NAME_MAX} bytes"
        ));
    }
    Ok(())
}

/// An export, checked but not resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportPlan {
    /// Where to listen.
    pub listen: Listen,
    /// The export name; `None` leaves the kernel's default (the device
    /// name).
    pub name: Option<String>,
    /// Clients may not write.
    pub read_only: bool,
    /// Networks allowed to connect, as `IP/PREFIX`, without duplicates.
    pub allow: Vec<String>,
}

impl ExportPlan {
    /// Checks the options of `dstctl export` as typed.
    pub fn parse(
        listen: &str,
        name: Option<&str>,
        read_only: bool,
        allow: &[String],
    ) -> Result<ExportPlan, String> {
        let listen = parse_listen(listen)?;
        if let Some(name) = name {
            check_export_name(name)?;
        }
        if allow.len() > MAX_ALLOW {
            return Err(format!(
                "{} --allow networks given, an export has at most {MAX_ALLOW}",
                allow.len()
            ));
        }
        let mut nets: Vec<String> = Vec::with_capacity(allow.len());
        for a in allow {
            let net = parse_allow(a)?;
            if !nets.contains(&net) {
                nets.push(net);
            }
        }
        Ok(ExportPlan {
            listen,
            name: name.map(str::to_owned),
            read_only,
            allow: nets,
        })
    }

    /// Resolves the listening host with `resolve`, giving what the kernel
    /// is sent.
    pub fn resolve(
        self,
        resolve: impl Fn(&str, u16) -> Result<SocketAddr, String>,
    ) -> Result<ExportRequest, String> {
        let listen = resolve(&self.listen.host, self.listen.port)
            .and_then(format_addr)
            .map_err(|m| format!("--listen {}: {m}", one_line(&self.listen.typed)))?;
        Ok(ExportRequest {
            listen,
            name: self.name,
            read_only: self.read_only,
            allow: self.allow,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote::resolve;

    fn listen(s: &str) -> (String, u16) {
        let l = parse_listen(s).unwrap();
        (l.host, l.port)
    }

    #[test]
    fn listen_addresses() {
        assert_eq!(listen("127.0.0.1:10900"), ("127.0.0.1".into(), 10900));
        assert_eq!(listen("127.0.0.1"), ("127.0.0.1".into(), 10809));
        assert_eq!(listen("0.0.0.0:1"), ("0.0.0.0".into(), 1));
        assert_eq!(listen("[::1]:65535"), ("::1".into(), 65535));
        assert_eq!(listen("[::]"), ("::".into(), 10809));
        assert_eq!(listen("[fd00::2]:2000"), ("fd00::2".into(), 2000));
        assert_eq!(
            listen("store-1.example:2000"),
            ("store-1.example".into(), 2000)
        );
        assert_eq!(listen("localhost"), ("localhost".into(), 10809));
        assert_eq!(parse_listen("h:7").unwrap().typed, "h:7");
    }

    #[test]
    fn bad_listen_addresses() {
        for (s, want) in [
            ("", "--listen : empty address"),
            (
                ":10809",
                "--listen :10809: give an address to listen on, e.g. 0.0.0.0:10809 or [::]:10809",
            ),
            (
                "10809",
                "--listen 10809: give an address to listen on, e.g. 0.0.0.0:10809 or [::]:10809",
            ),
            (
                "1.2.3.4:0",
                "--listen 1.2.3.4:0: the port must be a number from 1 to 65535",
            ),
            (
                "1.2.3.4:65536",
                "--listen 1.2.3.4:65536: the port must be a number from 1 to 65535",
            ),
            (
                "1.2.3.4:",
                "--listen 1.2.3.4:: the port must be a number from 1 to 65535",
            ),
            (
                "h:+80",
                "--listen h:+80: the port must be a number from 1 to 65535",
            ),
            (
                "h:nbd",
                "--listen h:nbd: the port must be a number from 1 to 65535",
            ),
            (
                "::1",
                "--listen ::1: write an IPv6 address in brackets, e.g. [::1]:10809",
            ),
            (
                "fd00::1:10809",
                "--listen fd00::1:10809: write an IPv6 address in brackets, e.g. [::1]:10809",
            ),
            ("[::1", "--listen [::1: missing ']' after the IPv6 address"),
            (
                "[::1]10809",
                "--listen [::1]10809: expected :PORT after the bracketed address",
            ),
            (
                "[1.2.3.4]:1",
                "--listen [1.2.3.4]:1: 1.2.3.4 is not an IPv6 address",
            ),
            (
                "[fe80::1%eth0]:1",
                "--listen [fe80::1%eth0]:1: scoped IPv6 addresses (with %) are not supported",
            ),
            (
                "[::1]:0",
                "--listen [::1]:0: the port must be a number from 1 to 65535",
            ),
            (
                "a b:1",
                "--listen a b:1: a b is neither an IP address nor a host name",
            ),
            (
                "-h:1",
                "--listen -h:1: -h is neither an IP address nor a host name",
            ),
            (
                "a/b",
                "--listen a/b: a/b is neither an IP address nor a host name",
            ),
        ] {
            assert_eq!(parse_listen(s).unwrap_err(), want, "{s}");
        }
        assert!(!parse_listen("x\ny:1").unwrap_err().contains('\n'));
    }

    #[test]
    fn allowed_networks() {
        for (s, want) in [
            ("10.0.0.0/8", "10.0.0.0/8"),
            ("10.1.2.3/8", "10.0.0.0/8"),
            ("192.168.1.7", "192.168.1.7/32"),
            ("192.168.1.7/32", "192.168.1.7/32"),
            ("0.0.0.0/0", "0.0.0.0/0"),
            ("1.2.3.4/0", "0.0.0.0/0"),
            ("::1", "::1/128"),
            ("::1/128", "::1/128"),
            ("FD00:0:0:0::5/64", "fd00::/64"),
            ("2001:db8:ffff::1/33", "2001:db8:8000::/33"),
            ("::/0", "::/0"),
            ("ffff:ffff::/1", "8000::/1"),
            ("10.0.0.0/008", "10.0.0.0/8"),
        ] {
            assert_eq!(parse_allow(s).as_deref(), Ok(want), "{s}");
        }
        let longest = parse_allow("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff").unwrap();
        assert!(longest.len() <= ALLOW_MAX, "{longest}");
    }

    #[test]
    fn bad_networks() {
        let not_net = "not a network: expected IP/PREFIX (10.0.0.0/8, fd00::/64) or an IP address";
        for (s, want) in [
            (
                "10.0.0.0/33",
                "--allow 10.0.0.0/33: prefix length 33 is out of range for IPv4 (0 to 32)".into(),
            ),
            (
                "::/129",
                "--allow ::/129: prefix length 129 is out of range for IPv6 (0 to 128)".into(),
            ),
            (
                "::/99999999999999999999",
                "--allow ::/99999999999999999999: prefix length 99999999999999999999 \
                 is out of range for IPv6 (0 to 128)"
                    .into(),
            ),
            (
                "10.0.0.0/",
                "--allow 10.0.0.0/: the prefix length must be a number from 0 to 32".into(),
            ),
            (
                "10.0.0.0/-1",
                "--allow 10.0.0.0/-1: the prefix length must be a number from 0 to 32".into(),
            ),
            (
                "::/+64",
                "--allow ::/+64: the prefix length must be a number from 0 to 128".into(),
            ),
            (
                "10.0.0.0/8/8",
                "--allow 10.0.0.0/8/8: the prefix length must be a number from 0 to 32".into(),
            ),
            ("10.0.0/8", format!("--allow 10.0.0/8: {not_net}")),
            ("10.0.0.256", format!("--allow 10.0.0.256: {not_net}")),
            ("localhost", format!("--allow localhost: {not_net}")),
            ("", format!("--allow : {not_net}")),
            ("/8", format!("--allow /8: {not_net}")),
            ("[::1]/128", format!("--allow [::1]/128: {not_net}")),
            ("fe80::1%2/64", format!("--allow fe80::1%2/64: {not_net}")),
        ] {
            assert_eq!(parse_allow(s).unwrap_err(), want, "{s}");
        }
    }

    fn plan(listen: &str, name: Option<&str>, allow: &[&str]) -> Result<ExportPlan, String> {
        let allow: Vec<String> = allow.iter().map(|s| s.to_string()).collect();
        ExportPlan::parse(listen, name, false, &allow)
    }

    #[test]
    fn plans() {
        let p = plan("[::1]", None, &["10.0.0.0/8", "10.1.0.0/8", "::1"]).unwrap();
        // Duplicates (once normalized) are sent once.
        assert_eq!(p.allow, ["10.0.0.0/8", "::1/128"]);
        assert_eq!(p.name, None);

        let many: Vec<String> = (0..=MAX_ALLOW).map(|i| format!("10.0.{i}.0/24")).collect();
        let refs: Vec<&str> = many.iter().map(String::as_str).collect();
        assert_eq!(
            plan("127.0.0.1", None, &refs).unwrap_err(),
            "33 --allow networks given, an export has at most 32"
        );
        assert_eq!(plan("127.0.0.1", None, &refs[1..]).unwrap().allow.len(), 32);

        let long = "e".repeat(EXPORT_NAME_MAX + 1);
        assert_eq!(
            plan("127.0.0.1", Some(&long), &[]).unwrap_err(),
            "--name: export name longer than 4096 bytes"
        );
        let longest = "e".repeat(EXPORT_NAME_MAX);
        assert!(plan("127.0.0.1", Some(&longest), &[]).is_ok());
        // The empty name is NBD's default export.
        assert_eq!(
            plan("127.0.0.1", Some(""), &[]).unwrap().name.as_deref(),
            Some("")
        );
    }

    #[test]
    fn literal_listen_addresses_resolve_without_dns() {
        let req = |s: &str| plan(s, None, &[]).unwrap().resolve(resolve).unwrap().listen;
        assert_eq!(req("192.0.2.7"), "192.0.2.7:10809");
        assert_eq!(req("0.0.0.0:2000"), "0.0.0.0:2000");
        assert_eq!(req("[2001:db8::7]:10900"), "[2001:db8::7]:10900");
        assert_eq!(req("[::]"), "[::]:10809");
        assert_eq!(req("[::ffff:192.0.2.1]"), "192.0.2.1:10809");
        let e = plan("nowhere.invalid:1", None, &[])
            .unwrap()
            .resolve(|h, _| Err(format!("cannot resolve {h}: name or service not known")))
            .unwrap_err();
        assert_eq!(
            e,
            "--listen nowhere.invalid:1: cannot resolve nowhere.invalid: name or service not known"
        );
        let r = plan("store:1", Some("x"), &["::1"])
            .unwrap()
            .resolve(|h, p| {
                assert_eq!((h, p), ("store", 1));
                Ok("10.0.0.9:1".parse().unwrap())
            })
            .unwrap();
        assert_eq!(
            r,
            ExportRequest {
                listen: "10.0.0.9:1".into(),
                name: Some("x".into()),
                read_only: false,
                allow: vec!["::1/128".into()],
            }
        );
    }
}
