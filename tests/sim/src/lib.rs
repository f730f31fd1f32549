//! `fleet-sim`: a device simulator for load and scale tests. N simulated devices live in one
//! process, each with its own key pair and MQTT connection, enrolled through the hub's real
//! enrollment API. They verify every desired state with `protocol` exactly as the agent does and
//! report status and events with the agent's outbox semantics, but run no workloads.
//!
//! # Layout
//! - [`hub`]: the hub's HTTP API as the simulator uses it (tokens, enrollment, deploys).
//! - [`identity`]: enrolled identities and the state file that lets a second run reuse them.
//! - [`device`]: one device's protocol state, sans-IO (trust, revision floor, status).
//! - [`outbox`]: sequence-numbered events kept until acked, one batch in flight.
//! - [`conn`]: the one task per device that owns its MQTT connection.
//! - [`fleet`]: starting N device tasks, cutting and healing them, and the [`fleet::Summary`].
//! - [`scenario`]: the runs the binary offers (connect, deploy, burst, partition, broker
//!   restart).
//!
//! # Invariants
//! - One task per device; the tasks share only atomics and a control channel.
//! - A device accepts only what `protocol::accept_desired_state` / `accept_trust_update` accept.
//! - An event's sequence number is never reused, across runs too (the state file keeps it).

pub mod conn;
pub mod device;
pub mod fleet;
pub mod hub;
pub mod identity;
pub mod outbox;
pub mod scenario;

pub use fleet::{Fleet, Settings, Summary};
