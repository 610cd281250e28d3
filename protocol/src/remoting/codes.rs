//! Command codes (`rocketmq-protocol.md` §2.1 and §2.10).
//!
//! Codes are plain `i32` constants rather than enums because the wire carries any integer: an
//! unknown request code must still be answered with `REQUEST_CODE_NOT_SUPPORTED`, and a response
//! code we do not know must still be passed through. The `name` functions serve logging.

/// Request codes: what a request asks for.
pub mod request_code {
    /// Send one message, V1 (long) header names. Go uses it for single messages.
    pub const SEND_MESSAGE: i32 = 10;
    /// Pull messages from one queue; the response body is concatenated stored records.
    pub const PULL_MESSAGE: i32 = 11;
    /// Look messages up by key in the index; the response body is concatenated records.
    pub const QUERY_MESSAGE: i32 = 12;
    /// Read a group's committed offset for one queue.
    pub const QUERY_CONSUMER_OFFSET: i32 = 14;
    /// Commit a group's offset for one queue (one-way in intent).
    pub const UPDATE_CONSUMER_OFFSET: i32 = 15;
    /// Create or update a topic (admin).
    pub const UPDATE_AND_CREATE_TOPIC: i32 = 17;
    /// Admin to broker: the broker's figures as a key/value table (`mqadmin clusterList`).
    pub const GET_BROKER_RUNTIME_INFO: i32 = 28;
    /// Find the queue offset of the first message stored at or after a timestamp.
    pub const SEARCH_OFFSET_BY_TIMESTAMP: i32 = 29;
    /// The next offset to be written in a queue.
    pub const GET_MAX_OFFSET: i32 = 30;
    /// The first offset still stored in a queue.
    pub const GET_MIN_OFFSET: i32 = 31;
    /// Store time of the earliest message still in a queue.
    pub const GET_EARLIEST_MSG_STORETIME: i32 = 32;
    /// Fetch one stored record by commit-log offset.
    pub const VIEW_MESSAGE_BY_ID: i32 = 33;
    /// Client heartbeat; the body is HeartbeatData JSON.
    pub const HEART_BEAT: i32 = 34;
    /// A client leaving a producer or consumer group.
    pub const UNREGISTER_CLIENT: i32 = 35;
    /// A consumer handing a message back for retry.
    pub const CONSUMER_SEND_MSG_BACK: i32 = 36;
    /// Commit or roll back a half message (one-way).
    pub const END_TRANSACTION: i32 = 37;
    /// The client ids of a consumer group.
    pub const GET_CONSUMER_LIST_BY_GROUP: i32 = 38;
    /// Broker to producer: ask for a half message's state (one-way).
    pub const CHECK_TRANSACTION_STATE: i32 = 39;
    /// Broker to consumer: the group's membership changed, rebalance (one-way).
    pub const NOTIFY_CONSUMER_IDS_CHANGED: i32 = 40;
    /// Lock queues for orderly consumption.
    pub const LOCK_BATCH_MQ: i32 = 41;
    /// Release queue locks.
    pub const UNLOCK_BATCH_MQ: i32 = 42;
    /// Broker to name server: periodic registration.
    pub const REGISTER_BROKER: i32 = 103;
    /// Admin to name server: store a key/value (`updateTopic -o` stores an order config).
    pub const PUT_KV_CONFIG: i32 = 100;
    /// Admin or client to name server: read a key/value.
    pub const GET_KV_CONFIG: i32 = 101;
    /// Admin to name server: delete a key/value.
    pub const DELETE_KV_CONFIG: i32 = 102;
    /// Broker to name server: leaving.
    pub const UNREGISTER_BROKER: i32 = 104;
    /// Client to name server: the route of one topic.
    pub const GET_ROUTEINFO_BY_TOPIC: i32 = 105;
    /// Admin to name server: every broker of every cluster.
    pub const GET_BROKER_CLUSTER_INFO: i32 = 106;
    /// Admin to broker: each queue's min and max offset (`mqadmin topicStatus`).
    pub const GET_TOPIC_STATS_INFO: i32 = 202;
    /// Admin to broker: a consumer group's members (`mqadmin consumerConnection`).
    pub const GET_CONSUMER_CONNECTION_LIST: i32 = 203;
    /// Admin to broker: a producer group's members (`mqadmin producerConnection`).
    pub const GET_PRODUCER_CONNECTION_LIST: i32 = 204;
    /// Admin to name server: every topic (`mqadmin topicList`).
    pub const GET_ALL_TOPIC_LIST_FROM_NAMESERVER: i32 = 206;
    /// Admin to broker: a group's offsets against the queues' ends (`consumerProgress`).
    pub const GET_CONSUME_STATS: i32 = 208;
    /// Broker to consumer: reset offsets (admin-triggered).
    pub const RESET_CONSUMER_CLIENT_OFFSET: i32 = 220;
    /// Broker to consumer: report consume status.
    pub const GET_CONSUMER_STATUS_FROM_CLIENT: i32 = 221;
    /// Broker to consumer: report running info.
    pub const GET_CONSUMER_RUNNING_INFO: i32 = 307;
    /// Broker to consumer: consume one message directly (admin tool).
    pub const CONSUME_MESSAGE_DIRECTLY: i32 = 309;
    /// Admin to broker: reset a group's offsets to a time (`mqadmin resetOffsetByTime`).
    pub const INVOKE_BROKER_TO_RESET_OFFSET: i32 = 222;
    /// Admin to broker: the groups consuming a topic.
    pub const QUERY_TOPIC_CONSUME_BY_WHO: i32 = 300;
    /// Send one message, V2 (short `a`..`n`) header names. Java and C++ default.
    pub const SEND_MESSAGE_V2: i32 = 310;
    /// Send an encoded batch; V2 header with `m=true`.
    pub const SEND_BATCH_MESSAGE: i32 = 320;
    /// Re-check a half message parked after too many checks (admin).
    pub const RESUME_CHECK_HALF_MESSAGE: i32 = 323;
    /// Broker to client: deliver a request-reply answer.
    pub const PUSH_REPLY_MESSAGE_TO_CLIENT: i32 = 326;
    /// 5.x lite pull; same header and body as [`PULL_MESSAGE`].
    pub const LITE_PULL_MESSAGE: i32 = 361;
    /// 5.3.2+: cancel a timer message.
    pub const RECALL_MESSAGE: i32 = 370;

    /// The Java constant name of a request code, for logs.
    pub fn name(code: i32) -> Option<&'static str> {
        Some(match code {
            SEND_MESSAGE => "SEND_MESSAGE",
            PULL_MESSAGE => "PULL_MESSAGE",
            QUERY_MESSAGE => "QUERY_MESSAGE",
            QUERY_CONSUMER_OFFSET => "QUERY_CONSUMER_OFFSET",
            UPDATE_CONSUMER_OFFSET => "UPDATE_CONSUMER_OFFSET",
            UPDATE_AND_CREATE_TOPIC => "UPDATE_AND_CREATE_TOPIC",
            GET_BROKER_RUNTIME_INFO => "GET_BROKER_RUNTIME_INFO",
            SEARCH_OFFSET_BY_TIMESTAMP => "SEARCH_OFFSET_BY_TIMESTAMP",
            GET_MAX_OFFSET => "GET_MAX_OFFSET",
            GET_MIN_OFFSET => "GET_MIN_OFFSET",
            GET_EARLIEST_MSG_STORETIME => "GET_EARLIEST_MSG_STORETIME",
            VIEW_MESSAGE_BY_ID => "VIEW_MESSAGE_BY_ID",
            HEART_BEAT => "HEART_BEAT",
            UNREGISTER_CLIENT => "UNREGISTER_CLIENT",
            CONSUMER_SEND_MSG_BACK => "CONSUMER_SEND_MSG_BACK",
            END_TRANSACTION => "END_TRANSACTION",
            GET_CONSUMER_LIST_BY_GROUP => "GET_CONSUMER_LIST_BY_GROUP",
            CHECK_TRANSACTION_STATE => "CHECK_TRANSACTION_STATE",
            NOTIFY_CONSUMER_IDS_CHANGED => "NOTIFY_CONSUMER_IDS_CHANGED",
            LOCK_BATCH_MQ => "LOCK_BATCH_MQ",
            UNLOCK_BATCH_MQ => "UNLOCK_BATCH_MQ",
            REGISTER_BROKER => "REGISTER_BROKER",
            PUT_KV_CONFIG => "PUT_KV_CONFIG",
            GET_KV_CONFIG => "GET_KV_CONFIG",
            DELETE_KV_CONFIG => "DELETE_KV_CONFIG",
            UNREGISTER_BROKER => "UNREGISTER_BROKER",
            GET_ROUTEINFO_BY_TOPIC => "GET_ROUTEINFO_BY_TOPIC",
            GET_BROKER_CLUSTER_INFO => "GET_BROKER_CLUSTER_INFO",
            GET_TOPIC_STATS_INFO => "GET_TOPIC_STATS_INFO",
            GET_CONSUMER_CONNECTION_LIST => "GET_CONSUMER_CONNECTION_LIST",
            GET_PRODUCER_CONNECTION_LIST => "GET_PRODUCER_CONNECTION_LIST",
            GET_ALL_TOPIC_LIST_FROM_NAMESERVER => "GET_ALL_TOPIC_LIST_FROM_NAMESERVER",
            GET_CONSUME_STATS => "GET_CONSUME_STATS",
            QUERY_TOPIC_CONSUME_BY_WHO => "QUERY_TOPIC_CONSUME_BY_WHO",
            INVOKE_BROKER_TO_RESET_OFFSET => "INVOKE_BROKER_TO_RESET_OFFSET",
            RESET_CONSUMER_CLIENT_OFFSET => "RESET_CONSUMER_CLIENT_OFFSET",
            GET_CONSUMER_STATUS_FROM_CLIENT => "GET_CONSUMER_STATUS_FROM_CLIENT",
            GET_CONSUMER_RUNNING_INFO => "GET_CONSUMER_RUNNING_INFO",
            CONSUME_MESSAGE_DIRECTLY => "CONSUME_MESSAGE_DIRECTLY",
            SEND_MESSAGE_V2 => "SEND_MESSAGE_V2",
            SEND_BATCH_MESSAGE => "SEND_BATCH_MESSAGE",
            RESUME_CHECK_HALF_MESSAGE => "RESUME_CHECK_HALF_MESSAGE",
            PUSH_REPLY_MESSAGE_TO_CLIENT => "PUSH_REPLY_MESSAGE_TO_CLIENT",
            LITE_PULL_MESSAGE => "LITE_PULL_MESSAGE",
            RECALL_MESSAGE => "RECALL_MESSAGE",
            _ => return None,
        })
    }
}

/// Response codes: how a request went.
pub mod response_code {
    /// Done. For a send, the message is stored.
    pub const SUCCESS: i32 = 0;
    /// Generic failure; the remark says why.
    pub const SYSTEM_ERROR: i32 = 1;
    /// Flow control or a full thread pool; 5.x Java producers retry elsewhere.
    pub const SYSTEM_BUSY: i32 = 2;
    /// Unknown request code; remark `" request type N not supported"`.
    pub const REQUEST_CODE_NOT_SUPPORTED: i32 = 3;
    /// A transaction operation failed.
    pub const TRANSACTION_FAILED: i32 = 4;
    /// Stored, but the disk flush timed out (the client treats the message as stored).
    pub const FLUSH_DISK_TIMEOUT: i32 = 10;
    /// Stored, but no slave is available (the client treats the message as stored).
    pub const SLAVE_NOT_AVAILABLE: i32 = 11;
    /// Stored, but the slave flush timed out (the client treats the message as stored).
    pub const FLUSH_SLAVE_TIMEOUT: i32 = 12;
    /// The message is malformed or too large.
    pub const MESSAGE_ILLEGAL: i32 = 13;
    /// The store refuses writes (disk full, slave, shutting down).
    pub const SERVICE_NOT_AVAILABLE: i32 = 14;
    /// The client's version is not supported.
    pub const VERSION_NOT_SUPPORTED: i32 = 15;
    /// Not permitted (topic perm, system topic, ACL).
    pub const NO_PERMISSION: i32 = 16;
    /// The topic does not exist.
    pub const TOPIC_NOT_EXIST: i32 = 17;
    /// The topic already exists.
    pub const TOPIC_EXIST_ALREADY: i32 = 18;
    /// Pull found nothing new (long-polled before it is sent).
    pub const PULL_NOT_FOUND: i32 = 19;
    /// Pull found entries but none matched the filter; pull again at once.
    pub const PULL_RETRY_IMMEDIATELY: i32 = 20;
    /// The pull offset is out of range; `nextBeginOffset` says where to go.
    pub const PULL_OFFSET_MOVED: i32 = 21;
    /// No such offset or message; clients read it as "none".
    pub const QUERY_NOT_FOUND: i32 = 22;
    /// The subscription expression does not parse.
    pub const SUBSCRIPTION_PARSE_FAILED: i32 = 23;
    /// No subscription registered for this group and topic.
    pub const SUBSCRIPTION_NOT_EXIST: i32 = 24;
    /// The registered subscription is older than the pull's.
    pub const SUBSCRIPTION_NOT_LATEST: i32 = 25;
    /// The subscription group does not exist.
    pub const SUBSCRIPTION_GROUP_NOT_EXIST: i32 = 26;
    /// Class-filter data missing.
    pub const FILTER_DATA_NOT_EXIST: i32 = 27;
    /// Class-filter data outdated.
    pub const FILTER_DATA_NOT_LATEST: i32 = 28;
    /// A header field is out of range or malformed.
    pub const INVALID_PARAMETER: i32 = 29;
    /// Transaction check answer: commit.
    pub const TRANSACTION_SHOULD_COMMIT: i32 = 200;
    /// Transaction check answer: roll back.
    pub const TRANSACTION_SHOULD_ROLLBACK: i32 = 201;
    /// Transaction check answer: unknown (sic, Java's spelling).
    pub const TRANSACTION_STATE_UNKNOW: i32 = 202;
    /// The transaction belongs to another producer group.
    pub const TRANSACTION_STATE_GROUP_WRONG: i32 = 203;
    /// Unit (multi-tenant) routing: no buyer id.
    pub const NO_BUYER_ID: i32 = 204;
    /// Unit (multi-tenant) routing: not in the current unit.
    pub const NOT_IN_CURRENT_UNIT: i32 = 205;
    /// The target consumer is not connected.
    pub const CONSUMER_NOT_ONLINE: i32 = 206;
    /// Direct consumption timed out.
    pub const CONSUME_MSG_TIMEOUT: i32 = 207;
    /// No message (pop and admin paths).
    pub const NO_MESSAGE: i32 = 208;
    /// Too many parked polls.
    pub const POLLING_FULL: i32 = 209;
    /// A parked poll timed out.
    pub const POLLING_TIMEOUT: i32 = 210;
    /// The named broker is unknown.
    pub const BROKER_NOT_EXIST: i32 = 211;
    /// Flow control (5.x).
    pub const FLOW_CONTROL: i32 = 215;
    /// This broker does not lead the queue (controller mode).
    pub const NOT_LEADER_FOR_QUEUE: i32 = 501;
    /// Operation not allowed in this state.
    pub const ILLEGAL_OPERATION: i32 = 604;
    /// 5.x: the broker is going away; reconnect elsewhere.
    pub const GO_AWAY: i32 = 1500;

    /// The Java constant name of a response code, for logs.
    pub fn name(code: i32) -> Option<&'static str> {
        Some(match code {
            SUCCESS => "SUCCESS",
            SYSTEM_ERROR => "SYSTEM_ERROR",
            SYSTEM_BUSY => "SYSTEM_BUSY",
            REQUEST_CODE_NOT_SUPPORTED => "REQUEST_CODE_NOT_SUPPORTED",
            TRANSACTION_FAILED => "TRANSACTION_FAILED",
            FLUSH_DISK_TIMEOUT => "FLUSH_DISK_TIMEOUT",
            SLAVE_NOT_AVAILABLE => "SLAVE_NOT_AVAILABLE",
            FLUSH_SLAVE_TIMEOUT => "FLUSH_SLAVE_TIMEOUT",
            MESSAGE_ILLEGAL => "MESSAGE_ILLEGAL",
            SERVICE_NOT_AVAILABLE => "SERVICE_NOT_AVAILABLE",
            VERSION_NOT_SUPPORTED => "VERSION_NOT_SUPPORTED",
            NO_PERMISSION => "NO_PERMISSION",
            TOPIC_NOT_EXIST => "TOPIC_NOT_EXIST",
            TOPIC_EXIST_ALREADY => "TOPIC_EXIST_ALREADY",
            PULL_NOT_FOUND => "PULL_NOT_FOUND",
            PULL_RETRY_IMMEDIATELY => "PULL_RETRY_IMMEDIATELY",
            PULL_OFFSET_MOVED => "PULL_OFFSET_MOVED",
            QUERY_NOT_FOUND => "QUERY_NOT_FOUND",
            SUBSCRIPTION_PARSE_FAILED => "SUBSCRIPTION_PARSE_FAILED",
            SUBSCRIPTION_NOT_EXIST => "SUBSCRIPTION_NOT_EXIST",
            SUBSCRIPTION_NOT_LATEST => "SUBSCRIPTION_NOT_LATEST",
            SUBSCRIPTION_GROUP_NOT_EXIST => "SUBSCRIPTION_GROUP_NOT_EXIST",
            FILTER_DATA_NOT_EXIST => "FILTER_DATA_NOT_EXIST",
            FILTER_DATA_NOT_LATEST => "FILTER_DATA_NOT_LATEST",
            INVALID_PARAMETER => "INVALID_PARAMETER",
            TRANSACTION_SHOULD_COMMIT => "TRANSACTION_SHOULD_COMMIT",
            TRANSACTION_SHOULD_ROLLBACK => "TRANSACTION_SHOULD_ROLLBACK",
            TRANSACTION_STATE_UNKNOW => "TRANSACTION_STATE_UNKNOW",
            TRANSACTION_STATE_GROUP_WRONG => "TRANSACTION_STATE_GROUP_WRONG",
            NO_BUYER_ID => "NO_BUYER_ID",
            NOT_IN_CURRENT_UNIT => "NOT_IN_CURRENT_UNIT",
            CONSUMER_NOT_ONLINE => "CONSUMER_NOT_ONLINE",
            CONSUME_MSG_TIMEOUT => "CONSUME_MSG_TIMEOUT",
            NO_MESSAGE => "NO_MESSAGE",
            POLLING_FULL => "POLLING_FULL",
            POLLING_TIMEOUT => "POLLING_TIMEOUT",
            BROKER_NOT_EXIST => "BROKER_NOT_EXIST",
            FLOW_CONTROL => "FLOW_CONTROL",
            NOT_LEADER_FOR_QUEUE => "NOT_LEADER_FOR_QUEUE",
            ILLEGAL_OPERATION => "ILLEGAL_OPERATION",
            GO_AWAY => "GO_AWAY",
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{request_code, response_code};

    #[test]
    fn codes_match_the_reference_numbers() {
        assert_eq!(request_code::SEND_MESSAGE_V2, 310);
        assert_eq!(request_code::GET_ROUTEINFO_BY_TOPIC, 105);
        assert_eq!(response_code::QUERY_NOT_FOUND, 22);
        assert_eq!(response_code::GO_AWAY, 1500);
    }

    #[test]
    fn names_are_known_for_listed_codes_only() {
        assert_eq!(request_code::name(34), Some("HEART_BEAT"));
        assert_eq!(request_code::name(9999), None);
        assert_eq!(response_code::name(13), Some("MESSAGE_ILLEGAL"));
        assert_eq!(response_code::name(-1), None);
    }
}
