//! Request ids in log lines, in a test binary of its own: it installs a global tracing
//! subscriber, which no other test of the crate may share (with a per-thread one, a callsite
//! another test met first with no subscriber could stay cached as "not interested").

#[path = "it/common/mod.rs"]
mod common;

use std::sync::{Arc, Mutex};

/// A log writer that keeps what it is given, for assertions.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Lines logged while a request runs carry its id, not only the facade's error lines.
#[tokio::test]
async fn lines_logged_during_a_request_carry_its_request_id() {
    let logs = Captured::default();
    let writer = logs.clone();
    tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_max_level(tracing::Level::INFO)
        .with_ansi(false)
        .init();
    let s = common::start().await;
    s.create_topic("T", 1);
    let r = s
        .http
        .delete(s.url("/v1/topics/T/scheduled/no-such-key"))
        .header("x-request-id", "trace-me-42")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    s.stop().await;
    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let line = text
        .lines()
        .find(|l| l.contains("cancel over HTTP"))
        .unwrap_or_else(|| panic!("the cancel is logged:\n{text}"));
    assert!(line.contains("trace-me-42"), "with the request id: {line}");
}
