// SPDX-License-Identifier: GPL-2.0

//! The wire formats shared with userspace, compiled from the userspace
//! crate's source files so the two sides cannot disagree.

#[allow(dead_code, unreachable_pub, missing_docs)]
#[path = "../userspace/dst-proto/src/genl.rs"]
pub(crate) mod genl;

#[allow(dead_code, unreachable_pub, missing_docs)]
#[path = "../userspace/dst-proto/src/nlattr.rs"]
pub(crate) mod nlattr;

#[allow(dead_code, unreachable_pub, missing_docs)]
#[path = "../userspace/dst-proto/src/nbd.rs"]
pub(crate) mod nbd;

#[allow(dead_code, unreachable_pub, missing_docs)]
#[path = "../userspace/dst-proto/src/nbd_server.rs"]
pub(crate) mod nbd_server;
