//! What differs between the CPU architectures: the registers an unwind starts from, the
//! frame-pointer step, and what a function that sets up a frame pointer begins with.
use framehop::Error;

use crate::stack_record::UserRegs;

#[cfg(target_arch = "x86_64")]
pub use framehop::x86_64::{
    CacheX86_64 as Cache, UnwindRegsX86_64 as Regs, UnwinderX86_64 as Unwinder,
};

#[cfg(target_arch = "aarch64")]
pub use framehop::aarch64::{
    CacheAarch64 as Cache, UnwindRegsAarch64 as Regs, UnwinderAarch64 as Unwinder,
};

/// The unwind registers and the instruction pointer at the fault.
pub fn start(user: &UserRegs) -> (u64, Regs) {
    #[cfg(target_arch = "x86_64")]
    return (user.ip, Regs::new(user.ip, user.sp, user.fp));
    #[cfg(target_arch = "aarch64")]
    return (user.ip, Regs::new(user.lr, user.sp, user.fp));
}

/// Whether the unwinder follows `register` from frame to frame: those the kernel copies with
/// the stack and framehop's rules read (the instruction, stack and frame pointers, arm64's link
/// register). A table's rule that finds a frame by another cannot be followed.
pub fn follows(register: gimli::Register) -> bool {
    #[cfg(target_arch = "x86_64")]
    return matches!(
        register,
        gimli::X86_64::RA | gimli::X86_64::RSP | gimli::X86_64::RBP
    );
    #[cfg(target_arch = "aarch64")]
    return matches!(
        register,
        gimli::AArch64::SP | gimli::AArch64::X29 | gimli::AArch64::X30
    );
}

/// The name of `register`, as the DWARF register numbering of this CPU has it.
pub fn register_name(register: gimli::Register) -> String {
    #[cfg(target_arch = "x86_64")]
    let name = gimli::X86_64::register_name(register);
    #[cfg(target_arch = "aarch64")]
    let name = gimli::AArch64::register_name(register);
    name.map_or_else(|| format!("register {}", register.0), str::to_string)
}

/// The stack pointer of `regs`.
#[cfg(test)]
pub fn sp(regs: &Regs) -> u64 {
    regs.sp()
}

/// One step up the frame-pointer chain: the caller's frame pointer and the return address
/// are stored side by side where the frame pointer points. Ok(None): the chain ends (a null
/// frame pointer).
pub fn frame_pointer_step<F>(regs: &mut Regs, read_stack: &mut F) -> Result<Option<u64>, Error>
where
    F: FnMut(u64) -> Result<u64, ()>,
{
    #[cfg(target_arch = "x86_64")]
    let fp = regs.bp();
    #[cfg(target_arch = "aarch64")]
    let fp = regs.fp();
    if fp == 0 {
        return Ok(None);
    }
    let new_sp = fp.checked_add(16).ok_or(Error::IntegerOverflow)?;
    if new_sp <= regs.sp() {
        return Err(Error::FramepointerUnwindingMovedBackwards);
    }
    let caller_fp = read_stack(fp).map_err(|()| Error::CouldNotReadStack(fp))?;
    let return_address = read_stack(fp + 8).map_err(|()| Error::CouldNotReadStack(fp + 8))?;
    regs.set_sp(new_sp);
    #[cfg(target_arch = "x86_64")]
    {
        regs.set_bp(caller_fp);
        regs.set_ip(return_address);
    }
    #[cfg(target_arch = "aarch64")]
    {
        regs.set_fp(caller_fp);
        regs.set_lr(return_address);
    }
    Ok(Some(return_address))
}

/// If the code at a function's start (`code`, its first bytes) sets up a frame pointer, how
/// many bytes that takes: from there on, the frame pointer holds the function's frame.
pub fn frame_pointer_prologue(code: &[u8]) -> Option<u64> {
    #[cfg(target_arch = "x86_64")]
    {
        // [endbr64] push %rbp; mov %rsp,%rbp
        const ENDBR64: [u8; 4] = [0xf3, 0x0f, 0x1e, 0xfa];
        const PROLOGUE: [u8; 4] = [0x55, 0x48, 0x89, 0xe5];
        let skip = if code.starts_with(&ENDBR64) { 4 } else { 0 };
        code.get(skip..)?
            .starts_with(&PROLOGUE)
            .then_some(skip as u64 + 4)
    }
    #[cfg(target_arch = "aarch64")]
    {
        // Within the first instructions: stp x29, x30, [sp, ...] (pre-index, offset or
        // post-index), then x29 set from sp. Where the pair is stored, x29 points.
        let words: Vec<u32> = code
            .chunks_exact(4)
            .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
            .collect();
        let pair = words
            .iter()
            .position(|&w| matches!(w >> 22, 0x2a2 | 0x2a4 | 0x2a6) && w & 0x7fff == 0x7bfd)?;
        // mov x29, sp (add x29, sp, #0) or add x29, sp, #imm.
        let set = words[pair + 1..]
            .iter()
            .position(|&w| w & 0xff8003ff == 0x910003fd)?;
        Some(((pair + 1 + set + 1) * 4) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn x86_64_frame_pointer_prologues() {
        assert_eq!(
            frame_pointer_prologue(&[0x55, 0x48, 0x89, 0xe5, 0x90]),
            Some(4)
        );
        assert_eq!(
            frame_pointer_prologue(&[0xf3, 0x0f, 0x1e, 0xfa, 0x55, 0x48, 0x89, 0xe5]),
            Some(8)
        );
        // sub $0x18,%rsp: a function without a frame pointer.
        assert_eq!(frame_pointer_prologue(&[0x48, 0x83, 0xec, 0x18]), None);
        assert_eq!(frame_pointer_prologue(&[0x55]), None);
    }

    #[test]
    fn the_frame_pointer_chain_is_followed_upwards_only() {
        // A frame record at 0x1010: caller's fp 0x1040, return address 0x4005.
        let stack: Vec<(u64, u64)> = vec![(0x1010, 0x1040), (0x1018, 0x4005)];
        let mut read = |address: u64| {
            stack
                .iter()
                .find(|&&(a, _)| a == address)
                .map(|&(_, v)| v)
                .ok_or(())
        };
        let user = UserRegs {
            ip: 0x4000,
            sp: 0x1000,
            fp: 0x1010,
            lr: 0,
        };
        let (_, mut regs) = start(&user);
        assert_eq!(frame_pointer_step(&mut regs, &mut read), Ok(Some(0x4005)));
        assert_eq!(sp(&regs), 0x1020);
        // Now fp = 0x1040, unreadable.
        assert_eq!(
            frame_pointer_step(&mut regs, &mut read),
            Err(Error::CouldNotReadStack(0x1040))
        );
        // A frame pointer below the stack pointer would walk backwards.
        let user = UserRegs { fp: 0x800, ..user };
        let (_, mut regs) = start(&user);
        assert_eq!(
            frame_pointer_step(&mut regs, &mut read),
            Err(Error::FramepointerUnwindingMovedBackwards)
        );
    }
}
