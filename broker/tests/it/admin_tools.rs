//! What `mqadmin` asks for: the topic list from the name server, key/value configs
//! (`updateTopic -o`), a group's consume progress and the groups of a topic. They were
//! answered REQUEST_CODE_NOT_SUPPORTED, and the tool printed a stack trace instead.

use crate::common;

use common::*;
use sluice_broker::RemotingClient;
use sluice_protocol::remoting::custom::{
    UpdateAndCreateTopicRequestHeader, UpdateConsumerOffsetRequestHeader,
};
use sluice_protocol::{request_code, response_code, RemotingCommand};

/// Sends request `code` with `fields` and returns the answer.
async fn ask(client: &RemotingClient, code: i32, fields: &[(&str, &str)]) -> RemotingCommand {
    client
        .invoke(RemotingCommand::request(code, ext(fields)), RPC)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_name_server_lists_topics_and_keeps_key_values() {
    // Registration at start carries the broker's topics (the TBW102 template among them).
    let cluster = start_cluster().await;
    let ns = RemotingClient::connect(cluster.namesrv.local_addr())
        .await
        .unwrap();
    let list = ask(&ns, request_code::GET_ALL_TOPIC_LIST_FROM_NAMESERVER, &[]).await;
    assert_eq!(list.code, 0, "{:?}", list.remark);
    let v: serde_json::Value = serde_json::from_slice(&list.body).unwrap();
    let topics: Vec<&str> = v["topicList"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert!(topics.contains(&"TBW102"), "{v}");

    let key = [("namespace", "ORDER_TOPIC_CONFIG"), ("key", "Listed")];
    let get = || RemotingCommand::request(request_code::GET_KV_CONFIG, ext(&key));
    let missing = ns.invoke(get(), RPC).await.unwrap();
    assert_eq!(missing.code, response_code::QUERY_NOT_FOUND);
    let mut put = key.to_vec();
    put.push(("value", "broker-a:4"));
    let stored = ask(&ns, request_code::PUT_KV_CONFIG, &put).await;
    assert_eq!(stored.code, 0, "{:?}", stored.remark);
    let found = ns.invoke(get(), RPC).await.unwrap();
    assert_eq!(found.code, 0);
    assert_eq!(found.ext_fields.get_str("value"), Some("broker-a:4"));
    let deleted = ask(&ns, request_code::DELETE_KV_CONFIG, &key).await;
    assert_eq!(deleted.code, 0);
    assert_eq!(
        ns.invoke(get(), RPC).await.unwrap().code,
        response_code::QUERY_NOT_FOUND
    );
    // Anyone may reach the name server: an entry's size is bounded.
    let big = "x".repeat(5000);
    let mut put = key.to_vec();
    put.push(("value", &big));
    let refused = ask(&ns, request_code::PUT_KV_CONFIG, &put).await;
    assert_eq!(
        refused.code,
        response_code::SYSTEM_ERROR,
        "{:?}",
        refused.remark
    );
    assert_eq!(
        ns.invoke(get(), RPC).await.unwrap().code,
        response_code::QUERY_NOT_FOUND
    );
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consume_stats_show_a_groups_offset_against_each_queues_end() {
    let cluster = start_cluster().await;
    let client = cluster.client().await;
    for i in 0..5 {
        send_ok(
            &client,
            "Progress",
            1,
            format!("m{i}").as_bytes(),
            &props(None, None),
        )
        .await;
    }
    // Queue ends and store times come from the consume queue, written after the ack.
    wait_dispatched(&cluster.broker).await;
    let commit = UpdateConsumerOffsetRequestHeader {
        consumer_group: "billing".into(),
        topic: "Progress".into(),
        queue_id: 1,
        commit_offset: 3,
    };
    let r = client
        .invoke(
            RemotingCommand::request(request_code::UPDATE_CONSUMER_OFFSET, commit.to_ext()),
            RPC,
        )
        .await
        .unwrap();
    assert_eq!(r.code, 0);
    let stats = ask(
        &client,
        request_code::GET_CONSUME_STATS,
        &[("consumerGroup", "billing")],
    )
    .await;
    assert_eq!(stats.code, 0, "{:?}", stats.remark);
    let text = String::from_utf8(stats.body.to_vec()).unwrap();
    // fastjson's form: MessageQueue objects as keys (what mqadmin parses).
    let row = r#"{"brokerName":"broker-a","queueId":1,"topic":"Progress"}:{"brokerOffset":5,"consumerOffset":3,"lastTimestamp":"#;
    assert!(text.contains(row), "{text}");
    let last = text.split(row).nth(1).unwrap();
    let last: i64 = last[..last.find('}').unwrap()].parse().unwrap();
    assert!(
        last > 0,
        "the store time of message 2, the last consumed: {text}"
    );
    let by_who = ask(
        &client,
        request_code::QUERY_TOPIC_CONSUME_BY_WHO,
        &[("topic", "Progress")],
    )
    .await;
    assert_eq!(by_who.code, 0);
    let v: serde_json::Value = serde_json::from_slice(&by_who.body).unwrap();
    assert_eq!(v["groupList"], serde_json::json!(["billing"]));
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_and_topic_status_are_listed_for_the_admin_tool() {
    let cluster = start_cluster().await;
    let client = cluster.client().await;
    send_ok(&client, "Status", 2, b"m", &props(None, None)).await;
    wait_dispatched(&cluster.broker).await;
    let hb = r#"{"clientID":"10.0.0.9@7","consumerDataSet":[{"consumeFromWhere":"CONSUME_FROM_FIRST_OFFSET","consumeType":"CONSUME_PASSIVELY","groupName":"readers","messageModel":"CLUSTERING","subscriptionDataSet":[{"subString":"*","subVersion":1,"topic":"Status","tagsSet":[],"codeSet":[]}]}],"producerDataSet":[{"groupName":"writers"}]}"#;
    let mut req = RemotingCommand::request(request_code::HEART_BEAT, Default::default())
        .with_body(hb.as_bytes().to_vec());
    req.version = 401;
    assert_eq!(client.invoke(req, RPC).await.unwrap().code, 0);

    let ask = |code, key, value| RemotingCommand::request(code, ext(&[(key, value)]));
    let consumers = client
        .invoke(
            ask(
                request_code::GET_CONSUMER_CONNECTION_LIST,
                "consumerGroup",
                "readers",
            ),
            RPC,
        )
        .await
        .unwrap();
    assert_eq!(consumers.code, 0, "{:?}", consumers.remark);
    let v: serde_json::Value = serde_json::from_slice(&consumers.body).unwrap();
    assert_eq!(v["connectionSet"][0]["clientId"], "10.0.0.9@7", "{v}");
    assert_eq!(v["connectionSet"][0]["version"], 401, "{v}");
    assert_eq!(v["messageModel"], "CLUSTERING", "{v}");
    assert_eq!(v["subscriptionTable"]["Status"]["subString"], "*", "{v}");
    let nobody = client
        .invoke(
            ask(
                request_code::GET_CONSUMER_CONNECTION_LIST,
                "consumerGroup",
                "nobody",
            ),
            RPC,
        )
        .await
        .unwrap();
    assert_eq!(nobody.code, response_code::CONSUMER_NOT_ONLINE);
    let producers = client
        .invoke(
            ask(
                request_code::GET_PRODUCER_CONNECTION_LIST,
                "producerGroup",
                "writers",
            ),
            RPC,
        )
        .await
        .unwrap();
    assert_eq!(producers.code, 0, "{:?}", producers.remark);
    let v: serde_json::Value = serde_json::from_slice(&producers.body).unwrap();
    assert_eq!(v["connectionSet"][0]["clientId"], "10.0.0.9@7", "{v}");

    let status = client
        .invoke(
            ask(request_code::GET_TOPIC_STATS_INFO, "topic", "Status"),
            RPC,
        )
        .await
        .unwrap();
    assert_eq!(status.code, 0, "{:?}", status.remark);
    let text = String::from_utf8(status.body.to_vec()).unwrap();
    let q2 = r#"{"brokerName":"broker-a","queueId":2,"topic":"Status"}:{"lastUpdateTimestamp":"#;
    assert!(text.contains(q2), "{text}");
    assert!(text.contains(r#""maxOffset":1,"minOffset":0}"#), "{text}");
    let unknown = client
        .invoke(
            ask(request_code::GET_TOPIC_STATS_INFO, "topic", "NoSuch"),
            RPC,
        )
        .await
        .unwrap();
    assert_eq!(unknown.code, response_code::TOPIC_NOT_EXIST);
    cluster.stop().await;
}

/// `mqadmin clusterList` parses these keys (numbers, TPS as three numbers); a missing one
/// printed a stack trace per broker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_info_gives_every_figure_cluster_list_parses() {
    let cluster = start_cluster().await;
    let client = cluster.client().await;
    send_ok(&client, "Runtime", 0, b"m", &props(None, None)).await;
    let r = ask(&client, request_code::GET_BROKER_RUNTIME_INFO, &[]).await;
    assert_eq!(r.code, 0, "{:?}", r.remark);
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    let t = &v["table"];
    for tps in ["putTps", "getTransferedTps"] {
        let parts: Vec<f64> = t[tps]
            .as_str()
            .unwrap()
            .split(' ')
            .map(|p| p.parse().unwrap())
            .collect();
        assert_eq!(parts.len(), 3, "{tps}: {v}");
    }
    for number in [
        "msgPutTotalYesterdayMorning",
        "msgPutTotalTodayMorning",
        "msgPutTotalTodayNow",
        "msgGetTotalYesterdayMorning",
        "msgGetTotalTodayMorning",
        "msgGetTotalTodayNow",
        "pageCacheLockTimeMills",
        "earliestMessageTimeStamp",
    ] {
        let n: i64 = t[number].as_str().unwrap().parse().unwrap();
        assert!(n >= 0, "{number}: {v}");
    }
    assert_eq!(t["msgPutTotalTodayNow"], "1", "{v}");
    assert!(
        t["earliestMessageTimeStamp"].as_str().unwrap() != "0",
        "{v}"
    );
    assert!(
        t["brokerVersionDesc"]
            .as_str()
            .unwrap()
            .starts_with("V4_9_4"),
        "{v}"
    );
    let _: f64 = t["commitLogDiskRatio"].as_str().unwrap().parse().unwrap();
    cluster.stop().await;
}

/// resetOffsetByTime: with the group offline the tool's fallback does the reset (it needs
/// CONSUMER_NOT_ONLINE to take it); with members online the refusal says what to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offset_reset_defers_to_the_tool_or_asks_to_stop_the_consumers() {
    let cluster = start_cluster().await;
    let client = cluster.client().await;
    let reset = || {
        RemotingCommand::request(
            request_code::INVOKE_BROKER_TO_RESET_OFFSET,
            ext(&[
                ("topic", "Resettable"),
                ("group", "resetters"),
                ("timestamp", "0"),
                ("isForce", "true"),
            ]),
        )
    };
    let offline = client.invoke(reset(), RPC).await.unwrap();
    assert_eq!(
        offline.code,
        response_code::CONSUMER_NOT_ONLINE,
        "{:?}",
        offline.remark
    );
    let hb = r#"{"clientID":"c@1","consumerDataSet":[{"consumeFromWhere":"CONSUME_FROM_FIRST_OFFSET","consumeType":"CONSUME_PASSIVELY","groupName":"resetters","messageModel":"CLUSTERING","subscriptionDataSet":[{"subString":"*","subVersion":1,"topic":"Resettable","tagsSet":[],"codeSet":[]}]}],"producerDataSet":[]}"#;
    let beat = RemotingCommand::request(request_code::HEART_BEAT, Default::default())
        .with_body(hb.as_bytes().to_vec());
    assert_eq!(client.invoke(beat, RPC).await.unwrap().code, 0);
    let online = client.invoke(reset(), RPC).await.unwrap();
    assert_eq!(online.code, response_code::SYSTEM_ERROR);
    assert!(
        online.remark.as_deref().unwrap_or("").contains("stop them"),
        "{:?}",
        online.remark
    );
    cluster.stop().await;
}

/// Offsets were taken for any topic, queue id and group name and kept forever: a few one-way
/// requests with invented or megabyte names grew the offsets file that is saved whole every
/// few seconds and loaded at each start. And a deleted topic's offsets outlived it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_are_kept_only_for_existing_queues_and_go_with_their_topic() {
    let cluster = start_cluster().await;
    let client = cluster.client().await;
    send_ok(&client, "Kept", 0, b"m", &props(None, None)).await;
    let commit = commit_offset_1;
    let query_fields = [("consumerGroup", "g"), ("topic", "Kept"), ("queueId", "0")];
    let r = client
        .invoke(commit("g", "Invented", 0), RPC)
        .await
        .unwrap();
    assert_eq!(r.code, response_code::TOPIC_NOT_EXIST, "{:?}", r.remark);
    let r = client.invoke(commit("g", "Kept", 4096), RPC).await.unwrap();
    assert_eq!(r.code, response_code::INVALID_PARAMETER, "{:?}", r.remark);
    let long = "g".repeat(300);
    let r = client.invoke(commit(&long, "Kept", 0), RPC).await.unwrap();
    assert_eq!(r.code, response_code::INVALID_PARAMETER, "{:?}", r.remark);

    let r = client.invoke(commit("g", "Kept", 0), RPC).await.unwrap();
    assert_eq!(r.code, 0, "{:?}", r.remark);
    let r = ask(&client, request_code::QUERY_CONSUMER_OFFSET, &query_fields).await;
    assert_eq!(r.ext_fields.get_str("offset"), Some("1"));
    assert_eq!(groups_with_offsets(&client, "Kept").await, ["g"]);
    // A negative offset is no position: answered, not stored (read back as -1, clients took
    // it for "no offset" and skipped the backlog).
    let mut negative = commit("g", "Kept", 0);
    negative.ext_fields.insert("commitOffset", "-1");
    let r = client.invoke(negative, RPC).await.unwrap();
    assert_eq!(r.code, 0, "{:?}", r.remark);
    let r = ask(&client, request_code::QUERY_CONSUMER_OFFSET, &query_fields).await;
    assert_eq!(r.ext_fields.get_str("offset"), Some("1"));
    // A pull commits offsets too: its group name follows the same rule.
    let pull = pull_request(&long, "Kept", 0, 0, 1, Some("*"));
    let r = client.invoke(pull, RPC).await.unwrap();
    assert_eq!(r.code, response_code::INVALID_PARAMETER, "{:?}", r.remark);
    assert_eq!(groups_with_offsets(&client, "Kept").await, ["g"]);
    let services = cluster.broker.services();
    assert!(services.delete_topic("Kept").await.unwrap().is_some());
    assert!(
        groups_with_offsets(&client, "Kept").await.is_empty(),
        "forgotten with its topic"
    );
    // Created again by a send: its old message is not served, and a group without an offset
    // reads the young queue from its new start, not from 0 and not from its end.
    send_ok(&client, "Kept", 0, b"n", &props(None, None)).await;
    let r = ask(&client, request_code::QUERY_CONSUMER_OFFSET, &query_fields).await;
    assert_eq!(
        (r.code, r.ext_fields.get_str("offset")),
        (0, Some("1")),
        "{:?}",
        r.remark
    );
    cluster.stop().await;
}

/// A delete whose messages cannot be hidden (here the store cannot save their floors)
/// changes nothing: the topic and its groups' offsets stay, and a later delete succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_the_store_cannot_complete_keeps_the_topic() {
    let cluster = start_cluster().await;
    let client = cluster.client().await;
    send_ok(&client, "Stays", 0, b"m", &props(None, None)).await;
    let r = client
        .invoke(commit_offset_1("g", "Stays", 0), RPC)
        .await
        .unwrap();
    assert_eq!(r.code, 0, "{:?}", r.remark);
    let blocker = cluster.dir.path().join("queue-floors.tmp");
    std::fs::create_dir(&blocker).unwrap();
    let services = cluster.broker.services();
    let e = services.delete_topic("Stays").await.unwrap_err();
    assert!(
        matches!(e, sluice_broker::DeleteTopicError::Store(_)),
        "{e}"
    );
    assert!(services.topic("Stays").is_some(), "put back");
    assert_eq!(groups_with_offsets(&client, "Stays").await, ["g"]);
    std::fs::remove_dir(&blocker).unwrap();
    assert!(services.delete_topic("Stays").await.unwrap().is_some());
    assert!(services.topic("Stays").is_none());
    cluster.stop().await;
}

/// `mqadmin updateTopic -p 6 -t %DLQ%g` (how a dead-letter topic is made readable) sends the
/// tool's default of 8 queues: the perm is applied and the topic keeps its one queue, where
/// dead letters are written, listed and replayed (a client's send to a queue past it was
/// never seen by those tools). Other topics keep what they ask.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_topic_keeps_one_queue_when_updated() {
    let cluster = start_cluster().await;
    let client = cluster.client().await;
    for topic in ["%DLQ%ops", "Wide"] {
        let h = UpdateAndCreateTopicRequestHeader {
            topic: topic.into(),
            default_topic: "TBW102".into(),
            read_queue_nums: 8,
            write_queue_nums: 8,
            perm: 6,
            topic_filter_type: "SINGLE_TAG".into(),
            ..UpdateAndCreateTopicRequestHeader::default()
        };
        let req = RemotingCommand::request(request_code::UPDATE_AND_CREATE_TOPIC, h.to_ext());
        let r = client.invoke(req, RPC).await.unwrap();
        assert_eq!(r.code, 0, "{topic}: {:?}", r.remark);
    }
    let services = cluster.broker.services();
    let dlq = services.topic("%DLQ%ops").unwrap();
    assert_eq!(
        (dlq.read_queue_nums, dlq.write_queue_nums, dlq.perm),
        (1, 1, 6)
    );
    let wide = services.topic("Wide").unwrap();
    assert_eq!((wide.read_queue_nums, wide.write_queue_nums), (8, 8));
    cluster.stop().await;
}

/// UPDATE_CONSUMER_OFFSET of offset 1.
fn commit_offset_1(group: &str, topic: &str, queue_id: i32) -> RemotingCommand {
    let h = UpdateConsumerOffsetRequestHeader {
        consumer_group: group.into(),
        topic: topic.into(),
        queue_id,
        commit_offset: 1,
    };
    RemotingCommand::request(request_code::UPDATE_CONSUMER_OFFSET, h.to_ext())
}

/// QUERY_TOPIC_CONSUME_BY_WHO's groups of `topic`.
async fn groups_with_offsets(client: &RemotingClient, topic: &str) -> Vec<String> {
    let by_who = ask(
        client,
        request_code::QUERY_TOPIC_CONSUME_BY_WHO,
        &[("topic", topic)],
    )
    .await;
    let v: serde_json::Value = serde_json::from_slice(&by_who.body).unwrap();
    serde_json::from_value(v["groupList"].clone()).unwrap()
}
