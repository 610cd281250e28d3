//! Name-server and admin headers (§2.9).

use super::ext_header;

ext_header! {
    /// GET_ROUTEINFO_BY_TOPIC request.
    pub struct GetRouteInfoRequestHeader {
        /// Topic.
        topic: String = "topic",
        /// 5.x: answer in standard JSON whatever the client version.
        accept_standard_json_only: Option<bool> = "acceptStandardJsonOnly",
    }
}

ext_header! {
    /// REGISTER_BROKER request; the body is `RegisterBrokerBody`.
    pub struct RegisterBrokerRequestHeader {
        /// Broker name.
        broker_name: String = "brokerName",
        /// `brokerIP1:listenPort`.
        broker_addr: String = "brokerAddr",
        /// Cluster name.
        cluster_name: String = "clusterName",
        /// `brokerIP2:haListenPort`.
        ha_server_addr: String = "haServerAddr",
        /// 0 = master.
        broker_id: i64 = "brokerId",
        /// The body is compressed (5.x).
        compressed: Option<bool> = "compressed",
        /// `CRC32(body) & 0x7FFFFFFF`, or 0 for "unchecked".
        body_crc32: Option<i32> = "bodyCrc32",
        /// 5.x: how long the name server keeps the registration.
        heartbeat_timeout_millis: Option<i64> = "heartbeatTimeoutMillis",
        /// 5.x acting-master mode.
        enable_acting_master: Option<bool> = "enableActingMaster",
    }
}

ext_header! {
    /// REGISTER_BROKER response.
    pub struct RegisterBrokerResponseHeader {
        /// The master's HA address, for a slave.
        ha_server_addr: Option<String> = "haServerAddr",
        /// The master's address, for a slave.
        master_addr: Option<String> = "masterAddr",
    }
}

ext_header! {
    /// UNREGISTER_BROKER request.
    pub struct UnregisterBrokerRequestHeader {
        /// Broker name.
        broker_name: String = "brokerName",
        /// `brokerIP1:listenPort`.
        broker_addr: String = "brokerAddr",
        /// Cluster name.
        cluster_name: String = "clusterName",
        /// 0 = master.
        broker_id: i64 = "brokerId",
    }
}

ext_header! {
    /// UPDATE_AND_CREATE_TOPIC request (admin to broker).
    pub struct UpdateAndCreateTopicRequestHeader {
        /// Topic.
        topic: String = "topic",
        /// Template topic (`TBW102`).
        default_topic: String = "defaultTopic",
        /// Read queue count.
        read_queue_nums: i32 = "readQueueNums",
        /// Write queue count.
        write_queue_nums: i32 = "writeQueueNums",
        /// `perm` bits (see `body::perm`).
        perm: i32 = "perm",
        /// `SINGLE_TAG` or `MULTI_TAG`.
        topic_filter_type: String = "topicFilterType",
        /// Topic sysFlag.
        topic_sys_flag: Option<i32> = "topicSysFlag",
        /// Ordered topic.
        order: bool = "order",
        /// 5.x attributes, `+key=value` comma-joined.
        attributes: Option<String> = "attributes",
        /// 5.x: overwrite even when attributes conflict.
        force: Option<bool> = "force",
    }
}

ext_header! {
    /// PUT_KV_CONFIG request (admin to name server).
    pub struct PutKvConfigRequestHeader {
        /// Namespace (`ORDER_TOPIC_CONFIG` for ordered topics).
        namespace: String = "namespace",
        /// Key.
        key: String = "key",
        /// Value.
        value: String = "value",
    }
}

ext_header! {
    /// GET_KV_CONFIG and DELETE_KV_CONFIG request.
    pub struct KvConfigKeyHeader {
        /// Namespace.
        namespace: String = "namespace",
        /// Key.
        key: String = "key",
    }
}

ext_header! {
    /// GET_KV_CONFIG response.
    pub struct GetKvConfigResponseHeader {
        /// The value.
        value: Option<String> = "value",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remoting::ext::{ExtFields, HeaderError};

    #[test]
    fn route_request_from_cpp_has_only_the_topic() {
        let ext: ExtFields = [("topic", "TBW102"), ("AccessKey", ""), ("Signature", "")]
            .into_iter()
            .collect();
        let h = GetRouteInfoRequestHeader::from_ext(&ext).unwrap();
        assert_eq!(h.topic, "TBW102");
        assert_eq!(h.accept_standard_json_only, None);
    }

    #[test]
    fn register_broker_round_trips() {
        let h = RegisterBrokerRequestHeader {
            broker_name: "broker-a".into(),
            broker_addr: "10.0.0.1:10911".into(),
            cluster_name: "DefaultCluster".into(),
            ha_server_addr: "10.0.0.1:10912".into(),
            broker_id: 0,
            body_crc32: Some(123),
            ..Default::default()
        };
        assert_eq!(RegisterBrokerRequestHeader::from_ext(&h.to_ext()), Ok(h));
    }

    #[test]
    fn create_topic_requires_order() {
        let h = UpdateAndCreateTopicRequestHeader {
            topic: "T".into(),
            default_topic: "TBW102".into(),
            read_queue_nums: 4,
            write_queue_nums: 4,
            perm: 6,
            topic_filter_type: "SINGLE_TAG".into(),
            ..Default::default()
        };
        let mut ext = h.to_ext();
        assert_eq!(ext.get_str("order"), Some("false"));
        ext.remove("order");
        assert_eq!(
            UpdateAndCreateTopicRequestHeader::from_ext(&ext),
            Err(HeaderError::Missing("order"))
        );
    }
}
