//! The kinds of fault the plot tells apart, and the part of a fault it keeps.
use plotters::style::RGBColor;

use crate::event::{Access, Fault, Outcome};

/// What kind of fault, as the plot tells them apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FaultClass {
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

impl FaultClass {
    pub const ALL: [FaultClass; CLASSES] = [
        FaultClass::Cow,
        FaultClass::OtherWrite,
        FaultClass::Read,
        FaultClass::Major,
        FaultClass::Unknown,
    ];

    /// None for a fault that never completed or an attempt that was retried: the kernel
    /// did not count it.
    pub fn of(fault: &Fault) -> Option<FaultClass> {
        match fault.outcome {
            Outcome::Incomplete | Outcome::Retry => None,
            Outcome::Major => Some(FaultClass::Major),
            Outcome::Minor if fault.is_cow() == Some(true) => Some(FaultClass::Cow),
            Outcome::Minor => Some(match fault.access() {
                Some(Access::Write) => FaultClass::OtherWrite,
                Some(Access::Read | Access::Exec) => FaultClass::Read,
                None => FaultClass::Unknown,
            }),
        }
    }

    /// The legend's text.
    pub fn label(self) -> &'static str {
        match self {
            FaultClass::Cow => "COW writes",
            FaultClass::OtherWrite => "other writes",
            FaultClass::Read => "reads and exec",
            FaultClass::Major => "major",
            FaultClass::Unknown => "access unknown",
        }
    }

    pub(super) fn index(self) -> usize {
        self as usize
    }

    pub(super) fn color(self) -> RGBColor {
        match self {
            FaultClass::Cow => RGBColor(214, 39, 40),
            FaultClass::OtherWrite => RGBColor(255, 127, 14),
            FaultClass::Read => RGBColor(31, 119, 180),
            FaultClass::Major => RGBColor(148, 103, 189),
            FaultClass::Unknown => RGBColor(127, 127, 127),
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
    pub class: FaultClass,
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
            class: FaultClass::of(fault)?,
            copied: fault.copied(),
        })
    }
}
