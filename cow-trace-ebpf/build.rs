use which::which;

/// Rebuild when bpf-linker changes: building this crate depends on it, and cargo cannot express
/// that dependency yet (as in aya's template). Also declares `bpf_target_arch` (src/arch.rs):
/// aya-build sets it from the userspace target; a direct build (clippy) takes the host's, as
/// aya-ebpf itself does.
fn main() -> aya_build::Result<()> {
    let bpf_linker = which("bpf-linker").expect("bpf-linker not on PATH: run `cargo xtask setup`");
    println!("cargo:rerun-if-changed={}", bpf_linker.display());
    aya_build::emit_bpf_target_arch_cfg()
}
