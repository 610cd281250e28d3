//! Request signatures of RocketMQ's ACL 1.0 (`AccessKey` / `Signature` ext fields), as 4.x
//! clients send them. Sans-I/O: the broker verifies with it, the Rust client signs with it.
//!
//! ## The rule
//! The signed content is, in this order:
//! 1. the values (not the keys) of every ext field except `Signature` (and
//!    `_UNIQUE_KEY_QUERY`, which the Java broker leaves out too), concatenated in the order of
//!    their keys as Java's `TreeMap<String, String>` sorts them (UTF-16 code units; for ASCII
//!    keys that is plain byte order), as UTF-8 bytes;
//! 2. then the body bytes, unchanged (nothing when there is no body).
//!
//! The signature is `Base64(HmacSHA1(key = UTF-8 secret key, content))`, standard alphabet with
//! padding. `AccessKey` (and `SecurityToken`, when a client has one) are ext fields like any
//! other, so they are part of the content; so is the C++ client's `OnsChannel`.
//!
//! Sources checked (facts only, no code taken): Apache RocketMQ `acl/.../AclClientRPCHook.java`
//! (client: add `AccessKey`, sort the ext fields in a `TreeMap`, sign, add `Signature`),
//! `AclUtils.combineRequestContent` (values without `Signature`, then the body), `AclSigner`
//! (HmacSHA1, UTF-8, Base64), `PlainAccessResource.parse` (broker: every received ext field but
//! `Signature` and `_UNIQUE_KEY_QUERY`), and rocketmq-client-cpp `src/common/ClientRPCHook.cpp`
//! (the same rule over a `std::map` of `AccessKey`, `OnsChannel` and the header fields).
//!
//! Test vector (computed with Python's `hmac`, see the unit tests): ext fields
//! `{AccessKey: RocketMQ, OnsChannel: ALIYUN, a: orders_producer, b: Orders, e: 3,
//! queueId: 7}`, body `"hello 世界"` (UTF-8), secret `12345678` give the content
//! `RocketMQALIYUNorders_producerOrders37hello 世界` and the signature
//! `4EuDsVWQq5dzg7v+DyQAwXtFTng=`.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use subtle::ConstantTimeEq;

use crate::remoting::{ExtFields, RemotingCommand};

/// Ext field naming the account.
pub const ACCESS_KEY: &str = "AccessKey";
/// Ext field carrying the Base64 signature.
pub const SIGNATURE: &str = "Signature";
/// Ext field of a temporary (STS) token; signed like any field, not interpreted by Sluice.
pub const SECURITY_TOKEN: &str = "SecurityToken";
/// Ext field the C++ client adds (its "channel"); signed like any field.
pub const ONS_CHANNEL: &str = "OnsChannel";
/// Ext field the Java broker leaves out of the signed content (added after signing by some
/// query paths).
pub const UNIQUE_KEY_QUERY: &str = "_UNIQUE_KEY_QUERY";

/// An access key and its secret. `Debug` never shows the secret (nor the token).
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    access_key: String,
    secret_key: String,
    security_token: Option<String>,
}

impl Credentials {
    /// Credentials of the account `access_key`.
    pub fn new(access_key: impl Into<String>, secret_key: impl Into<String>) -> Self {
        Self {
            access_key: access_key.into(),
            secret_key: secret_key.into(),
            security_token: None,
        }
    }

    /// Adds a `SecurityToken` to every signed request (RocketMQ's optional STS token).
    #[must_use]
    pub fn with_security_token(mut self, token: impl Into<String>) -> Self {
        self.security_token = Some(token.into());
        self
    }

    /// The access key (not secret).
    pub fn access_key(&self) -> &str {
        &self.access_key
    }

    /// The secret key. Never log it.
    pub fn secret_key(&self) -> &str {
        &self.secret_key
    }

    /// Sets `AccessKey` (and `SecurityToken`) on `cmd`, then its `Signature` over the ext
    /// fields and the body. Call it last, once every field and the body are final.
    pub fn sign(&self, cmd: &mut RemotingCommand) {
        cmd.ext_fields.insert(ACCESS_KEY, self.access_key.clone());
        if let Some(token) = &self.security_token {
            cmd.ext_fields.insert(SECURITY_TOKEN, token.clone());
        }
        let sig = signature(
            &self.secret_key,
            &signed_content(&cmd.ext_fields, &cmd.body),
        );
        cmd.ext_fields.insert(SIGNATURE, sig);
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key", &self.access_key)
            .field("secret_key", &"<redacted>")
            .field(
                "security_token",
                &self.security_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// The bytes a signature covers: see the module documentation.
pub fn signed_content(ext: &ExtFields, body: &[u8]) -> Vec<u8> {
    let mut fields: Vec<(&str, &str)> = ext
        .iter()
        .filter(|(k, _)| *k != SIGNATURE && *k != UNIQUE_KEY_QUERY)
        .collect();
    // Java's String.compareTo: UTF-16 code units. Differs from byte order only for keys mixing
    // U+E000..U+FFFF with characters beyond U+FFFF.
    fields.sort_by(|a, b| a.0.encode_utf16().cmp(b.0.encode_utf16()));
    let len = fields.iter().map(|(_, v)| v.len()).sum::<usize>() + body.len();
    let mut out = Vec::with_capacity(len);
    for (_, v) in fields {
        out.extend_from_slice(v.as_bytes());
    }
    out.extend_from_slice(body);
    out
}

/// `Base64(HmacSHA1(secret_key, content))`.
pub fn signature(secret_key: &str, content: &[u8]) -> String {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = <Hmac<sha1::Sha1> as Mac>::new_from_slice(secret_key.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(content);
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// True when `cmd` carries a `Signature` that `secret_key` produced over its ext fields and
/// body. The comparison is constant time (its length, 28 for a real signature, is not secret).
pub fn verify(cmd: &RemotingCommand, secret_key: &str) -> bool {
    let Some(given) = cmd.ext_fields.get_str(SIGNATURE) else {
        return false;
    };
    let expected = signature(secret_key, &signed_content(&cmd.ext_fields, &cmd.body));
    constant_time_eq(given.as_bytes(), expected.as_bytes())
}

/// Constant-time equality of two byte strings (the length is not hidden).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request_code;

    fn vector_ext() -> ExtFields {
        ExtFields::new()
            .with("queueId", "7")
            .with("b", "Orders")
            .with(ONS_CHANNEL, "ALIYUN")
            .with("a", "orders_producer")
            .with(ACCESS_KEY, "RocketMQ")
            .with("e", "3")
    }

    #[test]
    fn the_documented_vector_matches_an_independent_computation() {
        // Python: base64(hmac.new(b"12345678", content, sha1).digest())
        let body = "hello 世界".as_bytes();
        let content = signed_content(&vector_ext(), body);
        assert_eq!(
            content,
            "RocketMQALIYUNorders_producerOrders37hello 世界".as_bytes()
        );
        assert_eq!(
            signature("12345678", &content),
            "4EuDsVWQq5dzg7v+DyQAwXtFTng="
        );
        // Empty content.
        assert_eq!(signature("12345678", b""), "beQgVA0KNM4WtCe68fj2DEn3WWU=");
    }

    #[test]
    fn signature_and_unique_key_query_are_not_signed() {
        let ext = vector_ext()
            .with(SIGNATURE, "whatever")
            .with(UNIQUE_KEY_QUERY, "true");
        assert_eq!(
            signed_content(&ext, b""),
            signed_content(&vector_ext(), b"")
        );
    }

    #[test]
    fn keys_sort_by_utf16_code_units_like_java() {
        // U+FF01 (one UTF-16 unit 0xFF01) sorts after U+1F600 (surrogates 0xD83D..) in Java,
        // before it in byte order.
        let ext = ExtFields::new()
            .with("\u{FF01}", "x")
            .with("\u{1F600}", "y");
        assert_eq!(signed_content(&ext, b""), b"yx");
    }

    #[test]
    fn sign_then_verify_and_any_change_breaks_it() {
        let creds = Credentials::new("RocketMQ", "12345678");
        let mut cmd = RemotingCommand::request(request_code::SEND_MESSAGE_V2, vector_ext())
            .with_body(b"payload".to_vec());
        creds.sign(&mut cmd);
        assert!(verify(&cmd, "12345678"));
        assert!(!verify(&cmd, "12345679"));

        let mut body = cmd.clone();
        body.body = bytes::Bytes::from_static(b"paylobd");
        assert!(!verify(&body, "12345678"));

        let mut field = cmd.clone();
        field.ext_fields.insert("b", "Orderz");
        assert!(!verify(&field, "12345678"));

        let mut added = cmd.clone();
        added.ext_fields.insert("z", "");
        // An added empty value changes nothing in the content: RocketMQ's rule signs values
        // only. Documented, not a Sluice choice.
        assert!(verify(&added, "12345678"));

        let mut unsigned = cmd.clone();
        unsigned.ext_fields.remove(SIGNATURE);
        assert!(!verify(&unsigned, "12345678"));
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let creds =
            Credentials::new("ak-visible", "very-secret-value").with_security_token("tok-123");
        let text = format!("{creds:?}");
        assert!(text.contains("ak-visible"));
        assert!(!text.contains("very-secret-value"));
        assert!(!text.contains("tok-123"));
    }

    proptest::proptest! {
        /// Flipping any byte of any signed field value or of the body invalidates the signature.
        #[test]
        fn flipping_any_signed_byte_breaks_the_signature(
            values in proptest::collection::vec("[a-zA-Z0-9]{1,12}", 1..6),
            body in proptest::collection::vec(proptest::num::u8::ANY, 0..64),
            pick in proptest::num::usize::ANY,
            bit in 0u8..7,
        ) {
            let mut ext = ExtFields::new();
            for (i, v) in values.iter().enumerate() {
                ext.insert(format!("f{i}"), v.clone());
            }
            let creds = Credentials::new("ak_account", "secret_key_1");
            let mut cmd = RemotingCommand::request(request_code::SEND_MESSAGE, ext)
                .with_body(body.clone());
            creds.sign(&mut cmd);
            proptest::prop_assert!(verify(&cmd, "secret_key_1"));
            let value_bytes: usize = values.iter().map(String::len).sum();
            let total = value_bytes + body.len();
            let at = pick % total;
            let mut bad = cmd.clone();
            if at < value_bytes {
                // Flip one bit of one value byte (ASCII stays ASCII with bits 0..=6).
                let mut rest = at;
                for (i, v) in values.iter().enumerate() {
                    if rest < v.len() {
                        let mut b = v.clone().into_bytes();
                        b[rest] ^= 1 << bit;
                        if b[rest] == 0 { b[rest] = b'!'; }
                        let s = String::from_utf8(b).unwrap();
                        bad.ext_fields.insert(format!("f{i}"), s);
                        break;
                    }
                    rest -= v.len();
                }
            } else {
                let mut b = body.clone();
                b[at - value_bytes] ^= 1 << bit;
                bad.body = b.into();
            }
            proptest::prop_assert!(!verify(&bad, "secret_key_1"));
        }
    }
}
