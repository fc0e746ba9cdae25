//! The kernel side, seen from userspace: loading and attaching the eBPF programs (`probes`,
//! `backends`, `tracefs`), and reading what they write (`ring` for the streamed records and
//! the loss counters, `kstats` for `--summary`'s counts), and the kernel's record of the
//! traced processes' mappings (`mmap_events`, perf events, apart from the eBPF programs).
pub mod backends;
mod batch;
mod btf;
pub mod diagnostics;
pub mod kstats;
mod mapped;
pub mod mmap_events;
pub mod probes;
pub mod ring;
pub mod tracefs;
pub mod version;

use crate::{
    cli::{StackFaults, StackMethod},
    failure::{Status, failure},
};

/// What the kernel side needs to know of the run: sizes and modes fixed before loading.
#[derive(Clone, Copy, Debug)]
pub struct KernelConfig {
    /// Bytes of the EVENTS ring buffer.
    pub ring_size: u32,
    /// --summary: count in the kernel instead of streaming each fault.
    pub summary: bool,
    /// --stack: how user stacks are captured, at which faults; None: not at all.
    pub stacks: Option<StackConfig>,
    /// --no-latency.
    pub untimed: bool,
    /// Follow munmap and mremap (syscall tracepoints), where mappings are shown (--resolve,
    /// stacks, flame graphs): enabling any syscall tracepoint puts every system call of the
    /// machine on the kernel's slow path (about 65 ns each here), too dear where they are not.
    pub follow_unmaps: bool,
}

/// How the kernel side takes user stacks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StackConfig {
    pub method: StackMethod,
    pub faults: StackFaults,
    /// --stack=dwarf: the most stack copied per fault.
    pub size: u32,
}

pub fn kernel_error(what: &str, error: impl std::error::Error) -> anyhow::Error {
    let mut detail = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        detail.push_str(": ");
        detail.push_str(&cause.to_string());
        source = cause.source();
    }
    failure(
        Status::Kernel,
        format!("the kernel refused {what}: {detail}"),
    )
}
