// SPDX-License-Identifier: GPL-2.0

//! Human-readable tables and JSON.

use serde::Serialize;

use crate::model::Device;

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
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0; cols];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count().max(1));
        }
    }
    let mut out = String::new();
    for row in rows {
        let mut line = String::from(indent);
        for (i, (cell, w)) in row.iter().zip(&widths).enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            let cell = if cell.is_empty() { "-" } else { cell.as_str() };
            line.push_str(&format!("{cell:<w$}"));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The legs of a device in one cell: specs in order, a leg that is not in
/// sync followed by its state, e.g. `/dev/ram0,/dev/ram1(faulty)`.
fn legs_cell(d: &Device) -> String {
    let legs: Vec<String> = d
        .legs
        .iter()
        .map(|l| match l.state.to_string().as_str() {
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
/// devices separated by a blank line.
pub fn status(devices: &[Device]) -> String {
    let blocks: Vec<String> = devices.iter().map(status_block).collect();
    blocks.join("\n")
}

fn status_block(d: &Device) -> String {
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
    let header = [
        "LEG", "SPEC", "DISK", "SIZE", "OFFSET", "STATE", "READS", "WRITES", "RERR", "WERR",
        "INFLIGHT",
    ];
    let mut rows = vec![header.map(String::from).to_vec()];
    rows.extend(d.legs.iter().map(|l| {
        vec![
            l.index.to_string(),
            l.spec.clone(),
            l.disk.clone(),
            human_size(l.size),
            human_size(l.offset),
            l.state.to_string(),
            l.reads.to_string(),
            l.writes.to_string(),
            l.read_errors.to_string(),
            l.write_errors.to_string(),
            l.inflight.to_string(),
        ]
    }));
    out.push_str(&table(&rows, "  "));
    out
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
    use crate::model::{Leg, Wire};

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
            status(&[device()]),
            "r1: /dev/dst0 mirror 64.0M degraded openers 1 block-size 512\n  \
             LEG  SPEC       DISK  SIZE   OFFSET  STATE    READS  WRITES  RERR  WERR  INFLIGHT\n  \
             0    /dev/ram0  ram0  64.0M  0B      in-sync  12345  0       0     0     0\n  \
             1    /dev/ram1  ram1  64.0M  0B      faulty   12345  0       0     0     0\n"
        );
        let two = status(&[device(), device()]);
        assert!(two.contains("0\n\nr1: "));
    }

    #[test]
    fn json_array() {
        let v: serde_json::Value = serde_json::from_str(&json(&[device()])).unwrap();
        assert_eq!(v[0]["legs"][1]["state"], "faulty");
        assert_eq!(json(&Vec::<Device>::new()), "[]\n");
    }
}
