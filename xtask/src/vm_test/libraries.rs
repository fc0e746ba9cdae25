//! What a dynamically linked binary needs in a VM: its dynamic loader (PT_INTERP) and the
//! libraries it names (DT_NEEDED), theirs too, taken from the architecture's glibc on the
//! host. Read from the ELF headers, as the loader would: ldd cannot run another
//! architecture's binaries.
use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};
use object::{
    elf::{DT_NEEDED, DT_RPATH, DT_RUNPATH},
    read::elf::{ElfFile64, ProgramHeader as _},
};

use super::arch::VmArch;

/// A file to copy into the VM: from where on the host, to which absolute path in the VM.
#[derive(Debug, PartialEq)]
pub struct RuntimeFile {
    pub host: PathBuf,
    pub guest: PathBuf,
}

/// The loader and libraries `binary` needs, transitively; nothing for a static binary.
/// The loader goes where the binary names it, the libraries to /lib/MULTIARCH, a directory
/// the loader searches by default. A library the binary finds beside itself (a run path of
/// `$ORIGIN`) is one of the workloads, copied with them: only what it needs is added.
pub fn runtime_files(binary: &Path, arch: &VmArch) -> anyhow::Result<Vec<RuntimeFile>> {
    let glibc = Path::new(arch.glibc);
    let mut files: Vec<RuntimeFile> = Vec::new();
    let mut pending = vec![binary.to_path_buf()];
    // The files whose needs were read: a library beside its program is read once, even where
    // two of them need each other.
    let mut read: Vec<PathBuf> = Vec::new();
    while let Some(next) = pending.pop() {
        let needs = needs(&next)?;
        read.push(next.clone());
        if let Some(loader) = needs.interpreter {
            let name = Path::new(&loader).file_name().context("loader name")?;
            let host = glibc.join(name);
            if !host.exists() {
                bail!(
                    "{} needs the loader {loader}, which is not in {} (vm-test installs it)",
                    next.display(),
                    glibc.display()
                );
            }
            let file = RuntimeFile {
                host,
                guest: PathBuf::from(loader),
            };
            if !files.contains(&file) {
                files.push(file);
            }
        }
        for library in needs.libraries {
            let beside = next.with_file_name(&library);
            if needs.origin_run_path && beside.exists() {
                if !read.contains(&beside) && !pending.contains(&beside) {
                    pending.push(beside);
                }
                continue;
            }
            let guest = Path::new("/lib").join(arch.multiarch).join(&library);
            if files.iter().any(|f| f.guest == guest) {
                continue;
            }
            let host = glibc.join(&library);
            if !host.exists() {
                bail!(
                    "{} needs {library}, which is not in {} (vm-test installs it)",
                    next.display(),
                    glibc.display()
                );
            }
            pending.push(host.clone());
            files.push(RuntimeFile { host, guest });
        }
    }
    Ok(files)
}

/// What one ELF file names: its loader, and the libraries it needs.
#[derive(Debug, Default, PartialEq)]
struct Needs {
    interpreter: Option<String>,
    libraries: Vec<String>,
    /// A run path (DT_RUNPATH or DT_RPATH) names `$ORIGIN`: the file's own directory.
    origin_run_path: bool,
}

fn needs(path: &Path) -> anyhow::Result<Needs> {
    let data = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    needs_of(&data).with_context(|| format!("reading the ELF headers of {}", path.display()))
}

fn needs_of(data: &[u8]) -> anyhow::Result<Needs> {
    let file = ElfFile64::<object::Endianness>::parse(data)?;
    let endian = file.endian();
    let mut needs = Needs::default();
    for segment in file.elf_program_headers() {
        if let Some(loader) = segment.interpreter(endian, data)? {
            needs.interpreter = Some(String::from_utf8(loader.to_vec())?);
        }
    }
    let dynamic = file.elf_dynamic_table()?;
    for entry in dynamic.iter() {
        let text = || -> anyhow::Result<String> {
            Ok(String::from_utf8(dynamic.string(entry)?.to_vec())?)
        };
        match entry.tag {
            DT_NEEDED => needs.libraries.push(text()?),
            DT_RUNPATH | DT_RPATH => {
                needs.origin_run_path |= text()?.split(':').any(|dir| dir == "$ORIGIN");
            }
            _ => {}
        }
    }
    Ok(needs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm_test::arch::X86_64;

    /// xtask itself runs on the host glibc: its loader and libc come from /lib/x86_64-linux-gnu;
    /// and a static binary needs nothing.
    #[test]
    fn finds_the_loader_and_libraries_of_a_dynamic_binary() {
        let me = std::env::current_exe().unwrap();
        let needs = needs(&me).unwrap();
        let loader = needs
            .interpreter
            .clone()
            .expect("xtask is dynamically linked");
        assert!(
            needs.libraries.iter().any(|l| l == "libc.so.6"),
            "{needs:?}"
        );
        if cfg!(target_arch = "x86_64") {
            let files = runtime_files(&me, &X86_64).unwrap();
            assert!(
                files.iter().any(|f| f.guest == Path::new(&loader)),
                "{files:?}"
            );
            assert!(
                files
                    .iter()
                    .any(|f| f.guest == Path::new("/lib/x86_64-linux-gnu/libc.so.6")),
                "{files:?}"
            );
        }
    }

    /// The unwinding workload finds its library beside itself ($ORIGIN): that library travels
    /// with the workloads, so it is not looked for among glibc's, but what it needs is.
    #[test]
    fn a_library_beside_its_program_is_not_taken_from_glibc() {
        if !cfg!(target_arch = "x86_64") {
            return;
        }
        let dir = std::env::temp_dir().join(format!("xtask-libraries-{}", std::process::id()));
        let built = crate::util::unwind_workloads("cc", &dir).unwrap();
        let program = built
            .iter()
            .find(|p| p.ends_with("unwind_deep_dwarf"))
            .unwrap();
        let files = runtime_files(program, &X86_64).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(
            !files
                .iter()
                .any(|f| f.host.to_string_lossy().contains("unwind_deep")),
            "{files:?}"
        );
        assert!(
            files
                .iter()
                .any(|f| f.guest == Path::new("/lib/x86_64-linux-gnu/libc.so.6")),
            "{files:?}"
        );
    }
}
