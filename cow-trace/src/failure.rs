//! Errors the user can act on, and every exit status cow-trace chooses itself (documented in
//! README.md); otherwise it exits with the traced command's own status.
use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// An error of no kind below.
    Unexpected = 1,
    /// Bad usage: an unknown option, a bad pid or size, nothing to trace.
    Usage = 2,
    /// The pid or command to trace is not usable.
    Target = 3,
    /// Not root and missing CAP_BPF / CAP_PERFMON.
    Privilege = 4,
    /// The kernel refused to load or attach a probe.
    Kernel = 5,
    /// The output could not be opened or written.
    Output = 6,
    /// More than --fail-over-cow was copied on write.
    OverCowLimit = 7,
}

impl Status {
    /// The process exit status.
    pub fn code(self) -> i32 {
        self as i32
    }
}

/// A one-line error for the user; `main` prints it and exits with its status.
#[derive(Debug)]
pub struct Failure {
    pub status: Status,
    pub message: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

pub fn failure(status: Status, message: impl Into<String>) -> anyhow::Error {
    Failure {
        status,
        message: message.into(),
    }
    .into()
}
