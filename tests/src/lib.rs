//! End-to-end harness for the fleet binaries (DESIGN §2 `tests/`).
//!
//! # Layout
//! - [`proxy`]: a fault-injecting TCP proxy the test controls (cut, blackhole, one direction,
//!   delay, throttle), placed between each agent and the broker and between each agent and the
//!   hub's HTTP.
//! - [`process`]: real child processes with captured logs, killed on drop, logs printed when a
//!   test fails.
//! - [`fleet`]: a builder that starts the real `cloud-hub` and N real `edge-agent` processes on
//!   loopback, each agent behind its own proxies.
//! - [`eventually`]: bounded polling.
//!
//! The binaries must be built first (`cargo build --bins`; `cargo nextest run --workspace`
//! builds them because the hub and agent crates have integration tests of their own).

pub mod fleet;
pub mod process;
pub mod proxy;

use std::time::{Duration, Instant};

/// Polls `f` every 100 ms until it returns `Some`, or panics naming `what` after `secs`.
pub fn eventually<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let until = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < until,
            "timed out after {secs}s waiting for: {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A free TCP port on 127.0.0.1 (racy by nature: prefer binding port 0 where the program can).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// `len` incompressible bytes from a xorshift generator seeded with `seed` (not zero).
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
