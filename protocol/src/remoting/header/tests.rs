use super::*;
use proptest::prelude::*;

fn json(raw: &str) -> RemotingCommand {
    decode_json_header(raw.as_bytes()).unwrap()
}

#[test]
fn cpp_client_header_with_numbers_and_trailing_newline_decodes() {
    let raw = r#"{"code":310,"extFields":{"a":"pg","b":"T","d":4,"e":0,"h":0,"k":"0","m":"0"},"flag":0,"language":"CPP","opaque":1,"version":333}
"#;
    let cmd = json(raw);
    assert_eq!(
        (cmd.code, cmd.opaque, cmd.flag, cmd.version),
        (310, 1, 0, 333)
    );
    assert_eq!(cmd.language, LanguageCode::Cpp);
    assert_eq!(cmd.remark, None);
    assert_eq!(cmd.ext_fields.get_str("a"), Some("pg"));
    assert_eq!(cmd.ext_fields.get_str("d"), Some("4"));
    assert_eq!(cmd.ext_fields.get_i32("e"), Ok(Some(0)));
    assert_eq!(cmd.ext_fields.get_bool("m"), Ok(Some(false)));
}

/// rocketmq-client-cpp passes GBK bytes through unescaped: the header is read with U+FFFD in
/// their place, as Java reads it, instead of failing (which closed the connection).
#[test]
fn bytes_that_are_not_utf8_inside_strings_are_replaced_not_refused() {
    let mut raw = br#"{"code":310,"extFields":{"a":"pg","i":"TAGS\u0001"#.to_vec();
    raw.extend_from_slice(&[0xB6, 0xA9, 0xB5, 0xA5]); // GBK
    raw.extend_from_slice(br#""},"language":"CPP","opaque":7}"#);
    let cmd = decode_json_header(&raw).expect("read");
    assert_eq!((cmd.code, cmd.opaque), (310, 7));
    assert_eq!(cmd.ext_fields.get_str("a"), Some("pg"));
    let props = cmd.ext_fields.get_str("i").unwrap();
    assert!(
        props.starts_with("TAGS\u{1}") && props.contains('\u{FFFD}'),
        "{props:?}"
    );
    // Still refused when it is not JSON at all.
    assert!(decode_json_header(&[0xFF, 0xFE, b'{']).is_err());
}

#[test]
fn missing_and_null_fields_default_instead_of_failing() {
    let cmd = json(r#"{"code":34}"#);
    assert_eq!((cmd.code, cmd.opaque, cmd.flag, cmd.version), (34, 0, 0, 0));
    assert_eq!(cmd.language, LanguageCode::Java);
    assert!(cmd.ext_fields.is_empty());
    let cmd = json(r#"{"code":1,"extFields":null,"remark":null,"opaque":null}"#);
    assert!(cmd.ext_fields.is_empty());
    assert_eq!(cmd.remark, None);
    assert_eq!(json("{}").code, 0);
}

#[test]
fn empty_remark_unknown_keys_and_whitespace_are_accepted() {
    let raw = " \t{ \"code\" : 0 , \"remark\" : \"\", \"serializeTypeCurrentRPC\":\"JSON\", \"x\":[1,{}] }\r\n\n";
    let cmd = json(raw);
    assert_eq!(cmd.remark.as_deref(), Some(""));
}

/// Arrays and objects where a string is expected are kept as their compact JSON text, written
/// as they are read: built as a `serde_json::Value` first, a 16 MiB header of array elements
/// took hundreds of megabytes before any bound or signature was checked.
#[test]
fn arrays_and_objects_in_string_fields_become_their_compact_text_in_input_order() {
    let cmd = json(
        r#"{"code":0,"remark":[1, {"b":"x\"y\u00e9","a":[true,null,-2,1.5,{}]}],
            "extFields":{"k":{"z":1,"y":[ ]}}}"#,
    );
    assert_eq!(
        cmd.remark.as_deref(),
        Some(r#"[1,{"b":"x\"yé","a":[true,null,-2,1.5,{}]}]"#)
    );
    assert_eq!(cmd.ext_fields.get_str("k"), Some(r#"{"z":1,"y":[]}"#));
    let n = 1_000_000;
    let big = format!(r#"{{"code":0,"remark":[{}0]}}"#, "0,".repeat(n - 1));
    let cmd = json(&big);
    assert_eq!(cmd.remark.map(|r| r.len()), Some(2 * n + 1));
}

#[test]
fn numeric_strings_language_ordinals_and_booleans_are_read() {
    let cmd = json(
        r#"{"code":"105","opaque":" 7","flag":"1","version":"401","language":9,
            "extFields":{"t":true,"f":false,"big":12345678901234,"neg":-3,"n":null,"s":"x"}}"#,
    );
    assert_eq!(
        (cmd.code, cmd.opaque, cmd.flag, cmd.version),
        (105, 7, 1, 401)
    );
    assert_eq!(cmd.language, LanguageCode::Go);
    let ext = &cmd.ext_fields;
    assert_eq!(ext.get_str("t"), Some("true"));
    assert_eq!(ext.get_str("f"), Some("false"));
    assert_eq!(ext.get_i64("big"), Ok(Some(12_345_678_901_234)));
    assert_eq!(ext.get_str("neg"), Some("-3"));
    assert!(!ext.contains_key("n"));
}

#[test]
fn unknown_language_reads_as_other() {
    assert_eq!(
        json(r#"{"language":"COBOL"}"#).language,
        LanguageCode::Other
    );
    assert_eq!(json(r#"{"language":200}"#).language, LanguageCode::Other);
    assert_eq!(json(r#"{"language":"rust"}"#).language, LanguageCode::Rust);
}

#[test]
fn unreadable_headers_are_errors_not_panics() {
    let bad = |raw: &str| decode_json_header(raw.as_bytes()).unwrap_err();
    assert!(matches!(bad("{"), HeaderDecodeError::Json(_)));
    assert_eq!(bad("[1]"), HeaderDecodeError::NotObject);
    assert_eq!(
        bad(r#"{"code":4294967296}"#),
        HeaderDecodeError::Field("code")
    );
    assert_eq!(bad(r#"{"opaque":1.5}"#), HeaderDecodeError::Field("opaque"));
    assert_eq!(bad(r#"{"flag":"x"}"#), HeaderDecodeError::Field("flag"));
    assert_eq!(
        bad(r#"{"extFields":[]}"#),
        HeaderDecodeError::Field("extFields")
    );
    let deep = "[".repeat(100_000);
    assert!(matches!(bad(&deep), HeaderDecodeError::Json(_)));
}

#[test]
fn json_encoding_is_compact_sorted_and_string_valued() {
    let mut cmd = RemotingCommand::request(310, ExtFields::new().with("queueId", "3"));
    cmd.opaque = 42;
    let mut out = BytesMut::new();
    encode_json_header(&cmd, &mut out);
    assert_eq!(
        std::str::from_utf8(&out).unwrap(),
        r#"{"code":310,"extFields":{"queueId":"3"},"flag":0,"language":"JAVA","opaque":42,"serializeTypeCurrentRPC":"JSON","version":401}"#
    );
    let mut out = BytesMut::new();
    encode_json_header(&RemotingCommand::default(), &mut out);
    assert!(std::str::from_utf8(&out)
        .unwrap()
        .contains(r#""extFields":{}"#));
}

#[test]
fn binary_header_round_trips_and_keeps_sign_of_short_code() {
    let cmd = RemotingCommand {
        code: -5,
        language: LanguageCode::Python,
        version: 317,
        opaque: -9,
        flag: 3,
        remark: Some("oops".into()),
        ext_fields: ExtFields::new().with("k", "v").with("empty", ""),
        body: Bytes::new(),
    };
    let mut out = BytesMut::new();
    encode_binary_header(&cmd, &mut out).unwrap();
    assert_eq!(decode_binary_header(&out), Ok(cmd));
}

#[test]
fn binary_header_refuses_codes_beyond_int16() {
    let cmd = RemotingCommand::request(200_050, ExtFields::new());
    let err = encode_binary_header(&cmd, &mut BytesMut::new()).unwrap_err();
    assert!(matches!(
        err,
        HeaderEncodeError::OutOfRange { field: "code", .. }
    ));
}

#[test]
fn binary_header_lengths_are_checked_before_slicing() {
    let mut out = BytesMut::new();
    encode_binary_header(&RemotingCommand::default(), &mut out).unwrap();
    assert_eq!(out.len(), BINARY_HEADER_FIXED_LEN);
    for cut in 0..out.len() {
        assert!(decode_binary_header(&out[..cut]).is_err());
    }
    let mut neg = out.to_vec();
    neg[13..17].copy_from_slice(&(-1i32).to_be_bytes());
    assert_eq!(
        decode_binary_header(&neg),
        Err(HeaderDecodeError::NegativeLength("remark"))
    );
}

#[test]
fn language_names_and_ordinals_agree() {
    for ordinal in 0..14u8 {
        let lang = LanguageCode::from_ordinal(ordinal).unwrap();
        assert_eq!(lang.ordinal(), ordinal);
        assert_eq!(LanguageCode::from_name(lang.name()), Some(lang));
    }
    assert_eq!(LanguageCode::NodeJs.name(), "NODE_JS");
    assert_eq!(LanguageCode::from_ordinal(14), None);
}

proptest! {
    #[test]
    fn json_header_decode_never_panics(raw in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = decode_json_header(&raw);
    }

    #[test]
    fn json_like_header_decode_never_panics(raw in r#"[{}\[\]":,0-9a-zA-Z \-.e]{0,80}"#) {
        let _ = decode_json_header(raw.as_bytes());
    }

    #[test]
    fn binary_header_decode_never_panics(raw in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = decode_binary_header(&raw);
    }
}

// ---- The reference reading: the former `Value`-based decoder, kept as the oracle that the
// one-pass decoder (`json_in`) must agree with.
use serde_json::{Map, Value};

/// Parses a JSON header into a command with an empty body.
fn reference_decode(raw: &[u8]) -> Result<RemotingCommand, HeaderDecodeError> {
    let value: Value =
        serde_json::from_slice(raw).map_err(|e| HeaderDecodeError::Json(e.to_string()))?;
    let Value::Object(map) = value else {
        return Err(HeaderDecodeError::NotObject);
    };
    Ok(RemotingCommand {
        code: int_field(&map, "code")?,
        language: map.get("language").map_or(LanguageCode::Java, language_of),
        version: int_field(&map, "version")?,
        opaque: int_field(&map, "opaque")?,
        flag: int_field(&map, "flag")?,
        remark: map.get("remark").and_then(text_of),
        ext_fields: ext_fields_of(map.get("extFields"))?,
        body: Bytes::new(),
    })
}

/// A missing or null integer is 0 (C++ reads a missing `code` as SUCCESS); a numeric string is
/// accepted; anything else, or a value outside `i32`, is refused.
fn int_field(map: &Map<String, Value>, field: &'static str) -> Result<i32, HeaderDecodeError> {
    let parsed = match map.get(field) {
        None | Some(Value::Null) => return Ok(0),
        Some(Value::Number(n)) => n.as_i64().and_then(|v| i32::try_from(v).ok()),
        Some(Value::String(s)) => s.trim().parse().ok(),
        Some(_) => None,
    };
    parsed.ok_or(HeaderDecodeError::Field(field))
}

fn language_of(value: &Value) -> LanguageCode {
    let known = match value {
        Value::String(s) => LanguageCode::from_name(s.trim()),
        Value::Number(n) => n
            .as_u64()
            .and_then(|v| u8::try_from(v).ok())
            .and_then(LanguageCode::from_ordinal),
        _ => None,
    };
    known.unwrap_or(LanguageCode::Other)
}

/// The string form of a scalar: strings verbatim, numbers as written, booleans as
/// `true`/`false`. Null is absent; arrays and objects keep their compact JSON text.
fn text_of(value: &Value) -> Option<String> {
    match value {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        other => Some(other.to_string()),
    }
}

fn ext_fields_of(value: Option<&Value>) -> Result<ExtFields, HeaderDecodeError> {
    match value {
        None | Some(Value::Null) => Ok(ExtFields::new()),
        Some(Value::Object(map)) => Ok(map
            .iter()
            .filter_map(|(k, v)| text_of(v).map(|t| (k.as_str(), t)))
            .collect()),
        Some(_) => Err(HeaderDecodeError::Field("extFields")),
    }
}

/// A JSON value of the kinds real and hostile clients send, nested a little.
fn json_value() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just("null".to_string()),
        any::<bool>().prop_map(|b| b.to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        (-1e6f64..1e6).prop_map(|f| f.to_string()),
        Just("1e3".to_string()),
        Just("-0".to_string()),
        Just("2147483648".to_string()),
        "[a-zA-Z0-9 _.-]{0,8}".prop_map(|s| format!("\"{s}\"")),
        Just(r#""esc\"aped\\\u00e9\n""#.to_string()),
        Just(r#"" 42 ""#.to_string()),
        Just(r#""JAVA""#.to_string()),
    ];
    leaf.prop_recursive(2, 8, 3, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..3)
                .prop_map(|v| format!("[{}]", v.join(","))),
            // Sorted distinct keys: the one-pass reader writes an object where a string is
            // expected in its input order, keeping repeats, while a `Value` sorts and keeps
            // the last (no client sends either; see the compact-text test).
            proptest::collection::btree_map("[a-c]{1,2}", inner, 0..3).prop_map(|v| {
                let fields: Vec<String> =
                    v.into_iter().map(|(k, x)| format!("\"{k}\":{x}")).collect();
                format!("{{{}}}", fields.join(","))
            }),
        ]
    })
}

/// A header object: known and unknown keys (some repeated), any values, extFields usually an
/// object of any values.
fn json_header() -> impl Strategy<Value = String> {
    let key = prop_oneof![
        Just("code"),
        Just("language"),
        Just("version"),
        Just("opaque"),
        Just("flag"),
        Just("remark"),
        Just("extFields"),
        Just("serializeTypeCurrentRPC"),
        Just("other"),
    ];
    fn object(fields: Vec<(String, String)>) -> String {
        let fields: Vec<String> = fields
            .into_iter()
            .map(|(k, x)| format!("\"{k}\":{x}"))
            .collect();
        format!("{{{}}}", fields.join(","))
    }
    // Repeated keys only in `extFields` itself: elsewhere an object is text, and the
    // one-pass reader keeps its input order and repeats (see `json_value`).
    let ext = proptest::collection::vec(("[a-d]{1,2}|k\\\\u0041", json_value()), 0..5)
        .prop_map(object)
        .boxed();
    let distinct = proptest::collection::btree_map("[a-d]{1,2}", json_value(), 0..5)
        .prop_map(|m| object(m.into_iter().collect()))
        .boxed();
    let pair = key.prop_flat_map(move |k| {
        let value = if k == "extFields" {
            prop_oneof![3 => json_value(), 2 => ext.clone()].boxed()
        } else {
            prop_oneof![3 => json_value(), 2 => distinct.clone()].boxed()
        };
        value.prop_map(move |v| (k, v))
    });
    proptest::collection::vec(pair, 0..8).prop_map(|v| {
        let fields: Vec<String> = v.into_iter().map(|(k, x)| format!("\"{k}\":{x}")).collect();
        format!("{{{}}}\n", fields.join(","))
    })
}

/// The same header, or both refused. Which error a refusal names may differ: the one-pass
/// reader and serde_json's value reader give up at different points of malformed text ("[-"
/// is an invalid number to one and an early end to the other).
fn same_outcome<T: PartialEq, E>(a: &Result<T, E>, b: &Result<T, E>) -> bool {
    match (a, b) {
        (Ok(x), Ok(y)) => x == y,
        (Err(_), Err(_)) => true,
        _ => false,
    }
}

proptest! {
    #[test]
    fn one_pass_decoder_agrees_with_the_value_reading_on_headers(raw in json_header()) {
        prop_assert_eq!(decode_json_header(raw.as_bytes()), reference_decode(raw.as_bytes()), "{}", raw);
    }

    #[test]
    fn one_pass_decoder_agrees_with_the_value_reading_on_json_like_text(
        raw in r#"[{}\[\]":,0-9a-zA-Z \-.e]{0,80}"#
    ) {
        let (one, reference) = (decode_json_header(raw.as_bytes()), reference_decode(raw.as_bytes()));
        prop_assert!(same_outcome(&one, &reference), "{}: {:?} against {:?}", raw, one, reference);
    }

    #[test]
    fn one_pass_decoder_agrees_with_the_value_reading_on_any_bytes(
        raw in proptest::collection::vec(any::<u8>(), 0..128)
    ) {
        let (one, reference) = (decode_json_header(&raw), reference_decode(&raw));
        prop_assert!(same_outcome(&one, &reference), "{:?} against {:?}", one, reference);
    }
}

/// Before, a header could carry any number of ext fields, each inserted into a sorted vector:
/// ~2 million tiny keys in descending order (one 16 MiB frame) cost hours of CPU on the
/// connection's task. Past `MAX_EXT_FIELDS` the header is refused, in both encodings.
#[test]
fn a_header_with_more_ext_fields_than_the_cap_is_refused_in_both_encodings() {
    use crate::remoting::ext::MAX_EXT_FIELDS;
    let keys: Vec<String> = (0..=MAX_EXT_FIELDS)
        .rev()
        .map(|i| format!("k{i:06}"))
        .collect();
    let mut ext = String::new();
    for k in &keys {
        if !ext.is_empty() {
            ext.push(',');
        }
        ext.push_str(&format!("\"{k}\":\"v\""));
    }
    let raw = format!(r#"{{"code":310,"extFields":{{{ext}}}}}"#);
    assert!(decode_json_header(raw.as_bytes()).is_err());

    let mut cmd = RemotingCommand::request(310, ExtFields::new());
    for k in &keys[1..] {
        cmd.ext_fields.insert(k.clone(), "v");
    }
    let mut ok = BytesMut::new();
    encode_binary_header(&cmd, &mut ok).unwrap();
    let at_cap = decode_binary_header(&ok).expect("exactly the cap is fine");
    assert_eq!(at_cap.ext_fields.len(), MAX_EXT_FIELDS);
    cmd.ext_fields.insert(keys[0].clone(), "v");
    let mut over = BytesMut::new();
    encode_binary_header(&cmd, &mut over).unwrap();
    assert_eq!(
        decode_binary_header(&over).unwrap_err(),
        HeaderDecodeError::TooManyExtFields(MAX_EXT_FIELDS)
    );
}
