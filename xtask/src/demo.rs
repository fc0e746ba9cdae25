//! `cargo xtask demo`: the article's experiment, traced live. cow forks; its child waits,
//! cow-trace attaches to the child (-x CHILD), the child writes four array elements it shares
//! with its parent, and each write shows up as a MINOR copy-on-write fault at the address the
//! child prints.
use std::{
    io::{BufRead, BufReader, Write},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, bail};

use crate::{setup, util};

pub fn run() -> anyhow::Result<()> {
    setup::run()?;
    let cow_trace = util::build_release()?;
    let cow = util::workload("cow")?;

    eprintln!("\n== The article's cow.c: fork, then the child writes four inherited pages ==");
    let mut workload = Command::new(&cow)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting cow")?;
    let mut to_child = workload.stdin.take().context("cow stdin")?;
    let mut from_cow = BufReader::new(workload.stdout.take().context("cow stdout")?);
    let mut line = String::new();
    from_cow.read_line(&mut line)?;
    let child = line
        .trim()
        .strip_prefix("child pid: ")
        .context("cow did not print its child's pid")?
        .to_string();
    println!("[cow] {}", line.trim());

    // Relay cow-trace's stderr, and note when it is ready.
    let mut tracer = Command::new(&cow_trace)
        .args(["-x", &child, "--resolve"])
        .stderr(Stdio::piped())
        .spawn()
        .context("starting cow-trace")?;
    let (is_ready, _relay) = util::relay_stderr(tracer.stderr.take().context("cow-trace stderr")?);
    if is_ready.recv_timeout(Duration::from_secs(30)).is_err() {
        let _ = tracer.kill();
        bail!("cow-trace did not attach (see its message above)");
    }

    // Go: the child writes msg[10240], msg[20480], ... and prints their addresses.
    to_child.write_all(b"\n")?;
    to_child.flush()?;
    for _ in 0..4 {
        line.clear();
        from_cow.read_line(&mut line)?;
        println!("[cow] {}", line.trim());
    }
    std::thread::sleep(Duration::from_millis(300));
    to_child.write_all(b"\n")?;
    drop(to_child);
    workload.wait()?;
    // cow-trace ends by itself once the child has exited, and prints its summary.
    let status = tracer.wait()?;
    if !status.success() {
        bail!("cow-trace failed: {status}");
    }
    println!(
        "\nEach address cow printed appears above as a write (w), MINOR fault of pid {child} in its\n\
         [stack], marked copy: the child's first write to a page it shared with its parent made\n\
         the kernel copy that page. (`cargo xtask demo` ran: cow-trace -x {child} --resolve)"
    );
    Ok(())
}
