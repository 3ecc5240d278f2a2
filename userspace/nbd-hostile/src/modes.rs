// SPDX-License-Identifier: GPL-2.0

//! The ways the server can (mis)behave.

use std::fmt;
use std::str::FromStr;

macro_rules! modes {
    ($($variant:ident = $name:literal: $help:literal,)*) => {
        /// A server behaviour, chosen with `--mode`.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Mode {
            $(#[doc = $help] $variant,)*
        }

        impl Mode {
            /// Every mode, in `--help` order.
            pub const ALL: &'static [Mode] = &[$(Mode::$variant,)*];

            /// The mode's name on the command line.
            pub fn name(self) -> &'static str {
                match self {
                    $(Mode::$variant => $name,)*
                }
            }

            /// One line saying what the mode does.
            pub fn help(self) -> &'static str {
                match self {
                    $(Mode::$variant => $help,)*
                }
            }
        }
    };
}

modes! {
    Good = "good": "a correct server",
    BadGreetingMagic = "bad-greeting-magic": "greeting starts with NBDMAGIX instead of NBDMAGIC",
    Oldstyle = "oldstyle": "oldstyle greeting (size and flags, no option haggling)",
    NoFixedNewstyle = "no-fixed-newstyle": "plain newstyle: handshake flags lack FIXED_NEWSTYLE",
    OptReplyBadMagic = "opt-reply-bad-magic": "the first option reply has a wrong magic",
    OptReplyHugeLen = "opt-reply-huge-len": "GO/INFO answered by a reply claiming 0xffffffff bytes, then one byte per --delay-ms",
    SlowHandshake = "slow-handshake": "a correct handshake, sent one byte per --delay-ms (greeting and option replies)",
    InfoGarbage = "info-garbage": "GO/INFO answered with impossible NBD_INFO_BLOCK_SIZE values (a different set per connection)",
    GoUnsup = "go-unsup": "GO/INFO answered with ERR_UNSUP; NBD_OPT_EXPORT_NAME then works (a good old server)",
    NoInfoExport = "no-info-export": "GO answered with ACK but no NBD_INFO_EXPORT",
    ZeroSize = "zero-size": "the export has size 0",
    ReplyBadMagic = "reply-bad-magic": "after --after good requests, a reply with a wrong magic",
    ReplyStructured = "reply-structured": "after --after good requests, a structured reply chunk (never negotiated)",
    ReplyUnknownCookie = "reply-unknown-cookie": "after --after good requests, a reply to a cookie never sent",
    ReplyCross = "reply-cross": "after --after good requests, answer a request on another open connection (with none open, answer it well)",
    ReplyTwice = "reply-twice": "after --after good requests, every reply is sent twice",
    ReplyTruncated = "reply-truncated": "after --after good requests, half a reply (header, or read data), then close",
    CloseAfterHandshake = "close-after-handshake": "close after the handshake (after --after requests)",
    CloseMidRequest = "close-mid-request": "after --after good requests, close with requests in flight",
    NeverReply = "never-reply": "after --after good requests, read requests but never reply",
    ReplyStall = "reply-stall": "after --after good requests, answer the next read with its reply header and half its data, then send nothing more",
    SlowTrickle = "slow-trickle": "after --after good requests, send replies one byte per --delay-ms",
    ErrorWrites = "error-writes": "after --after good requests, fail every write with EIO",
    ErrorReads = "error-reads": "after --after good requests, fail every read with EIO",
    Garbage = "garbage": "after --after good requests, send 64 KiB of random bytes",
    SizeChange = "size-change": "every new connection reports a size 1 MiB larger than the previous one",
}

impl Mode {
    /// Whether the mode misbehaves in the transmission phase (and so
    /// honours `--after`).
    pub fn is_transmission(self) -> bool {
        matches!(
            self,
            Mode::ReplyBadMagic
                | Mode::ReplyStructured
                | Mode::ReplyUnknownCookie
                | Mode::ReplyCross
                | Mode::ReplyTwice
                | Mode::ReplyTruncated
                | Mode::ReplyStall
                | Mode::CloseAfterHandshake
                | Mode::CloseMidRequest
                | Mode::NeverReply
                | Mode::SlowTrickle
                | Mode::ErrorWrites
                | Mode::ErrorReads
                | Mode::Garbage
        )
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Mode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Mode::ALL
            .iter()
            .copied()
            .find(|m| m.name() == s)
            .ok_or_else(|| format!("unknown mode '{s}' (see --help for the list)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for &m in Mode::ALL {
            assert_eq!(m.name().parse::<Mode>(), Ok(m));
        }
        assert!("nope".parse::<Mode>().is_err());
    }
}
