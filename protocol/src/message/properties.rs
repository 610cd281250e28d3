//! The properties string: `key 0x01 value 0x02`, repeated, with a `0x02` after every pair.
//!
//! Decoding follows RocketMQ's `string2messageProperties`: split on `0x02`, then on the first
//! `0x01`; a pair with an empty key or value is dropped, and a later duplicate wins. Order is
//! kept on encode so a decoded-then-encoded string stays stable.

const NAME_VALUE_SEPARATOR: char = '\u{1}';
const PROPERTY_SEPARATOR: char = '\u{2}';

/// Well-known property keys (`rocketmq-protocol.md` §4).
pub mod keys {
    /// Space-separated business keys; each is indexed as `topic#key`.
    pub const KEYS: &str = "KEYS";
    /// A single tag; its Java hash is the consume-queue tag code.
    pub const TAGS: &str = "TAGS";
    /// `"false"` means the producer does not wait for the flush.
    pub const WAIT: &str = "WAIT";
    /// Delay level (1..=18), or -1 for a dead-letter send.
    pub const DELAY: &str = "DELAY";
    /// The client's unique message id.
    pub const UNIQ_KEY: &str = "UNIQ_KEY";
    /// Original topic of a retried message.
    pub const RETRY_TOPIC: &str = "RETRY_TOPIC";
    /// Original topic while parked in a system topic.
    pub const REAL_TOPIC: &str = "REAL_TOPIC";
    /// Original queue id while parked in a system topic.
    pub const REAL_QID: &str = "REAL_QID";
    /// `"true"` marks a half (prepared) message.
    pub const TRAN_MSG: &str = "TRAN_MSG";
    /// Producer group of a half message.
    pub const PGROUP: &str = "PGROUP";
    /// Transaction id (the UNIQ_KEY) copied into a half message.
    pub const TRANSACTION_ID: &str = "__transactionId__";
    /// Check-back counter of a half message.
    pub const TRANSACTION_CHECK_TIMES: &str = "TRANSACTION_CHECK_TIMES";
    /// Per-message delay before the first transaction check.
    pub const CHECK_IMMUNITY_TIME_IN_SECONDS: &str = "CHECK_IMMUNITY_TIME_IN_SECONDS";
    /// First message id, carried across retries and the DLQ.
    pub const ORIGIN_MESSAGE_ID: &str = "ORIGIN_MESSAGE_ID";
    /// Reconsume count carried by a retry send.
    pub const RECONSUME_TIME: &str = "RECONSUME_TIME";
    /// Per-message maximum reconsume count.
    pub const MAX_RECONSUME_TIMES: &str = "MAX_RECONSUME_TIMES";
    /// Cluster name, added by the broker.
    pub const CLUSTER: &str = "CLUSTER";
    /// Absolute delivery time in epoch milliseconds (RocketMQ 5 timers).
    pub const TIMER_DELIVER_MS: &str = "TIMER_DELIVER_MS";
    /// Relative delay in milliseconds (RocketMQ 5 timers).
    pub const TIMER_DELAY_MS: &str = "TIMER_DELAY_MS";
    /// Relative delay in seconds (RocketMQ 5 timers).
    pub const TIMER_DELAY_SEC: &str = "TIMER_DELAY_SEC";
    /// Sharding key of an ordered message.
    pub const SHARDING_KEY: &str = "__SHARDINGKEY";
    /// Lowest queue offset, added client-side after a pull.
    pub const MIN_OFFSET: &str = "MIN_OFFSET";
    /// Highest queue offset, added client-side after a pull.
    pub const MAX_OFFSET: &str = "MAX_OFFSET";

    /// Every property name the broker or the clients set for themselves (RocketMQ's
    /// `MessageConst` system keys); with [`SYSTEM_PREFIXES`], what is not the user's.
    pub const SYSTEM: &[&str] = &[
        KEYS,
        TAGS,
        WAIT,
        DELAY,
        UNIQ_KEY,
        RETRY_TOPIC,
        REAL_TOPIC,
        REAL_QID,
        TRAN_MSG,
        PGROUP,
        TRANSACTION_ID,
        TRANSACTION_CHECK_TIMES,
        CHECK_IMMUNITY_TIME_IN_SECONDS,
        ORIGIN_MESSAGE_ID,
        RECONSUME_TIME,
        MAX_RECONSUME_TIMES,
        CLUSTER,
        TIMER_DELIVER_MS,
        TIMER_DELAY_MS,
        TIMER_DELAY_SEC,
        SHARDING_KEY,
        MIN_OFFSET,
        MAX_OFFSET,
        "BUYER_ID",
        "TRANSFER_FLAG",
        "CORRECTION_FLAG",
        "MQ2_FLAG",
        "MSG_REGION",
        "TRACE_ON",
        "CONSUME_START_TIME",
        "INSTANCE_ID",
        "CORRELATION_ID",
        "REPLY_TO_CLIENT",
        "TTL",
        "ARRIVE_TIME",
        "PUSH_REPLY_TIME",
        "MSG_TYPE",
        "TIMER_OUT_MS",
        "TIMER_ENQUEUE_MS",
        "TIMER_DEQUEUE_MS",
        "TIMER_ROLL_TIMES",
        "TIMER_DEL_UNIQKEY",
        "TRAN_PREPARED_QUEUE_OFFSET",
        "BORNHOST",
        "BNAME",
    ];

    /// Name prefixes kept for the broker: Sluice's own, RocketMQ 5 timers, Java internals.
    pub const SYSTEM_PREFIXES: &[&str] = &["SLUICE_", "TIMER_", "__"];

    /// True for a name the broker or clients give meaning to (compared case-insensitively,
    /// so a user property can never shadow one by its spelling).
    pub fn is_system(name: &str) -> bool {
        let upper = name.to_ascii_uppercase();
        SYSTEM.iter().any(|k| upper == *k) || SYSTEM_PREFIXES.iter().any(|p| upper.starts_with(p))
    }
}

/// An ordered set of message properties.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Properties {
    pairs: Vec<(String, String)>,
}

impl Properties {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many name-value pairs `raw` holds at most (its separators), without decoding it:
    /// for bounds checked before the pairs are allocated.
    pub fn count_pairs(raw: &[u8]) -> usize {
        memchr::memchr_iter(NAME_VALUE_SEPARATOR as u8, raw).count()
    }

    /// Decodes a properties string leniently, as RocketMQ does: malformed pairs are dropped,
    /// never an error, because the string came from a client that may differ from ours.
    ///
    /// Linear in the input: past a few dozen pairs, repeated keys are found through a map
    /// (before, each pair scanned all the earlier ones: a 16 MiB string of distinct pairs
    /// from one client took minutes of CPU).
    pub fn decode(raw: &[u8]) -> Self {
        /// Pairs up to which a scan is cheaper than building a map.
        const SCAN_UP_TO: usize = 32;
        let text = crate::text::lossy_utf8(raw);
        let mut props = Self::new();
        let mut index: Option<std::collections::HashMap<String, usize>> = None;
        for pair in text.split(PROPERTY_SEPARATOR) {
            let Some((k, v)) = pair.split_once(NAME_VALUE_SEPARATOR) else {
                continue;
            };
            if k.is_empty() || v.is_empty() {
                continue;
            }
            if index.is_none() && props.pairs.len() < SCAN_UP_TO {
                props.insert(k, v);
                continue;
            }
            let map = index.get_or_insert_with(|| {
                let pairs = props.pairs.iter().enumerate();
                pairs.map(|(i, (k, _))| (k.clone(), i)).collect()
            });
            match map.get(k) {
                Some(&i) => props.pairs[i].1 = v.to_owned(),
                None => {
                    map.insert(k.to_owned(), props.pairs.len());
                    props.pairs.push((k.to_owned(), v.to_owned()));
                }
            }
        }
        props
    }

    /// Encodes as `key\x01value\x02...`.
    pub fn encode(&self) -> String {
        Self::encode_pairs(self.pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
    }

    /// The properties string of `pairs`, as [`Properties::encode`] writes it, without building
    /// a `Properties` first (for records the broker writes itself, whose keys are distinct).
    pub fn encode_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)> + Clone) -> String {
        let len = pairs
            .clone()
            .into_iter()
            .map(|(k, v)| k.len() + v.len() + 2)
            .sum();
        let mut out = String::with_capacity(len);
        for (k, v) in pairs {
            out.push_str(k);
            out.push(NAME_VALUE_SEPARATOR);
            out.push_str(v);
            out.push(PROPERTY_SEPARATOR);
        }
        out
    }

    /// Whether [`Properties::decode`] of [`Properties::encode`]'s output gives these same pairs
    /// back: no name or value is empty, no name holds a separator and no value the pair
    /// separator (decode drops or splits those; a value may hold the name separator).
    /// A caller keeping decoded properties in place of the encoded ones checks this.
    pub fn round_trips(&self) -> bool {
        let name =
            |k: &str| !k.is_empty() && !k.contains([NAME_VALUE_SEPARATOR, PROPERTY_SEPARATOR]);
        let value = |v: &str| !v.is_empty() && !v.contains(PROPERTY_SEPARATOR);
        self.pairs.iter().all(|(k, v)| name(k) && value(v))
    }

    /// Length in bytes of [`Properties::encode`]'s output.
    pub fn encoded_len(&self) -> usize {
        self.pairs.iter().map(|(k, v)| k.len() + v.len() + 2).sum()
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Sets `key`, replacing an existing value in place.
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<String>) {
        let (key, value) = (key.into(), value.into());
        match self.pairs.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.pairs.push((key, value)),
        }
    }

    /// Removes `key`, returning its value.
    pub fn remove(&mut self, key: &str) -> Option<String> {
        let pos = self.pairs.iter().position(|(k, _)| k == key)?;
        Some(self.pairs.remove(pos).1)
    }

    /// Iterates the pairs in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Number of pairs.
    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    /// True when there are no pairs.
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// The space-separated `KEYS`, without empty tokens.
    pub fn user_keys(&self) -> impl Iterator<Item = &str> {
        self.get(keys::KEYS)
            .unwrap_or("")
            .split(' ')
            .filter(|k| !k.is_empty())
    }
}

/// Finds one property in an encoded string without building a map.
pub fn find_property<'a>(raw: &'a [u8], key: &str) -> Option<&'a [u8]> {
    let [found] = find_properties(raw, [key]);
    found
}

/// Finds several properties in one pass over an encoded string, without building a map: the
/// dispatcher needs `TAGS`, `KEYS` and `UNIQ_KEY` of every record, and three scans of a
/// transactional record's ~200-byte properties cost more than the rest of its dispatch.
/// Agrees with [`Properties::decode`]: a later duplicate wins, an empty value is no value.
pub fn find_properties<'a, const N: usize>(
    raw: &'a [u8],
    keys: [&str; N],
) -> [Option<&'a [u8]>; N] {
    let mut found = [None; N];
    let mut rest = raw;
    while !rest.is_empty() {
        let end = memchr::memchr(2, rest).unwrap_or(rest.len());
        let pair = &rest[..end];
        rest = rest.get(end + 1..).unwrap_or_default();
        let Some(sep) = memchr::memchr(1, pair) else {
            continue;
        };
        let (k, v) = (&pair[..sep], &pair[sep + 1..]);
        if v.is_empty() {
            continue;
        }
        for (slot, key) in found.iter_mut().zip(keys) {
            if k == key.as_bytes() {
                *slot = Some(v);
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn pairs_encode_as_a_built_properties_does() {
        let mut p = Properties::new();
        p.insert("TAGS", "d");
        p.insert("KEYS", "17");
        let direct = Properties::encode_pairs([("TAGS", "d"), ("KEYS", "17")]);
        assert_eq!(direct, p.encode());
        assert_eq!(
            Properties::decode(direct.as_bytes()).get("KEYS"),
            Some("17")
        );
    }

    #[test]
    fn only_pairs_decode_gives_back_unchanged_round_trip() {
        let mut p = Properties::new();
        p.insert("KEYS", "a b");
        assert!(p.round_trips());
        assert_eq!(Properties::decode(p.encode().as_bytes()), p);
        let mut named = p.clone();
        named.insert("NAMED", "a\u{1}b");
        assert!(
            named.round_trips(),
            "decode splits a pair at its first name separator"
        );
        assert_eq!(Properties::decode(named.encode().as_bytes()), named);
        for (k, v) in [
            ("EMPTY", ""),
            ("SPLIT", "a\u{2}b"),
            ("A\u{1}B", "v"),
            ("A\u{2}B", "v"),
        ] {
            let mut q = p.clone();
            q.insert(k, v);
            assert!(!q.round_trips(), "{k}");
            assert_ne!(Properties::decode(q.encode().as_bytes()), q, "{k}");
        }
    }

    /// Past the scan threshold, decoding switches to a map: a repeated key still keeps its
    /// first position and takes its last value, as before, and malformed pairs are dropped.
    #[test]
    fn many_pairs_with_repeats_decode_as_few_do() {
        let mut raw = String::new();
        for round in 0..3 {
            for i in 0..100 {
                raw.push_str(&format!("k{i}\u{1}v{i}-{round}\u{2}"));
            }
            raw.push_str("junk-without-separator\u{2}\u{1}novalue\u{2}");
        }
        let p = Properties::decode(raw.as_bytes());
        assert_eq!(p.len(), 100);
        let keys: Vec<&str> = p.iter().map(|(k, _)| k).collect();
        assert_eq!(keys[0], "k0");
        assert_eq!(keys[99], "k99");
        assert_eq!(p.get("k57"), Some("v57-2"));
    }

    #[test]
    fn decode_drops_empty_pairs_and_keeps_last_duplicate() {
        let p = Properties::decode(b"A\x011\x02B\x01\x02\x01x\x02A\x012\x02junk\x02");
        assert_eq!(p.get("A"), Some("2"));
        assert_eq!(p.get("B"), None);
        assert_eq!(p.len(), 1);
    }

    #[test]
    fn encode_puts_separator_after_every_pair() {
        let mut p = Properties::new();
        p.insert("TAGS", "a");
        p.insert("KEYS", "k1 k2");
        assert_eq!(p.encode(), "TAGS\x01a\x02KEYS\x01k1 k2\x02");
        assert_eq!(p.encoded_len(), p.encode().len());
        assert_eq!(p.user_keys().collect::<Vec<_>>(), ["k1", "k2"]);
    }

    #[test]
    fn find_property_agrees_with_decode() {
        let raw = b"TAGS\x01a\x02UNIQ_KEY\x01ABC\x02TAGS\x01b\x02";
        assert_eq!(find_property(raw, "TAGS"), Some(&b"b"[..]));
        assert_eq!(find_property(raw, "UNIQ_KEY"), Some(&b"ABC"[..]));
        assert_eq!(
            find_properties(raw, ["KEYS", "TAGS", "UNIQ_KEY"]),
            [None, Some(&b"b"[..]), Some(&b"ABC"[..])]
        );
        assert_eq!(find_property(raw, "KEYS"), None);
    }

    proptest! {
        #[test]
        fn encode_decode_round_trip(pairs in proptest::collection::btree_map("[A-Za-z_]{1,12}", "[ -~]{1,20}", 0..8)) {
            let mut p = Properties::new();
            for (k, v) in &pairs { p.insert(k.clone(), v.clone()); }
            let back = Properties::decode(p.encode().as_bytes());
            prop_assert_eq!(back, p);
        }

        #[test]
        fn one_pass_lookup_agrees_with_decode_on_any_string(raw in "[AB\x01\x02x]{0,40}") {
            let decoded = Properties::decode(raw.as_bytes());
            let found = find_properties(raw.as_bytes(), ["A", "B", "AB"]);
            for (key, got) in ["A", "B", "AB"].into_iter().zip(found) {
                prop_assert_eq!(got, decoded.get(key).map(str::as_bytes), "key {}", key);
            }
        }
    }
}
