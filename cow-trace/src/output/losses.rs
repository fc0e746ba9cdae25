//! The loss counters while tracing (the kernel side's, and the mapping records'): a LOST line
//! on stderr for each new loss, with the remedy for what filled up, and what happens when the
//! counters cannot be read.
use crate::event::Lost;

/// The counters as last read, and how much of them the LOST lines have reported.
#[derive(Default)]
pub struct Losses {
    last: Lost,
    reported: Lost,
    /// A failed read was warned about (once: the next ones would say the same).
    warned: bool,
}

impl Losses {
    /// Takes a read of the counters. A failed read is no reason to stop tracing: it is warned
    /// about, and the counts stay those read last (so they may be low).
    pub fn update(&mut self, read: anyhow::Result<Lost>) -> Lost {
        match read {
            Ok(lost) => self.last = lost,
            Err(error) if !self.warned => {
                log::warn!("reading the loss counters failed, losses may be missing: {error:#}");
                self.warned = true;
            }
            Err(_) => {}
        }
        self.last
    }

    /// The LOST lines for the faults lost since the last call, each with its remedy.
    pub fn new_lines(&mut self) -> Vec<String> {
        let (now, before) = (self.last, self.reported);
        let mut lines = Vec::new();
        if now.ring_full > before.ring_full {
            lines.push(format!(
                "LOST {} events (ring buffer full): try a larger --ring-size",
                now.ring_full - before.ring_full
            ));
        }
        if now.summary_full > before.summary_full {
            lines.push(format!(
                "LOST {} faults (--summary's maps full: too many regions, stacks or windows to count): trace fewer processes, drop --stack, or stream them without --summary",
                now.summary_full - before.summary_full
            ));
        }
        if now.hist_full > before.hist_full {
            lines.push(hist_full_line(now.hist_full - before.hist_full));
        }
        if now.mapping_records > before.mapping_records {
            lines.push(format!(
                "LOST {} mapping records (mapping ring full): some addresses may show [unknown]",
                now.mapping_records - before.mapping_records
            ));
        }
        if now.stacks.ring_full > before.stacks.ring_full {
            lines.push(format!(
                "LOST {} stacks (ring buffer full): try a larger --ring-size, or a smaller --stack-size",
                now.stacks.ring_full - before.stacks.ring_full
            ));
        }
        if now.stacks.map_full > before.stacks.map_full {
            lines.push(format!(
                "LOST {} stacks (the kernel's stack map: its bucket for the stack held another, or it was full): --stack=dwarf has no such map",
                now.stacks.map_full - before.stacks.map_full
            ));
        }
        self.reported = now;
        lines
    }
}

/// Timed faults whose latency did not fit in the histograms: no loss (the faults are counted),
/// so no LOST line, but the histograms miss them, and the user should know why and what to do.
fn hist_full_line(faults: u64) -> String {
    format!(
        "{faults} faults' latencies are not in the histograms: the histogram map was full (more pid x fault class histograms at once than its {}); the faults are counted, their latencies in AVG LAT; for every latency, trace without --summary",
        cow_trace_common::summary_maps::HISTS
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_loss_gets_its_own_remedy_once() {
        let mut losses = Losses::default();
        losses.update(Ok(Lost {
            ring_full: 3,
            ..Lost::default()
        }));
        let lines = losses.new_lines();
        assert_eq!(lines.len(), 1);
        assert!(lines[0].starts_with("LOST 3 events") && lines[0].contains("--ring-size"));
        assert!(losses.new_lines().is_empty(), "reported already");
        losses.update(Ok(Lost {
            ring_full: 3,
            summary_full: 5,
            ..Lost::default()
        }));
        let lines = losses.new_lines();
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].starts_with("LOST 5 faults"), "{lines:?}");
        assert!(!lines[0].contains("--ring-size"), "{lines:?}");
        losses.update(Ok(Lost {
            ring_full: 3,
            summary_full: 5,
            mapping_records: 2,
            ..Lost::default()
        }));
        assert_eq!(
            losses.new_lines(),
            ["LOST 2 mapping records (mapping ring full): some addresses may show [unknown]"]
        );
    }

    #[test]
    fn latencies_not_in_the_histograms_are_no_lost_faults() {
        let mut losses = Losses::default();
        let read = Lost {
            hist_full: 7,
            ..Lost::default()
        };
        assert_eq!(read.events(), 0, "no fault was lost");
        losses.update(Ok(read));
        let lines = losses.new_lines();
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(
            lines[0].starts_with(
                "7 faults' latencies are not in the histograms: the histogram map was full"
            ),
            "{lines:?}"
        );
        assert!(!lines[0].contains("LOST"), "{lines:?}");
        assert!(losses.new_lines().is_empty(), "reported already");
    }

    #[test]
    fn stacks_the_ring_could_not_take_get_their_own_line() {
        let mut losses = Losses::default();
        let mut lost = Lost::default();
        lost.stacks.ring_full = 4;
        lost.stacks.truncated = 9;
        losses.update(Ok(lost));
        let lines = losses.new_lines();
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(
            lines[0].starts_with("LOST 4 stacks (ring buffer full)"),
            "{lines:?}"
        );
        assert!(losses.new_lines().is_empty());
    }

    #[test]
    fn a_failed_read_keeps_the_last_counts() {
        let mut losses = Losses::default();
        let read = Lost {
            summary_full: 2,
            ..Lost::default()
        };
        assert_eq!(losses.update(Ok(read)), read);
        assert_eq!(losses.update(Err(anyhow::anyhow!("EFAULT"))), read);
        assert!(losses.warned);
        assert_eq!(losses.new_lines().len(), 1);
    }
}
