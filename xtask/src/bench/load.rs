//! How busy the machine and our processes were, from /proc and getrusage: CPU time against
//! ours, a process's CPU and memory so far, cross-CPU interrupts.
use std::{
    fs,
    time::{Duration, Instant},
};

use crate::process::cpu_time;

pub struct Load {
    at: Instant,
    busy: Duration,
    steal: Duration,
    ours: Duration,
}

/// Over the session, in CPUs (1.0 = one CPU fully busy).
pub struct LoadFigures {
    pub seconds: f64,
    pub others: f64,
    pub steal: f64,
}

impl Load {
    pub fn now() -> Load {
        let (busy, steal) = machine_cpu();
        Load {
            at: Instant::now(),
            busy,
            steal,
            ours: our_cpu(),
        }
    }

    pub fn since(&self) -> LoadFigures {
        let now = Load::now();
        let seconds = (now.at - self.at).as_secs_f64().max(1e-3);
        let busy = now.busy.saturating_sub(self.busy);
        let ours = now.ours.saturating_sub(self.ours);
        LoadFigures {
            seconds,
            others: busy.saturating_sub(ours).as_secs_f64() / seconds,
            steal: now.steal.saturating_sub(self.steal).as_secs_f64() / seconds,
        }
    }
}

/// (busy, steal) CPU time of the whole machine, from the first line of /proc/stat.
fn machine_cpu() -> (Duration, Duration) {
    let stat = fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .map_while(|w| w.parse().ok())
        .collect();
    let at = |i: usize| ticks.get(i).copied().unwrap_or(0);
    // user nice system idle iowait irq softirq steal
    let busy = at(0) + at(1) + at(2) + at(5) + at(6);
    (from_ticks(busy), from_ticks(at(7)))
}

fn from_ticks(ticks: u64) -> Duration {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_millis(ticks * 1000 / hz)
}

/// CPU time of this process and every descendant it has reaped (workloads, tracers, tools).
fn our_cpu() -> Duration {
    [libc::RUSAGE_SELF, libc::RUSAGE_CHILDREN]
        .into_iter()
        .map(|who| {
            // SAFETY: rusage is plain data for the kernel to fill in.
            let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
            // SAFETY: valid pointer.
            unsafe { libc::getrusage(who, &mut usage) };
            cpu_time(&usage)
        })
        .sum()
}

/// utime + stime so far, from /proc/PID/stat (clock-tick resolution).
pub fn cpu_so_far(pid: u32) -> Option<Duration> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields 14 and 15 of proc(5); the list after the comm starts at field 3.
    let after_comm: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: u64 = after_comm.get(11)?.parse().ok()?;
    let stime: u64 = after_comm.get(12)?.parse().ok()?;
    Some(from_ticks(utime + stime))
}

/// A number of /proc/PID/status (VmRSS in KiB, voluntary_ctxt_switches).
pub fn status_number(pid: u32, key: &str) -> Option<u64> {
    proc_number(&format!("/proc/{pid}/status"), key)
}

/// The number after `key` in a /proc file of "key: value" lines (status, meminfo).
pub fn proc_number(path: &str, key: &str) -> Option<u64> {
    let text = fs::read_to_string(path).ok()?;
    let line = text.lines().find(|l| l.starts_with(key))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// IRQ-work, rescheduling, function-call and TLB-shootdown interrupts so far, all CPUs: the
/// cross-CPU wake-ups a tracer causes, each a VM exit on a virtual machine.
pub fn ipi_count() -> u64 {
    let text = fs::read_to_string("/proc/interrupts").unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let label = words.next()?;
            ["IWI:", "RES:", "CAL:", "TLB:"]
                .contains(&label)
                .then(|| words.map_while(|w| w.parse::<u64>().ok()).sum::<u64>())
        })
        .sum()
}
