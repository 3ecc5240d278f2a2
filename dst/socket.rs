// SPDX-License-Identifier: GPL-2.0

//! Kernel TCP sockets, for remote legs.
//!
//! A [`Socket`] is connected with bounded blocking (connect and handshake
//! honour the socket timeouts); after that the data path uses only
//! non-blocking calls, and readiness comes from socket callbacks, which
//! [`Socket::watch`] turns into calls of [`SockEvents::sock_event`].

use core::ffi::c_void;
use core::net::SocketAddr;
use core::ptr::NonNull;
use core::sync::atomic::{fence, AtomicBool, Ordering};

use kernel::bindings;
use kernel::ffi::c_int;
use kernel::prelude::*;
use kernel::sync::{Arc, ArcBorrow};

use crate::bio::{LegBio, PageBuf};
use crate::errno;
use crate::glue;
use crate::glue::now_ms;
use crate::proto::nbd::Transport;

/// What a socket callback reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SockEvent {
    /// Data (or end of stream) to read.
    Readable,
    /// Room to send again.
    Writable,
    /// The connection is closing or closed.
    Closed,
}

/// What a watcher of a socket does with its events.  Called in softirq
/// context: queue work, nothing more.
pub(crate) trait SockEvents: Send + Sync + Sized {
    /// Reacts to `event` on the socket watched with tag `tag` (a watcher
    /// of several sockets tells them apart by it).
    fn sock_event(this: ArcBorrow<'_, Self>, tag: usize, event: SockEvent);
}

/// The reference a watched socket's callbacks hold on their watcher.
struct Watch {
    data: *const c_void,
    release: unsafe fn(*const c_void),
}

/// A connected TCP socket.
pub(crate) struct Socket {
    raw: NonNull<bindings::socket>,
    watch: Option<Watch>,
    /// The last send said more would follow: the socket may hold back
    /// its tail until [`Socket::push_held`].
    held: AtomicBool,
}

// SAFETY: a kernel socket may be used from any thread; the watcher
// reference is an `Arc` of a `Send + Sync` type.
unsafe impl Send for Socket {}
// SAFETY: the socket layer locks; `&Socket` only sends and receives.
unsafe impl Sync for Socket {}

fn to_len(ret: c_int) -> Result<usize> {
    if ret < 0 {
        Err(Error::from_errno(ret))
    } else {
        Ok(ret as usize)
    }
}

/// An address as the C glue takes it: family 4 or 6, 16 bytes, scope.
fn raw_addr(addr: &SocketAddr) -> (c_int, [u8; 16], u32) {
    match addr {
        SocketAddr::V4(a) => {
            let mut b = [0u8; 16];
            b[..4].copy_from_slice(&a.ip().octets());
            (4, b, 0)
        }
        SocketAddr::V6(a) => (6, a.ip().octets(), a.scope_id()),
    }
}

impl Socket {
    fn new(raw: NonNull<bindings::socket>) -> Socket {
        Socket {
            raw,
            watch: None,
            held: AtomicBool::new(false),
        }
    }

    /// The result `ret` of a send with `more`: what the socket now holds
    /// back follows the last send that moved bytes.
    fn sent(&self, ret: c_int, more: bool) -> Result<usize> {
        let n = to_len(ret)?;
        if n > 0 {
            self.held.store(more, Ordering::Relaxed);
        }
        Ok(n)
    }

    /// A socket for a connection to `addr`, made by [`Socket::connect`].
    /// Blocking calls on the socket (the connect, and
    /// [`Socket::blocking`]) give up after `timeout_ms`; the connection
    /// itself is dropped when sent data stays unacknowledged that long.
    pub(crate) fn client(addr: &SocketAddr, timeout_ms: u32) -> Result<Self> {
        let (family, bytes, scope) = raw_addr(addr);
        let mut raw = core::ptr::null_mut();
        // SAFETY: `bytes` holds the address; `raw` receives the socket.
        let ret = unsafe {
            glue::dst_sock_client(
                family,
                bytes.as_ptr(),
                addr.port(),
                scope,
                timeout_ms,
                &mut raw,
            )
        };
        kernel::error::to_result(ret)?;
        let raw = NonNull::new(raw).ok_or(EINVAL)?;
        Ok(Socket::new(raw))
    }

    /// Connects a [`Socket::client`] socket to `addr`, waiting at most its
    /// timeout; a [`Socket::shutdown`] from another thread ends the wait,
    /// or prevents it.
    pub(crate) fn connect(&self, addr: &SocketAddr) -> Result {
        let (family, bytes, scope) = raw_addr(addr);
        // SAFETY: the socket is valid while `self` is; `bytes` holds the
        // address.
        let ret = unsafe {
            glue::dst_sock_connect(
                self.raw.as_ptr(),
                family,
                bytes.as_ptr(),
                addr.port(),
                scope,
            )
        };
        kernel::error::to_result(ret)
    }

    /// A socket listening on `addr` (with `SO_REUSEADDR`).
    pub(crate) fn listen(addr: &SocketAddr) -> Result<Self> {
        let (family, bytes, scope) = raw_addr(addr);
        let mut raw = core::ptr::null_mut();
        // SAFETY: `bytes` holds the address; `raw` receives the socket.
        let ret =
            unsafe { glue::dst_sock_listen(family, bytes.as_ptr(), addr.port(), scope, &mut raw) };
        kernel::error::to_result(ret)?;
        let raw = NonNull::new(raw).ok_or(EINVAL)?;
        Ok(Socket::new(raw))
    }

    /// Accepts a pending connection without waiting: `Ok(None)` if there
    /// is none.  Blocking calls on it give up after `timeout_ms`.
    pub(crate) fn accept(&self, timeout_ms: u32) -> Result<Option<Self>> {
        let mut raw = core::ptr::null_mut();
        // SAFETY: `self` is a listening socket; `raw` receives the new one.
        let ret = unsafe { glue::dst_sock_accept(self.raw.as_ptr(), timeout_ms, &mut raw) };
        if ret == -(bindings::EAGAIN as i32) {
            return Ok(None);
        }
        kernel::error::to_result(ret)?;
        let raw = NonNull::new(raw).ok_or(EINVAL)?;
        Ok(Some(Socket::new(raw)))
    }

    /// The address of the peer.
    pub(crate) fn peer(&self) -> Result<SocketAddr> {
        let (mut family, mut addr, mut port, mut scope) = (0, [0u8; 16], 0u16, 0u32);
        // SAFETY: the socket is connected; the outputs are valid.
        let ret = unsafe {
            glue::dst_sock_peer(
                self.raw.as_ptr(),
                &mut family,
                addr.as_mut_ptr(),
                &mut port,
                &mut scope,
            )
        };
        kernel::error::to_result(ret)?;
        Ok(if family == 4 {
            let ip = core::net::Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3]);
            SocketAddr::V4(core::net::SocketAddrV4::new(ip, port))
        } else {
            let ip = core::net::Ipv6Addr::from(addr);
            SocketAddr::V6(core::net::SocketAddrV6::new(ip, port, 0, scope))
        })
    }

    /// Sends bytes `[skip, len)` of `buf` without waiting.
    pub(crate) fn send_pages(
        &self,
        buf: &PageBuf,
        skip: u32,
        len: u32,
        more: bool,
    ) -> Result<usize> {
        if len > buf.len() || skip > len {
            return Err(EINVAL);
        }
        // SAFETY: the socket is connected; `buf` has at least `len` bytes
        // of pages and lives while borrowed.
        let ret =
            unsafe { glue::dst_sock_send_pages(self.raw.as_ptr(), buf.as_raw(), skip, len, more) };
        self.sent(ret, more)
    }

    /// Receives into bytes `[skip, len)` of `buf` without waiting; `Ok(0)`
    /// at end of stream.
    pub(crate) fn recv_pages(&self, buf: &PageBuf, skip: u32, len: u32) -> Result<usize> {
        if len > buf.len() || skip > len {
            return Err(EINVAL);
        }
        // SAFETY: as in `send_pages`; the pages are not used by anything
        // else while a request's data comes in.
        to_len(unsafe { glue::dst_sock_recv_pages(self.raw.as_ptr(), buf.as_raw(), skip, len) })
    }

    /// Sends from `buf` without waiting; `Err(EAGAIN)` if nothing fits.
    /// `more`: more data follows at once (the socket may hold back a
    /// partial segment until the next send, or [`Socket::push_held`]).
    pub(crate) fn send(&self, buf: &[u8], more: bool) -> Result<usize> {
        // SAFETY: the socket is connected; `buf` is valid for its length.
        let ret = unsafe {
            glue::dst_sock_send(
                self.raw.as_ptr(),
                buf.as_ptr().cast(),
                buf.len(),
                true,
                more,
            )
        };
        self.sent(ret, more)
    }

    /// Sends at once what the last sends held back because they said more
    /// would follow.  A sender calls it when it stops: nothing is then
    /// left waiting for data that does not come.
    pub(crate) fn push_held(&self) {
        if self.held.swap(false, Ordering::Relaxed) {
            // SAFETY: the socket is connected.
            unsafe { glue::dst_sock_push(self.raw.as_ptr()) }
        }
    }

    /// Whether a receive would find data, the end of the stream or an
    /// error.  Orders the caller's earlier stores before its loads, so a
    /// receiver that cleared a "will look again" flag and finds nothing
    /// here can rely on the data-ready callback seeing the flag cleared.
    pub(crate) fn readable(&self) -> bool {
        fence(Ordering::SeqCst);
        // SAFETY: the socket is connected; the check takes no lock.
        unsafe { glue::dst_sock_readable(self.raw.as_ptr()) }
    }

    /// Receives into `buf` without waiting; `Ok(0)` at end of stream,
    /// `Err(EAGAIN)` if nothing is there.
    pub(crate) fn recv(&self, buf: &mut [u8]) -> Result<usize> {
        // SAFETY: the socket is connected; `buf` is valid for its length.
        to_len(unsafe {
            glue::dst_sock_recv(self.raw.as_ptr(), buf.as_mut_ptr().cast(), buf.len(), true)
        })
    }

    /// Sends the data of `bio` from byte `skip`, without waiting.
    pub(crate) fn send_bio(&self, bio: &LegBio, skip: u32, more: bool) -> Result<usize> {
        // SAFETY: the socket is connected; `bio` is live while borrowed.
        let ret = unsafe { glue::dst_sock_send_bio(self.raw.as_ptr(), bio.as_raw(), skip, more) };
        self.sent(ret, more)
    }

    /// Receives into the pages of `bio` from byte `skip`, without waiting;
    /// `Ok(0)` at end of stream.
    pub(crate) fn recv_bio(&self, bio: &LegBio, skip: u32) -> Result<usize> {
        // SAFETY: the socket is connected; `bio` is live while borrowed.
        to_len(unsafe { glue::dst_sock_recv_bio(self.raw.as_ptr(), bio.as_raw(), skip) })
    }

    /// Shuts the connection down both ways: a call blocked on it, in
    /// another thread, returns at once (end of stream, or `EPIPE`).  The
    /// socket stays valid until dropped.
    pub(crate) fn shutdown(&self) {
        // SAFETY: the socket is valid while `self` is; the socket layer
        // allows a shutdown alongside calls in other threads.
        unsafe {
            bindings::kernel_sock_shutdown(self.raw.as_ptr(), bindings::sock_shutdown_cmd_SHUT_RDWR)
        };
    }

    /// Blocking I/O for a handshake, which gives up with `ETIMEDOUT` once
    /// `until` ([`now_ms`] time) has passed.  The deadline is checked
    /// before every call, and each call waits at most the socket's own
    /// timeout: a peer that trickles a byte at a time cannot stretch the
    /// handshake beyond `until` plus one such timeout.
    pub(crate) fn blocking_until(&self, until: u64) -> BlockingIo<'_> {
        BlockingIo { sock: self, until }
    }

    /// Reports the socket's events to `owner`, with tag `TAG`, until the
    /// socket is dropped.  The callbacks hold a reference to `owner`
    /// meanwhile.
    pub(crate) fn watch<T: SockEvents, const TAG: usize>(&mut self, owner: Arc<T>) -> Result {
        if self.watch.is_some() {
            return Err(EBUSY);
        }
        /// # Safety
        ///
        /// `data` must come from `Arc::<T>::into_raw`, once.
        unsafe fn release<T>(data: *const c_void) {
            // SAFETY: per the function's contract.
            drop(unsafe { Arc::<T>::from_raw(data.cast()) });
        }
        let data = Arc::into_raw(owner).cast::<c_void>();
        // SAFETY: the socket is valid; `data` stays valid until the
        // callbacks are cleared in `Drop`, which then releases it.
        let ret = unsafe {
            glue::dst_sock_set_callbacks(self.raw.as_ptr(), sock_event::<T, TAG>, data.cast_mut())
        };
        if ret != 0 {
            // SAFETY: `data` came from `Arc::into_raw` above and is unused.
            unsafe { release::<T>(data) };
            return Err(Error::from_errno(ret));
        }
        self.watch = Some(Watch {
            data,
            release: release::<T>,
        });
        Ok(())
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        if let Some(w) = self.watch.take() {
            // SAFETY: the socket is valid; after clearing, no callback runs
            // with `w.data`, so its reference can go.
            unsafe {
                glue::dst_sock_clear_callbacks(self.raw.as_ptr());
                (w.release)(w.data);
            }
        }
        // SAFETY: we own the socket.
        unsafe { glue::dst_sock_release(self.raw.as_ptr()) };
    }
}

/// # Safety
///
/// Called by the C callbacks only, with the `data` given in `watch`, while
/// the callbacks are installed.
unsafe extern "C" fn sock_event<T: SockEvents, const TAG: usize>(data: *mut c_void, what: c_int) {
    // SAFETY: `data` is the watcher reference held while callbacks run.
    let owner = unsafe { ArcBorrow::<T>::from_raw(data.cast_const().cast()) };
    let event = match what {
        glue::DST_SOCK_READABLE => SockEvent::Readable,
        glue::DST_SOCK_WRITABLE => SockEvent::Writable,
        // `DST_SOCK_CLOSED`, and anything unexpected.
        _ => SockEvent::Closed,
    };
    T::sock_event(owner, TAG, event);
}

/// Passes over its socket a receive job makes before it queues itself
/// again, so that a peer that never stops sending shares the worker.
const RECV_PASSES: u32 = 8;

/// What a receive job does after a pass that drained its socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RecvNext {
    /// Stop: nothing is there, or a new kick has queued the job.
    Stop,
    /// Data came meanwhile: make another pass now.
    Again,
    /// Data came meanwhile, but the job has had its passes: queue it
    /// again (the kick stays taken).
    Requeue,
}

/// Wakeups of a connection's receive job, as NAPI does them: data that
/// arrives while the job is queued or at work queues nothing, and the job
/// looks at the socket once more after it stops taking kicks.  The common
/// case is one atomic operation per data-ready callback.
pub(crate) struct RecvKick {
    /// The job is queued, or at work and will look at the socket again.
    taken: AtomicBool,
}

impl RecvKick {
    /// No job queued.
    pub(crate) const fn new() -> Self {
        RecvKick {
            taken: AtomicBool::new(false),
        }
    }

    /// Data arrived (or the socket closed): returns whether the caller
    /// must queue the receive job.
    pub(crate) fn kick(&self) -> bool {
        // SeqCst: pairs with `after_pass` (store, then `readable`).
        !self.taken.swap(true, Ordering::SeqCst)
    }

    /// The job stops for good (the connection is gone or down): the next
    /// kick queues it.
    pub(crate) fn release(&self) {
        self.taken.store(false, Ordering::SeqCst);
    }

    /// Called by the job after its `pass`-th pass (from 1): stops taking
    /// kicks, then asks `readable` (which must end in
    /// [`Socket::readable`], or answer `false` when the job must not go
    /// on, e.g. throttled) whether data came meanwhile.
    pub(crate) fn after_pass(&self, pass: u32, readable: impl FnOnce() -> bool) -> RecvNext {
        self.release();
        if !readable() || self.taken.swap(true, Ordering::SeqCst) {
            RecvNext::Stop
        } else if pass >= RECV_PASSES {
            RecvNext::Requeue
        } else {
            RecvNext::Again
        }
    }
}

/// A socket used with blocking calls, bounded by its timeouts and by an
/// overall deadline (see [`Socket::blocking_until`]).
pub(crate) struct BlockingIo<'a> {
    sock: &'a Socket,
    until: u64,
}

impl BlockingIo<'_> {
    fn check_deadline(&self) -> Result {
        if now_ms() > self.until {
            return Err(errno::etimedout());
        }
        Ok(())
    }
}

fn blocking_err(ret: c_int) -> Error {
    let e = Error::from_errno(ret);
    if e == EAGAIN {
        errno::etimedout()
    } else {
        e
    }
}

impl Transport for BlockingIo<'_> {
    type Error = Error;

    fn send_all(&mut self, mut buf: &[u8]) -> Result<(), Error> {
        while !buf.is_empty() {
            self.check_deadline()?;
            // SAFETY: the socket is connected; `buf` is valid.
            let ret = unsafe {
                glue::dst_sock_send(
                    self.sock.raw.as_ptr(),
                    buf.as_ptr().cast(),
                    buf.len(),
                    false,
                    false,
                )
            };
            if ret < 0 {
                return Err(blocking_err(ret));
            }
            if ret == 0 {
                return Err(errno::econnreset());
            }
            buf = buf.get(ret as usize..).unwrap_or(&[]);
        }
        Ok(())
    }

    fn recv_exact(&mut self, mut buf: &mut [u8]) -> Result<(), Error> {
        while !buf.is_empty() {
            self.check_deadline()?;
            // SAFETY: the socket is connected; `buf` is valid.
            let ret = unsafe {
                glue::dst_sock_recv(
                    self.sock.raw.as_ptr(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    false,
                )
            };
            if ret < 0 {
                return Err(blocking_err(ret));
            }
            if ret == 0 {
                return Err(errno::econnreset());
            }
            buf = &mut core::mem::take(&mut buf)[ret as usize..];
        }
        Ok(())
    }
}
