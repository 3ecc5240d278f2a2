// SPDX-License-Identifier: GPL-2.0

//! Human-readable tables and JSON.

use serde::Serialize;

use crate::cli::one_line;
use crate::model::{Device, Export, Leg};
use crate::remote::format_ms;
use crate::resync::{exact_size, format_rate_kib, progress, speed_and_eta};

/// A size in bytes in base-1024 units with one decimal, like `lsblk`:
/// `512B`, `64.0M`, `1.5G`.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["K", "M", "G", "T", "P", "E"];
    if bytes < 1024 {
        return format!("{bytes}B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    // Move up while the rounded value would show as 1024.0 or more.
    while value >= 1023.95 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1}{}", UNITS[unit])
}

/// Aligns `rows` (the first is the header) in columns separated by two
/// spaces, each line prefixed by `indent`.  Empty cells show as `-`.
fn table(rows: &[Vec<String>], indent: &str) -> String {
    table_lines(rows, indent)
        .into_iter()
        .map(|l| l + "\n")
        .collect()
}

/// The lines of [`table`], without their newlines.
fn table_lines(rows: &[Vec<String>], indent: &str) -> Vec<String> {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0; cols];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count().max(1));
        }
    }
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let mut line = String::from(indent);
        for (i, (cell, w)) in row.iter().zip(&widths).enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            let cell = if cell.is_empty() { "-" } else { cell.as_str() };
            line.push_str(&format!("{cell:<w$}"));
        }
        out.push(line.trim_end().to_owned());
    }
    out
}

/// A leg's state, with the progress of a running resync: `in-sync`,
/// `resyncing 42%`.
pub fn leg_state(l: &Leg) -> String {
    if l.resync_total > 0 {
        format!("{} {}%", l.state, l.resync_percent())
    } else {
        l.state.to_string()
    }
}

/// What follows a leg's state when the leg is write-mostly:
/// `, write-mostly` (`in-sync, write-mostly`); empty otherwise.
pub fn write_mostly_suffix(write_mostly: bool) -> &'static str {
    if write_mostly {
        ", write-mostly"
    } else {
        ""
    }
}

/// The legs of a device in one cell: specs in order, a leg that is not in
/// sync followed by its state, e.g. `/dev/ram0,/dev/ram1(faulty)`.
fn legs_cell(d: &Device) -> String {
    let legs: Vec<String> = d
        .legs
        .iter()
        .map(|l| match leg_state(l).as_str() {
            "in-sync" => l.spec.clone(),
            state => format!("{}({state})", l.spec),
        })
        .collect();
    legs.join(",")
}

/// `dstctl list`: a header, then one line per device.
pub fn list(devices: &[Device]) -> String {
    let mut rows = vec![["NAME", "DISK", "TARGET", "SIZE", "STATE", "LEGS"]
        .map(String::from)
        .to_vec()];
    rows.extend(devices.iter().map(|d| {
        vec![
            d.name.clone(),
            d.disk.clone(),
            d.target.to_string(),
            human_size(d.size),
            d.state.to_string(),
            legs_cell(d),
        ]
    }));
    table(&rows, "")
}

/// `dstctl status`: per device a summary line and a table of its legs;
/// devices separated by a blank line.  `tty`: the output is a terminal,
/// which gets progress bars.
pub fn status(devices: &[Device], tty: bool) -> String {
    let blocks: Vec<String> = devices.iter().map(|d| status_block(d, tty)).collect();
    blocks.join("\n")
}

/// Where the lines under a leg start: below its SPEC cell.
const UNDER_LEG: &str = "       ";

fn status_block(d: &Device, tty: bool) -> String {
    let mut out = format!(
        "{}: {} {} {} {} openers {} block-size {}\n",
        d.name,
        d.path,
        d.target,
        human_size(d.size),
        d.state,
        d.openers,
        d.block_size
    );
    if let Some(line) = settings_line(d) {
        out.push_str("  ");
        out.push_str(&line);
        out.push('\n');
    }
    // Devices with only local legs look as they always did.
    let remote = d.legs.iter().any(Leg::is_remote);
    let mut header = vec![
        "LEG", "SPEC", "DISK", "SIZE", "OFFSET", "STATE", "READS", "WRITES", "RERR", "WERR",
        "INFLIGHT",
    ];
    if remote {
        header.push("CONN");
    }
    let mut rows = vec![header.into_iter().map(String::from).collect()];
    rows.extend(d.legs.iter().map(|l| {
        let mut row = vec![
            l.index.to_string(),
            l.spec.clone(),
            l.disk.clone(),
            human_size(l.size),
            human_size(l.offset),
            format!("{}{}", leg_state(l), write_mostly_suffix(l.write_mostly)),
            l.reads.to_string(),
            l.writes.to_string(),
            l.read_errors.to_string(),
            l.write_errors.to_string(),
            l.inflight.to_string(),
        ];
        if remote {
            row.push(l.connects.map(|c| c.to_string()).unwrap_or_default());
        }
        row
    }));
    let mut lines = table_lines(&rows, "  ").into_iter();
    if let Some(line) = lines.next() {
        out.push_str(&line);
        out.push('\n');
    }
    for (l, line) in d.legs.iter().zip(lines) {
        out.push_str(&line);
        out.push('\n');
        for extra in leg_details(l, tty) {
            out.push_str(UNDER_LEG);
            out.push_str(&extra);
            out.push('\n');
        }
    }
    out.push_str(&exports_table(&d.exports));
    out
}

/// A mirror's resync settings, as the options that set them:
/// `region-size 64K  resync-rate 16M/s  resync-max none`; `None` for a
/// device without any (a linear one).
fn settings_line(d: &Device) -> Option<String> {
    let parts: Vec<String> = [
        ("region-size", d.region_size.map(|b| exact_size(b.into()))),
        ("resync-rate", d.resync_rate_kib.map(format_rate_kib)),
        ("resync-max", d.resync_max_kib.map(format_rate_kib)),
    ]
    .into_iter()
    .filter_map(|(name, v)| v.map(|v| format!("{name} {v}")))
    .collect();
    (!parts.is_empty()).then(|| parts.join("  "))
}

/// Where the lines under an export start: below its name.
const UNDER_EXPORT: &str = "    ";

/// The exports of a device, after its legs: a table with a line per
/// export, each followed by its clients' addresses; nothing without
/// exports.
fn exports_table(exports: &[Export]) -> String {
    if exports.is_empty() {
        return String::new();
    }
    let header = [
        "EXPORT", "LISTEN", "MODE", "CLIENTS", "REQUESTS", "REFUSED", "ALLOW",
    ];
    let mut rows = vec![header.map(String::from).to_vec()];
    rows.extend(exports.iter().map(|e| {
        vec![
            export_name(&e.name),
            one_line(&e.listen),
            if e.read_only { "ro" } else { "rw" }.to_owned(),
            e.clients.to_string(),
            e.requests.to_string(),
            e.refused.to_string(),
            allowed(e),
        ]
    }));
    let mut out = String::new();
    let mut lines = table_lines(&rows, "  ").into_iter();
    if let Some(line) = lines.next() {
        out.push_str(&line);
        out.push('\n');
    }
    for (e, line) in exports.iter().zip(lines) {
        out.push_str(&line);
        out.push('\n');
        for addr in &e.client_addrs {
            out.push_str(UNDER_EXPORT);
            out.push_str("client ");
            out.push_str(&one_line(addr));
            out.push('\n');
        }
    }
    out
}

/// An export's name in a table: `(default)` for the empty name.
fn export_name(name: &str) -> String {
    if name.is_empty() {
        "(default)".into()
    } else {
        one_line(name)
    }
}

/// The networks allowed to connect to an export, in one cell.
fn allowed(e: &Export) -> String {
    if e.allow.is_empty() {
        "loopback only".into()
    } else {
        one_line(&e.allow.join(","))
    }
}

/// The lines shown under a leg: a remote leg's peer, how much resyncs
/// copied to it, its problem, and the progress of its resync (on a
/// terminal, as a bar).
fn leg_details(l: &Leg, tty: bool) -> Vec<String> {
    let mut lines = Vec::new();
    if l.is_remote() {
        let mut parts = Vec::new();
        if let Some(addr) = &l.addr {
            parts.push(format!("peer {}", one_line(addr)));
        }
        match l.export.as_deref() {
            Some("") => parts.push("export (default)".into()),
            Some(e) => parts.push(format!("export {}", one_line(e))),
            None => {}
        }
        for (name, ms) in [
            ("timeout", l.timeout_ms),
            ("dead-time", l.dead_time_ms),
            ("backoff-max", l.backoff_max_ms),
        ] {
            if let Some(ms) = ms {
                parts.push(format!("{name} {}", format_ms(ms)));
            }
        }
        if let Some(n) = l.conns.filter(|&n| n > 1) {
            parts.push(format!("{n} connections"));
        }
        if !parts.is_empty() {
            lines.push(parts.join("  "));
        }
    }
    if l.resynced > 0 {
        lines.push(format!("resynced {} in all", human_size(l.resynced)));
    }
    if let Some(p) = &l.problem {
        lines.push(format!("problem: {}", one_line(p)));
    }
    if l.resync_total > 0 {
        lines.push(if tty {
            progress_bar(l)
        } else {
            progress(
                l.resync_percent(),
                l.resync_done,
                l.resync_total,
                l.resync_speed,
                l.resync_eta(),
            )
        });
    }
    lines
}

/// Width of a progress bar, between its brackets.
const BAR: usize = 30;

/// `[#########.....................]  30%  19.2M of 64.0M  5.4M/s  ETA 0:09`,
/// without the speed and ETA until the speed is known.
fn progress_bar(l: &Leg) -> String {
    let pct = l.resync_percent();
    let filled = usize::from(pct) * BAR / 100;
    let mut bar = format!(
        "[{}{}] {pct:>3}%  {} of {}",
        "#".repeat(filled),
        ".".repeat(BAR - filled),
        human_size(l.resync_done.min(l.resync_total)),
        human_size(l.resync_total)
    );
    if let Some((speed, eta)) = speed_and_eta(l.resync_speed, l.resync_eta()) {
        bar.push_str(&format!("  {speed}  ETA {eta}"));
    }
    bar
}

/// Pretty-printed JSON with a final newline.
pub fn json<T: Serialize + ?Sized>(value: &T) -> String {
    // Serializing plain structs of strings and integers cannot fail.
    let mut s = serde_json::to_string_pretty(value).expect("JSON serialization");
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Export, Leg, Wire};

    #[test]
    fn sizes() {
        assert_eq!(human_size(0), "0B");
        assert_eq!(human_size(512), "512B");
        assert_eq!(human_size(1023), "1023B");
        assert_eq!(human_size(1024), "1.0K");
        assert_eq!(human_size(1536), "1.5K");
        assert_eq!(human_size(64 << 20), "64.0M");
        assert_eq!(human_size((1 << 20) - 1), "1.0M");
        assert_eq!(human_size(3 << 30), "3.0G");
        assert_eq!(human_size(5 << 40), "5.0T");
        assert_eq!(human_size(u64::MAX), "16.0E");
    }

    fn device() -> Device {
        let leg = |index: u32, spec: &str, state: u8| Leg {
            index,
            spec: spec.into(),
            disk: spec.trim_start_matches("/dev/").into(),
            size: 64 << 20,
            state: Wire::new(state),
            reads: 12345,
            ..Leg::default()
        };
        Device {
            name: "r1".into(),
            disk: "dst0".into(),
            path: "/dev/dst0".into(),
            target: Wire::new(2),
            size: 64 << 20,
            state: Wire::new(2),
            openers: 1,
            block_size: 512,
            legs: vec![leg(0, "/dev/ram0", 1), leg(1, "/dev/ram1", 2)],
            ..Device::default()
        }
    }

    #[test]
    fn list_table() {
        let mut other = device();
        other.name = "backup".into();
        other.disk = "dst1".into();
        other.target = Wire::new(1);
        other.size = 3 << 30;
        other.state = Wire::new(1);
        other.legs.truncate(1);
        assert_eq!(
            list(&[device(), other]),
            "NAME    DISK  TARGET  SIZE   STATE     LEGS\n\
             r1      dst0  mirror  64.0M  degraded  /dev/ram0,/dev/ram1(faulty)\n\
             backup  dst1  linear  3.0G   ok        /dev/ram0\n"
        );
        assert_eq!(list(&[]), "NAME  DISK  TARGET  SIZE  STATE  LEGS\n");
    }

    #[test]
    fn status_block() {
        assert_eq!(
            status(&[device()], true),
            "r1: /dev/dst0 mirror 64.0M degraded openers 1 block-size 512\n  \
             LEG  SPEC       DISK  SIZE   OFFSET  STATE    READS  WRITES  RERR  WERR  INFLIGHT\n  \
             0    /dev/ram0  ram0  64.0M  0B      in-sync  12345  0       0     0     0\n  \
             1    /dev/ram1  ram1  64.0M  0B      faulty   12345  0       0     0     0\n"
        );
        let two = status(&[device(), device()], false);
        assert!(two.contains("0\n\nr1: "));
    }

    #[test]
    fn json_array() {
        let v: serde_json::Value = serde_json::from_str(&json(&[device()])).unwrap();
        assert_eq!(v[0]["legs"][1]["state"], "faulty");
        assert_eq!(json(&Vec::<Device>::new()), "[]\n");
    }

    /// A mirror of a local leg and a remote one being resynced.
    fn remote_device() -> Device {
        let mut d = device();
        d.legs[1] = Leg {
            index: 1,
            spec: "nbd://store/disk".into(),
            size: 64 << 20,
            state: Wire::new(5),
            reads: 7,
            writes: 9,
            kind: Wire::new(2),
            addr: Some("10.0.0.2:10809".into()),
            export: Some("disk".into()),
            timeout_ms: Some(30_000),
            dead_time_ms: Some(60_000),
            backoff_max_ms: Some(10_000),
            resync_done: 27 << 20,
            resync_total: 64 << 20,
            nbd_flags: Some(0x1ed),
            connects: Some(2),
            problem: Some("connection reset by peer".into()),
            ..Leg::default()
        };
        d.legs[0].kind = Wire::new(1);
        d
    }

    #[test]
    fn status_remote_leg() {
        assert_eq!(
            status(&[remote_device()], false),
            "r1: /dev/dst0 mirror 64.0M degraded openers 1 block-size 512\n  \
             LEG  SPEC              DISK  SIZE   OFFSET  STATE          READS  WRITES  RERR  WERR  INFLIGHT  CONN\n  \
             0    /dev/ram0         ram0  64.0M  0B      in-sync        12345  0       0     0     0         -\n  \
             1    nbd://store/disk  -     64.0M  0B      resyncing 42%  7      9       0     0     0         2\n       \
             peer 10.0.0.2:10809  export disk  timeout 30s  dead-time 60s  backoff-max 10s\n       \
             problem: connection reset by peer\n       \
             resync 42% (27.0M of 64.0M)\n"
        );
        // On a terminal, with a progress bar instead.
        let text = status(&[remote_device()], true);
        assert!(
            text.ends_with(
                "problem: connection reset by peer\n       \
                 [############..................]  42%  27.0M of 64.0M\n"
            ),
            "{text}"
        );
        // Default export, nothing reported yet, a control character.
        let mut d = remote_device();
        let l = &mut d.legs[1];
        l.export = Some(String::new());
        (l.timeout_ms, l.dead_time_ms, l.backoff_max_ms, l.connects) = (None, None, None, None);
        l.resync_total = 0;
        l.state = Wire::new(3);
        l.problem = Some("refused\nagain".into());
        let text = status(&[d], true);
        assert!(text.contains("  down     7  "), "{text}");
        assert!(text.contains("\n       peer 10.0.0.2:10809  export (default)\n"));
        assert!(text.contains("\n       problem: refused\\nagain\n"));
        assert!(!text.contains('['), "{text}");
    }

    #[test]
    fn status_resync_settings_and_speed() {
        let mut d = remote_device();
        d.region_size = Some(64 << 10);
        d.resync_rate_kib = Some(16 << 10);
        d.resync_max_kib = Some(0);
        d.legs[1].resync_speed = 5_662_310; // 5.4M/s: 37M left, 6.9 s
        let text = status(&[d.clone()], false);
        assert!(
            text.starts_with(
                "r1: /dev/dst0 mirror 64.0M degraded openers 1 block-size 512\n  \
                 region-size 64K  resync-rate 16M/s  resync-max none\n  \
                 LEG  SPEC "
            ),
            "{text}"
        );
        assert!(
            text.ends_with(
                "problem: connection reset by peer\n       \
                 resync 42% (27.0M of 64.0M), 5.4M/s, ETA 0:07\n"
            ),
            "{text}"
        );
        let text = status(&[d.clone()], true);
        assert!(
            text.ends_with(
                "problem: connection reset by peer\n       \
                 [############..................]  42%  27.0M of 64.0M  5.4M/s  ETA 0:07\n"
            ),
            "{text}"
        );
        // Limits shown as they are typed; unreported settings left out.
        d.resync_rate_kib = Some(0);
        d.resync_max_kib = Some(1536);
        d.region_size = None;
        let text = status(&[d.clone()], false);
        assert!(
            text.contains("\n  resync-rate none  resync-max 1536K/s\n  LEG "),
            "{text}"
        );
        // A linear device has none: no line.
        let text = status(&[device()], false);
        assert!(!text.contains("region-size"), "{text}");
        assert!(!text.contains("resync"), "{text}");
        // The list is as before.
        assert!(list(&[d.clone()]).ends_with("(resyncing 42%)\n"));

        // JSON: the settings on the device, the speed and ETA on the leg.
        let v: serde_json::Value = serde_json::from_str(&json(&d)).unwrap();
        assert_eq!(v["region_size"], serde_json::Value::Null);
        assert_eq!(v["resync_rate_kib"], 0);
        assert_eq!(v["resync_max_kib"], 1536);
        assert_eq!(v["legs"][1]["resync_speed"], 5_662_310);
        assert_eq!(v["legs"][1]["resync_eta_s"], 7);
        assert_eq!(v["legs"][0]["resync_speed"], 0);
        assert!(v["legs"][0]["resync_eta_s"].is_null());
    }

    #[test]
    fn status_detached_and_resynced() {
        let mut d = device();
        d.legs[1].state = Wire::new(6);
        d.legs[1].resynced = 640 << 10;
        assert_eq!(
            status(&[d.clone()], false),
            "r1: /dev/dst0 mirror 64.0M degraded openers 1 block-size 512\n  \
             LEG  SPEC       DISK  SIZE   OFFSET  STATE     READS  WRITES  RERR  WERR  INFLIGHT\n  \
             0    /dev/ram0  ram0  64.0M  0B      in-sync   12345  0       0     0     0\n  \
             1    /dev/ram1  ram1  64.0M  0B      detached  12345  0       0     0     0\n       \
             resynced 640.0K in all\n"
        );
        assert!(list(&[d]).ends_with("/dev/ram0,/dev/ram1(detached)\n"));
        // Under a remote leg: after its peer, before its problem.
        let mut d = remote_device();
        d.legs[1].resynced = 3 << 30;
        let text = status(&[d], false);
        assert!(
            text.contains(
                "backoff-max 10s\n       resynced 3.0G in all\n       problem: connection"
            ),
            "{text}"
        );
        let v: serde_json::Value = serde_json::from_str(&json(&device())).unwrap();
        assert_eq!(v["legs"][0]["resynced"], 0);
    }

    #[test]
    fn legs_with_gaps() {
        // Leg 0 removed and leg 3 added (dstctl remove-leg, add): each leg
        // shows the kernel's index; a removed leg, should one be
        // reported, shows as such.
        let mut d = device();
        d.legs[0].index = 3;
        d.legs[0].state = Wire::new(7);
        d.legs.swap(0, 1);
        assert_eq!(
            status(&[d.clone()], false),
            "r1: /dev/dst0 mirror 64.0M degraded openers 1 block-size 512\n  \
             LEG  SPEC       DISK  SIZE   OFFSET  STATE    READS  WRITES  RERR  WERR  INFLIGHT\n  \
             1    /dev/ram1  ram1  64.0M  0B      faulty   12345  0       0     0     0\n  \
             3    /dev/ram0  ram0  64.0M  0B      removed  12345  0       0     0     0\n"
        );
        assert!(list(&[d.clone()]).ends_with("/dev/ram1(faulty),/dev/ram0(removed)\n"));
        let v: serde_json::Value = serde_json::from_str(&json(&d)).unwrap();
        assert_eq!(v["legs"][0]["index"], 1);
        assert_eq!(v["legs"][1]["index"], 3);
        assert_eq!(v["legs"][1]["state"], "removed");
    }

    #[test]
    fn status_write_mostly() {
        // A marker after the state; the columns stay aligned.
        let mut d = device();
        d.state = Wire::new(1);
        d.legs[1].state = Wire::new(1);
        d.legs[1].write_mostly = true;
        assert_eq!(
            status(&[d.clone()], false),
            "r1: /dev/dst0 mirror 64.0M ok openers 1 block-size 512\n  \
             LEG  SPEC       DISK  SIZE   OFFSET  STATE                  READS  WRITES  RERR  WERR  INFLIGHT\n  \
             0    /dev/ram0  ram0  64.0M  0B      in-sync                12345  0       0     0     0\n  \
             1    /dev/ram1  ram1  64.0M  0B      in-sync, write-mostly  12345  0       0     0     0\n"
        );
        // With a resync's progress; the list is as before.
        let mut d = remote_device();
        d.legs[1].write_mostly = true;
        let text = status(&[d.clone()], false);
        assert!(
            text.contains(
                "\n  1    nbd://store/disk  -     64.0M  0B      \
                 resyncing 42%, write-mostly  7      9  "
            ),
            "{text}"
        );
        assert!(list(&[d.clone()]).ends_with("/dev/ram0,nbd://store/disk(resyncing 42%)\n"));
        // JSON: on every leg.
        let v: serde_json::Value = serde_json::from_str(&json(&d)).unwrap();
        assert_eq!(v["legs"][0]["write_mostly"], false);
        assert_eq!(v["legs"][1]["write_mostly"], true);
    }

    #[test]
    fn list_shows_resync_progress() {
        let line = list(&[remote_device()]);
        assert!(
            line.ends_with("/dev/ram0,nbd://store/disk(resyncing 42%)\n"),
            "{line}"
        );
    }

    #[test]
    fn json_remote_leg() {
        let v: serde_json::Value = serde_json::from_str(&json(&remote_device())).unwrap();
        let leg = &v["legs"][1];
        assert_eq!(leg["kind"], "remote");
        assert_eq!(leg["addr"], "10.0.0.2:10809");
        assert_eq!(leg["state"], "resyncing");
        assert_eq!(leg["resync_done"], 27 << 20);
        assert_eq!(leg["connects"], 2);
        assert_eq!(leg["problem"], "connection reset by peer");
        let local = &v["legs"][0];
        assert_eq!(local["kind"], "local");
        for key in [
            "addr",
            "export",
            "timeout_ms",
            "nbd_flags",
            "connects",
            "problem",
        ] {
            assert!(local[key].is_null(), "{key}");
        }
        assert_eq!(local["resync_total"], 0);
    }

    /// `device()` exported twice: to two networks with clients, and
    /// read-only under the default name to loopback only.
    fn exported_device() -> Device {
        let mut d = device();
        d.exports = vec![
            Export {
                listen: "0.0.0.0:10809".into(),
                name: "r1".into(),
                read_only: false,
                allow: vec!["10.0.0.0/8".into(), "fd00::/64".into()],
                clients: 2,
                client_addrs: vec!["10.0.0.3:51234".into(), "10.0.0.4:40000".into()],
                refused: 3,
                requests: 123_456,
            },
            Export {
                listen: "[::1]:10900".into(),
                read_only: true,
                ..Export::default()
            },
        ];
        d
    }

    #[test]
    fn status_exports() {
        assert_eq!(
            status(&[exported_device()], false),
            "r1: /dev/dst0 mirror 64.0M degraded openers 1 block-size 512\n  \
             LEG  SPEC       DISK  SIZE   OFFSET  STATE    READS  WRITES  RERR  WERR  INFLIGHT\n  \
             0    /dev/ram0  ram0  64.0M  0B      in-sync  12345  0       0     0     0\n  \
             1    /dev/ram1  ram1  64.0M  0B      faulty   12345  0       0     0     0\n  \
             EXPORT     LISTEN         MODE  CLIENTS  REQUESTS  REFUSED  ALLOW\n  \
             r1         0.0.0.0:10809  rw    2        123456    3        10.0.0.0/8,fd00::/64\n    \
             client 10.0.0.3:51234\n    \
             client 10.0.0.4:40000\n  \
             (default)  [::1]:10900    ro    0        0         0        loopback only\n"
        );
        // Exports do not change the lines of a device without any, and
        // blocks stay separated by one blank line.
        let two = status(&[exported_device(), device()], false);
        assert!(two.contains("loopback only\n\nr1: "), "{two}");
        assert!(!status(&[device()], false).contains("EXPORT"));
        // Names from the kernel stay on one line.
        let mut d = exported_device();
        d.exports[0].name = "a\nb".into();
        d.exports[0].client_addrs = vec!["x\ty".into()];
        let text = status(&[d], false);
        assert!(text.contains("\n  a\\nb "), "{text}");
        assert!(text.contains("\n    client x\\ty\n"), "{text}");
    }

    #[test]
    fn json_exports() {
        let v: serde_json::Value = serde_json::from_str(&json(&[exported_device()])).unwrap();
        let e = &v[0]["exports"];
        assert_eq!(e.as_array().unwrap().len(), 2);
        assert_eq!(
            e[0],
            serde_json::json!({
                "listen": "0.0.0.0:10809", "name": "r1", "read_only": false,
                "allow": ["10.0.0.0/8", "fd00::/64"], "clients": 2,
                "client_addrs": ["10.0.0.3:51234", "10.0.0.4:40000"],
                "refused": 3, "requests": 123456
            })
        );
        assert_eq!(e[1]["allow"], serde_json::json!([]));
        assert_eq!(e[1]["read_only"], true);
        let v: serde_json::Value = serde_json::from_str(&json(&device())).unwrap();
        assert_eq!(v["exports"], serde_json::json!([]));
    }
}
