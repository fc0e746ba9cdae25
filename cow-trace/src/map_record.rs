//! A change to a traced process's address space as the kernel recorded it (perf's `MMAP2`,
//! `FORK`, `COMM` with the exec flag and `EXIT` records), decoded: what `kernel::mmap_events`
//! reads and `enrich::history` keeps. Times are CLOCK_MONOTONIC ns, as the faults' are.

/// One record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapRecord {
    pub ts_ns: u64,
    /// The process (thread group) it concerns.
    pub pid: u32,
    pub change: MapChange,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MapChange {
    /// A mapping was made, or changed in place (mprotect, a stack that grew, a brk).
    Map(NewMapping),
    /// The process was forked from `parent`: it starts with the parent's mappings.
    Fork { parent: u32 },
    /// Memory was unmapped (`munmap`): `[start, end)`, whole pages.
    Unmap { start: u64, end: u64 },
    /// A mapping was resized or moved (`mremap`): what held `[from, from + old_len)` now holds
    /// `[to, to + new_len)` (whole pages); with `keep_old` (`MREMAP_DONTUNMAP`) the old range
    /// stays mapped.
    Remap {
        from: u64,
        old_len: u64,
        to: u64,
        new_len: u64,
        keep_old: bool,
    },
    /// The process ran a new program: its old mappings are gone.
    Exec,
    /// The process's last thread exited.
    Exit,
}

/// A mapping as the kernel described it when it was made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewMapping {
    pub start: u64,
    pub len: u64,
    /// For a file, the offset of `start` into it.
    pub pgoff: u64,
    /// PROT_READ / PROT_WRITE / PROT_EXEC bits.
    pub prot: u32,
    /// MAP_SHARED / MAP_PRIVATE and the other mmap flags.
    pub flags: u32,
    /// The file's device (major, minor) and inode; zeros for anonymous memory.
    pub dev: (u32, u32),
    pub ino: u64,
    /// The file's path, or the kernel's name for the memory: `//anon`, `[heap]`, `[stack]`,
    /// `[vdso]`...
    pub path: String,
}

impl NewMapping {
    pub fn end(&self) -> u64 {
        self.start.saturating_add(self.len)
    }

    pub fn executable(&self) -> bool {
        self.prot & libc::PROT_EXEC as u32 != 0
    }

    /// Backed by a file the kernel can name (not anonymous memory or a kernel-provided page).
    pub fn is_file(&self) -> bool {
        self.path.starts_with('/') && !self.path.starts_with("//")
    }
}
