//! `hook_floor [--timed]`: attaches empty programs where the tracepoint backend attaches its
//! per-fault programs, prints a `Tracing ...` line, and holds them until SIGINT or SIGTERM.
//! `cargo xtask bench` runs it beside cow-trace: what the hooks alone cost the traced process
//! (the floor under any program on them), apart from what cow-trace's programs cost on top.
//! Without `--timed`: the `--no-latency` hooks (fault entry, page allocation); with it, also
//! the PAGE_FAULTS_MIN / PAGE_FAULTS_MAJ perf events that time each fault.
use anyhow::Context as _;
use aya::{
    Ebpf,
    programs::{
        PerfEvent, RawTracePoint,
        perf_event::{PerfEventConfig, PerfEventScope, SamplePolicy, SoftwareEvent},
    },
    util::online_cpus,
};
use nix::sys::signal::{SigSet, Signal};

fn main() -> anyhow::Result<()> {
    let timed = match std::env::args().nth(1).as_deref() {
        None => false,
        Some("--timed") => true,
        Some(other) => anyhow::bail!("unexpected argument {other:?}: usage: hook_floor [--timed]"),
    };
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
    if timed {
        attach_fault_done(&mut ebpf)?;
        hooks.push("PAGE_FAULTS_MIN/MAJ");
    }
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

fn attach_fault_done(ebpf: &mut Ebpf) -> anyhow::Result<()> {
    let cpus = online_cpus().map_err(|(path, e)| anyhow::anyhow!("reading {path}: {e}"))?;
    let program: &mut PerfEvent = ebpf
        .program_mut("floor_fault_done")
        .context("no program floor_fault_done")?
        .try_into()?;
    program.load().context("loading floor_fault_done")?;
    for event in [SoftwareEvent::PageFaultsMin, SoftwareEvent::PageFaultsMaj] {
        for &cpu in &cpus {
            program
                .attach(
                    PerfEventConfig::Software(event),
                    PerfEventScope::AllProcessesOneCpu { cpu },
                    // As cow-trace: every fault, never a sample.
                    SamplePolicy::Period(1),
                    false,
                )
                .with_context(|| format!("attaching floor_fault_done to {event:?} on CPU {cpu}"))?;
        }
    }
    Ok(())
}
