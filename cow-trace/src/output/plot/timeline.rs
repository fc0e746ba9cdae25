//! The time views: faults per interval of each row, and the cumulative COW bytes.
use plotters::{coord::Shift, prelude::*};

use super::{FaultPlot, class::PlotClass, draw::FONT, series::Series};
use crate::output::format::{byte_unit, human_bytes, human_ns};

impl FaultPlot {
    pub(super) fn draw_timelines(
        &self,
        area: &DrawingArea<SVGBackend<'_>, Shift>,
        rows: &[(String, Series)],
    ) -> anyhow::Result<()> {
        // Every row draws the same classes, so one legend (on the first) serves all.
        let classes: Vec<PlotClass> = PlotClass::ALL
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

    pub(super) fn draw_cumulative(
        &self,
        area: &DrawingArea<SVGBackend<'_>, Shift>,
        rows: &[(String, Series)],
    ) -> anyhow::Result<()> {
        let cow_faults = rows
            .iter()
            .map(|(_, s)| s.totals[PlotClass::Cow.index()])
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
                running(&mut (0..self.buckets_used).map(|b| series.at(b, PlotClass::Cow))),
                RGBColor(r, g, b),
            ));
        }
        let total = running(&mut (0..self.buckets_used).map(|b| all.at(b, PlotClass::Cow)));
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
}
