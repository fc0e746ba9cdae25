//! End-to-end tests that really load the eBPF programs and really fault pages. They need root
//! (CI runs as root); elsewhere each says why it skips.
mod common;
#[path = "privileged/history.rs"]
mod history;

use std::{
    collections::BTreeSet,
    io::{BufRead, BufReader, Write},
    process::{Command, Stdio},
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
        .filter(|f| address(f) >> 12 == buf >> 12 && f["cow"] == true && f["access"] == "w")
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
        .filter(|f| address(f) >> 12 == buf >> 12)
        .collect();
    assert!(on_buf.is_empty(), "{on_buf:?}");
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
    let in_range = |f: &&Value| (base..base + 64 * 4096).contains(&address(f));
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
    let pages: BTreeSet<u64> = cow.iter().map(|f| address(f) >> 12).collect();
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

/// -- CMD: the command is held until the probes are attached (its very first faults after exec
/// are seen), and its exit status is passed through.
#[test]
fn held_command_is_traced_from_exec_and_its_status_passed_through() {
    if !require_root("held_command_is_traced_from_exec_and_its_status_passed_through") {
        return;
    }
    let done = Tracer::start(&["--json", "--", "sh", "-c", "exit 7"]).wait();
    assert_eq!(done.status, 7, "{}", done.stderr);
    let faults = done.faults();
    assert!(!faults.is_empty());
    // The dynamic loader's first instruction fetches are among them: nothing after exec missed.
    assert!(
        faults.iter().any(|f| f["access"] == "x"),
        "no instruction-fetch faults seen"
    );
    assert!(
        faults
            .iter()
            .all(|f| f["comm"] == "sh" || f["comm"] == "cow-trace")
    );
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
    let in_range = |f: &Value| (base..base + 64 * 4096).contains(&address(f));
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
        .partition(|f| (base..base + 32 * 4096).contains(&address(f)));
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
        .filter(|f| (base..base + 32 * 4096).contains(&address(f)) && f["access"] == "w")
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
    let format = "/sys/kernel/tracing/events/sched/sched_process_exit/format";
    if !std::fs::read_to_string(format).is_ok_and(|f| f.contains("group_dead")) {
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
        .filter(|(_, f)| (base..base + 16 * 4096).contains(&address(f)))
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
        .filter(|f| (base..base + 128 * 4096).contains(&address(f)) && f["cow"] == true)
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
        copied * 4096
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
        .filter(|f| f["pid"] != pid && (base..base + 16 * 4096).contains(&address(f)))
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

/// --plot draws a valid SVG with the classes that occurred.
#[test]
fn plot_is_a_valid_svg() {
    if !require_root("plot_is_a_valid_svg") {
        return;
    }
    let svg = scratch().join(format!("plot-{}.svg", std::process::id()));
    let script = format!(
        "printf 'cow 64\\nexit\\n' | {}",
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
    let texts: Vec<&str> = document.descendants().filter_map(|n| n.text()).collect();
    for label in ["COW writes", "reads and exec"] {
        assert!(
            texts.iter().any(|t| t.contains(label)),
            "{label} missing: {texts:?}"
        );
    }
    assert!(document.descendants().count() > 100);
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
        .filter(|f| (base..base + 32 * 4096).contains(&address(f)) && f["access"] == "w")
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
