//! SEND_MESSAGE (10), SEND_MESSAGE_V2 (310) and SEND_BATCH_MESSAGE (320) headers (§2.2).
//!
//! One request header has two spellings: V1 long names (Go's single sends) and V2 single letters
//! `a`..`n` (Java and C++, and every batch). Both normalise to [`SendMessageRequestHeader`].
//! The form is told from the keys, not the code, because Go sends code 10 with long names and
//! nothing stops a client from mixing: a V1 header always carries `producerGroup` or `topic`.

use crate::remoting::ext::{ExtFields, ExtValue, HeaderError};

/// The two spellings of the send request header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendHeaderForm {
    /// `SendMessageRequestHeader`: `producerGroup`, `topic`, ...
    V1,
    /// `SendMessageRequestHeaderV2`: `a`, `b`, ...
    V2,
}

impl SendHeaderForm {
    /// V1 when the long `producerGroup` or `topic` key is present, V2 otherwise.
    pub fn detect(ext: &ExtFields) -> Self {
        if ext.contains_key("producerGroup") || ext.contains_key("topic") {
            Self::V1
        } else {
            Self::V2
        }
    }
}

/// (V1 name, V2 name) of each field, in declaration order.
pub(crate) const NAMES: [(&str, &str); 14] = [
    ("producerGroup", "a"),
    ("topic", "b"),
    ("defaultTopic", "c"),
    ("defaultTopicQueueNums", "d"),
    ("queueId", "e"),
    ("sysFlag", "f"),
    ("bornTimestamp", "g"),
    ("flag", "h"),
    ("properties", "i"),
    ("reconsumeTimes", "j"),
    ("unitMode", "k"),
    ("maxReconsumeTimes", "l"),
    ("batch", "m"),
    ("bname", "n"),
];

/// A send request, whichever form it came in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SendMessageRequestHeader {
    /// `producerGroup` / `a`.
    pub producer_group: String,
    /// `topic` / `b`.
    pub topic: String,
    /// `defaultTopic` / `c`: the auto-create template, always `TBW102`.
    pub default_topic: String,
    /// `defaultTopicQueueNums` / `d`: queue count for an auto-created topic.
    pub default_topic_queue_nums: i32,
    /// `queueId` / `e`: negative means "broker picks".
    pub queue_id: i32,
    /// `sysFlag` / `f`: the message sysFlag.
    pub sys_flag: i32,
    /// `bornTimestamp` / `g`: client ms.
    pub born_timestamp: i64,
    /// `flag` / `h`: the user flag, stored untouched.
    pub flag: i32,
    /// `properties` / `i`: the properties string.
    pub properties: Option<String>,
    /// `reconsumeTimes` / `j`: for `%RETRY%` topics.
    pub reconsume_times: Option<i32>,
    /// `unitMode` / `k`.
    pub unit_mode: Option<bool>,
    /// `maxReconsumeTimes` / `l`.
    pub max_reconsume_times: Option<i32>,
    /// `batch` / `m`: the broker decides batch-vs-single from this, not from the code.
    pub batch: Option<bool>,
    /// `bname` / `n`: 5.x broker name.
    pub broker_name: Option<String>,
}

impl SendMessageRequestHeader {
    /// Reads either form, detected with [`SendHeaderForm::detect`].
    pub fn from_ext(ext: &ExtFields) -> Result<Self, HeaderError> {
        Self::from_ext_as(ext, SendHeaderForm::detect(ext))
    }

    /// Reads the given form; errors name the field as spelled in that form.
    pub fn from_ext_as(ext: &ExtFields, form: SendHeaderForm) -> Result<Self, HeaderError> {
        let key = |i: usize| match form {
            SendHeaderForm::V1 => NAMES[i].0,
            SendHeaderForm::V2 => NAMES[i].1,
        };
        Ok(Self {
            producer_group: ExtValue::read(ext, key(0))?,
            topic: ExtValue::read(ext, key(1))?,
            default_topic: ExtValue::read(ext, key(2))?,
            default_topic_queue_nums: ExtValue::read(ext, key(3))?,
            queue_id: ExtValue::read(ext, key(4))?,
            sys_flag: ExtValue::read(ext, key(5))?,
            born_timestamp: ExtValue::read(ext, key(6))?,
            flag: ExtValue::read(ext, key(7))?,
            properties: ExtValue::read(ext, key(8))?,
            reconsume_times: ExtValue::read(ext, key(9))?,
            unit_mode: ExtValue::read(ext, key(10))?,
            max_reconsume_times: ExtValue::read(ext, key(11))?,
            batch: ExtValue::read(ext, key(12))?,
            broker_name: ExtValue::read(ext, key(13))?,
        })
    }

    /// Writes the header in the given form.
    pub fn to_ext(&self, form: SendHeaderForm) -> ExtFields {
        let key = |i: usize| match form {
            SendHeaderForm::V1 => NAMES[i].0,
            SendHeaderForm::V2 => NAMES[i].1,
        };
        let mut ext = ExtFields::with_capacity(NAMES.len());
        self.producer_group.write(&mut ext, key(0));
        self.topic.write(&mut ext, key(1));
        self.default_topic.write(&mut ext, key(2));
        self.default_topic_queue_nums.write(&mut ext, key(3));
        self.queue_id.write(&mut ext, key(4));
        self.sys_flag.write(&mut ext, key(5));
        self.born_timestamp.write(&mut ext, key(6));
        self.flag.write(&mut ext, key(7));
        self.properties.write(&mut ext, key(8));
        self.reconsume_times.write(&mut ext, key(9));
        self.unit_mode.write(&mut ext, key(10));
        self.max_reconsume_times.write(&mut ext, key(11));
        self.batch.write(&mut ext, key(12));
        self.broker_name.write(&mut ext, key(13));
        ext
    }

    /// True when the body is an encoded batch (`m`/`batch` set).
    pub fn is_batch(&self) -> bool {
        self.batch.unwrap_or(false)
    }
}

/// Value of the `MSG_REGION` response field Java adds.
pub const DEFAULT_MSG_REGION: &str = "DefaultRegion";

/// The response to a successful send. Java clients read `MSG_REGION` and `TRACE_ON` straight
/// from the map, so [`SendMessageResponseHeader::to_ext`] always adds them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SendMessageResponseHeader {
    /// `msgId`: the offsetMsgId of the stored message (comma-joined for a batch).
    pub msg_id: String,
    /// `queueId`: the queue as requested (the original one for half messages).
    pub queue_id: i32,
    /// `queueOffset`: consume-queue offset written (the first one for a batch).
    pub queue_offset: i64,
    /// `transactionId`: the UNIQ_KEY, for half messages.
    pub transaction_id: Option<String>,
}

impl SendMessageResponseHeader {
    /// Reads the header (client side).
    pub fn from_ext(ext: &ExtFields) -> Result<Self, HeaderError> {
        Ok(Self {
            msg_id: ExtValue::read(ext, "msgId")?,
            queue_id: ExtValue::read(ext, "queueId")?,
            queue_offset: ExtValue::read(ext, "queueOffset")?,
            transaction_id: ExtValue::read(ext, "transactionId")?,
        })
    }

    /// Writes the header plus `MSG_REGION=DefaultRegion` and `TRACE_ON=true`.
    pub fn to_ext(&self) -> ExtFields {
        let mut ext = ExtFields::with_capacity(6);
        self.msg_id.write(&mut ext, "msgId");
        self.queue_id.write(&mut ext, "queueId");
        self.queue_offset.write(&mut ext, "queueOffset");
        self.transaction_id.write(&mut ext, "transactionId");
        ext.insert_static("MSG_REGION", DEFAULT_MSG_REGION);
        ext.insert_static("TRACE_ON", "true");
        ext
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2_from_cpp() -> ExtFields {
        [
            ("a", "pg"),
            ("b", "T"),
            ("c", "TBW102"),
            ("d", "4"),
            ("e", "0"),
            ("f", "0"),
            ("g", "1700000000000"),
            ("h", "0"),
            ("i", "TAGS\u{1}x\u{2}"),
            ("k", "0"),
            ("m", "1"),
            ("AccessKey", ""),
        ]
        .into_iter()
        .collect()
    }

    #[test]
    fn v2_short_names_are_detected_and_normalised() {
        let ext = v2_from_cpp();
        assert_eq!(SendHeaderForm::detect(&ext), SendHeaderForm::V2);
        let h = SendMessageRequestHeader::from_ext(&ext).unwrap();
        assert_eq!((h.producer_group.as_str(), h.topic.as_str()), ("pg", "T"));
        assert_eq!(h.default_topic_queue_nums, 4);
        assert_eq!(h.born_timestamp, 1_700_000_000_000);
        assert_eq!(h.unit_mode, Some(false));
        assert!(h.is_batch());
        assert_eq!(h.reconsume_times, None);
    }

    #[test]
    fn v1_long_names_read_to_the_same_struct() {
        let v2 = SendMessageRequestHeader::from_ext(&v2_from_cpp()).unwrap();
        let v1_ext = v2.to_ext(SendHeaderForm::V1);
        assert!(v1_ext.contains_key("producerGroup") && v1_ext.contains_key("bornTimestamp"));
        assert_eq!(SendHeaderForm::detect(&v1_ext), SendHeaderForm::V1);
        assert_eq!(SendMessageRequestHeader::from_ext(&v1_ext).unwrap(), v2);
    }

    #[test]
    fn missing_required_field_is_named_in_the_form_used() {
        let mut ext = v2_from_cpp();
        ext.remove("e");
        let err = SendMessageRequestHeader::from_ext(&ext).unwrap_err();
        assert_eq!(err, HeaderError::Missing("e"));
    }

    #[test]
    fn response_always_carries_region_and_trace_fields() {
        let h = SendMessageResponseHeader {
            msg_id: "0A00000100002A9F0000000000000000".into(),
            queue_id: 1,
            queue_offset: 9,
            transaction_id: None,
        };
        let ext = h.to_ext();
        assert_eq!(ext.get_str("queueOffset"), Some("9"));
        assert_eq!(ext.get_str("MSG_REGION"), Some("DefaultRegion"));
        assert_eq!(ext.get_str("TRACE_ON"), Some("true"));
        assert!(!ext.contains_key("transactionId"));
        assert_eq!(SendMessageResponseHeader::from_ext(&ext), Ok(h));
    }
}
