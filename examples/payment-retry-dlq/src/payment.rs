//! The business data: a payment and its message body.

use anyhow::{anyhow, Context};

/// One payment; its message carries all of it, so the consumer needs no lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payment {
    /// Business id: the message key, the dedupe key and the bank's reference.
    pub id: String,
    /// The account charged.
    pub account: String,
    /// ISO currency; also the message tag, so an operator can select by it.
    pub currency: String,
    /// Amount in minor units.
    pub amount_cents: i64,
}

impl Payment {
    /// A payment (a constructor keeps the demo's list short).
    pub fn new(id: &str, account: &str, currency: &str, amount_cents: i64) -> Self {
        Self {
            id: id.into(),
            account: account.into(),
            currency: currency.into(),
            amount_cents,
        }
    }

    /// The message body: comma-separated, readable in the DLQ listing.
    pub fn encode(&self) -> String {
        format!(
            "{},{},{},{}",
            self.id, self.account, self.currency, self.amount_cents
        )
    }

    /// Parses a body. Bodies come from the network, so malformed ones are errors (retried,
    /// then dead-lettered), never panics.
    pub fn decode(body: &[u8]) -> anyhow::Result<Self> {
        let text = std::str::from_utf8(body).context("body is not UTF-8")?;
        let parts: Vec<&str> = text.split(',').collect();
        let [id, account, currency, amount] = parts.as_slice() else {
            return Err(anyhow!("expected 4 fields in {text:?}"));
        };
        // What the ledger's columns hold (VARCHAR(64), VARCHAR(8)): checked here, so a bad
        // payment is refused before the bank is called, on SQLite (which does not enforce
        // lengths) and PostgreSQL alike.
        if id.is_empty() || id.len() > 64 {
            return Err(anyhow!("payment id of {} bytes in {text:?}", id.len()));
        }
        // The id is the message's key, and keys are separated by spaces.
        if id.contains(char::is_whitespace) {
            return Err(anyhow!("payment id {id:?} holds whitespace"));
        }
        if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(anyhow!("currency {currency:?} is not an ISO 4217 code"));
        }
        Ok(Self::new(
            id,
            account,
            currency,
            amount
                .parse()
                .with_context(|| format!("amount in {text:?}"))?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_garbage() {
        let p = Payment::new("pay-1", "acct-7", "EUR", 1250);
        assert_eq!(Payment::decode(p.encode().as_bytes()).ok(), Some(p));
        assert!(Payment::decode(b"pay-1,acct").is_err());
        assert!(Payment::decode(b"pay-1,a,EUR,x").is_err());
        // Would not fit the ledger's columns (PostgreSQL refused the insert after the bank
        // had charged).
        assert!(Payment::decode(b"pay-1,a,EURO-LONG,5").is_err());
        assert!(Payment::decode(format!("{},a,EUR,5", "p".repeat(65)).as_bytes()).is_err());
        assert!(Payment::decode(b"INV 1001,a,EUR,5").is_err());
    }
}
