//! Client-management and transaction headers (§2.5–§2.7).
//!
//! END_TRANSACTION's `commitOrRollback` takes the message transaction types
//! ([`crate::message::sysflag`]): 0 unknown, 8 commit, 12 rollback. C++ sends
//! `"transactionId":""`, which reads as absent.

use super::ext_header;
use crate::message::sysflag;

ext_header! {
    /// GET_CONSUMER_LIST_BY_GROUP request; the response body is `ConsumerListBody`.
    pub struct GetConsumerListByGroupRequestHeader {
        /// Consumer group.
        consumer_group: String = "consumerGroup",
    }
}

ext_header! {
    /// UNREGISTER_CLIENT request, sent at shutdown; one of the groups is set.
    pub struct UnregisterClientRequestHeader {
        /// The client id, as in its heartbeats.
        client_id: String = "clientID",
        /// Producer group leaving.
        producer_group: Option<String> = "producerGroup",
        /// Consumer group leaving.
        consumer_group: Option<String> = "consumerGroup",
    }
}

ext_header! {
    /// CONSUMER_SEND_MSG_BACK request: hand a consumed message back for retry.
    pub struct ConsumerSendMsgBackRequestHeader {
        /// Commit-log offset of the consumed message.
        offset: i64 = "offset",
        /// Consumer group.
        group: String = "group",
        /// 0 = broker picks `3 + reconsumeTimes`, -1 = straight to DLQ, >0 = that level.
        delay_level: i32 = "delayLevel",
        /// The message's first id (UNIQ_KEY).
        origin_msg_id: Option<String> = "originMsgId",
        /// The message's topic.
        origin_topic: Option<String> = "originTopic",
        /// Unit mode.
        unit_mode: Option<bool> = "unitMode",
        /// Per-group retry limit (default 16).
        max_reconsume_times: Option<i32> = "maxReconsumeTimes",
    }
}

ext_header! {
    /// END_TRANSACTION request (one-way): commit or roll back a half message.
    pub struct EndTransactionRequestHeader {
        /// Topic (absent from C++).
        topic: Option<String> = "topic",
        /// Producer group.
        producer_group: String = "producerGroup",
        /// The half message's queue offset.
        tran_state_table_offset: i64 = "tranStateTableOffset",
        /// The half message's commit-log offset.
        commit_log_offset: i64 = "commitLogOffset",
        /// 0 unknown, 8 commit, 12 rollback.
        commit_or_rollback: i32 = "commitOrRollback",
        /// True when answering a CHECK_TRANSACTION_STATE.
        from_transaction_check: Option<bool> = "fromTransactionCheck",
        /// The message's UNIQ_KEY.
        msg_id: String = "msgId",
        /// Transaction id.
        transaction_id: Option<String> = "transactionId",
        /// 5.x broker name.
        broker_name: Option<String> = "bname",
    }
}

impl EndTransactionRequestHeader {
    /// True for a commit.
    pub fn is_commit(&self) -> bool {
        self.commit_or_rollback == sysflag::TRANSACTION_COMMIT
    }

    /// True for a rollback.
    pub fn is_rollback(&self) -> bool {
        self.commit_or_rollback == sysflag::TRANSACTION_ROLLBACK
    }

    /// True when this answers a check-back.
    pub fn is_from_check(&self) -> bool {
        self.from_transaction_check.unwrap_or(false)
    }
}

ext_header! {
    /// CHECK_TRANSACTION_STATE request (broker to producer, one-way). C++ reads every field as a
    /// string and aborts on a missing offset, so both offsets are required.
    pub struct CheckTransactionStateRequestHeader {
        /// The real topic.
        topic: Option<String> = "topic",
        /// Queue offset of the re-put half message.
        tran_state_table_offset: i64 = "tranStateTableOffset",
        /// Commit-log offset of the re-put half message.
        commit_log_offset: i64 = "commitLogOffset",
        /// The UNIQ_KEY.
        msg_id: Option<String> = "msgId",
        /// The transaction id (= UNIQ_KEY).
        transaction_id: Option<String> = "transactionId",
        /// The re-put copy's offsetMsgId.
        offset_msg_id: Option<String> = "offsetMsgId",
        /// 5.x broker name.
        broker_name: Option<String> = "bname",
    }
}

ext_header! {
    /// NOTIFY_CONSUMER_IDS_CHANGED request (broker to consumer, one-way).
    pub struct NotifyConsumerIdsChangedRequestHeader {
        /// The group whose membership changed.
        consumer_group: String = "consumerGroup",
    }
}

/// GET_CONSUMER_CONNECTION_LIST request (admin to broker): the consumer group alone.
pub type GetConsumerConnectionListRequestHeader = GetConsumerListByGroupRequestHeader;

ext_header! {
    /// GET_PRODUCER_CONNECTION_LIST request (admin to broker).
    pub struct GetProducerConnectionListRequestHeader {
        /// Producer group.
        producer_group: String = "producerGroup",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remoting::ext::ExtFields;

    #[test]
    fn cpp_end_transaction_reads_digits_and_empty_transaction_id() {
        let ext: ExtFields = [
            ("producerGroup", "pg"),
            ("tranStateTableOffset", "5"),
            ("commitLogOffset", "1024"),
            ("commitOrRollback", "8"),
            ("fromTransactionCheck", "0"),
            ("msgId", "ABC"),
            ("transactionId", ""),
        ]
        .into_iter()
        .collect();
        let h = EndTransactionRequestHeader::from_ext(&ext).unwrap();
        assert!(h.is_commit() && !h.is_rollback() && !h.is_from_check());
        assert_eq!(h.transaction_id, None);
        assert_eq!(h.topic, None);
    }

    #[test]
    fn send_back_reads_numbers_that_arrived_as_json_numbers() {
        // The frame decoder has already turned `"delayLevel":0` into the string "0".
        let ext: ExtFields = [
            ("group", "g"),
            ("offset", "4096"),
            ("delayLevel", "0"),
            ("maxReconsumeTimes", "16"),
            ("unitMode", "0"),
        ]
        .into_iter()
        .collect();
        let h = ConsumerSendMsgBackRequestHeader::from_ext(&ext).unwrap();
        assert_eq!(
            (h.offset, h.delay_level, h.max_reconsume_times),
            (4096, 0, Some(16))
        );
        assert_eq!(h.unit_mode, Some(false));
    }

    #[test]
    fn check_state_always_writes_both_offsets_as_strings() {
        let h = CheckTransactionStateRequestHeader {
            tran_state_table_offset: 3,
            commit_log_offset: 77,
            msg_id: Some("U".into()),
            ..Default::default()
        };
        let ext = h.to_ext();
        assert_eq!(ext.get_str("commitLogOffset"), Some("77"));
        assert_eq!(ext.get_str("tranStateTableOffset"), Some("3"));
        assert_eq!(CheckTransactionStateRequestHeader::from_ext(&ext), Ok(h));
    }
}
