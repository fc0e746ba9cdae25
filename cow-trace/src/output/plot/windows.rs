//! Snapshot windows: when a forked child lived that shared its parent's memory, as Redis's
//! BGSAVE child does. A child that execs shares nothing with its parent from then on: it is
//! no snapshot, and is not shaded.
use std::collections::HashMap;

use super::{MAX_WINDOWS, class::PlotClass};

/// One child's life, and what its parent did meanwhile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Window {
    pub(super) parent: u32,
    pub(super) child: u32,
    /// CLOCK_MONOTONIC ns of the fork, and of the exit (None: still alive at the end).
    pub(super) opened_ns: u64,
    pub(super) closed_ns: Option<u64>,
    /// The parent's faults in the window (the kernel's "while child N ran"), and its copies.
    pub(super) parent_faults: u64,
    pub(super) parent_copies: u64,
}

/// The windows of children that have not exec'd; at most `MAX_WINDOWS`.
#[derive(Clone, Debug, Default)]
pub(super) struct Windows {
    by_child: HashMap<u32, Window>,
}

impl Windows {
    pub(super) fn fork(&mut self, parent: u32, child: u32, ts_ns: u64) {
        if self.by_child.len() >= MAX_WINDOWS && !self.evict() {
            return;
        }
        self.by_child.insert(
            child,
            Window {
                parent,
                child,
                opened_ns: ts_ns,
                closed_ns: None,
                parent_faults: 0,
                parent_copies: 0,
            },
        );
    }

    pub(super) fn exec(&mut self, pid: u32) {
        self.by_child.remove(&pid);
    }

    pub(super) fn exit(&mut self, pid: u32, ts_ns: u64) {
        if let Some(window) = self.by_child.get_mut(&pid) {
            window.closed_ns.get_or_insert(ts_ns);
        }
    }

    /// Counts a fault of `pid` that fell in the window of child `window` (0: none).
    pub(super) fn fault(&mut self, pid: u32, window: u32, class: PlotClass) {
        if window == 0 {
            return;
        }
        if let Some(window) = self.by_child.get_mut(&window)
            && window.parent == pid
        {
            window.parent_faults += 1;
            if class == PlotClass::CowCopied {
                window.parent_copies += 1;
            }
        }
    }

    /// The windows to shade, in time order: those in which the parent faulted, but not those
    /// whose parent copied less than a hundredth of what the costliest one's did (a shell's
    /// subshell beside a real snapshot); of them the `limit` with the most copies (then
    /// faults) by the parent.
    pub(super) fn shaded(&self, limit: usize) -> Vec<&Window> {
        let most = self
            .by_child
            .values()
            .map(|w| w.parent_copies)
            .max()
            .unwrap_or(0);
        let mut windows: Vec<&Window> = self
            .by_child
            .values()
            .filter(|w| w.parent_faults > 0 && w.parent_copies * 100 >= most)
            .collect();
        windows.sort_by_key(|w| {
            (
                std::cmp::Reverse((w.parent_copies, w.parent_faults)),
                w.opened_ns,
            )
        });
        windows.truncate(limit);
        windows.sort_by_key(|w| (w.opened_ns, w.child));
        windows
    }

    /// Makes room: drops the ended window the parent faulted least in. False if every window
    /// is still open.
    fn evict(&mut self) -> bool {
        let least = self
            .by_child
            .values()
            .filter(|w| w.closed_ns.is_some())
            .min_by_key(|w| (w.parent_copies, w.parent_faults, w.opened_ns))
            .map(|w| w.child);
        match least {
            Some(child) => self.by_child.remove(&child).is_some(),
            None => false,
        }
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.by_child.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_child_is_shaded_an_execd_one_is_not() {
        let mut windows = Windows::default();
        // A shell forks a child that execs; a server forks a snapshot child and writes.
        windows.fork(10, 11, 100);
        windows.fault(10, 11, PlotClass::CowCopied);
        windows.exec(11);
        windows.fork(20, 21, 200);
        for _ in 0..3 {
            windows.fault(20, 21, PlotClass::CowCopied);
        }
        windows.fault(20, 21, PlotClass::CowReused);
        // The child's own faults are not its parent's.
        windows.fault(21, 21, PlotClass::CowCopied);
        windows.exit(21, 300);
        // A child during whose life the parent did nothing.
        windows.fork(20, 22, 400);
        // A subshell that took a page where the snapshot took 300.
        windows.fork(30, 31, 500);
        windows.fault(30, 31, PlotClass::CowCopied);
        let shaded = windows.shaded(8);
        assert_eq!(shaded.len(), 2, "{shaded:?}");
        for _ in 0..297 {
            windows.fault(20, 21, PlotClass::CowCopied);
        }
        let shaded = windows.shaded(8);
        assert_eq!(shaded.len(), 1, "{shaded:?}");
        assert_eq!(
            shaded[0],
            &Window {
                parent: 20,
                child: 21,
                opened_ns: 200,
                closed_ns: Some(300),
                parent_faults: 301,
                parent_copies: 300,
            }
        );
    }

    #[test]
    fn bounded_keeping_the_costliest() {
        let mut windows = Windows::default();
        for child in 1..=(MAX_WINDOWS as u32 + 100) {
            windows.fork(1, child + 1, u64::from(child));
            if child == 5 {
                windows.fault(1, child + 1, PlotClass::CowCopied);
            }
            windows.exit(child + 1, u64::from(child) + 1);
        }
        assert_eq!(windows.len(), MAX_WINDOWS);
        let shaded = windows.shaded(1);
        assert_eq!(shaded[0].child, 6, "the one with a copy stays");
    }
}
