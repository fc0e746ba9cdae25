//! Totals printed when tracing ends (and each --interval's own counts): per pid, per snapshot
//! window, per mapping, and latency histograms. Both modes fill the same structure: streaming
//! adds one fault at a time, --summary adds the kernel's aggregated counts.
use std::{collections::BTreeMap, io};

use cow_trace_common::HIST_BUCKETS;
use serde::Serialize;

use crate::{
    event::{Access, CowOutcome, Fault, FaultClass, Lost, Outcome, mapping_name},
    output::format::{Left, human_bytes, human_ns, shorten_left},
    page,
};

/// Counts for one pid, or for one pid during one child's lifetime.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Completed faults (minor + major): what the kernel adds to minflt + majflt.
    pub faults: u64,
    pub minor: u64,
    pub major: u64,
    /// Completed faults whose access was a write.
    pub writes: u64,
    /// Completed write-protect faults (copy-on-write breaks on private memory).
    pub cow: u64,
    /// Pages copied: by write-protect faults that copied a shared page, and by first writes
    /// to a private file mapping, which copied the file's page (`file_copies`).
    pub copied: u64,
    /// Of `copied`, first writes to pages of a private file mapping not mapped yet: the
    /// file's page copied into private memory, at a fault that was no write-protect fault.
    pub file_copies: u64,
    /// Copy-on-write faults that reused the page (its last sharer kept it).
    pub reused: u64,
    /// Copy-on-write faults on the shared zero page, filled with a fresh zeroed page.
    pub zero_fills: u64,
    /// Faults that entered the handler but never completed.
    pub incomplete: u64,
    /// Attempts that returned VM_FAULT_RETRY (the fault completed in a later attempt).
    pub retries: u64,
    /// Completions whose entry was not seen (access unknown).
    pub unknown_access: u64,
    /// Completed faults that were timed (not so: --no-latency, or no entry seen).
    pub timed: u64,
    /// The latencies of the timed faults, summed.
    pub latency_ns_total: u64,
}

impl Counts {
    fn add(&mut self, fault_class: FaultClass, count: u64, timed: u64, latency_ns: u64) {
        match fault_class.outcome() {
            Outcome::Retry => {
                self.retries += count;
                return;
            }
            Outcome::Incomplete => {
                self.incomplete += count;
                return;
            }
            Outcome::Major => self.major += count,
            Outcome::Minor => self.minor += count,
        }
        self.faults += count;
        match fault_class.access() {
            Some(Access::Write) => self.writes += count,
            None => self.unknown_access += count,
            Some(Access::Read | Access::Exec) => {}
        }
        if fault_class.is_write_protect() {
            self.cow += count;
            match fault_class.cow_outcome() {
                Some(CowOutcome::Copied) => self.copied += count,
                Some(CowOutcome::Reused) => self.reused += count,
                Some(CowOutcome::ZeroFilled) => self.zero_fills += count,
                None => {}
            }
        } else if fault_class.is_file_copy() {
            self.copied += count;
            self.file_copies += count;
        }
        self.timed += timed;
        self.latency_ns_total += latency_ns;
    }

    /// Bytes copied on write: whole pages, of the system's size.
    pub fn copied_bytes(&self) -> u64 {
        self.copied * page::size()
    }
}

impl std::ops::AddAssign<&Counts> for Counts {
    fn add_assign(&mut self, other: &Counts) {
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
        } = other;
        self.faults += faults;
        self.minor += minor;
        self.major += major;
        self.writes += writes;
        self.cow += cow;
        self.copied += copied;
        self.file_copies += file_copies;
        self.reused += reused;
        self.zero_fills += zero_fills;
        self.incomplete += incomplete;
        self.retries += retries;
        self.unknown_access += unknown_access;
        self.timed += timed;
        self.latency_ns_total += latency_ns_total;
    }
}

#[derive(Clone, Debug, Default)]
pub struct Summary {
    pub comms: BTreeMap<u32, String>,
    pub pids: BTreeMap<u32, Counts>,
    /// (parent pid, child pid) -> the parent's faults while that child was alive.
    pub windows: BTreeMap<(u32, u32), Counts>,
    /// (pid, mapping, class) -> faults; filled where mappings are resolved (--summary).
    pub mappings: BTreeMap<(u32, String, FaultClass), u64>,
    /// (pid, class) -> log2 latency histogram (the class as histograms key it:
    /// `FaultClass::without_mapping`).
    pub hists: BTreeMap<(u32, FaultClass), [u64; HIST_BUCKETS]>,
    /// (pid, class as `hists` keys it) -> timed faults: what that histogram holds, unless the
    /// kernel's histogram map was full (`lost.hist_full`).
    pub timed: BTreeMap<(u32, FaultClass), u64>,
    /// (pid, stack id) -> copy-on-write faults taken there (with --stack).
    pub stacks: BTreeMap<(u32, u32), u64>,
    /// (pid, stack id) -> symbolized frames, filled before printing.
    pub stack_frames: BTreeMap<(u32, u32), Vec<String>>,
    pub lost: Lost,
}

impl Summary {
    /// Adds one streamed fault.
    pub fn record(&mut self, fault: &Fault) {
        // A process goes by its main thread's name, as ps shows it: another thread's (a JVM's
        // "C2 CompilerThre") names that thread only.
        if fault.tid == fault.pid
            && self.comms.get(&fault.pid).map(String::as_str) != Some(fault.comm.as_str())
        {
            self.comms
                .insert(fault.pid, fault.comm.as_str().to_string());
        }
        if let Some(mapping) = &fault.mapping {
            let label = mapping_name(mapping).to_string();
            *self
                .mappings
                .entry((fault.pid, label, fault.class))
                .or_default() += 1;
        }
        if let Some(stack_id) = fault.stack_id {
            self.add_stack(fault.pid, stack_id, fault.class, 1);
        }
        self.add(
            fault.pid,
            fault.class,
            fault.window,
            1,
            u64::from(fault.latency_ns.is_some()),
            fault.latency_ns.unwrap_or(0),
        );
    }

    /// Adds `count` faults of one class, `timed` of them timed, whose latencies sum to
    /// `latency_ns`.
    pub fn add(
        &mut self,
        pid: u32,
        fault_class: FaultClass,
        window: u32,
        count: u64,
        timed: u64,
        latency_ns: u64,
    ) {
        self.pids
            .entry(pid)
            .or_default()
            .add(fault_class, count, timed, latency_ns);
        if timed != 0 {
            *self
                .timed
                .entry((pid, fault_class.without_mapping()))
                .or_default() += timed;
        }
        if window != 0 {
            self.windows.entry((pid, window)).or_default().add(
                fault_class,
                count,
                timed,
                latency_ns,
            );
        }
    }

    /// Adds a timed fault's latency to its histogram (what the kernel's summary does for the
    /// faults it counts).
    pub fn add_latency(&mut self, pid: u32, fault_class: FaultClass, latency_ns: u64) {
        self.add_hist(pid, fault_class, &Self::one_latency(latency_ns));
    }

    fn one_latency(latency_ns: u64) -> [u64; HIST_BUCKETS] {
        let mut buckets = [0; HIST_BUCKETS];
        buckets[cow_trace_common::hist_bucket(latency_ns)] = 1;
        buckets
    }

    /// Adds a histogram's samples to the pid's histogram of the class.
    pub fn add_hist(&mut self, pid: u32, fault_class: FaultClass, samples: &[u64; HIST_BUCKETS]) {
        let buckets = self
            .hists
            .entry((pid, fault_class.without_mapping()))
            .or_insert([0; HIST_BUCKETS]);
        for (sum, count) in buckets.iter_mut().zip(samples) {
            *sum += count;
        }
    }

    /// The latency histograms to show, each with the timed faults of its pid and class. Where
    /// the kernel's histogram map was full, some hold fewer samples than there were timed
    /// faults, and a pid and class whose every sample was refused has an empty one.
    pub fn histograms(&self) -> Vec<Histogram<'_>> {
        static EMPTY: [u64; HIST_BUCKETS] = [0; HIST_BUCKETS];
        let mut shown: BTreeMap<(u32, FaultClass), &[u64; HIST_BUCKETS]> = self
            .hists
            .iter()
            .map(|(key, buckets)| (*key, buckets))
            .collect();
        if self.lost.hist_full > 0 {
            for key in self.timed.keys() {
                shown.entry(*key).or_insert(&EMPTY);
            }
        }
        shown
            .into_iter()
            .map(|((pid, class), buckets)| Histogram {
                pid,
                class,
                buckets,
                timed: self.timed.get(&(pid, class)).copied().unwrap_or(0),
            })
            .collect()
    }

    /// Adds another summary's counts, mappings, stacks and histograms.
    pub fn merge(&mut self, other: &Summary) {
        for ((pid, class), buckets) in &other.hists {
            self.add_hist(*pid, *class, buckets);
        }
        for (key, timed) in &other.timed {
            *self.timed.entry(*key).or_default() += timed;
        }
        for (pid, counts) in &other.pids {
            *self.pids.entry(*pid).or_default() += counts;
        }
        for (key, counts) in &other.windows {
            *self.windows.entry(*key).or_default() += counts;
        }
        for (key, count) in &other.mappings {
            *self.mappings.entry(key.clone()).or_default() += count;
        }
        for (key, count) in &other.stacks {
            *self.stacks.entry(*key).or_default() += count;
        }
        for (pid, comm) in &other.comms {
            self.comms.entry(*pid).or_insert_with(|| comm.clone());
        }
    }

    /// Counts copy-on-write faults per stack.
    pub fn add_stack(&mut self, pid: u32, stack_id: u32, fault_class: FaultClass, count: u64) {
        if fault_class.is_write_protect() && fault_class.outcome() != Outcome::Retry {
            *self.stacks.entry((pid, stack_id)).or_default() += count;
        }
    }

    /// The stacks with the most copy-on-write faults, most first.
    pub fn top_stacks(&self, limit: usize) -> Vec<((u32, u32), u64)> {
        let mut stacks: Vec<((u32, u32), u64)> = self
            .stacks
            .iter()
            .map(|(&key, &count)| (key, count))
            .collect();
        stacks.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        stacks.truncate(limit);
        stacks
    }

    /// The user stacks that took the most copy-on-write faults.
    pub fn write_stacks(&self, out: &mut dyn io::Write) -> io::Result<()> {
        let top = self.top_stacks(10);
        if top.is_empty() {
            return Ok(());
        }
        writeln!(out, "\nStacks with the most copy-on-write faults:")?;
        for ((pid, stack_id), count) in top {
            writeln!(out, "  {count} faults, pid {pid} ({}):", self.comm(pid))?;
            for frame in self
                .stack_frames
                .get(&(pid, stack_id))
                .into_iter()
                .flatten()
            {
                writeln!(out, "      {frame}")?;
            }
        }
        Ok(())
    }

    pub fn total(&self) -> Counts {
        let mut total = Counts::default();
        for counts in self.pids.values() {
            total += counts;
        }
        total
    }

    fn comm(&self, pid: u32) -> &str {
        self.comms.get(&pid).map_or("?", String::as_str)
    }

    /// The per-pid table (and snapshot windows) printed on exit.
    pub fn write_table(&self, out: &mut dyn io::Write) -> io::Result<()> {
        writeln!(
            out,
            "{:>7} {:<16} {:>9} {:>9} {:>7} {:>9} {:>8} {:>8} {:>8} {:>6} {:>10} {:>9}",
            "PID",
            "COMM",
            "FAULTS",
            "MINOR",
            "MAJOR",
            "WRITES",
            "COW",
            "COPIED",
            "REUSED",
            "ZERO",
            "INCOMPLETE",
            "AVG LAT"
        )?;
        for (&pid, counts) in &self.pids {
            write_row(
                out,
                &format!("{pid:>7} {}", Left(self.comm(pid), 16)),
                counts,
            )?;
            for ((_, child), counts) in self.windows.range((pid, 0)..=(pid, u32::MAX)) {
                write_row(
                    out,
                    &format!("{:>7} {:<16}", "", format!(" while {child} ran")),
                    counts,
                )?;
            }
        }
        let total = self.total();
        write!(
            out,
            "Copied on write: {} pages, {} bytes ({})",
            total.copied,
            total.copied_bytes(),
            human_bytes(total.copied_bytes())
        )?;
        if total.file_copies > 0 {
            write!(
                out,
                "; {} of them file pages copied at a first write to a private mapping",
                total.file_copies
            )?;
        }
        writeln!(out)?;
        writeln!(
            out,
            "Lost events: {} (ring buffer full: {}; summary maps full: {}; entries not remembered: {}; children not followed: {})",
            self.lost.events(),
            self.lost.ring_full,
            self.lost.summary_full,
            self.lost.pending_full,
            self.lost.traced_full
        )?;
        if self.lost.hist_full > 0 {
            writeln!(
                out,
                "Latencies not in the histograms: {} faults (the histogram map was full; the faults are counted, their latencies in AVG LAT)",
                self.lost.hist_full
            )?;
        }
        let stacks = &self.lost.stacks;
        if stacks.total() > 0 {
            writeln!(
                out,
                "Stacks not taken or cut short: {} ({})",
                stacks.total(),
                stacks.reasons()
            )?;
        }
        if self.lost.mapping_records > 0 {
            writeln!(
                out,
                "Mapping records lost: {} (some addresses may show [unknown])",
                self.lost.mapping_records
            )?;
        }
        Ok(())
    }

    /// Everything a human reads at the end of --summary: the table, mappings, stacks and
    /// histograms.
    pub fn write_report(&self, out: &mut dyn io::Write) -> io::Result<()> {
        self.write_table(out)?;
        self.write_mappings(out)?;
        self.write_stacks(out)?;
        self.write_hists(out)
    }

    /// Per pid x mapping x class counts, as --summary prints them.
    pub fn write_mappings(&self, out: &mut dyn io::Write) -> io::Result<()> {
        if self.mappings.is_empty() {
            return Ok(());
        }
        writeln!(
            out,
            "\n{:>7} {:<48} {:<24} {:>9}",
            "PID", "MAPPING", "CLASS", "FAULTS"
        )?;
        for ((pid, mapping, fault_class), count) in &self.mappings {
            writeln!(
                out,
                "{pid:>7} {} {:<24} {count:>9}",
                Left(&shorten_left(mapping, 48), 48),
                fault_class.to_string()
            )?;
        }
        Ok(())
    }

    /// Log2 latency histograms per pid and class, drawn as bpftrace's hist() does. Where the
    /// kernel's histogram map was full, they say so, and each that misses samples says how
    /// many of its timed faults it holds.
    pub fn write_hists(&self, out: &mut dyn io::Write) -> io::Result<()> {
        let histograms = self.histograms();
        if self.lost.hist_full > 0 && !histograms.is_empty() {
            writeln!(
                out,
                "\nThe latency histograms miss {} timed faults: the histogram map was full (the faults are counted, their latencies in AVG LAT); each histogram missing some says how many it holds.",
                self.lost.hist_full
            )?;
        }
        for histogram in histograms {
            writeln!(
                out,
                "\n@latency_ns[{}, {}, {}]:",
                histogram.pid,
                self.comm(histogram.pid),
                histogram.class
            )?;
            let (samples, timed) = (histogram.samples(), histogram.timed);
            if self.lost.hist_full > 0 && samples < timed {
                if samples == 0 {
                    writeln!(
                        out,
                        "(holds none of its {timed} timed faults: the histogram map had no room for them)"
                    )?;
                } else {
                    writeln!(
                        out,
                        "(holds {samples} of its {timed} timed faults: the histogram map had no room for the others)"
                    )?;
                }
            }
            write_hist(out, histogram.buckets)?;
        }
        Ok(())
    }
}

/// One latency histogram of [`Summary::histograms`].
pub struct Histogram<'a> {
    pub pid: u32,
    pub class: FaultClass,
    pub buckets: &'a [u64; HIST_BUCKETS],
    /// The timed faults of the pid and class: more than the samples only where the kernel's
    /// histogram map was full.
    pub timed: u64,
}

impl Histogram<'_> {
    pub fn samples(&self) -> u64 {
        self.buckets.iter().sum()
    }
}

fn write_row(out: &mut dyn io::Write, label: &str, c: &Counts) -> io::Result<()> {
    let average = c
        .latency_ns_total
        .checked_div(c.timed)
        .map_or_else(|| "-".to_string(), human_ns);
    writeln!(
        out,
        "{label} {:>9} {:>9} {:>7} {:>9} {:>8} {:>8} {:>8} {:>6} {:>10} {:>9}",
        c.faults,
        c.minor,
        c.major,
        c.writes,
        c.cow,
        c.copied,
        c.reused,
        c.zero_fills,
        c.incomplete,
        average
    )
}

/// bpftrace's hist() layout: `[lo, hi)  count |@@@@@      |`.
fn write_hist(out: &mut dyn io::Write, buckets: &[u64; HIST_BUCKETS]) -> io::Result<()> {
    let Some(first) = buckets.iter().position(|&n| n > 0) else {
        return writeln!(out, "(empty)");
    };
    let last = buckets.iter().rposition(|&n| n > 0).unwrap_or(first);
    let max = buckets.iter().copied().max().unwrap_or(1).max(1);
    for (i, &count) in buckets.iter().enumerate().take(last + 1).skip(first) {
        let (lo, hi) = if i == 0 {
            (0, 1)
        } else {
            (1u64 << (i - 1), 1u64 << i)
        };
        let bar = (count * 52).div_ceil(max) as usize;
        writeln!(
            out,
            "[{}, {}){:>w$} {:>8} |{:<52}|",
            human_power(lo),
            human_power(hi),
            "",
            count,
            "@".repeat(bar),
            w = 14usize.saturating_sub(human_power(lo).len() + human_power(hi).len() + 4)
        )?;
    }
    Ok(())
}

/// 1024 -> "1K", as bpftrace labels power-of-two buckets.
fn human_power(n: u64) -> String {
    match n {
        0..1024 => n.to_string(),
        1024..1_048_576 => format!("{}K", n >> 10),
        1_048_576..1_073_741_824 => format!("{}M", n >> 20),
        _ => format!("{}G", n >> 30),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cow_trace_common::class;

    use crate::output::sink::test_support::{article_fault, file_copy_fault, reclassify};

    #[test]
    fn a_process_goes_by_its_main_threads_name() {
        let mut summary = Summary::default();
        let mut worker = article_fault();
        worker.tid += 1;
        worker.comm = "C2 CompilerThre".into();
        summary.record(&worker);
        assert_eq!(summary.comms.get(&worker.pid), None);
        summary.record(&article_fault());
        summary.record(&worker);
        assert_eq!(summary.comm(worker.pid), "cow");
        assert_eq!(summary.pids[&worker.pid].faults, 3);
    }

    #[test]
    fn counts_by_class() {
        let mut summary = Summary::default();
        let cow = article_fault();
        let mut read = article_fault();
        reclassify(&mut read, Some(0x4), Outcome::Major);
        let mut incomplete = article_fault();
        reclassify(&mut incomplete, Some(0x7), Outcome::Incomplete);
        let mut unknown = article_fault();
        reclassify(&mut unknown, None, Outcome::Minor);
        unknown.latency_ns = None;
        for fault in [&cow, &read, &incomplete, &unknown] {
            summary.record(fault);
        }
        let stats = &summary.pids[&12420];
        assert_eq!(stats.faults, 3);
        assert_eq!((stats.minor, stats.major), (2, 1));
        assert_eq!(stats.writes, 1);
        assert_eq!(stats.cow, 1);
        assert_eq!(stats.incomplete, 1);
        assert_eq!(stats.unknown_access, 1);
        assert_eq!(summary.total().faults, 3);
        // The average latency is over the faults that were timed only.
        assert_eq!(stats.timed, 2);
        assert_eq!(
            stats.latency_ns_total,
            cow.latency_ns.unwrap() + read.latency_ns.unwrap()
        );
    }

    #[test]
    fn merge_adds_counts_mappings_and_stacks() {
        let wp = FaultClass::from_bits(
            class::WRITE | class::WRITE_PROTECT | class::COPY_KNOWN | class::COPIED,
        );
        let mut kernel = Summary::default();
        kernel.add(10, wp, 11, 3, 3, 300);
        kernel.mappings.insert((10, "[anon]".into(), wp), 3);
        let mut collected = Summary::default();
        collected.add(10, wp, 11, 1, 0, 0);
        collected.mappings.insert((10, "[anon]".into(), wp), 1);
        collected.add_stack(10, 4, wp, 1);
        kernel.merge(&collected);
        assert_eq!(kernel.pids[&10].copied, 4);
        assert_eq!(kernel.pids[&10].timed, 3);
        assert_eq!(kernel.windows[&(10, 11)].copied, 4);
        assert_eq!(kernel.mappings[&(10, "[anon]".to_string(), wp)], 4);
        assert_eq!(kernel.stacks[&(10, 4)], 1);
    }

    #[test]
    fn copies_reuses_and_windows() {
        let mut summary = Summary::default();
        let wp = class::WRITE | class::WRITE_PROTECT | class::COPY_KNOWN;
        summary.add(10, FaultClass::from_bits(wp | class::COPIED), 11, 3, 0, 0);
        summary.add(10, FaultClass::from_bits(wp), 0, 2, 0, 0);
        let counts = &summary.pids[&10];
        assert_eq!((counts.cow, counts.copied, counts.reused), (5, 3, 2));
        assert_eq!(counts.copied_bytes(), 3 * page::size());
        let window = &summary.windows[&(10, 11)];
        assert_eq!((window.faults, window.copied), (3, 3));
        assert_eq!(summary.windows.len(), 1);
    }

    #[test]
    fn file_copies_are_copies_but_no_cow_faults() {
        let mut summary = Summary::default();
        summary.record(&file_copy_fault(Outcome::Minor));
        summary.record(&file_copy_fault(Outcome::Major));
        let wp = class::WRITE | class::WRITE_PROTECT | class::COPY_KNOWN | class::COPIED;
        summary.add(12420, FaultClass::from_bits(wp), 0, 3, 0, 0);
        let counts = &summary.pids[&12420];
        assert_eq!((counts.faults, counts.minor, counts.major), (5, 4, 1));
        assert_eq!((counts.writes, counts.cow), (5, 3));
        assert_eq!((counts.copied, counts.file_copies), (5, 2));
        assert_eq!(counts.copied_bytes(), 5 * 4096);
        let mut out = Vec::new();
        summary.write_table(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains(
                "Copied on write: 5 pages, 20480 bytes (20.0 KiB); 2 of them file pages copied at a first write to a private mapping\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn table_lists_each_pid_windows_and_losses() {
        let mut summary = Summary::default();
        summary.record(&article_fault());
        let mut other = article_fault();
        other.pid = 7;
        other.tid = 7;
        other.comm = "child".into();
        other.window = 8;
        summary.record(&other);
        summary.lost.ring_full = 3;
        let mut out = Vec::new();
        summary.write_table(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 6, "{text}");
        assert!(lines[1].trim_start().starts_with("7 child"), "{text}");
        assert!(lines[2].contains("while 8 ran"), "{text}");
        assert!(lines[3].trim_start().starts_with("12420 cow"), "{text}");
        assert!(lines[5].starts_with("Lost events: 3"), "{text}");
    }

    /// Where the kernel's histogram map was full, the table says how many latencies the
    /// histograms miss (not as lost faults), and each histogram missing samples says how many
    /// it holds; a pid and class with none gets an empty one that says so.
    #[test]
    fn histograms_missing_samples_say_so() {
        let read = FaultClass::from_bits(class::READ);
        let write = FaultClass::from_bits(class::WRITE);
        let mut summary = Summary::default();
        summary.add(7, read, 0, 3, 3, 3000);
        summary.add(7, write, 0, 2, 2, 2000);
        summary.add(8, read, 0, 1, 1, 1000);
        let mut one = [0; HIST_BUCKETS];
        one[10] = 1;
        summary.add_hist(7, read, &one);
        summary.add_hist(8, read, &one);
        let complete = {
            let mut out = Vec::new();
            summary.write_report(&mut out).unwrap();
            String::from_utf8(out).unwrap()
        };
        assert!(!complete.contains("histogram map"), "{complete}");
        summary.lost.hist_full = 4;
        let mut out = Vec::new();
        summary.write_report(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("Lost events: 0 "), "{text}");
        assert!(
            text.contains("Latencies not in the histograms: 4 faults (the histogram map was full"),
            "{text}"
        );
        assert!(
            text.contains("The latency histograms miss 4 timed faults: the histogram map was full"),
            "{text}"
        );
        assert!(
            text.contains(
                "@latency_ns[7, ?, r MINOR]:\n(holds 1 of its 3 timed faults: the histogram map had no room for the others)\n[512, 1K)"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "@latency_ns[7, ?, w MINOR]:\n(holds none of its 2 timed faults: the histogram map had no room for them)\n(empty)"
            ),
            "{text}"
        );
        assert!(
            text.contains("@latency_ns[8, ?, r MINOR]:\n[512, 1K)"),
            "a complete histogram says nothing: {text}"
        );
    }

    /// Histograms carry no address: a first write that copied a file's page, streamed, goes
    /// with the other writes, as the kernel's histograms keep it.
    #[test]
    fn histograms_keep_file_copies_with_the_other_writes() {
        let mut summary = Summary::default();
        let fault = file_copy_fault(Outcome::Minor);
        summary.record(&fault);
        summary.add_latency(fault.pid, fault.class, 1000);
        let histograms = summary.histograms();
        assert_eq!(histograms.len(), 1);
        assert_eq!(histograms[0].class.to_string(), "w MINOR");
        assert_eq!((histograms[0].samples(), histograms[0].timed), (1, 1));
    }

    #[test]
    fn class_labels() {
        let label = |bits| FaultClass::from_bits(bits).to_string();
        assert_eq!(label(class::READ), "r MINOR");
        assert_eq!(
            label(class::WRITE | class::WRITE_PROTECT | class::COPY_KNOWN | class::COPIED),
            "w MINOR cow-copied"
        );
        assert_eq!(
            label(class::EXEC | class::MAJOR | class::KERNEL_MODE),
            "x MAJOR kernel"
        );
        assert_eq!(label(class::UNKNOWN | class::INCOMPLETE), "? INCOMPLETE");
        assert_eq!(
            label(class::WRITE | class::MAJOR | class::FILE_COPY),
            "w MAJOR file-copied"
        );
    }

    #[test]
    fn histogram_like_bpftrace() {
        let mut buckets = [0u64; HIST_BUCKETS];
        buckets[11] = 10; // [1K, 2K)
        buckets[12] = 5;
        let mut out = Vec::new();
        write_hist(&mut out, &buckets).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(lines[0].starts_with("[1K, 2K)"), "{text}");
        assert!(
            lines[0].ends_with(&format!("|{}|", "@".repeat(52))),
            "{text}"
        );
        assert!(lines[1].starts_with("[2K, 4K)"), "{text}");
        assert!(
            lines[1].contains(&format!("|{}{}|", "@".repeat(26), " ".repeat(26))),
            "{text}"
        );
    }

    #[test]
    fn streamed_mappings_group_by_the_whole_path() {
        let mut summary = Summary::default();
        let mut fault = article_fault();
        fault.mapping = Some("/srv/a@b/data@0x2000".into());
        summary.record(&fault);
        fault.mapping = Some("/srv/a@b/data@0x3000".into());
        summary.record(&fault);
        fault.mapping = Some("[anon:x@0x1]".into());
        summary.record(&fault);
        let names: Vec<(&str, u64)> = summary
            .mappings
            .iter()
            .map(|((_, name, _), count)| (name.as_str(), *count))
            .collect();
        assert_eq!(names, [("/srv/a@b/data", 2), ("[anon:x@0x1]", 1)]);
    }

    #[test]
    fn long_mapping_names_keep_their_end() {
        assert_eq!(shorten_left("[heap]", 10), "[heap]");
        let long = "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2";
        let short = shorten_left(long, 20);
        assert_eq!(short.chars().count(), 20);
        assert!(
            short.starts_with("...") && short.ends_with("x86-64.so.2"),
            "{short}"
        );
    }

    #[test]
    fn wide_names_keep_the_columns() {
        // A comm of five Chinese characters (15 bytes, the kernel's limit) takes 10 columns.
        let mut summary = Summary::default();
        summary.comms.insert(7, "写时复制器".into());
        summary.comms.insert(8, "cow".into());
        summary.pids.insert(7, Counts::default());
        summary.pids.insert(8, Counts::default());
        let mut table = Vec::new();
        summary.write_table(&mut table).unwrap();
        let table = String::from_utf8(table).unwrap();
        let faults_column = |line: &str| {
            let at = line.find(" 0 ").unwrap();
            crate::output::format::display_width(&line[..at])
        };
        let rows: Vec<&str> = table
            .lines()
            .filter(|l| l.contains(" 0 "))
            .take(2)
            .collect();
        assert_eq!(rows.len(), 2, "{table}");
        assert_eq!(faults_column(rows[0]), faults_column(rows[1]), "{table}");
        let short = shorten_left("/数据/写时复制/很长的文件名字.db", 12);
        assert_eq!(crate::output::format::display_width(&short), 12, "{short}");
    }
}
