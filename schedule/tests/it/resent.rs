//! A message sent more than once: a producer whose connection dropped after the broker stored
//! a delayed message sends it again with the same UNIQ_KEY (RocketMQ clients keep it on a
//! retry), so one message has two independent timers. A cancel or reschedule must act on
//! every copy, and its answer must hold for all of them.

use crate::common;

use std::time::{Duration, Instant};

use common::*;
use sluice_schedule::{MessageState, Outcome, ScheduleConfig, ScheduleService, Selector, When};

const TOPIC: &str = "Resent";

fn by_key(key: &str) -> Selector {
    key_in(TOPIC, key)
}

fn by_id(uniq: &str) -> Selector {
    id_in(TOPIC, uniq)
}

/// Parks one copy of the message `uniq` with business key `key`.
async fn park_copy(svc: &ScheduleService, uniq: &str, key: &str, when: When) {
    svc.schedule_at(input(TOPIC, 0, key, &[("UNIQ_KEY", uniq)]), when)
        .await
        .expect("parked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_by_key_cancels_every_copy_of_a_resent_message() {
    const UNIQ: &str = "RESENT-CANCEL";
    let dir = tempfile::tempdir().unwrap();
    let ns = start_namesrv().await;
    let node = Node::start(dir.path(), ns.local_addr(), test_config()).await;
    let svc = node.service();
    for _ in 0..2 {
        park_copy(
            &svc,
            UNIQ,
            "order-42",
            When::After(Duration::from_millis(1500)),
        )
        .await;
    }
    // Due after both copies: once it is released, the copies' time has passed too.
    let sentinel = svc
        .schedule_at(
            input(TOPIC, 1, "sentinel", &[]),
            When::After(Duration::from_millis(1800)),
        )
        .await
        .unwrap();

    let r = svc.cancel(&by_key("order-42")).await.unwrap();
    assert_eq!(
        (r.matched, r.cancelled),
        (1, 1),
        "one message, cancelled: {r:?}"
    );
    assert_eq!(r.outcomes, vec![(UNIQ.to_owned(), Outcome::Cancelled)]);
    assert_eq!(
        svc.stats().unwrap().pending,
        1,
        "only the sentinel is still pending: no copy of the cancelled message is"
    );
    let (listed, _) = svc.list(&by_id(UNIQ)).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].state, MessageState::Cancelled);

    let got = node
        .wait_released(TOPIC, 2, 1, Duration::from_secs(10))
        .await;
    let ids: Vec<&str> = got.iter().map(|m| m.uniq()).collect();
    assert_eq!(
        ids,
        [sentinel.uniq_key.as_str()],
        "a message answered cancelled is never released"
    );
    node.stop().await;
    ns.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reschedule_by_key_moves_every_copy_of_a_resent_message() {
    const UNIQ: &str = "RESENT-MOVE";
    let dir = tempfile::tempdir().unwrap();
    let ns = start_namesrv().await;
    let node = Node::start(dir.path(), ns.local_addr(), test_config()).await;
    let svc = node.service();
    for _ in 0..2 {
        // Beyond the near window: both copies live on disk only.
        park_copy(&svc, UNIQ, "order-43", When::After(Duration::from_secs(60))).await;
    }

    let r = svc
        .reschedule(&by_key("order-43"), When::After(Duration::from_millis(300)))
        .await
        .unwrap();
    assert_eq!((r.matched, r.rescheduled), (1, 1), "{r:?}");
    let Outcome::Rescheduled { due_ms } = r.outcomes[0].1 else {
        panic!("{r:?}")
    };

    let got = node
        .wait_released(TOPIC, 1, 2, Duration::from_secs(10))
        .await;
    assert_eq!(got.len(), 2, "each copy moved to the new time: {got:?}");
    for m in &got {
        assert_eq!(m.uniq(), UNIQ);
        assert_eq!(m.due_ms(), due_ms, "released for the new due time");
        m.assert_not_early();
    }
    // A release is visible in its topic a moment before the index counts it done.
    let deadline = Instant::now() + Duration::from_secs(10);
    while svc.stats().unwrap().pending != 0 {
        assert!(
            Instant::now() < deadline,
            "no copy is left waiting for the old time: {} pending",
            svc.stats().unwrap().pending
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    node.stop().await;
    ns.shutdown().await;
}

/// The copies may fall due at different times (a retry with a relative delay). Once one was
/// released, consumers have the message: "cancelled" would be false. The answer is
/// "delivered", and the copy still pending is cancelled so it does not arrive again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_after_one_copy_was_released_says_delivered_and_stops_the_other() {
    const UNIQ: &str = "RESENT-HALF";
    let dir = tempfile::tempdir().unwrap();
    let ns = start_namesrv().await;
    let node = Node::start(dir.path(), ns.local_addr(), test_config()).await;
    let svc = node.service();
    park_copy(
        &svc,
        UNIQ,
        "order-44",
        When::After(Duration::from_millis(200)),
    )
    .await;
    park_copy(&svc, UNIQ, "order-44", When::After(Duration::from_secs(60))).await;
    let got = node
        .wait_released(TOPIC, 1, 1, Duration::from_secs(10))
        .await;
    assert_eq!(got.len(), 1, "the first copy is released");

    let r = svc.cancel(&by_id(UNIQ)).await.unwrap();
    assert_eq!(
        r.outcomes,
        vec![(UNIQ.to_owned(), Outcome::AlreadyDelivered)]
    );
    assert_eq!(
        svc.stats().unwrap().pending,
        0,
        "the second copy will not be delivered"
    );
    let (listed, _) = svc.list(&by_id(UNIQ)).await.unwrap();
    assert_eq!(listed[0].state, MessageState::Delivered);
    node.stop().await;
    ns.shutdown().await;
}

/// A long timer is re-written every roll interval; the records left behind by rolls are not
/// releases, so a cancel acts on the newest record and answers cancelled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_of_a_rolled_timer_cancels_it_and_does_not_count_the_rolls_as_releases() {
    let dir = tempfile::tempdir().unwrap();
    let ns = start_namesrv().await;
    let cfg = ScheduleConfig {
        roll_interval: Duration::from_secs(1),
        ..test_config()
    };
    let node = Node::start(dir.path(), ns.local_addr(), cfg).await;
    let svc = node.service();
    let s = svc
        .schedule_at(
            input(TOPIC, 0, "rolling", &[]),
            When::After(Duration::from_secs(30)),
        )
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while svc.stats().unwrap().rolled < 1 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(svc.stats().unwrap().rolled >= 1, "the timer rolled");

    let r = svc.cancel(&by_id(&s.uniq_key)).await.unwrap();
    assert_eq!(r.outcomes, vec![(s.uniq_key.clone(), Outcome::Cancelled)]);
    assert_eq!(svc.stats().unwrap().pending, 0);
    let (listed, _) = svc.list(&by_id(&s.uniq_key)).await.unwrap();
    assert_eq!(listed[0].state, MessageState::Cancelled);
    assert!(node.released(TOPIC, 1).is_empty());
    node.stop().await;
    ns.shutdown().await;
}

/// A message with many far copies (beyond the near window, looked up in the index's runs),
/// cancelled while checkpoints start new index generations every millisecond. Each far
/// look-up holds for one generation; a stale one used to send the record back to the next
/// round, which looked up every copy again, so the cancel's work grew with the square of the
/// copies and ran out of its `op_timeout`. Now a stale record is looked up again alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_of_many_far_copies_completes_while_checkpoints_run() {
    const UNIQ: &str = "RESENT-MANY-FAR";
    const COPIES: usize = 600;
    let dir = tempfile::tempdir().unwrap();
    let ns = start_namesrv().await;
    let cfg = ScheduleConfig {
        checkpoint_interval: Duration::from_millis(1),
        op_timeout: Duration::from_secs(15),
        ..test_config()
    };
    let node = Node::start(dir.path(), ns.local_addr(), cfg).await;
    let svc = node.service();
    for _ in 0..COPIES {
        park_copy(&svc, UNIQ, "many", When::After(Duration::from_secs(600))).await;
    }
    // Counted once indexed, which follows the durable put.
    let deadline = Instant::now() + Duration::from_secs(20);
    while svc.stats().unwrap().pending < COPIES as i64 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(svc.stats().unwrap().pending, COPIES as i64);

    let r = svc
        .cancel(&by_key("many"))
        .await
        .expect("the cancel completes");
    assert_eq!(r.outcomes, vec![(UNIQ.to_owned(), Outcome::Cancelled)]);
    assert_eq!(svc.stats().unwrap().pending, 0, "every copy was cancelled");
    let (listed, _) = svc.list(&by_id(UNIQ)).await.unwrap();
    assert_eq!(listed[0].state, MessageState::Cancelled);
    node.stop().await;
    ns.shutdown().await;
}
