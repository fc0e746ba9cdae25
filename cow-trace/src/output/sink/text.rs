//! The default human format: aligned columns, one line per fault.
use std::{
    fmt::Write as _,
    io::{self, Write},
};

use chrono::{Local, TimeZone};

use super::{SecondsCache, Sink, Summary, WallClock};
use crate::event::{Change, Fault, ProcessEvent};
use crate::output::{
    format::{HumanNs, display_width},
    interval::Period,
};

/// Times are shown in the local time zone (`TZ`, else /etc/localtime), as `date` shows them.
pub struct TextSink<Z: TimeZone = Local> {
    out: Box<dyn Write>,
    clock: WallClock,
    /// The TIME column: `HH:MM:SS.uuuuuu` in the zone.
    times: SecondsCache<Z>,
}

impl TextSink {
    pub fn new(out: Box<dyn Write>, clock: WallClock) -> TextSink {
        TextSink::in_zone(out, clock, Local)
    }
}

impl<Z: TimeZone> TextSink<Z> {
    pub fn in_zone(out: Box<dyn Write>, clock: WallClock, zone: Z) -> TextSink<Z> {
        TextSink {
            out,
            clock,
            times: SecondsCache::new(zone, "%H:%M:%S"),
        }
    }
}

/// The fault's columns after the time, written straight into the output (no String per
/// fault). Padded here rather than by the formatter's width, which writes its fill one
/// character at a time: that was the reader's dearest step per line after the time.
pub struct Columns<'a>(pub &'a Fault);

impl std::fmt::Display for Columns<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let fault = self.0;
        let access = fault.access().map_or('?', |a| a.letter());
        // A first write that copied a file's page into a private mapping is a copy too.
        let cow = match (fault.is_cow(), fault.cow_outcome()) {
            (Some(_), Some(outcome)) => outcome.column(),
            (Some(true), None) => "cow",
            (Some(false), None) => "-",
            (None, _) => "?",
        };
        let mode = if fault.kernel_mode { 'k' } else { 'u' };
        let mut number = itoa::Buffer::new();
        left(f, fault.comm.as_str(), 16)?;
        f.write_char(' ')?;
        right(f, number.format(fault.pid), 7)?;
        f.write_char(' ')?;
        right(f, number.format(fault.tid), 7)?;
        f.write_char(' ')?;
        f.write_char(access)?;
        f.write_char(mode)?;
        f.write_char(' ')?;
        left(f, fault.outcome.label(), 10)?;
        f.write_char(' ')?;
        left(f, cow, 5)?;
        f.write_char(' ')?;
        f.write_str(hex18(fault.address, &mut [0; 18]))?;
        f.write_char(' ')?;
        f.write_str(hex18(fault.ip, &mut [0; 18]))?;
        f.write_char(' ')?;
        match fault.latency_ns {
            Some(ns) => right(f, HumanNs(ns).text(&mut [0; 32]), 8),
            None => right(f, "-", 8),
        }
    }
}

/// `text`, then spaces up to `width` columns.
fn left(f: &mut std::fmt::Formatter<'_>, text: &str, width: usize) -> std::fmt::Result {
    f.write_str(text)?;
    spaces(f, width.saturating_sub(display_width(text)))
}

/// Spaces up to `width` characters, then `text`.
fn right(f: &mut std::fmt::Formatter<'_>, text: &str, width: usize) -> std::fmt::Result {
    spaces(f, width.saturating_sub(display_width(text)))?;
    f.write_str(text)
}

fn spaces(f: &mut std::fmt::Formatter<'_>, mut count: usize) -> std::fmt::Result {
    const SPACES: &str = "                                ";
    while count > 0 {
        let now = count.min(SPACES.len());
        f.write_str(&SPACES[..now])?;
        count -= now;
    }
    Ok(())
}

/// `value` as `{:#018x}` writes it: 0x and sixteen hex digits.
fn hex18(value: u64, buffer: &mut [u8; 18]) -> &str {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    buffer[..2].copy_from_slice(b"0x");
    for (i, digit) in buffer[2..].iter_mut().enumerate() {
        *digit = DIGITS[((value >> ((15 - i) * 4)) & 0xf) as usize];
    }
    std::str::from_utf8(buffer).unwrap_or("?")
}

#[cfg(test)]
fn columns(fault: &Fault) -> String {
    Columns(fault).to_string()
}

impl<Z: TimeZone> Sink for TextSink<Z>
where
    Z::Offset: std::fmt::Display,
{
    fn begin(&mut self) -> io::Result<()> {
        writeln!(
            self.out,
            "{:<15} {:<16} {:>7} {:>7} {:<2} {:<10} {:<5} {:<18} {:<18} {:>8}",
            "TIME", "COMM", "PID", "TID", "AC", "TYPE", "COW", "ADDRESS", "IP", "LATENCY"
        )
    }

    fn fault(&mut self, fault: &Fault) -> io::Result<()> {
        let time = self.times.of(self.clock.to_utc(fault.ts_ns));
        write!(self.out, "{time} {}", Columns(fault))?;
        // --resolve: where the address lies and which code touched it, as perf trace shows.
        if let Some(mapping) = &fault.mapping {
            write!(self.out, " {mapping}")?;
        }
        if let Some(symbol) = &fault.symbol {
            write!(self.out, " {symbol}")?;
        }
        writeln!(self.out)?;
        for frame in &fault.stack {
            writeln!(self.out, "{:>24}{frame}", "")?;
        }
        Ok(())
    }

    fn process(&mut self, event: &ProcessEvent) -> io::Result<()> {
        let what = match event.change {
            Change::Fork { child } => format!("fork: child {child}"),
            Change::Exec => "exec".to_string(),
            Change::Exit => "exit".to_string(),
        };
        writeln!(
            self.out,
            "{} {:<16} {:>7} {:>7} -- {what}",
            self.times.of(self.clock.to_utc(event.ts_ns)),
            event.comm,
            event.pid,
            event.tid,
        )
    }

    fn interval(&mut self, period: &Period, counts: &Summary) -> io::Result<()> {
        write_interval(&mut self.out, self.clock, period, counts)
    }

    fn totals_header(&mut self, period: &Period) -> io::Result<()> {
        write_totals_header(&mut self.out, self.clock, period)
    }

    fn summary(&mut self, summary: &Summary) -> io::Result<()> {
        summary.write_report(&mut self.out)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// An --interval report for people: a header with its time and span, then the per-pid table
/// of that interval's counts.
pub fn write_interval(
    out: &mut dyn Write,
    clock: WallClock,
    period: &Period,
    counts: &Summary,
) -> io::Result<()> {
    write_header(out, clock, period, "per interval")?;
    counts.write_table(out)
}

/// Sets the totals at the end apart from the interval reports before them.
pub fn write_totals_header(
    out: &mut dyn Write,
    clock: WallClock,
    period: &Period,
) -> io::Result<()> {
    write_header(out, clock, period, "cumulative totals")
}

/// `--- 12:00:01.500 per interval: 1.000 s to 1.500 s since start ---`
fn write_header(
    out: &mut dyn Write,
    clock: WallClock,
    period: &Period,
    what: &str,
) -> io::Result<()> {
    let (from, to) = period.seconds();
    writeln!(
        out,
        "--- {} {what}: {from:.3} s to {to:.3} s since start ---",
        clock.to_utc(period.to_ns).format("%H:%M:%S%.3f"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        event::FaultClass,
        event::Outcome,
        output::format::human_ns,
        output::sink::test_support::{Captured, article_fault, file_copy_fault, reclassify},
    };
    use chrono::{FixedOffset, Utc};

    /// A sink showing UTC, whatever the time zone of the machine running the tests.
    fn utc_sink(out: &Captured) -> TextSink<Utc> {
        TextSink::in_zone(Box::new(out.clone()), WallClock::with_offset(0), Utc)
    }

    #[test]
    fn times_are_in_the_sinks_time_zone() {
        let out = Captured::default();
        let tokyo = FixedOffset::east_opt(9 * 3600).unwrap();
        let mut sink = TextSink::in_zone(Box::new(out.clone()), WallClock::with_offset(0), tokyo);
        sink.fault(&article_fault()).unwrap();
        // The article's fault, 11:35:00 UTC, is 20:35:00 in Tokyo.
        assert!(
            out.text().starts_with("20:35:00.000000 cow "),
            "{}",
            out.text()
        );
    }

    #[test]
    fn columns_are_padded_as_the_formatter_pads() {
        // The columns are padded by hand: they must read as the format string they replace.
        let mut fault = article_fault();
        for (comm, pid, address, latency) in [
            ("cow", 12420, 0x7ffe0cdefb40, Some(1500)),
            ("a-name-longer-than-16", 4_194_304, 0, None),
            ("nämé", 1, u64::MAX, Some(999)),
            ("", 123_456_789, 0x1000, Some(12_345_678_901)),
        ] {
            fault.comm = comm.into();
            fault.pid = pid;
            fault.address = address;
            fault.ip = address.rotate_left(12);
            fault.latency_ns = latency;
            let expected = format!(
                "{:<16} {:>7} {:>7} wu {:<10} {:<5} {:#018x} {:#018x} {:>8}",
                fault.comm.as_str(),
                fault.pid,
                fault.tid,
                fault.outcome.label(),
                "cow",
                fault.address,
                fault.ip,
                latency.map_or("-".to_string(), human_ns),
            );
            assert_eq!(columns(&fault), expected);
        }
    }

    #[test]
    fn wide_comms_keep_the_columns() {
        // Five Chinese characters (15 bytes, the kernel's limit for a comm) take 10 columns.
        let mut fault = article_fault();
        let pid_column = |fault: &Fault| {
            let line = columns(fault);
            let at = line.find(&fault.pid.to_string()).unwrap();
            crate::output::format::display_width(&line[..at])
        };
        let narrow = pid_column(&fault);
        fault.comm = "写时复制器".into();
        assert_eq!(pid_column(&fault), narrow, "{}", columns(&fault));
    }

    #[test]
    fn header_and_line_align() {
        let out = Captured::default();
        let mut sink = utc_sink(&out);
        sink.begin().unwrap();
        sink.fault(&article_fault()).unwrap();
        let text = out.text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[1],
            "11:35:00.000000 cow                12420   12420 wu MINOR      cow   0x00007ffe0cdefb40 0x0000000000401196    1.5us"
        );
        for column in ["COMM", "PID", "TYPE", "COW", "ADDRESS", "LATENCY"] {
            assert!(
                lines[0].contains(column),
                "{column} missing from {}",
                lines[0]
            );
        }
        // Every column header ends where its values end (right-aligned) or starts where they start.
        assert_eq!(lines[0].find("TYPE"), lines[1].find("MINOR"));
        assert_eq!(lines[0].find("ADDRESS"), lines[1].find("0x00007ffe"));
        assert_eq!(lines[0].len(), lines[1].len());
    }

    #[test]
    fn a_first_write_that_copied_a_files_page_is_a_copy() {
        let fault = file_copy_fault(Outcome::Major);
        assert!(
            columns(&fault).contains(" wu MAJOR      copy  "),
            "{}",
            columns(&fault)
        );
        // The same write where the mapping is no private file mapping: no copy.
        let mut filled = fault.clone();
        filled.class = FaultClass::of(
            false,
            cow_trace_common::flags::COPY_KNOWN | cow_trace_common::flags::PAGE_ALLOCATED,
            0x6,
        )
        .with_mapping(cow_trace_common::MappingKind::Other);
        assert!(
            columns(&filled).contains(" wu MAJOR      -     "),
            "{}",
            columns(&filled)
        );
    }

    #[test]
    fn unknowns_are_marked_not_guessed() {
        let mut fault = article_fault();
        reclassify(&mut fault, None, Outcome::Major);
        fault.latency_ns = None;
        let line = columns(&fault);
        assert!(line.contains(" ?u MAJOR      ?     "), "{line}");
        assert!(line.ends_with("       -"), "{line}");
    }

    #[test]
    fn resolved_mapping_symbol_and_stack() {
        let out = Captured::default();
        let mut sink = utc_sink(&out);
        let mut fault = article_fault();
        fault.mapping = Some("[stack]".into());
        fault.symbol = Some("main+0x42 (/tmp/cow)".into());
        fault.stack = vec![
            "main+0x42 (/tmp/cow)".into(),
            "__libc_start_call_main+0x7a".into(),
        ];
        sink.fault(&fault).unwrap();
        let text = out.text();
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].ends_with("1.5us [stack] main+0x42 (/tmp/cow)"),
            "{text}"
        );
        assert_eq!(lines[1].trim(), "main+0x42 (/tmp/cow)");
        assert_eq!(lines[2].trim(), "__libc_start_call_main+0x7a");
        assert_eq!(lines.len(), 3);
    }

    #[test]
    fn interval_reports_say_when_and_what_they_count() {
        let out = Captured::default();
        let mut sink = TextSink::new(Box::new(out.clone()), WallClock::with_offset(0));
        let second = 1_000_000_000;
        let mut counts = Summary::default();
        counts.record(&article_fault());
        let period = Period {
            start_ns: 10 * second,
            from_ns: 11 * second,
            to_ns: 11 * second + second / 2,
        };
        sink.interval(&period, &counts).unwrap();
        sink.totals_header(&Period {
            from_ns: 10 * second,
            ..period
        })
        .unwrap();
        let text = out.text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "--- 00:00:11.500 per interval: 1.000 s to 1.500 s since start ---"
        );
        assert!(lines[1].trim_start().starts_with("PID COMM"), "{text}");
        assert!(lines[2].trim_start().starts_with("12420 cow"), "{text}");
        assert_eq!(
            lines.last().unwrap(),
            &"--- 00:00:11.500 cumulative totals: 0.000 s to 1.500 s since start ---"
        );
    }

    #[test]
    fn process_lines() {
        let out = Captured::default();
        let mut sink = utc_sink(&out);
        let mut event = ProcessEvent {
            ts_ns: 0,
            pid: 10,
            tid: 11,
            comm: "sh".into(),
            change: Change::Fork { child: 12 },
        };
        sink.process(&event).unwrap();
        event.change = Change::Exit;
        sink.process(&event).unwrap();
        assert_eq!(
            out.text(),
            "00:00:00.000000 sh                    10      11 -- fork: child 12\n\
             00:00:00.000000 sh                    10      11 -- exit\n"
        );
    }
}
