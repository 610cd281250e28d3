//! The name server: routes after registration (legacy and standard JSON), unknown topics,
//! cluster info, expiry of silent brokers, unregistration.

use crate::common;

use std::time::Duration;

use common::*;
use sluice_broker::{NameServer, NameServerConfig, RemotingClient};
use sluice_protocol::remoting::body::{
    encode_json, ClusterInfo, RegisterBrokerBody, TopicConfig, TopicRouteData,
};
use sluice_protocol::remoting::custom::{
    RegisterBrokerRequestHeader, UnregisterBrokerRequestHeader,
};
use sluice_protocol::{request_code, RemotingCommand};

fn route_request(topic: &str, version: i32, standard_only: bool) -> RemotingCommand {
    let mut e = ext(&[("topic", topic)]);
    if standard_only {
        e.insert("acceptStandardJsonOnly", "true");
    }
    let mut req = RemotingCommand::request(request_code::GET_ROUTEINFO_BY_TOPIC, e);
    req.version = version;
    req
}

fn register(name: &str, addr: &str, topic: &str) -> RemotingCommand {
    register_with(name, addr, &[topic.to_owned()], 2)
}

/// A master's REGISTER_BROKER listing `topics`, each with `queues` queues.
fn register_with(name: &str, addr: &str, topics: &[String], queues: i32) -> RemotingCommand {
    let mut body = RegisterBrokerBody::default();
    for t in topics {
        body.topic_config_serialize_wrapper
            .topic_config_table
            .insert(t.clone(), TopicConfig::new(t, queues, 6));
    }
    let h = RegisterBrokerRequestHeader {
        broker_name: name.into(),
        broker_addr: addr.into(),
        cluster_name: "C".into(),
        ha_server_addr: addr.into(),
        broker_id: 0,
        ..RegisterBrokerRequestHeader::default()
    };
    RemotingCommand::request(request_code::REGISTER_BROKER, h.to_ext())
        .with_body(encode_json(&body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_come_in_legacy_or_standard_json_by_client_version() {
    let cluster = start_cluster().await;
    let ns = RemotingClient::connect(cluster.namesrv.local_addr())
        .await
        .unwrap();
    let broker_addr = cluster.broker.advertised_addr().to_string();

    let legacy = ns
        .invoke(route_request("TBW102", 333, false), RPC)
        .await
        .unwrap();
    assert_eq!(legacy.code, 0, "{:?}", legacy.remark);
    let text = String::from_utf8(legacy.body.to_vec()).unwrap();
    assert!(
        text.contains(&format!(r#"{{0:"{broker_addr}"}}"#)),
        "legacy form: {text}"
    );
    assert!(serde_json::from_str::<serde_json::Value>(&text).is_err());
    let route = TopicRouteData::from_json(&legacy.body).unwrap();
    assert_eq!(
        route.broker_datas[0].master_addr(),
        Some(broker_addr.as_str())
    );
    assert_eq!(route.queue_datas[0].perm, 7);
    assert_eq!(route.queue_datas[0].write_queue_nums, 8);

    for (version, only) in [(401, false), (317, true)] {
        let standard = ns
            .invoke(route_request("TBW102", version, only), RPC)
            .await
            .unwrap();
        let text = String::from_utf8(standard.body.to_vec()).unwrap();
        assert!(
            text.contains(&format!(r#"{{"0":"{broker_addr}"}}"#)),
            "standard form: {text}"
        );
        serde_json::from_str::<serde_json::Value>(&text).expect("valid JSON");
    }

    let unknown = ns
        .invoke(route_request("NoSuchTopic", 401, false), RPC)
        .await
        .unwrap();
    assert_eq!(unknown.code, 17);

    // A topic created on the broker reaches the name server without waiting 30 s.
    let producer = cluster.client().await;
    send_ok(&producer, "FreshTopic", 0, b"x", &props(None, None)).await;
    let mut routed = false;
    for _ in 0..500 {
        if ns
            .invoke(route_request("FreshTopic", 401, false), RPC)
            .await
            .unwrap()
            .code
            == 0
        {
            routed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(routed, "auto-created topic was registered");

    let info = ns
        .invoke(
            RemotingCommand::request(request_code::GET_BROKER_CLUSTER_INFO, Default::default()),
            RPC,
        )
        .await
        .unwrap();
    let info = ClusterInfo::from_json(&info.body).unwrap();
    assert!(info.cluster_addr_table["DefaultCluster"].contains("broker-a"));

    let odd = ns
        .invoke(RemotingCommand::request(777, Default::default()), RPC)
        .await
        .unwrap();
    assert_eq!(odd.code, 3);
    assert_eq!(
        odd.remark.as_deref(),
        Some(" request type 777 not supported")
    );

    // Broker shutdown unregisters it.
    let Cluster {
        dir: _dir,
        namesrv,
        broker,
    } = cluster;
    broker.shutdown().await;
    let gone = ns
        .invoke(route_request("TBW102", 401, false), RPC)
        .await
        .unwrap();
    assert_eq!(gone.code, 17);
    drop(ns);
    namesrv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn brokers_expire_when_silent_and_leave_when_they_unregister() {
    let cfg = NameServerConfig {
        listen: localhost(),
        // Long enough that a stall between the registration and the first route lookup on a
        // loaded machine does not expire the broker before it is seen registered.
        broker_expiry: Duration::from_secs(2),
        scan_interval: Duration::from_millis(50),
        ..NameServerConfig::default()
    };
    let namesrv = NameServer::start(cfg).await.unwrap();
    let fake = RemotingClient::connect(namesrv.local_addr()).await.unwrap();
    let resp = fake
        .invoke(register("b1", "10.9.9.9:10911", "Expiring"), RPC)
        .await
        .unwrap();
    assert_eq!(resp.code, 0, "{:?}", resp.remark);
    let resp = fake
        .invoke(register("b2", "10.9.9.8:10911", "Leaving"), RPC)
        .await
        .unwrap();
    assert_eq!(resp.code, 0);
    assert_eq!(
        fake.invoke(route_request("Expiring", 401, false), RPC)
            .await
            .unwrap()
            .code,
        0
    );

    let h = UnregisterBrokerRequestHeader {
        broker_name: "b2".into(),
        broker_addr: "10.9.9.8:10911".into(),
        cluster_name: "C".into(),
        broker_id: 0,
    };
    let req = RemotingCommand::request(request_code::UNREGISTER_BROKER, h.to_ext());
    assert_eq!(fake.invoke(req, RPC).await.unwrap().code, 0);
    assert_eq!(
        fake.invoke(route_request("Leaving", 401, false), RPC)
            .await
            .unwrap()
            .code,
        17
    );

    // Bounded at about 30 s: the expiry (2 s) plus the scan interval, with room for load.
    let mut expired = false;
    for _ in 0..1_500 {
        if fake
            .invoke(route_request("Expiring", 401, false), RPC)
            .await
            .unwrap()
            .code
            == 17
        {
            expired = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(expired, "a silent broker is dropped from routes");
    let info = fake
        .invoke(
            RemotingCommand::request(request_code::GET_BROKER_CLUSTER_INFO, Default::default()),
            RPC,
        )
        .await
        .unwrap();
    assert!(ClusterInfo::from_json(&info.body)
        .unwrap()
        .broker_addr_table
        .is_empty());
    drop(fake);
    namesrv.shutdown().await;
}

/// A name server drops every broker registered over a connection when it closes. The broker
/// used to close its connection when a registration merely timed out, which took it out of
/// every route until the next registration; a slow answer now keeps the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_that_times_out_keeps_its_name_server_connection() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use tokio::io::AsyncReadExt;
    // A name server that reads requests and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    let (accepted, frames) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (a, f) = (Arc::clone(&accepted), Arc::clone(&frames));
    let server = tokio::spawn(async move {
        while let Ok((mut s, _)) = silent.accept().await {
            a.fetch_add(1, Ordering::SeqCst);
            let f = Arc::clone(&f);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 1 << 20];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    f.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
    });
    let cluster = start_cluster_with(|cfg| {
        cfg.namesrv_addrs = vec![addr];
        cfg.register_interval = Duration::from_secs(3600);
    })
    .await;
    let waited = |n: usize| {
        let frames = Arc::clone(&frames);
        async move {
            for _ in 0..600 {
                if frames.load(Ordering::SeqCst) >= n {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            false
        }
    };
    assert!(waited(1).await, "the broker registers at start");
    // Past the registration's timeout (3 s), then a topic change registers again.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let before = frames.load(Ordering::SeqCst);
    cluster
        .broker
        .services()
        .put_topic(TopicConfig::new("Changed", 1, 6))
        .unwrap();
    assert!(waited(before + 1).await, "the topic change registers again");
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "over the same connection: a timeout does not close it"
    );
    cluster.stop().await;
    server.abort();
}

fn register_topics(name: &str, addr: &str, topics: &[String]) -> RemotingCommand {
    register_with(name, addr, topics, 1)
}

/// Registrations are unauthenticated: one frame naming a 1 MiB broker and thousands of
/// topics made the name server keep two copies of the name per topic (gigabytes). Names are
/// bounded, so are brokers and topic routes, and a refused registration changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_past_the_name_and_table_bounds_are_refused_and_change_nothing() {
    let cfg = NameServerConfig {
        listen: localhost(),
        max_brokers: 2,
        max_topic_routes: 10,
        ..NameServerConfig::default()
    };
    let namesrv = NameServer::start(cfg).await.unwrap();
    let ns = RemotingClient::connect(namesrv.local_addr()).await.unwrap();
    let topics = |prefix: &str, n: usize| -> Vec<String> {
        (0..n).map(|i| format!("{prefix}{i}")).collect()
    };
    let code = |resp: RemotingCommand| (resp.code, resp.remark.unwrap_or_default());

    let huge = "b".repeat(1 << 20);
    let (c, why) = code(
        ns.invoke(register_topics(&huge, "10.0.0.1:1", &topics("T", 3)), RPC)
            .await
            .unwrap(),
    );
    assert_eq!(c, 1, "{why}");
    assert!(why.contains("brokerName must be 1 to 127 bytes"), "{why}");

    let ok = ns
        .invoke(register_topics("b1", "10.0.0.1:1", &topics("A", 6)), RPC)
        .await
        .unwrap();
    assert_eq!(ok.code, 0, "{:?}", ok.remark);
    // Six routes held; another broker's five would make eleven.
    let (c, why) = code(
        ns.invoke(register_topics("b2", "10.0.0.2:1", &topics("B", 5)), RPC)
            .await
            .unwrap(),
    );
    assert_eq!(c, 1, "{why}");
    assert!(why.contains("max_topic_routes"), "{why}");
    assert_eq!(
        ns.invoke(route_request("B0", 401, false), RPC)
            .await
            .unwrap()
            .code,
        17,
        "the refused registration routed nothing"
    );
    // b1 may replace its own six with ten: its old routes do not count twice.
    let again = ns
        .invoke(register_topics("b1", "10.0.0.1:1", &topics("A", 10)), RPC)
        .await
        .unwrap();
    assert_eq!(again.code, 0, "{:?}", again.remark);
    // A topic name no client may use is not routed; the rest of the registration is.
    let second = ns
        .invoke(
            register_topics("b2", "10.0.0.2:1", &["bad name!".into(), "Fine".into()]),
            RPC,
        )
        .await
        .unwrap();
    assert_eq!(second.code, 1, "eleven routes: {:?}", second.remark);
    let second = ns
        .invoke(
            register_topics("b2", "10.0.0.2:1", &["bad name!".into()]),
            RPC,
        )
        .await
        .unwrap();
    assert_eq!(second.code, 0, "{:?}", second.remark);
    assert_eq!(
        ns.invoke(route_request("bad name!", 401, false), RPC)
            .await
            .unwrap()
            .code,
        17
    );
    // Two brokers held: a third address is refused.
    let (c, why) = code(
        ns.invoke(register_topics("b3", "10.0.0.3:1", &[]), RPC)
            .await
            .unwrap(),
    );
    assert_eq!(c, 1, "{why}");
    assert!(why.contains("max_brokers"), "{why}");
    drop(ns);
    namesrv.shutdown().await;
}

/// A live broker whose registration is refused for the route bound (it created one topic too
/// many) stays registered with the routes it had: refused whole, it expired after
/// `broker_expiry` and every route went with it, and it could never come back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_broker_refused_for_the_route_bound_keeps_its_routes_and_stays_live() {
    let cfg = NameServerConfig {
        listen: localhost(),
        // Long enough that a stall between two registrations on a loaded machine does not
        // expire the broker; the registrations below span twice as long.
        broker_expiry: Duration::from_secs(2),
        scan_interval: Duration::from_millis(50),
        max_topic_routes: 10,
        ..NameServerConfig::default()
    };
    let namesrv = NameServer::start(cfg).await.unwrap();
    let ns = RemotingClient::connect(namesrv.local_addr()).await.unwrap();
    let topics = |n: usize| -> Vec<String> { (0..n).map(|i| format!("A{i}")).collect() };
    let first = ns
        .invoke(register_topics("b1", "10.0.0.1:1", &topics(6)), RPC)
        .await
        .unwrap();
    assert_eq!(first.code, 0, "{:?}", first.remark);
    // Registers every 200 ms for well past the expiry (4 s), each time with too many topics.
    for _ in 0..20 {
        let resp = ns
            .invoke(register_topics("b1", "10.0.0.1:1", &topics(20)), RPC)
            .await
            .unwrap();
        assert_eq!(resp.code, 1);
        assert!(
            resp.remark.unwrap_or_default().contains("stays registered"),
            "the bound is named and the broker kept"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        ns.invoke(route_request("A0", 401, false), RPC)
            .await
            .unwrap()
            .code,
        0,
        "its routes are still served"
    );
    assert_eq!(
        ns.invoke(route_request("A10", 401, false), RPC)
            .await
            .unwrap()
            .code,
        17,
        "the topics past the bound are not"
    );
    drop(ns);
    namesrv.shutdown().await;
}
