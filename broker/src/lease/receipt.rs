//! Receipts: the opaque handle a delivery gets, needed to ack, nack or extend it.
//!
//! A receipt names its delivery completely (group, queue topic and id, queue offset, the
//! broker run and the delivery generation) plus a 64-bit token drawn from a per-run keyed
//! hash, all base64url-encoded. The generation is unique per delivery within a run, so two
//! deliveries of the same message never share a receipt; the token makes a receipt that was
//! never handed out (edited or forged) fail the lookup instead of hitting a live lease; the run
//! makes receipts of an earlier broker run unknown after a restart.

use std::hash::{BuildHasher, Hasher};

/// Layout version, first byte of every receipt.
const VERSION: u8 = 1;
/// Fixed part: version, run, generation, token, queue id, offset.
const FIXED: usize = 1 + 4 + 8 + 8 + 4 + 8;
/// The base64url alphabet.
const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// What a receipt says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Receipt {
    pub(crate) run: u32,
    pub(crate) generation: u64,
    pub(crate) token: u64,
    pub(crate) group: String,
    /// The queue's topic: the topic itself, or `%RETRY%<group>` for a retried message.
    pub(crate) topic: String,
    pub(crate) queue_id: i32,
    pub(crate) offset: u64,
}

/// Makes the per-run identity and tokens. The keys come from the standard library's randomly
/// seeded hasher, so tokens are not predictable from outside the process.
#[derive(Debug, Clone)]
pub(crate) struct Minter {
    pub(crate) run: u32,
    keys: std::collections::hash_map::RandomState,
}

impl Minter {
    pub(crate) fn new() -> Self {
        let keys = std::collections::hash_map::RandomState::new();
        let mut h = keys.build_hasher();
        h.write_u128(
            std::time::SystemTime::UNIX_EPOCH
                .elapsed()
                .map_or(0, |d| d.as_nanos()),
        );
        // Truncation intended: 32 bits tell runs apart.
        let run = h.finish() as u32;
        Self { run, keys }
    }

    /// The token of a generation: a keyed hash, unguessable without the run's keys.
    pub(crate) fn token(&self, generation: u64) -> u64 {
        let mut h = self.keys.build_hasher();
        h.write_u32(self.run);
        h.write_u64(generation);
        h.finish()
    }
}

impl Receipt {
    /// The receipt's text form.
    pub(crate) fn encode(&self) -> String {
        let mut raw = Vec::with_capacity(FIXED + 2 + self.group.len() + self.topic.len());
        raw.push(VERSION);
        raw.extend_from_slice(&self.run.to_be_bytes());
        raw.extend_from_slice(&self.generation.to_be_bytes());
        raw.extend_from_slice(&self.token.to_be_bytes());
        raw.extend_from_slice(&self.queue_id.to_be_bytes());
        raw.extend_from_slice(&self.offset.to_be_bytes());
        for s in [&self.group, &self.topic] {
            // Names are at most 255 bytes (checked by the topic rules before any lease).
            let n = u8::try_from(s.len()).unwrap_or(u8::MAX);
            raw.push(n);
            raw.extend_from_slice(&s.as_bytes()[..usize::from(n)]);
        }
        encode_b64(&raw)
    }

    /// Parses a receipt; `None` for anything that is not one.
    pub(crate) fn decode(text: &str) -> Option<Self> {
        let raw = decode_b64(text)?;
        if raw.len() < FIXED + 2 || raw[0] != VERSION {
            return None;
        }
        let mut r = Reader { raw: &raw, pos: 1 };
        let run = u32::from_be_bytes(r.take()?);
        let generation = u64::from_be_bytes(r.take()?);
        let token = u64::from_be_bytes(r.take()?);
        let queue_id = i32::from_be_bytes(r.take()?);
        let offset = u64::from_be_bytes(r.take()?);
        let group = r.string()?;
        let topic = r.string()?;
        (r.pos == raw.len()).then_some(Self {
            run,
            generation,
            token,
            group,
            topic,
            queue_id,
            offset,
        })
    }
}

struct Reader<'a> {
    raw: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let bytes = self.raw.get(self.pos..self.pos + N)?;
        self.pos += N;
        bytes.try_into().ok()
    }

    fn string(&mut self) -> Option<String> {
        let [n] = self.take::<1>()?;
        let bytes = self.raw.get(self.pos..self.pos + usize::from(n))?;
        self.pos += usize::from(n);
        String::from_utf8(bytes.to_vec()).ok()
    }
}

fn encode_b64(raw: &[u8]) -> String {
    let mut out = String::with_capacity(raw.len().div_ceil(3) * 4);
    for chunk in raw.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

fn decode_b64(text: &str) -> Option<Vec<u8>> {
    // Receipts are short; refuse anything far longer before decoding it.
    if text.len() > 1024 || text.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    for chunk in text.as_bytes().chunks(4) {
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            let v = ALPHABET.iter().position(|a| a == c)?;
            n |= (v as u32) << (18 - 6 * i);
        }
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Receipt {
        Receipt {
            run: 7,
            generation: 42,
            token: 0xdead_beef_0bad_f00d,
            group: "billing".into(),
            topic: "%RETRY%billing".into(),
            queue_id: 3,
            offset: 1_234_567,
        }
    }

    #[test]
    fn a_receipt_survives_its_text_form_and_uses_only_url_safe_characters() {
        let text = sample().encode();
        assert!(text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert_eq!(Receipt::decode(&text), Some(sample()));
    }

    #[test]
    fn garbage_and_truncated_receipts_do_not_parse() {
        let text = sample().encode();
        assert_eq!(Receipt::decode(""), None);
        assert_eq!(Receipt::decode("not a receipt!"), None);
        assert_eq!(Receipt::decode(&text[..text.len() - 3]), None);
        assert_eq!(Receipt::decode(&"A".repeat(5000)), None);
    }

    #[test]
    fn base64_round_trips_every_length() {
        for len in 0..40u8 {
            let raw: Vec<u8> = (0..len).map(|i| i.wrapping_mul(37)).collect();
            assert_eq!(decode_b64(&encode_b64(&raw)).as_deref(), Some(&raw[..]));
        }
    }

    #[test]
    fn tokens_differ_per_generation_and_per_run() {
        let (a, b) = (Minter::new(), Minter::new());
        assert_ne!(a.token(1), a.token(2));
        assert_ne!(a.token(1), b.token(1));
    }
}
