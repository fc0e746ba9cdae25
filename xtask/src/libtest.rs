//! Reading libtest's output, as `cargo xtask test` and the VM tests both do: its result lines,
//! and the tests that returned early saying why.

/// The counts of one result line.
#[derive(Debug, Default, PartialEq)]
pub struct Counts {
    pub passed: u64,
    pub failed: u64,
    pub ignored: u64,
}

/// The counts of `line` if it is a result line ("test result: ok. 8 passed; 0 failed; ...").
pub fn result(line: &str) -> Option<Counts> {
    let result = line.strip_prefix("test result: ")?;
    Some(Counts {
        passed: count_in(result, " passed"),
        failed: count_in(result, " failed"),
        ignored: count_in(result, " ignored"),
    })
}

/// The number before `label` in a libtest result line ("ok. 8 passed; 0 failed; ...").
fn count_in(result: &str, label: &str) -> u64 {
    result
        .split(';')
        .find_map(|part| part.trim().strip_suffix(label))
        .and_then(|n| n.trim().rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

/// "skipped NAME: why" (tests/common's `skip`), possibly after libtest's "test NAME ... "
/// on the same line: NAME and why.
pub fn skipped_test(line: &str) -> Option<String> {
    let (_, said) = line.split_once("skipped ")?;
    let (name, why) = said.split_once(": ")?;
    let name = name.trim();
    (!name.is_empty() && !name.contains(' ')).then(|| format!("{name} ({})", why.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_result_lines() {
        assert_eq!(
            result("test result: FAILED. 2 passed; 1 failed; 3 ignored; 0 measured"),
            Some(Counts {
                passed: 2,
                failed: 1,
                ignored: 3
            })
        );
        assert_eq!(result("test a ... ok"), None);
    }

    #[test]
    fn reads_skipped_tests() {
        assert_eq!(
            skipped_test("test exec ... skipped exec: before 6.16 a non-leader exec ends tracing"),
            Some("exec (before 6.16 a non-leader exec ends tracing)".to_string())
        );
        assert_eq!(skipped_test("test a ... ok"), None);
        assert_eq!(skipped_test("2 tests skipped by filter: x"), None);
    }
}
