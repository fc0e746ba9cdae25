//! What cow-trace saw, from its JSON lines: the parent's faults before, during and after the
//! snapshot child's life, and the child's own.
use std::{
    collections::HashSet,
    fs,
    io::{BufRead, BufReader},
    path::Path,
};

use anyhow::Context as _;

use super::PAGE;

/// Fault counts of one process over one phase.
#[derive(Default, Debug)]
pub struct Tally {
    pub faults: u64,
    /// Write-protect faults: copy-on-write breaks.
    pub cow: u64,
    /// Write-protect faults that copied the page, as cow-trace reports them.
    pub copied: u64,
    /// Of those, copies of pages the parent faulted in after the fork: a read maps the shared
    /// zero page, the first write then allocates. Never shared with the child.
    pub zero_fills: u64,
    pub reused: u64,
    /// Writes to pages not there before: new pages.
    pub new_pages: u64,
    /// Of those, first writes that copied a file's page into a private mapping: copies in
    /// cow-trace's counts, yet no page of the child's when the parent makes them.
    pub file_copies: u64,
}

impl Tally {
    fn add(&mut self, fault: &Fault, zero_fill: bool) {
        self.faults += 1;
        match (fault.cow, fault.copied) {
            (Some(true), Some(true)) => {
                self.copied += 1;
                self.zero_fills += u64::from(zero_fill);
            }
            (Some(true), Some(false)) => self.reused += 1,
            (Some(false), copied) if fault.write => {
                self.new_pages += 1;
                self.file_copies += u64::from(copied == Some(true));
            }
            _ => {}
        }
        self.cow += u64::from(fault.cow == Some(true));
    }

    /// Copies of pages shared with the child.
    pub fn shared_copies(&self) -> u64 {
        self.copied - self.zero_fills
    }
}

struct Fault {
    pid: u32,
    ts_ns: u64,
    page: u64,
    window: Option<u32>,
    write: bool,
    cow: Option<bool>,
    copied: Option<bool>,
}

impl Fault {
    fn parse(line: &str) -> Option<Fault> {
        let address = raw(line, "address")?.trim_start_matches("0x");
        Some(Fault {
            pid: number(line, "pid")? as u32,
            ts_ns: number(line, "ts_ns")?,
            page: u64::from_str_radix(address, 16).ok()? / PAGE,
            window: number(line, "window").map(|w| w as u32),
            write: raw(line, "access") == Some("w"),
            cow: flag(line, "cow"),
            copied: flag(line, "copied"),
        })
    }
}

/// The parent's faults before the fork, during the child's life and after its exit, and the
/// child's own.
#[derive(Default)]
pub struct Trace {
    pub parent: Phases,
    pub child: Tally,
    /// copied in cow-trace's own window line, to check the tally against.
    pub window_copied: Option<u64>,
    pub lost: u64,
}

#[derive(Default, Debug)]
pub struct Phases {
    pub before: Tally,
    pub during: Tally,
    pub after: Tally,
}

impl Trace {
    pub fn read(path: &Path, parent: u32, child: u32) -> anyhow::Result<Trace> {
        let file = fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
        let mut trace = Trace::default();
        let mut fork_ns = None;
        let mut parent_faults = Vec::new();
        for line in BufReader::new(file).lines() {
            let line = &line.with_context(|| format!("reading {}", path.display()))?;
            match raw(line, "event") {
                Some("fault") => match Fault::parse(line) {
                    Some(f) if f.pid == child => trace.child.add(&f, false),
                    Some(f) if f.pid == parent => parent_faults.push(f),
                    _ => {}
                },
                Some("fork") if number(line, "child") == Some(child.into()) => {
                    fork_ns = number(line, "ts_ns");
                }
                Some("window") if number(line, "child") == Some(child.into()) => {
                    trace.window_copied = number(line, "copied");
                }
                Some("totals") => trace.lost = number(line, "lost").unwrap_or(0),
                _ => {}
            }
        }
        let fork_ns = fork_ns.context("cow-trace saw no fork of the snapshot child")?;
        trace.parent = phases(parent_faults, child, fork_ns);
        Ok(trace)
    }
}

/// Splits the parent's faults by the child's window (outside it, by the clock against the
/// fork), telling zero fills from copies of shared pages by each page's history.
fn phases(mut faults: Vec<Fault>, child: u32, fork_ns: u64) -> Phases {
    // The ring buffer is ordered per CPU; a page's history needs time order.
    faults.sort_by_key(|f| f.ts_ns);
    let mut phases = Phases::default();
    let mut faulted_in = HashSet::new();
    for fault in &faults {
        let phase = if fault.window == Some(child) {
            &mut phases.during
        } else if fault.ts_ns < fork_ns {
            &mut phases.before
        } else {
            &mut phases.after
        };
        let after_fork = fault.window == Some(child) || fault.ts_ns >= fork_ns;
        if after_fork && fault.cow == Some(false) {
            faulted_in.insert(fault.page);
        }
        phase.add(fault, faulted_in.contains(&fault.page));
    }
    phases
}

/// The text of `"key":VALUE` in one of cow-trace's flat JSON lines (a string without quotes).
fn raw<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let start = line.find(&format!("\"{key}\":"))? + key.len() + 3;
    let rest = &line[start..];
    match rest.strip_prefix('"') {
        Some(string) => string.split('"').next(),
        None => rest.split([',', '}']).next(),
    }
}

fn number(line: &str, key: &str) -> Option<u64> {
    raw(line, key)?.parse().ok()
}

fn flag(line: &str, key: &str) -> Option<bool> {
    raw(line, key)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAULT: &str = r#"{"v":1,"event":"fault","comm":"a,\"pid\":9","backend":"tracepoint","time":"t","ts_ns":5,"pid":7,"tid":7,"address":"0x7f0000001010","ip":"0x1","access":"w","type":"MINOR","cow":true,"copied":false,"window":8,"kernel_mode":false,"error_code":7,"latency_ns":null}"#;

    #[test]
    fn fields_of_a_json_line() {
        assert_eq!(raw(FAULT, "event"), Some("fault"));
        assert_eq!(number(FAULT, "pid"), Some(7));
        assert_eq!(flag(FAULT, "copied"), Some(false));
        assert_eq!(number(FAULT, "latency_ns"), None);
        let fault = Fault::parse(FAULT).unwrap();
        assert_eq!((fault.page, fault.window), (0x7f0000001, Some(8)));
        assert!(fault.write && fault.cow == Some(true));
    }

    #[test]
    fn zero_fills_are_told_from_copies_of_shared_pages() {
        let fault = |ts_ns, page, window, cow, copied| Fault {
            pid: 1,
            ts_ns,
            page,
            window,
            write: true,
            cow: Some(cow),
            copied: Some(copied),
        };
        let faults = vec![
            // Page 10: read in after the fork, then written: a zero fill (listed out of order).
            fault(12, 10, Some(2), true, true),
            fault(11, 10, Some(2), false, false),
            // Page 11: shared at the fork, copied in the window and after the exit.
            fault(13, 11, Some(2), true, true),
            fault(30, 12, None, true, true),
            // Page 13: read in before the fork: shared, so a later copy is a real one.
            fault(5, 13, None, false, false),
            fault(14, 13, Some(2), true, true),
            // Page 14: a first write that copied a file's page, in the window: a new page of
            // the parent's own, no copy of a page shared with the child.
            fault(15, 14, Some(2), false, true),
        ];
        let phases = phases(faults, 2, 10);
        assert_eq!((phases.before.faults, phases.before.copied), (1, 0));
        assert_eq!((phases.during.copied, phases.during.zero_fills), (3, 1));
        assert_eq!((phases.during.new_pages, phases.during.file_copies), (2, 1));
        assert_eq!((phases.after.copied, phases.after.zero_fills), (1, 0));
    }
}
