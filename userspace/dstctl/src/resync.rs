// SPDX-License-Identifier: GPL-2.0

//! Resync settings of a mirror as typed and shown: the dirty region size
//! (`--region-size`), the speed limits (`--resync-rate`, `--resync-max`),
//! and a running resync's speed and time left.
//!
//! Sizes are bytes, or a number with a 1024-based unit: `4096`, `64K`,
//! `1M`, `1G` (case-insensitive, optionally followed by `B` or `iB`).
//! Rates are sizes per second, optionally followed by `/s`; the kernel is
//! sent them in KiB/s.

use dst_proto::genl::resync;

use crate::cli::one_line;
use crate::output::human_size;
use crate::units::{parse_scaled, BadNumber};

/// The units a size may have, in bytes (powers of two).
const UNITS: [(&str, u64); 3] = [("k", 1 << 10), ("m", 1 << 20), ("g", 1 << 30)];

/// Parses a size in bytes: digits, then optionally `B`, or `K`, `M` or
/// `G` optionally followed by `B` or `iB`, in any case.
fn parse_bytes(s: &str) -> Result<u64, BadNumber> {
    parse_scaled(&s.to_ascii_lowercase(), |unit| match unit {
        "" | "b" => Some(1),
        _ => {
            let unit = unit
                .strip_suffix("ib")
                .or_else(|| unit.strip_suffix('b'))
                .unwrap_or(unit);
            UNITS
                .iter()
                .find(|(u, _)| *u == unit)
                .map(|(_, scale)| *scale)
        }
    })
}

/// Parses `--region-size` (named `what` in errors): a power of two from
/// [`resync::REGION_MIN`] to [`resync::REGION_MAX`] bytes.
pub fn parse_region(what: &str, s: &str) -> Result<u32, String> {
    let bytes = match parse_bytes(s) {
        Ok(b) => u32::try_from(b).unwrap_or(u32::MAX),
        Err(BadNumber::TooBig) => u32::MAX,
        Err(BadNumber::Invalid) => {
            return Err(format!(
                "{what}: invalid size {:?} (e.g. 64K, 1M, 4096)",
                one_line(s)
            ))
        }
    };
    resync::check_region(bytes).map_err(|m| format!("{what} {}: {m}", one_line(s)))?;
    Ok(bytes)
}

/// Parses a resync speed limit (named `what` in errors) into KiB/s: bytes
/// per second with a unit and an optional `/s` (`50M`, `500K/s`, `1G`),
/// rounded down to whole KiB/s; `0` or `none` for no limit.  A limit
/// must be at least 1 KiB/s and at most `u32::MAX` KiB/s.
pub fn parse_rate_kib(what: &str, s: &str) -> Result<u32, String> {
    let lower = s.to_ascii_lowercase();
    if lower == "none" {
        return Ok(0);
    }
    let range = || {
        format!(
            "{what}: {} is out of range ({} to {}, or 0 for no limit)",
            one_line(s),
            format_rate_kib(1),
            format_rate_kib(u32::MAX)
        )
    };
    let bytes = match parse_bytes(lower.strip_suffix("/s").unwrap_or(&lower)) {
        Ok(b) => b,
        Err(BadNumber::TooBig) => return Err(range()),
        Err(BadNumber::Invalid) => {
            return Err(format!(
                "{what}: invalid rate {:?} (e.g. 50M, 500K/s, 1G; 0 for no limit)",
                one_line(s)
            ))
        }
    };
    if bytes == 0 {
        return Ok(0);
    }
    match u32::try_from(bytes / 1024) {
        Ok(kib) if kib > 0 => Ok(kib),
        _ => Err(range()),
    }
}

/// A size the way [`parse_region`] reads it, exactly: `4096` only when
/// it is no whole number of KiB, else `64K`, `1M`, `3G`, `1536K`.
pub fn exact_size(bytes: u64) -> String {
    for (unit, scale) in UNITS.iter().rev() {
        if bytes != 0 && bytes & (scale - 1) == 0 {
            return format!("{}{}", bytes / scale, unit.to_ascii_uppercase());
        }
    }
    bytes.to_string()
}

/// A speed limit in KiB/s the way [`parse_rate_kib`] reads it: `16M/s`,
/// `500K/s`, or `none` for 0 (no limit).
pub fn format_rate_kib(kib: u32) -> String {
    if kib == 0 {
        return "none".into();
    }
    format!("{}/s", exact_size(u64::from(kib) << 10))
}

/// A measured speed in bytes per second: `12.3M/s`.
pub fn format_speed(bytes: u64) -> String {
    format!("{}/s", human_size(bytes))
}

/// Time left, `M:SS` or, from an hour on, `H:MM:SS`: `0:07`, `12:30`,
/// `1:02:03`.
pub fn format_eta(secs: u64) -> String {
    let (h, m, s) = (secs / 3_600, secs / 60 % 60, secs % 60);
    if h > 0 {
        format!("{h}:{m:02}:{s:02}")
    } else {
        format!("{m}:{s:02}")
    }
}

/// Seconds until a resync with `done` of `total` bytes copied finishes at
/// `speed` bytes per second, rounded up; `None` when no resync runs
/// (`total` 0) or its speed is not known (0).
pub fn eta_secs(done: u64, total: u64, speed: u64) -> Option<u64> {
    if total == 0 || speed == 0 {
        return None;
    }
    Some((total - done.min(total)).div_ceil(speed))
}

/// A resync's progress as `dstctl status` and `dstctl monitor` show it:
/// `resync 42% (27.0M of 64.0M)`, then `, 12.3M/s, ETA 0:04` once its
/// time left (`eta_s`, see [`eta_secs`]) is known.
pub fn progress(percent: u8, done: u64, total: u64, speed: u64, eta_s: Option<u64>) -> String {
    let mut line = format!(
        "resync {percent}% ({} of {})",
        human_size(done.min(total)),
        human_size(total)
    );
    if let Some((speed, eta)) = speed_and_eta(speed, eta_s) {
        line.push_str(&format!(", {speed}, ETA {eta}"));
    }
    line
}

/// A running resync's speed and time left as shown, `12.3M/s` and
/// `0:04`, once its time left (`eta_s`) is known; `None` before.
pub fn speed_and_eta(speed: u64, eta_s: Option<u64>) -> Option<(String, String)> {
    eta_s.map(|eta| (format_speed(speed), format_eta(eta)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        let region = |s: &str| parse_region("--region-size", s);
        assert_eq!(region("64K"), Ok(64 << 10));
        assert_eq!(region("64k"), Ok(64 << 10));
        assert_eq!(region("64KiB"), Ok(64 << 10));
        assert_eq!(region("64kb"), Ok(64 << 10));
        assert_eq!(region("1M"), Ok(1 << 20));
        assert_eq!(region("4m"), Ok(4 << 20));
        assert_eq!(region("4096"), Ok(4096));
        assert_eq!(region("4096B"), Ok(4096));
        assert_eq!(region("1048576"), Ok(1 << 20));
        let not_pow2 = "region size must be a power of two from 4 KiB to 4 MiB";
        for s in ["3K", "2K", "8M", "1G", "0", "4097", "99999999999999999999G"] {
            assert_eq!(
                region(s),
                Err(format!("--region-size {s}: {not_pow2}")),
                "{s}"
            );
        }
        for s in [
            "", "K", "64 K", "64KK", "1.5M", "-4K", "64T", "4096iB", "64K/s",
        ] {
            assert_eq!(
                region(s),
                Err(format!(
                    "--region-size: invalid size {s:?} (e.g. 64K, 1M, 4096)"
                )),
                "{s}"
            );
        }
    }

    #[test]
    fn rates() {
        let rate = |s: &str| parse_rate_kib("--resync-rate", s);
        assert_eq!(rate("50M"), Ok(50 << 10));
        assert_eq!(rate("50M/s"), Ok(50 << 10));
        assert_eq!(rate("50MiB/s"), Ok(50 << 10));
        assert_eq!(rate("50mb/S"), Ok(50 << 10));
        assert_eq!(rate("500K"), Ok(500));
        assert_eq!(rate("1G"), Ok(1 << 20));
        assert_eq!(rate("1024"), Ok(1));
        assert_eq!(rate("1024/s"), Ok(1));
        assert_eq!(rate("1500"), Ok(1), "rounded down");
        assert_eq!(rate("0"), Ok(0));
        assert_eq!(rate("0K/s"), Ok(0));
        assert_eq!(rate("none"), Ok(0));
        assert_eq!(rate("4095G"), Ok(4095 << 20));
        assert_eq!(rate("4294967295K"), Ok(u32::MAX));
        let range = |s: &str| {
            Err(format!(
                "--resync-rate: {s} is out of range (1K/s to 4294967295K/s, or 0 for no limit)"
            ))
        };
        for s in [
            "1",
            "1023",
            "512/s",
            "4096G",
            "4294967296K",
            "99999999999999999999G",
        ] {
            assert_eq!(rate(s), range(s), "{s}");
        }
        for s in [
            "", "/s", "M/s", "50 M", "50M/m", "50Mbit", "1.5G", "-1", "fast", "é/s", "1é",
        ] {
            assert_eq!(
                rate(s),
                Err(format!(
                    "--resync-rate: invalid rate {s:?} (e.g. 50M, 500K/s, 1G; 0 for no limit)"
                )),
                "{s}"
            );
        }
        assert!(!rate("a\nb").unwrap_err().contains('\n'));
    }

    #[test]
    fn shown_as_typed() {
        assert_eq!(exact_size(64 << 10), "64K");
        assert_eq!(exact_size(4 << 20), "4M");
        assert_eq!(exact_size(3 << 30), "3G");
        assert_eq!(exact_size(1536 << 10), "1536K");
        assert_eq!(exact_size(1500), "1500");
        assert_eq!(exact_size(0), "0");
        assert_eq!(format_rate_kib(16 << 10), "16M/s");
        assert_eq!(format_rate_kib(500), "500K/s");
        assert_eq!(format_rate_kib(0), "none");
        for kib in [1, 500, 1 << 10, 16 << 10, 1 << 20, u32::MAX] {
            let shown = format_rate_kib(kib);
            assert_eq!(parse_rate_kib("r", &shown), Ok(kib), "{shown}");
        }
        for bytes in [4 << 10, 64 << 10, 1 << 20, 4 << 20] {
            assert_eq!(parse_region("r", &exact_size(bytes.into())), Ok(bytes));
        }
    }

    #[test]
    fn speeds_and_etas() {
        assert_eq!(format_speed(12_900_000), "12.3M/s");
        assert_eq!(format_speed(0), "0B/s");
        assert_eq!(format_eta(0), "0:00");
        assert_eq!(format_eta(7), "0:07");
        assert_eq!(format_eta(750), "12:30");
        assert_eq!(format_eta(3_723), "1:02:03");
        assert_eq!(format_eta(100 * 3_600), "100:00:00");
        assert_eq!(eta_secs(27 << 20, 64 << 20, 0), None);
        assert_eq!(eta_secs(0, 0, 1 << 20), None);
        assert_eq!(eta_secs(27 << 20, 64 << 20, 1 << 20), Some(37));
        assert_eq!(
            eta_secs(27 << 20, 64 << 20, 10 << 20),
            Some(4),
            "rounded up"
        );
        assert_eq!(eta_secs(u64::MAX, 64 << 20, 1), Some(0));
        assert_eq!(eta_secs(0, u64::MAX, 1), Some(u64::MAX));
        assert_eq!(
            speed_and_eta(10 << 20, Some(4)),
            Some(("10.0M/s".into(), "0:04".into()))
        );
        assert_eq!(speed_and_eta(0, None), None);
        assert_eq!(
            progress(42, 27 << 20, 64 << 20, 5_662_310, Some(7)),
            "resync 42% (27.0M of 64.0M), 5.4M/s, ETA 0:07"
        );
        assert_eq!(
            progress(42, 27 << 20, 64 << 20, 0, None),
            "resync 42% (27.0M of 64.0M)"
        );
    }
}
