//! Where and why, for the session: each fault's mapping and symbolized ip (--resolve), its user
//! stack (--stack, the flame graph), whether a first write was to a private file mapping (a
//! copy of the file's page), and the mapping of a summary region. All come from each process's
//! address-space history (`history.rs`), the one account of mappings, so they resolve whether or
//! not the process is still alive.
mod attribute;
mod files;
mod history;
mod symbolize;
mod unwind;
mod unwound;

use std::{collections::HashMap, sync::Arc};

use cow_trace_common::MappingKind;

pub use self::history::{HistoryStats, Retention};
use self::{
    attribute::{Attribution, read_maps},
    files::Files,
    history::{FileKey, History, MapInfo},
    symbolize::{Symbol, Symbols, is_user_ip},
};
use crate::{
    clock::monotonic_ns,
    event::Fault,
    map_record::{MapChange, MapRecord},
};

/// The most pieces of mappings the history keeps for one process, live and replaced.
pub const PIECES_PER_PROCESS: usize = history::MAX_LIVE + history::MAX_PAST;

/// At most this many stacks are kept symbolized; then the cache starts over.
const STACK_CACHE_CAP: usize = 1 << 14;

pub struct Enricher {
    history: History,
    files: Files,
    symbols: Symbols,
    stacks: HashMap<(u32, u32), Vec<String>>,
    /// When /proc/PID/maps was last read to fill a gap in a process's history.
    gap_reads: HashMap<u32, u64>,
    /// Stacks the kernel captured but that could not be read back: losses, as the kernel's
    /// own failed captures are.
    unread_stacks: u64,
    /// Whether code files are opened as they are mapped (for symbols).
    hold_code_files: bool,
    /// --stack=dwarf: copied stacks waiting for their faults, unwound stacks.
    dwarf: unwound::DwarfStacks,
}

impl Enricher {
    /// `faults_in_flight`: how many faults the event ring can hold unread (that many mapping
    /// records may have to wait for them).
    pub fn new(retention: Retention, faults_in_flight: usize) -> Enricher {
        Enricher {
            history: History::new(retention, faults_in_flight),
            files: Files::default(),
            symbols: Symbols::new(),
            stacks: HashMap::new(),
            gap_reads: HashMap::new(),
            unread_stacks: 0,
            hold_code_files: true,
            dwarf: unwound::DwarfStacks::default(),
        }
    }

    /// Where nothing is symbolized, the files of code mappings are not held open (they would
    /// keep deleted files and busy mounts for nothing).
    pub fn without_code_files(self) -> Enricher {
        Enricher {
            hold_code_files: false,
            ..self
        }
    }

    /// How many stacks could not be read back from the kernel.
    pub fn unread_stacks(&self) -> u64 {
        self.unread_stacks
    }

    /// What `pid` has mapped now (at attach, for what was mapped before the kernel's records
    /// began). False if it could not be read.
    pub fn seed(&mut self, pid: u32) -> bool {
        let Some(maps) = read_maps(pid) else {
            return false;
        };
        self.open_code_files(pid, &maps);
        self.history.seed(pid, maps);
        true
    }

    /// `pid` ran a new program at `at`, which the kernel's records do not say (its events were
    /// dropped at that exec): its mappings until then end there. Applies the records up to
    /// `at`, so what is seeded next belongs to the new program.
    pub fn exec_unrecorded(&mut self, pid: u32, at: u64) {
        self.history.add([MapRecord {
            ts_ns: at,
            pid,
            change: MapChange::Exec,
        }]);
        self.history.advance_to(at);
    }

    /// Records read from the kernel, in time order. The files of new code mappings are opened
    /// now, while the process may still be there to open them through.
    pub fn add_records(&mut self, records: Vec<MapRecord>) {
        for record in &records {
            if let MapChange::Map(mapping) = &record.change
                && self.hold_code_files
                && mapping.executable()
                && mapping.is_file()
                && mapping.ino != 0
            {
                let key = FileKey {
                    dev: mapping.dev,
                    ino: mapping.ino,
                };
                self.files
                    .observe(record.pid, mapping.start, mapping.end(), key, &mapping.path);
            }
        }
        self.history.add(records);
    }

    /// Applies the records up to `at` (CLOCK_MONOTONIC ns); lookups would, but none may come.
    pub fn settle_until(&mut self, at: u64) {
        self.history.advance_to(at);
    }

    /// A process exited at `at`, after all its faults were handled. Its stacks stay
    /// symbolized: the table at the end shows them.
    pub fn on_exit(&mut self, pid: u32, at: u64) {
        self.history.on_exit(pid, at);
        self.gap_reads.remove(&pid);
        self.dwarf.forget(pid);
    }

    /// A process ran a new program, or a new process took the pid of an old one: the stacks
    /// seen so far for it mean other code now.
    pub fn on_new_program(&mut self, pid: u32) {
        self.stacks.retain(|&(stack_pid, _), _| stack_pid != pid);
        self.dwarf.forget(pid);
    }

    /// Fills in `fault.mapping` and `fault.symbol`, as they were at the fault.
    pub fn resolve(&mut self, fault: &mut Fault) {
        let at = Some(fault_time(fault));
        fault.mapping = Some(printable(
            self.find(fault.pid, fault.address, at)
                .describe(fault.address),
        ));
        fault.symbol = self
            .symbol(fault.pid, fault.ip, at)
            .map(|frames| printable(frames.join(" ")));
    }

    /// The kind of mapping that held `address` in `pid` at `at` (None: the last mapping
    /// there), as `FaultClass::with_mapping` needs it: in a private file mapping a first write
    /// copies the file's page; in a shared one a write-protect fault is no copy-on-write.
    /// `Other` where the mapping is unknown.
    pub fn mapping_kind(&mut self, pid: u32, address: u64, at: Option<u64>) -> MappingKind {
        match self.find(pid, address, at) {
            Attribution::Mapped(hit) if hit.info.is_private_file() => MappingKind::PrivateFile,
            Attribution::Mapped(hit) if hit.info.is_shared() => MappingKind::Shared,
            Attribution::Mapped(_) | Attribution::Unmapped | Attribution::Unknown => {
                MappingKind::Other
            }
        }
    }

    /// The label of the last mapping that held `address` in `pid`, without the offset: the
    /// name a summary groups faults by (the kernel's counts carry no time).
    pub fn mapping_label(&mut self, pid: u32, address: u64) -> String {
        printable(self.find(pid, address, None).label())
    }

    /// The symbolized frames of user stack `stack_id` of `pid`, innermost first, as at `at`
    /// (None: as last mapped); `read_ips` reads its addresses from the kernel's stack map, if
    /// not cached. A stack that cannot be read has no frames and counts in
    /// [`Enricher::unread_stacks`] (the first is warned of).
    pub fn stack(
        &mut self,
        pid: u32,
        stack_id: u32,
        at: Option<u64>,
        read_ips: impl FnOnce(u32) -> anyhow::Result<Vec<u64>>,
    ) -> Vec<String> {
        if let Some(frames) = self.stacks.get(&(pid, stack_id)) {
            return frames.clone();
        }
        let ips = match read_ips(stack_id) {
            Ok(ips) => ips,
            Err(error) => {
                if self.unread_stacks == 0 {
                    log::warn!("a user stack is missing (counted as not taken): {error:#}");
                }
                self.unread_stacks += 1;
                return Vec::new();
            }
        };
        let mut frames = Vec::with_capacity(ips.len());
        for ip in ips {
            match self.symbol(pid, ip, at) {
                Some(symbolized) => frames.extend(symbolized),
                None => frames.push(self.unsymbolized(pid, ip, at)),
            }
        }
        let frames: Vec<String> = frames.into_iter().map(printable).collect();
        if self.stacks.len() >= STACK_CACHE_CAP {
            self.stacks.clear();
        }
        self.stacks.insert((pid, stack_id), frames.clone());
        frames
    }

    pub fn stats(&self) -> (HistoryStats, usize) {
        (self.history.stats(), self.files.open_count())
    }

    /// The frames of `ip` (inlined functions first), or None where no symbol is known.
    fn symbol(&mut self, pid: u32, ip: u64, at: Option<u64>) -> Option<Vec<String>> {
        let (symbol, module) = self.symbol_of(pid, ip, at)?;
        Some(symbol.frames(&module))
    }

    /// The symbol of `ip` and the name of its module.
    fn symbol_of(&mut self, pid: u32, ip: u64, at: Option<u64>) -> Option<(Symbol, Arc<str>)> {
        if !is_user_ip(ip) {
            return None;
        }
        let Attribution::Mapped(hit) = self.find(pid, ip, at) else {
            return None;
        };
        let offset = hit.info.offset_of(ip);
        let symbol = match (hit.info.file, &*hit.info.label) {
            (Some(key), path) => {
                let closed = self.files.take_closed();
                self.symbols.forget_files(closed);
                let file = self.files.get(key, path)?;
                self.symbols.in_file(key, file, offset)
            }
            (None, "[vdso]") => self.symbols.in_vdso(offset),
            (None, _) => None,
        }?;
        Some((symbol, hit.info.label.clone()))
    }

    /// An address with no symbol, and the mapping it is in where known.
    fn unsymbolized(&mut self, pid: u32, ip: u64, at: Option<u64>) -> String {
        if !is_user_ip(ip) {
            return format!("{ip:#x}");
        }
        match self.find(pid, ip, at) {
            found @ Attribution::Mapped(_) => format!("{ip:#x} ({})", found.describe(ip)),
            Attribution::Unmapped | Attribution::Unknown => format!("{ip:#x}"),
        }
    }

    /// The mapping holding `address` in `pid` at `at` (None: the last that held it). Where no
    /// record covers it and the process may still be alive, /proc/PID/maps fills the gap: a
    /// mapping the kernel made without a record (mremap), or a process whose events could not
    /// be opened. It is read at most once per fault time, so a burst of faults on a wild
    /// address does not read it each time.
    fn find(&mut self, pid: u32, address: u64, at: Option<u64>) -> Attribution {
        let lookup = |history: &mut History| match at {
            Some(at) => history.lookup(pid, address, at),
            None => history.lookup_latest(pid, address),
        };
        if let Some(hit) = lookup(&mut self.history) {
            return Attribution::Mapped(hit);
        }
        if !self.history.may_be_alive(pid) {
            return Attribution::Unknown;
        }
        let last_read = self.gap_reads.get(&pid).copied();
        if last_read.is_some_and(|read| at.is_some_and(|at| read > at)) {
            // Read after this fault already: it would show nothing new.
            return Attribution::Unmapped;
        }
        let read_at = monotonic_ns();
        let Some(maps) = read_maps(pid) else {
            return Attribution::Unknown;
        };
        self.open_code_files(pid, &maps);
        self.history.fill(pid, maps);
        self.gap_reads.insert(pid, read_at);
        match lookup(&mut self.history) {
            Some(hit) => Attribution::Mapped(hit),
            None => Attribution::Unmapped,
        }
    }

    fn open_code_files(&mut self, pid: u32, maps: &[(u64, u64, MapInfo)]) {
        if !self.hold_code_files {
            return;
        }
        for (start, end, info) in maps {
            if let (Some(key), true) = (info.file, info.executable()) {
                self.files.observe(pid, *start, *end, key, &info.label);
            }
        }
    }
}

/// When the fault's mapping is looked up: at its completion where timed (the kernel held the
/// mapping then), else at its entry.
pub fn fault_time(fault: &Fault) -> u64 {
    fault.ts_ns.saturating_add(fault.latency_ns.unwrap_or(0))
}

/// `text` with its control characters (a newline, an escape sequence) as `?`, as comms are
/// shown: a file's name may hold any byte but `/` and NUL, and one line per fault, valid XML
/// in the SVGs and a terminal left alone matter more than those bytes.
pub fn printable(text: String) -> String {
    if text.chars().any(char::is_control) {
        text.chars()
            .map(|c| if c.is_control() { '?' } else { c })
            .collect()
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_in_names_are_shown_as_question_marks() {
        assert_eq!(
            printable("/tmp/a\nb\u{1b}[7m/lib.so@0x1000".into()),
            "/tmp/a?b?[7m/lib.so@0x1000"
        );
        assert_eq!(printable("[anon]".into()), "[anon]");
    }

    #[test]
    fn an_unreadable_stack_is_a_counted_loss() {
        let mut enricher = Enricher::new(Retention::UntilExit, 0);
        // No such process: nothing is read from /proc.
        let pid = u32::MAX;
        let frames = enricher.stack(pid, 7, None, |_| Err(anyhow::anyhow!("no such stack")));
        assert!(frames.is_empty());
        assert_eq!(enricher.unread_stacks(), 1);
        // Not remembered as empty: a later read may succeed.
        let frames = enricher.stack(pid, 7, None, |_| Ok(vec![0x1234]));
        assert_eq!(frames, ["0x1234"]);
        assert_eq!(enricher.unread_stacks(), 1);
    }
}
