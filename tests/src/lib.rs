//! End-to-end harness for the fleet binaries (DESIGN §2 `tests/`).
//!
//! # Layout
//! - [`fleet`]: a builder that starts the real `cloud-hub` and N real `edge-agent` processes on
//!   loopback, each agent behind its own proxies.
//! - [`soak`]: all faults combined at random from a seed (the `soak` binary), and
//!   [`soak_check`], the history checker it ends with.
//!
//! Processes, the fault-injecting proxy, free ports and bounded waits come from the shared test
//! kit (`fleet-test-kit`, in `tests/kit/`).
//!
//! The binaries must be built first (`cargo build --bins`; `cargo nextest run --workspace`
//! builds them because the hub and agent crates have integration tests of their own).

pub mod fleet;
pub mod soak;
pub mod soak_check;
