//! `--plot FILE.svg`: when and where the faults happened, drawn with plotters' SVG backend.
//!
//! Two views: a timeline per pid of faults per interval by class, with the cumulative
//! copy-on-write bytes below it; and a strip of the address space showing where COW faults
//! landed. What is kept stays bounded however long the run: at most `TIME_BUCKETS` intervals
//! (the interval doubles when the run outgrows them) for at most `TRACKED_PIDS` pids (later
//! ones are counted together), and at most `ADDRESS_CELLS` (address range, pid) cells for the
//! strip (the range doubles likewise).
use std::{
    collections::{BTreeMap, HashMap},
    path::Path,
};

use anyhow::Context as _;
use plotters::{
    coord::Shift,
    prelude::*,
    style::text_anchor::{HPos, Pos, VPos},
};

use crate::{
    event::{Access, Fault, Outcome},
    sink::human_ns,
};

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

const WIDTH: u32 = 1200;
const TITLE_HEIGHT: u32 = 40;
const ROW_HEIGHT: u32 = 150;
const CUMULATIVE_HEIGHT: u32 = 230;
const LANE_HEIGHT: u32 = 30;
const FONT: &str = "sans-serif";

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

const CLASSES: usize = 5;

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

    fn index(self) -> usize {
        self as usize
    }

    fn color(self) -> RGBColor {
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

/// Faults per interval and class, of one pid (or of the pids counted together).
#[derive(Clone, Debug, Default)]
struct Series {
    comm: Option<String>,
    buckets: Vec<[u32; CLASSES]>,
    totals: [u64; CLASSES],
}

impl Series {
    fn count(&mut self, bucket: usize, class: FaultClass) {
        if self.buckets.len() <= bucket {
            self.buckets.resize(bucket + 1, [0; CLASSES]);
        }
        let slot = &mut self.buckets[bucket][class.index()];
        *slot = slot.saturating_add(1);
        self.totals[class.index()] += 1;
    }

    /// Twice as long intervals: each pair becomes one.
    fn halve(&mut self) {
        self.buckets = self
            .buckets
            .chunks(2)
            .map(|pair| {
                let mut merged = pair[0];
                if let Some(second) = pair.get(1) {
                    for (sum, count) in merged.iter_mut().zip(second) {
                        *sum = sum.saturating_add(*count);
                    }
                }
                merged
            })
            .collect();
    }

    fn add(&mut self, other: &Series) {
        if self.buckets.len() < other.buckets.len() {
            self.buckets.resize(other.buckets.len(), [0; CLASSES]);
        }
        for (mine, theirs) in self.buckets.iter_mut().zip(&other.buckets) {
            for (sum, count) in mine.iter_mut().zip(theirs) {
                *sum = sum.saturating_add(*count);
            }
        }
        for (sum, count) in self.totals.iter_mut().zip(other.totals) {
            *sum += count;
        }
    }

    fn total(&self) -> u64 {
        self.totals.iter().sum()
    }

    fn at(&self, bucket: usize, class: FaultClass) -> u32 {
        self.buckets.get(bucket).map_or(0, |b| b[class.index()])
    }
}

/// Where COW faults landed: counts per (address range, pid), ranges of `1 << shift` bytes.
#[derive(Clone, Debug)]
struct AddressStrip {
    shift: u32,
    cells: BTreeMap<(u64, u32), u32>,
}

impl AddressStrip {
    fn new() -> AddressStrip {
        AddressStrip {
            // One page per range to start with.
            shift: 12,
            cells: BTreeMap::new(),
        }
    }

    fn add(&mut self, address: u64, key: u32) {
        let cell = self.cells.entry((address >> self.shift, key)).or_default();
        *cell = cell.saturating_add(1);
        // At shift 63 there are at most two ranges per key, so this ends.
        while self.cells.len() > ADDRESS_CELLS && self.shift < 63 {
            self.shift += 1;
            let old = std::mem::take(&mut self.cells);
            for ((range, key), count) in old {
                let cell = self.cells.entry((range >> 1, key)).or_default();
                *cell = cell.saturating_add(count);
            }
        }
    }
}

/// Accumulates faults for the plot; memory stays bounded (see the module comment).
#[derive(Clone, Debug)]
pub struct FaultPlot {
    /// The first fault's time: the timelines start there.
    origin_ns: Option<u64>,
    bucket_ns: u64,
    buckets_used: usize,
    pids: HashMap<u32, Series>,
    others: Series,
    /// COW faults whose page the kernel copied, per interval (all pids).
    copied: Vec<u32>,
    copy_known: bool,
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
            copied: Vec::new(),
            copy_known: false,
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
        if fault.class == FaultClass::Cow {
            if let Some(copied) = fault.copied {
                self.copy_known = true;
                if copied {
                    if self.copied.len() <= bucket {
                        self.copied.resize(bucket + 1, 0);
                    }
                    self.copied[bucket] = self.copied[bucket].saturating_add(1);
                }
            }
            self.strip.add(fault.address, key);
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
        self.copied = self
            .copied
            .chunks(2)
            .map(|pair| pair.iter().fold(0u32, |sum, c| sum.saturating_add(*c)))
            .collect();
        self.buckets_used = self.buckets_used.div_ceil(2);
    }

    /// The timelines drawn: the busiest pids, then all the others together.
    fn rows(&self) -> Vec<(String, Series)> {
        let mut pids: Vec<(&u32, &Series)> = self.pids.iter().collect();
        pids.sort_by_key(|(pid, series)| (std::cmp::Reverse(series.total()), **pid));
        let mut rows: Vec<(String, Series)> = pids
            .iter()
            .take(TIMELINE_ROWS)
            .map(|(pid, series)| (pid_name(**pid, series), (*series).clone()))
            .collect();
        let mut rest = self.others.clone();
        for (_, series) in pids.iter().skip(TIMELINE_ROWS) {
            rest.add(series);
        }
        if rest.total() > 0 {
            rows.push(("other pids".to_string(), rest));
        }
        rows
    }

    fn draw(&self, svg: &mut String, title: &str) -> anyhow::Result<()> {
        let rows = self.rows();
        let lanes = self.strip_lanes();
        let height = TITLE_HEIGHT
            + ROW_HEIGHT * rows.len() as u32
            + CUMULATIVE_HEIGHT
            + 110
            + LANE_HEIGHT * lanes.names.len().max(1) as u32;
        let root = SVGBackend::with_string(svg, (WIDTH, height)).into_drawing_area();
        root.fill(&WHITE)?;
        let body = root.titled(title, (FONT, 22))?;
        let (timelines, rest) = body.split_vertically(ROW_HEIGHT * rows.len() as u32);
        let (cumulative, strip) = rest.split_vertically(CUMULATIVE_HEIGHT);
        self.draw_timelines(&timelines, &rows)?;
        self.draw_cumulative(&cumulative, &rows)?;
        self.draw_strip(&strip, &lanes)?;
        root.present()?;
        Ok(())
    }

    fn seconds(&self, buckets: usize) -> f64 {
        buckets as f64 * self.bucket_ns as f64 / 1e9
    }

    fn draw_timelines(
        &self,
        area: &DrawingArea<SVGBackend<'_>, Shift>,
        rows: &[(String, Series)],
    ) -> anyhow::Result<()> {
        // Every row draws the same classes, so one legend (on the first) serves all.
        let classes: Vec<FaultClass> = FaultClass::ALL
            .into_iter()
            .filter(|class| rows.iter().any(|(_, s)| s.totals[class.index()] > 0))
            .collect();
        let x_max = self.seconds(self.buckets_used);
        let y_desc = format!("faults / {}", human_ns(self.bucket_ns));
        for (row, ((name, series), area)) in rows
            .iter()
            .zip(area.split_evenly((rows.len(), 1)))
            .enumerate()
        {
            let peak = (0..self.buckets_used)
                .flat_map(|b| classes.iter().map(move |&c| series.at(b, c)))
                .max()
                .unwrap_or(0)
                .max(1);
            let mut chart = ChartBuilder::on(&area)
                .caption(format!("{name}: {} faults", series.total()), (FONT, 15))
                .margin(6)
                .margin_right(24)
                .x_label_area_size(22)
                .y_label_area_size(70)
                .build_cartesian_2d(0f64..x_max, 0f64..f64::from(peak) * 1.1)?;
            chart
                .configure_mesh()
                .y_desc(y_desc.as_str())
                .x_label_formatter(&|s| format!("{s:.3}s"))
                .y_labels(4)
                .label_style((FONT, 12))
                .axis_desc_style((FONT, 12))
                .draw()?;
            for &class in &classes {
                let color = class.color();
                let points = (0..self.buckets_used).map(|b| {
                    (
                        self.seconds(b) + self.seconds(1) / 2.0,
                        f64::from(series.at(b, class)),
                    )
                });
                let drawn = chart.draw_series(LineSeries::new(points, color.stroke_width(2)))?;
                if row == 0 {
                    drawn.label(class.label()).legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                    });
                }
            }
            if row == 0 {
                chart
                    .configure_series_labels()
                    .position(SeriesLabelPosition::UpperRight)
                    .background_style(WHITE.mix(0.85))
                    .border_style(BLACK)
                    .draw()?;
            }
        }
        Ok(())
    }

    fn draw_cumulative(
        &self,
        area: &DrawingArea<SVGBackend<'_>, Shift>,
        rows: &[(String, Series)],
    ) -> anyhow::Result<()> {
        let cow_faults = rows
            .iter()
            .map(|(_, s)| s.totals[FaultClass::Cow.index()])
            .sum::<u64>();
        let cow_bytes = cow_faults * self.page_size;
        // In one unit throughout, so the axis ticks are round numbers of it.
        let (unit, unit_name) = byte_unit(cow_bytes.max(self.page_size));
        let page = self.page_size as f64 / unit as f64;
        let running = |counts: &mut dyn Iterator<Item = u32>| -> Vec<f64> {
            let mut sum = 0u64;
            counts
                .map(|count| {
                    sum += u64::from(count);
                    sum as f64 * page
                })
                .collect()
        };
        let mut lines: Vec<(String, Vec<f64>, RGBColor)> = Vec::new();
        let mut all = Series::default();
        for (index, (name, series)) in rows.iter().enumerate() {
            all.add(series);
            let (r, g, b) = Palette99::pick(index).rgb();
            lines.push((
                name.clone(),
                running(&mut (0..self.buckets_used).map(|b| series.at(b, FaultClass::Cow))),
                RGBColor(r, g, b),
            ));
        }
        let total = running(&mut (0..self.buckets_used).map(|b| all.at(b, FaultClass::Cow)));
        let copied =
            running(&mut (0..self.buckets_used).map(|b| self.copied.get(b).copied().unwrap_or(0)));
        let peak = total.last().copied().unwrap_or(0.0).max(page);
        let x_max = self.seconds(self.buckets_used);
        let mut chart = ChartBuilder::on(area)
            .caption(
                format!(
                    "cumulative COW bytes (COW faults x {}): {} in all",
                    human_bytes(self.page_size),
                    human_bytes(cow_bytes)
                ),
                (FONT, 15),
            )
            .margin(6)
            .margin_right(24)
            .x_label_area_size(36)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..x_max, 0f64..peak * 1.1)?;
        chart
            .configure_mesh()
            .x_desc("seconds since the first fault")
            .x_label_formatter(&|s| format!("{s:.3}s"))
            .y_desc(unit_name)
            .y_labels(5)
            .label_style((FONT, 12))
            .axis_desc_style((FONT, 12))
            .draw()?;
        let at_end_of = |b: usize| self.seconds(b + 1);
        chart
            .draw_series(LineSeries::new(
                total
                    .iter()
                    .enumerate()
                    .map(|(b, bytes)| (at_end_of(b), *bytes)),
                BLACK.stroke_width(3),
            ))?
            .label("all pids")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], BLACK.stroke_width(3)));
        if self.copy_known {
            chart
                .draw_series(DashedLineSeries::new(
                    copied
                        .iter()
                        .enumerate()
                        .map(|(b, bytes)| (at_end_of(b), *bytes)),
                    6,
                    4,
                    BLACK.stroke_width(1),
                ))?
                .label("all pids, pages copied (not reused)")
                .legend(|(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], BLACK.stroke_width(1))
                });
        }
        if lines.len() > 1 {
            for (name, bytes, color) in lines {
                chart
                    .draw_series(LineSeries::new(
                        bytes.iter().enumerate().map(|(b, v)| (at_end_of(b), *v)),
                        color.stroke_width(2),
                    ))?
                    .label(name)
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                    });
            }
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()?;
        Ok(())
    }

    /// The strip's lanes: the pids with the most COW faults, then the others together.
    fn strip_lanes(&self) -> Lanes {
        let mut per_key: HashMap<u32, u64> = HashMap::new();
        for (&(_, key), &count) in &self.strip.cells {
            *per_key.entry(key).or_default() += u64::from(count);
        }
        let mut keys: Vec<(u32, u64)> = per_key.into_iter().filter(|&(k, _)| k != OTHERS).collect();
        keys.sort_by_key(|&(key, count)| (std::cmp::Reverse(count), key));
        let mut lanes = Lanes::default();
        for (key, _) in keys.iter().take(STRIP_LANES) {
            lanes.of.insert(*key, lanes.names.len() as u32);
            let name = match self.pids.get(key) {
                Some(series) => pid_name(*key, series),
                None => format!("pid {key}"),
            };
            lanes.names.push(name);
        }
        let crowded =
            keys.len() > STRIP_LANES || self.strip.cells.keys().any(|&(_, k)| k == OTHERS);
        if crowded {
            lanes.others = Some(lanes.names.len() as u32);
            lanes.names.push("other pids".to_string());
        }
        lanes
    }

    fn draw_strip(
        &self,
        area: &DrawingArea<SVGBackend<'_>, Shift>,
        lanes: &Lanes,
    ) -> anyhow::Result<()> {
        if lanes.names.is_empty() {
            area.draw(&Text::new(
                "No COW faults: nothing to place in the address space.",
                (80, 30),
                (FONT, 16),
            ))?;
            return Ok(());
        }
        // Counts per (range, lane), the pids without a lane merged into the last.
        let mut cells: BTreeMap<(u64, u32), u64> = BTreeMap::new();
        for (&(range, key), &count) in &self.strip.cells {
            let lane = lanes.of.get(&key).copied().or(lanes.others).unwrap_or(0);
            *cells.entry((range, lane)).or_default() += u64::from(count);
        }
        let layout = StripLayout::new(cells.keys().map(|&(range, _)| range));
        let most = cells.values().copied().max().unwrap_or(1);
        let lane_count = lanes.names.len() as u32;
        let range_bytes = 1u64 << self.strip.shift;
        let mut chart = ChartBuilder::on(area)
            .caption(
                format!(
                    "where COW faults landed: {} ranges of {} with faults, gaps between them cut (grey)",
                    cells.len(),
                    human_bytes(range_bytes)
                ),
                (FONT, 15),
            )
            .margin(6)
            .margin_right(24)
            .x_label_area_size(36)
            .y_label_area_size(130)
            // Lane i spans i..i + 1.
            .build_cartesian_2d(0f64..layout.width, 0f64..f64::from(lane_count))?;
        let shift = self.strip.shift;
        let address_at = |x: &f64| match layout.range_at(*x) {
            Some(range) => format!("{:#x}", range << shift),
            None => String::new(),
        };
        chart
            .configure_mesh()
            .disable_mesh()
            .x_desc("address")
            .x_labels(6)
            .x_label_formatter(&address_at)
            // Lane names go in the middle of each lane, below; ticks would sit on its edges.
            .y_labels(0)
            .label_style((FONT, 12))
            .axis_desc_style((FONT, 12))
            .draw()?;
        let base = area.get_base_pixel();
        let name_style =
            TextStyle::from((FONT, 12).into_font()).pos(Pos::new(HPos::Right, VPos::Center));
        for (lane, name) in lanes.names.iter().enumerate() {
            let (x, y) = chart.backend_coord(&(0.0, lane as f64 + 0.5));
            area.draw(&Text::new(
                name.as_str(),
                (x - base.0 - 8, y - base.1),
                &name_style,
            ))?;
        }
        let top = f64::from(lane_count);
        chart.draw_series(layout.gaps().map(|(from, to)| {
            Rectangle::new([(from, 0.0), (to, top)], RGBColor(225, 225, 225).filled())
        }))?;
        // At least a thousandth of the width, so a lone page among wide segments still shows.
        let min_width = (layout.width / 1000.0).max(1.0);
        let color = FaultClass::Cow.color();
        chart.draw_series(cells.iter().map(|(&(range, lane), &count)| {
            let x = layout.x_of(range);
            let shade = 0.25 + 0.75 * ((1 + count) as f64).ln() / ((1 + most) as f64).ln();
            let y = f64::from(lane);
            Rectangle::new(
                [(x, y), (x + min_width, y + 1.0)],
                color.mix(shade).filled(),
            )
        }))?;
        Ok(())
    }
}

/// The address strip's rows.
#[derive(Default)]
struct Lanes {
    names: Vec<String>,
    /// Series key -> lane.
    of: HashMap<u32, u32>,
    /// The lane of every pid without its own.
    others: Option<u32>,
}

/// The strip's x axis: the ranges with faults side by side in address order, each run of
/// nearby ranges one segment, the gaps between segments cut down to a narrow separator.
struct StripLayout {
    /// (first range, last range, x of the first), in address order.
    segments: Vec<(u64, u64, f64)>,
    width: f64,
}

impl StripLayout {
    fn new(sorted_ranges: impl Iterator<Item = u64>) -> StripLayout {
        let mut spans: Vec<(u64, u64)> = Vec::new();
        for range in sorted_ranges {
            match spans.last_mut() {
                Some((_, last)) if range <= *last + MAX_GAP_CELLS => *last = (*last).max(range),
                _ => spans.push((range, range)),
            }
        }
        let content = spans
            .iter()
            .map(|(first, last)| last - first + 1)
            .sum::<u64>() as f64;
        // Each cut gap is 3% of the width, but all of them together at most a quarter.
        let gaps = spans.len().saturating_sub(1).max(1) as f64;
        let separator = (content * 0.03).min(content * 0.25 / gaps);
        let mut x = 0.0;
        let mut segments = Vec::with_capacity(spans.len());
        for (first, last) in spans {
            segments.push((first, last, x));
            x += (last - first + 1) as f64 + separator;
        }
        StripLayout {
            segments,
            width: x - separator,
        }
    }

    fn x_of(&self, range: u64) -> f64 {
        let index = self
            .segments
            .partition_point(|&(first, _, _)| first <= range);
        let (first, _, x) = self.segments[index.saturating_sub(1)];
        x + range.saturating_sub(first) as f64
    }

    /// The range under `x`; None in a separator.
    fn range_at(&self, x: f64) -> Option<u64> {
        let index = self.segments.partition_point(|&(_, _, x0)| x0 <= x);
        let (first, last, x0) = *self.segments.get(index.checked_sub(1)?)?;
        let range = first + (x - x0) as u64;
        (range <= last).then_some(range)
    }

    /// The separators' x extents.
    fn gaps(&self) -> impl Iterator<Item = (f64, f64)> + '_ {
        self.segments.windows(2).map(|pair| {
            let (first, last, x) = pair[0];
            (x + (last - first + 1) as f64, pair[1].2)
        })
    }
}

fn draw_nothing(svg: &mut String, title: &str) -> anyhow::Result<()> {
    let root = SVGBackend::with_string(svg, (WIDTH, 140)).into_drawing_area();
    root.fill(&WHITE)?;
    let body = root.titled(title, (FONT, 22))?;
    body.draw(&Text::new(
        "Nothing to plot: no completed page faults were traced.",
        (20, 30),
        (FONT, 18),
    ))?;
    root.present()?;
    Ok(())
}

fn pid_name(pid: u32, series: &Series) -> String {
    match &series.comm {
        Some(comm) => format!("pid {pid} ({comm})"),
        None => format!("pid {pid}"),
    }
}

/// The largest binary unit not above `bytes`: (its size, its name).
fn byte_unit(bytes: u64) -> (u64, &'static str) {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut unit = 0;
    while unit + 1 < UNITS.len() && bytes >> (10 * (unit + 1)) > 0 {
        unit += 1;
    }
    (1 << (10 * unit), UNITS[unit])
}

/// 1536 -> "1.5 KiB".
fn human_bytes(bytes: u64) -> String {
    let (unit, name) = byte_unit(bytes);
    let value = bytes as f64 / unit as f64;
    if value.fract() == 0.0 {
        format!("{value:.0} {name}")
    } else {
        format!("{value:.1} {name}")
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
    use super::*;
    use crate::sink::test_support::article_fault;

    const MS: u64 = 1_000_000;

    fn fault(ts_ns: u64, pid: u32, address: u64, class: FaultClass) -> PlotFault {
        PlotFault {
            ts_ns,
            pid,
            address,
            class,
            copied: (class == FaultClass::Cow).then_some(true),
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
                FaultClass::Read,
            ));
            faults.push(fault(
                i * MS + 1,
                100,
                0x5555_0010_0000 + i * 4096,
                FaultClass::OtherWrite,
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
                FaultClass::Cow,
            ));
        }
        faults.push(fault(1900 * MS, 101, 0x7f00_0000_0000, FaultClass::Major));
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
        assert_eq!(FaultClass::of(&cow), Some(FaultClass::Cow));
        let mut major = article_fault();
        major.outcome = Outcome::Major;
        assert_eq!(FaultClass::of(&major), Some(FaultClass::Major));
        let mut incomplete = article_fault();
        incomplete.outcome = Outcome::Incomplete;
        assert_eq!(FaultClass::of(&incomplete), None);
        let mut unknown = article_fault();
        unknown.error_code = None;
        unknown.class = cow_trace_common::class::UNKNOWN;
        assert_eq!(FaultClass::of(&unknown), Some(FaultClass::Unknown));
        let mut read = article_fault();
        read.error_code = Some(0x4);
        read.class = cow_trace_common::class::READ;
        assert_eq!(FaultClass::of(&read), Some(FaultClass::Read));
        let mut write = article_fault();
        write.error_code = Some(0x6);
        write.class = cow_trace_common::class::WRITE;
        assert_eq!(FaultClass::of(&write), Some(FaultClass::OtherWrite));
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
            "COW writes",
            "other writes",
            "reads and exec",
            "major",
            "pid 100: 400 faults",
            "pid 101: 301 faults",
            "cumulative COW bytes",
            "1.2 MiB in all",
            "all pids, pages copied",
            "where COW faults landed",
            "0x7ffd215",
        ] {
            assert!(has(wanted), "no text with {wanted:?} in {texts:#?}");
        }
        assert!(
            !has("access unknown"),
            "a class with no faults has no legend entry"
        );
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
            .map(|i| fault(i * MS, 7, 0x1000 * i, FaultClass::Read))
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
            plot.add(&fault(5 + i * 100 * MS, 1, 0x1000, FaultClass::Read));
        }
        assert!(plot.buckets_used <= TIME_BUCKETS);
        assert!(plot.bucket_ns >= 3_600_000 * MS / TIME_BUCKETS as u64);
        let series = &plot.pids[&1];
        assert!(series.buckets.len() <= TIME_BUCKETS);
        let counted: u64 = series
            .buckets
            .iter()
            .map(|b| u64::from(b[FaultClass::Read.index()]))
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
                    FaultClass::Cow,
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
    fn strip_layout_cuts_gaps() {
        let layout = StripLayout::new([10, 11, 13, 1000, 1001].into_iter());
        // 10..=13 and 1000..=1001: 6 ranges and one cut gap, 3% of 6 wide.
        assert_eq!(layout.segments.len(), 2);
        assert_eq!(layout.width, 6.18);
        assert_eq!(layout.x_of(13), 3.0);
        assert_eq!(layout.x_of(1000), 4.18);
        assert_eq!(layout.range_at(3.5), Some(13));
        assert_eq!(layout.range_at(4.1), None, "in the separator");
        assert_eq!(layout.range_at(5.5), Some(1001));
        assert_eq!(layout.gaps().collect::<Vec<_>>(), [(4.0, 4.18)]);
        // Many gaps share a quarter of the width.
        let spread = StripLayout::new((0..100).map(|i| i * 1000));
        assert!((spread.width - 125.0).abs() < 1e-9, "{}", spread.width);
        // One range.
        let single = StripLayout::new([7].into_iter());
        assert_eq!((single.width, single.range_at(0.5)), (1.0, Some(7)));
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

    #[test]
    fn bytes_read_like_sizes() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(4096), "4 KiB");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 << 30), "3 GiB");
    }
}
