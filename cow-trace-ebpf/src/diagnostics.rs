//! Rare events worth a line to the user, logged with aya-log: a map full, a stack not
//! captured, a map update that failed, faults nesting unexpectedly. Userspace passes them to
//! the `log` crate, so `-v` shows them. Called only where something already went wrong, never
//! on a fault's normal path, and each kind logged at most once per CPU: a full map fails every
//! insert after the first, and the losses are counted anyway (the summary's LOST line).
//!
//! Each diagnostic is a function of its own, kept out of line (`cold`, `inline(never)`): the
//! programs' normal path compiles as without them. Userspace sets aya-log's level at load time
//! from its own: in a run that shows none of these, the verifier drops their code as dead.
use aya_ebpf::{macros::map, maps::PerCpuArray};
use aya_log_ebpf::{
    info,
    macro_support::{Level, level_enabled},
};

/// The pending-fault map refused thread `tid` a slot: its faults go without their entry.
#[cold]
#[inline(never)]
pub fn pending_full(tid: u32, error: i32) {
    if wanted(PENDING_FULL) {
        info!(
            &(),
            target: TARGET,
            "pending-fault map: no slot for thread {} (error {}): its faults go without entry",
            tid,
            error
        );
    }
}

/// The traced-process map refused a new child: it is not followed.
#[cold]
#[inline(never)]
pub fn traced_full(child: u32, parent: u32, error: i32) {
    if wanted(TRACED_FULL) {
        info!(
            &(),
            target: TARGET,
            "traced-process map: child {} of {} not followed (error {})", child, parent, error
        );
    }
}

/// The summary's map of counts (`STATS`) is full: faults of `pid` not counted.
#[cold]
#[inline(never)]
pub fn summary_full(pid: u32) {
    if wanted(SUMMARY_FULL) {
        info!(&(), target: TARGET, "summary map full: faults of pid {} not counted", pid);
    }
}

/// The summary's histogram map (`HISTS`) is full: latencies of faults of `pid` (which are
/// counted) not in the histograms.
#[cold]
#[inline(never)]
pub fn hist_full(pid: u32) {
    if wanted(HIST_FULL) {
        info!(
            &(),
            target: TARGET,
            "histogram map full: latencies of pid {} not in the histograms (its faults are counted)",
            pid
        );
    }
}

/// The kernel could not capture a user stack.
#[cold]
#[inline(never)]
pub fn stack_failed(error: i32) {
    if wanted(STACK_FAILED) {
        info!(&(), target: TARGET, "a user stack was not captured: error {}", error);
    }
}

/// A fork could not record the child's parent or open the parent's snapshot window.
#[cold]
#[inline(never)]
pub fn window_not_recorded(child: u32, parent: u32, error: i32) {
    if wanted(UPDATE_FAILED) {
        info!(
            &(),
            target: TARGET,
            "child {} of {}: its snapshot window not recorded (error {})", child, parent, error
        );
    }
}

/// A kernel-mode fault began while a user fault of the same thread was pending.
#[cold]
#[inline(never)]
pub fn nested_fault(tid: u32, address: u64) {
    if wanted(NESTED) {
        info!(
            &(),
            target: TARGET,
            "a kernel-mode fault at {:x} nested in thread {}'s user fault: counted without \
             its entry",
            address,
            tid
        );
    }
}

/// `handle_mm_fault` returned with no attempt pending in the thread.
#[cold]
#[inline(never)]
pub fn attempt_without_entry(tid: u32) {
    if wanted(NESTED) {
        info!(
            &(),
            target: TARGET,
            "handle_mm_fault returned in thread {} with no attempt pending: a nested attempt \
             ended first, or it began before attaching",
            tid
        );
    }
}

/// The `log` target of every diagnostic (aya-log's default, the module path, would read as
/// userspace's: the eBPF binary is called cow-trace too).
const TARGET: &str = "cow_trace::ebpf";

// The kinds of diagnostic, each logged once per CPU.
const PENDING_FULL: u32 = 0;
const TRACED_FULL: u32 = 1;
const SUMMARY_FULL: u32 = 2;
const STACK_FAILED: u32 = 3;
const UPDATE_FAILED: u32 = 4;
const NESTED: u32 = 5;
const HIST_FULL: u32 = 6;
const KINDS: u32 = 7;

/// Per kind, non-zero once this CPU has logged one.
#[map]
static LOGGED: PerCpuArray<u8> = PerCpuArray::with_max_entries(KINDS, 0);

/// True if a diagnostic of `kind` is to be logged now: the level shows it (the check aya-log's
/// macros make, made first so that the lookup below is dead code too when it does not), and
/// this CPU has not logged one of its kind yet.
#[inline(always)]
fn wanted(kind: u32) -> bool {
    if !level_enabled(Level::Info) {
        return false;
    }
    let Some(logged) = LOGGED.get_ptr_mut(kind) else {
        return false;
    };
    // SAFETY: this CPU's copy, live while the program runs. A program preempted on this CPU
    // by another may log the same kind twice, nothing worse.
    unsafe { core::mem::replace(&mut *logged, 1) == 0 }
}
