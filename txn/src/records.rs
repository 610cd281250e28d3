//! The records this crate reads and writes, in RocketMQ's layout (`rocketmq-protocol.md` §5.2):
//!
//! - **half message**: topic `RMQ_SYS_TRANS_HALF_TOPIC`, queue 0, transaction bits cleared (so it
//!   is dispatched to that queue and nowhere else), with `REAL_TOPIC`, `REAL_QID`, `PGROUP`,
//!   `__transactionId__` (= UNIQ_KEY).
//! - **carry-forward copy**: a half message re-stored at the queue's tail because the original
//!   is getting old; `TRAN_PREPARED_QUEUE_OFFSET` and `TXN_ORIGIN_PHYS` name the original, which
//!   stays the transaction's identity (the offsets the producer holds).
//! - **committed message**: the half's body, flag, born time/host and properties in the real
//!   topic and queue, sysFlag COMMIT, `PREPARED TRANSACTION OFFSET` = the original half offset.
//! - **op record**: topic `RMQ_SYS_TRANS_OP_HALF_TOPIC`, queue 0, body = the half's queue offset
//!   as decimal text (RocketMQ's format), tag `d`; plus `TXN_OP` (the decision), `TXN_BY` (who),
//!   `KEYS` = the half offset (so a late request for a forgotten transaction finds it through the
//!   index), `PGROUP`, `__transactionId__`, `TXN_PHYS`.
//! - **check body**: the half message re-encoded with the real topic and queue (V1 magic), as
//!   CHECK_TRANSACTION_STATE's body.

use std::net::SocketAddr;

use bytes::Bytes;
use sluice_broker::{
    PendingMessage, TRANS_CHECK_MAX_TIME_TOPIC, TRANS_HALF_TOPIC, TRANS_OP_HALF_TOPIC,
};
use sluice_protocol::message::keys;
use sluice_protocol::message::record::{encode_record, sysflag, RecordHeader};
use sluice_protocol::{Properties, RecordView};
use sluice_store::{now_ms, Appended, MessageInput};

use crate::state::{Decision, Source};

/// Original half queue offset, on carry-forward copies (RocketMQ's key for re-put copies).
pub const PROP_ORIGIN_QUEUE_OFFSET: &str = "TRAN_PREPARED_QUEUE_OFFSET";
/// Original half commit-log offset, on carry-forward copies.
pub const PROP_ORIGIN_PHYS: &str = "TXN_ORIGIN_PHYS";
/// Store time of the original half message, on carry-forward copies (ages count from it).
pub const PROP_ORIGIN_STORE_MS: &str = "TXN_ORIGIN_STORE_MS";
/// `"true"` on a carry-forward copy of a parked transaction.
pub const PROP_PARKED: &str = "TXN_PARKED";
/// The decision an op record makes durable.
pub const PROP_OP: &str = "TXN_OP";
/// Who made it.
pub const PROP_BY: &str = "TXN_BY";
/// The half message's commit-log offset, on op records.
pub const PROP_PHYS: &str = "TXN_PHYS";
/// RocketMQ's op-record tag ("removed").
const REMOVE_TAG: &str = "d";
/// Tag of op records that do not remove (re-arm).
const REARM_TAG: &str = "r";
/// Most bytes of `KEYS`/`TAGS` kept in memory per transaction (the operator view).
const MAX_LABEL: usize = 256;

/// A transaction's identity: where its original half message was stored. It never changes,
/// even when the bytes are carried forward, because producers echo these offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TxnId {
    /// Queue offset in `RMQ_SYS_TRANS_HALF_TOPIC`/0 (`tranStateTableOffset`).
    pub half_offset: u64,
    /// Commit-log offset (`commitLogOffset`).
    pub commit_log_offset: u64,
}

/// A half message (or carry-forward copy) read back from the store.
#[derive(Debug, Clone)]
pub(crate) struct HalfRecord {
    /// Where these bytes are.
    pub(crate) queue_offset: u64,
    pub(crate) phys_offset: u64,
    pub(crate) header: RecordHeader,
    pub(crate) body: Bytes,
    pub(crate) props: Properties,
    pub(crate) real_topic: String,
    pub(crate) real_qid: i32,
    pub(crate) group: String,
    pub(crate) uniq: String,
    /// The original this is a copy of, for carry-forward copies.
    pub(crate) origin: Option<TxnId>,
}

impl HalfRecord {
    /// Parses a stored record; refuses anything that is not a half message of ours.
    pub(crate) fn parse(raw: &Bytes, max_len: usize) -> Result<Self, String> {
        let view = RecordView::parse(raw, max_len).map_err(|e| e.to_string())?;
        if view.topic != TRANS_HALF_TOPIC {
            return Err(format!(
                "record is in topic {}, not the half topic",
                view.topic
            ));
        }
        let props = Properties::decode(view.properties);
        Self::from_parts(view.header, raw.slice_ref(view.body), props)
    }

    /// The header of the record `msg` became when stored at `at` by a broker at `store_host`:
    /// what a read of that record would return.
    pub(crate) fn stored_header(
        msg: &MessageInput,
        at: &Appended,
        store_host: SocketAddr,
    ) -> RecordHeader {
        let sys_flag = sysflag::with_host_bits(msg.sys_flag, msg.born_host, store_host);
        RecordHeader {
            queue_id: msg.queue_id,
            flag: msg.flag,
            queue_offset: at.queue_offset,
            physical_offset: i64::try_from(at.phys_offset).unwrap_or(i64::MAX),
            sys_flag,
            born_timestamp: msg.born_timestamp,
            born_host: msg.born_host,
            store_timestamp: at.store_timestamp,
            store_host,
            reconsume_times: msg.reconsume_times,
            prepared_transaction_offset: msg.prepared_transaction_offset,
        }
    }

    /// A half message from its header, body and decoded properties: how a record read back is
    /// made ([`HalfRecord::parse`]), and one kept from its send (`fresh`, with
    /// [`HalfRecord::stored_header`]).
    pub(crate) fn from_parts(
        header: RecordHeader,
        body: Bytes,
        props: Properties,
    ) -> Result<Self, String> {
        let real_topic = props
            .get(keys::REAL_TOPIC)
            .ok_or("half message without REAL_TOPIC")?
            .to_owned();
        let real_qid = props
            .get(keys::REAL_QID)
            .and_then(|q| q.trim().parse::<i32>().ok())
            .filter(|q| *q >= 0)
            .ok_or("half message without a valid REAL_QID")?;
        let group = props.get(keys::PGROUP).unwrap_or("").to_owned();
        let uniq = props
            .get(keys::TRANSACTION_ID)
            .or_else(|| props.get(keys::UNIQ_KEY))
            .unwrap_or("")
            .to_owned();
        let origin = match (
            props
                .get(PROP_ORIGIN_QUEUE_OFFSET)
                .and_then(|v| v.parse().ok()),
            props.get(PROP_ORIGIN_PHYS).and_then(|v| v.parse().ok()),
        ) {
            (Some(half_offset), Some(commit_log_offset)) => Some(TxnId {
                half_offset,
                commit_log_offset,
            }),
            _ => None,
        };
        Ok(Self {
            queue_offset: u64::try_from(header.queue_offset).unwrap_or(0),
            phys_offset: u64::try_from(header.physical_offset).unwrap_or(0),
            body,
            header,
            props,
            real_topic,
            real_qid,
            group,
            uniq,
            origin,
        })
    }

    /// The identity: the original's offsets for a copy, these offsets otherwise.
    pub(crate) fn id(&self) -> TxnId {
        self.origin.unwrap_or(TxnId {
            half_offset: self.queue_offset,
            commit_log_offset: self.phys_offset,
        })
    }

    /// `KEYS`, bounded for memory.
    pub(crate) fn keys_label(&self) -> String {
        bounded(self.props.get(keys::KEYS).unwrap_or(""))
    }

    /// `TAGS`, bounded for memory.
    pub(crate) fn tags_label(&self) -> String {
        bounded(self.props.get(keys::TAGS).unwrap_or(""))
    }

    /// When the original half message was stored (this record's time, unless it is a copy).
    pub(crate) fn origin_store_ms(&self) -> i64 {
        self.props
            .get(PROP_ORIGIN_STORE_MS)
            .and_then(|v| v.parse().ok())
            .unwrap_or(self.header.store_timestamp)
    }

    /// `TRANSACTION_CHECK_TIMES` of a carry-forward copy.
    pub(crate) fn copied_checks(&self) -> u32 {
        self.props
            .get(keys::TRANSACTION_CHECK_TIMES)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    /// Whether a carry-forward copy was made of a parked transaction.
    pub(crate) fn copied_parked(&self) -> bool {
        self.props.get(PROP_PARKED) == Some("true")
    }

    /// `CHECK_IMMUNITY_TIME_IN_SECONDS`, when set to a sane number.
    pub(crate) fn immunity_ms(&self) -> Option<i64> {
        self.props
            .get(keys::CHECK_IMMUNITY_TIME_IN_SECONDS)
            .and_then(|v| v.trim().parse::<i64>().ok())
            .filter(|s| *s >= 0)
            .map(|s| s.saturating_mul(1000))
    }

    /// The committed message: real topic and queue, sysFlag COMMIT, prepared offset = the
    /// original half. Properties are kept as stored (RocketMQ keeps `TRAN_MSG`, `PGROUP`,
    /// `REAL_*` and `__transactionId__` too; Java clients derive the transaction id from
    /// `TRAN_MSG`), minus our carry-forward markers and the check URL (not the consumers'
    /// business, and it may carry a credential). `DELAY`/`TIMER_*` stay for the commit hooks.
    /// Takes the record: its properties and body become the committed message's, uncopied.
    pub(crate) fn into_commit_message(self, id: TxnId) -> PendingMessage {
        let mut props = self.props;
        for k in [
            PROP_ORIGIN_QUEUE_OFFSET,
            PROP_ORIGIN_PHYS,
            PROP_ORIGIN_STORE_MS,
            PROP_PARKED,
            keys::TRANSACTION_CHECK_TIMES,
            crate::sink::PROP_CHECK_URL,
        ] {
            props.remove(k);
        }
        let input = MessageInput {
            topic: self.real_topic,
            queue_id: self.real_qid,
            flag: self.header.flag,
            sys_flag: clean_sysflag(self.header.sys_flag) | sysflag::TRANSACTION_COMMIT,
            born_timestamp: self.header.born_timestamp,
            born_host: self.header.born_host,
            reconsume_times: self.header.reconsume_times,
            prepared_transaction_offset: i64::try_from(id.commit_log_offset).unwrap_or(i64::MAX),
            body: self.body,
            properties: String::new(),
        };
        PendingMessage {
            input,
            properties: props,
        }
    }

    /// A copy of the half message with different topic/properties (park copy, carry-forward).
    fn copy_to(&self, topic: &str, props: &Properties) -> MessageInput {
        MessageInput {
            topic: topic.to_owned(),
            queue_id: 0,
            flag: self.header.flag,
            sys_flag: clean_sysflag(self.header.sys_flag),
            born_timestamp: self.header.born_timestamp,
            born_host: self.header.born_host,
            reconsume_times: self.header.reconsume_times,
            prepared_transaction_offset: 0,
            body: self.body.clone(),
            properties: props.encode(),
        }
    }

    /// RocketMQ's keep action: a copy in `TRANS_CHECK_MAX_TIME_TOPIC`, where tools look.
    pub(crate) fn park_copy(&self, checks: u32) -> MessageInput {
        let mut props = self.props.clone();
        props.insert(keys::TRANSACTION_CHECK_TIMES, checks.to_string());
        self.copy_to(TRANS_CHECK_MAX_TIME_TOPIC, &props)
    }

    /// A fresh copy at the half queue's tail that still names the original.
    pub(crate) fn carry_forward_copy(
        &self,
        id: TxnId,
        checks: u32,
        stored_ms: i64,
        parked: bool,
    ) -> MessageInput {
        let mut props = self.props.clone();
        props.insert(PROP_ORIGIN_QUEUE_OFFSET, id.half_offset.to_string());
        props.insert(PROP_ORIGIN_PHYS, id.commit_log_offset.to_string());
        props.insert(PROP_ORIGIN_STORE_MS, stored_ms.to_string());
        props.insert(keys::TRANSACTION_CHECK_TIMES, checks.to_string());
        if parked {
            props.insert(PROP_PARKED, "true");
        } else {
            props.remove(PROP_PARKED);
        }
        self.copy_to(TRANS_HALF_TOPIC, &props)
    }

    /// CHECK_TRANSACTION_STATE's body: this record with the real topic and queue, the identity's
    /// offsets and `TRANSACTION_CHECK_TIMES`, V1 magic (C++ reads a 1-byte topic length; real
    /// topics are at most 127 bytes).
    pub(crate) fn check_body(&self, id: TxnId, checks: u32) -> Bytes {
        let mut props = self.props.clone();
        for k in [
            PROP_ORIGIN_QUEUE_OFFSET,
            PROP_ORIGIN_PHYS,
            PROP_ORIGIN_STORE_MS,
            PROP_PARKED,
        ] {
            props.remove(k);
        }
        props.insert(keys::TRANSACTION_CHECK_TIMES, checks.to_string());
        let header = RecordHeader {
            queue_id: self.real_qid,
            queue_offset: i64::try_from(id.half_offset).unwrap_or(i64::MAX),
            physical_offset: i64::try_from(id.commit_log_offset).unwrap_or(i64::MAX),
            sys_flag: clean_sysflag(self.header.sys_flag),
            ..self.header.clone()
        };
        let props = props.encode();
        let mut out = Vec::new();
        match encode_record(
            &header,
            &self.body,
            &self.real_topic,
            props.as_bytes(),
            &mut out,
        ) {
            Ok(_) => Bytes::from(out),
            // Only an oversized field fails, and these fields were stored once already.
            Err(e) => {
                tracing::warn!(error = %e, half_offset = id.half_offset, "check body could not be encoded; sending none");
                Bytes::new()
            }
        }
    }
}

/// Transaction bits and host-size bits cleared (the encoder sets the host bits itself).
fn clean_sysflag(flag: i32) -> i32 {
    flag & !(sysflag::TRANSACTION_MASK | sysflag::BORNHOST_V6 | sysflag::STOREHOST_V6)
}

fn bounded(s: &str) -> String {
    if s.len() <= MAX_LABEL {
        return s.to_owned();
    }
    let mut end = MAX_LABEL;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

/// What an op record says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OpRecord {
    pub(crate) id: TxnId,
    pub(crate) decision: Decision,
    pub(crate) source: Option<Source>,
    pub(crate) group: String,
    pub(crate) uniq: String,
    /// Commit-log offset of the op record itself (orders several ops of one transaction).
    pub(crate) phys_offset: u64,
    /// When the op record was stored (the decision's time), epoch ms.
    pub(crate) stored_ms: i64,
}

/// The op record of a decision.
pub(crate) fn op_record(
    id: TxnId,
    decision: Decision,
    source: Source,
    group: &str,
    uniq: &str,
    store_host: SocketAddr,
) -> MessageInput {
    let tag = if decision == Decision::Rearm {
        REARM_TAG
    } else {
        REMOVE_TAG
    };
    let half_offset = id.half_offset.to_string();
    let phys = id.commit_log_offset.to_string();
    // Encoded in one go: one op per decision, and a `Properties` built pair by pair cost two
    // allocations a pair on the commit path.
    let pairs = [
        (keys::TAGS, tag),
        (keys::KEYS, half_offset.as_str()),
        (PROP_OP, decision.op_name()),
        (PROP_BY, source.name()),
        (PROP_PHYS, phys.as_str()),
        (keys::PGROUP, group),
        (keys::TRANSACTION_ID, uniq),
    ];
    let mut input = MessageInput::new(TRANS_OP_HALF_TOPIC, 0, half_offset.clone());
    input.born_timestamp = now_ms();
    input.born_host = store_host;
    input.properties = Properties::encode_pairs(pairs.into_iter().filter(|(_, v)| !v.is_empty()));
    input
}

impl OpRecord {
    /// Parses an op record. RocketMQ-written ops (no `TXN_OP`, body = offsets separated by
    /// commas) are not ours and are skipped: this broker only replays what it wrote.
    pub(crate) fn parse(raw: &[u8], max_len: usize) -> Option<Self> {
        let view = RecordView::parse(raw, max_len).ok()?;
        if view.topic != TRANS_OP_HALF_TOPIC {
            return None;
        }
        let props = Properties::decode(view.properties);
        let decision = Decision::from_op_name(props.get(PROP_OP)?)?;
        let half_offset = std::str::from_utf8(view.body).ok()?.trim().parse().ok()?;
        let commit_log_offset = props.get(PROP_PHYS)?.parse().ok()?;
        Some(Self {
            id: TxnId {
                half_offset,
                commit_log_offset,
            },
            decision,
            source: props.get(PROP_BY).and_then(Source::from_name),
            group: props.get(keys::PGROUP).unwrap_or("").to_owned(),
            uniq: props.get(keys::TRANSACTION_ID).unwrap_or("").to_owned(),
            phys_offset: u64::try_from(view.header.physical_offset).unwrap_or(0),
            stored_ms: view.header.store_timestamp,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_protocol::message::record::MIN_RECORD_LEN;

    pub(crate) fn stored(input: &MessageInput, queue_offset: i64, phys: i64) -> Bytes {
        let header = RecordHeader {
            queue_id: input.queue_id,
            flag: input.flag,
            queue_offset,
            physical_offset: phys,
            sys_flag: input.sys_flag,
            born_timestamp: input.born_timestamp,
            born_host: input.born_host,
            store_timestamp: 1_700_000_000_000,
            store_host: SocketAddr::from(([127, 0, 0, 1], 10911)),
            reconsume_times: input.reconsume_times,
            prepared_transaction_offset: input.prepared_transaction_offset,
        };
        let mut out = Vec::new();
        encode_record(
            &header,
            &input.body,
            &input.topic,
            input.properties.as_bytes(),
            &mut out,
        )
        .unwrap();
        Bytes::from(out)
    }

    fn half() -> HalfRecord {
        HalfRecord::parse(&stored(&half_input(), 5, 4096), 1 << 20).unwrap()
    }

    fn half_input() -> MessageInput {
        let mut p = Properties::new();
        for (k, v) in [
            ("KEYS", "order-1"),
            ("TAGS", "TagA"),
            ("UNIQ_KEY", "U1"),
            ("TRAN_MSG", "true"),
            ("PGROUP", "pg"),
            ("REAL_TOPIC", "Orders"),
            ("REAL_QID", "3"),
            ("__transactionId__", "U1"),
            ("DELAY", "2"),
            ("SLUICE_CHECK_URL", "http://app/check"),
        ] {
            p.insert(k, v);
        }
        let mut m = MessageInput::new(TRANS_HALF_TOPIC, 0, "hello");
        m.flag = 7;
        m.reconsume_times = 2;
        m.born_host = SocketAddr::from(([10, 1, 2, 3], 4567));
        m.properties = p.encode();
        m
    }

    /// The record kept from a send's put is the one a read of that record returns.
    #[test]
    fn a_half_kept_from_its_put_is_the_half_read_back() {
        let m = half_input();
        let at = Appended {
            phys_offset: 4096,
            size: 0,
            queue_offset: 5,
            store_timestamp: 1_700_000_000_000,
        };
        let host = SocketAddr::from(([127, 0, 0, 1], 10911));
        let mut v6 = m.clone();
        v6.born_host = "[::1]:4567".parse().unwrap();
        for m in [m, v6] {
            let header = HalfRecord::stored_header(&m, &at, host);
            let props = Properties::decode(m.properties.as_bytes());
            let kept = HalfRecord::from_parts(header, m.body.clone(), props).unwrap();
            let read = HalfRecord::parse(&stored(&m, 5, 4096), 1 << 20).unwrap();
            assert_eq!(format!("{kept:?}"), format!("{read:?}"), "{}", m.born_host);
        }
    }

    #[test]
    fn a_half_message_becomes_a_commit_in_its_real_queue() {
        let h = half();
        let id = h.id();
        assert_eq!((id.half_offset, id.commit_log_offset), (5, 4096));
        let c = h.into_commit_message(id);
        assert_eq!((c.input.topic.as_str(), c.input.queue_id), ("Orders", 3));
        assert_eq!(
            sysflag::transaction_type(c.input.sys_flag),
            sysflag::TRANSACTION_COMMIT
        );
        assert_eq!(c.input.prepared_transaction_offset, 4096);
        assert_eq!(c.input.flag, 7);
        assert_eq!(&c.input.body[..], b"hello");
        assert_eq!(
            c.properties.get("DELAY"),
            Some("2"),
            "delay kept for the commit hooks"
        );
        assert_eq!(c.properties.get("UNIQ_KEY"), Some("U1"));
        assert_eq!(
            c.properties.get("SLUICE_CHECK_URL"),
            None,
            "the check URL is not the consumers' business"
        );
    }

    #[test]
    fn a_carried_copy_keeps_the_identity_and_the_check_body_is_in_the_real_topic() {
        let h = half();
        let copy = h.carry_forward_copy(h.id(), 4, 1234, true);
        let again = HalfRecord::parse(&stored(&copy, 9, 9000), 1 << 20).unwrap();
        assert_eq!(again.id(), h.id());
        assert!(again.copied_parked());
        assert_eq!((again.copied_checks(), again.origin_store_ms()), (4, 1234));
        assert_eq!(
            again
                .clone()
                .into_commit_message(again.id())
                .properties
                .get(PROP_ORIGIN_PHYS),
            None
        );
        let body = again.check_body(again.id(), 4);
        let v = RecordView::parse(&body, 1 << 20).unwrap();
        assert_eq!((v.topic, v.header.queue_id), ("Orders", 3));
        assert_eq!((v.header.queue_offset, v.header.physical_offset), (5, 4096));
        let p = Properties::decode(v.properties);
        assert_eq!(p.get("TRANSACTION_CHECK_TIMES"), Some("4"));
        assert_eq!(p.get("PGROUP"), Some("pg"));
        assert!(body.len() >= MIN_RECORD_LEN);
        assert_eq!(
            u32::from_be_bytes(body[4..8].try_into().unwrap()),
            sluice_protocol::MAGIC_V1
        );
    }

    #[test]
    fn op_records_round_trip_and_foreign_ones_are_skipped() {
        let id = TxnId {
            half_offset: 12,
            commit_log_offset: 777,
        };
        let op = op_record(
            id,
            Decision::Commit,
            Source::CheckAnswer,
            "pg",
            "U1",
            SocketAddr::from(([127, 0, 0, 1], 1)),
        );
        let raw = stored(&op, 0, 5000);
        let parsed = OpRecord::parse(&raw, 1 << 20).unwrap();
        assert_eq!(parsed.id, id);
        assert_eq!(
            (parsed.decision, parsed.source),
            (Decision::Commit, Some(Source::CheckAnswer))
        );
        assert_eq!(
            (
                parsed.group.as_str(),
                parsed.uniq.as_str(),
                parsed.phys_offset
            ),
            ("pg", "U1", 5000)
        );
        let foreign = MessageInput::new(TRANS_OP_HALF_TOPIC, 0, "1,2,3,");
        assert!(OpRecord::parse(&stored(&foreign, 1, 6000), 1 << 20).is_none());
    }

    #[test]
    fn records_that_are_not_half_messages_are_refused() {
        let m = MessageInput::new("Orders", 0, "x");
        assert!(HalfRecord::parse(&stored(&m, 0, 0), 1 << 20).is_err());
        let m = MessageInput::new(TRANS_HALF_TOPIC, 0, "x");
        assert!(HalfRecord::parse(&stored(&m, 0, 0), 1 << 20)
            .unwrap_err()
            .contains("REAL_TOPIC"));
        assert_eq!(bounded(&"é".repeat(200)).len(), 256);
    }
}
