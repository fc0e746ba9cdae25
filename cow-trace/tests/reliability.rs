//! Bad input, missing privilege, dying targets, signals, pipes, overload, and no kernel state
//! left behind. Those that load eBPF need root (CI runs as root); elsewhere they say why they
//! skip.
mod common;

use std::{
    collections::BTreeSet,
    io::{BufRead, BufReader},
    os::unix::process::CommandExt,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::*;
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use serde_json::Value;

/// Runs cow-trace to completion and returns (status, stdout, stderr).
fn run_cow_trace(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(cow_trace())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// One line on stderr, naming the problem, and a distinct status.
fn assert_one_line_error(args: &[&str], status: i32, needle: &str) {
    let (code, _, stderr) = run_cow_trace(args);
    assert_eq!(code, status, "cow-trace {args:?}: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "cow-trace {args:?}: {stderr:?}");
    assert!(stderr.starts_with("cow-trace: "), "{stderr}");
    assert!(
        stderr.contains(needle),
        "cow-trace {args:?}: {stderr:?} lacks {needle:?}"
    );
}

#[test]
fn bad_input_gets_one_line_and_a_distinct_status() {
    assert_one_line_error(&["-x", "abc"], 2, "is not a process id");
    assert_one_line_error(&["-x", "0"], 2, "is not a process id");
    assert_one_line_error(&["-x", "-5"], 2, "is not a process id");
    assert_one_line_error(&["--bogus"], 2, "--bogus");
    assert_one_line_error(&[], 2, "nothing to trace");
    assert_one_line_error(&["--ring-size", "3MiB", "-x", "1"], 2, "power of two");
    assert_one_line_error(&["-x", "2147483000"], 3, "no process with pid");
    assert_one_line_error(&["-x", "2"], 3, "kernel thread");
    assert_one_line_error(&["--", "no-such-command-cow-trace"], 3, "command not found");
    assert_one_line_error(
        &["-o", "/proc/no/such/dir/out", "-x", "1"],
        6,
        "cannot write to",
    );
    assert_one_line_error(
        &["--user", "no-such-user-cow-trace", "--", "true"],
        3,
        "no user named",
    );
}

#[test]
fn zombie_target_is_refused() {
    // A child that exited and was not reaped stays a zombie.
    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .unwrap()
        .contains(") Z ")
    {
        assert!(Instant::now() < deadline, "child never became a zombie");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_one_line_error(&["-x", &pid.to_string()], 3, "zombie");
    child.wait().unwrap();
}

#[test]
fn unprivileged_user_is_told_what_is_needed() {
    if !require_root("unprivileged_user_is_told_what_is_needed") {
        return;
    }
    // Run as nobody, with a held command: the message names what is needed, and the command,
    // forked before the failure, is killed rather than left waiting.
    let output = Command::new(cow_trace())
        .args(["--", "sleep", "31337"])
        .uid(65534)
        .gid(65534)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(4), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("root") && stderr.contains("CAP_BPF") && stderr.contains("CAP_PERFMON"),
        "{stderr}"
    );
    let leftover = Command::new("pgrep")
        .args(["-f", "sleep 31337"])
        .output()
        .unwrap();
    assert!(
        leftover.stdout.is_empty(),
        "held command left behind: {:?}",
        leftover.stdout
    );
}

#[test]
fn command_runs_as_the_sudo_user_or_the_named_user() {
    if !require_root("command_runs_as_the_sudo_user_or_the_named_user") {
        return;
    }
    let done = Tracer::start(&["--json", "--user", "nobody", "--", "id", "-u"]).wait();
    assert_eq!(done.status, 0, "{}", done.stderr);
    assert_eq!(done.command_stdout.trim(), "65534");

    let mut command = Command::new(cow_trace());
    command
        .args(["--json", "-o", "/dev/null", "--", "id", "-u"])
        .env("SUDO_UID", "65534")
        .env("SUDO_GID", "65534")
        .env("SUDO_USER", "nobody");
    let output = command.output().unwrap();
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "65534");
}

/// Every signal that ends cow-trace ends it cleanly: status 0 and the summary.
#[test]
fn sigint_sigterm_and_sighup_end_cleanly_with_the_summary() {
    if !require_root("sigint_sigterm_and_sighup_end_cleanly_with_the_summary") {
        return;
    }
    for signal in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        let mut faulter = Faulter::start();
        let tracer = Tracer::start(&["-x", &faulter.pid().to_string()]);
        faulter.run("touch 10");
        let pid = tracer.pid();
        let programs = programs_of(pid);
        assert!(
            programs.len() >= 7,
            "cow-trace {pid} holds programs {programs:?}"
        );
        kill(Pid::from_raw(pid as i32), signal).unwrap();
        let done = tracer.wait();
        assert_eq!(done.status, 0, "{signal}: {}", done.stderr);
        assert!(
            done.stderr.contains("Lost events: 0"),
            "{signal}: no summary: {}",
            done.stderr
        );
        assert!(
            done.output.lines().count() > 10,
            "{signal}: {}",
            done.output
        );
        assert_unloaded(&programs);
        faulter.exit();
    }
}

/// The target exits, or is killed: cow-trace prints its summary and exits 0 by itself.
#[test]
fn target_killed_mid_trace_ends_the_trace() {
    if !require_root("target_killed_mid_trace_ends_the_trace") {
        return;
    }
    let mut faulter = Faulter::start();
    let tracer = Tracer::start(&["-x", &faulter.pid().to_string()]);
    faulter.send("spin");
    std::thread::sleep(Duration::from_millis(300));
    faulter.child.kill().unwrap();
    faulter.child.wait().unwrap();
    let done = tracer.wait();
    assert_eq!(done.status, 0, "{}", done.stderr);
    assert!(done.stderr.contains("Lost events"), "{}", done.stderr);
}

/// Output piped into `head -1`: cow-trace ends on EPIPE without an error and detaches.
#[test]
fn closed_pipe_ends_cleanly() {
    if !require_root("closed_pipe_ends_cleanly") {
        return;
    }
    let mut tracer = Command::new(cow_trace())
        .args(["--", "sh", "-c", "while :; do ls / >/dev/null; done"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = tracer.id();
    let mut stdout = BufReader::new(tracer.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert!(line.starts_with("TIME"), "{line}");
    let programs = programs_of(pid);
    assert!(!programs.is_empty());
    drop(stdout); // as `head -1` does
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = tracer.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "cow-trace ignored the closed pipe"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut tracer.stderr.take().unwrap(), &mut stderr).unwrap();
    // The shell loop was ended too (SIGTERM: 128 + 15).
    assert_eq!(status.code(), Some(143), "{stderr}");
    assert!(!stderr.contains("writing output failed"), "{stderr}");
    assert_unloaded(&programs);
}

/// kill -9 of cow-trace leaves no program, link or map of it in the kernel: they belong to
/// its file descriptors, which the kernel closes.
#[test]
fn sigkill_leaves_nothing_attached() {
    if !require_root("sigkill_leaves_nothing_attached") {
        return;
    }
    let mut faulter = Faulter::start();
    let tracer = Tracer::start(&["-x", &faulter.pid().to_string()]);
    let pid = tracer.pid();
    let programs = programs_of(pid);
    assert!(
        programs.len() >= 7,
        "cow-trace {pid} holds programs {programs:?}"
    );
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
    let done = tracer.wait();
    assert_eq!(done.status, -1);
    assert_unloaded(&programs);
    faulter.run("touch 1");
    faulter.exit();
}

/// A thousand short-lived descendants: no crash, every fault belongs to a process that was
/// in the tree, and the traced map shrinks back (exits are cleaned up).
#[test]
fn thousand_short_lived_descendants() {
    if !require_root("thousand_short_lived_descendants") {
        return;
    }
    // The shell waits for "go" (sent once cow-trace is attached), forks 1000 times, then
    // waits again so the test can look at the traced map.
    let script = "read go; for i in $(seq 1000); do /bin/true; done; read line";
    let mut shell = Command::new("sh")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let shell_pid = shell.id();
    let tracer = Tracer::start(&["--json", "-x", &shell_pid.to_string()]);
    let mut stdin = shell.stdin.take().unwrap();
    std::io::Write::write_all(&mut stdin, b"go\n").unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let deadline = Instant::now() + Duration::from_secs(120);
    // Wait until the loop is done and the shell sits in `read`.
    loop {
        let syscall =
            std::fs::read_to_string(format!("/proc/{shell_pid}/syscall")).unwrap_or_default();
        let children =
            std::fs::read_to_string(format!("/proc/{shell_pid}/task/{shell_pid}/children"))
                .unwrap_or_default();
        if syscall.starts_with("0 ") && children.trim().is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "the shell loop did not finish");
        std::thread::sleep(Duration::from_millis(50));
    }
    let traced = traced_map_entries(tracer.pid());
    drop(stdin); // EOF ends the second `read`
    shell.wait().unwrap();
    let done = tracer.wait();
    assert_eq!(done.status, 0, "{}", done.stderr);
    // Only the shell itself is left in the map (a few stragglers may still be exiting).
    assert!(
        traced <= 3,
        "TRACED holds {traced} entries after 1000 exits"
    );
    let json = done.json();
    let forked: BTreeSet<u64> = json
        .iter()
        .filter(|v| v["event"] == "fork")
        .map(|v| v["child"].as_u64().unwrap())
        .collect();
    assert!(forked.len() >= 1000, "{} forks seen", forked.len());
    let pids: BTreeSet<u64> = json
        .iter()
        .filter(|v| v["event"] == "fault")
        .map(|v| v["pid"].as_u64().unwrap())
        .collect();
    for pid in &pids {
        assert!(
            *pid == u64::from(shell_pid) || forked.contains(pid),
            "fault of {pid}, never in the tree"
        );
    }
    // Each child's faults carry its own names: "sh" until it execs, then "true" (or "seq",
    // for the one behind $(seq 1000)); one pid never mixes two programs.
    let mut programs: std::collections::BTreeMap<u64, BTreeSet<String>> = Default::default();
    for fault in json
        .iter()
        .filter(|v| v["event"] == "fault" && v["pid"] != shell_pid)
    {
        let comm = fault["comm"].as_str().unwrap().to_string();
        assert!(["sh", "true", "seq"].contains(&comm.as_str()), "{fault}");
        programs
            .entry(fault["pid"].as_u64().unwrap())
            .or_default()
            .insert(comm);
    }
    for (pid, comms) in &programs {
        assert!(
            comms.iter().filter(|c| *c != "sh").count() <= 1,
            "pid {pid} ran {comms:?}"
        );
    }
    assert_eq!(done.lost(), 0);
}

/// Overload: threads fault on every core while the ring is tiny. Nothing is dropped silently:
/// faults seen + faults reported lost == the kernel's own count.
#[test]
fn overload_seen_plus_lost_equals_the_kernels_count() {
    if !require_root("overload_seen_plus_lost_equals_the_kernels_count") {
        return;
    }
    let mut faulter = Faulter::start();
    let pid = faulter.pid();
    // The smallest ring the kernel takes: one page.
    let ring = page_size().to_string();
    let tracer = Tracer::start(&["-x", &pid.to_string(), "--json", "--ring-size", &ring]);
    let before = kernel_fault_counts(pid);
    faulter.run("threads 4 20000");
    let after = kernel_fault_counts(pid);
    let done = tracer.stop();
    let (minor, major) = done.counts_of(pid);
    let lost = done.lost();
    assert!(
        lost > 0,
        "a one-page ring should have overflowed under {} faults",
        after.0 - before.0
    );
    assert_eq!(
        minor + major + lost,
        (after.0 - before.0) + (after.1 - before.1),
        "seen {minor}+{major}, lost {lost}"
    );
    assert!(
        done.stderr.contains("LOST"),
        "no LOST line while running: {}",
        done.stderr
    );
    faulter.exit();
}

/// Ids of the BPF objects (`prog_id` or `map_id`) that process `pid` holds file descriptors
/// to, from /proc/PID/fdinfo.
fn bpf_ids_of(pid: u32, field: &str) -> BTreeSet<u64> {
    let mut ids = BTreeSet::new();
    let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return ids;
    };
    for entry in entries.flatten() {
        let info = std::fs::read_to_string(entry.path()).unwrap_or_default();
        for line in info.lines() {
            if let Some(id) = line
                .strip_prefix(field)
                .and_then(|rest| rest.trim().parse().ok())
            {
                ids.insert(id);
            }
        }
    }
    ids
}

fn programs_of(pid: u32) -> BTreeSet<u64> {
    bpf_ids_of(pid, "prog_id:")
}

/// Waits until none of `programs` is loaded any more (ids are allocated cyclically, so a
/// freed id is not reused at once).
fn assert_unloaded(programs: &BTreeSet<u64>) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let output = Command::new("bpftool")
            .args(["-j", "prog", "show"])
            .output()
            .expect("bpftool (cargo xtask setup installs it)");
        let loaded: Vec<Value> = serde_json::from_slice(&output.stdout).unwrap_or_default();
        let left: Vec<u64> = loaded
            .iter()
            .filter_map(|p| p["id"].as_u64())
            .filter(|id| programs.contains(id))
            .collect();
        if left.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "programs {left:?} still loaded");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Entries in the TRACED map of the cow-trace process `pid`.
fn traced_map_entries(pid: u32) -> usize {
    for id in bpf_ids_of(pid, "map_id:") {
        let show = Command::new("bpftool")
            .args(["-j", "map", "show", "id", &id.to_string()])
            .output()
            .unwrap();
        let map: Value = serde_json::from_slice(&show.stdout).unwrap_or_default();
        if map["name"] == "TRACED" {
            let dump = Command::new("bpftool")
                .args(["-j", "map", "dump", "id", &id.to_string()])
                .output()
                .unwrap();
            let entries: Vec<Value> = serde_json::from_slice(&dump.stdout).unwrap();
            return entries.len();
        }
    }
    panic!("no TRACED map held by cow-trace {pid}");
}

/// A forced backend either attaches and says so, or fails with one line naming it and why.
#[test]
fn forced_backends_attach_or_say_why() {
    if !require_root("forced_backends_attach_or_say_why") {
        return;
    }
    for backend in ["fexit", "kprobe", "tracepoint"] {
        let (status, _, stderr) =
            run_cow_trace(&["--backend", backend, "-o", "/dev/null", "--", "true"]);
        match status {
            0 => assert!(
                stderr.contains(&format!("(backend: {backend})")),
                "{backend}: {stderr}"
            ),
            5 => {
                assert_eq!(stderr.lines().count(), 1, "{backend}: {stderr}");
                assert!(
                    stderr.contains(&format!("{backend}: ")),
                    "{backend}: {stderr}"
                );
                assert!(
                    backend != "tracepoint",
                    "the tracepoint backend must work here: {stderr}"
                );
            }
            other => panic!("--backend {backend}: status {other}: {stderr}"),
        }
    }
}
