use super::*;
use proptest::prelude::*;

fn sample_header() -> RecordHeader {
    RecordHeader {
        queue_id: 3,
        flag: 7,
        queue_offset: 11,
        physical_offset: 4096,
        sys_flag: sysflag::TRANSACTION_COMMIT,
        born_timestamp: 1_700_000_000_000,
        born_host: "10.0.0.5:51234".parse().unwrap(),
        store_timestamp: 1_700_000_000_123,
        store_host: "127.0.0.1:10911".parse().unwrap(),
        reconsume_times: 2,
        prepared_transaction_offset: 1024,
    }
}

#[test]
fn ipv4_v1_record_has_91_bytes_of_overhead() {
    let mut out = Vec::new();
    let n = encode_record(&sample_header(), b"hello", "T", b"A\x01b\x02", &mut out).unwrap();
    assert_eq!(n, 91 + 5 + 1 + 4);
    assert_eq!(out.len(), n);
    assert_eq!(&out[4..8], &MAGIC_V1.to_be_bytes());
}

#[test]
fn encode_then_parse_round_trips() {
    let mut out = Vec::new();
    let h = sample_header();
    encode_record(&h, b"body", "TopicA", b"TAGS\x01x\x02", &mut out).unwrap();
    let v = RecordView::parse(&out, 1 << 20).unwrap();
    assert_eq!(v.header, h);
    assert_eq!(v.body, b"body");
    assert_eq!(v.topic, "TopicA");
    assert_eq!(v.properties, b"TAGS\x01x\x02");
    v.verify_body_crc().unwrap();
    assert_eq!(v.transaction_type(), sysflag::TRANSACTION_COMMIT);
}

#[test]
fn long_topic_uses_v2_magic_and_ipv6_sets_flags() {
    let mut h = sample_header();
    h.born_host = "[::1]:9".parse().unwrap();
    h.store_host = "[fe80::1]:10911".parse().unwrap();
    let topic = "%RETRY%".to_string() + &"g".repeat(130);
    let mut out = Vec::new();
    encode_record(&h, b"", &topic, b"", &mut out).unwrap();
    assert_eq!(&out[4..8], &MAGIC_V2.to_be_bytes());
    let v = RecordView::parse(&out, 1 << 20).unwrap();
    assert_eq!(v.topic, topic);
    assert_ne!(v.header.sys_flag & sysflag::BORNHOST_V6, 0);
    assert_ne!(v.header.sys_flag & sysflag::STOREHOST_V6, 0);
    assert_eq!(v.header.born_host, h.born_host);
}

#[test]
fn patch_store_fields_rewrites_offsets_and_timestamp() {
    let mut out = Vec::new();
    encode_record(&RecordHeader::default(), b"x", "T", b"", &mut out).unwrap();
    patch_store_fields(&mut out, 5, 777, 999);
    let v = RecordView::parse(&out, 1 << 20).unwrap();
    assert_eq!((v.header.queue_offset, v.header.physical_offset), (5, 777));
    assert_eq!(v.header.store_timestamp, 999);
}

#[test]
fn parse_separates_incomplete_from_invalid() {
    let mut out = Vec::new();
    encode_record(&sample_header(), b"abc", "T", b"", &mut out).unwrap();
    let cut = &out[..out.len() - 1];
    assert!(matches!(
        RecordView::parse(cut, 1 << 20),
        Err(RecordError::Incomplete { .. })
    ));
    assert!(matches!(
        RecordView::parse(&out[..3], 1 << 20),
        Err(RecordError::Incomplete { .. })
    ));
    let zeros = vec![0u8; 200];
    assert_eq!(
        RecordView::parse(&zeros, 1 << 20),
        Err(RecordError::BadLength(0))
    );
    let mut bad_magic = out.clone();
    bad_magic[5] ^= 0xFF;
    assert!(matches!(
        RecordView::parse(&bad_magic, 1 << 20),
        Err(RecordError::BadMagic(_))
    ));
    assert!(matches!(
        RecordView::parse(&out, 50),
        Err(RecordError::BadLength(_))
    ));
}

#[test]
fn inner_lengths_must_add_up() {
    let mut out = Vec::new();
    encode_record(&RecordHeader::default(), b"abcd", "T", b"", &mut out).unwrap();
    // Claim a body one byte shorter: the topic and properties no longer line up with TOTALSIZE.
    let body_len_pos = 84 - 4 + 4;
    out[body_len_pos..body_len_pos + 4].copy_from_slice(&3i32.to_be_bytes());
    assert!(RecordView::parse(&out, 1 << 20).is_err());
}

#[test]
fn refuses_oversized_properties() {
    let props = vec![b'a'; MAX_PROPERTIES_LEN + 1];
    let err = encode_record(&RecordHeader::default(), b"", "T", &props, &mut Vec::new());
    assert!(matches!(
        err,
        Err(RecordError::TooLong {
            field: "properties",
            ..
        })
    ));
}

#[test]
fn body_crc_is_masked_to_31_bits() {
    assert_eq!(body_crc(b"123456789"), 0xCBF4_3926 & 0x7FFF_FFFF);
}

proptest! {
    #[test]
    fn any_record_round_trips(
        body in proptest::collection::vec(any::<u8>(), 0..2048),
        topic in "[A-Za-z0-9_%-]{1,200}",
        props in proptest::collection::vec(1u8..=255, 0..300),
        qid in any::<i32>(), qoff in any::<i64>(), phys in any::<i64>(), ts in any::<i64>(),
    ) {
        let h = RecordHeader { queue_id: qid, queue_offset: qoff, physical_offset: phys,
            store_timestamp: ts, ..sample_header() };
        let mut out = Vec::new();
        encode_record(&h, &body, &topic, &props, &mut out).unwrap();
        let v = RecordView::parse(&out, usize::MAX).unwrap();
        prop_assert_eq!(&v.header, &h);
        prop_assert_eq!(v.body, &body[..]);
        prop_assert_eq!(v.topic, topic.as_str());
        prop_assert_eq!(v.properties, &props[..]);
    }

    #[test]
    fn parse_never_panics_on_garbage(buf in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = RecordView::parse(&buf, 1 << 20);
    }
}

/// A complete record whose body length runs past its TOTALSIZE was reported `Incomplete`,
/// which says more input may complete it; all its bytes were at hand, so it is corrupt.
#[test]
fn a_field_running_past_totalsize_in_a_complete_record_is_inconsistent() {
    let mut out = Vec::new();
    encode_record(&sample_header(), b"body", "TopicA", b"", &mut out).unwrap();
    assert_eq!(
        &out[84..88],
        &4i32.to_be_bytes(),
        "BODYLEN of an IPv4 record"
    );
    let total = out.len() as i32;
    out[84..88].copy_from_slice(&total.to_be_bytes());
    assert!(matches!(
        RecordView::parse(&out, 1 << 20),
        Err(RecordError::Inconsistent(_))
    ));
    let cut = &out[..out.len() - 1];
    assert!(
        matches!(
            RecordView::parse(cut, 1 << 20),
            Err(RecordError::Incomplete { .. })
        ),
        "a record cut short is still incomplete"
    );
}
