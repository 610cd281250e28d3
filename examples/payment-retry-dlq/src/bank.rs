//! The flaky downstream: an in-process fake bank whose failures are deterministic, so every
//! run tells the same story.
//!
//! - Accounts named `flaky-N` time out on their first N attempts, then succeed (a transient
//!   fault: retries with back-off fix it).
//! - `CHF` payments fail with "currency not supported" until [`Bank::fix_chf`] (a poison
//!   class that a later deploy fixes: those are replayed from the DLQ).
//! - The account `closed` always fails (a poison class nobody can fix: it stays in the DLQ).
//!
//! The bank counts attempts and successful charges per payment *without* deduplicating, so a
//! double charge by the consumer would show in [`Bank::charges`]. (A real bank call would
//! also carry the payment id as its idempotency key.)

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::payment::Payment;

/// What the bank has seen.
#[derive(Default)]
struct State {
    attempts: BTreeMap<String, u32>,
    charges: BTreeMap<String, u32>,
    chf_fixed: bool,
}

/// The fake bank, shared by the consumer (clone the `Arc`) and the flow.
#[derive(Default)]
pub struct Bank {
    state: Mutex<State>,
}

impl Bank {
    /// Charges `p`, or says why not.
    pub fn charge(&self, p: &Payment) -> Result<(), String> {
        let mut s = self.lock();
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

    /// Successful charges per payment id.
    pub fn charges(&self) -> BTreeMap<String, u32> {
        self.lock().charges.clone()
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

    #[test]
    fn charges_are_counted_not_deduplicated() {
        let bank = Bank::default();
        let p = Payment::new("p", "acct", "EUR", 1);
        assert!(bank.charge(&p).is_ok());
        assert!(bank.charge(&p).is_ok());
        assert_eq!(bank.charges().get("p"), Some(&2));
    }
}
