//! The JSON shapes of the consume endpoints and their conversions from the broker's types.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sluice_broker::{Delivery, LeaseError};
use utoipa::ToSchema;

/// Stable per-receipt error codes (in `results[].error.code`). Add new ones; never change or
/// reuse one.
pub mod receipt_code {
    /// Not a receipt this broker run handed out (garbage, edited, forgotten, or from before
    /// a restart).
    pub const UNKNOWN: &str = "receipt_unknown";
    /// The lease ran out; the message is or will be delivered again with a new receipt.
    pub const EXPIRED: &str = "receipt_expired";
    /// The delivery was already acknowledged.
    pub const ALREADY_ACKED: &str = "already_acked";
    /// The delivery was already nacked.
    pub const ALREADY_NACKED: &str = "already_nacked";
    /// The receipt belongs to another consumer group.
    pub const WRONG_GROUP: &str = "receipt_wrong_group";
    /// The request is acceptable but not for this receipt (e.g. a lease beyond 12 h).
    pub const UNPROCESSABLE: &str = "unprocessable";
    /// The failed message could not be copied to the retry topic; it is delivered again.
    pub const HAND_BACK_FAILED: &str = "hand_back_failed";
    /// Anything else; the broker log has details.
    pub const INTERNAL: &str = "internal";
}

/// `POST /v1/groups/{group}/topics/{topic}/receive`.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReceiveBody {
    /// Most messages (1 to 32 by default). Default 10.
    pub max: Option<usize>,
    /// Long-poll time when nothing is available, in ms (at most 30 000). Default 0.
    pub wait_ms: Option<u64>,
    /// Lease time in ms (1 000 to 43 200 000 by default). Default 30 000.
    pub visibility_ms: Option<u64>,
    /// Tag expression: `*` (default) or `a||b`. Messages that do not match are skipped for
    /// the group.
    pub tag: Option<String>,
}

/// Leased messages (possibly none: an empty long poll is not an error).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ReceiveResponse {
    /// Oldest first per queue.
    pub messages: Vec<ReceivedMessage>,
}

/// One leased message.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ReceivedMessage {
    /// The message id (stable across retries).
    pub msg_id: String,
    /// Needed to ack, nack or extend this delivery; new for every delivery.
    pub receipt: String,
    /// The topic the message was produced to (also for a retried message).
    pub topic: String,
    /// The body, when it is valid UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// The body in standard base64, when it is not valid UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body_base64: Option<String>,
    /// True when the body is still compressed as the producer stored it (zlib).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub compressed: bool,
    /// The tag, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// Business keys.
    pub keys: Vec<String>,
    /// User properties.
    pub properties: BTreeMap<String, String>,
    /// 1 on the first delivery, then one more per failed delivery.
    pub delivery_count: u32,
    /// Producer timestamp, epoch ms.
    pub born_at_ms: i64,
    /// Queue the delivery came from (queue 0 of the group's retry topic for a retry).
    pub queue_id: i32,
    /// Offset in that queue.
    pub queue_offset: u64,
}

impl From<Delivery> for ReceivedMessage {
    fn from(d: Delivery) -> Self {
        let (body, body_base64) = match std::str::from_utf8(&d.body) {
            Ok(text) if !d.compressed => (Some(text.to_owned()), None),
            _ => (
                None,
                Some(base64::engine::general_purpose::STANDARD.encode(&d.body)),
            ),
        };
        Self {
            msg_id: d.msg_id,
            receipt: d.receipt,
            topic: d.topic,
            body,
            body_base64,
            compressed: d.compressed,
            tag: d.tags,
            keys: d.keys,
            properties: d.properties.into_iter().collect(),
            delivery_count: d.delivery_count,
            born_at_ms: d.born_ms,
            queue_id: d.queue_id,
            queue_offset: d.queue_offset,
        }
    }
}

/// `POST /v1/groups/{group}/ack`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AckBody {
    /// Receipts of the deliveries (1 to 1 000 by default).
    #[serde(deserialize_with = "crate::extract::bounded_vec")]
    pub receipts: Vec<String>,
}

/// `POST /v1/groups/{group}/nack`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NackBody {
    /// Receipts of the deliveries (1 to 1 000 by default).
    #[serde(deserialize_with = "crate::extract::bounded_vec")]
    pub receipts: Vec<String>,
    /// Wait before the retry, in ms, rounded up to the next delay level (0 = the first
    /// level). Default: the group's back-off.
    pub delay_ms: Option<u64>,
}

/// `POST /v1/groups/{group}/visibility`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VisibilityBody {
    /// Receipts of the deliveries (1 to 1 000 by default).
    #[serde(deserialize_with = "crate::extract::bounded_vec")]
    pub receipts: Vec<String>,
    /// New remaining lease time in ms, from now.
    pub visibility_ms: u64,
}

/// One result per receipt, in request order.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ReceiptResults {
    /// The results.
    pub results: Vec<ReceiptResult>,
}

/// What happened to one receipt.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ReceiptResult {
    /// The receipt as sent.
    pub receipt: String,
    /// True when the operation applied.
    pub ok: bool,
    /// Why not, when `ok` is false.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ReceiptError>,
}

/// Why a receipt was refused.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ReceiptError {
    /// Stable code (see `receipt_code`).
    pub code: String,
    /// Explanation.
    pub message: String,
}

impl ReceiptResults {
    /// Pairs receipts with the broker's per-receipt results.
    pub(crate) fn new(receipts: Vec<String>, results: Vec<Result<(), LeaseError>>) -> Self {
        let results = receipts
            .into_iter()
            .zip(results)
            .map(|(receipt, r)| ReceiptResult {
                receipt,
                ok: r.is_ok(),
                error: r.err().map(|e| ReceiptError {
                    code: receipt_code_of(&e).to_owned(),
                    message: receipt_message(&e),
                }),
            })
            .collect();
        Self { results }
    }
}

/// What a caller is told. A failed hand-back's cause (a store or I/O error, a task's panic
/// text) is logged with the request id, not returned: internals stay in the log, as for
/// `ApiError::internal`.
fn receipt_message(e: &LeaseError) -> String {
    match e {
        LeaseError::HandBack(cause) => {
            tracing::warn!(request_id = %crate::request_id::current(), error = %cause, "message not handed back");
            "the message could not be handed back now; it is held for one lease period \
             (the default visibility), then delivered again (details in the broker log under \
             this request id)"
                .to_owned()
        }
        other => other.to_string(),
    }
}

fn receipt_code_of(e: &LeaseError) -> &'static str {
    match e {
        LeaseError::UnknownReceipt => receipt_code::UNKNOWN,
        LeaseError::ReceiptExpired => receipt_code::EXPIRED,
        LeaseError::AlreadyAcked => receipt_code::ALREADY_ACKED,
        LeaseError::AlreadyNacked => receipt_code::ALREADY_NACKED,
        LeaseError::WrongGroup => receipt_code::WRONG_GROUP,
        LeaseError::Invalid(_) => receipt_code::UNPROCESSABLE,
        LeaseError::HandBack(_) => receipt_code::HAND_BACK_FAILED,
        _ => receipt_code::INTERNAL,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(body: &[u8]) -> Delivery {
        Delivery {
            receipt: "r".into(),
            msg_id: "m".into(),
            topic: "T".into(),
            queue_id: 0,
            queue_offset: 0,
            phys_offset: 0,
            body: bytes::Bytes::copy_from_slice(body),
            compressed: false,
            tags: None,
            keys: vec![],
            properties: vec![],
            delivery_count: 1,
            born_ms: 0,
            stored_ms: 0,
        }
    }

    /// A failed hand-back returned its cause to the caller: store and I/O error texts, or a
    /// task's panic message.
    #[test]
    fn a_failed_hand_back_does_not_tell_the_caller_its_internal_cause() {
        let cause = sluice_broker::retry::RetryError::Refused {
            code: 1,
            remark: "hand-back task failed: task 7 panicked with message \"os error 5\"".into(),
        };
        let r = ReceiptResults::new(vec!["r".into()], vec![Err(LeaseError::HandBack(cause))]);
        let e = r.results[0].error.as_ref().expect("an error");
        assert_eq!(e.code, receipt_code::HAND_BACK_FAILED);
        assert!(
            !e.message.contains("panicked") && !e.message.contains("os error"),
            "{}",
            e.message
        );
    }

    #[test]
    fn text_bodies_are_strings_and_binary_bodies_base64() {
        let text = ReceivedMessage::from(delivery(b"hi"));
        assert_eq!((text.body.as_deref(), text.body_base64), (Some("hi"), None));
        let bin = ReceivedMessage::from(delivery(&[0xff, 0xfe]));
        assert_eq!((bin.body, bin.body_base64.as_deref()), (None, Some("//4=")));
    }

    #[test]
    fn every_receipt_error_has_a_stable_code() {
        let r = ReceiptResults::new(
            vec!["a".into(), "b".into()],
            vec![Ok(()), Err(LeaseError::ReceiptExpired)],
        );
        assert!(r.results[0].ok && r.results[0].error.is_none());
        assert_eq!(r.results[1].error.as_ref().unwrap().code, "receipt_expired");
    }
}
