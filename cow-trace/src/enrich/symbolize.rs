//! Code addresses as functions, with blazesym: an offset into an ELF file held open (the
//! history gives the file and the offset), so a process that has exited, or whose binary was
//! deleted, still symbolizes. Inlined functions are reported where the file's debug
//! information has them. Answers are memoized per (file, offset): a loop that faults page
//! after page repeats the same ip.
use std::{collections::HashMap, fs::File, io::Write as _, os::fd::AsRawFd, path::PathBuf};

use blazesym::symbolize::{
    Input, Sym, Symbolized, Symbolizer,
    evict::{self, Evict},
    source::{Elf, Source},
};
use nix::sys::memfd::{MFdFlags, memfd_create};

use super::{files::OpenFile, history::FileKey};

/// Kernel-space addresses have the top bit set, on x86-64 and on arm64 alike (user space ends
/// far below: 2^47 or 2^56 on x86-64, 2^48 or 2^52 on arm64); only userspace ips are
/// symbolized.
pub const KERNEL_START: u64 = 1 << 63;

/// At most this many memoized answers; then the memo starts over.
const MEMO_CAP: usize = 1 << 16;

/// A function an address is in, with the functions inlined at that address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Symbol {
    pub name: String,
    pub offset: u64,
    /// Inlined calls at the address, outermost first (the innermost holds the address).
    pub inlined: Vec<String>,
}

impl Symbol {
    fn of(sym: &Sym<'_>) -> Symbol {
        Symbol {
            name: sym.name.to_string(),
            offset: sym.offset as u64,
            inlined: sym.inlined.iter().map(|f| f.name.to_string()).collect(),
        }
    }

    /// As perf shows an address: the inlined functions, innermost first, then
    /// `function+0xoff (module)`.
    pub fn frames(&self, module: &str) -> Vec<String> {
        let mut frames: Vec<String> = self
            .inlined
            .iter()
            .rev()
            .map(|name| format!("{name} (inlined)"))
            .collect();
        frames.push(format!("{}+{:#x} ({module})", self.name, self.offset));
        frames
    }
}

/// Where to look an address up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Place {
    File(FileKey),
    /// The vDSO: the same image in every process, so ours is read instead.
    Vdso,
}

/// Symbolizes offsets into the files of traced processes.
pub struct Symbols {
    symbolizer: Symbolizer,
    memo: HashMap<(Place, u64), Option<Symbol>>,
    /// cow-trace's own binary: a held command runs its code between fork and exec. Its
    /// symbol table is enough there; parsing its debug information (a debug build has some
    /// 80 MB) would cost more than the rest of a short run.
    own_binary: Option<FileKey>,
    /// cow-trace's own vDSO, copied into a file at the first need (None inside: it cannot be).
    vdso: Option<Option<File>>,
}

impl Default for Symbols {
    fn default() -> Symbols {
        Symbols::new()
    }
}

impl Symbols {
    pub fn new() -> Symbols {
        Symbols {
            symbolizer: Symbolizer::builder()
                .enable_code_info(true)
                .enable_inlined_fns(true)
                .build(),
            memo: HashMap::new(),
            own_binary: own_binary(),
            vdso: None,
        }
    }

    /// The function at `offset` into the ELF file `key`, open as `file`.
    pub fn in_file(&mut self, key: FileKey, file: &OpenFile, offset: u64) -> Option<Symbol> {
        let path = file.path();
        let own = self.own_binary == Some(key);
        self.memoized(Place::File(key), offset, |symbolizer, debug_syms| {
            let mut elf = Elf::new(&path);
            elf.debug_syms = debug_syms && !own;
            let source = Source::Elf(elf);
            symbolizer.symbolize_single(&source, Input::FileOffset(offset))
        })
    }

    /// The function at `offset` into the vDSO.
    pub fn in_vdso(&mut self, offset: u64) -> Option<Symbol> {
        let image = self.vdso.get_or_insert_with(|| {
            own_vdso()
                .inspect_err(|error| log::debug!("no copy of the vDSO: {error:#}"))
                .ok()
        });
        let path = PathBuf::from(format!("/proc/self/fd/{}", image.as_ref()?.as_raw_fd()));
        self.memoized(Place::Vdso, offset, |symbolizer, debug_syms| {
            let mut elf = Elf::new(&path);
            elf.debug_syms = debug_syms;
            symbolizer.symbolize_single(&Source::Elf(elf), Input::FileOffset(offset))
        })
    }

    /// Files closed (their paths may name other files now): drop what blazesym cached.
    pub fn forget_files(&mut self, paths: Vec<PathBuf>) {
        for path in paths {
            let _ = self.symbolizer.evict(&Evict::Elf(evict::Elf::new(path)));
        }
    }

    /// The answer for `offset` in `place`, asked of blazesym with debug information (`ask`'s
    /// flag) and, where that answer has no start, from the ELF symbol table alone.
    fn memoized(
        &mut self,
        place: Place,
        offset: u64,
        ask: impl Fn(&Symbolizer, bool) -> blazesym::Result<Symbolized<'_>>,
    ) -> Option<Symbol> {
        if let Some(known) = self.memo.get(&(place, offset)) {
            return known.clone();
        }
        let answer = match ask(&self.symbolizer, true) {
            // A function in pieces (a hot part and a `.cold` one: DWARF gives it address
            // ranges, no start) comes back from the debug information at address 0, its offset
            // the whole address: the symbol table has each piece with its start.
            Ok(Symbolized::Sym(sym)) if sym.addr == 0 => ask(&self.symbolizer, false),
            other => other,
        };
        let answer = match answer {
            Ok(Symbolized::Sym(sym)) => Some(Symbol::of(&sym)).filter(|_| sym.addr != 0),
            Ok(Symbolized::Unknown(_)) => None,
            Err(error) => {
                log::debug!("symbolizing {place:?} at {offset:#x}: {error}");
                None
            }
        };
        if self.memo.len() >= MEMO_CAP {
            self.memo.clear();
        }
        self.memo.insert((place, offset), answer.clone());
        answer
    }
}

/// The file of the running cow-trace.
fn own_binary() -> Option<FileKey> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::metadata("/proc/self/exe").ok()?;
    Some(FileKey {
        dev: (libc::major(meta.dev()), libc::minor(meta.dev())),
        ino: meta.ino(),
    })
}

/// cow-trace's own vDSO as a file: the image the kernel maps into every process (the
/// `[vdso]` mapping of any traced process, at the same offsets), read from our memory. Its
/// size is where its ELF section headers end, the last part of the image.
fn own_vdso() -> anyhow::Result<File> {
    use anyhow::{Context as _, bail};
    // SAFETY: getauxval only reads the auxiliary vector.
    let base = unsafe { libc::getauxval(libc::AT_SYSINFO_EHDR) } as usize;
    if base == 0 {
        bail!("no vDSO in the auxiliary vector");
    }
    const HEADER: usize = 64;
    // SAFETY: the kernel maps the vDSO's whole ELF image at `base`, readable, for the life of
    // the process; its 64-bit ELF header comes first.
    let header = unsafe { std::slice::from_raw_parts(base as *const u8, HEADER) };
    if &header[..5] != b"\x7fELF\x02" {
        bail!("the vDSO is no 64-bit ELF image");
    }
    // Our own image: in our byte order.
    let u16_at = |at: usize| usize::from(u16::from_ne_bytes([header[at], header[at + 1]]));
    let mut shoff = [0u8; 8];
    shoff.copy_from_slice(&header[0x28..0x30]);
    // e_shoff + e_shentsize * e_shnum.
    let size = u64::from_ne_bytes(shoff) as usize + u16_at(0x3a) * u16_at(0x3c);
    if !(HEADER..=1 << 20).contains(&size) {
        bail!("a vDSO of {size} bytes");
    }
    // SAFETY: as above; the section headers lie within the mapped image.
    let image = unsafe { std::slice::from_raw_parts(base as *const u8, size) };
    let mut file =
        File::from(memfd_create(c"cow-trace-vdso", MFdFlags::MFD_CLOEXEC).context("memfd_create")?);
    file.write_all(image).context("copying the vDSO")?;
    Ok(file)
}

pub fn is_user_ip(ip: u64) -> bool {
    ip != 0 && ip < KERNEL_START
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enrich::{
        attribute::read_maps,
        files::{Files, key_of},
    };

    #[inline(never)]
    fn cow_trace_known_function(x: u64) -> u64 {
        // Something the optimizer cannot fold away, so the function keeps a body.
        std::hint::black_box(x).wrapping_mul(3)
    }

    fn known_ip() -> u64 {
        cow_trace_known_function as fn(u64) -> u64 as usize as u64
    }

    /// The file offset of `address` in this process, and the file.
    fn file_offset_of(address: u64) -> (FileKey, String, u64) {
        let maps = read_maps(std::process::id()).unwrap();
        let (_, _, info) = maps
            .into_iter()
            .find(|(start, end, _)| (*start..*end).contains(&address))
            .unwrap();
        (
            info.file.unwrap(),
            info.label.to_string(),
            info.offset_of(address),
        )
    }

    #[test]
    fn a_function_of_this_binary_by_file_offset() {
        assert_eq!(cow_trace_known_function(2), 6);
        let (key, path, offset) = file_offset_of(known_ip() + 1);
        let mut files = Files::default();
        let mut symbols = Symbols::new();
        let file = files.get(key, &path).expect("our own binary");
        let symbol = symbols.in_file(key, file, offset).expect("a symbol table");
        assert!(
            symbol.name.contains("cow_trace_known_function"),
            "{symbol:?}"
        );
        assert_eq!(symbol.offset, 1);
        let frames = symbol.frames("/bin/x");
        assert!(
            frames.last().unwrap().ends_with("+0x1 (/bin/x)"),
            "{frames:?}"
        );
        // Memoized: the same answer again.
        let file = files.get(key, &path).unwrap();
        assert_eq!(symbols.in_file(key, file, offset), Some(symbol));
    }

    /// gcc -O2 moves an unlikely branch into a `.cold` piece of its own: DWARF then gives the
    /// function address ranges and no start, which blazesym answers at address 0 (the offset
    /// read as the whole address). Each piece is named with its own start.
    #[test]
    fn a_function_in_hot_and_cold_pieces_has_offsets_from_each_piece() {
        use object::{Object as _, ObjectSection as _, ObjectSymbol as _};
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("cold.c");
        std::fs::write(
            &source,
            "#include <stdio.h>\n\
             __attribute__((cold)) void report(int x) { fprintf(stderr, \"%d\\n\", x); }\n\
             __attribute__((noinline)) int work(int bad) {\n\
               if (bad) { report(bad); return 7; }\n\
               return 1;\n\
             }\n\
             int main(int argc, char **argv) { return work(argc > 5); }\n",
        )
        .unwrap();
        let binary = dir.path().join("cold");
        let status = std::process::Command::new("cc")
            .args(["-O2", "-g", "-o"])
            .arg(&binary)
            .arg(&source)
            .status()
            .expect("running cc");
        assert!(status.success());
        // Each piece's start as a file offset, from the symbol table.
        let data = std::fs::read(&binary).unwrap();
        let elf = object::File::parse(&*data).unwrap();
        let file_offset = |name: &str| {
            let symbol = elf.symbols().find(|s| s.name() == Ok(name)).unwrap();
            let section = elf
                .section_by_index(symbol.section_index().unwrap())
                .unwrap();
            let (section_offset, _) = section.file_range().unwrap();
            symbol.address() - section.address() + section_offset
        };
        let (hot, cold) = (file_offset("work"), file_offset("work.cold"));
        let key = key_of(&binary);
        let mut files = Files::default();
        files.observe(u32::MAX, 0, 1, key, binary.to_str().unwrap());
        let file = files.get(key, binary.to_str().unwrap()).unwrap();
        let mut symbols = Symbols::new();
        let in_hot = symbols.in_file(key, file, hot + 2).unwrap();
        assert_eq!(
            (in_hot.name.as_str(), in_hot.offset),
            ("work", 2),
            "{in_hot:?}"
        );
        let in_cold = symbols.in_file(key, file, cold + 3).unwrap();
        assert_eq!(in_cold.offset, 3, "{in_cold:?}");
        assert!(in_cold.name.starts_with("work"), "{in_cold:?}");
    }

    #[test]
    fn a_file_deleted_after_it_was_opened_still_symbolizes() {
        let dir = tempfile::tempdir().unwrap();
        let copy = dir.path().join("copy");
        std::fs::copy(std::env::current_exe().unwrap(), &copy).unwrap();
        let (_, _, offset) = file_offset_of(known_ip());
        let key = key_of(&copy);
        let mut files = Files::default();
        files.observe(u32::MAX, 0, 1, key, copy.to_str().unwrap());
        std::fs::remove_file(&copy).unwrap();
        let file = files.get(key, copy.to_str().unwrap()).expect("held open");
        let symbol = Symbols::new().in_file(key, file, offset).unwrap();
        assert!(
            symbol.name.contains("cow_trace_known_function"),
            "{symbol:?}"
        );
    }

    #[test]
    fn offsets_outside_code_have_no_symbol() {
        let (key, path, _) = file_offset_of(known_ip());
        let mut files = Files::default();
        let file = files.get(key, &path).unwrap();
        assert_eq!(Symbols::new().in_file(key, file, u64::MAX / 2), None);
        assert!(!is_user_ip(0) && !is_user_ip(0xffff_ffff_8100_0000));
    }

    #[test]
    fn kernel_ips_of_both_architectures_are_not_user_ips() {
        // x86-64's kernel text, arm64's linear map (48-bit), x86-64's 5-level direct map.
        for kernel in [
            0xffff_ffff_8100_0000,
            0xffff_0000_0810_0000,
            0xff11_0000_0000_0000,
        ] {
            assert!(!is_user_ip(kernel), "{kernel:#x}");
        }
        // The top of x86-64's and of arm64's (52-bit) user space.
        for user in [0x7fff_ffff_f000, 0x000f_ffff_ffff_f000] {
            assert!(is_user_ip(user), "{user:#x}");
        }
    }

    #[test]
    fn the_vdso_by_offset() {
        // SAFETY: getauxval only reads the auxiliary vector.
        assert_ne!(unsafe { libc::getauxval(libc::AT_SYSINFO_EHDR) }, 0);
        // Some offset into the vDSO's text symbolizes to its clock_gettime.
        let mut symbols = Symbols::new();
        let found = (0..0x2000u64)
            .step_by(16)
            .filter_map(|offset| symbols.in_vdso(offset))
            .find(|symbol| symbol.name.contains("clock_gettime"));
        assert!(found.is_some(), "no __vdso_clock_gettime in the vDSO");
        // The copy is the image the [vdso] mapping holds, no more.
        let maps = read_maps(std::process::id()).unwrap();
        let (start, end, _) = maps
            .iter()
            .find(|(_, _, info)| &*info.label == "[vdso]")
            .expect("a [vdso] mapping");
        let copied = own_vdso().unwrap().metadata().unwrap().len();
        assert!(
            1024 < copied && copied <= end - start,
            "{copied} bytes of {}",
            end - start
        );
    }
}
