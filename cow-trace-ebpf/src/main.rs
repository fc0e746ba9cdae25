//! Kernel side of cow-trace: one module per job.
//! - `faults`: the tracepoint backend (fault entry + completion, paired per thread)
//! - `tasks`: keeps the traced-process map in step with fork and exit
//! - `maps`: the maps and load-time settings every program shares
#![no_std]
#![no_main]

mod faults;
mod maps;
mod tasks;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
