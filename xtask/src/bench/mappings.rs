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

use super::{Args, configs::Tools, stats::Rounds};
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

/// What a traced run's totals and `-v` log say.
pub struct Traced {
    pub peak_rss_mib: f64,
    pub lost: u64,
    pub lost_mapping_records: u64,
    /// Its "mapping history:" line.
    pub history: String,
}

pub struct Mappings {
    pub rounds: usize,
    /// The workload's loop time per region (map, write, unmap), per round.
    pub ns: Rounds<Churn>,
    /// The traced runs, in the order they ran.
    traced: Vec<(Churn, Traced)>,
}

impl Mappings {
    pub fn traced(&self, churn: Churn) -> impl Iterator<Item = &Traced> {
        self.traced
            .iter()
            .filter(move |run| run.0 == churn)
            .map(|run| &run.1)
    }
}

pub fn run_mappings(tools: &Tools, args: &Args) -> anyhow::Result<Mappings> {
    let workload = util::workload("mmap_churn")?;
    eprintln!("bench: mappings, {REGIONS} regions mapped, written and unmapped");
    let mut ns = Rounds::new(Churn::Untraced);
    let mut traced = Vec::new();
    for round in 0..args.runs {
        // Unmeasured, as the matrix's warm-up.
        churn(tools, &workload, Churn::Untraced)?;
        for k in 0..Churn::ALL.len() {
            let mode = Churn::ALL[(k + round) % Churn::ALL.len()];
            let (ns_per_region, run) = churn(tools, &workload, mode)
                .with_context(|| format!("mappings, round {round}: {}", mode.label()))?;
            eprintln!(
                "bench: mappings round {} {:<36} {:>8.0} ns/region",
                round + 1,
                mode.label(),
                ns_per_region
            );
            ns.push(round, mode, ns_per_region);
            traced.extend(run.map(|run| (mode, run)));
        }
    }
    Ok(Mappings {
        rounds: args.runs,
        ns,
        traced,
    })
}

/// One run: the workload's loop time per region and, traced, what cow-trace said.
fn churn(tools: &Tools, workload: &Path, mode: Churn) -> anyhow::Result<(f64, Option<Traced>)> {
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
    Ok((elapsed_ns / REGIONS as f64, traced))
}

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
