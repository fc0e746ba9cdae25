//! What the plot accumulates: counts per interval and class, and where COW faults landed.
use std::collections::BTreeMap;

use super::{
    ADDRESS_CELLS,
    class::{CLASSES, PlotClass},
};

/// Faults per interval and class, of one pid (or of the pids counted together).
#[derive(Clone, Debug, Default)]
pub(super) struct Series {
    pub(super) comm: Option<String>,
    pub(super) buckets: Vec<[u32; CLASSES]>,
    pub(super) totals: [u64; CLASSES],
}

impl Series {
    pub(super) fn count(&mut self, bucket: usize, class: PlotClass) {
        if self.buckets.len() <= bucket {
            self.buckets.resize(bucket + 1, [0; CLASSES]);
        }
        let slot = &mut self.buckets[bucket][class.index()];
        *slot = slot.saturating_add(1);
        self.totals[class.index()] += 1;
    }

    /// Twice as long intervals: each pair becomes one.
    pub(super) fn halve(&mut self) {
        self.buckets = self
            .buckets
            .chunks(2)
            .map(|pair| {
                let mut merged = pair[0];
                if let Some(second) = pair.get(1) {
                    for (sum, count) in merged.iter_mut().zip(second) {
                        *sum = sum.saturating_add(*count);
                    }
                }
                merged
            })
            .collect();
    }

    pub(super) fn add(&mut self, other: &Series) {
        if self.buckets.len() < other.buckets.len() {
            self.buckets.resize(other.buckets.len(), [0; CLASSES]);
        }
        for (mine, theirs) in self.buckets.iter_mut().zip(&other.buckets) {
            for (sum, count) in mine.iter_mut().zip(theirs) {
                *sum = sum.saturating_add(*count);
            }
        }
        for (sum, count) in self.totals.iter_mut().zip(other.totals) {
            *sum += count;
        }
    }

    pub(super) fn total(&self) -> u64 {
        self.totals.iter().sum()
    }

    pub(super) fn at(&self, bucket: usize, class: PlotClass) -> u32 {
        self.buckets.get(bucket).map_or(0, |b| b[class.index()])
    }
}

/// Where COW faults landed: counts per (address range, pid), ranges of `1 << shift` bytes.
#[derive(Clone, Debug)]
pub(super) struct AddressStrip {
    pub(super) shift: u32,
    pub(super) cells: BTreeMap<(u64, u32), u32>,
}

impl AddressStrip {
    pub(super) fn new() -> AddressStrip {
        AddressStrip {
            // One page per range to start with.
            shift: 12,
            cells: BTreeMap::new(),
        }
    }

    pub(super) fn add(&mut self, address: u64, key: u32) {
        let cell = self.cells.entry((address >> self.shift, key)).or_default();
        *cell = cell.saturating_add(1);
        // At shift 63 there are at most two ranges per key, so this ends.
        while self.cells.len() > ADDRESS_CELLS && self.shift < 63 {
            self.shift += 1;
            let old = std::mem::take(&mut self.cells);
            for ((range, key), count) in old {
                let cell = self.cells.entry((range >> 1, key)).or_default();
                *cell = cell.saturating_add(count);
            }
        }
    }
}
