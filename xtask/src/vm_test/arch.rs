//! The architectures the VMs emulate: for each, the shipped build it runs, how qemu boots it
//! and which backends its kernels offer.
use crate::dist;

/// One emulated architecture.
pub struct VmArch {
    /// The static binary's target and Debian's architecture name (kernel and busybox packages).
    pub dist: &'static dist::Arch,
    /// The emulator and its machine settings.
    pub qemu: &'static str,
    pub qemu_args: &'static [&'static str],
    /// The kernel command line (its serial console differs).
    pub kernel_args: &'static str,
    /// The C compiler that builds the workloads (static) for this architecture.
    pub cc: &'static str,
    /// The runs of the suite: each backend, passed to cow-trace as `--backend` through
    /// COW_TRACE_BACKEND; a `-untimed` run adds --no-latency (COW_TRACE_UNTIMED).
    pub backends: &'static [&'static str],
}

impl VmArch {
    pub fn name(&self) -> &'static str {
        self.dist.name
    }
}

/// KVM does not work here (nested virtualisation), so TCG; and single-threaded TCG, because
/// with one host thread per vCPU Debian's 6.12 oopses ("int3" in exc_page_fault) when a
/// static key is flipped while another vCPU takes page faults, as enabling the page-fault
/// tracepoint does. The guest still has two CPUs.
pub const X86_64: VmArch = VmArch {
    dist: &dist::X86_64,
    qemu: "qemu-system-x86_64",
    qemu_args: &[
        "-accel",
        "tcg,thread=single",
        "-cpu",
        "max",
        "-smp",
        "2",
        "-m",
        "2G",
    ],
    kernel_args: "console=ttyS0 quiet panic=-1",
    cc: "cc",
    backends: &["fexit", "kprobe", "tracepoint", "tracepoint-untimed"],
};

/// arm64 has no exceptions:page_fault_* tracepoints, so no tracepoint runs. One CPU: TCG
/// emulating arm64 is slow, and one vCPU is one host thread.
pub const AARCH64: VmArch = VmArch {
    dist: &dist::AARCH64,
    qemu: "qemu-system-aarch64",
    qemu_args: &[
        "-M", "virt", "-accel", "tcg", "-cpu", "max", "-smp", "1", "-m", "1024",
    ],
    kernel_args: "console=ttyAMA0 quiet panic=-1",
    cc: "aarch64-linux-gnu-gcc",
    backends: &["fexit", "kprobe"],
};

pub const ALL: [&VmArch; 2] = [&X86_64, &AARCH64];

/// The environment of one run of the suite.
pub fn run_environment(run: &str) -> String {
    match run.strip_suffix("-untimed") {
        Some(backend) => format!("COW_TRACE_BACKEND={backend} COW_TRACE_UNTIMED=1"),
        None => format!("COW_TRACE_BACKEND={run}"),
    }
}
