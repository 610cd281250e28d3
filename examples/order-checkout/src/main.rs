//! `cargo run -p example-order-checkout`: runs the order-checkout flow against an embedded
//! broker (or `SLUICE_NAMESRV`) on SQLite (or `DATABASE_URL`) and prints its timeline.

use example_order_checkout::{run, Database};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let report = run(Database::from_env(dir.path()), true).await?;
    println!();
    println!("backend:        {}", report.backend);
    println!("crashed order:  {}", report.crashed_order);
    println!("healed by check-back: {:?}", report.healed_by_check_back);
    println!(
        "duplicates skipped (inventory, loyalty): {:?}",
        report.duplicates_skipped
    );
    println!("final stock:    {:?}", report.stock);
    println!("final points:   {:?}", report.points);
    println!("OK: every order applied exactly once");
    Ok(())
}
