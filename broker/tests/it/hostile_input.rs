//! Hostile and malformed input over raw sockets, while a well-behaved client keeps producing:
//! random bytes, truncated frames, a 2 GiB length, an oversize body, unknown codes, bad
//! headers and bodies, a handler panic, too many connections and too many requests in flight.

use crate::common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;

use common::*;
use sluice_broker::{test_hooks, Broker, BrokerHandle, RemotingClient};
use sluice_protocol::{request_code, RemotingCommand};
use tokio::io::AsyncWriteExt;

const MAX_BODY: usize = 64 * 1024;

async fn start_small() -> (tempfile::TempDir, BrokerHandle) {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = broker_config(dir.path(), localhost());
    cfg.namesrv_addrs.clear();
    cfg.max_body = MAX_BODY;
    cfg.max_frame = 1 << 20;
    let broker = Broker::start(cfg).await.unwrap();
    (dir, broker)
}

/// A client that sends and checks a message every few milliseconds until told to stop;
/// returns how many round trips succeeded. Any failure fails the test.
fn well_behaved(
    client: Arc<RemotingClient>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        let mut ok = 0;
        for i in 0..100_000 {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let resp = client
                .invoke(
                    send_request(
                        "Steady",
                        0,
                        format!("steady-{i}").as_bytes(),
                        &props(None, None),
                    ),
                    RPC,
                )
                .await
                .expect("well-behaved client is served");
            assert_eq!(resp.code, 0, "{:?}", resp.remark);
            ok += 1;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        ok
    })
}

fn max_offset_request(opaque: i32) -> RemotingCommand {
    RemotingCommand::request(
        request_code::GET_MAX_OFFSET,
        ext(&[("topic", "Steady"), ("queueId", "0")]),
    )
    .with_opaque(opaque)
}

/// Sends a request on `raw` and returns its answer (asserting the opaque matches).
async fn ask(raw: &mut Raw, cmd: RemotingCommand) -> RemotingCommand {
    let opaque = cmd.opaque;
    raw.send(&cmd).await;
    let resp = raw
        .read_frame(RPC)
        .await
        .expect("answered, connection open");
    assert_eq!(resp.opaque, opaque);
    resp
}

fn pseudo_random(n: usize, mut seed: u64) -> Vec<u8> {
    (0..n)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_frames_close_only_their_own_connection() {
    let (_dir, broker) = start_small().await;
    let addr = broker.local_addr();
    let good = Arc::new(RemotingClient::connect(addr).await.unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let steady = well_behaved(Arc::clone(&good), Arc::clone(&stop));

    for seed in 1..=5u64 {
        let mut raw = Raw::connect(addr).await;
        raw.write(&pseudo_random(4096, seed)).await;
        raw.stream.shutdown().await.ok();
        assert!(
            raw.closed_by_peer(RPC).await,
            "random bytes (seed {seed}) end that connection"
        );
    }

    let mut raw = Raw::connect(addr).await;
    let whole = frame(&max_offset_request(1));
    raw.write(&whole[..whole.len() - 3]).await;
    raw.stream.shutdown().await.ok();
    assert!(
        raw.closed_by_peer(RPC).await,
        "a truncated frame ends that connection"
    );

    let before = broker.stats().bad_frames;
    let mut raw = Raw::connect(addr).await;
    raw.write(&[0x7F, 0xFF, 0xFF, 0xFF, 0, 0, 0, 10]).await;
    assert!(
        raw.closed_by_peer(RPC).await,
        "a 2 GiB frame is refused by closing"
    );
    let mut raw = Raw::connect(addr).await;
    raw.write(&json_frame("this is not json", b"")).await;
    assert!(
        raw.closed_by_peer(RPC).await,
        "an unreadable header is refused by closing"
    );
    assert!(broker.stats().bad_frames >= before + 2);

    stop.store(true, Ordering::Relaxed);
    let served = steady.await.unwrap();
    eprintln!("well-behaved client served {served} sends during the attack");
    assert!(served > 0);
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_error_codes_and_the_connection_stays_usable() {
    let (_dir, broker) = start_small().await;
    let addr = broker.local_addr();
    let good = Arc::new(RemotingClient::connect(addr).await.unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let steady = well_behaved(Arc::clone(&good), Arc::clone(&stop));
    let mut raw = Raw::connect(addr).await;

    let big =
        send_request("Steady", 0, &vec![b'x'; MAX_BODY + 1], &props(None, None)).with_opaque(11);
    let resp = ask(&mut raw, big).await;
    assert_eq!(resp.code, 13, "oversize body is MESSAGE_ILLEGAL");
    assert_eq!(ask(&mut raw, max_offset_request(12)).await.code, 0);
    assert_eq!(broker.stats().oversize_bodies, 1);

    let resp = ask(
        &mut raw,
        RemotingCommand::request(9999, Default::default()).with_opaque(13),
    )
    .await;
    assert_eq!(resp.code, 3);
    assert_eq!(
        resp.remark.as_deref(),
        Some(" request type 9999 not supported")
    );

    for (i, body) in [
        &b"{\"clientID\":"[..],
        b"\xff\xfe",
        br#"{"clientID":"c","consumerDataSet":[{"groupName":"g","consumeType":7}]}"#,
    ]
    .into_iter()
    .enumerate()
    {
        let hb = RemotingCommand::request(request_code::HEART_BEAT, Default::default())
            .with_body(body.to_vec())
            .with_opaque(20 + i as i32);
        let resp = ask(&mut raw, hb).await;
        assert_eq!(resp.code, 1, "malformed heartbeat {i} is SYSTEM_ERROR");
    }

    let bad_pull = RemotingCommand::request(
        request_code::PULL_MESSAGE,
        ext(&[
            ("consumerGroup", "g"),
            ("topic", "Steady"),
            ("queueId", "x"),
        ]),
    )
    .with_opaque(30);
    let resp = ask(&mut raw, bad_pull).await;
    assert_eq!(resp.code, 1);
    assert!(
        resp.remark.unwrap_or_default().contains("queueId"),
        "the remark names the field"
    );

    let mut no_topic = send_request("Steady", 0, b"x", &props(None, None)).with_opaque(31);
    no_topic.ext_fields.remove("b");
    let resp = ask(&mut raw, no_topic).await;
    assert_eq!(resp.code, 1);
    assert!(resp.remark.unwrap_or_default().contains('b'));

    let bad_topic = send_request("bad topic!", 0, b"x", &props(None, None)).with_opaque(32);
    assert_eq!(ask(&mut raw, bad_topic).await.code, 29);
    let system = send_request("SCHEDULE_TOPIC_XXXX", 0, b"x", &props(None, None)).with_opaque(33);
    assert_eq!(ask(&mut raw, system).await.code, 16);
    // SYSTEM_ERROR, as 4.x brokers answer it: 4.x producers retry it on another queue.
    let out_of_range = send_request("Steady", 4096, b"x", &props(None, None)).with_opaque(34);
    assert_eq!(ask(&mut raw, out_of_range).await.code, 1);

    stop.store(true, Ordering::Relaxed);
    assert!(steady.await.unwrap() > 0);
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpp_style_headers_are_read_and_responses_are_strict_json() {
    let (_dir, broker) = start_small().await;
    let mut raw = Raw::connect(broker.local_addr()).await;
    // Numbers as JSON numbers, language CPP, no serializeTypeCurrentRPC, trailing newline.
    let header = r#"{"code":310,"extFields":{"AccessKey":"","a":"pg","b":"CppTopic","c":"TBW102","d":4,"e":0,"f":0,"g":1700000000000,"h":0,"i":"TAGS\u0001x\u0002","k":false,"m":"0"},"flag":0,"language":"CPP","opaque":77,"remark":"","version":333}
"#;
    raw.write(&json_frame(header, b"from cpp")).await;
    let (header, _) = raw.read_raw(RPC).await.expect("answered");
    let v: serde_json::Value = serde_json::from_str(&header).unwrap();
    assert_eq!(v["code"], 0, "{header}");
    assert_eq!(v["opaque"], 77);
    assert_eq!(v["flag"], 1);
    assert_eq!(v["language"], "JAVA");
    assert_eq!(v["version"], 401);
    let ext = v["extFields"].as_object().expect("extFields object");
    assert!(
        ext.values().all(serde_json::Value::is_string),
        "all ext values are strings: {header}"
    );
    for key in ["msgId", "queueId", "queueOffset", "MSG_REGION"] {
        assert!(ext.contains_key(key), "{key} in {header}");
    }

    // A response without ext fields still carries an extFields object.
    let update = json_frame(
        r#"{"code":15,"extFields":{"consumerGroup":"g","topic":"CppTopic","queueId":0,"commitOffset":1},"flag":0,"language":"CPP","opaque":78,"version":333}"#,
        b"",
    );
    raw.write(&update).await;
    let (header, _) = raw.read_raw(RPC).await.expect("answered");
    let v: serde_json::Value = serde_json::from_str(&header).unwrap();
    assert_eq!(v["code"], 0);
    assert!(v["extFields"].is_object(), "{header}");
    broker.shutdown().await;
}

/// A send with `group` as its producer group (field `a` of the V2 header).
fn send_as(group: &str, opaque: i32) -> RemotingCommand {
    let mut cmd = send_request("Steady", 0, b"x", &props(None, None)).with_opaque(opaque);
    cmd.ext_fields.insert("a".to_owned(), group.to_owned());
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_groups_a_connection_sends_for_are_bounded_in_length_and_number() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = broker_config(dir.path(), localhost());
    cfg.namesrv_addrs.clear();
    cfg.max_groups_per_connection = 3;
    let broker = Broker::start(cfg).await.unwrap();
    let mut raw = Raw::connect(broker.local_addr()).await;

    let long = ask(&mut raw, send_as(&"g".repeat(256), 1)).await;
    assert_eq!(long.code, 29, "{:?}", long.remark);
    assert!(long.remark.unwrap().contains("at most 255"));
    assert_eq!(ask(&mut raw, send_as(&"g".repeat(255), 2)).await.code, 0);
    assert_eq!(ask(&mut raw, send_as("two", 3)).await.code, 0);
    assert_eq!(ask(&mut raw, send_as("three", 4)).await.code, 0);
    let fourth = ask(&mut raw, send_as("four", 5)).await;
    assert_eq!(fourth.code, 29);
    assert!(
        fourth.remark.unwrap().contains("max_groups_per_connection"),
        "the remark names the bound"
    );
    assert_eq!(
        ask(&mut raw, send_as("two", 6)).await.code,
        0,
        "a known group still sends"
    );
    // Another connection has room of its own.
    let mut other = Raw::connect(broker.local_addr()).await;
    assert_eq!(ask(&mut other, send_as("four", 7)).await.code, 0);
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_panic_is_answered_and_the_broker_keeps_serving() {
    test_hooks::ENABLED.store(true, Ordering::Relaxed);
    let (_dir, broker) = start_small().await;
    let client = RemotingClient::connect(broker.local_addr()).await.unwrap();
    let other = RemotingClient::connect(broker.local_addr()).await.unwrap();
    for _ in 0..3 {
        let resp = client
            .invoke(
                RemotingCommand::request(test_hooks::PANIC_REQUEST_CODE, Default::default()),
                RPC,
            )
            .await
            .expect("a panicking handler is still answered");
        assert_eq!(resp.code, 1);
        send_ok(&client, "AfterPanic", 0, b"still here", &props(None, None)).await;
        send_ok(&other, "AfterPanic", 0, b"me too", &props(None, None)).await;
    }
    assert_eq!(broker.stats().handler_panics, 3);
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_and_in_flight_limits_hold() {
    test_hooks::ENABLED.store(true, Ordering::Relaxed);
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = broker_config(dir.path(), localhost());
    cfg.namesrv_addrs.clear();
    cfg.max_connections = 2;
    cfg.max_inflight_per_connection = 1;
    let broker = Broker::start(cfg).await.unwrap();
    let addr = broker.local_addr();

    let mut a = Raw::connect(addr).await;
    assert_eq!(ask(&mut a, max_offset_request(1)).await.code, 0);
    let b = RemotingClient::connect(addr).await.unwrap();
    let mut third = Raw::connect(addr).await;
    assert!(
        third.closed_by_peer(RPC).await,
        "a third connection is refused"
    );
    assert!(broker.stats().connections_refused >= 1);

    // One slow request in flight: the next one on that connection is SYSTEM_BUSY after the
    // short wait for a slot.
    a.send(
        &RemotingCommand::request(test_hooks::SLOW_REQUEST_CODE, Default::default()).with_opaque(2),
    )
    .await;
    a.send(&max_offset_request(3)).await;
    let first = a.read_frame(RPC).await.expect("answered");
    assert_eq!((first.opaque, first.code), (3, 2), "{:?}", first.remark);
    assert!(first.remark.unwrap_or_default().contains("[OVERLOAD]"));
    let slow = a.read_frame(RPC).await.expect("answered");
    assert_eq!((slow.opaque, slow.code), (2, 0));
    assert_eq!(broker.stats().overload_rejections, 1);

    drop(b);
    let mut admitted = false;
    for _ in 0..500 {
        let mut again = Raw::connect(addr).await;
        again.send(&max_offset_request(9)).await;
        if again.read_frame(Duration::from_millis(200)).await.is_some() {
            admitted = true;
            break;
        }
    }
    assert!(admitted, "a slot frees up when a client leaves");
    broker.shutdown().await;
}

/// A broker (test hooks on) allowing one request in flight per connection, and a raw
/// connection to it.
async fn one_slot_broker() -> (tempfile::TempDir, BrokerHandle, Raw) {
    test_hooks::ENABLED.store(true, Ordering::Relaxed);
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = broker_config(dir.path(), localhost());
    cfg.namesrv_addrs.clear();
    cfg.max_inflight_per_connection = 1;
    let broker = Broker::start(cfg).await.unwrap();
    let a = Raw::connect(broker.local_addr()).await;
    (dir, broker, a)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_way_request_beyond_the_in_flight_limit_waits_instead_of_being_dropped() {
    use sluice_protocol::remoting::custom::{
        QueryConsumerOffsetRequestHeader, UpdateConsumerOffsetRequestHeader,
    };
    let (_dir, broker, mut a) = one_slot_broker().await;
    broker
        .services()
        .put_topic(sluice_protocol::remoting::body::TopicConfig::new("T", 1, 6))
        .unwrap();
    a.send(
        &RemotingCommand::request(test_hooks::SLOW_REQUEST_CODE, Default::default()).with_opaque(2),
    )
    .await;
    // One-way: nobody would read a SYSTEM_BUSY, so it must not be dropped for lack of a slot.
    let update = UpdateConsumerOffsetRequestHeader {
        consumer_group: "g".into(),
        topic: "T".into(),
        queue_id: 0,
        commit_offset: 42,
    };
    a.send(
        &RemotingCommand::request(request_code::UPDATE_CONSUMER_OFFSET, update.to_ext())
            .with_opaque(3)
            .oneway(),
    )
    .await;
    let slow = a.read_frame(RPC).await.expect("slow request answered");
    assert_eq!((slow.opaque, slow.code), (2, 0));
    // The one-way was read while the slow request held the only slot: had it been refused,
    // it would be counted by now. (The queries below may meet a busy slot and are retried.)
    assert_eq!(
        broker.stats().overload_rejections,
        0,
        "the one-way was not refused"
    );
    let q = QueryConsumerOffsetRequestHeader {
        consumer_group: "g".into(),
        topic: "T".into(),
        queue_id: 0,
        ..Default::default()
    };
    let mut answer = None;
    for _ in 0..100 {
        let resp = ask(
            &mut a,
            RemotingCommand::request(request_code::QUERY_CONSUMER_OFFSET, q.to_ext())
                .with_opaque(4),
        )
        .await;
        if resp.code == 0 {
            answer = resp.ext_fields.get_str("offset").map(str::to_owned);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        answer.as_deref(),
        Some("42"),
        "the one-way offset commit was applied"
    );
    broker.shutdown().await;
}

/// A request that finds the connection at its limit waits briefly for a slot (the connection
/// is not read meanwhile) instead of being told SYSTEM_BUSY at once: an async producer keeping
/// more sends outstanding than the limit is slowed, not failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_over_the_limit_waits_briefly_for_a_slot_instead_of_failing() {
    let (_dir, broker, mut a) = one_slot_broker().await;
    a.send(
        &RemotingCommand::request(test_hooks::BRIEF_REQUEST_CODE, Default::default())
            .with_opaque(2),
    )
    .await;
    a.send(&max_offset_request(3)).await;
    let first = a.read_frame(RPC).await.expect("answered");
    let second = a.read_frame(RPC).await.expect("answered");
    assert_eq!((first.opaque, first.code), (2, 0), "{:?}", first.remark);
    assert_eq!((second.opaque, second.code), (3, 0), "{:?}", second.remark);
    assert_eq!(broker.stats().overload_rejections, 0);
    broker.shutdown().await;
}

/// One-way requests have their own budget: a connection full of slow one-way requests (a
/// producer's END_TRANSACTIONs waiting for a sync) does not make its next send SYSTEM_BUSY.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_way_requests_in_flight_do_not_crowd_out_answered_requests() {
    let (_dir, broker, mut a) = one_slot_broker().await;
    a.send(
        &RemotingCommand::request(test_hooks::SLOW_REQUEST_CODE, Default::default())
            .with_opaque(2)
            .oneway(),
    )
    .await;
    let answer = ask(&mut a, max_offset_request(3)).await;
    assert_eq!(
        (answer.opaque, answer.code),
        (3, 0),
        "answered while the one-way holds its own slot: {:?}",
        answer.remark
    );
    assert_eq!(broker.stats().overload_rejections, 0);
    broker.shutdown().await;
}

/// A client that sends its next request the moment it reads an answer keeps exactly the limit
/// in flight: it must never be told "busy" because its request overtook the end of the task
/// that answered the previous one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_at_exactly_the_in_flight_limit_is_never_refused() {
    let (_dir, broker, mut a) = one_slot_broker().await;
    for opaque in 10..3_010 {
        let answer = ask(&mut a, max_offset_request(opaque)).await;
        assert_eq!(
            (answer.opaque, answer.code),
            (opaque, 0),
            "request {opaque}: {:?}",
            answer.remark
        );
    }
    assert_eq!(broker.stats().overload_rejections, 0);
    broker.shutdown().await;
}

/// A peer is answered in the header form it asked in: binary to a client that sends binary
/// (sluice-client's default, a Java client's option), JSON to one that sends JSON (the C++
/// client reads nothing else), switching when the peer does.
#[tokio::test]
async fn requests_are_answered_in_the_header_form_they_came_in() {
    let (_dir, broker, mut a) = one_slot_broker().await;
    for (opaque, binary) in [(1, false), (2, true), (3, true), (4, false)] {
        let cmd = max_offset_request(opaque);
        let mut bytes = BytesMut::new();
        if binary {
            sluice_protocol::remoting::frame::encode_binary(&cmd, &mut bytes).unwrap();
        } else {
            cmd.encode(&mut bytes).unwrap();
        }
        a.write(&bytes).await;
        let (serialize_type, answer) = a
            .read_typed_frame(Duration::from_secs(10))
            .await
            .expect("an answer");
        assert_eq!(
            (answer.opaque, answer.code),
            (opaque, 0),
            "{:?}",
            answer.remark
        );
        assert_eq!(
            serialize_type,
            u8::from(binary),
            "request {opaque} binary={binary}"
        );
        assert!(answer.ext_fields.contains_key("offset"), "{answer:?}");
    }
    broker.shutdown().await;
}
