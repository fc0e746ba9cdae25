//! Follows the traced process tree: children join at creation (a held command at its exec),
//! processes leave at exit.
use aya_ebpf::{
    bindings::BPF_ANY,
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid},
    macros::{map, tracepoint},
    maps::HashMap,
    programs::TracePointContext,
};
use cow_trace_common::{
    COMM_LEN, NO_FIELD, PENDING_COMPLETION_SEEN, Record, Window, counter, kind,
};

use crate::{
    clock::now_ns,
    diagnostics,
    faults::{finish_at_exit, finish_deferred},
    maps::{PARENT, Slot, TRACED, WINDOW, bump, hint_traced, hint_window, is_traced, setting},
    report::emit,
};

const CLONE_VM: u64 = 0x0000_0100;
const CLONE_THREAD: u64 = 0x0001_0000;

/// The held command (`-- CMD`): cow-trace's child, waiting to exec. It joins `TRACED` as it
/// execs (see `join_at_exec`), so none of cow-trace's own code it ran before counts. Written by
/// userspace. Value unused.
#[map]
static TRACE_AT_EXEC: HashMap<u32, u8> = HashMap::with_max_entries(1, 0);

/// task:task_newtask, fired in the parent while it creates a task.
/// ```text
/// field:pid_t pid;  offset:8;  size:4;   field:char comm[16];  offset:12;  size:16;
/// field:u64 clone_flags;  offset:32;  size:8;   field:short oom_score_adj;  offset:40;  size:2;
/// ```
/// Threads share their creator's thread group, which is already traced; only new processes
/// (including CLONE_VM ones, which share memory but not the thread group) join the map.
#[tracepoint(category = "task", name = "task_newtask")]
pub fn task_task_newtask(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let parent = (pid_tgid >> 32) as u32;
    if !is_traced(parent) {
        return 0;
    }
    let (pid_at, clone_flags_at) = (
        setting!(task_newtask_pid) as usize,
        setting!(task_newtask_clone_flags) as usize,
    );
    // SAFETY: offsets come from this kernel's tracepoint format; a failed read gives 0.
    let (child, clone_flags) = unsafe {
        (
            ctx.read_at::<i32>(pid_at).unwrap_or(0),
            ctx.read_at::<u64>(clone_flags_at).unwrap_or(0),
        )
    };
    if child <= 0 || clone_flags & CLONE_THREAD != 0 {
        return 0;
    }
    let child = child as u32;
    // The hint first: no fault of the child may skip it once it is in the map.
    hint_traced(child);
    if let Err(error) = TRACED.insert(child, 1, BPF_ANY.into()) {
        bump(counter::TRACED_FULL);
        diagnostics::traced_full(child, parent, error);
        return 0;
    }
    // A child that shares its parent's memory (vfork, posix_spawn, system()) holds no
    // snapshot of it: the parent copies nothing for it.
    if clone_flags & CLONE_VM == 0 {
        open_window(parent, child);
    }
    let mut record = Record::zeroed();
    record.kind = kind::FORK;
    record.ts_ns = now_ns();
    record.pid = parent;
    record.tid = pid_tgid as u32;
    record.other_pid = child;
    record.comm = bpf_get_current_comm().unwrap_or_default();
    emit(&record);
    0
}

/// sched:sched_process_exit, fired in each exiting thread.
/// ```text
/// field:char comm[16];  offset:8;  size:16;   field:pid_t pid;  offset:24;  size:4;
/// field:int prio;  offset:28;  size:4;   field:bool group_dead;  offset:32;  size:1;  (6.16+)
/// ```
#[tracepoint(category = "sched", name = "sched_process_exit")]
pub fn sched_sched_process_exit(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let tid = pid_tgid as u32;
    if !is_traced(tgid) {
        return 0;
    }
    // A fault still pending in an exiting thread never completed (e.g. SIGSEGV killed it),
    // or, untimed, is over.
    if let Some(slot) = Slot::of(tid) {
        finish_at_exit(slot);
        slot.remove();
    }

    let exit_group_dead = setting!(exit_group_dead);
    let group_dead = if exit_group_dead == NO_FIELD {
        // Older kernels lack the field; the leader's exit is the best sign there.
        tid == tgid
    } else {
        // SAFETY: offset from this kernel's tracepoint format; a failed read gives 0.
        unsafe { ctx.read_at::<u8>(exit_group_dead as usize) }.unwrap_or(0) != 0
    };
    if !group_dead {
        return 0;
    }
    let _ = TRACED.remove(tgid);
    let _ = WINDOW.remove(tgid);
    // Start closing the parent's window if it is this child's: the child's memory is released
    // after this point (see Window).
    // SAFETY: the value is copied at once; only this child's fork and exit write its entry.
    if let Some(&parent) = unsafe { PARENT.get(tgid) } {
        if let Some(window) = WINDOW.get_ptr_mut(parent) {
            // SAFETY: the map keeps the value alive while the program runs. The parent's fork
            // of another child may replace it meanwhile: then `child` is no longer this one.
            unsafe {
                if (*window).child == tgid {
                    (*window).closing_since_ns = now_ns();
                } else if (*window).previous == tgid {
                    (*window).previous = 0;
                }
            }
        }
        let _ = PARENT.remove(tgid);
    }
    let mut record = Record::zeroed();
    record.kind = kind::EXIT;
    record.ts_ns = now_ns();
    record.pid = tgid;
    record.tid = tid;
    record.comm = bpf_get_current_comm().unwrap_or_default();
    emit(&record);
    0
}

/// sched:sched_process_exec, fired in the process once its new program is loaded.
/// ```text
/// field:__data_loc char[] filename;  offset:8;  size:4;   field:pid_t pid;  offset:12;  size:4;
/// field:pid_t old_pid;  offset:16;  size:4;
/// ```
/// Userspace reads the new program's mappings and forgets the old ones.
#[tracepoint(category = "sched", name = "sched_process_exec")]
pub fn sched_sched_process_exec(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if !is_traced(tgid) {
        return 0;
    }
    // A thread other than the leader that execs takes the leader's id: its slot, under its
    // old id, would be orphaned. Whatever fault it holds is from before execve.
    // SAFETY: old_pid's offset has been 16 since the tracepoint exists; a failed read gives 0.
    let old_tid = unsafe { ctx.read_at::<u32>(16) }.unwrap_or(0);
    if old_tid != pid_tgid as u32
        && let Some(slot) = Slot::of(old_tid)
    {
        finish_at_exit(slot);
        slot.remove();
    }
    end_parents_window(tgid);
    let mut record = Record::zeroed();
    record.kind = kind::EXEC;
    record.ts_ns = now_ns();
    record.pid = tgid;
    record.tid = pid_tgid as u32;
    record.comm = bpf_get_current_comm().unwrap_or_default();
    emit(&record);
    0
}

/// The parent's faults from now until `child` exits or execs fall in the child's window; the
/// window it interrupts, if its child still holds the memory, resumes after.
#[inline(always)]
fn open_window(parent: u32, child: u32) {
    if let Err(error) = PARENT.insert(child, parent, BPF_ANY.into()) {
        diagnostics::window_not_recorded(child, parent, error);
    }
    // SAFETY: the value is copied at once; forks, execs and exits of the parent's children
    // write it (one at a time, but for children of one parent racing on two CPUs).
    let previous = match unsafe { WINDOW.get(parent) } {
        Some(window) if window.closing_since_ns == 0 => window.child,
        Some(window) => window.previous,
        None => 0,
    };
    let window = Window {
        child,
        previous,
        closing_since_ns: 0,
    };
    // The hint first: no fault on another CPU may skip a window already in the map.
    hint_window(parent);
    if let Err(error) = WINDOW.insert(parent, window, BPF_ANY.into()) {
        diagnostics::window_not_recorded(child, parent, error);
    }
}

/// A child that ran a new program shares no memory with its parent any more (its old memory
/// was released before this tracepoint): the parent's faults from now on are no snapshot's
/// for it. Its window ends (the one it interrupted resumes), or it no longer resumes after a
/// newer one.
#[inline(always)]
fn end_parents_window(child: u32) {
    // SAFETY: the value is copied at once; only this child's fork, exec and exit write it.
    let Some(parent) = (unsafe { PARENT.get(child) }).copied() else {
        return;
    };
    if let Some(window) = WINDOW.get_ptr_mut(parent) {
        // SAFETY: the map keeps the value alive while the program runs; see open_window.
        unsafe {
            if (*window).child == child {
                if (*window).previous == 0 {
                    let _ = WINDOW.remove(parent);
                } else {
                    *window = Window::resumed((*window).previous);
                }
            } else if (*window).previous == child {
                (*window).previous = 0;
            }
        }
    }
    let _ = PARENT.remove(child);
}

/// task:task_rename, fired as a task's comm changes (prctl(PR_SET_NAME), a write to
/// /proc/PID/comm, exec), before the new name is stored: keeps the comm cached in the renamed
/// thread's pending slot current.
/// ```text
/// field:pid_t pid;  offset:8;  size:4;   field:char oldcomm[16];  offset:12;  size:16;
/// field:char newcomm[16];  offset:28;  size:16;
/// ```
#[tracepoint(category = "task", name = "task_rename")]
pub fn task_task_rename(ctx: TracePointContext) -> u32 {
    let task_rename_pid = setting!(task_rename_pid);
    let current = bpf_get_current_pid_tgid();
    let tid = if task_rename_pid == NO_FIELD {
        current as u32
    } else {
        // SAFETY: offset from this kernel's tracepoint format; a failed read gives 0.
        unsafe { ctx.read_at::<u32>(task_rename_pid as usize) }.unwrap_or(0)
    };
    if tid == current as u32 {
        join_at_exec((current >> 32) as u32);
    }
    // Only traced threads have slots.
    let Some(slot) = Slot::of(tid) else {
        return 0;
    };
    // A thread renaming itself (as exec does) has gone on from its last fault: untimed, that
    // fault is over, and keeps the name it had.
    if tid == current as u32 {
        finish_deferred(slot);
        // The thread's next fault is entered deferred, as before its first completion event:
        // an exec that leaves the process non-dumpable (a set-user-ID program) makes the
        // kernel drop the thread's completion events right after this rename, and faults
        // entered timed would then never complete. If the events survive, the next fault
        // completes as usual (and is timed); the mark is set again by that completion.
        slot.unmark(PENDING_COMPLETION_SEEN);
    }
    let newcomm_at = setting!(task_rename_newcomm) as usize;
    // SAFETY: offset from this kernel's tracepoint format; a failed read stores nothing.
    if let Ok(comm) = unsafe { ctx.read_at::<[u8; COMM_LEN]>(newcomm_at) } {
        slot.set_comm(comm);
    }
    0
}

/// Moves the held command from `TRACE_AT_EXEC` to `TRACED`. exec renames the task in
/// `begin_new_exec`, right after the new program's address space replaced the old one and
/// before the program is loaded into it (the held command renames itself nowhere else): from
/// here on, every fault is the new program's.
#[inline(always)]
fn join_at_exec(tgid: u32) {
    // SAFETY: only presence is checked.
    if unsafe { TRACE_AT_EXEC.get(tgid) }.is_none() {
        return;
    }
    let _ = TRACE_AT_EXEC.remove(tgid);
    // The hint first, as for a new child.
    hint_traced(tgid);
    if TRACED.insert(tgid, 1, 0).is_err() {
        bump(counter::TRACED_FULL);
    }
}
