//! The HTTP server: connections come from [`accept_loop`] (a cap, accept back-off, rate-limited
//! warnings), each served by hyper with a header-read timeout that also closes a connection
//! idle between requests. On `cancel`, connections finish their requests within a grace
//! period.

use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::accept::accept_loop;
use crate::config::Limits;

/// How long open connections get to finish after `cancel`.
const DRAIN: Duration = Duration::from_secs(10);

/// Fired when the client closes its side of the connection, so long work for a request (an
/// image import) can stop: hyper does not read a connection while a request is in flight, so it
/// would not notice. A request extension.
#[derive(Clone, Debug)]
pub struct ClientGone(pub CancellationToken);

/// Splits off a watcher of `stream` that fires the returned token once the client closes
/// (a read of 0 bytes, or an error). Bytes the client sends meanwhile (a pipelined request)
/// are only peeked at, never taken from hyper.
fn watch_for_hangup(stream: TcpStream) -> std::io::Result<(TcpStream, CancellationToken)> {
    let std = stream.into_std()?;
    let watch = TcpStream::from_std(std.try_clone()?)?;
    let stream = TcpStream::from_std(std)?;
    let gone = CancellationToken::new();
    let fire = gone.clone();
    tokio::spawn(async move {
        let mut b = [0u8; 1];
        loop {
            tokio::select! {
                r = watch.peek(&mut b) => match r {
                    Ok(0) | Err(_) => break,
                    // Data waits for hyper; look again later rather than spin on it.
                    Ok(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                },
                _ = fire.cancelled() => return,
            }
        }
        fire.cancel();
    });
    Ok((stream, gone))
}

/// Serves `app` on `listener` until `cancel`, at most `max_connections` at once.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: &Limits,
    max_connections: usize,
    cancel: CancellationToken,
) {
    let header_timeout = Duration::from_secs(limits.http_header_timeout_secs);
    let conns = TaskTracker::new();
    let stop = cancel.clone();
    accept_loop(
        "http",
        listener,
        max_connections,
        cancel,
        &conns,
        |stream, permit| {
            let app = app.clone();
            let cancel = stop.clone();
            async move {
                let (stream, gone) = match watch_for_hangup(stream) {
                    Ok(v) => v,
                    Err(e) => {
                        tracing::debug!(error = %e, "HTTP connection unusable");
                        return;
                    }
                };
                let service = TowerToHyperService::new(app);
                let tag = ClientGone(gone.clone());
                let service = hyper::service::service_fn(move |mut req| {
                    req.extensions_mut().insert(tag.clone());
                    hyper::service::Service::call(&service, req)
                });
                let mut builder = hyper::server::conn::http1::Builder::new();
                builder
                    .timer(TokioTimer::new())
                    .header_read_timeout(header_timeout);
                let conn = builder.serve_connection(TokioIo::new(stream), service);
                tokio::pin!(conn);
                tokio::select! {
                    r = conn.as_mut() => {
                        if let Err(e) = r {
                            tracing::debug!(error = %e, "HTTP connection ended");
                        }
                    }
                    _ = cancel.cancelled() => {
                        conn.as_mut().graceful_shutdown();
                        let _ = conn.await;
                    }
                }
                gone.cancel();
                drop(permit);
            }
        },
    )
    .await;
    conns.close();
    if tokio::time::timeout(DRAIN, conns.wait()).await.is_err() {
        tracing::warn!("HTTP connections did not finish within {DRAIN:?}");
    }
}
