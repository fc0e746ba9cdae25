//! `--interval`: what changed in each interval, as `perf stat -I` and `vmstat` print it. Each
//! report holds the counts of its own interval only (never the run so far), so the reports add
//! up to the totals printed once at the end.
use crate::{
    event::Lost,
    output::summary::{Counts, Summary},
};

/// The stretch of the run a report covers, in CLOCK_MONOTONIC ns (the kernel's clock).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Period {
    /// When tracing began.
    pub start_ns: u64,
    /// The previous report (the start, for the first).
    pub from_ns: u64,
    /// When this report was taken.
    pub to_ns: u64,
}

impl Period {
    /// Seconds since tracing began, of the period's start and end.
    pub fn seconds(&self) -> (f64, f64) {
        let since = |ns: u64| ns.saturating_sub(self.start_ns) as f64 / 1e9;
        (since(self.from_ns), since(self.to_ns))
    }

    pub fn length_ns(&self) -> u64 {
        self.to_ns.saturating_sub(self.from_ns)
    }
}

/// Remembers the counts at the previous report, to report what changed since.
pub struct Intervals {
    start_ns: u64,
    last_ns: u64,
    last: Summary,
}

impl Intervals {
    pub fn new(start_ns: u64) -> Intervals {
        Intervals {
            start_ns,
            last_ns: start_ns,
            last: Summary::default(),
        }
    }

    /// From the totals at `now_ns`, the counts of the interval since the previous report: per
    /// pid and snapshot window (only those that changed) and the events lost meanwhile.
    pub fn next(&mut self, totals: &Summary, now_ns: u64) -> (Period, Summary) {
        let period = Period {
            start_ns: self.start_ns,
            from_ns: self.last_ns,
            to_ns: now_ns.max(self.last_ns),
        };
        let mut delta = Summary {
            comms: totals.comms.clone(),
            lost: lost_since(&totals.lost, &self.last.lost),
            ..Summary::default()
        };
        for (pid, counts) in &totals.pids {
            let change = counts_since(counts, self.last.pids.get(pid));
            if change != Counts::default() {
                delta.pids.insert(*pid, change);
            }
        }
        for (key, counts) in &totals.windows {
            let change = counts_since(counts, self.last.windows.get(key));
            if change != Counts::default() {
                delta.windows.insert(*key, change);
            }
        }
        self.last = Summary {
            pids: totals.pids.clone(),
            windows: totals.windows.clone(),
            lost: totals.lost,
            ..Summary::default()
        };
        self.last_ns = period.to_ns;
        (period, delta)
    }

    /// The whole run up to `now_ns`: the period the totals cover.
    pub fn whole_run(&self, now_ns: u64) -> Period {
        Period {
            start_ns: self.start_ns,
            from_ns: self.start_ns,
            to_ns: now_ns.max(self.start_ns),
        }
    }
}

/// Counts only grow; a field that did not (a count missed in a read) is taken as unchanged.
fn counts_since(now: &Counts, before: Option<&Counts>) -> Counts {
    let Some(before) = before else {
        return now.clone();
    };
    // Destructured, so a new field cannot be forgotten here.
    let Counts {
        faults,
        minor,
        major,
        writes,
        cow,
        copied,
        file_copies,
        reused,
        zero_fills,
        incomplete,
        retries,
        unknown_access,
        timed,
        latency_ns_total,
    } = now;
    Counts {
        faults: faults.saturating_sub(before.faults),
        minor: minor.saturating_sub(before.minor),
        major: major.saturating_sub(before.major),
        writes: writes.saturating_sub(before.writes),
        cow: cow.saturating_sub(before.cow),
        copied: copied.saturating_sub(before.copied),
        file_copies: file_copies.saturating_sub(before.file_copies),
        reused: reused.saturating_sub(before.reused),
        zero_fills: zero_fills.saturating_sub(before.zero_fills),
        incomplete: incomplete.saturating_sub(before.incomplete),
        retries: retries.saturating_sub(before.retries),
        unknown_access: unknown_access.saturating_sub(before.unknown_access),
        timed: timed.saturating_sub(before.timed),
        latency_ns_total: latency_ns_total.saturating_sub(before.latency_ns_total),
    }
}

fn lost_since(now: &Lost, before: &Lost) -> Lost {
    let Lost {
        ring_full,
        pending_full,
        traced_full,
        summary_full,
        hist_full,
        stacks,
        mapping_records,
    } = now;
    Lost {
        ring_full: ring_full.saturating_sub(before.ring_full),
        pending_full: pending_full.saturating_sub(before.pending_full),
        traced_full: traced_full.saturating_sub(before.traced_full),
        summary_full: summary_full.saturating_sub(before.summary_full),
        hist_full: hist_full.saturating_sub(before.hist_full),
        stacks: stacks.since(&before.stacks),
        mapping_records: mapping_records.saturating_sub(before.mapping_records),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cow_trace_common::{FaultClass, class};

    const SECOND: u64 = 1_000_000_000;

    #[test]
    fn each_report_holds_its_own_interval_and_they_add_up() {
        let copy = FaultClass::from_bits(
            class::WRITE | class::WRITE_PROTECT | class::COPY_KNOWN | class::COPIED,
        );
        let mut totals = Summary::default();
        let mut intervals = Intervals::new(10 * SECOND);

        totals.add(7, copy, 0, 3, 3, 300);
        totals.add(8, FaultClass::from_bits(class::READ), 0, 2, 2, 20);
        let (first, one) = intervals.next(&totals, 11 * SECOND);
        assert_eq!(
            (first.from_ns, first.to_ns, first.seconds()),
            (10 * SECOND, 11 * SECOND, (0.0, 1.0))
        );
        assert_eq!(one.pids[&7].copied, 3);

        // Pid 7 copies 2 more pages while child 9 lives; pid 8 does nothing.
        totals.add(7, copy, 9, 2, 2, 200);
        totals.lost.ring_full = 4;
        let (second, two) = intervals.next(&totals, 12 * SECOND + SECOND / 2);
        assert_eq!(second.seconds(), (1.0, 2.5));
        assert_eq!(second.length_ns(), 3 * SECOND / 2);
        assert_eq!(two.pids[&7].copied, 2, "not the 5 of the run so far");
        assert_eq!(two.pids[&7].latency_ns_total, 200);
        assert!(!two.pids.contains_key(&8), "an idle pid has no row");
        assert_eq!(two.windows[&(7, 9)].copied, 2);
        assert_eq!(two.lost.ring_full, 4);

        let (_, three) = intervals.next(&totals, 13 * SECOND);
        assert!(three.pids.is_empty() && three.windows.is_empty());
        assert_eq!(three.lost, Lost::default());

        let mut sum = one.total();
        sum += &two.total();
        sum += &three.total();
        assert_eq!(sum, totals.total());
        assert_eq!(
            intervals.whole_run(13 * SECOND).seconds(),
            (0.0, 3.0),
            "the totals cover the whole run"
        );
    }
}
