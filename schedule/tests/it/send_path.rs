//! Delayed messages through the broker's send path: arbitrary times and delay levels are
//! released to their real topic and queue, with their identity, never before their time;
//! bad delays are refused at send time with MESSAGE_ILLEGAL.

use crate::common;

use std::time::Duration;

use common::*;
use sluice_store::now_ms;

const TOPIC: &str = "Orders";

/// A case: name (also the KEYS), extra properties, the delay it asks for (ms).
type Case = (&'static str, Vec<(String, String)>, i64);

#[tokio::test]
async fn timer_properties_and_levels_are_released_on_time_with_their_identity() {
    let dir = tempfile::tempdir().unwrap();
    let ns = start_namesrv().await;
    let node = Node::start(dir.path(), ns.local_addr(), test_config()).await;
    let client = node.client().await;
    let sent_at = now_ms();
    let cases: Vec<Case> = vec![
        ("ms", vec![("TIMER_DELAY_MS".into(), "400".into())], 400),
        ("sec", vec![("TIMER_DELAY_SEC".into(), "1".into())], 1000),
        (
            "at",
            vec![("TIMER_DELIVER_MS".into(), (sent_at + 700).to_string())],
            700,
        ),
        ("level", vec![("DELAY".into(), "2".into())], 700),
        ("clamped", vec![("DELAY".into(), "40".into())], 1000),
    ];
    for (i, (name, extra, _)) in cases.iter().enumerate() {
        let mut p = props(&[("KEYS", name), ("TAGS", "tagA"), ("user-prop", "kept")]);
        for (k, v) in extra {
            p.insert(k.as_str(), v.as_str());
        }
        let resp = send(&client, TOPIC, (i % 4) as i32, name.as_bytes(), &p).await;
        assert_eq!(resp.code, 0, "{name}: {:?}", resp.remark);
    }
    let early = node.released(TOPIC, 4);
    assert!(
        early.is_empty(),
        "nothing is visible before its time: {early:?}"
    );
    let got = node
        .wait_released(TOPIC, 4, cases.len(), Duration::from_secs(20))
        .await;
    assert_eq!(
        got.len(),
        cases.len(),
        "every delayed message released once"
    );
    for (i, (name, _, delay)) in cases.iter().enumerate() {
        let m = got
            .iter()
            .find(|m| m.props.get("KEYS") == Some(name))
            .expect("released");
        m.assert_not_early();
        assert!(m.due_ms() >= sent_at + delay, "{name} due too soon");
        assert_eq!(
            (m.queue_id, &m.body[..]),
            ((i % 4) as i32, name.as_bytes()),
            "{name}"
        );
        assert_eq!(m.props.get("TAGS"), Some("tagA"));
        assert_eq!(m.props.get("user-prop"), Some("kept"));
        assert_eq!(m.props.get("REAL_TOPIC"), Some(TOPIC));
        assert!(m.props.get("UNIQ_KEY").is_some());
        assert_eq!(
            m.props.get("TIMER_OUT_MS"),
            None,
            "timer internals are removed"
        );
    }
    let clamped = got
        .iter()
        .find(|m| m.props.get("KEYS") == Some("clamped"))
        .unwrap();
    assert_eq!(
        clamped.props.get("DELAY"),
        Some("3"),
        "a level above the last is clamped to it"
    );
    // A released message is visible once stored, a moment before the deliverer hears its
    // append acknowledged and counts it: wait (bounded) for the count.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let stats = loop {
        let stats = node.service().stats().unwrap();
        if stats.delivered >= cases.len() as u64 || std::time::Instant::now() > deadline {
            break stats;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(stats.delivered, cases.len() as u64);
    assert_eq!(stats.pending, 0);
    assert!(stats.lateness_quantile_ms(0.99).is_some());
    node.stop().await;
    ns.shutdown().await;
}

#[tokio::test]
async fn no_delay_dlq_marker_and_recent_past_are_stored_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let ns = start_namesrv().await;
    let node = Node::start(dir.path(), ns.local_addr(), test_config()).await;
    let client = node.client().await;
    let past = (now_ms() - 2000).to_string();
    for p in [
        props(&[("DELAY", "0")]),
        props(&[("DELAY", "-1")]),
        props(&[("TIMER_DELIVER_MS", past.as_str())]),
        props(&[("TIMER_DELAY_MS", "0")]),
    ] {
        let resp = send(&client, TOPIC, 0, b"now", &p).await;
        assert_eq!(resp.code, 0, "{:?}", resp.remark);
    }
    sluice_broker_wait(&node).await;
    assert_eq!(
        node.released(TOPIC, 1).len(),
        4,
        "stored in the real topic at once"
    );
    assert_eq!(node.service().stats().unwrap().parked, 0);
    node.stop().await;
    ns.shutdown().await;
}

async fn sluice_broker_wait(node: &Node) {
    let store = node.broker.store();
    let ok = tokio::task::spawn_blocking(move || store.wait_dispatched(Duration::from_secs(10)))
        .await
        .unwrap();
    assert!(ok);
}

#[tokio::test]
async fn bad_delays_are_refused_at_send_time() {
    let dir = tempfile::tempdir().unwrap();
    let ns = start_namesrv().await;
    let node = Node::start(dir.path(), ns.local_addr(), test_config()).await;
    let client = node.client().await;
    let long_ago = (now_ms() - 3_600_000).to_string();
    let cases = [
        (
            props(&[("TIMER_DELIVER_MS", long_ago.as_str())]),
            "in the past",
        ),
        (props(&[("TIMER_DELAY_SEC", "2678400")]), "maximum"),
        (props(&[("TIMER_DELAY_MS", "soon")]), "integer"),
        (props(&[("TIMER_DELAY_MS", "-10")]), "negative"),
        (props(&[("DELAY", "two")]), "integer"),
    ];
    for (p, words) in &cases {
        let resp = send(&client, TOPIC, 0, b"x", p).await;
        assert_eq!(resp.code, 13, "MESSAGE_ILLEGAL for {p:?}");
        let remark = resp.remark.unwrap_or_default();
        assert!(
            remark.contains(words),
            "remark {remark:?} should say {words:?}"
        );
    }
    let batch = batch_request(TOPIC, &[props(&[("TIMER_DELAY_MS", "500")]), props(&[])]);
    let resp = client.invoke(batch, RPC).await.unwrap();
    assert_eq!(
        resp.code, 13,
        "batches with delays are refused: {:?}",
        resp.remark
    );
    let direct = send(&client, sluice_schedule::TIMER_TOPIC, 0, b"x", &props(&[])).await;
    assert_eq!(direct.code, 16, "producers may not write the timer topic");
    sluice_broker_wait(&node).await;
    assert!(
        node.released(TOPIC, 4).is_empty(),
        "nothing refused was stored"
    );
    node.stop().await;
    ns.shutdown().await;
}
