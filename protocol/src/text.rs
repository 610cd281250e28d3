//! Bytes from the wire as text.

use std::borrow::Cow;

/// `raw` as UTF-8, invalid sequences replaced (U+FFFD), as `String::from_utf8_lossy` does, but
/// checked with `str::from_utf8` first: that check runs over whole words of ASCII at a time,
/// while the lossy decoder steps byte by byte, and nearly everything a client sends (header
/// fields, properties, keys) is valid. Only invalid input pays for the lossy pass.
pub fn lossy_utf8(raw: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(raw) {
        Ok(s) => Cow::Borrowed(s),
        Err(_) => String::from_utf8_lossy(raw),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_text_is_borrowed_and_invalid_bytes_are_replaced() {
        assert!(matches!(
            lossy_utf8(b"TAGS\x01a"),
            Cow::Borrowed("TAGS\x01a")
        ));
        assert_eq!(lossy_utf8(b"a\xffb"), "a\u{fffd}b");
        assert_eq!(lossy_utf8(b"\xe2\x82"), "\u{fffd}");
    }
}
