//! Cancel and reschedule: definite answers, durability across a restart, the race with
//! release ending one way, RECALL_MESSAGE for RocketMQ 5 clients.

use crate::common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use sluice_protocol::{request_code, ExtFields, RemotingCommand};
use sluice_schedule::{MessageState, Outcome, ScheduleConfig, Selector, When};
use sluice_store::now_ms;

const TOPIC: &str = "Reminders";

fn by_id(uniq: &str) -> Selector {
    id_in(TOPIC, uniq)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_by_id_and_key_answers_definitely_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let ns = start_namesrv().await;
    let node = Node::start(dir.path(), ns.local_addr(), test_config()).await;
    let svc = node.service();
    let soon = svc
        .schedule_at(
            input(TOPIC, 0, "soon", &[]),
            When::After(Duration::from_millis(1500)),
        )
        .await
        .unwrap();
    let far = svc
        .schedule_at(
            input(TOPIC, 1, "far", &[]),
            When::After(Duration::from_secs(60)),
        )
        .await
        .unwrap();
    let mut order = Vec::new();
    for q in 0..3 {
        order.push(
            svc.schedule_at(
                input(TOPIC, q, "order-7", &[]),
                When::After(Duration::from_secs(30)),
            )
            .await
            .unwrap(),
        );
    }
    let r = svc.cancel(&by_id(&soon.uniq_key)).await.unwrap();
    assert_eq!((r.matched, r.cancelled), (1, 1));
    let r = svc.cancel(&by_id(&soon.uniq_key)).await.unwrap();
    assert_eq!(r.outcomes[0].1, Outcome::AlreadyCancelled);
    let r = svc.cancel(&by_id(&far.uniq_key)).await.unwrap();
    assert_eq!(
        r.cancelled, 1,
        "a timer beyond the near window is cancelled on disk"
    );
    let key = Selector::Key {
        topic: TOPIC.into(),
        key: "order-7".into(),
    };
    let r = svc.cancel(&key).await.unwrap();
    assert_eq!((r.matched, r.cancelled, r.truncated), (3, 3, false));
    let r = svc.cancel(&by_id("NO-SUCH-ID")).await.unwrap();
    assert!(r.not_found());
    let other_topic = Selector::Id {
        topic: Some("Other".into()),
        uniq_key: far.uniq_key.clone(),
    };
    assert!(
        svc.cancel(&other_topic).await.unwrap().not_found(),
        "ids are looked up within the topic"
    );
    assert_eq!(svc.stats().unwrap().pending, 0);
    node.stop().await;

    let node = Node::start(dir.path(), ns.local_addr(), test_config()).await;
    let svc = node.service();
    let (listed, _) = svc.list(&key).await.unwrap();
    assert_eq!(listed.len(), 3);
    assert!(listed
        .iter()
        .all(|m| m.state == MessageState::Cancelled && m.keys == ["order-7"]));
    assert_eq!(
        svc.cancel(&by_id(&far.uniq_key)).await.unwrap().outcomes[0].1,
        Outcome::AlreadyCancelled
    );
    assert_eq!(
        svc.stats().unwrap().pending,
        0,
        "pending counts survive the restart"
    );
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert!(
        node.released(TOPIC, 4).is_empty(),
        "a cancelled message is never released"
    );
    node.stop().await;
    ns.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_after_release_says_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let ns = start_namesrv().await;
    let node = Node::start(dir.path(), ns.local_addr(), test_config()).await;
    let svc = node.service();
    let s = svc
        .schedule_at(
            input(TOPIC, 0, "k", &[]),
            When::After(Duration::from_millis(200)),
        )
        .await
        .unwrap();
    let got = node
        .wait_released(TOPIC, 1, 1, Duration::from_secs(10))
        .await;
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].uniq(),
        s.uniq_key,
        "the released message keeps its id"
    );
    let r = svc.cancel(&by_id(&s.uniq_key)).await.unwrap();
    assert_eq!(
        r.outcomes,
        vec![(s.uniq_key.clone(), Outcome::AlreadyDelivered)]
    );
    let (listed, _) = svc.list(&by_id(&s.uniq_key)).await.unwrap();
    assert_eq!(listed[0].state, MessageState::Delivered);

    // A consumer group's retry of it is a timer with its UNIQ_KEY and `%RETRY%<group>` as its
    // real topic. Cancelled by id with no topic, it was grouped with the message's own
    // (released) timer: the retry was cancelled and the answer "cancelled" for a message
    // consumers already had. Without a topic, retry and dead-letter timers are left out.
    svc.schedule_at(
        input("%RETRY%G", 0, "k", &[("UNIQ_KEY", s.uniq_key.as_str())]),
        When::After(Duration::from_secs(60)),
    )
    .await
    .unwrap();
    let any_topic = Selector::Id {
        topic: None,
        uniq_key: s.uniq_key.clone(),
    };
    let r = svc.cancel(&any_topic).await.unwrap();
    assert_eq!(
        r.outcomes,
        vec![(s.uniq_key.clone(), Outcome::AlreadyDelivered)]
    );
    let retry = Selector::Id {
        topic: Some("%RETRY%G".into()),
        uniq_key: s.uniq_key.clone(),
    };
    let (listed, _) = svc.list(&retry).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(
        listed[0].state,
        MessageState::Pending,
        "the retry still comes"
    );
    node.stop().await;
    ns.shutdown().await;
}

/// Releases made just before a crash are not known as made when the schedule restarts (no
/// checkpoint ran after them): the deliverer checks the real topic before releasing such a
/// timer again, and a cancel arriving first must check too, answering "delivered" for a
/// message consumers already have, never "cancelled".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_right_after_a_crash_finds_the_releases_made_before_it() {
    const N: usize = 40;
    let dir = tempfile::tempdir().unwrap();
    let ns = start_namesrv().await;
    let no_checkpoint = no_checkpoint_config();
    let node = Node::start(dir.path(), ns.local_addr(), no_checkpoint.clone()).await;
    let svc = node.service();
    for _ in 0..N {
        svc.schedule_at(
            input(TOPIC, 0, "post-crash", &[]),
            When::After(Duration::from_millis(300)),
        )
        .await
        .unwrap();
    }
    let got = node
        .wait_released(TOPIC, 1, N, Duration::from_secs(10))
        .await;
    assert_eq!(got.len(), N);
    node.ext.crash_on_stop();
    node.stop().await;

    // One release a second after the restart: the deliverer's own checks come too late.
    let trickle = ScheduleConfig {
        release_rate: 1,
        release_batch: 1,
        ..no_checkpoint
    };
    let node = Node::start(dir.path(), ns.local_addr(), trickle).await;
    let by_key = Selector::Key {
        topic: TOPIC.into(),
        key: "post-crash".into(),
    };
    let r = node.service().cancel(&by_key).await.unwrap();
    assert_eq!(r.outcomes.len(), N);
    let wrong: Vec<_> = r
        .outcomes
        .iter()
        .filter(|(_, o)| *o != Outcome::AlreadyDelivered)
        .collect();
    assert!(
        wrong.is_empty(),
        "released before the crash, answered {wrong:?}"
    );
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(node.released(TOPIC, 1).len(), N, "none released again");
    node.stop().await;
    ns.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_racing_release_ends_one_way_only() {
    let dir = tempfile::tempdir().unwrap();
    let ns = start_namesrv().await;
    let node = Node::start(dir.path(), ns.local_addr(), test_config()).await;
    let svc = node.service();
    let base = now_ms() + 800;
    let mut ids = Vec::new();
    for i in 0..150i64 {
        let at = When::At(base + i * 2);
        ids.push(
            svc.schedule_at(input(TOPIC, (i % 4) as i32, &format!("race-{i}"), &[]), at)
                .await
                .unwrap()
                .uniq_key,
        );
    }
    let wait = (base - now_ms()).max(0) as u64;
    tokio::time::sleep(Duration::from_millis(wait)).await;
    let mut outcomes = HashMap::new();
    let mut tasks = tokio::task::JoinSet::new();
    for id in ids.clone() {
        let svc = svc.clone();
        tasks.spawn(async move {
            let r = svc.cancel(&by_id(&id)).await.expect("cancel answers");
            (id, r.outcomes[0].1)
        });
    }
    while let Some(r) = tasks.join_next().await {
        let (id, o) = r.unwrap();
        outcomes.insert(id, o);
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let released: HashMap<String, usize> =
        node.released(TOPIC, 4)
            .iter()
            .fold(HashMap::new(), |mut m, msg| {
                *m.entry(msg.uniq().to_owned()).or_default() += 1;
                m
            });
    let (mut cancelled, mut delivered) = (0, 0);
    for id in &ids {
        match outcomes[id] {
            Outcome::Cancelled => {
                cancelled += 1;
                assert!(!released.contains_key(id), "{id} cancelled and released");
            }
            Outcome::AlreadyDelivered => {
                delivered += 1;
                assert_eq!(
                    released.get(id),
                    Some(&1),
                    "{id} said delivered but was not, once"
                );
            }
            other => panic!("unexpected outcome {other:?} for {id}"),
        }
    }
    assert_eq!(cancelled + delivered, ids.len());
    assert_eq!(released.len(), delivered);
    for m in node.released(TOPIC, 4) {
        m.assert_not_early();
    }
    node.stop().await;
    ns.shutdown().await;
}

/// Cancels whose callers go away at every stage (an HTTP client hanging up) end one way or
/// the other: the timer is cancelled, or released once at its time. One dropped while its
/// marker was being written used to leave the timer `Cancelling` for good: never released,
/// never reported, and every later cancel of it timed out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_whose_caller_goes_away_leaves_no_timer_stuck() {
    let dir = tempfile::tempdir().unwrap();
    let ns = start_namesrv().await;
    let node = Node::start(dir.path(), ns.local_addr(), test_config()).await;
    let svc = node.service();
    let due = now_ms() + 1_500;
    let mut ids = Vec::new();
    for i in 0..60i64 {
        let msg = input(TOPIC, (i % 4) as i32, &format!("gone-{i}"), &[]);
        ids.push(svc.schedule_at(msg, When::At(due)).await.unwrap().uniq_key);
    }
    for (i, id) in ids.iter().enumerate() {
        let (svc, id) = (svc.clone(), id.clone());
        let task = tokio::spawn(async move { svc.cancel(&by_id(&id)).await });
        // Gone at once, after a few scheduler turns, or a few milliseconds in.
        match i % 3 {
            0 => {}
            1 => {
                for _ in 0..i % 17 {
                    tokio::task::yield_now().await;
                }
            }
            _ => tokio::time::sleep(Duration::from_micros(300 * (i as u64 % 11))).await,
        }
        task.abort();
        let _ = task.await;
    }
    // Every timer ends released or cancelled (a stuck one would keep this above zero).
    let wait = (due - now_ms()).max(0) as u64;
    tokio::time::sleep(Duration::from_millis(wait)).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while svc.stats().unwrap().pending != 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(svc.stats().unwrap().pending, 0, "a timer is stuck");
    let (mut cancelled, mut delivered) = (0, 0);
    for id in &ids {
        let r = svc
            .cancel(&by_id(id))
            .await
            .expect("a later cancel answers");
        let released = node
            .released(TOPIC, 4)
            .iter()
            .filter(|m| m.uniq() == id)
            .count();
        match r.outcomes[0].1 {
            Outcome::AlreadyCancelled => {
                cancelled += 1;
                assert_eq!(released, 0, "{id} cancelled and released");
            }
            Outcome::AlreadyDelivered => {
                delivered += 1;
                assert_eq!(
                    released, 1,
                    "{id} said delivered, released {released} times"
                );
            }
            other => panic!("unexpected outcome {other:?} for {id}"),
        }
    }
    assert_eq!(cancelled + delivered, ids.len());
    eprintln!("{cancelled} cancelled, {delivered} delivered");
    node.stop().await;
    ns.shutdown().await;
}

/// Properties only the schedule writes are removed from what producers send: a delayed send
/// naming another timer in `SLUICE_TIMER_REPLACES` used to cancel it, and a plain send could
/// carry a forged `SLUICE_TIMER_OFFSET` into the topic the crash check reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producers_cannot_set_the_schedules_own_properties() {
    let dir = tempfile::tempdir().unwrap();
    let ns = start_namesrv().await;
    let node = Node::start(dir.path(), ns.local_addr(), test_config()).await;
    let svc = node.service();
    let victim = svc
        .schedule_at(
            input(TOPIC, 0, "victim", &[]),
            When::After(Duration::from_millis(1_500)),
        )
        .await
        .unwrap();
    let victim_ref = format!(
        "{}:{}",
        victim.due_ms.expect("delayed"),
        victim.appended.phys_offset
    );
    let client = node.client().await;
    let forged = props(&[
        ("KEYS", "attacker"),
        ("TIMER_DELAY_MS", "300"),
        ("SLUICE_TIMER_REPLACES", &victim_ref),
        ("SLUICE_TIMER_OFFSET", "12345"),
        ("SLUICE_DUE_MS", "1"),
    ]);
    let resp = send(&client, TOPIC, 0, b"forged", &forged).await;
    assert_eq!(resp.code, 0, "{:?}", resp.remark);
    let plain = props(&[
        ("KEYS", "plain"),
        (
            "SLUICE_TIMER_OFFSET",
            &victim.appended.phys_offset.to_string(),
        ),
        ("SLUICE_TIMER_CANCEL", &victim_ref),
    ]);
    let resp = send(&client, TOPIC, 0, b"plain", &plain).await;
    assert_eq!(resp.code, 0, "{:?}", resp.remark);
    let got = node
        .wait_released(TOPIC, 1, 3, Duration::from_secs(10))
        .await;
    let by_key = |k: &str| {
        got.iter()
            .find(|m| m.props.get("KEYS") == Some(k))
            .unwrap_or_else(|| panic!("{k} not in {got:?}"))
    };
    by_key("victim"); // released: the forged replacement did not cancel it
    let attacker = by_key("attacker");
    assert_ne!(attacker.props.get("SLUICE_TIMER_OFFSET"), Some("12345"));
    assert_eq!(attacker.props.get("SLUICE_TIMER_REPLACES"), None);
    let plain = by_key("plain");
    for k in ["SLUICE_TIMER_OFFSET", "SLUICE_TIMER_CANCEL"] {
        assert_eq!(plain.props.get(k), None, "{k} kept on a plain send");
    }
    node.stop().await;
    ns.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reschedule_earlier_and_later_keeps_identity_and_releases_once() {
    let dir = tempfile::tempdir().unwrap();
    let ns = start_namesrv().await;
    let node = Node::start(dir.path(), ns.local_addr(), test_config()).await;
    let svc = node.service();
    let late = svc
        .schedule_at(
            input(TOPIC, 0, "to-earlier", &[("TAGS", "t1")]),
            When::After(Duration::from_secs(60)),
        )
        .await
        .unwrap();
    let soon = svc
        .schedule_at(
            input(TOPIC, 1, "to-later", &[]),
            When::After(Duration::from_millis(500)),
        )
        .await
        .unwrap();
    let t0 = now_ms();
    let r = svc
        .reschedule(
            &by_id(&late.uniq_key),
            When::After(Duration::from_millis(300)),
        )
        .await
        .unwrap();
    assert_eq!(r.rescheduled, 1);
    let r = svc
        .reschedule(
            &by_id(&soon.uniq_key),
            When::After(Duration::from_millis(2500)),
        )
        .await
        .unwrap();
    let Outcome::Rescheduled { due_ms: later_due } = r.outcomes[0].1 else {
        panic!("{r:?}")
    };
    let first = node
        .wait_released(TOPIC, 2, 1, Duration::from_secs(10))
        .await;
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].uniq(), late.uniq_key);
    assert_eq!(first[0].props.get("TAGS"), Some("t1"));
    assert!(first[0].due_ms() >= t0 + 300);
    let all = node
        .wait_released(TOPIC, 2, 2, Duration::from_secs(15))
        .await;
    assert_eq!(all.len(), 2, "each released once");
    let moved = all.iter().find(|m| m.uniq() == soon.uniq_key).unwrap();
    assert_eq!(moved.due_ms(), later_due);
    for m in &all {
        m.assert_not_early();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        node.released(TOPIC, 2).len(),
        2,
        "the replaced timers never fire"
    );
    // Released messages are visible a moment before the deliverer counts them done.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let stats = loop {
        let stats = node.service().stats().unwrap();
        if stats.pending == 0 || std::time::Instant::now() > deadline {
            break stats;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!((stats.rescheduled, stats.pending), (2, 0));
    let r = svc
        .reschedule(
            &by_id(&late.uniq_key),
            When::After(Duration::from_secs(40 * 86_400)),
        )
        .await;
    assert!(r.is_err(), "beyond the maximum delay");
    node.stop().await;
    ns.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recall_message_cancels_by_handle() {
    let dir = tempfile::tempdir().unwrap();
    let ns = start_namesrv().await;
    let node = Node::start(dir.path(), ns.local_addr(), test_config()).await;
    let client = node.client().await;
    let resp = send(&client, TOPIC, 0, b"r", &props(&[("TIMER_DELAY_SEC", "5")])).await;
    assert_eq!(resp.code, 0);
    let uniq = resp
        .ext_fields
        .get_str("transactionId")
        .expect("uniq key in the response")
        .to_owned();
    let broker_name = node.broker.services().broker_name().to_owned();
    let recall = |topic: &str, handle: String| {
        RemotingCommand::request(
            request_code::RECALL_MESSAGE,
            ExtFields::new()
                .with("producerGroup", "g")
                .with("topic", topic)
                .with("recallHandle", handle),
        )
    };
    let handle = sluice_schedule::recall_handle(TOPIC, &broker_name, now_ms() + 5000, &uniq);
    let r = client
        .invoke(recall(TOPIC, handle.clone()), RPC)
        .await
        .unwrap();
    assert_eq!(r.code, 0, "{:?}", r.remark);
    assert_eq!(r.ext_fields.get_str("msgId"), Some(uniq.as_str()));
    let r = client
        .invoke(recall("Elsewhere", handle), RPC)
        .await
        .unwrap();
    assert_eq!(r.code, 604);
    let r = client
        .invoke(recall(TOPIC, "%%%".into()), RPC)
        .await
        .unwrap();
    assert_eq!(r.code, 604);
    assert_eq!(node.service().stats().unwrap().pending, 0);
    node.stop().await;
    ns.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timers_longer_than_the_roll_interval_are_rolled_and_released_once() {
    let dir = tempfile::tempdir().unwrap();
    let ns = start_namesrv().await;
    let cfg = sluice_schedule::ScheduleConfig {
        roll_interval: Duration::from_secs(1),
        ..test_config()
    };
    let node = Node::start(dir.path(), ns.local_addr(), cfg).await;
    let svc = node.service();
    let s = svc
        .schedule_at(
            input(TOPIC, 0, "rolling", &[]),
            When::After(Duration::from_millis(2500)),
        )
        .await
        .unwrap();
    let got = node
        .wait_released(TOPIC, 1, 1, Duration::from_secs(15))
        .await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].uniq(), s.uniq_key);
    got[0].assert_not_early();
    let stats = svc.stats().unwrap();
    assert!(stats.rolled >= 2, "rolled {} times", stats.rolled);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(node.released(TOPIC, 1).len(), 1);
    node.stop().await;
    ns.shutdown().await;
}

/// A node whose key look-ups match at most 4 records (16 index candidates), holding one timer
/// of `TOPIC` and then `others` timers of "Elsewhere", all with business key `key`.
async fn crowded(dir: &std::path::Path, ns: std::net::SocketAddr, key: &str, others: i32) -> Node {
    let cfg = ScheduleConfig {
        max_key_matches: 4,
        ..test_config()
    };
    let node = Node::start(dir, ns, cfg).await;
    let svc = node.service();
    let later = When::After(Duration::from_secs(60));
    svc.schedule_at(input(TOPIC, 0, key, &[]), later)
        .await
        .unwrap();
    for q in 0..others {
        svc.schedule_at(input("Elsewhere", q % 2, key, &[]), later)
            .await
            .unwrap();
    }
    node
}

/// Records of other topics sharing the key (up to `max_key_matches` of them) filled the
/// look-up's cap before the topic was checked, and a pending timer of the topic asked for was
/// answered "not found" while it stayed due.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_topics_sharing_a_key_do_not_hide_the_topics_timer() {
    let dir = tempfile::tempdir().unwrap();
    let ns = start_namesrv().await;
    let node = crowded(dir.path(), ns.local_addr(), "cust-42", 6).await;
    let svc = node.service();
    let r = svc.cancel(&key_in(TOPIC, "cust-42")).await.unwrap();
    assert_eq!((r.matched, r.cancelled, r.truncated), (1, 1, false));
    let r = svc.cancel(&key_in("Elsewhere", "cust-42")).await.unwrap();
    assert_eq!((r.matched, r.truncated), (4, true), "capped, and says so");
    node.stop().await;
}

/// When more newer timers of other topics share the key than the look-up examines (4 × the
/// match cap), the topic's own timer may not be seen: the answer then says truncated instead
/// of a definite "not found".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lookup_crowded_out_by_other_topics_says_truncated_not_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let ns = start_namesrv().await;
    let node = crowded(dir.path(), ns.local_addr(), "cust-7", 20).await;
    let r = node
        .service()
        .cancel(&key_in(TOPIC, "cust-7"))
        .await
        .unwrap();
    assert!(r.truncated, "not a definite answer: {r:?}");
    node.stop().await;
}

/// The Rust API skipped what the put hook enforces: a message aimed at the timer topic was
/// released into it and indexed as a new timer, due at once, for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schedules_own_topics_are_refused_as_destinations() {
    let dir = tempfile::tempdir().unwrap();
    let ns = start_namesrv().await;
    let node = Node::start(dir.path(), ns.local_addr(), test_config()).await;
    let svc = node.service();
    for topic in [sluice_schedule::TIMER_TOPIC, sluice_broker::SCHEDULE_TOPIC] {
        let err = svc
            .schedule_at(
                input(topic, 0, "k", &[]),
                When::After(Duration::from_secs(1)),
            )
            .await
            .unwrap_err();
        assert!(err.to_string().contains("schedule's own"), "{err}");
    }
    node.stop().await;
}

/// A timer the deliverer gives up on (here its real queue id is not a number) is reported as
/// dropped, never as delivered, and later never as cancelled: while in the window, after the
/// window moved past it, and after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_timer_is_reported_dropped_not_delivered_or_cancelled() {
    let dir = tempfile::tempdir().unwrap();
    let ns = start_namesrv().await;
    let node = Node::start(dir.path(), ns.local_addr(), test_config()).await;
    let due = (now_ms() + 300).to_string();
    // Stored past the send hook (which would refuse it): a record as a damaged or
    // hand-written timer would be.
    let timer = input(
        sluice_schedule::TIMER_TOPIC,
        sluice_schedule::TIMER_QUEUE,
        "drop-me",
        &[
            ("REAL_TOPIC", TOPIC),
            ("REAL_QID", "x"),
            ("UNIQ_KEY", "U-DROP"),
            (sluice_schedule::TIMER_OUT_MS, &due),
        ],
    );
    node.broker
        .store()
        .append(vec![timer], true)
        .unwrap()
        .await
        .unwrap();
    let svc = node.service();
    let started = std::time::Instant::now();
    while svc.stats().unwrap().dropped < 1 {
        assert!(started.elapsed() < Duration::from_secs(20), "never dropped");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(node.released(TOPIC, 4).is_empty());
    let check = |svc: sluice_schedule::ScheduleService| async move {
        let r = svc.cancel(&by_id("U-DROP")).await.unwrap();
        assert_eq!(
            r.outcomes,
            vec![("U-DROP".to_owned(), Outcome::AlreadyDropped)]
        );
        let (listed, _) = svc.list(&by_id("U-DROP")).await.unwrap();
        assert_eq!(listed[0].state, MessageState::Dropped);
    };
    check(svc.clone()).await;
    // The window moves past it (the near window is 2 s here).
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    check(svc).await;
    node.stop().await;
    let node = Node::start(dir.path(), ns.local_addr(), test_config()).await;
    check(node.service()).await;
    node.stop().await;
    ns.shutdown().await;
}
