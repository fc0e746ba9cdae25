//! `hook_floor [--timed] PID`: attaches empty programs where the tracepoint backend attaches
//! its per-fault programs for tracing PID, prints a `Tracing ...` line, and holds them until
//! SIGINT or SIGTERM. `cargo xtask bench` runs it beside cow-trace: what the hooks alone cost
//! (the floor under any program on them), apart from what cow-trace's programs cost on top.
//! Always: the fault-entry and page-allocation raw tracepoints, which fire for every process,
//! and PAGE_FAULTS_MAJ; with `--timed`, PAGE_FAULTS_MIN too (the event that times each minor
//! fault). Like cow-trace, the perf events are opened on each thread of PID and of its
//! descendants, inherited by the tasks they create (`--no-latency` keeps only the major one).
use std::collections::HashSet;

use anyhow::Context as _;
use aya::{
    Ebpf,
    programs::{
        PerfEvent, RawTracePoint,
        perf_event::{PerfEventConfig, PerfEventScope, SamplePolicy, SoftwareEvent},
    },
};
use nix::sys::signal::{SigSet, Signal};

const USAGE: &str = "usage: hook_floor [--timed] PID";

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (timed, pid) = match args.as_slice() {
        [pid] => (false, pid),
        [flag, pid] if flag == "--timed" => (true, pid),
        _ => anyhow::bail!("unexpected arguments {args:?}: {USAGE}"),
    };
    let pid: u32 = pid
        .parse()
        .with_context(|| format!("{pid:?} is not a process id: {USAGE}"))?;
    // Block the stop signals first, so one arriving during attach is waited for, not fatal.
    let stop = SigSet::from_iter([Signal::SIGINT, Signal::SIGTERM]);
    stop.thread_block().context("blocking SIGINT and SIGTERM")?;

    let mut ebpf = Ebpf::load(aya::include_bytes_aligned!(concat!(
        env!("OUT_DIR"),
        "/hook-floor"
    )))
    .context("loading the empty programs")?;
    let mut hooks = vec!["page_fault_user", "page_fault_kernel"];
    attach_raw(&mut ebpf, "floor_fault_entry", &hooks)?;
    attach_raw(&mut ebpf, "floor_page_alloc", &["mm_page_alloc"])?;
    hooks.push("mm_page_alloc");
    let (events, names): (&[SoftwareEvent], &str) = if timed {
        (
            &[SoftwareEvent::PageFaultsMin, SoftwareEvent::PageFaultsMaj],
            "PAGE_FAULTS_MIN/MAJ",
        )
    } else {
        (&[SoftwareEvent::PageFaultsMaj], "PAGE_FAULTS_MAJ")
    };
    let threads = attach_fault_done(&mut ebpf, pid, events)?;
    let per_thread = format!("{names} of {threads} threads of {pid}, inherited");
    hooks.push(&per_thread);
    eprintln!(
        "Tracing nothing: empty programs on {}. Ctrl-C to end.",
        hooks.join(", ")
    );
    stop.wait().context("waiting for SIGINT or SIGTERM")?;
    // Dropping `ebpf` detaches and unloads every program.
    Ok(())
}

fn attach_raw(ebpf: &mut Ebpf, name: &str, events: &[&str]) -> anyhow::Result<()> {
    let program: &mut RawTracePoint = ebpf
        .program_mut(name)
        .with_context(|| format!("no program {name}"))?
        .try_into()?;
    program.load().with_context(|| format!("loading {name}"))?;
    for event in events {
        program
            .attach(event)
            .with_context(|| format!("attaching {name} to raw tracepoint {event}"))?;
    }
    Ok(())
}

/// Opens the completion `events` on every thread of `pid` and of its descendants, as
/// cow-trace's tracepoint backend does for `-x PID` (`pid` = the thread, any CPU, `inherit`):
/// only those threads and the tasks they create fire them. Scans until a scan finds no new
/// thread. Returns how many it watches.
fn attach_fault_done(ebpf: &mut Ebpf, pid: u32, events: &[SoftwareEvent]) -> anyhow::Result<usize> {
    let program: &mut PerfEvent = ebpf
        .program_mut("floor_fault_done")
        .context("no program floor_fault_done")?
        .try_into()?;
    program.load().context("loading floor_fault_done")?;
    let mut watched = HashSet::new();
    loop {
        let mut new = 0;
        for tid in threads_of_tree(pid)? {
            if !watched.insert(tid) {
                continue;
            }
            new += 1;
            for &event in events {
                program
                    .attach(
                        PerfEventConfig::Software(event),
                        PerfEventScope::OneProcess {
                            pid: tid,
                            cpu: None,
                        },
                        // As cow-trace: every fault, never a sample.
                        SamplePolicy::Period(1),
                        true,
                    )
                    .with_context(|| {
                        format!("attaching floor_fault_done to {event:?} of thread {tid}")
                    })?;
            }
        }
        if new == 0 {
            return Ok(watched.len());
        }
    }
}

/// The threads of `root` and of every process descended from it.
fn threads_of_tree(root: u32) -> anyhow::Result<Vec<u32>> {
    let parents: Vec<(i32, i32)> = procfs::process::all_processes()
        .context("listing /proc")?
        .filter_map(|p| p.ok()?.stat().ok())
        .map(|stat| (stat.pid, stat.ppid))
        .collect();
    let mut tree = vec![root as i32];
    let mut next = 0;
    while next < tree.len() {
        let parent = tree[next];
        tree.extend(parents.iter().filter(|p| p.1 == parent).map(|p| p.0));
        next += 1;
    }
    let mut threads = Vec::new();
    for pid in tree {
        // A process that has exited meanwhile has no threads left to watch.
        let Ok(tasks) = procfs::process::Process::new(pid).and_then(|p| p.tasks()) else {
            continue;
        };
        threads.extend(tasks.filter_map(Result::ok).map(|task| task.tid as u32));
    }
    Ok(threads)
}
