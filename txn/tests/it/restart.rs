//! Restart: the state is rebuilt from the half and op queues, bounded by the checkpoint, and
//! comes out the same whether the checkpoint is fresh, stale or missing. (SIGKILL of the real
//! binary is in `server/tests/it/txn_crash.rs`.)

use crate::common;

use std::path::Path;
use std::time::Duration;

use common::*;
use sluice_protocol::response_code as code;
use sluice_txn::{FinalAction, ListQuery, StateFilter, TxnConfig, TxnExtension, TxnState};

const WAIT: Duration = Duration::from_secs(20);

fn quiet() -> TxnConfig {
    let mut cfg = fast_config();
    cfg.defaults.check_after = Duration::from_secs(3600);
    cfg
}

fn checkpoint(dir: &Path) -> std::path::PathBuf {
    dir.join("txn").join("checkpoint.json")
}

#[tokio::test]
async fn open_and_decided_transactions_come_back_as_they_were() {
    let dir = tempfile::tempdir().unwrap();
    let b = TestBroker::start(dir.path(), quiet()).await;
    let c = b.client().await;
    let committed = send_half(&c, "a").await;
    let rolled = send_half(&c, "b").await;
    let open = send_half(&c, "c").await;
    assert_eq!(end(&c, &committed, COMMIT).await.code, 0);
    assert_eq!(end(&c, &rolled, ROLLBACK).await.code, 0);
    assert_eq!(end(&c, &open, UNKNOWN).await.code, 0);
    drop(c);
    b.stop().await;
    assert!(
        checkpoint(dir.path()).exists(),
        "a checkpoint is written at stop"
    );

    let b = TestBroker::start(dir.path(), quiet()).await;
    let c = b.client().await;
    let svc = b.txn.service();
    let live = svc.list(&ListQuery::default()).await.unwrap();
    assert_eq!(
        live.iter()
            .map(|v| (v.keys.as_str(), v.state))
            .collect::<Vec<_>>(),
        [("c", TxnState::Open)]
    );
    assert_eq!(
        end(&c, &committed, COMMIT).await.code,
        0,
        "idempotent after restart"
    );
    assert_eq!(
        end(&c, &committed, ROLLBACK).await.code,
        code::TRANSACTION_SHOULD_COMMIT
    );
    assert_eq!(
        end(&c, &rolled, COMMIT).await.code,
        code::TRANSACTION_SHOULD_ROLLBACK
    );
    assert_eq!(end(&c, &open, COMMIT).await.code, 0);
    assert_eq!(
        visible_keys(&b, &c).await,
        ["a", "c"],
        "each committed exactly once"
    );
    b.stop().await;
}

/// One offset of a checkpoint entry changed (a flipped digit) made the restart declare the
/// transaction lost, though its half message was intact where the other two said.
#[tokio::test]
async fn a_checkpoint_entry_with_one_offset_damaged_still_finds_its_half_message() {
    let dir = tempfile::tempdir().unwrap();
    let b = TestBroker::start(dir.path(), quiet()).await;
    let c = b.client().await;
    let sent = [
        send_half(&c, "p").await,
        send_half(&c, "cp").await,
        send_half(&c, "q").await,
        send_half(&c, "cq").await,
    ];
    settle(&b).await;
    assert_eq!(
        b.listed(&ListQuery::default()).await.len(),
        4,
        "in the table, so in the checkpoint written at stop"
    );
    drop(c);
    b.stop().await;
    let path = checkpoint(dir.path());
    let mut cp: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let live = cp["live"].as_array_mut().expect("live entries");
    assert_eq!(live.len(), 4);
    for (entry, field) in live.iter_mut().zip(["p", "cp", "q", "cq"]) {
        let was = entry[field].as_u64().unwrap();
        entry[field] = serde_json::json!(was + 1000);
    }
    std::fs::write(&path, serde_json::to_vec(&cp).unwrap()).unwrap();

    let b = TestBroker::start(dir.path(), quiet()).await;
    let svc = b.txn.service();
    assert_eq!(svc.metrics().lost_at_restart, 0);
    assert!(
        b.broker.store().health().damage.is_empty(),
        "a damaged checkpoint offset is not store damage"
    );
    let mut open: Vec<String> = svc
        .list(&ListQuery::default())
        .await
        .unwrap()
        .into_iter()
        .filter(|v| v.state == TxnState::Open)
        .map(|v| v.keys)
        .collect();
    open.sort();
    assert_eq!(open, ["cp", "cq", "p", "q"]);
    let c = b.client().await;
    for s in &sent {
        assert_eq!(end(&c, s, COMMIT).await.code, 0);
    }
    assert_eq!(visible_keys(&b, &c).await, ["cp", "cq", "p", "q"]);
    b.stop().await;
}

#[tokio::test]
async fn a_stale_or_missing_checkpoint_gives_the_same_state_and_no_check_for_decided_ones() {
    for variant in ["stale", "missing"] {
        let dir = tempfile::tempdir().unwrap();
        let b = TestBroker::start(dir.path(), quiet()).await;
        let c = b.client().await;
        let mut sent = Vec::new();
        for i in 0..6 {
            sent.push(send_half(&c, &format!("{variant}{i}")).await);
        }
        settle(&b).await;
        assert_eq!(b.listed(&ListQuery::default()).await.len(), 6);
        // Wait for a checkpoint listing all six as open, and keep a copy of it.
        assert!(
            eventually(WAIT, || std::fs::read(checkpoint(dir.path())).is_ok_and(
                |x| String::from_utf8_lossy(&x).matches("\"q\"").count() == 6
            ))
            .await
        );
        let old = std::fs::read(checkpoint(dir.path())).unwrap();
        for (i, s) in sent.iter().enumerate() {
            let what = if i % 3 == 0 {
                COMMIT
            } else if i % 3 == 1 {
                ROLLBACK
            } else {
                continue;
            };
            assert_eq!(end(&c, s, what).await.code, 0);
        }
        drop(c);
        b.stop().await;
        if variant == "stale" {
            std::fs::write(checkpoint(dir.path()), &old).unwrap();
        } else {
            std::fs::remove_file(checkpoint(dir.path())).unwrap();
        }

        let mut cfg = fast_config();
        cfg.defaults.check_max = 1;
        let b = TestBroker::start(dir.path(), cfg).await;
        let c = b.client().await;
        let mut checks = c.take_requests().unwrap();
        heartbeat(&c, GROUP, "checker-client").await;
        let svc = b.txn.service();
        let live: Vec<String> = svc
            .list(&ListQuery::default())
            .await
            .unwrap()
            .into_iter()
            .map(|v| v.keys)
            .collect();
        assert_eq!(
            live,
            [format!("{variant}2"), format!("{variant}5")],
            "{variant}: only the undecided are open"
        );
        if variant == "missing" {
            // Read back from the whole half queue, the decided ones are left out of memory
            // (their op records answer for them), not loaded and then decided.
            for i in [0, 1, 3, 4] {
                let got = svc.get(sent[i].queue_offset as u64).await.unwrap();
                assert!(got.is_none(), "{variant}{i} loaded again: {got:?}");
            }
            let again = end(&c, &sent[0], COMMIT).await;
            assert_eq!(again.code, 0, "a repeated commit: {:?}", again.remark);
        }
        let mut checked = Vec::new();
        while let Some(check) = next_check(&mut checks, Duration::from_secs(3)).await {
            let h =
                sluice_protocol::remoting::custom::CheckTransactionStateRequestHeader::from_ext(
                    &check.ext_fields,
                )
                .unwrap();
            checked.push(h.tran_state_table_offset);
            answer_check(&c, GROUP, &check, UNKNOWN).await;
        }
        checked.sort_unstable();
        assert_eq!(
            checked,
            [sent[2].queue_offset, sent[5].queue_offset],
            "{variant}: checks only for undecided ones"
        );
        assert_eq!(
            visible_keys(&b, &c).await,
            [format!("{variant}0"), format!("{variant}3")]
        );
        b.stop().await;
    }
}

/// Starts the broker again on `dir`, greets it as a producer of the group, and returns it with
/// the client, its check receiver and the check count of the transaction at `half_offset`.
async fn restart_counting(
    dir: &Path,
    cfg: TxnConfig,
    half_offset: i64,
) -> (
    TestBroker,
    sluice_broker::RemotingClient,
    tokio::sync::mpsc::Receiver<sluice_protocol::RemotingCommand>,
    u32,
) {
    let b = TestBroker::start(dir, cfg).await;
    let c = b.client().await;
    let checks = c.take_requests().unwrap();
    heartbeat(&c, GROUP, "again").await;
    let count = b.view(half_offset as u64).await.check_count;
    (b, c, checks, count)
}

/// Answers the next `n` checks UNKNOWN.
async fn answer_unknown(
    c: &sluice_broker::RemotingClient,
    checks: &mut tokio::sync::mpsc::Receiver<sluice_protocol::RemotingCommand>,
    n: usize,
) {
    for _ in 0..n {
        let check = next_check(checks, WAIT).await.expect("check");
        answer_check(c, GROUP, &check, UNKNOWN).await;
    }
}

/// Answers UNKNOWN every check until none comes for 3 s; returns how many there were.
async fn answer_the_rest_unknown(
    c: &sluice_broker::RemotingClient,
    checks: &mut tokio::sync::mpsc::Receiver<sluice_protocol::RemotingCommand>,
) -> u32 {
    let mut more = 0;
    while let Some(check) = next_check(checks, Duration::from_secs(3)).await {
        more += 1;
        answer_check(c, GROUP, &check, UNKNOWN).await;
    }
    more
}

#[tokio::test]
async fn check_counts_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = fast_config();
    cfg.defaults.check_max = 3;
    let b = TestBroker::start(dir.path(), cfg.clone()).await;
    let c = b.client().await;
    let mut checks = c.take_requests().unwrap();
    let s = send_half(&c, "cc").await;
    answer_unknown(&c, &mut checks, 2).await;
    b.stop().await;

    let (b, c, mut checks, before) = restart_counting(dir.path(), cfg, s.queue_offset).await;
    let svc = b.txn.service();
    assert!(before >= 2, "the count survived: {before}");
    let more = answer_the_rest_unknown(&c, &mut checks).await;
    assert_eq!(before + more, 3, "check_max holds across the restart");
    assert!(reaches_state(&svc, s.queue_offset as u64, TxnState::Discarded, WAIT).await);
    b.stop().await;
}

/// A crash between checkpoints: the checkpoint does not know the checks sent since, but the
/// check journal, synced before each round leaves, does.
#[tokio::test]
async fn check_counts_sent_after_the_last_checkpoint_survive_through_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("txn").join("checks.journal");
    let mut cfg = fast_config();
    cfg.defaults.check_max = 3;
    cfg.checkpoint_interval = Duration::from_secs(3600); // only the stop writes one
    let b = TestBroker::start(dir.path(), cfg.clone()).await;
    let c = b.client().await;
    let mut checks = c.take_requests().unwrap();
    let s = send_half(&c, "jj").await;
    answer_unknown(&c, &mut checks, 2).await;
    let journalled = std::fs::read(&journal).expect("the journal holds the sent checks");
    assert_eq!(journalled.len(), 2 * 32, "one record per check sent");
    b.stop().await;
    assert_eq!(
        std::fs::metadata(&journal).unwrap().len(),
        0,
        "the checkpoint written at stop empties the journal"
    );

    // What a SIGKILL after the two checks leaves: no checkpoint with them, the journal full.
    std::fs::remove_file(checkpoint(dir.path())).unwrap();
    std::fs::write(&journal, &journalled).unwrap();
    let (b, c, mut checks, before) = restart_counting(dir.path(), cfg, s.queue_offset).await;
    let svc = b.txn.service();
    assert_eq!(before, 2, "the journal restored the count");
    let more = answer_the_rest_unknown(&c, &mut checks).await;
    assert_eq!(more, 1, "check_max holds across the crash");
    assert!(reaches_state(&svc, s.queue_offset as u64, TxnState::Discarded, WAIT).await);
    b.stop().await;
}

/// Sends one half message ("old") that nobody ends, waits until it has been carried forward
/// `times` times, and stops the broker; returns the send and the transaction's last view.
async fn carried_forward(dir: &Path, times: u64) -> (Sent, sluice_txn::TxnView) {
    let mut cfg = quiet();
    cfg.carry_forward_after = Some(Duration::from_millis(200));
    let b = TestBroker::start(dir, cfg).await;
    let c = b.client().await;
    let s = send_half(&c, "old").await;
    let svc = b.txn.service();
    assert!(
        eventually(WAIT, || svc.metrics().carried_forward >= times).await,
        "carried forward again and again while it waits"
    );
    let view = svc.get(s.queue_offset as u64).await.unwrap().unwrap();
    assert!(view.current_half_offset > view.half_offset);
    drop(c);
    b.stop().await;
    (s, view)
}

#[tokio::test]
async fn an_old_undecided_half_message_is_carried_forward_under_the_same_identity() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = carried_forward(dir.path(), 2).await;

    // Even without the checkpoint, the copies lead back to the same single transaction.
    std::fs::remove_file(checkpoint(dir.path())).unwrap();
    let b = TestBroker::start(dir.path(), quiet()).await;
    let c = b.client().await;
    let live = b
        .listed(&ListQuery {
            states: StateFilter::All,
            ..Default::default()
        })
        .await;
    assert_eq!(live.len(), 1, "{live:?}");
    assert_eq!(live[0].half_offset, s.queue_offset as u64);
    assert_eq!(
        end(&c, &s, COMMIT).await.code,
        0,
        "the producer's original offsets still work"
    );
    let got = consume_all(&b, &c, TOPIC).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].prepared_offset, s.commit_log_offset);
    assert_eq!(
        got[0].props.get("TXN_ORIGIN_PHYS"),
        None,
        "no internal markers on the real message"
    );
    b.stop().await;
}

#[tokio::test]
async fn a_parked_transaction_stays_parked_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = fast_config();
    cfg.defaults.check_max = 1;
    cfg.defaults.final_action = FinalAction::Keep;
    let b = TestBroker::start(dir.path(), cfg.clone()).await;
    let c = b.client().await;
    let mut checks = c.take_requests().unwrap();
    let s = send_half(&c, "p").await;
    next_check(&mut checks, WAIT).await.unwrap();
    let svc = b.txn.service();
    assert!(reaches_state(&svc, s.queue_offset as u64, TxnState::Parked, WAIT).await);
    b.stop().await;
    for drop_checkpoint in [false, true] {
        if drop_checkpoint {
            std::fs::remove_file(checkpoint(dir.path())).unwrap();
        }
        let b = TestBroker::start(dir.path(), cfg.clone()).await;
        let c = b.client().await;
        let mut checks = c.take_requests().unwrap();
        heartbeat(&c, GROUP, "p2").await;
        let view = b.view(s.queue_offset as u64).await;
        assert_eq!(
            view.state,
            TxnState::Parked,
            "checkpoint dropped: {drop_checkpoint}"
        );
        assert!(
            next_check(&mut checks, Duration::from_millis(1500))
                .await
                .is_none(),
            "no checks for a parked one"
        );
        b.stop().await;
    }
}

/// A commit torn from its op record by a crash, its message stored in `stored_topic` (its own
/// topic, or parked in the timer topic for a delivery time): recovery completes the commit.
async fn torn_commit_is_completed_not_repeated(stored_topic: &str, key: &str) {
    torn_commit_after(stored_topic, key, Stop::Crash).await;
}

/// How the broker stopped after the torn commit.
enum Stop {
    /// As after a SIGKILL.
    Crash,
    /// Cleanly, with the commit still being stored at the last checkpoint.
    CleanWhileCommitPending,
}

async fn torn_commit_after(stored_topic: &str, key: &str, stop: Stop) {
    use sluice_protocol::message::record::sysflag;
    use sluice_protocol::Properties;
    use sluice_store::MessageInput;

    let dir = tempfile::tempdir().unwrap();
    let b = TestBroker::start(dir.path(), quiet()).await;
    let c = b.client().await;
    // A commit is parked only for a half that asks for a delivery time.
    let parked = stored_topic != TOPIC;
    let mut hp = half_props(GROUP, key);
    if parked {
        hp.insert("TIMER_DELIVER_MS", "1");
    }
    let s = send_half_with(&c, GROUP, key, hp).await;
    // The state a crash between the two records of a commit would leave: the real message is
    // stored (past the hooks, as the commit does), its op record is not.
    let mut p = Properties::new();
    p.insert("KEYS", key);
    p.insert("UNIQ_KEY", s.transaction_id.clone());
    if parked {
        p.insert("REAL_TOPIC", TOPIC);
        p.insert("REAL_QID", "1");
        p.insert("TIMER_OUT_MS", "1");
    }
    let mut m = MessageInput::new(stored_topic, if parked { 0 } else { 1 }, "body-torn");
    m.sys_flag = sysflag::TRANSACTION_COMMIT;
    m.prepared_transaction_offset = s.commit_log_offset;
    m.properties = p.encode();
    b.broker.services().put(vec![m]).await.unwrap();
    // In memory before the stop, so the last checkpoint lists it.
    assert!(
        reaches_state(
            &b.txn.service(),
            s.queue_offset as u64,
            TxnState::Open,
            WAIT
        )
        .await,
        "the half message is read"
    );
    drop(c);
    b.stop().await;
    match stop {
        // As after a SIGKILL: the abort marker says the last stop was not clean.
        Stop::Crash => std::fs::write(dir.path().join("abort"), b"").unwrap(),
        // The checkpoint of a clean stop that came while the commit's op record was still
        // being stored (or its append had failed).
        Stop::CleanWhileCommitPending => {
            let path = checkpoint(dir.path());
            let mut cp: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
            let live = cp["live"].as_array_mut().unwrap();
            assert_eq!(live.len(), 1, "{cp}");
            live[0]["commit_pending"] = serde_json::Value::Bool(true);
            std::fs::write(&path, serde_json::to_vec(&cp).unwrap()).unwrap();
        }
    }

    let mut cfg = fast_config();
    cfg.defaults.check_max = 1;
    let b = TestBroker::start(dir.path(), cfg).await;
    let c = b.client().await;
    let mut checks = c.take_requests().unwrap();
    heartbeat(&c, GROUP, "after-crash").await;
    let svc = b.txn.service();
    assert!(
        reaches_state(&svc, s.queue_offset as u64, TxnState::Committed, WAIT).await,
        "recovery completes the commit"
    );
    assert_eq!(
        svc.get(s.queue_offset as u64)
            .await
            .unwrap()
            .unwrap()
            .decided_by,
        Some(sluice_txn::Source::Recovery)
    );
    assert!(
        next_check(&mut checks, Duration::from_millis(1500))
            .await
            .is_none(),
        "no check for it"
    );
    assert_eq!(
        end(&c, &s, COMMIT).await.code,
        0,
        "a repeated commit is idempotent"
    );
    assert_eq!(
        end(&c, &s, ROLLBACK).await.code,
        code::TRANSACTION_SHOULD_COMMIT
    );
    if !parked {
        assert_eq!(visible_keys(&b, &c).await, [key], "visible exactly once");
    }
    b.stop().await;
}

#[tokio::test]
async fn a_commit_torn_from_its_op_record_by_a_crash_is_completed_not_repeated() {
    torn_commit_is_completed_not_repeated(TOPIC, "torn").await;
}

/// A commit whose op record could not be stored before a clean stop: the checkpoint marks it,
/// and the next start completes it though the stop was clean (it used to look only after a
/// crash, so the transaction came back open and a check could commit it again).
#[tokio::test]
async fn a_commit_pending_at_a_clean_stop_is_completed_at_the_next_start() {
    torn_commit_after(TOPIC, "pending", Stop::CleanWhileCommitPending).await;
}

/// The torn commit of a message with a delivery time was parked in the timer topic. Recovery
/// looked only where the hooks would put it at restart, which for a time now past is the
/// message's own topic: it missed the parked copy, and a check then committed it again.
#[tokio::test]
async fn a_torn_commit_parked_for_a_delivery_time_is_found_and_completed() {
    torn_commit_is_completed_not_repeated(sluice_broker::TIMER_TOPIC, "torn-parked").await;
}

/// A checkpoint ahead of its queues (a machine crash under async flush, a store restored
/// from a backup, a damaged tail cut by recovery) used to leave every half stored below its
/// saved offset unread for good: END answered "unknown transaction" and no check was ever
/// sent. Reading now starts at most at each queue's end.
#[tokio::test]
async fn a_checkpoint_ahead_of_its_queues_does_not_hide_new_transactions() {
    let dir = tempfile::tempdir().unwrap();
    let b = TestBroker::start(dir.path(), quiet()).await;
    let c = b.client().await;
    let first = send_half(&c, "k1").await;
    assert_eq!(end(&c, &first, COMMIT).await.code, 0);
    drop(c);
    b.stop().await;
    let path = checkpoint(dir.path());
    let mut cp: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    for field in ["half_next", "op_next"] {
        let v = cp[field].as_u64().unwrap();
        cp[field] = serde_json::json!(v + 100);
    }
    std::fs::write(&path, serde_json::to_vec(&cp).unwrap()).unwrap();

    let b = TestBroker::start(dir.path(), quiet()).await;
    let c = b.client().await;
    let second = send_half(&c, "k2").await;
    let r = end(&c, &second, COMMIT).await;
    assert_eq!(r.code, 0, "{:?}", r.remark);
    assert_eq!(visible_keys(&b, &c).await, ["k1", "k2"]);
    drop(c);
    b.stop().await;
}

/// The checkpoint lists an undecided transaction whose original half is gone (retention took
/// it) while a carry-forward copy lies past the checkpoint's `half_next` (stored after it
/// was written). The copy used to be ignored at the restart and the transaction counted
/// lost; it is now adopted with the progress the checkpoint saved.
#[tokio::test]
async fn a_listed_transaction_whose_original_is_gone_is_found_again_through_its_copy() {
    let dir = tempfile::tempdir().unwrap();
    let (s, view) = carried_forward(dir.path(), 1).await;

    // As if the checkpoint predates the copy, and the half it points at is gone.
    let path = checkpoint(dir.path());
    let mut cp: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    cp["half_next"] = serde_json::json!(view.current_half_offset);
    let live = cp["live"].as_array_mut().unwrap();
    assert_eq!(live.len(), 1);
    live[0]["cp"] = serde_json::json!(1u64 << 40);
    std::fs::write(&path, serde_json::to_vec(&cp).unwrap()).unwrap();

    let b = TestBroker::start(dir.path(), quiet()).await;
    let c = b.client().await;
    let svc = b.txn.service();
    assert_eq!(svc.metrics().lost_at_restart, 0);
    assert!(svc.get(s.queue_offset as u64).await.unwrap().is_some());
    assert_eq!(end(&c, &s, COMMIT).await.code, 0);
    assert_eq!(visible_keys(&b, &c).await, ["old"]);
    drop(c);
    b.stop().await;
}

/// A size budget that deletes every segment but the newest (checked by hand here).
fn tiny_retention(cfg: &mut sluice_broker::BrokerConfig) {
    cfg.store.retention_bytes = Some(1);
    cfg.store.retention_bytes_min_age = Duration::ZERO;
    cfg.store.clean_interval = Duration::from_secs(3600);
}

/// At a restart without a checkpoint the rebuild reads the half queue from 0; once retention
/// had deleted its first entries the read stopped there, nothing was rebuilt, and the first
/// tick took every retained half for an open transaction: decided ones were checked (and
/// could be committed) again.
#[tokio::test]
async fn without_a_checkpoint_decided_halves_past_retention_stay_decided() {
    let dir = tempfile::tempdir().unwrap();
    let b = TestBroker::start_tweaked(dir.path(), TxnExtension::new(quiet()), tiny_retention).await;
    let c = b.client().await;
    let a = send_half(&c, "a").await;
    assert_eq!(end(&c, &a, COMMIT).await.code, 0);
    // Filler past two 4 MiB segments, so the half queue's first entry goes with retention.
    let body = vec![b'f'; 200 << 10];
    for i in 0..45 {
        let mut p = sluice_protocol::Properties::new();
        p.insert("KEYS", format!("fill-{i}"));
        let resp = c
            .invoke(send_request(GROUP, "Filler", 0, 0, &p, &body), RPC)
            .await
            .unwrap();
        assert_eq!(resp.code, 0, "{:?}", resp.remark);
    }
    let done = send_half(&c, "b").await;
    assert_eq!(end(&c, &done, COMMIT).await.code, 0);
    let open = send_half(&c, "c").await;
    let store = b.broker.services().store().clone();
    // Retention waits for a checkpoint's queue sync to cover the segments (bounded wait).
    for _ in 0..100 {
        store.run_retention().unwrap();
        if store.min_offset("RMQ_SYS_TRANS_HALF_TOPIC", 0) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        store.min_offset("RMQ_SYS_TRANS_HALF_TOPIC", 0) > 0,
        "retention took the first half"
    );
    settle(&b).await;
    drop(c);
    b.stop().await;

    std::fs::remove_file(checkpoint(dir.path())).unwrap();
    let b = TestBroker::start_tweaked(dir.path(), TxnExtension::new(quiet()), tiny_retention).await;
    settle(&b).await;
    let svc = b.txn.service();
    let open_now: Vec<i64> = svc
        .list(&ListQuery {
            states: StateFilter::Live,
            ..ListQuery::default()
        })
        .await
        .unwrap()
        .iter()
        .map(|v| v.half_offset as i64)
        .collect();
    assert_eq!(open_now, [open.queue_offset], "only c is open");
    let b_now = svc.get(done.queue_offset as u64).await.unwrap();
    assert!(
        b_now
            .as_ref()
            .is_none_or(|v| v.state == TxnState::Committed),
        "b stays committed: {b_now:?}"
    );
    b.stop().await;
}
