//! What the rest of the machine pays: an untraced copy-on-write storm while a tracer traces
//! an unrelated process that sleeps. A tracer whose hooks fire for every process (raw
//! tracepoints, CPU-wide perf events) slows the storm; one whose filter is per task does not.
use std::{
    process::{Command, Stdio},
    thread,
    time::Duration,
};

use anyhow::Context as _;

use super::{
    Args, SETTLE,
    bpf_stats::StatsEnabled,
    configs::{Config, Tools},
    runners::Tracer,
    stats::Rounds,
    workloads::{Variant, Workload},
};
use crate::process::Guarded;

/// The tracers beside the storm, each on the sleeping process. The floors: empty programs on
/// the hooks that fire for every process (the fault entry and page allocation tracepoints),
/// with the completion events opened on the sleeper alone, as cow-trace opens its own (timed:
/// minor and major faults; untimed: major): the storm never fires those, but once a minor-fault
/// event exists the kernel takes a slower path for every minor fault of the machine.
pub const CONFIGS: [Config; 9] = [
    Config::Untraced,
    Config::CowText,
    Config::CowUntimed,
    Config::CowSummary,
    Config::CowSummaryUntimed,
    Config::FloorUntimed,
    Config::FloorTimed,
    Config::PerfTrace,
    Config::Bpftrace,
];

pub struct Bystander {
    pub mib: u64,
    pub rounds: usize,
    /// The storm's ns per fault beside each configuration, per round.
    pub ns: Rounds<Config>,
    /// (configuration, BPF ns per fault of the storm), from a run with the statistics on.
    pub bpf_ns: Vec<(Config, f64)>,
}

impl Bystander {
    pub fn bpf_ns(&self, config: Config) -> Option<f64> {
        self.bpf_ns.iter().find(|b| b.0 == config).map(|b| b.1)
    }
}

pub fn run_bystander(tools: &Tools, args: &Args) -> anyhow::Result<Bystander> {
    let variant = Variant::cow(args.bystander_size);
    eprintln!(
        "bench: bystander, an untraced {} MiB COW storm while tracers trace a sleeping process",
        variant.mib
    );
    let mut ns_per_fault = Rounds::new(Config::Untraced);
    for round in 0..args.runs {
        // Unmeasured, as the matrix's warm-up.
        storm(tools, &variant, Config::Untraced, false)?;
        for k in 0..CONFIGS.len() {
            let config = CONFIGS[(k + round) % CONFIGS.len()];
            let (ns, _) = storm(tools, &variant, config, false)
                .with_context(|| format!("bystander, round {round}: {}", config.label()))?;
            eprintln!(
                "bench: bystander round {} {:<20} {:>8.1} ns/fault",
                round + 1,
                config.name(),
                ns
            );
            ns_per_fault.push(round, config, ns);
        }
    }
    let mut bpf_ns = Vec::new();
    if !args.no_bpf_stats {
        let _enabled = StatsEnabled::on()?;
        for config in CONFIGS.into_iter().filter(|c| c.runs_bpf()) {
            if let (_, Some(ns)) = storm(tools, &variant, config, true)? {
                bpf_ns.push((config, ns));
            }
        }
    }
    Ok(Bystander {
        mib: variant.mib,
        rounds: args.runs,
        ns: ns_per_fault,
        bpf_ns,
    })
}

/// One storm beside `config` on a sleeping process: its ns per fault and, with `programs`, what
/// the tracer's BPF programs ran per fault of the storm.
fn storm(
    tools: &Tools,
    variant: &Variant,
    config: Config,
    programs: bool,
) -> anyhow::Result<(f64, Option<f64>)> {
    let mut sleeper = Guarded::spawn(
        Command::new("sleep")
            .arg("100000")
            .stdin(Stdio::null())
            .stdout(Stdio::null()),
        "sleep",
    )?;
    let workload = Workload::start(tools, &variant.args())?;
    let tracer = match config {
        Config::Untraced => None,
        _ => Some(Tracer::start_on(
            config,
            tools,
            sleeper.pid(),
            sleeper.pid(),
        )?),
    };
    thread::sleep(SETTLE);
    let (outcome, ran) = match (&tracer, programs) {
        (Some(tracer), true) => workload.measure_programs(tracer.pid())?,
        _ => (workload.measure()?, None),
    };
    // The tracers on the sleeper end with it (bpftrace on SIGINT).
    sleeper.stop(libc::SIGKILL, Duration::from_secs(5))?;
    if let Some(tracer) = tracer {
        tracer.stop(sleeper.pid())?;
    }
    let bpf_ns = ran.map(|ran| ran.total_ns() as f64 / outcome.loop_minflt.max(1) as f64);
    Ok((outcome.ns_per_fault, bpf_ns))
}
