//! Ending deliveries: ack (finished), nack and lease expiry (failed: handed back through the
//! retry path), and visibility changes. Each receipt gets its own result.
//!
//! A hand-back takes the entry out of the lease book first (so the receipt is stale from then
//! on), copies the message to `%RETRY%<group>` or `%DLQ%<group>` with
//! [`crate::retry::send_back`], and only then finishes the queue entry, so the committed
//! offset never passes a message whose copy is not stored. When the copy fails the entry is
//! delivered again from where it is.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::receipt::Receipt;
use super::state::{Group, LeaseState, OpenState, Outcome, QueueKey, Remember};
use super::LeaseError;
use crate::broker::context::BrokerContext;
use crate::retry::{RetryError, SendBack};

/// Hand-backs that failed: one warning per 10 s and kind, with the count of those held back.
static HAND_BACK_FAILURES_LOG: crate::log_every::LogEvery =
    crate::log_every::LogEvery::new(Duration::from_secs(10));

/// Hand-backs running at once for one call or tick.
const HAND_BACK_CONCURRENCY: usize = 32;

/// One failed delivery to copy to the retry topic or the DLQ.
#[derive(Debug, Clone)]
pub(crate) struct HandBack {
    key: QueueKey,
    offset: u64,
    phys: u64,
    origin: String,
    delay_level: i32,
    reason: &'static str,
}

/// Parses a receipt and checks it belongs to `group` and to this broker run.
pub(crate) fn resolve(state: &LeaseState, group: &str, text: &str) -> Result<Receipt, LeaseError> {
    let r = Receipt::decode(text).ok_or(LeaseError::UnknownReceipt)?;
    if r.group != group {
        return Err(LeaseError::WrongGroup);
    }
    if r.run != state.minter.run {
        return Err(LeaseError::UnknownReceipt);
    }
    Ok(r)
}

/// Runs `f` on each receipt under the group's lock.
fn each<T>(
    state: &LeaseState,
    group: &str,
    receipts: &[String],
    mut f: impl FnMut(&mut Group, &Receipt, Instant) -> Result<T, LeaseError>,
) -> Vec<Result<T, LeaseError>> {
    let book = state.existing(group);
    if book.is_some() {
        state.note_seen(group);
    }
    let mut guard = book.as_ref().map(|b| b.lock());
    let now = Instant::now();
    receipts
        .iter()
        .map(|text| {
            let r = resolve(state, group, text)?;
            let g = guard.as_deref_mut().ok_or(LeaseError::UnknownReceipt)?;
            f(g, &r, now)
        })
        .collect()
}

/// Acknowledges deliveries: their entries are finished and the committed offsets move.
pub(crate) fn ack(
    ctx: &BrokerContext,
    state: &LeaseState,
    group: &str,
    receipts: &[String],
) -> Vec<Result<(), LeaseError>> {
    let remember = Remember::from(&ctx.cfg.lease);
    each(state, group, receipts, |g, r, now| {
        g.check(r, now)?;
        if let Some(lease) = g.end(r.generation, Outcome::Acked, remember) {
            g.finish(&lease.key, lease.offset);
            g.commit(&ctx.offsets, &lease.key);
        }
        Ok(())
    })
}

/// Moves the deadlines of live leases to `visibility` from now (not past the lease's limit).
pub(crate) fn extend(
    ctx: &BrokerContext,
    state: &LeaseState,
    group: &str,
    receipts: &[String],
    visibility: Duration,
) -> Vec<Result<(), LeaseError>> {
    if let Err(e) = super::check_visibility(&ctx.cfg.lease, visibility) {
        return receipts.iter().map(|_| Err(e.clone())).collect();
    }
    each(state, group, receipts, |g, r, now| {
        let limit = g.check(r, now)?.limit;
        let deadline = now + visibility;
        if deadline > limit {
            return Err(LeaseError::Invalid(format!(
                "a lease lasts at most {:?} from its receive",
                ctx.cfg.lease.max_visibility
            )));
        }
        g.extend(r.generation, deadline);
        Ok(())
    })
}

/// Hands deliveries back as failed, with a delay level (0 = the group's back-off).
pub(crate) async fn nack(
    ctx: &Arc<BrokerContext>,
    state: &Arc<LeaseState>,
    group: &str,
    receipts: &[String],
    delay_level: i32,
) -> Vec<Result<(), LeaseError>> {
    let remember = Remember::from(&ctx.cfg.lease);
    let jobs = each(state, group, receipts, |g, r, now| {
        g.check(r, now)?;
        start_hand_back(
            g,
            r.generation,
            Outcome::Nacked,
            remember,
            delay_level,
            "nacked",
        )
        .ok_or(LeaseError::UnknownReceipt)
    });
    let todo: Vec<HandBack> = jobs
        .iter()
        .filter_map(|j| j.as_ref().ok().cloned())
        .collect();
    let mut done = run_hand_backs(ctx, state, group, todo).await.into_iter();
    jobs.into_iter()
        .map(|j| j.and_then(|_| done.next().unwrap_or(Ok(()))))
        .collect()
}

/// Ends a lease and marks its entry as being handed back.
fn start_hand_back(
    g: &mut Group,
    generation: u64,
    outcome: Outcome,
    remember: Remember,
    delay_level: i32,
    reason: &'static str,
) -> Option<HandBack> {
    let lease = g.end(generation, outcome, remember)?;
    let open = g.open_entry(&lease.key, lease.offset)?.clone();
    g.set_state(&lease.key, lease.offset, OpenState::HandingBack);
    Some(HandBack {
        key: lease.key,
        offset: lease.offset,
        phys: open.phys,
        origin: open.origin,
        delay_level,
        reason,
    })
}

/// Groups whose expired leases one expiry pass hands back at the same time (each with up to
/// `HAND_BACK_CONCURRENCY` copies in flight).
const EXPIRY_GROUPS_AT_ONCE: usize = 8;

/// Copies failed deliveries (bounded concurrency), then finishes or reopens their entries.
/// Results come back in the order of `jobs`.
async fn run_hand_backs(
    ctx: &Arc<BrokerContext>,
    state: &Arc<LeaseState>,
    group: &str,
    jobs: Vec<HandBack>,
) -> Vec<Result<(), LeaseError>> {
    let mut results: Vec<Result<(), LeaseError>> = vec![Ok(()); jobs.len()];
    for (chunk_no, chunk) in jobs.chunks(HAND_BACK_CONCURRENCY).enumerate() {
        let mut set = JoinSet::new();
        // Which job each task copies: a task that fails (a panic) returns nothing of it.
        let mut tasks = std::collections::HashMap::new();
        for (i, job) in chunk.iter().enumerate() {
            let at = chunk_no * HAND_BACK_CONCURRENCY + i;
            let (ctx, copy, group) = (Arc::clone(ctx), job.clone(), group.to_owned());
            let handle = set.spawn(async move {
                crate::retry::send_back(&ctx, &send_back_of(&group, &copy)).await
            });
            tasks.insert(handle.id(), (at, job));
        }
        while let Some(joined) = set.join_next_with_id().await {
            let (id, r) = match joined {
                Ok((id, r)) => (id, r),
                Err(e) => {
                    // Reopened, not left "being handed back" for the rest of the run (never
                    // delivered again, holding the committed offset), and reported failed.
                    tracing::error!(group, error = %e, "hand-back task failed; the message will be delivered again");
                    let failed = RetryError::Refused {
                        code: sluice_protocol::response_code::SYSTEM_ERROR,
                        remark: format!("hand-back task failed: {e}"),
                    };
                    (e.id(), Err(failed))
                }
            };
            if let Some((at, job)) = tasks.get(&id) {
                results[*at] = finish_hand_back(ctx, state, group, job, r);
            }
        }
    }
    results
}

fn send_back_of(group: &str, job: &HandBack) -> SendBack {
    SendBack {
        group: group.to_owned(),
        phys_offset: job.phys,
        delay_level: job.delay_level,
        origin_msg_id: None,
        origin_topic: Some(job.origin.clone()),
        max_reconsume_times: None,
        reason: Some(job.reason.to_owned()),
    }
}

/// Finishes a handed-back entry (or reopens it when the copy failed) and commits.
fn finish_hand_back(
    ctx: &BrokerContext,
    state: &LeaseState,
    group: &str,
    job: &HandBack,
    r: Result<crate::retry::SendBackOutcome, RetryError>,
) -> Result<(), LeaseError> {
    let book = state.group(group);
    let mut g = book.lock();
    let result = match r {
        Ok(out) => {
            tracing::debug!(group, topic = %job.key.0, queue_id = job.key.1, offset = job.offset, to = %out.topic, dead_letter = out.dead_letter, "delivery handed back");
            g.finish(&job.key, job.offset);
            Ok(())
        }
        Err(e @ (RetryError::NoSuchMessage(_) | RetryError::Deleted(_))) => {
            tracing::warn!(group, topic = %job.key.0, offset = job.offset, error = %e, "handed-back message no longer stored, or of a deleted topic; dropped");
            g.finish(&job.key, job.offset);
            Ok(())
        }
        Err(e) => {
            // Held for a lease period, not deliverable at once: a failure that does not go
            // away (no room for the retry topic) made a nacked message come back at request
            // rate, its nack's delay ignored.
            let hold = ctx.cfg.lease.default_visibility;
            let kind = match &e {
                RetryError::InvalidGroup(_) => "invalid_group",
                _ => "refused",
            };
            if let Some(held_back) = HAND_BACK_FAILURES_LOG.allow(kind) {
                tracing::warn!(group, topic = %job.key.0, offset = job.offset, error = %e, hold = ?hold, held_back, "hand-back failed; the message is delivered again after a lease period");
            }
            g.hold_until(&job.key, job.offset, Instant::now() + hold);
            Err(LeaseError::HandBack(e))
        }
    };
    g.commit(&ctx.offsets, &job.key);
    result
}

/// One expiry pass: hands back up to `max_expired_per_tick` leases whose deadline passed.
///
/// The budget is shared: every group first gets an equal part, starting from a different
/// group each pass, then what is left goes round again. Given first-come in a fixed order, a
/// group with a steady stream of expiries took the whole budget every pass, and the expired
/// leases of the others were never handed back (their receipts refused, their messages never
/// delivered again, their committed offsets stuck).
///
/// The groups' hand-backs then run side by side ([`EXPIRY_GROUPS_AT_ONCE`] groups at a time):
/// one group after the other, each waiting for its copies to be durable, a pass over many
/// groups with one expiry each took a sync per group, longer than the tick.
pub(crate) async fn expire_once(ctx: &Arc<BrokerContext>, state: &Arc<LeaseState>) -> usize {
    let cfg = &ctx.cfg.lease;
    let books = state.books_rotated();
    let mut budget = cfg.max_expired_per_tick;
    let mut todo: Vec<(String, Vec<HandBack>)> = Vec::new();
    // Where each group sits in `todo`: a linear search there was O(groups²) string compares
    // per tick (5x10^7 at 10 000 groups).
    let mut slot: HashMap<String, usize> = HashMap::new();
    let share = budget.div_ceil(books.len().max(1)).max(1);
    'passes: for most in [share, usize::MAX] {
        for weak in &books {
            if budget == 0 {
                break 'passes;
            }
            // Dropped since the pass began (it was idle): nothing of it can expire.
            let Some(book) = weak.upgrade() else {
                continue;
            };
            let (group, jobs) = expired_jobs(&book, Remember::from(cfg), budget.min(most));
            drop(book);
            budget -= jobs.len();
            if jobs.is_empty() {
                continue;
            }
            tracing::debug!(group = %group, count = jobs.len(), "leases expired");
            // The second round adds to a group's first-round share: one task per group.
            match slot.get(&group) {
                Some(&i) => todo[i].1.extend(jobs),
                None => {
                    slot.insert(group.clone(), todo.len());
                    todo.push((group, jobs));
                }
            }
        }
    }
    let total = todo.iter().map(|(_, jobs)| jobs.len()).sum();
    let mut running = JoinSet::new();
    for (group, jobs) in todo {
        while running.len() >= EXPIRY_GROUPS_AT_ONCE {
            log_failed(running.join_next().await);
        }
        let (ctx, state) = (Arc::clone(ctx), Arc::clone(state));
        running.spawn(async move {
            run_hand_backs(&ctx, &state, &group, jobs).await;
        });
    }
    while let Some(done) = running.join_next().await {
        log_failed(Some(done));
    }
    total
}

/// A group's hand-backs that panicked: its entries stay being handed back (they hold the
/// committed offset, so they are delivered again after a restart); said, not swallowed.
fn log_failed(done: Option<Result<(), tokio::task::JoinError>>) {
    if let Some(Err(e)) = done {
        tracing::error!(error = %e, "an expiry hand-back task failed; its messages are delivered again after a restart");
    }
}

fn expired_jobs(book: &Mutex<Group>, remember: Remember, budget: usize) -> (String, Vec<HandBack>) {
    let mut g = book.lock();
    let now = Instant::now();
    let jobs = g
        .expired(now, budget)
        .into_iter()
        .filter_map(|generation| {
            start_hand_back(
                &mut g,
                generation,
                Outcome::Expired,
                remember,
                0,
                "lease expired",
            )
        })
        .collect();
    (g.name.clone(), jobs)
}
