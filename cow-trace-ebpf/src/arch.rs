//! What differs between the CPU architectures the programs are built for. aya-build passes
//! `--cfg bpf_target_arch="..."` from the userspace binary's target (so a build for
//! aarch64-unknown-linux-musl gets arm64's layouts); a direct build of this crate takes the
//! host's (build.rs).
use aya_ebpf::bindings::bpf_user_pt_regs_t;

/// Offset of the faulting instruction's address in the kernel's `struct pt_regs`.
/// x86-64: `ip` follows r15..r8, ax, cx, dx, si, di and orig_ax (a fixed ABI).
#[cfg(bpf_target_arch = "x86_64")]
pub const PT_REGS_IP: u64 = 16 * 8;
/// arm64: `pc` follows `regs[31]` and `sp` (the kernel's pt_regs starts with user_pt_regs).
#[cfg(bpf_target_arch = "aarch64")]
pub const PT_REGS_IP: u64 = 32 * 8;

/// Offsets of the user stack pointer, frame pointer and (arm64) link register in the
/// kernel's `struct pt_regs`: where an unwind starts (--stack=dwarf).
/// x86-64: bp is the fifth slot (r15, r14, r13, r12, bp); sp follows ip, cs and flags.
#[cfg(bpf_target_arch = "x86_64")]
pub const USER_SP: u64 = 19 * 8;
#[cfg(bpf_target_arch = "x86_64")]
pub const USER_FP: u64 = 4 * 8;
#[cfg(bpf_target_arch = "x86_64")]
pub const USER_LR: Option<u64> = None;
/// arm64: `regs[29]` (fp) and `regs[30]` (lr), then `sp` (before `pc`).
#[cfg(bpf_target_arch = "aarch64")]
pub const USER_SP: u64 = 31 * 8;
#[cfg(bpf_target_arch = "aarch64")]
pub const USER_FP: u64 = 29 * 8;
#[cfg(bpf_target_arch = "aarch64")]
pub const USER_LR: Option<u64> = Some(30 * 8);

/// Offset of the system call number in the kernel's `struct pt_regs`, read as an `i32`: -1
/// while the task is in an exception or interrupt taken from user mode, the number while it is
/// in a system call (what the kernel's `syscall_get_nr()` reads).
/// x86-64: the low half of `orig_ax`, after r15..r8, ax, cx, dx, si, di.
#[cfg(bpf_target_arch = "x86_64")]
pub const PT_REGS_SYSCALL_NR: u64 = 15 * 8;
/// arm64: `syscallno`, after `regs[31]`, `sp`, `pc`, `pstate` and `orig_x0`.
#[cfg(bpf_target_arch = "aarch64")]
pub const PT_REGS_SYSCALL_NR: u64 = 35 * 8;

#[cfg(not(any(bpf_target_arch = "x86_64", bpf_target_arch = "aarch64")))]
compile_error!("cow-trace's eBPF programs know the pt_regs of x86_64 and aarch64 only");

/// The instruction pointer in a perf sample's registers.
#[inline(always)]
pub fn sample_ip(regs: &bpf_user_pt_regs_t) -> u64 {
    #[cfg(bpf_target_arch = "x86_64")]
    return regs.rip;
    #[cfg(bpf_target_arch = "aarch64")]
    return regs.pc;
}
