//! The command header's two serialisations (`rocketmq-protocol.md` §1.2), and [`LanguageCode`].
//!
//! JSON is read liberally because real clients differ (`compat-notes.md`): C++ omits
//! `serializeTypeCurrentRPC`, ends the header with a newline and sends ext values as JSON numbers
//! and booleans; Go sends `"remark":""`. Anything readable is accepted; only malformed JSON, a
//! non-object header, a non-object `extFields` or an out-of-range number is refused.
//!
//! The binary ("ROCKETMQ") form is decoded because Java clients may be configured to send it,
//! and written by `sluice-client` (cheaper than JSON on both ends) and by a server answering a
//! peer that sent it. A peer that sends JSON gets JSON: the C++ client cannot read a binary
//! header.

use bytes::{BufMut, Bytes, BytesMut};

use super::ext::{ExtFields, MAX_EXT_FIELDS};
use super::frame::RemotingCommand;

/// Fixed part of a binary header: code, language, version, opaque, flag and the two lengths.
pub const BINARY_HEADER_FIXED_LEN: usize = 21;

/// The sender's implementation language. Only informational: no peer acts on it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LanguageCode {
    /// `JAVA` (0): what we send, since pre-4.9.4 Java clients cannot map newer names.
    #[default]
    Java,
    /// `CPP` (1).
    Cpp,
    /// `DOTNET` (2).
    Dotnet,
    /// `PYTHON` (3).
    Python,
    /// `DELPHI` (4).
    Delphi,
    /// `ERLANG` (5).
    Erlang,
    /// `RUBY` (6).
    Ruby,
    /// `OTHER` (7); also what an unknown name or number decodes to.
    Other,
    /// `HTTP` (8).
    Http,
    /// `GO` (9).
    Go,
    /// `PHP` (10).
    Php,
    /// `OMS` (11).
    Oms,
    /// `RUST` (12), added in 4.9.4.
    Rust,
    /// `NODE_JS` (13).
    NodeJs,
}

const LANGUAGES: [(LanguageCode, &str); 14] = [
    (LanguageCode::Java, "JAVA"),
    (LanguageCode::Cpp, "CPP"),
    (LanguageCode::Dotnet, "DOTNET"),
    (LanguageCode::Python, "PYTHON"),
    (LanguageCode::Delphi, "DELPHI"),
    (LanguageCode::Erlang, "ERLANG"),
    (LanguageCode::Ruby, "RUBY"),
    (LanguageCode::Other, "OTHER"),
    (LanguageCode::Http, "HTTP"),
    (LanguageCode::Go, "GO"),
    (LanguageCode::Php, "PHP"),
    (LanguageCode::Oms, "OMS"),
    (LanguageCode::Rust, "RUST"),
    (LanguageCode::NodeJs, "NODE_JS"),
];

impl LanguageCode {
    /// The Java enum name, as written in JSON headers.
    pub fn name(self) -> &'static str {
        LANGUAGES[self.ordinal() as usize].1
    }

    /// The Java enum ordinal, as written in binary headers.
    pub fn ordinal(self) -> u8 {
        LANGUAGES.iter().position(|(l, _)| *l == self).unwrap_or(7) as u8
    }

    /// The language with this name (exact, then case-insensitive), if known.
    pub fn from_name(name: &str) -> Option<Self> {
        LANGUAGES
            .iter()
            .find(|(_, n)| n.eq_ignore_ascii_case(name))
            .map(|(l, _)| *l)
    }

    /// The language with this ordinal, if known.
    pub fn from_ordinal(ordinal: u8) -> Option<Self> {
        LANGUAGES.get(usize::from(ordinal)).map(|(l, _)| *l)
    }
}

/// Why a command header could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HeaderDecodeError {
    /// The JSON header does not parse.
    #[error("header is not valid JSON: {0}")]
    Json(String),
    /// The JSON header is not an object.
    #[error("header JSON is not an object")]
    NotObject,
    /// A field has a type or value that cannot be read.
    #[error("header field {0} has an unreadable type or value")]
    Field(&'static str),
    /// The binary header ends inside a field.
    #[error("binary header truncated in {0}")]
    Truncated(&'static str),
    /// A binary length field is negative.
    #[error("binary header has a negative {0} length")]
    NegativeLength(&'static str),
    /// The header has more ext fields than [`crate::remoting::ext::MAX_EXT_FIELDS`].
    #[error("header has more than {0} ext fields")]
    TooManyExtFields(usize),
}

/// Why a command header could not be written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HeaderEncodeError {
    /// A value does not fit its binary field (`code` and `version` are int16 there).
    #[error("{field} value {value} does not fit the binary header")]
    OutOfRange {
        /// Which field.
        field: &'static str,
        /// Its value.
        value: i64,
    },
}

/// Parses a JSON header into a command with an empty body (see `json_in`).
pub fn decode_json_header(raw: &[u8]) -> Result<RemotingCommand, HeaderDecodeError> {
    json_in::decode(raw)
}

/// The JSON header as Java writes it: keys sorted, nulls left out.
#[derive(serde::Serialize)]
struct JsonHeaderOut<'a> {
    code: i32,
    #[serde(rename = "extFields")]
    ext_fields: &'a ExtFields,
    flag: i32,
    language: &'static str,
    opaque: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    remark: Option<&'a str>,
    #[serde(rename = "serializeTypeCurrentRPC")]
    serialize_type: &'static str,
    version: i32,
}

/// Appends the JSON header of `cmd` to `out`: every ext value a JSON string, `language` a name,
/// `extFields` always an object (C++ clients crash without one), no whitespace.
pub fn encode_json_header(cmd: &RemotingCommand, out: &mut BytesMut) {
    let header = JsonHeaderOut {
        code: cmd.code,
        ext_fields: &cmd.ext_fields,
        flag: cmd.flag,
        language: cmd.language.name(),
        opaque: cmd.opaque,
        remark: cmd.remark.as_deref(),
        serialize_type: "JSON",
        version: cmd.version,
    };
    // Serialising integers, strings and a string map cannot fail, and a BytesMut grows as needed.
    serde_json::to_writer(out.writer(), &header).expect("JSON header serialisation cannot fail");
}

/// Appends the binary header of `cmd` to `out`, as Java's `RocketMQSerializable` writes it. Only
/// for a peer known to read it (see the module docs). On error `out` may hold part of a header:
/// the caller truncates.
pub fn encode_binary_header(
    cmd: &RemotingCommand,
    out: &mut BytesMut,
) -> Result<(), HeaderEncodeError> {
    let short = |field: &'static str, v: i32| {
        i16::try_from(v).map_err(|_| HeaderEncodeError::OutOfRange {
            field,
            value: v.into(),
        })
    };
    let (code, version) = (short("code", cmd.code)?, short("version", cmd.version)?);
    let remark = cmd.remark.as_deref().unwrap_or("");
    out.put_i16(code);
    out.put_u8(cmd.language.ordinal());
    out.put_i16(version);
    out.put_i32(cmd.opaque);
    out.put_i32(cmd.flag);
    out.put_i32(len_i32("remark length", remark.len())?);
    out.put_slice(remark.as_bytes());
    // The ext fields are written in place; their length is filled in after.
    let len_at = out.len();
    out.put_i32(0);
    for (k, v) in cmd.ext_fields.iter() {
        let key_len = i16::try_from(k.len()).map_err(|_| HeaderEncodeError::OutOfRange {
            field: "ext key length",
            value: k.len() as i64,
        })?;
        out.put_i16(key_len);
        out.put_slice(k.as_bytes());
        out.put_i32(len_i32("ext value length", v.len())?);
        out.put_slice(v.as_bytes());
    }
    let ext_len = len_i32("ext length", out.len() - len_at - 4)?;
    out[len_at..len_at + 4].copy_from_slice(&ext_len.to_be_bytes());
    Ok(())
}

fn len_i32(field: &'static str, len: usize) -> Result<i32, HeaderEncodeError> {
    i32::try_from(len).map_err(|_| HeaderEncodeError::OutOfRange {
        field,
        value: len as i64,
    })
}

/// Parses a binary header into a command with an empty body. A zero-length remark is absent,
/// as in Java; bytes that are not UTF-8 are replaced rather than refused.
pub fn decode_binary_header(raw: &[u8]) -> Result<RemotingCommand, HeaderDecodeError> {
    let mut r = Cursor { buf: raw, pos: 0 };
    let code = i32::from(r.i16("code")?);
    let language = LanguageCode::from_ordinal(r.u8("language")?).unwrap_or(LanguageCode::Other);
    let version = i32::from(r.i16("version")?);
    let opaque = r.i32("opaque")?;
    let flag = r.i32("flag")?;
    let remark_len = r.len_i32("remark")?;
    let remark = r.take(remark_len, "remark")?;
    let remark = (!remark.is_empty()).then(|| crate::text::lossy_utf8(remark).into_owned());
    let ext_len = r.len_i32("ext")?;
    let ext_fields = decode_binary_ext(r.take(ext_len, "ext")?)?;
    Ok(RemotingCommand {
        code,
        language,
        version,
        opaque,
        flag,
        remark,
        ext_fields,
        body: Bytes::new(),
    })
}

fn decode_binary_ext(raw: &[u8]) -> Result<ExtFields, HeaderDecodeError> {
    let mut r = Cursor { buf: raw, pos: 0 };
    let mut ext = ExtFields::with_capacity(16);
    while r.pos < raw.len() {
        let key_len = r.i16("ext key length")?;
        let key_len =
            usize::try_from(key_len).map_err(|_| HeaderDecodeError::NegativeLength("ext key"))?;
        let key = r.take(key_len, "ext key")?;
        let val_len = r.len_i32("ext value")?;
        let val = r.take(val_len, "ext value")?;
        if ext.len() >= MAX_EXT_FIELDS {
            return Err(HeaderDecodeError::TooManyExtFields(MAX_EXT_FIELDS));
        }
        ext.insert_decoded(
            &crate::text::lossy_utf8(key),
            crate::text::lossy_utf8(val).into_owned(),
        );
    }
    Ok(ext)
}

/// A bounds-checked big-endian reader over a header.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], HeaderDecodeError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.buf.len())
            .ok_or(HeaderDecodeError::Truncated(what))?;
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }
    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], HeaderDecodeError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, what)?);
        Ok(a)
    }
    fn u8(&mut self, what: &'static str) -> Result<u8, HeaderDecodeError> {
        Ok(self.array::<1>(what)?[0])
    }
    fn i16(&mut self, what: &'static str) -> Result<i16, HeaderDecodeError> {
        Ok(i16::from_be_bytes(self.array(what)?))
    }
    fn i32(&mut self, what: &'static str) -> Result<i32, HeaderDecodeError> {
        Ok(i32::from_be_bytes(self.array(what)?))
    }
    fn len_i32(&mut self, what: &'static str) -> Result<usize, HeaderDecodeError> {
        let n = self.i32(what)?;
        usize::try_from(n).map_err(|_| HeaderDecodeError::NegativeLength(what))
    }
}

mod json_in;
#[cfg(test)]
mod tests;
