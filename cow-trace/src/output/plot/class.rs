//! The kinds of fault the plot tells apart, and the part of a fault it keeps.
use plotters::style::RGBColor;

use crate::event::{Access, CowOutcome, Fault, Outcome};

/// What kind of fault, as the plot tells them apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PlotClass {
    /// A write that copied a page: a write to a present page (the copy-on-write break) that
    /// copied a shared page, or a first write that copied a file's page into a private mapping.
    CowCopied,
    /// One that kept the page: its last sharer. A fault, but no copy.
    CowReused,
    /// One on the shared zero page: a fresh zeroed page, no copy.
    CowZeroFill,
    /// One whose outcome was not seen.
    CowUnknown,
    /// Any other write (first touch of a page).
    OtherWrite,
    /// Reads and instruction fetches.
    Read,
    /// The kernel waited for I/O.
    Major,
    /// A completion whose entry was not seen.
    Unknown,
}

pub(super) const CLASSES: usize = 8;

impl PlotClass {
    pub const ALL: [PlotClass; CLASSES] = [
        PlotClass::CowCopied,
        PlotClass::CowReused,
        PlotClass::CowZeroFill,
        PlotClass::CowUnknown,
        PlotClass::OtherWrite,
        PlotClass::Read,
        PlotClass::Major,
        PlotClass::Unknown,
    ];

    /// None for a fault that never completed or an attempt that was retried: the kernel
    /// did not count it. A copy-on-write fault is one whatever else it was, so the copies
    /// drawn are the summary's.
    pub fn of(fault: &Fault) -> Option<PlotClass> {
        match fault.outcome {
            Outcome::Incomplete | Outcome::Retry => None,
            _ if fault.class.is_file_copy() => Some(PlotClass::CowCopied),
            _ if fault.is_cow() == Some(true) => Some(match fault.cow_outcome() {
                Some(CowOutcome::Copied) => PlotClass::CowCopied,
                Some(CowOutcome::Reused) => PlotClass::CowReused,
                Some(CowOutcome::ZeroFilled) => PlotClass::CowZeroFill,
                None => PlotClass::CowUnknown,
            }),
            Outcome::Major => Some(PlotClass::Major),
            Outcome::Minor => Some(match fault.access() {
                Some(Access::Write) => PlotClass::OtherWrite,
                Some(Access::Read | Access::Exec) => PlotClass::Read,
                None => PlotClass::Unknown,
            }),
        }
    }

    /// A copy-on-write fault: a write-protect fault, copied or not, or a first write that
    /// copied a file's page into a private mapping.
    pub fn is_cow(self) -> bool {
        matches!(
            self,
            PlotClass::CowCopied
                | PlotClass::CowReused
                | PlotClass::CowZeroFill
                | PlotClass::CowUnknown
        )
    }

    /// The legend's text.
    pub fn label(self) -> &'static str {
        match self {
            PlotClass::CowCopied => "COW writes: copied",
            PlotClass::CowReused => "COW writes: reused (no copy)",
            PlotClass::CowZeroFill => "COW writes: zero fill (no copy)",
            PlotClass::CowUnknown => "COW writes: outcome unknown",
            PlotClass::OtherWrite => "other writes",
            PlotClass::Read => "reads and exec",
            PlotClass::Major => "major",
            PlotClass::Unknown => "access unknown",
        }
    }

    pub(super) fn index(self) -> usize {
        self as usize
    }

    /// Copies in strong red; the COW faults that copy nothing lighter.
    pub(super) fn color(self) -> RGBColor {
        match self {
            PlotClass::CowCopied => RGBColor(214, 39, 40),
            PlotClass::CowReused => RGBColor(255, 152, 150),
            PlotClass::CowZeroFill => RGBColor(197, 176, 213),
            PlotClass::CowUnknown => RGBColor(140, 86, 75),
            PlotClass::OtherWrite => RGBColor(255, 127, 14),
            PlotClass::Read => RGBColor(31, 119, 180),
            PlotClass::Major => RGBColor(148, 103, 189),
            PlotClass::Unknown => RGBColor(127, 127, 127),
        }
    }
}

/// One fault, as much of it as the plot needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlotFault {
    /// CLOCK_MONOTONIC ns.
    pub ts_ns: u64,
    pub pid: u32,
    pub address: u64,
    pub class: PlotClass,
    /// The child whose snapshot window the fault fell in, or 0.
    pub window: u32,
}

impl PlotFault {
    /// None for a fault that never completed.
    pub fn from_fault(fault: &Fault) -> Option<PlotFault> {
        Some(PlotFault {
            ts_ns: fault.ts_ns,
            pid: fault.pid,
            address: fault.address,
            class: PlotClass::of(fault)?,
            window: fault.window,
        })
    }
}
