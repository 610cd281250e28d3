//! Raw-remoting helpers for the transaction tests against the real `sluice` binary: half
//! sends, END_TRANSACTION, and pulling everything a consumer can see.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use sluice_protocol::message::record::sysflag;
use sluice_protocol::remoting::custom::{
    pull_sysflag, EndTransactionRequestHeader, PullMessageRequestHeader, SendHeaderForm,
    SendMessageRequestHeader,
};
use sluice_protocol::{request_code, response_code, Properties, RecordView, RemotingCommand};
use sluice_remoting::RemotingClient;

pub const RPC: Duration = Duration::from_secs(10);
pub const COMMIT: i32 = 8;
pub const ROLLBACK: i32 = 12;

/// Environment for short check timings.
pub fn fast_env(check_after_ms: u64) -> Vec<(String, String)> {
    vec![
        (
            "SLUICE_TXN_CHECK_AFTER_MS".into(),
            check_after_ms.to_string(),
        ),
        ("SLUICE_TXN_CHECK_INTERVAL_MS".into(), "300".into()),
        ("SLUICE_TXN_CHECKPOINT_INTERVAL_MS".into(), "100".into()),
    ]
}

/// A half message as the producer knows it after the send.
#[derive(Debug, Clone)]
pub struct Half {
    pub key: String,
    pub uniq: String,
    pub queue_offset: i64,
    pub commit_log_offset: i64,
}

pub fn half_request(
    group: &str,
    topic: &str,
    key: &str,
    queue_id: i32,
) -> (RemotingCommand, String) {
    let uniq = format!("UNIQ-{key}");
    let mut p = Properties::new();
    p.insert("KEYS", key);
    p.insert("TRAN_MSG", "true");
    p.insert("PGROUP", group);
    p.insert("UNIQ_KEY", uniq.clone());
    let header = SendMessageRequestHeader {
        producer_group: group.into(),
        topic: topic.into(),
        default_topic: "TBW102".into(),
        default_topic_queue_nums: 4,
        queue_id,
        sys_flag: sysflag::TRANSACTION_PREPARED,
        born_timestamp: 1_700_000_000_000,
        properties: Some(p.encode()),
        ..SendMessageRequestHeader::default()
    };
    let req = RemotingCommand::request(
        request_code::SEND_MESSAGE_V2,
        header.to_ext(SendHeaderForm::V2),
    )
    .with_body(format!("body-{key}").into_bytes());
    (req, uniq)
}

/// Reads a half-send answer; `None` unless SUCCESS.
pub fn half_from(resp: &RemotingCommand, key: &str, uniq: String) -> Option<Half> {
    if resp.code != response_code::SUCCESS {
        return None;
    }
    let msg_id = resp.ext_fields.get_str("msgId")?;
    Some(Half {
        key: key.to_owned(),
        uniq,
        queue_offset: resp.ext_fields.get_str("queueOffset")?.parse().ok()?,
        commit_log_offset: i64::from_str_radix(msg_id.get(16..32)?, 16).ok()?,
    })
}

pub async fn send_half(client: &RemotingClient, group: &str, topic: &str, key: &str) -> Half {
    let (req, uniq) = half_request(group, topic, key, 0);
    let resp = client.invoke(req, RPC).await.expect("half send answered");
    half_from(&resp, key, uniq)
        .unwrap_or_else(|| panic!("half send refused: {} {:?}", resp.code, resp.remark))
}

pub fn end_request(group: &str, h: &Half, what: i32) -> RemotingCommand {
    let header = EndTransactionRequestHeader {
        producer_group: group.into(),
        tran_state_table_offset: h.queue_offset,
        commit_log_offset: h.commit_log_offset,
        commit_or_rollback: what,
        from_transaction_check: Some(false),
        msg_id: h.uniq.clone(),
        transaction_id: Some(h.uniq.clone()),
        ..Default::default()
    };
    RemotingCommand::request(request_code::END_TRANSACTION, header.to_ext())
}

/// END_TRANSACTION two-way; returns the response code.
pub async fn end(client: &RemotingClient, group: &str, h: &Half, what: i32) -> i32 {
    client
        .invoke(end_request(group, h, what), RPC)
        .await
        .expect("END answered")
        .code
}

/// One pulled record.
#[derive(Debug, Clone)]
pub struct Pulled {
    pub key: String,
    pub body: Vec<u8>,
    pub sys_flag: i32,
    pub prepared_offset: i64,
    pub props: Properties,
}

/// Every record of `topic` a consumer can pull now (queues 0..queues, from offset 0).
pub async fn pull_all(broker: SocketAddr, topic: &str, queues: i32) -> Vec<Pulled> {
    try_pull_all(broker, topic, queues)
        .await
        .expect("pulls answered")
}

/// As [`pull_all`]; `None` when the broker is unreachable (it may have just been killed) or
/// refuses a pull for another reason than the queue's end.
pub async fn try_pull_all(broker: SocketAddr, topic: &str, queues: i32) -> Option<Vec<Pulled>> {
    let client = RemotingClient::connect(broker).await.ok()?;
    let mut out = Vec::new();
    for queue_id in 0..queues {
        let mut offset = 0i64;
        for _ in 0..100_000 {
            let h = PullMessageRequestHeader {
                consumer_group: "txn_checker".into(),
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
                    RemotingCommand::request(request_code::PULL_MESSAGE, h.to_ext()),
                    RPC,
                )
                .await
                .ok()?;
            match resp.code {
                response_code::SUCCESS => {}
                // The end of the queue, or a topic nothing was ever stored in.
                response_code::PULL_NOT_FOUND | response_code::TOPIC_NOT_EXIST => break,
                // Any other refusal is no answer, not an empty queue: "nothing visible" must
                // not pass because the pulls failed.
                other => {
                    eprintln!(
                        "pull of {topic}/{queue_id} at {offset} refused: {other} {:?}",
                        resp.remark
                    );
                    return None;
                }
            }
            let mut body = &resp.body[..];
            while !body.is_empty() {
                let v = RecordView::parse(body, usize::MAX).expect("pulled record parses");
                let props = Properties::decode(v.properties);
                out.push(Pulled {
                    key: props.get("KEYS").unwrap_or("").to_owned(),
                    body: v.body.to_vec(),
                    sys_flag: v.header.sys_flag,
                    prepared_offset: v.header.prepared_transaction_offset,
                    props,
                });
                body = &body[v.total_size..];
            }
            offset = resp.ext_fields.get_str("nextBeginOffset")?.parse().ok()?;
        }
    }
    Some(out)
}

/// Keys visible in `topic`, sorted, duplicates kept (so a test can see them).
pub async fn visible_keys(broker: SocketAddr, topic: &str, queues: i32) -> Vec<String> {
    let mut keys: Vec<String> = pull_all(broker, topic, queues)
        .await
        .into_iter()
        .map(|p| p.key)
        .collect();
    keys.sort();
    keys
}

/// Polls (bounded) until `want` keys are visible in `topic`, then returns what is visible
/// (with duplicates, sorted). Visibility follows the store's dispatch by a few milliseconds.
pub async fn wait_visible(
    broker: SocketAddr,
    topic: &str,
    queues: i32,
    want: &[String],
) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let got = visible_keys(broker, topic, queues).await;
        let all = want.iter().all(|k| got.contains(k));
        if all || tokio::time::Instant::now() >= deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
