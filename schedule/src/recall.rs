//! RECALL_MESSAGE (370, RocketMQ 5.3.2+): cancel a timer message with the handle its send
//! returned. The handle is Base64-URL of `"v1 <topic> <brokerName> <timestamp> <UNIQ_KEY>"`.
//!
//! Answers: SUCCESS (ext `msgId`) when the message is cancelled now or was already, or was
//! dropped as undeliverable (it will never be delivered either);
//! ILLEGAL_OPERATION (604) with a remark when it was delivered, nothing matches, or the handle
//! is for another topic or broker; SYSTEM_ERROR for a bad header or handle.

use std::sync::Arc;

use sluice_protocol::{response_code as code, ExtFields, RemotingCommand};

use crate::ops::{Action, Outcome, Selector};
use crate::service::ScheduleService;

/// Builds a recall handle (what a RocketMQ 5 send result carries for a timer message).
pub fn recall_handle(topic: &str, broker_name: &str, due_ms: i64, uniq_key: &str) -> String {
    base64url_encode(format!("v1 {topic} {broker_name} {due_ms} {uniq_key}").as_bytes())
}

/// The parts of a recall handle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Handle {
    pub(crate) topic: String,
    pub(crate) broker_name: String,
    pub(crate) uniq_key: String,
}

pub(crate) fn parse_handle(raw: &str) -> Option<Handle> {
    let text = String::from_utf8(base64url_decode(raw.trim())?).ok()?;
    let parts: Vec<&str> = text.split(' ').collect();
    match parts.as_slice() {
        ["v1", topic, broker, ts, uniq] if ts.parse::<i64>().is_ok() && !uniq.is_empty() => {
            Some(Handle {
                topic: (*topic).to_owned(),
                broker_name: (*broker).to_owned(),
                uniq_key: (*uniq).to_owned(),
            })
        }
        _ => None,
    }
}

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fn base64url_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// Decodes Base64-URL (or standard Base64), with or without padding.
fn base64url_decode(text: &str) -> Option<Vec<u8>> {
    let value = |c: u8| -> Option<u32> {
        match c {
            b'A'..=b'Z' => Some(u32::from(c - b'A')),
            b'a'..=b'z' => Some(u32::from(c - b'a') + 26),
            b'0'..=b'9' => Some(u32::from(c - b'0') + 52),
            b'-' | b'+' => Some(62),
            b'_' | b'/' => Some(63),
            _ => None,
        }
    };
    let bytes: Vec<u8> = text.bytes().filter(|b| *b != b'=').collect();
    if bytes.len() % 4 == 1 || bytes.len() > 4096 {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            n |= value(*c)? << (18 - 6 * i);
        }
        for i in 0..chunk.len() - 1 {
            out.push((n >> (16 - 8 * i)) as u8);
        }
    }
    Some(out)
}

/// Answers one RECALL_MESSAGE request.
pub(crate) async fn handle(service: Arc<ScheduleService>, req: RemotingCommand) -> RemotingCommand {
    let err = |c: i32, remark: String| RemotingCommand::response_to(&req, c, Some(remark));
    let (Some(topic), Some(raw)) = (
        req.ext_fields.get_str("topic"),
        req.ext_fields.get_str("recallHandle"),
    ) else {
        return err(
            code::SYSTEM_ERROR,
            "the header needs topic and recallHandle".into(),
        );
    };
    let Some(h) = parse_handle(raw) else {
        return err(code::ILLEGAL_OPERATION, "recall handle is invalid".into());
    };
    if h.topic != topic {
        return err(
            code::ILLEGAL_OPERATION,
            format!("recall handle is for topic {}", h.topic),
        );
    }
    if service.broker_name().is_some_and(|b| b != h.broker_name) {
        return err(
            code::ILLEGAL_OPERATION,
            format!("recall handle is for broker {}", h.broker_name),
        );
    }
    let sel = Selector::Id {
        topic: Some(h.topic.clone()),
        uniq_key: h.uniq_key.clone(),
    };
    match service.apply(&sel, Action::Cancel).await {
        Ok(r) if r.not_found() => err(
            code::ILLEGAL_OPERATION,
            "no scheduled message matches the recall handle".into(),
        ),
        Ok(r) => match r.outcomes.first().map(|o| o.1) {
            Some(Outcome::AlreadyDelivered) => err(
                code::ILLEGAL_OPERATION,
                "the message was already delivered".into(),
            ),
            _ => RemotingCommand::response_to(&req, code::SUCCESS, None)
                .with_ext(ExtFields::new().with("msgId", h.uniq_key)),
        },
        Err(e) => err(code::SYSTEM_ERROR, format!("recall failed: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_round_trip_and_garbage_is_refused() {
        let h = recall_handle(
            "Orders",
            "broker-a",
            1_700_000_000_001,
            "7F00000100002A9F0000000000000001",
        );
        assert!(!h.contains('=') && !h.contains('+') && !h.contains('/'));
        let p = parse_handle(&h).unwrap();
        assert_eq!(
            (p.topic.as_str(), p.broker_name.as_str()),
            ("Orders", "broker-a")
        );
        assert_eq!(p.uniq_key, "7F00000100002A9F0000000000000001");
        assert_eq!(parse_handle("!!!"), None);
        assert_eq!(parse_handle(&base64url_encode(b"v2 a b 1 u")), None);
        assert_eq!(base64url_decode("TWFu"), Some(b"Man".to_vec()));
        assert_eq!(base64url_decode("TWE="), Some(b"Ma".to_vec()));
    }
}
