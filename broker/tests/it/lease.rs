//! Lease-based consumption through the Rust API: receive, ack, competing receivers, lease
//! expiry, nack to the dead-letter queue, restart, long polling, tags and stale receipts.
//! The broker runs without the schedule extension, so a retry copy is visible at once.

use crate::common;

use std::collections::HashSet;
use std::future::Future;
use std::time::Duration;

use common::*;
use sluice_broker::produce::Produce;
use sluice_broker::{
    Backoff, BrokerConfig, Delivery, DlqQuery, GroupRetryPolicy, LeaseError, LeaseService,
    ReceiveRequest,
};
use sluice_protocol::remoting::body::TopicConfig;
use sluice_protocol::Properties;

/// A generous bound on waiting for something that should happen within milliseconds.
const PATIENCE: Duration = Duration::from_secs(10);

fn short_leases(cfg: &mut BrokerConfig) {
    cfg.lease.min_visibility = Duration::from_millis(200);
    cfg.lease.expiry_tick = Duration::from_millis(20);
}

/// Group `g` retries after 10 ms, `max` times when given.
fn fast_retries(cfg: &mut BrokerConfig, max: Option<i32>) {
    let mut policy = GroupRetryPolicy {
        backoff: Backoff::Ladder(vec![Duration::from_millis(10)]),
        ..GroupRetryPolicy::default()
    };
    if let Some(max) = max {
        policy.max_reconsume_times = max;
    }
    cfg.retry.groups.insert("g".into(), policy);
}

/// One receive that does not wait, answered.
async fn receive_now(leases: &LeaseService, group: &str, topic: &str, max: usize) -> Vec<Delivery> {
    leases
        .receive(request(group, topic, max, Duration::ZERO))
        .await
        .unwrap()
}

fn request(group: &str, topic: &str, max: usize, wait: Duration) -> ReceiveRequest {
    ReceiveRequest {
        group: group.into(),
        topic: topic.into(),
        max,
        wait,
        visibility: Duration::from_secs(60),
        tag: None,
    }
}

fn topic(cluster: &Cluster, name: &str, queues: i32) {
    cluster
        .broker
        .services()
        .put_topic(TopicConfig::new(name, queues, 6))
        .unwrap();
}

/// Produces to queue `queue` and returns the message ids (UNIQ_KEYs).
async fn produce(
    cluster: &Cluster,
    topic: &str,
    queue: i32,
    bodies: &[&str],
    tag: Option<&str>,
) -> Vec<String> {
    let mut ids = Vec::new();
    for body in bodies {
        let mut p = Produce::new("p", topic, body.as_bytes().to_vec());
        p.queue_id = Some(queue);
        let mut props = Properties::new();
        if let Some(t) = tag {
            props.insert("TAGS", t);
        }
        props.insert("KEYS", format!("key-{body}"));
        props.insert("color", "blue");
        p.properties = props;
        let done = cluster
            .broker
            .services()
            .produce(p)
            .await
            .expect("produced");
        ids.push(done.uniq_key);
    }
    wait_dispatched(&cluster.broker).await;
    ids
}

fn receipts(ds: &[sluice_broker::Delivery]) -> Vec<String> {
    ds.iter().map(|d| d.receipt.clone()).collect()
}

#[tokio::test]
async fn a_receive_hands_out_produced_messages_with_their_fields() {
    let cluster = start_cluster().await;
    topic(&cluster, "Orders", 1);
    let ids = produce(&cluster, "Orders", 0, &["a", "b", "c"], Some("created")).await;
    let leases = cluster.broker.services().leases();
    let got = leases
        .receive(request("g", "Orders", 10, Duration::ZERO))
        .await
        .unwrap();
    assert_eq!(got.len(), 3);
    let d = &got[0];
    assert_eq!(d.msg_id, ids[0]);
    assert_eq!(&d.body[..], b"a");
    assert_eq!(
        (d.topic.as_str(), d.queue_id, d.queue_offset),
        ("Orders", 0, 0)
    );
    assert_eq!(d.tags.as_deref(), Some("created"));
    assert_eq!(d.keys, vec!["key-a".to_owned()]);
    assert_eq!(d.properties, vec![("color".to_owned(), "blue".to_owned())]);
    assert_eq!(d.delivery_count, 1);
    assert!(!d.compressed);
    let unique: HashSet<_> = got.iter().map(|d| d.receipt.clone()).collect();
    assert_eq!(unique.len(), 3, "every delivery has its own receipt");
    drop(leases);
    cluster.stop().await;
}

#[tokio::test]
async fn acks_move_the_committed_offset_to_the_lowest_unfinished_entry() {
    let cluster = start_cluster().await;
    topic(&cluster, "Orders", 1);
    produce(&cluster, "Orders", 0, &["a", "b", "c"], None).await;
    let services = cluster.broker.services();
    let leases = services.leases();
    let got = leases
        .receive(request("g", "Orders", 3, Duration::ZERO))
        .await
        .unwrap();
    let r = receipts(&got);
    assert_eq!(leases.ack("g", &r[1..2]), vec![Ok(())]);
    assert_eq!(
        services.query_offset("g", "Orders", 0),
        None,
        "nothing to commit while the lowest unfinished entry is where the group began"
    );
    assert_eq!(leases.ack("g", &r[0..1]), vec![Ok(())]);
    assert_eq!(services.query_offset("g", "Orders", 0), Some(2));
    assert_eq!(leases.ack("g", &r[2..3]), vec![Ok(())]);
    assert_eq!(services.query_offset("g", "Orders", 0), Some(3));
    assert_eq!(leases.in_flight("g"), 0);
    drop((leases, services));
    cluster.stop().await;
}

/// Committed on first use, every receive by a new group name left offsets (of every queue
/// and of the group's retry topic) behind for good, in memory and in the offsets file, and
/// the book was then dropped as idle: group names cycled by a client grew both without bound.
#[tokio::test]
async fn a_group_that_consumed_nothing_leaves_no_offsets_behind() {
    let cluster = start_cluster().await;
    topic(&cluster, "Orders", 2);
    topic(&cluster, "Empty", 1);
    produce(&cluster, "Orders", 0, &["a"], None).await;
    let services = cluster.broker.services();
    let leases = services.leases();
    for i in 0..20 {
        let got = leases
            .receive(request(&format!("passer-{i}"), "Empty", 1, Duration::ZERO))
            .await;
        assert!(got.unwrap().is_empty());
    }
    let got = leases
        .receive(request("nack-free", "Orders", 1, Duration::ZERO))
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    for i in 0..20 {
        let g = format!("passer-{i}");
        assert_eq!(services.query_offset(&g, "Empty", 0), None, "{g}");
        assert_eq!(services.query_offset(&g, &format!("%RETRY%{g}"), 0), None);
    }
    assert_eq!(services.query_offset("nack-free", "Orders", 1), None);
    assert_eq!(leases.ack("nack-free", &receipts(&got)), vec![Ok(())]);
    assert_eq!(services.query_offset("nack-free", "Orders", 0), Some(1));
    drop((leases, services));
    cluster.stop().await;
}

#[tokio::test]
async fn two_receivers_of_a_group_never_hold_the_same_message() {
    let cluster = start_cluster().await;
    topic(&cluster, "Orders", 4);
    for q in 0..4 {
        let bodies: Vec<String> = (0..10).map(|i| format!("{q}-{i}")).collect();
        let refs: Vec<&str> = bodies.iter().map(String::as_str).collect();
        produce(&cluster, "Orders", q, &refs, None).await;
    }
    let leases = cluster.broker.services().leases();
    let mut seen = HashSet::new();
    for _ in 0..20 {
        let (a, b) = tokio::join!(
            leases.receive(request("g", "Orders", 3, Duration::ZERO)),
            leases.receive(request("g", "Orders", 3, Duration::ZERO)),
        );
        let (a, b) = (a.unwrap(), b.unwrap());
        if a.is_empty() && b.is_empty() {
            break;
        }
        for d in a.iter().chain(&b) {
            assert!(
                seen.insert(d.msg_id.clone()),
                "{} delivered twice",
                d.msg_id
            );
        }
    }
    assert_eq!(seen.len(), 40);
    assert_eq!(leases.in_flight("g"), 40);
    drop(leases);
    cluster.stop().await;
}

#[tokio::test]
async fn an_expired_lease_is_delivered_again_and_its_old_receipt_is_refused() {
    let cluster = start_cluster_with(short_leases).await;
    topic(&cluster, "Orders", 1);
    let ids = produce(&cluster, "Orders", 0, &["a"], None).await;
    let leases = cluster.broker.services().leases();
    let mut req = request("g", "Orders", 1, Duration::ZERO);
    req.visibility = Duration::from_millis(200);
    let first = leases.receive(req).await.unwrap();
    assert_eq!(first.len(), 1);
    let again = leases
        .receive(request("g", "Orders", 1, PATIENCE))
        .await
        .unwrap();
    assert_eq!(again.len(), 1, "redelivered after the lease expired");
    assert_eq!(again[0].msg_id, ids[0]);
    assert_eq!(again[0].topic, "Orders");
    assert_eq!(again[0].delivery_count, 2);
    assert_eq!(
        leases.ack("g", &receipts(&first)),
        vec![Err(LeaseError::ReceiptExpired)]
    );
    assert_eq!(leases.ack("g", &receipts(&again)), vec![Ok(())]);
    assert_eq!(
        leases.ack("g", &receipts(&again)),
        vec![Err(LeaseError::AlreadyAcked)]
    );
    drop(leases);
    cluster.stop().await;
}

#[tokio::test]
async fn nacks_past_the_groups_maximum_dead_letter_the_message() {
    let cluster = start_cluster_with(|cfg| fast_retries(cfg, Some(2))).await;
    topic(&cluster, "Orders", 1);
    let ids = produce(&cluster, "Orders", 0, &["a"], None).await;
    let leases = cluster.broker.services().leases();
    for attempt in 1..=3u32 {
        let got = leases
            .receive(request("g", "Orders", 1, PATIENCE))
            .await
            .unwrap();
        assert_eq!(got.len(), 1, "delivery {attempt}");
        assert_eq!(got[0].delivery_count, attempt);
        assert_eq!(got[0].msg_id, ids[0]);
        let r = receipts(&got);
        assert_eq!(leases.nack("g", &r, None).await, vec![Ok(())]);
        assert_eq!(
            leases.nack("g", &r, None).await,
            vec![Err(LeaseError::AlreadyNacked)]
        );
    }
    wait_dispatched(&cluster.broker).await;
    let page = cluster
        .broker
        .dlq()
        .list(&DlqQuery {
            group: "g".into(),
            ..DlqQuery::default()
        })
        .unwrap();
    assert_eq!(page.messages.len(), 1);
    assert_eq!(page.messages[0].uniq_key.as_deref(), Some(ids[0].as_str()));
    assert_eq!(page.messages[0].delivery_count, 3);
    assert_eq!(page.messages[0].original_topic.as_deref(), Some("Orders"));
    let none = leases
        .receive(request("g", "Orders", 1, Duration::ZERO))
        .await
        .unwrap();
    assert!(none.is_empty(), "a dead letter is not delivered again");
    drop(leases);
    cluster.stop().await;
}

#[tokio::test]
async fn a_restart_resumes_from_the_committed_offset_and_forgets_old_receipts() {
    let cluster = start_cluster().await;
    topic(&cluster, "Orders", 1);
    let ids = produce(&cluster, "Orders", 0, &["a", "b", "c", "d"], None).await;
    let leases = cluster.broker.services().leases();
    let got = leases
        .receive(request("g", "Orders", 4, Duration::ZERO))
        .await
        .unwrap();
    let r = receipts(&got);
    assert_eq!(leases.ack("g", &r[..2]), vec![Ok(()), Ok(())]);
    drop(leases);
    let cluster = cluster.restart(|_| {}).await;
    let leases = cluster.broker.services().leases();
    assert_eq!(
        leases.ack("g", &r[2..3]),
        vec![Err(LeaseError::UnknownReceipt)]
    );
    let again = leases
        .receive(request("g", "Orders", 4, Duration::ZERO))
        .await
        .unwrap();
    let got_ids: Vec<_> = again.iter().map(|d| d.msg_id.clone()).collect();
    assert_eq!(
        got_ids,
        ids[2..].to_vec(),
        "unacked messages come back, acked ones do not"
    );
    assert!(again.iter().all(|d| d.delivery_count == 1));
    drop(leases);
    cluster.stop().await;
}

#[tokio::test]
async fn a_long_poll_returns_a_message_produced_while_it_waits() {
    let cluster = start_cluster().await;
    topic(&cluster, "Orders", 2);
    let leases = cluster.broker.services().leases();
    let waiting = {
        let leases = leases.clone();
        tokio::spawn(async move { leases.receive(request("g", "Orders", 5, PATIENCE)).await })
    };
    tokio::task::yield_now().await;
    let ids = produce(&cluster, "Orders", 1, &["late"], None).await;
    let got = waiting.await.unwrap().unwrap();
    assert_eq!(got.len(), 1, "the long poll returned the new message");
    assert_eq!(got[0].msg_id, ids[0]);
    drop(leases);
    cluster.stop().await;
}

#[tokio::test]
async fn shutdown_ends_a_long_poll_at_once() {
    let cluster = start_cluster().await;
    topic(&cluster, "Orders", 1);
    let leases = cluster.broker.services().leases();
    let waiting = tokio::spawn(async move {
        leases
            .receive(request("g", "Orders", 1, Duration::from_secs(30)))
            .await
    });
    tokio::task::yield_now().await;
    cluster.stop().await;
    let got = tokio::time::timeout(PATIENCE, waiting)
        .await
        .expect("the long poll ended with the broker")
        .unwrap()
        .unwrap();
    assert!(got.is_empty());
}

#[tokio::test]
async fn messages_whose_tag_does_not_match_are_skipped_for_the_group() {
    let cluster = start_cluster().await;
    topic(&cluster, "Orders", 1);
    produce(&cluster, "Orders", 0, &["a1"], Some("a")).await;
    produce(&cluster, "Orders", 0, &["b1"], Some("b")).await;
    produce(&cluster, "Orders", 0, &["c1"], Some("c")).await;
    let services = cluster.broker.services();
    let leases = services.leases();
    let mut req = request("g", "Orders", 10, Duration::ZERO);
    req.tag = Some("a || c".into());
    let got = leases.receive(req).await.unwrap();
    let bodies: Vec<_> = got.iter().map(|d| d.body.clone()).collect();
    assert_eq!(bodies, vec!["a1".as_bytes(), "c1".as_bytes()]);
    leases.ack("g", &receipts(&got));
    assert_eq!(services.query_offset("g", "Orders", 0), Some(3));
    drop((leases, services));
    cluster.stop().await;
}

#[tokio::test]
async fn retries_of_each_topic_reach_the_receivers_of_that_topic_only() {
    let cluster = start_cluster_with(|cfg| {
        cfg.retry.defaults.backoff = Backoff::Ladder(vec![Duration::from_millis(10)]);
    })
    .await;
    topic(&cluster, "X", 1);
    topic(&cluster, "Y", 1);
    let x = produce(&cluster, "X", 0, &["x"], None).await;
    let y = produce(&cluster, "Y", 0, &["y"], None).await;
    let leases = cluster.broker.services().leases();
    for t in ["X", "Y"] {
        let got = leases
            .receive(request("g", t, 1, Duration::ZERO))
            .await
            .unwrap();
        assert_eq!(leases.nack("g", &receipts(&got), None).await, vec![Ok(())]);
    }
    wait_dispatched(&cluster.broker).await;
    // Y first: the retry cursor passes X's retry, which must not be lost.
    let got_y = leases
        .receive(request("g", "Y", 5, PATIENCE))
        .await
        .unwrap();
    assert_eq!(
        got_y.iter().map(|d| &d.msg_id).collect::<Vec<_>>(),
        vec![&y[0]]
    );
    assert_eq!((got_y[0].topic.as_str(), got_y[0].delivery_count), ("Y", 2));
    let got_x = leases
        .receive(request("g", "X", 5, PATIENCE))
        .await
        .unwrap();
    assert_eq!(
        got_x.iter().map(|d| &d.msg_id).collect::<Vec<_>>(),
        vec![&x[0]]
    );
    assert_eq!((got_x[0].topic.as_str(), got_x[0].delivery_count), ("X", 2));
    drop(leases);
    cluster.stop().await;
}

/// Waits (bounded) until `group`'s retry queue holds `n` entries.
async fn retries_stored(cluster: &Cluster, group: &str, n: u64) {
    let store = cluster.broker.store();
    let topic = format!("%RETRY%{group}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while store.max_offset(&topic, 0) < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{topic} never held {n} entries"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `max_parked_retries_total` holds across groups, and fairly: at the bound, a group holding
/// its share (the bound over the books, at least one) stops keeping retries of other topics
/// aside and its retry cursor waits, while a group below its share may still keep one aside,
/// so one group that filled the bound cannot stall everyone's retries; at twice the bound
/// every group waits. Nothing is lost.
#[tokio::test]
async fn past_the_broker_wide_waiting_bound_only_groups_over_their_share_wait() {
    let cluster = start_cluster_with(|cfg| {
        cfg.retry.defaults.backoff = Backoff::Ladder(vec![Duration::from_millis(10)]);
        cfg.lease.max_parked_retries_total = 1;
    })
    .await;
    topic(&cluster, "X", 1);
    topic(&cluster, "Y", 1);
    produce(&cluster, "X", 0, &["x1", "x2"], None).await;
    let y = produce(&cluster, "Y", 0, &["y"], None).await;
    let leases = cluster.broker.services().leases();
    // Retry queues: g1 holds X's two retries then Y's; g2 and g3 one of X's then Y's.
    // Everything is received before the first nack, so no receive here meets a retry yet.
    let mut held = vec![
        ("g1", receive_now(&leases, "g1", "X", 2).await),
        ("g1", receive_now(&leases, "g1", "Y", 1).await),
    ];
    for g in ["g2", "g3"] {
        held.push((g, receive_now(&leases, g, "X", 1).await));
        held.push((g, receive_now(&leases, g, "Y", 1).await));
    }
    for (g, got) in &held {
        assert!(!got.is_empty());
        let r = receipts(got);
        assert!(leases.nack(g, &r, None).await.iter().all(Result::is_ok));
    }
    for (g, n) in [("g1", 3), ("g2", 2), ("g3", 2)] {
        retries_stored(&cluster, g, n).await;
    }
    wait_dispatched(&cluster.broker).await;
    let ids = |got: Vec<Delivery>| got.into_iter().map(|d| d.msg_id).collect::<Vec<_>>();
    let delivery_counts = |got: Vec<Delivery>| {
        let mut n: Vec<u32> = got.iter().map(|d| d.delivery_count).collect();
        n.sort_unstable();
        n
    };

    assert!(
        receive_now(&leases, "g1", "Y", 5).await.is_empty(),
        "g1 keeps one X retry aside (the whole bound, and its share of it), then waits"
    );
    assert_eq!(
        ids(receive_now(&leases, "g2", "Y", 5).await),
        [y[0].clone()],
        "g2, below its share, still keeps its X retry aside and gets Y's"
    );
    assert!(
        receive_now(&leases, "g3", "Y", 5).await.is_empty(),
        "at twice the bound every group waits, below its share or not"
    );
    assert_eq!(
        receive_now(&leases, "g1", "X", 5).await.len(),
        2,
        "g1's X retries: aside, then next (its Y retry is kept aside now)"
    );
    assert_eq!(
        receive_now(&leases, "g1", "Y", 5).await.len(),
        1,
        "g1's Y retry, from aside"
    );
    assert_eq!(
        ids(receive_now(&leases, "g3", "Y", 5).await),
        [y[0].clone()],
        "with room again, g3 moves on"
    );
    for g in ["g2", "g3"] {
        assert_eq!(
            delivery_counts(receive_now(&leases, g, "X", 5).await),
            [1, 2],
            "{g}'s X retry was not lost (and x2, which {g} never received, comes too)"
        );
    }
    drop(leases);
    cluster.stop().await;
}

#[tokio::test]
async fn foreign_forged_and_garbage_receipts_are_refused() {
    let cluster = start_cluster().await;
    topic(&cluster, "Orders", 1);
    produce(&cluster, "Orders", 0, &["a"], None).await;
    let leases = cluster.broker.services().leases();
    let got = leases
        .receive(request("g", "Orders", 1, Duration::ZERO))
        .await
        .unwrap();
    let r = receipts(&got);
    assert_eq!(leases.ack("other", &r), vec![Err(LeaseError::WrongGroup)]);
    let mut forged = r[0].clone();
    let last = forged.pop().unwrap();
    forged.push(if last == 'A' { 'B' } else { 'A' });
    let results = leases.ack("g", &["garbage".to_owned(), forged]);
    assert_eq!(results[0], Err(LeaseError::UnknownReceipt));
    assert!(results[1].is_err());
    assert_eq!(
        leases.extend("g", &r, Duration::from_secs(120)),
        vec![Ok(())]
    );
    assert!(matches!(
        leases.extend("g", &r, Duration::from_secs(13 * 3600))[0],
        Err(LeaseError::Invalid(_))
    ));
    assert_eq!(leases.ack("g", &r), vec![Ok(())]);
    drop(leases);
    cluster.stop().await;
}

#[tokio::test]
async fn a_group_holds_at_most_its_in_flight_limit() {
    let cluster = start_cluster_with(|cfg| cfg.lease.max_inflight_per_group = 3).await;
    topic(&cluster, "Orders", 1);
    produce(&cluster, "Orders", 0, &["a", "b", "c", "d", "e"], None).await;
    let leases = cluster.broker.services().leases();
    let got = leases
        .receive(request("g", "Orders", 10, Duration::ZERO))
        .await
        .unwrap();
    assert_eq!(got.len(), 3);
    let more = leases
        .receive(request("g", "Orders", 10, Duration::ZERO))
        .await
        .unwrap();
    assert!(more.is_empty());
    leases.ack("g", &receipts(&got[..1]));
    let more = leases
        .receive(request("g", "Orders", 10, Duration::ZERO))
        .await
        .unwrap();
    assert_eq!(more.len(), 1);
    drop(leases);
    cluster.stop().await;
}

/// The per-group bound alone multiplies by `max_groups`; `max_inflight_total` holds across
/// groups, and room given back by one group's ack is open to another.
#[tokio::test]
async fn every_group_together_holds_at_most_the_broker_wide_in_flight_limit() {
    let cluster = start_cluster_with(|cfg| cfg.lease.max_inflight_total = 3).await;
    topic(&cluster, "Orders", 1);
    produce(&cluster, "Orders", 0, &["a", "b", "c", "d", "e"], None).await;
    let leases = cluster.broker.services().leases();
    let first = receive_now(&leases, "g1", "Orders", 2).await;
    let second = receive_now(&leases, "g2", "Orders", 10).await;
    assert_eq!((first.len(), second.len()), (2, 1));
    let third = receive_now(&leases, "g3", "Orders", 10).await;
    assert!(third.is_empty(), "no room left in the broker");
    assert_eq!(leases.ack("g1", &receipts(&first)), vec![Ok(()), Ok(())]);
    let third = receive_now(&leases, "g3", "Orders", 10).await;
    assert_eq!(third.len(), 2, "g1's acks made room for g3");
    drop(leases);
    cluster.stop().await;
}

#[tokio::test]
async fn out_of_range_requests_and_unknown_topics_are_refused() {
    let cluster = start_cluster().await;
    topic(&cluster, "Orders", 1);
    let leases = cluster.broker.services().leases();
    let bad = [
        request("g", "Orders", 0, Duration::ZERO),
        request("g", "Orders", 33, Duration::ZERO),
        request("g", "Orders", 1, Duration::from_secs(31)),
        ReceiveRequest {
            visibility: Duration::from_millis(10),
            ..request("g", "Orders", 1, Duration::ZERO)
        },
    ];
    for req in bad {
        assert!(matches!(
            leases.receive(req).await,
            Err(LeaseError::Invalid(_))
        ));
    }
    assert_eq!(
        leases
            .receive(request("g", "Nope", 1, Duration::ZERO))
            .await
            .err(),
        Some(LeaseError::TopicNotFound("Nope".into()))
    );
    assert!(matches!(
        leases
            .receive(request("bad group!", "Orders", 1, Duration::ZERO))
            .await,
        Err(LeaseError::InvalidGroup(_))
    ));
    drop(leases);
    cluster.stop().await;
}

#[tokio::test]
async fn a_body_a_producer_compressed_is_handed_out_inflated() {
    use std::io::Write;
    let cluster = start_cluster().await;
    topic(&cluster, "Zipped", 1);
    let original = "a large body that a Java producer would compress ".repeat(200);
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::new(5));
    z.write_all(original.as_bytes()).unwrap();
    let mut p = Produce::new("p", "Zipped", z.finish().unwrap());
    p.sys_flag = 1; // COMPRESSED, as RocketMQ producers set it
    cluster.broker.services().produce(p).await.unwrap();
    let got = cluster
        .broker
        .services()
        .leases()
        .receive(request("g", "Zipped", 1, PATIENCE))
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    assert!(!got[0].compressed);
    assert_eq!(&got[0].body[..], original.as_bytes());
    cluster.stop().await;
}

/// Every group name a caller invented got a lease book kept for the broker's life (and its
/// offsets committed), so a loop of receives with fresh names grew memory without bound.
/// Past `max_groups` a new group is refused while every book is busy; groups that have a
/// book still receive.
#[tokio::test]
async fn a_new_group_past_max_groups_is_refused_while_every_book_holds_leases() {
    let cluster = start_cluster_with(|cfg| cfg.lease.max_groups = 2).await;
    topic(&cluster, "Orders", 1);
    produce(&cluster, "Orders", 0, &["a", "b"], None).await;
    let leases = cluster.broker.services().leases();
    for g in ["g1", "g2"] {
        let got = leases
            .receive(request(g, "Orders", 1, PATIENCE))
            .await
            .unwrap();
        assert_eq!(got.len(), 1, "{g} holds a lease");
    }
    assert_eq!(
        leases
            .receive(request("g3", "Orders", 1, Duration::ZERO))
            .await
            .err(),
        Some(LeaseError::TooManyGroups(2))
    );
    let got = leases
        .receive(request("g1", "Orders", 1, PATIENCE))
        .await
        .unwrap();
    assert_eq!(got.len(), 1, "a known group still receives");
    cluster.stop().await;
}

/// With `max_groups` books kept for the broker's life, the 10 001st group name ever used was
/// refused until a restart, even when every earlier group had long gone. At the bound, books
/// with nothing leased or open are dropped, and a group whose book was dropped resumes at
/// its committed offset: nothing is delivered twice and nothing is skipped.
#[tokio::test]
async fn idle_books_make_room_for_new_groups_and_a_returning_group_resumes_where_it_was() {
    let cluster = start_cluster_with(|cfg| cfg.lease.max_groups = 2).await;
    topic(&cluster, "Orders", 1);
    produce(&cluster, "Orders", 0, &["a", "b", "c"], None).await;
    let leases = cluster.broker.services().leases();
    // g1 takes and acks "a"; g2 takes "a" and keeps its lease.
    let got = leases
        .receive(request("g1", "Orders", 1, PATIENCE))
        .await
        .unwrap();
    assert_eq!(got[0].body, "a".as_bytes());
    assert!(leases.ack("g1", &[got[0].receipt.clone()])[0].is_ok());
    let held = leases
        .receive(request("g2", "Orders", 1, PATIENCE))
        .await
        .unwrap();
    assert_eq!(held.len(), 1);
    // g3 takes g1's idle book's place (within the bounded wait for the next sweep).
    let g3 = admitted_within_patience(&leases, "g3").await;
    assert_eq!(
        g3[0].body,
        "a".as_bytes(),
        "a new group starts at the queue's minimum"
    );
    assert_eq!(leases.in_flight("g2"), 1, "the busy book was kept");
    assert!(leases.ack("g2", &[held[0].receipt.clone()])[0].is_ok());
    assert!(leases.ack("g3", &[g3[0].receipt.clone()])[0].is_ok());
    // g1 comes back (dropping an idle book again) and resumes after "a".
    let back = admitted_within_patience(&leases, "g1").await;
    assert_eq!(
        back[0].body,
        "b".as_bytes(),
        "resumed at the committed offset"
    );
    cluster.stop().await;
}

/// A sweep that dropped idle books set the same 100 ms pause as one that found none, so
/// groups that receive, ack and go in quick succession were refused while idle books were
/// there. Only a fruitless sweep pauses the next now.
#[tokio::test]
async fn groups_coming_and_going_quickly_are_admitted_while_idle_books_are_there() {
    let cluster = start_cluster_with(|cfg| cfg.lease.max_groups = 1).await;
    topic(&cluster, "Orders", 1);
    produce(&cluster, "Orders", 0, &["a"], None).await;
    let leases = cluster.broker.services().leases();
    for g in ["g1", "g2", "g3", "g4"] {
        let got = leases
            .receive(request(g, "Orders", 1, Duration::ZERO))
            .await
            .unwrap_or_else(|e| panic!("{g} admitted at once: {e}"));
        assert_eq!(got.len(), 1, "{g}");
        assert!(leases.ack(g, &[got[0].receipt.clone()])[0].is_ok());
    }
    cluster.stop().await;
}

/// With the offsets table full (`max_consumer_offsets`), an HTTP group's commits were refused
/// while its acks answered ok: after a restart the acknowledged messages came again. A
/// receive of a group that could not commit in the topic is now refused before anything is
/// leased; a group whose entries exist still receives and commits.
#[tokio::test]
async fn a_group_that_could_not_commit_is_refused_before_anything_is_leased() {
    // Each receiving group takes two entries: the topic and its retry topic.
    let cluster = start_cluster_with(|cfg| cfg.max_consumer_offsets = 2).await;
    topic(&cluster, "Orders", 1);
    produce(&cluster, "Orders", 0, &["a", "b"], None).await;
    let leases = cluster.broker.services().leases();
    let got = leases
        .receive(request("g1", "Orders", 1, PATIENCE))
        .await
        .unwrap();
    assert!(leases.ack("g1", &[got[0].receipt.clone()])[0].is_ok());
    match leases
        .receive(request("g2", "Orders", 1, Duration::ZERO))
        .await
    {
        Err(LeaseError::OffsetsFull(why)) => {
            assert!(why.contains("max_consumer_offsets"), "{why}")
        }
        other => panic!("expected OffsetsFull, got {other:?}"),
    }
    assert_eq!(leases.in_flight("g2"), 0);
    let services = cluster.broker.services();
    assert_eq!(
        services.query_offset("g1", "Orders", 0),
        Some(1),
        "g1's ack was committed"
    );
    let next = leases
        .receive(request("g1", "Orders", 1, PATIENCE))
        .await
        .unwrap();
    assert_eq!(next[0].body, "b".as_bytes());
    cluster.stop().await;
}

/// A receive reserved its group's offset entries before the book was admitted (a 429 left
/// two entries for good), and a group that never committed kept them after its book was
/// dropped: short-lived groups polling an empty topic filled `max_consumer_offsets`.
#[tokio::test]
async fn offset_reservations_go_with_refused_receives_and_dropped_books() {
    let cluster = start_cluster_with(|cfg| cfg.lease.max_groups = 1).await;
    topic(&cluster, "Orders", 1);
    let services = cluster.broker.services();
    let leases = services.leases();
    let topics_of = |g: &str| {
        let mut t = services.committed_topics(g);
        t.sort();
        t
    };
    assert!(leases
        .receive(request("g1", "Orders", 1, Duration::ZERO))
        .await
        .unwrap()
        .is_empty());
    assert_eq!(topics_of("g1"), ["%RETRY%g1", "Orders"], "reserved");
    produce(&cluster, "Orders", 0, &["a"], None).await;
    let held = leases
        .receive(request("g2", "Orders", 1, PATIENCE))
        .await
        .unwrap();
    assert_eq!(held.len(), 1);
    assert!(
        topics_of("g1").is_empty(),
        "g1's book went, and its empty entries"
    );
    assert_eq!(
        leases
            .receive(request("g3", "Orders", 1, Duration::ZERO))
            .await
            .err(),
        Some(LeaseError::TooManyGroups(1))
    );
    assert!(
        topics_of("g3").is_empty(),
        "a refused receive reserves nothing"
    );
    assert!(leases.ack("g2", &[held[0].receipt.clone()])[0].is_ok());
    assert_eq!(services.query_offset("g2", "Orders", 0), Some(1));
    cluster.stop().await;
}

/// A receive fetched its group's book again for every look, so a long-polling group's book
/// counted as idle between looks: a new group took its place and the poll then made a second
/// book past the bound. A receive holds its book until it answers now.
#[tokio::test]
async fn a_long_polling_groups_book_is_not_dropped_under_it() {
    let cluster = start_cluster_with(|cfg| cfg.lease.max_groups = 1).await;
    topic(&cluster, "Orders", 1);
    let leases = cluster.broker.services().leases();
    let poller = {
        let leases = leases.clone();
        tokio::spawn(async move {
            leases
                .receive(request("g1", "Orders", 1, Duration::from_secs(2)))
                .await
        })
    };
    // This test's runtime has one thread: the poll runs into its wait while this task sleeps.
    tokio::time::sleep(Duration::from_millis(10)).await;
    // Until the poll answers, the bound has no room (sweeps included).
    let deadline = std::time::Instant::now() + Duration::from_millis(500);
    while std::time::Instant::now() < deadline {
        assert_eq!(
            leases
                .receive(request("g2", "Orders", 1, Duration::ZERO))
                .await
                .err(),
            Some(LeaseError::TooManyGroups(1)),
            "g1 is polling"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    produce(&cluster, "Orders", 0, &["a"], None).await;
    let got = poller.await.unwrap().unwrap();
    assert_eq!(got.len(), 1, "the poll got the message in its own book");
    assert!(leases.ack("g1", &[got[0].receipt.clone()])[0].is_ok());
    let g2 = admitted_within_patience(&leases, "g2").await;
    assert_eq!(
        g2[0].body,
        "a".as_bytes(),
        "g2 starts at the queue's minimum"
    );
    cluster.stop().await;
}

/// Receives one message for `group`, retrying while the bound refuses it (a sweep for idle
/// books runs at most every 100 ms), within [`PATIENCE`].
async fn admitted_within_patience(
    leases: &sluice_broker::LeaseService,
    group: &str,
) -> Vec<sluice_broker::Delivery> {
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        match leases.receive(request(group, "Orders", 1, PATIENCE)).await {
            Ok(got) => {
                assert_eq!(got.len(), 1, "{group} receives");
                return got;
            }
            Err(LeaseError::TooManyGroups(_)) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("{group} was not admitted: {e}"),
        }
    }
}

/// A receive's byte budget counted compressed bodies at their stored size, so 32 small
/// compressed records could inflate to gigabytes in one answer. They count inflated now: the
/// answer stops once the budget is spent (with at least one message).
#[tokio::test]
async fn compressed_bodies_count_inflated_against_the_receive_byte_budget() {
    use std::io::Write;
    const INFLATED: usize = 1 << 20;
    let cluster = start_cluster_with(|cfg| cfg.lease.max_receive_bytes = 2 * INFLATED).await;
    topic(&cluster, "Zipped", 1);
    for _ in 0..4 {
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::new(5));
        z.write_all(&vec![b'z'; INFLATED]).unwrap();
        let mut p = Produce::new("p", "Zipped", z.finish().unwrap());
        p.sys_flag = 1; // COMPRESSED
        cluster.broker.services().produce(p).await.unwrap();
    }
    let got = cluster
        .broker
        .services()
        .leases()
        .receive(request("g", "Zipped", 4, PATIENCE))
        .await
        .unwrap();
    assert_eq!(got.len(), 2, "two inflated bodies spend the 2 MiB budget");
    assert!(got
        .iter()
        .all(|d| d.body.len() == INFLATED && !d.compressed));
    cluster.stop().await;
}

/// An HTTP handler is dropped when its client disconnects. A nack dropped after it ended the
/// lease and before its copy was stored used to leave the entry "being handed back": never
/// delivered again, never finished.
#[tokio::test]
async fn a_nack_whose_caller_gives_up_midway_still_hands_the_message_back() {
    let cluster = start_cluster_with(|cfg| fast_retries(cfg, None)).await;
    topic(&cluster, "Orders", 1);
    let ids = produce(&cluster, "Orders", 0, &["a"], None).await;
    let leases = cluster.broker.services().leases();
    let got = leases
        .receive(request("g", "Orders", 1, PATIENCE))
        .await
        .unwrap();
    let r = receipts(&got);
    let mut nack = Box::pin(leases.nack("g", &r, None));
    let first = std::future::poll_fn(|cx| std::task::Poll::Ready(nack.as_mut().poll(cx))).await;
    assert!(
        first.is_pending(),
        "a durable copy does not finish in one poll"
    );
    drop(nack);
    let again = leases
        .receive(request("g", "Orders", 1, PATIENCE))
        .await
        .unwrap();
    assert_eq!(again.len(), 1, "the nacked message is delivered again");
    assert_eq!(again[0].msg_id, ids[0]);
    assert_eq!(again[0].delivery_count, 2);
}

/// The expiry pass has a budget per tick. It went to groups first-come in a fixed order, so
/// a group with many expired leases held up the expiry of every group after it.
#[tokio::test]
async fn a_group_with_many_expired_leases_does_not_hold_up_another_groups_expiry() {
    let cluster = start_cluster_with(|cfg| {
        short_leases(cfg);
        cfg.lease.max_expired_per_tick = 2;
        cfg.lease.expiry_tick = Duration::from_millis(50);
    })
    .await;
    topic(&cluster, "Orders", 1);
    let bodies: Vec<String> = (0..60).map(|i| format!("m{i}")).collect();
    let refs: Vec<&str> = bodies.iter().map(String::as_str).collect();
    produce(&cluster, "Orders", 0, &refs, None).await;
    let leases = cluster.broker.services().leases();
    let heavy = ["heavy-1", "heavy-2", "heavy-3", "heavy-4", "heavy-5"];
    for g in heavy {
        for _ in 0..2 {
            let mut req = request(g, "Orders", 32, Duration::ZERO);
            req.visibility = Duration::from_millis(200);
            leases.receive(req).await.unwrap();
        }
        assert_eq!(leases.in_flight(g), 60);
    }
    topic(&cluster, "Light", 1);
    produce(&cluster, "Light", 0, &["only"], None).await;
    let mut req = request("light", "Light", 1, Duration::ZERO);
    req.visibility = Duration::from_millis(200);
    assert_eq!(leases.receive(req).await.unwrap().len(), 1);
    let again = leases
        .receive(request("light", "Light", 1, PATIENCE))
        .await
        .unwrap();
    assert_eq!(
        again.len(),
        1,
        "the light group's expired lease is handed back"
    );
    assert_eq!(again[0].delivery_count, 2);
    let waiting: usize = heavy.iter().map(|g| leases.in_flight(g)).sum();
    assert!(
        waiting >= 200,
        "while the heavy groups still have most of their 300 expired leases: {waiting}"
    );
    drop(leases);
    cluster.stop().await;
}

/// RETRY_TOPIC means something only on a retry copy. A message of a topic carrying one (a
/// consumer forwarded a retried message with its properties) was delivered as that other
/// topic, and its retry copy went to that topic's receivers, never back to this one's.
#[tokio::test]
async fn a_message_carrying_a_foreign_retry_topic_is_delivered_and_retried_as_its_own_topic() {
    let cluster = start_cluster_with(|cfg| fast_retries(cfg, None)).await;
    topic(&cluster, "Orders", 1);
    let mut p = Produce::new("p", "Orders", b"forwarded".to_vec());
    p.queue_id = Some(0);
    let mut props = Properties::new();
    props.insert("RETRY_TOPIC", "Elsewhere");
    p.properties = props;
    cluster
        .broker
        .services()
        .produce(p)
        .await
        .expect("produced");
    wait_dispatched(&cluster.broker).await;
    let leases = cluster.broker.services().leases();
    let got = leases
        .receive(request("g", "Orders", 1, PATIENCE))
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].topic, "Orders",
        "delivered as the topic it was read from"
    );
    assert_eq!(leases.nack("g", &receipts(&got), None).await, vec![Ok(())]);
    let again = leases
        .receive(request("g", "Orders", 1, PATIENCE))
        .await
        .unwrap();
    assert_eq!(
        again.len(),
        1,
        "its retry comes back to this topic's receivers"
    );
    assert_eq!(again[0].delivery_count, 2);
    drop(leases);
    cluster.stop().await;
}

/// A nack whose copy could not be made (here the retry topic is read-only) made the message
/// deliverable again at once, so a failure that does not go away looped it at request rate.
/// It is now held for a lease period (`default_visibility`), then delivered again, also to a
/// long poll already waiting (it looks again every second).
#[tokio::test]
async fn a_message_whose_hand_back_failed_is_held_for_a_lease_period() {
    let cluster = start_cluster_with(|cfg| {
        short_leases(cfg);
        cfg.lease.default_visibility = Duration::from_secs(3);
    })
    .await;
    topic(&cluster, "Orders", 1);
    cluster
        .broker
        .services()
        .put_topic(TopicConfig::new("%RETRY%g", 1, 4))
        .unwrap();
    let ids = produce(&cluster, "Orders", 0, &["a"], None).await;
    let leases = cluster.broker.services().leases();
    let got = receive_now(&leases, "g", "Orders", 1).await;
    assert_eq!(got.len(), 1);
    let nacked_at = std::time::Instant::now();
    let nacked = leases.nack("g", &receipts(&got), None).await;
    assert!(
        matches!(nacked.as_slice(), [Err(LeaseError::HandBack(_))]),
        "{nacked:?}"
    );
    assert!(
        receive_now(&leases, "g", "Orders", 1).await.is_empty(),
        "not deliverable at once"
    );
    // One long poll, waiting already: it takes the message once the hold ends.
    let again = leases
        .receive(request("g", "Orders", 1, PATIENCE))
        .await
        .unwrap()
        .pop();
    let held = nacked_at.elapsed();
    assert_eq!(
        again.map(|d| d.msg_id),
        Some(ids[0].clone()),
        "delivered again later"
    );
    // A lower bound only (the hold is 3 s): a slow machine can only make it longer.
    assert!(
        held >= Duration::from_secs(2),
        "held {held:?}, not a lease period"
    );
    cluster.stop().await;
}

/// A group that received over HTTP kept its lease book until the books filled up, and the
/// book alone counted as a member: a retired HTTP group's offsets could never be deleted.
/// It counts as a member while it holds leases and for `client_expiry` after its last
/// receive, as a silent TCP member is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_group_counts_as_a_member_only_while_in_use_or_recently_seen() {
    let cluster = start_cluster_with(|c| c.client_expiry = Duration::from_secs(1)).await;
    topic(&cluster, "Orders", 1);
    produce(&cluster, "Orders", 0, &["a"], None).await;
    let services = cluster.broker.services();
    let leases = services.leases();
    let got = receive_now(&leases, "retired", "Orders", 1).await;
    assert_eq!(got.len(), 1);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let why = services.delete_group_offsets("retired").unwrap_err();
    assert!(why.contains("has members"), "a lease is held: {why}");
    assert_eq!(leases.ack("retired", &receipts(&got)), vec![Ok(())]);
    let why = services.delete_group_offsets("retired").unwrap_err();
    assert!(why.contains("has members"), "just acked: {why}");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        services.delete_group_offsets("retired"),
        Ok(2),
        "idle and unseen for client_expiry: no member left (Orders and the group's retry topic)"
    );
    let again = receive_now(&leases, "retired", "Orders", 1).await;
    assert_eq!(
        again.iter().map(|d| &d.msg_id).collect::<Vec<_>>(),
        got.iter().map(|d| &d.msg_id).collect::<Vec<_>>(),
        "without offsets the group starts at the queue's first message again (its old book \
         kept reading from where it was)"
    );
    drop((leases, services));
    cluster.stop().await;
}
