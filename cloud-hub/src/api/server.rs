//! The HTTP accept loop: at most `http_max_connections` connections at once (a semaphore taken
//! before `accept`, so the rest wait in the kernel's backlog rather than as open files), each
//! served by hyper with a header-read timeout that also closes a connection idle between
//! requests; accept errors (out of file descriptors) back off and are logged at most once per
//! interval. On `cancel`, connections finish their requests within a grace period.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Limits;

/// How long open connections get to finish after `cancel`.
const DRAIN: Duration = Duration::from_secs(10);

/// A warning logged at most once per interval, with the count of what it stood for.
#[derive(Debug)]
pub struct LogLimiter {
    every: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl LogLimiter {
    /// At most one line per `every`.
    pub fn new(every: Duration) -> Self {
        Self {
            every,
            last: None,
            suppressed: 0,
        }
    }

    /// Whether to log at `now`; `Some(n)` with the number of occurrences not logged since the
    /// last line.
    pub fn admit(&mut self, now: Instant) -> Option<u64> {
        if self
            .last
            .is_some_and(|l| now.duration_since(l) < self.every)
        {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// The back-off after a failed `accept`: 10 ms doubling to 1 s, reset by a success.
pub fn accept_backoff(failures: u32) -> Duration {
    Duration::from_millis(10u64 << failures.min(7)).min(Duration::from_secs(1))
}

/// Serves `app` on `listener` until `cancel`.
pub async fn serve(listener: TcpListener, app: Router, limits: &Limits, cancel: CancellationToken) {
    let permits = Arc::new(Semaphore::new(limits.http_max_connections));
    let header_timeout = Duration::from_secs(limits.http_header_timeout_secs);
    let conns = TaskTracker::new();
    let mut failures = 0u32;
    let mut log = LogLimiter::new(Duration::from_secs(10));
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = cancel.cancelled() => break,
        };
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = cancel.cancelled() => break,
        };
        let (stream, _peer) = match accepted {
            Ok(a) => {
                failures = 0;
                a
            }
            Err(e) => {
                if let Some(suppressed) = log.admit(Instant::now()) {
                    tracing::warn!(error = %e, suppressed, "HTTP accept failed; backing off");
                }
                failures = failures.saturating_add(1);
                tokio::time::sleep(accept_backoff(failures)).await;
                continue;
            }
        };
        let service = TowerToHyperService::new(app.clone());
        let cancel = cancel.clone();
        conns.spawn(async move {
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
        });
    }
    conns.close();
    if tokio::time::timeout(DRAIN, conns.wait()).await.is_err() {
        tracing::warn!("HTTP connections did not finish within {DRAIN:?}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_warnings_are_logged_once_per_interval_with_a_count() {
        let mut l = LogLimiter::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(l.admit(t0), Some(0));
        for i in 0..1000 {
            assert_eq!(l.admit(t0 + Duration::from_millis(i)), None);
        }
        assert_eq!(l.admit(t0 + Duration::from_secs(10)), Some(1000));
        assert_eq!(l.admit(t0 + Duration::from_secs(11)), None);
    }

    #[test]
    fn accept_backoff_grows_to_a_second() {
        assert_eq!(accept_backoff(1), Duration::from_millis(20));
        assert_eq!(accept_backoff(100), Duration::from_secs(1));
        assert!((0..100).all(|f| accept_backoff(f) <= Duration::from_secs(1)));
    }
}
