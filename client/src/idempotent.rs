//! Idempotent consumption: [`Idempotent`] runs a handler inside a database transaction that
//! also records the message's dedupe key in `sluice_processed_messages`. The key is inserted
//! first; if it is already there (a redelivery, a producer retry, a rebalance duplicate), the
//! transaction is rolled back and the message acknowledged without running the handler, so
//! nothing is written twice. SQLite and PostgreSQL are supported through
//! [`DedupeBackend`]; the table comes from [`migrate`] (or [`MIGRATION_SQL`] in the
//! application's own migrations).
//!
//! On SQLite the transaction holds the database's one write lock from the claim to the
//! commit, so handlers run one at a time there whatever the consumer's concurrency; keep slow
//! calls (a remote service) short or outside the handler. A transaction refused for
//! contention (SQLite busy, PostgreSQL serialization failure or deadlock) is run again a few
//! times before the message is retried ([`Idempotent::process`]).
//!
//! The key defaults to the message's `UNIQ_KEY` ([`DedupeKey::UniqKey`]), which producers set
//! once and which survives retries and dead-lettering; a business key can be chosen instead.
//!
//! A `UNIQ_KEY` is unique for about a month only: its time field counts milliseconds since the
//! start of the month (RocketMQ's layout), so a producer process running for months repeats
//! keys, a 16-bit counter apart. A `UNIQ_KEY` claim therefore counts as a duplicate for
//! [`UNIQ_KEY_WINDOW`] (7 days, [`Idempotent::with_uniq_key_window`]); an older claim of the
//! same key is a new message and is claimed again. Redeliveries and producer retries come
//! within hours. A deliberate re-send under a fixed `UNIQ_KEY` is therefore deduplicated only
//! within the window too; work that may be re-sent later needs a business key. Business keys
//! are claimed for good, until [`purge_claims`] removes old claims (the table keeps a row per
//! message processed until then).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::FutureExt;
use sqlx::{Pool, Postgres, Sqlite, Transaction};

use sluice_protocol::message::keys::{ORIGIN_MESSAGE_ID, UNIQ_KEY};

use crate::consumer::{ConsumeResult, MessageHandler};
use crate::message::ConsumedMessage;
use crate::producer::send::now_ms;

/// The SQL of the processed-messages migration, for projects that run migrations their own
/// way (copy it into your migrations folder instead of calling [`migrate`]).
pub const MIGRATION_SQL: &str =
    include_str!("../migrations/20240601000000_sluice_processed_messages.sql");

/// The insert that claims a dedupe key; `ON CONFLICT DO NOTHING` (SQLite ≥ 3.24, PostgreSQL
/// ≥ 9.5) turns a duplicate into zero affected rows, and on PostgreSQL makes a concurrent
/// duplicate wait for the first transaction's outcome instead of failing.
/// A claim older than `$6` (ms) is stale: it is taken over, as a new message's (see the
/// module docs on `UNIQ_KEY` reuse).
const CLAIM_SQL: &str = "INSERT INTO sluice_processed_messages \
    (consumer_group, dedupe_key, topic, msg_id, processed_at_ms) VALUES ($1, $2, $3, $4, $5) \
    ON CONFLICT (consumer_group, dedupe_key) DO UPDATE SET topic = excluded.topic, \
    msg_id = excluded.msg_id, processed_at_ms = excluded.processed_at_ms \
    WHERE sluice_processed_messages.processed_at_ms < $6";

/// How long a `UNIQ_KEY` claim counts as a duplicate (see the module docs): well under the
/// month after which keys repeat, well over any redelivery or producer retry.
pub const UNIQ_KEY_WINDOW: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

/// Deletes a group's claims older than a time (see [`purge_claims`]).
const PURGE_SQL: &str = "DELETE FROM sluice_processed_messages \
    WHERE consumer_group = $1 AND processed_at_ms < $2";

/// Reads the claim back before commit (see [`Idempotent::process`]).
const CLAIMED_SQL: &str = "SELECT COUNT(*) FROM sluice_processed_messages \
    WHERE consumer_group = $1 AND dedupe_key = $2";

/// An error a handler returns; it rolls the transaction back and retries the message.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A database the helper can use. Implemented for [`Sqlite`] and [`Postgres`].
///
/// ```
/// fn uses<DB: sluice_client::idempotent::DedupeBackend>() {}
/// uses::<sqlx::Sqlite>();
/// uses::<sqlx::Postgres>();
/// ```
pub trait DedupeBackend: sqlx::Database + Sized {
    /// Inserts the claim row; returns the rows inserted (0 for a duplicate).
    fn claim<'c>(
        tx: &'c mut Transaction<'static, Self>,
        claim: &'c Claim,
    ) -> BoxFuture<'c, Result<u64, sqlx::Error>>;

    /// Counts the claim rows of `claim`'s key visible in `tx` (1 after a successful claim).
    fn claimed<'c>(
        tx: &'c mut Transaction<'static, Self>,
        claim: &'c Claim,
    ) -> BoxFuture<'c, Result<i64, sqlx::Error>>;

    /// Creates `sluice_processed_messages` if missing, leaving sqlx's migration table (the
    /// application's) alone.
    fn migrate(pool: &Pool<Self>) -> BoxFuture<'_, Result<(), sqlx::migrate::MigrateError>>;

    /// Deletes `consumer_group`'s claims stored before `before_ms`; returns how many.
    fn purge<'c>(
        pool: &'c Pool<Self>,
        consumer_group: &'c str,
        before_ms: i64,
    ) -> BoxFuture<'c, Result<u64, sqlx::Error>>;
}

/// The row that marks a message processed.
///
/// ```
/// use sluice_client::idempotent::Claim;
/// let c = Claim { consumer_group: "billing".into(), dedupe_key: "U1".into(), topic: "Orders".into(), msg_id: "U1".into(), stale_before_ms: i64::MIN };
/// assert_eq!(c.dedupe_key, "U1");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// Consumer group (two groups each process a message once).
    pub consumer_group: String,
    /// The dedupe key.
    pub dedupe_key: String,
    /// The message's topic.
    pub topic: String,
    /// The message's id.
    pub msg_id: String,
    /// An earlier claim of the key stored before this time (epoch ms) is stale and taken over;
    /// `i64::MIN`: never.
    pub stale_before_ms: i64,
}

/// Widths of the table's columns on PostgreSQL (`VARCHAR(255)`, `VARCHAR(128)` for `msg_id`),
/// which refuses longer values on every delivery (SQLite ignores widths).
const MAX_KEY_CHARS: usize = 255;
const MAX_MSG_ID_CHARS: usize = 128;

/// `value`, or when longer than `max` characters its SHA-256 as `sha256:<hex>` (71
/// characters): a business key built from a long topic and key, or a producer's own long
/// UNIQ_KEY, is still claimed once instead of failing every delivery into the DLQ.
fn fitted(value: String, max: usize) -> String {
    use sha2::{Digest, Sha256};
    use std::fmt::Write;
    if value.chars().count() <= max {
        return value;
    }
    let digest = Sha256::digest(value.as_bytes());
    let mut out = String::with_capacity(71);
    out.push_str("sha256:");
    for b in digest {
        let _ = write!(out, "{b:02x}");
    }
    out
}

macro_rules! backend {
    ($db:ty, $lock:expr) => {
        impl DedupeBackend for $db {
            fn claim<'c>(
                tx: &'c mut Transaction<'static, Self>,
                c: &'c Claim,
            ) -> BoxFuture<'c, Result<u64, sqlx::Error>> {
                async move {
                    let done = sqlx::query(CLAIM_SQL)
                        .bind(&c.consumer_group)
                        .bind(&c.dedupe_key)
                        .bind(&c.topic)
                        .bind(&c.msg_id)
                        .bind(now_ms())
                        .bind(c.stale_before_ms)
                        .execute(&mut **tx)
                        .await?;
                    Ok(done.rows_affected())
                }
                .boxed()
            }

            fn claimed<'c>(
                tx: &'c mut Transaction<'static, Self>,
                c: &'c Claim,
            ) -> BoxFuture<'c, Result<i64, sqlx::Error>> {
                sqlx::query_scalar(CLAIMED_SQL)
                    .bind(&c.consumer_group)
                    .bind(&c.dedupe_key)
                    .fetch_one(&mut **tx)
                    .boxed()
            }

            fn purge<'c>(
                pool: &'c Pool<Self>,
                consumer_group: &'c str,
                before_ms: i64,
            ) -> BoxFuture<'c, Result<u64, sqlx::Error>> {
                async move {
                    let done = sqlx::query(PURGE_SQL)
                        .bind(consumer_group)
                        .bind(before_ms)
                        .execute(pool)
                        .await?;
                    Ok(done.rows_affected())
                }
                .boxed()
            }

            fn migrate(
                pool: &Pool<Self>,
            ) -> BoxFuture<'_, Result<(), sqlx::migrate::MigrateError>> {
                async move {
                    let mut tx = pool.begin().await?;
                    if let Some(lock) = $lock {
                        sqlx::query(lock).execute(&mut *tx).await?;
                    }
                    // One statement (after comments), so a plain query runs it.
                    sqlx::query(MIGRATION_SQL).execute(&mut *tx).await?;
                    tx.commit().await?;
                    Ok(())
                }
                .boxed()
            }
        }
    };
}

/// PostgreSQL: serializes concurrent [`migrate`] calls (two consumers starting at once), since
/// concurrent `CREATE TABLE IF NOT EXISTS` of one table can fail there. Held until commit.
const PG_MIGRATE_LOCK: &str = "SELECT pg_advisory_xact_lock(7236828746011468915)";

backend!(Sqlite, None::<&str>);
backend!(Postgres, Some(PG_MIGRATE_LOCK));

/// Creates the processed-messages table ([`MIGRATION_SQL`], `CREATE TABLE IF NOT EXISTS`).
/// Safe to call at every start and beside the application's own sqlx migrations: the SQL
/// runs directly, not through sqlx's migrator, so nothing is recorded in `_sqlx_migrations`,
/// whose versions the application's migrator checks against its own folder. (Versions of this
/// crate before that change recorded version 20240601000000 there; delete that row if the
/// application's migrator reports it missing.)
///
/// ```no_run
/// # async fn demo() -> Result<(), sqlx::Error> {
/// let pool = sqlx::SqlitePool::connect("sqlite://app.db?mode=rwc").await?;
/// sluice_client::idempotent::migrate(&pool).await.expect("migration");
/// # Ok(()) }
/// ```
pub async fn migrate<DB: DedupeBackend>(pool: &Pool<DB>) -> Result<(), crate::ClientError> {
    DB::migrate(pool).await?;
    Ok(())
}

/// Deletes `consumer_group`'s claims older than `age`; returns how many. The helper never
/// deletes claims itself, so without this the table keeps a row per message processed, for
/// ever. Call it now and then (a daily job) with an age past which no delivery of an old
/// message can come any more:
///
/// - keyed by `UNIQ_KEY` (the default), [`UNIQ_KEY_WINDOW`] or more loses nothing, since
///   older claims count as new messages anyway;
/// - keyed by a business key, a claim deleted is forgotten: a message with that key arriving
///   later is processed again. Choose an age beyond any re-send of the same work.
///
/// ```no_run
/// # async fn demo(pool: sqlx::SqlitePool) -> Result<(), sluice_client::ClientError> {
/// use sluice_client::idempotent::{purge_claims, UNIQ_KEY_WINDOW};
/// let removed = purge_claims(&pool, "billing", UNIQ_KEY_WINDOW).await?;
/// # let _ = removed; Ok(()) }
/// ```
pub async fn purge_claims<DB: DedupeBackend>(
    pool: &Pool<DB>,
    consumer_group: &str,
    age: std::time::Duration,
) -> Result<u64, crate::ClientError> {
    let age_ms = i64::try_from(age.as_millis()).unwrap_or(i64::MAX);
    let before_ms = now_ms().saturating_sub(age_ms);
    Ok(DB::purge(pool, consumer_group, before_ms).await?)
}

/// Computes a dedupe key from a message (for [`DedupeKey::Custom`]).
///
/// ```
/// use std::sync::Arc;
/// use sluice_client::idempotent::{DedupeKey, KeyFn};
/// let by_body: KeyFn = Arc::new(|m| std::str::from_utf8(m.body()).ok().map(str::to_owned));
/// let _key = DedupeKey::Custom(by_body);
/// ```
pub type KeyFn = Arc<dyn Fn(&ConsumedMessage) -> Option<String> + Send + Sync>;

/// Which value identifies a message for deduplication.
///
/// ```
/// use sluice_client::idempotent::DedupeKey;
/// let by_order = DedupeKey::Property("orderId".into());
/// assert!(matches!(DedupeKey::default(), DedupeKey::UniqKey));
/// # let _ = by_order;
/// ```
#[derive(Clone, Default)]
pub enum DedupeKey {
    /// The producer's `UNIQ_KEY`. A message whose producer set none is known by its first
    /// stored copy's id: `ORIGIN_MESSAGE_ID` on retry and dead-letter copies, else its own
    /// offset id (the Sluice broker gives every message a `UNIQ_KEY`; others may not).
    #[default]
    UniqKey,
    /// The first business key (`KEYS`). The key names the *work*, not the message: two
    /// different messages with the same first key (an order's `created` and its later
    /// `paid`, or the same id on two subscribed topics) count as one, and the second is
    /// acknowledged as a duplicate without running the handler. Use it only when each key is
    /// sent once per group, or compose a key from what tells the messages apart with
    /// [`DedupeKey::Custom`] (e.g. topic, tag and key).
    FirstKey,
    /// A property.
    Property(String),
    /// Computed from the message.
    Custom(KeyFn),
}

impl fmt::Debug for DedupeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UniqKey => f.write_str("UniqKey"),
            Self::FirstKey => f.write_str("FirstKey"),
            Self::Property(p) => f.debug_tuple("Property").field(p).finish(),
            Self::Custom(_) => f.write_str("Custom(..)"),
        }
    }
}

impl DedupeKey {
    /// The key of `msg`, if it has one.
    ///
    /// ```
    /// use sluice_client::{ConsumedMessage, idempotent::DedupeKey};
    /// let msg = ConsumedMessage::for_tests("T", "x").with_property("UNIQ_KEY", "U").with_property("KEYS", "order-1 x");
    /// assert_eq!(DedupeKey::UniqKey.extract(&msg).as_deref(), Some("U"));
    /// assert_eq!(DedupeKey::FirstKey.extract(&msg).as_deref(), Some("order-1"));
    /// assert_eq!(DedupeKey::Property("nope".into()).extract(&msg), None);
    /// // A retry copy of a message stored without UNIQ_KEY, by a broker that adds none.
    /// let copy = ConsumedMessage::for_tests("%RETRY%g", "x").with_property("ORIGIN_MESSAGE_ID", "AC1A...0001");
    /// assert_eq!(DedupeKey::UniqKey.extract(&copy).as_deref(), Some("AC1A...0001"));
    /// ```
    pub fn extract(&self, msg: &ConsumedMessage) -> Option<String> {
        let key = match self {
            Self::UniqKey => Some(
                msg.property(UNIQ_KEY)
                    .or_else(|| msg.property(ORIGIN_MESSAGE_ID))
                    .unwrap_or(msg.offset_msg_id())
                    .to_owned(),
            ),
            Self::FirstKey => msg.keys().next().map(str::to_owned),
            Self::Property(p) => msg.property(p).map(str::to_owned),
            Self::Custom(f) => f(msg),
        };
        key.filter(|k| !k.is_empty())
    }
}

/// Why [`Idempotent::process`] did not complete.
///
/// ```
/// use sluice_client::idempotent::IdempotencyError;
/// let e = IdempotencyError::MissingKey("U1".into());
/// assert_eq!(e.to_string(), "message U1 has no dedupe key");
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdempotencyError {
    /// The message has no value for the configured [`DedupeKey`]; it cannot be processed
    /// safely, so it is retried rather than risked twice, and dead-lettered after the
    /// consumer's `max_reconsume_times`. An orderly consumer retries without limit unless
    /// `max_reconsume_times` is set, so such a message holds its queue until it is.
    #[error("message {0} has no dedupe key")]
    MissingKey(String),
    /// The database failed; nothing was committed.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// The handler failed; its writes were rolled back.
    #[error("handler: {0}")]
    Handler(BoxError),
    /// The handler returned Ok but the transaction no longer held the message's claim (the
    /// handler deleted it); nothing was committed, so the message is retried.
    #[error("the claim of dedupe key {0} was gone before commit; rolled back")]
    ClaimLost(String),
}

/// Runs of a transaction after the first that failed on contention (see
/// [`Idempotent::process`]), and the pause before each (times its number).
const CONTENTION_RETRIES: u32 = 4;
const CONTENTION_PAUSE: std::time::Duration = std::time::Duration::from_millis(25);

impl IdempotencyError {
    /// Whether the database refused for contention alone (retrying may succeed): SQLite's
    /// SQLITE_BUSY or SQLITE_LOCKED (extended codes included), PostgreSQL's
    /// serialization_failure (40001) or deadlock_detected (40P01). A handler's own error
    /// counts when it is such an `sqlx::Error`.
    pub fn is_contention(&self) -> bool {
        let db = match self {
            Self::Database(e) => e,
            Self::Handler(e) => match e.downcast_ref::<sqlx::Error>() {
                Some(e) => e,
                None => return false,
            },
            _ => return false,
        };
        let Some(d) = db.as_database_error() else {
            return false;
        };
        let code = d.code().unwrap_or_default();
        if d.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
            return code.parse::<i32>().is_ok_and(|c| matches!(c & 0xff, 5 | 6));
        }
        matches!(code.as_ref(), "40001" | "40P01")
    }
}

/// What [`Idempotent::process`] did.
///
/// ```no_run
/// # async fn demo<H: sluice_client::idempotent::TxHandler<sqlx::Sqlite>>(h: &sluice_client::Idempotent<sqlx::Sqlite, H>, msg: &sluice_client::ConsumedMessage) {
/// use sluice_client::Outcome;
/// match h.process(msg).await {
///     Ok(Outcome::Processed) => println!("written"),
///     Ok(Outcome::Duplicate) => println!("already done; nothing written"),
///     Err(e) => println!("rolled back: {e}"),
/// }
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The handler ran and its writes were committed with the claim.
    Processed,
    /// The key was already claimed: nothing ran, nothing was written.
    Duplicate,
}

/// A handler that writes through the transaction it is given.
///
/// Implement it on a type, or wrap a function with [`handler_fn`].
///
/// ```
/// use futures::future::{BoxFuture, FutureExt};
/// use sluice_client::idempotent::{BoxError, TxHandler};
/// use sluice_client::ConsumedMessage;
/// use sqlx::{Postgres, Transaction};
///
/// struct RecordPayment;
///
/// impl TxHandler<Postgres> for RecordPayment {
///     fn handle<'a>(&'a self, msg: &'a ConsumedMessage, tx: &'a mut Transaction<'static, Postgres>)
///         -> BoxFuture<'a, Result<(), BoxError>> {
///         async move {
///             sqlx::query("INSERT INTO payments (msg_id) VALUES ($1)")
///                 .bind(msg.msg_id())
///                 .execute(&mut **tx)
///                 .await?;
///             Ok(())
///         }
///         .boxed()
///     }
/// }
/// ```
pub trait TxHandler<DB: sqlx::Database>: Send + Sync + 'static {
    /// Handles `msg` with `tx`; an error rolls everything back.
    fn handle<'a>(
        &'a self,
        msg: &'a ConsumedMessage,
        tx: &'a mut Transaction<'static, DB>,
    ) -> BoxFuture<'a, Result<(), BoxError>>;
}

/// A [`TxHandler`] made from a function; see [`handler_fn`].
///
/// ```
/// use futures::FutureExt;
/// use sluice_client::idempotent::{handler_fn, BoxError, FnHandler, TxHandler};
/// use sluice_client::ConsumedMessage;
/// use sqlx::{Sqlite, Transaction};
///
/// fn assert_handler<H: TxHandler<Sqlite>>(_: &H) {}
/// let h = handler_fn(|_m: &ConsumedMessage, _tx: &mut Transaction<'static, Sqlite>| {
///     async { Ok::<(), BoxError>(()) }.boxed()
/// });
/// assert_handler(&h);
/// ```
pub struct FnHandler<F>(F);

/// Makes a [`TxHandler`] from a function returning a boxed future (the signature lets the
/// borrow of the transaction cross the `.await`s).
///
/// ```
/// use futures::FutureExt;
/// use sluice_client::idempotent::{handler_fn, BoxError};
/// use sluice_client::ConsumedMessage;
/// use sqlx::{Sqlite, Transaction};
///
/// let h = handler_fn(|msg: &ConsumedMessage, tx: &mut Transaction<'static, Sqlite>| {
///     async move {
///         sqlx::query("INSERT INTO payments (id) VALUES ($1)")
///             .bind(msg.msg_id())
///             .execute(&mut **tx)
///             .await?;
///         Ok::<(), BoxError>(())
///     }
///     .boxed()
/// });
/// # let _ = h;
/// ```
pub fn handler_fn<DB, F>(f: F) -> FnHandler<F>
where
    DB: sqlx::Database,
    F: for<'a> Fn(
            &'a ConsumedMessage,
            &'a mut Transaction<'static, DB>,
        ) -> BoxFuture<'a, Result<(), BoxError>>
        + Send
        + Sync
        + 'static,
{
    FnHandler(f)
}

impl<DB, F> TxHandler<DB> for FnHandler<F>
where
    DB: sqlx::Database,
    F: for<'a> Fn(
            &'a ConsumedMessage,
            &'a mut Transaction<'static, DB>,
        ) -> BoxFuture<'a, Result<(), BoxError>>
        + Send
        + Sync
        + 'static,
{
    fn handle<'a>(
        &'a self,
        msg: &'a ConsumedMessage,
        tx: &'a mut Transaction<'static, DB>,
    ) -> BoxFuture<'a, Result<(), BoxError>> {
        (self.0)(msg, tx)
    }
}

/// Runs a [`TxHandler`] at most once per dedupe key and consumer group (for a `UNIQ_KEY`, once
/// within [`UNIQ_KEY_WINDOW`]; see the module docs), and exactly once for a message that is
/// eventually processed. Use it directly, or
/// as a push consumer's handler (it implements [`MessageHandler`]: processed and duplicate
/// messages are acknowledged, failures retried).
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use futures::FutureExt;
/// use sluice_client::idempotent::{self, handler_fn, BoxError, Idempotent};
/// use sluice_client::{ClientConfig, ConsumedMessage, PushConsumer};
/// use sqlx::{Sqlite, SqlitePool, Transaction};
///
/// let pool = SqlitePool::connect("sqlite://app.db?mode=rwc").await?;
/// idempotent::migrate(&pool).await?;
/// let handler = Idempotent::new(pool, "billing", handler_fn(
///     |msg: &ConsumedMessage, tx: &mut Transaction<'static, Sqlite>| async move {
///         sqlx::query("INSERT INTO invoices (order_id) VALUES ($1)")
///             .bind(std::str::from_utf8(msg.body())?)
///             .execute(&mut **tx)
///             .await?;
///         Ok::<(), BoxError>(())
///     }.boxed(),
/// ));
/// let consumer = PushConsumer::builder(ClientConfig::new("127.0.0.1:9876"), "billing")
///     .subscribe("Orders", "*")
///     .start(handler)
///     .await?;
/// # let _ = consumer; Ok(()) }
/// ```
pub struct Idempotent<DB: DedupeBackend, H> {
    inner: Arc<Inner<DB, H>>,
}

struct Inner<DB: DedupeBackend, H> {
    pool: Pool<DB>,
    group: String,
    key: DedupeKey,
    uniq_key_window: std::time::Duration,
    handler: H,
    processed: AtomicU64,
    duplicates: AtomicU64,
}

impl<DB: DedupeBackend, H> Clone for Idempotent<DB, H> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<DB: DedupeBackend, H: TxHandler<DB>> Idempotent<DB, H> {
    /// Dedupes `handler` for `consumer_group` on `pool`, keyed by `UNIQ_KEY`.
    pub fn new(pool: Pool<DB>, consumer_group: impl Into<String>, handler: H) -> Self {
        Self::with_key(pool, consumer_group, DedupeKey::UniqKey, handler)
    }

    /// As [`Idempotent::new`] with another dedupe key.
    pub fn with_key(
        pool: Pool<DB>,
        consumer_group: impl Into<String>,
        key: DedupeKey,
        handler: H,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                pool,
                group: consumer_group.into(),
                key,
                uniq_key_window: UNIQ_KEY_WINDOW,
                handler,
                processed: AtomicU64::new(0),
                duplicates: AtomicU64::new(0),
            }),
        }
    }

    /// How long a `UNIQ_KEY` claim counts as a duplicate (default [`UNIQ_KEY_WINDOW`]); at
    /// most ~27 days, since keys repeat after a month. No effect with business keys.
    ///
    /// # Panics
    /// If `window` is 27 days or more, or if the helper was cloned before (configure it
    /// first, as a builder).
    pub fn with_uniq_key_window(mut self, window: std::time::Duration) -> Self {
        assert!(
            window < std::time::Duration::from_secs(27 * 24 * 3600),
            "UNIQ_KEY values repeat after about a month: a window must be shorter"
        );
        Arc::get_mut(&mut self.inner)
            .expect("configured before it is cloned")
            .uniq_key_window = window;
        self
    }

    /// Claims the message's key and runs the handler in one transaction. A transaction that
    /// fails on contention (SQLite's busy or locked database, PostgreSQL's serialization
    /// failure or deadlock) is run again, a few times with a short pause, before the error is
    /// returned: everything was rolled back, and on SQLite a busy writer is the normal case
    /// with several handlers at once, which would otherwise each cost a redelivery with
    /// back-off (and count toward the dead-letter queue).
    #[tracing::instrument(skip_all, fields(group = %self.inner.group, msg_id = %msg.msg_id()))]
    pub async fn process(&self, msg: &ConsumedMessage) -> Result<Outcome, IdempotencyError> {
        let mut attempt = 0;
        loop {
            match self.process_once(msg).await {
                Err(e) if e.is_contention() && attempt < CONTENTION_RETRIES => {
                    attempt += 1;
                    tracing::debug!(attempt, error = %e, "database contention; running the transaction again");
                    tokio::time::sleep(CONTENTION_PAUSE * attempt).await;
                }
                other => return other,
            }
        }
    }

    async fn process_once(&self, msg: &ConsumedMessage) -> Result<Outcome, IdempotencyError> {
        let inner = &self.inner;
        let key = inner
            .key
            .extract(msg)
            .ok_or_else(|| IdempotencyError::MissingKey(msg.msg_id().to_owned()))?;
        let stale_before_ms = match inner.key {
            DedupeKey::UniqKey => now_ms().saturating_sub(inner.uniq_key_window.as_millis() as i64),
            _ => i64::MIN,
        };
        let claim = Claim {
            consumer_group: inner.group.clone(),
            dedupe_key: fitted(key, MAX_KEY_CHARS),
            topic: fitted(msg.topic().to_owned(), MAX_KEY_CHARS),
            msg_id: fitted(msg.msg_id().to_owned(), MAX_MSG_ID_CHARS),
            stale_before_ms,
        };
        let mut tx = inner.pool.begin().await?;
        // The upsert cannot conflict on its own key, so any error here, a unique violation
        // included (of an index the application added to the table), is a failure, not a
        // duplicate: reported as a duplicate, the message would be acknowledged unprocessed.
        let claimed = DB::claim(&mut tx, &claim).await? > 0;
        if !claimed {
            tx.rollback().await?;
            inner.duplicates.fetch_add(1, Ordering::Relaxed);
            tracing::info!(dedupe_key = %claim.dedupe_key, "duplicate delivery skipped");
            return Ok(Outcome::Duplicate);
        }
        if let Err(e) = inner.handler.handle(msg, &mut tx).await {
            let _ = tx.rollback().await;
            return Err(IdempotencyError::Handler(e));
        }
        // A handler may swallow an SQL error; PostgreSQL has then aborted the transaction,
        // and answers COMMIT with ROLLBACK, which sqlx reports as Ok. Reading the claim back
        // fails in an aborted transaction (25P02), so nothing is reported processed that
        // was not committed.
        match DB::claimed(&mut tx, &claim).await {
            Ok(1) => {}
            Ok(_) => {
                let _ = tx.rollback().await;
                return Err(IdempotencyError::ClaimLost(claim.dedupe_key));
            }
            Err(e) => {
                let _ = tx.rollback().await;
                return Err(e.into());
            }
        }
        // A unique violation at COMMIT is never the claim's (its upsert cannot conflict): it
        // is the handler's own deferred constraint, so the business writes were rolled back
        // with the claim, and it is returned as the error it is (a duplicate would have the
        // message acknowledged unprocessed).
        tx.commit().await?;
        inner.processed.fetch_add(1, Ordering::Relaxed);
        Ok(Outcome::Processed)
    }

    /// Messages processed by this instance.
    pub fn processed(&self) -> u64 {
        self.inner.processed.load(Ordering::Relaxed)
    }

    /// Duplicates skipped by this instance.
    pub fn duplicates(&self) -> u64 {
        self.inner.duplicates.load(Ordering::Relaxed)
    }
}

impl<DB: DedupeBackend, H: TxHandler<DB>> MessageHandler for Idempotent<DB, H> {
    fn handle(&self, msg: ConsumedMessage) -> BoxFuture<'static, ConsumeResult> {
        let this = self.clone();
        async move {
            match this.process(&msg).await {
                Ok(_) => ConsumeResult::Success,
                Err(e) => {
                    tracing::warn!(msg_id = %msg.msg_id(), error = %e, "idempotent handler failed; retrying");
                    ConsumeResult::Retry(None)
                }
            }
        }
        .boxed()
    }
}
