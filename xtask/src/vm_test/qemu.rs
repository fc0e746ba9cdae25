//! The VMs: each kernel's initramfs and scratch disk put together, and booted in qemu to its
//! power-off.
use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::{arch::VmArch, initramfs::kernel_initramfs, kernels::Kernel};
use crate::util;

/// Settings of every VM; the machine and kernel command line are the architecture's.
const QEMU_ARGS: &[&str] = &["-nographic", "-no-reboot", "-nic", "none"];

/// A VM that has not powered off after this much per run of the suite (and once more for its
/// boot) is killed. One run takes 4 to 9 minutes under TCG on this two-CPU machine when it is
/// busy, emulating arm64 being the slower.
const RUN_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// A VM ready to boot: its kernel, the suite's runs on it, initramfs, scratch disk and console
/// log.
pub struct Vm {
    pub release: String,
    pub arch: &'static VmArch,
    pub runs: Vec<&'static str>,
    /// Runs this kernel does not allow, with why.
    pub left_out: Vec<(&'static str, &'static str)>,
    vmlinuz: PathBuf,
    initrd: PathBuf,
    disk: PathBuf,
    pub log: PathBuf,
}

/// Puts together the initramfs (shared part + this kernel's modules and runs) and a fresh disk.
pub fn prepare(work: &Path, kernel: &Kernel, base: &Path) -> anyhow::Result<Vm> {
    let dir = work.join(&kernel.release);
    fs::create_dir_all(&dir)?;
    let initrd = dir.join("initrd.gz");
    let (runs, left_out) = kernel.arch.runs(&kernel.release);
    let modules = kernel_initramfs(kernel, &runs, &dir)?;
    // The kernel unpacks concatenated archives one after the other.
    let mut joined = fs::read(base)?;
    joined.extend(fs::read(&modules)?);
    fs::write(&initrd, joined)?;
    Ok(Vm {
        release: kernel.release.clone(),
        arch: kernel.arch,
        runs,
        left_out,
        vmlinuz: kernel.vmlinuz.clone(),
        initrd,
        disk: scratch_disk(&dir)?,
        log: dir.join("console.log"),
    })
}

/// A fresh, empty ext4 image for the suite's scratch directory.
fn scratch_disk(dir: &Path) -> anyhow::Result<PathBuf> {
    let disk = dir.join("scratch.img");
    fs::File::create(&disk)?.set_len(256 << 20)?;
    util::run(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", "scratch"])
            .arg(&disk),
    )?;
    Ok(disk)
}

/// Runs the VM to its power-off, its console going to its log; kills it once past its timeout.
pub fn boot(vm: &Vm) -> anyhow::Result<()> {
    eprintln!(
        "vm-test: booting {} (console: {})",
        vm.release,
        vm.log.display()
    );
    let started = Instant::now();
    let console = fs::File::create(&vm.log)?;
    let mut qemu = Command::new(vm.arch.qemu)
        .args(vm.arch.qemu_args)
        .args(QEMU_ARGS)
        .arg("-kernel")
        .arg(&vm.vmlinuz)
        .arg("-initrd")
        .arg(&vm.initrd)
        .arg("-drive")
        .arg(format!("file={},if=virtio,format=raw", vm.disk.display()))
        .args(["-append", vm.arch.kernel_args])
        .stdin(Stdio::null())
        .stdout(console.try_clone()?)
        .stderr(console)
        .spawn()
        .with_context(|| format!("starting {}", vm.arch.qemu))?;
    let timeout = RUN_TIMEOUT * (vm.runs.len() as u32 + 1);
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = qemu.try_wait()? {
            eprintln!(
                "vm-test: {} powered off after {:.0?}",
                vm.release,
                started.elapsed()
            );
            if !status.success() {
                bail!("qemu failed: {status}");
            }
            return Ok(());
        }
        if Instant::now() > deadline {
            let _ = qemu.kill();
            let _ = qemu.wait();
            bail!("the VM did not power off within {timeout:?}: killed");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
