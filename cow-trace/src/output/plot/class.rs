//! The kinds of fault the plot tells apart, and the part of a fault it keeps.
use plotters::style::RGBColor;

use crate::event::{Access, Fault, Outcome};

/// What kind of fault, as the plot tells them apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PlotClass {
    /// A write to a present page: the copy-on-write break.
    Cow,
    /// Any other write (first touch of a page).
    OtherWrite,
    /// Reads and instruction fetches.
    Read,
    /// The kernel waited for I/O.
    Major,
    /// A completion whose entry was not seen.
    Unknown,
}

pub(super) const CLASSES: usize = 5;

impl PlotClass {
    pub const ALL: [PlotClass; CLASSES] = [
        PlotClass::Cow,
        PlotClass::OtherWrite,
        PlotClass::Read,
        PlotClass::Major,
        PlotClass::Unknown,
    ];

    /// None for a fault that never completed or an attempt that was retried: the kernel
    /// did not count it.
    pub fn of(fault: &Fault) -> Option<PlotClass> {
        match fault.outcome {
            Outcome::Incomplete | Outcome::Retry => None,
            Outcome::Major => Some(PlotClass::Major),
            Outcome::Minor if fault.is_cow() == Some(true) => Some(PlotClass::Cow),
            Outcome::Minor => Some(match fault.access() {
                Some(Access::Write) => PlotClass::OtherWrite,
                Some(Access::Read | Access::Exec) => PlotClass::Read,
                None => PlotClass::Unknown,
            }),
        }
    }

    /// The legend's text.
    pub fn label(self) -> &'static str {
        match self {
            PlotClass::Cow => "COW writes",
            PlotClass::OtherWrite => "other writes",
            PlotClass::Read => "reads and exec",
            PlotClass::Major => "major",
            PlotClass::Unknown => "access unknown",
        }
    }

    pub(super) fn index(self) -> usize {
        self as usize
    }

    pub(super) fn color(self) -> RGBColor {
        match self {
            PlotClass::Cow => RGBColor(214, 39, 40),
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
    /// For a COW fault: whether the kernel copied the page (false: reused it); None if unknown.
    pub copied: Option<bool>,
}

impl PlotFault {
    /// None for a fault that never completed.
    pub fn from_fault(fault: &Fault) -> Option<PlotFault> {
        Some(PlotFault {
            ts_ns: fault.ts_ns,
            pid: fault.pid,
            address: fault.address,
            class: PlotClass::of(fault)?,
            copied: fault.copied(),
        })
    }
}
