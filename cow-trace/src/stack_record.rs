//! A user stack as the kernel copied it at a fault (`--stack=dwarf`): the registers an
//! unwind starts from and the top of the stack, decoded from a ring-buffer record.
use cow_trace_common::{STACK_REGS, StackHeader, kind};

/// The user registers an unwind starts from. x86-64: ip, sp and the frame pointer (rbp);
/// arm64: pc, sp, the frame pointer (x29) and the link register (x30).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UserRegs {
    pub ip: u64,
    pub sp: u64,
    pub fp: u64,
    pub lr: u64,
}

/// A thread's user registers and the top of its stack at a fault's entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserStack {
    /// The fault's entry time: its record carries the same.
    pub ts_ns: u64,
    pub pid: u32,
    pub tid: u32,
    pub regs: UserRegs,
    /// The stack from `regs.sp` up, as far as it was mapped or `limit` allowed.
    pub bytes: Vec<u8>,
    /// The most the kernel copies (--stack-size): a copy this long may have been cut short.
    pub limit: u32,
}

impl UserStack {
    /// Whether the copy stopped at the size limit rather than at the end of the stack.
    pub fn cut_short(&self) -> bool {
        self.bytes.len() >= self.limit as usize
    }
}

/// Decodes a stack record (`kind::STACK`); None if it is not one, or is malformed.
pub fn decode(bytes: &[u8]) -> Option<UserStack> {
    let header_len = size_of::<StackHeader>();
    if bytes.len() < header_len {
        return None;
    }
    // SAFETY: StackHeader is plain old data and the slice holds one; read_unaligned does not
    // rely on the ring buffer's alignment.
    let header: StackHeader = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    if header.kind != kind::STACK {
        return None;
    }
    let stack = bytes.get(header_len..header_len + header.size as usize)?;
    let [ip, sp, fp, lr] = header.regs;
    const _: () = assert!(STACK_REGS == 4);
    Some(UserStack {
        ts_ns: header.ts_ns,
        pid: header.pid,
        tid: header.tid,
        regs: UserRegs { ip, sp, fp, lr },
        bytes: stack.to_vec(),
        limit: header.limit,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(header: StackHeader, stack: &[u8]) -> Vec<u8> {
        // SAFETY: plain old data.
        let head: [u8; size_of::<StackHeader>()] = unsafe { std::mem::transmute(header) };
        let mut bytes = head.to_vec();
        bytes.extend_from_slice(stack);
        bytes
    }

    #[test]
    fn a_stack_record_decodes_with_its_bytes() {
        let header = StackHeader {
            kind: kind::STACK,
            flags: 0,
            ts_ns: 42,
            pid: 7,
            tid: 8,
            regs: [0x401000, 0x7ffe0000, 0x7ffe0040, 0],
            size: 16,
            limit: 8192,
        };
        let stack: Vec<u8> = (0..16).collect();
        let decoded = decode(&record(header, &stack)).unwrap();
        assert_eq!(decoded.ts_ns, 42);
        assert_eq!((decoded.pid, decoded.tid), (7, 8));
        assert_eq!(decoded.regs.ip, 0x401000);
        assert_eq!(decoded.regs.sp, 0x7ffe0000);
        assert_eq!(decoded.bytes, stack);
        assert!(!decoded.cut_short());
        // A size beyond the record is malformed, not read past its end.
        let lying = StackHeader { size: 17, ..header };
        assert_eq!(decode(&record(lying, &stack)), None);
        let other = StackHeader {
            kind: kind::FAULT,
            ..header
        };
        assert_eq!(decode(&record(other, &stack)), None);
    }
}
