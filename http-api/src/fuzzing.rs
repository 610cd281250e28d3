//! Entry points for the fuzz targets in `fuzz/`; not an API (hidden from the docs, may change
//! with any release).
//!
//! The request types are crate-private, so a fuzzer cannot name them. This function reads
//! bytes as every JSON request body the facade takes, the way the `JsonBody` extractor does
//! (`serde_json` into the type), then runs the handlers' own pure checks where they have any,
//! so the fuzzer reaches what a hostile client reaches without a server.

use crate::config::HttpConfig;
use crate::message::MessageIn;

/// Parses `body` as each request body type; a panic here is a bug.
pub fn parse_request_bodies(body: &[u8]) {
    let cfg = HttpConfig::default();
    if let Ok(m) = serde_json::from_slice::<MessageIn>(body) {
        let _ = m.decode(&cfg);
    }
    if let Ok(t) = serde_json::from_slice::<crate::txn::SendTxnRequest>(body) {
        let _ = txn_message(t).decode(&cfg);
    }
    batch_entries(body, &cfg);
    let _ = serde_json::from_slice::<crate::txn::CheckAnswer>(body);
    let _ = serde_json::from_slice::<crate::consume::ReceiveBody>(body);
    let _ = serde_json::from_slice::<crate::consume::AckBody>(body);
    let _ = serde_json::from_slice::<crate::consume::NackBody>(body);
    let _ = serde_json::from_slice::<crate::consume::VisibilityBody>(body);
    let _ = serde_json::from_slice::<crate::schedule::RescheduleIn>(body);
    let _ = serde_json::from_slice::<crate::dlq::ReplayIn>(body);
}

/// A batch (`{"messages": [...]}`) is read as the batch handler reads it: an array bounded
/// while parsed, of entries kept as JSON text, then each entry as a message; at most
/// `max_batch` entries are looked at, as it refuses more.
fn batch_entries(body: &[u8], cfg: &HttpConfig) {
    #[derive(serde::Deserialize)]
    struct Batch {
        #[serde(deserialize_with = "crate::extract::bounded_vec")]
        messages: Vec<Box<serde_json::value::RawValue>>,
    }
    let Ok(batch) = serde_json::from_slice::<Batch>(body) else {
        return;
    };
    for entry in batch.messages.iter().take(cfg.max_batch) {
        if let Ok(m) = serde_json::from_str::<MessageIn>(entry.get()) {
            let _ = m.decode(cfg);
        }
    }
}

/// The message a transactional send carries, as the send handler builds it.
fn txn_message(t: crate::txn::SendTxnRequest) -> MessageIn {
    MessageIn {
        body: t.body,
        body_base64: t.body_base64,
        tag: t.tag,
        keys: t.keys,
        properties: t.properties,
        delay_ms: t.delay_ms,
        producer_group: Some(t.producer_group),
        ..MessageIn::default()
    }
}
