//! The timer-queue reader: follows the schedule topic's level queues, the timer queue and the
//! control queue through their consume queues and indexes what it finds. It is the only
//! writer of new entries, so the index holds a timer only once the record is durable (the
//! store dispatches flushed records only), and the progress it saves (`enqueue` in the state
//! file) is exactly what the runs contain.
//!
//! It runs on its own thread (the store is synchronous), polls every `enqueue_poll` when idle,
//! and is woken by the put hook when a delayed message goes by.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_store::{GetStatus, QueueMessage};

use crate::core::{Core, StopFlags};
use crate::props::{CONTROL_QUEUE, TIMER_TOPIC};
use crate::records::TimerRecord;
use crate::state::queue_name;
use crate::stats::Counters;

/// Most records read per queue per round.
const READ_BATCH: usize = 512;
/// Most bytes read per queue per round.
const READ_BYTES: usize = 4 << 20;
/// After a wake-up, poll at this pace for a while: the record is durable a sync later.
const HOT_POLL: Duration = Duration::from_millis(1);
const HOT_FOR: Duration = Duration::from_millis(200);

/// The reader thread's loop.
pub(crate) fn run(core: Arc<Core>) {
    if !core.store.wait_dispatched(Duration::from_secs(30)) {
        tracing::warn!("store still dispatching after 30 s; indexing what is visible");
    }
    let mut queues = core.timer_queues();
    // What the timer queues held at start: once the index has read that far, it knows every
    // timer stored before this run, and releases may begin (waiting for a pass that finds
    // nothing never ended while delayed sends kept arriving).
    let mut at_start: Vec<(String, u64)> = queues
        .iter()
        .map(|(t, q)| (queue_name(t, *q), core.store.max_offset(t, *q)))
        .collect();
    let mut refreshed = Instant::now();
    let mut hot_until = Instant::now();
    loop {
        if StopFlags::get(&core.stop.enqueue) {
            return;
        }
        if refreshed.elapsed() > Duration::from_secs(1) {
            queues = core.timer_queues();
            refreshed = Instant::now();
        }
        let found: usize = queues.iter().map(|(t, q)| poll_queue(&core, t, *q)).sum();
        if found > 0 {
            if !at_start.is_empty() && read_past(&core, &at_start) {
                at_start.clear();
                mark_ready(&core);
            }
            hot_until = Instant::now() + HOT_FOR;
            continue;
        }
        mark_ready(&core);
        let pace = if Instant::now() < hot_until {
            HOT_POLL
        } else {
            core.cfg.enqueue_poll
        };
        if core.wake.wait(pace) {
            hot_until = Instant::now() + HOT_FOR;
        }
    }
}

/// Whether the index has read every queue up to `ends`.
fn read_past(core: &Core, ends: &[(String, u64)]) -> bool {
    let g = core.index.inner.lock();
    ends.iter()
        .all(|(name, end)| g.enqueue.get(name).is_some_and(|read| read >= end) || *end == 0)
}

/// After the index read what the timer queues held at start (or a full pass found nothing
/// new), releases may start.
fn mark_ready(core: &Core) {
    let mut g = core.index.inner.lock();
    if !g.ready {
        g.ready = true;
        drop(g);
        tracing::info!("timer index caught up with the timer queues");
        core.deliver_wake.notify_one();
    }
}

/// Indexes what is new in one queue; returns how many records it read.
fn poll_queue(core: &Core, topic: &str, queue_id: i32) -> usize {
    let name = queue_name(topic, queue_id);
    let start = core.index.inner.lock().enqueue.get(&name).copied();
    let start = start.unwrap_or_else(|| core.store.min_offset(topic, queue_id));
    let res = core
        .store
        .get_messages(topic, queue_id, start, READ_BATCH, READ_BYTES, None);
    match res.status {
        GetStatus::Found | GetStatus::NoMatchedMessage => {
            let n = res.messages.len();
            index_batch(core, topic, queue_id, &name, &res.messages, res.next_offset);
            n.max(usize::from(res.next_offset != start))
        }
        GetStatus::OffsetTooSmall | GetStatus::OffsetOverflowBadly => {
            tracing::warn!(topic, queue_id, offset = start, next = res.next_offset, status = ?res.status, "timer queue offset out of range; moving to the queue bounds");
            core.index
                .inner
                .lock()
                .enqueue
                .insert(name, res.next_offset);
            0
        }
        // Empty, retention having taken every entry: read up to its end, or readiness would
        // wait for a pass that finds nothing at all, which steady delayed sends never allow.
        GetStatus::NoMessageInQueue => {
            if res.max_offset > 0 {
                core.index.inner.lock().enqueue.insert(name, res.max_offset);
            }
            0
        }
        GetStatus::NoMatchedLogicQueue | GetStatus::OffsetOverflowOne => 0,
    }
}

/// Indexes a batch and moves the queue's progress, under one lock.
fn index_batch(
    core: &Core,
    topic: &str,
    queue_id: i32,
    name: &str,
    messages: &[QueueMessage],
    next: u64,
) {
    let control = topic == TIMER_TOPIC && queue_id == CONTROL_QUEUE;
    let records: Vec<TimerRecord> = messages
        .iter()
        .filter_map(|m| {
            let r = TimerRecord::parse(&m.bytes, &core.cfg);
            if r.is_none() {
                tracing::error!(
                    topic,
                    queue_id,
                    offset = m.queue_offset,
                    "unparsable timer record skipped"
                );
            }
            r
        })
        .collect();
    let mut near = false;
    let mut g = core.index.inner.lock();
    for r in &records {
        if control {
            if let Some(k) = r.cancels {
                g.apply_tombstone(k, &r.real_topic);
            }
            continue;
        }
        if let Some(k) = r.replaces {
            g.apply_tombstone(k, &r.real_topic);
        }
        let (key, kind) = r.key(core.roll_ms);
        near |= g.insert_timer(key, kind, r.size, &r.real_topic);
    }
    g.enqueue.insert(name.to_owned(), next);
    drop(g);
    if !control {
        Counters::add(&core.counters.indexed, records.len() as u64);
    }
    if near {
        core.deliver_wake.notify_one();
    }
}
