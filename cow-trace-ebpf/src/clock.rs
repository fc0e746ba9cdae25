//! The kernel's clock, as a safe call.
use aya_ebpf::helpers::bpf_ktime_get_ns;

/// CLOCK_MONOTONIC now, in ns.
#[inline(always)]
pub fn now_ns() -> u64 {
    // SAFETY: a helper call without arguments; it cannot fail.
    unsafe { bpf_ktime_get_ns() }
}
