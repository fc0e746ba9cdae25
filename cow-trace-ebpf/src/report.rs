//! The last step of every fault: stream it to userspace, or count it in the kernel.
use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{
    bindings::{BPF_NOEXIST, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    maps::HashMap,
};
use cow_trace_common::{
    HIST_BUCKETS, Hist, HistKey, REGION_SHIFT, Record, StatKey, StatValue, TS_NOT_TAKEN, Window,
    class, counter, flags, hist_bucket, kind, x86_pf,
};

use crate::{
    clock::now_ns,
    diagnostics,
    maps::{EVENTS, HISTS, STATS, WINDOW, bump, may_have_window, settings},
};

/// Writes `record` to the ring buffer, counting a loss when it is full. Userspace is woken
/// only once enough has piled up (it also drains on a timer), or for a process event.
#[inline(always)]
pub fn emit(record: &Record) {
    match EVENTS.reserve::<Record>(0) {
        Some(mut entry) => {
            entry.write(*record);
            let urgent = matches!(record.kind, kind::FORK | kind::EXIT | kind::EXEC);
            entry.submit(wakeup(urgent));
        }
        None => bump(counter::RING_FULL),
    }
}

/// Writes a record of variable length (a copied stack) to the ring buffer; Err if it is full.
#[inline(always)]
pub fn emit_bytes(record: &[u8]) -> Result<(), i32> {
    EVENTS.output::<[u8]>(record, wakeup(false))
}

/// Whether to wake userspace for a record: at once if `urgent`, else once enough has piled up.
#[inline(always)]
fn wakeup(urgent: bool) -> u64 {
    let wake =
        urgent || EVENTS.query(BPF_RB_AVAIL_DATA.into()) >= u64::from(settings().wakeup_bytes);
    if wake {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    }
    .into()
}

/// How long a window keeps counting copies after its child's exit, while the kernel releases
/// the child's memory.
const CLOSING_NS: u64 = 1_000_000_000;

/// The snapshot window a fault of `record.pid` falls in (0: none). After the child's exit
/// event, the kernel is still releasing the child's memory, page range by page range: a copy
/// the parent makes meanwhile is of a page the child still held, so it counts in the window;
/// any other fault (a reuse of a page already released) counts outside. A second later the
/// window closes.
#[inline(always)]
fn window_of(record: &Record) -> u32 {
    if !may_have_window(record.pid) {
        return 0;
    }
    // SAFETY: the value is copied at once; a concurrent fork or exit of a child may rewrite
    // it, which costs at most this fault's window.
    let Some(window) = (unsafe { WINDOW.get(record.pid) }) else {
        return 0;
    };
    let Window {
        child,
        closing_since_ns,
        ..
    } = *window;
    if closing_since_ns == 0 {
        return child;
    }
    let when = if record.ts_ns == TS_NOT_TAKEN {
        now_ns()
    } else {
        record.ts_ns
    };
    if when.saturating_sub(closing_since_ns) > CLOSING_NS {
        let _ = WINDOW.remove(record.pid);
        return 0;
    }
    let write_protect = x86_pf::PROT | x86_pf::WRITE;
    let copied = record.kind == kind::FAULT
        && record.flags & (flags::COPY_KNOWN | flags::PAGE_ALLOCATED)
            == flags::COPY_KNOWN | flags::PAGE_ALLOCATED
        && record.error_code & write_protect == write_protect;
    if copied { child } else { 0 }
}

/// Streams or aggregates a finished (or abandoned) fault, whose comm the caller filled in.
/// Fills in the snapshot window.
#[inline(always)]
pub fn fault(record: &mut Record) {
    record.other_pid = window_of(record);
    // A fault whose stack was copied is streamed even in a summary: userspace unwinds its
    // stack and counts it.
    if settings().summary_mode == 0 || record.flags & flags::USER_STACK != 0 {
        emit(record);
        return;
    }
    let class = class::of_record(record);
    let key = StatKey {
        pid: record.pid,
        class,
        window: record.other_pid,
        stack_id: record.stack_id,
        region: record.address >> REGION_SHIFT,
    };
    let timed = record.flags & (flags::UNTIMED | flags::NO_ENTRY) == 0;
    let first = StatValue {
        sample_address: record.address,
        ..StatValue::default()
    };
    let Some(counts) = get_or_insert(&STATS, key, &first) else {
        bump(counter::SUMMARY_FULL);
        diagnostics::summary_full(record.pid, false);
        return;
    };
    // SAFETY: a value of STATS, live while this program runs.
    unsafe {
        add(&raw mut (*counts).faults, 1);
        if timed {
            add(&raw mut (*counts).timed, 1);
            add(&raw mut (*counts).latency_ns, record.latency_ns);
        }
    }
    if !timed {
        return;
    }
    let key = HistKey {
        pid: record.pid,
        class,
    };
    let bucket = hist_bucket(record.latency_ns) & (HIST_BUCKETS - 1);
    // Zeroes from a static: a Hist is too big for the BPF stack.
    match get_or_insert(&HISTS, key, &EMPTY_HIST) {
        // SAFETY: a value of HISTS; the index is masked into range for the verifier.
        Some(hist) => unsafe { add(&raw mut (*hist).buckets[bucket], 1) },
        None => {
            bump(counter::SUMMARY_FULL);
            diagnostics::summary_full(record.pid, true);
        }
    }
}

/// The value of `key`, inserted as `first` if absent: one lookup once the key exists. Another
/// CPU may insert the same key meanwhile; then both use its entry.
#[inline(always)]
fn get_or_insert<K: Copy, V>(map: &HashMap<K, V>, key: K, first: &V) -> Option<*mut V> {
    map.get_ptr_mut(key).or_else(|| {
        let _ = map.insert(key, first, BPF_NOEXIST.into());
        map.get_ptr_mut(key)
    })
}

/// Adds `n` to a summary counter. The maps are shared by all CPUs (per-CPU copies would cost
/// memory and creation time in proportion to the CPU count), so the add is atomic: BPF's
/// atomic add, as C's `__sync_fetch_and_add` with its result unused. (core's AtomicU64 has no
/// fetch_add on the BPF target, which lacks compare-and-swap before v3.)
#[inline(always)]
unsafe fn add(counter: *mut u64, n: u64) {
    // SAFETY: the caller's pointer is an aligned u64 inside a live map value.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(counter, n) };
}

static EMPTY_HIST: Hist = Hist {
    buckets: [0; HIST_BUCKETS],
};
