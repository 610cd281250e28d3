//! One message at a time: what its timer records need next ([`decide`], pure), and doing it
//! — waiting out releases in flight, following finished rolls to their new records
//! ([`refind`]), then cancelling or moving every pending copy ([`act`]) — until the message
//! can be answered once ([`apply_group`]).
//!
//! Cancel protocol: under the index lock, Pending → Cancelling (the deliverer leaves it
//! alone; a far timer is put in a set the window load honours); a cancel marker is appended
//! to the control queue and awaited (durable); then Cancelling → Cancelled. A failed append
//! puts it back to Pending. A reschedule appends, instead of a marker, a copy of the timer
//! with its new due time that names the old entry: one append both cancels and re-creates.
//! Cancels and reschedules are serialised, so a timer never gets two markers.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{
    blocking, delivered, find_async, found, state_of, wait_offset, Action, Found, Outcome,
    RecState, Selector,
};
use crate::core::Core;
use crate::deliver;
use crate::entry::{Key, Kind};
use crate::error::{Result, ScheduleError};
use crate::index::BeginCancel;
use crate::records;
use crate::state::queue_name;
use crate::stats::Counters;

/// One timer record of a message, as [`decide`] sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RecView {
    kind: Kind,
    state: RecState,
    phys: u64,
    /// The record it was rolled from.
    prev: Option<u64>,
    /// Written by this call (a rescheduled copy), or rolled from such a record: the result of
    /// the action, not something to act on again.
    ours: bool,
}

/// What a message needs next.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Next {
    /// A release of one of its records is in flight: wait for it, then look again.
    Wait,
    /// These rolls finished, but the records they wrote are not among those found: find the
    /// message's records again (once per roll) before calling anything final.
    Refind(Vec<u64>),
    /// Act on these pending records. `cancel`: a copy was released, so the rest are only
    /// cancelled, even by a reschedule (moving them would deliver the message again).
    Act { idx: Vec<usize>, cancel: bool },
    /// Nothing is pending or in flight: final. `delivered`: a copy reached its real topic.
    Settled { delivered: bool },
}

/// A roll that finished (or left memory) without its successor among `views`.
fn orphan_roll(v: &RecView, views: &[RecView]) -> bool {
    v.kind == Kind::Roll
        && matches!(v.state, RecState::Released | RecState::Gone)
        && !views.iter().any(|w| w.prev == Some(v.phys))
}

/// The step a message needs, from its records' states (pure, so the races are testable).
/// Releases in flight are waited out before anything is acted on, so a copy being released
/// meanwhile turns the answer into "delivered" instead of a false "cancelled". A finished
/// roll is not a release: its successor is the record to look at. `refound` holds rolls a
/// look-up was already repeated for (one whose successor is still missing was cancelled or
/// dropped); `gone_delivered` says a record no longer in memory was found released.
fn decide(views: &[RecView], refound: &HashSet<u64>, gone_delivered: bool) -> Next {
    let theirs = || views.iter().enumerate().filter(|(_, v)| !v.ours);
    if theirs().any(|(_, v)| v.state == RecState::Busy) {
        return Next::Wait;
    }
    let orphans: Vec<u64> = theirs()
        .filter(|(_, v)| orphan_roll(v, views) && !refound.contains(&v.phys))
        .map(|(_, v)| v.phys)
        .collect();
    if !orphans.is_empty() {
        return Next::Refind(orphans);
    }
    let delivered = gone_delivered
        || theirs().any(|(_, v)| v.kind != Kind::Roll && v.state == RecState::Released);
    let idx: Vec<usize> = views
        .iter()
        .enumerate()
        .filter(|(_, v)| v.state == RecState::Pending && (!v.ours || delivered))
        .map(|(i, _)| i)
        .collect();
    if idx.is_empty() {
        Next::Settled { delivered }
    } else {
        Next::Act {
            idx,
            cancel: delivered,
        }
    }
}

/// [`super::dropped_not_cancelled`] over the records this call did not write.
fn only_dropped(views: &[RecView]) -> bool {
    super::dropped_not_cancelled(views.iter().filter(|v| !v.ours).map(|v| (v.kind, v.state)))
}

/// What one call has learnt and done for one message, across its rounds.
#[derive(Debug, Default)]
struct GroupProgress {
    /// Records this call wrote (rescheduled copies).
    written: HashSet<u64>,
    /// Records this call found released before a crash. The index may still hold such a
    /// record as pending beyond the window (the deliverer's own check settles it later).
    released_before_crash: HashSet<u64>,
    /// Rolls a look-up was repeated for.
    refound: HashSet<u64>,
    /// Records no longer in memory already looked up in the real topic.
    checked_gone: HashSet<u64>,
    /// One of those was released.
    gone_delivered: bool,
    /// What this call did to a record, if anything.
    done: Option<Outcome>,
}

impl GroupProgress {
    /// The answer once settled: one per message, true for every copy. Delivered when any copy
    /// reached consumers (the others were cancelled by this call or before); otherwise what
    /// this call did, or when it found nothing to do, "dropped" if a copy was given up as
    /// undeliverable, else "cancelled before".
    fn answer(&self, delivered: bool, dropped: bool) -> Outcome {
        if delivered {
            Outcome::AlreadyDelivered
        } else if dropped {
            self.done.unwrap_or(Outcome::AlreadyDropped)
        } else {
            self.done.unwrap_or(Outcome::AlreadyCancelled)
        }
    }
}

/// The records' states and the far-lookup generations that go with them.
async fn views_of(
    core: &Arc<Core>,
    recs: &[Found],
    p: &GroupProgress,
) -> Result<(Vec<RecView>, Vec<Option<u64>>)> {
    let mut views = Vec::with_capacity(recs.len());
    let mut generations = Vec::with_capacity(recs.len());
    for f in recs {
        let key = f.key;
        let (mut state, generation) = blocking(core, move |c| state_of(c, key)).await??;
        if p.released_before_crash.contains(&f.rec.phys) {
            state = RecState::Released;
        }
        let mine = |phys: u64| p.written.contains(&phys);
        views.push(RecView {
            kind: f.kind,
            state,
            phys: f.rec.phys,
            prev: f.rec.prev,
            ours: mine(f.rec.phys) || f.rec.prev.is_some_and(mine),
        });
        generations.push(generation);
    }
    Ok((views, generations))
}

/// Looks up, once each, whether records that left memory (released or cancelled) were
/// released; only a fire (not a roll, not this call's copies) can have been.
async fn check_gone(
    core: &Arc<Core>,
    uniq: &str,
    recs: &[Found],
    views: &[RecView],
    p: &mut GroupProgress,
) -> Result<()> {
    let offsets: Vec<u64> = views
        .iter()
        .filter(|v| v.state == RecState::Gone && v.kind != Kind::Roll && !v.ours)
        .map(|v| v.phys)
        .filter(|phys| !p.checked_gone.contains(phys))
        .collect();
    let Some(first) = recs.first() else {
        return Ok(());
    };
    if offsets.is_empty() || p.gone_delivered {
        return Ok(());
    }
    p.checked_gone.extend(offsets.iter().copied());
    let (u, topic) = (uniq.to_owned(), first.rec.real_topic.clone());
    p.gone_delivered = blocking(core, move |c| delivered(c, &u, &topic, &offsets)).await?;
    Ok(())
}

/// One message: acts on every pending record it has — a message sent twice (a client's
/// retry keeps its UNIQ_KEY) has one timer per copy, each released on its own — after
/// waiting out releases in flight and following rolls to their new records, then answers
/// once for the message.
pub(super) async fn apply_group(
    core: &Arc<Core>,
    sel: &Selector,
    uniq: &str,
    recs: Vec<Found>,
    action: Action,
) -> std::result::Result<Outcome, GroupFailure> {
    let mut p = GroupProgress::default();
    rounds(core, sel, uniq, recs, action, &mut p)
        .await
        .map_err(|cause| GroupFailure {
            partly: p.done.is_some(),
            cause,
        })
}

/// A message's failure, and whether some of its copies were changed before it.
#[derive(Debug)]
pub(super) struct GroupFailure {
    pub(super) partly: bool,
    pub(super) cause: ScheduleError,
}

impl GroupFailure {
    /// The error a whole operation answers when this message failed after `done` of the
    /// `matched` messages were handled: the bare cause only when nothing at all changed, since
    /// an error alone reads as "nothing changed".
    pub(super) fn into_error(self, done: usize, matched: usize) -> ScheduleError {
        if done == 0 && !self.partly {
            return self.cause;
        }
        ScheduleError::Partial {
            done,
            matched,
            next_partly: self.partly,
            cause: Box::new(self.cause),
        }
    }
}

/// [`apply_group`]'s rounds, recording what they did in `p`.
async fn rounds(
    core: &Arc<Core>,
    sel: &Selector,
    uniq: &str,
    mut recs: Vec<Found>,
    action: Action,
    p: &mut GroupProgress,
) -> Result<Outcome> {
    let deadline = Instant::now() + core.cfg.op_timeout;
    loop {
        if Instant::now() >= deadline {
            return Err(ScheduleError::Timeout("the message's state kept changing"));
        }
        let (views, generations) = views_of(core, &recs, p).await?;
        check_gone(core, uniq, &recs, &views, p).await?;
        match decide(&views, &p.refound, p.gone_delivered) {
            Next::Settled { delivered } => return Ok(p.answer(delivered, only_dropped(&views))),
            Next::Wait => tokio::time::sleep(Duration::from_millis(2)).await,
            Next::Refind(rolls) => {
                p.refound.extend(rolls);
                recs = refind(core, sel, uniq).await?.unwrap_or(recs);
            }
            Next::Act { idx, cancel } => {
                let action = if cancel { Action::Cancel } else { action };
                let mut copies = Vec::new();
                for i in idx {
                    match act(core, &recs[i], generations[i], action).await? {
                        Acted::Changed { outcome, copy } => {
                            p.done = Some(outcome);
                            if let Some(copy) = copy {
                                p.written.insert(copy.rec.phys);
                                copies.push(*copy);
                            }
                        }
                        Acted::ReleasedBeforeCrash => {
                            p.released_before_crash.insert(recs[i].rec.phys);
                        }
                        Acted::Unchanged => {}
                    }
                }
                recs.extend(copies);
            }
        }
    }
}

/// The message's records again (after a roll wrote a new one).
async fn refind(core: &Arc<Core>, sel: &Selector, uniq: &str) -> Result<Option<Vec<Found>>> {
    let (mut groups, _) = find_async(core, sel).await?;
    Ok(groups.remove(uniq))
}

/// What [`act`] did to one record.
#[derive(Debug)]
enum Acted {
    /// Cancelled or moved.
    Changed {
        outcome: Outcome,
        /// The new timer record a reschedule wrote (boxed: a record is large).
        copy: Option<Box<Found>>,
    },
    /// It had been released (or rolled) before a crash: settled as such, nothing written.
    ReleasedBeforeCrash,
    /// Its state changed meanwhile: look again.
    Unchanged,
}

/// Cancels or reschedules one pending record.
async fn act(
    core: &Arc<Core>,
    f: &Found,
    generation: Option<u64>,
    action: Action,
) -> Result<Acted> {
    let Some(check) = begin(core, f.key, generation).await? else {
        return Ok(Acted::Unchanged);
    };
    // From here the timer is `Cancelling` until this ends it. The rest runs as a task of its
    // own: run in the caller's future, a caller that went away mid-way (an HTTP client that
    // hung up while the marker was being written) left it `Cancelling` for good, never
    // delivered nor reported, with the index's watermark stuck behind it.
    let guard = Begun {
        core: Arc::clone(core),
        key: f.key,
        armed: true,
    };
    let work = act_begun(guard, f.clone(), action, check);
    tokio::spawn(tracing::Instrument::in_current_span(work))
        .await
        .map_err(|_| ScheduleError::Timeout("a cancel or reschedule task failed"))?
}

/// Fresh look-ups [`begin`] makes for one far record before leaving it to the next round.
const FAR_RETRIES: usize = 8;

/// Begins the cancel of one pending record: `Some(check)` once it is `Cancelling` (`check`:
/// it may have been released before a crash), `None` when its state changed. A far record's
/// look-up holds only for the index generation it was made in, and every checkpoint starts a
/// new one; the record is then looked up again here, alone. Left to the next round instead,
/// a message with many far records looked all of them up again after each checkpoint, and
/// a cancel under load could run out of time without ever catching up.
async fn begin(core: &Arc<Core>, key: Key, mut generation: Option<u64>) -> Result<Option<bool>> {
    for _ in 0..FAR_RETRIES {
        let (begun, check) = {
            let mut g = core.index.inner.lock();
            (g.begin_cancel(key, generation), g.may_be_released(key))
        };
        match begun {
            BeginCancel::Started => return Ok(Some(check)),
            BeginCancel::Retry => {
                let (state, fresh) = blocking(core, move |c| state_of(c, key)).await??;
                if state != RecState::Pending {
                    return Ok(None);
                }
                generation = fresh;
            }
            BeginCancel::Not(_) | BeginCancel::Gone => return Ok(None),
        }
    }
    Ok(None)
}

/// Ends a cancel begun with `begin_cancel` exactly once: through [`Begun::finish`] or, when
/// the task ends any other way (a panic, the runtime stopping), by putting the timer back.
struct Begun {
    core: Arc<Core>,
    key: Key,
    armed: bool,
}

impl Begun {
    fn finish(mut self, written: bool) {
        self.armed = false;
        self.core
            .index
            .inner
            .lock()
            .finish_cancel(self.key, written);
    }

    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for Begun {
    fn drop(&mut self) {
        if self.armed {
            self.core.index.inner.lock().finish_cancel(self.key, false);
            self.core.deliver_wake.notify_one();
        }
    }
}

/// The part of [`act`] after the timer became `Cancelling`.
async fn act_begun(guard: Begun, f: Found, action: Action, check: bool) -> Result<Acted> {
    let core = Arc::clone(&guard.core);
    let core = &core;
    if check {
        match released_before_crash(core, &f).await {
            Ok(true) => {
                guard.disarm(); // `released_before_crash` ended the cancel
                return Ok(Acted::ReleasedBeforeCrash);
            }
            Ok(false) => {}
            Err(e) => {
                guard.finish(false);
                return Err(e);
            }
        }
    }
    let (input, outcome) = match action {
        Action::Cancel => (
            records::cancel_marker(f.key, &f.rec.real_topic),
            Outcome::Cancelled,
        ),
        Action::Reschedule(due_ms) => {
            let copy = records::copy_timer(&f.bytes, due_ms, None, Some(f.key))
                .map_err(|e| ScheduleError::InvalidArgument(e.0));
            match copy {
                Ok(m) => (m, Outcome::Rescheduled { due_ms }),
                Err(e) => {
                    guard.finish(false);
                    return Err(e);
                }
            }
        }
    };
    let queue = queue_name(&input.topic, input.queue_id);
    let written = core.services.put(vec![input]).await;
    guard.finish(written.is_ok());
    core.deliver_wake.notify_one();
    core.wake.wake();
    let appended = written?.first().copied();
    if let Some(a) = appended {
        // Answer once the marker is indexed too, so counts and lists already show it.
        let _ = wait_offset(core, &queue, u64::try_from(a.queue_offset).unwrap_or(0)).await;
    }
    let counter = match outcome {
        Outcome::Rescheduled { .. } => &core.counters.rescheduled,
        _ => &core.counters.cancelled,
    };
    Counters::add(counter, 1);
    tracing::info!(uniq_key = ?f.rec.uniq_key, topic = %f.rec.real_topic, phys = f.rec.phys, fire_ms = f.key.fire_ms, kind = ?f.kind, outcome = ?outcome, "scheduled message changed");
    let copy = match (outcome, appended) {
        (Outcome::Rescheduled { .. }, Some(a)) => written_copy(core, a.phys_offset).await?,
        _ => None,
    };
    Ok(Acted::Changed { outcome, copy })
}

/// The timer record a reschedule just wrote, so later rounds know it as this call's own.
async fn written_copy(core: &Arc<Core>, phys: u64) -> Result<Option<Box<Found>>> {
    blocking(core, move |c| {
        c.store
            .read_record(phys)
            .ok()
            .and_then(|bytes| found(c, bytes))
            .map(Box::new)
    })
    .await
}

/// For a timer that may have been released before a crash (see
/// [`crate::index::Inner::may_be_released`]), with its cancel begun: looks for its copy as the
/// deliverer would. Found: the timer is settled as released (a fire answers "delivered", a
/// roll's new timer is the one to act on) and `true`. Not found: `false`, go on.
async fn released_before_crash(core: &Arc<Core>, f: &Found) -> Result<bool> {
    let (rec, kind) = (f.rec.clone(), f.kind);
    let found = blocking(core, move |c| deliver::released_before(c, &rec, kind)).await;
    let found = found?;
    if !found {
        return Ok(false);
    }
    core.index
        .inner
        .lock()
        .finish_cancel_released(f.key, &f.rec.real_topic);
    core.deliver_wake.notify_one();
    tracing::info!(uniq_key = ?f.rec.uniq_key, topic = %f.rec.real_topic, phys = f.rec.phys, fire_ms = f.key.fire_ms, "cancel found a release made before the crash");
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A message sent twice has a timer per copy. A cancel that changed one copy and then
    /// failed on the other answered the bare error, which reads as "nothing changed".
    #[test]
    fn a_failure_after_some_copies_changed_is_partial_even_for_the_first_message() {
        let busy = || ScheduleError::Timeout("busy");
        let untouched = GroupFailure {
            partly: false,
            cause: busy(),
        };
        assert!(matches!(
            untouched.into_error(0, 1),
            ScheduleError::Timeout(_)
        ));
        let partly = GroupFailure {
            partly: true,
            cause: busy(),
        };
        let e = partly.into_error(0, 1);
        assert!(
            matches!(
                e,
                ScheduleError::Partial {
                    done: 0,
                    matched: 1,
                    next_partly: true,
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(e.to_string().contains("some of its copies"), "{e}");
        let later = GroupFailure {
            partly: false,
            cause: busy(),
        };
        assert!(matches!(
            later.into_error(2, 3),
            ScheduleError::Partial {
                done: 2,
                next_partly: false,
                ..
            }
        ));
    }

    fn rec(kind: Kind, state: RecState, phys: u64) -> RecView {
        RecView {
            kind,
            state,
            phys,
            prev: None,
            ours: false,
        }
    }

    fn fire(state: RecState, phys: u64) -> RecView {
        rec(Kind::Fire, state, phys)
    }

    fn decide_fresh(views: &[RecView]) -> Next {
        decide(views, &HashSet::new(), false)
    }

    #[test]
    fn every_pending_copy_of_a_message_is_acted_on() {
        let views = [fire(RecState::Pending, 10), fire(RecState::Pending, 20)];
        assert_eq!(
            decide_fresh(&views),
            Next::Act {
                idx: vec![0, 1],
                cancel: false
            }
        );
    }

    #[test]
    fn a_copy_in_flight_is_waited_for_before_the_others_are_acted_on() {
        let views = [fire(RecState::Busy, 10), fire(RecState::Pending, 20)];
        assert_eq!(decide_fresh(&views), Next::Wait);
    }

    #[test]
    fn once_a_copy_was_released_the_others_are_only_cancelled_and_the_answer_is_delivered() {
        let views = [fire(RecState::Released, 10), fire(RecState::Pending, 20)];
        assert_eq!(
            decide_fresh(&views),
            Next::Act {
                idx: vec![1],
                cancel: true
            }
        );
        let views = [fire(RecState::Gone, 10), fire(RecState::Pending, 20)];
        assert_eq!(
            decide(&views, &HashSet::new(), true),
            Next::Act {
                idx: vec![1],
                cancel: true
            },
            "a copy gone from memory and found in the real topic counts as released"
        );
        let views = [fire(RecState::Released, 10), fire(RecState::Cancelled, 20)];
        assert_eq!(decide_fresh(&views), Next::Settled { delivered: true });
    }

    #[test]
    fn the_copies_a_reschedule_wrote_are_not_moved_again_nor_waited_for() {
        let moved = RecView {
            ours: true,
            ..fire(RecState::Pending, 30)
        };
        let views = [fire(RecState::Cancelled, 10), moved];
        assert_eq!(decide_fresh(&views), Next::Settled { delivered: false });
        let in_flight = RecView {
            state: RecState::Busy,
            ..moved
        };
        let views = [fire(RecState::Cancelled, 10), in_flight];
        assert_eq!(decide_fresh(&views), Next::Settled { delivered: false });
    }

    #[test]
    fn a_moved_copy_is_cancelled_when_another_copy_turns_out_released() {
        let moved = RecView {
            ours: true,
            ..fire(RecState::Pending, 30)
        };
        let views = [fire(RecState::Released, 10), moved];
        assert_eq!(
            decide_fresh(&views),
            Next::Act {
                idx: vec![1],
                cancel: true
            }
        );
    }

    /// Defect: a cancel racing a roll saw the old record finish (Released, or Gone once the
    /// watermark passed it) before the rolled copy was found, and answered "delivered" (or
    /// "cancelled before") while the copy was still pending.
    #[test]
    fn a_finished_roll_is_never_final_until_its_new_record_is_looked_for() {
        for state in [RecState::Released, RecState::Gone] {
            let views = [rec(Kind::Roll, state, 10)];
            assert_eq!(decide_fresh(&views), Next::Refind(vec![10]), "{state:?}");
            let refound: HashSet<u64> = [10].into();
            assert_eq!(
                decide(&views, &refound, false),
                Next::Settled { delivered: false },
                "looked for after it finished and still alone: it was cancelled or dropped"
            );
        }
    }

    #[test]
    fn a_finished_roll_with_its_new_record_found_acts_on_the_new_record() {
        let rolled = RecView {
            prev: Some(10),
            ..fire(RecState::Pending, 20)
        };
        let views = [rec(Kind::Roll, RecState::Released, 10), rolled];
        assert_eq!(
            decide_fresh(&views),
            Next::Act {
                idx: vec![1],
                cancel: false
            },
            "a roll is not a release"
        );
    }

    #[test]
    fn a_dropped_copy_is_not_a_delivery_and_the_pending_one_is_acted_on() {
        let views = [fire(RecState::Dropped, 10), fire(RecState::Pending, 20)];
        assert_eq!(
            decide_fresh(&views),
            Next::Act {
                idx: vec![1],
                cancel: false
            },
            "a reschedule moves the deliverable copy instead of cancelling it"
        );
        let settled = [fire(RecState::Dropped, 10)];
        assert_eq!(decide_fresh(&settled), Next::Settled { delivered: false });
        assert!(only_dropped(&settled));
        let one_cancelled = [fire(RecState::Dropped, 10), fire(RecState::Cancelled, 20)];
        assert!(
            !only_dropped(&one_cancelled),
            "a retried cancel says cancelled"
        );
        let p = GroupProgress::default();
        assert_eq!(p.answer(false, true), Outcome::AlreadyDropped);
        assert_eq!(p.answer(true, true), Outcome::AlreadyDelivered);
    }
}
