//! Nothing left behind: no tracer of ours still attached, no program of the session still
//! loaded.
use std::{process::Command, sync::Mutex, thread, time::Duration};

use crate::util;

/// Every tracer started, to check at the end that none still holds a probe.
pub static TRACER_PIDS: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// Ids of the BPF programs loaded now.
pub fn bpf_program_ids() -> Option<Vec<u32>> {
    let list = util::output(Command::new("bpftool").args(["prog", "list"]))?;
    Some(
        list.lines()
            .filter_map(|l| l.split_once(':')?.0.parse().ok())
            .collect(),
    )
}

/// Our tracers have all been reaped; the kernel must show no attachment of theirs, and any
/// program loaded since the start and still loaded is named (other users of the machine
/// may have loaded it).
pub fn check_nothing_left(before: Option<Vec<u32>>) {
    // Programs are released a moment after their last fd closes.
    thread::sleep(Duration::from_millis(500));
    let ours = TRACER_PIDS.lock().map(|p| p.clone()).unwrap_or_default();
    let attached = util::output(Command::new("bpftool").args(["perf", "list"])).unwrap_or_default();
    let still: Vec<&str> = attached
        .lines()
        .filter(|l| ours.iter().any(|pid| l.starts_with(&format!("pid {pid} "))))
        .collect();
    if !still.is_empty() {
        eprintln!("bench: WARNING: probes of our tracers still attached: {still:?}");
    }
    let (Some(before), Some(after)) = (before, bpf_program_ids()) else {
        eprintln!("bench: bpftool prog list failed: could not check for leftovers");
        return;
    };
    let new: Vec<u32> = after
        .into_iter()
        .filter(|id| !before.contains(id))
        .collect();
    match new.is_empty() && still.is_empty() {
        true => eprintln!("bench: nothing left loaded or attached"),
        false => eprintln!(
            "bench: {} BPF programs loaded since the start are still loaded (ids {new:?}); none \
             is attached by a tracer of ours unless listed above",
            new.len()
        ),
    }
}
