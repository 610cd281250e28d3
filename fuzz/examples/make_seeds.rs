//! Writes the seed corpora under `fuzz/corpus/<target>/`: real frames made by the protocol
//! encoder, real records and segments written by a real store, and real configuration and
//! HTTP bodies as the docs show them. Run it again after a format change:
//!
//! ```text
//! cargo run --manifest-path fuzz/Cargo.toml --example make_seeds
//! ```
//!
//! Generated seeds are named `seed-<hash of content>` and replaced on every run (records carry
//! the store's timestamps, so their names change); other files, such as minimised crash
//! inputs, are kept.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use bytes::BytesMut;
use sluice_fuzz::{store_config, SEGMENT};
use sluice_protocol::message::record::sysflag;
use sluice_protocol::remoting::body::{encode_json, heartbeat::HeartbeatData};
use sluice_protocol::remoting::custom::{SendHeaderForm, SendMessageRequestHeader};
use sluice_protocol::remoting::frame::encode_binary;
use sluice_protocol::{encode_batch, request_code, BatchEntry, Properties, RemotingCommand};
use sluice_store::{MessageInput, Store};

fn main() -> anyhow::Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("corpus");
    remove_generated(&root)?;
    let records = store_seeds(&root)?;
    for r in &records {
        seed(&root, "stored_record", r)?;
    }
    frame_seeds(&root)?;
    batch_seeds(&root)?;
    property_seeds(&root)?;
    config_seeds(&root)?;
    http_seeds(&root)?;
    Ok(())
}

/// Removes the seeds an earlier run generated.
fn remove_generated(root: &Path) -> anyhow::Result<()> {
    if !root.exists() {
        return Ok(());
    }
    for dir in std::fs::read_dir(root)? {
        for file in std::fs::read_dir(dir?.path())? {
            let path = file?.path();
            let generated = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("seed-"));
            if generated {
                std::fs::remove_file(path)?;
            }
        }
    }
    Ok(())
}

/// Writes one seed, named by a hash of its bytes.
fn seed(root: &Path, target: &str, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = root.join(target);
    std::fs::create_dir_all(&dir)?;
    let name = format!("seed-{:08x}", fnv1a(bytes));
    std::fs::write(dir.join(name), bytes)?;
    Ok(())
}

/// Recovery inputs feed both the end-to-end target and the pure segment walk.
fn recovery_seed(root: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    seed(root, "store_recovery", bytes)?;
    seed(root, "segment_scan", bytes)
}

fn fnv1a(bytes: &[u8]) -> u32 {
    // Enough to name files by content; no extra dependency.
    bytes.iter().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

fn props(pairs: &[(&str, &str)]) -> Properties {
    let mut p = Properties::new();
    for (k, v) in pairs {
        p.insert(*k, *v);
    }
    p
}

/// The messages the seeds hold: plain, tagged and keyed, a long (V2) topic, an IPv6 producer,
/// a prepared transactional half, an empty body.
fn sample_messages() -> Vec<MessageInput> {
    let mut plain = MessageInput::new("Orders", 0, &b"{\"order\": 42}"[..]);
    plain.properties = props(&[("UNIQ_KEY", "0A0000017B2C18B4AAC2")]).encode();
    let mut tagged = MessageInput::new("Orders", 1, &b"created"[..]);
    tagged.properties = props(&[
        ("TAGS", "Created"),
        ("KEYS", "order-42 user-7"),
        ("WAIT", "true"),
    ])
    .encode();
    let long_topic = MessageInput::new("T".repeat(160), 0, &b"v2 magic"[..]);
    let mut v6 = MessageInput::new("Orders", 2, &b"from ipv6"[..]);
    v6.born_host = SocketAddr::from(([0, 0, 0, 0, 0, 0, 0, 1], 45678));
    let mut half = MessageInput::new("RMQ_SYS_TRANS_HALF_TOPIC", 0, &b"half"[..]);
    half.sys_flag = sysflag::TRANSACTION_PREPARED;
    half.properties = props(&[("TRAN_MSG", "true"), ("PGROUP", "orders")]).encode();
    let empty = MessageInput::new("Empty", 0, &b""[..]);
    vec![plain, tagged, long_topic, v6, half, empty]
}

/// Appends the sample messages to a real store; writes recovery seeds (a clean log, the same
/// stopped uncleanly, a torn tail, two segments with an end marker) and returns the records.
fn store_seeds(root: &Path) -> anyhow::Result<Vec<Vec<u8>>> {
    let dir = tempfile::tempdir()?;
    let store = Store::open(store_config(dir.path()))?;
    let mut records = Vec::new();
    for m in sample_messages() {
        let at = store.append_blocking(vec![m])?[0];
        records.push(store.read_record(at.phys_offset)?.to_vec());
    }
    store.shutdown()?;
    drop(store);
    let first = trimmed(&std::fs::read(segment_path(dir.path(), 0))?);
    recovery_seed(root, &[[0u8].as_slice(), &first].concat())?;
    recovery_seed(root, &[[1u8].as_slice(), &first].concat())?;
    let torn = &first[..first.len() - 7];
    recovery_seed(root, &[[1u8].as_slice(), torn].concat())?;
    recovery_seed(root, &two_segments()?)?;
    Ok(records)
}

/// A log that rolled: the first segment ends with an end marker, the second holds a record.
fn two_segments() -> anyhow::Result<Vec<u8>> {
    let dir = tempfile::tempdir()?;
    let store = Store::open(store_config(dir.path()))?;
    let body = vec![b'x'; 3000];
    for i in 0..6 {
        store.append_blocking(vec![MessageInput::new("Roll", i % 2, body.clone())])?;
    }
    store.shutdown()?;
    drop(store);
    let mut first = std::fs::read(segment_path(dir.path(), 0))?;
    first.resize(SEGMENT, 0);
    let second = trimmed(&std::fs::read(segment_path(dir.path(), SEGMENT as u64))?);
    Ok([[2u8].as_slice(), &first, &second].concat())
}

fn segment_path(dir: &Path, base: u64) -> PathBuf {
    dir.join("commitlog").join(format!("{base:020}"))
}

/// The written part of a segment (a short file reads as zeros after it).
fn trimmed(seg: &[u8]) -> Vec<u8> {
    let end = seg.iter().rposition(|b| *b != 0).map_or(0, |p| p + 1);
    seg[..end].to_vec()
}

fn frame_seeds(root: &Path) -> anyhow::Result<()> {
    let send = send_request();
    let heartbeat = RemotingCommand::request(request_code::HEART_BEAT, Default::default())
        .with_body(encode_json(&HeartbeatData {
            client_id: "127.0.0.1@4242".into(),
            ..HeartbeatData::default()
        }))
        .with_opaque(2);
    let max_offset = RemotingCommand::request(
        request_code::GET_MAX_OFFSET,
        [("topic", "Orders"), ("queueId", "0")]
            .into_iter()
            .collect(),
    )
    .with_opaque(3);
    let response = RemotingCommand::response_to(&send, 0, Some("ok".into()));
    let oversize = send_request().with_body(vec![b'z'; 1500]).with_opaque(4);
    let mut two = BytesMut::new();
    for cmd in [&send, &heartbeat, &max_offset, &response, &oversize] {
        let mut one = BytesMut::new();
        cmd.encode(&mut one)?;
        seed(root, "remoting_frame", &one)?;
        two.extend_from_slice(&one);
    }
    seed(root, "remoting_frame", &two)?;
    let mut binary = BytesMut::new();
    encode_binary(&send, &mut binary)?;
    seed(root, "remoting_frame", &binary)?;
    Ok(())
}

fn send_request() -> RemotingCommand {
    let header = SendMessageRequestHeader {
        producer_group: "orders".into(),
        topic: "Orders".into(),
        default_topic: "TBW102".into(),
        default_topic_queue_nums: 4,
        queue_id: 0,
        born_timestamp: 1_700_000_000_000,
        properties: Some(props(&[("TAGS", "Created"), ("KEYS", "order-42")]).encode()),
        ..SendMessageRequestHeader::default()
    };
    RemotingCommand::request(
        request_code::SEND_MESSAGE_V2,
        header.to_ext(SendHeaderForm::V2),
    )
    .with_body(&b"{\"order\": 42}"[..])
    .with_opaque(1)
}

fn batch_seeds(root: &Path) -> anyhow::Result<()> {
    let p1 = props(&[("UNIQ_KEY", "AAA"), ("TAGS", "a")]).encode();
    let p2 = props(&[("KEYS", "k1 k2")]).encode();
    let entries = [
        BatchEntry {
            flag: 0,
            body: b"first",
            properties: p1.as_bytes(),
        },
        BatchEntry {
            flag: 7,
            body: b"",
            properties: p2.as_bytes(),
        },
        BatchEntry {
            flag: 0,
            body: b"third message",
            properties: b"",
        },
    ];
    for n in [1, 3] {
        let mut out = Vec::new();
        encode_batch(entries[..n].iter(), &mut out)?;
        seed(root, "batch_body", &out)?;
    }
    Ok(())
}

fn property_seeds(root: &Path) -> anyhow::Result<()> {
    for m in sample_messages() {
        if !m.properties.is_empty() {
            seed(root, "properties", m.properties.as_bytes())?;
        }
    }
    seed(
        root,
        "properties",
        b"A\x011\x02B\x01\x02\x01x\x02A\x012\x02junk\x02",
    )?;
    Ok(())
}

const CONFIGS: &[&str] = &[
    "",
    "data_dir = \"/var/lib/sluice\"\n\n[broker]\nlisten = \"0.0.0.0:10911\"\nbroker_name = \"broker-a\"\nmax_body_bytes = 4194304\n\n[store]\nflush = \"sync\"\nretention_hours = 72\n",
    "[http]\nlisten = \"0.0.0.0:8080\"\n\n[[http.tokens]]\nname = \"orders-service\"\nsecret = \"a-long-random-secret-of-at-least-16-chars\"\nscopes = [\"producer\"]\n",
    "[retry]\nmax_reconsume_times = 16\nclient_max_wins = true\nbackoff = \"levels\"\nfirst_level = 3\nmax_level = 18\n\n[retry.groups.fast]\nbackoff = \"ladder\"\nladder_ms = [200, 500]\nmax_reconsume_times = 3\n",
    "[txn]\ncheck_after_ms = 6000\ncheck_max = 15\nfinal_action = \"rollback\"\n\n[txn.groups.orders]\ncheck_url = \"http://127.0.0.1:9000/check\"\nfinal_action = \"keep\"\n\n[schedule]\nlevels_ms = [1000, 5000, 10000]\nmax_delay_secs = 86400\n",
    "[store]\nflush = \"async\"\nasync_flush_interval_ms = 200\n\0SLUICE_BROKER_MAX_CONNECTIONS=100\0SLUICE_DATA_DIR=/tmp/sluice\0SLUICE_NAMESRV_ENABLED=false",
];

fn config_seeds(root: &Path) -> anyhow::Result<()> {
    for c in CONFIGS {
        seed(root, "server_config", c.as_bytes())?;
    }
    Ok(())
}

const BODIES: &[&str] = &[
    r#"{"body": "{\"order\": 42}", "tag": "Created", "keys": ["order-42"]}"#,
    r#"{"body": "pay order 42", "keys": ["order-42"], "delay_ms": 900000}"#,
    r#"{"body_base64": "AAECAwQ=", "properties": {"region": "eu"}, "sharding_key": "u7", "deliver_at_ms": 1700000000000}"#,
    r#"{"messages": [{"body": "one", "sharding_key": "k"}, {"body_base64": "%%%"}, {"bogus": 1}]}"#,
    r#"{"body": "x", "producer_group": "orders", "check_url": "http://127.0.0.1:9000/check", "keys": ["order-42"]}"#,
    r#"{"state": "commit"}"#,
    r#"{"max": 10, "wait_ms": 5000, "visibility_ms": 30000, "tag": "a||b"}"#,
    r#"{"receipts": ["r1", "r2"]}"#,
    r#"{"receipts": ["r1"], "delay_ms": 1000}"#,
    r#"{"receipts": ["r1"], "visibility_ms": 60000}"#,
    r#"{"delay_ms": 60000}"#,
    r#"{"original_topic": "Orders", "key": "order-42", "since_ms": 0, "target_topic": "Replay"}"#,
];

fn http_seeds(root: &Path) -> anyhow::Result<()> {
    for b in BODIES {
        seed(root, "http_bodies", b.as_bytes())?;
    }
    Ok(())
}
