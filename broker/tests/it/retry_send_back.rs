//! Consumer retries through CONSUMER_SEND_MSG_BACK and retry-topic sends: the retry copy's
//! content and counts, the dead-letter rule (maximum from the header, the message and the
//! group; delayLevel -1), bogus offsets, back-off policies and the Rust send-back API.
//! The broker runs without the schedule extension, so a retry copy's `DELAY` is stored as a
//! plain property and the copy is visible at once: these tests check what is stored.

use crate::common;

use std::time::Duration;

use common::*;
use sluice_broker::{Backoff, GroupRetryPolicy, RemotingClient, SendBack};
use sluice_protocol::message::record::RecordView;
use sluice_protocol::remoting::custom::{ConsumerSendMsgBackRequestHeader, SendHeaderForm};
use sluice_protocol::{request_code, Properties, RemotingCommand};

/// A pulled record with what the retry logic reads.
#[derive(Debug, Clone)]
struct Rec {
    phys: i64,
    reconsume: i32,
    body: Vec<u8>,
    props: Properties,
}

async fn pull_recs(client: &RemotingClient, topic: &str) -> Vec<Rec> {
    let mut out = Vec::new();
    let mut offset = 0;
    for _ in 0..100 {
        let resp = client
            .invoke(pull_request("reader", topic, 0, offset, 0, Some("*")), RPC)
            .await
            .expect("pull answered");
        if resp.code != 0 {
            return out;
        }
        let mut body = &resp.body[..];
        while !body.is_empty() {
            let v = RecordView::parse(body, usize::MAX).expect("record");
            out.push(Rec {
                phys: v.header.physical_offset,
                reconsume: v.header.reconsume_times,
                body: v.body.to_vec(),
                props: Properties::decode(v.properties),
            });
            body = &body[v.total_size..];
        }
        offset = ext_i64(&resp, "nextBeginOffset");
    }
    out
}

fn send_back_request(
    group: &str,
    rec: &Rec,
    origin_topic: &str,
    delay_level: i32,
    max: Option<i32>,
) -> RemotingCommand {
    let h = ConsumerSendMsgBackRequestHeader {
        offset: rec.phys,
        group: group.into(),
        delay_level,
        origin_msg_id: rec.props.get("UNIQ_KEY").map(str::to_owned),
        origin_topic: Some(origin_topic.into()),
        unit_mode: Some(false),
        max_reconsume_times: max,
    };
    RemotingCommand::request(request_code::CONSUMER_SEND_MSG_BACK, h.to_ext())
}

async fn send_back(
    client: &RemotingClient,
    group: &str,
    rec: &Rec,
    delay_level: i32,
    max: Option<i32>,
) -> i32 {
    client
        .invoke(
            send_back_request(group, rec, "Orders", delay_level, max),
            RPC,
        )
        .await
        .expect("send-back answered")
        .code
}

/// Sends one message to `Orders`/0 and returns it as pulled.
async fn produce_one(cluster: &Cluster, client: &RemotingClient, p: &Properties) -> Rec {
    let before = pull_recs(client, "Orders").await.len();
    send_ok(client, "Orders", 0, b"payload", p).await;
    wait_dispatched(&cluster.broker).await;
    let all = pull_recs(client, "Orders").await;
    assert_eq!(all.len(), before + 1);
    all.last().cloned().expect("one record")
}

#[tokio::test]
async fn send_back_builds_the_rocketmq_retry_copy_and_counts_up() {
    let cluster = start_cluster().await;
    let client = cluster.client().await;
    let orig = produce_one(&cluster, &client, &props(Some("tagA"), Some("k1 k2"))).await;
    assert_eq!(send_back(&client, "g1", &orig, 0, None).await, 0);
    wait_dispatched(&cluster.broker).await;
    let retries = pull_recs(&client, "%RETRY%g1").await;
    assert_eq!(retries.len(), 1);
    let r1 = &retries[0];
    assert_eq!(r1.reconsume, 1);
    assert_eq!(r1.body, b"payload");
    assert_eq!(r1.props.get("RETRY_TOPIC"), Some("Orders"));
    assert_eq!(r1.props.get("RECONSUME_TIME"), Some("1"));
    assert_eq!(
        r1.props.get("DELAY"),
        Some("3"),
        "level 3 + reconsumeTimes 0"
    );
    assert_eq!(r1.props.get("TAGS"), Some("tagA"));
    assert_eq!(r1.props.get("KEYS"), Some("k1 k2"));
    assert_eq!(r1.props.get("UNIQ_KEY"), orig.props.get("UNIQ_KEY"));
    let origin = r1
        .props
        .get("ORIGIN_MESSAGE_ID")
        .expect("origin id")
        .to_owned();

    // The retried message fails again: the client names the original topic, the record is
    // in the retry topic.
    assert_eq!(send_back(&client, "g1", r1, 0, None).await, 0);
    wait_dispatched(&cluster.broker).await;
    let retries = pull_recs(&client, "%RETRY%g1").await;
    assert_eq!(retries.len(), 2);
    let r2 = &retries[1];
    assert_eq!(r2.reconsume, 2);
    assert_eq!(r2.props.get("DELAY"), Some("4"));
    assert_eq!(r2.props.get("RETRY_TOPIC"), Some("Orders"));
    assert_eq!(r2.props.get("ORIGIN_MESSAGE_ID"), Some(origin.as_str()));
    let topics = cluster.broker.services();
    let retry_cfg = topics.topic("%RETRY%g1").expect("retry topic created");
    assert_eq!((retry_cfg.read_queue_nums, retry_cfg.perm), (1, 6));
    assert_eq!(cluster.broker.stats().retries, 2);
    cluster.stop().await;
}

/// A message delivered before its topic was deleted and failed after: a retry would bring it
/// back (to a topic created again, or through the group's retry subscription). The send-back
/// is answered success (the client moves on) and nothing is copied.
#[tokio::test]
async fn a_send_back_of_a_deleted_topics_message_is_not_retried() {
    let cluster = start_cluster().await;
    let client = cluster.client().await;
    let orig = produce_one(&cluster, &client, &props(None, None)).await;
    let services = cluster.broker.services();
    assert!(services.delete_topic("Orders").await.unwrap().is_some());
    assert_eq!(send_back(&client, "g1", &orig, 0, None).await, 0);
    wait_dispatched(&cluster.broker).await;
    assert_eq!(cluster.broker.stats().retries, 0);
    assert!(pull_recs(&client, "%RETRY%g1").await.is_empty());
    cluster.stop().await;
}

#[tokio::test]
async fn after_the_maximum_the_message_is_dead_lettered_at_once() {
    let cluster = start_cluster().await;
    let client = cluster.client().await;
    let mut cur = produce_one(&cluster, &client, &props(Some("t"), Some("order-7"))).await;
    // maxReconsumeTimes 2 (header): two retries, then the DLQ.
    for round in 0..3 {
        assert_eq!(send_back(&client, "g2", &cur, 0, Some(2)).await, 0);
        wait_dispatched(&cluster.broker).await;
        let retries = pull_recs(&client, "%RETRY%g2").await;
        if round < 2 {
            cur = retries.last().cloned().expect("retry copy");
        } else {
            assert_eq!(retries.len(), 2, "no third retry");
        }
    }
    let dlq = pull_recs(&client, "%DLQ%g2").await;
    assert_eq!(dlq.len(), 1);
    assert_eq!(dlq[0].reconsume, 3);
    assert_eq!(
        dlq[0].props.get("DELAY"),
        Some("-1"),
        "no back-off before the DLQ"
    );
    assert_eq!(dlq[0].props.get("RETRY_TOPIC"), Some("Orders"));
    let cfg = cluster
        .broker
        .services()
        .topic("%DLQ%g2")
        .expect("DLQ created");
    assert_eq!(cfg.perm, 6);
    let page = cluster
        .broker
        .dlq()
        .list(&sluice_broker::DlqQuery {
            group: "g2".into(),
            ..Default::default()
        })
        .expect("list");
    assert_eq!(page.messages.len(), 1);
    let m = &page.messages[0];
    assert_eq!(
        (m.delivery_count, m.original_topic.as_deref()),
        (3, Some("Orders"))
    );
    assert_eq!(m.keys, vec!["order-7".to_owned()]);
    let stats = cluster.broker.stats();
    assert_eq!((stats.retries, stats.dead_lettered), (2, 1));
    cluster.stop().await;
}

#[tokio::test]
async fn delay_level_minus_one_explicit_levels_and_per_message_maximum() {
    let cluster = start_cluster().await;
    let client = cluster.client().await;
    let a = produce_one(&cluster, &client, &props(None, None)).await;
    assert_eq!(send_back(&client, "g3", &a, -1, None).await, 0);
    let b = produce_one(&cluster, &client, &props(None, None)).await;
    assert_eq!(send_back(&client, "g3", &b, 5, None).await, 0);
    let mut p = props(None, None);
    p.insert("MAX_RECONSUME_TIMES", "0");
    let c = produce_one(&cluster, &client, &p).await;
    assert_eq!(send_back(&client, "g3", &c, 0, Some(16)).await, 0);
    wait_dispatched(&cluster.broker).await;
    let retries = pull_recs(&client, "%RETRY%g3").await;
    assert_eq!(
        retries.len(),
        1,
        "only the explicit-level message is retried"
    );
    assert_eq!(retries[0].props.get("DELAY"), Some("5"));
    let dlq = pull_recs(&client, "%DLQ%g3").await;
    let uniq: Vec<_> = dlq.iter().map(|r| r.props.get("UNIQ_KEY")).collect();
    assert_eq!(uniq, vec![a.props.get("UNIQ_KEY"), c.props.get("UNIQ_KEY")]);
    cluster.stop().await;
}

#[tokio::test]
async fn a_bogus_offset_is_refused_without_recording_damage() {
    let cluster = start_cluster().await;
    let client = cluster.client().await;
    let orig = produce_one(&cluster, &client, &props(None, None)).await;
    let mut bogus = orig.clone();
    bogus.phys += 7;
    assert_eq!(send_back(&client, "g4", &bogus, 0, None).await, 1);
    bogus.phys = 1 << 40;
    assert_eq!(send_back(&client, "g4", &bogus, 0, None).await, 1);
    let mut negative = orig.clone();
    negative.phys = -5;
    assert_eq!(send_back(&client, "g4", &negative, 0, None).await, 1);
    assert!(cluster.broker.store().health().damage.is_empty());
    assert!(pull_recs(&client, "%RETRY%g4").await.is_empty());
    cluster.stop().await;
}

/// A heartbeat subscribing `group` to `topic` (rocketmq-client-cpp's JSON).
fn subscribe(group: &str, topic: &str) -> RemotingCommand {
    let body = format!(
        r#"{{"clientID":"cpp@1","consumerDataSet":[{{"consumeFromWhere":0,"consumeType":1,"groupName":"{group}","messageModel":1,"subscriptionDataSet":[{{"subString":"*","subVersion":1,"topic":"{topic}","tagsSet":[],"codeSet":[]}}]}}],"producerDataSet":[]}}"#
    );
    RemotingCommand::request(request_code::HEART_BEAT, Default::default()).with_body(body)
}

/// CONSUMER_SEND_MSG_BACK as rocketmq-client-cpp before 2.1 sends it: no `originMsgId` (or an
/// empty one) and no `originTopic`.
fn bare_send_back(group: &str, rec: &Rec, id: Option<&str>) -> RemotingCommand {
    let mut req = send_back_request(group, rec, "Orders", 0, None);
    req.ext_fields.remove("originTopic");
    match id {
        None => {
            req.ext_fields.remove("originMsgId");
        }
        Some(id) => req.ext_fields.insert("originMsgId", id),
    }
    req
}

/// Without `originMsgId` the record at the offset is handed back only when it is a whole
/// record of a topic the group subscribes to (or of its retry topic). These requests used to be
/// refused outright, so such a client lost every failed message (1.x commits anyway) or
/// retried it locally for ever (2.0).
#[tokio::test]
async fn a_send_back_without_origin_msg_id_hands_back_only_a_subscribed_record() {
    let cluster = start_cluster().await;
    let client = cluster.client().await;
    let orig = produce_one(&cluster, &client, &props(None, None)).await;
    // No consumer of g5 subscribes to Orders yet: refused, nothing copied.
    for id in [None, Some("")] {
        let resp = client
            .invoke(bare_send_back("g5", &orig, id), RPC)
            .await
            .unwrap();
        assert_eq!(resp.code, 1, "{:?}", resp.remark);
        assert!(
            resp.remark.as_deref().unwrap_or("").contains("subscribes"),
            "{:?}",
            resp.remark
        );
    }
    let hb = client.invoke(subscribe("g5", "Orders"), RPC).await.unwrap();
    assert_eq!(hb.code, 0, "{:?}", hb.remark);
    // Subscribed, but the offset is inside the record: refused, and no damage recorded.
    let mut inside = orig.clone();
    inside.phys += 7;
    let resp = client
        .invoke(bare_send_back("g5", &inside, None), RPC)
        .await
        .unwrap();
    assert_eq!(resp.code, 1, "{:?}", resp.remark);
    // Another topic's record at a true offset: refused.
    send_ok(&client, "Secret", 0, b"not yours", &props(None, None)).await;
    wait_dispatched(&cluster.broker).await;
    let secret = pull_recs(&client, "Secret").await.remove(0);
    let resp = client
        .invoke(bare_send_back("g5", &secret, None), RPC)
        .await
        .unwrap();
    assert_eq!(resp.code, 1, "{:?}", resp.remark);
    wait_dispatched(&cluster.broker).await;
    assert!(pull_recs(&client, "%RETRY%g5").await.is_empty());
    // The subscribed record at its own offset is handed back, once per request.
    let resp = client
        .invoke(bare_send_back("g5", &orig, None), RPC)
        .await
        .unwrap();
    assert_eq!(resp.code, 0, "{:?}", resp.remark);
    wait_dispatched(&cluster.broker).await;
    let retries = pull_recs(&client, "%RETRY%g5").await;
    assert_eq!(retries.len(), 1);
    assert_eq!(retries[0].body, b"payload");
    assert_eq!(retries[0].props.get("RETRY_TOPIC"), Some("Orders"));
    // And its retry copy, named the same way, goes on to the next retry.
    let resp = client
        .invoke(bare_send_back("g5", &retries[0], None), RPC)
        .await
        .unwrap();
    assert_eq!(resp.code, 0, "{:?}", resp.remark);
    wait_dispatched(&cluster.broker).await;
    let retries = pull_recs(&client, "%RETRY%g5").await;
    assert_eq!(retries.len(), 2);
    assert_eq!(retries[1].reconsume, 2);
    assert!(pull_recs(&client, "%DLQ%g5").await.is_empty());
    assert!(cluster.broker.store().health().damage.is_empty());
    cluster.stop().await;
}

#[tokio::test]
async fn an_offset_message_id_hands_back_only_a_record_of_the_named_or_retry_topic() {
    let cluster = start_cluster().await;
    let client = cluster.client().await;
    let host = cluster.broker.store().store_host();
    let with_offset_id = |rec: &Rec, origin_topic: &str| {
        let mut req = send_back_request("g6", rec, origin_topic, 0, None);
        let id = sluice_protocol::message::offset_msg_id(host, rec.phys as u64);
        req.ext_fields.insert("originMsgId", &id);
        req
    };
    // Another topic's record, named by its offset id, with a topic the client may read.
    send_ok(&client, "Secret", 0, b"not yours", &props(None, None)).await;
    wait_dispatched(&cluster.broker).await;
    let secret = pull_recs(&client, "Secret").await.remove(0);
    let resp = client
        .invoke(with_offset_id(&secret, "Orders"), RPC)
        .await
        .unwrap();
    assert_eq!(resp.code, 1, "{:?}", resp.remark);
    // Nor when the client names a topic consumers never read.
    let resp = client
        .invoke(with_offset_id(&secret, "SCHEDULE_TOPIC_XXXX"), RPC)
        .await
        .unwrap();
    assert_eq!(resp.code, 1, "{:?}", resp.remark);
    wait_dispatched(&cluster.broker).await;
    assert!(pull_recs(&client, "%RETRY%g6").await.is_empty());

    // The message the client really consumed, named the same way, is handed back.
    let orig = produce_one(&cluster, &client, &props(None, None)).await;
    let resp = client
        .invoke(with_offset_id(&orig, "Orders"), RPC)
        .await
        .unwrap();
    assert_eq!(resp.code, 0, "{:?}", resp.remark);
    wait_dispatched(&cluster.broker).await;
    let retries = pull_recs(&client, "%RETRY%g6").await;
    assert_eq!(retries.len(), 1);
    assert_eq!(retries[0].body, b"payload");
    assert!(cluster.broker.store().health().damage.is_empty());
    cluster.stop().await;
}

fn retry_send(reconsume: i32, max: Option<i32>, p: &Properties) -> RemotingCommand {
    let header = sluice_protocol::remoting::custom::SendMessageRequestHeader {
        producer_group: "CLIENT_INNER_PRODUCER".into(),
        topic: "%RETRY%g5".into(),
        default_topic: "TBW102".into(),
        default_topic_queue_nums: 4,
        queue_id: 0,
        born_timestamp: 1_700_000_000_000,
        properties: Some(p.encode()),
        reconsume_times: Some(reconsume),
        max_reconsume_times: max,
        ..Default::default()
    };
    RemotingCommand::request(
        request_code::SEND_MESSAGE_V2,
        header.to_ext(SendHeaderForm::V2),
    )
    .with_body(b"fallback".to_vec())
}

#[tokio::test]
async fn a_retry_topic_send_past_the_maximum_goes_to_the_dlq_without_delay() {
    let cluster = start_cluster().await;
    let client = cluster.client().await;
    let mut p = props(Some("t"), None);
    p.insert("RETRY_TOPIC", "Orders");
    p.insert("DELAY", "5");
    let at_max = client
        .invoke(retry_send(2, Some(2), &p), RPC)
        .await
        .unwrap();
    assert_eq!(at_max.code, 0);
    let past = client
        .invoke(retry_send(3, Some(2), &p), RPC)
        .await
        .unwrap();
    assert_eq!(past.code, 0);
    wait_dispatched(&cluster.broker).await;
    let retries = pull_recs(&client, "%RETRY%g5").await;
    assert_eq!(retries.len(), 1, "reconsumeTimes == max stays a retry");
    let dlq = pull_recs(&client, "%DLQ%g5").await;
    assert_eq!(dlq.len(), 1);
    assert_eq!(dlq[0].props.get("DELAY"), Some("-1"));
    assert_eq!(dlq[0].reconsume, 3);
    cluster.stop().await;
}

#[tokio::test]
async fn group_back_off_policies_and_the_rust_send_back_api() {
    let cluster = start_cluster_with(|cfg| {
        cfg.retry.groups.insert(
            "ladder".into(),
            GroupRetryPolicy {
                backoff: Backoff::Ladder(vec![
                    Duration::from_millis(150),
                    Duration::from_millis(900),
                ]),
                max_reconsume_times: 1,
                client_max_wins: false,
            },
        );
        cfg.retry.groups.insert(
            "expo".into(),
            GroupRetryPolicy {
                backoff: Backoff::Exponential {
                    initial: Duration::from_millis(100),
                    multiplier: 3.0,
                    max: Duration::from_secs(1),
                },
                ..GroupRetryPolicy::default()
            },
        );
    })
    .await;
    let client = cluster.client().await;
    let services = cluster.broker.services();
    let orig = produce_one(&cluster, &client, &props(None, None)).await;
    let req = |group: &str, phys: i64, reason: Option<&str>| SendBack {
        group: group.into(),
        phys_offset: u64::try_from(phys).unwrap(),
        max_reconsume_times: Some(16),
        reason: reason.map(str::to_owned),
        ..SendBack::default()
    };
    let out = services
        .send_back(&req("ladder", orig.phys, Some("timeout")))
        .await
        .unwrap();
    assert!(!out.dead_letter);
    assert_eq!(out.delay, Some(sluice_broker::RetryDelay::Millis(150)));
    wait_dispatched(&cluster.broker).await;
    let r = pull_recs(&client, "%RETRY%ladder").await;
    assert_eq!(r[0].props.get("TIMER_DELAY_MS"), Some("150"));
    assert_eq!(r[0].props.get("DELAY"), None);
    assert_eq!(r[0].props.get("SLUICE_FAILURE_REASON"), Some("timeout"));
    // The group's maximum (1) wins over the client's 16: the next failure is final.
    let out = services
        .send_back(&req("ladder", r[0].phys, Some("bad data")))
        .await
        .unwrap();
    assert!(out.dead_letter && out.topic == "%DLQ%ladder");
    wait_dispatched(&cluster.broker).await;
    let page = cluster
        .broker
        .dlq()
        .list(&sluice_broker::DlqQuery {
            group: "ladder".into(),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(page.messages[0].failure_reason.as_deref(), Some("bad data"));

    let out = services
        .send_back(&req("expo", orig.phys, None))
        .await
        .unwrap();
    assert_eq!(out.delay, Some(sluice_broker::RetryDelay::Millis(100)));
    let bad = services
        .send_back(&req("bad group!", orig.phys, None))
        .await;
    assert!(bad.is_err());
    cluster.stop().await;
}
