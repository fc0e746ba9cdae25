//! Copy vs reuse without kprobes: a write-protect fault that copies the page allocates the new
//! page in the faulting task, between the fault's entry and its completion; one that reuses the
//! page allocates nothing. So a user-page allocation in that window marks the fault copied.
use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid, macros::tracepoint, programs::TracePointContext,
};
use cow_trace_common::flags;

use crate::maps::{PENDING, settings};

/// __GFP_HIGHMEM | __GFP_MOVABLE: set for user pages (GFP_HIGHUSER_MOVABLE), never for slab
/// or page-table allocations.
const USER_PAGE_GFP: u32 = (1 << 1) | (1 << 3);
/// __GFP_ZERO: a write to the shared zero page allocates a zeroed page instead of a copy.
const GFP_ZERO: u32 = 1 << 8;

/// kmem:mm_page_alloc.
/// ```text
/// field:unsigned long pfn;  offset:8;  size:8;   field:unsigned int order;  offset:16;  size:4;
/// field:unsigned long gfp_flags;  offset:24;  size:8;   field:int migratetype;  offset:32;  size:4;
/// ```
#[tracepoint(category = "kmem", name = "mm_page_alloc")]
pub fn kmem_mm_page_alloc(ctx: TracePointContext) -> u32 {
    // Only traced threads have pending slots: one lookup filters and finds the slot.
    let tid = bpf_get_current_pid_tgid() as u32;
    let Some(pending) = PENDING.get_ptr_mut(tid) else {
        return 0;
    };
    // gfp_flags is 4 or 8 bytes depending on the kernel; its low 32 bits hold these flags
    // either way (little endian).
    // SAFETY: offset from this kernel's tracepoint format.
    let gfp = unsafe { ctx.read_at::<u32>(settings().page_alloc_gfp as usize) }.unwrap_or(0);
    // SAFETY: the slot belongs to this thread, which is running this program.
    if gfp & USER_PAGE_GFP == USER_PAGE_GFP && unsafe { (*pending).ts_ns } != 0 {
        let allocated = if gfp & GFP_ZERO != 0 {
            flags::PAGE_ZEROED
        } else {
            flags::PAGE_ALLOCATED
        };
        unsafe { (*pending).flags |= allocated };
    }
    0
}
