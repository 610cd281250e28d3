//! The NATS peer: Debian's `nats-server` (installed by `scripts/bench-peers`) started as a
//! child on 127.0.0.1 with JetStream on a file store in the bench's folder, and a stream that
//! takes `bench.>`. Publishing through JetStream waits for the stream's ack (stored).

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::proc::{await_listening, stop_child};

/// The stream the peer's publishers write to.
pub const STREAM: &str = "BENCH";
/// Its subjects.
pub const SUBJECTS: &str = "bench.>";

/// A running `nats-server -js`, stopped by pid when dropped.
pub struct Nats {
    child: Child,
    /// `nats://127.0.0.1:PORT`.
    pub url: String,
}

impl Nats {
    /// Starts `nats-server -js` with its store in `dir`, or says why it cannot (not installed:
    /// run `scripts/bench-peers`).
    pub fn start(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("nats-server not found: run scripts/bench-peers")?;
        let me = Self {
            child,
            url: format!("nats://127.0.0.1:{port}"),
        };
        await_listening(port, Duration::from_secs(10), "nats-server")?;
        Ok(me)
    }

    /// A JetStream context with the bench stream created (file storage).
    pub async fn jetstream(&self) -> Result<async_nats::jetstream::Context> {
        let client = async_nats::connect(&self.url).await?;
        let js = async_nats::jetstream::new(client);
        js.get_or_create_stream(async_nats::jetstream::stream::Config {
            name: STREAM.to_string(),
            subjects: vec![SUBJECTS.to_string()],
            storage: async_nats::jetstream::stream::StorageType::File,
            ..Default::default()
        })
        .await
        .map_err(|e| anyhow::anyhow!("create stream: {e}"))?;
        Ok(js)
    }
}

/// Reads the bench stream from its start through a pull consumer named `durable` that takes
/// no acks (the cheapest consumer NATS offers), handing each payload to `got`, in a task the
/// caller aborts when done.
pub async fn read_ackless(
    js: &async_nats::jetstream::Context,
    durable: &str,
    got: impl Fn(&[u8]) + Send + 'static,
) -> Result<tokio::task::JoinHandle<()>> {
    use async_nats::jetstream::consumer::{pull, AckPolicy};
    use futures::StreamExt;
    let stream = js
        .get_stream(STREAM)
        .await
        .map_err(|e| anyhow::anyhow!("get stream: {e}"))?;
    let consumer = stream
        .create_consumer(pull::Config {
            durable_name: Some(durable.into()),
            ack_policy: AckPolicy::None,
            ..Default::default()
        })
        .await
        .map_err(|e| anyhow::anyhow!("create consumer: {e}"))?;
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| anyhow::anyhow!("consume: {e}"))?;
    Ok(tokio::spawn(async move {
        while let Some(Ok(m)) = messages.next().await {
            got(&m.payload);
        }
    }))
}

impl Drop for Nats {
    fn drop(&mut self) {
        stop_child(&mut self.child);
    }
}
