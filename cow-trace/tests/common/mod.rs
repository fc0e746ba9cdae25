//! Helpers for the privileged integration tests: building workloads, running cow-trace, and
//! reading what the kernel itself counted.
#![allow(dead_code)]

use std::{
    io::{BufRead, BufReader, Read, Write},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    sync::{Mutex, OnceLock, mpsc},
    time::{Duration, Instant},
};

use serde_json::Value;

/// The cow-trace binary: cargo's, unless COW_TRACE_BIN names another (as in the VM tests,
/// where the suite runs far from the build tree).
pub fn cow_trace() -> PathBuf {
    std::env::var_os("COW_TRACE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_cow-trace")))
}

/// A scratch directory for output files (COW_TRACE_TEST_TMP overrides cargo's).
pub fn scratch() -> PathBuf {
    let dir = std::env::var_os("COW_TRACE_TEST_TMP")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Extra arguments for every cow-trace run, e.g. `--backend kprobe` from COW_TRACE_BACKEND,
/// so the same suite runs once per backend.
/// The backend (COW_TRACE_BACKEND) and mode (COW_TRACE_UNTIMED=1: --no-latency) a suite run
/// tests: `cargo xtask test` runs the suites once per mode, vm-test once per backend too.
pub fn backend_args() -> Vec<String> {
    let mut args = Vec::new();
    if let Ok(backend) = std::env::var("COW_TRACE_BACKEND")
        && !backend.is_empty()
    {
        args.extend(["--backend".to_string(), backend]);
    }
    if untimed() {
        args.push("--no-latency".into());
    }
    args
}

/// True when this suite run traces with --no-latency.
pub fn untimed() -> bool {
    std::env::var("COW_TRACE_UNTIMED").is_ok_and(|v| v == "1")
}

/// True in the VM tests (`cargo xtask vm-test`, which run prebuilt workloads): their CPUs are
/// emulated in software, some ten times slower, so the longest workloads do less there.
pub fn emulated() -> bool {
    std::env::var_os("COW_TRACE_WORKLOADS").is_some()
}

/// Privileged tests need root (CI runs as root). Elsewhere they say why they skip.
pub fn require_root(test: &str) -> bool {
    if nix::unistd::Uid::effective().is_root() {
        return true;
    }
    skip(test, "needs root to load eBPF programs (CI runs as root)");
    false
}

/// Says that `test` did not run, and why, on stdout: `cargo xtask test` and `vm-test` (which
/// run the suites with --nocapture) count these lines as skipped, not passed.
pub fn skip(test: &str, why: &str) {
    println!("skipped {test}: {why}");
}

/// Compiles `tests/workloads/NAME.c` once per test run and returns the binary (`libNAME.c`
/// is a shared library, `libNAME.so`). Where COW_TRACE_WORKLOADS names a directory of prebuilt
/// workloads (the VM tests, which have no compiler), that one is used. The flags are xtask's
/// too (xtask/src/util.rs): frame pointers in every function for --stack, debug information
/// for inlined functions.
pub fn workload(name: &str) -> PathBuf {
    static BUILT: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let library = name.starts_with("lib");
    let file = if library {
        format!("{name}.so")
    } else {
        name.to_string()
    };
    if let Some(dir) = std::env::var_os("COW_TRACE_WORKLOADS") {
        return PathBuf::from(dir).join(file);
    }
    let dir = scratch().join("workloads");
    let binary = dir.join(&file);
    let mut built = BUILT.lock().unwrap();
    if !built.iter().any(|b| b == name) {
        std::fs::create_dir_all(&dir).unwrap();
        let source = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/workloads")
            .join(format!("{name}.c"));
        // Built aside and renamed into place: another test binary running at the same time
        // (the suites share this directory) may be executing the previous build.
        let fresh = dir.join(format!("{name}.{}.tmp", std::process::id()));
        let mut cc = Command::new("cc");
        cc.args(["-O1", "-g", "-fno-omit-frame-pointer", "-pthread", "-Wall"]);
        if library {
            cc.args(["-shared", "-fPIC"]);
        }
        let status = cc
            .arg("-o")
            .arg(&fresh)
            .arg(&source)
            .status()
            .expect("running cc (install gcc: cargo xtask setup)");
        assert!(status.success(), "compiling {}", source.display());
        std::fs::rename(&fresh, &binary).unwrap();
        built.push(name.to_string());
    }
    binary
}

/// The unwinding workload (`tests/workloads/unwind/`) built as `variant` says, its library
/// beside it: "dwarf" (-O2 without frame pointers, unwound by .eh_frame), "fp" (with frame
/// pointers) or "bare" (neither frame pointers nor unwind tables). Returns the program.
/// xtask/src/util.rs builds the same for the VM tests.
pub fn unwind_workload(variant: &str) -> PathBuf {
    static BUILT: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let program = format!("unwind_deep_{variant}");
    if let Some(dir) = std::env::var_os("COW_TRACE_WORKLOADS") {
        return PathBuf::from(dir).join(program);
    }
    let flags: &[&str] = match variant {
        "dwarf" => &["-O2", "-fomit-frame-pointer"],
        "fp" => &["-O2", "-fno-omit-frame-pointer"],
        "bare" => &[
            "-O2",
            "-fomit-frame-pointer",
            "-fno-asynchronous-unwind-tables",
            "-fno-unwind-tables",
        ],
        _ => panic!("no unwind workload variant {variant}"),
    };
    let dir = scratch().join("workloads");
    let binary = dir.join(&program);
    let mut built = BUILT.lock().unwrap();
    if built.iter().any(|b| b == variant) {
        return binary;
    }
    std::fs::create_dir_all(&dir).unwrap();
    let sources = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/workloads/unwind");
    let library = dir.join(format!("libunwind_deep_{variant}.so"));
    let cc = |args: &mut Command| {
        let status = args
            .status()
            .expect("running cc (install gcc: cargo xtask setup)");
        assert!(status.success(), "compiling {args:?}");
    };
    cc(Command::new("cc")
        .args(flags)
        .args(["-Wall", "-shared", "-fPIC"])
        .arg(format!("-Wl,-soname,libunwind_deep_{variant}.so"))
        .arg("-o")
        .arg(&library)
        .arg(sources.join("libunwind_deep.c")));
    cc(Command::new("cc")
        .args(flags)
        .args(["-Wall", "-o"])
        .arg(&binary)
        .arg(sources.join("unwind_deep.c"))
        .arg(&library)
        .arg("-Wl,-rpath,$ORIGIN"));
    built.push(variant.to_string());
    binary
}

/// The system's page size: arm64 kernels use 4, 16 or 64 KiB pages.
pub fn page_size() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).expect("sysconf(_SC_PAGESIZE)")
}

/// The number of the page holding `address`.
pub fn page_of(address: u64) -> u64 {
    address / page_size()
}

/// (minflt, majflt) from /proc/PID/stat: what the kernel itself counted.
pub fn kernel_fault_counts(pid: u32) -> (u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the ")" that ends comm: state is field 3, minflt 10, majflt 12.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    (fields[7].parse().unwrap(), fields[9].parse().unwrap())
}

/// Waits until every thread of `pid` is asleep in read(2) on stdin, i.e. takes no faults.
pub fn wait_blocked_in_read(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    // /proc/PID/task/TID/syscall: "NR 0x0 ..." = read(0, ...) in progress, NR the
    // architecture's number of read (0 on x86-64, 63 on arm64). Any thread: the one reading
    // commands may not be the leader (`leader-exit`).
    let reading = |task: &Path| {
        let syscall = std::fs::read_to_string(task.join("syscall")).unwrap_or_default();
        let state = std::fs::read_to_string(task.join("stat")).unwrap_or_default();
        let sleeping = state
            .rfind(')')
            .is_some_and(|i| state[i + 2..].starts_with('S'));
        syscall.starts_with(&format!("{} 0x0 ", libc::SYS_read)) && sleeping
    };
    loop {
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task"));
        if tasks.is_ok_and(|mut tasks| tasks.any(|t| t.is_ok_and(|t| reading(&t.path())))) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "pid {pid} never blocked in read(0)"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Whether this kernel's sched_process_exit says if the thread group died (since 6.16). Before,
/// cow-trace takes a leader's exit for its process's (a known limit, README).
pub fn exit_tracepoint_knows_group_dead() -> bool {
    let format = "/sys/kernel/tracing/events/sched/sched_process_exit/format";
    std::fs::read_to_string(format).is_ok_and(|f| f.contains("group_dead"))
}

/// A child process killed and reaped when dropped, whatever the test's outcome.
pub struct ChildGuard(Child);

impl ChildGuard {
    pub fn new(child: Child) -> ChildGuard {
        ChildGuard(child)
    }

    /// Kills the process (if it still runs) and reaps it.
    pub fn stop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl std::ops::Deref for ChildGuard {
    type Target = Child;

    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for ChildGuard {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A running cow-trace.
pub struct Tracer {
    child: ChildGuard,
    output: PathBuf,
    stderr: mpsc::Receiver<String>,
    pub stderr_lines: Vec<String>,
    stdout: Option<std::thread::JoinHandle<String>>,
}

/// What a finished cow-trace left behind.
pub struct Finished {
    pub status: i32,
    pub output: String,
    pub stderr: String,
    /// What the traced command (-- CMD) printed on stdout.
    pub command_stdout: String,
}

impl Finished {
    /// The JSON lines of a --json run.
    pub fn json(&self) -> Vec<Value> {
        self.output
            .lines()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
            .collect()
    }

    /// The fault objects of a --json run.
    pub fn faults(&self) -> Vec<Value> {
        self.json()
            .into_iter()
            .filter(|v| v["event"] == "fault")
            .collect()
    }

    pub fn faults_of(&self, pid: u32) -> Vec<Value> {
        self.faults()
            .into_iter()
            .filter(|f| f["pid"] == pid)
            .collect()
    }

    /// (MINOR, MAJOR) completed faults reported for `pid`.
    pub fn counts_of(&self, pid: u32) -> (u64, u64) {
        let faults = self.faults_of(pid);
        let count = |t: &str| faults.iter().filter(|f| f["type"] == t).count() as u64;
        (count("MINOR"), count("MAJOR"))
    }

    pub fn lost(&self) -> u64 {
        let totals = self
            .json()
            .into_iter()
            .find(|v| v["event"] == "totals")
            .expect("no totals line");
        totals["lost"].as_u64().unwrap()
    }
}

static SEQUENCE: OnceLock<Mutex<u32>> = OnceLock::new();

impl Tracer {
    /// Starts cow-trace with `args` (output to a file) and waits for its readiness line.
    pub fn start(args: &[&str]) -> Tracer {
        let n = {
            let mut n = SEQUENCE.get_or_init(|| Mutex::new(0)).lock().unwrap();
            *n += 1;
            *n
        };
        let output = scratch().join(format!("trace-{}-{n}.out", std::process::id()));
        // -o goes first: anything after `--` belongs to the traced command.
        let mut child = Command::new(cow_trace())
            .arg("-o")
            .arg(&output)
            .args(backend_args())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting cow-trace");
        let mut stdout = child.stdout.take().unwrap();
        let stdout = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stdout.read_to_string(&mut text);
            text
        });
        let stderr = child.stderr.take().unwrap();
        let (send, receive) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        let mut tracer = Tracer {
            child: ChildGuard::new(child),
            output,
            stderr: receive,
            stderr_lines: Vec::new(),
            stdout: Some(stdout),
        };
        tracer.wait_for_stderr("Tracing ");
        tracer
    }

    /// Waits for a stderr line containing `text`; panics with everything seen on timeout.
    pub fn wait_for_stderr(&mut self, text: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.stderr.recv_timeout(Duration::from_millis(100)) {
                Ok(line) => {
                    let found = line.contains(text);
                    self.stderr_lines.push(line);
                    if found {
                        return;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    panic!(
                        "cow-trace ended before printing {text:?}: {:?}",
                        self.stderr_lines
                    )
                }
            }
            assert!(
                Instant::now() < deadline,
                "no {text:?} from cow-trace within 30 s: {:?}",
                self.stderr_lines
            );
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGINT (as Ctrl-C would) and collects the results.
    pub fn stop(self) -> Finished {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        )
        .unwrap();
        self.wait()
    }

    /// Waits for cow-trace to end on its own (all traced processes exited, --duration).
    pub fn wait(mut self) -> Finished {
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("cow-trace did not end within 60 s: {:?}", self.stderr_lines);
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let mut stderr = self.stderr_lines.join("\n");
        while let Ok(line) = self.stderr.recv_timeout(Duration::from_millis(500)) {
            stderr.push('\n');
            stderr.push_str(&line);
        }
        let mut output = String::new();
        std::fs::File::open(&self.output)
            .and_then(|mut f| f.read_to_string(&mut output))
            .unwrap();
        let _ = std::fs::remove_file(&self.output);
        let command_stdout = self.stdout.take().unwrap().join().unwrap();
        Finished {
            status: status.code().unwrap_or(-1),
            output,
            stderr,
            command_stdout,
        }
    }
}

/// A running faulter workload, driven line by line.
pub struct Faulter {
    pub child: ChildGuard,
    stdin: ChildStdin,
    stdout: BufReader<std::process::ChildStdout>,
}

impl Faulter {
    pub fn start() -> Faulter {
        Faulter::spawn(Command::new(workload("faulter")))
    }

    /// Starts `command`, which reads its first line itself or runs the faulter at once.
    pub fn spawn(mut command: Command) -> Faulter {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let faulter = Faulter {
            child: ChildGuard::new(child),
            stdin,
            stdout,
        };
        wait_blocked_in_read(faulter.pid());
        faulter
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Runs one command and returns what it printed before "ok"; waits until it blocks again.
    pub fn run(&mut self, command: &str) -> Vec<String> {
        writeln!(self.stdin, "{command}").unwrap();
        self.stdin.flush().unwrap();
        let mut printed = Vec::new();
        loop {
            let mut line = String::new();
            assert!(
                self.stdout.read_line(&mut line).unwrap() > 0,
                "faulter died during {command:?}"
            );
            let line = line.trim_end().to_string();
            if line == "ok" {
                break;
            }
            assert_ne!(line, "unknown command", "{command:?}");
            printed.push(line);
        }
        wait_blocked_in_read(self.pid());
        printed
    }

    /// Sends a line without waiting (for `spin`, `exit`, or a wrapper's own line).
    pub fn send(&mut self, command: &str) {
        writeln!(self.stdin, "{command}").unwrap();
        self.stdin.flush().unwrap();
    }

    pub fn exit(mut self) {
        self.send("exit");
        self.child.wait().unwrap();
    }
}

pub fn hex(address: u64) -> String {
    format!("{address:#x}")
}

/// The frames of a JSON stack field (`stack` of a fault, `frames` of a summary's stack),
/// innermost first; none where the field is absent.
pub fn frames(value: &Value, field: &str) -> Vec<String> {
    value[field]
        .as_array()
        .map(|frames| {
            frames
                .iter()
                .map(|f| f.as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}
