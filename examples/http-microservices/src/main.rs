//! `cargo run -p example-http-microservices`: runs the two Python services against an embedded
//! broker (or the facade at `SLUICE_HTTP`, set up as the library's docs say) and prints their
//! timeline.

use example_http_microservices::{run_services, Embedded, WEBHOOK_SECRET};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match std::env::var("SLUICE_HTTP") {
        Ok(base) => {
            run_services(&base, None, true).await?;
        }
        Err(_) => {
            let broker = Embedded::start().await?;
            let outcome = run_services(&broker.base_url(), Some(WEBHOOK_SECRET), true).await;
            broker.stop().await;
            outcome?;
        }
    }
    println!("OK: committed orders shipped once, the rolled-back one never, the poison one after its replay");
    Ok(())
}
