// SPDX-License-Identifier: GPL-2.0

//! A small synchronous NBD client for the tests, built on dst-proto.

#![allow(dead_code)]

use dst_proto::nbd::{
    client_handshake, ExportInfo, HandshakeError, Request, SimpleReply, WireError,
};
use nbd_hostile::IoTransport;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

pub type HsResult = Result<ExportInfo, HandshakeError<io::Error>>;

pub struct Client {
    pub s: TcpStream,
    next: u64,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Self {
        let s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.set_nodelay(true).unwrap();
        Client { s, next: 0x1000 }
    }

    /// Connects, retrying while the server is not listening yet.
    pub fn connect_retry(addr: SocketAddr) -> Self {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            match TcpStream::connect(addr) {
                Ok(s) => {
                    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                    s.set_nodelay(true).unwrap();
                    return Client { s, next: 0x1000 };
                }
                Err(e) if std::time::Instant::now() > deadline => {
                    panic!("cannot connect to {addr}: {e}")
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    pub fn handshake(&mut self, export: &[u8]) -> HsResult {
        let mut t = IoTransport(&mut self.s);
        client_handshake(&mut t, export)
    }

    /// Connects and completes a handshake that must succeed.
    pub fn open(addr: SocketAddr, export: &[u8]) -> (Self, ExportInfo) {
        let mut c = Client::connect(addr);
        let info = c.handshake(export).expect("handshake");
        (c, info)
    }

    /// Sends a request (with `data` after it); returns its cookie.
    pub fn send(&mut self, kind: u16, flags: u16, offset: u64, length: u32, data: &[u8]) -> u64 {
        self.next += 1;
        let req = Request {
            flags,
            kind,
            cookie: self.next,
            offset,
            length,
        };
        let mut buf = req.encode().to_vec();
        buf.extend_from_slice(data);
        self.s.write_all(&buf).expect("send request");
        self.next
    }

    pub fn reply(&mut self) -> io::Result<Result<SimpleReply, WireError>> {
        let mut buf = [0; SimpleReply::SIZE];
        self.s.read_exact(&mut buf)?;
        Ok(SimpleReply::decode(&buf))
    }

    pub fn data(&mut self, n: usize) -> io::Result<Vec<u8>> {
        let mut buf = vec![0; n];
        self.s.read_exact(&mut buf)?;
        Ok(buf)
    }

    /// A request and its simple reply, which must answer it: the error and
    /// the data read.
    pub fn call(
        &mut self,
        kind: u16,
        flags: u16,
        offset: u64,
        length: u32,
        data: &[u8],
    ) -> (u32, Vec<u8>) {
        let cookie = self.send(kind, flags, offset, length, data);
        let r = self.reply().expect("reply").expect("simple reply");
        assert_eq!(r.cookie, cookie);
        let data = if kind == dst_proto::nbd::cmd::READ && r.error == 0 {
            self.data(length as usize).expect("read data")
        } else {
            Vec::new()
        };
        (r.error, data)
    }
}
