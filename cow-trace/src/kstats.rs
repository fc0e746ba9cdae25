//! Reads the in-kernel summary (--summary): per-CPU counts and histograms, summed.
use anyhow::Context as _;
use aya::maps::{MapData, PerCpuHashMap};
use cow_trace_common::{HIST_BUCKETS, Hist, HistKey, REGION_SHIFT, StatKey, StatValue};

use crate::{probes::Probes, summary::Summary};

/// One aggregated row: `faults` faults of one class in one region (address >> REGION_SHIFT),
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
    let stats: PerCpuHashMap<&MapData, StatKey, StatValue> =
        PerCpuHashMap::try_from(probes.ebpf.map("STATS").context("STATS map missing")?)
            .context("STATS has an unexpected type")?;
    let mut regions = Vec::new();
    for entry in stats.iter() {
        let (key, per_cpu) = entry.context("reading STATS")?;
        let (faults, timed, latency_ns) = per_cpu.iter().fold((0, 0, 0), |(f, t, l), v| {
            (f + v.faults, t + v.timed, l + v.latency_ns)
        });
        // Any CPU's first address lies in the region; take one that counted something.
        let address = per_cpu
            .iter()
            .find(|v| v.faults > 0)
            .map_or(key.region << REGION_SHIFT, |v| v.sample_address);
        if faults == 0 {
            continue;
        }
        summary.add(key.pid, key.class, key.window, faults, timed, latency_ns);
        if let Ok(stack_id) = u32::try_from(key.stack_id) {
            summary.add_stack(key.pid, stack_id, key.class, faults);
        }
        regions.push(RegionCount {
            pid: key.pid,
            class: key.class,
            address,
            faults,
        });
    }
    let hists: PerCpuHashMap<&MapData, HistKey, Hist> =
        PerCpuHashMap::try_from(probes.ebpf.map("HISTS").context("HISTS map missing")?)
            .context("HISTS has an unexpected type")?;
    for entry in hists.iter() {
        let (key, per_cpu) = entry.context("reading HISTS")?;
        let mut buckets = [0u64; HIST_BUCKETS];
        for hist in per_cpu.iter() {
            for (sum, n) in buckets.iter_mut().zip(hist.buckets) {
                *sum += n;
            }
        }
        summary.hists.insert((key.pid, key.class), buckets);
    }
    Ok(regions)
}
