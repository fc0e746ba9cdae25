//! Laying out the whole picture: the timelines' rows, the sizes of each part, and the
//! helpers every part uses.
use plotters::prelude::*;

use super::{FaultPlot, TIMELINE_ROWS, series::Series};

pub(super) const WIDTH: u32 = 1200;
pub(super) const TITLE_HEIGHT: u32 = 40;
pub(super) const ROW_HEIGHT: u32 = 150;
pub(super) const CUMULATIVE_HEIGHT: u32 = 230;
pub(super) const LANE_HEIGHT: u32 = 30;
pub(super) const FONT: &str = "sans-serif";

impl FaultPlot {
    /// The timelines drawn: the busiest pids, then all the others together.
    pub(super) fn rows(&self) -> Vec<(String, Series)> {
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

    pub(super) fn draw(&self, svg: &mut String, title: &str) -> anyhow::Result<()> {
        let rows = self.rows();
        let lanes = self.strip_lanes();
        // The legends go beside the panels, so they hide no data: the timelines' above them,
        // the cumulative panel's below it.
        let timeline_legend = self.timeline_legend(&rows);
        let cumulative_legend = self.cumulative_legend(&rows);
        let height = TITLE_HEIGHT
            + timeline_legend.height()
            + ROW_HEIGHT * rows.len() as u32
            + CUMULATIVE_HEIGHT
            + cumulative_legend.height()
            + 110
            + LANE_HEIGHT * lanes.names.len().max(1) as u32;
        let root = SVGBackend::with_string(svg, (WIDTH, height)).into_drawing_area();
        root.fill(&WHITE)?;
        let body = root.titled(title, (FONT, 22))?;
        let (legend, rest) = body.split_vertically(timeline_legend.height());
        let (timelines, rest) = rest.split_vertically(ROW_HEIGHT * rows.len() as u32);
        let (cumulative, rest) = rest.split_vertically(CUMULATIVE_HEIGHT);
        let (cumulative_legend_area, strip) = rest.split_vertically(cumulative_legend.height());
        timeline_legend.draw(&legend)?;
        self.draw_timelines(&timelines, &rows)?;
        self.draw_cumulative(&cumulative, &rows)?;
        cumulative_legend.draw(&cumulative_legend_area)?;
        self.draw_strip(&strip, &lanes)?;
        root.present()?;
        Ok(())
    }

    pub(super) fn seconds(&self, buckets: usize) -> f64 {
        buckets as f64 * self.bucket_ns as f64 / 1e9
    }
}

pub(super) fn draw_nothing(svg: &mut String, title: &str) -> anyhow::Result<()> {
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

pub(super) fn pid_name(pid: u32, series: &Series) -> String {
    match &series.comm {
        Some(comm) => format!("pid {pid} ({comm})"),
        None => format!("pid {pid}"),
    }
}
