//! HEART_BEAT (34) body and subscriptions (`rocketmq-protocol.md` §2.5, compat-notes point 4).
//!
//! C++ clients send enum ordinals (`"consumeType":1`), a string `subVersion`, and leave out
//! `classFilterMode`, `tagsSet`, `codeSet`, `expressionType` and `unitMode`; another broker
//! panicked on exactly that. Everything missing is defaulted here. C++ also fills `codeSet` with
//! `atoi(tag)` instead of Java's hash, so a broker should filter on
//! [`SubscriptionData::normalized`], which recomputes tags and codes from `subString`.

use serde::{Deserialize, Serialize};

use super::{java_enum, lenient};
use crate::message::java_hash;

/// The subscription expression meaning "every tag".
pub const SUB_ALL: &str = "*";
/// The default expression type.
pub const EXPRESSION_TYPE_TAG: &str = "TAG";

java_enum! {
    /// How a consumer gets messages.
    pub enum ConsumeType {
        /// Pull consumer ("PULL").
        ConsumeActively = 0 => "CONSUME_ACTIVELY",
        /// Push consumer ("PUSH").
        ConsumePassively = 1 => "CONSUME_PASSIVELY",
        /// 5.x pop consumer.
        ConsumePop = 2 => "CONSUME_POP",
    }
    default ConsumePassively
}

java_enum! {
    /// How a group shares messages.
    pub enum MessageModel {
        /// Every consumer gets every message; offsets stay in the client.
        Broadcasting = 0 => "BROADCASTING",
        /// Queues are shared out among the group.
        Clustering = 1 => "CLUSTERING",
    }
    default Clustering
}

java_enum! {
    /// Where a group with no committed offset starts.
    pub enum ConsumeFromWhere {
        /// The queue's max offset (`%RETRY%` topics: 0).
        ConsumeFromLastOffset = 0 => "CONSUME_FROM_LAST_OFFSET",
        /// Deprecated.
        ConsumeFromLastOffsetAndFromMinWhenBootFirst = 1
            => "CONSUME_FROM_LAST_OFFSET_AND_FROM_MIN_WHEN_BOOT_FIRST",
        /// Deprecated.
        ConsumeFromMinOffset = 2 => "CONSUME_FROM_MIN_OFFSET",
        /// Deprecated.
        ConsumeFromMaxOffset = 3 => "CONSUME_FROM_MAX_OFFSET",
        /// Offset 0.
        ConsumeFromFirstOffset = 4 => "CONSUME_FROM_FIRST_OFFSET",
        /// The offset found by timestamp.
        ConsumeFromTimestamp = 5 => "CONSUME_FROM_TIMESTAMP",
    }
    default ConsumeFromLastOffset
}

/// The HEART_BEAT body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HeartbeatData {
    /// `ip@instance`; the id GET_CONSUMER_LIST_BY_GROUP must return verbatim.
    #[serde(rename = "clientID")]
    pub client_id: String,
    /// Consumer groups this client belongs to.
    #[serde(default, deserialize_with = "lenient::null_as_default")]
    pub consumer_data_set: Vec<ConsumerData>,
    /// 5.x heartbeat V2 fingerprint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_fingerprint: Option<i64>,
    /// Producer groups this client belongs to.
    #[serde(default, deserialize_with = "lenient::null_as_default")]
    pub producer_data_set: Vec<ProducerData>,
    /// 5.x: subscriptions left out because unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub without_sub: Option<bool>,
}

/// One producer group of a client.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProducerData {
    /// Producer group.
    pub group_name: String,
}

/// One consumer group of a client.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConsumerData {
    /// Where to start without a committed offset.
    #[serde(default)]
    pub consume_from_where: ConsumeFromWhere,
    /// Push, pull or pop.
    #[serde(default)]
    pub consume_type: ConsumeType,
    /// Consumer group.
    pub group_name: String,
    /// Clustering or broadcasting.
    #[serde(default)]
    pub message_model: MessageModel,
    /// The group's subscriptions.
    #[serde(default, deserialize_with = "lenient::null_as_default")]
    pub subscription_data_set: Vec<SubscriptionData>,
    /// Unit mode.
    #[serde(default, deserialize_with = "lenient::bool")]
    pub unit_mode: bool,
}

/// One topic subscription.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SubscriptionData {
    /// Obsolete class filter.
    #[serde(default, deserialize_with = "lenient::bool")]
    pub class_filter_mode: bool,
    /// Java hash of each tag.
    #[serde(default, deserialize_with = "lenient::i32_seq")]
    pub code_set: Vec<i32>,
    /// `TAG` or `SQL92`.
    #[serde(default = "tag_type", deserialize_with = "expression_type_or_tag")]
    pub expression_type: String,
    /// The expression: `*`, or tags joined by `||`.
    #[serde(default, deserialize_with = "lenient::null_as_default")]
    pub sub_string: String,
    /// Version of this subscription, usually a timestamp.
    #[serde(default, deserialize_with = "lenient::i64")]
    pub sub_version: i64,
    /// The tags of `sub_string`.
    #[serde(default, deserialize_with = "lenient::null_as_default")]
    pub tags_set: Vec<String>,
    /// Topic.
    pub topic: String,
}

fn tag_type() -> String {
    EXPRESSION_TYPE_TAG.to_owned()
}

fn expression_type_or_tag<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let value = Option::<String>::deserialize(d)?;
    Ok(value
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(tag_type))
}

impl SubscriptionData {
    /// A TAG subscription built the way Java's `FilterAPI.buildSubscriptionData` does.
    pub fn from_expression(topic: impl Into<String>, expression: &str, sub_version: i64) -> Self {
        let sub_string = if is_subscribe_all(expression) {
            SUB_ALL
        } else {
            expression
        };
        Self {
            class_filter_mode: false,
            code_set: Vec::new(),
            expression_type: tag_type(),
            sub_string: sub_string.to_owned(),
            sub_version,
            tags_set: Vec::new(),
            topic: topic.into(),
        }
        .normalized()
    }

    /// For a TAG subscription, `tags_set` and `code_set` recomputed from `sub_string` with Java's
    /// hash (and `*` for an empty expression); other types are returned unchanged.
    #[must_use]
    pub fn normalized(mut self) -> Self {
        if !self
            .expression_type
            .eq_ignore_ascii_case(EXPRESSION_TYPE_TAG)
        {
            return self;
        }
        if is_subscribe_all(&self.sub_string) {
            self.sub_string = SUB_ALL.to_owned();
        }
        self.tags_set = parse_tags(&self.sub_string);
        self.code_set = self.tags_set.iter().map(|t| java_hash(t)).collect();
        self
    }

    /// True when every tag matches.
    pub fn is_subscribe_all(&self) -> bool {
        is_subscribe_all(&self.sub_string)
    }
}

/// True for `*` or an empty expression.
pub fn is_subscribe_all(expression: &str) -> bool {
    let t = expression.trim();
    t.is_empty() || t == SUB_ALL
}

/// The tags of a tag expression: split on `||`, trimmed, empties and duplicates dropped. Empty
/// for "every tag".
///
/// Linear in the expression (a set finds duplicates): before, each tag scanned all the earlier
/// ones, and a heartbeat carrying ~700 000 distinct tags held the broker's client registry
/// lock for minutes.
pub fn parse_tags(expression: &str) -> Vec<String> {
    if is_subscribe_all(expression) {
        return Vec::new();
    }
    let mut seen = std::collections::HashSet::new();
    expression
        .split("||")
        .map(str::trim)
        .filter(|tag| !tag.is_empty() && seen.insert(*tag))
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remoting::body::{decode_json, encode_json};
    use proptest::prelude::*;

    #[test]
    fn tags_keep_their_first_order_without_duplicates_however_many() {
        let expr: Vec<String> = (0..5_000).map(|i| format!("t{}", i % 2_500)).collect();
        let tags = parse_tags(&expr.join(" || "));
        assert_eq!(tags.len(), 2_500);
        assert_eq!((tags[0].as_str(), tags[2_499].as_str()), ("t0", "t2499"));
        assert_eq!(parse_tags("a||b|| a ||||c"), ["a", "b", "c"]);
    }

    #[test]
    fn cpp_heartbeat_with_ordinals_and_string_sub_version_decodes() {
        let raw = br#"{"clientID":"10.0.0.5@1234#DEFAULT","consumerDataSet":[{"consumeFromWhere":0,"consumeType":1,"groupName":"cg","messageModel":1,"subscriptionDataSet":[{"subString":"A || B","subVersion":"1700000000000","topic":"T","tagsSet":["A","B"],"codeSet":[0,0]}]}],"producerDataSet":[{"groupName":"pg"}]}
"#;
        let hb: HeartbeatData = decode_json(raw).unwrap();
        assert_eq!(hb.client_id, "10.0.0.5@1234#DEFAULT");
        let cd = &hb.consumer_data_set[0];
        assert_eq!(cd.consume_type, ConsumeType::ConsumePassively);
        assert_eq!(cd.message_model, MessageModel::Clustering);
        assert_eq!(
            cd.consume_from_where,
            ConsumeFromWhere::ConsumeFromLastOffset
        );
        assert!(!cd.unit_mode);
        let sub = &cd.subscription_data_set[0];
        assert_eq!(sub.sub_version, 1_700_000_000_000);
        assert_eq!(sub.expression_type, "TAG");
        assert!(!sub.class_filter_mode);
        let fixed = sub.clone().normalized();
        assert_eq!(fixed.code_set, [java_hash("A"), java_hash("B")]);
        assert_eq!(hb.producer_data_set[0].group_name, "pg");
    }

    /// A GBK client id in a C++ heartbeat is read with U+FFFD, not refused.
    #[test]
    fn a_heartbeat_with_bytes_that_are_not_utf8_is_read() {
        let mut raw = br#"{"clientID":"host@"#.to_vec();
        raw.extend_from_slice(&[0xB6, 0xA9]);
        raw.extend_from_slice(br#"","consumerDataSet":[],"producerDataSet":[{"groupName":"pg"}]}"#);
        let hb: HeartbeatData = decode_json(&raw).unwrap();
        assert_eq!(hb.client_id, "host@\u{FFFD}\u{FFFD}");
        assert_eq!(hb.producer_data_set[0].group_name, "pg");
    }

    #[test]
    fn java_heartbeat_with_names_decodes_and_reencodes_with_names() {
        let raw = br#"{"clientID":"c","producerDataSet":[],"consumerDataSet":[{"groupName":"CG","consumeType":"CONSUME_PASSIVELY","messageModel":"BROADCASTING","consumeFromWhere":"CONSUME_FROM_FIRST_OFFSET","unitMode":false,"subscriptionDataSet":[{"topic":"T","subString":"*","tagsSet":[],"codeSet":[],"subVersion":1,"expressionType":"TAG","classFilterMode":false}]}],"heartbeatFingerprint":0,"withoutSub":false}"#;
        let hb: HeartbeatData = decode_json(raw).unwrap();
        let cd = &hb.consumer_data_set[0];
        assert_eq!(cd.message_model, MessageModel::Broadcasting);
        assert_eq!(
            cd.consume_from_where,
            ConsumeFromWhere::ConsumeFromFirstOffset
        );
        assert_eq!(hb.heartbeat_fingerprint, Some(0));
        let text = String::from_utf8(encode_json(&hb).to_vec()).unwrap();
        assert!(text.contains(r#""consumeType":"CONSUME_PASSIVELY""#));
        assert_eq!(decode_json::<HeartbeatData>(text.as_bytes()).unwrap(), hb);
    }

    #[test]
    fn nulls_and_unknown_enum_values_are_handled() {
        let raw = br#"{"clientID":"c","producerDataSet":null,"consumerDataSet":[{"groupName":"g","consumeType":null,"subscriptionDataSet":[{"topic":"T","subString":null,"expressionType":null,"unitMode":"1"}]}]}"#;
        let hb: HeartbeatData = decode_json(raw).unwrap();
        assert!(hb.producer_data_set.is_empty());
        let sub = &hb.consumer_data_set[0].subscription_data_set[0];
        assert!(sub.is_subscribe_all());
        assert_eq!(sub.expression_type, "TAG");
        let bad = br#"{"clientID":"c","consumerDataSet":[{"groupName":"g","consumeType":7}]}"#;
        assert!(decode_json::<HeartbeatData>(bad).is_err());
    }

    #[test]
    fn tag_expressions_split_on_double_bar_and_trim() {
        assert!(parse_tags("*").is_empty());
        assert!(parse_tags("  ").is_empty());
        assert_eq!(parse_tags("A || B||A ||  || C"), ["A", "B", "C"]);
        let sub = SubscriptionData::from_expression("T", "", 5);
        assert_eq!(sub.sub_string, "*");
        assert!(sub.tags_set.is_empty() && sub.code_set.is_empty());
        let sub = SubscriptionData::from_expression("T", "TagA", 5);
        assert_eq!(sub.code_set, [2_598_919]);
    }

    #[test]
    fn sql_subscriptions_are_not_split() {
        let mut sub = SubscriptionData::from_expression("T", "a > 1 || b < 2", 0);
        sub.expression_type = "SQL92".into();
        sub.tags_set.clear();
        sub.code_set.clear();
        let same = sub.clone().normalized();
        assert_eq!(same, sub);
    }

    proptest! {
        #[test]
        fn heartbeat_decode_never_panics(raw in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_json::<HeartbeatData>(&raw);
        }

        #[test]
        fn heartbeat_like_json_never_panics(
            ct in prop_oneof![Just("1".to_string()), Just("\"X\"".to_string()), Just("-1".to_string()), Just("null".to_string()), Just("1e9".to_string())],
            sv in prop_oneof![Just("\"12\"".to_string()), Just("true".to_string()), Just("[]".to_string()), Just("99999999999999999999".to_string())],
        ) {
            let raw = format!(
                r#"{{"clientID":"c","consumerDataSet":[{{"groupName":"g","consumeType":{ct},"messageModel":{ct},"consumeFromWhere":{ct},"unitMode":{ct},"subscriptionDataSet":[{{"topic":"T","subVersion":{sv},"codeSet":[{sv}],"classFilterMode":{sv}}}]}}]}}"#
            );
            let _ = decode_json::<HeartbeatData>(raw.as_bytes());
        }
    }
}
