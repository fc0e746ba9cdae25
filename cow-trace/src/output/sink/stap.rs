//! The line format of the article's SystemTap script, so its users can diff old and new runs:
//! `[Sun May 10 11:35:00 2020] pid:12420, address:0x7ffe0cdefb40 access:w, type:MINOR`
use std::io::{self, Write};

use chrono::Utc;

use super::{SecondsCache, Sink, Summary, WallClock, text};
use crate::{
    event::{Fault, Outcome},
    output::interval::Period,
};

pub struct StapSink {
    out: Box<dyn Write>,
    clock: WallClock,
    /// stap's ctime(): whole seconds, UTC.
    times: SecondsCache<Utc>,
}

impl StapSink {
    pub fn new(out: Box<dyn Write>, clock: WallClock) -> StapSink {
        StapSink {
            out,
            clock,
            times: SecondsCache::new(Utc, "%a %b %e %H:%M:%S %Y"),
        }
    }
}

impl Sink for StapSink {
    fn fault(&mut self, fault: &Fault) -> io::Result<()> {
        // The script prints only faults that returned MINOR or MAJOR (`next` otherwise), and
        // stap's ctime() is whole seconds, UTC.
        // Unlike the stap tapset, a retried attempt is not called MINOR: it is no fault yet.
        if matches!(fault.outcome, Outcome::Incomplete | Outcome::Retry) {
            return Ok(());
        }
        // stap's write_access is 0 or 1: anything but a write prints "r".
        let access = if fault
            .access()
            .is_some_and(|a| a == crate::event::Access::Write)
        {
            'w'
        } else {
            'r'
        };
        writeln!(
            self.out,
            "[{}] pid:{}, address:{:#x} access:{}, type:{}",
            self.times.prefix(self.clock.to_utc(fault.ts_ns)),
            fault.pid,
            fault.address,
            access,
            fault.outcome.label(),
        )
    }

    // The script printed no totals: these are the text format's.
    fn interval(&mut self, period: &Period, counts: &Summary) -> io::Result<()> {
        text::write_interval(&mut self.out, self.clock, period, counts)
    }

    fn totals_header(&mut self, period: &Period) -> io::Result<()> {
        text::write_totals_header(&mut self.out, self.clock, period)
    }

    fn summary(&mut self, summary: &Summary) -> io::Result<()> {
        summary.write_report(&mut self.out)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::sink::test_support::{Captured, article_fault, reclassify};

    #[test]
    fn matches_the_article_byte_for_byte() {
        let out = Captured::default();
        let mut sink = StapSink::new(Box::new(out.clone()), WallClock::with_offset(0));
        sink.fault(&article_fault()).unwrap();
        assert_eq!(
            out.text(),
            "[Sun May 10 11:35:00 2020] pid:12420, address:0x7ffe0cdefb40 access:w, type:MINOR\n"
        );
    }

    #[test]
    fn incomplete_faults_are_skipped_like_the_script() {
        let out = Captured::default();
        let mut sink = StapSink::new(Box::new(out.clone()), WallClock::with_offset(0));
        let mut fault = article_fault();
        fault.outcome = Outcome::Incomplete;
        sink.fault(&fault).unwrap();
        assert_eq!(out.text(), "");
    }

    #[test]
    fn single_digit_days_are_space_padded_like_ctime() {
        let out = Captured::default();
        let mut sink = StapSink::new(Box::new(out.clone()), WallClock::with_offset(0));
        let mut fault = article_fault();
        fault.ts_ns = 1_588_332_900_000_000_000; // Fri May  1 11:35:00 2020
        reclassify(&mut fault, Some(0x4), Outcome::Major);
        sink.fault(&fault).unwrap();
        assert_eq!(
            out.text(),
            "[Fri May  1 11:35:00 2020] pid:12420, address:0x7ffe0cdefb40 access:r, type:MAJOR\n"
        );
    }
}
