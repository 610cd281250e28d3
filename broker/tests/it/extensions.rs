//! The extension API later crates build on: an extension answers its request codes with the
//! broker's services at hand, and is stopped before the store closes.

use crate::common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::*;
use parking_lot::Mutex;
use sluice_broker::{
    BoxFuture, Broker, BrokerExtensions, BrokerServices, ConnectionHandle, Extension,
};
use sluice_protocol::{ExtFields, RemotingCommand};
use sluice_store::MessageInput;

const ECHO_STORE: i32 = 9_001;

#[derive(Default)]
struct Probe {
    services: Mutex<Option<BrokerServices>>,
    stopped: AtomicBool,
}

impl Extension for Probe {
    fn name(&self) -> &'static str {
        "probe"
    }

    fn start(&self, services: BrokerServices) -> Result<(), String> {
        *self.services.lock() = Some(services);
        Ok(())
    }

    fn request_codes(&self) -> &'static [i32] {
        &[ECHO_STORE]
    }

    fn handle(
        &self,
        _conn: ConnectionHandle,
        req: RemotingCommand,
    ) -> BoxFuture<'static, Option<RemotingCommand>> {
        let services = self.services.lock().clone().expect("started");
        Box::pin(async move {
            // Put past the hooks, then answer with where it went.
            let a = services
                .put(vec![MessageInput::new("ExtTopic", 0, "from an extension")])
                .await
                .unwrap();
            let ext = ExtFields::new().with("offset", a[0].queue_offset.to_string());
            Some(RemotingCommand::response_to(&req, 0, None).with_ext(ext))
        })
    }

    fn stop(&self) -> BoxFuture<'static, ()> {
        self.services.lock().take();
        self.stopped.store(true, Ordering::SeqCst);
        Box::pin(async {})
    }
}

#[tokio::test]
async fn an_extension_answers_its_codes_with_broker_services_and_is_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let namesrv = start_namesrv().await;
    let probe = Arc::new(Probe::default());
    let ext = BrokerExtensions {
        extensions: vec![probe.clone() as Arc<dyn Extension>],
        ..Default::default()
    };
    let broker = Broker::start_with(broker_config(dir.path(), namesrv.local_addr()), ext)
        .await
        .unwrap();
    let client = sluice_broker::RemotingClient::connect(broker.local_addr())
        .await
        .unwrap();
    for want in 0..2 {
        let resp = client
            .invoke(RemotingCommand::request(ECHO_STORE, ExtFields::new()), RPC)
            .await
            .unwrap();
        assert_eq!(resp.code, 0);
        assert_eq!(
            resp.ext_fields.get_str("offset"),
            Some(want.to_string().as_str())
        );
    }
    assert!(!probe.stopped.load(Ordering::SeqCst));
    broker.shutdown().await;
    assert!(
        probe.stopped.load(Ordering::SeqCst),
        "stopped with the broker"
    );
    namesrv.shutdown().await;
}

/// Notes its name in a shared log when stopped.
struct Recorder(&'static str, Arc<Mutex<Vec<&'static str>>>);

impl Extension for Recorder {
    fn name(&self) -> &'static str {
        self.0
    }

    fn start(&self, _services: BrokerServices) -> Result<(), String> {
        Ok(())
    }

    fn stop(&self) -> BoxFuture<'static, ()> {
        self.1.lock().push(self.0);
        Box::pin(async {})
    }
}

/// Extensions were stopped in their start order, so the HTTP facade (started last, calling
/// the transaction and schedule extensions) kept serving after both had stopped, and its
/// callers got "not running" errors during every graceful stop.
#[tokio::test]
async fn extensions_stop_in_the_reverse_of_their_start_order() {
    let dir = tempfile::tempdir().unwrap();
    let namesrv = start_namesrv().await;
    let log = Arc::new(Mutex::new(Vec::new()));
    let ext = BrokerExtensions {
        extensions: ["schedule", "txn", "http"]
            .into_iter()
            .map(|n| Arc::new(Recorder(n, Arc::clone(&log))) as Arc<dyn Extension>)
            .collect(),
        ..Default::default()
    };
    let broker = Broker::start_with(broker_config(dir.path(), namesrv.local_addr()), ext)
        .await
        .unwrap();
    broker.shutdown().await;
    assert_eq!(*log.lock(), ["http", "txn", "schedule"]);
    namesrv.shutdown().await;
}

/// Fails to start, as the HTTP facade does when its port is taken.
struct FailsToStart;

impl Extension for FailsToStart {
    fn name(&self) -> &'static str {
        "fails"
    }

    fn start(&self, _services: BrokerServices) -> Result<(), String> {
        Err("port in use".into())
    }
}

/// A start that failed after the store opened left it open: the process exited with the
/// abort marker in place, so every later start ran crash recovery. The extensions that
/// started are stopped and the store is closed cleanly now.
#[tokio::test]
async fn a_failed_start_stops_what_started_and_closes_the_store_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let namesrv = start_namesrv().await;
    let log = Arc::new(Mutex::new(Vec::new()));
    let ext = BrokerExtensions {
        extensions: vec![
            Arc::new(Recorder("schedule", Arc::clone(&log))) as Arc<dyn Extension>,
            Arc::new(FailsToStart),
        ],
        ..Default::default()
    };
    let cfg = broker_config(dir.path(), namesrv.local_addr());
    let store_dir = cfg.store.data_dir.clone();
    let Err(err) = Broker::start_with(cfg, ext).await else {
        panic!("a failing extension must refuse the start");
    };
    assert!(err.to_string().contains("port in use"), "{err}");
    assert_eq!(
        *log.lock(),
        ["schedule"],
        "the started extension was stopped"
    );
    assert!(
        !store_dir.join("abort").exists(),
        "the store was closed cleanly"
    );
    let broker = Broker::start(broker_config(dir.path(), namesrv.local_addr()))
        .await
        .expect("the folder is free again");
    broker.shutdown().await;
    namesrv.shutdown().await;
}
