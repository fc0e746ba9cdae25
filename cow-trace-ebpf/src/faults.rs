//! The "tracepoint" backend: a fault's entry from the exceptions tracepoints, its completion
//! from the PAGE_FAULTS_MIN / PAGE_FAULTS_MAJ perf software events, paired per thread.
//!
//! The kernel fires those perf events in `mm_account_fault()`, right where it increments the
//! task's min_flt / maj_flt, so one completion record is emitted per fault the kernel counts.
use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{perf_event, tracepoint},
    programs::{PerfEventContext, TracePointContext},
};
use cow_trace_common::{PendingFault, Record, flags, kind};

use crate::{
    maps::{PENDING, is_traced, pending_slot, settings, user_stack},
    report,
};

/// Offsets shared by exceptions:page_fault_user and exceptions:page_fault_kernel.
/// ```text
/// field:unsigned long address;     offset:8;   size:8;
/// field:unsigned long ip;          offset:16;  size:8;
/// field:unsigned long error_code;  offset:24;  size:8;
/// ```
const ADDRESS: usize = 8;
const IP: usize = 16;
const ERROR_CODE: usize = 24;

#[tracepoint(category = "exceptions", name = "page_fault_user")]
pub fn exceptions_page_fault_user(ctx: TracePointContext) -> u32 {
    fault_entry(&ctx, false);
    0
}

/// Faults the kernel takes on a user address on the task's behalf (copy_to_user in read(), ...).
#[tracepoint(category = "exceptions", name = "page_fault_kernel")]
pub fn exceptions_page_fault_kernel(ctx: TracePointContext) -> u32 {
    fault_entry(&ctx, true);
    0
}

#[perf_event]
pub fn fault_done_minor(ctx: PerfEventContext) -> u32 {
    fault_done(&ctx, false);
    0
}

#[perf_event]
pub fn fault_done_major(ctx: PerfEventContext) -> u32 {
    fault_done(&ctx, true);
    0
}

#[inline(always)]
fn fault_entry(ctx: &TracePointContext, kernel_mode: bool) {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !is_traced((pid_tgid >> 32) as u32) {
        return;
    }
    // Direct loads from the record (the verifier allows them at constant offsets): cheaper
    // than a helper call each.
    // SAFETY: offsets from the tracepoint format above, identical on every kernel with it.
    let (address, ip, error_code) = unsafe {
        let record = ctx.as_ptr().cast::<u8>();
        (
            record.add(ADDRESS).cast::<u64>().read(),
            record.add(IP).cast::<u64>().read(),
            record.add(ERROR_CODE).cast::<u64>().read(),
        )
    };
    // Kernel-mode faults on kernel addresses are not the process's memory.
    if kernel_mode && (address as i64) < 0 {
        return;
    }
    let Some(slot) = pending_slot(pid_tgid as u32) else {
        return;
    };
    // SAFETY: the slot belongs to this thread, which is running this program.
    let pending = unsafe { *slot };
    if pending.ts_ns != 0 {
        // A kernel-mode fault while a user fault is pending is nested in it (a user-memory
        // access on the fault path, or a profiler's user-stack walk from an interrupt): the
        // outer fault goes on. Keep it; the nested one, if it completes, is counted without
        // its entry.
        if kernel_mode && pending.flags & flags::KERNEL_MODE == 0 {
            return;
        }
        // User faults do not nest: a pending entry now never completed. Report it.
        flush(slot);
    }
    // SAFETY: the slot belongs to this thread, which is running this program.
    unsafe {
        *slot = PendingFault {
            ts_ns: bpf_ktime_get_ns(),
            address,
            ip,
            error_code,
            flags: if kernel_mode { flags::KERNEL_MODE } else { 0 },
            stack_id: user_stack(ctx),
        };
    }
}

#[inline(always)]
fn fault_done(ctx: &PerfEventContext, major: bool) {
    let now = unsafe { bpf_ktime_get_ns() };
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let tid = pid_tgid as u32;
    // Only traced threads have pending slots: a live one spares the TRACED lookup.
    let slot = PENDING.get_ptr_mut(tid);
    // SAFETY: the slot belongs to this thread, which is running this program.
    let live = slot.is_some_and(|slot| unsafe { (*slot).ts_ns } != 0);
    if !live && !is_traced(tgid) {
        return;
    }
    // SAFETY: the context is the kernel's bpf_perf_event_data for this sample.
    let (address, regs_ip) = unsafe { ((*ctx.ctx).addr, (*ctx.ctx).regs.rip) };

    let mut record = Record::zeroed();
    record.kind = kind::FAULT;
    record.pid = tgid;
    record.tid = tid;
    record.address = address;
    if major {
        record.flags |= flags::MAJOR;
    }
    // SAFETY: as above.
    match slot.map(|slot| unsafe { (slot, *slot) }) {
        Some((slot, entry)) if entry.ts_ns != 0 && (entry.address ^ address) >> 12 == 0 => {
            record.ts_ns = entry.ts_ns;
            record.latency_ns = now - entry.ts_ns;
            record.ip = entry.ip;
            record.error_code = entry.error_code;
            record.flags |= entry.flags;
            record.stack_id = entry.stack_id;
            if settings().copy_detection != 0 {
                record.flags |= flags::COPY_KNOWN;
            }
            unsafe { (*slot).ts_ns = 0 };
        }
        _ => {
            // The entry predates attaching or was not stored, or this completes a fault nested
            // in the pending one (which stays pending): count it all the same, with what it
            // knows.
            record.ts_ns = now;
            record.ip = regs_ip;
            record.flags |= flags::NO_ENTRY;
            record.stack_id = user_stack(ctx);
        }
    }
    report::fault(&mut record);
}

/// Reports the fault pending in `slot`, if any, as one that never completed, and empties the
/// slot. `slot` must be the current thread's.
#[inline(always)]
pub fn flush(slot: *mut PendingFault) {
    // SAFETY: the slot belongs to the current thread, which is running this program.
    let entry = unsafe { *slot };
    if entry.ts_ns == 0 {
        return;
    }
    unsafe { (*slot).ts_ns = 0 };
    let pid_tgid = bpf_get_current_pid_tgid();
    let mut record = Record::zeroed();
    record.kind = kind::FAULT_INCOMPLETE;
    record.ts_ns = entry.ts_ns;
    record.address = entry.address;
    record.ip = entry.ip;
    record.error_code = entry.error_code;
    record.flags = entry.flags & flags::KERNEL_MODE;
    record.stack_id = entry.stack_id;
    record.pid = (pid_tgid >> 32) as u32;
    record.tid = pid_tgid as u32;
    report::fault(&mut record);
}
