//! Where the broker comes from: an embedded name server and broker (with the transaction
//! extension, as the `sluice` binary installs it) so the demo needs nothing else, or an
//! external name server named by `SLUICE_NAMESRV`.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use sluice_broker::{
    Broker, BrokerConfig, BrokerHandle, NameServer, NameServerConfig, NameServerHandle,
};
use sluice_client::ClientConfig;
use sluice_store::StoreConfig;

/// A name server and broker running in this process on 127.0.0.1 ephemeral ports, data in a
/// temp dir removed at the end.
pub struct Embedded {
    /// The name server.
    pub namesrv: NameServerHandle,
    /// The broker.
    pub broker: BrokerHandle,
    /// Keeps the data directory alive while the broker runs.
    pub dir: tempfile::TempDir,
}

/// A running broker setup the flow connects to.
pub enum Cluster {
    /// Started by this process (boxed: it is much larger than an address).
    Embedded(Box<Embedded>),
    /// Someone else's name server (`host:port`).
    External(String),
}

impl Cluster {
    /// `SLUICE_NAMESRV` if set, else an embedded name server and broker.
    pub async fn from_env() -> anyhow::Result<Self> {
        match std::env::var("SLUICE_NAMESRV") {
            Ok(addr) if !addr.is_empty() => Ok(Self::External(addr)),
            _ => Self::embedded().await,
        }
    }

    /// Starts the embedded pair. Check-backs are made quick (first after 500 ms) so the
    /// crash healing shows within a second instead of the production default of 6 s.
    pub async fn embedded() -> anyhow::Result<Self> {
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
        let mut txn = sluice_txn::TxnConfig::default();
        txn.defaults.check_after = Duration::from_millis(500);
        txn.defaults.check_interval = Duration::from_millis(500);
        let ext = sluice_txn::TxnExtension::new(txn).broker_extensions();
        let broker = Broker::start_with(cfg, ext).await.context("broker start")?;
        Ok(Self::Embedded(Box::new(Embedded {
            namesrv,
            broker,
            dir,
        })))
    }

    /// The name server address clients use.
    pub fn namesrv(&self) -> String {
        match self {
            Self::Embedded(e) => e.namesrv.local_addr().to_string(),
            Self::External(addr) => addr.clone(),
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
                dir,
            } = *e;
            broker.shutdown().await;
            namesrv.shutdown().await;
            drop(dir);
        }
    }
}
