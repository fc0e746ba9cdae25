//! `cargo xtask test`: sets up, then runs every check and test. CI runs exactly this.
use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

use crate::{dist, libtest, setup, util, vm_test};

/// qemu's user-mode emulation runs the arm64 binary here, and either binary under a feigned
/// old kernel release (tests/dist.rs).
const DIST_TEST_PACKAGES: &[&str] = &["qemu-user"];

pub fn run() -> anyhow::Result<()> {
    setup::run()?;
    setup::install_packages(DIST_TEST_PACKAGES)?;
    let root = util::root();
    util::run(
        Command::new("cargo")
            .current_dir(&root)
            .args(["fmt", "--all", "--check"]),
    )?;
    // The default members (everything but the eBPF crate, which only builds for BPF)...
    util::run(Command::new("cargo").current_dir(&root).args([
        "clippy",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    // ... and the eBPF crate for its own target, as its build does: as built for x86-64 and
    // for arm64 (their register layouts differ; see cow-trace-ebpf/src/arch.rs).
    for arch in ["x86_64", "aarch64"] {
        util::run(
            Command::new("cargo")
                .current_dir(root.join("cow-trace-ebpf"))
                .env("AYA_BPF_TARGET_ARCH", arch)
                .args([
                    "+nightly",
                    "clippy",
                    "--release",
                    "--target",
                    "bpfel-unknown-none",
                ])
                .args(["-Z", "build-std=core", "--", "-D", "warnings"]),
        )?;
    }
    // What ships: static binaries, tarballs, .debs (checked by xtask/tests/dist.rs).
    let dist_dir = dist::build_all()?;
    let dist_dir = dist_dir.to_str().context("target/dist is not UTF-8")?;
    let mut totals = cargo_test(&root, &[("COW_TRACE_DIST", dist_dir)], &[])?;
    // The x86-64 binary from its tarball, through the article's cow.c experiment.
    let shipped = dist::unpacked_binary(&dist::X86_64)?;
    totals.add(cargo_test(
        &root,
        &[(
            "COW_TRACE_BIN",
            shipped.to_str().context("path is not UTF-8")?,
        )],
        &["--test", "privileged", "article_cow_experiment"],
    )?);
    // The privileged suites again with --no-latency: the tracepoint backend then works
    // without its completion event, and every ground-truth check must still hold.
    let untimed = cargo_test(
        &root,
        &[("COW_TRACE_UNTIMED", "1")],
        &[
            "--test",
            "privileged",
            "--test",
            "reliability",
            "--test",
            "redis",
        ],
    )?;
    totals.add(untimed);
    // The same privileged suite on Debian's 6.1 and 6.12 kernels, x86-64 and arm64, with the
    // static binaries that ship, once per backend each kernel allows (fexit and kprobe cannot
    // attach on this host's kernel).
    let (vm_passed, vm_failed, vm_skipped) = vm_test::run_suites(&vm_test::arch::ALL)?;
    totals.passed += vm_passed;
    totals.failed += vm_failed;
    totals.skipped += vm_skipped;
    println!(
        "xtask test: {} passed, {} failed, {} skipped",
        totals.passed, totals.failed, totals.skipped
    );
    if totals.failed > 0 || !totals.ok {
        bail!("tests failed");
    }
    Ok(())
}

#[derive(Default)]
struct Totals {
    passed: u64,
    failed: u64,
    /// Ignored by libtest, or returned early saying why (tests/common's `skip`).
    skipped: u64,
    ok: bool,
}

impl Totals {
    fn add(&mut self, other: Totals) {
        self.passed += other.passed;
        self.failed += other.failed;
        self.skipped += other.skipped;
        self.ok &= other.ok;
    }
}

/// Runs `cargo test ARGS` (by default, the default members) with `env`, echoing its output
/// and adding up its result lines.
fn cargo_test(
    root: &std::path::Path,
    env: &[(&str, &str)],
    args: &[&str],
) -> anyhow::Result<Totals> {
    let shown: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v} ")).collect();
    eprintln!(
        "+ {}cargo test --no-fail-fast {}",
        shown.concat(),
        args.join(" ")
    );
    let mut child = Command::new("cargo")
        .current_dir(root)
        .envs(env.iter().copied())
        .arg("test")
        // One failing test binary must not hide the results of the ones after it.
        .arg("--no-fail-fast")
        .args(args)
        // Uncaptured, so the lines of tests that skip (tests/common's `skip`) are seen.
        .args(["--", "--nocapture"])
        .stdout(Stdio::piped())
        .spawn()
        .context("starting cargo test")?;
    let mut totals = Totals::default();
    let mut returned_early = 0;
    let stdout = BufReader::new(child.stdout.take().context("cargo test stdout")?);
    for line in stdout.lines() {
        let line = line?;
        println!("{line}");
        if let Some(result) = libtest::result(&line) {
            totals.passed += result.passed;
            totals.failed += result.failed;
            totals.skipped += result.ignored;
        } else if libtest::skipped_test(&line).is_some() {
            // A test that returned early, saying why: libtest counts it as passed.
            returned_early += 1;
        }
    }
    totals.passed = totals.passed.saturating_sub(returned_early);
    totals.skipped += returned_early;
    totals.ok = child.wait()?.success();
    Ok(totals)
}
