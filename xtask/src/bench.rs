//! `cargo xtask bench` (issues 4 and 5): what tracing costs the traced process, and whether
//! every fault reaches the tracer.
//!
//! The workload (`cow-trace/tests/workloads/bench_cow.c`) times its own write loop and reports
//! the kernel's own fault counts. Each configuration (untraced, cow-trace in its modes, bpftrace,
//! perf trace) runs it in turn, rotating the order every round, and BENCHMARKS.md gets the
//! medians. `--soak SECONDS` adds a long cow-trace run at a steady fault rate, sampling its RSS.
use std::{
    fmt::Write as _,
    fs,
    io::{BufRead, BufReader, Read, Write},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    sync::{Mutex, mpsc},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{setup, util};

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
    /// Rounds: each configuration runs each workload once per round (0: no matrix, soak only).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Only these configurations (untraced always runs, as the reference): cow-text, cow-json,
    /// cow-summary, cow-untimed, cow-summary-untimed, floor-untimed, floor-timed, bpftrace,
    /// perf-trace.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Also soak cow-trace for SECONDS at a steady fault rate, sampling its RSS (issue 5: 600).
    #[arg(long, value_name = "SECONDS")]
    soak: Option<u64>,
    /// COW faults per second during the soak.
    #[arg(long, default_value_t = 100_000)]
    soak_rate: u64,
    /// MiB each soak child inherits and writes: the larger, the fewer processes come and go.
    #[arg(long, default_value_t = 1024)]
    soak_size: u64,
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
/// What follows this line in the report is kept when it is regenerated.
const NOTES_MARKER: &str = "<!-- Everything below this line is kept by `cargo xtask bench`. -->";

pub fn run(args: Args) -> anyhow::Result<()> {
    setup::run()?;
    let tools = Tools::prepare()?;
    let programs_before = bpf_program_ids();
    let matrix = match args.runs {
        0 => None,
        _ => Some(run_matrix(&args, &tools)?),
    };
    let soak = match args.soak {
        Some(seconds) => Some(run_soak(&tools, &args, seconds)?),
        None => None,
    };
    check_nothing_left(programs_before);
    let path = util::root().join(&args.output);
    let kept = kept_notes(&path);
    let report = render(&tools, matrix.as_ref(), soak.as_ref(), &kept);
    fs::write(&path, report).with_context(|| format!("writing {}", path.display()))?;
    eprintln!("bench: wrote {}", path.display());
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// What is measured, and with what

struct Tools {
    cow_trace: PathBuf,
    /// What was built: version, commit, uncommitted changes.
    revision: String,
    workload: PathBuf,
    /// Empty programs on cow-trace's hooks (`cow-trace/examples/hook_floor.rs`).
    hook_floor: PathBuf,
    /// Event logs, each deleted once counted.
    scratch: PathBuf,
    /// `cow-trace --summary` (in-kernel aggregation) exists in this build.
    has_summary: bool,
}

impl Tools {
    fn prepare() -> anyhow::Result<Tools> {
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
        let help = util::output(Command::new(&cow_trace).arg("--help")).unwrap_or_default();
        Ok(Tools {
            revision: revision(&cow_trace),
            cow_trace,
            workload,
            hook_floor,
            scratch,
            has_summary: help.contains("--summary"),
        })
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Config {
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
}

impl Config {
    const ALL: [Config; 10] = [
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
    ];

    fn name(self) -> &'static str {
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
        }
    }

    fn label(self) -> &'static str {
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
        }
    }

    fn is_cow_trace(self) -> bool {
        matches!(
            self,
            Config::CowText
                | Config::CowJson
                | Config::CowSummary
                | Config::CowUntimed
                | Config::CowSummaryUntimed
        )
    }

    fn is_floor(self) -> bool {
        matches!(self, Config::FloorUntimed | Config::FloorTimed)
    }

    /// The floor under this cow-trace configuration: its hooks with empty programs.
    fn floor(self) -> Option<Config> {
        match self {
            Config::CowText | Config::CowJson | Config::CowSummary => Some(Config::FloorTimed),
            Config::CowUntimed | Config::CowSummaryUntimed => Some(Config::FloorUntimed),
            _ => None,
        }
    }

    /// cow-trace and perf trace end when their target is gone; the others need a SIGINT.
    fn stops_itself(self) -> bool {
        !matches!(self, Config::Bpftrace) && !self.is_floor()
    }

    fn is_streaming(self) -> bool {
        matches!(self, Config::CowText | Config::CowJson | Config::CowUntimed)
    }

    fn is_kernel_summary(self) -> bool {
        matches!(self, Config::CowSummary | Config::CowSummaryUntimed)
    }

    fn selected(tools: &Tools, only: &[String]) -> Vec<Config> {
        Config::ALL
            .into_iter()
            .filter(|c| !c.is_kernel_summary() || tools.has_summary)
            .filter(|c| {
                *c == Config::Untraced || only.is_empty() || only.iter().any(|o| o == c.name())
            })
            .collect()
    }
}

#[derive(Clone, Debug)]
struct Variant {
    mode: &'static str,
    mib: u64,
    threads: u32,
}

impl Variant {
    fn selected(args: &Args) -> Vec<Variant> {
        let cow = |mib| Variant {
            mode: "cow",
            mib,
            threads: 1,
        };
        let mut variants: Vec<Variant> = args.sizes.iter().map(|&mib| cow(mib)).collect();
        if args.variant_size > 0 {
            variants.push(Variant {
                mode: "touch",
                ..cow(args.variant_size)
            });
            variants.push(Variant {
                mode: "threads",
                threads: args.threads,
                ..cow(args.variant_size)
            });
        }
        variants
    }

    fn args(&self) -> Vec<String> {
        let mut args = vec![self.mode.to_string(), self.mib.to_string()];
        if self.mode == "threads" {
            args.push(self.threads.to_string());
        }
        args
    }

    fn pages(&self) -> u64 {
        self.mib * 256
    }

    fn title(&self) -> String {
        let (mib, pages) = (self.mib, self.pages());
        match self.mode {
            "cow" => format!("Fork, then the child writes {mib} MiB: {pages} COW faults"),
            "touch" => format!("First touch, no fork: {mib} MiB, {pages} faults"),
            _ => format!(
                "Fork, then {} threads of the child write {mib} MiB: {pages} COW faults",
                self.threads
            ),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The workload

/// What bench_cow reported about its measured process.
#[derive(Clone, Debug)]
struct Outcome {
    ns_per_fault: f64,
    loop_minflt: u64,
    /// The kernel's minflt from just before the process waited for "go" to its exit: every
    /// fault a tracer attached meanwhile should deliver.
    expected: u64,
    /// Inter-processor interrupts on the whole machine from "go" to the result line.
    ipis: u64,
}

/// A running bench_cow, driven over its stdin and stdout.
struct Workload {
    process: Guarded,
    stdin: Option<ChildStdin>,
    lines: BufReader<ChildStdout>,
    /// The measured process: the root's child (or, in soak mode, the root itself).
    target: u32,
}

impl Workload {
    fn start(tools: &Tools, args: &[String]) -> anyhow::Result<Workload> {
        let mut child = Command::new(&tools.workload)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting bench_cow")?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().context("bench_cow stdout")?;
        let mut workload = Workload {
            process: Guarded::new(child),
            stdin,
            lines: BufReader::new(stdout),
            target: 0,
        };
        let target = workload.expect_line("target ")?;
        workload.target = target.trim().parse().context("bench_cow's target pid")?;
        Ok(workload)
    }

    fn root(&self) -> u32 {
        self.process.pid()
    }

    /// Reads the next line, which must start with `prefix`; returns the rest.
    fn expect_line(&mut self, prefix: &str) -> anyhow::Result<String> {
        let mut line = String::new();
        self.lines
            .read_line(&mut line)
            .context("reading bench_cow's output")?;
        match line.strip_prefix(prefix) {
            Some(rest) => Ok(rest.trim().to_string()),
            None => bail!("bench_cow printed {line:?}, expected {prefix:?}..."),
        }
    }

    fn go(&mut self) -> anyhow::Result<()> {
        let mut stdin = self.stdin.take().context("bench_cow already started")?;
        stdin
            .write_all(b"go\n")
            .context("starting bench_cow's loop")
    }

    /// Releases the measured loop, reads the result and exit lines, and reaps the root.
    fn measure(mut self) -> anyhow::Result<Outcome> {
        let ipis_before = ipi_count();
        self.go()?;
        let result = fields(&self.expect_line("result ")?);
        let ipis = ipi_count().saturating_sub(ipis_before);
        let exit = fields(&self.expect_line("exit ")?);
        self.process.wait_success("bench_cow")?;
        let start = number(&result, "start_minflt")?;
        Ok(Outcome {
            ns_per_fault: number(&result, "ns_per_fault")?,
            loop_minflt: number(&result, "loop_minflt")? as u64,
            expected: (number(&exit, "minflt")? - start) as u64,
            ipis,
        })
    }
}

/// IRQ-work, rescheduling, function-call and TLB-shootdown interrupts so far, all CPUs: the
/// cross-CPU wake-ups a tracer causes, each a VM exit on a virtual machine.
fn ipi_count() -> u64 {
    let text = fs::read_to_string("/proc/interrupts").unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let label = words.next()?;
            ["IWI:", "RES:", "CAL:", "TLB:"]
                .contains(&label)
                .then(|| words.map_while(|w| w.parse::<u64>().ok()).sum::<u64>())
        })
        .sum()
}

/// "a=1 b=2" -> [(a, 1), (b, 2)]
fn fields(line: &str) -> Vec<(String, String)> {
    line.split_whitespace()
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn number(fields: &[(String, String)], key: &str) -> anyhow::Result<f64> {
    let value = fields
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v)
        .with_context(|| format!("bench_cow printed no {key}"))?;
    value
        .parse()
        .with_context(|| format!("bench_cow's {key}={value}"))
}

// ---------------------------------------------------------------------------------------------
// Processes we start: reaped with wait4 for their rusage, killed if we bail out early

struct Guarded {
    child: Child,
    reaped: bool,
}

/// How a process ended, from wait4.
struct Reaped {
    success: bool,
    cpu: Duration,
    peak_rss_kib: u64,
    /// Voluntary context switches: how often it slept and was woken.
    sleeps: u64,
}

impl Guarded {
    fn new(child: Child) -> Guarded {
        Guarded {
            child,
            reaped: false,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn signal(&self, signal: i32) {
        if !self.reaped {
            // SAFETY: kill(2) on our own child, not yet reaped, so the pid is still its.
            unsafe { libc::kill(self.pid() as i32, signal) };
        }
    }

    /// Reaps the process if it has exited.
    fn try_reap(&mut self) -> anyhow::Result<Option<Reaped>> {
        self.wait4(libc::WNOHANG)
    }

    fn wait_success(&mut self, what: &str) -> anyhow::Result<Reaped> {
        let reaped = self.wait4(0)?.context("wait4 returned no process")?;
        if !reaped.success {
            bail!("{what} failed");
        }
        Ok(reaped)
    }

    fn wait4(&mut self, options: i32) -> anyhow::Result<Option<Reaped>> {
        let mut status = 0;
        // SAFETY: rusage is plain data for the kernel to fill in.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: valid pointers; the pid is our own unreaped child.
        let pid = unsafe { libc::wait4(self.pid() as i32, &mut status, options, &mut usage) };
        if pid < 0 {
            return Err(std::io::Error::last_os_error()).context("wait4");
        }
        if pid == 0 {
            return Ok(None);
        }
        self.reaped = true;
        Ok(Some(Reaped {
            success: libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            cpu: timeval(usage.ru_utime) + timeval(usage.ru_stime),
            peak_rss_kib: usage.ru_maxrss as u64,
            sleeps: usage.ru_nvcsw as u64,
        }))
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        if !self.reaped {
            self.signal(libc::SIGKILL);
            let _ = self.wait4(0);
        }
    }
}

fn timeval(tv: libc::timeval) -> Duration {
    Duration::from_secs(tv.tv_sec as u64) + Duration::from_micros(tv.tv_usec as u64)
}

/// utime + stime so far, from /proc/PID/stat (clock-tick resolution).
fn cpu_so_far(pid: u32) -> Option<Duration> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields 14 and 15 of proc(5); the list after the comm starts at field 3.
    let after_comm: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: u64 = after_comm.get(11)?.parse().ok()?;
    let stime: u64 = after_comm.get(12)?.parse().ok()?;
    Some(from_ticks(utime + stime))
}

/// A number of /proc/PID/status (VmRSS in KiB, voluntary_ctxt_switches).
fn status_number(pid: u32, key: &str) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

// ---------------------------------------------------------------------------------------------
// Tracers

/// What a tracer cost and delivered in one run.
#[derive(Clone, Debug)]
struct TracerStats {
    attach: Duration,
    /// CPU from readiness to exit: the cost of tracing, without start-up.
    cpu_tracing: Duration,
    cpu_total: Duration,
    peak_rss_kib: u64,
    /// Times the tracer was woken after it was ready.
    wakeups: u64,
    /// Events of the measured process that reached the tracer's output.
    delivered: Option<u64>,
    /// Losses the tracer itself reported.
    lost: Option<u64>,
}

struct Tracer {
    config: Config,
    process: Guarded,
    started: Instant,
    attach: Duration,
    cpu_at_ready: Duration,
    sleeps_at_ready: u64,
    /// The tracer's event output, when it goes to a file we read back.
    events: Option<PathBuf>,
    stderr: mpsc::Receiver<String>,
    stderr_text: String,
}

impl Tracer {
    /// Starts the tracer for `config` on the workload and returns once it is attached.
    fn start(config: Config, tools: &Tools, workload: &Workload) -> anyhow::Result<Tracer> {
        let events = tools.scratch.join(format!("{}.out", config.name()));
        let _ = fs::remove_file(&events);
        let mut command = tracer_command(config, tools, workload, &events)?;
        let started = Instant::now();
        let mut child = command
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", config.label()))?;
        let stderr = forward_lines(child.stderr.take().context("tracer stderr")?);
        if let Ok(mut pids) = TRACER_PIDS.lock() {
            pids.push(child.id());
        }
        let mut tracer = Tracer {
            config,
            process: Guarded::new(child),
            started,
            attach: Duration::ZERO,
            cpu_at_ready: Duration::ZERO,
            sleeps_at_ready: 0,
            events: (!matches!(config, Config::CowText | Config::CowUntimed) && !config.is_floor())
                .then_some(events),
            stderr,
            stderr_text: String::new(),
        };
        tracer.attach = tracer.wait_ready()?;
        let pid = tracer.pid();
        tracer.cpu_at_ready = cpu_so_far(pid).unwrap_or_default();
        tracer.sleeps_at_ready = status_number(pid, "voluntary_ctxt_switches:").unwrap_or(0);
        Ok(tracer)
    }

    fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Polls the tracer's readiness sign; returns the time from its start to that sign.
    fn wait_ready(&mut self) -> anyhow::Result<Duration> {
        let deadline = self.started + Duration::from_secs(60);
        loop {
            if self.is_ready() {
                return Ok(self.started.elapsed());
            }
            if self.process.try_reap()?.is_some() {
                self.collect_stderr();
                bail!(
                    "{} exited before attaching: {}",
                    self.config.label(),
                    self.stderr_text.trim()
                );
            }
            if Instant::now() > deadline {
                bail!("{} did not attach within 60 s", self.config.label());
            }
            thread::sleep(Duration::from_millis(1));
        }
    }

    fn is_ready(&mut self) -> bool {
        match self.config {
            Config::Untraced => true,
            // cow-trace prints this line once every probe is attached.
            Config::CowText
            | Config::CowJson
            | Config::CowSummary
            | Config::CowUntimed
            | Config::CowSummaryUntimed
            | Config::FloorUntimed
            | Config::FloorTimed => {
                self.collect_stderr();
                self.stderr_text.lines().any(|l| l.starts_with("Tracing "))
            }
            // bpftrace prints "Attaching N probes..." around attaching: the kernel confirms.
            Config::Bpftrace => {
                let path = self.events.as_deref();
                let printed = path
                    .and_then(|p| fs::read_to_string(p).ok())
                    .is_some_and(|text| text.contains("Attaching "));
                printed && bpftrace_attached(self.pid())
            }
            // perf trace prints nothing when ready. It enables its events right before its
            // first poll(2): blocked in poll with perf events open means attached.
            Config::PerfTrace => perf_polling(self.pid()),
        }
    }

    /// Takes what the tracer has written to stderr so far.
    fn collect_stderr(&mut self) {
        while let Ok(line) = self.stderr.try_recv() {
            self.stderr_text.push_str(&line);
            self.stderr_text.push('\n');
        }
    }

    /// Takes the rest of the tracer's stderr, once it has exited: the forwarding thread ends
    /// at EOF.
    fn drain_stderr(&mut self) {
        while let Ok(line) = self.stderr.recv() {
            self.stderr_text.push_str(&line);
            self.stderr_text.push('\n');
        }
    }

    /// Lets the tracer deliver everything, stops it, and counts what it delivered for `target`.
    fn stop(mut self, target: u32) -> anyhow::Result<TracerStats> {
        let reaped = self.wait_until_done()?;
        self.drain_stderr();
        if !reaped.success && !matches!(self.config, Config::Bpftrace | Config::PerfTrace) {
            bail!(
                "{} failed: {}",
                self.config.label(),
                self.stderr_text.trim()
            );
        }
        let (delivered, lost) = self.count(target)?;
        if let Some(events) = &self.events {
            let _ = fs::remove_file(events);
        }
        Ok(TracerStats {
            attach: self.attach,
            cpu_tracing: reaped.cpu.saturating_sub(self.cpu_at_ready),
            cpu_total: reaped.cpu,
            peak_rss_kib: reaped.peak_rss_kib,
            wakeups: reaped.sleeps.saturating_sub(self.sleeps_at_ready),
            delivered,
            lost,
        })
    }

    /// cow-trace and perf trace stop by themselves when their target has exited; bpftrace (and
    /// hook_floor) are sent SIGINT once their output has been quiet for a while (so bpftrace has
    /// written everything).
    fn wait_until_done(&mut self) -> anyhow::Result<Reaped> {
        let since = Instant::now();
        let (mut size, mut changed) = (self.output_size(), Instant::now());
        let mut interrupted = false;
        loop {
            if let Some(reaped) = self.process.try_reap()? {
                return Ok(reaped);
            }
            let now_size = self.output_size();
            if now_size != size {
                (size, changed) = (now_size, Instant::now());
            }
            let stops_itself = self.config.stops_itself();
            let quiet = changed.elapsed() >= QUIET;
            if !interrupted && quiet && (!stops_itself || since.elapsed() > SELF_STOP) {
                if stops_itself {
                    eprintln!("bench: {} did not stop by itself", self.config.label());
                }
                self.process.signal(libc::SIGINT);
                interrupted = true;
            }
            if since.elapsed() > Duration::from_secs(120) {
                self.process.signal(libc::SIGKILL);
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    fn output_size(&self) -> u64 {
        let path = self.events.as_deref();
        path.and_then(|p| fs::metadata(p).ok())
            .map_or(0, |m| m.len())
    }

    /// (events delivered for `target`, losses the tracer reported).
    fn count(&self, target: u32) -> anyhow::Result<(Option<u64>, Option<u64>)> {
        let output = match &self.events {
            Some(path) => BufReader::new(
                fs::File::open(path).with_context(|| format!("opening {}", path.display()))?,
            ),
            None => BufReader::new(fs::File::open("/dev/null")?),
        };
        let stderr = BufReader::new(self.stderr_text.as_bytes());
        Ok(match self.config {
            Config::Untraced | Config::FloorUntimed | Config::FloorTimed => (None, None),
            Config::CowText
            | Config::CowSummary
            | Config::CowUntimed
            | Config::CowSummaryUntimed => count_cow_table(output.chain(stderr), target)?,
            Config::CowJson => count_cow_json(output, target)?,
            Config::Bpftrace => count_bpftrace(output.chain(stderr), target)?,
            Config::PerfTrace => count_perf(output.chain(stderr))?,
        })
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        if let Some(events) = &self.events {
            let _ = fs::remove_file(events);
        }
    }
}

fn tracer_command(
    config: Config,
    tools: &Tools,
    workload: &Workload,
    events: &Path,
) -> anyhow::Result<Command> {
    let (root, target) = (workload.root().to_string(), workload.target.to_string());
    let mut command = match config {
        Config::Untraced => bail!("untraced has no tracer"),
        c if c.is_cow_trace() => Command::new(&tools.cow_trace),
        c if c.is_floor() => Command::new(&tools.hook_floor),
        Config::Bpftrace => Command::new("bpftrace"),
        _ => Command::new("perf"),
    };
    command.stdin(Stdio::null()).stdout(Stdio::null());
    match config {
        // cow-trace follows the workload's whole tree: its natural use.
        Config::CowText => command.args(["-x", &root]),
        Config::CowJson => command
            .args(["--json", "-o"])
            .arg(events)
            .args(["-x", &root]),
        // Whatever --summary prints goes to the events file, to be counted like the table.
        Config::CowSummary => command
            .stdout(fs::File::create(events).context("creating the summary file")?)
            .args(["--summary", "-x", &root]),
        Config::CowUntimed => command.args(["--no-latency", "-x", &root]),
        Config::CowSummaryUntimed => command
            .stdout(fs::File::create(events).context("creating the summary file")?)
            .args(["--summary", "--no-latency", "-x", &root]),
        Config::FloorUntimed => &mut command,
        Config::FloorTimed => command.arg("--timed"),
        Config::Bpftrace => command.arg("-o").arg(events).arg("-e").arg(format!(
            "tracepoint:exceptions:page_fault_user /pid == {target}/ {{ \
             printf(\"%d %d %lx %lx %lx\\n\", pid, tid, args->address, args->ip, \
             args->error_code); }}"
        )),
        _ => command
            .args(["trace", "--no-syscalls", "--pf=min", "-p", &target, "-o"])
            .arg(events),
    };
    Ok(command)
}

/// Sends each line of `from` down a channel, from a thread, until EOF.
fn forward_lines(from: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (send, receive) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(from).lines().map_while(Result::ok) {
            if send.send(line).is_err() {
                break;
            }
        }
    });
    receive
}

/// bpftool lists a perf-event attachment (tracepoint) of a program owned by `pid`.
fn bpftrace_attached(pid: u32) -> bool {
    let list = util::output(Command::new("bpftool").args(["perf", "list"])).unwrap_or_default();
    let prefix = format!("pid {pid} ");
    list.lines().any(|l| l.starts_with(&prefix))
}

/// `pid` is blocked in poll(2) or ppoll(2) and has perf events open.
fn perf_polling(pid: u32) -> bool {
    let syscall = fs::read_to_string(format!("/proc/{pid}/syscall")).unwrap_or_default();
    let polling = matches!(syscall.split_whitespace().next(), Some("7" | "271"));
    polling && has_perf_events(pid)
}

fn has_perf_events(pid: u32) -> bool {
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.filter_map(Result::ok)
        .filter_map(|fd| fs::read_link(fd.path()).ok())
        .any(|link| link.to_string_lossy().contains("perf_event"))
}

// ---------------------------------------------------------------------------------------------
// Counting what each tracer delivered

/// cow-trace's per-pid table (FAULTS of `target`, 0 if the table has no row for it) and its
/// "Lost events: N" line.
fn count_cow_table(text: impl BufRead, target: u32) -> anyhow::Result<(Option<u64>, Option<u64>)> {
    let (mut delivered, mut lost) = (None, None);
    let mut row_seen = false;
    for line in text.lines() {
        let line = line?;
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.first() == Some(&"PID") && delivered.is_none() {
            delivered = Some(0);
        } else if !row_seen && words.first() == Some(&target.to_string().as_str()) {
            // The first row of the pid is in the per-pid table; later tables have other columns.
            row_seen = true;
            delivered = words.get(2).and_then(|w| w.parse().ok());
        } else if let Some(rest) = line.strip_prefix("Lost events: ") {
            lost = leading_number(rest);
        }
    }
    Ok((delivered, lost))
}

/// Fault objects of `target`, and the totals line's "lost".
fn count_cow_json(text: impl BufRead, target: u32) -> anyhow::Result<(Option<u64>, Option<u64>)> {
    let pid = format!("\"pid\":{target},");
    let (mut delivered, mut lost) = (0, None);
    for line in text.lines() {
        let line = line?;
        if line.contains("\"event\":\"fault\"") && line.contains(&pid) {
            delivered += 1;
        } else if line.contains("\"event\":\"totals\"") {
            lost = line
                .split_once("\"lost\":")
                .and_then(|(_, rest)| leading_number(rest));
        }
    }
    Ok((Some(delivered), lost))
}

/// Lines "PID TID ADDRESS IP ERROR" of `target`, and "Lost N events" lines.
fn count_bpftrace(text: impl BufRead, target: u32) -> anyhow::Result<(Option<u64>, Option<u64>)> {
    let prefix = format!("{target} ");
    let (mut delivered, mut lost) = (0, 0);
    for line in text.lines() {
        let line = line?;
        if line.starts_with(&prefix) {
            delivered += 1;
        } else if let Some((_, rest)) = line.split_once("Lost ") {
            lost += leading_number(rest).unwrap_or(0);
        }
    }
    Ok((Some(delivered), Some(lost)))
}

/// perf trace traces only the target: every minfault line is its. "LOST N events!" lines.
fn count_perf(text: impl BufRead) -> anyhow::Result<(Option<u64>, Option<u64>)> {
    let (mut delivered, mut lost) = (0, 0);
    for line in text.lines() {
        let line = line?;
        if line.contains("minfault") {
            delivered += 1;
        } else if let Some((_, rest)) = line.split_once("LOST ") {
            lost += leading_number(rest).unwrap_or(0);
        }
    }
    Ok((Some(delivered), Some(lost)))
}

fn leading_number(text: &str) -> Option<u64> {
    let digits: String = text
        .trim_start()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

// ---------------------------------------------------------------------------------------------
// The matrix: every configuration on every workload, interleaved, several rounds

struct Sample {
    round: usize,
    variant: usize,
    config: Config,
    outcome: Outcome,
    tracer: Option<TracerStats>,
    /// CPU that processes not ours used during the run, in CPUs: noise.
    others: f64,
}

struct Matrix {
    load: LoadFigures,
    rounds: usize,
    configs: Vec<Config>,
    variants: Vec<Variant>,
    samples: Vec<Sample>,
}

fn run_matrix(args: &Args, tools: &Tools) -> anyhow::Result<Matrix> {
    let configs = Config::selected(tools, &args.only);
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

fn optional(value: Option<u64>) -> String {
    value.map_or_else(|| "?".to_string(), |v| v.to_string())
}

// ---------------------------------------------------------------------------------------------
// The soak: cow-trace for a long time at a steady fault rate

struct Soak {
    load: LoadFigures,
    seconds: u64,
    rate: u64,
    mib: u64,
    /// From the first fork to the last child's exit.
    elapsed: Duration,
    children: u64,
    expected: u64,
    delivered: Option<u64>,
    lost: Option<u64>,
    attach: Duration,
    cpu_total: Duration,
    peak_rss_kib: u64,
    /// (time since go, VmRSS KiB, CPU so far)
    samples: Vec<(Duration, u64, Duration)>,
}

fn run_soak(tools: &Tools, args: &Args, seconds: u64) -> anyhow::Result<Soak> {
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

/// Sum of FAULTS over every pid but the soak's root, and the lost count.
fn count_soak_table(text: &str, root: u32) -> (Option<u64>, Option<u64>) {
    let (mut delivered, mut lost) = (None, None);
    let mut tables = 0;
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let pid = words.first().and_then(|w| w.parse::<u32>().ok());
        if words.first() == Some(&"PID") {
            tables += 1;
        } else if let Some(rest) = line.strip_prefix("Lost events: ") {
            lost = leading_number(rest);
        } else if tables == 1 && pid.is_some_and(|pid| pid != root) {
            // Rows of the per-pid table only ("while CHILD ran" lines split a parent's row).
            let faults: u64 = words.get(2).and_then(|w| w.parse().ok()).unwrap_or(0);
            delivered = Some(delivered.unwrap_or(0) + faults);
        }
    }
    (delivered, lost)
}

// ---------------------------------------------------------------------------------------------
// How quiet the machine was: its CPU time against ours

struct Load {
    at: Instant,
    busy: Duration,
    steal: Duration,
    ours: Duration,
}

/// Over the session, in CPUs (1.0 = one CPU fully busy).
struct LoadFigures {
    seconds: f64,
    others: f64,
    steal: f64,
}

impl Load {
    fn now() -> Load {
        let (busy, steal) = machine_cpu();
        Load {
            at: Instant::now(),
            busy,
            steal,
            ours: our_cpu(),
        }
    }

    fn since(&self) -> LoadFigures {
        let now = Load::now();
        let seconds = (now.at - self.at).as_secs_f64().max(1e-3);
        let busy = now.busy.saturating_sub(self.busy);
        let ours = now.ours.saturating_sub(self.ours);
        LoadFigures {
            seconds,
            others: busy.saturating_sub(ours).as_secs_f64() / seconds,
            steal: now.steal.saturating_sub(self.steal).as_secs_f64() / seconds,
        }
    }
}

/// (busy, steal) CPU time of the whole machine, from the first line of /proc/stat.
fn machine_cpu() -> (Duration, Duration) {
    let stat = fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .map_while(|w| w.parse().ok())
        .collect();
    let at = |i: usize| ticks.get(i).copied().unwrap_or(0);
    // user nice system idle iowait irq softirq steal
    let busy = at(0) + at(1) + at(2) + at(5) + at(6);
    (from_ticks(busy), from_ticks(at(7)))
}

fn from_ticks(ticks: u64) -> Duration {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_millis(ticks * 1000 / hz)
}

/// CPU time of this process and every descendant it has reaped (workloads, tracers, tools).
fn our_cpu() -> Duration {
    [libc::RUSAGE_SELF, libc::RUSAGE_CHILDREN]
        .into_iter()
        .map(|who| {
            // SAFETY: rusage is plain data for the kernel to fill in.
            let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
            // SAFETY: valid pointer.
            unsafe { libc::getrusage(who, &mut usage) };
            timeval(usage.ru_utime) + timeval(usage.ru_stime)
        })
        .sum()
}

// ---------------------------------------------------------------------------------------------
// Nothing left behind

/// Every tracer started, to check at the end that none still holds a probe.
static TRACER_PIDS: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// Ids of the BPF programs loaded now.
fn bpf_program_ids() -> Option<Vec<u32>> {
    let list = util::output(Command::new("bpftool").args(["prog", "list"]))?;
    Some(
        list.lines()
            .filter_map(|l| l.split_once(':')?.0.parse().ok())
            .collect(),
    )
}

/// Our tracers have all been reaped; the kernel must show no attachment of theirs, and any
/// program loaded since the start and still loaded is named (other users of the machine
/// may have loaded it).
fn check_nothing_left(before: Option<Vec<u32>>) {
    // Programs are released a moment after their last fd closes.
    thread::sleep(Duration::from_millis(500));
    let ours = TRACER_PIDS.lock().map(|p| p.clone()).unwrap_or_default();
    let attached = util::output(Command::new("bpftool").args(["perf", "list"])).unwrap_or_default();
    let still: Vec<&str> = attached
        .lines()
        .filter(|l| ours.iter().any(|pid| l.starts_with(&format!("pid {pid} "))))
        .collect();
    if !still.is_empty() {
        eprintln!("bench: WARNING: probes of our tracers still attached: {still:?}");
    }
    let (Some(before), Some(after)) = (before, bpf_program_ids()) else {
        eprintln!("bench: bpftool prog list failed: could not check for leftovers");
        return;
    };
    let new: Vec<u32> = after
        .into_iter()
        .filter(|id| !before.contains(id))
        .collect();
    match new.is_empty() && still.is_empty() {
        true => eprintln!("bench: nothing left loaded or attached"),
        false => eprintln!(
            "bench: {} BPF programs loaded since the start are still loaded (ids {new:?}); none \
             is attached by a tracer of ours unless listed above",
            new.len()
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// The report

/// Medians and extremes of one configuration on one workload.
struct Row {
    config: Config,
    ns: Vec<f64>,
    ratio: Vec<f64>,
    loop_minflt: Vec<f64>,
    expected: Vec<f64>,
    delivered: Vec<f64>,
    /// expected - delivered, per run
    missing: Vec<f64>,
    lost: Vec<f64>,
    cpu_tracing_ms: Vec<f64>,
    cpu_total_ms: Vec<f64>,
    rss_mib: Vec<f64>,
    attach_ms: Vec<f64>,
    wakeups_per_1k: Vec<f64>,
    ipis_per_fault: Vec<f64>,
    others_percent: Vec<f64>,
}

impl Matrix {
    fn samples_of(&self, variant: usize, config: Config) -> impl Iterator<Item = &Sample> {
        self.samples
            .iter()
            .filter(move |s| s.variant == variant && s.config == config)
    }

    fn untraced_ns(&self, variant: usize, round: usize) -> Option<f64> {
        self.samples_of(variant, Config::Untraced)
            .find(|s| s.round == round)
            .map(|s| s.outcome.ns_per_fault)
    }

    fn row(&self, variant: usize, config: Config) -> Row {
        let mut row = Row {
            config,
            ns: vec![],
            ratio: vec![],
            loop_minflt: vec![],
            expected: vec![],
            delivered: vec![],
            missing: vec![],
            lost: vec![],
            cpu_tracing_ms: vec![],
            cpu_total_ms: vec![],
            rss_mib: vec![],
            attach_ms: vec![],
            wakeups_per_1k: vec![],
            ipis_per_fault: vec![],
            others_percent: vec![],
        };
        for sample in self.samples_of(variant, config) {
            let o = &sample.outcome;
            row.ns.push(o.ns_per_fault);
            // Against the untraced run of the same round: robust to drift between rounds.
            if let Some(base) = self.untraced_ns(variant, sample.round) {
                row.ratio.push(o.ns_per_fault / base);
            }
            row.loop_minflt.push(o.loop_minflt as f64);
            row.expected.push(o.expected as f64);
            row.ipis_per_fault
                .push(o.ipis as f64 / o.expected.max(1) as f64);
            row.others_percent.push(sample.others * 100.0);
            let Some(t) = &sample.tracer else { continue };
            if let Some(d) = t.delivered {
                row.delivered.push(d as f64);
                row.missing.push(o.expected as f64 - d as f64);
            }
            if let Some(lost) = t.lost {
                row.lost.push(lost as f64);
            }
            row.cpu_tracing_ms.push(t.cpu_tracing.as_secs_f64() * 1e3);
            row.cpu_total_ms.push(t.cpu_total.as_secs_f64() * 1e3);
            row.rss_mib.push(t.peak_rss_kib as f64 / 1024.0);
            row.attach_ms.push(t.attach.as_secs_f64() * 1e3);
            row.wakeups_per_1k
                .push(t.wakeups as f64 * 1000.0 / o.expected.max(1) as f64);
        }
        row
    }
}

fn median(values: &[f64]) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(sorted[n / 2]),
        _ => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2.0),
    }
}

fn max(values: &[f64]) -> Option<f64> {
    values.iter().copied().reduce(f64::max)
}

fn min(values: &[f64]) -> Option<f64> {
    values.iter().copied().reduce(f64::min)
}

/// A figure with `decimals` places, or "–" when there is none.
fn fig(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(|| "–".to_string(), |v| format!("{v:.decimals$}"))
}

fn render(tools: &Tools, matrix: Option<&Matrix>, soak: Option<&Soak>, kept: &str) -> String {
    let mut out = String::new();
    let _ = render_header(&mut out, tools, matrix, soak);
    if let Some(matrix) = matrix {
        let _ = render_matrix(&mut out, matrix);
        let _ = render_targets(&mut out, matrix, soak);
    }
    if let Some(soak) = soak {
        let _ = render_soak(&mut out, soak);
    }
    let _ = render_method(&mut out, tools);
    out.push('\n');
    out.push_str(NOTES_MARKER);
    out.push('\n');
    out.push_str(kept);
    out
}

/// What followed the marker in the existing report.
fn kept_notes(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    text.split_once(NOTES_MARKER)
        .map(|(_, notes)| notes.trim_start_matches('\n').to_string())
        .unwrap_or_default()
}

fn render_header(
    out: &mut String,
    tools: &Tools,
    matrix: Option<&Matrix>,
    soak: Option<&Soak>,
) -> std::fmt::Result {
    writeln!(out, "# Benchmarks\n")?;
    writeln!(
        out,
        "Generated by `cargo xtask bench` (issues 4 and 5); regenerate it with the same command. \
         Figures are from one machine and one session: compare ratios, not absolute times.\n"
    )?;
    writeln!(out, "| | |\n|---|---|")?;
    writeln!(
        out,
        "| date | {} |",
        first_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"])
    )?;
    writeln!(out, "| machine | {} |", machine())?;
    writeln!(out, "| kernel | {} |", first_line("uname", &["-r"]))?;
    writeln!(out, "| CPU mitigations | {} |", mitigations())?;
    writeln!(out, "| cow-trace | {} |", tools.revision)?;
    writeln!(
        out,
        "| peers | {}; perf {} |",
        first_line("bpftrace", &["--version"]),
        first_line("perf", &["version"]).trim_start_matches("perf version ")
    )?;
    let phases = [
        ("runs", matrix.map(|m| &m.load)),
        ("soak", soak.map(|s| &s.load)),
    ];
    for (phase, load) in phases {
        if let Some(load) = load {
            writeln!(
                out,
                "| load during the {phase} | {:.0} s; processes not ours used {:.0}% of one CPU, \
                 the hypervisor stole {:.1}% |",
                load.seconds,
                load.others * 100.0,
                load.steal * 100.0
            )?;
        }
    }
    writeln!(out)
}

/// The first line a command prints, or "?".
fn first_line(program: &str, args: &[&str]) -> String {
    util::output(Command::new(program).args(args))
        .and_then(|s| s.lines().next().map(|l| l.trim().to_string()))
        .unwrap_or_else(|| "?".to_string())
}

/// Version, commit, and whether the sources of the binary differed from the commit.
fn revision(cow_trace: &Path) -> String {
    let root = util::root().to_string_lossy().into_owned();
    let git = |args: &[&str]| util::output(Command::new("git").args(["-C", &root]).args(args));
    let commit = git(&["rev-parse", "--short", "HEAD"]).unwrap_or_default();
    let sources = [
        "cow-trace/src",
        "cow-trace/build.rs",
        "cow-trace/Cargo.toml",
        "cow-trace-ebpf",
        "cow-trace-common",
        "Cargo.lock",
    ];
    let changed = git(&[&["status", "--porcelain", "--"], &sources[..]].concat())
        .map_or(0, |s| s.lines().count());
    let state = match changed {
        0 => "clean".to_string(),
        n => format!("with uncommitted changes to {n} source files"),
    };
    let version = first_line(&cow_trace.to_string_lossy(), &["--version"]);
    format!("{version}, commit {} ({state})", commit.trim())
}

fn machine() -> String {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "unknown CPU".to_string());
    let cpus = thread::available_parallelism().map_or(0, |n| n.get());
    let memory = status_line("/proc/meminfo", "MemTotal:").map_or_else(
        || "?".to_string(),
        |kib| format!("{:.0} GiB", kib as f64 / 1048576.0),
    );
    let virt = match cpuinfo.contains(" hypervisor") {
        true => ", a virtual machine",
        false => "",
    };
    format!("{model}, {cpus} CPUs, {memory} RAM{virt}")
}

/// The kernel's mitigations that tax every call, return and indirect branch in kernel code,
/// so every hook: a tracer's cost differs between machines that differ here.
fn mitigations() -> String {
    ["spectre_v2", "spec_rstack_overflow", "retbleed"]
        .iter()
        .filter_map(|name| {
            let path = format!("/sys/devices/system/cpu/vulnerabilities/{name}");
            let state = fs::read_to_string(path).ok()?;
            Some(format!("{name}: {}", state.trim()))
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn status_line(path: &str, key: &str) -> Option<u64> {
    let text = fs::read_to_string(path).ok()?;
    let line = text.lines().find(|l| l.starts_with(key))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn render_matrix(out: &mut String, matrix: &Matrix) -> std::fmt::Result {
    writeln!(out, "## Results\n")?;
    writeln!(
        out,
        "Medians of {} runs per cell. **× untraced** is the median, over rounds, of the ratio to \
         the untraced run of the same round. **expected** is the kernel's own minflt count for \
         the measured process while the tracer was attached; **delivered** is what reached the \
         tracer's output; **missing** is the largest expected − delivered of any run, **lost** \
         the largest loss count the tracer itself reported. **CPU** is the tracer's user+system \
         time after it was ready (in brackets: including start-up); **RSS** its peak resident \
         memory; **attach** the time from its start to its readiness sign. **wake-ups** counts the \
         tracer's voluntary context switches after it was ready (each a sleep and a wake-up), \
         per 1000 expected faults; **IPIs** the inter-processor interrupts of the whole machine \
         (IRQ work, rescheduling, function call, TLB shootdown) during the loop, per fault: on \
         a virtual machine each is an exit to the hypervisor. **others %** is the most CPU that \
         processes not started by the bench used during any one run, in % of one CPU: noise.\n",
        matrix.rounds
    )?;
    for (v, variant) in matrix.variants.iter().enumerate() {
        writeln!(out, "### {}\n", variant.title())?;
        writeln!(
            out,
            "| configuration | ns/fault (min–max) | × untraced | expected | delivered | missing | lost | CPU ms | RSS MiB | attach ms | wake-ups /1k faults | IPIs /fault | others % |"
        )?;
        writeln!(out, "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")?;
        for &config in &matrix.configs {
            render_row(out, &matrix.row(v, config))?;
        }
        writeln!(out)?;
    }
    Ok(())
}

fn render_row(out: &mut String, row: &Row) -> std::fmt::Result {
    let traced = row.config != Config::Untraced;
    let when_traced = |value: String| if traced { value } else { "".to_string() };
    writeln!(
        out,
        "| {} | {} ({}–{}) | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
        row.config.label(),
        fig(median(&row.ns), 0),
        fig(min(&row.ns), 0),
        fig(max(&row.ns), 0),
        fig(median(&row.ratio), 2),
        fig(median(&row.expected), 0),
        when_traced(fig(median(&row.delivered), 0)),
        when_traced(fig(max(&row.missing), 0)),
        when_traced(fig(max(&row.lost), 0)),
        when_traced(format!(
            "{} ({})",
            fig(median(&row.cpu_tracing_ms), 0),
            fig(median(&row.cpu_total_ms), 0)
        )),
        when_traced(fig(median(&row.rss_mib), 1)),
        when_traced(fig(median(&row.attach_ms), 0)),
        when_traced(fig(median(&row.wakeups_per_1k), 0)),
        fig(median(&row.ipis_per_fault), 2),
        fig(max(&row.others_percent), 0),
    )
}

/// The largest median absolute deviation, relative to the median, of runs that still judge a
/// speed target: robust to one outlier in five, not to a cell whose runs are bimodal.
const NOISY: f64 = 0.10;

/// The runs are steady enough to judge a target on their median.
fn steady(values: &[f64]) -> bool {
    let Some(middle) = median(values) else {
        return false;
    };
    let deviations: Vec<f64> = values.iter().map(|v| (v - middle).abs()).collect();
    median(&deviations).is_some_and(|mad| mad <= NOISY * middle)
}

/// One line of the targets table: what, the figure, met or not (None: not measured, or the
/// runs too noisy to judge).
fn verdict(out: &mut String, target: &str, figure: String, met: Option<bool>) -> std::fmt::Result {
    let met = match met {
        Some(true) => "**met**",
        Some(false) => "**missed**",
        None => "not judged",
    };
    writeln!(out, "| {target} | {figure} | {met} |")
}

fn render_targets(out: &mut String, matrix: &Matrix, soak: Option<&Soak>) -> std::fmt::Result {
    writeln!(out, "## Targets (issue 4)\n")?;
    writeln!(
        out,
        "A speed verdict needs steady runs: where the untraced runs of a workload, or a \
         configuration's ratios, stray from their median by more than {:.0}% (median absolute \
         deviation), that target is not judged.\n",
        NOISY * 100.0
    )?;
    writeln!(out, "| target | measured | |\n|---|---|---|")?;
    let cow_variants: Vec<usize> = (0..matrix.variants.len())
        .filter(|&v| matrix.variants[v].mode == "cow")
        .collect();
    for &v in &cow_variants {
        let mib = matrix.variants[v].mib;
        let reference_steady = steady(&matrix.row(v, Config::Untraced).ns);
        // A speed target is judged only on steady runs, traced and untraced.
        let judge =
            |ratios: &[f64], met: Option<bool>| met.filter(|_| reference_steady && steady(ratios));
        for config in matrix.configs.iter().copied().filter(|c| c.is_streaming()) {
            let row = matrix.row(v, config);
            let ratio = median(&row.ratio);
            verdict(
                out,
                &format!("{}, {mib} MiB: at most 1.25× untraced", config.label()),
                ratio_and_floor(matrix, v, config, ratio),
                judge(&row.ratio, ratio.map(|r| r <= 1.25)),
            )?;
            let lost = max(&row.lost)
                .unwrap_or(0.0)
                .max(max(&row.missing).unwrap_or(0.0));
            verdict(
                out,
                &format!("{}, {mib} MiB: no event lost, default ring", config.label()),
                format!(
                    "lost at most {}, missing at most {} per run",
                    fig(max(&row.lost), 0),
                    fig(max(&row.missing), 0)
                ),
                Some(lost <= 0.0 && !row.missing.is_empty()),
            )?;
        }
        for config in [Config::CowSummary, Config::CowSummaryUntimed] {
            if !matrix.configs.contains(&config) {
                continue;
            }
            let ratios = matrix.row(v, config).ratio;
            let ratio = median(&ratios);
            verdict(
                out,
                &format!("{}, {mib} MiB: at most 1.05× untraced", config.label()),
                ratio_and_floor(matrix, v, config, ratio),
                judge(&ratios, ratio.map(|r| r <= 1.05)),
            )?;
        }
    }
    let attach: Vec<f64> = matrix
        .configs
        .iter()
        .filter(|c| c.is_cow_trace())
        .flat_map(|&c| (0..matrix.variants.len()).flat_map(move |v| matrix.row(v, c).attach_ms))
        .collect();
    verdict(
        out,
        "cow-trace ready within 150 ms of its start",
        format!(
            "median {} ms, slowest {} ms",
            fig(median(&attach), 0),
            fig(max(&attach), 0)
        ),
        max(&attach).map(|a| a <= 150.0),
    )?;
    let (figure, flat) = match soak {
        Some(soak) => soak_flatness(soak),
        None => ("no soak in this run (`--soak 600`)".to_string(), None),
    };
    verdict(out, "tracer memory flat over a long run", figure, flat)?;
    writeln!(out)
}

/// "1.50×", followed by what the configuration's hooks alone cost, when the run measured it.
fn ratio_and_floor(matrix: &Matrix, variant: usize, config: Config, ratio: Option<f64>) -> String {
    let floor = config
        .floor()
        .filter(|f| matrix.configs.contains(f))
        .and_then(|f| median(&matrix.row(variant, f).ratio));
    match floor {
        Some(floor) => format!("{}× (its hooks alone: {floor:.2}×)", fig(ratio, 2)),
        None => format!("{}×", fig(ratio, 2)),
    }
}

/// RSS growth from the end of the first tenth of the soak to its end: flat means under 1 MiB.
fn soak_flatness(soak: &Soak) -> (String, Option<bool>) {
    let warm = soak.samples.len() / 10;
    let (Some(first), Some(last)) = (soak.samples.get(warm), soak.samples.last()) else {
        return ("too few RSS samples".to_string(), None);
    };
    let growth = last.1 as f64 - first.1 as f64;
    (
        format!(
            "RSS {:.1} MiB at {:.0} s, {:.1} MiB at {:.0} s ({:+.0} KiB)",
            first.1 as f64 / 1024.0,
            first.0.as_secs_f64(),
            last.1 as f64 / 1024.0,
            last.0.as_secs_f64(),
            growth
        ),
        Some(growth < 1024.0),
    )
}

fn render_soak(out: &mut String, soak: &Soak) -> std::fmt::Result {
    writeln!(out, "## Soak (issue 5)\n")?;
    let lost = soak.lost.unwrap_or(0);
    let missing = soak.delivered.map(|d| soak.expected as i64 - d as i64);
    writeln!(
        out,
        "cow-trace (text to /dev/null) on `bench_cow soak {s} {r} {m}`: for {s} s the workload \
         forks one child after another ({c} in all, one at a time); each writes the {m} MiB it \
         inherited and exits, paced to one schedule of {r} COW faults/s for the whole soak (a \
         child catches up the time lost forking and exiting). A tracer that slows each fault \
         too much lowers the rate reached.\n",
        s = soak.seconds,
        r = soak.rate,
        m = soak.mib,
        c = soak.children,
    )?;
    writeln!(out, "| | |\n|---|---|")?;
    writeln!(
        out,
        "| faults (kernel's count, children) | {} in {:.0} s ({:.0}/s) |",
        soak.expected,
        soak.elapsed.as_secs_f64(),
        soak.expected as f64 / soak.elapsed.as_secs_f64().max(1e-3)
    )?;
    writeln!(out, "| delivered | {} |", optional(soak.delivered))?;
    writeln!(
        out,
        "| missing / lost (reported) | {} / {lost} |",
        missing.map_or_else(|| "?".to_string(), |m| m.to_string())
    )?;
    writeln!(out, "| attach | {} ms |", soak.attach.as_millis())?;
    let busy = soak.cpu_total.as_secs_f64() / soak.elapsed.as_secs_f64().max(1e-3) * 100.0;
    writeln!(
        out,
        "| tracer CPU | {:.1} s ({busy:.1}% of one CPU) |",
        soak.cpu_total.as_secs_f64()
    )?;
    writeln!(
        out,
        "| tracer peak RSS | {:.1} MiB |",
        soak.peak_rss_kib as f64 / 1024.0
    )?;
    let (figure, _) = soak_flatness(soak);
    writeln!(out, "| RSS over the run | {figure} |\n")?;
    writeln!(out, "| time s | RSS MiB | CPU s |\n|--:|--:|--:|")?;
    let step = soak.samples.len().div_ceil(12).max(1);
    let last = soak.samples.len().saturating_sub(1);
    for (i, (at, rss, cpu)) in soak.samples.iter().enumerate() {
        if i % step == 0 || i == last {
            writeln!(
                out,
                "| {:.0} | {:.2} | {:.1} |",
                at.as_secs_f64(),
                *rss as f64 / 1024.0,
                cpu.as_secs_f64()
            )?;
        }
    }
    writeln!(out)
}

fn render_method(out: &mut String, tools: &Tools) -> std::fmt::Result {
    let summary_note = if tools.has_summary {
        "`cow-trace --summary -x ROOT`"
    } else {
        "`cow-trace --summary` (skipped: this build has no `--summary`)"
    };
    writeln!(
        out,
        "## Method\n\n\
         - **Workload** (`cow-trace/tests/workloads/bench_cow.c`): the root maps private \
         anonymous memory in 4 KiB pages (`MADV_NOHUGEPAGE`), writes every page, and forks; the \
         child writes one byte per page, so each write is one COW fault, and times that loop with \
         `CLOCK_MONOTONIC`: ns/fault = loop time ÷ pages. First-touch variant: the child maps \
         fresh memory instead (no fork-shared pages). Threads variant: the child's threads, \
         started beforehand and held at a barrier, write disjoint slices; ns/fault is wall time \
         ÷ pages.\n\
         - **Synchronisation**: the child prints its pid and blocks on stdin. The harness starts \
         the tracer, waits for its readiness sign, waits {settle} ms more (every configuration, \
         untraced included), then releases the loop.\n\
         - **Readiness signs** (attach = tracer start to this): cow-trace's `Tracing ...` line; \
         bpftrace's `Attaching N probes...` line *and* `bpftool perf list` showing its \
         tracepoint attached; perf trace prints nothing, so: blocked in poll(2) with perf events \
         open (it enables its events just before its first poll).\n\
         - **What each traces**: cow-trace `-x ROOT` (the workload's root; it follows the tree, \
         and finds the already-forked child); bpftrace \
         `tracepoint:exceptions:page_fault_user /pid == CHILD/` printing pid, tid, address, ip \
         and error code per fault to a file (`-o`); `perf trace --no-syscalls --pf=min -p CHILD \
         -o FILE`. The root only waits in wait4 meanwhile, so all see the same faults. \
         Configurations: `cow-trace -x ROOT` with text to /dev/null, `cow-trace --json -o FILE \
         -x ROOT`, {summary_note}, and `--no-latency` with text to /dev/null and with \
         `--summary`, all with the default ring size.\n\
         - **Floors**: `cow-trace/examples/hook_floor.rs` attaches programs that do nothing \
         where the tracepoint backend attaches its per-fault programs: the fault-entry and \
         page-allocation raw tracepoints (`--no-latency`'s hooks), and with `--timed` also the \
         PAGE_FAULTS_MIN/MAJ perf events on every CPU (the timed hooks). What a cow-trace row \
         costs above its floor is cow-trace's own work; the floor is what the kernel charges \
         for calling any program there, so no tracer on those hooks can do better.\n\
         - **Expected events**: the kernel's own count. The child reads its `ru_minflt` just \
         before blocking; the root reads the child's lifetime `ru_minflt` from wait4; the \
         difference is every fault the child took while the tracer was attached (the loop plus a \
         few around it).\n\
         - **Delivered**: cow-trace text: the FAULTS column of its exit table for the child; \
         JSON: fault objects with the child's pid; bpftrace and perf trace: their lines. \
         **Lost**: cow-trace's `Lost events` / `\"lost\"`, bpftrace's `Lost N events`, perf's \
         `LOST N events!`. A few faults the kernel takes on a process's behalf (through \
         get_user_pages or fixup_user_fault) count in minflt but fire neither the exception \
         tracepoint nor the perf event: no tracer here can see them, so a handful missing for \
         every tracer alike (the threads variant) is that, not a loss.\n\
         - **Stopping**: cow-trace and perf trace end by themselves when their target is gone; \
         bpftrace gets SIGINT once its output has been unchanged for {quiet} ms. CPU and peak \
         RSS come from wait4's rusage of the tracer; CPU at readiness from /proc/PID/stat.\n\
         - **Order**: every round runs every workload under every configuration, the \
         configurations rotated one place per round, after one unmeasured untraced run of that \
         workload (a warm-up). Nothing is pinned. The harness checks \
         `bpftool prog list` afterwards so nothing stays loaded.",
        settle = SETTLE.as_millis(),
        quiet = QUIET.as_millis(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn steadiness() {
        // One outlier in five is steady; a bimodal cell is not.
        assert!(steady(&[1731.0, 1769.0, 1771.0, 1839.0, 2771.0]));
        assert!(!steady(&[1.7, 1.8, 3.4, 3.5, 5.2]));
        assert!(!steady(&[]));
    }

    #[test]
    fn cow_trace_table() {
        let text = "Tracing pid 10 and its children (backend: tracepoint). Ctrl-C to end.\n\
            \x20   PID COMM                FAULTS     MINOR   MAJOR    WRITES       COW INCOMPLETE   AVG LAT\n\
            \x20    10 bench_cow               13        13       0         8         8          0     3.2us\n\
            \x20    11 bench_cow            65541     65541       0     65536     65536          0     2.5us\n\
            Lost events: 7 (ring buffer full: 7; entries not remembered: 0; children not followed: 0)\n";
        let counted = count_cow_table(text.as_bytes(), 11).unwrap();
        assert_eq!(counted, (Some(65541), Some(7)));
        // A table without a row for the pid: nothing delivered.
        assert_eq!(
            count_cow_table(text.as_bytes(), 12).unwrap(),
            (Some(0), Some(7))
        );
        let mappings =
            format!("{text}\n    PID MAPPING   CLASS   FAULTS\n     11 [anon]    cow     65536\n");
        let counted = count_cow_table(mappings.as_bytes(), 11).unwrap();
        assert_eq!(counted, (Some(65541), Some(7)));
        assert_eq!(count_soak_table(text, 10), (Some(65541), Some(7)));
    }

    #[test]
    fn cow_trace_json() {
        let text = "{\"v\":1,\"event\":\"fault\",\"pid\":11,\"tid\":11}\n\
            {\"v\":1,\"event\":\"fault\",\"pid\":12,\"tid\":12}\n\
            {\"v\":1,\"event\":\"totals\",\"faults\":2,\"lost\":3,\"lost_detail\":{}}\n";
        assert_eq!(
            count_cow_json(text.as_bytes(), 11).unwrap(),
            (Some(1), Some(3))
        );
    }

    #[test]
    fn peers_output() {
        let bpftrace = "Attaching 1 probe...\n11 11 7f 7f 7\n12 12 7f 7f 7\n\nLost 5 events\n";
        assert_eq!(
            count_bpftrace(bpftrace.as_bytes(), 11).unwrap(),
            (Some(1), Some(5))
        );
        let perf = "0.1 ( 0.000 ms): minfault [f+0x1] => 0x7f (?.)\nLOST 9 events!\n";
        assert_eq!(count_perf(perf.as_bytes()).unwrap(), (Some(1), Some(9)));
    }

    #[test]
    fn workload_fields() {
        let f = fields("pid=3 ns_per_fault=2081.6 loop_minflt=65539");
        assert_eq!(number(&f, "ns_per_fault").unwrap(), 2081.6);
        assert!(number(&f, "missing").is_err());
    }
}
