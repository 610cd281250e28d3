//! Queue identities and the bodies that list them: LOCK_BATCH_MQ / UNLOCK_BATCH_MQ (41/42) and
//! GET_CONSUMER_LIST_BY_GROUP's answer (§2.1, §2.5).
//!
//! C++ reads `queueId` with `asInt`: a quoted number throws inside the client, so it is always
//! written as a JSON number (and read either way).

use serde::{Deserialize, Serialize};

use super::lenient;

/// One queue of a topic on one broker. Orders by (topic, broker name, queue id), as rebalancing
/// sorts queues.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageQueue {
    /// Topic.
    pub topic: String,
    /// Broker name.
    pub broker_name: String,
    /// Queue id, a JSON number on the wire.
    #[serde(deserialize_with = "lenient::i32")]
    pub queue_id: i32,
}

/// LOCK_BATCH_MQ and UNLOCK_BATCH_MQ request body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LockBatchRequestBody {
    /// Consumer group.
    pub consumer_group: String,
    /// The locking client's id.
    pub client_id: String,
    /// Lock only on this broker (5.x; absent from C++).
    #[serde(default, deserialize_with = "lenient::bool")]
    pub only_this_broker: bool,
    /// Queues to lock or unlock.
    #[serde(default, deserialize_with = "lenient::null_as_default")]
    pub mq_set: Vec<MessageQueue>,
}

/// UNLOCK_BATCH_MQ request body: the same shape as the lock request.
pub type UnlockBatchRequestBody = LockBatchRequestBody;

/// LOCK_BATCH_MQ response body: the queues now locked by the caller.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockBatchResponseBody {
    /// Locked queues.
    #[serde(
        rename = "lockOKMQSet",
        default,
        deserialize_with = "lenient::null_as_default"
    )]
    pub lock_ok_mq_set: Vec<MessageQueue>,
}

/// GET_CONSUMER_LIST_BY_GROUP response body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConsumerListBody {
    /// Client ids, exactly as each client sent them in its heartbeat.
    #[serde(default, deserialize_with = "lenient::null_as_default")]
    pub consumer_id_list: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remoting::body::{decode_json, encode_json};
    use proptest::prelude::*;

    #[test]
    fn cpp_lock_request_without_only_this_broker_decodes() {
        let raw = br#"{"consumerGroup":"g","clientId":"c","mqSet":[{"topic":"T","brokerName":"b","queueId":1},{"topic":"T","brokerName":"b","queueId":"0"}]}"#;
        let body: LockBatchRequestBody = decode_json(raw).unwrap();
        assert!(!body.only_this_broker);
        assert_eq!(body.mq_set[1].queue_id, 0);
    }

    #[test]
    fn lock_response_writes_queue_id_as_a_number() {
        let mq = MessageQueue {
            topic: "T".into(),
            broker_name: "b".into(),
            queue_id: 2,
        };
        let body = LockBatchResponseBody {
            lock_ok_mq_set: vec![mq],
        };
        let bytes = encode_json(&body);
        assert_eq!(
            std::str::from_utf8(&bytes).unwrap(),
            r#"{"lockOKMQSet":[{"topic":"T","brokerName":"b","queueId":2}]}"#
        );
        assert_eq!(decode_json::<LockBatchResponseBody>(&bytes).unwrap(), body);
    }

    #[test]
    fn consumer_list_is_plain_json_strings() {
        let body = ConsumerListBody {
            consumer_id_list: vec!["10.0.0.5@1#DEFAULT".into()],
        };
        let bytes = encode_json(&body);
        assert_eq!(&bytes[..], br#"{"consumerIdList":["10.0.0.5@1#DEFAULT"]}"#);
    }

    #[test]
    fn queues_sort_by_topic_then_broker_then_id() {
        let q = |t: &str, b: &str, i| MessageQueue {
            topic: t.into(),
            broker_name: b.into(),
            queue_id: i,
        };
        let mut v = vec![
            q("T", "b", 0),
            q("T", "a", 3),
            q("%RETRY%g", "z", 0),
            q("T", "a", 1),
        ];
        v.sort();
        assert_eq!(
            v,
            [
                q("%RETRY%g", "z", 0),
                q("T", "a", 1),
                q("T", "a", 3),
                q("T", "b", 0)
            ]
        );
    }

    proptest! {
        #[test]
        fn lock_body_decode_never_panics(raw in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_json::<LockBatchRequestBody>(&raw);
        }
    }
}
