//! Offset headers (§2.4): consumer offsets and the queue-offset queries.
//!
//! Every offset query answers with a single `offset` field, so one response type,
//! [`OffsetResponseHeader`], serves all of them under their Java names.

use super::ext_header;

ext_header! {
    /// QUERY_CONSUMER_OFFSET request.
    pub struct QueryConsumerOffsetRequestHeader {
        /// Consumer group.
        consumer_group: String = "consumerGroup",
        /// Topic.
        topic: String = "topic",
        /// Queue id.
        queue_id: i32 = "queueId",
        /// 5.x: `false` means answer QUERY_NOT_FOUND rather than 0.
        set_zero_if_not_found: Option<bool> = "setZeroIfNotFound",
    }
}

ext_header! {
    /// UPDATE_CONSUMER_OFFSET request.
    pub struct UpdateConsumerOffsetRequestHeader {
        /// Consumer group.
        consumer_group: String = "consumerGroup",
        /// Topic.
        topic: String = "topic",
        /// Queue id.
        queue_id: i32 = "queueId",
        /// The next offset to consume.
        commit_offset: i64 = "commitOffset",
    }
}

ext_header! {
    /// GET_MAX_OFFSET request.
    pub struct GetMaxOffsetRequestHeader {
        /// Topic.
        topic: String = "topic",
        /// Queue id.
        queue_id: i32 = "queueId",
        /// 5.x: only count committed (replicated) entries.
        committed: Option<bool> = "committed",
    }
}

ext_header! {
    /// GET_MIN_OFFSET request.
    pub struct GetMinOffsetRequestHeader {
        /// Topic.
        topic: String = "topic",
        /// Queue id.
        queue_id: i32 = "queueId",
    }
}

ext_header! {
    /// SEARCH_OFFSET_BY_TIMESTAMP request.
    pub struct SearchOffsetRequestHeader {
        /// Topic.
        topic: String = "topic",
        /// Queue id.
        queue_id: i32 = "queueId",
        /// Store time to search for, epoch ms.
        timestamp: i64 = "timestamp",
        /// 5.x: `lower` (default) or `upper`.
        boundary_type: Option<String> = "boundaryType",
    }
}

ext_header! {
    /// GET_EARLIEST_MSG_STORETIME request.
    pub struct GetEarliestMsgStoretimeRequestHeader {
        /// Topic.
        topic: String = "topic",
        /// Queue id.
        queue_id: i32 = "queueId",
    }
}

ext_header! {
    /// GET_EARLIEST_MSG_STORETIME response.
    pub struct GetEarliestMsgStoretimeResponseHeader {
        /// Store time of the earliest message, epoch ms.
        timestamp: i64 = "timestamp",
    }
}

ext_header! {
    /// The response to every offset query: one `offset`, always written.
    pub struct OffsetResponseHeader {
        /// The offset asked for.
        offset: i64 = "offset",
    }
}

/// QUERY_CONSUMER_OFFSET response.
pub type QueryConsumerOffsetResponseHeader = OffsetResponseHeader;
/// GET_MAX_OFFSET response: the next offset to be written.
pub type GetMaxOffsetResponseHeader = OffsetResponseHeader;
/// GET_MIN_OFFSET response: the first offset still stored.
pub type GetMinOffsetResponseHeader = OffsetResponseHeader;
/// SEARCH_OFFSET_BY_TIMESTAMP response.
pub type SearchOffsetResponseHeader = OffsetResponseHeader;

ext_header! {
    /// GET_CONSUME_STATS request (admin to broker).
    pub struct GetConsumeStatsRequestHeader {
        /// Consumer group.
        consumer_group: String = "consumerGroup",
        /// One topic; every topic the group has offsets in when absent.
        topic: Option<String> = "topic",
    }
}

ext_header! {
    /// An admin request naming one topic and nothing else.
    pub struct TopicRequestHeader {
        /// Topic.
        topic: String = "topic",
    }
}

/// QUERY_TOPIC_CONSUME_BY_WHO request (admin to broker).
pub type QueryTopicConsumeByWhoRequestHeader = TopicRequestHeader;
/// GET_TOPIC_STATS_INFO request (admin to broker).
pub type GetTopicStatsInfoRequestHeader = TopicRequestHeader;

ext_header! {
    /// INVOKE_BROKER_TO_RESET_OFFSET request (admin to broker).
    pub struct ResetOffsetRequestHeader {
        /// Topic.
        topic: String = "topic",
        /// Consumer group.
        group: String = "group",
        /// Time to reset to (epoch ms; -1: the queues' ends).
        timestamp: i64 = "timestamp",
        /// Move offsets forward too (otherwise only back).
        is_force: Option<bool> = "isForce",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remoting::ext::{ExtFields, HeaderError};

    #[test]
    fn update_offset_round_trips_and_requires_commit_offset() {
        let h = UpdateConsumerOffsetRequestHeader {
            consumer_group: "g".into(),
            topic: "T".into(),
            queue_id: 3,
            commit_offset: 42,
        };
        let mut ext = h.to_ext();
        assert_eq!(UpdateConsumerOffsetRequestHeader::from_ext(&ext), Ok(h));
        ext.remove("commitOffset");
        assert_eq!(
            UpdateConsumerOffsetRequestHeader::from_ext(&ext),
            Err(HeaderError::Missing("commitOffset"))
        );
    }

    #[test]
    fn offset_response_is_a_decimal_string() {
        let ext = GetMaxOffsetResponseHeader { offset: -1 }.to_ext();
        assert_eq!(ext.get_str("offset"), Some("-1"));
        let ext: ExtFields = [("topic", "T"), ("queueId", "x")].into_iter().collect();
        assert!(matches!(
            GetMinOffsetRequestHeader::from_ext(&ext),
            Err(HeaderError::Invalid {
                field: "queueId",
                ..
            })
        ));
    }
}
