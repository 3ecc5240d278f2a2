// SPDX-License-Identifier: GPL-2.0

//! Dirty-region bitmaps: which regions of a mirror leg may differ from the
//! device.
//!
//! One bit per region (64 KiB by default, see
//! [`crate::proto::genl::resync::REGION_DEFAULT`]), set from any context when a
//! write misses the leg (the leg is down, faulty or failed the write), and
//! cleared by the resync once the region has been copied.  The cost is one
//! bit per region and leg: 2 MiB per TiB of device and leg at 64 KiB.

use core::sync::atomic::{AtomicU64, Ordering};

use kernel::prelude::*;

/// A dirty-region bitmap.
pub(crate) struct DirtyMap {
    words: KVVec<AtomicU64>,
    regions: u64,
    shift: u32,
}

impl DirtyMap {
    /// A clean map for `sectors` sectors in regions of `region_bytes`
    /// bytes (a power of two, at least a sector).
    pub(crate) fn new(sectors: u64, region_bytes: u32) -> Result<Self> {
        let shift = region_bytes.trailing_zeros().saturating_sub(9);
        let regions = sectors.div_ceil(1 << shift);
        let n = usize::try_from(regions.div_ceil(64)).map_err(|_| ENOMEM)?;
        let mut words = KVVec::with_capacity(n, GFP_KERNEL)?;
        for _ in 0..n {
            words.push(AtomicU64::new(0), GFP_KERNEL)?;
        }
        Ok(DirtyMap {
            words,
            regions,
            shift,
        })
    }

    /// Sectors per region.
    pub(crate) fn region_sectors(&self) -> u64 {
        1 << self.shift
    }

    /// Bytes per region.
    pub(crate) fn region_bytes(&self) -> u32 {
        1 << (self.shift + 9)
    }

    /// The region holding `sector`.
    pub(crate) fn region_of(&self, sector: u64) -> u64 {
        sector >> self.shift
    }

    /// Number of regions.
    pub(crate) fn regions(&self) -> u64 {
        self.regions
    }

    fn word(&self, region: u64) -> Option<(&AtomicU64, u64)> {
        let w = self.words.get(usize::try_from(region / 64).ok()?)?;
        Some((w, 1 << (region % 64)))
    }

    /// Marks every region touched by `sectors` sectors from `sector`.
    pub(crate) fn mark(&self, sector: u64, sectors: u64) {
        if sectors == 0 {
            return;
        }
        let first = self.region_of(sector);
        let last = self
            .region_of(sector.saturating_add(sectors - 1))
            .min(self.regions.saturating_sub(1));
        for r in first..=last {
            if let Some((w, bit)) = self.word(r) {
                w.fetch_or(bit, Ordering::AcqRel);
            }
        }
    }

    /// Marks every region.
    pub(crate) fn mark_all(&self) {
        for (i, w) in self.words.iter().enumerate() {
            let base = i as u64 * 64;
            let bits = self.regions.saturating_sub(base).min(64);
            let mask = if bits == 64 {
                u64::MAX
            } else {
                (1u64 << bits) - 1
            };
            w.fetch_or(mask, Ordering::AcqRel);
        }
    }

    /// Clears region `r`.
    pub(crate) fn clear(&self, r: u64) {
        if let Some((w, bit)) = self.word(r) {
            w.fetch_and(!bit, Ordering::AcqRel);
        }
    }

    /// Whether region `r` is dirty.
    pub(crate) fn is_dirty(&self, r: u64) -> bool {
        self.word(r)
            .is_some_and(|(w, bit)| w.load(Ordering::Acquire) & bit != 0)
    }

    /// The first dirty region at or after `from`.
    pub(crate) fn next_dirty(&self, from: u64) -> Option<u64> {
        let mut r = from;
        while r < self.regions {
            let (w, _) = self.word(r)?;
            let bits = w.load(Ordering::Acquire) >> (r % 64);
            if bits != 0 {
                let found = r + u64::from(bits.trailing_zeros());
                return (found < self.regions).then_some(found);
            }
            r = (r / 64 + 1) * 64;
        }
        None
    }

    /// Number of dirty regions.
    pub(crate) fn count(&self) -> u64 {
        self.words
            .iter()
            .map(|w| u64::from(w.load(Ordering::Relaxed).count_ones()))
            .sum()
    }

    /// Bytes of the dirty regions.
    pub(crate) fn dirty_bytes(&self) -> u64 {
        self.count() * (self.region_sectors() << 9)
    }
}
