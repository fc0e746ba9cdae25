//! `cargo xtask vm-test`: runs the privileged suite (cow-trace/tests/privileged.rs) inside qemu
//! VMs that boot Debian's own 6.1 and 6.12 kernels for x86-64 and arm64, once per backend the
//! architecture offers, and prints a table (arch × kernel × backend).
//!
//! Each VM boots from an initramfs holding busybox, cow-trace as it ships (the static musl
//! binary), the suite's test binary, the C workloads (dynamically linked, with the loader and
//! libraries they name), plus the kernel's modules for a virtio disk with ext4: the suite's
//! scratch directory must be disk-backed (on tmpfs there are no major faults); and for a RAM
//! disk, on which swap is turned on (the swap test needs pages swapped out). Kernels, initramfs
//! parts, disk images and console logs are kept under target/vm/.
//!
//! One module per job: `arch` (what differs per architecture), `artifacts` (what the build
//! puts in the VMs), `kernels` (Debian's kernel packages), `debs` (a package unpacked without
//! installing it), `initramfs` (/init, busybox,
//! binaries, modules), `libraries` (what a dynamically linked binary needs there), `qemu` (disk
//! and boot), `console` (the suite's results, read from the console log), `table` (what is
//! printed).
pub mod arch;
mod artifacts;
mod console;
mod debs;
mod initramfs;
mod kernels;
mod libraries;
mod qemu;
mod table;

use std::{fs, sync::Mutex, time::Instant};

use anyhow::{anyhow, bail};

use crate::{setup, util};
use arch::VmArch;
use artifacts::build;
use console::{Outcome, Row, results};
use initramfs::base_initramfs;
use kernels::{SERIES, kernel};
use qemu::{Vm, boot, prepare};
use table::print_table;

/// Host tools: the emulator, the initramfs's shell and archiver, the scratch disk's mkfs,
/// depmod (the kernel packages ship no modules.dep), the module decompressors, and arm64's
/// emulator and C cross compiler (with its glibc).
const PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "qemu-system-arm",
    "gcc-aarch64-linux-gnu",
    "libc6-dev-arm64-cross",
    "busybox-static",
    "cpio",
    "e2fsprogs",
    "kmod",
    "xz-utils",
    "zstd",
];

/// Prefix of the lines /init prints for the host to parse.
const MARK: &str = "@@vm-test";

/// `cargo xtask vm-test`'s options.
#[derive(clap::Args)]
pub struct Args {
    /// Only this architecture's VMs (x86_64 or aarch64); all by default.
    #[arg(long)]
    arch: Option<String>,
}

/// `cargo xtask vm-test`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let arches: Vec<&'static VmArch> = match &args.arch {
        None => arch::ALL.to_vec(),
        Some(name) => vec![
            *arch::ALL
                .iter()
                .find(|a| a.name() == name)
                .ok_or_else(|| anyhow!("--arch {name}: use x86_64 or aarch64"))?,
        ],
    };
    let (_, failed_tests, _) = run_suites(&arches)?;
    if failed_tests > 0 {
        bail!("vm-test: {failed_tests} tests failed");
    }
    Ok(())
}

/// Boots the VMs, as many at once as the host has CPUs (each VM runs on one host thread, see
/// arch.rs): more would slow every VM down alike, and the suite's timings with them. Those with
/// the most runs start first, so the last to finish is a short one. Returns each VM's boot
/// result, in the order of `vms`.
fn boot_all(vms: &[Vm]) -> Vec<anyhow::Result<()>> {
    let mut order: Vec<usize> = (0..vms.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(vms[i].runs.len()));
    let queue = Mutex::new(order.into_iter());
    let results: Vec<Mutex<Option<anyhow::Result<()>>>> =
        vms.iter().map(|_| Mutex::new(None)).collect();
    let slots = std::thread::available_parallelism().map_or(1, |n| n.get());
    std::thread::scope(|scope| {
        for _ in 0..slots.min(vms.len()) {
            scope.spawn(|| {
                loop {
                    // Taken in a statement of its own: the lock is released before the boot.
                    let next = queue.lock().unwrap().next();
                    let Some(i) = next else { break };
                    *results[i].lock().unwrap() = Some(boot(&vms[i]));
                }
            });
        }
    });
    results
        .into_iter()
        .map(|result| {
            result
                .into_inner()
                .unwrap()
                .unwrap_or_else(|| Err(anyhow!("the VM's thread panicked")))
        })
        .collect()
}

/// Boots every kernel of `arches` and runs the suite per backend; returns the tests passed,
/// failed and skipped, counting a run that did not finish as one failure. Errs only if the VMs
/// could not be made.
pub fn run_suites(arches: &[&'static VmArch]) -> anyhow::Result<(u64, u64, u64)> {
    let started = Instant::now();
    setup::run()?;
    // Debian's arm64 kernels and busybox come from apt as a foreign architecture.
    setup::add_foreign_architecture("arm64")?;
    setup::install_packages(PACKAGES)?;
    let work = util::root().join("target/vm");
    fs::create_dir_all(&work)?;
    let mut vms = Vec::new();
    for &arch in arches {
        let artifacts = build(arch)?;
        let base = base_initramfs(&work, arch, &artifacts)?;
        for series in SERIES {
            vms.push(prepare(&work, &kernel(&work, arch, series)?, &base)?);
        }
    }
    let booted = boot_all(&vms);
    let rows: Vec<Row> = vms
        .iter()
        .zip(booted)
        .flat_map(|(vm, booted)| results(vm, booted))
        .collect();
    let failed_runs = print_table(&rows);
    eprintln!("vm-test: took {:.0?}", started.elapsed());
    if failed_runs > 0 {
        let runs = rows
            .iter()
            .filter(|row| !matches!(row.outcome, Outcome::NotAllowed(_)))
            .count();
        eprintln!("vm-test: {failed_runs} of {runs} runs failed");
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
                Outcome::NotAllowed(_) => (passed, failed, skipped),
            }
        }))
}
