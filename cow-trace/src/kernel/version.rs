//! The oldest kernel cow-trace runs on. Every backend streams through the BPF ring buffer,
//! which Linux 5.8 introduced: on an older kernel, one line says so before anything is loaded
//! (the loader's own error would name a map type, not the kernel needed).
use std::fmt;

use crate::failure::{Status, failure};

/// Linux 5.8: `BPF_MAP_TYPE_RINGBUF`.
pub const MINIMUM: KernelVersion = KernelVersion { major: 5, minor: 8 };

/// A kernel's major.minor version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct KernelVersion {
    pub major: u32,
    pub minor: u32,
}

impl KernelVersion {
    /// From a release as uname(2) gives it: "6.1.0-28-arm64", "5.8", "4.19.325-cip".
    pub fn parse(release: &str) -> Option<KernelVersion> {
        let leading_number = |part: &str| -> Option<u32> {
            let end = part
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(part.len());
            part[..end].parse().ok()
        };
        let mut parts = release.split('.');
        let major = leading_number(parts.next()?)?;
        let minor = leading_number(parts.next()?)?;
        Some(KernelVersion { major, minor })
    }
}

impl fmt::Display for KernelVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// Fails with one line when `release` is older than [`MINIMUM`]. A release that does not
/// parse is let through: loading then says what is missing.
pub fn check_release(release: &str) -> anyhow::Result<()> {
    match KernelVersion::parse(release) {
        Some(version) if version < MINIMUM => Err(failure(
            Status::Kernel,
            format!(
                "this kernel is Linux {release}; cow-trace needs Linux {MINIMUM} or newer \
                 (for the BPF ring buffer)"
            ),
        )),
        _ => Ok(()),
    }
}

/// The running kernel's version, where uname(2) says it plainly.
pub fn running() -> Option<KernelVersion> {
    let uname = nix::sys::utsname::uname().ok()?;
    KernelVersion::parse(&uname.release().to_string_lossy())
}

/// [`check_release`] for the running kernel.
pub fn check() -> anyhow::Result<()> {
    let uname = nix::sys::utsname::uname().map_err(|e| anyhow::anyhow!("uname: {e}"))?;
    check_release(&uname.release().to_string_lossy())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(major: u32, minor: u32) -> KernelVersion {
        KernelVersion { major, minor }
    }

    #[test]
    fn parses_distribution_releases() {
        assert_eq!(KernelVersion::parse("6.1.0-28-arm64"), Some(version(6, 1)));
        assert_eq!(
            KernelVersion::parse("6.18.44-fc-v782"),
            Some(version(6, 18))
        );
        assert_eq!(KernelVersion::parse("5.8"), Some(version(5, 8)));
        assert_eq!(KernelVersion::parse("4.19.325-cip"), Some(version(4, 19)));
        assert_eq!(KernelVersion::parse("5.10-rc1"), Some(version(5, 10)));
        assert_eq!(KernelVersion::parse("6.12+deb13"), Some(version(6, 12)));
        assert_eq!(KernelVersion::parse("5.4rc2"), Some(version(5, 4)));
        assert_eq!(KernelVersion::parse("linux"), None);
        assert_eq!(KernelVersion::parse("6"), None);
    }

    #[test]
    fn compares_numerically_not_as_text() {
        assert!(version(5, 10) > version(5, 8));
        assert!(version(5, 7) < MINIMUM);
        assert!(version(4, 19) < MINIMUM);
        assert!(version(6, 0) > MINIMUM);
        assert!(version(5, 8) >= MINIMUM);
    }

    #[test]
    fn an_old_kernel_gets_one_line_naming_the_version_needed() {
        let error = check_release("5.4.0-150-generic").unwrap_err();
        let message = error.to_string();
        assert_eq!(
            message,
            "this kernel is Linux 5.4.0-150-generic; cow-trace needs Linux 5.8 or newer \
             (for the BPF ring buffer)"
        );
        assert!(!message.contains('\n'));
        assert_eq!(
            error
                .downcast_ref::<crate::failure::Failure>()
                .unwrap()
                .status,
            Status::Kernel
        );
        assert!(check_release("5.8.0").is_ok());
        assert!(check_release("6.1.0-28-arm64").is_ok());
        assert!(check_release("unknown").is_ok());
    }
}
