//! The "fexit" and "kprobe" backends: `handle_mm_fault(vma, address, flags, regs)` itself, as
//! the SystemTap probes hooked it. Each call is one attempt; its return value says how it
//! ended. The fault flags give the access; `do_wp_page` marks the write-protect
//! (copy-on-write) faults, `do_swap_page` those that read their page back from swap (whose
//! new page is no copy).
//!
//! Kernels forbid these on some machines (no kprobes, BPF trampolines refused): userspace then
//! falls back to the tracepoint backend in `faults`.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_kernel},
    macros::{fentry, fexit, kprobe, kretprobe},
    programs::{
        FEntryContext, FExitContext, ProbeContext, RetProbeContext, tracing::StackIdContext,
    },
};
use cow_trace_common::{Record, flags, kind, stack_faults, x86_pf};

use crate::{
    arch::PT_REGS_IP,
    clock::now_ns,
    diagnostics,
    maps::{FaultEntry, Slot, setting, tracing_stopped},
    report, stacks,
};

/// include/linux/mm_types.h `enum fault_flag`, stable since 5.x.
const FAULT_FLAG_WRITE: u64 = 1 << 0;
const FAULT_FLAG_TRIED: u64 = 1 << 5;
const FAULT_FLAG_USER: u64 = 1 << 6;
const FAULT_FLAG_INSTRUCTION: u64 = 1 << 8;

/// include/linux/mm_types.h `enum vm_fault_reason`.
const VM_FAULT_OOM: u32 = 0x0001;
const VM_FAULT_SIGBUS: u32 = 0x0002;
const VM_FAULT_MAJOR: u32 = 0x0004;
const VM_FAULT_HWPOISON: u32 = 0x0010;
const VM_FAULT_HWPOISON_LARGE: u32 = 0x0020;
const VM_FAULT_SIGSEGV: u32 = 0x0040;
const VM_FAULT_RETRY: u32 = 0x0400;
const VM_FAULT_FALLBACK: u32 = 0x0800;
const VM_FAULT_ERROR: u32 = VM_FAULT_OOM
    | VM_FAULT_SIGBUS
    | VM_FAULT_SIGSEGV
    | VM_FAULT_HWPOISON
    | VM_FAULT_HWPOISON_LARGE
    | VM_FAULT_FALLBACK;

/// Set in a pending entry when `do_wp_page` ran for it.
const WRITE_PROTECT_SEEN: u32 = 1 << 31;

#[fentry(function = "handle_mm_fault")]
pub fn handle_mm_fault_fentry(ctx: FEntryContext) -> u32 {
    attempt_begins(&ctx, ctx.arg(1), ctx.arg(2), ctx.arg(3));
    0
}

#[fexit(function = "handle_mm_fault")]
pub fn handle_mm_fault_fexit(ctx: FExitContext) -> u32 {
    // The return value follows the four arguments.
    attempt_ends(ctx.arg::<u64>(4) as u32, ctx.arg(2));
    0
}

#[fentry(function = "do_wp_page")]
pub fn do_wp_page_fentry(ctx: FEntryContext) -> u32 {
    write_protect_seen(&ctx);
    0
}

#[fentry(function = "do_swap_page")]
pub fn do_swap_page_fentry(_ctx: FEntryContext) -> u32 {
    swap_in_seen();
    0
}

#[kprobe]
pub fn handle_mm_fault_kprobe(ctx: ProbeContext) -> u32 {
    attempt_begins(
        &ctx,
        ctx.arg(1).unwrap_or(0),
        ctx.arg(2).unwrap_or(0),
        ctx.arg(3).unwrap_or(0),
    );
    0
}

#[kretprobe]
pub fn handle_mm_fault_kretprobe(ctx: RetProbeContext) -> u32 {
    // kretprobes do not see the arguments: the flags were kept at entry.
    attempt_ends(ctx.ret::<u64>() as u32, u64::MAX);
    0
}

#[kprobe]
pub fn do_wp_page_kprobe(ctx: ProbeContext) -> u32 {
    write_protect_seen(&ctx);
    0
}

#[kprobe]
pub fn do_swap_page_kprobe(_ctx: ProbeContext) -> u32 {
    swap_in_seen();
    0
}

#[inline(always)]
fn attempt_begins<C: StackIdContext>(ctx: &C, address: u64, fault_flags: u64, regs: u64) {
    let Some(slot) = Slot::of_current_or_new(bpf_get_current_pid_tgid()) else {
        return;
    };
    // Past the end (see `STOPPED`).
    if tracing_stopped() {
        return;
    }
    // The access, from the fault flags. (x86's exception entry overwrites pt_regs->orig_ax
    // with -1 after reading the error code, so regs cannot tell.) PROT is added when
    // do_wp_page runs: a write-protect fault.
    let mut error_code = 0;
    if fault_flags & FAULT_FLAG_WRITE != 0 {
        error_code |= x86_pf::WRITE;
    }
    if fault_flags & FAULT_FLAG_INSTRUCTION != 0 {
        error_code |= x86_pf::INSTR;
    }
    if fault_flags & FAULT_FLAG_USER != 0 {
        error_code |= x86_pf::USER;
    }
    // regs is NULL for a get_user_pages() fault.
    let ip = if regs != 0 {
        // SAFETY: regs points to the faulting context's pt_regs; the helper reads it without
        // faulting, and a failed read leaves ip unknown.
        unsafe { bpf_probe_read_kernel((regs + PT_REGS_IP) as *const u64) }.unwrap_or(0)
    } else {
        0
    };
    let mut entry_flags = if fault_flags & FAULT_FLAG_USER == 0 {
        flags::KERNEL_MODE
    } else {
        0
    };
    // kretprobes cannot read the flags at return: keep TRIED (a retried fault is major).
    if fault_flags & FAULT_FLAG_TRIED != 0 {
        entry_flags |= flags::MAJOR;
    }
    let ts_ns = now_ns();
    slot.begin(FaultEntry {
        ts_ns,
        address,
        ip,
        error_code,
        flags: entry_flags,
    });
    // The fault's user registers: its own where it came from user mode.
    let kernel_mode = fault_flags & FAULT_FLAG_USER == 0;
    let user_regs = if kernel_mode { 0 } else { regs };
    slot.set_user_regs(user_regs);
    // Whether it is a write-protect fault is known at do_wp_page: those take their stack there.
    if setting!(stack_faults) != stack_faults::COW
        && let Some(mode) = stacks::wanted(error_code, true)
    {
        let id = stacks::take(ctx, slot, mode, ts_ns, user_regs, kernel_mode);
        slot.set_stack_id(id);
    }
}

/// The attempt is a write-protect fault: marked, and its stack taken (--stack-faults cow).
#[inline(always)]
fn write_protect_seen<C: StackIdContext>(ctx: &C) {
    let Some(slot) = Slot::of_current(bpf_get_current_pid_tgid()) else {
        return;
    };
    slot.mark(WRITE_PROTECT_SEEN);
    let entry = slot.read();
    if entry.ts_ns != 0
        && setting!(stack_faults) == stack_faults::COW
        && let Some(mode) = stacks::wanted(x86_pf::PROT | x86_pf::WRITE, true)
    {
        let kernel_mode = entry.flags & flags::KERNEL_MODE != 0;
        let id = stacks::take(ctx, slot, mode, entry.ts_ns, entry.user_regs, kernel_mode);
        slot.set_stack_id(id);
    }
}

/// The attempt reads its page back from swap: a page it allocates is that page, not a copy of
/// a file's page (a swapped-out page of a private file mapping was copied long before).
#[inline(always)]
fn swap_in_seen() {
    if let Some(slot) = Slot::of_current(bpf_get_current_pid_tgid()) {
        slot.mark(flags::SWAP_IN);
    }
}

/// `fault_flags` is u64::MAX where the caller cannot know them (kretprobe).
#[inline(always)]
fn attempt_ends(vm_fault: u32, fault_flags: u64) {
    let now = now_ns();
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let tid = pid_tgid as u32;
    // Only traced threads have slots.
    let Some(slot) = Slot::of_current(pid_tgid) else {
        return;
    };
    let entry = slot.read();
    if entry.ts_ns == 0 {
        // After the stop, attempts begin without an entry (see `STOPPED`).
        if !tracing_stopped() {
            diagnostics::attempt_without_entry(tid);
        }
        return;
    }
    slot.empty();
    let mut record = Record::zeroed();
    record.pid = tgid;
    record.tid = tid;
    record.ts_ns = entry.ts_ns;
    record.address = entry.address;
    record.ip = entry.ip;
    record.error_code = entry.error_code;
    if entry.flags & WRITE_PROTECT_SEEN != 0 {
        record.error_code |= x86_pf::PROT | x86_pf::WRITE;
    }
    record.flags = entry.flags
        & (flags::KERNEL_MODE
            | flags::PAGE_ALLOCATED
            | flags::PAGE_ZEROED
            | flags::SWAP_IN
            | flags::USER_STACK);
    if setting!(untimed) == 0 {
        record.latency_ns = now - entry.ts_ns;
    } else {
        record.flags |= flags::UNTIMED;
    }
    record.vm_fault = vm_fault;
    record.stack_id = entry.stack_id;
    record.comm = entry.comm;
    record.kind = if vm_fault & VM_FAULT_RETRY != 0 {
        kind::FAULT_RETRY
    } else if vm_fault & VM_FAULT_ERROR != 0 {
        kind::FAULT_INCOMPLETE
    } else {
        kind::FAULT
    };
    // As mm_account_fault(): major if the final attempt was major, or the fault was retried.
    let tried = if fault_flags == u64::MAX {
        entry.flags & flags::MAJOR != 0
    } else {
        fault_flags & FAULT_FLAG_TRIED != 0
    };
    if record.kind == kind::FAULT && (vm_fault & VM_FAULT_MAJOR != 0 || tried) {
        record.flags |= flags::MAJOR;
    }
    if setting!(copy_detection) != 0 {
        record.flags |= flags::COPY_KNOWN;
    }
    report::fault(&mut record);
}
