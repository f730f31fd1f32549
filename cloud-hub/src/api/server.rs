//! The HTTP server: connections come from [`accept_loop`] (a cap, accept back-off, rate-limited
//! warnings), each served by hyper with a header-read timeout that also closes a connection
//! idle between requests. On `cancel`, connections finish their requests within a grace
//! period.

use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::accept::accept_loop;
use crate::config::Limits;

/// How long open connections get to finish after `cancel`.
const DRAIN: Duration = Duration::from_secs(10);

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
            let service = TowerToHyperService::new(app.clone());
            let cancel = stop.clone();
            async move {
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
