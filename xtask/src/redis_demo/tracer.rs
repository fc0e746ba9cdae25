//! The tracer: cow-trace on the server, its JSON lines to a file, its stderr relayed.
use std::{
    path::Path,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};

use super::interrupt;
use crate::{process::Guarded, util};

/// The folded stacks of the copies, in the server's directory.
pub const FOLDED: &str = "copies.folded";

/// cow-trace -x REDIS --json with its plot, flame graph and folded stacks, its stderr relayed
/// (the readiness line, the table at the end).
pub struct Tracer {
    process: Guarded,
    relay: thread::JoinHandle<()>,
}

impl Tracer {
    pub fn start(
        cow_trace: &Path,
        pid: u32,
        dir: &Path,
        plot: &Path,
        flame_graph: &Path,
    ) -> anyhow::Result<Tracer> {
        let mut command = Command::new(cow_trace);
        command
            .args(["-x", &pid.to_string(), "--json", "-o"])
            .arg(dir.join("trace.json"))
            .arg("--plot")
            .arg(plot)
            .arg("--flamegraph")
            .arg(flame_graph)
            .arg("--folded")
            .arg(dir.join(FOLDED))
            .stdin(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command.spawn().context("starting cow-trace")?;
        let stderr = child.stderr.take().context("cow-trace stderr")?;
        let mut process = Guarded::new(child, "cow-trace");
        let (is_ready, relay) = util::relay_stderr(stderr);
        let deadline = Instant::now() + Duration::from_secs(30);
        while is_ready.recv_timeout(Duration::from_millis(100)).is_err() {
            interrupt::check()?;
            if process.try_reap()?.is_some() || Instant::now() > deadline {
                bail!("cow-trace did not attach (see its message above)");
            }
        }
        Ok(Tracer { process, relay })
    }

    /// SIGINT, as Ctrl-C: cow-trace drains, writes its summary and ends.
    pub fn stop(mut self) -> anyhow::Result<()> {
        let status = self
            .process
            .stop(libc::SIGINT, Duration::from_secs(60))?
            .status;
        let _ = self.relay.join();
        ensure!(status.success(), "cow-trace failed: {status}");
        Ok(())
    }
}
