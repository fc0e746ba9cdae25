//! Reads the in-kernel summary (--summary): counts and histograms, from the shared maps and
//! from the per-CPU caches in front of them (each holding the last key counted on its CPU and
//! counts not yet in the map), and from what was taken out of the maps as processes exited
//! (`Exited`), which keeps the maps from filling with the dead.
use std::{
    collections::{BTreeSet, HashMap},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use aya::maps::MapError;
use cow_trace_common::{
    HIST_BUCKETS, Hist, HistCache, HistKey, StatCache, StatKey, StatValue, summary_maps,
};

use crate::kernel::probes::Probes;

/// What the kernel counted since attaching.
pub struct KernelCounts {
    /// STATS: faults per pid x class x window x stack x region, with the region's first
    /// faulting address.
    pub stats: Vec<(StatKey, StatValue)>,
    /// HISTS: log2 latency histograms per pid x class.
    pub hists: Vec<(HistKey, Hist)>,
}

/// Reads the kernel's counts and histograms (totals since attaching), with those of exited
/// processes taken out of the maps. While the programs run, a cache may change between reads:
/// a fault may then count under the wrong key until the next read (the totals at the end, read
/// once the programs are detached, are exact).
pub fn read(probes: &Probes, exited: &Exited) -> anyhow::Result<KernelCounts> {
    let mut stats: HashMap<StatKey, StatValue> = exited.stats.clone();
    // The caches are read before and after the map: a CPU whose cache moved on meanwhile may
    // have sent its counts to the map during the read, which may hold them already. Its cache
    // is left out of this read (counted at the next): counted late, never twice.
    let before = stat_caches(probes)?;
    for (key, value) in probes.all_stats()? {
        add_stat(&mut stats, key, &value);
    }
    let after = stat_caches(probes)?;
    for (was, cache) in before.iter().zip(&after) {
        let unmoved = was.counts.faults == 0
            || (was.key == cache.key && cache.counts.faults >= was.counts.faults);
        if cache.counts.faults != 0 && unmoved {
            add_stat(&mut stats, cache.key, &cache.counts);
        }
    }
    let mut hists: HashMap<HistKey, Hist> = exited.hists.clone();
    for (key, hist) in probes.all_hists()? {
        add_hist(&mut hists, key, &hist);
    }
    for cache in filled_hist_caches(probes)? {
        add_hist(&mut hists, cache.key, &cache.hist);
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

/// The per-CPU caches of `STATS`, one per CPU.
fn stat_caches(probes: &Probes) -> anyhow::Result<Vec<StatCache>> {
    let caches = probes
        .stat_caches()?
        .get(&0, 0)
        .context("reading STAT_CACHE")?;
    Ok(caches.iter().copied().collect())
}

/// The per-CPU caches of `STATS` that hold counts not yet in the map.
fn filled_stat_caches(probes: &Probes) -> anyhow::Result<Vec<StatCache>> {
    Ok(stat_caches(probes)?
        .into_iter()
        .filter(|cache| cache.counts.faults != 0)
        .collect())
}

/// The per-CPU caches of `HISTS` that hold samples not yet in the map.
fn filled_hist_caches(probes: &Probes) -> anyhow::Result<Vec<HistCache>> {
    let caches = probes
        .hist_caches()?
        .get(&0, 0)
        .context("reading HIST_CACHE")?;
    Ok(caches
        .iter()
        .copied()
        .filter(|cache| cache.faults != 0)
        .collect())
}

fn add_stat(stats: &mut HashMap<StatKey, StatValue>, key: StatKey, value: &StatValue) {
    let total = stats.entry(key).or_insert(StatValue {
        sample_address: value.sample_address,
        ..StatValue::default()
    });
    total.faults += value.faults;
    total.timed += value.timed;
    total.latency_ns += value.latency_ns;
}

fn add_hist(hists: &mut HashMap<HistKey, Hist>, key: HistKey, hist: &Hist) {
    let total = hists.entry(key).or_insert(Hist {
        buckets: [0; HIST_BUCKETS],
    });
    for (sum, n) in total.buckets.iter_mut().zip(hist.buckets) {
        *sum += n;
    }
}

/// The counts and histograms of processes that have exited, taken out of `STATS` and `HISTS`
/// as they go. The maps have a fixed size (`summary_maps`): a run that sees more processes
/// than they hold (a build, a shell loop, a forking server over hours) would otherwise fill
/// them with the dead, and every fault after, of the living, would go uncounted (`STATS`) or
/// out of the histograms (`HISTS`). Userspace keeps them instead, and adds them to each read.
#[derive(Default)]
pub struct Exited {
    stats: HashMap<StatKey, StatValue>,
    hists: HashMap<HistKey, Hist>,
    /// Processes seen to exit whose entries have not been taken out yet.
    pending: BTreeSet<u32>,
    /// Of them, those seen to exit since the last pass.
    new: usize,
    last: Option<Pass>,
    /// A failed pass was warned about (once: the next ones would say the same).
    warned: bool,
}

/// The fewest map entries per exited process `due` assumes, in each map.
const ENTRIES_EACH_AT_LEAST: usize = 8;

/// What the last pass through the maps found, to tell when the next is due.
struct Pass {
    at: Instant,
    cost: Duration,
    /// Entries it left in each map (the living's, and those of processes not yet taken).
    stats_left: usize,
    hists_left: usize,
    /// Entries per process taken out, in each map (the mean of the last pass that took any;
    /// None before one did).
    stats_each: Option<usize>,
    hists_each: Option<usize>,
}

/// What one pass did.
#[derive(Default)]
struct Taken {
    /// Processes whose entries were taken out.
    processes: usize,
    stats: usize,
    hists: usize,
    /// Entries left in the maps.
    stats_left: usize,
    hists_left: usize,
}

impl Exited {
    /// Notes that traced process `pid` exited (its exit record, or /proc said so): its
    /// entries are to be taken out of the maps once nothing can add to them any more.
    pub fn exit(&mut self, pid: u32) {
        if self.pending.insert(pid) {
            self.new += 1;
        }
    }

    /// Takes the entries of processes that have exited out of `STATS` and `HISTS` into these
    /// totals, if a pass is due (see `due`). `ended(pid)` says whether a process has ended for
    /// good: no thread of it runs any more, nor will under that pid (see below). A failed pass
    /// is warned about: the maps may then fill, which the loss counters report.
    ///
    /// Why no count is lost or counted twice: the kernel adds to a map entry only in the
    /// summary's programs, for a fault of the entry's pid, or by sending a per-CPU cache's
    /// counts of that pid to the map (`summary.rs`, `cache_stat` / `cache_hist`). A process's
    /// entries are taken out (read, deleted, added here) only once neither can happen any more:
    /// - the process has ended for good (`ended`: gone from /proc, or a zombie whose every
    ///   thread is gone), so none of its threads faults again. Each thread's last fault, ended
    ///   by its exit, was streamed to userspace (`report::fault_streamed`) and counted there,
    ///   never in the maps; and the kernel removed the pid from `TRACED` at its exit;
    /// - no CPU's cache holds counts of the pid: a cache is sent to the map only when a fault
    ///   of another key comes to its CPU, and keeps its key and counts until they have been
    ///   added to the map (the key is replaced after), so a cache that shows no counts of the
    ///   pid has no add of them in flight, and, the process having ended before the caches
    ///   were read, gets none later. So the maps, read after the caches, hold the pid's final
    ///   counts, which are deleted as read. (A program's add to the map and its emptying of
    ///   the cache after it are stores of one CPU, which x86 makes visible in order; on arm64
    ///   the add is relaxed, but the maps are read some system calls after the caches, far
    ///   longer than a store takes to land);
    /// - the pid is not in `TRACED`: were it reused by a new traced process, that one's faults
    ///   would count under the same pid. Its entries stay then, and are taken at its own exit
    ///   (the summary adds a reused pid's counts to the old ones', as before). A process that
    ///   reuses the pid after this check would have to fault under two keys on one CPU within
    ///   the few system calls left for its counts to reach the maps before the deletes.
    ///
    /// Processes left for a later pass (a cache holds their counts, or they have not ended
    /// yet: the exit record comes as the last thread begins to exit) are retried at the next
    /// pass; entries still in the maps at the end are read there: nothing is lost.
    pub fn take(&mut self, probes: &mut Probes, ended: impl Fn(u32) -> bool) {
        let now = Instant::now();
        if !self.due(now) {
            return;
        }
        let taken = self.take_now(probes, ended);
        let cost = now.elapsed();
        self.new = 0;
        match taken {
            Ok(taken) => {
                log::debug!(
                    "summary maps: {} and {} entries of {} exited processes taken out in {cost:?}, {} and {} left, {} processes pending",
                    taken.stats,
                    taken.hists,
                    taken.processes,
                    taken.stats_left,
                    taken.hists_left,
                    self.pending.len()
                );
                let (stats_each, hists_each) = match (&self.last, taken.processes) {
                    (Some(last), 0) => (last.stats_each, last.hists_each),
                    (None, 0) => (None, None),
                    (_, n) => (Some(taken.stats.div_ceil(n)), Some(taken.hists.div_ceil(n))),
                };
                self.last = Some(Pass {
                    at: now,
                    cost,
                    stats_left: taken.stats_left,
                    hists_left: taken.hists_left,
                    stats_each,
                    hists_each,
                });
            }
            Err(error) => {
                if !self.warned {
                    log::warn!(
                        "taking exited processes' counts out of the summary maps failed, they may fill: {error:#}"
                    );
                    self.warned = true;
                }
                // The next try waits as after a pass, with what the last one found.
                let last = self.last.take().unwrap_or(Pass {
                    at: now,
                    cost,
                    stats_left: 0,
                    hists_left: 0,
                    stats_each: None,
                    hists_each: None,
                });
                self.last = Some(Pass {
                    at: now,
                    cost,
                    ..last
                });
            }
        }
    }

    /// Whether a pass is due: processes exited since the last, and it is time. A pass costs a
    /// read of both maps whole (some milliseconds for `STATS`'s 65536 buckets, whatever it
    /// holds) and a delete per entry, so passes are spaced by their cost: at most one a
    /// second, twenty times as long as the last took, while the maps have room; but as soon
    /// as twice that, and at least 10 ms, when the processes seen to exit since may hold half
    /// the room the last pass left in either map (a storm of short-lived processes).
    fn due(&self, now: Instant) -> bool {
        if self.new == 0 {
            return false;
        }
        let Some(last) = &self.last else {
            return true;
        };
        let since = now - last.at;
        let filling = |left: usize, each: Option<usize>, room: u32| {
            // At least a few entries each: a pass that took processes which had barely run
            // (those that exited as tracing began) would make the next one come too late.
            // A map with nothing in it, nothing taken from it, is not used (the histograms,
            // untimed).
            let unused = each == Some(0) && left == 0;
            let each = if unused {
                0
            } else {
                each.unwrap_or(0).max(ENTRIES_EACH_AT_LEAST)
            };
            2 * self.new * each >= (room as usize).saturating_sub(left)
        };
        let urgent = filling(last.stats_left, last.stats_each, summary_maps::STATS)
            || filling(last.hists_left, last.hists_each, summary_maps::HISTS);
        if urgent {
            since >= (last.cost * 2).max(Duration::from_millis(10))
        } else {
            since >= (last.cost * 20).max(Duration::from_secs(1))
        }
    }

    fn take_now(
        &mut self,
        probes: &mut Probes,
        ended: impl Fn(u32) -> bool,
    ) -> anyhow::Result<Taken> {
        let candidates: Vec<u32> = self
            .pending
            .iter()
            .copied()
            .filter(|&pid| ended(pid))
            .collect();
        // After /proc said the processes have ended: what the kernel will still add of them
        // is in a cache now.
        let mut cached: BTreeSet<u32> = BTreeSet::new();
        cached.extend(
            filled_stat_caches(probes)?
                .iter()
                .map(|cache| cache.key.pid),
        );
        cached.extend(
            filled_hist_caches(probes)?
                .iter()
                .map(|cache| cache.key.pid),
        );
        let mut pids = BTreeSet::new();
        {
            let traced = probes.traced()?;
            for pid in candidates {
                if cached.contains(&pid) {
                    continue;
                }
                // Traced again (reused) or not: no longer pending. A reused pid is pending
                // again at its new process's exit.
                self.pending.remove(&pid);
                if matches!(traced.get(&pid, 0), Err(MapError::KeyNotFound)) {
                    pids.insert(pid);
                }
            }
        }
        // From the cache reads on, the kernel adds nothing to these pids' entries: what is
        // read now is final.
        let (stats, stats_kept): (Vec<(StatKey, StatValue)>, Vec<_>) = probes
            .all_stats()?
            .into_iter()
            .partition(|(key, _)| pids.contains(&key.pid));
        let (hists, hists_kept): (Vec<(HistKey, Hist)>, Vec<_>) = probes
            .all_hists()?
            .into_iter()
            .partition(|(key, _)| pids.contains(&key.pid));
        let keys: Vec<StatKey> = stats.iter().map(|(key, _)| *key).collect();
        let (stats_deleted, stats_done) = probes.delete_stats(&keys);
        for (key, value) in &stats[..stats_deleted] {
            add_stat(&mut self.stats, *key, value);
        }
        let keys: Vec<HistKey> = hists.iter().map(|(key, _)| *key).collect();
        let (hists_deleted, hists_done) = probes.delete_hists(&keys);
        for (key, hist) in &hists[..hists_deleted] {
            add_hist(&mut self.hists, *key, hist);
        }
        stats_done.and(hists_done)?;
        Ok(Taken {
            processes: pids.len(),
            stats: stats_deleted,
            hists: hists_deleted,
            stats_left: stats_kept.len(),
            hists_left: hists_kept.len(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn after_pass(cost_ms: u64, hists_left: usize, hists_each: Option<usize>) -> (Exited, Instant) {
        let at = Instant::now();
        let exited = Exited {
            last: Some(Pass {
                at,
                cost: Duration::from_millis(cost_ms),
                stats_left: 100,
                hists_left,
                stats_each: Some(20),
                hists_each,
            }),
            ..Exited::default()
        };
        (exited, at)
    }

    #[test]
    fn the_first_exit_starts_a_pass_at_once() {
        let mut exited = Exited::default();
        assert!(!exited.due(Instant::now()), "nothing exited");
        exited.exit(7);
        exited.exit(7);
        assert_eq!(exited.new, 1, "one process, one exit");
        assert!(exited.due(Instant::now()));
    }

    /// While the maps have room, passes come at most once a second (or twenty times their
    /// cost apart); when the processes exited since may fill half the room left, at twice
    /// their cost (at least 10 ms).
    #[test]
    fn passes_are_spaced_by_their_cost_and_the_room_left() {
        let ms = Duration::from_millis;
        let (mut exited, at) = after_pass(5, 1000, Some(5));
        exited.exit(1);
        assert!(!exited.due(at + ms(500)));
        assert!(exited.due(at + ms(1000)));

        let (mut slow, at) = after_pass(100, 1000, Some(5));
        slow.exit(1);
        assert!(!slow.due(at + ms(1500)), "twenty times a slow pass's cost");
        assert!(slow.due(at + ms(2000)));

        // 3096 histograms of room: 194 processes of 5 each, counted as at least 8 each, may
        // fill half of it.
        let (mut storm, at) = after_pass(5, 1000, Some(5));
        for pid in 0..193 {
            storm.exit(pid);
        }
        assert!(!storm.due(at + ms(100)), "not yet urgent");
        storm.exit(193);
        assert!(!storm.due(at + ms(9)));
        assert!(storm.due(at + ms(10)));

        // --no-latency: no histograms, only the counts' map fills.
        let (mut untimed, at) = after_pass(5, 0, Some(0));
        for pid in 0..310 {
            untimed.exit(pid);
        }
        assert!(!untimed.due(at + ms(100)));
    }
}
