//! Processes the tasks start: reaped with wait4, for their CPU and memory use, and stopped
//! whatever happens (dropped: SIGTERM, a grace period, then SIGKILL).
use std::{
    os::unix::process::ExitStatusExt as _,
    process::{Child, Command, ExitStatus},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

/// A child process of ours; stopped if it still runs when dropped.
pub struct Guarded {
    child: Child,
    /// What messages call it.
    name: &'static str,
    reaped: Option<Reaped>,
}

/// How a process ended, from wait4.
#[derive(Clone, Copy, Debug)]
pub struct Reaped {
    pub status: ExitStatus,
    pub cpu: Duration,
    pub peak_rss_kib: u64,
    /// Voluntary context switches: how often it slept and was woken.
    pub sleeps: u64,
}

impl Guarded {
    pub fn new(child: Child, name: &'static str) -> Guarded {
        Guarded {
            child,
            name,
            reaped: None,
        }
    }

    pub fn spawn(command: &mut Command, name: &'static str) -> anyhow::Result<Guarded> {
        let child = command
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        Ok(Guarded::new(child, name))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, signal: i32) {
        if self.reaped.is_none() {
            // SAFETY: kill(2) on our own child, not yet reaped, so the pid is still its.
            unsafe { libc::kill(self.pid() as i32, signal) };
        }
    }

    /// Reaps the process if it has exited (once reaped, the same figures again).
    pub fn try_reap(&mut self) -> anyhow::Result<Option<Reaped>> {
        if self.reaped.is_none() {
            self.wait4(libc::WNOHANG)?;
        }
        Ok(self.reaped)
    }

    /// Waits for the process to exit; fails unless its status is 0.
    pub fn wait_success(&mut self, what: &str) -> anyhow::Result<Reaped> {
        let reaped = self.wait()?;
        if !reaped.status.success() {
            bail!("{what} failed");
        }
        Ok(reaped)
    }

    /// Sends `signal`, waits up to `grace`, then kills.
    pub fn stop(&mut self, signal: i32, grace: Duration) -> anyhow::Result<Reaped> {
        if let Some(reaped) = self.try_reap()? {
            return Ok(reaped);
        }
        self.signal(signal);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(reaped) = self.try_reap()? {
                return Ok(reaped);
            }
            thread::sleep(Duration::from_millis(20));
        }
        eprintln!(
            "xtask: {} did not stop within {grace:?}; killing it",
            self.name
        );
        self.signal(libc::SIGKILL);
        self.wait()
    }

    fn wait(&mut self) -> anyhow::Result<Reaped> {
        match self.reaped {
            Some(reaped) => Ok(reaped),
            None => self.wait4(0)?.context("wait4 returned no process"),
        }
    }

    fn wait4(&mut self, options: i32) -> anyhow::Result<Option<Reaped>> {
        let mut status = 0;
        // SAFETY: rusage is plain data for the kernel to fill in.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: valid pointers; the pid is our own unreaped child.
        let pid = unsafe { libc::wait4(self.pid() as i32, &mut status, options, &mut usage) };
        if pid < 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("waiting for {}", self.name));
        }
        if pid == 0 {
            return Ok(None);
        }
        self.reaped = Some(Reaped {
            status: ExitStatus::from_raw(status),
            cpu: cpu_time(&usage),
            peak_rss_kib: usage.ru_maxrss as u64,
            sleeps: usage.ru_nvcsw as u64,
        });
        Ok(self.reaped)
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        let _ = self.stop(libc::SIGTERM, Duration::from_secs(5));
    }
}

/// User plus system time in `usage`.
pub fn cpu_time(usage: &libc::rusage) -> Duration {
    timeval(usage.ru_utime) + timeval(usage.ru_stime)
}

fn timeval(tv: libc::timeval) -> Duration {
    Duration::from_secs(tv.tv_sec as u64) + Duration::from_micros(tv.tv_usec as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reaps_once_and_reports_the_status() {
        let mut guarded = Guarded::spawn(Command::new("sh").args(["-c", "exit 3"]), "sh").unwrap();
        let error = guarded.wait_success("sh -c 'exit 3'").unwrap_err();
        assert_eq!(error.to_string(), "sh -c 'exit 3' failed");
        // Reaped once: the same status after, and stopping it sends nothing.
        let reaped = guarded.try_reap().unwrap().expect("not reaped");
        assert_eq!(reaped.status.code(), Some(3));
        let stopped = guarded.stop(libc::SIGKILL, Duration::ZERO).unwrap();
        assert_eq!(stopped.status.code(), Some(3));
    }

    #[test]
    fn drop_stops_what_still_runs() {
        let guarded = Guarded::spawn(Command::new("sleep").arg("60"), "sleep").unwrap();
        let pid = guarded.pid() as i32;
        drop(guarded);
        // SAFETY: signal 0 only checks whether the pid exists.
        let alive = unsafe { libc::kill(pid, 0) } == 0;
        assert!(!alive, "sleep {pid} still runs after its guard was dropped");
    }
}
