//! Where a field of a kernel struct lies, from the kernel's own type information
//! (`/sys/kernel/btf/vmlinux`, the BTF format): for the few fields a raw tracepoint program
//! must read from `current` and no tracepoint carries. aya keeps its BTF parser's types to
//! itself, and the BTF crates that expose them are LGPL, which a static binary would carry:
//! reading the one table this needs is a walk over fixed-size records.
use std::path::Path;

/// The kernel's BTF.
pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

const MAGIC: u16 = 0xeb9f;

/// Byte offset of `member` in `struct strukt`, if the kernel's BTF at `path` has that struct
/// with that member (not inside a nested anonymous struct or union).
pub fn member_offset(path: &Path, strukt: &str, member: &str) -> Option<u32> {
    let data = std::fs::read(path).ok()?;
    find_member(&data, strukt, member)
}

fn find_member(data: &[u8], strukt: &str, member: &str) -> Option<u32> {
    let u16_at = |at: usize| Some(u16::from_le_bytes(data.get(at..at + 2)?.try_into().ok()?));
    let u32_at = |at: usize| Some(u32::from_le_bytes(data.get(at..at + 4)?.try_into().ok()?));
    if u16_at(0)? != MAGIC {
        return None;
    }
    let header_len = u32_at(4)? as usize;
    let (type_off, type_len) = (u32_at(8)? as usize, u32_at(12)? as usize);
    let str_off = u32_at(16)? as usize;
    let types = header_len + type_off;
    let strings = header_len + str_off;
    let name = |offset: u32| -> Option<&[u8]> {
        let start = strings + offset as usize;
        let len = data.get(start..)?.iter().position(|&b| b == 0)?;
        Some(&data[start..start + len])
    };
    let mut at = types;
    while at < types + type_len {
        let (name_off, info) = (u32_at(at)?, u32_at(at + 4)?);
        let vlen = (info & 0xffff) as usize;
        let kind = (info >> 24) & 0x1f;
        let kind_flag = info >> 31 != 0;
        at += 12;
        let members = at;
        at += match kind {
            // int, var, decl_tag: one more word.
            1 | 14 | 17 => 4,
            // array: element type, index type, count.
            3 => 12,
            // struct, union, datasec, enum64: vlen records of three words.
            4 | 5 | 15 | 19 => vlen * 12,
            // enum, func_proto: vlen records of two words.
            6 | 13 => vlen * 8,
            // ptr, fwd, typedef, volatile, const, restrict, func, float, type_tag: none.
            2 | 7..=12 | 16 | 18 => 0,
            // A kind newer than this reader: the rest cannot be walked.
            _ => return None,
        };
        if kind != 4 || name(name_off)? != strukt.as_bytes() {
            continue;
        }
        for record in (0..vlen).map(|i| members + i * 12) {
            if name(u32_at(record)?)? == member.as_bytes() {
                let offset = u32_at(record + 8)?;
                // With kind_flag, the top byte is a bitfield's size, the rest its bit offset.
                let bits = if kind_flag {
                    offset & 0x00ff_ffff
                } else {
                    offset
                };
                return (bits % 8 == 0).then_some(bits / 8);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A BTF blob: an int type, then `struct s { int a; int b; }` at bit offsets 0 and 32.
    fn blob() -> Vec<u8> {
        let strings = b"\0int\0s\0a\0b\0";
        let mut types = Vec::new();
        let word = |v: &mut Vec<u8>, w: u32| v.extend_from_slice(&w.to_le_bytes());
        // [1] int: name "int", kind 1, size 4, encoding word.
        word(&mut types, 1);
        word(&mut types, 1 << 24);
        word(&mut types, 4);
        word(&mut types, 32);
        // [2] struct s, two members.
        word(&mut types, 5);
        word(&mut types, 4 << 24 | 2);
        word(&mut types, 8);
        for (name, bits) in [(7, 0), (9, 32)] {
            word(&mut types, name);
            word(&mut types, 1);
            word(&mut types, bits);
        }
        let mut data = Vec::new();
        data.extend_from_slice(&MAGIC.to_le_bytes());
        data.extend_from_slice(&[1, 0]);
        word(&mut data, 24);
        word(&mut data, 0);
        word(&mut data, types.len() as u32);
        word(&mut data, types.len() as u32);
        word(&mut data, strings.len() as u32);
        data.extend_from_slice(&types);
        data.extend_from_slice(strings);
        data
    }

    #[test]
    fn finds_a_member_by_name() {
        let data = blob();
        assert_eq!(find_member(&data, "s", "a"), Some(0));
        assert_eq!(find_member(&data, "s", "b"), Some(4));
        assert_eq!(find_member(&data, "s", "c"), None);
        assert_eq!(find_member(&data, "t", "a"), None);
        assert_eq!(find_member(&data[..20], "s", "a"), None);
        assert_eq!(find_member(b"not btf at all", "s", "a"), None);
    }

    #[test]
    fn finds_the_running_kernels_task_struct() {
        // Where the kernel has BTF (every kernel cow-trace's tests run on), the field the
        // fault-entry program reads exists.
        if !Path::new(VMLINUX).exists() {
            return;
        }
        let offset = member_offset(Path::new(VMLINUX), "task_struct", "pagefault_disabled");
        assert!(offset.is_some_and(|o| o > 0 && o % 4 == 0), "{offset:?}");
    }
}
