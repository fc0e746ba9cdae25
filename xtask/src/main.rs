//! Project tasks: `cargo xtask <task>`. Each task lives in its own module.
mod bench;
mod demo;
mod dist;
mod docs;
mod libtest;
mod process;
mod redis_demo;
mod setup;
mod test;
mod util;
mod vm_test;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "xtask",
    about = "cow-trace's build, set-up, demo and test tasks"
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what a fresh machine lacks (apt packages, nightly rust-src, bpf-linker, the musl
    /// targets and cargo-deb for `dist`).
    Setup,
    /// Set up, build, and trace the article's fork-and-write experiment live.
    Demo,
    /// Set up, build, and run every check and test (formatting, clippy, unit, the `dist`
    /// artifacts, privileged, and the privileged suite in VMs on Debian 6.1 and 6.12 per
    /// backend).
    Test,
    /// Build static binaries for x86-64 and arm64 and package them (tarballs, .debs,
    /// SHA256SUMS) into target/dist.
    Dist,
    /// Generate the man page (target/man/cow-trace.1) from the command-line definition.
    Man,
    /// Generate shell completions (target/completions/) from the command-line definition.
    Completions,
    /// Measure what tracing costs a fork-and-write workload, against bpftrace and perf trace;
    /// writes BENCHMARKS.md (takes minutes; not part of CI).
    Bench(bench::Args),
    /// Trace a Redis BGSAVE under overwrites and print cow-trace's copies beside Redis's own
    /// rdb_last_cow_size, and the stacks that copied, with a flame graph (installs
    /// redis-server and redis-tools if missing).
    RedisDemo(redis_demo::Args),
    /// Boot Debian's 6.1 and 6.12 kernels in qemu and run the privileged suite in each.
    VmTest,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().task {
        Task::Setup => setup::run(),
        Task::Demo => demo::run(),
        Task::Test => test::run(),
        Task::Dist => dist::run(),
        Task::Man => docs::man(),
        Task::Completions => docs::completions(),
        Task::Bench(args) => bench::run(args),
        Task::RedisDemo(args) => redis_demo::run(args),
        Task::VmTest => vm_test::run(),
    }
}
