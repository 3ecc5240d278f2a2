// SPDX-License-Identifier: GPL-2.0

//! Command line of `nbd-hostile`; see `--help`.

use dst_proto::nbd::tflag;
use nbd_hostile::{Config, Mode, Server};
use std::process::ExitCode;
use std::time::Duration;

const USAGE: &str = "\
usage: nbd-hostile --listen ADDR:PORT [options]

An in-memory NBD server (fixed newstyle, simple replies) that can misbehave
on purpose.  Serves connections in parallel, all on one zero-filled export;
prints one line per connection to stderr.  Port 0 picks a free port; the
first line printed says which.

options:
  --listen ADDR:PORT   where to listen (e.g. 127.0.0.1:10809, [::]:0)
  --size SIZE          export size: bytes, or with K, M, G, T (default 64M)
  --export NAME        serve only this export name (default: any name)
  --mode MODE          behaviour (default good), see below
  --after N            transmission modes: serve N requests well first (default 0)
  --delay-ms MS        delay per byte when trickling (default 200)
  --flags LIST         transmission flags: comma-separated names among
                       read-only, flush, fua, rotational, trim, write-zeroes,
                       multi-conn, cache, fast-zero (or 'none'; HAS_FLAGS is
                       always added), or a raw number sent as is (e.g. 0x1)
                       (default flush,fua,trim,write-zeroes,multi-conn)
  --block-size MIN,PREF,MAX
                       advertised block sizes, sent as given (default 512,4096,33554432)
  --once               serve one connection, then exit
  --help               this text

modes:
";

fn parse_size(s: &str) -> Result<u64, String> {
    let bad = || format!("bad size '{s}' (e.g. 1048576, 64M, 1G)");
    let lower = s.to_ascii_lowercase();
    let t = lower
        .strip_suffix("ib")
        .or_else(|| lower.strip_suffix('b'))
        .unwrap_or(&lower);
    let (num, shift) = match t.as_bytes().last() {
        Some(b'k') => (&t[..t.len() - 1], 10),
        Some(b'm') => (&t[..t.len() - 1], 20),
        Some(b'g') => (&t[..t.len() - 1], 30),
        Some(b't') => (&t[..t.len() - 1], 40),
        _ => (t, 0),
    };
    let n: u64 = num.parse().map_err(|_| bad())?;
    n.checked_mul(1 << shift).ok_or_else(bad)
}

fn parse_number(s: &str) -> Option<u64> {
    match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

fn parse_flags(s: &str) -> Result<u16, String> {
    if let Some(n) = parse_number(s) {
        return u16::try_from(n).map_err(|_| format!("flags {s} do not fit 16 bits"));
    }
    let mut flags = tflag::HAS_FLAGS;
    for name in s.split(',').filter(|n| !n.is_empty()) {
        flags |= match name {
            "none" => 0,
            "read-only" => tflag::READ_ONLY,
            "flush" => tflag::SEND_FLUSH,
            "fua" => tflag::SEND_FUA,
            "rotational" => tflag::ROTATIONAL,
            "trim" => tflag::SEND_TRIM,
            "write-zeroes" => tflag::SEND_WRITE_ZEROES,
            "multi-conn" => tflag::CAN_MULTI_CONN,
            "cache" => tflag::SEND_CACHE,
            "fast-zero" => tflag::SEND_FAST_ZERO,
            _ => return Err(format!("unknown transmission flag '{name}'")),
        };
    }
    Ok(flags)
}

fn parse_block(s: &str) -> Result<[u32; 3], String> {
    let v: Vec<u32> = s
        .split(',')
        .map(|p| parse_number(p).and_then(|n| u32::try_from(n).ok()))
        .collect::<Option<_>>()
        .ok_or_else(|| format!("bad block sizes '{s}' (expected MIN,PREF,MAX)"))?;
    v.try_into()
        .map_err(|_| format!("bad block sizes '{s}' (expected MIN,PREF,MAX)"))
}

struct Args {
    listen: String,
    config: Config,
    once: bool,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Option<Args>, String> {
    let mut listen = None;
    let mut config = Config::default();
    let mut once = false;
    while let Some(arg) = args.next() {
        let (key, inline) = match arg.split_once('=') {
            Some((k, v)) if k.starts_with("--") => (k.to_string(), Some(v.to_string())),
            _ => (arg, None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{key} needs a value"))
        };
        match key.as_str() {
            "--help" | "-h" => return Ok(None),
            "--once" => once = true,
            "--listen" => listen = Some(value()?),
            "--size" => config.size = parse_size(&value()?)?,
            "--export" => config.export = Some(value()?),
            "--mode" => config.mode = value()?.parse()?,
            "--after" => {
                let v = value()?;
                config.after = v.parse().map_err(|_| format!("bad --after '{v}'"))?;
            }
            "--delay-ms" => {
                let v = value()?;
                let ms = v.parse().map_err(|_| format!("bad --delay-ms '{v}'"))?;
                config.delay = Duration::from_millis(ms);
            }
            "--flags" => config.tflags = parse_flags(&value()?)?,
            "--block-size" => config.block = parse_block(&value()?)?,
            _ => return Err(format!("unknown argument '{key}' (see --help)")),
        }
    }
    let listen = listen.ok_or("--listen ADDR:PORT is required (see --help)")?;
    Ok(Some(Args {
        listen,
        config,
        once,
    }))
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(Some(a)) => a,
        Ok(None) => {
            print!("{USAGE}");
            for m in Mode::ALL {
                println!("  {:<22} {}", m.name(), m.help());
            }
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("nbd-hostile: {e}");
            return ExitCode::from(2);
        }
    };
    let mode = args.config.mode;
    let size = args.config.size;
    let server = match Server::bind(&args.listen, args.config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("nbd-hostile: cannot listen on {}: {e}", args.listen);
            return ExitCode::FAILURE;
        }
    };
    match server.local_addr() {
        Ok(a) => eprintln!("nbd-hostile: listening on {a}, mode {mode}, size {size}"),
        Err(e) => eprintln!("nbd-hostile: listening (address unknown: {e})"),
    }
    let result = if args.once {
        server.serve_one().map(|line| eprintln!("{line}"))
    } else {
        server.run()
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nbd-hostile: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert_eq!(parse_size("2KB"), Ok(2048));
        assert!(parse_size("").is_err());
        assert!(parse_size("M").is_err());
        assert!(parse_size("12x").is_err());
        assert!(parse_size("99999999999T").is_err());
    }

    #[test]
    fn flags_and_blocks() {
        assert_eq!(parse_flags("none"), Ok(tflag::HAS_FLAGS));
        assert_eq!(
            parse_flags("read-only,flush"),
            Ok(tflag::HAS_FLAGS | tflag::READ_ONLY | tflag::SEND_FLUSH)
        );
        assert_eq!(parse_flags("0x0"), Ok(0));
        assert!(parse_flags("bogus").is_err());
        assert_eq!(parse_block("1,4096,0xffffffff"), Ok([1, 4096, u32::MAX]));
        assert!(parse_block("1,4096").is_err());
    }

    #[test]
    fn args() {
        let a = |v: &[&str]| parse_args(v.iter().map(|s| s.to_string()));
        let args = a(&[
            "--listen=127.0.0.1:0",
            "--mode",
            "reply-twice",
            "--after",
            "3",
            "--once",
        ])
        .unwrap()
        .unwrap();
        assert_eq!(args.listen, "127.0.0.1:0");
        assert_eq!(args.config.mode, Mode::ReplyTwice);
        assert_eq!(args.config.after, 3);
        assert!(args.once);
        assert!(a(&["--mode", "good"]).is_err());
        assert!(a(&["--listen"]).is_err());
        assert!(a(&["--listen", "x", "--bogus"]).is_err());
        assert!(a(&["--help"]).unwrap().is_none());
    }
}
