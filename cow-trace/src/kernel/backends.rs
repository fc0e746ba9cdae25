//! The ways to see a fault, tried in order by `--backend auto` (as kunai tries its probes):
//! - fexit: BTF trampolines on handle_mm_fault (fentry + fexit), do_wp_page for write-protect,
//!   do_swap_page for swap-ins;
//! - kprobe: kprobe + kretprobe on handle_mm_fault, kprobes on do_wp_page and do_swap_page;
//! - tracepoint: exceptions:page_fault_{user,kernel} at entry, the PAGE_FAULTS_MIN/MAJ perf
//!   software events at completion, opened per traced thread. Works where kprobes and
//!   trampolines are forbidden; sees no swap-in.
use crate::{
    cli::BackendChoice,
    failure::{Status, failure},
    kernel::kernel_error,
};
use aya::{
    Btf, Ebpf,
    programs::{
        FEntry, FExit, KProbe, PerfEvent, Program, ProgramError, RawTracePoint, TracePoint,
        perf_event::{PerfEventConfig, PerfEventScope, SamplePolicy, SoftwareEvent},
    },
    sys::SyscallError,
};

/// A backend that attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Fexit,
    Kprobe,
    Tracepoint,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Fexit => "fexit",
            Backend::Kprobe => "kprobe",
            Backend::Tracepoint => "tracepoint",
        }
    }
}

/// What an attached backend sees besides the faults themselves.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sees {
    /// Faults that read their page back from swap (`do_swap_page` hooked). Without it, a write
    /// that reads back a swapped-out page of a private file mapping looks like a copy of the
    /// file's page (it allocates a page at a write to a page not present, as the copy does).
    pub swap_ins: bool,
}

/// Whether this CPU architecture's kernels have the `exceptions:page_fault_user` /
/// `page_fault_kernel` tracepoints the tracepoint backend starts from: x86 only (arm64 kernels,
/// Debian's 6.1 for one, have none). Elsewhere only the handle_mm_fault backends can work.
pub const HAS_FAULT_TRACEPOINTS: bool = cfg!(target_arch = "x86_64");

/// The backends `choice` allows on this CPU architecture, in the order to try them.
pub fn candidates(choice: BackendChoice) -> anyhow::Result<&'static [Backend]> {
    candidates_for(choice, HAS_FAULT_TRACEPOINTS)
        .map_err(|message| failure(Status::Kernel, message))
}

/// [`candidates`] where the fault tracepoints exist or not.
fn candidates_for(
    choice: BackendChoice,
    fault_tracepoints: bool,
) -> Result<&'static [Backend], String> {
    Ok(match choice {
        BackendChoice::Auto if fault_tracepoints => {
            &[Backend::Fexit, Backend::Kprobe, Backend::Tracepoint]
        }
        BackendChoice::Auto => &[Backend::Fexit, Backend::Kprobe],
        BackendChoice::Fexit => &[Backend::Fexit],
        BackendChoice::Kprobe => &[Backend::Kprobe],
        BackendChoice::Tracepoint if fault_tracepoints => &[Backend::Tracepoint],
        BackendChoice::Tracepoint => {
            return Err(format!(
                "--backend tracepoint needs the exceptions:page_fault_* tracepoints, which {} \
                 kernels do not have: use --backend fexit or kprobe (or auto)",
                std::env::consts::ARCH
            ));
        }
    })
}

/// Attaches one backend's programs; on failure, unloads what it had attached.
pub fn attach(ebpf: &mut Ebpf, backend: Backend, untimed: bool) -> anyhow::Result<Sees> {
    let result = match backend {
        Backend::Fexit => attach_fexit(ebpf),
        Backend::Kprobe => attach_kprobe(ebpf),
        Backend::Tracepoint => attach_tracepoint_backend(ebpf, untimed).map(|()| Sees::default()),
    };
    if result.is_err() {
        for name in programs_of(backend) {
            if let Some(program) = ebpf.program_mut(name) {
                unload(program);
            }
        }
    }
    result
}

/// Detaches and unloads a program, if it was loaded.
pub fn unload(program: &mut Program) {
    let _ = match program {
        Program::FEntry(p) => p.unload(),
        Program::FExit(p) => p.unload(),
        Program::KProbe(p) => p.unload(),
        Program::TracePoint(p) => p.unload(),
        Program::RawTracePoint(p) => p.unload(),
        Program::PerfEvent(p) => p.unload(),
        _ => Ok(()),
    };
}

/// Whether program `name` completes faults another program entered (and so must stay attached
/// until those in progress are done).
pub fn completes_faults(name: &str) -> bool {
    matches!(
        name,
        "fault_done_minor"
            | "fault_done_major"
            | "handle_mm_fault_fexit"
            | "handle_mm_fault_kretprobe"
    )
}

fn programs_of(backend: Backend) -> &'static [&'static str] {
    match backend {
        Backend::Fexit => &[
            "handle_mm_fault_fentry",
            "handle_mm_fault_fexit",
            "do_wp_page_fentry",
            "do_swap_page_fentry",
        ],
        Backend::Kprobe => &[
            "handle_mm_fault_kprobe",
            "handle_mm_fault_kretprobe",
            "do_wp_page_kprobe",
            "do_swap_page_kprobe",
        ],
        Backend::Tracepoint => &[
            "exceptions_page_fault_user",
            "exceptions_page_fault_kernel",
            "fault_done_minor",
            "fault_done_major",
        ],
    }
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut T>
where
    &'a mut T: TryFrom<&'a mut Program, Error = aya::programs::ProgramError>,
{
    let program = ebpf
        .program_mut(name)
        .ok_or_else(|| anyhow::anyhow!("program {name} missing from the object"))?;
    Ok(program.try_into()?)
}

fn attach_fexit(ebpf: &mut Ebpf) -> anyhow::Result<Sees> {
    let btf = Btf::from_sys_fs().map_err(|e| kernel_error("reading /sys/kernel/btf/vmlinux", e))?;
    let entry: &mut FEntry = program(ebpf, "handle_mm_fault_fentry")?;
    entry
        .load("handle_mm_fault", &btf)
        .map_err(|e| kernel_error("loading fentry on handle_mm_fault", e))?;
    entry
        .attach()
        .map_err(|e| trampoline_error("attaching fentry to handle_mm_fault", e))?;
    let exit: &mut FExit = program(ebpf, "handle_mm_fault_fexit")?;
    exit.load("handle_mm_fault", &btf)
        .map_err(|e| kernel_error("loading fexit on handle_mm_fault", e))?;
    exit.attach()
        .map_err(|e| trampoline_error("attaching fexit to handle_mm_fault", e))?;
    // do_wp_page marks write-protect faults the error code cannot (get_user_pages faults).
    // Where it is inlined away, the error code still marks the others.
    let wp: &mut FEntry = program(ebpf, "do_wp_page_fentry")?;
    match wp
        .load("do_wp_page", &btf)
        .and_then(|()| wp.attach().map(drop))
    {
        Ok(()) => {}
        Err(e) => log::info!("no fentry on do_wp_page ({e}); using error codes"),
    }
    let swap: &mut FEntry = program(ebpf, "do_swap_page_fentry")?;
    let swap_ins = match swap
        .load("do_swap_page", &btf)
        .and_then(|()| swap.attach().map(drop))
    {
        Ok(()) => true,
        Err(e) => {
            log::info!("no fentry on do_swap_page ({e}): swap-ins not seen");
            unload_named(ebpf, "do_swap_page_fentry");
            false
        }
    };
    log::info!("attached fentry/fexit to handle_mm_fault");
    Ok(Sees { swap_ins })
}

/// The kernel's ENOTSUPP (524, an errno of its own): it has BPF trampolines, yet cannot put one
/// on a kernel function. arm64 reaches them through ftrace's direct calls, which it has since
/// Linux 6.4: Debian's 6.1 arm64 kernel refuses so.
const ENOTSUPP: i32 = 524;

/// A refused trampoline attach, saying what the kernel lacks where that is the cause.
fn trampoline_error(what: &str, error: aya::programs::ProgramError) -> anyhow::Error {
    let mut source: Option<&dyn std::error::Error> = Some(&error);
    let mut unsupported = false;
    while let Some(cause) = source {
        unsupported |= cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.raw_os_error() == Some(ENOTSUPP));
        source = cause.source();
    }
    let refused = kernel_error(what, error);
    if !unsupported {
        return refused;
    }
    failure(
        Status::Kernel,
        format!("{refused} ({})", trampolines_unsupported_hint()),
    )
}

/// Why a kernel cannot attach trampolines to its functions, and what to use instead.
fn trampolines_unsupported_hint() -> &'static str {
    if cfg!(target_arch = "aarch64") {
        "this kernel cannot attach BPF trampolines to kernel functions: arm64 kernels can since \
         Linux 6.4; use --backend kprobe"
    } else {
        "this kernel cannot attach BPF trampolines to kernel functions; use --backend kprobe"
    }
}

fn attach_kprobe(ebpf: &mut Ebpf) -> anyhow::Result<Sees> {
    for name in ["handle_mm_fault_kprobe", "handle_mm_fault_kretprobe"] {
        let probe: &mut KProbe = program(ebpf, name)?;
        probe
            .load()
            .map_err(|e| kernel_error(&format!("loading {name}"), e))?;
        probe
            .attach("handle_mm_fault", 0)
            .map_err(|e| kernel_error(&format!("attaching {name} to handle_mm_fault"), e))?;
    }
    let wp: &mut KProbe = program(ebpf, "do_wp_page_kprobe")?;
    match wp
        .load()
        .and_then(|()| wp.attach("do_wp_page", 0).map(drop))
    {
        Ok(()) => {}
        Err(e) => log::info!("no kprobe on do_wp_page ({e}); using error codes"),
    }
    let swap: &mut KProbe = program(ebpf, "do_swap_page_kprobe")?;
    let swap_ins = match swap
        .load()
        .and_then(|()| swap.attach("do_swap_page", 0).map(drop))
    {
        Ok(()) => true,
        Err(e) => {
            log::info!("no kprobe on do_swap_page ({e}): swap-ins not seen");
            unload_named(ebpf, "do_swap_page_kprobe");
            false
        }
    };
    log::info!("attached kprobe/kretprobe to handle_mm_fault");
    Ok(Sees { swap_ins })
}

/// Unloads an optional program that could not attach.
fn unload_named(ebpf: &mut Ebpf, name: &str) {
    if let Some(program) = ebpf.program_mut(name) {
        unload(program);
    }
}

/// Attaches one tracepoint program.
pub fn attach_tracepoint(
    ebpf: &mut Ebpf,
    name: &str,
    category: &str,
    event: &str,
) -> anyhow::Result<()> {
    let tracepoint: &mut TracePoint = program(ebpf, name)?;
    tracepoint
        .load()
        .map_err(|e| kernel_error(&format!("loading {name}"), e))?;
    tracepoint
        .attach(category, event)
        .map_err(|e| kernel_error(&format!("attaching to tracepoint {category}:{event}"), e))?;
    Ok(())
}

/// Attaches one raw tracepoint program.
pub fn attach_raw_tracepoint(ebpf: &mut Ebpf, name: &str, event: &str) -> anyhow::Result<()> {
    let tracepoint: &mut RawTracePoint = program(ebpf, name)?;
    tracepoint
        .load()
        .map_err(|e| kernel_error(&format!("loading {name}"), e))?;
    tracepoint
        .attach(event)
        .map_err(|e| kernel_error(&format!("attaching to raw tracepoint {event}"), e))?;
    Ok(())
}

/// Fault entries from the exceptions tracepoints; completions from the perf software events,
/// which the kernel fires exactly where it counts min_flt / maj_flt. The events are opened per
/// traced thread ([`watch_thread`]), not here. Untimed (--no-latency), minor faults go without:
/// that perf event is most of the cost of tracing.
fn attach_tracepoint_backend(ebpf: &mut Ebpf, untimed: bool) -> anyhow::Result<()> {
    for (name, event) in [
        ("exceptions_page_fault_user", "page_fault_user"),
        ("exceptions_page_fault_kernel", "page_fault_kernel"),
    ] {
        attach_raw_tracepoint(ebpf, name, event)?;
        log::info!("attached {name} to raw tracepoint {event}");
    }
    for (name, _) in completion_events(untimed) {
        let perf: &mut PerfEvent = program(ebpf, name)?;
        perf.load()
            .map_err(|e| kernel_error(&format!("loading {name}"), e))?;
    }
    Ok(())
}

/// The tracepoint backend's completion programs and their events (untimed: major faults only).
fn completion_events(untimed: bool) -> &'static [(&'static str, SoftwareEvent)] {
    const BOTH: [(&str, SoftwareEvent); 2] = [
        ("fault_done_minor", SoftwareEvent::PageFaultsMin),
        ("fault_done_major", SoftwareEvent::PageFaultsMaj),
    ];
    if untimed { &BOTH[1..] } else { &BOTH }
}

/// Opens thread `tid`'s completion events (the tracepoint backend's), with `inherit`: the
/// kernel gives every task the thread creates from then on, thread or process, a copy of each
/// event with its program. Untraced tasks have none, so their faults never run a completion
/// program, as with `perf trace -p`. Returns false if the thread has exited meanwhile.
pub fn watch_thread(ebpf: &mut Ebpf, tid: u32, untimed: bool) -> anyhow::Result<bool> {
    for &(name, event) in completion_events(untimed) {
        let perf: &mut PerfEvent = program(ebpf, name)?;
        let opened = perf.attach(
            PerfEventConfig::Software(event),
            PerfEventScope::OneProcess {
                pid: tid,
                cpu: None,
            },
            // Every fault, never a sample: counts must match the kernel's.
            SamplePolicy::Period(1),
            true,
        );
        match opened {
            Ok(_) => {}
            Err(ProgramError::SyscallError(SyscallError { io_error, .. }))
                if io_error.raw_os_error() == Some(libc::ESRCH) =>
            {
                return Ok(false);
            }
            Err(ProgramError::SyscallError(SyscallError { io_error, .. }))
                if matches!(io_error.raw_os_error(), Some(libc::EACCES | libc::EPERM)) =>
            {
                return Err(failure(
                    Status::Privilege,
                    format!(
                        "the kernel refused a page-fault event on thread {tid} ({io_error}): \
                         events on another user's process need root or CAP_SYS_PTRACE"
                    ),
                ));
            }
            Err(error) => {
                return Err(kernel_error(
                    &format!("opening {event:?} for thread {tid} (for {name})"),
                    error,
                ));
            }
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_tries_every_backend_where_the_fault_tracepoints_exist() {
        assert_eq!(
            candidates_for(BackendChoice::Auto, true),
            Ok(&[Backend::Fexit, Backend::Kprobe, Backend::Tracepoint][..])
        );
        assert_eq!(
            candidates_for(BackendChoice::Tracepoint, true),
            Ok(&[Backend::Tracepoint][..])
        );
    }

    #[test]
    fn without_fault_tracepoints_only_handle_mm_fault_backends() {
        assert_eq!(
            candidates_for(BackendChoice::Auto, false),
            Ok(&[Backend::Fexit, Backend::Kprobe][..])
        );
        assert_eq!(
            candidates_for(BackendChoice::Kprobe, false),
            Ok(&[Backend::Kprobe][..])
        );
        let error = candidates_for(BackendChoice::Tracepoint, false).unwrap_err();
        assert!(error.contains("--backend fexit or kprobe"), "{error}");
        assert!(!error.contains('\n'), "{error}");
    }

    #[test]
    fn x86_64_has_the_fault_tracepoints_and_arm64_does_not() {
        assert_eq!(HAS_FAULT_TRACEPOINTS, cfg!(target_arch = "x86_64"));
        if cfg!(target_arch = "aarch64") {
            assert!(candidates(BackendChoice::Tracepoint).is_err());
        }
    }
}
