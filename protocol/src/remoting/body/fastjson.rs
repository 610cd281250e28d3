//! fastjson's non-standard integer map keys (`rocketmq-protocol.md` §2.9, pitfall 4).
//!
//! Java's fastjson writes a `Map<Long, String>` as `{0:"a",1:"b"}`: keys unquoted, which is not
//! JSON. The name server sends that form (`brokerAddrs`) to clients older than 4.9.4, and broker
//! config files (`offsetTable`) use it too. We accept it on every read by quoting bare numeric
//! keys before parsing, and write it only when a client needs it ([`JsonForm::Legacy`]).

use std::borrow::Cow;

/// Which key form to write for integer-keyed maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonForm {
    /// Standard JSON, keys quoted: `{"0":"a"}`.
    Standard,
    /// fastjson's legacy form, integer keys bare: `{0:"a"}`.
    Legacy,
}

/// First `MQVersion` ordinal whose name server writes standard JSON: `V4_9_4`.
pub const STANDARD_JSON_SINCE_VERSION: i32 = 401;

impl JsonForm {
    /// The form a client expects, as the Java name server decides it: standard when the request
    /// `version` is ≥ 401 or it sent `acceptStandardJsonOnly=true`, legacy otherwise (C++ sends
    /// 333, Go 317; both read either form).
    pub fn for_client(version: i32, accept_standard_json_only: bool) -> Self {
        if accept_standard_json_only || version >= STANDARD_JSON_SINCE_VERSION {
            Self::Standard
        } else {
            Self::Legacy
        }
    }
}

/// Quotes bare numeric object keys (`{0:"a",-1:"b"}` becomes `{"0":"a","-1":"b"}`), leaving
/// strings, array elements and values alone. Borrows when there is nothing to change.
pub fn quote_numeric_keys(text: &str) -> Cow<'_, str> {
    let bytes = text.as_bytes();
    let mut out: Option<String> = None;
    let mut copied = 0;
    let mut in_object: Vec<bool> = Vec::new();
    let mut expect_key = false;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                i = skip_string(bytes, i);
                expect_key = false;
                continue;
            }
            b'{' => {
                in_object.push(true);
                expect_key = true;
            }
            b'[' => {
                in_object.push(false);
                expect_key = false;
            }
            b'}' | b']' => {
                in_object.pop();
                expect_key = false;
            }
            b',' => expect_key = in_object.last() == Some(&true),
            b' ' | b'\t' | b'\n' | b'\r' => {}
            b'-' | b'0'..=b'9' if expect_key => {
                let end = numeric_end(bytes, i);
                let buf = out.get_or_insert_with(|| String::with_capacity(text.len() + 16));
                buf.push_str(&text[copied..i]);
                buf.push('"');
                buf.push_str(&text[i..end]);
                buf.push('"');
                copied = end;
                expect_key = false;
                i = end;
                continue;
            }
            _ => expect_key = false,
        }
        i += 1;
    }
    match out {
        None => Cow::Borrowed(text),
        Some(mut buf) => {
            buf.push_str(&text[copied..]);
            Cow::Owned(buf)
        }
    }
}

/// Index just past the string that starts with the quote at `start` (or the end of input).
fn skip_string(bytes: &[u8], start: usize) -> usize {
    let mut i = start + 1;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'"' => return i + 1,
            _ => i += 1,
        }
    }
    bytes.len()
}

/// Index just past a bare number token starting at `start`.
fn numeric_end(bytes: &[u8], start: usize) -> usize {
    let len = bytes[start + 1..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count();
    start + 1 + len
}

/// Writes a map with integer keys in the given form, values already JSON text.
pub(crate) fn write_int_key_map<'a>(
    out: &mut String,
    entries: impl Iterator<Item = (i64, &'a str)>,
    form: JsonForm,
) {
    out.push('{');
    for (n, (key, value)) in entries.enumerate() {
        if n > 0 {
            out.push(',');
        }
        match form {
            JsonForm::Standard => {
                out.push('"');
                out.push_str(&key.to_string());
                out.push('"');
            }
            JsonForm::Legacy => out.push_str(&key.to_string()),
        }
        out.push(':');
        out.push_str(&serde_json::Value::from(value).to_string());
    }
    out.push('}');
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn bare_keys_are_quoted_and_standard_json_is_borrowed() {
        let legacy = r#"{"brokerAddrs":{0:"10.0.0.1:10911", 1 :"b",-2:"c"},"n":[1,2,{3:4}]}"#;
        assert_eq!(
            quote_numeric_keys(legacy),
            r#"{"brokerAddrs":{"0":"10.0.0.1:10911", "1" :"b","-2":"c"},"n":[1,2,{"3":4}]}"#
        );
        let standard = r#"{"a":{"0":"x"},"b":[0,1],"c":"{0:1}"}"#;
        assert!(matches!(quote_numeric_keys(standard), Cow::Borrowed(_)));
    }

    #[test]
    fn strings_with_braces_and_escapes_are_left_alone() {
        let text = r#"{"k":"a\"{0:1,","v":{7:"\\"}}"#;
        assert_eq!(
            quote_numeric_keys(text),
            r#"{"k":"a\"{0:1,","v":{"7":"\\"}}"#
        );
    }

    #[test]
    fn version_picks_the_form_like_the_java_name_server() {
        assert_eq!(JsonForm::for_client(333, false), JsonForm::Legacy);
        assert_eq!(JsonForm::for_client(317, true), JsonForm::Standard);
        assert_eq!(JsonForm::for_client(401, false), JsonForm::Standard);
    }

    proptest! {
        #[test]
        fn quoting_never_panics_and_keeps_valid_json_valid(text in "\\PC{0,64}") {
            let out = quote_numeric_keys(&text);
            if serde_json::from_str::<serde_json::Value>(&text).is_ok() {
                prop_assert_eq!(out.as_ref(), text.as_str());
            }
        }

        #[test]
        fn quoting_never_panics_on_json_like_text(text in r#"[{}\[\]":,0-9a\\ -]{0,64}"#) {
            let _ = quote_numeric_keys(&text);
        }
    }
}
