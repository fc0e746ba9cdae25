//! The VMs: each kernel's initramfs and scratch disk put together, and booted in qemu to its
//! power-off.
use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::{initramfs::modules_initramfs, kernels::Kernel};
use crate::util;

/// Guest and emulator settings. KVM does not work here (nested virtualisation), so TCG; and
/// single-threaded TCG, because with one host thread per vCPU Debian's 6.12 oopses ("int3" in
/// exc_page_fault) when a static key is flipped while another vCPU takes page faults, as
/// enabling the page-fault tracepoint does. The guest still has two CPUs.
const QEMU_ARGS: &[&str] = &[
    "-accel",
    "tcg,thread=single",
    "-cpu",
    "max",
    "-smp",
    "2",
    "-m",
    "2G",
    "-nographic",
    "-no-reboot",
    "-nic",
    "none",
];

const KERNEL_ARGS: &str = "console=ttyS0 quiet panic=-1";

/// A VM that has not powered off by then is killed. One VM runs the suite once per backend:
/// a few minutes under TCG on a quiet machine, far longer when the machine is loaded.
const VM_TIMEOUT: Duration = Duration::from_secs(20 * 60);

/// A VM ready to boot: its kernel, initramfs, scratch disk and console log.
pub struct Vm {
    pub release: String,
    vmlinuz: PathBuf,
    initrd: PathBuf,
    disk: PathBuf,
    pub log: PathBuf,
}

/// Puts together the initramfs (shared part + this kernel's modules) and a fresh disk.
pub fn prepare(work: &Path, kernel: &Kernel, base: &Path) -> anyhow::Result<Vm> {
    let dir = work.join(&kernel.release);
    fs::create_dir_all(&dir)?;
    let initrd = dir.join("initrd.gz");
    let modules = modules_initramfs(kernel, &dir)?;
    // The kernel unpacks concatenated archives one after the other.
    let mut joined = fs::read(base)?;
    joined.extend(fs::read(&modules)?);
    fs::write(&initrd, joined)?;
    Ok(Vm {
        release: kernel.release.clone(),
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

/// Runs the VM to its power-off, its console going to its log; kills it after VM_TIMEOUT.
pub fn boot(vm: &Vm) -> anyhow::Result<()> {
    eprintln!(
        "vm-test: booting {} (console: {})",
        vm.release,
        vm.log.display()
    );
    let started = Instant::now();
    let console = fs::File::create(&vm.log)?;
    let mut qemu = Command::new("qemu-system-x86_64")
        .args(QEMU_ARGS)
        .arg("-kernel")
        .arg(&vm.vmlinuz)
        .arg("-initrd")
        .arg(&vm.initrd)
        .arg("-drive")
        .arg(format!("file={},if=virtio,format=raw", vm.disk.display()))
        .args(["-append", KERNEL_ARGS])
        .stdin(Stdio::null())
        .stdout(console.try_clone()?)
        .stderr(console)
        .spawn()
        .context("starting qemu-system-x86_64")?;
    let deadline = Instant::now() + VM_TIMEOUT;
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
            bail!("the VM did not power off within {VM_TIMEOUT:?}: killed");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
