//! Dead-letter queues: paging and filters, sizes, and replay tasks (subset by tag/key/time,
//! dry run, rate limit, cancel, audit, provenance, restart).

use crate::common;

use std::time::{Duration, Instant};

use common::*;
use sluice_broker::{
    BrokerHandle, DlqError, DlqFilter, DlqQuery, RemotingClient, ReplaySpec, ReplayState, SendBack,
};
use sluice_protocol::message::record::RecordView;
use sluice_protocol::Properties;

/// Produces `n` messages to `topic` (tag `tag_of(i)`, key `k<i>`) and dead-letters each for
/// group `group` through the Rust API. Returns their UNIQ_KEYs.
async fn dead_letters(
    cluster: &Cluster,
    client: &RemotingClient,
    group: &str,
    topic: &str,
    n: usize,
    tag_of: impl Fn(usize) -> &'static str,
) -> Vec<String> {
    let services = cluster.broker.services();
    let mut uniq = Vec::new();
    for i in 0..n {
        let key = format!("k{i}");
        let resp = send_ok(
            client,
            topic,
            0,
            format!("m{i}").as_bytes(),
            &props(Some(tag_of(i)), Some(&key)),
        )
        .await;
        let msg_id = resp.ext_fields.get_str("msgId").expect("msgId").to_owned();
        let (_, phys) = sluice_protocol::message::ids::decode_offset_msg_id(&msg_id).unwrap();
        uniq.push(resp.ext_fields.get_str("transactionId").unwrap().to_owned());
        wait_dispatched(&cluster.broker).await;
        let out = services
            .send_back(&SendBack {
                group: group.into(),
                phys_offset: phys,
                delay_level: -1,
                reason: Some(format!("failure {i}")),
                ..SendBack::default()
            })
            .await
            .expect("dead-lettered");
        assert!(out.dead_letter);
    }
    wait_dispatched(&cluster.broker).await;
    uniq
}

fn orders_queues(cluster: &Cluster) -> i32 {
    cluster
        .broker
        .services()
        .topic("Orders")
        .expect("Orders exists")
        .read_queue_nums
}

fn query(group: &str, filter: DlqFilter) -> DlqQuery {
    DlqQuery {
        group: group.into(),
        filter,
        limit: 1000,
        ..DlqQuery::default()
    }
}

/// Records of `topic` queue `q` as (properties, reconsume times).
async fn topic_records(
    client: &RemotingClient,
    topic: &str,
    queues: i32,
) -> Vec<(Properties, i32)> {
    let mut out = Vec::new();
    for q in 0..queues {
        let mut offset = 0;
        for _ in 0..100 {
            let resp = client
                .invoke(pull_request("reader", topic, q, offset, 0, Some("*")), RPC)
                .await
                .expect("pull");
            if resp.code != 0 {
                break;
            }
            let mut body = &resp.body[..];
            while !body.is_empty() {
                let v = RecordView::parse(body, usize::MAX).unwrap();
                out.push((Properties::decode(v.properties), v.header.reconsume_times));
                body = &body[v.total_size..];
            }
            offset = ext_i64(&resp, "nextBeginOffset");
        }
    }
    out
}

/// Records of `group`'s retry topic, where a replay copies dead letters by default.
async fn retry_records(client: &RemotingClient, group: &str) -> Vec<(Properties, i32)> {
    topic_records(client, &format!("%RETRY%{group}"), 1).await
}

async fn wait_done(broker: &BrokerHandle, id: &str) -> sluice_broker::ReplayStatus {
    let s = broker
        .dlq()
        .wait_replay(id, Duration::from_secs(20))
        .await
        .expect("status");
    assert_ne!(s.state, ReplayState::Running, "task did not finish in time");
    s
}

#[tokio::test]
async fn dlq_pages_and_filters_by_topic_key_tag_and_time() {
    let cluster = start_cluster().await;
    let client = cluster.client().await;
    let t0 = sluice_store::now_ms();
    dead_letters(&cluster, &client, "pg", "Orders", 7, |i| {
        if i % 2 == 0 {
            "A"
        } else {
            "B"
        }
    })
    .await;
    dead_letters(&cluster, &client, "pg", "Payments", 3, |_| "A").await;
    let dlq = cluster.broker.dlq();

    // Paging: pages of 3 cover all 10, in order, without repeats.
    let mut seen = Vec::new();
    let mut q = DlqQuery {
        group: "pg".into(),
        limit: 3,
        ..DlqQuery::default()
    };
    for _ in 0..10 {
        let page = dlq.list(&q).unwrap();
        seen.extend(page.messages.iter().map(|m| m.queue_offset));
        if page.end && page.messages.is_empty() {
            break;
        }
        q.start_offset = page.next_offset;
    }
    assert_eq!(seen, (0..10).collect::<Vec<u64>>());

    let count = |f: DlqFilter| dlq.list(&query("pg", f)).unwrap().messages.len();
    assert_eq!(
        count(DlqFilter {
            original_topic: Some("Payments".into()),
            ..Default::default()
        }),
        3
    );
    assert_eq!(
        count(DlqFilter {
            tag: Some("A".into()),
            ..Default::default()
        }),
        4 + 3
    );
    assert_eq!(
        count(DlqFilter {
            key: Some("k1".into()),
            ..Default::default()
        }),
        2
    );
    assert_eq!(
        count(DlqFilter {
            since_ms: Some(t0 - 1000),
            ..Default::default()
        }),
        10
    );
    assert_eq!(
        count(DlqFilter {
            since_ms: Some(sluice_store::now_ms() + 60_000),
            ..Default::default()
        }),
        0
    );
    assert_eq!(
        count(DlqFilter {
            until_ms: Some(t0 - 60_000),
            ..Default::default()
        }),
        0
    );

    let first = &dlq
        .list(&query("pg", DlqFilter::default()))
        .unwrap()
        .messages[0];
    assert_eq!(first.delivery_count, 1);
    assert_eq!(first.failure_reason.as_deref(), Some("failure 0"));
    assert_eq!(first.original_topic.as_deref(), Some("Orders"));
    assert_eq!(&first.body[..], b"m0");

    let stats = dlq.stats();
    let pg = stats.iter().find(|s| s.group == "pg").expect("stats of pg");
    assert_eq!((pg.total, pg.replayed, pg.waiting), (10, 0, 10));
    cluster.stop().await;
}

#[tokio::test]
async fn replaying_a_subset_moves_it_once_and_leaves_the_rest() {
    let cluster = start_cluster().await;
    let client = cluster.client().await;
    let uniq = dead_letters(&cluster, &client, "rg", "Orders", 10, |i| {
        if i < 4 {
            "A"
        } else {
            "B"
        }
    })
    .await;
    let dlq = cluster.broker.dlq();
    let s = dlq
        .start_replay(ReplaySpec {
            group: "rg".into(),
            filter: DlqFilter {
                tag: Some("A".into()),
                ..Default::default()
            },
            rate_per_sec: 1000,
            requested_by: Some("test".into()),
            ..ReplaySpec::default()
        })
        .await
        .expect("started");
    let done = wait_done(&cluster.broker, &s.id).await;
    assert_eq!(done.state, ReplayState::Completed);
    assert_eq!((done.matched, done.replayed, done.failed), (4, 4, 0));
    wait_dispatched(&cluster.broker).await;

    let all = retry_records(&client, "rg").await;
    let replayed: Vec<_> = all
        .iter()
        .filter(|(p, _)| p.get("SLUICE_REPLAY_TASK").is_some())
        .collect();
    assert_eq!(replayed.len(), 4);
    // Only this group gets them again: nothing was copied into the topic other groups read.
    assert!(topic_records(&client, "Orders", orders_queues(&cluster))
        .await
        .iter()
        .all(|(p, _)| p.get("SLUICE_REPLAY_TASK").is_none()));
    let mut got: Vec<_> = replayed
        .iter()
        .map(|(p, _)| p.get("UNIQ_KEY").unwrap().to_owned())
        .collect();
    got.sort();
    let mut want = uniq[..4].to_vec();
    want.sort();
    assert_eq!(got, want);
    for (p, reconsume) in &replayed {
        assert_eq!(p.get("SLUICE_REPLAY_TASK"), Some(s.id.as_str()));
        assert!(p.get("SLUICE_REPLAYED_FROM").is_some());
        assert_eq!(p.get("RETRY_TOPIC"), Some("Orders"), "a retry of its topic");
        assert_eq!(p.get("RECONSUME_TIME"), None, "fresh retry budget");
        assert_eq!(p.get("DELAY"), None);
        assert_eq!(*reconsume, 0);
    }
    // The rest stays; the replayed ones are hidden unless asked for.
    let left = dlq
        .list(&query("rg", DlqFilter::default()))
        .unwrap()
        .messages;
    assert_eq!(left.len(), 6);
    assert!(left.iter().all(|m| m.tag.as_deref() == Some("B")));
    let mut with = query("rg", DlqFilter::default());
    with.include_replayed = true;
    assert_eq!(
        dlq.list(&with)
            .unwrap()
            .messages
            .iter()
            .filter(|m| m.replayed)
            .count(),
        4
    );
    let st = dlq.stats().into_iter().find(|s| s.group == "rg").unwrap();
    assert_eq!((st.total, st.replayed, st.waiting), (10, 4, 6));

    // The same selection again replays nothing.
    let again = dlq
        .start_replay(ReplaySpec {
            group: "rg".into(),
            filter: DlqFilter {
                tag: Some("A".into()),
                ..Default::default()
            },
            rate_per_sec: 1000,
            ..ReplaySpec::default()
        })
        .await
        .unwrap();
    let again = wait_done(&cluster.broker, &again.id).await;
    assert_eq!((again.replayed, again.skipped), (0, 4));

    // A key subset to another topic.
    let by_key = dlq
        .start_replay(ReplaySpec {
            group: "rg".into(),
            filter: DlqFilter {
                key: Some("k7".into()),
                ..Default::default()
            },
            target_topic: Some("Elsewhere".into()),
            rate_per_sec: 1000,
            ..ReplaySpec::default()
        })
        .await
        .unwrap();
    assert_eq!(wait_done(&cluster.broker, &by_key.id).await.replayed, 1);
    wait_dispatched(&cluster.broker).await;
    let queues = cluster
        .broker
        .services()
        .topic("Elsewhere")
        .unwrap()
        .read_queue_nums;
    let elsewhere = topic_records(&client, "Elsewhere", queues).await;
    assert_eq!(elsewhere.len(), 1);
    assert_eq!(elsewhere[0].0.get("KEYS"), Some("k7"));

    let audit = dlq.audit().unwrap();
    let events: Vec<_> = audit
        .iter()
        .filter(|a| a.task.id == s.id)
        .map(|a| a.event.as_str())
        .collect();
    assert_eq!(events, vec!["started", "completed"]);
    assert_eq!(audit[0].task.requested_by.as_deref(), Some("test"));
    assert_eq!(cluster.broker.stats().replayed, 5);
    cluster.stop().await;
}

#[tokio::test]
async fn a_dry_run_counts_and_writes_nothing() {
    let cluster = start_cluster().await;
    let client = cluster.client().await;
    dead_letters(&cluster, &client, "dg", "Orders", 5, |i| {
        if i < 2 {
            "A"
        } else {
            "B"
        }
    })
    .await;
    let dlq = cluster.broker.dlq();
    let before = topic_records(&client, "Orders", orders_queues(&cluster))
        .await
        .len();
    let s = dlq
        .start_replay(ReplaySpec {
            group: "dg".into(),
            filter: DlqFilter {
                tag: Some("B".into()),
                ..Default::default()
            },
            dry_run: true,
            ..ReplaySpec::default()
        })
        .await
        .unwrap();
    let done = wait_done(&cluster.broker, &s.id).await;
    assert_eq!(
        (done.state, done.matched, done.replayed),
        (ReplayState::Completed, 3, 0)
    );
    wait_dispatched(&cluster.broker).await;
    assert_eq!(
        topic_records(&client, "Orders", orders_queues(&cluster))
            .await
            .len(),
        before
    );
    assert!(retry_records(&client, "dg").await.is_empty());
    assert_eq!(
        dlq.list(&query("dg", DlqFilter::default()))
            .unwrap()
            .messages
            .len(),
        5
    );
    cluster.stop().await;
}

#[tokio::test]
async fn the_rate_limit_holds_and_cancel_leaves_the_rest_in_the_dlq() {
    let cluster = start_cluster().await;
    let client = cluster.client().await;
    dead_letters(&cluster, &client, "cg", "Orders", 30, |_| "A").await;
    let dlq = cluster.broker.dlq();
    let started = Instant::now();
    let s = dlq
        .start_replay(ReplaySpec {
            group: "cg".into(),
            rate_per_sec: 5,
            ..ReplaySpec::default()
        })
        .await
        .unwrap();
    // A second task of the same group is refused while this one runs.
    assert!(dlq
        .start_replay(ReplaySpec {
            group: "cg".into(),
            ..ReplaySpec::default()
        })
        .await
        .is_err());
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let mid = dlq.replay(&s.id).unwrap();
    let elapsed = started.elapsed().as_secs_f64();
    assert!(
        (mid.replayed as f64) <= 5.0 * elapsed + 1.0,
        "{} replayed in {elapsed:.2} s at 5/s",
        mid.replayed
    );
    dlq.cancel_replay(&s.id).unwrap();
    let done = wait_done(&cluster.broker, &s.id).await;
    assert_eq!(done.state, ReplayState::Cancelled);
    assert!(done.replayed < 30);
    let left = dlq
        .list(&query("cg", DlqFilter::default()))
        .unwrap()
        .messages
        .len() as u64;
    assert_eq!(
        left + done.replayed,
        30,
        "every message is replayed or still waiting"
    );
    let events: Vec<_> = dlq.audit().unwrap().into_iter().map(|a| a.event).collect();
    assert_eq!(events, vec!["started".to_owned(), "cancelled".to_owned()]);
    cluster.stop().await;
}

#[tokio::test]
async fn a_task_running_at_shutdown_resumes_after_restart() {
    let cluster = start_cluster().await;
    let client = cluster.client().await;
    dead_letters(&cluster, &client, "sg", "Orders", 12, |_| "A").await;
    let s = cluster
        .broker
        .dlq()
        .start_replay(ReplaySpec {
            group: "sg".into(),
            rate_per_sec: 10,
            ..ReplaySpec::default()
        })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let cluster = cluster.restart(|_| {}).await;
    let status = cluster.broker.dlq().replay(&s.id).unwrap();
    assert!(status.resumes >= 1 || status.state == ReplayState::Completed);
    let done = wait_done(&cluster.broker, &s.id).await;
    assert_eq!(done.state, ReplayState::Completed);
    wait_dispatched(&cluster.broker).await;
    let client = cluster.client().await;
    let recs = retry_records(&client, "sg").await;
    let copies = recs
        .iter()
        .filter(|(p, _)| p.get("SLUICE_REPLAY_TASK") == Some(s.id.as_str()))
        .count();
    assert_eq!(
        copies, 12,
        "each dead letter replayed exactly once across the restart"
    );
    let left = cluster
        .broker
        .dlq()
        .list(&query("sg", DlqFilter::default()))
        .unwrap()
        .messages
        .len();
    assert_eq!(left, 0);
    cluster.stop().await;
}

#[tokio::test]
async fn two_replays_started_together_for_one_group_run_once_and_copy_each_letter_once() {
    let cluster = start_cluster().await;
    let client = cluster.client().await;
    let uniq = dead_letters(&cluster, &client, "twice", "Orders", 6, |_| "A").await;
    let dlq = cluster.broker.dlq();
    let spec = || ReplaySpec {
        group: "twice".into(),
        rate_per_sec: 1000,
        ..ReplaySpec::default()
    };
    // Both calls are polled before either finishes saving its task file: the window two HTTP
    // requests arriving together would hit.
    let (a, b) = tokio::join!(dlq.start_replay(spec()), dlq.start_replay(spec()));
    let (started, refused) = match (a, b) {
        (Ok(s), Err(e)) | (Err(e), Ok(s)) => (s, e),
        (a, b) => panic!("exactly one of two concurrent replays must start: {a:?} / {b:?}"),
    };
    assert!(
        matches!(&refused, DlqError::Busy(id) if *id == started.id),
        "the second is refused as busy with the first: {refused:?}"
    );
    let done = wait_done(&cluster.broker, &started.id).await;
    assert_eq!(
        (done.state, done.replayed, done.skipped),
        (ReplayState::Completed, 6, 0)
    );
    assert_eq!(
        dlq.replays().len(),
        1,
        "the refused call left no task behind"
    );
    wait_dispatched(&cluster.broker).await;
    let mut copies: Vec<_> = retry_records(&client, "twice")
        .await
        .into_iter()
        .filter(|(p, _)| p.get("SLUICE_REPLAY_TASK").is_some())
        .map(|(p, _)| p.get("UNIQ_KEY").unwrap().to_owned())
        .collect();
    copies.sort();
    let mut want = uniq;
    want.sort();
    assert_eq!(copies, want, "each dead letter copied exactly once");
    cluster.stop().await;
}

#[tokio::test]
async fn a_replay_whose_task_file_cannot_be_saved_leaves_its_group_free() {
    let cluster = start_cluster().await;
    let client = cluster.client().await;
    dead_letters(&cluster, &client, "sf", "Orders", 2, |_| "A").await;
    let dlq = cluster.broker.dlq();
    // A plain file where the task folder belongs: saving any task file fails.
    let tasks = cluster.dir.path().join("config/dlq/tasks");
    if tasks.exists() {
        std::fs::remove_dir_all(&tasks).unwrap();
    }
    std::fs::create_dir_all(tasks.parent().unwrap()).unwrap();
    std::fs::write(&tasks, b"in the way").unwrap();
    let spec = || ReplaySpec {
        group: "sf".into(),
        rate_per_sec: 1000,
        ..ReplaySpec::default()
    };
    let r = dlq.start_replay(spec()).await;
    assert!(matches!(r, Err(DlqError::State(_))), "{r:?}");
    assert!(dlq.replays().is_empty(), "the failed start left no task");

    std::fs::remove_file(&tasks).unwrap();
    let s = dlq
        .start_replay(spec())
        .await
        .expect("the group is not held by the failed start");
    let done = wait_done(&cluster.broker, &s.id).await;
    assert_eq!((done.state, done.replayed), (ReplayState::Completed, 2));
    cluster.stop().await;
}

/// The task file was saved but its audit line was not (a full disk): the start failed, yet
/// the file said "running", and the next start resumed the task next to any task started
/// instead. The file of a task that did not start is removed.
#[tokio::test]
async fn a_replay_whose_audit_line_cannot_be_written_leaves_no_task_file() {
    let cluster = start_cluster().await;
    let client = cluster.client().await;
    dead_letters(&cluster, &client, "sa", "Orders", 2, |_| "A").await;
    let dlq = cluster.broker.dlq();
    // A folder where the audit log belongs: appending a line fails.
    let audit = cluster.dir.path().join("config/dlq/audit.log");
    if audit.exists() {
        std::fs::remove_file(&audit).unwrap();
    }
    std::fs::create_dir_all(&audit).unwrap();
    let r = dlq
        .start_replay(ReplaySpec {
            group: "sa".into(),
            rate_per_sec: 1000,
            ..ReplaySpec::default()
        })
        .await;
    assert!(matches!(r, Err(DlqError::State(_))), "{r:?}");
    assert!(dlq.replays().is_empty(), "the failed start left no task");
    let tasks = cluster.dir.path().join("config/dlq/tasks");
    let left: Vec<_> = std::fs::read_dir(&tasks)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "task files left: {left:?}");
    cluster.stop().await;
}

/// Flips one bit inside the stored record at commit-log offset `phys`, so its checksum fails
/// and every read of the store skips it (as it skips any damaged record).
fn damage_record(data_dir: &std::path::Path, phys: u64) {
    use std::os::unix::fs::FileExt;
    let (base, path) = std::fs::read_dir(data_dir.join("commitlog"))
        .expect("commit-log folder")
        .filter_map(|e| {
            let path = e.ok()?.path();
            let base: u64 = path.file_name()?.to_str()?.parse().ok()?;
            (base <= phys).then_some((base, path))
        })
        .max()
        .expect("the segment holding the record");
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    // Inside the record's flag field: past the length and magic the framing reads first.
    let pos = phys - base + 20;
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, pos).unwrap();
    b[0] ^= 1;
    f.write_all_at(&b, pos).unwrap();
    f.sync_all().unwrap();
}

// Multi-threaded: before the fix the task spun without yielding and would have held the only
// thread of a current-thread runtime, so the bounded wait below could never end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_whose_remaining_letters_are_unreadable_completes_instead_of_spinning() {
    let dir = tempfile::tempdir().unwrap();
    let namesrv = start_namesrv().await;
    let cfg = broker_config(dir.path(), namesrv.local_addr());
    let broker = sluice_broker::Broker::start(cfg.clone()).await.unwrap();
    let cluster = Cluster {
        dir,
        namesrv,
        broker,
    };
    let client = cluster.client().await;
    dead_letters(&cluster, &client, "ug", "Orders", 4, |_| "A").await;
    let mut all = query("ug", DlqFilter::default());
    all.include_replayed = true;
    let letters = cluster.broker.dlq().list(&all).unwrap().messages;
    assert_eq!(letters.len(), 4);
    let Cluster {
        dir,
        namesrv,
        broker,
    } = cluster;
    broker.shutdown().await;

    // DLQ entries 0 and 1 become unreadable; 2 and 3 stay readable but lie past the end of a
    // task that was running over [0, 2) when the broker stopped.
    for m in &letters[..2] {
        let (_, phys) = sluice_protocol::message::ids::decode_offset_msg_id(&m.msg_id).unwrap();
        damage_record(&cfg.store.data_dir, phys);
    }
    let now = sluice_store::now_ms();
    let task = sluice_broker::ReplayStatus {
        id: "replay-unreadable-1".into(),
        group: "ug".into(),
        filter: DlqFilter::default(),
        target_topic: None,
        rate_per_sec: 1000,
        dry_run: false,
        max_messages: None,
        requested_by: None,
        state: ReplayState::Running,
        next_offset: 0,
        end_offset: 2,
        matched: 0,
        replayed: 0,
        skipped: 0,
        failed: 0,
        error: None,
        created_ms: now,
        updated_ms: now,
        resumes: 0,
    };
    let tasks = cfg.store.data_dir.join("config/dlq/tasks");
    std::fs::create_dir_all(&tasks).unwrap();
    std::fs::write(
        tasks.join(format!("{}.json", task.id)),
        serde_json::to_vec(&task).unwrap(),
    )
    .unwrap();

    let broker = sluice_broker::Broker::start(cfg).await.unwrap();
    let status = broker
        .dlq()
        .wait_replay(&task.id, Duration::from_secs(10))
        .await
        .unwrap();
    // Stopped before asserting: shutdown also ends a task that never finishes.
    Cluster {
        dir,
        namesrv,
        broker,
    }
    .stop()
    .await;
    assert_eq!(
        (status.state, status.next_offset, status.replayed),
        (ReplayState::Completed, 2, 0),
        "nothing before the task's end was readable, and what follows is not its to replay"
    );
}

#[tokio::test]
async fn a_replay_into_a_system_topic_is_refused_at_start() {
    let cluster = start_cluster().await;
    let client = cluster.client().await;
    dead_letters(&cluster, &client, "sysg", "Orders", 2, |_| "A").await;
    let dlq = cluster.broker.dlq();
    for target in [
        "SLUICE_SYS_TIMER",
        "RMQ_SYS_TRANS_HALF_TOPIC",
        "RMQ_SYS_TRANS_OP_HALF_TOPIC",
        "SCHEDULE_TOPIC_XXXX",
        "%DLQ%sysg",
        "%DLQ%other",
    ] {
        let r = dlq
            .start_replay(ReplaySpec {
                group: "sysg".into(),
                target_topic: Some(target.into()),
                rate_per_sec: 1000,
                ..ReplaySpec::default()
            })
            .await;
        assert!(
            matches!(&r, Err(DlqError::Forbidden(m)) if m.contains(target)),
            "a replay into {target} must be refused as forbidden: {r:?}"
        );
    }
    assert!(dlq.replays().is_empty(), "no task was created");
    let st = dlq.stats().into_iter().find(|s| s.group == "sysg").unwrap();
    assert_eq!((st.total, st.waiting), (2, 2), "every letter still waits");
    cluster.stop().await;
}

/// A replay that would match nothing or fail every message is refused at start, with the
/// reason, instead of walking the whole DLQ.
#[tokio::test]
async fn a_replay_that_can_match_nothing_is_refused_at_start() {
    let cluster = start_cluster().await;
    let client = cluster.client().await;
    dead_letters(&cluster, &client, "badg", "Orders", 1, |_| "A").await;
    let dlq = cluster.broker.dlq();
    let spec = || ReplaySpec {
        group: "badg".into(),
        rate_per_sec: 1000,
        ..ReplaySpec::default()
    };
    let mut empty_tag = spec();
    empty_tag.filter.tag = Some(String::new());
    let mut backwards = spec();
    backwards.filter.since_ms = Some(2_000);
    backwards.filter.until_ms = Some(1_000);
    let mut none = spec();
    none.max_messages = Some(0);
    for (bad, says) in [
        (empty_tag, "tag must not be empty"),
        (backwards, "is after until_ms"),
        (none, "max must be at least 1"),
    ] {
        let r = dlq.start_replay(bad).await;
        assert!(
            matches!(&r, Err(DlqError::Invalid(m)) if m.contains(says)),
            "{says}: {r:?}"
        );
    }
    assert!(dlq.replays().is_empty(), "no task was created");
    cluster.stop().await;
}

/// A producer may set RETRY_TOPIC on a message of a topic. It means something only on a
/// retry copy, so the dead letter of such a message names the topic it was consumed from, and
/// its replay goes there, never into the topic the producer named (here a system topic).
#[tokio::test]
async fn a_producer_set_retry_topic_does_not_redirect_a_dead_letters_replay() {
    let cluster = start_cluster().await;
    let client = cluster.client().await;
    let mut p = props(Some("A"), Some("forged"));
    p.insert("RETRY_TOPIC", "SLUICE_SYS_TIMER");
    let resp = send_ok(&client, "Orders", 0, b"forged", &p).await;
    let msg_id = resp.ext_fields.get_str("msgId").unwrap().to_owned();
    let (_, phys) = sluice_protocol::message::ids::decode_offset_msg_id(&msg_id).unwrap();
    wait_dispatched(&cluster.broker).await;
    let services = cluster.broker.services();
    let out = services
        .send_back(&SendBack {
            group: "fg".into(),
            phys_offset: phys,
            delay_level: -1,
            ..SendBack::default()
        })
        .await
        .unwrap();
    assert!(out.dead_letter);
    wait_dispatched(&cluster.broker).await;
    let dlq = cluster.broker.dlq();
    let s = dlq
        .start_replay(ReplaySpec {
            group: "fg".into(),
            rate_per_sec: 1000,
            ..ReplaySpec::default()
        })
        .await
        .unwrap();
    let done = wait_done(&cluster.broker, &s.id).await;
    assert_eq!((done.replayed, done.failed), (1, 0), "{:?}", done.error);
    assert!(
        services.topic("SLUICE_SYS_TIMER").is_none(),
        "nothing written there"
    );
    wait_dispatched(&cluster.broker).await;
    let copies = retry_records(&client, "fg").await;
    assert_eq!(copies.len(), 1);
    assert_eq!(
        copies[0].0.get("RETRY_TOPIC"),
        Some("Orders"),
        "a retry of the topic it was consumed from"
    );
    cluster.stop().await;
}

/// Replay task files under the data folder.
fn task_files(dir: &std::path::Path) -> usize {
    let mut n = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.parent().is_some_and(|p| p.ends_with("tasks"))
                && p.extension().is_some_and(|x| x == "json")
            {
                n += 1;
            }
        }
    }
    n
}

#[tokio::test]
async fn only_the_newest_finished_replays_are_kept() {
    let cluster = start_cluster_with(|c| c.replays_kept = 2).await;
    let client = cluster.client().await;
    dead_letters(&cluster, &client, "kg", "Orders", 1, |_| "A").await;
    let dlq = cluster.broker.dlq();
    let mut ids = Vec::new();
    for _ in 0..4 {
        let s = dlq
            .start_replay(ReplaySpec {
                group: "kg".into(),
                dry_run: true,
                ..ReplaySpec::default()
            })
            .await
            .unwrap();
        wait_done(&cluster.broker, &s.id).await;
        ids.push(s.id);
    }
    // The last task is pruned after it shows as finished: wait (bounded) for that.
    let deadline = Instant::now() + Duration::from_secs(10);
    while dlq.replays().len() > 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut kept: Vec<String> = dlq.replays().into_iter().map(|r| r.id).collect();
    kept.sort();
    let mut newest = ids[2..].to_vec();
    newest.sort();
    assert_eq!(kept, newest, "the two newest of {ids:?}");
    assert!(matches!(dlq.replay(&ids[0]), Err(DlqError::NoSuchTask(_))));
    assert_eq!(
        task_files(cluster.dir.path()),
        2,
        "forgotten tasks' files are removed"
    );
    cluster.stop().await;
}

/// A task saves its progress every half second; a crash can come after copies it made (and
/// ledgered) since. Resumed, it counted those as "skipped" (replayed earlier), not toward its
/// `max`, and copied up to `max` more. Here the crash state is written by hand: a running task
/// with `max_messages` 5 whose saved progress is nil while the ledger holds three of its
/// copies.
#[tokio::test]
async fn a_resumed_task_counts_its_copies_since_the_last_save_toward_its_max() {
    const TASK: &str = "replay-unsaved-1";
    let cluster = start_cluster().await;
    let client = cluster.client().await;
    dead_letters(&cluster, &client, "ug", "Orders", 10, |_| "A").await;
    let mut ledger = std::path::PathBuf::new();
    let cluster = cluster
        .restart(|data| {
            let dlq_dir = data.join("config").join("dlq");
            let task = serde_json::json!({
                "id": TASK, "group": "ug", "filter": {}, "target_topic": null, "rate_per_sec": 1000,
                "dry_run": false, "max_messages": 5, "requested_by": "test", "state": "running",
                "next_offset": 0, "end_offset": 10, "matched": 0, "replayed": 0, "skipped": 0,
                "failed": 0, "error": null, "created_ms": 1, "updated_ms": 1, "resumes": 0
            });
            std::fs::create_dir_all(dlq_dir.join("tasks")).unwrap();
            std::fs::write(
                dlq_dir.join("tasks").join(format!("{TASK}.json")),
                task.to_string(),
            )
            .unwrap();
            std::fs::create_dir_all(dlq_dir.join("ledger")).unwrap();
            ledger = dlq_dir.join("ledger").join("ug");
            std::fs::write(&ledger, format!("0 {TASK}\n1 {TASK}\n2 {TASK}\n")).unwrap();
        })
        .await;
    let done = wait_done(&cluster.broker, TASK).await;
    assert_eq!(done.state, ReplayState::Completed);
    assert_eq!(
        (done.matched, done.replayed, done.skipped),
        (5, 5, 0),
        "the three copies before the crash count toward max 5: {done:?}"
    );
    let text = std::fs::read_to_string(&ledger).unwrap();
    let offsets: Vec<u64> = text
        .lines()
        .map(|l| l.split(' ').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(
        offsets,
        [0, 1, 2, 3, 4],
        "no letter past the fifth was copied"
    );
    cluster.stop().await;
}

/// The UNIQ_KEYs of the replay copies in `group`'s retry topic, sorted.
async fn replayed_keys(client: &RemotingClient, group: &str) -> Vec<String> {
    let mut keys: Vec<String> = retry_records(client, group)
        .await
        .iter()
        .filter(|(p, _)| p.get("SLUICE_REPLAY_TASK").is_some())
        .map(|(p, _)| p.get("UNIQ_KEY").unwrap_or("").to_owned())
        .collect();
    keys.sort();
    keys
}

fn running_task(id: &str, group: &str, created_ms: i64, end: u64) -> serde_json::Value {
    serde_json::json!({
        "id": id, "group": group, "filter": {}, "target_topic": null, "rate_per_sec": 1000,
        "dry_run": false, "max_messages": null, "requested_by": "test", "state": "running",
        "next_offset": 0, "end_offset": end, "matched": 0, "replayed": 0, "skipped": 0,
        "failed": 0, "error": null, "created_ms": created_ms, "updated_ms": created_ms,
        "resumes": 0
    })
}

/// Two tasks of one group saved as running (one whose final state could not be saved, one
/// started after it) both resumed at restart, side by side, copying the same dead letters.
/// Only the newest resumes; the other is failed, saying why, and every letter is copied once.
#[tokio::test]
async fn of_two_running_tasks_of_one_group_at_restart_only_the_newest_resumes() {
    let cluster = start_cluster().await;
    let client = cluster.client().await;
    let mut uniq = dead_letters(&cluster, &client, "twin", "Orders", 10, |_| "A").await;
    let cluster = cluster
        .restart(|data| {
            let tasks = data.join("config").join("dlq").join("tasks");
            std::fs::create_dir_all(&tasks).unwrap();
            for (id, created) in [("replay-old-1", 1), ("replay-new-2", 2)] {
                let task = running_task(id, "twin", created, 10);
                std::fs::write(tasks.join(format!("{id}.json")), task.to_string()).unwrap();
            }
        })
        .await;
    let client = cluster.client().await;
    let newest = wait_done(&cluster.broker, "replay-new-2").await;
    assert_eq!(newest.state, ReplayState::Completed, "{newest:?}");
    let old = wait_done(&cluster.broker, "replay-old-1").await;
    assert_eq!(old.state, ReplayState::Failed, "{old:?}");
    assert!(old.error.unwrap_or_default().contains("replay-new-2"));
    wait_dispatched(&cluster.broker).await;
    uniq.sort();
    assert_eq!(
        replayed_keys(&client, "twin").await,
        uniq,
        "each letter copied once"
    );
    cluster.stop().await;
}

/// A letter copied by a task that crashed before ledgering it, and was then cancelled after
/// resuming, was copied again by the next task: only a resumed task looked for its own
/// copies. Every task now looks for any replay copy. Here the ledger is lost after a first
/// task copied every letter; a second task finds the copies and copies nothing.
#[tokio::test]
async fn a_copy_left_unledgered_by_another_task_is_found_and_not_made_again() {
    let cluster = start_cluster().await;
    let client = cluster.client().await;
    let mut uniq = dead_letters(&cluster, &client, "cp", "Orders", 3, |_| "A").await;
    let spec = || ReplaySpec {
        group: "cp".into(),
        rate_per_sec: 1000,
        requested_by: Some("test".into()),
        ..ReplaySpec::default()
    };
    let first = cluster.broker.dlq().start_replay(spec()).await.unwrap();
    assert_eq!(wait_done(&cluster.broker, &first.id).await.replayed, 3);
    let cluster = cluster
        .restart(|data| {
            let ledger = data.join("config").join("dlq").join("ledger").join("cp");
            std::fs::remove_file(ledger).unwrap();
        })
        .await;
    let client = cluster.client().await;
    let second = cluster.broker.dlq().start_replay(spec()).await.unwrap();
    let done = wait_done(&cluster.broker, &second.id).await;
    assert_eq!((done.replayed, done.skipped), (0, 3), "{done:?}");
    wait_dispatched(&cluster.broker).await;
    uniq.sort();
    assert_eq!(
        replayed_keys(&client, "cp").await,
        uniq,
        "each letter copied once"
    );
    cluster.stop().await;
}

/// An operator's write restriction holds for copies as for sends: a replay into a read-only
/// topic is refused at start, and a send-back into a read-only retry topic is NO_PERMISSION,
/// as 4.x brokers answer it. Both wrote anyway.
#[tokio::test]
async fn replays_and_send_backs_into_read_only_topics_are_refused() {
    let cluster = start_cluster().await;
    let client = cluster.client().await;
    dead_letters(&cluster, &client, "ro", "Orders", 1, |_| "A").await;
    let services = cluster.broker.services();
    services
        .put_topic(sluice_protocol::remoting::body::TopicConfig::new(
            "ReadOnly", 1, 4,
        ))
        .unwrap();
    let refused = cluster
        .broker
        .dlq()
        .start_replay(ReplaySpec {
            group: "ro".into(),
            target_topic: Some("ReadOnly".into()),
            ..ReplaySpec::default()
        })
        .await;
    assert!(
        matches!(refused, Err(DlqError::Forbidden(_))),
        "{refused:?}"
    );

    services
        .put_topic(sluice_protocol::remoting::body::TopicConfig::new(
            "%RETRY%ro2",
            1,
            4,
        ))
        .unwrap();
    let resp = send_ok(&client, "Orders", 0, b"m", &props(None, Some("k"))).await;
    let msg_id = resp.ext_fields.get_str("msgId").unwrap().to_owned();
    let (_, phys) = sluice_protocol::message::ids::decode_offset_msg_id(&msg_id).unwrap();
    wait_dispatched(&cluster.broker).await;
    let back = services
        .send_back(&SendBack {
            group: "ro2".into(),
            phys_offset: phys,
            delay_level: 0,
            ..SendBack::default()
        })
        .await;
    let err = back.expect_err("refused");
    assert!(
        err.to_string().contains("sending message is forbidden"),
        "{err}"
    );
    cluster.stop().await;
}

/// A page of 1 000 letters of 4 MiB held 4 GiB of bodies (then its JSON): a page ends once
/// its bodies pass 16 MiB, saying where the next one starts, and paging on reaches them all.
#[tokio::test]
async fn a_dlq_page_ends_at_its_byte_bound_and_paging_reaches_every_letter() {
    let cluster = start_cluster().await;
    let client = cluster.client().await;
    let services = cluster.broker.services();
    let body = vec![b'x'; 200 << 10];
    let n = 100;
    for i in 0..n {
        let resp = send_ok(
            &client,
            "Orders",
            0,
            &body,
            &props(None, Some(&format!("k{i}"))),
        )
        .await;
        let msg_id = resp.ext_fields.get_str("msgId").unwrap().to_owned();
        let (_, phys) = sluice_protocol::message::ids::decode_offset_msg_id(&msg_id).unwrap();
        wait_dispatched(&cluster.broker).await;
        services
            .send_back(&SendBack {
                group: "big".into(),
                phys_offset: phys,
                delay_level: -1,
                ..SendBack::default()
            })
            .await
            .expect("dead-lettered");
    }
    wait_dispatched(&cluster.broker).await;
    let dlq = cluster.broker.dlq();
    let first = dlq.list(&query("big", DlqFilter::default())).unwrap();
    let bytes: usize = first.messages.iter().map(|m| m.body.len()).sum();
    assert!(
        first.messages.len() < n,
        "{} letters in one page",
        first.messages.len()
    );
    assert!(
        bytes <= sluice_broker::dlq::MAX_PAGE_BYTES + body.len(),
        "{bytes}"
    );
    assert!(!first.end);
    assert_eq!(first.next_offset, first.messages.len() as u64);
    let mut seen = first.messages.len();
    let mut next = first.next_offset;
    for _ in 0..n {
        let page = dlq
            .list(&DlqQuery {
                start_offset: next,
                ..query("big", DlqFilter::default())
            })
            .unwrap();
        seen += page.messages.len();
        next = page.next_offset;
        if page.end {
            break;
        }
    }
    assert_eq!(seen, n, "paging reached every letter once");
    cluster.stop().await;
}
