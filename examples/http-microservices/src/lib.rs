//! # example-http-microservices
//!
//! Starts an embedded broker with its HTTP facade (or uses `SLUICE_HTTP` when set) and runs
//! `services.py`: two Python services, standard library only, that use nothing but HTTP:
//! a transactional send healed by a signed webhook check-back, lease-based consumption with
//! ack and nack, retries into the dead-letter queue, and an operator's DLQ replay.
//!
//! The embedded broker is tuned for a demo that finishes in seconds: check-backs start 1 s
//! after a half message, and the shipping group retries twice (300 ms, 700 ms) before its
//! dead-letter queue.
//!
//! Against a `sluice` of your own (`SLUICE_HTTP=http://127.0.0.1:8080`), give it the same
//! setup in its TOML, or the demo fails (a per-message webhook outside `check_url_hosts` is
//! refused with 403; a shipping group with the default back-off reaches its dead-letter queue
//! only after hours), and export the same `SLUICE_WEBHOOK_SECRET` for the services:
//!
//! ```toml
//! [http]
//! check_url_hosts = ["127.0.0.1"]
//! webhook_secret = "at least 16 characters, also exported as SLUICE_WEBHOOK_SECRET"
//!
//! [txn]
//! check_after_ms = 1000
//! check_interval_ms = 1000
//!
//! [retry.groups.py-shipping]
//! backoff = "ladder"
//! ladder_ms = [300, 700]
//! max_reconsume_times = 2
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use sluice_broker::retry::{Backoff, GroupRetryPolicy};
use sluice_broker::{Broker, BrokerConfig, BrokerExtensions, BrokerHandle};
use sluice_http::{HttpConfig, HttpFacade};
use sluice_schedule::{ScheduleConfig, ScheduleExtension};
use sluice_store::StoreConfig;
use sluice_txn::{TxnConfig, TxnExtension};

/// The consumer group of the Python shipping service.
pub const SHIPPING_GROUP: &str = "py-shipping";
/// The webhook signing secret the embedded broker uses and the Python service checks.
pub const WEBHOOK_SECRET: &str = "demo-webhook-secret-0123456789";

/// An embedded broker with the HTTP facade.
pub struct Embedded {
    broker: BrokerHandle,
    facade: Arc<HttpFacade>,
    _dir: tempfile::TempDir,
}

impl Embedded {
    /// Starts it on free loopback ports in a temporary data folder.
    pub async fn start() -> Result<Self> {
        let dir = tempfile::tempdir().context("data dir")?;
        let mut cfg = BrokerConfig::new(StoreConfig::for_tests(dir.path()));
        cfg.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        cfg.namesrv_addrs = vec![];
        cfg.retry.groups.insert(
            SHIPPING_GROUP.into(),
            GroupRetryPolicy {
                max_reconsume_times: 2,
                backoff: Backoff::Ladder(vec![
                    Duration::from_millis(300),
                    Duration::from_millis(700),
                ]),
                ..GroupRetryPolicy::default()
            },
        );
        let schedule = ScheduleExtension::new(ScheduleConfig::default());
        let mut txn_cfg = TxnConfig::default();
        txn_cfg.defaults.check_after = Duration::from_secs(1);
        txn_cfg.defaults.check_interval = Duration::from_secs(1);
        let txn = TxnExtension::new(txn_cfg).with_commit_hooks(vec![schedule.put_hook()]);
        let http = HttpConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            ..HttpConfig::default()
        };
        let http = with_webhook_secret(http);
        let facade = HttpFacade::new(http, Some(txn.service()), Some(schedule.service()));
        let mut ext = BrokerExtensions::default();
        for e in [schedule.broker_extensions(), txn.broker_extensions()] {
            ext.put_hooks.extend(e.put_hooks);
            ext.extensions.extend(e.extensions);
        }
        ext.extensions.push(facade.extension());
        let broker = Broker::start_with(cfg, ext).await.context("broker start")?;
        Ok(Self {
            broker,
            facade,
            _dir: dir,
        })
    }

    /// The facade's base URL.
    pub fn base_url(&self) -> String {
        let addr = self.facade.local_addr().expect("started");
        format!("http://{addr}")
    }

    /// Stops the broker (the facade first).
    pub async fn stop(self) {
        self.broker.shutdown().await;
    }
}

fn with_webhook_secret(mut http: HttpConfig) -> HttpConfig {
    http.checks.webhook_secret = Some(WEBHOOK_SECRET.into());
    // The orders service names its own webhook per message, on this machine.
    http.checks.check_url_hosts = vec!["127.0.0.1".into()];
    http
}

/// What `services.py` reported on its `RESULT` line.
#[derive(Debug)]
pub struct Outcome {
    /// Everything it printed.
    pub output: String,
    /// The parsed `RESULT` object.
    pub result: serde_json::Value,
}

/// Runs `services.py` against `base_url`, echoing its timeline when `echo`; fails when it
/// fails or prints no result. Bounded by the script's own deadline plus a margin.
/// `webhook_secret` is the broker's (the embedded one's [`WEBHOOK_SECRET`]); `None` leaves
/// the services whatever `SLUICE_WEBHOOK_SECRET` this process has.
pub async fn run_services(
    base_url: &str,
    webhook_secret: Option<&str>,
    echo: bool,
) -> Result<Outcome> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("services.py");
    let mut cmd = tokio::process::Command::new("python3");
    if let Some(secret) = webhook_secret {
        cmd.env("SLUICE_WEBHOOK_SECRET", secret);
    }
    let child = cmd
        .arg(&script)
        .env("SLUICE_HTTP", base_url)
        .env("DEMO_TIMEOUT_S", "90")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("python3 is needed to run services.py")?;
    let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .context("services.py did not finish in 120 s")??;
    let output = String::from_utf8_lossy(&out.stdout).into_owned();
    if echo {
        print!("{output}");
    }
    anyhow::ensure!(
        out.status.success(),
        "services.py failed ({}):\n{output}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let line = output
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .context("services.py printed no RESULT line")?;
    Ok(Outcome {
        result: serde_json::from_str(line).context("RESULT is not JSON")?,
        output,
    })
}
