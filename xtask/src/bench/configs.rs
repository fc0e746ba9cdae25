//! What is measured, and with what: the binaries of the session and the configurations.
use std::{fs, path::PathBuf, process::Command};

use anyhow::Context as _;

use super::host::revision;
use crate::util;

pub struct Tools {
    pub cow_trace: PathBuf,
    /// What was built: version, commit, uncommitted changes.
    pub revision: String,
    pub workload: PathBuf,
    /// Empty programs on cow-trace's hooks (`cow-trace/examples/hook_floor.rs`).
    pub hook_floor: PathBuf,
    /// Event logs, each deleted once counted.
    pub scratch: PathBuf,
}

impl Tools {
    pub fn prepare() -> anyhow::Result<Tools> {
        let built = util::build_release()?;
        util::run(Command::new("cargo").current_dir(util::root()).args([
            "build",
            "--release",
            "--package",
            "cow-trace",
            "--example",
            "hook_floor",
        ]))?;
        let workload = util::workload("bench_cow")?;
        let scratch = util::root().join("target/xtask/bench");
        fs::create_dir_all(&scratch).context("creating target/xtask/bench")?;
        // A copy, so a rebuild during the session cannot change what is measured.
        let cow_trace = scratch.join("cow-trace");
        fs::copy(&built, &cow_trace).context("copying the cow-trace binary")?;
        let hook_floor = scratch.join("hook_floor");
        fs::copy(
            util::root().join("target/release/examples/hook_floor"),
            &hook_floor,
        )
        .context("copying the hook_floor binary")?;
        Ok(Tools {
            revision: revision(&cow_trace),
            cow_trace,
            workload,
            hook_floor,
            scratch,
        })
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Config {
    Untraced,
    CowText,
    CowJson,
    CowSummary,
    CowUntimed,
    CowSummaryUntimed,
    /// Empty programs on the hooks `--no-latency` uses: what the hooks alone cost.
    FloorUntimed,
    /// Empty programs on the hooks of timed tracing (the perf events too).
    FloorTimed,
    Bpftrace,
    PerfTrace,
    /// User stacks of copy-on-write faults, by the kernel's frame-pointer walk.
    CowStackFp,
    /// The same for every fault.
    CowStackFpAll,
    /// User stacks of copy-on-write faults, copied and unwound with the unwind tables.
    CowStackDwarf,
    /// The same for every fault.
    CowStackDwarfAll,
    /// perf's own DWARF stacks of every page fault (the same copy of the stack, unwound
    /// later by perf report).
    PerfRecordDwarf,
}

impl Config {
    const ALL: [Config; 15] = [
        Config::Untraced,
        Config::CowText,
        Config::CowJson,
        Config::CowSummary,
        Config::CowUntimed,
        Config::CowSummaryUntimed,
        Config::FloorUntimed,
        Config::FloorTimed,
        Config::Bpftrace,
        Config::PerfTrace,
        Config::CowStackFp,
        Config::CowStackFpAll,
        Config::CowStackDwarf,
        Config::CowStackDwarfAll,
        Config::PerfRecordDwarf,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Config::Untraced => "untraced",
            Config::CowText => "cow-text",
            Config::CowJson => "cow-json",
            Config::CowSummary => "cow-summary",
            Config::CowUntimed => "cow-untimed",
            Config::CowSummaryUntimed => "cow-summary-untimed",
            Config::FloorUntimed => "floor-untimed",
            Config::FloorTimed => "floor-timed",
            Config::Bpftrace => "bpftrace",
            Config::PerfTrace => "perf-trace",
            Config::CowStackFp => "cow-stack-fp",
            Config::CowStackFpAll => "cow-stack-fp-all",
            Config::CowStackDwarf => "cow-stack-dwarf",
            Config::CowStackDwarfAll => "cow-stack-dwarf-all",
            Config::PerfRecordDwarf => "perf-record-dwarf",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Config::Untraced => "untraced",
            Config::CowText => "cow-trace, text to /dev/null",
            Config::CowJson => "cow-trace --json -o FILE",
            Config::CowSummary => "cow-trace --summary",
            Config::CowUntimed => "cow-trace --no-latency, text to /dev/null",
            Config::CowSummaryUntimed => "cow-trace --summary --no-latency",
            Config::FloorUntimed => "floor: empty programs on the --no-latency hooks",
            Config::FloorTimed => "floor: empty programs on the timed hooks",
            Config::Bpftrace => "bpftrace, a line per fault",
            Config::PerfTrace => "perf trace --pf=min",
            Config::CowStackFp => "cow-trace --stack=fp (COW faults), text to /dev/null",
            Config::CowStackFpAll => "cow-trace --stack=fp --stack-faults all, text to /dev/null",
            Config::CowStackDwarf => "cow-trace --stack (dwarf, COW faults), text to /dev/null",
            Config::CowStackDwarfAll => "cow-trace --stack --stack-faults all, text to /dev/null",
            Config::PerfRecordDwarf => {
                "perf record --call-graph dwarf -e page-faults -c 1 (every fault)"
            }
        }
    }

    pub fn is_cow_trace(self) -> bool {
        matches!(
            self,
            Config::CowText
                | Config::CowJson
                | Config::CowSummary
                | Config::CowUntimed
                | Config::CowSummaryUntimed
        ) || self.takes_stacks()
    }

    /// cow-trace taking user stacks (--stack).
    pub fn takes_stacks(self) -> bool {
        matches!(
            self,
            Config::CowStackFp
                | Config::CowStackFpAll
                | Config::CowStackDwarf
                | Config::CowStackDwarfAll
        )
    }

    /// Its tracer runs BPF programs (perf trace does not).
    pub fn runs_bpf(self) -> bool {
        self.is_cow_trace() || self.is_floor() || self == Config::Bpftrace
    }

    pub fn is_floor(self) -> bool {
        matches!(self, Config::FloorUntimed | Config::FloorTimed)
    }

    /// The floor under this cow-trace configuration: its hooks with empty programs.
    pub fn floor(self) -> Option<Config> {
        match self {
            Config::CowText | Config::CowJson | Config::CowSummary => Some(Config::FloorTimed),
            c if c.takes_stacks() => Some(Config::FloorTimed),
            Config::CowUntimed | Config::CowSummaryUntimed => Some(Config::FloorUntimed),
            _ => None,
        }
    }

    /// cow-trace and perf trace end when their target is gone; the others need a SIGINT.
    pub fn stops_itself(self) -> bool {
        !matches!(self, Config::Bpftrace) && !self.is_floor()
    }

    pub fn is_streaming(self) -> bool {
        matches!(self, Config::CowText | Config::CowJson | Config::CowUntimed)
    }

    pub fn selected(only: &[String]) -> Vec<Config> {
        Config::ALL
            .into_iter()
            .filter(|c| {
                *c == Config::Untraced || only.is_empty() || only.iter().any(|o| o == c.name())
            })
            .collect()
    }
}
