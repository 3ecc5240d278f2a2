// SPDX-License-Identifier: GPL-2.0

//! Generic netlink: the `dst` family, over the C glue in `genl_glue.c`.
//!
//! The family's policies come from the shared schema
//! ([`crate::proto::genl::COMMANDS`]); the C side turns them into
//! `struct nla_policy` tables, so the kernel's netlink core validates every
//! request (strictly: unknown attributes, wrong sizes and over-long strings
//! are refused) before [`Handler::doit`] sees it.  The family has
//! `parallel_ops`: requests reach the handler concurrently, and it
//! serialises what needs it.

use core::ffi::c_void;
use core::marker::PhantomData;
use kernel::ffi::{c_char, c_int};

use kernel::bindings;
use kernel::prelude::*;
use kernel::sync::Arc;

use crate::errno;
use crate::glue;
use crate::proto::genl::{self as schema, Kind};

/// What the family does with requests.
pub(crate) trait Handler: Send + Sync {
    /// Answers one request.  `payload` holds the request's attributes,
    /// already validated against the command's policy.
    fn doit(&self, cmd: u8, payload: &[u8], req: &mut Request<'_>) -> Result;

    /// Adds dump entries, starting from `*cursor`, and moves the cursor past
    /// what it added.  The dump ends when a call adds nothing.
    fn dumpit(&self, cmd: u8, cursor: &mut i64, dump: &mut Dump<'_>) -> Result;
}

/// A request being answered.
pub(crate) struct Request<'a> {
    info: *mut glue::GenlInfo,
    _p: PhantomData<&'a mut glue::GenlInfo>,
}

impl Request<'_> {
    /// Sends `payload` (attributes) as the reply, with command `cmd`.
    pub(crate) fn reply(&mut self, cmd: u8, payload: &[u8]) -> Result {
        let len = u32::try_from(payload.len()).map_err(|_| errno::emsgsize())?;
        // SAFETY: `info` is the request's `genl_info`, valid for the whole
        // `doit` call that created `self`; `payload` is valid for `len` bytes.
        let ret = unsafe { glue::dst_genl_reply(self.info, cmd, payload.as_ptr().cast(), len) };
        kernel::error::to_result(ret)
    }

    /// Sets the extended-ack message returned with an error.  Longer
    /// messages are cut at 79 bytes.
    pub(crate) fn set_err(&mut self, msg: &str) {
        let mut buf = [0u8; bindings::NETLINK_MAX_FMTMSG_LEN as usize];
        let mut n = msg.len().min(buf.len() - 1);
        while !msg.is_char_boundary(n) {
            n -= 1;
        }
        buf[..n].copy_from_slice(&msg.as_bytes()[..n]);
        // SAFETY: `info` is valid for the `doit` call; `buf` is
        // NUL-terminated and the C side copies it.
        unsafe { glue::dst_genl_set_err(self.info, buf.as_ptr().cast::<c_char>()) };
    }
}

/// A dump being filled.
pub(crate) struct Dump<'a> {
    raw: *mut glue::NlDump,
    _p: PhantomData<&'a mut glue::NlDump>,
}

impl Dump<'_> {
    /// Adds one entry.  Returns `Ok(false)` when the message is full: the
    /// entry goes into the next one.
    pub(crate) fn put(&mut self, cmd: u8, payload: &[u8]) -> Result<bool> {
        let len = u32::try_from(payload.len()).map_err(|_| errno::emsgsize())?;
        // SAFETY: `raw` is the dump state of the `dumpit` call that created
        // `self`; `payload` is valid for `len` bytes.
        let ret = unsafe { glue::dst_genl_dump_put(self.raw, cmd, payload.as_ptr().cast(), len) };
        match ret {
            0 => Ok(true),
            e if e == errno::emsgsize().to_errno() => Ok(false),
            e => Err(Error::from_errno(e)),
        }
    }
}

/// The C tables describing the family, kept alive while it is registered.
struct Spec {
    // Read by the C side, through `raw`.
    _attrs: KVec<KVec<glue::NlAttr>>,
    _sets: KVec<glue::NlSet>,
    _cmds: KVec<glue::NlCmd>,
    raw: glue::NlSpec,
}

const NAME: &CStr = kernel::c_str!("dst");
const MCGRP: &CStr = kernel::c_str!("events");

impl Spec {
    /// Builds the tables from the shared schema: one policy set per command,
    /// then the nested leg set, then the nested export set.
    fn build<T: Handler>() -> Result<KBox<Spec>> {
        // The C names must match the schema's.
        if NAME.as_bytes() != schema::FAMILY_NAME.as_bytes()
            || MCGRP.as_bytes() != schema::MCGRP_EVENTS.as_bytes()
        {
            return Err(EINVAL);
        }
        let leg_set = schema::COMMANDS.len();
        let set_index = u8::try_from(leg_set).map_err(|_| EINVAL)?;
        let nested = Nested {
            leg: set_index,
            export: set_index.checked_add(1).ok_or(EINVAL)?,
        };
        let mut attrs = KVec::new();
        let mut cmds = KVec::new();
        for (i, c) in schema::COMMANDS.iter().enumerate() {
            attrs.push(convert(c.policy, nested)?, GFP_KERNEL)?;
            cmds.push(
                glue::NlCmd {
                    cmd: c.cmd,
                    doit: c.doit.into(),
                    dumpit: c.dumpit.into(),
                    set: u8::try_from(i).map_err(|_| EINVAL)?,
                },
                GFP_KERNEL,
            )?;
        }
        attrs.push(convert(schema::LEG_REQUEST, nested)?, GFP_KERNEL)?;
        attrs.push(convert(schema::EXPORT_REQUEST, nested)?, GFP_KERNEL)?;
        let mut sets = KVec::new();
        for a in attrs.iter() {
            sets.push(
                glue::NlSet {
                    attrs: a.as_ptr(),
                    n: a.len() as u32,
                },
                GFP_KERNEL,
            )?;
        }
        let raw = glue::NlSpec {
            name: NAME.as_char_ptr(),
            mcgrp: MCGRP.as_char_ptr(),
            version: schema::FAMILY_VERSION.into(),
            nsets: sets.len() as u32,
            sets: sets.as_ptr(),
            ncmds: cmds.len() as u32,
            cmds: cmds.as_ptr(),
            doit: Some(doit_tramp::<T>),
            dumpit: Some(dumpit_tramp::<T>),
        };
        Ok(KBox::new(
            Spec {
                _attrs: attrs,
                _sets: sets,
                _cmds: cmds,
                raw,
            },
            GFP_KERNEL,
        )?)
    }
}

/// Where the nested policy sets are.
#[derive(Clone, Copy)]
struct Nested {
    leg: u8,
    export: u8,
}

fn convert(policy: &[schema::AttrSpec], nested: Nested) -> Result<KVec<glue::NlAttr>> {
    let mut v = KVec::with_capacity(policy.len(), GFP_KERNEL)?;
    for a in policy {
        let (kind, nested_set, min, max) = match a.kind {
            Kind::U8 { min, max } => (glue::DST_NL_U8, 0, min.into(), max.into()),
            Kind::U32 => (glue::DST_NL_U32, 0, 0, 0),
            Kind::U64 => (glue::DST_NL_U64, 0, 0, 0),
            Kind::Str { max_len } => (glue::DST_NL_STR, 0, 0, max_len),
            Kind::NestedLeg => (glue::DST_NL_NESTED, nested.leg, 0, 0),
            Kind::NestedExport => (glue::DST_NL_NESTED, nested.export, 0, 0),
        };
        v.push(
            glue::NlAttr {
                id: a.id,
                kind,
                nested_set,
                min,
                max,
            },
            GFP_KERNEL,
        )?;
    }
    Ok(v)
}

/// The registered family.  Only one may exist at a time (the C side keeps
/// the family in a global); dropping it unregisters the family, after which
/// no handler call is running or will start.
pub(crate) struct Registration<T: Handler> {
    spec: KBox<Spec>,
    handler: Arc<T>,
}

// SAFETY: the raw pointers in `spec` point into `spec` itself (heap memory
// owned by the registration) and are only read by the C side; the handler is
// `Send + Sync`.
unsafe impl<T: Handler> Send for Registration<T> {}
// SAFETY: as above; `&Registration` gives no access to anything mutable.
unsafe impl<T: Handler> Sync for Registration<T> {}

impl<T: Handler> Registration<T> {
    /// Registers the family; requests go to `handler`.
    pub(crate) fn new(handler: Arc<T>) -> Result<Self> {
        let spec = Spec::build::<T>()?;
        let priv_ = core::ptr::from_ref::<T>(&handler)
            .cast_mut()
            .cast::<c_void>();
        // SAFETY: `spec.raw` and every table it points to live in `spec`,
        // which the registration keeps until `Drop` has unregistered the
        // family; `priv_` points to the handler, kept alive by `handler` for
        // as long as well.
        kernel::error::to_result(unsafe { glue::dst_genl_register(&spec.raw, priv_) })?;
        Ok(Registration { spec, handler })
    }

    /// The handler.
    #[allow(dead_code)]
    pub(crate) fn handler(&self) -> &Arc<T> {
        &self.handler
    }
}

impl<T: Handler> Drop for Registration<T> {
    fn drop(&mut self) {
        // SAFETY: registered in `new`; unregistering waits for running
        // handlers (they hold the genetlink mutex) so `spec` and `handler`
        // are unused once this returns.
        unsafe { glue::dst_genl_unregister() };
        let _ = &self.spec;
    }
}

/// Forwards a request from the C side to the handler.
///
/// # Safety
///
/// Called by `genl_glue.c` only, with the `priv` given at registration and
/// a request payload of `len` bytes at `buf`.
unsafe extern "C" fn doit_tramp<T: Handler>(
    priv_: *mut c_void,
    cmd: u8,
    buf: *const c_void,
    len: u32,
    info: *mut glue::GenlInfo,
) -> c_int {
    // SAFETY: `priv_` is the handler registered in `Registration::new`,
    // alive until the family is unregistered, which waits for this call.
    let handler = unsafe { &*priv_.cast::<T>() };
    let payload: &[u8] = if len == 0 || buf.is_null() {
        &[]
    } else {
        // SAFETY: the C side passes the request payload, `len` bytes at
        // `buf`, valid during this call.
        unsafe { core::slice::from_raw_parts(buf.cast::<u8>(), len as usize) }
    };
    let mut req = Request {
        info,
        _p: PhantomData,
    };
    match handler.doit(cmd, payload, &mut req) {
        Ok(()) => 0,
        Err(e) => e.to_errno(),
    }
}

/// Forwards a dump request from the C side to the handler.
///
/// # Safety
///
/// Called by `genl_glue.c` only, with the `priv` given at registration, the
/// dump's cursor and its state.
unsafe extern "C" fn dumpit_tramp<T: Handler>(
    priv_: *mut c_void,
    cmd: u8,
    cursor: *mut glue::Cursor,
    dump: *mut glue::NlDump,
) -> c_int {
    // SAFETY: as in `doit_tramp`.
    let handler = unsafe { &*priv_.cast::<T>() };
    // SAFETY: `cursor` points to the dump's `cb->args[0]`, ours for the call.
    let cursor = unsafe { &mut *cursor };
    let mut pos = *cursor as i64;
    let mut d = Dump {
        raw: dump,
        _p: PhantomData,
    };
    let ret = match handler.dumpit(cmd, &mut pos, &mut d) {
        Ok(()) => 0,
        Err(e) => e.to_errno(),
    };
    *cursor = pos as glue::Cursor;
    ret
}

/// Sends `payload` (attributes) with command `cmd` to the listeners of the
/// events group.  Does nothing while the family is not registered.
pub(crate) fn multicast(cmd: u8, payload: &[u8]) -> Result {
    let len = u32::try_from(payload.len()).map_err(|_| errno::emsgsize())?;
    // SAFETY: `payload` is valid for `len` bytes; the C side checks that
    // the family is registered, under a lock unregistering also takes.
    kernel::error::to_result(unsafe { glue::dst_genl_multicast(cmd, payload.as_ptr().cast(), len) })
}
