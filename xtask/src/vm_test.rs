//! `cargo xtask vm-test`: runs the privileged suite (cow-trace/tests/privileged.rs) inside qemu
//! VMs that boot Debian's own 6.1 and 6.12 kernels, once per backend, and prints a table.
//!
//! Each VM boots from an initramfs holding busybox, cow-trace, the suite's test binary, the C
//! workloads and their shared libraries, plus the kernel's modules for a virtio disk with ext4:
//! the suite's scratch directory must be disk-backed (on tmpfs there are no major faults).
//! Kernels, initramfs parts, disk images and console logs are kept under target/vm/.
use std::{
    collections::BTreeSet,
    fs,
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, bail};

use crate::{
    setup,
    util::{self, output},
};

/// A Debian kernel series: the newest amd64 image whose ABI name starts with `abi_prefix`.
struct Series {
    abi_prefix: &'static str,
}

const SERIES: &[Series] = &[
    Series {
        abi_prefix: "6.1.0-",
    },
    Series {
        abi_prefix: "6.12.",
    },
];

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

/// What /init loads, with their dependencies, to mount the scratch disk: the virtio PCI
/// transport, the block driver, and ext4. crc32c is only a soft dependency of ext4 (absent
/// from modules.dep), yet mounting a filesystem with metadata checksums needs it.
const MODULES: &[&str] = &["virtio_pci", "virtio_blk", "crc32c_generic", "ext4"];

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

/// A VM that has not powered off by then is killed. The suite takes under a minute under TCG.
const VM_TIMEOUT: Duration = Duration::from_secs(10 * 60);

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

/// What goes into the VMs from the build.
struct Artifacts {
    cow_trace: PathBuf,
    suite: PathBuf,
    workloads: Vec<PathBuf>,
}

/// Builds cow-trace, the privileged test binary (debug, as `cargo xtask test` does, so CI
/// builds them once) and the C workloads.
fn build() -> anyhow::Result<Artifacts> {
    let root = util::root();
    let cow_trace = cargo_executable(&["build", "--package", "cow-trace"], "cow-trace")?;
    let suite = cargo_executable(
        &[
            "test",
            "--package",
            "cow-trace",
            "--test",
            "privileged",
            "--no-run",
        ],
        "privileged",
    )?;
    let mut workloads = Vec::new();
    for source in fs::read_dir(root.join("cow-trace/tests/workloads"))? {
        let source = source?.path();
        if source.extension().is_some_and(|e| e == "c") {
            let name = source.file_stem().context("workload name")?;
            workloads.push(util::workload(&name.to_string_lossy())?);
        }
    }
    Ok(Artifacts {
        cow_trace,
        suite,
        workloads,
    })
}

/// Runs `cargo ARGS` and returns the path of the executable it built for `target`, from its
/// JSON messages (diagnostics still go to the terminal).
fn cargo_executable(args: &[&str], target: &str) -> anyhow::Result<PathBuf> {
    let mut cargo = Command::new("cargo");
    cargo
        .current_dir(util::root())
        .args(args)
        .arg("--message-format=json-render-diagnostics");
    eprintln!("+ cargo {}", args.join(" "));
    let json = output(&mut cargo).with_context(|| format!("cargo {} failed", args.join(" ")))?;
    json.lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == target)
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .with_context(|| format!("cargo {} named no {target} executable", args.join(" ")))
}

/// The part of the initramfs every kernel shares: busybox, /init, the binaries and their
/// libraries. Returns the gzipped cpio archive.
fn base_initramfs(work: &Path, artifacts: &Artifacts) -> anyhow::Result<PathBuf> {
    let root = work.join("base");
    if root.exists() {
        fs::remove_dir_all(&root).context("clearing target/vm/base")?;
    }
    for dir in [
        "proc",
        "sys",
        "dev",
        "tmp",
        "run",
        "scratch",
        "vm/workloads",
    ] {
        fs::create_dir_all(root.join(dir))?;
    }
    install_busybox(&root)?;
    install_binary(&root, &artifacts.cow_trace, "vm/cow-trace")?;
    install_binary(&root, &artifacts.suite, "vm/privileged")?;
    for workload in &artifacts.workloads {
        let name = workload.file_name().context("workload name")?;
        install_binary(
            &root,
            workload,
            &format!("vm/workloads/{}", name.to_string_lossy()),
        )?;
    }
    write_executable(&root.join("init"), &init_script())?;
    let archive = work.join("base.cpio.gz");
    cpio_gz(&root, &archive)?;
    Ok(archive)
}

/// busybox-static at /bin/busybox with a symlink per applet (the suite runs `sh -c ...`).
fn install_busybox(root: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(root.join("bin"))?;
    fs::copy("/bin/busybox", root.join("bin/busybox")).context("copying /bin/busybox")?;
    let applets = output(Command::new("/bin/busybox").arg("--list-full"))
        .context("busybox --list-full failed")?;
    for applet in applets
        .lines()
        .filter(|a| !a.is_empty() && *a != "bin/busybox")
    {
        let link = root.join(applet);
        fs::create_dir_all(link.parent().context("applet path")?)?;
        std::os::unix::fs::symlink("/bin/busybox", &link)
            .with_context(|| format!("linking {}", link.display()))?;
    }
    Ok(())
}

/// Copies `binary` to `dest` in the initramfs, with the shared libraries and dynamic loader
/// it needs at the same paths as on the host.
fn install_binary(root: &Path, binary: &Path, dest: &str) -> anyhow::Result<()> {
    fs::copy(binary, root.join(dest)).with_context(|| format!("copying {}", binary.display()))?;
    // ldd fails for static binaries: they need nothing.
    let libraries = output(Command::new("ldd").arg(binary)).unwrap_or_default();
    for library in libraries.lines().filter_map(ldd_path) {
        let copy = root.join(library.strip_prefix("/")?);
        if !copy.exists() {
            fs::create_dir_all(copy.parent().context("library path")?)?;
            fs::copy(&library, &copy).with_context(|| format!("copying {}", library.display()))?;
        }
    }
    Ok(())
}

/// The library path in one line of ldd's output ("libc.so.6 => /lib/.../libc.so.6 (0x..)" or
/// "/lib64/ld-linux-x86-64.so.2 (0x..)"); None for the vDSO.
fn ldd_path(line: &str) -> Option<PathBuf> {
    let line = line.trim();
    let path = line.split_once("=> ").map_or(line, |(_, path)| path);
    let path = path.split(" (").next()?.trim();
    path.starts_with('/').then(|| PathBuf::from(path))
}

/// /init: mount what the suite and cow-trace need, load the disk modules, mount the scratch
/// disk, run the suite once per backend between markers, power off.
fn init_script() -> String {
    let mut runs = String::new();
    for backend in BACKENDS {
        let environment = run_environment(backend);
        runs.push_str(&format!(
            "    echo \"{MARK} begin {backend}\"\n    \
             {environment} /vm/privileged --test-threads=1 --nocapture\n    \
             echo \"{MARK} end {backend} status=$?\"\n"
        ));
    }
    format!(
        r#"#!/bin/sh
# Generated by `cargo xtask vm-test`.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
mount -t tracefs tracefs /sys/kernel/tracing
mount -t bpf bpf /sys/fs/bpf
echo "{MARK} kernel $(uname -r)"
for module in $(cat /modules/load); do
    insmod /modules/$module.ko || echo "{MARK} insmod $module failed"
done
# The disk appears once virtio has probed it.
i=0
while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
if mount -t ext4 /dev/vda /scratch; then
    export COW_TRACE_BIN=/vm/cow-trace COW_TRACE_WORKLOADS=/vm/workloads COW_TRACE_TEST_TMP=/scratch
{runs}    umount /scratch
    echo "{MARK} done"
else
    echo "{MARK} no scratch disk: mounting /dev/vda as ext4 failed"
fi
poweroff -f
"#
    )
}

fn write_executable(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// Packs the tree at `root` into a gzipped newc cpio archive, owned by root.
fn cpio_gz(root: &Path, archive: &Path) -> anyhow::Result<()> {
    util::run(
        Command::new("bash")
            .args([
                "-c",
                "set -euo pipefail; cd \"$1\"; find . -print0 \
                 | cpio --null -o -H newc -R 0:0 --quiet | gzip -1 > \"$2\"",
                "bash",
            ])
            .arg(root)
            .arg(archive),
    )
}

/// An unpacked Debian kernel package.
struct Kernel {
    /// `uname -r`, e.g. 6.1.0-57-amd64.
    release: String,
    vmlinuz: PathBuf,
    modules: PathBuf,
}

/// The newest kernel of `series`, downloaded and unpacked once into target/vm/kernels.
fn kernel(work: &Path, series: &Series) -> anyhow::Result<Kernel> {
    let kernels = work.join("kernels");
    let package = newest_package(series, &kernels)?;
    let tree = kernels.join(&package);
    if !tree.join(".complete").exists() {
        unpack(&package, &kernels, &tree)?;
        remove_superseded(&kernels, series, &package)?;
    }
    let boot = fs::read_dir(tree.join("boot"))?;
    let vmlinuz = boot
        .filter_map(|entry| Some(entry.ok()?.path()))
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .with_context(|| format!("{package} has no boot/vmlinuz-*"))?;
    let name = vmlinuz
        .file_name()
        .context("vmlinuz name")?
        .to_string_lossy();
    let release = name["vmlinuz-".len()..].to_string();
    let modules = tree.join("lib/modules").join(&release);
    Ok(Kernel {
        release,
        vmlinuz,
        modules,
    })
}

/// The newest image package of `series` apt knows; else (no package lists, offline) the
/// newest already unpacked; else the newest apt knows after updating its lists.
fn newest_package(series: &Series, kernels: &Path) -> anyhow::Result<String> {
    let newest = |names: Vec<String>| {
        names
            .into_iter()
            .filter_map(|name| Some((version_key(&name, series)?, name)))
            .max()
            .map(|(_, name)| name)
    };
    if let Some(package) = newest(apt_packages(series)) {
        return Ok(package);
    }
    let unpacked = fs::read_dir(kernels)
        .into_iter()
        .flatten()
        .filter_map(|entry| Some(entry.ok()?.file_name().to_string_lossy().into_owned()))
        .collect();
    if let Some(package) = newest(unpacked) {
        return Ok(package);
    }
    util::run(Command::new("apt-get").args(["update", "-qq"]))?;
    newest(apt_packages(series))
        .with_context(|| format!("apt knows no linux-image-{}*-amd64", series.abi_prefix))
}

/// The names of the packages apt knows that start like `series`'s images.
fn apt_packages(series: &Series) -> Vec<String> {
    let pattern = format!("^linux-image-{}", series.abi_prefix.replace('.', "\\."));
    output(Command::new("apt-cache").args(["search", "--names-only", &pattern]))
        .unwrap_or_default()
        .lines()
        .filter_map(|line| Some(line.split_whitespace().next()?.to_string()))
        .collect()
}

/// Orders candidates: the numbers in the ABI name, then unsigned (the plain image) before
/// signed. None for what is not a plain amd64 image of `series` (cloud, rt, dbg, meta).
fn version_key(package: &str, series: &Series) -> Option<(Vec<u64>, bool)> {
    let name = package.strip_prefix("linux-image-")?;
    let (name, unsigned) = match name.strip_suffix("-unsigned") {
        Some(name) => (name, true),
        None => (name, false),
    };
    let abi = name.strip_suffix("-amd64")?;
    if !abi.starts_with(series.abi_prefix) {
        return None;
    }
    // "6.1.0-57" or "6.12.117+deb12": nothing but numbers and separators.
    let plain = abi.replace("+deb", ".");
    if !plain
        .chars()
        .all(|c| c.is_ascii_digit() || c == '.' || c == '-')
    {
        return None;
    }
    let numbers = plain
        .split(['.', '-'])
        .map(|n| n.parse().ok())
        .collect::<Option<Vec<u64>>>()?;
    Some((numbers, unsigned))
}

/// Downloads `package` with apt and unpacks it into `tree`, with a modules.dep from depmod.
fn unpack(package: &str, kernels: &Path, tree: &Path) -> anyhow::Result<()> {
    let download = kernels.join("download");
    if download.exists() {
        fs::remove_dir_all(&download)?;
    }
    fs::create_dir_all(&download)?;
    // As root apt would hand the download to its _apt user, which cannot write here.
    util::run(Command::new("apt-get").current_dir(&download).args([
        "-o",
        "APT::Sandbox::User=root",
        "download",
        package,
    ]))?;
    let deb = fs::read_dir(&download)?
        .filter_map(|entry| Some(entry.ok()?.path()))
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .with_context(|| format!("apt-get download {package} left no .deb"))?;
    if tree.exists() {
        fs::remove_dir_all(tree)?;
    }
    util::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(tree))?;
    fs::remove_dir_all(&download)?;
    for release in fs::read_dir(tree.join("lib/modules"))? {
        let release = release?.file_name();
        util::run(Command::new("depmod").arg("-b").arg(tree).arg(&release))?;
    }
    fs::write(tree.join(".complete"), "")?;
    Ok(())
}

/// Removes the unpacked kernels of `series` other than `keep`, which superseded them.
fn remove_superseded(kernels: &Path, series: &Series, keep: &str) -> anyhow::Result<()> {
    for entry in fs::read_dir(kernels)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name != keep && version_key(&name, series).is_some() {
            fs::remove_dir_all(kernels.join(&name))?;
        }
    }
    Ok(())
}

/// One row of the result table.
struct Row {
    kernel: String,
    backend: String,
    outcome: Outcome,
}

enum Outcome {
    /// The suite ran to its end: its counts, the failed tests, and its exit status.
    Ran {
        passed: u64,
        failed: u64,
        failures: Vec<String>,
        /// Tests that returned early, saying why (counted by libtest as passed).
        skipped: Vec<String>,
        status: i32,
    },
    /// The suite did not run or did not finish: why.
    Missing(String),
}

impl Outcome {
    fn passed(&self) -> bool {
        matches!(self, Outcome::Ran { failed: 0, status: 0, passed, .. } if *passed > 0)
    }
}

/// A VM ready to boot: its kernel, initramfs, scratch disk and console log.
struct Vm {
    release: String,
    vmlinuz: PathBuf,
    initrd: PathBuf,
    disk: PathBuf,
    log: PathBuf,
}

/// Puts together the initramfs (shared part + this kernel's modules) and a fresh disk.
fn prepare(work: &Path, kernel: &Kernel, base: &Path) -> anyhow::Result<Vm> {
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

/// One row per backend from the VM's console, and on failure what went wrong.
fn results(vm: &Vm, booted: anyhow::Result<()>) -> Vec<Row> {
    // The serial console ends lines with CR LF, and the firmware sends terminal escapes
    // (one resets the terminal): keep text only.
    let console: String = fs::read_to_string(&vm.log)
        .unwrap_or_default()
        .chars()
        .filter(|c| !c.is_control() || *c == '\n' || *c == '\t')
        .collect();
    let rows = rows(&vm.release, &console, booted.err());
    for row in rows.iter().filter(|r| !r.outcome.passed()) {
        print_failure(row, &console);
    }
    rows
}

/// The kernel's disk modules and their dependencies, decompressed, with /modules/load listing
/// them in load order. Returns the gzipped cpio archive.
fn modules_initramfs(kernel: &Kernel, dir: &Path) -> anyhow::Result<PathBuf> {
    let root = dir.join("modules-root");
    if root.exists() {
        fs::remove_dir_all(&root)?;
    }
    fs::create_dir_all(root.join("modules"))?;
    let mut names = Vec::new();
    for path in module_load_order(kernel)? {
        let name = module_name(&path);
        decompress(
            &kernel.modules.join(&path),
            &root.join(format!("modules/{name}.ko")),
        )?;
        names.push(name);
    }
    fs::write(root.join("modules/load"), names.join("\n") + "\n")?;
    let archive = dir.join("modules.cpio.gz");
    cpio_gz(&root, &archive)?;
    Ok(archive)
}

/// The module files (relative to the modules directory) to insmod for MODULES, each after
/// its dependencies (from modules.dep). Modules built into the kernel need nothing.
fn module_load_order(kernel: &Kernel) -> anyhow::Result<Vec<String>> {
    let dep =
        fs::read_to_string(kernel.modules.join("modules.dep")).context("reading modules.dep")?;
    let builtin = fs::read_to_string(kernel.modules.join("modules.builtin")).unwrap_or_default();
    let deps: Vec<(String, Vec<String>)> = dep
        .lines()
        .filter_map(|line| {
            let (module, needs) = line.split_once(':')?;
            Some((
                module.to_string(),
                needs.split_whitespace().map(String::from).collect(),
            ))
        })
        .collect();
    let mut order = Vec::new();
    for wanted in MODULES {
        let same = |path: &str| module_name(path).replace('-', "_") == *wanted;
        if builtin.lines().any(same) {
            continue;
        }
        let (path, _) = deps
            .iter()
            .find(|(path, _)| same(path))
            .with_context(|| format!("{} has no module {wanted}", kernel.release))?;
        add_with_dependencies(path, &deps, &mut order);
    }
    Ok(order)
}

/// Appends `path`'s dependencies, then `path`, to `order` (each once).
fn add_with_dependencies(path: &str, deps: &[(String, Vec<String>)], order: &mut Vec<String>) {
    if order.iter().any(|p| p == path) {
        return;
    }
    if let Some((_, needs)) = deps.iter().find(|(p, _)| p == path) {
        for need in needs {
            add_with_dependencies(need, deps, order);
        }
    }
    order.push(path.to_string());
}

/// "kernel/fs/ext4/ext4.ko.xz" -> "ext4".
fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    file.split(".ko").next().unwrap_or(file).to_string()
}

/// Copies a module, decompressing .ko.xz / .ko.zst / .ko.gz: busybox's insmod wants plain ELF.
fn decompress(source: &Path, dest: &Path) -> anyhow::Result<()> {
    let tool = match source.extension().and_then(|e| e.to_str()) {
        Some("xz") => "xz",
        Some("zst") => "zstd",
        Some("gz") => "gzip",
        _ => {
            fs::copy(source, dest).with_context(|| format!("copying {}", source.display()))?;
            return Ok(());
        }
    };
    let out = fs::File::create(dest)?;
    let status = Command::new(tool)
        .arg("-dc")
        .arg(source)
        .stdout(out)
        .status()
        .with_context(|| format!("starting {tool}"))?;
    if !status.success() {
        bail!("{tool} -dc {} failed: {status}", source.display());
    }
    Ok(())
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
fn boot(vm: &Vm) -> anyhow::Result<()> {
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

/// One row per backend from the console output; `error` is why the VM itself failed, if it did.
fn rows(release: &str, console: &str, error: Option<anyhow::Error>) -> Vec<Row> {
    let problem = vm_problem(console, error);
    BACKENDS
        .iter()
        .map(|backend| Row {
            kernel: release.to_string(),
            backend: backend.to_string(),
            outcome: outcome(console, backend, problem.as_deref()),
        })
        .collect()
}

/// Why the VM did not get through /init, if it did not: qemu's failure, else what /init said
/// went wrong (insmod, mount).
fn vm_problem(console: &str, error: Option<anyhow::Error>) -> Option<String> {
    if let Some(error) = error {
        return Some(format!("{error:#}"));
    }
    if console.lines().any(|l| l == format!("{MARK} done")) {
        return None;
    }
    let said: Vec<&str> = console
        .lines()
        .filter_map(|l| l.strip_prefix(MARK)?.strip_prefix(' '))
        .filter(|l| {
            !["kernel ", "begin ", "end "]
                .iter()
                .any(|p| l.starts_with(p))
        })
        .collect();
    Some(if let Some(crash) = crash_line(console) {
        format!("the kernel crashed: {}", &crash[crash_start(crash)..])
    } else if said.is_empty() {
        "the VM stopped before the suite finished".to_string()
    } else {
        said.join("; ")
    })
}

/// What starts a kernel crash report (it may begin mid-line, after the suite's own output).
const CRASH_SIGNS: &[&str] = &[
    "Oops: ",
    "BUG: ",
    "Kernel panic - not syncing",
    "general protection fault",
];

/// The first console line with a kernel crash report.
fn crash_line(console: &str) -> Option<&str> {
    console
        .lines()
        .find(|l| CRASH_SIGNS.iter().any(|sign| l.contains(sign)))
}

/// Where in `line` the crash report starts.
fn crash_start(line: &str) -> usize {
    CRASH_SIGNS
        .iter()
        .filter_map(|sign| line.find(sign))
        .min()
        .unwrap_or(0)
}

/// What the suite reported for `backend` between its begin and end markers.
fn outcome(console: &str, backend: &str, problem: Option<&str>) -> Outcome {
    let Some(section) = section(console, backend) else {
        return Outcome::Missing(problem.unwrap_or("the suite never started").to_string());
    };
    let end = format!("{MARK} end {backend} status=");
    let status = section
        .iter()
        .find_map(|l| l.strip_prefix(&end)?.trim().parse().ok());
    let Some(status) = status else {
        let why = problem.unwrap_or("the suite did not finish");
        return Outcome::Missing(why.to_string());
    };
    let result = section.iter().find_map(|l| l.strip_prefix("test result: "));
    let count = |label: &str| result.map_or(0, |r| count_in(r, label));
    Outcome::Ran {
        passed: count(" passed"),
        failed: count(" failed"),
        failures: section
            .iter()
            .filter_map(|l| l.strip_prefix("test ")?.strip_suffix(" ... FAILED"))
            .map(String::from)
            .collect(),
        skipped: section.iter().filter_map(|l| skipped_test(l)).collect(),
        status,
    }
}

/// "skipped NAME: why" (tests/common's `skip`), possibly after libtest's "test NAME ... "
/// on the same line: NAME and why.
pub fn skipped_test(line: &str) -> Option<String> {
    let (_, said) = line.split_once("skipped ")?;
    let (name, why) = said.split_once(": ")?;
    let name = name.trim();
    (!name.is_empty() && !name.contains(' ')).then(|| format!("{name} ({})", why.trim()))
}

/// The console lines from `backend`'s begin marker to its end marker (or the end).
fn section<'a>(console: &'a str, backend: &str) -> Option<Vec<&'a str>> {
    let begin = format!("{MARK} begin {backend}");
    let mut lines = console.lines();
    lines.find(|l| *l == begin)?;
    let end = format!("{MARK} end {backend} ");
    let mut section = Vec::new();
    for line in lines {
        section.push(line);
        if line.starts_with(&end) {
            break;
        }
    }
    Some(section)
}

/// The number before `label` in a libtest result line ("ok. 8 passed; 0 failed; ...").
fn count_in(result: &str, label: &str) -> u64 {
    result
        .split(';')
        .find_map(|part| part.trim().strip_suffix(label))
        .and_then(|n| n.trim().rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

/// On failure: the suite's own report for that backend, or the end of the console log.
fn print_failure(row: &Row, console: &str) {
    eprintln!(
        "\n==== vm-test: {} / {} failed ====",
        row.kernel, row.backend
    );
    match (&row.outcome, section(console, &row.backend)) {
        (Outcome::Ran { .. }, Some(section)) => {
            let report = section.iter().skip_while(|l| !l.starts_with("failures:"));
            for line in report {
                eprintln!("{line}");
            }
        }
        _ => {
            // From the crash report if there is one, else the end of the log.
            let lines: Vec<&str> = console.lines().collect();
            let crash = crash_line(console).and_then(|c| lines.iter().position(|l| *l == c));
            let from = crash.unwrap_or(lines.len().saturating_sub(40));
            for line in lines.iter().skip(from).take(60) {
                eprintln!("{line}");
            }
        }
    }
    eprintln!("==== end of {} / {} ====\n", row.kernel, row.backend);
}

/// Prints the result table and an overall line; returns how many rows failed.
fn print_table(rows: &[Row]) -> usize {
    let width = rows
        .iter()
        .map(|r| r.kernel.len())
        .max()
        .unwrap_or(0)
        .max(6);
    let backend_width = BACKENDS.iter().map(|b| b.len()).max().unwrap_or(0).max(7);
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "\n{:width$} | {:backend_width$} | result",
        "kernel", "backend"
    );
    let _ = writeln!(
        out,
        "{:-<width$}-+-{:-<backend_width$}-+-{:-<40}",
        "", "", ""
    );
    let mut failed = 0;
    for row in rows {
        if !row.outcome.passed() {
            failed += 1;
        }
        let result = describe(&row.outcome);
        let _ = writeln!(
            out,
            "{:width$} | {:backend_width$} | {result}",
            row.kernel, row.backend
        );
    }
    let kernels: BTreeSet<&str> = rows.iter().map(|r| r.kernel.as_str()).collect();
    let verdict = if failed == 0 { "passed" } else { "FAILED" };
    let _ = writeln!(
        out,
        "overall: {verdict} ({} of {} runs passed on {} kernels)",
        rows.len() - failed,
        rows.len(),
        kernels.len()
    );
    failed
}

fn describe(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Ran {
            passed,
            failed,
            failures,
            skipped,
            status,
        } => {
            let verdict = if outcome.passed() { "passed" } else { "FAILED" };
            let ran = passed - skipped.len() as u64;
            let mut text = format!("{verdict} ({ran} passed, {failed} failed");
            if !failures.is_empty() {
                text.push_str(&format!(": {}", failures.join(", ")));
            }
            if !skipped.is_empty() {
                text.push_str(&format!(
                    ", {} skipped: {}",
                    skipped.len(),
                    skipped.join(", ")
                ));
            }
            if *status != 0 && *failed == 0 {
                text.push_str(&format!("; exit status {status}"));
            }
            text + ")"
        }
        Outcome::Missing(why) => format!("FAILED (no result: {why})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_newest_plain_image_unsigned_first() {
        let names = [
            "linux-image-6.12.9+deb12-amd64",
            "linux-image-6.12.117+deb12-amd64",
            "linux-image-6.12.117+deb12-amd64-unsigned",
            "linux-image-6.12.118+deb12-cloud-amd64",
            "linux-image-6.12.118+deb12-rt-amd64-unsigned",
            "linux-image-6.12.118+deb12-amd64-dbg",
            "linux-image-6.1.0-57-amd64-unsigned",
        ];
        let newest = |series: &Series| {
            names
                .iter()
                .filter_map(|n| Some((version_key(n, series)?, *n)))
                .max()
                .map(|(_, n)| n)
        };
        assert_eq!(
            newest(&SERIES[1]),
            Some("linux-image-6.12.117+deb12-amd64-unsigned")
        );
        assert_eq!(
            newest(&SERIES[0]),
            Some("linux-image-6.1.0-57-amd64-unsigned")
        );
    }

    #[test]
    fn reads_ldd_and_module_paths() {
        assert_eq!(
            ldd_path("\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)"),
            Some(PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"))
        );
        assert_eq!(
            ldd_path("\t/lib64/ld-linux-x86-64.so.2 (0x00007f)"),
            Some(PathBuf::from("/lib64/ld-linux-x86-64.so.2"))
        );
        assert_eq!(ldd_path("\tlinux-vdso.so.1 (0x00007ffd)"), None);
        assert_eq!(module_name("kernel/fs/ext4/ext4.ko.xz"), "ext4");
        assert_eq!(
            module_name("kernel/crypto/crc32c_generic.ko"),
            "crc32c_generic"
        );
    }

    #[test]
    fn reads_the_suite_between_markers() {
        let console = "@@vm-test kernel 6.1.0-57-amd64\n@@vm-test begin tracepoint\n\
            running 3 tests\ntest a ... ok\ntest b ... FAILED\n\
            test c ... skipped c: no such field on this kernel\nok\n\
            test result: FAILED. 2 passed; 1 failed; 0 ignored; 0 measured\n\
            @@vm-test end tracepoint status=101\n@@vm-test done\n";
        let rows = rows("6.1.0-57-amd64", console, None);
        let row = rows
            .iter()
            .find(|r| r.backend == "tracepoint")
            .expect("no tracepoint row");
        let Outcome::Ran {
            passed,
            failed,
            failures,
            skipped,
            status,
        } = &row.outcome
        else {
            panic!("no result")
        };
        assert_eq!((*passed, *failed, *status), (2, 1, 101));
        assert_eq!(failures, &["b"]);
        assert_eq!(skipped, &["c (no such field on this kernel)"]);
        assert_eq!(
            describe(&row.outcome),
            "FAILED (1 passed, 1 failed: b, 1 skipped: c (no such field on this kernel))"
        );
        assert!(!row.outcome.passed());
        // The backends whose markers are missing did not run: that is a failure too.
        assert!(
            rows.iter()
                .filter(|r| r.backend != "tracepoint")
                .all(|r| !r.outcome.passed())
        );
    }

    #[test]
    fn a_crash_is_reported_as_such() {
        let console = "@@vm-test begin tracepoint\ntest a ... [ 15.6] Oops: int3: 0000 [#1]\n\
            [ 15.7] Kernel panic - not syncing: Fatal exception\n";
        let rows = rows("6.12", console, None);
        let Outcome::Missing(why) = &rows[0].outcome else {
            panic!("a result")
        };
        assert_eq!(why, "the kernel crashed: Oops: int3: 0000 [#1]");
    }
}
