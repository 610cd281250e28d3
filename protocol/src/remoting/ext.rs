//! Ext fields: the "custom header" of a command, a flat map of string keys to string values.
//!
//! RocketMQ flattens every typed header class into this map (`rocketmq-protocol.md` §1.2), and
//! clients disagree on the details: C++ sends `"0"`/`"1"` for booleans, Go sends `""` where Java
//! would send nothing. The getters here read liberally and name the field in every error, so a
//! broker can answer with a precise remark instead of closing the connection.
//!
//! Typed getters (`get_i32`, `get_bool`, ...) treat an empty value as absent, as Java's binary
//! header does; [`ExtFields::get_str`] returns values verbatim.

use std::borrow::Cow;

/// Longest client-supplied value quoted back in a [`HeaderError`], so errors stay loggable.
const MAX_QUOTED_VALUE: usize = 64;

/// Why a typed header could not be read from its ext fields.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HeaderError {
    /// A required field is absent (or empty, for a non-string field).
    #[error("missing required header field {0}")]
    Missing(&'static str),
    /// A field is present but not of the expected form.
    #[error("header field {field} has invalid value {value:?}")]
    Invalid {
        /// The field name as it travels on the wire.
        field: &'static str,
        /// The offending value, truncated to 64 characters.
        value: String,
    },
}

impl HeaderError {
    /// An [`HeaderError::Invalid`] quoting at most the first 64 characters of `value`.
    pub fn invalid(field: &'static str, value: &str) -> Self {
        let value = value.chars().take(MAX_QUOTED_VALUE).collect();
        Self::Invalid { field, value }
    }
}

/// Most fields one decoded header may carry. Real headers have a few dozen; without a bound a
/// single frame of ~2 million tiny keys in descending order made each insert shift every
/// entry already stored (hours of CPU on the connection's task).
pub const MAX_EXT_FIELDS: usize = 1024;

/// The ext-field map, sorted by key like Java's JSON writer.
///
/// A sorted `Vec` rather than a `BTreeMap`: a command has a dozen fields or so, written and
/// read once each on every request, so one contiguous allocation and a binary search beat a
/// tree's nodes; the names of typed header fields are `&'static str` and are not copied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExtFields(Vec<(Cow<'static, str>, String)>);

impl ExtFields {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty map with room for `n` fields.
    pub fn with_capacity(n: usize) -> Self {
        Self(Vec::with_capacity(n))
    }

    /// Sets `key`, replacing any previous value.
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<String>) {
        self.put(Cow::Owned(key.into()), value.into());
    }

    /// [`ExtFields::insert`] for a name read off the wire: the names of the hot requests'
    /// fields (sends and their responses, pulls, END_TRANSACTION) are not copied.
    pub fn insert_decoded(&mut self, key: &str, value: String) {
        let key = match well_known(key) {
            Some(k) => Cow::Borrowed(k),
            None => Cow::Owned(key.to_owned()),
        };
        self.put(key, value);
    }

    /// [`ExtFields::insert`] for a field name known at compile time (no copy of the name).
    pub fn insert_static(&mut self, key: &'static str, value: impl Into<String>) {
        self.put(Cow::Borrowed(key), value.into());
    }

    fn put(&mut self, key: Cow<'static, str>, value: String) {
        // Fields mostly arrive in key order (Java's writer sorts them): try the end first.
        if self
            .0
            .last()
            .is_none_or(|(last, _)| cmp_key(last, &key).is_lt())
        {
            self.0.push((key, value));
            return;
        }
        match self.find(&key) {
            Ok(i) => self.0[i].1 = value,
            Err(i) => self.0.insert(i, (key, value)),
        }
    }

    fn find(&self, key: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(k, _)| cmp_key(k, key))
    }

    /// Builder form of [`ExtFields::insert`].
    #[must_use]
    pub fn with(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.insert(key, value);
        self
    }

    /// Removes `key`, returning its value.
    pub fn remove(&mut self, key: &str) -> Option<String> {
        let i = self.find(key).ok()?;
        Some(self.0.remove(i).1)
    }

    /// True when `key` is present, even with an empty value.
    pub fn contains_key(&self, key: &str) -> bool {
        self.find(key).is_ok()
    }

    /// Number of fields.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when there are no fields.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Iterates the fields in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (&**k, v.as_str()))
    }

    /// The raw value of `key`, empty strings included.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.find(key).ok().map(|i| self.0[i].1.as_str())
    }

    /// `field` as an `i32`; `Ok(None)` when absent or empty.
    pub fn get_i32(&self, field: &'static str) -> Result<Option<i32>, HeaderError> {
        self.parse_with(field, |s| s.parse().ok())
    }

    /// `field` as an `i64`; `Ok(None)` when absent or empty.
    pub fn get_i64(&self, field: &'static str) -> Result<Option<i64>, HeaderError> {
        self.parse_with(field, |s| s.parse().ok())
    }

    /// `field` as a `u64`; `Ok(None)` when absent or empty.
    pub fn get_u64(&self, field: &'static str) -> Result<Option<u64>, HeaderError> {
        self.parse_with(field, |s| s.parse().ok())
    }

    /// `field` as a boolean: `"1"`/`"true"` and `"0"`/`"false"` in any case (C++ clients send
    /// the digits); `Ok(None)` when absent or empty.
    pub fn get_bool(&self, field: &'static str) -> Result<Option<bool>, HeaderError> {
        self.parse_with(field, parse_bool)
    }

    /// The raw value of a required field; an empty string counts as present.
    pub fn require_str(&self, field: &'static str) -> Result<&str, HeaderError> {
        self.get_str(field).ok_or(HeaderError::Missing(field))
    }

    /// A required `i32`.
    pub fn require_i32(&self, field: &'static str) -> Result<i32, HeaderError> {
        self.get_i32(field)?.ok_or(HeaderError::Missing(field))
    }

    /// A required `i64`.
    pub fn require_i64(&self, field: &'static str) -> Result<i64, HeaderError> {
        self.get_i64(field)?.ok_or(HeaderError::Missing(field))
    }

    /// A required `u64`.
    pub fn require_u64(&self, field: &'static str) -> Result<u64, HeaderError> {
        self.get_u64(field)?.ok_or(HeaderError::Missing(field))
    }

    /// A required boolean (see [`ExtFields::get_bool`]).
    pub fn require_bool(&self, field: &'static str) -> Result<bool, HeaderError> {
        self.get_bool(field)?.ok_or(HeaderError::Missing(field))
    }

    fn parse_with<T>(
        &self,
        field: &'static str,
        parse: impl Fn(&str) -> Option<T>,
    ) -> Result<Option<T>, HeaderError> {
        let Some(raw) = self.get_str(field) else {
            return Ok(None);
        };
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Ok(None);
        }
        parse(trimmed)
            .map(Some)
            .ok_or_else(|| HeaderError::invalid(field, raw))
    }
}

/// The static copy of a field name every send, pull and transaction end carries, if `key` is
/// one: decoding then allocates only values. Send fields come from the send header's own name
/// table (V2 names are the letters `a`..`n`, in its order).
fn well_known(key: &str) -> Option<&'static str> {
    use super::custom::send::NAMES as SEND;
    /// Fields of send responses, pulls and END_TRANSACTION not in the send header.
    const OTHERS: [&str; 18] = [
        "msgId",
        "queueOffset",
        "transactionId",
        "MSG_REGION",
        "TRACE_ON",
        "consumerGroup",
        "maxMsgNums",
        "commitOffset",
        "suspendTimeoutMillis",
        "subscription",
        "subVersion",
        "expressionType",
        "tranStateTableOffset",
        "commitLogOffset",
        "commitOrRollback",
        "fromTransactionCheck",
        "nextBeginOffset",
        "minOffset",
    ];
    if let [b] = key.as_bytes() {
        let i = usize::from(b.checked_sub(b'a')?);
        return SEND.get(i).map(|(_, v2)| *v2).filter(|v2| *v2 == key);
    }
    SEND.iter()
        .map(|(v1, _)| *v1)
        .chain(OTHERS)
        .find(|n| n.len() == key.len() && *n == key)
}

/// Byte order of two field names, deciding on the first byte inline when it differs (it
/// nearly always does: V2 send headers are `a`..`n`), so a lookup rarely calls `memcmp`.
fn cmp_key(a: &str, b: &str) -> std::cmp::Ordering {
    match (a.as_bytes().first(), b.as_bytes().first()) {
        (Some(x), Some(y)) if x != y => x.cmp(y),
        _ => a.cmp(b),
    }
}

fn parse_bool(s: &str) -> Option<bool> {
    if s == "1" || s.eq_ignore_ascii_case("true") {
        Some(true)
    } else if s == "0" || s.eq_ignore_ascii_case("false") {
        Some(false)
    } else {
        None
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for ExtFields {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut ext = Self::new();
        for (k, v) in iter {
            ext.insert(k, v);
        }
        ext
    }
}

/// An owned field, as [`ExtFields`] yields it by value.
type OwnedField = (String, String);

impl IntoIterator for ExtFields {
    type Item = OwnedField;
    type IntoIter = std::iter::Map<
        std::vec::IntoIter<(Cow<'static, str>, String)>,
        fn((Cow<'static, str>, String)) -> OwnedField,
    >;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter().map(|(k, v)| (k.into_owned(), v))
    }
}

/// A JSON object in key order, as Java's writer produces.
impl serde::Serialize for ExtFields {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.iter())
    }
}

/// A value type a typed header field can have. `Option<T>` makes a field optional; every other
/// type is required. Used by the header structs in [`super::custom`].
pub trait ExtValue: Sized {
    /// Reads `field` from `ext`.
    fn read(ext: &ExtFields, field: &'static str) -> Result<Self, HeaderError>;
    /// Writes the value as `field`, in the text form every client can read.
    fn write(&self, ext: &mut ExtFields, field: &'static str);
}

impl ExtValue for String {
    fn read(ext: &ExtFields, field: &'static str) -> Result<Self, HeaderError> {
        ext.require_str(field).map(str::to_owned)
    }
    fn write(&self, ext: &mut ExtFields, field: &'static str) {
        ext.insert_static(field, self.as_str());
    }
}

macro_rules! ext_value_via {
    ($ty:ty, $require:ident, $get:ident) => {
        impl ExtValue for $ty {
            fn read(ext: &ExtFields, field: &'static str) -> Result<Self, HeaderError> {
                ext.$require(field)
            }
            fn write(&self, ext: &mut ExtFields, field: &'static str) {
                ext.insert_static(field, self.to_string());
            }
        }

        impl ExtValue for Option<$ty> {
            fn read(ext: &ExtFields, field: &'static str) -> Result<Self, HeaderError> {
                ext.$get(field)
            }
            fn write(&self, ext: &mut ExtFields, field: &'static str) {
                if let Some(v) = self {
                    v.write(ext, field);
                }
            }
        }
    };
}

ext_value_via!(i32, require_i32, get_i32);
ext_value_via!(i64, require_i64, get_i64);
ext_value_via!(u64, require_u64, get_u64);
ext_value_via!(bool, require_bool, get_bool);

/// An optional string: empty counts as absent (Go and C++ send `""` for "not set").
impl ExtValue for Option<String> {
    fn read(ext: &ExtFields, field: &'static str) -> Result<Self, HeaderError> {
        Ok(ext
            .get_str(field)
            .filter(|s| !s.is_empty())
            .map(str::to_owned))
    }
    fn write(&self, ext: &mut ExtFields, field: &'static str) {
        if let Some(v) = self {
            ext.insert_static(field, v.as_str());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext(pairs: &[(&str, &str)]) -> ExtFields {
        pairs.iter().copied().collect()
    }

    #[test]
    fn numbers_parse_and_errors_name_the_field() {
        let e = ext(&[("queueId", "3"), ("offset", " 12 "), ("bad", "x1")]);
        assert_eq!(e.get_i32("queueId"), Ok(Some(3)));
        assert_eq!(e.require_i64("offset"), Ok(12));
        assert_eq!(e.get_u64("absent"), Ok(None));
        assert_eq!(e.require_i32("absent"), Err(HeaderError::Missing("absent")));
        assert_eq!(
            e.get_i32("bad"),
            Err(HeaderError::Invalid {
                field: "bad",
                value: "x1".into()
            })
        );
    }

    #[test]
    fn booleans_accept_digits_and_words_in_any_case() {
        let e = ext(&[
            ("a", "1"),
            ("b", "TRUE"),
            ("c", "0"),
            ("d", "False"),
            ("e", "yes"),
        ]);
        assert_eq!(e.get_bool("a"), Ok(Some(true)));
        assert_eq!(e.get_bool("b"), Ok(Some(true)));
        assert_eq!(e.get_bool("c"), Ok(Some(false)));
        assert_eq!(e.require_bool("d"), Ok(false));
        assert!(matches!(
            e.get_bool("e"),
            Err(HeaderError::Invalid { field: "e", .. })
        ));
    }

    #[test]
    fn empty_values_are_absent_for_typed_getters_but_kept_as_strings() {
        let e = ext(&[("transactionId", ""), ("n", "")]);
        assert_eq!(e.get_i64("n"), Ok(None));
        assert_eq!(e.require_i64("n"), Err(HeaderError::Missing("n")));
        assert_eq!(e.get_str("transactionId"), Some(""));
        assert_eq!(<Option<String>>::read(&e, "transactionId"), Ok(None));
    }

    #[test]
    fn fields_stay_sorted_and_unique_whatever_the_insertion_order() {
        let mut e = ExtFields::new();
        for (k, v) in [("m", "1"), ("b", "2"), ("z", "3"), ("b", "4"), ("a", "5")] {
            e.insert(k, v);
        }
        e.insert_static("m", "6");
        assert_eq!(
            e.iter().collect::<Vec<_>>(),
            [("a", "5"), ("b", "4"), ("m", "6"), ("z", "3")]
        );
        assert_eq!(e.remove("b").as_deref(), Some("4"));
        assert!(!e.contains_key("b") && e.contains_key("z"));
        assert_eq!(e.len(), 3);
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"a":"5","m":"6","z":"3"}"#
        );
        let owned: Vec<(String, String)> = e.clone().into_iter().collect();
        assert_eq!(owned[0], ("a".to_string(), "5".to_string()));
        assert_eq!(e, owned.into_iter().collect::<ExtFields>());
    }

    #[test]
    fn decoded_names_read_the_same_whether_well_known_or_not() {
        let mut e = ExtFields::new();
        for k in ["a", "n", "o", "queueOffset", "queueOffsetX", "", "zz"] {
            e.insert_decoded(k, format!("v-{k}"));
        }
        for k in ["a", "n", "o", "queueOffset", "queueOffsetX", "", "zz"] {
            assert_eq!(e.get_str(k), Some(format!("v-{k}").as_str()), "{k}");
        }
        assert_eq!(well_known("a"), Some("a"));
        assert_eq!(well_known("o"), None);
        assert_eq!(well_known("commitLogOffset"), Some("commitLogOffset"));
        assert_eq!(well_known("commitlogoffset"), None);
    }

    #[test]
    fn invalid_values_are_truncated_in_errors() {
        let long = "z".repeat(1000);
        let e = ext(&[("f", long.as_str())]);
        match e.get_i32("f") {
            Err(HeaderError::Invalid { value, .. }) => assert_eq!(value.len(), 64),
            other => panic!("unexpected {other:?}"),
        }
    }
}
