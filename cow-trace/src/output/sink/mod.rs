//! Where decoded faults go: one formatter per output format.
mod json;
mod stap;
mod text;

use std::io::{self, Write};

use chrono::{DateTime, TimeZone, Utc};

use crate::{
    cli::Format,
    clock,
    event::{Fault, ProcessEvent},
    output::{interval::Period, summary::Summary},
};

pub use json::JsonSink;
pub use stap::StapSink;
pub use text::TextSink;

/// Formats faults onto a writer.
pub trait Sink {
    /// Called once before the first fault.
    fn begin(&mut self) -> io::Result<()> {
        Ok(())
    }
    fn fault(&mut self, fault: &Fault) -> io::Result<()>;
    /// A traced process forked a child or exited. Formats without such lines ignore it.
    fn process(&mut self, _event: &ProcessEvent) -> io::Result<()> {
        Ok(())
    }
    /// JSON: the totals belong in the output itself, not on stderr.
    fn is_machine_readable(&self) -> bool {
        false
    }

    /// Every --interval: the counts of that interval only (`Intervals::next`).
    fn interval(&mut self, period: &Period, counts: &Summary) -> io::Result<()>;

    /// Before the totals, when interval reports came first: what the totals cover. Formats
    /// whose totals are told apart by their own names (JSON) write nothing.
    fn totals_header(&mut self, _period: &Period) -> io::Result<()> {
        Ok(())
    }

    /// Writes the totals: once, at the end.
    fn summary(&mut self, summary: &Summary) -> io::Result<()>;
    fn flush(&mut self) -> io::Result<()>;
}

/// `backend` names the backend in machine-readable output.
pub fn new(
    format: Format,
    out: Box<dyn Write>,
    clock: WallClock,
    backend: &'static str,
) -> Box<dyn Sink> {
    match format {
        Format::Text => Box::new(TextSink::new(out, clock)),
        Format::Stap => Box::new(StapSink::new(out, clock)),
        Format::Json => Box::new(JsonSink::new(out, clock, backend)),
    }
}

/// Formats times as `PREFIX.uuuuuu` (microseconds truncated), the prefix a chrono format of
/// the time in a zone. The prefix is formatted once per second and reused: the time-zone
/// lookup and the format's parsing, per line, cost the reader more than the rest of a line.
pub struct SecondsCache<Z: TimeZone> {
    zone: Z,
    format: &'static str,
    /// The last second formatted (Unix time), and its prefix.
    second: Option<(i64, String)>,
}

impl<Z: TimeZone> SecondsCache<Z> {
    pub fn new(zone: Z, format: &'static str) -> SecondsCache<Z> {
        SecondsCache {
            zone,
            format,
            second: None,
        }
    }
}

impl<Z: TimeZone> SecondsCache<Z>
where
    Z::Offset: std::fmt::Display,
{
    pub fn of(&mut self, time: DateTime<Utc>) -> CachedTime<'_> {
        CachedTime {
            micros: time.timestamp_subsec_micros(),
            prefix: self.prefix(time),
        }
    }

    /// The prefix alone: `time` to the second.
    pub fn prefix(&mut self, time: DateTime<Utc>) -> &str {
        let second = time.timestamp();
        if self
            .second
            .as_ref()
            .is_none_or(|(shown, _)| *shown != second)
        {
            let prefix = time
                .with_timezone(&self.zone)
                .format(self.format)
                .to_string();
            self.second = Some((second, prefix));
        }
        let (_, prefix) = self.second.as_ref().expect("set just above");
        prefix
    }
}

/// A time from [`SecondsCache`]: its second's prefix, then its microseconds.
pub struct CachedTime<'a> {
    prefix: &'a str,
    micros: u32,
}

impl std::fmt::Display for CachedTime<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{:06}", self.prefix, self.micros)
    }
}

/// Turns the kernel's CLOCK_MONOTONIC timestamps into wall-clock time.
#[derive(Clone, Copy, Debug)]
pub struct WallClock {
    /// realtime - monotonic, in ns, sampled at start.
    offset_ns: i128,
}

impl WallClock {
    pub fn now() -> WallClock {
        let realtime = clock::realtime_ns();
        let monotonic = i128::from(clock::monotonic_ns());
        WallClock {
            offset_ns: realtime - monotonic,
        }
    }

    #[cfg(test)]
    pub fn with_offset(offset_ns: i128) -> WallClock {
        WallClock { offset_ns }
    }

    pub fn to_utc(self, monotonic_ns: u64) -> chrono::DateTime<chrono::Utc> {
        let ns = i128::from(monotonic_ns) + self.offset_ns;
        chrono::DateTime::from_timestamp_nanos(ns as i64)
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    use std::{
        cell::RefCell,
        io::{self, Write},
        rc::Rc,
    };

    use crate::event::{Fault, FaultClass, Outcome};

    /// A writer whose bytes a test can read back.
    #[derive(Clone, Default)]
    pub struct Captured(pub Rc<RefCell<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.borrow_mut().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        pub fn text(&self) -> String {
            String::from_utf8(self.0.borrow().clone()).unwrap()
        }
    }

    /// Sets a fault's error code (None: unknown) and outcome, and the class they imply.
    pub fn reclassify(fault: &mut Fault, error_code: Option<u64>, outcome: Outcome) {
        use cow_trace_common::flags;
        fault.error_code = error_code;
        fault.outcome = outcome;
        let mut record_flags = if error_code.is_none() {
            flags::NO_ENTRY
        } else {
            0
        };
        if outcome == Outcome::Major {
            record_flags |= flags::MAJOR;
        }
        fault.class = FaultClass::of(
            outcome == Outcome::Incomplete,
            record_flags,
            error_code.unwrap_or(0),
        );
    }

    /// A first write to a page of a private file mapping not mapped yet (user, write, not
    /// present), major as `outcome` says, which copied the file's page.
    pub fn file_copy_fault(outcome: Outcome) -> Fault {
        use cow_trace_common::flags;
        let mut fault = article_fault();
        reclassify(&mut fault, Some(0x6), outcome);
        let mut record_flags = flags::COPY_KNOWN | flags::PAGE_ALLOCATED;
        if outcome == Outcome::Major {
            record_flags |= flags::MAJOR;
        }
        fault.class = FaultClass::of(false, record_flags, 0x6)
            .with_mapping(cow_trace_common::MappingKind::PrivateFile);
        fault
    }

    /// The article's first COW fault: Sun May 10 11:35:00 2020 UTC, pid 12420.
    pub fn article_fault() -> Fault {
        Fault {
            ts_ns: 1_589_110_500_000_000_000,
            pid: 12420,
            tid: 12420,
            comm: "cow".into(),
            address: 0x7ffe_0cde_fb40,
            ip: 0x401196,
            error_code: Some(0x7),
            outcome: Outcome::Minor,
            latency_ns: Some(1500),
            kernel_mode: false,
            class: FaultClass::from_bits(
                cow_trace_common::class::WRITE | cow_trace_common::class::WRITE_PROTECT,
            ),
            window: 0,
            vm_fault: 0,
            stack_id: None,
            copied_stack: false,
            mapping: None,
            symbol: None,
            stack: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::FixedOffset;

    #[test]
    fn times_match_chronos_format_across_seconds() {
        // The second is formatted once and reused: each line must still show what a full
        // format of its own time shows, through second boundaries and back in time.
        let tokyo = FixedOffset::east_opt(9 * 3600).unwrap();
        let mut column = SecondsCache::new(tokyo, "%Y-%m-%d %H:%M:%S");
        let clock = WallClock::with_offset(1_700_000_000_000_000_000);
        for ts_ns in [
            5_999_999_999,
            6_000_000_000,
            6_000_000_999,
            6_000_001_000,
            6_999_999_500,
            7_000_000_001,
            5_500_000_000,
            3_600_000_000_123,
        ] {
            let time = clock.to_utc(ts_ns);
            assert_eq!(
                column.of(time).to_string(),
                time.with_timezone(&tokyo)
                    .format("%Y-%m-%d %H:%M:%S%.6f")
                    .to_string(),
                "at {ts_ns} ns"
            );
        }
    }

    #[test]
    fn wall_clock_adds_the_offset() {
        let clock = WallClock::with_offset(1_000_000_000);
        assert_eq!(clock.to_utc(0).timestamp(), 1);
    }
}
