//! Processes we start: stopped (signal, grace period, then SIGKILL) whatever happens.
use std::{
    process::{Child, Command, ExitStatus},
    thread,
    time::{Duration, Instant},
};

use anyhow::Context as _;

pub struct Process {
    pub child: Child,
    name: &'static str,
    exited: Option<ExitStatus>,
}

impl Process {
    pub fn spawn(command: &mut Command, name: &'static str) -> anyhow::Result<Process> {
        let child = command
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        Ok(Process {
            child,
            name,
            exited: None,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn has_exited(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        if self.exited.is_none() {
            self.exited = self
                .child
                .try_wait()
                .with_context(|| format!("waiting for {}", self.name))?;
        }
        Ok(self.exited)
    }

    /// Sends `signal`, waits up to `grace`, then kills.
    pub fn stop(&mut self, signal: i32, grace: Duration) -> anyhow::Result<ExitStatus> {
        if let Some(status) = self.has_exited()? {
            return Ok(status);
        }
        // SAFETY: kill(2) on our own child, not yet reaped, so the pid is still its.
        unsafe { libc::kill(self.pid() as i32, signal) };
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(status) = self.has_exited()? {
                return Ok(status);
            }
            thread::sleep(Duration::from_millis(20));
        }
        eprintln!(
            "redis-demo: {} did not stop within {grace:?}; killing it",
            self.name
        );
        let _ = self.child.kill();
        let status = self.child.wait()?;
        self.exited = Some(status);
        Ok(status)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.stop(libc::SIGTERM, Duration::from_secs(5));
    }
}
