//! Check-back over raw remoting: the producer's answers to CHECK_TRANSACTION_STATE, another
//! producer of the group answering, the final actions, and the HTTP facade's hooks (pull queue,
//! sinks). Timings are short through the config; assertions are about outcomes, never timings.

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use parking_lot::Mutex;
use sluice_protocol::remoting::custom::CheckTransactionStateRequestHeader;
use sluice_protocol::response_code as code;
use sluice_protocol::{Properties, RecordView};
use sluice_txn::{
    CheckSink, FinalAction, GroupOverride, ListQuery, PendingCheck, Resolution, Source,
    StateFilter, TxnState, PROP_CHECK_URL,
};

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test]
async fn unknown_then_a_check_answered_commit_commits_once_and_checks_stop() {
    let dir = tempfile::tempdir().unwrap();
    let b = TestBroker::start(dir.path(), fast_config()).await;
    let c = b.client().await;
    let mut checks = c.take_requests().unwrap();
    let s = send_half(&c, "c1").await;
    assert_eq!(end(&c, &s, UNKNOWN).await.code, 0);

    let check = next_check(&mut checks, WAIT)
        .await
        .expect("a check arrives");
    let h = CheckTransactionStateRequestHeader::from_ext(&check.ext_fields).unwrap();
    assert_eq!(
        (h.tran_state_table_offset, h.commit_log_offset),
        (s.queue_offset, s.commit_log_offset)
    );
    assert_eq!(h.transaction_id.as_deref(), Some("UNIQ-c1"));
    assert_eq!(h.msg_id.as_deref(), Some("UNIQ-c1"));
    assert_eq!(h.offset_msg_id.as_deref(), Some(s.msg_id.as_str()));
    assert_eq!(h.topic.as_deref(), Some(TOPIC));
    let v =
        RecordView::parse(&check.body, usize::MAX).expect("the body is a stored-message record");
    assert_eq!(
        (v.topic, v.header.queue_id, v.body),
        (TOPIC, 1, &b"body-c1"[..])
    );
    let p = Properties::decode(v.properties);
    assert_eq!(p.get("PGROUP"), Some(GROUP));
    assert_eq!(p.get("TRANSACTION_CHECK_TIMES"), Some("1"));
    assert!(
        visible_keys(&b, &c).await.is_empty(),
        "still invisible while checked"
    );

    let r = answer_check(&c, GROUP, &check, COMMIT).await;
    assert_eq!(r.code, 0, "{:?}", r.remark);
    assert_eq!(visible_keys(&b, &c).await, ["c1"]);
    let view = b.view(s.queue_offset as u64).await;
    assert_eq!(
        (view.state, view.decided_by),
        (TxnState::Committed, Some(Source::CheckAnswer))
    );
    assert_eq!(
        view.last_answer.map(|a| a.0),
        Some(sluice_txn::CheckAnswer::Commit)
    );
    // Whatever was already in flight, nothing new is sent for a decided transaction.
    tokio::time::sleep(Duration::from_millis(100)).await;
    while checks.try_recv().is_ok() {}
    assert!(
        next_check(&mut checks, Duration::from_millis(1200))
            .await
            .is_none(),
        "no check after the decision"
    );
    assert_eq!(b.txn.service().metrics().answers_commit, 1);
    b.stop().await;
}

#[tokio::test]
async fn a_check_answered_rollback_rolls_back_and_the_late_commit_learns_it() {
    let dir = tempfile::tempdir().unwrap();
    let b = TestBroker::start(dir.path(), fast_config()).await;
    let c = b.client().await;
    let mut checks = c.take_requests().unwrap();
    let s = send_half(&c, "rb1").await;
    let check = next_check(&mut checks, WAIT)
        .await
        .expect("a check arrives");
    assert_eq!(
        answer_check(&c, GROUP, &check, UNKNOWN).await.code,
        0,
        "UNKNOWN is noted"
    );
    let check = next_check(&mut checks, WAIT)
        .await
        .expect("checks go on after UNKNOWN");
    let h = CheckTransactionStateRequestHeader::from_ext(&check.ext_fields).unwrap();
    let v = RecordView::parse(&check.body, usize::MAX).unwrap();
    assert_eq!(
        Properties::decode(v.properties).get("TRANSACTION_CHECK_TIMES"),
        Some("2")
    );
    assert_eq!(
        h.tran_state_table_offset, s.queue_offset,
        "always the producer's offsets"
    );
    assert_eq!(answer_check(&c, GROUP, &check, ROLLBACK).await.code, 0);
    // The slow local transaction finally commits: refused, and it is told why.
    let late = end(&c, &s, COMMIT).await;
    assert_eq!(late.code, code::TRANSACTION_SHOULD_ROLLBACK);
    assert!(late.remark.unwrap().contains("decided by check"));
    assert!(visible_keys(&b, &c).await.is_empty());
    b.stop().await;
}

#[tokio::test]
async fn when_the_sender_is_gone_another_producer_of_the_group_is_asked() {
    let dir = tempfile::tempdir().unwrap();
    let b = TestBroker::start(dir.path(), fast_config()).await;
    let first = b.client().await;
    let s = send_half(&first, "g1").await;
    first.close();
    drop(first);
    let other = b.client().await;
    let mut checks = other.take_requests().unwrap();
    send_plain(&other, GROUP, "PlainTopic", "hello").await;
    let check = next_check(&mut checks, WAIT)
        .await
        .expect("the other member is asked");
    assert_eq!(answer_check(&other, GROUP, &check, COMMIT).await.code, 0);
    assert_eq!(visible_keys(&b, &other).await, ["g1"]);
    assert_eq!(
        b.view(s.queue_offset as u64).await.state,
        TxnState::Committed
    );
    b.stop().await;
}

#[tokio::test]
async fn checks_spread_over_the_members_of_the_group() {
    let dir = tempfile::tempdir().unwrap();
    let b = TestBroker::start(dir.path(), fast_config()).await;
    let (p1, p2) = (b.client().await, b.client().await);
    let (mut r1, mut r2) = (p1.take_requests().unwrap(), p2.take_requests().unwrap());
    heartbeat(&p1, GROUP, "p1").await;
    heartbeat(&p2, GROUP, "p2").await;
    for i in 0..6 {
        send_half(&p1, &format!("s{i}")).await;
    }
    let (mut n1, mut n2) = (0, 0);
    for _ in 0..200 {
        tokio::select! {
            Some(c) = r1.recv() => { n1 += 1; answer_check(&p1, GROUP, &c, COMMIT).await; }
            Some(c) = r2.recv() => { n2 += 1; answer_check(&p2, GROUP, &c, COMMIT).await; }
            () = tokio::time::sleep(WAIT) => break,
        }
        if n1 + n2 >= 6 {
            break;
        }
    }
    assert_eq!(n1 + n2, 6, "one check per transaction, all answered");
    assert!(n1 > 0 && n2 > 0, "both members were asked: {n1} / {n2}");
    assert_eq!(visible_keys(&b, &p1).await.len(), 6);
    b.stop().await;
}

#[tokio::test]
async fn after_check_max_unknown_answers_the_final_rollback_applies_and_is_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = fast_config();
    cfg.defaults.check_max = 3;
    let b = TestBroker::start(dir.path(), cfg).await;
    let c = b.client().await;
    let mut checks = c.take_requests().unwrap();
    let s = send_half(&c, "m1").await;
    let svc = b.txn.service();
    let mut answered = 0;
    while let Some(check) = next_check(&mut checks, Duration::from_secs(5)).await {
        answered += 1;
        assert_eq!(answer_check(&c, GROUP, &check, UNKNOWN).await.code, 0);
        assert!(answered <= 3, "never more than check_max checks");
    }
    assert_eq!(answered, 3);
    assert!(reaches_state(&svc, s.queue_offset as u64, TxnState::Discarded, WAIT).await);
    let view = svc.get(s.queue_offset as u64).await.unwrap().unwrap();
    assert_eq!(
        (view.check_count, view.decided_by),
        (3, Some(Source::FinalAction))
    );
    let late = end(&c, &s, COMMIT).await;
    assert_eq!(
        late.code,
        code::TRANSACTION_SHOULD_ROLLBACK,
        "a commit after the final rollback is refused"
    );
    assert!(late.remark.unwrap().contains("discarded"));
    assert!(visible_keys(&b, &c).await.is_empty());
    let m = svc.metrics();
    assert_eq!((m.discarded, m.answers_unknown, m.checks_sent), (1, 3, 3));
    assert_eq!(
        svc.rearm(s.queue_offset as u64)
            .await
            .unwrap_err()
            .response_code(),
        code::TRANSACTION_SHOULD_ROLLBACK
    );
    b.stop().await;
}

#[tokio::test]
async fn the_keep_action_parks_the_message_and_an_operator_can_rearm_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = fast_config();
    cfg.groups.insert(
        GROUP.into(),
        GroupOverride {
            check_max: Some(1),
            final_action: Some(FinalAction::Keep),
            ..Default::default()
        },
    );
    let b = TestBroker::start(dir.path(), cfg).await;
    let c = b.client().await;
    let mut checks = c.take_requests().unwrap();
    let s = send_half(&c, "k1").await;
    let check = next_check(&mut checks, WAIT).await.unwrap();
    answer_check(&c, GROUP, &check, UNKNOWN).await;
    let svc = b.txn.service();
    let id = s.queue_offset as u64;
    assert!(reaches_state(&svc, id, TxnState::Parked, WAIT).await);
    let parked = read_stored(&b, "TRANS_CHECK_MAX_TIME_TOPIC").await;
    assert_eq!(parked.len(), 1, "RocketMQ's copy for tools");
    assert_eq!(parked[0].props.get("REAL_TOPIC"), Some(TOPIC));
    let listed = svc
        .list(&ListQuery {
            states: StateFilter::Parked,
            producer_group: Some(GROUP.into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
    assert!(
        next_check(&mut checks, Duration::from_millis(1200))
            .await
            .is_none(),
        "parked: no checks"
    );

    assert_eq!(
        svc.rearm(id).await.unwrap(),
        sluice_txn::Outcome::Applied(TxnState::Open)
    );
    let check = next_check(&mut checks, WAIT)
        .await
        .expect("checks resume after re-arm");
    assert_eq!(answer_check(&c, GROUP, &check, COMMIT).await.code, 0);
    assert_eq!(visible_keys(&b, &c).await, ["k1"]);
    assert_eq!(svc.metrics().rearmed, 1);
    b.stop().await;
}

#[tokio::test]
async fn a_parked_transaction_can_still_be_committed_by_its_producer() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = fast_config();
    cfg.defaults.check_max = 1;
    cfg.defaults.final_action = FinalAction::Keep;
    let b = TestBroker::start(dir.path(), cfg).await;
    let c = b.client().await;
    let mut checks = c.take_requests().unwrap();
    let s = send_half(&c, "pk").await;
    next_check(&mut checks, WAIT).await.unwrap();
    let svc = b.txn.service();
    assert!(reaches_state(&svc, s.queue_offset as u64, TxnState::Parked, WAIT).await);
    assert_eq!(end(&c, &s, COMMIT).await.code, 0);
    assert_eq!(visible_keys(&b, &c).await, ["pk"]);
    b.stop().await;
}

#[tokio::test]
async fn no_producer_online_does_not_burn_the_check_budget() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = fast_config();
    cfg.defaults.check_max = 1;
    let b = TestBroker::start(dir.path(), cfg).await;
    let c = b.client().await;
    let s = send_half(&c, "n1").await;
    c.close();
    drop(c);
    let svc = b.txn.service();
    assert!(eventually(WAIT, || svc.metrics().checks_undelivered >= 2).await);
    let view = svc.get(s.queue_offset as u64).await.unwrap().unwrap();
    assert_eq!(
        (view.state, view.check_count),
        (TxnState::Open, 0),
        "still open, budget intact"
    );
    let late = b.client().await;
    let mut checks = late.take_requests().unwrap();
    heartbeat(&late, GROUP, "late").await;
    let check = next_check(&mut checks, WAIT)
        .await
        .expect("asked once a producer is back");
    assert_eq!(answer_check(&late, GROUP, &check, COMMIT).await.code, 0);
    assert_eq!(visible_keys(&b, &late).await, ["n1"]);
    b.stop().await;
}

#[tokio::test]
async fn the_immunity_property_delays_the_first_check() {
    let dir = tempfile::tempdir().unwrap();
    let b = TestBroker::start(dir.path(), fast_config()).await;
    let c = b.client().await;
    let mut checks = c.take_requests().unwrap();
    let mut p = half_props(GROUP, "imm");
    p.insert("CHECK_IMMUNITY_TIME_IN_SECONDS", "3600");
    send_half_with(&c, GROUP, "imm", p).await;
    let plain = send_half(&c, "plain").await;
    let check = next_check(&mut checks, WAIT).await.unwrap();
    let h = CheckTransactionStateRequestHeader::from_ext(&check.ext_fields).unwrap();
    assert_eq!(
        h.tran_state_table_offset, plain.queue_offset,
        "only the one without immunity"
    );
    answer_check(&c, GROUP, &check, COMMIT).await;
    assert!(next_check(&mut checks, Duration::from_millis(1500))
        .await
        .is_none());
    b.stop().await;
}

#[tokio::test]
async fn a_pull_mode_group_gets_its_checks_from_the_queue_and_answers_over_the_service() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = fast_config();
    cfg.groups.insert(
        "http_group".into(),
        GroupOverride {
            pull_checks: Some(true),
            ..Default::default()
        },
    );
    cfg.checkpoint_interval = Duration::from_secs(3600); // the journal is not emptied meanwhile
    let b = TestBroker::start(dir.path(), cfg).await;
    let c = b.client().await;
    let s = send_half_with(&c, "http_group", "h1", half_props("http_group", "h1")).await;
    let t = send_half_with(&c, "http_group", "h2", half_props("http_group", "h2")).await;
    let svc = b.txn.service();
    assert!(eventually(WAIT, || svc.metrics().pending_pull_checks == 2).await);
    let first = svc.pull_checks("http_group", 1).await.unwrap();
    assert_eq!(first.len(), 1);
    let journal = dir.path().join("txn").join("checks.journal");
    assert_eq!(
        std::fs::metadata(&journal).map(|m| m.len()).unwrap_or(0),
        32,
        "the pulled check was journalled before it was handed out"
    );
    assert_eq!(
        (
            first[0].half_offset,
            first[0].check_count,
            first[0].keys.as_str()
        ),
        (s.queue_offset as u64, 1, "h1")
    );
    assert_eq!(&first[0].body[..], b"body-h1");
    let r = svc
        .resolve(&first[0].reference(), Resolution::Commit, true)
        .await
        .unwrap();
    assert_eq!(r, sluice_txn::Outcome::Applied(TxnState::Committed));
    // h2 is decided before it is pulled: its queued check is never handed out.
    let href = sluice_txn::TxnRef {
        producer_group: "http_group".into(),
        half_offset: t.queue_offset as u64,
        commit_log_offset: t.commit_log_offset as u64,
        ..Default::default()
    };
    svc.resolve(&href, Resolution::Rollback, false)
        .await
        .unwrap();
    assert!(svc.pull_checks("http_group", 10).await.unwrap().is_empty());
    assert_eq!(visible_keys(&b, &c).await, ["h1"]);
    b.stop().await;
}

struct Recorder(Mutex<Vec<PendingCheck>>);

impl CheckSink for Recorder {
    fn name(&self) -> &'static str {
        "recorder"
    }
    fn deliver(&self, check: PendingCheck) -> Result<(), String> {
        self.0.lock().push(check);
        Ok(())
    }
}

/// A broker whose group `hook_group` is configured with a check URL.
async fn start_with_hook_group(dir: &std::path::Path) -> TestBroker {
    let mut cfg = fast_config();
    cfg.groups.insert(
        "hook_group".into(),
        GroupOverride {
            check_url: Some("http://app.local/txn/check".into()),
            ..Default::default()
        },
    );
    TestBroker::start(dir, cfg).await
}

#[tokio::test]
async fn a_check_url_group_gets_its_checks_through_the_url_sink() {
    let dir = tempfile::tempdir().unwrap();
    let b = start_with_hook_group(dir.path()).await;
    let sink = Arc::new(Recorder(Mutex::new(Vec::new())));
    let svc = b.txn.service();
    svc.set_url_sink(Some(Arc::clone(&sink) as Arc<dyn CheckSink>));
    let c = b.client().await;
    send_half_with(&c, "hook_group", "w1", half_props("hook_group", "w1")).await;
    assert!(eventually(WAIT, || !sink.0.lock().is_empty()).await);
    let check = sink.0.lock()[0].clone();
    assert_eq!(check.url.as_deref(), Some("http://app.local/txn/check"));
    assert_eq!(
        (check.producer_group.as_str(), check.transaction_id.as_str()),
        ("hook_group", "UNIQ-w1")
    );
    assert!(check
        .properties
        .iter()
        .any(|(k, v)| k == "KEYS" && v == "w1"));
    svc.resolve(&check.reference(), Resolution::Commit, true)
        .await
        .unwrap();
    assert_eq!(visible_keys(&b, &c).await, ["w1"]);
    let m = svc.metrics();
    assert_eq!((m.committed, m.open), (1, 0));
    b.stop().await;
}

/// A URL sink that allows only one host, as the HTTP facade's `check_url_hosts` does.
struct OnlyHost(&'static str, Mutex<Vec<PendingCheck>>);

impl CheckSink for OnlyHost {
    fn name(&self) -> &'static str {
        "only-host"
    }
    fn accepts(&self, message_url: &str) -> bool {
        message_url.starts_with(self.0)
    }
    fn deliver(&self, check: PendingCheck) -> Result<(), String> {
        self.1.lock().push(check);
        Ok(())
    }
}

/// A TCP producer can put `SLUICE_CHECK_URL` on its half message. Before, the checker sent the
/// check to that URL whatever it was, so any producer could make the broker POST to an address
/// of its choosing (a metadata endpoint, an internal service). A URL the sink does not accept
/// is now ignored and the check takes the group's own route.
#[tokio::test]
async fn a_message_check_url_the_sink_refuses_is_ignored_for_the_groups_route() {
    let dir = tempfile::tempdir().unwrap();
    let b = start_with_hook_group(dir.path()).await;
    let sink = Arc::new(OnlyHost("http://allowed.local/", Mutex::new(Vec::new())));
    let svc = b.txn.service();
    svc.set_url_sink(Some(Arc::clone(&sink) as Arc<dyn CheckSink>));
    let c = b.client().await;
    let mut forged = half_props("hook_group", "f1");
    forged.insert(PROP_CHECK_URL, "http://169.254.169.254/latest/meta-data/");
    send_half_with(&c, "hook_group", "f1", forged).await;
    let mut allowed = half_props("hook_group", "a1");
    allowed.insert(PROP_CHECK_URL, "http://allowed.local/check");
    send_half_with(&c, "hook_group", "a1", allowed).await;
    assert!(eventually(WAIT, || sink.1.lock().len() >= 2).await);
    let urls: std::collections::BTreeMap<String, Option<String>> = sink
        .1
        .lock()
        .iter()
        .map(|c| (c.transaction_id.clone(), c.url.clone()))
        .collect();
    assert_eq!(
        urls.get("UNIQ-f1").cloned().flatten().as_deref(),
        Some("http://app.local/txn/check"),
        "the refused URL gave way to the group's check_url"
    );
    assert_eq!(
        urls.get("UNIQ-a1").cloned().flatten().as_deref(),
        Some("http://allowed.local/check"),
        "an accepted URL still wins"
    );
    b.stop().await;
}

/// Takes checks until `room` runs out, then refuses them, as a full producer write queue does.
struct Throttled {
    room: Mutex<usize>,
    got: Mutex<Vec<PendingCheck>>,
}

impl CheckSink for Throttled {
    fn name(&self) -> &'static str {
        "throttled"
    }
    fn deliver(&self, check: PendingCheck) -> Result<(), String> {
        let mut room = self.room.lock();
        if *room == 0 {
            return Err("full".into());
        }
        *room -= 1;
        self.got.lock().push(check);
        Ok(())
    }
}

/// A broker whose `group` sends its checks to `sink`, with `n` half messages of that group sent.
async fn halves_checked_by(
    dir: &std::path::Path,
    cfg: sluice_txn::TxnConfig,
    group: &str,
    sink: Arc<dyn CheckSink>,
    n: usize,
) -> TestBroker {
    let b = TestBroker::start(dir, cfg).await;
    b.txn.service().set_check_sink(group, Some(sink));
    let c = b.client().await;
    for i in 0..n {
        let key = format!("{group}-{i}");
        send_half_with(&c, group, &key, half_props(group, &key)).await;
    }
    b
}

#[tokio::test]
async fn a_route_that_refuses_leaves_the_other_due_checks_for_the_next_tick() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = fast_config();
    // A refused check waits a whole interval; the ones never offered must not.
    cfg.defaults.check_interval = Duration::from_secs(3600);
    let sink = Arc::new(Throttled {
        room: Mutex::new(5),
        got: Mutex::new(Vec::new()),
    });
    let b = halves_checked_by(dir.path(), cfg, "slow_group", sink.clone(), 300).await;
    let svc = b.txn.service();
    assert!(eventually(WAIT, || sink.got.lock().len() == 5).await);
    // A few ticks (75 ms each) against the full sink: each refuses one check, not all.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let refused = svc.metrics().checks_undelivered;
    assert!(
        (1..60).contains(&refused),
        "one refusal per tick stops the group's round: {refused} of 295 refused"
    );
    *sink.room.lock() = usize::MAX;
    let offered_once = || sink.got.lock().len() as u64 + svc.metrics().checks_undelivered == 300;
    assert!(
        eventually(WAIT, offered_once).await,
        "the checks never offered go out at the next ticks; the refused wait an interval: \
         {} taken, {} refused",
        sink.got.lock().len(),
        svc.metrics().checks_undelivered
    );
    assert_eq!(svc.metrics().checks_undelivered, refused);
    b.stop().await;
}

/// A group whose route refuses every check, holding the oldest due transactions, used to
/// take the whole per-tick allowance every tick: no other group was checked until it had
/// drained by refusals (one per tick).
#[tokio::test]
async fn a_jammed_group_does_not_hold_up_the_checks_of_other_groups() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = fast_config();
    cfg.defaults.check_interval = Duration::from_secs(3600);
    // About 15 a tick of 75 ms: far fewer than the jammed group has due.
    cfg.max_checks_per_sec = 200;
    let jammed = Arc::new(Throttled {
        room: Mutex::new(0),
        got: Mutex::new(Vec::new()),
    });
    let b = halves_checked_by(dir.path(), cfg, "jammed", jammed.clone(), 200).await;
    let healthy = Arc::new(Recorder(Mutex::new(Vec::new())));
    let svc = b.txn.service();
    svc.set_check_sink("healthy", Some(healthy.clone()));
    let c = b.client().await;
    for i in 0..20 {
        let key = format!("healthy-{i}");
        send_half_with(&c, "healthy", &key, half_props("healthy", &key)).await;
    }
    assert!(
        eventually(WAIT, || healthy.0.lock().len() == 20).await,
        "the healthy group gets its checks: {} of 20",
        healthy.0.lock().len()
    );
    let refused = svc.metrics().checks_undelivered;
    assert!(
        refused < 100,
        "while the jammed group still has most of its checks due ({refused} of 200 refused)"
    );
    b.stop().await;
}

/// A check sent without its journal record could be sent again after a crash, past
/// `check_max`: while the journal cannot be written, checks wait (they used to go out anyway).
/// A sink's checks are counted and journalled when its consumer claims them (just before a
/// webhook call or a poll's hand-out): the claim fails, and nothing is counted, until the
/// journal takes the record.
#[tokio::test]
async fn checks_wait_while_the_check_journal_cannot_be_written() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = fast_config();
    cfg.defaults.check_interval = Duration::from_secs(3600);
    // The journal's path taken by a folder: every append fails.
    let journal = dir.path().join("txn").join("checks.journal");
    std::fs::create_dir_all(&journal).unwrap();
    let sink = Arc::new(Recorder(Mutex::new(Vec::new())));
    let b = halves_checked_by(dir.path(), cfg, "journalled", sink.clone(), 5).await;
    let svc = b.txn.service();
    assert!(
        eventually(WAIT, || sink.0.lock().len() == 5).await,
        "queued uncounted: {} of 5",
        sink.0.lock().len()
    );
    let queued: Vec<PendingCheck> = sink.0.lock().clone();
    for c in &queued {
        assert_eq!(c.check_count, 1, "the count it will have");
        assert!(
            svc.claim_check(c).await.is_err(),
            "no check leaves unrecorded"
        );
    }
    let listed = svc.list(&Default::default()).await.unwrap();
    assert!(listed.iter().all(|v| v.check_count == 0), "nothing counted");
    std::fs::remove_dir(&journal).unwrap();
    for c in &queued {
        let claimed = svc.claim_check(c).await.unwrap();
        assert_eq!(claimed.map(|c| c.check_count), Some(1));
        assert!(
            svc.claim_check(c).await.unwrap().is_none(),
            "claimed once: a second copy of the same check is not called"
        );
    }
    let listed = svc.list(&Default::default()).await.unwrap();
    assert!(
        listed.iter().all(|v| v.check_count == 1),
        "counted once each"
    );
    b.stop().await;
}

#[tokio::test]
async fn checks_start_no_faster_than_max_checks_per_sec() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = fast_config();
    cfg.defaults.check_interval = Duration::from_secs(3600);
    cfg.max_checks_per_sec = 20;
    let sink = Arc::new(Recorder(Mutex::new(Vec::new())));
    let b = halves_checked_by(dir.path(), cfg, "paced", sink.clone(), 100).await;
    assert!(eventually(WAIT, || !sink.0.lock().is_empty()).await);
    let first_seen = std::time::Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    // A bound on the rate over the time that really passed (a loaded machine oversleeps,
    // which only loosens it): 20 a second in ticks of 75 ms (1.5 each, fractions carried),
    // counted from up to 100 ms before the first check was seen (the eventually loop's 20 ms
    // step and a tick), plus the first tick's share.
    let after_a_second = sink.0.lock().len();
    let span = first_seen.elapsed().as_secs_f64() + 0.1;
    assert!(
        after_a_second as f64 <= 20.0 * span + 3.0,
        "{after_a_second} checks in {span:.2} s at 20 per second"
    );
    let waiting = b.txn.service().metrics().checks_due_waiting;
    assert!(
        waiting > 0,
        "operators see that checks are held back (counted when the backlog started)"
    );
    assert!(
        eventually(WAIT, || sink.0.lock().len() >= after_a_second + 10).await,
        "the rest keep coming, oldest first"
    );
    let offsets: Vec<u64> = sink.0.lock().iter().map(|c| c.half_offset).collect();
    assert!(
        offsets.windows(2).all(|w| w[0] < w[1]),
        "oldest first: {offsets:?}"
    );
    b.stop().await;
}

#[tokio::test]
async fn operators_list_by_group_key_and_age_and_force_decisions() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = fast_config();
    cfg.defaults.check_after = Duration::from_secs(3600);
    let b = TestBroker::start(dir.path(), cfg).await;
    let c = b.client().await;
    let a = send_half(&c, "order-1").await;
    let z = send_half(&c, "order-2").await;
    send_half_with(
        &c,
        "other_group",
        "order-3",
        half_props("other_group", "order-3"),
    )
    .await;
    settle(&b).await;
    let svc = b.txn.service();
    let by_group = svc
        .list(&ListQuery {
            producer_group: Some(GROUP.into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(by_group.len(), 2);
    let by_key = svc
        .list(&ListQuery {
            key: Some("order-2".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        by_key.iter().map(|v| v.half_offset).collect::<Vec<_>>(),
        [z.queue_offset as u64]
    );
    let by_id = svc
        .list(&ListQuery {
            key: Some("UNIQ-order-1".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(by_id.len(), 1);
    let old = svc
        .list(&ListQuery {
            min_age: Some(Duration::from_secs(3600)),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(old.is_empty());
    let page = svc
        .list(&ListQuery {
            after: Some(a.queue_offset as u64),
            limit: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].half_offset, z.queue_offset as u64);

    assert_eq!(
        svc.force(a.queue_offset as u64, true).await.unwrap(),
        sluice_txn::Outcome::Applied(TxnState::Committed)
    );
    assert_eq!(
        svc.force(z.queue_offset as u64, false).await.unwrap(),
        sluice_txn::Outcome::Applied(TxnState::RolledBack)
    );
    assert!(
        svc.force(a.queue_offset as u64, false).await.is_err(),
        "forcing cannot undo a decision"
    );
    assert_eq!(
        end(&c, &a, ROLLBACK).await.code,
        code::TRANSACTION_SHOULD_COMMIT
    );
    let view = svc.get(a.queue_offset as u64).await.unwrap().unwrap();
    assert_eq!(view.decided_by, Some(Source::Operator));
    assert_eq!(visible_keys(&b, &c).await, ["order-1"]);
    let m = svc.metrics();
    assert_eq!((m.open, m.committed, m.rolled_back), (1, 1, 1));
    assert!(m.oldest_open_age_ms < 3_600_000);
    b.stop().await;
}
