//! The faulting instruction pointer as `function+0xoff (module)`, with blazesym.
//!
//! blazesym reads the process's maps and the ELF (and debug) files behind them; parsed files
//! stay cached in the one `Symbolizer`. The mappings of each pid are cached on first sight, so
//! its ips still symbolize after it exits; an ip outside them re-reads them once. Answers are
//! memoized per (pid, ip): a loop that faults page after page repeats the same ip.
use std::collections::HashMap;

use blazesym::{
    Pid,
    symbolize::{
        Input, Reason, Sym, Symbolized, Symbolizer,
        cache::{self, Cache},
        evict::{self, Evict},
        source::{Process, Source},
    },
};

/// Kernel-space addresses have the top bit set, on x86-64 and on arm64 alike (user space ends
/// far below: 2^47 or 2^56 on x86-64, 2^48 or 2^52 on arm64); only userspace ips are
/// symbolized.
pub const KERNEL_START: u64 = 1 << 63;

/// At most this many memoized answers, across pids; then the memo starts over.
const MEMO_CAP: usize = 1 << 16;

/// blazesym keeps a small entry per (pid, file) it opened, which evicting the process does not
/// drop; after this many forgotten pids the symbolizer is rebuilt so that stays bounded. (Live
/// pids then have their mappings read again when next needed.)
const REBUILD_AFTER_FORGOTTEN: usize = 1024;

/// What is known of a pid's mappings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PidState {
    /// blazesym holds its mappings, read while it was alive. `paths_valid`: it shares our mount
    /// namespace, so the paths in its maps name the same files here.
    Cached { paths_valid: bool },
    /// Its mappings could not be read when first needed: it had exited.
    Gone,
}

/// Symbolizes user-space instruction pointers of traced processes.
pub struct Symbols {
    symbolizer: Symbolizer,
    pids: HashMap<u32, PidState>,
    memo: HashMap<(u32, u64), Option<String>>,
    forgotten: usize,
}

impl Default for Symbols {
    fn default() -> Symbols {
        Symbols::new()
    }
}

impl Symbols {
    pub fn new() -> Symbols {
        Symbols {
            symbolizer: new_symbolizer(),
            pids: HashMap::new(),
            memo: HashMap::new(),
            forgotten: 0,
        }
    }

    /// `function+0xoff (module)` for each ip of process `pid`, in order; None for a kernel ip,
    /// an ip no symbol covers, or a process whose mappings could never be read.
    pub fn symbolize(&mut self, pid: u32, ips: &[u64]) -> Vec<Option<String>> {
        let mut answers: Vec<Option<String>> = vec![None; ips.len()];
        if pid == 0 {
            // blazesym reads pid 0 as "this process".
            return answers;
        }
        // Each distinct user ip not answered before, once.
        let mut todo: Vec<u64> = ips
            .iter()
            .copied()
            .filter(|&ip| is_user_ip(ip) && !self.memo.contains_key(&(pid, ip)))
            .collect();
        todo.sort_unstable();
        todo.dedup();
        if !todo.is_empty() {
            let found = self.lookup(pid, &todo);
            if self.memo.len() + found.len() > MEMO_CAP {
                self.memo.clear();
            }
            for (ip, answer) in todo.into_iter().zip(found) {
                self.memo.insert((pid, ip), answer);
            }
        }
        for (answer, ip) in answers.iter_mut().zip(ips) {
            if is_user_ip(*ip) {
                *answer = self.memo.get(&(pid, *ip)).cloned().flatten();
            }
        }
        answers
    }

    /// One ip; see `symbolize`.
    pub fn symbolize_one(&mut self, pid: u32, ip: u64) -> Option<String> {
        self.symbolize(pid, &[ip]).pop().flatten()
    }

    /// Drops what is cached for `pid`: call it when the process exits (or execs).
    pub fn forget(&mut self, pid: u32) {
        if self.pids.remove(&pid).is_none() {
            return;
        }
        self.memo.retain(|&(memo_pid, _), _| memo_pid != pid);
        let _ = self
            .symbolizer
            .evict(&Evict::Process(evict::Process::new(Pid::from(pid))));
        self.forgotten += 1;
        if self.forgotten >= REBUILD_AFTER_FORGOTTEN {
            self.symbolizer = new_symbolizer();
            self.pids.clear();
            self.forgotten = 0;
        }
    }

    /// Symbolizes sorted, distinct user ips: one answer each.
    fn lookup(&mut self, pid: u32, ips: &[u64]) -> Vec<Option<String>> {
        let state = match self.pids.get(&pid) {
            Some(known) => *known,
            None => {
                let state = if self.remember_mappings(pid) {
                    PidState::Cached {
                        paths_valid: same_mount_namespace(pid),
                    }
                } else {
                    PidState::Gone
                };
                self.pids.insert(pid, state);
                state
            }
        };
        let PidState::Cached { paths_valid } = state else {
            return vec![None; ips.len()];
        };
        let mut results = self.symbolize_in(pid, ips, true);
        // An ip outside the cached mappings: the process mapped something since (dlopen, JIT,
        // exec). Read its mappings again, once, if it is still there.
        let unmapped = indices(&results, |r| matches!(r, Lookup::Unknown(Reason::Unmapped)));
        if !unmapped.is_empty() && self.remember_mappings(pid) {
            self.retry(pid, ips, &unmapped, &mut results, true);
        }
        // The usual error is /proc/PID/map_files having gone with the process (it fails the
        // whole call, or one address as IgnoredError). The cached mappings still name each file
        // by its path, so try those, where the path means the same file here.
        let failed = indices(&results, |r| {
            matches!(r, Lookup::Failed | Lookup::Unknown(Reason::IgnoredError))
        });
        if !failed.is_empty() && paths_valid {
            self.retry(pid, ips, &failed, &mut results, false);
        }
        results
            .into_iter()
            .map(|r| match r {
                Lookup::Found(text) => Some(text),
                Lookup::Unknown(_) | Lookup::Failed => None,
            })
            .collect()
    }

    fn retry(
        &self,
        pid: u32,
        ips: &[u64],
        which: &[usize],
        results: &mut [Lookup],
        map_files: bool,
    ) {
        let again: Vec<u64> = which.iter().map(|&i| ips[i]).collect();
        for (&i, result) in which.iter().zip(self.symbolize_in(pid, &again, map_files)) {
            results[i] = result;
        }
    }

    /// Asks blazesym to cache the process's mappings now; false when they cannot be read.
    fn remember_mappings(&self, pid: u32) -> bool {
        let mut process = cache::Process::new(Pid::from(pid));
        process.cache_perf_map = false;
        match self.symbolizer.cache(&Cache::Process(process)) {
            Ok(()) => true,
            Err(error) => {
                log::debug!("caching the mappings of pid {pid}: {error}");
                false
            }
        }
    }

    /// One blazesym call. `map_files`: open files through /proc/PID/map_files (right across
    /// mount namespaces and for deleted files, but only while the process lives) rather than by
    /// the path in its maps.
    fn symbolize_in(&self, pid: u32, ips: &[u64], map_files: bool) -> Vec<Lookup> {
        let mut process = Process::new(Pid::from(pid));
        process.map_files = map_files;
        match self
            .symbolizer
            .symbolize(&Source::Process(process), Input::AbsAddr(ips))
        {
            Ok(symbolized) => symbolized
                .iter()
                .map(|s| match s {
                    Symbolized::Sym(sym) => Lookup::Found(describe(sym)),
                    Symbolized::Unknown(reason) => Lookup::Unknown(*reason),
                })
                .collect(),
            Err(error) => {
                log::debug!("symbolizing ips of pid {pid}: {error}");
                (0..ips.len()).map(|_| Lookup::Failed).collect()
            }
        }
    }
}

/// The answer for one ip from one blazesym call.
enum Lookup {
    Found(String),
    Unknown(Reason),
    /// The whole call failed.
    Failed,
}

fn indices(results: &[Lookup], wanted: impl Fn(&Lookup) -> bool) -> Vec<usize> {
    (0..results.len())
        .filter(|&i| wanted(&results[i]))
        .collect()
}

fn new_symbolizer() -> Symbolizer {
    // Function names only: line numbers and inlined frames cost DWARF parsing per fault site.
    Symbolizer::builder()
        .enable_code_info(false)
        .enable_inlined_fns(false)
        .build()
}

/// Whether `pid` sees the file system we see (a container's process does not).
fn same_mount_namespace(pid: u32) -> bool {
    let theirs = std::fs::read_link(format!("/proc/{pid}/ns/mnt"));
    let ours = std::fs::read_link("/proc/self/ns/mnt");
    matches!((theirs, ours), (Ok(theirs), Ok(ours)) if theirs == ours)
}

fn is_user_ip(ip: u64) -> bool {
    ip != 0 && ip < KERNEL_START
}

/// `function+0xoff (module)`, as perf prints a symbolized address.
fn describe(sym: &Sym<'_>) -> String {
    match &sym.module {
        Some(module) => format!(
            "{}+{:#x} ({})",
            sym.name,
            sym.offset,
            module.to_string_lossy()
        ),
        None => format!("{}+{:#x}", sym.name, sym.offset),
    }
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    #[inline(never)]
    fn cow_trace_known_function(x: u64) -> u64 {
        // Something the optimizer cannot fold away, so the function keeps a body.
        std::hint::black_box(x).wrapping_mul(3)
    }

    fn known_ip() -> u64 {
        cow_trace_known_function as fn(u64) -> u64 as usize as u64
    }

    fn own_pid() -> u32 {
        std::process::id()
    }

    #[test]
    fn known_function_of_this_process() {
        assert_eq!(cow_trace_known_function(2), 6);
        let mut symbols = Symbols::new();
        let found = symbols
            .symbolize_one(own_pid(), known_ip() + 1)
            .expect("the test binary has a symbol table");
        assert!(found.contains("cow_trace_known_function+0x1"), "{found}");
        let exe = std::env::current_exe().unwrap();
        let exe_name = exe.file_name().unwrap().to_str().unwrap();
        assert!(found.ends_with(&format!("{exe_name})")), "{found}");
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
    fn batches_keep_order_and_skip_kernel_ips() {
        let mut symbols = Symbols::new();
        let ips = [
            known_ip(),
            0xffff_ffff_8100_0000,
            0,
            known_ip() + 2,
            known_ip(),
        ];
        let found = symbols.symbolize(own_pid(), &ips);
        assert_eq!(found.len(), ips.len());
        assert!(
            found[0]
                .as_deref()
                .unwrap()
                .contains("cow_trace_known_function+0x0")
        );
        assert_eq!(found[1], None, "kernel ip");
        assert_eq!(found[2], None, "null ip");
        assert!(
            found[3]
                .as_deref()
                .unwrap()
                .contains("cow_trace_known_function+0x2")
        );
        assert_eq!(found[4], found[0]);
        // Memoized: the same answer again.
        assert_eq!(symbols.symbolize(own_pid(), &ips), found);
    }

    #[test]
    fn bogus_address_has_no_symbol() {
        let mut symbols = Symbols::new();
        // Below vm.mmap_min_addr, so in no mapping.
        assert_eq!(symbols.symbolize_one(own_pid(), 0x1000), None);
        // The failed lookup leaves the pid usable.
        assert!(symbols.symbolize_one(own_pid(), known_ip()).is_some());
    }

    #[test]
    fn dead_pid_has_no_symbols() {
        let mut child = Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        let mut symbols = Symbols::new();
        assert_eq!(
            symbols.symbolize(pid, &[0x40_1000, 0x7f00_0000_1000]),
            [None, None]
        );
        assert_eq!(
            symbols.symbolize_one(0, known_ip()),
            None,
            "pid 0 is not this process"
        );
        symbols.forget(pid);
        assert!(symbols.pids.is_empty() && symbols.memo.is_empty());
    }

    #[test]
    fn exited_process_still_symbolizes_from_cached_mappings() {
        // `sleep` is a C program: its code calls libc, whose entry points are exported.
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        let pid = child.id();
        wait_for_exec(pid, "sleep");
        let libc_ip = libc_function_address_in(pid);
        let mut symbols = Symbols::new();
        let alive = symbols.symbolize_one(pid, libc_ip);
        child.kill().unwrap();
        child.wait().unwrap();
        symbols.memo.clear();
        let after_exit = symbols.symbolize_one(pid, libc_ip);
        assert!(alive.is_some(), "no symbol for {libc_ip:#x} in pid {pid}");
        assert_eq!(after_exit, alive);
    }

    /// Until `pid` runs `comm` with libc mapped (the dynamic loader maps it after exec).
    fn wait_for_exec(pid: u32, comm: &str) {
        let libc_path = mapping_of(std::process::id(), libc_getpid()).2;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let comm_now = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
            let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
            if comm_now.trim_end() == comm && maps.contains(&libc_path) {
                // The loader maps libc before relocating; give it time to finish.
                std::thread::sleep(std::time::Duration::from_millis(50));
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "pid {pid} never ran {comm}"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    fn libc_getpid() -> u64 {
        libc::getpid as unsafe extern "C" fn() -> libc::pid_t as usize as u64
    }

    /// The address of `getpid` in another process: libc is mapped at a different base there,
    /// so take this process's offset of it into libc's text and rebase it.
    fn libc_function_address_in(pid: u32) -> u64 {
        let ours = libc_getpid();
        let (our_start, our_offset, path) = mapping_of(std::process::id(), ours);
        let theirs = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
        for line in theirs.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() == 6
                && fields[5] == path
                && u64::from_str_radix(fields[2], 16).unwrap() == our_offset
            {
                let start = u64::from_str_radix(fields[0].split('-').next().unwrap(), 16).unwrap();
                return start + (ours - our_start);
            }
        }
        panic!("{path} is not mapped in pid {pid}");
    }

    /// (start, file offset, path) of the mapping holding `address`.
    fn mapping_of(pid: u32, address: u64) -> (u64, u64, String) {
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
        for line in maps.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (start, end) = fields[0].split_once('-').unwrap();
            let start = u64::from_str_radix(start, 16).unwrap();
            let end = u64::from_str_radix(end, 16).unwrap();
            if (start..end).contains(&address) {
                let offset = u64::from_str_radix(fields[2], 16).unwrap();
                return (start, offset, fields[5].to_string());
            }
        }
        panic!("{address:#x} is not mapped");
    }
}
