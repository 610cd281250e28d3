//! A real broker (with delays, transactions and the HTTP facade on a free port) in the test
//! process, and a small JSON client for it.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use sluice_broker::{Broker, BrokerConfig, BrokerExtensions, BrokerHandle};
use sluice_http::{HttpConfig, HttpFacade};
use sluice_schedule::{ScheduleConfig, ScheduleExtension};
use sluice_store::StoreConfig;
use sluice_txn::{TxnConfig, TxnExtension};

/// What a test may change before the broker starts.
pub struct Options {
    pub http: HttpConfig,
    pub broker: Box<dyn FnOnce(&mut BrokerConfig) + Send>,
    pub txn: TxnConfig,
    pub schedule: ScheduleConfig,
    /// Extensions started after the facade, so stopped before it.
    pub after_facade: Vec<Arc<dyn sluice_broker::Extension>>,
    /// The store's file operations (a fault layer); `None`: the real ones.
    pub storage_io: Option<Arc<dyn sluice_store::io::StorageIo>>,
}

impl Default for Options {
    fn default() -> Self {
        let mut txn = TxnConfig::default();
        txn.defaults.check_after = Duration::from_millis(500);
        txn.defaults.check_interval = Duration::from_millis(500);
        Self {
            http: HttpConfig {
                listen: SocketAddr::from(([127, 0, 0, 1], 0)),
                ..HttpConfig::default()
            },
            broker: Box::new(|_| {}),
            txn,
            schedule: ScheduleConfig::default()
                .with_levels("300ms 700ms 1s 2s")
                .expect("levels"),
            after_facade: Vec::new(),
            storage_io: None,
        }
    }
}

/// A running broker with its HTTP facade.
pub struct Server {
    pub broker: BrokerHandle,
    pub facade: Arc<HttpFacade>,
    pub base: String,
    pub http: reqwest::Client,
    pub dir: tempfile::TempDir,
}

/// Starts a broker (no name server) with default options.
pub async fn start() -> Server {
    start_with(Options::default()).await
}

/// Starts a broker with the given options, in a fresh data folder.
pub async fn start_with(opts: Options) -> Server {
    let dir = tempfile::tempdir().expect("data dir");
    start_in(dir, opts).await
}

/// Starts a broker over an existing data folder (restart tests).
pub async fn start_in(dir: tempfile::TempDir, opts: Options) -> Server {
    let mut cfg = BrokerConfig::new(StoreConfig::for_tests(dir.path()));
    cfg.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    cfg.namesrv_addrs = vec![];
    cfg.default_topic_queue_nums = 2;
    (opts.broker)(&mut cfg);
    let schedule = ScheduleExtension::new(opts.schedule);
    let txn = TxnExtension::new(opts.txn).with_commit_hooks(vec![schedule.put_hook()]);
    let facade = HttpFacade::new(opts.http, Some(txn.service()), Some(schedule.service()));
    let mut ext = BrokerExtensions::default();
    for e in [schedule.broker_extensions(), txn.broker_extensions()] {
        ext.put_hooks.extend(e.put_hooks);
        ext.extensions.extend(e.extensions);
    }
    ext.extensions.push(facade.extension());
    ext.extensions.extend(opts.after_facade);
    ext.storage_io = opts.storage_io;
    let broker = Broker::start_with(cfg, ext).await.expect("broker start");
    let addr = facade.local_addr().expect("http bound");
    Server {
        broker,
        facade,
        base: format!("http://{addr}"),
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(40))
            .build()
            .expect("http client"),
        dir,
    }
}

impl Server {
    /// `base + path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// POSTs JSON; returns status and JSON body (Null when empty).
    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .http
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .expect("POST");
        status_json(r).await
    }

    /// The `/metrics` text (no token).
    pub async fn metrics(&self) -> String {
        let r = self.http.get(self.url("/metrics")).send().await;
        r.expect("GET /metrics").text().await.expect("metrics text")
    }

    /// GETs; returns status and JSON body.
    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self.http.get(self.url(path)).send().await.expect("GET");
        status_json(r).await
    }

    /// DELETEs; returns status and JSON body.
    pub async fn delete(&self, path: &str) -> (u16, Value) {
        let r = self
            .http
            .delete(self.url(path))
            .send()
            .await
            .expect("DELETE");
        status_json(r).await
    }

    /// PATCHes JSON; returns status and JSON body.
    pub async fn patch(&self, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .http
            .patch(self.url(path))
            .json(&body)
            .send()
            .await
            .expect("PATCH");
        status_json(r).await
    }

    /// Creates a topic through the broker (not through HTTP) with `queues` queues.
    pub fn create_topic(&self, topic: &str, queues: i32) {
        let cfg = sluice_protocol::remoting::body::TopicConfig::new(topic, queues, 6);
        self.broker.services().put_topic(cfg).unwrap();
    }

    /// Stops the broker (HTTP first) and returns the data folder for a restart.
    pub async fn stop(self) -> tempfile::TempDir {
        self.broker.shutdown().await;
        self.dir
    }
}

/// Status and JSON body of a response (Null when the body is empty).
pub async fn status_json(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    let text = r.text().await.expect("body");
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
    };
    (status, body)
}

/// Asserts the one error shape and returns its code.
pub fn error_code(body: &Value) -> &str {
    let e = &body["error"];
    assert!(
        e["request_id"].as_str().is_some_and(|s| !s.is_empty()),
        "error without request_id: {body}"
    );
    assert!(e["message"].is_string(), "error without message: {body}");
    e["code"].as_str().expect("error code")
}

/// The tests' two tokens: `producer-secret-0123456789` (producer scope) and
/// `admin-secret-0123456789abcd` (admin scope).
pub fn producer_and_admin_tokens() -> Vec<sluice_http::auth::Token> {
    use sluice_http::auth::{Scope, Token};
    vec![
        Token {
            name: "prod".into(),
            secret: "producer-secret-0123456789".into(),
            scopes: vec![Scope::Producer],
        },
        Token {
            name: "ops".into(),
            secret: "admin-secret-0123456789abcd".into(),
            scopes: vec![Scope::Admin],
        },
    ]
}
