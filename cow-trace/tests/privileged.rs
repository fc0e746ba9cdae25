//! End-to-end tests that really load the eBPF programs and really fault pages. They need root
//! (CI runs as root); elsewhere each says why it skips.
mod common;
#[path = "privileged/history.rs"]
mod history;
#[path = "privileged/unwind.rs"]
mod unwind;

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{BufRead, BufReader, Write},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::*;
use serde_json::Value;

fn address(fault: &Value) -> u64 {
    u64::from_str_radix(
        fault["address"].as_str().unwrap().trim_start_matches("0x"),
        16,
    )
    .unwrap()
}

fn field_after(lines: &str, label: &str) -> String {
    lines
        .lines()
        .find_map(|l| l.strip_prefix(label))
        .unwrap_or_else(|| panic!("no {label:?} in {lines:?}"))
        .trim()
        .to_string()
}

/// The article's cow.c: the forked child writes four elements 40 KiB apart of an array it
/// shares with its parent; traced with -x CHILD, each printed address is a write, MINOR, COW
/// fault of the child, in cow-trace's own format and in the article's stap format.
#[test]
fn article_cow_experiment() {
    if !require_root("article_cow_experiment") {
        return;
    }
    let mut cow = Command::new(workload("cow"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = cow.stdin.take().unwrap();
    let mut stdout = BufReader::new(cow.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let child: u32 = field_after(&line, "child pid:").parse().unwrap();
    wait_blocked_in_read(child);

    let json = Tracer::start(&["-x", &child.to_string(), "--json"]);
    let stap = Tracer::start(&["-x", &child.to_string(), "--format", "stap"]);
    let text = Tracer::start(&["-x", &child.to_string()]);
    stdin.write_all(b"\n").unwrap();
    stdin.flush().unwrap();
    let mut printed = Vec::new();
    for _ in 0..4 {
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let hex = line.rsplit(':').next().unwrap().trim();
        printed.push(u64::from_str_radix(hex, 16).unwrap());
    }
    wait_blocked_in_read(child);
    stdin.write_all(b"\n").unwrap();
    drop(stdin);
    cow.wait().unwrap();
    // Each tracer ends by itself once the child has exited.
    let json = json.wait();
    let stap = stap.wait();
    let text = text.wait();
    assert_eq!(
        (json.status, stap.status, text.status),
        (0, 0, 0),
        "{}",
        json.stderr
    );

    let faults = json.faults_of(child);
    for &printed in &printed {
        let matching: Vec<&Value> = faults.iter().filter(|f| address(f) == printed).collect();
        assert_eq!(matching.len(), 1, "address {printed:#x}: {matching:?}");
        let fault = matching[0];
        assert_eq!(fault["access"], "w", "{fault}");
        assert_eq!(fault["type"], "MINOR", "{fault}");
        assert_eq!(fault["cow"], true, "{fault}");
        // The parent still maps the page, so the child must copy it.
        assert_eq!(fault["copied"], true, "{fault}");
        assert_eq!(fault["tid"], child, "{fault}");
        if untimed() {
            assert!(fault["latency_ns"].is_null(), "{fault}");
        } else {
            assert!(fault["latency_ns"].as_u64().unwrap() > 0, "{fault}");
        }

        let stap_line = format!("] pid:{child}, address:{printed:#x} access:w, type:MINOR");
        assert_eq!(
            stap.output
                .lines()
                .filter(|l| l.ends_with(&stap_line))
                .count(),
            1,
            "{stap_line:?} not in:\n{}",
            stap.output
        );
        let text_line = text
            .output
            .lines()
            .find(|l| l.contains(&format!("{printed:#018x}")))
            .unwrap_or_else(|| panic!("{printed:#x} not in:\n{}", text.output));
        assert!(text_line.contains(" wu MINOR      copy "), "{text_line}");
    }
    // Nothing but the child was traced: the parent was not a target.
    assert!(json.faults().iter().all(|f| f["pid"] == child));
    assert_eq!(json.lost(), 0);
}

/// The article's clone experiment without CLONE_VM: the child's write to the parent's
/// buffer lands in its own copy, through a copy-on-write fault.
#[test]
fn article_clone_without_vm_copies_on_write() {
    if !require_root("article_clone_without_vm_copies_on_write") {
        return;
    }
    let clone_test = workload("clone_test");
    let done = Tracer::start(&["--json", "--", clone_test.to_str().unwrap()]).wait();
    assert_eq!(done.status, 0, "{}", done.stderr);
    assert!(
        done.command_stdout
            .contains("in parent, buf:\"msg from parent\""),
        "{}",
        done.command_stdout
    );
    let child: u32 = field_after(&done.command_stdout, "child pid:")
        .parse()
        .unwrap();
    let buf = u64::from_str_radix(&field_after(&done.command_stdout, "buf address:"), 16).unwrap();
    let cow_on_buf: Vec<Value> = done
        .faults_of(child)
        .into_iter()
        .filter(|f| page_of(address(f)) == page_of(buf) && f["cow"] == true && f["access"] == "w")
        .collect();
    assert_eq!(cow_on_buf.len(), 1, "{:?}", done.faults_of(child));
    assert_eq!(cow_on_buf[0]["type"], "MINOR");
}

/// With CLONE_VM the child writes the parent's own memory: the parent sees the change and the
/// child takes no copy-on-write fault on the buffer.
#[test]
fn article_clone_with_vm_shares_memory() {
    if !require_root("article_clone_with_vm_shares_memory") {
        return;
    }
    let clone_test = workload("clone_test");
    let done = Tracer::start(&["--json", "--", clone_test.to_str().unwrap(), "clone_vm"]).wait();
    assert_eq!(done.status, 0, "{}", done.stderr);
    assert!(
        done.command_stdout
            .contains("in parent, buf:\"hello from child\""),
        "{}",
        done.command_stdout
    );
    let child: u32 = field_after(&done.command_stdout, "child pid:")
        .parse()
        .unwrap();
    let buf = u64::from_str_radix(&field_after(&done.command_stdout, "buf address:"), 16).unwrap();
    // The child was traced: its creation was followed ...
    let forks = done
        .json()
        .into_iter()
        .filter(|v| v["event"] == "fork" && v["child"] == child)
        .count();
    assert_eq!(forks, 1, "the CLONE_VM child {child} was not followed");
    // ... yet it took no fault on the buffer's page: it wrote the parent's own, mapped page.
    // (glibc's clone() already wrote the child's stack top from the parent, so the child may
    // take no fault at all.)
    let on_buf: Vec<Value> = done
        .faults_of(child)
        .into_iter()
        .filter(|f| page_of(address(f)) == page_of(buf))
        .collect();
    assert!(on_buf.is_empty(), "{on_buf:?}");
}

/// `-x TID` of a thread that is not its process's main thread (as `ps -L` or `top -H` show
/// it) traces the whole process, and says so.
#[test]
fn a_thread_id_traces_its_process() {
    if !require_root("a_thread_id_traces_its_process") {
        return;
    }
    let mut faulter = Faulter::start();
    let pid = faulter.pid();
    let tid: u32 = field_after(&faulter.run("idle-thread").join("\n"), "thread ")
        .parse()
        .unwrap();
    assert_ne!(tid, pid);
    let tracer = Tracer::start(&["-x", &tid.to_string(), "--json"]);
    let said = format!("{tid} is a thread of {pid}: tracing {pid}");
    assert!(
        tracer.stderr_lines.iter().any(|line| line.contains(&said)),
        "{:?}",
        tracer.stderr_lines
    );
    assert!(
        tracer
            .stderr_lines
            .iter()
            .any(|line| line.contains(&format!("Tracing pid {pid} "))),
        "{:?}",
        tracer.stderr_lines
    );
    let before = kernel_fault_counts(pid);
    faulter.run("touch 100");
    let after = kernel_fault_counts(pid);
    let done = tracer.stop();
    assert_eq!(
        done.counts_of(pid),
        (after.0 - before.0, after.1 - before.1)
    );
    assert!(after.0 - before.0 >= 100);
    faulter.exit();
}

/// Another tracer copying the user stack at each fault (here a second cow-trace with -g) reads
/// pages that are not present yet with page faults disabled: the kernel fires its fault
/// tracepoint, then gives up at once, and counts nothing. Those are no faults of the process.
#[test]
fn a_stack_read_by_another_tracer_is_no_fault() {
    if !require_root("a_stack_read_by_another_tracer_is_no_fault") {
        return;
    }
    let mut faulter = Faulter::start();
    let pid = faulter.pid().to_string();
    // The kernel runs the programs on a tracepoint in the order they were attached: the -g
    // one first, so its reads come before the plain one sees the fault they are taken in.
    let stacks = Tracer::start(&["-x", &pid, "--json", "-g", "--stack-faults", "all"]);
    let plain = Tracer::start(&["-x", &pid, "--json"]);
    let pid = faulter.pid();
    let before = kernel_fault_counts(pid);
    faulter.run("frame 256");
    let after = kernel_fault_counts(pid);
    let done = plain.stop();
    let stacks = stacks.stop();
    faulter.exit();
    let expected = (after.0 - before.0, after.1 - before.1);
    assert!(expected.0 >= 256, "{expected:?}");
    for (name, run) in [("plain", &done), ("-g", &stacks)] {
        assert_eq!(
            run.counts_of(pid),
            expected,
            "{name}: cow-trace vs /proc/{pid}/stat"
        );
        let faults = run.faults_of(pid);
        assert!(
            faults
                .iter()
                .all(|f| f["type"] != "INCOMPLETE" && !f["access"].is_null()),
            "{name}: {:?}",
            faults
                .iter()
                .find(|f| f["type"] == "INCOMPLETE" || f["access"].is_null())
        );
    }
}

/// For a traced process, MINOR and MAJOR per pid equal the kernel's own minflt / majflt
/// increase, read from /proc/PID/stat while the process sat in read(2).
#[test]
fn counts_equal_the_kernels_own() {
    if !require_root("counts_equal_the_kernels_own") {
        return;
    }
    let mut faulter = Faulter::start();
    let pid = faulter.pid();
    let tracer = Tracer::start(&["-x", &pid.to_string(), "--json"]);
    let before = kernel_fault_counts(pid);
    let file = scratch().join(format!("major-{pid}"));
    for command in [
        "touch 200".to_string(),
        "read 100".to_string(),
        "threads 4 50".to_string(),
        format!("major {} 64", file.display()),
        "touch 3".to_string(),
    ] {
        faulter.run(&command);
    }
    let after = kernel_fault_counts(pid);
    let done = tracer.stop();
    let expected = (after.0 - before.0, after.1 - before.1);
    assert_eq!(
        done.counts_of(pid),
        expected,
        "cow-trace vs /proc/{pid}/stat"
    );
    assert!(
        expected.0 >= 200 + 100 + 4 * 50,
        "the workload took fewer faults than it made: {expected:?}"
    );
    assert!(
        expected.1 > 0,
        "dropping the file's cache should have made major faults"
    );
    assert_eq!(done.lost(), 0);
    // Faults were attributed to the threads that took them.
    let tids: BTreeSet<u64> = done
        .faults_of(pid)
        .iter()
        .map(|f| f["tid"].as_u64().unwrap())
        .collect();
    assert!(
        tids.len() >= 5,
        "expected the main thread and 4 workers, got {tids:?}"
    );
    faulter.exit();
}

/// -x of a process whose threads exist before attaching: each is traced, with its own events,
/// and the counts still equal the kernel's (timed, a thread without its completion event would
/// leave its faults INCOMPLETE).
#[test]
fn existing_threads_are_traced() {
    if !require_root("existing_threads_are_traced") {
        return;
    }
    let mut faulter = Faulter::start();
    let pid = faulter.pid();
    faulter.run("pool 4");
    let tracer = Tracer::start(&["-x", &pid.to_string(), "--json"]);
    let before = kernel_fault_counts(pid);
    faulter.run("pool-touch 50");
    let after = kernel_fault_counts(pid);
    let done = tracer.stop();
    let expected = (after.0 - before.0, after.1 - before.1);
    assert_eq!(
        done.counts_of(pid),
        expected,
        "cow-trace vs /proc/{pid}/stat"
    );
    let workers = done
        .faults_of(pid)
        .iter()
        .filter(|f| f["tid"] != pid && f["type"] == "MINOR")
        .fold(BTreeMap::<u64, u64>::new(), |mut per_tid, f| {
            *per_tid.entry(f["tid"].as_u64().unwrap()).or_default() += 1;
            per_tid
        });
    assert_eq!(workers.len(), 4, "{workers:?}");
    assert!(workers.values().all(|&n| n >= 50), "{workers:?}");
    faulter.exit();
}

/// Threads created one after another while cow-trace attaches: some inherit their creator's
/// events and are found by a later scan too. Each fault still counts once.
#[test]
fn threads_created_while_attaching_count_once() {
    if !require_root("threads_created_while_attaching_count_once") {
        return;
    }
    let mut faulter = Faulter::start();
    let pid = faulter.pid();
    faulter.run("grow 300 1");
    let tracer = Tracer::start(&["-x", &pid.to_string(), "--json"]);
    faulter.run("grown");
    // The growth's own faults went on after attaching: count those of the touch alone. A
    // timer tick without faults first: untimed, a fault's time is its tick's first fault's.
    std::thread::sleep(std::time::Duration::from_millis(30));
    let (start, before) = (monotonic_ns(), kernel_fault_counts(pid));
    faulter.run("pool-touch 10");
    let (after, end) = (kernel_fault_counts(pid), monotonic_ns());
    let done = tracer.stop();
    let minor = done
        .faults_of(pid)
        .iter()
        .filter(|f| (start..end).contains(&f["ts_ns"].as_u64().unwrap()) && f["type"] == "MINOR")
        .count() as u64;
    assert!(after.0 - before.0 >= 300 * 10, "{before:?} -> {after:?}");
    assert_eq!(minor, after.0 - before.0, "cow-trace vs /proc/{pid}/stat");
    faulter.exit();
}

fn monotonic_ns() -> u64 {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).unwrap();
    now.tv_sec() as u64 * 1_000_000_000 + now.tv_nsec() as u64
}

/// A target faulting without a pause while cow-trace attaches and stops: its faults before
/// its completion event is open, and those while the programs detach, are neither reported
/// incomplete (they completed) nor missed; Ctrl-C ends the trace even while the target
/// faults faster than this (debug) build reads; a fault that begins after --duration's end is
/// not reported.
#[test]
fn a_busy_target_at_attach_and_stop_has_no_incomplete_faults() {
    if !require_root("a_busy_target_at_attach_and_stop_has_no_incomplete_faults") {
        return;
    }
    for stop_by in ["SIGINT", "--duration"] {
        let mut faulter = Faulter::start();
        let pid = faulter.pid();
        faulter.send("spin");
        std::thread::sleep(std::time::Duration::from_millis(50));
        let at_start = kernel_fault_counts(pid).0;
        let pid_arg = pid.to_string();
        let mut args = vec!["-x", &pid_arg, "--json"];
        if stop_by == "--duration" {
            args.extend(["--duration", "300ms"]);
        }
        let tracer = Tracer::start(&args);
        let (ready, at_ready) = (monotonic_ns(), kernel_fault_counts(pid).0);
        std::thread::sleep(std::time::Duration::from_millis(300));
        let (done, end) = if stop_by == "SIGINT" {
            let at_stop = kernel_fault_counts(pid).0;
            let done = tracer.stop();
            // Every fault between readiness and the signal is there.
            let minor = done.counts_of(pid).0;
            assert!(
                minor >= at_stop - at_ready,
                "{minor} < {at_stop} - {at_ready}"
            );
            // The signal's end is when the loop sees it: not checked to the ns.
            (done, u64::MAX)
        } else {
            (tracer.wait(), ready + 300_000_000)
        };
        let at_end = kernel_fault_counts(pid).0;
        faulter.child.stop();
        let faults = done.faults_of(pid);
        let by_type = faults
            .iter()
            .fold(BTreeMap::<String, u64>::new(), |mut n, f| {
                *n.entry(f["type"].as_str().unwrap().to_string())
                    .or_default() += 1;
                n
            });
        let minor = by_type.get("MINOR").copied().unwrap_or(0);
        assert_eq!(
            by_type.len(),
            1,
            "{stop_by}: only MINOR faults: {by_type:?}"
        );
        assert!(
            minor <= at_end - at_start,
            "{stop_by}: {minor} faults, the kernel counted {}",
            at_end - at_start
        );
        let last = faults.iter().map(|f| f["ts_ns"].as_u64().unwrap()).max();
        assert!(
            last.is_some_and(|last| last <= end),
            "{stop_by}: a fault at {last:?}, after the end at {end}"
        );
    }
}

/// The tracepoint backend opens its completion events per traced thread (inherited by the
/// tasks it creates), never per CPU: another process's faults never run the completion
/// programs, and the traced process runs them once per fault the kernel counts (untimed, only
/// the major-fault one is attached). Read from the kernel's BPF run counts, kept while the
/// test holds them on.
#[test]
fn bystanders_never_run_the_completion_programs() {
    const NAME: &str = "bystanders_never_run_the_completion_programs";
    if !require_root(NAME) {
        return;
    }
    let _statistics = match aya::sys::enable_stats(aya::sys::Stats::RunTime) {
        Ok(fd) => fd,
        Err(error) => {
            skip(
                NAME,
                &format!("the kernel keeps no BPF run counts ({error})"),
            );
            return;
        }
    };
    let mut traced = Faulter::start();
    let mut bystander = Faulter::start();
    let pid = traced.pid();
    let tracer = Tracer::start(&["-x", &pid.to_string(), "--json"]);
    if !tracer
        .stderr_lines
        .iter()
        .any(|line| line.contains("backend: tracepoint"))
    {
        skip(NAME, "only the tracepoint backend has completion events");
        return;
    }
    let completions = completion_program_ids(tracer.pid());
    assert!(!completions.is_empty(), "no completion program loaded");
    let runs = || -> u64 {
        aya::programs::loaded_programs()
            .filter_map(Result::ok)
            .filter(|program| completions.contains(&program.id()))
            .map(|program| program.run_count())
            .sum()
    };
    let faults = |faulter: &mut Faulter| {
        let pid = faulter.pid();
        let file = scratch().join(format!("major-{pid}"));
        let before = kernel_fault_counts(pid);
        faulter.run("touch 300");
        faulter.run(&format!("major {} 32", file.display()));
        let after = kernel_fault_counts(pid);
        let _ = std::fs::remove_file(file);
        (after.0 - before.0, after.1 - before.1)
    };

    let start = runs();
    let (minor, major) = faults(&mut bystander);
    assert!(
        minor >= 300 && major > 0,
        "bystander: {minor} minor, {major} major"
    );
    assert_eq!(
        runs() - start,
        0,
        "the bystander's faults ran a completion program"
    );

    let start = runs();
    let (minor, major) = faults(&mut traced);
    let expected = if untimed() { major } else { minor + major };
    assert!(major > 0, "traced: {minor} minor, {major} major");
    assert_eq!(
        runs() - start,
        expected,
        "traced: {minor} minor, {major} major"
    );
    tracer.stop();
    traced.exit();
    bystander.exit();
}

/// The ids of the completion programs (`fault_done_minor`, `fault_done_major`: 15 characters
/// of each in the kernel) that process `pid` holds.
fn completion_program_ids(pid: u32) -> BTreeSet<u32> {
    let held: BTreeSet<u32> = std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .unwrap()
        .filter_map(|entry| std::fs::read_to_string(entry.ok()?.path()).ok())
        .filter_map(|info| {
            info.lines()
                .find_map(|line| line.strip_prefix("prog_id:"))
                .and_then(|id| id.trim().parse().ok())
        })
        .collect();
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|program| {
            held.contains(&program.id())
                && program
                    .name_as_str()
                    .is_some_and(|name| name.starts_with("fault_done_"))
        })
        .map(|program| program.id())
        .collect()
}

/// A fault's time lies between the moments before and after it; untimed (--no-latency), the
/// tracepoint backend takes its timer tick's time, up to a tick (at most 10 ms) early.
#[test]
fn fault_times_fall_where_the_faults_did() {
    if !require_root("fault_times_fall_where_the_faults_did") {
        return;
    }
    let mut faulter = Faulter::start();
    let pid = faulter.pid();
    let tracer = Tracer::start(&["-x", &pid.to_string(), "--json"]);
    let start = monotonic_ns();
    faulter.run("touch 200");
    let end = monotonic_ns();
    let done = tracer.stop();
    let early = if untimed() { 10_000_000 } else { 0 };
    let faults = done.faults_of(pid);
    assert!(faults.len() >= 200, "{} faults", faults.len());
    for fault in &faults {
        let ts = fault["ts_ns"].as_u64().unwrap();
        assert!(
            (start - early..=end).contains(&ts),
            "{ts} not in {start} - {early} ..= {end}: {fault}"
        );
    }
    faulter.exit();
}

/// --summary counts in maps that every CPU adds to at once. Threads faulting in parallel on
/// all CPUs must still add up to the kernel's own count, and, timed, the latency histogram
/// (whose one entry per pid and class all threads share) to the timed count.
#[test]
fn kernel_summary_adds_up_under_parallel_faults() {
    if !require_root("kernel_summary_adds_up_under_parallel_faults") {
        return;
    }
    let mut faulter = Faulter::start();
    let pid = faulter.pid();
    let tracer = Tracer::start(&["-x", &pid.to_string(), "--json", "--summary"]);
    let before = kernel_fault_counts(pid);
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get().max(2));
    faulter.run(&format!("threads {threads} 20000"));
    let after = kernel_fault_counts(pid);
    let done = tracer.stop();
    let json = done.json();
    let summary = json
        .iter()
        .find(|v| v["event"] == "summary" && v["pid"] == pid)
        .expect("a summary row for the workload");
    let minor = summary["minor"].as_u64().unwrap();
    assert_eq!(minor, after.0 - before.0, "--summary vs /proc/{pid}/stat");
    assert!(minor >= threads as u64 * 20000, "{minor} minor faults");
    let in_histograms: u64 = json
        .iter()
        .filter(|v| v["event"] == "histogram" && v["pid"] == pid)
        .flat_map(|v| v["buckets"].as_array().unwrap())
        .map(|n| n.as_u64().unwrap())
        .sum();
    assert_eq!(in_histograms, summary["timed"].as_u64().unwrap());
    if !untimed() {
        assert!(in_histograms >= threads as u64 * 20000, "{in_histograms}");
    }
    faulter.exit();
}

/// A forked child writing N pages it shares with its parent takes exactly N copy-on-write
/// faults, one per page, and its pid (forked after attach) is traced.
#[test]
fn forked_child_writes_take_one_cow_fault_per_page() {
    if !require_root("forked_child_writes_take_one_cow_fault_per_page") {
        return;
    }
    let mut faulter = Faulter::start();
    let pid = faulter.pid();
    let tracer = Tracer::start(&["-x", &pid.to_string(), "--json"]);
    let printed = faulter.run("cow 64");
    let done = tracer.stop();
    let base = u64::from_str_radix(printed[0].strip_prefix("pages ").unwrap(), 16).unwrap();
    let in_range = |f: &&Value| (base..base + 64 * page_size()).contains(&address(f));
    let children: BTreeSet<u64> = done
        .faults()
        .iter()
        .map(|f| f["pid"].as_u64().unwrap())
        .filter(|&p| p != u64::from(pid))
        .collect();
    assert_eq!(children.len(), 1, "{children:?}");
    let child = *children.first().unwrap() as u32;
    let child_faults = done.faults_of(child);
    let cow: Vec<&Value> = child_faults.iter().filter(in_range).collect();
    assert_eq!(cow.len(), 64, "{cow:?}");
    assert!(
        cow.iter()
            .all(|f| f["cow"] == true && f["access"] == "w" && f["type"] == "MINOR")
    );
    let pages: BTreeSet<u64> = cow.iter().map(|f| page_of(address(f))).collect();
    assert_eq!(pages.len(), 64, "one fault per page");
    // The parent filled the pages before forking: first-touch faults, not COW.
    let parent_fills: Vec<Value> = done
        .faults_of(pid)
        .into_iter()
        .filter(|f| in_range(&f))
        .collect();
    assert_eq!(parent_fills.len(), 64);
    assert!(parent_fills.iter().all(|f| f["cow"] == false));
    faulter.exit();
}

/// Faults of an unrelated busy process never appear; a grandchild forked after attaching
/// (by a child also forked after attaching) is traced.
#[test]
fn filters_to_the_process_tree() {
    if !require_root("filters_to_the_process_tree") {
        return;
    }
    let mut busy = Faulter::start();
    busy.send("spin");
    let mut faulter = Faulter::start();
    let pid = faulter.pid();
    let tracer = Tracer::start(&["-x", &pid.to_string(), "--json"]);
    let printed = faulter.run("tree 16");
    let done = tracer.stop();
    let grandchild: u32 = field_after(&printed.join("\n"), "grandchild ")
        .parse()
        .unwrap();
    assert!(
        done.faults_of(busy.pid()).is_empty(),
        "the unrelated process leaked in"
    );
    let pids: BTreeSet<u64> = done
        .faults()
        .iter()
        .map(|f| f["pid"].as_u64().unwrap())
        .collect();
    assert_eq!(
        pids.len(),
        3,
        "the target, its child and grandchild: {pids:?}"
    );
    let writes = done
        .faults_of(grandchild)
        .iter()
        .filter(|f| f["access"] == "w")
        .count();
    assert!(
        writes >= 16,
        "grandchild {grandchild} wrote 16 pages, {writes} write faults seen"
    );
    faulter.exit();
}

/// Existing descendants (forked before attaching) are found in /proc and traced.
#[test]
fn existing_descendants_are_traced() {
    if !require_root("existing_descendants_are_traced") {
        return;
    }
    // sh starts the faulter as its child, so -x sh must follow it.
    let mut shell = Command::new("sh")
        .args(["-c", &format!("{} ; true", workload("faulter").display())])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let shell_pid = shell.id();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let faulter_pid = loop {
        let children =
            std::fs::read_to_string(format!("/proc/{shell_pid}/task/{shell_pid}/children"))
                .unwrap();
        if let Some(pid) = children.split_whitespace().next() {
            break pid.parse::<u32>().unwrap();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "sh never started the faulter"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    wait_blocked_in_read(faulter_pid);
    let tracer = Tracer::start(&["-x", &shell_pid.to_string(), "--json"]);
    let mut stdin = shell.stdin.take().unwrap();
    let mut stdout = BufReader::new(shell.stdout.take().unwrap());
    stdin.write_all(b"touch 32\n").unwrap();
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ok");
    wait_blocked_in_read(faulter_pid);
    let done = tracer.stop();
    let writes = done
        .faults_of(faulter_pid)
        .iter()
        .filter(|f| f["access"] == "w")
        .count();
    assert!(writes >= 32, "faulter {faulter_pid}: {writes} write faults");
    stdin.write_all(b"exit\n").unwrap();
    drop(stdin);
    shell.wait().unwrap();
}

/// `--backend auto` takes the first backend this kernel lets attach and, with -v, says why it
/// passed over each before it. Where the kernel cannot put a BPF trampoline on a kernel
/// function (arm64 before Linux 6.4), fexit's refusal says so and kprobe is taken.
#[test]
fn auto_backend_names_the_one_attached_and_why_not_the_others() {
    if !require_root("auto_backend_names_the_one_attached_and_why_not_the_others") {
        return;
    }
    let output = Command::new(cow_trace())
        .args(["-v", "--backend", "auto", "-o", "/dev/null", "--", "true"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let order: &[&str] = if cfg!(target_arch = "x86_64") {
        &["fexit", "kprobe", "tracepoint"]
    } else {
        &["fexit", "kprobe"]
    };
    let attached = order
        .iter()
        .position(|b| stderr.contains(&format!("(backend: {b})")))
        .unwrap_or_else(|| panic!("no backend named: {stderr}"));
    for refused in &order[..attached] {
        assert!(
            stderr.contains(&format!("backend {refused} refused: ")),
            "no reason given for passing over {refused}: {stderr}"
        );
    }
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut version = release.trim().split(['.', '-']).map(|n| n.parse::<u32>());
    let version = (
        version.next().unwrap().unwrap(),
        version.next().unwrap().unwrap(),
    );
    if cfg!(target_arch = "aarch64") && version < (6, 4) {
        assert_eq!(order[attached], "kprobe", "{stderr}");
        assert!(
            stderr.contains("arm64 kernels can since Linux 6.4"),
            "fexit's refusal does not say why: {stderr}"
        );
    }
}

/// -- CMD: the command is held until the probes are attached (its very first faults after exec
/// are seen), and its exit status is passed through. It is counted from its exec: none of
/// cow-trace's own code, which the forked child runs until then, is.
#[test]
fn held_command_is_traced_from_exec_and_its_status_passed_through() {
    if !require_root("held_command_is_traced_from_exec_and_its_status_passed_through") {
        return;
    }
    let done = Tracer::start(&["--json", "--", "sh", "-c", "exit 7"]).wait();
    assert_eq!(done.status, 7, "{}", done.stderr);
    let events = done.json();
    let faults = done.faults();
    assert!(!faults.is_empty());
    // The dynamic loader's first instruction fetches are among them: nothing after exec missed.
    assert!(
        faults.iter().any(|f| f["access"] == "x"),
        "no instruction-fetch faults seen"
    );
    let not_sh: Vec<&Value> = faults.iter().filter(|f| f["comm"] != "sh").collect();
    assert!(not_sh.is_empty(), "faults before the exec: {not_sh:?}");
    // Before the exec event, only the kernel's own writes into the new program's memory (its
    // stack, its zeroed data) come: the user code of the forked child is never seen.
    let exec_at = events
        .iter()
        .position(|v| v["event"] == "exec")
        .expect("the command's exec event");
    let before_exec: Vec<&Value> = events[..exec_at]
        .iter()
        .filter(|v| v["event"] == "fault" && v["kernel_mode"] != true)
        .collect();
    assert!(before_exec.is_empty(), "{before_exec:?}");
    let summary: Vec<&Value> = events.iter().filter(|v| v["event"] == "summary").collect();
    assert_eq!(summary.len(), 1, "{summary:?}");
    assert_eq!(summary[0]["comm"], "sh");
    // The summary counts faults the kernel completed: not the handle_mm_fault backends'
    // RETRY attempts, nor faults that never completed.
    let completed = faults
        .iter()
        .filter(|f| f["type"] == "MINOR" || f["type"] == "MAJOR")
        .count();
    assert_eq!(summary[0]["faults"].as_u64(), Some(completed as u64));
}

/// --json and -- CMD without -o: stdout carries only JSON lines; the command's own standard
/// output is on stderr, whole and in order.
#[test]
fn json_on_stdout_stays_parseable_beside_a_command() {
    if !require_root("json_on_stdout_stays_parseable_beside_a_command") {
        return;
    }
    let output = Command::new(cow_trace())
        .args(backend_args())
        .args(["--json", "--", "sh", "-c"])
        .arg("echo one; echo two; printf '{not json\\n'; echo on stderr >&2")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    let events: Vec<Value> = stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line:?}")))
        .collect();
    assert!(events.iter().any(|v| v["event"] == "fault"));
    assert_eq!(events.last().unwrap()["event"], "totals");
    let printed: Vec<&str> = stderr
        .lines()
        .filter(|line| ["one", "two", "{not json", "on stderr"].contains(line))
        .collect();
    assert_eq!(
        printed,
        ["one", "two", "{not json", "on stderr"],
        "{stderr}"
    );
}

/// Runs `cow-trace ARGS -- true` with TZ set; returns the first event line, and the UTC time
/// just before and just after the run.
fn first_line_with_tz(
    tz: &str,
    args: &[&str],
) -> (
    String,
    chrono::DateTime<chrono::Utc>,
    chrono::DateTime<chrono::Utc>,
) {
    let before = chrono::Utc::now();
    let output = Command::new(cow_trace())
        .args(backend_args())
        .args(args)
        .args(["--", "true"])
        .env("TZ", tz)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let after = chrono::Utc::now();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let line = stdout
        .lines()
        .find(|line| !line.starts_with("TIME "))
        .unwrap_or_else(|| panic!("no event line: {stdout:?}"))
        .to_string();
    (line, before, after)
}

/// Is the time of day `shown` that of a moment between `from` and `to`, `offset_hours` east
/// of UTC? (A second of slack: the text shows the time of the fault, not of our clock reads.)
fn shown_between(
    shown: chrono::NaiveTime,
    from: chrono::DateTime<chrono::Utc>,
    to: chrono::DateTime<chrono::Utc>,
    offset_hours: i64,
) -> bool {
    let offset = chrono::Duration::hours(offset_hours);
    let (from, to) = (from + offset, to + offset);
    let slack = chrono::Duration::seconds(1);
    [from.date_naive(), to.date_naive()].iter().any(|day| {
        let moment = day.and_time(shown).and_utc();
        moment >= from - slack && moment <= to + slack
    })
}

/// The text format's TIME is local time, as `date` shows it (TZ honoured); the stap format
/// stays UTC, as the SystemTap script's ctime() printed it; JSON stays RFC 3339 UTC.
#[test]
fn text_times_follow_tz_stap_and_json_stay_utc() {
    if !require_root("text_times_follow_tz_stap_and_json_stay_utc") {
        return;
    }
    // POSIX TZ rules need no time-zone database (the VM tests have none); a zone name does.
    let mut zones = vec![("JST-9", 9), ("UTC0", 0), ("<-04>4", -4)];
    if std::path::Path::new("/usr/share/zoneinfo/Asia/Tokyo").exists() {
        zones.push(("Asia/Tokyo", 9));
    }
    for (tz, hours) in zones {
        let (line, from, to) = first_line_with_tz(tz, &[]);
        let shown = chrono::NaiveTime::parse_from_str(&line[..15], "%H:%M:%S%.6f").unwrap();
        assert!(
            shown_between(shown, from, to, hours),
            "TZ={tz}: {line:?} is not between {from} and {to} at UTC{hours:+}"
        );
    }
    let (line, from, to) = first_line_with_tz("JST-9", &["--format", "stap"]);
    let stamp = &line[1..line.find(']').unwrap()];
    let shown = chrono::NaiveDateTime::parse_from_str(stamp, "%a %b %e %H:%M:%S %Y").unwrap();
    assert!(
        shown_between(shown.time(), from, to, 0),
        "stap with TZ=JST-9: {line:?} is not UTC ({from})"
    );
    let (line, from, to) = first_line_with_tz("JST-9", &["--json"]);
    let event: Value = serde_json::from_str(&line).unwrap();
    let time = event["time"].as_str().unwrap();
    assert!(time.ends_with('Z'), "{time}");
    let time = chrono::DateTime::parse_from_rfc3339(time).unwrap();
    assert!(
        shown_between(time.naive_utc().time(), from, to, 0),
        "{line}"
    );
}

/// cow-trace never traces itself, though it is a descendant of the traced process (as with
/// `-x 1`); and refuses to be the target.
#[test]
fn cow_trace_never_traces_itself() {
    if !require_root("cow_trace_never_traces_itself") {
        return;
    }
    let output = scratch().join(format!("itself-{}.json", std::process::id()));
    // The shell waits for cow-trace, its child, which traces the shell and so its own process
    // too, were it not excluded; `; :` keeps the shell from exec'ing cow-trace.
    let shell = Command::new("sh")
        .args(["-c", "\"$0\" -x $$ --json -d 1s -o \"$1\"; :"])
        .arg(cow_trace())
        .arg(&output)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&shell.stderr);
    assert!(shell.status.success(), "{stderr}");
    let text = std::fs::read_to_string(&output).unwrap();
    let _ = std::fs::remove_file(&output);
    // Its comm: the binary's name, cut to the kernel's 15 characters.
    let name = cow_trace()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let comm: String = name.chars().take(15).collect();
    let mine: Vec<Value> = text
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap())
        .filter(|v| v["comm"] == comm.as_str())
        .collect();
    assert!(mine.is_empty(), "cow-trace traced itself: {mine:?}");

    let refused = Command::new("sh")
        .args(["-c", "exec \"$0\" -x $$ -d 5s -o /dev/null"])
        .arg(cow_trace())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("is cow-trace itself"), "{stderr}");
}

fn parse_hex_after(printed: &[String], label: &str) -> u64 {
    u64::from_str_radix(&field_after(&printed.join("\n"), label), 16).unwrap()
}

/// Copy vs reuse: in a forked pair, the first writer of a shared page copies it; after the
/// child exits, the parent, last sharer, reuses each page it writes.
#[test]
fn first_writer_copies_last_sharer_reuses() {
    if !require_root("first_writer_copies_last_sharer_reuses") {
        return;
    }
    let mut faulter = Faulter::start();
    let pid = faulter.pid();
    let tracer = Tracer::start(&["-x", &pid.to_string(), "--json"]);
    let printed = faulter.run("reuse 64");
    let done = tracer.stop();
    let base = parse_hex_after(&printed, "pages ");
    let in_range = |f: &Value| (base..base + 64 * page_size()).contains(&address(f));
    let child = done
        .faults()
        .iter()
        .map(|f| f["pid"].as_u64().unwrap() as u32)
        .find(|&p| p != pid)
        .expect("no fault from the child");
    let child_writes: Vec<Value> = done
        .faults_of(child)
        .into_iter()
        .filter(|f| in_range(f))
        .collect();
    assert_eq!(child_writes.len(), 64);
    assert!(
        child_writes
            .iter()
            .all(|f| f["cow"] == true && f["copied"] == true),
        "{child_writes:?}"
    );
    let parent_cow: Vec<Value> = done
        .faults_of(pid)
        .into_iter()
        .filter(|f| in_range(f) && f["cow"] == true)
        .collect();
    assert_eq!(parent_cow.len(), 64);
    assert!(
        parent_cow.iter().all(|f| f["copied"] == false),
        "{parent_cow:?}"
    );
    // Reuses show the child's memory is gone: none of them is in its window.
    assert!(
        parent_cow.iter().all(|f| f.get("window").is_none()),
        "{parent_cow:?}"
    );
    let summary = done
        .json()
        .into_iter()
        .find(|v| v["event"] == "summary" && v["pid"] == pid)
        .unwrap();
    assert!(summary["reused"].as_u64().unwrap() >= 64, "{summary}");
    faulter.exit();
}

/// Untimed (and before a thread's first completion), a fault stays pending until the thread's
/// next one: a page a system call allocates meanwhile is not the fault's. Here the parent, last
/// sharer of each page, writes it (a reuse), then maps a page with MAP_POPULATE (a user page
/// allocated in mmap): every write stays a reuse, never a copy or a zero fill, streamed and
/// counted in the kernel, with and without latencies.
#[test]
fn pages_a_system_call_allocates_after_a_fault_are_not_its_copies() {
    if !require_root("pages_a_system_call_allocates_after_a_fault_are_not_its_copies") {
        return;
    }
    for summary in [false, true] {
        for no_latency in [true, false] {
            reuses_beside_allocating_system_calls(summary, no_latency);
        }
    }
}

fn reuses_beside_allocating_system_calls(summary: bool, no_latency: bool) {
    let mode = format!("summary {summary}, no latency {no_latency}");
    let pages = 64;
    let mut faulter = Faulter::start();
    let pid = faulter.pid();
    let pid_text = pid.to_string();
    let mut args = vec!["-x", &pid_text, "--json"];
    if summary {
        args.push("--summary");
    }
    if no_latency && !untimed() {
        args.push("--no-latency");
    }
    let tracer = Tracer::start(&args);
    let printed = faulter.run(&format!("reuse-then-allocate {pages}"));
    faulter.run("touch 1");
    let done = tracer.stop();
    faulter.exit();
    let row = done
        .json()
        .into_iter()
        .find(|v| v["event"] == "summary" && v["pid"] == pid)
        .unwrap();
    // The parent's writes: 64 reuses. Its other copies are a few pages it wrote while the
    // child lived (its stack); an allocation taken for each write's would make them 64 more.
    assert!(row["reused"].as_u64().unwrap() >= pages, "{mode}: {row}");
    let copied_or_zeroed = row["copied"].as_u64().unwrap() + row["zero_fills"].as_u64().unwrap();
    assert!(copied_or_zeroed < pages / 4, "{mode}: {row}");
    if !summary {
        let base = parse_hex_after(&printed, "pages ");
        let rewrites: Vec<Value> = done
            .faults_of(pid)
            .into_iter()
            .filter(|f| {
                (base..base + pages * page_size()).contains(&address(f)) && f["cow"] == true
            })
            .collect();
        assert_eq!(rewrites.len() as u64, pages, "{mode}");
        assert!(
            rewrites.iter().all(|f| f["cow_outcome"] == "reused"),
            "{mode}: {:?}",
            rewrites.iter().find(|f| f["cow_outcome"] != "reused")
        );
    }
}

/// A process whose main thread exited (pthread_exit) while another thread runs on lives on,
/// though /proc shows its leader a zombie: cow-trace attached before keeps tracing it, and one
/// attached after traces it (neither takes the zombie leader for the process's end), each
/// counting what the kernel counts.
#[test]
fn a_process_whose_leader_exited_is_traced_on() {
    if !require_root("a_process_whose_leader_exited_is_traced_on") {
        return;
    }
    // Before 6.16 the leader's exit ends tracing in the kernel (a known limit, README): only
    // a late attach can follow the process there.
    let attach_before = exit_tracepoint_knows_group_dead();
    if !attach_before {
        skip(
            "a_process_whose_leader_exited_is_traced_on (attached before the leader's exit)",
            "sched_process_exit has no group_dead field on this kernel (before 6.16)",
        );
    }
    let mut faulter = Faulter::start();
    let pid = faulter.pid();
    let pid_text = pid.to_string();
    let before = attach_before.then(|| Tracer::start(&["-x", &pid_text, "--json"]));
    faulter.run("leader-exit");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rfind(')')
            .is_some_and(|i| stat[i + 2..].starts_with('Z'))
    }) {
        assert!(Instant::now() < deadline, "the leader never exited");
        std::thread::sleep(Duration::from_millis(5));
    }
    // Past a few of cow-trace's checks of /proc (every 100 ms).
    std::thread::sleep(Duration::from_millis(400));
    let after = Tracer::start(&["-x", &pid_text, "--json", "--resolve"]);
    let counts_before = kernel_fault_counts(pid);
    let printed = faulter.run("zero 32");
    let counts_after = kernel_fault_counts(pid);
    let (before, after) = (before.map(Tracer::stop), after.stop());
    faulter.exit();
    let base = parse_hex_after(&printed, "pages ");
    let expected = counts_after.0 - counts_before.0;
    let runs = [
        ("attached before", before.as_ref()),
        ("attached after", Some(&after)),
    ];
    for (name, done) in runs
        .into_iter()
        .filter_map(|(name, done)| Some((name, done?)))
    {
        let in_range = done
            .faults_of(pid)
            .into_iter()
            .filter(|f| (base..base + 32 * page_size()).contains(&address(f)))
            .count();
        assert_eq!(in_range, 64, "{name}: 32 reads and 32 writes");
    }
    // The process was idle (blocked in read) from the late attach to the first count.
    assert_eq!(
        after.faults_of(pid).len() as u64,
        expected,
        "the kernel's count"
    );
    let resolved = after.faults_of(pid);
    assert!(
        resolved
            .iter()
            .filter(|f| (base..base + 32 * page_size()).contains(&address(f)))
            .all(|f| f["mapping"] == "[anon]"),
        "{resolved:?}"
    );
}

/// An exec that makes a process non-dumpable (here a set-user-ID program run by another user)
/// makes the kernel drop every perf event on it:
/// cow-trace opens its events again, so its faults after that are timed, and their mappings
/// known, as any traced process's; those in between are complete, untimed.
#[test]
fn events_the_kernel_dropped_at_an_exec_are_opened_again() {
    use std::os::unix::{fs::PermissionsExt, process::CommandExt};
    let test = "events_the_kernel_dropped_at_an_exec_are_opened_again";
    if !require_root(test) {
        return;
    }
    const NOBODY: u32 = 65534;
    // A directory anyone can enter, holding a set-user-ID copy of the faulter (root's).
    let dir = std::env::temp_dir().join(format!("cow-trace-setuid-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let program = dir.join("suid-faulter");
    std::fs::copy(workload("faulter"), &program).unwrap();
    std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o4755)).unwrap();
    // A plain faulter run by nobody, which then runs the set-user-ID one in its place.
    let plain = dir.join("faulter");
    std::fs::copy(workload("faulter"), &plain).unwrap();
    std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut as_nobody = Command::new(&plain);
    as_nobody.uid(NOBODY).gid(NOBODY);
    let mut faulter = Faulter::spawn(as_nobody);
    let pid = faulter.pid();
    let pid_text = pid.to_string();
    let mut tracer = Tracer::start(&["-x", &pid_text, "--json", "--resolve", "-v"]);
    faulter.send(&format!("exec {}", program.display()));
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_link(format!("/proc/{pid}/exe")).ok().as_ref() != Some(&program) {
        assert!(
            Instant::now() < deadline,
            "the faulter never ran {program:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    wait_blocked_in_read(pid);
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    assert_eq!(exe, program, "the shell ran the faulter");
    // Run by nobody, the set-user-ID program is non-dumpable: its /proc files are root's (on a
    // file system mounted nosuid it runs as nobody, and keeps its events).
    let owner =
        std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(format!("/proc/{pid}")).unwrap());
    if owner != 0 {
        skip(
            test,
            "this kernel left the process dumpable, so it kept its events",
        );
        faulter.exit();
        let _ = tracer.stop();
        let _ = std::fs::remove_dir_all(&dir);
        return;
    }
    tracer.wait_for_stderr("its events opened again");
    let printed = faulter.run("zero 32");
    let done = tracer.stop();
    faulter.exit();
    let _ = std::fs::remove_dir_all(&dir);
    let base = parse_hex_after(&printed, "pages ");
    let all = done.faults_of(pid);
    // Between the kernel dropping the events and cow-trace opening them again, the new program
    // faulted (the loader, the dynamic linker): those faults completed, though no completion
    // event said so.
    assert!(
        all.iter().all(|f| f["type"] != "INCOMPLETE"),
        "{:?}",
        all.iter().find(|f| f["type"] == "INCOMPLETE")
    );
    let faults: Vec<Value> = all
        .into_iter()
        .filter(|f| (base..base + 32 * page_size()).contains(&address(f)))
        .collect();
    assert_eq!(faults.len(), 64, "32 reads and 32 writes");
    assert!(
        faults.iter().all(|f| f["mapping"] == "[anon]"),
        "{:?}",
        faults.iter().find(|f| f["mapping"] != "[anon]")
    );
    if !untimed() {
        assert!(
            faults.iter().all(|f| f["latency_ns"].is_u64()),
            "{:?}",
            faults.iter().find(|f| !f["latency_ns"].is_u64())
        );
    }
}

/// A child that runs another program shares no memory with its parent after its exec: the
/// parent's writes then are in no snapshot window, though the child still runs, and reuses
/// (the kernel may still copy a page something else holds a passing reference to).
#[test]
fn a_child_that_execs_ends_its_parents_window() {
    if !require_root("a_child_that_execs_ends_its_parents_window") {
        return;
    }
    let mut faulter = Faulter::start();
    let pid = faulter.pid();
    let tracer = Tracer::start(&["-x", &pid.to_string(), "--json"]);
    let printed = faulter.run("exec-child 64");
    let done = tracer.stop();
    faulter.exit();
    let base = parse_hex_after(&printed, "pages ");
    let writes: Vec<Value> = done
        .faults_of(pid)
        .into_iter()
        .filter(|f| (base..base + 64 * page_size()).contains(&address(f)) && f["cow"] == true)
        .collect();
    assert_eq!(writes.len(), 64);
    assert!(
        writes.iter().all(|f| f.get("window").is_none()),
        "{:?}",
        writes.iter().find(|f| f.get("window").is_some())
    );
    let reused = writes
        .iter()
        .filter(|f| f["cow_outcome"] == "reused")
        .count();
    assert!(reused >= 60, "{reused} of 64 writes reused");
}

/// A parent that runs helper programs beside its snapshot child (system() and popen() do, by
/// posix_spawn: a child sharing its memory; or by fork and exec) still copies for the
/// snapshot: its writes after the helpers ended are in the snapshot child's window.
#[test]
fn helpers_beside_a_snapshot_leave_its_window_open() {
    if !require_root("helpers_beside_a_snapshot_leave_its_window_open") {
        return;
    }
    let mut faulter = Faulter::start();
    let pid = faulter.pid();
    let tracer = Tracer::start(&["-x", &pid.to_string(), "--json"]);
    let printed = faulter.run("snapshot-helpers 64");
    let done = tracer.stop();
    faulter.exit();
    let base = parse_hex_after(&printed, "pages ");
    let child: u64 = field_after(&printed.join("\n"), "child ").parse().unwrap();
    let writes: Vec<Value> = done
        .faults_of(pid)
        .into_iter()
        .filter(|f| (base..base + 64 * page_size()).contains(&address(f)) && f["cow"] == true)
        .collect();
    assert_eq!(writes.len(), 64);
    assert!(
        writes
            .iter()
            .all(|f| f["cow_outcome"] == "copied" && f["window"] == child),
        "{:?}",
        writes
            .iter()
            .find(|f| f["cow_outcome"] != "copied" || f["window"] != child)
    );
}

/// --summary's maps (see reliability's summary_maps_outlast_processes_that_exited), attached
/// (-x) to a tree already forking as fast as it can: the first
/// processes to exit had run mostly before attaching and left few entries, which must not make
/// the next pass through the maps come too late for the rest.
#[test]
fn summary_maps_outlast_a_fork_storm_attached_to() {
    if !require_root("summary_maps_outlast_a_fork_storm_attached_to") {
        return;
    }
    let storm = Command::new("sh")
        .args(["-c", "while :; do /bin/true; done"])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let storm = ChildGuard::new(storm);
    std::thread::sleep(Duration::from_millis(300));
    let pid = storm.id().to_string();
    let done = Tracer::start(&["-x", &pid, "--summary", "--json", "-d", "3s"]).wait();
    drop(storm);
    let json = done.json();
    let totals = json
        .iter()
        .find(|v| v["event"] == "totals")
        .expect("no totals line");
    let processes = json.iter().filter(|v| v["event"] == "summary").count();
    assert_eq!(totals["lost"], 0, "{processes} processes: {totals}");
    assert_eq!(totals["hist_full"], 0, "{processes} processes: {totals}");
}

/// The kernel caches each thread's comm (reading it per fault costs more than a map lookup):
/// a rename after the thread's first faults must show in every fault after it.
#[test]
fn comm_follows_a_rename() {
    if !require_root("comm_follows_a_rename") {
        return;
    }
    let mut faulter = Faulter::start();
    let pid = faulter.pid();
    let tracer = Tracer::start(&["-x", &pid.to_string(), "--json"]);
    faulter.run("touch 8");
    let printed = faulter.run("rename renamed-cow 32");
    let done = tracer.stop();
    let base = parse_hex_after(&printed, "pages ");
    let faults = done.faults_of(pid);
    let (after, before): (Vec<&Value>, Vec<&Value>) = faults
        .iter()
        .partition(|f| (base..base + 32 * page_size()).contains(&address(f)));
    assert_eq!(after.len(), 32, "{after:?}");
    assert!(
        after.iter().all(|f| f["comm"] == "renamed-cow"),
        "{after:?}"
    );
    assert!(
        before.iter().any(|f| f["comm"] == "faulter"),
        "faults before the rename carry the old name: {before:?}"
    );
    faulter.exit();
}

/// --no-latency: the tracepoint backend drops its completion event, so a thread's last fault
/// waits in the kernel until the thread goes on. A thread that faults and then sleeps must
/// still have every fault reported when tracing stops, untimed, and the counts stay the
/// kernel's.
#[test]
fn no_latency_reports_a_sleeping_threads_last_fault_at_stop() {
    if !require_root("no_latency_reports_a_sleeping_threads_last_fault_at_stop") {
        return;
    }
    let mut faulter = Faulter::start();
    let pid = faulter.pid();
    let pid_text = pid.to_string();
    let mut args = vec!["-x", &pid_text, "--json", "-v"];
    if !untimed() {
        args.push("--no-latency");
    }
    let tracer = Tracer::start(&args);
    let before = kernel_fault_counts(pid);
    let printed = faulter.run("zero 32");
    wait_blocked_in_read(pid);
    let after = kernel_fault_counts(pid);
    let done = tracer.stop();
    let base = parse_hex_after(&printed, "pages ");
    let faults = done.faults_of(pid);
    let writes: Vec<&Value> = faults
        .iter()
        .filter(|f| (base..base + 32 * page_size()).contains(&address(f)) && f["access"] == "w")
        .collect();
    // The last of them was still waiting in the kernel when tracing stopped.
    assert_eq!(writes.len(), 32, "writes to the 32 pages reported");
    assert!(
        faults.iter().all(|f| f["latency_ns"].is_null()),
        "{faults:?}"
    );
    assert_eq!(
        done.counts_of(pid),
        (after.0 - before.0, after.1 - before.1)
    );
    if done.stderr.contains("backend: tracepoint") {
        assert!(
            !done.stderr.contains("PageFaultsMin"),
            "the minor-fault completion event is attached: {}",
            done.stderr
        );
    }
    faulter.exit();
}

/// --no-latency: a thread other than the leader writes pages and execs. Its id is gone after
/// execve (it takes the leader's), so its last fault, still waiting in the kernel under the
/// old id, must be reported at the exec, before the exec event, not left behind until the stop.
#[test]
fn no_latency_reports_an_exec_threads_last_fault_before_the_exec() {
    if !require_root("no_latency_reports_an_exec_threads_last_fault_before_the_exec") {
        return;
    }
    // The old leader exits during execve. Before 6.16 the exit tracepoint does not say whether
    // the thread group died, so cow-trace takes the leader's exit as the process's (a known
    // limit, README) and stops tracing it there: this kernel cannot run the test.
    if !exit_tracepoint_knows_group_dead() {
        skip(
            "no_latency_reports_an_exec_threads_last_fault_before_the_exec",
            "sched_process_exit has no group_dead field on this kernel (before 6.16), so a \
             non-leader exec ends tracing",
        );
        return;
    }
    let mut faulter = Faulter::start();
    let pid = faulter.pid();
    let pid_text = pid.to_string();
    let mut args = vec!["-x", &pid_text, "--json"];
    if !untimed() {
        args.push("--no-latency");
    }
    let tracer = Tracer::start(&args);
    // Returns once the new image waits for a command.
    let printed = faulter.run("exec-thread 16");
    let done = tracer.stop();
    let base = parse_hex_after(&printed, "pages ");
    let events = done.json();
    let exec_at = events
        .iter()
        .position(|v| v["event"] == "exec" && v["pid"] == pid)
        .unwrap_or_else(|| {
            let other: Vec<&Value> = events.iter().filter(|v| v["event"] != "fault").collect();
            panic!("no exec event of {pid}; printed {printed:?}; non-fault events {other:?}")
        });
    let writes: Vec<(usize, &Value)> = events
        .iter()
        .enumerate()
        .filter(|(_, v)| v["event"] == "fault" && v["pid"] == pid)
        .filter(|(_, f)| (base..base + 16 * page_size()).contains(&address(f)))
        .collect();
    assert_eq!(writes.len(), 16, "writes to the 16 pages reported");
    for (at, fault) in &writes {
        assert_ne!(fault["tid"], pid, "written by the second thread: {fault}");
        assert!(*at < exec_at, "reported after the exec event: {fault}");
    }
    faulter.exit();
}

/// Snapshot windows: the parent's writes while its snapshot child lives are copies, attributed
/// to "while child N ran", and the kernel-side summary agrees with the stream.
#[test]
fn snapshot_window_and_kernel_summary_agree_with_the_stream() {
    if !require_root("snapshot_window_and_kernel_summary_agree_with_the_stream") {
        return;
    }
    let mut faulter = Faulter::start();
    let pid = faulter.pid();
    let stream = Tracer::start(&["-x", &pid.to_string(), "--json"]);
    let counted = Tracer::start(&["-x", &pid.to_string(), "--json", "--summary"]);
    let before = kernel_fault_counts(pid);
    let printed = faulter.run("snapshot 128");
    faulter.run("touch 50");
    let after = kernel_fault_counts(pid);
    let stream = stream.stop();
    let counted = counted.stop();
    let child: u64 = field_after(&printed.join("\n"), "child ").parse().unwrap();
    let base = parse_hex_after(&printed, "pages ");

    // The parent's 128 writes happened during the child's life, and copied each page.
    let in_window: Vec<Value> = stream
        .faults_of(pid)
        .into_iter()
        .filter(|f| (base..base + 128 * page_size()).contains(&address(f)) && f["cow"] == true)
        .collect();
    assert_eq!(in_window.len(), 128);
    assert!(
        in_window
            .iter()
            .all(|f| f["copied"] == true && f["window"] == child),
        "{:?}",
        in_window[0]
    );

    // --summary streamed nothing per fault, and counted what the stream saw.
    assert!(counted.faults().is_empty());
    let rows = |done: &Finished, event: &str| -> Vec<Value> {
        done.json()
            .into_iter()
            .filter(|v| v["event"] == event && v["pid"] == pid)
            .collect()
    };
    for field in [
        "faults",
        "minor",
        "major",
        "writes",
        "cow",
        "copied",
        "reused",
        "incomplete",
    ] {
        assert_eq!(
            rows(&stream, "summary")[0][field],
            rows(&counted, "summary")[0][field],
            "{field}: stream vs --summary"
        );
    }
    assert_eq!(
        rows(&counted, "summary")[0]["minor"].as_u64().unwrap(),
        after.0 - before.0
    );
    let window = |done: &Finished| {
        rows(done, "window")
            .into_iter()
            .find(|w| w["child"] == child)
            .unwrap()
    };
    // The 128 pages, plus the few the parent's own stack and libc data took meanwhile.
    let copied = window(&stream)["copied"].as_u64().unwrap();
    assert!(
        (128..128 + 16).contains(&copied),
        "{copied} pages copied during the window"
    );
    assert_eq!(window(&counted)["copied"], window(&stream)["copied"]);
    assert_eq!(
        window(&counted)["copied_bytes"].as_u64().unwrap(),
        copied * page_size()
    );
    // Latency histograms come with --summary, unless faults are untimed.
    let histogram = counted
        .json()
        .iter()
        .any(|v| v["event"] == "histogram" && v["pid"] == pid);
    assert_eq!(histogram, !untimed());
    faulter.exit();
}

/// --resolve and --stack: a forked child's COW faults resolve to the anonymous mapping the
/// workload made, to code in the workload binary, with a user stack down to main.
#[test]
fn resolve_mappings_symbols_and_stacks() {
    if !require_root("resolve_mappings_symbols_and_stacks") {
        return;
    }
    let mut faulter = Faulter::start();
    let pid = faulter.pid();
    let tracer = Tracer::start(&["-x", &pid.to_string(), "--json", "--resolve", "--stack"]);
    let printed = faulter.run("cow 16");
    let done = tracer.stop();
    let base = parse_hex_after(&printed, "pages ");
    let cow: Vec<Value> = done
        .faults()
        .into_iter()
        .filter(|f| f["pid"] != pid && (base..base + 16 * page_size()).contains(&address(f)))
        .collect();
    assert_eq!(cow.len(), 16);
    for fault in &cow {
        assert_eq!(fault["mapping"], "[anon]", "{fault}");
        let symbol = fault["symbol"]
            .as_str()
            .unwrap_or_else(|| panic!("no symbol: {fault}"));
        assert!(symbol.contains("faulter"), "{symbol}");
    }
    // Each COW fault has its user stack down to main, or the kernel said it could not take
    // one (a stack-map bucket already held another stack): never a silent gap.
    let with_main = cow
        .iter()
        .filter(|f| {
            f["stack"].as_array().is_some_and(|frames| {
                frames
                    .iter()
                    .any(|frame| frame.as_str().unwrap().starts_with("main+"))
            })
        })
        .count();
    let totals = done
        .json()
        .into_iter()
        .find(|v| v["event"] == "totals")
        .unwrap();
    let failed = totals["lost_detail"]["stacks_failed"].as_u64().unwrap();
    // The 16 writes share one stack, so a bucket held by another stack fails all of them:
    // every gap must be a reported failure.
    let missing = 16 - with_main as u64;
    assert!(
        missing <= failed,
        "{missing} of 16 faults lack a stack to main, {failed} stacks reported failed: {cow:?}"
    );
    // And capture works: the parent's faults in the same run reach main too.
    let parent_with_main = done.faults_of(pid).iter().any(|f| {
        f["stack"].as_array().is_some_and(|frames| {
            frames
                .iter()
                .any(|frame| frame.as_str().unwrap().starts_with("main+"))
        })
    });
    assert!(
        with_main > 0 || parent_with_main,
        "no stack of the run reaches main"
    );
    // Faults on the workload's code resolve to its file with an offset.
    assert!(
        done.faults_of(pid).iter().any(|f| f["mapping"]
            .as_str()
            .is_some_and(|m| m.contains("faulter@0x"))),
        "no fault resolved into the faulter binary"
    );
    faulter.exit();
}

/// --summary with --stack: per-mapping rows, and the stacks that took the COW faults.
#[test]
fn kernel_summary_by_mapping_and_stack() {
    if !require_root("kernel_summary_by_mapping_and_stack") {
        return;
    }
    let mut faulter = Faulter::start();
    let pid = faulter.pid();
    let tracer = Tracer::start(&["-x", &pid.to_string(), "--json", "--summary", "--stack"]);
    faulter.run("reuse 32");
    let done = tracer.stop();
    let json = done.json();
    let anon_cow: u64 = json
        .iter()
        .filter(|v| v["event"] == "mapping" && v["pid"] == pid && v["mapping"] == "[anon]")
        .filter(|v| v["class"].as_str().unwrap().contains("cow-reused"))
        .map(|v| v["faults"].as_u64().unwrap())
        .sum();
    // The parent reuses the 32 pages it wrote after the child exited (plus, at most, a page or
    // two of its other anonymous memory, such as libc's, which the child also shared).
    assert!(
        (32..32 + 4).contains(&anon_cow),
        "{anon_cow} reuses in [anon]"
    );
    let stacks: Vec<&Value> = json.iter().filter(|v| v["event"] == "stack").collect();
    assert!(!stacks.is_empty(), "no stack lines");
    let top = stacks
        .iter()
        .max_by_key(|s| s["cow_faults"].as_u64().unwrap())
        .unwrap();
    assert!(top["cow_faults"].as_u64().unwrap() >= 32, "{top}");
    let frames = top["frames"].as_array().unwrap();
    assert!(
        frames
            .iter()
            .any(|f| f.as_str().unwrap().starts_with("main+")),
        "{top}"
    );
    faulter.exit();
}

/// --plot draws a valid SVG with the classes that occurred; its headline is the bytes copied
/// on write, as the same run's totals count them; copies and reuses are told apart; and the
/// snapshot child's life is shaded.
#[test]
fn plot_is_a_valid_svg() {
    if !require_root("plot_is_a_valid_svg") {
        return;
    }
    let svg = scratch().join(format!("plot-{}.svg", std::process::id()));
    // The parent writes 32 pages while its snapshot child lives (copies), 32 more after
    // (reuses). The shell becomes the faulter, its commands in a here-document: a pipe from
    // printf would fork a subshell, whose window (the shell writing while it lives, on a
    // loaded machine) could come first and take the place of the snapshot's label.
    let script = format!(
        "exec {} <<EOF\nsnapshot 64 32\nexit\nEOF\n",
        workload("faulter").display()
    );
    let done = Tracer::start(&[
        "--json",
        "--plot",
        svg.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        &script,
    ])
    .wait();
    assert_eq!(done.status, 0, "{}", done.stderr);
    let text = std::fs::read_to_string(&svg).unwrap();
    std::fs::remove_file(&svg).unwrap();
    let document = roxmltree::Document::parse(&text).expect("not XML");
    assert_eq!(document.root_element().tag_name().name(), "svg");
    let texts: Vec<&str> = document
        .descendants()
        .filter_map(|n| n.text())
        .map(str::trim)
        .collect();
    let has = |wanted: &str| texts.iter().any(|t| t.contains(wanted));
    for label in [
        "COW writes: copied",
        "COW writes: reused (no copy)",
        "reads and exec",
        "all pids: bytes copied",
        "a snapshot child alive",
    ] {
        assert!(has(label), "{label} missing: {texts:?}");
    }
    assert!(document.descendants().count() > 100);

    // "copied on write: 152.0 KiB (38 pages, 155648 bytes); no copy: ..."
    let headline = texts
        .iter()
        .find(|t| t.starts_with("copied on write: "))
        .unwrap_or_else(|| panic!("no headline in {texts:?}"));
    let bytes: u64 = headline
        .split(" pages, ")
        .nth(1)
        .and_then(|rest| rest.split(" bytes)").next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no byte count in {headline:?}"));
    let totals = done
        .json()
        .into_iter()
        .find(|v| v["event"] == "totals")
        .unwrap();
    assert_eq!(
        bytes,
        totals["copied_bytes"].as_u64().unwrap(),
        "{headline}"
    );
    assert!(bytes >= 32 * 4096, "{headline}");
    assert!(headline.contains(" reuses"), "{headline}");

    // The snapshot child's window: named, and shaded in each time panel.
    let child = field_after(&done.command_stdout, "child ");
    assert!(
        has(&format!("while child {child} ran")),
        "no window of child {child}: {texts:?}"
    );
    let shades = document
        .descendants()
        .filter(|n| n.has_tag_name("rect") && n.attribute("opacity") == Some("0.15"))
        .filter(|n| {
            n.attribute("height")
                .and_then(|h| h.parse::<f64>().ok())
                .is_some_and(|h| h > 20.0)
        })
        .count();
    assert!(shades >= 2, "{shades} window shades");
}

/// --fail-over-cow: the gate trips above the limit (status 7, one line why), not below, and a
/// failing command's own status wins.
#[test]
fn fail_over_cow_gates_ci() {
    if !require_root("fail_over_cow_gates_ci") {
        return;
    }
    let script = format!(
        "printf 'cow 64\\nexit\\n' | {}",
        workload("faulter").display()
    );
    let over = Tracer::start(&[
        "--fail-over-cow",
        "64KiB",
        "--json",
        "--",
        "sh",
        "-c",
        &script,
    ])
    .wait();
    assert_eq!(over.status, 7, "{}", over.stderr);
    assert!(
        over.stderr
            .contains("over the --fail-over-cow limit of 64.0 KiB"),
        "{}",
        over.stderr
    );
    let under = Tracer::start(&[
        "--fail-over-cow",
        "1GiB",
        "--json",
        "--",
        "sh",
        "-c",
        &script,
    ])
    .wait();
    assert_eq!(under.status, 0, "{}", under.stderr);
    let failing = format!("{script}; exit 3");
    let both = Tracer::start(&[
        "--fail-over-cow",
        "64KiB",
        "--json",
        "--",
        "sh",
        "-c",
        &failing,
    ])
    .wait();
    assert_eq!(both.status, 3, "{}", both.stderr);
}

/// A write to a page only read so far (the shared zero page) is a write-protect fault that fills
/// a zeroed page: neither a copy of shared memory nor a reuse, and no bytes copied.
#[test]
fn zero_page_writes_are_zero_fills_not_copies() {
    if !require_root("zero_page_writes_are_zero_fills_not_copies") {
        return;
    }
    let mut faulter = Faulter::start();
    let pid = faulter.pid();
    let tracer = Tracer::start(&["-x", &pid.to_string(), "--json"]);
    let printed = faulter.run("zero 32");
    let done = tracer.stop();
    let base = parse_hex_after(&printed, "pages ");
    let writes: Vec<Value> = done
        .faults_of(pid)
        .into_iter()
        .filter(|f| (base..base + 32 * page_size()).contains(&address(f)) && f["access"] == "w")
        .collect();
    assert_eq!(writes.len(), 32);
    assert!(
        writes
            .iter()
            .all(|f| f["cow"] == true && f["cow_outcome"] == "zero-fill" && f["copied"] == false),
        "{:?}",
        writes[0]
    );
    let summary = done
        .json()
        .into_iter()
        .find(|v| v["event"] == "summary" && v["pid"] == pid)
        .unwrap();
    assert!(summary["zero_fills"].as_u64().unwrap() >= 32, "{summary}");
    faulter.exit();
}

/// A write to the huge zero page: on kernels that replace it by a whole huge page (zeroed in
/// the fault, not with __GFP_ZERO, and allocated with __GFP_THISNODE), a zero fill all the
/// same, not a reuse; on others the kernel splits it and fills one small page.
#[test]
fn huge_zero_page_writes_are_zero_fills() {
    if !require_root("huge_zero_page_writes_are_zero_fills") {
        return;
    }
    let mut faulter = Faulter::start();
    let pid = faulter.pid();
    let tracer = Tracer::start(&["-x", &pid.to_string(), "--json"]);
    let printed = faulter.run("huge-zero");
    let done = tracer.stop();
    faulter.exit();
    let base = parse_hex_after(&printed, "pages ");
    let huge_kb: u64 = field_after(&printed.join("\n"), "huge ").parse().unwrap();
    let span = page_size() * (page_size() / 8);
    let writes: Vec<Value> = done
        .faults_of(pid)
        .into_iter()
        .filter(|f| (base..base + span).contains(&address(f)) && f["access"] == "w")
        .collect();
    assert_eq!(writes.len(), 1, "{writes:?}");
    assert_eq!(
        (
            &writes[0]["cow"],
            &writes[0]["cow_outcome"],
            &writes[0]["copied"]
        ),
        (
            &Value::from(true),
            &Value::from("zero-fill"),
            &Value::from(false)
        ),
        "{}",
        writes[0]
    );
    if huge_kb == 0 {
        skip(
            "huge_zero_page_writes_are_zero_fills",
            "no huge page was mapped (transparent huge pages off, or no huge zero page on this \
             kernel): checked as a small page's zero fill only",
        );
    }
}

// ---------------------------------------------------------------------------------------------
// File mappings

/// One faulter command on file (or shared) mappings, traced by a stream and by --summary at
/// once, after the same command on a small mapping warmed the faulter's own code and data up
/// (so that the command faults only in its mappings). The mappings are gone before either
/// tracer stops: whether a first write copied a file's page is told from the kernel's record of
/// the mapping, not from what the process has mapped when the tracer gets to it.
struct MappingRun {
    pid: u32,
    printed: Vec<String>,
    stream: Finished,
    counted: Finished,
    /// The kernel's own (minflt, majflt) increase during the command.
    kernel: (u64, u64),
}

fn trace_mapping_commands(warm_up: &[String], commands: &[String]) -> MappingRun {
    let mut faulter = Faulter::start();
    let pid = faulter.pid();
    for command in warm_up {
        faulter.run(command);
    }
    faulter.run("release");
    let stream = Tracer::start(&["-x", &pid.to_string(), "--json"]);
    let counted = Tracer::start(&["-x", &pid.to_string(), "--json", "--summary"]);
    let before = kernel_fault_counts(pid);
    let printed: Vec<String> = commands.iter().flat_map(|c| faulter.run(c)).collect();
    faulter.run("release");
    let after = kernel_fault_counts(pid);
    let stream = stream.stop();
    let counted = counted.stop();
    faulter.exit();
    MappingRun {
        pid,
        printed,
        stream,
        counted,
        kernel: (after.0 - before.0, after.1 - before.1),
    }
}

impl MappingRun {
    /// The `summary` row of the traced process, streamed or counted in the kernel.
    fn summary(&self, done: &Finished) -> Value {
        done.json()
            .into_iter()
            .find(|v| v["event"] == "summary" && v["pid"] == self.pid)
            .expect("a summary row for the workload")
    }

    /// The streamed, completed write faults in the mapping the n-th "pages ADDR" line names.
    fn writes_in(&self, nth: usize, pages: u64) -> Vec<Value> {
        let base = u64::from_str_radix(
            self.printed
                .iter()
                .filter_map(|l| l.strip_prefix("pages "))
                .nth(nth)
                .expect("a pages line"),
            16,
        )
        .unwrap();
        self.stream
            .faults_of(self.pid)
            .into_iter()
            .filter(|f| {
                (base..base + pages * 4096).contains(&address(f))
                    && f["access"] == "w"
                    && (f["type"] == "MINOR" || f["type"] == "MAJOR")
            })
            .collect()
    }

    /// Both modes count what the kernel counted (minflt, majflt) and agree on the copies.
    fn check_counts(&self) {
        for (name, done) in [("stream", &self.stream), ("--summary", &self.counted)] {
            let row = self.summary(done);
            let counts = (
                row["minor"].as_u64().unwrap(),
                row["major"].as_u64().unwrap(),
            );
            assert_eq!(counts, self.kernel, "{name} vs /proc/{}/stat", self.pid);
            assert_eq!(
                row["copied_bytes"].as_u64().unwrap(),
                row["copied"].as_u64().unwrap() * 4096,
                "{name}: {row}"
            );
            assert_eq!(done.lost(), 0, "{name}");
        }
        assert_eq!(
            self.stream.counts_of(self.pid),
            self.kernel,
            "the stream's faults"
        );
        for field in ["cow", "copied", "file_copies", "reused", "zero_fills"] {
            assert_eq!(
                self.summary(&self.stream)[field],
                self.summary(&self.counted)[field],
                "{field}: stream vs --summary"
            );
        }
    }
}

/// Mappings moved by mremap where others were unmapped (as glibc's realloc moves a large
/// block), which the kernel's mapping records do not say, followed where mappings are shown
/// (--resolve): shared anonymous memory moved onto an unmapped private file mapping is shared
/// memory, its first writes no copies; a private file mapping moved onto unmapped memory is the
/// file's, at the same offsets, its first writes copies of its pages.
#[test]
fn mappings_moved_onto_unmapped_ones_are_what_they_are_now() {
    if !require_root("mappings_moved_onto_unmapped_ones_are_what_they_are_now") {
        return;
    }
    let pages = 16;
    let file = scratch().join(format!("moved-{}", std::process::id()));
    let mut faulter = Faulter::start();
    let pid = faulter.pid();
    let tracer = Tracer::start(&["-x", &pid.to_string(), "--json", "--resolve"]);
    let printed = faulter.run(&format!("moved {} {pages}", file.display()));
    faulter.run("release");
    let done = tracer.stop();
    faulter.exit();
    let path = file.display().to_string();
    let writes_in = |nth: usize| -> Vec<Value> {
        let base = u64::from_str_radix(
            printed
                .iter()
                .filter_map(|l| l.strip_prefix("pages "))
                .nth(nth)
                .unwrap(),
            16,
        )
        .unwrap();
        done.faults_of(pid)
            .into_iter()
            .filter(|f| (base..base + pages * page_size()).contains(&address(f)))
            .collect()
    };
    let shared = writes_in(0);
    assert_eq!(shared.len() as u64, pages);
    for write in &shared {
        assert_ne!(
            write["copied"], true,
            "shared memory's first writes: {write}"
        );
        let mapping = write["mapping"].as_str().unwrap();
        assert!(!mapping.contains(&path), "the unmapped file's: {write}");
    }
    let copies = writes_in(1);
    assert_eq!(copies.len() as u64, pages);
    for (i, write) in copies.iter().enumerate() {
        assert_eq!(
            write["cow_outcome"], "copied",
            "the file's pages copied: {write}"
        );
        let offset = format!("{path}@{:#x}", i as u64 * page_size());
        assert_eq!(write["mapping"], offset.as_str(), "{write}");
    }
}

const FILE_PAGES: u64 = 1024;

/// A private file mapping of 4 MiB, its first half read, then every page written: the kernel
/// copies each of the 1024 file pages into private memory, those the reads mapped at a
/// write-protect fault, the others at their first fault (do_cow_fault). Every copy counts, in
/// the stream and in --summary, and copied_bytes is exactly 4 MiB.
fn private_file_writes_copy_every_page(cache: &str) {
    let test = format!("private_file_writes_copy_every_page_{cache}");
    if !require_root(&test) {
        return;
    }
    let file = |name: &str| scratch().join(format!("{name}-{}", std::process::id()));
    let run = trace_mapping_commands(
        &[format!("private {} 8 {cache}", file("warm").display())],
        &[format!(
            "private {} {FILE_PAGES} {cache}",
            file(&test).display()
        )],
    );
    if cache == "uncached"
        && let Some(resident) = run.printed.iter().find_map(|l| l.strip_prefix("resident "))
        && resident != "0"
    {
        skip(
            &test,
            &format!(
                "{resident} pages of the file stayed cached (the filesystem under {} keeps files in memory)",
                scratch().display()
            ),
        );
        return;
    }
    run.check_counts();
    for (name, done) in [("stream", &run.stream), ("--summary", &run.counted)] {
        let row = run.summary(done);
        assert_eq!(row["copied"], FILE_PAGES, "{name}: {row}");
        assert_eq!(row["copied_bytes"], FILE_PAGES * 4096, "{name}: {row}");
    }
    let writes = run.writes_in(0, FILE_PAGES);
    assert_eq!(writes.len() as u64, FILE_PAGES, "one write fault per page");
    assert!(
        writes
            .iter()
            .all(|f| f["copied"] == true && f["cow_outcome"] == "copied"),
        "{:?}",
        writes.iter().find(|f| f["copied"] != true)
    );
    // The pages not mapped yet were copied at their first fault, which is no write-protect one.
    let first_writes: Vec<&Value> = writes.iter().filter(|f| f["cow"] == false).collect();
    assert!(
        (FILE_PAGES / 4..FILE_PAGES).contains(&(first_writes.len() as u64)),
        "{} first writes",
        first_writes.len()
    );
    assert_eq!(
        run.summary(&run.stream)["file_copies"],
        first_writes.len() as u64
    );
    if cache == "uncached" {
        // Each of those read the file's page from the disk before copying it.
        assert!(
            first_writes.iter().all(|f| f["type"] == "MAJOR"),
            "{:?}",
            first_writes.iter().find(|f| f["type"] != "MAJOR")
        );
    }
}

#[test]
fn private_file_writes_copy_every_page_cached() {
    private_file_writes_copy_every_page("cached");
}

#[test]
fn private_file_writes_copy_every_page_uncached() {
    private_file_writes_copy_every_page("uncached");
}

/// First writes that allocate a page in shared mappings (a shared file's pages read from the
/// disk, shared anonymous memory) and first writes to private anonymous memory copy nothing.
#[test]
fn shared_and_anonymous_first_writes_copy_nothing() {
    if !require_root("shared_and_anonymous_first_writes_copy_nothing") {
        return;
    }
    let file = |name: &str| scratch().join(format!("{name}-{}", std::process::id()));
    let pages = 256;
    let run = trace_mapping_commands(
        &[
            format!("shared {} 8 uncached", file("warm-shared").display()),
            "shm 8".to_string(),
            "touch 8".to_string(),
        ],
        &[
            format!("shared {} {pages} uncached", file("shared").display()),
            format!("shared {} {pages} cached", file("shared-cached").display()),
            format!("shm {pages}"),
            format!("touch {pages}"),
        ],
    );
    run.check_counts();
    for nth in 0..3 {
        let writes = run.writes_in(nth, pages);
        assert_eq!(writes.len() as u64, pages, "mapping {nth}");
        assert!(
            writes
                .iter()
                .all(|f| f["cow"] == false && f["copied"].is_null()),
            "mapping {nth}: {:?}",
            writes.iter().find(|f| !f["copied"].is_null())
        );
    }
    for (name, done) in [("stream", &run.stream), ("--summary", &run.counted)] {
        let row = run.summary(done);
        assert_eq!(row["copied"], 0, "{name}: {row}");
        assert_eq!(row["file_copies"], 0, "{name}: {row}");
    }
}

/// Pages of a shared file mapping read, then written: the kernel write-protects a clean shared
/// page to see its first write (for writeback), so each write is a write-protect fault that
/// allocates nothing, as a reuse is; in a shared mapping it is no copy-on-write, and neither
/// mode counts it as one.
#[test]
fn shared_file_writes_after_reads_are_no_copy_on_write() {
    if !require_root("shared_file_writes_after_reads_are_no_copy_on_write") {
        return;
    }
    let file = |name: &str| scratch().join(format!("{name}-{}", std::process::id()));
    let pages = 256;
    let run = trace_mapping_commands(
        &[format!("shared-reread {} 8", file("warm-reread").display())],
        &[format!(
            "shared-reread {} {pages}",
            file("reread").display()
        )],
    );
    run.check_counts();
    let writes = run.writes_in(0, pages);
    assert_eq!(writes.len() as u64, pages);
    assert!(
        writes
            .iter()
            .all(|f| f["error_code"].as_u64().is_none_or(|e| e & 1 == 1)),
        "the writes are write-protect faults: {:?}",
        writes[0]
    );
    assert!(
        writes
            .iter()
            .all(|f| f["cow"] == false && f["copied"].is_null()),
        "{:?}",
        writes.iter().find(|f| f["cow"] != false)
    );
    for (name, done) in [("stream", &run.stream), ("--summary", &run.counted)] {
        let row = run.summary(done);
        for count in ["cow", "copied", "reused", "file_copies"] {
            assert_eq!(row[count], 0, "{name}: {count}: {row}");
        }
    }
}

/// Pages of a private file mapping, copied at their first writes, pushed out to swap, then
/// written again: each write reads its page back from swap (a page allocated at a write to a
/// page not present, as a first write's copy is), and copies nothing. The handle_mm_fault
/// backends see the swap-in (`do_swap_page`) and count no copy; the tracepoint backend cannot
/// tell, and says so at the end of the run.
#[test]
fn private_file_pages_read_back_from_swap_are_no_copies() {
    let test = "private_file_pages_read_back_from_swap_are_no_copies";
    if !require_root(test) {
        return;
    }
    let swap_on = std::fs::read_to_string("/proc/swaps").is_ok_and(|s| s.lines().count() > 1);
    if !swap_on {
        skip(test, "no swap area is on (the VM tests turn one on)");
        return;
    }
    let pages = 64;
    let file = scratch().join(format!("swapped-{}", std::process::id()));
    let mut faulter = Faulter::start();
    let pid = faulter.pid();
    faulter.run("pin");
    let printed = faulter.run(&format!("private {} {pages} cached", file.display()));
    let base = parse_hex_after(&printed, "pages ");
    let swapped: u64 = field_after(&faulter.run("pageout").join("\n"), "swapped ")
        .parse()
        .unwrap();
    if swapped != pages {
        faulter.run("release");
        skip(
            test,
            &format!(
                "MADV_PAGEOUT left {} of {pages} pages in memory",
                pages - swapped
            ),
        );
        return;
    }
    let tracer = Tracer::start(&["-x", &pid.to_string(), "--json"]);
    let before = kernel_fault_counts(pid);
    faulter.run("rewrite");
    let after = kernel_fault_counts(pid);
    let done = tracer.stop();
    faulter.run("release");
    faulter.exit();
    assert_eq!(
        done.counts_of(pid),
        (after.0 - before.0, after.1 - before.1),
        "cow-trace vs /proc/{pid}/stat"
    );
    let writes: Vec<Value> = done
        .faults_of(pid)
        .into_iter()
        .filter(|f| (base..base + pages * 4096).contains(&address(f)) && f["access"] == "w")
        .collect();
    assert_eq!(writes.len() as u64, pages, "one write fault per page");
    assert!(
        writes.iter().any(|f| f["type"] == "MAJOR"),
        "no page was read back from swap: {:?}",
        writes[0]
    );
    let json = done.json();
    let backend = json
        .iter()
        .find(|v| v["event"] == "totals")
        .map(|v| v["backend"].as_str().unwrap().to_string())
        .unwrap();
    let summary = json
        .iter()
        .find(|v| v["event"] == "summary" && v["pid"] == pid)
        .unwrap();
    let noted = done.stderr.contains("swap is on");
    if backend == "tracepoint" {
        // Pages read back are taken for copies of the file's pages: said, not hidden.
        assert_eq!(
            noted,
            summary["file_copies"].as_u64().unwrap() > 0,
            "{}",
            done.stderr
        );
    } else {
        assert!(
            writes.iter().all(|f| f["copied"].is_null()),
            "{backend}: a page read back from swap counted as copied: {:?}",
            writes.iter().find(|f| !f["copied"].is_null())
        );
        assert_eq!(summary["copied"], 0, "{backend}: {summary}");
        assert!(!noted, "{}", done.stderr);
    }
}

// ---------------------------------------------------------------------------------------------
// --interval

const INTERVAL: &str = "300ms";

/// Drives a faulter through a burst of writes, a quiet stretch longer than two intervals, and a
/// second burst, under cow-trace with `args` and --interval.
fn trace_two_bursts(args: &[&str]) -> (u32, Finished) {
    let mut faulter = Faulter::start();
    let pid = faulter.pid();
    let pid_arg = pid.to_string();
    let mut all = vec!["-x", pid_arg.as_str(), "--interval", INTERVAL];
    all.extend_from_slice(args);
    let tracer = Tracer::start(&all);
    let pause = || std::thread::sleep(std::time::Duration::from_millis(750));
    pause();
    faulter.run("touch 100");
    pause();
    faulter.run("touch 60");
    pause();
    let done = tracer.stop();
    faulter.exit();
    (pid, done)
}

/// JSON --interval: an `interval` line per interval, with its time and length, holding that
/// interval's counts only (they add up to the totals, which come once, last).
fn check_json_intervals(pid: u32, done: &Finished) {
    assert_eq!(done.status, 0, "{}", done.stderr);
    let json = done.json();
    let events: Vec<&str> = json.iter().map(|v| v["event"].as_str().unwrap()).collect();
    assert_eq!(
        events.iter().filter(|e| **e == "totals").count(),
        1,
        "{events:?}"
    );
    assert_eq!(events.last(), Some(&"totals"));
    let last_interval = events.iter().rposition(|e| *e == "interval").unwrap();
    let first_summary = events.iter().position(|e| *e == "summary").unwrap();
    assert!(
        last_interval < first_summary,
        "the totals follow the last interval: {events:?}"
    );
    let intervals: Vec<&Value> = json.iter().filter(|v| v["event"] == "interval").collect();
    assert!(intervals.len() >= 6, "{} intervals", intervals.len());
    for pair in intervals.windows(2) {
        let end = pair[0]["ts_ns"].as_u64().unwrap();
        let (ts, length) = (
            pair[1]["ts_ns"].as_u64().unwrap(),
            pair[1]["interval_ns"].as_u64().unwrap(),
        );
        assert_eq!(
            ts - length,
            end,
            "each interval starts where the last ended"
        );
        assert!(
            pair[1]["time"].as_str().unwrap().ends_with('Z'),
            "{}",
            pair[1]
        );
    }
    let of_pid = |interval: &Value, field: &str| -> u64 {
        interval["pids"]
            .as_array()
            .unwrap()
            .iter()
            .find(|row| row["pid"] == pid)
            .map_or(0, |row| row[field].as_u64().unwrap())
    };
    let summary = json
        .iter()
        .find(|v| v["event"] == "summary" && v["pid"] == pid)
        .unwrap();
    for field in ["faults", "writes", "minor"] {
        let summed: u64 = intervals.iter().map(|i| of_pid(i, field)).sum();
        assert_eq!(
            summed,
            summary[field].as_u64().unwrap(),
            "{field}: the intervals add up to the totals"
        );
    }
    let writes: Vec<u64> = intervals.iter().map(|i| of_pid(i, "writes")).collect();
    check_bursts(&writes);
    let total: u64 = intervals
        .iter()
        .map(|i| i["faults"].as_u64().unwrap())
        .sum();
    assert_eq!(total, json.last().unwrap()["faults"].as_u64().unwrap());
}

/// Writes per interval show the two bursts apart, with quiet (empty) intervals between them:
/// cumulative reports would never drop back to zero. (Untimed, a thread's last fault is
/// counted at its next fault, or at the end: in the next burst, or a third run of one write.)
fn check_bursts(writes: &[u64]) {
    let runs: Vec<u64> = writes
        .split(|&w| w == 0)
        .filter(|run| !run.is_empty())
        .map(|run| run.iter().sum())
        .collect();
    assert!(
        runs.len() >= 2 && runs[0] >= 99 && runs[1] >= 59,
        "writes per interval: {writes:?}"
    );
}

#[test]
fn json_intervals_count_their_own_interval() {
    if !require_root("json_intervals_count_their_own_interval") {
        return;
    }
    let (pid, done) = trace_two_bursts(&["--json"]);
    check_json_intervals(pid, &done);
}

#[test]
fn json_summary_intervals_count_their_own_interval() {
    if !require_root("json_summary_intervals_count_their_own_interval") {
        return;
    }
    let (pid, done) = trace_two_bursts(&["--json", "--summary"]);
    check_json_intervals(pid, &done);
}

/// Text reports split at their `--- TIME what: FROM s to TO s since start ---` headers: (header,
/// the report's lines).
fn text_reports(text: &str) -> Vec<(String, Vec<String>)> {
    let mut reports: Vec<(String, Vec<String>)> = Vec::new();
    for line in text.lines() {
        if line.starts_with("--- ") {
            reports.push((line.to_string(), Vec::new()));
        } else if let Some((_, lines)) = reports.last_mut() {
            lines.push(line.to_string());
        }
    }
    reports
}

/// A report's FAULTS and WRITES for `pid` (0 without a row).
fn text_counts(lines: &[String], pid: u32) -> (u64, u64) {
    let prefix = format!("{pid} ");
    lines
        .iter()
        .map(|line| line.trim_start())
        .find(|line| line.starts_with(&prefix))
        .map_or((0, 0), |line| {
            let columns: Vec<&str> = line.split_whitespace().collect();
            (columns[2].parse().unwrap(), columns[5].parse().unwrap())
        })
}

/// Text --interval: each report headed by its time, what it counts and its span; per interval
/// counts that add up to the cumulative totals, which come once, last.
fn check_text_intervals(pid: u32, reports: &[(String, Vec<String>)]) {
    let (totals, intervals) = reports.split_last().expect("no reports");
    assert!(
        totals.0.contains(" cumulative totals: 0.000 s to "),
        "{}",
        totals.0
    );
    assert!(intervals.len() >= 6, "{} intervals", intervals.len());
    let mut end = "0.000 s".to_string();
    for (header, _) in intervals {
        // "--- 12:00:01.500 per interval: 1.000 s to 1.500 s since start ---"
        let words: Vec<&str> = header.split_whitespace().collect();
        assert_eq!(words[1].len(), "12:00:01.500".len(), "{header}");
        assert_eq!(words[2..4], ["per", "interval:"], "{header}");
        assert_eq!(format!("{} s", words[4]), end, "{header}");
        end = format!("{} s", words[7]);
    }
    let writes: Vec<u64> = intervals
        .iter()
        .map(|(_, lines)| text_counts(lines, pid).1)
        .collect();
    let faults: u64 = intervals
        .iter()
        .map(|(_, lines)| text_counts(lines, pid).0)
        .sum();
    assert_eq!(faults, text_counts(&totals.1, pid).0, "{writes:?}");
    assert_eq!(
        writes.iter().sum::<u64>(),
        text_counts(&totals.1, pid).1,
        "{writes:?}"
    );
    check_bursts(&writes);
}

#[test]
fn text_summary_intervals_are_headed_and_per_interval() {
    if !require_root("text_summary_intervals_are_headed_and_per_interval") {
        return;
    }
    let (pid, done) = trace_two_bursts(&["--summary"]);
    assert_eq!(done.status, 0, "{}", done.stderr);
    let reports = text_reports(&done.output);
    check_text_intervals(pid, &reports);
    // The mappings and histograms come once, with the totals.
    let mapping_headers = done
        .output
        .lines()
        .filter(|l| l.contains("MAPPING"))
        .count();
    assert_eq!(mapping_headers, 1, "{}", done.output);
    assert!(
        reports
            .last()
            .unwrap()
            .1
            .iter()
            .any(|l| l.contains("MAPPING"))
    );
}

#[test]
fn text_stream_intervals_go_to_stderr_headed_and_per_interval() {
    if !require_root("text_stream_intervals_go_to_stderr_headed_and_per_interval") {
        return;
    }
    let (pid, done) = trace_two_bursts(&[]);
    assert_eq!(done.status, 0, "{}", done.stderr);
    assert!(
        !done.output.lines().any(|l| l.starts_with("--- ")),
        "the event stream stays pure event lines"
    );
    check_text_intervals(pid, &text_reports(&done.stderr));
}

/// The kernel side's diagnostics reach the user with -v, and only then. More distinct user
/// stacks than --stack=fp's map has buckets (16384) make the kernel refuse at least the
/// surplus (at most one stack per bucket): it counts each refusal, as the map's, and, with
/// -v, logs the first. (The faults are reads: every fault's stack is asked for.)
#[test]
fn kernel_diagnostics_are_shown_with_verbose_only() {
    if !require_root("kernel_diagnostics_are_shown_with_verbose_only") {
        return;
    }
    for verbose in [true, false] {
        let mut faulter = Faulter::start();
        let pid = faulter.pid().to_string();
        let mut args = vec![
            "-x",
            &pid,
            "--json",
            "--summary",
            "--stack=fp",
            "--stack-faults",
            "all",
        ];
        if verbose {
            args.push("-v");
        }
        let tracer = Tracer::start(&args);
        faulter.run("stacks 32768");
        let done = tracer.stop();
        faulter.exit();
        let totals = done
            .json()
            .into_iter()
            .find(|v| v["event"] == "totals")
            .expect("no totals line");
        let failed = totals["lost_detail"]["stacks_failed"].as_u64().unwrap();
        assert!(failed >= 32768 - 16384, "{failed} stacks not captured");
        let map_full = totals["lost_detail"]["stacks_lost"]["map_full"]
            .as_u64()
            .unwrap();
        assert_eq!(map_full, failed, "every refusal is the map's");
        let logged = done
            .stderr
            .lines()
            .any(|l| l.contains("cow-trace: kernel: a user stack was not captured"));
        assert_eq!(logged, verbose, "-v: {verbose}, stderr: {}", done.stderr);
    }
}

/// A --folded file: (stack, count) per line, the stack root first.
fn read_folded(path: &std::path::Path) -> Vec<(String, u64)> {
    let text = std::fs::read_to_string(path).unwrap();
    std::fs::remove_file(path).unwrap();
    text.lines()
        .map(|line| {
            let (stack, count) = line
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("not folded: {line:?}"));
            (stack.to_string(), count.parse().unwrap())
        })
        .collect()
}

fn folded_sum<'a>(lines: impl IntoIterator<Item = &'a (String, u64)>) -> u64 {
    lines.into_iter().map(|(_, count)| count).sum()
}

/// --flamegraph and --folded, streaming and --summary: a snapshot's copies stand under the
/// process and its window ("while child N ran"), by stack, and the folded counts add up to the
/// copies the same run counted. Without -g the stacks are captured for the graph only.
#[test]
fn flame_graph_of_a_snapshot_adds_up_in_both_modes() {
    if !require_root("flame_graph_of_a_snapshot_adds_up_in_both_modes") {
        return;
    }
    // One run per mode, one after the other: with --no-latency, a tracer's pending fault ends
    // at a nested kernel-mode fault, such as another tracer's user-stack walk causes.
    flame_graph_of_a_snapshot(&[]);
    flame_graph_of_a_snapshot(&["--summary"]);
}

fn flame_graph_of_a_snapshot(mode: &[&str]) {
    let mut faulter = Faulter::start();
    let pid = faulter.pid();
    let file = |name: &str| {
        scratch().join(format!(
            "flame-{}-{}.{name}",
            std::process::id(),
            mode.len()
        ))
    };
    let (svg, folded) = (file("svg"), file("folded"));
    let pid_arg = pid.to_string();
    let mut args = vec!["-x", &pid_arg, "--json", "--flamegraph"];
    args.extend([svg.to_str().unwrap(), "--folded", folded.to_str().unwrap()]);
    args.extend(mode);
    let tracer = Tracer::start(&args);
    let printed = faulter.run("snapshot 128");
    faulter.run("cow 16");
    let done = tracer.stop();
    faulter.exit();
    let child: u64 = field_after(&printed.join("\n"), "child ").parse().unwrap();
    let json = done.json();

    // -g was not given: no event line or summary line shows a stack.
    assert!(
        json.iter()
            .all(|v| v.get("stack").is_none() && v["event"] != "stack"),
        "{mode:?}: a stack was shown without -g"
    );

    let lines = read_folded(&folded);
    let copied: u64 = json
        .iter()
        .filter(|v| v["event"] == "summary")
        .map(|v| v["copied"].as_u64().unwrap())
        .sum();
    assert_eq!(folded_sum(&lines), copied, "{mode:?}: folded vs copied");

    // The parent's copies while the snapshot child lived stand under that window.
    let window = format!("faulter ({pid});while child {child} ran;");
    let in_window: Vec<&(String, u64)> = lines
        .iter()
        .filter(|(stack, _)| stack.starts_with(&window))
        .collect();
    let window_copied = json
        .iter()
        .find(|v| v["event"] == "window" && v["pid"] == pid && v["child"] == child)
        .unwrap_or_else(|| panic!("{mode:?}: no window line"))["copied"]
        .as_u64()
        .unwrap();
    assert_eq!(
        folded_sum(in_window.iter().copied()),
        window_copied,
        "{mode:?}: {lines:?}"
    );
    // The 128 writes come from one loop: one stack, down to main, or one the kernel said it
    // could not take.
    let (top, count) = in_window
        .iter()
        .max_by_key(|(_, n)| n)
        .unwrap_or_else(|| panic!("{mode:?}: nothing under {window:?}: {lines:?}"));
    assert!(*count >= 128, "{mode:?}: {in_window:?}");
    let stacks_failed = json.last().unwrap()["lost_detail"]["stacks_failed"]
        .as_u64()
        .unwrap();
    assert!(
        top.split(';').any(|frame| frame == "main")
            || (top.ends_with(";[stack not taken]") && stacks_failed > 0),
        "{mode:?}: {top}"
    );

    // The SVG parses, with the process's root frame and the window in its tooltips.
    let text = std::fs::read_to_string(&svg).unwrap();
    std::fs::remove_file(&svg).unwrap();
    // inferno writes the SVG 1.1 DOCTYPE.
    let options = roxmltree::ParsingOptions {
        allow_dtd: true,
        ..Default::default()
    };
    let document = roxmltree::Document::parse_with_options(&text, options)
        .unwrap_or_else(|e| panic!("{mode:?}: not XML: {e}"));
    assert_eq!(document.root_element().tag_name().name(), "svg");
    let titles: Vec<&str> = document
        .descendants()
        .filter(|n| n.has_tag_name("title"))
        .filter_map(|n| n.text())
        .collect();
    let root = format!("faulter ({pid}) (");
    let window = format!("while child {child} ran (");
    for wanted in [&root, &window] {
        assert!(
            titles.iter().any(|t| t.starts_with(wanted.as_str())),
            "{mode:?}: no {wanted:?} frame in {titles:?}"
        );
    }
    assert!(
        titles.iter().any(|t| t.contains(" bytes copied, ")),
        "{mode:?}: {titles:?}"
    );
}

/// --flame-faults all: every fault of the process, as many as the kernel itself counted.
#[test]
fn flame_graph_of_all_faults_counts_what_the_kernel_counted() {
    if !require_root("flame_graph_of_all_faults_counts_what_the_kernel_counted") {
        return;
    }
    let mut faulter = Faulter::start();
    let pid = faulter.pid();
    let folded = scratch().join(format!("flame-{}-all.folded", std::process::id()));
    let tracer = Tracer::start(&[
        "-x",
        &pid.to_string(),
        "--summary",
        "--flame-faults",
        "all",
        "--folded",
        folded.to_str().unwrap(),
    ]);
    let before = kernel_fault_counts(pid);
    faulter.run("touch 64");
    faulter.run("read 32");
    let after = kernel_fault_counts(pid);
    let done = tracer.stop();
    faulter.exit();
    assert_eq!(done.status, 0, "{}", done.stderr);
    let root = format!("faulter ({pid});");
    let lines = read_folded(&folded);
    let own = lines.iter().filter(|(stack, _)| stack.starts_with(&root));
    assert_eq!(
        folded_sum(own),
        (after.0 + after.1) - (before.0 + before.1),
        "{lines:?}"
    );
}
