//! The server: redis-server on a loopback port, huge pages off, its files in a directory of its
//! own; stopped and removed on every way out.
use std::{
    fs,
    net::{Ipv4Addr, TcpListener},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, bail, ensure};

use super::{client::Conn, interrupt::wait_for};
use crate::{process::Guarded, util};

/// redis-server on 127.0.0.1, its configuration, log and RDB file in a directory of its own;
/// stopped and removed on drop.
pub struct Server {
    process: Option<Guarded>,
    pub port: u16,
    pub dir: PathBuf,
}

impl Server {
    pub fn start(port: Option<u16>) -> anyhow::Result<Server> {
        let port = match port {
            Some(port) => port,
            None => free_port()?,
        };
        let dir = std::env::temp_dir().join(format!("cow-trace-redis-demo-{}", std::process::id()));
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        // From here on, drop removes the directory.
        let mut server = Server {
            process: None,
            port,
            dir,
        };
        let config = server.dir.join("redis.conf");
        fs::write(&config, config_text(port, &server.dir))
            .with_context(|| format!("writing {}", config.display()))?;
        let mut command = Command::new("redis-server");
        command.arg(&config).stdin(Stdio::null());
        // Huge pages off for this process whatever the system setting (Redis's own
        // disable-thp acts only when it is "always"): copy-on-write then works on 4 KiB pages.
        // The flag survives exec.
        // SAFETY: prctl is async-signal-safe.
        unsafe {
            command.pre_exec(|| match libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) {
                0 => Ok(()),
                _ => Err(std::io::Error::last_os_error()),
            });
        }
        server.process = Some(Guarded::spawn(&mut command, "redis-server")?);
        server.wait_until_up()?;
        println!(
            "redis-server {} (pid {}) on 127.0.0.1:{port}, files in {}",
            redis_version(),
            server.pid(),
            server.dir.display()
        );
        Ok(server)
    }

    pub fn pid(&self) -> u32 {
        self.process.as_ref().map_or(0, Guarded::pid)
    }

    fn wait_until_up(&mut self) -> anyhow::Result<()> {
        let port = self.port;
        let log = self.dir.join("redis.log");
        let process = self.process.as_mut().context("no redis-server")?;
        wait_for("redis-server to listen", Duration::from_secs(10), || {
            if let Some(reaped) = process.try_reap()? {
                let log = fs::read_to_string(&log).unwrap_or_default();
                bail!("redis-server exited ({}):\n{log}", reaped.status);
            }
            // Redis itself must answer, not whatever else may listen there.
            let pong = Conn::connect(port).and_then(|mut conn| {
                conn.writer.set_read_timeout(Some(Duration::from_secs(1)))?;
                conn.command(&["PING"])
            });
            Ok(pong.is_ok_and(|reply| reply == "PONG"))
        })
    }

    /// The snapshot child, from /proc: the server forks nothing else here.
    pub fn children(&self) -> Vec<u32> {
        let pid = self.pid();
        fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|c| c.parse().ok())
            .collect()
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // A snapshot child still saving must not outlive a server that gets killed.
        for child in self.children() {
            // SAFETY: kill(2) has no memory-safety preconditions; the pid was the server's
            // child a moment ago.
            unsafe { libc::kill(child as i32, libc::SIGKILL) };
        }
        if let Some(mut process) = self.process.take() {
            let _ = process.stop(libc::SIGTERM, Duration::from_secs(10));
        }
        match fs::remove_dir_all(&self.dir) {
            Ok(()) => eprintln!(
                "redis-demo: redis-server stopped, {} removed",
                self.dir.display()
            ),
            Err(e) => eprintln!("redis-demo: removing {}: {e}", self.dir.display()),
        }
    }
}

fn config_text(port: u16, dir: &Path) -> String {
    include_str!("../../../cow-trace/tests/fixtures-redis.conf")
        .replace("{port}", &port.to_string())
        .replace("{dir}", &dir.display().to_string())
}

fn free_port() -> anyhow::Result<u16> {
    let listener =
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("finding a free loopback port")?;
    Ok(listener.local_addr()?.port())
}

fn redis_version() -> String {
    let text = util::output(Command::new("redis-server").arg("--version")).unwrap_or_default();
    text.split_whitespace()
        .find_map(|word| word.strip_prefix("v="))
        .unwrap_or("?")
        .to_string()
}

/// Says what huge-page state the server runs with, and refuses to go on if it could use them.
pub fn report_thp(pid: u32) -> anyhow::Result<()> {
    let system = fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
        .ok()
        .and_then(|text| Some(text.split_once('[')?.1.split_once(']')?.0.to_string()))
        .unwrap_or_else(|| "not available".into());
    let status = fs::read_to_string(format!("/proc/{pid}/status")).context("reading status")?;
    let enabled = status
        .lines()
        .find_map(|l| l.strip_prefix("THP_enabled:"))
        .map(str::trim);
    ensure!(
        enabled == Some("0"),
        "redis-server may use transparent huge pages (THP_enabled: {enabled:?})"
    );
    println!(
        "Transparent huge pages: system setting \"{system}\"; off for redis-server \
         (PR_SET_THP_DISABLE, /proc/{pid}/status THP_enabled: 0), so copy-on-write copies 4 KiB pages"
    );
    Ok(())
}
