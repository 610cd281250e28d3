//! `cargo run --release -p example-payment-retry-dlq`: runs the payment flow (flaky bank,
//! retries, DLQ, selective replay) against an embedded Sluice (or `SLUICE_NAMESRV` +
//! `SLUICE_HTTP`) on SQLite (or `DATABASE_URL`) and prints its timeline.

use example_payment_retry_dlq::{run, Database};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let report = run(Database::from_env(dir.path()), true).await?;
    println!();
    println!("backend:          {}", report.backend);
    println!("dead-lettered:    {:?}", report.dead_lettered);
    println!(
        "replayed:         {} of {} selected (task {})",
        report.replay.replayed, report.replay.matched, report.replay.id
    );
    println!("still in the DLQ: {:?}", report.dlq_waiting);
    println!("bank attempts:    {:?}", report.bank_attempts);
    println!("bank charges:     {:?}", report.bank_charges);
    println!("duplicates skipped: {}", report.duplicates_skipped);
    println!("OK: every payment charged at most once; the replayed subset charged once");
    Ok(())
}
