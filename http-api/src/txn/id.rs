//! `txn_id`: the opaque handle an HTTP producer gets for a transaction.
//!
//! It carries exactly what END_TRANSACTION carries (`sluice_txn::TxnRef`): the producer group,
//! the half message's queue offset and commit-log offset (the identity: never reused), and the
//! UNIQ_KEY. So a later call finds the transaction without any lookup table in the facade, and
//! survives a broker restart. It is not a secret and not signed: the txn crate checks every
//! field against the stored half message, so a forged id names no transaction (404).
//!
//! Layout (then base64url without padding):
//! `0x01 | half_offset u64 BE | commit_log_offset u64 BE | len u8 | group | len u8 | uniq`.
//! Decoding is strict: wrong version, length, characters or a non-canonical encoding is 400.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use sluice_txn::TxnRef;

/// Format version byte.
const VERSION: u8 = 1;
/// Fixed part: version + two offsets + the two length bytes.
const FIXED_LEN: usize = 1 + 8 + 8 + 1 + 1;
/// Longest encoded id accepted (255-byte group and uniq key, base64) — refused before decoding.
const MAX_ENCODED_LEN: usize = (FIXED_LEN + 255 + 255).div_ceil(3) * 4;

/// A decoded `txn_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TxnHandle {
    /// The half message's `PGROUP`.
    pub producer_group: String,
    /// The half message's queue offset.
    pub half_offset: u64,
    /// The half message's commit-log offset.
    pub commit_log_offset: u64,
    /// UNIQ_KEY (the transaction id RocketMQ clients see).
    pub uniq_key: String,
}

/// Why a `txn_id` was refused (answered 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum IdError {
    /// Not base64url, or longer than any id we issue.
    #[error("txn_id is not a transaction id issued by this broker (bad encoding)")]
    Encoding,
    /// Decodes, but the bytes are not a version-1 id.
    #[error("txn_id is not a transaction id issued by this broker ({0})")]
    Layout(&'static str),
}

impl TxnHandle {
    /// The opaque string form.
    pub(crate) fn encode(&self) -> String {
        let group = truncated(&self.producer_group);
        let uniq = truncated(&self.uniq_key);
        let mut out = Vec::with_capacity(FIXED_LEN + group.len() + uniq.len());
        out.push(VERSION);
        out.extend_from_slice(&self.half_offset.to_be_bytes());
        out.extend_from_slice(&self.commit_log_offset.to_be_bytes());
        push_field(&mut out, group);
        push_field(&mut out, uniq);
        URL_SAFE_NO_PAD.encode(out)
    }

    /// Parses [`TxnHandle::encode`]'s output, refusing anything else.
    pub(crate) fn decode(s: &str) -> Result<Self, IdError> {
        if s.is_empty() || s.len() > MAX_ENCODED_LEN {
            return Err(IdError::Encoding);
        }
        let raw = URL_SAFE_NO_PAD.decode(s).map_err(|_| IdError::Encoding)?;
        let mut r = Reader(&raw);
        if r.byte()? != VERSION {
            return Err(IdError::Layout("unknown version"));
        }
        let half_offset = r.u64()?;
        let commit_log_offset = r.u64()?;
        let producer_group = r.field(is_group_char)?;
        let uniq_key = r.field(|c| c.is_ascii_graphic())?;
        if !r.0.is_empty() {
            return Err(IdError::Layout("trailing bytes"));
        }
        let handle = Self {
            producer_group,
            half_offset,
            commit_log_offset,
            uniq_key,
        };
        // One id per transaction: a non-canonical spelling of the same bytes is refused.
        if handle.encode() != s {
            return Err(IdError::Encoding);
        }
        Ok(handle)
    }

    /// The reference the txn crate checks against the stored half message.
    pub(crate) fn reference(&self) -> TxnRef {
        TxnRef {
            producer_group: self.producer_group.clone(),
            half_offset: self.half_offset,
            commit_log_offset: self.commit_log_offset,
            transaction_id: Some(self.uniq_key.clone()),
            msg_id: None,
        }
    }
}

/// RocketMQ's group-name alphabet (`%|a-zA-Z0-9_-`).
pub(crate) fn is_group_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '%' | '|' | '_' | '-')
}

/// At most 255 bytes (a length byte's range); ids we issue never need more (group names are
/// checked at send time, UNIQ_KEYs are 32 hex digits).
fn truncated(s: &str) -> &[u8] {
    &s.as_bytes()[..s.len().min(255)]
}

fn push_field(out: &mut Vec<u8>, v: &[u8]) {
    out.push(u8::try_from(v.len()).unwrap_or(u8::MAX));
    out.extend_from_slice(v);
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], IdError> {
        if self.0.len() < n {
            return Err(IdError::Layout("too short"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn byte(&mut self) -> Result<u8, IdError> {
        Ok(self.take(1)?[0])
    }

    fn u64(&mut self) -> Result<u64, IdError> {
        let b: [u8; 8] = self
            .take(8)?
            .try_into()
            .map_err(|_| IdError::Layout("too short"))?;
        Ok(u64::from_be_bytes(b))
    }

    fn field(&mut self, allowed: impl Fn(char) -> bool) -> Result<String, IdError> {
        let len = usize::from(self.byte()?);
        if len == 0 {
            return Err(IdError::Layout("empty field"));
        }
        let text = std::str::from_utf8(self.take(len)?)
            .map_err(|_| IdError::Layout("field is not text"))?;
        if !text.chars().all(allowed) {
            return Err(IdError::Layout("field has characters an id never has"));
        }
        Ok(text.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> TxnHandle {
        TxnHandle {
            producer_group: "orders-service".into(),
            half_offset: 42,
            commit_log_offset: 1 << 40,
            uniq_key: "7F0000010001000000000000000000A1".into(),
        }
    }

    #[test]
    fn an_id_round_trips_and_names_the_same_reference() {
        let h = sample();
        let s = h.encode();
        assert!(s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
        let back = TxnHandle::decode(&s).unwrap();
        assert_eq!(back, h);
        let r = back.reference();
        assert_eq!((r.half_offset, r.commit_log_offset), (42, 1 << 40));
        assert_eq!(r.transaction_id.as_deref(), Some(h.uniq_key.as_str()));
    }

    #[test]
    fn malformed_ids_are_refused() {
        let good = sample().encode();
        for bad in [
            String::new(),
            "not base64!".to_owned(),
            "A".repeat(MAX_ENCODED_LEN + 4),
            format!("{good}AA"),
            good[..good.len() - 3].to_owned(),
            URL_SAFE_NO_PAD.encode([2u8; 40]),
        ] {
            assert!(TxnHandle::decode(&bad).is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn fields_with_characters_an_id_never_has_are_refused() {
        let mut raw = vec![VERSION];
        raw.extend_from_slice(&1u64.to_be_bytes());
        raw.extend_from_slice(&2u64.to_be_bytes());
        push_field(&mut raw, b"bad group");
        push_field(&mut raw, b"U1");
        let s = URL_SAFE_NO_PAD.encode(&raw);
        assert_eq!(
            TxnHandle::decode(&s),
            Err(IdError::Layout("field has characters an id never has"))
        );
    }

    #[test]
    fn a_non_canonical_spelling_is_refused() {
        let good = sample().encode();
        // Flip the unused low bits of the last character: same bytes, different string.
        let mut chars: Vec<char> = good.chars().collect();
        let last = chars.pop().unwrap();
        let alphabet: Vec<char> =
            "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
                .chars()
                .collect();
        let pos = alphabet.iter().position(|c| *c == last).unwrap();
        chars.push(alphabet[pos ^ 1]);
        let other: String = chars.into_iter().collect();
        assert!(TxnHandle::decode(&other).is_err());
    }
}
