//! Maps shared by every program, and the settings userspace writes before loading.
use core::intrinsics::{AtomicOrdering, atomic_cxchg};

use aya_ebpf::{
    bindings::{BPF_F_MMAPABLE, BPF_NOEXIST},
    helpers::bpf_get_current_comm,
    macros::map,
    maps::{Array, HashMap, PerCpuArray, RingBuf},
};
use cow_trace_common::{
    COMM_LEN, Hist, HistCache, HistKey, NO_FIELD, NO_STACK, PENDING_CAPTURING, PENDING_COMPLETED,
    PENDING_COMPLETION_SEEN, PENDING_DEFERRED, PendingFault, Record, Settings, StatCache, StatKey,
    StatValue, Window, counter, kind,
};

use crate::diagnostics;

/// Thread-group ids being traced: the target, its descendants at attach time (written by
/// userspace) and every process they create afterwards (written by `tasks`). Value unused.
#[map]
pub static TRACED: HashMap<u32, u8> = HashMap::with_max_entries(65536, 0);

/// A hint, per `tgid % SLOT_COUNT`, that a process with that remainder may be traced: set
/// before the process joins `TRACED` (by userspace or `tasks`), never cleared (a stale hint
/// costs one `TRACED` lookup). A fault of an untraced thread without a slot then costs array
/// lookups, which the verifier inlines, not hash lookups.
#[map]
pub static TRACED_HINT: Array<u32> = Array::with_max_entries(SLOT_COUNT, 0);

/// Traced threads' pending-fault slots (see [`Slot`]), at index `tid % SLOT_COUNT`, with the
/// thread's id (`PendingFault::tid`, 0 where free): an array lookup and a compare find a
/// thread's slot, or tell that it has none. Userspace reads it whole through a mapping.
#[map]
pub static SLOTS: Array<PendingFault> = Array::with_max_entries(SLOT_COUNT, BPF_F_MMAPABLE);

/// The slots of traced threads whose index in `SLOTS` another traced thread held when they
/// needed one, keyed by thread id.
#[map]
pub static PENDING: HashMap<u32, PendingFault> = HashMap::with_max_entries(16384, 0);

/// Per index of `SLOTS`: non-zero once a thread with that index has had its slot in `PENDING`
/// (never cleared: a stale mark costs one `PENDING` lookup).
#[map]
pub static IN_PENDING: Array<u32> = Array::with_max_entries(SLOT_COUNT, 0);

/// Entries of `SLOTS`, `TRACED_HINT` and `IN_PENDING`: about as many threads as `TRACED` holds
/// processes.
const SLOT_COUNT: u32 = 65536;

/// Records for userspace. Userspace resizes it at load time (`--ring-size`).
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(16 << 20, 0);

/// What `current->pagefault_disabled` reads, plus one, in a fault program at a user-mode fault
/// (0: not seen yet): the tracing path's own share of the count (some kernels run tracepoints
/// with page faults disabled). A kernel-mode fault whose count exceeds it was taken by a read
/// the task made with page faults disabled (see `faults`).
#[map]
pub static PAGEFAULTS_DISABLED_BY_TRACING: Array<u32> = Array::with_max_entries(1, 0);

/// Set (index 0, non-zero) by userspace when tracing stops, before it detaches: faults that
/// begin from then on are not entered (detaching every program and event takes a while, and
/// a fault then is past the end the user asked for); those already pending complete as usual.
#[map]
pub static STOPPED: Array<u32> = Array::with_max_entries(1, 0);

/// Whether tracing has stopped (see [`STOPPED`]).
#[inline(always)]
pub fn tracing_stopped() -> bool {
    is_marked(&STOPPED, 0)
}

/// Per CPU, the bytes written to `EVENTS` since the CPU last woke userspace.
#[map]
pub static WRITTEN: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

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

/// Per CPU, the last `STATS` key counted and its counts not yet in `STATS` (see `StatCache`).
#[map]
pub static STAT_CACHE: PerCpuArray<StatCache> = PerCpuArray::with_max_entries(1, 0);

/// Per CPU, the last `HISTS` key and its counts not yet in `HISTS`.
#[map]
pub static HIST_CACHE: PerCpuArray<HistCache> = PerCpuArray::with_max_entries(1, 0);

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
/// userspace writes the system's). Read with [`setting!`].
#[unsafe(no_mangle)]
pub static SETTINGS: Settings = Settings {
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
    task_pagefault_disabled: NO_FIELD,
};

/// One field of the settings userspace wrote: a volatile read of that field alone, so the
/// compiler cannot fold the defaults (the verifier does fold the value it finds: the map is
/// read-only, so branches the setting rules out cost nothing).
macro_rules! setting {
    ($field:ident) => {
        // SAFETY: SETTINGS is a plain static that userspace patches before load.
        unsafe { core::ptr::read_volatile(&raw const $crate::maps::SETTINGS.$field) }
    };
}
pub(crate) use setting;

/// Whether `tgid` is traced: for most processes of the machine, one array lookup (its hint)
/// says no.
#[inline(always)]
pub fn is_traced(tgid: u32) -> bool {
    may_be_traced(tgid) && in_traced(tgid)
}

/// Whether `tgid` is in `TRACED` (a hash lookup).
#[inline(always)]
fn in_traced(tgid: u32) -> bool {
    // SAFETY: only presence is checked; the value is never read.
    unsafe { TRACED.get(tgid).is_some() }
}

/// Marks `tgid` as possibly traced; call before adding it to `TRACED`.
#[inline(always)]
pub fn hint_traced(tgid: u32) {
    set_mark(&TRACED_HINT, tgid % SLOT_COUNT);
}

/// False when `tgid` is certainly not traced; else [`is_traced`] says.
#[inline(always)]
fn may_be_traced(tgid: u32) -> bool {
    is_marked(&TRACED_HINT, tgid % SLOT_COUNT)
}

#[inline(always)]
fn set_mark(marks: &Array<u32>, index: u32) {
    if let Some(mark) = marks.get_ptr_mut(index) {
        // SAFETY: a plain store; racing stores write the same value.
        unsafe { *mark = 1 };
    }
}

#[inline(always)]
fn is_marked(marks: &Array<u32>, index: u32) -> bool {
    marks.get(index).is_some_and(|&mark| mark != 0)
}

#[inline(always)]
pub fn bump(index: u32) {
    bump_by(index, 1);
}

#[inline(always)]
pub fn bump_by(index: u32, n: u64) {
    if let Some(slot) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: this CPU's copy, live while the program runs; a program preempted on its
        // CPU by another may lose a count, never corrupt one.
        unsafe { *slot += n };
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

/// A traced thread's pending-fault slot: its entry in `SLOTS` (or, where another thread held
/// that one, in `PENDING`). Slots are filled at a fault's entry and emptied at its completion,
/// never inserted and deleted per fault: writing in place costs far less than a hash-map insert
/// and delete. The thread's exit frees its slot. Only traced threads have slots, so finding one
/// also says "traced".
///
/// Why plain loads and stores suffice: a slot is written by its own thread's programs, which
/// run one after another in that thread (a fault's entry, its page allocations, its
/// completion; even a fault nested in another has its programs run between the outer's), and
/// by a program that frees it once the thread faults no more (its exit, or an exec that took
/// its id). An entry of `SLOTS` changes hands only once free, by an atomic compare-and-swap of
/// its thread id. The one other writer is a rename of the thread by another thread, which
/// stores a new comm: a reader may see a torn name, as the kernel's own readers may (and a
/// rename racing with the thread's exit may name the entry's next thread).
/// The map keeps the value alive while the program runs, even if the slot is freed meanwhile.
#[derive(Clone, Copy)]
pub struct Slot {
    tid: u32,
    value: *mut PendingFault,
    /// In `PENDING`, not in `SLOTS`.
    overflow: bool,
}

impl Slot {
    /// Thread `tid`'s slot, if it has one.
    #[inline(always)]
    pub fn of(tid: u32) -> Option<Slot> {
        let index = tid % SLOT_COUNT;
        let entry = SLOTS.get_ptr_mut(index)?;
        // SAFETY: see [`Slot`]; the id is read once, and only its own thread sets it to `tid`.
        if unsafe { (*entry).tid } == tid {
            return Some(Slot {
                tid,
                value: entry,
                overflow: false,
            });
        }
        if !is_marked(&IN_PENDING, index) {
            return None;
        }
        PENDING.get_ptr_mut(tid).map(|value| Slot {
            tid,
            value,
            overflow: true,
        })
    }

    /// The current thread's slot (`pid_tgid` from `bpf_get_current_pid_tgid`), if it has one.
    /// For the machine-wide hooks: a thread of a process never traced (the common case there)
    /// is turned away by one array lookup, its process's hint, as a thread with a slot belongs
    /// to a traced process.
    #[inline(always)]
    pub fn of_current(pid_tgid: u64) -> Option<Slot> {
        if !may_be_traced((pid_tgid >> 32) as u32) {
            return None;
        }
        Slot::of(pid_tgid as u32)
    }

    /// As [`Slot::of_current`], but the slot is created empty (with the thread's comm) on the
    /// thread's first use if the thread is traced.
    #[inline(always)]
    pub fn of_current_or_new(pid_tgid: u64) -> Option<Slot> {
        let pid = (pid_tgid >> 32) as u32;
        if !may_be_traced(pid) {
            return None;
        }
        let tid = pid_tgid as u32;
        if let Some(slot) = Slot::of(tid) {
            return Some(slot);
        }
        if !in_traced(pid) {
            return None;
        }
        let slot = Slot::claim(tid, pid).or_else(|| Slot::insert(tid, pid))?;
        // SAFETY: see [`Slot`]; the slot is this thread's, created just now.
        unsafe {
            (*slot.value).ts_ns = 0;
            (*slot.value).flags = 0;
            (*slot.value).comm = bpf_get_current_comm().unwrap_or_default();
        }
        Some(slot)
    }

    /// Takes the thread's entry in `SLOTS` if it is free (pid and tid 0).
    #[inline(always)]
    fn claim(tid: u32, pid: u32) -> Option<Slot> {
        let entry = SLOTS.get_ptr_mut(tid % SLOT_COUNT)?;
        // SAFETY: pid and tid are one aligned u64 inside a live map value (checked below), pid
        // first (little-endian: the low half); the swap is atomic, so of two threads claiming
        // the same free entry one wins. (The BPF target has 64-bit compare-and-swap only.)
        let (_, won) = unsafe {
            atomic_cxchg::<u64, { AtomicOrdering::Relaxed }, { AtomicOrdering::Relaxed }>(
                (&raw mut (*entry).pid).cast::<u64>(),
                0,
                u64::from(pid) | u64::from(tid) << 32,
            )
        };
        won.then_some(Slot {
            tid,
            value: entry,
            overflow: false,
        })
    }

    /// A slot in `PENDING`, for a thread whose entry in `SLOTS` another thread holds.
    #[inline(always)]
    fn insert(tid: u32, pid: u32) -> Option<Slot> {
        // Marked first: no lookup may skip a slot already in the map.
        set_mark(&IN_PENDING, tid % SLOT_COUNT);
        let empty = PendingFault {
            pid,
            tid,
            ..EMPTY_PENDING
        };
        if let Err(error) = PENDING.insert(tid, empty, BPF_NOEXIST.into()) {
            bump(counter::PENDING_FULL);
            diagnostics::pending_full(tid, error);
            return None;
        }
        PENDING.get_ptr_mut(tid).map(|value| Slot {
            tid,
            value,
            overflow: true,
        })
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

    /// Writes the pending fault into `record` as a completed one: kind FAULT, the entry's time,
    /// address, ip, error code, stack and flags (but the slot's own), and the thread's pid, tid
    /// and comm (which a concurrent rename may tear, see [`Slot`]). Latency, other_pid and
    /// vm_fault are the caller's.
    #[inline(always)]
    pub fn write_record(self, record: &mut Record) {
        // SAFETY: see [`Slot`].
        unsafe {
            let entry = self.value;
            record.kind = kind::FAULT;
            record.flags = (*entry).flags
                & !(PENDING_DEFERRED
                    | PENDING_COMPLETED
                    | PENDING_CAPTURING
                    | PENDING_COMPLETION_SEEN);
            record.ts_ns = (*entry).ts_ns;
            record.address = (*entry).address;
            record.ip = (*entry).ip;
            record.error_code = (*entry).error_code;
            record.pid = (*entry).pid;
            record.tid = self.tid;
            record.stack_id = (*entry).stack_id;
            copy_comm(&raw mut record.comm, &raw const (*entry).comm);
        }
    }

    /// Whether the slot's fault (pending or just completed) is on the page (of the system's
    /// size) of `address`.
    #[inline(always)]
    pub fn is_for(self, address: u64) -> bool {
        // SAFETY: see [`Slot`].
        (unsafe { (*self.value).address } ^ address) >> setting!(page_shift) == 0
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

    /// Writes the thread's comm, as cached in the slot, to `record`.
    #[inline(always)]
    pub fn write_comm(self, record: &mut Record) {
        // SAFETY: see [`Slot`].
        unsafe { copy_comm(&raw mut record.comm, &raw const (*self.value).comm) };
    }

    /// Fills the slot with a fault that has just begun (its comm and pid stay, and whether the
    /// thread's completion event has fired).
    #[inline(always)]
    pub fn begin(self, entry: FaultEntry) {
        // SAFETY: see [`Slot`].
        unsafe {
            (*self.value).ts_ns = entry.ts_ns;
            (*self.value).address = entry.address;
            (*self.value).ip = entry.ip;
            (*self.value).error_code = entry.error_code;
            (*self.value).flags = entry.flags | (*self.value).flags & PENDING_COMPLETION_SEEN;
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

    /// The pending fault's user registers, or 0: see [`Slot::set_user_regs`].
    #[inline(always)]
    pub fn user_regs(self) -> u64 {
        // SAFETY: see [`Slot`].
        unsafe { (*self.value).user_regs }
    }

    /// The pending fault's user registers (its `pt_regs`, when it came from user mode): for a
    /// stack taken later in the fault (handle_mm_fault backends), or to tell whether the thread
    /// has gone on to a system call since (a deferred fault, see `copies`).
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

    /// Empties the slot after its fault's completion event, remembering that (and the address):
    /// see `PENDING_COMPLETED`; the thread has a completion event (`PENDING_COMPLETION_SEEN`).
    #[inline(always)]
    pub fn complete(self) {
        // SAFETY: see [`Slot`].
        unsafe {
            (*self.value).ts_ns = 0;
            (*self.value).flags = PENDING_COMPLETED | PENDING_COMPLETION_SEEN;
        }
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

    /// Frees the slot, for a thread that faults no more.
    #[inline(always)]
    pub fn remove(self) {
        if self.overflow {
            let _ = PENDING.remove(self.tid);
        } else {
            // SAFETY: see [`Slot`]; from here another thread may claim the entry.
            unsafe {
                (*self.value).pid = 0;
                (*self.value).tid = 0;
            }
        }
    }
}

/// Copies a comm as two u64s: as 16 bytes of alignment 1 LLVM moved it byte by byte, and as
/// one [u64; 2] by a call to memmove.
///
/// # Safety
/// Both must point into live values of `Record` or `PendingFault` (where a comm is 8-aligned).
#[inline(always)]
unsafe fn copy_comm(to: *mut [u8; COMM_LEN], from: *const [u8; COMM_LEN]) {
    let (to, from) = (to.cast::<u64>(), from.cast::<u64>());
    // SAFETY: the caller's pointers are 8-aligned (checked below) and 16 bytes long.
    unsafe {
        to.write(from.read());
        to.add(1).write(from.add(1).read());
    }
}

const _: () = assert!(
    core::mem::offset_of!(Record, comm) % 8 == 0
        && core::mem::offset_of!(PendingFault, comm) % 8 == 0
);

// The claim's compare-and-swap covers pid and tid as one aligned u64.
const _: () = assert!(
    core::mem::offset_of!(PendingFault, pid) % 8 == 0
        && core::mem::offset_of!(PendingFault, tid) == core::mem::offset_of!(PendingFault, pid) + 4
);

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
    tid: 0,
    user_regs: 0,
};
