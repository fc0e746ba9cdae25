//! `--plot FILE.svg`: when and where the faults happened, drawn with plotters' SVG backend.
//!
//! Two views: a timeline per pid of faults per interval by class (copy-on-write faults split
//! by what the kernel did: copied, reused, zero-filled), with the cumulative bytes copied on
//! write below it, and each snapshot window shaded across them; and a strip of the address
//! space showing where COW faults landed. What is kept stays bounded however long the run: at
//! most `TIME_BUCKETS` intervals (the interval doubles when the run outgrows them) for at most
//! `TRACKED_PIDS` pids (later ones are counted together), at most `ADDRESS_CELLS` (address
//! range, pid) cells for the strip (the range doubles likewise), and at most `MAX_WINDOWS`
//! snapshot windows.
mod class;
mod draw;
mod legend;
mod series;
mod strip;
mod timeline;
mod windows;

use std::{collections::HashMap, path::Path};

use anyhow::Context as _;

pub use self::class::PlotFault;
use self::{
    draw::draw_nothing,
    series::{AddressStrip, Series},
    windows::Windows,
};
use crate::event::{Change, Fault, ProcessEvent};

/// Intervals kept per pid: about one per horizontal pixel of a timeline.
const TIME_BUCKETS: usize = 600;
/// The first interval; it doubles whenever the run outgrows `TIME_BUCKETS` of them.
const FIRST_BUCKET_NS: u64 = 1_000_000;
/// Pids counted one by one; faults of any later pid are counted together.
const TRACKED_PIDS: usize = 64;
/// (address range, pid) cells the address strip keeps.
const ADDRESS_CELLS: usize = 8192;
/// Consecutive fault ranges at most this many ranges apart share a segment of the strip.
const MAX_GAP_CELLS: u64 = 16;
/// Pids drawn with their own timeline, and own lane of the strip; the rest share one.
const TIMELINE_ROWS: usize = 6;
const STRIP_LANES: usize = 12;
/// The series key of the pids counted together.
const OTHERS: u32 = u32::MAX;
/// Snapshot windows remembered (the ended ones with the fewest copies make room), and shaded.
const MAX_WINDOWS: usize = 1024;
const SHADED_WINDOWS: usize = 16;

/// Accumulates faults for the plot; memory stays bounded (see the module comment).
#[derive(Clone, Debug)]
pub struct FaultPlot {
    /// The first fault's time: the timelines start there.
    origin_ns: Option<u64>,
    bucket_ns: u64,
    buckets_used: usize,
    pids: HashMap<u32, Series>,
    others: Series,
    windows: Windows,
    strip: AddressStrip,
    page_size: u64,
}

impl Default for FaultPlot {
    fn default() -> FaultPlot {
        FaultPlot::new()
    }
}

impl FaultPlot {
    pub fn new() -> FaultPlot {
        FaultPlot {
            origin_ns: None,
            bucket_ns: FIRST_BUCKET_NS,
            buckets_used: 0,
            pids: HashMap::new(),
            others: Series::default(),
            windows: Windows::default(),
            strip: AddressStrip::new(),
            page_size: crate::page::size(),
        }
    }

    /// Counts a decoded fault (faults that never completed are left out).
    pub fn add_fault(&mut self, fault: &Fault) {
        let Some(plotted) = PlotFault::from_fault(fault) else {
            return;
        };
        self.add(&plotted);
        if let Some(series) = self.pids.get_mut(&fault.pid)
            && series.comm.as_deref() != Some(fault.comm.as_str())
        {
            series.comm = Some(fault.comm.as_str().to_string());
        }
    }

    pub fn add(&mut self, fault: &PlotFault) {
        let origin = *self.origin_ns.get_or_insert(fault.ts_ns);
        // Records arrive nearly in time order; one from before the first goes in the first
        // interval.
        let since = fault.ts_ns.saturating_sub(origin);
        while since / self.bucket_ns >= TIME_BUCKETS as u64 {
            self.coarsen_time();
        }
        let bucket = (since / self.bucket_ns) as usize;
        self.buckets_used = self.buckets_used.max(bucket + 1);
        let key = if self.pids.contains_key(&fault.pid) || self.pids.len() < TRACKED_PIDS {
            fault.pid
        } else {
            OTHERS
        };
        let series = match key {
            OTHERS => &mut self.others,
            pid => self.pids.entry(pid).or_default(),
        };
        series.count(bucket, fault.class);
        self.windows.fault(fault.pid, fault.window, fault.class);
        if fault.class.is_cow() {
            self.strip.add(fault.address, key);
        }
    }

    /// Follows the process tree: a fork opens a snapshot window, the child's exit closes it,
    /// its exec makes it no snapshot.
    pub fn add_process(&mut self, event: &ProcessEvent) {
        match event.change {
            Change::Fork { child } => self.windows.fork(event.pid, child, event.ts_ns),
            Change::Exec => self.windows.exec(event.pid),
            Change::Exit => self.windows.exit(event.pid, event.ts_ns),
        }
    }

    /// True until a completed fault was added.
    pub fn is_empty(&self) -> bool {
        self.origin_ns.is_none()
    }

    /// Writes the plot as an SVG file.
    pub fn render_svg(&self, path: &Path, title: &str) -> anyhow::Result<()> {
        let svg = self.render_string(title)?;
        std::fs::write(path, svg).with_context(|| format!("writing the plot {}", path.display()))
    }

    /// The plot as an SVG document.
    pub fn render_string(&self, title: &str) -> anyhow::Result<String> {
        let mut svg = String::new();
        if self.is_empty() {
            draw_nothing(&mut svg, title).context("drawing an empty plot")?;
        } else {
            self.draw(&mut svg, title).context("drawing the plot")?;
        }
        Ok(svg)
    }

    fn coarsen_time(&mut self) {
        self.bucket_ns *= 2;
        for series in self.pids.values_mut() {
            series.halve();
        }
        self.others.halve();
        self.buckets_used = self.buckets_used.div_ceil(2);
    }
}

#[cfg(test)]
/// Renders `faults` in one go; see `FaultPlot` for accumulating them as they come.
pub fn render_svg(path: &Path, faults: &[PlotFault], title: &str) -> anyhow::Result<()> {
    let mut plot = FaultPlot::new();
    for fault in faults {
        plot.add(fault);
    }
    plot.render_svg(path, title)
}

#[cfg(test)]
mod tests {
    use super::{class::PlotClass, *};
    use crate::event::FaultClass;
    use crate::{
        event::Outcome,
        output::sink::test_support::{article_fault, file_copy_fault, reclassify},
    };

    const MS: u64 = 1_000_000;

    fn fault(ts_ns: u64, pid: u32, address: u64, class: PlotClass) -> PlotFault {
        PlotFault {
            ts_ns,
            pid,
            address,
            class,
            window: 0,
        }
    }

    /// A parent that reads and writes its heap, then a child that breaks COW on its stack and
    /// heap, over two seconds.
    fn fork_and_write() -> Vec<PlotFault> {
        let mut faults = Vec::new();
        for i in 0..200u64 {
            faults.push(fault(
                i * MS,
                100,
                0x5555_0000_0000 + i * 4096,
                PlotClass::Read,
            ));
            faults.push(fault(
                i * MS + 1,
                100,
                0x5555_0010_0000 + i * 4096,
                PlotClass::OtherWrite,
            ));
        }
        for i in 0..300u64 {
            let address = if i % 3 == 0 {
                0x7ffd_2150_0000
            } else {
                0x5555_0000_0000
            };
            faults.push(fault(
                500 * MS + i * 5 * MS,
                101,
                address + i * 4096,
                PlotClass::CowCopied,
            ));
        }
        faults.push(fault(1900 * MS, 101, 0x7f00_0000_0000, PlotClass::Major));
        faults
    }

    fn render(faults: &[PlotFault], title: &str) -> String {
        let file = tempfile::Builder::new().suffix(".svg").tempfile().unwrap();
        render_svg(file.path(), faults, title).unwrap();
        std::fs::read_to_string(file.path()).unwrap()
    }

    fn texts(document: &roxmltree::Document) -> Vec<String> {
        document
            .descendants()
            .filter(|n| n.has_tag_name("text"))
            .map(|n| n.text().unwrap_or_default().trim().to_string())
            .collect()
    }

    #[test]
    fn classes_from_decoded_faults() {
        let cow = article_fault();
        assert_eq!(PlotClass::of(&cow), Some(PlotClass::CowUnknown));
        let wp = cow_trace_common::class::WRITE
            | cow_trace_common::class::WRITE_PROTECT
            | cow_trace_common::class::COPY_KNOWN;
        let mut copied = article_fault();
        copied.class = FaultClass::from_bits(wp | cow_trace_common::class::COPIED);
        assert_eq!(PlotClass::of(&copied), Some(PlotClass::CowCopied));
        let mut reused = article_fault();
        reused.class = FaultClass::from_bits(wp);
        assert_eq!(PlotClass::of(&reused), Some(PlotClass::CowReused));
        let mut zero = article_fault();
        zero.class = FaultClass::from_bits(wp | cow_trace_common::class::ZERO_FILL);
        assert_eq!(PlotClass::of(&zero), Some(PlotClass::CowZeroFill));
        // A copy is a copy, as the summary counts it, even when the kernel called it major.
        let mut major_copy = copied.clone();
        reclassify(&mut major_copy, Some(0x7), Outcome::Major);
        major_copy.class =
            FaultClass::from_bits(major_copy.class.bits() | wp | cow_trace_common::class::COPIED);
        assert_eq!(PlotClass::of(&major_copy), Some(PlotClass::CowCopied));
        // So is a first write that copied a file's page into a private mapping.
        assert_eq!(
            PlotClass::of(&file_copy_fault(Outcome::Major)),
            Some(PlotClass::CowCopied)
        );
        let mut major = article_fault();
        reclassify(&mut major, Some(0x4), Outcome::Major);
        assert_eq!(PlotClass::of(&major), Some(PlotClass::Major));
        let mut incomplete = article_fault();
        incomplete.outcome = Outcome::Incomplete;
        assert_eq!(PlotClass::of(&incomplete), None);
        let mut unknown = article_fault();
        unknown.error_code = None;
        unknown.class = FaultClass::from_bits(cow_trace_common::class::UNKNOWN);
        assert_eq!(PlotClass::of(&unknown), Some(PlotClass::Unknown));
        let mut read = article_fault();
        read.error_code = Some(0x4);
        read.class = FaultClass::from_bits(cow_trace_common::class::READ);
        assert_eq!(PlotClass::of(&read), Some(PlotClass::Read));
        let mut write = article_fault();
        write.error_code = Some(0x6);
        write.class = FaultClass::from_bits(cow_trace_common::class::WRITE);
        assert_eq!(PlotClass::of(&write), Some(PlotClass::OtherWrite));
        assert!(PlotFault::from_fault(&incomplete).is_none());
        let plotted = PlotFault::from_fault(&cow).unwrap();
        assert_eq!((plotted.pid, plotted.address), (cow.pid, cow.address));
    }

    #[test]
    fn svg_has_timelines_cumulative_bytes_and_address_strip() {
        let svg = render(&fork_and_write(), "cow-trace: fork & write <demo>");
        let document = roxmltree::Document::parse(&svg).expect("well-formed XML");
        let root = document.root_element();
        assert!(root.has_tag_name("svg"), "{}", root.tag_name().name());
        let texts = texts(&document);
        let has = |wanted: &str| texts.iter().any(|t| t.contains(wanted));
        for wanted in [
            "cow-trace: fork & write <demo>",
            "COW writes: copied",
            "other writes",
            "reads and exec",
            "major",
            "pid 100: 400 faults",
            "pid 101: 301 faults, 300 pages copied",
            "copied on write: 1.2 MiB (300 pages, 1228800 bytes)",
            "all pids: bytes copied",
            "pid 101: copied",
            "where COW faults landed",
            "0x7ffd215",
        ] {
            assert!(has(wanted), "no text with {wanted:?} in {texts:#?}");
        }
        for absent in ["access unknown", "reused", "no copy", "while child"] {
            assert!(
                !has(absent),
                "{absent:?}: nothing of it, no legend entry or label"
            );
        }
        let drawn = document
            .descendants()
            .filter(|n| n.is_element() && !n.has_tag_name("svg"))
            .count();
        assert!(drawn > 300, "only {drawn} elements drawn");
        let cells = document
            .descendants()
            .filter(|n| n.has_tag_name("rect") && n.attribute("fill") == Some("#D62728"))
            .count();
        assert!(cells >= 300, "only {cells} COW cells in the strip");
    }

    /// A server forks a snapshot child at 0.4 s and writes 100 pages while it lives (copies),
    /// the child exits at 1.2 s, and the server writes 50 more pages it shared (reuses). A
    /// shell's child that execs is no snapshot.
    #[test]
    fn copies_are_the_headline_reuses_apart_and_the_snapshot_shaded() {
        let mut plot = FaultPlot::new();
        let process = |ts_ns, pid, change| ProcessEvent {
            ts_ns,
            pid,
            tid: pid,
            comm: "server".into(),
            change,
        };
        plot.add(&fault(0, 100, 0x1000, PlotClass::Read));
        plot.add_process(&process(100 * MS, 100, Change::Fork { child: 102 }));
        plot.add(&PlotFault {
            window: 102,
            ..fault(110 * MS, 100, 0x2000, PlotClass::CowCopied)
        });
        plot.add_process(&process(120 * MS, 102, Change::Exec));
        plot.add_process(&process(400 * MS, 100, Change::Fork { child: 101 }));
        for i in 0..100u64 {
            plot.add(&PlotFault {
                window: 101,
                ..fault(
                    500 * MS + i * 5 * MS,
                    100,
                    0x5555_0000_0000 + i * 4096,
                    PlotClass::CowCopied,
                )
            });
        }
        plot.add_process(&process(1200 * MS, 101, Change::Exit));
        for i in 0..50u64 {
            plot.add(&fault(
                1300 * MS + i * MS,
                100,
                0x5555_1000_0000 + i * 4096,
                PlotClass::CowReused,
            ));
        }
        plot.add(&fault(1500 * MS, 100, 0x6000, PlotClass::CowZeroFill));
        let svg = plot.render_string("snapshot").unwrap();
        let document = roxmltree::Document::parse(&svg).unwrap();
        let texts = texts(&document);
        let has = |wanted: &str| texts.iter().any(|t| t.contains(wanted));
        // 101 copies (4 KiB each), not 152 COW faults.
        for wanted in [
            "copied on write: 404.0 KiB (101 pages, 413696 bytes); no copy: 50 reuses, 1 zero fills",
            "COW writes: copied",
            "COW writes: reused (no copy)",
            "COW writes: zero fill (no copy)",
            "reused (no copy): 50 faults (right axis)",
            "COW faults without a copy",
            "a snapshot child alive",
            "while child 101 ran",
        ] {
            assert!(has(wanted), "no text with {wanted:?} in {texts:#?}");
        }
        assert!(!has("while child 102 ran"), "a child that exec'd");
        // Shaded from 0.4 s to 1.2 s in the one timeline and the cumulative panel (the
        // legends' samples are 10 high).
        let size = |n: &roxmltree::Node, what: &str| -> f64 {
            n.attribute(what).unwrap().parse().unwrap()
        };
        let shades: Vec<roxmltree::Node> = document
            .descendants()
            .filter(|n| n.has_tag_name("rect") && n.attribute("fill") == Some("#4682B4"))
            .filter(|n| n.attribute("opacity") == Some("0.15") && size(n, "height") > 20.0)
            .collect();
        assert_eq!(shades.len(), 2, "{svg}");
        let width = |n: &roxmltree::Node| size(n, "width");
        // 0.8 s of the 1.5 s plotted, in each panel's plotting area: the width less the left
        // margin, the y labels and the right margin and axis.
        let x_span = f64::from(draw::WIDTH - 6 - 70 - 24 - 70);
        for shade in &shades {
            let share = width(shade) / x_span;
            assert!((0.52..0.545).contains(&share), "{share}: {svg}");
        }
    }

    #[test]
    fn empty_input_says_there_was_nothing() {
        let svg = render(&[], "cow-trace: nothing");
        let document = roxmltree::Document::parse(&svg).expect("well-formed XML");
        assert!(document.root_element().has_tag_name("svg"));
        let texts = texts(&document);
        assert!(
            texts.iter().any(|t| t.contains("Nothing to plot")),
            "{texts:?}"
        );
    }

    #[test]
    fn no_cow_faults_still_draws() {
        let faults: Vec<PlotFault> = (0..50)
            .map(|i| fault(i * MS, 7, 0x1000 * i, PlotClass::Read))
            .collect();
        let svg = render(&faults, "reads only");
        let document = roxmltree::Document::parse(&svg).unwrap();
        let texts = texts(&document);
        assert!(
            texts.iter().any(|t| t.contains("No COW faults")),
            "{texts:?}"
        );
    }

    #[test]
    fn long_runs_coarsen_time_and_keep_counts() {
        let mut plot = FaultPlot::new();
        // An hour of one fault per 100 ms.
        for i in 0..36_000u64 {
            plot.add(&fault(5 + i * 100 * MS, 1, 0x1000, PlotClass::Read));
        }
        assert!(plot.buckets_used <= TIME_BUCKETS);
        assert!(plot.bucket_ns >= 3_600_000 * MS / TIME_BUCKETS as u64);
        let series = &plot.pids[&1];
        assert!(series.buckets.len() <= TIME_BUCKETS);
        let counted: u64 = series
            .buckets
            .iter()
            .map(|b| u64::from(b[PlotClass::Read.index()]))
            .sum();
        assert_eq!(counted, 36_000);
        assert_eq!(series.total(), 36_000);
    }

    #[test]
    fn many_pids_and_pages_stay_bounded() {
        let mut plot = FaultPlot::new();
        for pid in 0..1000u32 {
            for page in 0..100u64 {
                let address = 0x7f00_0000_0000 + u64::from(pid) * (1 << 32) + page * 4096;
                plot.add(&fault(
                    u64::from(pid) * MS,
                    pid + 1,
                    address,
                    PlotClass::CowCopied,
                ));
            }
        }
        assert_eq!(plot.pids.len(), TRACKED_PIDS);
        assert_eq!(plot.others.total(), (1000 - TRACKED_PIDS as u64) * 100);
        assert!(plot.strip.cells.len() <= ADDRESS_CELLS);
        assert!(plot.strip.shift > 12);
        let counted: u64 = plot.strip.cells.values().map(|&c| u64::from(c)).sum();
        assert_eq!(counted, 100_000);
        // And it still renders.
        let svg = plot.render_string("many").unwrap();
        let document = roxmltree::Document::parse(&svg).unwrap();
        let texts = texts(&document);
        assert!(texts.iter().any(|t| t == "other pids"), "{texts:#?}");
    }

    #[test]
    fn unwritable_path_is_an_error() {
        let error = render_svg(
            Path::new("/nonexistent-dir/plot.svg"),
            &fork_and_write(),
            "t",
        )
        .unwrap_err();
        assert!(
            format!("{error:#}").contains("/nonexistent-dir/plot.svg"),
            "{error:#}"
        );
    }
}
