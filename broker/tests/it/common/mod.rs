//! Helpers shared by the broker's integration tests: an in-process name server + broker on
//! 127.0.0.1 port 0 with a temporary data folder, request builders, record decoding, and raw
//! frame I/O for hostile-input tests.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use bytes::BytesMut;
use sluice_broker::{
    Broker, BrokerConfig, BrokerHandle, NameServer, NameServerConfig, NameServerHandle,
    RemotingClient,
};
use sluice_protocol::remoting::custom::{
    pull_sysflag, PullMessageRequestHeader, SendHeaderForm, SendMessageRequestHeader,
};
use sluice_protocol::{
    request_code, ExtFields, FrameDecoder, Properties, RecordView, RemotingCommand,
};
use sluice_store::StoreConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Timeout of every test RPC.
pub const RPC: Duration = Duration::from_secs(10);

/// A name server and a broker registered with it.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub namesrv: NameServerHandle,
    pub broker: BrokerHandle,
}

pub fn localhost() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

pub fn broker_config(data_dir: &Path, namesrv: SocketAddr) -> BrokerConfig {
    let mut cfg = BrokerConfig::new(StoreConfig::for_tests(data_dir));
    cfg.listen = localhost();
    cfg.namesrv_addrs = vec![namesrv];
    cfg
}

pub async fn start_namesrv() -> NameServerHandle {
    let cfg = NameServerConfig {
        listen: localhost(),
        ..NameServerConfig::default()
    };
    NameServer::start(cfg).await.expect("name server starts")
}

pub async fn start_cluster() -> Cluster {
    start_cluster_with(|_| {}).await
}

/// A name server and a broker whose config `tweak` adjusts first.
pub async fn start_cluster_with(tweak: impl FnOnce(&mut BrokerConfig)) -> Cluster {
    let dir = tempfile::tempdir().expect("temp dir");
    let namesrv = start_namesrv().await;
    let mut cfg = broker_config(dir.path(), namesrv.local_addr());
    tweak(&mut cfg);
    let broker = Broker::start(cfg).await.expect("broker starts");
    Cluster {
        dir,
        namesrv,
        broker,
    }
}

impl Cluster {
    /// Stops the broker cleanly, runs `between` on its data folder (to write the state a crash
    /// would leave, say), and starts it again there with the default test config.
    pub async fn restart(self, between: impl FnOnce(&Path)) -> Cluster {
        let Cluster {
            dir,
            namesrv,
            broker,
        } = self;
        broker.shutdown().await;
        between(dir.path());
        let cfg = broker_config(dir.path(), namesrv.local_addr());
        let broker = Broker::start(cfg)
            .await
            .expect("broker restarts on its data folder");
        Cluster {
            dir,
            namesrv,
            broker,
        }
    }

    pub async fn client(&self) -> RemotingClient {
        RemotingClient::connect(self.broker.local_addr())
            .await
            .expect("connect to broker")
    }

    pub async fn stop(self) {
        self.broker.shutdown().await;
        self.namesrv.shutdown().await;
    }
}

/// A SEND_MESSAGE_V2 request.
pub fn send_request(
    topic: &str,
    queue_id: i32,
    body: &[u8],
    props: &Properties,
) -> RemotingCommand {
    let header = SendMessageRequestHeader {
        producer_group: "test_producer".into(),
        topic: topic.into(),
        default_topic: "TBW102".into(),
        default_topic_queue_nums: 4,
        queue_id,
        sys_flag: 0,
        born_timestamp: 1_700_000_000_000,
        flag: 0,
        properties: Some(props.encode()),
        ..SendMessageRequestHeader::default()
    };
    RemotingCommand::request(
        request_code::SEND_MESSAGE_V2,
        header.to_ext(SendHeaderForm::V2),
    )
    .with_body(body.to_vec())
}

pub fn props(tags: Option<&str>, keys: Option<&str>) -> Properties {
    let mut p = Properties::new();
    if let Some(t) = tags {
        p.insert("TAGS", t);
    }
    if let Some(k) = keys {
        p.insert("KEYS", k);
    }
    p
}

/// Sends and asserts SUCCESS; returns the response.
pub async fn send_ok(
    client: &RemotingClient,
    topic: &str,
    queue_id: i32,
    body: &[u8],
    p: &Properties,
) -> RemotingCommand {
    let resp = client
        .invoke(send_request(topic, queue_id, body, p), RPC)
        .await
        .expect("send answered");
    assert_eq!(resp.code, 0, "send failed: {:?}", resp.remark);
    resp
}

/// A PULL_MESSAGE request.
pub fn pull_request(
    group: &str,
    topic: &str,
    queue_id: i32,
    offset: i64,
    suspend_ms: i64,
    subscription: Option<&str>,
) -> RemotingCommand {
    let mut sys_flag = 0;
    if suspend_ms > 0 {
        sys_flag |= pull_sysflag::SUSPEND;
    }
    if subscription.is_some() {
        sys_flag |= pull_sysflag::SUBSCRIPTION;
    }
    let header = PullMessageRequestHeader {
        consumer_group: group.into(),
        topic: topic.into(),
        queue_id,
        queue_offset: offset,
        max_msg_nums: 32,
        sys_flag,
        commit_offset: 0,
        suspend_timeout_millis: suspend_ms,
        subscription: subscription.map(str::to_owned),
        sub_version: 0,
        ..PullMessageRequestHeader::default()
    };
    RemotingCommand::request(request_code::PULL_MESSAGE, header.to_ext())
}

/// One decoded record, owned.
#[derive(Debug, Clone)]
pub struct Msg {
    pub queue_offset: i64,
    pub body: Vec<u8>,
    pub topic: String,
    pub props: Properties,
}

/// Splits a pull body into records.
pub fn decode_records(mut body: &[u8]) -> Vec<Msg> {
    let mut out = Vec::new();
    while !body.is_empty() {
        let view = RecordView::parse(body, usize::MAX).expect("valid record in pull body");
        out.push(Msg {
            queue_offset: view.header.queue_offset,
            body: view.body.to_vec(),
            topic: view.topic.to_owned(),
            props: Properties::decode(view.properties),
        });
        body = &body[view.total_size..];
    }
    out
}

pub fn ext_i64(cmd: &RemotingCommand, key: &str) -> i64 {
    cmd.ext_fields
        .get_str(key)
        .unwrap_or_else(|| panic!("response lacks {key}: {:?}", cmd.ext_fields))
        .parse()
        .unwrap_or_else(|_| panic!("{key} is not a decimal string"))
}

/// Pulls everything from `offset` until caught up (bounded number of rounds).
pub async fn pull_all(
    client: &RemotingClient,
    group: &str,
    topic: &str,
    queue_id: i32,
    mut offset: i64,
    sub: Option<&str>,
) -> Vec<Msg> {
    let mut out = Vec::new();
    for _ in 0..1000 {
        let resp = client
            .invoke(pull_request(group, topic, queue_id, offset, 0, sub), RPC)
            .await
            .expect("pull answered");
        match resp.code {
            0 => out.extend(decode_records(&resp.body)),
            20 => {}
            19 => return out,
            other => panic!("unexpected pull code {other}: {:?}", resp.remark),
        }
        offset = ext_i64(&resp, "nextBeginOffset");
    }
    panic!("pull did not catch up in 1000 rounds");
}

pub fn ext(pairs: &[(&str, &str)]) -> ExtFields {
    pairs.iter().copied().collect()
}

// ---- raw frames ----

pub fn frame(cmd: &RemotingCommand) -> Vec<u8> {
    let mut buf = BytesMut::new();
    cmd.encode(&mut buf).expect("encodable");
    buf.to_vec()
}

/// A raw socket to a server, for frames a well-behaved client would never send.
pub struct Raw {
    pub stream: TcpStream,
    buf: BytesMut,
}

impl Raw {
    pub async fn connect(addr: SocketAddr) -> Self {
        Self {
            stream: TcpStream::connect(addr).await.expect("raw connect"),
            buf: BytesMut::new(),
        }
    }

    pub async fn write(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("raw write");
    }

    pub async fn send(&mut self, cmd: &RemotingCommand) {
        self.write(&frame(cmd)).await;
    }

    /// The next frame; `None` on EOF, reset or timeout.
    pub async fn read_frame(&mut self, timeout: Duration) -> Option<RemotingCommand> {
        self.read_typed_frame(timeout).await.map(|(_, cmd)| cmd)
    }

    /// The next frame with its serialize-type byte (0 JSON, 1 binary).
    pub async fn read_typed_frame(&mut self, timeout: Duration) -> Option<(u8, RemotingCommand)> {
        let decoder = FrameDecoder::new(64 << 20, 64 << 20);
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let serialize_type = self.buf.get(4).copied();
            if let Ok(Some(cmd)) = decoder.decode(&mut self.buf) {
                return Some((serialize_type.unwrap_or_default(), cmd));
            }
            let mut chunk = [0u8; 65536];
            let n = tokio::time::timeout_at(deadline, self.stream.read(&mut chunk))
                .await
                .ok()?
                .ok()?;
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// True when the peer closed the socket (EOF or reset) within `timeout`.
    pub async fn closed_by_peer(&mut self, timeout: Duration) -> bool {
        let mut chunk = [0u8; 4096];
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => return false,
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => {}
            }
        }
    }
}

/// Waits (bounded) until every stored message is visible to pulls.
pub async fn wait_dispatched(broker: &BrokerHandle) {
    let store = broker.store();
    let done = tokio::task::spawn_blocking(move || store.wait_dispatched(Duration::from_secs(10)))
        .await
        .expect("wait task");
    assert!(done, "store did not dispatch in time");
}

impl Raw {
    /// The next frame as raw parts: header JSON text and body (JSON headers only).
    pub async fn read_raw(&mut self, timeout: Duration) -> Option<(String, Vec<u8>)> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.buf.len() >= 8 {
                let len = u32::from_be_bytes(self.buf[..4].try_into().unwrap()) as usize;
                if self.buf.len() >= 4 + len {
                    let frame = self.buf.split_to(4 + len);
                    let header_len =
                        (u32::from_be_bytes(frame[4..8].try_into().unwrap()) & 0xFF_FFFF) as usize;
                    let header = String::from_utf8(frame[8..8 + header_len].to_vec()).unwrap();
                    return Some((header, frame[8 + header_len..].to_vec()));
                }
            }
            let mut chunk = [0u8; 65536];
            let n = tokio::time::timeout_at(deadline, self.stream.read(&mut chunk))
                .await
                .ok()?
                .ok()?;
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// A frame with a hand-written JSON header.
pub fn json_frame(header: &str, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&((4 + header.len() + body.len()) as u32).to_be_bytes());
    out.extend_from_slice(&(header.len() as u32).to_be_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(body);
    out
}
