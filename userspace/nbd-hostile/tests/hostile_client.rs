// SPDX-License-Identifier: GPL-2.0

//! `nbd-hostile-client` against a small reference server built on
//! dst-proto's server side (`server_handshake` and `check_request`, as the
//! kernel uses them): every mode must find the server well-behaved.

use dst_proto::nbd::{cmd, tflag, Request, SimpleReply};
use dst_proto::nbd_server::{
    check_request, server_handshake, ExportLookup, RequestVerdict, ServedExport, SERVER_SCRATCH_LEN,
};
use nbd_hostile::IoTransport;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

const SIZE: u64 = 8 << 20;

fn disk(read_only: bool) -> ServedExport {
    let mut tflags = tflag::HAS_FLAGS | tflag::SEND_FLUSH | tflag::SEND_FUA | tflag::SEND_TRIM;
    if read_only {
        tflags |= tflag::READ_ONLY;
    }
    ServedExport {
        size: SIZE,
        tflags,
        min_block: 512,
        pref_block: 4096,
        max_block: 1 << 20,
    }
}

/// Exports "" and "disk" (read-write, shared) and "ro" (read-only).
struct Exports;

impl ExportLookup for Exports {
    fn lookup(&mut self, name: &[u8]) -> Option<ServedExport> {
        match name {
            b"" | b"disk" => Some(disk(false)),
            b"ro" => Some(disk(true)),
            _ => None,
        }
    }

    fn for_each_export(&mut self, f: &mut dyn FnMut(&[u8], &[u8])) {
        f(b"disk", b"memory");
        f(b"ro", b"memory, read-only");
    }
}

fn serve(mut s: TcpStream, store: &Mutex<Vec<u8>>) -> io::Result<()> {
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.set_write_timeout(Some(Duration::from_secs(2)))?;
    let mut scratch = vec![0; SERVER_SCRATCH_LEN];
    let n = server_handshake(&mut IoTransport(&mut s), &mut Exports, &mut scratch)
        .map_err(|e| io::Error::other(e.what()))?;
    let e = n.export;
    loop {
        let mut hdr = [0; Request::SIZE];
        s.read_exact(&mut hdr)?;
        let req = Request::decode(&hdr).map_err(|_| io::Error::other("bad request magic"))?;
        let reply = |error| {
            SimpleReply {
                error,
                cookie: req.cookie,
            }
            .encode()
        };
        match check_request(&req, &e) {
            Err(RequestVerdict::Fatal(why)) => return Err(io::Error::other(why)),
            Err(RequestVerdict::Error(v)) => {
                if req.has_payload() {
                    io::copy(&mut (&mut s).take(u64::from(req.length)), &mut io::sink())?;
                }
                s.write_all(&reply(v))?;
            }
            Ok(()) => {
                let range = req.offset as usize..(req.offset + u64::from(req.length)) as usize;
                match req.kind {
                    cmd::DISC => return Ok(()),
                    cmd::READ => {
                        let mut out = reply(0).to_vec();
                        out.extend_from_slice(&store.lock().unwrap()[range]);
                        s.write_all(&out)?;
                    }
                    cmd::WRITE => {
                        let mut data = vec![0; req.length as usize];
                        s.read_exact(&mut data)?;
                        store.lock().unwrap()[range].copy_from_slice(&data);
                        s.write_all(&reply(0))?;
                    }
                    _ => s.write_all(&reply(0))?,
                }
            }
        }
    }
}

fn start() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let store = Arc::new(Mutex::new(vec![0u8; SIZE as usize]));
    thread::spawn(move || {
        for s in l.incoming().flatten() {
            let store = Arc::clone(&store);
            thread::spawn(move || {
                let _ = serve(s, &store);
            });
        }
    });
    addr
}

fn client(addr: SocketAddr, mode: &str, extra: &[&str]) -> (bool, String) {
    let t0 = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_nbd-hostile-client"))
        .args(["--connect", &addr.to_string(), "--mode", mode])
        .args(["--timeout", "3", "--hold", "0.3", "--count", "20"])
        .args(extra)
        .output()
        .expect("run nbd-hostile-client");
    let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
    eprintln!("{line} ({:.1?})", t0.elapsed());
    (out.status.success(), line)
}

#[test]
fn every_mode_finds_the_reference_server_well_behaved() {
    let addr = start();
    let cases: &[(&str, &[&str], &str)] = &[
        ("good", &[], "wrote and verified"),
        ("good", &["--export", "disk"], "disconnected"),
        ("bad-magic", &[], "closed"),
        ("bad-flags", &[], "closed"),
        ("no-fixed", &[], "closed"),
        ("huge-option", &[], "closed"),
        ("many-options", &[], "closed the connection"),
        ("abort", &[], "NBD_REP_ACK and closed"),
        (
            "list",
            &[],
            "listed 2 exports [\"disk\", \"ro\"]; LIST with data: NBD_REP_ERR_INVALID",
        ),
        ("truncated", &[], "closed"),
        ("go-unknown-export", &[], "NBD_REP_ERR_UNKNOWN"),
        (
            "oob-read",
            &[],
            "replied EINVAL; the connection still works",
        ),
        (
            "oob-write",
            &[],
            "replied ENOSPC; the connection still works",
        ),
        (
            "huge-read",
            &[],
            "replied EINVAL; the connection still works",
        ),
        (
            "unknown-cmd",
            &[],
            "replied EINVAL; the connection still works",
        ),
        (
            "bad-flags-cmd",
            &[],
            "replied EINVAL; the connection still works",
        ),
        (
            "ro-write",
            &["--export", "ro"],
            "replied EPERM; the connection still works",
        ),
        ("garbage", &[], "closed"),
        ("no-read", &[], "a new client then completed GO"),
        ("conn-flood", &[], "a new client then completed GO"),
    ];
    let mut failed = Vec::new();
    for (mode, extra, want) in cases {
        let (ok, line) = client(addr, mode, extra);
        if !ok || !line.contains(want) {
            failed.push(format!("{mode}: expected '{want}', got: {line}"));
        }
    }
    // And the failures are seen as such.
    let (ok, line) = client(addr, "ro-write", &["--export", "disk"]);
    if ok || !line.contains("replied success") {
        failed.push(format!("ro-write on a writable export: {line}"));
    }
    let (ok, line) = client(addr, "go-unknown-export", &["--export", "disk"]);
    if ok || !line.contains("accepted export") {
        failed.push(format!("go-unknown-export on a known export: {line}"));
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

#[test]
fn a_server_that_hangs_is_reported() {
    // Accepts, greets, then never reads nor closes.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    thread::spawn(move || {
        let mut held = Vec::new();
        for mut s in l.incoming().flatten() {
            let _ = s.write_all(&dst_proto::nbd::encode_greeting(3));
            held.push(s);
        }
    });
    let t0 = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_nbd-hostile-client"))
        .args(["--connect", &addr.to_string(), "--mode", "bad-flags"])
        .args(["--timeout", "1"])
        .output()
        .unwrap();
    let line = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{line}");
    assert!(line.contains("neither answered nor closed"), "{line}");
    assert!(t0.elapsed() < Duration::from_secs(5));
    // Bad usage.
    let out = Command::new(env!("CARGO_BIN_EXE_nbd-hostile-client"))
        .args(["--mode", "good"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// libnbd's nbdinfo --json: STRUCTURED_REPLY, INFO, then GO on the same
/// connection (run only where nbdinfo is installed).
#[test]
fn nbdinfo_json_against_the_reference_server() {
    if Command::new("nbdinfo").arg("--version").output().is_err() {
        return;
    }
    let addr = start();
    let out = Command::new("timeout")
        .args(["20", "nbdinfo", "--json", &format!("nbd://{addr}/disk")])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "nbdinfo failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
