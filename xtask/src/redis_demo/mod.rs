//! `cargo xtask redis-demo`: what a Redis BGSAVE costs, page by page.
//!
//! A redis-server on a loopback port (huge pages off, files in a temporary directory) gets a
//! data set, cow-trace attaches to it, redis-benchmark overwrites keys, and BGSAVE forks the
//! snapshot child. Then cow-trace's account (the parent's copies while the child lived, its
//! reuses after, the child's own faults) is printed beside Redis's own figure, the child's
//! Private_Dirty (`rdb_last_cow_size`, the "Fork CoW for RDB" log line), and the stacks that
//! copied (a flame graph, and the top stacks of the server's and the child's copies). The
//! server and its files go away on every way out, Ctrl-C included.
//!
//! One module per job: `interrupt` (Ctrl-C, and waits that notice it), `server`, `client`
//! (RESP), `snapshot` (the data set, then BGSAVE under overwrites), `tracer` (cow-trace on the
//! server), `trace` (what cow-trace saw, from its JSON), `report` (beside Redis's own figures),
//! `stacks` (which code copied, from its folded stacks).
mod client;
mod interrupt;
mod report;
mod server;
mod snapshot;
mod stacks;
mod trace;
mod tracer;

use anyhow::{Context as _, ensure};

use crate::{setup, util};
use client::Conn;
use report::{RedisFigures, print_side_by_side};
use server::{Server, report_thp};
use snapshot::{load, snapshot_under_writes};
use stacks::Stacks;
use trace::Trace;
use tracer::Tracer;

#[derive(clap::Args)]
pub struct Args {
    /// Data set to load, in MiB of values.
    #[arg(long, default_value_t = 256)]
    size_mib: u64,
    /// Bytes per value. Below a page (4096), so the snapshot child never hands saved values
    /// back to the kernel, which would take them out of Redis's own count.
    #[arg(long, default_value_t = 1000)]
    value_size: u64,
    /// How long redis-benchmark keeps overwriting keys after the snapshot child has exited
    /// (milliseconds): the parent's faults then are reuses, not copies.
    #[arg(long, default_value_t = 1000)]
    after_ms: u64,
    /// redis-benchmark connections.
    #[arg(long, default_value_t = 2)]
    clients: u32,
    /// Commands each connection keeps in flight (redis-benchmark -P).
    #[arg(long, default_value_t = 1)]
    pipeline: u32,
    /// Loopback port for the server (default: a free one).
    #[arg(long)]
    port: Option<u16>,
}

const REDIS_PACKAGES: &[&str] = &["redis-server", "redis-tools"];

const PAGE: u64 = 4096;

pub fn run(args: Args) -> anyhow::Result<()> {
    ensure!(
        args.value_size > 0 && args.size_mib > 0,
        "--size-mib and --value-size must be positive"
    );
    setup::run()?;
    setup::install_packages(REDIS_PACKAGES)?;
    let cow_trace = util::build_release()?;
    println!("\n== Redis BGSAVE under cow-trace ==");
    interrupt::install();
    let server = Server::start(args.port)?;
    report_thp(server.pid())?;
    let mut conn = Conn::connect(server.port)?;
    let keys = load(&mut conn, &args)?;
    let drawings = util::root().join("target/xtask");
    std::fs::create_dir_all(&drawings)
        .with_context(|| format!("creating {}", drawings.display()))?;
    let plot = drawings.join("redis-demo.svg");
    let flame_graph = drawings.join("redis-flame.svg");
    let tracer = Tracer::start(&cow_trace, server.pid(), &server.dir, &plot, &flame_graph)?;
    let snapshot = snapshot_under_writes(&server, &mut conn, &args, keys)?;
    tracer.stop()?;
    let trace = Trace::read(&server.dir.join("trace.json"), server.pid(), snapshot.child)?;
    let redis = RedisFigures::read(&mut conn, &server)?;
    print_side_by_side(&snapshot, &trace, &redis);
    let stacks = Stacks::read(&server.dir.join(tracer::FOLDED))?;
    stacks::print_top(&stacks, server.pid(), snapshot.child, &flame_graph);
    println!("\nPlot of the run: {}", plot.display());
    Ok(())
}
