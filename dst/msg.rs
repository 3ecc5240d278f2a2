// SPDX-License-Identifier: GPL-2.0

//! Refusals: an errno with a one-line message for the administrator.

use core::fmt::{self, Write};

use kernel::prelude::*;

/// A short message in a fixed buffer (netlink keeps 80 bytes of it).
#[derive(Clone)]
pub(crate) struct Msg {
    buf: [u8; 80],
    len: usize,
}

impl Msg {
    /// Formats a message, cut to fit.
    pub(crate) fn new(args: fmt::Arguments<'_>) -> Self {
        let mut m = Msg {
            buf: [0; 80],
            len: 0,
        };
        let _ = m.write_fmt(args);
        m
    }

    /// The message.
    pub(crate) fn as_str(&self) -> &str {
        core::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }
}

impl Write for Msg {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut n = s.len().min(self.buf.len() - 1 - self.len);
        while !s.is_char_boundary(n) {
            n -= 1;
        }
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

/// A request refused: the errno returned, and why, in words.
pub(crate) struct Refusal {
    /// The errno.
    pub(crate) err: Error,
    /// The message.
    pub(crate) msg: Msg,
}

impl From<Error> for Refusal {
    fn from(err: Error) -> Self {
        Refusal {
            err,
            msg: Msg::new(format_args!("")),
        }
    }
}

/// Returns early with a [`Refusal`].
macro_rules! refuse {
    ($err:expr, $($arg:tt)+) => {
        return Err($crate::msg::Refusal {
            err: $err,
            msg: $crate::msg::Msg::new(format_args!($($arg)+)),
        })
    };
}
pub(crate) use refuse;

impl From<kernel::alloc::AllocError> for Refusal {
    fn from(_: kernel::alloc::AllocError) -> Self {
        ENOMEM.into()
    }
}
