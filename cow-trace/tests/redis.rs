//! Redis BGSAVE, traced: cow-trace's count of pages the parent copied while the snapshot child
//! lived must agree with Redis's own `rdb_last_cow_size`. Needs root (CI runs as root) and
//! redis-server and redis-benchmark (`cargo xtask setup` installs them).
//!
//! What Redis measures: just before the snapshot child exits, it sums `Private_Dirty` over
//! `/proc/self/smaps` (childinfo.c, `zmalloc_get_private_dirty`). A page is private to the child
//! when the child is its only mapper, which after fork happens when
//! - the parent copied the page on write (the parent moves to the copy; the original is left
//!   to the child alone): the parent's copies, which cow-trace counts in the window line;
//! - the child copied the page itself, or wrote a page it did not have yet: the child's own
//!   new pages, which cow-trace also sees, as the child's faults.
//!
//! So rdb_last_cow_size = page size x (parent's copies of shared pages + child's new pages), up to
//! a few pages, and the test checks exactly that, term by term. Three corrections:
//! - cow-trace counts a write to a page the parent had only read (mapped to the shared zero
//!   page) as a copy, yet that page was never shared with the child: fresh memory the parent's
//!   allocator hands out during the snapshot, read, then written. None in this test's runs,
//!   155 in one where the data had been loaded with `redis-cli --pipe`. They are told apart in
//!   the stream: a not-present fault on the page earlier in the window.
//! - cow-trace counts a first write to a page of a private file mapping as a copy (of the
//!   file's page), yet the child's mapping of that page is the page cache's, not the parent's:
//!   nothing of it becomes the child's. The window line counts them apart (`file_copies`).
//!   In the child such a copy is one of its own new pages, counted once.
//! - Redis samples once, before the child exits; parent copies after that sample are counted by
//!   cow-trace only. The child is held (SIGSTOP, as a slow disk would hold it) while the writes
//!   happen, so every copy precedes the sample.
//!
//! What stays unexplained, and is the tolerance: pages the child releases before its sample
//! (at fork it drops the buffers of connected clients: one connection here), shared pages the
//! parent's allocator hands back to the kernel (a release, not a fault, so invisible to a
//! fault tracer) and the child's faults after its sample, on its way out: each a handful of
//! pages. 64 pages (256 KiB of 4 KiB pages) covers them with room; the copies themselves are thousands.
mod common;

use std::{
    collections::{HashMap, HashSet},
    io::{BufRead, BufReader, Read, Write},
    net::{Ipv4Addr, TcpListener, TcpStream},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::*;
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use serde_json::Value;

/// 24 MiB of values. Values stay below a page: the child releases values of a page or more
/// once saved (Redis 7's dismissObject), which would take pages out of its Private_Dirty.
const KEYS: u64 = 24 * 1024;
const VALUE_SIZE: usize = 1000;
/// Overwrites of random keys during the snapshot: thousands of pages copied, yet only about
/// half of them, so the two counts must agree on which pages, not merely on "all of them".
const WRITES: u64 = 4_000;
/// Residual allowed between Redis's figure and cow-trace's terms (see the module comment).
/// Measured here: 0 pages in each of 25 runs, some under full CPU load (kernel 6.18, Redis
/// 7.0.15).
const TOLERANCE_PAGES: i64 = 64;

#[test]
fn redis_bgsave_copies_match_rdb_last_cow_size() {
    if !require_root("redis_bgsave_copies_match_rdb_last_cow_size") {
        return;
    }
    let (server, benchmark) = redis_programs();
    let redis = RedisServer::start(&server);
    assert_thp_disabled(redis.pid());
    let mut conn = redis.connect();
    load(&mut conn, KEYS, VALUE_SIZE);
    // A cushion (20 us a key: a second or two), so the child is still saving when it is held.
    conn.command(&["CONFIG", "SET", "rdb-key-save-delay", "20"]);

    let (done, child) = traced_snapshot(&redis, &mut conn, &benchmark, &["--json"]);

    let redis_bytes: u64 = conn
        .info_field("persistence", "rdb_last_cow_size")
        .parse()
        .unwrap();
    check_log_line(&redis.log(), redis_bytes);
    let terms = Terms::from_trace(&done.json(), redis.pid(), child);
    terms.print(redis_bytes);
    terms.check(redis_bytes);
}

/// Which code copied the pages: the server's copies during a BGSAVE under writes unwind, with
/// the binaries' own .eh_frame (Debian builds redis-server, libc and jemalloc without frame
/// pointers, and no debug symbols are installed), past libc and the allocator into Redis's own
/// code and up to its event loop: at least 90% of them reach `aeMain` and then `main` of
/// redis-server. Debian's redis-server exports its functions in its dynamic symbol table
/// (`nm -D` lists aeMain, main, processCommand...), which names them without debug symbols.
/// (Its path is the file the kernel mapped: redis-server may be a link to redis-check-rdb.)
#[test]
fn redis_copy_stacks_unwind_to_its_event_loop() {
    if !require_root("redis_copy_stacks_unwind_to_its_event_loop") {
        return;
    }
    let (server, benchmark) = redis_programs();
    let binary = std::fs::canonicalize(&server).unwrap();
    let redis = RedisServer::start(&server);
    assert_thp_disabled(redis.pid());
    let mut conn = redis.connect();
    load(&mut conn, KEYS, VALUE_SIZE);
    conn.command(&["CONFIG", "SET", "rdb-key-save-delay", "20"]);

    let (done, child) = traced_snapshot(&redis, &mut conn, &benchmark, &["--json", "--stack"]);

    let module = format!("({})", binary.display());
    let in_redis = |frame: &str, function: &str| {
        frame.starts_with(&format!("{function}+0x")) && frame.ends_with(&module)
    };
    let copies: Vec<Vec<String>> = done
        .faults_of(redis.pid())
        .into_iter()
        .filter(|f| f["window"] == child && f["cow_outcome"] == "copied")
        .map(|f| frames(&f, "stack"))
        .collect();
    assert!(
        copies.len() >= 1000,
        "{} copies in the window",
        copies.len()
    );
    let reaching = copies
        .iter()
        .filter(|stack| {
            let Some(event_loop) = stack.iter().position(|f| in_redis(f, "aeMain")) else {
                return false;
            };
            // Redis's own code below the event loop, and main above it.
            let own_code = stack[..event_loop].iter().any(|f| f.ends_with(&module));
            let main = stack[event_loop..].iter().any(|f| in_redis(f, "main"));
            own_code && main
        })
        .count();
    let mut shapes: HashMap<&[String], usize> = HashMap::new();
    for stack in &copies {
        *shapes.entry(&stack[..stack.len().min(6)]).or_default() += 1;
    }
    let mut shapes: Vec<_> = shapes.into_iter().collect();
    shapes.sort_by_key(|shape| std::cmp::Reverse(shape.1));
    eprintln!(
        "{reaching} of {} copies reach aeMain and main; the most common stacks: {:#?}",
        copies.len(),
        &shapes[..shapes.len().min(5)]
    );
    assert!(
        reaching * 10 >= copies.len() * 9,
        "{reaching} of {} copies' stacks reach aeMain and main",
        copies.len()
    );
}

/// redis-server and redis-benchmark, or a failure saying how to install them: a missing tool
/// must not pass as a skip.
/// A BGSAVE under cow-trace (`-x SERVER` and `args`) while `WRITES` overwrites happen, the
/// snapshot child held meanwhile (so every copy falls in its window and precedes Redis's
/// sample); returns what cow-trace printed, checked complete, and the child's pid.
fn traced_snapshot(
    redis: &RedisServer,
    conn: &mut Conn,
    benchmark: &Path,
    args: &[&str],
) -> (Finished, u32) {
    let pid = redis.pid().to_string();
    let mut tracer_args = vec!["-x", &pid];
    tracer_args.extend_from_slice(args);
    let tracer = Tracer::start(&tracer_args);
    assert_eq!(conn.command(&["BGSAVE"]), "Background saving started");
    let child = redis.wait_for_child();
    kill(Pid::from_raw(child as i32), Signal::SIGSTOP).unwrap();
    wait_until_stopped(child);
    overwrite(benchmark, redis.port, WRITES);
    kill(Pid::from_raw(child as i32), Signal::SIGCONT).unwrap();
    wait_for_save(conn);
    let done = tracer.stop();
    assert_eq!(done.status, 0, "{}", done.stderr);
    assert_eq!(done.lost(), 0, "cow-trace lost events: counts incomplete");
    (done, child)
}

fn redis_programs() -> (PathBuf, PathBuf) {
    let find = |name: &str| {
        in_path(name).unwrap_or_else(|| {
            panic!("{name} is not installed: run `cargo xtask setup` (installs redis-server and redis-tools)")
        })
    };
    (find("redis-server"), find("redis-benchmark"))
}

fn in_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
}

// ---------------------------------------------------------------------------------------------
// The server

/// A redis-server on a free loopback port, its files in a scratch directory; killed and
/// removed on drop, whatever the test's outcome.
struct RedisServer {
    child: ChildGuard,
    port: u16,
    dir: PathBuf,
}

impl RedisServer {
    fn start(program: &Path) -> RedisServer {
        let port = free_port();
        let dir = scratch().join(format!("redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("redis.conf");
        std::fs::write(&config, config_text(port, &dir)).unwrap();
        let mut command = Command::new(program);
        command
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        // No transparent huge pages, whatever the system setting: copy-on-write then works on
        // base pages, as both sides count. Inherited across exec.
        // SAFETY: prctl is async-signal-safe.
        unsafe {
            command
                .pre_exec(|| nix::sys::prctl::set_thp_disable(true).map_err(std::io::Error::from));
        }
        let child = command.spawn().expect("starting redis-server");
        let server = RedisServer {
            child: ChildGuard::new(child),
            port,
            dir,
        };
        server.wait_until_up();
        server
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn wait_until_up(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not listen on port {} within 10 s: {}",
                self.port,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn connect(&self) -> Conn {
        Conn::new(self.port)
    }

    /// The snapshot child's pid, from /proc (the server has no other children).
    fn wait_for_child(&self) -> u32 {
        let pid = self.pid();
        let children = format!("/proc/{pid}/task/{pid}/children");
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let text = std::fs::read_to_string(&children).unwrap_or_default();
            if let Some(child) = text.split_whitespace().next() {
                return child.parse().unwrap();
            }
            assert!(Instant::now() < deadline, "BGSAVE forked no child");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        // A held snapshot child must not outlive the test either.
        let pid = self.pid();
        if let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")) {
            for child in text
                .split_whitespace()
                .filter_map(|c| c.parse::<i32>().ok())
            {
                let _ = kill(Pid::from_raw(child), Signal::SIGKILL);
            }
        }
        self.child.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Huge pages would make one fault copy 2 MiB, which Redis counts but a base-page model does not.
fn assert_thp_disabled(pid: u32) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let enabled = status
        .lines()
        .find_map(|l| l.strip_prefix("THP_enabled:"))
        .map(str::trim);
    assert_eq!(enabled, Some("0"), "redis-server {pid} may use huge pages");
}

fn config_text(port: u16, dir: &Path) -> String {
    include_str!("fixtures-redis.conf")
        .replace("{port}", &port.to_string())
        .replace("{dir}", &dir.display().to_string())
}

/// A loopback port nobody listens on now.
fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    listener.local_addr().unwrap().port()
}

// ---------------------------------------------------------------------------------------------
// Talking to it

/// A minimal RESP client: enough for SET, CONFIG, BGSAVE and INFO.
struct Conn {
    writer: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Conn {
    fn new(port: u16) -> Conn {
        let stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        Conn {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
        }
    }

    fn command(&mut self, args: &[&str]) -> String {
        self.writer.write_all(&encode(args)).unwrap();
        self.reply()
    }

    /// One reply: simple string, integer or bulk string; an error reply fails the test.
    fn reply(&mut self) -> String {
        let mut line = String::new();
        self.reader
            .read_line(&mut line)
            .expect("reading from redis");
        let line = line.trim_end();
        match line.split_at(1) {
            ("+" | ":", rest) => rest.to_string(),
            ("$", len) => {
                let mut body = vec![0; len.parse::<usize>().unwrap() + 2];
                self.reader.read_exact(&mut body).unwrap();
                body.truncate(body.len() - 2);
                String::from_utf8(body).unwrap()
            }
            _ => panic!("redis replied {line:?}"),
        }
    }

    /// A field of an INFO section.
    fn info_field(&mut self, section: &str, field: &str) -> String {
        let info = self.command(&["INFO", section]);
        info.lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .unwrap_or_else(|| panic!("no {field} in INFO {section}"))
            .to_string()
    }
}

fn encode(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n{arg}\r\n", arg.len()).as_bytes());
    }
    out
}

/// SETs `keys` keys named as redis-benchmark names them (key:000000000042), pipelined.
fn load(conn: &mut Conn, keys: u64, value_size: usize) {
    let value = "v".repeat(value_size);
    for batch in (0..keys).collect::<Vec<_>>().chunks(KEYS as usize) {
        let mut out = Vec::new();
        for i in batch {
            out.extend(encode(&["SET", &format!("key:{i:012}"), &value]));
        }
        conn.writer.write_all(&out).unwrap();
        for _ in batch {
            assert_eq!(conn.reply(), "OK");
        }
    }
}

/// redis-benchmark overwrites random loaded keys, `writes` times; bounded.
fn overwrite(benchmark: &Path, port: u16, writes: u64) {
    // Killed on the way out if it overruns (the panic below).
    let mut bench = ChildGuard::new(
        Command::new(benchmark)
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-t",
                "set",
                "-q",
            ])
            .args(["-c", "4", "-P", "8", "-d", &VALUE_SIZE.to_string()])
            .args(["-r", &KEYS.to_string(), "-n", &writes.to_string()])
            .stdout(Stdio::null())
            .spawn()
            .expect("starting redis-benchmark"),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = bench.try_wait().unwrap() {
            assert!(status.success(), "redis-benchmark: {status}");
            return;
        }
        if Instant::now() > deadline {
            panic!("redis-benchmark did not finish {writes} writes within 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits for the held child to show as stopped ("T"); a child that already exited fails.
fn wait_until_stopped(child: u32) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default();
        let state = stat.rfind(')').and_then(|i| stat[i + 2..].chars().next());
        match state {
            Some('T') => return,
            Some('R' | 'S' | 'D') => {}
            _ => panic!("the snapshot child {child} ended before it could be held: {stat:?}"),
        }
        assert!(Instant::now() < deadline, "child {child} never stopped");
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn wait_for_save(conn: &mut Conn) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while conn.info_field("persistence", "rdb_bgsave_in_progress") != "0" {
        assert!(Instant::now() < deadline, "BGSAVE still running after 30 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        conn.info_field("persistence", "rdb_last_bgsave_status"),
        "ok"
    );
}

/// The child logs the same sample, in whole MB: "Fork CoW for RDB: current 34 MB, ...".
fn check_log_line(log: &str, redis_bytes: u64) {
    let line = log
        .lines()
        .find(|l| l.contains("Fork CoW for RDB"))
        .unwrap_or_else(|| panic!("no \"Fork CoW for RDB\" line in the log:\n{log}"));
    let mb: u64 = line
        .split("current ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unexpected log line {line:?}"));
    assert_eq!(mb, redis_bytes >> 20, "{line:?} vs rdb_last_cow_size");
}

// ---------------------------------------------------------------------------------------------
// What cow-trace saw

/// The terms of the child's Private_Dirty, in pages, from cow-trace's stream.
#[derive(Debug)]
struct Terms {
    /// The window line: the parent's faults that copied a page while the child lived.
    parent_copied: u64,
    /// Of those, writes to pages the parent had first faulted in after the fork (read, so
    /// mapped to the zero page): never shared with the child.
    parent_zero_fills: u64,
    /// Of those, first writes that copied a file's page into a private mapping: the child
    /// still shares the file's page with the page cache, so nothing of it became the child's.
    parent_file_copies: u64,
    /// The child's own faults that copied a page (its writes to shared or zero pages, and
    /// its first writes to pages of private file mappings).
    child_copied: u64,
    /// The child's other writes to pages it did not have: new pages of its own.
    child_new: u64,
}

impl Terms {
    fn from_trace(json: &[Value], parent: u32, child: u32) -> Terms {
        let find = |matches: &dyn Fn(&Value) -> bool, what: &str| {
            json.iter()
                .find(|v| matches(v))
                .unwrap_or_else(|| panic!("no {what} line"))
        };
        let window = find(
            &|v| v["event"] == "window" && v["pid"] == parent && v["child"] == child,
            "window",
        );
        let child_summary = find(&|v| v["event"] == "summary" && v["pid"] == child, "summary");
        let count = |v: &Value, field: &str| v[field].as_u64().unwrap();
        let terms = Terms {
            parent_copied: count(window, "copied"),
            parent_zero_fills: zero_fills(json, parent, child),
            parent_file_copies: count(window, "file_copies"),
            child_copied: count(child_summary, "copied"),
            child_new: count(child_summary, "writes")
                - count(child_summary, "cow")
                - count(child_summary, "file_copies"),
        };
        // The stream and the window line describe the same faults.
        let streamed = json
            .iter()
            .filter(|v| is_fault_of(v, parent) && v["window"] == child && v["copied"] == true)
            .count() as u64;
        assert_eq!(streamed, terms.parent_copied, "stream vs window line");
        terms
    }

    /// The child's Private_Dirty as cow-trace accounts for it.
    fn private_pages(&self) -> u64 {
        self.parent_copied - self.parent_zero_fills - self.parent_file_copies
            + self.child_copied
            + self.child_new
    }

    fn print(&self, redis_bytes: u64) {
        let redis_pages = redis_bytes / page_size();
        eprintln!(
            "rdb_last_cow_size: {redis_bytes} bytes = {redis_pages} pages\n\
             cow-trace: parent copied {} pages in the window ({} bytes; {:+.2}% from Redis's),\n\
             \x20 of which {} zero-page fills and {} file pages; child copied {} and wrote {} new pages\n\
             \x20 => child's private pages {} ({:+} pages from Redis's)",
            self.parent_copied,
            self.parent_copied * page_size(),
            (self.parent_copied as f64 - redis_pages as f64) * 100.0 / redis_pages as f64,
            self.parent_zero_fills,
            self.parent_file_copies,
            self.child_copied,
            self.child_new,
            self.private_pages(),
            self.private_pages() as i64 - redis_pages as i64
        );
    }

    fn check(&self, redis_bytes: u64) {
        assert_eq!(redis_bytes % page_size(), 0, "smaps counts whole pages");
        let redis_pages = (redis_bytes / page_size()) as i64;
        assert!(
            self.parent_copied - self.parent_zero_fills > 1000,
            "too few copies for a meaningful comparison: {self:?}"
        );
        // Redis's bytes = the parent's copied bytes + the child's own new pages - zero fills.
        let residual = redis_pages - self.private_pages() as i64;
        assert!(
            residual.abs() <= TOLERANCE_PAGES,
            "rdb_last_cow_size {redis_bytes} bytes vs the parent's copies {} bytes: the child's \
             own pages (+{}) and zero-page fills (-{}) leave {residual:+} pages unexplained, more \
             than {TOLERANCE_PAGES} ({self:?})",
            self.parent_copied * page_size(),
            self.child_copied + self.child_new,
            self.parent_zero_fills,
        );
    }
}

fn is_fault_of(v: &Value, pid: u32) -> bool {
    v["event"] == "fault" && v["pid"] == pid
}

/// The parent's copies in the window on pages it faulted in during the window, i.e. pages it
/// did not have at fork: a read maps the zero page, and the first write then "copies" it.
fn zero_fills(json: &[Value], parent: u32, child: u32) -> u64 {
    let mut in_window: Vec<&Value> = json
        .iter()
        .filter(|v| is_fault_of(v, parent) && v["window"] == child)
        .collect();
    // Ring-buffer order is per CPU; the page's history needs time order.
    in_window.sort_by_key(|v| v["ts_ns"].as_u64());
    let mut faulted_in = HashSet::new();
    let mut count = 0;
    for fault in in_window {
        let page = page_of_fault(fault);
        match fault["cow"].as_bool() {
            Some(false) => {
                faulted_in.insert(page);
            }
            Some(true) if fault["copied"] == true && faulted_in.contains(&page) => count += 1,
            _ => {}
        }
    }
    count
}

fn page_of_fault(fault: &Value) -> u64 {
    let address = fault["address"].as_str().unwrap().trim_start_matches("0x");
    page_of(u64::from_str_radix(address, 16).unwrap())
}
