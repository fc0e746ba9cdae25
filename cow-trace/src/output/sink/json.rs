//! One JSON object per line. Schema version 1, documented in README.md.
use std::io::{self, Write};

use chrono::Utc;
use serde::Serialize;

use super::{CachedTime, SecondsCache, Sink, WallClock};
use crate::{
    event::{Change, CowOutcome, Fault, ProcessEvent},
    output::{
        interval::Period,
        summary::{Counts, Summary},
    },
};

pub const SCHEMA_VERSION: u32 = 1;

pub struct JsonSink {
    out: Box<dyn Write>,
    clock: WallClock,
    /// `time`: RFC 3339 in UTC with microseconds, `2026-11-29T11:35:00.000000Z`.
    times: SecondsCache<Utc>,
    backend: &'static str,
    /// A line is serialized here, then written whole: serde writes a line in some thirty
    /// pieces, each a call through the output's `dyn Write` otherwise.
    line: Vec<u8>,
}

impl JsonSink {
    pub fn new(out: Box<dyn Write>, clock: WallClock, backend: &'static str) -> JsonSink {
        JsonSink {
            out,
            clock,
            times: SecondsCache::new(Utc, "%Y-%m-%dT%H:%M:%S"),
            backend,
            line: Vec::with_capacity(512),
        }
    }

    fn line(&mut self, value: &impl Serialize) -> io::Result<()> {
        write_line(&mut self.out, &mut self.line, value)
    }
}

/// Writes `value` as one line of JSON to `out`, through `line`.
fn write_line(out: &mut dyn Write, line: &mut Vec<u8>, value: &impl Serialize) -> io::Result<()> {
    line.clear();
    serde_json::to_writer(&mut *line, value)?;
    line.push(b'\n');
    out.write_all(line)
}

/// An address as a hex string ("0x7ffe0cdefb40"; a u64 does not fit a JSON double), written
/// without an intermediate String.
struct Hex(u64);

impl Serialize for Hex {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&format_args!("{:#x}", self.0))
    }
}

/// RFC 3339 time in UTC with microseconds ("2020-05-10T11:35:00.000000Z").
struct Time<'a>(CachedTime<'a>);

impl Serialize for Time<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&format_args!("{}Z", self.0))
    }
}

#[derive(Serialize)]
struct FaultLine<'a> {
    v: u32,
    event: &'static str,
    backend: &'static str,
    time: Time<'a>,
    ts_ns: u64,
    pid: u32,
    tid: u32,
    comm: &'a str,
    address: Hex,
    ip: Hex,
    /// One letter, a JSON string (serde writes a char as one).
    access: Option<char>,
    #[serde(rename = "type")]
    kind: &'static str,
    /// A write-protect fault.
    cow: Option<bool>,
    /// A page was copied: on a write-protect fault, or (with `cow` false) a first write that
    /// copied a file's page into a private mapping.
    copied: Option<bool>,
    /// "copied", "reused" or "zero-fill" on a copy-on-write fault; "copied" on such a first
    /// write.
    cow_outcome: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    window: Option<u32>,
    kernel_mode: bool,
    error_code: Option<u64>,
    latency_ns: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mapping: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    symbol: Option<&'a str>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    stack: &'a [String],
}

#[derive(Serialize)]
struct ProcessLine<'a> {
    v: u32,
    event: &'static str,
    time: Time<'a>,
    ts_ns: u64,
    pid: u32,
    tid: u32,
    comm: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    child: Option<u32>,
}

#[derive(Serialize)]
struct SummaryLine<'a> {
    v: u32,
    event: &'static str,
    pid: u32,
    comm: &'a str,
    /// Window lines: the child whose lifetime this covers.
    #[serde(skip_serializing_if = "Option::is_none")]
    child: Option<u32>,
    #[serde(flatten)]
    counts: &'a Counts,
    copied_bytes: u64,
}

/// One --interval report: the counts of that interval only, in all and per pid and window.
#[derive(Serialize)]
struct IntervalLine<'a> {
    v: u32,
    event: &'static str,
    /// The end of the interval.
    time: Time<'a>,
    ts_ns: u64,
    /// Its length: the counts are of (ts_ns - interval_ns, ts_ns].
    interval_ns: u64,
    #[serde(flatten)]
    counts: &'a Counts,
    copied_bytes: u64,
    lost: u64,
    /// Timed faults of the interval whose latency is not in the histograms (no loss).
    hist_full: u64,
    pids: Vec<IntervalRow<'a>>,
    windows: Vec<IntervalRow<'a>>,
}

#[derive(Serialize)]
struct IntervalRow<'a> {
    pid: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    comm: Option<&'a str>,
    /// Window rows: the child whose lifetime this covers.
    #[serde(skip_serializing_if = "Option::is_none")]
    child: Option<u32>,
    #[serde(flatten)]
    counts: &'a Counts,
    copied_bytes: u64,
}

#[derive(Serialize)]
struct MappingLine<'a> {
    v: u32,
    event: &'static str,
    pid: u32,
    mapping: &'a str,
    class: String,
    faults: u64,
}

#[derive(Serialize)]
struct StackLine<'a> {
    v: u32,
    event: &'static str,
    pid: u32,
    cow_faults: u64,
    frames: &'a [String],
}

#[derive(Serialize)]
struct HistogramLine {
    v: u32,
    event: &'static str,
    pid: u32,
    class: String,
    /// buckets[i] counts latencies in [2^(i-1), 2^i) ns; buckets[0] counts 0 ns.
    buckets: Vec<u64>,
    /// The timed faults of this pid and class: the buckets hold fewer only where the histogram
    /// map was full (the totals' `hist_full`).
    timed: u64,
}

#[derive(Serialize)]
struct TotalsLine {
    v: u32,
    event: &'static str,
    backend: &'static str,
    faults: u64,
    copied_bytes: u64,
    lost: u64,
    lost_detail: crate::event::Lost,
    /// Timed faults, counted, whose latency is not in the histograms: the histogram map was
    /// full. No loss, so not in `lost`.
    hist_full: u64,
}

impl Sink for JsonSink {
    fn is_machine_readable(&self) -> bool {
        true
    }

    fn fault(&mut self, fault: &Fault) -> io::Result<()> {
        let line = FaultLine {
            v: SCHEMA_VERSION,
            event: "fault",
            backend: self.backend,
            time: Time(self.times.of(self.clock.to_utc(fault.ts_ns))),
            ts_ns: fault.ts_ns,
            pid: fault.pid,
            tid: fault.tid,
            comm: fault.comm.as_str(),
            address: Hex(fault.address),
            ip: Hex(fault.ip),
            access: fault.access().map(|a| a.letter()),
            kind: fault.outcome.label(),
            cow: fault.is_cow(),
            copied: fault.copied(),
            cow_outcome: fault.cow_outcome().map(CowOutcome::json_value),
            window: (fault.window != 0).then_some(fault.window),
            kernel_mode: fault.kernel_mode,
            // Only x86 has a page-fault error code. Elsewhere the bits are cow-trace's own
            // account of the fault flags (access, mode, do_wp_page): no error code to show.
            error_code: fault.error_code.filter(|_| cfg!(target_arch = "x86_64")),
            latency_ns: fault.latency_ns,
            mapping: fault.mapping.as_deref(),
            symbol: fault.symbol.as_deref(),
            stack: &fault.stack,
        };
        write_line(&mut self.out, &mut self.line, &line)
    }

    fn process(&mut self, event: &ProcessEvent) -> io::Result<()> {
        let (name, child) = match event.change {
            Change::Fork { child } => ("fork", Some(child)),
            Change::Exec => ("exec", None),
            Change::Exit => ("exit", None),
        };
        write_line(
            &mut self.out,
            &mut self.line,
            &ProcessLine {
                v: SCHEMA_VERSION,
                event: name,
                time: Time(self.times.of(self.clock.to_utc(event.ts_ns))),
                ts_ns: event.ts_ns,
                pid: event.pid,
                tid: event.tid,
                comm: &event.comm,
                child,
            },
        )
    }

    fn interval(&mut self, period: &Period, counts: &Summary) -> io::Result<()> {
        let comm = |pid: u32| counts.comms.get(&pid).map_or("?", String::as_str);
        let total = counts.total();
        let line = IntervalLine {
            v: SCHEMA_VERSION,
            event: "interval",
            time: Time(self.times.of(self.clock.to_utc(period.to_ns))),
            ts_ns: period.to_ns,
            interval_ns: period.length_ns(),
            counts: &total,
            copied_bytes: total.copied_bytes(),
            lost: counts.lost.events(),
            hist_full: counts.lost.hist_full,
            pids: counts
                .pids
                .iter()
                .map(|(&pid, counts)| IntervalRow {
                    pid,
                    comm: Some(comm(pid)),
                    child: None,
                    counts,
                    copied_bytes: counts.copied_bytes(),
                })
                .collect(),
            windows: counts
                .windows
                .iter()
                .map(|(&(pid, child), counts)| IntervalRow {
                    pid,
                    comm: None,
                    child: Some(child),
                    counts,
                    copied_bytes: counts.copied_bytes(),
                })
                .collect(),
        };
        write_line(&mut self.out, &mut self.line, &line)
    }

    fn summary(&mut self, summary: &Summary) -> io::Result<()> {
        let comm = |pid: u32| summary.comms.get(&pid).map_or("?", String::as_str);
        for (&pid, counts) in &summary.pids {
            self.line(&SummaryLine {
                v: SCHEMA_VERSION,
                event: "summary",
                pid,
                comm: comm(pid),
                child: None,
                counts,
                copied_bytes: counts.copied_bytes(),
            })?;
        }
        for (&(pid, child), counts) in &summary.windows {
            self.line(&SummaryLine {
                v: SCHEMA_VERSION,
                event: "window",
                pid,
                comm: comm(pid),
                child: Some(child),
                counts,
                copied_bytes: counts.copied_bytes(),
            })?;
        }
        for ((pid, mapping, class), &faults) in &summary.mappings {
            self.line(&MappingLine {
                v: SCHEMA_VERSION,
                event: "mapping",
                pid: *pid,
                mapping,
                class: class.to_string(),
                faults,
            })?;
        }
        for ((pid, stack_id), cow_faults) in summary.top_stacks(usize::MAX) {
            let frames = summary.stack_frames.get(&(pid, stack_id));
            self.line(&StackLine {
                v: SCHEMA_VERSION,
                event: "stack",
                pid,
                cow_faults,
                frames: frames.map_or(&[], Vec::as_slice),
            })?;
        }
        for histogram in summary.histograms() {
            self.line(&HistogramLine {
                v: SCHEMA_VERSION,
                event: "histogram",
                pid: histogram.pid,
                class: histogram.class.to_string(),
                buckets: histogram.buckets.to_vec(),
                timed: histogram.timed,
            })?;
        }
        let total = summary.total();
        self.line(&TotalsLine {
            v: SCHEMA_VERSION,
            event: "totals",
            backend: self.backend,
            faults: total.faults,
            copied_bytes: total.copied_bytes(),
            lost: summary.lost.events(),
            lost_detail: summary.lost,
            hist_full: summary.lost.hist_full,
        })
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        event::Outcome,
        output::sink::test_support::{Captured, article_fault, file_copy_fault, reclassify},
    };

    /// A JSON sink writing into memory, and that memory.
    fn captured_sink() -> (JsonSink, Captured) {
        let out = Captured::default();
        let sink = JsonSink::new(
            Box::new(out.clone()),
            WallClock::with_offset(0),
            "tracepoint",
        );
        (sink, out)
    }

    /// Each line written, parsed.
    fn json_lines(out: &Captured) -> Vec<serde_json::Value> {
        out.text()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn fault_fields() {
        let (mut sink, out) = captured_sink();
        sink.fault(&article_fault()).unwrap();
        let value: serde_json::Value = serde_json::from_str(out.text().trim()).unwrap();
        assert_eq!(value["v"], 1);
        assert_eq!(value["event"], "fault");
        assert_eq!(value["backend"], "tracepoint");
        assert_eq!(value["time"], "2020-05-10T11:35:00.000000Z");
        assert_eq!(value["pid"], 12420);
        assert_eq!(value["address"], "0x7ffe0cdefb40");
        assert_eq!(value["access"], "w");
        assert_eq!(value["type"], "MINOR");
        assert_eq!(value["cow"], true);
        assert_eq!(value["latency_ns"], 1500);
        assert_eq!(value["error_code"], 7);
    }

    #[test]
    fn a_first_write_that_copied_a_files_page_is_copied_but_no_cow_fault() {
        let (mut sink, out) = captured_sink();
        sink.fault(&file_copy_fault(Outcome::Minor)).unwrap();
        let value: serde_json::Value = serde_json::from_str(out.text().trim()).unwrap();
        assert_eq!(value["cow"], false);
        assert_eq!(value["copied"], true);
        assert_eq!(value["cow_outcome"], "copied");
        assert_eq!(value["error_code"], 6);
    }

    #[test]
    fn unknown_fields_are_null() {
        let (mut sink, out) = captured_sink();
        let mut fault = article_fault();
        let outcome = fault.outcome;
        reclassify(&mut fault, None, outcome);
        fault.latency_ns = None;
        sink.fault(&fault).unwrap();
        let value: serde_json::Value = serde_json::from_str(out.text().trim()).unwrap();
        assert!(value["access"].is_null());
        assert!(value["cow"].is_null());
        assert!(value["latency_ns"].is_null());
    }

    #[test]
    fn fork_and_exit_lines() {
        let (mut sink, out) = captured_sink();
        let mut event = ProcessEvent {
            ts_ns: 0,
            pid: 10,
            tid: 10,
            comm: "sh".into(),
            change: Change::Fork { child: 12 },
        };
        sink.process(&event).unwrap();
        event.change = Change::Exit;
        sink.process(&event).unwrap();
        let lines = json_lines(&out);
        assert_eq!(lines[0]["event"], "fork");
        assert_eq!(lines[0]["child"], 12);
        assert_eq!(lines[1]["event"], "exit");
        assert!(lines[1].get("child").is_none());
    }

    #[test]
    fn interval_line_has_its_time_length_and_counts() {
        let (mut sink, out) = captured_sink();
        let mut counts = Summary::default();
        let mut fault = article_fault();
        fault.window = 12421;
        counts.record(&fault);
        counts.lost.ring_full = 1;
        let second = 1_000_000_000;
        let period = Period {
            start_ns: 10 * second,
            from_ns: 11 * second,
            to_ns: 11 * second + second / 2,
        };
        sink.interval(&period, &counts).unwrap();
        let text = out.text();
        assert_eq!(text.lines().count(), 1, "one line per interval: {text}");
        let value: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(value["event"], "interval");
        assert_eq!(value["time"], "1970-01-01T00:00:11.500000Z");
        assert_eq!(value["ts_ns"], 11 * second + second / 2);
        assert_eq!(value["interval_ns"], second / 2);
        assert_eq!(value["cow"], 1);
        assert_eq!(value["copied_bytes"], 0, "the outcome is unknown here");
        assert_eq!(value["lost"], 1);
        assert_eq!(value["pids"][0]["pid"], 12420);
        assert_eq!(value["pids"][0]["comm"], "cow");
        assert_eq!(value["pids"][0]["faults"], 1);
        assert_eq!(value["windows"][0]["child"], 12421);
        assert_eq!(value["windows"][0]["cow"], 1);
    }

    #[test]
    fn summary_and_totals_lines() {
        let (mut sink, out) = captured_sink();
        let mut summary = Summary::default();
        summary.record(&article_fault());
        summary.lost.ring_full = 2;
        sink.summary(&summary).unwrap();
        let lines = json_lines(&out);
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["event"], "summary");
        assert_eq!(lines[0]["pid"], 12420);
        assert_eq!(lines[0]["cow"], 1);
        assert_eq!(lines[0]["comm"], "cow");
        assert_eq!(lines[1]["event"], "totals");
        assert_eq!(lines[1]["lost"], 2);
        assert_eq!(lines[1]["faults"], 1);
    }

    /// Latencies the histogram map had no room for: no lost fault, a field of their own, and
    /// each histogram says how many timed faults it should hold (an empty one where it holds
    /// none of them).
    #[test]
    fn latencies_not_in_the_histograms_are_said_apart_from_losses() {
        let (mut sink, out) = captured_sink();
        use crate::event::FaultClass;
        let read = FaultClass::from_bits(cow_trace_common::class::READ);
        let write = FaultClass::from_bits(cow_trace_common::class::WRITE);
        let mut summary = Summary::default();
        summary.add(7, read, 0, 3, 3, 3000);
        summary.add(7, write, 0, 2, 2, 2000);
        let mut buckets = [0; cow_trace_common::HIST_BUCKETS];
        buckets[10] = 1;
        summary.add_hist(7, read, &buckets);
        summary.lost.hist_full = 4;
        sink.summary(&summary).unwrap();
        let lines = json_lines(&out);
        let histograms: Vec<&serde_json::Value> =
            lines.iter().filter(|v| v["event"] == "histogram").collect();
        assert_eq!(histograms.len(), 2, "{lines:?}");
        assert_eq!(histograms[0]["class"], "r MINOR");
        assert_eq!(histograms[0]["timed"], 3);
        assert_eq!(histograms[0]["buckets"][10], 1);
        assert_eq!(histograms[1]["class"], "w MINOR");
        assert_eq!(histograms[1]["timed"], 2);
        assert!(
            histograms[1]["buckets"]
                .as_array()
                .unwrap()
                .iter()
                .all(|n| n == 0)
        );
        let totals = lines.last().unwrap();
        assert_eq!(totals["event"], "totals");
        assert_eq!(totals["lost"], 0);
        assert_eq!(totals["hist_full"], 4);
        assert!(totals["lost_detail"].get("hist_full").is_none(), "{totals}");
    }
}
