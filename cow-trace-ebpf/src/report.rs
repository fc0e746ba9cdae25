//! The last step of every fault: stream it to userspace, or count it in the kernel
//! (`summary`).
use aya_ebpf::bindings::{BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP};
use cow_trace_common::{
    AddressSpaceRecord, CowOutcome, FaultClass, InWindow, Record, TS_NOT_TAKEN, Window, counter,
    flags, kind,
};

use crate::{
    clock::now_ns,
    maps::{EVENTS, WINDOW, WRITTEN, bump, may_have_window, setting},
    summary,
};

/// Writes `record` to the ring buffer, counting a loss when it is full. Userspace is woken
/// only once this CPU has written enough since it last woke it (userspace also drains on a
/// timer), or for a process event.
#[inline(always)]
pub fn emit(record: &Record) {
    match EVENTS.reserve::<Record>(0) {
        Some(mut entry) => {
            entry.write(*record);
            let urgent = matches!(record.kind, kind::FORK | kind::EXIT | kind::EXEC);
            entry.submit(wakeup(urgent, size_of::<Record>()));
        }
        None => bump(counter::RING_FULL),
    }
}

/// Writes a change to an address space to the ring buffer, counting a loss when it is full.
#[inline(always)]
pub fn emit_address_space(record: &AddressSpaceRecord) {
    match EVENTS.reserve::<AddressSpaceRecord>(0) {
        Some(mut entry) => {
            entry.write(*record);
            entry.submit(wakeup(false, size_of::<AddressSpaceRecord>()));
        }
        None => bump(counter::RING_FULL),
    }
}

/// Writes a record of variable length (a copied stack) to the ring buffer; Err if it is full.
#[inline(always)]
pub fn emit_bytes(record: &[u8]) -> Result<(), i32> {
    EVENTS.output::<[u8]>(record, wakeup(false, record.len()))
}

/// The ring's flag for a record of `bytes`: wake userspace at once if `urgent`, else once
/// enough has piled up.
#[inline(always)]
fn wakeup(urgent: bool, bytes: usize) -> u64 {
    if wakeup_due(urgent, bytes) {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    }
    .into()
}

/// Counts a record's bytes toward this CPU's next wakeup of userspace; true if it is due. A
/// per-CPU count, where asking the ring how much it holds was a helper call per record.
#[inline(always)]
fn wakeup_due(urgent: bool, bytes: usize) -> bool {
    let Some(written) = WRITTEN.get_ptr_mut(0) else {
        return true;
    };
    let due = setting!(wakeup_bytes);
    // SAFETY: this CPU's count, live while the program runs; a program interrupting another
    // on this CPU may lose a record's bytes, which delays a wakeup a little.
    unsafe {
        *written = (*written).saturating_add(bytes as u32);
        if urgent || *written >= due {
            *written = 0;
            return true;
        }
    }
    false
}

/// The snapshot window a fault of `record.pid` falls in (0: none): see `Window::for_fault`.
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
    let window = *window;
    if window.closing_since_ns == 0 {
        return window.child;
    }
    let when = if record.ts_ns == TS_NOT_TAKEN {
        now_ns()
    } else {
        record.ts_ns
    };
    let class = FaultClass::of_record(record);
    let copied = class.is_completed() && class.cow_outcome() == Some(CowOutcome::Copied);
    let InWindow { child, closed } = window.for_fault(when, copied);
    if closed {
        // The window it interrupted, if any, resumes.
        if child == 0 {
            let _ = WINDOW.remove(record.pid);
        } else {
            let _ = WINDOW.insert(record.pid, Window::resumed(child), 0);
        }
    }
    child
}

/// Streams or aggregates a finished (or abandoned) fault, whose comm the caller filled in.
/// Fills in the snapshot window.
#[inline(always)]
pub fn fault(record: &mut Record) {
    record.other_pid = window_of(record);
    // A fault whose stack was copied is streamed even in a summary: userspace unwinds its
    // stack and counts it.
    if setting!(summary_mode) == 0 || record.flags & flags::USER_STACK != 0 {
        emit(record);
    } else {
        summary::count(record);
    }
}

/// As [`fault`], but streamed in every mode: for the programs that end a thread's last fault
/// (exit, exec, rename), rare events. The summary's counting, inlined into them, made the
/// kernel's verifier take most of `--summary`'s start-up; userspace counts a streamed fault
/// into the summary as it counts one whose stack was copied.
#[inline(always)]
pub fn fault_streamed(record: &mut Record) {
    record.other_pid = window_of(record);
    emit(record);
}
