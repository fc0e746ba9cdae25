//! Copy vs reuse without kprobes: a write-protect fault that copies the page allocates the new
//! page in the faulting task, between the fault's entry and its completion; one that reuses the
//! page allocates nothing. So a user-page allocation in that window marks the fault copied.
//! A first write to a page of a private file mapping allocates the private copy the same way
//! (before it reads the file's page, if it must): userspace, which knows the mapping, tells it
//! from a shared file's page-cache page (`class::NEW_PAGE`).
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_kernel},
    macros::raw_tracepoint,
    programs::RawTracePointContext,
};
use cow_trace_common::{PENDING_DEFERRED, flags};

use crate::{arch::PT_REGS_SYSCALL_NR, maps::Slot};

/// __GFP_HIGHMEM | __GFP_MOVABLE: set for user pages (GFP_HIGHUSER_MOVABLE), never for slab
/// or page-table allocations.
const USER_PAGE_GFP: u32 = (1 << 1) | (1 << 3);
/// __GFP_THISNODE: a NUMA-balancing fault migrating a page to this node allocates the new one
/// with it; no copy on write of a small page does (the NUMA policy adds it to huge pages').
const GFP_THISNODE: u32 = 1 << 21;
/// __GFP_ZERO: a write to the shared zero page allocates a zeroed page instead of a copy.
const GFP_ZERO: u32 = 1 << 8;

/// kmem:mm_page_alloc as a raw tracepoint, which runs on every page allocation of the machine:
/// `TP_PROTO(struct page *page, unsigned int order, gfp_t gfp_flags, int migratetype)`.
/// The flags, an argument here, rule out most allocations before any map lookup.
#[raw_tracepoint(tracepoint = "mm_page_alloc")]
pub fn kmem_mm_page_alloc(ctx: RawTracePointContext) -> i32 {
    let gfp = ctx.arg::<u64>(2) as u32;
    if gfp & USER_PAGE_GFP != USER_PAGE_GFP {
        return 0;
    }
    // A huge page allocated in a write-protect fault replaces the huge zero page, zeroed by
    // the fault rather than with __GFP_ZERO: a zero fill (the kernel breaks copy-on-write of
    // a huge page by splitting it and copying small pages).
    let huge = ctx.arg::<u64>(1) != 0;
    if !huge && gfp & GFP_THISNODE != 0 {
        return 0;
    }
    // Only traced threads have pending slots: one lookup filters and finds the slot.
    let Some(slot) = Slot::of_current(bpf_get_current_pid_tgid()) else {
        return 0;
    };
    if slot.pending_since() == 0 || allocated_after_the_fault(slot) {
        return 0;
    }
    slot.mark(if huge || gfp & GFP_ZERO != 0 {
        flags::PAGE_ZEROED
    } else {
        flags::PAGE_ALLOCATED
    });
    0
}

/// Whether the thread has gone on from its pending fault to a system call, which allocates this
/// page. Only a deferred fault (untimed) stays pending after it is over, until the thread's
/// next fault: meanwhile a read into the page cache, an `mmap` with `MAP_POPULATE` or a
/// `get_user_pages()` fault allocates user pages that are not the fault's. A fault taken in
/// user mode kept its registers, where the kernel notes whether the thread is now in a system
/// call; one taken in kernel mode (inside a system call) cannot tell, and keeps the allocation.
#[inline(always)]
fn allocated_after_the_fault(slot: Slot) -> bool {
    let regs = slot.user_regs();
    if slot.flags() & PENDING_DEFERRED == 0 || regs == 0 {
        return false;
    }
    let nr = (regs + PT_REGS_SYSCALL_NR) as *const i32;
    // SAFETY: regs is this thread's own pt_regs (a user-mode fault's are the top of its kernel
    // stack, which lives as long as the thread); the helper reads without faulting.
    unsafe { bpf_probe_read_kernel(nr) }.is_ok_and(|nr| nr != -1)
}
