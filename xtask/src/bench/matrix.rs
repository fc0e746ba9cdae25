//! The matrix: every configuration on every workload, interleaved, several rounds.
use std::{fmt::Write as _, thread};

use anyhow::Context as _;

use super::{
    Args, SETTLE,
    configs::{Config, Tools},
    load::{Load, LoadFigures},
    runners::{Tracer, TracerStats},
    workloads::{Outcome, Variant, Workload},
};

pub struct Sample {
    pub round: usize,
    pub variant: usize,
    pub config: Config,
    pub outcome: Outcome,
    pub tracer: Option<TracerStats>,
    /// CPU that processes not ours used during the run, in CPUs: noise.
    pub others: f64,
}

pub struct Matrix {
    pub load: LoadFigures,
    pub rounds: usize,
    pub configs: Vec<Config>,
    pub variants: Vec<Variant>,
    pub samples: Vec<Sample>,
}

pub fn run_matrix(args: &Args, tools: &Tools) -> anyhow::Result<Matrix> {
    let configs = Config::selected(&args.only);
    let variants = Variant::selected(args);
    let mut samples = Vec::new();
    let load = Load::now();
    for round in 0..args.runs {
        for (v, variant) in variants.iter().enumerate() {
            // One unmeasured run first: on a VM the first run of a larger size after a smaller
            // one pays for host memory the guest had handed back (every round of a 1 GiB cell
            // was 4x slower in its first run).
            run_once(tools, variant, Config::Untraced)
                .with_context(|| format!("warm-up, {} MiB {}", variant.mib, variant.mode))?;
            // Rotate the order, so no configuration always runs first or after another.
            for k in 0..configs.len() {
                let config = configs[(k + round) % configs.len()];
                let run_load = Load::now();
                let (outcome, tracer) = run_once(tools, variant, config).with_context(|| {
                    format!(
                        "round {round}, {} MiB {}: {}",
                        variant.mib,
                        variant.mode,
                        config.label()
                    )
                })?;
                let sample = Sample {
                    round,
                    variant: v,
                    config,
                    outcome,
                    tracer,
                    others: run_load.since().others,
                };
                progress(variant, &sample);
                samples.push(sample);
            }
        }
    }
    Ok(Matrix {
        load: load.since(),
        rounds: args.runs,
        configs,
        variants,
        samples,
    })
}

fn run_once(
    tools: &Tools,
    variant: &Variant,
    config: Config,
) -> anyhow::Result<(Outcome, Option<TracerStats>)> {
    let workload = Workload::start(tools, &variant.args())?;
    let target = workload.target;
    let tracer = match config {
        Config::Untraced => None,
        _ => Some(Tracer::start(config, tools, &workload)?),
    };
    thread::sleep(SETTLE);
    let outcome = workload.measure()?;
    let stats = tracer.map(|t| t.stop(target)).transpose()?;
    Ok((outcome, stats))
}

fn progress(variant: &Variant, sample: &Sample) {
    let mut line = format!(
        "bench: round {} {:>5} MiB {:<7} {:<12} {:>8.1} ns/fault, {} faults",
        sample.round + 1,
        variant.mib,
        variant.mode,
        sample.config.name(),
        sample.outcome.ns_per_fault,
        sample.outcome.expected
    );
    if let Some(t) = &sample.tracer {
        let _ = write!(
            line,
            ", delivered {}, lost {}, attach {} ms",
            optional(t.delivered),
            optional(t.lost),
            t.attach.as_millis()
        );
    }
    let _ = write!(line, ", others {:.0}%", sample.others * 100.0);
    eprintln!("{line}");
}

pub fn optional(value: Option<u64>) -> String {
    value.map_or_else(|| "?".to_string(), |v| v.to_string())
}
