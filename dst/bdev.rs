// SPDX-License-Identifier: GPL-2.0

//! Block devices opened by dst as legs.

use core::ffi::c_void;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicPtr, Ordering};
use kernel::ffi::c_char;

use kernel::bindings;
use kernel::prelude::*;
use kernel::str::CStr;

use crate::glue;

/// Longest kernel block device name kept (`nvme0n1p12`, `ram0`...).
const NAME_LEN: usize = 32;

/// Who holds a set of exclusively opened block devices.  Two opens with the
/// same holder do not exclude each other; opens with different holders do.
pub(crate) struct Holder(KBox<u8>);

impl Holder {
    /// A new, unique holder.
    pub(crate) fn new() -> Result<Self> {
        Ok(Holder(KBox::new(0, GFP_KERNEL)?))
    }

    fn as_ptr(&self) -> *mut c_void {
        (&*self.0 as *const u8).cast_mut().cast()
    }
}

/// A block device opened for reading and writing, exclusively; or, while
/// its leg is detached, only held open for reading, so that others may
/// claim it (mount it).  The `block_device` stays the same either way.
pub(crate) struct BlockDev {
    /// The open file; swapped only by `release_claim` and `reclaim`, which
    /// the caller serialises.
    file: AtomicPtr<bindings::file>,
    bdev: NonNull<bindings::block_device>,
    name: [u8; NAME_LEN],
}

// SAFETY: an open block device may be used and closed from any thread.
unsafe impl Send for BlockDev {}
// SAFETY: `&BlockDev` only gives access to immutable data and to the raw
// `block_device`, which the block layer synchronises.
unsafe impl Sync for BlockDev {}

impl BlockDev {
    /// Opens the block device at `path` exclusively for `holder`.
    ///
    /// The holder must outlive the returned device.
    pub(crate) fn open(path: &CStr, holder: &Holder) -> Result<Self> {
        // SAFETY: `path` is NUL-terminated; the holder pointer is only used
        // as an identity and outlives the open (documented above).
        let file = unsafe { glue::dst_bdev_open(path.as_char_ptr(), holder.as_ptr()) };
        let file = kernel::error::from_err_ptr(file)?;
        let file = NonNull::new(file).ok_or(EINVAL)?;
        // SAFETY: `file` is an open block device file.
        let bdev = unsafe { bindings::file_bdev(file.as_ptr()) };
        let Some(bdev) = NonNull::new(bdev) else {
            // SAFETY: we own the reference to `file`.
            unsafe { bindings::fput(file.as_ptr()) };
            return Err(EINVAL);
        };
        let mut name = [0u8; NAME_LEN];
        // SAFETY: `bdev` is open; the buffer holds `NAME_LEN` bytes and the
        // C side NUL-terminates within it.
        unsafe { glue::dst_bdev_name(bdev.as_ptr(), name.as_mut_ptr().cast::<c_char>(), NAME_LEN) };
        Ok(BlockDev {
            file: AtomicPtr::new(file.as_ptr()),
            bdev,
            name,
        })
    }

    /// Opens the device again, exclusively for `holder` when given, else
    /// shared and read-only, and swaps the new file in.
    fn reopen(&self, holder: Option<&Holder>) -> Result {
        let h = holder.map_or(core::ptr::null_mut(), Holder::as_ptr);
        // SAFETY: the device number is that of an open device; the holder
        // pointer is only an identity and outlives the open.
        let file = unsafe { glue::dst_bdev_open_dev(self.devt(), h) };
        let file = kernel::error::from_err_ptr(file)?;
        let old = self.file.swap(file, Ordering::AcqRel);
        // SAFETY: we owned the reference to the old file; the new one keeps
        // the same `block_device` alive.
        unsafe { bindings::bdev_fput(old) };
        Ok(())
    }

    /// Gives up the exclusive claim, keeping the device open for reading
    /// only: others may then open it exclusively (mount it).  No I/O may
    /// be sent to it until [`BlockDev::reclaim`].
    pub(crate) fn release_claim(&self) -> Result {
        self.reopen(None)
    }

    /// Claims the device exclusively for `holder` again.  Fails with
    /// `EBUSY` while someone else holds it (it is mounted).
    pub(crate) fn reclaim(&self, holder: &Holder) -> Result {
        self.reopen(Some(holder))
    }

    /// Size in 512-byte sectors.
    pub(crate) fn sectors(&self) -> u64 {
        // SAFETY: the device is open.
        unsafe { glue::dst_bdev_nr_sectors(self.bdev.as_ptr()) }
    }

    /// Whether the device does its I/O in the submitter's context (RAM
    /// disks, zram, pmem), so that submitting to it costs CPU time.
    pub(crate) fn is_synchronous(&self) -> bool {
        // SAFETY: the device is open.
        unsafe { glue::dst_bdev_synchronous(self.bdev.as_ptr()) }
    }

    /// The device number, which identifies the device.
    pub(crate) fn devt(&self) -> u32 {
        // SAFETY: the device is open; `bd_dev` does not change while it is.
        unsafe { (*self.bdev.as_ptr()).bd_dev }
    }

    /// The kernel's name for the device (`ram0`, `sdb1`...).
    pub(crate) fn name(&self) -> &str {
        let len = self.name.iter().position(|&b| b == 0).unwrap_or(NAME_LEN);
        core::str::from_utf8(&self.name[..len]).unwrap_or("?")
    }

    /// Flushes the device's write cache (sleeps).
    pub(crate) fn flush(&self) -> Result {
        // SAFETY: the device is open; we may sleep here.
        kernel::error::to_result(unsafe { glue::dst_bdev_flush(self.bdev.as_ptr()) })
    }

    /// Discards `nr` sectors from `sector` (sleeps).
    pub(crate) fn trim(&self, sector: u64, nr: u64) -> Result {
        // SAFETY: the device is open; we may sleep here.
        kernel::error::to_result(unsafe { glue::dst_bdev_trim(self.bdev.as_ptr(), sector, nr) })
    }

    /// Writes zeroes over `nr` sectors from `sector`; `nounmap`: keep the
    /// blocks allocated (sleeps).
    pub(crate) fn zeroout(&self, sector: u64, nr: u64, nounmap: bool) -> Result {
        // SAFETY: the device is open; we may sleep here.
        kernel::error::to_result(unsafe {
            glue::dst_bdev_zeroout(self.bdev.as_ptr(), sector, nr, nounmap)
        })
    }

    /// Whether the device supports discard.
    pub(crate) fn supports_discard(&self) -> bool {
        // SAFETY: the device is open.
        unsafe { glue::dst_bdev_discard(self.bdev.as_ptr()) }
    }

    /// The raw `block_device`.
    pub(crate) fn as_raw(&self) -> *mut bindings::block_device {
        self.bdev.as_ptr()
    }
}

impl Drop for BlockDev {
    fn drop(&mut self) {
        // SAFETY: we own the file reference taken at open.  `bdev_fput`
        // gives up the exclusive claim at once (a plain `fput` may defer
        // it), so the device is free for others when this returns.
        unsafe { bindings::bdev_fput(*self.file.get_mut()) };
    }
}
