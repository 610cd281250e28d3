//! The deterministic workload shared by tests and the crash child: message `seq` always has
//! the same body and properties, so a reader can check any record byte for byte.

use sluice_store::MessageInput;

/// A deterministic body for message `seq`: its length varies, its content names it.
pub fn body_for(seq: u64) -> Vec<u8> {
    let len = 1 + (seq.wrapping_mul(2_654_435_761) % 1500) as usize;
    let mut b = format!("msg-{seq}-").into_bytes();
    while b.len() < len {
        b.push(b'a' + (b.len() as u64 % 26) as u8);
    }
    b.truncate(len.max(8));
    b
}

pub fn message(topic: &str, queue_id: i32, seq: u64) -> MessageInput {
    let mut m = MessageInput::new(topic, queue_id, body_for(seq));
    m.properties = format!(
        "KEYS\u{1}key-{seq} shared\u{2}TAGS\u{1}tag{}\u{2}UNIQ_KEY\u{1}U{seq:030}\u{2}",
        seq % 3
    );
    m
}
