//! Registration with name servers: at start, every `register_interval`, at once after a topic
//! change, and an unregistration at shutdown. One connection per name server, made again on
//! the next attempt when it broke. A name server that is down delays nothing else: all are
//! contacted concurrently, each with its own timeout.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use sluice_protocol::remoting::body::{encode_json, RegisterBrokerBody};
use sluice_protocol::remoting::custom::{
    RegisterBrokerRequestHeader, UnregisterBrokerRequestHeader,
};
use sluice_protocol::{request_code, response_code, RemotingCommand};
use tokio::sync::{watch, Mutex};
use tokio::task::JoinSet;

use crate::remoting::{ClientOptions, RemotingClient};
use crate::topic::TopicManager;
use sluice_remoting::{ClientTls, RemotingError};

/// Timeout of one registration call (Java: 6 s; ours is a local, small body).
const CALL_TIMEOUT: Duration = Duration::from_secs(3);

/// Who we are, as name servers are told.
#[derive(Debug, Clone)]
pub(crate) struct Identity {
    pub(crate) broker_name: String,
    pub(crate) cluster_name: String,
    pub(crate) broker_addr: SocketAddr,
}

/// How the registrations went: whether one was ever accepted, and the newest failure.
#[derive(Debug, Default)]
pub(crate) struct RegistrationStatus {
    inner: parking_lot::Mutex<(bool, Option<String>)>,
}

impl RegistrationStatus {
    fn accepted(&self) {
        self.inner.lock().0 = true;
    }

    fn failed(&self, addr: SocketAddr, why: impl std::fmt::Display) {
        self.inner.lock().1 = Some(format!("{addr}: {why}"));
    }

    /// Why TCP clients cannot find this broker, if no name server accepted a registration
    /// since the start: a broker whose registrations all fail from the first (a TLS
    /// certificate its own client refuses, a wrong address) answered ready while no
    /// RocketMQ client could route to it. Once one was accepted, later failures (a name
    /// server down for a while) are logged, not made a readiness failure: HTTP clients need
    /// no route, and every broker of a cluster would be taken out of service at once.
    pub(crate) fn problem(&self) -> Option<String> {
        let (ok, error) = &*self.inner.lock();
        (!ok).then(|| {
            let why = error.as_deref().unwrap_or("no answer yet");
            format!("no name server has accepted this broker's registration ({why})")
        })
    }
}

/// Registers this broker with its name servers.
pub(crate) struct Registrar {
    identity: Identity,
    topics: Arc<TopicManager>,
    servers: Vec<(SocketAddr, Mutex<Option<RemotingClient>>)>,
    /// How to connect: TLS towards TLS-only name servers.
    client: ClientOptions,
    status: Arc<RegistrationStatus>,
}

impl Registrar {
    pub(crate) fn new(
        identity: Identity,
        topics: Arc<TopicManager>,
        addrs: &[SocketAddr],
        tls: Option<ClientTls>,
        status: Arc<RegistrationStatus>,
    ) -> Self {
        Self {
            identity,
            topics,
            servers: addrs.iter().map(|a| (*a, Mutex::new(None))).collect(),
            client: ClientOptions {
                tls,
                ..ClientOptions::default()
            },
            status,
        }
    }

    /// Registers with every name server; failures are logged and retried next time.
    pub(crate) async fn register_all(self: &Arc<Self>) {
        let body = RegisterBrokerBody {
            filter_server_list: Vec::new(),
            topic_config_serialize_wrapper: self.topics.snapshot(),
        };
        let body = encode_json(&body);
        let header = RegisterBrokerRequestHeader {
            broker_name: self.identity.broker_name.clone(),
            broker_addr: self.identity.broker_addr.to_string(),
            cluster_name: self.identity.cluster_name.clone(),
            ha_server_addr: ha_addr(self.identity.broker_addr),
            broker_id: 0,
            body_crc32: Some((crc32fast::hash(&body) & 0x7FFF_FFFF) as i32),
            ..RegisterBrokerRequestHeader::default()
        };
        let cmd = RemotingCommand::request(request_code::REGISTER_BROKER, header.to_ext())
            .with_body(body);
        self.call_all(cmd).await;
    }

    /// Tells every name server we are leaving.
    pub(crate) async fn unregister_all(self: &Arc<Self>) {
        let header = UnregisterBrokerRequestHeader {
            broker_name: self.identity.broker_name.clone(),
            broker_addr: self.identity.broker_addr.to_string(),
            cluster_name: self.identity.cluster_name.clone(),
            broker_id: 0,
        };
        let cmd = RemotingCommand::request(request_code::UNREGISTER_BROKER, header.to_ext());
        self.call_all(cmd).await;
        for (_, slot) in &self.servers {
            slot.lock().await.take();
        }
    }

    async fn call_all(self: &Arc<Self>, cmd: RemotingCommand) {
        let mut calls = JoinSet::new();
        for i in 0..self.servers.len() {
            let (me, cmd) = (Arc::clone(self), cmd.clone());
            calls.spawn(async move { me.call_one(i, cmd).await });
        }
        while calls.join_next().await.is_some() {}
    }

    async fn call_one(&self, index: usize, cmd: RemotingCommand) {
        let (addr, slot) = &self.servers[index];
        let mut slot = slot.lock().await;
        if slot.as_ref().is_none_or(RemotingClient::is_closed) {
            match RemotingClient::connect_with(*addr, self.client.clone()).await {
                Ok(c) => *slot = Some(c),
                Err(e) => {
                    tracing::warn!(namesrv = %addr, error = %e, "cannot reach name server");
                    self.status.failed(*addr, &e);
                    return;
                }
            }
        }
        let Some(client) = slot.as_ref() else { return };
        let code = cmd.code;
        match client.invoke(cmd, CALL_TIMEOUT).await {
            Ok(resp) if resp.code == response_code::SUCCESS => {
                tracing::debug!(namesrv = %addr, code, "name server call done");
                if code == request_code::REGISTER_BROKER {
                    self.status.accepted();
                }
            }
            Ok(resp) => {
                // Error, not warning: a name server that keeps refusing our registration drops
                // this broker from every route once `broker_expiry` passes.
                tracing::error!(namesrv = %addr, code, response = resp.code, remark = ?resp.remark, "name server refused");
                self.status.failed(
                    *addr,
                    format!(
                        "refused ({}): {}",
                        resp.code,
                        resp.remark.unwrap_or_default()
                    ),
                );
            }
            // A slow answer keeps the connection: the name server drops every broker
            // registered over a connection when it closes, so closing it on a timeout took
            // this broker out of every route until the next registration (up to 30 s later).
            Err(e @ RemotingError::Timeout { .. }) => {
                tracing::warn!(namesrv = %addr, code, error = %e, "name server call timed out; the connection is kept");
                self.status.failed(*addr, &e);
            }
            Err(e) => {
                tracing::warn!(namesrv = %addr, code, error = %e, "name server call failed");
                self.status.failed(*addr, &e);
                *slot = None;
            }
        }
    }

    /// Registers every `interval`, and at once when topics change, until `stop` flips.
    pub(crate) async fn run(self: Arc<Self>, interval: Duration, mut stop: watch::Receiver<bool>) {
        let changed = Arc::clone(&self.topics.changed);
        loop {
            tokio::select! {
                () = tokio::time::sleep(interval) => {}
                () = changed.notified() => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            self.register_all().await;
        }
    }
}

/// Java sends `brokerIP2:haListenPort` (listen port + 1); there is no HA yet, but the field is
/// required.
fn ha_addr(addr: SocketAddr) -> String {
    SocketAddr::new(addr.ip(), addr.port().wrapping_add(1)).to_string()
}
