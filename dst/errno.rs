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
    ealready => EALREADY,
}

/// The error a remote leg fails its I/O with while its connection is down
/// and the device chose not to hold it: `-ENOLINK`, the one errno that
/// survives the trip through a bio's status (`BLK_STS_TRANSPORT`), so the
/// mirror can tell "leg away" from a failed write.  Never reaches users:
/// the mirror turns it into `EIO` if nothing else served the I/O.
pub(crate) fn leg_away() -> Error {
    Error::from_errno(-(bindings::ENOLINK as i32))
}

/// The errno an NBD reply's error code stands for (unknown codes count as
/// `EINVAL`, as the protocol says).
pub(crate) fn from_nbd(code: u32) -> Error {
    use crate::proto::nbd::err;
    use kernel::error::code::*;
    match err::normalize(code) {
        err::EPERM => EPERM,
        err::ENOMEM => ENOMEM,
        err::EINVAL => EINVAL,
        err::ENOSPC => ENOSPC,
        err::ENOTSUP => eopnotsupp(),
        _ => EIO,
    }
}

/// The NBD error code to answer a failed request with.
pub(crate) fn to_nbd(e: Error) -> u32 {
    use crate::proto::nbd::err;
    use kernel::error::code::*;
    if e == EPERM || e == EACCES || e == EROFS {
        err::EPERM
    } else if e == ENOMEM {
        err::ENOMEM
    } else if e == EINVAL {
        err::EINVAL
    } else if e == ENOSPC {
        err::ENOSPC
    } else if e == eopnotsupp() {
        err::ENOTSUP
    } else {
        err::EIO
    }
}
