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
    /// The C compiler that builds the workloads for this architecture (dynamically linked
    /// against its glibc, as on a host: one of them loads a library with dlopen).
    pub cc: &'static str,
    /// Where that glibc's dynamic loader and libraries are on the host (the host's own, or
    /// the cross compiler's), and Debian's multiarch name, under which the VM gets them
    /// (/lib/NAME): the workloads and, on x86-64, the suite are dynamically linked.
    pub glibc: &'static str,
    pub multiarch: &'static str,
    /// The runs of the suite: each backend, passed to cow-trace as `--backend` through
    /// COW_TRACE_BACKEND; a `-untimed` run adds --no-latency (COW_TRACE_UNTIMED).
    pub backends: &'static [&'static str],
    /// Backends this architecture's kernels allow only from a version on: (backend, major,
    /// minor, why).
    pub since: &'static [(&'static str, u32, u32, &'static str)],
}

impl VmArch {
    pub fn name(&self) -> &'static str {
        self.dist.name
    }

    /// The runs of the suite on the kernel `release`, and those left out there, with why.
    pub fn runs(&self, release: &str) -> (Vec<&'static str>, Vec<(&'static str, &'static str)>) {
        let version = kernel_version(release);
        let mut runs = Vec::new();
        let mut left_out = Vec::new();
        for &run in self.backends {
            let backend = run.strip_suffix("-untimed").unwrap_or(run);
            match self.since.iter().find(|(b, ..)| *b == backend) {
                Some(&(_, major, minor, why)) if version.is_some_and(|v| v < (major, minor)) => {
                    left_out.push((run, why))
                }
                _ => runs.push(run),
            }
        }
        (runs, left_out)
    }
}

/// (major, minor) of a release as uname(2) gives it: "6.1.0-57-arm64" -> (6, 1).
fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut numbers = release.split(['.', '-', '+']);
    Some((numbers.next()?.parse().ok()?, numbers.next()?.parse().ok()?))
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
    glibc: "/lib/x86_64-linux-gnu",
    multiarch: "x86_64-linux-gnu",
    backends: &["fexit", "kprobe", "tracepoint", "tracepoint-untimed"],
    since: &[],
};

/// arm64 has no exceptions:page_fault_* tracepoints, so no tracepoint runs. One CPU: one vCPU
/// is one host thread. Pointer authentication (which Debian's kernels and glibc use) with
/// qemu's own cheap signing algorithm instead of the architected QARMA5: the suite then runs in
/// about 120 s instead of 340 s, and the guest still signs and checks every return address.
pub const AARCH64: VmArch = VmArch {
    dist: &dist::AARCH64,
    qemu: "qemu-system-aarch64",
    qemu_args: &[
        "-M",
        "virt",
        "-accel",
        "tcg",
        "-cpu",
        "max,pauth-impdef=on",
        "-smp",
        "1",
        "-m",
        "1024",
    ],
    kernel_args: "console=ttyAMA0 quiet panic=-1",
    cc: "aarch64-linux-gnu-gcc",
    glibc: "/usr/aarch64-linux-gnu/lib",
    multiarch: "aarch64-linux-gnu",
    backends: &["fexit", "kprobe"],
    // BPF trampolines reach kernel functions through ftrace's direct calls, which arm64 has
    // since 6.4 (Debian's 6.1 refuses the attach with ENOTSUPP).
    since: &[(
        "fexit",
        6,
        4,
        "arm64 kernels before 6.4 cannot attach BPF trampolines to kernel functions",
    )],
};

pub const ALL: [&VmArch; 2] = [&X86_64, &AARCH64];

/// The environment of one run of the suite.
pub fn run_environment(run: &str) -> String {
    match run.strip_suffix("-untimed") {
        Some(backend) => format!("COW_TRACE_BACKEND={backend} COW_TRACE_UNTIMED=1"),
        None => format!("COW_TRACE_BACKEND={run}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fexit_runs_on_arm64_from_6_4() {
        assert_eq!(AARCH64.runs("6.1.0-57-arm64").0, ["kprobe"]);
        assert_eq!(AARCH64.runs("6.1.0-57-arm64").1[0].0, "fexit");
        assert_eq!(AARCH64.runs("6.12.117+deb12-arm64").0, ["fexit", "kprobe"]);
        assert_eq!(X86_64.runs("6.1.0-57-amd64").0, X86_64.backends);
        assert_eq!(kernel_version("6.12.117+deb12-arm64"), Some((6, 12)));
    }
}
