//! The kernel side's diagnostics (a map full, a stack not captured, faults nesting
//! unexpectedly), logged by the eBPF programs with aya-log into a ring of their own: a task
//! reads that ring and passes each record to the `log` crate, so `-v` shows them.
use std::os::fd::{AsRawFd, RawFd};

use aya::Ebpf;
use aya_log::EbpfLogger;
use tokio::io::{Interest, unix::AsyncFd};

/// The level the programs log at (aya-log's `AYA_LOG_LEVEL`, set at load time): the `log`
/// crate's. In a run that shows none of their messages, the verifier drops the logging code.
pub fn level() -> u8 {
    // Both count Off = 0, Error = 1, ... Trace = 5.
    log::max_level() as u8
}

/// Starts passing the programs' log records to the `log` crate, on the tokio runtime. Without
/// the log ring (an object built without logging) the run goes on, with a warning.
pub fn start(ebpf: &mut Ebpf) {
    let reader = EbpfLogger::init(ebpf)
        .map_err(|e| e.to_string())
        .and_then(|logger| {
            // SAFETY: the logger owns its ring's fd and keeps it open while the AsyncFd lives.
            unsafe { AsyncFd::register_with_interest(Reader(logger), Interest::READABLE) }
                .map_err(|e| e.to_string())
        });
    let mut reader = match reader {
        Ok(reader) => reader,
        Err(error) => {
            log::warn!("kernel-side diagnostics will not be shown: {error}");
            return;
        }
    };
    tokio::spawn(async move {
        while let Ok(mut ready) = reader.readable_mut().await {
            ready.get_inner_mut().0.flush();
            ready.clear_ready();
        }
    });
}

/// The logger, drained once more when the runtime drops the reading task at the end of a run:
/// the programs may have logged after the task last ran.
struct Reader(EbpfLogger<&'static dyn log::Log>);

impl AsRawFd for Reader {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.0.flush();
    }
}

#[cfg(test)]
mod tests {
    use aya_log::Level;
    use log::LevelFilter;

    /// `level` relies on both crates numbering the levels alike.
    #[test]
    fn log_and_aya_log_number_levels_alike() {
        for (filter, level) in [
            (LevelFilter::Error, Level::Error),
            (LevelFilter::Warn, Level::Warn),
            (LevelFilter::Info, Level::Info),
            (LevelFilter::Debug, Level::Debug),
            (LevelFilter::Trace, Level::Trace),
        ] {
            assert_eq!(filter as u8, level as u8, "{filter}");
        }
        assert_eq!(LevelFilter::Off as u8, 0);
    }
}
