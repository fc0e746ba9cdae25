//! The suite's results, read from a VM's console log: one row per backend, from the markers
//! /init prints around each run, or why there is none.
use std::fs;

use super::{BACKENDS, MARK, qemu::Vm, table::print_failure};
use crate::libtest;

/// One row of the result table.
pub struct Row {
    pub kernel: String,
    pub backend: String,
    pub outcome: Outcome,
}

pub enum Outcome {
    /// The suite ran to its end: its counts, the failed tests, and its exit status.
    Ran {
        passed: u64,
        failed: u64,
        failures: Vec<String>,
        /// Tests that returned early, saying why (counted by libtest as passed).
        skipped: Vec<String>,
        status: i32,
    },
    /// The suite did not run or did not finish: why.
    Missing(String),
}

impl Outcome {
    pub fn passed(&self) -> bool {
        matches!(self, Outcome::Ran { failed: 0, status: 0, passed, .. } if *passed > 0)
    }
}

/// One row per backend from the VM's console, and on failure what went wrong.
pub fn results(vm: &Vm, booted: anyhow::Result<()>) -> Vec<Row> {
    // The serial console ends lines with CR LF, and the firmware sends terminal escapes
    // (one resets the terminal): keep text only.
    let console: String = fs::read_to_string(&vm.log)
        .unwrap_or_default()
        .chars()
        .filter(|c| !c.is_control() || *c == '\n' || *c == '\t')
        .collect();
    let rows = rows(&vm.release, &console, booted.err());
    for row in rows.iter().filter(|r| !r.outcome.passed()) {
        print_failure(row, &console);
    }
    rows
}

/// One row per backend from the console output; `error` is why the VM itself failed, if it did.
fn rows(release: &str, console: &str, error: Option<anyhow::Error>) -> Vec<Row> {
    let problem = vm_problem(console, error);
    BACKENDS
        .iter()
        .map(|backend| Row {
            kernel: release.to_string(),
            backend: backend.to_string(),
            outcome: outcome(console, backend, problem.as_deref()),
        })
        .collect()
}

/// Why the VM did not get through /init, if it did not: qemu's failure, else what /init said
/// went wrong (insmod, mount).
fn vm_problem(console: &str, error: Option<anyhow::Error>) -> Option<String> {
    if let Some(error) = error {
        return Some(format!("{error:#}"));
    }
    if console.lines().any(|l| l == format!("{MARK} done")) {
        return None;
    }
    let said: Vec<&str> = console
        .lines()
        .filter_map(|l| l.strip_prefix(MARK)?.strip_prefix(' '))
        .filter(|l| {
            !["kernel ", "begin ", "end "]
                .iter()
                .any(|p| l.starts_with(p))
        })
        .collect();
    Some(if let Some(crash) = crash_line(console) {
        format!("the kernel crashed: {}", &crash[crash_start(crash)..])
    } else if said.is_empty() {
        "the VM stopped before the suite finished".to_string()
    } else {
        said.join("; ")
    })
}

/// What starts a kernel crash report (it may begin mid-line, after the suite's own output).
const CRASH_SIGNS: &[&str] = &[
    "Oops: ",
    "BUG: ",
    "Kernel panic - not syncing",
    "general protection fault",
];

/// The first console line with a kernel crash report.
pub fn crash_line(console: &str) -> Option<&str> {
    console
        .lines()
        .find(|l| CRASH_SIGNS.iter().any(|sign| l.contains(sign)))
}

/// Where in `line` the crash report starts.
fn crash_start(line: &str) -> usize {
    CRASH_SIGNS
        .iter()
        .filter_map(|sign| line.find(sign))
        .min()
        .unwrap_or(0)
}

/// What the suite reported for `backend` between its begin and end markers.
fn outcome(console: &str, backend: &str, problem: Option<&str>) -> Outcome {
    let Some(section) = section(console, backend) else {
        return Outcome::Missing(problem.unwrap_or("the suite never started").to_string());
    };
    let end = format!("{MARK} end {backend} status=");
    let status = section
        .iter()
        .find_map(|l| l.strip_prefix(&end)?.trim().parse().ok());
    let Some(status) = status else {
        let why = problem.unwrap_or("the suite did not finish");
        return Outcome::Missing(why.to_string());
    };
    let result = section
        .iter()
        .find_map(|l| libtest::result(l))
        .unwrap_or_default();
    Outcome::Ran {
        passed: result.passed,
        failed: result.failed,
        failures: section
            .iter()
            .filter_map(|l| l.strip_prefix("test ")?.strip_suffix(" ... FAILED"))
            .map(String::from)
            .collect(),
        skipped: section
            .iter()
            .filter_map(|l| libtest::skipped_test(l))
            .collect(),
        status,
    }
}

/// The console lines from `backend`'s begin marker to its end marker (or the end).
pub fn section<'a>(console: &'a str, backend: &str) -> Option<Vec<&'a str>> {
    let begin = format!("{MARK} begin {backend}");
    let mut lines = console.lines();
    lines.find(|l| *l == begin)?;
    let end = format!("{MARK} end {backend} ");
    let mut section = Vec::new();
    for line in lines {
        section.push(line);
        if line.starts_with(&end) {
            break;
        }
    }
    Some(section)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm_test::table::describe;

    #[test]
    fn reads_the_suite_between_markers() {
        let console = "@@vm-test kernel 6.1.0-57-amd64\n@@vm-test begin tracepoint\n\
            running 3 tests\ntest a ... ok\ntest b ... FAILED\n\
            test c ... skipped c: no such field on this kernel\nok\n\
            test result: FAILED. 2 passed; 1 failed; 0 ignored; 0 measured\n\
            @@vm-test end tracepoint status=101\n@@vm-test done\n";
        let rows = rows("6.1.0-57-amd64", console, None);
        let row = rows
            .iter()
            .find(|r| r.backend == "tracepoint")
            .expect("no tracepoint row");
        let Outcome::Ran {
            passed,
            failed,
            failures,
            skipped,
            status,
        } = &row.outcome
        else {
            panic!("no result")
        };
        assert_eq!((*passed, *failed, *status), (2, 1, 101));
        assert_eq!(failures, &["b"]);
        assert_eq!(skipped, &["c (no such field on this kernel)"]);
        assert_eq!(
            describe(&row.outcome),
            "FAILED (1 passed, 1 failed: b, 1 skipped: c (no such field on this kernel))"
        );
        assert!(!row.outcome.passed());
        // The backends whose markers are missing did not run: that is a failure too.
        assert!(
            rows.iter()
                .filter(|r| r.backend != "tracepoint")
                .all(|r| !r.outcome.passed())
        );
    }

    #[test]
    fn a_crash_is_reported_as_such() {
        let console = "@@vm-test begin tracepoint\ntest a ... [ 15.6] Oops: int3: 0000 [#1]\n\
            [ 15.7] Kernel panic - not syncing: Fatal exception\n";
        let rows = rows("6.12", console, None);
        let Outcome::Missing(why) = &rows[0].outcome else {
            panic!("a result")
        };
        assert_eq!(why, "the kernel crashed: Oops: int3: 0000 [#1]");
    }
}
