//! PULL_MESSAGE (11) and LITE_PULL_MESSAGE (361) headers (§2.3), plus the two lookups that also
//! answer with raw records: QUERY_MESSAGE (12) and VIEW_MESSAGE_BY_ID (33) (§2.8).

use super::ext_header;

/// Bits of the pull request's `sysFlag` (`PullSysFlag`).
pub mod pull_sysflag {
    /// Store `commitOffset` as the group's offset (master only, first execution only).
    pub const COMMIT_OFFSET: i32 = 0x1;
    /// The broker may hold the request (long polling).
    pub const SUSPEND: i32 = 0x2;
    /// Filter with the request's `subscription`, not the heartbeat-registered one.
    pub const SUBSCRIPTION: i32 = 0x4;
    /// Class filter (obsolete).
    pub const CLASS_FILTER: i32 = 0x8;
    /// A 5.x lite pull.
    pub const LITE_PULL: i32 = 0x10;
}

ext_header! {
    /// PULL_MESSAGE request.
    pub struct PullMessageRequestHeader {
        /// Consumer group.
        consumer_group: String = "consumerGroup",
        /// Topic.
        topic: String = "topic",
        /// Queue id.
        queue_id: i32 = "queueId",
        /// Logical offset to start from.
        queue_offset: i64 = "queueOffset",
        /// Most messages to return (push default 32).
        max_msg_nums: i32 = "maxMsgNums",
        /// [`pull_sysflag`] bits.
        sys_flag: i32 = "sysFlag",
        /// Offset to commit when [`pull_sysflag::COMMIT_OFFSET`] is set.
        commit_offset: i64 = "commitOffset",
        /// How long the broker may hold the request (client: 15000).
        suspend_timeout_millis: i64 = "suspendTimeoutMillis",
        /// Tag expression, used with [`pull_sysflag::SUBSCRIPTION`].
        subscription: Option<String> = "subscription",
        /// Subscription version the consumer holds.
        sub_version: i64 = "subVersion",
        /// `TAG` (default) or `SQL92`.
        expression_type: Option<String> = "expressionType",
        /// 5.x byte cap.
        max_msg_bytes: Option<i32> = "maxMsgBytes",
    }
}

impl PullMessageRequestHeader {
    /// True when the request asks to commit `commit_offset`.
    pub fn has_commit_offset(&self) -> bool {
        self.sys_flag & pull_sysflag::COMMIT_OFFSET != 0
    }

    /// True when the broker may hold the request until a message arrives.
    pub fn is_suspend(&self) -> bool {
        self.sys_flag & pull_sysflag::SUSPEND != 0
    }

    /// True when the filter comes from this request's `subscription`.
    pub fn has_subscription(&self) -> bool {
        self.sys_flag & pull_sysflag::SUBSCRIPTION != 0
    }
}

ext_header! {
    /// PULL_MESSAGE response. All four required fields go out on *every* outcome, as strings:
    /// the C++ client reads a missing or numeric one as 0 and rewinds.
    pub struct PullMessageResponseHeader {
        /// Broker id to pull from next (0 = master).
        suggest_which_broker_id: i64 = "suggestWhichBrokerId",
        /// Offset to pull from next.
        next_begin_offset: i64 = "nextBeginOffset",
        /// Queue's min offset.
        min_offset: i64 = "minOffset",
        /// Queue's max offset (next to be written).
        max_offset: i64 = "maxOffset",
        /// The topic's sysFlag (5.x).
        topic_sys_flag: Option<i32> = "topicSysFlag",
        /// The group's sysFlag (5.x).
        group_sys_flag: Option<i32> = "groupSysFlag",
    }
}

ext_header! {
    /// QUERY_MESSAGE request: messages whose key (or UNIQ_KEY) matches, within a time range.
    pub struct QueryMessageRequestHeader {
        /// Topic.
        topic: String = "topic",
        /// The key; indexed as `topic#key`.
        key: String = "key",
        /// Most messages to return.
        max_num: i32 = "maxNum",
        /// Range start, epoch ms.
        begin_timestamp: i64 = "beginTimestamp",
        /// Range end, epoch ms.
        end_timestamp: i64 = "endTimestamp",
        /// `true` when `key` is a UNIQ_KEY.
        unique_key_query: Option<bool> = "_UNIQUE_KEY_QUERY",
    }
}

ext_header! {
    /// QUERY_MESSAGE response; the body holds the matching records.
    pub struct QueryMessageResponseHeader {
        /// When the index was last updated, epoch ms.
        index_last_update_timestamp: i64 = "indexLastUpdateTimestamp",
        /// Commit-log offset the index covers up to.
        index_last_update_phyoffset: i64 = "indexLastUpdatePhyoffset",
    }
}

ext_header! {
    /// VIEW_MESSAGE_BY_ID request; the response body is one record.
    pub struct ViewMessageByIdRequestHeader {
        /// Commit-log offset, decoded from an offsetMsgId.
        offset: i64 = "offset",
        /// Topic (5.x).
        topic: Option<String> = "topic",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remoting::ext::{ExtFields, HeaderError};

    #[test]
    fn cpp_pull_request_reads_with_subscription_bit() {
        let ext: ExtFields = [
            ("consumerGroup", "cg"),
            ("topic", "T"),
            ("queueId", "2"),
            ("queueOffset", "10"),
            ("maxMsgNums", "32"),
            ("sysFlag", "6"),
            ("commitOffset", "0"),
            ("suspendTimeoutMillis", "15000"),
            ("subscription", "A || B"),
            ("subVersion", "0"),
        ]
        .into_iter()
        .collect();
        let h = PullMessageRequestHeader::from_ext(&ext).unwrap();
        assert_eq!((h.queue_id, h.queue_offset, h.max_msg_nums), (2, 10, 32));
        assert!(h.is_suspend() && h.has_subscription() && !h.has_commit_offset());
        assert_eq!(h.expression_type, None);
        assert_eq!(PullMessageRequestHeader::from_ext(&h.to_ext()), Ok(h));
    }

    #[test]
    fn pull_response_always_writes_the_four_required_fields() {
        let ext = PullMessageResponseHeader::default().to_ext();
        for key in [
            "suggestWhichBrokerId",
            "nextBeginOffset",
            "minOffset",
            "maxOffset",
        ] {
            assert_eq!(ext.get_str(key), Some("0"), "{key}");
        }
        assert_eq!(ext.len(), 4);
    }

    #[test]
    fn query_message_reads_the_unique_key_flag() {
        let h = QueryMessageRequestHeader {
            topic: "T".into(),
            key: "K".into(),
            max_num: 32,
            begin_timestamp: 0,
            end_timestamp: i64::MAX,
            unique_key_query: Some(true),
        };
        let ext = h.to_ext();
        assert_eq!(ext.get_str("_UNIQUE_KEY_QUERY"), Some("true"));
        assert_eq!(QueryMessageRequestHeader::from_ext(&ext), Ok(h));
        let err = ViewMessageByIdRequestHeader::from_ext(&ExtFields::new()).unwrap_err();
        assert_eq!(err, HeaderError::Missing("offset"));
    }
}
