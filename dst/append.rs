// SPDX-License-Identifier: GPL-2.0

//! An append-only vector of fixed capacity, read without locks.
//!
//! A mirror's legs and their dirty maps live in one: the I/O path reads
//! them on every request, and a leg added online must not make it take a
//! lock or an `Arc`.  Elements are never moved, changed (beyond their own
//! interior mutability) or dropped before the vector is, so a slice handed
//! out stays valid; an append writes a slot no reader can see yet, then
//! publishes the new length.

use core::cell::UnsafeCell;
use core::mem::MaybeUninit;
use core::ops::Deref;
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use kernel::prelude::*;

/// Up to `N` elements of `T`, appended one at a time.
pub(crate) struct AppendVec<T, const N: usize> {
    /// `N` slots, allocated once (on the heap: a device's legs do not fit
    /// on a kernel stack), never reallocated.
    slots: KVec<UnsafeCell<MaybeUninit<T>>>,
    /// Slots `..len` are initialised and visible.
    len: AtomicUsize,
    /// An append is under way.
    appending: AtomicBool,
}

// SAFETY: the vector owns its elements; sending it sends them.
unsafe impl<T: Send, const N: usize> Send for AppendVec<T, N> {}
// SAFETY: shared access hands out `&T` (hence `T: Sync`) and appends `T`s
// given by any thread (hence `T: Send`); appends exclude each other.
unsafe impl<T: Send + Sync, const N: usize> Sync for AppendVec<T, N> {}

impl<T, const N: usize> AppendVec<T, N> {
    /// An empty vector.
    pub(crate) fn new() -> Result<Self> {
        let mut slots = KVec::with_capacity(N, GFP_KERNEL)?;
        for _ in 0..N {
            slots.push(UnsafeCell::new(MaybeUninit::uninit()), GFP_KERNEL)?;
        }
        Ok(AppendVec {
            slots,
            len: AtomicUsize::new(0),
            appending: AtomicBool::new(false),
        })
    }

    /// The elements appended so far.
    pub(crate) fn as_slice(&self) -> &[T] {
        let n = self.len.load(Ordering::Acquire);
        // SAFETY: slots `..n` were initialised before `len` was published
        // with release ordering (paired with the acquire load above), are
        // never written again, and live as long as `self` (the vector of
        // slots is never resized).  `UnsafeCell<MaybeUninit<T>>` has the
        // layout of `T`.
        unsafe { core::slice::from_raw_parts(self.slots.as_ptr().cast::<T>(), n) }
    }

    /// Appends `t` and returns its index; gives it back if the vector is
    /// full or another append is under way.
    pub(crate) fn push(&self, t: T) -> Result<usize, T> {
        if self.appending.swap(true, Ordering::Acquire) {
            return Err(t);
        }
        let n = self.len.load(Ordering::Relaxed);
        let Some(slot) = self.slots.get(n) else {
            self.appending.store(false, Ordering::Release);
            return Err(t);
        };
        // SAFETY: slot `n` is past `len`, so no reader sees it, and the
        // `appending` flag makes this the only writer.
        unsafe { (*slot.get()).write(t) };
        self.len.store(n + 1, Ordering::Release);
        self.appending.store(false, Ordering::Release);
        Ok(n)
    }
}

impl<T, const N: usize> Deref for AppendVec<T, N> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        self.as_slice()
    }
}

impl<T, const N: usize> Drop for AppendVec<T, N> {
    fn drop(&mut self) {
        let n = *self.len.get_mut();
        for slot in self.slots.iter_mut().take(n) {
            // SAFETY: slots `..len` are initialised, and dropped once, here.
            unsafe { slot.get_mut().assume_init_drop() };
        }
    }
}
