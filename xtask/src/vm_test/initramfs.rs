//! The initramfs: a part every kernel shares (busybox, /init, the binaries and their libraries)
//! and a part per kernel (its disk modules), each a gzipped cpio archive.
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use super::{
    MARK,
    arch::{VmArch, X86_64, run_environment},
    artifacts::Artifacts,
    kernels::Kernel,
};
use crate::util::{self, output};

/// The part of the initramfs every kernel shares: busybox, /init, the binaries and their
/// libraries, for `arch`. Returns the gzipped cpio archive.
pub fn base_initramfs(
    work: &Path,
    arch: &VmArch,
    artifacts: &Artifacts,
) -> anyhow::Result<PathBuf> {
    let work = work.join(arch.name());
    let root = work.join("base");
    if root.exists() {
        fs::remove_dir_all(&root).with_context(|| format!("clearing {}", root.display()))?;
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
    install_busybox(&root, &busybox(&work, arch)?)?;
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
    write_executable(&root.join("init"), &init_script(arch.backends))?;
    let archive = work.join("base.cpio.gz");
    cpio_gz(&root, &archive)?;
    Ok(archive)
}

/// The static busybox for `arch`: the host's for x86-64, else busybox-static of Debian's
/// architecture, downloaded and unpacked once under `work`.
fn busybox(work: &Path, arch: &VmArch) -> anyhow::Result<PathBuf> {
    if arch.name() == X86_64.name() {
        return Ok(PathBuf::from("/bin/busybox"));
    }
    let tree = work.join("busybox");
    let busybox = tree.join("bin/busybox");
    if busybox.exists() {
        return Ok(busybox);
    }
    let download = work.join("busybox-download");
    if download.exists() {
        fs::remove_dir_all(&download)?;
    }
    fs::create_dir_all(&download)?;
    // As root apt would hand the download to its _apt user, which cannot write here.
    util::run(Command::new("apt-get").current_dir(&download).args([
        "-o",
        "APT::Sandbox::User=root",
        "download",
        &format!("busybox-static:{}", arch.dist.debian),
    ]))?;
    let deb = fs::read_dir(&download)?
        .filter_map(|entry| Some(entry.ok()?.path()))
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .context("apt-get download busybox-static left no .deb")?;
    util::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tree))?;
    fs::remove_dir_all(&download)?;
    Ok(busybox)
}

/// `busybox` at /bin/busybox with a symlink per applet (the suite runs `sh -c ...`). The
/// applets are the host busybox's: the same Debian package, built the same way.
fn install_busybox(root: &Path, busybox: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(root.join("bin"))?;
    fs::copy(busybox, root.join("bin/busybox"))
        .with_context(|| format!("copying {}", busybox.display()))?;
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
fn init_script(backends: &[&str]) -> String {
    let mut runs = String::new();
    for backend in backends {
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
    # Swap on a RAM disk, whose writes complete at once: a page pushed out (MADV_PAGEOUT)
    # leaves memory at once, and a fault reads it back (the swap test).
    mkswap /dev/ram0 >/dev/null && swapon /dev/ram0 || echo "{MARK} no swap on /dev/ram0"
{runs}    swapoff /dev/ram0
    umount /scratch
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

/// What /init loads, with their dependencies, to mount the scratch disk: the virtio PCI
/// transport, the block driver, and ext4. crc32c is only a soft dependency of ext4 (absent
/// from modules.dep), yet mounting a filesystem with metadata checksums needs it. And brd,
/// RAM disks (16 MiB each by Debian's configuration), one of them for swap.
const MODULES: &[&str] = &["virtio_pci", "virtio_blk", "crc32c_generic", "ext4", "brd"];

/// The kernel's disk modules and their dependencies, decompressed, with /modules/load listing
/// them in load order. Returns the gzipped cpio archive.
pub fn modules_initramfs(kernel: &Kernel, dir: &Path) -> anyhow::Result<PathBuf> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
