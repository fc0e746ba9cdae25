//! Legends drawn as rows of entries beside a panel, never over it: they hide no data.
use plotters::{coord::Shift, prelude::*};

use super::draw::{FONT, WIDTH};

const FONT_SIZE: u32 = 12;
const LINE_HEIGHT: u32 = 18;
/// Where the entries start: in line with the panels' plotting areas.
const LEFT: i32 = 76;
const SAMPLE_WIDTH: i32 = 18;
const GAP: i32 = 22;

/// How an entry's series is drawn.
#[derive(Clone, Copy, Debug)]
pub(super) enum Sample {
    Line { color: RGBColor, width: u32 },
    Dashed { color: RGBColor, width: u32 },
    Shade { color: RGBColor, opacity: f64 },
}

#[derive(Default)]
pub(super) struct Legend {
    entries: Vec<(String, Sample)>,
}

impl Legend {
    pub(super) fn push(&mut self, label: impl Into<String>, sample: Sample) {
        self.entries.push((label.into(), sample));
    }

    /// The height it takes: nothing without entries.
    pub(super) fn height(&self) -> u32 {
        match self.layout().last() {
            Some(&(_, _, line)) => (line + 1) * LINE_HEIGHT + 6,
            None => 0,
        }
    }

    pub(super) fn draw(&self, area: &DrawingArea<SVGBackend<'_>, Shift>) -> anyhow::Result<()> {
        let style = TextStyle::from((FONT, FONT_SIZE).into_font());
        for ((label, sample), (_, x, line)) in self.entries.iter().zip(self.layout()) {
            let y = (line * LINE_HEIGHT + LINE_HEIGHT / 2) as i32;
            let (from, to) = ((x, y), (x + SAMPLE_WIDTH, y));
            match *sample {
                Sample::Line { color, width } => {
                    area.draw(&PathElement::new(vec![from, to], color.stroke_width(width)))?
                }
                Sample::Dashed { color, width } => {
                    for start in [0, 8, 16] {
                        let end = (start + 5).min(SAMPLE_WIDTH);
                        area.draw(&PathElement::new(
                            vec![(x + start, y), (x + end, y)],
                            color.stroke_width(width),
                        ))?;
                    }
                }
                Sample::Shade { color, opacity } => area.draw(&Rectangle::new(
                    [(x, y - 5), (x + SAMPLE_WIDTH, y + 5)],
                    color.mix(opacity).filled(),
                ))?,
            }
            area.draw(&Text::new(
                label.as_str(),
                (x + SAMPLE_WIDTH + 6, y - (FONT_SIZE as i32) / 2),
                &style,
            ))?;
        }
        Ok(())
    }

    /// (entry, x, line) of each entry: left to right, wrapped at the width.
    fn layout(&self) -> Vec<(usize, i32, u32)> {
        let mut placed = Vec::with_capacity(self.entries.len());
        let (mut x, mut line) = (LEFT, 0);
        for (index, (label, _)) in self.entries.iter().enumerate() {
            let width = SAMPLE_WIDTH + 6 + text_width(label);
            if x > LEFT && x + width > WIDTH as i32 - 24 {
                x = LEFT;
                line += 1;
            }
            placed.push((index, x, line));
            x += width + GAP;
        }
        placed
    }
}

/// SVG text has no metrics here: an upper estimate for a sans-serif face at this size.
fn text_width(text: &str) -> i32 {
    (text.chars().count() as f64 * f64::from(FONT_SIZE) * 0.6).ceil() as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wraps_at_the_width_and_takes_no_room_when_empty() {
        let mut legend = Legend::default();
        assert_eq!(legend.height(), 0);
        let sample = Sample::Line {
            color: BLACK,
            width: 2,
        };
        legend.push("a", sample);
        assert_eq!(legend.height(), LINE_HEIGHT + 6);
        for _ in 0..20 {
            legend.push("a fairly long legend entry", sample);
        }
        let layout = legend.layout();
        assert!(layout.iter().all(|&(_, x, _)| x < WIDTH as i32));
        assert!(layout.last().unwrap().2 >= 3, "{layout:?}");
        assert_eq!(
            legend.height(),
            (layout.last().unwrap().2 + 1) * LINE_HEIGHT + 6
        );
    }
}
