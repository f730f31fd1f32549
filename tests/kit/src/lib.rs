//! The test kit every fleet crate's tests build on, so that there is one of each helper.
//!
//! # Layout
//! - [`free_port`], [`eventually`], [`eventually_async`]: loopback ports and bounded waits that
//!   name what they waited for.
//! - [`process`]: real child processes with a log file in the test's temp directory, killed on
//!   drop, the tail of the log printed when a test fails.
//! - [`mosquitto`]: Debian's mosquitto on a port of the test's choosing, as a managed process.
//! - [`proxy`]: a fault-injecting TCP proxy the test controls (cut, blackhole, one direction,
//!   delay, throttle), and with [`mqtt`] the MQTT faults: withheld PUBACKs, duplicated
//!   PUBLISHes, injected floods.
//! - [`noise`], [`now`]: incompressible bytes, and the wall clock in Unix seconds.
//! - [`AGENT_ENV`]: the agent settings every harness runs `edge-agent` with.
//!
//! Domain harnesses stay with their crates: the hub harness in `cloud-hub/tests/common/`,
//! `HubDouble` and the blob server in `edge-agent/tests/common/`, the fleet builder in
//! `tests/src/fleet.rs`. This crate depends on neither the hub nor the agent.

pub mod mosquitto;
pub mod mqtt;
pub mod process;
pub mod proxy;

use std::future::Future;
use std::time::{Duration, Instant};

/// `edge-agent` settings that make tests quick: short ticks, status every second, short grace
/// and resend periods.
pub const AGENT_ENV: &[(&str, &str)] = &[
    ("FLEET_AGENT_TICK_MILLIS", "100"),
    ("FLEET_AGENT_STATUS_INTERVAL_SECS", "1"),
    ("FLEET_AGENT_STOP_GRACE_SECS", "2"),
    ("FLEET_AGENT_RESEND_SECS", "2"),
    ("FLEET_AGENT_KEEP_ALIVE_SECS", "5"),
    ("RUST_LOG", "info"),
];

/// How often [`eventually`] and [`eventually_async`] poll.
const POLL: Duration = Duration::from_millis(100);

/// Polls `f` until it returns `Some`, or panics naming `what` after `secs`.
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
        std::thread::sleep(POLL);
    }
}

/// [`eventually`] for async tests: awaits `f()` until it yields `Some`, sleeping on the runtime
/// between tries.
pub async fn eventually_async<T, F: Future<Output = Option<T>>>(
    secs: u64,
    what: &str,
    mut f: impl FnMut() -> F,
) -> T {
    let until = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < until,
            "timed out after {secs}s waiting for: {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// A free TCP port on 127.0.0.1 (racy by nature: prefer binding port 0 where the program can).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind a free port on 127.0.0.1")
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

/// The wall clock in seconds since the Unix epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eventually_returns_the_first_value() {
        let mut tries = 0;
        let v = eventually(5, "the third try", || {
            tries += 1;
            (tries == 3).then_some(tries)
        });
        assert_eq!(v, 3);
    }

    #[test]
    #[should_panic(expected = "timed out after 0s waiting for: something that never comes")]
    fn eventually_names_what_it_waited_for() {
        eventually(0, "something that never comes", || None::<()>);
    }

    #[test]
    fn free_ports_are_bindable() {
        let p = free_port();
        assert_ne!(p, 0);
        std::net::TcpListener::bind(("127.0.0.1", p)).expect("the port is free");
    }

    #[test]
    fn noise_is_deterministic_and_not_constant() {
        let a = noise(4096, 7);
        assert_eq!(a, noise(4096, 7));
        assert_ne!(a, noise(4096, 8));
        let distinct: std::collections::BTreeSet<u8> = a.iter().copied().collect();
        assert!(
            distinct.len() > 200,
            "only {} distinct bytes",
            distinct.len()
        );
    }
}
