//! cow-trace: a copy-on-write page-fault tracer. The data flow is in ARCHITECTURE.md:
//! cli -> target -> probes (kernel side) -> ring -> event -> summary / sink.
mod cli;
mod enrich;
mod event;
mod failure;
mod kernel;
mod map_record;
mod output;
mod session;
mod stack_record;
mod target;

use std::{fs::File, io::Write};

use clap::Parser as _;

use crate::{
    cli::Args,
    failure::{Failure, Kind, failure},
    kernel::KernelConfig,
    target::{HeldCommand, Identity},
};

fn main() {
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(error) => exit_on_usage_error(error),
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let status = match run(args) {
        Ok(status) => status,
        Err(error) => match error.downcast_ref::<Failure>() {
            Some(failure) => {
                eprintln!("cow-trace: {failure}");
                failure.kind as i32
            }
            None => {
                eprintln!("cow-trace: {error:#}");
                1
            }
        },
    };
    std::process::exit(status);
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
    let first = rendered
        .lines()
        .find(|line| !line.trim().is_empty())
        .unwrap_or("invalid arguments");
    let message = first.trim().trim_start_matches("error: ");
    eprintln!("cow-trace: {message} (see cow-trace --help)");
    std::process::exit(2);
}

fn run(args: Args) -> anyhow::Result<i32> {
    // Open the output before starting a command, so a bad -o never leaves one behind.
    let out = open_output(&args)?;
    // The held command is forked before the runtime starts any thread.
    let (root, held) = match (args.pid, args.command.is_empty()) {
        (Some(pid), _) => {
            target::check_pid(pid)?;
            (pid as u32, None)
        }
        (None, false) => {
            let identity = Identity::choose(args.user.as_deref())?;
            let held = HeldCommand::spawn(&args.command, identity.as_ref())?;
            (held.pid.as_raw() as u32, Some(held))
        }
        (None, true) => {
            eprintln!(
                "cow-trace: nothing to trace: give a pid (-x PID) or a command (-- CMD ARGS...)"
            );
            return Ok(2);
        }
    };
    let options = session::Options {
        root,
        backend: args.backend,
        format: args.format(),
        duration: args.duration,
        verbose: args.verbose,
        print_summary: !args.no_summary,
        interval: args.interval,
        fail_over_cow: args.fail_over_cow,
        resolve: args.resolve,
        kernel: KernelConfig {
            ring_size: args.ring_size,
            summary: args.summary,
            stacks: args.stack,
            untimed: args.no_latency,
        },
        plot: args.plot.clone(),
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
                    Kind::Output,
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
