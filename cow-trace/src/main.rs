//! cow-trace: a copy-on-write page-fault tracer. The data flow is in ARCHITECTURE.md:
//! cli -> target -> probes (kernel side) -> ring -> event -> summary / sink.
mod cli;
mod event;
mod failure;
mod kstats;
mod probes;
mod ring;
mod session;
mod sink;
mod summary;
mod target;
mod tracefs;

use std::{fs::File, io::Write};

use clap::Parser as _;

use crate::{
    cli::Args,
    failure::{Failure, Kind, failure},
    target::{HeldCommand, Identity},
};

fn main() {
    let args = Args::parse();
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
    let sink = sink::new(args.format(), out, sink::WallClock::now());
    let options = session::Options {
        root,
        ring_size: args.ring_size,
        duration: args.duration,
        verbose: args.verbose,
        kernel_summary: args.summary,
        print_summary: !args.no_summary,
        interval: args.interval,
        fail_over_cow: args.fail_over_cow,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| anyhow::anyhow!("starting the tokio runtime: {e}"))?;
    runtime.block_on(session::run(options, held, sink))
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
