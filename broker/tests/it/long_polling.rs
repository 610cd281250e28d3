//! Long polling: a pull parked on an empty queue is answered, with its own opaque, once a
//! message arrives; it times out with PULL_NOT_FOUND; it does not hold up other requests.

use crate::common;

use std::time::{Duration, Instant};

use common::*;
use sluice_protocol::remoting::custom::UpdateAndCreateTopicRequestHeader;
use sluice_protocol::{request_code, RemotingCommand};

async fn create_topic(cluster: &Cluster, topic: &str, queues: i32) {
    let h = UpdateAndCreateTopicRequestHeader {
        topic: topic.into(),
        default_topic: "TBW102".into(),
        read_queue_nums: queues,
        write_queue_nums: queues,
        perm: 6,
        topic_filter_type: "SINGLE_TAG".into(),
        ..UpdateAndCreateTopicRequestHeader::default()
    };
    let req = RemotingCommand::request(request_code::UPDATE_AND_CREATE_TOPIC, h.to_ext());
    let resp = cluster.client().await.invoke(req, RPC).await.unwrap();
    assert_eq!(resp.code, 0, "{:?}", resp.remark);
}

/// Waits (bounded) until the broker reports `n` parked pulls.
async fn wait_parked(cluster: &Cluster, n: u64) {
    for _ in 0..500 {
        if cluster.broker.stats().parked_pulls == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "expected {n} parked pulls, have {}",
        cluster.broker.stats().parked_pulls
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_pull_returns_the_message_sent_after_it_with_its_original_opaque() {
    let cluster = start_cluster().await;
    create_topic(&cluster, "LpTopic", 2).await;
    let mut raw = Raw::connect(cluster.broker.local_addr()).await;
    let pull = pull_request("lp", "LpTopic", 1, 0, 20_000, Some("*")).with_opaque(4242);
    raw.send(&pull).await;
    wait_parked(&cluster, 1).await;

    let started = Instant::now();
    let producer = cluster.client().await;
    send_ok(&producer, "LpTopic", 1, b"wake up", &props(None, None)).await;
    let resp = raw
        .read_frame(Duration::from_secs(30))
        .await
        .expect("parked pull answered");
    eprintln!(
        "parked pull answered {:?} after the send",
        started.elapsed()
    );
    assert!(resp.is_response());
    assert_eq!(resp.opaque, 4242, "answered with the original opaque");
    assert_eq!(resp.code, 0, "{:?}", resp.remark);
    let msgs = decode_records(&resp.body);
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].body, b"wake up");
    assert_eq!(ext_i64(&resp, "nextBeginOffset"), 1);
    wait_parked(&cluster, 0).await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_pull_times_out_with_pull_not_found_and_the_requested_offset() {
    let cluster = start_cluster().await;
    let client = cluster.client().await;
    send_ok(&client, "LpTimeout", 0, b"m0", &props(None, None)).await;
    wait_dispatched(&cluster.broker).await;
    let resp = client
        .invoke(pull_request("lp", "LpTimeout", 0, 1, 300, Some("*")), RPC)
        .await
        .unwrap();
    assert_eq!(resp.code, 19, "{:?}", resp.remark);
    assert_eq!(ext_i64(&resp, "nextBeginOffset"), 1);
    assert_eq!(ext_i64(&resp, "maxOffset"), 1);
    assert_eq!(ext_i64(&resp, "suggestWhichBrokerId"), 0);
    assert_eq!(ext_i64(&resp, "minOffset"), 0);
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_pulls_do_not_hold_up_other_requests_on_the_same_connection() {
    let cluster = start_cluster().await;
    create_topic(&cluster, "LpBusy", 4).await;
    let mut raw = Raw::connect(cluster.broker.local_addr()).await;
    for q in 0..4 {
        raw.send(&pull_request("lp", "LpBusy", q, 0, 20_000, Some("*")).with_opaque(100 + q))
            .await;
    }
    wait_parked(&cluster, 4).await;
    let max = RemotingCommand::request(
        request_code::GET_MAX_OFFSET,
        ext(&[("topic", "LpBusy"), ("queueId", "0")]),
    )
    .with_opaque(7);
    raw.send(&max).await;
    let resp = raw
        .read_frame(Duration::from_secs(10))
        .await
        .expect("answered");
    assert_eq!((resp.opaque, resp.code), (7, 0));
    assert_eq!(resp.ext_fields.get_str("offset"), Some("0"));

    // Shutdown answers the parked pulls instead of leaving them hanging.
    let broker = cluster.broker;
    let stopping = tokio::spawn(broker.shutdown());
    let mut answered = 0;
    while let Some(resp) = raw.read_frame(Duration::from_secs(15)).await {
        assert_eq!(resp.code, 19);
        answered += 1;
        if answered == 4 {
            break;
        }
    }
    assert_eq!(answered, 4);
    stopping.await.unwrap();
    cluster.namesrv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_over_its_parking_cap_is_told_busy_while_another_connection_still_parks() {
    const CAP: i32 = 3;
    let cluster = start_cluster_with(|c| c.max_parked_pulls_per_connection = CAP as usize).await;
    create_topic(&cluster, "LpCap", 1).await;
    let addr = cluster.broker.local_addr();
    let mut greedy = Raw::connect(addr).await;
    for i in 0..CAP {
        greedy
            .send(&pull_request("lp", "LpCap", 0, 0, 20_000, Some("*")).with_opaque(100 + i))
            .await;
    }
    wait_parked(&cluster, CAP as u64).await;
    greedy
        .send(&pull_request("lp", "LpCap", 0, 0, 20_000, Some("*")).with_opaque(999))
        .await;
    let refused = greedy.read_frame(RPC).await.expect("answered at once");
    assert_eq!(refused.opaque, 999);
    assert_eq!(
        refused.code,
        sluice_protocol::response_code::SYSTEM_BUSY,
        "{:?}",
        refused.remark
    );
    assert_eq!(cluster.broker.stats().parked_pulls, CAP as u64);

    let mut other = Raw::connect(addr).await;
    other
        .send(&pull_request("lp", "LpCap", 0, 0, 20_000, Some("*")).with_opaque(7))
        .await;
    wait_parked(&cluster, CAP as u64 + 1).await;
    let producer = cluster.client().await;
    send_ok(&producer, "LpCap", 0, b"for everyone", &props(None, None)).await;
    let resp = other
        .read_frame(RPC)
        .await
        .expect("the other pull answered");
    assert_eq!((resp.opaque, resp.code), (7, 0), "{:?}", resp.remark);
    assert_eq!(decode_records(&resp.body)[0].body, b"for everyone");
    for _ in 0..CAP {
        let resp = greedy.read_frame(RPC).await.expect("parked pull answered");
        assert_eq!(resp.code, 0, "{:?}", resp.remark);
    }
    wait_parked(&cluster, 0).await;
    cluster.stop().await;
}

/// The broker-wide pool of parked pulls was a constant (100 000); it is `max_parked_pulls`
/// now, and a pull past it is told busy at once, on any connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_past_the_broker_wide_parking_cap_are_told_busy() {
    const CAP: i32 = 2;
    let cluster = start_cluster_with(|c| c.max_parked_pulls = CAP as usize).await;
    create_topic(&cluster, "LpPool", 1).await;
    let addr = cluster.broker.local_addr();
    let mut first = Raw::connect(addr).await;
    for i in 0..CAP {
        first
            .send(&pull_request("lp", "LpPool", 0, 0, 20_000, Some("*")).with_opaque(100 + i))
            .await;
    }
    wait_parked(&cluster, CAP as u64).await;
    let mut second = Raw::connect(addr).await;
    second
        .send(&pull_request("lp", "LpPool", 0, 0, 20_000, Some("*")).with_opaque(7))
        .await;
    let refused = second.read_frame(RPC).await.expect("answered at once");
    assert_eq!(
        (refused.opaque, refused.code),
        (7, sluice_protocol::response_code::SYSTEM_BUSY),
        "{:?}",
        refused.remark
    );
    assert_eq!(cluster.broker.stats().parked_pulls, CAP as u64);
    let producer = cluster.client().await;
    send_ok(&producer, "LpPool", 0, b"wake", &props(None, None)).await;
    for _ in 0..CAP {
        let resp = first.read_frame(RPC).await.expect("parked pull answered");
        assert_eq!(resp.code, 0, "{:?}", resp.remark);
    }
    wait_parked(&cluster, 0).await;
    cluster.stop().await;
}

/// Records of other tags move a parked tag-filtered pull on and leave it parked: it used to
/// wake for each and answer an empty PULL_RETRY_IMMEDIATELY, one round trip per batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_pull_skips_other_tags_and_answers_its_own() {
    let cluster = start_cluster().await;
    create_topic(&cluster, "LpTags", 1).await;
    let mut raw = Raw::connect(cluster.broker.local_addr()).await;
    let pull = pull_request("lp", "LpTags", 0, 0, 20_000, Some("A")).with_opaque(77);
    raw.send(&pull).await;
    wait_parked(&cluster, 1).await;
    let producer = cluster.client().await;
    for i in 0..3 {
        let body = format!("b{i}");
        send_ok(
            &producer,
            "LpTags",
            0,
            body.as_bytes(),
            &props(Some("B"), None),
        )
        .await;
    }
    wait_dispatched(&cluster.broker).await;
    send_ok(&producer, "LpTags", 0, b"mine", &props(Some("A"), None)).await;
    let resp = raw
        .read_frame(Duration::from_secs(30))
        .await
        .expect("parked pull answered");
    assert_eq!(resp.opaque, 77);
    assert_eq!(resp.code, 0, "{:?}", resp.remark);
    let msgs = decode_records(&resp.body);
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].body, b"mine");
    assert_eq!(ext_i64(&resp, "nextBeginOffset"), 4);
    wait_parked(&cluster, 0).await;
    cluster.stop().await;
}

/// When only other tags arrive before the deadline, the answer moves the consumer past them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_pull_that_saw_only_other_tags_times_out_past_them() {
    let cluster = start_cluster().await;
    create_topic(&cluster, "LpTagsTimeout", 1).await;
    let mut raw = Raw::connect(cluster.broker.local_addr()).await;
    let pull = pull_request("lp", "LpTagsTimeout", 0, 0, 5_000, Some("A")).with_opaque(78);
    raw.send(&pull).await;
    wait_parked(&cluster, 1).await;
    let producer = cluster.client().await;
    send_ok(&producer, "LpTagsTimeout", 0, b"b", &props(Some("B"), None)).await;
    let resp = raw
        .read_frame(Duration::from_secs(30))
        .await
        .expect("parked pull answered");
    assert_eq!(resp.opaque, 78);
    assert_eq!(resp.code, 19, "PULL_NOT_FOUND: {:?}", resp.remark);
    assert!(resp.body.is_empty());
    assert_eq!(ext_i64(&resp, "nextBeginOffset"), 1);
    cluster.stop().await;
}

/// More parked pulls on one connection than may hold an answer at once (32): all are
/// answered when a message arrives, in turns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_parked_pulls_than_answer_slots_are_all_answered() {
    const PULLS: i32 = 40;
    let cluster = start_cluster().await;
    create_topic(&cluster, "LpMany", 1).await;
    let mut raw = Raw::connect(cluster.broker.local_addr()).await;
    for i in 0..PULLS {
        let pull = pull_request("lp", "LpMany", 0, 0, 20_000, Some("*")).with_opaque(1000 + i);
        raw.send(&pull).await;
    }
    wait_parked(&cluster, PULLS as u64).await;
    let producer = cluster.client().await;
    send_ok(&producer, "LpMany", 0, b"for all", &props(None, None)).await;
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..PULLS {
        let resp = raw
            .read_frame(Duration::from_secs(30))
            .await
            .expect("every parked pull answered");
        assert_eq!(resp.code, 0, "{:?}", resp.remark);
        assert_eq!(decode_records(&resp.body)[0].body, b"for all");
        seen.insert(resp.opaque);
    }
    assert_eq!(seen.len(), PULLS as usize);
    wait_parked(&cluster, 0).await;
    cluster.stop().await;
}
