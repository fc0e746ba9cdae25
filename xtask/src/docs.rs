//! `cargo xtask man` and `cargo xtask completions`: generated from cow-trace's own clap
//! definition (cow-trace/src/cli.rs, included here), so they never drift from the binary.
use std::path::PathBuf;

use anyhow::Context as _;
use clap::CommandFactory;
use clap_complete::Shell;

#[path = "../../cow-trace/src/cli.rs"]
#[allow(dead_code)]
mod cli;

use crate::util;

fn out_dir(name: &str) -> anyhow::Result<PathBuf> {
    let dir = util::root().join("target").join(name);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// Writes target/man/cow-trace.1.
pub fn man() -> anyhow::Result<()> {
    let path = out_dir("man")?.join("cow-trace.1");
    let mut page = Vec::new();
    // cow-trace's version, not xtask's (this file is compiled into xtask).
    let version = util::cow_trace_version()?.leak();
    clap_mangen::Man::new(cli::Args::command().version(&*version)).render(&mut page)?;
    std::fs::write(&path, page).with_context(|| format!("writing {}", path.display()))?;
    println!("{}", path.display());
    Ok(())
}

/// Writes completions for bash, zsh, fish, elvish and PowerShell into target/completions.
pub fn completions() -> anyhow::Result<()> {
    let dir = out_dir("completions")?;
    for shell in [
        Shell::Bash,
        Shell::Zsh,
        Shell::Fish,
        Shell::Elvish,
        Shell::PowerShell,
    ] {
        let path = clap_complete::generate_to(shell, &mut cli::Args::command(), "cow-trace", &dir)
            .with_context(|| format!("generating {shell} completions"))?;
        println!("{}", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn man_page_documents_every_option() {
        let mut page = Vec::new();
        clap_mangen::Man::new(cli::Args::command())
            .render(&mut page)
            .unwrap();
        let page = String::from_utf8(page).unwrap();
        for option in [
            "\\-\\-pid",
            "\\-\\-summary",
            "\\-\\-fail\\-over\\-cow",
            "\\-\\-backend",
            "\\-\\-format",
        ] {
            assert!(page.contains(option), "{option} missing from the man page");
        }
    }

    #[test]
    fn bash_completion_offers_the_backends() {
        let mut script = Vec::new();
        clap_complete::generate(
            Shell::Bash,
            &mut cli::Args::command(),
            "cow-trace",
            &mut script,
        );
        let script = String::from_utf8(script).unwrap();
        assert!(script.contains("fexit kprobe tracepoint"), "{script}");
    }
}
