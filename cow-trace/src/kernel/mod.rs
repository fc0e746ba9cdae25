//! The kernel side, seen from userspace: loading and attaching the eBPF programs (`probes`,
//! `backends`, `tracefs`), and reading what they write (`ring` for the streamed records and
//! the loss counters, `kstats` for `--summary`'s counts).
pub mod backends;
pub mod kstats;
pub mod probes;
pub mod ring;
pub mod tracefs;
