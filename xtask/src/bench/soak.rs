//! The soak: cow-trace for a long time at a steady fault rate, its RSS and CPU sampled.
use std::{
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::Context as _;

use super::{
    Args, SETTLE,
    configs::{Config, Tools},
    counting::count_soak_table,
    load::{Load, LoadFigures, cpu_so_far, status_number},
    runners::{Tracer, forward_lines},
    workloads::{Workload, fields, number},
};

pub struct Soak {
    pub load: LoadFigures,
    pub seconds: u64,
    pub rate: u64,
    pub mib: u64,
    /// From the first fork to the last child's exit.
    pub elapsed: Duration,
    pub children: u64,
    pub expected: u64,
    pub delivered: Option<u64>,
    pub lost: Option<u64>,
    pub attach: Duration,
    pub cpu_total: Duration,
    pub peak_rss_kib: u64,
    /// (time since go, VmRSS KiB, CPU so far)
    pub samples: Vec<(Duration, u64, Duration)>,
}

pub fn run_soak(tools: &Tools, args: &Args, seconds: u64) -> anyhow::Result<Soak> {
    let (rate, mib) = (args.soak_rate, args.soak_size);
    let load = Load::now();
    eprintln!("bench: soak, {seconds} s at {rate} COW faults/s under cow-trace");
    let workload_args = [seconds, rate, mib].map(|n| n.to_string());
    let mut workload =
        Workload::start(tools, &[&["soak".to_string()], &workload_args[..]].concat())?;
    let root = workload.root();
    let mut tracer = Tracer::start(Config::CowText, tools, &workload)?;
    thread::sleep(SETTLE);
    workload.go()?;
    let Workload {
        mut process, lines, ..
    } = workload;
    let finished = forward_lines(lines.into_inner());
    let (samples, line) = sample_rss(tracer.pid(), seconds, &finished);
    let summary = line
        .as_deref()
        .and_then(|l| l.strip_prefix("soak "))
        .map(fields)
        .context("bench_cow printed no soak line")?;
    process.wait_success("bench_cow soak")?;
    let reaped = tracer.wait_until_done()?;
    tracer.drain_stderr();
    let (delivered, lost) = count_soak_table(&tracer.stderr_text, root);
    Ok(Soak {
        load: load.since(),
        seconds,
        rate,
        mib,
        elapsed: Duration::from_millis(number(&summary, "elapsed_ms")? as u64),
        children: number(&summary, "children")? as u64,
        expected: number(&summary, "faults")? as u64,
        delivered,
        lost,
        attach: tracer.attach,
        cpu_total: reaped.cpu,
        peak_rss_kib: reaped.peak_rss_kib,
        samples,
    })
}

/// Samples the tracer's RSS and CPU about 60 times until the workload prints its line, which
/// is returned with the samples.
fn sample_rss(
    pid: u32,
    seconds: u64,
    finished: &mpsc::Receiver<String>,
) -> (Vec<(Duration, u64, Duration)>, Option<String>) {
    let every = Duration::from_millis((seconds * 1000 / 60).max(1000));
    let start = Instant::now();
    let mut samples = Vec::new();
    loop {
        match finished.recv_timeout(every) {
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Ok(line) => return (samples, Some(line)),
            Err(mpsc::RecvTimeoutError::Disconnected) => return (samples, None),
        }
        if let Some(rss) = status_number(pid, "VmRSS:") {
            samples.push((start.elapsed(), rss, cpu_so_far(pid).unwrap_or_default()));
        }
    }
}
