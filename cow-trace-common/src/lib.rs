//! Types shared by the kernel programs (cow-trace-ebpf) and the loader (cow-trace).
//!
//! Everything here is `#[repr(C)]` and plain old data: the kernel writes these bytes into maps
//! and the ring buffer, and userspace reads them back unchanged.
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
    /// One attempt at a fault returned VM_FAULT_RETRY; the fault goes on (handle_mm_fault
    /// backends only: the tracepoint backend sees faults whole).
    pub const FAULT_RETRY: u32 = 5;
    /// A traced process executed a new program (`comm` is its new name).
    pub const EXEC: u32 = 6;
    /// A thread's user registers and the top of its stack at a fault's entry (--stack=dwarf):
    /// a [`super::StackHeader`] followed by the stack's bytes. The fault's own record follows
    /// later, flagged [`super::flags::USER_STACK`], with the same entry time.
    pub const STACK: u32 = 7;
    /// A traced process unmapped memory (`munmap`): an [`super::AddressSpaceRecord`].
    pub const UNMAP: u32 = 8;
    /// A traced process resized or moved a mapping (`mremap`): an
    /// [`super::AddressSpaceRecord`].
    pub const REMAP: u32 = 9;
}

/// Bits of [`Record::flags`] for faults.
pub mod flags {
    /// The kernel counted the fault as major (it waited for I/O, or retried).
    pub const MAJOR: u32 = 1 << 0;
    /// The fault was taken in kernel mode on a user address (e.g. copy_to_user in read()).
    pub const KERNEL_MODE: u32 = 1 << 1;
    /// No entry was pending for this completion (the fault began before attaching, or its
    /// entry could not be stored): access, error code and latency are unknown.
    pub const NO_ENTRY: u32 = 1 << 2;
    /// A user page was allocated while the fault was handled: on a write-protect fault, the
    /// page was copied (a real copy-on-write), not reused.
    pub const PAGE_ALLOCATED: u32 = 1 << 3;
    /// Copy detection was active for this fault, so the absence of PAGE_ALLOCATED and
    /// PAGE_ZEROED means reuse.
    pub const COPY_KNOWN: u32 = 1 << 4;
    /// A zeroed user page was allocated while the fault was handled: on a write-protect fault,
    /// a write to the shared zero page (memory read, never written, since it was mapped), which
    /// fills a fresh page rather than copying a shared one.
    pub const PAGE_ZEROED: u32 = 1 << 5;
    /// The fault was not timed (--no-latency): its latency is unknown.
    pub const UNTIMED: u32 = 1 << 6;
    /// The fault read its page back from swap (handle_mm_fault backends, where `do_swap_page`
    /// can be hooked): a page it allocated holds the page read back, not a copy.
    pub const SWAP_IN: u32 = 1 << 7;
    /// The fault's user stack was copied into the ring (--stack=dwarf): a
    /// [`super::kind::STACK`] record with the same entry time precedes this one.
    pub const USER_STACK: u32 = 1 << 8;
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

/// A fault's class, as the in-kernel summary keys it: the same facts a record carries, folded
/// into one number so that both modes classify alike.
pub mod class {
    /// Bits 0-1: the access.
    pub const ACCESS_MASK: u32 = 0b11;
    pub const READ: u32 = 0;
    pub const WRITE: u32 = 1;
    pub const EXEC: u32 = 2;
    pub const UNKNOWN: u32 = 3;
    pub const MAJOR: u32 = 1 << 2;
    pub const INCOMPLETE: u32 = 1 << 3;
    /// A write to a present page: the write-protect (copy-on-write) fault.
    pub const WRITE_PROTECT: u32 = 1 << 4;
    /// On a write-protect fault with COPY_KNOWN: the page was copied.
    pub const COPIED: u32 = 1 << 5;
    /// On a write-protect fault: whether copy or reuse is known.
    pub const COPY_KNOWN: u32 = 1 << 6;
    pub const KERNEL_MODE: u32 = 1 << 7;
    /// An attempt that returned VM_FAULT_RETRY (the fault itself goes on).
    pub const RETRY: u32 = 1 << 8;
    /// On a write-protect fault with COPY_KNOWN: a write to the shared zero page, filled with a
    /// fresh zeroed page (nothing shared was copied).
    pub const ZERO_FILL: u32 = 1 << 9;
    /// A write to a page not present that allocated a user page not zeroed (PAGE_ALLOCATED),
    /// not read back from swap. In a private file mapping that page is the private copy of the
    /// file's page (the kernel's do_cow_fault allocates it first, then reads the file's page
    /// if need be, and copies); elsewhere it is a page-cache page (a shared file's, or
    /// shmem's) or a page read back from swap. The kernel cannot tell the mappings apart:
    /// userspace resolves it, with [`super::FaultClass::with_mapping`], to FILE_COPY or to
    /// nothing.
    pub const NEW_PAGE: u32 = 1 << 10;
    /// Set by userspace only, for a NEW_PAGE fault in a private file mapping: the file's page
    /// was copied into private memory.
    pub const FILE_COPY: u32 = 1 << 11;
    /// Set by userspace only, for a write-protect fault that allocated nothing in a shared
    /// mapping (the kernel watching a clean page's first write): no copy-on-write, so
    /// WRITE_PROTECT and COPY_KNOWN are cleared (see [`super::FaultClass::with_mapping`]).
    pub const SHARED_WRITE: u32 = 1 << 12;

    use super::{flags, x86_pf};

    /// Classifies a fault record.
    #[inline(always)]
    pub fn of_record(record: &super::Record) -> u32 {
        let mut class = of(
            record.kind == super::kind::FAULT_INCOMPLETE,
            record.flags,
            record.error_code,
        );
        if record.kind == super::kind::FAULT_RETRY {
            // The attempt freed what it allocated: the fault goes on, and copies then.
            class = (class | RETRY) & !NEW_PAGE;
        }
        class
    }

    /// Classifies a fault from its record kind, flags and error code.
    #[inline(always)]
    pub fn of(incomplete: bool, record_flags: u32, error_code: u64) -> u32 {
        let mut class = if record_flags & flags::NO_ENTRY != 0 {
            UNKNOWN
        } else if error_code & x86_pf::INSTR != 0 {
            EXEC
        } else if error_code & x86_pf::WRITE != 0 {
            WRITE
        } else {
            READ
        };
        if incomplete {
            class |= INCOMPLETE;
        }
        if record_flags & flags::MAJOR != 0 {
            class |= MAJOR;
        }
        if record_flags & flags::KERNEL_MODE != 0 {
            class |= KERNEL_MODE;
        }
        let write_protect = x86_pf::PROT | x86_pf::WRITE;
        if record_flags & flags::NO_ENTRY == 0 && error_code & write_protect == write_protect {
            class |= WRITE_PROTECT;
            if record_flags & flags::COPY_KNOWN != 0 {
                class |= COPY_KNOWN;
                if record_flags & flags::PAGE_ALLOCATED != 0 {
                    class |= COPIED;
                } else if record_flags & flags::PAGE_ZEROED != 0 {
                    class |= ZERO_FILL;
                }
            }
        } else if !incomplete
            && class & ACCESS_MASK == WRITE
            && record_flags & (flags::COPY_KNOWN | flags::PAGE_ALLOCATED | flags::SWAP_IN)
                == flags::COPY_KNOWN | flags::PAGE_ALLOCATED
        {
            class |= NEW_PAGE;
        }
        class
    }
}

/// What kind of mapping held a fault's address, as far as classifying the fault needs (see
/// [`FaultClass::with_mapping`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MappingKind {
    /// A private mapping of a file (memfd and tmpfs files too).
    PrivateFile,
    /// A shared mapping (of a file, or shared anonymous memory).
    Shared,
    /// Private anonymous memory, or a mapping not known.
    Other,
}

/// How the faulting access touched memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
    Exec,
}

impl Access {
    /// One letter, as the article's stap script prints it: r, w or x.
    pub const fn letter(self) -> char {
        match self {
            Access::Read => 'r',
            Access::Write => 'w',
            Access::Exec => 'x',
        }
    }
}

/// How the kernel accounted a fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Minor,
    Major,
    /// Entered the handler but never completed (SIGSEGV, SIGBUS, OOM, exception fix-up).
    Incomplete,
    /// One attempt returned VM_FAULT_RETRY; the fault goes on (handle_mm_fault backends).
    Retry,
}

impl Outcome {
    /// MINOR, MAJOR, INCOMPLETE or RETRY, in every output format.
    pub const fn label(self) -> &'static str {
        match self {
            Outcome::Minor => "MINOR",
            Outcome::Major => "MAJOR",
            Outcome::Incomplete => "INCOMPLETE",
            Outcome::Retry => "RETRY",
        }
    }
}

/// What a write-protect (copy-on-write) fault did to the page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CowOutcome {
    /// A page shared with another process was copied.
    Copied,
    /// The page was no longer shared: its last sharer kept it.
    Reused,
    /// The page was the shared zero page (read, never written): a zeroed page was filled.
    ZeroFilled,
}

impl CowOutcome {
    /// The text format's COW column: copy, reuse or zero.
    pub const fn column(self) -> &'static str {
        match self {
            CowOutcome::Copied => "copy",
            CowOutcome::Reused => "reuse",
            CowOutcome::ZeroFilled => "zero",
        }
    }

    /// The JSON format's `cow_outcome` value (part of its schema): copied, reused or zero-fill.
    pub const fn json_value(self) -> &'static str {
        match self {
            CowOutcome::Copied => "copied",
            CowOutcome::Reused => "reused",
            CowOutcome::ZeroFilled => "zero-fill",
        }
    }

    /// The summary's class label part: cow-copied, cow-reused or cow-zero.
    pub const fn summary_label(self) -> &'static str {
        match self {
            CowOutcome::Copied => "cow-copied",
            CowOutcome::Reused => "cow-reused",
            CowOutcome::ZeroFilled => "cow-zero",
        }
    }
}

/// A fault's class (the bits of [`class`]) as a type: what the bits mean is read here only.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FaultClass(u32);

impl FaultClass {
    /// The class of a fault record.
    #[inline(always)]
    pub fn of_record(record: &Record) -> FaultClass {
        FaultClass(class::of_record(record))
    }

    /// The class of a fault from its record kind, flags and error code.
    #[inline(always)]
    pub fn of(incomplete: bool, record_flags: u32, error_code: u64) -> FaultClass {
        FaultClass(class::of(incomplete, record_flags, error_code))
    }

    /// A class as the kernel's summary keys it ([`StatKey::class`], [`HistKey::class`]).
    pub const fn from_bits(bits: u32) -> FaultClass {
        FaultClass(bits)
    }

    pub const fn bits(self) -> u32 {
        self.0
    }

    const fn has(self, bit: u32) -> bool {
        self.0 & bit != 0
    }

    /// The access; None when unknown (the fault's entry was not seen).
    pub const fn access(self) -> Option<Access> {
        match self.0 & class::ACCESS_MASK {
            class::READ => Some(Access::Read),
            class::WRITE => Some(Access::Write),
            class::EXEC => Some(Access::Exec),
            _ => None,
        }
    }

    /// How the kernel accounted the fault (a retried attempt or an incomplete fault first).
    pub const fn outcome(self) -> Outcome {
        if self.has(class::RETRY) {
            Outcome::Retry
        } else if self.has(class::INCOMPLETE) {
            Outcome::Incomplete
        } else if self.has(class::MAJOR) {
            Outcome::Major
        } else {
            Outcome::Minor
        }
    }

    /// A fault the kernel counted in minflt or majflt: neither a retried attempt nor one that
    /// never completed.
    pub const fn is_completed(self) -> bool {
        matches!(self.outcome(), Outcome::Minor | Outcome::Major)
    }

    /// A write to a present page: the write-protect (copy-on-write) fault.
    pub const fn is_write_protect(self) -> bool {
        self.has(class::WRITE_PROTECT)
    }

    /// A fault whose meaning depends on the mapping: a write to a page not present that
    /// allocated a page (see [`class::NEW_PAGE`]), or a write-protect fault that allocated
    /// nothing (a reuse in a private mapping; in a shared one, the kernel tracking the page's
    /// first write since it was cleaned, no copy-on-write at all). Userspace resolves it with
    /// [`FaultClass::with_mapping`].
    pub const fn needs_mapping(self) -> bool {
        self.has(class::NEW_PAGE) || matches!(self.cow_outcome(), Some(CowOutcome::Reused))
    }

    /// The class of a fault that [`FaultClass::needs_mapping`] once its mapping is known: a
    /// first write that allocated a page copied the file's page in a private file mapping, else
    /// (a page-cache page, or one read back from swap) it is an ordinary write; a write-protect
    /// fault in a shared mapping is an ordinary write too. Other classes are returned unchanged.
    pub const fn with_mapping(self, mapping: MappingKind) -> FaultClass {
        if !self.needs_mapping() {
            return self;
        }
        if self.has(class::NEW_PAGE) {
            let bits = self.0 & !class::NEW_PAGE;
            return FaultClass(if matches!(mapping, MappingKind::PrivateFile) {
                bits | class::FILE_COPY
            } else {
                bits
            });
        }
        if matches!(mapping, MappingKind::Shared) {
            FaultClass(self.0 & !(class::WRITE_PROTECT | class::COPY_KNOWN) | class::SHARED_WRITE)
        } else {
            self
        }
    }

    /// The class as the latency histograms key it: they carry no address, so a first write
    /// that allocated a page goes with the other writes of its kind, and a write-protect fault
    /// that kept its page with the reuses, whatever its mapping (resolved or not).
    pub const fn without_mapping(self) -> FaultClass {
        let bits = self.0 & !(class::NEW_PAGE | class::FILE_COPY | class::SHARED_WRITE);
        FaultClass(if self.has(class::SHARED_WRITE) {
            bits | class::WRITE_PROTECT | class::COPY_KNOWN
        } else {
            bits
        })
    }

    /// A first write to a page of a private file mapping, which copied the file's page into
    /// private memory (the kernel's do_cow_fault): a copy, though no write-protect fault.
    pub const fn is_file_copy(self) -> bool {
        self.has(class::FILE_COPY)
    }

    /// Taken in kernel mode on a user address.
    pub const fn is_kernel_mode(self) -> bool {
        self.has(class::KERNEL_MODE)
    }

    /// How a copy-on-write fault ended: a write-protect fault's copy, reuse or zero fill, or a
    /// file's page copied into a private mapping at a first write (see
    /// [`FaultClass::is_file_copy`]); None for other faults, or where copy detection did not
    /// see it.
    pub const fn cow_outcome(self) -> Option<CowOutcome> {
        if self.is_file_copy() {
            return Some(CowOutcome::Copied);
        }
        if !self.is_write_protect() || !self.has(class::COPY_KNOWN) {
            return None;
        }
        Some(if self.has(class::COPIED) {
            CowOutcome::Copied
        } else if self.has(class::ZERO_FILL) {
            CowOutcome::ZeroFilled
        } else {
            CowOutcome::Reused
        })
    }
}

/// "w MINOR cow-copied", "r MAJOR", "x MINOR kernel", ...: the summary's name of a class.
#[cfg(feature = "user")]
impl core::fmt::Display for FaultClass {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let access = self.access().map_or('?', Access::letter);
        write!(f, "{access} {}", self.outcome().label())?;
        if self.is_write_protect() {
            let cow = self.cow_outcome().map_or("cow", CowOutcome::summary_label);
            write!(f, " {cow}")?;
        } else if self.is_file_copy() {
            f.write_str(" file-copied")?;
        }
        if self.is_kernel_mode() {
            f.write_str(" kernel")?;
        }
        Ok(())
    }
}

/// Index of each counter in the per-CPU `COUNTERS` array.
pub mod counter {
    /// Events lost because the ring buffer was full.
    pub const RING_FULL: u32 = 0;
    /// Fault entries that could not be remembered because the pending map was full.
    pub const PENDING_FULL: u32 = 1;
    /// Children that could not be added to the traced map because it was full.
    pub const TRACED_FULL: u32 = 2;
    /// Faults not counted because `STATS`, the summary's map of counts, was full: lost.
    pub const SUMMARY_FULL: u32 = 3;
    /// User stacks not taken because they could not be read: no user registers, the stack
    /// not mapped, or (--stack=fp) the kernel's frame-pointer walk failed.
    pub const STACK_UNREADABLE: u32 = 4;
    /// User stacks not kept (--stack=fp): the stack map's bucket held another stack, or the
    /// map was full.
    pub const STACK_MAP_FULL: u32 = 5;
    /// User stacks not delivered (--stack=dwarf): the ring buffer was full.
    pub const STACK_RING_FULL: u32 = 6;
    /// User stacks not copied (--stack=dwarf): the CPU's copy buffer was in use by a program
    /// this one preempted (fentry programs run preemptible).
    pub const STACK_BUFFER_BUSY: u32 = 7;
    /// Timed faults whose latency is not in the histograms because `HISTS` was full. The
    /// faults themselves are counted (in `STATS`, with their latencies): nothing is lost but
    /// the histograms' samples.
    pub const HIST_FULL: u32 = 8;
    /// Number of counters.
    pub const COUNT: u32 = 9;
}

/// Sizes of the in-kernel summary's shared maps (--summary), set by userspace at load.
pub mod summary_maps {
    /// `STATS`: fault counts per pid x class x window x stack x 64 KiB region.
    pub const STATS: u32 = 65536;
    /// `HISTS`: log2 latency histograms per pid x class.
    pub const HISTS: u32 = 4096;
}

/// Settings userspace writes into the object before loading it: tracepoint field offsets,
/// which may differ between kernels (e.g. `sched_process_exit.group_dead` exists only since
/// 6.16), and the mode.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    /// `task_newtask.pid` (the new task's id).
    pub task_newtask_pid: u32,
    /// `task_newtask.clone_flags`.
    pub task_newtask_clone_flags: u32,
    /// `sched_process_exit.group_dead`, or [`NO_FIELD`] where the kernel lacks it.
    pub exit_group_dead: u32,
    /// `task_rename.pid` (the renamed task), or [`NO_FIELD`] where the kernel lacks it (the
    /// renamed task is then the current one).
    pub task_rename_pid: u32,
    /// `task_rename.newcomm`.
    pub task_rename_newcomm: u32,
    /// Non-zero: aggregate faults in the kernel (STATS, HISTS) instead of streaming them.
    pub summary_mode: u32,
    /// Non-zero: the mm_page_alloc program is attached, so copy vs reuse is known.
    pub copy_detection: u32,
    /// Non-zero (--no-latency): faults are not timed. The tracepoint backend then attaches no
    /// completion event for minor faults: a thread's fault is final when the thread next
    /// faults, execs or exits, or when userspace collects it at stop (see
    /// [`PendingFault::to_record`]).
    pub untimed: u32,
    /// How user stacks are taken (--stack): one of [`stack_mode`].
    pub stacks: u32,
    /// Which faults carry a stack (--stack-faults): one of [`stack_faults`].
    pub stack_faults: u32,
    /// --stack=dwarf: the most stack copied per fault, in bytes (a multiple of 8, at most
    /// [`MAX_STACK_SIZE`]).
    pub stack_size: u32,
    /// Non-zero where the kernel has `bpf_task_pt_regs` (5.15): a kernel-mode fault's user
    /// registers are the task's, saved at its entry into the kernel.
    pub task_regs: u32,
    /// Wake userspace only once a CPU has written this many bytes to the ring since it last
    /// did: waking it for every fault would cost a context switch each. (Userspace gives each
    /// CPU an even share of an eighth of the ring; it also drains on a short timer.)
    pub wakeup_bytes: u32,
    /// log2 of the system's page size (12 for 4 KiB; arm64 kernels also use 16 and 64 KiB):
    /// a fault's completion pairs with the entry pending for the same page.
    pub page_shift: u32,
    /// Byte offset of `task_struct.pagefault_disabled` (from the kernel's BTF), or
    /// [`NO_FIELD`]: a kernel-mode fault taken while it is non-zero is a read that may not
    /// fault (another tracer reading a user stack), which the kernel never handles or counts.
    pub task_pagefault_disabled: u32,
}

/// No stack captured (not asked for, or the stack map was full).
pub const NO_STACK: i32 = -1;

/// How user stacks are taken ([`Settings::stacks`]).
pub mod stack_mode {
    /// None taken.
    pub const NONE: u32 = 0;
    /// The kernel walks the frame pointers (`bpf_get_stackid`).
    pub const FP: u32 = 1;
    /// The registers and the top of the stack are copied; userspace unwinds them with the
    /// binaries' call-frame tables.
    pub const DWARF: u32 = 2;
}

/// Which faults carry a user stack ([`Settings::stack_faults`]).
pub mod stack_faults {
    /// Write-protect (copy-on-write) faults.
    pub const COW: u32 = 0;
    /// Every write fault (first writes too: a private file mapping's copies).
    pub const WRITES: u32 = 1;
    /// Every fault.
    pub const ALL: u32 = 2;
}

/// Registers a [`StackHeader`] carries: x86-64 ip, sp, bp and 0; arm64 pc, sp, fp (x29), lr
/// (x30).
pub const STACK_REGS: usize = 4;

/// The most stack a record carries (--stack-size), as perf allows.
pub const MAX_STACK_SIZE: u32 = 65528;

/// The head of a [`kind::STACK`] record; `size` bytes of stack follow, from `regs[1]` (sp) up.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StackHeader {
    /// [`kind::STACK`].
    pub kind: u32,
    pub flags: u32,
    /// The fault's entry time, as in its record.
    pub ts_ns: u64,
    pub pid: u32,
    pub tid: u32,
    pub regs: [u64; STACK_REGS],
    /// Bytes of stack that follow.
    pub size: u32,
    /// The most the kernel copies (--stack-size): a copy this long may have been cut short.
    pub limit: u32,
}

/// A change to a traced process's address space that the kernel's own mapping records (perf
/// `MMAP2`) do not report: [`kind::UNMAP`] or [`kind::REMAP`], after the call succeeded.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddressSpaceRecord {
    pub kind: u32,
    pub _pad: u32,
    /// When the call returned (CLOCK_MONOTONIC ns).
    pub ts_ns: u64,
    pub pid: u32,
    pub tid: u32,
    /// The range unmapped, or the mapping resized or moved (`old_len` bytes from `start`),
    /// as the call gave them (not rounded to pages).
    pub start: u64,
    pub len: u64,
    /// mremap: where the mapping is now, its new length and the call's flags.
    pub new_start: u64,
    pub new_len: u64,
    pub flags: u64,
}

/// Marks a tracepoint field this kernel does not have.
pub const NO_FIELD: u32 = u32::MAX;

/// Length of a task's comm, as in the kernel.
pub const COMM_LEN: usize = 16;

/// Address bits dropped to form a summary region (64 KiB): fine enough to tell mappings
/// apart, coarse enough to keep the summary map small.
pub const REGION_SHIFT: u32 = 16;

/// Number of log2 latency buckets: bucket i counts latencies in [2^(i-1), 2^i) ns.
pub const HIST_BUCKETS: usize = 32;

/// One ring-buffer record. Faults fill every field (`vm_fault` where the backend sees it,
/// `other_pid` inside a snapshot window). Fork, exec and exit records fill `kind`, `ts_ns`,
/// `pid`, `tid` and `comm`; a fork's `other_pid` is the child, an exit's and an exec's is 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record {
    /// One of [`kind`].
    pub kind: u32,
    /// Bits of [`flags`].
    pub flags: u32,
    /// CLOCK_MONOTONIC time of fault entry (or of the event), in ns; [`TS_NOT_TAKEN`] where
    /// nothing shows it (a summary without latencies or stacks).
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
    /// Fork: the child's pid. Fault: the newest child of this process still alive (a
    /// snapshot window, as during a Redis BGSAVE), or 0.
    pub other_pid: u32,
    /// handle_mm_fault's return value (vm_fault_t bits), where the backend sees it, else 0.
    pub vm_fault: u32,
    /// The task's command name, NUL padded.
    pub comm: [u8; COMM_LEN],
    /// Id of the user stack in the STACKS map, or [`NO_STACK`].
    pub stack_id: i32,
    pub _pad: u32,
}

impl Record {
    /// A record with every field zero but `stack_id`, which is [`NO_STACK`].
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
            vm_fault: 0,
            comm: [0; COMM_LEN],
            stack_id: NO_STACK,
            _pad: 0,
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
    /// Bits of [`flags`] known at entry (KERNEL_MODE) or set while handling
    /// (PAGE_ALLOCATED).
    pub flags: u32,
    /// The user stack at entry, or [`NO_STACK`].
    pub stack_id: i32,
    /// The thread's command name, read when the slot is created and kept current by the
    /// task_rename tracepoint: cheaper than reading it at every fault.
    pub comm: [u8; COMM_LEN],
    /// The thread's thread group id.
    pub pid: u32,
    /// The thread's id; 0 in a free entry of the kernel's slot array.
    pub tid: u32,
    /// The fault's user registers (its `pt_regs` when it came from user mode, else 0): the
    /// handle_mm_fault backends take a stack from them later in the fault (at `do_wp_page`);
    /// the tracepoint backend keeps them for a deferred fault, to tell its page allocations
    /// from those of a system call the thread makes after it.
    pub user_regs: u64,
}

/// The `ts_ns` of a fault with no timestamp: with `--summary --no-latency` the tracepoint
/// backend takes none (the summary shows no times, and a timestamp is the costliest helper
/// call of a fault's entry). Non-zero, so a pending slot still reads as pending.
pub const TS_NOT_TAKEN: u64 = 1;

/// A [`PendingFault::flags`] bit of the kernel side's own, never in a record: the thread's user
/// stack is being copied (--stack), so a kernel-mode fault now is the copy's, not the process's.
pub const PENDING_CAPTURING: u32 = 1 << 28;

/// A [`PendingFault::flags`] bit of the tracepoint backend's own, never in a record: the fault
/// was entered untimed (--no-latency, or before the thread's first completion, see
/// [`PENDING_COMPLETION_SEEN`]), so no completion event may empty its slot; the thread's next
/// fault, exec or exit does, or userspace when tracing stops.
pub const PENDING_DEFERRED: u32 = 1 << 30;

/// A [`PendingFault::flags`] bit of the tracepoint backend's own, never in a record, kept from
/// fault to fault: a completion event has fired in this thread, so it has one. Until then the
/// thread's faults are entered as [`PENDING_DEFERRED`] even when timed: a thread created while
/// tracing starts may run before userspace opens its event, or never get one (it exits first),
/// and its faults, which no completion would empty, are then final when it goes on, not
/// incomplete. The first completion completes its fault as usual, with its latency.
pub const PENDING_COMPLETION_SEEN: u32 = 1 << 27;

/// A [`PendingFault::flags`] bit of the tracepoint backend's own, never in a record: the slot's
/// last fault was completed by a completion event (its address stays in the slot). A second
/// completion for the same page before the next entry is the same fault seen by a second
/// event of the thread (see `fault_done` in the kernel crate), not a fault of its own.
pub const PENDING_COMPLETED: u32 = 1 << 29;

impl PendingFault {
    /// The record flags of a pending fault with `flags` taken as complete (see
    /// [`PendingFault::to_record`], which the kernel side does field by field).
    #[inline(always)]
    pub const fn untimed_record_flags(flags: u32) -> u32 {
        (flags
            & (flags::KERNEL_MODE | flags::PAGE_ALLOCATED | flags::PAGE_ZEROED | flags::USER_STACK))
            | flags::COPY_KNOWN
            | flags::UNTIMED
    }

    /// The record of this thread's pending fault (`tid`) taken as complete: with --no-latency
    /// the tracepoint backend cannot see a minor fault complete, so a pending fault is final
    /// once its thread goes on. An untimed minor fault, or one that failed: they look alike.
    #[inline(always)]
    pub fn to_record(&self, tid: u32) -> Record {
        let mut record = Record::zeroed();
        record.kind = kind::FAULT;
        record.flags = PendingFault::untimed_record_flags(self.flags);
        record.ts_ns = self.ts_ns;
        record.address = self.address;
        record.ip = self.ip;
        record.error_code = self.error_code;
        record.pid = self.pid;
        record.tid = tid;
        record.comm = self.comm;
        record.stack_id = self.stack_id;
        record
    }
}

/// A traced process's snapshot window: its newest child still holding its memory.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub child: u32,
    /// The child whose window this one's fork interrupted, if it still holds the memory (0:
    /// none): its window again once this child execs, or has exited and closed.
    pub previous: u32,
    /// 0 while the child lives; once it exits, when (CLOCK_MONOTONIC ns). Since 6.16 the exit
    /// tracepoint fires before the child's memory is released: for a second after it, the
    /// parent's copies (of pages the child still held) still count in the window.
    pub closing_since_ns: u64,
}

/// How long a window keeps counting copies after its child's exit, while the kernel releases
/// the child's memory.
pub const WINDOW_CLOSING_NS: u64 = 1_000_000_000;

/// Where a fault falls, by its process's [`Window`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InWindow {
    /// The child whose window it is (0: none).
    pub child: u32,
    /// The window has closed: it gives way to the one it interrupted (`previous`, or none).
    pub closed: bool,
}

impl Window {
    /// The window of `child`, live, which a newer child's window had interrupted.
    pub const fn resumed(child: u32) -> Window {
        Window {
            child,
            previous: 0,
            closing_since_ns: 0,
        }
    }

    /// The window a fault at `when_ns` falls in; `copied`: it copied a page. After the
    /// child's exit event the kernel is still releasing the child's memory, page range by page
    /// range: a copy the parent makes meanwhile is of a page the child still held, so it counts
    /// in the window; any other fault (a reuse of a page already released) counts in the one
    /// it interrupted, if any. [`WINDOW_CLOSING_NS`] later the window closes.
    pub const fn for_fault(&self, when_ns: u64, copied: bool) -> InWindow {
        if self.closing_since_ns == 0 {
            return InWindow {
                child: self.child,
                closed: false,
            };
        }
        if when_ns.saturating_sub(self.closing_since_ns) > WINDOW_CLOSING_NS {
            return InWindow {
                child: self.previous,
                closed: true,
            };
        }
        InWindow {
            child: if copied { self.child } else { self.previous },
            closed: false,
        }
    }
}

/// Key of the in-kernel summary's counts.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StatKey {
    pub pid: u32,
    /// Bits of [`class`].
    pub class: u32,
    /// The snapshot window (see [`Record::other_pid`]), or 0.
    pub window: u32,
    /// The user stack (with --stack), or [`NO_STACK`].
    pub stack_id: i32,
    /// `address >> REGION_SHIFT`.
    pub region: u64,
}

/// Counts of the in-kernel summary (shared by all CPUs, added to atomically).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatValue {
    pub faults: u64,
    /// Of `faults`, those timed (`latency_ns` sums their latencies).
    pub timed: u64,
    pub latency_ns: u64,
    /// The first faulting address counted here: userspace resolves the region's mapping
    /// from it (a region can straddle two mappings; this names the one faulted first).
    pub sample_address: u64,
}

/// The in-kernel summary's per-CPU cache of the last key counted on the CPU, with the counts
/// not yet added to the shared map (`faults == 0`: empty). Consecutive faults of a process
/// mostly share a key (a region's pages fault one after another), so most faults are counted
/// here, without a hash lookup; another key sends these counts to the map first. Userspace adds
/// what the caches hold when it reads the map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatCache {
    pub key: StatKey,
    pub counts: StatValue,
}

/// Key of the in-kernel latency histograms.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HistKey {
    pub pid: u32,
    pub class: u32,
}

/// A log2 latency histogram (shared by all CPUs, added to atomically).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hist {
    pub buckets: [u64; HIST_BUCKETS],
}

/// The in-kernel summary's per-CPU cache of the last histogram key (see [`StatCache`]):
/// `faults == 0`, empty.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HistCache {
    pub key: HistKey,
    pub faults: u64,
    pub hist: Hist,
}

/// The log2 bucket of a latency: 0 for 0 ns, i for [2^(i-1), 2^i) ns, capped at the last.
#[inline(always)]
pub fn hist_bucket(latency_ns: u64) -> usize {
    let bits = (u64::BITS - latency_ns.leading_zeros()) as usize;
    if bits >= HIST_BUCKETS {
        HIST_BUCKETS - 1
    } else {
        bits
    }
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: all are #[repr(C)] plain data with explicit padding fields.
    unsafe impl aya::Pod for super::Record {}
    unsafe impl aya::Pod for super::PendingFault {}
    unsafe impl aya::Pod for super::Settings {}
    unsafe impl aya::Pod for super::StatKey {}
    unsafe impl aya::Pod for super::StatValue {}
    unsafe impl aya::Pod for super::HistKey {}
    unsafe impl aya::Pod for super::Hist {}
    unsafe impl aya::Pod for super::Window {}
    unsafe impl aya::Pod for super::StatCache {}
    unsafe impl aya::Pod for super::HistCache {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closing_window_keeps_copies_then_gives_way() {
        let live = Window {
            child: 8,
            previous: 5,
            closing_since_ns: 0,
        };
        let open = InWindow {
            child: 8,
            closed: false,
        };
        assert_eq!(live.for_fault(7, false), open);
        let closing = Window {
            closing_since_ns: 1_000,
            ..live
        };
        assert_eq!(closing.for_fault(2_000, true), open);
        assert_eq!(
            closing.for_fault(2_000, false),
            InWindow {
                child: 5,
                closed: false
            }
        );
        assert_eq!(
            closing.for_fault(1_000 + WINDOW_CLOSING_NS + 1, true),
            InWindow {
                child: 5,
                closed: true
            }
        );
    }

    #[test]
    fn buckets() {
        assert_eq!(hist_bucket(0), 0);
        assert_eq!(hist_bucket(1), 1);
        assert_eq!(hist_bucket(1023), 10);
        assert_eq!(hist_bucket(1024), 11);
        assert_eq!(hist_bucket(u64::MAX), HIST_BUCKETS - 1);
    }

    #[test]
    fn classes() {
        let wp = x86_pf::PROT | x86_pf::WRITE | x86_pf::USER;
        assert_eq!(class::of(false, 0, wp), class::WRITE | class::WRITE_PROTECT);
        let copied = flags::COPY_KNOWN | flags::PAGE_ALLOCATED;
        assert_eq!(
            class::of(false, copied, wp),
            class::WRITE | class::WRITE_PROTECT | class::COPY_KNOWN | class::COPIED
        );
        assert_eq!(
            class::of(false, flags::COPY_KNOWN, wp),
            class::WRITE | class::WRITE_PROTECT | class::COPY_KNOWN
        );
        assert_eq!(
            class::of(false, flags::COPY_KNOWN | flags::PAGE_ZEROED, wp),
            class::WRITE | class::WRITE_PROTECT | class::COPY_KNOWN | class::ZERO_FILL
        );
        // A page allocated at a write to a page not present is no write-protect fault: what
        // it is depends on the mapping.
        assert_eq!(
            class::of(false, copied, x86_pf::WRITE | x86_pf::USER),
            class::WRITE | class::NEW_PAGE
        );
        assert_eq!(class::of(false, flags::NO_ENTRY, wp), class::UNKNOWN);
        assert_eq!(
            class::of(true, flags::MAJOR, x86_pf::INSTR),
            class::EXEC | class::INCOMPLETE | class::MAJOR
        );
    }

    #[test]
    fn a_page_allocated_at_a_first_write_depends_on_the_mapping() {
        let not_present_write = x86_pf::WRITE | x86_pf::USER;
        let allocated = flags::COPY_KNOWN | flags::PAGE_ALLOCATED;
        let new_page = FaultClass::of(false, allocated, not_present_write);
        assert!(new_page.needs_mapping() && !new_page.is_write_protect());
        assert_eq!(new_page.cow_outcome(), None, "unknown until the mapping is");
        // In a private file mapping: the file's page copied, counted as a copy.
        let copied = new_page.with_mapping(MappingKind::PrivateFile);
        assert!(copied.is_file_copy() && !copied.needs_mapping() && !copied.is_write_protect());
        assert_eq!(copied.cow_outcome(), Some(CowOutcome::Copied));
        assert_eq!(copied.access(), Some(Access::Write));
        // Elsewhere (a page-cache page, a page read back from swap): an ordinary write.
        let filled = new_page.with_mapping(MappingKind::Shared);
        assert_eq!(filled, FaultClass::of(false, 0, not_present_write));
        assert_eq!(new_page.with_mapping(MappingKind::Other), filled);
        assert_eq!(filled.cow_outcome(), None);
        // Major faults (the file's page read from disk first) copy all the same.
        let major = FaultClass::of(false, allocated | flags::MAJOR, not_present_write);
        assert_eq!(
            major.with_mapping(MappingKind::PrivateFile).outcome(),
            Outcome::Major,
            "still major"
        );
        assert!(major.with_mapping(MappingKind::PrivateFile).is_file_copy());
        // A fault that failed, or an attempt retried, kept no page.
        assert!(!FaultClass::of(true, allocated, not_present_write).needs_mapping());
        let mut retried = Record::zeroed();
        retried.kind = kind::FAULT_RETRY;
        retried.flags = allocated;
        retried.error_code = not_present_write;
        assert!(!FaultClass::of_record(&retried).needs_mapping());
        retried.kind = kind::FAULT;
        assert!(FaultClass::of_record(&retried).needs_mapping());
        // Not candidates: a zeroed page (anonymous memory's first write), a page read back
        // from swap, a read, a fault without copy detection or without its entry.
        for (record_flags, error_code) in [
            (flags::COPY_KNOWN | flags::PAGE_ZEROED, not_present_write),
            (allocated | flags::SWAP_IN, not_present_write),
            (allocated, x86_pf::USER),
            (flags::PAGE_ALLOCATED, not_present_write),
            (allocated | flags::NO_ENTRY, not_present_write),
        ] {
            let class = FaultClass::of(false, record_flags, error_code);
            assert!(!class.needs_mapping(), "{record_flags:#x} {error_code:#x}");
            assert_eq!(
                class.with_mapping(MappingKind::PrivateFile),
                class,
                "nothing to resolve"
            );
        }
        // A write-protect fault that copied is resolved by its own bits, whatever the mapping.
        let wp = FaultClass::of(false, allocated, not_present_write | x86_pf::PROT);
        assert!(!wp.needs_mapping());
        assert_eq!(wp.with_mapping(MappingKind::Shared), wp);
    }

    #[test]
    fn a_write_protect_fault_that_kept_its_page_depends_on_the_mapping() {
        let wp = x86_pf::PROT | x86_pf::WRITE | x86_pf::USER;
        let kept = FaultClass::of(false, flags::COPY_KNOWN, wp);
        assert!(kept.needs_mapping());
        // Private memory: the last sharer reused its page.
        for mapping in [MappingKind::PrivateFile, MappingKind::Other] {
            assert_eq!(kept.with_mapping(mapping), kept);
            assert_eq!(kept.cow_outcome(), Some(CowOutcome::Reused));
        }
        // A shared mapping: the kernel tracking a clean page's first write, no copy-on-write.
        let shared = kept.with_mapping(MappingKind::Shared);
        assert_eq!(shared.access(), Some(Access::Write));
        assert!(!shared.is_write_protect() && shared.cow_outcome().is_none());
        assert!(!shared.needs_mapping(), "resolved");
        // The histograms, which know no mapping, keep it with the reuses.
        assert_eq!(shared.without_mapping(), kept);
        // A zero fill or a copy only happens in private memory.
        let zero = FaultClass::of(false, flags::COPY_KNOWN | flags::PAGE_ZEROED, wp);
        assert!(!zero.needs_mapping());
    }

    #[test]
    fn typed_class_reads_the_bits() {
        let wp = x86_pf::PROT | x86_pf::WRITE | x86_pf::USER;
        let copied = FaultClass::of(false, flags::COPY_KNOWN | flags::PAGE_ALLOCATED, wp);
        assert_eq!(copied.access(), Some(Access::Write));
        assert_eq!(copied.outcome(), Outcome::Minor);
        assert!(copied.is_write_protect() && copied.is_completed());
        assert_eq!(copied.cow_outcome(), Some(CowOutcome::Copied));
        let zero = FaultClass::of(false, flags::COPY_KNOWN | flags::PAGE_ZEROED, wp);
        assert_eq!(zero.cow_outcome(), Some(CowOutcome::ZeroFilled));
        assert_eq!(
            FaultClass::of(false, flags::COPY_KNOWN, wp).cow_outcome(),
            Some(CowOutcome::Reused)
        );
        // Copy detection did not see it: a COW fault of unknown outcome.
        assert_eq!(FaultClass::of(false, 0, wp).cow_outcome(), None);
        let unknown = FaultClass::of(false, flags::NO_ENTRY | flags::MAJOR, wp);
        assert_eq!(
            (unknown.access(), unknown.outcome()),
            (None, Outcome::Major)
        );
        assert!(!unknown.is_write_protect());
        // A retried attempt is a retry whatever else it says; an incomplete fault is no
        // major one.
        let mut record = Record::zeroed();
        record.kind = kind::FAULT_RETRY;
        record.flags = flags::MAJOR;
        assert_eq!(FaultClass::of_record(&record).outcome(), Outcome::Retry);
        let incomplete = FaultClass::of(true, flags::MAJOR | flags::KERNEL_MODE, x86_pf::INSTR);
        assert_eq!(incomplete.outcome(), Outcome::Incomplete);
        assert!(!incomplete.is_completed() && incomplete.is_kernel_mode());
        assert_eq!(incomplete.access(), Some(Access::Exec));
    }
}
