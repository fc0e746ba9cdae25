//! Loading the embedded eBPF object, the traced-process map, and attaching (the shared
//! programs here, one backend's from `backends`).
use std::{collections::HashSet, path::Path};

use anyhow::Context as _;
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuArray, RingBuf, StackTraceMap},
};
use cow_trace_common::{
    CowOutcome, FaultClass, Hist, HistCache, HistKey, NO_FIELD, PENDING_DEFERRED, PendingFault,
    Record, Settings, StatCache, StatKey, StatValue, TS_NOT_TAKEN, Window, stack_faults,
    stack_mode, summary_maps,
};

use crate::{
    cli::{BackendChoice, StackFaults, StackMethod},
    failure::{Status, failure},
    kernel::{
        KernelConfig, StackConfig,
        backends::{self, Backend, Sees},
        batch, btf, diagnostics, kernel_error, mapped, tracefs, version,
    },
};

/// The object built by build.rs from cow-trace-ebpf.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/cow-trace"));

/// Process-tree tracking and copy detection, shared by every backend: (program, category,
/// event). Tracking comes first, so a child forked while the rest attaches is followed.
#[rustfmt::skip]
const COMMON: [(&str, &str, &str); 4] = [
    ("task_task_newtask", "task", "task_newtask"),
    ("sched_sched_process_exit", "sched", "sched_process_exit"),
    ("sched_sched_process_exec", "sched", "sched_process_exec"),
    ("task_task_rename", "task", "task_rename"),
];

/// munmap and mremap, which the kernel's mapping records do not report.
const UNMAPS: [(&str, &str, &str); 4] = [
    ("syscalls_sys_enter_munmap", "syscalls", "sys_enter_munmap"),
    ("syscalls_sys_exit_munmap", "syscalls", "sys_exit_munmap"),
    ("syscalls_sys_enter_mremap", "syscalls", "sys_enter_mremap"),
    ("syscalls_sys_exit_mremap", "syscalls", "sys_exit_mremap"),
];

/// Copy detection: a raw tracepoint, as it runs on every page allocation of the machine.
const PAGE_ALLOC: (&str, &str) = ("kmem_mm_page_alloc", "mm_page_alloc");

/// The loaded programs and their maps, which only this type names; dropping it detaches
/// everything and frees the maps.
pub struct Probes {
    ebpf: Ebpf,
    /// --no-latency.
    untimed: bool,
    /// The backend that attached.
    backend: Option<Backend>,
    /// What the attached backend sees besides faults.
    sees: Sees,
    /// Threads whose per-task completion events are open (tracepoint backend).
    watched: HashSet<u32>,
    /// See [`KernelConfig::follow_unmaps`].
    follow_unmaps: bool,
}

impl Probes {
    /// Loads the object with this kernel's tracepoint offsets, the mode and the ring size.
    pub fn load(config: &KernelConfig) -> anyhow::Result<Probes> {
        let KernelConfig {
            ring_size,
            summary: summary_mode,
            stacks,
            untimed,
            follow_unmaps,
        } = *config;
        check_privilege()?;
        check_pid_namespace()?;
        let root = tracefs::ensure_mounted()?;
        let mut settings = read_settings(&root, summary_mode)?;
        // An eighth of the ring in all, shared by the CPUs.
        let cpus = aya::util::nr_cpus().map_or(1, |n| n.max(1)) as u32;
        settings.wakeup_bytes = (ring_size / 8 / cpus).max(1);
        settings.untimed = untimed.into();
        set_stacks(&mut settings, stacks);
        let method = stacks.map(|stacks| stacks.method);
        // A buffer per CPU to assemble copied stacks in (see the eBPF side's stacks.rs).
        let stack_buffers = match method {
            Some(StackMethod::Dwarf) => aya::util::nr_cpus().map_err(|(path, error)| {
                anyhow::anyhow!("reading the possible CPUs from {path}: {error}")
            })? as u32,
            _ => 1,
        };
        raise_memlock_limit();
        raise_open_file_limit();
        let mut ebpf = EbpfLoader::new()
            .override_global("SETTINGS", &settings, true)
            .override_global(aya_log::LEVEL, &diagnostics::level(), false)
            .map_max_entries("EVENTS", ring_size)
            // Maps a mode does not use shrink to one entry: kernel memory is not free.
            .map_max_entries(
                "STACKS",
                if method == Some(StackMethod::Fp) {
                    16384
                } else {
                    1
                },
            )
            .map_max_entries("STACK_BUFFERS", stack_buffers)
            .map_max_entries("STATS", if summary_mode { summary_maps::STATS } else { 1 })
            .map_max_entries("HISTS", if summary_mode { summary_maps::HISTS } else { 1 })
            .load(OBJECT)
            .map_err(|e| {
                // The ring is the one map whose size is the user's to choose (a memory cgroup's
                // limit counts its pages).
                let ring_refused = matches!(&e, aya::EbpfError::MapError(
                    aya::maps::MapError::CreateError { name, io_error, .. })
                    if name == "EVENTS" && io_error.raw_os_error() == Some(libc::ENOMEM));
                if ring_refused {
                    failure(
                        Status::Kernel,
                        format!(
                            "the kernel has no memory for a ring buffer of {} MiB: try a smaller \
                             --ring-size (e.g. 16MiB)",
                            ring_size >> 20
                        ),
                    )
                } else {
                    kernel_error("loading the eBPF object", e)
                }
            })?;
        diagnostics::start(&mut ebpf);
        Ok(Probes {
            ebpf,
            untimed,
            follow_unmaps,
            backend: None,
            sees: Sees::default(),
            watched: HashSet::new(),
        })
    }

    /// The map of traced thread-group ids.
    pub fn traced(&mut self) -> anyhow::Result<HashMap<&mut MapData, u32, u8>> {
        let map = self.ebpf.map_mut("TRACED").context("TRACED map missing")?;
        HashMap::try_from(map).context("TRACED map has an unexpected type")
    }

    /// Adds a process to the traced set (its hint first, as the kernel side expects).
    pub fn trace(&mut self, pid: u32) -> anyhow::Result<()> {
        let map = self
            .ebpf
            .map_mut("TRACED_HINT")
            .context("TRACED_HINT map missing")?;
        let mut hints: Array<&mut MapData, u32> =
            Array::try_from(map).context("TRACED_HINT has an unexpected type")?;
        hints
            .set(pid % hints.len(), 1, 0)
            .with_context(|| format!("marking pid {pid} as traced"))?;
        self.traced()?
            .insert(pid, 1, 0)
            .with_context(|| format!("adding pid {pid} to the traced set"))
    }

    /// Gives thread `tid` of a traced process what the backend needs per thread: the
    /// tracepoint backend's completion events, which the threads and processes it creates
    /// later inherit. Returns true if `tid` is new and still alive, so a caller can scan the
    /// traced threads until none is new (a thread created before its creator had its events
    /// inherited none). Call after [`Probes::attach`].
    pub fn watch_thread(&mut self, tid: u32) -> anyhow::Result<bool> {
        if self.backend != Some(Backend::Tracepoint) || !self.watched.insert(tid) {
            return Ok(false);
        }
        backends::watch_thread(&mut self.ebpf, tid, self.untimed)
    }

    /// As [`Probes::watch_thread`], for a thread whose events the kernel dropped (see
    /// [`crate::target::exec_dropped_perf_events`]): opens them again.
    pub fn watch_thread_again(&mut self, tid: u32) -> anyhow::Result<bool> {
        self.watched.remove(&tid);
        self.watch_thread(tid)
    }

    /// Traces `pid` from its exec on (the held command: until then it runs cow-trace's code).
    pub fn trace_from_exec(&mut self, pid: u32) -> anyhow::Result<()> {
        let map = self
            .ebpf
            .map_mut("TRACE_AT_EXEC")
            .context("TRACE_AT_EXEC map missing")?;
        HashMap::<_, u32, u8>::try_from(map)
            .context("TRACE_AT_EXEC map has an unexpected type")?
            .insert(pid, 1, 0)
            .with_context(|| format!("tracing pid {pid} from its exec"))
    }

    /// Ends tracing: tells the kernel programs to enter no new fault (detaching takes a while,
    /// a per-thread event at a time), then detaches every program, those that complete faults
    /// last, so the faults already pending complete. The maps stay: what the kernel wrote
    /// stays readable, and nothing changes under a reader any more.
    pub fn stop(&mut self) {
        if let Err(error) = self.mark_stopped() {
            log::warn!("faults beginning while the programs detach are traced too: {error:#}");
        }
        for completing in [false, true] {
            for (name, program) in self.ebpf.programs_mut() {
                if backends::completes_faults(name) == completing {
                    backends::unload(program);
                }
            }
        }
    }

    fn mark_stopped(&mut self) -> anyhow::Result<()> {
        let map = self
            .ebpf
            .map_mut("STOPPED")
            .context("STOPPED map missing")?;
        Array::<&mut MapData, u32>::try_from(map)
            .context("STOPPED has an unexpected type")?
            .set(0, 1, 0)
            .context("marking tracing as stopped")
    }

    /// The faults still waiting in threads' slots that are final: untimed (--no-latency, or
    /// in a thread whose completion event never fired), the tracepoint backend leaves each
    /// thread's last fault there until the thread goes on. Call after [`Probes::stop`]. Oldest
    /// first.
    pub fn deferred_faults(&self) -> anyhow::Result<Vec<Record>> {
        let map = self.ebpf.map("SLOTS").context("SLOTS map missing")?;
        let len = Array::<&MapData, PendingFault>::try_from(map)
            .context("SLOTS has an unexpected type")?
            .len();
        let deferred = |slot: &PendingFault| {
            slot.tid != 0 && slot.ts_ns != 0 && slot.flags & PENDING_DEFERRED != 0
        };
        let mut every = mapped::read_array_where::<PendingFault>(map, len, deferred)
            .context("reading SLOTS")?;
        let map = self.ebpf.map("PENDING").context("PENDING map missing")?;
        let pending: HashMap<&MapData, u32, PendingFault> =
            HashMap::try_from(map).context("PENDING map has an unexpected type")?;
        for entry in pending.iter() {
            let (_, slot) = entry.context("reading PENDING")?;
            if deferred(&slot) {
                every.push(slot);
            }
        }
        let mut records: Vec<Record> = every.iter().map(|slot| slot.to_record(slot.tid)).collect();
        // The kernel fills a fault's window as it reports it: so must this, for the faults it
        // never reported.
        let map = self.ebpf.map("WINDOW").context("WINDOW map missing")?;
        let windows: HashMap<&MapData, u32, Window> =
            HashMap::try_from(map).context("WINDOW map has an unexpected type")?;
        for record in &mut records {
            if let Ok(window) = windows.get(&record.pid, 0) {
                let class = FaultClass::of_record(record);
                let copied =
                    class.is_completed() && class.cow_outcome() == Some(CowOutcome::Copied);
                let when = if record.ts_ns == TS_NOT_TAKEN {
                    crate::clock::monotonic_ns()
                } else {
                    record.ts_ns
                };
                record.other_pid = window.for_fault(when, copied).child;
            }
        }
        records.sort_by_key(|record| record.ts_ns);
        Ok(records)
    }

    /// Takes the EVENTS ring buffer out of the object (the reader owns it from then on).
    pub fn take_events(&mut self) -> anyhow::Result<RingBuf<MapData>> {
        let map = self.ebpf.take_map("EVENTS").context("EVENTS map missing")?;
        RingBuf::try_from(map).context("EVENTS is not a ring buffer")
    }

    /// The per-CPU loss counters, indexed by `cow_trace_common::counter`.
    pub fn counters(&self) -> anyhow::Result<PerCpuArray<&MapData, u64>> {
        let map = self.ebpf.map("COUNTERS").context("COUNTERS map missing")?;
        PerCpuArray::try_from(map).context("COUNTERS has an unexpected type")
    }

    /// Every entry of the in-kernel summary's counts (--summary), read in a few system calls.
    pub fn all_stats(&self) -> anyhow::Result<Vec<(StatKey, StatValue)>> {
        let map = self.ebpf.map("STATS").context("STATS map missing")?;
        batch::read_all(map).context("reading STATS")
    }

    /// Every entry of the in-kernel summary's latency histograms (--summary), read in a few
    /// system calls.
    pub fn all_hists(&self) -> anyhow::Result<Vec<(HistKey, Hist)>> {
        let map = self.ebpf.map("HISTS").context("HISTS map missing")?;
        batch::read_all(map).context("reading HISTS")
    }

    /// Deletes entries of the in-kernel summary's counts: how many (the first so many of
    /// `keys`), and why no more where not all.
    pub fn delete_stats(&mut self, keys: &[StatKey]) -> (usize, anyhow::Result<()>) {
        match self.ebpf.map_mut("STATS") {
            Some(map) => batch::delete(map, keys),
            None => (0, Err(anyhow::anyhow!("STATS map missing"))),
        }
    }

    /// Deletes entries of the in-kernel summary's histograms, as `delete_stats`.
    pub fn delete_hists(&mut self, keys: &[HistKey]) -> (usize, anyhow::Result<()>) {
        match self.ebpf.map_mut("HISTS") {
            Some(map) => batch::delete(map, keys),
            None => (0, Err(anyhow::anyhow!("HISTS map missing"))),
        }
    }

    /// The in-kernel summary's per-CPU caches of the last key counted (--summary).
    pub fn stat_caches(&self) -> anyhow::Result<PerCpuArray<&MapData, StatCache>> {
        let map = self
            .ebpf
            .map("STAT_CACHE")
            .context("STAT_CACHE map missing")?;
        PerCpuArray::try_from(map).context("STAT_CACHE has an unexpected type")
    }

    /// The in-kernel summary's per-CPU caches of the last histogram (--summary).
    pub fn hist_caches(&self) -> anyhow::Result<PerCpuArray<&MapData, HistCache>> {
        let map = self
            .ebpf
            .map("HIST_CACHE")
            .context("HIST_CACHE map missing")?;
        PerCpuArray::try_from(map).context("HIST_CACHE has an unexpected type")
    }

    /// The addresses of user stack `stack_id` (--stack), innermost first.
    pub fn stack_ips(&self, stack_id: u32) -> anyhow::Result<Vec<u64>> {
        let map = self.ebpf.map("STACKS").context("STACKS map missing")?;
        let stacks =
            StackTraceMap::<&MapData>::try_from(map).context("STACKS has an unexpected type")?;
        let trace = stacks
            .get(&stack_id, 0)
            .with_context(|| format!("reading stack {stack_id}"))?;
        Ok(trace.frames().iter().map(|frame| frame.ip).collect())
    }

    /// What the attached backend sees besides faults (nothing before [`Probes::attach`]).
    pub fn sees(&self) -> Sees {
        self.sees
    }

    /// Attaches the shared programs, then the first backend of `choice` the kernel accepts.
    pub fn attach(&mut self, choice: BackendChoice) -> anyhow::Result<Backend> {
        for (program, category, event) in COMMON {
            backends::attach_tracepoint(&mut self.ebpf, program, category, event)?;
            log::info!("attached {program} to tracepoint {category}:{event}");
        }
        // Only where mappings are shown (KernelConfig::follow_unmaps), and optional: a kernel
        // without syscall tracepoints (CONFIG_FTRACE_SYSCALLS) loses only what they add,
        // mappings moved or unmapped (read from /proc while processes live).
        let unmaps: &[_] = if self.follow_unmaps { &UNMAPS } else { &[] };
        for (program, category, event) in unmaps {
            match backends::attach_tracepoint(&mut self.ebpf, program, category, event) {
                Ok(()) => log::info!("attached {program} to tracepoint {category}:{event}"),
                Err(error) => log::warn!(
                    "no {category}:{event} ({error:#}): memory unmapped or moved by mremap is not followed"
                ),
            }
        }
        let (program, event) = PAGE_ALLOC;
        backends::attach_raw_tracepoint(&mut self.ebpf, program, event)?;
        log::info!("attached {program} to raw tracepoint {event}");
        let candidates = backends::candidates(choice)?;
        if choice == BackendChoice::Auto && !backends::HAS_FAULT_TRACEPOINTS {
            log::info!(
                "{} kernels have no exceptions:page_fault_* tracepoints: \
                 trying fexit, then kprobe, on handle_mm_fault",
                std::env::consts::ARCH
            );
        }
        let mut refusals = Vec::new();
        for &backend in candidates {
            match backends::attach(&mut self.ebpf, backend, self.untimed) {
                Ok(sees) => {
                    self.backend = Some(backend);
                    self.sees = sees;
                    fault_once();
                    return Ok(backend);
                }
                Err(error) => {
                    log::info!("backend {} refused: {error:#}", backend.name());
                    refusals.push(format!("{}: {error:#}", backend.name()));
                }
            }
        }
        let hint = match choice {
            BackendChoice::Auto if backends::HAS_FAULT_TRACEPOINTS => {
                "check that tracefs and perf events are available"
            }
            BackendChoice::Auto => "the kernel needs kprobes, or BTF and BPF trampolines",
            _ => "try --backend auto",
        };
        Err(failure(
            Status::Kernel,
            format!("no backend could attach ({}); {hint}", refusals.join("; ")),
        ))
    }
}

/// Which stacks the kernel takes, and how.
fn set_stacks(settings: &mut Settings, stacks: Option<StackConfig>) {
    let Some(stacks) = stacks else {
        return;
    };
    settings.stacks = match stacks.method {
        StackMethod::Fp => stack_mode::FP,
        StackMethod::Dwarf => stack_mode::DWARF,
    };
    settings.stack_faults = match stacks.faults {
        StackFaults::Cow => stack_faults::COW,
        StackFaults::Writes => stack_faults::WRITES,
        StackFaults::All => stack_faults::ALL,
    };
    settings.stack_size = stacks.size;
    // bpf_task_pt_regs (5.15): the user registers of a fault taken in kernel mode.
    settings.task_regs = version::running().is_some_and(|v| v >= TASK_PT_REGS).into();
}

/// Takes one user-mode page fault in this process (a fresh page, written), so that the fault
/// programs note at once what the kernel's tracing path adds to a task's page-fault-disable
/// count, before a traced thread's kernel-mode fault needs it (see `faults.rs`).
fn fault_once() {
    // SAFETY: a private anonymous page of our own, written once and unmapped.
    unsafe {
        let page = libc::mmap(
            std::ptr::null_mut(),
            crate::page::size() as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        if page != libc::MAP_FAILED {
            std::ptr::write_volatile(page.cast::<u8>(), 1);
            libc::munmap(page, crate::page::size() as usize);
        }
    }
}

/// Linux 5.15: `bpf_task_pt_regs`.
const TASK_PT_REGS: version::KernelVersion = version::KernelVersion {
    major: 5,
    minor: 15,
};

fn read_settings(root: &Path, summary_mode: bool) -> anyhow::Result<Settings> {
    let required = |category, event, field| -> anyhow::Result<u32> {
        tracefs::field_offset(root, category, event, field)?.ok_or_else(|| {
            failure(
                Status::Kernel,
                format!("tracepoint {category}:{event} has no field {field} on this kernel"),
            )
        })
    };
    Ok(Settings {
        task_newtask_pid: required("task", "task_newtask", "pid")?,
        task_newtask_clone_flags: required("task", "task_newtask", "clone_flags")?,
        exit_group_dead: tracefs::field_offset(root, "sched", "sched_process_exit", "group_dead")?
            .unwrap_or(NO_FIELD),
        task_rename_pid: tracefs::field_offset(root, "task", "task_rename", "pid")?
            .unwrap_or(NO_FIELD),
        task_rename_newcomm: required("task", "task_rename", "newcomm")?,
        summary_mode: summary_mode.into(),
        copy_detection: 1,
        untimed: 0,
        stacks: stack_mode::NONE,
        stack_faults: stack_faults::COW,
        stack_size: 0,
        task_regs: 0,
        wakeup_bytes: 0,
        page_shift: crate::page::shift(),
        task_pagefault_disabled: btf::member_offset(
            Path::new(btf::VMLINUX),
            "task_struct",
            "pagefault_disabled",
        )
        .unwrap_or(NO_FIELD),
    })
}

/// The inode of the initial PID namespace (`PROC_PID_INIT_INO`), the same on every kernel.
const INITIAL_PID_NAMESPACE: u64 = 0xEFFF_FFFC;

/// The kernel programs see the host's process ids; inside a PID namespace of its own (a
/// container without the host's PID namespace) cow-trace would know its target by another
/// number and silently trace nothing.
fn check_pid_namespace() -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt as _;
    // Unreadable (no /proc): the target checks will say so.
    let Ok(namespace) = std::fs::metadata("/proc/self/ns/pid") else {
        return Ok(());
    };
    if namespace.ino() == INITIAL_PID_NAMESPACE {
        return Ok(());
    }
    Err(failure(
        Status::Kernel,
        "cow-trace runs in a PID namespace of its own (a container?), where process ids are \
         not the ones the kernel's programs see: run it in the host's PID namespace (from the \
         host, or with docker run --pid=host)",
    ))
}

/// Without root, say exactly what is missing instead of a raw EPERM later.
fn check_privilege() -> anyhow::Result<()> {
    if nix::unistd::Uid::effective().is_root() {
        return Ok(());
    }
    const CAP_SYS_ADMIN: u32 = 21;
    const CAP_PERFMON: u32 = 38;
    const CAP_BPF: u32 = 39;
    let effective = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        })
        .unwrap_or(0);
    let has = |cap: u32| effective & (1 << cap) != 0;
    if has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON)) {
        return Ok(());
    }
    Err(failure(
        Status::Privilege,
        "tracing needs root, or the CAP_BPF and CAP_PERFMON capabilities, to load eBPF programs: run it with sudo",
    ))
}

/// Each traced thread holds a perf event or two open (tracepoint backend): allow as many files
/// as the hard limit does.
fn raise_open_file_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain getrlimit/setrlimit on a local struct; a failure leaves the soft limit, and
    // opening an event then says what ran out.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK.
fn raise_memlock_limit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain setrlimit; failure only matters on old kernels, where loading says so.
    unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) };
}
