//! The real `sluice` binary as a child process (spawned like `footprint` does), a shared
//! tokio runtime, and a bounded load driver for the client-side scenarios.

use std::future::Future;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};

/// A running `sluice serve` on 127.0.0.1 ports chosen by the kernel; stopped (SIGTERM, then
/// SIGKILL after a bound) and its data folder removed when dropped.
pub struct Sluice {
    child: Child,
    /// Name-server address for the clients.
    pub namesrv: String,
    /// HTTP facade address (`host:port`), for admin calls such as creating a topic.
    pub http: String,
    data: PathBuf,
}

impl Sluice {
    /// Starts `sluice` with `env` (extra `SLUICE_*` settings) on a fresh data folder.
    pub fn start(bin: &Path, data: &Path, env: &[(&str, String)]) -> Result<Self> {
        std::fs::create_dir_all(data)?;
        let mut cmd = Command::new(bin);
        cmd.args([
            "serve",
            "--namesrv-listen",
            "127.0.0.1:0",
            "--broker-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(data)
        .env("SLUICE_LOG", "warn")
        .stdout(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("spawn {}", bin.display()))?;
        let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
        let ready = lines.next().transpose()?.unwrap_or_default();
        // "sluice ready: name server ADDR, broker ADDR, http ADDR, data ..."
        let namesrv = ready
            .strip_prefix("sluice ready: name server ")
            .and_then(|r| r.split(',').next())
            .map(str::to_owned);
        let http = ready
            .split(", ")
            .find_map(|f| f.strip_prefix("http "))
            .unwrap_or_default()
            .to_owned();
        let mut me = Self {
            child,
            namesrv: String::new(),
            http,
            data: data.to_owned(),
        };
        match namesrv {
            Some(ns) => me.namesrv = ns,
            None => bail!("sluice did not report ready: {ready:?}"),
        }
        // Keep reading stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines.map_while(Result::ok) {});
        Ok(me)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory in MiB.
    pub fn rss_mib(&self) -> f64 {
        rss_mib(self.pid())
    }

    /// Anonymous resident memory in MiB.
    pub fn rss_anon_mib(&self) -> f64 {
        rss_anon_mib(self.pid())
    }
}

impl Sluice {
    /// Creates `topic` with `queues` queues through the HTTP admin API (auto-creation would
    /// give the client's default of 4).
    pub async fn create_topic(&self, topic: &str, queues: i32) -> Result<()> {
        let url = format!("http://{}/v1/topics", self.http);
        let r = reqwest::Client::new()
            .post(url)
            .json(&serde_json::json!({ "name": topic, "queues": queues }))
            .send()
            .await?;
        anyhow::ensure!(
            r.status().is_success(),
            "create topic {topic}: {}",
            r.status()
        );
        Ok(())
    }

    /// Stops the process (SIGTERM) and keeps its data folder, for a restart over it.
    pub fn stop_keep_data(mut self) {
        stop_child(&mut self.child);
        self.data = PathBuf::new();
    }
}

impl Drop for Sluice {
    fn drop(&mut self) {
        stop_child(&mut self.child);
        if !self.data.as_os_str().is_empty() {
            std::fs::remove_dir_all(&self.data).ok();
        }
    }
}

/// SIGTERM, wait up to 10 s, then SIGKILL: never leaves the child behind.
pub fn stop_child(child: &mut Child) {
    if let Ok(Some(_)) = child.try_wait() {
        return; // already stopped (and reaped)
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// VmRSS of `pid` in MiB (NaN when unreadable).
pub fn rss_mib(pid: u32) -> f64 {
    status_mib(pid, "VmRSS:")
}

/// RssAnon of `pid` in MiB: resident memory that is not mapped file pages (the store maps
/// its files, so VmRSS grows with the data written).
pub fn rss_anon_mib(pid: u32) -> f64 {
    status_mib(pid, "RssAnon:")
}

fn status_mib(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// A multi-threaded tokio runtime with two workers (the machine has two cores).
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

/// Milliseconds since the epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What one bounded load run did.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    /// Operations that succeeded.
    pub ok: usize,
    /// Operations that failed (after the client's own retries).
    pub errors: usize,
    /// Wall time of the run.
    pub secs: f64,
    /// True when the time bound stopped the run before `n` operations.
    pub timed_out: bool,
}

impl Load {
    /// Successful operations per second.
    pub fn rate(&self) -> f64 {
        self.ok as f64 / self.secs
    }
}

/// Runs `op(i)` for i in 0..n with `window` operations in flight (one tokio task each), and
/// stops early once `bound` has passed.
pub async fn drive<F, Fut, E>(n: usize, window: usize, bound: Duration, op: F) -> Load
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), E>> + Send,
    E: std::fmt::Display,
{
    let op = Arc::new(op);
    let next = Arc::new(AtomicUsize::new(0));
    let ok = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let deadline = start + bound;
    let mut tasks = Vec::with_capacity(window);
    for _ in 0..window.max(1) {
        let (op, next, ok, errors) = (op.clone(), next.clone(), ok.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                if Instant::now() >= deadline {
                    break;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                match op(i).await {
                    Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        if errors.fetch_add(1, Ordering::Relaxed) < 3 {
                            eprintln!("  operation {i} failed: {e}");
                        }
                        0
                    }
                };
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let ok = ok.load(Ordering::Relaxed);
    let errors = errors.load(Ordering::Relaxed);
    Load {
        ok,
        errors,
        secs: start.elapsed().as_secs_f64(),
        timed_out: ok + errors < n,
    }
}

/// `l` when every operation succeeded within the bound; otherwise an error naming `who`, so
/// a scenario never reports a rate from a partial or failing run.
pub fn checked(who: &str, l: Load) -> anyhow::Result<Load> {
    if l.errors > 0 || l.timed_out {
        anyhow::bail!(
            "{who}: {} errors, timed out: {} ({} ok in {:.1} s)",
            l.errors,
            l.timed_out,
            l.ok,
            l.secs
        );
    }
    Ok(l)
}

/// A body of exactly `size` bytes starting with `head` (padded with `x`).
pub fn body(head: &str, size: usize) -> Vec<u8> {
    let mut b = head.as_bytes().to_vec();
    b.resize(size.max(head.len()), b'x');
    b
}

/// Waits until something accepts connections on 127.0.0.1:`port`, or fails naming `who` after
/// `within` (a peer server that did not start).
pub fn await_listening(port: u16, within: Duration, who: &str) -> Result<()> {
    let deadline = Instant::now() + within;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("{who} did not listen on port {port} within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// The benches' push consumer of `topic` in `group`: from the first offset, 64 handlers at
/// once, pulls of 64, `on_message` for each message. Returns once at least `min_queues` of the
/// topic's queues are assigned (0: at once), or fails after 30 s.
pub async fn push_consumer(
    namesrv: &str,
    group: &str,
    topic: &str,
    min_queues: usize,
    on_message: impl Fn(&sluice_client::ConsumedMessage) + Send + Sync + 'static,
) -> Result<sluice_client::PushConsumer> {
    use sluice_client::{ClientConfig, ConsumeFrom, ConsumeResult, ConsumedMessage, PushConsumer};
    let c = PushConsumer::builder(ClientConfig::new(namesrv), group)
        .subscribe(topic, "*")
        .consume_from(ConsumeFrom::FirstOffset)
        .max_concurrency(64)
        .pull_batch_size(64)
        .rebalance_interval(Duration::from_secs(1))
        .start(move |m: ConsumedMessage| {
            on_message(&m);
            async { ConsumeResult::Success }
        })
        .await
        .context("push consumer")?;
    let ours = |c: &PushConsumer| {
        c.assigned_queues()
            .iter()
            .filter(|q| q.topic == topic)
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while ours(&c) < min_queues && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::ensure!(
        ours(&c) >= min_queues,
        "the consumer got {} of the {min_queues} queues it waited for",
        ours(&c)
    );
    Ok(c)
}
