//! Bad input, missing privilege, dying targets, signals, pipes, overload, and no kernel state
//! left behind. Those that load eBPF need root (CI runs as root); elsewhere they say why they
//! skip.
mod common;

use std::{
    collections::BTreeSet,
    io::{BufRead, BufReader},
    os::unix::process::CommandExt,
    path::PathBuf,
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
    let script = scratch().join(format!("script-{}", std::process::id()));
    std::fs::write(&script, "exit 42\n").unwrap();
    assert_one_line_error(
        &["--", script.to_str().unwrap()],
        3,
        "make it executable, or run it with sh",
    );
    let broken = scratch().join(format!("broken-script-{}", std::process::id()));
    std::fs::write(&broken, "#!/no/such/interpreter -x\nexit 42\n").unwrap();
    std::fs::set_permissions(&broken, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    assert_one_line_error(
        &["--", broken.to_str().unwrap()],
        3,
        "its #! line names /no/such/interpreter",
    );
    assert_one_line_error(
        &["-o", "/proc/no/such/dir/out", "-x", "1"],
        6,
        "cannot write to",
    );
    let same = scratch().join(format!("same-output-{}", std::process::id()));
    assert_one_line_error(
        &[
            "-o",
            same.to_str().unwrap(),
            "--plot",
            same.to_str().unwrap(),
            "-x",
            "1",
        ],
        2,
        "-o and --plot name the same file",
    );
    // Every file written at the end is checked before tracing, and before a command starts.
    let marker = scratch().join(format!("plot-marker-{}", std::process::id()));
    assert_one_line_error(
        &[
            "--plot",
            "/proc/no/such/dir/x.svg",
            "-d",
            "5s",
            "--",
            "touch",
            marker.to_str().unwrap(),
        ],
        6,
        "cannot write to /proc/no/such/dir/x.svg",
    );
    assert!(!marker.exists(), "the command ran");
    assert_one_line_error(
        &["--plot", "/proc/no/such/dir/x.svg", "-x", "1", "-d", "5s"],
        6,
        "choose another file with --plot",
    );
    assert_one_line_error(
        &["--user", "no-such-user-cow-trace", "--", "true"],
        3,
        "no user named",
    );
    if let Ok(user) = std::process::Command::new("id")
        .args(["-u", "nobody"])
        .output()
        && user.status.success()
        && nix::unistd::Uid::effective().is_root()
    {
        // Root may run a file only its owner may: the check must be the user's.
        let own = scratch().join(format!("root-only-{}", std::process::id()));
        std::fs::copy("/bin/true", &own).unwrap();
        std::fs::set_permissions(&own, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .unwrap();
        // One line, so no "Tracing" line before it.
        assert_one_line_error(
            &["--user", "nobody", "--", own.to_str().unwrap()],
            3,
            "cannot run",
        );
        let _ = std::fs::remove_file(&own);
    }
}

/// Inside a PID namespace of its own (a container without the host's), process ids are not
/// the ones the kernel's programs see: cow-trace says so rather than trace nothing.
#[test]
fn a_pid_namespace_of_its_own_is_refused() {
    if !require_root("a_pid_namespace_of_its_own_is_refused") {
        return;
    }
    let output = match Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc"])
        .arg(cow_trace())
        .args(["--summary", "--", "true"])
        .stdin(Stdio::null())
        .output()
    {
        Ok(output) if !String::from_utf8_lossy(&output.stderr).starts_with("unshare:") => output,
        _ => {
            skip(
                "a_pid_namespace_of_its_own_is_refused",
                "unshare cannot make a PID namespace here",
            );
            return;
        }
    };
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(5), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("PID namespace of its own"), "{stderr}");
}

/// A command's arguments are bytes, as execve takes them: one that is not UTF-8 (a file name
/// in Latin-1) reaches the command unchanged.
#[test]
fn arguments_that_are_not_utf8_reach_the_command() {
    if !require_root("arguments_that_are_not_utf8_reach_the_command") {
        return;
    }
    use std::os::unix::ffi::OsStrExt as _;
    let latin1 = std::ffi::OsStr::from_bytes(b"caf\xe9");
    let output = Command::new(cow_trace())
        .args(["--summary", "-o", "/dev/null", "--", "/bin/echo"])
        .arg(latin1)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(
        output.stdout.windows(5).any(|w| w == b"caf\xe9\n"),
        "{:?}",
        output.stdout
    );
}

/// A ring buffer the kernel has no memory for (here: a memory cgroup's limit below it) gets a
/// one-line error that says what to change.
#[test]
fn a_ring_without_memory_says_to_make_it_smaller() {
    if !require_root("a_ring_without_memory_says_to_make_it_smaller") {
        return;
    }
    let test = "a_ring_without_memory_says_to_make_it_smaller";
    // cgroup v1's memory controller (this kind of machine's); v2 would take a child group
    // under the root's subtree_control, which a test should not change.
    let group = std::path::Path::new("/sys/fs/cgroup/memory")
        .join(format!("cow-trace-ring-{}", std::process::id()));
    if std::fs::create_dir(&group).is_err() {
        skip(test, "no cgroup v1 memory controller to limit");
        return;
    }
    std::fs::write(
        group.join("memory.limit_in_bytes"),
        (64u64 << 20).to_string(),
    )
    .unwrap();
    let script = format!(
        "echo $$ > {}/cgroup.procs && exec {} --ring-size 256MiB -o /dev/null -- true",
        group.display(),
        cow_trace().display()
    );
    let output = Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let _ = std::fs::remove_dir(&group);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(5), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("try a smaller --ring-size"), "{stderr}");
}

/// A script without a `#!` line runs under /bin/sh, as a shell or `env` would run it, its
/// status passed through.
#[test]
fn a_script_without_an_interpreter_line_runs_under_sh() {
    if !require_root("a_script_without_an_interpreter_line_runs_under_sh") {
        return;
    }
    use std::os::unix::fs::PermissionsExt as _;
    let script = scratch().join(format!("bare-script-{}", std::process::id()));
    std::fs::write(&script, "echo from-the-script; exit 42\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (code, stdout, stderr) = run_cow_trace(&["--summary", "--", script.to_str().unwrap()]);
    let _ = std::fs::remove_file(&script);
    assert_eq!(code, 42, "{stderr}");
    assert!(stdout.contains("from-the-script"), "{stdout}");
}

/// Options that cannot work together are refused, naming both, never silently ignored.
#[test]
fn conflicting_options_are_refused_naming_both() {
    for (args, first, second) in [
        (
            &["--format", "stap", "--summary", "-x", "1"][..],
            "--format stap",
            "--summary",
        ),
        (&["-u", "nobody", "-x", "1"], "--user", "--pid"),
        (
            &["--summary", "--plot", "x.svg", "-x", "1"],
            "--summary",
            "--plot",
        ),
        (
            &["--summary", "--resolve", "-x", "1"],
            "--summary",
            "--resolve",
        ),
    ] {
        // --duration: a regression that accepts the options must not trace for good.
        let args = [args, &["-d", "2s", "-o", "/dev/null"]].concat();
        let (code, _, stderr) = run_cow_trace(&args);
        assert_eq!(code, 2, "cow-trace {args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "cow-trace {args:?}: {stderr:?}");
        assert!(
            stderr.contains(first) && stderr.contains(second),
            "cow-trace {args:?}: {stderr:?} names {first} and {second}"
        );
    }
}

/// The flame graph's files are checked before anything is traced or started, as -o is.
#[test]
fn flame_outputs_are_checked_before_tracing() {
    let marker = scratch().join(format!("flame-not-started-{}", std::process::id()));
    let marker = marker.to_str().unwrap();
    for option in ["--flamegraph", "--folded"] {
        assert_one_line_error(
            &[option, "/proc/no/such/dir/out", "--", "touch", marker],
            6,
            &format!("choose another file with {option}"),
        );
        assert!(
            !std::path::Path::new(marker).exists(),
            "{option}: the command ran"
        );
    }
    assert_one_line_error(&["--flame-faults", "all", "-x", "1"], 2, "--flamegraph");
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

/// A `sleep` argument no other test uses (seconds, made unique by our pid), so that what a
/// test leaves behind is found by its command line.
fn sleep_arg(seconds: u32) -> String {
    format!("{seconds}.{}", std::process::id())
}

/// Pids of the running `sleep ARG` processes.
fn sleeping(arg: &str) -> Vec<u32> {
    let wanted = format!("sleep\0{arg}\0");
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == wanted.as_bytes())
        })
        .collect()
}

/// Waits until a `sleep ARG` runs for each of `args`.
fn wait_sleeping(args: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while args.iter().any(|arg| sleeping(arg).is_empty()) {
        assert!(Instant::now() < deadline, "no sleep {args:?} started");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Fails if a `sleep ARG` of `args` is still running, after killing it.
fn assert_none_left(args: &[&str], what: &str) {
    let left: Vec<u32> = args.iter().flat_map(|arg| sleeping(arg)).collect();
    for &pid in &left {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
    }
    assert!(left.is_empty(), "{what}: left running: {left:?}");
}

/// Runs cow-trace in a process group of its own, as in a script or a service (no terminal),
/// until it ends (not until the processes it left behind close its stdout, as `output()` would
/// wait). Returns its status, stdout and stderr.
fn run_without_terminal(args: &[&str]) -> (i32, String, String) {
    let tracer = spawn_without_terminal(args);
    tracer.finish()
}

/// cow-trace running in a process group of its own; stdout and stderr go to files.
struct Detached {
    child: std::process::Child,
    stdout: PathBuf,
    stderr: PathBuf,
}

fn spawn_without_terminal(args: &[&str]) -> Detached {
    static SEQUENCE: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = SEQUENCE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let base = scratch().join(format!("detached-{}-{n}", std::process::id()));
    let (stdout, stderr) = (base.with_extension("out"), base.with_extension("err"));
    let child = Command::new(cow_trace())
        .args(["-o", "/dev/null"])
        .args(args)
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout).unwrap())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    Detached {
        child,
        stdout,
        stderr,
    }
}

impl Detached {
    fn finish(mut self) -> (i32, String, String) {
        let status = self.child.wait().unwrap().code().unwrap_or(-1);
        let read = |path: &PathBuf| {
            let text = std::fs::read_to_string(path).unwrap();
            let _ = std::fs::remove_file(path);
            text
        };
        (status, read(&self.stdout), read(&self.stderr))
    }
}

/// Tracing stopped early (--duration, SIGTERM) ends the command's whole process group, not only
/// the command: a pipeline's processes and a background job leave nothing running.
#[test]
fn stopping_early_ends_the_commands_process_group() {
    if !require_root("stopping_early_ends_the_commands_process_group") {
        return;
    }
    let (a, b) = (sleep_arg(30), sleep_arg(31));
    let (status, stdout, stderr) = run_without_terminal(&[
        "-d",
        "1s",
        "--",
        "sh",
        "-c",
        &format!("sleep {a} | sleep {b}; echo done"),
    ]);
    assert_none_left(&[&a, &b], "--duration");
    assert_eq!(status, 143, "{stderr}");
    assert!(!stdout.contains("done"), "{stdout}");

    let (a, b) = (sleep_arg(41), sleep_arg(42));
    let tracer = spawn_without_terminal(&["--", "sh", "-c", &format!("sleep {a} & sleep {b}")]);
    wait_sleeping(&[&a, &b]);
    kill(Pid::from_raw(tracer.child.id() as i32), Signal::SIGTERM).unwrap();
    let (status, _, stderr) = tracer.finish();
    assert_none_left(&[&a, &b], "SIGTERM to cow-trace");
    assert_eq!(status, 143, "{stderr}");
}

/// Processes that ignore SIGTERM get SIGKILL once the grace period is over, and cow-trace
/// says so.
#[test]
fn a_command_ignoring_sigterm_is_killed_after_the_grace_period() {
    if !require_root("a_command_ignoring_sigterm_is_killed_after_the_grace_period") {
        return;
    }
    let (a, b) = (sleep_arg(33), sleep_arg(34));
    let started = Instant::now();
    let (status, _, stderr) = run_without_terminal(&[
        "-d",
        "1s",
        "--",
        "sh",
        "-c",
        &format!("trap '' TERM; sleep {a} & sleep {b}"),
    ]);
    assert_none_left(&[&a, &b], "SIGTERM ignored");
    assert_eq!(status, 128 + 9, "{stderr}");
    assert!(stderr.contains("SIGKILL"), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(20));
}

/// In the foreground of a terminal the command keeps the terminal (it shares cow-trace's
/// process group, as with `timeout --foreground`): it reads from it; stopping early still
/// ends every traced process. `script` gives cow-trace a terminal. The command ignores
/// SIGHUP: the terminal's hangup as `script` ends must not be what ends it.
#[test]
fn in_a_terminal_the_command_reads_it_and_stopping_ends_its_processes() {
    let test = "in_a_terminal_the_command_reads_it_and_stopping_ends_its_processes";
    if !require_root(test) {
        return;
    }
    if Command::new("script").arg("--version").output().is_err() {
        skip(
            test,
            "no `script` (util-linux) to run cow-trace in a terminal",
        );
        return;
    }
    let (a, b) = (sleep_arg(51), sleep_arg(52));
    let inner = format!(
        "{} -o /dev/null -d 2s -- sh -c 'trap \"\" HUP; read line; echo got $line; sleep {a} & sleep {b}'",
        cow_trace().display()
    );
    let mut script = Command::new("script")
        .args(["-qec", &inner, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut script.stdin.take().unwrap(), b"hello\n").unwrap();
    let output = script.wait_with_output().unwrap();
    let printed = String::from_utf8_lossy(&output.stdout);
    assert_none_left(&[&a, &b], "--duration in a terminal");
    assert!(printed.contains("got hello"), "{printed}");
    assert_eq!(output.status.code(), Some(143), "{printed}");
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
        // read's number is the architecture's (0 on x86-64, 63 on arm64).
        if syscall.starts_with(&format!("{} ", libc::SYS_read)) && children.trim().is_empty() {
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

/// --summary counts in kernel maps of a fixed size: faults in more regions than they hold are
/// reported lost, with the remedy for that, not the ring buffer's.
#[test]
fn full_summary_maps_are_lost_faults_with_their_own_remedy() {
    if !require_root("full_summary_maps_are_lost_faults_with_their_own_remedy") {
        return;
    }
    let mut faulter = Faulter::start();
    let pid = faulter.pid();
    let tracer = Tracer::start(&["-x", &pid.to_string(), "--summary", "--json"]);
    // More 64 KiB regions than the summary's 65536 entries.
    faulter.run("sparse 70000");
    let done = tracer.stop();
    let totals = done
        .json()
        .into_iter()
        .find(|v| v["event"] == "totals")
        .expect("no totals line");
    let summary_full = totals["lost_detail"]["summary_full"].as_u64().unwrap();
    assert!(summary_full >= 70000 - 65536, "{totals}");
    assert_eq!(totals["lost_detail"]["ring_full"], 0, "{totals}");
    assert!(
        done.stderr.contains("LOST") && done.stderr.contains("--summary's maps full"),
        "no LOST line for the summary maps: {}",
        done.stderr
    );
    assert!(
        !done.stderr.contains("--ring-size"),
        "the ring buffer's remedy for a full summary map: {}",
        done.stderr
    );
    faulter.exit();
}

/// --summary counts in kernel maps of a fixed size: 4096 latency histograms (pid x class) and
/// 65536 counts (pid x class x window x stack x 64 KiB region). 5000 short-lived children, each
/// writing 16 regions, leave far more behind than either holds: the entries of processes that
/// have exited must make way for the next ones. Nothing is lost, each child's counts are the
/// kernel's, and the histograms hold every timed fault.
#[test]
fn summary_maps_outlast_processes_that_exited() {
    if !require_root("summary_maps_outlast_processes_that_exited") {
        return;
    }
    const CHILDREN: usize = 5000;
    let mut faulter = Faulter::start();
    let pid = faulter.pid();
    let tracer = Tracer::start(&["-x", &pid.to_string(), "--summary", "--json"]);
    let before = kernel_fault_counts(pid);
    let printed = faulter.run(&format!("forks {CHILDREN} 16"));
    let after = kernel_fault_counts(pid);
    let done = tracer.stop();
    assert_eq!(done.status, 0, "{}", done.stderr);
    let json = done.json();
    let totals = json
        .iter()
        .find(|v| v["event"] == "totals")
        .expect("no totals line");
    assert_eq!(totals["lost"], 0, "{totals}");
    assert_eq!(totals["hist_full"], 0, "{totals}");
    assert!(
        !done.stderr.contains("LOST") && !done.stderr.contains("histogram map"),
        "a loss reported where there was none: {}",
        done.stderr
    );
    // What the kernel counted: each child's, read as a zombie, and the parent's.
    let mut expected: std::collections::BTreeMap<u64, (u64, u64)> = printed
        .iter()
        .map(|line| {
            let fields: Vec<u64> = line
                .strip_prefix("child ")
                .unwrap_or_else(|| panic!("{line:?}"))
                .split(' ')
                .map(|n| n.parse().unwrap())
                .collect();
            (fields[0], (fields[1], fields[2]))
        })
        .collect();
    assert_eq!(expected.len(), CHILDREN);
    expected.insert(u64::from(pid), (after.0 - before.0, after.1 - before.1));
    let rows: std::collections::BTreeMap<u64, &Value> = json
        .iter()
        .filter(|v| v["event"] == "summary")
        .map(|v| (v["pid"].as_u64().unwrap(), v))
        .collect();
    let counted = |pid: &u64| {
        rows.get(pid).map(|row| {
            (
                row["minor"].as_u64().unwrap(),
                row["major"].as_u64().unwrap(),
            )
        })
    };
    let wrong: Vec<String> = expected
        .iter()
        .filter(|(pid, kernel)| counted(pid) != Some(**kernel))
        .map(|(pid, kernel)| format!("{pid}: {kernel:?} counted as {:?}", counted(pid)))
        .collect();
    assert!(
        wrong.is_empty(),
        "{} of {} processes counted otherwise than the kernel did (minor, major): {:?}",
        wrong.len(),
        expected.len(),
        &wrong[..wrong.len().min(10)]
    );
    let strangers: Vec<&u64> = rows.keys().filter(|p| !expected.contains_key(p)).collect();
    assert!(
        strangers.is_empty(),
        "rows of pids never forked: {strangers:?}"
    );
    let faults: u64 = expected.values().map(|(minor, major)| minor + major).sum();
    assert_eq!(totals["faults"], faults, "{totals}");
    // Every timed fault is in its pid's histograms.
    let mut in_histograms: std::collections::BTreeMap<u64, u64> = Default::default();
    for histogram in json.iter().filter(|v| v["event"] == "histogram") {
        let samples: u64 = histogram["buckets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_u64().unwrap())
            .sum();
        *in_histograms
            .entry(histogram["pid"].as_u64().unwrap())
            .or_default() += samples;
    }
    let short: Vec<(u64, u64, u64)> = rows
        .iter()
        .map(|(pid, row)| {
            let timed = row["timed"].as_u64().unwrap();
            (*pid, timed, in_histograms.get(pid).copied().unwrap_or(0))
        })
        .filter(|(_, timed, samples)| timed != samples)
        .collect();
    assert!(
        short.is_empty(),
        "{} processes' histograms do not hold their timed faults (pid, timed, in histograms): {:?}",
        short.len(),
        &short[..short.len().min(10)]
    );
    let timed: u64 = rows
        .values()
        .map(|row| row["timed"].as_u64().unwrap())
        .sum();
    if untimed() {
        assert_eq!(timed, 0);
    } else {
        assert_eq!(
            timed, faults,
            "every fault of a process forked while traced is timed"
        );
    }
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

/// Output that fails mid-run (a full disk: /dev/full) ends tracing with status 6, and ends the
/// command with its descendants as every other early end does: nothing runs on untraced.
#[test]
fn an_output_error_ends_the_command_too() {
    if !require_root("an_output_error_ends_the_command_too") {
        return;
    }
    let pid_file = scratch().join(format!("output-error-child-{}", std::process::id()));
    // The command keeps no pipe of ours open, so cow-trace's end is not waited on past it.
    let script = format!(
        "exec </dev/null >/dev/null 2>&1; sleep 60 & echo $! > {}; wait",
        pid_file.display()
    );
    let (code, _, stderr) = run_cow_trace(&["-o", "/dev/full", "--", "sh", "-c", &script]);
    assert_eq!(code, 6, "{stderr}");
    let child: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let _ = std::fs::remove_file(&pid_file);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(format!("/proc/{child}/stat"))
        .is_ok_and(|stat| !stat.contains(") Z "))
    {
        assert!(
            Instant::now() < deadline,
            "the command's child {child} still runs after cow-trace ended: {stderr}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A file that cannot be written at the end (here the plot, to a full device) fails the run,
/// but the other files asked for are written all the same.
#[test]
fn a_failed_plot_leaves_the_flame_graph_written() {
    if !require_root("a_failed_plot_leaves_the_flame_graph_written") {
        return;
    }
    let svg = scratch().join(format!("flame-beside-full-plot-{}.svg", std::process::id()));
    let (code, _, stderr) = run_cow_trace(&[
        "--plot",
        "/dev/full",
        "--flamegraph",
        svg.to_str().unwrap(),
        "-o",
        "/dev/null",
        "--",
        "true",
    ]);
    let written = std::fs::read_to_string(&svg).unwrap_or_default();
    let _ = std::fs::remove_file(&svg);
    assert_eq!(code, 6, "{stderr}");
    assert!(stderr.contains("drawing /dev/full"), "{stderr}");
    assert!(written.trim_end().ends_with("</svg>"), "{written:?}");
}

/// A closed standard error (`2>&1 | head -1` once head is gone) is no reason to fail: its
/// lines are lost, and tracing ends as it would, with the command's status.
#[test]
fn a_closed_stderr_is_no_panic() {
    if !require_root("a_closed_stderr_is_no_panic") {
        return;
    }
    let mut child = Command::new(cow_trace())
        .args(["-v", "-o", "/dev/null", "--", "sh", "-c", "exit 7"])
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stderr.take());
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(7), "{status:?}");
}
