//! What the report says about the machine and the build.
use std::{fs, path::Path, process::Command, thread};

use super::load::proc_number;
use crate::util;

/// The first line a command prints, or "?".
pub fn first_line(program: &str, args: &[&str]) -> String {
    util::output(Command::new(program).args(args))
        .and_then(|s| s.lines().next().map(|l| l.trim().to_string()))
        .unwrap_or_else(|| "?".to_string())
}

/// Version, commit, and whether the sources of the binary differed from the commit.
pub fn revision(cow_trace: &Path) -> String {
    let root = util::root().to_string_lossy().into_owned();
    let git = |args: &[&str]| util::output(Command::new("git").args(["-C", &root]).args(args));
    let commit = git(&["rev-parse", "--short", "HEAD"]).unwrap_or_default();
    let sources = [
        "cow-trace/src",
        "cow-trace/build.rs",
        "cow-trace/Cargo.toml",
        "cow-trace-ebpf",
        "cow-trace-common",
        "Cargo.lock",
    ];
    let changed = git(&[&["status", "--porcelain", "--"], &sources[..]].concat())
        .map_or(0, |s| s.lines().count());
    let state = match changed {
        0 => "clean".to_string(),
        n => format!("with uncommitted changes to {n} source files"),
    };
    let version = first_line(&cow_trace.to_string_lossy(), &["--version"]);
    format!("{version}, commit {} ({state})", commit.trim())
}

pub fn machine() -> String {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "unknown CPU".to_string());
    let cpus = thread::available_parallelism().map_or(0, |n| n.get());
    let memory = proc_number("/proc/meminfo", "MemTotal:").map_or_else(
        || "?".to_string(),
        |kib| format!("{:.0} GiB", kib as f64 / 1048576.0),
    );
    let virt = match cpuinfo.contains(" hypervisor") {
        true => ", a virtual machine",
        false => "",
    };
    format!("{model}, {cpus} CPUs, {memory} RAM{virt}")
}

/// The kernel's mitigations that tax every call, return and indirect branch in kernel code,
/// so every hook: a tracer's cost differs between machines that differ here.
pub fn mitigations() -> String {
    ["spectre_v2", "spec_rstack_overflow", "retbleed"]
        .iter()
        .filter_map(|name| {
            let path = format!("/sys/devices/system/cpu/vulnerabilities/{name}");
            let state = fs::read_to_string(path).ok()?;
            Some(format!("{name}: {}", state.trim()))
        })
        .collect::<Vec<_>>()
        .join("; ")
}
