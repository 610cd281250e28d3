//! Business state in a real database through sqlx. The same SQL runs on SQLite and
//! PostgreSQL (`$n` placeholders), so one macro implements [`Orders`] for both and the flow is
//! generic over the database.
//!
//! The rule that keeps payment and time-out consistent lives here, not in the broker: both
//! are a compare-and-set from `pending_payment`, so whichever commits first wins and the other
//! changes nothing. The timer cancel only spares a needless delivery.

use std::sync::{Arc, Mutex, PoisonError};

use anyhow::Context;
use futures::future::BoxFuture;
use futures::FutureExt;
use sluice_client::idempotent::{BoxError, DedupeBackend, TxHandler};
use sluice_client::ConsumedMessage;
use sqlx::{Pool, Postgres, Sqlite, Transaction};

/// Waiting for payment; the only status either side may leave.
pub const PENDING: &str = "pending_payment";
/// Paid in time.
pub const PAID: &str = "paid";
/// Cancelled by the time-out.
pub const CANCELLED: &str = "cancelled";

/// Event: the time-out cancelled an unpaid order.
pub const EV_CANCELLED: &str = "cancelled_unpaid";
/// Event: the time-out found the order paid and left it alone.
pub const EV_IGNORED_PAID: &str = "timeout_ignored_paid";
/// Event: the time-out found the order already cancelled.
pub const EV_IGNORED_CANCELLED: &str = "timeout_ignored_cancelled";
/// Event: a payment was accepted.
pub const EV_PAID: &str = "payment_accepted";
/// Event: a payment came too late and was refused (to be refunded).
pub const EV_REFUSED: &str = "payment_refused";

/// Tables are prefixed so the demo can share a PostgreSQL database with other tests; they are
/// dropped and recreated at every run.
const SCHEMA: &[&str] = &[
    "DROP TABLE IF EXISTS timeout_orders",
    "DROP TABLE IF EXISTS timeout_order_events",
    "CREATE TABLE timeout_orders (order_id VARCHAR(64) PRIMARY KEY, \
     status VARCHAR(32) NOT NULL, amount_cents BIGINT NOT NULL)",
    "CREATE TABLE timeout_order_events (order_id VARCHAR(64) NOT NULL, \
     event VARCHAR(64) NOT NULL)",
];

const INSERT_ORDER: &str =
    "INSERT INTO timeout_orders (order_id, status, amount_cents) VALUES ($1, $2, $3)";
/// The compare-and-set both sides use.
const MOVE: &str = "UPDATE timeout_orders SET status = $1 WHERE order_id = $2 AND status = $3";
const STATUS: &str = "SELECT status FROM timeout_orders WHERE order_id = $1";
const ALL_STATUSES: &str = "SELECT order_id, status FROM timeout_orders ORDER BY order_id";
const ADD_EVENT: &str = "INSERT INTO timeout_order_events (order_id, event) VALUES ($1, $2)";
const EVENT_COUNTS: &str = "SELECT order_id, event, COUNT(*) FROM timeout_order_events \
    GROUP BY order_id, event ORDER BY order_id, event";

/// (order id, event, how many times).
pub type EventCount = (String, String, i64);

/// What the flow needs from a database.
pub trait Orders: DedupeBackend {
    /// Creates fresh tables and runs the client's idempotency migration.
    fn setup(pool: &Pool<Self>) -> BoxFuture<'_, anyhow::Result<()>>;

    /// The order service: a new order waiting for payment.
    fn create<'a>(
        pool: &'a Pool<Self>,
        order_id: &'a str,
        amount_cents: i64,
    ) -> BoxFuture<'a, anyhow::Result<()>>;

    /// The payment service: marks the order paid if it still waits for payment, and records
    /// whether the payment was accepted or refused, in one transaction. True when accepted.
    fn pay<'a>(pool: &'a Pool<Self>, order_id: &'a str) -> BoxFuture<'a, anyhow::Result<bool>>;

    /// Every order and its status, by id.
    fn statuses(pool: &Pool<Self>) -> BoxFuture<'_, anyhow::Result<Vec<(String, String)>>>;

    /// How often each event happened to each order.
    fn events(pool: &Pool<Self>) -> BoxFuture<'_, anyhow::Result<Vec<EventCount>>>;

    /// The time-out consumer's handler, run inside the dedupe transaction.
    fn cancel_if_unpaid(decisions: Decisions) -> impl TxHandler<Self>;
}

/// What the time-out consumer decided per order, in delivery order, for the timeline. Pushed
/// when the handler decides, before its transaction commits, so a rolled-back attempt may
/// leave an entry: the database, not this list, is what the flow checks.
#[derive(Clone, Default)]
pub struct Decisions(Arc<Mutex<Vec<(String, &'static str)>>>);

impl Decisions {
    fn push(&self, order_id: &str, event: &'static str) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((order_id.to_owned(), event));
    }

    /// The latest decision about `order_id`.
    pub fn last_for(&self, order_id: &str) -> Option<&'static str> {
        let all = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        all.iter()
            .rev()
            .find(|(o, _)| o == order_id)
            .map(|(_, e)| *e)
    }
}

/// The order a CancelIfUnpaid message is about: its first key (also its body).
pub fn order_of(msg: &ConsumedMessage) -> Result<String, BoxError> {
    msg.keys()
        .next()
        .map(str::to_owned)
        .ok_or_else(|| BoxError::from(format!("message {} has no order key", msg.msg_id())))
}

/// The consumer's rule for an order it did not move: paid → nothing to do; already
/// cancelled → nothing to do; unknown → an error, so the message is retried rather than lost.
fn ignored_event(status: Option<&str>, order_id: &str) -> Result<&'static str, BoxError> {
    match status {
        Some(PAID) => Ok(EV_IGNORED_PAID),
        Some(CANCELLED) => Ok(EV_IGNORED_CANCELLED),
        other => Err(format!("order {order_id} in unexpected state {other:?}").into()),
    }
}

macro_rules! orders {
    ($db:ty) => {
        impl Orders for $db {
            fn setup(pool: &Pool<Self>) -> BoxFuture<'_, anyhow::Result<()>> {
                async move {
                    for sql in SCHEMA {
                        sqlx::query(sql).execute(pool).await.context("schema")?;
                    }
                    sluice_client::idempotent::migrate(pool)
                        .await
                        .context("idempotency migration")?;
                    Ok(())
                }
                .boxed()
            }

            fn create<'a>(
                pool: &'a Pool<Self>,
                order_id: &'a str,
                amount_cents: i64,
            ) -> BoxFuture<'a, anyhow::Result<()>> {
                async move {
                    sqlx::query(INSERT_ORDER)
                        .bind(order_id)
                        .bind(PENDING)
                        .bind(amount_cents)
                        .execute(pool)
                        .await?;
                    Ok(())
                }
                .boxed()
            }

            fn pay<'a>(
                pool: &'a Pool<Self>,
                order_id: &'a str,
            ) -> BoxFuture<'a, anyhow::Result<bool>> {
                async move {
                    let mut tx = pool.begin().await?;
                    let moved = sqlx::query(MOVE)
                        .bind(PAID)
                        .bind(order_id)
                        .bind(PENDING)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected()
                        == 1;
                    let event = if moved { EV_PAID } else { EV_REFUSED };
                    sqlx::query(ADD_EVENT)
                        .bind(order_id)
                        .bind(event)
                        .execute(&mut *tx)
                        .await?;
                    tx.commit().await?;
                    Ok(moved)
                }
                .boxed()
            }

            fn statuses(pool: &Pool<Self>) -> BoxFuture<'_, anyhow::Result<Vec<(String, String)>>> {
                async move {
                    Ok(sqlx::query_as::<_, (String, String)>(ALL_STATUSES)
                        .fetch_all(pool)
                        .await?)
                }
                .boxed()
            }

            fn events(pool: &Pool<Self>) -> BoxFuture<'_, anyhow::Result<Vec<EventCount>>> {
                async move {
                    Ok(sqlx::query_as::<_, EventCount>(EVENT_COUNTS)
                        .fetch_all(pool)
                        .await?)
                }
                .boxed()
            }

            fn cancel_if_unpaid(decisions: Decisions) -> impl TxHandler<Self> {
                CancelIfUnpaid(decisions)
            }
        }

        impl TxHandler<$db> for CancelIfUnpaid {
            fn handle<'a>(
                &'a self,
                msg: &'a ConsumedMessage,
                tx: &'a mut Transaction<'static, $db>,
            ) -> BoxFuture<'a, Result<(), BoxError>> {
                async move {
                    let order_id = order_of(msg)?;
                    let moved = sqlx::query(MOVE)
                        .bind(CANCELLED)
                        .bind(&order_id)
                        .bind(PENDING)
                        .execute(&mut **tx)
                        .await?
                        .rows_affected()
                        == 1;
                    let event = if moved {
                        EV_CANCELLED
                    } else {
                        let status = sqlx::query_scalar::<_, String>(STATUS)
                            .bind(&order_id)
                            .fetch_optional(&mut **tx)
                            .await?;
                        ignored_event(status.as_deref(), &order_id)?
                    };
                    sqlx::query(ADD_EVENT)
                        .bind(&order_id)
                        .bind(event)
                        .execute(&mut **tx)
                        .await?;
                    self.0.push(&order_id, event);
                    Ok(())
                }
                .boxed()
            }
        }
    };
}

/// The time-out consumer's handler: cancels the order if it still waits for payment and
/// records what it decided, in the transaction that also holds the dedupe row.
pub struct CancelIfUnpaid(Decisions);

orders!(Sqlite);
orders!(Postgres);
