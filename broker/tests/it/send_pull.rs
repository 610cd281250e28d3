//! Produce with SEND_MESSAGE_V2 / SEND_BATCH_MESSAGE and consume with PULL_MESSAGE over TCP.

use crate::common;

use common::*;
use sluice_protocol::message::decode_offset_msg_id;
use sluice_protocol::remoting::custom::{
    QueryMessageRequestHeader, SendHeaderForm, SendMessageRequestHeader,
    ViewMessageByIdRequestHeader,
};
use sluice_protocol::{encode_batch, request_code, BatchEntry, RemotingCommand};

const TOPIC: &str = "SendPullTopic";
const N: usize = 40;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_tagged_messages_sent_with_v2_are_pulled_back_in_order() {
    let cluster = start_cluster().await;
    let client = cluster.client().await;

    let mut offsets = Vec::new();
    for i in 0..N {
        let tag = if i % 2 == 0 { "A" } else { "B" };
        let p = props(Some(tag), Some(&format!("key{i} shared")));
        let resp = send_ok(&client, TOPIC, 1, format!("body-{i}").as_bytes(), &p).await;
        for field in [
            "msgId",
            "queueId",
            "queueOffset",
            "transactionId",
            "MSG_REGION",
            "TRACE_ON",
        ] {
            assert!(
                resp.ext_fields.get_str(field).is_some(),
                "send response lacks {field}"
            );
        }
        assert_eq!(resp.ext_fields.get_str("queueId"), Some("1"));
        let msg_id = resp.ext_fields.get_str("msgId").unwrap();
        let (host, _) = decode_offset_msg_id(msg_id).expect("offset msg id");
        assert_eq!(host, cluster.broker.advertised_addr());
        offsets.push(ext_i64(&resp, "queueOffset"));
    }
    assert_eq!(
        offsets,
        (0..N as i64).collect::<Vec<_>>(),
        "queue offsets are contiguous"
    );

    wait_dispatched(&cluster.broker).await;
    let msgs = pull_all(&client, "g1", TOPIC, 1, 0, Some("*")).await;
    assert_eq!(msgs.len(), N);
    for (i, m) in msgs.iter().enumerate() {
        assert_eq!(m.queue_offset, i as i64);
        assert_eq!(m.body, format!("body-{i}").into_bytes());
        assert_eq!(m.topic, TOPIC);
        assert_eq!(m.props.get("KEYS"), Some(format!("key{i} shared").as_str()));
        assert_eq!(m.props.get("CLUSTER"), Some("DefaultCluster"));
        assert!(m.props.get("UNIQ_KEY").is_some_and(|u| u.len() == 32));
    }

    let max = client
        .invoke(
            RemotingCommand::request(
                request_code::GET_MAX_OFFSET,
                ext(&[("topic", TOPIC), ("queueId", "1")]),
            ),
            RPC,
        )
        .await
        .unwrap();
    assert_eq!((max.code, ext_i64(&max, "offset")), (0, N as i64));
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_are_found_by_key_and_by_offset_message_id() {
    let cluster = start_cluster().await;
    let client = cluster.client().await;
    let resp = send_ok(&client, TOPIC, 0, b"findme", &props(None, Some("needle"))).await;
    wait_dispatched(&cluster.broker).await;

    let q = QueryMessageRequestHeader {
        topic: TOPIC.into(),
        key: "needle".into(),
        max_num: 32,
        begin_timestamp: 0,
        end_timestamp: i64::MAX,
        unique_key_query: None,
    };
    let found = client
        .invoke(
            RemotingCommand::request(request_code::QUERY_MESSAGE, q.to_ext()),
            RPC,
        )
        .await
        .unwrap();
    assert_eq!(found.code, 0, "{:?}", found.remark);
    assert!(found
        .ext_fields
        .get_str("indexLastUpdatePhyoffset")
        .is_some());
    assert_eq!(decode_records(&found.body)[0].body, b"findme");

    let q = QueryMessageRequestHeader {
        key: "absent".into(),
        ..q
    };
    let none = client
        .invoke(
            RemotingCommand::request(request_code::QUERY_MESSAGE, q.to_ext()),
            RPC,
        )
        .await
        .unwrap();
    assert_eq!(none.code, 22);

    let (_, phys) = decode_offset_msg_id(resp.ext_fields.get_str("msgId").unwrap()).unwrap();
    let view = ViewMessageByIdRequestHeader {
        offset: phys as i64,
        topic: None,
    };
    let viewed = client
        .invoke(
            RemotingCommand::request(request_code::VIEW_MESSAGE_BY_ID, view.to_ext()),
            RPC,
        )
        .await
        .unwrap();
    assert_eq!(viewed.code, 0);
    assert_eq!(decode_records(&viewed.body)[0].body, b"findme");
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_stored_as_one_record_per_message_with_the_first_offset_answered() {
    let cluster = start_cluster().await;
    let client = cluster.client().await;
    send_ok(&client, "BatchTopic", 0, b"single", &props(None, None)).await;

    let bodies: Vec<Vec<u8>> = (0..3).map(|i| format!("batch-{i}").into_bytes()).collect();
    let entries: Vec<(Vec<u8>, String)> = (0..3)
        .map(|i| {
            let p = props(Some("T"), Some(&format!("b{i}"))).encode();
            (bodies[i].clone(), p)
        })
        .collect();
    let req = batch_request(&entries);
    let resp = client.invoke(req, RPC).await.unwrap();
    assert_eq!(resp.code, 0, "{:?}", resp.remark);
    assert_eq!(ext_i64(&resp, "queueOffset"), 1);
    assert_eq!(
        resp.ext_fields.get_str("msgId").unwrap().split(',').count(),
        3
    );

    wait_dispatched(&cluster.broker).await;
    let msgs = pull_all(&client, "g", "BatchTopic", 0, 0, Some("*")).await;
    let got: Vec<(i64, Vec<u8>)> = msgs
        .iter()
        .map(|m| (m.queue_offset, m.body.clone()))
        .collect();
    assert_eq!(got[0], (0, b"single".to_vec()));
    for i in 0..3 {
        assert_eq!(got[i + 1], (i as i64 + 1, bodies[i].clone()));
        assert_eq!(
            msgs[i + 1].props.get("KEYS"),
            Some(format!("b{i}").as_str())
        );
    }
    cluster.stop().await;
}

/// A SEND_BATCH_MESSAGE of `entries` (body, properties) to `BatchTopic`/0.
fn batch_request(entries: &[(Vec<u8>, String)]) -> RemotingCommand {
    let entries: Vec<BatchEntry<'_>> = entries
        .iter()
        .map(|(body, props)| BatchEntry {
            flag: 0,
            body,
            properties: props.as_bytes(),
        })
        .collect();
    let mut body = Vec::new();
    encode_batch(&entries, &mut body).unwrap();
    let header = SendMessageRequestHeader {
        producer_group: "pg".into(),
        topic: "BatchTopic".into(),
        default_topic: "TBW102".into(),
        default_topic_queue_nums: 4,
        queue_id: 0,
        born_timestamp: 1,
        batch: Some(true),
        ..SendMessageRequestHeader::default()
    };
    RemotingCommand::request(
        request_code::SEND_BATCH_MESSAGE,
        header.to_ext(SendHeaderForm::V2),
    )
    .with_body(body)
}

/// Apache RocketMQ bounds a batch by its size only: a `ListSplitter`-style batch of 10 000
/// small messages was refused here (at most 4 096). The count is bounded by the body cap
/// now, and what the messages' properties cost once decoded by their number.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_thousands_of_small_messages_is_stored_and_one_of_countless_properties_refused()
{
    let cluster = start_cluster().await;
    let client = cluster.client().await;
    let many: Vec<(Vec<u8>, String)> = (0..10_000)
        .map(|i| {
            (
                format!("m{i:05}").into_bytes(),
                props(None, Some(&format!("k{i}"))).encode(),
            )
        })
        .collect();
    let resp = client.invoke(batch_request(&many), RPC).await.unwrap();
    assert_eq!(resp.code, 0, "{:?}", resp.remark);
    wait_dispatched(&cluster.broker).await;
    assert_eq!(cluster.broker.store().max_offset("BatchTopic", 0), 10_000);

    // 300 000 tiny properties over 3 000 messages: refused, the bound named.
    let tiny: String = (0..100).map(|i| format!("p{i}\u{1}v\u{2}")).collect();
    let crowded: Vec<(Vec<u8>, String)> =
        (0..3_000).map(|_| (b"x".to_vec(), tiny.clone())).collect();
    let resp = client.invoke(batch_request(&crowded), RPC).await.unwrap();
    assert_eq!(resp.code, 13, "MESSAGE_ILLEGAL: {:?}", resp.remark);
    assert!(
        resp.remark
            .as_deref()
            .unwrap_or("")
            .contains("properties, more than 262144"),
        "{:?}",
        resp.remark
    );
    assert_eq!(cluster.broker.store().max_offset("BatchTopic", 0), 10_000);
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_subscription_header_filters_by_tag_hash() {
    let cluster = start_cluster().await;
    let client = cluster.client().await;
    let tags = ["TagA", "TagB", "TagC"];
    for i in 0..30 {
        let tag = tags[i % 3];
        send_ok(
            &client,
            "FilterTopic",
            2,
            tag.as_bytes(),
            &props(Some(tag), None),
        )
        .await;
    }
    wait_dispatched(&cluster.broker).await;

    let msgs = pull_all(&client, "fg", "FilterTopic", 2, 0, Some("TagA || TagC")).await;
    assert_eq!(msgs.len(), 20);
    assert!(msgs.iter().all(|m| m.body == b"TagA" || m.body == b"TagC"));
    assert!(msgs.iter().all(|m| m.props.get("TAGS") != Some("TagB")));
    let offsets: Vec<i64> = msgs.iter().map(|m| m.queue_offset).collect();
    assert!(offsets.windows(2).all(|w| w[0] < w[1]));

    let only_b = pull_all(&client, "fg", "FilterTopic", 2, 0, Some("TagB")).await;
    assert_eq!(only_b.len(), 10);
    let none = pull_all(&client, "fg", "FilterTopic", 2, 0, Some("Nope")).await;
    assert!(none.is_empty());
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_style_v1_sends_and_negative_queue_ids_are_accepted() {
    let cluster = start_cluster().await;
    let client = cluster.client().await;
    let header = SendMessageRequestHeader {
        producer_group: "go_pg".into(),
        topic: "GoTopic".into(),
        default_topic: "TBW102".into(),
        default_topic_queue_nums: 4,
        queue_id: -1,
        born_timestamp: 1,
        properties: Some(props(Some("go"), None).encode()),
        ..SendMessageRequestHeader::default()
    };
    let mut picked = Vec::new();
    for _ in 0..4 {
        let req = RemotingCommand::request(
            request_code::SEND_MESSAGE,
            header.to_ext(SendHeaderForm::V1),
        )
        .with_body(&b"from go"[..]);
        let resp = client.invoke(req, RPC).await.unwrap();
        assert_eq!(resp.code, 0, "{:?}", resp.remark);
        picked.push(ext_i64(&resp, "queueId"));
    }
    assert!(
        picked.iter().all(|q| (0..4).contains(q)),
        "picked {picked:?}"
    );
    cluster.stop().await;
}

/// A send to a queue the topic does not have is answered SYSTEM_ERROR, as 4.x brokers do:
/// 4.x producers retry that code on another queue, while INVALID_PARAMETER (5.x's answer)
/// reaches the application at once, e.g. for a route cached before the topic shrank.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_to_a_queue_the_topic_lacks_is_refused_with_a_code_4x_producers_retry() {
    let cluster = start_cluster().await;
    let client = cluster.client().await;
    let header = |queue_id| SendMessageRequestHeader {
        producer_group: "pg".into(),
        topic: "Shrunk".into(),
        default_topic: "TBW102".into(),
        default_topic_queue_nums: 4,
        queue_id,
        born_timestamp: 1,
        properties: Some(props(None, None).encode()),
        ..SendMessageRequestHeader::default()
    };
    let send = |queue_id| {
        RemotingCommand::request(
            request_code::SEND_MESSAGE_V2,
            header(queue_id).to_ext(SendHeaderForm::V2),
        )
        .with_body(&b"m"[..])
    };
    let created = client.invoke(send(3), RPC).await.unwrap();
    assert_eq!(created.code, 0, "{:?}", created.remark);
    let refused = client.invoke(send(6), RPC).await.unwrap();
    assert_eq!(
        refused.code,
        sluice_protocol::response_code::SYSTEM_ERROR,
        "{:?}",
        refused.remark
    );
    assert!(refused
        .remark
        .unwrap_or_default()
        .contains("queueId[6] is illegal"));
    cluster.stop().await;
}

#[tokio::test]
async fn half_timer_and_op_topics_cannot_be_pulled() {
    let cluster = start_cluster().await;
    let client = cluster.client().await;
    for topic in [
        "RMQ_SYS_TRANS_HALF_TOPIC",
        "RMQ_SYS_TRANS_OP_HALF_TOPIC",
        "SCHEDULE_TOPIC_XXXX",
        "TRANS_CHECK_MAX_TIME_TOPIC",
        "SLUICE_SYS_TIMER",
    ] {
        let resp = client
            .invoke(pull_request("snoop", topic, 0, 0, 0, Some("*")), RPC)
            .await
            .unwrap();
        assert_eq!(resp.code, 16, "{topic}: NO_PERMISSION");
        assert!(
            resp.ext_fields.get_str("nextBeginOffset").is_some(),
            "{topic}: required fields present"
        );
    }
    cluster.stop().await;
}

/// A consumer holding an offset past the end of a queue that starts at 0 (the broker's data
/// was replaced) is moved back to 0, as RocketMQ 4.x does, not to the end: the messages in
/// the queue now are delivered, not skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_far_past_the_end_of_a_queue_starting_at_zero_moves_back_to_zero() {
    let cluster = start_cluster().await;
    let client = cluster.client().await;
    for i in 0..5 {
        send_ok(
            &client,
            "Reset",
            0,
            format!("m{i}").as_bytes(),
            &props(None, None),
        )
        .await;
    }
    wait_dispatched(&cluster.broker).await;
    let resp = client
        .invoke(pull_request("rg", "Reset", 0, 1000, 0, Some("*")), RPC)
        .await
        .expect("pull answered");
    assert_eq!(resp.code, 21, "PULL_OFFSET_MOVED: {:?}", resp.remark);
    assert_eq!(ext_i64(&resp, "nextBeginOffset"), 0);
    let msgs = pull_all(&client, "rg", "Reset", 0, 0, Some("*")).await;
    assert_eq!(msgs.len(), 5, "everything in the queue is delivered");
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn view_by_id_with_offsets_that_start_no_record_is_refused_without_recording_damage() {
    let cluster = start_cluster().await;
    let client = cluster.client().await;
    for i in 0..3 {
        send_ok(
            &client,
            "ViewProbe",
            0,
            format!("m{i}").as_bytes(),
            &props(None, None),
        )
        .await;
    }
    wait_dispatched(&cluster.broker).await;
    // A client walking offsets 1, 2, 3, ... lands inside records.
    for offset in 1..64 {
        let view = ViewMessageByIdRequestHeader {
            offset,
            topic: None,
        };
        let resp = client
            .invoke(
                RemotingCommand::request(request_code::VIEW_MESSAGE_BY_ID, view.to_ext()),
                RPC,
            )
            .await
            .unwrap();
        assert_eq!(resp.code, 1, "offset {offset}: {:?}", resp.remark);
    }
    assert!(
        cluster.broker.store().health().damage.is_empty(),
        "{:?}",
        cluster.broker.store().health().damage
    );
    cluster.stop().await;
}
