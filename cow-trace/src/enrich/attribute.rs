//! Which mapping of a process a fault address falls in, as `perf trace` shows it: `[heap]`,
//! `[stack]`, `[anon]`, or a file and the offset into it (`/usr/lib/.../libc.so.6@0x1a2b0`);
//! and reading `/proc/PID/maps`, for what was mapped before tracing began and for mappings the
//! kernel made without a record.
use std::{fmt, sync::Arc};

use procfs::{
    FromRead, ProcError,
    process::{MMPermissions, MMapPath, MemoryMap, MemoryMaps, Process},
};

use super::history::{FileKey, Hit, MapInfo};

/// Where a fault address lies in its process.
#[derive(Clone, Debug)]
pub enum Attribution {
    Mapped(Hit),
    /// The live process has no mapping there: /proc/PID/maps, read after the fault, agrees
    /// with the kernel's records.
    Unmapped,
    /// No record covers the address and the process cannot be asked any more: a mapping the
    /// kernel made without a record (mremap moves one) in a process that has exited since.
    Unknown,
}

impl Attribution {
    /// `[anon]`, `/usr/lib/.../libc.so.6@0x1a2b0`, `[unmapped]` or `[unknown]`.
    pub fn describe(&self, address: u64) -> String {
        match self {
            Attribution::Mapped(hit) => Mapping::of(hit, address).to_string(),
            Attribution::Unmapped => "[unmapped]".into(),
            Attribution::Unknown => "[unknown]".into(),
        }
    }

    /// As `describe`, without the offset into a file: what a summary groups faults by.
    pub fn label(&self) -> String {
        match self {
            Attribution::Mapped(hit) => hit.info.label.to_string(),
            Attribution::Unmapped | Attribution::Unknown => self.describe(0),
        }
    }
}

/// The mapping an address falls in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    /// `[heap]`, `[stack]`, `[vdso]`, `[anon]`, `[anon:NAME]`, or the mapped file's path.
    pub label: Arc<str>,
    pub backing: Backing,
    /// The range of the piece that held the address, `start..end`.
    pub start: u64,
    pub end: u64,
    /// For a file mapping the address's offset into the file; otherwise into the mapping.
    pub offset: u64,
    pub perms: Perms,
}

impl Mapping {
    pub fn of(hit: &Hit, address: u64) -> Mapping {
        Mapping {
            label: Arc::clone(&hit.info.label),
            backing: hit.info.backing,
            start: hit.start,
            end: hit.end,
            offset: hit.info.offset_of(address),
            perms: hit.info.perms,
        }
    }
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
        Perms::from_flags(
            perms.contains(MMPermissions::READ),
            perms.contains(MMPermissions::WRITE),
            perms.contains(MMPermissions::EXECUTE),
            perms.contains(MMPermissions::SHARED),
        )
    }

    /// From mmap's `prot` and `flags`, as the kernel's records carry them.
    pub fn from_prot(prot: u32, flags: u32) -> Perms {
        let has = |bit: i32| prot & bit as u32 != 0;
        Perms::from_flags(
            has(libc::PROT_READ),
            has(libc::PROT_WRITE),
            has(libc::PROT_EXEC),
            flags & libc::MAP_SHARED as u32 != 0,
        )
    }

    fn from_flags(read: bool, write: bool, exec: bool, shared: bool) -> Perms {
        let flag = |on, letter| if on { letter } else { b'-' };
        Perms([
            flag(read, b'r'),
            flag(write, b'w'),
            flag(exec, b'x'),
            if shared { b's' } else { b'p' },
        ])
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII letters are ever stored.
        std::str::from_utf8(&self.0).unwrap_or("????")
    }

    pub fn executable(&self) -> bool {
        self.0[2] == b'x'
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

impl fmt::Display for Mapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.backing {
            Backing::File => write!(f, "{}@{:#x}", self.label, self.offset),
            Backing::Anonymous | Backing::Special => f.write_str(&self.label),
        }
    }
}

/// What `/proc/PID/maps` shows now, as history entries (None when it cannot be read: the
/// process has exited, or is a zombie). A process whose leader exited while its other threads
/// run on shows its mappings through those threads only.
pub fn read_maps(pid: u32) -> Option<Vec<(u64, u64, MapInfo)>> {
    let Ok(pid_arg) = i32::try_from(pid) else {
        return None;
    };
    let maps = Process::new(pid_arg).and_then(|process| {
        let maps = process.maps()?;
        if !maps.0.is_empty() {
            return Ok(maps);
        }
        let threads = process.tasks()?.flatten();
        Ok(threads
            .filter(|task| task.tid != pid_arg)
            .find_map(|task| {
                MemoryMaps::from_file(format!("/proc/{pid}/task/{}/maps", task.tid))
                    .ok()
                    .filter(|maps| !maps.0.is_empty())
            })
            .unwrap_or(maps))
    });
    match maps {
        // A zombie, or a process between exit_mm() and its end, shows no mappings at all.
        Ok(maps) if maps.0.is_empty() => None,
        Ok(maps) => Some(
            maps.0
                .iter()
                .map(|map| (map.address.0, map.address.1, map_info(map)))
                .collect(),
        ),
        Err(ProcError::NotFound(_)) => None,
        Err(error) => {
            log::debug!("reading /proc/{pid}/maps: {error}");
            None
        }
    }
}

/// One line of `/proc/PID/maps` as a history entry.
pub fn map_info(map: &MemoryMap) -> MapInfo {
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
    let file = (backing == Backing::File && map.inode != 0).then_some(FileKey {
        dev: (map.dev.0 as u32, map.dev.1 as u32),
        ino: map.inode,
    });
    MapInfo {
        start: map.address.0,
        pgoff: map.offset,
        perms: Perms::from_procfs(map.perms),
        backing,
        label,
        file,
    }
}

#[cfg(test)]
mod tests {
    use std::{
        io::Write as _,
        os::fd::AsRawFd,
        process::Command,
        time::{Duration, Instant},
    };

    use super::*;

    /// The system's page size: a file mapping's offset must be a multiple of it.
    fn page() -> usize {
        crate::page::size() as usize
    }

    /// The mapping of `address` in this process, as /proc/self/maps shows it now.
    fn own_mapping(address: u64) -> Mapping {
        let maps = read_maps(std::process::id()).expect("our own maps");
        let (start, end, info) = maps
            .into_iter()
            .find(|(start, end, _)| (*start..*end).contains(&address))
            .unwrap_or_else(|| panic!("{address:#x} is not mapped"));
        let hit = Hit {
            info: Arc::new(info),
            start,
            end,
        };
        Mapping::of(&hit, address)
    }

    #[test]
    fn heap_and_stacks() {
        // SAFETY: sbrk(0) only reports the current break; the harness allocated from the main
        // arena, so [heap] ends there.
        let brk = unsafe { libc::sbrk(0) } as u64;
        let heap = own_mapping(brk - 1);
        assert_eq!(heap.to_string(), "[heap]");
        assert_eq!(heap.perms.as_str(), "rw-p");
        assert_eq!(heap.backing, Backing::Anonymous);
        assert_eq!(heap.offset, brk - 1 - heap.start);
        // SAFETY: getauxval only reads the auxiliary vector; AT_RANDOM lives on the stack.
        let on_stack = unsafe { libc::getauxval(libc::AT_RANDOM) };
        assert_eq!(own_mapping(on_stack).to_string(), "[stack]");
        // A test runs on a thread whose stack is plain anonymous memory.
        let local = 0u64;
        let mapping = own_mapping(&local as *const u64 as u64);
        assert_eq!(mapping.to_string(), "[anon]");
        assert!(mapping.perms.writable() && !mapping.perms.shared());
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
        let mapping = own_mapping(address as u64 + page() as u64 + 0x123);
        // SAFETY: unmaps exactly the mapping above.
        unsafe { libc::munmap(address, 2 * page()) };
        let path = file.path().canonicalize().unwrap();
        assert_eq!(&*mapping.label, path.to_str().unwrap());
        assert_eq!(mapping.backing, Backing::File);
        assert_eq!(mapping.offset, 2 * page() as u64 + 0x123);
        assert_eq!(mapping.perms.as_str(), "r--s");
        assert_eq!(
            mapping.to_string(),
            format!("{}@{:#x}", path.display(), 2 * page() + 0x123)
        );
    }

    #[test]
    fn perms_from_the_kernels_prot_and_flags() {
        let rx = Perms::from_prot(
            (libc::PROT_READ | libc::PROT_EXEC) as u32,
            libc::MAP_PRIVATE as u32,
        );
        assert_eq!(rx.as_str(), "r-xp");
        assert!(rx.executable());
        let rw_shared = Perms::from_prot(
            (libc::PROT_READ | libc::PROT_WRITE) as u32,
            libc::MAP_SHARED as u32,
        );
        assert_eq!(rw_shared.as_str(), "rw-s");
    }

    #[test]
    fn an_exited_or_zombie_process_cannot_be_read() {
        let mut child = Command::new("true").spawn().unwrap();
        let pid = child.id();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|stat| !stat.contains(") Z "))
        {
            assert!(Instant::now() < deadline, "child never became a zombie");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(read_maps(pid).is_none(), "zombie");
        child.wait().unwrap();
        assert!(read_maps(pid).is_none(), "reaped");
        assert!(read_maps(u32::MAX).is_none());
        assert_eq!(Attribution::Unknown.describe(0x1000), "[unknown]");
        assert_eq!(Attribution::Unmapped.label(), "[unmapped]");
    }

    #[test]
    fn special_and_named_pseudo_paths() {
        let mapping = |pathname| {
            let map = MemoryMap {
                address: (0x1000, 0x3000),
                perms: "r-xp".parse().unwrap(),
                offset: 0x5000,
                dev: (0, 0),
                inode: 0,
                pathname,
                extension: Default::default(),
            };
            let hit = Hit {
                info: Arc::new(map_info(&map)),
                start: 0x1000,
                end: 0x3000,
            };
            move |address| Mapping::of(&hit, address)
        };
        let vdso = mapping(MMapPath::Vdso)(0x1010);
        assert_eq!(
            (vdso.to_string(), vdso.backing),
            ("[vdso]".into(), Backing::Special)
        );
        assert_eq!(vdso.perms.as_str(), "r-xp");
        let named = mapping(MMapPath::Other("anon:arena".into()))(0x2000);
        assert_eq!(named.to_string(), "[anon:arena]");
        assert_eq!(named.backing, Backing::Anonymous);
        assert_eq!(named.offset, 0x1000);
        let shm = mapping(MMapPath::Vsys(0x1234))(0x1000);
        assert_eq!(shm.to_string(), "/SYSV00001234@0x5000");
        assert_eq!(
            mapping(MMapPath::TStack(42))(0x1000).to_string(),
            "[stack:42]"
        );
    }
}
