//! The address view: where COW faults landed, one lane per busy pid, gaps cut short.
use std::collections::{BTreeMap, HashMap};

use plotters::{
    coord::Shift,
    prelude::*,
    style::text_anchor::{HPos, Pos, VPos},
};

use super::{
    FaultPlot, MAX_GAP_CELLS, OTHERS, STRIP_LANES,
    class::PlotClass,
    draw::{FONT, pid_name},
};
use crate::output::format::human_bytes;

impl FaultPlot {
    /// The strip's lanes: the pids with the most COW faults, then the others together.
    pub(super) fn strip_lanes(&self) -> Lanes {
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

    pub(super) fn draw_strip(
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
        let color = PlotClass::CowCopied.color();
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
pub(super) struct Lanes {
    pub(super) names: Vec<String>,
    /// Series key -> lane.
    pub(super) of: HashMap<u32, u32>,
    /// The lane of every pid without its own.
    pub(super) others: Option<u32>,
}

/// The strip's x axis: the ranges with faults side by side in address order, each run of
/// nearby ranges one segment, the gaps between segments cut down to a narrow separator.
pub(super) struct StripLayout {
    /// (first range, last range, x of the first), in address order.
    pub(super) segments: Vec<(u64, u64, f64)>,
    pub(super) width: f64,
}

impl StripLayout {
    pub(super) fn new(sorted_ranges: impl Iterator<Item = u64>) -> StripLayout {
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

    pub(super) fn x_of(&self, range: u64) -> f64 {
        let index = self
            .segments
            .partition_point(|&(first, _, _)| first <= range);
        let (first, _, x) = self.segments[index.saturating_sub(1)];
        x + range.saturating_sub(first) as f64
    }

    /// The range under `x`; None in a separator.
    pub(super) fn range_at(&self, x: f64) -> Option<u64> {
        let index = self.segments.partition_point(|&(_, _, x0)| x0 <= x);
        let (first, last, x0) = *self.segments.get(index.checked_sub(1)?)?;
        let range = first + (x - x0) as u64;
        (range <= last).then_some(range)
    }

    /// The separators' x extents.
    pub(super) fn gaps(&self) -> impl Iterator<Item = (f64, f64)> + '_ {
        self.segments.windows(2).map(|pair| {
            let (first, last, x) = pair[0];
            (x + (last - first + 1) as f64, pair[1].2)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
