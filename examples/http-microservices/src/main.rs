//! `cargo run -p example-http-microservices`: runs the two Python services against an embedded
//! broker (or the facade at `SLUICE_HTTP`, set up as the library's docs say) and prints their
//! timeline.

use example_http_microservices::{run_services, Embedded, WEBHOOK_SECRET};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // An empty value counts as unset, as in the other examples.
    match std::env::var("SLUICE_HTTP").ok().filter(|v| !v.is_empty()) {
        Some(base) => {
            run_services(&base, None, true).await?;
        }
        None => {
            let broker = Embedded::start().await?;
            let outcome = run_services(&broker.base_url(), Some(WEBHOOK_SECRET), true).await;
            broker.stop().await;
            outcome?;
        }
    }
    println!("OK: committed orders shipped once, the rolled-back one never, the poison one after its replay");
    Ok(())
}
