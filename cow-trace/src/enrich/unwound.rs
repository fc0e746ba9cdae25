//! `--stack=dwarf` in the Enricher: a fault's copied stack (it arrives just before the fault's
//! record) is unwound against the process's address space at the fault's time, the files'
//! tables read from the files held open, and the frames symbolized. Equal stacks of a process
//! get one id, so the summary and the flame graph count them as the kernel's stack ids are.
use std::{collections::HashMap, os::unix::fs::FileExt as _, sync::Arc};

use super::{
    Enricher,
    attribute::Attribution,
    history::FileKey,
    symbolize::is_user_ip,
    unwind::{Code, CodeSource, End, Image, StackUnwinder, Walk, elf::ElfUnwind},
};
use crate::{event::Incomplete, stack_record::UserStack};

/// Distinct stacks kept with their frames; past it, new ones share one id that says so.
const MAX_STACKS: usize = 1 << 16;
/// Threads whose copied stack waits for its fault's record; past it they start over (a
/// record of an exited thread's last fault was lost).
const MAX_WAITING: usize = 1 << 16;
/// ELF files whose tables are kept; past it they start over.
const MAX_ELF_FILES: usize = 1024;

/// An interned stack: its frames, symbolized, and how it ended.
struct Unwound {
    frames: Vec<String>,
    incomplete: Option<Incomplete>,
}

/// Unwinding state of the Enricher.
#[derive(Default)]
pub struct DwarfStacks {
    unwinder: StackUnwinder,
    /// Each file's tables (None: not an ELF file we can read).
    elfs: HashMap<FileKey, Option<Arc<ElfUnwind>>>,
    vdso: Option<Option<Arc<ElfUnwind>>>,
    /// Thread -> its copied stack, until the fault's record comes.
    waiting: HashMap<u32, UserStack>,
    /// (pid, walk) -> id; ids index `stacks`.
    ids: HashMap<(u32, Walk), u32>,
    stacks: Vec<Unwound>,
}

impl DwarfStacks {
    /// A stack the kernel copied; its fault's record follows.
    pub fn add(&mut self, stack: UserStack) {
        if self.waiting.len() >= MAX_WAITING && !self.waiting.contains_key(&stack.tid) {
            self.waiting.clear();
        }
        self.waiting.insert(stack.tid, stack);
    }

    /// A process is gone or runs a new program: its modules are stale.
    pub fn forget(&mut self, pid: u32) {
        self.unwinder.forget(pid);
    }
}

impl Enricher {
    /// A stack copied by the kernel, waiting for its fault's record.
    pub fn add_user_stack(&mut self, stack: UserStack) {
        self.dwarf.add(stack);
    }

    /// The id of the unwound stack of thread `tid`'s fault that began at `ts_ns`, unwound as
    /// the process was at `at`, and how it ended if early; None if no stack was copied for it.
    pub fn unwind_fault(
        &mut self,
        pid: u32,
        tid: u32,
        ts_ns: u64,
        at: u64,
    ) -> Option<(u32, Option<Incomplete>)> {
        let stack = self.dwarf.waiting.remove(&tid)?;
        if stack.ts_ns != ts_ns || stack.pid != pid {
            // Not this fault's: its own record was lost.
            return None;
        }
        let mut unwinder = std::mem::take(&mut self.dwarf.unwinder);
        let walk = unwinder.walk(
            pid,
            &stack,
            &mut AtFault {
                enricher: self,
                pid,
                at,
            },
        );
        self.dwarf.unwinder = unwinder;
        Some(self.intern(pid, walk, at))
    }

    /// The frames of unwound stack `id`.
    pub fn unwound_frames(&self, id: u32) -> Vec<String> {
        self.dwarf
            .stacks
            .get(id as usize)
            .map(|stack| stack.frames.iter().cloned().map(super::printable).collect())
            .unwrap_or_default()
    }

    fn intern(&mut self, pid: u32, walk: Walk, at: u64) -> (u32, Option<Incomplete>) {
        let key = (pid, walk);
        if let Some(&id) = self.dwarf.ids.get(&key) {
            return (id, self.dwarf.stacks[id as usize].incomplete);
        }
        let (_, walk) = &key;
        let incomplete = match walk.end {
            End::Complete => None,
            End::Truncated { .. } => Some(Incomplete::Truncated),
            End::NoUnwindInfo { .. } => Some(Incomplete::NoUnwindInfo),
            _ => Some(Incomplete::Stopped),
        };
        if self.dwarf.stacks.len() >= MAX_STACKS {
            return (self.overflow_id(), incomplete);
        }
        let mut frames = Vec::with_capacity(walk.frames.len() + 1);
        for (i, &address) in walk.frames.iter().enumerate() {
            frames.extend(self.frame_names(pid, address, i > 0, at));
        }
        frames.extend(walk.end.marker());
        let id = self.dwarf.stacks.len() as u32;
        self.dwarf.stacks.push(Unwound { frames, incomplete });
        self.dwarf.ids.insert(key, id);
        (id, incomplete)
    }

    /// The id all stacks beyond `MAX_STACKS` share.
    fn overflow_id(&mut self) -> u32 {
        let key = (
            0,
            Walk {
                frames: Vec::new(),
                end: End::TooDeep,
            },
        );
        if let Some(&id) = self.dwarf.ids.get(&key) {
            return id;
        }
        let id = self.dwarf.stacks.len() as u32;
        self.dwarf.stacks.push(Unwound {
            frames: vec![format!(
                "[more than {MAX_STACKS} distinct stacks: not kept]"
            )],
            incomplete: None,
        });
        self.dwarf.ids.insert(key, id);
        id
    }

    /// The names of one frame (inlined functions first). A return address is looked up one
    /// byte back, in the call that made it (the next instruction may be another function's,
    /// or another inlined call's), and shown as the return address.
    fn frame_names(&mut self, pid: u32, address: u64, returns: bool, at: u64) -> Vec<String> {
        let lookup = if returns { address - 1 } else { address };
        match self.symbol_of(pid, lookup, Some(at)) {
            Some((mut symbol, module)) => {
                if returns {
                    symbol.offset += 1;
                }
                symbol.frames(&module)
            }
            None => vec![self.unsymbolized(pid, address, Some(at))],
        }
    }

    /// The tables of file `key` (read once).
    fn elf_of(&mut self, key: FileKey, path: &str) -> Option<Arc<ElfUnwind>> {
        if let Some(known) = self.dwarf.elfs.get(&key) {
            return known.clone();
        }
        if self.dwarf.elfs.len() >= MAX_ELF_FILES {
            self.dwarf.elfs.clear();
        }
        let read = self.files.get(key, path).and_then(|open| {
            ElfUnwind::read(open.file())
                .inspect_err(|error| log::info!("unwind tables of {path}: {error:#}"))
                .ok()
                .map(Arc::new)
        });
        self.dwarf.elfs.insert(key, read.clone());
        read
    }

    /// The vDSO's tables: the same image in every process, read from our own.
    fn vdso_elf(&mut self) -> Option<Arc<ElfUnwind>> {
        self.dwarf.vdso.get_or_insert_with(read_own_vdso).clone()
    }
}

/// The traced process's code as at a fault, for the unwinder.
struct AtFault<'a> {
    enricher: &'a mut Enricher,
    pid: u32,
    at: u64,
}

impl CodeSource for AtFault<'_> {
    fn code_at(&mut self, address: u64) -> Option<Code> {
        if !is_user_ip(address) {
            return None;
        }
        let Attribution::Mapped(hit) = self.enricher.find(self.pid, address, Some(self.at)) else {
            return None;
        };
        if !hit.info.executable() {
            return None;
        }
        let label = hit.info.label.clone();
        let (image, elf) = match (hit.info.file, &*label) {
            (Some(key), path) => (
                Some((
                    Image::File {
                        dev: key.dev,
                        ino: key.ino,
                    },
                    hit.info.offset_of(hit.start),
                )),
                self.enricher.elf_of(key, path),
            ),
            (None, "[vdso]") => (
                Some((Image::Vdso, hit.info.offset_of(hit.start))),
                self.enricher.vdso_elf(),
            ),
            (None, _) => (None, None),
        };
        Some(Code {
            start: hit.start,
            end: hit.end,
            label,
            image,
            elf,
        })
    }

    fn function_start(&mut self, code: &Code, address: u64) -> Option<(u64, [u8; 16])> {
        let (symbol, _) = self.enricher.symbol_of(self.pid, address, Some(self.at))?;
        let (Image::File { dev, ino }, offset) = code.image? else {
            return None;
        };
        let start = (offset + (address - code.start)).checked_sub(symbol.offset)?;
        let mut first = [0u8; 16];
        let file = self.enricher.files.get(FileKey { dev, ino }, &code.label)?;
        file.file().read_exact_at(&mut first, start).ok()?;
        Some((symbol.offset, first))
    }
}

/// The tables of this process's vDSO image.
fn read_own_vdso() -> Option<Arc<ElfUnwind>> {
    // SAFETY: getauxval only reads the auxiliary vector.
    let base = unsafe { libc::getauxval(libc::AT_SYSINFO_EHDR) };
    if base == 0 {
        return None;
    }
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    let end = maps.lines().find_map(|line| {
        let (range, rest) = line.split_once(' ')?;
        let (start, end) = range.split_once('-')?;
        (u64::from_str_radix(start, 16).ok()? == base && rest.ends_with("[vdso]"))
            .then(|| u64::from_str_radix(end, 16).ok())
            .flatten()
    })?;
    // SAFETY: [base, end) is the vDSO, mapped readable for the life of the process.
    let image = unsafe { std::slice::from_raw_parts(base as *const u8, (end - base) as usize) };
    ElfUnwind::parse(image).ok().map(Arc::new)
}
