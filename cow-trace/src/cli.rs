//! Command-line options. Self-contained (clap only), so xtask can include this file to
//! generate the man page and shell completions.
use std::{path::PathBuf, time::Duration};

use clap::{Parser, ValueEnum};

const EXAMPLES: &str = "\
Examples:
  cow-trace -x 1234                    trace pid 1234 and all its descendants
  cow-trace -- ./cow                   start ./cow, held until the probes are attached
  cow-trace -x 1234 --format stap      the article's SystemTap line format
  cow-trace --json -o faults.json -- make -j2
  cow-trace -r -g -x 1234              with mappings, symbols and user stacks (of COW faults)
  cow-trace -g --stack-faults all -x 1234   every fault's user stack
  cow-trace --stack=fp -x 1234         stacks by the kernel's frame-pointer walk (cheaper)
  cow-trace --plot cow.svg -- ./cow    draw the run
  cow-trace --flamegraph cow.svg -x $(pidof redis-server)   which code copied pages
  cow-trace -x $(pidof redis-server) --duration 30s
  cow-trace --summary --interval 1s -x $(pidof redis-server)
  cow-trace --summary --fail-over-cow 64MiB -- ./fork-heavy-test   (CI gate)

Combinations: -u needs -- CMD (not -x). --summary counts in the kernel, with no line per fault,
so it takes --format text or --json, --interval, --stack (top COW stacks), --fail-over-cow and
-o, but not --format stap, --plot or --resolve (its mapping table is always there). Everything
else combines; with --format stap, --resolve and --stack add only to the tables on stderr.
--stack-faults needs --stack (or --flamegraph, --folded); --stack-size needs --stack=dwarf.

Exit status: 0 on success (or the traced command's own status with -- CMD);
2 bad usage; 3 bad target; 4 missing privilege; 5 kernel refused a probe; 6 output error;
7 more than --fail-over-cow was copied on write.";

/// Trace the page faults (and copy-on-write breaks) of a process and all its descendants.
#[derive(Debug, Parser)]
#[command(name = "cow-trace", version, after_help = EXAMPLES)]
#[command(group = clap::ArgGroup::new("flame_output").args(["flamegraph", "folded"]).multiple(true))]
pub struct Args {
    /// Trace this process and every descendant it has or will have. A thread id traces the
    /// thread's process.
    #[arg(short = 'x', short_alias = 'p', long = "pid", value_name = "PID",
          value_parser = parse_pid, conflicts_with = "command", allow_negative_numbers = true)]
    pub pid: Option<i32>,

    /// How to see faults: fexit or kprobe on handle_mm_fault, or the page-fault tracepoints
    /// with perf software events. auto takes the first the kernel allows, in that order.
    #[arg(short = 'b', long, value_enum, default_value_t = BackendChoice::Auto)]
    pub backend: BackendChoice,

    /// Output format for each fault. stap is a line per fault only: not with --summary.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,

    /// Same as --format json: one JSON object per line. With -- CMD and no -o, CMD's standard
    /// output goes to standard error, so standard output carries only JSON.
    #[arg(long, conflicts_with = "format")]
    pub json: bool,

    /// Write events to FILE instead of standard output (which -- CMD shares, but for JSON).
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: Option<PathBuf>,

    /// Stop after this long (e.g. 500ms, 10s, 2m).
    #[arg(short = 'd', long, value_name = "TIME", value_parser = parse_duration)]
    pub duration: Option<Duration>,

    /// Do not print the per-pid summary on exit.
    #[arg(long, conflicts_with = "summary")]
    pub no_summary: bool,

    /// Count faults in the kernel (no per-fault output, lowest overhead) and print per pid,
    /// mapping and class counts and latency histograms at exit.
    #[arg(short = 's', long)]
    pub summary: bool,

    /// Every TIME, also print the counts of that interval only (as perf stat -I), with its
    /// time: per pid into the output with --summary or --json, else on stderr.
    #[arg(short = 'i', long, value_name = "TIME", value_parser = parse_interval)]
    pub interval: Option<Duration>,

    /// Resolve each fault's address to its mapping ([heap], [stack], file@offset) and its
    /// instruction pointer to function+offset (module). Not with --summary, which shows no
    /// single fault and lists mappings anyway.
    #[arg(short = 'r', long, conflicts_with = "summary")]
    pub resolve: bool,

    /// Capture the user stack of each copy-on-write fault (see --stack-faults), symbolized;
    /// with --summary, the stacks that took the most copy-on-write faults. dwarf (the
    /// default) copies the top of the stack (--stack-size) and unwinds it with the binaries'
    /// own unwind tables, as perf --call-graph dwarf does, frame pointers where code has no
    /// tables; fp walks frame pointers in the kernel (cheaper, but lost in code built without
    /// them, as distributions build most).
    #[arg(short = 'g', long, value_enum, value_name = "HOW", num_args = 0..=1,
          require_equals = true, default_missing_value = "dwarf")]
    pub stack: Option<StackMethod>,

    /// Which faults carry a user stack: cow (write-protect faults: copies, reuses, zero
    /// fills), writes (every write, first writes too) or all. Default: cow, or all for
    /// --flame-faults all.
    #[arg(long, value_enum, value_name = "WHICH")]
    pub stack_faults: Option<StackFaults>,

    /// --stack=dwarf: the most user stack copied per fault (as perf's dump size), from the
    /// stack pointer up; a stack deeper than that is shown cut, "[truncated at SIZE]".
    /// Default 8KiB, at most 65528.
    #[arg(long, value_name = "SIZE", value_parser = parse_stack_size)]
    pub stack_size: Option<u32>,

    /// Draw faults over time per pid and class, cumulative bytes copied, and where in the
    /// address space copy-on-write faults landed, into an SVG file.
    #[arg(long, value_name = "FILE.svg", conflicts_with = "summary")]
    pub plot: Option<PathBuf>,

    /// Draw the copy-on-write copies (or, with --flame-faults all, every fault) by user stack
    /// as an interactive flame graph (SVG): one tower per process, rooted in "COMM (PID)",
    /// with "while child N ran" above it for faults in a snapshot window. Widths count
    /// faults; copies' tooltips give bytes. Captures user stacks as -g does (the event lines
    /// show them only with -g).
    #[arg(long, value_name = "FILE.svg")]
    pub flamegraph: Option<PathBuf>,

    /// Write the flame graph's stacks folded, one "root;frame;...;leaf COUNT" line each (COUNT
    /// in faults: pages, for copies), for flamegraph.pl, speedscope or inferno-diff-folded.
    /// Captures user stacks as --flamegraph does.
    #[arg(long, value_name = "FILE")]
    pub folded: Option<PathBuf>,

    /// What --flamegraph and --folded count: copies (copy-on-write faults that copied a page)
    /// or all (every completed fault).
    #[arg(long, value_enum, value_name = "WHICH", default_value_t = FlameFaults::Copies,
          requires = "flame_output")]
    pub flame_faults: FlameFaults,

    /// Exit with status 7 if the traced processes copied more than SIZE on write (e.g.
    /// 64MiB): a gate for CI jobs.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub fail_over_cow: Option<u64>,

    /// Do not time faults: the lightest tracing. The tracepoint backend then skips its
    /// completion event (a perf event on every fault); each fault is reported once its thread
    /// faults again, execs or exits, or tracing ends, and a fault that failed (SIGSEGV) is
    /// counted like one that completed.
    #[arg(long)]
    pub no_latency: bool,

    /// Size of the kernel-to-user ring buffer (a power of two, e.g. 16MiB). Default 16MiB,
    /// or 128MiB with --stack=dwarf (each stack copied takes up to --stack-size in it).
    #[arg(long, value_name = "SIZE", value_parser = parse_ring_size)]
    pub ring_size: Option<u32>,

    /// Run CMD as this user (default with -- CMD under sudo: the invoking user). Only with
    /// -- CMD: a traced pid runs as whoever started it.
    #[arg(short = 'u', long, value_name = "USER", conflicts_with = "pid")]
    pub user: Option<String>,

    /// Say more about what cow-trace does (probes, seeding, counters, the kernel side's
    /// diagnostics).
    #[arg(short, long)]
    pub verbose: bool,

    /// Start CMD held until the probes are attached, trace it and its descendants (from its
    /// exec). If tracing stops first, CMD's process group is ended: SIGTERM, SIGKILL 2 s later
    /// (in a terminal's foreground CMD shares cow-trace's group, and each traced process is).
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<std::ffi::OsString>,
}

/// What the user asked for with --backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BackendChoice {
    /// fexit, else kprobe, else tracepoint.
    Auto,
    Fexit,
    Kprobe,
    Tracepoint,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Aligned columns: time, comm, pid/tid, access, type, COW, address, latency.
    Text,
    /// The line format of the article's SystemTap script.
    Stap,
    /// One JSON object per line (schema in README.md).
    Json,
}

/// How user stacks are taken (--stack).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StackMethod {
    /// Copy the top of the stack; unwind it with the binaries' unwind tables.
    Dwarf,
    /// Walk frame pointers in the kernel.
    Fp,
}

/// Which faults carry a user stack (--stack-faults).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StackFaults {
    /// Write-protect (copy-on-write) faults.
    Cow,
    /// Every write fault.
    Writes,
    /// Every fault.
    All,
}

/// The default ring buffer; with --stack=dwarf, [`DWARF_RING_SIZE`].
pub const RING_SIZE: u32 = 16 << 20;
/// The default ring buffer with --stack=dwarf: every copied stack passes through it.
pub const DWARF_RING_SIZE: u32 = 128 << 20;
/// The default --stack-size, as perf's.
pub const STACK_SIZE: u32 = 8 << 10;
/// The largest --stack-size, as perf's.
pub const MAX_STACK_SIZE: u32 = 65528;

/// The faults a flame graph counts (--flame-faults).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum FlameFaults {
    /// Copy-on-write faults that copied a page (the summary's COPIED).
    Copies,
    /// Every completed fault (the summary's FAULTS).
    All,
}

impl Args {
    pub fn format(&self) -> Format {
        if self.json { Format::Json } else { self.format }
    }

    /// Parses the command line, then checks the conflicts that depend on an option's value,
    /// which clap's declarations cannot express; they fail as clap's own conflicts do.
    pub fn try_parse_checked() -> Result<Args, clap::Error> {
        let args = Args::try_parse()?;
        args.check_value_conflicts()?;
        Ok(args)
    }

    fn check_value_conflicts(&self) -> Result<(), clap::Error> {
        use clap::{CommandFactory, error::ErrorKind};
        if self.summary && self.format == Format::Stap {
            return Err(Args::command().error(
                ErrorKind::ArgumentConflict,
                "the argument '--format stap' cannot be used with '--summary': \
                 stap prints a line per fault, --summary none",
            ));
        }
        if self.stack_method().is_none() && self.stack_faults.is_some() {
            return Err(Args::command().error(
                ErrorKind::MissingRequiredArgument,
                "--stack-faults chooses the faults whose stacks are taken: \
                 add --stack (or --flamegraph, --folded)",
            ));
        }
        if self.stack_method() != Some(StackMethod::Dwarf) && self.stack_size.is_some() {
            return Err(Args::command().error(
                ErrorKind::ArgumentConflict,
                "--stack-size is how much stack --stack=dwarf copies: \
                 it does nothing without it",
            ));
        }
        Ok(())
    }

    /// How the kernel captures user stacks, if it does: for -g, and for the flame graph's
    /// outputs (dwarf unless -g says otherwise).
    pub fn stack_method(&self) -> Option<StackMethod> {
        let flame = self.flamegraph.is_some() || self.folded.is_some();
        self.stack.or(flame.then_some(StackMethod::Dwarf))
    }

    /// Which faults carry a stack: as asked, else every fault for a flame graph of every
    /// fault, else copy-on-write faults.
    pub fn stack_faults(&self) -> StackFaults {
        let flame = self.flamegraph.is_some() || self.folded.is_some();
        self.stack_faults
            .unwrap_or(if flame && self.flame_faults == FlameFaults::All {
                StackFaults::All
            } else {
                StackFaults::Cow
            })
    }

    /// The ring buffer's size: as asked, else larger where stacks are copied through it.
    pub fn ring_size(&self) -> u32 {
        self.ring_size
            .unwrap_or(if self.stack_method() == Some(StackMethod::Dwarf) {
                DWARF_RING_SIZE
            } else {
                RING_SIZE
            })
    }
}

/// A pid as users type it: a positive decimal number.
pub fn parse_pid(text: &str) -> Result<i32, String> {
    match text.trim().parse::<i64>() {
        Ok(pid) if pid > 0 && pid <= i64::from(i32::MAX) => Ok(pid as i32),
        Ok(_) => Err(format!(
            "{text} is not a process id: give a positive number"
        )),
        Err(_) => Err(format!(
            "{text:?} is not a process id: give a positive number"
        )),
    }
}

/// A size such as `4096`, `64KiB`, `16MiB`, `1GiB` (also `K`, `M`, `G`, `KB`, `MB`, `GB`,
/// all binary multiples).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size: write e.g. 4096, 64KiB, 16MiB or 1GiB"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => {
            return Err(format!(
                "{text:?}: unknown unit {unit:?}: use KiB, MiB, GiB or TiB"
            ));
        }
    };
    number
        .checked_mul(1u64 << shift)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// A --stack-size: a size up to [`MAX_STACK_SIZE`], rounded down to 8 bytes.
fn parse_stack_size(text: &str) -> Result<u32, String> {
    let size = parse_size(text)?;
    if !(8..=u64::from(MAX_STACK_SIZE)).contains(&size) {
        return Err(format!(
            "stack size {text} must be between 8 and {MAX_STACK_SIZE} bytes (as perf's)"
        ));
    }
    Ok(size as u32 & !7)
}

fn parse_ring_size(text: &str) -> Result<u32, String> {
    let size = parse_size(text)?;
    // The kernel wants whole pages: 4 KiB on x86-64, up to 64 KiB on arm64.
    // SAFETY: sysconf has no memory-safety preconditions. (This file is also compiled into
    // xtask, for the man page, so it cannot use the crate's page module.)
    let page = u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(u64::MAX);
    if !size.is_power_of_two() || !(page..=1 << 30).contains(&size) {
        return Err(format!(
            "ring size {text} must be a power of two between the page size ({}KiB) and 1GiB",
            page >> 10
        ));
    }
    Ok(size as u32)
}

/// A duration such as `250us`, `500ms`, `1.5s`, `2m`, `1h`; a bare number means seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let bad = || format!("{text:?} is not a duration: write e.g. 500ms, 10s or 2m");
    let number: f64 = number.parse().map_err(|_| bad())?;
    let seconds = match unit.trim_start() {
        "ns" => number / 1e9,
        "us" | "µs" => number / 1e6,
        "ms" => number / 1e3,
        "" | "s" => number,
        "m" | "min" => number * 60.0,
        "h" => number * 3600.0,
        _ => return Err(bad()),
    };
    if !seconds.is_finite() || seconds > 1e9 {
        return Err(bad());
    }
    // Below a nanosecond rounds to none.
    let duration = Duration::from_secs_f64(seconds);
    if duration.is_zero() {
        return Err(format!(
            "{text:?} is no time at all: give a duration above zero"
        ));
    }
    Ok(duration)
}

/// The shortest --interval: each report reads the kernel's summary maps (perf stat -I has
/// the same floor).
const SHORTEST_INTERVAL: Duration = Duration::from_millis(10);

/// An --interval: a duration of at least [`SHORTEST_INTERVAL`].
pub fn parse_interval(text: &str) -> Result<Duration, String> {
    let interval = parse_duration(text)?;
    if interval < SHORTEST_INTERVAL {
        return Err(format!(
            "{:?} is too short an interval: give 10ms or more",
            text.trim()
        ));
    }
    Ok(interval)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;
    use proptest::prelude::*;

    #[test]
    fn clap_definition_is_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn pids() {
        assert_eq!(parse_pid("1234"), Ok(1234));
        assert!(parse_pid("0").is_err());
        assert!(parse_pid("-5").is_err());
        assert!(parse_pid("abc").is_err());
        assert!(parse_pid("99999999999").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64KiB"), Ok(64 << 10));
        assert_eq!(parse_size("16MiB"), Ok(16 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("2 gb"), Ok(2 << 30));
        assert!(parse_size("MiB").is_err());
        assert!(parse_size("12XB").is_err());
        assert!(parse_size("99999999999999999999").is_err());
        assert!(parse_ring_size("3MiB").is_err());
        assert_eq!(parse_ring_size("4MiB"), Ok(4 << 20));
        // SAFETY: as in parse_ring_size.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64;
        assert_eq!(parse_ring_size(&page.to_string()), Ok(page as u32));
        assert!(parse_ring_size(&(page / 2).to_string()).is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_duration("250µs"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_duration("10 s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("3min"), Ok(Duration::from_secs(180)));
        assert!(parse_duration("0s").unwrap_err().contains("above zero"));
        assert!(parse_duration("0.1ns").unwrap_err().contains("above zero"));
        assert_eq!(parse_interval("10ms"), Ok(Duration::from_millis(10)));
        assert!(parse_interval("9ms").unwrap_err().contains("10ms or more"));
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn p_is_an_alias_of_x() {
        let args = Args::try_parse_from(["cow-trace", "-p", "42"]).unwrap();
        assert_eq!(args.pid, Some(42));
        let args = Args::try_parse_from(["cow-trace", "--", "ls", "-l"]).unwrap();
        assert_eq!(args.command, ["ls", "-l"]);
        assert!(Args::try_parse_from(["cow-trace", "-x", "1", "--", "ls"]).is_err());
    }

    #[test]
    fn conflicting_options_are_refused() {
        use clap::error::ErrorKind;
        let refused = |args: &[&str]| {
            let parsed = Args::try_parse_from(args).and_then(|a| a.check_value_conflicts());
            parsed.expect_err("accepted").kind()
        };
        let conflict = ErrorKind::ArgumentConflict;
        assert_eq!(
            refused(&["cow-trace", "--format", "stap", "-s", "-x", "1"]),
            conflict
        );
        assert_eq!(refused(&["cow-trace", "-u", "nobody", "-x", "1"]), conflict);
        assert_eq!(
            refused(&["cow-trace", "-s", "--plot", "a.svg", "-x", "1"]),
            conflict
        );
        assert_eq!(refused(&["cow-trace", "-s", "-r", "-x", "1"]), conflict);
        let accepted = |args: &[&str]| {
            let args = Args::try_parse_from(args).unwrap();
            args.check_value_conflicts().unwrap();
        };
        accepted(&["cow-trace", "--format", "stap", "-r", "-g", "-x", "1"]);
        accepted(&["cow-trace", "--json", "-s", "-g", "-i", "1s", "-x", "1"]);
        accepted(&["cow-trace", "-u", "nobody", "--", "true"]);
    }

    #[test]
    fn flame_outputs_capture_stacks() {
        let args = Args::try_parse_from(["cow-trace", "-x", "1"]).unwrap();
        assert_eq!(args.stack_method(), None);
        let args = Args::try_parse_from(["cow-trace", "-x", "1", "--folded", "f"]).unwrap();
        assert!(args.stack_method() == Some(StackMethod::Dwarf) && args.stack.is_none());
        assert_eq!(args.stack_faults(), StackFaults::Cow);
        let args = Args::try_parse_from([
            "cow-trace",
            "-s",
            "--flamegraph",
            "f.svg",
            "--flame-faults",
            "all",
            "-x",
            "1",
        ])
        .unwrap();
        assert_eq!(args.flame_faults, FlameFaults::All);
        // A graph of every fault takes every fault's stack.
        assert_eq!(args.stack_faults(), StackFaults::All);
        // Choosing what to count without asking for a graph is a mistake worth a word.
        assert!(Args::try_parse_from(["cow-trace", "--flame-faults", "all", "-x", "1"]).is_err());
    }

    #[test]
    fn stack_options() {
        let parse = |args: &[&str]| {
            let mut all = vec!["cow-trace", "-x", "1"];
            all.extend_from_slice(args);
            Args::try_parse_from(all).and_then(|a| a.check_value_conflicts().map(|()| a))
        };
        // -g and --stack unwind with the tables by default; fp asks for the kernel's walk.
        for flag in ["-g", "--stack", "--stack=dwarf"] {
            let args = parse(&[flag]).unwrap();
            assert_eq!(args.stack_method(), Some(StackMethod::Dwarf), "{flag}");
            assert_eq!(args.ring_size(), DWARF_RING_SIZE);
        }
        let args = parse(&["--stack=fp"]).unwrap();
        assert_eq!(args.stack_method(), Some(StackMethod::Fp));
        assert_eq!(args.ring_size(), RING_SIZE);
        // The value needs '=': a following word is not taken for the method.
        let args = Args::try_parse_from(["cow-trace", "-g", "--", "true"]).unwrap();
        assert_eq!(
            (args.stack, &args.command[..]),
            (Some(StackMethod::Dwarf), &["true".into()][..])
        );
        assert!(parse(&["-g", "fp"]).is_err());
        let args = parse(&["-g", "--stack-faults", "all", "--stack-size", "16KiB"]).unwrap();
        assert_eq!(args.stack_faults(), StackFaults::All);
        assert_eq!(args.stack_size, Some(16 << 10));
        assert_eq!(
            parse(&["-g", "--stack-size", "100"]).unwrap().stack_size,
            Some(96)
        );
        assert!(
            parse(&["-g", "--stack-size", "64KiB"]).is_err(),
            "above perf's 65528"
        );
        assert!(parse(&["-g", "--stack-size", "0"]).is_err());
        // Options for stacks without stacks, or for the other method, are refused.
        assert!(parse(&["--stack-faults", "all"]).is_err());
        assert!(parse(&["--stack=fp", "--stack-size", "16KiB"]).is_err());
        assert!(parse(&["--stack=frames"]).is_err());
        assert_eq!(
            parse(&["--ring-size", "4MiB", "-g"]).unwrap().ring_size(),
            4 << 20
        );
    }

    proptest! {
        #[test]
        fn size_parser_never_panics(text in "\\PC*") {
            let _ = parse_size(&text);
        }

        #[test]
        fn sizes_round_trip(n in 0u64..1_000_000, unit in prop::sample::select(vec![("", 0), ("KiB", 10), ("MiB", 20)])) {
            prop_assert_eq!(parse_size(&format!("{n}{}", unit.0)), Ok(n << unit.1));
        }

        #[test]
        fn duration_parser_never_panics(text in "\\PC*") {
            let _ = parse_duration(&text);
        }

        #[test]
        fn pid_parser_accepts_exactly_positive_i32(n in any::<i64>()) {
            prop_assert_eq!(parse_pid(&n.to_string()).is_ok(), n > 0 && n <= i64::from(i32::MAX));
        }
    }
}
