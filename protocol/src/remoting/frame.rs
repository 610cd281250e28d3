//! Frames and the command they carry (`rocketmq-protocol.md` §1.1).
//!
//! ```text
//! length:i32 | serializeType:u8 headerLen:u24 | header | body
//! length = 4 + headerLen + bodyLen   (it does not count its own 4 bytes)
//! ```
//!
//! [`FrameDecoder::decode`] is two-phase: `Ok(None)` means "not all here yet" and leaves the buffer
//! untouched; `Ok(Some)` consumes exactly one frame. The declared length is checked against the
//! frame cap as soon as its 4 bytes arrive, before anything is allocated for it.
//!
//! # Oversize bodies
//!
//! Two limits apply. A frame over `max_frame` is [`FrameError::TooLarge`]: the stream cannot be
//! trusted any more and the connection must close, as Netty's decoder does. A body over `max_body`
//! inside a frame that fits is a client sending a message that is too big, which Java answers
//! with `MESSAGE_ILLEGAL` on a connection that stays open. The decoder reports it as
//! [`FrameError::BodyTooLarge`]: it *consumes* the frame and carries the decoded header (opaque
//! and code included, body empty) so the caller can reply and keep reading. It is an error rather
//! than a marker on a command so that no caller can mistake an emptied body for the real one;
//! [`FrameError::is_fatal`] tells the two kinds apart. The decoder still waits for the whole
//! frame (at most `max_frame` bytes) before reporting it, so that it can skip it cleanly.

use bytes::{Bytes, BytesMut};

use super::ext::ExtFields;
use super::header::{
    decode_binary_header, decode_json_header, encode_binary_header, encode_json_header,
    HeaderDecodeError, HeaderEncodeError, LanguageCode,
};

/// Default cap on a whole frame including its length prefix: Java's `frameMaxLength`, 16 MiB.
pub const DEFAULT_MAX_FRAME: usize = 16 * 1024 * 1024;
/// Default cap on a body: Java's `maxMessageSize`, 4 MiB.
pub const DEFAULT_MAX_BODY: usize = 4 * 1024 * 1024;
/// Largest header the 24-bit length can describe.
pub const MAX_HEADER_LEN: usize = 0x00FF_FFFF;
/// The `version` we send: `V4_9_4`. Clients gate features on it, so it must look real.
pub const DEFAULT_VERSION: i32 = 401;

/// Bits of [`RemotingCommand::flag`].
pub mod flag {
    /// Set on responses, clear on requests.
    pub const RESPONSE: i32 = 0x1;
    /// Set on one-way requests, which get no response. C++ never sets it on the wire.
    pub const ONEWAY: i32 = 0x2;
}

/// How a frame's header is serialised: the top byte of the second int.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SerializeType {
    /// 0: JSON, the default, and what a peer that sent JSON is answered in.
    Json,
    /// 1: RocketMQ's binary layout.
    RocketMq,
}

impl SerializeType {
    /// The type with this code, if known.
    pub fn from_code(code: u8) -> Option<Self> {
        match code {
            0 => Some(Self::Json),
            1 => Some(Self::RocketMq),
            _ => None,
        }
    }

    /// The code written in the frame.
    pub fn code(self) -> u8 {
        match self {
            Self::Json => 0,
            Self::RocketMq => 1,
        }
    }
}

/// One request or response.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RemotingCommand {
    /// Request code for a request, response code for a response (see [`super::codes`]).
    pub code: i32,
    /// The sender's language; informational only.
    pub language: LanguageCode,
    /// The sender's MQVersion ordinal.
    pub version: i32,
    /// Request id; a response copies its request's.
    pub opaque: i32,
    /// [`flag`] bits.
    pub flag: i32,
    /// Error text on failed responses.
    pub remark: Option<String>,
    /// The custom header.
    pub ext_fields: ExtFields,
    /// Opaque payload; the code says what it holds.
    pub body: Bytes,
}

impl RemotingCommand {
    /// A request with our language and version, opaque 0 and no body.
    pub fn request(code: i32, ext_fields: ExtFields) -> Self {
        Self {
            code,
            version: DEFAULT_VERSION,
            ext_fields,
            ..Self::default()
        }
    }

    /// The response to `request`: same opaque, response bit set, language `JAVA`, version 401,
    /// an empty ext-field map (always written as `{}`) and no body.
    pub fn response_to(request: &RemotingCommand, code: i32, remark: Option<String>) -> Self {
        Self {
            code,
            version: DEFAULT_VERSION,
            opaque: request.opaque,
            flag: flag::RESPONSE,
            remark,
            ..Self::default()
        }
    }

    /// Sets the opaque.
    #[must_use]
    pub fn with_opaque(mut self, opaque: i32) -> Self {
        self.opaque = opaque;
        self
    }

    /// Sets the ext fields.
    #[must_use]
    pub fn with_ext(mut self, ext_fields: ExtFields) -> Self {
        self.ext_fields = ext_fields;
        self
    }

    /// Sets the body.
    #[must_use]
    pub fn with_body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self
    }

    /// Sets the one-way bit.
    #[must_use]
    pub fn oneway(mut self) -> Self {
        self.flag |= flag::ONEWAY;
        self
    }

    /// True for a response (flag bit 0).
    pub fn is_response(&self) -> bool {
        self.flag & flag::RESPONSE != 0
    }

    /// True for a one-way request (flag bit 1), which must not be answered.
    pub fn is_oneway(&self) -> bool {
        self.flag & flag::ONEWAY != 0
    }

    /// Appends this command as a frame with a JSON header; see [`encode`].
    pub fn encode(&self, out: &mut BytesMut) -> Result<(), EncodeError> {
        encode(self, out)
    }
}

/// Why bytes could not be read as a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The declared frame (prefix included) exceeds the cap. Fatal: close the connection.
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    TooLarge {
        /// Declared length plus the 4-byte prefix.
        len: u64,
        /// The cap.
        max: usize,
    },
    /// The length field is negative or too small to hold the header-length int. Fatal.
    #[error("frame length {0} is invalid")]
    BadLength(i32),
    /// The header length runs past the frame. Fatal.
    #[error("header length {header_len} exceeds the frame's {available} bytes")]
    HeaderOverrun {
        /// Declared header length.
        header_len: usize,
        /// Bytes after the header-length int.
        available: usize,
    },
    /// The serialize-type byte is neither JSON nor ROCKETMQ. Fatal.
    #[error("unknown header serialize type {0}")]
    UnknownSerializeType(u8),
    /// The header cannot be read. Fatal.
    #[error(transparent)]
    Header(#[from] HeaderDecodeError),
    /// The body exceeds `max_body` in a frame that fits. Not fatal: the frame was consumed and
    /// `command` holds its header with an empty body, so the caller can answer
    /// `MESSAGE_ILLEGAL` (unless it is one-way) and keep reading.
    #[error("body of {body_len} bytes exceeds the {max}-byte limit")]
    BodyTooLarge {
        /// The decoded header, with an empty body.
        command: Box<RemotingCommand>,
        /// The body length the frame carried.
        body_len: usize,
        /// The cap.
        max: usize,
    },
}

impl FrameError {
    /// True when the connection must be closed: every error except [`FrameError::BodyTooLarge`].
    pub fn is_fatal(&self) -> bool {
        !matches!(self, Self::BodyTooLarge { .. })
    }

    /// The command whose body was refused, for [`FrameError::BodyTooLarge`].
    pub fn rejected_command(&self) -> Option<&RemotingCommand> {
        match self {
            Self::BodyTooLarge { command, .. } => Some(command),
            _ => None,
        }
    }
}

/// Why a command could not be written as a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The header is longer than its 24-bit length allows.
    #[error("header of {0} bytes exceeds the 24-bit length field")]
    HeaderTooLarge(usize),
    /// The frame is longer than its int32 length allows.
    #[error("frame of {0} bytes exceeds the int32 length field")]
    FrameTooLarge(usize),
    /// A field does not fit the binary header.
    #[error(transparent)]
    Header(#[from] HeaderEncodeError),
}

/// Splits frames off a byte stream. Holds only limits, so one value can serve every connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameDecoder {
    /// Cap on a whole frame, length prefix included (Netty counts it too).
    pub max_frame: usize,
    /// Cap on a body; see [`FrameError::BodyTooLarge`]. A name server, whose registration bodies
    /// can be large, may set it to `max_frame`.
    pub max_body: usize,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self {
            max_frame: DEFAULT_MAX_FRAME,
            max_body: DEFAULT_MAX_BODY,
        }
    }
}

impl FrameDecoder {
    /// A decoder with these limits.
    pub fn new(max_frame: usize, max_body: usize) -> Self {
        Self {
            max_frame,
            max_body,
        }
    }

    /// The total length (prefix included) of the frame at the start of `buf`, once its 4-byte
    /// prefix is there; checked against the cap, so a caller may reserve that much.
    pub fn frame_len(&self, buf: &[u8]) -> Result<Option<usize>, FrameError> {
        let Some(prefix) = buf.first_chunk::<4>() else {
            return Ok(None);
        };
        let declared = i32::from_be_bytes(*prefix);
        if declared < 4 {
            return Err(FrameError::BadLength(declared));
        }
        let total = declared as u64 + 4;
        if total > self.max_frame as u64 {
            return Err(FrameError::TooLarge {
                len: total,
                max: self.max_frame,
            });
        }
        Ok(Some(total as usize))
    }

    /// Decodes one frame from the front of `buf`. `Ok(None)` leaves `buf` untouched; `Ok(Some)`
    /// and [`FrameError::BodyTooLarge`] consume exactly one frame; other errors are fatal.
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<RemotingCommand>, FrameError> {
        let Some(total) = self.frame_len(buf)? else {
            return Ok(None);
        };
        if buf.len() < total {
            return Ok(None);
        }
        let type_and_len = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]);
        let header_len = (type_and_len & MAX_HEADER_LEN as u32) as usize;
        let available = total - 8;
        if header_len > available {
            return Err(FrameError::HeaderOverrun {
                header_len,
                available,
            });
        }
        let mut command = decode_header((type_and_len >> 24) as u8, &buf[8..8 + header_len])?;
        let body_len = available - header_len;
        let frame = buf.split_to(total);
        if body_len > self.max_body {
            let command = Box::new(command);
            return Err(FrameError::BodyTooLarge {
                command,
                body_len,
                max: self.max_body,
            });
        }
        command.body = frame.freeze().slice(8 + header_len..);
        Ok(Some(command))
    }
}

fn decode_header(serialize_type: u8, raw: &[u8]) -> Result<RemotingCommand, FrameError> {
    match SerializeType::from_code(serialize_type) {
        Some(SerializeType::Json) => Ok(decode_json_header(raw)?),
        Some(SerializeType::RocketMq) => Ok(decode_binary_header(raw)?),
        None => Err(FrameError::UnknownSerializeType(serialize_type)),
    }
}

/// Appends `cmd` to `out` as a frame with a JSON header, the form every client reads (C++
/// clients read no other). On error `out` is left as it was.
pub fn encode(cmd: &RemotingCommand, out: &mut BytesMut) -> Result<(), EncodeError> {
    let start = out.len();
    out.extend_from_slice(&[0; 8]);
    encode_json_header(cmd, out);
    finish_frame(cmd, out, start, SerializeType::Json)
}

/// Appends `cmd` as a frame with a binary header, for a peer that reads it (one that sent it,
/// or a server when the client is configured to). On error `out` is left as it was.
pub fn encode_binary(cmd: &RemotingCommand, out: &mut BytesMut) -> Result<(), EncodeError> {
    let start = out.len();
    out.extend_from_slice(&[0; 8]);
    if let Err(e) = encode_binary_header(cmd, out) {
        out.truncate(start);
        return Err(e.into());
    }
    finish_frame(cmd, out, start, SerializeType::RocketMq)
}

/// Fills in the two leading ints once the header is written, then appends the body.
fn finish_frame(
    cmd: &RemotingCommand,
    out: &mut BytesMut,
    start: usize,
    serialize_type: SerializeType,
) -> Result<(), EncodeError> {
    let header_len = out.len() - start - 8;
    let len = 4 + header_len as u64 + cmd.body.len() as u64;
    let checked = if header_len > MAX_HEADER_LEN {
        Err(EncodeError::HeaderTooLarge(header_len))
    } else {
        i32::try_from(len).map_err(|_| EncodeError::FrameTooLarge(len as usize))
    };
    let len = match checked {
        Ok(len) => len,
        Err(e) => {
            out.truncate(start);
            return Err(e);
        }
    };
    let type_and_len = u32::from(serialize_type.code()) << 24 | header_len as u32;
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
    out[start + 4..start + 8].copy_from_slice(&type_and_len.to_be_bytes());
    out.extend_from_slice(&cmd.body);
    Ok(())
}

#[cfg(test)]
mod tests;
