//! What goes into the VMs from the build: cow-trace, the privileged suite, the C workloads.
use std::{fs, path::PathBuf, process::Command};

use anyhow::Context as _;

use crate::util::{self, output};

/// What goes into the VMs from the build.
pub struct Artifacts {
    pub cow_trace: PathBuf,
    pub suite: PathBuf,
    pub workloads: Vec<PathBuf>,
}

/// Builds cow-trace, the privileged test binary (debug, as `cargo xtask test` does, so CI
/// builds them once) and the C workloads.
pub fn build() -> anyhow::Result<Artifacts> {
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
    workloads.extend(util::unwind_workloads()?);
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
