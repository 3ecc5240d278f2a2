// SPDX-License-Identifier: GPL-2.0

//! `nbd-hostile`: an in-memory NBD server that can misbehave on purpose.
//!
//! In [`Mode::Good`] it is a correct fixed newstyle server (options GO,
//! INFO, EXPORT_NAME, ABORT, LIST; commands READ, WRITE, FLUSH, TRIM,
//! WRITE_ZEROES, CACHE, DISC; simple replies).  The other modes break one
//! rule each, so tests can check that an NBD client (dst's kernel leg)
//! survives hostile servers.  All connections share one zero-filled export.

pub mod modes;
pub mod server;

pub use modes::Mode;
pub use server::{Config, Server};

use dst_proto::nbd::Transport;
use std::io::{self, Read, Write};

/// A [`Transport`] over any byte stream (e.g. a `TcpStream`), for running
/// `dst_proto::nbd::client_handshake` in userspace.
#[derive(Debug)]
pub struct IoTransport<S>(pub S);

impl<S: Read + Write> Transport for IoTransport<S> {
    type Error = io::Error;

    fn send_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.0.write_all(buf)
    }

    fn recv_exact(&mut self, buf: &mut [u8]) -> io::Result<()> {
        self.0.read_exact(buf)
    }
}
