//! The remoting frame decoder, as a connection feeds it: arbitrary bytes from a peer.
//!
//! Oracles (practices §3 test 11):
//! - `Ok(None)` leaves the buffer untouched; a decoded frame (or a refused oversize body)
//!   consumes exactly the length its prefix declared.
//! - Fed in two pieces, the decoder yields the same commands as fed at once (sans-I/O: where
//!   the reads split the stream must not matter).
//! - A decoded command encodes again and decodes to itself.
//! - The typed send header and the heartbeat body never panic on what the header carried.

use bytes::BytesMut;
use sluice_protocol::remoting::body::{decode_json, heartbeat::HeartbeatData};
use sluice_protocol::remoting::custom::SendMessageRequestHeader;
use sluice_protocol::{FrameDecoder, FrameError, RemotingCommand};

/// Small caps so that the oversize paths are reached by small inputs.
const DECODER: FrameDecoder = FrameDecoder {
    max_frame: 8 * 1024,
    max_body: 1024,
};

/// At most this many frames per input: every loop is bounded.
const MAX_FRAMES: usize = 256;

/// One input: panics when an oracle above is violated.
pub fn run(data: &[u8]) {
    let whole = decode_stream(data, data.len());
    let split_at = data.first().map_or(0, |b| *b as usize % (data.len() + 1));
    let pieces = decode_stream(data, split_at);
    assert_eq!(
        whole, pieces,
        "splitting the input at {split_at} changed the result"
    );
    for cmd in whole.iter().filter_map(|r| r.as_ref().ok()) {
        check_round_trip(cmd);
        let _ = SendMessageRequestHeader::from_ext(&cmd.ext_fields);
        let _ = decode_json::<HeartbeatData>(&cmd.body);
    }
}

/// Decodes frames until the input runs out or an error is fatal, delivering the bytes in two
/// reads (the first `first_read` bytes, then the rest), as a socket might.
fn decode_stream(data: &[u8], first_read: usize) -> Vec<Result<RemotingCommand, String>> {
    let mut buf = BytesMut::from(&data[..first_read]);
    let mut rest = &data[first_read..];
    let mut out = Vec::new();
    for _ in 0..MAX_FRAMES {
        let before = buf.clone();
        let declared = DECODER.frame_len(&buf);
        match DECODER.decode(&mut buf) {
            Ok(Some(cmd)) => {
                assert_consumed(&before, &buf, declared);
                out.push(Ok(cmd));
            }
            Ok(None) if rest.is_empty() => break,
            Ok(None) => {
                assert_eq!(before, buf, "Ok(None) must leave the buffer untouched");
                buf.extend_from_slice(rest);
                rest = &[];
            }
            Err(e @ FrameError::BodyTooLarge { .. }) => {
                assert_consumed(&before, &buf, declared);
                out.push(Err(e.to_string()));
            }
            Err(e) => {
                assert!(e.is_fatal());
                out.push(Err(e.to_string()));
                break;
            }
        }
    }
    out
}

/// A frame was taken off the front: exactly the declared length, the rest unchanged.
fn assert_consumed(
    before: &BytesMut,
    after: &BytesMut,
    declared: Result<Option<usize>, FrameError>,
) {
    let len = declared
        .expect("a decoded frame had a valid length")
        .expect("a decoded frame had its prefix");
    assert_eq!(
        before.len() - after.len(),
        len,
        "consumed != declared length"
    );
    assert_eq!(
        &before[len..],
        &after[..],
        "the bytes after the frame changed"
    );
}

/// `decode(encode(cmd)) == cmd` for every command the decoder produced.
fn check_round_trip(cmd: &RemotingCommand) {
    let mut out = BytesMut::new();
    if cmd.encode(&mut out).is_err() {
        return; // a header too large for the 24-bit field cannot be sent back; fine
    }
    let big = FrameDecoder::new(usize::MAX >> 1, usize::MAX >> 1);
    let again = big
        .decode(&mut out)
        .expect("our own encoding decodes")
        .expect("our own encoding is complete");
    assert_eq!(&again, cmd, "decode(encode(x)) != x");
    assert!(out.is_empty());
}
