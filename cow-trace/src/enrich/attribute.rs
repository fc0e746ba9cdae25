//! Which mapping of a process a fault address falls in, as `perf trace` shows it: `[heap]`,
//! `[stack]`, `[anon]`, or a file and the offset into it (`/usr/lib/.../libc.so.6@0x1a2b0`).
//!
//! `/proc/PID/maps` is read once per pid and cached. mmap, munmap and exec change it, so an
//! address that no cached mapping holds triggers one re-read; a miss on a freshly read table is
//! `Unmapped`. A process that has exited can no longer be read: its faults resolve against the
//! table read while it was alive, or to `Gone`.
use std::{collections::HashMap, fmt, sync::Arc};

use procfs::{
    ProcError,
    process::{MMPermissions, MMapPath, MemoryMap, Process},
};

use crate::clock::monotonic_ns;

/// Where a fault address lies in its process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attribution {
    Mapped(Mapping),
    /// No mapping of the (live) process holds the address, even after a re-read.
    Unmapped,
    /// The process's mappings cannot be read any more: it has exited (or is a zombie).
    Gone,
}

/// The mapping an address falls in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    /// `[heap]`, `[stack]`, `[vdso]`, `[anon]`, `[anon:NAME]`, or the mapped file's path.
    pub label: Arc<str>,
    pub backing: Backing,
    /// The mapping's range, `start..end`.
    pub start: u64,
    pub end: u64,
    /// For a file mapping the address's offset into the file; otherwise into the mapping.
    pub offset: u64,
    pub perms: Perms,
}

/// What is behind a mapping's pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backing {
    /// A file (also memfd and SysV shared memory, which have a path).
    File,
    /// No file: heap, stacks, `[anon]`, named anonymous memory.
    Anonymous,
    /// Kernel-provided pages: `[vdso]`, `[vvar]`, `[vsyscall]`, `[uprobes]`...
    Special,
}

/// A mapping's permissions, as `/proc/PID/maps` prints them: `rw-p`, `r-xp`, `rw-s`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Perms([u8; 4]);

impl Perms {
    fn from_procfs(perms: MMPermissions) -> Perms {
        let flag = |bit, letter| if perms.contains(bit) { letter } else { b'-' };
        Perms([
            flag(MMPermissions::READ, b'r'),
            flag(MMPermissions::WRITE, b'w'),
            flag(MMPermissions::EXECUTE, b'x'),
            if perms.contains(MMPermissions::SHARED) {
                b's'
            } else {
                b'p'
            },
        ])
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII letters are ever stored.
        std::str::from_utf8(&self.0).unwrap_or("????")
    }

    #[cfg(test)]
    pub fn writable(&self) -> bool {
        self.0[1] == b'w'
    }

    /// Shared mappings are written in place; private ones copy on write.
    pub fn shared(&self) -> bool {
        self.0[3] == b's'
    }
}

impl fmt::Display for Perms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Mapping {
    /// A private mapping of a file (memfd and tmpfs files too): a first write to one of its
    /// pages copies the file's page into private memory.
    pub fn is_private_file(&self) -> bool {
        self.backing == Backing::File && !self.perms.shared()
    }
}

#[cfg(test)]
impl Mapping {
    pub fn shared(&self) -> bool {
        self.perms.shared()
    }

    pub fn anonymous(&self) -> bool {
        self.backing == Backing::Anonymous
    }
}

impl fmt::Display for Mapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.backing {
            Backing::File => write!(f, "{}@{:#x}", self.label, self.offset),
            Backing::Anonymous | Backing::Special => f.write_str(&self.label),
        }
    }
}

impl fmt::Display for Attribution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Attribution::Mapped(mapping) => mapping.fmt(f),
            Attribution::Unmapped => f.write_str("[unmapped]"),
            Attribution::Gone => f.write_str("[exited]"),
        }
    }
}

/// One line of `/proc/PID/maps`, kept in a form that is cheap to look up and clone from.
#[derive(Clone, Debug)]
struct Region {
    start: u64,
    end: u64,
    /// Offset of `start` into the file.
    file_offset: u64,
    perms: Perms,
    backing: Backing,
    label: Arc<str>,
}

impl Region {
    fn from_procfs(map: &MemoryMap) -> Region {
        let (label, backing): (Arc<str>, Backing) = match &map.pathname {
            MMapPath::Path(path) => (path.to_string_lossy().into(), Backing::File),
            MMapPath::Heap => ("[heap]".into(), Backing::Anonymous),
            MMapPath::Stack => ("[stack]".into(), Backing::Anonymous),
            MMapPath::TStack(tid) => (format!("[stack:{tid}]").into(), Backing::Anonymous),
            MMapPath::Anonymous => ("[anon]".into(), Backing::Anonymous),
            MMapPath::Vdso => ("[vdso]".into(), Backing::Special),
            MMapPath::Vvar => ("[vvar]".into(), Backing::Special),
            MMapPath::Vsyscall => ("[vsyscall]".into(), Backing::Special),
            MMapPath::Vsys(key) => (format!("/SYSV{key:08x}").into(), Backing::File),
            // procfs strips the brackets: "[anon:NAME]" (prctl PR_SET_VMA_ANON_NAME) arrives
            // as "anon:NAME", "[anon_shmem:NAME]" as "anon_shmem:NAME".
            MMapPath::Other(name) => {
                let backing = if name.starts_with("anon") {
                    Backing::Anonymous
                } else {
                    Backing::Special
                };
                (format!("[{name}]").into(), backing)
            }
            MMapPath::Rollup => ("[rollup]".into(), Backing::Special),
        };
        Region {
            start: map.address.0,
            end: map.address.1,
            file_offset: map.offset,
            perms: Perms::from_procfs(map.perms),
            backing,
            label,
        }
    }

    fn mapping(&self, address: u64) -> Mapping {
        let into_mapping = address - self.start;
        Mapping {
            label: Arc::clone(&self.label),
            backing: self.backing,
            start: self.start,
            end: self.end,
            offset: match self.backing {
                Backing::File => self.file_offset + into_mapping,
                Backing::Anonymous | Backing::Special => into_mapping,
            },
            perms: self.perms,
        }
    }
}

/// One process's mappings as last read.
struct Table {
    /// Sorted by start, non-overlapping (the kernel prints them so).
    regions: Vec<Region>,
    /// CLOCK_MONOTONIC ns just before the read: the table shows the process at or after then.
    read_at_ns: u64,
    /// The last read failed because the process has exited: never read again.
    gone: bool,
}

impl Table {
    fn find(&self, address: u64) -> Option<&Region> {
        let after = self.regions.partition_point(|r| r.start <= address);
        let region = self.regions[..after].last()?;
        (address < region.end).then_some(region)
    }
}

/// The mappings of traced processes, cached per pid.
#[derive(Default)]
pub struct Mappings {
    tables: HashMap<u32, Table>,
}

impl Mappings {
    #[cfg(test)]
    pub fn new() -> Mappings {
        Mappings::default()
    }

    /// The mapping that holds `address` in process `pid` now (re-reading its maps on a miss).
    pub fn resolve(&mut self, pid: u32, address: u64) -> Attribution {
        self.lookup(pid, address, None)
    }

    /// As `resolve`, for an address that faulted at `ts_ns` (CLOCK_MONOTONIC, as `Fault::ts_ns`).
    /// A miss on a table read after the fault is `Unmapped` without another read: the mapping
    /// was gone by then (munmap after the fault, or a wild access). This keeps a burst of faults
    /// on a since-unmapped region from re-reading the maps once per fault.
    pub fn resolve_at(&mut self, pid: u32, address: u64, ts_ns: u64) -> Attribution {
        self.lookup(pid, address, Some(ts_ns))
    }

    /// Re-reads `pid`'s mappings now, while it is alive, keeping the regions of the last read
    /// that the new one does not overlap (unmapped since, but faulted on before). For
    /// summaries resolved after the process has exited. False if it could not be read.
    pub fn refresh(&mut self, pid: u32) -> bool {
        let read_at_ns = monotonic_ns();
        let Some(mut regions) = read_regions(pid) else {
            return false;
        };
        if let Some(old) = self.tables.remove(&pid) {
            let overlaps = |old: &Region| {
                let after = regions.partition_point(|r| r.start < old.end);
                regions[..after].last().is_some_and(|r| r.end > old.start)
            };
            let kept: Vec<Region> = old.regions.into_iter().filter(|r| !overlaps(r)).collect();
            regions.extend(kept);
            regions.sort_unstable_by_key(|r| r.start);
        }
        self.tables.insert(
            pid,
            Table {
                regions,
                read_at_ns,
                gone: false,
            },
        );
        true
    }

    /// Drops what is cached for `pid`: call it when the process exits (or execs), so the cache
    /// stays bounded and a reused pid is read afresh.
    pub fn forget(&mut self, pid: u32) {
        self.tables.remove(&pid);
    }

    #[cfg(test)]
    /// How many pids have a cached table.
    pub fn cached_pids(&self) -> usize {
        self.tables.len()
    }

    fn lookup(&mut self, pid: u32, address: u64, fault_ts_ns: Option<u64>) -> Attribution {
        if let Some(table) = self.tables.get(&pid) {
            if let Some(region) = table.find(address) {
                return Attribution::Mapped(region.mapping(address));
            }
            if table.gone {
                return Attribution::Gone;
            }
            if fault_ts_ns.is_some_and(|ts| table.read_at_ns > ts) {
                return Attribution::Unmapped;
            }
        }
        // Taken before reading, so the table is known to show the process at or after it.
        let read_at_ns = monotonic_ns();
        match read_regions(pid) {
            Some(regions) => {
                let table = Table {
                    regions,
                    read_at_ns,
                    gone: false,
                };
                let attribution = match table.find(address) {
                    Some(region) => Attribution::Mapped(region.mapping(address)),
                    None => Attribution::Unmapped,
                };
                self.tables.insert(pid, table);
                attribution
            }
            None => {
                // Keep the last table read while it was alive: its other faults still resolve.
                let table = self.tables.entry(pid).or_insert(Table {
                    regions: Vec::new(),
                    read_at_ns,
                    gone: true,
                });
                table.gone = true;
                Attribution::Gone
            }
        }
    }
}

/// The process's mappings, or None when they cannot be read (it has exited).
fn read_regions(pid: u32) -> Option<Vec<Region>> {
    let Ok(pid_arg) = i32::try_from(pid) else {
        return None;
    };
    match Process::new(pid_arg).and_then(|process| process.maps()) {
        // A zombie, or a process between exit_mm() and its end, shows no mappings at all.
        Ok(maps) if maps.0.is_empty() => None,
        Ok(maps) => {
            let mut regions: Vec<Region> = maps.0.iter().map(Region::from_procfs).collect();
            // The kernel prints them in order; lookups rely on it, so make sure.
            regions.sort_unstable_by_key(|r| r.start);
            Some(regions)
        }
        Err(ProcError::NotFound(_)) => None,
        Err(error) => {
            log::debug!("reading /proc/{pid}/maps: {error}");
            None
        }
    }
}

#[cfg(test)]
mod refresh_tests {
    use super::*;

    #[test]
    fn refresh_keeps_unmapped_regions_and_adds_new_ones() {
        let pid = std::process::id();
        let page = crate::page::size() as usize;
        let mut mappings = Mappings::default();
        // SAFETY: plain anonymous mmap/munmap of our own memory.
        let old = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                page,
                libc::PROT_READ,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        } as u64;
        assert!(mappings.refresh(pid));
        assert!(matches!(mappings.resolve(pid, old), Attribution::Mapped(_)));
        unsafe { libc::munmap(old as *mut libc::c_void, page) };
        let new = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                2 * page,
                libc::PROT_READ,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        } as u64;
        assert!(mappings.refresh(pid));
        // The new mapping is known without another read...
        let table = &mappings.tables[&pid];
        assert!(table.find(new).is_some());
        // ... and the unmapped one still answers for faults taken while it existed, unless
        // the new mapping took its place.
        if !(new..new + 2 * page as u64).contains(&old) {
            assert!(table.find(old).is_some());
        }
        unsafe { libc::munmap(new as *mut libc::c_void, 2 * page) };
        assert!(!mappings.refresh(u32::MAX));
    }
}

#[cfg(test)]
mod tests {
    use std::{
        io::Write as _,
        os::fd::AsRawFd,
        process::{Command, Stdio},
        time::{Duration, Instant},
    };

    use super::*;

    /// The system's page size: a file mapping's offset must be a multiple of it.
    fn page() -> usize {
        crate::page::size() as usize
    }

    fn own_pid() -> u32 {
        std::process::id()
    }

    fn mapped(attribution: Attribution) -> Mapping {
        match attribution {
            Attribution::Mapped(mapping) => mapping,
            other => panic!("expected a mapping, got {other:?}"),
        }
    }

    /// An anonymous private mapping, unmapped on drop.
    struct AnonPages {
        address: *mut libc::c_void,
        len: usize,
    }

    impl AnonPages {
        /// A fresh mapping at an address of its own, far from everything else: tests run in
        /// parallel, and a mapping placed by the kernel could land where another test's
        /// just-unmapped region still stands in a cached table, or merge with a neighbour.
        fn new(pages: usize) -> AnonPages {
            static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let len = pages * page();
            let slot = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let hint = 0x2000_0000_0000u64 + slot * 0x1000_0000;
            // SAFETY: a fresh anonymous mapping where nothing is mapped (NOREPLACE refuses
            // otherwise); no existing memory is touched.
            let address = unsafe {
                libc::mmap(
                    hint as *mut libc::c_void,
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
                    -1,
                    0,
                )
            };
            assert_ne!(address, libc::MAP_FAILED);
            AnonPages { address, len }
        }

        fn at(&self, offset: usize) -> u64 {
            self.address as u64 + offset as u64
        }
    }

    impl Drop for AnonPages {
        fn drop(&mut self) {
            // SAFETY: unmaps exactly what new() mapped.
            unsafe { libc::munmap(self.address, self.len) };
        }
    }

    /// An address on the initial stack: AT_RANDOM's 16 bytes live there.
    fn on_main_stack() -> u64 {
        // SAFETY: getauxval only reads the auxiliary vector.
        unsafe { libc::getauxval(libc::AT_RANDOM) }
    }

    /// The last byte of [heap] (the program break is its end), and what it resolved to; read
    /// again if another thread moved the break meanwhile.
    fn heap_top(mappings: &mut Mappings) -> (u64, Attribution) {
        loop {
            // SAFETY: sbrk(0) only reports the current break.
            let brk = unsafe { libc::sbrk(0) } as u64;
            let attribution = mappings.resolve(own_pid(), brk - 1);
            // SAFETY: as above.
            if unsafe { libc::sbrk(0) } as u64 == brk {
                return (brk - 1, attribution);
            }
        }
    }

    #[test]
    fn heap_address_is_the_heap() {
        // The harness has allocated from the main arena, so [heap] is there.
        let (address, attribution) = heap_top(&mut Mappings::new());
        let mapping = mapped(attribution);
        assert_eq!(&*mapping.label, "[heap]");
        assert_eq!(mapping.to_string(), "[heap]");
        assert_eq!(mapping.perms.as_str(), "rw-p");
        assert!(mapping.anonymous() && !mapping.shared());
        assert_eq!(mapping.offset, address - mapping.start);
    }

    #[test]
    fn initial_stack_and_thread_stacks() {
        let mut mappings = Mappings::new();
        let mapping = mapped(mappings.resolve(own_pid(), on_main_stack()));
        assert_eq!(mapping.to_string(), "[stack]");
        assert!(mapping.anonymous());
        // A test runs on a thread whose stack is plain anonymous memory.
        let local = 0u64;
        let mapping = mapped(mappings.resolve(own_pid(), &local as *const u64 as u64));
        assert_eq!(mapping.to_string(), "[anon]");
        assert_eq!(mapping.perms.as_str(), "rw-p");
    }

    #[test]
    fn mapping_created_after_the_first_read_is_found_by_a_re_read() {
        let mut mappings = Mappings::new();
        mapped(mappings.resolve(own_pid(), on_main_stack()));
        let pages = AnonPages::new(4);
        let mapping = mapped(mappings.resolve(own_pid(), pages.at(2 * page() + 8)));
        assert_eq!(mapping.to_string(), "[anon]");
        assert_eq!(mapping.backing, Backing::Anonymous);
        assert!(!mapping.shared());
        assert!(mapping.perms.writable());
        assert!(mapping.start <= pages.at(0) && pages.at(4 * page()) <= mapping.end);
        assert_eq!(mapping.offset, pages.at(2 * page() + 8) - mapping.start);
    }

    #[test]
    fn a_table_newer_than_the_fault_is_not_re_read() {
        let mut mappings = Mappings::new();
        let before_any_read = monotonic_ns();
        mapped(mappings.resolve(own_pid(), on_main_stack()));
        let pages = AnonPages::new(1);
        // A fault older than the table: its mapping would have been in it.
        assert_eq!(
            mappings.resolve_at(own_pid(), pages.at(0), before_any_read),
            Attribution::Unmapped
        );
        // A fault after the read: the new mapping is looked for, and found.
        let mapping = mapped(mappings.resolve_at(own_pid(), pages.at(0), monotonic_ns()));
        assert_eq!(mapping.to_string(), "[anon]");
    }

    #[test]
    fn file_mapping_reports_path_and_offset_into_the_file() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(&vec![7u8; 3 * page()]).unwrap();
        file.flush().unwrap();
        // SAFETY: maps two pages of a file we own, read-only, from its second page.
        let address = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                2 * page(),
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_file().as_raw_fd(),
                page() as libc::off_t,
            )
        };
        assert_ne!(address, libc::MAP_FAILED);
        let resolved = Mappings::new().resolve(own_pid(), address as u64 + page() as u64 + 0x123);
        // SAFETY: unmaps exactly the mapping above.
        unsafe { libc::munmap(address, 2 * page()) };
        let mapping = mapped(resolved);
        let path = file.path().canonicalize().unwrap();
        assert_eq!(&*mapping.label, path.to_str().unwrap());
        assert_eq!(mapping.backing, Backing::File);
        assert_eq!(mapping.offset, 2 * page() as u64 + 0x123);
        assert_eq!(mapping.perms.as_str(), "r--s");
        assert!(mapping.shared() && !mapping.anonymous());
        assert_eq!(mapping.to_string(), format!("{}@0x2123", path.display()));
    }

    #[test]
    fn address_in_no_mapping_is_unmapped() {
        // Below vm.mmap_min_addr: nothing can be mapped there.
        assert_eq!(
            Mappings::new().resolve(own_pid(), 0x1000),
            Attribution::Unmapped
        );
        assert_eq!(Attribution::Unmapped.to_string(), "[unmapped]");
    }

    #[test]
    fn nonexistent_pid_is_gone() {
        let mut mappings = Mappings::new();
        // Reaped, and pids are not reused at once.
        let mut child = Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert_eq!(mappings.resolve(pid, 0x40_0000), Attribution::Gone);
        assert_eq!(mappings.resolve(pid, 0x40_0000), Attribution::Gone);
        assert_eq!(mappings.resolve(u32::MAX, 0x40_0000), Attribution::Gone);
        assert_eq!(Attribution::Gone.to_string(), "[exited]");
        assert_eq!(mappings.cached_pids(), 2);
        mappings.forget(pid);
        mappings.forget(u32::MAX);
        assert_eq!(mappings.cached_pids(), 0);
    }

    #[test]
    fn zombie_is_gone() {
        let mut child = Command::new("true").spawn().unwrap();
        let pid = child.id();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|stat| !stat.contains(") Z "))
        {
            assert!(Instant::now() < deadline, "child never became a zombie");
            std::thread::sleep(Duration::from_millis(5));
        }
        let attribution = Mappings::new().resolve(pid, 0x40_0000);
        child.wait().unwrap();
        assert_eq!(attribution, Attribution::Gone);
    }

    #[test]
    fn an_exited_process_keeps_the_table_read_while_it_was_alive() {
        let mut child = Command::new("sleep")
            .arg("30")
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id();
        let regions = read_regions(pid).expect("a live child has mappings");
        let first = regions[0].start;
        let mut mappings = Mappings::new();
        let before = mapped(mappings.resolve(pid, first));
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(mapped(mappings.resolve(pid, first)), before);
        // A miss cannot be re-read any more.
        assert_eq!(mappings.resolve(pid, 0x1000), Attribution::Gone);
        // ...and the table is still there for hits.
        assert_eq!(mapped(mappings.resolve(pid, first)), before);
        mappings.forget(pid);
        assert_eq!(mappings.resolve(pid, first), Attribution::Gone);
    }

    #[test]
    fn special_and_named_pseudo_paths() {
        let region = |pathname| {
            Region::from_procfs(&MemoryMap {
                address: (0x1000, 0x3000),
                perms: "r-xp".parse().unwrap(),
                offset: 0x5000,
                dev: (0, 0),
                inode: 0,
                pathname,
                extension: Default::default(),
            })
        };
        let vdso = region(MMapPath::Vdso).mapping(0x1010);
        assert_eq!(
            (vdso.to_string(), vdso.backing),
            ("[vdso]".into(), Backing::Special)
        );
        assert_eq!(vdso.perms.as_str(), "r-xp");
        let named = region(MMapPath::Other("anon:arena".into())).mapping(0x2000);
        assert_eq!(named.to_string(), "[anon:arena]");
        assert!(named.anonymous());
        assert_eq!(named.offset, 0x1000);
        let shm = region(MMapPath::Vsys(0x1234)).mapping(0x1000);
        assert_eq!(shm.to_string(), "/SYSV00001234@0x5000");
        assert_eq!(
            region(MMapPath::TStack(42)).mapping(0x1000).to_string(),
            "[stack:42]"
        );
    }
}
