//! The properties string (`key\x01value\x02…`): it arrives in every send header and is stored
//! in every record.
//!
//! Oracles: decoding is lenient (never fails), encoding a decoded set and decoding it again
//! changes nothing, and the allocation-free `find_property` used on the dispatch path agrees
//! with the full decoder for every key it found.

use sluice_protocol::message::find_property;
use sluice_protocol::Properties;

/// Records cap properties at 32 767 bytes; longer inputs say nothing new.
const MAX_LEN: usize = 32_767;

/// One input: panics when an oracle above is violated.
pub fn run(data: &[u8]) {
    let data = &data[..data.len().min(MAX_LEN)];
    let props = Properties::decode(data);
    let encoded = props.encode();
    assert_eq!(encoded.len(), props.encoded_len());
    assert_eq!(
        Properties::decode(encoded.as_bytes()),
        props,
        "decode is not idempotent"
    );
    let _ = props.user_keys().count();
    if std::str::from_utf8(data).is_ok() {
        for (k, v) in props.iter() {
            assert_eq!(find_property(data, k), Some(v.as_bytes()), "key {k:?}");
        }
    }
}
