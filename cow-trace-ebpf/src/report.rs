//! The last step of every fault: stream it to userspace, or count it in the kernel.
use aya_ebpf::helpers::bpf_ktime_get_ns;
use cow_trace_common::{
    HIST_BUCKETS, Hist, HistKey, REGION_SHIFT, Record, StatKey, StatValue, TS_NOT_TAKEN, Window,
    class, counter, flags, hist_bucket, kind, x86_pf,
};

use crate::maps::{EVENTS, HISTS, STATS, WINDOW, bump, may_have_window, settings};

const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;
const BPF_RB_AVAIL_DATA: u64 = 0;

/// Writes `record` to the ring buffer, counting a loss when it is full. Userspace is woken
/// only once enough has piled up (it also drains on a timer), or for a process event.
#[inline(always)]
pub fn emit(record: &Record) {
    match EVENTS.reserve::<Record>(0) {
        Some(mut entry) => {
            entry.write(*record);
            let urgent = matches!(record.kind, kind::FORK | kind::EXIT | kind::EXEC);
            let wake =
                urgent || EVENTS.query(BPF_RB_AVAIL_DATA) >= u64::from(settings().wakeup_bytes);
            entry.submit(if wake {
                BPF_RB_FORCE_WAKEUP
            } else {
                BPF_RB_NO_WAKEUP
            });
        }
        None => bump(counter::RING_FULL),
    }
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
    // SAFETY: a plain value read.
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
        // SAFETY: a helper call without arguments.
        unsafe { bpf_ktime_get_ns() }
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
    // SAFETY: plain value read.
    record.other_pid = window_of(record);
    if settings().summary_mode == 0 {
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
    let timed = u64::from(record.flags & (flags::UNTIMED | flags::NO_ENTRY) == 0);
    match STATS.get_ptr_mut(key) {
        // SAFETY: per-CPU value, only this CPU writes it.
        Some(value) => unsafe {
            (*value).faults += 1;
            (*value).timed += timed;
            (*value).latency_ns += record.latency_ns;
        },
        None => {
            let value = StatValue {
                faults: 1,
                timed,
                latency_ns: record.latency_ns,
                sample_address: record.address,
            };
            if STATS.insert(key, value, 0).is_err() {
                bump(counter::SUMMARY_FULL);
            }
        }
    }
    if timed == 0 {
        return;
    }
    let key = HistKey {
        pid: record.pid,
        class,
    };
    let bucket = hist_bucket(record.latency_ns) & (HIST_BUCKETS - 1);
    // One lookup per fault; a second only after the histogram's first insert.
    let hist = HISTS.get_ptr_mut(key).or_else(|| {
        // Insert zeroes from a static: a Hist is too big for the BPF stack.
        let _ = HISTS.insert(key, EMPTY_HIST, BPF_NOEXIST);
        HISTS.get_ptr_mut(key)
    });
    match hist {
        // SAFETY: per-CPU value; the index is masked into range for the verifier.
        Some(hist) => unsafe { (*hist).buckets[bucket] += 1 },
        None => bump(counter::SUMMARY_FULL),
    }
}

static EMPTY_HIST: Hist = Hist {
    buckets: [0; HIST_BUCKETS],
};

/// Map update flag: insert only if absent.
const BPF_NOEXIST: u64 = 1;
