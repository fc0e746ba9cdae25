//! One tracing run: attach, follow the process tree, stream faults to the sink, summarise.
use std::{collections::HashSet, io, time::Duration};

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    event::{Change, Event},
    failure::{Kind, failure},
    probes::{BACKEND, Probes},
    ring::{Ring, read_lost},
    sink::Sink,
    summary::Summary,
    target::{self, HeldCommand},
};

pub struct Options {
    pub root: u32,
    pub ring_size: u32,
    pub duration: Option<Duration>,
    pub verbose: bool,
    pub summary: bool,
}

/// Why tracing stopped.
#[derive(Debug, PartialEq, Eq)]
enum Stop {
    AllExited,
    Signal(&'static str),
    Duration,
    /// The reader of our output went away (e.g. `| head -1`).
    OutputClosed,
}

/// Runs until every traced process has exited, a signal arrives or the duration is over.
/// Returns the exit status: the held command's own, else 0.
pub async fn run(
    options: Options,
    mut held: Option<HeldCommand>,
    mut sink: Box<dyn Sink>,
) -> anyhow::Result<i32> {
    let mut probes = Probes::load(options.ring_size)?;
    // The root joins the map before process-tree tracking attaches; descendants that exist
    // already are found in /proc after it attached, so none slips between the two.
    probes.trace(options.root)?;
    probes.attach(options.verbose)?;
    let mut live: HashSet<u32> = HashSet::from([options.root]);
    for child in target::descendants(options.root as i32) {
        probes.trace(child as u32)?;
        live.insert(child as u32);
    }
    let mut ring = Ring::new(&mut probes)?;
    let mut summary = Summary::default();
    sink.begin().map_err(output_error)?;

    let what = match &held {
        Some(_) => "command",
        None => "pid",
    };
    eprintln!(
        "Tracing {what} {} and its children (backend: {BACKEND}). Ctrl-C to end.",
        options.root
    );
    if options.verbose && live.len() > 1 {
        eprintln!(
            "cow-trace: following {} existing descendants too",
            live.len() - 1
        );
    }
    if let Some(command) = held.as_mut() {
        command.release()?;
    }

    let mut interrupt = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let mut terminate = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut hangup = signal(SignalKind::hangup()).context("SIGHUP handler")?;
    let deadline = options.duration.map(|d| tokio::time::Instant::now() + d);
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let mut reported_lost = 0;

    let mut consume = |ring: &mut Ring, live: &mut HashSet<u32>, summary: &mut Summary| {
        let mut result = Ok(());
        ring.drain(|event| {
            match event {
                Event::Fault(fault) => {
                    summary.record(&fault);
                    result = sink.fault(&fault);
                }
                Event::Process(process) => {
                    match process.change {
                        Change::Fork { child } => live.insert(child),
                        Change::Exit => live.remove(&process.pid),
                    };
                    result = sink.process(&process);
                }
            }
            result.is_ok()
        });
        result.and_then(|()| sink.flush())
    };

    let stop = loop {
        let step = tokio::select! {
            ready = ring.readable() => {
                ready.context("waiting on the ring buffer")?;
                consume(&mut ring, &mut live, &mut summary)
            }
            _ = tick.tick() => {
                let drained = consume(&mut ring, &mut live, &mut summary);
                // Exit records can be lost when the ring is full: /proc has the last word.
                live.retain(|&pid| target::is_alive(pid));
                let lost = read_lost(&probes)?.events();
                if lost > reported_lost {
                    eprintln!("cow-trace: LOST {} events (ring buffer full): try a larger --ring-size", lost - reported_lost);
                    reported_lost = lost;
                }
                drained
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
        if live.is_empty() {
            break Stop::AllExited;
        }
    };

    // What the kernel wrote before we stopped still counts.
    let last = if stop == Stop::OutputClosed {
        Ok(())
    } else {
        consume(&mut ring, &mut live, &mut summary)
    };
    summary.lost = read_lost(&probes)?;
    // Detach before waiting for anything else.
    drop(ring);
    drop(probes);
    if options.verbose {
        eprintln!("cow-trace: stopped: {stop:?}");
    }

    let output_open = stop != Stop::OutputClosed
        && !matches!(&last, Err(e) if e.kind() == io::ErrorKind::BrokenPipe);
    if output_open {
        last.map_err(output_error)?;
        match sink.end(&summary).and_then(|()| sink.flush()) {
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {}
            other => other.map_err(output_error)?,
        }
    }
    if options.summary {
        let mut stderr = io::stderr().lock();
        let _ = summary.write_table(&mut stderr);
    }

    match held.as_mut() {
        Some(command) => {
            if matches!(stop, Stop::Signal(_) | Stop::Duration | Stop::OutputClosed) {
                command.terminate();
            }
            command.wait()
        }
        None => Ok(0),
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
