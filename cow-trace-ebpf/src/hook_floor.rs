//! The cost of cow-trace's per-fault hooks alone, for `cargo xtask bench`: the same attach
//! points as the tracepoint backend, each with a program that does nothing. What tracing costs
//! above these rows is cow-trace's own work; these rows are the floor no program can go under.
#![no_std]
#![no_main]

use aya_ebpf::{
    macros::{perf_event, raw_tracepoint},
    programs::{PerfEventContext, RawTracePointContext},
};

/// Attached to `page_fault_user` and `page_fault_kernel`, as `exceptions_page_fault_*` are.
#[raw_tracepoint]
pub fn floor_fault_entry(_ctx: RawTracePointContext) -> i32 {
    0
}

/// Attached to `mm_page_alloc`, as `kmem_mm_page_alloc` is.
#[raw_tracepoint(tracepoint = "mm_page_alloc")]
pub fn floor_page_alloc(_ctx: RawTracePointContext) -> i32 {
    0
}

/// Attached to PAGE_FAULTS_MIN and PAGE_FAULTS_MAJ of the traced threads, as `fault_done_*` are.
#[perf_event]
pub fn floor_fault_done(_ctx: PerfEventContext) -> u32 {
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
