//! The kernel's clock, as safe calls.
use aya_ebpf::{
    helpers::{bpf_jiffies64, bpf_ktime_get_ns},
    macros::map,
    maps::PerCpuArray,
};

/// CLOCK_MONOTONIC now, in ns.
#[inline(always)]
pub fn now_ns() -> u64 {
    // SAFETY: a helper call without arguments; it cannot fail.
    unsafe { bpf_ktime_get_ns() }
}

/// Per CPU: the timer tick (jiffies) of the last [`tick_ns`] and the clock then.
#[map]
static TICK_CLOCK: PerCpuArray<[u64; 2]> = PerCpuArray::with_max_entries(1, 0);

/// CLOCK_MONOTONIC as it was at this CPU's first call in the current timer tick: a time up to
/// one tick (1 to 10 ms, by the kernel's HZ) early, never late, for a clock-source read per
/// tick and CPU instead of one per call. On a virtual machine that read is dear (here about
/// 100 ns); the jiffies counter is a variable. (`bpf_ktime_get_coarse_ns` would be the
/// kernel's own coarse clock, but tracing programs may not call it.)
#[inline(always)]
pub fn tick_ns() -> u64 {
    // SAFETY: a helper call without arguments; it cannot fail.
    let tick = unsafe { bpf_jiffies64() };
    let Some(last) = TICK_CLOCK.get_ptr_mut(0) else {
        return now_ns();
    };
    // SAFETY: this CPU's entry, live while the program runs; a program interrupting another
    // on this CPU at worst takes a clock read of its own.
    unsafe {
        if (*last)[0] != tick {
            *last = [tick, now_ns()];
        }
        (*last)[1]
    }
}
