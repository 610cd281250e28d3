//! Handing out leases: which queue entries a receive takes, in which order, under the group's
//! lock. Reads are the store's synchronous, zero-copy queue reads; nothing here awaits.
//!
//! Order per receive: the topic's queues and the group's retry queue take turns (the first one
//! rotates per receive so none starves). In each, entries waiting for redelivery come first,
//! then new entries from the cursor's read position.

use std::time::Duration;

use parking_lot::Mutex;
use sluice_protocol::java_hash;
use sluice_protocol::remoting::body::parse_tags;
use sluice_store::GetStatus;
use tokio::time::Instant;

use super::decode::{self, Position};
use super::receipt::Receipt;
use super::state::{Group, LeaseState, Open, OpenState, QueueKey, Reservation};
use super::Delivery;
use crate::broker::context::BrokerContext;
use crate::retry::copy::Original;

/// Queue reads one receive makes per queue at most (each read scans a bounded number of
/// entries in the store).
const MAX_READS_PER_QUEUE: usize = 8;
/// Retry-queue entries read per step.
const RETRY_STEP: usize = 64;

/// Which tags a receive takes: every message, or those whose `TAGS` is one of a list. The hash
/// is checked on the queue entry first (no read), then the string itself (hashes collide).
#[derive(Debug, Clone)]
pub(crate) enum TagFilter {
    All,
    Tags { codes: Vec<i32>, tags: Vec<String> },
}

impl TagFilter {
    /// `None`, `*` or an empty expression take everything; else `a || b`.
    pub(crate) fn parse(expression: Option<&str>) -> Self {
        let tags = parse_tags(expression.unwrap_or("*"));
        if tags.is_empty() {
            return Self::All;
        }
        Self::Tags {
            codes: tags.iter().map(|t| java_hash(t)).collect(),
            tags,
        }
    }

    fn passes_code(&self, code: i64) -> bool {
        match self {
            Self::All => true,
            // The queue stores the tag's 32-bit hash widened to 64 bits.
            Self::Tags { codes, .. } => codes.contains(&(code as i32)),
        }
    }

    fn passes(&self, tag: Option<&str>) -> bool {
        match self {
            Self::All => true,
            Self::Tags { tags, .. } => tag.is_some_and(|t| tags.iter().any(|x| x == t)),
        }
    }
}

/// A validated receive.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub(crate) group: String,
    pub(crate) topic: String,
    pub(crate) retry_topic: String,
    pub(crate) queues: i32,
    pub(crate) filter: TagFilter,
    pub(crate) visibility: Duration,
    pub(crate) max: usize,
}

impl Plan {
    /// The queues a receive looks at: the topic's, then the group's retry queue.
    pub(crate) fn sources(&self) -> Vec<QueueKey> {
        (0..self.queues)
            .map(|q| (self.topic.clone(), q))
            .chain(std::iter::once((self.retry_topic.clone(), 0)))
            .collect()
    }
}

/// What is left of a receive's allowance.
#[derive(Debug, Clone, Copy)]
struct Budget {
    count: usize,
    bytes: usize,
}

impl Budget {
    fn exhausted(&self) -> bool {
        self.count == 0 || self.bytes == 0
    }
}

/// One receive's pass over the queues of `book` (the group's, held by the receive): whatever
/// is available now, leased.
pub(crate) fn collect(
    ctx: &BrokerContext,
    state: &LeaseState,
    plan: &Plan,
    book: &Mutex<Group>,
) -> Vec<Delivery> {
    let cfg = &ctx.cfg.lease;
    let mut g = book.lock();
    let room = cfg.max_inflight_per_group.saturating_sub(g.leases.len());
    let reserved = Reservation::new(&state.totals, plan.max.min(room), cfg.max_inflight_total);
    let out = collect_reserved(ctx, state, plan, &mut g, reserved.count);
    drop(reserved);
    // Leased deliveries count as pulled too: `messages_pulled` is every protocol's reads, as
    // `messages_stored` is every protocol's writes.
    crate::stats::Counters::add(&ctx.counters.messages_pulled, out.len() as u64);
    out
}

/// [`collect`] with room for `reserved` leases (reserved against the broker-wide bound; each
/// lease granted counts itself as well until the reservation is released).
fn collect_reserved(
    ctx: &BrokerContext,
    state: &LeaseState,
    plan: &Plan,
    g: &mut Group,
    reserved: usize,
) -> Vec<Delivery> {
    let cfg = &ctx.cfg.lease;
    let mut budget = Budget {
        count: reserved,
        bytes: cfg.max_receive_bytes,
    };
    let mut out = Vec::new();
    if budget.exhausted() {
        return out;
    }
    let sources = plan.sources();
    let start = g.rotation % sources.len();
    g.rotation = g.rotation.wrapping_add(1);
    let mut pass = Pass {
        ctx,
        state,
        plan,
        now: Instant::now(),
        out: &mut out,
        budget: &mut budget,
    };
    for i in 0..sources.len() {
        if pass.budget.exhausted() {
            break;
        }
        let key = &sources[(start + i) % sources.len()];
        g.cursor(key, || start_offset(ctx, &plan.group, key));
        pass.take_waiting(g, key);
        if key.0 == plan.retry_topic {
            pass.scan_retry(g, key);
        } else {
            pass.scan_queue(g, key);
        }
        g.commit(&ctx.offsets, key);
    }
    g.forget_settled_cursors(&sources);
    out
}

/// Where a group that never received from a queue starts: its committed offset (a restart,
/// or a group that also consumed over TCP), else the queue's minimum, so a new group sees
/// what was produced before its first receive. Clamped into what the queue holds.
fn start_offset(ctx: &BrokerContext, group: &str, key: &QueueKey) -> u64 {
    let (min, max) = (
        ctx.store.min_offset(&key.0, key.1),
        ctx.store.max_offset(&key.0, key.1),
    );
    let committed = ctx
        .offsets
        .query(group, &key.0, key.1)
        .and_then(|c| u64::try_from(c).ok());
    committed.unwrap_or(min).clamp(min, max.max(min))
}

/// One receive's working set.
struct Pass<'a> {
    ctx: &'a BrokerContext,
    state: &'a LeaseState,
    plan: &'a Plan,
    now: Instant,
    out: &'a mut Vec<Delivery>,
    budget: &'a mut Budget,
}

impl Pass<'_> {
    /// Redelivers entries of this topic waiting in the queue (failed hand-backs, retries kept
    /// aside). An entry whose record is gone (retention) is finished.
    fn take_waiting(&mut self, g: &mut Group, key: &QueueKey) {
        let now = Instant::now();
        let waiting: Vec<(u64, Open)> = g.cursors[key]
            .open
            .iter()
            .filter(|(_, o)| {
                o.state == OpenState::Waiting
                    && o.origin == self.plan.topic
                    && o.not_before.is_none_or(|t| t <= now)
            })
            .take(self.budget.count)
            .map(|(off, o)| (*off, o.clone()))
            .collect();
        for (offset, open) in waiting {
            if self.budget.exhausted() {
                return;
            }
            let decoded = self
                .ctx
                .store
                .read_record(open.phys)
                .ok()
                .and_then(|rec| Original::decode(&rec));
            match decoded {
                Some(o) if self.plan.filter.passes(decode::tag(&o)) => {
                    self.grant(g, key, offset, &o);
                }
                Some(_) => g.finish(key, offset),
                None => {
                    tracing::warn!(group = %g.name, topic = %key.0, queue_id = key.1, offset, phys_offset = open.phys, "waiting entry unreadable; skipped");
                    g.finish(key, offset);
                }
            }
        }
    }

    /// Leases new entries of one of the topic's queues. Entries whose tag does not pass are
    /// skipped, which finishes them for the group (RocketMQ's subscription filtering).
    fn scan_queue(&mut self, g: &mut Group, key: &QueueKey) {
        let filter = &self.plan.filter;
        let by_code = |code: i64| filter.passes_code(code);
        for _ in 0..MAX_READS_PER_QUEUE {
            if self.budget.exhausted() {
                return;
            }
            let next = g.cursors[key].next;
            let r = self.ctx.store.get_messages(
                &key.0,
                key.1,
                next,
                self.budget.count,
                self.budget.bytes,
                Some(&by_code),
            );
            let mut reached = r.next_offset;
            match r.status {
                GetStatus::Found => {
                    for m in &r.messages {
                        // The read was sized by stored bytes; a compressed body counts
                        // inflated, so the budget can run out first: the rest stays unread.
                        if self.budget.exhausted() {
                            reached = m.queue_offset;
                            break;
                        }
                        match Original::decode(&m.bytes) {
                            Some(o) if filter.passes(decode::tag(&o)) => {
                                self.grant(g, key, m.queue_offset, &o);
                            }
                            _ => {}
                        }
                    }
                }
                GetStatus::NoMatchedMessage | GetStatus::OffsetTooSmall if r.next_offset > next => {
                }
                _ => return,
            }
            if let Some(c) = g.cursors.get_mut(key) {
                c.next = c.next.max(reached);
            }
        }
    }

    /// Leases retries of this topic from the group's retry queue, which holds the retries of
    /// every topic the group receives. Retries of other topics are kept aside (open, waiting)
    /// so the cursor can move on without losing them; when `max_parked_retries` are aside, or
    /// `max_retry_scan` entries were looked at, the cursor stops where it is.
    fn scan_retry(&mut self, g: &mut Group, key: &QueueKey) {
        let cfg = &self.ctx.cfg.lease;
        let mut parked = g.cursors[key].waiting();
        let mut share = None;
        let mut examined = 0usize;
        while examined < cfg.max_retry_scan && !self.budget.exhausted() {
            let next = g.cursors[key].next;
            let step = RETRY_STEP.min(cfg.max_retry_scan - examined);
            let r = self
                .ctx
                .store
                .get_messages(&key.0, key.1, next, step, self.budget.bytes, None);
            match r.status {
                GetStatus::Found => {}
                GetStatus::NoMatchedMessage | GetStatus::OffsetTooSmall if r.next_offset > next => {
                    self.advance(g, key, r.next_offset);
                    continue;
                }
                _ => return,
            }
            for m in &r.messages {
                examined += 1;
                let Some(o) = Original::decode(&m.bytes) else {
                    self.advance(g, key, m.queue_offset + 1);
                    continue;
                };
                let origin = decode::original_topic(&o).to_owned();
                if origin == self.plan.topic {
                    if self.budget.exhausted() {
                        return;
                    }
                    if self.plan.filter.passes(decode::tag(&o)) {
                        self.grant(g, key, m.queue_offset, &o);
                    }
                } else if origin == key.0 {
                    tracing::debug!(group = %g.name, offset = m.queue_offset, "retry entry without RETRY_TOPIC; skipped");
                } else if parked >= cfg.max_parked_retries || self.aside_full(parked, &mut share) {
                    return;
                } else {
                    park(g, key, m.queue_offset, o.phys_offset, origin);
                    parked += 1;
                }
                self.advance(g, key, m.queue_offset + 1);
            }
            self.advance(g, key, r.next_offset);
        }
    }

    /// Whether the broker-wide bound on entries kept aside stops a group that keeps `parked`:
    /// when every book together is at the bound and this group holds at least its share, and
    /// for every group at twice the bound (groups below their share, arriving one after
    /// another, would otherwise add a share each for good). `share` is worked out once per
    /// scan: it takes the broker-wide groups lock, once per entry looked at under pressure.
    fn aside_full(&self, parked: usize, share: &mut Option<usize>) -> bool {
        let total = self.ctx.cfg.lease.max_parked_retries_total;
        let waiting = self.state.totals.waiting();
        waiting >= total.saturating_mul(2)
            || (waiting >= total
                && parked >= *share.get_or_insert_with(|| self.state.parked_share(total)))
    }

    fn advance(&self, g: &mut Group, key: &QueueKey, to: u64) {
        if let Some(c) = g.cursors.get_mut(key) {
            c.next = c.next.max(to);
        }
    }

    /// Leases one entry and adds its delivery.
    fn grant(&mut self, g: &mut Group, key: &QueueKey, offset: u64, o: &Original) {
        let cfg = &self.ctx.cfg.lease;
        let origin = decode::origin_in(o, &key.0);
        let generation = self.state.next_generation();
        let token = self.state.minter.token(generation);
        let receipt = Receipt {
            run: self.state.minter.run,
            generation,
            token,
            group: self.plan.group.clone(),
            topic: key.0.clone(),
            queue_id: key.1,
            offset,
        }
        .encode();
        g.grant(
            key,
            offset,
            o.phys_offset,
            origin,
            generation,
            token,
            self.now,
            self.plan.visibility,
            cfg.max_visibility,
        );
        let at = Position {
            queue_id: key.1,
            queue_offset: offset,
            store_host: self.ctx.store.store_host(),
            receipt: &receipt,
        };
        let delivery = decode::delivery(o, origin, at);
        // Charged as handed out: a compressed body counts inflated (stored sizes let one
        // receive of 32 small compressed records inflate to gigabytes).
        let size = delivery.body.len().max(1);
        self.out.push(delivery);
        self.budget.count -= 1;
        self.budget.bytes = self.budget.bytes.saturating_sub(size);
        tracing::trace!(group = %g.name, topic = %key.0, queue_id = key.1, offset, generation, "leased");
    }
}

/// Keeps a retry of another topic aside in the retry queue's cursor.
fn park(g: &mut Group, key: &QueueKey, offset: u64, phys: u64, origin: String) {
    g.put_open(
        key,
        offset,
        Open {
            phys,
            origin,
            state: OpenState::Waiting,
            not_before: None,
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_star_or_missing_expression_takes_every_tag_and_a_list_only_its_tags() {
        assert!(TagFilter::parse(None).passes(None));
        assert!(TagFilter::parse(Some("*")).passes(Some("x")));
        let f = TagFilter::parse(Some("a || b"));
        assert!(f.passes(Some("a")) && f.passes(Some("b")));
        assert!(!f.passes(Some("c")) && !f.passes(None));
        assert!(f.passes_code(i64::from(java_hash("a"))));
        assert!(!f.passes_code(i64::from(java_hash("c"))));
    }
}
