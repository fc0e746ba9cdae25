//! Talking to the server.
use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{Ipv4Addr, TcpStream},
    time::Duration,
};

use anyhow::{Context as _, bail};

/// A minimal RESP client: SET, CONFIG, BGSAVE and INFO, with a read timeout.
pub struct Conn {
    pub writer: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Conn {
    pub fn connect(port: u16) -> anyhow::Result<Conn> {
        let stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port))
            .with_context(|| format!("connecting to redis on port {port}"))?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(Conn {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
        })
    }

    pub fn command(&mut self, args: &[&str]) -> anyhow::Result<String> {
        self.writer.write_all(&encode(args))?;
        self.reply()
            .with_context(|| format!("redis command {}", args[0]))
    }

    /// One reply: simple string, integer or bulk string.
    pub fn reply(&mut self) -> anyhow::Result<String> {
        let mut line = String::new();
        self.reader
            .read_line(&mut line)
            .context("reading from redis")?;
        let line = line.trim_end();
        match line.split_at_checked(1) {
            Some(("+" | ":", rest)) => Ok(rest.to_string()),
            Some(("$", len)) => {
                let len: usize = len.parse().context("bulk length")?;
                let mut body = vec![0; len + 2];
                self.reader.read_exact(&mut body)?;
                body.truncate(len);
                Ok(String::from_utf8_lossy(&body).into_owned())
            }
            _ => bail!("redis replied {line:?}"),
        }
    }

    pub fn info_field(&mut self, section: &str, field: &str) -> anyhow::Result<String> {
        let info = self.command(&["INFO", section])?;
        info.lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .map(str::to_string)
            .with_context(|| format!("no {field} in INFO {section}"))
    }

    pub fn info_number(&mut self, section: &str, field: &str) -> anyhow::Result<u64> {
        let value = self.info_field(section, field)?;
        value.parse().with_context(|| format!("{field}: {value:?}"))
    }
}

pub fn encode(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n{arg}\r\n", arg.len()).as_bytes());
    }
    out
}
