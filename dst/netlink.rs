// SPDX-License-Identifier: GPL-2.0

//! The configuration commands: what each `dst` netlink request does.
//!
//! Requests arrive already validated against the schema's policies (see
//! [`crate::genl`]); this file still decodes them defensively, turns them
//! into registry calls, and encodes the replies with the shared codec.

use kernel::prelude::*;
use kernel::str::CStr;

use crate::errno;
use crate::device::Device;
use crate::genl::{Dump, Handler, Request};
use crate::msg::{refuse, Refusal};
use crate::proto::genl::{self as schema, cmd, dev, leg, Target, MAX_LEGS};
use crate::proto::nlattr::{self, Attr, Attrs, Sink, Writer};
use crate::registry::Registry;

/// A growable message buffer for the shared encoder.
struct Buf(KVec<u8>);

impl Sink for Buf {
    fn put(&mut self, bytes: &[u8]) -> Result<(), nlattr::Error> {
        self.0
            .extend_from_slice(bytes, GFP_KERNEL)
            .map_err(|_| nlattr::Error::NoSpace)
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn patch_u16(&mut self, at: usize, v: u16) {
        if let Some(dst) = self.0.get_mut(at..at + 2) {
            dst.copy_from_slice(&v.to_ne_bytes());
        }
    }
}

fn encode_err(_: nlattr::Error) -> Error {
    errno::emsgsize()
}

/// Encodes a device and its legs as reply attributes.
fn encode(d: &Device) -> Result<KVec<u8>> {
    let mut buf = Buf(KVec::new());
    let mut w = Writer::new(&mut buf);
    (|| -> Result<(), nlattr::Error> {
        w.put_str(dev::NAME, d.name())?;
        w.put_u8(dev::TARGET, d.target() as u8)?;
        w.put_u32(dev::INDEX, d.index())?;
        let mut disk = [0u8; 16];
        let disk = fmt_into(&mut disk, format_args!("dst{}", d.index()));
        w.put_str(dev::DISK, disk)?;
        w.put_u64(dev::SIZE, d.sectors() << 9)?;
        w.put_u8(dev::STATE, d.state() as u8)?;
        w.put_u32(dev::OPENERS, d.openers())?;
        w.put_u32(dev::BLOCK_SIZE, d.block_size())?;
        for (i, l) in d.legs().iter().enumerate() {
            let nest = w.begin_nest(dev::LEG)?;
            let s = l.stats();
            w.put_u32(leg::INDEX, i as u32)?;
            w.put_str_bytes(leg::SPEC, l.spec().as_bytes())?;
            w.put_str(leg::DISK, l.dev().name())?;
            w.put_u64(leg::SIZE, l.sectors() << 9)?;
            w.put_u64(leg::OFFSET, l.offset() << 9)?;
            w.put_u8(leg::STATE, d.leg_state(i) as u8)?;
            w.put_u64(leg::READS, s.reads)?;
            w.put_u64(leg::WRITES, s.writes)?;
            w.put_u64(leg::READ_ERRORS, s.read_errors)?;
            w.put_u64(leg::WRITE_ERRORS, s.write_errors)?;
            w.put_u32(leg::INFLIGHT, s.inflight)?;
            w.end_nest(nest)?;
        }
        Ok(())
    })()
    .map_err(encode_err)?;
    Ok(buf.0)
}

/// Formats into `buf`, cut to fit; returns the text.
fn fmt_into<'a>(buf: &'a mut [u8], args: core::fmt::Arguments<'_>) -> &'a str {
    let msg = crate::msg::Msg::new(args);
    let s = msg.as_str().as_bytes();
    let n = s.len().min(buf.len());
    buf[..n].copy_from_slice(&s[..n]);
    core::str::from_utf8(&buf[..n]).unwrap_or("")
}

/// Decodes a string attribute into a `&CStr` (with its NUL).
fn cstr<'a>(a: &Attr<'a>) -> Result<&'a CStr, Refusal> {
    match CStr::from_bytes_with_nul(a.payload) {
        Ok(s) if a.str().is_ok() => Ok(s),
        _ => refuse!(EINVAL, "attribute {}: not a NUL-terminated UTF-8 string", a.kind),
    }
}

/// The request's device name, checked.
fn name<'a>(attrs: &Attrs<'a>) -> Result<&'a str, Refusal> {
    let Some(a) = last(attrs, dev::NAME)? else {
        refuse!(EINVAL, "missing device name");
    };
    let Ok(name) = a.str() else {
        refuse!(EINVAL, "device name is not a string");
    };
    if let Err(why) = schema::check_name(name) {
        refuse!(EINVAL, "{}", why);
    }
    Ok(name)
}

/// The last attribute of type `kind` (netlink's rule for repeats).
fn last<'a>(attrs: &Attrs<'a>, kind: u16) -> Result<Option<Attr<'a>>, Refusal> {
    let mut found = None;
    for a in attrs.clone() {
        match a {
            Ok(a) if a.kind == kind => found = Some(a),
            Ok(_) => {}
            Err(_) => refuse!(EINVAL, "malformed attributes"),
        }
    }
    Ok(found)
}

impl Registry {
    fn do_get(&self, attrs: &Attrs<'_>, req: &mut Request<'_>) -> Result<(), Refusal> {
        let name = name(attrs)?;
        let Some(d) = self.get(name) else {
            refuse!(ENODEV, "no device named {}", name);
        };
        req.reply(cmd::GET, &encode(&d)?)?;
        Ok(())
    }

    fn do_create(&self, attrs: &Attrs<'_>, req: &mut Request<'_>) -> Result<(), Refusal> {
        let name = name(attrs)?;
        let Some(t) = last(attrs, dev::TARGET)? else {
            refuse!(EINVAL, "missing target (linear or mirror)");
        };
        let Some(target) = t.u8().ok().and_then(Target::from_u8) else {
            refuse!(EINVAL, "unknown target");
        };
        let mut specs: KVec<&CStr> = KVec::new();
        for a in attrs.clone() {
            let Ok(a) = a else {
                refuse!(EINVAL, "malformed attributes");
            };
            if a.kind != dev::LEG {
                continue;
            }
            if specs.len() == MAX_LEGS {
                refuse!(EINVAL, "too many legs (at most {})", MAX_LEGS);
            }
            let Some(spec) = last(&a.nested(), leg::SPEC)? else {
                refuse!(EINVAL, "leg {} has no device path", specs.len());
            };
            let spec = cstr(&spec)?;
            if spec.is_empty() {
                refuse!(EINVAL, "leg {} has an empty device path", specs.len());
            }
            specs.push(spec, GFP_KERNEL)?;
        }
        let d = self.create(name, target, &specs)?;
        req.reply(cmd::CREATE, &encode(&d)?)?;
        Ok(())
    }

    fn do_remove(&self, attrs: &Attrs<'_>) -> Result<(), Refusal> {
        self.remove(name(attrs)?)
    }
}

impl Handler for Registry {
    fn doit(&self, command: u8, payload: &[u8], req: &mut Request<'_>) -> Result {
        let attrs = Attrs::new(payload);
        let res = match command {
            cmd::GET => self.do_get(&attrs, req),
            cmd::CREATE => self.do_create(&attrs, req),
            cmd::REMOVE => self.do_remove(&attrs),
            _ => Err(errno::eopnotsupp().into()),
        };
        res.map_err(|r| {
            if !r.msg.as_str().is_empty() {
                req.set_err(r.msg.as_str());
            }
            r.err
        })
    }

    fn dumpit(&self, command: u8, cursor: &mut i64, dump: &mut Dump<'_>) -> Result {
        if command != cmd::GET {
            return Err(errno::eopnotsupp());
        }
        let mut next = u32::try_from(*cursor).unwrap_or(u32::MAX);
        while let Some(d) = self.next_from(next) {
            if !dump.put(cmd::GET, &encode(&d)?)? {
                break;
            }
            next = d.index() + 1;
        }
        *cursor = next.into();
        Ok(())
    }
}
