//! The log writer: standard error, with control characters that clients can put into logged
//! values escaped.
//!
//! Values from the wire (an access key, a client id, a name-server key, a transaction id) are
//! logged as they came. A newline among them started a line of the sender's choosing, which
//! read like the broker's own (a forged ACL refusal, say: the refusal lines are the audit
//! trail), and an escape sequence reached the terminal of whoever read the log. The formatter
//! hands each event over in one write, ending with its newline; everything before that end is
//! escaped here, whatever field or message it came from.

use std::io::{self, Write};

/// A `MakeWriter` for `tracing_subscriber::fmt`: standard error, escaped.
#[derive(Debug, Clone, Copy)]
pub(crate) struct EscapedStderr {
    /// Colours are on: the formatter's own escape sequences are kept.
    pub(crate) ansi: bool,
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for EscapedStderr {
    type Writer = Escaping;

    fn make_writer(&'a self) -> Self::Writer {
        Escaping { ansi: self.ansi }
    }
}

/// One event's writer.
pub(crate) struct Escaping {
    ansi: bool,
}

impl Write for Escaping {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let body = buf.strip_suffix(b"\n").unwrap_or(buf);
        if body.iter().all(|b| !needs_escape(*b, self.ansi)) {
            io::stderr().lock().write_all(buf)?;
        } else {
            io::stderr().lock().write_all(&escape(buf, self.ansi))?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

/// A control character other than a tab (and, with colours, the formatter's ESC).
fn needs_escape(b: u8, ansi: bool) -> bool {
    matches!(b, 0..=0x1f | 0x7f) && b != b'\t' && !(ansi && b == 0x1b)
}

/// `event` with every control character but tabs, the final newline and (with colours) the
/// formatter's escapes written as `\n`, `\r` or `\xNN`.
pub(crate) fn escape(event: &[u8], ansi: bool) -> Vec<u8> {
    let (body, end) = match event.strip_suffix(b"\n") {
        Some(body) => (body, &b"\n"[..]),
        None => (event, &b""[..]),
    };
    let mut out = Vec::with_capacity(event.len());
    for &b in body {
        match b {
            _ if !needs_escape(b, ansi) => out.push(b),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            _ => out.extend_from_slice(format!("\\x{b:02x}").as_bytes()),
        }
    }
    out.extend_from_slice(end);
    out
}

#[cfg(test)]
mod tests {
    use super::escape;

    #[test]
    fn a_value_cannot_start_a_line_of_its_own_or_reach_the_terminal() {
        let forged = b"WARN ACL: refused access_key=evil\n2026-11-28T13:59:59Z WARN forged\r\x1b[2J\x00 code=310\n";
        assert_eq!(
            escape(forged, false),
            b"WARN ACL: refused access_key=evil\\n2026-11-28T13:59:59Z WARN forged\\r\\x1b[2J\\x00 code=310\n"
        );
        assert_eq!(
            escape(b"\x1b[32m INFO\x1b[0m ok\tdone\n", true),
            b"\x1b[32m INFO\x1b[0m ok\tdone\n",
            "the formatter's colours, tabs and the final newline are kept"
        );
        assert_eq!(
            escape("é ünïcode\n".as_bytes(), false),
            "é ünïcode\n".as_bytes()
        );
    }
}
