//! The message a caller hands the facade, in JSON (`body` or `body_base64`) or raw (the
//! request body, metadata in `x-sluice-*` headers), checked and turned into a
//! [`sluice_broker::produce::Produce`]. Shared by every endpoint that takes a message (send,
//! batch, transactions), so they accept and refuse exactly the same things.
//!
//! Rules, and why:
//! - Exactly one of `body` / `body_base64`: guessing which one was meant would silently store
//!   the wrong bytes.
//! - User properties may not use a name the broker gives meaning to (`UNIQ_KEY`, `TAGS`,
//!   `DELAY`, `TRAN_MSG`, `PGROUP`…, compared case-insensitively, plus the `SLUICE_`, `TIMER_`,
//!   `__` prefixes): a property would otherwise override the message's identity, make it
//!   transactional or delay it behind the caller's back. The typed fields are the way in.
//! - Names and values may not be empty or hold the property separators (`\x01`, `\x02`): the
//!   broker's encoding would drop or split them without telling anyone.
//! - At most one of `delay_level`, `delay_ms`, `deliver_at_ms`. A level must be ≥ 1 and a
//!   relative delay ≥ 0; the schedule hook checks the rest (maximum delay, past tolerance) and
//!   its refusal is answered 422.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use axum::http::HeaderMap;
use base64::Engine;
use bytes::Bytes;
use serde::Deserialize;
use sluice_broker::produce::Produce;
use sluice_protocol::message::keys;
use sluice_protocol::message::record::MAX_PROPERTIES_LEN;
use sluice_protocol::Properties;
use utoipa::ToSchema;

use crate::config::HttpConfig;
use crate::error::ApiError;

/// Header prefix of user properties in the raw form.
const PROPERTY_HEADER: &str = "x-sluice-property-";

/// Longest property name, tag, key or sharding key accepted.
const MAX_NAME_LEN: usize = 255;

/// A message as JSON. Exactly one of `body` and `body_base64`; at most one of `delay_level`,
/// `delay_ms`, `deliver_at_ms`.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct MessageIn {
    /// The body as UTF-8 text.
    pub body: Option<String>,
    /// The body as standard base64 (padding optional), for binary payloads.
    pub body_base64: Option<String>,
    /// One tag (consumers filter on it).
    pub tag: Option<String>,
    /// Business keys: indexed for look-up, and what scheduled messages are cancelled by.
    #[serde(default)]
    pub keys: Vec<String>,
    /// User properties. Names the broker uses (UNIQ_KEY, TAGS, KEYS, DELAY, TRAN_MSG, PGROUP…,
    /// and the `SLUICE_`, `TIMER_`, `__` prefixes) are refused.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// Delay level (1-based, from the broker's configured ladder; above the last is clamped).
    pub delay_level: Option<i32>,
    /// Deliver this many milliseconds from now.
    pub delay_ms: Option<i64>,
    /// Deliver at this epoch millisecond.
    pub deliver_at_ms: Option<i64>,
    /// Messages with the same sharding key go to the same queue, so they are consumed in order.
    pub sharding_key: Option<String>,
    /// Producer group recorded with the message (default: the facade's configured one).
    pub producer_group: Option<String>,
}

/// Everything about a message but its body (what the raw form carries in headers).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct MessageMeta {
    /// One tag.
    pub tag: Option<String>,
    /// Business keys.
    pub keys: Vec<String>,
    /// User properties.
    pub properties: BTreeMap<String, String>,
    /// The requested delay.
    pub delay: Option<Delay>,
    /// Sharding key.
    pub sharding_key: Option<String>,
    /// Producer group.
    pub producer_group: Option<String>,
}

/// A requested delay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Delay {
    /// A delay level (≥ 1).
    Level(i32),
    /// Milliseconds from now (≥ 0).
    AfterMs(i64),
    /// An epoch millisecond.
    AtMs(i64),
}

/// A checked message, ready to be turned into a [`Produce`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DecodedMessage {
    /// The body.
    pub body: Bytes,
    /// Its metadata, checked.
    pub meta: MessageMeta,
    /// The properties the broker stores, built once from `meta` (see [`Self::properties`]).
    props: Properties,
}

impl MessageIn {
    /// Decodes the body and checks every field against `cfg`'s limits.
    pub(crate) fn decode(self, cfg: &HttpConfig) -> Result<DecodedMessage, ApiError> {
        let delay = one_delay(self.delay_level, self.delay_ms, self.deliver_at_ms)?;
        let body = match (self.body, self.body_base64) {
            (Some(text), None) => Bytes::from(text),
            (None, Some(b64)) => decode_base64(&b64, cfg.max_message_bytes)?,
            (Some(_), Some(_)) => {
                return Err(ApiError::bad_request(
                    "give either body or body_base64, not both",
                ))
            }
            (None, None) => return Err(ApiError::bad_request("body or body_base64 is required")),
        };
        let meta = MessageMeta {
            tag: self.tag,
            keys: self.keys,
            properties: self.properties,
            delay,
            sharding_key: self.sharding_key,
            producer_group: self.producer_group,
        };
        DecodedMessage::new(body, meta, cfg)
    }
}

impl MessageMeta {
    /// Reads the raw form's `x-sluice-*` headers.
    pub(crate) fn from_headers(headers: &HeaderMap) -> Result<Self, ApiError> {
        let text = |name: &str| header_text(headers, name);
        let int = |name: &str| -> Result<Option<i64>, ApiError> {
            text(name)?
                .map(|v| {
                    v.trim().parse::<i64>().map_err(|_| {
                        ApiError::bad_request(format!("header {name} must be an integer"))
                    })
                })
                .transpose()
        };
        let level = int("x-sluice-delay-level")?
            .map(|l| {
                i32::try_from(l)
                    .map_err(|_| ApiError::unprocessable("x-sluice-delay-level is out of range"))
            })
            .transpose()?;
        let delay = one_delay(
            level,
            int("x-sluice-delay-ms")?,
            int("x-sluice-deliver-at-ms")?,
        )?;
        let keys = text("x-sluice-keys")?
            .map(|v| v.split(',').map(|k| k.trim().to_owned()).collect())
            .unwrap_or_default();
        Ok(Self {
            tag: text("x-sluice-tag")?,
            keys,
            properties: header_properties(headers)?,
            delay,
            sharding_key: text("x-sluice-sharding-key")?,
            producer_group: text("x-sluice-producer-group")?,
        })
    }
}

/// Encoded property bytes left to the broker (UNIQ_KEY, CLUSTER, a delay's bookkeeping).
const BROKER_PROPERTY_ROOM: usize = 1024;

impl DecodedMessage {
    /// Checks the body size and every metadata field.
    pub(crate) fn new(body: Bytes, meta: MessageMeta, cfg: &HttpConfig) -> Result<Self, ApiError> {
        if body.len() > cfg.max_message_bytes {
            return Err(ApiError::too_large(format!(
                "the message body is {} bytes, more than max_message_bytes ({})",
                body.len(),
                cfg.max_message_bytes
            )));
        }
        check_meta(&meta)?;
        let props = build_properties(&meta);
        let msg = Self { body, meta, props };
        msg.check_properties_size()?;
        Ok(msg)
    }

    /// Refuses properties (tag, keys, delay and the user's) too large to store once the
    /// broker adds its own, as 400 here: the broker's refusal of them shares its code with a
    /// refused delay, and a delayed message was answered "delay refused" (422).
    fn check_properties_size(&self) -> Result<(), ApiError> {
        let len = self.props.encoded_len();
        let max = MAX_PROPERTIES_LEN.saturating_sub(BROKER_PROPERTY_ROOM);
        if len > max {
            return Err(ApiError::bad_request(format!(
                "tag, keys and properties take {len} bytes encoded, more than {max}"
            )));
        }
        Ok(())
    }

    /// The properties the broker stores: the user's, then tag, keys and delay.
    #[cfg(test)]
    pub(crate) fn properties(&self) -> &Properties {
        &self.props
    }

    /// The in-process send of this message to `topic`, from `peer`.
    pub(crate) fn into_produce(
        self,
        topic: &str,
        default_group: &str,
        peer: SocketAddr,
    ) -> Produce {
        let properties = self.props;
        let group = self
            .meta
            .producer_group
            .unwrap_or_else(|| default_group.to_owned());
        let mut p = Produce::new(&group, topic, self.body);
        p.properties = properties;
        p.sharding_key = self.meta.sharding_key;
        p.born_host = peer;
        p
    }
}

/// The properties the broker stores for `meta`: the user's, then tag, keys and delay.
fn build_properties(meta: &MessageMeta) -> Properties {
    let mut p = Properties::new();
    for (k, v) in &meta.properties {
        p.insert(k.as_str(), v.as_str());
    }
    if let Some(tag) = &meta.tag {
        p.insert(keys::TAGS, tag.as_str());
    }
    if !meta.keys.is_empty() {
        p.insert(keys::KEYS, meta.keys.join(" "));
    }
    match meta.delay {
        Some(Delay::Level(l)) => p.insert(keys::DELAY, l.to_string()),
        Some(Delay::AfterMs(ms)) => p.insert(keys::TIMER_DELAY_MS, ms.to_string()),
        Some(Delay::AtMs(at)) => p.insert(keys::TIMER_DELIVER_MS, at.to_string()),
        None => {}
    }
    p
}

/// At most one delay; a level must be ≥ 1 and a relative delay ≥ 0.
fn one_delay(
    level: Option<i32>,
    after_ms: Option<i64>,
    at_ms: Option<i64>,
) -> Result<Option<Delay>, ApiError> {
    let delay = match (level, after_ms, at_ms) {
        (None, None, None) => return Ok(None),
        (Some(l), None, None) => Delay::Level(l),
        (None, Some(ms), None) => Delay::AfterMs(ms),
        (None, None, Some(at)) => Delay::AtMs(at),
        _ => {
            return Err(ApiError::bad_request(
                "give at most one of delay_level, delay_ms and deliver_at_ms",
            ))
        }
    };
    match delay {
        Delay::Level(l) if l < 1 => Err(ApiError::unprocessable(format!(
            "delay_level must be at least 1, got {l}"
        ))),
        Delay::AfterMs(ms) if ms < 0 => Err(ApiError::unprocessable(format!(
            "delay_ms must not be negative, got {ms}"
        ))),
        d => Ok(Some(d)),
    }
}

/// Standard base64, padding optional, refused when it would decode past `max` bytes.
fn decode_base64(b64: &str, max: usize) -> Result<Bytes, ApiError> {
    if b64.len() / 4 * 3 > max.saturating_add(3) {
        return Err(ApiError::too_large(format!(
            "the message body is larger than max_message_bytes ({max})"
        )));
    }
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    engine
        .decode(b64.trim())
        .map(Bytes::from)
        .map_err(|e| ApiError::bad_request(format!("body_base64 is not valid base64: {e}")))
}

fn check_meta(meta: &MessageMeta) -> Result<(), ApiError> {
    if let Some(tag) = &meta.tag {
        check_text("tag", tag)?;
        // A subscription splits its expression on `||` and trims each tag: such a tag could
        // be selected by `*` only.
        if tag.contains("||") || tag.trim_matches(' ') != tag {
            return Err(ApiError::bad_request(format!(
                "tag {tag:?} cannot be subscribed to (a subscription splits tags on || and trims \
                 spaces): remove the || or the surrounding spaces"
            )));
        }
    }
    for k in &meta.keys {
        check_text("key", k)?;
        if k.contains(' ') {
            return Err(ApiError::bad_request(format!(
                "key {k:?} contains a space (keys are stored space-separated)"
            )));
        }
    }
    if let Some(s) = &meta.sharding_key {
        check_text("sharding_key", s)?;
    }
    if let Some(g) = &meta.producer_group {
        check_text("producer_group", g)?;
    }
    for (name, value) in &meta.properties {
        check_property(name, value)?;
    }
    Ok(())
}

/// Refuses an empty value, one holding a property separator, or one too long to be a name.
fn check_text(what: &str, v: &str) -> Result<(), ApiError> {
    if v.is_empty() {
        return Err(ApiError::bad_request(format!("{what} must not be empty")));
    }
    if v.len() > MAX_NAME_LEN {
        return Err(ApiError::bad_request(format!(
            "{what} is longer than {MAX_NAME_LEN} bytes"
        )));
    }
    if v.chars().any(char::is_control) {
        return Err(ApiError::bad_request(format!(
            "{what} {v:?} contains control characters"
        )));
    }
    Ok(())
}

fn check_property(name: &str, value: &str) -> Result<(), ApiError> {
    check_text("property name", name)?;
    if is_reserved(name) {
        return Err(ApiError::bad_request(format!(
            "property {name:?} is reserved by the broker; use the message's own fields (tag, keys, delay_*, sharding_key) instead"
        )));
    }
    if value.is_empty() || value.contains(['\u{1}', '\u{2}']) {
        return Err(ApiError::bad_request(format!(
            "property {name:?} must have a non-empty value without \\u0001 or \\u0002"
        )));
    }
    Ok(())
}

/// True for names the broker gives meaning to.
pub(crate) fn is_reserved(name: &str) -> bool {
    keys::is_system(name)
}

/// A header's value as text; not visible ASCII → 400.
fn header_text(headers: &HeaderMap, name: &str) -> Result<Option<String>, ApiError> {
    headers
        .get(name)
        .map(|v| {
            v.to_str()
                .map(str::to_owned)
                .map_err(|_| ApiError::bad_request(format!("header {name} is not visible ASCII")))
        })
        .transpose()
}

/// `x-sluice-property-<name>` headers (names arrive lower-cased, as HTTP has them).
fn header_properties(headers: &HeaderMap) -> Result<BTreeMap<String, String>, ApiError> {
    let mut out = BTreeMap::new();
    for (name, value) in headers {
        let Some(prop) = name.as_str().strip_prefix(PROPERTY_HEADER) else {
            continue;
        };
        let value = value
            .to_str()
            .map_err(|_| ApiError::bad_request(format!("header {name} is not visible ASCII")))?;
        if out.insert(prop.to_owned(), value.to_owned()).is_some() {
            return Err(ApiError::bad_request(format!(
                "header {name} is given more than once"
            )));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> HttpConfig {
        HttpConfig {
            max_message_bytes: 16,
            ..HttpConfig::default()
        }
    }

    fn msg(body: &str) -> MessageIn {
        MessageIn {
            body: Some(body.into()),
            ..MessageIn::default()
        }
    }

    #[test]
    fn exactly_one_body_form_is_accepted() {
        assert!(MessageIn::default().decode(&cfg()).is_err());
        let both = MessageIn {
            body_base64: Some("aGk=".into()),
            ..msg("hi")
        };
        assert_eq!(both.decode(&cfg()).unwrap_err().status.as_u16(), 400);
        let b64 = MessageIn {
            body_base64: Some("AAEC".into()),
            ..MessageIn::default()
        };
        assert_eq!(&b64.decode(&cfg()).unwrap().body[..], &[0, 1, 2]);
        let unpadded = MessageIn {
            body_base64: Some("aGk".into()),
            ..MessageIn::default()
        };
        assert_eq!(&unpadded.decode(&cfg()).unwrap().body[..], b"hi");
    }

    #[test]
    fn bad_base64_is_400_and_oversize_is_413() {
        let bad = MessageIn {
            body_base64: Some("!!".into()),
            ..MessageIn::default()
        };
        assert_eq!(bad.decode(&cfg()).unwrap_err().status.as_u16(), 400);
        assert_eq!(
            msg(&"x".repeat(17))
                .decode(&cfg())
                .unwrap_err()
                .status
                .as_u16(),
            413
        );
        let big = MessageIn {
            body_base64: Some("A".repeat(400)),
            ..MessageIn::default()
        };
        assert_eq!(big.decode(&cfg()).unwrap_err().status.as_u16(), 413);
    }

    /// `{"tag":"A||B"}` was stored, and no subscription but `*` could ever select it.
    #[test]
    fn a_tag_no_subscription_could_select_is_refused() {
        for tag in ["A||B", " A", "A "] {
            let m = MessageIn {
                tag: Some(tag.into()),
                ..msg("x")
            };
            assert_eq!(
                m.decode(&cfg()).unwrap_err().status.as_u16(),
                400,
                "{tag:?}"
            );
        }
        let m = MessageIn {
            tag: Some("A|B".into()),
            ..msg("x")
        };
        assert!(m.decode(&cfg()).is_ok(), "a single | is a tag character");
    }

    #[test]
    fn reserved_and_malformed_properties_are_refused() {
        for name in [
            "UNIQ_KEY", "tags", "DELAY", "TRAN_MSG", "PGROUP", "SLUICE_X", "__x",
        ] {
            let mut m = msg("x");
            m.properties.insert(name.into(), "v".into());
            assert_eq!(m.decode(&cfg()).unwrap_err().status.as_u16(), 400, "{name}");
        }
        let mut m = msg("x");
        m.properties.insert("order".into(), "a\u{1}b".into());
        assert!(m.decode(&cfg()).is_err());
        let mut ok = msg("x");
        ok.properties.insert("order".into(), "42".into());
        assert_eq!(
            ok.decode(&cfg()).unwrap().properties().get("order"),
            Some("42")
        );
    }

    #[test]
    fn delays_are_exclusive_and_range_checked() {
        let two = MessageIn {
            delay_ms: Some(5),
            deliver_at_ms: Some(5),
            ..msg("x")
        };
        assert_eq!(two.decode(&cfg()).unwrap_err().status.as_u16(), 400);
        let level0 = MessageIn {
            delay_level: Some(0),
            ..msg("x")
        };
        assert_eq!(level0.decode(&cfg()).unwrap_err().status.as_u16(), 422);
        let neg = MessageIn {
            delay_ms: Some(-1),
            ..msg("x")
        };
        assert_eq!(neg.decode(&cfg()).unwrap_err().status.as_u16(), 422);
        let ok = MessageIn {
            delay_ms: Some(700),
            tag: Some("T".into()),
            keys: vec!["a".into(), "b".into()],
            ..msg("x")
        };
        let p = ok.decode(&cfg()).unwrap().properties().clone();
        assert_eq!(p.get(keys::TIMER_DELAY_MS), Some("700"));
        assert_eq!(
            (p.get(keys::TAGS), p.get(keys::KEYS)),
            (Some("T"), Some("a b"))
        );
    }

    #[test]
    fn headers_carry_the_raw_forms_metadata() {
        let mut h = HeaderMap::new();
        h.insert("x-sluice-tag", "T".parse().unwrap());
        h.insert("x-sluice-keys", "a, b".parse().unwrap());
        h.insert("x-sluice-delay-ms", "250".parse().unwrap());
        h.insert("x-sluice-property-order", "7".parse().unwrap());
        let m = MessageMeta::from_headers(&h).unwrap();
        assert_eq!(m.keys, vec!["a", "b"]);
        assert_eq!(m.delay, Some(Delay::AfterMs(250)));
        assert_eq!(m.properties.get("order").map(String::as_str), Some("7"));
        h.insert("x-sluice-delay-level", "2".parse().unwrap());
        assert!(MessageMeta::from_headers(&h).is_err());
    }
}
