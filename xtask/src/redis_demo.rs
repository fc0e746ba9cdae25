//! `cargo xtask redis-demo` (issue 7): what a Redis BGSAVE costs, page by page.
//!
//! A redis-server on a loopback port (huge pages off, files in a temporary directory) gets a
//! data set, cow-trace attaches to it, redis-benchmark overwrites keys, and BGSAVE forks the
//! snapshot child. Then cow-trace's account (the parent's copies while the child lived, its
//! reuses after, the child's own faults) is printed beside Redis's own figure, the child's
//! Private_Dirty (`rdb_last_cow_size`, the "Fork CoW for RDB" log line). The server and its
//! files go away on every way out, Ctrl-C included.
use std::{
    collections::HashSet,
    fs,
    io::{BufRead, BufReader, Read, Write},
    net::{Ipv4Addr, TcpListener, TcpStream},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};

use crate::{setup, util};

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
/// redis-benchmark runs this long before BGSAVE, so the snapshot starts under load.
const WARM_UP: Duration = Duration::from_millis(500);
const SAVE_TIMEOUT: Duration = Duration::from_secs(300);

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
    let plot = plot_path(&cow_trace)?;
    let tracer = Tracer::start(&cow_trace, server.pid(), &server.dir, plot.as_deref())?;
    let snapshot = snapshot_under_writes(&server, &mut conn, &args, keys)?;
    tracer.stop()?;
    let trace = Trace::read(&server.dir.join("trace.json"), server.pid(), snapshot.child)?;
    let redis = RedisFigures::read(&mut conn, &server)?;
    print_side_by_side(&snapshot, &trace, &redis);
    if let Some(plot) = plot {
        println!("\nPlot of the run: {}", plot.display());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Ctrl-C and SIGTERM: noted, so the waits below bail out and the guards clean up.

mod interrupt {
    use super::*;

    static INTERRUPTED: AtomicBool = AtomicBool::new(false);

    extern "C" fn note(_signal: libc::c_int) {
        INTERRUPTED.store(true, Ordering::SeqCst);
    }

    pub fn install() {
        for signal in [libc::SIGINT, libc::SIGTERM] {
            // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
            unsafe { libc::signal(signal, note as *const () as libc::sighandler_t) };
        }
    }

    pub fn check() -> anyhow::Result<()> {
        if INTERRUPTED.load(Ordering::SeqCst) {
            bail!("interrupted");
        }
        Ok(())
    }
}

/// Sleeps `duration`, in short steps so an interrupt is noticed.
fn pause(duration: Duration) -> anyhow::Result<()> {
    let end = Instant::now() + duration;
    while Instant::now() < end {
        interrupt::check()?;
        thread::sleep(Duration::from_millis(20).min(end.saturating_duration_since(Instant::now())));
    }
    Ok(())
}

/// Polls `done` until it holds, at most `timeout`.
fn wait_for(
    what: &str,
    timeout: Duration,
    mut done: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    // An interrupt first: it may also have ended what `done` looks at.
    while !(interrupt::check().and_then(|()| done())?) {
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Processes we start: stopped (signal, grace period, then SIGKILL) whatever happens

struct Process {
    child: Child,
    name: &'static str,
    exited: Option<ExitStatus>,
}

impl Process {
    fn spawn(command: &mut Command, name: &'static str) -> anyhow::Result<Process> {
        let child = command
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        Ok(Process {
            child,
            name,
            exited: None,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn has_exited(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        if self.exited.is_none() {
            self.exited = self
                .child
                .try_wait()
                .with_context(|| format!("waiting for {}", self.name))?;
        }
        Ok(self.exited)
    }

    /// Sends `signal`, waits up to `grace`, then kills.
    fn stop(&mut self, signal: i32, grace: Duration) -> anyhow::Result<ExitStatus> {
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

// ---------------------------------------------------------------------------------------------
// The server

/// redis-server on 127.0.0.1, its configuration, log and RDB file in a directory of its own;
/// stopped and removed on drop.
struct Server {
    process: Option<Process>,
    port: u16,
    dir: PathBuf,
}

impl Server {
    fn start(port: Option<u16>) -> anyhow::Result<Server> {
        let port = match port {
            Some(port) => port,
            None => free_port()?,
        };
        let dir = std::env::temp_dir().join(format!("cow-trace-redis-demo-{}", std::process::id()));
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        // From here on, drop removes the directory.
        let mut server = Server {
            process: None,
            port,
            dir,
        };
        let config = server.dir.join("redis.conf");
        fs::write(&config, config_text(port, &server.dir))
            .with_context(|| format!("writing {}", config.display()))?;
        let mut command = Command::new("redis-server");
        command.arg(&config).stdin(Stdio::null());
        // Huge pages off for this process whatever the system setting (Redis's own
        // disable-thp acts only when it is "always"): copy-on-write then works on 4 KiB pages.
        // The flag survives exec.
        // SAFETY: prctl is async-signal-safe.
        unsafe {
            command.pre_exec(|| match libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) {
                0 => Ok(()),
                _ => Err(std::io::Error::last_os_error()),
            });
        }
        server.process = Some(Process::spawn(&mut command, "redis-server")?);
        server.wait_until_up()?;
        println!(
            "redis-server {} (pid {}) on 127.0.0.1:{port}, files in {}",
            redis_version(),
            server.pid(),
            server.dir.display()
        );
        Ok(server)
    }

    fn pid(&self) -> u32 {
        self.process.as_ref().map_or(0, Process::pid)
    }

    fn wait_until_up(&mut self) -> anyhow::Result<()> {
        let port = self.port;
        let log = self.dir.join("redis.log");
        let process = self.process.as_mut().context("no redis-server")?;
        wait_for("redis-server to listen", Duration::from_secs(10), || {
            if let Some(status) = process.has_exited()? {
                let log = fs::read_to_string(&log).unwrap_or_default();
                bail!("redis-server exited ({status}):\n{log}");
            }
            // Redis itself must answer, not whatever else may listen there.
            let pong = Conn::connect(port).and_then(|mut conn| {
                conn.writer.set_read_timeout(Some(Duration::from_secs(1)))?;
                conn.command(&["PING"])
            });
            Ok(pong.is_ok_and(|reply| reply == "PONG"))
        })
    }

    /// The snapshot child, from /proc: the server forks nothing else here.
    fn children(&self) -> Vec<u32> {
        let pid = self.pid();
        fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|c| c.parse().ok())
            .collect()
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // A snapshot child still saving must not outlive a server that gets killed.
        for child in self.children() {
            // SAFETY: kill(2) has no memory-safety preconditions; the pid was the server's
            // child a moment ago.
            unsafe { libc::kill(child as i32, libc::SIGKILL) };
        }
        if let Some(mut process) = self.process.take() {
            let _ = process.stop(libc::SIGTERM, Duration::from_secs(10));
        }
        match fs::remove_dir_all(&self.dir) {
            Ok(()) => eprintln!(
                "redis-demo: redis-server stopped, {} removed",
                self.dir.display()
            ),
            Err(e) => eprintln!("redis-demo: removing {}: {e}", self.dir.display()),
        }
    }
}

fn config_text(port: u16, dir: &Path) -> String {
    include_str!("../../cow-trace/tests/fixtures-redis.conf")
        .replace("{port}", &port.to_string())
        .replace("{dir}", &dir.display().to_string())
}

fn free_port() -> anyhow::Result<u16> {
    let listener =
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("finding a free loopback port")?;
    Ok(listener.local_addr()?.port())
}

fn redis_version() -> String {
    let text = util::output(Command::new("redis-server").arg("--version")).unwrap_or_default();
    text.split_whitespace()
        .find_map(|word| word.strip_prefix("v="))
        .unwrap_or("?")
        .to_string()
}

/// Says what huge-page state the server runs with, and refuses to go on if it could use them.
fn report_thp(pid: u32) -> anyhow::Result<()> {
    let system = fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
        .ok()
        .and_then(|text| Some(text.split_once('[')?.1.split_once(']')?.0.to_string()))
        .unwrap_or_else(|| "not available".into());
    let status = fs::read_to_string(format!("/proc/{pid}/status")).context("reading status")?;
    let enabled = status
        .lines()
        .find_map(|l| l.strip_prefix("THP_enabled:"))
        .map(str::trim);
    ensure!(
        enabled == Some("0"),
        "redis-server may use transparent huge pages (THP_enabled: {enabled:?})"
    );
    println!(
        "Transparent huge pages: system setting \"{system}\"; off for redis-server \
         (PR_SET_THP_DISABLE, /proc/{pid}/status THP_enabled: 0), so copy-on-write copies 4 KiB pages"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Talking to it

/// A minimal RESP client: SET, CONFIG, BGSAVE and INFO, with a read timeout.
struct Conn {
    writer: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Conn {
    fn connect(port: u16) -> anyhow::Result<Conn> {
        let stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port))
            .with_context(|| format!("connecting to redis on port {port}"))?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(Conn {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
        })
    }

    fn command(&mut self, args: &[&str]) -> anyhow::Result<String> {
        self.writer.write_all(&encode(args))?;
        self.reply()
            .with_context(|| format!("redis command {}", args[0]))
    }

    /// One reply: simple string, integer or bulk string.
    fn reply(&mut self) -> anyhow::Result<String> {
        let mut line = String::new();
        self.reader
            .read_line(&mut line)
            .context("reading from redis")?;
        let line = line.trim_end();
        match line.split_at_checked(1) {
            Some(("+" | ":", rest)) => Ok(rest.to_string()),
            Some(("$", len)) => {
                let len: usize = len.parse().context("bulk length")?;
                let mut body = vec![0; len + 2];
                self.reader.read_exact(&mut body)?;
                body.truncate(len);
                Ok(String::from_utf8_lossy(&body).into_owned())
            }
            _ => bail!("redis replied {line:?}"),
        }
    }

    fn info_field(&mut self, section: &str, field: &str) -> anyhow::Result<String> {
        let info = self.command(&["INFO", section])?;
        info.lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .map(str::to_string)
            .with_context(|| format!("no {field} in INFO {section}"))
    }

    fn info_number(&mut self, section: &str, field: &str) -> anyhow::Result<u64> {
        let value = self.info_field(section, field)?;
        value.parse().with_context(|| format!("{field}: {value:?}"))
    }
}

fn encode(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n{arg}\r\n", arg.len()).as_bytes());
    }
    out
}

/// SETs size/value-size keys, named as redis-benchmark names them (key:000000000042), so that
/// its SETs overwrite them. Returns the number of keys.
fn load(conn: &mut Conn, args: &Args) -> anyhow::Result<u64> {
    let keys = (args.size_mib << 20) / args.value_size;
    let started = Instant::now();
    let value = "v".repeat(args.value_size as usize);
    let mut next = 0;
    while next < keys {
        interrupt::check()?;
        let batch = (next..keys.min(next + 1000)).collect::<Vec<_>>();
        let mut out = Vec::new();
        for i in &batch {
            out.extend(encode(&["SET", &format!("key:{i:012}"), &value]));
        }
        conn.writer.write_all(&out).context("loading keys")?;
        for _ in &batch {
            ensure!(conn.reply()? == "OK", "SET failed while loading");
        }
        next += batch.len() as u64;
    }
    let used = conn.info_number("memory", "used_memory")?;
    println!(
        "Loaded {keys} keys of {} bytes in {:.1} s: used_memory {}",
        args.value_size,
        started.elapsed().as_secs_f64(),
        human(used)
    );
    Ok(keys)
}

// ---------------------------------------------------------------------------------------------
// The tracer

/// cow-trace -x REDIS --json, its stderr relayed (the readiness line, the table at the end).
struct Tracer {
    process: Process,
    relay: thread::JoinHandle<()>,
}

impl Tracer {
    fn start(
        cow_trace: &Path,
        pid: u32,
        dir: &Path,
        plot: Option<&Path>,
    ) -> anyhow::Result<Tracer> {
        let mut command = Command::new(cow_trace);
        command
            .args(["-x", &pid.to_string(), "--json", "-o"])
            .arg(dir.join("trace.json"))
            .stdin(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(plot) = plot {
            command.arg("--plot").arg(plot);
        }
        let mut process = Process::spawn(&mut command, "cow-trace")?;
        let stderr = process.child.stderr.take().context("cow-trace stderr")?;
        let (ready, is_ready) = mpsc::channel();
        let relay = thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("{line}");
                if line.starts_with("Tracing ") {
                    let _ = ready.send(());
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        while is_ready.recv_timeout(Duration::from_millis(100)).is_err() {
            interrupt::check()?;
            if process.has_exited()?.is_some() || Instant::now() > deadline {
                bail!("cow-trace did not attach (see its message above)");
            }
        }
        Ok(Tracer { process, relay })
    }

    /// SIGINT, as Ctrl-C: cow-trace drains, writes its summary and ends.
    fn stop(mut self) -> anyhow::Result<()> {
        let status = self.process.stop(libc::SIGINT, Duration::from_secs(60))?;
        let _ = self.relay.join();
        ensure!(status.success(), "cow-trace failed: {status}");
        Ok(())
    }
}

/// Where to draw the run (target/xtask, made if missing), if this cow-trace can.
fn plot_path(cow_trace: &Path) -> anyhow::Result<Option<PathBuf>> {
    let help = util::output(Command::new(cow_trace).arg("--help")).unwrap_or_default();
    if !help.contains("--plot") {
        return Ok(None);
    }
    let dir = util::root().join("target/xtask");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(Some(dir.join("redis-demo.svg")))
}

// ---------------------------------------------------------------------------------------------
// The snapshot

struct Snapshot {
    child: u32,
    saved_in: Duration,
    sets: u64,
    writing: Duration,
}

/// redis-benchmark overwrites keys; BGSAVE forks the child; writes go on until `after_ms`
/// past the child's exit.
fn snapshot_under_writes(
    server: &Server,
    conn: &mut Conn,
    args: &Args,
    keys: u64,
) -> anyhow::Result<Snapshot> {
    let sets_before = set_calls(conn)?;
    let writing = Instant::now();
    let mut bench = start_benchmark(server.port, keys, args)?;
    pause(WARM_UP)?;
    let started = Instant::now();
    let reply = conn.command(&["BGSAVE"])?;
    ensure!(
        reply.starts_with("Background saving started"),
        "BGSAVE: {reply}"
    );
    let mut child = 0;
    wait_for("the snapshot child", Duration::from_secs(5), || {
        child = server.children().first().copied().unwrap_or(0);
        Ok(child != 0)
    })?;
    println!("BGSAVE: snapshot child {child} forked while redis-benchmark overwrites keys");
    wait_for("BGSAVE to finish", SAVE_TIMEOUT, || {
        if let Some(status) = bench.has_exited()? {
            bail!("redis-benchmark ended early: {status}");
        }
        Ok(conn.info_field("persistence", "rdb_bgsave_in_progress")? == "0")
    })?;
    let saved_in = started.elapsed();
    ensure!(
        conn.info_field("persistence", "rdb_last_bgsave_status")? == "ok",
        "BGSAVE failed:\n{}",
        server.log()
    );
    println!(
        "BGSAVE done in {:.2} s; writes go on for {} ms more",
        saved_in.as_secs_f64(),
        args.after_ms
    );
    pause(Duration::from_millis(args.after_ms))?;
    bench.stop(libc::SIGINT, Duration::from_secs(5))?;
    let writing = writing.elapsed();
    let sets = set_calls(conn)? - sets_before;
    Ok(Snapshot {
        child,
        saved_in,
        sets,
        writing,
    })
}

/// SET commands the server has run: "cmdstat_set:calls=123,usec=...".
fn set_calls(conn: &mut Conn) -> anyhow::Result<u64> {
    let stats = conn.info_field("commandstats", "cmdstat_set")?;
    let calls = stats
        .strip_prefix("calls=")
        .and_then(|rest| rest.split(',').next())
        .with_context(|| format!("cmdstat_set: {stats:?}"))?;
    calls
        .parse()
        .with_context(|| format!("cmdstat_set: {stats:?}"))
}

/// SETs of random loaded keys until stopped.
fn start_benchmark(port: u16, keys: u64, args: &Args) -> anyhow::Result<Process> {
    let mut command = Command::new("redis-benchmark");
    command
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-t",
            "set",
            "-q",
        ])
        .args([
            "-c",
            &args.clients.to_string(),
            "-P",
            &args.pipeline.to_string(),
        ])
        .args(["-d", &args.value_size.to_string()])
        .args(["-r", &keys.to_string(), "-n", "1000000000"])
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    Process::spawn(&mut command, "redis-benchmark")
}

// ---------------------------------------------------------------------------------------------
// What cow-trace saw, from its JSON lines

/// Fault counts of one process over one phase.
#[derive(Default, Debug)]
struct Tally {
    faults: u64,
    /// Write-protect faults: copy-on-write breaks.
    cow: u64,
    /// Write-protect faults that copied the page, as cow-trace reports them.
    copied: u64,
    /// Of those, copies of pages the parent faulted in after the fork: a read maps the shared
    /// zero page, the first write then allocates. Never shared with the child.
    zero_fills: u64,
    reused: u64,
    /// Writes to pages not there before: new pages.
    new_pages: u64,
}

impl Tally {
    fn add(&mut self, fault: &Fault, zero_fill: bool) {
        self.faults += 1;
        match (fault.cow, fault.copied) {
            (Some(true), Some(true)) => {
                self.copied += 1;
                self.zero_fills += u64::from(zero_fill);
            }
            (Some(true), Some(false)) => self.reused += 1,
            (Some(false), _) if fault.write => self.new_pages += 1,
            _ => {}
        }
        self.cow += u64::from(fault.cow == Some(true));
    }

    /// Copies of pages shared with the child.
    fn shared_copies(&self) -> u64 {
        self.copied - self.zero_fills
    }
}

struct Fault {
    pid: u32,
    ts_ns: u64,
    page: u64,
    window: Option<u32>,
    write: bool,
    cow: Option<bool>,
    copied: Option<bool>,
}

impl Fault {
    fn parse(line: &str) -> Option<Fault> {
        let address = raw(line, "address")?.trim_start_matches("0x");
        Some(Fault {
            pid: number(line, "pid")? as u32,
            ts_ns: number(line, "ts_ns")?,
            page: u64::from_str_radix(address, 16).ok()? / PAGE,
            window: number(line, "window").map(|w| w as u32),
            write: raw(line, "access") == Some("w"),
            cow: flag(line, "cow"),
            copied: flag(line, "copied"),
        })
    }
}

/// The parent's faults before the fork, during the child's life and after its exit, and the
/// child's own.
#[derive(Default)]
struct Trace {
    parent: Phases,
    child: Tally,
    /// copied in cow-trace's own window line, to check the tally against.
    window_copied: Option<u64>,
    lost: u64,
}

#[derive(Default, Debug)]
struct Phases {
    before: Tally,
    during: Tally,
    after: Tally,
}

impl Trace {
    fn read(path: &Path, parent: u32, child: u32) -> anyhow::Result<Trace> {
        let file = fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
        let mut trace = Trace::default();
        let mut fork_ns = None;
        let mut parent_faults = Vec::new();
        for line in BufReader::new(file).lines() {
            let line = &line.with_context(|| format!("reading {}", path.display()))?;
            match raw(line, "event") {
                Some("fault") => match Fault::parse(line) {
                    Some(f) if f.pid == child => trace.child.add(&f, false),
                    Some(f) if f.pid == parent => parent_faults.push(f),
                    _ => {}
                },
                Some("fork") if number(line, "child") == Some(child.into()) => {
                    fork_ns = number(line, "ts_ns");
                }
                Some("window") if number(line, "child") == Some(child.into()) => {
                    trace.window_copied = number(line, "copied");
                }
                Some("totals") => trace.lost = number(line, "lost").unwrap_or(0),
                _ => {}
            }
        }
        let fork_ns = fork_ns.context("cow-trace saw no fork of the snapshot child")?;
        trace.parent = phases(parent_faults, child, fork_ns);
        Ok(trace)
    }
}

/// Splits the parent's faults by the child's window (outside it, by the clock against the
/// fork), telling zero fills from copies of shared pages by each page's history.
fn phases(mut faults: Vec<Fault>, child: u32, fork_ns: u64) -> Phases {
    // The ring buffer is ordered per CPU; a page's history needs time order.
    faults.sort_by_key(|f| f.ts_ns);
    let mut phases = Phases::default();
    let mut faulted_in = HashSet::new();
    for fault in &faults {
        let phase = if fault.window == Some(child) {
            &mut phases.during
        } else if fault.ts_ns < fork_ns {
            &mut phases.before
        } else {
            &mut phases.after
        };
        let after_fork = fault.window == Some(child) || fault.ts_ns >= fork_ns;
        if after_fork && fault.cow == Some(false) {
            faulted_in.insert(fault.page);
        }
        phase.add(fault, faulted_in.contains(&fault.page));
    }
    phases
}

/// The text of `"key":VALUE` in one of cow-trace's flat JSON lines (a string without quotes).
fn raw<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let start = line.find(&format!("\"{key}\":"))? + key.len() + 3;
    let rest = &line[start..];
    match rest.strip_prefix('"') {
        Some(string) => string.split('"').next(),
        None => rest.split([',', '}']).next(),
    }
}

fn number(line: &str, key: &str) -> Option<u64> {
    raw(line, key)?.parse().ok()
}

fn flag(line: &str, key: &str) -> Option<bool> {
    raw(line, key)?.parse().ok()
}

// ---------------------------------------------------------------------------------------------
// Redis's own figures, and the comparison

struct RedisFigures {
    cow_bytes: u64,
    log_line: String,
}

impl RedisFigures {
    fn read(conn: &mut Conn, server: &Server) -> anyhow::Result<RedisFigures> {
        let cow_bytes = conn.info_number("persistence", "rdb_last_cow_size")?;
        let log = server.log();
        let log_line = log
            .lines()
            .find(|l| l.contains("Fork CoW for RDB"))
            .and_then(|l| l.split_once("* "))
            .map_or("(no \"Fork CoW\" line in the log)", |(_, m)| m)
            .to_string();
        Ok(RedisFigures {
            cow_bytes,
            log_line,
        })
    }
}

fn print_side_by_side(snapshot: &Snapshot, trace: &Trace, redis: &RedisFigures) {
    let child = snapshot.child;
    println!(
        "\nredis-benchmark: {} SETs in {:.1} s, of which the snapshot took {:.2} s\n",
        snapshot.sets,
        snapshot.writing.as_secs_f64(),
        snapshot.saved_in.as_secs_f64()
    );
    println!(
        "{:<36} {:>8} {:>8} {:>8} {:>9} {:>8} {:>6} {:>10}",
        "cow-trace", "faults", "COW", "copied", "zero-fill", "reused", "new", "copied"
    );
    let row = |label: &str, t: &Tally, zero_fills: &str| {
        println!(
            "{label:<36} {:>8} {:>8} {:>8} {zero_fills:>9} {:>8} {:>6} {:>10}",
            t.faults,
            t.cow,
            t.copied,
            t.reused,
            t.new_pages,
            human(t.copied * PAGE)
        );
    };
    let parent = &trace.parent;
    // Before the fork there is no history to tell zero fills by.
    row("parent, before the fork", &parent.before, "-");
    let during = parent.during.zero_fills.to_string();
    row(
        &format!("parent, while child {child} lived"),
        &parent.during,
        &during,
    );
    let after = parent.after.zero_fills.to_string();
    row(
        &format!("parent, after child {child} exited"),
        &parent.after,
        &after,
    );
    row(
        &format!("child {child} (the snapshot) itself"),
        &trace.child,
        "-",
    );
    println!(
        "(COW: write-protect faults; copied/reused: whether the kernel copied the page; zero-fill:\n\
         \x20copies of fresh memory the parent read, then wrote, never shared with the child;\n\
         \x20new: writes to pages not there yet)"
    );
    check_trace(trace);
    print_redis(trace, redis);
    print_after(&parent.after);
}

/// Things that would make the figures below wrong, said out loud.
fn check_trace(trace: &Trace) {
    if trace.lost > 0 {
        println!(
            "WARNING: cow-trace lost {} events: counts are low",
            trace.lost
        );
    }
    if trace.window_copied != Some(trace.parent.during.copied) {
        println!(
            "WARNING: cow-trace's own window line says {:?} pages copied, its faults {}",
            trace.window_copied, trace.parent.during.copied
        );
    }
}

fn print_redis(trace: &Trace, redis: &RedisFigures) {
    let redis_pages = redis.cow_bytes / PAGE;
    let during = &trace.parent.during;
    let child_own = trace.child.copied + trace.child.new_pages;
    let account = during.shared_copies() + child_own;
    println!(
        "\nRedis's own figures\n\
         \x20 INFO persistence rdb_last_cow_size: {} bytes ({}, {redis_pages} pages)\n\
         \x20 log: {}\n",
        redis.cow_bytes,
        human(redis.cow_bytes),
        redis.log_line
    );
    println!(
        "Redis sums the child's Private_Dirty (/proc/self/smaps) once, just before the child\n\
         exits: the pages only the child still maps. Each page the parent copied is one of them,\n\
         and so is each page the child copied or wrote new. In pages:\n\
         \x20 {:>9}  copied by the parent while the child lived ({})\n\
         \x20 {:>9}  of them zero-page fills, never shared\n\
         \x20 {:>9}  copied or written new by the child itself\n\
         \x20 {:>9}  = cow-trace's account of the child's Private_Dirty ({})\n\
         \x20 {:>9}  Redis's rdb_last_cow_size / 4096: {:+.2}% from cow-trace's account\n\n\
         Redis walks the child's memory for that sum (milliseconds, for a large process) while\n\
         the parent goes on writing: copies of pages the walk has passed, and those made after\n\
         it, are in cow-trace's account only. (The integration test cow-trace/tests/redis.rs\n\
         holds the writes back until Redis has sampled: then the two agree to the page.)",
        during.copied,
        human(during.copied * PAGE),
        format!("-{}", during.zero_fills),
        format!("+{child_own}"),
        account,
        human(account * PAGE),
        redis_pages,
        percent(redis_pages, account),
    );
}

fn print_after(after: &Tally) {
    let late = after.shared_copies();
    if late > 0 {
        println!(
            "\nAfter the exit, {late} copies ({}) of pages the child still held, more than a\n\
             second after its exit event (cow-trace counts copies in the window for a second after\n\
             it, while the kernel releases the child's memory).",
            human(late * PAGE)
        );
    }
    println!(
        "After the exit the parent's {} copy-on-write faults that reused the page cost no memory:\n\
         the parent is the page's last user, so the kernel keeps it.",
        after.reused
    );
}

fn percent(value: u64, reference: u64) -> f64 {
    match reference {
        0 => 0.0,
        _ => (value as f64 - reference as f64) * 100.0 / reference as f64,
    }
}

/// 1536 -> "1.5 KiB".
fn human(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAULT: &str = r#"{"v":1,"event":"fault","comm":"a,\"pid\":9","backend":"tracepoint","time":"t","ts_ns":5,"pid":7,"tid":7,"address":"0x7f0000001010","ip":"0x1","access":"w","type":"MINOR","cow":true,"copied":false,"window":8,"kernel_mode":false,"error_code":7,"latency_ns":null}"#;

    #[test]
    fn fields_of_a_json_line() {
        assert_eq!(raw(FAULT, "event"), Some("fault"));
        assert_eq!(number(FAULT, "pid"), Some(7));
        assert_eq!(flag(FAULT, "copied"), Some(false));
        assert_eq!(number(FAULT, "latency_ns"), None);
        let fault = Fault::parse(FAULT).unwrap();
        assert_eq!((fault.page, fault.window), (0x7f0000001, Some(8)));
        assert!(fault.write && fault.cow == Some(true));
    }

    #[test]
    fn zero_fills_are_told_from_copies_of_shared_pages() {
        let fault = |ts_ns, page, window, cow, copied| Fault {
            pid: 1,
            ts_ns,
            page,
            window,
            write: true,
            cow: Some(cow),
            copied: Some(copied),
        };
        let faults = vec![
            // Page 10: read in after the fork, then written: a zero fill (listed out of order).
            fault(12, 10, Some(2), true, true),
            fault(11, 10, Some(2), false, false),
            // Page 11: shared at the fork, copied in the window and after the exit.
            fault(13, 11, Some(2), true, true),
            fault(30, 12, None, true, true),
            // Page 13: read in before the fork: shared, so a later copy is a real one.
            fault(5, 13, None, false, false),
            fault(14, 13, Some(2), true, true),
        ];
        let phases = phases(faults, 2, 10);
        assert_eq!((phases.before.faults, phases.before.copied), (1, 0));
        assert_eq!((phases.during.copied, phases.during.zero_fills), (3, 1));
        assert_eq!((phases.after.copied, phases.after.zero_fills), (1, 0));
    }

    #[test]
    fn sizes() {
        assert_eq!(human(512), "512 B");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(3 << 20), "3.0 MiB");
    }
}
