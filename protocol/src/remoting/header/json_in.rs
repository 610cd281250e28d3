//! Reading a JSON header straight into a command, in one pass.
//!
//! Every request's header is parsed here, so it avoids building a `serde_json::Value` tree and
//! copying it into the ext-field map: keys and values are read into their final strings once.
//! The rules are the liberal ones of the module above (numbers and booleans as ext values,
//! numeric strings for integers, null as absent, unknown keys ignored, a repeated key's last
//! value wins). The errors keep their order: malformed JSON first, then a non-object header,
//! then the first unreadable field in the order code, version, opaque, flag, extFields. A
//! property test in `tests.rs` checks this against a `Value`-based reading.

use std::borrow::Cow;
use std::fmt;

use bytes::Bytes;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use super::{HeaderDecodeError, LanguageCode};
use crate::remoting::ext::ExtFields;
use crate::remoting::ext::MAX_EXT_FIELDS;
use crate::remoting::frame::RemotingCommand;
use serde::de::Error as _;

/// Parses a JSON header into a command with an empty body.
///
/// Bytes that are not UTF-8 inside strings are read as U+FFFD, as Java's decoder does:
/// rocketmq-client-cpp passes a GBK tag, key or property through unescaped, and refusing the
/// header closed the connection (and every pull parked on it) at each such send.
pub(super) fn decode(raw: &[u8]) -> Result<RemotingCommand, HeaderDecodeError> {
    let parsed = match parse(raw) {
        Err(e) if std::str::from_utf8(raw).is_err() => {
            parse(String::from_utf8_lossy(raw).as_bytes()).map_err(|_| e)
        }
        other => other,
    }
    .map_err(|e| HeaderDecodeError::Json(e.to_string()))?;
    let Some(h) = parsed else {
        return Err(HeaderDecodeError::NotObject);
    };
    Ok(RemotingCommand {
        code: int_field(&h.code, "code")?,
        language: h.language.map_or(LanguageCode::Java, |l| language_of(&l)),
        version: int_field(&h.version, "version")?,
        opaque: int_field(&h.opaque, "opaque")?,
        flag: int_field(&h.flag, "flag")?,
        remark: h.remark.and_then(text_of),
        ext_fields: h.ext.ok_or(HeaderDecodeError::Field("extFields"))?,
        body: Bytes::new(),
    })
}

fn parse(raw: &[u8]) -> Result<Option<HeaderIn>, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(raw);
    de.deserialize_any(HeaderVisitor)
        .and_then(|h| de.end().map(|()| h))
}

/// One JSON value as the header rules need it: scalars as they are, arrays and objects kept
/// as their compact JSON text.
#[derive(Debug, Clone, PartialEq)]
enum Scalar {
    Null,
    Bool(bool),
    Neg(i64),
    Pos(u64),
    Float(f64),
    Str(String),
    Compound(String),
}

/// The fields read so far; `ext` is `None` when `extFields` is neither an object nor null.
struct HeaderIn {
    code: Option<Scalar>,
    language: Option<Scalar>,
    version: Option<Scalar>,
    opaque: Option<Scalar>,
    flag: Option<Scalar>,
    remark: Option<Scalar>,
    ext: Option<ExtFields>,
}

/// A missing or null integer is 0; a numeric string is accepted; anything else, or a value
/// outside `i32`, is refused.
fn int_field(v: &Option<Scalar>, field: &'static str) -> Result<i32, HeaderDecodeError> {
    let parsed = match v {
        None | Some(Scalar::Null) => return Ok(0),
        Some(Scalar::Neg(n)) => i32::try_from(*n).ok(),
        Some(Scalar::Pos(n)) => i32::try_from(*n).ok(),
        Some(Scalar::Str(s)) => s.trim().parse().ok(),
        Some(_) => None,
    };
    parsed.ok_or(HeaderDecodeError::Field(field))
}

fn language_of(v: &Scalar) -> LanguageCode {
    let known = match v {
        Scalar::Str(s) => LanguageCode::from_name(s.trim()),
        Scalar::Pos(n) => u8::try_from(*n).ok().and_then(LanguageCode::from_ordinal),
        _ => None,
    };
    known.unwrap_or(LanguageCode::Other)
}

/// The string form of a value: strings verbatim, numbers as JSON writes them, booleans as
/// `true`/`false`, arrays and objects as compact JSON; null is absent.
fn text_of(v: Scalar) -> Option<String> {
    match v {
        Scalar::Null => None,
        Scalar::Bool(b) => Some(b.to_string()),
        Scalar::Neg(n) => Some(n.to_string()),
        Scalar::Pos(n) => Some(n.to_string()),
        Scalar::Float(f) => Some(serde_json::Number::from_f64(f).map_or_else(
            || "null".to_string(), // JSON cannot carry NaN or infinity: unreachable
            |n| n.to_string(),
        )),
        Scalar::Str(s) | Scalar::Compound(s) => Some(s),
    }
}

/// The `visit_*` methods of a visitor that wants an object: an array or a scalar is consumed
/// (so the JSON is still checked to its end) and read as `None`.
macro_rules! not_an_object_is_none {
    () => {
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            Ok(None)
        }

        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
            Ok(None)
        }
    };
}

/// The top level: an object is a header; anything else is consumed and reported as `None`.
struct HeaderVisitor;

impl<'de> Visitor<'de> for HeaderVisitor {
    type Value = Option<HeaderIn>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON header")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut h = HeaderIn {
            code: None,
            language: None,
            version: None,
            opaque: None,
            flag: None,
            remark: None,
            ext: Some(ExtFields::new()),
        };
        while let Some(key) = map.next_key::<Key<'de>>()? {
            match key.0.as_ref() {
                "code" => h.code = Some(map.next_value()?),
                "language" => h.language = Some(map.next_value()?),
                "version" => h.version = Some(map.next_value()?),
                "opaque" => h.opaque = Some(map.next_value()?),
                "flag" => h.flag = Some(map.next_value()?),
                "remark" => h.remark = Some(map.next_value()?),
                "extFields" => h.ext = map.next_value_seed(ExtSeed)?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Some(h))
    }

    not_an_object_is_none!();

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
}

/// `extFields`: an object read straight into the map (null values drop the key, as a later
/// null hides an earlier value); null is an empty map; anything else is `None` (refused).
struct ExtSeed;

impl<'de> DeserializeSeed<'de> for ExtSeed {
    type Value = Option<ExtFields>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(ExtVisitor)
    }
}

struct ExtVisitor;

impl<'de> Visitor<'de> for ExtVisitor {
    type Value = Option<ExtFields>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an extFields object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut ext = ExtFields::with_capacity(16);
        while let Some(key) = map.next_key::<Key<'de>>()? {
            if ext.len() >= MAX_EXT_FIELDS {
                return Err(A::Error::custom(format_args!(
                    "more than {MAX_EXT_FIELDS} extFields"
                )));
            }
            match text_of(map.next_value::<Scalar>()?) {
                Some(text) => ext.insert_decoded(&key.0, text),
                None => {
                    ext.remove(key.0.as_ref());
                }
            }
        }
        Ok(Some(ext))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Some(ExtFields::new()))
    }

    not_an_object_is_none!();
}

/// A key, borrowed from the input unless it had escapes.
struct Key<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ScalarVisitor)
    }
}

struct ScalarVisitor;

impl<'de> Visitor<'de> for ScalarVisitor {
    type Value = Scalar;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Scalar, E> {
        Ok(Scalar::Null)
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Scalar, E> {
        Ok(Scalar::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
        Ok(if v < 0 {
            Scalar::Neg(v)
        } else {
            Scalar::Pos(v as u64)
        })
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
        Ok(Scalar::Pos(v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar, E> {
        Ok(Scalar::Float(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
        Ok(Scalar::Str(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Scalar, E> {
        Ok(Scalar::Str(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Scalar, A::Error> {
        let mut text = String::new();
        Compact(&mut text).visit_seq(seq)?;
        Ok(Scalar::Compound(text))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Scalar, A::Error> {
        let mut text = String::new();
        Compact(&mut text).visit_map(map)?;
        Ok(Scalar::Compound(text))
    }
}

/// Writes a JSON value's compact text as it is read, never holding it as a tree: a
/// `serde_json::Value` costs 16 to 32 bytes per element, so one frame whose header held a
/// 16 MiB array of zeros took hundreds of megabytes before any bound or signature was
/// checked. The text is never longer than the input. Object keys keep their order.
struct Compact<'a>(&'a mut String);

impl<'de> DeserializeSeed<'de> for Compact<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl Compact<'_> {
    fn push_json<T: serde::Serialize + ?Sized, E: de::Error>(&mut self, v: &T) -> Result<(), E> {
        let text = serde_json::to_string(v).map_err(E::custom)?;
        self.0.push_str(&text);
        Ok(())
    }
}

impl<'de> Visitor<'de> for Compact<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.0.push_str("null");
        Ok(())
    }

    fn visit_bool<E: de::Error>(mut self, v: bool) -> Result<(), E> {
        self.push_json(&v)
    }

    fn visit_i64<E: de::Error>(mut self, v: i64) -> Result<(), E> {
        self.push_json(&v)
    }

    fn visit_u64<E: de::Error>(mut self, v: u64) -> Result<(), E> {
        self.push_json(&v)
    }

    fn visit_f64<E: de::Error>(mut self, v: f64) -> Result<(), E> {
        self.push_json(&v)
    }

    fn visit_str<E: de::Error>(mut self, v: &str) -> Result<(), E> {
        self.push_json(v)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let out = self.0;
        out.push('[');
        let mut first = true;
        loop {
            let mark = out.len();
            if !first {
                out.push(',');
            }
            if seq.next_element_seed(Compact(&mut *out))?.is_none() {
                out.truncate(mark);
                break;
            }
            first = false;
        }
        out.push(']');
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let out = self.0;
        out.push('{');
        let mut first = true;
        while let Some(key) = map.next_key::<Key<'de>>()? {
            if !first {
                out.push(',');
            }
            first = false;
            Compact(&mut *out).push_json::<str, A::Error>(&key.0)?;
            out.push(':');
            map.next_value_seed(Compact(&mut *out))?;
        }
        out.push('}');
        Ok(())
    }
}
