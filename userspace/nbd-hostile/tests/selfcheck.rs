// SPDX-License-Identifier: GPL-2.0

//! nbd-hostile against dst-proto's client handshake: the good server works,
//! and each misbehaviour is seen by the client as what it is.

mod common;

use common::Client;
use dst_proto::nbd::{
    cmd, cmdflag, err, rep, HandshakeError, WireError, DEFAULT_MAX_BLOCK, DEFAULT_MIN_BLOCK,
    DEFAULT_PREF_BLOCK,
};
use nbd_hostile::server::DEFAULT_TFLAGS;
use nbd_hostile::{Config, Mode, Server};
use std::io::{BufRead, BufReader, ErrorKind};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;

fn start(mode: Mode, tweak: impl FnOnce(&mut Config)) -> SocketAddr {
    let mut config = Config {
        mode,
        ..Config::default()
    };
    tweak(&mut config);
    Server::bind("127.0.0.1:0", config)
        .expect("bind")
        .spawn()
        .expect("spawn")
}

fn pattern(seed: u8, n: usize) -> Vec<u8> {
    (0..n).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect()
}

#[test]
fn good_handshake_and_io() {
    let addr = start(Mode::Good, |_| {});
    let (mut c, info) = Client::open(addr, b"disk");
    assert_eq!(info.size, 64 * MIB);
    assert_eq!(info.flags, DEFAULT_TFLAGS);
    assert_eq!(
        (info.min_block, info.pref_block, info.max_block),
        (512, 4096, 32 << 20)
    );

    let data = pattern(7, 8192);
    assert_eq!(c.call(cmd::WRITE, cmdflag::FUA, 4096, 8192, &data).0, 0);
    assert_eq!(c.call(cmd::READ, 0, 4096, 8192, &[]), (0, data.clone()));
    assert_eq!(c.call(cmd::FLUSH, 0, 0, 0, &[]).0, 0);
    // The end of the export, and past it.
    let last = 64 * MIB - 512;
    assert_eq!(c.call(cmd::WRITE, 0, last, 512, &[1; 512]).0, 0);
    assert_eq!(c.call(cmd::WRITE, 0, last, 1024, &[1; 1024]).0, err::ENOSPC);
    assert_eq!(c.call(cmd::READ, 0, last, 1024, &[]).0, err::EINVAL);
    // Unaligned.
    assert_eq!(c.call(cmd::READ, 0, 100, 512, &[]).0, err::EINVAL);
    assert_eq!(c.call(cmd::WRITE, 0, 0, 100, &[0; 100]).0, err::EINVAL);
    // Trim and write zeroes clear.
    assert_eq!(c.call(cmd::TRIM, 0, 4096, 4096, &[]).0, 0);
    assert_eq!(c.call(cmd::WRITE_ZEROES, 0, 8192, 512, &[]).0, 0);
    let (e, got) = c.call(cmd::READ, 0, 4096, 8192, &[]);
    assert_eq!(e, 0);
    assert!(got[..4096 + 512].iter().all(|&b| b == 0));
    assert_eq!(got[4096 + 512..], data[4096 + 512..]);
    // Unknown commands.
    assert_eq!(c.call(cmd::BLOCK_STATUS, 0, 0, 512, &[]).0, err::EINVAL);
    c.send(cmd::DISC, 0, 0, 0, &[]);
    assert_eq!(c.reply().unwrap_err().kind(), ErrorKind::UnexpectedEof);

    // Another connection sees the same data.
    let (mut c, _) = Client::open(addr, b"");
    assert_eq!(
        c.call(cmd::READ, 0, 9216, 512, &[]),
        (0, data[5120..5632].to_vec())
    );
}

#[test]
fn pipelined_requests() {
    let addr = start(Mode::Good, |_| {});
    let (mut c, _) = Client::open(addr, b"");
    let cookies: Vec<u64> = (0..32)
        .map(|i| c.send(cmd::WRITE, 0, i * 4096, 4096, &pattern(i as u8, 4096)))
        .collect();
    for cookie in cookies {
        let r = c.reply().unwrap().unwrap();
        assert_eq!((r.error, r.cookie), (0, cookie));
    }
    for i in 0..32u64 {
        assert_eq!(
            c.call(cmd::READ, 0, i * 4096, 4096, &[]).1,
            pattern(i as u8, 4096)
        );
    }
}

#[test]
fn read_only_and_export_names() {
    let addr = start(Mode::Good, |c| {
        c.export = Some("disk".into());
        c.tflags = DEFAULT_TFLAGS | dst_proto::nbd::tflag::READ_ONLY;
    });
    let r = Client::connect(addr).handshake(b"other");
    assert!(
        matches!(
            r,
            Err(HandshakeError::Refused {
                reply: rep::ERR_UNKNOWN
            })
        ),
        "{r:?}"
    );
    let (mut c, info) = Client::open(addr, b"disk");
    assert_ne!(info.flags & dst_proto::nbd::tflag::READ_ONLY, 0);
    assert_eq!(c.call(cmd::WRITE, 0, 0, 512, &[1; 512]).0, err::EPERM);
}

#[test]
fn go_unsup_falls_back_to_export_name() {
    let addr = start(Mode::GoUnsup, |c| c.size = 3 * MIB);
    let (mut c, info) = Client::open(addr, b"disk");
    assert_eq!(info.size, 3 * MIB);
    assert_eq!(
        (info.min_block, info.pref_block, info.max_block),
        (DEFAULT_MIN_BLOCK, DEFAULT_PREF_BLOCK, DEFAULT_MAX_BLOCK)
    );
    assert_eq!(c.call(cmd::WRITE, 0, 0, 512, &[9; 512]).0, 0);
    assert_eq!(c.call(cmd::READ, 0, 0, 512, &[]).1, vec![9; 512]);
    // An unknown export makes an old server hang up.
    let addr = start(Mode::GoUnsup, |c| c.export = Some("disk".into()));
    let r = Client::connect(addr).handshake(b"other");
    assert!(matches!(r, Err(HandshakeError::Io(_))), "{r:?}");
}

#[test]
fn handshake_misbehaviours() {
    type Check = fn(&common::HsResult) -> bool;
    let cases: [(Mode, Check); 7] = [
        (Mode::BadGreetingMagic, |r| {
            matches!(r, Err(HandshakeError::BadMagic))
        }),
        (Mode::Oldstyle, |r| {
            matches!(r, Err(HandshakeError::NotFixedNewstyle))
        }),
        (Mode::NoFixedNewstyle, |r| {
            matches!(r, Err(HandshakeError::NotFixedNewstyle))
        }),
        (Mode::OptReplyBadMagic, |r| {
            matches!(r, Err(HandshakeError::BadMagic))
        }),
        (Mode::OptReplyHugeLen, |r| {
            matches!(r, Err(HandshakeError::Protocol("option reply is too long")))
        }),
        (
            Mode::NoInfoExport,
            |r| matches!(r, Err(HandshakeError::Protocol(m)) if m.contains("NBD_INFO_EXPORT")),
        ),
        (Mode::ZeroSize, |r| {
            matches!(r, Err(HandshakeError::Protocol("the export is empty")))
        }),
    ];
    for (mode, ok) in cases {
        let addr = start(mode, |c| c.delay = Duration::from_millis(10));
        let t = Instant::now();
        let r = Client::connect(addr).handshake(b"disk");
        assert!(ok(&r), "{mode}: {r:?}");
        assert!(t.elapsed() < Duration::from_secs(2), "{mode} took too long");
    }
    // Each connection gets another impossible set of block sizes.
    let addr = start(Mode::InfoGarbage, |_| {});
    for _ in 0..7 {
        let r = Client::connect(addr).handshake(b"disk");
        assert!(
            matches!(r, Err(HandshakeError::Protocol(m)) if m.contains("block size")),
            "{r:?}"
        );
    }
}

#[test]
fn reply_misbehaviours() {
    // Two good requests, then a bad reply.
    let after = |mode| start(mode, |c| c.after = 2);
    let two_good = |c: &mut Client| {
        assert_eq!(c.call(cmd::WRITE, 0, 0, 512, &[5; 512]).0, 0);
        assert_eq!(c.call(cmd::READ, 0, 0, 512, &[]), (0, vec![5; 512]));
    };

    let (mut c, _) = Client::open(after(Mode::ReplyBadMagic), b"");
    two_good(&mut c);
    c.send(cmd::FLUSH, 0, 0, 0, &[]);
    assert_eq!(c.reply().unwrap(), Err(WireError::BadMagic));

    let (mut c, _) = Client::open(after(Mode::ReplyStructured), b"");
    two_good(&mut c);
    c.send(cmd::READ, 0, 0, 512, &[]);
    assert_eq!(c.reply().unwrap(), Err(WireError::Structured));

    let (mut c, _) = Client::open(after(Mode::ReplyUnknownCookie), b"");
    two_good(&mut c);
    let cookie = c.send(cmd::FLUSH, 0, 0, 0, &[]);
    assert_ne!(c.reply().unwrap().unwrap().cookie, cookie);

    // Answered on another connection; with none other open, answered well.
    let addr = after(Mode::ReplyCross);
    let (mut c, _) = Client::open(addr, b"");
    two_good(&mut c);
    assert_eq!(c.call(cmd::READ, 0, 0, 512, &[]), (0, vec![5; 512]));
    let (mut other, _) = Client::open(addr, b"");
    // The server lists a connection once its handshake is over, which the
    // client may see first: a request answered on it shows it is listed.
    assert_eq!(other.call(cmd::READ, 0, 0, 512, &[]), (0, vec![5; 512]));
    let cookie = c.send(cmd::READ, 0, 0, 512, &[]);
    let r = other.reply().unwrap().unwrap();
    assert_eq!((r.error, r.cookie), (0, cookie));
    assert_eq!(other.data(512).unwrap(), vec![5; 512]);

    let (mut c, _) = Client::open(after(Mode::ReplyTwice), b"");
    two_good(&mut c);
    let cookie = c.send(cmd::READ, 0, 0, 512, &[]);
    for _ in 0..2 {
        let r = c.reply().unwrap().unwrap();
        assert_eq!((r.error, r.cookie), (0, cookie));
        assert_eq!(c.data(512).unwrap(), vec![5; 512]);
    }

    let (mut c, _) = Client::open(after(Mode::ReplyTruncated), b"");
    two_good(&mut c);
    let cookie = c.send(cmd::READ, 0, 0, 4096, &[]);
    assert_eq!(c.reply().unwrap().unwrap().cookie, cookie);
    assert_eq!(c.data(4096).unwrap_err().kind(), ErrorKind::UnexpectedEof);
    let (mut c, _) = Client::open(after(Mode::ReplyTruncated), b"");
    two_good(&mut c);
    c.send(cmd::FLUSH, 0, 0, 0, &[]);
    assert_eq!(c.reply().unwrap_err().kind(), ErrorKind::UnexpectedEof);

    let (mut c, _) = Client::open(after(Mode::ErrorWrites), b"");
    two_good(&mut c);
    assert_eq!(c.call(cmd::WRITE, 0, 0, 512, &[6; 512]).0, err::EIO);
    assert_eq!(c.call(cmd::READ, 0, 0, 512, &[]), (0, vec![5; 512]));

    let (mut c, _) = Client::open(after(Mode::ErrorReads), b"");
    two_good(&mut c);
    assert_eq!(c.call(cmd::READ, 0, 0, 512, &[]), (err::EIO, vec![]));
    assert_eq!(c.call(cmd::WRITE, 0, 0, 512, &[6; 512]).0, 0);

    let (mut c, _) = Client::open(after(Mode::Garbage), b"");
    two_good(&mut c);
    let r = c.reply();
    assert!(matches!(r, Ok(Err(_))), "garbage decoded as a reply: {r:?}");
}

#[test]
fn connection_misbehaviours() {
    let addr = start(Mode::CloseAfterHandshake, |_| {});
    let (mut c, _) = Client::open(addr, b"");
    assert!(c.reply().is_err());

    let addr = start(Mode::CloseMidRequest, |c| c.after = 1);
    let (mut c, _) = Client::open(addr, b"");
    assert_eq!(c.call(cmd::FLUSH, 0, 0, 0, &[]).0, 0);
    for i in 0..4 {
        c.send(cmd::READ, 0, i * 512, 512, &[]);
    }
    assert!(c.reply().is_err());

    let addr = start(Mode::NeverReply, |_| {});
    let (mut c, _) = Client::open(addr, b"");
    c.s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    c.send(cmd::FLUSH, 0, 0, 0, &[]);
    let e = c.reply().unwrap_err();
    assert!(
        matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        "{e:?}"
    );

    let addr = start(Mode::SlowTrickle, |c| c.delay = Duration::from_millis(2));
    let (mut c, _) = Client::open(addr, b"");
    let t = Instant::now();
    assert_eq!(c.call(cmd::READ, 0, 0, 16, &[]).0, err::EINVAL);
    assert!(t.elapsed() >= Duration::from_millis(30));

    let addr = start(Mode::SizeChange, |c| c.size = MIB);
    let sizes: Vec<u64> = (0..3).map(|_| Client::open(addr, b"").1.size).collect();
    assert_eq!(sizes, [MIB, 2 * MIB, 3 * MIB]);
    let (mut c, _) = Client::open(addr, b"");
    assert_eq!(c.call(cmd::WRITE, 0, 4 * MIB - 512, 512, &[1; 512]).0, 0);
}

#[test]
fn binary_once() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_nbd-hostile"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--once",
            "--size",
            "1M",
            "--export",
            "d",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .expect("run nbd-hostile");
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    err.read_line(&mut line).unwrap();
    let addr: SocketAddr = line
        .strip_prefix("nbd-hostile: listening on ")
        .and_then(|l| l.split(',').next())
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .parse()
        .unwrap();
    let (mut c, info) = Client::open(addr, b"d");
    assert_eq!(info.size, MIB);
    c.send(cmd::DISC, 0, 0, 0, &[]);
    assert!(child.wait().unwrap().success());
    line.clear();
    err.read_line(&mut line).unwrap();
    assert!(line.contains("NBD_CMD_DISC"), "{line:?}");
}
