//! `cargo xtask setup`: installs what a fresh machine lacks. Idempotent, and quick when
//! everything is present. What each piece is for, and why these versions: docs/toolchain.md.
use std::process::Command;

use anyhow::bail;

use crate::util::{self, output};

/// Debian packages: LLVM for bpf-linker, a C compiler for the test workloads, bpftool to check
/// nothing stays attached, and the peers and tools the tests, benchmarks and demos use.
const PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "gcc",
    "libc6-dev",
    "bpftool",
    "bpftrace",
    "linux-perf",
    "redis-server",
    "redis-tools",
];

const BPF_LINKER_VERSION: &str = "0.13.0";

/// The static (musl) targets `cargo xtask dist` builds. Both link with rustc's own rust-lld
/// and musl start files (.cargo/config.toml): no cross C toolchain.
const DIST_TARGETS: [&str; 2] = ["x86_64-unknown-linux-musl", "aarch64-unknown-linux-musl"];

/// Builds the .debs of `cargo xtask dist`; the newest release that builds with stable 1.95.
const CARGO_DEB_VERSION: &str = "3.8.0";

pub fn run() -> anyhow::Result<()> {
    install_packages(PACKAGES)?;
    install_rust_src()?;
    install_bpf_linker()?;
    install_dist_targets()?;
    install_cargo_deb()?;
    eprintln!("setup: everything is in place");
    Ok(())
}

/// apt-get installs whichever of `packages` are missing (nothing, without even an update,
/// when all are there).
pub fn install_packages(packages: &[&str]) -> anyhow::Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| {
            output(Command::new("dpkg-query").args(["-W", "-f=${Status}", p]))
                .is_none_or(|status| !status.contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !nix_is_root() {
        bail!("setup must install {missing:?} with apt-get: run it as root");
    }
    util::run(Command::new("apt-get").arg("update").arg("-qq"))?;
    util::run(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing),
    )
}

fn install_rust_src() -> anyhow::Result<()> {
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        "nightly",
    ]))
    .unwrap_or_default();
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        return Ok(());
    }
    util::run(Command::new("rustup").args([
        "component",
        "add",
        "rust-src",
        "--toolchain",
        "nightly",
    ]))
}

fn install_bpf_linker() -> anyhow::Result<()> {
    let version = output(Command::new("bpf-linker").arg("--version")).unwrap_or_default();
    if version.contains(BPF_LINKER_VERSION) {
        return Ok(());
    }
    // bpf-linker must use an LLVM of rustc's major version (22); without LLVM_PREFIX its build
    // finds no libLLVM.
    util::run(
        Command::new("cargo")
            .env("LLVM_PREFIX", "/usr/lib/llvm-22")
            .args([
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--locked",
                "--no-default-features",
                "--features",
                "llvm-22",
            ]),
    )
}

fn install_dist_targets() -> anyhow::Result<()> {
    let installed =
        output(Command::new("rustup").args(["target", "list", "--installed"])).unwrap_or_default();
    let missing: Vec<&str> = DIST_TARGETS
        .into_iter()
        .filter(|target| !installed.lines().any(|line| line.trim() == *target))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    util::run(Command::new("rustup").args(["target", "add"]).args(missing))
}

fn install_cargo_deb() -> anyhow::Result<()> {
    let version = output(Command::new("cargo").args(["deb", "--version"])).unwrap_or_default();
    if version
        .split_whitespace()
        .any(|word| word == CARGO_DEB_VERSION)
    {
        return Ok(());
    }
    util::run(Command::new("cargo").args([
        "install",
        "cargo-deb",
        "--version",
        CARGO_DEB_VERSION,
        "--locked",
    ]))
}

fn nix_is_root() -> bool {
    output(Command::new("id").arg("-u")).is_some_and(|uid| uid.trim() == "0")
}
