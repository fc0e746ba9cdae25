//! Debian's kernels: the newest image package of each series for each architecture,
//! downloaded and unpacked once into target/vm/kernels.
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::Context as _;

use super::{arch::VmArch, debs};
use crate::util::{self, output};

/// A Debian kernel series: the newest image whose ABI name starts with `abi_prefix`.
pub struct Series {
    abi_prefix: &'static str,
}

pub const SERIES: &[Series] = &[
    Series {
        abi_prefix: "6.1.0-",
    },
    Series {
        abi_prefix: "6.12.",
    },
];

/// An unpacked Debian kernel package.
pub struct Kernel {
    /// `uname -r`, e.g. 6.1.0-57-amd64.
    pub release: String,
    pub arch: &'static VmArch,
    pub vmlinuz: PathBuf,
    pub modules: PathBuf,
}

/// The newest kernel of `series` for `arch`, downloaded and unpacked once into
/// target/vm/kernels.
pub fn kernel(work: &Path, arch: &'static VmArch, series: &Series) -> anyhow::Result<Kernel> {
    let kernels = work.join("kernels");
    let debian = arch.dist.debian;
    let package = newest_package(series, debian, &kernels)?;
    let tree = kernels.join(&package);
    if !tree.join(".complete").exists() {
        unpack(&format!("{package}:{debian}"), &kernels, &tree)?;
        remove_superseded(&kernels, series, debian, &package)?;
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
        arch,
        vmlinuz,
        modules,
    })
}

/// The newest image package of `series` apt knows; else (no package lists, offline) the
/// newest already unpacked; else the newest apt knows after updating its lists.
fn newest_package(series: &Series, debian: &str, kernels: &Path) -> anyhow::Result<String> {
    let newest = |names: Vec<String>| {
        names
            .into_iter()
            .filter_map(|name| Some((version_key(&name, series, debian)?, name)))
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
        .with_context(|| format!("apt knows no linux-image-{}*-{debian}", series.abi_prefix))
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
/// signed. None for what is not a plain image of `series` for Debian's architecture `debian`
/// (cloud, rt, 16k, dbg, meta).
fn version_key(package: &str, series: &Series, debian: &str) -> Option<(Vec<u64>, bool)> {
    let name = package.strip_prefix("linux-image-")?;
    let (name, unsigned) = match name.strip_suffix("-unsigned") {
        Some(name) => (name, true),
        None => (name, false),
    };
    let abi = name.strip_suffix(debian)?.strip_suffix('-')?;
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
    if tree.exists() {
        fs::remove_dir_all(tree)?;
    }
    debs::unpack(package, &kernels.join("download"), tree)?;
    for release in fs::read_dir(tree.join("lib/modules"))? {
        let release = release?.file_name();
        util::run(Command::new("depmod").arg("-b").arg(tree).arg(&release))?;
    }
    fs::write(tree.join(".complete"), "")?;
    Ok(())
}

/// Removes the unpacked kernels of `series` other than `keep`, which superseded them.
fn remove_superseded(
    kernels: &Path,
    series: &Series,
    debian: &str,
    keep: &str,
) -> anyhow::Result<()> {
    for entry in fs::read_dir(kernels)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name != keep && version_key(&name, series, debian).is_some() {
            fs::remove_dir_all(kernels.join(&name))?;
        }
    }
    Ok(())
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
            "linux-image-6.1.0-57-arm64-unsigned",
            "linux-image-6.12.117+deb12-arm64-16k",
            "linux-image-6.12.117+deb12-arm64",
        ];
        let newest = |series: &Series, debian: &str| {
            names
                .iter()
                .filter_map(|n| Some((version_key(n, series, debian)?, *n)))
                .max()
                .map(|(_, n)| n)
        };
        assert_eq!(
            newest(&SERIES[1], "amd64"),
            Some("linux-image-6.12.117+deb12-amd64-unsigned")
        );
        assert_eq!(
            newest(&SERIES[0], "amd64"),
            Some("linux-image-6.1.0-57-amd64-unsigned")
        );
        assert_eq!(
            newest(&SERIES[1], "arm64"),
            Some("linux-image-6.12.117+deb12-arm64")
        );
        assert_eq!(
            newest(&SERIES[0], "arm64"),
            Some("linux-image-6.1.0-57-arm64-unsigned")
        );
    }
}
