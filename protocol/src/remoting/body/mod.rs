//! JSON command bodies (`rocketmq-protocol.md` §2.5, §2.9).
//!
//! Read liberally, write exactly: clients send enum ordinals or names, numbers as strings, nulls
//! or nothing for empty sets, and fastjson's unquoted integer keys, so every decoder accepts all
//! of those ([`decode_json`] quotes bare keys first). Writers produce compact JSON with the
//! types and key order Java produces, which every client reads.
//!
//! - [`heartbeat`]: HEART_BEAT's `HeartbeatData` and tag-expression parsing.
//! - [`route`]: `TopicRouteData` and `ClusterInfo`, in standard or legacy key form.
//! - [`broker`]: `RegisterBrokerBody`, `TopicConfig`, `DataVersion`, `perm` bits.
//! - [`lock`]: `MessageQueue`, LOCK/UNLOCK_BATCH_MQ bodies, `ConsumerListBody`.
//! - [`fastjson`]: turning fastjson's `{0:"a"}` into standard JSON.

pub mod broker;
pub mod fastjson;
pub mod heartbeat;
pub mod lock;
pub mod route;

pub use broker::{perm, DataVersion, RegisterBrokerBody, TopicConfig, TopicConfigSerializeWrapper};
pub use fastjson::{quote_numeric_keys, JsonForm};
pub use heartbeat::{
    parse_tags, ConsumeFromWhere, ConsumeType, ConsumerData, HeartbeatData, MessageModel,
    ProducerData, SubscriptionData,
};
pub use lock::{ConsumerListBody, LockBatchRequestBody, LockBatchResponseBody, MessageQueue};
pub use route::{BrokerData, ClusterInfo, QueueData, TopicRouteData};

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Why a body could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BodyError {
    /// The body is not the expected JSON.
    #[error("invalid JSON body: {0}")]
    Json(String),
}

/// Decodes a JSON body, accepting fastjson's unquoted integer keys and trailing whitespace.
/// Bytes that are not UTF-8 are read as U+FFFD, as Java's decoder does (a C++ client sends a
/// GBK group or topic name as it is).
pub fn decode_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, BodyError> {
    let text = String::from_utf8_lossy(body);
    serde_json::from_str(&quote_numeric_keys(&text)).map_err(|e| BodyError::Json(e.to_string()))
}

/// Encodes a body as compact JSON.
pub fn encode_json<T: Serialize>(value: &T) -> Bytes {
    Bytes::from(to_json_string(value))
}

/// Compact JSON text of a value whose `Serialize` cannot fail (derived, with string map keys).
pub(crate) fn to_json_string<T: Serialize + ?Sized>(value: &T) -> String {
    serde_json::to_string(value).expect("body types serialise infallibly")
}

/// Deserializers that accept what real clients send, not only what Java sends.
pub(crate) mod lenient {
    use serde::de::{self, Deserialize, Deserializer, SeqAccess, Visitor};
    use std::fmt;

    struct IntVisitor;

    impl Visitor<'_> for IntVisitor {
        type Value = i64;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an integer or a numeric string")
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<i64, E> {
            Ok(v)
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<i64, E> {
            i64::try_from(v).map_err(|_| E::custom("integer out of range"))
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<i64, E> {
            v.trim()
                .parse()
                .map_err(|_| E::invalid_value(de::Unexpected::Str(v), &self))
        }
        fn visit_unit<E: de::Error>(self) -> Result<i64, E> {
            Ok(0)
        }
    }

    /// An `i64` from a number, a numeric string, or null (0).
    pub fn i64<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        d.deserialize_any(IntVisitor)
    }

    /// An `i32` from a number, a numeric string, or null (0).
    pub fn i32<'de, D: Deserializer<'de>>(d: D) -> Result<i32, D::Error> {
        let v = i64(d)?;
        i32::try_from(v).map_err(|_| de::Error::custom("integer out of range for i32"))
    }

    struct BoolVisitor;

    impl Visitor<'_> for BoolVisitor {
        type Value = bool;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a boolean, 0/1, or \"true\"/\"false\"/\"0\"/\"1\"")
        }
        fn visit_bool<E: de::Error>(self, v: bool) -> Result<bool, E> {
            Ok(v)
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<bool, E> {
            match v {
                0 => Ok(false),
                1 => Ok(true),
                _ => Err(E::invalid_value(de::Unexpected::Signed(v), &self)),
            }
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<bool, E> {
            self.visit_i64(i64::try_from(v).unwrap_or(i64::MAX))
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<bool, E> {
            let t = v.trim();
            if t == "1" || t.eq_ignore_ascii_case("true") {
                Ok(true)
            } else if t == "0" || t.eq_ignore_ascii_case("false") || t.is_empty() {
                Ok(false)
            } else {
                Err(E::invalid_value(de::Unexpected::Str(v), &self))
            }
        }
        fn visit_unit<E: de::Error>(self) -> Result<bool, E> {
            Ok(false)
        }
    }

    /// A boolean from a JSON boolean, 0/1, a string form, or null (false).
    pub fn bool<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
        d.deserialize_any(BoolVisitor)
    }

    /// Any defaultable value, with null read as its default.
    pub fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
    where
        D: Deserializer<'de>,
        T: Deserialize<'de> + Default,
    {
        Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
    }

    struct LenientI32(i32);

    impl<'de> Deserialize<'de> for LenientI32 {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            i32(d).map(LenientI32)
        }
    }

    struct I32SeqVisitor;

    impl<'de> Visitor<'de> for I32SeqVisitor {
        type Value = Vec<i32>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a list of integers")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<i32>, A::Error> {
            let mut out = Vec::new();
            while let Some(LenientI32(v)) = seq.next_element()? {
                out.push(v);
            }
            Ok(out)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Vec<i32>, E> {
            Ok(Vec::new())
        }
    }

    /// A list of lenient `i32`s, or null (empty).
    pub fn i32_seq<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<i32>, D::Error> {
        d.deserialize_any(I32SeqVisitor)
    }
}

/// Declares a Java enum that travels as its name but may arrive as its ordinal.
macro_rules! java_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $ordinal:literal => $java:literal, )*
        }
        default $default:ident
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )*
        }

        impl Default for $name {
            fn default() -> Self {
                Self::$default
            }
        }

        impl $name {
            /// The Java enum name.
            pub fn name(self) -> &'static str {
                match self {
                    $( Self::$variant => $java, )*
                }
            }

            /// The Java enum ordinal.
            pub fn ordinal(self) -> u32 {
                match self {
                    $( Self::$variant => $ordinal, )*
                }
            }

            /// The variant with this Java name.
            pub fn from_name(name: &str) -> Option<Self> {
                match name {
                    $( $java => Some(Self::$variant), )*
                    _ => None,
                }
            }

            /// The variant with this Java ordinal.
            pub fn from_ordinal(ordinal: u64) -> Option<Self> {
                match ordinal {
                    $( $ordinal => Some(Self::$variant), )*
                    _ => None,
                }
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.name())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl serde::de::Visitor<'_> for V {
                    type Value = $name;
                    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                        f.write_str(concat!("a ", stringify!($name), " name or ordinal"))
                    }
                    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<$name, E> {
                        $name::from_name(v.trim())
                            .ok_or_else(|| E::invalid_value(serde::de::Unexpected::Str(v), &self))
                    }
                    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<$name, E> {
                        $name::from_ordinal(v).ok_or_else(|| {
                            E::invalid_value(serde::de::Unexpected::Unsigned(v), &self)
                        })
                    }
                    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<$name, E> {
                        let u = u64::try_from(v).map_err(|_| {
                            E::invalid_value(serde::de::Unexpected::Signed(v), &self)
                        })?;
                        self.visit_u64(u)
                    }
                    fn visit_unit<E: serde::de::Error>(self) -> Result<$name, E> {
                        Ok($name::default())
                    }
                }
                d.deserialize_any(V)
            }
        }
    };
}
pub(crate) use java_enum;
