//! Per-process totals printed when tracing ends.
use std::{collections::BTreeMap, io};

use serde::Serialize;

use crate::event::{Access, Fault, Outcome};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PidStats {
    pub comm: String,
    /// Completed faults (minor + major): what the kernel adds to minflt + majflt.
    pub faults: u64,
    pub minor: u64,
    pub major: u64,
    /// Completed faults whose access was a write.
    pub writes: u64,
    /// Completed write-protect faults (copy-on-write breaks on private memory).
    pub cow: u64,
    /// Faults that entered the handler but never completed.
    pub incomplete: u64,
    /// Completions whose entry was not seen (access unknown).
    pub unknown_access: u64,
    pub latency_ns_total: u64,
}

/// Events the kernel side could not deliver.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Lost {
    /// Records dropped because the ring buffer was full.
    pub ring_full: u64,
    /// Fault entries not remembered because the pending map was full (their completions
    /// still arrive, without access or latency).
    pub pending_full: u64,
    /// Children not followed because the traced map was full.
    pub traced_full: u64,
}

impl Lost {
    pub fn events(&self) -> u64 {
        self.ring_full
    }
}

#[derive(Clone, Debug, Default)]
pub struct Summary {
    pub pids: BTreeMap<u32, PidStats>,
    pub lost: Lost,
}

impl Summary {
    pub fn record(&mut self, fault: &Fault) {
        let stats = self.pids.entry(fault.pid).or_default();
        if stats.comm != fault.comm {
            stats.comm.clone_from(&fault.comm);
        }
        match fault.outcome {
            Outcome::Incomplete => {
                stats.incomplete += 1;
                return;
            }
            Outcome::Minor => stats.minor += 1,
            Outcome::Major => stats.major += 1,
        }
        stats.faults += 1;
        match fault.access() {
            Some(Access::Write) => stats.writes += 1,
            Some(_) => {}
            None => stats.unknown_access += 1,
        }
        if fault.is_cow() == Some(true) {
            stats.cow += 1;
        }
        stats.latency_ns_total += fault.latency_ns.unwrap_or(0);
    }

    pub fn total_faults(&self) -> u64 {
        self.pids.values().map(|s| s.faults).sum()
    }

    /// The table printed on exit.
    pub fn write_table(&self, out: &mut dyn io::Write) -> io::Result<()> {
        writeln!(
            out,
            "{:>7} {:<16} {:>9} {:>9} {:>7} {:>9} {:>9} {:>10} {:>9}",
            "PID", "COMM", "FAULTS", "MINOR", "MAJOR", "WRITES", "COW", "INCOMPLETE", "AVG LAT"
        )?;
        for (pid, s) in &self.pids {
            let timed = s.faults - s.unknown_access;
            let average = (s.latency_ns_total)
                .checked_div(timed)
                .map_or_else(|| "-".to_string(), crate::sink::human_ns);
            writeln!(
                out,
                "{:>7} {:<16} {:>9} {:>9} {:>7} {:>9} {:>9} {:>10} {:>9}",
                pid, s.comm, s.faults, s.minor, s.major, s.writes, s.cow, s.incomplete, average
            )?;
        }
        writeln!(
            out,
            "Lost events: {} (ring buffer full: {}; entries not remembered: {}; children not followed: {})",
            self.lost.events(),
            self.lost.ring_full,
            self.lost.pending_full,
            self.lost.traced_full
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::test_support::article_fault;

    #[test]
    fn counts_by_class() {
        let mut summary = Summary::default();
        let cow = article_fault();
        let mut read = article_fault();
        read.error_code = Some(0x4);
        read.outcome = Outcome::Major;
        let mut incomplete = article_fault();
        incomplete.outcome = Outcome::Incomplete;
        let mut unknown = article_fault();
        unknown.error_code = None;
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
        assert_eq!(summary.total_faults(), 3);
    }

    #[test]
    fn table_lists_each_pid_and_losses() {
        let mut summary = Summary::default();
        summary.record(&article_fault());
        let mut other = article_fault();
        other.pid = 7;
        other.comm = "child".into();
        summary.record(&other);
        summary.lost.ring_full = 3;
        let mut out = Vec::new();
        summary.write_table(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert!(lines[1].trim_start().starts_with("7 child"), "{text}");
        assert!(lines[2].trim_start().starts_with("12420 cow"), "{text}");
        assert!(lines[3].starts_with("Lost events: 3"), "{text}");
    }
}
