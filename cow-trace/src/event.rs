//! Decoding ring-buffer records into events; a fault's class and what it means come from
//! `cow_trace_common::FaultClass`, the same in both modes.
pub use cow_trace_common::{Access, CowOutcome, FaultClass, Outcome};
use cow_trace_common::{AddressSpaceRecord, COMM_LEN, Record, flags, kind};

use crate::{
    map_record::{MapChange, MapRecord},
    stack_record::UserStack,
};

/// How an unwound stack ended early.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Incomplete {
    /// Cut at --stack-size.
    Truncated,
    /// Code without unwind information or a frame pointer.
    NoUnwindInfo,
    /// Another early end (a return address in no code, a step refused, too deep).
    Stopped,
}

/// One page fault of a traced process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fault {
    /// CLOCK_MONOTONIC ns at fault entry.
    pub ts_ns: u64,
    pub pid: u32,
    pub tid: u32,
    pub comm: Comm,
    pub address: u64,
    pub ip: u64,
    /// None when the fault's entry was not seen (it began before attaching).
    pub error_code: Option<u64>,
    pub outcome: Outcome,
    /// Entry to completion; None when the entry was not seen or the fault never completed.
    pub latency_ns: Option<u64>,
    /// Taken in kernel mode on a user address (e.g. copy_to_user in read()).
    pub kernel_mode: bool,
    /// The class the in-kernel summary would count this fault in.
    pub class: FaultClass,
    /// The newest child of this process alive at the fault (its snapshot window), or 0.
    pub window: u32,
    /// handle_mm_fault's vm_fault_t result, where the backend sees it (else 0).
    pub vm_fault: u32,
    /// The user stack's id: in the kernel's stack map (--stack=fp), or, once unwound, among
    /// the Enricher's unwound stacks (--stack=dwarf).
    pub stack_id: Option<u32>,
    /// --stack=dwarf: the kernel copied this fault's stack (its record came just before).
    pub copied_stack: bool,
    /// Filled in userspace with --resolve: the mapping holding the address (a file's with
    /// `@0x` and the offset into the file, see [`mapping_name`])...
    pub mapping: Option<String>,
    /// ... and the faulting instruction as `function+0xoff (module)`.
    pub symbol: Option<String>,
    /// Filled with --stack: the symbolized user stack, innermost first.
    pub stack: Vec<String>,
}

impl Fault {
    pub fn access(&self) -> Option<Access> {
        self.class.access()
    }

    /// A write to a present page: the write-protect fault that, on private memory, breaks
    /// copy-on-write. None when the error code is unknown.
    pub fn is_cow(&self) -> Option<bool> {
        self.error_code.map(|_| self.class.is_write_protect())
    }

    /// How a copy-on-write fault ended (a first write that copied a file's page into a
    /// private mapping: `Copied`); None for other faults, or where unknown.
    pub fn cow_outcome(&self) -> Option<CowOutcome> {
        self.class.cow_outcome()
    }

    /// On a copy-on-write fault: Some(true) if a page was copied (a shared one, or a file's
    /// into a private mapping), Some(false) if it was reused (its last sharer kept it) or was
    /// the zero page, filled afresh.
    pub fn copied(&self) -> Option<bool> {
        self.cow_outcome()
            .map(|outcome| outcome == CowOutcome::Copied)
    }
}

/// A mapping as a summary groups faults by, in both modes: without a file mapping's
/// `@0x<offset>` suffix. A path may hold `@` itself; only a final `@0x` and hex digits is cut.
pub fn mapping_name(mapping: &str) -> &str {
    match mapping.rsplit_once("@0x") {
        Some((name, offset))
            if !offset.is_empty() && offset.bytes().all(|b| b.is_ascii_hexdigit()) =>
        {
            name
        }
        _ => mapping,
    }
}

/// A change in the traced process tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessEvent {
    pub ts_ns: u64,
    /// The forking parent, or the process that executed a program or exited.
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    pub change: Change,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    Fork {
        child: u32,
    },
    /// A new program; the event's comm is its name.
    Exec,
    Exit,
}

/// What a record tells userspace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Fault(Fault),
    Process(ProcessEvent),
    /// A fault's copied user stack (--stack=dwarf); the fault's record follows.
    Stack(UserStack),
    /// Memory unmapped or remapped, which the kernel's mapping records do not say.
    AddressSpace(MapRecord),
}

/// Reads one ring-buffer item; None for an item of the wrong size or kind.
pub fn decode(bytes: &[u8]) -> Option<Event> {
    if let Some(stack) = crate::stack_record::decode(bytes) {
        return Some(Event::Stack(stack));
    }
    if let Some(change) = address_space_change(bytes) {
        return Some(Event::AddressSpace(change));
    }
    if bytes.len() < size_of::<Record>() {
        return None;
    }
    // SAFETY: Record is plain old data and the slice holds at least one; the ring buffer
    // gives 8-byte alignment but read_unaligned does not rely on it.
    let record: Record = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    from_record(&record)
}

/// The event a kernel record describes; None for an unknown kind.
pub fn from_record(record: &Record) -> Option<Event> {
    match record.kind {
        kind::FAULT | kind::FAULT_INCOMPLETE | kind::FAULT_RETRY => {
            let no_entry = record.flags & flags::NO_ENTRY != 0;
            let class = FaultClass::of_record(record);
            let outcome = class.outcome();
            Some(Event::Fault(Fault {
                ts_ns: record.ts_ns,
                pid: record.pid,
                tid: record.tid,
                comm: Comm::from_kernel(&record.comm),
                address: record.address,
                ip: record.ip,
                error_code: (!no_entry).then_some(record.error_code),
                outcome,
                latency_ns: (!no_entry
                    && outcome != Outcome::Incomplete
                    && record.flags & flags::UNTIMED == 0)
                    .then_some(record.latency_ns),
                vm_fault: record.vm_fault,
                stack_id: u32::try_from(record.stack_id).ok(),
                copied_stack: record.flags & flags::USER_STACK != 0,
                mapping: None,
                symbol: None,
                stack: Vec::new(),
                kernel_mode: record.flags & flags::KERNEL_MODE != 0,
                class,
                window: record.other_pid,
            }))
        }
        kind::FORK | kind::EXEC | kind::EXIT => Some(Event::Process(ProcessEvent {
            ts_ns: record.ts_ns,
            pid: record.pid,
            tid: record.tid,
            comm: comm_string(&record.comm),
            change: match record.kind {
                kind::FORK => Change::Fork {
                    child: record.other_pid,
                },
                kind::EXEC => Change::Exec,
                _ => Change::Exit,
            },
        })),
        _ => None,
    }
}

/// Decodes an [`AddressSpaceRecord`] (`kind::UNMAP`, `kind::REMAP`) into the change it made,
/// its ranges rounded to whole pages as the kernel rounds them; None if it is not one.
fn address_space_change(bytes: &[u8]) -> Option<MapRecord> {
    if bytes.len() != size_of::<AddressSpaceRecord>() {
        return None;
    }
    // SAFETY: plain old data, and the slice holds one; read_unaligned does not rely on the
    // ring's alignment.
    let record: AddressSpaceRecord = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    let pages = |len: u64| len.div_ceil(crate::page::size()) * crate::page::size();
    let change = match record.kind {
        kind::UNMAP => MapChange::Unmap {
            start: record.start,
            end: record.start.saturating_add(pages(record.len)),
        },
        kind::REMAP => MapChange::Remap {
            from: record.start,
            old_len: pages(record.len),
            to: record.new_start,
            new_len: pages(record.new_len),
            keep_old: record.flags & MREMAP_DONTUNMAP != 0,
        },
        _ => return None,
    };
    Some(MapRecord {
        ts_ns: record.ts_ns,
        pid: record.pid,
        change,
    })
}

/// mremap's flag that leaves the old range mapped (linux/mman.h; libc does not define it on
/// every target).
const MREMAP_DONTUNMAP: u64 = 4;

fn comm_string(comm: &[u8; COMM_LEN]) -> String {
    Comm::from_kernel(comm).as_str().to_string()
}

/// A task's command name, kept inline as the kernel gives it: a fault carries one, and a
/// String per fault would be an allocation per fault.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Comm {
    bytes: [u8; COMM_LEN],
    len: u8,
}

impl Comm {
    /// The kernel's NUL-padded comm; bytes that are not UTF-8, and control characters (a
    /// process may name itself "a\nb", which would break a text line), become '?', as `ps`
    /// shows them.
    pub fn from_kernel(comm: &[u8; COMM_LEN]) -> Comm {
        let len = comm.iter().position(|&b| b == 0).unwrap_or(COMM_LEN);
        let mut bytes = *comm;
        let utf8 = std::str::from_utf8(&bytes[..len]).is_ok();
        for byte in &mut bytes[..len] {
            if byte.is_ascii_control() || (!utf8 && !byte.is_ascii()) {
                *byte = b'?';
            }
        }
        Comm {
            bytes,
            len: len as u8,
        }
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or("?")
    }
}

impl From<&str> for Comm {
    fn from(text: &str) -> Comm {
        let mut bytes = [0u8; COMM_LEN];
        let len = text.len().min(COMM_LEN);
        bytes[..len].copy_from_slice(&text.as_bytes()[..len]);
        Comm::from_kernel(&bytes)
    }
}

impl std::fmt::Display for Comm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // pad() honours width and alignment, as the text format's columns need.
        f.pad(self.as_str())
    }
}

impl std::fmt::Debug for Comm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

/// Events the kernel side could not deliver or count.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Lost {
    /// Records dropped because the ring buffer was full.
    pub ring_full: u64,
    /// Fault entries not remembered because the pending map was full (their completions
    /// still arrive, without access or latency).
    pub pending_full: u64,
    /// Children not followed because the traced map was full.
    pub traced_full: u64,
    /// Faults not counted because the in-kernel summary's map of counts was full.
    pub summary_full: u64,
    /// Not a loss of faults (`events` leaves it out, and JSON gives it beside `lost`, not in
    /// `lost_detail`): timed faults, counted, whose latency is not in the histograms because
    /// the in-kernel histogram map was full.
    pub hist_full: u64,
    /// User stacks not taken, or cut short, by reason.
    pub stacks: StackLosses,
    /// Records of mappings the kernel dropped because the mapping ring was full: some
    /// addresses may resolve to `[unknown]`.
    pub mapping_records: u64,
}

impl Lost {
    /// Faults missing from the output altogether.
    pub fn events(&self) -> u64 {
        self.ring_full + self.summary_full
    }
}

/// The JSON form (`lost_detail`): the counts, `stacks_failed` (every stack not taken or cut
/// short) and `stacks_lost` (the same by reason).
impl serde::Serialize for Lost {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct as _;
        let mut out = serializer.serialize_struct("Lost", 7)?;
        out.serialize_field("ring_full", &self.ring_full)?;
        out.serialize_field("pending_full", &self.pending_full)?;
        out.serialize_field("traced_full", &self.traced_full)?;
        out.serialize_field("summary_full", &self.summary_full)?;
        out.serialize_field("stacks_failed", &self.stacks.total())?;
        out.serialize_field("stacks_lost", &self.stacks)?;
        out.serialize_field("mapping_records", &self.mapping_records)?;
        out.end()
    }
}

/// User stacks not taken (the kernel could not read or deliver them) or cut short (their
/// unwind ended early), per fault, by reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct StackLosses {
    /// The kernel could not read the stack (no user registers, the stack not mapped), or
    /// (--stack=fp) its frame-pointer walk failed, or the stack could not be read back.
    pub unreadable: u64,
    /// --stack=fp: the kernel's stack map had no room.
    pub map_full: u64,
    /// --stack=dwarf: the copied stack did not fit in the ring buffer.
    pub ring_full: u64,
    /// --stack=dwarf: the CPU's copy buffer was in use by a preempted program.
    pub buffer_busy: u64,
    /// --stack=dwarf: the unwind needed more of the stack than --stack-size copies.
    pub truncated: u64,
    /// --stack=dwarf: the unwind reached code without unwind information or frame pointer.
    pub no_unwind_info: u64,
    /// --stack=dwarf: the unwind ended early otherwise (a return address in no code, a
    /// step that went nowhere, too many frames).
    pub stopped: u64,
}

impl StackLosses {
    pub fn total(&self) -> u64 {
        self.unreadable
            + self.map_full
            + self.ring_full
            + self.buffer_busy
            + self.truncated
            + self.no_unwind_info
            + self.stopped
    }

    /// Each count of `self` less `before`'s.
    pub fn since(&self, before: &StackLosses) -> StackLosses {
        StackLosses {
            unreadable: self.unreadable.saturating_sub(before.unreadable),
            map_full: self.map_full.saturating_sub(before.map_full),
            ring_full: self.ring_full.saturating_sub(before.ring_full),
            buffer_busy: self.buffer_busy.saturating_sub(before.buffer_busy),
            truncated: self.truncated.saturating_sub(before.truncated),
            no_unwind_info: self.no_unwind_info.saturating_sub(before.no_unwind_info),
            stopped: self.stopped.saturating_sub(before.stopped),
        }
    }

    /// Adds `other`'s counts.
    pub fn add(&mut self, other: &StackLosses) {
        self.unreadable += other.unreadable;
        self.map_full += other.map_full;
        self.ring_full += other.ring_full;
        self.buffer_busy += other.buffer_busy;
        self.truncated += other.truncated;
        self.no_unwind_info += other.no_unwind_info;
        self.stopped += other.stopped;
    }

    /// Counts a stack unwound here by how it ended (None: complete).
    pub fn count(&mut self, incomplete: Option<Incomplete>) {
        match incomplete {
            None => {}
            Some(Incomplete::Truncated) => self.truncated += 1,
            Some(Incomplete::NoUnwindInfo) => self.no_unwind_info += 1,
            Some(Incomplete::Stopped) => self.stopped += 1,
        }
    }

    /// "unreadable: 2; truncated at --stack-size: 1": the reasons that have counts.
    pub fn reasons(&self) -> String {
        [
            ("unreadable", self.unreadable),
            ("stack map bucket taken or full", self.map_full),
            ("ring buffer full", self.ring_full),
            ("copy buffer busy", self.buffer_busy),
            ("truncated at --stack-size", self.truncated),
            ("no unwind info", self.no_unwind_info),
            ("unwind stopped early", self.stopped),
        ]
        .iter()
        .filter(|(_, count)| *count > 0)
        .map(|(reason, count)| format!("{reason}: {count}"))
        .collect::<Vec<_>>()
        .join("; ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cow_trace_common::{NO_STACK, PENDING_DEFERRED, PendingFault};

    fn bytes(record: &Record) -> Vec<u8> {
        // SAFETY: Record is plain old data.
        unsafe {
            std::slice::from_raw_parts((record as *const Record).cast::<u8>(), size_of::<Record>())
        }
        .to_vec()
    }

    #[test]
    fn unmaps_and_remaps_decode_to_whole_pages() {
        let page = crate::page::size();
        let record = AddressSpaceRecord {
            kind: kind::REMAP,
            _pad: 0,
            ts_ns: 9,
            pid: 7,
            tid: 8,
            start: 0x10000,
            len: page + 1,
            new_start: 0x50000,
            new_len: 3 * page,
            flags: MREMAP_DONTUNMAP,
        };
        // SAFETY: plain old data.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (&record as *const AddressSpaceRecord).cast::<u8>(),
                size_of::<AddressSpaceRecord>(),
            )
        };
        let expected = MapRecord {
            ts_ns: 9,
            pid: 7,
            change: MapChange::Remap {
                from: 0x10000,
                old_len: 2 * page,
                to: 0x50000,
                new_len: 3 * page,
                keep_old: true,
            },
        };
        assert_eq!(decode(bytes), Some(Event::AddressSpace(expected)));
        let mut unmap = record;
        unmap.kind = kind::UNMAP;
        // SAFETY: plain old data.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (&unmap as *const AddressSpaceRecord).cast::<u8>(),
                size_of::<AddressSpaceRecord>(),
            )
        };
        let Some(Event::AddressSpace(MapRecord { change, .. })) = decode(bytes) else {
            panic!("not decoded");
        };
        assert_eq!(
            change,
            MapChange::Unmap {
                start: 0x10000,
                end: 0x10000 + 2 * page
            }
        );
    }

    fn fault_record(error_code: u64, flags: u32) -> Record {
        let mut record = Record::zeroed();
        record.kind = kind::FAULT;
        record.flags = flags;
        record.ts_ns = 5;
        record.latency_ns = 700;
        record.address = 0x7ffe_0cde_fb40;
        record.ip = 0x401136;
        record.error_code = error_code;
        record.pid = 12420;
        record.tid = 12421;
        record.comm[..3].copy_from_slice(b"cow");
        record
    }

    #[test]
    fn mapping_names_lose_only_the_file_offset() {
        assert_eq!(
            mapping_name("/usr/lib/libc.so.6@0x1f000"),
            "/usr/lib/libc.so.6"
        );
        assert_eq!(mapping_name("/srv/a@b/data@0x2000"), "/srv/a@b/data");
        assert_eq!(mapping_name("/srv/x@0x10@0x2000"), "/srv/x@0x10");
        assert_eq!(mapping_name("[heap]"), "[heap]");
        assert_eq!(mapping_name("[anon:x@0x1]"), "[anon:x@0x1]");
        assert_eq!(mapping_name("/srv/mail@0xford"), "/srv/mail@0xford");
    }

    #[test]
    fn error_code_classification() {
        let access = |code| FaultClass::of(false, 0, code).access();
        // user write to a present page: the copy-on-write break
        assert_eq!(access(0x7), Some(Access::Write));
        // user read of a missing page
        assert_eq!(access(0x4), Some(Access::Read));
        // user instruction fetch of a missing page
        assert_eq!(access(0x14), Some(Access::Exec));
        // kernel write (copy_to_user) to a missing user page
        assert_eq!(access(0x2), Some(Access::Write));
        // completion without entry
        assert_eq!(FaultClass::of(false, flags::NO_ENTRY, 0x7).access(), None);
    }

    #[test]
    fn write_protect_fault_is_cow() {
        let Some(Event::Fault(fault)) = decode(&bytes(&fault_record(0x7, 0))) else {
            panic!("not a fault");
        };
        assert_eq!(fault.is_cow(), Some(true));
        assert_eq!(fault.access(), Some(Access::Write));
        assert_eq!(fault.outcome, Outcome::Minor);
        assert_eq!(fault.latency_ns, Some(700));
        assert_eq!(fault.comm.as_str(), "cow");
        assert_eq!((fault.pid, fault.tid), (12420, 12421));
    }

    #[test]
    fn write_to_missing_page_and_read_of_present_page_are_not_cow() {
        for code in [0x6, 0x5, 0x15] {
            let Some(Event::Fault(fault)) = decode(&bytes(&fault_record(code, 0))) else {
                panic!("not a fault");
            };
            assert_eq!(fault.is_cow(), Some(false), "error code {code:#x}");
        }
    }

    #[test]
    fn copy_and_reuse() {
        let copied = flags::COPY_KNOWN | flags::PAGE_ALLOCATED;
        let Some(Event::Fault(fault)) = decode(&bytes(&fault_record(0x7, copied))) else {
            panic!("not a fault");
        };
        assert_eq!(fault.copied(), Some(true));
        let Some(Event::Fault(fault)) = decode(&bytes(&fault_record(0x7, flags::COPY_KNOWN)))
        else {
            panic!("not a fault");
        };
        assert_eq!(fault.copied(), Some(false));
        // Without copy detection, or on a fault that is no write-protect fault: unknown.
        let Some(Event::Fault(fault)) = decode(&bytes(&fault_record(0x7, 0))) else {
            panic!("not a fault");
        };
        assert_eq!(fault.copied(), None);
        let Some(Event::Fault(fault)) = decode(&bytes(&fault_record(0x6, copied))) else {
            panic!("not a fault");
        };
        assert_eq!(fault.copied(), None);
        // A write to the zero page is neither a copy nor a reuse.
        let zeroed = flags::COPY_KNOWN | flags::PAGE_ZEROED;
        let Some(Event::Fault(fault)) = decode(&bytes(&fault_record(0x7, zeroed))) else {
            panic!("not a fault");
        };
        assert_eq!(fault.cow_outcome(), Some(CowOutcome::ZeroFilled));
        assert_eq!(fault.copied(), Some(false));
    }

    #[test]
    fn window_is_the_live_child() {
        let mut record = fault_record(0x7, 0);
        record.other_pid = 4242;
        let Some(Event::Fault(fault)) = decode(&bytes(&record)) else {
            panic!("not a fault");
        };
        assert_eq!(fault.window, 4242);
    }

    #[test]
    fn major_and_kernel_mode_flags() {
        let Some(Event::Fault(fault)) = decode(&bytes(&fault_record(
            0x2,
            flags::MAJOR | flags::KERNEL_MODE,
        ))) else {
            panic!("not a fault");
        };
        assert_eq!(fault.outcome, Outcome::Major);
        assert!(fault.kernel_mode);
    }

    #[test]
    fn completion_without_entry_has_unknown_access_and_latency() {
        let Some(Event::Fault(fault)) = decode(&bytes(&fault_record(0x7, flags::NO_ENTRY))) else {
            panic!("not a fault");
        };
        assert_eq!(fault.error_code, None);
        assert_eq!(fault.access(), None);
        assert_eq!(fault.is_cow(), None);
        assert_eq!(fault.latency_ns, None);
    }

    #[test]
    fn retried_attempts_are_their_own_outcome() {
        let mut record = fault_record(0x6, 0);
        record.kind = kind::FAULT_RETRY;
        record.vm_fault = 0x400;
        let Some(Event::Fault(fault)) = decode(&bytes(&record)) else {
            panic!("not a fault");
        };
        assert_eq!(fault.outcome, Outcome::Retry);
        assert_eq!(fault.vm_fault, 0x400);
        assert_eq!(fault.class.outcome(), Outcome::Retry);
    }

    #[test]
    fn incomplete_fault_has_no_latency() {
        let mut record = fault_record(0x6, 0);
        record.kind = kind::FAULT_INCOMPLETE;
        let Some(Event::Fault(fault)) = decode(&bytes(&record)) else {
            panic!("not a fault");
        };
        assert_eq!(fault.outcome, Outcome::Incomplete);
        assert_eq!(fault.latency_ns, None);
        assert_eq!(fault.access(), Some(Access::Write));
    }

    #[test]
    fn untimed_fault_has_no_latency_but_all_else() {
        let record = fault_record(
            0x7,
            flags::UNTIMED | flags::COPY_KNOWN | flags::PAGE_ALLOCATED,
        );
        let Some(Event::Fault(fault)) = decode(&bytes(&record)) else {
            panic!("not a fault");
        };
        assert_eq!(fault.latency_ns, None);
        assert_eq!(fault.outcome, Outcome::Minor);
        assert_eq!(fault.cow_outcome(), Some(CowOutcome::Copied));
    }

    /// A fault collected from the kernel's slot at the end of an untimed run reads as the
    /// same fault would from the ring.
    #[test]
    fn deferred_slot_becomes_a_complete_untimed_fault() {
        let slot = PendingFault {
            ts_ns: 5,
            address: 0x7ffe_0cde_fb40,
            ip: 0x401136,
            error_code: 0x7,
            flags: flags::PAGE_ALLOCATED | PENDING_DEFERRED,
            stack_id: NO_STACK,
            comm: *b"cow\0\0\0\0\0\0\0\0\0\0\0\0\0",
            pid: 12420,
            tid: 12421,
            user_regs: 0,
        };
        let Some(Event::Fault(fault)) = from_record(&slot.to_record(12421)) else {
            panic!("not a fault");
        };
        assert_eq!((fault.pid, fault.tid), (12420, 12421));
        assert_eq!(fault.comm.as_str(), "cow");
        assert_eq!(fault.outcome, Outcome::Minor);
        assert_eq!(fault.latency_ns, None);
        assert_eq!(fault.cow_outcome(), Some(CowOutcome::Copied));
        assert_eq!(fault.stack_id, None);
    }

    #[test]
    fn fork_and_exit_records() {
        let mut record = Record::zeroed();
        record.kind = kind::FORK;
        record.pid = 10;
        record.other_pid = 11;
        assert!(matches!(
            decode(&bytes(&record)),
            Some(Event::Process(ProcessEvent {
                pid: 10,
                change: Change::Fork { child: 11 },
                ..
            }))
        ));
        record.kind = kind::EXEC;
        assert!(matches!(
            decode(&bytes(&record)),
            Some(Event::Process(ProcessEvent {
                pid: 10,
                change: Change::Exec,
                ..
            }))
        ));
        record.kind = kind::EXIT;
        assert!(matches!(
            decode(&bytes(&record)),
            Some(Event::Process(ProcessEvent {
                pid: 10,
                change: Change::Exit,
                ..
            }))
        ));
    }

    #[test]
    fn short_or_unknown_records_are_rejected() {
        let record = fault_record(0x7, 0);
        assert_eq!(decode(&bytes(&record)[..8]), None);
        let mut unknown = record;
        unknown.kind = 99;
        assert_eq!(decode(&bytes(&unknown)), None);
    }

    #[test]
    fn comm_without_nul_uses_all_bytes() {
        assert_eq!(comm_string(b"0123456789abcdef"), "0123456789abcdef");
    }

    #[test]
    fn comm_pads_like_a_string_and_survives_bad_bytes() {
        assert_eq!(format!("[{:<6}]", Comm::from("sh")), "[sh    ]");
        let mut raw = [0u8; COMM_LEN];
        raw[..3].copy_from_slice(&[b'a', 0xff, b'b']);
        assert_eq!(Comm::from_kernel(&raw).as_str(), "a?b");
    }

    #[test]
    fn comm_control_characters_cannot_break_a_line() {
        assert_eq!(Comm::from("q\"u\te\nx\x1b").as_str(), "q\"u?e?x?");
        assert_eq!(Comm::from("café").as_str(), "café");
    }
}
