//! One tracing run: attach, follow the process tree, stream (or count) faults, summarise.
use std::{
    collections::{HashMap, HashSet},
    io,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    cli::{BackendChoice, Format, StackMethod},
    clock::monotonic_ns,
    enrich::{self, Enricher, Retention},
    event::{Change, Event, FaultClass, Lost, ProcessEvent, StackLosses},
    failure::{Status, failure},
    kernel::{
        KernelConfig, kstats,
        mmap_events::{self, MmapEvents},
        probes::Probes,
        ring::{Ring, read_lost},
    },
    output::{
        flame::{FlameFiles, FlameGraph, StackSample},
        format::human_bytes,
        interval::Intervals,
        losses::Losses,
        plot::FaultPlot,
        sink::{self, Sink, TextSink, WallClock},
        summary::Summary,
    },
    target::{self, HeldCommand},
};

pub struct Options {
    pub root: u32,
    pub backend: BackendChoice,
    pub format: Format,
    pub duration: Option<Duration>,
    /// The ring size and the modes the kernel side is loaded with.
    pub kernel: KernelConfig,
    /// Print the human summary on stderr at the end of a streaming run.
    pub print_summary: bool,
    pub interval: Option<Duration>,
    pub fail_over_cow: Option<u64>,
    /// Resolve mappings and symbols of each fault.
    pub resolve: bool,
    /// -g: the event lines and the summary show stacks. (The kernel may capture them for the
    /// flame graph alone.)
    pub show_stacks: bool,
    pub plot: Option<PathBuf>,
    /// --flamegraph / --folded, opened.
    pub flame: Option<FlameFiles>,
}

/// Records taken from the ring at a time: the mapping records are read after each batch, so
/// every mapping its faults were in is known before they are resolved (and often enough that
/// the mapping rings do not fill while a busy stream is handled).
const BATCH: usize = 1024;

/// How long the loop reads the ring at a time before it looks at signals and ticks again.
const TURN: Duration = Duration::from_millis(50);

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
    /// Traced processes seen to exit (their exit record, or /proc) since last asked.
    exited: Vec<u32>,
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
                self.exited.push(event.pid);
                // The process's last thread exits last: its name is the process's only if
                // nothing better is known.
                self.comms
                    .entry(event.pid)
                    .or_insert_with(|| event.comm.clone());
            }
        }
    }

    /// Forgets the processes /proc says are no longer running: exit records can be lost when
    /// the ring is full, and /proc has the last word.
    fn prune(&mut self) {
        let exited = &mut self.exited;
        self.live.retain(|&pid| {
            let alive = target::is_alive(pid);
            if !alive {
                exited.push(pid);
            }
            alive
        });
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
    /// The kernel's records of the traced processes' mappings (None where the perf events
    /// could not be opened).
    mapping_events: Option<MmapEvents>,
    plot: Option<FaultPlot>,
    flame: Option<FlameGraph>,
    losses: Losses,
    /// Stacks unwound here that ended early, or whose copy never came, by reason.
    stack_losses: StackLosses,
    clock: WallClock,
    /// --interval: the counts at the previous report.
    intervals: Option<Intervals>,
    /// --duration's end, or the time a signal stopped tracing (CLOCK_MONOTONIC ns): a
    /// streamed fault that began later (read before the loop saw the deadline, or while the
    /// programs were still detaching) is past the end the user asked for.
    end_ns: Option<u64>,
    /// --summary: the kernel's counts of processes that have exited, taken out of its maps.
    exited: kstats::Exited,
}

impl Session {
    /// Hands everything the kernel has written to the summary, plot and sink.
    fn drain(&mut self, ring: &mut Ring) -> io::Result<()> {
        self.drain_until(ring, None)
    }

    /// As [`Session::drain`], but returns after [`TURN`] even if records are left: a target
    /// faulting faster than we read (many CPUs, or a slow output) must not keep the loop from
    /// its signals and ticks. What is left waits for the next wakeup or tick (and, past the
    /// ring's size, is counted lost).
    fn drain_for_a_turn(&mut self, ring: &mut Ring) -> io::Result<()> {
        self.drain_until(ring, Some(Instant::now() + TURN))
    }

    fn drain_until(&mut self, ring: &mut Ring, until: Option<Instant>) -> io::Result<()> {
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
            if read < BATCH || until.is_some_and(|until| Instant::now() >= until) {
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

    fn handle(&mut self, event: Event) -> io::Result<()> {
        let Session {
            options,
            probes,
            sink,
            tree,
            streamed,
            enricher,
            plot,
            flame,
            stack_losses,
            end_ns,
            mapping_events,
            ..
        } = self;
        match event {
            Event::Stack(stack) => {
                enricher.add_user_stack(stack);
                Ok(())
            }
            Event::AddressSpace(change) => {
                enricher.add_records(vec![change]);
                Ok(())
            }
            Event::Fault(fault) if end_ns.is_some_and(|end| fault.ts_ns > end) => Ok(()),
            Event::Fault(mut fault) => {
                // Streamed faults resolve as at their time; with --summary only the faults
                // collected at the end, and those whose stack was copied, come here. The first
                // (whose times may not be taken) are looked up as the kernel's counts are, in
                // the last mappings; a copied stack is unwound as at its fault.
                let at = (!options.kernel.summary).then(|| enrich::fault_time(&fault));
                if fault.copied_stack {
                    let when = enrich::fault_time(&fault);
                    match enricher.unwind_fault(fault.pid, fault.tid, fault.ts_ns, when) {
                        Some((id, incomplete)) => {
                            fault.stack_id = Some(id);
                            stack_losses.count(incomplete);
                        }
                        None => stack_losses.unreadable += 1,
                    }
                }
                if fault.class.needs_mapping() {
                    // A page allocated at a first write: a copy of the file's page only in a
                    // private file mapping; a write-protect fault that kept its page: no
                    // copy-on-write in a shared mapping.
                    let kind = enricher.mapping_kind(fault.pid, fault.address, at);
                    fault.class = fault.class.with_mapping(kind);
                }
                if options.kernel.summary {
                    fault.mapping = Some(enricher.mapping_label(fault.pid, fault.address));
                } else if options.resolve {
                    enricher.resolve(&mut fault);
                }
                let in_flame = flame.as_ref().is_some_and(|f| f.counts(fault.class));
                let frames = match fault.stack_id {
                    Some(id) if options.show_stacks || in_flame => {
                        stack_frames(enricher, probes, &options.kernel, fault.pid, id, at)
                    }
                    _ => Vec::new(),
                };
                if let Some(flame) = flame.as_mut().filter(|_| in_flame) {
                    flame.add(&StackSample {
                        pid: fault.pid,
                        window: (fault.window != 0).then_some(fault.window),
                        frames: &frames,
                        faults: 1,
                    });
                }
                if options.show_stacks {
                    fault.stack = frames;
                } else {
                    // Captured for the flame graph only: event lines and tables show no stack.
                    fault.stack_id = None;
                }
                streamed.record(&fault);
                if options.kernel.summary
                    && let Some(latency_ns) = fault.latency_ns
                {
                    // Counted here rather than in the kernel: its histogram too.
                    streamed.add_latency(fault.pid, fault.class, latency_ns);
                }
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
                if let Some(plot) = plot.as_mut() {
                    plot.add_process(&process);
                }
                // The history follows forks and execs from the kernel's mapping records.
                match process.change {
                    Change::Fork { child } => enricher.on_new_program(child),
                    Change::Exec => {
                        enricher.on_new_program(process.pid);
                        if target::exec_dropped_perf_events(process.pid) {
                            follow_again_after_exec(
                                process.pid,
                                process.ts_ns,
                                probes,
                                mapping_events.as_mut(),
                                enricher,
                            );
                        }
                    }
                    Change::Exit => enricher.on_exit(process.pid, process.ts_ns),
                }
                if options.kernel.summary {
                    return Ok(());
                }
                sink.process(&process)
            }
        }
    }

    /// Untimed (--no-latency, or before a thread's completion event first fires), a thread's
    /// last fault waits in the kernel until the thread goes on: at the end, those are final.
    /// The programs must be detached.
    fn collect_deferred(&mut self) -> io::Result<()> {
        let records = match self.probes.deferred_faults() {
            Ok(records) => records,
            Err(error) => {
                note!("cow-trace: the last fault of each thread is missing: {error:#}");
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
            let counts = kstats::read(&self.probes, &self.exited)?;
            for (key, value) in &counts.stats {
                let mut class = FaultClass::from_bits(key.class);
                if class.needs_mapping() {
                    // The region's faults are in the mapping of its first faulting address.
                    let kind = self
                        .enricher
                        .mapping_kind(key.pid, value.sample_address, None);
                    class = class.with_mapping(kind);
                }
                summary.add(
                    key.pid,
                    class,
                    key.window,
                    value.faults,
                    value.timed,
                    value.latency_ns,
                );
                if let Ok(stack_id) = u32::try_from(key.stack_id)
                    && self.options.show_stacks
                {
                    summary.add_stack(key.pid, stack_id, class, value.faults);
                }
                // Each region is labelled by the mapping of its first faulting address.
                let label = self.enricher.mapping_label(key.pid, value.sample_address);
                *summary.mappings.entry((key.pid, label, class)).or_default() += value.faults;
            }
            for (key, hist) in counts.hists {
                // A histogram knows no address, so no mapping: a first write that allocated
                // a page goes with the other writes of its kind, copy or not, and a
                // write-protect fault that kept its page stays a reuse (`without_mapping`).
                summary.add_hist(key.pid, FaultClass::from_bits(key.class), &hist.buckets);
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
            let frames = stack_frames(
                &mut self.enricher,
                &self.probes,
                &self.options.kernel,
                pid,
                stack_id,
                None,
            );
            summary.stack_frames.insert((pid, stack_id), frames);
        }
        summary.lost = self.read_losses();
        summary.lost.stacks.add(&self.stack_losses);
        summary.lost.stacks.unreadable += self.enricher.unread_stacks();
        Ok(summary)
    }

    /// --summary, once at the end: the kernel's counts per pid x class x window x stack into
    /// the flame graph (the faults collected from its slots went in as they were handled).
    fn add_kernel_stacks_to_flame(&mut self) -> anyhow::Result<()> {
        let Some(flame) = self.flame.as_mut() else {
            return Ok(());
        };
        if !self.options.kernel.summary {
            return Ok(());
        }
        let probes = &self.probes;
        for (key, value) in kstats::read(probes, &self.exited)?.stats {
            if !flame.counts(FaultClass::from_bits(key.class)) {
                continue;
            }
            let frames = match u32::try_from(key.stack_id) {
                Ok(id) => stack_frames(
                    &mut self.enricher,
                    probes,
                    &self.options.kernel,
                    key.pid,
                    id,
                    None,
                ),
                Err(_) => Vec::new(),
            };
            flame.add(&StackSample {
                pid: key.pid,
                window: (key.window != 0).then_some(key.window),
                frames: &frames,
                faults: value.faults,
            });
        }
        Ok(())
    }

    /// --summary: takes the kernel's counts of processes that have exited out of its maps
    /// (`kstats::Exited`), so they keep room for the living. Processes still in the tree are
    /// left alone, as is any /proc does not show ended for good.
    fn take_exited(&mut self) {
        // Drained in every mode, so the list never grows over a streaming run.
        let exited = self.tree.exited.drain(..);
        if !self.options.kernel.summary {
            return;
        }
        for pid in exited {
            self.exited.exit(pid);
        }
        let live = &self.tree.live;
        let ended = |pid: u32| !live.contains(&pid) && target::has_exited(pid);
        self.exited.take(&mut self.probes, ended);
    }

    /// Everything lost so far, by the eBPF programs and the mapping events.
    fn read_losses(&mut self) -> Lost {
        let mapping_records = self.mapping_events.as_ref().map_or(0, MmapEvents::lost);
        let read = read_lost(&self.probes).map(|lost| Lost {
            mapping_records,
            ..lost
        });
        self.losses.update(read)
    }

    /// Says on stderr what was lost since the last report, if anything.
    fn report_new_losses(&mut self) {
        self.read_losses();
        for line in self.losses.new_lines() {
            note!("cow-trace: {line}");
        }
    }

    /// Every --interval: prints what changed since the previous report.
    fn report_interval(&mut self) -> anyhow::Result<io::Result<()>> {
        let live: Vec<u32> = self.tree.live.iter().copied().collect();
        for pid in live {
            self.tree.refresh_comm(pid);
        }
        self.settle_mappings();
        let summary = self.totals()?;
        Ok(self.write_interval(&summary, monotonic_ns()))
    }

    /// The interval up to `now_ns` from the totals then: into the output in --summary mode or
    /// as JSON, else on stderr (streamed text stays pure event lines).
    fn write_interval(&mut self, totals: &Summary, now_ns: u64) -> io::Result<()> {
        let Some(intervals) = self.intervals.as_mut() else {
            return Ok(());
        };
        let (period, counts) = intervals.next(totals, now_ns);
        if self.intervals_on_stderr() {
            let _ = TextSink::new(Box::new(io::stderr()), self.clock).interval(&period, &counts);
            Ok(())
        } else {
            self.sink
                .interval(&period, &counts)
                .and_then(|()| self.sink.flush())
        }
    }

    fn intervals_on_stderr(&self) -> bool {
        !self.options.kernel.summary && !self.sink.is_machine_readable()
    }
}

/// The symbolized frames of stack `id` of `pid`: one the kernel walked (--stack=fp, its
/// addresses in the stack map, symbolized as at `at`), or one unwound here (--stack=dwarf).
fn stack_frames(
    enricher: &mut Enricher,
    probes: &Probes,
    kernel: &KernelConfig,
    pid: u32,
    id: u32,
    at: Option<u64>,
) -> Vec<String> {
    match kernel.stacks.map(|stacks| stacks.method) {
        Some(StackMethod::Dwarf) => enricher.unwound_frames(id),
        _ => enricher.stack(pid, id, at, |id| probes.stack_ips(id)),
    }
}

/// Runs until every traced process has exited, a signal arrives or the duration is over.
/// Returns the exit status: the held command's own, else 0 (or `Status::OverCowLimit`).
pub async fn run(
    options: Options,
    mut held: Option<HeldCommand>,
    out: Box<dyn io::Write>,
) -> anyhow::Result<i32> {
    let mut probes = Probes::load(&options.kernel)?;
    // The root joins the map before process-tree tracking attaches; descendants that exist
    // already are found in /proc after it attached, so none slips between the two. A held
    // command joins at its exec: until then it runs our code.
    if held.is_some() {
        probes.trace_from_exec(options.root)?;
    } else {
        probes.trace(options.root)?;
    }
    let backend = probes.attach(options.backend)?;
    // A swap-in the backend does not see looks like a first write's copy: say so if swap was on.
    let swap_ins_unseen = !probes.sees().swap_ins;
    let swap_at_start = swap_in_use();
    let mut tree = Tree::default();
    tree.add(options.root);
    // Never cow-trace itself, a descendant of the root in `-x 1` or `-x $PPID`.
    let me = std::process::id() as i32;
    for child in target::descendants(options.root as i32) {
        if child != me {
            probes.trace(child as u32)?;
            tree.add(child as u32);
        }
    }
    watch_every_thread(&mut probes, options.root, me)?;
    let mut ring = Ring::new(&mut probes)?;
    let retention = if options.kernel.summary {
        Retention::UntilEnd
    } else {
        Retention::UntilExit
    };
    let faults_in_flight =
        options.kernel.ring_size as usize / size_of::<cow_trace_common::Record>();
    let mut enricher = Enricher::new(retention, faults_in_flight);
    if !options.resolve && options.kernel.stacks.is_none() {
        enricher = enricher.without_code_files();
    }
    // Every mode needs the mappings: a first write's page is a copy only in a private file
    // mapping, and --resolve, --stack, --summary and the flame graph name them.
    let pids: Vec<u32> = tree.live.iter().copied().collect();
    let mapping_events = follow_mappings(&pids, &mut enricher);
    let clock = WallClock::now();
    let sink = sink::new(options.format, out, clock, backend.name());
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
    // --duration counts from the readiness line (no later: a fault after it is past the end).
    let deadline = options.duration.map(|d| tokio::time::Instant::now() + d);
    let deadline_ns = options
        .duration
        .map(|d| monotonic_ns().saturating_add(d.as_nanos() as u64));
    note!(
        "Tracing {what} {} and its children (backend: {}{mode}). Ctrl-C to end.",
        options.root,
        backend.name()
    );
    if tree.live.len() > 1 {
        log::info!("following {} existing descendants too", tree.live.len() - 1);
    }
    let mut report = options.interval.map(report_ticker);
    let plot = options.plot.as_ref().map(|_| FaultPlot::new());
    let flame = options
        .flame
        .as_ref()
        .map(|files| FlameGraph::new(files.which));
    let mut session = Session {
        options,
        probes,
        sink,
        tree,
        streamed: Summary::default(),
        enricher,
        mapping_events,
        plot,
        flame,
        losses: Losses::default(),
        stack_losses: StackLosses::default(),
        clock,
        intervals: None,
        // Known from the start with --duration: the loop may read the ring once more after
        // the deadline before it sees the deadline.
        end_ns: deadline_ns,
        exited: kstats::Exited::default(),
    };
    if !session.options.kernel.summary {
        session.sink.begin().map_err(output_error)?;
    }
    // Reports count from here: the first interval's faults are those after the release.
    session.intervals = session
        .options
        .interval
        .map(|_| Intervals::new(monotonic_ns()));
    if let Some(command) = held.as_mut() {
        command.release()?;
    }

    // The kernel wakes us only once an eighth of the ring is full; this tick drains the rest.
    let mut tick = tokio::time::interval(Duration::from_millis(100));

    let stop = loop {
        let step = tokio::select! {
            ready = ring.readable() => {
                ready.context("waiting on the ring buffer")?;
                session.drain_for_a_turn(&mut ring)
            }
            ready = mappings_readable(&session.mapping_events) => {
                ready.context("waiting on the mapping rings")?;
                session.read_mappings();
                Ok(())
            }
            _ = tick.tick() => {
                let drained = session.drain_for_a_turn(&mut ring);
                session.settle_mappings();
                session.tree.prune();
                session.report_new_losses();
                drained
            }
            _ = next_tick(&mut report) => {
                // What waits in the ring happened in the interval that ends now.
                match session.drain_for_a_turn(&mut ring) {
                    Ok(()) => session.report_interval()?,
                    failed => failed,
                }
            }
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
        // Exit records wake us at once: a storm of short-lived processes is taken out of the
        // summary's maps as fast as their cost allows.
        session.take_exited();
        if session.tree.live.is_empty() {
            break Stop::AllExited;
        }
    };

    // The last --interval report ends here: what is drained below happened before.
    let stopped_ns = monotonic_ns();
    if let Stop::Signal(_) = stop {
        session.end_ns = Some(session.end_ns.map_or(stopped_ns, |end| end.min(stopped_ns)));
    }
    // Detach first: nothing changes under the last reads, and nothing waits on us.
    session.probes.stop();
    // What the kernel wrote before we stopped still counts.
    let last = if stop == Stop::OutputClosed {
        Ok(())
    } else {
        session.drain(&mut ring)
    };
    // Losses since the last tick (a short run may end before one) get their line too.
    session.report_new_losses();
    session.settle_mappings();
    // So do the final faults it holds (--no-latency, or a thread whose completion event never
    // fired), each newer than anything in the ring from its thread (after the mapping records
    // are read: their mappings may be new).
    let last = match last {
        Ok(()) if stop != Stop::OutputClosed => session.collect_deferred(),
        other => other,
    };
    let summary = session.totals()?;
    let (history, open_files) = session.enricher.stats();
    log::info!(
        "mapping history: {} processes, {} live and {} replaced pieces, at most {} in one process (bound {}), {open_files} files held open",
        history.processes,
        history.live_pieces,
        history.past_pieces,
        history.peak,
        enrich::PIECES_PER_PROCESS
    );
    // The totals cover the whole run; with --interval, they come after the last interval's
    // report (never a repeat of it), behind a header where reports are text.
    let whole_run = session
        .intervals
        .as_ref()
        .map(|intervals| intervals.whole_run(stopped_ns));
    let intervals_on_stderr = session.intervals_on_stderr();
    let last_interval = if stop == Stop::OutputClosed && !intervals_on_stderr {
        Ok(())
    } else {
        session.write_interval(&summary, stopped_ns)
    };
    // After the totals: reading stacks again must not change what they report.
    session.add_kernel_stacks_to_flame()?;
    let Session {
        mut options,
        probes,
        mut sink,
        plot,
        clock,
        tree,
        flame,
        ..
    } = session;
    drop(ring);
    drop(probes);
    log::info!("stopped: {stop:?}");

    let broken =
        |result: &io::Result<()>| matches!(result, Err(e) if e.kind() == io::ErrorKind::BrokenPipe);
    let output_open = stop != Stop::OutputClosed && !broken(&last) && !broken(&last_interval);
    if output_open {
        last.and(last_interval).map_err(output_error)?;
        // Streaming text stays pure event lines; the human table goes to stderr instead.
        let to_output = options.kernel.summary || sink.is_machine_readable();
        if to_output {
            let header = match &whole_run {
                Some(period) => sink.totals_header(period),
                None => Ok(()),
            };
            match header
                .and_then(|()| sink.summary(&summary))
                .and_then(|()| sink.flush())
            {
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {}
                other => other.map_err(output_error)?,
            }
        }
    }
    if !options.kernel.summary && options.print_summary {
        let mut stderr = TextSink::new(Box::new(io::stderr()), clock);
        if intervals_on_stderr && let Some(period) = &whole_run {
            let _ = stderr.totals_header(period);
        }
        let _ = stderr.summary(&summary);
    }
    let file_copies = summary.total().file_copies;
    if swap_ins_unseen && file_copies > 0 && (swap_at_start || swap_in_use()) {
        note!(
            "cow-trace: note: swap is on, and the {} backend does not see pages read back from swap: a write that read back a swapped-out page of a private file mapping counts among the {file_copies} file pages copied",
            backend.name()
        );
    }
    // Each file is written even if another fails (its file was created at the start).
    let plotted = match (plot, &options.plot) {
        (Some(plot), Some(path)) => {
            let title = format!("cow-trace: pid {} and its children", options.root);
            plot.render_svg(path, &title)
                .map(|()| note!("cow-trace: plot written to {}", path.display()))
                .map_err(|e| failure(Status::Output, format!("drawing {}: {e:#}", path.display())))
        }
        _ => Ok(()),
    };
    let flamed = match (flame, options.flame.take()) {
        (Some(graph), Some(files)) => {
            let traced = format!("pid {} and its children", options.root);
            files.write(&graph, &summary.comms, &traced)
        }
        _ => Ok(()),
    };
    plotted.and(flamed)?;

    let mut status = match held.as_mut() {
        Some(command) => {
            if matches!(stop, Stop::Signal(_) | Stop::Duration | Stop::OutputClosed) {
                let traced: Vec<u32> = tree.live.iter().copied().collect();
                if command.terminate(&traced) {
                    note!(
                        "cow-trace: the command's processes were still running {} s after \
                         SIGTERM: killed them (SIGKILL)",
                        target::GRACE.as_secs()
                    );
                }
            }
            command.wait()?
        }
        None => 0,
    };
    if let Some(limit) = options.fail_over_cow {
        let copied = summary.total().copied_bytes();
        if copied > limit {
            note!(
                "cow-trace: {} copied on write, over the --fail-over-cow limit of {}",
                human_bytes(copied),
                human_bytes(limit)
            );
            // The traced command's own failure takes precedence.
            if status == 0 {
                status = Status::OverCowLimit.code();
            }
        }
    }
    Ok(status)
}

/// Gives every thread of the traced tree what the backend needs per thread, scanning /proc
/// until a scan finds no new thread: one created meanwhile by a thread not yet given it had
/// nothing to inherit. A tree that creates threads all the time never stops giving new ones
/// (which inherited what they need, or get it twice, which the kernel side tells apart), so
/// the scans stop after a few rounds: a thread still missed would have been created within
/// them by a thread missed itself. cow-trace's own threads are never given any (`me`).
fn watch_every_thread(probes: &mut Probes, root: u32, me: i32) -> anyhow::Result<()> {
    const ROUNDS: usize = 8;
    for _ in 0..ROUNDS {
        let mut new = false;
        let processes = target::descendants(root as i32)
            .into_iter()
            .filter(|&pid| pid != me)
            .map(|p| p as u32);
        for pid in std::iter::once(root).chain(processes) {
            for tid in target::threads(pid) {
                new |= probes.watch_thread(tid)?;
            }
        }
        if !new {
            return Ok(());
        }
    }
    log::info!("threads kept appearing during {ROUNDS} scans of the traced tree");
    Ok(())
}

/// A traced process's exec made it non-dumpable (a set-user-ID program, or one its user may not
/// read): the kernel dropped every perf event on it, so its faults would go untimed, its major
/// faults unseen and its mappings unrecorded, and the processes it creates inherit nothing.
/// Opens its threads' events again (and those of any child it made meanwhile), as at attach,
/// and reads what it has mapped since its exec from /proc. Best effort: a failure costs what
/// the events give, as a thread over the events' limit at attach.
fn follow_again_after_exec(
    pid: u32,
    exec_ns: u64,
    probes: &mut Probes,
    mut mapping_events: Option<&mut MmapEvents>,
    enricher: &mut Enricher,
) {
    // The kernel's exec record was dropped with the events: the old program's mappings end here.
    enricher.exec_unrecorded(pid, exec_ns);
    let processes: Vec<u32> = std::iter::once(pid)
        .chain(
            target::descendants(pid as i32)
                .into_iter()
                .map(|p| p as u32),
        )
        .collect();
    for &process in &processes {
        for tid in target::threads(process) {
            if let Err(error) = probes.watch_thread_again(tid) {
                log::warn!("thread {tid}: its completion events are gone: {error:#}");
            }
            if let Some(events) = mapping_events.as_deref_mut()
                && let Err(error) = events.follow_again(tid)
            {
                log::warn!("thread {tid}: its mapping records are gone: {error:#}");
            }
        }
    }
    // After the events are open, so nothing mapped between the two is missed.
    for &process in &processes {
        enricher.seed(process);
    }
    log::info!("pid {pid} ran a set-user-ID (or unreadable) program: its events opened again");
}

/// Opens the kernel's mapping records for `pids` (alive, traced) and seeds their histories
/// with what they have mapped already. Without the records (the kernel refused the events),
/// mappings are read from /proc/PID/maps while the processes live.
fn follow_mappings(pids: &[u32], enricher: &mut Enricher) -> Option<MmapEvents> {
    let events = match MmapEvents::open(pids) {
        Ok(events) => Some(events),
        Err(error) => {
            log::warn!(
                "no mapping records ({error:#}): mappings are read from /proc while processes live"
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
            log::warn!(
                "{} threads have no mapping records (over {} events): their mappings are read from /proc while they live",
                events.unfollowed(),
                mmap_events::MAX_EVENTS
            );
        } else {
            log::info!("following mappings with perf mapping records");
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

/// Whether a swap area is active (/proc/swaps lists one below its header).
fn swap_in_use() -> bool {
    std::fs::read_to_string("/proc/swaps").is_ok_and(|swaps| swaps.lines().nth(1).is_some())
}

/// The --interval ticker, first ticking one interval from now. A tick the session could not
/// take in time (a stalled or overloaded machine) is skipped, not caught up: catching up would
/// print a burst of reports of next to no length, empty intervals that never were. The report
/// after a stall spans the longer stretch, and says so.
fn report_ticker(every: Duration) -> tokio::time::Interval {
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    ticker
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
    failure(Status::Output, format!("writing output failed: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::{Instant, advance};

    /// A process's exit record comes from its last thread, whose name may be its own
    /// ("worker-thread"): the process keeps the name it had.
    #[test]
    fn an_exit_keeps_the_processs_name() {
        let mut tree = Tree::default();
        let event = |pid, comm: &str, change| ProcessEvent {
            ts_ns: 0,
            pid,
            tid: pid,
            comm: comm.into(),
            change,
        };
        tree.apply(&event(10, "shell", Change::Fork { child: 11 }));
        tree.apply(&event(11, "thrname", Change::Exec));
        tree.apply(&event(11, "worker-thread", Change::Exit));
        assert_eq!(tree.comms[&11], "thrname");
        // A process never named before is named by its exit.
        tree.apply(&event(12, "late", Change::Exit));
        assert_eq!(tree.comms[&12], "late");
    }

    /// After a stall of three intervals and more, the late tick comes at once and the next one
    /// an interval boundary later: no catch-up ticks in between.
    #[tokio::test(start_paused = true)]
    async fn a_stalled_interval_is_not_caught_up_with_empty_reports() {
        let every = Duration::from_millis(300);
        let start = Instant::now();
        let mut ticker = report_ticker(every);
        ticker.tick().await;
        assert_eq!(Instant::now() - start, every);
        advance(Duration::from_millis(1000)).await;
        ticker.tick().await;
        let late = Instant::now();
        assert_eq!(late - start, Duration::from_millis(1300));
        ticker.tick().await;
        assert_eq!(Instant::now() - start, Duration::from_millis(1500));
    }
}
