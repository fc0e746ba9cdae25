//! Reads the in-kernel summary (--summary): counts and histograms.
use anyhow::Context as _;
use cow_trace_common::{Hist, HistKey, StatKey, StatValue};

use crate::kernel::probes::Probes;

/// What the kernel counted since attaching.
pub struct KernelCounts {
    /// STATS: faults per pid x class x window x stack x region, with the region's first
    /// faulting address.
    pub stats: Vec<(StatKey, StatValue)>,
    /// HISTS: log2 latency histograms per pid x class.
    pub hists: Vec<(HistKey, Hist)>,
}

/// Reads the kernel's counts and histograms (totals since attaching).
pub fn read(probes: &Probes) -> anyhow::Result<KernelCounts> {
    let stats = probes.stats()?;
    let mut counts = KernelCounts {
        stats: Vec::new(),
        hists: Vec::new(),
    };
    for entry in stats.iter() {
        let (key, value) = entry.context("reading STATS")?;
        // An entry inserted at its first fault, read before that fault's add lands.
        if value.faults == 0 {
            continue;
        }
        counts.stats.push((key, value));
    }
    let hists = probes.hists()?;
    for entry in hists.iter() {
        counts.hists.push(entry.context("reading HISTS")?);
    }
    Ok(counts)
}
