//! Admin over HTTP: topics (create, list, get), groups (offsets, lag, dead letters), stats.

use crate::common;

use std::time::Duration;

use common::error_code;
use serde_json::json;

#[tokio::test]
async fn topics_are_created_idempotently_and_conflicting_shapes_refused() {
    let s = common::start().await;
    let (st, r) = s
        .post("/v1/topics", json!({"name": "Payments", "queues": 3}))
        .await;
    assert_eq!(st, 201, "{r}");
    assert_eq!(
        (r["write_queues"].as_i64(), r["perm"].as_i64()),
        (Some(3), Some(6))
    );
    let (st, _) = s
        .post("/v1/topics", json!({"name": "Payments", "queues": 3}))
        .await;
    assert_eq!(st, 200, "same shape again is not an error");
    let (st, r) = s
        .post("/v1/topics", json!({"name": "Payments", "queues": 5}))
        .await;
    assert_eq!((st, error_code(&r)), (409, "conflict"));
    for bad in [
        json!({"name": "a b"}),
        json!({"name": "%DLQ%x"}),
        json!({"name": "T", "perm": 7}),
    ] {
        let (st, r) = s.post("/v1/topics", bad.clone()).await;
        assert_eq!((st, error_code(&r)), (400, "bad_request"), "{bad}");
    }
    // Well-formed, out of range: 422 as HTTP.md's table says.
    for queues in [0, 4097] {
        let (st, r) = s
            .post("/v1/topics", json!({"name": "T", "queues": queues}))
            .await;
        assert_eq!((st, error_code(&r)), (422, "unprocessable"), "{queues}");
    }
    s.stop().await;
}

/// Two creates of one name with different shapes, at once: one 201 and one 409, and the
/// shape in force is the created one. Both used to pass the existence check and answer 201,
/// the last write silently setting the queue count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_creates_of_one_topic_with_different_shapes_get_one_201_and_one_409() {
    let s = common::start().await;
    for i in 0..20 {
        let name = format!("Race{i}");
        let (a, b) = tokio::join!(
            s.post("/v1/topics", json!({"name": name, "queues": 4})),
            s.post("/v1/topics", json!({"name": name, "queues": 16})),
        );
        let mut statuses = [a.0, b.0];
        statuses.sort_unstable();
        assert_eq!(statuses, [201, 409], "{name}: {a:?} / {b:?}");
        let winner = if a.0 == 201 { &a.1 } else { &b.1 };
        let live = s.broker.services().topic(&name).expect("created");
        assert_eq!(
            i64::from(live.write_queue_nums),
            winner["write_queues"].as_i64().unwrap(),
            "{name}: the shape in force is the one answered 201"
        );
    }
    s.stop().await;
}

#[tokio::test]
async fn topics_are_listed_and_described_with_their_queue_offsets() {
    let s = common::start().await;
    let (st, _) = s
        .post("/v1/topics", json!({"name": "Ledger", "queues": 2}))
        .await;
    assert_eq!(st, 201);
    for _ in 0..3 {
        let (st, _) = s
            .post(
                "/v1/topics/Ledger/messages",
                json!({"body": "x", "sharding_key": "one"}),
            )
            .await;
        assert_eq!(st, 201);
    }
    let (_, r) = s.get("/v1/topics").await;
    let names: Vec<&str> = r["topics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"Ledger"));
    assert!(
        !names.contains(&"SCHEDULE_TOPIC_XXXX"),
        "system topics only when asked"
    );
    let (_, r) = s.get("/v1/topics?system=true").await;
    assert!(r["topics"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["name"] == "SCHEDULE_TOPIC_XXXX" && t["system"] == true));

    assert!(s
        .broker
        .services()
        .store()
        .wait_dispatched(Duration::from_secs(10)));
    let (st, r) = s.get("/v1/topics/Ledger").await;
    assert_eq!(st, 200, "{r}");
    let queues = r["queues"].as_array().unwrap();
    assert_eq!(queues.len(), 2);
    let total: u64 = queues.iter().map(|q| q["messages"].as_u64().unwrap()).sum();
    assert_eq!(total, 3);
    let (st, r) = s.get("/v1/topics/Missing").await;
    assert_eq!((st, error_code(&r)), (404, "topic_not_found"));
    s.stop().await;
}

/// An HTTP consumer is a member (deleting the group's offsets is refused for it), but the
/// group showed `online: false` and no members, so nothing told an operator why.
#[tokio::test]
async fn a_group_with_http_consumers_shows_online_as_its_offsets_delete_sees_it() {
    let s = common::start().await;
    s.create_topic("Leased", 1);
    let (st, _) = s
        .post("/v1/topics/Leased/messages", json!({"body": "x"}))
        .await;
    assert_eq!(st, 201);
    let (st, r) = s
        .post(
            "/v1/groups/http-workers/topics/Leased/receive",
            json!({"max": 1, "wait_ms": 5000}),
        )
        .await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["messages"].as_array().map(Vec::len), Some(1), "{r}");
    let (st, r) = s.get("/v1/groups/http-workers").await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(
        (r["online"].clone(), r["http_consumers"].clone()),
        (json!(true), json!(true)),
        "{r}"
    );
    let (_, list) = s.get("/v1/groups").await;
    let listed = list["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["group"] == "http-workers")
        .cloned();
    assert_eq!(
        listed.map(|g| g["online"].clone()),
        Some(json!(true)),
        "{list}"
    );
    let (st, _) = s.delete("/v1/groups/http-workers/offsets").await;
    assert_eq!(st, 403, "the same members refuse the delete");
    s.stop().await;
}

/// Lag counted messages retention had deleted: the group resumes at the first kept one.
#[tokio::test]
async fn a_groups_lag_leaves_out_messages_retention_deleted() {
    let s = common::start_with(common::Options {
        broker: Box::new(|c| c.store.retention_bytes = Some(1)),
        ..common::Options::default()
    })
    .await;
    s.create_topic("Aged", 1);
    let services = s.broker.services();
    let body = "x".repeat(200 << 10);
    // 4 MiB segments: 50 bodies of 200 KiB fill more than two.
    for _ in 0..50 {
        let (st, r) = s
            .post("/v1/topics/Aged/messages", json!({"body": body}))
            .await;
        assert_eq!(st, 201, "{r}");
    }
    let store = services.store();
    assert!(store.wait_dispatched(Duration::from_secs(10)));
    services.commit_offset("aged-g", "Aged", 0, 0).unwrap();
    store.run_retention().unwrap();
    let (min, max) = (store.min_offset("Aged", 0), store.max_offset("Aged", 0));
    assert!(min > 0, "retention deleted the oldest segments");
    let (st, r) = s.get("/v1/groups/aged-g").await;
    assert_eq!(st, 200, "{r}");
    let o = r["offsets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["topic"] == "Aged")
        .cloned()
        .unwrap();
    assert_eq!(o["lag"].as_u64(), Some(max - min), "{r}");
    s.stop().await;
}

/// A group that committed in one queue of a topic showed only that queue's lag: the
/// messages waiting in the queues it had not reached yet were not counted.
#[tokio::test]
async fn a_groups_lag_counts_queues_it_has_not_committed_in() {
    let s = common::start().await;
    s.create_topic("Pair", 2);
    let services = s.broker.services();
    for (queue_id, n) in [(0, 2), (1, 3)] {
        for _ in 0..n {
            let mut p = sluice_broker::produce::Produce::new("p", "Pair", b"x".to_vec());
            p.queue_id = Some(queue_id);
            services.produce(p).await.unwrap();
        }
    }
    assert!(services.store().wait_dispatched(Duration::from_secs(10)));
    services.commit_offset("half", "Pair", 0, 2).unwrap();
    let (st, r) = s.get("/v1/groups/half").await;
    assert_eq!(st, 200, "{r}");
    let lines: Vec<_> = r["offsets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            (
                o["queue_id"].as_i64(),
                o["committed"].as_i64(),
                o["lag"].as_u64(),
            )
        })
        .collect();
    assert_eq!(
        lines,
        [(Some(0), Some(2), Some(0)), (Some(1), Some(-1), Some(3))]
    );
    assert_eq!(r["total_lag"], 3);
    // Not for a group that never consumed the topic: still unknown.
    let (st, r) = s.get("/v1/groups/nobody?topic=Pair").await;
    assert_eq!((st, error_code(&r)), (404, "not_found"), "{r}");
    s.stop().await;
}

#[tokio::test]
async fn a_group_shows_committed_offsets_lag_and_dead_letters() {
    let s = common::start().await;
    s.create_topic("Work", 1);
    for _ in 0..5 {
        let (st, _) = s
            .post("/v1/topics/Work/messages", json!({"body": "x"}))
            .await;
        assert_eq!(st, 201);
    }
    let services = s.broker.services();
    assert!(services.store().wait_dispatched(Duration::from_secs(10)));
    services.commit_offset("workers", "Work", 0, 2).unwrap();
    let (st, r) = s.get("/v1/groups/workers").await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["online"], false);
    let o = &r["offsets"][0];
    assert_eq!(
        (
            o["topic"].as_str(),
            o["committed"].as_i64(),
            o["lag"].as_u64()
        ),
        (Some("Work"), Some(2), Some(3))
    );
    assert_eq!(r["total_lag"], 3);
    let (_, r) = s.get("/v1/groups/workers?topic=Work").await;
    assert_eq!(r["offsets"].as_array().unwrap().len(), 1);
    let (st, r) = s.get("/v1/groups/workers?topic=Nope").await;
    assert_eq!((st, error_code(&r)), (404, "topic_not_found"));
    let (st, r) = s.get("/v1/groups/nobody").await;
    assert_eq!((st, error_code(&r)), (404, "not_found"));
    // A retired group's offsets can be deleted, once; saved before the answer.
    let (st, r) = s.delete("/v1/groups/workers/offsets").await;
    assert_eq!((st, r["topics"].as_u64()), (200, Some(1)), "{r}");
    assert_eq!(services.committed_groups(), Vec::<(String, String)>::new());
    let saved = std::fs::read_to_string(s.dir.path().join("config/consumerOffset.json")).unwrap();
    assert!(!saved.contains("workers"), "{saved}");
    let (st, r) = s.delete("/v1/groups/workers/offsets").await;
    assert_eq!((st, error_code(&r)), (404, "not_found"));
    // Not while the group has members (here an HTTP lease book).
    let (st, _) = s
        .post(
            "/v1/groups/live/topics/Work/receive",
            json!({"max": 1, "wait_ms": 5000}),
        )
        .await;
    assert_eq!(st, 200);
    services.commit_offset("live", "Work", 0, 1).unwrap();
    let (st, r) = s.delete("/v1/groups/live/offsets").await;
    assert_eq!((st, error_code(&r)), (403, "forbidden"), "{r}");
    s.stop().await;
}

#[tokio::test]
async fn groups_with_dead_letters_are_listed_and_stats_are_served() {
    let s = common::start().await;
    s.create_topic("Orders", 1);
    let (_, r) = s
        .post("/v1/topics/Orders/messages", json!({"body": "x"}))
        .await;
    let (_, phys) =
        sluice_protocol::message::ids::decode_offset_msg_id(r["offset_msg_id"].as_str().unwrap())
            .unwrap();
    let services = s.broker.services();
    assert!(services.store().wait_dispatched(Duration::from_secs(10)));
    services
        .send_back(&sluice_broker::SendBack {
            group: "audit".into(),
            phys_offset: phys,
            delay_level: -1,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(services.store().wait_dispatched(Duration::from_secs(10)));
    let (st, r) = s.get("/v1/groups").await;
    assert_eq!(st, 200);
    let g = r["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["group"] == "audit")
        .expect("audit listed");
    assert_eq!(g["dlq_waiting"], 1);
    let (_, r) = s.get("/v1/groups/audit").await;
    assert_eq!(r["dlq"]["total"], 1);

    let (st, r) = s.get("/v1/stats").await;
    assert_eq!(st, 200, "{r}");
    assert!(r["broker"]["messages_stored"].as_u64().unwrap() >= 1);
    assert!(r["store"]["written"].as_u64().unwrap() > 0);
    assert!(r["schedule"]["pending"].is_i64());
    assert_eq!(r["broker"]["dead_lettered"], 1);
    s.stop().await;
}

#[tokio::test]
async fn a_deleted_topic_is_gone_and_system_topics_cannot_be_deleted() {
    let s = common::start_with(common::Options {
        broker: Box::new(|b| b.auto_create_topic = false),
        ..common::Options::default()
    })
    .await;
    let (st, _) = s
        .post("/v1/topics", json!({"name": "Temp", "queues": 1}))
        .await;
    assert_eq!(st, 201);
    let (st, body) = s.delete("/v1/topics/Temp").await;
    assert_eq!(st, 204, "{body}");
    let (st, r) = s.get("/v1/topics/Temp").await;
    assert_eq!((st, error_code(&r)), (404, "topic_not_found"));
    let (st, r) = s
        .post("/v1/topics/Temp/messages", json!({"body": "x"}))
        .await;
    assert_eq!(
        (st, error_code(&r)),
        (404, "topic_not_found"),
        "sends are refused"
    );
    let (st, r) = s.delete("/v1/topics/Temp").await;
    assert_eq!((st, error_code(&r)), (404, "topic_not_found"));
    let (st, r) = s.delete("/v1/topics/RMQ_SYS_TRANS_HALF_TOPIC").await;
    assert_eq!((st, error_code(&r)), (403, "forbidden"));
    s.stop().await;
}

/// Bodies a group receives from `topic` (acknowledged), in order, until `want` came or a
/// receive found nothing.
async fn receive_bodies(s: &common::Server, group: &str, topic: &str, want: usize) -> Vec<String> {
    let mut bodies = Vec::new();
    for _ in 0..20 {
        let (st, got) = s
            .post(
                &format!("/v1/groups/{group}/topics/{topic}/receive"),
                json!({"max": 16, "wait_ms": 500}),
            )
            .await;
        assert_eq!(st, 200, "{got}");
        let msgs = got["messages"].as_array().unwrap().clone();
        if msgs.is_empty() {
            break;
        }
        let receipts: Vec<_> = msgs.iter().map(|m| m["receipt"].clone()).collect();
        let (st, r) = s
            .post(
                &format!("/v1/groups/{group}/ack"),
                json!({"receipts": receipts}),
            )
            .await;
        assert_eq!(st, 200, "{r}");
        bodies.extend(msgs.iter().map(|m| m["body"].as_str().unwrap().to_string()));
        if bodies.len() > want {
            break;
        }
    }
    bodies
}

/// A deleted topic's messages stay on disk until retention, but a topic created again under
/// its name (here by a send, after a restart) serves only what is sent to it: groups that
/// consumed the old one, and new groups, do not read the old messages again.
#[tokio::test]
async fn a_topic_created_again_after_a_delete_starts_empty() {
    let s = common::start().await;
    s.create_topic("Again", 1);
    for i in 0..3 {
        let (st, _) = s
            .post(
                "/v1/topics/Again/messages",
                json!({"body": format!("old-{i}"), "keys": ["old"]}),
            )
            .await;
        assert_eq!(st, 201);
    }
    assert_eq!(
        receive_bodies(&s, "early", "Again", 3).await,
        ["old-0", "old-1", "old-2"]
    );
    let (st, body) = s.delete("/v1/topics/Again").await;
    assert_eq!(st, 204, "{body}");
    assert!(
        s.metrics().await.contains("sluice_store_queue_floors 1"),
        "operators see the floor"
    );
    let (_, stats) = s.get("/v1/stats").await;
    assert_eq!(stats["store"]["queue_floors"], 1, "{stats}");
    let dir = s.stop().await;

    let s = common::start_in(dir, common::Options::default()).await;
    let (st, r) = s
        .post("/v1/topics/Again/messages", json!({"body": "new-0"}))
        .await;
    assert_eq!(st, 201, "auto-created again: {r}");
    assert_eq!(receive_bodies(&s, "early", "Again", 1).await, ["new-0"]);
    assert_eq!(receive_bodies(&s, "late", "Again", 1).await, ["new-0"]);
    // A look-up still finds the old messages, marked deleted, and not consumed by the groups
    // whose offsets (the new topic's) are past their queue positions.
    let (st, found) = s.get("/v1/messages?key=old&topic=Again").await;
    assert_eq!(st, 200, "{found}");
    let msgs = found["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 3, "{found}");
    for m in msgs {
        let events = m["events"].as_array().unwrap();
        assert!(events.iter().all(|e| e["kind"] != "consumed"), "{m}");
        assert!(events.iter().any(|e| e["state"] == "deleted"), "{m}");
    }
    s.stop().await;
}

#[tokio::test]
async fn a_group_that_only_acknowledged_is_listed() {
    let s = common::start().await;
    s.create_topic("Acks", 1);
    let (st, _) = s
        .post("/v1/topics/Acks/messages", json!({"body": "x"}))
        .await;
    assert_eq!(st, 201);
    let (_, got) = s
        .post(
            "/v1/groups/quiet/topics/Acks/receive",
            json!({"max": 1, "wait_ms": 5000}),
        )
        .await;
    let receipt = got["messages"][0]["receipt"].clone();
    let (st, _) = s
        .post("/v1/groups/quiet/ack", json!({"receipts": [receipt]}))
        .await;
    assert_eq!(st, 200);
    let (st, r) = s.get("/v1/groups").await;
    assert_eq!(st, 200);
    assert!(
        r["groups"]
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g["group"] == "quiet"),
        "{r}"
    );
    s.stop().await;
}

/// Walks a listing page by page (two per page), returning every name in order.
async fn walk(s: &common::Server, path: &str, key: &str, field: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut url = format!("{path}?limit=2");
    for _ in 0..100 {
        let (st, r) = s.get(&url).await;
        assert_eq!(st, 200, "{r}");
        let page = r[key].as_array().unwrap();
        assert!(page.len() <= 2, "{r}");
        names.extend(page.iter().map(|t| t[field].as_str().unwrap().to_owned()));
        match r["next_after"].as_str() {
            Some(next) => url = format!("{path}?limit=2&after={next}"),
            None => return names,
        }
    }
    panic!("{path}: the pages never ended");
}

#[tokio::test]
async fn topic_and_group_listings_page_by_name_without_repeats_or_gaps() {
    let s = common::start().await;
    for name in ["Pa", "Pb", "Pc", "Pd", "Pe"] {
        s.create_topic(name, 1);
        // Every group that ever heartbeated has a retry topic: that is how groups are found.
        s.create_topic(&format!("%RETRY%g{name}"), 1);
    }
    let (_, all) = s.get("/v1/topics?limit=10000").await;
    let want: Vec<String> = all["topics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .collect();
    assert!(want.len() >= 5, "{all}");
    assert_eq!(walk(&s, "/v1/topics", "topics", "name").await, want);

    let groups = walk(&s, "/v1/groups", "groups", "group").await;
    let mut sorted = groups.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(groups, sorted, "in order, each once");
    assert!(
        ["gPa", "gPe"].iter().all(|g| groups.iter().any(|x| x == g)),
        "{groups:?}"
    );

    for bad in ["/v1/topics?limit=0", "/v1/groups?limit=10001"] {
        let (st, r) = s.get(bad).await;
        assert_eq!(
            (st, common::error_code(&r)),
            (400, "bad_request"),
            "{bad}: {r}"
        );
    }
    s.stop().await;
}
