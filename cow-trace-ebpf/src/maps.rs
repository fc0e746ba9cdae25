//! Maps shared by every program, and the settings userspace writes before loading.
use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::bpf_get_current_comm,
    macros::map,
    maps::{Array, HashMap, PerCpuArray, RingBuf},
};
use cow_trace_common::{
    COMM_LEN, Hist, HistKey, NO_FIELD, NO_STACK, PendingFault, Settings, StatKey, StatValue,
    Window, counter,
};

use crate::diagnostics;

/// Thread-group ids being traced: the target, its descendants at attach time (written by
/// userspace) and every process they create afterwards (written by `tasks`). Value unused.
#[map]
pub static TRACED: HashMap<u32, u8> = HashMap::with_max_entries(65536, 0);

/// Fault entries waiting for their completion event, keyed by thread id.
#[map]
pub static PENDING: HashMap<u32, PendingFault> = HashMap::with_max_entries(65536, 0);

/// Records for userspace. Userspace resizes it at load time (`--ring-size`).
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(16 << 20, 0);

/// Per-CPU loss counters, indexed by `cow_trace_common::counter`.
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// The in-kernel summary (--summary): fault counts per pid x class x window x region. One
/// map for all CPUs, updated atomically: per-CPU copies of 65536 entries took 47 ms to create
/// on 2 CPUs, and their memory grows with the CPU count (hundreds of MiB on a large server).
#[map]
pub static STATS: HashMap<StatKey, StatValue> = HashMap::with_max_entries(65536, 0);

/// The in-kernel summary's log2 latency histograms per pid x class (shared, as STATS).
#[map]
pub static HISTS: HashMap<HistKey, Hist> = HashMap::with_max_entries(4096, 0);

/// Traced child tgid -> its traced parent's tgid, to close the parent's window at exit.
#[map]
pub static PARENT: HashMap<u32, u32> = HashMap::with_max_entries(65536, 0);

/// Traced parent tgid -> its newest child still holding its memory: faults of the parent
/// meanwhile are "during child N" (the snapshot window of a fork-based snapshot such as
/// Redis's BGSAVE).
#[map]
pub static WINDOW: HashMap<u32, Window> = HashMap::with_max_entries(65536, 0);

/// A hint, per `pid % WINDOW_HINTS`, that a process with that remainder may have a window:
/// most processes never fork a traced child, and this array lookup costs a fraction of a
/// `WINDOW` miss. Set before a window opens, never cleared (a stale hint costs one lookup).
#[map]
pub static WINDOW_HINT: Array<u32> = Array::with_max_entries(WINDOW_HINTS, 0);

const WINDOW_HINTS: u32 = 4096;

/// Marks `pid` as possibly having a window.
#[inline(always)]
pub fn hint_window(pid: u32) {
    if let Some(hint) = WINDOW_HINT.get_ptr_mut(pid % WINDOW_HINTS) {
        // SAFETY: a plain store; racing stores write the same value.
        unsafe { *hint = 1 };
    }
}

/// False when `pid` certainly has no window.
#[inline(always)]
pub fn may_have_window(pid: u32) -> bool {
    WINDOW_HINT
        .get(pid % WINDOW_HINTS)
        .is_some_and(|&hint| hint != 0)
}

/// Written by userspace before loading; the defaults are 6.18's offsets (and no page size:
/// userspace writes the system's).
#[unsafe(no_mangle)]
static SETTINGS: Settings = Settings {
    task_newtask_pid: 8,
    task_newtask_clone_flags: 32,
    exit_group_dead: NO_FIELD,
    task_rename_pid: 8,
    task_rename_newcomm: 28,
    summary_mode: 0,
    copy_detection: 0,
    untimed: 0,
    stacks: 0,
    stack_faults: 0,
    stack_size: 0,
    task_regs: 0,
    wakeup_bytes: 0,
    page_shift: 0,
};

/// The settings userspace wrote (a volatile read, so the compiler cannot fold the defaults).
#[inline(always)]
pub fn settings() -> Settings {
    // SAFETY: SETTINGS is a plain static that userspace patches before load.
    unsafe { core::ptr::read_volatile(&SETTINGS) }
}

#[inline(always)]
pub fn is_traced(tgid: u32) -> bool {
    // SAFETY: only presence is checked; the value is never read.
    unsafe { TRACED.get(tgid).is_some() }
}

#[inline(always)]
pub fn bump(index: u32) {
    if let Some(slot) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: this CPU's copy, live while the program runs; a program preempted on its
        // CPU by another may lose a count, never corrupt one.
        unsafe { *slot += 1 };
    }
}

/// What a backend knows when a fault begins.
pub struct FaultEntry {
    pub ts_ns: u64,
    pub address: u64,
    pub ip: u64,
    pub error_code: u64,
    pub flags: u32,
}

/// A traced thread's pending-fault slot in `PENDING`, keyed by its thread id. Slots are filled
/// at a fault's entry and emptied at its completion, never inserted and deleted per fault:
/// writing in place costs far less than a hash-map insert and delete. The thread's exit
/// removes its slot. Only traced threads have slots, so finding one also says "traced".
///
/// Why plain loads and stores suffice: a slot is written by its own thread's programs, which
/// run one after another in that thread (a fault's entry, its page allocations, its
/// completion; even a fault nested in another has its programs run between the outer's), and
/// by a program that removes it once the thread faults no more (its exit, or an exec that took
/// its id). The one other writer is a rename of the thread by another thread,
/// which stores a new comm: a reader may see a torn name, as the kernel's own readers may.
/// The map keeps the value alive while the program runs, even if the slot is removed meanwhile.
#[derive(Clone, Copy)]
pub struct Slot {
    tid: u32,
    value: *mut PendingFault,
}

impl Slot {
    /// Thread `tid`'s slot, if it has one.
    #[inline(always)]
    pub fn of(tid: u32) -> Option<Slot> {
        PENDING.get_ptr_mut(tid).map(|value| Slot { tid, value })
    }

    /// The current thread's slot, created empty (with the thread's comm) on first use if the
    /// thread is traced.
    #[inline(always)]
    pub fn of_current(pid_tgid: u64) -> Option<Slot> {
        let tid = pid_tgid as u32;
        if let Some(slot) = Slot::of(tid) {
            return Some(slot);
        }
        let pid = (pid_tgid >> 32) as u32;
        if !is_traced(pid) {
            return None;
        }
        let created = PENDING.insert(tid, EMPTY_PENDING, BPF_NOEXIST.into());
        if let Err(error) = created {
            bump(counter::PENDING_FULL);
            diagnostics::pending_full(tid, error);
            return None;
        }
        let slot = Slot::of(tid)?;
        // SAFETY: see [`Slot`]; the slot is this thread's, created just now.
        unsafe {
            (*slot.value).comm = bpf_get_current_comm().unwrap_or_default();
            (*slot.value).pid = pid;
        }
        Some(slot)
    }

    /// The thread the slot belongs to.
    #[inline(always)]
    pub fn tid(self) -> u32 {
        self.tid
    }

    /// A copy of the slot (its comm may be torn by a concurrent rename, see [`Slot`]).
    #[inline(always)]
    pub fn read(self) -> PendingFault {
        // SAFETY: see [`Slot`].
        unsafe { *self.value }
    }

    /// When the pending fault began (or `TS_NOT_TAKEN`); 0: no fault is pending.
    #[inline(always)]
    pub fn pending_since(self) -> u64 {
        // SAFETY: see [`Slot`].
        unsafe { (*self.value).ts_ns }
    }

    /// The pending fault's flags.
    #[inline(always)]
    pub fn flags(self) -> u32 {
        // SAFETY: see [`Slot`].
        unsafe { (*self.value).flags }
    }

    /// The thread's comm, as cached in the slot.
    #[inline(always)]
    pub fn comm(self) -> [u8; COMM_LEN] {
        // SAFETY: see [`Slot`].
        unsafe { (*self.value).comm }
    }

    /// Fills the slot with a fault that has just begun (its comm and pid stay).
    #[inline(always)]
    pub fn begin(self, entry: FaultEntry) {
        // SAFETY: see [`Slot`].
        unsafe {
            (*self.value).ts_ns = entry.ts_ns;
            (*self.value).address = entry.address;
            (*self.value).ip = entry.ip;
            (*self.value).error_code = entry.error_code;
            (*self.value).flags = entry.flags;
            (*self.value).stack_id = NO_STACK;
            (*self.value).user_regs = 0;
        }
    }

    /// The pending fault's stack id (--stack=fp).
    #[inline(always)]
    pub fn set_stack_id(self, stack_id: i32) {
        // SAFETY: see [`Slot`].
        unsafe { (*self.value).stack_id = stack_id };
    }

    /// handle_mm_fault backends: the pending fault's user registers, for a stack taken later.
    #[inline(always)]
    pub fn set_user_regs(self, regs: u64) {
        // SAFETY: see [`Slot`].
        unsafe { (*self.value).user_regs = regs };
    }

    /// Adds `flags` to the pending fault's.
    #[inline(always)]
    pub fn mark(self, flags: u32) {
        // SAFETY: see [`Slot`].
        unsafe { (*self.value).flags |= flags };
    }

    /// Removes `flags` from the pending fault's.
    #[inline(always)]
    pub fn unmark(self, flags: u32) {
        // SAFETY: see [`Slot`].
        unsafe { (*self.value).flags &= !flags };
    }

    /// Empties the slot: no fault is pending any more.
    #[inline(always)]
    pub fn empty(self) {
        // SAFETY: see [`Slot`].
        unsafe { (*self.value).ts_ns = 0 };
    }

    /// Stores the thread's new comm.
    #[inline(always)]
    pub fn set_comm(self, comm: [u8; COMM_LEN]) {
        // SAFETY: see [`Slot`].
        unsafe { (*self.value).comm = comm };
    }

    /// Deletes the slot, for a thread that faults no more.
    #[inline(always)]
    pub fn remove(self) {
        let _ = PENDING.remove(self.tid);
    }
}

/// An empty pending slot: `ts_ns == 0` means no fault is pending in that thread.
static EMPTY_PENDING: PendingFault = PendingFault {
    ts_ns: 0,
    address: 0,
    ip: 0,
    error_code: 0,
    flags: 0,
    stack_id: NO_STACK,
    comm: [0; COMM_LEN],
    pid: 0,
    _pad: 0,
    user_regs: 0,
};
