//! Transactions end to end against a real Sluice broker with the transaction extension
//! (`sluice-txn`) installed, as the `sluice` binary installs it.

use crate::common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use parking_lot::Mutex;
use sluice_client::{
    ConsumeFrom, ConsumeResult, ConsumedMessage, Message, ProducerBuilder, PushConsumer,
    TransactionProducer, TransactionState,
};

type Db = Arc<Mutex<HashSet<String>>>;

async fn tx_producer(cluster: &Cluster, db: &Db) -> TransactionProducer {
    let db = Arc::clone(db);
    let checker = move |msg: ConsumedMessage| {
        let committed = msg
            .transaction_id()
            .is_some_and(|id| db.lock().contains(id));
        async move {
            if committed {
                TransactionState::Commit
            } else {
                TransactionState::Unknown
            }
        }
    };
    TransactionProducer::builder(
        ProducerBuilder::new(cluster.config())
            .group("orders-tx")
            .warm_topics(["TxOrders"]),
        checker,
    )
    .start()
    .await
    .unwrap()
}

async fn collect(cluster: &Cluster, group: &str) -> (PushConsumer, Arc<Mutex<Vec<String>>>) {
    let got: Arc<Mutex<Vec<String>>> = Arc::default();
    let c = PushConsumer::builder(cluster.config(), group)
        .subscribe("TxOrders", "*")
        .consume_from(ConsumeFrom::FirstOffset)
        .long_polling(Duration::from_secs(2))
        .start({
            let got = got.clone();
            move |m: ConsumedMessage| {
                got.lock()
                    .push(String::from_utf8_lossy(m.body()).into_owned());
                async { ConsumeResult::Success }
            }
        })
        .await
        .unwrap();
    (c, got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_transactions_are_delivered_and_rolled_back_ones_never() {
    let cluster = start_cluster(1).await;
    cluster.create_topic("TxOrders", 2).await;
    let db = Db::default();
    let p = tx_producer(&cluster, &db).await;
    let (c, got) = collect(&cluster, "tx-readers").await;
    let r = p
        .send_in_transaction(Message::new("TxOrders", "commit me"), |_| async {
            TransactionState::Commit
        })
        .await
        .expect("half message accepted");
    assert_eq!(r.state, TransactionState::Commit);
    p.send_in_transaction(Message::new("TxOrders", "roll me back"), |_| async {
        TransactionState::Rollback
    })
    .await
    .unwrap();
    p.send_in_transaction(Message::new("TxOrders", "after"), |_| async {
        TransactionState::Commit
    })
    .await
    .unwrap();
    assert!(wait_until(|| async { got.lock().len() >= 2 }).await);
    c.shutdown().await;
    // Two queues: arrival order across them is not defined, only the set.
    let mut bodies = got.lock().clone();
    bodies.sort();
    assert_eq!(
        bodies,
        ["after", "commit me"],
        "committed once each, the rolled back never"
    );
    p.shutdown().await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_crashing_after_its_local_commit_is_committed_by_the_check_back() {
    let cluster = start_cluster(1).await;
    cluster.create_topic("TxOrders", 2).await;
    let db = Db::default();
    let crashing = tx_producer(&cluster, &db).await;
    let survivor = tx_producer(&cluster, &db).await;
    let (c, got) = collect(&cluster, "tx-crash-readers").await;

    let (committed_tx, committed_rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn({
        let db = Arc::clone(&db);
        async move {
            crashing
                .send_in_transaction(Message::new("TxOrders", "paid"), move |half| async move {
                    db.lock().insert(half.transaction_id.clone());
                    let _ = committed_tx.send(());
                    std::future::pending::<TransactionState>().await
                })
                .await
        }
    });
    committed_rx.await.expect("local commit happened");
    task.abort(); // the process dies before END_TRANSACTION
    let _ = task.await;

    assert!(
        wait_until(|| async { !got.lock().is_empty() }).await,
        "the check-back committed the message"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    c.shutdown().await;
    assert_eq!(*got.lock(), ["paid"], "delivered exactly once");
    survivor.shutdown().await;
    cluster.stop().await;
}
