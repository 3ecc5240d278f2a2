//! Wire formats shared by the `dst` kernel module and its userspace tools.
//!
//! Every file here is `no_std`, uses only `core`, and is included by the
//! kernel module from source (see `dst/proto.rs`), so the two sides can never
//! disagree about an attribute id or an encoding.  Files refer to each other
//! only as `super::name`, which resolves the same way in both builds.
#![cfg_attr(not(test), no_std)]

pub mod genl;
pub mod nbd;
pub mod nbd_server;
pub mod nlattr;
