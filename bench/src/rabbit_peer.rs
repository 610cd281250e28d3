//! The RabbitMQ peer: Debian's `rabbitmq-server` 3.10 (installed by `scripts/bench-peers`)
//! started as a private node per phase: AMQP and Erlang distribution on 127.0.0.1 only, its
//! database and logs in the bench's folder, no plugins. A durable queue, persistent messages
//! (delivery mode 2) and publisher confirms: a publish counts once RabbitMQ confirms it, which
//! for a persistent message on a durable queue means it was written to its message store and
//! fsynced (RabbitMQ batches those syncs across publishers, a group commit too).
//!
//! The node runs under a shell script that starts `beam.smp` as its child, so it gets its own
//! process group and is stopped by signalling the group; `epmd`, which the node starts
//! detached, is stopped afterwards unless it was already running.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::proc::await_listening;

const SERVER: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";
/// Erlang's port mapper, which every node registers with.
const EPMD_PORT: u16 = 4369;

/// A running private RabbitMQ node, stopped when dropped.
pub struct Rabbit {
    child: Child,
    /// `amqp://guest:guest@127.0.0.1:PORT/%2f`.
    pub url: String,
    epmd_was_running: bool,
    dir: PathBuf,
}

impl Rabbit {
    /// Starts a node with its files in `dir`, or says why it cannot (not installed: run
    /// `scripts/bench-peers`; not listening within 60 s).
    pub fn start(dir: &Path) -> Result<Self> {
        if !Path::new(SERVER).exists() {
            bail!("{SERVER} not found: run scripts/bench-peers");
        }
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("enabled_plugins"), "[].\n")?;
        let free = || -> Result<u16> { Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port()) };
        let (port, dist) = (free()?, free()?);
        let epmd_was_running = std::net::TcpStream::connect(("127.0.0.1", EPMD_PORT)).is_ok();
        let child = Command::new(SERVER)
            .env("RABBITMQ_NODENAME", format!("bench{port}@localhost"))
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", port.to_string())
            .env("RABBITMQ_DIST_PORT", dist.to_string())
            .env(
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                "-kernel inet_dist_use_interface {127,0,0,1}",
            )
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", dir.join("log"))
            .env("RABBITMQ_PID_FILE", dir.join("pid"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", dir.join("enabled_plugins"))
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .context("start rabbitmq-server")?;
        let me = Self {
            child,
            url: format!("amqp://guest:guest@127.0.0.1:{port}/%2f"),
            epmd_was_running,
            dir: dir.to_owned(),
        };
        await_listening(port, Duration::from_secs(60), "rabbitmq-server")?;
        Ok(me)
    }
}

impl Drop for Rabbit {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-TERM", "--", &group]).status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline && !matches!(self.child.try_wait(), Ok(Some(_))) {
            std::thread::sleep(Duration::from_millis(50));
        }
        // The script may be gone before beam.smp is: make sure the whole group is.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &group])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.wait();
        if !self.epmd_was_running {
            let _ = Command::new("epmd")
                .arg("-kill")
                .env("ERL_EPMD_ADDRESS", "127.0.0.1")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        std::fs::remove_dir_all(&self.dir).ok();
    }
}
