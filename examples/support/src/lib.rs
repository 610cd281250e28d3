//! # example-support
//!
//! What the business-flow demos share, so each demo's own code is only its flow:
//! - [`timeline`]: a shared, timestamped log the demo prints and its test inspects.
//! - [`cluster`]: an embedded Sluice (name server, broker with delays, transactions and the
//!   HTTP facade, as the `sluice` binary installs them) or an external one from the
//!   environment.
//! - [`connect_sqlite`], [`wait_for`]: the demos' SQLite pool and their bounded waits.
//! - [`enc`]: a business key as one URL path segment or query value.

pub mod cluster;
pub mod timeline;

use std::future::Future;
use std::time::Duration;

/// `s` percent-encoded as one URL path segment or query value: an order id holding `/`, `?`,
/// `&` or `#` must not cancel or list something else. Everything but RFC 3986's unreserved
/// characters is encoded.
pub fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// How long a demo waits for anything it expects to happen.
pub const WAIT: Duration = Duration::from_secs(60);

/// WAL and a busy timeout: a demo's services write concurrently, and SQLite has one writer
/// at a time, so writers should wait rather than fail.
pub async fn connect_sqlite(path: &std::path::Path) -> anyhow::Result<sqlx::Pool<sqlx::Sqlite>> {
    let opts = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
        .busy_timeout(Duration::from_secs(10));
    Ok(sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(4)
        .connect_with(opts)
        .await?)
}

/// Polls `check` every 50 ms for at most [`WAIT`]; an error names what never happened.
pub async fn wait_for<F, Fut>(what: &str, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("timed out waiting for {what}")
}
