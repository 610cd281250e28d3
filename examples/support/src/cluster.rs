//! Where the broker comes from: an embedded name server and broker with the schedule
//! extension (delayed messages, cancel by key), the transaction extension and the HTTP facade,
//! as the `sluice` binary installs them, so the demo needs nothing else; or an external Sluice
//! named by `SLUICE_NAMESRV` (name server) and `SLUICE_HTTP` (facade base URL). A flow that
//! speaks only the RocketMQ protocol needs `SLUICE_NAMESRV` alone
//! ([`Cluster::from_env_rocketmq_only`]).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use sluice_broker::{
    Broker, BrokerConfig, BrokerExtensions, BrokerHandle, NameServer, NameServerConfig,
    NameServerHandle,
};
use sluice_client::ClientConfig;
use sluice_http::{HttpConfig, HttpFacade};
use sluice_schedule::{ScheduleConfig, ScheduleExtension};
use sluice_store::StoreConfig;
use sluice_txn::{TxnConfig, TxnExtension};

/// A name server, broker and HTTP facade running in this process on 127.0.0.1 ephemeral
/// ports, data in a temp dir removed at the end.
pub struct Embedded {
    /// The name server.
    pub namesrv: NameServerHandle,
    /// The broker; shutting it down also stops the facade (an extension of it).
    pub broker: BrokerHandle,
    /// The facade, kept for its bound address.
    pub facade: Arc<HttpFacade>,
    /// Keeps the data directory alive while the broker runs.
    pub dir: tempfile::TempDir,
}

/// Set by [`embedded_only`].
static EMBEDDED_ONLY: AtomicBool = AtomicBool::new(false);

/// Makes every `Cluster::from_env*` of this process start an embedded Sluice, whatever
/// `SLUICE_NAMESRV` and `SLUICE_HTTP` say. For tests: their assertions rely on the embedded
/// broker's settings (quick check-backs, a short retry ladder), and a test must start the
/// servers it needs rather than use whichever one the shell names for the demos.
pub fn embedded_only() {
    EMBEDDED_ONLY.store(true, Ordering::Relaxed);
}

/// An environment variable, unless [`embedded_only`] was called.
fn var(key: &str) -> Option<String> {
    if EMBEDDED_ONLY.load(Ordering::Relaxed) {
        return None;
    }
    std::env::var(key).ok().filter(|v| !v.is_empty())
}

/// A running Sluice the flow connects to.
pub enum Cluster {
    /// Started by this process (boxed: it is much larger than two addresses).
    Embedded(Box<Embedded>),
    /// Someone else's Sluice.
    External {
        /// Name server, `host:port`.
        namesrv: String,
        /// HTTP facade base URL, `http://host:port`; `None` for a RocketMQ-protocol-only flow.
        http: Option<String>,
    },
}

impl Cluster {
    /// `SLUICE_NAMESRV` and `SLUICE_HTTP` if set, else an embedded Sluice. One without the
    /// other is refused: the flow needs both the RocketMQ protocol and the facade.
    ///
    /// `tweak` adjusts the embedded broker's configuration (e.g. a group's retry policy); an
    /// external Sluice keeps its own.
    pub async fn from_env(tweak: impl FnOnce(&mut BrokerConfig)) -> anyhow::Result<Self> {
        match (var("SLUICE_NAMESRV"), var("SLUICE_HTTP")) {
            (Some(namesrv), Some(http)) => Ok(Self::External {
                namesrv,
                http: Some(http),
            }),
            (None, None) => Self::embedded(tweak).await,
            _ => {
                bail!("set both SLUICE_NAMESRV and SLUICE_HTTP (or neither for an embedded broker)")
            }
        }
    }

    /// For a flow that uses only the RocketMQ protocol: `SLUICE_NAMESRV` alone selects an
    /// external Sluice (`SLUICE_HTTP` is kept if set), else an embedded one whose broker and
    /// transaction settings `tweak` and `tweak_txn` adjust.
    pub async fn from_env_rocketmq_only(
        tweak: impl FnOnce(&mut BrokerConfig),
        tweak_txn: impl FnOnce(&mut TxnConfig),
    ) -> anyhow::Result<Self> {
        match var("SLUICE_NAMESRV") {
            Some(namesrv) => Ok(Self::External {
                namesrv,
                http: var("SLUICE_HTTP"),
            }),
            None => Self::embedded_with(tweak, tweak_txn).await,
        }
    }

    /// Starts the embedded Sluice. The schedule extension is also the transaction
    /// extension's commit hook, as in the `sluice` binary; the facade is installed last so
    /// it sees both services.
    pub async fn embedded(tweak: impl FnOnce(&mut BrokerConfig)) -> anyhow::Result<Self> {
        Self::embedded_with(tweak, |_| {}).await
    }

    /// [`Cluster::embedded`] with the transaction extension's settings adjusted as well (e.g.
    /// quick check-backs, so a demo shows one within a second).
    pub async fn embedded_with(
        tweak: impl FnOnce(&mut BrokerConfig),
        tweak_txn: impl FnOnce(&mut TxnConfig),
    ) -> anyhow::Result<Self> {
        let localhost = SocketAddr::from(([127, 0, 0, 1], 0));
        let namesrv = NameServer::start(NameServerConfig {
            listen: localhost,
            ..NameServerConfig::default()
        })
        .await
        .context("name server start")?;
        let dir = tempfile::tempdir().context("broker data dir")?;
        let mut cfg = BrokerConfig::new(StoreConfig::for_tests(dir.path()));
        cfg.listen = localhost;
        cfg.namesrv_addrs = vec![namesrv.local_addr()];
        cfg.default_topic_queue_nums = 2;
        tweak(&mut cfg);
        let schedule = ScheduleExtension::new(ScheduleConfig::default());
        let mut txn_cfg = TxnConfig::default();
        tweak_txn(&mut txn_cfg);
        let txn = TxnExtension::new(txn_cfg).with_commit_hooks(vec![schedule.put_hook()]);
        let http = HttpConfig {
            listen: localhost,
            ..HttpConfig::default()
        };
        let facade = HttpFacade::new(http, Some(txn.service()), Some(schedule.service()));
        let mut ext = BrokerExtensions::default();
        for e in [schedule.broker_extensions(), txn.broker_extensions()] {
            ext.put_hooks.extend(e.put_hooks);
            ext.extensions.extend(e.extensions);
        }
        ext.extensions.push(facade.extension());
        let broker = Broker::start_with(cfg, ext).await.context("broker start")?;
        Ok(Self::Embedded(Box::new(Embedded {
            namesrv,
            broker,
            facade,
            dir,
        })))
    }

    /// The name server address clients use.
    pub fn namesrv(&self) -> String {
        match self {
            Self::Embedded(e) => e.namesrv.local_addr().to_string(),
            Self::External { namesrv, .. } => namesrv.clone(),
        }
    }

    /// The facade's base URL.
    pub fn http_base(&self) -> anyhow::Result<String> {
        match self {
            Self::Embedded(e) => {
                let addr = e.facade.local_addr().context("HTTP facade not bound")?;
                Ok(format!("http://{addr}"))
            }
            Self::External {
                http: Some(http), ..
            } => Ok(http.trim_end_matches('/').to_owned()),
            Self::External { http: None, .. } => {
                bail!("no HTTP facade: set SLUICE_HTTP as well as SLUICE_NAMESRV")
            }
        }
    }

    /// Client settings with short route refresh, so consumers see the auto-created topic soon.
    pub fn client_config(&self) -> ClientConfig {
        ClientConfig::new(&self.namesrv())
            .with_rpc_timeout(Duration::from_secs(5))
            .with_route_refresh_interval(Duration::from_secs(1))
            .with_heartbeat_interval(Duration::from_secs(2))
    }

    /// Stops what this process started.
    pub async fn stop(self) {
        if let Self::Embedded(e) = self {
            let Embedded {
                namesrv,
                broker,
                facade,
                dir,
            } = *e;
            broker.shutdown().await;
            namesrv.shutdown().await;
            drop(facade);
            drop(dir);
        }
    }
}
