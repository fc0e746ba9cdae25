//! The "tracepoint" backend: a fault's entry from the exceptions tracepoints, its completion
//! from the PAGE_FAULTS_MIN / PAGE_FAULTS_MAJ perf software events, paired per thread.
//!
//! The kernel fires those perf events in `mm_account_fault()`, right where it increments the
//! task's min_flt / maj_flt, so one completion record is emitted per fault the kernel counts.
//! Untimed (--no-latency), PAGE_FAULTS_MIN is not attached (it costs more than the rest): a
//! fault entered DEFERRED is final once its thread goes on (see [`finish_pending`]).

use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_task, bpf_probe_read_kernel,
    },
    macros::{perf_event, raw_tracepoint},
    programs::{PerfEventContext, RawTracePointContext},
};
use cow_trace_common::{
    NO_FIELD, NO_STACK, PENDING_COMPLETED, PENDING_COMPLETION_SEEN, PENDING_DEFERRED as DEFERRED,
    PendingFault, Record, TS_NOT_TAKEN, flags, kind, stack_mode,
};

use crate::{
    arch::{PT_REGS_IP, sample_ip},
    clock::now_ns,
    diagnostics,
    maps::{FaultEntry, PAGEFAULTS_DISABLED_BY_TRACING, Slot, is_traced, setting, tracing_stopped},
    report,
    stacks::{self, CAPTURING},
};

/// Raw tracepoints: the kernel calls the program with the tracepoint's arguments, skipping the
/// trace record a classic tracepoint program would have it build first (half the cost here).
/// `TP_PROTO(unsigned long address, struct pt_regs *regs, unsigned long error_code)`, the same
/// on every kernel since 4.15.
#[raw_tracepoint(tracepoint = "page_fault_user")]
pub fn exceptions_page_fault_user(ctx: RawTracePointContext) -> i32 {
    fault_entry(&ctx, false);
    0
}

/// Faults the kernel takes on a user address on the task's behalf (copy_to_user in read(), ...).
#[raw_tracepoint(tracepoint = "page_fault_kernel")]
pub fn exceptions_page_fault_kernel(ctx: RawTracePointContext) -> i32 {
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
fn fault_entry(ctx: &RawTracePointContext, kernel_mode: bool) {
    let address: u64 = ctx.arg(0);
    // Kernel-mode faults on kernel addresses are not the process's memory.
    if kernel_mode && (address as i64) < 0 {
        return;
    }
    // Any process's fault will do (userspace takes one of its own as it attaches), so that
    // the first kernel-mode faults of a traced thread are told apart too.
    if !kernel_mode {
        learn_pagefaults_disabled_by_tracing();
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(slot) = Slot::of_current_or_new(pid_tgid) else {
        return;
    };
    // Past the end: a fault still pending stays for its completion, or for userspace.
    if tracing_stopped() {
        return;
    }
    // A fault of this thread's own stack being read, by this program (see `stacks`).
    if slot.flags() & CAPTURING != 0 {
        return;
    }
    // A read that may not fault (another tracer copying this thread's user stack, from an
    // interrupt or its own program): the kernel gives up at once, never handles or counts it.
    if kernel_mode && pagefaults_disabled_by_the_task() {
        return;
    }
    let untimed = setting!(untimed) != 0;
    if slot.pending_since() != 0 {
        // Timed, a kernel-mode fault while a user fault is pending is nested in it (a
        // user-memory access on the fault path, or a profiler's user-stack walk from an
        // interrupt): the outer fault goes on. Keep it; the nested one, if it completes, is
        // counted without its entry. (Deferred, the pending fault is simply over.)
        if kernel_mode && slot.flags() & (flags::KERNEL_MODE | DEFERRED) == 0 {
            diagnostics::nested_fault(slot.tid(), address);
            return;
        }
        finish_pending(slot);
    }
    let summary_mode = setting!(summary_mode) != 0;
    // Timed, too, until the thread's completion event has fired once: it may have none yet.
    let deferred = untimed || slot.flags() & PENDING_COMPLETION_SEEN == 0;
    // A summary counts by region and stack, never by ip: skip the read there. A fault that
    // will complete takes its ip from the completion's registers (the same pt_regs, read
    // without a helper call); only a fault that then never completes (SIGSEGV) loses it.
    let ip = if summary_mode || !deferred {
        0
    } else {
        let regs: u64 = ctx.arg(1);
        let ip = (regs + PT_REGS_IP) as *const u64;
        // SAFETY: regs is the kernel's pt_regs of this fault; the helper reads it without
        // faulting, and a failed read leaves ip unknown.
        unsafe { bpf_probe_read_kernel(ip) }.unwrap_or(0)
    };
    let error_code: u64 = ctx.arg(2);
    let stack = stacks::wanted(error_code, true);
    // Untimed, the time still places the fault among the kernel's mapping records, which carry
    // exact times: a tick's time (up to a tick early) would resolve it against the mappings
    // before a fresh mmap. A summary shows no time at all, but a copied stack pairs with its
    // fault by the entry time.
    let ts_ns = if untimed && summary_mode && stack.is_none() {
        TS_NOT_TAKEN
    } else {
        now_ns()
    };
    slot.begin(FaultEntry {
        ts_ns,
        address,
        ip,
        error_code,
        flags: if kernel_mode { flags::KERNEL_MODE } else { 0 }
            | if deferred { DEFERRED } else { 0 },
    });
    if deferred && !kernel_mode {
        slot.set_user_regs(ctx.arg(1));
    }
    if let Some(mode) = stack {
        let id = stacks::take(ctx, slot, mode, ts_ns, ctx.arg(1), kernel_mode);
        slot.set_stack_id(id);
    }
}

/// `current->pagefault_disabled`, the count `pagefault_disable()` raises, where the kernel's
/// BTF told userspace where it lies.
#[inline(always)]
fn pagefaults_disabled() -> Option<u32> {
    let offset = setting!(task_pagefault_disabled);
    if offset == NO_FIELD {
        return None;
    }
    // SAFETY: a helper call without arguments; the task is current, live while this runs.
    let task = unsafe { bpf_get_current_task() };
    // SAFETY: the helper reads without faulting; a failed read tells nothing.
    unsafe { bpf_probe_read_kernel((task + u64::from(offset)) as *const u32) }.ok()
}

/// At a user-mode fault the task itself has page faults enabled: what the program sees then
/// is what the tracing path adds (some kernels run tracepoints with page faults disabled).
/// Noted once; afterwards one inlined array load.
#[inline(always)]
fn learn_pagefaults_disabled_by_tracing() {
    let Some(noted) = PAGEFAULTS_DISABLED_BY_TRACING.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: a plain load and store in a live map value; racing stores write the same value.
    unsafe {
        if *noted == 0
            && let Some(count) = pagefaults_disabled()
        {
            *noted = count + 1;
        }
    }
}

/// Whether the task had disabled page faults before this kernel-mode fault: a read that may
/// not fault, which the kernel gives up at once. Unknown (false) until a user-mode fault has
/// shown what the tracing path itself adds.
#[inline(always)]
fn pagefaults_disabled_by_the_task() -> bool {
    let noted = PAGEFAULTS_DISABLED_BY_TRACING.get(0).copied().unwrap_or(0);
    noted != 0 && pagefaults_disabled().is_some_and(|count| count > noted - 1)
}

#[inline(always)]
fn fault_done(ctx: &PerfEventContext, major: bool) {
    let now = now_ns();
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let tid = pid_tgid as u32;
    // Only traced threads have pending slots: one spares the TRACED lookup.
    let slot = Slot::of_current(pid_tgid);
    if slot.is_none() && !is_traced(tgid) {
        return;
    }
    // SAFETY: the context is the kernel's bpf_perf_event_data for this sample.
    let (address, regs_ip) = unsafe { ((*ctx.ctx).addr, sample_ip(&(*ctx.ctx).regs)) };

    let major = if major { flags::MAJOR } else { 0 };
    let mut record = Record::zeroed();
    match slot {
        Some(slot) if slot.pending_since() != 0 && slot.is_for(address) => {
            slot.write_record(&mut record);
            record.address = address;
            record.ip = regs_ip;
            record.flags |= major;
            if setting!(untimed) == 0 {
                record.latency_ns = now - record.ts_ns;
            } else {
                record.flags |= flags::UNTIMED;
            }
            if setting!(copy_detection) != 0 {
                record.flags |= flags::COPY_KNOWN;
            }
            slot.complete();
        }
        // The thread has two completion events: one inherited from the thread that created it
        // while userspace was opening events for every thread, and its own. Both fire for each
        // fault, one after the other; the first completed it.
        Some(slot)
            if slot.flags() == PENDING_COMPLETED | PENDING_COMPLETION_SEEN
                && slot.is_for(address) =>
        {
            return;
        }
        // A fault that began after tracing stopped.
        _ if tracing_stopped() => return,
        _ => {
            // The entry predates attaching or was not stored, or this completes a fault nested
            // in the pending one (which stays pending): count it all the same, with what it
            // knows.
            record.kind = kind::FAULT;
            record.flags = major | flags::NO_ENTRY;
            record.ts_ns = now;
            record.address = address;
            record.ip = regs_ip;
            record.pid = tgid;
            record.tid = tid;
            record.stack_id = match (slot, stacks::wanted(0, false)) {
                // Unknown access: only --stack-faults all takes it, walked by frame pointers.
                (Some(slot), Some(stack_mode::FP)) => {
                    stacks::take(ctx, slot, stack_mode::FP, 0, 0, false)
                }
                _ => NO_STACK,
            };
            match slot {
                Some(slot) => {
                    slot.write_comm(&mut record);
                    slot.mark(PENDING_COMPLETION_SEEN);
                }
                None => record.comm = bpf_get_current_comm().unwrap_or_default(),
            }
        }
    }
    report::fault(&mut record);
}

/// Reports the fault pending in `slot`, if any, and empties the slot. Normally the fault's
/// completion would have emptied the slot: it never completed (SIGSEGV, a fatal signal, ...).
/// Entered DEFERRED (--no-latency), a minor fault has no completion event: the thread has gone
/// on, so its fault is over. The caller must be the slot's thread, or that thread must be past
/// faulting (exiting).
#[inline(always)]
pub fn finish_pending(slot: Slot) {
    finish(slot, true, report::fault);
}

/// As [`finish_pending`], for a thread that exits or execs: streamed even in a summary (see
/// [`report::fault_streamed`]).
#[inline(always)]
pub fn finish_at_exit(slot: Slot) {
    finish(slot, true, report::fault_streamed);
}

/// As [`finish_at_exit`], but only a DEFERRED fault (the thread has gone on: a normal pending
/// fault might still be in progress).
#[inline(always)]
pub fn finish_deferred(slot: Slot) {
    finish(slot, false, report::fault_streamed);
}

#[inline(always)]
fn finish(slot: Slot, even_timed: bool, report: fn(&mut Record)) {
    let entry_flags = slot.flags();
    let deferred = entry_flags & DEFERRED != 0;
    if slot.pending_since() == 0 || (!deferred && !even_timed) {
        return;
    }
    let mut record = Record::zeroed();
    slot.write_record(&mut record);
    slot.empty();
    if deferred {
        record.flags = PendingFault::untimed_record_flags(entry_flags);
    } else {
        record.kind = kind::FAULT_INCOMPLETE;
        record.flags = entry_flags & (flags::KERNEL_MODE | flags::USER_STACK);
    }
    report(&mut record);
}
