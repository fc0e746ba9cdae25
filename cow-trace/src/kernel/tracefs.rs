//! tracefs: making sure it is mounted, and reading tracepoint field offsets from it.
use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::failure::{Status, failure};

const MOUNT_POINT: &str = "/sys/kernel/tracing";
const LEGACY: &str = "/sys/kernel/debug/tracing";

/// Returns tracefs's root, mounting it at /sys/kernel/tracing if nothing is mounted (aya finds
/// tracepoint ids there).
pub fn ensure_mounted() -> anyhow::Result<PathBuf> {
    for root in [MOUNT_POINT, LEGACY] {
        if Path::new(root).join("events").is_dir() {
            return Ok(PathBuf::from(root));
        }
    }
    nix::mount::mount(
        Some("nodev"),
        MOUNT_POINT,
        Some("tracefs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|errno| {
        failure(
            Status::Kernel,
            format!(
                "tracefs is not mounted and mounting it failed ({errno}): run \
                 `mount -t tracefs nodev {MOUNT_POINT}` as root, then try again"
            ),
        )
    })?;
    Ok(PathBuf::from(MOUNT_POINT))
}

/// The byte offset of `field` in the tracepoint `category:event`, or None if the kernel's
/// format has no such field.
pub fn field_offset(
    root: &Path,
    category: &str,
    event: &str,
    field: &str,
) -> anyhow::Result<Option<u32>> {
    let path = root
        .join("events")
        .join(category)
        .join(event)
        .join("format");
    let format = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "this kernel has no tracepoint {category}:{event} ({})",
            path.display()
        )
    })?;
    Ok(parse_offset(&format, field))
}

/// Finds `field` in a tracepoint format such as
/// `field:pid_t pid; offset:8; size:4; signed:1;` (tab separated).
pub fn parse_offset(format: &str, field: &str) -> Option<u32> {
    format.lines().find_map(|line| {
        let declaration = line.trim().strip_prefix("field:")?;
        let (declaration, rest) = declaration.split_once(';')?;
        let name = declaration.split_whitespace().last()?;
        let name = name.split('[').next()?;
        if name != field {
            return None;
        }
        let offset = rest.trim().strip_prefix("offset:")?;
        offset.split(';').next()?.trim().parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const EXIT_6_18: &str = "name: sched_process_exit
ID: 369
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:char comm[16];\toffset:8;\tsize:16;\tsigned:0;
\tfield:pid_t pid;\toffset:24;\tsize:4;\tsigned:1;
\tfield:int prio;\toffset:28;\tsize:4;\tsigned:1;
\tfield:bool group_dead;\toffset:32;\tsize:1;\tsigned:0;
";

    #[test]
    fn finds_fields() {
        assert_eq!(parse_offset(EXIT_6_18, "pid"), Some(24));
        assert_eq!(parse_offset(EXIT_6_18, "group_dead"), Some(32));
        assert_eq!(parse_offset(EXIT_6_18, "comm"), Some(8));
        assert_eq!(parse_offset(EXIT_6_18, "common_pid"), Some(4));
    }

    #[test]
    fn missing_field_is_none() {
        let old = EXIT_6_18.replace(
            "\tfield:bool group_dead;\toffset:32;\tsize:1;\tsigned:0;\n",
            "",
        );
        assert_eq!(parse_offset(&old, "group_dead"), None);
        assert_eq!(parse_offset(EXIT_6_18, "dead"), None);
    }

    #[test]
    fn data_loc_fields() {
        let fork = "\tfield:__data_loc char[] child_comm;\toffset:16;\tsize:4;\tsigned:0;\n";
        assert_eq!(parse_offset(fork, "child_comm"), Some(16));
    }

    #[test]
    fn reads_this_kernels_format() {
        if !nix::unistd::Uid::effective().is_root() {
            // The line `cargo xtask test` counts as a skip (it runs the tests --nocapture).
            println!(
                "skipped reads_this_kernels_format: reading tracefs (and mounting it if need be) needs root"
            );
            return;
        }
        let root = ensure_mounted().expect("mounting tracefs");
        let root = root.as_path();
        assert_eq!(
            field_offset(root, "task", "task_newtask", "pid").unwrap(),
            Some(8)
        );
        assert!(field_offset(root, "task", "no_such_event", "pid").is_err());
    }

    proptest! {
        #[test]
        fn never_panics(text in "\\PC*", field in "[a-z_]{1,10}") {
            let _ = parse_offset(&text, &field);
        }
    }
}
