//! The kernel's own statistics of BPF programs: with `kernel.bpf_stats_enabled` on, the kernel
//! adds each program's run time and run count, which `bpftool prog show` prints. Divided by
//! the faults of a run, they give what each program costs per fault, robust to whatever else
//! the machine runs (a program runs with preemption off).
use std::{collections::BTreeMap, fs, process::Command};

use anyhow::{Context as _, bail};

use crate::util;

const SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// `kernel.bpf_stats_enabled` on while this lives; what it was before, after. (The statistics
/// add two clock reads to each program run: runs with them on are not timed.)
pub struct StatsEnabled {
    before: String,
}

impl StatsEnabled {
    pub fn on() -> anyhow::Result<StatsEnabled> {
        let before = fs::read_to_string(SYSCTL).with_context(|| format!("reading {SYSCTL}"))?;
        fs::write(SYSCTL, "1").with_context(|| format!("writing 1 to {SYSCTL}"))?;
        Ok(StatsEnabled {
            before: before.trim().to_string(),
        })
    }
}

impl Drop for StatsEnabled {
    fn drop(&mut self) {
        if let Err(error) = fs::write(SYSCTL, &self.before) {
            eprintln!(
                "bench: WARNING: could not restore {SYSCTL} to {}: {error}",
                self.before
            );
        }
    }
}

/// Run time (ns) and run count so far of each program a process holds, by program name
/// (programs of the same name added up).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProgramTimes(pub BTreeMap<String, (u64, u64)>);

impl ProgramTimes {
    /// The programs `pid` holds file descriptors to (from /proc/PID/fdinfo), with their
    /// statistics from `bpftool prog show`.
    pub fn of(pid: u32) -> anyhow::Result<ProgramTimes> {
        let ids = program_ids(pid)?;
        let listing = util::output(Command::new("bpftool").args(["prog", "show"]))
            .context("bpftool prog show failed")?;
        Ok(parse_listing(&listing, &ids))
    }

    /// What ran between `before` and now, per program.
    pub fn since(&self, before: &ProgramTimes) -> ProgramTimes {
        ProgramTimes(
            self.0
                .iter()
                .map(|(name, &(ns, runs))| {
                    let (ns0, runs0) = before.0.get(name).copied().unwrap_or((0, 0));
                    (
                        name.clone(),
                        (ns.saturating_sub(ns0), runs.saturating_sub(runs0)),
                    )
                })
                .collect(),
        )
    }

    /// Nanoseconds of all programs together.
    pub fn total_ns(&self) -> u64 {
        self.0.values().map(|&(ns, _)| ns).sum()
    }
}

/// Ids of the BPF programs `pid` holds file descriptors to.
fn program_ids(pid: u32) -> anyhow::Result<Vec<u32>> {
    let dir = format!("/proc/{pid}/fdinfo");
    let mut ids = Vec::new();
    for entry in fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
        let Ok(text) = fs::read_to_string(entry?.path()) else {
            continue;
        };
        // Program fds show run_time_ns; links name a prog_id too, without it.
        if !text.contains("run_time_ns:") {
            continue;
        }
        if let Some(id) = text
            .lines()
            .find_map(|l| l.strip_prefix("prog_id:"))
            .and_then(|id| id.trim().parse().ok())
        {
            ids.push(id);
        }
    }
    if ids.is_empty() {
        bail!("process {pid} holds no BPF program");
    }
    Ok(ids)
}

/// `ID: TYPE  name NAME  tag ...  run_time_ns N run_cnt M` lines of `bpftool prog show` (the
/// JSON form printed nothing on this machine), for the programs in `ids`.
fn parse_listing(listing: &str, ids: &[u32]) -> ProgramTimes {
    let mut times = ProgramTimes::default();
    for line in listing.lines() {
        let Some((id, rest)) = line.split_once(':') else {
            continue;
        };
        if !id.parse().is_ok_and(|id: u32| ids.contains(&id)) {
            continue;
        }
        let words: Vec<&str> = rest.split_whitespace().collect();
        let after = |key: &str| {
            let at = words.iter().position(|w| *w == key)?;
            words.get(at + 1).copied()
        };
        let (Some(name), Some(ns), Some(runs)) = (
            after("name"),
            after("run_time_ns").and_then(|n| n.parse::<u64>().ok()),
            after("run_cnt").and_then(|n| n.parse::<u64>().ok()),
        ) else {
            continue;
        };
        let sum = times.0.entry(name.to_string()).or_default();
        sum.0 += ns;
        sum.1 += runs;
    }
    times
}

/// What a program does for a fault, as the tables group them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Entry,
    Completion,
    PageAlloc,
    Other,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Entry, Role::Completion, Role::PageAlloc, Role::Other];

    /// cow-trace's and the floor's program names.
    pub fn of(program: &str) -> Role {
        match program {
            "exceptions_page_fault_user" | "exceptions_page_fault_kernel" | "floor_fault_entry" => {
                Role::Entry
            }
            "fault_done_minor" | "fault_done_major" | "floor_fault_done" => Role::Completion,
            "kmem_mm_page_alloc" | "floor_page_alloc" => Role::PageAlloc,
            _ => Role::Other,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Role::Entry => "fault entry",
            Role::Completion => "completion",
            Role::PageAlloc => "mm_page_alloc",
            Role::Other => "others",
        }
    }
}

impl ProgramTimes {
    /// Nanoseconds of the programs of `role`.
    pub fn ns_of(&self, role: Role) -> u64 {
        self.0
            .iter()
            .filter(|(name, _)| Role::of(name) == role)
            .map(|(_, &(ns, _))| ns)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listing_lines_of_our_programs() {
        let listing = "\
9900: raw_tracepoint  name exceptions_page_fault_user  tag adb0efbc62dd2ae3  gpl run_time_ns 2000 run_cnt 10
\tloaded_at 2026-11-29T05:28:18+0000  uid 0
9901: raw_tracepoint  name exceptions_page_fault_kernel  tag 6a0ddf72833397bd  gpl run_time_ns 500 run_cnt 2
9902: perf_event  name fault_done_minor  tag 661d7829e540eb1a  gpl run_time_ns 3000 run_cnt 10
9950: raw_tracepoint  name exceptions_page_fault_user  tag adb0efbc62dd2ae3  gpl run_time_ns 99 run_cnt 1
";
        let times = parse_listing(listing, &[9900, 9901, 9902]);
        assert_eq!(times.0["exceptions_page_fault_user"], (2000, 10));
        assert_eq!(times.ns_of(Role::Entry), 2500);
        assert_eq!(times.ns_of(Role::Completion), 3000);
        assert_eq!(times.total_ns(), 5500);
        let later = parse_listing(
            &listing.replace("3000 run_cnt 10", "4500 run_cnt 15"),
            &[9902],
        );
        assert_eq!(later.since(&times).0["fault_done_minor"], (1500, 5));
    }
}
