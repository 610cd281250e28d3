//! Business state in a real database through sqlx: one row per charged payment, written in
//! the transaction that also holds the dedupe row (the client's [`Idempotent`] helper keyed by
//! payment id), so a retry, a replay or a resubmission never records, or charges, twice. The
//! same SQL runs on SQLite and PostgreSQL, so one macro implements [`Ledger`] for both.
//!
//! [`Idempotent`]: sluice_client::Idempotent

use std::sync::Arc;

use anyhow::Context;
use futures::future::BoxFuture;
use futures::FutureExt;
use sluice_client::idempotent::{BoxError, DedupeBackend, TxHandler};
use sluice_client::ConsumedMessage;
use sqlx::{Pool, Postgres, Sqlite, Transaction};

use crate::bank::Bank;
use crate::payment::Payment;

/// Set by the broker on a copy written back by a DLQ replay.
const REPLAYED_FROM: &str = "SLUICE_REPLAYED_FROM";

/// Tables are prefixed so the demo can share a PostgreSQL database with other tests; they are
/// dropped and recreated at every run. The primary key is a second line of defence: a double
/// charge would fail the transaction rather than add a row.
const SCHEMA: &[&str] = &[
    "DROP TABLE IF EXISTS payretry_charges",
    "CREATE TABLE payretry_charges (payment_id VARCHAR(64) PRIMARY KEY, \
     amount_cents BIGINT NOT NULL, currency VARCHAR(8) NOT NULL, \
     delivery BIGINT NOT NULL, via_replay BIGINT NOT NULL)",
];

const INSERT_CHARGE: &str = "INSERT INTO payretry_charges \
    (payment_id, amount_cents, currency, delivery, via_replay) VALUES ($1, $2, $3, $4, $5)";
const CHARGES: &str = "SELECT payment_id, delivery, via_replay FROM payretry_charges \
    ORDER BY payment_id";

/// A charged payment as the database has it: id, the delivery that succeeded (1 = first),
/// and whether it came from a DLQ replay.
pub type ChargeRow = (String, i64, bool);

/// What the flow needs from a database.
pub trait Ledger: DedupeBackend {
    /// Creates fresh tables and runs the client's idempotency migration.
    fn setup(pool: &Pool<Self>) -> BoxFuture<'_, anyhow::Result<()>>;

    /// Every charged payment, by id.
    fn charges(pool: &Pool<Self>) -> BoxFuture<'_, anyhow::Result<Vec<ChargeRow>>>;

    /// The consumer's handler: charge at the bank, then record the charge.
    fn charge_handler(bank: Arc<Bank>) -> impl TxHandler<Self>;
}

/// Charges a payment at the bank and records it, inside the dedupe transaction. A bank
/// failure is an error: the transaction (and its dedupe row) rolls back and the broker
/// retries the message after its back-off. The bank call cannot be part of the database
/// transaction: when the ledger insert or the commit fails after it, the retry calls the bank
/// again, and the payment id as the bank's idempotency key makes that call move no money.
pub struct Charge(Arc<Bank>);

/// The delivery number of `msg` (1 for the first) and whether it is a replayed copy.
fn delivery_of(msg: &ConsumedMessage) -> (i64, bool) {
    (
        i64::from(msg.reconsume_times()) + 1,
        msg.property(REPLAYED_FROM).is_some(),
    )
}

macro_rules! ledger {
    ($db:ty) => {
        impl Ledger for $db {
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

            fn charges(pool: &Pool<Self>) -> BoxFuture<'_, anyhow::Result<Vec<ChargeRow>>> {
                async move {
                    let rows = sqlx::query_as::<_, (String, i64, i64)>(CHARGES)
                        .fetch_all(pool)
                        .await?;
                    Ok(rows.into_iter().map(|(id, d, r)| (id, d, r != 0)).collect())
                }
                .boxed()
            }

            fn charge_handler(bank: Arc<Bank>) -> impl TxHandler<Self> {
                Charge(bank)
            }
        }

        impl TxHandler<$db> for Charge {
            fn handle<'a>(
                &'a self,
                msg: &'a ConsumedMessage,
                tx: &'a mut Transaction<'static, $db>,
            ) -> BoxFuture<'a, Result<(), BoxError>> {
                async move {
                    let p = Payment::decode(msg.body()).map_err(BoxError::from)?;
                    self.0.charge(&p)?;
                    let (delivery, replayed) = delivery_of(msg);
                    sqlx::query(INSERT_CHARGE)
                        .bind(&p.id)
                        .bind(p.amount_cents)
                        .bind(&p.currency)
                        .bind(delivery)
                        .bind(i64::from(replayed))
                        .execute(&mut **tx)
                        .await?;
                    Ok(())
                }
                .boxed()
            }
        }
    };
}

ledger!(Sqlite);
ledger!(Postgres);
