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
