//! Transactions with the independent C++ client (`TransactionMQProducer` of librocketmq.so,
//! through `tests/compat/cpp_client.py txn`), against the real `sluice` binary: commit,
//! rollback, UNKNOWN then a check answered commit or rollback, another producer of the group
//! answering for one that is gone, the final action after `check_max`, and a broker SIGKILL
//! between the half message and the commit. The client is fetched like in `compat_cpp.rs`;
//! if it cannot be, the tests fail (a skipped compatibility test is not a pass).

use crate::common;
use crate::cpp_driver;
use crate::txn_common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use cpp_driver::*;
use serde_json::Value;
use sluice_protocol::remoting::custom::QueryMessageRequestHeader;
use sluice_protocol::{request_code, response_code, Properties, RecordView, RemotingCommand};
use sluice_remoting::RemotingClient;
use txn_common::*;

/// A transactional producer run; returns its report.
#[allow(clippy::too_many_arguments)]
fn txn(
    ns: SocketAddr,
    group: &str,
    topic: &str,
    prefix: &str,
    count: usize,
    local: &str,
    check: &str,
    expect_checks: usize,
    extra: &[&str],
) -> KillOnDrop {
    let (n, e) = (count.to_string(), expect_checks.to_string());
    let mut args = vec![
        "txn",
        "--group",
        group,
        "--topic",
        topic,
        "--key-prefix",
        prefix,
        "--count",
        &n,
        "--local",
        local,
        "--check",
        check,
        "--expect-checks",
        &e,
    ];
    if expect_checks > 0 {
        args.extend(["--hold", "120"]);
    }
    args.extend_from_slice(extra);
    driver(ns, &args)
}

fn sent_ok(v: &Value, count: usize) {
    assert_eq!(v["failure_count"], 0, "sends failed: {v}");
    assert_eq!(v["sent"].as_u64().unwrap() as usize, count, "{v}");
    for r in v["results"].as_array().unwrap() {
        assert_eq!(r["status"], 0, "SEND_OK: {r}");
    }
}

/// The keys a producer was asked about (a slow answer may be asked about twice).
fn check_keys(v: &Value) -> BTreeSet<String> {
    v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["key"].as_str().unwrap().to_owned())
        .collect()
}

fn name_set(prefix: &str, n: usize) -> BTreeSet<String> {
    names(prefix, n).into_iter().collect()
}

fn start_txn(data: &std::path::Path, nsp: u16, bp: u16, extra: &[(&str, &str)]) -> Sluice {
    let mut env = fast_env(300);
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    start_with_env(data, nsp, bp, &refs)
}

fn names(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

#[test]
fn cpp_commit_rollback_and_check_back_answers_reach_consumers_exactly_as_decided() {
    let data = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    client_path();
    let sluice = start_txn(data.path(), 0, 0, &[]);
    let ns = sluice.ns;
    // Create the topic, so the consumer finds a route at once.
    sent_ok(
        &finish(
            txn(
                ns,
                "cpp_warm",
                "TxnCpp",
                "warm",
                1,
                "commit",
                "unknown",
                0,
                &[],
            ),
            Duration::from_secs(120),
        ),
        1,
    );
    let ready = work.path().join("c.ready");
    let consumer = driver(
        ns,
        &[
            "consume",
            "--group",
            "txn_cpp_consumer",
            "--topic",
            "TxnCpp",
            "--expect",
            "9",
            "--timeout",
            "180",
            "--settle",
            "4",
            "--ready-file",
            &ready.to_string_lossy(),
        ],
    );
    wait_ready(&ready);

    let commits = txn(
        ns,
        "cpp_commit",
        "TxnCpp",
        "c",
        5,
        "commit",
        "rollback",
        0,
        &[],
    );
    let rollbacks = txn(
        ns,
        "cpp_rollback",
        "TxnCpp",
        "r",
        5,
        "rollback",
        "commit",
        0,
        &[],
    );
    let late_commit = txn(
        ns,
        "cpp_late_commit",
        "TxnCpp",
        "uc",
        3,
        "unknown",
        "commit",
        3,
        &[],
    );
    let late_rollback = txn(
        ns,
        "cpp_late_rollback",
        "TxnCpp",
        "ur",
        3,
        "unknown",
        "rollback",
        3,
        &[],
    );
    let limit = Duration::from_secs(180);
    sent_ok(&finish(commits, limit), 5);
    sent_ok(&finish(rollbacks, limit), 5);
    let lc = finish(late_commit, limit);
    sent_ok(&lc, 3);
    let lr = finish(late_rollback, limit);
    sent_ok(&lr, 3);
    assert_eq!(
        check_keys(&lc),
        name_set("uc", 3),
        "each UNKNOWN transaction is checked, then committed"
    );
    assert_eq!(
        check_keys(&lr),
        name_set("ur", 3),
        "each UNKNOWN transaction is checked, then rolled back"
    );
    for c in lc["checks"].as_array().unwrap() {
        assert_eq!(
            c["topic"], "TxnCpp",
            "the check carries the real topic: {c}"
        );
        assert!(
            c["times"].as_str().unwrap().parse::<u32>().is_ok(),
            "TRANSACTION_CHECK_TIMES: {c}"
        );
    }

    let got = finish(consumer, Duration::from_secs(240));
    let mut want: BTreeSet<String> = names("c", 5).into_iter().collect();
    want.extend(names("uc", 3));
    want.insert("warm0".into());
    let keys: BTreeSet<String> = got["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        keys, want,
        "consumers get the committed, never the rolled back or undecided"
    );
    assert_eq!(got["count"], got["unique"], "each exactly once: {got}");
    sluice.stop();
}

#[test]
fn cpp_another_producer_of_the_group_answers_for_one_that_is_gone() {
    let data = tempfile::tempdir().unwrap();
    client_path();
    let sluice = start_txn(data.path(), 0, 0, &[]);
    let gone = finish(
        txn(
            sluice.ns,
            "cpp_shared",
            "TxnShared",
            "gone",
            2,
            "unknown",
            "unknown",
            0,
            &["--settle", "0", "--exit-hard"],
        ),
        Duration::from_secs(120),
    );
    sent_ok(&gone, 2);
    let other = finish(
        txn(
            sluice.ns,
            "cpp_shared",
            "TxnShared",
            "other",
            0,
            "commit",
            "commit",
            2,
            &["--warm-topic", "TxnSharedWarm"],
        ),
        Duration::from_secs(180),
    );
    assert_eq!(other["failure_count"], 0, "{other}");
    assert!(
        check_keys(&other).is_superset(&name_set("gone", 2)),
        "the other member was asked: {other}"
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let want = names("gone", 2);
    let got = rt.block_on(wait_visible(sluice.broker, "TxnShared", 4, &want));
    assert_eq!(got, want, "committed by the other producer, once each");
    sluice.stop();
}

/// Waits (bounded) for the op record of the final action on `half_offset`.
/// Waits for the op record of `op` on the half message at `half_offset`. Consumers may not
/// pull the op topic, so it is found the way tools find messages: QUERY_MESSAGE by key (op
/// records carry the half offset in KEYS).
async fn wait_final_action(broker: SocketAddr, half_offset: i64, op: &str) -> bool {
    let client = RemotingClient::connect(broker).await.unwrap();
    for _ in 0..600 {
        let h = QueryMessageRequestHeader {
            topic: "RMQ_SYS_TRANS_OP_HALF_TOPIC".into(),
            key: half_offset.to_string(),
            max_num: 32,
            begin_timestamp: 0,
            end_timestamp: i64::MAX / 2,
            ..QueryMessageRequestHeader::default()
        };
        let resp = client
            .invoke(
                RemotingCommand::request(request_code::QUERY_MESSAGE, h.to_ext()),
                RPC,
            )
            .await
            .unwrap();
        if resp.code == response_code::SUCCESS {
            let mut body = &resp.body[..];
            while !body.is_empty() {
                let v = RecordView::parse(body, usize::MAX).unwrap();
                let p = Properties::decode(v.properties);
                if v.body == half_offset.to_string().as_bytes() && p.get("TXN_OP") == Some(op) {
                    return true;
                }
                body = &body[v.total_size..];
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[test]
fn cpp_checks_stop_at_check_max_then_the_final_rollback_refuses_a_late_commit() {
    let data = tempfile::tempdir().unwrap();
    client_path();
    let sluice = start_txn(
        data.path(),
        free_port(),
        free_port(),
        &[("SLUICE_TXN_CHECK_MAX", "2")],
    );
    // Holds 3 s after the second check: a third would be seen.
    let v = finish(
        txn(
            sluice.ns,
            "cpp_max",
            "TxnMax",
            "mx",
            1,
            "unknown",
            "unknown",
            2,
            &["--settle", "3"],
        ),
        Duration::from_secs(180),
    );
    sent_ok(&v, 1);
    let checks = v["checks"].as_array().unwrap();
    assert_eq!(checks.len(), 2, "exactly check_max checks: {v}");
    assert_eq!(
        (checks[0]["times"].as_str(), checks[1]["times"].as_str()),
        (Some("1"), Some("2"))
    );
    let half = Half {
        key: "mx0".into(),
        uniq: checks[0]["id"].as_str().unwrap().to_owned(),
        queue_offset: checks[0]["queue_offset"].as_i64().unwrap(),
        commit_log_offset: checks[0]["commit_log_offset"].as_i64().unwrap(),
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        assert!(
            wait_final_action(sluice.broker, half.queue_offset, "discard").await,
            "the final rollback is recorded"
        );
        let c = RemotingClient::connect(sluice.broker).await.unwrap();
        assert_eq!(
            end(&c, "cpp_max", &half, COMMIT).await,
            response_code::TRANSACTION_SHOULD_ROLLBACK,
            "a commit after the final rollback is refused"
        );
        assert!(visible_keys(sluice.broker, "TxnMax", 4).await.is_empty());
    });
    sluice.stop();
}

#[test]
fn cpp_broker_sigkill_between_half_and_commit_then_the_check_commits_once() {
    let data = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    client_path();
    let (nsp, bp) = (free_port(), free_port());
    // First life: no checks, so nothing can be decided before the kill.
    let sluice = start_txn(
        data.path(),
        nsp,
        bp,
        &[("SLUICE_TXN_CHECK_AFTER_MS", "3600000")],
    );
    let ready = work.path().join("sent");
    let producer = txn(
        sluice.ns,
        "cpp_crash",
        "TxnCrash",
        "kx",
        3,
        "unknown",
        "commit",
        3,
        &["--ready-file", &ready.to_string_lossy()],
    );
    for _ in 0..2400 {
        if ready.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(ready.exists(), "the producer sent its half messages");
    sluice.kill();
    let rt = tokio::runtime::Runtime::new().unwrap();
    // Second life, same ports: the producer reconnects (its heartbeat) and answers the checks.
    let sluice = start_txn(data.path(), nsp, bp, &[]);
    let v = finish(producer, Duration::from_secs(240));
    sent_ok(&v, 3);
    assert_eq!(
        check_keys(&v),
        name_set("kx", 3),
        "checked after the restart: {v}"
    );
    let want = names("kx", 3);
    let got = rt.block_on(wait_visible(sluice.broker, "TxnCrash", 4, &want));
    assert_eq!(got, want, "the commit applied once after the SIGKILL");
    sluice.stop();
}
