//! Debian packages unpacked without installing them: the kernels the VMs boot, and another
//! architecture's busybox.
use std::{fs, path::Path, process::Command};

use anyhow::Context as _;

use crate::util;

/// Downloads `package` (`name`, or `name:arch`) with apt into `scratch` and unpacks its files
/// under `tree` (`dpkg-deb -x`); `scratch` is emptied first and removed after.
pub fn unpack(package: &str, scratch: &Path, tree: &Path) -> anyhow::Result<()> {
    if scratch.exists() {
        fs::remove_dir_all(scratch)?;
    }
    fs::create_dir_all(scratch)?;
    // As root apt would hand the download to its _apt user, which cannot write here.
    util::run(Command::new("apt-get").current_dir(scratch).args([
        "-o",
        "APT::Sandbox::User=root",
        "download",
        package,
    ]))?;
    let deb = fs::read_dir(scratch)?
        .filter_map(|entry| Some(entry.ok()?.path()))
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .with_context(|| format!("apt-get download {package} left no .deb"))?;
    util::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(tree))?;
    fs::remove_dir_all(scratch)?;
    Ok(())
}
