//! `edge-agent`: keeps one device's workloads converging on its signed desired state, online or
//! offline.
//!
//! # Layout
//! - `config`: the typed config file, `FLEET_AGENT_*` overrides.
//! - `store`: the one SQLite file (identity, trust, revision floor, desired state, workload
//!   state, outbox).
//! - `outbox`: sequence-numbered events with a byte budget (DESIGN §3.5).
//! - `link`: the MQTT link (rumqttc): subscribe, publish status and outbox, acks, presence.
//! - `reconcile`: the pure planner `plan(desired, observed, now)` and its executor.
//! - `core`: the one owner loop over an event enum.
//! - `image`: pull (HTTP Range resume, bounded, verified), safe unpack, cache, GC.
//! - `runtime`: the `process` runtime: spawn, adopt after restart, limits, logs, health probes.
//! - `enroll`: the enrollment call.

pub mod config;
pub mod core;
pub mod enroll;
pub mod image;
pub mod link;
pub mod outbox;
pub mod reconcile;
pub mod runtime;
pub mod store;
