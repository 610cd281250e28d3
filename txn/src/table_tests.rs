//! Unit tests of the state table.

use super::*;
use std::time::Duration;

pub(crate) fn entry(id: u64, stored_ms: i64) -> Entry {
    Entry {
        id: TxnId {
            half_offset: id,
            commit_log_offset: id * 100,
        },
        current: Location {
            half_offset: id,
            phys_offset: id * 100,
            store_ms: stored_ms,
        },
        group: "pg".into(),
        uniq: format!("U{id}"),
        topic: "T".into(),
        queue_id: 0,
        keys: String::new(),
        tags: String::new(),
        born_ms: stored_ms,
        stored_ms,
        armed_ms: stored_ms,
        first_check_ms: None,
        state: TxnState::Open,
        checks: 0,
        last_check_ms: None,
        last_answer: None,
        commit_answered: false,
        decided_by: None,
        resolved_ms: None,
        op_floor: 0,
        op_offset: None,
    }
}

fn cfg() -> TxnConfig {
    let mut c = TxnConfig::default();
    c.defaults.check_after = Duration::from_millis(100);
    c.defaults.check_interval = Duration::from_millis(50);
    c.defaults.check_max = 2;
    c
}

#[test]
fn due_takes_the_oldest_up_to_its_limit_and_leaves_the_rest_for_later() {
    let mut t = Table::new(Arc::new(AtomicUsize::new(0)));
    for id in [7, 3, 9, 1, 5] {
        t.insert(entry(id, 1000));
    }
    assert_eq!(
        t.due(2000, &cfg(), 3, &HashSet::new()),
        [Due::Check(1), Due::Check(3), Due::Check(5)]
    );
    assert_eq!(t.due_waiting, 2, "two more were due");
    t.count_check(1, 2000);
    t.count_check(3, 2000);
    assert_eq!(
        t.due(2000, &cfg(), 3, &HashSet::new()),
        [Due::Check(5), Due::Check(7), Due::Check(9)],
        "checked ones are not due again before their interval"
    );
    assert_eq!(t.due_waiting, 0);
}

#[test]
fn what_waits_is_counted_when_a_backlog_starts_then_every_five_seconds() {
    let mut t = Table::new(Arc::new(AtomicUsize::new(0)));
    for id in 1..=10 {
        t.insert(entry(id, 1000));
    }
    assert_eq!(t.due(2000, &cfg(), 2, &HashSet::new()).len(), 2);
    assert_eq!(t.due_waiting, 8, "counted when the backlog starts");
    t.insert(entry(11, 1000));
    t.due(3000, &cfg(), 2, &HashSet::new());
    assert_eq!(t.due_waiting, 8, "not walked again within 5 s");
    t.due(7000, &cfg(), 2, &HashSet::new());
    assert_eq!(t.due_waiting, 9, "counted again after 5 s");
}

/// A producer answered commit to a check and the broker could not store it (a full disk, a
/// message over a lowered size limit): the final action `rollback` discarded the committed
/// transaction once the checks ran out. It is kept (parked) instead.
#[test]
fn a_commit_answer_that_could_not_be_stored_is_parked_not_discarded() {
    let mut t = Table::new(Arc::new(AtomicUsize::new(0)));
    t.insert(entry(1, 1000));
    t.insert(entry(2, 1000));
    for id in [1, 2] {
        t.count_check(id, 1100);
        t.count_check(id, 1150);
    }
    t.note_answer(1, CheckAnswer::Commit, 1160);
    // A later UNKNOWN does not undo it.
    t.note_answer(1, CheckAnswer::Unknown, 1170);
    t.note_answer(2, CheckAnswer::Rollback, 1160);
    assert_eq!(
        t.due(1300, &cfg(), usize::MAX, &HashSet::new()),
        [
            Due::Final(1, Decision::Park),
            Due::Final(2, Decision::Discard)
        ]
    );
}

#[test]
fn checks_come_due_then_the_final_action() {
    let live = Arc::new(AtomicUsize::new(0));
    let mut t = Table::new(Arc::clone(&live));
    t.insert(entry(1, 1000));
    assert_eq!(live.load(Ordering::Relaxed), 1);
    assert!(t.due(1099, &cfg(), usize::MAX, &HashSet::new()).is_empty());
    assert_eq!(
        t.due(1100, &cfg(), usize::MAX, &HashSet::new()),
        [Due::Check(1)]
    );
    assert_eq!(t.count_check(1, 1100).map(|c| c.checks), Some(1));
    assert!(t.due(1149, &cfg(), usize::MAX, &HashSet::new()).is_empty());
    assert_eq!(t.count_check(1, 1150).map(|c| c.checks), Some(2));
    assert_eq!(
        t.due(1200, &cfg(), usize::MAX, &HashSet::new()),
        [Due::Final(1, Decision::Discard)]
    );
    let Begin::Proceed(_) = t.begin(1, Decision::Discard, 7) else {
        panic!()
    };
    assert!(
        t.due(5000, &cfg(), usize::MAX, &HashSet::new()).is_empty(),
        "nothing is due while resolving"
    );
    assert!(
        t.count_check(1, 5000).is_none(),
        "no check for a resolving transaction"
    );
    t.complete(1, Decision::Discard, Source::FinalAction, 7, 1300);
    assert_eq!(live.load(Ordering::Relaxed), 0);
    assert!(matches!(
        t.begin(1, Decision::Commit, 8),
        Begin::Refused(TxnError::Conflict { .. })
    ));
}

#[test]
fn a_failed_append_restores_the_previous_state() {
    let mut t = Table::new(Arc::new(AtomicUsize::new(0)));
    let mut e = entry(2, 0);
    e.state = TxnState::Parked;
    t.insert(e);
    assert!(matches!(t.begin(2, Decision::Commit, 0), Begin::Proceed(_)));
    assert!(matches!(t.begin(2, Decision::Rollback, 0), Begin::Wait));
    t.revert(2);
    assert_eq!(t.get(2).unwrap().state, TxnState::Parked);
}

#[test]
fn a_decision_waits_while_its_transaction_is_carried_forward() {
    let mut t = Table::new(Arc::new(AtomicUsize::new(0)));
    t.insert(entry(3, 0));
    t.insert(entry(4, 0));
    assert!(t.begin_carry(3));
    assert!(matches!(t.begin(3, Decision::Commit, 0), Begin::Wait));
    t.end_carry(3);
    assert!(matches!(t.begin(3, Decision::Commit, 0), Begin::Proceed(_)));
    assert!(!t.begin_carry(3), "one being decided is not carried");
    assert!(!t.begin_carry(9), "nor an unknown one");
    assert!(t.begin_carry(4));
    assert!(
        matches!(t.begin(4, Decision::Rollback, 0), Begin::Wait),
        "a rollback waits too"
    );
}

#[test]
fn forgetting_keeps_live_entries_and_entries_above_the_tailer() {
    let mut t = Table::new(Arc::new(AtomicUsize::new(0)));
    for id in 0..4 {
        t.insert(entry(id, 0));
    }
    for id in [0, 1, 3] {
        let Begin::Proceed(_) = t.begin(id, Decision::Rollback, 0) else {
            panic!()
        };
        t.complete(id, Decision::Rollback, Source::Producer, id, 10);
    }
    t.half_next = 2;
    assert_eq!(t.forget(10_000, 100, 1000), 2);
    assert!(t.get(2).is_some() && t.get(3).is_some());
    let cp = t.snapshot(50);
    assert_eq!(cp.live.len(), 1);
    assert_eq!(
        cp.op_next, 3,
        "the op of a decided entry above half_next is replayed"
    );
}

#[test]
fn pulled_checks_count_once_and_skip_decided_transactions() {
    let mut t = Table::new(Arc::new(AtomicUsize::new(0)));
    t.insert(entry(1, 0));
    t.insert(entry(2, 0));
    assert!(t.queue_pull("pg", 1, 10));
    assert!(!t.queue_pull("pg", 1, 10), "queued once");
    assert!(t.queue_pull("pg", 2, 10));
    assert!(
        t.due(1_000_000, &cfg(), usize::MAX, &HashSet::new())
            .is_empty(),
        "queued checks are not due again"
    );
    let Begin::Proceed(_) = t.begin(2, Decision::Commit, 0) else {
        panic!()
    };
    let got = t.take_pull("pg", 10, 5);
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].0.id.half_offset, got[0].1.checks), (1, 1));
    assert_eq!(t.pending_pulls(), 0);
}

/// A check queued for a pull-mode group, then parked and re-armed before anyone polled, was
/// queued again beside its stale entry: one poll handed out two checks, counted twice.
#[test]
fn a_check_queued_again_after_park_and_rearm_is_handed_out_once() {
    let mut t = Table::new(Arc::new(AtomicUsize::new(0)));
    t.insert(entry(1, 0));
    assert!(t.queue_pull("pg", 1, 10));
    for (d, op) in [(Decision::Park, 5), (Decision::Rearm, 6)] {
        let Begin::Proceed(_) = t.begin(1, d, 0) else {
            panic!("{d:?}")
        };
        t.complete(1, d, Source::Operator, op, 10);
    }
    assert!(t.queue_pull("pg", 1, 10));
    let got = t.take_pull("pg", 10, 20);
    assert_eq!(got.len(), 1, "one check");
    assert_eq!(got[0].1.checks, 1);
}

/// A pull-mode group whose producers never poll: its queued checks are never taken, so its
/// check count never reaches `check_max`; the age limit must still end the transaction.
#[test]
fn a_transaction_whose_check_is_never_pulled_still_gets_its_final_action_by_age() {
    let mut t = Table::new(Arc::new(AtomicUsize::new(0)));
    t.insert(entry(1, 0));
    assert!(t.queue_pull("pg", 1, 10));
    let mut c = cfg();
    c.defaults.max_age = Duration::from_secs(60);
    let young = t.due(59_000, &c, usize::MAX, &HashSet::new());
    assert!(young.is_empty(), "no second check while one waits");
    let old = t.due(60_000, &c, usize::MAX, &HashSet::new());
    assert!(
        matches!(old[..], [Due::Final(1, Decision::Discard)]),
        "{old:?}"
    );
}

#[test]
fn the_tailer_steps_over_a_run_of_known_entries_up_to_the_first_gap() {
    let mut t = Table::new(Arc::new(AtomicUsize::new(0)));
    for id in (10..20).chain(21..25) {
        t.insert(entry(id, 0));
    }
    assert_eq!(
        t.first_unknown(10, 100),
        20,
        "stops at the first offset not adopted"
    );
    assert_eq!(
        t.first_unknown(21, 100),
        25,
        "and past the end of the entries"
    );
    assert_eq!(
        t.first_unknown(12, 15),
        15,
        "never beyond the end it is given"
    );
    assert_eq!(
        t.first_unknown(5, 100),
        5,
        "an unknown first offset is where it starts"
    );
    assert_eq!(t.first_unknown(30, 30), 30);
}

#[test]
fn a_copy_moves_its_transaction_only_when_both_offsets_match() {
    let mut t = Table::new(Arc::new(AtomicUsize::new(0)));
    t.insert(entry(3, 0));
    let to = Location {
        half_offset: 50,
        phys_offset: 5_000,
        store_ms: 9,
    };
    let forged = TxnId {
        half_offset: 3,
        commit_log_offset: 123,
    };
    t.relocate(forged, to);
    assert_eq!(
        t.get(3).unwrap().current.half_offset,
        3,
        "a foreign copy is ignored"
    );
    t.relocate(t.get(3).unwrap().id, to);
    assert_eq!(t.get(3).unwrap().current, to, "its own copy moves it");
}

#[test]
fn a_parked_transaction_being_decided_is_checkpointed_as_parked() {
    let mut t = Table::new(Arc::new(AtomicUsize::new(0)));
    let mut e = entry(1, 0);
    e.state = TxnState::Parked;
    t.insert(e);
    let Begin::Proceed(_) = t.begin(1, Decision::Commit, 0) else {
        panic!("a parked transaction may be committed")
    };
    let cp = t.snapshot(0);
    assert_eq!(cp.live.len(), 1);
    assert!(
        cp.live[0].parked,
        "if the crash loses the commit, it comes back parked, not open with its checks spent"
    );
}

/// A commit being stored is saved as `commit_pending`, so a start after a clean stop still
/// looks for its message; a rollback being stored is not (it writes no message).
#[test]
fn a_commit_in_flight_is_checkpointed_as_commit_pending() {
    let mut t = Table::new(Arc::new(AtomicUsize::new(0)));
    for id in [1, 2, 3] {
        t.insert(entry(id, 1000));
    }
    assert!(matches!(t.begin(1, Decision::Commit, 0), Begin::Proceed(_)));
    assert!(matches!(
        t.begin(2, Decision::Rollback, 0),
        Begin::Proceed(_)
    ));
    let cp = t.snapshot(0);
    let pending: Vec<(u64, bool)> = cp.live.iter().map(|l| (l.q, l.commit_pending)).collect();
    assert_eq!(pending, [(1, true), (2, false), (3, false)]);
}

/// A transaction that can never be checked (its immunity far away, or no producer online to
/// count a check) used to stay open for ever; past `max_age` it gets the final action.
#[test]
fn a_transaction_past_max_age_gets_the_final_action_whatever_its_checks() {
    let mut c = cfg();
    c.defaults.max_age = Duration::from_secs(3600);
    let mut t = Table::new(Arc::new(AtomicUsize::new(0)));
    let mut immune = entry(1, 1_000);
    immune.first_check_ms = Some(i64::MAX / 2);
    t.insert(immune);
    t.insert(entry(2, 1_000));
    let young = 1_000 + 3_599_000;
    assert_eq!(t.due(young, &c, 10, &HashSet::new()), [Due::Check(2)]);
    let old = 1_000 + 3_600_000;
    assert_eq!(
        t.due(old, &c, 10, &HashSet::new()),
        [
            Due::Final(1, Decision::Discard),
            Due::Final(2, Decision::Discard)
        ]
    );
}

/// Op records at or below the last one an entry's checkpoint saved are not applied again: an
/// old park and re-arm replayed on a re-armed transaction reset its check count.
#[test]
fn op_records_already_applied_are_not_replayed() {
    let mut t = Table::new(Arc::new(AtomicUsize::new(0)));
    let mut e = entry(1, 1000);
    e.checks = 3;
    e.op_offset = Some(10);
    t.insert(e);
    t.replay(1, Decision::Park, None, 9, 5000);
    t.replay(1, Decision::Rearm, None, 10, 5000);
    let now = t.get(1).unwrap();
    assert_eq!((now.state, now.checks), (TxnState::Open, 3));
    t.replay(1, Decision::Park, None, 11, 5000);
    assert_eq!(t.get(1).unwrap().state, TxnState::Parked);
}

/// A parked transaction waits for an operator: it made the "oldest open" age grow for good
/// (an alert that never clears) while nothing was open.
#[test]
fn the_oldest_open_age_leaves_parked_transactions_out() {
    let mut t = Table::new(Arc::new(AtomicUsize::new(0)));
    let mut parked = entry(1, 100);
    parked.state = TxnState::Parked;
    t.insert(parked);
    let g = t.gauges();
    assert_eq!((g.open, g.parked, g.oldest_ms), (0, 1, None));
    t.insert(entry(2, 500));
    let g = t.gauges();
    assert_eq!((g.open, g.oldest_ms), (1, Some(500)));
}

#[test]
fn a_page_after_a_cursor_starts_past_it_in_offset_order() {
    let mut t = Table::new(Arc::new(AtomicUsize::new(0)));
    for id in [30, 10, 20] {
        t.insert(entry(id, 1000));
    }
    let ids = |after| {
        t.entries_after(after)
            .map(|e| e.id.half_offset)
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(None), [10, 20, 30]);
    assert_eq!(
        ids(Some(10)),
        [20, 30],
        "the cursor's own entry is not repeated"
    );
    assert_eq!(ids(Some(15)), [20, 30], "a cursor between entries");
    assert_eq!(
        ids(Some(30)),
        Vec::<u64>::new(),
        "past the last: an empty page"
    );
}

/// A half the tailer skipped (unreadable, deleted by retention) never enters the table: once
/// the tailer is past it, it no longer counts toward `max_open`.
#[test]
fn halves_the_tailer_passed_stop_counting_as_unindexed() {
    let mut t = Table::new(Arc::new(AtomicUsize::new(0)));
    let u = Unindexed::new();
    t.track_unindexed(u.clone());
    u.start_at(0);
    for q in 0..3 {
        u.stored(q);
    }
    t.insert(entry(0, 1000));
    assert_eq!(u.get(), 2, "taken in: no longer waiting");
    t.half_next = 2;
    t.clamp_unindexed();
    assert_eq!(u.get(), 1, "offset 1 was passed without entering the table");
}

#[test]
fn a_listing_walked_in_chunks_finds_what_lies_past_the_first_chunks_and_stops_at_its_limit() {
    use crate::service::{list_in_chunks, ListQuery};
    let mut t = Table::new(Arc::new(AtomicUsize::new(0)));
    for id in 1..=20 {
        let mut e = entry(id, 1000);
        if id % 7 == 0 {
            e.group = "other".into();
        }
        t.insert(e);
    }
    let table = parking_lot::Mutex::new(t);
    let other = |after, limit| ListQuery {
        producer_group: Some("other".into()),
        after,
        limit,
        ..ListQuery::default()
    };
    let ids = |q: &ListQuery, chunk| -> Vec<u64> {
        list_in_chunks(&table, q, 2000, chunk)
            .iter()
            .map(|v| v.half_offset)
            .collect()
    };
    for chunk in [1, 3, 7, 100] {
        assert_eq!(ids(&other(None, 10), chunk), [7, 14], "chunk {chunk}");
        assert_eq!(ids(&other(None, 1), chunk), [7], "chunk {chunk}");
        assert_eq!(ids(&other(Some(7), 10), chunk), [14], "chunk {chunk}");
        assert_eq!(ids(&other(Some(14), 10), chunk), [0u64; 0], "chunk {chunk}");
    }
    let all = ListQuery {
        limit: 100,
        ..ListQuery::default()
    };
    assert_eq!(ids(&all, 4).len(), 20);
}
