//! Redis's own figures, and the comparison with cow-trace's account.
use super::{
    PAGE,
    client::Conn,
    server::Server,
    snapshot::Snapshot,
    trace::{Tally, Trace},
};

pub struct RedisFigures {
    cow_bytes: u64,
    log_line: String,
}

impl RedisFigures {
    pub fn read(conn: &mut Conn, server: &Server) -> anyhow::Result<RedisFigures> {
        let cow_bytes = conn.info_number("persistence", "rdb_last_cow_size")?;
        let log = server.log();
        let log_line = log
            .lines()
            .find(|l| l.contains("Fork CoW for RDB"))
            .and_then(|l| l.split_once("* "))
            .map_or("(no \"Fork CoW\" line in the log)", |(_, m)| m)
            .to_string();
        Ok(RedisFigures {
            cow_bytes,
            log_line,
        })
    }
}

pub fn print_side_by_side(snapshot: &Snapshot, trace: &Trace, redis: &RedisFigures) {
    let child = snapshot.child;
    println!(
        "\nredis-benchmark: {} SETs in {:.1} s, of which the snapshot took {:.2} s\n",
        snapshot.sets,
        snapshot.writing.as_secs_f64(),
        snapshot.saved_in.as_secs_f64()
    );
    println!(
        "{:<36} {:>8} {:>8} {:>8} {:>9} {:>8} {:>6} {:>10}",
        "cow-trace", "faults", "COW", "copied", "zero-fill", "reused", "new", "copied"
    );
    let row = |label: &str, t: &Tally, zero_fills: &str| {
        println!(
            "{label:<36} {:>8} {:>8} {:>8} {zero_fills:>9} {:>8} {:>6} {:>10}",
            t.faults,
            t.cow,
            t.copied,
            t.reused,
            t.new_pages,
            human(t.copied * PAGE)
        );
    };
    let parent = &trace.parent;
    // Before the fork there is no history to tell zero fills by.
    row("parent, before the fork", &parent.before, "-");
    let during = parent.during.zero_fills.to_string();
    row(
        &format!("parent, while child {child} lived"),
        &parent.during,
        &during,
    );
    let after = parent.after.zero_fills.to_string();
    row(
        &format!("parent, after child {child} exited"),
        &parent.after,
        &after,
    );
    row(
        &format!("child {child} (the snapshot) itself"),
        &trace.child,
        "-",
    );
    println!(
        "(COW: write-protect faults; copied/reused: whether the kernel copied the page; zero-fill:\n\
         \x20copies of fresh memory the parent read, then wrote, never shared with the child;\n\
         \x20new: writes to pages not there yet)"
    );
    check_trace(trace);
    print_redis(trace, redis);
    print_after(&parent.after);
}

/// Things that would make the figures below wrong, said out loud.
fn check_trace(trace: &Trace) {
    if trace.lost > 0 {
        println!(
            "WARNING: cow-trace lost {} events: counts are low",
            trace.lost
        );
    }
    // The window line's copies include first writes that copied a file's page.
    let during = &trace.parent.during;
    if trace.window_copied != Some(during.copied + during.file_copies) {
        println!(
            "WARNING: cow-trace's own window line says {:?} pages copied, its faults {}",
            trace.window_copied,
            during.copied + during.file_copies
        );
    }
}

fn print_redis(trace: &Trace, redis: &RedisFigures) {
    let redis_pages = redis.cow_bytes / PAGE;
    let during = &trace.parent.during;
    let child_own = trace.child.copied + trace.child.new_pages;
    let account = during.shared_copies() + child_own;
    println!(
        "\nRedis's own figures\n\
         \x20 INFO persistence rdb_last_cow_size: {} bytes ({}, {redis_pages} pages)\n\
         \x20 log: {}\n",
        redis.cow_bytes,
        human(redis.cow_bytes),
        redis.log_line
    );
    println!(
        "Redis sums the child's Private_Dirty (/proc/self/smaps) once, just before the child\n\
         exits: the pages only the child still maps. Each page the parent copied is one of them,\n\
         and so is each page the child copied or wrote new. In pages:\n\
         \x20 {:>9}  copied by the parent while the child lived ({})\n\
         \x20 {:>9}  of them zero-page fills, never shared\n\
         \x20 {:>9}  copied or written new by the child itself\n\
         \x20 {:>9}  = cow-trace's account of the child's Private_Dirty ({})\n\
         \x20 {:>9}  Redis's rdb_last_cow_size / 4096: {:+.2}% from cow-trace's account\n\n\
         Redis walks the child's memory for that sum (milliseconds, for a large process) while\n\
         the parent goes on writing: copies of pages the walk has passed, and those made after\n\
         it, are in cow-trace's account only. (The integration test cow-trace/tests/redis.rs\n\
         holds the writes back until Redis has sampled: then the two agree to the page.)",
        during.copied,
        human(during.copied * PAGE),
        format!("-{}", during.zero_fills),
        format!("+{child_own}"),
        account,
        human(account * PAGE),
        redis_pages,
        percent(redis_pages, account),
    );
}

fn print_after(after: &Tally) {
    let late = after.shared_copies();
    if late > 0 {
        println!(
            "\nAfter the exit, {late} copies ({}) of pages the child still held, more than a\n\
             second after its exit event (cow-trace counts copies in the window for a second after\n\
             it, while the kernel releases the child's memory).",
            human(late * PAGE)
        );
    }
    println!(
        "After the exit the parent's {} copy-on-write faults that reused the page cost no memory:\n\
         the parent is the page's last user, so the kernel keeps it.",
        after.reused
    );
}

fn percent(value: u64, reference: u64) -> f64 {
    match reference {
        0 => 0.0,
        _ => (value as f64 - reference as f64) * 100.0 / reference as f64,
    }
}

/// 1536 -> "1.5 KiB".
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(human(512), "512 B");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(3 << 20), "3.0 MiB");
    }
}
