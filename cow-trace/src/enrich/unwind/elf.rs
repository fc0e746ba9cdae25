//! What an unwinder needs of one ELF file: its call-frame tables (`.eh_frame` with its
//! `.eh_frame_hdr` index, `.debug_frame`), where its sections and loadable segments lie,
//! which code addresses the tables cover, and where their rules find a frame by a register
//! the unwinder does not follow. Read once per file, and kept: the data stays usable after
//! the file was closed, deleted or replaced, so an exited process unwinds too.
use std::{fs::File, ops::Range, sync::Arc};

use anyhow::Context as _;
use gimli::{
    BaseAddresses, CfaRule, CieOrFde, EhFrame, EndianSlice, LittleEndian, Operation, Register,
    UnwindContext, UnwindSection,
};
use object::{
    Object as _, ObjectSection as _, ObjectSegment as _, SegmentFlags,
    read::{ReadCache, elf::ElfFile64},
};

use super::arch;

/// Bytes of a section, shared by every module made of the file.
pub type Bytes = Arc<[u8]>;

/// Code ranges (stated addresses), each with the register its rule finds the frame by.
type RegisterRanges = Vec<(Range<u64>, Register)>;

/// A section as the file states it: its address range and, for tables, its bytes.
#[derive(Clone, Debug, Default)]
pub struct Section {
    pub svma: Range<u64>,
    pub data: Option<Bytes>,
}

/// One ELF file's unwind information.
#[derive(Debug, Default)]
pub struct ElfUnwind {
    pub text: Option<Section>,
    pub got: Option<Section>,
    pub eh_frame: Option<Section>,
    pub eh_frame_hdr: Option<Section>,
    pub debug_frame: Option<Bytes>,
    /// The entry point (`e_entry`): where the kernel starts a program, the outermost frame.
    pub entry: u64,
    /// Loadable segments: (file offset range, stated address of its start).
    segments: Vec<(Range<u64>, u64)>,
    /// Code ranges (stated addresses) some table describes, sorted by start.
    covered: Vec<Range<u64>>,
    /// Code ranges (stated addresses) where the table's rule finds the frame by a register the
    /// unwinder does not follow (ld.so's lazy-binding trampoline keeps it in rbx), with the
    /// register; sorted by start.
    by_other_register: RegisterRanges,
}

impl ElfUnwind {
    /// Reads an ELF file's tables and layout (the file is read in the parts needed only).
    pub fn read(file: &File) -> anyhow::Result<ElfUnwind> {
        let cache = ReadCache::new(file);
        let elf = ElfFile64::<object::Endianness, _>::parse(&cache).context("not a 64-bit ELF")?;
        ElfUnwind::from_object(&elf)
    }

    /// The same from an image in memory (the vDSO).
    pub fn parse(bytes: &[u8]) -> anyhow::Result<ElfUnwind> {
        let elf = ElfFile64::<object::Endianness, _>::parse(bytes).context("not a 64-bit ELF")?;
        ElfUnwind::from_object(&elf)
    }

    fn from_object<'data, R: object::ReadRef<'data>>(
        elf: &ElfFile64<'data, object::Endianness, R>,
    ) -> anyhow::Result<ElfUnwind> {
        let mut unwind = ElfUnwind {
            entry: elf.entry(),
            ..ElfUnwind::default()
        };
        for section in elf.sections() {
            let Ok(name) = section.name() else { continue };
            let svma = section.address()..section.address() + section.size();
            let compressed = section
                .compressed_file_range()
                .is_ok_and(|range| range.format != object::CompressionFormat::None);
            // Tables compressed in the file (debug sections may be) are left out.
            let data = || -> Option<Bytes> {
                (!compressed)
                    .then(|| section.data().ok().map(Arc::from))
                    .flatten()
            };
            match name {
                ".text" => unwind.text = Some(Section { svma, data: None }),
                ".got" => unwind.got = Some(Section { svma, data: None }),
                ".eh_frame" => unwind.eh_frame = Some(Section { svma, data: data() }),
                ".eh_frame_hdr" => unwind.eh_frame_hdr = Some(Section { svma, data: data() }),
                ".debug_frame" => unwind.debug_frame = data(),
                _ => {}
            }
        }
        for segment in elf.segments() {
            let executable = matches!(segment.flags(), SegmentFlags::Elf { p_flags } if p_flags & object::elf::PF_X != 0);
            let (offset, size) = segment.file_range();
            if executable && size > 0 {
                unwind
                    .segments
                    .push((offset..offset + size, segment.address()));
            }
        }
        (unwind.covered, unwind.by_other_register) = unwind.table_ranges();
        Ok(unwind)
    }

    /// Whether a table describes the code at stated address `svma`.
    pub fn covers(&self, svma: u64) -> bool {
        let after = self.covered.partition_point(|range| range.start <= svma);
        after > 0 && self.covered[after - 1].contains(&svma)
    }

    /// The register the table's rule at `svma` finds the frame by, where the unwinder does
    /// not follow it (it is not copied with the stack); None where it does, or no table says.
    pub fn needs_register(&self, svma: u64) -> Option<Register> {
        let after = self
            .by_other_register
            .partition_point(|(range, _)| range.start <= svma);
        let (range, register) = self.by_other_register.get(after.checked_sub(1)?)?;
        range.contains(&svma).then_some(*register)
    }

    /// Whether `svma` is in the program's entry function where no table describes it (ld.so's
    /// `_start`): between the entry point and the next code a table describes. There the stack
    /// begins; no symbol is needed to tell (a distribution's ld.so names no `_start`).
    pub fn in_entry_function(&self, svma: u64) -> bool {
        if svma < self.entry || self.covers(self.entry) {
            return false;
        }
        let next_described = self
            .covered
            .partition_point(|range| range.start <= self.entry);
        self.covered
            .get(next_described)
            .is_none_or(|range| svma < range.start)
    }

    /// The stated address of file offset `offset`, in an executable segment.
    pub fn svma_of_offset(&self, offset: u64) -> Option<u64> {
        self.segments
            .iter()
            .find(|(range, _)| range.contains(&offset))
            .map(|(range, vaddr)| vaddr + (offset - range.start))
    }

    /// Every FDE's code range in `.eh_frame` and `.debug_frame`, sorted and merged; and the
    /// ranges whose rule finds the frame by a register the unwinder does not follow, sorted.
    fn table_ranges(&self) -> (Vec<Range<u64>>, RegisterRanges) {
        let mut ranges = Vec::new();
        let mut by_other_register = Vec::new();
        if let Some(Section {
            svma,
            data: Some(data),
        }) = &self.eh_frame
        {
            let mut bases = BaseAddresses::default().set_eh_frame(svma.start);
            if let Some(text) = &self.text {
                bases = bases.set_text(text.svma.start);
            }
            if let Some(got) = &self.got {
                bases = bases.set_got(got.svma.start);
            }
            let mut section = EhFrame::new(data, LittleEndian);
            section.set_address_size(8);
            collect_fdes(&section, &bases, &mut ranges, &mut by_other_register);
        }
        if let Some(data) = &self.debug_frame {
            let mut section = gimli::DebugFrame::new(data, LittleEndian);
            section.set_address_size(8);
            let bases = BaseAddresses::default();
            collect_fdes(&section, &bases, &mut ranges, &mut by_other_register);
        }
        by_other_register.sort_by_key(|(range, _)| range.start);
        ranges.sort_by_key(|range| range.start);
        let mut merged: Vec<Range<u64>> = Vec::with_capacity(ranges.len());
        for range in ranges {
            match merged.last_mut() {
                Some(last) if range.start <= last.end => last.end = last.end.max(range.end),
                _ => merged.push(range),
            }
        }
        (merged, by_other_register)
    }
}

/// A table's bytes, as gimli reads them.
type Slice<'a> = EndianSlice<'a, LittleEndian>;

/// Adds the code range of each FDE of `section`, and those of its rows whose rule finds the
/// frame by a register the unwinder does not follow; an entry that does not parse ends the
/// walk (what follows cannot be located).
fn collect_fdes<'a, S: UnwindSection<Slice<'a>>>(
    section: &S,
    bases: &BaseAddresses,
    ranges: &mut Vec<Range<u64>>,
    by_other_register: &mut RegisterRanges,
) where
    S::Offset: gimli::UnwindOffset<usize>,
{
    let mut context = UnwindContext::new();
    let mut entries = section.entries(bases);
    while let Ok(Some(entry)) = entries.next() {
        if let CieOrFde::Fde(partial) = entry
            && let Ok(fde) = partial.parse(S::cie_from_offset)
            && fde.len() > 0
        {
            ranges.push(fde.initial_address()..fde.end_address());
            let encoding = fde.cie().encoding();
            // A table whose rows do not evaluate is left to the unwinder, which then fails.
            let Ok(mut rows) = fde.rows(section, bases, &mut context) else {
                continue;
            };
            while let Ok(Some(row)) = rows.next_row() {
                if let Some(register) = other_register(section, row.cfa(), encoding) {
                    by_other_register.push((row.start_address()..row.end_address(), register));
                }
            }
        }
    }
}

/// The first register a frame's rule (`cfa`) reads that the unwinder does not follow, if any.
fn other_register<'a, S: UnwindSection<Slice<'a>>>(
    section: &S,
    cfa: &CfaRule<usize>,
    encoding: gimli::Encoding,
) -> Option<Register> {
    match cfa {
        CfaRule::RegisterAndOffset { register, .. } => {
            (!arch::follows(*register)).then_some(*register)
        }
        CfaRule::Expression(expression) => {
            let mut operations = expression.get(section).ok()?.operations(encoding);
            while let Ok(Some(operation)) = operations.next() {
                if let Operation::Register { register } | Operation::RegisterOffset { register, .. } =
                    operation
                    && !arch::follows(register)
                {
                    return Some(register);
                }
            }
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ld.so's entry function (`_start`, a few instructions calling `_dl_start`) is no table's:
    /// the code from the entry point to the next described function is the entry function.
    #[test]
    fn the_entry_function_is_where_no_table_describes_the_entry_point() {
        let unwind = ElfUnwind {
            entry: 0x1000,
            covered: vec![0x800..0x900, 0x1040..0x1100],
            ..ElfUnwind::default()
        };
        assert!(unwind.in_entry_function(0x1000));
        assert!(unwind.in_entry_function(0x1008));
        assert!(!unwind.in_entry_function(0x1040), "the next function");
        assert!(!unwind.in_entry_function(0xfff), "before the entry point");
        let described = ElfUnwind {
            entry: 0x1040,
            ..unwind
        };
        assert!(!described.in_entry_function(0x1048));
    }

    #[test]
    fn a_rule_on_a_register_not_followed_is_found_by_its_rows_range() {
        let rbx = gimli::X86_64::RBX;
        let unwind = ElfUnwind {
            by_other_register: vec![(0x1010..0x1020, rbx), (0x1040..0x1041, rbx)],
            ..ElfUnwind::default()
        };
        assert_eq!(unwind.needs_register(0x1010), Some(rbx));
        assert_eq!(unwind.needs_register(0x101f), Some(rbx));
        assert_eq!(unwind.needs_register(0x1040), Some(rbx));
        for followed in [0x0, 0x1000, 0x100f, 0x1020, 0x1041, 0x2000] {
            assert_eq!(unwind.needs_register(followed), None, "{followed:#x}");
        }
    }

    /// The test binary itself has .eh_frame covering its own code.
    #[test]
    fn the_running_binary_has_tables_covering_its_code() {
        let exe = File::open("/proc/self/exe").unwrap();
        let unwind = ElfUnwind::read(&exe).unwrap();
        assert!(unwind.eh_frame.as_ref().is_some_and(|s| s.data.is_some()));
        assert!(unwind.covers(unwind.entry), "_start is described");
        assert!(
            !unwind.in_entry_function(unwind.entry),
            "described: the tables say"
        );
        assert!(
            unwind
                .eh_frame_hdr
                .as_ref()
                .is_some_and(|s| s.data.is_some())
        );
        let text = unwind.text.clone().expect(".text");
        // Somewhere in .text, a function is described.
        let covered = (text.svma.start..text.svma.end)
            .step_by(4096)
            .filter(|&a| unwind.covers(a))
            .count();
        assert!(covered > 0);
        assert!(!unwind.covers(0), "address 0 is no code");
        // The first executable segment maps file offsets to addresses.
        let (range, vaddr) = unwind.segments[0].clone();
        assert_eq!(unwind.svma_of_offset(range.start), Some(vaddr));
    }
}
