//! User stacks at faults: which faults carry one (`--stack-faults`), and how it is taken.
//! - `--stack=fp`: the kernel walks the frame pointers (`bpf_get_stackid`) into `STACKS`.
//! - `--stack=dwarf`: the thread's user registers and the top of its user stack (up to
//!   `--stack-size`, from the stack pointer up to the end of its mapping) are copied into the
//!   ring as a `kind::STACK` record, ahead of the fault's own record; userspace unwinds it with
//!   the binaries' call-frame tables.
//!
//! Reading the user stack can fault (a page not present, the end of the stack): the kernel
//! then fires the kernel-mode fault tracepoint in this very thread, nested in this program.
//! Such a fault is this program's own doing, not the traced process's: the slot is marked
//! `CAPTURING` meanwhile, and the fault-entry program ignores it.
use core::intrinsics::{AtomicOrdering, atomic_cxchg};

use aya_ebpf::{
    bindings::BPF_F_USER_STACK,
    helpers::{
        bpf_get_current_task_btf, bpf_get_smp_processor_id, bpf_probe_read_kernel,
        generated::{bpf_probe_read_user, bpf_task_pt_regs},
    },
    macros::map,
    maps::{Array, StackTrace},
    programs::tracing::StackIdContext,
};
use cow_trace_common::{
    MAX_STACK_SIZE, NO_STACK, STACK_REGS, StackHeader, counter, kind, stack_faults, stack_mode,
    x86_pf,
};

use crate::{
    arch::{PT_REGS_IP, USER_FP, USER_LR, USER_SP},
    diagnostics,
    maps::{Slot, bump, setting},
    report,
};

/// The slot flag saying the thread's user stack is being read.
pub use cow_trace_common::PENDING_CAPTURING as CAPTURING;

/// User stacks of faults (--stack=fp), deduplicated by the kernel.
#[map]
pub static STACKS: StackTrace = StackTrace::with_max_entries(16384, 0);

/// Room to assemble a stack record, one per CPU (indexed by CPU number; userspace sizes it
/// to the possible CPUs with --stack=dwarf): a record is too big for the BPF stack, and it
/// must be whole before `bpf_ringbuf_output` copies it in, at its true length. Programs
/// that take stacks run with preemption disabled (tracepoints, perf events, kprobes), or, for
/// fentry, with migration disabled only: a program may then be preempted on its CPU by another
/// that takes a stack. The buffer is claimed (`busy`) while in use, so the second goes without
/// its stack (counted) rather than overwrite the first's.
#[map]
pub static STACK_BUFFERS: Array<StackBuffer> = Array::with_max_entries(1, 0);

#[repr(C)]
pub struct StackBuffer {
    /// 1 while a program fills the buffer and hands it to the ring.
    busy: u64,
    header: StackHeader,
    bytes: [u8; STACK_BYTES],
}

/// Room for the largest --stack-size, a power of two so a mask bounds a length for the
/// verifier.
const STACK_BYTES: usize = 1 << 16;
const _: () = assert!(MAX_STACK_SIZE as usize <= STACK_BYTES);

/// Whether a fault with `error_code` (x86 bits, as the backends fill them) carries a stack,
/// and how: None, or the mode.
#[inline(always)]
pub fn wanted(error_code: u64, known: bool) -> Option<u32> {
    let stacks = setting!(stacks);
    if stacks == stack_mode::NONE {
        return None;
    }
    let write = error_code & x86_pf::WRITE != 0;
    let write_protect = write && error_code & x86_pf::PROT != 0;
    let wanted = match setting!(stack_faults) {
        stack_faults::ALL => true,
        stack_faults::WRITES => known && write,
        _ => known && write_protect,
    };
    wanted.then_some(stacks)
}

/// Takes the stack of the fault pending in `slot` (entered at `ts_ns`), in the mode asked for.
/// `regs`: the fault's `pt_regs`, the user registers when the fault came from user mode;
/// `kernel_mode`: they are not (the user registers are then the task's own, at its kernel
/// entry). Returns the stack id (fp), or NO_STACK; for dwarf, whether the record went out is
/// in the slot's flags (`USER_STACK`).
#[inline(always)]
pub fn take<C: StackIdContext>(
    ctx: &C,
    slot: Slot,
    mode: u32,
    ts_ns: u64,
    regs: u64,
    kernel_mode: bool,
) -> i32 {
    slot.mark(CAPTURING);
    let id = if mode == stack_mode::FP {
        frame_pointer_stack(ctx)
    } else {
        let regs = if kernel_mode { task_regs() } else { regs };
        if copy(slot, ts_ns, regs) {
            slot.mark(cow_trace_common::flags::USER_STACK);
        }
        NO_STACK
    };
    slot.unmark(CAPTURING);
    id
}

/// The kernel's frame-pointer walk into `STACKS`.
#[inline(always)]
fn frame_pointer_stack<C: StackIdContext>(ctx: &C) -> i32 {
    match ctx.get_stackid(&STACKS, BPF_F_USER_STACK.into()) {
        Ok(id) => id as i32,
        Err(error) => {
            // EEXIST: the bucket holds another stack; ENOMEM: the map is full. Else (EFAULT)
            // the walk itself failed.
            const EEXIST: i32 = 17;
            const ENOMEM: i32 = 12;
            bump(if error == -EEXIST || error == -ENOMEM {
                counter::STACK_MAP_FULL
            } else {
                counter::STACK_UNREADABLE
            });
            diagnostics::stack_failed(error);
            NO_STACK
        }
    }
}

/// The current task's user registers as saved at its entry into the kernel (kernels since
/// 5.15 have the helper; before, userspace leaves `task_regs` 0 and kernel-mode faults go
/// without a stack).
#[inline(always)]
fn task_regs() -> u64 {
    if setting!(task_regs) == 0 {
        return 0;
    }
    // SAFETY: helpers without memory-safety preconditions; the task is the current one.
    unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) as u64 }
}

/// Copies the registers at `regs` and the stack above the stack pointer into a `kind::STACK`
/// record in the ring. False if nothing could be read, the CPU's buffer was busy or the ring
/// was full (counted).
#[inline(always)]
fn copy(slot: Slot, ts_ns: u64, regs: u64) -> bool {
    if regs == 0 {
        bump(counter::STACK_UNREADABLE);
        return false;
    }
    // SAFETY: a helper without arguments.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let Some(buffer) = STACK_BUFFERS.get_ptr_mut(cpu) else {
        bump(counter::STACK_UNREADABLE);
        return false;
    };
    // SAFETY: an aligned u64 of this CPU's buffer, live while the program runs; the swap is
    // atomic, so of a program and one preempting it, one claims the buffer.
    let (_, claimed) = unsafe {
        atomic_cxchg::<u64, { AtomicOrdering::Relaxed }, { AtomicOrdering::Relaxed }>(
            &raw mut (*buffer).busy,
            0,
            1,
        )
    };
    if !claimed {
        bump(counter::STACK_BUFFER_BUSY);
        return false;
    }
    let sent = copy_into(buffer, slot, ts_ns, regs);
    // SAFETY: as above; the buffer is this program's until here.
    unsafe { core::ptr::write_volatile(&raw mut (*buffer).busy, 0) };
    sent
}

/// [`copy`] with the CPU's buffer claimed.
#[inline(always)]
fn copy_into(buffer: *mut StackBuffer, slot: Slot, ts_ns: u64, regs: u64) -> bool {
    let read = |offset: u64| -> Option<u64> {
        // SAFETY: regs points to a pt_regs; the helper reads it without faulting.
        unsafe { bpf_probe_read_kernel((regs + offset) as *const u64) }.ok()
    };
    let (Some(ip), Some(sp), Some(fp), Some(lr)) = (
        read(PT_REGS_IP),
        read(USER_SP),
        read(USER_FP),
        USER_LR.map_or(Some(0), read),
    ) else {
        bump(counter::STACK_UNREADABLE);
        return false;
    };
    let limit = setting!(stack_size);
    let page = 1u64 << setting!(page_shift);
    // SAFETY: this CPU's buffer (see STACK_BUFFERS), live while the program runs.
    let bytes = unsafe { (*buffer).bytes.as_mut_ptr() };
    // As much as is mapped: a read that reaches past the stack's end fails whole, so each
    // failure drops the last page the copy reached.
    let mut len = u64::from(limit);
    let mut copied = false;
    for _ in 0..MAX_TRIES {
        if len == 0 {
            break;
        }
        let size = (len as u32) & (STACK_BYTES as u32 - 1);
        // SAFETY: size is within the buffer; the helper reads user memory without faulting
        // (pagefault_disable), failing instead.
        if unsafe { bpf_probe_read_user(bytes.cast(), size, sp as *const _) } == 0 {
            copied = true;
            break;
        }
        let last_page = (sp + len - 1) & !(page - 1);
        len = last_page.saturating_sub(sp);
    }
    if !copied {
        bump(counter::STACK_UNREADABLE);
        return false;
    }
    let size = (len as u32) & (STACK_BYTES as u32 - 1);
    let entry = slot.read();
    let regs: [u64; STACK_REGS] = [ip, sp, fp, lr];
    // SAFETY: as above.
    unsafe {
        (*buffer).header = StackHeader {
            kind: kind::STACK,
            flags: 0,
            ts_ns,
            pid: entry.pid,
            tid: slot.tid(),
            regs,
            size,
            limit,
        };
    }
    let total = size as usize + size_of::<StackHeader>();
    // SAFETY: the buffer holds the header and at least `size` bytes right after it.
    let record =
        unsafe { core::slice::from_raw_parts((&raw const (*buffer).header).cast::<u8>(), total) };
    if report::emit_bytes(record).is_err() {
        bump(counter::STACK_RING_FULL);
        return false;
    }
    true
}

/// Reads tried at most: the whole length, then one page less each time (4 KiB pages).
const MAX_TRIES: usize = MAX_STACK_SIZE as usize / 4096 + 2;
