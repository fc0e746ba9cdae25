//! What goes into the VMs from the build: cow-trace as it ships (the static musl binary of
//! `cargo xtask dist`), the privileged suite and the C workloads, for one architecture.
use std::{fs, path::PathBuf, process::Command};

use anyhow::Context as _;

use super::arch::{VmArch, X86_64};
use crate::{
    dist,
    util::{self, output},
};

/// What goes into the VMs from the build.
pub struct Artifacts {
    pub cow_trace: PathBuf,
    pub suite: PathBuf,
    pub workloads: Vec<PathBuf>,
}

/// Builds cow-trace, the privileged test binary (debug, as `cargo xtask test` does; for
/// x86-64 the host's, so CI builds it once) and the C workloads. arm64 gets the shipped static
/// binary and static workloads; x86-64 still the host's glibc builds, which its VMs have
/// passed with (the static ones there are not yet verified in a VM).
pub fn build(arch: &VmArch) -> anyhow::Result<Artifacts> {
    let root = util::root();
    if arch.name() == X86_64.name() {
        return host_build();
    }
    let cow_trace = dist::static_binary(arch.dist)?;
    let suite = cargo_executable(
        &[
            "test",
            "--package",
            "cow-trace",
            "--test",
            "privileged",
            "--no-run",
            "--target",
            arch.dist.target,
        ],
        "privileged",
    )?;
    let out = root.join("target/vm").join(arch.name()).join("workloads");
    fs::create_dir_all(&out)?;
    let mut workloads = Vec::new();
    for source in fs::read_dir(root.join("cow-trace/tests/workloads"))? {
        let source = source?.path();
        if source.extension().is_some_and(|e| e == "c") {
            let name = source.file_stem().context("workload name")?;
            let binary = out.join(name);
            util::run(
                Command::new(arch.cc)
                    .args(["-O1", "-fno-omit-frame-pointer", "-pthread", "-Wall"])
                    .args(["-static", "-o"])
                    .arg(&binary)
                    .arg(&source),
            )
            .with_context(|| format!("{} could not build {}", arch.cc, source.display()))?;
            workloads.push(binary);
        }
    }
    Ok(Artifacts {
        cow_trace,
        suite,
        workloads,
    })
}

/// cow-trace and the suite built for the host, the workloads with the host's compiler.
fn host_build() -> anyhow::Result<Artifacts> {
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
    for source in fs::read_dir(util::root().join("cow-trace/tests/workloads"))? {
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
