//! Reading a whole BPF array at once, through a read-only mapping of the map (created with
//! `BPF_F_MMAPABLE`): one lookup system call per entry takes about 0.4 s for 65536 entries.
use std::{
    mem::size_of,
    os::fd::{AsFd as _, AsRawFd as _},
    ptr::NonNull,
};

use anyhow::Context as _;
use aya::maps::{Map, MapData};

/// Every entry of the array map `map`, of `len` entries of `T`.
pub fn read_array<T: aya::Pod>(map: &Map, len: u32) -> anyhow::Result<Vec<T>> {
    let Map::Array(data) = map else {
        anyhow::bail!("not an array map");
    };
    // The kernel lays array entries out 8-byte aligned, from the start of the mapping.
    let stride = size_of::<T>().next_multiple_of(8);
    let bytes = stride * len as usize;
    let mapping = Mapping::new(data, bytes)?;
    Ok((0..len as usize)
        .map(|i| {
            // SAFETY: entry i lies within the mapping; T is plain data (Pod), read unaligned.
            unsafe {
                mapping
                    .start
                    .as_ptr()
                    .add(i * stride)
                    .cast::<T>()
                    .read_unaligned()
            }
        })
        .collect())
}

/// A read-only shared mapping of a map's values, unmapped when dropped.
struct Mapping {
    start: NonNull<u8>,
    bytes: usize,
}

impl Mapping {
    fn new(map: &MapData, bytes: usize) -> anyhow::Result<Mapping> {
        // SAFETY: a fresh read-only shared mapping of the map's file descriptor, checked below.
        let start = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ,
                libc::MAP_SHARED,
                map.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if start == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error()).context("mapping a BPF array");
        }
        let start = NonNull::new(start.cast()).context("mmap returned NULL")?;
        Ok(Mapping { start, bytes })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the mapping made in new, not used after this.
        unsafe { libc::munmap(self.start.as_ptr().cast(), self.bytes) };
    }
}
