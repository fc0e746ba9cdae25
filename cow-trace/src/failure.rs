//! Errors the user can act on, each with its own exit status (documented in README.md).
use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The pid or command to trace is not usable.
    Target = 3,
    /// Not root and missing CAP_BPF / CAP_PERFMON.
    Privilege = 4,
    /// The kernel refused to load or attach a probe.
    Kernel = 5,
    /// The output could not be opened or written.
    Output = 6,
}

/// A one-line error for the user; `main` prints it and exits with `kind as i32`.
#[derive(Debug)]
pub struct Failure {
    pub kind: Kind,
    pub message: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

pub fn failure(kind: Kind, message: impl Into<String>) -> anyhow::Error {
    Failure {
        kind,
        message: message.into(),
    }
    .into()
}
