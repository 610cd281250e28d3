//! `cargo run --release -p example-order-timeout`: runs the order-timeout flow against an
//! embedded Sluice (or `SLUICE_NAMESRV` + `SLUICE_HTTP`) on SQLite (or `DATABASE_URL`) and
//! prints its timeline.

use example_order_timeout::{run, Database};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let report = run(Database::from_env(dir.path()), true).await?;
    println!();
    println!("backend:         {}", report.backend);
    for (order, answer) in &report.cancel_answers {
        println!(
            "cancel {order}:  {} (count {})",
            answer.result, answer.count
        );
    }
    println!("final statuses:  {:?}", report.statuses);
    println!(
        "time-outs acted on: {}, redeliveries skipped: {}",
        report.timeouts_processed, report.duplicates_skipped
    );
    println!("OK: paid orders stayed paid, unpaid ones were cancelled exactly once");
    Ok(())
}
