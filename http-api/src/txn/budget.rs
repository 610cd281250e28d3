//! The byte budget of checks waiting in the facade: the webhook queue and the queues of groups
//! polling for their checks hold whole checks (body and properties, up to `max_message_bytes`
//! each), so their counts alone bounded memory only at counts times the largest message
//! (1 024 queued webhook checks and 1 000 for each of 1 024 polling groups). Every queued
//! check holds its size here until it is handed out or its call ends.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use sluice_txn::PendingCheck;

/// Bytes held by queued checks, at most `max` (one check is always let in when nothing is
/// held, so a check larger than the budget still gets through alone).
#[derive(Debug)]
pub(super) struct ByteBudget {
    used: AtomicUsize,
    max: usize,
}

/// A check's share of the budget; given back when dropped.
#[derive(Debug)]
pub(super) struct Held {
    budget: Arc<ByteBudget>,
    bytes: usize,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

impl Held {
    /// Makes this share `check`'s size, in one step: a newer check replacing a queued one
    /// never gives the older one's room away first (another queue could take it, and the
    /// older check was then lost with the newer one refused). Judged as if the older one were
    /// gone; on refusal nothing changes.
    pub(super) fn resize_for(&mut self, check: &PendingCheck) -> Result<(), String> {
        let bytes = size_of_check(check);
        self.budget.swap(self.bytes, bytes)?;
        self.bytes = bytes;
        Ok(())
    }
}

impl ByteBudget {
    pub(super) fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            used: AtomicUsize::new(0),
            max,
        })
    }

    /// Holds room for `check`, or says why there is none.
    pub(super) fn hold(self: &Arc<Self>, check: &PendingCheck) -> Result<Held, String> {
        let bytes = size_of_check(check);
        self.swap(0, bytes)?;
        Ok(Held {
            budget: Arc::clone(self),
            bytes,
        })
    }

    /// Replaces a share of `from` bytes with one of `to`, atomically, judged as if the old
    /// share were gone (one share is always let in when nothing else is held).
    fn swap(&self, from: usize, to: usize) -> Result<(), String> {
        let mut used = self.used.load(Ordering::Acquire);
        loop {
            let others = used - from;
            if others > 0 && others.saturating_add(to) > self.max {
                return Err(format!(
                    "queued checks hold {used} bytes, at most {} (check_queue_bytes)",
                    self.max
                ));
            }
            match self.used.compare_exchange_weak(
                used,
                others + to,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Ok(()),
                Err(now) => used = now,
            }
        }
    }

    /// Bytes held now.
    #[cfg(test)]
    pub(super) fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }
}

/// What a queued check keeps in memory, near enough: its body, its properties and strings,
/// and a fixed part for the rest.
fn size_of_check(c: &PendingCheck) -> usize {
    let props: usize = c
        .properties
        .iter()
        .map(|(k, v)| k.len() + v.len() + 48)
        .sum();
    let strings = c.producer_group.len()
        + c.transaction_id.len()
        + c.topic.len()
        + c.keys.len()
        + c.tags.len()
        + c.url.as_ref().map_or(0, String::len);
    256 + c.body.len() + props + strings
}

/// A check of transaction `half_offset` with a body of `body` bytes (tests).
#[cfg(test)]
pub(super) fn test_check(half_offset: u64, body: usize) -> PendingCheck {
    PendingCheck {
        producer_group: "pg".into(),
        transaction_id: "t".into(),
        half_offset,
        commit_log_offset: 0,
        topic: "T".into(),
        queue_id: 0,
        keys: String::new(),
        tags: String::new(),
        body: bytes::Bytes::from(vec![0u8; body]),
        properties: Vec::new(),
        born_ms: 0,
        stored_ms: 0,
        check_count: 1,
        url: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(body: usize) -> PendingCheck {
        test_check(0, body)
    }

    #[test]
    fn a_replacement_is_judged_without_its_older_self_and_changes_nothing_when_refused() {
        let budget = ByteBudget::new(10_000);
        let mut older = budget.hold(&check(4_000)).unwrap();
        let other = budget.hold(&check(4_000)).unwrap();
        let before = budget.used();
        assert!(older.resize_for(&check(7_000)).is_err());
        assert_eq!(
            budget.used(),
            before,
            "a refused replacement keeps the older share"
        );
        older.resize_for(&check(5_000)).unwrap();
        assert_eq!(budget.used(), before + 1_000);
        drop(other);
        older.resize_for(&check(9_000)).unwrap();
        drop(older);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn checks_are_refused_past_the_budget_and_let_in_again_once_one_is_handed_out() {
        let budget = ByteBudget::new(10_000);
        let first = budget.hold(&check(4_000)).unwrap();
        let second = budget.hold(&check(4_000)).unwrap();
        let why = budget.hold(&check(4_000)).unwrap_err();
        assert!(why.contains("check_queue_bytes"), "{why}");
        drop(first);
        let third = budget.hold(&check(4_000)).unwrap();
        drop((second, third));
        assert_eq!(budget.used(), 0, "every hold is given back");
    }

    #[test]
    fn a_check_larger_than_the_budget_still_gets_through_alone() {
        let budget = ByteBudget::new(1_000);
        let big = budget.hold(&check(50_000)).unwrap();
        assert!(budget.hold(&check(10)).is_err(), "nothing beside it");
        drop(big);
        assert!(budget.hold(&check(10)).is_ok());
    }
}
