//! Which code copied the pages: the top stacks of cow-trace's `--folded` file (copies by
//! stack, `redis-server (PID);[while child N ran;]root;...;leaf PAGES` per line), for the
//! server while the snapshot child lived and for the child itself.
use std::{fs, path::Path};

use anyhow::Context as _;

use super::{PAGE, report::human};

/// How many stacks each list shows, and how many frames of each.
const TOP: usize = 5;
const FRAMES: usize = 12;

/// Copies by stack, as cow-trace folded them.
pub struct Stacks {
    lines: Vec<(String, u64)>,
}

impl Stacks {
    pub fn read(path: &Path) -> anyhow::Result<Stacks> {
        let text =
            fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let lines = text
            .lines()
            .map(|line| {
                let (stack, count) = line
                    .rsplit_once(' ')
                    .with_context(|| format!("not a folded line: {line:?}"))?;
                let count = count
                    .parse()
                    .with_context(|| format!("not a folded line: {line:?}"))?;
                Ok((stack.to_string(), count))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Stacks { lines })
    }

    /// The stacks under `prefix` (`redis-server (PID);...;`), the largest first, each as its
    /// frames below the prefix, root first.
    fn under(&self, prefix: &str) -> Vec<(Vec<&str>, u64)> {
        let mut found: Vec<(Vec<&str>, u64)> = self
            .lines
            .iter()
            .filter_map(|(stack, count)| {
                let rest = stack.strip_prefix(prefix)?;
                Some((rest.split(';').collect(), *count))
            })
            .collect();
        found.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        found
    }
}

/// Prints the stacks of the server's copies while the child lived and of the child's own.
pub fn print_top(stacks: &Stacks, server: u32, child: u32, flame_graph: &Path) {
    println!("\nWhich code copied the pages (cow-trace --flamegraph / --folded, user stacks):");
    print_list(
        &format!("the server's copies while child {child} lived"),
        &stacks.under(&format!("redis-server ({server});while child {child} ran;")),
    );
    print_list(
        &format!("the snapshot child {child}'s own copies"),
        &stacks.under(&format!("redis-server ({child});")),
    );
    println!(
        "Flame graph of every process's copies: {}",
        flame_graph.display()
    );
}

fn print_list(what: &str, stacks: &[(Vec<&str>, u64)]) {
    let total: u64 = stacks.iter().map(|(_, pages)| pages).sum();
    println!(
        "\n  {what}: {total} pages ({}) in {} stacks; the top {}, innermost frame first:",
        human(total * PAGE),
        stacks.len(),
        TOP.min(stacks.len())
    );
    for (frames, pages) in stacks.iter().take(TOP) {
        println!(
            "  {pages:>8} pages {:>5.1}%  {}",
            percent(*pages, total),
            human(pages * PAGE)
        );
        for frame in frames.iter().rev().take(FRAMES) {
            println!("                    {frame}");
        }
        if frames.len() > FRAMES {
            println!("                    ... {} more", frames.len() - FRAMES);
        }
    }
}

fn percent(part: u64, whole: u64) -> f64 {
    match whole {
        0 => 0.0,
        _ => part as f64 * 100.0 / whole as f64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stacks_under_a_process_and_window_largest_first() {
        let stacks = Stacks {
            lines: vec![
                ("redis-server (1);while child 2 ran;main;a".into(), 3),
                ("redis-server (1);while child 2 ran;main;b".into(), 7),
                ("redis-server (1);main;c".into(), 100),
                ("redis-server (2);main;d".into(), 1),
            ],
        };
        let server = stacks.under("redis-server (1);while child 2 ran;");
        assert_eq!(
            server,
            [(vec!["main", "b"], 7), (vec!["main", "a"], 3)],
            "the copies outside the window are left out"
        );
        assert_eq!(stacks.under("redis-server (2);"), [(vec!["main", "d"], 1)]);
    }
}
