// SPDX-License-Identifier: GPL-2.0

//! dst: distributed storage.
//!
//! Composes legs (block devices) into `/dev/dstN` devices: a mirror writes
//! every leg (N-way RAID1), a linear device concatenates them.  Configured
//! over the `dst` generic netlink family, usually with `dstctl`.
//!
//! The module is layered: a thin abstraction over the C block layer and
//! netlink (`glue`, `bio`, `bdev`, `disk`, `io`, `genl`, `wq`, `append`
//! hold every `unsafe` block), and the driver logic above it in safe Rust
//! (`device`, `leg`, `mirror`, `linear`, `registry`, `netlink`).

#![recursion_limit = "512"]

use kernel::prelude::*;
use kernel::sync::Arc;

mod append;
mod bdev;
mod bio;
mod bitmap;
mod device;
mod disk;
mod errno;
mod export;
mod genl;
mod glue;
mod io;
mod job;
mod leg;
mod linear;
mod mirror;
mod msg;
mod netlink;
mod proto;
mod registry;
mod remote;
mod resync;
mod socket;
mod wq;

module! {
    type: Dst,
    name: "dst",
    author: "The dst developers",
    description: "Distributed storage: mirror and linear devices over local and remote legs",
    license: "GPL",
}

struct Dst {
    netlink: Option<genl::Registration<registry::Registry>>,
    registry: Arc<registry::Registry>,
    wq: Option<wq::WorkQueues>,
}

impl kernel::Module for Dst {
    fn init(_module: &'static ThisModule) -> Result<Self> {
        let wq = wq::WorkQueues::new()?;
        let registry = registry::Registry::new()?;
        let netlink = genl::Registration::new(registry.clone())?;
        pr_info!("loaded\n");
        Ok(Dst {
            netlink: Some(netlink),
            registry,
            wq: Some(wq),
        })
    }
}

impl Drop for Dst {
    fn drop(&mut self) {
        // No new commands, then no devices (none can be open: an open dst
        // device holds a reference to this module), then no deferred work.
        drop(self.netlink.take());
        self.registry.remove_all();
        drop(self.wq.take());
        pr_info!("unloaded\n");
    }
}
