//! Shared by the client's integration tests: an in-process name server and brokers on
//! 127.0.0.1 port 0 with temporary data folders, topic creation, and bounded waiting.
#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sluice_broker::{
    Broker, BrokerConfig, BrokerHandle, HookOutcome, NameServer, NameServerConfig,
    NameServerHandle, PendingMessage, PutContext, PutHook,
};
use sluice_client::ClientConfig;
use sluice_protocol::remoting::custom::UpdateAndCreateTopicRequestHeader;
use sluice_protocol::{request_code, RemotingCommand};
use sluice_remoting::RemotingClient;
use sluice_store::StoreConfig;

/// Upper bound of every wait in these tests: generous, since the machine is shared.
pub const WAIT: Duration = Duration::from_secs(60);

/// A name server and brokers registered with it.
pub struct Cluster {
    pub dirs: Vec<tempfile::TempDir>,
    pub namesrv: NameServerHandle,
    pub brokers: Vec<BrokerHandle>,
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

fn localhost() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// A name server and `n` brokers named `broker-a`, `broker-b`, ...
pub async fn start_cluster(n: usize) -> Cluster {
    start_cluster_with_hooks(n, Vec::new()).await
}

/// As [`start_cluster`], with `hooks` run on every broker before the transaction hook: how a
/// test makes the broker refuse some messages.
pub async fn start_cluster_with_hooks(n: usize, hooks: Vec<Arc<dyn PutHook>>) -> Cluster {
    init_tracing();
    let namesrv = NameServer::start(NameServerConfig {
        listen: localhost(),
        ..NameServerConfig::default()
    })
    .await
    .expect("name server starts");
    let mut dirs = Vec::new();
    let mut brokers = Vec::new();
    for i in 0..n {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut cfg = BrokerConfig::new(StoreConfig::for_tests(dir.path()));
        cfg.listen = localhost();
        cfg.namesrv_addrs = vec![namesrv.local_addr()];
        cfg.broker_name = format!("broker-{}", (b'a' + i as u8) as char);
        // As the `sluice` binary does: with the transaction extension (short check timings).
        let mut txn = sluice_txn::TxnConfig::default();
        txn.defaults.check_after = Duration::from_millis(500);
        txn.defaults.check_interval = Duration::from_millis(500);
        let mut ext = sluice_txn::TxnExtension::new(txn).broker_extensions();
        ext.put_hooks.splice(0..0, hooks.iter().cloned());
        brokers.push(Broker::start_with(cfg, ext).await.expect("broker starts"));
        dirs.push(dir);
    }
    Cluster {
        dirs,
        namesrv,
        brokers,
    }
}

impl Cluster {
    /// A client config for this cluster with short intervals.
    pub fn config(&self) -> ClientConfig {
        ClientConfig::new(&self.namesrv.local_addr().to_string())
            .with_rpc_timeout(Duration::from_secs(5))
            .with_route_refresh_interval(Duration::from_secs(2))
            .with_heartbeat_interval(Duration::from_secs(5))
    }

    /// Creates `topic` with `queues` read/write queues on every broker and waits until the
    /// name server routes it to all of them.
    pub async fn create_topic(&self, topic: &str, queues: i32) {
        self.create_topic_with_perm(topic, queues, 6).await;
    }

    /// As [`Cluster::create_topic`], with RocketMQ's `perm` (6 read-write, 4 read-only).
    pub async fn create_topic_with_perm(&self, topic: &str, queues: i32, perm: i32) {
        for b in &self.brokers {
            let client = RemotingClient::connect(b.local_addr())
                .await
                .expect("connect");
            let header = UpdateAndCreateTopicRequestHeader {
                topic: topic.into(),
                default_topic: "TBW102".into(),
                read_queue_nums: queues,
                write_queue_nums: queues,
                perm,
                topic_filter_type: "SINGLE_TAG".into(),
                ..Default::default()
            };
            let req =
                RemotingCommand::request(request_code::UPDATE_AND_CREATE_TOPIC, header.to_ext());
            let resp = client
                .invoke(req, Duration::from_secs(10))
                .await
                .expect("create topic");
            assert_eq!(resp.code, 0, "create topic: {:?}", resp.remark);
        }
        let want = self.brokers.len();
        let ok = wait_until(|| async { self.routed_brokers(topic).await == want }).await;
        assert!(ok, "the name server never routed {topic}");
    }

    /// How many brokers the name server routes `topic` to.
    pub async fn routed_brokers(&self, topic: &str) -> usize {
        let Ok(client) = RemotingClient::connect(self.namesrv.local_addr()).await else {
            return 0;
        };
        let req = RemotingCommand::request(
            request_code::GET_ROUTEINFO_BY_TOPIC,
            [("topic", topic)].into_iter().collect(),
        );
        match client.invoke(req, Duration::from_secs(5)).await {
            Ok(resp) if resp.code == 0 => {
                sluice_protocol::remoting::body::TopicRouteData::from_json(&resp.body)
                    .map(|r| r.queue_datas.len())
                    .unwrap_or(0)
            }
            _ => 0,
        }
    }

    /// Stops broker `i` and starts it again on a new port, same name and data folder: its
    /// master address moves, as a rescheduled pod's does.
    pub async fn move_broker(&mut self, i: usize) {
        let old = self.brokers.remove(i);
        let name = format!("broker-{}", (b'a' + i as u8) as char);
        old.shutdown().await;
        let mut cfg = BrokerConfig::new(StoreConfig::for_tests(self.dirs[i].path()));
        cfg.listen = localhost();
        cfg.namesrv_addrs = vec![self.namesrv.local_addr()];
        cfg.broker_name = name;
        let ext =
            sluice_txn::TxnExtension::new(sluice_txn::TxnConfig::default()).broker_extensions();
        let moved = Broker::start_with(cfg, ext)
            .await
            .expect("broker starts again");
        self.brokers.insert(i, moved);
    }

    pub async fn stop(self) {
        for b in self.brokers {
            b.shutdown().await;
        }
        self.namesrv.shutdown().await;
    }
}

/// Polls `check` every 50 ms until it holds or [`WAIT`] passes; true when it held.
pub async fn wait_until<F, Fut>(mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// A put hook that, while on, refuses every message to a `%RETRY%` or `%DLQ%` topic: both
/// ways a consumer hands a failed message back (CONSUMER_SEND_MSG_BACK and its own retry-copy
/// send) then fail, as they do when the broker is overloaded or its disk is full.
#[derive(Debug, Default)]
pub struct RefuseHandBacks {
    on: AtomicBool,
}

impl RefuseHandBacks {
    /// A hook that refuses from the start.
    pub fn on() -> Arc<Self> {
        let hook = Self::default();
        hook.on.store(true, Ordering::SeqCst);
        Arc::new(hook)
    }

    /// Lets hand-backs through again.
    pub fn turn_off(&self) {
        self.on.store(false, Ordering::SeqCst);
    }
}

impl PutHook for RefuseHandBacks {
    fn name(&self) -> &'static str {
        "refuse-hand-backs"
    }

    fn before_put(&self, _ctx: &PutContext<'_>, msg: &mut PendingMessage) -> HookOutcome {
        let topic = &msg.input.topic;
        let hand_back = topic.starts_with("%RETRY%") || topic.starts_with("%DLQ%");
        if hand_back && self.on.load(Ordering::SeqCst) {
            return HookOutcome::Reject {
                code: sluice_protocol::response_code::SYSTEM_ERROR,
                remark: "test: hand-backs refused".into(),
            };
        }
        HookOutcome::Continue
    }
}
