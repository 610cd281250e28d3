//! Java's `String.hashCode`, computed over UTF-16 code units with int32 wrap-around.
//!
//! RocketMQ uses it for consume-queue tag codes and subscription code sets; brokers filter by
//! comparing these numbers, so any other hash would silently drop messages.

/// `s[0]*31^(n-1) + ... + s[n-1]` over the UTF-16 code units of `s`, wrapping like Java's `int`.
pub fn java_hash(s: &str) -> i32 {
    s.encode_utf16().fold(0i32, |h, unit| {
        h.wrapping_mul(31).wrapping_add(i32::from(unit))
    })
}

#[cfg(test)]
mod tests {
    use super::java_hash;

    #[test]
    fn matches_known_java_values() {
        assert_eq!(java_hash(""), 0);
        assert_eq!(java_hash("A"), 65);
        assert_eq!(java_hash("TagA"), 2_598_919);
        // Overflows int32: "polygenelubricants".hashCode() == Integer.MIN_VALUE in Java.
        assert_eq!(java_hash("polygenelubricants"), i32::MIN);
    }

    #[test]
    fn hashes_utf16_code_units_not_bytes() {
        // U+1F600 is a surrogate pair in UTF-16: 0xD83D, 0xDE00.
        let expected = 0xD83Di32.wrapping_mul(31).wrapping_add(0xDE00);
        assert_eq!(java_hash("\u{1F600}"), expected);
    }
}
