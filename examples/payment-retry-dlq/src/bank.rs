//! The flaky downstream: an in-process fake bank whose failures are deterministic, so every
//! run tells the same story.
//!
//! - Accounts named `flaky-N` time out on their first N attempts, then succeed (a transient
//!   fault: retries with back-off fix it).
//! - `CHF` payments fail with "currency not supported" until [`Bank::fix_chf`] (a poison
//!   class that a later deploy fixes: those are replayed from the DLQ).
//! - The account `closed` always fails (a poison class nobody can fix: it stays in the DLQ).
//!
//! The payment id is the bank's idempotency key, as real payment APIs take one: a call for a
//! payment already charged answers success without moving money again, and is counted in
//! [`Bank::repeats`]. The consumer's own dedupe (the ledger row and the dedupe row in one
//! database transaction) keeps repeats at zero; the key covers what a database cannot: the
//! bank call happens before the ledger's commit, and a commit that fails after it (a dropped
//! connection, a crash) sends the message back for another try.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::payment::Payment;

/// What the bank has seen.
#[derive(Default)]
struct State {
    attempts: BTreeMap<String, u32>,
    charges: BTreeMap<String, u32>,
    repeats: BTreeMap<String, u32>,
    chf_fixed: bool,
}

/// The fake bank, shared by the consumer (clone the `Arc`) and the flow.
#[derive(Default)]
pub struct Bank {
    state: Mutex<State>,
}

impl Bank {
    /// Charges `p` once per payment id (the idempotency key), or says why not.
    pub fn charge(&self, p: &Payment) -> Result<(), String> {
        let mut s = self.lock();
        if s.charges.contains_key(&p.id) {
            *s.repeats.entry(p.id.clone()).or_insert(0) += 1;
            return Ok(());
        }
        let attempt = {
            let n = s.attempts.entry(p.id.clone()).or_insert(0);
            *n += 1;
            *n
        };
        verdict(p, attempt, s.chf_fixed)?;
        *s.charges.entry(p.id.clone()).or_insert(0) += 1;
        Ok(())
    }

    /// The bank's deploy: CHF payments work from now on.
    pub fn fix_chf(&self) {
        self.lock().chf_fixed = true;
    }

    /// Attempts per payment id.
    pub fn attempts(&self) -> BTreeMap<String, u32> {
        self.lock().attempts.clone()
    }

    /// Successful charges per payment id (money moved: at most 1 each).
    pub fn charges(&self) -> BTreeMap<String, u32> {
        self.lock().charges.clone()
    }

    /// Calls for payments already charged, answered from the idempotency key.
    pub fn repeats(&self) -> BTreeMap<String, u32> {
        self.lock().repeats.clone()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The bank's rules, pure: whether attempt number `attempt` (1-based) of `p` succeeds.
fn verdict(p: &Payment, attempt: u32, chf_fixed: bool) -> Result<(), String> {
    if p.account == "closed" {
        return Err("account closed".into());
    }
    if p.currency == "CHF" && !chf_fixed {
        return Err("currency CHF not supported".into());
    }
    let transient = p
        .account
        .strip_prefix("flaky-")
        .and_then(|n| n.parse::<u32>().ok())
        .unwrap_or(0);
    if attempt <= transient {
        return Err(format!("gateway timeout (attempt {attempt})"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flaky_accounts_fail_their_first_attempts_then_succeed() {
        let p = Payment::new("p", "flaky-2", "EUR", 1);
        assert!(verdict(&p, 1, false).is_err());
        assert!(verdict(&p, 2, false).is_err());
        assert!(verdict(&p, 3, false).is_ok());
    }

    #[test]
    fn chf_fails_until_fixed_and_closed_always_fails() {
        let chf = Payment::new("p", "acct", "CHF", 1);
        assert!(verdict(&chf, 9, false).is_err());
        assert!(verdict(&chf, 9, true).is_ok());
        let closed = Payment::new("p", "closed", "EUR", 1);
        assert!(verdict(&closed, 9, true).is_err());
    }

    /// The consumer charged the bank before its ledger commit; when that commit failed the
    /// message came back and the bank charged again.
    #[test]
    fn a_second_call_for_a_charged_payment_moves_no_money() {
        let bank = Bank::default();
        let p = Payment::new("p", "acct", "EUR", 1);
        assert!(bank.charge(&p).is_ok());
        assert!(bank.charge(&p).is_ok());
        assert_eq!(bank.charges().get("p"), Some(&1));
        assert_eq!(bank.repeats().get("p"), Some(&1));
    }
}
