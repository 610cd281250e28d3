//! Helpers for the transaction tests: an in-process broker with the txn extension on a
//! temporary folder, raw-remoting requests (send half, END_TRANSACTION, pull), and bounded waits.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use sluice_broker::{Broker, BrokerConfig, BrokerHandle, RemotingClient};
use sluice_protocol::message::record::sysflag;
use sluice_protocol::remoting::body::{encode_json, HeartbeatData, ProducerData};
use sluice_protocol::remoting::custom::{
    pull_sysflag, CheckTransactionStateRequestHeader, EndTransactionRequestHeader,
    PullMessageRequestHeader, SendHeaderForm, SendMessageRequestHeader,
};
use sluice_protocol::{request_code, Properties, RecordView, RemotingCommand};
use sluice_store::StoreConfig;
use sluice_txn::{TxnConfig, TxnExtension};
use tokio::sync::mpsc;

pub const RPC: Duration = Duration::from_secs(10);
pub const GROUP: &str = "txn_producer";
pub const TOPIC: &str = "TxnTopic";
pub const QUEUES: i32 = 4;

/// Short check timings for tests (the brief's "check_after 300 ms, interval 300 ms").
pub fn fast_config() -> TxnConfig {
    let mut cfg = TxnConfig::default();
    cfg.defaults.check_after = Duration::from_millis(300);
    cfg.defaults.check_interval = Duration::from_millis(300);
    cfg.checkpoint_interval = Duration::from_millis(100);
    cfg
}

/// A broker with the transaction extension.
pub struct TestBroker {
    pub broker: BrokerHandle,
    pub txn: TxnExtension,
}

pub fn broker_config(dir: &Path) -> BrokerConfig {
    let mut cfg = BrokerConfig::new(StoreConfig::for_tests(dir));
    cfg.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    cfg
}

impl TestBroker {
    /// The transaction whose half message sits at queue offset `half_offset`, in memory.
    pub async fn view(&self, half_offset: u64) -> sluice_txn::TxnView {
        self.txn
            .service()
            .get(half_offset)
            .await
            .unwrap()
            .expect("the transaction is in memory")
    }

    /// The transactions in memory that `q` selects.
    pub async fn listed(&self, q: &sluice_txn::ListQuery) -> Vec<sluice_txn::TxnView> {
        self.txn.service().list(q).await.unwrap()
    }

    pub async fn start(dir: &Path, cfg: TxnConfig) -> Self {
        let txn = TxnExtension::new(cfg);
        Self::start_with(dir, txn).await
    }

    pub async fn start_with(dir: &Path, txn: TxnExtension) -> Self {
        Self::start_tweaked(dir, txn, |_| {}).await
    }

    /// As [`TestBroker::start_with`], with the broker's config adjusted first.
    pub async fn start_tweaked(
        dir: &Path,
        txn: TxnExtension,
        tweak: impl FnOnce(&mut BrokerConfig),
    ) -> Self {
        let mut cfg = broker_config(dir);
        tweak(&mut cfg);
        let broker = Broker::start_with(cfg, txn.broker_extensions())
            .await
            .expect("broker starts");
        Self { broker, txn }
    }

    pub async fn client(&self) -> RemotingClient {
        RemotingClient::connect(self.broker.local_addr())
            .await
            .expect("connect")
    }

    pub async fn stop(self) {
        self.broker.shutdown().await;
    }
}

/// What a half-message send answered.
#[derive(Debug, Clone)]
pub struct Sent {
    pub key: String,
    pub queue_id: i32,
    pub queue_offset: i64,
    pub commit_log_offset: i64,
    pub msg_id: String,
    pub transaction_id: String,
}

pub fn send_request(
    group: &str,
    topic: &str,
    queue_id: i32,
    sys_flag: i32,
    props: &Properties,
    body: &[u8],
) -> RemotingCommand {
    let header = SendMessageRequestHeader {
        producer_group: group.into(),
        topic: topic.into(),
        default_topic: "TBW102".into(),
        default_topic_queue_nums: QUEUES,
        queue_id,
        sys_flag,
        born_timestamp: 1_700_000_000_000,
        properties: Some(props.encode()),
        ..SendMessageRequestHeader::default()
    };
    RemotingCommand::request(
        request_code::SEND_MESSAGE_V2,
        header.to_ext(SendHeaderForm::V2),
    )
    .with_body(body.to_vec())
}

pub fn half_props(group: &str, key: &str) -> Properties {
    let mut p = Properties::new();
    p.insert("KEYS", key);
    p.insert("TAGS", "TagT");
    p.insert("TRAN_MSG", "true");
    p.insert("PGROUP", group);
    p.insert("UNIQ_KEY", format!("UNIQ-{key}"));
    p
}

/// Sends a half message the way a RocketMQ producer does and checks the answer's shape.
pub async fn send_half_with(
    client: &RemotingClient,
    group: &str,
    key: &str,
    props: Properties,
) -> Sent {
    let req = send_request(
        group,
        TOPIC,
        1,
        sysflag::TRANSACTION_PREPARED,
        &props,
        format!("body-{key}").as_bytes(),
    );
    let resp = client.invoke(req, RPC).await.expect("send answered");
    assert_eq!(resp.code, 0, "half send refused: {:?}", resp.remark);
    let get = |k: &str| {
        resp.ext_fields
            .get_str(k)
            .unwrap_or_else(|| panic!("no {k}"))
            .to_owned()
    };
    let msg_id = get("msgId");
    assert_eq!(msg_id.len(), 32, "an IPv4 offset message id");
    let commit_log_offset = i64::from_str_radix(&msg_id[16..32], 16).unwrap();
    Sent {
        key: key.to_owned(),
        queue_id: get("queueId").parse().unwrap(),
        queue_offset: get("queueOffset").parse().unwrap(),
        commit_log_offset,
        msg_id,
        transaction_id: get("transactionId"),
    }
}

pub async fn send_half(client: &RemotingClient, key: &str) -> Sent {
    send_half_with(client, GROUP, key, half_props(GROUP, key)).await
}

/// A plain message (registers the connection as a producer of `group`).
pub async fn send_plain(client: &RemotingClient, group: &str, topic: &str, key: &str) {
    let mut p = Properties::new();
    p.insert("KEYS", key);
    let resp = client
        .invoke(send_request(group, topic, 0, 0, &p, b"plain"), RPC)
        .await
        .unwrap();
    assert_eq!(resp.code, 0, "{:?}", resp.remark);
}

/// Registers the connection as a producer of `group` with a heartbeat.
pub async fn heartbeat(client: &RemotingClient, group: &str, client_id: &str) {
    let hb = HeartbeatData {
        client_id: client_id.into(),
        producer_data_set: vec![ProducerData {
            group_name: group.into(),
        }],
        ..HeartbeatData::default()
    };
    let req = RemotingCommand::request(request_code::HEART_BEAT, Default::default())
        .with_body(encode_json(&hb));
    let resp = client.invoke(req, RPC).await.unwrap();
    assert_eq!(resp.code, 0);
}

pub const COMMIT: i32 = 8;
pub const ROLLBACK: i32 = 12;
pub const UNKNOWN: i32 = 0;

pub fn end_request(
    group: &str,
    queue_offset: i64,
    commit_log_offset: i64,
    uniq: &str,
    what: i32,
    from_check: bool,
) -> RemotingCommand {
    let h = EndTransactionRequestHeader {
        topic: None,
        producer_group: group.into(),
        tran_state_table_offset: queue_offset,
        commit_log_offset,
        commit_or_rollback: what,
        from_transaction_check: Some(from_check),
        msg_id: uniq.into(),
        transaction_id: Some(uniq.into()),
        broker_name: None,
    };
    RemotingCommand::request(request_code::END_TRANSACTION, h.to_ext())
}

/// END_TRANSACTION invoked two-way, so the test sees the answer.
pub async fn end(client: &RemotingClient, s: &Sent, what: i32) -> RemotingCommand {
    client
        .invoke(
            end_request(
                GROUP,
                s.queue_offset,
                s.commit_log_offset,
                &s.transaction_id,
                what,
                false,
            ),
            RPC,
        )
        .await
        .expect("END_TRANSACTION answered")
}

/// Answers a check the way a producer does (echoing the check's offsets).
pub async fn answer_check(
    client: &RemotingClient,
    group: &str,
    check: &RemotingCommand,
    what: i32,
) -> RemotingCommand {
    let h = CheckTransactionStateRequestHeader::from_ext(&check.ext_fields).unwrap();
    let uniq = h.transaction_id.unwrap();
    client
        .invoke(
            end_request(
                group,
                h.tran_state_table_offset,
                h.commit_log_offset,
                &uniq,
                what,
                true,
            ),
            RPC,
        )
        .await
        .expect("answer answered")
}

/// Waits (bounded) for the next CHECK_TRANSACTION_STATE.
pub async fn next_check(
    rx: &mut mpsc::Receiver<RemotingCommand>,
    within: Duration,
) -> Option<RemotingCommand> {
    match tokio::time::timeout(within, rx.recv()).await {
        Ok(Some(cmd)) => {
            assert_eq!(cmd.code, request_code::CHECK_TRANSACTION_STATE);
            Some(cmd)
        }
        _ => None,
    }
}

/// One consumed message.
#[derive(Debug, Clone)]
pub struct Msg {
    pub queue_id: i32,
    pub queue_offset: i64,
    pub sys_flag: i32,
    pub prepared_offset: i64,
    pub body: Vec<u8>,
    pub topic: String,
    pub props: Properties,
}

impl Msg {
    pub fn key(&self) -> String {
        self.props.get("KEYS").unwrap_or("").to_owned()
    }
}

/// Waits until everything stored is dispatched to consume queues (what a consumer can see).
pub async fn settle(b: &TestBroker) {
    let store = b.broker.store();
    let done = tokio::task::spawn_blocking(move || store.wait_dispatched(Duration::from_secs(10)))
        .await
        .unwrap();
    assert!(done, "the store dispatches within 10 s");
}

/// Everything a consumer can pull from `topic` now, over the wire, every queue from offset 0
/// (after the store dispatched what it acknowledged).
pub async fn consume_all(b: &TestBroker, client: &RemotingClient, topic: &str) -> Vec<Msg> {
    settle(b).await;
    let mut out = Vec::new();
    for queue_id in 0..QUEUES {
        let mut offset = 0i64;
        for _ in 0..1000 {
            let header = PullMessageRequestHeader {
                consumer_group: "txn_test_consumer".into(),
                topic: topic.into(),
                queue_id,
                queue_offset: offset,
                max_msg_nums: 32,
                sys_flag: pull_sysflag::SUBSCRIPTION,
                subscription: Some("*".into()),
                ..PullMessageRequestHeader::default()
            };
            let resp = client
                .invoke(
                    RemotingCommand::request(request_code::PULL_MESSAGE, header.to_ext()),
                    RPC,
                )
                .await
                .unwrap();
            if resp.code != 0 {
                assert!(
                    matches!(resp.code, 19 | 20 | 21 | 17 | 29),
                    "pull failed: {} {:?}",
                    resp.code,
                    resp.remark
                );
                break;
            }
            let mut body = &resp.body[..];
            while !body.is_empty() {
                let v = RecordView::parse(body, usize::MAX).unwrap();
                out.push(Msg {
                    queue_id: v.header.queue_id,
                    queue_offset: v.header.queue_offset,
                    sys_flag: v.header.sys_flag,
                    prepared_offset: v.header.prepared_transaction_offset,
                    body: v.body.to_vec(),
                    topic: v.topic.to_owned(),
                    props: Properties::decode(v.properties),
                });
                body = &body[v.total_size..];
            }
            offset = resp
                .ext_fields
                .get_str("nextBeginOffset")
                .unwrap()
                .parse()
                .unwrap();
        }
    }
    out
}

/// Every message stored in a system topic, read from the store: consumers may not pull system
/// topics (the broker answers NO_PERMISSION), tools read them this way.
pub async fn read_stored(b: &TestBroker, topic: &str) -> Vec<Msg> {
    settle(b).await;
    let store = b.broker.store();
    let mut out = Vec::new();
    let queues: Vec<i32> = store
        .queues()
        .into_iter()
        .filter(|(t, _)| t == topic)
        .map(|(_, q)| q)
        .collect();
    for queue_id in queues {
        read_queue(&store, topic, queue_id, &mut out);
    }
    out
}

fn read_queue(store: &sluice_store::Store, topic: &str, queue_id: i32, out: &mut Vec<Msg>) {
    let mut offset = store.min_offset(topic, queue_id);
    for _ in 0..1000 {
        let r = store.get_messages(topic, queue_id, offset, 32, 1 << 20, None);
        for m in &r.messages {
            let v = RecordView::parse(&m.bytes, usize::MAX).unwrap();
            out.push(Msg {
                queue_id: v.header.queue_id,
                queue_offset: v.header.queue_offset,
                sys_flag: v.header.sys_flag,
                prepared_offset: v.header.prepared_transaction_offset,
                body: v.body.to_vec(),
                topic: v.topic.to_owned(),
                props: Properties::decode(v.properties),
            });
        }
        if r.messages.is_empty() || r.next_offset >= r.max_offset {
            break;
        }
        offset = r.next_offset;
    }
}

/// Keys consumable from the test topic, sorted.
pub async fn visible_keys(b: &TestBroker, client: &RemotingClient) -> Vec<String> {
    let mut keys: Vec<String> = consume_all(b, client, TOPIC)
        .await
        .iter()
        .map(Msg::key)
        .collect();
    keys.sort();
    keys
}

/// Polls `f` every 20 ms until it returns true; false after `within`.
/// Whether the transaction whose half message sits at queue offset `id` reaches `state` within
/// `within`.
pub async fn reaches_state(
    svc: &sluice_txn::TxnService,
    id: u64,
    state: sluice_txn::TxnState,
    within: Duration,
) -> bool {
    eventually_async(within, || async {
        svc.get(id)
            .await
            .ok()
            .flatten()
            .is_some_and(|v| v.state == state)
    })
    .await
}

/// [`eventually`] for a check that awaits.
pub async fn eventually_async<F: std::future::Future<Output = bool>>(
    within: Duration,
    mut f: impl FnMut() -> F,
) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if f().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn eventually(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if f() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
