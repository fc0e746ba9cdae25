//! The time views: faults per interval of each row, and the cumulative bytes copied on write,
//! with each snapshot window shaded across them.
use plotters::{
    coord::{Shift, types::RangedCoordf64},
    prelude::*,
};

use super::{
    FaultPlot, SHADED_WINDOWS,
    class::{CLASSES, PlotClass},
    draw::FONT,
    legend::{Legend, Sample},
    series::Series,
};
use crate::output::format::{byte_unit, human_bytes, human_ns};

type TimeChart<'a, 'b> =
    ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// The shade of a snapshot window.
const WINDOW_SHADE: RGBColor = RGBColor(70, 130, 180);
const WINDOW_OPACITY: f64 = 0.15;
/// The right margin of the time panels, and the width of the right axis the cumulative panel
/// has when it counts COW faults without a copy: the other panels' margin grows by as much,
/// so their time axes line up.
const RIGHT_MARGIN: u32 = 24;
const RIGHT_AXIS: u32 = 70;

/// The copy-on-write faults not known to have copied, drawn on the cumulative panel's right
/// axis.
const NO_COPY: [PlotClass; 3] = [
    PlotClass::CowReused,
    PlotClass::CowZeroFill,
    PlotClass::CowUnknown,
];

/// The classes the rows draw: those that occurred.
fn classes_drawn(rows: &[(String, Series)]) -> Vec<PlotClass> {
    PlotClass::ALL
        .into_iter()
        .filter(|class| rows.iter().any(|(_, s)| s.totals[class.index()] > 0))
        .collect()
}

/// The COW faults without a copy that occurred: the cumulative panel's right axis.
fn no_copy_drawn(all: &Series) -> Vec<PlotClass> {
    NO_COPY
        .into_iter()
        .filter(|class| all.totals[class.index()] > 0)
        .collect()
}

/// The right axis's width: in every time panel if the cumulative one has it.
fn right_axis_size(rows: &[(String, Series)]) -> u32 {
    if no_copy_drawn(&all_of(rows)).is_empty() {
        0
    } else {
        RIGHT_AXIS
    }
}

/// The colour of a row's line in the cumulative panel.
fn row_color(index: usize) -> RGBColor {
    let (r, g, b) = Palette99::pick(index).rgb();
    RGBColor(r, g, b)
}

fn all_of(rows: &[(String, Series)]) -> Series {
    let mut all = Series::default();
    for (_, series) in rows {
        all.add(series);
    }
    all
}

const WINDOW_SAMPLE: Sample = Sample::Shade {
    color: WINDOW_SHADE,
    opacity: WINDOW_OPACITY,
};

impl FaultPlot {
    /// What the rows draw (the same in each), and the snapshot windows' shade.
    pub(super) fn timeline_legend(&self, rows: &[(String, Series)]) -> Legend {
        let mut legend = Legend::default();
        for class in classes_drawn(rows) {
            legend.push(
                class.label(),
                Sample::Line {
                    color: class.color(),
                    width: 2,
                },
            );
        }
        if !self.windows.shaded(SHADED_WINDOWS).is_empty() {
            legend.push("a snapshot child alive", WINDOW_SAMPLE);
        }
        legend
    }

    /// The cumulative panel's lines, and the snapshot windows' shade.
    pub(super) fn cumulative_legend(&self, rows: &[(String, Series)]) -> Legend {
        let all = all_of(rows);
        let mut legend = Legend::default();
        legend.push(
            "all pids: bytes copied",
            Sample::Line {
                color: BLACK,
                width: 3,
            },
        );
        if rows.len() > 1 {
            for (index, (name, _)) in rows.iter().enumerate() {
                legend.push(
                    format!("{name}: copied"),
                    Sample::Line {
                        color: row_color(index),
                        width: 2,
                    },
                );
            }
        }
        for class in no_copy_drawn(&all) {
            let faults = all.totals[class.index()];
            legend.push(
                format!(
                    "{}: {faults} faults (right axis)",
                    class.label().trim_start_matches("COW writes: ")
                ),
                Sample::Dashed {
                    color: class.color(),
                    width: 2,
                },
            );
        }
        if !self.windows.shaded(SHADED_WINDOWS).is_empty() {
            legend.push("a snapshot child alive", WINDOW_SAMPLE);
        }
        legend
    }

    pub(super) fn draw_timelines(
        &self,
        area: &DrawingArea<SVGBackend<'_>, Shift>,
        rows: &[(String, Series)],
    ) -> anyhow::Result<()> {
        let classes = classes_drawn(rows);
        let x_max = self.seconds(self.buckets_used);
        let y_desc = format!("faults / {}", human_ns(self.bucket_ns));
        let right_axis = right_axis_size(rows);
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
            let copied = series.totals[PlotClass::CowCopied.index()];
            let caption = if copied > 0 {
                format!("{name}: {} faults, {copied} pages copied", series.total())
            } else {
                format!("{name}: {} faults", series.total())
            };
            let y_top = f64::from(peak) * 1.1;
            let mut chart = ChartBuilder::on(&area)
                .caption(caption, (FONT, 15))
                .margin(6)
                .margin_right(RIGHT_MARGIN + right_axis)
                .x_label_area_size(22)
                .y_label_area_size(70)
                .build_cartesian_2d(0f64..x_max, 0f64..y_top)?;
            chart
                .configure_mesh()
                .y_desc(y_desc.as_str())
                .x_label_formatter(&|s| format!("{s:.3}s"))
                .y_labels(4)
                .label_style((FONT, 12))
                .axis_desc_style((FONT, 12))
                .draw()?;
            self.shade_windows(&mut chart, y_top, row == 0)?;
            for &class in &classes {
                let points = (0..self.buckets_used).map(|b| {
                    (
                        self.seconds(b) + self.seconds(1) / 2.0,
                        f64::from(series.at(b, class)),
                    )
                });
                chart.draw_series(LineSeries::new(points, class.color().stroke_width(2)))?;
            }
        }
        Ok(())
    }

    /// Bytes copied on write over time: the headline. The copy-on-write faults that copied
    /// nothing (reuses, zero fills) are counted on their own axis, as faults.
    pub(super) fn draw_cumulative(
        &self,
        area: &DrawingArea<SVGBackend<'_>, Shift>,
        rows: &[(String, Series)],
    ) -> anyhow::Result<()> {
        let all = all_of(rows);
        let copied_pages = all.totals[PlotClass::CowCopied.index()];
        let copied_bytes = copied_pages * self.page_size;
        // In one unit throughout, so the axis ticks are round numbers of it.
        let (unit, unit_name) = byte_unit(copied_bytes.max(self.page_size));
        let page = self.page_size as f64 / unit as f64;
        let running = |class: PlotClass, series: &Series, scale: f64| -> Vec<f64> {
            let mut sum = 0u64;
            (0..self.buckets_used)
                .map(|b| {
                    sum += u64::from(series.at(b, class));
                    sum as f64 * scale
                })
                .collect()
        };
        let no_copy = no_copy_drawn(&all);
        let peak_bytes = copied_pages.max(1) as f64 * page;
        let peak_faults = no_copy
            .iter()
            .map(|class| all.totals[class.index()])
            .max()
            .unwrap_or(1);
        let x_max = self.seconds(self.buckets_used);
        let mut chart = ChartBuilder::on(area)
            .caption(
                cumulative_caption(copied_pages, copied_bytes, &all.totals),
                (FONT, 15),
            )
            .margin(6)
            .margin_right(RIGHT_MARGIN)
            .x_label_area_size(36)
            .y_label_area_size(70)
            .right_y_label_area_size(right_axis_size(rows))
            .build_cartesian_2d(0f64..x_max, 0f64..peak_bytes * 1.1)?
            .set_secondary_coord(0f64..x_max, 0f64..peak_faults as f64 * 1.1);
        chart
            .configure_mesh()
            .x_desc("seconds since the first fault")
            .x_label_formatter(&|s| format!("{s:.3}s"))
            .y_desc(format!("{unit_name} copied"))
            .y_labels(5)
            .label_style((FONT, 12))
            .axis_desc_style((FONT, 12))
            .draw()?;
        if !no_copy.is_empty() {
            chart
                .configure_secondary_axes()
                .y_desc("COW faults without a copy")
                .y_labels(5)
                .label_style((FONT, 12))
                .axis_desc_style((FONT, 12))
                .draw()?;
        }
        self.shade_windows(&mut chart, peak_bytes * 1.1, true)?;
        let at_end_of = |b: usize| self.seconds(b + 1);
        let line = |values: Vec<f64>| {
            values
                .into_iter()
                .enumerate()
                .map(move |(b, v)| (at_end_of(b), v))
        };
        for class in &no_copy {
            chart.draw_secondary_series(DashedLineSeries::new(
                line(running(*class, &all, 1.0)),
                6,
                4,
                class.color().stroke_width(2),
            ))?;
        }
        if rows.len() > 1 {
            for (index, (_, series)) in rows.iter().enumerate() {
                chart.draw_series(LineSeries::new(
                    line(running(PlotClass::CowCopied, series, page)),
                    row_color(index).stroke_width(2),
                ))?;
            }
        }
        // The headline last, on top.
        chart.draw_series(LineSeries::new(
            line(running(PlotClass::CowCopied, &all, page)),
            BLACK.stroke_width(3),
        ))?;
        Ok(())
    }

    /// Shades each snapshot window from the child's fork to its exit (or the end of the plot);
    /// `label`: names them ("while child N ran") where the names do not overlap.
    fn shade_windows(
        &self,
        chart: &mut TimeChart<'_, '_>,
        y_top: f64,
        label: bool,
    ) -> anyhow::Result<()> {
        let windows = self.windows.shaded(SHADED_WINDOWS);
        if windows.is_empty() {
            return Ok(());
        }
        let origin = self.origin_ns.unwrap_or(0);
        let x_max = self.seconds(self.buckets_used);
        // At least two pixels wide, so a short window still shows.
        let min_width = x_max / 500.0;
        let seconds = |ns: u64| (ns.saturating_sub(origin) as f64 / 1e9).min(x_max);
        let spans: Vec<(f64, f64, u32)> = windows
            .iter()
            .map(|window| {
                let from = seconds(window.opened_ns).min(x_max - min_width);
                let to = window.closed_ns.map_or(x_max, seconds);
                (from, to.max(from + min_width), window.child)
            })
            .collect();
        let shade = WINDOW_SHADE.mix(WINDOW_OPACITY).filled();
        chart.draw_series(
            spans
                .iter()
                .map(|&(from, to, _)| Rectangle::new([(from, 0.0), (to, y_top)], shade)),
        )?;
        if !label {
            return Ok(());
        }
        let style = TextStyle::from((FONT, 11).into_font()).color(&WINDOW_SHADE);
        let mut free_from = i32::MIN;
        for &(from, _, child) in &spans {
            let text = format!("while child {child} ran");
            let (x, _) = chart.backend_coord(&(from, y_top));
            // About 6 pixels a character at this size.
            if x < free_from {
                continue;
            }
            free_from = x + 6 * text.len() as i32 + 8;
            chart.plotting_area().draw(
                &(EmptyElement::at((from, y_top)) + Text::new(text, (3, 3), style.clone())),
            )?;
        }
        Ok(())
    }
}

/// "copied on write: 2.2 MiB (558 pages, 2285568 bytes); no copy: 14 reuses, 3 zero fills".
fn cumulative_caption(pages: u64, bytes: u64, totals: &[u64; CLASSES]) -> String {
    let count = |class: PlotClass| totals[class.index()];
    let mut caption = format!(
        "copied on write: {} ({pages} pages, {bytes} bytes)",
        human_bytes(bytes)
    );
    let no_copy: Vec<String> = [
        (PlotClass::CowReused, "reuses"),
        (PlotClass::CowZeroFill, "zero fills"),
    ]
    .into_iter()
    .filter(|&(class, _)| count(class) > 0)
    .map(|(class, what)| format!("{} {what}", count(class)))
    .collect();
    if !no_copy.is_empty() {
        caption.push_str(&format!("; no copy: {}", no_copy.join(", ")));
    }
    if count(PlotClass::CowUnknown) > 0 {
        caption.push_str(&format!(
            "; outcome unknown: {} COW faults",
            count(PlotClass::CowUnknown)
        ));
    }
    caption
}
