//! `cargo xtask bench`: what tracing costs the traced process, and whether every fault reaches
//! the tracer.
//!
//! The workload (`cow-trace/tests/workloads/bench_cow.c`) times its own write loop and reports
//! the kernel's own fault counts. Each configuration (untraced, cow-trace in its modes, bpftrace,
//! perf trace) runs it in turn, rotating the order every round, and BENCHMARKS.md gets the
//! medians. `--soak SECONDS` adds a long cow-trace run at a steady fault rate, sampling its RSS.
//!
//! Besides: `bystander` (what a tracer costs the processes it does not trace), `redis`
//! (Redis's SET throughput during a BGSAVE, traced and not) and `mappings` (what following
//! 100 000 mappings costs), each selected with `--parts`.
//!
//! One module per job: `configs` (what is measured, and with what), `workloads` (driving
//! bench_cow), `runners` (starting, watching and stopping each tracer), `counting` (what each
//! tracer delivered), `matrix` (every configuration on every workload), `bystander`, `redis`,
//! `soak`, `bpf_stats` (the kernel's run time of each BPF program), `load` (how busy the
//! machine was), `leftovers` (nothing left attached), `stats` (medians and steadiness),
//! `report` and `host` (BENCHMARKS.md).
mod bpf_stats;
mod bystander;
mod configs;
mod counting;
mod host;
mod leftovers;
mod load;
mod mappings;
mod matrix;
mod redis;
mod report;
mod runners;
mod soak;
mod stats;
mod workloads;

use std::{fs, path::PathBuf, time::Duration};

use anyhow::Context as _;

use crate::{setup, util};
use bystander::run_bystander;
use configs::Tools;
use leftovers::{bpf_program_ids, check_nothing_left};
use mappings::run_mappings;
use matrix::run_matrix;
use redis::run_redis;
use report::{Parts, kept_notes, render};
use soak::run_soak;

#[derive(clap::Args)]
pub struct Args {
    /// Sizes (MiB) of the fork-then-write (COW) workload.
    #[arg(long, value_delimiter = ',', default_value = "256,1024")]
    sizes: Vec<u64>,
    /// Size (MiB) of the first-touch and many-threads variants (0: skip them).
    #[arg(long, default_value_t = 256)]
    variant_size: u64,
    /// Threads of the many-threads variant.
    #[arg(long, default_value_t = 4)]
    threads: u32,
    /// Which parts to run: matrix (every configuration on every workload), bystander (an
    /// untraced storm while tracers trace a sleeping process), redis (SET throughput during a
    /// BGSAVE), mappings (a process mapping and unmapping 100 000 regions).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "matrix,bystander,redis,mappings"
    )]
    parts: Vec<Part>,
    /// Rounds: each configuration runs each workload once per round (0: no matrix, soak only);
    /// also the bystander's and Redis's rounds.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Size (MiB) of the bystander's untraced COW storm.
    #[arg(long, default_value_t = 256)]
    bystander_size: u64,
    /// Only these configurations (untraced always runs, as the reference): cow-text, cow-json,
    /// cow-summary, cow-untimed, cow-summary-untimed, floor-untimed, floor-timed, bpftrace,
    /// perf-trace, cow-stack-fp, cow-stack-fp-all, cow-stack-dwarf, cow-stack-dwarf-all,
    /// perf-record-dwarf.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Also soak cow-trace for SECONDS at a steady fault rate, sampling its RSS (BENCHMARKS.md's soak: 600).
    #[arg(long, value_name = "SECONDS")]
    soak: Option<u64>,
    /// COW faults per second during the soak.
    #[arg(long, default_value_t = 100_000)]
    soak_rate: u64,
    /// MiB each soak child inherits and writes: the larger, the fewer processes come and go.
    #[arg(long, default_value_t = 1024)]
    soak_size: u64,
    /// Skip the extra round that reads the kernel's BPF statistics (the "BPF ns/fault"
    /// figures).
    #[arg(long)]
    no_bpf_stats: bool,
    /// The report to write, relative to the workspace root.
    #[arg(long, default_value = "BENCHMARKS.md")]
    output: PathBuf,
}

/// Time every configuration, untraced too, waits between readiness and the measured loop, so a
/// tracer's start-up tail never overlaps the measurement.
const SETTLE: Duration = Duration::from_millis(250);

/// How long a tracer's output must stay unchanged before it is asked to stop.
const QUIET: Duration = Duration::from_millis(300);

/// A tracer that stops by itself (cow-trace, perf trace) gets this long before SIGINT.
const SELF_STOP: Duration = Duration::from_secs(5);

/// A part of the bench (`--parts`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Part {
    Matrix,
    Bystander,
    Redis,
    Mappings,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    setup::run()?;
    let tools = Tools::prepare()?;
    let programs_before = bpf_program_ids();
    let runs = args.runs > 0;
    let part = |part| runs && args.parts.contains(&part);
    let matrix = match part(Part::Matrix) {
        true => Some(run_matrix(&args, &tools)?),
        false => None,
    };
    let bystander = match part(Part::Bystander) {
        true => Some(run_bystander(&tools, &args)?),
        false => None,
    };
    let redis = match part(Part::Redis) {
        true => Some(run_redis(&tools, &args)?),
        false => None,
    };
    let mappings = match part(Part::Mappings) {
        true => Some(run_mappings(&tools, &args)?),
        false => None,
    };
    let soak = match args.soak {
        Some(seconds) => Some(run_soak(&tools, &args, seconds)?),
        None => None,
    };
    check_nothing_left(programs_before);
    let path = util::root().join(&args.output);
    let kept = kept_notes(&path);
    let parts = Parts {
        matrix: matrix.as_ref(),
        bystander: bystander.as_ref(),
        redis: redis.as_ref(),
        mappings: mappings.as_ref(),
        soak: soak.as_ref(),
    };
    let report = render(&tools, &parts, &kept);
    fs::write(&path, report).with_context(|| format!("writing {}", path.display()))?;
    eprintln!("bench: wrote {}", path.display());
    Ok(())
}
