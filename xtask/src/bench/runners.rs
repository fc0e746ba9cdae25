//! The tracers: started on a workload, watched until attached, stopped once everything is
//! delivered, and their cost and deliveries taken.
use std::{
    fs,
    io::{BufRead, BufReader, Read},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::{
    QUIET, SELF_STOP,
    configs::{Config, Tools},
    counting::{count_bpftrace, count_cow_json, count_cow_table, count_perf, count_perf_record},
    leftovers::TRACER_PIDS,
    load::{cpu_so_far, status_number},
    workloads::Workload,
};
use crate::{
    process::{Guarded, Reaped},
    util,
};

/// What a tracer cost and delivered in one run.
#[derive(Clone, Debug)]
pub struct TracerStats {
    pub attach: Duration,
    /// CPU from readiness to exit: the cost of tracing, without start-up.
    pub cpu_tracing: Duration,
    pub cpu_total: Duration,
    pub peak_rss_kib: u64,
    /// Times the tracer was woken after it was ready.
    pub wakeups: u64,
    /// Events of the measured process that reached the tracer's output.
    pub delivered: Option<u64>,
    /// Losses the tracer itself reported.
    pub lost: Option<u64>,
}

pub struct Tracer {
    config: Config,
    process: Guarded,
    started: Instant,
    pub attach: Duration,
    cpu_at_ready: Duration,
    sleeps_at_ready: u64,
    /// The tracer's event output, when it goes to a file we read back.
    events: Option<PathBuf>,
    stderr: mpsc::Receiver<String>,
    pub stderr_text: String,
}

impl Tracer {
    /// Starts the tracer for `config` on the workload and returns once it is attached.
    pub fn start(config: Config, tools: &Tools, workload: &Workload) -> anyhow::Result<Tracer> {
        Tracer::start_on(config, tools, workload.root(), workload.target)
    }

    /// Starts the tracer for `config` on a process tree: cow-trace follows `root`'s; bpftrace
    /// and perf trace watch `target`.
    pub fn start_on(
        config: Config,
        tools: &Tools,
        root: u32,
        target: u32,
    ) -> anyhow::Result<Tracer> {
        let events = tools.scratch.join(format!("{}.out", config.name()));
        let _ = fs::remove_file(&events);
        let mut command = tracer_command(config, tools, root, target, &events)?;
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
            process: Guarded::new(child, config.label()),
            started,
            attach: Duration::ZERO,
            cpu_at_ready: Duration::ZERO,
            sleeps_at_ready: 0,
            events: (!matches!(config, Config::CowText | Config::CowUntimed)
                && !config.takes_stacks()
                && !config.is_floor())
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

    pub fn pid(&self) -> u32 {
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
            c if c.is_cow_trace() || c.is_floor() => {
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
            Config::PerfTrace | Config::PerfRecordDwarf => perf_polling(self.pid()),
            _ => unreachable!("every configuration has a readiness sign"),
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
    pub fn drain_stderr(&mut self) {
        while let Ok(line) = self.stderr.recv() {
            self.stderr_text.push_str(&line);
            self.stderr_text.push('\n');
        }
    }

    /// Stops a tracer whose target lives on: SIGINT at once, then as [`Tracer::stop`].
    pub fn interrupt(self, target: u32) -> anyhow::Result<TracerStats> {
        self.process.signal(libc::SIGINT);
        self.stop(target)
    }

    /// Lets the tracer deliver everything, stops it, and counts what it delivered for `target`.
    pub fn stop(mut self, target: u32) -> anyhow::Result<TracerStats> {
        let reaped = self.wait_until_done()?;
        self.drain_stderr();
        if !reaped.status.success()
            && !matches!(
                self.config,
                Config::Bpftrace | Config::PerfTrace | Config::PerfRecordDwarf
            )
        {
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
    pub fn wait_until_done(&mut self) -> anyhow::Result<Reaped> {
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
            | Config::CowSummaryUntimed
            | Config::CowStackFp
            | Config::CowStackFpAll
            | Config::CowStackDwarf
            | Config::CowStackDwarfAll => count_cow_table(output.chain(stderr), target)?,
            Config::CowJson => count_cow_json(output, target)?,
            Config::Bpftrace => count_bpftrace(output.chain(stderr), target)?,
            Config::PerfTrace => count_perf(output.chain(stderr))?,
            Config::PerfRecordDwarf => count_perf_record(self.events.as_deref())?,
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
    root: u32,
    target: u32,
    events: &Path,
) -> anyhow::Result<Command> {
    let (root, target) = (root.to_string(), target.to_string());
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
        Config::CowStackFp => command.args(["--stack=fp", "-x", &root]),
        Config::CowStackFpAll => command.args(["--stack=fp", "--stack-faults", "all", "-x", &root]),
        Config::CowStackDwarf => command.args(["--stack", "-x", &root]),
        Config::CowStackDwarfAll => command.args(["--stack", "--stack-faults", "all", "-x", &root]),
        // Every fault (-c 1), as cow-trace sees every fault; perf's default stack size (8 KiB).
        Config::PerfRecordDwarf => command
            .args([
                "record",
                "--call-graph",
                "dwarf",
                "-e",
                "page-faults",
                "-c",
                "1",
            ])
            .args(["-p", &target, "-o"])
            .arg(events),
        // The completion events on the traced tree, as cow-trace -x opens them.
        Config::FloorUntimed => command.arg(&root),
        Config::FloorTimed => command.args(["--timed", &root]),
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
pub fn forward_lines(from: impl Read + Send + 'static) -> mpsc::Receiver<String> {
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
