//! Processes we start: reaped with wait4 for their rusage, killed if we bail out early.
use std::{process::Child, time::Duration};

use anyhow::{Context as _, bail};

pub struct Guarded {
    child: Child,
    reaped: bool,
}

/// How a process ended, from wait4.
pub struct Reaped {
    pub success: bool,
    pub cpu: Duration,
    pub peak_rss_kib: u64,
    /// Voluntary context switches: how often it slept and was woken.
    pub sleeps: u64,
}

impl Guarded {
    pub fn new(child: Child) -> Guarded {
        Guarded {
            child,
            reaped: false,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, signal: i32) {
        if !self.reaped {
            // SAFETY: kill(2) on our own child, not yet reaped, so the pid is still its.
            unsafe { libc::kill(self.pid() as i32, signal) };
        }
    }

    /// Reaps the process if it has exited.
    pub fn try_reap(&mut self) -> anyhow::Result<Option<Reaped>> {
        self.wait4(libc::WNOHANG)
    }

    pub fn wait_success(&mut self, what: &str) -> anyhow::Result<Reaped> {
        let reaped = self.wait4(0)?.context("wait4 returned no process")?;
        if !reaped.success {
            bail!("{what} failed");
        }
        Ok(reaped)
    }

    fn wait4(&mut self, options: i32) -> anyhow::Result<Option<Reaped>> {
        let mut status = 0;
        // SAFETY: rusage is plain data for the kernel to fill in.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: valid pointers; the pid is our own unreaped child.
        let pid = unsafe { libc::wait4(self.pid() as i32, &mut status, options, &mut usage) };
        if pid < 0 {
            return Err(std::io::Error::last_os_error()).context("wait4");
        }
        if pid == 0 {
            return Ok(None);
        }
        self.reaped = true;
        Ok(Some(Reaped {
            success: libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            cpu: timeval(usage.ru_utime) + timeval(usage.ru_stime),
            peak_rss_kib: usage.ru_maxrss as u64,
            sleeps: usage.ru_nvcsw as u64,
        }))
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        if !self.reaped {
            self.signal(libc::SIGKILL);
            let _ = self.wait4(0);
        }
    }
}

pub fn timeval(tv: libc::timeval) -> Duration {
    Duration::from_secs(tv.tv_sec as u64) + Duration::from_micros(tv.tv_usec as u64)
}
