//! The accept loop: each connection served by hyper with the facade's connection limits,
//! over TLS when configured.
//!
//! `axum::serve` gives hyper no timer, so hyper's header-read timeout never fires there: a
//! client trickling its request line and headers (or holding an idle keep-alive connection)
//! kept a connection and a task forever. This loop sets `header_read_timeout`, caps open
//! connections, and shuts down gracefully: it stops accepting, lets in-flight requests finish,
//! and the facade aborts whatever outlives its grace period.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

/// How the accept loop treats connections.
#[derive(Debug, Clone)]
pub(crate) struct ConnLimits {
    /// Time a client has to send a request's line and headers, counted from when the
    /// connection waits for them (so an idle keep-alive connection is closed after it too).
    pub header_read_timeout: Duration,
    /// Open connections; a connection beyond it is closed at once.
    pub max_connections: usize,
    /// Counts the connections closed for that (`sluice_http_connections_refused_total`).
    pub refused: Arc<AtomicU64>,
}

/// Connections refused at `max_connections`, and failed accepts (out of descriptors): one
/// warning per kind per 10 s, with the count held back. A line per connection, or per retry
/// of a failing accept (20 a second), flooded the log exactly when it mattered.
static ACCEPT_LOG: sluice_broker::log_every::LogEvery =
    sluice_broker::log_every::LogEvery::new(Duration::from_secs(10));

/// One connection's hyper builder, shutdown watcher and service.
struct ConnCtx {
    builder: auto::Builder<TokioExecutor>,
    watcher: hyper_util::server::graceful::Watcher,
    remote: SocketAddr,
}

/// Serves `router` on `listener` until `stopped` turns true, then drains.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnLimits,
    tls: Option<TlsAcceptor>,
    mut stopped: watch::Receiver<bool>,
) {
    // HTTP/1 only. Serving both makes hyper read the first bytes to tell them apart, with no
    // deadline: a connection that sends nothing (or half an HTTP/2 preface) was never closed
    // and kept its slot, so a few thousand silent sockets refused everyone else. HTTP/2 is
    // neither documented nor tested here; its idle and keep-alive limits would be needed too.
    let mut builder = auto::Builder::new(TokioExecutor::new()).http1_only();
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    // Connection tasks belong to this one: when the facade gives up waiting and aborts it,
    // dropping the set aborts them too, so no request runs on after the broker's store closed.
    let mut conns = tokio::task::JoinSet::new();
    loop {
        while conns.try_join_next().is_some() {}
        let accepted = tokio::select! {
            _ = stopped.wait_for(|s| *s) => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, remote) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                if let Some(held_back) = ACCEPT_LOG.allow("failed") {
                    tracing::warn!(error = %e, held_back, "HTTP accept failed (new connections wait; with too many open files, raise the process's limit)");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            limits.refused.fetch_add(1, Ordering::Relaxed);
            if let Some(held_back) = ACCEPT_LOG.allow("too_many") {
                tracing::warn!(%remote, max = limits.max_connections, held_back, "HTTP connection refused: [http] max_connections are open");
            }
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let ctx = ConnCtx {
            builder: builder.clone(),
            watcher: graceful.watcher(),
            remote,
        };
        let router = router.clone();
        let tls = tls.clone();
        let handshake_timeout = limits.header_read_timeout;
        conns.spawn(async move {
            let _slot = slot;
            match tls {
                None => serve_one(ctx, TokioIo::new(stream), router).await,
                Some(acceptor) => {
                    // The handshake gets the same bound as the headers that follow it.
                    let handshake = acceptor.accept(stream);
                    match tokio::time::timeout(handshake_timeout, handshake).await {
                        Ok(Ok(s)) => serve_one(ctx, TokioIo::new(s), router).await,
                        Ok(Err(e)) => tracing::debug!(%remote, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%remote, "TLS handshake timed out"),
                    }
                }
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    conns.abort_all();
}

/// Serves one connection until it ends or the facade shuts down.
async fn serve_one<I>(ctx: ConnCtx, io: I, router: Router)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let conn = ctx
        .builder
        .serve_connection(io, service_for(&router, ctx.remote));
    if let Err(e) = ctx.watcher.watch(conn).await {
        tracing::debug!(remote = %ctx.remote, error = %e, "HTTP connection ended with an error");
    }
}

/// The router for one connection, with the peer address handlers read as `ConnectInfo`.
fn service_for(
    router: &Router,
    remote: SocketAddr,
) -> TowerToHyperService<
    impl tower::Service<
            hyper::Request<Incoming>,
            Response = axum::response::Response,
            Error = std::convert::Infallible,
            Future = impl Send,
        > + Clone,
> {
    let svc = router
        .clone()
        .map_request(move |req: hyper::Request<Incoming>| {
            let mut req = req.map(axum::body::Body::new);
            req.extensions_mut().insert(ConnectInfo(remote));
            req
        });
    TowerToHyperService::new(svc)
}
