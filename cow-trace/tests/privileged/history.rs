//! Mappings and symbols that outlive the process: faults of processes that exited before
//! cow-trace looked, of a binary deleted while it ran and of a library unloaded before exit
//! still resolve, from the kernel's records of each mapping; and the history of a process
//! that maps and unmaps 100 000 regions stays within its bound.
use std::{
    io::Write as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{address, common::*};

/// The `LABEL START END` range a workload printed.
fn printed_range(stdout: &str, label: &str) -> std::ops::Range<u64> {
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{label} ")))
        .unwrap_or_else(|| panic!("no {label:?} line in {stdout:?}"));
    let mut bounds = line
        .split_whitespace()
        .map(|hex| u64::from_str_radix(hex, 16).unwrap());
    bounds.next().unwrap()..bounds.next().unwrap()
}

fn frames(fault: &Value) -> Vec<&str> {
    fault["stack"]
        .as_array()
        .map(|frames| frames.iter().map(|f| f.as_str().unwrap()).collect())
        .unwrap_or_default()
}

/// No fault of the program `comm` (after its exec) is in an unknown mapping. (Before, the held
/// command is cow-trace's fork, and the handle_mm_fault backends see execve() copy the
/// arguments into the new program's stack before any record of it: unknown, rightly.)
fn assert_none_unknown(done: &Finished, comm: &str) {
    let unknown: Vec<Value> = done
        .faults()
        .into_iter()
        .filter(|f| f["comm"] == comm && f["mapping"] == "[unknown]")
        .collect();
    assert!(unknown.is_empty(), "{unknown:?}");
}

/// No --summary mapping row but those of kernel-mode faults (execve() copying arguments, as
/// above) is unknown.
fn assert_no_unknown_rows(json: &[Value]) {
    let unknown: Vec<&Value> = json
        .iter()
        .filter(|v| v["event"] == "mapping" && v["mapping"] == "[unknown]")
        .filter(|v| !v["class"].as_str().unwrap().contains("kernel"))
        .collect();
    assert!(unknown.is_empty(), "{unknown:?}");
}

/// Every stack of the run's table with at least `cow_faults` is resolved: each frame has its
/// function or, where the file has no symbol for it (libc's local ones, without debug files),
/// at least its mapping; no bare address.
fn assert_top_stacks_symbolized(done: &Finished, cow_faults: u64) {
    let bare: Vec<Value> = done
        .json()
        .into_iter()
        .filter(|v| v["event"] == "stack" && v["cow_faults"].as_u64().unwrap() >= cow_faults)
        .filter(|v| {
            v["frames"].as_array().unwrap().iter().any(|f| {
                let frame = f.as_str().unwrap();
                frame.starts_with("0x") && !frame.contains(" (")
            })
        })
        .collect();
    assert!(bare.is_empty(), "{bare:?}");
}

fn totals(done: &Finished) -> Value {
    done.json()
        .into_iter()
        .find(|v| v["event"] == "totals")
        .expect("no totals line")
}

/// The (parent, child) pids of the one fork of a run.
fn parent_and_child(done: &Finished) -> (u32, u32) {
    let fork = done
        .json()
        .into_iter()
        .find(|v| v["event"] == "fork")
        .expect("no fork event");
    (
        fork["pid"].as_u64().unwrap() as u32,
        fork["child"].as_u64().unwrap() as u32,
    )
}

/// A frame `FUNCTION+0x.. (MODULE)` is in `stack`.
fn has_frame(stack: &[&str], function: &str, module: &Path) -> bool {
    let module = format!("({})", module.display());
    stack
        .iter()
        .any(|frame| frame.starts_with(&format!("{function}+0x")) && frame.ends_with(&module))
}

/// The workload: a child that writes 300 inherited pages three calls deep and exits at
/// once, the parent writing them again and exiting right after; both gone long before
/// cow-trace's first look at /proc. Streaming, every COW fault of each is in `[anon]` and its
/// stack reaches `main` in the workload binary, the write inlined into `level3` at the top.
#[test]
fn short_lived_processes_resolve_after_they_exit() {
    if !require_root("short_lived_processes_resolve_after_they_exit") {
        return;
    }
    let binary = workload("fork_deep");
    let done = Tracer::start(&[
        "--json",
        "--resolve",
        "--stack",
        "--",
        binary.to_str().unwrap(),
    ])
    .wait();
    assert_eq!(done.status, 0, "{}", done.stderr);
    let pages = printed_range(&done.command_stdout, "pages");
    let (parent, child) = parent_and_child(&done);
    let stacks_failed = totals(&done)["lost_detail"]["stacks_failed"]
        .as_u64()
        .unwrap();
    // The child's writes copy; the parent's, after the child is gone, mostly reuse, but a page
    // the kernel still holds a reference to (a per-CPU batch) is copied: either is right.
    for pid in [child, parent] {
        let cow: Vec<Value> = done
            .faults_of(pid)
            .into_iter()
            .filter(|f| f["cow"] == true && pages.contains(&address(f)))
            .collect();
        assert_eq!(cow.len(), 300, "pid {pid}: {cow:?}");
        let mut without_stack = 0;
        for fault in &cow {
            assert_eq!(fault["mapping"], "[anon]", "{fault}");
            let symbol = fault["symbol"].as_str().unwrap_or_default();
            assert!(
                symbol.starts_with("touch (inlined) level3+0x") && symbol.contains("fork_deep)"),
                "{fault}"
            );
            let stack = frames(fault);
            if stack.is_empty() {
                without_stack += 1;
                continue;
            }
            assert_eq!(stack[0], "touch (inlined)", "{fault}");
            for function in ["level3", "level2", "level1", "main"] {
                assert!(has_frame(&stack, function, &binary), "{function}: {fault}");
            }
        }
        // A stack the kernel could not take is reported as such, never silently missing.
        assert!(
            without_stack <= stacks_failed,
            "{without_stack} faults of pid {pid} without a stack, {stacks_failed} reported"
        );
    }
    assert_none_unknown(&done, "fork_deep");
    // The table at the end too, when both are long gone.
    assert_top_stacks_symbolized(&done, 300);
}

/// The same workload with --summary -g: the kernel's counts are resolved at the end, when
/// both processes are long gone.
#[test]
fn short_lived_processes_resolve_in_the_kernel_summary() {
    if !require_root("short_lived_processes_resolve_in_the_kernel_summary") {
        return;
    }
    let binary = workload("fork_deep");
    let done = Tracer::start(&[
        "--json",
        "--summary",
        "--stack",
        "--",
        binary.to_str().unwrap(),
    ])
    .wait();
    assert_eq!(done.status, 0, "{}", done.stderr);
    let json = done.json();
    let summaries: Vec<&Value> = json.iter().filter(|v| v["event"] == "summary").collect();
    assert_eq!(summaries.len(), 2, "{summaries:?}");
    for summary in summaries {
        // Each process's COW writes of the 300 pages (plus, at most, a few other pages of
        // anonymous memory that libc wrote): all in [anon].
        let pid = &summary["pid"];
        let in_anon: u64 = json
            .iter()
            .filter(|v| v["event"] == "mapping" && v["pid"] == *pid && v["mapping"] == "[anon]")
            .filter(|v| v["class"].as_str().unwrap().starts_with("w MINOR cow-"))
            .map(|v| v["faults"].as_u64().unwrap())
            .sum();
        assert!((300..308).contains(&in_anon), "pid {pid}: {in_anon}");
    }
    assert_no_unknown_rows(&json);
    let deep: Vec<&Value> = json
        .iter()
        .filter(|v| v["event"] == "stack" && v["cow_faults"].as_u64().unwrap() >= 300)
        .collect();
    let failed =
        json.iter().find(|v| v["event"] == "totals").unwrap()["lost_detail"]["stacks_failed"]
            .as_u64()
            .unwrap();
    // One stack per process takes the 300 writes, unless the kernel said it could not take it.
    assert!(deep.len() == 2 || failed > 0, "{deep:?}");
    assert!(!deep.is_empty(), "no stack took the writes: {json:?}");
    for stack in deep {
        let frames: Vec<&str> = stack["frames"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f.as_str().unwrap())
            .collect();
        assert_eq!(frames[0], "touch (inlined)", "{stack}");
        for function in ["level3", "level2", "level1", "main"] {
            assert!(has_frame(&frames, function, &binary), "{function}: {stack}");
        }
    }
}

/// Waits until cow-trace (pid `tracer`) holds `path` open.
fn wait_until_held(tracer: u32, path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if holds(tracer, path) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "cow-trace never opened {}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The same workload drawn as a flame graph (`--folded`, every fault), streaming and with
/// --summary: each process's tower holds its writes of the 300 pages under the workload's own
/// functions, named, though both processes were gone long before the graph was drawn.
#[test]
fn short_lived_processes_in_the_flame_graph() {
    if !require_root("short_lived_processes_in_the_flame_graph") {
        return;
    }
    let binary = workload("fork_deep");
    for mode in [&[][..], &["--summary"][..]] {
        let folded = scratch().join(format!(
            "fork-deep-{}-{}.folded",
            std::process::id(),
            mode.len()
        ));
        let mut args = vec!["--json", "--flame-faults", "all", "--folded"];
        args.push(folded.to_str().unwrap());
        args.extend(mode);
        args.extend(["--", binary.to_str().unwrap()]);
        let done = Tracer::start(&args).wait();
        assert_eq!(done.status, 0, "{mode:?}: {}", done.stderr);
        let text = std::fs::read_to_string(&folded).unwrap();
        std::fs::remove_file(&folded).unwrap();
        let stacks_failed = totals(&done)["lost_detail"]["stacks_failed"]
            .as_u64()
            .unwrap();
        let pids: Vec<u64> = done
            .json()
            .into_iter()
            .filter(|v| v["event"] == "summary" && v["comm"] == "fork_deep")
            .map(|v| v["pid"].as_u64().unwrap())
            .collect();
        assert_eq!(pids.len(), 2, "{mode:?}: {}", done.output);
        let mut named = 0;
        for pid in pids {
            // `fork_deep (PID);[while child N ran;]...;main;level1;level2;level3;touch COUNT`:
            // the write is inlined into level3, and is its own frame.
            let root = format!("fork_deep ({pid});");
            // The faults of this process whose stack ends in `leaf`.
            let ending_in = |leaf: &str| -> u64 {
                text.lines()
                    .filter(|line| line.starts_with(&root))
                    .filter_map(|line| line.rsplit_once(' '))
                    .filter(|(stack, _)| stack.ends_with(leaf))
                    .map(|(_, count)| count.parse::<u64>().unwrap())
                    .sum()
            };
            let deep = ending_in(";main;level1;level2;level3;touch");
            // A frame-pointer walk the kernel could not take (bpf_get_stackid failing) is
            // counted and shown as such, never as another stack.
            let not_taken = ending_in(";[stack not taken]");
            assert!(
                deep >= 300 || (stacks_failed > 0 && deep + not_taken >= 300),
                "{mode:?}: pid {pid}: {deep} faults under level3, {not_taken} not taken: {text}"
            );
            named += usize::from(deep > 0);
        }
        assert!(named > 0, "{mode:?}: no process has a named stack: {text}");
    }
}

/// Whether cow-trace (pid `tracer`) holds `path` open now.
fn holds(tracer: u32, path: &Path) -> bool {
    std::fs::read_dir(format!("/proc/{tracer}/fd"))
        .unwrap()
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .any(|target| target == path)
}

/// The code files of a traced process are held open where something is symbolized, and only
/// there (a file held for nothing keeps a deleted file's space and its mount busy). Those of a
/// process traced with -x are opened as its history is seeded, before the readiness line.
#[test]
fn code_files_are_held_only_where_symbols_are_shown() {
    if !require_root("code_files_are_held_only_where_symbols_are_shown") {
        return;
    }
    let faulter = Faulter::start();
    let pid = faulter.pid().to_string();
    let binary = workload("faulter").canonicalize().unwrap();
    for (args, held) in [
        (&["--json"][..], false),
        (&["--summary"][..], false),
        (&["--resolve"][..], true),
        (&["--summary", "--stack"][..], true),
    ] {
        let mut all = vec!["-x", &pid];
        all.extend(args);
        let tracer = Tracer::start(&all);
        assert_eq!(holds(tracer.pid(), &binary), held, "{args:?}");
        let done = tracer.stop();
        assert_eq!(done.status, 0, "{args:?}: {}", done.stderr);
    }
    faulter.exit();
}

/// Runs dlopen_deleted from a copy that is deleted once cow-trace holds it, with `args`.
/// Returns the run and the copy's path.
fn run_deleted_binary(args: &[&str]) -> (Finished, PathBuf, PathBuf) {
    let dir = scratch().join(format!("deleted-{}-{}", std::process::id(), args.len()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let copy = dir.join("prog");
    std::fs::copy(workload("dlopen_deleted"), &copy).unwrap();
    let library = workload("libcowdl");
    let fifo = dir.join("go");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let mut all: Vec<&str> = args.to_vec();
    all.extend([
        "--",
        copy.to_str().unwrap(),
        library.to_str().unwrap(),
        fifo.to_str().unwrap(),
    ]);
    let tracer = Tracer::start(&all);
    // It runs (blocked on the FIFO) and cow-trace has opened its binary: delete it.
    wait_until_held(tracer.pid(), &copy);
    std::fs::remove_file(&copy).unwrap();
    let mut go = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
    writeln!(go, "go").unwrap();
    drop(go);
    let done = tracer.wait();
    assert_eq!(done.status, 0, "{}", done.stderr);
    std::fs::remove_dir_all(&dir).unwrap();
    (done, copy, library)
}

/// A binary deleted while it ran, and a library it loaded with dlopen, used and unloaded
/// before exiting: their faults name the right file and function after the process is gone.
#[test]
fn deleted_binary_and_unloaded_library_still_resolve() {
    if !require_root("deleted_binary_and_unloaded_library_still_resolve") {
        return;
    }
    let (done, copy, library) = run_deleted_binary(&["--json", "--resolve", "--stack"]);
    let lib_pages = printed_range(&done.command_stdout, "lib");
    let own_pages = printed_range(&done.command_stdout, "own");
    let faults = done.faults();
    for (range, function, module) in [
        (&lib_pages, "cowdl_write", &library),
        (&own_pages, "write_own", &copy),
    ] {
        let writes: Vec<&Value> = faults
            .iter()
            .filter(|f| f["access"] == "w" && range.contains(&address(f)))
            .collect();
        assert_eq!(writes.len(), 64, "{function}: {writes:?}");
        for fault in writes {
            let symbol = fault["symbol"].as_str().unwrap_or_default();
            assert!(
                symbol.starts_with(&format!("{function}+0x"))
                    && symbol.ends_with(&format!("({})", module.display())),
                "{fault}"
            );
            let stack = frames(fault);
            if !stack.is_empty() {
                assert!(has_frame(&stack, "main", &copy), "{fault}");
            }
        }
    }
    // The library's own pages: its code, faulted in by the calls, named by its file.
    let library_prefix = format!("{}@0x", library.display());
    assert!(
        faults.iter().any(|f| f["mapping"]
            .as_str()
            .unwrap_or("")
            .starts_with(&library_prefix)),
        "no fault resolved into {}",
        library.display()
    );
    assert_none_unknown(&done, "prog");
    assert_top_stacks_symbolized(&done, 64);
}

/// The same with --summary -g: the stacks are symbolized at the end.
#[test]
fn deleted_binary_and_unloaded_library_in_the_kernel_summary() {
    if !require_root("deleted_binary_and_unloaded_library_in_the_kernel_summary") {
        return;
    }
    let (done, copy, library) = run_deleted_binary(&["--json", "--summary", "--stack"]);
    let json = done.json();
    let stacks: Vec<Vec<&str>> = json
        .iter()
        .filter(|v| v["event"] == "stack" && v["cow_faults"].as_u64().unwrap() >= 64)
        .map(|v| {
            v["frames"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| f.as_str().unwrap())
                .collect()
        })
        .collect();
    let failed = totals(&done)["lost_detail"]["stacks_failed"]
        .as_u64()
        .unwrap();
    // The 64 zero-page writes of each function share one stack, unless the kernel said it
    // could not take it.
    for function in ["cowdl_write", "write_own"] {
        let module = if function == "cowdl_write" {
            &library
        } else {
            &copy
        };
        let found = stacks
            .iter()
            .any(|stack| has_frame(stack, function, module) && has_frame(stack, "main", &copy));
        assert!(found || failed > 0, "{function}: {stacks:?}");
    }
    // And the mapping rows name both files.
    for file in [&library, &copy] {
        assert!(
            json.iter()
                .any(|v| v["event"] == "mapping" && v["mapping"] == file.to_str().unwrap()),
            "{}: {json:?}",
            file.display()
        );
    }
    assert_no_unknown_rows(&json);
    assert_top_stacks_symbolized(&done, 64);
}

/// A library unloaded and loaded again in the same place, its second copy's write-protect
/// faults taken after a thousand others, and the process gone at once: --summary -g unwinds
/// each stack as the process was at its fault, through the library to `main`, although the
/// record of the unload (which waited in the event ring behind the faults before it) is
/// read after the records of the second load.
#[test]
fn a_library_loaded_again_in_its_place_unwinds_in_the_kernel_summary() {
    if !require_root("a_library_loaded_again_in_its_place_unwinds_in_the_kernel_summary") {
        return;
    }
    let program = workload("dlopen_reuse");
    let library = workload("libcowdl");
    let tracer = Tracer::start(&[
        "--json",
        "--summary",
        "--stack",
        "--",
        program.to_str().unwrap(),
        library.to_str().unwrap(),
    ]);
    let done = tracer.wait();
    assert_eq!(done.status, 0, "{}", done.stderr);
    let loaded_at = |label: &str| {
        done.command_stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{label} ")))
            .unwrap_or_else(|| panic!("no {label:?} line in {:?}", done.command_stdout))
            .to_string()
    };
    // What the test is about: the second copy took the first one's place.
    assert_eq!(loaded_at("first"), loaded_at("second"));
    let json = done.json();
    let stacks: Vec<Vec<&str>> = json
        .iter()
        .filter(|v| v["event"] == "stack" && v["cow_faults"].as_u64().unwrap() >= 64)
        .map(|v| {
            v["frames"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| f.as_str().unwrap())
                .collect()
        })
        .collect();
    assert!(
        stacks
            .iter()
            .any(|stack| has_frame(stack, "cowdl_write", &library)
                && has_frame(stack, "main", &program)),
        "{stacks:?}"
    );
    // Nor did any of them stop short at an address the library's first copy held.
    let stopped: Vec<&Vec<&str>> = stacks
        .iter()
        .filter(|stack| stack.iter().any(|f| f.starts_with("[unwind stopped")))
        .collect();
    assert!(stopped.is_empty(), "{stopped:?}");
}

/// A process maps and unmaps 100 000 one-page regions, writing each: with the default
/// settings every write resolves to `[anon]`, nothing is lost, and the history keeps no
/// more than its bound (and reaches it: the replaced pieces are trimmed). In the VM tests,
/// whose CPUs are emulated in software, 5 000 regions: still more than the history keeps.
#[test]
fn a_hundred_thousand_mappings_stay_bounded() {
    if !require_root("a_hundred_thousand_mappings_stay_bounded") {
        return;
    }
    let regions: usize = if emulated() { 5_000 } else { 100_000 };
    let count = regions.to_string();
    let done = Tracer::start(&[
        "--json",
        "--resolve",
        "--verbose",
        "--",
        workload("mmap_churn").to_str().unwrap(),
        &count,
    ])
    .wait();
    assert_eq!(done.status, 0, "{}", done.stderr);
    let area = printed_range(&done.command_stdout, "area");
    let writes: Vec<Value> = done
        .faults()
        .into_iter()
        .filter(|f| f["access"] == "w" && area.contains(&address(f)))
        .collect();
    let totals = totals(&done);
    assert_eq!(totals["lost"], 0, "{totals}");
    assert_eq!(totals["lost_detail"]["mapping_records"], 0, "{totals}");
    assert_eq!(writes.len(), regions);
    let elsewhere: Vec<&Value> = writes.iter().filter(|f| f["mapping"] != "[anon]").collect();
    assert!(elsewhere.is_empty(), "{elsewhere:?}");
    let history = done
        .stderr
        .lines()
        .find(|l| l.contains("mapping history:"))
        .expect("no mapping history line with --verbose");
    let number_before = |text: &str| -> usize {
        let at = history.find(text).unwrap_or_else(|| panic!("{history}"));
        history[..at]
            .split_whitespace()
            .last()
            .unwrap()
            .parse()
            .unwrap()
    };
    let peak = number_before(" in one process");
    let bound: usize = history
        .split("(bound ")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .unwrap()
        .parse()
        .unwrap();
    assert!(peak <= bound, "{history}");
    // 100 000 mappings were made; the history held a few thousand at most.
    assert!((4096..regions.min(10_000)).contains(&peak), "{history}");
}
