//! One tracing run: attach, follow the process tree, stream (or count) faults, summarise.
use std::{
    collections::{HashMap, HashSet},
    io,
    path::PathBuf,
    time::Duration,
};

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    cli::{BackendChoice, Format},
    enrich::{self, Enricher, Retention},
    event::{Change, Event, Lost, ProcessEvent},
    failure::{Kind, failure},
    kernel::{
        KernelConfig, kstats,
        mmap_events::MmapEvents,
        probes::Probes,
        ring::{Ring, read_lost},
    },
    output::{
        format::human_bytes,
        plot::FaultPlot,
        sink::{self, Sink, WallClock},
        summary::Summary,
    },
    target::{self, HeldCommand},
};

pub struct Options {
    pub root: u32,
    pub backend: BackendChoice,
    pub format: Format,
    pub duration: Option<Duration>,
    pub verbose: bool,
    /// The ring size and the modes the kernel side is loaded with.
    pub kernel: KernelConfig,
    /// Print the human summary on stderr at the end of a streaming run.
    pub print_summary: bool,
    pub interval: Option<Duration>,
    pub fail_over_cow: Option<u64>,
    /// Resolve mappings and symbols of each fault.
    pub resolve: bool,
    pub plot: Option<PathBuf>,
}

/// Exit status when more than --fail-over-cow was copied.
pub const OVER_COW_LIMIT: i32 = 7;

/// Records taken from the ring at a time: the mapping records are read after each batch, so
/// every mapping its faults were in is known before they are resolved (and often enough that
/// the mapping rings do not fill while a busy stream is handled).
const BATCH: usize = 1024;

/// Why tracing stopped.
#[derive(Debug, PartialEq, Eq)]
enum Stop {
    AllExited,
    Signal(&'static str),
    Duration,
    /// The reader of our output went away (e.g. `| head -1`).
    OutputClosed,
}

/// What the loop keeps about the traced processes.
#[derive(Default)]
struct Tree {
    /// Traced processes still alive.
    live: HashSet<u32>,
    /// Last known command name of each traced process.
    comms: HashMap<u32, String>,
}

impl Tree {
    fn apply(&mut self, event: &ProcessEvent) {
        match event.change {
            Change::Fork { child } => {
                self.live.insert(child);
                // A child starts with its parent's name; exec may change it later.
                self.comms.insert(child, event.comm.clone());
            }
            Change::Exec => {
                self.comms.insert(event.pid, event.comm.clone());
            }
            Change::Exit => {
                self.live.remove(&event.pid);
                self.comms.insert(event.pid, event.comm.clone());
            }
        }
    }

    fn add(&mut self, pid: u32) {
        self.live.insert(pid);
        self.refresh_comm(pid);
    }

    fn refresh_comm(&mut self, pid: u32) {
        if let Ok(comm) = std::fs::read_to_string(format!("/proc/{pid}/comm")) {
            self.comms.insert(pid, comm.trim_end().to_string());
        }
    }
}

/// Everything one run holds between attaching and detaching (but the ring, drained into it).
struct Session {
    options: Options,
    probes: Probes,
    sink: Box<dyn Sink>,
    tree: Tree,
    /// Streaming: faults are counted here as they arrive. --summary: only the faults
    /// collected from the kernel's slots at the end (--no-latency), added to its counts.
    streamed: Summary,
    enricher: Enricher,
    /// The kernel's records of the traced processes' mappings (with --resolve, --stack or
    /// --summary, where the perf events could be opened).
    mapping_events: Option<MmapEvents>,
    plot: Option<FaultPlot>,
}

impl Session {
    /// Hands everything the kernel has written to the summary, plot and sink.
    fn drain(&mut self, ring: &mut Ring) -> io::Result<()> {
        loop {
            let mut batch = Vec::new();
            let read = ring.drain(|event| {
                batch.push(event);
                batch.len() < BATCH
            });
            // A mapping is recorded when it is made, before any fault in it: read after the
            // batch, the records cover every fault in it.
            self.read_mappings();
            for event in batch {
                self.handle(event)?;
            }
            if read < BATCH {
                break;
            }
        }
        self.sink.flush()
    }

    /// Hands the mapping records written so far to the history.
    fn read_mappings(&mut self) {
        if let Some(events) = self.mapping_events.as_mut() {
            self.enricher.add_records(events.drain());
        }
    }

    /// Reads the mapping records; with --summary, whose counts are resolved against the last
    /// mappings, applies them at once. Streaming applies each when a fault after it is
    /// resolved, however far behind the stream is (the history bounds how many wait).
    fn settle_mappings(&mut self) {
        self.read_mappings();
        if self.options.kernel.summary {
            self.enricher.settle_until(u64::MAX);
        }
    }

    /// Everything lost so far, by the eBPF programs and the mapping events.
    fn lost(&self) -> anyhow::Result<Lost> {
        let mut lost = read_lost(&self.probes)?;
        lost.mapping_records = self.mapping_events.as_ref().map_or(0, MmapEvents::lost);
        Ok(lost)
    }

    fn handle(&mut self, event: Event) -> io::Result<()> {
        let Session {
            options,
            probes,
            sink,
            tree,
            streamed,
            enricher,
            plot,
            ..
        } = self;
        match event {
            Event::Fault(mut fault) => {
                // Streamed faults resolve as at their time; with --summary only the faults
                // collected at the end come here, labelled as the kernel's counts are.
                let at = (!options.kernel.summary).then(|| enrich::fault_time(&fault));
                if options.kernel.summary {
                    fault.mapping = Some(enricher.mapping_label(fault.pid, fault.address));
                } else if options.resolve {
                    enricher.resolve(&mut fault);
                }
                if let Some(stack_id) = fault.stack_id {
                    fault.stack =
                        enricher.stack(fault.pid, stack_id, at, |id| probes.stack_ips(id));
                }
                streamed.record(&fault);
                if let Some(plot) = plot.as_mut() {
                    plot.add_fault(&fault);
                }
                if options.kernel.summary {
                    return Ok(());
                }
                sink.fault(&fault)
            }
            Event::Process(process) => {
                tree.apply(&process);
                // The history follows forks and execs from the kernel's mapping records.
                match process.change {
                    Change::Fork { child } => enricher.on_new_program(child),
                    Change::Exec => enricher.on_new_program(process.pid),
                    Change::Exit => enricher.on_exit(process.pid, process.ts_ns),
                }
                if options.kernel.summary {
                    return Ok(());
                }
                sink.process(&process)
            }
        }
    }

    /// Untimed (--no-latency), each thread's last fault waits in the kernel until the thread
    /// goes on: at the end, those are final. The programs must be detached.
    fn collect_deferred(&mut self) -> io::Result<()> {
        let records = match self.probes.deferred_faults() {
            Ok(records) => records,
            Err(error) => {
                eprintln!("cow-trace: the last fault of each thread is missing: {error:#}");
                return Ok(());
            }
        };
        for record in &records {
            if let Some(event) = crate::event::from_record(record) {
                self.handle(event)?;
            }
        }
        self.sink.flush()
    }

    /// The totals so far: the kernel's (in --summary mode) or the streamed ones, with
    /// mappings and stacks resolved.
    fn totals(&mut self) -> anyhow::Result<Summary> {
        let mut summary = if self.options.kernel.summary {
            let mut summary = Summary::default();
            let counts = kstats::read(&self.probes)?;
            for (key, value) in &counts.stats {
                summary.add(
                    key.pid,
                    key.class,
                    key.window,
                    value.faults,
                    value.timed,
                    value.latency_ns,
                );
                if let Ok(stack_id) = u32::try_from(key.stack_id) {
                    summary.add_stack(key.pid, stack_id, key.class, value.faults);
                }
                // Each region is labelled by the mapping of its first faulting address.
                let label = self.enricher.mapping_label(key.pid, value.sample_address);
                *summary
                    .mappings
                    .entry((key.pid, label, key.class))
                    .or_default() += value.faults;
            }
            for (key, hist) in counts.hists {
                summary.hists.insert((key.pid, key.class), hist.buckets);
            }
            summary.merge(&self.streamed);
            summary
        } else {
            self.streamed.clone()
        };
        for (pid, comm) in &self.tree.comms {
            summary.comms.entry(*pid).or_insert_with(|| comm.clone());
        }
        for ((pid, stack_id), _) in summary.top_stacks(10) {
            let probes = &self.probes;
            let frames = self
                .enricher
                .stack(pid, stack_id, None, |id| probes.stack_ips(id));
            summary.stack_frames.insert((pid, stack_id), frames);
        }
        summary.lost = self.lost()?;
        Ok(summary)
    }

    /// Prints the totals so far: into the output in --summary mode, else on stderr.
    fn report(&mut self) -> anyhow::Result<io::Result<()>> {
        let live: Vec<u32> = self.tree.live.iter().copied().collect();
        for pid in live {
            self.tree.refresh_comm(pid);
        }
        self.read_mappings();
        let summary = self.totals()?;
        if self.options.kernel.summary {
            Ok(self.sink.summary(&summary).and_then(|()| self.sink.flush()))
        } else {
            let _ = summary.write_table(&mut io::stderr().lock());
            Ok(Ok(()))
        }
    }
}

/// Runs until every traced process has exited, a signal arrives or the duration is over.
/// Returns the exit status: the held command's own, else 0 (or 7 over --fail-over-cow).
pub async fn run(
    options: Options,
    mut held: Option<HeldCommand>,
    out: Box<dyn io::Write>,
) -> anyhow::Result<i32> {
    let mut probes = Probes::load(&options.kernel)?;
    // The root joins the map before process-tree tracking attaches; descendants that exist
    // already are found in /proc after it attached, so none slips between the two.
    probes.trace(options.root)?;
    let backend = probes.attach(options.backend, options.verbose)?;
    let mut tree = Tree::default();
    tree.add(options.root);
    for child in target::descendants(options.root as i32) {
        probes.trace(child as u32)?;
        tree.add(child as u32);
    }
    let mut ring = Ring::new(&mut probes)?;
    let retention = if options.kernel.summary {
        Retention::UntilEnd
    } else {
        Retention::UntilExit
    };
    let faults_in_flight =
        options.kernel.ring_size as usize / size_of::<cow_trace_common::Record>();
    let mut enricher = Enricher::new(retention, faults_in_flight);
    let needs_mappings = options.resolve || options.kernel.stacks || options.kernel.summary;
    let mapping_events = if needs_mappings {
        let pids: Vec<u32> = tree.live.iter().copied().collect();
        follow_mappings(&pids, &mut enricher, options.verbose)
    } else {
        None
    };
    let sink = sink::new(options.format, out, WallClock::now(), backend.name());
    // Handlers first: a signal right after the readiness line must end the run cleanly.
    let mut interrupt = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let mut terminate = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut hangup = signal(SignalKind::hangup()).context("SIGHUP handler")?;
    let what = if held.is_some() { "command" } else { "pid" };
    let mode = if options.kernel.summary {
        ", counting in the kernel"
    } else {
        ""
    };
    eprintln!(
        "Tracing {what} {} and its children (backend: {}{mode}). Ctrl-C to end.",
        options.root,
        backend.name()
    );
    if options.verbose && tree.live.len() > 1 {
        eprintln!(
            "cow-trace: following {} existing descendants too",
            tree.live.len() - 1
        );
    }
    let deadline = options.duration.map(|d| tokio::time::Instant::now() + d);
    let mut report = options
        .interval
        .map(|every| tokio::time::interval_at(tokio::time::Instant::now() + every, every));
    let plot = options.plot.as_ref().map(|_| FaultPlot::new());
    let mut session = Session {
        options,
        probes,
        sink,
        tree,
        streamed: Summary::default(),
        enricher,
        mapping_events,
        plot,
    };
    if !session.options.kernel.summary {
        session.sink.begin().map_err(output_error)?;
    }
    if let Some(command) = held.as_mut() {
        command.release()?;
    }

    // The kernel wakes us only once an eighth of the ring is full; this tick drains the rest.
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut reported = Lost::default();

    let stop = loop {
        let step = tokio::select! {
            ready = ring.readable() => {
                ready.context("waiting on the ring buffer")?;
                session.drain(&mut ring)
            }
            ready = mappings_readable(&session.mapping_events) => {
                ready.context("waiting on the mapping rings")?;
                session.read_mappings();
                Ok(())
            }
            _ = tick.tick() => {
                let drained = session.drain(&mut ring);
                session.settle_mappings();
                // Exit records can be lost when the ring is full: /proc has the last word.
                session.tree.live.retain(|&pid| target::is_alive(pid));
                report_new_losses(&session.lost()?, &mut reported);
                drained
            }
            _ = next_tick(&mut report) => session.report()?,
            _ = interrupt.recv() => break Stop::Signal("SIGINT"),
            _ = terminate.recv() => break Stop::Signal("SIGTERM"),
            _ = hangup.recv() => break Stop::Signal("SIGHUP"),
            _ = sleep_until(deadline) => break Stop::Duration,
        };
        match step {
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => break Stop::OutputClosed,
            Err(e) => return Err(output_error(e)),
            Ok(()) => {}
        }
        if session.tree.live.is_empty() {
            break Stop::AllExited;
        }
    };

    // Detach first: nothing changes under the last reads, and nothing waits on us.
    session.probes.detach();
    // What the kernel wrote before we stopped still counts.
    let last = if stop == Stop::OutputClosed {
        Ok(())
    } else {
        session.drain(&mut ring)
    };
    // Losses since the last tick (a short run may end before one) get their line too.
    report_new_losses(&session.lost()?, &mut reported);
    session.read_mappings();
    // So do the faults it holds for --no-latency, each newer than anything in the ring from
    // its thread (after the mapping records are read: their mappings may be new).
    let last = match last {
        Ok(()) if stop != Stop::OutputClosed && session.options.kernel.untimed => {
            session.collect_deferred()
        }
        other => other,
    };
    let summary = session.totals()?;
    if session.options.verbose {
        let (history, open_files) = session.enricher.stats();
        eprintln!(
            "cow-trace: mapping history: {} processes, {} live and {} replaced pieces, at most {} in one process (bound {}), {open_files} files held open",
            history.processes,
            history.live_pieces,
            history.past_pieces,
            history.peak,
            enrich::PIECES_PER_PROCESS
        );
    }
    let Session {
        options,
        probes,
        mut sink,
        plot,
        ..
    } = session;
    drop(ring);
    drop(probes);
    if options.verbose {
        eprintln!("cow-trace: stopped: {stop:?}");
    }

    let output_open = stop != Stop::OutputClosed
        && !matches!(&last, Err(e) if e.kind() == io::ErrorKind::BrokenPipe);
    if output_open {
        last.map_err(output_error)?;
        // Streaming text stays pure event lines; the human table goes to stderr instead.
        let to_output = options.kernel.summary || sink.is_machine_readable();
        if to_output {
            match sink.summary(&summary).and_then(|()| sink.flush()) {
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {}
                other => other.map_err(output_error)?,
            }
        }
    }
    if !options.kernel.summary && options.print_summary {
        let mut stderr = io::stderr().lock();
        let _ = summary.write_table(&mut stderr);
        let _ = summary.write_mappings(&mut stderr);
        let _ = summary.write_stacks(&mut stderr);
    }
    if let (Some(plot), Some(path)) = (plot, &options.plot) {
        let title = format!("cow-trace: pid {} and its children", options.root);
        plot.render_svg(path, &title)
            .map_err(|e| failure(Kind::Output, format!("drawing {}: {e:#}", path.display())))?;
        eprintln!("cow-trace: plot written to {}", path.display());
    }

    let mut status = match held.as_mut() {
        Some(command) => {
            if matches!(stop, Stop::Signal(_) | Stop::Duration | Stop::OutputClosed) {
                command.terminate();
            }
            command.wait()?
        }
        None => 0,
    };
    if let Some(limit) = options.fail_over_cow {
        let copied = summary.total().copied_bytes();
        if copied > limit {
            eprintln!(
                "cow-trace: {} copied on write, over the --fail-over-cow limit of {}",
                human_bytes(copied),
                human_bytes(limit)
            );
            // The traced command's own failure takes precedence.
            if status == 0 {
                status = OVER_COW_LIMIT;
            }
        }
    }
    Ok(status)
}

/// Says on stderr how many events and mapping records were lost since the last report, if any.
fn report_new_losses(lost: &Lost, reported: &mut Lost) {
    if lost.events() > reported.events() {
        eprintln!(
            "cow-trace: LOST {} events (ring buffer full): try a larger --ring-size",
            lost.events() - reported.events()
        );
    }
    if lost.mapping_records > reported.mapping_records {
        eprintln!(
            "cow-trace: LOST {} mapping records (mapping ring full): some addresses may show [unknown]",
            lost.mapping_records - reported.mapping_records
        );
    }
    *reported = *lost;
}

/// Opens the kernel's mapping records for `pids` (alive, traced) and seeds their histories
/// with what they have mapped already. Without the records (the kernel refused the events),
/// mappings are read from /proc/PID/maps while the processes live.
fn follow_mappings(pids: &[u32], enricher: &mut Enricher, verbose: bool) -> Option<MmapEvents> {
    let events = match MmapEvents::open(pids) {
        Ok(events) => Some(events),
        Err(error) => {
            eprintln!(
                "cow-trace: no mapping records ({error:#}): mappings are read from /proc while processes live"
            );
            None
        }
    };
    // After the events are open, so nothing mapped between the two is missed.
    for &pid in pids {
        enricher.seed(pid);
    }
    if let Some(events) = &events {
        if events.unfollowed() > 0 {
            eprintln!(
                "cow-trace: {} threads have no mapping records (over {} events): their mappings are read from /proc while they live",
                events.unfollowed(),
                crate::kernel::mmap_events::MAX_EVENTS
            );
        } else if verbose {
            eprintln!("cow-trace: following mappings with perf mapping records");
        }
    }
    events
}

async fn mappings_readable(events: &Option<MmapEvents>) -> io::Result<()> {
    match events {
        Some(events) => events.readable().await,
        None => std::future::pending().await,
    }
}

async fn next_tick(interval: &mut Option<tokio::time::Interval>) {
    match interval {
        Some(interval) => {
            interval.tick().await;
        }
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

fn output_error(error: io::Error) -> anyhow::Error {
    failure(Kind::Output, format!("writing output failed: {error}"))
}
