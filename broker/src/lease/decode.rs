//! A stored record as a consumer sees it: the original topic (also for retried messages), the
//! client's message id, tags, keys and only the user's properties.

use bytes::Bytes;
use sluice_protocol::message::keys;
use sluice_protocol::message::offset_msg_id;
use sluice_protocol::message::record::sysflag;

use super::Delivery;
use crate::retry::copy::Original;

/// Where a record was read from.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Position<'a> {
    pub(crate) queue_id: i32,
    pub(crate) queue_offset: u64,
    pub(crate) store_host: std::net::SocketAddr,
    pub(crate) receipt: &'a str,
}

/// The original topic of a record: `RETRY_TOPIC` of a retry copy, else its own topic.
pub(crate) fn original_topic(o: &Original) -> &str {
    o.properties.get(keys::RETRY_TOPIC).unwrap_or(&o.topic)
}

/// The topic a record read from `queue_topic`'s queue is delivered as: its `RETRY_TOPIC` only
/// in a retry topic. A message of a topic may carry `RETRY_TOPIC` (a consumer forwarding a
/// retried message keeps its properties); taken as its origin, it was delivered as that
/// other topic, and after a failed hand-back never leased again from its own queue, whose
/// committed offset then stayed behind it.
pub(crate) fn origin_in<'a>(o: &'a Original, queue_topic: &'a str) -> &'a str {
    if queue_topic.starts_with(crate::topic::RETRY_PREFIX) {
        original_topic(o)
    } else {
        queue_topic
    }
}

/// The tag of a record.
pub(crate) fn tag(o: &Original) -> Option<&str> {
    o.properties.get(keys::TAGS)
}

/// Builds the delivery of a decoded record.
pub(crate) fn delivery(o: &Original, origin: &str, at: Position<'_>) -> Delivery {
    let p = &o.properties;
    let (body, compressed) = body_of(o);
    Delivery {
        receipt: at.receipt.to_owned(),
        msg_id: p.get(keys::UNIQ_KEY).map_or_else(
            || offset_msg_id(at.store_host, o.phys_offset),
            str::to_owned,
        ),
        topic: origin.to_owned(),
        queue_id: at.queue_id,
        queue_offset: at.queue_offset,
        phys_offset: o.phys_offset,
        body,
        compressed,
        tags: p.get(keys::TAGS).map(str::to_owned),
        keys: p.user_keys().map(str::to_owned).collect(),
        properties: p
            .iter()
            .filter(|(k, _)| is_user_key(k))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
        delivery_count: u32::try_from(o.reconsume_times.max(0))
            .unwrap_or(0)
            .saturating_add(1),
        born_ms: o.born_timestamp,
        stored_ms: o.store_timestamp,
    }
}

/// True for a property the user set: the same rule (`keys::is_system`) the HTTP produce path
/// refuses user properties by, so what goes in comes back out.
pub(crate) fn is_user_key(k: &str) -> bool {
    !keys::is_system(k)
}

/// Largest body a compressed message may inflate to; beyond it the body is handed out as
/// stored (still compressed, flagged) instead of letting one message take unbounded memory.
const MAX_INFLATED: u64 = 64 << 20;

/// The body as the producer meant it: Java and C++ producers zlib-compress large bodies
/// (sysFlag bit 0), and an HTTP consumer must not have to know that. A body that does not
/// inflate (damaged, or larger than [`MAX_INFLATED`]) is handed out as stored and flagged.
fn body_of(o: &Original) -> (Bytes, bool) {
    if o.sys_flag & sysflag::COMPRESSED == 0 {
        return (o.body.clone(), false);
    }
    use std::io::Read;
    let mut out = Vec::new();
    let inflated = flate2::read::ZlibDecoder::new(&o.body[..])
        .take(MAX_INFLATED + 1)
        .read_to_end(&mut out);
    match inflated {
        Ok(n) if (n as u64) <= MAX_INFLATED => (Bytes::from(out), false),
        _ => {
            tracing::warn!(
                phys_offset = o.phys_offset,
                "compressed body does not inflate; handed out as stored"
            );
            (o.body.clone(), true)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_and_sluice_properties_are_not_user_properties() {
        assert!(!is_user_key("TAGS"));
        assert!(!is_user_key("SLUICE_FAILURE_REASON"));
        assert!(!is_user_key("UNIQ_KEY"));
        assert!(!is_user_key("__transactionId__"));
        assert!(is_user_key("order_id"));
    }
}
