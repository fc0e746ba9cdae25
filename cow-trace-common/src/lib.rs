//! Types shared by the kernel programs (cow-trace-ebpf) and the loader (cow-trace).
//!
//! Everything here is `#[repr(C)]` and plain old data: the kernel writes these bytes into the
//! ring buffer and userspace reads them back unchanged.
#![no_std]

/// What a ring-buffer [`Record`] describes.
pub mod kind {
    /// A page fault that completed (the kernel counted it as MINOR or MAJOR).
    pub const FAULT: u32 = 1;
    /// A fault that entered the handler but never completed: SIGSEGV, SIGBUS, OOM, a fatal
    /// signal while retrying, or a kernel access fixed up by an exception table.
    pub const FAULT_INCOMPLETE: u32 = 2;
    /// A traced process created a child (`other_pid` is the child's pid).
    pub const FORK: u32 = 3;
    /// The last thread of a traced process exited.
    pub const EXIT: u32 = 4;
}

/// Bits of [`Record::flags`] for faults.
pub mod flags {
    /// The kernel counted the fault as major (it waited for I/O, or retried).
    pub const MAJOR: u32 = 1 << 0;
    /// The fault was taken in kernel mode on a user address (e.g. copy_to_user in read()).
    pub const KERNEL_MODE: u32 = 1 << 1;
    /// Entry was seen but the completion belonged to no pending entry, so address, access and
    /// latency come from the completion alone (the entry predates attaching, or was lost).
    pub const NO_ENTRY: u32 = 1 << 2;
}

/// x86 page-fault error code bits (arch/x86/include/asm/trap_pf.h).
pub mod x86_pf {
    /// The page was present: a protection fault, not a missing page.
    pub const PROT: u64 = 1 << 0;
    /// The access was a write.
    pub const WRITE: u64 = 1 << 1;
    /// The access came from user mode.
    pub const USER: u64 = 1 << 2;
    /// A reserved bit was set in a paging-structure entry.
    pub const RSVD: u64 = 1 << 3;
    /// The access was an instruction fetch.
    pub const INSTR: u64 = 1 << 4;
}

/// Index of each counter in the per-CPU `COUNTERS` array.
pub mod counter {
    /// Events lost because the ring buffer was full.
    pub const RING_FULL: u32 = 0;
    /// Fault entries that could not be remembered because the pending map was full.
    pub const PENDING_FULL: u32 = 1;
    /// Children that could not be added to the traced map because it was full.
    pub const TRACED_FULL: u32 = 2;
    /// Number of counters.
    pub const COUNT: u32 = 3;
}

/// Tracepoint field offsets, read from tracefs at load time because they may differ between
/// kernels (e.g. `sched_process_exit.group_dead` exists only since 6.16).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TracepointOffsets {
    /// `task_newtask.pid` (the new task's id).
    pub task_newtask_pid: u32,
    /// `task_newtask.clone_flags`.
    pub task_newtask_clone_flags: u32,
    /// `sched_process_exit.group_dead`, or [`NO_FIELD`] where the kernel lacks it.
    pub exit_group_dead: u32,
    pub _pad: u32,
}

/// Marks a tracepoint field this kernel does not have.
pub const NO_FIELD: u32 = u32::MAX;

/// Length of a task's comm, as in the kernel.
pub const COMM_LEN: usize = 16;

/// One ring-buffer record. Faults fill every field; fork and exit records fill `kind`,
/// `ts_ns`, `pid`, `tid`, `comm` and `other_pid`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record {
    /// One of [`kind`].
    pub kind: u32,
    /// Bits of [`flags`].
    pub flags: u32,
    /// CLOCK_MONOTONIC time of fault entry (or of the event), in ns.
    pub ts_ns: u64,
    /// Fault handling time, entry to completion, in ns (0 when unknown).
    pub latency_ns: u64,
    /// Faulting user address.
    pub address: u64,
    /// Instruction pointer at the fault.
    pub ip: u64,
    /// x86 page-fault error code (bits in [`x86_pf`]).
    pub error_code: u64,
    /// Thread group id (what users call the pid).
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// Fork: the child's pid. Exit: unused.
    pub other_pid: u32,
    pub _pad: u32,
    /// The task's command name, NUL padded.
    pub comm: [u8; COMM_LEN],
}

impl Record {
    /// A record with every field zeroed.
    pub const fn zeroed() -> Self {
        Record {
            kind: 0,
            flags: 0,
            ts_ns: 0,
            latency_ns: 0,
            address: 0,
            ip: 0,
            error_code: 0,
            pid: 0,
            tid: 0,
            other_pid: 0,
            _pad: 0,
            comm: [0; COMM_LEN],
        }
    }
}

/// A fault entry remembered per thread until its completion event arrives.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PendingFault {
    pub ts_ns: u64,
    pub address: u64,
    pub ip: u64,
    pub error_code: u64,
    pub kernel_mode: u32,
    pub _pad: u32,
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: both are #[repr(C)] plain data with explicit padding fields.
    unsafe impl aya::Pod for super::Record {}
    unsafe impl aya::Pod for super::PendingFault {}
    unsafe impl aya::Pod for super::TracepointOffsets {}
}
