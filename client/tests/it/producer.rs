//! Producers against a real Sluice broker: every send mode and message builder, route
//! discovery for unknown topics, name-server and broker failover, and typed errors.

use crate::common;

use std::collections::HashSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use sluice_client::{
    ClientError, ConsumedMessage, Message, MessageQueue, Producer, PullConsumer, PullStatus,
    SendStatus,
};

/// Every message stored on `mq` from offset 0 (bounded rounds).
async fn read_all(c: &PullConsumer, mq: &MessageQueue) -> Vec<ConsumedMessage> {
    let mut out = Vec::new();
    let mut offset = 0;
    for _ in 0..100 {
        let r = c.pull(mq, offset, 32).await.expect("pull");
        out.extend(r.messages);
        if r.status != PullStatus::Found {
            return out;
        }
        offset = r.next_begin_offset;
    }
    panic!("queue {mq:?} did not end in 100 pulls");
}

/// [`read_all`] once at least `n` messages are visible (the broker dispatches asynchronously).
async fn read_at_least(c: &PullConsumer, mq: &MessageQueue, n: usize) -> Vec<ConsumedMessage> {
    let seen = wait_until(|| async { read_all(c, mq).await.len() >= n }).await;
    assert!(seen, "{mq:?} never showed {n} messages");
    read_all(c, mq).await
}

async fn read_topic(c: &PullConsumer, topic: &str) -> Vec<ConsumedMessage> {
    let mut out = Vec::new();
    for mq in c.queues(topic).await.expect("queues") {
        out.extend(read_all(c, &mq).await);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_send_mode_stores_messages_with_their_keys_tags_properties_and_delays() {
    let cluster = start_cluster(1).await;
    let producer = Producer::builder(cluster.config())
        .group("pg")
        .start()
        .await
        .unwrap();
    let reader = PullConsumer::builder(cluster.config(), "reader")
        .start()
        .await
        .unwrap();

    // A topic nobody created: the template route is borrowed and the broker creates it.
    let deliver_at = SystemTime::now() + Duration::from_secs(3600);
    let sent = producer
        .send(
            Message::new("NewTopic", "hello")
                .with_tags("TagA")
                .with_keys(["order-1", "customer-9"])
                .with_property("source", "test")
                .with_delay_level(2)
                .with_deliver_at(deliver_at)
                .with_flag(7),
        )
        .await
        .expect("send to an auto-created topic");
    assert_eq!(sent.status, SendStatus::Ok);
    assert_eq!(sent.queue.topic, "NewTopic");
    assert_eq!(sent.msg_id.len(), 32, "a UNIQ_KEY was generated");
    assert_eq!(sent.offset_msg_id.len(), 32);

    let stored = read_at_least(&reader, &sent.queue, 1).await;
    assert_eq!(stored.len(), 1);
    let m = &stored[0];
    assert_eq!((m.topic(), &m.body()[..]), ("NewTopic", &b"hello"[..]));
    assert_eq!(m.msg_id(), sent.msg_id);
    assert_eq!(m.offset_msg_id(), sent.offset_msg_id);
    assert_eq!(m.queue_offset(), sent.queue_offset);
    assert_eq!(m.tags(), Some("TagA"));
    assert_eq!(m.keys().collect::<Vec<_>>(), ["order-1", "customer-9"]);
    assert_eq!(m.property("source"), Some("test"));
    assert_eq!(m.property("DELAY"), Some("2"));
    let ms = deliver_at
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis()
        .to_string();
    assert_eq!(m.property("TIMER_DELIVER_MS"), Some(ms.as_str()));
    assert_eq!(m.flag(), 7);

    // Once the name server knows it, the real route (4 queues) is used.
    assert!(wait_until(|| async { cluster.routed_brokers("NewTopic").await == 1 }).await);
    assert_eq!(producer.queues("NewTopic").await.unwrap().len(), 4);

    // A caller-chosen UNIQ_KEY is kept (a deliberate re-send is recognisable).
    let fixed = producer
        .send(Message::new("NewTopic", "again").with_property("UNIQ_KEY", "MY-KEY-1"))
        .await
        .unwrap();
    assert_eq!(fixed.msg_id, "MY-KEY-1");

    // One-way: no answer, but the message arrives.
    cluster.create_topic("Oneway", 2).await;
    producer
        .send_oneway(Message::new("Oneway", "fire"))
        .await
        .unwrap();
    let arrived = wait_until(|| async { read_topic(&reader, "Oneway").await.len() == 1 }).await;
    assert!(arrived, "the one-way message was stored");

    // Batch: one queue, consecutive offsets, each message keeps its own properties.
    let batch: Vec<Message> = (0..3)
        .map(|i| Message::new("NewTopic", format!("b{i}")).with_tags(format!("T{i}")))
        .collect();
    let b = producer.send_batch(batch).await.expect("batch");
    assert_eq!(b.msg_ids.len(), 3);
    assert_eq!(b.offset_msg_ids.len(), 3);
    let on_queue = read_at_least(&reader, &b.queue, 3).await;
    let got: Vec<(i64, String, String)> = on_queue
        .iter()
        .filter(|m| b.msg_ids.iter().any(|id| id == m.msg_id()))
        .map(|m| {
            (
                m.queue_offset(),
                String::from_utf8_lossy(m.body()).into_owned(),
                m.tags().unwrap_or("").to_owned(),
            )
        })
        .collect();
    let first = b.first_queue_offset;
    assert_eq!(
        got,
        (0..3)
            .map(|i| (first + i, format!("b{i}"), format!("T{i}")))
            .collect::<Vec<_>>()
    );

    // Ordered: one key, one queue, send order kept; keys spread deterministically.
    cluster.create_topic("Ordered", 4).await;
    let mut queues_by_key = std::collections::HashMap::new();
    for seq in 0..12 {
        let key = format!("key-{}", seq % 3);
        let r = producer
            .send_ordered(Message::new("Ordered", format!("{key}:{seq}")), &key)
            .await
            .unwrap();
        let q = queues_by_key.entry(key).or_insert_with(|| r.queue.clone());
        assert_eq!(*q, r.queue, "one key, one queue");
    }
    for (key, q) in &queues_by_key {
        let seqs: Vec<u32> = read_at_least(&reader, q, 4)
            .await
            .iter()
            .filter(|m| m.property("__SHARDINGKEY") == Some(key.as_str()))
            .map(|m| {
                let body = String::from_utf8_lossy(m.body()).into_owned();
                body.rsplit(':').next().unwrap().parse().unwrap()
            })
            .collect();
        assert_eq!(seqs.len(), 4);
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{key}: {seqs:?}");
    }

    // Explicit queue.
    let q = MessageQueue {
        topic: "Ordered".into(),
        broker_name: "broker-a".into(),
        queue_id: 3,
    };
    let r = producer
        .send_to_queue(Message::new("Ordered", "q3"), &q)
        .await
        .unwrap();
    assert_eq!(r.queue, q);

    producer.shutdown().await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_messages_fail_fast_with_typed_errors() {
    let cluster = start_cluster(1).await;
    let producer = Producer::builder(cluster.config()).start().await.unwrap();
    for bad in [
        Message::new("bad topic", "x"),
        Message::new("T", ""),
        Message::new("T", "x").with_property("k", "a\u{1}b"),
    ] {
        let err = producer.send(bad).await.unwrap_err();
        assert!(matches!(err, ClientError::InvalidMessage(_)), "{err}");
    }
    let mixed = vec![Message::new("A", "x"), Message::new("B", "y")];
    assert!(matches!(
        producer.send_batch(mixed).await,
        Err(ClientError::InvalidMessage(_))
    ));
    let delayed = vec![Message::new("A", "x").with_delay_level(1)];
    assert!(matches!(
        producer.send_batch(delayed).await,
        Err(ClientError::InvalidMessage(_))
    ));
    assert!(matches!(
        producer.send_batch(Vec::new()).await,
        Err(ClientError::InvalidMessage(_))
    ));
    let bad_cfg = Producer::builder(sluice_client::ClientConfig::new(""))
        .start()
        .await;
    assert!(matches!(bad_cfg, Err(ClientError::Config(_))));
    producer.shutdown().await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_fail_over_to_a_live_name_server_and_a_live_broker_and_give_up_after_bounded_attempts(
) {
    let mut cluster = start_cluster(2).await;
    cluster.create_topic("Failover", 2).await;
    // The first name server is dead: lookups move on to the live one.
    let cfg =
        sluice_client::ClientConfig::new(&format!("127.0.0.1:1;{}", cluster.namesrv.local_addr()))
            .with_rpc_timeout(Duration::from_secs(5));
    let producer = Producer::builder(cfg)
        .group("fo")
        .retry_times(2)
        .start()
        .await
        .unwrap();
    let mut brokers = HashSet::new();
    for i in 0..8 {
        let r = producer
            .send(Message::new("Failover", format!("m{i}")))
            .await
            .expect("send");
        brokers.insert(r.queue.broker_name);
    }
    assert_eq!(brokers.len(), 2, "round robin uses both brokers");

    // broker-a goes away; the name server still routes to it, so sends must fail over.
    let a = cluster.brokers.remove(0);
    a.shutdown().await;
    let mut after = Vec::new();
    for i in 0..8 {
        let r = producer
            .send(Message::new("Failover", format!("n{i}")))
            .await
            .expect("failover send");
        after.push(r.queue.broker_name);
    }
    assert!(after.iter().all(|b| b == "broker-b"), "{after:?}");

    // With every broker gone, the send stops after 1 + retry_times attempts.
    let b = cluster.brokers.remove(0);
    b.shutdown().await;
    let err = producer
        .send(Message::new("Failover", "lost"))
        .await
        .unwrap_err();
    match &err {
        ClientError::SendFailed { attempts, last, .. } => {
            assert_eq!(*attempts, 3);
            assert!(last.is_retryable(), "{last}");
        }
        other => panic!("unexpected {other}"),
    }
    producer.shutdown().await;
    cluster.stop().await;
}

/// A topic the name servers know with no writable queue is not sent through the template
/// route: that had a broker with auto-create make the topic anew and take its messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_known_topic_without_writable_queues_fails_instead_of_borrowing_the_template() {
    let cluster = start_cluster(1).await;
    cluster.create_topic_with_perm("ReadOnly", 2, 4).await;
    let producer = Producer::builder(cluster.config()).start().await.unwrap();
    let err = producer
        .send(Message::new("ReadOnly", "x"))
        .await
        .expect_err("nothing to write to");
    assert!(
        err.to_string().contains("no writable queue"),
        "refused by the route, not sent: {err}"
    );
    producer.shutdown().await;
    cluster.stop().await;
}
