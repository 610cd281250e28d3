//! REGISTER_BROKER's body and the topic config inside it (`rocketmq-protocol.md` §2.9).
//!
//! `TopicConfig` is also what a broker keeps in `topics.json`, so the same type serves the
//! name-server registration and the broker's own config file.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::lenient;

/// Topic permission bits (`PermName`).
pub mod perm {
    /// Priority queue (unused by 4.x clients).
    pub const PRIORITY: i32 = 0x8;
    /// Consumers may read.
    pub const READ: i32 = 0x4;
    /// Producers may write.
    pub const WRITE: i32 = 0x2;
    /// A template topic others may be auto-created from (`TBW102`).
    pub const INHERIT: i32 = 0x1;
    /// Read and write: 6.
    pub const READ_WRITE: i32 = READ | WRITE;

    /// True when `perm` allows reads.
    pub fn is_readable(perm: i32) -> bool {
        perm & READ != 0
    }

    /// True when `perm` allows writes.
    pub fn is_writeable(perm: i32) -> bool {
        perm & WRITE != 0
    }

    /// True when `perm` allows auto-creation from this topic.
    pub fn is_inherited(perm: i32) -> bool {
        perm & INHERIT != 0
    }
}

/// Filter type of a single-tag topic (the default).
pub const SINGLE_TAG: &str = "SINGLE_TAG";
/// Filter type of a multi-tag topic; its messages get the MULTI_TAGS sysFlag bit.
pub const MULTI_TAG: &str = "MULTI_TAG";

/// One topic's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TopicConfig {
    /// Ordered topic.
    #[serde(default, deserialize_with = "lenient::bool")]
    pub order: bool,
    /// [`perm`] bits.
    #[serde(deserialize_with = "lenient::i32")]
    pub perm: i32,
    /// Read queue count.
    #[serde(deserialize_with = "lenient::i32")]
    pub read_queue_nums: i32,
    /// [`SINGLE_TAG`] or [`MULTI_TAG`].
    #[serde(default = "single_tag")]
    pub topic_filter_type: String,
    /// Topic name.
    pub topic_name: String,
    /// Topic sysFlag.
    #[serde(default, deserialize_with = "lenient::i32")]
    pub topic_sys_flag: i32,
    /// Write queue count.
    #[serde(deserialize_with = "lenient::i32")]
    pub write_queue_nums: i32,
}

fn single_tag() -> String {
    SINGLE_TAG.to_owned()
}

impl TopicConfig {
    /// A single-tag, unordered topic with `queues` read and write queues.
    pub fn new(topic_name: impl Into<String>, queues: i32, perm: i32) -> Self {
        Self {
            order: false,
            perm,
            read_queue_nums: queues,
            topic_filter_type: single_tag(),
            topic_name: topic_name.into(),
            topic_sys_flag: 0,
            write_queue_nums: queues,
        }
    }
}

/// Version of a broker's topic table; the name server skips unchanged registrations.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DataVersion {
    /// Bumped on every change.
    #[serde(default, deserialize_with = "lenient::i64")]
    pub counter: i64,
    /// Time of the last change, epoch ms.
    #[serde(default, deserialize_with = "lenient::i64")]
    pub timestamp: i64,
}

/// A topic table with its version.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TopicConfigSerializeWrapper {
    /// The version.
    #[serde(default)]
    pub data_version: DataVersion,
    /// Topic name to config.
    #[serde(default, deserialize_with = "lenient::null_as_default")]
    pub topic_config_table: BTreeMap<String, TopicConfig>,
}

/// The REGISTER_BROKER body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegisterBrokerBody {
    /// Filter server addresses (obsolete, written as `[]`).
    #[serde(default, deserialize_with = "lenient::null_as_default")]
    pub filter_server_list: Vec<String>,
    /// The broker's topics.
    #[serde(default)]
    pub topic_config_serialize_wrapper: TopicConfigSerializeWrapper,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remoting::body::{decode_json, encode_json};
    use proptest::prelude::*;

    #[test]
    fn register_body_round_trips() {
        let mut body = RegisterBrokerBody::default();
        body.topic_config_serialize_wrapper.data_version = DataVersion {
            counter: 3,
            timestamp: 9,
        };
        body.topic_config_serialize_wrapper
            .topic_config_table
            .insert(
                "TBW102".into(),
                TopicConfig::new("TBW102", 8, perm::READ_WRITE | perm::INHERIT),
            );
        let bytes = encode_json(&body);
        let text = std::str::from_utf8(&bytes).unwrap();
        assert!(text.contains(r#""topicFilterType":"SINGLE_TAG""#));
        assert_eq!(decode_json::<RegisterBrokerBody>(&bytes).unwrap(), body);
    }

    #[test]
    fn java_topic_config_with_extra_fields_decodes() {
        let raw = br#"{"topicConfigSerializeWrapper":{"topicConfigTable":{"T":{"topicName":"T","readQueueNums":4,"writeQueueNums":4,"perm":6,"topicFilterType":"SINGLE_TAG","topicSysFlag":0,"order":false,"attributes":{}}},"dataVersion":{"timestamp":1,"counter":2,"stateVersion":0}},"filterServerList":[]}"#;
        let body: RegisterBrokerBody = decode_json(raw).unwrap();
        let t = &body.topic_config_serialize_wrapper.topic_config_table["T"];
        assert!(
            perm::is_readable(t.perm) && perm::is_writeable(t.perm) && !perm::is_inherited(t.perm)
        );
        assert_eq!(body.topic_config_serialize_wrapper.data_version.counter, 2);
    }

    proptest! {
        #[test]
        fn register_body_decode_never_panics(raw in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_json::<RegisterBrokerBody>(&raw);
        }
    }
}
