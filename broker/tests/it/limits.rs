//! Input limits and resource exhaustion over real TCP (practices §3 test 12), at the broker's
//! production limits rather than the small ones `hostile_input.rs` uses: a body of exactly
//! 4 MiB is stored and one byte more is refused on a connection that stays usable; frames
//! claiming more than the 16 MiB cap, up to 2 GiB, are refused from their prefix alone;
//! a slow-loris connection is dropped by the idle timeout; the connection cap refuses extras
//! without disturbing admitted clients; 1 000 hostile connections do not starve a client.

use crate::common;

use std::time::Duration;

use common::*;
use sluice_broker::{Broker, BrokerConfig, BrokerHandle, RemotingClient};
use sluice_protocol::remoting::frame::{DEFAULT_MAX_BODY, DEFAULT_MAX_FRAME};
use sluice_protocol::{request_code, response_code, RemotingCommand};
use sluice_store::StoreConfig;

/// The idle timeout the slow-loris test configures (`BrokerConfig::idle_timeout`, default
/// 120 s as Java's `serverChannelMaxIdleTimeSeconds`). The test runs on tokio's paused clock
/// instead of waiting in real time.
const IDLE_TIMEOUT: Duration = Duration::from_secs(45);

/// A broker with the production frame and body limits, and a store whose records fit a
/// 4 MiB body (the test store's records stop at 256 KiB).
async fn start_full_size(
    tweak: impl FnOnce(&mut BrokerConfig),
) -> (tempfile::TempDir, BrokerHandle) {
    let dir = tempfile::tempdir().unwrap();
    let mut store = StoreConfig::for_tests(dir.path());
    store.max_record_size = DEFAULT_MAX_BODY + 64 * 1024;
    store.segment_size = 32 << 20;
    store.max_write_batch_bytes = 8 << 20;
    store.max_unflushed_bytes = 16 << 20;
    let mut cfg = BrokerConfig::new(store);
    cfg.listen = localhost();
    tweak(&mut cfg);
    assert_eq!(
        (cfg.max_frame, cfg.max_body),
        (DEFAULT_MAX_FRAME, DEFAULT_MAX_BODY)
    );
    let broker = Broker::start(cfg).await.unwrap();
    (dir, broker)
}

fn max_offset_request(topic: &str, opaque: i32) -> RemotingCommand {
    RemotingCommand::request(
        request_code::GET_MAX_OFFSET,
        ext(&[("topic", topic), ("queueId", "0")]),
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

/// Produces `count` messages to `topic` queue 0 through `client` and pulls them back.
async fn produce_and_consume(
    broker: &BrokerHandle,
    client: &RemotingClient,
    topic: &str,
    count: usize,
) {
    for i in 0..count {
        send_ok(
            client,
            topic,
            0,
            format!("{topic}-{i}").as_bytes(),
            &props(None, None),
        )
        .await;
    }
    wait_dispatched(broker).await;
    let got = pull_all(client, "limits_group", topic, 0, 0, Some("*")).await;
    let bodies: Vec<String> = got
        .iter()
        .map(|m| String::from_utf8_lossy(&m.body).into_owned())
        .collect();
    let expected: Vec<String> = (0..count).map(|i| format!("{topic}-{i}")).collect();
    assert_eq!(
        bodies, expected,
        "every produced message is consumed, in order"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_4_mib_body_is_stored_and_one_byte_more_is_refused_on_a_connection_that_stays_usable() {
    let (_dir, broker) = start_full_size(|_| {}).await;
    let mut raw = Raw::connect(broker.local_addr()).await;

    let exact: Vec<u8> = (0..DEFAULT_MAX_BODY).map(|i| (i % 251) as u8).collect();
    let resp = ask(
        &mut raw,
        send_request("Big", 0, &exact, &props(None, None)).with_opaque(1),
    )
    .await;
    assert_eq!(resp.code, response_code::SUCCESS, "{:?}", resp.remark);

    let over = vec![b'x'; DEFAULT_MAX_BODY + 1];
    let resp = ask(
        &mut raw,
        send_request("Big", 0, &over, &props(None, None)).with_opaque(2),
    )
    .await;
    assert_eq!(
        resp.code,
        response_code::MESSAGE_ILLEGAL,
        "{:?}",
        resp.remark
    );
    assert_eq!(broker.stats().oversize_bodies, 1);

    // The queue offset appears once the dispatcher has caught up with the sync.
    wait_dispatched(&broker).await;
    let resp = ask(&mut raw, max_offset_request("Big", 3)).await;
    assert_eq!(resp.code, response_code::SUCCESS);
    assert_eq!(
        ext_i64(&resp, "offset"),
        1,
        "only the 4 MiB message was stored"
    );

    let client = RemotingClient::connect(broker.local_addr()).await.unwrap();
    let got = pull_all(&client, "big_readers", "Big", 0, 0, Some("*")).await;
    assert_eq!(got.len(), 1);
    assert!(
        got[0].body == exact,
        "the 4 MiB body comes back byte for byte"
    );
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_over_the_cap_are_refused_from_their_length_prefix_alone() {
    let (_dir, broker) = start_full_size(|_| {}).await;
    let addr = broker.local_addr();
    let good = RemotingClient::connect(addr).await.unwrap();
    let before = broker.stats().bad_frames;

    // Each prefix declares a frame the broker must not wait for, let alone buffer: 2 GiB - 1,
    // one byte over the 16 MiB cap, and a negative length. Only the 8 header bytes are sent,
    // so a broker that reserved or read the declared length would keep waiting instead of
    // closing.
    let just_over = (DEFAULT_MAX_FRAME - 4 + 1) as u32;
    for declared in [0x7FFF_FFFFu32, just_over, 0x8000_0000] {
        let mut raw = Raw::connect(addr).await;
        let mut prefix = declared.to_be_bytes().to_vec();
        prefix.extend_from_slice(&[0, 0, 0, 16]);
        raw.write(&prefix).await;
        assert!(
            raw.closed_by_peer(RPC).await,
            "a frame declaring {declared:#x} bytes is refused by closing"
        );
        send_ok(&good, "Steady", 0, b"still served", &props(None, None)).await;
    }
    assert!(broker.stats().bad_frames >= before + 3);

    // A frame of exactly the cap is read; its body is over the body cap, so it is refused
    // with MESSAGE_ILLEGAL on a connection that stays open.
    let mut raw = Raw::connect(addr).await;
    let mut at_cap = send_request("Steady", 0, b"", &props(None, None)).with_opaque(7);
    let header_len = frame(&at_cap).len();
    at_cap.body = vec![b'y'; DEFAULT_MAX_FRAME - header_len].into();
    assert_eq!(frame(&at_cap).len(), DEFAULT_MAX_FRAME);
    let resp = ask(&mut raw, at_cap).await;
    assert_eq!(resp.code, response_code::MESSAGE_ILLEGAL);
    assert_eq!(ask(&mut raw, max_offset_request("Steady", 8)).await.code, 0);
    broker.shutdown().await;
}

/// True while the peer has neither closed `raw` nor sent anything: a read would block.
fn still_open(raw: &Raw) -> bool {
    let mut byte = [0u8; 1];
    matches!(raw.stream.try_read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

// Paused time: the runtime's clock jumps to the next timer whenever every task waits, so the
// two-minute idle timeout passes at once and no assertion depends on real elapsed time.
#[tokio::test(flavor = "current_thread")]
async fn a_slow_loris_connection_is_dropped_by_the_configured_idle_timeout() {
    let (_dir, broker) = start_full_size(|c| {
        assert_eq!(c.idle_timeout, Duration::from_secs(120), "the default");
        c.idle_timeout = IDLE_TIMEOUT;
    })
    .await;
    let addr = broker.local_addr();
    let whole = frame(&max_offset_request("Steady", 1));

    let mut stalled = Raw::connect(addr).await;
    stalled.write(&whole[..10]).await;
    let mut dripping = Raw::connect(addr).await;
    dripping.write(&whole[..1]).await;
    tokio::task::yield_now().await;
    tokio::time::pause();

    tokio::time::sleep(IDLE_TIMEOUT / 2).await;
    assert!(still_open(&stalled), "not dropped before the idle timeout");
    // One byte every 4 s never completes the frame: the timeout covers the whole frame, so
    // trickling bytes does not keep the connection alive.
    let mut dropped_after_drips = None;
    for (drip, byte) in whole[1..].iter().enumerate().take(30) {
        tokio::time::sleep(Duration::from_secs(4)).await;
        if !still_open(&dripping) {
            dropped_after_drips = Some(drip);
            break;
        }
        let _ = tokio::io::AsyncWriteExt::write_all(&mut dripping.stream, &[*byte]).await;
    }
    assert!(
        dropped_after_drips.is_some(),
        "a connection trickling one byte every 4 s is dropped"
    );
    assert!(
        stalled.closed_by_peer(IDLE_TIMEOUT).await,
        "a connection stalled inside a frame is dropped"
    );

    tokio::time::resume();
    let client = RemotingClient::connect(addr).await.unwrap();
    produce_and_consume(&broker, &client, "AfterLoris", 3).await;
    broker.shutdown().await;
}

/// A socket with a tiny receive buffer, so the broker's send buffer fills after a few answers.
async fn connect_deaf(addr: std::net::SocketAddr) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(addr).await.unwrap()
}

// A peer that sends pulls with 200 KiB answers and never reads: the broker's writer blocks, its
// queue and in-flight slots fill, and the reader waits to answer SYSTEM_BUSY. Paused time
// (as above) lets the write-stall bound (the idle timeout) pass at once.
#[tokio::test(flavor = "current_thread")]
async fn a_peer_that_stops_reading_is_closed_by_the_write_stall_bound_and_others_are_served() {
    const INFLIGHT: usize = 4;
    /// Frames the deaf peer sends at most; far more than the broker takes before it stalls.
    const PULLS: usize = 400;
    let (_dir, broker) = start_full_size(|c| {
        c.idle_timeout = IDLE_TIMEOUT;
        c.max_inflight_per_connection = INFLIGHT;
    })
    .await;
    let addr = broker.local_addr();
    let other = RemotingClient::connect(addr).await.unwrap();
    send_ok(
        &other,
        "Unread",
        0,
        &vec![b'p'; 200 * 1024],
        &props(None, None),
    )
    .await;
    wait_dispatched(&broker).await;

    let deaf = connect_deaf(addr).await;
    let (_deaf_rd, mut deaf_wr) = deaf.into_split();
    let pull = frame(&pull_request("deaf_group", "Unread", 0, 0, 0, Some("*")));
    let sender = tokio::spawn(async move {
        for _ in 0..PULLS {
            if tokio::io::AsyncWriteExt::write_all(&mut deaf_wr, &pull)
                .await
                .is_err()
            {
                break;
            }
        }
    });
    // Stalled: the queue and the slots are full, so a pull was told SYSTEM_BUSY.
    let mut stalled = false;
    for _ in 0..1000 {
        if broker.stats().overload_rejections > 0 {
            stalled = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(stalled, "the deaf peer filled its connection's budget");
    tokio::time::pause();

    let resp = other
        .invoke(max_offset_request("Unread", 0), RPC)
        .await
        .unwrap();
    assert_eq!(
        resp.code,
        response_code::SUCCESS,
        "another connection is served meanwhile"
    );
    drop(other);

    let mut closed = false;
    for _ in 0..10 {
        tokio::time::sleep(IDLE_TIMEOUT / 2).await;
        if broker.stats().connections_open == 0 {
            closed = true;
            break;
        }
    }
    assert!(
        closed,
        "the connection of a peer that stopped reading is freed"
    );
    tokio::time::resume();
    sender.abort();

    let client = RemotingClient::connect(addr).await.unwrap();
    produce_and_consume(&broker, &client, "AfterDeaf", 3).await;
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_cap_refuses_extras_while_admitted_clients_keep_working() {
    const CAP: usize = 4;
    let (_dir, broker) = start_full_size(|c| c.max_connections = CAP).await;
    let addr = broker.local_addr();
    let mut admitted = Vec::new();
    for _ in 0..CAP {
        let client = RemotingClient::connect(addr).await.unwrap();
        send_ok(&client, "Capped", 0, b"hello", &props(None, None)).await;
        admitted.push(client);
    }

    let refused_before = broker.stats().connections_refused;
    for _ in 0..20 {
        let mut extra = Raw::connect(addr).await;
        extra.send(&max_offset_request("Capped", 1)).await;
        assert!(
            extra.closed_by_peer(RPC).await,
            "a connection over the cap is closed unanswered"
        );
    }
    assert!(broker.stats().connections_refused >= refused_before + 20);

    for (i, client) in admitted.iter().enumerate() {
        produce_and_consume(&broker, client, &format!("Capped{i}"), 5).await;
    }
    broker.shutdown().await;
}

/// The soft limit on open files, from `/proc/self/limits` (`None` when unreadable).
fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_hostile_connections_do_not_starve_a_well_behaved_client() {
    const HOSTILE: usize = 1000;
    // Both ends of every connection live in this process.
    if let Some(limit) = open_files_limit() {
        assert!(
            limit >= 2 * HOSTILE as u64 + 500,
            "this test needs `ulimit -n` of at least {}, not {limit}",
            2 * HOSTILE + 500
        );
    }
    let (_dir, broker) = start_full_size(|_| {}).await;
    let addr = broker.local_addr();
    let whole = frame(&max_offset_request("Steady", 1));
    let mut hostile = Vec::with_capacity(HOSTILE);
    for i in 0..HOSTILE {
        let mut raw = Raw::connect(addr).await;
        match i % 4 {
            0 => {}                                          // idle
            1 => raw.write(&whole[..whole.len() / 2]).await, // stalled inside a frame
            2 => raw.write(&[0, 0, 0x10]).await,             // stalled inside a prefix
            _ => raw.write(b"GET / HTTP/1.1\r\n\r\n").await, // garbage: closed by the broker
        }
        hostile.push(raw);
    }

    let client = RemotingClient::connect(addr).await.unwrap();
    produce_and_consume(&broker, &client, "Steady", 50).await;
    let stats = broker.stats();
    assert_eq!(
        stats.connections_refused, 0,
        "no hostile connection was over the cap"
    );
    assert!(
        stats.connections_open >= (HOSTILE * 3 / 4) as u64,
        "the idle ones are still held"
    );
    drop(hostile);
    broker.shutdown().await;
}

/// A properties header longer than RocketMQ's limit (32 767 bytes) is refused before it is
/// decoded, as RocketMQ refuses it. Before, it was decoded first (each pair scanning the earlier
/// ones: minutes of CPU for a 16 MiB header of distinct pairs), and one made only of malformed
/// pairs decoded to nothing and was stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_properties_header_over_the_limit_is_refused_before_it_is_decoded() {
    let (_dir, broker) = start_full_size(|_| {}).await;
    let mut raw = Raw::connect(broker.local_addr()).await;
    let mut req = send_request("Props", 0, b"body", &props(None, None)).with_opaque(1);
    let junk = "x".repeat(sluice_protocol::message::record::MAX_PROPERTIES_LEN + 1);
    req.ext_fields.insert("i", junk.clone());
    req.ext_fields.insert("properties", junk);
    let resp = ask(&mut raw, req).await;
    assert_eq!(
        resp.code,
        response_code::MESSAGE_ILLEGAL,
        "{:?}",
        resp.remark
    );
    assert!(
        resp.remark.as_deref().unwrap_or("").contains("properties"),
        "{:?}",
        resp.remark
    );
    let ok = ask(
        &mut raw,
        send_request("Props", 0, b"body", &props(None, None)).with_opaque(2),
    )
    .await;
    assert_eq!(
        ok.code,
        response_code::SUCCESS,
        "the connection stays usable"
    );
}

fn heartbeat(client_id: &str, consumer_groups: &[&str], producer_group: &str) -> RemotingCommand {
    let consumers: Vec<String> = consumer_groups
        .iter()
        .map(|g| {
            format!(
                r#"{{"consumeFromWhere":"CONSUME_FROM_LAST_OFFSET","consumeType":"CONSUME_PASSIVELY","groupName":"{g}","messageModel":"CLUSTERING","subscriptionDataSet":[]}}"#
            )
        })
        .collect();
    let body = format!(
        r#"{{"clientID":"{client_id}","consumerDataSet":[{}],"producerDataSet":[{{"groupName":"{producer_group}"}}]}}"#,
        consumers.join(",")
    );
    RemotingCommand::request(request_code::HEART_BEAT, Default::default())
        .with_body(body.into_bytes())
}

/// A consumer group of 121 bytes or more got a retry topic past 127 bytes, stored in a record
/// form 4.x clients cannot decode: the C++ client read its retries as garbage and acknowledged
/// them. Such a group is left out of the heartbeat, named with the bound; the heartbeat's other
/// groups are registered (refusing it whole let them all expire).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_group_whose_retry_topic_would_pass_127_bytes_is_left_out() {
    let cluster = start_cluster().await;
    let client = cluster.client().await;
    let (fits, long) = ("g".repeat(120), "h".repeat(121));
    let resp = client
        .invoke(heartbeat("c1", &[&fits, &long], "pg"), RPC)
        .await
        .unwrap();
    let remark = resp.remark.unwrap_or_default();
    assert_eq!(resp.code, response_code::INVALID_PARAMETER, "{remark}");
    assert!(
        remark.contains(&long) && remark.contains("at most 120 bytes"),
        "{remark}"
    );
    let services = cluster.broker.services();
    assert!(services.topic(&format!("%RETRY%{fits}")).is_some());
    assert!(
        services.topic(&format!("%RETRY%{long}")).is_none(),
        "no retry topic made for it"
    );
    assert!(
        services.consumer_group(&fits).is_some(),
        "the other group registered"
    );
    assert!(services.consumer_group(&long).is_none());
    // A send-back's fallback, a send to its retry topic, is refused too, with the reason.
    let resp = client
        .invoke(
            send_request(&format!("%RETRY%{long}"), 0, b"m", &props(None, None)),
            RPC,
        )
        .await
        .unwrap();
    assert_eq!(
        resp.code,
        response_code::INVALID_PARAMETER,
        "{:?}",
        resp.remark
    );
}

/// A client's send to a dead-letter topic that did not exist made it with the template's
/// four queues; dead-letter listings and replays read queue 0 and missed the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_topic_made_by_a_send_has_one_queue() {
    let cluster = start_cluster().await;
    let client = cluster.client().await;
    // Queue 2: a client without the topic's route sends by the template's four queues.
    let resp = client
        .invoke(
            send_request("%DLQ%victim", 2, b"m", &props(None, None)),
            RPC,
        )
        .await
        .unwrap();
    assert_eq!(resp.code, 0, "taken as queue 0: {:?}", resp.remark);
    let cfg = cluster.broker.services().topic("%DLQ%victim").unwrap();
    assert_eq!((cfg.read_queue_nums, cfg.write_queue_nums), (1, 1));
}

/// At `max_topics`, a heartbeat naming a new consumer group (whose retry topic cannot be
/// created) is answered with an error that names it, and the heartbeat's other groups are
/// still registered: refusing it whole let a client's every registration expire over one new
/// group. Auto-created topics and the new group's dead-letter topic are refused too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_max_topics_a_new_group_is_refused_and_the_heartbeats_other_groups_still_register() {
    let cluster = start_cluster_with(|c| c.max_topics = 12).await;
    let client = cluster.client().await;
    let first = client
        .invoke(heartbeat("c1", &["known"], "pg"), RPC)
        .await
        .unwrap();
    assert_eq!(first.code, 0, "{:?}", first.remark);
    // Fill the table with auto-created topics until one is refused (bounded by the limit).
    let mut refused = None;
    for i in 0..12 {
        let resp = client
            .invoke(
                send_request(&format!("Fill{i}"), 0, b"m", &props(None, None)),
                RPC,
            )
            .await
            .unwrap();
        if resp.code != 0 {
            refused = Some(resp);
            break;
        }
    }
    let refused = refused.expect("the table fills up");
    assert_eq!(refused.code, response_code::TOPIC_NOT_EXIST);
    assert!(refused
        .remark
        .as_deref()
        .unwrap_or("")
        .contains("max_topics"));
    let dlq = client
        .invoke(
            send_request("%DLQ%invented", 0, b"m", &props(None, None)),
            RPC,
        )
        .await
        .unwrap();
    assert_eq!(
        dlq.code,
        response_code::TOPIC_NOT_EXIST,
        "no way around it by prefix"
    );

    let both = client
        .invoke(heartbeat("c2", &["known", "brand-new"], "pg"), RPC)
        .await
        .unwrap();
    assert_eq!(both.code, response_code::SYSTEM_ERROR);
    let remark = both.remark.unwrap_or_default();
    assert!(
        remark.contains("brand-new") && !remark.contains("known"),
        "{remark}"
    );
    let ids = |group: &'static str| {
        let client = &client;
        async move {
            let h = ext(&[("consumerGroup", group)]);
            let r = client
                .invoke(
                    RemotingCommand::request(request_code::GET_CONSUMER_LIST_BY_GROUP, h),
                    RPC,
                )
                .await
                .unwrap();
            (r.code, String::from_utf8_lossy(&r.body).into_owned())
        }
    };
    let (code, known) = ids("known").await;
    assert_eq!(code, 0);
    assert!(
        known.contains("c2"),
        "the known group took the heartbeat: {known}"
    );
    let (_, brand_new) = ids("brand-new").await;
    assert!(!brand_new.contains("c2"), "{brand_new}");
    assert_eq!(
        cluster.broker.stats().heartbeat_groups_refused,
        1,
        "counted for operators (clients log only the code)"
    );
    cluster.stop().await;
}

/// Every group named in a heartbeat gets a retry topic, counted toward `max_topics`, and none
/// could be deleted: groups that were gone (or invented) held that room for good, and new
/// groups were refused. A retry topic now goes once its group has no member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_topic_of_a_group_without_members_can_be_deleted_to_make_room() {
    let cluster = start_cluster_with(|c| c.max_topics = 12).await;
    let services = cluster.broker.services();
    let gone = cluster.client().await;
    let mut i = 0;
    loop {
        let resp = gone
            .invoke(heartbeat("c1", &[&format!("g{i}")], "pg"), RPC)
            .await
            .unwrap();
        if resp.code != 0 {
            break;
        }
        i += 1;
        assert!(i < 12, "the table fills up");
    }
    let stays = cluster.client().await;
    let refused = stays
        .invoke(heartbeat("c2", &["late"], "pg"), RPC)
        .await
        .unwrap();
    assert_eq!(refused.code, response_code::SYSTEM_ERROR, "full");
    let why = services.delete_topic("%RETRY%g0").await.unwrap_err();
    assert!(why.to_string().contains("has members"), "{why}");

    drop(gone);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while services.delete_topic("%RETRY%g0").await.is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "members leave with their connection"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let admitted = stays
        .invoke(heartbeat("c2", &["late"], "pg"), RPC)
        .await
        .unwrap();
    assert_eq!(admitted.code, 0, "{:?}", admitted.remark);
    assert!(
        services.delete_topic("%DLQ%g1").await.is_err(),
        "dead-letter topics stay system topics"
    );
    cluster.stop().await;
}

/// A group's retry topic is reclaimed on its own once the group has had no member and the
/// topic nothing left to consume for `retry_topic_reclaim_after`: one with a backlog stays,
/// and so does one whose group has a member. The reclaimed topic's offsets stay, so the
/// group's next heartbeat creates it again and it resumes where it stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_topics_of_departed_drained_groups_are_reclaimed_and_keep_their_offsets() {
    let cluster =
        start_cluster_with(|c| c.retry_topic_reclaim_after = Duration::from_millis(500)).await;
    let services = cluster.broker.services();
    let gone = cluster.client().await;
    let hb = gone
        .invoke(heartbeat("c1", &["drained", "backlog"], "pg"), RPC)
        .await
        .unwrap();
    assert_eq!(hb.code, 0, "{:?}", hb.remark);
    let stays = cluster.client().await;
    let hb = stays
        .invoke(heartbeat("c2", &["stays"], "pg"), RPC)
        .await
        .unwrap();
    assert_eq!(hb.code, 0, "{:?}", hb.remark);
    for topic in ["%RETRY%drained", "%RETRY%backlog"] {
        send_ok(&gone, topic, 0, b"retry me", &props(None, None)).await;
    }
    wait_dispatched(&cluster.broker).await;
    services
        .commit_offset("drained", "%RETRY%drained", 0, 1)
        .unwrap();

    drop(gone);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while services.topic("%RETRY%drained").is_some() {
        assert!(
            std::time::Instant::now() < deadline,
            "the drained retry topic of a group without members is reclaimed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        services.topic("%RETRY%backlog").is_some(),
        "a retry topic with something left to consume stays"
    );
    assert!(
        services.topic("%RETRY%stays").is_some(),
        "a group with a member keeps its retry topic"
    );
    assert_eq!(
        services.query_offset("drained", "%RETRY%drained", 0),
        Some(1),
        "the offsets stay"
    );

    let back = cluster.client().await;
    let hb = back
        .invoke(heartbeat("c3", &["drained"], "pg"), RPC)
        .await
        .unwrap();
    assert_eq!(hb.code, 0, "{:?}", hb.remark);
    assert!(services.topic("%RETRY%drained").is_some(), "created again");
    let pulled = back
        .invoke(
            pull_request("drained", "%RETRY%drained", 0, 1, 0, Some("*")),
            RPC,
        )
        .await
        .unwrap();
    assert_eq!(
        pulled.code,
        response_code::PULL_NOT_FOUND,
        "resumed past what it consumed, over the same queue: {:?}",
        pulled.remark
    );
    assert_eq!(ext_i64(&pulled, "maxOffset"), 1);
    cluster.stop().await;
}

fn heartbeat_subscribing(group: &str, subscriptions: &[String]) -> RemotingCommand {
    let body = format!(
        r#"{{"clientID":"subs","consumerDataSet":[{{"consumeFromWhere":"CONSUME_FROM_LAST_OFFSET","consumeType":"CONSUME_PASSIVELY","groupName":"{group}","messageModel":"CLUSTERING","subscriptionDataSet":[{}]}}],"producerDataSet":[]}}"#,
        subscriptions.join(",")
    );
    RemotingCommand::request(request_code::HEART_BEAT, Default::default())
        .with_body(body.into_bytes())
}

/// A heartbeat's subscriptions were kept whatever their number and size: a 4 MiB body of
/// ~270 000 subscriptions kept ~65 MiB per group. Their count and bytes are bounded, the
/// refusal names the bound, and a heartbeat within them registers as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_subscriptions_past_their_bounds_are_refused() {
    let cluster = start_cluster().await;
    let client = cluster.client().await;
    let sub = |topic: &str, expr: &str| format!(r#"{{"topic":"{topic}","subString":"{expr}"}}"#);

    let many: Vec<String> = (0..5000).map(|i| sub(&format!("t{i}"), "*")).collect();
    let tags: Vec<String> = (0..200_000).map(|i| format!("tag{i}")).collect();
    let wide = vec![sub("Wide", &tags.join("||"))];
    for (group, subs, bound) in [
        ("many", &many, "5000 subscriptions, at most 4096"),
        ("wide", &wide, "bytes of subscriptions"),
    ] {
        let resp = client
            .invoke(heartbeat_subscribing(group, subs), RPC)
            .await
            .unwrap();
        let remark = resp.remark.unwrap_or_default();
        assert_eq!(resp.code, response_code::INVALID_PARAMETER, "{remark}");
        assert!(remark.contains(bound), "{remark}");
    }

    let fine: Vec<String> = (0..10).map(|i| sub(&format!("t{i}"), "a||b")).collect();
    let resp = client
        .invoke(heartbeat_subscribing("fine", &fine), RPC)
        .await
        .unwrap();
    assert_eq!(resp.code, 0, "{:?}", resp.remark);
    let services = cluster.broker.services();
    let info = services.consumer_group("fine").expect("registered");
    assert_eq!(info.topics.len(), 10, "{info:?}");
    assert!(services.consumer_group("many").is_none());
    assert!(services.consumer_group("wide").is_none());
    cluster.stop().await;
}
