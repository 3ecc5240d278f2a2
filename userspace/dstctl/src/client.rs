// SPDX-License-Identifier: GPL-2.0

//! The `dst` family's commands, on top of the netlink transport.

use dst_proto::genl::{cmd, Target, FAMILY_NAME, FAMILY_VERSION, MCGRP_EVENTS};

use crate::model::{
    add_leg_request, create_request, export_request, leg_request, name_request, set_request,
    unexport_request, Device, ExportRequest, LegRequest, ResyncLimits, ResyncSettings, WriteMostly,
};
use crate::netlink::{Error, Family, GenlSocket, McastGroup};

/// A connection to the dst kernel module.
#[derive(Debug)]
pub struct Dst {
    sock: GenlSocket,
    family: Family,
    groups: Vec<McastGroup>,
}

impl Dst {
    /// Opens a socket and looks the family up.  If the module is not
    /// loaded, this fails with a refusal carrying `ENOENT`.
    pub fn connect() -> Result<Dst, Error> {
        let mut sock = GenlSocket::open()?;
        let (family, groups) = sock.lookup(FAMILY_NAME, FAMILY_VERSION)?;
        Ok(Dst {
            sock,
            family,
            groups,
        })
    }

    /// The family, as the kernel registered it.
    pub fn family(&self) -> Family {
        self.family
    }

    /// The id of the multicast group on which the module reports changes.
    pub fn events_group(&self) -> Result<u32, Error> {
        self.groups
            .iter()
            .find(|g| g.name == MCGRP_EVENTS)
            .map(|g| g.id)
            .ok_or_else(|| {
                Error::Malformed(format!(
                    "the {FAMILY_NAME} family has no \"{MCGRP_EVENTS}\" multicast group"
                ))
            })
    }

    /// Creates a device and returns it as the kernel describes it.
    pub fn create(
        &mut self,
        name: &str,
        target: Target,
        settings: &ResyncSettings,
        legs: &[LegRequest],
    ) -> Result<Device, Error> {
        let attrs = create_request(name, target, settings, legs)?;
        let replies = self.sock.request(self.family, cmd::CREATE, &attrs)?;
        single(&replies)
    }

    /// Removes a device.
    pub fn remove(&mut self, name: &str) -> Result<(), Error> {
        self.sock
            .request(self.family, cmd::REMOVE, &name_request(name)?)?;
        Ok(())
    }

    /// Sends a command that changes a device, and returns the device as
    /// the kernel describes it afterwards, if its reply holds it.
    fn change(&mut self, command: u8, attrs: &[u8]) -> Result<Option<Device>, Error> {
        let replies = self.sock.request(self.family, command, attrs)?;
        first(&replies)
    }

    /// Exports a device over NBD.  Returns the device as the kernel
    /// describes it afterwards, if its reply holds it.
    pub fn export(&mut self, name: &str, export: &ExportRequest) -> Result<Option<Device>, Error> {
        let attrs = export_request(name, export)?;
        self.change(cmd::EXPORT, &attrs)
    }

    /// Stops exporting a device: every export of it, or only the one
    /// named `export`.  A device in the reply, if any, is ignored.
    pub fn unexport(&mut self, name: &str, export: Option<&str>) -> Result<(), Error> {
        self.sock
            .request(self.family, cmd::UNEXPORT, &unexport_request(name, export)?)?;
        Ok(())
    }

    /// Detaches leg `index` of a mirror.  Returns the device as the
    /// kernel describes it afterwards, if its reply holds it.
    pub fn detach(&mut self, name: &str, index: u32) -> Result<Option<Device>, Error> {
        let attrs = leg_request(name, index, false)?;
        self.change(cmd::DETACH, &attrs)
    }

    /// Attaches detached leg `index` of a mirror again, to be resynced:
    /// all of it if `full`, else what was written while it was detached.
    /// Returns the device as the kernel describes it afterwards, if its
    /// reply holds it.
    pub fn attach(&mut self, name: &str, index: u32, full: bool) -> Result<Option<Device>, Error> {
        let attrs = leg_request(name, index, full)?;
        self.change(cmd::ATTACH, &attrs)
    }

    /// Adds a leg to a mirror; it is resynced in full.  Returns the device
    /// as the kernel describes it afterwards, if its reply holds it.
    pub fn add_leg(&mut self, name: &str, leg: &LegRequest) -> Result<Option<Device>, Error> {
        let attrs = add_leg_request(name, leg)?;
        self.change(cmd::ADD_LEG, &attrs)
    }

    /// Removes leg `index` from a mirror for good; the other legs keep
    /// their indexes.  Returns the device as the kernel describes it
    /// afterwards, if its reply holds it.
    pub fn remove_leg(&mut self, name: &str, index: u32) -> Result<Option<Device>, Error> {
        let attrs = leg_request(name, index, false)?;
        self.change(cmd::REMOVE_LEG, &attrs)
    }

    /// Changes a mirror's resync speed limits (those not given stay) and,
    /// with `write_mostly`, whether one of its legs is write-mostly.
    /// Returns the device as the kernel describes it afterwards, if its
    /// reply holds it.
    pub fn set(
        &mut self,
        name: &str,
        limits: &ResyncLimits,
        write_mostly: Option<WriteMostly>,
    ) -> Result<Option<Device>, Error> {
        let attrs = set_request(name, limits, write_mostly)?;
        self.change(cmd::SET, &attrs)
    }

    /// Describes one device.
    pub fn get(&mut self, name: &str) -> Result<Device, Error> {
        let replies = self
            .sock
            .request(self.family, cmd::GET, &name_request(name)?)?;
        single(&replies)
    }

    /// Describes every device, in index order.
    pub fn list(&mut self) -> Result<Vec<Device>, Error> {
        let replies = self.sock.dump(self.family, cmd::GET)?;
        let mut devices = replies
            .iter()
            .map(|r| Device::decode(r))
            .collect::<Result<Vec<_>, _>>()?;
        devices.sort_by_key(|d| d.index);
        Ok(devices)
    }
}

/// The device described by the first reply to a request, if any.
fn first(replies: &[Vec<u8>]) -> Result<Option<Device>, Error> {
    replies
        .first()
        .map(|r| Device::decode(r))
        .transpose()
        .map_err(Error::from)
}

/// The device described by the (first) reply to a request.
fn single(replies: &[Vec<u8>]) -> Result<Device, Error> {
    let reply = replies
        .first()
        .ok_or_else(|| Error::Malformed("no device in the reply".into()))?;
    Ok(Device::decode(reply)?)
}
