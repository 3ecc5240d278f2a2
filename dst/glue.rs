// SPDX-License-Identifier: GPL-2.0

//! Declarations of the C glue (`glue.h`, `genl_glue.c`, `blk_glue.c`).
//!
//! Only the abstraction modules (`bio`, `bdev`, `disk`, `genl`, `io`, `wq`)
//! call these.  Keep every signature identical to `glue.h`.

use core::ffi::c_void;
use kernel::bindings;
use kernel::ffi::{c_char, c_int, c_long, c_uint};

/// `struct dst_nl_attr`.
#[repr(C)]
pub(crate) struct NlAttr {
    pub(crate) id: u16,
    pub(crate) kind: u8,
    pub(crate) nested_set: u8,
    pub(crate) min: u16,
    pub(crate) max: u16,
}

/// `struct dst_nl_set`.
#[repr(C)]
pub(crate) struct NlSet {
    pub(crate) attrs: *const NlAttr,
    pub(crate) n: u32,
}

/// `struct dst_nl_cmd`.
#[repr(C)]
pub(crate) struct NlCmd {
    pub(crate) cmd: u8,
    pub(crate) doit: u8,
    pub(crate) dumpit: u8,
    pub(crate) set: u8,
}

/// `struct dst_nl_spec`.
#[repr(C)]
pub(crate) struct NlSpec {
    pub(crate) name: *const c_char,
    pub(crate) mcgrp: *const c_char,
    pub(crate) version: u32,
    pub(crate) nsets: u32,
    pub(crate) sets: *const NlSet,
    pub(crate) ncmds: u32,
    pub(crate) cmds: *const NlCmd,
    pub(crate) doit:
        Option<unsafe extern "C" fn(*mut c_void, u8, *const c_void, u32, *mut GenlInfo) -> c_int>,
    pub(crate) dumpit:
        Option<unsafe extern "C" fn(*mut c_void, u8, *mut Cursor, *mut NlDump) -> c_int>,
}

/// `enum dst_nl_kind`.
pub(crate) const DST_NL_U8: u8 = 1;
pub(crate) const DST_NL_U32: u8 = 2;
pub(crate) const DST_NL_U64: u8 = 3;
pub(crate) const DST_NL_STR: u8 = 4;
pub(crate) const DST_NL_NESTED: u8 = 5;

/// `struct genl_info`, opaque (not in the 6.12 bindings).
#[repr(C)]
pub(crate) struct GenlInfo {
    _private: [u8; 0],
}

/// `struct dst_nl_dump`, opaque.
#[repr(C)]
pub(crate) struct NlDump {
    _private: [u8; 0],
}

// The kernel's own bindings allow this too: `bindgen` emits some structs
// reachable from these pointers without fields.
#[allow(improper_ctypes)]
extern "C" {
    pub(crate) fn dst_genl_register(spec: *const NlSpec, priv_: *mut c_void) -> c_int;
    pub(crate) fn dst_genl_unregister();
    pub(crate) fn dst_genl_reply(
        info: *mut GenlInfo,
        cmd: u8,
        buf: *const c_void,
        len: u32,
    ) -> c_int;
    pub(crate) fn dst_genl_set_err(info: *mut GenlInfo, msg: *const c_char);
    pub(crate) fn dst_genl_dump_put(
        dump: *mut NlDump,
        cmd: u8,
        buf: *const c_void,
        len: u32,
    ) -> c_int;
    pub(crate) fn dst_genl_multicast(cmd: u8, buf: *const c_void, len: u32) -> c_int;

    pub(crate) fn dst_limits_init(lim: *mut bindings::queue_limits);
    pub(crate) fn dst_bdev_discard(bdev: *mut bindings::block_device) -> bool;
    pub(crate) fn dst_limits_stack_remote(
        lim: *mut bindings::queue_limits,
        min_block: u32,
        pref_block: u32,
        cache: bool,
        write_zeroes: bool,
        rotational: bool,
    );
    pub(crate) fn dst_disk_cap_sectors(disk: *mut bindings::gendisk, max_sectors: u32) -> c_int;
    pub(crate) fn dst_alloc_disk(
        lim: *mut bindings::queue_limits,
        max_sectors: u32,
        discard: bool,
        fua: bool,
    ) -> *mut bindings::gendisk;
    pub(crate) fn dst_add_disk(disk: *mut bindings::gendisk) -> c_int;
    pub(crate) fn dst_bioset_init(
        bs: *mut bindings::bio_set,
        front_pad: u32,
        rescuer: bool,
    ) -> c_int;
    pub(crate) fn dst_bio_clone(
        bdev: *mut bindings::block_device,
        src: *mut bindings::bio,
        bs: *mut bindings::bio_set,
        strip_preflush: bool,
    ) -> *mut bindings::bio;
    pub(crate) static dst_blk_feat_io_stat: u32;
    pub(crate) fn dst_bio_alloc_flush(
        bdev: *mut bindings::block_device,
        bs: *mut bindings::bio_set,
    ) -> *mut bindings::bio;
    pub(crate) fn dst_bio_split(
        bio: *mut bindings::bio,
        sectors: u32,
        bs: *mut bindings::bio_set,
    ) -> *mut bindings::bio;
    pub(crate) fn dst_bdev_open(path: *const c_char, holder: *mut c_void) -> *mut bindings::file;
    pub(crate) fn dst_bdev_open_dev(devt: u32, holder: *mut c_void) -> *mut bindings::file;
    pub(crate) fn dst_bdev_nr_sectors(bdev: *mut bindings::block_device) -> u64;
    pub(crate) fn dst_bdev_synchronous(bdev: *mut bindings::block_device) -> bool;
    pub(crate) fn dst_bdev_name(bdev: *mut bindings::block_device, buf: *mut c_char, len: usize);
    pub(crate) fn dst_wait_var(var: *mut c_void, done: unsafe extern "C" fn(*mut c_void) -> bool);
    pub(crate) fn dst_wait_var_timeout(
        var: *mut c_void,
        done: unsafe extern "C" fn(*mut c_void) -> bool,
        ms: c_uint,
    ) -> c_long;
    pub(crate) fn dst_alloc_workqueue(name: *const c_char) -> *mut bindings::workqueue_struct;
    pub(crate) fn dst_pages_alloc(n: c_uint) -> *mut *mut bindings::page;
    pub(crate) fn dst_pages_free(pages: *mut *mut bindings::page, n: c_uint);
    pub(crate) fn dst_bio_pages(
        bdev: *mut bindings::block_device,
        pages: *mut *mut bindings::page,
        bytes: u32,
        write: bool,
        fua: bool,
        sector: u64,
        end_io: unsafe extern "C" fn(*mut bindings::bio),
        private: *mut c_void,
    ) -> *mut bindings::bio;
    pub(crate) fn dst_bio_private(bio: *mut bindings::bio) -> *mut c_void;
    pub(crate) fn dst_bio_kfree(bio: *mut bindings::bio);

    pub(crate) fn dst_sock_client(
        family: c_int,
        addr: *const u8,
        port: u16,
        scope_id: u32,
        timeout_ms: c_uint,
        out: *mut *mut bindings::socket,
    ) -> c_int;
    pub(crate) fn dst_sock_connect(
        sock: *mut bindings::socket,
        family: c_int,
        addr: *const u8,
        port: u16,
        scope_id: u32,
    ) -> c_int;
    pub(crate) fn dst_sock_release(sock: *mut bindings::socket);
    pub(crate) fn dst_sock_send(
        sock: *mut bindings::socket,
        buf: *const c_void,
        len: usize,
        nonblock: bool,
        more: bool,
    ) -> c_int;
    pub(crate) fn dst_sock_recv(
        sock: *mut bindings::socket,
        buf: *mut c_void,
        len: usize,
        nonblock: bool,
    ) -> c_int;
    pub(crate) fn dst_sock_send_bio(
        sock: *mut bindings::socket,
        bio: *mut bindings::bio,
        skip: u32,
        more: bool,
    ) -> c_int;
    pub(crate) fn dst_sock_recv_bio(
        sock: *mut bindings::socket,
        bio: *mut bindings::bio,
        skip: u32,
    ) -> c_int;
    pub(crate) fn dst_sock_set_callbacks(
        sock: *mut bindings::socket,
        f: unsafe extern "C" fn(*mut c_void, c_int),
        data: *mut c_void,
    ) -> c_int;
    pub(crate) fn dst_sock_clear_callbacks(sock: *mut bindings::socket);

    pub(crate) fn dst_dwork_init(
        dw: *mut bindings::delayed_work,
        f: unsafe extern "C" fn(*mut bindings::work_struct),
    );
    pub(crate) fn dst_dwork_queue(
        dw: *mut bindings::delayed_work,
        wq: *mut bindings::workqueue_struct,
        delay_ms: c_uint,
    ) -> bool;
    pub(crate) fn dst_dwork_cancel(dw: *mut bindings::delayed_work) -> bool;
    pub(crate) fn dst_dwork_disable_sync(dw: *mut bindings::delayed_work) -> bool;
    pub(crate) fn dst_now_ms() -> u64;
    pub(crate) static dst_race_delay_us: c_uint;
    pub(crate) fn dst_race_delay(us: c_uint);
    pub(crate) fn dst_sock_send_pages(
        sock: *mut bindings::socket,
        pages: *mut *mut bindings::page,
        skip: u32,
        len: u32,
        more: bool,
    ) -> c_int;
    pub(crate) fn dst_sock_recv_pages(
        sock: *mut bindings::socket,
        pages: *mut *mut bindings::page,
        skip: u32,
        len: u32,
    ) -> c_int;
    pub(crate) fn dst_sock_push(sock: *mut bindings::socket);
    pub(crate) fn dst_sock_readable(sock: *mut bindings::socket) -> bool;
    pub(crate) fn dst_sock_listen(
        family: c_int,
        addr: *const u8,
        port: u16,
        scope_id: u32,
        out: *mut *mut bindings::socket,
    ) -> c_int;
    pub(crate) fn dst_sock_accept(
        lsock: *mut bindings::socket,
        timeout_ms: u32,
        out: *mut *mut bindings::socket,
    ) -> c_int;
    pub(crate) fn dst_sock_peer(
        sock: *mut bindings::socket,
        family: *mut c_int,
        addr: *mut u8,
        port: *mut u16,
        scope_id: *mut u32,
    ) -> c_int;
    pub(crate) fn dst_bdev_flush(bdev: *mut bindings::block_device) -> c_int;
    pub(crate) fn dst_bdev_trim(bdev: *mut bindings::block_device, sector: u64, nr: u64) -> c_int;
    pub(crate) fn dst_bdev_zeroout(
        bdev: *mut bindings::block_device,
        sector: u64,
        nr: u64,
        nounmap: bool,
    ) -> c_int;
}

/// `enum dst_sock_event`.
pub(crate) const DST_SOCK_READABLE: c_int = 1;
pub(crate) const DST_SOCK_WRITABLE: c_int = 2;
#[allow(dead_code)]
pub(crate) const DST_SOCK_CLOSED: c_int = 3;

/// The dump cursor type passed by `dst_nl_dumpit`.
pub(crate) type Cursor = c_long;

/// Milliseconds on the monotonic clock.
pub(crate) fn now_ms() -> u64 {
    // SAFETY: reads the monotonic clock; callable in any context.
    unsafe { dst_now_ms() }
}

/// Widens a race window by the `race_delay_us` module parameter, for
/// tests; when it is 0 (the default) this is one load and a branch, on
/// the write path.
#[inline]
pub(crate) fn race_delay() {
    // SAFETY: the parameter is a plain `unsigned int` that lives as long as
    // the module; sysfs may write it at any time, hence the volatile read
    // (as the C side's `READ_ONCE`).
    let us = unsafe { core::ptr::read_volatile(core::ptr::addr_of!(dst_race_delay_us)) };
    if us != 0 {
        // SAFETY: busy-waits; callable in any context.
        unsafe { dst_race_delay(us) }
    }
}
