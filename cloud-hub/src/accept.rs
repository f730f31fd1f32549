//! Accepting connections without falling over: a cap on open connections (a semaphore taken
//! before `accept`, so the rest wait in the kernel's backlog rather than as open files),
//! back-off after a failed `accept` (out of file descriptors), and warnings logged at most once
//! per interval with the count of those left out. Used by the HTTP server and the embedded
//! broker's listener. Also the file-descriptor budget both caps must fit in.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::metrics::GaugeGuard;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

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

/// The back-off after `failures` failed `accept`s in a row: 20 ms doubling to 1 s.
pub fn accept_backoff(failures: u32) -> Duration {
    Duration::from_millis(10u64 << failures.min(7)).min(Duration::from_secs(1))
}

/// Accepts on `listener` until `cancel`, at most `cap` connections open at once; each is
/// handed to `handle` with the permit it holds (drop it when the connection ends), as a task
/// on `tasks`.
pub async fn accept_loop<F, Fut>(
    what: &'static str,
    listener: TcpListener,
    cap: usize,
    cancel: CancellationToken,
    tasks: &TaskTracker,
    handle: F,
) where
    F: Fn(TcpStream, OwnedSemaphorePermit) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(cap));
    let mut failures = 0u32;
    let mut log = LogLimiter::new(Duration::from_secs(10));
    let mut full = LogLimiter::new(Duration::from_secs(60));
    loop {
        if permits.available_permits() == 0 {
            if let Some(suppressed) = full.admit(Instant::now()) {
                tracing::warn!(
                    what,
                    cap,
                    suppressed,
                    "connection cap reached; new ones wait"
                );
            }
        }
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
        match accepted {
            Ok((stream, _)) => {
                failures = 0;
                let open = GaugeGuard::new(crate::metrics::hub().connections(what));
                let conn = handle(stream, permit);
                tasks.spawn(async move {
                    conn.await;
                    drop(open);
                });
            }
            Err(e) => {
                if let Some(suppressed) = log.admit(Instant::now()) {
                    tracing::warn!(what, error = %e, suppressed, "accept failed; backing off");
                }
                failures = failures.saturating_add(1);
                drop(permit);
                tokio::select! {
                    _ = tokio::time::sleep(accept_backoff(failures)) => {}
                    _ = cancel.cancelled() => break,
                }
            }
        }
    }
}

/// The process's soft limit on open files, from `/proc/self/limits` (`None` if unknown).
pub fn open_files_limit() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Fits the HTTP and broker connection caps into `fd_limit` descriptors: 64 are kept for the
/// store, files and the hub's own client; a connection costs one (the broker's client handler
/// runs on the accepted socket itself). Returns `(http, mqtt)`.
pub fn fit_caps(http: usize, mqtt: usize, fd_limit: Option<u64>) -> (usize, usize) {
    let Some(limit) = fd_limit else {
        return (http, mqtt);
    };
    let budget = limit.saturating_sub(64) as usize;
    let http = http.min(budget / 4).max(1);
    let mqtt = mqtt.min(budget.saturating_sub(http)).max(1);
    (http, mqtt)
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

    #[test]
    fn connection_caps_fit_the_file_limit() {
        assert_eq!(fit_caps(512, 4096, None), (512, 4096));
        assert_eq!(fit_caps(512, 4096, Some(16384)), (512, 4096));
        let (h, m) = fit_caps(512, 4096, Some(1024));
        assert!(64 + h + m <= 1024, "{h} {m}");
        assert_eq!(fit_caps(512, 4096, Some(10)), (1, 1));
        // 10,000 devices on the embedded broker under a 20,000-file limit (a descriptor each).
        let (h, m) = fit_caps(512, 100_000, Some(20_000));
        assert_eq!((h, m), (512, 20_000 - 64 - 512));
        assert!(open_files_limit().is_some_and(|n| n > 0));
    }
}
