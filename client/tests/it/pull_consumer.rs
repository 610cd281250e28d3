//! Pull consumers against a real Sluice broker: explicit offsets, long polling, tag filters,
//! committed offsets, and assign/poll/commit with tracked positions.

use crate::common;

use std::time::Duration;

use common::*;
use sluice_client::{ConsumeFrom, Message, Producer, PullConsumer, PullStatus};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_from_offsets_long_polls_filters_and_commits() {
    let cluster = start_cluster(1).await;
    cluster.create_topic("Pulled", 1).await;
    let producer = Producer::builder(cluster.config()).start().await.unwrap();
    for i in 0..5 {
        let tag = if i == 2 { "skip" } else { "keep" };
        producer
            .send(Message::new("Pulled", format!("m{i}")).with_tags(tag))
            .await
            .unwrap();
    }
    let c = PullConsumer::builder(cluster.config(), "puller")
        .start()
        .await
        .unwrap();
    let mq = c.queues("Pulled").await.unwrap().remove(0);
    assert!(wait_until(|| async { c.max_offset(&mq).await.unwrap_or(0) == 5 }).await);
    assert_eq!(c.min_offset(&mq).await.unwrap(), 0);

    let r = c.pull(&mq, 1, 2).await.unwrap();
    assert_eq!(r.status, PullStatus::Found);
    let bodies: Vec<&[u8]> = r.messages.iter().map(|m| &m.body()[..]).collect();
    assert_eq!(bodies, [&b"m1"[..], b"m2"]);
    assert_eq!((r.next_begin_offset, r.max_offset), (3, 5));

    // Caught up: an immediate answer, then a long poll that a new message ends.
    let r = c.pull(&mq, 5, 32).await.unwrap();
    assert_eq!(
        (r.status, r.next_begin_offset),
        (PullStatus::NoNewMessage, 5)
    );
    let waiting = c.pull_wait(&mq, 5, 32, Duration::from_secs(20));
    let send_later = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        producer.send(Message::new("Pulled", "late")).await.unwrap()
    };
    let (r, _) = tokio::join!(waiting, send_later);
    let r = r.unwrap();
    assert_eq!(r.status, PullStatus::Found);
    assert_eq!(&r.messages[0].body()[..], b"late");

    // Out of range.
    let r = c.pull(&mq, 1000, 32).await.unwrap();
    assert_eq!(r.status, PullStatus::OffsetIllegal);

    // Offsets: none committed yet (a young queue may answer 0, as RocketMQ does).
    assert_eq!(
        c.committed_offset(&mq).await.unwrap().filter(|o| *o > 0),
        None
    );
    c.commit(&mq, 4).await.unwrap();
    assert_eq!(c.committed_offset(&mq).await.unwrap(), Some(4));

    // A tag filter drops the other tag.
    let filtered = PullConsumer::builder(cluster.config(), "puller2")
        .tags("keep")
        .start()
        .await
        .unwrap();
    let r = filtered.pull(&mq, 0, 32).await.unwrap();
    assert!(r.messages.iter().all(|m| m.tags() == Some("keep")));
    assert_eq!(
        r.messages.len(),
        4,
        "m2 (tag skip) and the untagged late message are filtered out"
    );
    producer.shutdown().await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assign_poll_and_commit_positions_resume_where_the_group_stopped() {
    let cluster = start_cluster(1).await;
    cluster.create_topic("Polled", 2).await;
    let producer = Producer::builder(cluster.config()).start().await.unwrap();
    for i in 0..10 {
        producer
            .send(Message::new("Polled", format!("p{i}")))
            .await
            .unwrap();
    }
    let c = PullConsumer::builder(cluster.config(), "poller")
        .consume_from(ConsumeFrom::FirstOffset)
        .start()
        .await
        .unwrap();
    let queues = c.queues("Polled").await.unwrap();
    assert_eq!(queues.len(), 2);
    c.assign(queues.clone());
    assert_eq!(c.assignment(), queues);
    let mut got = Vec::new();
    for _ in 0..50 {
        if got.len() >= 10 {
            break;
        }
        got.extend(c.poll(Duration::from_millis(500)).await.unwrap());
    }
    assert_eq!(got.len(), 10);
    c.commit_positions().await.unwrap();
    drop(c);

    // The group resumes after what was committed: only new messages come.
    producer.send(Message::new("Polled", "new")).await.unwrap();
    let c = PullConsumer::builder(cluster.config(), "poller")
        .consume_from(ConsumeFrom::FirstOffset)
        .start()
        .await
        .unwrap();
    c.assign(queues);
    let mut again = Vec::new();
    for _ in 0..20 {
        if !again.is_empty() {
            break;
        }
        again.extend(c.poll(Duration::from_millis(500)).await.unwrap());
    }
    let bodies: Vec<String> = again
        .iter()
        .map(|m| String::from_utf8_lossy(m.body()).into_owned())
        .collect();
    assert_eq!(bodies, ["new"]);
    producer.shutdown().await;
    cluster.stop().await;
}

/// A busy queue does not starve the others: each poll starts at the queue after the last one
/// read. It used to start at that same queue again, so while it had messages no other queue
/// was ever pulled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polls_take_turns_over_the_assigned_queues() {
    let cluster = start_cluster(1).await;
    cluster.create_topic("Turns", 2).await;
    let producer = Producer::builder(cluster.config())
        .warm_topics(["Turns"])
        .start()
        .await
        .unwrap();
    let c = PullConsumer::builder(cluster.config(), "turns")
        .consume_from(ConsumeFrom::FirstOffset)
        .batch_size(1)
        .start()
        .await
        .unwrap();
    let queues = c.queues("Turns").await.unwrap();
    assert_eq!(queues.len(), 2);
    for (q, n) in [(&queues[0], 20), (&queues[1], 3)] {
        for i in 0..n {
            let m = Message::new("Turns", format!("{}-{i}", q.queue_id));
            producer.send_to_queue(m, q).await.unwrap();
        }
    }
    for q in &queues {
        let want = if q == &queues[0] { 20 } else { 3 };
        assert!(wait_until(|| async { c.max_offset(q).await.unwrap_or(0) == want }).await);
    }
    c.assign(queues.clone());
    let mut from_second = 0;
    for _ in 0..6 {
        for m in c.poll(Duration::from_millis(100)).await.unwrap() {
            if m.queue().queue_id == queues[1].queue_id {
                from_second += 1;
            }
        }
    }
    assert_eq!(from_second, 3, "the quieter queue is read in turn");
    producer.shutdown().await;
    cluster.stop().await;
}

/// A queue whose broker cannot be reached is passed over: its error used to end every poll
/// that met it first, starving the healthy queues.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_queue_does_not_stop_the_poll_of_the_others() {
    let cluster = start_cluster(1).await;
    cluster.create_topic("Mixed", 1).await;
    let producer = Producer::builder(cluster.config()).start().await.unwrap();
    producer.send(Message::new("Mixed", "here")).await.unwrap();
    let c = PullConsumer::builder(cluster.config(), "mixed")
        .consume_from(ConsumeFrom::FirstOffset)
        .start()
        .await
        .unwrap();
    let real = c.queues("Mixed").await.unwrap().remove(0);
    assert!(wait_until(|| async { c.max_offset(&real).await.unwrap_or(0) == 1 }).await);
    let mut ghost = real.clone();
    ghost.broker_name = "no-such-broker".into();
    c.assign(vec![ghost.clone(), real]);
    let mut got = Vec::new();
    for _ in 0..4 {
        got.extend(
            c.poll(Duration::from_millis(100))
                .await
                .expect("the healthy queue answers"),
        );
        if !got.is_empty() {
            break;
        }
    }
    assert_eq!(&got[0].body()[..], b"here");
    c.assign(vec![ghost]);
    assert!(
        c.poll(Duration::ZERO).await.is_err(),
        "only a failing queue: an error"
    );
    producer.shutdown().await;
    cluster.stop().await;
}

/// A pull consumer keeps its topic's route (its polls are uses of it), so the route refresh
/// keeps following the broker's address: once routes went idle after `route_idle_expiry`,
/// the master address was never refreshed again and every pull went to where the broker
/// used to be.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_polling_consumer_follows_its_broker_to_a_new_address() {
    let mut cluster = start_cluster(1).await;
    cluster.create_topic("Moves", 1).await;
    let mut cfg = cluster
        .config()
        .with_route_refresh_interval(Duration::from_millis(200));
    cfg.route_idle_expiry = Duration::from_millis(500);
    let c = PullConsumer::builder(cfg, "mover")
        .consume_from(ConsumeFrom::FirstOffset)
        .start()
        .await
        .unwrap();
    c.assign(c.queues("Moves").await.unwrap());
    // Polls for well past the idle expiry.
    let polled_until = tokio::time::Instant::now() + Duration::from_millis(1500);
    while tokio::time::Instant::now() < polled_until {
        assert!(c.poll(Duration::from_millis(100)).await.unwrap().is_empty());
    }
    let old = cluster.brokers[0].local_addr();
    cluster.move_broker(0).await;
    assert_ne!(cluster.brokers[0].local_addr(), old, "the broker moved");
    let producer = Producer::builder(cluster.config()).start().await.unwrap();
    producer
        .send(Message::new("Moves", "after the move"))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut got = Vec::new();
    while got.is_empty() && tokio::time::Instant::now() < deadline {
        match c.poll(Duration::from_millis(200)).await {
            Ok(msgs) => got.extend(msgs),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    assert_eq!(
        got.iter().map(|m| m.body().to_vec()).collect::<Vec<_>>(),
        [b"after the move".to_vec()],
        "the pulls reached the broker at its new address"
    );
    producer.shutdown().await;
    c.shutdown().await;
    cluster.stop().await;
}
