//! Reads the in-kernel summary (--summary): counts and histograms.
use anyhow::Context as _;
use aya::maps::{HashMap, MapData};
use cow_trace_common::{Hist, HistKey, StatKey, StatValue};

use crate::{kernel::probes::Probes, output::summary::Summary};

/// One aggregated row: `faults` faults of one class in one region (`address >> REGION_SHIFT`),
/// the first of them at `address`.
pub struct RegionCount {
    pub pid: u32,
    pub class: u32,
    pub address: u64,
    pub faults: u64,
}

/// Adds the kernel's counts and histograms to `summary` (which should be fresh: the kernel's
/// figures are totals since attaching), and returns the per-region rows for attribution.
pub fn read(probes: &Probes, summary: &mut Summary) -> anyhow::Result<Vec<RegionCount>> {
    let stats: HashMap<&MapData, StatKey, StatValue> =
        HashMap::try_from(probes.ebpf.map("STATS").context("STATS map missing")?)
            .context("STATS has an unexpected type")?;
    let mut regions = Vec::new();
    for entry in stats.iter() {
        let (key, value) = entry.context("reading STATS")?;
        // An entry inserted at its first fault, read before that fault's add lands.
        if value.faults == 0 {
            continue;
        }
        summary.add(
            key.pid,
            key.class,
            key.window,
            value.faults,
            value.timed,
            value.latency_ns,
        );
        if let Ok(stack_id) = u32::try_from(key.stack_id) {
            summary.add_stack(key.pid, stack_id, key.class, value.faults);
        }
        regions.push(RegionCount {
            pid: key.pid,
            class: key.class,
            address: value.sample_address,
            faults: value.faults,
        });
    }
    let hists: HashMap<&MapData, HistKey, Hist> =
        HashMap::try_from(probes.ebpf.map("HISTS").context("HISTS map missing")?)
            .context("HISTS has an unexpected type")?;
    for entry in hists.iter() {
        let (key, hist) = entry.context("reading HISTS")?;
        summary.hists.insert((key.pid, key.class), hist.buckets);
    }
    Ok(regions)
}
