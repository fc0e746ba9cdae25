//! cow-trace: a copy-on-write page-fault tracer. The data flow is in ARCHITECTURE.md:
//! cli -> target -> probes (kernel side) -> ring -> event -> summary / sink.

/// A line on stderr, as `eprintln!` writes it, except that a closed stderr (`2>&1 | head`) is
/// no reason to panic: the line is lost, and tracing goes on and ends as it would.
macro_rules! note {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

mod cli;
mod clock;
mod enrich;
mod event;
mod failure;
mod kernel;
mod map_record;
mod output;
mod page;
mod session;
mod stack_record;
mod target;

use std::{fs::File, io::Write};

use crate::{
    cli::Args,
    failure::{Failure, Status, failure},
    kernel::{KernelConfig, StackConfig},
    output::flame::FlameFiles,
    target::{HeldCommand, Identity},
};

fn main() {
    let args = match Args::try_parse_checked() {
        Ok(args) => args,
        Err(error) => exit_on_usage_error(error),
    };
    init_logging(args.verbose);
    let status = match run(args) {
        Ok(status) => status,
        Err(error) => match error.downcast_ref::<Failure>() {
            Some(failure) => {
                note!("cow-trace: {failure}");
                failure.status.code()
            }
            None => {
                note!("cow-trace: {error:#}");
                Status::Unexpected.code()
            }
        },
    };
    std::process::exit(status);
}

/// Diagnostics go to stderr through `log`: warnings always, what cow-trace does (probes,
/// descendants, why it stopped) with -v; RUST_LOG overrides both.
fn init_logging(verbose: bool) {
    let filter = if verbose {
        "warn,cow_trace=info"
    } else {
        "warn"
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(filter))
        .format(|out, record| match record.target() {
            // The kernel programs' diagnostics (aya-log), told apart from our own lines.
            "cow_trace::ebpf" => writeln!(out, "cow-trace: kernel: {}", record.args()),
            ours if ours.starts_with("cow_trace") => {
                writeln!(out, "cow-trace: {}", record.args())
            }
            theirs => writeln!(out, "cow-trace: {theirs}: {}", record.args()),
        })
        .init();
}

/// Help and version print as usual; a usage error becomes one line and status 2.
fn exit_on_usage_error(error: clap::Error) -> ! {
    use clap::error::ErrorKind;
    if matches!(
        error.kind(),
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
    ) {
        error.exit();
    }
    let rendered = error.render().to_string();
    let mut lines = rendered.lines().filter(|line| !line.trim().is_empty());
    let first = lines.next().unwrap_or("invalid arguments");
    let mut message = first.trim().trim_start_matches("error: ").to_string();
    // "the following required arguments were not provided:" names them on the next line.
    if message.ends_with(':')
        && let Some(next) = lines.next()
    {
        message = format!("{message} {}", next.trim());
    }
    note!("cow-trace: {message} (see cow-trace --help)");
    std::process::exit(Status::Usage.code());
}

fn run(args: Args) -> anyhow::Result<i32> {
    // What this kernel and CPU cannot do, said before any command starts.
    kernel::version::check()?;
    kernel::backends::candidates(args.backend)?;
    check_distinct_outputs(&args)?;
    // Open the output before starting a command, so a bad -o never leaves one behind; the
    // plot, written at the end, must be writable now too, not only after the whole trace.
    let out = open_output(&args)?;
    if let Some(path) = &args.plot {
        check_writable(path, "--plot")?;
    }
    let flame = FlameFiles::open(
        args.flamegraph.as_deref(),
        args.folded.as_deref(),
        args.flame_faults,
    )?;
    // The held command is forked before the runtime starts any thread.
    let (root, held) = match (args.pid, args.command.is_empty()) {
        (Some(pid), _) => {
            target::check_pid(pid)?;
            let process = target::process_of(pid)?;
            if process != pid {
                note!("cow-trace: {pid} is a thread of {process}: tracing {process}");
                target::check_pid(process)?;
            }
            (process as u32, None)
        }
        (None, false) => {
            let identity = Identity::choose(args.user.as_deref())?;
            // JSON lines on stdout stay parseable: the command's own output goes to stderr.
            let json_on_stdout = args.format() == cli::Format::Json && args.output.is_none();
            let held = HeldCommand::spawn(&args.command, identity.as_ref(), json_on_stdout)?;
            (held.pid.as_raw() as u32, Some(held))
        }
        (None, true) => {
            note!("cow-trace: nothing to trace: give a pid (-x PID) or a command (-- CMD ARGS...)");
            return Ok(Status::Usage.code());
        }
    };
    let options = session::Options {
        root,
        backend: args.backend,
        format: args.format(),
        duration: args.duration,
        print_summary: !args.no_summary,
        interval: args.interval,
        fail_over_cow: args.fail_over_cow,
        resolve: args.resolve,
        show_stacks: args.stack.is_some(),
        kernel: KernelConfig {
            ring_size: args.ring_size(),
            summary: args.summary,
            stacks: args.stack_method().map(|method| StackConfig {
                method,
                faults: args.stack_faults(),
                size: args.stack_size.unwrap_or(cli::STACK_SIZE),
            }),
            untimed: args.no_latency,
            follow_unmaps: args.resolve || args.stack_method().is_some(),
        },
        plot: args.plot.clone(),
        flame,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| anyhow::anyhow!("starting the tokio runtime: {e}"))?;
    runtime.block_on(session::run(options, held, out))
}

fn open_output(args: &Args) -> anyhow::Result<Box<dyn Write>> {
    const BUFFER: usize = 256 << 10;
    Ok(match &args.output {
        Some(path) => {
            let file = File::create(path).map_err(|e| {
                failure(
                    Status::Output,
                    format!(
                        "cannot write to {}: {e}: choose another file with -o",
                        path.display()
                    ),
                )
            })?;
            Box::new(std::io::BufWriter::with_capacity(BUFFER, file))
        }
        None => Box::new(std::io::BufWriter::with_capacity(BUFFER, std::io::stdout())),
    })
}

/// Refuses two outputs given the same file (-o, --plot, --flamegraph, --folded): the last
/// written would replace the others. A device such as /dev/null may take several.
fn check_distinct_outputs(args: &Args) -> anyhow::Result<()> {
    let outputs = [
        ("-o", &args.output),
        ("--plot", &args.plot),
        ("--flamegraph", &args.flamegraph),
        ("--folded", &args.folded),
    ];
    let mut files: Vec<(&str, &std::path::Path, std::path::PathBuf)> = Vec::new();
    for (option, path) in outputs {
        let Some(path) = path.as_deref() else {
            continue;
        };
        if std::fs::metadata(path).is_ok_and(|m| !m.is_file()) {
            continue;
        }
        // The same file however it is spelled: an existing one by its real path.
        let same = std::fs::canonicalize(path)
            .or_else(|_| std::path::absolute(path))
            .unwrap_or_else(|_| path.to_path_buf());
        if let Some((other, _, _)) = files.iter().find(|(_, _, seen)| *seen == same) {
            return Err(failure(
                Status::Usage,
                format!(
                    "{other} and {option} name the same file, {}: give each its own",
                    path.display()
                ),
            ));
        }
        files.push((option, path, same));
    }
    Ok(())
}

/// Fails now, as a bad -o does, if `path` (given with `option`) cannot be written. Creates it
/// if missing; an existing file is left as it is until it is written.
fn check_writable(path: &std::path::Path, option: &str) -> anyhow::Result<()> {
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map(drop)
        .map_err(|e| {
            failure(
                Status::Output,
                format!(
                    "cannot write to {}: {e}: choose another file with {option}",
                    path.display()
                ),
            )
        })
}
