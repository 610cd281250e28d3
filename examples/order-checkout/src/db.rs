//! Business state in a real database through sqlx. The same SQL runs on SQLite and
//! PostgreSQL (`$n` placeholders, `ON CONFLICT`), so one macro implements [`Shop`] for both and
//! the flow itself is generic over the database.

use anyhow::{ensure, Context};
use futures::future::BoxFuture;
use futures::FutureExt;
use sluice_client::idempotent::{handler_fn, BoxError, DedupeBackend, TxHandler};
use sluice_client::ConsumedMessage;
use sqlx::{Pool, Postgres, Sqlite, Transaction};

use crate::order::Order;

/// Tables are prefixed so the demo can share a PostgreSQL database with other tests; they are
/// dropped and recreated at every run, so each run starts from the same stock.
const SCHEMA: &[&str] = &[
    "DROP TABLE IF EXISTS checkout_orders",
    "DROP TABLE IF EXISTS checkout_stock",
    "DROP TABLE IF EXISTS checkout_points",
    "CREATE TABLE checkout_orders (order_id VARCHAR(64) PRIMARY KEY, \
     tx_id VARCHAR(128) NOT NULL UNIQUE, customer VARCHAR(64) NOT NULL, \
     sku VARCHAR(64) NOT NULL, qty BIGINT NOT NULL, points BIGINT NOT NULL)",
    "CREATE TABLE checkout_stock (sku VARCHAR(64) PRIMARY KEY, qty BIGINT NOT NULL)",
    "CREATE TABLE checkout_points (customer VARCHAR(64) PRIMARY KEY, points BIGINT NOT NULL)",
];

const INSERT_ORDER: &str = "INSERT INTO checkout_orders \
    (order_id, tx_id, customer, sku, qty, points) VALUES ($1, $2, $3, $4, $5, $6)";
const FIND_ORDER: &str = "SELECT order_id FROM checkout_orders WHERE tx_id = $1";
const SEED_STOCK: &str = "INSERT INTO checkout_stock (sku, qty) VALUES ($1, $2)";
const TAKE_STOCK: &str = "UPDATE checkout_stock SET qty = qty - $1 WHERE sku = $2";
const ADD_POINTS: &str = "INSERT INTO checkout_points (customer, points) VALUES ($1, $2) \
    ON CONFLICT (customer) DO UPDATE SET points = checkout_points.points + excluded.points";
const STOCK: &str = "SELECT qty FROM checkout_stock WHERE sku = $1";
const POINTS: &str = "SELECT points FROM checkout_points WHERE customer = $1";

/// What the flow needs from a database: schema, the order service's writes and lookups, the
/// two consumers' handlers, and the final numbers.
pub trait Shop: DedupeBackend {
    /// Creates fresh business tables, seeds `stock`, and runs the client's idempotency
    /// migration (`sluice_processed_messages`).
    fn setup<'a>(
        pool: &'a Pool<Self>,
        stock: &'a [(&'a str, i64)],
    ) -> BoxFuture<'a, anyhow::Result<()>>;

    /// The order service's local transaction: the order row with the half message's
    /// transaction id, committed in one database transaction.
    fn insert_order<'a>(
        pool: &'a Pool<Self>,
        order: &'a Order,
        tx_id: &'a str,
    ) -> BoxFuture<'a, anyhow::Result<()>>;

    /// The checker's question: which order (if any) did transaction `tx_id` commit?
    fn order_for_tx<'a>(
        pool: &'a Pool<Self>,
        tx_id: &'a str,
    ) -> BoxFuture<'a, anyhow::Result<Option<String>>>;

    /// Units of `sku` left.
    fn stock<'a>(pool: &'a Pool<Self>, sku: &'a str) -> BoxFuture<'a, anyhow::Result<i64>>;

    /// Points of `customer` (0 when none yet).
    fn points<'a>(pool: &'a Pool<Self>, customer: &'a str) -> BoxFuture<'a, anyhow::Result<i64>>;

    /// Inventory: takes the ordered units from stock inside the dedupe transaction.
    fn inventory_handler() -> impl TxHandler<Self>;

    /// Loyalty: credits the order's points inside the dedupe transaction.
    fn loyalty_handler() -> impl TxHandler<Self>;
}

macro_rules! shop {
    ($db:ty) => {
        impl Shop for $db {
            fn setup<'a>(
                pool: &'a Pool<Self>,
                stock: &'a [(&'a str, i64)],
            ) -> BoxFuture<'a, anyhow::Result<()>> {
                async move {
                    for sql in SCHEMA {
                        sqlx::query(sql).execute(pool).await.context("schema")?;
                    }
                    for (sku, qty) in stock {
                        sqlx::query(SEED_STOCK)
                            .bind(*sku)
                            .bind(*qty)
                            .execute(pool)
                            .await?;
                    }
                    sluice_client::idempotent::migrate(pool)
                        .await
                        .context("idempotency migration")?;
                    Ok(())
                }
                .boxed()
            }

            fn insert_order<'a>(
                pool: &'a Pool<Self>,
                o: &'a Order,
                tx_id: &'a str,
            ) -> BoxFuture<'a, anyhow::Result<()>> {
                async move {
                    let mut tx = pool.begin().await?;
                    sqlx::query(INSERT_ORDER)
                        .bind(&o.id)
                        .bind(tx_id)
                        .bind(&o.customer)
                        .bind(&o.sku)
                        .bind(o.qty)
                        .bind(o.points)
                        .execute(&mut *tx)
                        .await?;
                    tx.commit().await?;
                    Ok(())
                }
                .boxed()
            }

            fn order_for_tx<'a>(
                pool: &'a Pool<Self>,
                tx_id: &'a str,
            ) -> BoxFuture<'a, anyhow::Result<Option<String>>> {
                async move {
                    Ok(sqlx::query_scalar::<_, String>(FIND_ORDER)
                        .bind(tx_id)
                        .fetch_optional(pool)
                        .await?)
                }
                .boxed()
            }

            fn stock<'a>(pool: &'a Pool<Self>, sku: &'a str) -> BoxFuture<'a, anyhow::Result<i64>> {
                async move {
                    Ok(sqlx::query_scalar::<_, i64>(STOCK)
                        .bind(sku)
                        .fetch_one(pool)
                        .await?)
                }
                .boxed()
            }

            fn points<'a>(
                pool: &'a Pool<Self>,
                customer: &'a str,
            ) -> BoxFuture<'a, anyhow::Result<i64>> {
                async move {
                    let p = sqlx::query_scalar::<_, i64>(POINTS)
                        .bind(customer)
                        .fetch_optional(pool)
                        .await?;
                    Ok(p.unwrap_or(0))
                }
                .boxed()
            }

            fn inventory_handler() -> impl TxHandler<Self> {
                handler_fn(
                    |msg: &ConsumedMessage, tx: &mut Transaction<'static, $db>| {
                        async move {
                            let o = Order::decode(msg.body()).map_err(BoxError::from)?;
                            let done = sqlx::query(TAKE_STOCK)
                                .bind(o.qty)
                                .bind(&o.sku)
                                .execute(&mut **tx)
                                .await?;
                            ensure_one(done.rows_affected(), &o.sku)?;
                            Ok(())
                        }
                        .boxed()
                    },
                )
            }

            fn loyalty_handler() -> impl TxHandler<Self> {
                handler_fn(
                    |msg: &ConsumedMessage, tx: &mut Transaction<'static, $db>| {
                        async move {
                            let o = Order::decode(msg.body()).map_err(BoxError::from)?;
                            sqlx::query(ADD_POINTS)
                                .bind(&o.customer)
                                .bind(o.points)
                                .execute(&mut **tx)
                                .await?;
                            Ok(())
                        }
                        .boxed()
                    },
                )
            }
        }
    };
}

shop!(Sqlite);
shop!(Postgres);

/// An unknown SKU must fail the message (rolled back, retried) rather than be acknowledged
/// with no stock change.
fn ensure_one(rows: u64, sku: &str) -> Result<(), BoxError> {
    let check = || -> anyhow::Result<()> {
        ensure!(rows == 1, "unknown sku {sku}");
        Ok(())
    };
    check().map_err(BoxError::from)
}
