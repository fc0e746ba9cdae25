//! Maps shared by every program, and the load-time settings userspace writes before loading.
use aya_ebpf::{
    macros::map,
    maps::{HashMap, PerCpuArray, RingBuf},
};
use cow_trace_common::{PendingFault, Record, TracepointOffsets, counter};

/// Thread-group ids being traced: the target, its descendants at attach time (written by
/// userspace) and every process they fork afterwards (written by `tasks`). Value unused.
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

/// Tracepoint field offsets of the running kernel, read from tracefs by userspace.
#[unsafe(no_mangle)]
static OFFSETS: TracepointOffsets = TracepointOffsets {
    task_newtask_pid: 8,
    task_newtask_clone_flags: 32,
    exit_group_dead: cow_trace_common::NO_FIELD,
    _pad: 0,
};

/// The offsets userspace set (a volatile read, so the compiler cannot fold the defaults).
#[inline(always)]
pub fn offsets() -> TracepointOffsets {
    // SAFETY: OFFSETS is a plain static that userspace patches before load.
    unsafe { core::ptr::read_volatile(&OFFSETS) }
}

#[inline(always)]
pub fn is_traced(tgid: u32) -> bool {
    // SAFETY: only presence is checked; the value is never read.
    unsafe { TRACED.get(&tgid).is_some() }
}

#[inline(always)]
pub fn bump(index: u32) {
    if let Some(slot) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot; programs do not migrate while running.
        unsafe { *slot += 1 };
    }
}

/// Writes `record` to the ring buffer, counting a loss when it is full.
#[inline(always)]
pub fn emit(record: &Record) {
    match EVENTS.reserve::<Record>(0) {
        Some(mut entry) => {
            entry.write(*record);
            entry.submit(0);
        }
        None => bump(counter::RING_FULL),
    }
}
