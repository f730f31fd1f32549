//! The agent's clock, passed in so timer logic (probe intervals, backoff, resends, status
//! intervals) is testable with paused tokio time.
//!
//! Two readings are needed: wall time in unix seconds (it goes into events, probation deadlines
//! and signature expiry checks) and a monotonic instant for "how long since" questions. The
//! agent uses `tokio::time::Instant` for the latter, which follows a paused test clock by itself.

use std::fmt::Debug;
use std::sync::Arc;

/// A source of wall time.
pub trait Clock: Send + Sync + Debug {
    /// Unix seconds now.
    fn unix_now(&self) -> u64;
}

/// A shared clock.
pub type SharedClock = Arc<dyn Clock>;

/// The host's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn unix_now(&self) -> u64 {
        crate::runtime::unix_now()
    }
}

/// Wall time that advances with tokio's clock from a fixed start: under
/// `#[tokio::test(start_paused = true)]` it moves only when the test advances time.
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    start_unix: u64,
    start: tokio::time::Instant,
}

impl TokioClock {
    /// A clock reading `start_unix` now.
    pub fn starting_at(start_unix: u64) -> Self {
        Self {
            start_unix,
            start: tokio::time::Instant::now(),
        }
    }
}

impl Clock for TokioClock {
    fn unix_now(&self) -> u64 {
        self.start_unix + self.start.elapsed().as_secs()
    }
}

/// Wall time set by hand: a clock that can be booted at 1970, run years ahead or stepped
/// mid-run, for tests of the time policy (DESIGN §3.3). Clones share one reading.
#[derive(Debug, Clone, Default)]
pub struct ManualClock(Arc<std::sync::atomic::AtomicU64>);

impl ManualClock {
    /// A clock reading `unix` until it is set again.
    pub fn at(unix: u64) -> Self {
        Self(Arc::new(std::sync::atomic::AtomicU64::new(unix)))
    }

    /// Steps the clock to `unix`, forwards or backwards.
    pub fn set(&self, unix: u64) {
        self.0.store(unix, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn unix_now(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn tokio_clock_moves_only_with_tokio_time() {
        let c = TokioClock::starting_at(1_000);
        assert_eq!(c.unix_now(), 1_000);
        tokio::time::advance(Duration::from_secs(90)).await;
        assert_eq!(c.unix_now(), 1_090);
    }
}
