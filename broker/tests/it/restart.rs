//! State that must survive a broker restart on the same data folder: consumer offsets (from
//! UPDATE_CONSUMER_OFFSET and from a pull's commitOffset), topics, messages.

use crate::common;

use std::time::Duration;

use common::*;
use sluice_protocol::remoting::body::{decode_json, TopicConfigSerializeWrapper};
use sluice_protocol::remoting::custom::{
    pull_sysflag, QueryConsumerOffsetRequestHeader, UpdateConsumerOffsetRequestHeader,
};
use sluice_protocol::{request_code, RemotingCommand};

fn query(group: &str, topic: &str, queue_id: i32) -> RemotingCommand {
    let h = QueryConsumerOffsetRequestHeader {
        consumer_group: group.into(),
        topic: topic.into(),
        queue_id,
        set_zero_if_not_found: None,
    };
    RemotingCommand::request(request_code::QUERY_CONSUMER_OFFSET, h.to_ext())
}

fn update(group: &str, topic: &str, queue_id: i32, offset: i64) -> RemotingCommand {
    let h = UpdateConsumerOffsetRequestHeader {
        consumer_group: group.into(),
        topic: topic.into(),
        queue_id,
        commit_offset: offset,
    };
    RemotingCommand::request(request_code::UPDATE_CONSUMER_OFFSET, h.to_ext())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_offsets_topics_and_messages_survive_a_restart() {
    let cluster = start_cluster().await;
    let client = cluster.client().await;
    for i in 0..5 {
        send_ok(
            &client,
            "Durable",
            0,
            format!("m{i}").as_bytes(),
            &props(None, None),
        )
        .await;
    }
    // No offset yet, on a young queue: RocketMQ 4.x answers 0 so a new group starts there.
    let none = client.invoke(query("cg", "Durable", 0), RPC).await.unwrap();
    assert_eq!(none.code, 0);
    assert_eq!(none.ext_fields.get_str("offset"), Some("0"));

    let resp = client
        .invoke(update("cg", "Durable", 0, 3), RPC)
        .await
        .unwrap();
    assert_eq!(resp.code, 0);
    let resp = client
        .invoke(update("cg", "Durable", 3, 9), RPC)
        .await
        .unwrap();
    assert_eq!(resp.code, 0);
    // A pull with COMMIT_OFFSET stores its commitOffset too.
    let mut pull = pull_request("cg", "Durable", 1, 0, 0, Some("*"));
    pull.ext_fields.insert(
        "sysFlag",
        (pull_sysflag::COMMIT_OFFSET | pull_sysflag::SUBSCRIPTION).to_string(),
    );
    pull.ext_fields.insert("commitOffset", "7");
    let resp = client.invoke(pull, RPC).await.unwrap();
    assert_eq!(resp.code, 19, "{:?}", resp.remark);

    let got = client.invoke(query("cg", "Durable", 0), RPC).await.unwrap();
    assert_eq!((got.code, ext_i64(&got, "offset")), (0, 3));
    drop(client);

    let cluster = cluster.restart(|_| {}).await;
    let client = cluster.client().await;
    for (queue, want) in [(0, 3), (3, 9), (1, 7)] {
        let got = client
            .invoke(query("cg", "Durable", queue), RPC)
            .await
            .unwrap();
        assert_eq!(got.code, 0, "offset of queue {queue} after restart");
        assert_eq!(ext_i64(&got, "offset"), want);
    }
    let all = client
        .invoke(RemotingCommand::request(21, Default::default()), RPC)
        .await
        .unwrap();
    assert_eq!(all.code, 0);
    let topics: TopicConfigSerializeWrapper = decode_json(&all.body).unwrap();
    assert!(topics.topic_config_table.contains_key("Durable"));
    assert!(topics.topic_config_table.contains_key("TBW102"));

    wait_dispatched(&cluster.broker).await;
    let msgs = pull_all(&client, "cg", "Durable", 0, 3, Some("*")).await;
    let bodies: Vec<Vec<u8>> = msgs.into_iter().map(|m| m.body).collect();
    assert_eq!(bodies, vec![b"m3".to_vec(), b"m4".to_vec()]);
    cluster.stop().await;
}

#[tokio::test]
async fn a_new_group_gets_query_not_found_once_the_queue_start_is_out_of_memory() {
    // A zero "in memory" window makes every stored message count as on-disk only.
    let cluster = start_cluster_with(|cfg| cfg.store.in_memory_window_bytes = Some(0)).await;
    let client = cluster.client().await;
    for i in 0..3 {
        send_ok(
            &client,
            "Old",
            0,
            format!("m{i}").as_bytes(),
            &props(None, None),
        )
        .await;
    }
    wait_dispatched(&cluster.broker).await;
    let none = client.invoke(query("cg", "Old", 0), RPC).await.unwrap();
    assert_eq!(
        none.code, 22,
        "no offset and an old queue start: QUERY_NOT_FOUND"
    );
    cluster.stop().await;
}

/// A topic created on the send path was saved once, in the background; when that save failed
/// (a full disk) nothing saved it again, so after a crash its stored messages had no topic to
/// be read through. The offset flush saves a changed topic table until it succeeds.
#[tokio::test]
async fn a_topic_whose_first_save_failed_is_saved_by_a_later_flush() {
    let cluster =
        start_cluster_with(|cfg| cfg.offset_flush_interval = Duration::from_millis(50)).await;
    let file = cluster.dir.path().join("config").join("topics.json");
    assert!(file.is_file(), "written at start");
    // Saves fail while a folder holds the file's name (the rename over it is refused).
    std::fs::remove_file(&file).unwrap();
    std::fs::create_dir(&file).unwrap();
    std::fs::write(file.join("blocker"), b"x").unwrap();
    let client = cluster.client().await;
    send_ok(&client, "MadeOnSend", 0, b"m", &props(None, None)).await;
    // The flush has tried and failed with the topic in the table: only a retry can save it.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while cluster.broker.stats().state_save_failures == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the periodic flush never tried to save the changed topics"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    std::fs::remove_dir_all(&file).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let saved = loop {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        if text.contains("MadeOnSend") || std::time::Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(saved.contains("MadeOnSend"), "topics.json: {saved}");
    cluster.stop().await;
}
