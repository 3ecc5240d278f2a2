// SPDX-License-Identifier: GPL-2.0

//! A bio-based `gendisk`: the `/dev/dstN` node of a device.
//!
//! dst is a stacking driver, like md and dm: bios come in through
//! `submit_bio` and go down to the legs as clones, without a request queue
//! of its own (blk-mq would add a tag limit and a second queueing layer for
//! nothing, and its 6.12 Rust binding cannot be told it may block).  The
//! `block_device_operations` table is in C (`blk_glue.c`) for `THIS_MODULE`;
//! it calls the three functions at the end of this file.

use core::fmt::{self, Write};
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU8, Ordering};

use kernel::bindings;
use kernel::prelude::*;
use kernel::sync::{Arc, ArcBorrow};

use crate::bdev::BlockDev;
use crate::bio::Bio;
use crate::device::Device;
use crate::glue;
use crate::proto::nbd::{tflag, ExportInfo};

/// What a disk's owner does.
pub(crate) trait DiskOps: Send + Sync + Sized {
    /// Handles a bio submitted to the disk.
    fn submit_bio(this: ArcBorrow<'_, Self>, bio: Bio);
    /// Called when the disk is opened; an error refuses the open.
    fn open(&self) -> Result;
    /// Called when the last opener of an open closes.
    fn release(&self);
    /// The name shown in `/sys/block/dstN/dst/name` (at most 31 bytes).
    fn name(&self) -> &str;
}

/// The owner type of every dst disk.
type Owner = Device;

/// Queue limits, stacked from the legs.
pub(crate) struct Limits {
    lim: bindings::queue_limits,
    max_sectors: u32,
    discard: bool,
    fua: bool,
}

impl Limits {
    /// Limits ready for stacking: permissive until legs are added, and
    /// `REQ_NOWAIT` supported if every leg supports it.
    pub(crate) fn stacking() -> Self {
        // SAFETY: `queue_limits` is plain data, all-zeroes is a valid value
        // and `dst_limits_init` then sets every field it needs.
        let mut lim: bindings::queue_limits = unsafe { core::mem::zeroed() };
        // SAFETY: `lim` is a valid, exclusively borrowed `queue_limits`.
        unsafe { glue::dst_limits_init(&mut lim) };
        Limits {
            lim,
            max_sectors: u32::MAX,
            discard: true,
            fua: true,
        }
    }

    /// Combines with the limits of a local leg, whose data starts at
    /// `offset` sectors into the device.
    pub(crate) fn stack(&mut self, leg: &BlockDev, offset: u64) {
        // SAFETY: `self.lim` is valid; `leg` is an open block device; the
        // prefix is a NUL-terminated static string.
        unsafe {
            bindings::queue_limits_stack_bdev(
                &mut self.lim,
                leg.as_raw(),
                offset,
                kernel::c_str!("dst").as_char_ptr(),
            )
        };
        self.discard &= leg.supports_discard();
    }

    /// Combines with the constraints of a remote leg.
    pub(crate) fn stack_remote(&mut self, info: &ExportInfo) {
        let f = info.flags;
        // SAFETY: `self.lim` is valid.
        unsafe {
            glue::dst_limits_stack_remote(
                &mut self.lim,
                info.min_block,
                info.pref_block,
                f & tflag::SEND_FLUSH != 0,
                f & tflag::SEND_WRITE_ZEROES != 0,
                f & tflag::ROTATIONAL != 0,
            )
        };
        self.max_sectors = self
            .max_sectors
            .min(info.max_block >> bindings::SECTOR_SHIFT);
        self.discard &= f & tflag::SEND_TRIM != 0;
        self.fua &= f & tflag::SEND_FUA != 0;
    }

    /// The logical block size, in bytes.
    pub(crate) fn logical_block_size(&self) -> u32 {
        self.lim.logical_block_size
    }

    /// What a device with these limits offers its users.
    pub(crate) fn offer(&self) -> Offer {
        Offer {
            block_size: self.lim.logical_block_size,
            max_sectors: self.max_sectors,
            discard: self.discard,
            write_zeroes: self.lim.max_write_zeroes_sectors > 0,
            fua: self.fua,
        }
    }
}

/// What a device offers its users, as its legs allow (see
/// [`Limits::offer`]): a leg added later must allow as much.
#[derive(Clone, Copy)]
pub(crate) struct Offer {
    pub(crate) block_size: u32,
    pub(crate) max_sectors: u32,
    pub(crate) discard: bool,
    pub(crate) write_zeroes: bool,
    pub(crate) fua: bool,
}

impl Offer {
    /// What of `self` a leg offering `leg` lacks, if anything.  (A
    /// smaller largest request is not a lack: the device's is lowered.)
    pub(crate) fn lacking(&self, leg: &Offer) -> Option<&'static str> {
        if leg.block_size > self.block_size {
            Some("a larger logical block size")
        } else if self.discard && !leg.discard {
            Some("no discard")
        } else if self.write_zeroes && !leg.write_zeroes {
            Some("no write-zeroes")
        } else if self.fua && !leg.fua {
            Some("no FUA")
        } else {
            None
        }
    }
}

const ALLOCATED: u8 = 0;
const ADDED: u8 = 1;
const DELETED: u8 = 2;

/// A dst disk.  Created unregistered; [`Disk::add`] makes it visible,
/// [`Disk::del`] removes it, dropping frees it.
pub(crate) struct Disk {
    raw: NonNull<bindings::gendisk>,
    state: AtomicU8,
}

// SAFETY: a gendisk may be used from any thread; state changes are atomic
// and happen under the device registry's lock.
unsafe impl Send for Disk {}
// SAFETY: as above.
unsafe impl Sync for Disk {}

/// Formats into a fixed `disk_name` buffer, always NUL-terminated.
struct NameBuf<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl Write for NameBuf<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len + s.len();
        if end >= self.buf.len() {
            return Err(fmt::Error);
        }
        self.buf[self.len..end].copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

impl Disk {
    /// Allocates a disk named `name` with `sectors` of capacity.
    pub(crate) fn new(lim: &mut Limits, name: fmt::Arguments<'_>, sectors: u64) -> Result<Self> {
        // SAFETY: `lim` is valid; the C side copies it.
        let raw =
            unsafe { glue::dst_alloc_disk(&mut lim.lim, lim.max_sectors, lim.discard, lim.fua) };
        let raw = NonNull::new(kernel::error::from_err_ptr(raw)?).ok_or(ENOMEM)?;
        let disk = Disk {
            raw,
            state: AtomicU8::new(ALLOCATED),
        };
        // SAFETY: the disk is ours and not yet visible to anyone.
        let gd = unsafe { &mut *raw.as_ptr() };
        // SAFETY: `disk_name` is a plain `c_char` array.
        let name_bytes = unsafe {
            core::slice::from_raw_parts_mut(
                gd.disk_name.as_mut_ptr().cast::<u8>(),
                gd.disk_name.len(),
            )
        };
        name_bytes.fill(0);
        let mut w = NameBuf {
            buf: name_bytes,
            len: 0,
        };
        w.write_fmt(name).map_err(|_| EINVAL)?;
        // SAFETY: the disk is allocated.
        unsafe { bindings::set_capacity(raw.as_ptr(), sectors) };
        Ok(disk)
    }

    /// Makes the disk visible; bios then go to `owner`.  The disk keeps a
    /// reference to `owner` until [`Disk::del`].
    pub(crate) fn add(&self, owner: Arc<Owner>) -> Result {
        if self.state.load(Ordering::Acquire) != ALLOCATED {
            return Err(EINVAL);
        }
        let ptr = Arc::into_raw(owner);
        // SAFETY: the disk is allocated and not yet added; `private_data` is
        // read by the callbacks below only once `add_disk` has run.
        unsafe { (*self.raw.as_ptr()).private_data = ptr.cast_mut().cast() };
        // SAFETY: the disk is fully set up.
        let ret = unsafe { glue::dst_add_disk(self.raw.as_ptr()) };
        if ret != 0 {
            // SAFETY: `ptr` came from `Arc::into_raw` above and, the disk
            // not being added, nothing else uses it.
            drop(unsafe { Arc::from_raw(ptr) });
            return Err(Error::from_errno(ret));
        }
        self.state.store(ADDED, Ordering::Release);
        Ok(())
    }

    /// Removes the disk: once this returns, no `submit_bio`, `open` or
    /// `release` call is running or will start.  Bios already handed to
    /// the owner may still be in flight.  Returns the owner reference the
    /// disk held.
    pub(crate) fn del(&self) -> Option<Arc<Owner>> {
        if self
            .state
            .compare_exchange(ADDED, DELETED, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return None;
        }
        // SAFETY: the disk was added and is deleted once (state above).
        unsafe { bindings::del_gendisk(self.raw.as_ptr()) };
        // SAFETY: set in `add`; after `del_gendisk` no callback uses it.
        let ptr = unsafe { (*self.raw.as_ptr()).private_data }.cast::<Owner>();
        // SAFETY: `ptr` came from `Arc::into_raw` in `add`, and is given
        // back once, here.
        Some(unsafe { Arc::from_raw(ptr) })
    }

    /// Shows `leg` as a slave of this disk in sysfs (`holders`/`slaves`).
    pub(crate) fn link_holder(&self, leg: &BlockDev) -> Result {
        // SAFETY: the disk is added (sysfs exists) and `leg` is opened
        // exclusively, as `bd_link_disk_holder` requires.
        kernel::error::to_result(unsafe {
            bindings::bd_link_disk_holder(leg.as_raw(), self.raw.as_ptr())
        })
    }

    /// Lowers the largest request the disk takes to `max_sectors`, for a
    /// leg that cannot take more.  Sleeps (freezes the queue).
    pub(crate) fn cap_sectors(&self, max_sectors: u32) -> Result {
        // SAFETY: the disk is live (allocated until dropped).
        kernel::error::to_result(unsafe {
            glue::dst_disk_cap_sectors(self.raw.as_ptr(), max_sectors)
        })
    }

    /// Undoes [`Disk::link_holder`]; must run before [`Disk::del`].
    pub(crate) fn unlink_holder(&self, leg: &BlockDev) {
        // SAFETY: as in `link_holder`; unlinking an unlinked pair is a no-op.
        unsafe { bindings::bd_unlink_disk_holder(leg.as_raw(), self.raw.as_ptr()) };
    }
}

impl Drop for Disk {
    fn drop(&mut self) {
        if self.state.load(Ordering::Acquire) == ADDED {
            // Not reached through `del`: the owner reference stays leaked
            // rather than freed under a running callback.
            // SAFETY: the disk was added and not deleted.
            unsafe { bindings::del_gendisk(self.raw.as_ptr()) };
        }
        // SAFETY: we hold the allocation reference.
        unsafe { bindings::put_disk(self.raw.as_ptr()) };
    }
}

/// # Safety
///
/// `disk` must be a dst disk between [`Disk::add`] and [`Disk::del`].
unsafe fn owner<'a>(disk: *mut bindings::gendisk) -> ArcBorrow<'a, Owner> {
    // SAFETY: per the function's contract `private_data` holds the owner
    // reference taken in `Disk::add`, alive until `Disk::del`, which waits
    // for callbacks to finish.
    unsafe { ArcBorrow::from_raw((*disk).private_data.cast::<Owner>()) }
}

/// `submit_bio` of every dst disk.
///
/// # Safety
///
/// Called by the block layer only, with a live bio for an added dst disk.
#[no_mangle]
unsafe extern "C" fn dst_disk_submit_bio(bio: *mut bindings::bio) {
    // SAFETY: the block layer submits bios to added disks only, and
    // `del_gendisk` waits for submissions in progress.
    let owner = unsafe { owner((*(*bio).bi_bdev).bd_disk) };
    // SAFETY: the bio was submitted to us and is ours to end.
    if let Some(bio) = unsafe { Bio::from_submit(bio) } {
        Owner::submit_bio(owner, bio);
    }
}

/// `open` of every dst disk.
///
/// # Safety
///
/// Called by the block layer only, for an added dst disk.
#[no_mangle]
unsafe extern "C" fn dst_disk_open(
    disk: *mut bindings::gendisk,
    _mode: bindings::blk_mode_t,
) -> i32 {
    // SAFETY: opens happen on added disks, and `del_gendisk` waits for them.
    let owner = unsafe { owner(disk) };
    match owner.open() {
        Ok(()) => 0,
        Err(e) => e.to_errno(),
    }
}

/// `release` of every dst disk.
///
/// # Safety
///
/// Called by the block layer only, for an added dst disk.
#[no_mangle]
unsafe extern "C" fn dst_disk_release(disk: *mut bindings::gendisk) {
    // SAFETY: as for open.
    let owner = unsafe { owner(disk) };
    owner.release();
}

/// `show` of the disk's `dst/name` sysfs attribute: the owner's name and a
/// newline, in `buf`.
///
/// # Safety
///
/// Called by sysfs only, for an added dst disk, with `buf` a page.
#[no_mangle]
unsafe extern "C" fn dst_disk_show_name(disk: *mut bindings::gendisk, buf: *mut u8) -> isize {
    // SAFETY: the attribute exists only while the disk is added, and
    // `del_gendisk` removes it (waiting for readers) before the owner goes.
    let owner = unsafe { owner(disk) };
    let name = DiskOps::name(&*owner).as_bytes();
    // Names are short (checked at creation); a page holds them with room.
    let len = name.len().min(bindings::PAGE_SIZE - 1);
    // SAFETY: `buf` is a page, and `len + 1` bytes fit in it.
    unsafe {
        core::ptr::copy_nonoverlapping(name.as_ptr(), buf, len);
        *buf.add(len) = b'\n';
    }
    (len + 1) as isize
}
