//! The client side of transactions, checked on the wire against a scripted fake broker (Sluice's
//! broker does not take half messages until its transaction extension lands): the half send,
//! END_TRANSACTION's headers for commit / rollback / unknown (errors and panics), and
//! CHECK_TRANSACTION_STATE answered by another producer of the group after the first one
//! crashed between its local commit and END_TRANSACTION. The same fake never answers a send to
//! `SILENT` and answers the route of `SLOW_ROUTE` late, for the producer's send budget.

use crate::common;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{init_tracing, wait_until};
use parking_lot::Mutex;
use sluice_client::{
    ClientConfig, ConsumedMessage, Message, ProducerBuilder, TransactionProducer, TransactionState,
};
use sluice_protocol::message::record::{encode_record, RecordHeader};
use sluice_protocol::message::{offset_msg_id, sysflag};
use sluice_protocol::remoting::body::{
    decode_json, BrokerData, HeartbeatData, JsonForm, QueueData, TopicRouteData,
};
use sluice_protocol::remoting::custom::{
    CheckTransactionStateRequestHeader, EndTransactionRequestHeader, SendMessageRequestHeader,
    SendMessageResponseHeader,
};
use sluice_protocol::{request_code, FrameDecoder, Properties, RemotingCommand};
use sluice_remoting::io::{write_loop, FrameReader, Inbound};
use sluice_remoting::ConnectionHandle;
use tokio::net::TcpListener;

const GROUP: &str = "tx-pg";
const TOPIC: &str = "TxTopic";
/// Sends to this topic are recorded and never answered.
const SILENT: &str = "Silent";
/// The route of this topic is answered after a second.
const SLOW_ROUTE: &str = "SlowRoute";
/// Commit-log offset the fake reports for the n-th half message: BASE + n.
const PHYS_BASE: i64 = 4096;
/// Queue offset the fake reports for the n-th half message: QUEUE_BASE + n.
const QUEUE_BASE: i64 = 7;

/// What the fake broker saw.
#[derive(Default)]
struct Seen {
    sends: Vec<SendMessageRequestHeader>,
    ends: Vec<(EndTransactionRequestHeader, Option<String>)>,
    /// Producer connections by client id, from heartbeats.
    producers: HashMap<String, ConnectionHandle>,
}

/// A name server and broker in one: routes `TxTopic` to itself and answers sends.
struct FakeBroker {
    addr: SocketAddr,
    seen: Arc<Mutex<Seen>>,
}

impl FakeBroker {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let counter = Arc::new(AtomicI64::new(0));
        let state = Arc::clone(&seen);
        tokio::spawn(async move {
            let mut next_id = 1u64;
            while let Ok((sock, peer)) = listener.accept().await {
                let (rd, wr) = sock.into_split();
                let (tx, rx) = tokio::sync::mpsc::channel(64);
                let conn = ConnectionHandle::new(next_id, peer, addr, tx);
                next_id += 1;
                tokio::spawn(write_loop(wr, rx, conn.clone()));
                let reader = FrameReader::new(rd, FrameDecoder::new(16 << 20, 16 << 20));
                tokio::spawn(serve(
                    reader,
                    conn,
                    addr,
                    Arc::clone(&state),
                    Arc::clone(&counter),
                ));
            }
        });
        Self { addr, seen }
    }

    fn config(&self) -> ClientConfig {
        ClientConfig::new(&self.addr.to_string()).with_rpc_timeout(Duration::from_secs(5))
    }

    fn ends(&self) -> Vec<(EndTransactionRequestHeader, Option<String>)> {
        self.seen.lock().ends.clone()
    }

    /// Sends CHECK_TRANSACTION_STATE for a half message to the producer `client_id`.
    async fn check(&self, client_id: &str, uniq: &str, table_offset: i64, phys: i64, pgroup: &str) {
        let conn = self
            .seen
            .lock()
            .producers
            .get(client_id)
            .cloned()
            .expect("producer connected");
        let mut props = Properties::new();
        props.insert("UNIQ_KEY", uniq);
        props.insert("TRAN_MSG", "true");
        props.insert("PGROUP", pgroup);
        props.insert("__transactionId__", uniq);
        let header = RecordHeader {
            queue_offset: table_offset,
            physical_offset: phys,
            store_host: self.addr,
            born_host: self.addr,
            ..RecordHeader::default()
        };
        let mut body = Vec::new();
        encode_record(
            &header,
            b"order 1",
            TOPIC,
            props.encode().as_bytes(),
            &mut body,
        )
        .unwrap();
        let h = CheckTransactionStateRequestHeader {
            topic: Some(TOPIC.into()),
            tran_state_table_offset: table_offset,
            commit_log_offset: phys,
            msg_id: Some(uniq.into()),
            transaction_id: Some(uniq.into()),
            offset_msg_id: Some(offset_msg_id(self.addr, phys as u64)),
            broker_name: None,
        };
        let cmd = RemotingCommand::request(request_code::CHECK_TRANSACTION_STATE, h.to_ext())
            .with_body(body);
        conn.invoke_oneway(cmd).await.expect("check sent");
    }
}

async fn serve(
    mut reader: FrameReader,
    conn: ConnectionHandle,
    me: SocketAddr,
    seen: Arc<Mutex<Seen>>,
    counter: Arc<AtomicI64>,
) {
    while let Ok(Some(Inbound::Command(req))) = reader.next().await {
        if req.is_response() {
            continue;
        }
        let resp = match req.code {
            request_code::GET_ROUTEINFO_BY_TOPIC => {
                if req.ext_fields.get_str("topic") == Some(SLOW_ROUTE) {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                RemotingCommand::response_to(&req, 0, None)
                    .with_body(route(me).to_json(JsonForm::Standard))
            }
            request_code::HEART_BEAT => {
                let hb: HeartbeatData = decode_json(&req.body).unwrap();
                if hb.producer_data_set.iter().any(|p| p.group_name == GROUP) {
                    seen.lock().producers.insert(hb.client_id, conn.clone());
                }
                RemotingCommand::response_to(&req, 0, None)
            }
            request_code::SEND_MESSAGE_V2 => {
                let h = SendMessageRequestHeader::from_ext(&req.ext_fields).unwrap();
                let props = Properties::decode(h.properties.as_deref().unwrap_or("").as_bytes());
                if h.topic == SILENT {
                    seen.lock().sends.push(h);
                    continue;
                }
                let n = counter.fetch_add(1, Ordering::SeqCst);
                seen.lock().sends.push(h);
                let ext = SendMessageResponseHeader {
                    msg_id: offset_msg_id(me, (PHYS_BASE + n) as u64),
                    queue_id: 0,
                    queue_offset: QUEUE_BASE + n,
                    transaction_id: props.get("UNIQ_KEY").map(str::to_owned),
                }
                .to_ext();
                RemotingCommand::response_to(&req, 0, None).with_ext(ext)
            }
            request_code::END_TRANSACTION => {
                let h = EndTransactionRequestHeader::from_ext(&req.ext_fields).unwrap();
                seen.lock().ends.push((h, req.remark.clone()));
                continue; // one-way
            }
            _ => RemotingCommand::response_to(&req, 0, None),
        };
        if !req.is_oneway() {
            let _ = conn.send(resp).await;
        }
    }
    conn.close();
}

fn route(me: SocketAddr) -> TopicRouteData {
    TopicRouteData {
        broker_datas: vec![BrokerData {
            broker_addrs: [(0, me.to_string())].into_iter().collect(),
            broker_name: "fake".into(),
            ..BrokerData::default()
        }],
        queue_datas: vec![QueueData {
            broker_name: "fake".into(),
            perm: 6,
            read_queue_nums: 1,
            write_queue_nums: 1,
            topic_sys_flag: 0,
        }],
        ..TopicRouteData::default()
    }
}

/// A local "database" of committed transactions, shared by every producer of the group.
type Db = Arc<Mutex<HashSet<String>>>;

async fn producer(fake: &FakeBroker, db: &Db) -> TransactionProducer {
    let db = Arc::clone(db);
    let checker = move |msg: ConsumedMessage| {
        let committed = msg
            .transaction_id()
            .is_some_and(|id| db.lock().contains(id));
        async move {
            if committed {
                TransactionState::Commit
            } else {
                TransactionState::Rollback
            }
        }
    };
    TransactionProducer::builder(
        ProducerBuilder::new(fake.config())
            .group(GROUP)
            .warm_topics([TOPIC]),
        checker,
    )
    .start()
    .await
    .expect("transactional producer starts")
}

async fn wait_ends(
    fake: &FakeBroker,
    n: usize,
) -> Vec<(EndTransactionRequestHeader, Option<String>)> {
    assert!(
        wait_until(|| async { fake.ends().len() >= n }).await,
        "{n} END_TRANSACTION expected"
    );
    fake.ends()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_transaction_carries_the_protocol_headers_for_commit_rollback_and_unknown() {
    init_tracing();
    let fake = FakeBroker::start().await;
    let db = Db::default();
    let p = producer(&fake, &db).await;

    let committed = p
        .send_in_transaction(Message::new(TOPIC, "order 1").with_delay_level(3), |half| {
            let db = Arc::clone(&db);
            async move {
                db.lock().insert(half.transaction_id);
                TransactionState::Commit
            }
        })
        .await
        .unwrap();
    assert_eq!(committed.state, TransactionState::Commit);
    let rolled = p
        .send_in_transaction(Message::new(TOPIC, "order 2"), |_| async {
            TransactionState::Rollback
        })
        .await
        .unwrap();
    let failed = p
        .send_in_transaction(Message::new(TOPIC, "order 3"), |_| async {
            Err::<TransactionState, _>("inventory service down")
        })
        .await
        .unwrap();
    assert_eq!(failed.state, TransactionState::Unknown);
    let panicked = p
        .send_in_transaction(Message::new(TOPIC, "order 4"), |_| async {
            if true {
                panic!("local transaction crashed");
            }
            TransactionState::Commit
        })
        .await
        .unwrap();
    assert_eq!(panicked.state, TransactionState::Unknown);

    // The half sends: prepared sysFlag, TRAN_MSG and PGROUP set, the delay level kept (Sluice
    // delivers a committed delayed message at its time).
    for (i, h) in fake.seen.lock().sends.iter().enumerate() {
        assert_eq!(h.producer_group, GROUP);
        assert_eq!(
            h.sys_flag & sysflag::TRANSACTION_MASK,
            sysflag::TRANSACTION_PREPARED
        );
        let props = Properties::decode(h.properties.as_deref().unwrap().as_bytes());
        assert_eq!(props.get("TRAN_MSG"), Some("true"));
        assert_eq!(props.get("PGROUP"), Some(GROUP));
        // Only the first message ("order 1") was sent with a delay level.
        assert_eq!(props.get("DELAY"), (i == 0).then_some("3"));
    }

    let ends = wait_ends(&fake, 4).await;
    let by_msg: HashMap<&str, &(EndTransactionRequestHeader, Option<String>)> =
        ends.iter().map(|e| (e.0.msg_id.as_str(), e)).collect();
    let expect = [
        (&committed.send, 8, None),
        (&rolled.send, 12, None),
        (&failed.send, 0, Some("inventory service down")),
        (&panicked.send, 0, Some("local transaction panicked")),
    ];
    for (send, code, remark) in expect {
        let (h, got_remark) = by_msg[send.msg_id.as_str()];
        let n = send.queue_offset - QUEUE_BASE;
        assert_eq!(h.producer_group, GROUP);
        assert_eq!(h.tran_state_table_offset, send.queue_offset);
        assert_eq!(
            h.commit_log_offset,
            PHYS_BASE + n,
            "decoded from the offsetMsgId"
        );
        assert_eq!(h.commit_or_rollback, code);
        assert_eq!(h.from_transaction_check, Some(false));
        assert_eq!(h.transaction_id.as_deref(), Some(send.msg_id.as_str()));
        assert_eq!(h.topic.as_deref(), Some(TOPIC));
        assert_eq!(got_remark.as_deref(), remark);
    }
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_crashing_after_its_local_commit_is_resolved_by_another_producers_check() {
    init_tracing();
    let fake = FakeBroker::start().await;
    let db = Db::default();
    let crashing = producer(&fake, &db).await;
    let survivor = producer(&fake, &db).await;
    let survivor_id = survivor.client_id().to_owned();
    assert!(
        wait_until(|| async { fake.seen.lock().producers.contains_key(&survivor_id) }).await,
        "the survivor registered by heartbeat"
    );

    // The local transaction commits, then the process "dies" before END_TRANSACTION.
    let (committed_tx, committed_rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn({
        let db = Arc::clone(&db);
        async move {
            crashing
                .send_in_transaction(Message::new(TOPIC, "order 1"), move |half| async move {
                    db.lock().insert(half.transaction_id.clone());
                    let _ = committed_tx.send(half.transaction_id);
                    std::future::pending::<TransactionState>().await
                })
                .await
        }
    });
    let tx_id = committed_rx.await.expect("local commit happened");
    task.abort();
    let _ = task.await;
    assert!(fake.ends().is_empty(), "the crashed producer ended nothing");

    // The broker asks the group; the surviving producer answers from the shared database,
    // echoing the check's offsets (those of the broker's re-put copy).
    fake.check(&survivor_id, &tx_id, 21, 9999, GROUP).await;
    fake.check(&survivor_id, "UNKNOWN-TX", 22, 10_000, GROUP)
        .await;
    let ends = wait_ends(&fake, 2).await;
    let commit = ends
        .iter()
        .find(|e| e.0.msg_id == tx_id)
        .expect("answer for the committed tx");
    let h = &commit.0;
    assert_eq!(h.producer_group, GROUP);
    assert_eq!((h.tran_state_table_offset, h.commit_log_offset), (21, 9999));
    assert_eq!(h.commit_or_rollback, 8);
    assert_eq!(h.from_transaction_check, Some(true));
    assert_eq!(h.transaction_id.as_deref(), Some(tx_id.as_str()));
    let other = ends
        .iter()
        .find(|e| e.0.msg_id == "UNKNOWN-TX")
        .expect("answer for the unknown tx");
    assert_eq!(
        (other.0.commit_or_rollback, other.0.tran_state_table_offset),
        (12, 22)
    );
    survivor.shutdown().await;
}

/// `send_timeout` bounds the whole send, retries included (RocketMQ's `sendMsgTimeout`). It
/// bounded each attempt before, so a broker that never answered held a send for
/// `(retry_times + 1) * send_timeout`. Checked by the attempts made, not by a clock. The
/// budget (3 s) is long enough that the route lookup and connection before the first attempt
/// do not spend it on a loaded machine (which left no attempt at all); the send still ends
/// after one budget, since the broker never answers.
#[tokio::test]
async fn a_send_the_broker_never_answers_is_not_retried_past_its_send_timeout() {
    init_tracing();
    let fake = FakeBroker::start().await;
    let producer = ProducerBuilder::new(fake.config())
        .group("silent-pg")
        .retry_times(2)
        .send_timeout(Duration::from_secs(3))
        .start()
        .await
        .unwrap();
    let err = producer
        .send(Message::new(SILENT, "unanswered"))
        .await
        .expect_err("never answered");
    // Whichever ends first at the deadline: the attempt's own timeout or the send's budget.
    match &err {
        sluice_client::ClientError::SendFailed { attempts, .. }
        | sluice_client::ClientError::SendTimeout { attempts, .. } => {
            assert_eq!(
                *attempts, 1,
                "the first attempt spent the whole budget: {err}"
            )
        }
        other => panic!("expected a failed or timed-out send, got {other}"),
    }
    let sends = fake
        .seen
        .lock()
        .sends
        .iter()
        .filter(|h| h.topic == SILENT)
        .count();
    assert_eq!(sends, 1, "no retry went out");
    producer.shutdown().await;
}

/// A route lookup counts toward `send_timeout`: one that outlasts it ends the send before any
/// attempt goes out.
#[tokio::test]
async fn a_route_lookup_that_outlasts_send_timeout_ends_the_send_before_it_goes_out() {
    init_tracing();
    let fake = FakeBroker::start().await;
    let producer = ProducerBuilder::new(fake.config())
        .group("slow-route-pg")
        .send_timeout(Duration::from_millis(300))
        .start()
        .await
        .unwrap();
    let err = producer
        .send(Message::new(SLOW_ROUTE, "late"))
        .await
        .expect_err("the route came too late");
    match &err {
        sluice_client::ClientError::SendTimeout { attempts, .. } => assert_eq!(*attempts, 0),
        other => panic!("expected a timed-out send, got {other}"),
    }
    tokio::time::sleep(Duration::from_millis(1200)).await; // the route answer arrives
    let sends = fake.seen.lock().sends.len();
    assert_eq!(sends, 0, "nothing went out after the budget was spent");
    producer.shutdown().await;
}
