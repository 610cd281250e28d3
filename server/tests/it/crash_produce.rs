//! SIGKILL of the real `sluice` process during SYNC_FLUSH produce: after a restart, every
//! message the client saw acknowledged is consumed, intact. Five kills over one data folder,
//! eight concurrent producers each time, at a random moment.

use crate::common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use rand::{Rng, SeedableRng};
use shared::Acks;
use sluice_protocol::message::record::RecordView;
use sluice_protocol::remoting::custom::{
    PullMessageRequestHeader, SendHeaderForm, SendMessageRequestHeader,
};
use sluice_protocol::{request_code, response_code, Properties, RemotingCommand};
use sluice_remoting::RemotingClient;

const TOPIC: &str = "CrashTopic";
const QUEUES: i32 = 4;
const RPC: Duration = Duration::from_secs(10);
/// A kill's random delay starts once this many sends of its cycle were acknowledged (waited
/// for up to 60 s), so the test's floor (over 500 in all) holds however slow the syncs are:
/// 5 cycles * 101 > 500.
const MIN_ACKS_PER_KILL: usize = 101;

/// Acknowledged sends shared by the producer tasks, without extra dependencies.
mod shared {
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    /// key -> (queue id, queue offset)
    #[derive(Default)]
    pub struct Acks(pub Mutex<BTreeMap<String, (i32, i64)>>);
}

fn send_request(key: &str, queue_id: i32) -> RemotingCommand {
    let mut p = Properties::new();
    p.insert("KEYS", key);
    let header = SendMessageRequestHeader {
        producer_group: "crash_producer".into(),
        topic: TOPIC.into(),
        default_topic: "TBW102".into(),
        default_topic_queue_nums: QUEUES,
        queue_id,
        born_timestamp: 1_700_000_000_000,
        properties: Some(p.encode()),
        ..SendMessageRequestHeader::default()
    };
    RemotingCommand::request(
        request_code::SEND_MESSAGE_V2,
        header.to_ext(SendHeaderForm::V2),
    )
    .with_body(body_for(key).into_bytes())
}

fn body_for(key: &str) -> String {
    format!("payload of {key} ").repeat(8)
}

/// Sends until the connection dies (the kill); records every acknowledged send.
async fn producer(broker: std::net::SocketAddr, id: usize, cycle: usize, acks: Arc<Acks>) {
    let Ok(client) = RemotingClient::connect(broker).await else {
        return;
    };
    for n in 0..100_000usize {
        let key = format!("c{cycle}-p{id}-{n}");
        let qid = (n % QUEUES as usize) as i32;
        match client.invoke(send_request(&key, qid), RPC).await {
            Ok(resp) if resp.code == response_code::SUCCESS => {
                let off = resp
                    .ext_fields
                    .get_str("queueOffset")
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(-1);
                acks.0.lock().unwrap().insert(key, (qid, off));
            }
            Ok(resp) => panic!("send refused: {} {:?}", resp.code, resp.remark),
            Err(_) => return, // the broker is gone
        }
    }
}

/// Reads every message of every queue from offset 0: key -> (queue, offset, body).
async fn consume_all(broker: std::net::SocketAddr) -> BTreeMap<String, (i32, i64, String)> {
    let client = RemotingClient::connect(broker).await.unwrap();
    let mut out = BTreeMap::new();
    for qid in 0..QUEUES {
        let mut offset = 0i64;
        for _ in 0..100_000 {
            let h = PullMessageRequestHeader {
                consumer_group: "crash_checker".into(),
                topic: TOPIC.into(),
                queue_id: qid,
                queue_offset: offset,
                max_msg_nums: 32,
                sys_flag: sluice_protocol::remoting::custom::pull_sysflag::SUBSCRIPTION,
                subscription: Some("*".into()),
                ..PullMessageRequestHeader::default()
            };
            let resp = client
                .invoke(
                    RemotingCommand::request(request_code::PULL_MESSAGE, h.to_ext()),
                    RPC,
                )
                .await
                .unwrap();
            if resp.code != response_code::SUCCESS {
                assert_eq!(
                    resp.code,
                    response_code::PULL_NOT_FOUND,
                    "pull: {:?}",
                    resp.remark
                );
                break;
            }
            let mut body = &resp.body[..];
            while !body.is_empty() {
                let v = RecordView::parse(body, usize::MAX).expect("pulled record parses");
                v.verify_body_crc().expect("body CRC");
                let props = Properties::decode(v.properties);
                let key = props.get("KEYS").unwrap().to_string();
                out.insert(
                    key,
                    (
                        qid,
                        v.header.queue_offset,
                        String::from_utf8_lossy(v.body).into_owned(),
                    ),
                );
                body = &body[v.total_size..];
            }
            offset = resp
                .ext_fields
                .get_str("nextBeginOffset")
                .unwrap()
                .parse()
                .unwrap();
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_send_is_consumed_after_sigkill_and_restart() {
    let data = tempfile::tempdir().unwrap();
    let (nsp, bp) = (free_port(), free_port());
    let mut rng = rand::rngs::StdRng::seed_from_u64(0xC0FFEE);
    let acks = Arc::new(Acks::default());
    for cycle in 0..5 {
        let before = acks.0.lock().unwrap().len();
        let sluice = start(data.path(), nsp, bp);
        let tasks: Vec<_> = (0..8)
            .map(|id| tokio::spawn(producer(sluice.broker, id, cycle, Arc::clone(&acks))))
            .collect();
        // The random kill time counts from the first acknowledgements of this cycle, so a
        // slow start or slow syncs on a loaded machine cannot leave a cycle with little or
        // nothing at risk. Bounded: past 60 s the kill comes with what was acknowledged, if any.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let got = acks.0.lock().unwrap().len() - before;
            if got >= MIN_ACKS_PER_KILL {
                break;
            }
            if std::time::Instant::now() >= deadline {
                assert!(got > 0, "cycle {cycle}: no ack in 60 s");
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.gen_range(200..900))).await;
        sluice.kill();
        // A producer's panic (a send refused by a live broker) fails the test.
        for t in tasks {
            tokio::time::timeout(Duration::from_secs(30), t)
                .await
                .expect("producer ends")
                .expect("producer panicked");
        }
    }
    let sluice = start(data.path(), nsp, bp);
    let consumed = consume_all(sluice.broker).await;
    let acked = acks.0.lock().unwrap().clone();
    assert!(
        acked.len() > 500,
        "too few acknowledged sends to prove anything: {}",
        acked.len()
    );
    for (key, (qid, off)) in &acked {
        let got = consumed
            .get(key)
            .unwrap_or_else(|| panic!("acknowledged {key} lost after SIGKILL"));
        assert_eq!(
            (got.0, got.1),
            (*qid, *off),
            "{key} kept its queue and offset"
        );
        assert_eq!(got.2, body_for(key), "{key} intact");
    }
    for qid in 0..QUEUES {
        let mut offs: Vec<i64> = consumed
            .values()
            .filter(|v| v.0 == qid)
            .map(|v| v.1)
            .collect();
        offs.sort_unstable();
        assert_eq!(
            offs,
            (0..offs.len() as i64).collect::<Vec<_>>(),
            "queue {qid} offsets contiguous"
        );
    }
    eprintln!(
        "{} acknowledged sends over 5 kills, all consumed ({} stored)",
        acked.len(),
        consumed.len()
    );
    sluice.stop();
}
