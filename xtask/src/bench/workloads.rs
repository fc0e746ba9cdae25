//! The workload: bench_cow's variants, and one running bench_cow driven over its stdin and
//! stdout.
use std::{
    io::{BufRead, BufReader, Write},
    process::{ChildStdin, ChildStdout, Command, Stdio},
};

use anyhow::{Context as _, bail};

use super::{Args, configs::Tools, load::ipi_count};
use crate::process::Guarded;

#[derive(Clone, Debug)]
pub struct Variant {
    pub mode: &'static str,
    pub mib: u64,
    threads: u32,
}

impl Variant {
    pub fn selected(args: &Args) -> Vec<Variant> {
        let cow = |mib| Variant {
            mode: "cow",
            mib,
            threads: 1,
        };
        let mut variants: Vec<Variant> = args.sizes.iter().map(|&mib| cow(mib)).collect();
        if args.variant_size > 0 {
            variants.push(Variant {
                mode: "touch",
                ..cow(args.variant_size)
            });
            variants.push(Variant {
                mode: "threads",
                threads: args.threads,
                ..cow(args.variant_size)
            });
        }
        variants
    }

    pub fn args(&self) -> Vec<String> {
        let mut args = vec![self.mode.to_string(), self.mib.to_string()];
        if self.mode == "threads" {
            args.push(self.threads.to_string());
        }
        args
    }

    fn pages(&self) -> u64 {
        self.mib * 256
    }

    pub fn title(&self) -> String {
        let (mib, pages) = (self.mib, self.pages());
        match self.mode {
            "cow" => format!("Fork, then the child writes {mib} MiB: {pages} COW faults"),
            "touch" => format!("First touch, no fork: {mib} MiB, {pages} faults"),
            _ => format!(
                "Fork, then {} threads of the child write {mib} MiB: {pages} COW faults",
                self.threads
            ),
        }
    }
}

/// What bench_cow reported about its measured process.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub ns_per_fault: f64,
    pub loop_minflt: u64,
    /// The kernel's minflt from just before the process waited for "go" to its exit: every
    /// fault a tracer attached meanwhile should deliver.
    pub expected: u64,
    /// Inter-processor interrupts on the whole machine from "go" to the result line.
    pub ipis: u64,
}

/// A running bench_cow, driven over its stdin and stdout.
pub struct Workload {
    pub process: Guarded,
    stdin: Option<ChildStdin>,
    pub lines: BufReader<ChildStdout>,
    /// The measured process: the root's child (or, in soak mode, the root itself).
    pub target: u32,
}

impl Workload {
    pub fn start(tools: &Tools, args: &[String]) -> anyhow::Result<Workload> {
        let mut child = Command::new(&tools.workload)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting bench_cow")?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().context("bench_cow stdout")?;
        let mut workload = Workload {
            process: Guarded::new(child, "bench_cow"),
            stdin,
            lines: BufReader::new(stdout),
            target: 0,
        };
        let target = workload.expect_line("target ")?;
        workload.target = target.trim().parse().context("bench_cow's target pid")?;
        Ok(workload)
    }

    pub fn root(&self) -> u32 {
        self.process.pid()
    }

    /// Reads the next line, which must start with `prefix`; returns the rest.
    fn expect_line(&mut self, prefix: &str) -> anyhow::Result<String> {
        let mut line = String::new();
        self.lines
            .read_line(&mut line)
            .context("reading bench_cow's output")?;
        match line.strip_prefix(prefix) {
            Some(rest) => Ok(rest.trim().to_string()),
            None => bail!("bench_cow printed {line:?}, expected {prefix:?}..."),
        }
    }

    pub fn go(&mut self) -> anyhow::Result<()> {
        let mut stdin = self.stdin.take().context("bench_cow already started")?;
        stdin
            .write_all(b"go\n")
            .context("starting bench_cow's loop")
    }

    /// Releases the measured loop, reads the result and exit lines, and reaps the root.
    pub fn measure(mut self) -> anyhow::Result<Outcome> {
        let ipis_before = ipi_count();
        self.go()?;
        let result = fields(&self.expect_line("result ")?);
        let ipis = ipi_count().saturating_sub(ipis_before);
        let exit = fields(&self.expect_line("exit ")?);
        self.process.wait_success("bench_cow")?;
        let start = number(&result, "start_minflt")?;
        Ok(Outcome {
            ns_per_fault: number(&result, "ns_per_fault")?,
            loop_minflt: number(&result, "loop_minflt")? as u64,
            expected: (number(&exit, "minflt")? - start) as u64,
            ipis,
        })
    }
}

/// "a=1 b=2" -> [(a, 1), (b, 2)]
pub fn fields(line: &str) -> Vec<(String, String)> {
    line.split_whitespace()
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub fn number(fields: &[(String, String)], key: &str) -> anyhow::Result<f64> {
    let value = fields
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v)
        .with_context(|| format!("bench_cow printed no {key}"))?;
    value
        .parse()
        .with_context(|| format!("bench_cow's {key}={value}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workload_fields() {
        let f = fields("pid=3 ns_per_fault=2081.6 loop_minflt=65539");
        assert_eq!(number(&f, "ns_per_fault").unwrap(), 2081.6);
        assert!(number(&f, "missing").is_err());
    }
}
