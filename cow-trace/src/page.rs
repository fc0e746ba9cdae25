//! The system's page size. x86-64 uses 4 KiB pages, arm64 kernels 4, 16 or 64 KiB: the bytes a
//! copy-on-write fault copies, and what pairs a fault's entry with its completion in the
//! kernel, come from here, never from a constant.
use std::sync::OnceLock;

/// Bytes per page, as sysconf(_SC_PAGESIZE) gives them.
pub fn size() -> u64 {
    static SIZE: OnceLock<u64> = OnceLock::new();
    *SIZE.get_or_init(|| {
        // SAFETY: sysconf has no memory-safety preconditions.
        let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        u64::try_from(size)
            .ok()
            .filter(|size| size.is_power_of_two())
            .unwrap_or_else(|| panic!("sysconf(_SC_PAGESIZE) returned {size}"))
    })
}

/// log2 of [`size`].
pub fn shift() -> u32 {
    size().trailing_zeros()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_kernels_own_account() {
        // /proc/self/smaps states each mapping's page size as the kernel uses it.
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let kernel_kib: u64 = smaps
            .lines()
            .find_map(|line| line.strip_prefix("KernelPageSize:"))
            .and_then(|rest| rest.trim().strip_suffix("kB")?.trim().parse().ok())
            .expect("KernelPageSize in /proc/self/smaps");
        assert_eq!(size(), kernel_kib << 10);
        assert_eq!(1 << shift(), size());
    }
}
