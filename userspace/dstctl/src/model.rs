// SPDX-License-Identifier: GPL-2.0

//! Requests to the `dst` family and the devices its replies describe.

use std::fmt;
use std::marker::PhantomData;

use dst_proto::genl::{dev, exp, leg, DevState, LegKind, LegState, Target};
use dst_proto::nlattr::{self, Attr, Attrs, Writer};
use serde::ser::SerializeStruct;
use serde::{Serialize, Serializer};

use crate::netlink::Buf;
use crate::remote::Timing;
use crate::resync::eta_secs;

/// An enumeration carried on the wire as a `u8`.
pub trait WireEnum: Copy {
    /// Decodes a known value.
    fn from_u8(v: u8) -> Option<Self>;
    /// The name shown to users.
    fn as_str(self) -> &'static str;
}

macro_rules! wire_enum {
    ($($t:ty),*) => {$(
        impl WireEnum for $t {
            fn from_u8(v: u8) -> Option<Self> {
                <$t>::from_u8(v)
            }
            fn as_str(self) -> &'static str {
                <$t>::as_str(self)
            }
        }
    )*};
}

wire_enum!(Target, DevState, LegState, LegKind);

/// A wire value of `T`, which a newer kernel may send before this tool
/// knows it: shown as its name, or as `unknown(N)`.
pub struct Wire<T>(pub u8, PhantomData<T>);

impl<T> Wire<T> {
    /// Wraps a raw value.
    pub fn new(v: u8) -> Self {
        Wire(v, PhantomData)
    }
}

// Implemented by hand: derives would require `T` to implement the traits.
impl<T> Clone for Wire<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for Wire<T> {}

impl<T> Default for Wire<T> {
    fn default() -> Self {
        Wire::new(0)
    }
}

impl<T> PartialEq for Wire<T> {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}

impl<T> Eq for Wire<T> {}

impl<T: WireEnum> Wire<T> {
    /// The known value, if it is one.
    pub fn get(self) -> Option<T> {
        T::from_u8(self.0)
    }
}

impl<T: WireEnum> fmt::Display for Wire<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match T::from_u8(self.0) {
            Some(v) => f.write_str(v.as_str()),
            None => write!(f, "unknown({})", self.0),
        }
    }
}

impl<T: WireEnum> fmt::Debug for Wire<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl<T: WireEnum> Serialize for Wire<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A dst device, as the kernel describes it.  Field order is the JSON
/// order.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct Device {
    /// Name chosen at creation.
    pub name: String,
    /// Kernel disk name, `dstN`.
    pub disk: String,
    /// Device node, `/dev/dstN`.
    pub path: String,
    /// N of `/dev/dstN`.
    pub index: u32,
    /// How the legs are mapped.
    pub target: Wire<Target>,
    /// Capacity in bytes.
    pub size: u64,
    /// Health of the device.
    pub state: Wire<DevState>,
    /// Number of openers (mounts, processes).
    pub openers: u32,
    /// Logical block size in bytes.
    pub block_size: u32,
    /// Mirror: bytes of device one dirty-map bit stands for (`null` for
    /// linear devices, and from a kernel that does not report it).
    pub region_size: Option<u32>,
    /// Mirror: resync speed limit while the device has other I/O, in
    /// KiB/s; 0: none.
    pub resync_rate_kib: Option<u32>,
    /// Mirror: resync speed limit at all times, in KiB/s; 0: none.
    pub resync_max_kib: Option<u32>,
    /// The legs, in order.
    pub legs: Vec<Leg>,
    /// The device's NBD exports; empty when it has none.
    pub exports: Vec<Export>,
}

/// One NBD export of a device.  Field order is the JSON order; every key
/// is always present.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct Export {
    /// Where the export listens, `IP:PORT` or `[IPv6]:PORT`.
    pub listen: String,
    /// The export name clients ask for (may be empty: the default export).
    pub name: String,
    /// Clients may not write.
    pub read_only: bool,
    /// Networks allowed to connect, `IP/PREFIX`; empty: loopback only.
    pub allow: Vec<String>,
    /// Clients connected now.
    pub clients: u32,
    /// The connected clients' addresses, `IP:PORT`.
    pub client_addrs: Vec<String>,
    /// Connections refused so far.
    pub refused: u64,
    /// Requests served so far.
    pub requests: u64,
}

/// One leg of a device.  The JSON has the fields in this order, and
/// after `resync_speed` the derived `resync_eta_s` ([`Leg::resync_eta`]).
///
/// The keys are always present.  Those that only remote legs have
/// (`addr` to `backoff_max_ms`, `nbd_flags`, `connects`, `conns`) are `null` for
/// local legs, and for remote legs when the kernel did not report them;
/// `resync_done`, `resync_total` and `resync_speed` are 0 when no resync
/// runs (`resync_speed` also while its speed is not known yet), and
/// `resync_eta_s` is then `null`; `resynced` is 0 from a kernel that does
/// not report it, and `write_mostly` false; `problem` is `null` when there
/// is none.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Leg {
    /// Position in the device, from 0.
    pub index: u32,
    /// The leg as given at creation.
    pub spec: String,
    /// Kernel name of the leg's block device.
    pub disk: String,
    /// Size in bytes.
    pub size: u64,
    /// Offset of the leg's first byte in the device.
    pub offset: u64,
    /// Health of the leg.
    pub state: Wire<LegState>,
    /// Mirror: the leg is write-mostly (as md's): it gets every write but
    /// serves reads only when no other in-sync leg can.  False for linear
    /// legs, and from a kernel that does not report it.
    pub write_mostly: bool,
    /// Completed reads.
    pub reads: u64,
    /// Completed writes.
    pub writes: u64,
    /// Failed reads.
    pub read_errors: u64,
    /// Failed writes.
    pub write_errors: u64,
    /// Requests in flight.
    pub inflight: u32,
    /// Local or remote.
    pub kind: Wire<LegKind>,
    /// Remote: the server's address, `IP:PORT` or `[IPv6]:PORT`.
    pub addr: Option<String>,
    /// Remote: the export name.
    pub export: Option<String>,
    /// Remote: request timeout in ms.
    pub timeout_ms: Option<u32>,
    /// Remote: dead time in ms.
    pub dead_time_ms: Option<u32>,
    /// Remote: longest wait between reconnection attempts, in ms.
    pub backoff_max_ms: Option<u32>,
    /// Bytes brought in sync by the running resync.
    pub resync_done: u64,
    /// Bytes the running resync has to bring in sync; 0 if none runs.
    pub resync_total: u64,
    /// Speed of the running resync over the last seconds, in bytes per
    /// second; 0 if none runs or it is not known.
    pub resync_speed: u64,
    /// Bytes copied to the leg by resyncs since the device was created.
    pub resynced: u64,
    /// Remote: the server's NBD transmission flags.
    pub nbd_flags: Option<u32>,
    /// Remote: successful connections so far.
    pub connects: Option<u32>,
    /// Remote: TCP connections in use.
    pub conns: Option<u8>,
    /// The last problem seen on the leg.
    pub problem: Option<String>,
}

impl Leg {
    /// Whether the leg is a remote (NBD) one.
    pub fn is_remote(&self) -> bool {
        self.kind.get() == Some(LegKind::Remote)
    }

    /// Whether a resync of the leg is running.
    pub fn resyncing(&self) -> bool {
        self.resync_total > 0 || self.state.get() == Some(LegState::Resyncing)
    }

    /// Percentage of the running resync done, rounded down.
    pub fn resync_percent(&self) -> u8 {
        if self.resync_total == 0 {
            return 0;
        }
        let pct = u128::from(self.resync_done.min(self.resync_total)) * 100
            / u128::from(self.resync_total);
        pct as u8
    }

    /// Seconds the running resync needs to finish at its current speed,
    /// rounded up; `None` if no resync runs or its speed is not known.
    pub fn resync_eta(&self) -> Option<u64> {
        eta_secs(self.resync_done, self.resync_total, self.resync_speed)
    }
}

impl Serialize for Leg {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // The fields in order, `resync_eta_s` after the speed.  The
        // pattern does not compile while a field is missing from it.
        macro_rules! with_eta_after {
            ([$($before:ident),*], [$($after:ident),*]) => {{
                let Leg { $($before,)* $($after,)* } = self;
                let resync_eta_s = self.resync_eta();
                let keys = [$(stringify!($before),)* "resync_eta_s", $(stringify!($after),)*];
                let mut out = s.serialize_struct("Leg", keys.len())?;
                $(out.serialize_field(stringify!($before), $before)?;)*
                out.serialize_field("resync_eta_s", &resync_eta_s)?;
                $(out.serialize_field(stringify!($after), $after)?;)*
                out.end()
            }};
        }
        with_eta_after!(
            [
                index,
                spec,
                disk,
                size,
                offset,
                state,
                write_mostly,
                reads,
                writes,
                read_errors,
                write_errors,
                inflight,
                kind,
                addr,
                export,
                timeout_ms,
                dead_time_ms,
                backoff_max_ms,
                resync_done,
                resync_total,
                resync_speed
            ],
            [resynced, nbd_flags, connects, conns, problem]
        )
    }
}

fn string(a: &Attr<'_>) -> Result<String, nlattr::Error> {
    a.str().map(str::to_owned)
}

impl Device {
    /// Decodes the attributes of one reply message.  Attributes this tool
    /// does not know are skipped.
    pub fn decode(attrs: &[u8]) -> Result<Device, nlattr::Error> {
        let mut d = Device::default();
        for a in Attrs::new(attrs) {
            let a = a?;
            match a.kind {
                dev::NAME => d.name = string(&a)?,
                dev::TARGET => d.target = Wire::new(a.u8()?),
                dev::LEG => d.legs.push(Leg::decode(&a)?),
                dev::INDEX => d.index = a.u32()?,
                dev::DISK => d.disk = string(&a)?,
                dev::SIZE => d.size = a.u64()?,
                dev::STATE => d.state = Wire::new(a.u8()?),
                dev::OPENERS => d.openers = a.u32()?,
                dev::BLOCK_SIZE => d.block_size = a.u32()?,
                dev::REGION_SIZE => d.region_size = Some(a.u32()?),
                dev::RESYNC_RATE => d.resync_rate_kib = Some(a.u32()?),
                dev::RESYNC_MAX => d.resync_max_kib = Some(a.u32()?),
                dev::EXPORT => d.exports.push(Export::decode(&a)?),
                _ => {}
            }
        }
        if d.name.is_empty() {
            return Err(nlattr::Error::BadValue(dev::NAME));
        }
        d.path = if d.disk.is_empty() {
            format!("/dev/dst{}", d.index)
        } else {
            format!("/dev/{}", d.disk)
        };
        Ok(d)
    }
}

impl Leg {
    fn decode(nest: &Attr<'_>) -> Result<Leg, nlattr::Error> {
        let mut l = Leg::default();
        for a in nest.nested() {
            let a = a?;
            match a.kind {
                leg::SPEC => l.spec = string(&a)?,
                leg::INDEX => l.index = a.u32()?,
                leg::DISK => l.disk = string(&a)?,
                leg::SIZE => l.size = a.u64()?,
                leg::OFFSET => l.offset = a.u64()?,
                leg::STATE => l.state = Wire::new(a.u8()?),
                leg::WRITE_MOSTLY => l.write_mostly = a.u8()? != 0,
                leg::READS => l.reads = a.u64()?,
                leg::WRITES => l.writes = a.u64()?,
                leg::READ_ERRORS => l.read_errors = a.u64()?,
                leg::WRITE_ERRORS => l.write_errors = a.u64()?,
                leg::INFLIGHT => l.inflight = a.u32()?,
                leg::KIND => l.kind = Wire::new(a.u8()?),
                leg::ADDR => l.addr = Some(string(&a)?),
                leg::EXPORT => l.export = Some(string(&a)?),
                leg::TIMEOUT_MS => l.timeout_ms = Some(a.u32()?),
                leg::DEAD_TIME_MS => l.dead_time_ms = Some(a.u32()?),
                leg::BACKOFF_MAX_MS => l.backoff_max_ms = Some(a.u32()?),
                leg::RESYNC_DONE => l.resync_done = a.u64()?,
                leg::RESYNC_TOTAL => l.resync_total = a.u64()?,
                leg::RESYNCED => l.resynced = a.u64()?,
                leg::RESYNC_SPEED => l.resync_speed = a.u64()?,
                leg::NBD_FLAGS => l.nbd_flags = Some(a.u32()?),
                leg::CONNECTS => l.connects = Some(a.u32()?),
                leg::CONNS => l.conns = Some(a.u8()?),
                leg::PROBLEM => l.problem = Some(string(&a)?).filter(|p| !p.is_empty()),
                _ => {}
            }
        }
        if l.kind == Wire::default() {
            // A kernel that predates remote legs.
            let kind = if l.addr.is_some() {
                LegKind::Remote
            } else {
                LegKind::Local
            };
            l.kind = Wire::new(kind as u8);
        }
        if l.kind.get() == Some(LegKind::Local) {
            l.addr = None;
            l.export = None;
            l.timeout_ms = None;
            l.dead_time_ms = None;
            l.backoff_max_ms = None;
            l.nbd_flags = None;
            l.connects = None;
            l.conns = None;
        }
        Ok(l)
    }
}

impl Export {
    fn decode(nest: &Attr<'_>) -> Result<Export, nlattr::Error> {
        let mut e = Export::default();
        for a in nest.nested() {
            let a = a?;
            match a.kind {
                exp::LISTEN => e.listen = string(&a)?,
                exp::NAME => e.name = string(&a)?,
                exp::READ_ONLY => e.read_only = a.u8()? != 0,
                exp::ALLOW => e.allow.push(string(&a)?),
                exp::CLIENTS => e.clients = a.u32()?,
                exp::CLIENT => e.client_addrs.push(string(&a)?),
                exp::REFUSED => e.refused = a.u64()?,
                exp::REQUESTS => e.requests = a.u64()?,
                _ => {}
            }
        }
        Ok(e)
    }
}

/// One leg of a `CREATE` or `ADD_LEG` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegRequest {
    /// The leg exactly as typed.
    pub spec: String,
    /// For a remote leg, where and how to connect.
    pub remote: Option<RemoteRequest>,
    /// Mirror: the leg is write-mostly (sent only when true).
    pub write_mostly: bool,
}

/// What a `CREATE` or `ADD_LEG` request says of a remote leg.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteRequest {
    /// The resolved address, `IP:PORT` or `[IPv6]:PORT`.
    pub addr: String,
    /// The export name (may be empty).
    pub export: String,
    /// Timing; what is unset is left to the kernel's defaults.
    pub timing: Timing,
    /// Copy the whole leg after a reconnect (`None`: the kernel's default,
    /// only what it missed).
    pub full_resync: Option<bool>,
    /// Connections to open when the server allows several (`None`: the
    /// kernel's default).
    pub conns: Option<u8>,
}

/// A mirror's resync speed limits, in KiB/s (0: none), as `CREATE` and
/// `SET` requests say them; `None` leaves the kernel's default (`CREATE`)
/// or the current value (`SET`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ResyncLimits {
    /// The limit while the device has other I/O.
    pub rate_kib: Option<u32>,
    /// The limit at all times.
    pub max_kib: Option<u32>,
}

impl ResyncLimits {
    fn put(&self, w: &mut Writer<'_, Buf>) -> Result<(), nlattr::Error> {
        for (id, v) in [
            (dev::RESYNC_RATE, self.rate_kib),
            (dev::RESYNC_MAX, self.max_kib),
        ] {
            if let Some(v) = v {
                w.put_u32(id, v)?;
            }
        }
        Ok(())
    }
}

/// A mirror's resync settings in a `CREATE` request; what is `None` is
/// left to the kernel's defaults.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ResyncSettings {
    /// Bytes of device one dirty-map bit stands for.
    pub region_size: Option<u32>,
    /// The speed limits.
    pub limits: ResyncLimits,
    /// Copy the first leg to the others (an initial sync).
    pub sync: bool,
}

/// Attributes of a `CREATE` request: name, target, the resync settings
/// that are set, then one nest per leg, in the order given.  A remote
/// leg's nest adds `ADDR`, `EXPORT` and the timing that is set.
pub fn create_request(
    name: &str,
    target: Target,
    settings: &ResyncSettings,
    legs: &[LegRequest],
) -> Result<Vec<u8>, nlattr::Error> {
    let mut b = Buf::default();
    let mut w = Writer::new(&mut b);
    w.put_str(dev::NAME, name)?;
    w.put_u8(dev::TARGET, target as u8)?;
    if let Some(region) = settings.region_size {
        w.put_u32(dev::REGION_SIZE, region)?;
    }
    settings.limits.put(&mut w)?;
    if settings.sync {
        w.put_u8(dev::FULL, 1)?;
    }
    for l in legs {
        l.put(&mut w)?;
    }
    Ok(b.0)
}

impl LegRequest {
    /// Writes the leg's nest: `SPEC`, `WRITE_MOSTLY` if set, and for a
    /// remote leg `ADDR`, `EXPORT`, the timing that is set, and
    /// `FULL_RESYNC` and `CONNS` if given.
    fn put(&self, w: &mut Writer<'_, Buf>) -> Result<(), nlattr::Error> {
        let nest = w.begin_nest(dev::LEG)?;
        w.put_str(leg::SPEC, &self.spec)?;
        if self.write_mostly {
            w.put_u8(leg::WRITE_MOSTLY, 1)?;
        }
        if let Some(r) = &self.remote {
            w.put_str(leg::ADDR, &r.addr)?;
            w.put_str(leg::EXPORT, &r.export)?;
            for (id, v) in [
                (leg::TIMEOUT_MS, r.timing.timeout_ms),
                (leg::DEAD_TIME_MS, r.timing.dead_time_ms),
                (leg::BACKOFF_MAX_MS, r.timing.backoff_max_ms),
            ] {
                if let Some(v) = v {
                    w.put_u32(id, v)?;
                }
            }
            if let Some(full) = r.full_resync {
                w.put_u8(leg::FULL_RESYNC, full.into())?;
            }
            if let Some(n) = r.conns {
                w.put_u8(leg::CONNS, n)?;
            }
        }
        w.end_nest(nest)
    }
}

/// Attributes of an `ADD_LEG` request: the device's name, then one leg
/// nest, as one leg of [`create_request`].
pub fn add_leg_request(device: &str, l: &LegRequest) -> Result<Vec<u8>, nlattr::Error> {
    let mut b = Buf::default();
    let mut w = Writer::new(&mut b);
    w.put_str(dev::NAME, device)?;
    l.put(&mut w)?;
    Ok(b.0)
}

/// What an `EXPORT` request says of the export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportRequest {
    /// The resolved address to listen on, `IP:PORT` or `[IPv6]:PORT`.
    pub listen: String,
    /// The export name; `None` leaves the kernel's default (the device
    /// name).
    pub name: Option<String>,
    /// Clients may not write.
    pub read_only: bool,
    /// Networks allowed to connect, `IP/PREFIX`.
    pub allow: Vec<String>,
}

/// Attributes of an `EXPORT` request: the device's name, then one export
/// nest with `LISTEN`, the name if given, `READ_ONLY` if set and one
/// `ALLOW` per network, in order.
pub fn export_request(device: &str, e: &ExportRequest) -> Result<Vec<u8>, nlattr::Error> {
    let mut b = Buf::default();
    let mut w = Writer::new(&mut b);
    w.put_str(dev::NAME, device)?;
    let nest = w.begin_nest(dev::EXPORT)?;
    w.put_str(exp::LISTEN, &e.listen)?;
    if let Some(name) = &e.name {
        w.put_str(exp::NAME, name)?;
    }
    if e.read_only {
        w.put_u8(exp::READ_ONLY, 1)?;
    }
    for net in &e.allow {
        w.put_str(exp::ALLOW, net)?;
    }
    w.end_nest(nest)?;
    Ok(b.0)
}

/// Attributes of an `UNEXPORT` request: the device's name, and with
/// `export`, an export nest naming the one export to stop.
pub fn unexport_request(device: &str, export: Option<&str>) -> Result<Vec<u8>, nlattr::Error> {
    let mut b = Buf::default();
    let mut w = Writer::new(&mut b);
    w.put_str(dev::NAME, device)?;
    if let Some(name) = export {
        let nest = w.begin_nest(dev::EXPORT)?;
        w.put_str(exp::NAME, name)?;
        w.end_nest(nest)?;
    }
    Ok(b.0)
}

/// Attributes of a `DETACH`, `ATTACH` or `REMOVE_LEG` request: the
/// device's name, the leg's index, and `FULL` when `full` (attach only).
pub fn leg_request(device: &str, index: u32, full: bool) -> Result<Vec<u8>, nlattr::Error> {
    let mut b = Buf::default();
    let mut w = Writer::new(&mut b);
    w.put_str(dev::NAME, device)?;
    w.put_u32(dev::LEG_INDEX, index)?;
    if full {
        w.put_u8(dev::FULL, 1)?;
    }
    Ok(b.0)
}

/// A `SET` request's change to one mirror leg: make it write-mostly, or
/// a normal leg again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteMostly {
    /// The leg, by its index.
    pub leg: u32,
    /// Write-mostly (true) or a normal leg (false).
    pub on: bool,
}

/// Attributes of a `SET` request: the device's name, the limits that are
/// given, and with `write_mostly` the leg's `LEG_INDEX` and
/// `WRITE_MOSTLY`.
pub fn set_request(
    device: &str,
    limits: &ResyncLimits,
    write_mostly: Option<WriteMostly>,
) -> Result<Vec<u8>, nlattr::Error> {
    let mut b = Buf::default();
    let mut w = Writer::new(&mut b);
    w.put_str(dev::NAME, device)?;
    limits.put(&mut w)?;
    if let Some(wm) = write_mostly {
        w.put_u32(dev::LEG_INDEX, wm.leg)?;
        w.put_u8(dev::WRITE_MOSTLY, wm.on.into())?;
    }
    Ok(b.0)
}

/// Attributes of a request naming one device (`GET`, `REMOVE`).
pub fn name_request(name: &str) -> Result<Vec<u8>, nlattr::Error> {
    let mut b = Buf::default();
    Writer::new(&mut b).put_str(dev::NAME, name)?;
    Ok(b.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use dst_proto::nlattr::NLA_F_NESTED;
    use serde_json::json;

    fn local(spec: &str) -> LegRequest {
        LegRequest {
            spec: spec.into(),
            remote: None,
            write_mostly: false,
        }
    }

    #[test]
    fn create_request_keeps_leg_order() {
        let legs = ["/dev/ram1", "/dev/ram0", "/dev/ram1"].map(local);
        let none = ResyncSettings::default();
        let bytes = create_request("r1", Target::Mirror, &none, &legs).unwrap();
        let attrs: Vec<Attr<'_>> = Attrs::new(&bytes).map(Result::unwrap).collect();
        let kinds: Vec<u16> = attrs.iter().map(|a| a.kind).collect();
        assert_eq!(
            kinds,
            [dev::NAME, dev::TARGET, dev::LEG, dev::LEG, dev::LEG]
        );
        assert_eq!(attrs[0].str().unwrap(), "r1");
        assert_eq!(attrs[1].u8().unwrap(), 2);
        let specs: Vec<&str> = attrs[2..]
            .iter()
            .map(|a| {
                let inner: Vec<Attr<'_>> = a.nested().map(Result::unwrap).collect();
                assert_eq!(inner.len(), 1);
                assert_eq!(inner[0].kind, leg::SPEC);
                inner[0].str().unwrap()
            })
            .collect();
        // Duplicates pass through: refusing them is the kernel's job.
        assert_eq!(specs, ["/dev/ram1", "/dev/ram0", "/dev/ram1"]);

        // The nests carry NLA_F_NESTED on the wire.
        let first_leg = 8 + 8; // NAME "r1" (4 + 3 -> 8), TARGET (4 + 1 -> 8)
        let raw_type = u16::from_ne_bytes([bytes[first_leg + 2], bytes[first_leg + 3]]);
        assert_eq!(raw_type, dev::LEG | NLA_F_NESTED);

        let linear = create_request("l", Target::Linear, &none, &legs[..1]).unwrap();
        let t = Attrs::new(&linear).find(dev::TARGET).unwrap().unwrap();
        assert_eq!(t.u8().unwrap(), 1);
    }

    #[test]
    fn leg_request_encoding() {
        let bytes = leg_request("r1", 2, false).unwrap();
        let attrs: Vec<Attr<'_>> = Attrs::new(&bytes).map(Result::unwrap).collect();
        let kinds: Vec<u16> = attrs.iter().map(|a| a.kind).collect();
        assert_eq!(kinds, [dev::NAME, dev::LEG_INDEX]);
        assert_eq!(attrs[0].str().unwrap(), "r1");
        assert_eq!(attrs[1].u32().unwrap(), 2);

        let bytes = leg_request("r1", 0, true).unwrap();
        let attrs: Vec<Attr<'_>> = Attrs::new(&bytes).map(Result::unwrap).collect();
        let kinds: Vec<u16> = attrs.iter().map(|a| a.kind).collect();
        assert_eq!(kinds, [dev::NAME, dev::LEG_INDEX, dev::FULL]);
        assert_eq!(attrs[1].u32().unwrap(), 0);
        assert_eq!(attrs[2].u8().unwrap(), 1);

        // Everything sent is in the policies the kernel builds.
        use dst_proto::genl::cmd;
        assert_in_policy(cmd::DETACH, &leg_request("r1", 1, false).unwrap());
        assert_in_policy(cmd::ATTACH, &leg_request("r1", 1, true).unwrap());
    }

    #[test]
    fn add_and_remove_leg_encoding() {
        use crate::remote::{self, LegPlan};
        use dst_proto::genl::cmd;

        // A local leg: NAME, then one LEG nest with its SPEC.
        let bytes = add_leg_request("r1", &local("/dev/sdd")).unwrap();
        let kinds: Vec<u16> = Attrs::new(&bytes).map(|a| a.unwrap().kind).collect();
        assert_eq!(kinds, [dev::NAME, dev::LEG]);
        assert_eq!(top_level(&bytes), [(dev::NAME, s("r1"))]);
        assert_eq!(leg_nests(&bytes), [vec![(leg::SPEC, s("/dev/sdd"))]]);
        // The nest carries NLA_F_NESTED on the wire.
        let nest = 8; // NAME "r1" (4 + 3 -> 8)
        let raw_type = u16::from_ne_bytes([bytes[nest + 2], bytes[nest + 3]]);
        assert_eq!(raw_type, dev::LEG | NLA_F_NESTED);

        // A remote leg: exactly as that leg in a CREATE request.
        let cli = Timing {
            timeout_ms: Some(20_000),
            dead_time_ms: None,
            backoff_max_ms: Some(500),
        };
        let remote = LegPlan::parse("nbd://192.0.2.7:10900/disk?resync=full", cli)
            .unwrap()
            .resolve(remote::resolve)
            .unwrap();
        let bytes = add_leg_request("r1", &remote).unwrap();
        let nests = leg_nests(&bytes);
        assert_eq!(
            nests,
            [vec![
                (leg::SPEC, s("nbd://192.0.2.7:10900/disk?resync=full")),
                (leg::ADDR, s("192.0.2.7:10900")),
                (leg::EXPORT, s("disk")),
                (leg::TIMEOUT_MS, 20_000u32.to_ne_bytes().to_vec()),
                (leg::BACKOFF_MAX_MS, 500u32.to_ne_bytes().to_vec()),
                (leg::FULL_RESYNC, vec![1]),
            ]]
        );
        let none = ResyncSettings::default();
        let create =
            create_request("r1", Target::Mirror, &none, std::slice::from_ref(&remote)).unwrap();
        assert_eq!(leg_nests(&create), nests);

        // REMOVE_LEG: NAME and LEG_INDEX, nothing else.
        let bytes = leg_request("r1", 3, false).unwrap();
        let attrs: Vec<Attr<'_>> = Attrs::new(&bytes).map(Result::unwrap).collect();
        let kinds: Vec<u16> = attrs.iter().map(|a| a.kind).collect();
        assert_eq!(kinds, [dev::NAME, dev::LEG_INDEX]);
        assert_eq!(attrs[1].u32().unwrap(), 3);

        // Everything sent is in the policies the kernel builds, the leg
        // nest's attributes in the leg policy.
        for (c, bytes) in [
            (cmd::ADD_LEG, add_leg_request("r1", &remote).unwrap()),
            (
                cmd::ADD_LEG,
                add_leg_request("r1", &local("/dev/sdd")).unwrap(),
            ),
            (cmd::REMOVE_LEG, leg_request("r1", 3, false).unwrap()),
        ] {
            assert_in_policy(c, &bytes);
        }
    }

    #[test]
    fn decode_legs_with_gaps() {
        // Leg 0 removed, leg 3 added: the kernel's indexes are kept, in
        // the order the kernel sends them.
        let mut b = Buf::default();
        let mut w = Writer::new(&mut b);
        w.put_str(dev::NAME, "r1").unwrap();
        w.put_u8(dev::TARGET, 2).unwrap();
        put_leg(&mut w, 1, "/dev/ram1", "ram1", LegState::InSync as u8);
        put_leg(&mut w, 2, "/dev/ram2", "ram2", LegState::InSync as u8);
        put_leg(&mut w, 3, "/dev/ram3", "ram3", LegState::Resyncing as u8);
        put_leg(&mut w, 7, "/dev/ram7", "ram7", LegState::Removed as u8);
        let d = Device::decode(&b.0).unwrap();
        let indexes: Vec<u32> = d.legs.iter().map(|l| l.index).collect();
        assert_eq!(indexes, [1, 2, 3, 7]);
        assert_eq!(d.legs[0].spec, "/dev/ram1");
        assert_eq!(d.legs[2].state.to_string(), "resyncing");
        // A removed leg, should one be reported, is shown as such.
        assert_eq!(d.legs[3].state.get(), Some(LegState::Removed));
        assert_eq!(d.legs[3].state.to_string(), "removed");
        let v = serde_json::to_value(&d).unwrap();
        assert_eq!(v["legs"][0]["index"], 1);
        assert_eq!(v["legs"][3]["index"], 7);
        assert_eq!(v["legs"][3]["state"], "removed");
    }

    /// The top-level attributes of a request but its legs.
    fn top_level(bytes: &[u8]) -> Vec<(u16, Vec<u8>)> {
        Attrs::new(bytes)
            .map(Result::unwrap)
            .filter(|a| a.kind != dev::LEG)
            .map(|a| (a.kind, a.payload.to_vec()))
            .collect()
    }

    fn u32_attr(id: u16, v: u32) -> (u16, Vec<u8>) {
        (id, v.to_ne_bytes().to_vec())
    }

    #[test]
    fn resync_settings_encoding() {
        use dst_proto::genl::cmd;

        let legs = ["/dev/ram0", "/dev/ram1"].map(local);
        let all = ResyncSettings {
            region_size: Some(256 << 10),
            limits: ResyncLimits {
                rate_kib: Some(50 << 10),
                max_kib: Some(0),
            },
            sync: true,
        };
        let bytes = create_request("r1", Target::Mirror, &all, &legs).unwrap();
        assert_eq!(
            top_level(&bytes),
            [
                (dev::NAME, s("r1")),
                (dev::TARGET, vec![2]),
                u32_attr(dev::REGION_SIZE, 256 << 10),
                u32_attr(dev::RESYNC_RATE, 50 << 10),
                u32_attr(dev::RESYNC_MAX, 0),
                (dev::FULL, vec![1]),
            ]
        );
        assert_eq!(leg_nests(&bytes).len(), 2);
        // Only what is given is sent: the kernel applies its defaults.
        let some = ResyncSettings {
            region_size: None,
            limits: ResyncLimits {
                rate_kib: None,
                max_kib: Some(100 << 10),
            },
            sync: false,
        };
        let bytes = create_request("r1", Target::Mirror, &some, &legs).unwrap();
        let kinds: Vec<u16> = top_level(&bytes).iter().map(|a| a.0).collect();
        assert_eq!(kinds, [dev::NAME, dev::TARGET, dev::RESYNC_MAX]);

        let bytes = set_request("r1", &all.limits, None).unwrap();
        assert_eq!(
            top_level(&bytes),
            [
                (dev::NAME, s("r1")),
                u32_attr(dev::RESYNC_RATE, 50 << 10),
                u32_attr(dev::RESYNC_MAX, 0),
            ]
        );
        let bytes = set_request("r1", &some.limits, None).unwrap();
        assert_eq!(
            top_level(&bytes),
            [(dev::NAME, s("r1")), u32_attr(dev::RESYNC_MAX, 100 << 10)]
        );

        // Everything sent is in the policies the kernel builds.
        for (c, bytes) in [
            (
                cmd::CREATE,
                create_request("r1", Target::Mirror, &all, &[]).unwrap(),
            ),
            (cmd::SET, set_request("r1", &all.limits, None).unwrap()),
        ] {
            assert_in_policy(c, &bytes);
        }
    }

    #[test]
    fn write_mostly_leg_encoding() {
        use crate::remote::{self, LegPlan};
        use dst_proto::genl::cmd;

        // WRITE_MOSTLY = 1 right after SPEC, in the nests of the legs that
        // are write-mostly only.
        let mut legs = ["/dev/sdb", "/dev/sdc", "/dev/sdd"].map(local);
        legs[1].write_mostly = true;
        let none = ResyncSettings::default();
        let bytes = create_request("r1", Target::Mirror, &none, &legs).unwrap();
        assert_eq!(
            leg_nests(&bytes),
            [
                vec![(leg::SPEC, s("/dev/sdb"))],
                vec![(leg::SPEC, s("/dev/sdc")), (leg::WRITE_MOSTLY, vec![1])],
                vec![(leg::SPEC, s("/dev/sdd"))],
            ]
        );
        // A remote leg: the same, then its connection's attributes; as
        // for create, so for add.
        let mut remote = LegPlan::parse("nbd://192.0.2.7/disk", Timing::default())
            .unwrap()
            .resolve(remote::resolve)
            .unwrap();
        remote.write_mostly = true;
        let bytes = add_leg_request("r1", &remote).unwrap();
        let nests = leg_nests(&bytes);
        assert_eq!(
            nests,
            [vec![
                (leg::SPEC, s("nbd://192.0.2.7/disk")),
                (leg::WRITE_MOSTLY, vec![1]),
                (leg::ADDR, s("192.0.2.7:10809")),
                (leg::EXPORT, s("disk")),
            ]]
        );
        let create =
            create_request("r1", Target::Mirror, &none, std::slice::from_ref(&remote)).unwrap();
        assert_eq!(leg_nests(&create), nests);
        // Not write-mostly: nothing sent, the kernel's default.
        remote.write_mostly = false;
        let bytes = add_leg_request("r1", &remote).unwrap();
        assert!(leg_nests(&bytes)[0]
            .iter()
            .all(|(id, _)| *id != leg::WRITE_MOSTLY));

        // Everything sent is in the policies the kernel builds.
        for (c, bytes) in [
            (
                cmd::CREATE,
                create_request("r1", Target::Mirror, &none, &legs).unwrap(),
            ),
            (cmd::ADD_LEG, add_leg_request("r1", &legs[1]).unwrap()),
        ] {
            assert_in_policy(c, &bytes);
        }
    }

    #[test]
    fn set_write_mostly_encoding() {
        use dst_proto::genl::cmd;

        let none = ResyncLimits::default();
        let on = WriteMostly { leg: 2, on: true };
        let bytes = set_request("r1", &none, Some(on)).unwrap();
        assert_eq!(
            top_level(&bytes),
            [
                (dev::NAME, s("r1")),
                u32_attr(dev::LEG_INDEX, 2),
                (dev::WRITE_MOSTLY, vec![1]),
            ]
        );
        let off = WriteMostly { leg: 0, on: false };
        let bytes = set_request("r1", &none, Some(off)).unwrap();
        assert_eq!(
            top_level(&bytes),
            [
                (dev::NAME, s("r1")),
                u32_attr(dev::LEG_INDEX, 0),
                (dev::WRITE_MOSTLY, vec![0]),
            ]
        );
        // With limits, in the same request.
        let limits = ResyncLimits {
            rate_kib: Some(1024),
            max_kib: None,
        };
        let bytes = set_request("r1", &limits, Some(on)).unwrap();
        assert_eq!(
            top_level(&bytes),
            [
                (dev::NAME, s("r1")),
                u32_attr(dev::RESYNC_RATE, 1024),
                u32_attr(dev::LEG_INDEX, 2),
                (dev::WRITE_MOSTLY, vec![1]),
            ]
        );
        // Without a change, neither is sent.
        let bytes = set_request("r1", &limits, None).unwrap();
        let kinds: Vec<u16> = top_level(&bytes).iter().map(|a| a.0).collect();
        assert_eq!(kinds, [dev::NAME, dev::RESYNC_RATE]);

        // Everything sent is in the policy the kernel builds.
        assert_in_policy(cmd::SET, &set_request("r1", &limits, Some(off)).unwrap());
    }

    #[test]
    fn decode_write_mostly() {
        let decode_leg = |value: Option<u8>| {
            let mut b = Buf::default();
            let mut w = Writer::new(&mut b);
            w.put_str(dev::NAME, "x").unwrap();
            let n = w.begin_nest(dev::LEG).unwrap();
            w.put_str(leg::SPEC, "/dev/sdb").unwrap();
            if let Some(v) = value {
                w.put_u8(leg::WRITE_MOSTLY, v).unwrap();
            }
            w.end_nest(n).unwrap();
            Device::decode(&b.0).unwrap().legs.remove(0)
        };
        let l = decode_leg(Some(1));
        assert!(l.write_mostly);
        assert_eq!(v(&l)["write_mostly"], true);
        // 0, or absent (a linear leg, an older kernel): a normal leg.
        for l in [decode_leg(Some(0)), decode_leg(None)] {
            assert!(!l.write_mostly);
            assert_eq!(v(&l)["write_mostly"], false);
        }
        // A wrong size is refused.
        let mut b = Buf::default();
        let mut w = Writer::new(&mut b);
        w.put_str(dev::NAME, "x").unwrap();
        let n = w.begin_nest(dev::LEG).unwrap();
        w.put_u32(leg::WRITE_MOSTLY, 1).unwrap();
        w.end_nest(n).unwrap();
        assert_eq!(
            Device::decode(&b.0).unwrap_err(),
            nlattr::Error::BadValue(leg::WRITE_MOSTLY)
        );
    }

    #[test]
    fn name_request_encoding() {
        let bytes = name_request("backup-1").unwrap();
        let attrs: Vec<Attr<'_>> = Attrs::new(&bytes).map(Result::unwrap).collect();
        assert_eq!(attrs.len(), 1);
        assert_eq!(attrs[0].kind, dev::NAME);
        assert_eq!(attrs[0].str().unwrap(), "backup-1");
    }

    fn put_leg(w: &mut Writer<'_, Buf>, index: u32, spec: &str, disk: &str, state: u8) {
        let n = w.begin_nest(dev::LEG).unwrap();
        w.put_u32(leg::INDEX, index).unwrap();
        w.put_str(leg::SPEC, spec).unwrap();
        w.put_str(leg::DISK, disk).unwrap();
        w.put_u64(leg::SIZE, 64 << 20).unwrap();
        w.put_u64(leg::OFFSET, 0).unwrap();
        w.put_u8(leg::STATE, state).unwrap();
        w.put_u64(leg::READS, 10 + u64::from(index)).unwrap();
        w.put_u64(leg::WRITES, 20).unwrap();
        w.put_u64(leg::READ_ERRORS, 0).unwrap();
        w.put_u64(leg::WRITE_ERRORS, u64::from(index)).unwrap();
        w.put_u32(leg::INFLIGHT, 3).unwrap();
        w.put_u64(200, 7).unwrap(); // from a newer kernel
        w.end_nest(n).unwrap();
    }

    /// A reply as the kernel would send it, with an attribute and a state
    /// this tool does not know.
    fn sample_reply() -> Vec<u8> {
        let mut b = Buf::default();
        let mut w = Writer::new(&mut b);
        w.put_str(dev::NAME, "r1").unwrap();
        w.put_u8(dev::TARGET, 2).unwrap();
        w.put_u32(dev::INDEX, 0).unwrap();
        w.put_str(dev::DISK, "dst0").unwrap();
        w.put_u64(dev::SIZE, 64 << 20).unwrap();
        w.put_u8(dev::STATE, 9).unwrap();
        w.put_u32(200, 0xdead).unwrap();
        let n = w.begin_nest(201).unwrap();
        w.put_u32(1, 1).unwrap();
        w.end_nest(n).unwrap();
        w.put_u32(dev::OPENERS, 1).unwrap();
        w.put_u32(dev::BLOCK_SIZE, 512).unwrap();
        put_leg(&mut w, 0, "/dev/ram0", "ram0", 1);
        put_leg(&mut w, 1, "/dev/ram1", "ram1", 2);
        b.0
    }

    #[test]
    fn decode_reply() {
        let d = Device::decode(&sample_reply()).unwrap();
        assert_eq!(d.name, "r1");
        assert_eq!(d.disk, "dst0");
        assert_eq!(d.path, "/dev/dst0");
        assert_eq!(d.target.to_string(), "mirror");
        assert_eq!(d.size, 64 << 20);
        assert_eq!(d.state.to_string(), "unknown(9)");
        assert_eq!((d.openers, d.block_size), (1, 512));
        assert_eq!(d.legs.len(), 2);
        assert_eq!(d.legs[1].spec, "/dev/ram1");
        assert_eq!(d.legs[1].state.to_string(), "faulty");
        assert_eq!(d.legs[1].write_errors, 1);
    }

    #[test]
    fn json_rendering() {
        let d = Device::decode(&sample_reply()).unwrap();
        let v = serde_json::to_value(&d).unwrap();
        let leg0 = json!({
            "index": 0, "spec": "/dev/ram0", "disk": "ram0", "size": 67108864,
            "offset": 0, "state": "in-sync", "write_mostly": false,
            "reads": 10, "writes": 20,
            "read_errors": 0, "write_errors": 0, "inflight": 3,
            "kind": "local", "addr": null, "export": null, "timeout_ms": null,
            "dead_time_ms": null, "backoff_max_ms": null, "resync_done": 0,
            "resync_total": 0, "resync_speed": 0, "resync_eta_s": null,
            "resynced": 0, "nbd_flags": null, "connects": null, "conns": null,
            "problem": null
        });
        assert_eq!(
            v,
            json!({
                "name": "r1", "disk": "dst0", "path": "/dev/dst0", "index": 0,
                "target": "mirror", "size": 67108864, "state": "unknown(9)",
                "openers": 1, "block_size": 512, "region_size": null,
                "resync_rate_kib": null, "resync_max_kib": null,
                "legs": [leg0, v["legs"][1].clone()], "exports": []
            })
        );
        assert_eq!(v["legs"][1]["state"], "faulty");
        // Without RESYNCED (an older kernel), 0.
        assert_eq!(d.legs[0].resynced, 0);
        // Key order is the documented one.
        let text = serde_json::to_string(&d).unwrap();
        let keys = [
            "\"name\"",
            "\"disk\"",
            "\"path\"",
            "\"index\"",
            "\"target\"",
            "\"block_size\"",
            "\"region_size\"",
            "\"resync_rate_kib\"",
            "\"resync_max_kib\"",
            "\"legs\"",
        ];
        let at: Vec<usize> = keys.iter().map(|k| text.find(k).unwrap()).collect();
        assert!(at.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn decode_refuses_garbage() {
        // No name.
        let mut b = Buf::default();
        Writer::new(&mut b).put_u32(dev::INDEX, 1).unwrap();
        assert!(Device::decode(&b.0).is_err());
        // A known attribute with the wrong size.
        let mut b = Buf::default();
        let mut w = Writer::new(&mut b);
        w.put_str(dev::NAME, "r1").unwrap();
        w.put_u8(dev::SIZE, 1).unwrap();
        assert_eq!(
            Device::decode(&b.0).unwrap_err(),
            nlattr::Error::BadValue(dev::SIZE)
        );
        // Truncated.
        let reply = sample_reply();
        assert!(Device::decode(&reply[..reply.len() - 2]).is_err());
    }

    /// The attributes of each leg nest of a request.
    /// Fails unless command `c` answers requests and every attribute of
    /// `bytes` is in its policy, as the kernel builds it from `COMMANDS`,
    /// the attributes of leg nests in the leg policy.
    fn assert_in_policy(c: u8, bytes: &[u8]) {
        use dst_proto::genl::{COMMANDS, LEG_REQUEST};
        let spec = COMMANDS.iter().find(|s| s.cmd == c).unwrap();
        assert!(spec.doit, "{c}");
        for a in Attrs::new(bytes) {
            let id = a.unwrap().kind;
            assert!(spec.policy.iter().any(|p| p.id == id), "{c}: {id}");
        }
        for nest in leg_nests(bytes) {
            for (id, _) in nest {
                assert!(LEG_REQUEST.iter().any(|a| a.id == id), "{c}: leg {id}");
            }
        }
    }

    fn leg_nests(bytes: &[u8]) -> Vec<Vec<(u16, Vec<u8>)>> {
        Attrs::new(bytes)
            .map(Result::unwrap)
            .filter(|a| a.kind == dev::LEG)
            .map(|a| {
                a.nested()
                    .map(Result::unwrap)
                    .map(|a| (a.kind, a.payload.to_vec()))
                    .collect()
            })
            .collect()
    }

    fn s(text: &str) -> Vec<u8> {
        let mut v = text.as_bytes().to_vec();
        v.push(0);
        v
    }

    #[test]
    fn remote_legs_encoding() {
        use crate::remote::{self, LegPlan};

        let cli = Timing {
            timeout_ms: None,
            dead_time_ms: Some(120_000),
            backoff_max_ms: None,
        };
        let legs: Vec<LegRequest> = [
            "/dev/sdb",
            "nbd://192.0.2.7:10900/disk?timeout=5s",
            "nbd://[2001:db8::1]",
        ]
        .iter()
        .map(|spec| {
            LegPlan::parse(spec, cli)
                .unwrap()
                .resolve(remote::resolve)
                .unwrap()
        })
        .collect();
        let none = ResyncSettings::default();
        let bytes = create_request("r1", Target::Mirror, &none, &legs).unwrap();
        let nests = leg_nests(&bytes);
        assert_eq!(nests[0], [(leg::SPEC, s("/dev/sdb"))]);
        assert_eq!(
            nests[1],
            [
                (leg::SPEC, s("nbd://192.0.2.7:10900/disk?timeout=5s")),
                (leg::ADDR, s("192.0.2.7:10900")),
                (leg::EXPORT, s("disk")),
                (leg::TIMEOUT_MS, 5_000u32.to_ne_bytes().to_vec()),
                (leg::DEAD_TIME_MS, 120_000u32.to_ne_bytes().to_vec()),
            ]
        );
        assert_eq!(
            nests[2],
            [
                (leg::SPEC, s("nbd://[2001:db8::1]")),
                (leg::ADDR, s("[2001:db8::1]:10809")),
                (leg::EXPORT, s("")),
                (leg::DEAD_TIME_MS, 120_000u32.to_ne_bytes().to_vec()),
            ]
        );
        // Everything sent is in the policy the kernel builds.
        assert_in_policy(dst_proto::genl::cmd::CREATE, &bytes);
    }

    /// A remote leg with every attribute, and some from a newer kernel.
    fn remote_reply() -> Vec<u8> {
        let mut b = Buf::default();
        let mut w = Writer::new(&mut b);
        w.put_str(dev::NAME, "r2").unwrap();
        w.put_u8(dev::TARGET, 2).unwrap();
        w.put_u32(dev::INDEX, 3).unwrap();
        w.put_str(dev::DISK, "dst3").unwrap();
        w.put_u8(dev::STATE, 2).unwrap();
        w.put_u8(dev::EVENT, 3).unwrap();
        let n = w.begin_nest(dev::LEG).unwrap();
        w.put_u32(leg::INDEX, 1).unwrap();
        w.put_str(leg::SPEC, "nbd://store/disk").unwrap();
        w.put_u8(leg::KIND, 2).unwrap();
        w.put_u8(leg::STATE, 5).unwrap();
        w.put_u8(leg::WRITE_MOSTLY, 1).unwrap();
        w.put_str(leg::ADDR, "10.0.0.2:10809").unwrap();
        w.put_str(leg::EXPORT, "disk").unwrap();
        w.put_u32(leg::TIMEOUT_MS, 30_000).unwrap();
        w.put_u32(leg::DEAD_TIME_MS, 60_000).unwrap();
        w.put_u32(leg::BACKOFF_MAX_MS, 10_000).unwrap();
        w.put_u64(leg::RESYNC_DONE, 42 << 20).unwrap();
        w.put_u64(leg::RESYNC_TOTAL, 100 << 20).unwrap();
        w.put_u64(leg::RESYNCED, 5 << 20).unwrap();
        w.put_u64(leg::RESYNC_SPEED, 3 << 20).unwrap();
        w.put_u32(leg::NBD_FLAGS, 0x1ed).unwrap();
        w.put_u32(leg::CONNECTS, 2).unwrap();
        w.put_u8(leg::CONNS, 2).unwrap();
        w.put_str(leg::PROBLEM, "connection reset by peer").unwrap();
        w.put_u64(leg::MAX + 1, 1).unwrap();
        w.put_str(leg::MAX + 7, "future").unwrap();
        w.end_nest(n).unwrap();
        w.put_u32(dev::MAX + 1, 5).unwrap();
        w.put_u32(dev::REGION_SIZE, 64 << 10).unwrap();
        w.put_u32(dev::RESYNC_RATE, 16 << 10).unwrap();
        w.put_u32(dev::RESYNC_MAX, 0).unwrap();
        b.0
    }

    #[test]
    fn decode_remote_leg() {
        let d = Device::decode(&remote_reply()).unwrap();
        assert_eq!((d.name.as_str(), d.path.as_str()), ("r2", "/dev/dst3"));
        let l = &d.legs[0];
        assert!(l.is_remote());
        assert!(l.resyncing());
        assert_eq!(l.resync_percent(), 42);
        assert_eq!(l.state.to_string(), "resyncing");
        assert_eq!(
            v(l),
            json!({
                "index": 1, "spec": "nbd://store/disk", "disk": "", "size": 0,
                "offset": 0, "state": "resyncing", "write_mostly": true,
                "reads": 0, "writes": 0,
                "read_errors": 0, "write_errors": 0, "inflight": 0,
                "kind": "remote", "addr": "10.0.0.2:10809", "export": "disk",
                "timeout_ms": 30000, "dead_time_ms": 60000, "backoff_max_ms": 10000,
                "resync_done": 44040192, "resync_total": 104857600,
                "resync_speed": 3145728, "resync_eta_s": 20,
                "resynced": 5242880, "nbd_flags": 493, "connects": 2, "conns": 2,
                "problem": "connection reset by peer"
            })
        );
        // 58 MiB left at 3 MiB/s: 19.3 s, rounded up.
        assert_eq!(l.resync_eta(), Some(20));
        // Key order is the fields', with the ETA after the speed.
        let text = serde_json::to_string(l).unwrap();
        let keys = [
            "index",
            "spec",
            "disk",
            "size",
            "offset",
            "state",
            "write_mostly",
            "reads",
            "writes",
            "read_errors",
            "write_errors",
            "inflight",
            "kind",
            "addr",
            "export",
            "timeout_ms",
            "dead_time_ms",
            "backoff_max_ms",
            "resync_done",
            "resync_total",
            "resync_speed",
            "resync_eta_s",
            "resynced",
            "nbd_flags",
            "connects",
            "conns",
            "problem",
        ];
        let at: Vec<usize> = keys
            .iter()
            .map(|k| text.find(&format!("\"{k}\":")).unwrap())
            .collect();
        assert!(at.windows(2).all(|w| w[0] < w[1]), "{text}");
        assert_eq!(v(l).as_object().unwrap().len(), keys.len());
        assert_eq!(
            (d.region_size, d.resync_rate_kib, d.resync_max_kib),
            (Some(64 << 10), Some(16 << 10), Some(0))
        );
        let v = v(&d);
        assert_eq!(
            (
                &v["region_size"],
                &v["resync_rate_kib"],
                &v["resync_max_kib"]
            ),
            (&json!(65536), &json!(16384), &json!(0))
        );
    }

    #[test]
    fn resync_speed_and_eta() {
        let decode_leg = |speed: Option<u64>, done: u64, total: u64| {
            let mut b = Buf::default();
            let mut w = Writer::new(&mut b);
            w.put_str(dev::NAME, "x").unwrap();
            let n = w.begin_nest(dev::LEG).unwrap();
            w.put_u64(leg::RESYNC_DONE, done).unwrap();
            w.put_u64(leg::RESYNC_TOTAL, total).unwrap();
            if let Some(speed) = speed {
                w.put_u64(leg::RESYNC_SPEED, speed).unwrap();
            }
            w.end_nest(n).unwrap();
            Device::decode(&b.0).unwrap().legs.remove(0)
        };
        let l = decode_leg(Some(1 << 20), 0, 10 << 20);
        assert_eq!((l.resync_speed, l.resync_eta()), (1 << 20, Some(10)));
        assert_eq!(v(&l)["resync_eta_s"], 10);
        // Not measured yet, or from a kernel that does not say.
        for l in [
            decode_leg(Some(0), 0, 10 << 20),
            decode_leg(None, 0, 10 << 20),
        ] {
            assert_eq!(l.resync_eta(), None);
            assert!(v(&l)["resync_eta_s"].is_null());
        }
        // No resync running.
        assert_eq!(decode_leg(Some(1 << 20), 0, 0).resync_eta(), None);
        // Done already: nothing left.
        assert_eq!(decode_leg(Some(1), 20, 10).resync_eta(), Some(0));
        // A settings attribute with a wrong size is refused.
        let mut b = Buf::default();
        let mut w = Writer::new(&mut b);
        w.put_str(dev::NAME, "x").unwrap();
        w.put_u64(dev::RESYNC_RATE, 1).unwrap();
        assert_eq!(
            Device::decode(&b.0).unwrap_err(),
            nlattr::Error::BadValue(dev::RESYNC_RATE)
        );
    }

    fn v<T: Serialize>(x: &T) -> serde_json::Value {
        serde_json::to_value(x).unwrap()
    }

    #[test]
    fn decode_leg_kinds() {
        let decode_leg = |build: &dyn Fn(&mut Writer<'_, Buf>)| {
            let mut b = Buf::default();
            let mut w = Writer::new(&mut b);
            w.put_str(dev::NAME, "x").unwrap();
            let n = w.begin_nest(dev::LEG).unwrap();
            build(&mut w);
            w.end_nest(n).unwrap();
            Device::decode(&b.0).unwrap().legs.remove(0)
        };
        // No KIND (an older kernel): local, unless it has an address.
        let l = decode_leg(&|w| w.put_str(leg::SPEC, "/dev/sdb").unwrap());
        assert_eq!(l.kind.to_string(), "local");
        let l = decode_leg(&|w| w.put_str(leg::ADDR, "[::1]:1").unwrap());
        assert_eq!(l.kind.to_string(), "remote");
        // Remote-only values are dropped from local legs; an empty problem
        // is none.
        let l = decode_leg(&|w| {
            w.put_u8(leg::KIND, 1).unwrap();
            w.put_u32(leg::CONNECTS, 1).unwrap();
            w.put_str(leg::PROBLEM, "").unwrap();
        });
        assert_eq!((l.connects, l.problem), (None, None));
        // An unknown kind keeps what it has.
        let l = decode_leg(&|w| {
            w.put_u8(leg::KIND, 7).unwrap();
            w.put_u32(leg::CONNECTS, 1).unwrap();
        });
        assert_eq!(l.kind.to_string(), "unknown(7)");
        assert_eq!(l.connects, Some(1));
        assert!(!l.is_remote());
        // A new attribute with a wrong size is refused like an old one.
        let mut b = Buf::default();
        let mut w = Writer::new(&mut b);
        w.put_str(dev::NAME, "x").unwrap();
        let n = w.begin_nest(dev::LEG).unwrap();
        w.put_u8(leg::RESYNC_TOTAL, 1).unwrap();
        w.end_nest(n).unwrap();
        assert_eq!(
            Device::decode(&b.0).unwrap_err(),
            nlattr::Error::BadValue(leg::RESYNC_TOTAL)
        );
    }

    /// The attributes of each export nest of a request.
    fn export_nests(bytes: &[u8]) -> Vec<Vec<(u16, Vec<u8>)>> {
        Attrs::new(bytes)
            .map(Result::unwrap)
            .filter(|a| a.kind == dev::EXPORT)
            .map(|a| {
                a.nested()
                    .map(Result::unwrap)
                    .map(|a| (a.kind, a.payload.to_vec()))
                    .collect()
            })
            .collect()
    }

    #[test]
    fn export_request_encoding() {
        use crate::export::ExportPlan;

        let allow = ["10.1.2.3/8", "::1", "10.0.0.0/8"].map(String::from);
        let req = ExportPlan::parse("[::1]:10900", Some("backup"), true, &allow)
            .unwrap()
            .resolve(crate::remote::resolve)
            .unwrap();
        let bytes = export_request("r1", &req).unwrap();
        let attrs: Vec<Attr<'_>> = Attrs::new(&bytes).map(Result::unwrap).collect();
        let kinds: Vec<u16> = attrs.iter().map(|a| a.kind).collect();
        assert_eq!(kinds, [dev::NAME, dev::EXPORT]);
        assert_eq!(attrs[0].str().unwrap(), "r1");
        assert_eq!(
            export_nests(&bytes),
            [vec![
                (exp::LISTEN, s("[::1]:10900")),
                (exp::NAME, s("backup")),
                (exp::READ_ONLY, vec![1]),
                (exp::ALLOW, s("10.0.0.0/8")),
                (exp::ALLOW, s("::1/128")),
            ]]
        );
        // The nest carries NLA_F_NESTED on the wire.
        let nest = 8; // NAME "r1" (4 + 3 -> 8)
        let raw_type = u16::from_ne_bytes([bytes[nest + 2], bytes[nest + 3]]);
        assert_eq!(raw_type, dev::EXPORT | NLA_F_NESTED);

        // Defaults: no name, read-write, loopback only.
        let req = ExportRequest {
            listen: "127.0.0.1:10809".into(),
            name: None,
            read_only: false,
            allow: Vec::new(),
        };
        let bytes = export_request("r1", &req).unwrap();
        assert_eq!(
            export_nests(&bytes),
            [vec![(exp::LISTEN, s("127.0.0.1:10809"))]]
        );
        // An empty name is sent: it is NBD's default export.
        let req = ExportRequest {
            name: Some(String::new()),
            ..req
        };
        let nests = export_nests(&export_request("r1", &req).unwrap());
        assert_eq!(nests[0][1], (exp::NAME, s("")));

        // Everything sent is in the policies the kernel builds.
        let spec = |c: u8| {
            dst_proto::genl::COMMANDS
                .iter()
                .find(|s| s.cmd == c)
                .unwrap()
        };
        for c in [dst_proto::genl::cmd::EXPORT, dst_proto::genl::cmd::UNEXPORT] {
            assert!(spec(c).policy.iter().any(|a| a.id == dev::NAME));
            assert!(spec(c).policy.iter().any(|a| a.id == dev::EXPORT));
        }
        let bytes = export_request(
            "r1",
            &ExportRequest {
                name: Some("x".into()),
                read_only: true,
                allow: vec!["::/0".into()],
                ..req
            },
        )
        .unwrap();
        for (id, _) in &export_nests(&bytes)[0] {
            assert!(
                dst_proto::genl::EXPORT_REQUEST.iter().any(|a| a.id == *id),
                "{id}"
            );
        }
    }

    #[test]
    fn unexport_request_encoding() {
        let bytes = unexport_request("r1", None).unwrap();
        let attrs: Vec<Attr<'_>> = Attrs::new(&bytes).map(Result::unwrap).collect();
        assert_eq!(attrs.len(), 1);
        assert_eq!((attrs[0].kind, attrs[0].str()), (dev::NAME, Ok("r1")));

        let bytes = unexport_request("r1", Some("backup")).unwrap();
        let kinds: Vec<u16> = Attrs::new(&bytes).map(|a| a.unwrap().kind).collect();
        assert_eq!(kinds, [dev::NAME, dev::EXPORT]);
        assert_eq!(export_nests(&bytes), [vec![(exp::NAME, s("backup"))]]);
    }

    /// A device with two exports, one with clients, and attributes from
    /// a newer kernel in and around them.
    fn export_reply() -> Vec<u8> {
        let mut b = Buf(sample_reply());
        let mut w = Writer::new(&mut b);
        let n = w.begin_nest(dev::EXPORT).unwrap();
        w.put_str(exp::LISTEN, "0.0.0.0:10809").unwrap();
        w.put_str(exp::NAME, "r1").unwrap();
        w.put_u8(exp::READ_ONLY, 0).unwrap();
        w.put_str(exp::ALLOW, "10.0.0.0/8").unwrap();
        w.put_str(exp::ALLOW, "fd00::/64").unwrap();
        w.put_u32(exp::CLIENTS, 2).unwrap();
        w.put_str(exp::CLIENT, "10.0.0.3:51234").unwrap();
        w.put_str(exp::CLIENT, "10.0.0.4:40000").unwrap();
        w.put_u64(exp::REFUSED, 3).unwrap();
        w.put_u64(exp::REQUESTS, 123_456).unwrap();
        w.put_u64(exp::MAX + 1, 9).unwrap();
        w.put_str(exp::MAX + 2, "future").unwrap();
        w.end_nest(n).unwrap();
        w.put_u32(dev::MAX + 1, 5).unwrap();
        let n = w.begin_nest(dev::EXPORT).unwrap();
        w.put_str(exp::LISTEN, "[::1]:10900").unwrap();
        w.put_str(exp::NAME, "").unwrap();
        w.put_u8(exp::READ_ONLY, 1).unwrap();
        w.put_u32(exp::CLIENTS, 0).unwrap();
        w.put_u64(exp::REFUSED, 0).unwrap();
        w.put_u64(exp::REQUESTS, 0).unwrap();
        w.end_nest(n).unwrap();
        b.0
    }

    #[test]
    fn decode_exports() {
        let d = Device::decode(&export_reply()).unwrap();
        assert_eq!(d.name, "r1");
        assert_eq!(d.legs.len(), 2);
        assert_eq!(
            d.exports,
            [
                Export {
                    listen: "0.0.0.0:10809".into(),
                    name: "r1".into(),
                    read_only: false,
                    allow: vec!["10.0.0.0/8".into(), "fd00::/64".into()],
                    clients: 2,
                    client_addrs: vec!["10.0.0.3:51234".into(), "10.0.0.4:40000".into()],
                    refused: 3,
                    requests: 123_456,
                },
                Export {
                    listen: "[::1]:10900".into(),
                    read_only: true,
                    ..Export::default()
                },
            ]
        );
        // Without exports (an older kernel, or none), the list is empty.
        assert!(Device::decode(&sample_reply()).unwrap().exports.is_empty());

        // A known attribute with the wrong size is refused.
        let mut b = Buf::default();
        let mut w = Writer::new(&mut b);
        w.put_str(dev::NAME, "x").unwrap();
        let n = w.begin_nest(dev::EXPORT).unwrap();
        w.put_u32(exp::REQUESTS, 1).unwrap();
        w.end_nest(n).unwrap();
        assert_eq!(
            Device::decode(&b.0).unwrap_err(),
            nlattr::Error::BadValue(exp::REQUESTS)
        );
        // A truncated nest too.
        let reply = export_reply();
        assert!(Device::decode(&reply[..reply.len() - 4]).is_err());
    }

    #[test]
    fn json_exports() {
        let d = Device::decode(&export_reply()).unwrap();
        let v = serde_json::to_value(&d).unwrap();
        assert_eq!(
            v["exports"],
            json!([
                {
                    "listen": "0.0.0.0:10809", "name": "r1", "read_only": false,
                    "allow": ["10.0.0.0/8", "fd00::/64"], "clients": 2,
                    "client_addrs": ["10.0.0.3:51234", "10.0.0.4:40000"],
                    "refused": 3, "requests": 123456
                },
                {
                    "listen": "[::1]:10900", "name": "", "read_only": true,
                    "allow": [], "clients": 0, "client_addrs": [],
                    "refused": 0, "requests": 0
                }
            ])
        );
        // After the legs; keys in the documented order.
        let text = serde_json::to_string(&d).unwrap();
        let exports = text.find("\"exports\"").unwrap();
        assert!(text.find("\"legs\"").unwrap() < exports);
        let text = &text[exports..];
        let keys = [
            "\"listen\"",
            "\"name\"",
            "\"read_only\"",
            "\"allow\"",
            "\"clients\"",
            "\"client_addrs\"",
            "\"refused\"",
            "\"requests\"",
        ];
        let at: Vec<usize> = keys.iter().map(|k| text.find(k).unwrap()).collect();
        assert!(at.windows(2).all(|w| w[0] < w[1]), "{text}");
    }

    #[test]
    fn resync_percent_is_bounded() {
        let mut l = Leg {
            resync_done: u64::MAX,
            resync_total: u64::MAX,
            ..Leg::default()
        };
        assert_eq!(l.resync_percent(), 100);
        l.resync_done = u64::MAX / 2;
        assert_eq!(l.resync_percent(), 49);
        l.resync_total = 0;
        assert_eq!(l.resync_percent(), 0);
        assert!(!l.resyncing());
    }
}
