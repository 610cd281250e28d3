//! The business data: orders and the `OrderCreated` event body.

use anyhow::{anyhow, Context};

/// One order; its `OrderCreated` event carries all of it, so consumers need no lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    /// Business id, also the message key.
    pub id: String,
    /// Who earns the loyalty points.
    pub customer: String,
    /// What is taken from stock.
    pub sku: String,
    /// How many units.
    pub qty: i64,
    /// Loyalty points earned.
    pub points: i64,
}

impl Order {
    /// An order (a constructor keeps the demo's order list short).
    pub fn new(id: &str, customer: &str, sku: &str, qty: i64, points: i64) -> Self {
        Self {
            id: id.into(),
            customer: customer.into(),
            sku: sku.into(),
            qty,
            points,
        }
    }

    /// The event body: comma-separated, readable in broker tools.
    pub fn encode(&self) -> String {
        format!(
            "{},{},{},{},{}",
            self.id, self.customer, self.sku, self.qty, self.points
        )
    }

    /// Parses an event body. Bodies come from the network, so malformed ones are errors
    /// (the consumer retries and eventually dead-letters them), never panics.
    pub fn decode(body: &[u8]) -> anyhow::Result<Self> {
        let text = std::str::from_utf8(body).context("body is not UTF-8")?;
        let parts: Vec<&str> = text.split(',').collect();
        let [id, customer, sku, qty, points] = parts.as_slice() else {
            return Err(anyhow!("expected 5 fields in {text:?}"));
        };
        Ok(Self {
            id: (*id).into(),
            customer: (*customer).into(),
            sku: (*sku).into(),
            qty: qty.parse().with_context(|| format!("qty in {text:?}"))?,
            points: points
                .parse()
                .with_context(|| format!("points in {text:?}"))?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_garbage() {
        let o = Order::new("order-1", "alice", "KB-01", 2, 20);
        assert_eq!(Order::decode(o.encode().as_bytes()).ok(), Some(o));
        assert!(Order::decode(b"order-1,alice").is_err());
        assert!(Order::decode(b"a,b,c,x,1").is_err());
    }
}
