//! The request body's idle timeout (`body_read_timeout`): a body that yields no frame for that
//! long fails, so a client that declares a body and stalls cannot keep a request slot.
//!
//! tower-http's `TimeoutBody` arms its timer before it polls the body, on every poll: a
//! timer-wheel insert and removal per request even when the whole body came with the request
//! head, as a small JSON message does. This wrapper polls the body first and arms the timer
//! only while the body has nothing to give; the limit is the same (reset after every frame).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::Request;
use http_body::{Frame, SizeHint};
use tokio::time::Sleep;

/// Puts the idle timeout on the request's body; a body known to be empty is left alone.
pub(crate) fn limit(req: Request, timeout: Duration) -> Request {
    if req.body().is_end_stream() {
        return req;
    }
    req.map(|inner| Body::new(IdleTimeout::new(inner, timeout)))
}

/// The error a body read gets once the body stalled past the timeout.
#[derive(Debug, thiserror::Error)]
#[error("request body stalled: no data for {0:?} (body_read_timeout)")]
pub(crate) struct BodyStalled(Duration);

/// A body whose reads fail after `timeout` without a frame.
pub(crate) struct IdleTimeout {
    inner: Body,
    timeout: Duration,
    /// Armed while a poll found no frame; dropped when one arrives.
    sleep: Option<Pin<Box<Sleep>>>,
}

impl IdleTimeout {
    pub(crate) fn new(inner: Body, timeout: Duration) -> Self {
        Self {
            inner,
            timeout,
            sleep: None,
        }
    }
}

impl HttpBody for IdleTimeout {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            this.sleep = None;
            return Poll::Ready(frame);
        }
        let timeout = this.timeout;
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(axum::Error::new(BodyStalled(timeout))))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    /// A body that has its bytes at once is read without a timer, and fully.
    #[tokio::test]
    async fn a_ready_body_is_read_whole() {
        let body = IdleTimeout::new(Body::from("hello"), Duration::from_millis(1));
        let bytes = body.collect().await.expect("read").to_bytes();
        assert_eq!(&bytes[..], b"hello");
    }

    /// A body that stalls fails after the timeout, naming the setting.
    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_fails_after_the_timeout() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(1);
        let stream = http_body_util::StreamBody::new(tokio_stream_like(rx));
        let body = IdleTimeout::new(Body::new(stream), Duration::from_secs(5));
        let err = body.collect().await.expect_err("stalled");
        assert!(err.to_string().contains("body_read_timeout"), "{err}");
        drop(tx);
    }

    /// A body that keeps sending, each frame within the timeout, is not cut however long it
    /// takes in all.
    #[tokio::test(start_paused = true)]
    async fn a_slow_but_steady_body_is_not_cut() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(1);
        let stream = http_body_util::StreamBody::new(tokio_stream_like(rx));
        let body = IdleTimeout::new(Body::new(stream), Duration::from_secs(5));
        let feeder = tokio::spawn(async move {
            for _ in 0..4 {
                tokio::time::sleep(Duration::from_secs(3)).await;
                tx.send(Ok(Frame::data(Bytes::from_static(b"ab"))))
                    .await
                    .expect("send");
            }
        });
        let bytes = body.collect().await.expect("read").to_bytes();
        assert_eq!(&bytes[..], b"abababab");
        feeder.await.expect("feeder");
    }

    fn tokio_stream_like<T: Send + 'static>(
        mut rx: tokio::sync::mpsc::Receiver<T>,
    ) -> impl futures::Stream<Item = T> + Send {
        futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }
}
