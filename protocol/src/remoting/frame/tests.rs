use super::*;
use crate::remoting::header::HeaderDecodeError;
use proptest::prelude::*;

fn sample() -> RemotingCommand {
    RemotingCommand {
        code: 310,
        language: LanguageCode::Cpp,
        version: 333,
        opaque: 77,
        flag: 0,
        remark: Some("hi".into()),
        ext_fields: ExtFields::new()
            .with("a", "pg")
            .with("b", "TopicA")
            .with("e", "-1"),
        body: Bytes::from_static(b"payload"),
    }
}

fn framed(cmd: &RemotingCommand) -> BytesMut {
    let mut out = BytesMut::new();
    encode(cmd, &mut out).unwrap();
    out
}

/// A raw frame with a JSON header given as text.
fn raw_frame(header: &str, body: &[u8]) -> BytesMut {
    let mut out = BytesMut::new();
    out.extend_from_slice(&((4 + header.len() + body.len()) as i32).to_be_bytes());
    out.extend_from_slice(&(header.len() as u32).to_be_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(body);
    out
}

#[test]
fn json_frame_round_trips_and_consumes_exactly_one_frame() {
    let mut buf = framed(&sample());
    buf.extend_from_slice(&framed(&RemotingCommand::request(34, ExtFields::new())));
    let first = FrameDecoder::default().decode(&mut buf).unwrap().unwrap();
    assert_eq!(first, sample());
    let second = FrameDecoder::default().decode(&mut buf).unwrap().unwrap();
    assert_eq!(second.code, 34);
    assert!(buf.is_empty());
    assert_eq!(FrameDecoder::default().decode(&mut buf), Ok(None));
}

#[test]
fn binary_frame_round_trips() {
    let mut buf = BytesMut::new();
    encode_binary(&sample(), &mut buf).unwrap();
    assert_eq!(buf[4], 1, "serialize type byte");
    assert_eq!(FrameDecoder::default().decode(&mut buf), Ok(Some(sample())));
    assert!(buf.is_empty());
}

#[test]
fn length_prefix_does_not_count_itself() {
    let buf = framed(&sample());
    let declared = i32::from_be_bytes(buf[..4].try_into().unwrap()) as usize;
    assert_eq!(declared + 4, buf.len());
    let header_len = u32::from_be_bytes(buf[4..8].try_into().unwrap()) as usize;
    assert_eq!(declared, 4 + header_len + b"payload".len());
}

#[test]
fn every_prefix_of_a_frame_is_incomplete_and_left_untouched() {
    let full = framed(&sample());
    for cut in 0..full.len() {
        let mut buf = BytesMut::from(&full[..cut]);
        assert_eq!(
            FrameDecoder::default().decode(&mut buf),
            Ok(None),
            "cut at {cut}"
        );
        assert_eq!(&buf[..], &full[..cut]);
    }
}

#[test]
fn two_gib_length_is_refused_from_the_prefix_alone() {
    let mut buf = BytesMut::from(&i32::MAX.to_be_bytes()[..]);
    let err = FrameDecoder::default().decode(&mut buf).unwrap_err();
    assert_eq!(
        err,
        FrameError::TooLarge {
            len: i32::MAX as u64 + 4,
            max: DEFAULT_MAX_FRAME
        }
    );
    assert!(err.is_fatal());
    assert!(
        buf.capacity() < 1024,
        "nothing was allocated for the claimed frame"
    );
}

#[test]
fn frame_cap_counts_the_prefix() {
    let buf = framed(&sample());
    let exact = FrameDecoder::new(buf.len(), DEFAULT_MAX_BODY);
    assert!(exact.decode(&mut buf.clone()).unwrap().is_some());
    let short = FrameDecoder::new(buf.len() - 1, DEFAULT_MAX_BODY);
    assert!(matches!(
        short.decode(&mut buf.clone()),
        Err(FrameError::TooLarge { .. })
    ));
}

#[test]
fn lengths_too_small_for_the_header_int_are_refused() {
    for declared in [i32::MIN, -1, 0, 3] {
        let mut buf = BytesMut::from(&declared.to_be_bytes()[..]);
        let got = FrameDecoder::default().decode(&mut buf);
        assert_eq!(got, Err(FrameError::BadLength(declared)));
    }
}

#[test]
fn header_length_past_the_frame_is_refused() {
    let mut buf = raw_frame("{}", b"");
    buf[4..8].copy_from_slice(&3u32.to_be_bytes());
    let got = FrameDecoder::default().decode(&mut buf);
    assert_eq!(
        got,
        Err(FrameError::HeaderOverrun {
            header_len: 3,
            available: 2
        })
    );
}

#[test]
fn unknown_serialize_type_is_refused() {
    let mut buf = raw_frame("{}", b"");
    buf[4] = 2;
    let got = FrameDecoder::default().decode(&mut buf);
    assert_eq!(got, Err(FrameError::UnknownSerializeType(2)));
}

#[test]
fn bad_header_json_is_fatal_and_leaves_the_buffer() {
    let mut buf = raw_frame("{nope", b"");
    let before = buf.clone();
    let err = FrameDecoder::default().decode(&mut buf).unwrap_err();
    assert!(matches!(
        err,
        FrameError::Header(HeaderDecodeError::Json(_))
    ));
    assert!(err.is_fatal());
    assert_eq!(buf, before);
}

#[test]
fn body_over_max_body_is_reported_with_its_header_and_the_stream_continues() {
    let decoder = FrameDecoder::new(DEFAULT_MAX_FRAME, 16);
    let big = sample().with_body(vec![7u8; 17]);
    let mut buf = framed(&big);
    buf.extend_from_slice(&framed(&sample()));
    let err = decoder.decode(&mut buf).unwrap_err();
    assert!(!err.is_fatal());
    let rejected = err.rejected_command().unwrap();
    assert_eq!((rejected.code, rejected.opaque), (310, 77));
    assert!(rejected.body.is_empty());
    assert!(matches!(
        err,
        FrameError::BodyTooLarge {
            body_len: 17,
            max: 16,
            ..
        }
    ));
    assert_eq!(decoder.decode(&mut buf), Ok(Some(sample())));
}

#[test]
fn body_of_exactly_max_body_is_accepted() {
    let decoder = FrameDecoder::new(DEFAULT_MAX_FRAME, 16);
    let cmd = sample().with_body(vec![1u8; 16]);
    assert_eq!(decoder.decode(&mut framed(&cmd)), Ok(Some(cmd)));
}

#[test]
fn cpp_client_frame_with_trailing_newline_decodes() {
    let header = "{\"code\":310,\"extFields\":{\"a\":\"pg\",\"b\":\"T\",\"d\":4,\"e\":0,\"h\":0,\"k\":\"0\",\"m\":\"0\"},\"flag\":0,\"language\":\"CPP\",\"opaque\":1,\"version\":333}\n";
    let mut buf = raw_frame(header, b"hello");
    let cmd = FrameDecoder::default().decode(&mut buf).unwrap().unwrap();
    assert_eq!((cmd.code, cmd.opaque, cmd.version), (310, 1, 333));
    assert_eq!(cmd.language, LanguageCode::Cpp);
    assert_eq!(cmd.ext_fields.get_str("d"), Some("4"));
    assert_eq!(cmd.ext_fields.require_bool("k"), Ok(false));
    assert_eq!(&cmd.body[..], b"hello");
    assert!(!cmd.is_response() && !cmd.is_oneway());
}

#[test]
fn response_copies_opaque_and_sets_the_response_bit() {
    let req = sample().oneway();
    assert!(req.is_oneway());
    let resp = RemotingCommand::response_to(&req, 13, Some("too big".into()));
    assert_eq!(resp.opaque, 77);
    assert!(resp.is_response() && !resp.is_oneway());
    assert_eq!(
        (resp.language, resp.version),
        (LanguageCode::Java, DEFAULT_VERSION)
    );
    assert!(resp.ext_fields.is_empty() && resp.body.is_empty());
    let text = framed(&resp);
    let header = std::str::from_utf8(&text[8..text.len()]).unwrap();
    assert!(header.contains(r#""extFields":{}"#) && header.contains(r#""language":"JAVA""#));
}

#[test]
fn encode_errors_leave_the_output_unchanged() {
    let mut out = BytesMut::from(&b"xy"[..]);
    let cmd = RemotingCommand::request(70_000, ExtFields::new());
    assert!(matches!(
        encode_binary(&cmd, &mut out),
        Err(EncodeError::Header(_))
    ));
    let huge_key = "k".repeat(MAX_HEADER_LEN);
    let cmd = RemotingCommand::request(1, ExtFields::new().with(huge_key, "v"));
    assert!(matches!(
        encode(&cmd, &mut out),
        Err(EncodeError::HeaderTooLarge(_))
    ));
    assert_eq!(&out[..], b"xy");
}

fn arb_command() -> impl Strategy<Value = RemotingCommand> {
    let ext = proptest::collection::btree_map("[a-zA-Z_]{1,8}", "\\PC{0,12}", 0..6);
    (
        (
            any::<i16>(),
            0u8..14,
            any::<i16>(),
            any::<i32>(),
            any::<i32>(),
        ),
        proptest::option::of("\\PC{1,20}"),
        ext,
        proptest::collection::vec(any::<u8>(), 0..64),
    )
        .prop_map(
            |((code, lang, version, opaque, flag), remark, ext, body)| RemotingCommand {
                code: code.into(),
                language: LanguageCode::from_ordinal(lang).unwrap(),
                version: version.into(),
                opaque,
                flag,
                remark,
                ext_fields: ext.into_iter().collect(),
                body: body.into(),
            },
        )
}

proptest! {
    #[test]
    fn any_command_round_trips_through_both_header_forms(cmd in arb_command()) {
        prop_assert_eq!(FrameDecoder::default().decode(&mut framed(&cmd)), Ok(Some(cmd.clone())));
        let mut buf = BytesMut::new();
        encode_binary(&cmd, &mut buf).unwrap();
        prop_assert_eq!(FrameDecoder::default().decode(&mut buf), Ok(Some(cmd)));
    }

    #[test]
    fn decode_never_panics_on_arbitrary_bytes(raw in proptest::collection::vec(any::<u8>(), 0..512)) {
        let decoder = FrameDecoder::new(1024, 256);
        let mut buf = BytesMut::from(&raw[..]);
        let before = buf.len();
        match decoder.decode(&mut buf) {
            Ok(None) => prop_assert_eq!(buf.len(), before),
            Ok(Some(_)) | Err(FrameError::BodyTooLarge { .. }) => prop_assert!(buf.len() < before),
            Err(_) => {}
        }
    }

    #[test]
    fn decode_never_panics_on_frames_with_arbitrary_headers(
        ser in 0u8..3,
        header in proptest::collection::vec(any::<u8>(), 0..128),
        body in proptest::collection::vec(any::<u8>(), 0..32),
    ) {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&((4 + header.len() + body.len()) as i32).to_be_bytes());
        buf.extend_from_slice(&((u32::from(ser) << 24) | header.len() as u32).to_be_bytes());
        buf.extend_from_slice(&header);
        buf.extend_from_slice(&body);
        let _ = FrameDecoder::new(1024, 16).decode(&mut buf);
    }
}
