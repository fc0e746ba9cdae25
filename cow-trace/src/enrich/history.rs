//! Each traced process's address space over time, from the kernel's own records of mappings
//! as they were made (`MapRecord`s): which mapping held an address at a given moment, whether
//! or not the process is still alive to ask.
//!
//! - A process starts with what `/proc/PID/maps` showed at attach (`seed`), or with its
//!   parent's mappings at the fork; an exec starts it anew.
//! - A new mapping replaces whatever it overlaps. The kernel records no munmap, but a fault's
//!   address is inside a live mapping at fault time, so the newest mapping covering it then is
//!   the right one. An address no known mapping covers is unknown, never a neighbour's.
//! - Records wait in `pending` until a lookup asks about a later time (`advance_to`): lookups
//!   come in the order faults complete, so the state is the one of the fault's moment, and
//!   what was replaced is needed only for the few faults that arrive out of order. Those
//!   replaced pieces are kept in `past`, at most `MAX_PAST` per process.
//! - A record may still come after newer ones were applied: a munmap's waits in the event ring
//!   behind the faults before it while the kernel's mapping records, read on their own, are
//!   applied at once where a summary asks for the latest mappings. It changes the address
//!   space as at its own time: what was mapped after it stays, and what it ended that a newer
//!   record had replaced ends at its time instead.
//!
//! Memory is bounded per process: at most `MAX_LIVE` live pieces (more than the kernel's
//! default `vm.max_map_count`; pieces of a process that unmaps without mapping anew in the same
//! place are dropped, oldest and non-executable first, past that) and `MAX_PAST` replaced ones.
//! `Retention::UntilEnd` (the summary resolves at the end) keeps at most `MAX_EXITED` exited
//! processes. At most as many records wait in `pending` as faults fit in the event ring.
use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    sync::Arc,
};

use super::attribute::{Backing, Perms};
use crate::map_record::{MapChange, MapRecord, NewMapping};

/// Live pieces per process before the oldest are dropped: above the kernel's default
/// `vm.max_map_count` (65530), so only memory that was unmapped can go.
pub const MAX_LIVE: usize = 1 << 16;
/// Replaced pieces kept per process, for faults that arrive after the record that replaced
/// their mapping.
pub const MAX_PAST: usize = 4096;
/// With `Retention::UntilEnd`, exited processes kept; the longest gone is dropped first.
pub const MAX_EXITED: usize = 1024;
/// Records waiting for a lookup to reach their time, at least; past the bound the oldest are
/// applied. `History::new` takes a larger one: as many as faults can wait in the event ring,
/// since each may be in a mapping of its own.
const MIN_PENDING: usize = 1 << 16;

/// A file, as the kernel identifies it: device (major, minor) and inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileKey {
    pub dev: (u32, u32),
    pub ino: u64,
}

/// What one mmap made, shared by the pieces it is split into and by forked copies.
#[derive(Debug, PartialEq, Eq)]
pub struct MapInfo {
    /// Where the mapping began: file offsets count from here.
    pub start: u64,
    /// For a file, the offset of `start` into it.
    pub pgoff: u64,
    pub perms: Perms,
    pub backing: Backing,
    /// `[heap]`, `[stack]`, `[anon]`, `[vdso]`..., or the file's path.
    pub label: Arc<str>,
    pub file: Option<FileKey>,
}

impl MapInfo {
    /// From a kernel record. Anonymous memory is called `[anon]`, as /proc/PID/maps leaves it
    /// unnamed.
    pub fn from_record(mapping: &NewMapping) -> MapInfo {
        let (label, backing): (Arc<str>, Backing) = match mapping.path.as_str() {
            "//anon" | "" => (anon_label(), Backing::Anonymous),
            "[heap]" | "[stack]" => (mapping.path.as_str().into(), Backing::Anonymous),
            name if name.starts_with("[anon") => (name.into(), Backing::Anonymous),
            name if name.starts_with('[') => (name.into(), Backing::Special),
            path => (path.into(), Backing::File),
        };
        let file = (backing == Backing::File && mapping.ino != 0).then_some(FileKey {
            dev: mapping.dev,
            ino: mapping.ino,
        });
        MapInfo {
            start: mapping.start,
            pgoff: mapping.pgoff,
            perms: Perms::from_prot(mapping.prot, mapping.flags),
            backing,
            label,
            file,
        }
    }

    /// The offset of `address` into the file (or into the mapping, without one).
    pub fn offset_of(&self, address: u64) -> u64 {
        let into = address.wrapping_sub(self.start);
        match self.backing {
            Backing::File => self.pgoff.wrapping_add(into),
            Backing::Anonymous | Backing::Special => into,
        }
    }

    pub fn executable(&self) -> bool {
        self.perms.executable()
    }

    /// A private mapping of a file (memfd and tmpfs files too): a first write to one of its
    /// pages copies the file's page into private memory.
    pub fn is_private_file(&self) -> bool {
        self.backing == Backing::File && !self.perms.shared()
    }

    /// A shared mapping (of a file, or shared anonymous memory): writes go to the pages
    /// every sharer sees, never copied.
    pub fn is_shared(&self) -> bool {
        self.perms.shared()
    }
}

/// One interned `[anon]` label: a process may make a hundred thousand anonymous mappings.
fn anon_label() -> Arc<str> {
    thread_local! {
        static ANON: Arc<str> = Arc::from("[anon]");
    }
    ANON.with(Arc::clone)
}

/// A live piece of a mapping: `[start, end)` (the key in `Space::live` is its start).
#[derive(Clone, Debug)]
struct Piece {
    end: u64,
    /// When it was mapped (0: before tracing began).
    since: u64,
    info: Arc<MapInfo>,
}

/// A piece replaced at `until`: it held `[start, end)` from `since` to then.
#[derive(Clone, Debug)]
struct Past {
    start: u64,
    end: u64,
    since: u64,
    until: u64,
    info: Arc<MapInfo>,
}

impl Past {
    /// Whether it held part of `[start, end)` at `at`.
    fn held(&self, start: u64, end: u64, at: u64) -> bool {
        self.start < end && start < self.end && self.since <= at && at < self.until
    }

    /// The part of it within `[start, end)`, as a piece (keyed by its start).
    fn piece_in(&self, start: u64, end: u64) -> (u64, Piece) {
        let piece = Piece {
            end: self.end.min(end),
            since: self.since,
            info: Arc::clone(&self.info),
        };
        (self.start.max(start), piece)
    }
}

/// The mapping that held an address.
#[derive(Clone, Debug)]
pub struct Hit {
    pub info: Arc<MapInfo>,
    /// The piece of it that held the address (a mapping partly replaced keeps the rest).
    pub start: u64,
    pub end: u64,
}

/// One process's address space over time.
#[derive(Default)]
struct Space {
    /// Non-overlapping, by start: the newest mapping of each address.
    live: BTreeMap<u64, Piece>,
    /// Replaced pieces, oldest first.
    past: VecDeque<Past>,
    /// Its exit was seen: /proc/PID is someone else's or no one's now.
    exited: bool,
    /// The time of the newest change applied: a change older than it came late.
    latest: u64,
}

impl Space {
    /// Whether a change at `at` comes after a newer one was applied; notes it as applied.
    fn arrives_late(&mut self, at: u64) -> bool {
        let late = at < self.latest;
        self.latest = self.latest.max(at);
        late
    }

    fn insert(&mut self, start: u64, end: u64, since: u64, info: Arc<MapInfo>) {
        if start >= end {
            return;
        }
        let late = since < self.latest;
        self.cut(start, end, since);
        if late {
            self.insert_late(start, end, since, &info);
        } else {
            self.live.insert(start, Piece { end, since, info });
        }
        if self.live.len() > MAX_LIVE {
            self.drop_oldest();
        }
    }

    /// A mapping made at `since`, whose record comes after newer ones: where a piece mapped
    /// later covers part of it (still live, or replaced since), it held that part only until
    /// then; the rest is live. `cut` has ended what it replaced.
    fn insert_late(&mut self, start: u64, end: u64, since: u64, info: &Arc<MapInfo>) {
        let live = self.pieces_in(start, end).into_iter();
        let replaced = self
            .past
            .iter()
            .filter(|past| past.since > since && past.start < end && start < past.end)
            .map(|past| past.piece_in(start, end));
        let mut newer: Vec<(u64, Piece)> = live.chain(replaced).collect();
        newer.sort_unstable_by_key(|&(piece_start, _)| piece_start);
        let mut cursor = start;
        for (piece_start, piece) in newer {
            self.push_past(Past {
                start: piece_start,
                end: piece.end,
                since,
                until: piece.since,
                info: Arc::clone(info),
            });
            if piece_start > cursor {
                self.live.insert(
                    cursor,
                    Piece {
                        end: piece_start,
                        since,
                        info: Arc::clone(info),
                    },
                );
            }
            cursor = cursor.max(piece.end);
        }
        if cursor < end {
            self.live.insert(
                cursor,
                Piece {
                    end,
                    since,
                    info: Arc::clone(info),
                },
            );
        }
    }

    /// Ends whatever held `[start, end)` at `at` (replaced, unmapped or moved away): the
    /// parts outside the range stay. Returns the pieces ended, cut to the range, by start.
    fn cut(&mut self, start: u64, end: u64, at: u64) -> Vec<(u64, Piece)> {
        let mut ended = Vec::new();
        if start >= end {
            return ended;
        }
        let late = self.arrives_late(at);
        let overlapped: Vec<u64> = self
            .live
            .range(..end)
            .rev()
            .take_while(|(_, piece)| piece.end > start)
            // Mapped after `at` (this change came late): newer, it stays.
            .filter(|(_, piece)| piece.since <= at)
            .map(|(&piece_start, _)| piece_start)
            .collect();
        for piece_start in overlapped {
            let Some(piece) = self.live.remove(&piece_start) else {
                continue;
            };
            if piece_start < start {
                let left = Piece {
                    end: start,
                    ..piece.clone()
                };
                self.live.insert(piece_start, left);
            }
            if piece.end > end {
                let right = Piece {
                    end: piece.end,
                    ..piece.clone()
                };
                self.live.insert(end, right);
            }
            let (cut_start, cut_end) = (piece_start.max(start), piece.end.min(end));
            ended.push((
                cut_start,
                Piece {
                    end: cut_end,
                    ..piece.clone()
                },
            ));
            self.push_past(Past {
                start: cut_start,
                end: cut_end,
                since: piece.since,
                until: at,
                info: piece.info,
            });
        }
        ended.reverse();
        if late {
            ended.extend(self.end_replaced(start, end, at));
            ended.sort_unstable_by_key(|&(piece_start, _)| piece_start);
        }
        ended
    }

    /// A change at `at` that came late ends the pieces of `[start, end)` it found: those a
    /// newer change replaced meanwhile end at `at` instead (the parts outside the range keep
    /// their end). Returns them, cut to the range.
    fn end_replaced(&mut self, start: u64, end: u64, at: u64) -> Vec<(u64, Piece)> {
        let mut ended = Vec::new();
        let mut kept = VecDeque::with_capacity(self.past.len());
        for past in self.past.drain(..) {
            if !past.held(start, end, at) {
                kept.push_back(past);
                continue;
            }
            let (cut_start, cut) = past.piece_in(start, end);
            if past.start < start {
                kept.push_back(Past {
                    end: start,
                    ..past.clone()
                });
            }
            if past.end > end {
                kept.push_back(Past {
                    start: end,
                    ..past.clone()
                });
            }
            kept.push_back(Past {
                start: cut_start,
                end: cut.end,
                until: at,
                ..past
            });
            ended.push((cut_start, cut));
        }
        self.past = kept;
        while self.past.len() > MAX_PAST {
            self.past.pop_front();
        }
        ended
    }

    /// The pieces that held `[start, end)` at `at`, cut to it, by start: the live ones mapped
    /// by then and, where newer changes were applied already, those they replaced.
    fn held_at(&self, start: u64, end: u64, at: u64) -> Vec<(u64, Piece)> {
        let mut held: Vec<(u64, Piece)> = self
            .pieces_in(start, end)
            .into_iter()
            .filter(|(_, piece)| piece.since <= at)
            .collect();
        if at < self.latest {
            let replaced = self.past.iter().filter(|past| past.held(start, end, at));
            held.extend(replaced.map(|past| past.piece_in(start, end)));
            held.sort_unstable_by_key(|&(piece_start, _)| piece_start);
        }
        held
    }

    /// The live pieces within `[start, end)`, cut to it, by start.
    fn pieces_in(&self, start: u64, end: u64) -> Vec<(u64, Piece)> {
        let mut pieces: Vec<(u64, Piece)> = self
            .live
            .range(..end)
            .rev()
            .take_while(|(_, piece)| piece.end > start)
            .map(|(&piece_start, piece)| {
                let cut = Piece {
                    end: piece.end.min(end),
                    ..piece.clone()
                };
                (piece_start.max(start), cut)
            })
            .collect();
        pieces.reverse();
        pieces
    }

    /// mremap at `at`: what held `[from, from + old_len)` holds `[to, to + new_len)` now, at
    /// the same offsets into its file; growing extends the last piece, shrinking unmaps the
    /// rest. The old range stays mapped with `keep_old` (MREMAP_DONTUNMAP), and when `old_len`
    /// is 0 (a second mapping of a shared one's pages).
    fn remap(&mut self, from: u64, old_len: u64, to: u64, new_len: u64, keep_old: bool, at: u64) {
        let source_len = if old_len == 0 { new_len } else { old_len };
        let source_end = from.saturating_add(source_len);
        let pieces = if keep_old || old_len == 0 {
            self.held_at(from, source_end, at)
        } else {
            self.cut(from, source_end, at)
        };
        let moved_len = new_len.min(source_len);
        let delta = to.wrapping_sub(from);
        let mut last = None;
        for (start, piece) in pieces {
            let offset = start - from;
            if offset >= moved_len {
                break;
            }
            // Offsets into the file count from the mapping's start, which moved with it.
            let info = Arc::new(MapInfo {
                start: piece.info.start.wrapping_add(delta),
                label: Arc::clone(&piece.info.label),
                ..*piece.info
            });
            let end = (piece.end - from).min(moved_len);
            self.insert(to + offset, to + end, at, Arc::clone(&info));
            last = Some(info);
        }
        // Grown: the new part belongs to the mapping's last piece.
        if let Some(info) = last
            && new_len > moved_len
        {
            self.insert(to + moved_len, to.saturating_add(new_len), at, info);
        }
    }

    /// Adds the parts of `[start, end)` that no live piece covers (a mapping seen in procfs
    /// where no record said anything).
    fn fill(&mut self, start: u64, end: u64, since: u64, info: &Arc<MapInfo>) {
        let mut gaps = Vec::new();
        let mut cursor = start;
        let covering = self
            .live
            .range(..end)
            .rev()
            .take_while(|(_, piece)| piece.end > start)
            .map(|(&s, piece)| (s, piece.end))
            .collect::<Vec<_>>();
        for (piece_start, piece_end) in covering.into_iter().rev() {
            if piece_start > cursor {
                gaps.push((cursor, piece_start));
            }
            cursor = cursor.max(piece_end);
        }
        if cursor < end {
            gaps.push((cursor, end));
        }
        for (gap_start, gap_end) in gaps {
            self.live.insert(
                gap_start,
                Piece {
                    end: gap_end,
                    since,
                    info: Arc::clone(info),
                },
            );
        }
    }

    fn push_past(&mut self, past: Past) {
        if self.past.len() >= MAX_PAST {
            self.past.pop_front();
        }
        self.past.push_back(past);
    }

    /// Past `MAX_LIVE` the process unmapped memory without mapping anew in its place: drop an
    /// eighth of the pieces, the oldest non-executable ones first (code is what stacks need).
    fn drop_oldest(&mut self) {
        let mut by_age: Vec<(bool, u64, u64)> = self
            .live
            .iter()
            .map(|(&start, piece)| (piece.info.executable(), piece.since, start))
            .collect();
        by_age.sort_unstable();
        for (_, _, start) in by_age.into_iter().take(MAX_LIVE / 8) {
            self.live.remove(&start);
        }
    }

    /// The exec at `at`: everything mapped before is gone. (What was mapped after it, by
    /// records applied before this one, is the new program's.)
    fn exec(&mut self, at: u64) {
        let late = self.arrives_late(at);
        let (before, after): (BTreeMap<u64, Piece>, BTreeMap<u64, Piece>) =
            std::mem::take(&mut self.live)
                .into_iter()
                .partition(|(_, piece)| piece.since <= at);
        self.live = after;
        for (start, piece) in before {
            self.push_past(Past {
                start,
                end: piece.end,
                since: piece.since,
                until: at,
                info: piece.info,
            });
        }
        if late {
            self.end_replaced(0, u64::MAX, at);
        }
    }

    /// The pieces mapped at `at`, by start (a fork's, whose record may come late).
    fn live_at(&self, at: u64) -> BTreeMap<u64, Piece> {
        if at >= self.latest {
            return self.live.clone();
        }
        self.held_at(0, u64::MAX, at).into_iter().collect()
    }

    /// The piece holding `address` at `at` (None: the latest that ever held it).
    fn lookup(&self, address: u64, at: Option<u64>) -> Option<Hit> {
        if let Some((&start, piece)) = self.live.range(..=address).next_back()
            && address < piece.end
            && at.is_none_or(|t| piece.since <= t)
        {
            return Some(Hit {
                info: Arc::clone(&piece.info),
                start,
                end: piece.end,
            });
        }
        let covers = |past: &&Past| past.start <= address && address < past.end;
        let found = match at {
            Some(t) => self
                .past
                .iter()
                .filter(covers)
                .filter(|past| past.since <= t && t < past.until)
                .max_by_key(|past| past.since),
            // The one replaced last (mostly the last pushed, but a change that came late
            // pushes pieces replaced before others).
            None => self
                .past
                .iter()
                .filter(covers)
                .max_by_key(|past| (past.until, past.since)),
        }?;
        Some(Hit {
            info: Arc::clone(&found.info),
            start: found.start,
            end: found.end,
        })
    }
}

/// How long a process's history is kept after it exits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retention {
    /// Until its exit is handled: its faults were all reported before it (streaming).
    UntilExit,
    /// Until the end, for resolving what the kernel counted (--summary), within `MAX_EXITED`.
    UntilEnd,
}

/// The address-space histories of all traced processes.
pub struct History {
    spaces: HashMap<u32, Space>,
    /// Records not applied yet, in time order.
    pending: VecDeque<MapRecord>,
    max_pending: usize,
    retention: Retention,
    /// Exited processes still kept, in the order they exited (`Retention::UntilEnd`).
    exited: VecDeque<u32>,
    /// The most pieces (live and past) one process has held.
    peak: usize,
}

/// How much the history holds, for --verbose and the tests of its bounds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HistoryStats {
    pub processes: usize,
    pub live_pieces: usize,
    pub past_pieces: usize,
    /// The most pieces (live and past) one process has held at any time.
    pub peak: usize,
}

impl History {
    /// `faults_in_flight`: how many faults the event ring can hold unread.
    pub fn new(retention: Retention, faults_in_flight: usize) -> History {
        History {
            spaces: HashMap::new(),
            pending: VecDeque::new(),
            max_pending: faults_in_flight.max(MIN_PENDING),
            retention,
            exited: VecDeque::new(),
            peak: 0,
        }
    }

    /// What /proc/PID/maps showed when tracing began: mapped "since always".
    pub fn seed(&mut self, pid: u32, maps: Vec<(u64, u64, MapInfo)>) {
        let space = self.spaces.entry(pid).or_default();
        for (start, end, info) in maps {
            space.fill(start, end, 0, &Arc::new(info));
        }
    }

    /// Queues records read from the kernel, each in its place by time: the perf rings' and the
    /// fault ring's (munmap, mremap) interleave, and a record may have been in flight during
    /// the last read.
    pub fn add(&mut self, records: impl IntoIterator<Item = MapRecord>) {
        for record in records {
            if self
                .pending
                .back()
                .is_none_or(|last| last.ts_ns <= record.ts_ns)
            {
                self.pending.push_back(record);
            } else {
                let at = self.pending.partition_point(|r| r.ts_ns <= record.ts_ns);
                self.pending.insert(at, record);
            }
        }
        while self.pending.len() > self.max_pending {
            let record = self.pending.pop_front().expect("not empty");
            self.apply(record);
        }
    }

    /// Applies every record up to `at`: the state a fault at `at` saw.
    pub fn advance_to(&mut self, at: u64) {
        while self.pending.front().is_some_and(|r| r.ts_ns <= at) {
            let record = self.pending.pop_front().expect("not empty");
            self.apply(record);
        }
    }

    /// Applies every record received.
    pub fn settle(&mut self) {
        self.advance_to(u64::MAX);
    }

    fn apply(&mut self, record: MapRecord) {
        let pid = record.pid;
        self.apply_change(record);
        if let Some(space) = self.spaces.get(&pid) {
            self.peak = self.peak.max(space.live.len() + space.past.len());
        }
    }

    fn apply_change(&mut self, record: MapRecord) {
        let MapRecord { ts_ns, pid, change } = record;
        match change {
            MapChange::Map(mapping) => {
                let info = Arc::new(MapInfo::from_record(&mapping));
                let space = self.spaces.entry(pid).or_default();
                space.insert(mapping.start, mapping.end(), ts_ns, info);
            }
            MapChange::Fork { parent } => {
                // As the parent was at the fork: a record of its own may have been applied
                // before this one came.
                let inherited = self.spaces.get(&parent).map(|p| p.live_at(ts_ns));
                let fresh = self.spaces.get(&pid).is_none_or(|child| child.exited);
                if fresh {
                    // A new process, or a pid reused since its last owner exited.
                    self.forget_now(pid);
                    let space = Space {
                        live: inherited.unwrap_or_default(),
                        ..Space::default()
                    };
                    self.spaces.insert(pid, space);
                } else if let (Some(inherited), Some(child)) =
                    (inherited, self.spaces.get_mut(&pid))
                {
                    // Seeded already (it existed at attach): the parent's fill the gaps.
                    for (start, piece) in inherited {
                        child.fill(start, piece.end, piece.since, &piece.info);
                    }
                }
            }
            MapChange::Unmap { start, end } => {
                if let Some(space) = self.spaces.get_mut(&pid) {
                    space.cut(start, end, ts_ns);
                }
            }
            MapChange::Remap {
                from,
                old_len,
                to,
                new_len,
                keep_old,
            } => {
                if let Some(space) = self.spaces.get_mut(&pid) {
                    space.remap(from, old_len, to, new_len, keep_old, ts_ns);
                }
            }
            MapChange::Exec => self.spaces.entry(pid).or_default().exec(ts_ns),
            MapChange::Exit => {
                if let Some(space) = self.spaces.get_mut(&pid) {
                    space.exited = true;
                }
            }
        }
    }

    /// The mapping that held `address` in `pid` at `at` (CLOCK_MONOTONIC ns), after applying
    /// the records up to then. None: no record says.
    pub fn lookup(&mut self, pid: u32, address: u64, at: u64) -> Option<Hit> {
        self.advance_to(at);
        self.spaces.get(&pid)?.lookup(address, Some(at))
    }

    /// The last mapping that held `address` in `pid` (for counts that carry no time), after
    /// applying every record.
    pub fn lookup_latest(&mut self, pid: u32, address: u64) -> Option<Hit> {
        self.settle();
        self.spaces.get(&pid)?.lookup(address, None)
    }

    /// What /proc/PID/maps showed at `read_at` for a live process, where no record covered an
    /// address it faulted on: mappings made without a record (mremap moves one) or before its
    /// events were open. Only the parts no record covers are added.
    pub fn fill(&mut self, pid: u32, maps: Vec<(u64, u64, MapInfo)>) {
        let space = self.spaces.entry(pid).or_default();
        for (start, end, info) in maps {
            space.fill(start, end, 0, &Arc::new(info));
        }
    }

    /// Whether /proc/PID may still be this process's (its exit was not seen).
    pub fn may_be_alive(&self, pid: u32) -> bool {
        self.spaces.get(&pid).is_none_or(|space| !space.exited)
    }

    /// The process exited and everything it did before was handled. Records up to `at` are
    /// applied first (a fork before the exit needs the parent's mappings).
    pub fn on_exit(&mut self, pid: u32, at: u64) {
        self.advance_to(at);
        match self.retention {
            Retention::UntilExit => self.forget_now(pid),
            Retention::UntilEnd => {
                if let Some(space) = self.spaces.get_mut(&pid) {
                    space.exited = true;
                    // Only the latest of each address is ever asked for at the end.
                    self.exited.retain(|&p| p != pid);
                    self.exited.push_back(pid);
                }
                while self.exited.len() > MAX_EXITED {
                    if let Some(oldest) = self.exited.pop_front() {
                        self.spaces.remove(&oldest);
                    }
                }
            }
        }
    }

    fn forget_now(&mut self, pid: u32) {
        self.spaces.remove(&pid);
        self.exited.retain(|&p| p != pid);
    }

    pub fn stats(&self) -> HistoryStats {
        let mut stats = HistoryStats {
            processes: self.spaces.len(),
            peak: self.peak,
            ..HistoryStats::default()
        };
        for space in self.spaces.values() {
            stats.live_pieces += space.live.len();
            stats.past_pieces += space.past.len();
        }
        stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: u64 = 4096;

    fn record(ts_ns: u64, pid: u32, change: MapChange) -> MapRecord {
        MapRecord { ts_ns, pid, change }
    }

    fn anon(start: u64, len: u64) -> MapChange {
        map(start, len, "//anon", 0, libc::PROT_READ | libc::PROT_WRITE)
    }

    fn map(start: u64, len: u64, path: &str, pgoff: u64, prot: i32) -> MapChange {
        MapChange::Map(NewMapping {
            start,
            len,
            pgoff,
            prot: prot as u32,
            flags: libc::MAP_PRIVATE as u32,
            dev: if path.starts_with('/') {
                (254, 0)
            } else {
                (0, 0)
            },
            ino: if path.starts_with('/') { 42 } else { 0 },
            path: path.into(),
        })
    }

    fn label(hit: Option<Hit>) -> String {
        hit.map_or("none".into(), |hit| hit.info.label.to_string())
    }

    #[test]
    fn newest_mapping_at_the_fault_time_wins_and_the_rest_stays() {
        let mut history = History::new(Retention::UntilExit, 0);
        history.add([
            record(
                10,
                1,
                map(0x10000, 4 * PAGE, "/bin/a", 0x1000, libc::PROT_READ),
            ),
            // A mapping over the middle page of it, later.
            record(20, 1, anon(0x11000, PAGE)),
        ]);
        assert_eq!(label(history.lookup(1, 0x11010, 15)), "/bin/a");
        assert_eq!(label(history.lookup(1, 0x11010, 25)), "[anon]");
        // Before anything was mapped there: unknown, not a neighbour.
        assert_eq!(label(history.lookup(1, 0x11010, 5)), "none");
        // The rest of the file mapping is still live, with its offsets.
        let right = history.lookup(1, 0x12008, 30).unwrap();
        assert_eq!(&*right.info.label, "/bin/a");
        assert_eq!(right.info.offset_of(0x12008), 0x1000 + 0x2008);
        assert_eq!((right.start, right.end), (0x12000, 0x14000));
        let left = history.lookup(1, 0x10000, 30).unwrap();
        assert_eq!((left.start, left.end), (0x10000, 0x11000));
        // Outside everything.
        assert_eq!(label(history.lookup(1, 0x20000, 30)), "none");
        assert_eq!(label(history.lookup(2, 0x10000, 30)), "none");
    }

    #[test]
    fn unmapped_memory_is_gone_from_then_on() {
        let mut history = History::new(Retention::UntilExit, 0);
        history.add([
            record(10, 1, anon(0x10000, 4 * PAGE)),
            record(
                20,
                1,
                MapChange::Unmap {
                    start: 0x11000,
                    end: 0x13000,
                },
            ),
        ]);
        assert_eq!(label(history.lookup(1, 0x12000, 15)), "[anon]");
        assert_eq!(label(history.lookup(1, 0x12000, 25)), "none");
        // The rest stays.
        assert_eq!(label(history.lookup(1, 0x10000, 25)), "[anon]");
        assert_eq!(label(history.lookup(1, 0x13000, 25)), "[anon]");
    }

    #[test]
    fn a_moved_mapping_keeps_its_file_offsets_and_grows_with_its_last_piece() {
        let mut history = History::new(Retention::UntilExit, 0);
        history.add([
            record(
                10,
                1,
                map(0x10000, 4 * PAGE, "/data/f", 0x3000, libc::PROT_READ),
            ),
            // Something was unmapped where it moves: no record of that but the move.
            record(12, 1, anon(0x50000, 8 * PAGE)),
            record(
                20,
                1,
                MapChange::Remap {
                    from: 0x10000,
                    old_len: 4 * PAGE,
                    to: 0x50000,
                    new_len: 6 * PAGE,
                    keep_old: false,
                },
            ),
        ]);
        let moved = history.lookup(1, 0x51008, 30).unwrap();
        assert_eq!(&*moved.info.label, "/data/f");
        assert_eq!(moved.info.offset_of(0x51008), 0x3000 + 0x1008);
        // Grown: the file's next pages; beyond the new length, what was there before.
        let grown = history.lookup(1, 0x55000, 30).unwrap();
        assert_eq!(grown.info.offset_of(0x55000), 0x3000 + 5 * PAGE);
        assert_eq!(label(history.lookup(1, 0x56000, 30)), "[anon]");
        // The old place is empty from the move on, and the new one was anonymous before it.
        assert_eq!(label(history.lookup(1, 0x10000, 15)), "/data/f");
        assert_eq!(label(history.lookup(1, 0x10000, 30)), "none");
        assert_eq!(label(history.lookup(1, 0x51008, 15)), "[anon]");
    }

    #[test]
    fn shrinking_in_place_unmaps_the_tail_and_dontunmap_keeps_the_old_range() {
        let mut history = History::new(Retention::UntilExit, 0);
        let remap = |from, old_len, to, new_len, keep_old| MapChange::Remap {
            from,
            old_len,
            to,
            new_len,
            keep_old,
        };
        history.add([
            record(10, 1, anon(0x10000, 4 * PAGE)),
            record(20, 1, remap(0x10000, 4 * PAGE, 0x10000, PAGE, false)),
            record(30, 1, remap(0x10000, PAGE, 0x40000, PAGE, true)),
        ]);
        assert_eq!(label(history.lookup(1, 0x12000, 25)), "none");
        assert_eq!(label(history.lookup(1, 0x10000, 25)), "[anon]");
        assert_eq!(label(history.lookup(1, 0x10000, 35)), "[anon]");
        assert_eq!(label(history.lookup(1, 0x40000, 35)), "[anon]");
    }

    #[test]
    fn fork_inherits_exec_starts_anew() {
        let mut history = History::new(Retention::UntilExit, 0);
        history.add([
            record(10, 1, anon(0x10000, PAGE)),
            record(20, 2, MapChange::Fork { parent: 1 }),
            // The parent maps over it after the fork: the child keeps its copy.
            record(30, 1, map(0x10000, PAGE, "/bin/a", 0, libc::PROT_READ)),
            record(40, 2, MapChange::Exec),
            record(50, 2, map(0x40000, PAGE, "/bin/b", 0, libc::PROT_EXEC)),
        ]);
        assert_eq!(label(history.lookup(2, 0x10000, 35)), "[anon]");
        assert_eq!(label(history.lookup(1, 0x10000, 35)), "/bin/a");
        // After the exec the child's old mappings are gone; a late fault from before it
        // still finds them.
        assert_eq!(label(history.lookup(2, 0x10000, 45)), "none");
        assert_eq!(label(history.lookup(2, 0x10000, 39)), "[anon]");
        assert_eq!(label(history.lookup(2, 0x40000, 55)), "/bin/b");
        // Latest: the new program's, else the last that held the address.
        assert_eq!(label(history.lookup_latest(2, 0x40000)), "/bin/b");
        assert_eq!(label(history.lookup_latest(2, 0x10000)), "[anon]");
    }

    #[test]
    fn records_wait_until_a_lookup_reaches_their_time() {
        let mut history = History::new(Retention::UntilExit, 0);
        history.add([record(10, 1, anon(0x10000, PAGE))]);
        history.add([record(30, 1, map(0x10000, PAGE, "/bin/a", 0, 0))]);
        assert_eq!(history.pending.len(), 2);
        assert_eq!(label(history.lookup(1, 0x10000, 20)), "[anon]");
        assert_eq!(history.pending.len(), 1);
        // A record that was in flight during the previous read goes before the later one.
        history.add([record(25, 1, map(0x10000, PAGE, "/bin/c", 0, 0))]);
        assert_eq!(label(history.lookup(1, 0x10000, 26)), "/bin/c");
        assert_eq!(label(history.lookup(1, 0x10000, 31)), "/bin/a");
    }

    /// A munmap's record waits in the event ring while the kernel's mapping records after it
    /// are read and applied (a summary applies them at once): it ends only what was mapped
    /// before it, at its own time.
    #[test]
    fn a_late_unmap_leaves_what_was_mapped_after_it() {
        let mut history = History::new(Retention::UntilEnd, 0);
        history.add([
            record(
                10,
                1,
                map(0x10000, 4 * PAGE, "/etc/cache", 0, libc::PROT_READ),
            ),
            // A library loaded where the cache was, after the cache was unmapped at 20.
            record(
                30,
                1,
                map(0x10000, 2 * PAGE, "/lib/plug.so", 0, libc::PROT_EXEC),
            ),
        ]);
        history.settle();
        let unmap = MapChange::Unmap {
            start: 0x10000,
            end: 0x14000,
        };
        history.add([record(20, 1, unmap)]);
        history.settle();
        assert_eq!(label(history.lookup(1, 0x10100, 35)), "/lib/plug.so");
        assert_eq!(label(history.lookup_latest(1, 0x10100)), "/lib/plug.so");
        // The cache ended at the unmap, where the library replaced it later as elsewhere.
        for address in [0x10100, 0x13000] {
            assert_eq!(label(history.lookup(1, address, 15)), "/etc/cache");
            assert_eq!(label(history.lookup(1, address, 25)), "none");
        }
        assert_eq!(label(history.lookup(1, 0x13000, 35)), "none");
    }

    #[test]
    fn a_late_mapping_holds_only_what_nothing_newer_covers() {
        let mut history = History::new(Retention::UntilExit, 0);
        history.add([
            record(30, 1, anon(0x11000, PAGE)),
            record(30, 1, anon(0x12000, PAGE)),
            record(
                40,
                1,
                MapChange::Unmap {
                    start: 0x12000,
                    end: 0x13000,
                },
            ),
        ]);
        history.settle();
        history.add([record(20, 1, map(0x10000, 4 * PAGE, "/bin/a", 0, 0))]);
        history.settle();
        for address in [0x10000, 0x11000, 0x12000, 0x13000] {
            assert_eq!(
                label(history.lookup(1, address, 25)),
                "/bin/a",
                "{address:#x}"
            );
        }
        assert_eq!(label(history.lookup(1, 0x10000, 45)), "/bin/a");
        assert_eq!(label(history.lookup(1, 0x13000, 45)), "/bin/a");
        assert_eq!(label(history.lookup(1, 0x11000, 45)), "[anon]");
        assert_eq!(label(history.lookup_latest(1, 0x11000)), "[anon]");
        // Mapped over at 30 and unmapped at 40.
        assert_eq!(label(history.lookup(1, 0x12000, 35)), "[anon]");
        assert_eq!(label(history.lookup(1, 0x12000, 45)), "none");
    }

    #[test]
    fn a_late_fork_or_exec_sees_the_address_space_of_its_time() {
        let mut history = History::new(Retention::UntilExit, 0);
        history.add([
            record(10, 1, anon(0x10000, PAGE)),
            // The parent maps over it after the fork, whose record comes late.
            record(30, 1, map(0x10000, PAGE, "/bin/a", 0, libc::PROT_READ)),
            record(10, 3, anon(0x10000, PAGE)),
            // The new program's mapping, whose exec's record comes late.
            record(30, 3, map(0x40000, PAGE, "/bin/new", 0, libc::PROT_EXEC)),
        ]);
        history.settle();
        history.add([
            record(20, 2, MapChange::Fork { parent: 1 }),
            record(20, 3, MapChange::Exec),
        ]);
        history.settle();
        assert_eq!(label(history.lookup(2, 0x10000, 35)), "[anon]");
        assert_eq!(label(history.lookup(1, 0x10000, 35)), "/bin/a");
        assert_eq!(label(history.lookup(3, 0x40000, 35)), "/bin/new");
        assert_eq!(label(history.lookup(3, 0x10000, 15)), "[anon]");
        assert_eq!(label(history.lookup(3, 0x10000, 25)), "none");
    }

    #[test]
    fn exit_forgets_or_keeps_by_retention() {
        let mut streaming = History::new(Retention::UntilExit, 0);
        streaming.add([
            record(10, 1, anon(0x10000, PAGE)),
            record(20, 2, MapChange::Fork { parent: 1 }),
        ]);
        // The fork is applied before the parent is forgotten.
        streaming.on_exit(1, 30);
        assert_eq!(label(streaming.lookup(2, 0x10000, 40)), "[anon]");
        assert_eq!(label(streaming.lookup(1, 0x10000, 40)), "none");

        let mut counting = History::new(Retention::UntilEnd, 0);
        for pid in 1..=(MAX_EXITED as u32 + 10) {
            counting.add([record(u64::from(pid), pid, anon(0x10000, PAGE))]);
            counting.on_exit(pid, u64::from(pid));
            assert!(!counting.may_be_alive(pid));
        }
        assert_eq!(counting.stats().processes, MAX_EXITED);
        assert_eq!(label(counting.lookup_latest(1, 0x10000)), "none");
        assert_eq!(
            label(counting.lookup_latest(MAX_EXITED as u32 + 10, 0x10000)),
            "[anon]"
        );
    }

    #[test]
    fn a_reused_pid_starts_from_its_parent_not_its_predecessor() {
        let mut history = History::new(Retention::UntilEnd, 0);
        history.add([
            record(10, 5, map(0x10000, PAGE, "/bin/old", 0, 0)),
            record(15, 5, MapChange::Exit),
            record(20, 6, anon(0x20000, PAGE)),
            record(30, 5, MapChange::Fork { parent: 6 }),
        ]);
        history.settle();
        assert_eq!(label(history.lookup_latest(5, 0x10000)), "none");
        assert_eq!(label(history.lookup_latest(5, 0x20000)), "[anon]");
        assert!(history.may_be_alive(5));
    }

    #[test]
    fn procfs_fills_only_what_no_record_covers() {
        let mut history = History::new(Retention::UntilExit, 0);
        history.add([record(10, 1, map(0x11000, PAGE, "/bin/a", 0, 0))]);
        let info = MapInfo::from_record(&NewMapping {
            start: 0x10000,
            len: 3 * PAGE,
            pgoff: 0,
            prot: 0,
            flags: 0,
            dev: (0, 0),
            ino: 0,
            path: "//anon".into(),
        });
        history.settle();
        history.fill(1, vec![(0x10000, 0x13000, info)]);
        assert_eq!(label(history.lookup(1, 0x10000, 20)), "[anon]");
        assert_eq!(label(history.lookup(1, 0x11000, 20)), "/bin/a");
        assert_eq!(label(history.lookup(1, 0x12fff, 20)), "[anon]");
        assert_eq!(history.stats().live_pieces, 3);
    }

    /// A process maps and unmaps 100 000 regions, in the same place (as mmap after munmap
    /// does) and each in a new place: the history stays within its bounds, and the region of
    /// each fault resolves at the fault's time.
    #[test]
    fn bounded_under_100_000_mappings() {
        for same_place in [true, false] {
            let mut history = History::new(Retention::UntilExit, 0);
            history.add([record(
                1,
                1,
                map(0x1000, PAGE, "/bin/a", 0, libc::PROT_EXEC),
            )]);
            for i in 0..100_000u64 {
                let start = if same_place {
                    0x7000_0000
                } else {
                    0x7000_0000 + i * 2 * PAGE
                };
                let ts = 10 + i * 10;
                history.add([record(ts, 1, anon(start, PAGE))]);
                // The fault in it, a little later.
                assert_eq!(label(history.lookup(1, start + 8, ts + 5)), "[anon]", "{i}");
                let stats = history.stats();
                assert!(stats.live_pieces <= MAX_LIVE + 1, "{stats:?}");
                assert!(stats.past_pieces <= MAX_PAST, "{stats:?}");
            }
            // The code mapping was never dropped.
            assert_eq!(label(history.lookup(1, 0x1000, u64::MAX - 1)), "/bin/a");
            let stats = history.stats();
            assert!(stats.peak <= MAX_LIVE + 1 + MAX_PAST, "{stats:?}");
            // The bounds were reached, not merely respected.
            if same_place {
                assert_eq!(stats.past_pieces, MAX_PAST, "{stats:?}");
            } else {
                assert!(stats.live_pieces > MAX_LIVE / 2, "{stats:?}");
            }
        }
    }

    #[test]
    fn late_fault_finds_the_mapping_replaced_after_it() {
        let mut history = History::new(Retention::UntilExit, 0);
        for i in 0..100u64 {
            history.add([record(10 + i * 10, 1, anon(0x10000 + (i % 2) * PAGE, PAGE))]);
        }
        history.settle();
        // A fault at time 15, in the first mapping, arriving after all 100 records.
        let hit = history.lookup(1, 0x10000, 15).unwrap();
        assert_eq!((hit.start, hit.end), (0x10000, 0x11000));
        assert!(history.lookup(1, 0x11000, 15).is_none());
    }
}
