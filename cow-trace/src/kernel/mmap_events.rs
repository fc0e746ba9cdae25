//! The kernel's own record of each traced process's mappings as they are made, read as
//! `perf record` reads them: a dummy software event (it counts nothing) that asks for `MMAP2`
//! records of every mapping (code and data), `FORK`/`EXIT` and exec `COMM` records, each
//! stamped with CLOCK_MONOTONIC, the clock of the faults' timestamps.
//!
//! The event is opened per traced task and per CPU, and inherited by every task they create:
//! the kernel refuses to mmap an inherited event that is not bound to a CPU. All events of a
//! CPU write into one ring (`PERF_EVENT_IOC_SET_OUTPUT`), so there is one ring per CPU. A
//! process traced with `-x` needs events on each of its threads (inheritance covers only tasks
//! created later): at most `MAX_EVENTS` are opened; threads beyond that are counted, and their
//! processes' mappings come from /proc/PID/maps while they live.
//!
//! A full ring drops records and says how many (`PERF_RECORD_LOST`): counted in `lost()`.
use std::{
    cell::Cell,
    collections::HashSet,
    future::poll_fn,
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::atomic::{Ordering, fence},
    task::Poll,
};

use anyhow::Context as _;
use linux_perf_event_reader::{
    Endianness, EventRecord, Mmap2FileId, PerfEventAttr, RawData, RawEventRecord, RecordParseInfo,
    RecordType,
};
use perf_event_open_sys::{self as sys, bindings};
use tokio::io::unix::AsyncFd;

use crate::map_record::{MapChange, MapRecord, NewMapping};

/// Bytes of all CPUs' rings together, split evenly, each a power of two within
/// `MIN_RING_BYTES..=MAX_RING_BYTES`. An MMAP2 record takes about 100 bytes, so 4 MiB hold some
/// forty thousand; the reader is woken when a quarter of one is full.
const RINGS_BYTES: usize = 8 << 20;
const MIN_RING_BYTES: usize = 512 << 10;
const MAX_RING_BYTES: usize = 4 << 20;
/// Event file descriptors opened at most (tasks x CPUs) for the tasks that exist at attach.
pub const MAX_EVENTS: usize = 8192;

/// One CPU's ring, mapped from the first event opened on that CPU.
struct CpuRing {
    cpu: i32,
    owner: AsyncFd<OwnedFd>,
    /// The owner's task has exited without children: its descriptor polls as hung up for
    /// good, so it is no longer waited on (the ring is still read with each batch and tick).
    hung_up: Cell<bool>,
    base: *mut u8,
    mapped_len: usize,
    data_offset: usize,
    data_size: usize,
}

impl Drop for CpuRing {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what `map_ring` mapped; nothing refers into it any more.
        unsafe { libc::munmap(self.base.cast(), self.mapped_len) };
    }
}

pub struct MmapEvents {
    rings: Vec<CpuRing>,
    /// The events of tasks after the first, redirected into the rings; open until the end.
    events: Vec<OwnedFd>,
    tasks: HashSet<u32>,
    attr: bindings::perf_event_attr,
    parse_info: RecordParseInfo,
    lost: u64,
    /// Threads that got no events (over `MAX_EVENTS`, or refused).
    unfollowed: usize,
    /// Bytes of a record that wraps around the end of a ring.
    scratch: Vec<u8>,
    ring_bytes: usize,
}

impl MmapEvents {
    /// Opens the events on every thread of `pids` (all alive, traced) and their ring per CPU.
    pub fn open(pids: &[u32]) -> anyhow::Result<MmapEvents> {
        raise_fd_limit();
        let cpus = online_cpus();
        let ring_bytes = (RINGS_BYTES / cpus.len())
            .next_power_of_two()
            .clamp(MIN_RING_BYTES, MAX_RING_BYTES);
        let attr = event_attr(ring_bytes);
        // SAFETY: perf_event_attr is plain old data; its bytes are what the kernel reads.
        let attr_bytes = unsafe {
            std::slice::from_raw_parts(
                (&attr as *const bindings::perf_event_attr).cast::<u8>(),
                size_of::<bindings::perf_event_attr>(),
            )
        };
        let (parsed, _) = PerfEventAttr::parse::<_, byteorder::NativeEndian>(attr_bytes)
            .context("describing the mapping event")?;
        let mut events = MmapEvents {
            rings: Vec::new(),
            events: Vec::new(),
            tasks: HashSet::new(),
            attr,
            parse_info: RecordParseInfo::new(&parsed, native_endianness()),
            lost: 0,
            unfollowed: 0,
            scratch: Vec::new(),
            ring_bytes,
        };
        // Threads created while we open are found by the next pass, unless inherited already.
        for _ in 0..3 {
            let mut new = 0;
            for &pid in pids {
                for tid in threads_of(pid) {
                    if events.tasks.insert(tid) {
                        new += 1;
                        events.follow(tid, &cpus)?;
                    }
                }
            }
            if new == 0 {
                break;
            }
        }
        if events.rings.is_empty() {
            anyhow::bail!("no mapping event could be opened for pids {pids:?}");
        }
        Ok(events)
    }

    /// Opens the events of `tid`, a traced thread whose events the kernel dropped (see
    /// [`crate::target::exec_dropped_perf_events`]), again.
    pub fn follow_again(&mut self, tid: u32) -> anyhow::Result<()> {
        self.tasks.insert(tid);
        self.follow(tid, &online_cpus())
    }

    /// Opens `tid`'s event on each CPU; the first task's events own the rings.
    fn follow(&mut self, tid: u32, cpus: &[i32]) -> anyhow::Result<()> {
        let opened = self.events.len() + self.rings.len();
        if opened + cpus.len() > MAX_EVENTS {
            self.unfollowed += 1;
            return Ok(());
        }
        let mut fds = Vec::with_capacity(cpus.len());
        for &cpu in cpus {
            let mut attr = self.attr;
            // SAFETY: a valid attr; the kernel checks pid and cpu.
            let fd = unsafe {
                sys::perf_event_open(
                    &mut attr,
                    tid as i32,
                    cpu,
                    -1,
                    u64::from(bindings::PERF_FLAG_FD_CLOEXEC),
                )
            };
            if fd < 0 {
                let error = io::Error::last_os_error();
                if error.raw_os_error() == Some(libc::ESRCH) {
                    // The thread exited meanwhile: nothing of it to follow.
                    return Ok(());
                }
                if self.rings.is_empty() {
                    return Err(error).with_context(|| {
                        format!("perf_event_open of a mapping event on cpu {cpu} for task {tid}")
                    });
                }
                log::debug!("mapping event for task {tid} on cpu {cpu}: {error}");
                self.unfollowed += 1;
                return Ok(());
            }
            // SAFETY: a fresh descriptor we own.
            fds.push((cpu, unsafe { OwnedFd::from_raw_fd(fd) }));
        }
        for (cpu, fd) in fds {
            match self.rings.iter().find(|ring| ring.cpu == cpu) {
                Some(ring) => {
                    // SAFETY: two perf event descriptors on the same CPU.
                    let done =
                        unsafe { sys::ioctls::SET_OUTPUT(fd.as_raw_fd(), ring.owner.as_raw_fd()) };
                    if done < 0 {
                        return Err(io::Error::last_os_error())
                            .context("redirecting a mapping event into its CPU's ring");
                    }
                    self.events.push(fd);
                }
                None => self.rings.push(map_ring(cpu, fd, self.ring_bytes)?),
            }
        }
        Ok(())
    }

    /// Waits until a ring is a quarter full.
    pub async fn readable(&self) -> io::Result<()> {
        poll_fn(|cx| {
            for ring in self.rings.iter().filter(|ring| !ring.hung_up.get()) {
                if let Poll::Ready(ready) = ring.owner.poll_read_ready(cx) {
                    let mut ready = ready?;
                    if ready.ready().is_read_closed() {
                        // Final in tokio: it would be ready again at once, forever.
                        ring.hung_up.set(true);
                    }
                    ready.clear_ready();
                    return Poll::Ready(Ok(()));
                }
            }
            Poll::Pending
        })
        .await
    }

    /// Everything the rings hold now, in time order.
    pub fn drain(&mut self) -> Vec<MapRecord> {
        let mut records = Vec::new();
        for index in 0..self.rings.len() {
            self.drain_ring(index, &mut records);
        }
        // Each ring is in time order; the CPUs' interleave.
        records.sort_by_key(|record| record.ts_ns);
        records
    }

    /// Records the kernel dropped because a ring was full.
    pub fn lost(&self) -> u64 {
        self.lost
    }

    /// Threads of the processes traced at attach that have no events.
    pub fn unfollowed(&self) -> usize {
        self.unfollowed
    }

    fn drain_ring(&mut self, index: usize, out: &mut Vec<MapRecord>) {
        let ring = &self.rings[index];
        let page = ring.base.cast::<bindings::perf_event_mmap_page>();
        // SAFETY: the first page of the mapping is the kernel's control page; data_head is
        // written by the kernel, read here with acquire ordering as perf documents.
        let head = unsafe { std::ptr::addr_of!((*page).data_head).read_volatile() };
        fence(Ordering::Acquire);
        // SAFETY: as above; data_tail is ours.
        let mut tail = unsafe { std::ptr::addr_of!((*page).data_tail).read_volatile() };
        let data = ring.base.wrapping_add(ring.data_offset);
        let size = ring.data_size;
        while tail + 8 <= head {
            let at = (tail as usize) & (size - 1);
            let mut header = [0u8; 8];
            copy_out(data, size, at, &mut header);
            let kind = u32::from_ne_bytes(header[0..4].try_into().expect("4 bytes"));
            let misc = u16::from_ne_bytes(header[4..6].try_into().expect("2 bytes"));
            let len = usize::from(u16::from_ne_bytes(
                header[6..8].try_into().expect("2 bytes"),
            ));
            if len < 8 || tail + len as u64 > head {
                break;
            }
            self.scratch.resize(len - 8, 0);
            copy_out(data, size, (at + 8) & (size - 1), &mut self.scratch);
            let raw = RawEventRecord::new(
                RecordType(kind),
                misc,
                RawData::Single(&self.scratch),
                self.parse_info,
            );
            match decode(&raw) {
                Decoded::Record(record) => out.push(record),
                Decoded::Lost(count) => self.lost += count,
                Decoded::Nothing => {}
            }
            tail += len as u64;
        }
        fence(Ordering::Release);
        // SAFETY: tells the kernel the space up to `tail` is free again.
        unsafe { std::ptr::addr_of_mut!((*page).data_tail).write_volatile(tail) };
    }
}

enum Decoded {
    Record(MapRecord),
    Lost(u64),
    Nothing,
}

fn decode(raw: &RawEventRecord<'_>) -> Decoded {
    let Some(ts_ns) = raw.timestamp() else {
        return Decoded::Nothing;
    };
    let record = |pid: i32, change| {
        Decoded::Record(MapRecord {
            ts_ns,
            pid: pid as u32,
            change,
        })
    };
    match raw.parse() {
        Ok(EventRecord::Mmap2(mmap)) if mmap.pid > 0 => {
            let (dev, ino) = match mmap.file_id {
                Mmap2FileId::InodeAndVersion(inode) => ((inode.major, inode.minor), inode.inode),
                Mmap2FileId::BuildId(_) => ((0, 0), 0),
            };
            record(
                mmap.pid,
                MapChange::Map(NewMapping {
                    start: mmap.address,
                    len: mmap.length,
                    pgoff: mmap.page_offset,
                    prot: mmap.protection,
                    flags: mmap.flags,
                    dev,
                    ino,
                    path: String::from_utf8_lossy(&mmap.path.as_slice()).into_owned(),
                }),
            )
        }
        Ok(EventRecord::Mmap(mmap)) if mmap.pid > 0 => record(
            mmap.pid,
            MapChange::Map(NewMapping {
                start: mmap.address,
                len: mmap.length,
                pgoff: mmap.page_offset,
                prot: if mmap.is_executable {
                    (libc::PROT_READ | libc::PROT_EXEC) as u32
                } else {
                    libc::PROT_READ as u32
                },
                flags: libc::MAP_PRIVATE as u32,
                dev: (0, 0),
                ino: 0,
                path: String::from_utf8_lossy(&mmap.path.as_slice()).into_owned(),
            }),
        ),
        // A new thread shares its process's mappings: only new processes matter.
        Ok(EventRecord::Fork(fork)) if fork.pid != fork.ppid => record(
            fork.pid,
            MapChange::Fork {
                parent: fork.ppid as u32,
            },
        ),
        Ok(EventRecord::Comm(comm)) if comm.is_execve => record(comm.pid, MapChange::Exec),
        Ok(EventRecord::Exit(exit)) if exit.pid == exit.tid => record(exit.pid, MapChange::Exit),
        Ok(EventRecord::Lost(lost)) => Decoded::Lost(lost.count),
        Ok(_) => Decoded::Nothing,
        Err(error) => {
            log::debug!("unreadable perf record {:?}: {error}", raw.record_type);
            Decoded::Nothing
        }
    }
}

/// Copies `out.len()` bytes from the ring at `at`, wrapping at its end.
fn copy_out(data: *const u8, size: usize, at: usize, out: &mut [u8]) {
    let first = out.len().min(size - at);
    // SAFETY: `data` points at the ring's `size` bytes; both copies stay inside them.
    unsafe {
        std::ptr::copy_nonoverlapping(data.add(at), out.as_mut_ptr(), first);
        std::ptr::copy_nonoverlapping(data, out.as_mut_ptr().add(first), out.len() - first);
    }
}

fn event_attr(ring_bytes: usize) -> bindings::perf_event_attr {
    let mut attr = bindings::perf_event_attr {
        type_: bindings::PERF_TYPE_SOFTWARE,
        size: size_of::<bindings::perf_event_attr>() as u32,
        config: u64::from(bindings::PERF_COUNT_SW_DUMMY),
        sample_type: u64::from(bindings::PERF_SAMPLE_TID | bindings::PERF_SAMPLE_TIME),
        clockid: libc::CLOCK_MONOTONIC,
        ..Default::default()
    };
    attr.set_mmap(1);
    attr.set_mmap2(1);
    attr.set_mmap_data(1);
    attr.set_task(1);
    attr.set_comm(1);
    attr.set_comm_exec(1);
    attr.set_sample_id_all(1);
    attr.set_inherit(1);
    attr.set_use_clockid(1);
    attr.set_exclude_kernel(1);
    attr.set_exclude_hv(1);
    attr.set_watermark(1);
    attr.__bindgen_anon_2.wakeup_watermark = (ring_bytes / 4) as u32;
    attr
}

/// Maps `fd`'s ring: a control page and `ring_bytes` of data (less if the kernel refuses).
fn map_ring(cpu: i32, fd: OwnedFd, ring_bytes: usize) -> anyhow::Result<CpuRing> {
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
    let mut data_size = ring_bytes;
    loop {
        let mapped_len = page + data_size;
        // SAFETY: a shared mapping of the event's ring, unmapped in CpuRing's Drop.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                mapped_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if base != libc::MAP_FAILED {
            // SAFETY: the OwnedFd is moved into the AsyncFd, which keeps it open while
            // registered.
            let owner =
                unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
                    .context("registering a mapping ring with tokio")?;
            return Ok(CpuRing {
                cpu,
                owner,
                hung_up: Cell::new(false),
                base: base.cast(),
                mapped_len,
                data_offset: page,
                data_size,
            });
        }
        let error = io::Error::last_os_error();
        // EPERM: over the locked-memory limit of an unprivileged tracer; try smaller.
        if data_size <= 16 * page || error.raw_os_error() != Some(libc::EPERM) {
            return Err(error).context("mapping the ring of a mapping event");
        }
        data_size /= 2;
    }
}

/// Lets the events and the held files have descriptors: the soft limit up to the hard one.
fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid pointers to a rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// The CPUs events must be opened on: those online now (`0-3,6`).
fn online_cpus() -> Vec<i32> {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/online").unwrap_or_default();
    let mut cpus = Vec::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        let (first, last) = part.split_once('-').unwrap_or((part, part));
        if let (Ok(first), Ok(last)) = (first.parse::<i32>(), last.parse::<i32>()) {
            cpus.extend(first..=last);
        }
    }
    if cpus.is_empty() {
        // SAFETY: sysconf has no preconditions.
        let count = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1) as i32;
        cpus.extend(0..count);
    }
    cpus
}

/// The threads of `pid` now (none if it has gone).
fn threads_of(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

fn native_endianness() -> Endianness {
    if cfg!(target_endian = "little") {
        Endianness::LittleEndian
    } else {
        Endianness::BigEndian
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_list_ranges() {
        let cpus = online_cpus();
        assert!(!cpus.is_empty());
        assert!(cpus.windows(2).all(|w| w[0] < w[1]), "{cpus:?}");
    }

    /// Needs perf_event_open (root here); a forked child that maps a page, forks a
    /// grandchild and execs `true` shows as the records a history needs.
    #[test]
    fn records_of_a_child_that_maps_forks_and_execs() {
        if !nix::unistd::Uid::effective().is_root() {
            println!("skipped: perf_event_open of another task needs root");
            return;
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .unwrap();
        let _guard = runtime.enter();
        let (read_end, write_end) = nix::unistd::pipe().unwrap();
        // SAFETY: the child only calls async-signal-safe functions before exec.
        let child = match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => unsafe {
                let mut byte = [0u8];
                libc::read(read_end.as_raw_fd(), byte.as_mut_ptr().cast(), 1);
                let page = libc::mmap(
                    std::ptr::null_mut(),
                    12288,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                );
                *(page as *mut u8) = 1;
                if libc::fork() == 0 {
                    libc::_exit(0);
                }
                let mut status = 0;
                libc::wait(&mut status);
                libc::execl(
                    c"/bin/true".as_ptr(),
                    c"true".as_ptr(),
                    std::ptr::null::<u8>(),
                );
                libc::_exit(127);
            },
            nix::unistd::ForkResult::Parent { child } => child,
        };
        let mut events = MmapEvents::open(&[child.as_raw() as u32]).unwrap();
        nix::unistd::write(&write_end, b"x").unwrap();
        nix::sys::wait::waitpid(child, None).unwrap();
        let records = events.drain();
        let pid = child.as_raw() as u32;
        let anon = records.iter().any(|r| {
            r.pid == pid
                && matches!(&r.change, MapChange::Map(m) if m.path == "//anon" && m.len >= 12288)
        });
        assert!(anon, "{records:#?}");
        assert!(
            records
                .iter()
                .any(|r| matches!(r.change, MapChange::Fork { parent } if parent == pid)),
            "{records:#?}"
        );
        let exec = records
            .iter()
            .position(|r| r.pid == pid && r.change == MapChange::Exec)
            .expect("an exec record");
        // After the exec, the new program's code, with its file's identity.
        assert!(records[exec..].iter().any(|r| matches!(&r.change,
            MapChange::Map(m) if m.executable() && m.is_file() && m.ino != 0)));
        assert!(records.windows(2).all(|w| w[0].ts_ns <= w[1].ts_ns));
        assert_eq!(events.lost(), 0);
    }
}
