//! What `cargo xtask dist` ships, checked as a user gets it: the tarballs' contents, static
//! binaries for the right CPU, checksums, the .debs' files, installing and removing the x86-64
//! .deb, and (under qemu's user-mode emulation) the start-up checks of both binaries.
//! `cargo xtask test` builds target/dist and points COW_TRACE_DIST at it; without it these
//! tests say that they skip. (The x86-64 binary tracing the article's cow.c is the privileged
//! suite's own test, which `cargo xtask test` runs once more with the tarball's binary.)
use std::{
    collections::BTreeSet,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use object::{
    Endianness,
    elf::{DT_NEEDED, EM_AARCH64, EM_BPF, EM_X86_64, FileHeader64, PT_INTERP},
    read::elf::{Dyn, FileHeader, ProgramHeader},
};

/// One architecture's artifacts.
struct Shipped {
    /// In the tarball's name, and qemu's (qemu-x86_64, qemu-aarch64).
    arch: &'static str,
    /// In the .deb's name and control file.
    debian: &'static str,
    /// The ELF machine of its binary.
    machine: u16,
}

const SHIPPED: [Shipped; 2] = [
    Shipped {
        arch: "x86_64",
        debian: "amd64",
        machine: EM_X86_64,
    },
    Shipped {
        arch: "aarch64",
        debian: "arm64",
        machine: EM_AARCH64,
    },
];

/// Where the .deb puts each file, as Debian keeps them.
const DEB_FILES: [&str; 6] = [
    "/usr/bin/cow-trace",
    "/usr/share/man/man1/cow-trace.1.gz",
    "/usr/share/bash-completion/completions/cow-trace",
    "/usr/share/zsh/vendor-completions/_cow-trace",
    "/usr/share/fish/vendor_completions.d/cow-trace.fish",
    "/usr/share/doc/cow-trace/README.md",
];

/// target/dist, or None (after saying why `test` skips) when COW_TRACE_DIST is not set.
fn dist(test: &str) -> Option<PathBuf> {
    match std::env::var_os("COW_TRACE_DIST") {
        Some(dir) => Some(PathBuf::from(dir)),
        None => {
            skip(
                test,
                "COW_TRACE_DIST is not set (cargo xtask test sets it after building target/dist)",
            );
            None
        }
    }
}

/// The line `cargo xtask test` counts as a skipped test.
fn skip(test: &str, why: &str) {
    println!("skipped {test}: {why}");
}

/// The one file in `dir` named PREFIX*SUFFIX.
fn artifact(dir: &Path, prefix: &str, suffix: &str) -> PathBuf {
    let found: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| {
            let name = path.file_name().unwrap().to_str().unwrap();
            name.starts_with(prefix) && name.ends_with(suffix)
        })
        .collect();
    assert_eq!(
        found.len(),
        1,
        "{prefix}*{suffix} in {}: {found:?}",
        dir.display()
    );
    found.into_iter().next().unwrap()
}

fn tarball(dist: &Path, shipped: &Shipped) -> PathBuf {
    artifact(
        dist,
        "cow-trace-",
        &format!("-{}-linux.tar.gz", shipped.arch),
    )
}

fn deb(dist: &Path, shipped: &Shipped) -> PathBuf {
    artifact(dist, "cow-trace_", &format!("_{}.deb", shipped.debian))
}

/// The tarball's top directory: cow-trace-VERSION-ARCH-linux.
fn stem(tarball: &Path) -> String {
    let name = tarball.file_name().unwrap().to_str().unwrap();
    name.strip_suffix(".tar.gz").unwrap().to_string()
}

fn run(command: &mut Command) -> Output {
    command
        .output()
        .unwrap_or_else(|e| panic!("running {command:?}: {e}"))
}

fn stdout_of(command: &mut Command) -> String {
    let output = run(command);
    assert!(
        output.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// Unpacks `tarball` into a fresh scratch directory; returns the binary in it.
fn unpack(tarball: &Path, test: &str) -> PathBuf {
    let into = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("dist-tests")
        .join(test);
    if into.exists() {
        std::fs::remove_dir_all(&into).unwrap();
    }
    std::fs::create_dir_all(&into).unwrap();
    stdout_of(
        Command::new("tar")
            .arg("-xzf")
            .arg(tarball)
            .arg("-C")
            .arg(&into),
    );
    into.join(stem(tarball)).join("cow-trace")
}

/// What the ELF file `data` needs from the system at run time: its interpreter (PT_INTERP)
/// and its libraries (DT_NEEDED) count, by name or number. Also its machine.
fn runtime_needs(data: &[u8]) -> (u16, Vec<String>) {
    let header = FileHeader64::<Endianness>::parse(data).expect("a 64-bit ELF file");
    let endian = header.endian().unwrap();
    let mut needs = Vec::new();
    for segment in header.program_headers(endian, data).unwrap() {
        if segment.p_type(endian) == PT_INTERP {
            let interpreter = segment
                .interpreter(endian, data)
                .unwrap()
                .unwrap_or_default();
            needs.push(format!(
                "interpreter {}",
                String::from_utf8_lossy(interpreter)
            ));
        }
        if let Some(dynamic) = segment.dynamic(endian, data).unwrap() {
            for entry in dynamic {
                if entry.tag(endian) == DT_NEEDED {
                    needs.push(format!("library #{}", entry.d_val(endian)));
                }
            }
        }
    }
    (header.e_machine(endian), needs)
}

/// The machines of the ELF objects embedded in `data` (past its own header).
fn embedded_elf_machines(data: &[u8]) -> Vec<u16> {
    let mut machines = Vec::new();
    let mut from = 1;
    while let Some(at) = data[from..].windows(4).position(|w| w == b"\x7fELF") {
        let start = from + at;
        if let Ok(header) = FileHeader64::<Endianness>::parse(&data[start..])
            && let Ok(endian) = header.endian()
        {
            machines.push(header.e_machine(endian));
        }
        from = start + 4;
    }
    machines
}

#[test]
fn tarballs_hold_binary_man_page_completions_readme_and_licences() {
    let Some(dist) = dist("tarballs_hold_binary_man_page_completions_readme_and_licences") else {
        return;
    };
    for shipped in &SHIPPED {
        let tarball = tarball(&dist, shipped);
        let stem = stem(&tarball);
        let listed: BTreeSet<String> = stdout_of(Command::new("tar").arg("-tzf").arg(&tarball))
            .lines()
            .map(|line| line.trim_end_matches('/').to_string())
            .collect();
        let expected: BTreeSet<String> = [
            "",
            "/cow-trace",
            "/cow-trace.1",
            "/completions",
            "/completions/cow-trace.bash",
            "/completions/_cow-trace",
            "/completions/cow-trace.fish",
            "/README.md",
            "/LICENSE-MIT",
            "/LICENSE-APACHE",
        ]
        .iter()
        .map(|path| format!("{stem}{path}"))
        .collect();
        assert_eq!(listed, expected, "{}", tarball.display());
        let binary = unpack(&tarball, &format!("contents-{}", shipped.arch));
        let mode = std::fs::metadata(&binary).unwrap().permissions().mode();
        assert_eq!(
            mode & 0o111,
            0o111,
            "{} is not executable",
            binary.display()
        );
        let man = std::fs::read_to_string(binary.with_file_name("cow-trace.1")).unwrap();
        assert!(man.contains("\\-\\-backend"), "man page: {man}");
    }
}

#[test]
fn binaries_are_static_and_for_their_architecture() {
    let Some(dist) = dist("binaries_are_static_and_for_their_architecture") else {
        return;
    };
    // The check itself finds what a dynamically linked program needs (this test, linked
    // against glibc).
    let (_, needs) = runtime_needs(&std::fs::read(std::env::current_exe().unwrap()).unwrap());
    assert!(
        needs.iter().any(|need| need.starts_with("interpreter")),
        "{needs:?}"
    );
    for shipped in &SHIPPED {
        let binary = unpack(
            &tarball(&dist, shipped),
            &format!("static-{}", shipped.arch),
        );
        let data = std::fs::read(&binary).unwrap();
        let (machine, needs) = runtime_needs(&data);
        assert_eq!(machine, shipped.machine, "{}", binary.display());
        assert!(needs.is_empty(), "{} needs {needs:?}", binary.display());
        // The eBPF programs travel inside: one BPF object.
        let bpf = embedded_elf_machines(&data)
            .into_iter()
            .filter(|&machine| machine == EM_BPF)
            .count();
        assert_eq!(bpf, 1, "embedded BPF objects in {}", binary.display());
    }
}

#[test]
fn checksums_cover_every_artifact() {
    let Some(dist) = dist("checksums_cover_every_artifact") else {
        return;
    };
    let sums = std::fs::read_to_string(dist.join("SHA256SUMS")).unwrap();
    let named: BTreeSet<String> = sums
        .lines()
        .map(|line| line.split_whitespace().nth(1).unwrap().to_string())
        .collect();
    let mut artifacts = BTreeSet::new();
    for shipped in &SHIPPED {
        for path in [tarball(&dist, shipped), deb(&dist, shipped)] {
            artifacts.insert(path.file_name().unwrap().to_str().unwrap().to_string());
        }
    }
    assert_eq!(named, artifacts);
    stdout_of(
        Command::new("sha256sum")
            .args(["--check", "--strict", "SHA256SUMS"])
            .current_dir(&dist),
    );
}

#[test]
fn debs_are_for_their_architecture_and_ship_the_tarballs_binary() {
    let Some(dist) = dist("debs_are_for_their_architecture_and_ship_the_tarballs_binary") else {
        return;
    };
    for shipped in &SHIPPED {
        let deb = deb(&dist, shipped);
        let control = stdout_of(Command::new("dpkg-deb").arg("--field").arg(&deb).args([
            "Package",
            "Architecture",
            "Depends",
        ]));
        assert!(control.contains("Package: cow-trace\n"), "{control}");
        assert!(
            control.contains(&format!("Architecture: {}\n", shipped.debian)),
            "{control}"
        );
        // cargo-deb writes the field empty.
        assert!(
            control
                .lines()
                .filter(|line| line.starts_with("Depends:"))
                .all(|line| line.trim_end() == "Depends:"),
            "a static binary needs nothing: {control}"
        );
        let listed = stdout_of(Command::new("dpkg-deb").arg("--contents").arg(&deb));
        for file in DEB_FILES {
            assert!(
                listed
                    .lines()
                    .any(|line| line.ends_with(&format!(".{file}"))),
                "{file} not in {}:\n{listed}",
                deb.display()
            );
        }
        let into = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join("dist-tests")
            .join(format!("deb-{}", shipped.arch));
        if into.exists() {
            std::fs::remove_dir_all(&into).unwrap();
        }
        stdout_of(
            Command::new("dpkg-deb")
                .arg("--extract")
                .arg(&deb)
                .arg(&into),
        );
        let from_tarball = unpack(
            &tarball(&dist, shipped),
            &format!("tarball-{}", shipped.arch),
        );
        assert!(
            std::fs::read(into.join("usr/bin/cow-trace")).unwrap()
                == std::fs::read(&from_tarball).unwrap(),
            "the .deb and the tarball of {} ship different binaries",
            shipped.arch
        );
    }
}

/// Removes the cow-trace package if a test installed it and stopped half-way.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        if is_installed() {
            let _ = Command::new("dpkg")
                .args(["--remove", "cow-trace"])
                .output();
        }
    }
}

fn is_installed() -> bool {
    let status =
        run(Command::new("dpkg-query").args(["--show", "--showformat=${Status}", "cow-trace"]));
    String::from_utf8_lossy(&status.stdout).contains("install ok installed")
}

#[test]
fn x86_64_deb_installs_and_removes_cleanly() {
    let test = "x86_64_deb_installs_and_removes_cleanly";
    let Some(dist) = dist(test) else {
        return;
    };
    if !nix_is_root() {
        skip(test, "dpkg --install needs root (CI runs as root)");
        return;
    }
    if !cfg!(target_arch = "x86_64") {
        skip(test, "this machine is not x86-64");
        return;
    }
    if is_installed() {
        skip(
            test,
            "a cow-trace package is already installed here: leaving it alone",
        );
        return;
    }
    let deb = deb(&dist, &SHIPPED[0]);
    let _guard = Installed;
    stdout_of(Command::new("dpkg").arg("--install").arg(&deb));
    assert!(is_installed());
    for file in DEB_FILES {
        assert!(Path::new(file).is_file(), "{file} not installed");
    }
    let listed = stdout_of(Command::new("dpkg").args(["--listfiles", "cow-trace"]));
    for file in DEB_FILES {
        assert!(listed.lines().any(|line| line == file), "{file}:\n{listed}");
    }
    let version = stdout_of(Command::new("/usr/bin/cow-trace").arg("--version"));
    assert!(version.starts_with("cow-trace "), "{version}");
    stdout_of(Command::new("dpkg").args(["--remove", "cow-trace"]));
    assert!(!is_installed());
    for file in DEB_FILES {
        assert!(
            !Path::new(file).exists(),
            "{file} left behind by dpkg --remove"
        );
    }
    assert!(!Path::new("/usr/share/doc/cow-trace").exists());
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// `qemu-ARCH` runs the other architecture's binary here (user-mode emulation; `-r` sets the
/// kernel release uname reports). None, after saying why `test` skips, where it is missing.
fn qemu(test: &str, arch: &str) -> Option<Command> {
    let program = format!("qemu-{arch}");
    if Command::new(&program).arg("--version").output().is_err() {
        skip(
            test,
            &format!("{program} is missing (install qemu-user: cargo xtask test does)"),
        );
        return None;
    }
    Some(Command::new(program))
}

/// (status, stderr) of a run expected to print one line on stderr and nothing on stdout.
fn one_line_failure(command: &mut Command) -> (i32, String) {
    let output = run(command);
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(output.stdout.is_empty(), "{command:?} printed on stdout");
    assert_eq!(stderr.lines().count(), 1, "{command:?}: {stderr}");
    (output.status.code().unwrap(), stderr)
}

#[test]
fn on_an_old_kernel_one_line_names_the_kernel_needed() {
    let test = "on_an_old_kernel_one_line_names_the_kernel_needed";
    let Some(dist) = dist(test) else {
        return;
    };
    for shipped in &SHIPPED {
        let Some(mut qemu) = qemu(test, shipped.arch) else {
            return;
        };
        let binary = unpack(
            &tarball(&dist, shipped),
            &format!("old-kernel-{}", shipped.arch),
        );
        let (status, stderr) = one_line_failure(
            qemu.args(["-r", "5.4.0-150-generic"])
                .arg(&binary)
                .args(["--", "true"]),
        );
        assert_eq!(
            stderr,
            "cow-trace: this kernel is Linux 5.4.0-150-generic; cow-trace needs Linux 5.8 or \
             newer (for the BPF ring buffer)\n"
        );
        assert_eq!(status, 5, "{stderr}");
    }
}

#[test]
fn arm64_binary_runs_and_refuses_the_tracepoint_backend() {
    let test = "arm64_binary_runs_and_refuses_the_tracepoint_backend";
    let Some(dist) = dist(test) else {
        return;
    };
    let Some(mut qemu) = qemu(test, "aarch64") else {
        return;
    };
    let binary = unpack(&tarball(&dist, &SHIPPED[1]), "arm64-tracepoint");
    let version = stdout_of(qemu.arg(&binary).arg("--version"));
    assert!(version.starts_with("cow-trace "), "{version}");
    let mut qemu = self::qemu(test, "aarch64").unwrap();
    let (status, stderr) =
        one_line_failure(
            qemu.arg(&binary)
                .args(["--backend", "tracepoint", "--", "true"]),
        );
    assert!(
        stderr.contains("exceptions:page_fault_*") && stderr.contains("--backend fexit or kprobe"),
        "{stderr}"
    );
    assert_eq!(status, 5, "{stderr}");
}
