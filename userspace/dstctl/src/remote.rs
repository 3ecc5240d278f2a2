// SPDX-License-Identifier: GPL-2.0

//! Remote legs: `nbd://` URIs, their timing parameters, and the socket
//! address the kernel connects to.
//!
//! The kernel does no name resolution: `dstctl` resolves the host once, at
//! creation, and sends the address along with the leg as typed.

use std::fmt::Write as _;
use std::net::{SocketAddr, ToSocketAddrs};

use dst_proto::genl::{conns, timing, ADDR_MAX, EXPORT_NAME_MAX};
use dst_proto::nbd::parse_uri;

use crate::cli::one_line;
use crate::model::{LegRequest, RemoteRequest};
use crate::units::{parse_scaled, BadNumber};

/// Whether a leg, as typed, is a URI (`nbd://...`, but also `nbds://...`
/// or `http://...`, which are then refused) rather than a path.
pub fn is_uri(spec: &str) -> bool {
    let Some((scheme, _)) = spec.split_once("://") else {
        return false;
    };
    let mut chars = scheme.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
}

/// Timing parameters of a remote leg, in milliseconds; `None` leaves the
/// kernel's default.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// A request older than this fails the connection.
    pub timeout_ms: Option<u32>,
    /// How long I/O waits for a down leg before failing.
    pub dead_time_ms: Option<u32>,
    /// Longest wait between reconnection attempts.
    pub backoff_max_ms: Option<u32>,
}

impl Timing {
    /// `self`, with what it leaves unset taken from `fallback`.
    pub fn or(self, fallback: Timing) -> Timing {
        Timing {
            timeout_ms: self.timeout_ms.or(fallback.timeout_ms),
            dead_time_ms: self.dead_time_ms.or(fallback.dead_time_ms),
            backoff_max_ms: self.backoff_max_ms.or(fallback.backoff_max_ms),
        }
    }

    /// Whether nothing is set.
    pub fn is_empty(&self) -> bool {
        *self == Timing::default()
    }
}

/// The URI query keys, in the order the help lists them.
pub const QUERY_KEYS: [&str; 5] = ["timeout", "dead-time", "backoff-max", "resync", "conns"];

/// A remote leg as typed, its host not yet resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteSpec {
    /// Host name or address literal (without brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Export name (may be empty: the server's default export).
    pub export: String,
    /// Timing from the URI's query, then the command line.
    pub timing: Timing,
    /// `resync=full` (`Some(true)`) or `resync=dirty` (`Some(false)`).
    pub full_resync: Option<bool>,
    /// `conns=N`: connections to open when the server allows several.
    pub conns: Option<u8>,
}

/// One leg of a `create`, checked but not resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegPlan {
    /// The leg exactly as typed.
    pub spec: String,
    /// For a remote leg, what the URI says.
    pub remote: Option<RemoteSpec>,
    /// Mirror: the leg is write-mostly.
    pub write_mostly: bool,
}

impl LegPlan {
    /// Checks one leg as typed; `defaults` are the timing options of the
    /// command line, which the URI's query overrides.  The leg is not
    /// write-mostly.
    pub fn parse(spec: &str, defaults: Timing) -> Result<LegPlan, String> {
        let remote = if is_uri(spec) {
            let r = parse_remote(spec).map_err(|m| format!("leg {}: {m}", one_line(spec)))?;
            Some(RemoteSpec {
                timing: r.timing.or(defaults),
                ..r
            })
        } else {
            None
        };
        Ok(LegPlan {
            spec: spec.to_owned(),
            remote,
            write_mostly: false,
        })
    }

    /// Resolves the host of a remote leg with `resolve`, giving what the
    /// kernel is sent.
    pub fn resolve(
        self,
        resolve: impl Fn(&str, u16) -> Result<SocketAddr, String>,
    ) -> Result<LegRequest, String> {
        let remote = match self.remote {
            None => None,
            Some(r) => {
                let addr = resolve(&r.host, r.port)
                    .and_then(format_addr)
                    .map_err(|m| format!("leg {}: {m}", one_line(&self.spec)))?;
                Some(RemoteRequest {
                    full_resync: r.full_resync,
                    conns: r.conns,
                    addr,
                    export: r.export,
                    timing: r.timing,
                })
            }
        };
        Ok(LegRequest {
            spec: self.spec,
            remote,
            write_mostly: self.write_mostly,
        })
    }
}

/// Parses `nbd://HOST[:PORT][/EXPORT][?PARAMETERS]`, the parameters being
/// `timeout=T`, `dead-time=T`, `backoff-max=T`, `resync=full|dirty` and
/// `conns=N`
/// (the URI itself with [`dst_proto::nbd::parse_uri`], the query here).
pub fn parse_remote(spec: &str) -> Result<RemoteSpec, String> {
    let uri = parse_uri(spec).map_err(String::from)?;
    let export = uri.export;
    if export.len() > EXPORT_NAME_MAX {
        return Err(format!("export name longer than {EXPORT_NAME_MAX} bytes"));
    }
    let mut timing = Timing::default();
    let mut full_resync = None;
    let mut conns = None;
    for pair in uri.query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| format!("parameter {} has no value", one_line(pair)))?;
        if key == "resync" {
            if full_resync.is_some() {
                return Err("parameter resync given twice".into());
            }
            full_resync = Some(match value {
                "full" => true,
                "dirty" => false,
                _ => {
                    return Err(format!(
                        "resync: {} is neither full nor dirty",
                        one_line(value)
                    ))
                }
            });
            continue;
        }
        if key == "conns" {
            if conns.is_some() {
                return Err("parameter conns given twice".into());
            }
            conns = Some(parse_conns(value)?);
            continue;
        }
        let slot = match key {
            "timeout" => &mut timing.timeout_ms,
            "dead-time" => &mut timing.dead_time_ms,
            "backoff-max" => &mut timing.backoff_max_ms,
            _ => {
                return Err(format!(
                    "unknown parameter {} (known: {})",
                    one_line(key),
                    QUERY_KEYS.join(", ")
                ))
            }
        };
        if slot.is_some() {
            return Err(format!("parameter {key} given twice"));
        }
        *slot = Some(parse_ms(key, value)?);
    }
    Ok(RemoteSpec {
        host: uri.host.to_owned(),
        port: uri.port,
        export: export.to_owned(),
        timing,
        full_resync,
        conns,
    })
}

/// Parses the `conns` parameter: 1 to [`conns::MAX`].
fn parse_conns(value: &str) -> Result<u8, String> {
    match value.parse::<u8>() {
        Ok(n) if (1..=conns::MAX).contains(&n) && !value.starts_with('+') => Ok(n),
        _ => Err(format!(
            "conns: {} is not a number from 1 to {}",
            one_line(value),
            conns::MAX
        )),
    }
}

/// Parses a duration for `what` (named in errors): a number of seconds,
/// or a number followed by `ms`, `s`, `m` or `h`; it must lie within
/// [`timing::MIN_MS`] and [`timing::MAX_MS`].
pub fn parse_ms(what: &str, s: &str) -> Result<u32, String> {
    let range = || {
        format!(
            "{what}: {} is out of range ({} to {})",
            one_line(s),
            format_ms(timing::MIN_MS),
            format_ms(timing::MAX_MS)
        )
    };
    let ms = parse_scaled(s, |unit| match unit {
        "ms" => Some(1),
        "" | "s" => Some(1_000),
        "m" => Some(60_000),
        "h" => Some(3_600_000),
        _ => None,
    })
    .map_err(|e| match e {
        BadNumber::Invalid => format!(
            "{what}: invalid duration {:?} (e.g. 30, 30s, 500ms, 2m)",
            one_line(s)
        ),
        BadNumber::TooBig => range(),
    })?;
    match u32::try_from(ms) {
        Ok(ms) if (timing::MIN_MS..=timing::MAX_MS).contains(&ms) => Ok(ms),
        _ => Err(range()),
    }
}

/// A duration in milliseconds the way [`parse_ms`] reads it: `500ms`,
/// `30s`, `90s`, `2m`, `24h`.
pub fn format_ms(ms: u32) -> String {
    // Remainders by hand: `is_multiple_of` is newer than the workspace's
    // rust-version.
    let (s, ms_part) = (ms / 1_000, ms % 1_000);
    let (h, s_part) = (s / 3_600, s % 3_600);
    let (m, m_part) = (s / 60, s % 60);
    if ms_part != 0 {
        format!("{ms}ms")
    } else if h >= 2 && s_part == 0 {
        format!("{h}h")
    } else if m >= 2 && m_part == 0 {
        format!("{m}m")
    } else {
        format!("{s}s")
    }
}

/// Resolves a host (name or address literal) to its first socket address.
/// Literal addresses need no DNS.
pub fn resolve(host: &str, port: u16) -> Result<SocketAddr, String> {
    let mut addrs = (host, port).to_socket_addrs().map_err(|e| {
        let text = e.to_string();
        let text = text
            .strip_prefix("failed to lookup address information: ")
            .unwrap_or(&text);
        let mut chars = text.chars();
        let text: String = match chars.next() {
            Some(c) => c.to_lowercase().chain(chars).collect(),
            None => "unknown error".into(),
        };
        format!("cannot resolve {}: {text}", one_line(host))
    })?;
    addrs
        .next()
        .ok_or_else(|| format!("cannot resolve {}: no address", one_line(host)))
}

/// The address as the kernel reads it: `1.2.3.4:10809`, `[::1]:10809`,
/// `[fe80::1%2]:10809`.  An IPv4-mapped IPv6 address is given as IPv4.
pub fn format_addr(addr: SocketAddr) -> Result<String, String> {
    let mut s = String::new();
    match addr {
        SocketAddr::V4(a) => write!(s, "{}:{}", a.ip(), a.port()),
        SocketAddr::V6(a) => match a.ip().to_ipv4_mapped() {
            Some(v4) => write!(s, "{v4}:{}", a.port()),
            None if a.scope_id() != 0 => {
                write!(s, "[{}%{}]:{}", a.ip(), a.scope_id(), a.port())
            }
            None => write!(s, "[{}]:{}", a.ip(), a.port()),
        },
    }
    .map_err(|_| "cannot format the address".to_owned())?;
    if s.len() > ADDR_MAX {
        return Err(format!("address {s} is longer than {ADDR_MAX} bytes"));
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv6Addr, SocketAddrV6};

    fn no_dns(host: &str, _: u16) -> Result<SocketAddr, String> {
        panic!("resolver called for {host}")
    }

    #[test]
    fn durations() {
        assert_eq!(parse_ms("t", "30"), Ok(30_000));
        assert_eq!(parse_ms("t", "30s"), Ok(30_000));
        assert_eq!(parse_ms("t", "500ms"), Ok(500));
        assert_eq!(parse_ms("t", "2m"), Ok(120_000));
        assert_eq!(parse_ms("t", "24h"), Ok(timing::MAX_MS));
        assert_eq!(parse_ms("t", "100ms"), Ok(timing::MIN_MS));
        for bad in [
            "", "s", "1.5s", "-1", "+3", "3 s", "3sec", "ms", "10S", "0x10",
        ] {
            let e = parse_ms("--timeout", bad).unwrap_err();
            assert!(e.starts_with("--timeout: invalid duration"), "{bad}: {e}");
        }
        for out in [
            "99ms",
            "0",
            "25h",
            "86401s",
            "99999999999999999999",
            "5000000h",
        ] {
            let e = parse_ms("timeout", out).unwrap_err();
            assert!(e.contains("out of range (100ms to 24h)"), "{out}: {e}");
        }
        assert!(parse_ms("t", &"9".repeat(30))
            .unwrap_err()
            .contains("out of range"));
    }

    #[test]
    fn durations_round_trip() {
        for (ms, text) in [
            (100, "100ms"),
            (1_500, "1500ms"),
            (30_000, "30s"),
            (60_000, "60s"),
            (90_000, "90s"),
            (120_000, "2m"),
            (3_600_000, "60m"),
            (7_200_000, "2h"),
            (86_400_000, "24h"),
        ] {
            assert_eq!(format_ms(ms), text);
            assert_eq!(parse_ms("t", text), Ok(ms));
        }
    }

    #[test]
    fn uris() {
        let r = parse_remote("nbd://10.0.0.2/disk").unwrap();
        assert_eq!(
            r,
            RemoteSpec {
                host: "10.0.0.2".into(),
                port: 10809,
                export: "disk".into(),
                timing: Timing::default(),
                full_resync: None,
                conns: None,
            }
        );
        let r = parse_remote("nbd://[fd00::2]:2000").unwrap();
        assert_eq!(
            (r.host.as_str(), r.port, r.export.as_str()),
            ("fd00::2", 2000, "")
        );
        // The scheme's case does not matter.
        assert_eq!(parse_remote("NBD://h").unwrap().host, "h");
        let r =
            parse_remote("nbd://store:1234/a/b?timeout=5s&backoff-max=500ms&dead-time=2m").unwrap();
        assert_eq!(
            (r.host.as_str(), r.port, r.export.as_str()),
            ("store", 1234, "a/b")
        );
        assert_eq!(
            r.timing,
            Timing {
                timeout_ms: Some(5_000),
                dead_time_ms: Some(120_000),
                backoff_max_ms: Some(500),
            }
        );
        assert!(parse_remote("nbd://h/x?").unwrap().timing.is_empty());
        assert_eq!(
            parse_remote("nbd://h/x?resync=full").unwrap().full_resync,
            Some(true)
        );
        assert_eq!(
            parse_remote("nbd://h/x?resync=dirty").unwrap().full_resync,
            Some(false)
        );
        assert!(parse_remote("nbd://h/x?resync=some").is_err());
        assert!(parse_remote("nbd://h/x?resync=full&resync=full").is_err());
        assert_eq!(parse_remote("nbd://h/x?conns=4").unwrap().conns, Some(4));
        assert_eq!(parse_remote("nbd://h/x?conns=1").unwrap().conns, Some(1));
    }

    #[test]
    fn bad_uris() {
        for (uri, want) in [
            (
                "nbd://h/x?retries=3",
                "unknown parameter retries (known: timeout, dead-time, backoff-max, resync, conns)",
            ),
            ("nbd://h/x?conns=0", "conns: 0 is not a number from 1 to 4"),
            ("nbd://h/x?conns=5", "conns: 5 is not a number from 1 to 4"),
            (
                "nbd://h/x?conns=+2",
                "conns: +2 is not a number from 1 to 4",
            ),
            (
                "nbd://h/x?conns=two",
                "conns: two is not a number from 1 to 4",
            ),
            ("nbd://h/x?conns=1&conns=2", "parameter conns given twice"),
            ("nbd://h/x?timeout", "parameter timeout has no value"),
            (
                "nbd://h/x?timeout=1&timeout=2",
                "parameter timeout given twice",
            ),
            (
                "nbd://h/x?timeout=fast",
                "timeout: invalid duration \"fast\" (e.g. 30, 30s, 500ms, 2m)",
            ),
            (
                "nbd://h/x?dead-time=10ms",
                "dead-time: 10ms is out of range (100ms to 24h)",
            ),
            // From dst_proto::nbd::parse_uri.
            ("nbd://h:0/x", "the port must be a number from 1 to 65535"),
            ("nbds://h/x", "nbds:// (NBD over TLS) is not supported"),
        ] {
            assert_eq!(parse_remote(uri).unwrap_err(), want, "{uri}");
        }
        for uri in [
            "nbd://",
            "nbd:///x",
            "nbd://h:port/x",
            "nbd://h:99999/x",
            "nbd://[::1/x",
            "nbd://[fe80::1%eth0]/x",
            "nbd://h/with%20space",
        ] {
            assert!(parse_remote(uri).is_err(), "{uri}");
        }
        let long = format!("nbd://h/{}", "e".repeat(EXPORT_NAME_MAX + 1));
        assert!(parse_remote(&long)
            .unwrap_err()
            .contains("longer than 4096 bytes"));
    }

    #[test]
    fn precedence() {
        let cli = Timing {
            timeout_ms: Some(1_000),
            dead_time_ms: Some(2_000),
            backoff_max_ms: None,
        };
        let plan = LegPlan::parse("nbd://h/x?timeout=5s", cli).unwrap();
        let timing = plan.remote.unwrap().timing;
        assert_eq!(
            timing,
            Timing {
                timeout_ms: Some(5_000),
                dead_time_ms: Some(2_000),
                backoff_max_ms: None,
            }
        );
        // Local legs take none of it.
        let plan = LegPlan::parse("/dev/sdb", cli).unwrap();
        assert_eq!(plan.remote, None);
    }

    #[test]
    fn other_schemes_are_refused() {
        let e = LegPlan::parse("nbds://h/x", Timing::default()).unwrap_err();
        assert_eq!(e, "leg nbds://h/x: nbds:// (NBD over TLS) is not supported");
        let e = LegPlan::parse("http://h/x", Timing::default()).unwrap_err();
        assert_eq!(
            e,
            "leg http://h/x: not an NBD URI: expected nbd://HOST[:PORT][/EXPORT]"
        );
        assert!(LegPlan::parse("nbd+unix:///x", Timing::default()).is_err());
        // Paths stay paths.
        for path in ["/dev/sdb", "/dev/disk/by-id/a://b", "ram0", "./x://y"] {
            assert!(LegPlan::parse(path, Timing::default())
                .unwrap()
                .remote
                .is_none());
        }
        let e = LegPlan::parse("nbd://h/x?x=1", Timing::default()).unwrap_err();
        assert!(
            e.starts_with("leg nbd://h/x?x=1: unknown parameter x"),
            "{e}"
        );
    }

    #[test]
    fn literal_addresses_resolve_without_dns() {
        let req = |spec: &str| {
            LegPlan::parse(spec, Timing::default())
                .unwrap()
                .resolve(resolve)
                .unwrap()
        };
        let r = req("nbd://192.0.2.7/disk");
        assert_eq!(r.spec, "nbd://192.0.2.7/disk");
        let remote = r.remote.unwrap();
        assert_eq!(remote.addr, "192.0.2.7:10809");
        assert_eq!(remote.export, "disk");

        let remote = req("nbd://[2001:db8::7]:10900").remote.unwrap();
        assert_eq!(remote.addr, "[2001:db8::7]:10900");
        assert_eq!(remote.export, "");

        let remote = req("nbd://[::ffff:192.0.2.1]/e").remote.unwrap();
        assert_eq!(remote.addr, "192.0.2.1:10809");

        let local = LegPlan::parse("/dev/sdb", Timing::default())
            .unwrap()
            .resolve(no_dns)
            .unwrap();
        assert_eq!(local.remote, None);
    }

    #[test]
    fn resolver_errors_name_the_leg() {
        let plan = LegPlan::parse("nbd://nowhere.invalid/x", Timing::default()).unwrap();
        let e = plan
            .resolve(|h, _| Err(format!("cannot resolve {h}: name or service not known")))
            .unwrap_err();
        assert_eq!(
            e,
            "leg nbd://nowhere.invalid/x: cannot resolve nowhere.invalid: name or service not known"
        );
    }

    #[test]
    fn addresses() {
        let v6 = |ip: &str, scope| {
            SocketAddr::V6(SocketAddrV6::new(
                ip.parse::<Ipv6Addr>().unwrap(),
                10809,
                0,
                scope,
            ))
        };
        assert_eq!(format_addr(v6("::1", 0)).unwrap(), "[::1]:10809");
        assert_eq!(format_addr(v6("fe80::1", 3)).unwrap(), "[fe80::1%3]:10809");
        let longest = v6("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", u32::MAX);
        let s = format_addr(longest).unwrap();
        assert!(s.len() <= ADDR_MAX, "{s}");
        assert_eq!(
            format_addr("10.1.2.3:1".parse().unwrap()).unwrap(),
            "10.1.2.3:1"
        );
    }
}
