// SPDX-License-Identifier: GPL-2.0

//! The set of dst devices, by index.

use kernel::new_mutex;
use kernel::prelude::*;
use kernel::rbtree::{RBTree, RBTreeNodeReservation};
use kernel::sync::lock::{mutex::MutexBackend, Guard};
use kernel::sync::{Arc, Mutex};

use crate::device::{Device, LegSpec, Settings};
use crate::export::Exports;
use crate::msg::{refuse, Refusal};
use crate::netlink;
use crate::proto::genl::{Event, Target};

/// Most devices at once.
const MAX_DEVICES: u32 = 1024;

/// Proof that the caller holds the registry's `admin` lock, which
/// serialises the commands that change devices or exports.
pub(crate) struct Admin<'a> {
    _held: Guard<'a, (), MutexBackend>,
}

/// Every device, keyed by N of `/dev/dstN`.
///
/// Commands that change anything hold `admin` throughout (the netlink
/// handler takes it, see [`Registry::admin`]), so they run one at a time;
/// `devices` is held only briefly, so that status requests are answered
/// while a slow command (connecting to a server, waiting for writes to
/// drain) runs.
#[pin_data]
pub(crate) struct Registry {
    #[pin]
    admin: Mutex<()>,
    #[pin]
    devices: Mutex<RBTree<u32, Arc<Device>>>,
    /// The devices' NBD exports.
    #[pin]
    pub(crate) exports: Exports,
}

impl Registry {
    /// An empty registry.
    pub(crate) fn new() -> Result<Arc<Self>> {
        Arc::pin_init(
            pin_init!(Registry {
                admin <- new_mutex!((), "Registry::admin"),
                devices <- new_mutex!(RBTree::new(), "Registry::devices"),
                exports <- Exports::new(),
            }),
            GFP_KERNEL,
        )
    }

    /// Takes the `admin` lock, for a command that changes something.
    pub(crate) fn admin(&self) -> Admin<'_> {
        Admin {
            _held: self.admin.lock(),
        }
    }

    /// Creates a device, at the lowest free index.  Holding `admin` keeps
    /// the name and the index free while the legs are opened and
    /// connected, without `devices` held.
    pub(crate) fn create(
        &self,
        _admin: &Admin<'_>,
        name: &str,
        target: Target,
        specs: KVec<LegSpec<'_>>,
        settings: Settings,
    ) -> Result<Arc<Device>, Refusal> {
        let index = {
            let devices = self.devices.lock();
            if devices.values().any(|d| d.name() == name) {
                refuse!(EEXIST, "a device named {} exists", name);
            }
            // Keys come in increasing order: the first gap is the lowest free.
            let mut index = 0;
            for &k in devices.keys() {
                if k != index {
                    break;
                }
                index += 1;
            }
            index
        };
        if index >= MAX_DEVICES {
            refuse!(ENOSPC, "too many devices (at most {})", MAX_DEVICES);
        }
        // Allocate the node first: once the device exists, nothing fails.
        let slot = RBTreeNodeReservation::new(GFP_KERNEL)?;
        let dev = Device::create(name, index, target, specs, settings)?;
        self.devices
            .lock()
            .insert(slot.into_node(index, dev.clone()));
        netlink::send_event(&dev, Event::Created);
        Ok(dev)
    }

    /// Removes the device named `name`, if it is not open.
    pub(crate) fn remove(&self, _admin: &Admin<'_>, name: &str) -> Result<(), Refusal> {
        let Some(dev) = self.get(name) else {
            refuse!(ENODEV, "no device named {}", name);
        };
        if self.exports.exports_device(&dev) {
            refuse!(
                EBUSY,
                "{} is exported (dstctl unexport {} first)",
                name,
                name
            );
        }
        dev.begin_remove()?;
        // Out of the list first: the teardown may wait for a connection
        // attempt, and status requests meanwhile no longer show it.
        self.devices.lock().remove(&dev.index());
        dev.teardown();
        netlink::send_event(&dev, Event::Removed);
        Ok(())
    }

    /// Removes every device.  None can be open: an open device pins the
    /// module, and this runs at module exit.
    pub(crate) fn remove_all(&self) {
        self.exports.remove_all();
        let mut devices = self.devices.lock();
        loop {
            let Some(index) = devices.keys().next().copied() else {
                break;
            };
            if let Some(dev) = devices.remove(&index) {
                if dev.begin_remove().is_err() {
                    pr_err!("{}: still open at module exit\n", dev.name());
                }
                dev.teardown();
            }
        }
    }

    /// The device named `name`.
    pub(crate) fn get(&self, name: &str) -> Option<Arc<Device>> {
        self.devices
            .lock()
            .values()
            .find(|d| d.name() == name)
            .cloned()
    }

    /// The device with the lowest index not below `index`.
    pub(crate) fn next_from(&self, index: u32) -> Option<Arc<Device>> {
        self.devices
            .lock()
            .iter()
            .find(|(k, _)| **k >= index)
            .map(|(_, d)| d.clone())
    }
}
