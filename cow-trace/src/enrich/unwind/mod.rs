//! Unwinding a user stack the kernel copied (`--stack=dwarf`), as `perf --call-graph dwarf`
//! does: framehop follows the binaries' own call-frame tables (`.eh_frame`, `.debug_frame`)
//! through the copied bytes, from the registers at the fault.
//!
//! Each step is checked, so a stack never ends in a silent cut or a garbage frame:
//! - a frame's code must lie in an executable mapping of the process at the fault's time
//!   (the address-space history says which); a "return address" outside every one ends the
//!   walk, and is not shown;
//! - code no table describes is stepped over by its frame pointer only if its function
//!   begins by setting one up (its symbol says where it begins); otherwise the walk ends
//!   there, "no unwind info";
//! - a read past the copied bytes ends the walk: "truncated" where the copy was cut at
//!   `--stack-size`;
//! - where the tables find a frame by a register other than those copied (ld.so's
//!   lazy-binding trampoline keeps it in rbx), the walk ends there, saying so: framehop would
//!   guess by the frame pointer instead, skipping the caller, or ending the stack as if
//!   complete where the guess read 0.
//!
//! framehop keeps, per process, the modules (code mappings) seen in its stacks and a cache of
//! unwind rules; a module is made once per file and place, and shared by processes that map
//! it alike (a forked child).
mod arch;
pub mod elf;

use std::{
    cell::Cell,
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use framehop::{
    Error, ExplicitModuleSectionInfo, FrameAddress, MayAllocateDuringUnwind, Module, Unwinder as _,
};

use self::elf::{Bytes, ElfUnwind};
use crate::stack_record::UserStack;

/// Frames a walk yields at most (perf's default maximum is 127).
pub const MAX_FRAMES: usize = 128;
/// Processes whose unwinders are kept; past it they start over.
const MAX_PROCESSES: usize = 1024;
/// Modules kept for reuse; past it they start over.
const MAX_MODULES: usize = 8192;

/// A code image: a file (device, inode), or the vDSO (the same in every process).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Image {
    File { dev: (u32, u32), ino: u64 },
    Vdso,
}

/// The executable mapping holding a frame's code, as the unwinder needs to know it.
#[derive(Clone, Debug)]
pub struct Code {
    /// The piece of the mapping that holds the address.
    pub start: u64,
    pub end: u64,
    /// The file's path (or `[vdso]`, `[anon]`): what a stop at this code names.
    pub label: Arc<str>,
    /// The image mapped, and the offset into it of `start`; None for anonymous code (a JIT's).
    pub image: Option<(Image, u64)>,
    /// The image's unwind information; None where it could not be read.
    pub elf: Option<Arc<ElfUnwind>>,
}

impl Code {
    /// The address `address` has in the image's own numbering.
    fn svma(&self, address: u64) -> Option<u64> {
        let (_, offset) = self.image?;
        self.elf
            .as_ref()?
            .svma_of_offset(offset + (address - self.start))
    }
}

/// What the unwinder asks of the traced process, at the fault's time.
pub trait CodeSource {
    /// The executable mapping holding `address`; None where none does.
    fn code_at(&mut self, address: u64) -> Option<Code>;
    /// How far `address` is into its function, and the function's first bytes; None where no
    /// symbol says where the function begins.
    fn function_start(&mut self, code: &Code, address: u64) -> Option<(u64, [u8; 16])>;
}

/// Where and why a walk ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum End {
    /// It reached the outermost frame (the tables say the caller is undefined, or a null
    /// return address).
    Complete,
    /// It needed stack beyond what the kernel copied, which stopped at `--stack-size`.
    Truncated { limit: u32 },
    /// The code at the last frame has no unwind information, and no frame pointer to follow.
    NoUnwindInfo { label: Arc<str> },
    /// The next "return address" is in no executable mapping: not a frame.
    OutsideCode { address: u64 },
    /// It needed stack the kernel could not copy (beyond the end of the stack).
    Unreadable { address: u64 },
    /// More than `MAX_FRAMES` frames.
    TooDeep,
    /// The tables find the frame by a register the kernel does not copy (ld.so's lazy-binding
    /// trampoline keeps it in rbx).
    RegisterNotCopied { register: gimli::Register },
    /// The unwinder refused a step: its tables' rule could not be followed, and the frame
    /// pointer it then tried would not advance or went backwards.
    Failed(Error),
}

impl End {
    /// The line a stack that ended so shows last; None for a complete one.
    pub fn marker(&self) -> Option<String> {
        Some(match self {
            End::Complete => return None,
            End::Truncated { limit } => format!("[truncated at {}]", human_size(*limit)),
            End::NoUnwindInfo { label } => format!("[unwind stopped: no unwind info for {label}]"),
            End::OutsideCode { address } => {
                format!("[unwind stopped: {address:#x} is in no executable mapping]")
            }
            End::Unreadable { address } => {
                format!("[unwind stopped: stack at {address:#x} not copied]")
            }
            End::TooDeep => format!("[unwind stopped: more than {MAX_FRAMES} frames]"),
            End::RegisterNotCopied { register } => format!(
                "[unwind stopped: the tables find this frame by {}, which is not copied]",
                arch::register_name(*register)
            ),
            End::Failed(error) => {
                format!("[unwind stopped: no rule to unwind this frame by ({error})]")
            }
        })
    }
}

/// "8 KiB", "512 B": the copy limit as the user gave it.
fn human_size(bytes: u32) -> String {
    if bytes >= 1024 && bytes.is_multiple_of(1024) {
        format!("{} KiB", bytes / 1024)
    } else {
        format!("{bytes} B")
    }
}

/// An unwound stack: the instruction pointer, then return addresses, outermost last.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Walk {
    pub frames: Vec<u64>,
    pub end: End,
}

/// Hashed without formatting (every fault's walk is hashed to find its stack's id): the
/// variant and its fields, a framehop error by its kind.
impl std::hash::Hash for End {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        std::mem::discriminant(self).hash(state);
        match self {
            End::Complete | End::TooDeep => {}
            End::Truncated { limit } => limit.hash(state),
            End::NoUnwindInfo { label } => label.hash(state),
            End::OutsideCode { address } | End::Unreadable { address } => address.hash(state),
            End::RegisterNotCopied { register } => register.hash(state),
            End::Failed(error) => match error {
                Error::CouldNotReadStack(address) => (0u8, *address).hash(state),
                Error::FramepointerUnwindingMovedBackwards => 1u8.hash(state),
                Error::DidNotAdvance => 2u8.hash(state),
                Error::IntegerOverflow => 3u8.hash(state),
                Error::ReturnAddressIsNull => 4u8.hash(state),
            },
        }
    }
}

type Data = Bytes;
type ModuleUnwinder = arch::Unwinder<Data, MayAllocateDuringUnwind>;

/// A module as framehop knows it: an image mapped at one place, with its load bias.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct ModuleKey {
    image: Image,
    start: u64,
    end: u64,
    base: u64,
}

/// One process's framehop unwinder: the modules its stacks have passed through.
struct ProcessUnwinder {
    unwinder: ModuleUnwinder,
    cache: Box<arch::Cache<MayAllocateDuringUnwind>>,
    /// Start -> (end, module), as added to `unwinder`.
    modules: BTreeMap<u64, (u64, ModuleKey)>,
}

impl ProcessUnwinder {
    fn new() -> ProcessUnwinder {
        ProcessUnwinder {
            unwinder: ModuleUnwinder::new(),
            cache: Box::default(),
            modules: BTreeMap::new(),
        }
    }

    /// Makes `module` the one covering its range, replacing what overlapped it (a mapping
    /// replaced since). The rule cache starts over: its rules may be of the old modules.
    fn ensure(&mut self, key: ModuleKey, make: impl FnOnce() -> Module<Data>) {
        if self.modules.get(&key.start) == Some(&(key.end, key)) {
            return;
        }
        let overlapping: Vec<u64> = self
            .modules
            .range(..key.end)
            .filter(|(_, (end, _))| *end > key.start)
            .map(|(start, _)| *start)
            .collect();
        for start in overlapping {
            self.unwinder.remove_module(start);
            self.modules.remove(&start);
        }
        self.unwinder.add_module(make());
        self.modules.insert(key.start, (key.end, key));
        *self.cache = Default::default();
    }
}

/// Unwinds stacks of every traced process.
#[derive(Default)]
pub struct StackUnwinder {
    processes: HashMap<u32, ProcessUnwinder>,
    modules: HashMap<ModuleKey, Module<Data>>,
}

impl StackUnwinder {
    /// A process exited or ran a new program: its modules are stale.
    pub fn forget(&mut self, pid: u32) {
        self.processes.remove(&pid);
    }

    /// Unwinds `stack` of process `pid`, whose code `source` describes.
    pub fn walk(&mut self, pid: u32, stack: &UserStack, source: &mut impl CodeSource) -> Walk {
        if self.processes.len() >= MAX_PROCESSES && !self.processes.contains_key(&pid) {
            self.processes.clear();
        }
        if self.modules.len() >= MAX_MODULES {
            self.modules.clear();
        }
        let process = self
            .processes
            .entry(pid)
            .or_insert_with(ProcessUnwinder::new);
        let modules = &mut self.modules;
        let copy = Copy::new(stack);
        let mut read_stack = |address| copy.read(address);
        let (ip, mut regs) = arch::start(&stack.regs);
        let mut frames = Vec::new();
        let mut address = FrameAddress::from_instruction_pointer(ip);
        let end = loop {
            if frames.len() >= MAX_FRAMES {
                break End::TooDeep;
            }
            let lookup = address.address_for_lookup();
            copy.start_step();
            let Some(code) = source.code_at(lookup) else {
                break End::OutsideCode {
                    address: address.address(),
                };
            };
            frames.push(address.address());
            let described = code
                .svma(lookup)
                .filter(|&svma| code.elf.as_ref().is_some_and(|elf| elf.covers(svma)));
            let step = match described {
                Some(svma) => {
                    // Rather than framehop's guess by the frame pointer, which skips the
                    // caller, or ends the stack as complete where it reads 0.
                    if let Some(register) = code.elf.as_ref().and_then(|e| e.needs_register(svma)) {
                        break End::RegisterNotCopied { register };
                    }
                    let Some(key) = module_key(&code, lookup, svma) else {
                        break End::NoUnwindInfo { label: code.label };
                    };
                    process.ensure(key, || {
                        modules
                            .entry(key)
                            .or_insert_with(|| make_module(&code, key))
                            .clone()
                    });
                    process.unwinder.unwind_frame(
                        address,
                        &mut regs,
                        &mut *process.cache,
                        &mut read_stack,
                    )
                }
                None => match without_tables(source, &code, address, &mut regs, &copy) {
                    Ok(step) => step,
                    Err(end) => break end,
                },
            };
            match step {
                Ok(Some(return_address)) => match FrameAddress::from_return_address(return_address)
                {
                    Some(next) => address = next,
                    None => break End::Complete,
                },
                Ok(None) => break End::Complete,
                Err(error) => break copy.failed(error),
            }
        };
        Walk { frames, end }
    }
}

/// A step through code no table describes: the program's entry function (ld.so's has no
/// table) is where the stack begins; otherwise the frame pointer, if the function keeps one
/// (its symbol says where it begins, and its first instructions set one up). Err: where the
/// walk ends instead.
fn without_tables(
    source: &mut impl CodeSource,
    code: &Code,
    address: FrameAddress,
    regs: &mut arch::Regs,
    copy: &Copy<'_>,
) -> Result<Result<Option<u64>, Error>, End> {
    let lookup = address.address_for_lookup();
    let no_unwind_info = || End::NoUnwindInfo {
        label: code.label.clone(),
    };
    if let (Some(svma), Some(elf)) = (code.svma(lookup), code.elf.as_ref())
        && elf.in_entry_function(svma)
    {
        return Err(End::Complete);
    }
    let (into, first) = source
        .function_start(code, lookup)
        .ok_or_else(no_unwind_info)?;
    let prologue = arch::frame_pointer_prologue(&first).ok_or_else(no_unwind_info)?;
    // The first frame may be inside the prologue, its frame not set up yet.
    if !address.is_return_address() && into < prologue {
        return Err(no_unwind_info());
    }
    match arch::frame_pointer_step(regs, &mut |at| copy.read(at)) {
        // The chain leads nowhere readable, or backwards: this function kept no frame after
        // all. (Past a copy cut short, the step reports truncation.)
        Err(Error::CouldNotReadStack(at)) if !copy.cut_past(at) => Err(no_unwind_info()),
        Err(Error::FramepointerUnwindingMovedBackwards) => Err(no_unwind_info()),
        step => Ok(step),
    }
}

/// The copied stack, read by the unwinder, remembering whether a step wanted more of it.
struct Copy<'a> {
    stack: &'a UserStack,
    end: u64,
    /// A read past the copy during the current step: a step that then fails (framehop tries
    /// the frame pointer when a table's rule cannot be followed) failed for want of stack.
    wanted_past_end: Cell<bool>,
}

impl<'a> Copy<'a> {
    fn new(stack: &'a UserStack) -> Copy<'a> {
        Copy {
            stack,
            end: stack.regs.sp.saturating_add(stack.bytes.len() as u64),
            wanted_past_end: Cell::new(false),
        }
    }

    fn start_step(&self) {
        self.wanted_past_end.set(false);
    }

    /// The word at `address`, if copied.
    fn read(&self, address: u64) -> Result<u64, ()> {
        let word = address
            .checked_sub(self.stack.regs.sp)
            .and_then(|at| usize::try_from(at).ok())
            .and_then(|at| self.stack.bytes.get(at..at.checked_add(8)?));
        match word {
            Some(word) => Ok(u64::from_le_bytes(word.try_into().map_err(|_| ())?)),
            None => {
                if address >= self.end {
                    self.wanted_past_end.set(true);
                }
                Err(())
            }
        }
    }

    /// Whether `address` is past a copy that --stack-size cut short.
    fn cut_past(&self, address: u64) -> bool {
        address >= self.end && self.stack.cut_short()
    }

    /// Where a walk whose step failed with `error` ends.
    fn failed(&self, error: Error) -> End {
        let truncated = End::Truncated {
            limit: self.stack.limit,
        };
        match error {
            Error::CouldNotReadStack(at) if self.cut_past(at) => truncated,
            Error::CouldNotReadStack(address) => End::Unreadable { address },
            _ if self.wanted_past_end.get() && self.stack.cut_short() => truncated,
            error => End::Failed(error),
        }
    }
}

/// The module key of `code`, whose `address` is `svma` in the image's own numbering: the
/// image, where it is mapped and its load bias. None without an image.
fn module_key(code: &Code, address: u64, svma: u64) -> Option<ModuleKey> {
    let (image, _) = code.image?;
    Some(ModuleKey {
        image,
        start: code.start,
        end: code.end,
        base: address.wrapping_sub(svma),
    })
}

/// A framehop module of `code`'s tables, placed as `key` says. ELF addresses count from 0, so
/// the module's base address is the load bias.
fn make_module(code: &Code, key: ModuleKey) -> Module<Data> {
    let sections = code.elf.as_deref().map(sections).unwrap_or_default();
    Module::new(
        code.label.to_string(),
        key.start..key.end,
        key.base,
        sections,
    )
}

/// What framehop takes of an ELF file: its tables, and the places they refer to.
fn sections(elf: &ElfUnwind) -> ExplicitModuleSectionInfo<Data> {
    let range = |section: &Option<elf::Section>| section.as_ref().map(|s| s.svma.clone());
    let data = |section: &Option<elf::Section>| section.as_ref().and_then(|s| s.data.clone());
    ExplicitModuleSectionInfo {
        base_svma: 0,
        text_svma: range(&elf.text),
        got_svma: range(&elf.got),
        eh_frame_svma: range(&elf.eh_frame),
        eh_frame: data(&elf.eh_frame),
        eh_frame_hdr_svma: range(&elf.eh_frame_hdr),
        eh_frame_hdr: data(&elf.eh_frame_hdr),
        debug_frame: elf.debug_frame.clone(),
        ..ExplicitModuleSectionInfo::default()
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use std::{ffi::c_void, fs::File, hint::black_box};

    use blazesym::{
        Pid,
        symbolize::{
            Input, Symbolized, Symbolizer,
            source::{Process, Source},
        },
    };

    use super::*;
    use crate::stack_record::UserRegs;

    /// This process's code, from /proc/self/maps.
    #[derive(Default)]
    struct OwnCode {
        elfs: HashMap<String, Option<Arc<ElfUnwind>>>,
        /// With no symbols, code without tables is never stepped over.
        functions: HashMap<u64, (u64, [u8; 16])>,
    }

    impl CodeSource for OwnCode {
        fn code_at(&mut self, address: u64) -> Option<Code> {
            let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
            for line in maps.lines() {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let (start, end) = fields[0].split_once('-').unwrap();
                let start = u64::from_str_radix(start, 16).unwrap();
                let end = u64::from_str_radix(end, 16).unwrap();
                if !(start..end).contains(&address) || !fields[1].contains('x') {
                    continue;
                }
                let offset = u64::from_str_radix(fields[2], 16).unwrap();
                let (major, minor) = fields[3].split_once(':').unwrap();
                let dev = (
                    u32::from_str_radix(major, 16).unwrap(),
                    u32::from_str_radix(minor, 16).unwrap(),
                );
                let ino: u64 = fields[4].parse().unwrap();
                let path = fields.get(5).copied().unwrap_or("[anon]");
                let elf = self
                    .elfs
                    .entry(path.to_string())
                    .or_insert_with(|| {
                        let file = File::open(path).ok()?;
                        ElfUnwind::read(&file).ok().map(Arc::new)
                    })
                    .clone();
                return Some(Code {
                    start,
                    end,
                    label: path.into(),
                    image: (ino != 0).then_some((Image::File { dev, ino }, offset)),
                    elf,
                });
            }
            None
        }

        fn function_start(&mut self, _code: &Code, address: u64) -> Option<(u64, [u8; 16])> {
            self.functions.get(&address).copied()
        }
    }

    /// The registers and the stack of the calling thread, here.
    #[inline(never)]
    fn capture_here(limit: u32) -> UserStack {
        let (ip, sp, fp): (u64, u64, u64);
        // SAFETY: reads three registers.
        unsafe {
            std::arch::asm!(
                "lea {ip}, [rip]", "mov {sp}, rsp", "mov {fp}, rbp",
                ip = out(reg) ip, sp = out(reg) sp, fp = out(reg) fp,
            );
        }
        // Up to the end of this thread's stack mapping.
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let stack_end = maps
            .lines()
            .filter_map(|line| {
                let (range, _) = line.split_once(' ')?;
                let (start, end) = range.split_once('-')?;
                Some((
                    u64::from_str_radix(start, 16).ok()?,
                    u64::from_str_radix(end, 16).ok()?,
                ))
            })
            .find(|(start, end)| (*start..*end).contains(&sp))
            .unwrap()
            .1;
        let len = (stack_end - sp).min(u64::from(limit)) as usize;
        // SAFETY: [sp, sp + len) is this thread's mapped stack.
        let bytes = unsafe { std::slice::from_raw_parts(sp as *const u8, len) }.to_vec();
        UserStack {
            ts_ns: 0,
            pid: std::process::id(),
            tid: 0,
            regs: UserRegs { ip, sp, fp, lr: 0 },
            bytes,
            limit,
        }
    }

    #[inline(never)]
    fn middle_frame(limit: u32) -> UserStack {
        black_box(capture_here(black_box(limit)))
    }

    #[inline(never)]
    fn outer_frame(limit: u32) -> UserStack {
        black_box(middle_frame(black_box(limit)))
    }

    fn names(walk: &Walk) -> Vec<String> {
        let symbolizer = Symbolizer::new();
        let source = Source::Process(Process::new(Pid::Slf));
        walk.frames
            .iter()
            .enumerate()
            .map(|(i, &address)| {
                let lookup = if i == 0 { address } else { address - 1 };
                match symbolizer.symbolize_single(&source, Input::AbsAddr(lookup)) {
                    Ok(Symbolized::Sym(sym)) => sym.name.to_string(),
                    _ => format!("{address:#x}"),
                }
            })
            .collect()
    }

    #[test]
    fn unwinds_its_own_stack_through_the_tables() {
        let stack = outer_frame(64 << 10);
        let mut unwinder = StackUnwinder::default();
        let walk = unwinder.walk(stack.pid, &stack, &mut OwnCode::default());
        let names = names(&walk);
        let position = |name: &str| {
            names
                .iter()
                .position(|n| n.ends_with(name))
                .unwrap_or_else(|| panic!("{name} not in {names:#?} ({:?})", walk.end))
        };
        let (capture, middle, outer, test) = (
            position("capture_here"),
            position("middle_frame"),
            position("outer_frame"),
            position("unwinds_its_own_stack_through_the_tables"),
        );
        assert!(
            capture < middle && middle < outer && outer < test,
            "{names:#?}"
        );
        assert_eq!(capture, 0, "{names:#?}");
        // The test thread's stack ends where its start function says the caller is undefined.
        assert_eq!(walk.end, End::Complete, "{names:#?}");
    }

    #[test]
    fn a_short_copy_says_it_was_truncated() {
        let stack = outer_frame(256);
        let walk = StackUnwinder::default().walk(stack.pid, &stack, &mut OwnCode::default());
        assert_eq!(walk.end, End::Truncated { limit: 256 });
        assert_eq!(walk.end.marker().unwrap(), "[truncated at 256 B]");
        assert!(!walk.frames.is_empty());
    }

    /// A frame larger than framehop's cached rules can express (its CFA half a MiB above the
    /// stack pointer, as lzf_compress's hash table makes Redis's) is followed by the tables'
    /// own rule; cut by the copy, it says truncated, not that no rule applied.
    #[inline(never)]
    fn huge_frame(limit: u32) -> UserStack {
        let table = [0u8; 600 << 10];
        black_box(&table);
        black_box(capture_here(black_box(limit)))
    }

    #[test]
    fn a_frame_past_the_copy_is_truncated_even_where_its_rule_is_not_cached() {
        let mut stack = huge_frame(64 << 10);
        // As in code without frame pointers, where the register holds anything: framehop's
        // try of it then fails otherwise.
        stack.regs.fp = 8;
        let walk = StackUnwinder::default().walk(stack.pid, &stack, &mut OwnCode::default());
        assert_eq!(walk.end, End::Truncated { limit: 64 << 10 }, "{walk:x?}");
    }

    // A function whose tables find its frame by rbx, as those of ld.so's lazy-binding
    // trampoline (`_dl_runtime_resolve`) do: it keeps its stack pointer in rbx, realigns the
    // stack and calls `inner(out)`, with rbp cleared as code without frame pointers may leave
    // it (framehop's guess by the frame pointer then ended the stack there, as if complete).
    std::arch::global_asm!(
        ".pushsection .text.cow_trace_rbx_frame,\"ax\",@progbits",
        ".globl cow_trace_rbx_frame",
        ".type cow_trace_rbx_frame,@function",
        "cow_trace_rbx_frame:",
        ".cfi_startproc",
        "push rbp",
        ".cfi_adjust_cfa_offset 8",
        ".cfi_offset rbp, -16",
        "push rbx",
        ".cfi_adjust_cfa_offset 8",
        ".cfi_offset rbx, -24",
        "mov rbx, rsp",
        ".cfi_def_cfa_register rbx",
        "and rsp, -64",
        "xor ebp, ebp",
        "mov rax, rdi",
        "mov rdi, rsi",
        "call rax",
        "mov rsp, rbx",
        ".cfi_def_cfa_register rsp",
        "pop rbx",
        ".cfi_adjust_cfa_offset -8",
        ".cfi_restore rbx",
        "pop rbp",
        ".cfi_adjust_cfa_offset -8",
        ".cfi_restore rbp",
        "ret",
        ".cfi_endproc",
        ".size cow_trace_rbx_frame, .-cow_trace_rbx_frame",
        ".popsection",
    );

    unsafe extern "C" {
        fn cow_trace_rbx_frame(inner: extern "C" fn(*mut c_void), out: *mut c_void);
    }

    /// Called by cow_trace_rbx_frame with a `*mut MaybeUninit<UserStack>`.
    extern "C" fn capture_into(out: *mut c_void) {
        let out = out.cast::<UserStack>();
        // SAFETY: `out` is the caller's uninitialized slot, written once here.
        unsafe { out.write(black_box(capture_here(64 << 10))) };
    }

    #[test]
    fn a_frame_found_by_a_register_not_copied_ends_the_walk_saying_so() {
        let mut slot = std::mem::MaybeUninit::<UserStack>::uninit();
        // SAFETY: cow_trace_rbx_frame calls capture_into with the slot, which fills it.
        let stack = unsafe {
            cow_trace_rbx_frame(capture_into, slot.as_mut_ptr().cast());
            slot.assume_init()
        };
        let walk = StackUnwinder::default().walk(stack.pid, &stack, &mut OwnCode::default());
        let names = names(&walk);
        assert_eq!(
            walk.end,
            End::RegisterNotCopied {
                register: gimli::X86_64::RBX
            },
            "{names:#?}"
        );
        // The walk reached the frame, and stopped there.
        assert!(names[0].ends_with("capture_here"), "{names:#?}");
        assert_eq!(names.last().unwrap(), "cow_trace_rbx_frame", "{names:#?}");
        assert_eq!(
            walk.end.marker().unwrap(),
            "[unwind stopped: the tables find this frame by rbx, which is not copied]"
        );
    }

    #[test]
    fn a_return_address_outside_code_ends_the_walk_unshown() {
        // A stack of garbage: the first step finds no executable mapping.
        let mut stack = outer_frame(4096);
        // What the tables say is the return address of capture_here is overwritten.
        let walk = StackUnwinder::default().walk(stack.pid, &stack, &mut OwnCode::default());
        let sp = stack.regs.sp;
        let mut unwinder = StackUnwinder::default();
        let mut source = OwnCode::default();
        // Find the slot read for the first return address, then spoil it.
        let first_return = walk.frames[1];
        let slot = stack
            .bytes
            .chunks_exact(8)
            .position(|w| u64::from_le_bytes(w.try_into().unwrap()) == first_return)
            .unwrap();
        stack.bytes[slot * 8..slot * 8 + 8].copy_from_slice(&0x10u64.to_le_bytes());
        let spoiled = unwinder.walk(stack.pid, &stack, &mut source);
        assert_eq!(spoiled.frames.len(), 1, "{spoiled:x?} (sp {sp:#x})");
        assert_eq!(spoiled.end, End::OutsideCode { address: 0x10 });
    }
}
