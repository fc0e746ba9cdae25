//! The system clocks, in ns. The kernel programs stamp records with CLOCK_MONOTONIC.
use nix::time::{ClockId, clock_gettime};

/// CLOCK_MONOTONIC now: the clock of every record's `ts_ns`.
pub fn monotonic_ns() -> u64 {
    read(ClockId::CLOCK_MONOTONIC) as u64
}

/// CLOCK_REALTIME now, since the epoch.
pub fn realtime_ns() -> i128 {
    read(ClockId::CLOCK_REALTIME)
}

fn read(clock: ClockId) -> i128 {
    // Fails only for a clock the kernel lacks; these two exist on every Linux.
    let now = clock_gettime(clock).expect("reading a clock every Linux kernel has");
    i128::from(now.tv_sec()) * 1_000_000_000 + i128::from(now.tv_nsec())
}
