//! A name server and a broker in one process, for trying real clients against the library
//! before the `sluice` binary exists.
//!
//! Run with: `cargo run -p sluice-broker --example standalone -- <data-dir> [namesrv-port] [broker-port]`
//! (defaults 9876 and 10911, both on 127.0.0.1). Stops on Ctrl-C or after one hour.

use std::net::SocketAddr;
use std::time::Duration;

use sluice_broker::{Broker, BrokerConfig, NameServer, NameServerConfig};
use sluice_store::StoreConfig;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let data_dir = args
        .next()
        .ok_or("usage: standalone <data-dir> [namesrv-port] [broker-port]")?;
    let ns_port: u16 = args.next().map_or(Ok(9876), |p| p.parse())?;
    let broker_port: u16 = args.next().map_or(Ok(10911), |p| p.parse())?;

    let namesrv = NameServer::start(NameServerConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], ns_port)),
        ..NameServerConfig::default()
    })
    .await?;
    let mut cfg = BrokerConfig::new(StoreConfig::new(data_dir));
    cfg.listen = SocketAddr::from(([127, 0, 0, 1], broker_port));
    cfg.namesrv_addrs = vec![namesrv.local_addr()];
    let broker = Broker::start(cfg).await?;
    println!(
        "name server {} / broker {} ready",
        namesrv.local_addr(),
        broker.local_addr()
    );
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = tokio::time::sleep(Duration::from_secs(3600)) => {}
    }
    broker.shutdown().await;
    namesrv.shutdown().await;
    Ok(())
}
