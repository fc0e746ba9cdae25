//! What vm-test prints: the result table, and the suite's own report of each failed run.
use std::{collections::BTreeSet, io::Write as _};

use super::{
    BACKENDS,
    console::{Outcome, Row, crash_line, section},
};

/// On failure: the suite's own report for that backend, or the end of the console log.
pub fn print_failure(row: &Row, console: &str) {
    eprintln!(
        "\n==== vm-test: {} / {} failed ====",
        row.kernel, row.backend
    );
    match (&row.outcome, section(console, &row.backend)) {
        (Outcome::Ran { .. }, Some(section)) => {
            let report = section.iter().skip_while(|l| !l.starts_with("failures:"));
            for line in report {
                eprintln!("{line}");
            }
        }
        _ => {
            // From the crash report if there is one, else the end of the log.
            let lines: Vec<&str> = console.lines().collect();
            let crash = crash_line(console).and_then(|c| lines.iter().position(|l| *l == c));
            let from = crash.unwrap_or(lines.len().saturating_sub(40));
            for line in lines.iter().skip(from).take(60) {
                eprintln!("{line}");
            }
        }
    }
    eprintln!("==== end of {} / {} ====\n", row.kernel, row.backend);
}

/// Prints the result table and an overall line; returns how many rows failed.
pub fn print_table(rows: &[Row]) -> usize {
    let width = rows
        .iter()
        .map(|r| r.kernel.len())
        .max()
        .unwrap_or(0)
        .max(6);
    let backend_width = BACKENDS.iter().map(|b| b.len()).max().unwrap_or(0).max(7);
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "\n{:width$} | {:backend_width$} | result",
        "kernel", "backend"
    );
    let _ = writeln!(
        out,
        "{:-<width$}-+-{:-<backend_width$}-+-{:-<40}",
        "", "", ""
    );
    let mut failed = 0;
    for row in rows {
        if !row.outcome.passed() {
            failed += 1;
        }
        let result = describe(&row.outcome);
        let _ = writeln!(
            out,
            "{:width$} | {:backend_width$} | {result}",
            row.kernel, row.backend
        );
    }
    let kernels: BTreeSet<&str> = rows.iter().map(|r| r.kernel.as_str()).collect();
    let verdict = if failed == 0 { "passed" } else { "FAILED" };
    let _ = writeln!(
        out,
        "overall: {verdict} ({} of {} runs passed on {} kernels)",
        rows.len() - failed,
        rows.len(),
        kernels.len()
    );
    failed
}

pub fn describe(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Ran {
            passed,
            failed,
            failures,
            skipped,
            status,
        } => {
            let verdict = if outcome.passed() { "passed" } else { "FAILED" };
            let ran = passed - skipped.len() as u64;
            let mut text = format!("{verdict} ({ran} passed, {failed} failed");
            if !failures.is_empty() {
                text.push_str(&format!(": {}", failures.join(", ")));
            }
            if !skipped.is_empty() {
                text.push_str(&format!(
                    ", {} skipped: {}",
                    skipped.len(),
                    skipped.join(", ")
                ));
            }
            if *status != 0 && *failed == 0 {
                text.push_str(&format!("; exit status {status}"));
            }
            text + ")"
        }
        Outcome::Missing(why) => format!("FAILED (no result: {why})"),
    }
}
