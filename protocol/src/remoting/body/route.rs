//! Route bodies: GET_ROUTEINFO_BY_TOPIC's `TopicRouteData` and GET_BROKER_CLUSTER_INFO's
//! `ClusterInfo` (`rocketmq-protocol.md` §2.9).
//!
//! Both hold `BrokerData.brokerAddrs`, a map from broker id (0 = master) to address that
//! fastjson writes with bare integer keys. `to_json` writes the form the asking client expects
//! ([`JsonForm::for_client`]), compact, because Go parses it by hand and fails on whitespace;
//! `from_json` reads both.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::fastjson::{write_int_key_map, JsonForm};
use super::{decode_json, lenient, to_json_string, BodyError};

/// The broker id of a master.
pub const MASTER_ID: i64 = 0;

/// One broker group (a master and its slaves).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BrokerData {
    /// Broker id to `host:port`; id 0 is the master.
    #[serde(default, deserialize_with = "lenient::null_as_default")]
    pub broker_addrs: BTreeMap<i64, String>,
    /// Broker name; must match `QueueData::broker_name` exactly.
    pub broker_name: String,
    /// Cluster name.
    #[serde(default, deserialize_with = "lenient::null_as_default")]
    pub cluster: String,
    /// 5.x acting-master mode.
    #[serde(default, deserialize_with = "lenient::bool")]
    pub enable_acting_master: bool,
}

impl BrokerData {
    /// The master's address, if registered.
    pub fn master_addr(&self) -> Option<&str> {
        self.broker_addrs.get(&MASTER_ID).map(String::as_str)
    }

    fn write_json(&self, out: &mut String, form: JsonForm) {
        out.push_str(r#"{"brokerAddrs":"#);
        let addrs = self.broker_addrs.iter().map(|(k, v)| (*k, v.as_str()));
        write_int_key_map(out, addrs, form);
        out.push_str(r#","brokerName":"#);
        out.push_str(&to_json_string(&self.broker_name));
        out.push_str(r#","cluster":"#);
        out.push_str(&to_json_string(&self.cluster));
        out.push_str(r#","enableActingMaster":"#);
        out.push_str(if self.enable_acting_master {
            "true"
        } else {
            "false"
        });
        out.push('}');
    }
}

/// One broker's queues for a topic.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QueueData {
    /// Broker name.
    pub broker_name: String,
    /// `perm` bits (see `body::perm`); C++ reads them with `asInt`, so always numbers.
    #[serde(deserialize_with = "lenient::i32")]
    pub perm: i32,
    /// Queues consumers may read: ids `0..read_queue_nums`.
    #[serde(deserialize_with = "lenient::i32")]
    pub read_queue_nums: i32,
    /// Topic sysFlag; spelled `topicSynFlag` before 4.9.0.
    #[serde(default, alias = "topicSynFlag", deserialize_with = "lenient::i32")]
    pub topic_sys_flag: i32,
    /// Queues producers may write: ids `0..write_queue_nums`.
    #[serde(deserialize_with = "lenient::i32")]
    pub write_queue_nums: i32,
}

/// A topic's route.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TopicRouteData {
    /// Brokers serving the topic.
    #[serde(default, deserialize_with = "lenient::null_as_default")]
    pub broker_datas: Vec<BrokerData>,
    /// Filter servers per broker address (obsolete, written as `{}`).
    #[serde(default, deserialize_with = "lenient::null_as_default")]
    pub filter_server_table: BTreeMap<String, Vec<String>>,
    /// `broker:queues;...` for ordered topics. Leave `None`: C++ producers replace
    /// `queueDatas` with it when non-empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_topic_conf: Option<String>,
    /// Per-broker queue counts and permissions.
    #[serde(default, deserialize_with = "lenient::null_as_default")]
    pub queue_datas: Vec<QueueData>,
}

impl TopicRouteData {
    /// Compact JSON with `brokerAddrs` keys in the given form and Java's key order.
    pub fn to_json(&self, form: JsonForm) -> String {
        let mut out = String::with_capacity(256);
        out.push_str(r#"{"brokerDatas":"#);
        write_broker_list(&mut out, &self.broker_datas, form);
        out.push_str(r#","filterServerTable":"#);
        out.push_str(&to_json_string(&self.filter_server_table));
        if let Some(conf) = &self.order_topic_conf {
            out.push_str(r#","orderTopicConf":"#);
            out.push_str(&to_json_string(conf));
        }
        out.push_str(r#","queueDatas":"#);
        out.push_str(&to_json_string(&self.queue_datas));
        out.push('}');
        out
    }

    /// Reads either key form.
    pub fn from_json(body: &[u8]) -> Result<Self, BodyError> {
        decode_json(body)
    }
}

fn write_broker_list(out: &mut String, brokers: &[BrokerData], form: JsonForm) {
    out.push('[');
    for (i, b) in brokers.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        b.write_json(out, form);
    }
    out.push(']');
}

/// Every broker of every cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterInfo {
    /// Broker name to its data.
    #[serde(default, deserialize_with = "lenient::null_as_default")]
    pub broker_addr_table: BTreeMap<String, BrokerData>,
    /// Cluster name to its broker names.
    #[serde(default, deserialize_with = "lenient::null_as_default")]
    pub cluster_addr_table: BTreeMap<String, BTreeSet<String>>,
}

impl ClusterInfo {
    /// Compact JSON with `brokerAddrs` keys in the given form.
    pub fn to_json(&self, form: JsonForm) -> String {
        let mut out = String::with_capacity(256);
        out.push_str(r#"{"brokerAddrTable":{"#);
        for (i, (name, data)) in self.broker_addr_table.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&to_json_string(name));
            out.push(':');
            data.write_json(&mut out, form);
        }
        out.push_str(r#"},"clusterAddrTable":"#);
        out.push_str(&to_json_string(&self.cluster_addr_table));
        out.push('}');
        out
    }

    /// Reads either key form.
    pub fn from_json(body: &[u8]) -> Result<Self, BodyError> {
        decode_json(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn route() -> TopicRouteData {
        TopicRouteData {
            broker_datas: vec![BrokerData {
                broker_addrs: [(0, "10.0.0.1:10911".into()), (1, "10.0.0.2:10911".into())]
                    .into_iter()
                    .collect(),
                broker_name: "broker-a".into(),
                cluster: "DefaultCluster".into(),
                enable_acting_master: false,
            }],
            filter_server_table: BTreeMap::new(),
            order_topic_conf: None,
            queue_datas: vec![QueueData {
                broker_name: "broker-a".into(),
                perm: 6,
                read_queue_nums: 4,
                topic_sys_flag: 0,
                write_queue_nums: 4,
            }],
        }
    }

    #[test]
    fn legacy_form_has_bare_keys_and_no_whitespace() {
        let text = route().to_json(JsonForm::Legacy);
        assert_eq!(
            text,
            r#"{"brokerDatas":[{"brokerAddrs":{0:"10.0.0.1:10911",1:"10.0.0.2:10911"},"brokerName":"broker-a","cluster":"DefaultCluster","enableActingMaster":false}],"filterServerTable":{},"queueDatas":[{"brokerName":"broker-a","perm":6,"readQueueNums":4,"topicSysFlag":0,"writeQueueNums":4}]}"#
        );
        assert!(serde_json::from_str::<serde_json::Value>(&text).is_err());
    }

    #[test]
    fn standard_form_is_valid_json_with_quoted_keys() {
        let text = route().to_json(JsonForm::Standard);
        assert!(text.contains(r#"{"0":"10.0.0.1:10911","1":"10.0.0.2:10911"}"#));
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["queueDatas"][0]["perm"], 6);
    }

    #[test]
    fn both_forms_decode_to_the_same_route() {
        for form in [JsonForm::Legacy, JsonForm::Standard] {
            let back = TopicRouteData::from_json(route().to_json(form).as_bytes()).unwrap();
            assert_eq!(back, route());
            assert_eq!(back.broker_datas[0].master_addr(), Some("10.0.0.1:10911"));
        }
    }

    #[test]
    fn old_name_server_spelling_and_whitespace_are_read() {
        let raw = br#"{ "brokerDatas" : [ { "brokerAddrs" : { 0 : "a:1" }, "brokerName" : "b" } ],
            "queueDatas" : [ { "brokerName":"b","perm":"6","readQueueNums":1,"writeQueueNums":1,"topicSynFlag":3 } ],
            "orderTopicConf" : null }"#;
        let r = TopicRouteData::from_json(raw).unwrap();
        assert_eq!(r.queue_datas[0].topic_sys_flag, 3);
        assert_eq!(r.queue_datas[0].perm, 6);
        assert_eq!(r.broker_datas[0].master_addr(), Some("a:1"));
    }

    #[test]
    fn cluster_info_round_trips_in_both_forms() {
        let b = route().broker_datas[0].clone();
        let info = ClusterInfo {
            broker_addr_table: [("0".to_string(), b)].into_iter().collect(),
            cluster_addr_table: [("DefaultCluster".to_string(), ["0".to_string()].into())]
                .into_iter()
                .collect(),
        };
        let legacy = info.to_json(JsonForm::Legacy);
        assert!(legacy.starts_with(r#"{"brokerAddrTable":{"0":{"brokerAddrs":{0:"#));
        for form in [JsonForm::Legacy, JsonForm::Standard] {
            assert_eq!(
                ClusterInfo::from_json(info.to_json(form).as_bytes()).unwrap(),
                info
            );
        }
    }

    proptest! {
        #[test]
        fn route_decode_never_panics(raw in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = TopicRouteData::from_json(&raw);
        }
    }
}
