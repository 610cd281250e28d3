//! Push consumers against a real Sluice broker: tag filtering, offsets committed at shutdown,
//! bounded concurrency, retries through the retry topic (a handler that fails three times then
//! succeeds), the dead-letter queue, two members splitting queues and one taking over, and
//! orderly consumption.

use crate::common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use parking_lot::Mutex;
use sluice_client::{
    ConsumeFrom, ConsumeResult, ConsumedMessage, Message, MessageQueue, Producer, PullConsumer,
    PullStatus, PushConsumer, PushConsumerBuilder,
};

fn consumer(cluster: &Cluster, group: &str, topic: &str, tags: &str) -> PushConsumerBuilder {
    PushConsumer::builder(cluster.config(), group)
        .subscribe(topic, tags)
        .consume_from(ConsumeFrom::FirstOffset)
        .long_polling(Duration::from_secs(2))
        .persist_interval(Duration::from_millis(500))
        .rebalance_interval(Duration::from_secs(3))
}

fn body(m: &ConsumedMessage) -> String {
    String::from_utf8_lossy(m.body()).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_are_filtered_concurrency_is_bounded_and_shutdown_commits_every_offset() {
    let cluster = start_cluster(1).await;
    cluster.create_topic("Filtered", 4).await;
    let producer = Producer::builder(cluster.config()).start().await.unwrap();
    for i in 0..20 {
        let tag = if i % 2 == 0 { "TagA" } else { "TagB" };
        producer
            .send(Message::new("Filtered", format!("{tag}-{i}")).with_tags(tag))
            .await
            .unwrap();
    }
    let got = Arc::new(Mutex::new(Vec::new()));
    let (active, peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let c = consumer(&cluster, "filter-g", "Filtered", "TagA")
        .max_concurrency(2)
        .start({
            let (got, active, peak) = (got.clone(), active.clone(), peak.clone());
            move |m: ConsumedMessage| {
                let (got, active, peak) = (got.clone(), active.clone(), peak.clone());
                async move {
                    let now = active.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(30)).await;
                    got.lock().push(body(&m));
                    active.fetch_sub(1, Ordering::SeqCst);
                    ConsumeResult::Success
                }
            }
        })
        .await
        .unwrap();
    assert!(
        wait_until(|| async { got.lock().len() >= 10 }).await,
        "10 TagA messages consumed"
    );
    c.shutdown().await;
    let got = got.lock().clone();
    assert_eq!(got.len(), 10, "{got:?}");
    assert!(got.iter().all(|b| b.starts_with("TagA")), "{got:?}");
    let peak = peak.load(Ordering::SeqCst);
    assert!((1..=2).contains(&peak), "peak concurrency {peak}");

    // The final commit covers every queue up to its end, skipped TagB messages included.
    let reader = PullConsumer::builder(cluster.config(), "filter-g")
        .start()
        .await
        .unwrap();
    for mq in reader.queues("Filtered").await.unwrap() {
        let max = reader.max_offset(&mq).await.unwrap();
        assert_eq!(
            reader.committed_offset(&mq).await.unwrap(),
            Some(max),
            "{mq:?}"
        );
    }
    producer.shutdown().await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_that_fails_three_times_then_succeeds_gets_the_message_back_through_retry() {
    let cluster = start_cluster(1).await;
    cluster.create_topic("Flaky", 2).await;
    let producer = Producer::builder(cluster.config()).start().await.unwrap();
    let sent = producer
        .send(Message::new("Flaky", "pay order 7").with_tags("pay"))
        .await
        .unwrap();

    let seen = Arc::new(Mutex::new(Vec::<(String, String, i32, String)>::new()));
    let c = consumer(&cluster, "flaky-g", "Flaky", "pay")
        .start({
            let seen = seen.clone();
            move |m: ConsumedMessage| {
                let seen = seen.clone();
                async move {
                    let attempt = {
                        let mut s = seen.lock();
                        s.push((
                            m.msg_id().to_owned(),
                            m.topic().to_owned(),
                            m.reconsume_times(),
                            m.queue().topic.clone(),
                        ));
                        s.len()
                    };
                    // Three failures of three kinds: a Retry, an error, a panic.
                    match attempt {
                        1 => Ok(ConsumeResult::Retry(Some(Duration::from_secs(1)))),
                        2 => Err("database unavailable".to_owned()),
                        3 => panic!("handler bug"),
                        _ => Ok(ConsumeResult::Success),
                    }
                }
            }
        })
        .await
        .unwrap();
    assert!(
        wait_until(|| async { seen.lock().len() >= 4 }).await,
        "four deliveries"
    );
    // Nothing more comes once it succeeded (bounded look).
    tokio::time::sleep(Duration::from_millis(500)).await;
    c.shutdown().await;
    let seen = seen.lock().clone();
    assert_eq!(seen.len(), 4, "{seen:?}");
    for (i, (msg_id, topic, reconsume, queue_topic)) in seen.iter().enumerate() {
        assert_eq!(msg_id, &sent.msg_id, "the same message every time");
        assert_eq!(topic, "Flaky", "the original topic is shown");
        assert_eq!(*reconsume, i as i32, "reconsume count grows");
        let want = if i == 0 { "Flaky" } else { "%RETRY%flaky-g" };
        assert_eq!(queue_topic, want);
    }
    producer.shutdown().await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_past_max_reconsume_times_land_in_the_dead_letter_queue() {
    let cluster = start_cluster(1).await;
    cluster.create_topic("Poison", 1).await;
    let producer = Producer::builder(cluster.config()).start().await.unwrap();
    let sent = producer
        .send(Message::new("Poison", "never works"))
        .await
        .unwrap();
    let deliveries = Arc::new(AtomicUsize::new(0));
    let c = consumer(&cluster, "poison-g", "Poison", "*")
        .max_reconsume_times(2)
        .start({
            let d = deliveries.clone();
            move |_m: ConsumedMessage| {
                d.fetch_add(1, Ordering::SeqCst);
                async { ConsumeResult::Retry(None) }
            }
        })
        .await
        .unwrap();
    let reader = PullConsumer::builder(cluster.config(), "dlq-reader")
        .start()
        .await
        .unwrap();
    let dlq = MessageQueue {
        topic: "%DLQ%poison-g".into(),
        broker_name: "broker-a".into(),
        queue_id: 0,
    };
    let found = wait_until(|| async {
        matches!(reader.pull(&dlq, 0, 32).await, Ok(r) if r.status == PullStatus::Found)
    })
    .await;
    assert!(found, "a dead-letter copy appeared");
    let dead = reader.pull(&dlq, 0, 32).await.unwrap().messages;
    c.shutdown().await;
    assert_eq!(
        deliveries.load(Ordering::SeqCst),
        3,
        "first delivery + 2 retries"
    );
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].msg_id(), sent.msg_id);
    assert_eq!(
        dead[0].topic(),
        "%DLQ%poison-g",
        "read from the DLQ, as RocketMQ shows it"
    );
    assert_eq!(dead[0].property("RETRY_TOPIC"), Some("Poison"));
    assert_eq!(&dead[0].body()[..], b"never works");
    producer.shutdown().await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_members_split_the_queues_and_the_survivor_takes_over_without_losing_messages() {
    let cluster = start_cluster(1).await;
    cluster.create_topic("Shared", 4).await;
    let producer = Producer::builder(cluster.config()).start().await.unwrap();
    let received: Arc<Mutex<HashMap<String, Vec<String>>>> = Arc::default();
    let handler = |name: &'static str| {
        let received = received.clone();
        move |m: ConsumedMessage| {
            received
                .lock()
                .entry(name.to_owned())
                .or_default()
                .push(body(&m));
            async { ConsumeResult::Success }
        }
    };
    let topic_queues = |c: &PushConsumer| -> HashSet<i32> {
        c.assigned_queues()
            .into_iter()
            .filter(|q| q.topic == "Shared")
            .map(|q| q.queue_id)
            .collect()
    };

    let a = consumer(&cluster, "shared-g", "Shared", "*")
        .start(handler("a"))
        .await
        .unwrap();
    assert!(
        wait_until(|| async { topic_queues(&a).len() == 4 }).await,
        "a alone owns all four"
    );
    let b = consumer(&cluster, "shared-g", "Shared", "*")
        .start(handler("b"))
        .await
        .unwrap();
    let split = wait_until(|| async {
        let (qa, qb) = (topic_queues(&a), topic_queues(&b));
        qa.len() == 2 && qb.len() == 2 && qa.is_disjoint(&qb)
    })
    .await;
    assert!(
        split,
        "a {:?} b {:?}",
        a.assigned_queues(),
        b.assigned_queues()
    );

    let mut sent = HashSet::new();
    for i in 0..40 {
        producer
            .send(Message::new("Shared", format!("first-{i}")))
            .await
            .unwrap();
        sent.insert(format!("first-{i}"));
    }
    let all_in = |want: &HashSet<String>| {
        let r = received.lock();
        let got: HashSet<&String> = r.values().flatten().collect();
        want.iter().all(|m| got.contains(m))
    };
    assert!(
        wait_until(|| async { all_in(&sent) }).await,
        "both members consumed the first batch"
    );
    {
        let r = received.lock();
        assert!(
            r.get("a").is_some_and(|v| !v.is_empty()) && r.get("b").is_some_and(|v| !v.is_empty()),
            "both got messages"
        );
    }

    // a leaves; b takes over every queue; nothing sent afterwards is lost.
    a.shutdown().await;
    assert!(
        wait_until(|| async { topic_queues(&b).len() == 4 }).await,
        "b took over"
    );
    for i in 0..40 {
        producer
            .send(Message::new("Shared", format!("second-{i}")))
            .await
            .unwrap();
        sent.insert(format!("second-{i}"));
    }
    assert!(
        wait_until(|| async { all_in(&sent) }).await,
        "every message consumed after the takeover"
    );
    b.shutdown().await;
    let second_by_b = received.lock()["b"]
        .iter()
        .filter(|m| m.starts_with("second-"))
        .count();
    assert_eq!(second_by_b, 40, "the survivor consumed the second batch");
    producer.shutdown().await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orderly_consumer_handles_each_queue_one_message_at_a_time_in_order() {
    let cluster = start_cluster(1).await;
    cluster.create_topic("Sequenced", 4).await;
    let producer = Producer::builder(cluster.config()).start().await.unwrap();
    for seq in 0..30 {
        let key = format!("account-{}", seq % 3);
        producer
            .send_ordered(Message::new("Sequenced", format!("{key}:{seq}")), &key)
            .await
            .unwrap();
    }
    let log: Arc<Mutex<Vec<(String, u32)>>> = Arc::default();
    let busy: Arc<Mutex<HashSet<i32>>> = Arc::default();
    let overlap = Arc::new(AtomicUsize::new(0));
    let retried = Arc::new(AtomicUsize::new(0));
    let c = consumer(&cluster, "ordered-g", "Sequenced", "*")
        .orderly(true)
        .max_concurrency(4)
        .orderly_retry_delay(Duration::from_millis(100))
        .start({
            let (log, busy, overlap, retried) =
                (log.clone(), busy.clone(), overlap.clone(), retried.clone());
            move |m: ConsumedMessage| {
                let (log, busy, overlap, retried) =
                    (log.clone(), busy.clone(), overlap.clone(), retried.clone());
                async move {
                    let q = m.queue().queue_id;
                    if !busy.lock().insert(q) {
                        overlap.fetch_add(1, Ordering::SeqCst);
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    let text = body(&m);
                    let (key, seq) = text.split_once(':').unwrap();
                    let seq: u32 = seq.parse().unwrap();
                    busy.lock().remove(&q);
                    // One failure, retried locally before anything after it.
                    if seq == 4 && retried.fetch_add(1, Ordering::SeqCst) == 0 {
                        return ConsumeResult::Retry(None);
                    }
                    log.lock().push((key.to_owned(), seq));
                    ConsumeResult::Success
                }
            }
        })
        .await
        .unwrap();
    assert!(
        wait_until(|| async { log.lock().len() >= 30 }).await,
        "all 30 consumed"
    );
    c.shutdown().await;
    assert_eq!(
        overlap.load(Ordering::SeqCst),
        0,
        "never two handlers on one queue"
    );
    assert_eq!(
        retried.load(Ordering::SeqCst),
        2,
        "the failed message came back once"
    );
    let log = log.lock().clone();
    assert_eq!(log.len(), 30);
    for k in 0..3 {
        let key = format!("account-{k}");
        let seqs: Vec<u32> = log
            .iter()
            .filter(|(kk, _)| *kk == key)
            .map(|(_, s)| *s)
            .collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{key}: {seqs:?}");
        assert_eq!(seqs.len(), 10);
    }
    producer.shutdown().await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_message_that_could_not_be_handed_back_is_not_committed_at_shutdown() {
    let refuse = RefuseHandBacks::on();
    let cluster = start_cluster_with_hooks(1, vec![refuse.clone()]).await;
    cluster.create_topic("Stuck", 1).await;
    let producer = Producer::builder(cluster.config()).start().await.unwrap();
    let sent = producer.send(Message::new("Stuck", "stuck")).await.unwrap();

    // The handler fails and both hand-backs are refused: the message waits to be consumed
    // again here, and the consumer shuts down meanwhile.
    let attempts = Arc::new(AtomicUsize::new(0));
    let a = consumer(&cluster, "stuck-g", "Stuck", "*")
        .start({
            let attempts = attempts.clone();
            move |_m: ConsumedMessage| {
                attempts.fetch_add(1, Ordering::SeqCst);
                async { ConsumeResult::Retry(None) }
            }
        })
        .await
        .unwrap();
    assert!(
        wait_until(|| async { attempts.load(Ordering::SeqCst) >= 1 }).await,
        "the handler ran"
    );
    a.shutdown().await;
    let reader = PullConsumer::builder(cluster.config(), "stuck-g")
        .start()
        .await
        .unwrap();
    assert_eq!(
        reader.committed_offset(&sent.queue).await.unwrap(),
        Some(sent.queue_offset),
        "the unsettled message's offset stays uncommitted"
    );

    // The next owner gets it.
    refuse.turn_off();
    let got = Arc::new(Mutex::new(Vec::new()));
    let b = consumer(&cluster, "stuck-g", "Stuck", "*")
        .start({
            let got = got.clone();
            move |m: ConsumedMessage| {
                got.lock().push(body(&m));
                async { ConsumeResult::Success }
            }
        })
        .await
        .unwrap();
    assert!(
        wait_until(|| async { got.lock().iter().any(|b| b == "stuck") }).await,
        "the message was redelivered"
    );
    b.shutdown().await;
    producer.shutdown().await;
    cluster.stop().await;
}

/// An orderly member that records what it handled; its handler holds `held` until `release`
/// has a permit (bounded by [`WAIT`]), with `running` true meanwhile.
struct Member {
    log: Arc<Mutex<Vec<String>>>,
    running: Arc<AtomicBool>,
}

/// A member of "handover-g" handling "Handover" in order; its shutdown waits at most
/// `shutdown` for its handlers.
async fn orderly_member(
    cluster: &Cluster,
    instance: &str,
    held: &'static str,
    release: Arc<tokio::sync::Semaphore>,
    other_running: Option<Arc<AtomicBool>>,
    overlaps: Arc<AtomicUsize>,
    shutdown: Duration,
) -> (PushConsumer, Member) {
    let member = Member {
        log: Arc::default(),
        running: Arc::default(),
    };
    let (log, running) = (member.log.clone(), member.running.clone());
    let c = PushConsumer::builder(cluster.config().with_instance_name(instance), "handover-g")
        .subscribe("Handover", "*")
        .consume_from(ConsumeFrom::FirstOffset)
        .long_polling(Duration::from_secs(2))
        .persist_interval(Duration::from_millis(500))
        .rebalance_interval(Duration::from_secs(3))
        .shutdown_timeout(shutdown)
        .orderly(true)
        .start(move |m: ConsumedMessage| {
            let (log, running, release) = (log.clone(), running.clone(), release.clone());
            let (other, overlaps) = (other_running.clone(), overlaps.clone());
            async move {
                if other.is_some_and(|o| o.load(Ordering::SeqCst)) {
                    overlaps.fetch_add(1, Ordering::SeqCst);
                }
                let text = body(&m);
                log.lock().push(text.clone());
                if text == held {
                    running.store(true, Ordering::SeqCst);
                    // Long enough to outlive a member's shutdown by more than the 35 s a
                    // departed client's lock lives unrenewed, on a loaded machine too.
                    let _ = tokio::time::timeout(WAIT * 2, release.acquire()).await;
                    running.store(false, Ordering::SeqCst);
                }
                ConsumeResult::Success
            }
        })
        .await
        .unwrap();
    (c, member)
}

/// Once `a` is handling `held`, starts member "aa-b" of the same group (it sorts first, so
/// the only queue is its own after the rebalance), which counts overlaps with `a`'s handler.
async fn second_member(
    cluster: &Cluster,
    a: &Member,
    held: &str,
    release: &Arc<tokio::sync::Semaphore>,
    overlaps: &Arc<AtomicUsize>,
) -> (PushConsumer, Member) {
    assert!(
        wait_until(|| async { a.running.load(Ordering::SeqCst) }).await,
        "a is handling {held}"
    );
    orderly_member(
        cluster,
        "aa-b",
        "",
        release.clone(),
        Some(a.running.clone()),
        overlaps.clone(),
        Duration::from_secs(30),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orderly_queue_changes_hands_only_after_its_running_handler_finished_and_resumes_where_it_stopped(
) {
    let cluster = start_cluster(1).await;
    cluster.create_topic("Handover", 1).await;
    let producer = Producer::builder(cluster.config()).start().await.unwrap();
    for text in ["m0", "m1"] {
        producer.send(Message::new("Handover", text)).await.unwrap();
    }
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let overlaps = Arc::new(AtomicUsize::new(0));
    // "zz-a" sorts after "aa-b": once b joins, the only queue is b's.
    let (a, a_m) = orderly_member(
        &cluster,
        "zz-a",
        "m1",
        release.clone(),
        None,
        overlaps.clone(),
        Duration::from_secs(30),
    )
    .await;
    let (b, b_m) = second_member(&cluster, &a_m, "m1", &release, &overlaps).await;
    assert!(
        wait_until(|| async { b.assigned_queues().iter().any(|q| q.topic == "Handover") }).await,
        "b was assigned the queue"
    );
    // A bounded look while a's handler runs: a gives the queue up (its drain wait, 2 × 2 s,
    // then the unlock) and b asks for the lock every 500 ms, so b would get it in this window.
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(
        b_m.log.lock().clone(),
        Vec::<String>::new(),
        "b waited for a's handler"
    );

    release.add_permits(1);
    producer.send(Message::new("Handover", "m2")).await.unwrap();
    assert!(
        wait_until(|| async { b_m.log.lock().iter().any(|t| t == "m2") }).await,
        "b took over"
    );
    a.shutdown().await;
    b.shutdown().await;
    assert_eq!(
        overlaps.load(Ordering::SeqCst),
        0,
        "never both on the queue"
    );
    assert_eq!(a_m.log.lock().clone(), ["m0", "m1"]);
    assert_eq!(
        b_m.log.lock().clone(),
        ["m2"],
        "b resumed after what a handled"
    );
    producer.shutdown().await;
    cluster.stop().await;
}

/// One queue, `m0` sent, member `a` (with `shutdown` as its shutdown wait) handling it and
/// held there until `release`, and member `b` joined: the queue is b's once a lets it go.
struct Handover {
    cluster: Cluster,
    producer: Producer,
    release: Arc<tokio::sync::Semaphore>,
    overlaps: Arc<AtomicUsize>,
    a: PushConsumer,
    a_m: Member,
    b: PushConsumer,
    b_m: Member,
}

impl Handover {
    async fn start(shutdown: Duration) -> Self {
        let cluster = start_cluster(1).await;
        cluster.create_topic("Handover", 1).await;
        let producer = Producer::builder(cluster.config()).start().await.unwrap();
        producer.send(Message::new("Handover", "m0")).await.unwrap();
        let release = Arc::new(tokio::sync::Semaphore::new(0));
        let overlaps = Arc::new(AtomicUsize::new(0));
        let (a, a_m) = orderly_member(
            &cluster,
            "zz-a",
            "m0",
            release.clone(),
            None,
            overlaps.clone(),
            shutdown,
        )
        .await;
        let (b, b_m) = second_member(&cluster, &a_m, "m0", &release, &overlaps).await;
        Self {
            cluster,
            producer,
            release,
            overlaps,
            a,
            a_m,
            b,
            b_m,
        }
    }
}

/// A shutdown that timed out with an orderly handler still running unlocked its queue, and
/// the broker released a departing client's locks at once: the next member consumed the
/// queue beside that handler, out of order. Then the queue stayed locked only until the
/// broker let the lock lapse, 35 s after its last renewal, however long the handler ran. The
/// stopped consumer now renews the lock until the handler ends, and unlocks it then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_that_times_out_keeps_a_running_orderly_handlers_queue_locked_until_it_ends() {
    let h = Handover::start(Duration::from_millis(500)).await;
    h.a.shutdown().await;
    let stopped = tokio::time::Instant::now();
    assert!(
        h.a_m.running.load(Ordering::SeqCst),
        "a's handler outlived its shutdown"
    );
    h.producer
        .send(Message::new("Handover", "m1"))
        .await
        .unwrap();
    // A bounded look while a's handler runs, past the 35 s after which the broker lets a
    // departed client's lock lapse unless renewed: b rebalances every 3 s and asks for the
    // lock every 500 ms, so a free queue would be b's within this window.
    tokio::time::sleep_until(stopped + Duration::from_secs(42)).await;
    assert!(
        h.a_m.running.load(Ordering::SeqCst),
        "a's handler still runs (it gives up after 120 s)"
    );
    assert_eq!(
        h.b_m.log.lock().clone(),
        Vec::<String>::new(),
        "b did not consume the queue beside a's running handler"
    );
    h.release.add_permits(1);
    // Once the handler ends, the stopped consumer unlocks the queue and b takes it over
    // (m0 again: a's offset for it was never committed).
    assert!(
        wait_until(|| async { h.b_m.log.lock().iter().any(|m| m == "m1") }).await,
        "b consumed the queue after a's handler ended: {:?}",
        h.b_m.log.lock()
    );
    assert_eq!(h.overlaps.load(Ordering::SeqCst), 0);
    h.b.shutdown().await;
    h.producer.shutdown().await;
    h.cluster.stop().await;
}

/// A shutdown waiting for an orderly handler stopped renewing its queue's lock for the whole
/// wait (the lock loop ends with the shutdown): a wait longer than the lock's lifetime at the
/// broker (60 s after the last renewal) let the next member lock the queue and consume it
/// beside the running handler. The drained queues' locks are now renewed while the shutdown
/// waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_shutdown_wait_keeps_a_running_orderly_handlers_queue_locked() {
    let h = Handover::start(Duration::from_secs(66)).await;
    let started = tokio::time::Instant::now();
    let a = h.a;
    let stopping = tokio::spawn(async move { a.shutdown().await });
    // Within the wait (66 s): a lock last renewed at most 20 s before it began lapses at the
    // broker 60 s after that renewal unless renewed, and b, asking every 500 ms, would hold
    // it from then on.
    tokio::time::sleep_until(started + Duration::from_secs(64)).await;
    assert!(!stopping.is_finished(), "a's shutdown still waits");
    assert_eq!(
        h.b_m.log.lock().clone(),
        Vec::<String>::new(),
        "b did not consume the queue beside a's handler during the wait"
    );
    stopping.await.unwrap();
    assert!(
        h.a_m.running.load(Ordering::SeqCst),
        "a's handler still runs"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        h.b_m.log.lock().clone(),
        Vec::<String>::new(),
        "nor after a left"
    );
    h.release.add_permits(1);
    assert!(
        wait_until(|| async { h.b_m.log.lock().iter().any(|m| m == "m0") }).await,
        "b took the queue over once a's handler ended"
    );
    assert_eq!(h.overlaps.load(Ordering::SeqCst), 0);
    h.b.shutdown().await;
    h.producer.shutdown().await;
    h.cluster.stop().await;
}

#[tokio::test]
async fn a_push_consumer_without_long_polling_is_refused_at_start() {
    let started = PushConsumer::builder(sluice_client::ClientConfig::new("127.0.0.1:1"), "g")
        .subscribe("T", "*")
        .long_polling(Duration::ZERO)
        .start(|_m: ConsumedMessage| async { ConsumeResult::Success })
        .await;
    match started {
        Err(sluice_client::ClientError::Config(why)) => {
            assert!(why.contains("long_polling"), "{why}")
        }
        other => panic!("expected a config error, got {:?}", other.err()),
    }
}
