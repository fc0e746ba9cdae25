//! Kernel side of cow-trace: one module per job.
//! - `faults`: the tracepoint backend (fault entry + completion, paired per thread)
//! - `handle_mm_fault`: the fexit and kprobe backends (each attempt, with its return value)
//! - `copies`: copy vs reuse, from user-page allocations inside a fault
//! - `tasks`: keeps the traced-process map and snapshot windows in step with fork and exit
//! - `unmaps`: munmap and mremap, which the kernel's mapping records do not report
//! - `report`: a finished fault is streamed or counted in the kernel
//! - `summary`: the in-kernel counts (--summary), with a per-CPU cache of the last key
//! - `stacks`: user stacks of faults, walked by frame pointers or copied for userspace
//! - `maps`: the maps and load-time settings every program shares, and the per-thread `Slot`
//! - `clock`: the kernel clock as a safe call
//! - `diagnostics`: rare events logged for the user (aya-log, shown with -v)
//! - `arch`: register layouts, per CPU architecture
#![no_std]
#![no_main]
// atomic_xadd: the summary's shared counters (see summary::add); atomic_cxchg: claiming a slot.
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod arch;
mod clock;
mod copies;
mod diagnostics;
mod faults;
mod handle_mm_fault;
mod maps;
mod report;
mod stacks;
mod summary;
mod tasks;
mod unmaps;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
