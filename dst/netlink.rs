// SPDX-License-Identifier: GPL-2.0

//! The configuration commands: what each `dst` netlink request does.
//!
//! Requests arrive already validated against the schema's policies (see
//! [`crate::genl`]); this file still decodes them defensively, turns them
//! into registry calls, and encodes the replies with the shared codec.

use kernel::prelude::*;
use kernel::str::CStr;

use crate::errno;
use core::net::SocketAddr;

use crate::device::{Device, LegSpec, Settings};
use crate::export::{self, Cidr, Export, ExportRequest, Exports, Listener};
use crate::genl::{self, Dump, Handler, Request};
use crate::msg::{refuse, Msg, Refusal};
use crate::proto::genl::{
    self as schema, cmd, conns, dev, exp, leg, resync, timing, Event, LegKind, Target, MAX_ALLOW,
    MAX_LEGS,
};
use crate::proto::nlattr::{self, Attr, Attrs, Sink, Writer};
use crate::registry::{Admin, Registry};
use crate::remote::RemoteConfig;
use kernel::sync::Arc;

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
fn encode(d: &Device, exports: Option<&Exports>) -> Result<KVec<u8>> {
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
        if d.target() == Target::Mirror {
            let (rate, max) = d.resync_limits();
            w.put_u32(dev::REGION_SIZE, d.region_bytes())?;
            w.put_u32(dev::RESYNC_RATE, rate)?;
            w.put_u32(dev::RESYNC_MAX, max)?;
        }
        for (i, l) in d.legs().iter().enumerate() {
            if l.is_removed() {
                continue;
            }
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
            w.put_u64(leg::RESYNCED, s.resynced)?;
            if d.target() == Target::Mirror {
                w.put_u8(leg::WRITE_MOSTLY, d.leg_write_mostly(i).into())?;
            }
            let (done, total, speed) = d.resync_progress_of(i);
            if total > 0 {
                w.put_u64(leg::RESYNC_DONE, done)?;
                w.put_u64(leg::RESYNC_TOTAL, total)?;
                w.put_u64(leg::RESYNC_SPEED, speed)?;
            }
            match l.dev().remote() {
                None => w.put_u8(leg::KIND, LegKind::Local as u8)?,
                Some(r) => {
                    let cfg = r.config();
                    let st = r.status();
                    w.put_u8(leg::KIND, LegKind::Remote as u8)?;
                    w.put_str(leg::ADDR, Msg::new(format_args!("{}", cfg.addr)).as_str())?;
                    w.put_str_bytes(leg::EXPORT, &cfg.export)?;
                    w.put_u32(leg::TIMEOUT_MS, cfg.timeout_ms)?;
                    w.put_u32(leg::DEAD_TIME_MS, cfg.dead_ms)?;
                    w.put_u32(leg::BACKOFF_MAX_MS, cfg.backoff_max_ms)?;
                    w.put_u8(leg::FULL_RESYNC, cfg.full_resync.into())?;
                    w.put_u32(leg::NBD_FLAGS, st.flags.into())?;
                    w.put_u32(leg::CONNECTS, st.connects)?;
                    w.put_u8(leg::CONNS, st.conns)?;
                    if !st.problem.as_str().is_empty() {
                        w.put_str(leg::PROBLEM, st.problem.as_str())?;
                    }
                }
            }
            w.end_nest(nest)?;
        }
        let mut res = Ok(());
        if let Some(ex) = exports {
            ex.for_each_of(d, |l, e| {
                if res.is_ok() {
                    res = encode_export(&mut w, l, e);
                }
            });
        }
        res
    })()
    .map_err(encode_err)?;
    Ok(buf.0)
}

fn encode_export(
    w: &mut Writer<'_, Buf>,
    l: &Arc<Listener>,
    e: &Arc<Export>,
) -> Result<(), nlattr::Error> {
    let nest = w.begin_nest(dev::EXPORT)?;
    w.put_str(exp::LISTEN, Msg::new(format_args!("{}", l.addr())).as_str())?;
    w.put_str_bytes(exp::NAME, e.name())?;
    w.put_u8(exp::READ_ONLY, e.read_only().into())?;
    for c in e.allow() {
        w.put_str(exp::ALLOW, Msg::new(format_args!("{}", c)).as_str())?;
    }
    let clients = l.clients_of(e);
    w.put_u32(exp::CLIENTS, clients.len() as u32)?;
    for c in clients.iter() {
        w.put_str(exp::CLIENT, Msg::new(format_args!("{}", c)).as_str())?;
    }
    w.put_u64(exp::REFUSED, l.refused())?;
    w.put_u64(exp::REQUESTS, e.requests())?;
    w.end_nest(nest)
}

/// Sends an event about `d` to the listeners of the events group.
pub(crate) fn send_event(d: &Device, event: Event) {
    let payload = if event == Event::Removed {
        let mut buf = Buf(KVec::new());
        let mut w = Writer::new(&mut buf);
        let mut disk = [0u8; 16];
        let disk = fmt_into(&mut disk, format_args!("dst{}", d.index()));
        let ok = w.put_str(dev::NAME, d.name()).is_ok()
            && w.put_u32(dev::INDEX, d.index()).is_ok()
            && w.put_str(dev::DISK, disk).is_ok()
            && w.put_u8(dev::EVENT, event as u8).is_ok();
        if !ok {
            return;
        }
        buf.0
    } else {
        let Ok(mut payload) = encode(d, None) else {
            return;
        };
        let mut buf = Buf(core::mem::take(&mut payload));
        if Writer::new(&mut buf)
            .put_u8(dev::EVENT, event as u8)
            .is_err()
        {
            return;
        }
        buf.0
    };
    let _ = genl::multicast(cmd::EVENT, &payload);
}

/// A timing attribute of a leg nest, in milliseconds, checked.
fn timing_ms(
    nest: &Attrs<'_>,
    id: u16,
    default: u32,
    what: &str,
    n: usize,
) -> Result<u32, Refusal> {
    let Some(a) = last(nest, id)? else {
        return Ok(default);
    };
    let Ok(v) = a.u32() else {
        refuse!(EINVAL, "leg {}: bad {}", n, what);
    };
    if !(timing::MIN_MS..=timing::MAX_MS).contains(&v) {
        refuse!(ERANGE, "leg {}: {} must be 100 ms to 24 h", n, what);
    }
    Ok(v)
}

/// Decodes one leg of a CREATE request.
fn leg_spec<'a>(a: &Attr<'a>, n: usize) -> Result<LegSpec<'a>, Refusal> {
    let nest = a.nested();
    let Some(spec) = last(&nest, leg::SPEC)? else {
        refuse!(EINVAL, "leg {} has no device path", n);
    };
    let spec = cstr(&spec)?;
    if spec.is_empty() {
        refuse!(EINVAL, "leg {} has an empty device path", n);
    }
    let write_mostly = flag(&nest, leg::WRITE_MOSTLY)?;
    let Some(addr) = last(&nest, leg::ADDR)? else {
        for id in [
            leg::EXPORT,
            leg::TIMEOUT_MS,
            leg::DEAD_TIME_MS,
            leg::BACKOFF_MAX_MS,
            leg::FULL_RESYNC,
            leg::CONNS,
        ] {
            if last(&nest, id)?.is_some() {
                refuse!(EINVAL, "leg {}: remote settings for a local leg", n);
            }
        }
        return Ok(LegSpec {
            spec,
            remote: None,
            write_mostly,
        });
    };
    let Some(addr) = addr.str().ok().and_then(|s| s.parse::<SocketAddr>().ok()) else {
        refuse!(EINVAL, "leg {}: bad address (IP:PORT or [IPv6]:PORT)", n);
    };
    if addr.port() == 0 {
        refuse!(EINVAL, "leg {}: port 0", n);
    }
    let export = match last(&nest, leg::EXPORT)? {
        Some(e) => match e.str() {
            Ok(s) => s.as_bytes(),
            Err(_) => refuse!(EINVAL, "leg {}: bad export name", n),
        },
        None => &[],
    };
    let mut name = KVec::new();
    name.extend_from_slice(export, GFP_KERNEL)?;
    Ok(LegSpec {
        spec,
        remote: Some(RemoteConfig {
            addr,
            export: name,
            timeout_ms: timing_ms(&nest, leg::TIMEOUT_MS, timing::TIMEOUT_MS, "timeout", n)?,
            dead_ms: timing_ms(
                &nest,
                leg::DEAD_TIME_MS,
                timing::DEAD_TIME_MS,
                "dead time",
                n,
            )?,
            backoff_max_ms: timing_ms(
                &nest,
                leg::BACKOFF_MAX_MS,
                timing::BACKOFF_MAX_MS,
                "backoff maximum",
                n,
            )?,
            full_resync: flag(&nest, leg::FULL_RESYNC)?,
            conns: match last(&nest, leg::CONNS)? {
                // The policy checked the range.
                Some(a) => a.u8().map_err(|_| Refusal::from(EINVAL))?,
                None => conns::DEFAULT,
            },
        }),
        write_mostly,
    })
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
        _ => refuse!(
            EINVAL,
            "attribute {}: not a NUL-terminated UTF-8 string",
            a.kind
        ),
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

/// The last u32 attribute of type `kind`, if any.
fn optional_u32(attrs: &Attrs<'_>, kind: u16) -> Result<Option<u32>, Refusal> {
    match last(attrs, kind)? {
        Some(a) => match a.u32() {
            Ok(v) => Ok(Some(v)),
            Err(_) => refuse!(EINVAL, "attribute {}: not a u32", kind),
        },
        None => Ok(None),
    }
}

/// A CREATE's resync settings, checked; the defaults for those not given.
fn settings(attrs: &Attrs<'_>, target: Target) -> Result<Settings, Refusal> {
    let region = optional_u32(attrs, dev::REGION_SIZE)?;
    let rate = optional_u32(attrs, dev::RESYNC_RATE)?;
    let max = optional_u32(attrs, dev::RESYNC_MAX)?;
    let sync = flag(attrs, dev::FULL)?;
    let mut s = Settings::default();
    if target != Target::Mirror {
        if region.is_some() || rate.is_some() || max.is_some() {
            refuse!(EINVAL, "region size and resync rates apply to mirrors");
        }
        if sync {
            refuse!(EINVAL, "an initial sync applies to mirrors");
        }
        return Ok(s);
    }
    s.sync = sync;
    if let Some(r) = region {
        if let Err(why) = resync::check_region(r) {
            refuse!(EINVAL, "{}", why);
        }
        s.region_bytes = r;
    }
    s.resync_rate_kib = rate.unwrap_or(s.resync_rate_kib);
    s.resync_max_kib = max.unwrap_or(s.resync_max_kib);
    Ok(s)
}

/// The last u8 attribute of type `kind` as a flag, if any.
fn optional_flag(attrs: &Attrs<'_>, kind: u16) -> Result<Option<bool>, Refusal> {
    match last(attrs, kind)? {
        Some(a) => match a.u8() {
            Ok(v) => Ok(Some(v != 0)),
            Err(_) => refuse!(EINVAL, "attribute {}: not a u8", kind),
        },
        None => Ok(None),
    }
}

/// The last u8 attribute of type `kind` as a flag (absent: false).
fn flag(attrs: &Attrs<'_>, kind: u16) -> Result<bool, Refusal> {
    Ok(optional_flag(attrs, kind)?.unwrap_or(false))
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
    /// The device the request names.
    fn device(&self, attrs: &Attrs<'_>) -> Result<Arc<Device>, Refusal> {
        let name = name(attrs)?;
        match self.get(name) {
            Some(d) => Ok(d),
            None => refuse!(ENODEV, "no device named {}", name),
        }
    }

    /// Answers a request with `d` as it is now.
    fn reply(&self, req: &mut Request<'_>, command: u8, d: &Device) -> Result<(), Refusal> {
        req.reply(command, &encode(d, Some(&self.exports))?)?;
        Ok(())
    }

    fn do_get(&self, attrs: &Attrs<'_>, req: &mut Request<'_>) -> Result<(), Refusal> {
        let d = self.device(attrs)?;
        self.reply(req, cmd::GET, &d)?;
        Ok(())
    }

    fn do_create(
        &self,
        admin: &Admin<'_>,
        attrs: &Attrs<'_>,
        req: &mut Request<'_>,
    ) -> Result<(), Refusal> {
        let name = name(attrs)?;
        let Some(t) = last(attrs, dev::TARGET)? else {
            refuse!(EINVAL, "missing target (linear or mirror)");
        };
        let Some(target) = t.u8().ok().and_then(Target::from_u8) else {
            refuse!(EINVAL, "unknown target");
        };
        let mut specs: KVec<LegSpec<'_>> = KVec::new();
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
            let spec = leg_spec(&a, specs.len())?;
            specs.push(spec, GFP_KERNEL)?;
        }
        let settings = settings(attrs, target)?;
        let d = self.create(admin, name, target, specs, settings)?;
        self.reply(req, cmd::CREATE, &d)?;
        Ok(())
    }

    fn do_set(&self, attrs: &Attrs<'_>, req: &mut Request<'_>) -> Result<(), Refusal> {
        let d = self.device(attrs)?;
        let rate = optional_u32(attrs, dev::RESYNC_RATE)?;
        let max = optional_u32(attrs, dev::RESYNC_MAX)?;
        let index = optional_u32(attrs, dev::LEG_INDEX)?;
        let write_mostly = match (index, optional_flag(attrs, dev::WRITE_MOSTLY)?) {
            (Some(i), Some(on)) => Some((i as usize, on)),
            (None, None) => None,
            (None, Some(_)) => refuse!(EINVAL, "write-mostly needs a leg index"),
            (Some(_), None) => refuse!(EINVAL, "a leg index, but nothing to set for it"),
        };
        if rate.is_none() && max.is_none() && write_mostly.is_none() {
            refuse!(
                EINVAL,
                "nothing to set (resync rate, resync max or write-mostly)"
            );
        }
        // The leg first: a refusal there leaves the limits as they were,
        // and on a mirror the limits cannot be refused.
        if let Some((i, on)) = write_mostly {
            d.set_write_mostly(i, on)?;
        }
        if rate.is_some() || max.is_some() {
            d.set_resync_limits(rate, max)?;
        }
        self.reply(req, cmd::SET, &d)?;
        Ok(())
    }

    fn do_remove(&self, admin: &Admin<'_>, attrs: &Attrs<'_>) -> Result<(), Refusal> {
        self.remove(admin, name(attrs)?)
    }

    fn do_export(&self, attrs: &Attrs<'_>, req: &mut Request<'_>) -> Result<(), Refusal> {
        let d = self.device(attrs)?;
        let Some(nest) = last(attrs, dev::EXPORT)? else {
            refuse!(EINVAL, "missing export settings (listen address)");
        };
        let nest = nest.nested();
        let Some(listen) = last(&nest, exp::LISTEN)? else {
            refuse!(EINVAL, "missing listen address");
        };
        let Some(listen) = listen.str().ok().and_then(export::parse_listen) else {
            refuse!(
                EINVAL,
                "bad listen address (IP:PORT or [IPv6]:PORT, port not 0)"
            );
        };
        let mut ename = KVec::new();
        match last(&nest, exp::NAME)? {
            Some(n) => match n.str() {
                Ok(s) => ename.extend_from_slice(s.as_bytes(), GFP_KERNEL)?,
                Err(_) => refuse!(EINVAL, "bad export name"),
            },
            None => ename.extend_from_slice(d.name().as_bytes(), GFP_KERNEL)?,
        }
        let read_only = flag(&nest, exp::READ_ONLY)?;
        let mut allow = KVec::new();
        for a in nest.clone() {
            let Ok(a) = a else {
                refuse!(EINVAL, "malformed attributes");
            };
            if a.kind != exp::ALLOW {
                continue;
            }
            if allow.len() == MAX_ALLOW {
                refuse!(EINVAL, "too many allowed networks (at most {})", MAX_ALLOW);
            }
            let s = a.str().unwrap_or("");
            let Some(c) = Cidr::parse(s) else {
                refuse!(EINVAL, "bad network {} (IP/PREFIX)", s);
            };
            allow.push(c, GFP_KERNEL)?;
        }
        self.exports.add(
            &d,
            ExportRequest {
                listen,
                name: ename,
                read_only,
                allow,
            },
        )?;
        self.reply(req, cmd::EXPORT, &d)?;
        Ok(())
    }

    /// The device and leg index a DETACH or ATTACH names.
    fn leg_request(&self, attrs: &Attrs<'_>) -> Result<(Arc<Device>, usize), Refusal> {
        let d = self.device(attrs)?;
        let Some(i) = last(attrs, dev::LEG_INDEX)? else {
            refuse!(EINVAL, "missing leg index");
        };
        let Ok(i) = i.u32() else {
            refuse!(EINVAL, "bad leg index");
        };
        Ok((d, i as usize))
    }

    fn do_detach(&self, attrs: &Attrs<'_>, req: &mut Request<'_>) -> Result<(), Refusal> {
        let (d, i) = self.leg_request(attrs)?;
        d.detach(i)?;
        self.reply(req, cmd::DETACH, &d)?;
        Ok(())
    }

    fn do_add_leg(&self, attrs: &Attrs<'_>, req: &mut Request<'_>) -> Result<(), Refusal> {
        let d = self.device(attrs)?;
        let mut spec = None;
        for a in attrs.clone() {
            let Ok(a) = a else {
                refuse!(EINVAL, "malformed attributes");
            };
            if a.kind != dev::LEG {
                continue;
            }
            if spec.is_some() {
                refuse!(EINVAL, "one leg at a time");
            }
            spec = Some(leg_spec(&a, 0)?);
        }
        let Some(spec) = spec else {
            refuse!(EINVAL, "missing leg");
        };
        d.add_leg(spec)?;
        self.reply(req, cmd::ADD_LEG, &d)?;
        Ok(())
    }

    fn do_remove_leg(&self, attrs: &Attrs<'_>, req: &mut Request<'_>) -> Result<(), Refusal> {
        let (d, i) = self.leg_request(attrs)?;
        d.remove_leg(i)?;
        self.reply(req, cmd::REMOVE_LEG, &d)?;
        Ok(())
    }

    fn do_attach(&self, attrs: &Attrs<'_>, req: &mut Request<'_>) -> Result<(), Refusal> {
        let (d, i) = self.leg_request(attrs)?;
        d.attach(i, flag(attrs, dev::FULL)?)?;
        self.reply(req, cmd::ATTACH, &d)?;
        Ok(())
    }

    fn do_unexport(&self, attrs: &Attrs<'_>) -> Result<(), Refusal> {
        let d = self.device(attrs)?;
        let ename = match last(attrs, dev::EXPORT)? {
            Some(nest) => match last(&nest.nested(), exp::NAME)? {
                Some(n) => match n.str() {
                    Ok(s) => Some(s.as_bytes()),
                    Err(_) => refuse!(EINVAL, "bad export name"),
                },
                None => None,
            },
            None => None,
        };
        self.exports.remove(&d, ename)
    }
}

impl Handler for Registry {
    fn doit(&self, command: u8, payload: &[u8], req: &mut Request<'_>) -> Result {
        let attrs = Attrs::new(payload);
        let res = if command == cmd::GET {
            self.do_get(&attrs, req)
        } else {
            // Changes run one at a time; status requests need not wait.
            let admin = self.admin();
            match command {
                cmd::CREATE => self.do_create(&admin, &attrs, req),
                cmd::REMOVE => self.do_remove(&admin, &attrs),
                cmd::EXPORT => self.do_export(&attrs, req),
                cmd::UNEXPORT => self.do_unexport(&attrs),
                cmd::DETACH => self.do_detach(&attrs, req),
                cmd::ATTACH => self.do_attach(&attrs, req),
                cmd::SET => self.do_set(&attrs, req),
                cmd::ADD_LEG => self.do_add_leg(&attrs, req),
                cmd::REMOVE_LEG => self.do_remove_leg(&attrs, req),
                _ => Err(errno::eopnotsupp().into()),
            }
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
            if !dump.put(cmd::GET, &encode(&d, Some(&self.exports))?)? {
                break;
            }
            next = d.index() + 1;
        }
        *cursor = next.into();
        Ok(())
    }
}
