//! Consumer groups: heartbeats (C++ style bodies), consumer lists, membership notifications,
//! the `%RETRY%` topic, registered-subscription filtering and queue locks.

use crate::common;

use std::time::Duration;

use common::*;
use sluice_broker::RemotingClient;
use sluice_protocol::remoting::body::{
    decode_json, ConsumerListBody, LockBatchResponseBody, TopicConfigSerializeWrapper,
};
use sluice_protocol::{request_code, RemotingCommand};

/// A heartbeat as the C++ client writes it: enum ordinals, string subVersion, `atoi` codes.
fn cpp_heartbeat(client_id: &str, group: &str, sub: &str) -> RemotingCommand {
    let body = format!(
        r#"{{"clientID":"{client_id}","consumerDataSet":[{{"consumeFromWhere":0,"consumeType":1,"groupName":"{group}","messageModel":1,"subscriptionDataSet":[{{"subString":"{sub}","subVersion":"1700000000000","topic":"GroupTopic","tagsSet":["{sub}"],"codeSet":[0]}}]}}],"producerDataSet":[]}}
"#
    );
    RemotingCommand::request(request_code::HEART_BEAT, Default::default()).with_body(body)
}

async fn consumer_list(client: &RemotingClient, group: &str) -> RemotingCommand {
    let req = RemotingCommand::request(
        request_code::GET_CONSUMER_LIST_BY_GROUP,
        ext(&[("consumerGroup", group)]),
    );
    client.invoke(req, RPC).await.unwrap()
}

fn ids(resp: &RemotingCommand) -> Vec<String> {
    assert_eq!(resp.code, 0, "{:?}", resp.remark);
    decode_json::<ConsumerListBody>(&resp.body)
        .unwrap()
        .consumer_id_list
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_list_tracks_heartbeats_and_disconnects_and_members_are_notified() {
    let cluster = start_cluster().await;
    let c1 = cluster.client().await;
    let mut c1_requests = c1.take_requests().expect("request receiver");
    let c2 = cluster.client().await;

    let resp = c1
        .invoke(cpp_heartbeat("10.0.0.1@1#DEFAULT", "cg", "*"), RPC)
        .await
        .unwrap();
    assert_eq!(resp.code, 0, "{:?}", resp.remark);
    let resp = c2
        .invoke(cpp_heartbeat("10.0.0.2@2#DEFAULT", "cg", "*"), RPC)
        .await
        .unwrap();
    assert_eq!(resp.code, 0);
    assert_eq!(
        ids(&consumer_list(&c1, "cg").await),
        ["10.0.0.1@1#DEFAULT", "10.0.0.2@2#DEFAULT"]
    );

    // The retry topic exists with one read-write queue.
    let all = c1
        .invoke(RemotingCommand::request(21, Default::default()), RPC)
        .await
        .unwrap();
    let topics: TopicConfigSerializeWrapper = decode_json(&all.body).unwrap();
    let retry = &topics.topic_config_table["%RETRY%cg"];
    assert_eq!(
        (retry.perm, retry.read_queue_nums, retry.write_queue_nums),
        (6, 1, 1)
    );

    // Drain the notifications c1 got so far (its own join, c2's join).
    while let Ok(Some(_)) =
        tokio::time::timeout(Duration::from_millis(200), c1_requests.recv()).await
    {}

    drop(c2);
    let mut shrunk = false;
    for _ in 0..500 {
        if ids(&consumer_list(&c1, "cg").await) == ["10.0.0.1@1#DEFAULT"] {
            shrunk = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(shrunk, "the list lost the disconnected consumer");
    let notify = tokio::time::timeout(Duration::from_secs(10), c1_requests.recv())
        .await
        .expect("notification in time")
        .expect("connection open");
    assert_eq!(notify.code, request_code::NOTIFY_CONSUMER_IDS_CHANGED);
    assert_eq!(notify.ext_fields.get_str("consumerGroup"), Some("cg"));

    let unknown = consumer_list(&c1, "nobody").await;
    assert_eq!(unknown.code, 1);
    assert!(unknown
        .remark
        .unwrap_or_default()
        .contains("no consumer for this group"));
    cluster.stop().await;
}

/// A heartbeat subscribing `topics` (Java-style body).
fn heartbeat_of(client_id: &str, group: &str, topics: &[&str]) -> RemotingCommand {
    let subs: Vec<String> = topics
        .iter()
        .map(|t| {
            format!(
                r#"{{"subString":"*","subVersion":1700000000000,"topic":"{t}","tagsSet":[],"codeSet":[]}}"#
            )
        })
        .collect();
    let body = format!(
        r#"{{"clientID":"{client_id}","consumerDataSet":[{{"consumeFromWhere":"CONSUME_FROM_LAST_OFFSET","consumeType":"CONSUME_PASSIVELY","groupName":"{group}","messageModel":"CLUSTERING","subscriptionDataSet":[{}],"unitMode":false}}],"producerDataSet":[]}}"#,
        subs.join(",")
    );
    RemotingCommand::request(request_code::HEART_BEAT, Default::default()).with_body(body)
}

/// Whether `requests` gets a NOTIFY_CONSUMER_IDS_CHANGED within `within`.
async fn notified(
    requests: &mut tokio::sync::mpsc::Receiver<RemotingCommand>,
    within: Duration,
) -> bool {
    matches!(
        tokio::time::timeout(within, requests.recv()).await,
        Ok(Some(r)) if r.code == request_code::NOTIFY_CONSUMER_IDS_CHANGED
    )
}

/// A member that adds or drops a topic changes what every member should own: RocketMQ's
/// broker notifies them, so they rebalance at once instead of at their next timer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_are_notified_when_the_groups_subscribed_topics_change() {
    let cluster = start_cluster().await;
    let c1 = cluster.client().await;
    let mut requests = c1.take_requests().expect("request receiver");
    let beat = |topics: &'static [&'static str]| heartbeat_of("10.0.0.1@1#DEFAULT", "sg", topics);
    assert_eq!(c1.invoke(beat(&["A"]), RPC).await.unwrap().code, 0);
    assert!(
        notified(&mut requests, Duration::from_secs(10)).await,
        "joined"
    );
    assert_eq!(c1.invoke(beat(&["A"]), RPC).await.unwrap().code, 0);
    assert!(
        !notified(&mut requests, Duration::from_millis(300)).await,
        "nothing changed"
    );
    assert_eq!(c1.invoke(beat(&["A", "B"]), RPC).await.unwrap().code, 0);
    assert!(
        notified(&mut requests, Duration::from_secs(10)).await,
        "B added"
    );
    assert_eq!(c1.invoke(beat(&["B"]), RPC).await.unwrap().code, 0);
    assert!(
        notified(&mut requests, Duration::from_secs(10)).await,
        "A dropped"
    );
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registered_subscription_filters_pulls_without_the_subscription_bit() {
    let cluster = start_cluster().await;
    let client = cluster.client().await;
    for tag in ["TagA", "TagB", "TagA"] {
        send_ok(
            &client,
            "GroupTopic",
            0,
            tag.as_bytes(),
            &props(Some(tag), None),
        )
        .await;
    }
    let pull_unregistered = client
        .invoke(pull_request("subg", "GroupTopic", 0, 0, 0, None), RPC)
        .await
        .unwrap();
    assert_eq!(
        pull_unregistered.code, 24,
        "SUBSCRIPTION_NOT_EXIST before the heartbeat"
    );
    assert!(pull_unregistered
        .ext_fields
        .get_str("nextBeginOffset")
        .is_some());

    let resp = client
        .invoke(cpp_heartbeat("10.0.0.9@9#DEFAULT", "subg", "TagA"), RPC)
        .await
        .unwrap();
    assert_eq!(resp.code, 0);
    wait_dispatched(&cluster.broker).await;
    let msgs = pull_all(&client, "subg", "GroupTopic", 0, 0, None).await;
    let bodies: Vec<&[u8]> = msgs.iter().map(|m| m.body.as_slice()).collect();
    assert_eq!(bodies, [b"TagA".as_slice(), b"TagA".as_slice()]);
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_locks_go_to_one_client_and_answer_numeric_queue_ids() {
    let cluster = start_cluster().await;
    let client = cluster.client().await;
    send_ok(&client, "T", 0, b"creates the topic", &props(None, None)).await;
    let lock_in = |group: &str, client_id: &str, topic: &str, queues: &[i32]| {
        let mqs: Vec<String> = queues
            .iter()
            .map(|q| format!(r#"{{"topic":"{topic}","brokerName":"broker-a","queueId":{q}}}"#))
            .collect();
        let body = format!(
            r#"{{"consumerGroup":"{group}","clientId":"{client_id}","mqSet":[{}]}}"#,
            mqs.join(",")
        );
        RemotingCommand::request(request_code::LOCK_BATCH_MQ, Default::default()).with_body(body)
    };
    let lock = |client_id: &str, queues: &[i32]| lock_in("og", client_id, "T", queues);
    // A group without members locks while the table is small (an orderly consumer renewing
    // right after a broker restart, before its next heartbeat).
    let memberless = client
        .invoke(lock_in("other", "c9", "T", &[3]), RPC)
        .await
        .unwrap();
    assert_eq!(memberless.code, 0);
    let held: LockBatchResponseBody = decode_json(&memberless.body).unwrap();
    assert_eq!(held.lock_ok_mq_set.len(), 1);
    // Queues this broker does not have are not locked; a group name a heartbeat would refuse
    // is refused.
    let invented = client
        .invoke(lock_in("og", "c1", "Invented", &[0]), RPC)
        .await
        .unwrap();
    let held: LockBatchResponseBody = decode_json(&invented.body).unwrap();
    assert!(held.lock_ok_mq_set.is_empty());
    let beyond = client.invoke(lock("c1", &[4096]), RPC).await.unwrap();
    let held: LockBatchResponseBody = decode_json(&beyond.body).unwrap();
    assert!(held.lock_ok_mq_set.is_empty());
    let long_group = "g".repeat(300);
    let bad = client
        .invoke(lock_in(&long_group, "c1", "T", &[0]), RPC)
        .await
        .unwrap();
    assert_eq!(bad.code, 29, "INVALID_PARAMETER: {:?}", bad.remark);
    let first = client.invoke(lock("c1", &[0, 1]), RPC).await.unwrap();
    assert_eq!(first.code, 0);
    let second = client.invoke(lock("c2", &[1, 2]), RPC).await.unwrap();
    let text = String::from_utf8(second.body.to_vec()).unwrap();
    assert!(text.contains(r#""queueId":2"#), "numeric queue id: {text}");
    let held: LockBatchResponseBody = decode_json(&second.body).unwrap();
    let held: Vec<i32> = held.lock_ok_mq_set.iter().map(|m| m.queue_id).collect();
    assert_eq!(held, [2]);

    let mut unlock = lock("c1", &[1]);
    unlock.code = request_code::UNLOCK_BATCH_MQ;
    assert_eq!(client.invoke(unlock, RPC).await.unwrap().code, 0);
    let third = client.invoke(lock("c2", &[1]), RPC).await.unwrap();
    let held: LockBatchResponseBody = decode_json(&third.body).unwrap();
    assert_eq!(held.lock_ok_mq_set.len(), 1);
    cluster.stop().await;
}

/// One 4 MiB request made the broker copy a long client id once per group or queue named, or
/// compare every scanned entry's tag against millions of tags: such requests are refused with
/// the bound named, and requests within the bounds work as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_that_would_multiply_their_size_are_refused_with_the_bound_named() {
    let cluster = start_cluster().await;
    let client = cluster.client().await;
    let long_id = "x".repeat(2000);
    let resp = client
        .invoke(cpp_heartbeat(&long_id, "cg", "*"), RPC)
        .await
        .unwrap();
    assert_eq!(resp.code, 29, "INVALID_PARAMETER: {:?}", resp.remark);
    assert!(resp.remark.unwrap().contains("at most 1024"));

    let groups: Vec<String> = (0..1100)
        .map(|i| format!(r#"{{"groupName":"p{i}"}}"#))
        .collect();
    let body = format!(
        r#"{{"clientID":"c@1","consumerDataSet":[],"producerDataSet":[{}]}}"#,
        groups.join(",")
    );
    let many =
        RemotingCommand::request(request_code::HEART_BEAT, Default::default()).with_body(body);
    let resp = client.invoke(many, RPC).await.unwrap();
    assert_eq!(resp.code, 29, "{:?}", resp.remark);
    assert!(resp.remark.unwrap().contains("1100 groups"));

    let mqs: Vec<String> = (0..5000)
        .map(|q| format!(r#"{{"topic":"T","brokerName":"broker-a","queueId":{q}}}"#))
        .collect();
    let body = format!(
        r#"{{"consumerGroup":"og","clientId":"c1","mqSet":[{}]}}"#,
        mqs.join(",")
    );
    let lock =
        RemotingCommand::request(request_code::LOCK_BATCH_MQ, Default::default()).with_body(body);
    let resp = client.invoke(lock, RPC).await.unwrap();
    assert_eq!(resp.code, 29, "{:?}", resp.remark);

    send_ok(&client, "GroupTopic", 0, b"a", &props(Some("t7"), None)).await;
    wait_dispatched(&cluster.broker).await;
    let tags: Vec<String> = (0..5000).map(|i| format!("t{i}")).collect();
    let resp = client
        .invoke(
            pull_request("g", "GroupTopic", 0, 0, 0, Some(&tags.join("||"))),
            RPC,
        )
        .await
        .unwrap();
    assert_eq!(
        resp.code, 23,
        "SUBSCRIPTION_PARSE_FAILED: {:?}",
        resp.remark
    );
    let resp = client
        .invoke(
            pull_request("g", "GroupTopic", 0, 0, 0, Some(&tags[..4000].join("||"))),
            RPC,
        )
        .await
        .unwrap();
    assert_eq!(resp.code, 0, "within the bound: {:?}", resp.remark);
    cluster.stop().await;
}
