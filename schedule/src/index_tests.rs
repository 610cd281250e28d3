//! Unit tests of the in-memory index.

use super::*;
use std::collections::BTreeSet;

fn index() -> TimerIndex {
    let ix = TimerIndex::new(
        Vec::new(),
        Key::MIN,
        BTreeMap::new(),
        BTreeMap::new(),
        HashSet::new(),
        BTreeSet::new(),
        0,
    );
    ix.inner.lock().ready = true;
    ix
}

/// An index as a start from `snap` makes it (no runs), ready.
fn started_from(snap: &Snapshot) -> TimerIndex {
    let ix = TimerIndex::new(
        Vec::new(),
        snap.w,
        snap.enqueue.clone(),
        snap.pending.clone(),
        HashSet::new(),
        BTreeSet::new(),
        i64::MIN,
    );
    ix.restore_late(&snap.late);
    ix.inner.lock().ready = true;
    ix
}

fn load(inner: &mut Inner, now: i64) {
    let plan = inner.load_plan(now, 10_000).expect("a load is due");
    assert!(inner.install(&plan, Vec::new(), 1000, None));
}

#[test]
fn timers_are_released_in_key_order_never_before_their_time() {
    let ix = index();
    let mut g = ix.inner.lock();
    load(&mut g, 1000);
    for (fire, phys) in [(1500, 3), (1200, 9), (1200, 1), (20_000, 4)] {
        g.insert_timer(Key::new(fire, phys), Kind::Fire, 10, "T");
    }
    assert!(g.take_due(1100, 10).is_empty());
    let due: Vec<Key> = g.take_due(1500, 10).iter().map(|d| d.key).collect();
    assert_eq!(
        due,
        vec![Key::new(1200, 1), Key::new(1200, 9), Key::new(1500, 3)]
    );
    assert_eq!(g.pending["T"], 4);
    g.complete(Key::new(1200, 9), Released::Done, Some("T"));
    assert_eq!(
        g.advance_w(),
        Key::new(1200, 1),
        "the first is still in flight"
    );
    g.complete(Key::new(1200, 1), Released::Retry, Some("T"));
    assert_eq!(g.take_due(1500, 10)[0].key, Key::new(1200, 1));
    g.complete(Key::new(1200, 1), Released::Done, Some("T"));
    g.complete(Key::new(1500, 3), Released::Done, Some("T"));
    assert_eq!(
        g.advance_w(),
        g.window_end,
        "the far timer is beyond the window"
    );
    assert_eq!(g.pending["T"], 1);
    g.apply_tombstone(Key::new(20_000, 4), "T");
    assert_eq!(
        g.pending.get("T"),
        None,
        "a topic without pending timers leaves the map (it is saved at every checkpoint)"
    );
    g.apply_tombstone(Key::new(30_000, 5), "Never");
    assert!(g.pending.is_empty(), "a tombstone adds no topic at zero");
}

#[test]
fn a_cancel_in_progress_blocks_release_and_ends_one_way() {
    let ix = index();
    let mut g = ix.inner.lock();
    load(&mut g, 0);
    let k = Key::new(100, 1);
    g.insert_timer(k, Kind::Fire, 10, "T");
    assert_eq!(g.begin_cancel(k, None), BeginCancel::Started);
    assert!(g.take_due(200, 10).is_empty());
    g.finish_cancel(k, false);
    assert_eq!(g.begin_cancel(k, None), BeginCancel::Started);
    g.finish_cancel(k, true);
    assert!(g.take_due(200, 10).is_empty());
    assert_eq!(
        g.begin_cancel(k, None),
        BeginCancel::Not(SlotState::Cancelled)
    );
}

#[test]
fn a_tombstone_seen_before_its_timer_still_cancels_it() {
    let ix = index();
    let mut g = ix.inner.lock();
    load(&mut g, 0);
    let k = Key::new(100, 1);
    g.apply_tombstone(k, "T");
    g.insert_timer(k, Kind::Fire, 10, "T");
    assert!(g.take_due(200, 10).is_empty());
}

#[test]
fn far_timers_stay_in_the_memtable_until_the_window_reaches_them() {
    let ix = index();
    let mut g = ix.inner.lock();
    load(&mut g, 0);
    let far = Key::new(60_000, 2);
    assert!(!g.insert_timer(far, Kind::Fire, 10, "T"));
    assert_eq!(g.near_len(), 0);
    let snap = g.snapshot();
    assert_eq!(snap.memtable.len(), 1);
    assert!(matches!(g.locate(far), Where::Far { mem, .. } if mem.target.is_some()));
    let plan = g.load_plan(55_000, 10_000).unwrap();
    assert!(g.install(&plan, Vec::new(), 1000, None));
    assert_eq!(g.take_due(60_000, 10)[0].key, far);
}

/// Defect: the check horizon lived only in memory, so a clean stop before every suspect timer
/// was checked forgot it. A checkpoint now carries it until nothing due by then is left.
#[test]
fn the_check_horizon_is_saved_until_the_watermark_passes_it() {
    let ix = TimerIndex::new(
        Vec::new(),
        Key::MIN,
        BTreeMap::new(),
        BTreeMap::new(),
        HashSet::new(),
        BTreeSet::new(),
        1000,
    );
    let mut g = ix.inner.lock();
    load(&mut g, 1000);
    let suspect = Key::new(900, 1);
    g.insert_timer(suspect, Kind::Fire, 10, "T");
    assert!(g.may_be_released(suspect));
    assert_eq!(
        g.snapshot().verify_until,
        1000,
        "before the first catch-up the watermark proves nothing"
    );
    g.abort_snapshot();
    g.ready = true;
    assert_eq!(g.snapshot().verify_until, 1000, "the suspect is unchecked");
    g.abort_snapshot();
    let due = g.take_due(1000, 10);
    assert!(due[0].verify, "the deliverer checks it");
    g.complete(suspect, Released::Done, Some("T"));
    let snap = g.snapshot();
    assert!(snap.w.fire_ms > 1000);
    assert_eq!(
        snap.verify_until,
        i64::MIN,
        "everything due by then is settled"
    );
}

/// A timer indexed after the watermark passed its key (already due when read) used to pull
/// the saved watermark back below released timers no longer listed, so the next start loaded
/// them from the runs as pending and released them again. The watermark now holds, and the
/// late timer is saved on its own and restored.
#[test]
fn a_late_timer_never_pulls_the_saved_watermark_back() {
    let ix = index();
    let mut g = ix.inner.lock();
    load(&mut g, 1000);
    for (fire, phys) in [(1200, 1), (1300, 2)] {
        g.insert_timer(Key::new(fire, phys), Kind::Fire, 10, "T");
    }
    for d in g.take_due(1300, 10) {
        g.complete(d.key, Released::Done, Some("T"));
    }
    let first = g.snapshot();
    g.finish_snapshot(None, &[]);
    assert!(first.late.is_empty());
    assert!(first.w > Key::new(1300, 2), "both released: {:?}", first.w);
    // Indexed late: due before the released (1300, 2).
    let late = Key::new(1250, 7);
    g.insert_timer(late, Kind::Fire, 33, "T");
    let second = g.snapshot();
    g.finish_snapshot(None, &[]);
    assert!(
        second.w > Key::new(1300, 2),
        "the watermark stays above the released timers: {:?}",
        second.w
    );
    assert_eq!(second.late, vec![(late, Kind::Fire, 33)]);
    assert!(second.done_above_w.is_empty());
    // A timer due after the released ones is not late, though the first watermark (taken
    // while the window was empty) was the window's end, past it.
    let next = Key::new(1400, 8);
    g.insert_timer(next, Kind::Fire, 5, "T");
    let third = g.snapshot();
    g.finish_snapshot(None, &[]);
    assert_eq!(
        third.late,
        vec![(late, Kind::Fire, 33)],
        "only the late one"
    );
    assert!(third.w <= next);
    for d in g.take_due(1400, 10).into_iter().filter(|d| d.key == next) {
        g.complete(d.key, Released::Done, Some("T"));
    }
    drop(g);

    // A start from that snapshot releases the late timer, and only it.
    let again = started_from(&second);
    let mut g = again.inner.lock();
    let due: Vec<Key> = g.take_due(2000, 10).iter().map(|d| d.key).collect();
    assert_eq!(due, vec![late]);
    g.complete(late, Released::Done, Some("T"));
    let after = g.snapshot();
    assert!(after.late.is_empty());
    assert_eq!(after.w, second.w);
}

/// A late timer (indexed after the watermark passed its key) whose cancel marker was indexed
/// before the cancel's task ended it: a checkpoint in between saved the timer as late and
/// still to release, and a start from that checkpoint released it, its cancel answered
/// `cancelled` (a reschedule delivered it twice).
#[test]
fn a_late_timer_cancelled_while_a_checkpoint_ran_stays_cancelled_after_a_restart() {
    let ix = index();
    let mut g = ix.inner.lock();
    load(&mut g, 1000);
    g.insert_timer(Key::new(1300, 2), Kind::Fire, 10, "T");
    for d in g.take_due(1300, 10) {
        g.complete(d.key, Released::Done, Some("T"));
    }
    let _ = g.snapshot();
    g.finish_snapshot(None, &[]);
    let late = Key::new(1250, 7);
    g.insert_timer(late, Kind::Fire, 33, "T");
    assert!(matches!(g.begin_cancel(late, None), BeginCancel::Started));
    g.apply_tombstone(late, "T");
    let snap = g.snapshot();
    g.finish_snapshot(None, &[]);
    g.finish_cancel(late, true);
    assert!(
        snap.late.is_empty(),
        "not saved as still to release: {:?}",
        snap.late
    );
    drop(g);
    let again = started_from(&snap);
    let mut g = again.inner.lock();
    assert!(
        g.take_due(2000, 10).is_empty(),
        "the cancelled timer is not released"
    );
}

/// A timer released above the watermark before a stop is known released after the start,
/// before the window is loaded again: the runs still hold it as pending, and a cancel must not
/// be told it stopped a message its consumers already have.
#[test]
fn a_timer_released_before_a_restart_is_done_before_the_window_is_loaded() {
    let released = Key::new(5_000, 7);
    let ix = TimerIndex::new(
        Vec::new(),
        Key::new(1_000, 0),
        BTreeMap::new(),
        BTreeMap::new(),
        HashSet::from([released]),
        BTreeSet::new(),
        0,
    );
    let mut g = ix.inner.lock();
    g.ready = true;
    assert!(matches!(g.locate(released), Where::Near(SlotState::Done)));
    let generation = g.generation;
    assert!(matches!(
        g.begin_cancel(released, Some(generation)),
        BeginCancel::Not(SlotState::Done)
    ));
    let other = Key::new(5_000, 8);
    assert!(matches!(g.locate(other), Where::Far { .. }));
}

/// A checkpoint taken before the window is loaded again keeps the releases the state file
/// listed above the watermark: a stop then (before `ready`, or before the first load) must not
/// save a list without them, or the start after would release those timers again.
#[test]
fn a_checkpoint_before_the_window_is_loaded_keeps_the_releases_known_from_the_state() {
    let released = Key::new(5_000, 7);
    let below = Key::new(500, 1);
    let ix = TimerIndex::new(
        Vec::new(),
        Key::new(1_000, 0),
        BTreeMap::new(),
        BTreeMap::new(),
        HashSet::from([released, below]),
        BTreeSet::new(),
        i64::MIN,
    );
    let mut g = ix.inner.lock();
    let snap = g.snapshot();
    g.finish_snapshot(None, &[]);
    assert_eq!(
        snap.done_above_w,
        vec![released],
        "only those at or above w"
    );
    g.ready = true;
    let again = g.snapshot();
    g.finish_snapshot(None, &[]);
    assert_eq!(again.done_above_w, vec![released]);
}

/// A timer dropped as undeliverable reads as dropped, not released: in the window, after it
/// left the window, in the next checkpoint, and after a restart from that checkpoint.
#[test]
fn a_dropped_timer_is_known_as_dropped_in_and_after_the_window() {
    let ix = index();
    let mut g = ix.inner.lock();
    let (dropped, released) = (Key::new(100, 1), Key::new(100, 2));
    g.insert_timer(dropped, Kind::Fire, 10, "T");
    g.insert_timer(released, Kind::Fire, 10, "T");
    load(&mut g, 1_000);
    let due = g.take_due(1_000, 10);
    assert_eq!(due.len(), 2);
    g.complete(dropped, Released::Dropped, Some("T"));
    g.complete(released, Released::Done, Some("T"));
    assert!(matches!(g.locate(dropped), Where::Near(SlotState::Dropped)));
    assert_eq!(
        g.pending.get("T"),
        None,
        "a drop leaves the pending count, and a topic at zero leaves the map"
    );
    let snap = g.snapshot();
    g.finish_snapshot(None, &[]);
    assert!(
        snap.w > released,
        "both finished: the window moved past them"
    );
    assert_eq!(snap.dropped, vec![dropped]);
    assert!(matches!(g.locate(released), Where::Gone));
    assert!(matches!(g.locate(dropped), Where::Near(SlotState::Dropped)));
    assert!(matches!(
        g.begin_cancel(dropped, None),
        BeginCancel::Not(SlotState::Dropped)
    ));
    drop(g);
    let again = TimerIndex::new(
        Vec::new(),
        snap.w,
        BTreeMap::new(),
        snap.pending.clone(),
        HashSet::new(),
        snap.dropped.iter().copied().collect(),
        i64::MIN,
    );
    let g = again.inner.lock();
    assert!(matches!(g.locate(dropped), Where::Near(SlotState::Dropped)));
}
