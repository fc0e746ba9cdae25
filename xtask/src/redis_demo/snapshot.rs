//! The experiment: the data set loaded, then BGSAVE while redis-benchmark overwrites keys.
use std::{
    io::Write,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};

use super::{
    Args,
    client::{Conn, encode},
    interrupt::{self, pause, wait_for},
    report::human,
    server::Server,
};
use crate::process::Guarded;

/// redis-benchmark runs this long before BGSAVE, so the snapshot starts under load.
const WARM_UP: Duration = Duration::from_millis(500);

const SAVE_TIMEOUT: Duration = Duration::from_secs(300);

/// SETs size/value-size keys, named as redis-benchmark names them (key:000000000042), so that
/// its SETs overwrite them. Returns the number of keys.
pub fn load(conn: &mut Conn, args: &Args) -> anyhow::Result<u64> {
    let keys = (args.size_mib << 20) / args.value_size;
    let started = Instant::now();
    let value = "v".repeat(args.value_size as usize);
    let mut next = 0;
    while next < keys {
        interrupt::check()?;
        let batch = (next..keys.min(next + 1000)).collect::<Vec<_>>();
        let mut out = Vec::new();
        for i in &batch {
            out.extend(encode(&["SET", &format!("key:{i:012}"), &value]));
        }
        conn.writer.write_all(&out).context("loading keys")?;
        for _ in &batch {
            ensure!(conn.reply()? == "OK", "SET failed while loading");
        }
        next += batch.len() as u64;
    }
    let used = conn.info_number("memory", "used_memory")?;
    println!(
        "Loaded {keys} keys of {} bytes in {:.1} s: used_memory {}",
        args.value_size,
        started.elapsed().as_secs_f64(),
        human(used)
    );
    Ok(keys)
}

pub struct Snapshot {
    pub child: u32,
    pub saved_in: Duration,
    pub sets: u64,
    pub writing: Duration,
}

/// redis-benchmark overwrites keys; BGSAVE forks the child; writes go on until `after_ms`
/// past the child's exit.
pub fn snapshot_under_writes(
    server: &Server,
    conn: &mut Conn,
    args: &Args,
    keys: u64,
) -> anyhow::Result<Snapshot> {
    let sets_before = set_calls(conn)?;
    let writing = Instant::now();
    let mut bench = start_benchmark(server.port, keys, args)?;
    pause(WARM_UP)?;
    let started = Instant::now();
    let reply = conn.command(&["BGSAVE"])?;
    ensure!(
        reply.starts_with("Background saving started"),
        "BGSAVE: {reply}"
    );
    let mut child = 0;
    wait_for("the snapshot child", Duration::from_secs(5), || {
        child = server.children().first().copied().unwrap_or(0);
        Ok(child != 0)
    })?;
    println!("BGSAVE: snapshot child {child} forked while redis-benchmark overwrites keys");
    wait_for("BGSAVE to finish", SAVE_TIMEOUT, || {
        if let Some(reaped) = bench.try_reap()? {
            bail!("redis-benchmark ended early: {}", reaped.status);
        }
        Ok(conn.info_field("persistence", "rdb_bgsave_in_progress")? == "0")
    })?;
    let saved_in = started.elapsed();
    ensure!(
        conn.info_field("persistence", "rdb_last_bgsave_status")? == "ok",
        "BGSAVE failed:\n{}",
        server.log()
    );
    println!(
        "BGSAVE done in {:.2} s; writes go on for {} ms more",
        saved_in.as_secs_f64(),
        args.after_ms
    );
    pause(Duration::from_millis(args.after_ms))?;
    bench.stop(libc::SIGINT, Duration::from_secs(5))?;
    let writing = writing.elapsed();
    let sets = set_calls(conn)? - sets_before;
    Ok(Snapshot {
        child,
        saved_in,
        sets,
        writing,
    })
}

/// SET commands the server has run: "cmdstat_set:calls=123,usec=...".
fn set_calls(conn: &mut Conn) -> anyhow::Result<u64> {
    let stats = conn.info_field("commandstats", "cmdstat_set")?;
    let calls = stats
        .strip_prefix("calls=")
        .and_then(|rest| rest.split(',').next())
        .with_context(|| format!("cmdstat_set: {stats:?}"))?;
    calls
        .parse()
        .with_context(|| format!("cmdstat_set: {stats:?}"))
}

/// SETs of random loaded keys until stopped.
fn start_benchmark(port: u16, keys: u64, args: &Args) -> anyhow::Result<Guarded> {
    let mut command = Command::new("redis-benchmark");
    command
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-t",
            "set",
            "-q",
        ])
        .args([
            "-c",
            &args.clients.to_string(),
            "-P",
            &args.pipeline.to_string(),
        ])
        .args(["-d", &args.value_size.to_string()])
        .args(["-r", &keys.to_string(), "-n", "1000000000"])
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    Guarded::spawn(&mut command, "redis-benchmark")
}
