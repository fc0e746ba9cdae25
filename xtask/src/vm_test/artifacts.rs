//! What goes into the VMs from the build, for one architecture: cow-trace as it ships (the
//! static musl binary of `cargo xtask dist`), the privileged suite and the C workloads.
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

/// Builds the shipped cow-trace, the privileged test binary (debug, as `cargo xtask test`
/// does: on x86-64 the host's, so CI builds it once; on arm64 for the static musl target) and
/// the C workloads with the architecture's compiler.
pub fn build(arch: &VmArch) -> anyhow::Result<Artifacts> {
    let root = util::root();
    let cow_trace = dist::static_binary(arch.dist)?;
    let mut test = vec![
        "test",
        "--package",
        "cow-trace",
        "--test",
        "privileged",
        "--no-run",
    ];
    if arch.name() != X86_64.name() {
        test.extend(["--target", arch.dist.target]);
    }
    let suite = cargo_executable(&test, "privileged")?;
    let out = root.join("target/vm").join(arch.name()).join("workloads");
    let mut workloads = Vec::new();
    for source in fs::read_dir(root.join("cow-trace/tests/workloads"))? {
        let source = source?.path();
        if source.extension().is_some_and(|e| e == "c") {
            let name = source.file_stem().context("workload name")?;
            workloads.push(util::workload_with(&name.to_string_lossy(), arch.cc, &out)?);
        }
    }
    workloads.extend(util::unwind_workloads(arch.cc, &out)?);
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
