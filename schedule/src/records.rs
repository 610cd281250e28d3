//! Timer records in the commit log: reading what the index needs from them, and building the
//! messages the service writes (released messages, rolled and rescheduled copies, cancel
//! markers).

use bytes::Bytes;
use sluice_broker::SCHEDULE_TOPIC;
use sluice_protocol::message::keys;
use sluice_protocol::{Properties, RecordView};
use sluice_store::MessageInput;

use crate::config::ScheduleConfig;
use crate::entry::{Key, Kind};
use crate::props::{
    key_ref, parse_key_ref, CONTROL_QUEUE, PROP_CANCEL, PROP_DUE_MS, PROP_PREV, PROP_REPLACES,
    PROP_TIMER_OFFSET, TIMER_OUT_MS, TIMER_QUEUE, TIMER_TOPIC,
};

/// What the index needs from a parked message or a marker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TimerRecord {
    pub(crate) phys: u64,
    pub(crate) size: u32,
    pub(crate) store_ms: i64,
    pub(crate) due_ms: i64,
    /// `REAL_TOPIC` (empty when missing: such a record is dropped at release).
    pub(crate) real_topic: String,
    pub(crate) uniq_key: Option<String>,
    /// A rescheduled copy cancels this entry.
    pub(crate) replaces: Option<Key>,
    /// A cancel marker cancels this entry.
    pub(crate) cancels: Option<Key>,
    /// A rolled copy names the record it was rolled from, so a cancel can tell that a roll
    /// it saw finish has a successor to act on.
    pub(crate) prev: Option<u64>,
}

impl TimerRecord {
    /// Parses a stored record; `None` when it is not a record at all. A level message
    /// without `TIMER_OUT_MS` (parked by another broker) is due at store time + its level.
    pub(crate) fn parse(bytes: &[u8], cfg: &ScheduleConfig) -> Option<Self> {
        let view = RecordView::parse(bytes, usize::MAX).ok()?;
        let props = Properties::decode(view.properties);
        let store_ms = view.header.store_timestamp;
        let fallback = if view.topic == SCHEDULE_TOPIC {
            let level = usize::try_from(view.header.queue_id).unwrap_or(0) + 1;
            store_ms.saturating_add(cfg.level_delay_ms(level).1)
        } else {
            store_ms
        };
        let key_prop = |k: &str| {
            props
                .get(k)
                .and_then(parse_key_ref)
                .map(|(f, p)| Key::new(f, p))
        };
        Some(Self {
            phys: u64::try_from(view.header.physical_offset).ok()?,
            size: u32::try_from(view.total_size).ok()?,
            store_ms,
            due_ms: props
                .get(TIMER_OUT_MS)
                .and_then(|v| v.parse().ok())
                .unwrap_or(fallback),
            real_topic: props.get(keys::REAL_TOPIC).unwrap_or_default().to_owned(),
            uniq_key: props.get(keys::UNIQ_KEY).map(str::to_owned),
            replaces: key_prop(PROP_REPLACES),
            cancels: key_prop(PROP_CANCEL),
            prev: props.get(PROP_PREV).and_then(|v| v.parse().ok()),
        })
    }

    /// The index key and kind: a timer due more than `roll_ms` after it was stored fires
    /// at `store + roll_ms` as a roll (re-written before retention can delete it).
    pub(crate) fn key(&self, roll_ms: i64) -> (Key, Kind) {
        let roll_at = self.store_ms.saturating_add(roll_ms);
        if self.due_ms > roll_at {
            (Key::new(roll_at, self.phys), Kind::Roll)
        } else {
            (Key::new(self.due_ms, self.phys), Kind::Fire)
        }
    }
}

/// The fixed fields of a stored record as a new message.
fn input_from(view: &RecordView<'_>, bytes: &Bytes, topic: String, queue_id: i32) -> MessageInput {
    MessageInput {
        topic,
        queue_id,
        flag: view.header.flag,
        sys_flag: view.header.sys_flag,
        born_timestamp: view.header.born_timestamp,
        born_host: view.header.born_host,
        reconsume_times: view.header.reconsume_times,
        prepared_transaction_offset: view.header.prepared_transaction_offset,
        body: bytes.slice_ref(view.body),
        properties: String::new(),
    }
}

/// Why a timer record cannot be released.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Undeliverable(pub(crate) String);

/// The message a timer releases: its real topic and queue, the same body, flags, UNIQ_KEY,
/// KEYS, TAGS and user properties (`DELAY`, `REAL_TOPIC`, `REAL_QID` are kept, as RocketMQ
/// keeps them), minus the timer properties, plus [`PROP_TIMER_OFFSET`] and [`PROP_DUE_MS`].
pub(crate) fn released(bytes: &Bytes, due_ms: i64) -> Result<MessageInput, Undeliverable> {
    let view = RecordView::parse(bytes, usize::MAX)
        .map_err(|e| Undeliverable(format!("unreadable timer record: {e}")))?;
    let mut props = Properties::decode(view.properties);
    let topic = props
        .get(keys::REAL_TOPIC)
        .filter(|t| sluice_store::validate_topic(t).is_ok())
        .ok_or_else(|| Undeliverable("timer record without a valid REAL_TOPIC".into()))?
        .to_owned();
    let queue_id = props
        .get(keys::REAL_QID)
        .and_then(|q| q.parse::<i32>().ok())
        .filter(|q| *q >= 0)
        .ok_or_else(|| Undeliverable("timer record without a valid REAL_QID".into()))?;
    for k in [
        TIMER_OUT_MS,
        keys::TIMER_DELIVER_MS,
        keys::TIMER_DELAY_MS,
        keys::TIMER_DELAY_SEC,
        PROP_PREV,
        PROP_REPLACES,
    ] {
        props.remove(k);
    }
    props.insert(PROP_TIMER_OFFSET, view.header.physical_offset.to_string());
    props.insert(PROP_DUE_MS, due_ms.to_string());
    let mut input = input_from(&view, bytes, topic, queue_id);
    input.properties = props.encode();
    Ok(input)
}

/// A new timer record for the same message: a roll (same due time, `prev` set) or a
/// reschedule (new due time, cancelling `replaces`).
pub(crate) fn copy_timer(
    bytes: &Bytes,
    due_ms: i64,
    prev: Option<u64>,
    replaces: Option<Key>,
) -> Result<MessageInput, Undeliverable> {
    let view = RecordView::parse(bytes, usize::MAX)
        .map_err(|e| Undeliverable(format!("unreadable timer record: {e}")))?;
    let mut props = Properties::decode(view.properties);
    props.insert(TIMER_OUT_MS, due_ms.to_string());
    props.remove(PROP_PREV);
    props.remove(PROP_REPLACES);
    if let Some(p) = prev {
        props.insert(PROP_PREV, p.to_string());
    }
    if let Some(k) = replaces {
        props.insert(PROP_REPLACES, key_ref(k.fire_ms, k.phys));
    }
    let mut input = input_from(&view, bytes, TIMER_TOPIC.to_owned(), TIMER_QUEUE);
    input.properties = props.encode();
    Ok(input)
}

/// A cancel marker for `key`, a timer of `real_topic`.
pub(crate) fn cancel_marker(key: Key, real_topic: &str) -> MessageInput {
    let mut props = Properties::new();
    props.insert(PROP_CANCEL, key_ref(key.fire_ms, key.phys));
    props.insert(keys::REAL_TOPIC, real_topic);
    let mut input = MessageInput::new(TIMER_TOPIC, CONTROL_QUEUE, Bytes::new());
    input.properties = props.encode();
    input
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_protocol::message::record::{encode_record, RecordHeader};

    fn record(props: &[(&str, &str)], store_ms: i64) -> Bytes {
        let mut p = Properties::new();
        for (k, v) in props {
            p.insert(*k, *v);
        }
        let header = RecordHeader {
            physical_offset: 4096,
            store_timestamp: store_ms,
            sys_flag: 0,
            ..RecordHeader::default()
        };
        let mut out = Vec::new();
        encode_record(
            &header,
            b"body",
            TIMER_TOPIC,
            p.encode().as_bytes(),
            &mut out,
        )
        .unwrap();
        Bytes::from(out)
    }

    #[test]
    fn a_released_message_keeps_identity_and_loses_timer_properties() {
        let rec = record(
            &[
                ("UNIQ_KEY", "U1"),
                ("KEYS", "k1 k2"),
                ("TAGS", "t"),
                ("REAL_TOPIC", "Orders"),
                ("REAL_QID", "3"),
                ("TIMER_DELAY_MS", "500"),
                ("TIMER_OUT_MS", "1500"),
                ("user", "v"),
            ],
            1000,
        );
        let m = released(&rec, 1500).unwrap();
        assert_eq!(
            (m.topic.as_str(), m.queue_id, &m.body[..]),
            ("Orders", 3, &b"body"[..])
        );
        let p = Properties::decode(m.properties.as_bytes());
        for (k, v) in [
            ("UNIQ_KEY", "U1"),
            ("KEYS", "k1 k2"),
            ("TAGS", "t"),
            ("user", "v"),
        ] {
            assert_eq!(p.get(k), Some(v));
        }
        assert_eq!(p.get("TIMER_DELAY_MS"), None);
        assert_eq!(p.get(TIMER_OUT_MS), None);
        assert_eq!(p.get(PROP_TIMER_OFFSET), Some("4096"));
        assert_eq!(p.get(PROP_DUE_MS), Some("1500"));
    }

    #[test]
    fn records_without_a_destination_are_undeliverable() {
        let rec = record(&[("UNIQ_KEY", "U1")], 1000);
        assert!(released(&rec, 1).is_err());
    }

    #[test]
    fn far_timers_roll_and_near_ones_fire() {
        let rec = record(&[("TIMER_OUT_MS", "100000"), ("REAL_TOPIC", "T")], 1000);
        let t = TimerRecord::parse(&rec, &ScheduleConfig::default()).unwrap();
        assert_eq!(t.key(50_000), (Key::new(51_000, 4096), Kind::Roll));
        assert_eq!(t.key(500_000), (Key::new(100_000, 4096), Kind::Fire));
        let copy = copy_timer(&rec, 100_000, Some(4096), None).unwrap();
        let p = Properties::decode(copy.properties.as_bytes());
        assert_eq!(p.get(PROP_PREV), Some("4096"));
        let rolled = record(&[("SLUICE_TIMER_PREV", "4096"), ("REAL_TOPIC", "T")], 1000);
        let t = TimerRecord::parse(&rolled, &ScheduleConfig::default()).unwrap();
        assert_eq!(t.prev, Some(4096), "a rolled copy names its predecessor");
    }
}
