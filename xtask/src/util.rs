//! Small helpers shared by the tasks.
use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{ChildStderr, Command, ExitStatus},
    sync::mpsc,
    thread,
};

use anyhow::{Context as _, bail};

/// The workspace root (xtask's parent directory).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// Runs `command` with inherited stdio; fails if it fails.
pub fn run(command: &mut Command) -> anyhow::Result<()> {
    let status = status(command)?;
    if !status.success() {
        bail!("{} failed: {status}", describe(command));
    }
    Ok(())
}

/// Runs `command` with inherited stdio and returns its status.
pub fn status(command: &mut Command) -> anyhow::Result<ExitStatus> {
    eprintln!("+ {}", describe(command));
    command
        .status()
        .with_context(|| format!("starting {}", describe(command)))
}

/// Runs `command` and returns its stdout, or None if it could not run or failed.
pub fn output(command: &mut Command) -> Option<String> {
    let output = command.output().ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

fn describe(command: &Command) -> String {
    let mut text = command.get_program().to_string_lossy().into_owned();
    for arg in command.get_args() {
        text.push(' ');
        text.push_str(&arg.to_string_lossy());
    }
    text
}

/// cow-trace's version, from its Cargo.toml (xtask has its own).
pub fn cow_trace_version() -> anyhow::Result<String> {
    let metadata = output(Command::new("cargo").current_dir(root()).args([
        "metadata",
        "--no-deps",
        "--format-version",
        "1",
    ]))
    .context("cargo metadata failed")?;
    let metadata: serde_json::Value = serde_json::from_str(&metadata)?;
    metadata["packages"]
        .as_array()
        .and_then(|packages| packages.iter().find(|p| p["name"] == "cow-trace"))
        .and_then(|package| package["version"].as_str())
        .map(str::to_string)
        .context("no cow-trace package in cargo metadata")
}

/// Builds cow-trace in release mode and returns the binary's path.
pub fn build_release() -> anyhow::Result<PathBuf> {
    run(Command::new("cargo").current_dir(root()).args([
        "build",
        "--release",
        "--package",
        "cow-trace",
    ]))?;
    Ok(root().join("target/release/cow-trace"))
}

/// Relays a cow-trace's stderr to ours, from a thread that ends with it; the receiver hears
/// once cow-trace says it is tracing (its probes attached).
pub fn relay_stderr(stderr: ChildStderr) -> (mpsc::Receiver<()>, thread::JoinHandle<()>) {
    let (ready, is_ready) = mpsc::channel();
    let relay = thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("{line}");
            if line.starts_with("Tracing ") {
                let _ = ready.send(());
            }
        }
    });
    (is_ready, relay)
}

/// Compiles one of the C test workloads into target/xtask with the host's compiler and returns
/// the binary's path.
pub fn workload(name: &str) -> anyhow::Result<PathBuf> {
    workload_with(name, "cc", &root().join("target/xtask"))
}

/// Compiles one of the C test workloads into `dir` with the C compiler `cc` (the host's, or a
/// cross compiler) and returns the binary's path (`libNAME.c` is a shared library,
/// `libNAME.so`). The flags are the tests' own (cow-trace/tests/common/mod.rs): the VM tests
/// run these binaries, --stack needs the frame pointers, and debug information shows inlined
/// functions.
pub fn workload_with(name: &str, cc: &str, dir: &Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let library = name.starts_with("lib");
    let binary = dir.join(if library {
        format!("{name}.so")
    } else {
        name.to_string()
    });
    let mut compiler = Command::new(cc);
    compiler.args(WORKLOAD_FLAGS);
    if library {
        compiler.args(["-shared", "-fPIC"]);
    }
    run(compiler
        .arg("-o")
        .arg(&binary)
        .arg(root().join(format!("cow-trace/tests/workloads/{name}.c"))))?;
    Ok(binary)
}

/// The C compiler's flags for the workloads, as cow-trace/tests/common/mod.rs has them.
const WORKLOAD_FLAGS: &[&str] = &["-O1", "-g", "-fno-omit-frame-pointer", "-pthread", "-Wall"];

/// The unwinding tests' workload (cow-trace/tests/workloads/unwind/), built three ways as
/// cow-trace/tests/common/mod.rs builds it: the program and its library per variant, the
/// library found beside the program ($ORIGIN), with the C compiler `cc` into `dir`. Returns
/// every file built.
pub fn unwind_workloads(cc: &str, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let sources = root().join("cow-trace/tests/workloads/unwind");
    let mut built = Vec::new();
    for (variant, flags) in UNWIND_VARIANTS {
        let library = dir.join(format!("libunwind_deep_{variant}.so"));
        run(Command::new(cc)
            .args(*flags)
            .args(["-Wall", "-shared", "-fPIC"])
            .arg(format!("-Wl,-soname,libunwind_deep_{variant}.so"))
            .arg("-o")
            .arg(&library)
            .arg(sources.join("libunwind_deep.c")))?;
        let program = dir.join(format!("unwind_deep_{variant}"));
        run(Command::new(cc)
            .args(*flags)
            .args(["-Wall", "-o"])
            .arg(&program)
            .arg(sources.join("unwind_deep.c"))
            .arg(&library)
            .arg("-Wl,-rpath,$ORIGIN"))?;
        built.extend([library, program]);
    }
    Ok(built)
}

/// The unwinding workload's variants and their flags, as cow-trace/tests/common/mod.rs has
/// them: optimized without frame pointers (unwound by .eh_frame), with frame pointers, and
/// with neither frame pointers nor unwind tables. No -g: with it, gcc writes .debug_frame
/// where it writes no .eh_frame.
const UNWIND_VARIANTS: &[(&str, &[&str])] = &[
    ("dwarf", &["-O2", "-fomit-frame-pointer"]),
    ("fp", &["-O2", "-fno-omit-frame-pointer"]),
    (
        "bare",
        &[
            "-O2",
            "-fomit-frame-pointer",
            "-fno-asynchronous-unwind-tables",
            "-fno-unwind-tables",
        ],
    ),
];
