//! The checker against hand-made histories: a clean one passes, and each broken promise
//! planted in it is reported, precisely.

use super::*;
use crate::crash_loop::history::{body_for, Consumed, OffsetSnapshot, PLAIN, TIMER, TXN};

const G: &str = "g";

/// Builds a history with explicit stamps: each event one millisecond after the last.
#[derive(Default)]
struct H(Vec<Event>);

impl H {
    fn at(mut self, wall_ms: i64, ev: Ev) -> Self {
        let at_us = self.0.len() as u64 * 1000;
        self.0.push(Event { at_us, wall_ms, ev });
        self
    }
    fn push(self, ev: Ev) -> Self {
        let wall = 1_000 + self.0.len() as i64;
        self.at(wall, ev)
    }
    fn sent(self, key: &str, class: Class) -> Self {
        self.push(Ev::Sent {
            key: key.into(),
            class,
            via: Via::Http,
        })
    }
    fn acked(self, key: &str) -> Self {
        self.push(Ev::Acked { key: key.into() })
    }
    fn consumed_at(self, wall_ms: i64, key: &str, topic: &str, store_ms: Option<i64>) -> Self {
        let c = Consumed {
            group: G.into(),
            topic: topic.into(),
            key: key.into(),
            queue: 0,
            // Each delivery at its own position, unless a test moves it.
            offset: self.0.len() as i64,
            store_ms,
            intact: true,
        };
        self.at(wall_ms, Ev::Consumed(c))
    }
    fn consumed(self, key: &str, topic: &str) -> Self {
        let wall = 1_000 + self.0.len() as i64;
        self.consumed_at(wall, key, topic, None)
    }
    /// A redelivery: `key` consumed again from the position it was first consumed at.
    fn redelivered(mut self, key: &str) -> Self {
        let first = self
            .0
            .iter()
            .find_map(|e| match &e.ev {
                Ev::Consumed(c) if c.key == key => Some(c.clone()),
                _ => None,
            })
            .expect("consumed before");
        self = self.consumed(key, &first.topic);
        if let Some(Event {
            ev: Ev::Consumed(c),
            ..
        }) = self.0.last_mut()
        {
            c.offset = first.offset;
        }
        self
    }
    fn decide(self, key: &str, commit: bool, answer: &str) -> Self {
        self.push(Ev::TxnDecision {
            key: key.into(),
            commit,
        })
        .push(Ev::TxnAnswer {
            key: key.into(),
            answer: answer.into(),
        })
    }
    fn offset(self, cycle: usize, clean: bool, committed: i64) -> Self {
        self.push(Ev::Started { cycle, clean })
            .push(Ev::Offset(OffsetSnapshot {
                cycle,
                clean,
                group: G.into(),
                topic: PLAIN.into(),
                queue: 1,
                committed,
            }))
    }
    fn check(&self) -> Report {
        check(&self.0, &[G])
    }
}

fn a_clean_history() -> H {
    H::default()
        .sent("p1", Class::Plain)
        .acked("p1")
        .consumed("p1", PLAIN)
        .sent("t1", Class::Txn { commit: true })
        .acked("t1")
        .decide("t1", true, "committed")
        .consumed("t1", TXN)
        .sent("t2", Class::Txn { commit: false })
        .acked("t2")
        .decide("t2", false, "rolled_back")
        .sent("d1", Class::Timer { due_ms: 1_500 })
        .acked("d1")
        .consumed_at(1_600, "d1", TIMER, Some(1_501))
        .sent("d2", Class::Timer { due_ms: 9_000 })
        .acked("d2")
        .push(Ev::CancelSent { key: "d2".into() })
        .push(Ev::CancelAnswer {
            key: "d2".into(),
            answer: "cancelled".into(),
        })
}

#[test]
fn a_history_that_keeps_every_promise_passes_and_counts_duplicates() {
    let r = a_clean_history().redelivered("p1").check();
    assert_eq!(r.violations, vec![]);
    assert_eq!(r.stats.groups[G].duplicates, 1);
    assert_eq!(r.stats.txn_committed, 1);
    assert_eq!(r.stats.cancel_answers["cancelled"], 1);
}

#[test]
fn an_acknowledged_message_never_consumed_is_reported_lost() {
    let r = a_clean_history()
        .sent("p2", Class::Plain)
        .acked("p2")
        .check();
    assert_eq!(
        r.violations,
        vec![Violation::Lost {
            group: G.into(),
            key: "p2".into()
        }]
    );
}

#[test]
fn an_unacknowledged_send_may_be_missing() {
    let r = a_clean_history()
        .sent("p2", Class::Plain)
        .push(Ev::SendFailed {
            key: "p2".into(),
            why: "killed".into(),
        })
        .check();
    assert_eq!(r.violations, vec![]);
    assert_eq!(r.stats.indeterminate, 1);
}

#[test]
fn a_half_message_seen_before_its_commit_was_sent_is_reported() {
    let r = H::default()
        .sent("t", Class::Txn { commit: true })
        .acked("t")
        .consumed("t", TXN)
        .decide("t", true, "committed")
        .check();
    assert_eq!(
        r.violations,
        vec![Violation::HalfVisible {
            group: G.into(),
            key: "t".into()
        }]
    );
}

#[test]
fn a_rolled_back_message_seen_is_reported() {
    let r = a_clean_history().consumed("t2", TXN).check();
    assert_eq!(
        r.violations,
        vec![Violation::RolledBackVisible {
            group: G.into(),
            key: "t2".into()
        }]
    );
}

#[test]
fn a_committed_transaction_never_consumed_is_reported_lost() {
    let r = H::default()
        .sent("t", Class::Txn { commit: true })
        .acked("t")
        .decide("t", true, "committed")
        .check();
    assert_eq!(
        r.violations,
        vec![Violation::CommittedTxnLost {
            group: G.into(),
            key: "t".into()
        }]
    );
}

#[test]
fn an_acknowledged_half_without_a_definite_decision_is_reported() {
    let r = H::default()
        .sent("t", Class::Txn { commit: true })
        .acked("t")
        .decide("t", true, "not_found")
        .check();
    assert_eq!(
        r.violations,
        vec![Violation::TxnUnresolved {
            key: "t".into(),
            answers: vec!["not_found".into()]
        }]
    );
}

#[test]
fn a_timer_released_before_its_due_time_is_reported_early() {
    let r = H::default()
        .sent("d", Class::Timer { due_ms: 5_000 })
        .acked("d")
        .consumed_at(5_100, "d", TIMER, Some(4_000))
        .check();
    assert_eq!(
        r.violations,
        vec![Violation::TimerEarly {
            group: G.into(),
            key: "d".into(),
            early_ms: 1_000
        }]
    );
}

#[test]
fn a_timer_seen_early_without_a_store_time_is_reported_early() {
    let r = H::default()
        .sent("d", Class::Timer { due_ms: 5_000 })
        .acked("d")
        .consumed_at(4_500, "d", TIMER, None)
        .check();
    assert_eq!(
        r.violations,
        vec![Violation::TimerEarly {
            group: G.into(),
            key: "d".into(),
            early_ms: 500
        }]
    );
}

#[test]
fn a_timer_within_the_clock_tolerance_is_on_time() {
    let r = H::default()
        .sent("d", Class::Timer { due_ms: 5_000 })
        .acked("d")
        .consumed_at(5_000, "d", TIMER, Some(5_000 - TIMER_TOLERANCE_MS))
        .check();
    assert_eq!(r.violations, vec![]);
}

#[test]
fn an_acknowledged_timer_never_delivered_is_reported_lost() {
    let r = H::default()
        .sent("d", Class::Timer { due_ms: 5_000 })
        .acked("d")
        .push(Ev::CancelSent { key: "d".into() })
        .push(Ev::CancelAnswer {
            key: "d".into(),
            answer: "already_delivered".into(),
        })
        .check();
    assert_eq!(
        r.violations,
        vec![Violation::TimerLost {
            group: G.into(),
            key: "d".into()
        }]
    );
}

#[test]
fn a_cancelled_timer_delivered_is_reported() {
    let r = a_clean_history()
        .consumed_at(9_500, "d2", TIMER, Some(9_100))
        .check();
    assert_eq!(
        r.violations,
        vec![Violation::CancelledDelivered {
            group: G.into(),
            key: "d2".into()
        }]
    );
}

#[test]
fn a_corrupt_or_unknown_delivery_is_reported() {
    let mut h = a_clean_history().consumed("nobody-sent-this", PLAIN);
    if let Some(Event {
        ev: Ev::Consumed(c),
        ..
    }) = h.0.get_mut(2)
    {
        c.intact = false;
    }
    let r = h.check();
    assert_eq!(
        r.violations,
        vec![
            Violation::Corrupt {
                group: G.into(),
                key: "p1".into()
            },
            Violation::Phantom {
                group: G.into(),
                key: "nobody-sent-this".into()
            },
        ]
    );
    assert!(body_for("p1").contains("p1"));
}

#[test]
fn a_committed_offset_going_backwards_across_restarts_is_reported() {
    let r = H::default()
        .offset(0, false, 10)
        .offset(1, false, 12)
        .offset(2, false, 7)
        .check();
    assert_eq!(
        r.violations,
        vec![Violation::OffsetBackwards {
            group: G.into(),
            topic: PLAIN.into(),
            queue: 1,
            cycle: 2,
            from: 12,
            to: 7
        }]
    );
}

#[test]
fn after_a_clean_stop_the_offset_must_be_the_last_committed() {
    let commit = |offset| Ev::OffsetCommitted {
        group: G.into(),
        topic: PLAIN.into(),
        queue: 1,
        offset,
    };
    let kept = H::default()
        .offset(0, false, 0)
        .push(commit(5))
        .offset(1, true, 5)
        .check();
    assert_eq!(kept.violations, vec![]);
    let after_kill = H::default()
        .offset(0, false, 0)
        .push(commit(5))
        .offset(1, false, 3)
        .check();
    assert_eq!(
        after_kill.violations,
        vec![],
        "a kill may lose one flush interval of progress"
    );
    let lost = H::default()
        .offset(0, false, 0)
        .push(commit(5))
        .offset(1, true, 3)
        .check();
    assert_eq!(
        lost.violations,
        vec![Violation::OffsetNotKept {
            group: G.into(),
            topic: PLAIN.into(),
            queue: 1,
            committed: 5,
            found: 3
        }]
    );
}

#[test]
fn a_timer_whose_cancel_got_no_answer_may_be_missing() {
    let r = H::default()
        .sent("d", Class::Timer { due_ms: 5_000 })
        .acked("d")
        .push(Ev::CancelSent { key: "d".into() })
        .check();
    assert_eq!(r.violations, vec![]);
}

#[test]
fn two_messages_at_one_queue_position_are_reported() {
    let mut h = H::default()
        .sent("a", Class::Plain)
        .acked("a")
        .consumed("a", PLAIN)
        .sent("b", Class::Plain)
        .acked("b")
        .consumed("b", PLAIN);
    if let Some(Event {
        ev: Ev::Consumed(c),
        ..
    }) = h.0.get_mut(5)
    {
        c.offset = 2;
    }
    let r = h.check();
    assert_eq!(
        r.violations,
        vec![Violation::OffsetReused {
            topic: PLAIN.into(),
            queue: 0,
            offset: 2,
            keys: ["a".into(), "b".into()]
        }]
    );
}

/// The same plain key at two positions was counted as a duplicate only, yet the load sends
/// each plain message once: the second position is a second stored copy.
#[test]
fn a_plain_message_stored_at_two_positions_is_reported() {
    let r = H::default()
        .sent("a", Class::Plain)
        .acked("a")
        .consumed("a", PLAIN)
        .consumed("a", PLAIN)
        .check();
    assert_eq!(
        r.violations,
        vec![Violation::StoredTwice {
            topic: PLAIN.into(),
            key: "a".into(),
            positions: [(0, 2), (0, 3)],
        }]
    );
}
