//! Counting what each tracer delivered, and the losses it reported, from its output.
use std::io::BufRead;

/// cow-trace's per-pid table (FAULTS of `target`, 0 if the table has no row for it) and its
/// "Lost events: N" line.
pub fn count_cow_table(
    text: impl BufRead,
    target: u32,
) -> anyhow::Result<(Option<u64>, Option<u64>)> {
    let (mut delivered, mut lost) = (None, None);
    let mut row_seen = false;
    for line in text.lines() {
        let line = line?;
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.first() == Some(&"PID") && delivered.is_none() {
            delivered = Some(0);
        } else if !row_seen && words.first() == Some(&target.to_string().as_str()) {
            // The first row of the pid is in the per-pid table; later tables have other columns.
            row_seen = true;
            delivered = words.get(2).and_then(|w| w.parse().ok());
        } else if let Some(rest) = line.strip_prefix("Lost events: ") {
            lost = leading_number(rest);
        } else if line.starts_with("Stacks not taken or cut short: ")
            && let Some((_, rest)) = line.split_once("ring buffer full: ")
        {
            // Stacks the ring had no room for are lost too (--stack=dwarf).
            lost = Some(lost.unwrap_or(0) + leading_number(rest).unwrap_or(0));
        }
    }
    Ok((delivered, lost))
}

/// perf record's samples of the page-fault event and the samples it says it lost, from
/// `perf report --stats` of its file.
pub fn count_perf_record(
    file: Option<&std::path::Path>,
) -> anyhow::Result<(Option<u64>, Option<u64>)> {
    use anyhow::Context as _;
    let file = file.context("perf record wrote no file")?;
    let stats = crate::util::output(
        std::process::Command::new("perf")
            .args(["report", "--stats", "-i"])
            .arg(file),
    )
    .context("perf report --stats failed")?;
    Ok(count_perf_stats(&stats))
}

/// The "page-faults stats:" block of `perf report --stats`: SAMPLE and LOST_SAMPLES events.
fn count_perf_stats(stats: &str) -> (Option<u64>, Option<u64>) {
    let block = stats
        .split_once("page-faults stats:")
        .map_or("", |(_, block)| block);
    let count = |name: &str| {
        block.lines().find_map(|line| {
            line.trim_start()
                .strip_prefix(name)
                .and_then(leading_number)
        })
    };
    (
        Some(count("SAMPLE events:").unwrap_or(0)),
        Some(count("LOST_SAMPLES events:").unwrap_or(0)),
    )
}

/// Fault objects of `target`, and the totals line's "lost".
pub fn count_cow_json(
    text: impl BufRead,
    target: u32,
) -> anyhow::Result<(Option<u64>, Option<u64>)> {
    let pid = format!("\"pid\":{target},");
    let (mut delivered, mut lost) = (0, None);
    for line in text.lines() {
        let line = line?;
        if line.contains("\"event\":\"fault\"") && line.contains(&pid) {
            delivered += 1;
        } else if line.contains("\"event\":\"totals\"") {
            lost = line
                .split_once("\"lost\":")
                .and_then(|(_, rest)| leading_number(rest));
        }
    }
    Ok((Some(delivered), lost))
}

/// Lines "PID TID ADDRESS IP ERROR" of `target`, and "Lost N events" lines.
pub fn count_bpftrace(
    text: impl BufRead,
    target: u32,
) -> anyhow::Result<(Option<u64>, Option<u64>)> {
    let prefix = format!("{target} ");
    let (mut delivered, mut lost) = (0, 0);
    for line in text.lines() {
        let line = line?;
        if line.starts_with(&prefix) {
            delivered += 1;
        } else if let Some((_, rest)) = line.split_once("Lost ") {
            lost += leading_number(rest).unwrap_or(0);
        }
    }
    Ok((Some(delivered), Some(lost)))
}

/// perf trace traces only the target: every minfault line is its. "LOST N events!" lines.
pub fn count_perf(text: impl BufRead) -> anyhow::Result<(Option<u64>, Option<u64>)> {
    let (mut delivered, mut lost) = (0, 0);
    for line in text.lines() {
        let line = line?;
        if line.contains("minfault") {
            delivered += 1;
        } else if let Some((_, rest)) = line.split_once("LOST ") {
            lost += leading_number(rest).unwrap_or(0);
        }
    }
    Ok((Some(delivered), Some(lost)))
}

/// Sum of FAULTS over every pid but the soak's root, and the lost count.
pub fn count_soak_table(text: &str, root: u32) -> (Option<u64>, Option<u64>) {
    let (mut delivered, mut lost) = (None, None);
    let mut tables = 0;
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let pid = words.first().and_then(|w| w.parse::<u32>().ok());
        if words.first() == Some(&"PID") {
            tables += 1;
        } else if let Some(rest) = line.strip_prefix("Lost events: ") {
            lost = leading_number(rest);
        } else if tables == 1 && pid.is_some_and(|pid| pid != root) {
            // Rows of the per-pid table only ("while CHILD ran" lines split a parent's row).
            let faults: u64 = words.get(2).and_then(|w| w.parse().ok()).unwrap_or(0);
            delivered = Some(delivered.unwrap_or(0) + faults);
        }
    }
    (delivered, lost)
}

fn leading_number(text: &str) -> Option<u64> {
    let digits: String = text
        .trim_start()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cow_trace_table() {
        let text = "Tracing pid 10 and its children (backend: tracepoint). Ctrl-C to end.\n\
            \x20   PID COMM                FAULTS     MINOR   MAJOR    WRITES       COW INCOMPLETE   AVG LAT\n\
            \x20    10 bench_cow               13        13       0         8         8          0     3.2us\n\
            \x20    11 bench_cow            65541     65541       0     65536     65536          0     2.5us\n\
            Lost events: 7 (ring buffer full: 7; entries not remembered: 0; children not followed: 0)\n";
        let counted = count_cow_table(text.as_bytes(), 11).unwrap();
        assert_eq!(counted, (Some(65541), Some(7)));
        // A table without a row for the pid: nothing delivered.
        assert_eq!(
            count_cow_table(text.as_bytes(), 12).unwrap(),
            (Some(0), Some(7))
        );
        let mappings =
            format!("{text}\n    PID MAPPING   CLASS   FAULTS\n     11 [anon]    cow     65536\n");
        let counted = count_cow_table(mappings.as_bytes(), 11).unwrap();
        assert_eq!(counted, (Some(65541), Some(7)));
        assert_eq!(count_soak_table(text, 10), (Some(65541), Some(7)));
    }

    #[test]
    fn cow_trace_json() {
        let text = "{\"v\":1,\"event\":\"fault\",\"pid\":11,\"tid\":11}\n\
            {\"v\":1,\"event\":\"fault\",\"pid\":12,\"tid\":12}\n\
            {\"v\":1,\"event\":\"totals\",\"faults\":2,\"lost\":3,\"lost_detail\":{}}\n";
        assert_eq!(
            count_cow_json(text.as_bytes(), 11).unwrap(),
            (Some(1), Some(3))
        );
    }

    #[test]
    fn stacks_the_ring_had_no_room_for_are_lost() {
        let text = "     11 bench_cow            65541     65541       0     65536     65536          0     2.5us\n\
            Lost events: 0 (ring buffer full: 0; summary maps full: 0)\n\
            Stacks not taken or cut short: 12 (ring buffer full: 5; truncated at --stack-size: 7)\n";
        let counted = count_cow_table(text.as_bytes(), 11).unwrap();
        assert_eq!(counted, (Some(65541), Some(5)));
    }

    #[test]
    fn perf_record_stats() {
        let stats = "Aggregated stats:\n           TOTAL events:        180\n\
            \x20         SAMPLE events:         74  (41.1%)\n\
            \x20   LOST_SAMPLES events:          1  ( 0.6%)\n\
            page-faults stats:\n\
            \x20         SAMPLE events:         74\n\
            \x20   LOST_SAMPLES events:        151\n";
        assert_eq!(count_perf_stats(stats), (Some(74), Some(151)));
    }

    #[test]
    fn peers_output() {
        let bpftrace = "Attaching 1 probe...\n11 11 7f 7f 7\n12 12 7f 7f 7\n\nLost 5 events\n";
        assert_eq!(
            count_bpftrace(bpftrace.as_bytes(), 11).unwrap(),
            (Some(1), Some(5))
        );
        let perf = "0.1 ( 0.000 ms): minfault [f+0x1] => 0x7f (?.)\nLOST 9 events!\n";
        assert_eq!(count_perf(perf.as_bytes()).unwrap(), (Some(1), Some(9)));
    }
}
