//! SIGKILL of the real `sluice` process around transactions: a half message acknowledged before
//! the kill is still there after the restart, its commit (or rollback) still applies, exactly
//! once; and at no moment does a consumer see a message that was not committed.

use crate::common;
use crate::txn_common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use rand::{Rng, SeedableRng};
use sluice_protocol::message::record::sysflag;
use sluice_protocol::response_code as code;
use sluice_remoting::RemotingClient;
use txn_common::*;

const GROUP: &str = "crash_txn_producer";
const TOPIC: &str = "CrashTxnTopic";

fn env(check_after_ms: u64) -> Vec<(String, String)> {
    fast_env(check_after_ms)
}

fn start_txn(data: &std::path::Path, nsp: u16, bp: u16, check_after_ms: u64) -> Sluice {
    let e = env(check_after_ms);
    let refs: Vec<(&str, &str)> = e.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    start_with_env(data, nsp, bp, &refs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_after_sigkill_between_half_and_commit_applies_exactly_once() {
    let data = tempfile::tempdir().unwrap();
    let (nsp, bp) = (free_port(), free_port());
    // No checks in this test: every decision comes from the producer.
    let sluice = start_txn(data.path(), nsp, bp, 3_600_000);
    let c = RemotingClient::connect(sluice.broker).await.unwrap();
    let mut halves = Vec::new();
    for i in 0..20 {
        halves.push(send_half(&c, GROUP, TOPIC, &format!("h{i:02}")).await);
    }
    for h in &halves[..5] {
        assert_eq!(end(&c, GROUP, h, COMMIT).await, 0);
    }
    let before: Vec<String> = halves[..5].iter().map(|h| h.key.clone()).collect();
    assert_eq!(
        wait_visible(sluice.broker, TOPIC, 4, &before).await,
        before,
        "only the committed, once"
    );
    drop(c);
    sluice.kill();

    let sluice = start_txn(data.path(), nsp, bp, 3_600_000);
    assert_eq!(
        visible_keys(sluice.broker, TOPIC, 4).await,
        before,
        "the kill changed nothing visible"
    );
    let c = RemotingClient::connect(sluice.broker).await.unwrap();
    for h in &halves[5..15] {
        assert_eq!(
            end(&c, GROUP, h, COMMIT).await,
            0,
            "{} commits after the restart",
            h.key
        );
    }
    for h in &halves[15..] {
        assert_eq!(end(&c, GROUP, h, ROLLBACK).await, 0);
    }
    for h in &halves[..5] {
        assert_eq!(
            end(&c, GROUP, h, COMMIT).await,
            0,
            "a repeated commit is idempotent after a restart"
        );
    }
    assert_eq!(
        end(&c, GROUP, &halves[0], ROLLBACK).await,
        code::TRANSACTION_SHOULD_COMMIT
    );
    assert_eq!(
        end(&c, GROUP, &halves[19], COMMIT).await,
        code::TRANSACTION_SHOULD_ROLLBACK
    );
    let want: Vec<String> = halves[..15].iter().map(|h| h.key.clone()).collect();
    let got = wait_visible(sluice.broker, TOPIC, 4, &want).await;
    assert_eq!(
        got, want,
        "every commit applied exactly once, no rollback visible"
    );
    let pulled = pull_all(sluice.broker, TOPIC, 4).await;
    assert!(pulled
        .iter()
        .all(|p| sysflag::transaction_type(p.sys_flag) == sysflag::TRANSACTION_COMMIT));
    for p in &pulled {
        assert_eq!(
            p.body,
            format!("body-{}", p.key).into_bytes(),
            "{} changed",
            p.key
        );
    }
    drop(c);
    sluice.kill();

    let sluice = start_txn(data.path(), nsp, bp, 3_600_000);
    assert_eq!(
        visible_keys(sluice.broker, TOPIC, 4).await,
        want,
        "a second kill changes nothing"
    );
    let c = RemotingClient::connect(sluice.broker).await.unwrap();
    assert_eq!(end(&c, GROUP, &halves[7], COMMIT).await, 0);
    assert_eq!(
        end(&c, GROUP, &halves[17], COMMIT).await,
        code::TRANSACTION_SHOULD_ROLLBACK
    );
    sluice.stop();
}

/// What the producers did, shared with the test.
#[derive(Default)]
struct Log {
    /// key -> (half, intended decision), for every acknowledged half message.
    halves: BTreeMap<String, (Half, i32)>,
    /// Keys whose commit END was sent (before it was sent).
    commit_sent: BTreeSet<String>,
    /// Keys whose decision was acknowledged.
    decided: BTreeSet<String>,
}

/// Half message, then its decision (two of three commit), until the broker dies.
async fn producer(broker: std::net::SocketAddr, id: usize, cycle: usize, log: Arc<Mutex<Log>>) {
    let Ok(c) = RemotingClient::connect(broker).await else {
        return;
    };
    for n in 0..100_000usize {
        let key = format!("c{cycle}-p{id}-{n}");
        let (req, uniq) = half_request(GROUP, TOPIC, &key, (n % 4) as i32);
        let Ok(resp) = c.invoke(req, RPC).await else {
            return;
        };
        let Some(half) = half_from(&resp, &key, uniq) else {
            panic!("half refused: {} {:?}", resp.code, resp.remark)
        };
        let what = if n % 3 == 2 { ROLLBACK } else { COMMIT };
        {
            let mut l = log.lock().unwrap();
            l.halves.insert(key.clone(), (half.clone(), what));
            if what == COMMIT {
                l.commit_sent.insert(key.clone());
            }
        }
        match c.invoke(end_request(GROUP, &half, what), RPC).await {
            Ok(r) if r.code == 0 => {
                log.lock().unwrap().decided.insert(key);
            }
            Ok(r) => panic!("END refused: {} {:?}", r.code, r.remark),
            Err(_) => return,
        }
    }
}

/// Pulls all the time; every key it ever sees must have had its commit sent already.
async fn watcher(
    broker: std::net::SocketAddr,
    log: Arc<Mutex<Log>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> usize {
    let mut seen = 0;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let Some(pulled) = try_pull_all(broker, TOPIC, 4).await else {
            return seen;
        };
        let keys: Vec<String> = pulled.into_iter().map(|p| p.key).collect();
        {
            let l = log.lock().unwrap();
            for k in &keys {
                assert!(
                    l.commit_sent.contains(k),
                    "a consumer saw {k}, which was never committed"
                );
            }
        }
        seen = seen.max(keys.len());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_transactional_traffic_never_shows_an_uncommitted_message_or_a_duplicate() {
    let data = tempfile::tempdir().unwrap();
    let (nsp, bp) = (free_port(), free_port());
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x7A11);
    let log = Arc::new(Mutex::new(Log::default()));
    let mut watched = 0;
    for cycle in 0..3 {
        let before = log.lock().unwrap().halves.len();
        let sluice = start_txn(data.path(), nsp, bp, 3_600_000);
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let w = tokio::spawn(watcher(sluice.broker, Arc::clone(&log), Arc::clone(&stop)));
        let tasks: Vec<_> = (0..4)
            .map(|id| tokio::spawn(producer(sluice.broker, id, cycle, Arc::clone(&log))))
            .collect();
        // The random kill time counts from this cycle's first transaction (a slow start
        // must not leave a cycle with nothing at risk).
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while log.lock().unwrap().halves.len() == before {
            assert!(
                std::time::Instant::now() < deadline,
                "cycle {cycle}: no half in 60 s"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.gen_range(300..1200))).await;
        sluice.kill();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        // A producer's panic (a half or an END refused by a live broker) and the watcher's
        // (an uncommitted message seen) fail the test; they were dropped here before.
        for t in tasks {
            tokio::time::timeout(Duration::from_secs(30), t)
                .await
                .expect("producer ends")
                .expect("producer panicked");
        }
        watched += tokio::time::timeout(Duration::from_secs(30), w)
            .await
            .expect("watcher ends")
            .expect("watcher panicked");
    }
    assert!(watched > 0, "the watcher never saw a committed message");
    let sluice = start_txn(data.path(), nsp, bp, 3_600_000);
    let c = RemotingClient::connect(sluice.broker).await.unwrap();
    let (halves, decided) = {
        let l = log.lock().unwrap();
        (l.halves.clone(), l.decided.clone())
    };
    assert!(
        halves.len() > 100,
        "too few transactions to prove anything: {}",
        halves.len()
    );
    // Decisions that were in flight at a kill are sent again; whatever happened before, the
    // answer is the same decision (applied now, or already applied).
    let mut finished_late = 0;
    for (key, (half, what)) in &halves {
        if !decided.contains(key) {
            finished_late += 1;
            assert_eq!(
                end(&c, GROUP, half, *what).await,
                0,
                "{key} decided after the restart"
            );
        }
    }
    let want: Vec<String> = halves
        .iter()
        .filter(|(_, (_, w))| *w == COMMIT)
        .map(|(k, _)| k.clone())
        .collect();
    let mut want_sorted = want.clone();
    want_sorted.sort();
    let got = wait_visible(sluice.broker, TOPIC, 4, &want_sorted).await;
    assert_eq!(
        got.len(),
        want_sorted.len(),
        "no commit applied twice, no rollback visible"
    );
    assert_eq!(got, want_sorted);
    // What a consumer reads is what the producer sent, byte for byte.
    for p in pull_all(sluice.broker, TOPIC, 4).await {
        assert_eq!(
            p.body,
            format!("body-{}", p.key).into_bytes(),
            "{} changed",
            p.key
        );
    }
    eprintln!(
        "{} transactions over 3 kills ({} decided after a restart); {} committed, each visible once",
        halves.len(),
        finished_late,
        want_sorted.len()
    );
    sluice.stop();
}
