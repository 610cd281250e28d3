//! The Redis peer: Debian's `redis-server` (installed by `scripts/bench-peers`) started as a
//! child on 127.0.0.1 with persistence off, and a minimal RESP client over tokio's TcpStream.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::proc::{await_listening, rss_mib, stop_child};

/// A running `redis-server`, stopped by pid when dropped.
pub struct Redis {
    child: Child,
    /// `127.0.0.1:PORT`.
    pub addr: String,
}

impl Redis {
    /// Starts `redis-server --bind 127.0.0.1 --port <free> --save '' --appendonly no`, or says
    /// why it cannot (not installed: run `scripts/bench-peers`).
    pub fn start() -> Result<Self> {
        Self::start_with(&["--appendonly", "no"])
    }

    /// Starts a durable `redis-server`: AOF in `dir` with `appendfsync always` (every write
    /// is on disk before its reply; one fsync per event-loop turn covers every client).
    pub fn start_durable(dir: &std::path::Path) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let dir = dir.to_string_lossy().to_string();
        Self::start_with(&[
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--dir",
            &dir,
        ])
    }

    fn start_with(persistence: &[&str]) -> Result<Self> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--protected-mode", "yes"])
            .args(persistence)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("redis-server not found: run scripts/bench-peers")?;
        let me = Self {
            child,
            addr: format!("127.0.0.1:{port}"),
        };
        await_listening(port, Duration::from_secs(10), "redis-server")?;
        Ok(me)
    }

    /// Resident memory of the server in MiB.
    pub fn rss_mib(&self) -> f64 {
        rss_mib(self.child.id())
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        stop_child(&mut self.child);
    }
}

/// One RESP reply.
#[derive(Debug)]
pub enum Reply {
    /// `+OK`, `:1`, `$...`: scalar replies as bytes.
    Value(Vec<u8>),
    /// `$-1` / `*-1`.
    Nil,
    /// `*N`.
    Array(Vec<Reply>),
}

/// A connection speaking RESP2.
pub struct Conn {
    rd: BufReader<tokio::net::tcp::OwnedReadHalf>,
    wr: tokio::net::tcp::OwnedWriteHalf,
    out: Vec<u8>,
}

impl Conn {
    /// Connects to `addr` (127.0.0.1 only).
    pub async fn connect(addr: &str) -> Result<Self> {
        let s = TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        let (r, w) = s.into_split();
        Ok(Self {
            rd: BufReader::new(r),
            wr: w,
            out: Vec::new(),
        })
    }

    /// Queues a command (sent by [`Conn::flush`]).
    pub fn push(&mut self, args: &[&[u8]]) {
        self.out
            .extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
        for a in args {
            self.out
                .extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            self.out.extend_from_slice(a);
            self.out.extend_from_slice(b"\r\n");
        }
    }

    /// Sends the queued commands and reads `n` replies.
    pub async fn flush(&mut self, n: usize) -> Result<Vec<Reply>> {
        self.wr.write_all(&self.out).await?;
        self.out.clear();
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            v.push(self.read().await?);
        }
        Ok(v)
    }

    /// One command, one reply.
    pub async fn cmd(&mut self, args: &[&[u8]]) -> Result<Reply> {
        self.push(args);
        Ok(self.flush(1).await?.pop().expect("one reply"))
    }

    async fn read(&mut self) -> Result<Reply> {
        // Iterative over nested arrays: a stack of (array, remaining).
        let mut stack: Vec<(Vec<Reply>, usize)> = Vec::new();
        loop {
            let mut line = Vec::new();
            self.rd.read_until(b'\n', &mut line).await?;
            if line.len() < 3 {
                bail!("redis closed the connection");
            }
            let text = &line[1..line.len() - 2];
            let mut item = match line[0] {
                b'+' | b':' => Some(Reply::Value(text.to_vec())),
                b'-' => bail!("redis error: {}", String::from_utf8_lossy(text)),
                b'$' => {
                    let len: i64 = std::str::from_utf8(text)?.parse()?;
                    if len < 0 {
                        Some(Reply::Nil)
                    } else {
                        let mut b = vec![0; len as usize + 2];
                        self.rd.read_exact(&mut b).await?;
                        b.truncate(len as usize);
                        Some(Reply::Value(b))
                    }
                }
                b'*' => {
                    let len: i64 = std::str::from_utf8(text)?.parse()?;
                    if len < 0 {
                        Some(Reply::Nil)
                    } else if len == 0 {
                        Some(Reply::Array(Vec::new()))
                    } else {
                        stack.push((Vec::with_capacity(len as usize), len as usize));
                        None
                    }
                }
                other => bail!("unexpected RESP type byte {other}"),
            };
            while let Some(done) = item.take() {
                match stack.last_mut() {
                    None => return Ok(done),
                    Some((arr, left)) => {
                        arr.push(done);
                        *left -= 1;
                        if *left == 0 {
                            let (arr, _) = stack.pop().expect("non-empty");
                            item = Some(Reply::Array(arr));
                        }
                    }
                }
            }
        }
    }
}
