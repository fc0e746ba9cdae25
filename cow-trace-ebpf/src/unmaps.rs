//! munmap and mremap of traced processes. The kernel's mapping records (perf `MMAP2`, read by
//! userspace) say when memory is mapped, not when it is unmapped or moved: without these, a
//! fault in memory an mremap moved over an unmapped mapping would resolve to the old one.
//! Each call's arguments are kept from its entry to its return, and a call that succeeded is
//! reported ([`AddressSpaceRecord`]). The syscall tracepoints fire only for these two calls,
//! so other processes pay only when they make one.
use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::{map, tracepoint},
    maps::HashMap,
    programs::TracePointContext,
};
use cow_trace_common::{AddressSpaceRecord, kind};

use crate::{clock::now_ns, maps::is_traced, report::emit_address_space};

/// The arguments of a thread's call in progress (a thread makes one call at a time).
#[repr(C)]
#[derive(Clone, Copy)]
struct Call {
    kind: u32,
    _pad: u32,
    start: u64,
    len: u64,
    new_len: u64,
    flags: u64,
}

#[map]
static CALLS: HashMap<u32, Call> = HashMap::with_max_entries(4096, 0);

/// Offset of a syscall tracepoint's first argument (each is 8 bytes, after the common fields
/// and `__syscall_nr`), and of `ret` at its exit: the same on every kernel.
const ARG0: usize = 16;
const RET: usize = 16;

#[tracepoint(category = "syscalls", name = "sys_enter_munmap")]
pub fn syscalls_sys_enter_munmap(ctx: TracePointContext) -> u32 {
    enter(&ctx, kind::UNMAP);
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_mremap")]
pub fn syscalls_sys_enter_mremap(ctx: TracePointContext) -> u32 {
    enter(&ctx, kind::REMAP);
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_munmap")]
pub fn syscalls_sys_exit_munmap(ctx: TracePointContext) -> u32 {
    exit(&ctx, kind::UNMAP);
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_mremap")]
pub fn syscalls_sys_exit_mremap(ctx: TracePointContext) -> u32 {
    exit(&ctx, kind::REMAP);
    0
}

#[inline(always)]
fn enter(ctx: &TracePointContext, call_kind: u32) {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !is_traced((pid_tgid >> 32) as u32) {
        return;
    }
    // SAFETY: the offsets of this tracepoint's arguments (see ARG0); a failed read gives 0.
    let arg = |i: usize| unsafe { ctx.read_at::<u64>(ARG0 + 8 * i) }.unwrap_or(0);
    let remap = call_kind == kind::REMAP;
    let call = Call {
        kind: call_kind,
        _pad: 0,
        start: arg(0),
        len: arg(1),
        new_len: if remap { arg(2) } else { 0 },
        flags: if remap { arg(3) } else { 0 },
    };
    // Full (4096 threads in such a call at once): the change goes unreported, as before.
    let _ = CALLS.insert(pid_tgid as u32, call, 0);
}

#[inline(always)]
fn exit(ctx: &TracePointContext, call_kind: u32) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tid = pid_tgid as u32;
    // SAFETY: the value is copied at once; only this thread writes its entry.
    let Some(call) = (unsafe { CALLS.get(tid) }).copied() else {
        return;
    };
    let _ = CALLS.remove(tid);
    // SAFETY: `ret`'s offset (see RET); a failed read counts as a failed call.
    let ret = unsafe { ctx.read_at::<i64>(RET) }.unwrap_or(-1);
    if call.kind != call_kind || ret < 0 {
        return;
    }
    emit_address_space(&AddressSpaceRecord {
        kind: call_kind,
        _pad: 0,
        ts_ns: now_ns(),
        pid: (pid_tgid >> 32) as u32,
        tid,
        start: call.start,
        len: call.len,
        new_start: if call_kind == kind::REMAP {
            ret as u64
        } else {
            0
        },
        new_len: call.new_len,
        flags: call.flags,
    });
}
