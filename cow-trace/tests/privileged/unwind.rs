//! User stacks of code built as distributions build it: `tests/workloads/unwind/` writes
//! inherited pages four calls deep (main -> cow_outer -> cow_lib_middle, in a shared library,
//! -> cow_inner -> cow_write_pages) in a child that exits at once. Optimized without frame
//! pointers, --stack unwinds it with the binaries' .eh_frame; with frame pointers, --stack=fp
//! walks them; with neither, the stack says where and why it stopped, and shows no garbage.
use std::path::Path;

use serde_json::Value;

use crate::{address, common::*};

/// The functions every stack of the buffer's copies names first, innermost first, and the
/// file each is in ("lib": the workload's library, else the program).
const CHAIN: [(&str, bool); 5] = [
    ("cow_write_pages", false),
    ("cow_inner", false),
    ("cow_lib_middle", true),
    ("cow_outer", false),
    ("main", false),
];

/// Pages the child writes.
const PAGES: u64 = 64;

/// The `buffer START END` range the workload printed.
fn buffer(stdout: &str) -> std::ops::Range<u64> {
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("buffer "))
        .unwrap_or_else(|| panic!("no buffer line in {stdout:?}"));
    let mut bounds = line
        .split_whitespace()
        .map(|hex| u64::from_str_radix(hex, 16).unwrap());
    bounds.next().unwrap()..bounds.next().unwrap()
}

fn totals(done: &Finished) -> Value {
    done.json()
        .into_iter()
        .find(|v| v["event"] == "totals")
        .expect("no totals line")
}

/// The child's pid: the run's one fork.
fn child(done: &Finished) -> u32 {
    let fork = done
        .json()
        .into_iter()
        .find(|v| v["event"] == "fork")
        .expect("no fork event");
    fork["child"].as_u64().unwrap() as u32
}

/// Runs cow-trace with `args` on the `variant` workload; returns the run, the program and
/// (streaming) the child's copy-on-write faults in the buffer, one per page.
fn trace(variant: &str, args: &[&str]) -> (Finished, std::path::PathBuf, Vec<Value>) {
    let program = unwind_workload(variant);
    let pages = PAGES.to_string();
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    all.extend(["--", program.to_str().unwrap(), &pages]);
    let done = Tracer::start(&all).wait();
    assert_eq!(done.status, 0, "{}", done.stderr);
    if args.contains(&"--summary") {
        return (done, program, Vec::new());
    }
    let buffer = buffer(&done.command_stdout);
    let child = child(&done);
    let copies: Vec<Value> = done
        .faults_of(child)
        .into_iter()
        .filter(|f| f["cow"] == true && buffer.contains(&address(f)))
        .collect();
    assert_eq!(copies.len() as u64, PAGES, "{copies:?}");
    (done, program, copies)
}

/// `stack` begins with the workload's chain, each function in its file: the four functions
/// and main, in order.
fn assert_chain(stack: &[String], program: &Path) {
    let library = program
        .parent()
        .unwrap()
        .join(format!(
            "lib{}.so",
            program.file_name().unwrap().to_str().unwrap()
        ))
        .display()
        .to_string();
    assert!(stack.len() >= CHAIN.len(), "{stack:#?}");
    for (frame, (function, in_library)) in stack.iter().zip(CHAIN) {
        let module = if in_library {
            library.clone()
        } else {
            program.display().to_string()
        };
        assert!(
            frame.starts_with(&format!("{function}+0x")) && frame.ends_with(&format!("({module})")),
            "{function} in {module} expected, got {frame}: {stack:#?}"
        );
    }
}

/// Built -O2 without frame pointers (its .eh_frame the default): every stack of the child's
/// copies names the four functions and main in order, and unwinds through libc to the
/// program's entry point, though the child is gone before cow-trace reads its first record.
/// Streaming and --summary alike.
#[test]
fn stacks_unwind_with_the_tables_where_code_keeps_no_frame_pointer() {
    if !require_root("stacks_unwind_with_the_tables_where_code_keeps_no_frame_pointer") {
        return;
    }
    let (done, program, copies) = trace("dwarf", &["--stack"]);
    for fault in &copies {
        let stack = frames(fault, "stack");
        assert_chain(&stack, &program);
        let last = stack.last().unwrap();
        assert!(
            last.starts_with("_start+0x"),
            "the stack ends at the entry point, not cut: {stack:#?}"
        );
    }
    let lost = &totals(&done)["lost_detail"]["stacks_lost"];
    assert_eq!(lost["truncated"], 0, "{lost}");

    // --summary: the copies' stack is the top one, with the same frames.
    let (done, program, _) = trace("dwarf", &["--summary", "-g"]);
    let top = done
        .json()
        .into_iter()
        .filter(|v| v["event"] == "stack")
        .max_by_key(|v| v["cow_faults"].as_u64().unwrap())
        .expect("no stack in the summary");
    assert_eq!(top["cow_faults"], PAGES, "{top}");
    assert_chain(&frames(&top, "frames"), &program);
}

/// Built with frame pointers, --stack=fp (the kernel's frame-pointer walk) still names the
/// chain.
#[test]
fn frame_pointer_stacks_still_walk() {
    if !require_root("frame_pointer_stacks_still_walk") {
        return;
    }
    let (_, program, copies) = trace("fp", &["--stack=fp"]);
    for fault in &copies {
        assert_chain(&frames(fault, "stack"), &program);
    }
}

/// Built with neither unwind tables nor frame pointers: the stack shows the function that
/// wrote, then says the unwind stopped there and why; no frame after it, so none is garbage.
/// Each is counted.
#[test]
fn a_stack_without_tables_or_frame_pointers_says_where_it_stopped() {
    if !require_root("a_stack_without_tables_or_frame_pointers_says_where_it_stopped") {
        return;
    }
    let (done, program, copies) = trace("bare", &["--stack"]);
    let stopped = format!("[unwind stopped: no unwind info for {}]", program.display());
    for fault in &copies {
        let stack = frames(fault, "stack");
        assert_eq!(stack.len(), 2, "{stack:#?}");
        assert!(
            stack[0].starts_with("cow_write_pages+0x"),
            "the writing function first: {stack:#?}"
        );
        assert_eq!(stack[1], stopped);
    }
    let lost = &totals(&done)["lost_detail"]["stacks_lost"];
    assert!(lost["no_unwind_info"].as_u64().unwrap() >= PAGES, "{lost}");
}

/// A stack deeper than --stack-size copies is shown cut, and says so.
#[test]
fn a_stack_cut_at_the_copy_size_says_so() {
    if !require_root("a_stack_cut_at_the_copy_size_says_so") {
        return;
    }
    let (done, _, copies) = trace("dwarf", &["--stack", "--stack-size", "64"]);
    for fault in &copies {
        let stack = frames(fault, "stack");
        assert!(stack[0].starts_with("cow_write_pages+0x"), "{stack:#?}");
        assert_eq!(stack.last().unwrap(), "[truncated at 64 B]", "{stack:#?}");
    }
    let lost = &totals(&done)["lost_detail"]["stacks_lost"];
    assert!(lost["truncated"].as_u64().unwrap() >= PAGES, "{lost}");
}

/// Every fault asked for (--stack-faults all) either has a whole stack or is counted among
/// the stacks not taken or cut short: the count matches the stacks shown, by either method.
/// (The kernel's own reads of the stack fault too; those are no faults of the process, and
/// were once counted as stacks not taken while every fault had one.)
#[test]
fn stack_losses_are_the_stacks_missing_or_cut() {
    if !require_root("stack_losses_are_the_stacks_missing_or_cut") {
        return;
    }
    let program = unwind_workload("dwarf");
    for method in ["--stack=fp", "--stack=dwarf"] {
        // -v: a code file or tables that could not be read say so, for the message below.
        let done = Tracer::start(&[
            "--json",
            "-v",
            method,
            "--stack-faults",
            "all",
            "--",
            program.to_str().unwrap(),
            "8",
        ])
        .wait();
        assert_eq!(done.status, 0, "{}", done.stderr);
        // Faults whose entry was seen, so their access is known (a fault that began before
        // tracing has no stack). Not `error_code`: JSON has it on x86-64 only.
        let faults: Vec<Value> = done
            .faults()
            .into_iter()
            .filter(|f| !f["access"].is_null())
            .collect();
        let missing_or_cut = faults
            .iter()
            .filter(|f| {
                let stack = frames(f, "stack");
                stack.last().is_none_or(|last| last.starts_with('['))
            })
            .count() as u64;
        let failed = totals(&done)["lost_detail"]["stacks_failed"]
            .as_u64()
            .unwrap();
        assert_eq!(
            failed,
            missing_or_cut,
            "{method}: {} faults, {}",
            faults.len(),
            totals(&done)["lost_detail"]
        );
        // Most faults have a whole stack: say which did not, if not.
        let mut why: std::collections::BTreeMap<String, u64> = Default::default();
        let mut examples: std::collections::BTreeMap<String, Vec<String>> = Default::default();
        for fault in &faults {
            let stack = frames(fault, "stack");
            let end = match stack.last() {
                None => "no stack".to_string(),
                Some(last) if last.starts_with('[') => last.clone(),
                Some(_) => continue,
            };
            let key = format!(
                "{} {} kernel_mode={}: {end}",
                fault["access"], fault["type"], fault["kernel_mode"]
            );
            examples.entry(end.clone()).or_insert(stack);
            *why.entry(key).or_default() += 1;
        }
        let log: Vec<&str> = done
            .stderr
            .lines()
            .filter(|l| l.contains("unwind") || l.contains("cannot be opened"))
            .collect();
        assert!(
            missing_or_cut < faults.len() as u64 / 2,
            "{method}: {missing_or_cut} of {} faults: {why:#?} {examples:#?} {log:#?}",
            faults.len()
        );
    }
}

/// Which faults carry a stack: copy-on-write faults by default; with --stack-faults writes,
/// first writes too (the parent filling the buffer before it forks, through memset).
#[test]
fn stack_faults_chooses_the_faults_with_a_stack() {
    if !require_root("stack_faults_chooses_the_faults_with_a_stack") {
        return;
    }
    for (faults, first_writes_have_stacks) in [(None, false), (Some("writes"), true)] {
        let mut args = vec!["--stack"];
        if let Some(faults) = faults {
            args.extend(["--stack-faults", faults]);
        }
        let (done, program, copies) = trace("dwarf", &args);
        for fault in &copies {
            assert_chain(&frames(fault, "stack"), &program);
        }
        let buffer = buffer(&done.command_stdout);
        let parent = done
            .json()
            .into_iter()
            .find(|v| v["event"] == "fork")
            .map(|fork| fork["pid"].as_u64().unwrap() as u32)
            .unwrap();
        let first_writes: Vec<Value> = done
            .faults_of(parent)
            .into_iter()
            .filter(|f| f["access"] == "w" && f["cow"] == false && buffer.contains(&address(f)))
            .collect();
        assert_eq!(first_writes.len() as u64, PAGES, "{first_writes:?}");
        for fault in &first_writes {
            let stack = frames(fault, "stack");
            if first_writes_have_stacks {
                let main = format!("({})", program.display());
                assert!(
                    stack
                        .iter()
                        .any(|f| f.starts_with("main+0x") && f.ends_with(&main)),
                    "{faults:?}: {stack:#?}"
                );
            } else {
                assert!(stack.is_empty(), "{faults:?}: {stack:#?}");
            }
        }
    }
}
