//! Reads the in-kernel summary (--summary): counts and histograms, from the shared maps and
//! from the per-CPU caches in front of them (each holding the last key counted on its CPU and
//! counts not yet in the map).
use std::collections::HashMap;

use anyhow::Context as _;
use cow_trace_common::{HIST_BUCKETS, Hist, HistKey, StatKey, StatValue};

use crate::kernel::probes::Probes;

/// What the kernel counted since attaching.
pub struct KernelCounts {
    /// STATS: faults per pid x class x window x stack x region, with the region's first
    /// faulting address.
    pub stats: Vec<(StatKey, StatValue)>,
    /// HISTS: log2 latency histograms per pid x class.
    pub hists: Vec<(HistKey, Hist)>,
}

/// Reads the kernel's counts and histograms (totals since attaching). While the programs run,
/// a cache may change between reads: a fault may then count under the wrong key until the next
/// read (the totals at the end, read once the programs are detached, are exact).
pub fn read(probes: &Probes) -> anyhow::Result<KernelCounts> {
    let mut stats: HashMap<StatKey, StatValue> = HashMap::new();
    for entry in probes.stats()?.iter() {
        let (key, value) = entry.context("reading STATS")?;
        stats.insert(key, value);
    }
    let caches = probes
        .stat_caches()?
        .get(&0, 0)
        .context("reading STAT_CACHE")?;
    for cache in caches.iter().filter(|cache| cache.counts.faults != 0) {
        let total = stats.entry(cache.key).or_insert(StatValue {
            sample_address: cache.counts.sample_address,
            ..StatValue::default()
        });
        total.faults += cache.counts.faults;
        total.timed += cache.counts.timed;
        total.latency_ns += cache.counts.latency_ns;
    }
    let mut hists: HashMap<HistKey, Hist> = HashMap::new();
    for entry in probes.hists()?.iter() {
        let (key, hist) = entry.context("reading HISTS")?;
        hists.insert(key, hist);
    }
    let caches = probes
        .hist_caches()?
        .get(&0, 0)
        .context("reading HIST_CACHE")?;
    for cache in caches.iter().filter(|cache| cache.faults != 0) {
        let total = hists.entry(cache.key).or_insert(Hist {
            buckets: [0; HIST_BUCKETS],
        });
        for (sum, n) in total.buckets.iter_mut().zip(cache.hist.buckets) {
            *sum += n;
        }
    }
    Ok(KernelCounts {
        // An entry inserted at its first fault, read before that fault's add lands.
        stats: stats
            .into_iter()
            .filter(|(_, value)| value.faults != 0)
            .collect(),
        hists: hists.into_iter().collect(),
    })
}
