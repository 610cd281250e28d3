//! The name server: brokers register their topics here, clients ask it for routes.
//!
//! Codes served: REGISTER_BROKER (103), UNREGISTER_BROKER (104), GET_ROUTEINFO_BY_TOPIC (105),
//! GET_BROKER_CLUSTER_INFO (106), GET_ALL_TOPIC_LIST_FROM_NAMESERVER (206, `mqadmin
//! topicList`), and PUT/GET/DELETE_KV_CONFIG (100-102: kept in memory, at most
//! [`KV_MAX`] entries; `updateTopic -o` stores one and reports failure without it). Everything
//! else is REQUEST_CODE_NOT_SUPPORTED. A broker that
//! does not register again within `broker_expiry`, or whose registering connection closes, is
//! dropped from every route.

mod routes;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use sluice_protocol::remoting::body::{decode_json, JsonForm, RegisterBrokerBody};
use sluice_protocol::remoting::custom::{
    GetKvConfigResponseHeader, GetRouteInfoRequestHeader, KvConfigKeyHeader,
    PutKvConfigRequestHeader, RegisterBrokerRequestHeader, RegisterBrokerResponseHeader,
    UnregisterBrokerRequestHeader,
};
use sluice_protocol::{request_code, response_code, RemotingCommand};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::NameServerConfig;
use crate::error::BrokerError;
use crate::remoting::server::{Processor, Server, ServerOptions};
use crate::remoting::tracker::TaskTracker;
use crate::remoting::{ConnectionHandle, ConnectionRegistry};
use crate::reply;
use crate::stats::{BrokerStats, Counters};
use routes::{Registration, RouteTable};

/// Most key/value entries the name server keeps (they come from admin tools).
const KV_MAX: usize = 10_000;
/// Largest entry (namespace + key + value bytes): `ORDER_TOPIC_CONFIG` values are like
/// `broker-a:4`. With [`KV_MAX`] this bounds the store at 40 MiB, whoever sends to it (the
/// name server checks no signatures).
const KV_ENTRY_MAX: usize = 4096;

/// How long shutdown waits for in-flight requests.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Entry point of the name server.
#[derive(Debug)]
pub struct NameServer;

/// A running name server.
#[derive(Debug)]
pub struct NameServerHandle {
    server: Option<Server>,
    local_addr: SocketAddr,
    tracker: Arc<TaskTracker>,
    counters: Arc<Counters>,
    stop_scan: watch::Sender<bool>,
    scan: JoinHandle<()>,
}

impl NameServer {
    /// Binds `cfg.listen` and starts serving.
    pub async fn start(cfg: NameServerConfig) -> Result<NameServerHandle, BrokerError> {
        cfg.validate()?;
        let listener = TcpListener::bind(cfg.listen)
            .await
            .map_err(|source| BrokerError::Bind {
                addr: cfg.listen,
                source,
            })?;
        let counters = Arc::new(Counters::default());
        let tracker = Arc::new(TaskTracker::default());
        let processor = Arc::new(NameServerProcessor {
            table: Mutex::new(RouteTable::default()),
            limits: routes::Limits {
                max_brokers: cfg.max_brokers,
                max_topic_routes: cfg.max_topic_routes,
            },
            kv: Mutex::default(),
        });
        let opts = ServerOptions {
            name: "namesrv",
            max_frame: cfg.max_frame,
            max_body: cfg.max_body,
            max_inflight: 256,
            max_inflight_bytes: cfg.max_inflight_bytes,
            max_connections: 10_000,
            drain_timeout: DRAIN_TIMEOUT,
            idle_timeout: crate::remoting::server::IDLE_TIMEOUT,
            tls: cfg.tls.clone(),
        };
        let server = Server::start(
            listener,
            opts,
            Arc::clone(&processor),
            Arc::new(ConnectionRegistry::default()),
            Arc::clone(&counters),
            Arc::clone(&tracker),
        )
        .map_err(|source| BrokerError::Bind {
            addr: cfg.listen,
            source,
        })?;
        let local_addr = server.local_addr();
        let (stop_scan, stop_rx) = watch::channel(false);
        let scan = tokio::spawn(scan_loop(processor, cfg.clone(), stop_rx));
        tracing::info!(addr = %local_addr, "name server started");
        Ok(NameServerHandle {
            server: Some(server),
            local_addr,
            tracker,
            counters,
            stop_scan,
            scan,
        })
    }
}

impl NameServerHandle {
    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Counters of this server.
    pub fn stats(&self) -> BrokerStats {
        self.counters.snapshot()
    }

    /// Stops accepting, lets in-flight requests finish (bounded) and stops the expiry scan.
    pub async fn shutdown(mut self) {
        if let Some(server) = self.server.take() {
            server.stop().await;
        }
        self.stop_scan.send_replace(true);
        let _ = (&mut self.scan).await;
        if !self.tracker.wait_idle(DRAIN_TIMEOUT).await {
            tracing::warn!(
                live = self.tracker.live(),
                "name server stopped with tasks still running"
            );
        }
        tracing::info!(addr = %self.local_addr, "name server stopped");
    }
}

/// Drops brokers silent for longer than `broker_expiry`, every `scan_interval`.
async fn scan_loop(
    processor: Arc<NameServerProcessor>,
    cfg: NameServerConfig,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(cfg.scan_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let mut table = processor.table.lock();
        for addr in table.expired(Instant::now(), cfg.broker_expiry) {
            tracing::warn!(broker_addr = %addr, expiry = ?cfg.broker_expiry, "broker expired: no registration in time");
            table.remove_addr(&addr);
        }
    }
}

struct NameServerProcessor {
    table: Mutex<RouteTable>,
    limits: routes::Limits,
    /// PUT_KV_CONFIG's entries by (namespace, key).
    kv: Mutex<std::collections::BTreeMap<(String, String), String>>,
}

impl Processor for NameServerProcessor {
    fn process(
        self: Arc<Self>,
        conn: ConnectionHandle,
        req: RemotingCommand,
    ) -> impl std::future::Future<Output = Option<RemotingCommand>> + Send + 'static {
        // Everything here is quick map work: no await inside.
        let resp = match req.code {
            request_code::REGISTER_BROKER => self.register(&conn, &req),
            request_code::UNREGISTER_BROKER => self.unregister(&req),
            request_code::GET_ROUTEINFO_BY_TOPIC => self.route(&req),
            request_code::GET_BROKER_CLUSTER_INFO => self.cluster_info(&req),
            request_code::GET_ALL_TOPIC_LIST_FROM_NAMESERVER => self.topic_list(&req),
            request_code::PUT_KV_CONFIG => self.put_kv(&req),
            request_code::GET_KV_CONFIG => self.get_kv(&req),
            request_code::DELETE_KV_CONFIG => self.delete_kv(&req),
            _ => reply::not_supported(&req),
        };
        std::future::ready(Some(resp))
    }

    fn on_closed(&self, conn: &ConnectionHandle) {
        let mut table = self.table.lock();
        for addr in table.registered_over(conn.id()) {
            tracing::info!(broker_addr = %addr, remote = %conn.remote_addr(), "broker connection closed; broker removed");
            table.remove_addr(&addr);
        }
    }
}

impl NameServerProcessor {
    fn register(&self, conn: &ConnectionHandle, req: &RemotingCommand) -> RemotingCommand {
        let h = match RegisterBrokerRequestHeader::from_ext(&req.ext_fields) {
            Ok(h) => h,
            Err(e) => return reply::bad_header(req, &e),
        };
        if h.compressed == Some(true) {
            return reply::error(
                req,
                response_code::SYSTEM_ERROR,
                "compressed registration bodies are not supported",
            );
        }
        if let Some(crc) = h.body_crc32.filter(|c| *c != 0) {
            let actual = (crc32fast::hash(&req.body) & 0x7FFF_FFFF) as i32;
            if actual != crc {
                return reply::error(req, response_code::SYSTEM_ERROR, "crc32 not match");
            }
        }
        let body: RegisterBrokerBody = if req.body.is_empty() {
            RegisterBrokerBody::default()
        } else {
            match decode_json(&req.body) {
                Ok(b) => b,
                Err(e) => return reply::bad_body(req, "RegisterBrokerBody", &e),
            }
        };
        tracing::debug!(broker_name = %h.broker_name, broker_addr = %h.broker_addr, broker_id = h.broker_id,
            topics = body.topic_config_serialize_wrapper.topic_config_table.len(), "broker registered");
        let reg = Registration {
            cluster: h.cluster_name,
            broker_name: h.broker_name,
            broker_addr: h.broker_addr,
            broker_id: h.broker_id,
            body,
            conn_id: conn.id(),
        };
        let mut table = self.table.lock();
        if let Some(refusal) = table.refusal(&reg, self.limits) {
            let kept = matches!(refusal, routes::Refusal::Routes(_))
                && table.keep_alive(&reg, Instant::now());
            drop(table);
            let (routes::Refusal::Invalid(why) | routes::Refusal::Routes(why)) = refusal;
            tracing::warn!(remote = %conn.remote_addr(), reason = %why, kept_live = kept, "broker registration refused");
            let why = if kept {
                format!("{why}; the broker stays registered with the routes it had")
            } else {
                why
            };
            return reply::error(req, response_code::SYSTEM_ERROR, why);
        }
        table.register(reg, Instant::now());
        drop(table);
        // Java answers with the (empty) order-topic KV table.
        reply::ok_ext(req, RegisterBrokerResponseHeader::default().to_ext())
            .with_body(&br#"{"table":{}}"#[..])
    }

    fn unregister(&self, req: &RemotingCommand) -> RemotingCommand {
        let h = match UnregisterBrokerRequestHeader::from_ext(&req.ext_fields) {
            Ok(h) => h,
            Err(e) => return reply::bad_header(req, &e),
        };
        let removed = self.table.lock().remove_addr(&h.broker_addr);
        tracing::info!(broker_name = %h.broker_name, broker_addr = %h.broker_addr, removed, "broker unregistered");
        reply::ok(req)
    }

    fn route(&self, req: &RemotingCommand) -> RemotingCommand {
        let h = match GetRouteInfoRequestHeader::from_ext(&req.ext_fields) {
            Ok(h) => h,
            Err(e) => return reply::bad_header(req, &e),
        };
        let Some(route) = self.table.lock().route(&h.topic) else {
            return reply::error(
                req,
                response_code::TOPIC_NOT_EXIST,
                format!(
                    "No topic route info in name server for the topic: {}",
                    h.topic
                ),
            );
        };
        let form = JsonForm::for_client(req.version, h.accept_standard_json_only.unwrap_or(false));
        reply::ok(req).with_body(route.to_json(form))
    }

    /// `TopicList` JSON: every topic some live broker registered.
    fn topic_list(&self, req: &RemotingCommand) -> RemotingCommand {
        let topics = self.table.lock().topic_names();
        let body = serde_json::json!({ "topicList": topics });
        reply::ok(req).with_body(body.to_string().into_bytes())
    }

    fn put_kv(&self, req: &RemotingCommand) -> RemotingCommand {
        let h = match PutKvConfigRequestHeader::from_ext(&req.ext_fields) {
            Ok(h) => h,
            Err(e) => return reply::bad_header(req, &e),
        };
        let size = h.namespace.len() + h.key.len() + h.value.len();
        if size > KV_ENTRY_MAX {
            return reply::error(
                req,
                response_code::SYSTEM_ERROR,
                format!("a key/value entry is at most {KV_ENTRY_MAX} bytes, not {size}"),
            );
        }
        let mut kv = self.kv.lock();
        let key = (h.namespace, h.key);
        if kv.len() >= KV_MAX && !kv.contains_key(&key) {
            return reply::error(
                req,
                response_code::SYSTEM_ERROR,
                format!("the name server keeps at most {KV_MAX} key/value entries"),
            );
        }
        tracing::info!(namespace = %key.0, key = %key.1, "name server key/value stored");
        kv.insert(key, h.value);
        reply::ok(req)
    }

    fn get_kv(&self, req: &RemotingCommand) -> RemotingCommand {
        let h = match KvConfigKeyHeader::from_ext(&req.ext_fields) {
            Ok(h) => h,
            Err(e) => return reply::bad_header(req, &e),
        };
        match self.kv.lock().get(&(h.namespace.clone(), h.key.clone())) {
            Some(v) => reply::ok_ext(
                req,
                GetKvConfigResponseHeader {
                    value: Some(v.clone()),
                }
                .to_ext(),
            ),
            None => reply::error(
                req,
                response_code::QUERY_NOT_FOUND,
                format!("No config item, Namespace: {} Key: {}", h.namespace, h.key),
            ),
        }
    }

    fn delete_kv(&self, req: &RemotingCommand) -> RemotingCommand {
        let h = match KvConfigKeyHeader::from_ext(&req.ext_fields) {
            Ok(h) => h,
            Err(e) => return reply::bad_header(req, &e),
        };
        self.kv.lock().remove(&(h.namespace, h.key));
        reply::ok(req)
    }

    fn cluster_info(&self, req: &RemotingCommand) -> RemotingCommand {
        let info = self.table.lock().cluster_info();
        let form = JsonForm::for_client(req.version, false);
        reply::ok(req).with_body(info.to_json(form))
    }
}
