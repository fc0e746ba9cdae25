//! Reading a whole BPF array at once, through read-only mappings of the map (created with
//! `BPF_F_MMAPABLE`): one lookup system call per entry takes about 0.4 s for 65536 entries.
//! The array is mapped a window at a time, so reading it adds at most a window to our
//! resident memory (the slots' 5 MiB at once had cow-trace's peak RSS grow by that at stop).
use std::{
    mem::size_of,
    os::fd::{AsFd as _, AsRawFd as _},
    ptr::NonNull,
};

use anyhow::Context as _;
use aya::maps::{Map, MapData};

/// Bytes of the array mapped at a time.
const WINDOW: usize = 256 << 10;

/// The entries of the array map `map` (of `len` entries of `T`) that `keep` keeps, in order.
pub fn read_array_where<T: aya::Pod>(
    map: &Map,
    len: u32,
    keep: impl Fn(&T) -> bool,
) -> anyhow::Result<Vec<T>> {
    let Map::Array(data) = map else {
        anyhow::bail!("not an array map");
    };
    // The kernel lays array entries out 8-byte aligned, from the start of the mapping.
    let stride = size_of::<T>().next_multiple_of(8);
    let bytes = stride * len as usize;
    // SAFETY: sysconf has no preconditions.
    let page =
        usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).context("the page size")?;
    let window = WINDOW.next_multiple_of(page);
    let mut kept = Vec::new();
    let mut first = 0;
    while first < len as usize {
        // The window holds the entries that begin in it, the last of them whole.
        let offset = (first * stride) / page * page;
        let end = (offset + window + stride).min(bytes);
        let mapping = Mapping::new(data, offset, end - offset)?;
        let past = (offset + window).div_ceil(stride).min(len as usize);
        for i in first..past {
            // SAFETY: entry i lies within the mapping, which starts at byte `offset` of the
            // array; T is plain data (Pod), read unaligned.
            let entry = unsafe {
                mapping
                    .start
                    .as_ptr()
                    .add(i * stride - offset)
                    .cast::<T>()
                    .read_unaligned()
            };
            if keep(&entry) {
                kept.push(entry);
            }
        }
        first = past;
    }
    Ok(kept)
}

/// A read-only shared mapping of part of a map's values, unmapped when dropped.
struct Mapping {
    start: NonNull<u8>,
    bytes: usize,
}

impl Mapping {
    /// `bytes` of the map's values from `offset` (a multiple of the page size).
    fn new(map: &MapData, offset: usize, bytes: usize) -> anyhow::Result<Mapping> {
        let offset = libc::off_t::try_from(offset).context("offset into a BPF array")?;
        // SAFETY: a fresh read-only shared mapping of the map's file descriptor, checked below.
        let start = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ,
                libc::MAP_SHARED,
                map.fd().as_fd().as_raw_fd(),
                offset,
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
