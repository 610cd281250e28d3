//! The HTTP facade's JSON request bodies (produce, batch, transactional send, check answers,
//! receive, ack, nack, visibility, reschedule, replay), parsed as the handlers parse them and
//! checked by the handlers' own validation. Oracle: no panic, whatever a client posts.
/// One input: panics when an oracle above is violated.
pub fn run(data: &[u8]) {
    sluice_http::fuzzing::parse_request_bodies(data);
}
