//! The consuming side: a RocketMQ pull consumer (sluice-client) and HTTP lease consumers, in
//! two groups that each read every topic, recording every delivery; and the committed offsets
//! of both groups, read right after each start.

use std::time::Duration;

use serde_json::Value;
use sluice_client::{ClientConfig, ConsumeFrom, ConsumedMessage, MessageQueue, PullConsumer};

use super::api::str_field;
use super::history::{body_for, Consumed, Ev, OffsetSnapshot, TOPICS};
use super::load::Run;

/// The RocketMQ pull consumer's group.
pub const PULL_GROUP: &str = "loop-pull";
/// The HTTP lease consumers' group.
pub const LEASE_GROUP: &str = "loop-http";
/// Every group, each of which must receive every message that has to be delivered.
pub const GROUPS: [&str; 2] = [PULL_GROUP, LEASE_GROUP];
/// Upper bound of polls per task and run.
const MAX_POLLS: usize = 100_000;
/// Polls between two commits of the pull consumer's positions.
const COMMIT_EVERY: usize = 4;

fn pause() -> tokio::time::Sleep {
    tokio::time::sleep(Duration::from_millis(20))
}

/// Reads every queue of every topic with a pull consumer, commits its positions every few
/// polls (always after the deliveries are recorded) and once more when the run stops.
pub async fn pull_consumer(run: Run) {
    let cfg = ClientConfig::new(&run.ns.to_string());
    let Ok(consumer) = PullConsumer::builder(cfg, PULL_GROUP)
        .consume_from(ConsumeFrom::FirstOffset)
        .batch_size(64)
        .start()
        .await
    else {
        return;
    };
    let Some(queues) = all_queues(&run, &consumer).await else {
        return;
    };
    consumer.assign(queues);
    for n in 0..MAX_POLLS {
        if run.stopped() {
            break;
        }
        match consumer.poll(Duration::from_millis(100)).await {
            Ok(batch) => batch.iter().for_each(|m| record_pulled(&run, m)),
            Err(_) => pause().await,
        }
        if n % COMMIT_EVERY == COMMIT_EVERY - 1 {
            commit(&run, &consumer).await;
        }
    }
    commit(&run, &consumer).await;
    consumer.shutdown().await;
}

/// The queues of every topic; `None` when the run stops first.
async fn all_queues(run: &Run, consumer: &PullConsumer) -> Option<Vec<MessageQueue>> {
    let mut all = Vec::new();
    for topic in TOPICS {
        for _ in 0..MAX_POLLS {
            if run.stopped() {
                return None;
            }
            match consumer.queues(topic).await {
                Ok(q) if !q.is_empty() => {
                    all.extend(q);
                    break;
                }
                _ => pause().await,
            }
        }
    }
    Some(all)
}

fn record_pulled(run: &Run, m: &ConsumedMessage) {
    let key = m.keys().next().unwrap_or("<no key>").to_owned();
    let intact = m.body().as_ref() == body_for(&key).as_bytes();
    run.hist.record(Ev::Consumed(Consumed {
        group: PULL_GROUP.into(),
        topic: m.topic().to_owned(),
        queue: m.queue().queue_id,
        offset: m.queue_offset(),
        store_ms: Some(m.store_timestamp()),
        intact,
        key,
    }));
}

/// Commits each position the consumer reached and records the ones the broker answered.
async fn commit(run: &Run, consumer: &PullConsumer) {
    for mq in consumer.assignment() {
        let Ok(offset) = consumer.position(&mq).await else {
            return;
        };
        if consumer.commit(&mq, offset).await.is_err() {
            return;
        }
        run.hist.record(Ev::OffsetCommitted {
            group: PULL_GROUP.into(),
            topic: mq.topic.clone(),
            queue: mq.queue_id,
            offset,
        });
    }
}

/// Receives from one topic with leases and acks each batch after recording it.
pub async fn lease_consumer(run: Run, topic: &'static str) {
    for _ in 0..MAX_POLLS {
        if run.stopped() {
            break;
        }
        let Ok((200, v)) = run.api.receive(LEASE_GROUP, topic, 200).await else {
            pause().await;
            continue;
        };
        let msgs = v
            .get("messages")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let receipts: Vec<String> = msgs
            .iter()
            .filter_map(|m| {
                record_leased(&run, topic, m);
                str_field(m, "receipt").map(str::to_owned)
            })
            .collect();
        if !receipts.is_empty() {
            // An ack lost in a kill only means a redelivery: a duplicate, counted.
            let _ = run.api.ack(LEASE_GROUP, receipts).await;
        }
    }
}

fn record_leased(run: &Run, topic: &str, m: &Value) {
    let key = m
        .get("keys")
        .and_then(Value::as_array)
        .and_then(|k| k.first())
        .and_then(Value::as_str)
        .unwrap_or("<no key>")
        .to_owned();
    let intact = str_field(m, "body") == Some(body_for(&key).as_str());
    let int = |name: &str| m.get(name).and_then(Value::as_i64).unwrap_or(-1);
    // A redelivery may come from the group's retry queue, whose position the answer gives
    // under the original topic's name: recorded without a position (-1), so the position
    // checks compare only positions of the topic itself.
    let offset = if int("delivery_count") > 1 {
        -1
    } else {
        int("queue_offset")
    };
    run.hist.record(Ev::Consumed(Consumed {
        group: LEASE_GROUP.into(),
        topic: topic.to_owned(),
        queue: int("queue_id") as i32,
        offset,
        store_ms: None,
        intact,
        key,
    }));
}

/// Reads and records the committed offsets of every group on every topic (a group that has
/// none yet answers 404 and is skipped). Panics when the broker does not answer: it was just
/// started and nothing kills it before this returns.
pub async fn snapshot_offsets(run: &Run, clean: bool) {
    for group in GROUPS {
        for topic in TOPICS {
            let (status, v) = run.api.group(group, topic).await.expect("group offsets");
            if status == 404 {
                continue;
            }
            assert_eq!(status, 200, "offsets of {group} on {topic}: {v}");
            let offsets = v
                .get("offsets")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            for o in offsets
                .iter()
                .filter(|o| str_field(o, "topic") == Some(topic))
            {
                run.hist.record(Ev::Offset(OffsetSnapshot {
                    cycle: run.cycle,
                    clean,
                    group: group.into(),
                    topic: topic.into(),
                    queue: o.get("queue_id").and_then(Value::as_i64).unwrap_or(-1) as i32,
                    committed: o.get("committed").and_then(Value::as_i64).unwrap_or(-1),
                }));
            }
        }
    }
}
