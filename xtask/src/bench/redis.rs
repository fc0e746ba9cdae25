//! What users feel: Redis's SET throughput while a BGSAVE snapshot copies pages on write,
//! untraced and traced. Debian's redis-server (huge pages off) holds the data set;
//! redis-benchmark overwrites random keys, started together with a BGSAVE; the configurations
//! take turns, round after round, after one round that is not counted.
use std::{
    io::Write as _,
    process::{Command, Stdio},
    thread,
    time::Duration,
};

use anyhow::{Context as _, bail, ensure};

use super::{
    Args, SETTLE,
    configs::{Config, Tools},
    runners::Tracer,
    stats::Rounds,
};
use crate::{
    process::Guarded,
    redis_demo::{
        client::{Conn, encode},
        interrupt::wait_for,
        server::{Server, report_thp},
    },
    setup,
};

/// The data set: keys of redis-benchmark's names (`key:000000000042`), values of this size.
pub const KEYS: u64 = 300_000;
pub const VALUE_SIZE: u64 = 512;
/// redis-benchmark's SETs per run, connections, and pipelined commands per connection.
pub const SETS: u64 = 400_000;
pub const CLIENTS: u32 = 20;
pub const PIPELINE: u32 = 16;

/// The configurations, each tracing the server: cow-trace counting in the kernel and
/// streaming text to /dev/null, the floors under them (empty programs on the same hooks, the
/// completion events on the server's threads), bpftrace printing a line per fault of the
/// server.
pub const CONFIGS: [Config; 6] = [
    Config::Untraced,
    Config::CowSummaryUntimed,
    Config::CowText,
    Config::FloorUntimed,
    Config::FloorTimed,
    Config::Bpftrace,
];

pub struct RedisRuns {
    pub rounds: usize,
    /// SETs per second under each configuration, per counted round.
    pub sets: Rounds<Config>,
}

impl RedisRuns {
    /// How the display names a configuration here.
    pub fn label(config: Config) -> &'static str {
        match config {
            Config::Untraced => "untraced",
            Config::CowSummaryUntimed => "cow-trace --summary --no-latency -x SERVER",
            Config::CowText => "cow-trace -x SERVER, text to /dev/null",
            Config::Bpftrace => "bpftrace, a line per fault of the server",
            Config::FloorUntimed => "floor: empty programs on the --no-latency hooks",
            Config::FloorTimed => "floor: empty programs on the timed hooks",
            _ => config.label(),
        }
    }
}

pub fn run_redis(tools: &Tools, args: &Args) -> anyhow::Result<RedisRuns> {
    setup::install_packages(&["redis-server", "redis-tools"])?;
    eprintln!(
        "bench: Redis, {KEYS} keys of {VALUE_SIZE} bytes; `redis-benchmark -t set -n {SETS} -r \
         {KEYS} -d {VALUE_SIZE} -P {PIPELINE} -c {CLIENTS}` started with a BGSAVE"
    );
    let server = Server::start(None)?;
    report_thp(server.pid())?;
    let mut conn = Conn::connect(server.port)?;
    load(&mut conn)?;
    let mut throughput = Rounds::new(Config::Untraced);
    // Round 0 warms the server up and is not counted.
    for round in 0..=args.runs {
        for k in 0..CONFIGS.len() {
            let config = CONFIGS[(k + round) % CONFIGS.len()];
            let sets = snapshot_under_sets(tools, &server, &mut conn, config)
                .with_context(|| format!("Redis, round {round}: {}", RedisRuns::label(config)))?;
            eprintln!(
                "bench: Redis round {round}{} {:<20} {sets:>9.0} SET/s",
                if round == 0 { " (not counted)" } else { "" },
                config.name()
            );
            if round > 0 {
                throughput.push(round, config, sets);
            }
        }
    }
    Ok(RedisRuns {
        rounds: args.runs,
        sets: throughput,
    })
}

/// SETs every key once, pipelined in batches.
fn load(conn: &mut Conn) -> anyhow::Result<()> {
    let value = "v".repeat(VALUE_SIZE as usize);
    for batch in (0..KEYS).collect::<Vec<_>>().chunks(1000) {
        let mut out = Vec::new();
        for i in batch {
            out.extend(encode(&["SET", &format!("key:{i:012}"), &value]));
        }
        conn.writer.write_all(&out).context("loading keys")?;
        for _ in batch {
            ensure!(conn.reply()? == "OK", "SET failed while loading");
        }
    }
    Ok(())
}

/// One run: the tracer of `config` on the server, then redis-benchmark and a BGSAVE together;
/// returns redis-benchmark's SETs per second.
fn snapshot_under_sets(
    tools: &Tools,
    server: &Server,
    conn: &mut Conn,
    config: Config,
) -> anyhow::Result<f64> {
    let pid = server.pid();
    let tracer = match config {
        Config::Untraced => None,
        _ => Some(Tracer::start_on(config, tools, pid, pid)?),
    };
    thread::sleep(SETTLE);
    let mut bench = Guarded::spawn(
        Command::new("redis-benchmark")
            .args(["-h", "127.0.0.1", "-p", &server.port.to_string(), "-q"])
            .args([
                "-t",
                "set",
                "-n",
                &SETS.to_string(),
                "-r",
                &KEYS.to_string(),
            ])
            .args(["-d", &VALUE_SIZE.to_string()])
            .args(["-P", &PIPELINE.to_string(), "-c", &CLIENTS.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped()),
        "redis-benchmark",
    )?;
    let reply = conn.command(&["BGSAVE"])?;
    ensure!(
        reply.starts_with("Background saving started"),
        "BGSAVE: {reply}"
    );
    let output = bench
        .read_stdout()
        .context("reading redis-benchmark's output")?;
    bench.wait_success("redis-benchmark")?;
    wait_for("BGSAVE to finish", Duration::from_secs(300), || {
        Ok(conn.info_field("persistence", "rdb_bgsave_in_progress")? == "0")
    })?;
    ensure!(
        conn.info_field("persistence", "rdb_last_bgsave_status")? == "ok",
        "BGSAVE failed:\n{}",
        server.log()
    );
    if let Some(tracer) = tracer {
        tracer.interrupt(pid)?;
    }
    sets_per_second(&output)
}

/// "SET: 201572.58 requests per second, p50=3.199 msec": the last such figure printed (-q
/// prints progress lines, separated by carriage returns, before it).
fn sets_per_second(output: &str) -> anyhow::Result<f64> {
    let Some(line) = output
        .split(['\r', '\n'])
        .rfind(|l| l.contains("requests per second"))
    else {
        bail!("redis-benchmark printed no throughput: {output:?}");
    };
    let figure = line
        .trim_start_matches("SET: ")
        .split_whitespace()
        .next()
        .unwrap_or_default();
    figure
        .parse()
        .with_context(|| format!("redis-benchmark printed {line:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn benchmark_figure() {
        let output = "SET: rps=0.0 (overall: nan) avg_msec=nan (overall: nan)\r\
                      SET: rps=190000.0 (overall: 190000.0) avg_msec=1.2\r\
                      SET: 201572.58 requests per second, p50=3.199 msec\n\n";
        assert_eq!(sets_per_second(output).unwrap(), 201572.58);
        assert!(sets_per_second("nothing").is_err());
    }
}
