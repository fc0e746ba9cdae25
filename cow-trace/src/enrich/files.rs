//! The files behind traced processes' code, held open so they stay readable after the process
//! has exited, or the file was deleted or replaced (a test binary in a temporary directory).
//!
//! A file is opened as soon as a record of an executable mapping of it is read: through
//! `/proc/PID/map_files/START-END` while the process still has the mapping (right for deleted
//! files and across mount namespaces), else by its path. Either way the open file must have the
//! device and inode the kernel recorded, or it is not used. At most `MAX_OPEN_FILES` stay open,
//! the least recently used closed first; a closed one is opened again by its path when needed
//! (which fails, and is reported as unknown, if it was deleted meanwhile).
use std::{
    collections::{HashMap, HashSet},
    fs::File,
    os::{fd::AsRawFd, unix::fs::MetadataExt as _},
    path::PathBuf,
};

use super::history::FileKey;

/// Open files kept at most (each may also hold one descriptor inside the symbolizer).
pub const MAX_OPEN_FILES: usize = 512;
/// Files known to be unreachable, remembered so a stack of them does not retry each frame.
const MAX_UNREACHABLE: usize = 4096;

/// A file held open.
pub struct OpenFile {
    file: File,
    last_used: u64,
}

impl OpenFile {
    /// A path that names this open file for as long as it is held: `/proc/self/fd/N`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.file.as_raw_fd()))
    }

    /// The file itself (for reading it other than by path, as the unwinder does).
    pub fn file(&self) -> &File {
        &self.file
    }
}

#[derive(Default)]
pub struct Files {
    open: HashMap<FileKey, OpenFile>,
    unreachable: HashSet<FileKey>,
    /// Paths (`/proc/self/fd/N`) of files closed since the last `take_closed`: whatever was
    /// cached under them is stale.
    closed: Vec<PathBuf>,
    clock: u64,
}

impl Files {
    /// Opens the file of a mapping `[start, end)` of `pid` now, while it may be reachable.
    pub fn observe(&mut self, pid: u32, start: u64, end: u64, key: FileKey, path: &str) {
        if self.open.contains_key(&key) {
            return;
        }
        let through_process = format!("/proc/{pid}/map_files/{start:x}-{end:x}");
        let file = open_checked(&through_process, key).or_else(|| open_checked(path, key));
        match file {
            Some(file) => self.keep(key, file),
            None => {
                log::info!("{path} ({key:?}) of pid {pid} cannot be opened any more");
                self.remember_unreachable(key);
            }
        }
    }

    /// The open file `key`, opened again by `path` if it was closed (None: unreachable).
    pub fn get(&mut self, key: FileKey, path: &str) -> Option<&OpenFile> {
        if !self.open.contains_key(&key) {
            if self.unreachable.contains(&key) {
                return None;
            }
            match open_checked(path, key) {
                Some(file) => self.keep(key, file),
                None => {
                    self.remember_unreachable(key);
                    return None;
                }
            }
        }
        self.clock += 1;
        let open = self.open.get_mut(&key)?;
        open.last_used = self.clock;
        Some(open)
    }

    /// Paths of files closed since the last call.
    pub fn take_closed(&mut self) -> Vec<PathBuf> {
        std::mem::take(&mut self.closed)
    }

    pub fn open_count(&self) -> usize {
        self.open.len()
    }

    fn keep(&mut self, key: FileKey, file: File) {
        if self.open.len() >= MAX_OPEN_FILES
            && let Some(oldest) = self
                .open
                .iter()
                .min_by_key(|(_, open)| open.last_used)
                .map(|(key, _)| *key)
            && let Some(closed) = self.open.remove(&oldest)
        {
            self.closed.push(closed.path());
        }
        self.clock += 1;
        self.unreachable.remove(&key);
        self.open.insert(
            key,
            OpenFile {
                file,
                last_used: self.clock,
            },
        );
    }

    fn remember_unreachable(&mut self, key: FileKey) {
        if self.unreachable.len() >= MAX_UNREACHABLE {
            self.unreachable.clear();
        }
        self.unreachable.insert(key);
    }
}

/// Opens `path` if it is the file `key` names.
fn open_checked(path: &str, key: FileKey) -> Option<File> {
    let file = File::open(path).ok()?;
    let meta = file.metadata().ok()?;
    let dev = meta.dev();
    let same = (libc::major(dev), libc::minor(dev)) == key.dev && meta.ino() == key.ino;
    same.then_some(file)
}

/// The key of an open file (for tests and seeding).
#[cfg(test)]
pub fn key_of(path: &std::path::Path) -> FileKey {
    let meta = std::fs::metadata(path).unwrap();
    let dev = meta.dev();
    FileKey {
        dev: (libc::major(dev), libc::minor(dev)),
        ino: meta.ino(),
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read as _, Seek as _, Write as _};

    use super::*;

    #[test]
    fn a_deleted_file_stays_readable_and_a_replaced_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("prog");
        std::fs::write(&path, b"first").unwrap();
        let key = key_of(&path);
        let path_text = path.to_str().unwrap();
        let mut files = Files::default();
        files.observe(u32::MAX, 0x1000, 0x2000, key, path_text);
        std::fs::remove_file(&path).unwrap();
        // Same path, new file: not the one the kernel recorded.
        std::fs::write(&path, b"second").unwrap();
        let other = key_of(&path);
        let mut text = String::new();
        let mut held = files.get(key, path_text).expect("held open").file();
        held.rewind().unwrap();
        held.read_to_string(&mut text).unwrap();
        assert_eq!(text, "first");
        let mut fresh = Files::default();
        assert!(fresh.get(key, path_text).is_none(), "deleted, replaced");
        assert!(fresh.get(other, path_text).is_some());
    }

    #[test]
    fn open_files_are_bounded_least_recently_used_first() {
        let dir = tempfile::tempdir().unwrap();
        let mut files = Files::default();
        let mut keys = Vec::new();
        for i in 0..MAX_OPEN_FILES + 3 {
            let path = dir.path().join(format!("f{i}"));
            let mut file = File::create(&path).unwrap();
            file.write_all(b"x").unwrap();
            let key = key_of(&path);
            files.observe(u32::MAX, 0, 1, key, path.to_str().unwrap());
            keys.push((key, path));
            if i == 10 {
                // The first, used again: not the least recent any more.
                let (first, first_path) = &keys[0];
                assert!(files.get(*first, first_path.to_str().unwrap()).is_some());
            }
        }
        assert_eq!(files.open_count(), MAX_OPEN_FILES);
        assert_eq!(files.take_closed().len(), 3);
        assert!(files.open.contains_key(&keys[0].0));
        assert!(!files.open.contains_key(&keys[1].0));
        // A closed one opens again by its path.
        let (key, path) = &keys[1];
        assert!(files.get(*key, path.to_str().unwrap()).is_some());
        assert_eq!(files.open_count(), MAX_OPEN_FILES);
    }
}
