//! What the address-space history costs: a process that maps, writes and unmaps 100 000
//! one-page regions (`cow-trace/tests/workloads/mmap_churn.c`, which times its own loop),
//! untraced and under cow-trace, whose kernel mapping records then arrive at the rate of the
//! churn. Each run also reports what the history held at the end (`-v`), cow-trace's peak RSS
//! and what was lost.
use std::{
    fs,
    path::Path,
    process::{Command, Stdio},
};

use anyhow::Context as _;

use super::{Args, configs::Tools};
use crate::{process::Guarded, util};

/// Regions the workload maps and unmaps in one run.
pub const REGIONS: u64 = 100_000;

/// How the churn runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Churn {
    Untraced,
    /// Counted in the kernel: the history is the only per-mapping work in userspace.
    Summary,
    /// Every fault streamed with its mapping resolved through the history.
    StreamResolved,
}

impl Churn {
    pub const ALL: [Churn; 3] = [Churn::Untraced, Churn::Summary, Churn::StreamResolved];

    pub fn label(self) -> &'static str {
        match self {
            Churn::Untraced => "untraced",
            Churn::Summary => "cow-trace --summary --no-latency",
            Churn::StreamResolved => "cow-trace --resolve --json -o FILE",
        }
    }

    fn options(self) -> &'static [&'static str] {
        match self {
            Churn::Untraced => &[],
            Churn::Summary => &["--summary", "--no-latency"],
            Churn::StreamResolved => &["--resolve"],
        }
    }
}

/// One run of the churn.
pub struct ChurnRun {
    pub round: usize,
    pub churn: Churn,
    /// The workload's loop time per region (map, write, unmap).
    pub ns_per_region: f64,
    /// Traced only: cow-trace's peak RSS, its lost events and mapping records, and its
    /// "mapping history:" line.
    pub traced: Option<Traced>,
}

pub struct Traced {
    pub peak_rss_mib: f64,
    pub lost: u64,
    pub lost_mapping_records: u64,
    pub history: String,
}

pub struct Mappings {
    pub rounds: usize,
    pub runs: Vec<ChurnRun>,
}

impl Mappings {
    pub fn ns(&self, churn: Churn) -> Vec<f64> {
        self.runs_of(churn).map(|run| run.ns_per_region).collect()
    }

    /// Per round, the ratio to the untraced run of the same round.
    pub fn ratios(&self, churn: Churn) -> Vec<f64> {
        let untraced = |round| {
            self.runs_of(Churn::Untraced)
                .find(|run| run.round == round)
                .map(|run| run.ns_per_region)
        };
        self.runs_of(churn)
            .filter_map(|run| Some(run.ns_per_region / untraced(run.round)?))
            .collect()
    }

    pub fn traced(&self, churn: Churn) -> impl Iterator<Item = &Traced> {
        self.runs_of(churn).filter_map(|run| run.traced.as_ref())
    }

    fn runs_of(&self, churn: Churn) -> impl Iterator<Item = &ChurnRun> {
        self.runs.iter().filter(move |run| run.churn == churn)
    }
}

pub fn run_mappings(tools: &Tools, args: &Args) -> anyhow::Result<Mappings> {
    let workload = util::workload("mmap_churn")?;
    eprintln!("bench: mappings, {REGIONS} regions mapped, written and unmapped");
    let mut runs = Vec::new();
    for round in 0..args.runs {
        // Unmeasured, as the matrix's warm-up.
        churn(tools, &workload, Churn::Untraced, round)?;
        for k in 0..Churn::ALL.len() {
            let mode = Churn::ALL[(k + round) % Churn::ALL.len()];
            let run = churn(tools, &workload, mode, round)
                .with_context(|| format!("mappings, round {round}: {}", mode.label()))?;
            eprintln!(
                "bench: mappings round {} {:<36} {:>8.0} ns/region",
                round + 1,
                mode.label(),
                run.ns_per_region
            );
            runs.push(run);
        }
    }
    Ok(Mappings {
        rounds: args.runs,
        runs,
    })
}

fn churn(tools: &Tools, workload: &Path, mode: Churn, round: usize) -> anyhow::Result<ChurnRun> {
    let stdout_path = tools.scratch.join("mmap_churn.out");
    let stderr_path = tools.scratch.join("mmap_churn.err");
    let json_path = tools.scratch.join("mmap_churn.json");
    let mut command = match mode {
        Churn::Untraced => Command::new(workload),
        _ => {
            let mut command = Command::new(&tools.cow_trace);
            command
                .args(["-v", "--json", "-o"])
                .arg(&json_path)
                .args(mode.options())
                .arg("--")
                .arg(workload);
            command
        }
    };
    command
        .arg(REGIONS.to_string())
        .stdin(Stdio::null())
        .stdout(fs::File::create(&stdout_path)?)
        .stderr(fs::File::create(&stderr_path)?);
    let reaped = Guarded::spawn(&mut command, "mmap_churn")?.wait_success(mode.label())?;
    // The command's own output goes to stdout, or to stderr where cow-trace's JSON could
    // take stdout: read both.
    let output = fs::read_to_string(&stdout_path)? + &fs::read_to_string(&stderr_path)?;
    let elapsed_ns: f64 = output
        .lines()
        .find_map(|line| line.strip_prefix("elapsed_ns "))
        .context("mmap_churn printed no elapsed_ns line")?
        .trim()
        .parse()
        .context("mmap_churn's elapsed_ns")?;
    let traced = match mode {
        Churn::Untraced => None,
        _ => Some(traced(&json_path, &output, reaped.peak_rss_kib)?),
    };
    Ok(ChurnRun {
        round,
        churn: mode,
        ns_per_region: elapsed_ns / REGIONS as f64,
        traced,
    })
}

/// What a traced run's totals and log say.
fn traced(json_path: &Path, output: &str, peak_rss_kib: u64) -> anyhow::Result<Traced> {
    let json = fs::read_to_string(json_path).context("reading cow-trace's JSON")?;
    let totals: serde_json::Value = json
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|value| value["event"] == "totals")
        .context("cow-trace wrote no totals")?;
    let lost = totals["lost"].as_u64().context("totals without lost")?;
    let lost_mapping_records = totals["lost_detail"]["mapping_records"]
        .as_u64()
        .context("totals without lost_detail.mapping_records")?;
    let history = output
        .lines()
        .find_map(|line| line.split_once("mapping history: ").map(|(_, rest)| rest))
        .context("cow-trace -v printed no mapping history line")?
        .to_string();
    fs::remove_file(json_path).ok();
    Ok(Traced {
        peak_rss_mib: peak_rss_kib as f64 / 1024.0,
        lost,
        lost_mapping_records,
        history,
    })
}
