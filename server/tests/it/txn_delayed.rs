//! Transactional and delayed at once, through the real `sluice` binary and the Rust client: a
//! committed half message that carries a deliver-at time reaches consumers at that time, once,
//! and never before (RocketMQ drops or breaks this combination).

use crate::common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use sluice_client::{
    ClientConfig, ConsumeFrom, ConsumedMessage, Message, ProducerBuilder, PullConsumer,
    TransactionProducer, TransactionState,
};

fn ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_committed_transaction_with_a_deliver_time_is_delivered_then_and_not_before() {
    let data = tempfile::tempdir().unwrap();
    let sluice = start(data.path(), 0, 0);
    let cfg = ClientConfig::new(&sluice.ns.to_string());
    let checker = |_: ConsumedMessage| async { TransactionState::Unknown };
    let producer = TransactionProducer::builder(
        ProducerBuilder::new(cfg.clone()).group("delayed-tx"),
        checker,
    )
    .start()
    .await
    .unwrap();
    let consumer = PullConsumer::builder(cfg, "delayed-reader")
        .consume_from(ConsumeFrom::FirstOffset)
        .start()
        .await
        .unwrap();

    let due = SystemTime::now() + Duration::from_secs(3);
    let msg = Message::new("TxDelayed", "pay reminder")
        .with_keys(["order-7"])
        .with_deliver_at(due);
    let sent = producer
        .send_in_transaction(msg, |_| async { TransactionState::Commit })
        .await
        .unwrap();
    assert_eq!(sent.state, TransactionState::Commit);

    consumer.assign(consumer.queues("TxDelayed").await.unwrap());
    let mut got = Vec::new();
    for _ in 0..100 {
        let batch = consumer.poll(Duration::from_millis(300)).await.unwrap();
        let polled_at = ms(SystemTime::now());
        for m in batch {
            assert!(
                polled_at >= ms(due),
                "delivered before its time: at {polled_at}, due {}",
                ms(due)
            );
            got.push(m);
        }
        if !got.is_empty() && SystemTime::now() > due + Duration::from_secs(2) {
            break;
        }
    }
    assert_eq!(got.len(), 1, "delivered exactly once");
    assert_eq!(&got[0].body()[..], b"pay reminder");
    assert_eq!(got[0].keys().collect::<Vec<_>>(), ["order-7"]);
    assert!(
        got[0].store_timestamp() >= ms(due),
        "released at or after its time"
    );
    producer.shutdown().await;
    consumer.shutdown().await;
    sluice.stop();
}
