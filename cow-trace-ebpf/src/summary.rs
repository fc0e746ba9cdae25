//! The in-kernel summary (--summary): fault counts per pid x class x window x stack x region
//! in `STATS`, log2 latency histograms per pid x class in `HISTS`.
//!
//! Both maps are shared by all CPUs (per-CPU copies would cost memory and creation time in
//! proportion to the CPU count) and added to atomically. In front of each, a per-CPU cache
//! holds the last key counted on the CPU and its counts: consecutive faults of a process
//! mostly share a key (a region's pages fault one after another), so most faults are counted
//! there without a hash lookup. Another key sends the cached counts to the map first;
//! userspace adds what the caches still hold when it reads the maps.
use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{bindings::BPF_NOEXIST, maps::HashMap};
use cow_trace_common::{
    HIST_BUCKETS, Hist, HistCache, HistKey, REGION_SHIFT, Record, StatCache, StatKey, StatValue,
    class, counter, flags, hist_bucket,
};

use crate::{
    diagnostics,
    maps::{HIST_CACHE, HISTS, STAT_CACHE, STATS, bump_by},
};

/// Counts a finished fault (its window filled in).
#[inline(always)]
pub fn count(record: &Record) {
    let class = class::of_record(record);
    let key = StatKey {
        pid: record.pid,
        class,
        window: record.other_pid,
        stack_id: record.stack_id,
        region: record.address >> REGION_SHIFT,
    };
    let timed = record.flags & (flags::UNTIMED | flags::NO_ENTRY) == 0;
    let latency_ns = if timed { record.latency_ns } else { 0 };
    if let Some(cache) = STAT_CACHE.get_ptr_mut(0) {
        // SAFETY: this CPU's cache, live while the program runs. Programs do not nest on a
        // CPU, short of a fault taken from an NMI inside one, which may lose a count (as
        // `COUNTERS` may).
        unsafe { cache_stat(&mut *cache, key, record.address, timed, latency_ns) };
    }
    if !timed {
        return;
    }
    let key = HistKey {
        pid: record.pid,
        class,
    };
    let bucket = hist_bucket(latency_ns) & (HIST_BUCKETS - 1);
    if let Some(cache) = HIST_CACHE.get_ptr_mut(0) {
        // SAFETY: as above.
        unsafe { cache_hist(&mut *cache, key, bucket) };
    }
}

#[inline(always)]
fn cache_stat(cache: &mut StatCache, key: StatKey, address: u64, timed: bool, latency_ns: u64) {
    if cache.counts.faults != 0 && cache.key != key {
        add_stats(&cache.key, &cache.counts);
        cache.counts.faults = 0;
    }
    if cache.counts.faults == 0 {
        cache.key = key;
        cache.counts = StatValue {
            sample_address: address,
            ..StatValue::default()
        };
    }
    cache.counts.faults += 1;
    if timed {
        cache.counts.timed += 1;
        cache.counts.latency_ns += latency_ns;
    }
}

/// Adds a cache's counts to `STATS`, or to the loss counter where the map is full.
#[inline(always)]
fn add_stats(key: &StatKey, counts: &StatValue) {
    let first = StatValue {
        sample_address: counts.sample_address,
        ..StatValue::default()
    };
    let Some(entry) = get_or_insert(&STATS, *key, &first) else {
        bump_by(counter::SUMMARY_FULL, counts.faults);
        diagnostics::summary_full(key.pid);
        return;
    };
    // SAFETY: a value of STATS, live while this program runs.
    unsafe {
        add(&raw mut (*entry).faults, counts.faults);
        if counts.timed != 0 {
            add(&raw mut (*entry).timed, counts.timed);
            add(&raw mut (*entry).latency_ns, counts.latency_ns);
        }
    }
}

#[inline(always)]
fn cache_hist(cache: &mut HistCache, key: HistKey, bucket: usize) {
    if cache.faults != 0 && cache.key != key {
        add_hist(cache);
        cache.faults = 0;
    }
    if cache.faults == 0 {
        cache.key = key;
    }
    cache.faults += 1;
    cache.hist.buckets[bucket] += 1;
}

/// Adds a cache's histogram to `HISTS` and empties it. Where the map is full, its samples
/// are counted apart (`HIST_FULL`): their faults are counted in `STATS`, so none is lost,
/// but the histograms hold fewer samples than there were timed faults.
#[inline(always)]
fn add_hist(cache: &mut HistCache) {
    // Zeroes from a static: a Hist is too big for the BPF stack.
    match get_or_insert(&HISTS, cache.key, &EMPTY_HIST) {
        Some(hist) => {
            for i in 0..HIST_BUCKETS {
                let n = cache.hist.buckets[i];
                if n != 0 {
                    // SAFETY: a value of HISTS, live while this program runs.
                    unsafe { add(&raw mut (*hist).buckets[i], n) };
                }
            }
        }
        None => {
            bump_by(counter::HIST_FULL, cache.faults);
            diagnostics::hist_full(cache.key.pid);
        }
    }
    cache.hist = EMPTY_HIST;
}

/// The value of `key`, inserted as `first` if absent: one lookup once the key exists. Another
/// CPU may insert the same key meanwhile; then both use its entry.
#[inline(always)]
fn get_or_insert<K: Copy, V>(map: &HashMap<K, V>, key: K, first: &V) -> Option<*mut V> {
    map.get_ptr_mut(key).or_else(|| {
        let _ = map.insert(key, first, BPF_NOEXIST.into());
        map.get_ptr_mut(key)
    })
}

/// Adds `n` to a shared summary counter: BPF's atomic add, as C's `__sync_fetch_and_add` with
/// its result unused. (core's AtomicU64 has no fetch_add on the BPF target.)
#[inline(always)]
unsafe fn add(counter: *mut u64, n: u64) {
    // SAFETY: the caller's pointer is an aligned u64 inside a live map value.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(counter, n) };
}

static EMPTY_HIST: Hist = Hist {
    buckets: [0; HIST_BUCKETS],
};
