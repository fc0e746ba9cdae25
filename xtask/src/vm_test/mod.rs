//! `cargo xtask vm-test`: runs the privileged suite (cow-trace/tests/privileged.rs) inside qemu
//! VMs that boot Debian's own 6.1 and 6.12 kernels, once per backend, and prints a table.
//!
//! Each VM boots from an initramfs holding busybox, cow-trace, the suite's test binary, the C
//! workloads and their shared libraries, plus the kernel's modules for a virtio disk with ext4:
//! the suite's scratch directory must be disk-backed (on tmpfs there are no major faults); and
//! for a RAM disk, on which swap is turned on (the swap test needs pages swapped out).
//! Kernels, initramfs parts, disk images and console logs are kept under target/vm/.
//!
//! One module per job: `artifacts` (what the build puts in the VMs), `kernels` (Debian's
//! kernel packages), `initramfs` (/init, busybox, binaries, modules), `qemu` (disk and boot),
//! `console` (the suite's results, read from the console log), `table` (what is printed).
mod artifacts;
mod console;
mod initramfs;
mod kernels;
mod qemu;
mod table;

use std::{fs, time::Instant};

use anyhow::{anyhow, bail};

use crate::{setup, util};
use artifacts::build;
use console::{Outcome, Row, results};
use initramfs::base_initramfs;
use kernels::{SERIES, kernel};
use qemu::{boot, prepare};
use table::print_table;

/// The runs of the suite in every VM: each backend, passed to cow-trace as `--backend`
/// through COW_TRACE_BACKEND, and the tracepoint backend again with --no-latency
/// (COW_TRACE_UNTIMED), which works without its completion event.
const BACKENDS: &[&str] = &["fexit", "kprobe", "tracepoint", "tracepoint-untimed"];

/// The environment of one run of the suite.
fn run_environment(run: &str) -> String {
    match run.strip_suffix("-untimed") {
        Some(backend) => format!("COW_TRACE_BACKEND={backend} COW_TRACE_UNTIMED=1"),
        None => format!("COW_TRACE_BACKEND={run}"),
    }
}

/// Host tools: the emulator, the initramfs's shell and archiver, the scratch disk's mkfs,
/// depmod (the kernel packages ship no modules.dep) and the module decompressors.
const PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "busybox-static",
    "cpio",
    "e2fsprogs",
    "kmod",
    "xz-utils",
    "zstd",
];

/// Prefix of the lines /init prints for the host to parse.
const MARK: &str = "@@vm-test";

/// `cargo xtask vm-test`.
pub fn run() -> anyhow::Result<()> {
    let (_, failed_tests, _) = run_suites()?;
    if failed_tests > 0 {
        bail!("vm-test: {failed_tests} tests failed");
    }
    Ok(())
}

/// Boots every kernel and runs the suite per backend; returns the tests passed, failed and
/// skipped, counting a run that did not finish as one failure. Errs only if the VMs could not
/// be made.
pub fn run_suites() -> anyhow::Result<(u64, u64, u64)> {
    let started = Instant::now();
    setup::run()?;
    setup::install_packages(PACKAGES)?;
    let work = util::root().join("target/vm");
    fs::create_dir_all(&work)?;
    let artifacts = build()?;
    let base = base_initramfs(&work, &artifacts)?;
    let kernels = SERIES
        .iter()
        .map(|series| kernel(&work, series))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let vms = kernels
        .iter()
        .map(|kernel| prepare(&work, kernel, &base))
        .collect::<anyhow::Result<Vec<_>>>()?;
    // All VMs at once: each runs on one host thread (see QEMU_ARGS).
    let booted: Vec<anyhow::Result<()>> = std::thread::scope(|scope| {
        let running: Vec<_> = vms.iter().map(|vm| scope.spawn(|| boot(vm))).collect();
        running
            .into_iter()
            .map(|vm| {
                vm.join()
                    .unwrap_or_else(|_| Err(anyhow!("the VM's thread panicked")))
            })
            .collect()
    });
    let rows: Vec<Row> = vms
        .iter()
        .zip(booted)
        .flat_map(|(vm, booted)| results(vm, booted))
        .collect();
    let failed_runs = print_table(&rows);
    eprintln!("vm-test: took {:.0?}", started.elapsed());
    if failed_runs > 0 {
        eprintln!("vm-test: {failed_runs} of {} runs failed", rows.len());
    }
    Ok(rows
        .iter()
        .fold((0, 0, 0), |(passed, failed, skipped), row| {
            match &row.outcome {
                Outcome::Ran {
                    passed: p,
                    failed: f,
                    skipped: s,
                    status,
                    ..
                } => (
                    passed + p - s.len() as u64,
                    failed + f + u64::from(*f == 0 && *status != 0),
                    skipped + s.len() as u64,
                ),
                Outcome::Missing(_) => (passed, failed + 1, skipped),
            }
        }))
}
