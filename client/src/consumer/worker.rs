//! One task per owned queue: pull with long polling from the next offset, then hand the
//! messages to the handler, concurrently (bounded by the consumer's permits) or, orderly, one
//! at a time while the queue's broker lock is held. Offsets move as messages finish.

use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Waker};
use std::time::Duration;

use super::process_queue::ProcessQueue;
use super::push::ConsumerInner;
use super::remote::{self, PullStatus};
use super::{run_handler, ConsumeResult, Subscription};
use crate::message::ConsumedMessage;

/// Pause after a failed pull (RocketMQ: 3 s; shorter here, the failure is usually brief).
const PULL_ERROR_PAUSE: Duration = Duration::from_secs(1);
/// Pause before asking again for an orderly lock that another member holds.
const LOCK_RETRY: Duration = Duration::from_millis(500);
/// Pause before consuming again locally a message that could not be handed back.
const LOCAL_RETRY: Duration = Duration::from_secs(5);

/// Runs until the queue is dropped or the consumer stops.
#[tracing::instrument(skip_all, fields(group = %inner.group, topic = %pq.mq.topic, queue_id = pq.mq.queue_id))]
pub(super) async fn run(inner: Arc<ConsumerInner>, pq: Arc<ProcessQueue>) {
    let Some(sub) = inner.subscription(&pq.mq.topic).cloned() else {
        return;
    };
    let mut next = pq.commit_point();
    while !pq.is_dropped() && !inner.is_stopped() {
        if inner.s.orderly && !pq.is_locked() {
            match lock_and_sync(&inner, &pq).await {
                Some(start) => next = start,
                None => {
                    pause(&pq, LOCK_RETRY).await;
                    continue;
                }
            }
        }
        if pq.inflight() >= inner.s.max_cached_per_queue {
            pq.wait_progress(Duration::from_millis(100)).await;
            continue;
        }
        let pulled = tokio::select! {
            r = remote::pull(&inner.core, &inner.group, &pq.mq, &sub, next, inner.s.pull_batch_size, inner.s.long_poll) => r,
            () = pq.dropped() => break,
        };
        match pulled {
            Ok(r) => next = on_pulled(&inner, &pq, &sub, r).await,
            Err(e) => {
                tracing::debug!(offset = next, error = %e, "pull failed");
                pause(&pq, PULL_ERROR_PAUSE).await;
            }
        }
    }
    tracing::debug!("queue worker stopped");
}

/// Orderly: takes the queue's broker lock, then reads the group's committed offset and
/// starts from it (or from this worker's own commit point, when that is further). The offset
/// read when the queue was assigned came before the lock, while the previous owner still
/// consumed; starting there would redeliver all it handled since. `None` when the lock is
/// not ours or the offset could not be read (the lock is then taken again, and the offset
/// read again, next time).
async fn lock_and_sync(inner: &ConsumerInner, pq: &ProcessQueue) -> Option<i64> {
    inner.lock(vec![pq.mq.clone()]).await;
    if !pq.is_locked() {
        return None;
    }
    match remote::query_offset(&inner.core, &inner.group, &pq.mq).await {
        Ok(committed) => {
            let start = committed.unwrap_or(-1).max(pq.commit_point());
            pq.restart_at(start);
            inner.offsets.update(&pq.mq, start);
            Some(start)
        }
        Err(e) => {
            tracing::debug!(error = %e, "committed offset not read after locking");
            pq.set_locked(false);
            None
        }
    }
}

/// Records a pull's outcome and dispatches its messages; returns the next offset to pull.
async fn on_pulled(
    inner: &Arc<ConsumerInner>,
    pq: &Arc<ProcessQueue>,
    sub: &Subscription,
    r: remote::PullResult,
) -> i64 {
    match r.status {
        PullStatus::Found => {
            pq.add(
                r.messages.iter().map(ConsumedMessage::queue_offset),
                r.next_begin_offset,
            );
            if inner.s.orderly {
                if let Some(resume) = consume_orderly(inner, pq, r.messages).await {
                    pq.rewind(resume);
                    return resume;
                }
            } else {
                dispatch_concurrently(inner, pq, r.messages).await;
            }
        }
        PullStatus::NoNewMessage | PullStatus::NoMatchedMessage => pq.advance(r.next_begin_offset),
        PullStatus::OffsetIllegal => {
            tracing::warn!(topic = %sub.topic, next = r.next_begin_offset, "pull offset out of range; moving");
            pq.advance(r.next_begin_offset);
        }
    }
    if !pq.is_dropped() {
        inner.offsets.update(&pq.mq, pq.commit_point());
    }
    r.next_begin_offset
}

/// Hands each message to the handler, holding a permit of the consumer's bound: inline when
/// the handler finishes at once, else in a task of its own.
async fn dispatch_concurrently(
    inner: &Arc<ConsumerInner>,
    pq: &Arc<ProcessQueue>,
    msgs: Vec<ConsumedMessage>,
) {
    for msg in msgs {
        let permit = tokio::select! {
            p = Arc::clone(&inner.permits).acquire_owned() => p,
            () = pq.dropped() => return,
        };
        let Ok(permit) = permit else { return };
        if pq.is_dropped() || inner.is_stopped() {
            return;
        }
        let (inner, pq) = (Arc::clone(inner), Arc::clone(pq));
        let mut handling = Box::pin(async move {
            let offset = msg.queue_offset();
            // An unsettled message stays in flight, holding the commit point at its offset,
            // so whoever consumes the queue next gets it again.
            if consume_until_settled(&inner, &pq, msg).await {
                let point = pq.done(offset);
                if !pq.is_dropped() {
                    inner.offsets.update(&pq.mq, point);
                }
            }
            drop(permit);
        });
        // Polled once here first: a handler that finishes without waiting (the usual case)
        // then costs no task of its own. One that waits goes on in a task, which polls it again
        // at once with its own waker, so the no-op waker of this first poll is never relied on.
        let mut cx = Context::from_waker(Waker::noop());
        if handling.as_mut().poll(&mut cx).is_pending() {
            tokio::spawn(handling);
        }
    }
}

/// Handles a message; a `Retry` hands it back to the broker. When even that fails, the
/// message is consumed again here after a pause (its offset held meanwhile). Returns true
/// once it settled (handled, or handed back), false when the consumer stopped or lost the
/// queue first: the message is then neither done nor handed back, and the handler is not
/// run again, since the queue's next owner will deliver it.
async fn consume_until_settled(
    inner: &ConsumerInner,
    pq: &ProcessQueue,
    msg: ConsumedMessage,
) -> bool {
    loop {
        match run_handler(
            inner.handler.as_ref(),
            msg.clone(),
            Some(inner.s.consume_timeout),
        )
        .await
        {
            ConsumeResult::Success => return true,
            ConsumeResult::Retry(delay) => {
                if inner.send_back(&msg, delay).await {
                    return true;
                }
            }
        }
        pause(pq, LOCAL_RETRY).await;
        if pq.is_dropped() || inner.is_stopped() {
            return false;
        }
    }
}

/// Handles messages one at a time in queue order. Returns the offset to pull again from when
/// the lock was lost or the queue dropped midway, `None` when every message was handled.
async fn consume_orderly(
    inner: &ConsumerInner,
    pq: &ProcessQueue,
    msgs: Vec<ConsumedMessage>,
) -> Option<i64> {
    for msg in msgs {
        let offset = msg.queue_offset();
        if !consume_one_orderly(inner, pq, msg).await {
            return Some(offset);
        }
        let point = pq.done(offset);
        inner.offsets.update(&pq.mq, point);
    }
    None
}

/// Handles one message, retrying locally; false when interrupted (lock lost, queue dropped,
/// consumer stopping) before it settled.
async fn consume_one_orderly(
    inner: &ConsumerInner,
    pq: &ProcessQueue,
    mut msg: ConsumedMessage,
) -> bool {
    loop {
        let Ok(permit) = Arc::clone(&inner.permits).acquire_owned().await else {
            return false;
        };
        let consuming = pq.consuming.lock().await;
        if pq.is_dropped() || inner.is_stopped() || !pq.is_locked() {
            return false;
        }
        let delay = match run_handler(inner.handler.as_ref(), msg.clone(), None).await {
            ConsumeResult::Success => return true,
            ConsumeResult::Retry(delay) => delay.unwrap_or(inner.s.orderly_retry_delay),
        };
        let tries = msg.reconsume_times().saturating_add(1);
        if tries > inner.s.max_reconsume_times && inner.dead_letter(&msg).await {
            return true;
        }
        msg = msg.with_reconsume_times(tries.min(inner.s.max_reconsume_times));
        drop(consuming);
        drop(permit);
        pause(pq, delay).await;
    }
}

/// Sleeps `d`, or less when the queue is dropped.
async fn pause(pq: &ProcessQueue, d: Duration) {
    tokio::select! {
        () = tokio::time::sleep(d) => {}
        () = pq.dropped() => {}
    }
}
