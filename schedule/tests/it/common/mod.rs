//! Helpers for the schedule tests: an in-process name server and broker on 127.0.0.1 port 0
//! with the schedule extension, send and recall requests, and reading what was released.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use sluice_broker::{
    Broker, BrokerConfig, BrokerHandle, NameServer, NameServerConfig, NameServerHandle,
    RemotingClient,
};
use sluice_protocol::remoting::custom::{SendHeaderForm, SendMessageRequestHeader};
use sluice_protocol::{request_code, Properties, RecordView, RemotingCommand};
use sluice_schedule::{ScheduleConfig, ScheduleExtension, ScheduleService, Selector, PROP_DUE_MS};
use sluice_store::{GetStatus, MessageInput, StoreConfig};

/// Timeout of every test RPC.
pub const RPC: Duration = Duration::from_secs(10);

/// Small windows and frequent checkpoints, so tests exercise loading and merging.
pub fn test_config() -> ScheduleConfig {
    ScheduleConfig {
        near_window: Duration::from_secs(2),
        checkpoint_interval: Duration::from_millis(100),
        max_runs: 3,
        ..ScheduleConfig::default()
    }
    .with_levels("300ms 700ms 1s")
    .expect("levels")
}

/// [`test_config`] with no checkpoint in a test's time: a crash then loses every release's
/// record, as a crash right after releasing does.
pub fn no_checkpoint_config() -> ScheduleConfig {
    ScheduleConfig {
        checkpoint_interval: Duration::from_secs(3_600),
        ..test_config()
    }
}

fn localhost() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

pub async fn start_namesrv() -> NameServerHandle {
    let cfg = NameServerConfig {
        listen: localhost(),
        ..NameServerConfig::default()
    };
    NameServer::start(cfg).await.expect("name server starts")
}

/// A broker with the schedule extension over `dir`.
pub struct Node {
    pub broker: BrokerHandle,
    pub ext: ScheduleExtension,
}

impl Node {
    pub async fn start(dir: &Path, namesrv: SocketAddr, cfg: ScheduleConfig) -> Node {
        Self::start_with_io(dir, namesrv, cfg, None).await
    }

    /// As [`Node::start`], the store doing its file operations through `io` (a fault layer).
    pub async fn start_with_io(
        dir: &Path,
        namesrv: SocketAddr,
        cfg: ScheduleConfig,
        io: Option<std::sync::Arc<dyn sluice_store::io::StorageIo>>,
    ) -> Node {
        let mut bcfg = BrokerConfig::new(StoreConfig::for_tests(dir));
        bcfg.listen = localhost();
        bcfg.namesrv_addrs = vec![namesrv];
        let ext = ScheduleExtension::new(cfg);
        let mut plug = ext.broker_extensions();
        plug.storage_io = io;
        let broker = Broker::start_with(bcfg, plug).await.expect("broker starts");
        Node { broker, ext }
    }

    pub fn service(&self) -> ScheduleService {
        self.ext.service()
    }

    pub async fn client(&self) -> RemotingClient {
        RemotingClient::connect(self.broker.local_addr())
            .await
            .expect("connect")
    }

    pub async fn stop(self) {
        self.broker.shutdown().await;
    }

    /// Every message released to `topic` (all queues up to `queues`), read from the store.
    pub fn released(&self, topic: &str, queues: i32) -> Vec<Msg> {
        let store = self.broker.store();
        let mut out = Vec::new();
        for q in 0..queues {
            let mut offset = 0;
            for _ in 0..100_000 {
                let r = store.get_messages(topic, q, offset, 1000, 8 << 20, None);
                if r.status != GetStatus::Found {
                    break;
                }
                out.extend(r.messages.iter().map(|m| Msg::parse(&m.bytes)));
                offset = r.next_offset;
            }
        }
        out
    }

    /// Waits (bounded) until `topic` holds at least `n` messages; returns them.
    pub async fn wait_released(
        &self,
        topic: &str,
        queues: i32,
        n: usize,
        within: Duration,
    ) -> Vec<Msg> {
        let deadline = Instant::now() + within;
        loop {
            let got = self.released(topic, queues);
            if got.len() >= n || Instant::now() >= deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// One stored message, owned.
#[derive(Debug, Clone)]
pub struct Msg {
    pub topic: String,
    pub queue_id: i32,
    pub store_ms: i64,
    pub body: Vec<u8>,
    pub props: Properties,
}

impl Msg {
    pub fn parse(bytes: &[u8]) -> Msg {
        let v = RecordView::parse(bytes, usize::MAX).expect("record");
        Msg {
            topic: v.topic.to_owned(),
            queue_id: v.header.queue_id,
            store_ms: v.header.store_timestamp,
            body: v.body.to_vec(),
            props: Properties::decode(v.properties),
        }
    }

    pub fn uniq(&self) -> &str {
        self.props.get("UNIQ_KEY").expect("UNIQ_KEY")
    }

    pub fn due_ms(&self) -> i64 {
        self.props
            .get(PROP_DUE_MS)
            .and_then(|d| d.parse().ok())
            .expect("released messages carry their due time")
    }

    /// Released at or after its due time.
    pub fn assert_not_early(&self) {
        assert!(
            self.store_ms >= self.due_ms(),
            "released {} ms early: {self:?}",
            self.due_ms() - self.store_ms
        );
    }
}

pub fn props(pairs: &[(&str, &str)]) -> Properties {
    let mut p = Properties::new();
    for (k, v) in pairs {
        p.insert(*k, *v);
    }
    p
}

fn header(topic: &str, queue_id: i32, props: &Properties, batch: bool) -> SendMessageRequestHeader {
    SendMessageRequestHeader {
        producer_group: "test_producer".into(),
        topic: topic.into(),
        default_topic: "TBW102".into(),
        default_topic_queue_nums: 4,
        queue_id,
        born_timestamp: sluice_store::now_ms(),
        properties: Some(props.encode()),
        batch: batch.then_some(true),
        ..SendMessageRequestHeader::default()
    }
}

/// A SEND_MESSAGE_V2 request.
pub fn send_request(
    topic: &str,
    queue_id: i32,
    body: &[u8],
    props: &Properties,
) -> RemotingCommand {
    let h = header(topic, queue_id, props, false);
    RemotingCommand::request(request_code::SEND_MESSAGE_V2, h.to_ext(SendHeaderForm::V2))
        .with_body(body.to_vec())
}

/// A SEND_BATCH_MESSAGE request of `entries` (properties each).
pub fn batch_request(topic: &str, entries: &[Properties]) -> RemotingCommand {
    let raw: Vec<String> = entries.iter().map(|p| p.encode()).collect();
    let items: Vec<sluice_protocol::BatchEntry<'_>> = raw
        .iter()
        .map(|p| sluice_protocol::BatchEntry {
            flag: 0,
            body: b"b",
            properties: p.as_bytes(),
        })
        .collect();
    let mut body = Vec::new();
    sluice_protocol::encode_batch(items.iter(), &mut body).expect("batch encodes");
    let h = header(topic, 0, &Properties::new(), true);
    RemotingCommand::request(
        request_code::SEND_BATCH_MESSAGE,
        h.to_ext(SendHeaderForm::V2),
    )
    .with_body(body)
}

/// Sends; returns the response (any code).
pub async fn send(
    client: &RemotingClient,
    topic: &str,
    queue_id: i32,
    body: &[u8],
    p: &Properties,
) -> RemotingCommand {
    client
        .invoke(send_request(topic, queue_id, body, p), RPC)
        .await
        .expect("send answered")
}

/// A plain message for the in-process API, with KEYS.
pub fn input(topic: &str, queue_id: i32, keys: &str, extra: &[(&str, &str)]) -> MessageInput {
    let mut p = props(extra);
    if !keys.is_empty() {
        p.insert("KEYS", keys);
    }
    let mut m = MessageInput::new(topic, queue_id, format!("body of {keys}"));
    m.properties = p.encode();
    m
}

/// The messages of `topic` carrying business key `key`.
pub fn key_in(topic: &str, key: &str) -> Selector {
    Selector::Key {
        topic: topic.into(),
        key: key.into(),
    }
}

/// The message of `topic` whose UNIQ_KEY is `uniq`.
pub fn id_in(topic: &str, uniq: &str) -> Selector {
    Selector::Id {
        topic: Some(topic.into()),
        uniq_key: uniq.into(),
    }
}
