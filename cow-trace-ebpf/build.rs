use which::which;

/// Rebuild when bpf-linker changes: building this crate depends on it, and cargo cannot express
/// that dependency yet (as in aya's template).
fn main() {
    let bpf_linker = which("bpf-linker").expect("bpf-linker not on PATH: run `cargo xtask setup`");
    println!("cargo:rerun-if-changed={}", bpf_linker.display());
}
