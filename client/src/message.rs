//! Messages: [`Message`], what a producer sends, built with keys, tags, properties and delays;
//! and [`ConsumedMessage`], what a consumer receives, decoded from the stored record.

use std::io::Read;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use sluice_protocol::message::keys;
use sluice_protocol::message::offset_msg_id;
use sluice_protocol::message::record::{sysflag, MAX_PROPERTIES_LEN};
use sluice_protocol::remoting::body::MessageQueue;
use sluice_protocol::{Properties, RecordView};

use crate::error::ClientError;

/// RocketMQ's default delay levels (`messageDelayLevel`), level 1 first.
///
/// ```
/// use std::time::Duration;
/// assert_eq!(sluice_client::DELAY_LEVELS[2], Duration::from_secs(10)); // level 3
/// ```
pub const DELAY_LEVELS: [Duration; 18] = {
    const S: u64 = 1;
    const M: u64 = 60;
    const H: u64 = 3600;
    let secs = [
        S,
        5 * S,
        10 * S,
        30 * S,
        M,
        2 * M,
        3 * M,
        4 * M,
        5 * M,
        6 * M,
        7 * M,
        8 * M,
        9 * M,
        10 * M,
        20 * M,
        30 * M,
        H,
        2 * H,
    ];
    let mut out = [Duration::ZERO; 18];
    let mut i = 0;
    while i < 18 {
        out[i] = Duration::from_secs(secs[i]);
        i += 1;
    }
    out
};

/// The smallest delay level whose delay is at least `delay` (clamped to 18), for APIs that take
/// a duration but must speak in levels.
///
/// ```
/// use std::time::Duration;
/// assert_eq!(sluice_client::delay_level_for(Duration::from_secs(7)), 3); // 10 s
/// assert_eq!(sluice_client::delay_level_for(Duration::from_secs(86_400)), 18);
/// ```
pub fn delay_level_for(delay: Duration) -> i32 {
    DELAY_LEVELS
        .iter()
        .position(|d| *d >= delay)
        .map_or(18, |i| i as i32 + 1)
}

/// Longest topic name (RocketMQ's limit; retry and dead-letter topics may be 255).
const MAX_TOPIC_LEN: usize = 127;

/// A message to send.
///
/// ```
/// use std::time::Duration;
/// use sluice_client::Message;
///
/// let msg = Message::new("Orders", "order 42 created")
///     .with_tags("created")
///     .with_keys(["order-42", "customer-7"])
///     .with_property("source", "checkout")
///     .with_delay_level(3);
/// assert_eq!(msg.tags(), Some("created"));
/// assert_eq!(msg.keys().collect::<Vec<_>>(), ["order-42", "customer-7"]);
/// assert_eq!(msg.property("DELAY"), Some("3"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    topic: String,
    body: Bytes,
    flag: i32,
    properties: Properties,
    /// A key given to `with_keys` that holds whitespace, refused at the send: RocketMQ
    /// separates keys with spaces, so "INV 1001" would be read back as the two keys "INV"
    /// and "1001" (and an idempotent consumer deduplicating by the first key would take
    /// every "INV …" for one message).
    bad_key: Option<String>,
}

impl Message {
    /// A message for `topic` with `body`.
    pub fn new(topic: impl Into<String>, body: impl Into<Bytes>) -> Self {
        Self {
            topic: topic.into(),
            body: body.into(),
            flag: 0,
            properties: Properties::new(),
            bad_key: None,
        }
    }

    /// Sets the tag (one per message); consumers filter on it broker-side.
    #[must_use]
    pub fn with_tags(mut self, tag: impl Into<String>) -> Self {
        self.properties.insert(keys::TAGS, tag);
        self
    }

    /// Sets the business keys; each is indexed so the message can be looked up by it. Keys
    /// are separated by spaces on the wire, so a key may not hold whitespace (the send
    /// refuses it); leading and trailing whitespace is trimmed.
    #[must_use]
    pub fn with_keys<I, S>(mut self, keys_: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let joined: Vec<String> = keys_
            .into_iter()
            .map(|k| k.as_ref().trim().to_owned())
            .filter(|k| !k.is_empty())
            .collect();
        self.bad_key = joined
            .iter()
            .find(|k| k.contains(char::is_whitespace))
            .cloned();
        if joined.is_empty() {
            self.properties.remove(keys::KEYS);
        } else {
            self.properties.insert(keys::KEYS, joined.join(" "));
        }
        self
    }

    /// Sets a user property. Keys and values may not contain the separators `\x01`/`\x02`;
    /// the send checks that.
    #[must_use]
    pub fn with_property(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.properties.insert(key, value);
        self
    }

    /// Delivers the message after RocketMQ delay level `level` (1 = 1 s … 18 = 2 h, see
    /// [`DELAY_LEVELS`]); 0 removes the delay. Works on every RocketMQ broker.
    #[must_use]
    pub fn with_delay_level(mut self, level: u8) -> Self {
        if level == 0 {
            self.properties.remove(keys::DELAY);
        } else {
            self.properties
                .insert(keys::DELAY, level.min(18).to_string());
        }
        self
    }

    /// Delivers the message at an arbitrary time (property `TIMER_DELIVER_MS`).
    ///
    /// **Sluice-only** (and Apache RocketMQ 5.x timer messages): a 4.x broker stores the
    /// property but delivers the message at once.
    #[must_use]
    pub fn with_deliver_at(mut self, at: SystemTime) -> Self {
        let ms = at
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        self.properties
            .insert(keys::TIMER_DELIVER_MS, ms.to_string());
        self
    }

    /// Sets the user flag, stored untouched.
    #[must_use]
    pub fn with_flag(mut self, flag: i32) -> Self {
        self.flag = flag;
        self
    }

    /// When false, the broker answers before the message is flushed (`WAIT=false`).
    #[must_use]
    pub fn with_wait_store(mut self, wait: bool) -> Self {
        if wait {
            self.properties.remove(keys::WAIT);
        } else {
            self.properties.insert(keys::WAIT, "false");
        }
        self
    }

    /// The topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The body.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// The user flag.
    pub fn flag(&self) -> i32 {
        self.flag
    }

    /// The tag, if set.
    pub fn tags(&self) -> Option<&str> {
        self.properties.get(keys::TAGS)
    }

    /// The business keys.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.properties.user_keys()
    }

    /// A property.
    pub fn property(&self, key: &str) -> Option<&str> {
        self.properties.get(key)
    }

    /// Every property.
    pub fn properties(&self) -> &Properties {
        &self.properties
    }

    pub(crate) fn properties_mut(&mut self) -> &mut Properties {
        &mut self.properties
    }

    /// Checks what a broker would refuse, before a round trip.
    pub(crate) fn validate(&self, max_body: usize) -> Result<(), ClientError> {
        validate_topic(&self.topic)?;
        if let Some(k) = &self.bad_key {
            return Err(ClientError::InvalidMessage(format!(
                "key {k:?} holds whitespace, which separates keys: it would be read back as \
                 several keys"
            )));
        }
        if self.body.is_empty() {
            return Err(ClientError::InvalidMessage("the body is empty".into()));
        }
        if self.body.len() > max_body {
            return Err(ClientError::InvalidMessage(format!(
                "the body is {} bytes, more than {max_body}",
                self.body.len()
            )));
        }
        for (k, v) in self.properties.iter() {
            if k.contains(['\u{1}', '\u{2}']) || v.contains(['\u{1}', '\u{2}']) {
                return Err(ClientError::InvalidMessage(format!(
                    "property {k:?} contains a separator character (\\x01 or \\x02)"
                )));
            }
        }
        if self.properties.encoded_len() > MAX_PROPERTIES_LEN {
            return Err(ClientError::InvalidMessage(format!(
                "properties are {} bytes, more than {MAX_PROPERTIES_LEN}",
                self.properties.encoded_len()
            )));
        }
        Ok(())
    }
}

/// Checks a topic name as brokers do: `[%|a-zA-Z0-9_-]`, at most 127 bytes (255 for retry and
/// dead-letter topics).
pub(crate) fn validate_topic(topic: &str) -> Result<(), ClientError> {
    let max = if topic.starts_with("%RETRY%") || topic.starts_with("%DLQ%") {
        255
    } else {
        MAX_TOPIC_LEN
    };
    if topic.is_empty() || topic.len() > max {
        return Err(ClientError::InvalidMessage(format!(
            "topic {topic:?} must be 1 to {max} characters"
        )));
    }
    let ok = topic
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'%' | b'|' | b'_' | b'-'));
    if !ok {
        return Err(ClientError::InvalidMessage(format!(
            "topic {topic:?} may only contain [%|a-zA-Z0-9_-]"
        )));
    }
    Ok(())
}

/// A message as a consumer receives it: the stored record, decoded and decompressed.
///
/// For a message redelivered through the group's retry topic, [`ConsumedMessage::topic`] is
/// the original topic (property `RETRY_TOPIC`), and [`ConsumedMessage::queue`] the queue it
/// was really pulled from.
///
/// ```
/// use sluice_client::ConsumedMessage;
///
/// let msg = ConsumedMessage::for_tests("Orders", "hello").with_property("UNIQ_KEY", "ABC");
/// assert_eq!(msg.msg_id(), "ABC");
/// assert_eq!(&msg.body()[..], b"hello");
/// assert_eq!(msg.reconsume_times(), 0);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumedMessage {
    /// Shared: a handler's copy (retries keep one) costs a reference count, not a deep copy of
    /// the strings and properties.
    inner: Arc<Fields>,
}

/// What a consumed message holds.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fields {
    queue: MessageQueue,
    queue_offset: i64,
    commit_log_offset: i64,
    sys_flag: i32,
    flag: i32,
    born_timestamp: i64,
    born_host: SocketAddr,
    store_timestamp: i64,
    store_host: SocketAddr,
    reconsume_times: i32,
    prepared_transaction_offset: i64,
    body: Bytes,
    properties: Properties,
    offset_msg_id: String,
}

impl ConsumedMessage {
    /// Decodes one record pulled from `broker_name`; a zlib-compressed body is inflated.
    pub(crate) fn from_record(view: &RecordView<'_>, whole: &Bytes, broker_name: &str) -> Self {
        let h = &view.header;
        let properties = Properties::decode(view.properties);
        let (body, inflated) = decode_body(view.body, whole, h.sys_flag);
        Self::of(Fields {
            queue: MessageQueue {
                topic: view.topic.to_owned(),
                broker_name: broker_name.to_owned(),
                queue_id: h.queue_id,
            },
            queue_offset: h.queue_offset,
            commit_log_offset: h.physical_offset,
            // The COMPRESSED bit stays set when the body could not be inflated, so a handler
            // can tell stored bytes from the message's own.
            sys_flag: if inflated {
                h.sys_flag & !sysflag::COMPRESSED
            } else {
                h.sys_flag
            },
            flag: h.flag,
            born_timestamp: h.born_timestamp,
            born_host: h.born_host,
            store_timestamp: h.store_timestamp,
            store_host: h.store_host,
            reconsume_times: h.reconsume_times,
            prepared_transaction_offset: h.prepared_transaction_offset,
            body,
            properties,
            offset_msg_id: offset_msg_id(h.store_host, h.physical_offset.max(0) as u64),
        })
    }

    fn of(fields: Fields) -> Self {
        Self {
            inner: Arc::new(fields),
        }
    }

    /// A message with the given topic and body and every other field zero, for unit tests
    /// of handlers.
    pub fn for_tests(topic: &str, body: impl Into<Bytes>) -> Self {
        let zero = SocketAddr::from(([127, 0, 0, 1], 0));
        Self::of(Fields {
            queue: MessageQueue {
                topic: topic.to_owned(),
                broker_name: "test".into(),
                queue_id: 0,
            },
            queue_offset: 0,
            commit_log_offset: 0,
            sys_flag: 0,
            flag: 0,
            born_timestamp: 0,
            born_host: zero,
            store_timestamp: 0,
            store_host: zero,
            reconsume_times: 0,
            prepared_transaction_offset: 0,
            body: body.into(),
            properties: Properties::new(),
            offset_msg_id: offset_msg_id(zero, 0),
        })
    }

    /// Sets a property (for tests of handlers).
    #[must_use]
    pub fn with_property(mut self, key: &str, value: &str) -> Self {
        Arc::make_mut(&mut self.inner).properties.insert(key, value);
        self
    }

    /// Sets the sysFlag (as a body the client could not inflate keeps it).
    #[cfg(test)]
    pub(crate) fn with_sys_flag(mut self, flag: i32) -> Self {
        Arc::make_mut(&mut self.inner).sys_flag = flag;
        self
    }

    /// Sets the reconsume count (for tests of handlers).
    #[must_use]
    pub fn with_reconsume_times(mut self, n: i32) -> Self {
        Arc::make_mut(&mut self.inner).reconsume_times = n;
        self
    }

    /// The topic the producer sent to, for a redelivery pulled from a `%RETRY%` queue too
    /// (its `RETRY_TOPIC`); otherwise the topic of the queue it came from, as RocketMQ's
    /// clients show it: a dead letter read from `%DLQ%<group>` shows that topic (its
    /// `RETRY_TOPIC` property still names the original).
    pub fn topic(&self) -> &str {
        let queue_topic = &self.inner.queue.topic;
        match self.inner.properties.get(keys::RETRY_TOPIC) {
            Some(original) if queue_topic.starts_with("%RETRY%") => original,
            _ => queue_topic,
        }
    }

    /// The queue this copy was pulled from (a `%RETRY%` queue for a redelivery).
    pub fn queue(&self) -> &MessageQueue {
        &self.inner.queue
    }

    /// Position in its queue.
    pub fn queue_offset(&self) -> i64 {
        self.inner.queue_offset
    }

    /// Position in the broker's commit log.
    pub fn commit_log_offset(&self) -> i64 {
        self.inner.commit_log_offset
    }

    /// The client message id: `UNIQ_KEY`, stable across retries, dead-lettering and
    /// transaction commit; the offset id when a producer set none.
    pub fn msg_id(&self) -> &str {
        self.inner
            .properties
            .get(keys::UNIQ_KEY)
            .unwrap_or(&self.inner.offset_msg_id)
    }

    /// The broker's id of this stored copy (store address + commit-log offset).
    pub fn offset_msg_id(&self) -> &str {
        &self.inner.offset_msg_id
    }

    /// The body, decompressed.
    pub fn body(&self) -> &Bytes {
        &self.inner.body
    }

    /// The tag.
    pub fn tags(&self) -> Option<&str> {
        self.inner.properties.get(keys::TAGS)
    }

    /// The business keys.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.inner.properties.user_keys()
    }

    /// A property.
    pub fn property(&self, key: &str) -> Option<&str> {
        self.inner.properties.get(key)
    }

    /// Every property.
    pub fn properties(&self) -> &Properties {
        &self.inner.properties
    }

    /// How many times this message was handed back for retry before this delivery.
    pub fn reconsume_times(&self) -> i32 {
        self.inner.reconsume_times
    }

    /// The user flag.
    pub fn flag(&self) -> i32 {
        self.inner.flag
    }

    /// The message sysFlag (compression bit cleared once inflated).
    pub fn sys_flag(&self) -> i32 {
        self.inner.sys_flag
    }

    /// When the producer made it, epoch ms.
    pub fn born_timestamp(&self) -> i64 {
        self.inner.born_timestamp
    }

    /// The producer's address.
    pub fn born_host(&self) -> SocketAddr {
        self.inner.born_host
    }

    /// When the broker stored it, epoch ms.
    pub fn store_timestamp(&self) -> i64 {
        self.inner.store_timestamp
    }

    /// The broker's address.
    pub fn store_host(&self) -> SocketAddr {
        self.inner.store_host
    }

    /// For a committed transactional message, the half message's commit-log offset.
    pub fn prepared_transaction_offset(&self) -> i64 {
        self.inner.prepared_transaction_offset
    }

    /// The transaction id of a transactional message (`__transactionId__`, else UNIQ_KEY).
    pub fn transaction_id(&self) -> Option<&str> {
        self.inner
            .properties
            .get(keys::TRANSACTION_ID)
            .or_else(|| self.inner.properties.get(keys::UNIQ_KEY))
    }
}

/// Most bytes a compressed body may inflate to. A few MiB of zeros inflate to gigabytes: one
/// such message, pulled 32 at a time and again after every crash, would take the consumer
/// down for good.
pub const MAX_INFLATED_BODY: u64 = 64 << 20;

/// Inflates a zlib body (compression type 0 or 3 in bits 8-10), up to [`MAX_INFLATED_BODY`];
/// anything else, a corrupt stream or one inflating past the cap, is delivered as stored with
/// a warning rather than dropped. The flag says whether the body was inflated (or was plain).
fn decode_body(stored: &[u8], whole: &Bytes, sys_flag: i32) -> (Bytes, bool) {
    if sys_flag & sysflag::COMPRESSED == 0 {
        // A view into the pulled response: no copy of the body.
        return (whole.slice_ref(stored), true);
    }
    let kind = (sys_flag >> 8) & 0x7;
    if kind != 0 && kind != 3 {
        tracing::warn!(
            kind,
            "unsupported body compression; delivering the stored bytes"
        );
        return (Bytes::copy_from_slice(stored), false);
    }
    let mut out = Vec::with_capacity(stored.len().saturating_mul(4).min(1 << 20));
    let mut inflater = flate2::read::ZlibDecoder::new(stored).take(MAX_INFLATED_BODY + 1);
    match inflater.read_to_end(&mut out) {
        Ok(n) if n as u64 > MAX_INFLATED_BODY => {
            tracing::warn!(
                limit = MAX_INFLATED_BODY,
                "compressed body inflates past the limit; delivering the stored bytes"
            );
            (Bytes::copy_from_slice(stored), false)
        }
        Ok(_) => (Bytes::from(out), true),
        Err(e) => {
            tracing::warn!(error = %e, "corrupt zlib body; delivering the stored bytes");
            (Bytes::copy_from_slice(stored), false)
        }
    }
}

/// A pull (or query) body split into messages.
pub(crate) struct Decoded {
    pub(crate) messages: Vec<ConsumedMessage>,
    /// Why decoding stopped before the end: a record that does not parse ends the body (the
    /// rest cannot be framed). The caller must not move past it.
    pub(crate) stopped: Option<String>,
}

/// Splits a pull (or query) body into messages, up to the first record that does not parse.
pub(crate) fn decode_records(whole: &Bytes, broker_name: &str) -> Decoded {
    let mut messages = Vec::new();
    let mut body = &whole[..];
    while !body.is_empty() {
        match RecordView::parse(body, body.len()) {
            Ok(view) => {
                messages.push(ConsumedMessage::from_record(&view, whole, broker_name));
                body = &body[view.total_size..];
            }
            Err(e) => {
                let why = format!("{e} ({} bytes left undecoded)", body.len());
                return Decoded {
                    messages,
                    stopped: Some(why),
                };
            }
        }
    }
    Decoded {
        messages,
        stopped: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_protocol::message::record::{encode_record, RecordHeader};
    use std::io::Write;

    fn record(body: &[u8], sys_flag: i32, props: &str) -> Vec<u8> {
        let header = RecordHeader {
            sys_flag,
            queue_offset: 5,
            physical_offset: 1024,
            reconsume_times: 2,
            ..RecordHeader::default()
        };
        let mut out = Vec::new();
        encode_record(&header, body, "%RETRY%g", props.as_bytes(), &mut out).unwrap();
        out
    }

    #[test]
    fn records_decode_with_retry_topic_and_inflated_body() {
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::new(5));
        z.write_all(b"hello hello hello").unwrap();
        let compressed = z.finish().unwrap();
        let mut body = record(&compressed, sysflag::COMPRESSED, "RETRY_TOPIC\u{1}T\u{2}");
        body.extend(record(b"plain", 0, "UNIQ_KEY\u{1}K\u{2}"));
        let msgs = decode_records(&Bytes::from(body), "b").messages;
        assert_eq!(msgs.len(), 2);
        assert_eq!(&msgs[0].body()[..], b"hello hello hello");
        assert_eq!(msgs[0].sys_flag() & sysflag::COMPRESSED, 0);
        assert_eq!(msgs[0].topic(), "T");
        assert_eq!(msgs[0].queue().topic, "%RETRY%g");
        assert_eq!((msgs[0].queue_offset(), msgs[0].reconsume_times()), (5, 2));
        assert_eq!(msgs[1].msg_id(), "K");
        assert_eq!(msgs[0].msg_id(), msgs[0].offset_msg_id());
    }

    /// A small body inflating past the cap (a zlib bomb) is delivered as stored, flagged
    /// compressed, instead of being inflated without bound.
    #[test]
    fn a_body_inflating_past_the_cap_is_delivered_as_stored_and_flagged() {
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::new(9));
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..=(MAX_INFLATED_BODY >> 20) {
            z.write_all(&zeros).unwrap();
        }
        let bomb = z.finish().unwrap();
        assert!(bomb.len() < 1 << 20, "{} bytes", bomb.len());
        let msgs =
            decode_records(&Bytes::from(record(&bomb, sysflag::COMPRESSED, "")), "b").messages;
        assert_eq!(&msgs[0].body()[..], &bomb[..]);
        assert_ne!(msgs[0].sys_flag() & sysflag::COMPRESSED, 0);
    }

    #[test]
    fn a_truncated_body_yields_the_records_before_it_and_says_it_stopped() {
        let mut body = record(b"one", 0, "");
        let second = record(b"two", 0, "");
        body.extend_from_slice(&second[..second.len() - 3]);
        let decoded = decode_records(&Bytes::from(body), "b");
        assert_eq!(decoded.messages.len(), 1);
        assert!(decoded.stopped.is_some());
        let whole = decode_records(&Bytes::from(record(b"one", 0, "")), "b");
        assert!(whole.stopped.is_none());
    }

    #[test]
    fn validation_refuses_what_brokers_refuse() {
        assert!(Message::new("T", "x").validate(10).is_ok());
        assert!(Message::new("bad topic", "x").validate(10).is_err());
        assert!(Message::new("T", "").validate(10).is_err());
        assert!(Message::new("T", "12345678901").validate(10).is_err());
        let sep = Message::new("T", "x").with_property("k", "a\u{2}b");
        assert!(sep.validate(10).is_err());
    }

    /// Keys are separated by spaces on the wire: "INV 1001" came back as "INV" and "1001",
    /// and a consumer deduplicating by its first key took every "INV …" for one message.
    #[test]
    fn a_key_holding_whitespace_is_refused_and_outer_whitespace_trimmed() {
        let spaced = Message::new("T", "x").with_keys(["ORDER-1", "INV 1001"]);
        let e = spaced.validate(10).unwrap_err().to_string();
        assert!(e.contains("INV 1001") && e.contains("whitespace"), "{e}");
        let tabbed = Message::new("T", "x").with_keys(["a\tb"]);
        assert!(tabbed.validate(10).is_err());
        let trimmed = Message::new("T", "x").with_keys([" ORDER-1 ", "INV-1001"]);
        assert!(trimmed.validate(10).is_ok());
        assert_eq!(trimmed.property("KEYS"), Some("ORDER-1 INV-1001"));
        let replaced = spaced.with_keys(["fine"]);
        assert!(replaced.validate(10).is_ok(), "the last keys given count");
    }

    #[test]
    fn delay_levels_round_up() {
        assert_eq!(delay_level_for(Duration::ZERO), 1);
        assert_eq!(delay_level_for(Duration::from_secs(1)), 1);
        assert_eq!(delay_level_for(Duration::from_secs(61)), 6);
        let m = Message::new("T", "x").with_delay_level(40);
        assert_eq!(m.property("DELAY"), Some("18"));
        assert_eq!(m.with_delay_level(0).property("DELAY"), None);
    }
}
