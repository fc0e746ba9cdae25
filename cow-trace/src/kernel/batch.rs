//! Reading and deleting many entries of a BPF hash map in a few system calls
//! (`BPF_MAP_LOOKUP_BATCH`, `BPF_MAP_DELETE_BATCH`, Linux 5.6), which aya does not offer: going
//! through `--summary`'s maps one entry at a time (a system call to find each key, one to read
//! it, one to delete it) took about 8 us per entry.
use std::{
    io,
    mem::size_of,
    os::fd::{AsFd as _, AsRawFd as _},
};

use anyhow::Context as _;
use aya::maps::{Map, MapData};

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;

/// Entries read per system call.
const CHUNK: usize = 8192;

/// `union bpf_attr`'s part for the `BPF_MAP_*_BATCH` commands.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    /// Where to go on from (a hash map's bucket), a pointer; 0: from the start.
    in_batch: u64,
    /// Where the kernel writes where to go on from.
    out_batch: u64,
    keys: u64,
    values: u64,
    /// In: room for so many entries; out: how many were read (or deleted).
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Runs one batch command; the count it reports comes back even when it fails (a lookup that
/// reached the end fails with ENOENT, with its last entries read).
fn batch(command: libc::c_long, attr: &mut BatchAttr) -> (usize, io::Result<()>) {
    // SAFETY: `attr` is a valid bpf_attr prefix for the command, its size passed along; the
    // pointers in it are the caller's, to buffers of `count` entries that outlive the call.
    let result = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            command,
            std::ptr::from_mut(attr),
            size_of::<BatchAttr>(),
        )
    };
    let error = (result < 0).then(io::Error::last_os_error);
    (attr.count as usize, error.map_or(Ok(()), Err))
}

fn hash_map(map: &Map) -> anyhow::Result<&MapData> {
    match map {
        Map::HashMap(data) => Ok(data),
        _ => anyhow::bail!("not a hash map"),
    }
}

/// Every entry of the hash map `map`, of keys `K` and values `V`. Entries the kernel adds or
/// changes meanwhile may or may not be seen, as with reading one entry at a time.
pub fn read_all<K: aya::Pod, V: aya::Pod>(map: &Map) -> anyhow::Result<Vec<(K, V)>> {
    let fd = hash_map(map)?.fd().as_fd().as_raw_fd();
    // SAFETY: plain data (Pod): any bytes, zeroes too, are a valid value.
    let (mut keys, mut values): (Vec<K>, Vec<V>) = unsafe {
        (
            vec![std::mem::zeroed(); CHUNK],
            vec![std::mem::zeroed(); CHUNK],
        )
    };
    let mut entries = Vec::new();
    // A hash map's place is a 32-bit bucket number; u64 leaves room.
    let (mut from, mut next) = (0u64, 0u64);
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first {
                0
            } else {
                std::ptr::from_ref(&from) as u64
            },
            out_batch: std::ptr::from_mut(&mut next) as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: CHUNK as u32,
            map_fd: fd as u32,
            ..BatchAttr::default()
        };
        let (read, result) = batch(BPF_MAP_LOOKUP_BATCH, &mut attr);
        let read = read.min(CHUNK);
        entries.extend(
            keys[..read]
                .iter()
                .copied()
                .zip(values[..read].iter().copied()),
        );
        match result {
            Ok(()) => {}
            Err(error) if error.raw_os_error() == Some(libc::ENOENT) => return Ok(entries),
            Err(error) => return Err(error).context("BPF_MAP_LOOKUP_BATCH"),
        }
        from = next;
        first = false;
    }
}

/// Deletes `keys` from the hash map `map`, in order, and says how many it deleted: all of them,
/// or those before the first the kernel could not delete, with why.
pub fn delete<K: aya::Pod>(map: &Map, keys: &[K]) -> (usize, anyhow::Result<()>) {
    let fd = match hash_map(map) {
        Ok(data) => data.fd().as_fd().as_raw_fd(),
        Err(error) => return (0, Err(error)),
    };
    let mut deleted = 0;
    for chunk in keys.chunks(CHUNK) {
        let mut attr = BatchAttr {
            keys: chunk.as_ptr() as u64,
            count: chunk.len() as u32,
            map_fd: fd as u32,
            ..BatchAttr::default()
        };
        let (done, result) = batch(BPF_MAP_DELETE_BATCH, &mut attr);
        deleted += done.min(chunk.len());
        if let Err(error) = result {
            return (deleted, Err(error).context("BPF_MAP_DELETE_BATCH"));
        }
    }
    (deleted, Ok(()))
}
