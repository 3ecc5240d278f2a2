// SPDX-License-Identifier: GPL-2.0

//! Errnos that `kernel::error::code` does not have in 6.12.

use kernel::bindings;
use kernel::error::Error;

macro_rules! errnos {
    ($($name:ident => $c:ident),* $(,)?) => {$(
        #[doc = concat!("`-", stringify!($c), "`.")]
        pub(crate) fn $name() -> Error {
            Error::from_errno(-(bindings::$c as i32))
        }
    )*};
}

errnos! {
    eopnotsupp => EOPNOTSUPP,
    emsgsize => EMSGSIZE,
    etimedout => ETIMEDOUT,
    econnreset => ECONNRESET,
    enotconn => ENOTCONN,
}
