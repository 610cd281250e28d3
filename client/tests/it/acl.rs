//! `ClientConfig::with_credentials` against a broker with RocketMQ ACL on: every request is
//! signed, so sends are accepted; with a wrong secret they are refused (NO_PERMISSION).

use std::net::SocketAddr;
use std::time::Duration;

use sluice_broker::acl::{AclAccount, AclConfig, Perm};
use sluice_broker::{Broker, BrokerConfig, NameServer, NameServerConfig};
use sluice_client::{ClientConfig, Message, Producer, SendStatus};
use sluice_store::StoreConfig;

#[tokio::test]
async fn a_client_with_credentials_signs_every_request() {
    let local = SocketAddr::from(([127, 0, 0, 1], 0));
    let namesrv = NameServer::start(NameServerConfig {
        listen: local,
        ..NameServerConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = BrokerConfig::new(StoreConfig::for_tests(dir.path()));
    cfg.listen = local;
    cfg.namesrv_addrs = vec![namesrv.local_addr()];
    cfg.acl = AclConfig {
        enabled: true,
        allow_remote_admin: false,
        accounts: vec![AclAccount {
            access_key: "rust-producer".into(),
            secret_key: "rust-secret-5e2b".into(),
            topic_perms: [("AclRust".to_string(), Perm::Pub)].into(),
            ..AclAccount::default()
        }],
        white_remote_addresses: Vec::new(),
    };
    let broker = Broker::start(cfg).await.unwrap();
    let ns = namesrv.local_addr().to_string();
    let config = |secret: &str| {
        ClientConfig::new(&ns)
            .with_rpc_timeout(Duration::from_secs(5))
            .with_credentials("rust-producer", secret)
    };
    assert!(!format!("{:?}", config("rust-secret-5e2b")).contains("rust-secret-5e2b"));

    let good = Producer::builder(config("rust-secret-5e2b"))
        .start()
        .await
        .unwrap();
    let r = good.send(Message::new("AclRust", "signed")).await.unwrap();
    assert_eq!(r.status, SendStatus::Ok);

    let bad = Producer::builder(config("wrong-secret-0000"))
        .start()
        .await
        .unwrap();
    let err = bad
        .send(Message::new("AclRust", "refused"))
        .await
        .unwrap_err();
    assert!(
        format!("{err}").contains("16") || format!("{err:?}").contains("16"),
        "{err:?}"
    );

    good.shutdown().await;
    bad.shutdown().await;
    broker.shutdown().await;
    namesrv.shutdown().await;
}
