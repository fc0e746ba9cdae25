//! `cargo xtask dist`: cow-trace as users install it. For x86-64 and arm64, a static binary
//! (musl, with the eBPF object built for that architecture embedded: aya-build passes the
//! target's architecture to the eBPF build), packed two ways under target/dist:
//! `cow-trace-VERSION-ARCH-linux.tar.gz` (binary, man page, completions, README, licences) and
//! a `.deb` (cargo-deb, metadata in cow-trace/Cargo.toml), plus `SHA256SUMS`.
use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

use crate::{docs, setup, util};

/// A CPU architecture cow-trace ships for.
pub struct Arch {
    /// Rust's name, as in the tarball's name: "x86_64", "aarch64".
    pub name: &'static str,
    /// The musl target the static binary is built for.
    pub target: &'static str,
    /// Debian's name, as in the .deb's name: "amd64", "arm64".
    pub debian: &'static str,
}

pub const X86_64: Arch = Arch {
    name: "x86_64",
    target: "x86_64-unknown-linux-musl",
    debian: "amd64",
};

pub const AARCH64: Arch = Arch {
    name: "aarch64",
    target: "aarch64-unknown-linux-musl",
    debian: "arm64",
};

pub const ARCHES: [&Arch; 2] = [&X86_64, &AARCH64];

/// The cargo profile of shipped binaries: release, stripped (workspace Cargo.toml). (Not
/// "dist": cargo would put its host artifacts in target/dist.)
const PROFILE: &str = "release-stripped";

/// The generated completions shipped, by clap_complete's file names.
const COMPLETIONS: [&str; 3] = ["cow-trace.bash", "_cow-trace", "cow-trace.fish"];

/// Files of the repository shipped in every tarball.
const DOCUMENTS: [&str; 3] = ["README.md", "LICENSE-MIT", "LICENSE-APACHE"];

pub fn run() -> anyhow::Result<()> {
    setup::run()?;
    let dir = build_all()?;
    println!("{}", dir.display());
    Ok(())
}

/// Builds every artifact into target/dist (emptied first) and returns that directory.
pub fn build_all() -> anyhow::Result<PathBuf> {
    let dist = dist_dir();
    if dist.exists() {
        std::fs::remove_dir_all(&dist).with_context(|| format!("emptying {}", dist.display()))?;
    }
    std::fs::create_dir_all(&dist)?;
    docs::man()?;
    docs::completions()?;
    let version = util::cow_trace_version()?;
    let mut artifacts = Vec::new();
    for arch in ARCHES {
        let binary = static_binary(arch)?;
        artifacts.push(tarball(arch, &binary, &version)?);
        artifacts.push(deb(arch)?);
    }
    write_checksums(&dist, &artifacts)?;
    eprintln!("dist: {} artifacts in {}", artifacts.len(), dist.display());
    Ok(dist)
}

/// target/dist.
pub fn dist_dir() -> PathBuf {
    util::root().join("target/dist")
}

/// Builds cow-trace for `arch`'s musl target and returns the binary. Its build script builds the
/// eBPF object with `--cfg bpf_target_arch` set to the target's architecture (aya-build).
pub fn static_binary(arch: &Arch) -> anyhow::Result<PathBuf> {
    util::run(Command::new("cargo").current_dir(util::root()).args([
        "build",
        "--package",
        "cow-trace",
        "--profile",
        PROFILE,
        "--target",
        arch.target,
    ]))?;
    Ok(util::root()
        .join("target")
        .join(arch.target)
        .join(PROFILE)
        .join("cow-trace"))
}

/// The tarball's name without `.tar.gz`, which is also its top directory.
fn tarball_stem(arch: &Arch, version: &str) -> String {
    format!("cow-trace-{version}-{}-linux", arch.name)
}

/// Packs `binary`, the man page, the completions, README and licences into
/// target/dist/cow-trace-VERSION-ARCH-linux.tar.gz, under a directory of the same name.
fn tarball(arch: &Arch, binary: &Path, version: &str) -> anyhow::Result<PathBuf> {
    let root = util::root();
    let stem = tarball_stem(arch, version);
    let staging = root.join("target/dist-staging").join(&stem);
    if staging.exists() {
        std::fs::remove_dir_all(&staging)?;
    }
    std::fs::create_dir_all(staging.join("completions"))?;
    let copy = |from: &Path, to: &Path| -> anyhow::Result<()> {
        std::fs::copy(from, to)
            .map(drop)
            .with_context(|| format!("copying {} to {}", from.display(), to.display()))
    };
    copy(binary, &staging.join("cow-trace"))?;
    copy(
        &root.join("target/man/cow-trace.1"),
        &staging.join("cow-trace.1"),
    )?;
    for name in COMPLETIONS {
        copy(
            &root.join("target/completions").join(name),
            &staging.join("completions").join(name),
        )?;
    }
    for name in DOCUMENTS {
        copy(&root.join(name), &staging.join(name))?;
    }
    let tarball = dist_dir().join(format!("{stem}.tar.gz"));
    // Owned by root and in name order, whoever builds it.
    util::run(
        Command::new("tar")
            .current_dir(staging.parent().context("staging has a parent")?)
            .args([
                "--sort=name",
                "--owner=0",
                "--group=0",
                "--numeric-owner",
                "-czf",
            ])
            .arg(&tarball)
            .arg(&stem),
    )?;
    Ok(tarball)
}

/// Builds the .deb for `arch` from the binary already built, with cargo-deb, into target/dist.
fn deb(arch: &Arch) -> anyhow::Result<PathBuf> {
    let output = util::output(
        Command::new("cargo")
            .current_dir(util::root())
            .args([
                "deb",
                "--package",
                "cow-trace",
                "--target",
                arch.target,
                "--profile",
                PROFILE,
                // Built (and stripped) above.
                "--no-build",
                "--no-strip",
                "--output",
            ])
            .arg(dist_dir())
            // Its stdout names the package; its messages show as they come.
            .stderr(Stdio::inherit()),
    )
    .with_context(|| format!("cargo deb for {} failed (see above)", arch.target))?;
    // cargo-deb prints the path of the package it wrote.
    let path = PathBuf::from(output.trim());
    let expected_end = format!("_{}.deb", arch.debian);
    if !path.is_file() || !path.to_string_lossy().ends_with(&expected_end) {
        bail!("cargo deb wrote no *{expected_end} package (it said {output:?})");
    }
    Ok(path)
}

/// target/dist/SHA256SUMS, in `sha256sum -c`'s format.
fn write_checksums(dist: &Path, artifacts: &[PathBuf]) -> anyhow::Result<()> {
    let names: Vec<&str> = artifacts
        .iter()
        .map(|path| {
            path.file_name()
                .and_then(|n| n.to_str())
                .context("artifact name")
        })
        .collect::<anyhow::Result<_>>()?;
    let sums = util::output(Command::new("sha256sum").current_dir(dist).args(&names))
        .context("sha256sum failed")?;
    std::fs::write(dist.join("SHA256SUMS"), sums).context("writing SHA256SUMS")
}

/// Unpacks `arch`'s tarball from target/dist into target/dist-unpacked and returns the binary
/// in it: tests run what ships.
pub fn unpacked_binary(arch: &Arch) -> anyhow::Result<PathBuf> {
    let version = util::cow_trace_version()?;
    let stem = tarball_stem(arch, &version);
    let into = util::root().join("target/dist-unpacked").join(arch.name);
    if into.exists() {
        std::fs::remove_dir_all(&into)?;
    }
    std::fs::create_dir_all(&into)?;
    util::run(
        Command::new("tar")
            .arg("-xzf")
            .arg(dist_dir().join(format!("{stem}.tar.gz")))
            .arg("-C")
            .arg(&into),
    )?;
    Ok(into.join(stem).join("cow-trace"))
}
